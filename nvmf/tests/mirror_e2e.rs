//! The mirror bdev through the real target process and NVMe/TCP (strata's host library), on
//! two file-backed legs. Proves that:
//! - `kill -9` of an in-sync mirror under a random write load loses no acknowledged write, and
//!   after the restart (re-assembly from the legs' superblocks, resync of the dirty regions)
//!   the two legs hold the same bytes;
//! - a split mirror stays split across `kill -9`, its secondary receives nothing while split,
//!   and `bdev_mirror_resume` copies at most the regions written during the split;
//! - a resync interrupted by `kill -9` (rate-limited, with host writes going on) is finished
//!   after the restart, with the rate limit kept in the superblock;
//! - when the change bitmap is lost (its CRC does not check) `resume` falls back to a checksum
//!   scan that copies exactly the differing chunks, and a scan interrupted by `kill -9` is
//!   completed after the restart;
//! - a scrub counts mismatches planted behind the target's back, leaves them alone without
//!   repair, copies the primary's data over them with repair, and host reads always return the
//!   primary's data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::writes::{self, pattern, write_next, Blocks, Writers};
use common::{rpc_call, TgtProcess};

const BS: usize = writes::BS;
const NQN: &str = "nqn.2026-11.io.strata:mirror";
const MIRROR: &str = "M0";
const LEG_MIB: u64 = 24;
const MIB: u64 = 1 << 20;
/// Blocks per change-bitmap region (region_size_kb 1024).
const REGION_BLOCKS: u64 = 256;
/// Blocks per checksum-scan / scrub chunk (scan_chunk_kb 64).
const CHUNK_BLOCKS: u64 = 16;
const CHUNK_BYTES: u64 = CHUNK_BLOCKS * BS as u64;
/// The volume's data starts 1 MiB into each plain leg (superblock + change bitmap before it).
const DATA_OFFSET_BLOCKS: u64 = 256;
/// The leg minus the metadata.
const VOLUME_BLOCKS: u64 = (LEG_MIB * MIB) / (BS as u64) - DATA_OFFSET_BLOCKS;
/// Byte offset of the change bitmap in a leg (right after the 4096-byte superblock header).
const BITMAP_OFFSET: u64 = 4096;
/// How long a background job or a state change may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// `bdev_mirror_create` params of the first start (initial sync on by default).
fn create_params() -> Value {
    json!({ "name": MIRROR, "primary": "D0", "secondary": "D1", "region_size_kb": 1024, "scan_chunk_kb": 64 })
}

type Tgt = TgtProcess;

impl Tgt {
    /// Starts the target on the two leg files; with `create`, the config also creates the
    /// mirror with these params (otherwise it re-assembles from the legs' superblocks).
    fn start(dir: &Path, legs: &[PathBuf], create: Option<Value>, tag: &str) -> Tgt {
        let mut bdevs: Vec<Value> = legs
            .iter()
            .enumerate()
            .map(|(i, f)| json!({ "method": "bdev_uring_create", "params": { "name": format!("D{i}"), "filename": f, "block_size": BS } }))
            .collect();
        if let Some(p) = create {
            bdevs.push(json!({ "method": "bdev_mirror_create", "params": p }));
        }
        // Interrupt mode: the tests of this file run in parallel on small machines, and
        // polling reactors would starve each other.
        TgtProcess::launch(dir, tag, bdevs, NQN, MIRROR, &["--interrupt-mode"])
    }

    fn try_rpc(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        rpc_call(&self.sock, method, &params)
    }

    /// An RPC that must succeed.
    fn rpc(&self, method: &str, params: Value) -> Value {
        match self.try_rpc(method, params.clone()) {
            Ok(v) => v,
            Err((code, msg)) => panic!(
                "{method} {params} failed: {code} {msg}\n{}",
                self.log_text()
            ),
        }
    }

    /// `bdev_mirror_get` of the mirror.
    fn mirror(&self) -> Value {
        let v = self.rpc("bdev_mirror_get", json!({ "name": MIRROR }));
        let arr = v
            .as_array()
            .unwrap_or_else(|| panic!("bdev_mirror_get did not return an array: {v}"));
        assert_eq!(arr.len(), 1, "bdev_mirror_get: {v}");
        arr[0].clone()
    }

