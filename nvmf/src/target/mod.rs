//! The NVMe-oF target: the TCP transport's options, the subsystems (including the discovery
//! subsystem), listeners (plain or secure-channel TLS), controllers and the discovery log.

pub mod auth;
pub mod conn;
pub mod controller;
pub mod subsystem;
pub mod tls;
pub mod transport;
pub mod vendor;

use controller::{Controller, Limits};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use subsystem::{ListenAddress, Subsystem, SubsystemKind};

use crate::spec::fabrics::DISCOVERY_NQN;
use crate::spec::log::{self, DiscoveryLogEntry, DiscoveryLogHeader};
use crate::spec::{put_ascii, put_nqn};
use zerocopy::{FromZeros, IntoBytes};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("the TCP transport has not been created (nvmf_create_transport -t TCP)")]
    NoTransport,
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bdev(#[from] strata_bdev::BdevError),
}

impl TargetError {
    /// Negative errno, as SPDK's RPCs report.
    pub fn errno(&self) -> i32 {
        match self {
            TargetError::Invalid(_) => -libc::EINVAL,
            TargetError::Exists(_) => -libc::EEXIST,
            TargetError::NotFound(_) => -libc::ENODEV,
            TargetError::NoTransport => -libc::EINVAL,
            TargetError::Listen { source, .. } => -source.raw_os_error().unwrap_or(libc::EIO),
            TargetError::Bdev(b) => b.errno(),
        }
    }
}

/// `nvmf_create_transport` options, with SPDK's names and defaults.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TransportOptions {
    pub trtype: String,
    pub max_queue_depth: u16,
    pub max_io_qpairs_per_ctrlr: u16,
    pub in_capsule_data_size: u32,
    pub max_io_size: u32,
    pub io_unit_size: u32,
    pub max_aq_depth: u16,
    /// A read's last C2HData carries SUCCESS and no CapsuleResp follows, on queues whose host
    /// disabled SQ flow control at Connect (the spec allows SUCCESS only there).
    pub c2h_success: bool,
    /// strata: SUCCESS also on queues that kept SQ flow control on, as SPDK's target does.
    /// The host then gets no SQ head pointer for those reads; Linux and SPDK hosts count
    /// their free slots themselves, but a host that waits for SQHD could stall. Off by default.
    pub c2h_success_always: bool,
    /// Reads of a bdev that lends its memory (malloc) are sent to the host straight from it,
    /// with no copy into an I/O buffer (SPDK's `zcopy`; strata's default is on). Plain TCP
    /// connections without data digests only.
    pub zcopy: bool,
    pub num_shared_buffers: u32,
    pub buf_cache_size: u32,
    pub sock_priority: u32,
    pub abort_timeout_sec: u32,
    /// strata: a write whose H2CData has not all arrived this long after its R2T fails
    /// (Transient Transport Error) and its buffer is released (0: no limit).
    pub data_wait_timeout_ms: u32,
    /// strata: a connection that has not completed ICReq and Fabrics Connect this long after
    /// it was accepted is closed (0: no limit).
    pub connect_timeout_ms: u32,
    /// strata: most connections one host (IP address) may hold, over all listeners (0: no
    /// limit); a connection beyond it is closed at once.
    pub max_connections_per_host: u32,
    /// strata: most connections on one listener (0: no limit).
    pub max_connections_per_listener: u32,
    /// strata: most buffers one connection may hold for writes whose data it has been asked
    /// for (R2T sent) and not yet sent (0: no limit); more writes wait their turn.
    pub max_r2t_buffers_per_connection: u32,
    /// strata: the same over all connections of one host (IP address), so hosts that do not
    /// answer their R2Ts cannot take every buffer from the others (0: no limit).
    pub max_r2t_buffers_per_host: u32,
    /// strata: TLS connections hand their record layer to the kernel after the handshake
    /// where it offers kTLS.
    pub enable_ktls: bool,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            trtype: "TCP".into(),
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 128,
            in_capsule_data_size: 4096,
            max_io_size: 131072,
            io_unit_size: 131072,
            max_aq_depth: 128,
            c2h_success: true,
            c2h_success_always: false,
            zcopy: true,
            num_shared_buffers: 511,
            buf_cache_size: 32,
            sock_priority: 0,
            abort_timeout_sec: 1,
            data_wait_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            max_connections_per_host: 1024,
            max_connections_per_listener: 4096,
            max_r2t_buffers_per_connection: 64,
            max_r2t_buffers_per_host: 256,
            enable_ktls: true,
        }
    }
}

