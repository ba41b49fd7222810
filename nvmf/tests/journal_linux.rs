//! The Linux kernel as the host of a protected RAID-5 volume: a QEMU guest
//! (`scripts/linux-host/run-guest.sh`) writes a pattern through its NVMe/TCP driver, the
//! journal is drained to the repository, the guest writes a second pattern over half of the
//! first and beyond, two of the RAID-5's three members are deleted (the volume goes
//! offline), the volume is rebuilt onto new file members from the catalog's blueprint, the
//! backup chain and the journal, and the guest reads the whole span back and finds exactly
//! what it wrote (`scripts/linux-host/journal-guest.sh` has the guest's steps).
//!
//! The only allowed skip: `scripts/linux-host/install.sh` exits 3 ("SKIPPED: ...") when QEMU
//! cannot run here at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::linux_guest::{self, Guest};
use common::{rpc_call, uring_cfg, TgtProcess};

const NQN: &str = "nqn.2026-12.io.strata:kjournal";
const BS: u64 = 4096;
/// MiB of each pattern.
const MIB: u64 = 16;
const GUEST_TIMEOUT_S: u64 = 600;

fn rpc_ok(t: &TgtProcess, method: &str, params: Value) -> Value {
    rpc_call(&t.sock, method, &params)
        .unwrap_or_else(|e| panic!("{method} {params}: {e:?}\n{}", t.log_text()))
}

fn sparse(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    p
}

fn volume(t: &TgtProcess) -> Value {
    rpc_ok(t, "bdev_journal_volume_get", json!({ "name": "PV" }))[0].clone()
}

fn wait_until(t: &TgtProcess, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let g = rpc_ok(t, "bdev_journal_group_get", json!({ "name": "G" }))[0].clone();
        if pred(&g) {
            return g;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "{what} did not happen: {g}\n{}",
            t.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn linux_host_pattern_survives_two_raid5_members_lost_via_backup_and_journal() {
    if !linux_guest::installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Vec::new();
    for (name, mib) in [("R0", 48), ("R1", 48), ("R2", 48), ("JA", 96), ("JB", 96)] {
        cfg.push(uring_cfg(name, &sparse(dir.path(), name, mib)));
    }
    cfg.push(json!({ "method": "bdev_raid_create", "params": { "name": "R",
        "raid_level": "raid5", "strip_size_kb": 64, "base_bdevs": "R0 R1 R2", "superblock": true } }));
    cfg.push(
        json!({ "method": "bdev_journal_group_create", "params": { "name": "G",
        "journal_bdevs": "JA JB", "repository": dir.path().join("repo"),
        "drain_fill_percent": 0, "drain_age_sec": 0 } }),
    );
    cfg.push(
        json!({ "method": "bdev_journal_volume_create", "params": { "group": "G",
        "name": "PV", "base_bdev": "R" } }),
    );
    let t = TgtProcess::launch(dir.path(), "k", cfg, NQN, "PV", &["--interrupt-mode"]);
    let v = volume(&t);
    assert!(
        v["num_blocks"].as_u64().unwrap() * BS >= (2 * MIB) << 20,
        "{v}"
    );

    let script = linux_guest::repo_dir().join("scripts/linux-host/journal-guest.sh");
    let command = format!(
        "PORT={} NQN={NQN} MIB={MIB} bash {}",
        t.port,
        script.display()
    );
    let mut guest = Guest::start(dir.path(), &command, GUEST_TIMEOUT_S);

    guest.wait_file("written1");
    // The volume's first (full) drain may still run; then a drain of the pattern.
    wait_until(&t, "the first drain", |g| g["drain"].is_null());
    let before = wait_until(&t, "", |_| true)["drains_done"]
        .as_u64()
        .unwrap();
    rpc_ok(&t, "bdev_journal_group_drain", json!({ "name": "G" }));
    let g = wait_until(&t, "the drain", |g| {
        g["drain"].is_null() && g["drains_done"].as_u64().unwrap() > before
    });
    assert_eq!(g["last_drain"]["result"], "done", "{g}");
    guest.signal("drained");

    guest.wait_file("written2");
    let g = wait_until(&t, "", |_| true);
    assert!(
        g["journal"]["undrained_records"].as_u64().unwrap() > 0,
        "the second pattern is only in the journal and the RAID: {g}"
    );
    // Two of three RAID-5 members lost: beyond its redundancy.
    rpc_ok(&t, "bdev_uring_delete", json!({ "name": "R0" }));
    rpc_ok(&t, "bdev_uring_delete", json!({ "name": "R1" }));
    wait_until(&t, "the volume offline", |_| {
        volume(&t)["state"] == "offline"
    });
    for m in ["N0", "N1", "N2"] {
        let f = sparse(dir.path(), m, 48);
        rpc_ok(
            &t,
            "bdev_uring_create",
            json!({ "name": m, "filename": f, "block_size": BS }),
        );
    }
    rpc_ok(
        &t,
        "bdev_journal_volume_rebuild",
        json!({ "name": "PV", "base_bdevs": ["N0", "N1", "N2"] }),
    );
    wait_until(&t, "the rebuild", |_| volume(&t)["state"] == "online");
    let v = volume(&t);
    assert_eq!(v["last_rebuild"]["result"], "done", "{v}");
    assert!(
        v["last_rebuild"]["replayed_records"].as_u64().unwrap() > 0,
        "{v}"
    );
    guest.signal("rebuilt");

    guest.wait_file("verified");
    guest.finish();
    t.stop();
}
