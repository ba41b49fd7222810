//! One NVMe/TCP queue pair: a TCP connection, owned by one reactor.
//!
//! Receive: bytes are read into a 64 KiB staging buffer and parsed PDU by PDU; a payload
//! that has not arrived yet is read straight into the command's DMA buffer. Send: PDUs
//! queue as header bytes plus a range of a DMA buffer and go out with vectored writes.
//! Admin commands are answered by the [`Controller`]; I/O commands become bdev I/O on the
//! reactor's channel to the namespace's bdev. A fatal protocol error sends a C2HTermReq and
//! closes the connection; nothing another connection owns is touched.
//!
//! One file per concern, all working on the one `State` behind the connection's `RefCell`:
//! `rx` (staging reads, framing through [`crate::tcp::framer`], payload sinks), `tx` (the PDU
//! queue and vectored writes), `connect` (ICReq, Fabrics Connect and queue set-up), `admin`
//! (admin commands and held AERs) and `io` (NVMe I/O mapped onto bdev I/O).

use super::controller::{AdminOutcome, Controller, AER_LIMIT};
use super::subsystem::{ListenAddress, Subsystem, SubsystemKind};
use super::transport::SockGroup;
use super::Target;
use crate::spec::cmd::{direction, Direction, SGL_IN_CAPSULE, SGL_TRANSPORT};
use crate::spec::fabrics::{self, ConnectCmd, ConnectData, PropertyCmd};
use crate::spec::status::{self, Status};
use crate::spec::{get_cstr, Cqe, Sqe};
use crate::tcp::pdu::{
    self, fes, pdu_type, CapsuleCmdHdr, DataHdr, IcReq, PduError, PduLayout, Receiver,
};
use crate::tls::TlsStream;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use strata_bdev::{BdevIo, IoChannel, IoSink, IoStatus, IoType};
use strata_reactor::dma::{self, DmaBuf, RegionView};
use zerocopy::FromBytes;

mod admin;
mod connect;
mod io;
mod rx;
mod tx;

use rx::Rx;
use tx::{TxData, TxPdu};

const STAGING: usize = 64 << 10;
/// Staging before Connect: ICReq and a Connect capsule's header.
const HANDSHAKE_STAGING: usize = 4096;
/// Payload bytes still missing above which we read straight into the data buffer.
const DIRECT_READ_MIN: usize = 4096;
/// In-capsule data the admin queue accepts (the transport spec's minimum).
const ADMIN_IN_CAPSULE: u32 = 8192;
/// iovecs per writev: a batch of 4 KiB read responses is 3 each (header, data, response),
/// so QD-sized batches go out in one call (Linux allows 1024).
const MAX_TX_IOV: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A secure-channel listener's connection: the TLS handshake comes first.
    TlsHandshake,
    AwaitIcReq,
    Ready,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqState {
    Free,
    /// Waiting for a DMA buffer.
    NeedBuffer,
    /// Waiting for H2CData after an R2T.
    AwaitH2c,
    /// Bdev I/O in flight.
    Executing,
    /// Response queued, slot freed once sent.
    Sending,
}

struct Req {
    state: ReqState,
    sqe: Sqe,
    buf: Option<DmaBuf>,
    /// A read's data lent by the bdev instead of `buf` (zero-copy).
    view: Option<RegionView>,
    /// Bytes the command transfers.
    len: u32,
    /// Current R2T window.
    r2t_off: u32,
    r2t_len: u32,
    h2c_got: u32,
    /// Outstanding bdev I/Os (DSM issues several).
    pending: u32,
    status: Status,
    /// When the request began waiting for H2CData (ticks).
    since: u64,
    /// Its buffer counts against the R2T buffer quotas (it waits for the host's data).
    r2t_charged: bool,
}

impl Req {
    fn new() -> Req {
        Req {
            state: ReqState::Free,
            sqe: Sqe::default(),
            buf: None,
            view: None,
            len: 0,
            r2t_off: 0,
            r2t_len: 0,
            h2c_got: 0,
            pending: 0,
            status: Status::SUCCESS,
            since: 0,
            r2t_charged: false,
        }
    }
}

/// Namespace channel cache entry.
struct NsChannel {
    nsid: u32,
    ch: IoChannel,
    block_size: u32,
    anagrpid: u32,
}

