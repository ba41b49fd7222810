//! One attached remote controller and its control thread.
//!
//! [`Shared`] is what the reactors and the RPC side see of a controller: its identity and
//! options, the connection generation (`epoch`), the fast-fail flag and the hand-off slots
//! through which each reactor receives its I/O queue pair. The control thread owns the
//! admin queue and runs the recovery state machine:
//!
//! ```text
//!   connected --(socket error, unanswered keep-alive, I/O timeout, reset RPC)--> down
//!   down: reconnect now, then every reconnect_delay_sec
//!         at fast_io_fail_timeout_sec: held and new I/O fail with a path error
//!         at ctrlr_loss_timeout_sec (0: after the first failed attempt): delete
//!   down --(connected again)--> connected: queue pairs handed out, held I/O re-sent,
//!         openers told the path is back (a mirror resyncs its leg)
//! ```
//!
//! Connecting blocks (TCP connect, controller enable, Identify, I/O queue Connects), which
//! is why it lives here and not on a reactor.

use super::bdev::RemoteBdev;
use super::{queue, AttachOptions, NvmeOptions, RemoteError};
use crate::host::controller::default_hostnqn;
use crate::host::{
    cmd, Controller, ControllerOptions, DataDir, HostError, NamespaceInfo, QueuePair,
};
use crate::spec::cmd::feature;
use crate::spec::cmd::io as op;
use crate::spec::log::{self, lid, CommandEffectsLog};
use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};
use crossbeam::utils::CachePadded;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_bdev::registry::{self, BdevEvent};
use zerocopy::FromBytes;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How often the control thread looks at the admin queue and its timers.
const TICK: Duration = Duration::from_millis(10);
/// Time limit of set-up steps at attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests to the control thread.
pub(crate) enum Event {
    /// A reactor's queue pair of connection `epoch` failed.
    Lost { epoch: u64, why: String },
    /// `bdev_nvme_reset_controller`: the answer goes to the sender.
    Reset(Sender<Result<(), String>>),
    /// `bdev_nvme_detach_controller`.
    Detach(Sender<()>),
}

/// What the recovery state machine shows (`bdev_nvme_get_controllers`).
#[derive(Debug, Clone, Default)]
struct Status {
    connected: bool,
    deleting: bool,
    /// Reconnecting gave up (ctrlr_loss_timeout_sec 0): waiting for a reset or detach.
    failed: bool,
    cntlid: u16,
    reconnects: u64,
    failed_attempts: u64,
    last_error: Option<String>,
    down_since: Option<Instant>,
}

/// Data bytes a reactor's queue pair moved (command payloads, not PDU headers).
#[derive(Debug, Default)]
pub struct Traffic {
    /// Read and checksum data received from the remote.
    pub received: AtomicU64,
    /// Write and XOR-write data sent to it.
    pub sent: AtomicU64,
}

/// A controller as reactors and RPCs see it. See the module documentation.
pub struct Shared {
    pub id: u64,
    pub name: String,
    pub opts: AttachOptions,
    pub addr: SocketAddr,
    /// Module options in force when it was attached.
    pub nvme: NvmeOptions,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// Connection generation: raised when a connection is lost and when a new one is made.
    /// A queue pair serves one generation.
    pub epoch: AtomicU64,
    /// The fast-fail timer fired during this outage: I/O fails instead of waiting.
    pub fast_fail: AtomicBool,
    /// The remote is a strata target (XOR write and checksum commands are listed in its
    /// Commands Supported log).
    pub vendor: AtomicBool,
    /// It also lists the GF XOR write (85h) that Q parity volumes take.
    pub gf_xor: AtomicBool,
    /// Largest transfer per command (MDTS).
    pub max_xfer: AtomicUsize,
    /// One slot per reactor: the queue pair waiting for that reactor, with its generation.
    pub handoff: Vec<Mutex<Option<(u64, QueuePair)>>>,
    /// Data bytes moved, per reactor (each written by its reactor only).
    pub traffic: Vec<CachePadded<Traffic>>,
    pub(crate) events: Sender<Event>,
    status: Mutex<Status>,
    /// Bdevs of this controller.
    pub bdevs: Mutex<Vec<Arc<RemoteBdev>>>,
}

