//! Remote bdevs: namespaces of other NVMe/TCP targets used as local bdevs (SPDK's
//! `bdev_nvme`, TCP transport), so any volume can put a member on another node over the
//! standard fabric.
//!
//! - [`ctrlr`]: one attached controller. Its control thread owns the admin queue (keep-alive,
//!   Commands Supported log, reset) and runs the failure state machine: on a lost connection
//!   it reconnects every `reconnect_delay_sec`, fails queued I/O after
//!   `fast_io_fail_timeout_sec`, and after `ctrlr_loss_timeout_sec` deletes the controller
//!   and hot-removes its bdevs. Blocking work lives there, never on a reactor.
//! - [`queue`]: one reactor's I/O queue pair to a controller, shared by the channels of all
//!   its bdevs on that reactor and polled by that reactor only. It turns bdev I/Os into
//!   NVMe commands (buffers move into the queue pair and back: no copy), queues I/O while the
//!   path is down and re-submits it after the reconnect.
//! - [`bdev`]: the bdev of one namespace, `<name>n<nsid>`.
//!
//! This file holds the module-wide options (`bdev_nvme_set_options`), the operations behind
//! the `bdev_nvme_*` RPCs and the module's `save_config` entries.

pub mod bdev;
pub mod ctrlr;
pub mod queue;

use crate::host::HostError;
use ctrlr::Shared;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use strata_bdev::module::BdevModule;
use strata_bdev::{BdevError, ConfigEntry};

/// Errors of remote-bdev operations.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("NVMe controller '{0}' already exists")]
    Exists(String),
    #[error("no NVMe controller named '{0}'")]
    NotFound(String),
    #[error("{0}")]
    NotPermitted(String),
    #[error("cannot connect to {addr} ({subnqn}): {source}")]
    Connect {
        addr: String,
        subnqn: String,
        source: HostError,
    },
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Bdev(#[from] BdevError),
}

impl RemoteError {
    /// Negative errno, SPDK's convention for RPC failures (invalid arguments are the
    /// JSON-RPC edge's -32602).
    pub fn errno(&self) -> i32 {
        match self {
            RemoteError::Invalid(_) => -libc::EINVAL,
            RemoteError::Exists(_) => -libc::EEXIST,
            RemoteError::NotFound(_) => -libc::ENODEV,
            RemoteError::NotPermitted(_) => -libc::EPERM,
            RemoteError::Connect { .. } => -libc::ENXIO,
            RemoteError::Failed(_) => -libc::EIO,
            RemoteError::Bdev(e) => e.errno(),
        }
    }
}

/// Module-wide options (`bdev_nvme_set_options`); they apply to controllers attached later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmeOptions {
    /// A command outstanding longer than this resets the controller (0: no limit).
    pub timeout_us: u64,
    /// Accepted for SPDK compatibility; TCP has no transport-level retry.
    pub transport_retry_count: u32,
    /// How often an I/O that failed with a retryable NVMe status is retried (-1: forever).
    pub bdev_retry_count: i32,
    /// Keep-alive timeout asked for at Connect; the host sends Keep Alive every half of it
    /// and declares the path lost when one is not answered in time.
    pub keep_alive_timeout_ms: u32,
    /// Command slots per I/O queue pair.
    pub io_queue_requests: u16,
}

impl Default for NvmeOptions {
    fn default() -> Self {
        NvmeOptions {
            timeout_us: 0,
            transport_retry_count: 4,
            bdev_retry_count: 3,
            keep_alive_timeout_ms: 10_000,
            io_queue_requests: 128,
        }
    }
}

/// Parameters of `bdev_nvme_attach_controller` (TCP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachOptions {
    pub name: String,
    pub traddr: String,
    pub trsvcid: String,
    /// "IPv4" or "IPv6".
    pub adrfam: String,
    pub subnqn: String,
    pub hostnqn: Option<String>,
    /// Local address to connect from (one node's own loopback address, say).
    pub hostaddr: Option<String>,
    pub hdgst: bool,
    pub ddgst: bool,
    /// Seconds to keep reconnecting before deleting the controller (-1: forever; 0: one
    /// attempt).
    pub ctrlr_loss_timeout_sec: i64,
    pub reconnect_delay_sec: u64,
    /// Seconds after a path loss at which queued and new I/O fail (0: never; they wait).
    pub fast_io_fail_timeout_sec: u64,
    /// Most I/O queues to create (one per reactor is used).
    pub num_io_queues: u32,
    /// DH-HMAC-CHAP secrets, and the keyring names they came from (for `save_config`).
    pub dhchap: Option<std::sync::Arc<crate::host::auth::DhchapKeys>>,
    pub dhchap_key_names: (Option<String>, Option<String>),
    /// TLS PSK (every queue over TLS 1.3), and its keyring name.
    pub tls_psk: Option<std::sync::Arc<crate::tls::ConfiguredPsk>>,
    pub psk_key_name: Option<String>,
}

