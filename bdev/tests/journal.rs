//! Dual redundancy on a real reactor, model-checked: random writes to several protected
//! volumes (one over a RAID-5, one over a plain bdev) race drains started at random
//! moments; a journal leg fails and is replaced; the group is stopped (as by a crash) and
//! re-assembled from its legs; the RAID-5 loses two members and the volume is rebuilt from
//! the repository and the journal. After every step each volume reads back as its model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use strata_bdev::modules::journal::{self, catalog::DrainPolicy, rebuild::NewBase, GroupOptions};
use strata_bdev::modules::{malloc, raid};
use strata_bdev::wait::{no_data, read_vec, write_slice};
use strata_bdev::{registry, BdevError, IoType};

mod common;
use common::{on_reactor, reactors};

const BS: u32 = 512;

fn setup() {
    reactors().install_global();
}

fn mk_malloc(name: &str, kib: u64) {
    malloc::create(malloc::MallocOptions {
        name: name.into(),
        num_blocks: kib * 1024 / BS as u64,
        block_size: BS,
        uuid: None,
    })
    .unwrap();
}

fn mk_raid5(name: &str, members: &[&str]) {
    let o = raid::CreateOptions {
        name: name.into(),
        level: raid::geometry::Level::Raid5,
        strip_size_kb: 16,
        base_bdevs: members.iter().map(|s| s.to_string()).collect(),
        uuid: None,
        superblock: true,
    };
    on_reactor(move || async move { raid::create(o).await.map(|_| ()) }).unwrap();
}

fn group_opts(name: &str, legs: [&str; 2], repo: &str) -> GroupOptions {
    GroupOptions {
        name: name.into(),
        journal_bdevs: [legs[0].into(), legs[1].into()],
        repository: repo.into(),
        drain: DrainPolicy {
            fill_percent: 0,
            max_age_secs: 0,
            chunk_size: 64 * 1024,
        },
        create_repository: true,
    }
}

fn create_group(o: GroupOptions) -> Result<(), BdevError> {
    on_reactor(move || async move { journal::create_group(o).await })
}

fn create_volume(group: &str, name: &str, base: &str) -> Result<(), BdevError> {
    let (g, n, b) = (group.to_string(), name.to_string(), base.to_string());
    on_reactor(move || async move { journal::create_volume(&g, &n, &b, BTreeMap::new()).await })
}

fn info(group: &str) -> Value {
    journal::get(Some(group)).unwrap().remove(0)
}

fn vol_info(group: &str, vol: &str) -> Value {
    info(group)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vol)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until no drain runs and `drains_done` reached `at_least`; returns the last drain.
