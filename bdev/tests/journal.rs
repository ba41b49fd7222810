//! Dual redundancy on a real reactor, model-checked: random writes to several protected
//! volumes (one over a RAID-5, one over a plain bdev) race drains started at random
//! moments; a journal leg fails and is replaced; the group is stopped (as by a crash) and
//! re-assembled from its legs; the RAID-5 loses two members and the volume is rebuilt from
//! the repository and the journal. After every step each volume reads back as its model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Duration;
use strata_bdev::modules::journal::{self, rebuild::NewBase};
use strata_bdev::modules::{malloc, raid};
use strata_bdev::wait::{read_vec, write_slice};
use strata_bdev::{registry, BdevError};

mod common;
use common::journal::*;
use common::on_reactor;

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

#[test]
fn a_full_journal_holds_writes_back_until_a_drain_trims_it() {
    setup();
    let repo = tempfile::tempdir().unwrap();
    let repo_path = repo.path().join("r").to_str().unwrap().to_string();
    // A log of about 2.8 MiB; 8 MiB of writes must wait for drains (started by the full
    // journal itself: the policy starts none).
    mk_malloc("bp_ja", 3 * 1024);
    mk_malloc("bp_jb", 3 * 1024);
    mk_malloc("bp_base", 4 * 1024);
    create_group(group_opts("bp", ["bp_ja", "bp_jb"], &repo_path)).unwrap();
    create_volume("bp", "bp_v", "bp_base").unwrap();
    wait_drain("bp", 1);
    let mut model = read_all("bp_v");
    let mut rng = SmallRng::seed_from_u64(7);
    let bs = BS as usize;
    let mut ops = Vec::new();
    for i in 0..128u64 {
        let off = (i % 64) * 128;
        let data: Vec<u8> = (0..128 * bs).map(|_| rng.gen()).collect();
        ops.push((off, data));
    }
    // Eight at a time, never overlapping within a wave.
    for wave in ops.chunks(8) {
        for (off, d) in wave {
            model[*off as usize * bs..*off as usize * bs + d.len()].copy_from_slice(d);
        }
        let wave = wave.to_vec();
        on_reactor(move || async move {
            let d = registry::open("bp_v", |_| {}).unwrap();
            let ch = d.channel().unwrap();
            let hs: Vec<_> = wave
                .into_iter()
                .map(|(off, data)| {
                    let ch = ch.clone();
                    strata_reactor::spawn_local(async move { write_slice(&ch, off, &data).await })
                })
                .collect();
            for h in hs {
                h.await.expect("write held back by a full journal failed");
            }
        });
    }
    check("bp_v", &model, "after back-pressure");
    let i = info("bp");
    assert!(
        i["journal"]["backpressure_waits"].as_u64().unwrap() > 0,
        "{i}"
    );
    assert!(i["drains_done"].as_u64().unwrap() >= 2, "{i}");
    assert!(i["journal"]["fill_percent"].as_f64().unwrap() <= 100.0);
    // Everything since the last drain replays onto a new base with the chain.
    wait_drain("bp", 0);
    registry::unregister("bp_base").unwrap();
    wait_state("bp", "bp_v", "offline");
    mk_malloc("bp_base2", 4 * 1024);
    on_reactor(|| async {
        journal::rebuild::start("bp_v", NewBase::Bdev("bp_base2".into())).await
    })
    .unwrap();
    wait_state("bp", "bp_v", "online");
    check("bp_v", &model, "rebuilt after back-pressure");
}

