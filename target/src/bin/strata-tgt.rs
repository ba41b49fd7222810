//! `strata-tgt`: the strata storage target daemon.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use std::path::PathBuf;
use strata_reactor::dma::IobufOptions;
use strata_target::app::{self, AppOptions};

/// strata: a userspace, polled-mode NVMe-over-Fabrics storage target.
#[derive(Parser, Debug)]
#[command(name = "strata-tgt", version, about)]
struct Cli {
    /// Core mask of the reactors, SPDK syntax: 0x3, 3 or [0-1].
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// JSON-RPC Unix socket.
    #[arg(
        short = 'r',
        long = "rpc-socket",
        default_value = "/var/tmp/strata.sock"
    )]
    rpc_socket: PathBuf,
    /// SPDK-format JSON configuration to load at start (replaces the embedded default).
    #[arg(short = 'c', long = "json")]
    json: Option<PathBuf>,
    /// Reactors sleep in epoll when idle instead of busy-polling.
    #[arg(long = "interrupt-mode")]
    interrupt_mode: bool,
    /// Start without the embedded default volume (Malloc0) when no --json is given.
    #[arg(long = "no-default")]
    no_default: bool,
    /// Log level: error, warn, info, debug, trace (or a tracing filter such as strata_bdev=debug).
    #[arg(long = "log-level", default_value = "info")]
    log_level: String,
    /// Address the embedded default's NVMe/TCP listeners bind.
    #[arg(long = "nvmf-addr", default_value = "127.0.0.1")]
    nvmf_addr: String,
    /// Port of the embedded default's NVMe/TCP listener.
    #[arg(long = "nvmf-port", default_value_t = 4420)]
    nvmf_port: u16,
    /// Port of the embedded default's discovery listener.
    #[arg(long = "discovery-port", default_value_t = 8009)]
    discovery_port: u16,
    /// Keep volume member states in etcd (http://HOST:PORT): written before a state change
    /// is acted on, and preferred over the superblocks at start-up.
    #[arg(long = "etcd")]
    etcd: Option<String>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (e.g. 127.0.0.1:9464).
    #[arg(long = "metrics")]
    metrics: Option<String>,
    /// Number of 8 KiB I/O buffers.
    #[arg(long = "iobuf-small-count", default_value_t = IobufOptions::default().small_count)]
    iobuf_small_count: usize,
    /// Number of 128 KiB I/O buffers.
    #[arg(long = "iobuf-large-count", default_value_t = IobufOptions::default().large_count)]
    iobuf_large_count: usize,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("strata-tgt: invalid --log-level '{}': {e}", cli.log_level);
            return std::process::ExitCode::from(2);
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    let opts = AppOptions {
        core_mask: cli.cpumask,
        rpc_socket: cli.rpc_socket,
        json_config: cli.json,
        interrupt_mode: cli.interrupt_mode,
        no_default: cli.no_default,
        nvmf_addr: cli.nvmf_addr,
        nvmf_port: cli.nvmf_port,
        discovery_port: cli.discovery_port,
        etcd: cli.etcd,
        metrics: cli.metrics,
        iobuf: IobufOptions {
            small_count: cli.iobuf_small_count,
            large_count: cli.iobuf_large_count,
            ..IobufOptions::default()
        },
    };
    match app::run(opts) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("strata-tgt: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
