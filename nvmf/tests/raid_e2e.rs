//! RAID volumes through the real target process and NVMe/TCP (strata's host library), on
//! file-backed members: `kill -9` in the middle of a random write load on raid5 (the array
//! re-assembles from its superblocks, resyncs the regions the write-intent bitmap marks,
//! every acknowledged write reads back and every stripe's parity checks in the files), and
//! a restart with a member missing followed by one with the stale member back (it is
//! rebuilt, not trusted).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{bin, TgtProcess};

const BS: usize = 4096;
const NQN: &str = "nqn.2026-11.io.strata:raid";
const MEMBERS: usize = 4;
const MEMBER_MIB: u64 = 12;
/// Data starts 1 MiB into each member (superblock + bitmap).
const DATA_OFFSET: usize = 1 << 20;

fn pattern(lba: u64, version: u32) -> Vec<u8> {
    let seed = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version as u64;
    (0..BS)
        .map(|j| (seed.rotate_left((j % 64) as u32) as u8) ^ (j as u8))
        .collect()
}

type Tgt = TgtProcess;

impl Tgt {
    fn start(dir: &Path, files: &[PathBuf], create_raid: bool, tag: &str) -> Tgt {
        let mut bdevs: Vec<Value> = files
            .iter()
            .enumerate()
            .map(|(i, f)| json!({ "method": "bdev_uring_create", "params": { "name": format!("D{i}"), "filename": f, "block_size": BS } }))
            .collect();
        if create_raid {
            bdevs.push(json!({ "method": "bdev_raid_create", "params": { "name": "R5", "raid_level": "raid5f",
                "strip_size_kb": 16, "superblock": true, "base_bdevs": (0..MEMBERS).map(|i| format!("D{i}")).collect::<Vec<_>>() } }));
        }
        TgtProcess::launch(dir, tag, bdevs, NQN, "R5", &[])
    }

