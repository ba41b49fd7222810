//! The strata-perf engine: NVMe/TCP load from the host library, like SPDK's `spdk_nvme_perf`.
//!
//! One job per (namespace, reactor): it owns its queue pairs (moved out of a
//! [`Controller`](strata_nvmf::host::Controller)), keeps `queue_depth` I/Os in flight spread
//! over them, and is driven by a reactor poller. Every I/O context owns one DMA buffer that
//! travels with the command and comes back with its completion; nothing is allocated per I/O.
//! Latency goes into a per-job HDR histogram.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::mpsc::Sender;
use std::time::Duration;

use crate::stats::JobStats;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_nvmf::host::{cmd, DataDir, IoBuf, QueuePair};
use strata_reactor::{clock, dma, PollerHandle};

pub use crate::bdevperf::Workload;

/// One `-r` argument: `trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:... [ns:1]
/// [hostnqn:...]`.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub addr: SocketAddr,
    pub traddr: String,
    pub trsvcid: String,
    pub subnqn: String,
    pub nsid: Option<u32>,
    pub hostnqn: Option<String>,
}

impl TargetSpec {
    pub fn parse(s: &str) -> Result<TargetSpec, String> {
        let mut traddr = None;
        let mut trsvcid = "4420".to_string();
        let mut subnqn = None;
        let mut nsid = None;
        let mut hostnqn = None;
        for kv in s.split_whitespace() {
            let (k, v) = kv
                .split_once(':')
                .ok_or_else(|| format!("'{kv}' is not key:value"))?;
            match k.to_ascii_lowercase().as_str() {
                "trtype" => {
                    if !v.eq_ignore_ascii_case("tcp") {
                        return Err(format!("trtype {v}: only TCP is supported"));
                    }
                }
                "adrfam" => {
                    if !v.eq_ignore_ascii_case("ipv4") && !v.eq_ignore_ascii_case("ipv6") {
                        return Err(format!("adrfam {v}"));
                    }
                }
                "traddr" => traddr = Some(v.to_string()),
                "trsvcid" => trsvcid = v.to_string(),
                "subnqn" => subnqn = Some(v.to_string()),
                "hostnqn" => hostnqn = Some(v.to_string()),
                "ns" | "nsid" => {
                    nsid = Some(v.parse().map_err(|_| format!("bad namespace id '{v}'"))?)
                }
                _ => return Err(format!("unknown key '{k}'")),
            }
        }
        let traddr = traddr.ok_or("traddr missing")?;
        let subnqn = subnqn.ok_or("subnqn missing")?;
        let host = if traddr.contains(':') {
            format!("[{traddr}]:{trsvcid}")
        } else {
            format!("{traddr}:{trsvcid}")
        };
        let addr = host
            .to_socket_addrs()
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))?;
        Ok(TargetSpec {
            addr,
            traddr,
            trsvcid,
            subnqn,
            nsid,
            hostnqn,
        })
    }
}

/// What every job does.
#[derive(Debug, Clone)]
pub struct PerfSpec {
    pub queue_depth: usize,
    pub io_size: usize,
    pub workload: Workload,
    pub read_pct: u32,
    pub duration: Duration,
}

/// The namespace a job drives.
#[derive(Debug, Clone)]
pub struct NsTarget {
    /// Label in reports, like SPDK's "TCP (addr:... subnqn:...) NSID 1".
    pub name: String,
    pub nsid: u32,
    pub block_size: u32,
    pub nsze: u64,
}

/// What one job measured.
#[derive(Debug, Clone)]
pub struct PerfResult {
    pub name: String,
    pub core: usize,
    pub stats: JobStats,
    /// Why the job stopped early, if it did.
    pub failure: Option<String>,
}

struct IoCtx {
    buf: Option<dma::DmaBuf>,
    submit_ticks: u64,
    qp: usize,
}

