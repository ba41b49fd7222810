//! Split-mirror backup through the real target process and NVMe/TCP (strata's host
//! library), on file-backed legs:
//! - the production host splits its mirror with the vendor admin command while the initial
//!   copy is still under way; the split answers at once;
//! - the point-in-time image is exported as its own namespace and a backup host reads it
//!   whole (equal to the host's data at the split) while the production host keeps writing
//!   and the copy still runs; the backup host starts a backup with the vendor command;
//! - `kill -9` during the copy and the backup: after the restart the image is back (same
//!   bytes), the backup resumes from its checkpoint and completes, every acknowledged write
//!   of the production host reads back;
//! - a restore onto another bdev (through a slow delay bdev) is killed half way and run
//!   again after the restart: the bdev then holds the image exactly;
//! - `backup_verify` passes, then finds a chunk planted with damage; resume drops the image
//!   (its namespace goes) and resyncs the secondary; bad requests get clear refusals and a
//!   full destination fails the job without touching the repository.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::writes::{self, check_image, new_blocks, write_next, Writers};
use common::{rpc_call, uring_cfg, TgtProcess};

const BS: usize = writes::BS;
const NQN: &str = "nqn.2026-12.io.strata:split";
const NQN_IMG: &str = "nqn.2026-12.io.strata:split-image";
const MIRROR: &str = "M0";
const IMAGE: &str = "M0_pit";
const LEG_MIB: u64 = 64;
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

fn start(dir: &Path, files: &[PathBuf], create: bool, tag: &str) -> TgtProcess {
    let mut cfg = vec![uring_cfg("D0", &files[0]), uring_cfg("D1", &files[1])];
    if create {
        cfg.push(json!({ "method": "bdev_mirror_create", "params": { "name": MIRROR,
            "primary": "D0", "secondary": "D1", "region_size_kb": 256, "max_bandwidth_mb_sec": 4 } }));
    }
    TgtProcess::launch(dir, tag, cfg, NQN, MIRROR, &["--interrupt-mode"])
}

/// Exports the image as namespace 1 of its own subsystem, on the same listener.
fn export_image(t: &TgtProcess) {
    rpc(
        t,
        "nvmf_create_subsystem",
        json!({ "nqn": NQN_IMG, "allow_any_host": true }),
    );
    rpc(
        t,
        "nvmf_subsystem_add_ns",
        json!({ "nqn": NQN_IMG, "namespace": { "bdev_name": IMAGE, "nsid": 1 } }),
    );
    rpc(
        t,
        "nvmf_subsystem_add_listener",
        json!({ "nqn": NQN_IMG, "listen_address":
        { "trtype": "TCP", "adrfam": "IPv4", "traddr": t.ip, "trsvcid": t.port.to_string() } }),
    );
}