/// Flips a byte of the oldest undrained record's data on one leg.
fn damage_record(group: &str, leg: &str) -> u64 {
    let g = journal::group(group).unwrap();
    let r = *g
        .index
        .lock()
        .records
        .iter()
        .find(|r| r.data_blocks > 0 && r.kind == journal::format::RecordKind::Write)
        .unwrap();
    let at = g.phys(r.data_pos);
    let l = leg.to_string();
    on_reactor(move || async move {
        let d = registry::open(&l, |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let mut b = read_vec(&ch, at, 1).await.unwrap();
        b[17] ^= 0x5a;
        write_slice(&ch, at, &b).await.unwrap();
    });
    r.seq
}

#[test]
fn a_damaged_record_is_read_from_the_other_leg_and_never_silently() {
    setup();
    let repo = tempfile::tempdir().unwrap();
    let repo_path = repo.path().join("r").to_str().unwrap().to_string();
    mk_malloc("dm_ja", 4 * 1024);
    mk_malloc("dm_jb", 4 * 1024);
    mk_malloc("dm_base", 1024);
    create_group(group_opts("dm", ["dm_ja", "dm_jb"], &repo_path)).unwrap();
    create_volume("dm", "dm_v", "dm_base").unwrap();
    wait_drain("dm", 1);
    let mut model = read_all("dm_v");
    let mut rng = SmallRng::seed_from_u64(11);
    random_writes("dm_v", &mut model, &mut rng, 32);
    // Damaged on one leg: the rebuild's replay takes the other leg's copy and repairs it.
    damage_record("dm", "dm_ja");
    registry::unregister("dm_base").unwrap();
    wait_state("dm", "dm_v", "offline");
    mk_malloc("dm_base2", 1024);
    on_reactor(|| async {
        journal::rebuild::start("dm_v", NewBase::Bdev("dm_base2".into())).await
    })
    .unwrap();
    wait_state("dm", "dm_v", "online");
    check("dm_v", &model, "rebuilt past a record damaged on one leg");
    assert!(
        info("dm")["journal"]["damaged_records_repaired"]
            .as_u64()
            .unwrap()
            >= 1
    );
    // Damaged on both legs: the rebuild fails, says why, and the volume stays offline.
    random_writes("dm_v", &mut model, &mut rng, 8);
    damage_record("dm", "dm_ja");
    damage_record("dm", "dm_jb");
    registry::unregister("dm_base2").unwrap();
    wait_state("dm", "dm_v", "offline");
    mk_malloc("dm_base3", 1024);
    on_reactor(|| async {
        journal::rebuild::start("dm_v", NewBase::Bdev("dm_base3".into())).await
    })
    .unwrap();
    for _ in 0..1000 {
        if !vol_info("dm", "dm_v")["last_rebuild"].is_null()
            && vol_info("dm", "dm_v")["state"] != "rebuilding"
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let v = vol_info("dm", "dm_v");
    assert_eq!(v["state"], "offline", "{v}");
    assert_eq!(v["last_rebuild"]["result"], "failed", "{v}");
    assert!(
        v["last_rebuild"]["error"]
            .as_str()
            .unwrap()
            .contains("damaged"),
        "{v}"
    );
    assert!(
        info("dm")["journal"]["damaged_records_lost"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[test]
fn recovery_from_the_repository_after_the_machines_metadata_is_lost() {
    setup();
    let repo = tempfile::tempdir().unwrap();
    let repo_path = repo.path().join("r").to_str().unwrap().to_string();
    for m in ["rc_r1", "rc_r2", "rc_r3"] {
        mk_malloc(m, 2048);
    }
    mk_raid5("rc_raid", &["rc_r1", "rc_r2", "rc_r3"]);
    mk_malloc("rc_ja", 4 * 1024);
    mk_malloc("rc_jb", 4 * 1024);
    create_group(group_opts("rc", ["rc_ja", "rc_jb"], &repo_path)).unwrap();
    create_volume("rc", "rc_v", "rc_raid").unwrap();
    let mut attrs = BTreeMap::new();
    attrs.insert("owner".to_string(), Some("db01".to_string()));
    on_reactor(move || async move { journal::set_attributes("rc_v", attrs).await }).unwrap();
    wait_drain("rc", 1);
    let mut model = read_all("rc_v");
    let mut rng = SmallRng::seed_from_u64(3);
    random_writes("rc_v", &mut model, &mut rng, 32);
    drain("rc");
    // Undrained writes, and a volume made after the last drain (its catalog entry is only
    // in the journal).
    random_writes("rc_v", &mut model, &mut rng, 32);
    mk_malloc("rc_late", 512);
    create_volume("rc", "rc_late_v", "rc_late").unwrap();
    wait_drain("rc", 0);
    let mut late = read_all("rc_late_v");
    random_writes("rc_late_v", &mut late, &mut rng, 8);
    // The crash takes the machine's metadata: journal headers, the RAID's superblocks.
    journal::stop_group("rc").unwrap();
    on_reactor(|| async {
        for l in ["rc_ja", "rc_jb"] {
            let d = registry::open(l, |_| {}).unwrap();
            let ch = d.channel().unwrap();
            write_slice(&ch, 0, &vec![0u8; 256 * 1024]).await.unwrap();
        }
        raid::delete("rc_raid").await.unwrap();
    });
    let e = on_reactor(|| async {
        journal::recover_group("rc", ["rc_ja".into(), "rc_jb".into()], "/nonexistent/repo").await
    });
    assert!(e.is_err());
    let rp = repo_path.clone();
    on_reactor(move || async move {
        journal::recover_group("rc", ["rc_ja".into(), "rc_jb".into()], &rp).await
    })
    .unwrap();
    let v = wait_state("rc", "rc_v", "offline");
    assert_eq!(v["attributes"]["owner"], "db01", "{v}");
    assert_eq!(v["layout"]["level"], "raid5", "{v}");
    // The blueprint recreates the RAID-5 on the old members; backup + journal fill it.
    let members = NewBase::Members(vec!["rc_r1".into(), "rc_r2".into(), "rc_r3".into()]);
    on_reactor(move || async move { journal::rebuild::start("rc_v", members).await }).unwrap();
    wait_state("rc", "rc_v", "online");
    check(
        "rc_v",
        &model,
        "recovered from the repository and the journal",
    );
    // The late volume's base survived: it is attached and replayed as it is.
    wait_state("rc", "rc_late_v", "online");
    check(
        "rc_late_v",
        &late,
        "a volume the repository did not know yet",
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    setup();
    let repo = tempfile::tempdir().unwrap();
    let repo_path = repo.path().join("r").to_str().unwrap().to_string();
    mk_malloc("bi_small_a", 1024);
    mk_malloc("bi_small_b", 1024);
    mk_malloc("bi_ja", 4 * 1024);
    mk_malloc("bi_jb", 4 * 1024);
    let msg = |e: BdevError| e.to_string();
    // A journal smaller than one record batch.
    let e = create_group(group_opts("bi", ["bi_small_a", "bi_small_b"], &repo_path)).unwrap_err();
    assert!(msg(e).contains("record batch"));
    let e = create_group(group_opts("bi", ["bi_ja", "bi_ja"], &repo_path)).unwrap_err();
    assert!(matches!(e, BdevError::Invalid(_)));
    let e = create_group(group_opts("bad/name", ["bi_ja", "bi_jb"], &repo_path)).unwrap_err();
    assert!(matches!(e, BdevError::Invalid(_)));
    let e = create_group(group_opts("bi", ["bi_ja", "nope"], &repo_path)).unwrap_err();
    assert!(matches!(e, BdevError::NotFound(_)));
    create_group(group_opts("bi", ["bi_ja", "bi_jb"], &repo_path)).unwrap();
    assert!(matches!(
        create_group(group_opts("bi", ["bi_small_a", "bi_small_b"], &repo_path)),
        Err(BdevError::Exists(_))
    ));
    // A base whose block size differs from the group's.
    malloc::create(malloc::MallocOptions {
        name: "bi_4k".into(),
        num_blocks: 256,
        block_size: 4096,
        uuid: None,
    })
    .unwrap();
    let e = create_volume("bi", "bi_v4k", "bi_4k").unwrap_err();
    assert!(msg(e).contains("must match"));
    mk_malloc("bi_base", 1024);
    create_volume("bi", "bi_v", "bi_base").unwrap();
    assert!(matches!(
        create_volume("bi", "bi_v", "bi_base"),
        Err(BdevError::Exists(_))
    ));
    assert!(matches!(
        create_volume("nogroup", "x", "bi_base"),
        Err(BdevError::NotFound(_))
    ));
    // An online volume has nothing to rebuild; a rebuild onto too small a bdev is refused
    // before anything is touched.
    wait_drain("bi", 1);
    let e = on_reactor(|| async {
        journal::rebuild::start("bi_v", NewBase::Bdev("bi_small_a".into())).await
    })
    .unwrap_err();
    assert!(msg(e).contains("online"));
    registry::unregister("bi_base").unwrap();
    wait_state("bi", "bi_v", "offline");
    mk_malloc("bi_tiny", 512);
    let e = on_reactor(|| async {
        journal::rebuild::start("bi_v", NewBase::Bdev("bi_tiny".into())).await
    })
    .unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");
    let e = on_reactor(|| async {
        journal::rebuild::start("bi_v", NewBase::Members(vec!["bi_tiny".into()])).await
    })
    .unwrap_err();
    assert!(e.to_string().contains("no RAID"), "{e}");
    assert_eq!(vol_info("bi", "bi_v")["state"], "offline");
    // The group holds a volume: not deleted.
    let e = on_reactor(|| async { journal::delete_group("bi").await }).unwrap_err();
    assert!(matches!(e, BdevError::Claimed { .. }));
    on_reactor(|| async { journal::delete_volume("bi_v").await }).unwrap();
    on_reactor(|| async { journal::delete_group("bi").await }).unwrap();
    // The legs are free again and hold no journal.
    create_group(group_opts("bi2", ["bi_ja", "bi_jb"], &repo_path)).unwrap();
}

#[test]
fn a_catalog_change_during_a_drain_does_not_undo_the_drains_record_after_a_restart() {
    setup();
    let repo = tempfile::tempdir().unwrap();
    let repo_path = repo.path().join("r").to_str().unwrap().to_string();
    mk_malloc("cd_ja", 8 * 1024);
    mk_malloc("cd_jb", 8 * 1024);
    mk_malloc("cd_a", 2048);
    create_group(group_opts("cd", ["cd_ja", "cd_jb"], &repo_path)).unwrap();
    create_volume("cd", "cd_va", "cd_a").unwrap();
    wait_drain("cd", 1);
    let mut model = read_all("cd_va");
    let mut rng = SmallRng::seed_from_u64(5);
    for _ in 0..6 {
        random_writes("cd_va", &mut model, &mut rng, 32);
    }
    // A slow drain; a volume is made while it runs (its catalog record lands after the
    // drain's point, the drain's own catalog only in the header).
    journal::set_policy("cd", None, None, Some(1)).unwrap();
    journal::drain::start("cd").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!info("cd")["drain"].is_null(), "the drain still runs");
    mk_malloc("cd_b", 512);
    create_volume("cd", "cd_vb", "cd_b").unwrap();
    journal::set_policy("cd", None, None, Some(0)).unwrap();
    wait_drain("cd", 2);
    random_writes("cd_va", &mut model, &mut rng, 16);
    let before = vol_info("cd", "cd_va")["last_backup"].clone();
    restart("cd", &["cd_ja", "cd_jb"]);
    wait_state("cd", "cd_va", "online");
    let after = vol_info("cd", "cd_va")["last_backup"].clone();
    assert_eq!(
        before, after,
        "the drain's backup record survives the restart"
    );
    // The proof: a rebuild from the repository and the journal holds every write.
    registry::unregister("cd_a").unwrap();
    wait_state("cd", "cd_va", "offline");
    mk_malloc("cd_a2", 2048);
    on_reactor(|| async { journal::rebuild::start("cd_va", NewBase::Bdev("cd_a2".into())).await })
        .unwrap();
    wait_state("cd", "cd_va", "online");
    check("cd_va", &model, "rebuilt after a restart");
}

#[test]
fn a_volume_whose_base_fails_before_its_first_backup_does_not_stop_the_others_draining() {
    setup();
    let repo = tempfile::tempdir().unwrap();
    let repo_path = repo.path().join("r").to_str().unwrap().to_string();
    mk_malloc("sk_ja", 8 * 1024);
    mk_malloc("sk_jb", 8 * 1024);
    mk_malloc("sk_a", 2048);
    create_group(group_opts("sk", ["sk_ja", "sk_jb"], &repo_path)).unwrap();
    create_volume("sk", "sk_va", "sk_a").unwrap();
    wait_drain("sk", 1);
    let mut ma = read_all("sk_va");
    let mut rng = SmallRng::seed_from_u64(9);
    random_writes("sk_va", &mut ma, &mut rng, 16);
    // B's first (full) backup is slow; its base goes away in the middle.
    journal::set_policy("sk", None, None, Some(1)).unwrap();
    mk_malloc("sk_b", 2048);
    create_volume("sk", "sk_vb", "sk_b").unwrap();
    // The drain the new volume asked for plans B in while its base is still there (a base
    // gone before the plan is made is simply left out): wait until it is copying B.
    wait_drain_copying("sk", "sk_vb");
    let mut mb = read_all("sk_vb");
    random_writes("sk_vb", &mut mb, &mut rng, 8);
    registry::unregister("sk_b").unwrap();
    wait_state("sk", "sk_vb", "offline");
    journal::set_policy("sk", None, None, Some(0)).unwrap();
    for _ in 0..1000 {
        if info("sk")["drain"].is_null() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        info("sk")["last_drain"]["result"],
        "failed",
        "{}",
        info("sk")
    );
    // The next drain leaves B out and still drains A; B's records stay in the journal.
    random_writes("sk_va", &mut ma, &mut rng, 16);
    let chain = vol_info("sk", "sk_va")["last_backup"]["chain"]
        .as_u64()
        .unwrap();
    let d = drain("sk");
    assert_eq!(d["result"], "done", "{d}");
    assert_eq!(
        vol_info("sk", "sk_va")["last_backup"]["chain"]
            .as_u64()
            .unwrap(),
        chain + 1
    );
    assert!(vol_info("sk", "sk_vb")["delta_records"].as_u64().unwrap() > 0);
    // B cannot be rebuilt (no backup): a clear refusal. A can, holding every write.
    mk_malloc("sk_b2", 2048);
    let e = on_reactor(|| async {
        journal::rebuild::start("sk_vb", NewBase::Bdev("sk_b2".into())).await
    })
    .unwrap_err();
    assert!(e.to_string().contains("no backup"), "{e}");
    registry::unregister("sk_a").unwrap();
    wait_state("sk", "sk_va", "offline");
    mk_malloc("sk_a2", 2048);
    on_reactor(|| async { journal::rebuild::start("sk_va", NewBase::Bdev("sk_a2".into())).await })
        .unwrap();
    wait_state("sk", "sk_va", "online");
    check(
        "sk_va",
        &ma,
        "rebuilt while another volume held the trim back",
    );
    // Once B is deleted, a drain trims everything.
    on_reactor(|| async { journal::delete_volume("sk_vb").await }).unwrap();
    drain("sk");
    assert_eq!(
        info("sk")["journal"]["undrained_records"],
        0,
        "{}",
        info("sk")
    );
}

/// Writes a batch of one record (`data` blocks of `fill`, or a CRC that does not match
/// when `torn`) at log block `phys` of both legs.
fn put_batch(legs: &[&str; 2], phys: u64, run: u32, seq: u64, data: u32, fill: u8, torn: bool) {
    use journal::format::{self, BatchHeader, Entry, RecordKind};
    let payload = vec![fill; data as usize * BS as usize];
    let crc = strata_bdev::kernels::crc32c(&payload) ^ u32::from(torn);
    let hb = format::header_blocks(1, BS);
    let h = BatchHeader {
        first_seq: seq,
        run,
        hdr_blocks: hb,
        total_blocks: hb as u64 + data as u64,
        entries: vec![Entry {
            kind: RecordKind::Write,
            volume: 1,
            lba: 0,
            blocks: data as u64,
            data_blocks: data,
            crc,
        }],
    };
    let mut raw = vec![0u8; hb as usize * BS as usize];
    format::encode_batch(&mut raw, &uuid_for_scan(), &h);
    raw.extend_from_slice(&payload);
    let legs = legs.map(String::from);
    on_reactor(move || async move {
        for l in legs {
            let d = registry::open(&l, |_| {}).unwrap();
            let ch = d.channel().unwrap();
            write_slice(&ch, phys, &raw).await.unwrap();
        }
    });
}

fn uuid_for_scan() -> uuid::Uuid {
    uuid::Uuid::from_u128(0x5ca9)
}

#[test]
fn the_scan_takes_the_later_run_over_a_stale_header_when_a_batch_skipped_to_the_next_lap() {
    setup();
    mk_malloc("sc_a", 64);
    mk_malloc("sc_b", 64);
    let legs = ["sc_a", "sc_b"];
    const LOG: u64 = 64;
    // Run 1 cut batch B (seq 5) at the end of lap 0; run 2's batch C (seq 5 too) did not
    // fit there and went to the next lap's start, then D (seq 6) after it.
    put_batch(&legs, 60, 1, 5, 1, 0xbb, true);
    put_batch(&legs, 0, 2, 5, 9, 0xcc, false);
    put_batch(&legs, 10, 2, 6, 1, 0xdd, false);
    let found = on_reactor(|| async {
        let descs: Vec<_> = ["sc_a", "sc_b"]
            .iter()
            .map(|l| registry::open(l, |_| {}).unwrap())
            .collect();
        let chans = [
            Some(descs[0].channel().unwrap()),
            Some(descs[1].channel().unwrap()),
        ];
        let s = journal::log::scan(&chans, &uuid_for_scan(), BS, 0, LOG, 60, 5, 2).await;
        (s.records.len(), s.head, s.next_seq, s.batches)
    });
    assert_eq!(
        found,
        (2, 64 + 10 + 2, 7, 2),
        "C and D are found past the stale B"
    );
    // With the run-2 batches gone, B (torn) ends the log where it is.
    put_batch(&legs, 0, 0, 99, 1, 0, false);
    let found = on_reactor(|| async {
        let d: Vec<_> = ["sc_a", "sc_b"]
            .iter()
            .map(|l| registry::open(l, |_| {}).unwrap())
            .collect();
        let chans = [Some(d[0].channel().unwrap()), Some(d[1].channel().unwrap())];
        let s = journal::log::scan(&chans, &uuid_for_scan(), BS, 0, LOG, 60, 5, 2).await;
        (s.records.len(), s.head, s.next_seq)
    });
    assert_eq!(found, (0, 60, 5), "a torn batch is never taken");
}

#[test]
fn sequence_numbers_continue_after_the_backups_when_a_recovery_finds_an_empty_log() {
    setup();
    let repo = tempfile::tempdir().unwrap();
    let repo_path = repo.path().join("r").to_str().unwrap().to_string();
    mk_malloc("hb_ja", 4 * 1024);
    mk_malloc("hb_jb", 4 * 1024);
    mk_malloc("hb_a", 2048);
    create_group(group_opts("hb", ["hb_ja", "hb_jb"], &repo_path)).unwrap();
    create_volume("hb", "hb_va", "hb_a").unwrap();
    wait_drain("hb", 1);
    let mut ma = read_all("hb_va");
    let mut rng = SmallRng::seed_from_u64(21);
    // B loses its base during its first backup: its records hold the trim back, so the
    // drain's cut is below the point A's backups reach.
    journal::set_policy("hb", None, None, Some(1)).unwrap();
    mk_malloc("hb_b", 2048);
    create_volume("hb", "hb_vb", "hb_b").unwrap();
    wait_drain_copying("hb", "hb_vb");
    let mut mb = read_all("hb_vb");
    random_writes("hb_vb", &mut mb, &mut rng, 4);
    registry::unregister("hb_b").unwrap();
    wait_state("hb", "hb_vb", "offline");
    journal::set_policy("hb", None, None, Some(0)).unwrap();
    for _ in 0..1000 {
        if info("hb")["drain"].is_null() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    random_writes("hb_va", &mut ma, &mut rng, 16);
    let d = drain("hb");
    assert_eq!(d["result"], "done", "{d}");
    assert_eq!(d["held_back_by"], serde_json::json!(["hb_vb"]), "{d}");
    // Blank journal legs (beyond what the group survives for B, which had no backup): the
    // group comes back from the repository with an empty log.
    journal::stop_group("hb").unwrap();
    on_reactor(|| async {
        for l in ["hb_ja", "hb_jb"] {
            let d = registry::open(l, |_| {}).unwrap();
            let ch = d.channel().unwrap();
            write_slice(&ch, 0, &vec![0u8; 4 * 1024 * 1024])
                .await
                .unwrap();
        }
    });
    let rp = repo_path.clone();
    on_reactor(move || async move {
        journal::recover_group("hb", ["hb_ja".into(), "hb_jb".into()], &rp).await
    })
    .unwrap();
    wait_state("hb", "hb_va", "online");
    // Writes after the recovery must be numbered after A's backup, or a replay skips them.
    random_writes("hb_va", &mut ma, &mut rng, 16);
    registry::unregister("hb_a").unwrap();
    wait_state("hb", "hb_va", "offline");
    mk_malloc("hb_a2", 2048);
    on_reactor(|| async { journal::rebuild::start("hb_va", NewBase::Bdev("hb_a2".into())).await })
        .unwrap();
    wait_state("hb", "hb_va", "online");
    check("hb_va", &ma, "rebuilt after a recovery onto an empty log");
}
