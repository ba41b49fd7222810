//! Snapshot split and backups on a real reactor, model-checked: random host writes race the
//! split, the image's background copy, reads of the image and a backup job; the image (read
//! through its bdev and through a restore of the backup) equals the model of the primary at
//! the split instant, block for block, and the primary equals the model with every later
//! write. A restart (the mirror unregistered and re-assembled from its legs) in the middle
//! of the copy and of a backup brings the image back and resumes both. Incremental backups
//! store only changed chunks; verify finds a chunk damaged in the repository.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::time::Duration;
use strata_bdev::backup::{self, repo::BackupKind};
use strata_bdev::modules::mirror::backup::{BackupMode, BackupOptions};
use strata_bdev::modules::mirror::{self, CreateOptions, ResumeMode, SetOptions};
use strata_bdev::registry;
use strata_bdev::wait::read_vec;

mod common;
use common::{on_reactor, reactors, read_all, spawn_read, spawn_write, InFlight};

const BS: u32 = 512;

fn mk_malloc(name: &str, kib: u64) {
    common::malloc_kib(name, kib, BS);
}

fn setup() {
    reactors().install_global();
}

fn info(name: &str) -> Value {
    mirror::get(Some(name)).unwrap().remove(0)
}

fn set_bw(name: &'static str, mb: u32) {
    let set = SetOptions {
        max_bandwidth_mb_sec: Some(mb),
        ..Default::default()
    };
    on_reactor(move || async move { mirror::set_options(name, set).await }).unwrap();
}

fn split(name: &'static str) -> Value {
    on_reactor(move || async move { mirror::snapshot::split_snapshot(name, None).await }).unwrap()
}

/// A backup's options with the defaults (chunk size, id, no rate limit).
fn opts(repo: &str, kind: BackupKind, mode: BackupMode) -> BackupOptions {
    BackupOptions {
        repository: repo.into(),
        kind,
        mode,
        chunk_kb: None,
        id: None,
        max_bandwidth_mb_sec: 0,
        create_repository: true,
    }
}

fn start_backup(name: &'static str, repo: &str, kind: BackupKind, mode: BackupMode) -> String {
    start_backup_at(name, repo, kind, mode, 0)
}