fn wait_for(t: &TgtProcess, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let m = t.mirror_get(MIRROR);
        if pred(&m) {
            return m;
        }
        assert!(
            t0.elapsed() < TIMEOUT,
            "{what} did not happen: {m}\n{}",
            t.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_repo_job(t: &TgtProcess, id: &Value) -> Value {
    let t0 = Instant::now();
    loop {
        let j = rpc(t, "backup_job_get", json!({ "id": id }))[0].clone();
        if j["state"] != "running" {
            return j;
        }
        assert!(t0.elapsed() < TIMEOUT, "job {id} did not end: {j}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_file_blocks(p: &Path, off_blocks: u64, n: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(p).unwrap();
    let mut out = vec![0u8; n as usize * BS];
    f.read_exact_at(&mut out, off_blocks * BS as u64).unwrap();
    out
}

#[test]
fn split_during_the_copy_export_backup_restore_across_kill9() {
    // Kept when the test fails (logs, repository); removed at the end.
    let dir = Keep(tempfile::tempdir().unwrap().keep());
    let files = [
        make_file(dir.path(), "leg0", LEG_MIB),
        make_file(dir.path(), "leg1", LEG_MIB),
    ];
    let repo = dir.path().join("repo");
    let t = start(dir.path(), &files, true, "1");
    let m = t.mirror_get(MIRROR);
    let n = m["num_blocks"].as_u64().unwrap();
    let data_offset = m["data_offset_blocks"].as_u64().unwrap();
    let blocks = new_blocks(n);

    // The production host writes the whole volume while the initial copy runs.
    let mut h1 = t.host(NQN);
    let mut lba = 0;
    while lba < n {
        let k = 256.min(n - lba);
        write_next(&mut h1, &blocks, lba, k).unwrap();
        lba += k;
    }
    let m = t.mirror_get(MIRROR);
    assert_eq!(m["job"]["kind"], "resync", "the initial copy runs: {m}");
    assert!(m["job"]["percent"].as_f64().unwrap() < 50.0, "{m}");

    // Freeze (no writes in flight), split from the host itself, thaw.
    let t0 = Instant::now();
    let owed = h1.mirror_split(1).unwrap();
    let split_took = t0.elapsed();
    eprintln!("split answered in {split_took:?} with {owed} regions still owed");
    assert!(owed > 0, "the copy is still under way at the split");
    let image_blocks = std::sync::Arc::new(std::sync::Mutex::new(blocks.lock().unwrap().clone()));
    // The production host writes to the first quarter only: the rest stays owed for a while.
    let writers = Writers::start(|| t.host(NQN), &blocks, n / 4, 7, false);

    // The backup host reads the image while the copy runs and the production host writes.
    export_image(&t);
    let mut h2 = t.host(NQN_IMG);
    // The first half: regions still owed are copied on demand as they are read.
    let before = t.mirror_get(MIRROR)["image"]["owed_regions"]
        .as_u64()
        .unwrap();
    let half = n / 2;
    let img = h2.read_blocks(1, 0, half).unwrap();
    let mut want = image_blocks.lock().unwrap().clone();
    want.truncate(half as usize);
    let want_half = std::sync::Arc::new(std::sync::Mutex::new(want));
    check_image(&img, &want_half).unwrap_or_else(|e| panic!("image over NVMe/TCP: {e}"));
    let m = t.mirror_get(MIRROR);
    let after = m["image"]["owed_regions"].as_u64().unwrap();
    assert!(
        before > 0 && after > 0,
        "the copy still ran while the image was read ({before}, {after})"
    );
    assert!(m["image"]["copied_for_reads"].as_u64().unwrap() > 0, "{m}");
    // A write to the image is refused.
    assert!(h2.write_blocks(1, 0, &vec![1u8; BS]).is_err());

    // The backup host starts a backup (in a repository the operator made); it is killed
    // with the copy, mid-way.
    let e = h2.mirror_backup(1, &json!({ "repository": repo }).to_string());
    assert!(e.is_err(), "a host cannot make a repository");
    rpc(
        &t,
        "backup_repository_create",
        json!({ "repository": repo }),
    );
    let params =
        json!({ "repository": repo, "mode": "memory", "chunk_kb": 256, "max_bandwidth_mb_sec": 8 })
            .to_string();
    h2.mirror_backup(1, &params).unwrap();
    let st: Value = serde_json::from_str(&h2.mirror_status(1).unwrap()).unwrap();
    assert_eq!(st["image"]["backup"]["mode"], "memory", "{st}");
    std::thread::sleep(Duration::from_millis(3000));
    let (acked, _) = writers.finish();
    assert!(acked > 0);
    drop(h1);
    drop(h2);
    let m = t.mirror_get(MIRROR);
    assert!(
        !m["image"]["backup"].is_null(),
        "backup still running at the kill: {m}"
    );
    assert!(
        m["image"]["owed_regions"].as_u64().unwrap() > 0,
        "copy still running at the kill: {m}"
    );
    t.kill9();

    // Restart: the image comes back, the copy and the backup resume.
    let t = start(dir.path(), &files, false, "2");
    let m = wait_for(&t, "re-assembly with the image", |m| {
        m["image"]["name"] == IMAGE
    });
    eprintln!("after the restart: {}", m["image"]);
    rpc(
        &t,
        "bdev_mirror_set_options",
        json!({ "name": MIRROR, "max_bandwidth_mb_sec": 0 }),
    );
    let m = wait_for(&t, "the resumed backup's end", |m| {
        !m["image"]["last_backup_job"].is_null()
    });
    let last = &m["image"]["last_backup_job"];
    assert_eq!(last["result"], "done", "{m}\n{}", t.log_text());
    assert!(
        last["resumed_at_chunk"].as_u64().unwrap() > 0,
        "resumed from the checkpoint: {last}"
    );
    let id = last["id"].as_str().unwrap().to_string();
    let mut h1 = t.host(NQN);
    let vol = h1.read_blocks(1, 0, n).unwrap();
    check_image(&vol, &blocks).unwrap_or_else(|e| panic!("acknowledged write lost: {e}"));
    export_image(&t);
    let mut h2 = t.host(NQN_IMG);
    let img = h2.read_blocks(1, 0, n).unwrap();
    check_image(&img, &image_blocks).unwrap_or_else(|e| panic!("image after the restart: {e}"));
    let list = rpc(&t, "backup_list", json!({ "repository": repo }));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["state"], "complete", "{list}");

    // Restore through a slow bdev, killed half way, then run again after the restart.
    let rfile = make_file(dir.path(), "restore", LEG_MIB);
    rpc(
        &t,
        "bdev_uring_create",
        json!({ "name": "R0", "filename": rfile, "block_size": BS }),
    );
    rpc(
        &t,
        "bdev_delay_create",
        json!({ "base_bdev_name": "R0", "name": "R0slow",
        "avg_read_latency": 0, "p99_read_latency": 0, "avg_write_latency": 40000, "p99_write_latency": 40000 }),
    );
    let job = rpc(
        &t,
        "backup_restore",
        json!({ "repository": repo, "backup": id, "bdev": "R0slow" }),
    )["job"]
        .clone();
    std::thread::sleep(Duration::from_millis(1500));
    let j = rpc(&t, "backup_job_get", json!({ "id": job }))[0].clone();
    assert_eq!(
        j["state"], "running",
        "restore still running at the kill: {j}"
    );
    drop(h1);
    drop(h2);
    t.kill9();
    let t = start(dir.path(), &files, false, "3");
    wait_for(&t, "re-assembly", |m| m["image"]["name"] == IMAGE);
    rpc(
        &t,
        "bdev_uring_create",
        json!({ "name": "R0", "filename": rfile, "block_size": BS }),
    );
    let job = rpc(
        &t,
        "backup_restore",
        json!({ "repository": repo, "backup": id, "bdev": "R0" }),
    )["job"]
        .clone();
    let j = wait_repo_job(&t, &job);
    assert_eq!(j["state"], "done", "{j}");
    let restored = read_file_blocks(&rfile, 0, n);
    check_image(&restored, &image_blocks).unwrap_or_else(|e| panic!("restored backup: {e}"));

    // Verify passes; a damaged chunk is found.
    let j = wait_repo_job(
        &t,
        &rpc(&t, "backup_verify", json!({ "repository": repo }))["job"],
    );
    assert_eq!(j["result"]["state"], "ok", "{j}");
    let mut chunks: Vec<PathBuf> = walk(&repo.join("chunks"));
    chunks.sort();
    let victim = &chunks[chunks.len() / 2];
    let mut raw = std::fs::read(victim).unwrap();
    raw[7] ^= 0x40;
    std::fs::write(victim, raw).unwrap();
    let j = wait_repo_job(
        &t,
        &rpc(
            &t,
            "backup_verify",
            json!({ "repository": repo, "backup": id }),
        )["job"],
    );
    assert_eq!(j["result"]["state"], "damaged", "{j}");

    // Bad requests.
    export_image(&t);
    let mut h1 = t.host(NQN);
    let mut h2 = t.host(NQN_IMG);
    assert!(
        h2.mirror_split(1).is_err(),
        "a split asked of the image's namespace is refused"
    );
    assert!(h2.mirror_backup(1, "{not json").is_err());
    assert!(
        h1.mirror_split(1).is_err(),
        "a second split while the image exists"
    );
    let e = rpc_call(
        &t.sock,
        "bdev_mirror_backup",
        &json!({ "name": MIRROR, "repository": repo, "type": "weekly" }),
    )
    .unwrap_err();
    assert!(e.1.contains("type"), "{e:?}");
    // A destination that fills up: the job fails with the reason; nothing else changes.
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "mounting a small tmpfs (the tests run as root)"
    );
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rpc(
            &t,
            "bdev_mirror_backup",
            json!({ "name": MIRROR, "repository": small }),
        );
        let m = wait_for(&t, "the failed backup's end", |m| {
            m["image"]["backup"].is_null()
                && m["image"]["last_backup_job"]["repository"] == small.to_string_lossy().as_ref()
        });
        let last = &m["image"]["last_backup_job"];
        assert_eq!(last["result"], "failed", "{last}");
        assert!(
            last["error"].as_str().unwrap().contains("No space left"),
            "{last}"
        );
        let l = rpc(&t, "backup_list", json!({ "repository": small }));
        assert!(
            l.as_array()
                .unwrap()
                .iter()
                .all(|b| b["state"] != "complete"),
            "{l}"
        );
    }));
    let _ = std::process::Command::new("umount").arg(&small).status();
    if let Err(p) = res {
        std::panic::resume_unwind(p);
    }

    // Resume: the image's namespace goes, the secondary catches up.
    rpc(&t, "bdev_mirror_resume", json!({ "name": MIRROR }));
    let subs = rpc(&t, "nvmf_get_subsystems", json!({}));
    let img_sub = subs
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["nqn"] == NQN_IMG)
        .unwrap()
        .clone();
    assert!(
        img_sub["namespaces"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{img_sub}"
    );
    assert!(
        h2.read_blocks(1, 0, 1).is_err(),
        "the image namespace is gone"
    );
    wait_for(&t, "in sync", |m| {
        m["state"] == "in_sync" && m["job"].is_null()
    });
    let vol = h1.read_blocks(1, 0, n).unwrap();
    check_image(&vol, &blocks).unwrap();
    drop(h1);
    drop(h2);
    t.stop();
    let a = read_file_blocks(&files[0], data_offset, n);
    let b = read_file_blocks(&files[1], data_offset, n);
    assert!(a == b, "the legs differ after the resume");
}

struct Keep(PathBuf);

impl Keep {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Keep {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test directory kept: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
