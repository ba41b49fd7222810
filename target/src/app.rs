//! The daemon's life: start reactors and buffer pools, load the configuration (or the
//! embedded default), serve JSON-RPC, and on SIGINT/SIGTERM drain in-flight I/O and close
//! every bdev before exiting.

use crate::rpc::server::{lock_socket, RpcServer, ServerError};
use crate::rpc::{AppContext, MethodTable};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use strata_bdev::modules::malloc;
use strata_bdev::registry;
use strata_reactor::{dma, Mode, ReactorSet};

#[derive(Debug, Clone)]
pub struct AppOptions {
    pub core_mask: String,
    pub rpc_socket: PathBuf,
    pub json_config: Option<PathBuf>,
    pub interrupt_mode: bool,
    /// Skip the embedded default (Malloc0) when no config is given.
    pub no_default: bool,
    pub iobuf: dma::IobufOptions,
    /// Address and ports of the embedded default's NVMe/TCP and discovery listeners.
    pub nvmf_addr: String,
    pub nvmf_port: u16,
    pub discovery_port: u16,
    /// etcd endpoint of the cluster store (none: volumes work from superblocks alone).
    pub etcd: Option<String>,
    /// Address (ADDR:PORT) of the Prometheus `/metrics` endpoint; none: not served.
    pub metrics: Option<String>,
}

