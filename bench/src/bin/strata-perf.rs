//! `strata-perf`: an NVMe/TCP load generator with latency percentiles — SPDK's
//! `spdk_nvme_perf` for strata, built on the host library (`strata_nvmf::host`).
//!
//! ```text
//! strata-perf -q 32 -o 4096 -w randread -t 10 -c 0x2 \
//!     -r 'trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:4420 subnqn:nqn.2026-11.io.strata:default' \
//!     [-r ...] [-M 70] [-P 2] [--hdgst] [--ddgst] [--psk-path FILE [--disable-ktls]] [--json]
//! ```
//!
//! One controller per `-r`; one job per (namespace, core), each with `-P` queue pairs of its
//! own on its core's reactor. The main thread keeps the admin queues alive while jobs run.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use strata_bench::bdevperf::{LoadArgs, Workload};
use strata_bench::perf::{start_job, NsTarget, PerfResult, PerfSpec, TargetSpec};
use strata_bench::stats::JobStats;
use strata_nvmf::host::{Controller, ControllerOptions};
use strata_reactor::{dma, Mode, ReactorSet};

#[derive(Parser, Debug)]
#[command(
    name = "strata-perf",
    version,
    about = "NVMe/TCP load generator (like SPDK's spdk_nvme_perf)"
)]
struct Cli {
    #[command(flatten)]
    load: LoadArgs,
    /// Seconds to run.
    #[arg(short = 't', default_value_t = 10)]
    seconds: u64,
    /// Core mask: one reactor per core, each driving its own queue pairs.
    #[arg(short = 'c', default_value = "0x1")]
    cpumask: String,
    /// Target: 'trtype:TCP adrfam:IPv4 traddr:A trsvcid:P subnqn:N [ns:ID] [hostnqn:H]'.
    #[arg(short = 'r', required = true)]
    targets: Vec<String>,
    /// Queue pairs per namespace per core (the queue depth is spread over them).
    #[arg(short = 'P', default_value_t = 1)]
    qpairs: usize,
    /// Header digests.
    #[arg(long)]
    hdgst: bool,
    /// Data digests.
    #[arg(long)]
    ddgst: bool,
    /// Keep-alive timeout in milliseconds (0: none).
    #[arg(short = 'k', long = "keepalive", default_value_t = 10_000)]
    kato_ms: u32,
    /// Reactors sleep when idle (gentler on shared machines, slower).
    #[arg(long = "interrupt-mode")]
    interrupt_mode: bool,
    /// Print results as JSON.
    #[arg(long)]
    json: bool,
    /// TLS: a file with the PSK (`NVMeTLSkey-1:...`); every queue connects over TLS 1.3
    /// (a secure-channel listener).
    #[arg(long = "psk-path")]
    psk_path: Option<std::path::PathBuf>,
    /// With TLS, keep the record layer in user space even where the kernel offers kTLS.
    #[arg(long = "disable-ktls")]
    disable_ktls: bool,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(e) => {
            eprintln!("strata-perf: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

struct Job {
    target: usize,
    ns: NsTarget,
    reactor: usize,
    first_queue: usize,
}

/// Runs the benchmark; Ok(false) when I/O errors occurred.
fn run(cli: Cli) -> Result<bool, String> {
    let workload = cli.load.checked_workload()?;
    if cli.qpairs == 0 || cli.load.queue_depth == 0 {
        return Err("-q and -P must be at least 1".into());
    }
    let targets: Vec<TargetSpec> = cli
        .targets
        .iter()
        .map(|s| TargetSpec::parse(s).map_err(|e| format!("-r '{s}': {e}")))
        .collect::<Result<_, _>>()?;
    let cores = strata_reactor::parse_core_mask(&cli.cpumask).map_err(|e| e.to_string())?;
    let per_qp = cli.load.queue_depth.div_ceil(cli.qpairs);
    let per_qp = u16::try_from(per_qp).map_err(|_| "queue depth too large")?;
    let quiet = cli.json;
    if !quiet {
        println!("Initializing NVMe Controllers");
    }
    let psk = match &cli.psk_path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let k = strata_nvmf::tls::ConfiguredPsk::parse(&text)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            Some(std::sync::Arc::new(k))
        }
        None => None,
    };
    let mut ctrls = Vec::new();
    let mut jobs = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let opts = ControllerOptions {
            io_queues: 0,
            // A queue holds at least two entries (SQSIZE 0 is invalid: SPDK's target
            // refuses it); the job still keeps only -q commands in flight.
            queue_depth: per_qp.max(2),
            hdgst: cli.hdgst,
            ddgst: cli.ddgst,
            kato_ms: cli.kato_ms,
            hostnqn: t.hostnqn.clone(),
            tls_psk: psk.clone(),
            tls_kernel: !cli.disable_ktls,
            ..Default::default()
        };
        let mut c = Controller::connect(t.addr, &t.subnqn, opts)
            .map_err(|e| format!("connect to {} ({}): {e}", t.addr, t.subnqn))?;
        if !quiet {
            println!(
                "Attached to NVMe over Fabrics controller at {}:{}: {}",
                t.traddr, t.trsvcid, t.subnqn
            );
        }
        let nss: Vec<NsTarget> = c
            .namespaces()
            .iter()
            .filter(|n| t.nsid.is_none_or(|id| id == n.nsid))
            .map(|n| NsTarget {
                name: format!(
                    "TCP (addr:{} subnqn:{}) NSID {}",
                    t.traddr, t.subnqn, n.nsid
                ),
                nsid: n.nsid,
                block_size: n.block_size,
                nsze: n.nsze,
            })
            .collect();
        if nss.is_empty() {
            return Err(format!("{}: no matching active namespace", t.subnqn));
        }
        let needed = nss.len() * cores.len() * cli.qpairs;
        let needed16 = u16::try_from(needed).map_err(|_| "too many queue pairs")?;
        let got = c
            .connect_io_queues(needed16)
            .map_err(|e| format!("{}: connecting I/O queues: {e}", t.subnqn))?;
        if got < needed {
            return Err(format!(
                "{}: controller granted {got} I/O queues, {needed} needed",
                t.subnqn
            ));
        }
        if (c.io_depth() as usize) * cli.qpairs < cli.load.queue_depth {
            return Err(format!(
                "{}: I/O queues hold {} commands (CAP.MQES), -q {} with -P {} needs {per_qp}",
                t.subnqn,
                c.io_depth(),
                cli.load.queue_depth,
                cli.qpairs
            ));
        }
        let mut q = 0;
        for ns in nss {
            for (r, core) in cores.iter().enumerate() {
                if !quiet {
                    println!("Associating {} with lcore {core}", ns.name);
                }
                jobs.push(Job {
                    target: ti,
                    ns: ns.clone(),
                    reactor: r,
                    first_queue: q,
                });
                q += cli.qpairs;
            }
        }
        ctrls.push(c);
    }
    // Buffer pools sized for the jobs (one buffer per I/O in flight), not the target's defaults.
    let bufs = (cli.load.queue_depth * jobs.len() + 64).max(256);
    dma::init_iobuf(dma::IobufOptions {
        small_size: 8 << 10,
        small_count: if cli.load.io_size <= 8 << 10 {
            bufs
        } else {
            64
        },
        large_size: 128 << 10,
        large_count: if cli.load.io_size > 8 << 10 { bufs } else { 16 },
    })
    .map_err(|e| e.to_string())?;
    let mode = if cli.interrupt_mode {
        Mode::Interrupt
    } else {
        Mode::Poll
    };
    let reactors = ReactorSet::start(&cores, mode).map_err(|e| e.to_string())?;
    if !quiet {
        println!(
            "Initialization complete. Launching workers: {} for {} s, queue depth {}, I/O size {}{}",
            cli.load.workload,
            cli.seconds,
            cli.load.queue_depth,
            cli.load.io_size,
            if matches!(workload, Workload::Rw | Workload::RandRw) {
                format!(", {}% reads", cli.load.read_pct)
            } else {
                String::new()
            }
        );
    }
    let spec = PerfSpec {
        queue_depth: cli.load.queue_depth,
        io_size: cli.load.io_size,
        workload,
        read_pct: cli.load.read_pct,
        duration: Duration::from_secs(cli.seconds),
    };
    let (tx, rx) = mpsc::channel();
    for (seed, j) in jobs.iter().enumerate() {
        let mut qps = Vec::new();
        for i in j.first_queue..j.first_queue + cli.qpairs {
            qps.push(
                ctrls[j.target]
                    .take_io_queue(i)
                    .ok_or("I/O queue missing")?,
            );
        }
        let (ns, spec, tx, core) = (j.ns.clone(), spec.clone(), tx.clone(), cores[j.reactor]);
        reactors
            .send(j.reactor, move || {
                start_job(qps, ns, spec, seed as u64 + 1, core, tx)
            })
            .map_err(|e| e.to_string())?;
    }
    drop(tx);
    let mut results: Vec<PerfResult> = Vec::new();
    let deadline = Instant::now() + spec.duration + Duration::from_secs(60);
    let mut failure = None;
    while results.len() < jobs.len() {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => {
                failure = Some(e);
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                failure = Some("a job ended without a result".into());
                break;
            }
        }
        // Keep-alive for every controller while the jobs run.
        for c in &mut ctrls {
            if let Err(e) = c.poll_admin() {
                failure.get_or_insert(format!("admin queue of {}: {e}", c.subnqn()));
            }
        }
        if Instant::now() > deadline {
            failure = Some("jobs did not finish in time".into());
            break;
        }
    }
    reactors.stop();
    for c in ctrls {
        let _ = c.disconnect();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    results.sort_by(|a, b| (a.name.as_str(), a.core).cmp(&(b.name.as_str(), b.core)));
    for r in &results {
        if let Some(f) = &r.failure {
            eprintln!("strata-perf: {} on core {}: {f}", r.name, r.core);
        }
    }
    report(&results, cli.json);
    Ok(results
        .iter()
        .all(|r| r.stats.errors == 0 && r.failure.is_none()))
}

