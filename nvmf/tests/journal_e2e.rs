//! Dual redundancy through the real target process and NVMe/TCP (strata's host library), on
//! file-backed bdevs: a protected volume over a RAID-5 with a mirrored journal and a
//! directory repository. Four writer threads write versioned blocks throughout; every
//! acknowledged version must read back after each fault:
//! - `kill -9` in the middle of writes: the group re-assembles from its journal and catalog;
//! - `kill -9` in the middle of a (rate-limited) drain: after the restart the drain is
//!   redone, and the repository holds each backup once (nothing half-listed, nothing twice);
//! - two RAID-5 members lost: the volume goes offline; a rebuild onto new members is cut by
//!   `kill -9`; after the restart the volume stays offline (never a half-restored base) and
//!   the rebuild run again brings every acknowledged write back;
//! - a journal leg lost under writes: they go on; a new leg is resynced; a last restart
//!   assembles from the new leg.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::writes::{self, check_image, new_blocks, Blocks, Writers};
use common::{rpc_call, uring_cfg, TgtProcess};

const BS: usize = writes::BS;
const NQN: &str = "nqn.2026-12.io.strata:journal";
const VOL: &str = "PV";
const TIMEOUT: Duration = Duration::from_secs(120);

fn make_file(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(mib << 20).unwrap();
    p
}

fn rpc(t: &TgtProcess, method: &str, params: Value) -> Value {
    rpc_call(&t.sock, method, &params)
        .unwrap_or_else(|e| panic!("{method} {params}: {e:?}\n{}", t.log_text()))
}

fn vol(t: &TgtProcess) -> Value {
    rpc(t, "bdev_journal_volume_get", json!({ "name": VOL }))[0].clone()
}

fn group(t: &TgtProcess) -> Value {
    rpc(t, "bdev_journal_group_get", json!({ "name": "G" }))[0].clone()
}

