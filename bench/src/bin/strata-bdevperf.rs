//! `strata-bdevperf`: drives bdevs created from a JSON config, in-process, at a queue depth
//! on chosen reactors, and reports IOPS, MiB/s and latency — SPDK's bdevperf for strata.
//!
//! ```text
//! strata-bdevperf --json bdevs.json -q 32 -o 4096 -w randread -t 5 -m 0x1 [-b Malloc0]
//! ```

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use strata_bdev::registry;
use strata_bench::bdevperf::{run_job, JobResult, JobSpec, LoadArgs};
use strata_bench::stats::JobStats;
use strata_reactor::{dma, Mode, ReactorSet};
use strata_target::rpc::{AppContext, MethodTable};

#[derive(Parser, Debug)]
#[command(
    name = "strata-bdevperf",
    version,
    about = "In-process bdev benchmark (like SPDK's bdevperf)"
)]
struct Cli {
    /// SPDK-format JSON config that creates the bdevs.
    #[arg(short = 'c', long = "json")]
    json: PathBuf,
    #[command(flatten)]
    load: LoadArgs,
    /// Seconds to run.
    #[arg(short = 't', default_value_t = 5)]
    seconds: u64,
    /// Core mask of the reactors running jobs.
    #[arg(short = 'm', default_value = "0x1")]
    cpumask: String,
    /// Bdevs to drive (default: every unclaimed bdev).
    #[arg(short = 'b')]
    bdevs: Vec<String>,
    /// Reactors sleep when idle (measures interrupt-mode overhead).
    #[arg(long = "interrupt-mode")]
    interrupt_mode: bool,
    /// Print results as JSON.
    #[arg(long)]
    json_output: bool,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-bdevperf: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let workload = cli.load.checked_workload()?;
    let cores = strata_reactor::parse_core_mask(&cli.cpumask).map_err(|e| e.to_string())?;
    dma::init_iobuf(dma::IobufOptions::default()).map_err(|e| e.to_string())?;
    let mode = if cli.interrupt_mode {
        Mode::Interrupt
    } else {
        Mode::Poll
    };
    let reactors = ReactorSet::start(&cores, mode).map_err(|e| e.to_string())?;
    reactors.install_global();
    let (tx, _rx) = crossbeam_channel::unbounded();
    let methods = MethodTable::new(AppContext {
        reactors: reactors.clone(),
        shutdown: tx,
    });
    strata_target::config::load(&cli.json, &methods).map_err(|e| e.to_string())?;
    let bdevs: Vec<String> = if cli.bdevs.is_empty() {
        registry::list()
            .into_iter()
            .filter(|h| h.claimed_by.is_none())
            .map(|h| h.bdev.name().to_string())
            .collect()
    } else {
        cli.bdevs.clone()
    };
    if bdevs.is_empty() {
        return Err("no bdevs to test".into());
    }
    println!(
        "Running {} for {} s: queue depth {}, I/O size {}, cores {:?}, {} mode",
        cli.load.workload,
        cli.seconds,
        cli.load.queue_depth,
        cli.load.io_size,
        cores,
        if cli.interrupt_mode {
            "interrupt"
        } else {
            "poll"
        }
    );
    let mut waits = Vec::new();
    let mut seed = 1;
    for b in &bdevs {
        for r in 0..reactors.len() {
            let spec = JobSpec {
                bdev: b.clone(),
                queue_depth: cli.load.queue_depth,
                io_size: cli.load.io_size,
                workload,
                read_pct: cli.load.read_pct,
                duration: Duration::from_secs(cli.seconds),
                seed,
            };
            seed += 1;
            let (jtx, jrx) = std::sync::mpsc::channel();
            reactors
                .spawn_on(r, move || async move {
                    let _ = jtx.send(run_job(spec).await);
                })
                .map_err(|e| e.to_string())?;
            waits.push(jrx);
        }
    }
    let mut results: Vec<JobResult> = Vec::new();
    for w in waits {
        results.push(w.recv().map_err(|e| e.to_string())??);
    }
    reactors.stop();
    report(&results, cli.json_output);
    Ok(())
}

fn report(results: &[JobResult], json: bool) {
    let Some(total) = JobStats::total(results.iter().map(|r| &r.stats)) else {
        return;
    };
    if json {
        let jobs: Vec<_> = results
            .iter()
            .map(|r| {
                let mut j = r.stats.json();
                j["bdev"] = r.bdev.clone().into();
                j["reactor"] = r.reactor.into();
                j
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "jobs": jobs, "total": total.json() })
        );
        return;
    }
    println!(
        "{:<16} {:>7} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "bdev", "reactor", "IOPS", "MiB/s", "avg(us)", "p50(us)", "p99(us)", "max(us)"
    );
    let line = |name: &str, reactor: String, s: &JobStats| {
        println!(
            "{:<16} {:>7} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            name,
            reactor,
            s.iops(),
            s.mib_s(),
            s.avg_us,
            s.quantile_us(0.5),
            s.quantile_us(0.99),
            s.max_us()
        )
    };
    for r in results {
        line(&r.bdev, r.reactor.to_string(), &r.stats);
    }
    line("Total", String::new(), &total);
    if total.errors > 0 {
        println!("errors: {}", total.errors);
    }
}