fn report(results: &[PerfResult], json: bool) {
    let Some(total) = JobStats::total(results.iter().map(|r| &r.stats)) else {
        return;
    };
    if json {
        let jobs: Vec<_> = results
            .iter()
            .map(|r| {
                let mut j = r.stats.json();
                j["device"] = r.name.clone().into();
                j["core"] = r.core.into();
                j["failure"] = r.failure.clone().into();
                j
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "jobs": jobs, "total": total.json() })
        );
        return;
    }
    let w = results
        .iter()
        .map(|r| r.name.len() + 15)
        .max()
        .unwrap_or(20)
        .max(20);
    let rule = "=".repeat(w + 2 + 11 * 8);
    println!("{rule}");
    println!("{:>width$}", "Latency(us)", width = w + 2 + 11 * 8 - 30);
    println!(
        "{:<w$}: {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "Device Information", "IOPS", "MiB/s", "Average", "min", "max", "p50", "p99", "p99.9"
    );
    let line = |name: String, s: &JobStats| {
        println!(
            "{:<w$}: {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            name,
            s.iops(),
            s.mib_s(),
            s.avg_us,
            s.min_us(),
            s.max_us(),
            s.quantile_us(0.5),
            s.quantile_us(0.99),
            s.quantile_us(0.999)
        )
    };
    for r in results {
        line(format!("{} from core {:>2}", r.name, r.core), &r.stats);
    }
    println!("{rule}");
    line("Total".into(), &total);
    if total.errors > 0 {
        println!("errors: {}", total.errors);
    }
}
