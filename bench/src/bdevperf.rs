//! The bdevperf engine: one job per (bdev, reactor), each keeping `queue_depth` I/Os in flight
//! for a fixed time by resubmitting every completed I/O with its own buffer. Nothing is
//! allocated per I/O; latency goes into a per-job HDR histogram.

use crate::stats::JobStats;
use hdrhistogram::Histogram;

/// One latency sample in this many I/Os goes into the histogram.
const HIST_SAMPLE: u64 = 8;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;
use strata_bdev::{registry, BdevIo, IoChannel, IoSink, IoStatus, IoType};
use strata_reactor::{clock, dma, oneshot};

/// Access pattern, with SPDK's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Read,
    Write,
    RandRead,
    RandWrite,
    /// Sequential mix, `read_pct` reads.
    Rw,
    /// Random mix, `read_pct` reads.
    RandRw,
}

impl Workload {
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "read" => Workload::Read,
            "write" => Workload::Write,
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "rw" => Workload::Rw,
            "randrw" => Workload::RandRw,
            _ => return None,
        })
    }
    /// Whether the next I/O reads (rw/randrw: with probability `read_pct` %).
    pub fn next_is_read(self, rng: &mut SmallRng, read_pct: u32) -> bool {
        match self {
            Workload::Read | Workload::RandRead => true,
            Workload::Write | Workload::RandWrite => false,
            Workload::Rw | Workload::RandRw => rng.gen_range(0..100) < read_pct,
        }
    }

    pub fn random(self) -> bool {
        matches!(
            self,
            Workload::RandRead | Workload::RandWrite | Workload::RandRw
        )
    }
}

/// The load options both load generators share (SPDK's letters: -q -o -w -M).
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Queue depth per job (one job per bdev or namespace, per core).
    #[arg(short = 'q', default_value_t = 32)]
    pub queue_depth: usize,
    /// I/O size in bytes.
    #[arg(short = 'o', default_value_t = 4096)]
    pub io_size: usize,
    /// read, write, randread, randwrite, rw, randrw.
    #[arg(short = 'w', default_value = "randread")]
    pub workload: String,
    /// Read percentage for rw/randrw.
    #[arg(short = 'M', default_value_t = 50)]
    pub read_pct: u32,
}

impl LoadArgs {
    /// The workload, once the options are checked.
    pub fn checked_workload(&self) -> Result<Workload, String> {
        if self.read_pct > 100 {
            return Err("-M must be 0..100".into());
        }
        if self.queue_depth == 0 {
            return Err("-q must be at least 1".into());
        }
        Workload::from_name(&self.workload)
            .ok_or_else(|| format!("unknown workload '{}'", self.workload))
    }
}

#[derive(Debug, Clone)]
pub struct JobSpec {
    pub bdev: String,
    pub queue_depth: usize,
    pub io_size: usize,
    pub workload: Workload,
    pub read_pct: u32,
    pub duration: Duration,
    pub seed: u64,
}

/// What one job measured.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub bdev: String,
    pub reactor: usize,
    pub stats: JobStats,
}

struct Job {
    ch: IoChannel,
    spec: JobSpec,
    blocks_per_io: u64,
    span_ios: u64,
    next_seq: Cell<u64>,
    rng: RefCell<SmallRng>,
    hist: RefCell<Histogram<u64>>,
    ios: Cell<u64>,
    /// Sum of every I/O's latency (the average is exact; percentiles are sampled).
    lat_ticks_sum: Cell<u64>,
    errors: Cell<u64>,
    stop_at: u64,
    inflight: Cell<usize>,
    done: RefCell<Option<oneshot::Sender<()>>>,
    ns_per_tick: f64,
}

impl Job {
    /// Points `io` at the next offset and operation.
    fn prepare(&self, io: &mut BdevIo) {
        let idx = if self.spec.workload.random() {
            self.rng.borrow_mut().gen_range(0..self.span_ios)
        } else {
            let s = self.next_seq.get();
            self.next_seq.set(s + 1);
            s % self.span_ios
        };
        io.offset_blocks = idx * self.blocks_per_io;
        io.complete_ticks = 0;
        io.num_blocks = self.blocks_per_io;
        let read = self
            .spec
            .workload
            .next_is_read(&mut self.rng.borrow_mut(), self.spec.read_pct);
        io.io_type = if read { IoType::Read } else { IoType::Write };
    }

    fn start(self: &Rc<Self>, mut io: BdevIo) {
        self.prepare(&mut io);
        io.push_completion(self.clone(), 0);
        self.ch.submit(io);
    }
}

