//! Versioned writes for crash and fault tests: every block's content names its LBA and a
//! version, the test records the version it has in flight and the one acknowledged, and a
//! read-back must show the acknowledged version (or the one in flight, or zeros if never
//! written) — so any lost acknowledged write is caught.
#![allow(clippy::unwrap_used, dead_code)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use strata_nvmf::host::blocking::BlockingController;
use strata_nvmf::host::HostError;

pub const BS: usize = 4096;

/// The content of block `lba` at `version`.
pub fn pattern(lba: u64, version: u32) -> Vec<u8> {
    let seed = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version as u64;
    (0..BS)
        .map(|j| (seed.rotate_left((j % 64) as u32) as u8) ^ (j as u8))
        .collect()
}

/// Per block: the last acknowledged version, and a version whose write was in flight.
#[derive(Clone, Copy, Default, Debug)]
pub struct BlockState {
    pub acked: u32,
    pub in_flight: Option<u32>,
}

pub type Blocks = Arc<Mutex<Vec<BlockState>>>;

pub fn new_blocks(n: u64) -> Blocks {
    Arc::new(Mutex::new(vec![BlockState::default(); n as usize]))
}

/// Writes the next version of blocks `lba..lba + n` (namespace 1): recorded in flight
/// first, acknowledged when the write completes.
pub fn write_next(
    c: &mut BlockingController,
    blocks: &Blocks,
    lba: u64,
    n: u64,
) -> Result<(), HostError> {
    let mut data = Vec::with_capacity(n as usize * BS);
    let mut versions = Vec::with_capacity(n as usize);
    {
        let mut st = blocks.lock().unwrap();
        for b in lba..lba + n {
            let v = st[b as usize].acked + 1;
            st[b as usize].in_flight = Some(v);
            versions.push(v);
            data.extend_from_slice(&pattern(b, v));
        }
    }
    c.write_blocks(1, lba, &data)?;
    let mut st = blocks.lock().unwrap();
    for (b, v) in (lba..lba + n).zip(versions) {
        st[b as usize] = BlockState {
            acked: v,
            in_flight: None,
        };
    }
    Ok(())
}

/// Checks an image of the volume (from block 0) against the record; Err names the first
/// block that does not hold what was acknowledged.
pub fn check_image(img: &[u8], blocks: &Blocks) -> Result<(), String> {
    let st = blocks.lock().unwrap().clone();
    assert!(img.len() >= st.len() * BS, "image shorter than the volume");
    for (b, s) in st.iter().enumerate() {
        let got = &img[b * BS..(b + 1) * BS];
        let ok = (s.acked == 0 && got.iter().all(|&x| x == 0))
            || (s.acked > 0 && got == pattern(b as u64, s.acked).as_slice())
            || s.in_flight
                .is_some_and(|v| got == pattern(b as u64, v).as_slice());
        if !ok {
            return Err(format!(
                "block {b}: acknowledged version {} (in flight {:?}) does not read back",
                s.acked, s.in_flight
            ));
        }
    }
    Ok(())
}

/// Four threads writing 1..=8 blocks at random offsets of the volume's first `span` blocks;
/// each owns the 64-block areas whose index is its number modulo 4. A thread stops at its
/// first failed write unless `keep_going` (then failures are counted and it goes on).
pub struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(u64, u64)>>,
}

impl Writers {
    pub fn start(
        mut connect: impl FnMut() -> BlockingController,
        blocks: &Blocks,
        span: u64,
        seed: u64,
        keep_going: bool,
    ) -> Writers {
        let areas = span / 64;
        assert!(areas >= 4, "span too small: {span}");
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..4u64)
            .map(|w| {
                let (blocks, stop, mut c) = (blocks.clone(), stop.clone(), connect());
                std::thread::spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(seed * 4 + w);
                    let (mut acked, mut failed) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let area = rng.gen_range(0..areas / 4) * 4 + w;
                        let n = rng.gen_range(1..=8u64);
                        let lba = area * 64 + rng.gen_range(0..=64 - n);
                        match write_next(&mut c, &blocks, lba, n) {
                            Ok(()) => acked += 1,
                            Err(_) if keep_going => {
                                failed += 1;
                                std::thread::sleep(std::time::Duration::from_millis(20));
                            }
                            Err(_) => break,
                        }
                    }
                    (acked, failed)
                })
            })
            .collect();
        Writers { stop, threads }
    }

    /// Stops the writers; returns (acknowledged, failed) writes.
    pub fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }
}