fn wait_drain(group: &str, at_least: u64) -> Value {
    for _ in 0..3000 {
        let i = info(group);
        if i["drain"].is_null() && i["drains_done"].as_u64().unwrap() >= at_least {
            return i["last_drain"].clone();
        }
        if i["drain"].is_null() && i["last_drain"]["result"] == "failed" {
            panic!("drain failed: {}", i["last_drain"]);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("drain did not end: {}", info(group));
}

fn drain(group: &str) -> Value {
    let before = info(group)["drains_done"].as_u64().unwrap();
    // A drain the volume's creation started may run: wait for it, then start ours.
    loop {
        match journal::drain::start(group) {
            Ok(()) => break,
            Err(BdevError::Claimed { .. }) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("{e}"),
        }
    }
    wait_drain(group, before + 1)
}

fn wait_state(group: &str, vol: &str, state: &str) -> Value {
    for _ in 0..3000 {
        let v = vol_info(group, vol);
        if v["state"] == state {
            return v;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{vol} never {state}: {}", vol_info(group, vol));
}

fn read_all(name: &str) -> Vec<u8> {
    let nm = name.to_string();
    on_reactor(move || async move {
        let d = registry::open(&nm, |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let n = ch.num_blocks();
        let mut out = Vec::new();
        let mut b = 0;
        while b < n {
            let k = 2048.min(n - b);
            out.extend(read_vec(&ch, b, k).await.unwrap());
            b += k;
        }
        out
    })
}

fn size_of(name: &str) -> usize {
    let h = registry::get(name).unwrap();
    (h.bdev.num_blocks() * h.bdev.block_size() as u64) as usize
}

/// A batch of random writes (some write_zeroes) to `vol`, issued together, applied to the
/// model. Writes in one batch never overlap, so the model's order is the device's.
fn random_writes(vol: &str, model: &mut [u8], rng: &mut SmallRng, count: usize) {
    let bs = BS as usize;
    let blocks = model.len() / bs;
    let mut ops: Vec<(u64, Option<Vec<u8>>, u64)> = Vec::new();
    let mut taken: Vec<(usize, usize)> = Vec::new();
    while ops.len() < count {
        let n = rng.gen_range(1..=24usize);
        let off = rng.gen_range(0..blocks - n);
        if taken.iter().any(|&(o, l)| off < o + l && o < off + n) {
            continue;
        }
        taken.push((off, n));
        if rng.gen_bool(0.1) {
            model[off * bs..(off + n) * bs].fill(0);
            ops.push((off as u64, None, n as u64));
        } else {
            let data: Vec<u8> = (0..n * bs).map(|_| rng.gen()).collect();
            model[off * bs..(off + n) * bs].copy_from_slice(&data);
            ops.push((off as u64, Some(data), n as u64));
        }
    }
    let nm = vol.to_string();
    on_reactor(move || async move {
        let d = registry::open(&nm, |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let hs: Vec<_> = ops
            .into_iter()
            .map(|(off, data, n)| {
                let ch = ch.clone();
                strata_reactor::spawn_local(async move {
                    match data {
                        Some(d) => write_slice(&ch, off, &d).await,
                        None => no_data(&ch, IoType::WriteZeroes, off, n).await,
                    }
                })
            })
            .collect();
        for h in hs {
            h.await.expect("write to a protected volume failed");
        }
    });
}

fn check(vol: &str, model: &[u8], what: &str) {
    let got = read_all(vol);
    if got != model {
        let bs = BS as usize;
        let first = (0..model.len() / bs)
            .find(|&b| got[b * bs..(b + 1) * bs] != model[b * bs..(b + 1) * bs])
            .unwrap();
        panic!("{what}: {vol} differs from the model from block {first}");
    }
}

/// The group goes away as at a crash (its legs and bases stay as they are) and
/// re-assembles when its legs are examined again.
fn restart(group: &str, legs: &[&str]) {
    journal::stop_group(group).unwrap();
    for l in legs {
        registry::examine(l).unwrap();
    }
    for _ in 0..1000 {
        if journal::group(group).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{group} did not re-assemble");
}

#[test]
fn model_check_drains_leg_loss_restart_and_rebuild_beyond_redundancy() {
    setup();
    let repo = tempfile::tempdir().unwrap();
    let repo_path = repo.path().join("r").to_str().unwrap().to_string();
    for m in ["mc_r1", "mc_r2", "mc_r3"] {
        mk_malloc(m, 2048);
    }
    mk_raid5("mc_raid", &["mc_r1", "mc_r2", "mc_r3"]);
    mk_malloc("mc_plain", 1024);
    mk_malloc("mc_ja", 8 * 1024);
    mk_malloc("mc_jb", 8 * 1024);
    create_group(group_opts("mc", ["mc_ja", "mc_jb"], &repo_path)).unwrap();
    create_volume("mc", "mc_v1", "mc_raid").unwrap();
    create_volume("mc", "mc_v2", "mc_plain").unwrap();
    // Data the bases held before: the first (full) backup must take it from them.
    let mut m1 = read_all("mc_v1");
    let mut m2 = read_all("mc_v2");
    assert_eq!(m1.len(), size_of("mc_raid"));
    let mut rng = SmallRng::seed_from_u64(0x6a6f75726e616c);
    let mut drains = 0;
    for step in 0..24 {
        random_writes("mc_v1", &mut m1, &mut rng, 24);
        random_writes("mc_v2", &mut m2, &mut rng, 12);
        match rng.gen_range(0..4) {
            // A drain while the next writes run.
            0 => {
                let _ = journal::drain::start("mc");
                random_writes("mc_v1", &mut m1, &mut rng, 16);
            }
            1 => {
                drain("mc");
                drains += 1;
            }
            _ => {}
        }
        if step == 8 {
            // A journal leg is lost: writes go on, on the other.
            registry::unregister("mc_jb").unwrap();
            random_writes("mc_v1", &mut m1, &mut rng, 16);
            let i = info("mc");
            assert_eq!(i["journal"]["legs"][1]["state"], "failed", "{i}");
        }
        if step == 12 {
            mk_malloc("mc_jc", 8 * 1024);
            on_reactor(|| async { journal::replace_leg("mc", "mc_jc").await }).unwrap();
            random_writes("mc_v2", &mut m2, &mut rng, 16);
            for _ in 0..1000 {
                if info("mc")["journal"]["legs"][1]["state"] == "ok" {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert_eq!(info("mc")["journal"]["legs"][1]["state"], "ok");
        }
        check("mc_v1", &m1, &format!("step {step}"));
        check("mc_v2", &m2, &format!("step {step}"));
    }
    assert!(drains > 0, "the seed ran no drain");
    let i = info("mc");
    assert!(i["journal"]["appended_records"].as_u64().unwrap() > 0);
    let v1 = vol_info("mc", "mc_v1");
    assert!(v1["last_backup"]["chain"].as_u64().unwrap() >= 1, "{v1}");
    assert_eq!(v1["layout"]["level"], "raid5");

    // A crash and a restart: the group re-assembles from the legs (the replaced one too)
    // and every volume reads back.
    restart("mc", &["mc_ja", "mc_jc"]);
    wait_state("mc", "mc_v1", "online");
    wait_state("mc", "mc_v2", "online");
    check("mc_v1", &m1, "after the restart");
    check("mc_v2", &m2, "after the restart");
    random_writes("mc_v1", &mut m1, &mut rng, 24);

    // Two members of the RAID-5 are lost: the volume goes offline...
    registry::unregister("mc_r1").unwrap();
    registry::unregister("mc_r2").unwrap();
    let v = wait_state("mc", "mc_v1", "offline");
    assert!(v["reason"].as_str().unwrap().contains("base"), "{v}");
    // ... and is rebuilt on new members from the blueprint, the backup chain and the
    // journal, holding every acknowledged write.
    for m in ["mc_n1", "mc_n2", "mc_n3"] {
        mk_malloc(m, 2048);
    }
    let members = NewBase::Members(vec!["mc_n1".into(), "mc_n2".into(), "mc_n3".into()]);
    on_reactor(move || async move { journal::rebuild::start("mc_v1", members).await }).unwrap();
    let v = wait_state("mc", "mc_v1", "online");
    assert_eq!(v["last_rebuild"]["result"], "done", "{v}");
    check("mc_v1", &m1, "after the rebuild");
    assert_eq!(v["layout"]["members"][0], "mc_n1");
    random_writes("mc_v1", &mut m1, &mut rng, 24);
    check("mc_v1", &m1, "writes after the rebuild");

    // The whole base lost, and the machine's view of it: rebuilt onto one new bdev.
    registry::unregister("mc_plain").unwrap();
    wait_state("mc", "mc_v2", "offline");
    mk_malloc("mc_plain2", 1024);
    on_reactor(|| async {
        journal::rebuild::start("mc_v2", NewBase::Bdev("mc_plain2".into())).await
    })
    .unwrap();
    wait_state("mc", "mc_v2", "online");
    check("mc_v2", &m2, "after the rebuild onto a new bdev");
}