/// NQN of the embedded default subsystem.
pub const DEFAULT_NQN: &str = "nqn.2026-11.io.strata:default";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Reactor(#[from] strata_reactor::ReactorError),
    #[error(transparent)]
    Rpc(#[from] ServerError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("embedded default: {0}")]
    Default(strata_bdev::BdevError),
    #[error("embedded default export: {0}")]
    DefaultExport(String),
    #[error("cluster store: {0}")]
    Cluster(#[from] crate::cluster::EtcdError),
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// Name and geometry of the embedded default volume.
pub const DEFAULT_BDEV: &str = "Malloc0";
const DEFAULT_BLOCK_SIZE: u32 = 4096;
const DEFAULT_SIZE: u64 = 256 << 20;

/// How long shutdown waits for in-flight I/O.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the target until a signal (or `spdk_kill_instance`) stops it.
pub fn run(opts: AppOptions) -> Result<(), AppError> {
    let cores = strata_reactor::parse_core_mask(&opts.core_mask)?;
    // The socket lock first: a second instance must fail before touching anything.
    let lock = lock_socket(&opts.rpc_socket)?;
    match crate::sys::raise_open_files_limit() {
        Ok(n) if n < 8192 => {
            tracing::warn!(
                open_files = n,
                "the open files limit is low: each NVMe/TCP queue takes one"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    dma::init_iobuf(opts.iobuf)?;
    let mode = if opts.interrupt_mode {
        Mode::Interrupt
    } else {
        Mode::Poll
    };
    let reactors = ReactorSet::start(&cores, mode)?;
    reactors.install_global();
    strata_nvmf::remote::init();
    strata_pcie::init();
    // Protected volume groups record where each volume is exported.
    strata_bdev::modules::journal::set_export_lookup(exports_of);
    // Before any config: volumes assembled from it read their records there.
    if let Some(ep) = &opts.etcd {
        strata_bdev::volume::cluster::install(crate::cluster::EtcdStore::connect(ep)?);
    }

    let (shutdown_tx, shutdown_rx) = crossbeam_channel::unbounded::<&'static str>();
    let methods = MethodTable::new(AppContext {
        reactors: reactors.clone(),
        shutdown: shutdown_tx.clone(),
    });

    let setup = (|| -> Result<(), AppError> {
        match &opts.json_config {
            Some(path) => {
                crate::config::load(path, &methods)?;
                // Arrays whose members all appeared are up; bring up degraded ones too.
                strata_bdev::module::finish_examine();
            }
            None if !opts.no_default => embedded_default(&opts, &methods)?,
            None => {}
        }
        Ok(())
    })();
    if let Err(e) = setup {
        close_bdevs();
        reactors.stop();
        return Err(e);
    }

    // Signals first: once the RPC socket answers, a client may send SIGTERM at once, and it
    // must stop the target in order rather than kill it.
    watch_signals(shutdown_tx)?;
    let metrics = match &opts.metrics {
        Some(addr) => Some(crate::metrics::MetricsServer::start(addr, methods.clone())?),
        None => None,
    };
    let server = RpcServer::start(&opts.rpc_socket, lock, methods)?;
    tracing::info!("strata-tgt ready");

    let why = shutdown_rx.recv().unwrap_or("channel closed");
    tracing::info!(reason = why, "shutting down");
    server.stop();
    if let Some(m) = metrics {
        m.stop();
    }
    close_connections(&reactors);
    drain_io();
    close_bdevs();
    reactors.stop();
    // After the reactors: their queue pairs are gone, so each controller shuts down cleanly.
    strata_pcie::detach_all();
    tracing::info!("strata-tgt stopped");
    Ok(())
}

/// The embedded default: Malloc0 exported over NVMe/TCP, allow any host, with discovery.
fn embedded_default(opts: &AppOptions, methods: &MethodTable) -> Result<(), AppError> {
    malloc::create(malloc::MallocOptions {
        name: DEFAULT_BDEV.into(),
        num_blocks: DEFAULT_SIZE / DEFAULT_BLOCK_SIZE as u64,
        block_size: DEFAULT_BLOCK_SIZE,
        uuid: None,
    })
    .map_err(AppError::Default)?;
    let addr = |port: u16| serde_json::json!({ "trtype": "TCP", "adrfam": "IPv4", "traddr": opts.nvmf_addr, "trsvcid": port.to_string() });
    let calls = [
        (
            "nvmf_create_transport",
            serde_json::json!({ "trtype": "TCP" }),
        ),
        (
            "nvmf_create_subsystem",
            serde_json::json!({ "nqn": DEFAULT_NQN, "serial_number": "STRATA0000000000001", "model_number": "strata default volume", "allow_any_host": true }),
        ),
        (
            "nvmf_subsystem_add_ns",
            serde_json::json!({ "nqn": DEFAULT_NQN, "namespace": { "bdev_name": DEFAULT_BDEV, "nsid": 1 } }),
        ),
        (
            "nvmf_subsystem_add_listener",
            serde_json::json!({ "nqn": DEFAULT_NQN, "listen_address": addr(opts.nvmf_port) }),
        ),
        (
            "nvmf_subsystem_add_listener",
            serde_json::json!({ "nqn": strata_nvmf::spec::fabrics::DISCOVERY_NQN, "listen_address": addr(opts.discovery_port) }),
        ),
    ];
    for (m, p) in calls {
        methods
            .call(m, Some(p))
            .map_err(|e| AppError::DefaultExport(format!("{m}: {}", e.message)))?;
    }
    Ok(())
}

/// Disconnects every host (their in-flight I/O still completes before bdevs close).
fn close_connections(reactors: &ReactorSet) {
    for r in 0..reactors.len() {
        let _ = reactors.call_timeout(r, Duration::from_secs(2), || {
            for c in strata_nvmf::target::transport::SockGroup::connections() {
                c.close("target shutting down");
            }
        });
    }
}

fn watch_signals(tx: crossbeam_channel::Sender<&'static str>) -> Result<(), AppError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(AppError::Signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                let _ = tx.send(if s == SIGINT { "SIGINT" } else { "SIGTERM" });
            }
        })
        .map_err(AppError::Signals)?;
    Ok(())
}

/// Waits until no bdev has I/O in flight (or the timeout passes).
fn drain_io() {
    let start = Instant::now();
    loop {
        let busy: Vec<(String, u64)> = registry::list()
            .iter()
            .map(|h| (h.bdev.name().to_string(), h.stats.snapshot().outstanding))
            .filter(|(_, n)| *n > 0)
            .collect();
        if busy.is_empty() {
            return;
        }
        if start.elapsed() > DRAIN_TIMEOUT {
            tracing::warn!(?busy, "I/O still in flight after the drain timeout");
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Unregisters every bdev, virtual bdevs (registered later) first.
fn close_bdevs() {
    for h in registry::list().iter().rev() {
        // A base's removal may already have removed the virtual bdevs above it.
        if registry::get(h.bdev.name()).is_some() {
            let _ = registry::unregister(h.bdev.name());
        }
    }
}

/// The subsystems and namespaces bdev `name` is exported as (for the journal's catalog).
fn exports_of(name: &str) -> Vec<strata_bdev::modules::journal::catalog::Export> {
    strata_nvmf::target::Target::get()
        .subsystems()
        .iter()
        .flat_map(|s| {
            s.namespaces()
                .into_iter()
                .filter(|ns| ns.desc.name() == name)
                .map(|ns| strata_bdev::modules::journal::catalog::Export {
                    nqn: s.nqn.clone(),
                    nsid: ns.nsid,
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
