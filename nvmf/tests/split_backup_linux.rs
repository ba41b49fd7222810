//! The Linux kernel as production host and backup host of a split-mirror backup: a QEMU guest
//! (`scripts/linux-host/run-guest.sh`) writes a pattern to a 1 GiB mirror whose initial copy
//! is still running, splits it with strata's vendor admin command (`nvme admin-passthru`),
//! writes a second pattern, then connects to the point-in-time image's namespace, finds the
//! first pattern there (the second on the mirror) while the copy still runs, and starts a
//! backup of the image with the vendor command. The test then restores the backup onto a
//! fresh bdev and compares it with the image (`scripts/linux-host/split-backup-guest.sh` has
//! the guest's steps).
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

const NQN: &str = "nqn.2026-12.io.strata:ksplit";
const IMG_NQN: &str = "nqn.2026-12.io.strata:ksplit-image";
const BS: u64 = 4096;
/// MiB the guest writes per pattern.
const MIB: u64 = 32;
/// Leg size: a 1 GiB volume plus the metadata area.
const LEG_MIB: u64 = 1025;
const GUEST_TIMEOUT_S: u64 = 480;

fn rpc_ok(t: &TgtProcess, method: &str, params: Value) -> Value {
    rpc_call(&t.sock, method, &params)
        .unwrap_or_else(|e| panic!("{method} {params}: {e:?}\n{}", t.log_text()))
}

fn sparse(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .set_len(LEG_MIB << 20)
        .unwrap();
    p
}

#[test]
fn linux_host_splits_reads_the_image_and_starts_a_backup_while_the_copy_runs() {
    if !linux_guest::installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let legs = [sparse(dir.path(), "leg0"), sparse(dir.path(), "leg1")];
    let repo = dir.path().join("repo");
    let cfg = vec![
        uring_cfg("D0", &legs[0]),
        uring_cfg("D1", &legs[1]),
        // Slow enough that the initial copy of 1 GiB outlasts the guest's steps.
        json!({ "method": "bdev_mirror_create", "params": { "name": "M0", "primary": "D0",
            "secondary": "D1", "max_bandwidth_mb_sec": 4 } }),
    ];
    let t = TgtProcess::launch(dir.path(), "k", cfg, NQN, "M0", &["--interrupt-mode"]);
    rpc_ok(
        &t,
        "backup_repository_create",
        json!({ "repository": repo }),
    );
    let m = t.mirror_get("M0");
    let n = m["num_blocks"].as_u64().unwrap();
    assert!(n * BS >= 1 << 30, "a 1 GiB volume: {m}");
    assert_eq!(m["job"]["kind"], "resync", "{m}");

    let script = linux_guest::repo_dir().join("scripts/linux-host/split-backup-guest.sh");
    let command = format!(
        "PORT={} NQN={NQN} IMG_NQN={IMG_NQN} MIB={MIB} REPO={} bash {}",
        t.port,
        repo.display(),
        script.display()
    );
    let mut guest = Guest::start(dir.path(), &command, GUEST_TIMEOUT_S);

    guest.wait_file("split");
    let m = t.mirror_get("M0");
    assert_eq!(m["state"], "split", "{m}");
    assert_eq!(m["image"]["name"], "M0_pit", "{m}");
    let owed_at_split = m["image"]["owed_regions_at_split"].as_u64().unwrap();
    assert!(
        owed_at_split > 0,
        "the initial copy was under way at the split: {m}"
    );
    assert_eq!(m["job"]["kind"], "image_copy", "{m}");
    rpc_ok(
        &t,
        "nvmf_create_subsystem",
        json!({ "nqn": IMG_NQN, "allow_any_host": true }),
    );
    rpc_ok(
        &t,
        "nvmf_subsystem_add_ns",
        json!({ "nqn": IMG_NQN, "namespace": { "bdev_name": "M0_pit", "nsid": 1 } }),
    );
    rpc_ok(
        &t,
        "nvmf_subsystem_add_listener",
        json!({ "nqn": IMG_NQN, "listen_address":
        { "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": t.port.to_string() } }),
    );
    guest.signal("exported");

    guest.wait_file("verified");
    let m = t.mirror_get("M0");
    assert!(
        m["image"]["owed_regions"].as_u64().unwrap() > 0,
        "the copy still ran while the guest verified the image: {m}"
    );
    guest.wait_file("backup");
    rpc_ok(
        &t,
        "bdev_mirror_set_options",
        json!({ "name": "M0", "max_bandwidth_mb_sec": 0 }),
    );
    let t0 = Instant::now();
    let last = loop {
        let m = t.mirror_get("M0");
        if m["image"]["backup"].is_null() && !m["image"]["last_backup_job"].is_null() {
            break m["image"]["last_backup_job"].clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "backup did not end: {m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(last["result"], "done", "{last}\n{}", t.log_text());
    assert_eq!(last["mode"], "memory", "{last}");

    guest.finish();

    // The backup restored onto a fresh bdev holds the image the guest verified.
    let rfile = sparse(dir.path(), "restore");
    rpc_ok(
        &t,
        "bdev_uring_create",
        json!({ "name": "R0", "filename": rfile, "block_size": BS }),
    );
    let id = last["id"].as_str().unwrap();
    let job = rpc_ok(
        &t,
        "backup_restore",
        json!({ "repository": repo, "backup": id, "bdev": "R0" }),
    )["job"]
        .clone();
    let t0 = Instant::now();
    let j = loop {
        let j = rpc_ok(&t, "backup_job_get", json!({ "id": job }))[0].clone();
        if j["state"] != "running" {
            break j;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "restore did not end: {j}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(j["state"], "done", "{j}");
    let mut h = t.host(IMG_NQN);
    let span = MIB * 256;
    let img = h.read_blocks(1, 0, span).unwrap();
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(&rfile).unwrap();
    let mut restored = vec![0u8; img.len()];
    f.read_exact_at(&mut restored, 0).unwrap();
    assert!(
        restored == img,
        "the restored backup differs from the image"
    );
    assert!(
        img.iter().any(|&b| b != 0),
        "the image holds the guest's pattern"
    );
    let mut rest = vec![0u8; 64 << 20];
    let mut off = span * BS;
    while off < n * BS {
        let k = (rest.len() as u64).min(n * BS - off) as usize;
        f.read_exact_at(&mut rest[..k], off).unwrap();
        assert!(
            rest[..k].iter().all(|&b| b == 0),
            "restored bytes past the pattern at {off}"
        );
        off += k as u64;
    }
    drop(h);
    t.stop();
}