impl AttachOptions {
    pub fn new(name: &str, traddr: &str, trsvcid: &str, subnqn: &str) -> AttachOptions {
        AttachOptions {
            name: name.into(),
            traddr: traddr.into(),
            trsvcid: trsvcid.into(),
            adrfam: "IPv4".into(),
            subnqn: subnqn.into(),
            hostnqn: None,
            hostaddr: None,
            hdgst: false,
            ddgst: false,
            ctrlr_loss_timeout_sec: 0,
            reconnect_delay_sec: 0,
            fast_io_fail_timeout_sec: 0,
            num_io_queues: 1024,
            dhchap: None,
            dhchap_key_names: (None, None),
            tls_psk: None,
            psk_key_name: None,
        }
    }

    /// The local address to connect from.
    pub fn source(&self) -> Result<Option<std::net::IpAddr>, RemoteError> {
        self.hostaddr
            .as_deref()
            .map(|a| {
                a.parse().map_err(|_| {
                    RemoteError::Invalid(format!("hostaddr '{a}' is not an IP address"))
                })
            })
            .transpose()
    }

    /// SPDK's rules for the three recovery timers, plus a resolvable address.
    pub fn validate(&self) -> Result<SocketAddr, RemoteError> {
        self.source()?;
        let bad = |m: String| Err(RemoteError::Invalid(m));
        if self.name.is_empty() || self.name.contains('/') {
            return bad(format!(
                "controller name '{}' is empty or has a '/'",
                self.name
            ));
        }
        let (loss, delay, fast) = (
            self.ctrlr_loss_timeout_sec,
            self.reconnect_delay_sec,
            self.fast_io_fail_timeout_sec,
        );
        if loss < -1 {
            return bad(format!(
                "ctrlr_loss_timeout_sec {loss} (-1 = forever, or >= 0)"
            ));
        }
        if loss == 0 && (delay != 0 || fast != 0) {
            return bad("reconnect_delay_sec and fast_io_fail_timeout_sec need a non-zero ctrlr_loss_timeout_sec".into());
        }
        if loss != 0 && delay == 0 {
            return bad(
                "reconnect_delay_sec must be non-zero when ctrlr_loss_timeout_sec is".into(),
            );
        }
        if loss > 0 && delay > loss as u64 {
            return bad(format!(
                "reconnect_delay_sec {delay} is larger than ctrlr_loss_timeout_sec {loss}"
            ));
        }
        if fast != 0 && (fast < delay || (loss > 0 && fast > loss as u64)) {
            return bad(format!(
                "fast_io_fail_timeout_sec {fast} must lie between reconnect_delay_sec {delay} and ctrlr_loss_timeout_sec {loss}"
            ));
        }
        if self.num_io_queues == 0 {
            return bad("num_io_queues must be at least 1".into());
        }
        if self.subnqn.is_empty() || self.subnqn.len() > 223 {
            return bad(format!("subnqn '{}' (1 to 223 bytes)", self.subnqn));
        }
        let want_v6 = match self.adrfam.to_ascii_lowercase().as_str() {
            "ipv4" => false,
            "ipv6" => true,
            other => return bad(format!("adrfam {other} (IPv4 or IPv6)")),
        };
        let port: u16 = self.trsvcid.parse().map_err(|_| {
            RemoteError::Invalid(format!("trsvcid '{}' is not a port", self.trsvcid))
        })?;
        let addr = (self.traddr.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| RemoteError::Invalid(format!("traddr '{}': {e}", self.traddr)))?
            .find(|a| a.is_ipv6() == want_v6)
            .ok_or_else(|| {
                RemoteError::Invalid(format!(
                    "traddr '{}' has no {} address",
                    self.traddr, self.adrfam
                ))
            })?;
        Ok(addr)
    }
}

static OPTIONS: Mutex<Option<NvmeOptions>> = Mutex::new(None);
static CONTROLLERS: Mutex<Vec<Arc<Shared>>> = Mutex::new(Vec::new());