    /// Polls `bdev_mirror_get` until `pred` holds; returns that state.
    fn wait_mirror(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let m = self.mirror();
            if pred(&m) {
                return m;
            }
            assert!(
                t0.elapsed() < timeout,
                "the mirror was not {what} within {timeout:?}: {m}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the mirror is in sync with no job running and no dirty region left (so a
    /// resync that has yet to start does not pass for a finished one); both legs in sync.
    fn wait_in_sync(&self) -> Value {
        let m = self.wait_mirror("in sync and idle", JOB_TIMEOUT, |m| {
            m["state"] == "in_sync" && m["job"].is_null() && m["dirty_regions"] == 0
        });
        let legs = m["legs"]
            .as_array()
            .unwrap_or_else(|| panic!("no legs: {m}"));
        assert_eq!(legs.len(), 2, "{m}");
        for leg in legs {
            assert_eq!(leg["state"], "in_sync", "{m}");
        }
        if !m["last_job"].is_null() {
            assert_eq!(m["last_job"]["result"], "done", "{m}\n{}", self.log_text());
        }
        m
    }

    /// Waits until the job started after `prev` was the last one has finished; checks that it
    /// was of `kind` and succeeded; returns it (the new `last_job`).
    fn wait_job(&self, prev: &Value, kind: &str) -> Value {
        let m = self.wait_mirror(&format!("done with a {kind} job"), JOB_TIMEOUT, |m| {
            m["job"].is_null() && !m["last_job"].is_null() && m["last_job"] != *prev
        });
        let job = m["last_job"].clone();
        assert_eq!(job["kind"], kind, "{m}\n{}", self.log_text());
        assert_eq!(job["result"], "done", "{m}\n{}", self.log_text());
        job
    }

    fn set_max_bandwidth(&self, mb_per_sec: u64) {
        let r = self.rpc(
            "bdev_mirror_set_options",
            json!({ "name": MIRROR, "max_bandwidth_mb_sec": mb_per_sec }),
        );
        assert_eq!(r, json!(true));
    }
}

/// The geometry every test relies on: 24 MiB plain legs, 4 KiB blocks, 1 MiB of metadata.
fn check_geometry(t: &Tgt, m: &Value) {
    assert_eq!(m["block_size"], BS as u64, "{m}");
    assert_eq!(m["data_offset_blocks"], DATA_OFFSET_BLOCKS, "{m}");
    assert_eq!(m["num_blocks"], VOLUME_BLOCKS, "{m}");
    assert_eq!(m["region_size_kb"], 1024, "{m}");
    assert_eq!(m["regions"], VOLUME_BLOCKS.div_ceil(REGION_BLOCKS), "{m}");
    let c = t.connect(NQN);
    assert_eq!(c.namespaces()[0].nsze, VOLUME_BLOCKS);
    assert_eq!(c.namespaces()[0].block_size as usize, BS);
}

fn percent(m: &Value) -> f64 {
    m["job"]["percent"]
        .as_f64()
        .unwrap_or_else(|| panic!("job without percent: {m}"))
}

fn leg_files(dir: &Path) -> Vec<PathBuf> {
    (0..2)
        .map(|i| {
            let p = dir.join(format!("leg{i}.img"));
            File::create(&p).unwrap().set_len(LEG_MIB * MIB).unwrap();
            p
        })
        .collect()
}

/// The data area of a leg file: mirror LBA x is at byte (data_offset + x) * 4096.
fn data_area(leg: &Path) -> Vec<u8> {
    let mut v = vec![0u8; VOLUME_BLOCKS as usize * BS];
    File::open(leg)
        .unwrap()
        .read_exact_at(&mut v, DATA_OFFSET_BLOCKS * BS as u64)
        .unwrap();
    v
}

/// Volume LBAs whose blocks differ between two images.
fn differing_blocks(a: &[u8], b: &[u8]) -> Vec<u64> {
    assert_eq!(a.len(), b.len());
    a.chunks(BS)
        .zip(b.chunks(BS))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i as u64)
        .collect()
}

fn assert_legs_identical(legs: &[PathBuf]) {
    let d = differing_blocks(&data_area(&legs[0]), &data_area(&legs[1]));
    assert!(
        d.is_empty(),
        "{} blocks differ between the legs (volume LBAs, first ones: {:?})",
        d.len(),
        &d[..d.len().min(16)]
    );
}

/// The primary leg holds exactly what the volume read back through NVMe/TCP.
fn assert_primary_holds(legs: &[PathBuf], image: &[u8]) {
    let d = differing_blocks(&data_area(&legs[0]), image);
    assert!(
        d.is_empty(),
        "{} blocks of the primary leg differ from what the volume read (first ones: {:?})",
        d.len(),
        &d[..d.len().min(16)]
    );
}

/// XORs one byte of a file (the target may be running or not).
fn flip_byte(path: &Path, off: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, off).unwrap();
    f.sync_all().unwrap();
}

