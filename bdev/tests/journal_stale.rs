//! A stale journal leg (failed, then back while the good leg is missing) is never assembled
//! on its own: its own process, since it ends examine for every module (which other tests'
//! groups, mid-assembly, must not see).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::time::Duration;
use strata_bdev::modules::journal;
use strata_bdev::registry;

mod common;
use common::journal::*;

#[test]
fn a_stale_leg_alone_is_not_assembled_and_the_good_one_is() {
    use strata_bdev::modules::error;
    setup();
    let repo = tempfile::tempdir().unwrap();
    let repo_path = repo.path().join("r").to_str().unwrap().to_string();
    mk_malloc("st_ma", 8 * 1024);
    mk_malloc("st_mb", 8 * 1024);
    // The legs are error bdevs over malloc: removing one keeps its (stale) bytes below.
    error::create("st_ma", None).unwrap();
    error::create("st_mb", None).unwrap();
    mk_malloc("st_base", 2048);
    create_group(group_opts("st", ["EE_st_ma", "EE_st_mb"], &repo_path)).unwrap();
    create_volume("st", "st_v", "st_base").unwrap();
    wait_drain("st", 1);
    let mut model = read_all("st_v");
    let mut rng = SmallRng::seed_from_u64(21);
    random_writes("st_v", &mut model, &mut rng, 16);
    // Leg B fails; writes and a drain go on with A alone.
    error::delete("EE_st_mb").unwrap();
    random_writes("st_v", &mut model, &mut rng, 16);
    drain("st");
    random_writes("st_v", &mut model, &mut rng, 16);
    journal::stop_group("st").unwrap();
    // Only B's bytes come back (as their own bdev): not assembled, the base untouched.
    error::create("st_mb", None).unwrap();
    registry::examine("EE_st_mb").unwrap();
    strata_bdev::module::finish_examine();
    assert!(
        journal::group("st").is_none(),
        "assembled from the stale leg"
    );
    // The good leg comes: the group assembles from it, every write reads back.
    error::delete("EE_st_mb").unwrap();
    registry::examine("EE_st_ma").unwrap();
    for _ in 0..500 {
        if journal::group("st").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_state("st", "st_v", "online");
    check("st_v", &model, "assembled from the good leg");
    assert_eq!(info("st")["journal"]["legs"][1]["state"], "failed");
}