impl Shared {
    /// `bdev_nvme_get_controllers` entry.
    pub fn info(&self) -> Value {
        let st = self.status.lock().clone();
        let state = if st.deleting {
            "deleting"
        } else if st.connected {
            "enabled"
        } else if st.failed {
            "failed"
        } else if st.down_since.is_some() {
            "resetting"
        } else {
            "failed"
        };
        let bdevs: Vec<String> = self.bdevs.lock().iter().map(|b| b.name.clone()).collect();
        let sum = |f: fn(&Traffic) -> &AtomicU64| -> u64 {
            self.traffic
                .iter()
                .map(|t| f(t).load(Ordering::Relaxed))
                .sum()
        };
        let (received, sent) = (sum(|t| &t.received), sum(|t| &t.sent));
        json!({
            "name": self.name,
            "ctrlrs": [{
                "state": state,
                "trid": {
                    "trtype": "TCP",
                    "adrfam": self.opts.adrfam,
                    "traddr": self.opts.traddr,
                    "trsvcid": self.opts.trsvcid,
                    "subnqn": self.opts.subnqn,
                },
                "cntlid": st.cntlid,
                "host": { "nqn": self.hostnqn, "addr": "", "svcid": "" },
                "strata": {
                    "bdevs": bdevs,
                    "vendor_commands": self.vendor.load(Ordering::Relaxed),
                    "reconnects": st.reconnects,
                    "failed_attempts": st.failed_attempts,
                    "io_failing_fast": self.fast_fail.load(Ordering::Relaxed),
                    "down_for_ms": st.down_since.map(|t| t.elapsed().as_millis() as u64),
                    "last_error": st.last_error,
                    "data_bytes_received": received,
                    "data_bytes_sent": sent,
                },
            }],
        })
    }

    /// The `bdev_nvme_attach_controller` parameters that recreate it (`save_config`).
    pub fn attach_params(&self) -> Value {
        let o = &self.opts;
        let mut v = json!({
            "name": o.name,
            "trtype": "TCP",
            "adrfam": o.adrfam,
            "traddr": o.traddr,
            "trsvcid": o.trsvcid,
            "subnqn": o.subnqn,
            "hostnqn": self.hostnqn,
            "hostaddr": o.hostaddr,
            "hdgst": o.hdgst,
            "ddgst": o.ddgst,
            "ctrlr_loss_timeout_sec": o.ctrlr_loss_timeout_sec,
            "reconnect_delay_sec": o.reconnect_delay_sec,
            "fast_io_fail_timeout_sec": o.fast_io_fail_timeout_sec,
            "num_io_queues": o.num_io_queues,
        });
        if let Some(k) = &o.dhchap_key_names.0 {
            v["dhchap_key"] = json!(k);
        }
        if let Some(k) = &o.dhchap_key_names.1 {
            v["dhchap_ctrlr_key"] = json!(k);
        }
        if let Some(k) = &o.psk_key_name {
            v["psk"] = json!(k);
        }
        v
    }

    fn reactors(&self) -> usize {
        self.handoff.len()
    }

    /// Runs `f(id)` on every reactor (fire and forget; in order with earlier messages).
    fn on_reactors(&self, f: impl Fn(u64) + Clone + Send + 'static) {
        if let Some(fw) = strata_reactor::framework() {
            for i in 0..self.reactors() {
                let (id, f) = (self.id, f.clone());
                let _ = fw.send(i, move || f(id));
            }
        }
    }
}

fn connect_once(s: &Shared, timeout: Duration) -> Result<Controller, HostError> {
    let opts = ControllerOptions {
        io_queues: s.reactors() as u16,
        queue_depth: s.nvme.io_queue_requests,
        admin_depth: 32,
        hdgst: s.opts.hdgst,
        ddgst: s.opts.ddgst,
        kato_ms: s.nvme.keep_alive_timeout_ms,
        hostnqn: Some(s.hostnqn.clone()),
        hostid: Some(s.hostid),
        timeout,
        source: s.opts.source().ok().flatten(),
        dhchap: s.opts.dhchap.clone(),
        tls_psk: s.opts.tls_psk.clone(),
        tls_kernel: true,
    };
    let c = Controller::connect(s.addr, &s.opts.subnqn, opts)?;
    if c.io_queue_count() < s.reactors() {
        return Err(HostError::Protocol(format!(
            "the controller granted {} I/O queues; strata needs one per reactor ({})",
            c.io_queue_count(),
            s.reactors()
        )));
    }
    Ok(c)
}