/// Overwrites volume block `lba` in a leg file directly.
fn plant(path: &Path, lba: u64, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, (DATA_OFFSET_BLOCKS + lba) * BS as u64)
        .unwrap();
    f.sync_all().unwrap();
}

fn new_blocks() -> Blocks {
    writes::new_blocks(VOLUME_BLOCKS)
}

/// Writes version 1 of every block of `lba..end` in 1 MiB writes.
fn write_sequential(t: &Tgt, blocks: &Blocks, lba: u64, end: u64) {
    let mut c = t.connect(NQN);
    let mut at = lba;
    while at < end {
        let n = REGION_BLOCKS.min(end - at);
        write_next(&mut c, blocks, at, n).unwrap();
        at += n;
    }
}

/// Reads the whole volume through NVMe/TCP: every block holds its acknowledged version, the
/// version that was in flight, or zeros if it was never written. Returns the image.
fn check_volume(t: &Tgt, blocks: &Blocks) -> Vec<u8> {
    let mut c = t.connect(NQN);
    let img = c.read_blocks(1, 0, VOLUME_BLOCKS).unwrap();
    assert_eq!(img.len(), VOLUME_BLOCKS as usize * BS);
    if let Err(e) = writes::check_image(&img, blocks) {
        panic!("{e}\n{}", t.log_text());
    }
    img
}

/// Four writers on the volume's first `span` blocks (see [`writes::Writers`]).
fn writers(t: &Tgt, blocks: &Blocks, span: u64, seed: u64) -> Writers {
    Writers::start(|| t.connect(NQN), blocks, span, seed, false)
}

/// Starts a target creating the mirror on fresh legs and waits for the initial sync.
/// Waits for the mirror to be in sync, checks every block over NVMe/TCP, stops the target
/// and checks that both leg files hold that image.
fn converge_and_check(t: Tgt, blocks: &Blocks, legs: &[PathBuf]) {
    t.wait_in_sync();
    let img = check_volume(&t, blocks);
    t.stop();
    assert_legs_identical(legs);
    assert_primary_holds(legs, &img);
}

fn start_synced(dir: &Path) -> (Vec<PathBuf>, Tgt) {
    let legs = leg_files(dir);
    let t = Tgt::start(dir, &legs, Some(create_params()), "first");
    let m = t.wait_in_sync();
    check_geometry(&t, &m);
    assert_eq!(m["bitmap_trusted"], true, "{m}");
    (legs, t)
}

fn split(t: &Tgt) {
    assert_eq!(
        t.rpc("bdev_mirror_split", json!({ "name": MIRROR })),
        json!(true)
    );
    let m = t.mirror();
    assert_eq!(m["state"], "split", "{m}");
    assert!(m["job"].is_null(), "{m}");
}