/// The options new controllers get.
pub fn options() -> NvmeOptions {
    OPTIONS.lock().clone().unwrap_or_default()
}

/// `bdev_nvme_set_options`. Like SPDK, only while no controller is attached.
pub fn set_options(o: NvmeOptions) -> Result<(), RemoteError> {
    if !CONTROLLERS.lock().is_empty() {
        return Err(RemoteError::NotPermitted(
            "bdev_nvme_set_options is only possible before any controller is attached".into(),
        ));
    }
    if o.bdev_retry_count < -1 {
        return Err(RemoteError::Invalid(format!(
            "bdev_retry_count {} (-1 = forever, or >= 0)",
            o.bdev_retry_count
        )));
    }
    if o.io_queue_requests < 2 {
        return Err(RemoteError::Invalid(
            "io_queue_requests must be at least 2".into(),
        ));
    }
    *OPTIONS.lock() = Some(o);
    Ok(())
}

pub(crate) fn find(name: &str) -> Result<Arc<Shared>, RemoteError> {
    CONTROLLERS
        .lock()
        .iter()
        .find(|c| c.name == name)
        .cloned()
        .ok_or_else(|| RemoteError::NotFound(name.to_string()))
}

/// Drops a controller from the list (its control thread ended).
pub(crate) fn forget(id: u64) {
    CONTROLLERS.lock().retain(|c| c.id != id);
}

/// `bdev_nvme_attach_controller`: connects (blocking: call it off the reactors), registers
/// one bdev per active namespace and returns their names.
pub fn attach(o: AttachOptions) -> Result<Vec<String>, RemoteError> {
    let addr = o.validate()?;
    {
        let list = CONTROLLERS.lock();
        if list.iter().any(|c| c.name == o.name) {
            return Err(RemoteError::Exists(o.name.clone()));
        }
        // Same path twice would be two controllers racing over one namespace.
        if let Some(c) = list
            .iter()
            .find(|c| c.addr == addr && c.opts.subnqn == o.subnqn)
        {
            return Err(RemoteError::Exists(format!(
                "{} (controller {} already attaches {} at {addr})",
                o.name, c.name, o.subnqn
            )));
        }
    }
    ctrlr::attach(o, addr, options())
}

/// `bdev_nvme_detach_controller`: hot-removes the bdevs and disconnects.
pub fn detach(name: &str) -> Result<(), RemoteError> {
    let c = find(name)?;
    ctrlr::detach(&c)
}

/// `bdev_nvme_reset_controller`: drops the connection and reconnects; returns when the
/// controller is connected again (or the reconnect failed).
pub fn reset(name: &str) -> Result<(), RemoteError> {
    let c = find(name)?;
    ctrlr::reset(&c)
}

/// `bdev_nvme_get_controllers`, in SPDK's shape (`name`, `ctrlrs[]` with `state`, `trid`,
/// `cntlid`, `host`) plus strata's recovery details.
pub fn controllers(name: Option<&str>) -> Result<Vec<Value>, RemoteError> {
    let list: Vec<Arc<Shared>> = match name {
        Some(n) => vec![find(n)?],
        None => CONTROLLERS.lock().clone(),
    };
    Ok(list.iter().map(|c| c.info()).collect())
}

/// The bdev module's hooks: `save_config` entries (options first, then one attach per
/// controller; the bdevs themselves are recreated by the attach).
pub struct RemoteModule;

impl BdevModule for RemoteModule {
    fn name(&self) -> &'static str {
        "nvme"
    }

    fn config_entries(&self) -> Vec<ConfigEntry> {
        let o = options();
        let mut v = vec![ConfigEntry {
            method: "bdev_nvme_set_options",
            params: json!({
                "timeout_us": o.timeout_us,
                "transport_retry_count": o.transport_retry_count,
                "bdev_retry_count": o.bdev_retry_count,
                "keep_alive_timeout_ms": o.keep_alive_timeout_ms,
                "io_queue_requests": o.io_queue_requests,
            }),
        }];
        for c in CONTROLLERS.lock().iter() {
            v.push(ConfigEntry {
                method: "bdev_nvme_attach_controller",
                params: c.attach_params(),
            });
        }
        v
    }
}

/// Adds the module's hooks to the bdev layer (once, at start-up).
pub fn init() {
    strata_bdev::module::register(&RemoteModule);
}