struct State {
    phase: Phase,
    digests: Option<(bool, bool)>,
    maxh2cdata: u32,
    qid: Option<u16>,
    ctrl: Option<Arc<Controller>>,
    subsys: Option<Arc<Subsystem>>,
    sq_head: u16,
    sq_size: u16,
    sqflow_disabled: bool,
    staging: Vec<u8>,
    sp: usize,
    se: usize,
    rx: Rx,
    reqs: Vec<Req>,
    free: Vec<u16>,
    /// One bit per CID with an I/O command in flight (a second command with the same CID
    /// is refused).
    cids_in_flight: Box<[u64]>,
    need_buffer: VecDeque<u16>,
    tx: VecDeque<TxPdu>,
    ns_cache: Vec<NsChannel>,
    ns_gen: u64,
    held_aers: Vec<u16>,
    in_capsule: u32,
    /// The socket returned less than asked on the last read.
    drained: bool,
    /// Receive paused: a payload waits for a DMA buffer, or the host is not reading its
    /// responses (retried by `tick`).
    stalled: bool,
    /// Bytes of admin response data (log pages, identify) queued and not yet sent.
    tx_owned: usize,
    /// Transport settings, copied at creation (the hot path takes no lock).
    max_io_size: u32,
    /// Reads end with SUCCESS in their C2HData instead of a CapsuleResp: settled at Connect
    /// from `c2h_success`, `c2h_success_always` and the host's SQ flow control choice.
    c2h_success: bool,
    /// Reads may borrow the bdev's memory (`zcopy`; never with TLS or data digests).
    zcopy: bool,
    /// When the connection was accepted, and the data-wait and handshake limits (ticks; 0:
    /// none).
    accepted: u64,
    data_wait_ticks: u64,
    connect_ticks: u64,
    /// R2T buffers this connection holds, and the quotas (0: none).
    r2t_held: usize,
    r2t_conn_limit: usize,
    r2t_host_limit: usize,
    /// A quota held a write back (logged once per connection).
    r2t_quota_logged: bool,
    /// DH-HMAC-CHAP of this queue, when the host has a key; until it succeeds only
    /// Fabrics commands run (`auth_pending`).
    auth: Option<Box<super::auth::QueueAuth>>,
    auth_pending: bool,
    /// When the queue was told to authenticate (ticks): it must have within the handshake
    /// limit.
    auth_since: u64,
}

impl State {
    /// Sizes the queue for what Connect settled: a request slot per command the host may
    /// have outstanding (SQSIZE + 1), full staging, the CID bitmap.
    fn size_for_queue(&mut self, sqsize: u16) {
        let depth = sqsize as usize + 1;
        self.reqs = (0..depth).map(|_| Req::new()).collect();
        self.free = (0..depth as u16).rev().collect();
        self.cids_in_flight = vec![0u64; 65536 / 64].into_boxed_slice();
        self.tx.reserve(depth * 2);
        if self.staging.len() < STAGING {
            self.staging.resize(STAGING, 0);
        }
    }

    /// Queues a PDU for sending, counting the response data it owns.
    fn push_tx(&mut self, p: TxPdu) {
        if let TxData::Owned(d) = &p.data {
            self.tx_owned += d.len();
        }
        self.tx.push_back(p);
    }

    /// Asks the host for the request's data from `off` (at most MAXH2CDATA bytes).
    fn push_r2t(&mut self, slot: u16, off: u32) {
        // The data-wait clock runs from each R2T.
        self.reqs[slot as usize].since = strata_reactor::clock::ticks();
        let maxh2c = self.maxh2cdata;
        let hd = self.digests.is_some_and(|d| d.0);
        let r = &mut self.reqs[slot as usize];
        r.r2t_off = off;
        r.r2t_len = (r.len - off).min(maxh2c);
        r.h2c_got = 0;
        let hdr = pdu::r2t(r.sqe.cid, slot, off, r.r2t_len, hd);
        self.push_tx(TxPdu {
            hdr,
            data: TxData::None,
            ddgst: None,
            sent: 0,
            free_slot: None,
            close_after: false,
        });
    }
}