fn start_backup_at(
    name: &'static str,
    repo: &str,
    kind: BackupKind,
    mode: BackupMode,
    mb_per_sec: u32,
) -> String {
    let o = BackupOptions {
        repository: repo.into(),
        kind,
        mode,
        chunk_kb: Some(64),
        id: None,
        max_bandwidth_mb_sec: mb_per_sec,
        create_repository: true,
    };
    let v = on_reactor(move || async move { mirror::backup::start(name, o).await }).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// Waits for the image's backup job to end; returns its report.
fn wait_backup(name: &str) -> Value {
    for _ in 0..6000 {
        let i = info(name);
        if i["image"]["backup"].is_null() {
            return i["image"]["last_backup_job"].clone();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("backup did not end: {}", info(name));
}

fn wait_image_complete(name: &str) {
    for _ in 0..6000 {
        if info(name)["image"]["complete"] == true {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("image copy did not end: {}", info(name));
}

fn wait_repo_job(id: u64) -> Value {
    for _ in 0..6000 {
        let j = backup::jobs(Some(id)).unwrap().remove(0);
        if j["state"] != "running" {
            return j;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("repository job {id} did not end");
}

fn restore(repo: &str, id: &str, bdev: &str) -> Value {
    let (r, i, b) = (repo.to_string(), id.to_string(), bdev.to_string());
    let job = on_reactor(move || async move { backup::restore(&r, &i, &b).await }).unwrap();
    wait_repo_job(job)
}

/// Random writes (and reads checked against the model) to `name`, while random reads of
/// `image` are checked against `image_model`; until `stop` (given the op count) says so.
fn model_io_with_image(
    name: &str,
    model: &mut Vec<u8>,
    image: Option<(&str, Vec<u8>)>,
    seed: u64,
    stop: impl Fn(usize) -> bool + Send + 'static,
) -> usize {
    let nm = name.to_string();
    let img = image.map(|(n, m)| (n.to_string(), m));
    let m = std::mem::take(model);
    let (m, ops) = on_reactor(move || async move {
        let mut model = m;
        let d = registry::open(&nm, |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let img_desc = img
            .as_ref()
            .map(|(n, _)| registry::open(n, |_| {}).unwrap());
        let img_ch = img_desc.as_ref().map(|d| d.channel().unwrap());
        let blocks = ch.num_blocks();
        let bs = BS as usize;
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut q = InFlight::new(&nm);
        let mut qi = InFlight::new("image");
        let mut ops = 0usize;
        while !stop(ops) {
            if q.len() >= 8 {
                q.retire_oldest().await;
            }
            if qi.len() >= 4 {
                qi.retire_oldest().await;
            }
            let n = rng.gen_range(1..=300u64).min(blocks);
            let off = rng.gen_range(0..=blocks - n);
            let r = (off as usize * bs)..((off + n) as usize * bs);
            if let (Some(ic), Some((_, im))) = (&img_ch, &img) {
                if rng.gen_bool(0.3) {
                    qi.push(off, n, spawn_read(ic, off, n), Some(im[r.clone()].to_vec()));
                }
            }
            if q.overlaps(off, n) {
                q.retire_oldest().await;
                continue;
            }
            if rng.gen_bool(0.25) {
                q.push(off, n, spawn_read(&ch, off, n), Some(model[r].to_vec()));
            } else {
                let data: Vec<u8> = (0..r.len()).map(|_| rng.gen()).collect();
                model[r].copy_from_slice(&data);
                q.push(off, n, spawn_write(&ch, off, data), None);
            }
            ops += 1;
            if ops.is_multiple_of(16) {
                strata_reactor::sleep(Duration::from_micros(300)).await;
            }
        }
        q.drain().await;
        qi.drain().await;
        (model, ops)
    });
    *model = m;
    ops
}

#[test]
fn snapshot_split_during_the_initial_copy_backs_up_and_restores_the_image() {
    setup();
    mk_malloc("sb_a", 8 << 10);
    mk_malloc("sb_b", 8 << 10);
    mk_malloc("sb_r1", 8 << 10);
    mk_malloc("sb_r2", 8 << 10);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").to_string_lossy().to_string();
    let mut o = CreateOptions::new("sb", "sb_a", "sb_b");
    o.region_size_kb = 64;
    o.max_bandwidth_mb_sec = 2;
    on_reactor(move || async move { mirror::create(o).await.map(|_| ()) }).unwrap();
    let n = registry::get("sb").unwrap().bdev.num_blocks();
    let mut model = vec![0u8; (n * BS as u64) as usize];
    // Writes race the initial copy, which is still under way at the split.
    model_io_with_image("sb", &mut model, None, 1, |ops| ops >= 150);
    assert_eq!(info("sb")["job"]["kind"], "resync", "the initial copy runs");
    let s = split("sb");
    assert!(s["copy_running"] == true, "{s}");
    assert!(s["owed_regions"].as_u64().unwrap() > 0);
    let image_model = model.clone();
    set_bw("sb", 40);
    // A backup in memory mode starts at once, while the copy runs and the host writes.
    let b1 = start_backup("sb", &repo, BackupKind::Full, BackupMode::Memory);
    model_io_with_image(
        "sb",
        &mut model,
        Some(("sb_pit", image_model.clone())),
        2,
        |ops| ops >= 600,
    );
    let last = wait_backup("sb");
    assert_eq!(last["result"], "done", "{last}");
    wait_image_complete("sb");
    let img = info("sb")["image"].clone();
    assert!(img["copied_before_writes"].as_u64().unwrap() > 0, "{img}");
    assert!(
        read_all("sb_pit") == image_model,
        "image differs from the primary at the split"
    );
    assert!(read_all("sb") == model, "primary differs from the model");
    let r = restore(&repo, &b1, "sb_r1");
    assert_eq!(r["state"], "done", "{r}");
    assert!(
        read_all("sb_r1")[..image_model.len()] == image_model[..],
        "restored full backup differs from the image"
    );

    // Resume: the image goes, the secondary catches up with every write since the split;
    // a second image is taken while that resync still runs, and backed up incrementally in
    // mode secondary: the regions it owes are reflected into the secondary first.
    set_bw("sb", 2);
    on_reactor(|| async { mirror::resume("sb", ResumeMode::Auto).await }).unwrap();
    assert!(
        registry::get("sb_pit").is_none(),
        "the image bdev is dropped"
    );
    model_io_with_image("sb", &mut model, None, 3, |ops| ops >= 200);
    assert_eq!(info("sb")["job"]["kind"], "resync", "the resync runs");
    let s2 = split("sb");
    assert!(s2["owed_regions"].as_u64().unwrap() > 0, "{s2}");
    // The background copy stays slow; the backup (not rate-limited) reflects what it owes.
    let image2 = model.clone();
    let b2 = start_backup("sb", &repo, BackupKind::Incremental, BackupMode::Secondary);
    let last = wait_backup("sb");
    assert_eq!(last["result"], "done", "{last}");
    assert!(last["reflected_regions"].as_u64().unwrap() > 0, "{last}");
    assert_eq!(info("sb")["image"]["owed_regions"], 0);
    model_io_with_image(
        "sb",
        &mut model,
        Some(("sb_pit", image2.clone())),
        4,
        |ops| ops >= 100,
    );
    let r = restore(&repo, &b2, "sb_r2");
    assert_eq!(r["state"], "done", "{r}");
    assert!(
        read_all("sb_r2")[..image2.len()] == image2[..],
        "restored incremental chain differs from the second image"
    );

    // Third image after a change of three chunks only: the increment stores those.
    on_reactor(|| async { mirror::resume("sb", ResumeMode::Auto).await }).unwrap();
    let m = mirror::mirror("sb").unwrap();
    on_reactor(move || async move { mirror::wait_idle(&m).await });
    split("sb");
    let b3a = start_backup("sb", &repo, BackupKind::Incremental, BackupMode::Secondary);
    assert_eq!(wait_backup("sb")["result"], "done");
    on_reactor(|| async { mirror::resume("sb", ResumeMode::Auto).await }).unwrap();
    let m = mirror::mirror("sb").unwrap();
    on_reactor(move || async move { mirror::wait_idle(&m).await });
    let few: Vec<u8> = (0..3 * 64 * 1024).map(|k| (k / 512) as u8 ^ 0x5a).collect();
    model[..few.len()].copy_from_slice(&few);
    on_reactor(move || async move {
        let d = registry::open("sb", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        strata_bdev::wait::write_slice(&ch, 0, &few).await
    })
    .unwrap();
    split("sb");
    let image3 = model.clone();
    let b3 = start_backup("sb", &repo, BackupKind::Incremental, BackupMode::Secondary);
    let last = wait_backup("sb");
    assert_eq!(last["result"], "done", "{last}");
    assert!(
        last["stored_chunks"].as_u64().unwrap() <= 3
            && last["total_bytes"].as_u64().unwrap() <= 3 * 64 * 1024,
        "an incremental goes through the changed chunks only: {last}"
    );
    let r = restore(&repo, &b3, "sb_r2");
    assert_eq!(r["state"], "done", "{r}");
    assert!(
        read_all("sb_r2")[..image3.len()] == image3[..],
        "third image"
    );
    let list = on_reactor({
        let repo = repo.clone();
        move || async move { backup::list(&repo).await }
    })
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
    assert!(list[1]["parent"] == b1.as_str(), "{list}");
    assert!(list[2]["parent"] == b2.as_str(), "{list}");
    assert!(list[3]["parent"] == b3a.as_str(), "{list}");

    // verify finds a chunk damaged in the repository.
    let repo2 = repo.clone();
    let ok = on_reactor(move || async move { backup::verify(&repo2, None).await }).unwrap();
    assert_eq!(wait_repo_job(ok)["result"]["state"], "ok");
    let chunks = std::path::Path::new(&repo).join("chunks");
    let victim = walk(&chunks).into_iter().next().unwrap();
    let mut raw = std::fs::read(&victim).unwrap();
    raw[100] ^= 0xff;
    std::fs::write(&victim, raw).unwrap();
    let repo2 = repo.clone();
    let bad = on_reactor(move || async move { backup::verify(&repo2, None).await }).unwrap();
    let res = wait_repo_job(bad);
    assert_eq!(res["result"]["state"], "damaged", "{res}");
    assert!(!res["result"]["damaged"].as_array().unwrap().is_empty());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// The mirror goes away (as at a crash of the process: its superblocks stay) and is
/// re-assembled from its legs.
fn restart(name: &str, legs: [&str; 2]) {
    let m = mirror::mirror(name).unwrap();
    registry::unregister(name).unwrap();
    on_reactor(move || async move { mirror::wait_idle(&m).await });
    for l in legs {
        registry::examine(l).unwrap();
    }
    for _ in 0..500 {
        if mirror::mirror(name).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{name} did not re-assemble");
}

#[test]
fn image_copy_and_backup_resume_after_a_restart() {
    setup();
    mk_malloc("rs_a", 8 << 10);
    mk_malloc("rs_b", 8 << 10);
    mk_malloc("rs_r", 8 << 10);
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().to_string_lossy().to_string();
    let mut o = CreateOptions::new("rs", "rs_a", "rs_b");
    o.region_size_kb = 64;
    o.max_bandwidth_mb_sec = 2;
    on_reactor(move || async move { mirror::create(o).await.map(|_| ()) }).unwrap();
    let n = registry::get("rs").unwrap().bdev.num_blocks();
    let mut model = vec![0u8; (n * BS as u64) as usize];
    model_io_with_image("rs", &mut model, None, 11, |ops| ops >= 150);
    split("rs");
    let image_model = model.clone();
    model_io_with_image(
        "rs",
        &mut model,
        Some(("rs_pit", image_model.clone())),
        12,
        |ops| ops >= 100,
    );
    let owed = info("rs")["image"]["owed_regions"].as_u64().unwrap();
    assert!(owed > 0, "the copy is still under way");
    restart("rs", ["rs_a", "rs_b"]);
    let img = info("rs")["image"].clone();
    assert_eq!(img["name"], "rs_pit", "the image is back: {img}");
    assert!(registry::get("rs_pit").is_some());
    assert!(read_all("rs_pit") == image_model, "image after the restart");
    model_io_with_image(
        "rs",
        &mut model,
        Some(("rs_pit", image_model.clone())),
        13,
        |ops| ops >= 100,
    );
    // A backup (rate-limited) is interrupted by a restart and resumes from its checkpoint.
    let id = start_backup_at("rs", &repo, BackupKind::Full, BackupMode::Memory, 2);
    std::thread::sleep(Duration::from_millis(2600));
    let listed = on_reactor({
        let repo = repo.clone();
        move || async move { backup::list(&repo).await }
    })
    .unwrap();
    assert_eq!(listed[0]["state"], "incomplete", "{listed}");
    restart("rs", ["rs_a", "rs_b"]);
    let last = wait_backup("rs");
    assert_eq!(last["result"], "done", "{last}");
    assert!(last["resumed_at_chunk"].as_u64().unwrap() > 0, "{last}");
    let r = restore(&repo, &id, "rs_r");
    assert_eq!(r["state"], "done", "{r}");
    assert!(read_all("rs_r")[..image_model.len()] == image_model[..]);
    assert!(read_all("rs") == model);
}

#[test]
fn bad_requests_are_refused_and_nothing_in_the_repository_is_lost() {
    setup();
    mk_malloc("bq_a", 4 << 10);
    mk_malloc("bq_b", 4 << 10);
    let mut o = CreateOptions::new("bq", "bq_a", "bq_b");
    o.region_size_kb = 64;
    o.initial_sync = false;
    on_reactor(move || async move { mirror::create(o).await.map(|_| ()) }).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("r").to_string_lossy().to_string();
    // No image yet.
    let o = opts(&repo, BackupKind::Full, BackupMode::Secondary);
    let e = on_reactor(move || async move { mirror::backup::start("bq", o).await }).unwrap_err();
    assert!(e.to_string().contains("no point-in-time image"), "{e}");
    split("bq");
    // A second split while the image exists.
    let e =
        on_reactor(|| async { mirror::snapshot::split_snapshot("bq", None).await }).unwrap_err();
    assert!(e.to_string().contains("already has the image"), "{e}");
    // Incremental with no full backup.
    let o = opts(&repo, BackupKind::Incremental, BackupMode::Secondary);
    let e = on_reactor(move || async move { mirror::backup::start("bq", o).await }).unwrap_err();
    assert!(e.to_string().contains("full backup first"), "{e}");
    // A directory that is not a repository.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("precious"), b"keep").unwrap();
    let o = opts(
        &other.to_string_lossy(),
        BackupKind::Full,
        BackupMode::Secondary,
    );
    let e = on_reactor(move || async move { mirror::backup::start("bq", o).await }).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    assert_eq!(std::fs::read(other.join("precious")).unwrap(), b"keep");
    // A good backup, then a damaged manifest: listed as damaged, restore refused.
    let id = start_backup("bq", &repo, BackupKind::Full, BackupMode::Secondary);
    assert_eq!(wait_backup("bq")["result"], "done");
    let mp = std::path::Path::new(&repo)
        .join("backups")
        .join(format!("{id}.json"));
    let mut raw = std::fs::read(&mp).unwrap();
    let at = raw.len() / 2;
    raw[at] ^= 0x01;
    std::fs::write(&mp, raw).unwrap();
    let (r, i) = (repo.clone(), id.clone());
    let e = on_reactor(move || async move { backup::restore(&r, &i, "bq_a").await }).unwrap_err();
    assert!(
        e.to_string().contains("damaged") || e.to_string().contains("claimed"),
        "{e}"
    );
    // Resume drops the image; a backup of it then has nothing to back up.
    on_reactor(|| async { mirror::resume("bq", ResumeMode::Auto).await }).unwrap();
    let o = opts(&repo, BackupKind::Full, BackupMode::Secondary);
    let e = on_reactor(move || async move { mirror::backup::start("bq", o).await }).unwrap_err();
    assert!(e.to_string().contains("no point-in-time image"), "{e}");
}

/// A repository on a bdev (`bdev:NAME`): full and incremental backups, list, restore and
/// verify work as on a directory; the log is found again when the repository is reopened;
/// a bdev holding other data is refused; a record damaged on the device is reported.
#[test]
fn repository_on_a_bdev() {
    setup();
    mk_malloc("bd_a", 4 << 10);
    mk_malloc("bd_b", 4 << 10);
    mk_malloc("bd_repo", 16 << 10);
    mk_malloc("bd_r", 4 << 10);
    mk_malloc("bd_other", 1 << 10);
    let mut o = CreateOptions::new("bd", "bd_a", "bd_b");
    o.region_size_kb = 64;
    o.initial_sync = false;
    on_reactor(move || async move { mirror::create(o).await.map(|_| ()) }).unwrap();
    let n = registry::get("bd").unwrap().bdev.num_blocks();
    let mut model = vec![0u8; (n * BS as u64) as usize];
    model_io_with_image("bd", &mut model, None, 21, |ops| ops >= 200);
    split("bd");
    let image1 = model.clone();
    let repo = "bdev:bd_repo";
    let b1 = start_backup("bd", repo, BackupKind::Full, BackupMode::Secondary);
    model_io_with_image(
        "bd",
        &mut model,
        Some(("bd_pit", image1.clone())),
        22,
        |ops| ops >= 100,
    );
    assert_eq!(wait_backup("bd")["result"], "done");
    on_reactor(|| async { mirror::resume("bd", ResumeMode::Auto).await }).unwrap();
    let m = mirror::mirror("bd").unwrap();
    on_reactor(move || async move { mirror::wait_idle(&m).await });
    split("bd");
    let image2 = model.clone();
    let b2 = start_backup("bd", repo, BackupKind::Incremental, BackupMode::Memory);
    assert_eq!(wait_backup("bd")["result"], "done");
    // Reopened (as after a restart): both backups are there, and restore.
    let list = on_reactor(move || async move { backup::list(repo).await }).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|b| b["state"] == "complete"),
        "{list}"
    );
    let r = restore(repo, &b1, "bd_r");
    assert_eq!(r["state"], "done", "{r}");
    assert!(read_all("bd_r")[..image1.len()] == image1[..]);
    let r = restore(repo, &b2, "bd_r");
    assert_eq!(r["state"], "done", "{r}");
    assert!(read_all("bd_r")[..image2.len()] == image2[..]);
    let v = on_reactor(move || async move { backup::verify(repo, None).await }).unwrap();
    assert_eq!(wait_repo_job(v)["result"]["state"], "ok");
    // A restore onto the repository's own bdev is refused.
    let e = on_reactor(move || async move { backup::restore(repo, &b2, "bd_repo").await });
    assert!(e.is_err());
    // The repository's bdev is claimed while the target runs.
    let h = registry::get("bd_repo").unwrap();
    assert_eq!(h.claimed_by.as_deref(), Some("backup repository"));
    // Damage on the device: a byte of the first chunk flipped (past the two header slots
    // and the first record's header: block 24 of 512 bytes).
    on_reactor(|| async {
        let d = registry::open("bd_repo", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let mut blk = read_vec(&ch, 24, 1).await.unwrap();
        blk[100] ^= 0xff;
        strata_bdev::wait::write_slice(&ch, 24, &blk).await.unwrap();
    });
    let v = on_reactor(move || async move { backup::verify(repo, None).await }).unwrap();
    assert_eq!(wait_repo_job(v)["result"]["state"], "damaged");
    // A bdev holding other data is not turned into a repository.
    on_reactor(|| async {
        let d = registry::open("bd_other", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        strata_bdev::wait::write_slice(&ch, 0, &[7u8; 512])
            .await
            .unwrap();
    });
    let o = opts("bdev:bd_other", BackupKind::Full, BackupMode::Secondary);
    let e = on_reactor(move || async move { mirror::backup::start("bd", o).await }).unwrap_err();
    assert!(e.to_string().contains("holds data"), "{e}");
}

/// The secondary fails while the image still owes it regions: the image is lost and
/// dropped, and host writes (which would have copied owed regions first) go on to the
/// primary without an error; every acknowledged write reads back.
#[test]
fn a_failing_secondary_loses_the_image_not_the_host_writes() {
    setup();
    mk_malloc("fs_a", 8 << 10);
    mk_malloc("fs_b0", 8 << 10);
    strata_bdev::modules::error::create("fs_b0", None).unwrap();
    let mut o = CreateOptions::new("fs", "fs_a", "EE_fs_b0");
    o.region_size_kb = 64;
    o.max_bandwidth_mb_sec = 1;
    on_reactor(move || async move { mirror::create(o).await.map(|_| ()) }).unwrap();
    let n = registry::get("fs").unwrap().bdev.num_blocks();
    let mut model = vec![0u8; (n * BS as u64) as usize];
    model_io_with_image("fs", &mut model, None, 31, |ops| ops >= 50);
    let s = split("fs");
    assert!(s["owed_regions"].as_u64().unwrap() > 10, "{s}");
    strata_bdev::modules::error::inject(
        "EE_fs_b0",
        strata_bdev::modules::error::Target::All,
        strata_bdev::modules::error::ErrorKind::Failure,
        u64::MAX,
        0,
        0,
    )
    .unwrap();
    // Writes everywhere: many land in owed regions whose copy now fails.
    model_io_with_image("fs", &mut model, None, 32, |ops| ops >= 300);
    for _ in 0..500 {
        if registry::get("fs_pit").is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        registry::get("fs_pit").is_none(),
        "the lost image is dropped"
    );
    let i = info("fs");
    assert!(i["image"].is_null(), "{i}");
    assert!(
        read_all("fs") == model,
        "the primary holds every acknowledged write"
    );
}

/// A bdev repository whose newest header slot is torn (as by a crash in the middle of its
/// write) opens from the other slot: the backups it lists are the ones that slot names.
#[test]
fn bdev_repository_survives_a_torn_header() {
    use strata_bdev::modules::uring::{self, UringOptions};
    setup();
    mk_malloc("th_a", 4 << 10);
    mk_malloc("th_b", 4 << 10);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("repo.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let attach = |f: &std::path::Path| {
        uring::create(UringOptions {
            name: "th_repo".into(),
            filename: f.to_string_lossy().to_string(),
            block_size: Some(512),
            uuid: None,
            module: "uring",
        })
        .unwrap();
    };
    attach(&file);
    let mut o = CreateOptions::new("th", "th_a", "th_b");
    o.region_size_kb = 64;
    o.initial_sync = false;
    on_reactor(move || async move { mirror::create(o).await.map(|_| ()) }).unwrap();
    let mut model =
        vec![0u8; (registry::get("th").unwrap().bdev.num_blocks() * BS as u64) as usize];
    model_io_with_image("th", &mut model, None, 41, |ops| ops >= 100);
    split("th");
    let repo = "bdev:th_repo";
    let b1 = start_backup("th", repo, BackupKind::Full, BackupMode::Secondary);
    assert_eq!(wait_backup("th")["result"], "done");
    // The header slot written last (the higher generation) is torn.
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .unwrap();
    let mut slots = vec![0u8; 8192];
    f.read_exact_at(&mut slots, 0).unwrap();
    let generation = |s: &[u8]| u64::from_le_bytes(s[24..32].try_into().unwrap());
    let newer = if generation(&slots[..4096]) > generation(&slots[4096..]) {
        0
    } else {
        4096
    };
    let older_gen = generation(&slots[4096 - newer..8192 - newer]);
    f.write_all_at(&[0xa5; 300], newer as u64 + 100).unwrap();
    f.sync_all().unwrap();
    // Reattached (a new bdev: the repository is read from the device again).
    uring::delete("th_repo", "uring").unwrap();
    attach(&file);
    let list = on_reactor(move || async move { backup::list(repo).await }).unwrap();
    assert!(older_gen > 0, "two header slots were written");
    // The older slot still names a consistent log: whatever it lists reads back.
    for b in list.as_array().unwrap() {
        assert_ne!(b["state"], "damaged", "{list}");
    }
    let v = on_reactor(move || async move { backup::verify(repo, None).await }).unwrap();
    let r = wait_repo_job(v);
    assert_eq!(r["result"]["state"], "ok", "{r}");
    let _ = b1;
}