fn wait_for(t: &TgtProcess, what: &str, mut pred: impl FnMut(&TgtProcess) -> bool) {
    let t0 = Instant::now();
    while !pred(t) {
        assert!(
            t0.elapsed() < TIMEOUT,
            "{what} did not happen: {}\n{}",
            group(t),
            t.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the target on the file bdevs `names` (re-assembly does the rest), exporting the
/// protected volume; `create` adds the RAID-5, the group and the volume.
fn start(dir: &Path, names: &[&str], create: bool, tag: &str) -> TgtProcess {
    let mut cfg: Vec<Value> = names.iter().map(|n| uring_cfg(n, &dir.join(n))).collect();
    if create {
        cfg.push(json!({ "method": "bdev_raid_create", "params": { "name": "R",
            "raid_level": "raid5", "strip_size_kb": 64, "base_bdevs": "R0 R1 R2", "superblock": true } }));
        cfg.push(
            json!({ "method": "bdev_journal_group_create", "params": { "name": "G",
            "journal_bdevs": ["JA", "JB"], "repository": dir.join("repo"),
            "drain_fill_percent": 0, "drain_age_sec": 0, "chunk_kb": 256 } }),
        );
        cfg.push(
            json!({ "method": "bdev_journal_volume_create", "params": { "group": "G",
            "name": VOL, "base_bdev": "R", "attributes": { "app": "e2e" } } }),
        );
    }
    TgtProcess::launch(dir, tag, cfg, NQN, VOL, &["--interrupt-mode"])
}

/// Reads the whole volume through NVMe/TCP and checks every acknowledged version.
fn check_all(t: &TgtProcess, n: u64, blocks: &Blocks, what: &str) {
    let mut h = t.host(NQN);
    let mut img = Vec::with_capacity(n as usize * BS);
    let mut lba = 0;
    while lba < n {
        let k = 256.min(n - lba);
        img.extend(h.read_blocks(1, lba, k).unwrap());
        lba += k;
    }
    if let Err(e) = check_image(&img, blocks) {
        panic!("{what}: {e}\n{}", t.log_text());
    }
}

fn writers(t: &TgtProcess, blocks: &Blocks, n: u64, seed: u64) -> Writers {
    Writers::start(|| t.host(NQN), blocks, n, seed, false)
}

/// Writers that count failures instead of stopping (to show writes never failed).
fn counting_writers(t: &TgtProcess, blocks: &Blocks, n: u64, seed: u64) -> Writers {
    Writers::start(|| t.host(NQN), blocks, n, seed, true)
}

#[test]
fn kill9_in_writes_drain_and_rebuild_two_members_lost_and_a_journal_leg_lost() {
    let dir = tempfile::tempdir().unwrap().keep();
    for m in ["R0", "R1", "R2"] {
        make_file(&dir, m, 32);
    }
    for j in ["JA", "JB"] {
        make_file(&dir, j, 64);
    }
    let t = start(&dir, &["R0", "R1", "R2", "JA", "JB"], true, "1");
    let v = vol(&t);
    assert_eq!(v["state"], "online", "{v}");
    assert_eq!(v["layout"]["level"], "raid5", "{v}");
    assert_eq!(v["attributes"]["app"], "e2e", "{v}");
    let n = v["num_blocks"].as_u64().unwrap();
    let blocks = new_blocks(n);

    // 1. kill -9 in the middle of writes.
    let w = writers(&t, &blocks, n, 1);
    std::thread::sleep(Duration::from_millis(1500));
    t.kill9();
    let (acked, _) = w.finish();
    assert!(acked > 0);
    let t = start(&dir, &["R0", "R1", "R2", "JA", "JB"], false, "2");
    wait_for(&t, "the volume online after the restart", |t| {
        vol(t)["state"] == "online"
    });
    check_all(&t, n, &blocks, "after kill -9 in writes");
    let g = group(&t);
    assert!(
        g["journal"]["undrained_records"].as_u64().unwrap() > 0,
        "{g}"
    );

    // 2. kill -9 in the middle of a drain (rate-limited so it is cut half way).
    rpc(
        &t,
        "bdev_journal_group_set_options",
        json!({ "name": "G", "max_bandwidth_mb_sec": 4 }),
    );
    // The first (full) drain the volume's creation started may still run: let it end.
    wait_for(&t, "no drain running", |t| group(t)["drain"].is_null());
    let w = writers(&t, &blocks, n, 2);
    std::thread::sleep(Duration::from_millis(500));
    rpc(&t, "bdev_journal_group_drain", json!({ "name": "G" }));
    wait_for(&t, "the drain under way", |t| {
        group(t)["drain"]["done_bytes"].as_u64().unwrap_or(0) > 0
    });
    let g = group(&t);
    assert!(g["drain"]["percent"].as_f64().unwrap() < 100.0, "{g}");
    t.kill9();
    w.finish();
    let t = start(&dir, &["R0", "R1", "R2", "JA", "JB"], false, "3");
    wait_for(&t, "the volume online", |t| vol(t)["state"] == "online");
    check_all(&t, n, &blocks, "after kill -9 in a drain");
    rpc(
        &t,
        "bdev_journal_group_set_options",
        json!({ "name": "G", "max_bandwidth_mb_sec": 0 }),
    );
    let before = group(&t)["drains_done"].as_u64().unwrap();
    rpc(&t, "bdev_journal_group_drain", json!({ "name": "G" }));
    wait_for(&t, "the drain redone", |t| {
        let g = group(t);
        g["drain"].is_null() && g["drains_done"].as_u64().unwrap() > before
    });
    let g = group(&t);
    assert_eq!(g["last_drain"]["result"], "done", "{g}");
    assert_eq!(g["journal"]["undrained_records"], 0, "{g}");
    let list = rpc(&t, "backup_list", json!({ "repository": dir.join("repo") }));
    let list = list.as_array().unwrap();
    assert!(list.iter().all(|b| b["state"] == "complete"), "{list:?}");
    let v = vol(&t);
    let chain = v["last_backup"]["chain"].as_u64().unwrap();
    assert_eq!(
        list.len() as u64,
        chain,
        "one backup per drain of the volume: {list:?}"
    );

    // 3. Two RAID-5 members lost; the rebuild onto new members is cut by kill -9.
    let w = writers(&t, &blocks, n, 3);
    std::thread::sleep(Duration::from_millis(800));
    w.finish();
    rpc(&t, "bdev_uring_delete", json!({ "name": "R0" }));
    rpc(&t, "bdev_uring_delete", json!({ "name": "R1" }));
    wait_for(&t, "the volume offline", |t| vol(t)["state"] == "offline");
    for m in ["N0", "N1", "N2"] {
        make_file(&dir, m, 32);
        rpc(
            &t,
            "bdev_uring_create",
            json!({ "name": m, "filename": dir.join(m), "block_size": BS }),
        );
    }
    rpc(
        &t,
        "bdev_journal_group_set_options",
        json!({ "name": "G", "max_bandwidth_mb_sec": 8 }),
    );
    rpc(
        &t,
        "bdev_journal_volume_rebuild",
        json!({ "name": VOL, "base_bdevs": "N0 N1 N2" }),
    );
    wait_for(&t, "the rebuild under way", |t| {
        vol(t)["rebuild"]["done_bytes"].as_u64().unwrap_or(0) > 0
    });
    t.kill9();
    // R0 and R1 are gone for good; R2 is left out too (its superblock names the old RAID).
    let t = start(&dir, &["N0", "N1", "N2", "JA", "JB"], false, "4");
    std::thread::sleep(Duration::from_millis(500));
    let v = vol(&t);
    assert_eq!(
        v["state"], "offline",
        "a half-restored base is never served: {v}"
    );
    assert!(v["reason"].as_str().unwrap().contains("rebuild"), "{v}");
    rpc(
        &t,
        "bdev_journal_group_set_options",
        json!({ "name": "G", "max_bandwidth_mb_sec": 0 }),
    );
    rpc(
        &t,
        "bdev_journal_volume_rebuild",
        json!({ "name": VOL, "base_bdevs": "N0 N1 N2" }),
    );
    wait_for(&t, "the rebuilt volume online", |t| {
        vol(t)["state"] == "online"
    });
    assert_eq!(vol(&t)["last_rebuild"]["result"], "done");
    check_all(&t, n, &blocks, "after the rebuild beyond redundancy");

    // 4. A journal leg lost under writes; a new one resynced.
    let w = counting_writers(&t, &blocks, n, 4);
    std::thread::sleep(Duration::from_millis(500));
    rpc(&t, "bdev_uring_delete", json!({ "name": "JB" }));
    std::thread::sleep(Duration::from_millis(700));
    let g = group(&t);
    assert_eq!(g["journal"]["legs"][1]["state"], "failed", "{g}");
    make_file(&dir, "JC", 64);
    rpc(
        &t,
        "bdev_uring_create",
        json!({ "name": "JC", "filename": dir.join("JC"), "block_size": BS }),
    );
    rpc(
        &t,
        "bdev_journal_group_replace_leg",
        json!({ "name": "G", "new_bdev": "JC" }),
    );
    wait_for(&t, "the new leg resynced", |t| {
        group(t)["journal"]["legs"][1]["state"] == "ok"
    });
    std::thread::sleep(Duration::from_millis(500));
    let (acked, failed) = w.finish();
    assert!(
        acked > 0 && failed == 0,
        "writes went on: {acked} acked, {failed} failed"
    );
    check_all(&t, n, &blocks, "after the journal leg was replaced");
    t.kill9();
    let t = start(&dir, &["N0", "N1", "N2", "JA", "JC"], false, "5");
    wait_for(&t, "the volume online", |t| vol(t)["state"] == "online");
    check_all(&t, n, &blocks, "after a restart on the new leg");
    let g = group(&t);
    assert_eq!(g["journal"]["legs"][1]["name"], "JC", "{g}");
    t.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