/// Whether the controller lists strata's XOR write and checksum commands as supported,
/// and its GF XOR write.
fn has_vendor_commands(c: &mut Controller) -> (bool, bool) {
    let Ok(page) = c.get_log_page(lid::COMMAND_EFFECTS, 0, 4096, 0) else {
        return (false, false);
    };
    let Ok(l) = CommandEffectsLog::read_from_bytes(&page[..page.len().min(4096)]) else {
        return (false, false);
    };
    let has = |o: u8| l.iocs[o as usize] & log::CSE_CSUPP != 0;
    let vendor = has(op::VENDOR_XOR_WRITE) && has(op::VENDOR_CHECKSUM);
    (vendor, vendor && has(op::VENDOR_GF_XOR_WRITE))
}

/// Learns what the new connection offers and hands its I/O queue pairs to the reactors.
fn install(s: &Shared, c: &mut Controller) {
    let (vendor, gf_xor) = has_vendor_commands(c);
    s.vendor.store(vendor, Ordering::Release);
    s.gf_xor.store(gf_xor, Ordering::Release);
    s.max_xfer
        .store(c.max_transfer().unwrap_or(1 << 20), Ordering::Release);
    let epoch = s.epoch.fetch_add(1, Ordering::AcqRel) + 1;
    s.fast_fail.store(false, Ordering::Release);
    for (i, slot) in s.handoff.iter().enumerate() {
        if let Some(qp) = c.take_io_queue(i) {
            *slot.lock() = Some((epoch, qp));
        }
    }
    {
        let mut st = s.status.lock();
        st.connected = true;
        st.failed = false;
        st.cntlid = c.cntlid();
        st.down_since = None;
    }
    s.on_reactors(queue::pick_up);
}

/// `bdev_nvme_attach_controller` after validation.
pub(crate) fn attach(
    o: AttachOptions,
    addr: SocketAddr,
    nvme: NvmeOptions,
) -> Result<Vec<String>, RemoteError> {
    let reactors = strata_reactor::framework()
        .map(|f| f.len())
        .ok_or_else(|| RemoteError::Failed("no reactors are running".into()))?;
    if (o.num_io_queues as usize) < reactors {
        return Err(RemoteError::Invalid(format!(
            "num_io_queues {} is fewer than the reactors ({reactors}): strata uses one I/O queue per reactor",
            o.num_io_queues
        )));
    }
    let hostid = *uuid::Uuid::new_v4().as_bytes();
    let hostnqn = o
        .hostnqn
        .clone()
        .unwrap_or_else(|| default_hostnqn(&hostid));
    let (tx, rx) = channel::unbounded();
    let s = Arc::new(Shared {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        name: o.name.clone(),
        addr,
        nvme,
        hostnqn,
        hostid,
        epoch: AtomicU64::new(0),
        fast_fail: AtomicBool::new(false),
        vendor: AtomicBool::new(false),
        gf_xor: AtomicBool::new(false),
        max_xfer: AtomicUsize::new(1 << 20),
        handoff: (0..reactors).map(|_| Mutex::new(None)).collect(),
        traffic: (0..reactors)
            .map(|_| CachePadded::new(Traffic::default()))
            .collect(),
        events: tx,
        status: Mutex::new(Status::default()),
        bdevs: Mutex::new(Vec::new()),
        opts: o,
    });
    let mut c = connect_once(&s, ATTACH_TIMEOUT).map_err(|e| RemoteError::Connect {
        addr: addr.to_string(),
        subnqn: s.opts.subnqn.clone(),
        source: e,
    })?;
    install(&s, &mut c);
    super::CONTROLLERS.lock().push(s.clone());
    let mut names = Vec::new();
    let namespaces = c.namespaces().to_vec();
    for ns in &namespaces {
        let b = Arc::new(RemoteBdev::new(&s, ns, c.identify_data().oncs));
        match registry::register(b.clone()) {
            Ok(()) => {
                names.push(b.name.clone());
                s.bdevs.lock().push(b);
            }
            Err(e) => {
                tracing::error!(ctrlr = %s.name, bdev = %b.name, error = %e, "cannot register the namespace's bdev");
                delete(&s, Some(c));
                return Err(e.into());
            }
        }
    }
    tracing::info!(ctrlr = %s.name, addr = %addr, subnqn = %s.opts.subnqn, bdevs = ?names,
        vendor_commands = s.vendor.load(Ordering::Relaxed), "NVMe/TCP controller attached");
    arm_events(&s, &mut c);
    let s2 = s.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("nvme-{}", s.name))
        .spawn(move || run(s2, c, rx));
    if let Err(e) = spawned {
        delete(&s, None);
        return Err(RemoteError::Failed(format!(
            "cannot start the control thread: {e}"
        )));
    }
    Ok(names)
}

