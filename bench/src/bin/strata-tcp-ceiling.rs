//! `strata-tcp-ceiling`: the loopback ceiling for NVMe/TCP on two cores — a minimal
//! request/response loop with NVMe/TCP's message sizes (see `strata_bench::ceiling`), so a
//! target's figure can be read as a fraction of what the kernel's TCP path allows at all.
//!
//! ```text
//! strata-tcp-ceiling -q 32 -o 4096 -w randread -t 5 [--server-core 0] [--client-core 1] [--json]
//! ```

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use serde_json::json;
use strata_bench::bdevperf::{LoadArgs, Workload};
use strata_bench::ceiling::{run, CeilingSpec};

#[derive(Parser, Debug)]
#[command(
    name = "strata-tcp-ceiling",
    version,
    about = "Loopback TCP request/response ceiling with NVMe/TCP message sizes"
)]
struct Cli {
    /// -q, -o, -w as for strata-perf (read/randread or write/randwrite: random and
    /// sequential are the same here; mixes are refused).
    #[command(flatten)]
    load: LoadArgs,
    /// Seconds to run.
    #[arg(short = 't', default_value_t = 5.0)]
    seconds: f64,
    /// Core of the answering side (where a target would run).
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// Core of the issuing side (where the load generator would run).
    #[arg(long, default_value_t = 1)]
    client_core: usize,
    /// SO_SNDBUF and SO_RCVBUF on both ends, bytes (0: the kernel's autotuning; SPDK's
    /// posix sockets use 2 MiB).
    #[arg(long, default_value_t = 0)]
    sock_buf: usize,
    /// Print results as JSON (`{"total": {...}}`, as strata-perf does).
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let write = match cli.load.checked_workload() {
        Ok(Workload::Read | Workload::RandRead) => false,
        Ok(Workload::Write | Workload::RandWrite) => true,
        Ok(_) => {
            eprintln!("strata-tcp-ceiling: mixed workloads are not modelled (read, randread, write, randwrite)");
            return std::process::ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("strata-tcp-ceiling: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if !(cli.seconds > 0.0 && cli.seconds <= 3600.0) {
        eprintln!("strata-tcp-ceiling: -t must be between 0 and 3600 seconds");
        return std::process::ExitCode::from(2);
    }
    let spec = CeilingSpec {
        qd: cli.load.queue_depth,
        io_size: cli.load.io_size,
        write,
        seconds: cli.seconds,
        server_core: cli.server_core,
        client_core: cli.client_core,
        sock_buf: cli.sock_buf,
    };
    match run(spec) {
        Ok(r) => {
            if cli.json {
                let mut total = r.stats.json();
                total["server_cpu_ns_per_io"] = json!(r.server_cpu_ns_per_io);
                total["client_cpu_ns_per_io"] = json!(r.client_cpu_ns_per_io);
                println!("{}", json!({ "total": total }));
            } else {
                let s = &r.stats;
                println!(
                    "{:>10.0} IOPS {:>9.1} MiB/s  p50 {:.1} us  p99 {:.1} us  CPU/IO: server {:.0} ns, client {:.0} ns",
                    s.iops(),
                    s.mib_s(),
                    s.quantile_us(0.5),
                    s.quantile_us(0.99),
                    r.server_cpu_ns_per_io,
                    r.client_cpu_ns_per_io
                );
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strata-tcp-ceiling: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
