//! Shared set-up of the bdev integration tests: one reactor for the whole test binary, and a
//! way to run an async test body on it.
#![allow(clippy::unwrap_used, dead_code)]

pub mod journal;

use std::sync::OnceLock;
use strata_reactor::{Mode, ReactorSet};

pub fn reactors() -> &'static ReactorSet {
    static SET: OnceLock<ReactorSet> = OnceLock::new();
    SET.get_or_init(|| ReactorSet::start(&[0], Mode::Interrupt).unwrap())
}

/// A malloc bdev of `kib` KiB with `bs`-byte blocks.
pub fn malloc_kib(name: &str, kib: u64, bs: u32) {
    strata_bdev::modules::malloc::create(strata_bdev::modules::malloc::MallocOptions {
        name: name.into(),
        num_blocks: kib * 1024 / bs as u64,
        block_size: bs,
        uuid: None,
    })
    .unwrap();
}

/// The whole bdev's bytes, read on the test reactor.
pub fn read_all(name: &str) -> Vec<u8> {
    let nm = name.to_string();
    on_reactor(move || async move {
        let d = strata_bdev::registry::open(&nm, |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let n = ch.num_blocks();
        let mut out = Vec::new();
        let mut b = 0;
        while b < n {
            let k = 2048.min(n - b);
            out.extend(strata_bdev::wait::read_vec(&ch, b, k).await.unwrap());
            b += k;
        }
        out
    })
}

/// Runs the future built by `f` on the test reactor and returns its output.
pub fn on_reactor<F, Fut, R>(f: F) -> R
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
    R: Send + 'static,
{
    reactors().block_on(0, f).unwrap()
}

use strata_bdev::wait::{checksums, no_data, read_vec, write_slice, xor_write_slice};
use strata_bdev::{kernels, IoChannel, IoStatus, IoType};
use strata_reactor::JoinHandle;

/// An operation of a model-checked run: the data it read (checked against the model's
/// expectation), or nothing.
pub type OpResult = Result<Option<Vec<u8>>, IoStatus>;

/// Operations in flight in a model-checked run, retired oldest first. Callers keep
/// in-flight writes from overlapping, so the model's order is the device's order.
pub struct InFlight {
    what: String,
    ops: Vec<Op>,
}

/// Blocks `off..off+n`, the running operation, and the data it must read.
type Op = (u64, u64, JoinHandle<OpResult>, Option<Vec<u8>>);

impl InFlight {
    pub fn new(what: &str) -> InFlight {
        InFlight {
            what: what.to_string(),
            ops: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn overlaps(&self, off: u64, n: u64) -> bool {
        self.ops
            .iter()
            .any(|(o, l, _, _)| off < o + l && *o < off + n)
    }

    pub fn push(&mut self, off: u64, n: u64, op: JoinHandle<OpResult>, expect: Option<Vec<u8>>) {
        self.ops.push((off, n, op, expect));
    }

    /// Waits for the oldest operation and checks what it read.
    pub async fn retire_oldest(&mut self) {
        let (o, l, h, expect) = self.ops.remove(0);
        let got = h
            .await
            .unwrap_or_else(|e| panic!("{}: I/O at {o}+{l} failed: {e:?}", self.what));
        if let (Some(g), Some(e)) = (got, expect) {
            assert!(g == e, "{}: data mismatch at blocks {o}+{l}", self.what);
        }
    }

    pub async fn drain(&mut self) {
        while !self.ops.is_empty() {
            self.retire_oldest().await;
        }
    }
}

pub fn spawn_read(ch: &IoChannel, off: u64, n: u64) -> JoinHandle<OpResult> {
    let ch = ch.clone();
    strata_reactor::spawn_local(async move { read_vec(&ch, off, n).await.map(Some) })
}

pub fn spawn_write(ch: &IoChannel, off: u64, data: Vec<u8>) -> JoinHandle<OpResult> {
    let ch = ch.clone();
    strata_reactor::spawn_local(async move { write_slice(&ch, off, &data).await.map(|_| None) })
}

pub fn spawn_xor_write(ch: &IoChannel, off: u64, data: Vec<u8>) -> JoinHandle<OpResult> {
    let ch = ch.clone();
    strata_reactor::spawn_local(async move { xor_write_slice(&ch, off, &data).await.map(|_| None) })
}

pub fn spawn_no_data(ch: &IoChannel, t: IoType, off: u64, n: u64) -> JoinHandle<OpResult> {
    let ch = ch.clone();
    strata_reactor::spawn_local(async move { no_data(&ch, t, off, n).await.map(|_| None) })
}

/// A checksum I/O over blocks `off..off+n`, and the CRCs the model expects for `model`
/// (those blocks' bytes).
pub fn spawn_checksums(
    ch: &IoChannel,
    off: u64,
    n: u64,
    chunk: u32,
    model: &[u8],
) -> (JoinHandle<OpResult>, Option<Vec<u8>>) {
    let bs = ch.block_size() as usize;
    let expect = model
        .chunks(chunk as usize * bs)
        .flat_map(|c| kernels::crc32c(c).to_le_bytes())
        .collect();
    let ch = ch.clone();
    let op = strata_reactor::spawn_local(async move {
        checksums(&ch, off, n, chunk)
            .await
            .map(|v| Some(v.into_iter().flat_map(u32::to_le_bytes).collect()))
    });
    (op, Some(expect))
}