/// Hot-removes the controller's bdevs and ends its queues (the controller is gone).
fn delete(s: &Arc<Shared>, c: Option<Controller>) {
    s.status.lock().deleting = true;
    let bdevs: Vec<Arc<RemoteBdev>> = std::mem::take(&mut *s.bdevs.lock());
    for b in &bdevs {
        let _ = registry::unregister(&b.name);
    }
    s.epoch.fetch_add(1, Ordering::AcqRel);
    for slot in &s.handoff {
        slot.lock().take();
    }
    s.on_reactors(queue::destroy);
    if let Some(c) = c {
        // Best effort: a normal shutdown tells the target we are going.
        let _ = c.disconnect();
    }
    super::forget(s.id);
    tracing::info!(ctrlr = %s.name, "NVMe/TCP controller deleted");
}

pub(crate) fn detach(s: &Arc<Shared>) -> Result<(), RemoteError> {
    let (tx, rx) = channel::bounded(1);
    s.events
        .send(Event::Detach(tx))
        .map_err(|_| RemoteError::NotFound(s.name.clone()))?;
    rx.recv_timeout(Duration::from_secs(60))
        .map_err(|_| RemoteError::Failed(format!("controller {} did not detach", s.name)))
}

pub(crate) fn reset(s: &Arc<Shared>) -> Result<(), RemoteError> {
    let (tx, rx) = channel::bounded(1);
    s.events
        .send(Event::Reset(tx))
        .map_err(|_| RemoteError::NotFound(s.name.clone()))?;
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RemoteError::Failed(format!(
            "reset of {} failed: {e}",
            s.name
        ))),
        Err(_) => Err(RemoteError::Failed(format!(
            "reset of {} did not finish",
            s.name
        ))),
    }
}