#[test]
fn kill_9_in_sync_under_writes_loses_nothing_and_the_legs_converge() {
    let dir = tempfile::tempdir().unwrap();
    let (legs, t) = start_synced(dir.path());
    let blocks = new_blocks();
    let writers = writers(&t, &blocks, VOLUME_BLOCKS, 1);
    std::thread::sleep(Duration::from_millis(2000));
    let m = t.mirror();
    assert_eq!(m["state"], "in_sync", "{m}");
    let log1 = t.kill9();
    let (acked, _) = writers.finish();
    assert!(
        acked > 50,
        "too few writes before the kill: {acked}\n{log1}"
    );

    let t = Tgt::start(dir.path(), &legs, None, "second");
    let m = t.wait_in_sync();
    check_geometry(&t, &m);
    // Writes were in flight all over the volume: their regions were dirty on disk.
    assert_eq!(
        m["last_job"]["kind"], "resync",
        "no resync after kill -9: {m}"
    );
    let img = check_volume(&t, &blocks);
    t.stop();
    assert_legs_identical(&legs);
    assert_primary_holds(&legs, &img);
}

#[test]
fn split_survives_kill_9_and_resume_copies_only_the_changed_regions() {
    let dir = tempfile::tempdir().unwrap();
    let (legs, t) = start_synced(dir.path());
    split(&t);
    // Writes confined to the first 6 regions (of 23).
    let span = 6 * REGION_BLOCKS;
    let blocks = new_blocks();
    let writers = writers(&t, &blocks, span, 2);
    std::thread::sleep(Duration::from_millis(2000));
    let log1 = t.kill9();
    let (acked, _) = writers.finish();
    assert!(
        acked > 50,
        "too few writes before the kill: {acked}\n{log1}"
    );
    let (touched, acked_regions) = {
        let st = blocks.lock().unwrap();
        let mut touched = BTreeSet::new();
        let mut acked_regions = BTreeSet::new();
        for (b, s) in st.iter().enumerate() {
            let r = b as u64 / REGION_BLOCKS;
            if s.acked > 0 || s.in_flight.is_some() {
                touched.insert(r);
            }
            if s.acked > 0 {
                acked_regions.insert(r);
            }
        }
        (touched, acked_regions)
    };
    assert!(touched.iter().all(|&r| r < span / REGION_BLOCKS));
    // The secondary received nothing while split (it held zeros after the initial sync).
    assert!(
        data_area(&legs[1]).iter().all(|&b| b == 0),
        "the secondary leg was written while split"
    );

    let t = Tgt::start(dir.path(), &legs, None, "second");
    let m = t.mirror();
    check_geometry(&t, &m);
    assert_eq!(m["state"], "split", "{m}\n{}", t.log_text());
    assert!(
        m["job"].is_null(),
        "a split mirror started a job by itself: {m}"
    );
    assert_eq!(m["bitmap_trusted"], true, "{m}");
    let dirty = m["dirty_regions"].as_u64().unwrap();
    assert!(
        dirty >= acked_regions.len() as u64 && dirty <= touched.len() as u64,
        "dirty_regions {dirty}: regions with acknowledged writes {acked_regions:?}, written {touched:?}"
    );
    check_volume(&t, &blocks);
    let m = t.mirror();
    assert_eq!(m["state"], "split", "the mirror left split by itself: {m}");
    assert!(m["job"].is_null(), "{m}");

    let prev = m["last_job"].clone();
    assert_eq!(
        t.rpc("bdev_mirror_resume", json!({ "name": MIRROR })),
        json!(true)
    );
    let job = t.wait_job(&prev, "resync");
    let copied = job["copied_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no copied_bytes: {job}"));
    assert!(
        copied > 0 && copied <= touched.len() as u64 * MIB,
        "resync copied {copied} bytes; {} regions were written during the split",
        touched.len()
    );
    converge_and_check(t, &blocks, &legs);
}