struct ListenerEntry {
    addr: ListenAddress,
    listener: transport::Listener,
    users: usize,
    /// TLS on every connection (a secure channel).
    secure: bool,
}

struct Inner {
    transport: Option<TransportOptions>,
    auth_policy: auth::AuthPolicy,
    subsystems: Vec<Arc<Subsystem>>,
    listeners: Vec<ListenerEntry>,
    controllers: Vec<Weak<Controller>>,
    next_cntlid: u16,
}

/// The process's NVMe-oF target.
pub struct Target {
    inner: Mutex<Inner>,
    genctr: AtomicU64,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Target")
    }
}

static TARGET: OnceLock<Target> = OnceLock::new();

impl Target {
    pub fn get() -> &'static Target {
        TARGET.get_or_init(|| {
            let discovery =
                Subsystem::new(DISCOVERY_NQN, SubsystemKind::Discovery, "", "", true, 0);
            Target {
                inner: Mutex::new(Inner {
                    transport: None,
                    auth_policy: auth::AuthPolicy::default(),
                    subsystems: vec![discovery],
                    listeners: Vec::new(),
                    controllers: Vec::new(),
                    next_cntlid: 1,
                }),
                genctr: AtomicU64::new(1),
            }
        })
    }

    pub fn options(&self) -> TransportOptions {
        self.inner.lock().transport.clone().unwrap_or_default()
    }

    /// The digests and DH groups DH-HMAC-CHAP may choose.
    pub fn auth_policy(&self) -> auth::AuthPolicy {
        self.inner.lock().auth_policy.clone()
    }

    pub fn set_auth_policy(&self, p: auth::AuthPolicy) {
        self.inner.lock().auth_policy = p;
    }

    pub fn transport(&self) -> Option<TransportOptions> {
        self.inner.lock().transport.clone()
    }

    pub fn limits(&self) -> Limits {
        let o = self.options();
        Limits {
            max_queue_depth: o.max_queue_depth,
            max_io_qpairs: o.max_io_qpairs_per_ctrlr,
            in_capsule_data_size: o.in_capsule_data_size,
            max_io_size: o.max_io_size,
        }
    }

    pub fn create_transport(&self, opts: TransportOptions) -> Result<(), TargetError> {
        if !opts.trtype.eq_ignore_ascii_case("tcp") {
            return Err(TargetError::Invalid(format!(
                "transport type {} is not supported (TCP only)",
                opts.trtype
            )));
        }
        let max_buf = strata_reactor::dma::max_buf_size() as u32;
        if opts.max_io_size == 0
            || opts.max_io_size > max_buf
            || !opts.max_io_size.is_power_of_two()
            || opts.max_io_size < 4096
        {
            return Err(TargetError::Invalid(format!(
                "max_io_size must be a power of two from 4096 to {max_buf} (the largest I/O buffer)"
            )));
        }
        if opts.in_capsule_data_size > 8192 || !opts.in_capsule_data_size.is_multiple_of(16) {
            return Err(TargetError::Invalid(
                "in_capsule_data_size must be a multiple of 16, at most 8192".into(),
            ));
        }
        if opts.max_queue_depth < 2
            || opts.max_queue_depth > 1024
            || opts.max_aq_depth < 2
            || opts.max_aq_depth > 4096
        {
            return Err(TargetError::Invalid(
                "max_queue_depth must be 2..1024 and max_aq_depth 2..4096".into(),
            ));
        }
        if opts.max_io_qpairs_per_ctrlr < 1 {
            return Err(TargetError::Invalid(
                "max_io_qpairs_per_ctrlr must be ≥ 1".into(),
            ));
        }
        let mut i = self.inner.lock();
        if i.transport.is_some() {
            return Err(TargetError::Exists("TCP transport".into()));
        }
        tracing::info!(?opts, "NVMe/TCP transport created");
        i.transport = Some(opts);
        Ok(())
    }

    pub fn create_subsystem(
        &self,
        nqn: &str,
        serial: &str,
        model: &str,
        allow_any_host: bool,
        max_namespaces: u32,
    ) -> Result<Arc<Subsystem>, TargetError> {
        subsystem::validate_nqn(nqn)?;
        if nqn == DISCOVERY_NQN {
            return Err(TargetError::Exists(nqn.into()));
        }
        if serial.len() > 20 || model.len() > 40 || !serial.is_ascii() || !model.is_ascii() {
            return Err(TargetError::Invalid(
                "serial_number ≤ 20 and model_number ≤ 40 ASCII characters".into(),
            ));
        }
        let mut i = self.inner.lock();
        if i.subsystems.iter().any(|s| s.nqn == nqn) {
            return Err(TargetError::Exists(nqn.into()));
        }
        let s = Subsystem::new(
            nqn,
            SubsystemKind::Nvme,
            serial,
            model,
            allow_any_host,
            max_namespaces.clamp(1, 1024),
        );
        i.subsystems.push(s.clone());
        self.genctr.fetch_add(1, Ordering::AcqRel);
        tracing::info!(nqn, "subsystem created");
        Ok(s)
    }

    pub fn delete_subsystem(&self, nqn: &str) -> Result<(), TargetError> {
        let s = {
            let mut i = self.inner.lock();
            let pos = i
                .subsystems
                .iter()
                .position(|s| s.nqn == nqn && s.kind == SubsystemKind::Nvme)
                .ok_or_else(|| TargetError::NotFound(nqn.into()))?;
            i.subsystems.remove(pos)
        };
        // Disconnect hosts, drop namespaces and listeners.
        for c in s.controllers() {
            c.dead.store(true, Ordering::Release);
        }
        let nsids: Vec<u32> = s.namespaces().iter().map(|n| n.nsid).collect();
        for n in nsids {
            let _ = s.remove_namespace(n);
        }
        let addrs: Vec<ListenAddress> = s.state.lock().listeners.clone();
        for a in addrs {
            let _ = self.remove_listener(&s, &a);
        }
        self.genctr.fetch_add(1, Ordering::AcqRel);
        tracing::info!(nqn, "subsystem deleted");
        Ok(())
    }

    pub fn find_subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.inner
            .lock()
            .subsystems
            .iter()
            .find(|s| s.nqn == nqn)
            .cloned()
    }

    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.inner.lock().subsystems.clone()
    }

    fn socket_addr(a: &ListenAddress) -> Result<SocketAddr, TargetError> {
        if !a.trtype.eq_ignore_ascii_case("tcp") {
            return Err(TargetError::Invalid(format!(
                "trtype {} is not supported (TCP only)",
                a.trtype
            )));
        }
        let port: u16 = a
            .trsvcid
            .parse()
            .map_err(|_| TargetError::Invalid(format!("trsvcid '{}' is not a port", a.trsvcid)))?;
        let ip: std::net::IpAddr = a.traddr.parse().map_err(|_| {
            TargetError::Invalid(format!("traddr '{}' is not an IP address", a.traddr))
        })?;
        Ok(SocketAddr::new(ip, port))
    }

    /// Makes `subsys` reachable on `addr` (listening if nobody does yet).
    pub fn add_listener(
        &'static self,
        subsys: &Arc<Subsystem>,
        addr: ListenAddress,
        secure: bool,
    ) -> Result<(), TargetError> {
        if self.transport().is_none() {
            return Err(TargetError::NoTransport);
        }
        let sa = Self::socket_addr(&addr)?;
        if subsys.state.lock().listeners.contains(&addr) {
            return Err(TargetError::Exists(format!(
                "listener {}:{}",
                addr.traddr, addr.trsvcid
            )));
        }
        {
            let mut i = self.inner.lock();
            if let Some(e) = i.listeners.iter_mut().find(|e| e.addr == addr) {
                // One socket, one kind of connection: TLS or not is the port's.
                if e.secure != secure {
                    return Err(TargetError::Invalid(format!(
                        "listener {}:{} is already open {} secure_channel",
                        addr.traddr,
                        addr.trsvcid,
                        if e.secure { "with" } else { "without" }
                    )));
                }
                e.users += 1;
            } else {
                if secure {
                    // Fail here, not at the first connection, if TLS cannot be set up.
                    crate::tls::server_context()
                        .map_err(|e| TargetError::Invalid(e.to_string()))?;
                }
                let listener =
                    transport::listen(sa, self, secure).map_err(|source| TargetError::Listen {
                        addr: sa.to_string(),
                        source,
                    })?;
                i.listeners.push(ListenerEntry {
                    addr: addr.clone(),
                    listener,
                    users: 1,
                    secure,
                });
            }
        }
        subsys.state.lock().listeners.push(addr);
        self.genctr.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    pub fn remove_listener(
        &self,
        subsys: &Arc<Subsystem>,
        addr: &ListenAddress,
    ) -> Result<(), TargetError> {
        {
            let mut s = subsys.state.lock();
            let pos = s.listeners.iter().position(|l| l == addr).ok_or_else(|| {
                TargetError::NotFound(format!("listener {}:{}", addr.traddr, addr.trsvcid))
            })?;
            s.listeners.remove(pos);
            s.ana.remove(addr);
        }
        let mut i = self.inner.lock();
        if let Some(pos) = i.listeners.iter().position(|e| &e.addr == addr) {
            i.listeners[pos].users -= 1;
            if i.listeners[pos].users == 0 {
                let e = i.listeners.remove(pos);
                tracing::info!(addr = %e.listener.addr, "NVMe/TCP listener closed");
            }
        }
        self.genctr.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Whether the listener on `addr` is a secure channel (TLS).
    pub fn listener_secure(&self, addr: &ListenAddress) -> bool {
        self.inner
            .lock()
            .listeners
            .iter()
            .any(|e| &e.addr == addr && e.secure)
    }

    /// The subsystem's listener a connection arrived through (an exact address before a
    /// wildcard one), if any.
    pub fn listener_of(&self, subsys: &Subsystem, local: &SocketAddr) -> Option<ListenAddress> {
        let s = subsys.state.lock();
        let on_port = |l: &&ListenAddress| l.trsvcid.parse::<u16>().ok() == Some(local.port());
        s.listeners
            .iter()
            .filter(on_port)
            .find(|l| l.traddr.parse::<std::net::IpAddr>().ok() == Some(local.ip()))
            .or_else(|| {
                s.listeners
                    .iter()
                    .filter(on_port)
                    .find(|l| l.traddr == "0.0.0.0" || l.traddr == "::")
            })
            .cloned()
    }

    pub fn alloc_cntlid(&self) -> Option<u16> {
        let mut i = self.inner.lock();
        i.controllers.retain(|c| c.strong_count() > 0);
        for _ in 0..0xffef {
            let id = i.next_cntlid;
            i.next_cntlid = if id >= 0xffef { 1 } else { id + 1 };
            if !i
                .controllers
                .iter()
                .filter_map(Weak::upgrade)
                .any(|c| c.cntlid == id)
            {
                return Some(id);
            }
        }
        None
    }

    pub(crate) fn remember_controller(&self, c: &Arc<Controller>) {
        self.inner.lock().controllers.push(Arc::downgrade(c));
    }

    pub(crate) fn forget_controller(&self, c: &Arc<Controller>) {
        c.dead.store(true, Ordering::Release);
        let mut i = self.inner.lock();
        i.controllers
            .retain(|w| w.upgrade().is_some_and(|x| !Arc::ptr_eq(&x, c)));
        drop(i);
        c.subsys
            .state
            .lock()
            .controllers
            .retain(|w| w.upgrade().is_some_and(|x| !Arc::ptr_eq(&x, c)));
    }

    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        let mut i = self.inner.lock();
        i.controllers.retain(|c| c.strong_count() > 0);
        i.controllers.iter().filter_map(Weak::upgrade).collect()
    }

    /// The discovery log page a host sees: one entry per listener of each subsystem it may
    /// connect to.
    pub fn discovery_log(&self, hostnqn: &str) -> Vec<u8> {
        let subs = self.subsystems();
        let mut entries = Vec::new();
        for s in subs
            .iter()
            .filter(|s| s.kind == SubsystemKind::Nvme && s.host_allowed(hostnqn))
        {
            let listeners = s.state.lock().listeners.clone();
            for (i, l) in listeners.iter().enumerate() {
                let mut e = DiscoveryLogEntry::new_zeroed();
                e.trtype = log::TRTYPE_TCP;
                e.adrfam = if l.adrfam.eq_ignore_ascii_case("ipv6") {
                    log::ADRFAM_IPV6
                } else {
                    log::ADRFAM_IPV4
                };
                e.subtype = log::SUBTYPE_NVME;
                if self.listener_secure(l) {
                    e.treq = log::TREQ_SECURE_CHANNEL_REQUIRED;
                    e.tsas[0] = log::TCP_SECTYPE_TLS13;
                } else {
                    e.treq = log::TREQ_SECURE_CHANNEL_NOT_REQUIRED;
                }
                // Hosts may disable SQ flow control (`nvme connect-all` then asks for it).
                e.treq |= log::TREQ_SQ_FLOW_CONTROL_DISABLE_SUPPORTED;
                e.portid = i as u16;
                e.cntlid = 0xffff;
                e.asqsz = 32;
                put_ascii(&mut e.trsvcid, &l.trsvcid);
                put_nqn(&mut e.subnqn, &s.nqn);
                put_ascii(&mut e.traddr, &l.traddr);
                entries.push(e);
            }
        }
        let mut h = DiscoveryLogHeader::new_zeroed();
        h.genctr = self.genctr.load(Ordering::Acquire);
        h.numrec = entries.len() as u64;
        let mut out = h.as_bytes().to_vec();
        for e in &entries {
            out.extend_from_slice(e.as_bytes());
        }
        out
    }
}