struct Job {
    qps: Vec<QueuePair>,
    ctxs: Vec<IoCtx>,
    spec: PerfSpec,
    ns: NsTarget,
    core: usize,
    blocks_per_io: u32,
    span_ios: u64,
    next_seq: u64,
    rng: SmallRng,
    hist: Histogram<u64>,
    ios: u64,
    errors: u64,
    inflight: usize,
    start: u64,
    stop_at: u64,
    last: u64,
    ns_per_tick: f64,
    failure: Option<String>,
    tx: Option<Sender<Result<PerfResult, String>>>,
    handles: Vec<PollerHandle>,
}

impl Job {
    /// Submits I/O context `i` with its next offset and operation.
    fn submit(&mut self, i: usize, now: u64) -> bool {
        let idx = match self.spec.workload.random() {
            true => self.rng.gen_range(0..self.span_ios),
            false => {
                let s = self.next_seq;
                self.next_seq += 1;
                s % self.span_ios
            }
        };
        let is_read = self
            .spec
            .workload
            .next_is_read(&mut self.rng, self.spec.read_pct);
        let lba = idx * self.blocks_per_io as u64;
        let ctx = &mut self.ctxs[i];
        let Some(buf) = ctx.buf.take() else {
            return false;
        };
        let (sqe, data) = if is_read {
            (
                cmd::read(self.ns.nsid, lba, self.blocks_per_io),
                DataDir::FromController(IoBuf::Dma(buf)),
            )
        } else {
            (
                cmd::write(self.ns.nsid, lba, self.blocks_per_io),
                DataDir::ToController(IoBuf::Dma(buf)),
            )
        };
        ctx.submit_ticks = now;
        match self.qps[ctx.qp].submit(sqe, data, i as u64) {
            Ok(_) => {
                self.inflight += 1;
                true
            }
            Err(e) => {
                self.errors += 1;
                self.failure.get_or_insert_with(|| format!("submit: {e}"));
                false
            }
        }
    }

    /// One turn of the poller: returns whether it found work.
    fn turn(&mut self) -> bool {
        let mut busy = false;
        for q in 0..self.qps.len() {
            if self.qps[q].is_dead() {
                continue;
            }
            match self.qps[q].poll() {
                Ok(n) => busy |= n > 0 || self.qps[q].tx_pending(),
                Err(e) => {
                    self.failure
                        .get_or_insert_with(|| format!("queue {}: {e}", self.qps[q].qid()));
                    busy = true;
                }
            }
            if self.qps[q].completions_ready() == 0 {
                continue;
            }
            let now = clock::ticks();
            while let Some(c) = self.qps[q].pop_completion() {
                self.inflight -= 1;
                let i = c.cookie as usize;
                let Some(ctx) = self.ctxs.get_mut(i) else {
                    continue;
                };
                if c.is_success() {
                    self.ios += 1;
                    let ns =
                        (now.saturating_sub(ctx.submit_ticks) as f64 * self.ns_per_tick) as u64;
                    let _ = self.hist.record(ns.max(1));
                } else {
                    self.errors += 1;
                }
                if let Some(IoBuf::Dma(b)) = c.data {
                    ctx.buf = Some(b);
                }
                self.last = now;
                if now < self.stop_at && self.failure.is_none() {
                    self.submit(i, now);
                }
            }
        }
        if self.inflight == 0 && self.tx.is_some() {
            self.finish();
        }
        busy
    }

    fn finish(&mut self) {
        let end = if self.last > self.start {
            self.last
        } else {
            clock::ticks()
        };
        let seconds = clock::ticks_to_nanos(self.start, end) as f64 / 1e9;
        let r = PerfResult {
            name: self.ns.name.clone(),
            core: self.core,
            stats: JobStats::new(
                self.ios,
                self.errors,
                self.ios * self.spec.io_size as u64,
                seconds,
                None,
                self.hist.clone(),
            ),
            failure: self.failure.clone(),
        };
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Ok(r));
        }
        // Unregister the pollers (this one included) and close the connections.
        self.handles.clear();
        for qp in &mut self.qps {
            qp.close();
        }
    }
}