#[test]
fn kill_9_in_the_middle_of_a_resync_under_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (legs, t) = start_synced(dir.path());
    split(&t);
    // 20 of the 23 regions change while split.
    let seq_regions = VOLUME_BLOCKS / REGION_BLOCKS - 3;
    let blocks = new_blocks();
    write_sequential(&t, &blocks, 0, seq_regions * REGION_BLOCKS);
    let m = t.mirror();
    assert_eq!(m["state"], "split", "{m}");
    assert_eq!(m["dirty_regions"], seq_regions, "{m}");

    // 4 MB/s: the resync of 20 MiB lasts about 5 s.
    t.set_max_bandwidth(4);
    assert_eq!(
        t.rpc("bdev_mirror_resume", json!({ "name": MIRROR })),
        json!(true)
    );
    let m = t.wait_mirror("resyncing", Duration::from_secs(10), |m| {
        m["job"]["kind"] == "resync"
    });
    assert!(percent(&m) < 100.0, "{m}");
    let writers = writers(&t, &blocks, VOLUME_BLOCKS, 3);
    std::thread::sleep(Duration::from_millis(1000));
    let m = t.mirror();
    assert_eq!(
        m["job"]["kind"], "resync",
        "the resync must still run when the target is killed: {m}"
    );
    assert!(percent(&m) < 100.0, "{m}");
    let log1 = t.kill9();
    let (acked, _) = writers.finish();
    assert!(
        acked > 20,
        "too few writes before the kill: {acked}\n{log1}"
    );

    // The restarted mirror resumes the resync by itself, at the rate kept in the superblock.
    let t = Tgt::start(dir.path(), &legs, None, "second");
    let m = t.wait_mirror(
        "resyncing after the restart",
        Duration::from_secs(10),
        |m| m["job"]["kind"] == "resync",
    );
    check_geometry(&t, &m);
    assert_eq!(m["state"], "resyncing", "{m}");
    assert_eq!(m["max_bandwidth_mb_sec"].as_f64(), Some(4.0), "{m}");
    t.set_max_bandwidth(0);
    let m = t.wait_in_sync();
    assert_eq!(m["max_bandwidth_mb_sec"].as_f64(), Some(0.0), "{m}");
    assert_eq!(m["last_job"]["kind"], "resync", "{m}");
    let img = check_volume(&t, &blocks);
    t.stop();
    assert_legs_identical(&legs);
    assert_primary_holds(&legs, &img);
}

/// Splits, writes one block in each of `chunks` (64 KiB chunk indexes), kills the target and
/// corrupts the change bitmap of both legs; returns the restarted target (split, bitmap
/// untrusted).
fn split_write_chunks_lose_bitmap(
    dir: &Path,
    blocks: &Blocks,
    chunks: &BTreeSet<u64>,
    seed: u64,
) -> (Vec<PathBuf>, Tgt) {
    let (legs, t) = start_synced(dir);
    split(&t);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut c = t.connect(NQN);
    for &ch in chunks {
        let lba = ch * CHUNK_BLOCKS + rng.gen_range(0..CHUNK_BLOCKS);
        write_next(&mut c, blocks, lba, 1).unwrap();
    }
    drop(c);
    t.kill9();
    for leg in &legs {
        flip_byte(leg, BITMAP_OFFSET);
    }
    let t = Tgt::start(dir, &legs, None, "bitmap-lost");
    let m = t.mirror();
    check_geometry(&t, &m);
    assert_eq!(m["state"], "split", "{m}\n{}", t.log_text());
    assert_eq!(m["bitmap_trusted"], false, "{m}\n{}", t.log_text());
    assert!(m["job"].is_null(), "{m}");
    (legs, t)
}

#[test]
fn lost_bitmap_falls_back_to_a_checksum_scan_of_the_differing_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SmallRng::seed_from_u64(4);
    let n_chunks = VOLUME_BLOCKS / CHUNK_BLOCKS;
    let mut chunks = BTreeSet::new();
    while chunks.len() < 30 {
        chunks.insert(rng.gen_range(0..n_chunks));
    }
    let blocks = new_blocks();
    let (legs, t) = split_write_chunks_lose_bitmap(dir.path(), &blocks, &chunks, 5);

    let prev = t.mirror()["last_job"].clone();
    assert_eq!(
        t.rpc(
            "bdev_mirror_resume",
            json!({ "name": MIRROR, "mode": "auto" })
        ),
        json!(true)
    );
    let job = t.wait_job(&prev, "scan");
    assert_eq!(
        job["copied_bytes"],
        chunks.len() as u64 * CHUNK_BYTES,
        "the scan must copy exactly the {} differing chunks: {job}",
        chunks.len()
    );
    let log = t.log_text();
    assert!(
        log.contains("checksum scan"),
        "the fallback to a checksum scan is not logged:\n{log}"
    );
    converge_and_check(t, &blocks, &legs);
}