    fn rpc(&self, args: &[&str]) -> Value {
        let out = Command::new(bin("strata-rpc"))
            .arg("-s")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "strata-rpc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until the array has no rebuild or resync running; returns its state.
    fn wait_idle(&self) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.rpc(&["bdev_raid_get_bdevs", "all"]);
            let r = v
                .as_array()
                .and_then(|a| a.iter().find(|r| r["name"] == "R5"))
                .cloned();
            if let Some(r) = r {
                if r["process"].is_null() {
                    return r;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "RAID job did not finish: {v}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn member_files(dir: &Path) -> Vec<PathBuf> {
    (0..MEMBERS)
        .map(|i| {
            let p = dir.join(format!("m{i}.img"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(MEMBER_MIB << 20)
                .unwrap();
            p
        })
        .collect()
}

/// XOR of all members at every offset of the data area is zero (raid5 parity checks,
/// whatever the layout).
fn assert_parity(files: &[PathBuf]) {
    let imgs: Vec<Vec<u8>> = files
        .iter()
        .map(|f| {
            let mut v = Vec::new();
            std::fs::File::open(f).unwrap().read_to_end(&mut v).unwrap();
            v
        })
        .collect();
    let len = imgs.iter().map(Vec::len).min().unwrap();
    for off in (DATA_OFFSET..len).step_by(BS) {
        let mut acc = vec![0u8; BS];
        for img in &imgs {
            for (a, b) in acc.iter_mut().zip(&img[off..off + BS]) {
                *a ^= b;
            }
        }
        assert!(
            acc.iter().all(|&b| b == 0),
            "parity does not check at member byte offset {off}"
        );
    }
}

/// Per block: the last acknowledged version, and a version whose write was in flight.
#[derive(Clone, Copy, Default)]
struct BlockState {
    acked: u32,
    in_flight: Option<u32>,
}

#[test]
fn kill_9_during_raid5_writes_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let files = member_files(dir.path());
    let t = Tgt::start(dir.path(), &files, true, "first");
    let blocks = {
        let c = t.connect(NQN);
        c.namespaces()[0].nsze
    };
    // Writers own disjoint 64-block areas and write 1..8 blocks at random offsets in them:
    // partial-stripe, full-stripe and stripe-crossing writes.
    let state = Arc::new(Mutex::new(vec![BlockState::default(); blocks as usize]));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (state, stop, mut c) = (state.clone(), stop.clone(), t.connect(NQN));
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(w);
                let areas = blocks / 64;
                let mut n_acked = 0;
                while !stop.load(Ordering::Relaxed) {
                    let area = rng.gen_range(0..areas / 4) * 4 + w;
                    let n = rng.gen_range(1..=8u64);
                    let lba = area * 64 + rng.gen_range(0..=64 - n);
                    let mut data = Vec::with_capacity(n as usize * BS);
                    let mut versions = Vec::new();
                    {
                        let mut st = state.lock().unwrap();
                        for b in lba..lba + n {
                            let v = st[b as usize].acked + 1;
                            st[b as usize].in_flight = Some(v);
                            versions.push(v);
                            data.extend_from_slice(&pattern(b, v));
                        }
                    }
                    if c.write_blocks(1, lba, &data).is_err() {
                        break;
                    }
                    let mut st = state.lock().unwrap();
                    for (b, v) in (lba..lba + n).zip(versions) {
                        st[b as usize] = BlockState {
                            acked: v,
                            in_flight: None,
                        };
                    }
                    n_acked += 1;
                }
                n_acked
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2500));
    let log1 = t.kill9();
    stop.store(true, Ordering::Relaxed);
    let acked: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(
        acked > 50,
        "too few writes before the kill: {acked}\n{log1}"
    );

    let t = Tgt::start(dir.path(), &files, false, "second");
    let r = t.wait_idle();
    let log2 = t.log_text();
    assert!(log2.contains("assembled from superblocks"), "{log2}");
    assert!(
        log2.contains("resync of dirty regions started"),
        "no resync after kill -9:\n{log2}"
    );
    assert_eq!(r["num_base_bdevs_operational"], 4, "{r}");
    let mut c = t.connect(NQN);
    let st = state.lock().unwrap().clone();
    for (b, s) in st.iter().enumerate() {
        if s.acked == 0 && s.in_flight.is_none() {
            continue;
        }
        let got = c.read_blocks(1, b as u64, 1).unwrap();
        let ok = (s.acked == 0 && got.iter().all(|&x| x == 0))
            || (s.acked > 0 && got == pattern(b as u64, s.acked))
            || s.in_flight.is_some_and(|v| got == pattern(b as u64, v));
        assert!(
            ok,
            "block {b}: acknowledged version {} (in flight {:?}) does not read back",
            s.acked, s.in_flight
        );
    }
    drop(c);
    t.stop();
    assert_parity(&files);
}

#[test]
fn restart_with_a_member_missing_then_the_stale_member_back() {
    let dir = tempfile::tempdir().unwrap();
    let files = member_files(dir.path());
    // 1: all members; write version 1 over the first 512 blocks.
    let t = Tgt::start(dir.path(), &files, true, "all");
    let mut c = t.connect(NQN);
    for b in 0..512u64 {
        c.write_blocks(1, b, &pattern(b, 1)).unwrap();
    }
    drop(c);
    t.stop();
    // 2: D3's file is not configured: the array comes up degraded; overwrite half the blocks.
    let t = Tgt::start(dir.path(), &files[..3], false, "missing");
    let r = t.wait_idle();
    assert_eq!(r["num_base_bdevs_operational"], 3, "{r}");
    assert_eq!(r["state"], "online", "{r}");
    let mut c = t.connect(NQN);
    for b in (0..512u64).step_by(2) {
        c.write_blocks(1, b, &pattern(b, 2)).unwrap();
    }
    for b in 0..512u64 {
        let v = if b % 2 == 0 { 2 } else { 1 };
        assert!(
            c.read_blocks(1, b, 1).unwrap() == pattern(b, v),
            "degraded read of block {b}"
        );
    }
    drop(c);
    t.stop();
    // 3: the stale member is back: rebuilt, not trusted.
    let t = Tgt::start(dir.path(), &files, false, "back");
    t.wait_operational("stale member not rebuilt");
    let log = t.log_text();
    assert!(log.contains("rebuild complete"), "{log}");
    assert_even_odd_versions(&t, 512, "after rebuild");
    t.stop();
    assert_parity(&files);
}

impl Tgt {
    /// Waits until every member is operational (jobs idle).
    fn wait_operational(&self, what: &str) {
        let t0 = Instant::now();
        loop {
            let r = self.wait_idle();
            if r["num_base_bdevs_operational"] == 4 {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "{what}: {r}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Blocks `0..n` read back version 2 where even, version 1 where odd.
fn assert_even_odd_versions(t: &Tgt, n: u64, when: &str) {
    let mut c = t.connect(NQN);
    for b in 0..n {
        let v = if b % 2 == 0 { 2 } else { 1 };
        assert!(
            c.read_blocks(1, b, 1).unwrap() == pattern(b, v),
            "block {b} {when}"
        );
    }
}

#[test]
fn a_rebuild_killed_midway_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let files = member_files(dir.path());
    // 1: all members; write version 1 over every block of the first 4 MiB.
    let t = Tgt::start(dir.path(), &files, true, "all");
    let mut c = t.connect(NQN);
    for b in 0..1024u64 {
        c.write_blocks(1, b, &pattern(b, 1)).unwrap();
    }
    drop(c);
    t.stop();
    // 2: D3 missing; overwrite the even blocks.
    let t = Tgt::start(dir.path(), &files[..3], false, "missing");
    let mut c = t.connect(NQN);
    for b in (0..1024u64).step_by(2) {
        c.write_blocks(1, b, &pattern(b, 2)).unwrap();
    }
    drop(c);
    // D3 comes back while the target runs, with rebuilds limited to 2 MB/s: kill -9 once
    // the rebuild is well past its first checkpoint.
    t.rpc(&["bdev_raid_set_options", "-b", "2"]);
    let f3 = files[3].to_str().unwrap();
    t.rpc(&["bdev_uring_create", f3, "D3", "4096"]);
    let t0 = Instant::now();
    let done_before = loop {
        let v = t.rpc(&["bdev_raid_get_bdevs", "all"]);
        let p = v[0]["process"]["progress"]["percent"]
            .as_f64()
            .unwrap_or(0.0);
        if p >= 40.0 {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "rebuild did not progress: {v}\n{}",
            t.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    t.kill9();
    // 3: all members configured: the rebuild resumes where its checkpoint says, not at 0.
    let t = Tgt::start(dir.path(), &files, false, "resumed");
    t.wait_operational("member not rebuilt");
    let log = t.log_text();
    assert!(
        log.contains("rebuild resumed from its checkpoint"),
        "rebuild at {done_before}% was not resumed:\n{log}"
    );
    assert!(log.contains("rebuild complete"), "{log}");
    assert_even_odd_versions(&t, 1024, "after the resumed rebuild");
    t.stop();
    assert_parity(&files);
}