/// Starts a job on the current reactor: its result (or set-up error) arrives on `tx`.
pub fn start_job(
    qps: Vec<QueuePair>,
    ns: NsTarget,
    spec: PerfSpec,
    seed: u64,
    core: usize,
    tx: Sender<Result<PerfResult, String>>,
) {
    if let Err(e) = try_start_job(qps, ns, spec, seed, core, tx.clone()) {
        let _ = tx.send(Err(e));
    }
}

fn try_start_job(
    qps: Vec<QueuePair>,
    ns: NsTarget,
    spec: PerfSpec,
    seed: u64,
    core: usize,
    tx: Sender<Result<PerfResult, String>>,
) -> Result<(), String> {
    let bs = ns.block_size as usize;
    if qps.is_empty() {
        return Err("no queue pairs".into());
    }
    let blocks_per_io = crate::bdevperf::blocks_per_io(spec.io_size, bs, &ns.name)? as u32;
    let span_ios = ns.nsze / blocks_per_io as u64;
    if span_ios == 0 {
        return Err(format!("{} is smaller than one I/O", ns.name));
    }
    let capacity: usize = qps.iter().map(|q| q.depth() as usize).sum();
    if spec.queue_depth > capacity {
        return Err(format!(
            "queue depth {} exceeds the {capacity} slots of the job's queue pairs",
            spec.queue_depth
        ));
    }
    let mut ctxs = Vec::with_capacity(spec.queue_depth);
    for i in 0..spec.queue_depth {
        let mut buf = dma::alloc(spec.io_size).ok_or("out of DMA buffers")?;
        buf.as_mut_slice().fill(0xa5);
        ctxs.push(IoCtx {
            buf: Some(buf),
            submit_ticks: 0,
            qp: i % qps.len(),
        });
    }
    let fds: Vec<i32> = qps.iter().map(|q| q.as_raw_fd()).collect();
    let start = clock::ticks();
    let job = Job {
        qps,
        ctxs,
        blocks_per_io,
        span_ios,
        next_seq: 0,
        rng: SmallRng::seed_from_u64(seed),
        hist: Histogram::new_with_bounds(1, 60_000_000_000, 2).map_err(|e| e.to_string())?,
        ios: 0,
        errors: 0,
        inflight: 0,
        start,
        stop_at: start + clock::duration_to_ticks(spec.duration),
        last: 0,
        ns_per_tick: 1e9 / clock::tick_rate() as f64,
        failure: None,
        tx: Some(tx),
        handles: Vec::new(),
        spec,
        ns,
        core,
    };
    let job = std::rc::Rc::new(std::cell::RefCell::new(job));
    {
        let mut j = job.borrow_mut();
        for i in 0..j.ctxs.len() {
            j.submit(i, start);
        }
    }
    // The main poller waits on the first connection's fd (interrupt mode); the others only
    // wake the reactor when their connection has data.
    let j2 = job.clone();
    let main = strata_reactor::register_fd_poller("strata_perf", fds[0], move || {
        match j2.try_borrow_mut() {
            Ok(mut j) => j.turn(),
            Err(_) => false,
        }
    })
    .map_err(|e| e.to_string())?;
    let mut handles = vec![main];
    for fd in &fds[1..] {
        handles.push(
            strata_reactor::register_fd_poller("strata_perf_wake", *fd, || false)
                .map_err(|e| e.to_string())?,
        );
    }
    job.borrow_mut().handles = handles;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_spec_parses_spdk_syntax() {
        let t = TargetSpec::parse(
            "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2026-11.io.strata:default ns:2",
        )
        .unwrap();
        assert_eq!(t.addr, "127.0.0.1:4420".parse().unwrap());
        assert_eq!(t.subnqn, "nqn.2026-11.io.strata:default");
        assert_eq!(t.nsid, Some(2));
        assert!(TargetSpec::parse("trtype:RDMA traddr:1.2.3.4 subnqn:x").is_err());
        assert!(TargetSpec::parse("traddr:127.0.0.1").is_err());
        assert!(TargetSpec::parse("traddr:127.0.0.1 subnqn:x bogus").is_err());
        let t = TargetSpec::parse("traddr:::1 trsvcid:4421 subnqn:x").unwrap();
        assert_eq!(t.addr, "[::1]:4421".parse().unwrap());
    }
}