#[test]
fn kill_9_during_a_checksum_scan_then_the_restarted_target_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    // One block in every other chunk: about 11.5 MiB to copy.
    let chunks: BTreeSet<u64> = (0..VOLUME_BLOCKS / CHUNK_BLOCKS).step_by(2).collect();
    let blocks = new_blocks();
    let (legs, t) = split_write_chunks_lose_bitmap(dir.path(), &blocks, &chunks, 6);

    t.set_max_bandwidth(2);
    assert_eq!(
        t.rpc(
            "bdev_mirror_resume",
            json!({ "name": MIRROR, "mode": "auto" })
        ),
        json!(true)
    );
    t.wait_mirror("scanning", Duration::from_secs(10), |m| {
        m["job"]["kind"] == "scan"
    });
    std::thread::sleep(Duration::from_millis(300));
    let m = t.mirror();
    assert_eq!(
        m["job"]["kind"], "scan",
        "the scan must still run when the target is killed: {m}"
    );
    assert!(percent(&m) < 100.0, "{m}");
    t.kill9();

    let t = Tgt::start(dir.path(), &legs, None, "after-scan-kill");
    // The rate is kept in the superblock.
    t.set_max_bandwidth(0);
    let m = t.mirror();
    check_geometry(&t, &m);
    if m["job"].is_null() && m["state"] != "in_sync" {
        match t.try_rpc(
            "bdev_mirror_resume",
            json!({ "name": MIRROR, "mode": "checksum" }),
        ) {
            Ok(v) => assert_eq!(v, json!(true)),
            // The mirror started its own scan in the meantime.
            Err((-16, _)) => {}
            Err((code, msg)) => panic!(
                "bdev_mirror_resume after the restart: {code} {msg}\n{}",
                t.log_text()
            ),
        }
    }
    converge_and_check(t, &blocks, &legs);
}

#[test]
fn scrub_counts_planted_mismatches_and_repair_copies_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    let (legs, t) = start_synced(dir.path());
    let blocks = new_blocks();
    write_sequential(&t, &blocks, 0, VOLUME_BLOCKS);
    // Three blocks in three different chunks of the secondary change behind the target's back.
    let planted = [
        2 * CHUNK_BLOCKS + 5,
        97 * CHUNK_BLOCKS + 5,
        301 * CHUNK_BLOCKS + 11,
    ];
    for &lba in &planted {
        let bad: Vec<u8> = pattern(lba, 1).iter().map(|b| b ^ 0xff).collect();
        plant(&legs[1], lba, &bad);
    }
    assert_eq!(
        differing_blocks(&data_area(&legs[0]), &data_area(&legs[1])),
        planted.to_vec()
    );

    let prev = t.mirror()["last_job"].clone();
    assert_eq!(
        t.rpc(
            "bdev_mirror_verify",
            json!({ "name": MIRROR, "repair": false })
        ),
        json!(true)
    );
    let job = t.wait_job(&prev, "scrub");
    assert_eq!(job["mismatches"], 3, "{job}");
    assert_eq!(job["repaired"].as_u64().unwrap_or(0), 0, "{job}");
    assert_eq!(
        differing_blocks(&data_area(&legs[0]), &data_area(&legs[1])),
        planted.to_vec(),
        "a scrub without repair must leave the legs alone"
    );
    // Host reads come from the primary.
    let img = check_volume(&t, &blocks);

    assert_eq!(
        t.rpc(
            "bdev_mirror_verify",
            json!({ "name": MIRROR, "repair": true })
        ),
        json!(true)
    );
    let job = t.wait_job(&job, "scrub");
    assert_eq!(job["mismatches"], 3, "{job}");
    assert_eq!(job["repaired"], 3, "{job}");
    let m = t.mirror();
    assert_eq!(m["state"], "in_sync", "{m}");
    // (check_volume checks every block against what was written: the primary's data.)
    check_volume(&t, &blocks);
    t.stop();
    assert_legs_identical(&legs);
    assert_primary_holds(&legs, &img);
}