/// The control thread. See the module documentation.
fn run(s: Arc<Shared>, c: Controller, rx: Receiver<Event>) {
    let mut ctrl = Some(c);
    let mut next_attempt = Instant::now();
    let mut reset_waiters: Vec<Sender<Result<(), String>>> = Vec::new();
    loop {
        match rx.recv_timeout(TICK) {
            Ok(Event::Lost { epoch, why }) => {
                if ctrl.is_some() && epoch == s.epoch.load(Ordering::Acquire) {
                    lose(&s, &mut ctrl, &why);
                    next_attempt = Instant::now();
                }
            }
            Ok(Event::Reset(tx)) => {
                if ctrl.is_some() {
                    lose(&s, &mut ctrl, "reset requested");
                }
                s.status.lock().failed = false;
                reset_waiters.push(tx);
                next_attempt = Instant::now();
            }
            Ok(Event::Detach(tx)) => {
                delete(&s, ctrl.take());
                for w in reset_waiters.drain(..) {
                    let _ = w.send(Err("controller detached".into()));
                }
                let _ = tx.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Some(c) = ctrl.as_mut() {
            let r = c.poll_admin();
            while let Some(done) = c.pop_admin_completion() {
                on_admin_completion(&s, c, done);
            }
            let why = match r {
                Err(e) => Some(format!("admin queue: {e}")),
                Ok(_) if c.keep_alive_overdue() => Some("keep-alive not answered".to_string()),
                Ok(_) => None,
            };
            if let Some(why) = why {
                lose(&s, &mut ctrl, &why);
                next_attempt = Instant::now();
            }
            continue;
        }
        let down_for = s
            .status
            .lock()
            .down_since
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let fast = Duration::from_secs(s.opts.fast_io_fail_timeout_sec);
        if s.opts.fast_io_fail_timeout_sec > 0
            && down_for >= fast
            && !s.fast_fail.swap(true, Ordering::AcqRel)
        {
            tracing::warn!(ctrlr = %s.name, secs = s.opts.fast_io_fail_timeout_sec, "fast_io_fail_timeout: failing held and new I/O");
            let epoch = s.epoch.load(Ordering::Acquire);
            s.on_reactors(move |id| queue::fail_waiting(id, epoch));
        }
        let loss = s.opts.ctrlr_loss_timeout_sec;
        if loss > 0 && down_for >= Duration::from_secs(loss as u64) {
            tracing::error!(ctrlr = %s.name, secs = loss, "ctrlr_loss_timeout: deleting the controller");
            give_up(&s, &mut reset_waiters);
            return;
        }
        if Instant::now() < next_attempt {
            continue;
        }
        // One attempt; it must not block past the fast-fail moment.
        let mut limit = Duration::from_secs(s.opts.reconnect_delay_sec.clamp(1, 10));
        if s.opts.fast_io_fail_timeout_sec > 0 && !s.fast_fail.load(Ordering::Acquire) {
            limit = limit.min(
                fast.saturating_sub(down_for)
                    .max(Duration::from_millis(200)),
            );
        }
        match connect_once(&s, limit) {
            Ok(mut c) => {
                // The attempt's limit was for connecting; admin commands get the normal one.
                c.set_timeout(ATTACH_TIMEOUT);
                drop_replaced_namespaces(&s, &c);
                install(&s, &mut c);
                sync_namespaces(&s, &c);
                arm_events(&s, &mut c);
                s.status.lock().reconnects += 1;
                tracing::info!(ctrlr = %s.name, cntlid = c.cntlid(), down_ms = down_for.as_millis() as u64, "NVMe/TCP controller reconnected");
                ctrl = Some(c);
                for w in reset_waiters.drain(..) {
                    let _ = w.send(Ok(()));
                }
                let names: Vec<String> = s.bdevs.lock().iter().map(|b| b.name.clone()).collect();
                for n in names {
                    registry::notify(&n, BdevEvent::PathRestored);
                }
            }
            Err(e) => {
                {
                    let mut st = s.status.lock();
                    st.failed_attempts += 1;
                    st.last_error = Some(e.to_string());
                }
                tracing::warn!(ctrlr = %s.name, error = %e, "reconnect failed");
                for w in reset_waiters.drain(..) {
                    let _ = w.send(Err(e.to_string()));
                }
                if loss == 0 {
                    // SPDK's behaviour without reconnect timers: the controller stays, failed,
                    // with its bdevs (their I/O fails); a reset retries, detach removes it.
                    tracing::error!(ctrlr = %s.name, "reconnect failed and ctrlr_loss_timeout_sec is 0: the controller stays failed until bdev_nvme_reset_controller or detach");
                    if !s.fast_fail.swap(true, Ordering::AcqRel) {
                        let epoch = s.epoch.load(Ordering::Acquire);
                        s.on_reactors(move |id| queue::fail_waiting(id, epoch));
                    }
                    s.status.lock().failed = true;
                    next_attempt = far_future();
                    continue;
                }
                next_attempt = Instant::now()
                    .checked_add(Duration::from_secs(s.opts.reconnect_delay_sec))
                    .unwrap_or_else(far_future);
            }
        }
    }
}

/// A moment that never comes (no further automatic attempt).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 86400)
}

fn give_up(s: &Arc<Shared>, waiters: &mut Vec<Sender<Result<(), String>>>) {
    s.fast_fail.store(true, Ordering::Release);
    delete(s, None);
    for w in waiters.drain(..) {
        let _ = w.send(Err("controller lost".into()));
    }
}

/// The connection is gone: close the admin queue, tell every reactor, start the clock.
fn lose(s: &Shared, ctrl: &mut Option<Controller>, why: &str) {
    if let Some(mut c) = ctrl.take() {
        c.admin_queue().close();
    }
    let epoch = s.epoch.fetch_add(1, Ordering::AcqRel) + 1;
    for slot in &s.handoff {
        slot.lock().take();
    }
    {
        let mut st = s.status.lock();
        st.connected = false;
        st.last_error = Some(why.to_string());
        st.down_since.get_or_insert_with(Instant::now);
    }
    tracing::error!(ctrlr = %s.name, reason = why, "NVMe/TCP controller lost its connection; reconnecting");
    s.on_reactors(move |id| queue::disconnect(id, epoch));
}

/// The bdevs whose namespace is gone, reformatted or replaced by another device (a
/// different identity under the same NSID): hot-removed. Runs before a new connection's
/// queue pairs are handed out, after their held I/O was failed, so nothing meant for the old
/// device reaches the new one.
fn drop_replaced_namespaces(s: &Arc<Shared>, c: &Controller) {
    let bdevs: Vec<Arc<RemoteBdev>> = s.bdevs.lock().clone();
    for b in &bdevs {
        let same = c.namespace(b.nsid).is_some_and(|ns| {
            ns.block_size == b.block_size && namespace_identity(ns) == b.identity
        });
        if same {
            continue;
        }
        tracing::error!(ctrlr = %s.name, bdev = %b.name, "namespace gone, reformatted or replaced by another device: removing the bdev");
        s.bdevs.lock().retain(|x| x.name != b.name);
        let (id, nsid) = (s.id, b.nsid);
        s.on_reactors(move |_| queue::fail_nsid(id, nsid));
        let _ = registry::unregister(&b.name);
    }
}

/// Brings the bdevs in line with the controller's namespaces (after a reconnect or a
/// namespace-change event): one that went away or changed identity is hot-removed, one that
/// changed size is resized (I/O past the new end is refused, never sent), a new one gets a
/// bdev.
fn sync_namespaces(s: &Arc<Shared>, c: &Controller) {
    drop_replaced_namespaces(s, c);
    let bdevs: Vec<Arc<RemoteBdev>> = s.bdevs.lock().clone();
    for b in &bdevs {
        if let Some(ns) = c.namespace(b.nsid) {
            b.resize(ns.nsze);
        }
    }
    for ns in c.namespaces() {
        if bdevs.iter().any(|b| b.nsid == ns.nsid) {
            continue;
        }
        let b = Arc::new(RemoteBdev::new(s, ns, c.identify_data().oncs));
        match registry::register(b.clone()) {
            Ok(()) => {
                tracing::info!(ctrlr = %s.name, bdev = %b.name, "new remote namespace");
                s.bdevs.lock().push(b);
            }
            Err(e) => {
                tracing::error!(ctrlr = %s.name, bdev = %b.name, error = %e, "cannot register the new namespace")
            }
        }
    }
}

/// Cookie of the Asynchronous Event Request kept outstanding on the admin queue.
const AER_COOKIE: u64 = 0xae;
/// AEC bit 8: namespace attribute notices.
const AEC_NS_NOTICES: u32 = 1 << 8;

/// Asks for namespace-change notices and leaves an Asynchronous Event Request outstanding.
fn arm_events(s: &Shared, c: &mut Controller) {
    if let Err(e) = c.set_features(feature::ASYNC_EVENT_CONFIG, AEC_NS_NOTICES) {
        tracing::warn!(ctrlr = %s.name, error = %e, "no asynchronous event notices: namespace changes are seen at the next reconnect");
        return;
    }
    if let Err(e) = c.submit_admin(cmd::async_event_request(), DataDir::None, AER_COOKIE) {
        tracing::warn!(ctrlr = %s.name, error = %e, "cannot submit an asynchronous event request");
    }
}

/// An admin completion the control thread did not wait for: the asynchronous event.
fn on_admin_completion(s: &Arc<Shared>, c: &mut Controller, done: crate::host::Completion) {
    if done.cookie != AER_COOKIE {
        return;
    }
    if !done.is_success() {
        tracing::warn!(ctrlr = %s.name, status = ?done.status(), "asynchronous event request failed");
        return;
    }
    let dw0 = done.cqe.dw0;
    let (kind, info, page) = (dw0 & 7, (dw0 >> 8) & 0xff, ((dw0 >> 16) & 0xff) as u8);
    tracing::info!(ctrlr = %s.name, kind, info, log_page = page, "asynchronous event");
    // Reading the log page clears the event; then the namespaces are read again.
    if page != 0 {
        let _ = c.get_log_page(page, 0, 4096, 0);
    }
    if kind == 2 && info == 0 {
        match c.scan_namespaces() {
            Ok(()) => sync_namespaces(s, c),
            Err(e) => {
                tracing::error!(ctrlr = %s.name, error = %e, "cannot read the namespaces after a change event")
            }
        }
    }
    if let Err(e) = c.submit_admin(cmd::async_event_request(), DataDir::None, AER_COOKIE) {
        tracing::warn!(ctrlr = %s.name, error = %e, "cannot re-submit the asynchronous event request");
    }
}

/// What identifies a namespace (descriptor UUID, else NGUID, else EUI-64), if anything.
pub(crate) fn namespace_identity(ns: &NamespaceInfo) -> Option<[u8; 16]> {
    if let Some(u) = ns.uuid.filter(|u| *u != [0; 16]) {
        return Some(u);
    }
    if ns.id.nguid != [0; 16] {
        return Some(ns.id.nguid);
    }
    if ns.id.eui64 != [0; 8] {
        let mut v = [0; 16];
        v[..8].copy_from_slice(&ns.id.eui64);
        return Some(v);
    }
    None
}

/// The bdev's UUID: the namespace's identity, else derived from the NQN and NSID.
pub(crate) fn namespace_uuid(subnqn: &str, ns: &NamespaceInfo) -> uuid::Uuid {
    if let Some(id) = namespace_identity(ns) {
        uuid::Uuid::from_bytes(id)
    } else {
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{subnqn}:{}", ns.nsid).as_bytes(),
        )
    }
}