impl IoSink for Job {
    #[inline]
    fn io_done(self: Rc<Self>, io: BdevIo, _tag: u64) {
        // The bdev layer stamped submission and completion: no clock read here (an I/O the
        // layer rejected carries no stamp).
        let now = if io.complete_ticks != 0 {
            io.complete_ticks
        } else {
            clock::ticks()
        };
        if io.status == IoStatus::Success {
            let n = self.ios.get() + 1;
            self.ios.set(n);
            let ticks = now.saturating_sub(io.submit_ticks);
            self.lat_ticks_sum.set(self.lat_ticks_sum.get() + ticks);
            // Percentiles from every 8th I/O: millions of samples either way, and an HDR
            // record per I/O is a tenth of the cost of a null-bdev I/O.
            if n.is_multiple_of(HIST_SAMPLE) {
                let ns = (ticks as f64 * self.ns_per_tick) as u64;
                let _ = self.hist.borrow_mut().record(ns.max(1));
            }
        } else {
            self.errors.set(self.errors.get() + 1);
        }
        if now < self.stop_at {
            self.start(io);
            return;
        }
        drop(io);
        self.inflight.set(self.inflight.get() - 1);
        if self.inflight.get() == 0 {
            if let Some(tx) = self.done.borrow_mut().take() {
                tx.send(());
            }
        }
    }
}

/// Blocks per I/O of `io_size` on a device of `block_size`, or why that size cannot be used
/// (shared by strata-bdevperf and strata-perf).
pub fn blocks_per_io(io_size: usize, block_size: usize, device: &str) -> Result<u64, String> {
    if io_size == 0 || block_size == 0 || !io_size.is_multiple_of(block_size) {
        return Err(format!(
            "I/O size {io_size} is not a multiple of {device}'s block size {block_size}"
        ));
    }
    if io_size > dma::max_buf_size() {
        return Err(format!(
            "I/O size {io_size} exceeds the largest buffer ({})",
            dma::max_buf_size()
        ));
    }
    Ok((io_size / block_size) as u64)
}

/// Runs one job on the current reactor.
pub async fn run_job(spec: JobSpec) -> Result<JobResult, String> {
    let desc = registry::open(&spec.bdev, |_| {}).map_err(|e| e.to_string())?;
    let ch = desc.channel().map_err(|e| e.to_string())?;
    let blocks_per_io = blocks_per_io(spec.io_size, ch.block_size() as usize, &spec.bdev)?;
    let span_ios = ch.num_blocks() / blocks_per_io;
    if span_ios == 0 {
        return Err(format!("{} is smaller than one I/O", spec.bdev));
    }
    let mut ios = Vec::with_capacity(spec.queue_depth);
    for _ in 0..spec.queue_depth {
        let mut io = BdevIo::new(IoType::Read, 0, blocks_per_io);
        let mut buf = dma::alloc_wait(spec.io_size)
            .await
            .map_err(|e| e.to_string())?;
        buf.as_mut_slice().fill(0xa5);
        io.bufs.push(buf);
        ios.push(io);
    }
    let (tx, rx) = oneshot::channel();
    let start = clock::ticks();
    let job = Rc::new(Job {
        ch,
        blocks_per_io,
        span_ios,
        next_seq: Cell::new(0),
        rng: RefCell::new(SmallRng::seed_from_u64(spec.seed)),
        hist: RefCell::new(
            Histogram::new_with_bounds(1, 60_000_000_000, 2).map_err(|e| e.to_string())?,
        ),
        ios: Cell::new(0),
        lat_ticks_sum: Cell::new(0),
        errors: Cell::new(0),
        stop_at: start + clock::duration_to_ticks(spec.duration),
        inflight: Cell::new(spec.queue_depth),
        done: RefCell::new(Some(tx)),
        ns_per_tick: 1e9 / clock::tick_rate() as f64,
        spec: spec.clone(),
    });
    for io in ios {
        job.start(io);
    }
    rx.await.map_err(|e| e.to_string())?;
    let seconds = clock::ticks_to_nanos(start, clock::ticks()) as f64 / 1e9;
    let ios = job.ios.get();
    let hist = job.hist.borrow().clone();
    let avg_us = job.lat_ticks_sum.get() as f64 * job.ns_per_tick / ios.max(1) as f64 / 1000.0;
    Ok(JobResult {
        bdev: spec.bdev,
        reactor: strata_reactor::current_index().unwrap_or(0),
        stats: JobStats::new(
            ios,
            job.errors.get(),
            ios * spec.io_size as u64,
            seconds,
            Some(avg_us),
            hist,
        ),
    })
}