/// A queue pair. Lives on one reactor; `!Send`.
pub struct Connection {
    pub(crate) stream: TcpStream,
    pub(crate) token: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    st: RefCell<State>,
    me: Weak<Connection>,
    group: Weak<SockGroup>,
    target: &'static Target,
    /// R2T buffers held by all connections of this host (shared across reactors).
    host_r2t: Arc<std::sync::atomic::AtomicUsize>,
    /// TLS of a secure-channel connection: every byte goes through it.
    tls: Option<RefCell<TlsStream>>,
}

enum Fatal {
    Pdu(PduError, Vec<u8>),
    Closed,
}

impl Connection {
    pub(crate) fn new(
        stream: TcpStream,
        token: u64,
        group: Weak<SockGroup>,
        target: &'static Target,
        host_r2t: Arc<std::sync::atomic::AtomicUsize>,
        secure: bool,
    ) -> std::io::Result<Rc<Self>> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        let opts = target.options();
        let tls = if secure {
            let t = TlsStream::server(stream.try_clone()?, target.psk_lookup(), opts.enable_ktls)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Some(RefCell::new(t))
        } else {
            None
        };
        Ok(Rc::new_cyclic(|me| Connection {
            stream,
            token,
            peer,
            local,
            st: RefCell::new(State {
                phase: if secure {
                    Phase::TlsHandshake
                } else {
                    Phase::AwaitIcReq
                },
                digests: None,
                maxh2cdata: 0,
                qid: None,
                ctrl: None,
                subsys: None,
                sq_head: 0,
                sq_size: 0,
                sqflow_disabled: false,
                // Small until the queue is connected: a connection that never completes
                // its handshake costs little (the request table comes with Connect too).
                staging: vec![0; HANDSHAKE_STAGING],
                sp: 0,
                se: 0,
                rx: Rx::Header,
                reqs: Vec::new(),
                free: Vec::new(),
                cids_in_flight: Box::default(),
                need_buffer: VecDeque::new(),
                tx: VecDeque::new(),
                ns_cache: Vec::new(),
                ns_gen: u64::MAX,
                held_aers: Vec::new(),
                in_capsule: 0,
                drained: false,
                stalled: false,
                tx_owned: 0,
                max_io_size: opts.max_io_size,
                // (Settled at Connect; nothing is read before it.)
                c2h_success: false,
                zcopy: opts.zcopy,
                accepted: strata_reactor::clock::ticks(),
                data_wait_ticks: ms_ticks(opts.data_wait_timeout_ms),
                connect_ticks: ms_ticks(opts.connect_timeout_ms),
                r2t_held: 0,
                r2t_conn_limit: opts.max_r2t_buffers_per_connection as usize,
                r2t_host_limit: opts.max_r2t_buffers_per_host as usize,
                r2t_quota_logged: false,
                auth: None,
                auth_pending: false,
                auth_since: 0,
            }),
            me: me.clone(),
            group,
            target,
            host_r2t,
            tls,
        }))
    }

    // ---- the byte stream: the socket, or TLS over it -----------------------------------

    fn sock_read(&self, b: &mut [u8]) -> std::io::Result<usize> {
        match &self.tls {
            None => (&self.stream).read(b),
            Some(t) => t.borrow_mut().read(b),
        }
    }

    fn sock_write(&self, iov: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match &self.tls {
            None => (&self.stream).write_vectored(iov),
            Some(t) => t.borrow_mut().write_vectored(iov),
        }
    }

    /// Sends TLS records already sealed. Ok(false): some still wait for the socket.
    fn sock_flush(&self) -> std::io::Result<bool> {
        match &self.tls {
            None => Ok(true),
            Some(t) => t.borrow_mut().flush_out(),
        }
    }

    /// The TLS identity the host connected with (None: a plain connection).
    fn tls_identity(&self) -> Option<crate::tls::PskIdentity> {
        self.tls.as_ref().and_then(|t| t.borrow().peer_identity())
    }

    /// Advances a secure channel's handshake. Ok(true): established, NVMe/TCP may begin.
    fn tls_handshake(&self) -> bool {
        let Some(t) = &self.tls else { return true };
        let r = t.borrow_mut().handshake();
        match r {
            Ok(true) => {
                let (id, cipher, ktls) = {
                    let t = t.borrow();
                    (t.peer_identity(), t.cipher(), t.is_kernel())
                };
                tracing::info!(peer = %self.peer, identity = %id.map(|i| i.to_string()).unwrap_or_default(), cipher, ktls, "TLS established");
                self.st.borrow_mut().phase = Phase::AwaitIcReq;
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "TLS handshake failed: connection refused");
                self.close("TLS handshake failed");
                false
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.st.borrow().phase == Phase::Closed
    }

    pub fn controller(&self) -> Option<Arc<Controller>> {
        self.st.borrow().ctrl.clone()
    }

    pub fn qid(&self) -> Option<u16> {
        self.st.borrow().qid
    }

    pub fn has_pending_tx(&self) -> bool {
        !self.st.borrow().tx.is_empty()
    }

    /// Readiness from the socket group.
    pub(crate) fn on_event(&self, readable: bool, writable: bool) {
        if self.is_closed() {
            return;
        }
        // (A plain connection never looks at the phase here.)
        if self.tls.is_some()
            && self.st.borrow().phase == Phase::TlsHandshake
            && !self.tls_handshake()
        {
            return;
        }
        if readable {
            self.st.borrow_mut().drained = false;
            match self.receive() {
                Ok(()) => {}
                Err(Fatal::Closed) => {
                    self.close("peer closed the connection");
                    return;
                }
                Err(Fatal::Pdu(e, offending)) => {
                    tracing::warn!(peer = %self.peer, fes = e.fes, fei = e.fei, "fatal NVMe/TCP error, sending C2HTermReq");
                    let term = Self::framer(&self.st.borrow()).term_req(e, &offending);
                    self.queue_raw(term, true);
                    self.flush();
                    self.close("fatal protocol error");
                    return;
                }
            }
        }
        // Writes a quota held back go as soon as data this connection was waiting for is in.
        let retry = {
            let s = self.st.borrow();
            !s.need_buffer.is_empty() && s.phase != Phase::Closed
        };
        if retry {
            self.retry_need_buffer();
        }
        if readable || writable {
            self.flush();
        }
    }

    /// Periodic work: retry commands waiting for buffers, drop dead controllers' queues,
    /// keep-alive expiry.
    pub(crate) fn tick(&self) {
        if self.is_closed() {
            return;
        }
        let (ctrl, is_admin) = {
            let s = self.st.borrow();
            (s.ctrl.clone(), s.qid == Some(0))
        };
        if let Some(c) = ctrl {
            if c.dead.load(Ordering::Acquire) {
                self.close("controller is gone");
                return;
            }
            if is_admin && c.keepalive_expired() {
                tracing::warn!(cntlid = c.cntlid, nqn = %c.subsys.nqn, host = %c.hostnqn, "keep-alive timeout: controller failed");
                c.dead.store(true, Ordering::Release);
                self.close("keep-alive timeout");
                return;
            }
        }
        if self.timeouts() {
            return;
        }
        self.retry_need_buffer();
        let stalled = std::mem::take(&mut self.st.borrow_mut().stalled);
        if stalled {
            self.on_event(true, false);
        }
        self.flush();
    }

    /// Handshake and data-wait limits, so a host cannot hold a connection or buffers by
    /// going quiet. Returns whether the connection was closed.
    fn timeouts(&self) -> bool {
        let now = strata_reactor::clock::ticks();
        let late: smallvec::SmallVec<[u16; 4]> = {
            let s = self.st.borrow();
            if s.qid.is_none()
                && s.connect_ticks > 0
                && now.saturating_sub(s.accepted) > s.connect_ticks
            {
                drop(s);
                tracing::warn!(peer = %self.peer, "no ICReq and Connect in time: closing the connection");
                self.close("handshake timeout");
                return true;
            }
            if s.auth_pending
                && s.connect_ticks > 0
                && now.saturating_sub(s.auth_since) > s.connect_ticks
            {
                drop(s);
                tracing::warn!(peer = %self.peer, "queue did not authenticate in time: closing the connection");
                self.close("authentication timeout");
                return true;
            }
            if s.data_wait_ticks == 0 {
                return false;
            }
            let late: smallvec::SmallVec<[u16; 4]> = s
                .reqs
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    r.state == ReqState::AwaitH2c && now.saturating_sub(r.since) > s.data_wait_ticks
                })
                .map(|(i, _)| i as u16)
                .collect();
            // A host that stops in the middle of an H2CData payload: the request cannot be
            // ended under the receiver's feet, so the connection goes (freeing everything).
            if let Some(slot) = s.rx.h2c_slot().filter(|x| late.contains(x)) {
                let cid = s.reqs[slot as usize].sqe.cid;
                drop(s);
                tracing::warn!(peer = %self.peer, cid, "write data stalled in the middle of a PDU: closing the connection");
                self.close("H2CData stalled");
                return true;
            }
            late
        };
        for slot in late {
            let cid = self.st.borrow().reqs[slot as usize].sqe.cid;
            tracing::warn!(peer = %self.peer, cid, "write data did not arrive in time: command failed, buffer released");
            self.finish(slot, status::TRANSIENT_TRANSPORT_ERROR, 0);
        }
        false
    }

    pub fn close(&self, why: &str) {
        let ctrl = {
            let mut s = self.st.borrow_mut();
            if s.phase == Phase::Closed {
                return;
            }
            s.phase = Phase::Closed;
            s.tx.clear();
            s.tx_owned = 0;
            s.held_aers.clear();
            s.need_buffer.clear();
            for slot in 0..s.reqs.len() as u16 {
                self.r2t_release(&mut s, slot);
            }
            let ctrl = s.ctrl.take();
            if let (Some(c), Some(q)) = (&ctrl, s.qid) {
                if q == 0 {
                    c.dead.store(true, Ordering::Release);
                } else {
                    c.io_qpairs.fetch_sub(1, Ordering::AcqRel);
                }
            }
            ctrl
        };
        // A last PDU (a Disconnect's answer, a C2HTermReq) may still be sealed in the TLS
        // output: one more try to send it before the close.
        let _ = self.sock_flush();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        tracing::info!(peer = %self.peer, why, cntlid = ctrl.as_ref().map(|c| c.cntlid), "NVMe/TCP connection closed");
        if let Some(c) = ctrl {
            if self.qid() == Some(0) || c.dead.load(Ordering::Acquire) {
                self.target.forget_controller(&c);
            }
        }
        if let Some(g) = self.group.upgrade() {
            g.remove(self.token);
        }
    }

    // ---- commands ----------------------------------------------------------------------

    fn cqe(&self, s: &mut State, cid: u16, st: Status, dw0: u32) -> Cqe {
        s.sq_head = if s.sq_size == 0 {
            0
        } else {
            (s.sq_head + 1) % (s.sq_size + 1)
        };
        Cqe {
            dw0,
            dw1: 0,
            sqhd: if s.sqflow_disabled { 0xffff } else { s.sq_head },
            sqid: s.qid.unwrap_or(0),
            cid,
            status: st.to_cqe_status(),
        }
    }

    /// Responds at once to a command that never took a slot.
    fn respond_now(&self, cid: u16, st: Status, dw0: u32) {
        let mut s = self.st.borrow_mut();
        let cqe = self.cqe(&mut s, cid, st, dw0);
        drop(s);
        self.queue_resp(cqe, None);
    }

    fn on_command(&self, sqe: Sqe, data: Option<DmaBuf>) {
        if sqe.opcode == crate::spec::cmd::admin::FABRICS {
            self.on_fabrics(sqe, data);
            return;
        }
        let (qid, connected, auth_pending) = {
            let s = self.st.borrow();
            (s.qid, s.ctrl.is_some(), s.auth_pending)
        };
        if auth_pending {
            tracing::warn!(peer = %self.peer, opcode = sqe.opcode, "command before the queue authenticated");
            self.respond_now(sqe.cid, status::AUTH_REQUIRED, 0);
            return;
        }
        if connected && qid != Some(0) {
            // Hot path: no reference counting, no lock.
            self.on_io(sqe, data);
            return;
        }
        let ctrl = self.st.borrow().ctrl.clone();
        let Some(ctrl) = ctrl else {
            tracing::warn!(peer = %self.peer, opcode = sqe.opcode, "command before Connect");
            self.respond_now(sqe.cid, status::COMMAND_SEQUENCE_ERROR, 0);
            return;
        };
        if qid == Some(0) {
            self.on_admin(&ctrl, sqe, data);
        } else {
            self.on_io(sqe, data);
        }
    }
}

fn ms_ticks(ms: u32) -> u64 {
    strata_reactor::clock::duration_to_ticks(std::time::Duration::from_millis(ms as u64))
}
