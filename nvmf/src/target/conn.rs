//! One NVMe/TCP queue pair: a TCP connection, owned by one reactor.
//!
//! Receive: bytes are read into a 64 KiB staging buffer and parsed PDU by PDU; a payload
//! that has not arrived yet is read straight into the command's DMA buffer. Send: PDUs
//! queue as header bytes plus a range of a DMA buffer and go out with vectored writes.
//! Admin commands are answered by the [`Controller`]; I/O commands become bdev I/O on the
//! reactor's channel to the namespace's bdev. A fatal protocol error sends a C2HTermReq and
//! closes the connection; nothing another connection owns is touched.

use super::controller::{AdminOutcome, Controller, AER_LIMIT};
use super::subsystem::{Subsystem, SubsystemKind};
use super::transport::SockGroup;
use super::Target;
use crate::spec::cmd::{admin, direction, io, Direction, SGL_IN_CAPSULE, SGL_TRANSPORT};
use crate::spec::fabrics::{self, ConnectCmd, ConnectData, PropertyCmd};
use crate::spec::status::{self, Status};
use crate::spec::{get_cstr, Cqe, Sqe};
use crate::tcp::pdu::{
    self, fes, pdu_type, CapsuleCmdHdr, CommonHeader, DataHdr, IcReq, PduError, PduLayout, Receiver,
};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use strata_bdev::{BdevIo, IoChannel, IoSink, IoStatus, IoType};
use strata_reactor::dma::{self, DmaBuf};
use zerocopy::FromBytes;

const STAGING: usize = 64 << 10;
/// Payload bytes still missing above which we read straight into the data buffer.
const DIRECT_READ_MIN: usize = 4096;
/// In-capsule data the admin queue accepts (the transport spec's minimum).
const ADMIN_IN_CAPSULE: u32 = 8192;
/// iovecs per writev: a batch of 4 KiB read responses is 3 each (header, data, response),
/// so QD-sized batches go out in one call (Linux allows 1024).
const MAX_TX_IOV: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitIcReq,
    Ready,
    Closed,
}

/// Where the payload of the PDU being received goes.
enum Sink {
    Capsule(DmaBuf),
    /// H2CData into request `slot`'s buffer at byte `off`.
    H2c {
        slot: u16,
        off: usize,
    },
    Term(Vec<u8>),
}

/// A PDU whose header is in and whose payload is still arriving.
struct DataRx {
    hdr: [u8; 132],
    layout: PduLayout,
    /// Padding bytes between header and data still to skip.
    pad: usize,
    sink: Sink,
    /// Payload bytes received so far.
    got: usize,
}

// Stored in place in the connection state (no allocation per PDU), so the size gap between
// the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Rx {
    Header,
    Data(DataRx),
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
    /// Bytes the command transfers.
    len: u32,
    /// Current R2T window.
    r2t_off: u32,
    r2t_len: u32,
    h2c_got: u32,
    /// Outstanding bdev I/Os (DSM issues several).
    pending: u32,
    status: Status,
}

impl Req {
    fn new() -> Req {
        Req {
            state: ReqState::Free,
            sqe: Sqe::default(),
            buf: None,
            len: 0,
            r2t_off: 0,
            r2t_len: 0,
            h2c_got: 0,
            pending: 0,
            status: Status::SUCCESS,
        }
    }
}

enum TxData {
    None,
    /// Bytes of request `slot`'s buffer.
    Slot {
        slot: u16,
        off: usize,
        len: usize,
    },
    Owned(Vec<u8>),
}

/// Responses queued for a host before its connection stops taking new commands.
const TX_BACKLOG_PDUS: usize = 8192;
const TX_BACKLOG_BYTES: usize = 8 << 20;

struct TxPdu {
    hdr: pdu::HeaderBuf,
    data: TxData,
    ddgst: Option<[u8; 4]>,
    /// Bytes of this PDU already written.
    sent: usize,
    /// Free this request slot once the PDU is out.
    free_slot: Option<u16>,
    close_after: bool,
}

impl TxPdu {
    fn total(&self) -> usize {
        let d = match &self.data {
            TxData::None => 0,
            TxData::Slot { len, .. } => *len,
            TxData::Owned(v) => v.len(),
        };
        self.hdr.len + d + if self.ddgst.is_some() { 4 } else { 0 }
    }
}

/// Namespace channel cache entry.
struct NsChannel {
    nsid: u32,
    ch: IoChannel,
    block_size: u32,
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
    c2h_success: bool,
}

impl State {
    /// Queues a PDU for sending, counting the response data it owns.
    fn push_tx(&mut self, p: TxPdu) {
        if let TxData::Owned(d) = &p.data {
            self.tx_owned += d.len();
        }
        self.tx.push_back(p);
    }

    /// Asks the host for the request's data from `off` (at most MAXH2CDATA bytes).
    fn push_r2t(&mut self, slot: u16, off: u32) {
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
    ) -> std::io::Result<Rc<Self>> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        let opts = target.options();
        let depth = opts.max_queue_depth.max(ADMIN_DEPTH) as usize;
        Ok(Rc::new_cyclic(|me| Connection {
            stream,
            token,
            peer,
            local,
            st: RefCell::new(State {
                phase: Phase::AwaitIcReq,
                digests: None,
                maxh2cdata: 0,
                qid: None,
                ctrl: None,
                subsys: None,
                sq_head: 0,
                sq_size: 0,
                sqflow_disabled: false,
                staging: vec![0; STAGING],
                sp: 0,
                se: 0,
                rx: Rx::Header,
                reqs: (0..depth).map(|_| Req::new()).collect(),
                free: (0..depth as u16).rev().collect(),
                need_buffer: VecDeque::new(),
                tx: VecDeque::with_capacity(depth * 2),
                ns_cache: Vec::new(),
                ns_gen: u64::MAX,
                held_aers: Vec::new(),
                in_capsule: 0,
                drained: false,
                stalled: false,
                tx_owned: 0,
                max_io_size: opts.max_io_size,
                c2h_success: opts.c2h_success,
            }),
            me: me.clone(),
            group,
            target,
        }))
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
                    let term = pdu::term_req(pdu_type::C2H_TERM_REQ, e, &offending);
                    self.queue_raw(term, true);
                    self.flush();
                    self.close("fatal protocol error");
                    return;
                }
            }
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
        self.retry_need_buffer();
        let stalled = std::mem::take(&mut self.st.borrow_mut().stalled);
        if stalled {
            self.on_event(true, false);
        }
        self.flush();
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

    // ---- receive -----------------------------------------------------------------------

    /// Reads what the socket has into staging. Ok(false): nothing (would block).
    fn fill(&self, s: &mut State) -> Result<bool, Fatal> {
        if s.sp > 0 && s.sp == s.se {
            s.sp = 0;
            s.se = 0;
        }
        if s.se == s.staging.len() {
            // Compact: the unparsed tail moves to the front.
            s.staging.copy_within(s.sp..s.se, 0);
            s.se -= s.sp;
            s.sp = 0;
        }
        if s.drained {
            // The last read came back short: the socket is empty until epoll says otherwise.
            return Ok(false);
        }
        let se = s.se;
        let space = s.staging.len() - se;
        match (&self.stream).read(&mut s.staging[se..]) {
            Ok(0) => Err(Fatal::Closed),
            Ok(n) => {
                s.se += n;
                s.drained = n < space;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(true),
            Err(_) => Err(Fatal::Closed),
        }
    }

    fn receive(&self) -> Result<(), Fatal> {
        loop {
            let mut s = self.st.borrow_mut();
            if s.phase == Phase::Closed {
                return Ok(());
            }
            let avail = s.se - s.sp;
            let rx = std::mem::replace(&mut s.rx, Rx::Header);
            match rx {
                Rx::Header => {
                    // A host that sends commands but does not read the answers must not
                    // make us queue without bound: take no new command until it reads.
                    if s.tx.len() > TX_BACKLOG_PDUS || s.tx_owned > TX_BACKLOG_BYTES {
                        if !s.stalled {
                            tracing::warn!(
                                pdus = s.tx.len(),
                                bytes = s.tx_owned,
                                "host is not reading its responses: receive paused"
                            );
                        }
                        s.stalled = true;
                        return Ok(());
                    }
                    if avail < pdu::COMMON_HEADER_LEN {
                        if !self.fill(&mut s)? {
                            return Ok(());
                        }
                        continue;
                    }
                    let sp = s.sp;
                    let ch = CommonHeader::read_from_bytes(&s.staging[sp..sp + 8])
                        .map_err(|_| Fatal::Closed)?;
                    let max_data = self.max_data_for(&s, ch.pdu_type);
                    let layout = PduLayout::of(&ch, Receiver::Controller, s.digests, max_data)
                        .map_err(|e| Fatal::Pdu(e, s.staging[sp..sp + 8].to_vec()))?;
                    let hb = layout.header_bytes();
                    if avail < hb {
                        if !self.fill(&mut s)? {
                            return Ok(());
                        }
                        continue;
                    }
                    let mut hdr = [0u8; 132];
                    hdr[..hb].copy_from_slice(&s.staging[sp..sp + hb]);
                    if layout.hdgst {
                        let want = u32::from_le_bytes([
                            hdr[layout.hlen],
                            hdr[layout.hlen + 1],
                            hdr[layout.hlen + 2],
                            hdr[layout.hlen + 3],
                        ]);
                        if pdu::digest(&[&hdr[..layout.hlen]]) != want {
                            return Err(Fatal::Pdu(
                                PduError {
                                    fes: fes::HEADER_DIGEST_ERROR,
                                    fei: 0,
                                },
                                hdr[..hb].to_vec(),
                            ));
                        }
                    }
                    s.sp += hb;
                    if layout.data_len == 0 {
                        drop(s);
                        self.dispatch(&hdr, layout, None)?;
                        continue;
                    }
                    let Some(sink) = self.data_sink(&mut s, &hdr, &layout)? else {
                        // No DMA buffer for the payload right now: leave the PDU unparsed
                        // (backpressure) and retry from the periodic tick.
                        s.sp -= hb;
                        s.stalled = true;
                        return Ok(());
                    };
                    let pad = layout.data_off - hb;
                    s.rx = Rx::Data(DataRx {
                        hdr,
                        layout,
                        pad,
                        sink,
                        got: 0,
                    });
                }
                Rx::Data(mut d) => {
                    // Skip padding between header and data.
                    let skip = d.pad.min(avail);
                    s.sp += skip;
                    d.pad -= skip;
                    let want = d.layout.data_len - d.got;
                    let avail = s.se - s.sp;
                    if d.pad == 0 && want > 0 && avail > 0 {
                        let n = want.min(avail);
                        let sp = s.sp;
                        let state: &mut State = &mut s;
                        sink_write(
                            &mut d.sink,
                            &mut state.reqs,
                            d.got,
                            &state.staging[sp..sp + n],
                        );
                        s.sp += n;
                        d.got += n;
                    }
                    let want = d.layout.data_len - d.got;
                    if d.pad > 0 || want > 0 {
                        if d.pad == 0 && want >= DIRECT_READ_MIN && s.se == s.sp && !s.drained {
                            // Straight into the data buffer.
                            let r = {
                                let state: &mut State = &mut s;
                                match sink_slice(&mut d.sink, &mut state.reqs, d.got, want) {
                                    Some(dst) => (&self.stream).read(dst),
                                    None => Ok(0),
                                }
                            };
                            match r {
                                Ok(0) => return Err(Fatal::Closed),
                                Ok(n) => {
                                    d.got += n;
                                    s.drained = n < want;
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                    s.rx = Rx::Data(d);
                                    return Ok(());
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                                Err(_) => return Err(Fatal::Closed),
                            }
                            s.rx = Rx::Data(d);
                            continue;
                        }
                        s.rx = Rx::Data(d);
                        if !self.fill(&mut s)? {
                            return Ok(());
                        }
                        continue;
                    }
                    if d.layout.ddgst {
                        if s.se - s.sp < 4 {
                            s.rx = Rx::Data(d);
                            if !self.fill(&mut s)? {
                                return Ok(());
                            }
                            continue;
                        }
                        let sp = s.sp;
                        let want = u32::from_le_bytes([
                            s.staging[sp],
                            s.staging[sp + 1],
                            s.staging[sp + 2],
                            s.staging[sp + 3],
                        ]);
                        s.sp += 4;
                        let have = sink_digest(&d.sink, &s.reqs, d.layout.data_len);
                        if have != want {
                            // A data digest error fails the command, not the connection.
                            drop(s);
                            let DataRx {
                                hdr, layout, sink, ..
                            } = d;
                            self.data_digest_error(&hdr, layout, sink);
                            continue;
                        }
                    }
                    drop(s);
                    let DataRx {
                        hdr, layout, sink, ..
                    } = d;
                    self.dispatch(&hdr, layout, Some(sink))?;
                }
            }
        }
    }

    fn max_data_for(&self, s: &State, t: u8) -> usize {
        match t {
            pdu_type::CAPSULE_CMD => {
                if s.qid == Some(0) || s.qid.is_none() {
                    ADMIN_IN_CAPSULE as usize
                } else {
                    s.in_capsule as usize
                }
            }
            pdu_type::H2C_DATA => s.maxh2cdata as usize,
            _ => pdu::TERM_REQ_MAX_DATA,
        }
    }

    /// Decides where a PDU's payload goes (before it arrives).
    /// Decided before the payload arrives; `None`: no DMA buffer free right now.
    fn data_sink(
        &self,
        s: &mut State,
        hdr: &[u8; 132],
        layout: &PduLayout,
    ) -> Result<Option<Sink>, Fatal> {
        match layout.pdu_type {
            pdu_type::CAPSULE_CMD => Ok(dma::alloc(layout.data_len).map(Sink::Capsule)),
            pdu_type::H2C_DATA => {
                let d = DataHdr::read_from_bytes(&hdr[..24]).map_err(|_| Fatal::Closed)?;
                let bad = |fei: u32| {
                    Fatal::Pdu(
                        PduError {
                            fes: fes::DATA_OUT_OF_RANGE,
                            fei,
                        },
                        hdr[..24].to_vec(),
                    )
                };
                let slot = d.ttag as usize;
                let r = s
                    .reqs
                    .get(slot)
                    .ok_or_else(|| Fatal::Pdu(PduError::field(10), hdr[..24].to_vec()))?;
                if r.state != ReqState::AwaitH2c || r.sqe.cid != d.cccid {
                    return Err(Fatal::Pdu(
                        PduError {
                            fes: fes::PDU_SEQUENCE_ERROR,
                            fei: 8,
                        },
                        hdr[..24].to_vec(),
                    ));
                }
                if d.datal as usize != layout.data_len {
                    return Err(Fatal::Pdu(PduError::field(16), hdr[..24].to_vec()));
                }
                if d.datao != r.r2t_off + r.h2c_got {
                    return Err(bad(12));
                }
                if r.h2c_got + d.datal > r.r2t_len {
                    return Err(bad(16));
                }
                Ok(Some(Sink::H2c {
                    slot: slot as u16,
                    off: d.datao as usize,
                }))
            }
            _ => Ok(Some(Sink::Term(vec![0; layout.data_len]))),
        }
    }

    fn data_digest_error(&self, hdr: &[u8; 132], layout: PduLayout, sink: Sink) {
        tracing::warn!(peer = %self.peer, "data digest error");
        match (layout.pdu_type, sink) {
            (pdu_type::CAPSULE_CMD, _) => {
                if let Ok(c) = CapsuleCmdHdr::read_from_bytes(&hdr[..72]) {
                    let mut s = self.st.borrow_mut();
                    let cqe = self.cqe(
                        &mut s,
                        c.sqe.cid,
                        status::DATA_TRANSFER_ERROR.retryable(),
                        0,
                    );
                    drop(s);
                    self.queue_resp(cqe, None);
                }
            }
            (_, Sink::H2c { slot, .. }) => {
                self.finish(slot, status::DATA_TRANSFER_ERROR.retryable(), 0);
            }
            _ => {}
        }
    }

    fn dispatch(
        &self,
        hdr: &[u8; 132],
        layout: PduLayout,
        sink: Option<Sink>,
    ) -> Result<(), Fatal> {
        match layout.pdu_type {
            pdu_type::IC_REQ => self.on_icreq(hdr),
            pdu_type::CAPSULE_CMD => {
                let c = CapsuleCmdHdr::read_from_bytes(&hdr[..72]).map_err(|_| Fatal::Closed)?;
                let data = match sink {
                    Some(Sink::Capsule(b)) => Some(b),
                    _ => None,
                };
                self.on_command(c.sqe, data);
                Ok(())
            }
            pdu_type::H2C_DATA => {
                if let Some(Sink::H2c { slot, .. }) = sink {
                    self.on_h2c_data(slot, layout.data_len as u32);
                }
                Ok(())
            }
            _ => {
                tracing::warn!(peer = %self.peer, "host sent H2CTermReq; closing");
                Err(Fatal::Closed)
            }
        }
    }

    fn on_icreq(&self, hdr: &[u8; 132]) -> Result<(), Fatal> {
        let req = IcReq::read_from_bytes(&hdr[..128]).map_err(|_| Fatal::Closed)?;
        if req.pfv != 0 {
            return Err(Fatal::Pdu(
                PduError {
                    fes: fes::UNSUPPORTED_PARAMETER,
                    fei: 8,
                },
                hdr[..128].to_vec(),
            ));
        }
        if req.hpda > 31 {
            return Err(Fatal::Pdu(PduError::field(10), hdr[..128].to_vec()));
        }
        let hd = req.dgst & 1 != 0;
        let dd = req.dgst & 2 != 0;
        let maxh2c = self.target.options().max_io_size.max(4096);
        {
            let mut s = self.st.borrow_mut();
            if s.phase != Phase::AwaitIcReq {
                return Err(Fatal::Pdu(
                    PduError {
                        fes: fes::PDU_SEQUENCE_ERROR,
                        fei: 0,
                    },
                    hdr[..128].to_vec(),
                ));
            }
            s.digests = Some((hd, dd));
            s.maxh2cdata = maxh2c;
            s.phase = Phase::Ready;
        }
        let resp = pdu::ic_resp(0, hd, dd, maxh2c);
        self.queue_raw(zerocopy::IntoBytes::as_bytes(&resp).to_vec(), false);
        Ok(())
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
        if sqe.opcode == admin::FABRICS {
            self.on_fabrics(sqe, data);
            return;
        }
        let (qid, connected) = {
            let s = self.st.borrow();
            (s.qid, s.ctrl.is_some())
        };
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

    fn on_fabrics(&self, sqe: Sqe, data: Option<DmaBuf>) {
        match sqe.fctype() {
            fabrics::FCTYPE_CONNECT => self.on_connect(sqe, data),
            fabrics::FCTYPE_PROPERTY_GET | fabrics::FCTYPE_PROPERTY_SET => {
                let (qid, ctrl) = {
                    let s = self.st.borrow();
                    (s.qid, s.ctrl.clone())
                };
                let (Some(ctrl), Some(0)) = (ctrl, qid) else {
                    self.respond_now(sqe.cid, status::COMMAND_SEQUENCE_ERROR, 0);
                    return;
                };
                let p = PropertyCmd::from_sqe(&sqe);
                let (st, v) = if sqe.fctype() == fabrics::FCTYPE_PROPERTY_GET {
                    match ctrl.property_get(p.offset, p.eight_bytes) {
                        Ok(v) => (Status::SUCCESS, v),
                        Err(e) => (e, 0),
                    }
                } else {
                    match ctrl.property_set(p.offset, p.eight_bytes, p.value) {
                        Ok(()) => (Status::SUCCESS, 0),
                        Err(e) => (e, 0),
                    }
                };
                let mut s = self.st.borrow_mut();
                let mut cqe = self.cqe(&mut s, sqe.cid, st, v as u32);
                cqe.dw1 = (v >> 32) as u32;
                drop(s);
                self.queue_resp(cqe, None);
            }
            fabrics::FCTYPE_DISCONNECT => {
                self.respond_now(sqe.cid, Status::SUCCESS, 0);
                let mut s = self.st.borrow_mut();
                if let Some(last) = s.tx.back_mut() {
                    last.close_after = true;
                }
            }
            _ => self.respond_now(sqe.cid, status::INVALID_OPCODE, 0),
        }
    }

    fn on_connect(&self, sqe: Sqe, data: Option<DmaBuf>) {
        let invalid = |ipo: u32, iattr: u32, why: &str| {
            tracing::warn!(peer = %self.peer, why, "Connect refused");
            // Result: IPO (offset of the bad field) in bits 15:0, IATTR (1: in the data) in 23:16.
            self.respond_now(
                sqe.cid,
                status::CONNECT_INVALID_PARAMETERS,
                ipo | (iattr << 16),
            );
        };
        if self.st.borrow().ctrl.is_some() {
            tracing::warn!(peer = %self.peer, "second Connect on a queue");
            self.respond_now(sqe.cid, status::COMMAND_SEQUENCE_ERROR, 0);
            return;
        }
        let cmd = ConnectCmd::from_sqe(&sqe);
        if cmd.recfmt != 0 {
            self.respond_now(sqe.cid, status::CONNECT_INCOMPATIBLE_FORMAT, 0);
            return;
        }
        let Some(buf) = data.filter(|b| b.len() >= 1024) else {
            invalid(0, 1, "no Connect data in the capsule");
            return;
        };
        let Ok(cd) = ConnectData::read_from_bytes(&buf.as_slice()[..1024]) else {
            invalid(0, 1, "bad Connect data");
            return;
        };
        let (Some(subnqn), Some(hostnqn)) = (get_cstr(&cd.subnqn), get_cstr(&cd.hostnqn)) else {
            invalid(256, 1, "NQN is not a string");
            return;
        };
        let Some(subsys) = self.target.find_subsystem(&subnqn) else {
            invalid(256, 1, &format!("unknown subsystem {subnqn}"));
            return;
        };
        if subsys.kind == SubsystemKind::Nvme && !self.target.listener_allowed(&subsys, &self.local)
        {
            invalid(
                256,
                1,
                &format!("subsystem {subnqn} does not listen on {}", self.local),
            );
            return;
        }
        if !subsys.host_allowed(&hostnqn) {
            tracing::warn!(peer = %self.peer, host = %hostnqn, nqn = %subnqn, "Connect refused: host not allowed");
            self.respond_now(sqe.cid, status::CONNECT_INVALID_HOST, 512 | (1 << 16));
            return;
        }
        let opts = self.target.options();
        let limits = self.target.limits();
        if cmd.qid == 0 {
            if cmd.sqsize as u32 + 1 > opts.max_aq_depth as u32 || cmd.sqsize < 1 {
                invalid(44, 0, "admin queue size out of range");
                return;
            }
            if cd.cntlid != 0xffff && cd.cntlid != 0xfffe {
                invalid(16, 1, "static controller id requested");
                return;
            }
            let Some(cntlid) = self.target.alloc_cntlid() else {
                self.respond_now(sqe.cid, status::CONNECT_CONTROLLER_BUSY, 0);
                return;
            };
            let ctrl = Controller::new(
                cntlid,
                subsys.clone(),
                &hostnqn,
                cd.hostid,
                cmd.kato,
                limits,
            );
            ctrl.touch_keepalive();
            // The admin queue lives on this reactor: events are delivered there, looked up by
            // token (nothing reactor-local crosses threads).
            let reactor = strata_reactor::current_index().unwrap_or(0);
            let token = self.token;
            *ctrl.aer_notify.lock() = Some(Box::new(move || {
                if let Some(f) = strata_reactor::framework() {
                    let _ = f.send(reactor, move || {
                        if let Some(c) = SockGroup::connection(token) {
                            c.deliver_events();
                        }
                    });
                }
            }));
            subsys.state.lock().controllers.push(Arc::downgrade(&ctrl));
            self.target.remember_controller(&ctrl);
            {
                let mut s = self.st.borrow_mut();
                s.qid = Some(0);
                s.sq_size = cmd.sqsize;
                s.sqflow_disabled = cmd.cattr & 0x04 != 0;
                s.ctrl = Some(ctrl.clone());
                s.subsys = Some(subsys.clone());
                s.in_capsule = ADMIN_IN_CAPSULE;
            }
            tracing::info!(peer = %self.peer, cntlid, nqn = %subnqn, host = %hostnqn, kato_ms = cmd.kato, "admin queue connected");
            self.respond_now(sqe.cid, Status::SUCCESS, cntlid as u32);
        } else {
            let Some(ctrl) = subsys
                .controllers()
                .into_iter()
                .find(|c| c.cntlid == cd.cntlid)
            else {
                invalid(16, 1, &format!("unknown controller id {}", cd.cntlid));
                return;
            };
            if ctrl.hostnqn != hostnqn || ctrl.dead.load(Ordering::Acquire) {
                invalid(512, 1, "host does not own that controller");
                return;
            }
            if !ctrl.is_enabled() {
                self.respond_now(sqe.cid, status::COMMAND_SEQUENCE_ERROR, 0);
                return;
            }
            // I/O queue ids run 1..=max_io_qpairs_per_ctrlr.
            if cmd.qid > limits.max_io_qpairs {
                invalid(42, 0, "queue id out of range");
                return;
            }
            if cmd.sqsize < 1 || cmd.sqsize as u32 + 1 > opts.max_queue_depth as u32 {
                invalid(44, 0, "queue size out of range");
                return;
            }
            ctrl.io_qpairs.fetch_add(1, Ordering::AcqRel);
            {
                let mut s = self.st.borrow_mut();
                s.qid = Some(cmd.qid);
                s.sq_size = cmd.sqsize;
                s.sqflow_disabled = cmd.cattr & 0x04 != 0;
                s.ctrl = Some(ctrl.clone());
                s.subsys = Some(subsys.clone());
                s.in_capsule = opts.in_capsule_data_size;
            }
            tracing::debug!(peer = %self.peer, cntlid = ctrl.cntlid, qid = cmd.qid, "I/O queue connected");
            self.respond_now(sqe.cid, Status::SUCCESS, ctrl.cntlid as u32);
        }
    }

    fn on_admin(&self, ctrl: &Arc<Controller>, sqe: Sqe, data: Option<DmaBuf>) {
        ctrl.touch_keepalive();
        // Host-to-controller admin data must be in the capsule (it is at most 4 KiB here).
        if direction(sqe.opcode) == Direction::HostToController
            && data.is_none()
            && sqe.sgl.length > 0
        {
            self.respond_now(sqe.cid, status::INVALID_FIELD, 0);
            return;
        }
        let data_in: &[u8] = data.as_ref().map(|b| b.as_slice()).unwrap_or(&[]);
        let target = self.target;
        let out: AdminOutcome = ctrl.admin(&sqe, data_in, &|host| target.discovery_log(host));
        if out.hold_aer {
            let mut s = self.st.borrow_mut();
            if s.held_aers.len() >= AER_LIMIT {
                drop(s);
                self.respond_now(sqe.cid, status::ASYNC_EVENT_LIMIT_EXCEEDED, 0);
                return;
            }
            s.held_aers.push(sqe.cid);
            drop(s);
            self.deliver_events();
            return;
        }
        let st = out.status.unwrap_or(status::INTERNAL_ERROR);
        if let (true, Some(d)) = (st.is_success(), out.data) {
            let n = d.len().min(sqe.sgl.length as usize);
            if sqe.sgl.sgl_id != SGL_TRANSPORT && n > 0 {
                self.respond_now(sqe.cid, status::SGL_DESCRIPTOR_TYPE_INVALID, 0);
                return;
            }
            let mut d = d;
            d.truncate(n);
            let mut s = self.st.borrow_mut();
            let mut cqe = self.cqe(&mut s, sqe.cid, st, out.dw0);
            cqe.dw1 = out.dw1;
            let success_flag = false;
            drop(s);
            self.queue_c2h_owned(sqe.cid, d, success_flag);
            self.queue_resp(cqe, None);
            return;
        }
        let mut s = self.st.borrow_mut();
        let mut cqe = self.cqe(&mut s, sqe.cid, st, out.dw0);
        cqe.dw1 = out.dw1;
        drop(s);
        self.queue_resp(cqe, None);
    }

    /// Completes held Asynchronous Event Requests with pending events.
    pub(crate) fn deliver_events(&self) {
        loop {
            let (cid, ev) = {
                let mut s = self.st.borrow_mut();
                let Some(ctrl) = s.ctrl.clone() else { return };
                if s.held_aers.is_empty() {
                    return;
                }
                let Some(ev) = ctrl.take_event() else { return };
                let cid = s.held_aers.remove(0);
                (cid, ev)
            };
            tracing::info!(peer = %self.peer, event = ev, "asynchronous event delivered");
            self.respond_now(cid, Status::SUCCESS, ev);
            self.flush();
        }
    }

    // ---- I/O commands ------------------------------------------------------------------

    fn channel(&self, s: &mut State, nsid: u32) -> Option<(IoChannel, u32)> {
        let gen = s.subsys.as_ref()?.ns_generation.load(Ordering::Acquire);
        if gen != s.ns_gen {
            s.ns_cache.clear();
            s.ns_gen = gen;
        }
        if let Some(c) = s.ns_cache.iter().find(|c| c.nsid == nsid) {
            return Some((c.ch.clone(), c.block_size));
        }
        let ns = s.subsys.as_ref()?.namespace(nsid)?;
        let ch = ns.desc.channel().ok()?;
        let bs = ch.block_size();
        s.ns_cache.push(NsChannel {
            nsid,
            ch: ch.clone(),
            block_size: bs,
        });
        Some((ch, bs))
    }

    fn take_slot(&self, s: &mut State, sqe: Sqe) -> Option<u16> {
        let slot = s.free.pop()?;
        let r = &mut s.reqs[slot as usize];
        r.state = ReqState::Executing;
        r.sqe = sqe;
        r.buf = None;
        r.len = 0;
        r.r2t_off = 0;
        r.r2t_len = 0;
        r.h2c_got = 0;
        r.pending = 0;
        r.status = Status::SUCCESS;
        Some(slot)
    }

    fn on_io(&self, sqe: Sqe, capsule: Option<DmaBuf>) {
        let mut s = self.st.borrow_mut();
        let Some((ch, bs)) = self.channel(&mut s, sqe.nsid) else {
            drop(s);
            self.respond_now(sqe.cid, status::INVALID_NAMESPACE, 0);
            return;
        };
        let Some(slot) = self.take_slot(&mut s, sqe) else {
            drop(s);
            tracing::warn!(peer = %self.peer, "more commands outstanding than the queue size");
            self.respond_now(sqe.cid, status::COMMAND_ID_CONFLICT, 0);
            return;
        };
        drop(s);
        let max_io = self.st.borrow().max_io_size as u64;
        let len = match sqe.opcode {
            io::READ | io::WRITE | io::VENDOR_XOR_WRITE | io::COMPARE => sqe.nlb() * bs as u64,
            io::VENDOR_CHECKSUM => 4 * sqe.nlb().div_ceil(sqe.cdw13.max(1) as u64),
            io::DATASET_MANAGEMENT => (((sqe.cdw10 & 0xff) + 1) * 16) as u64,
            io::FLUSH | io::WRITE_ZEROES => 0,
            _ => {
                self.finish(slot, status::INVALID_OPCODE, 0);
                return;
            }
        };
        if len > max_io {
            self.finish(slot, status::INVALID_FIELD, 0);
            return;
        }
        let dir = direction(sqe.opcode);
        if len > 0 && (sqe.sgl.length as u64) < len {
            self.finish(slot, status::DATA_SGL_LENGTH_INVALID, 0);
            return;
        }
        {
            let mut s = self.st.borrow_mut();
            s.reqs[slot as usize].len = len as u32;
        }
        match dir {
            Direction::HostToController if len > 0 => match (sqe.sgl.sgl_id, capsule) {
                (SGL_IN_CAPSULE, Some(mut b)) if b.len() as u64 >= len => {
                    b.set_len(len as usize);
                    self.st.borrow_mut().reqs[slot as usize].buf = Some(b);
                    self.execute(slot, &ch);
                }
                (SGL_TRANSPORT, None) => {
                    self.st.borrow_mut().reqs[slot as usize].state = ReqState::NeedBuffer;
                    self.start_h2c(slot);
                }
                _ => self.finish(slot, status::SGL_DESCRIPTOR_TYPE_INVALID, 0),
            },
            Direction::ControllerToHost if len > 0 => {
                if sqe.sgl.sgl_id != SGL_TRANSPORT {
                    self.finish(slot, status::SGL_DESCRIPTOR_TYPE_INVALID, 0);
                    return;
                }
                self.execute(slot, &ch);
            }
            _ => self.execute(slot, &ch),
        }
    }

    /// Allocates the buffer for a host-to-controller transfer and sends the first R2T.
    fn start_h2c(&self, slot: u16) {
        let mut s = self.st.borrow_mut();
        let len = s.reqs[slot as usize].len as usize;
        let Some(mut b) = dma::alloc(len) else {
            s.reqs[slot as usize].state = ReqState::NeedBuffer;
            s.need_buffer.push_back(slot);
            return;
        };
        b.set_len(len);
        let r = &mut s.reqs[slot as usize];
        r.buf = Some(b);
        r.state = ReqState::AwaitH2c;
        s.push_r2t(slot, 0);
    }

    fn on_h2c_data(&self, slot: u16, n: u32) {
        let ch = {
            let mut s = self.st.borrow_mut();
            let r = &mut s.reqs[slot as usize];
            r.h2c_got += n;
            if r.h2c_got < r.r2t_len {
                return;
            }
            let next = r.r2t_off + r.r2t_len;
            if next < r.len {
                s.push_r2t(slot, next);
                return;
            }
            let r = &mut s.reqs[slot as usize];
            r.state = ReqState::Executing;
            let nsid = r.sqe.nsid;
            self.channel(&mut s, nsid).map(|c| c.0)
        };
        match ch {
            Some(ch) => self.execute(slot, &ch),
            None => self.finish(slot, status::INVALID_NAMESPACE, 0),
        }
    }

    fn retry_need_buffer(&self) {
        loop {
            let slot = {
                let mut s = self.st.borrow_mut();
                match s.need_buffer.front() {
                    Some(&slot) => {
                        let len = s.reqs[slot as usize].len as usize;
                        if dma::pools().iter().all(|p| p.in_use() >= p.count()) && len > 0 {
                            return;
                        }
                        s.need_buffer.pop_front();
                        slot
                    }
                    None => return,
                }
            };
            let (opcode, has_data) = {
                let s = self.st.borrow();
                let r = &s.reqs[slot as usize];
                (r.sqe.opcode, r.buf.is_some())
            };
            // A write still waiting for its data buffer asks for the data; anything else
            // (reads, and a compare whose data arrived) waits for its execution buffer.
            if direction(opcode) == Direction::HostToController && !has_data {
                self.start_h2c(slot);
            } else {
                let nsid = self.st.borrow().reqs[slot as usize].sqe.nsid;
                let ch = self.channel(&mut self.st.borrow_mut(), nsid).map(|c| c.0);
                match ch {
                    Some(ch) => self.execute(slot, &ch),
                    None => self.finish(slot, status::INVALID_NAMESPACE, 0),
                }
            }
            // Still no buffer in the pool this request needs: wait for the next tick rather
            // than spin on it.
            if self.st.borrow().reqs[slot as usize].state == ReqState::NeedBuffer {
                return;
            }
        }
    }

    /// Turns a request whose data (if any) is in place into bdev I/O.
    fn execute(&self, slot: u16, ch: &IoChannel) {
        let Some(me) = self.me.upgrade() else { return };
        let mut s = self.st.borrow_mut();
        let r = &mut s.reqs[slot as usize];
        let sqe = r.sqe;
        let mut ios: smallvec::SmallVec<[BdevIo; 2]> = smallvec::SmallVec::new();
        match sqe.opcode {
            io::READ | io::VENDOR_CHECKSUM | io::COMPARE => {
                let len = if sqe.opcode == io::COMPARE {
                    (sqe.nlb() * ch.block_size() as u64) as usize
                } else {
                    r.len as usize
                };
                let Some(mut b) = dma::alloc(len) else {
                    r.state = ReqState::NeedBuffer;
                    s.need_buffer.push_back(slot);
                    return;
                };
                b.set_len(len);
                let t = if sqe.opcode == io::VENDOR_CHECKSUM {
                    IoType::Checksum
                } else {
                    IoType::Read
                };
                let mut bio = BdevIo::new(t, sqe.slba(), sqe.nlb());
                if t == IoType::Checksum {
                    bio.chunk_blocks = sqe.cdw13.max(1);
                }
                bio.bufs.push(b);
                ios.push(bio);
            }
            io::WRITE | io::VENDOR_XOR_WRITE => {
                let t = if sqe.opcode == io::WRITE {
                    IoType::Write
                } else {
                    IoType::XorWrite
                };
                let mut bio = BdevIo::new(t, sqe.slba(), sqe.nlb());
                if let Some(b) = r.buf.take() {
                    bio.bufs.push(b);
                }
                ios.push(bio);
            }
            io::FLUSH => ios.push(BdevIo::new(IoType::Flush, 0, 0)),
            io::WRITE_ZEROES => ios.push(BdevIo::new(IoType::WriteZeroes, sqe.slba(), sqe.nlb())),
            // Only deallocate (AD, CDW11 bit 2) does anything; other attributes are hints.
            io::DATASET_MANAGEMENT if sqe.cdw11 & 4 != 0 => {
                if let Some(b) = &r.buf {
                    for range in b.as_slice().chunks_exact(16) {
                        let nlb =
                            u32::from_le_bytes([range[4], range[5], range[6], range[7]]) as u64;
                        let slba = u64::from_le_bytes([
                            range[8], range[9], range[10], range[11], range[12], range[13],
                            range[14], range[15],
                        ]);
                        if nlb > 0 {
                            ios.push(BdevIo::new(IoType::Unmap, slba, nlb));
                        }
                    }
                }
            }
            _ => {}
        }
        if ios.is_empty() {
            drop(s);
            self.finish(slot, Status::SUCCESS, 0);
            return;
        }
        r.state = ReqState::Executing;
        r.pending = ios.len() as u32;
        drop(s);
        for mut bio in ios {
            bio.push_completion(me.clone(), slot as u64);
            ch.submit(bio);
        }
    }

    /// Completes request `slot` with a status (no data).
    fn finish(&self, slot: u16, st: Status, dw0: u32) {
        let mut s = self.st.borrow_mut();
        let cid = s.reqs[slot as usize].sqe.cid;
        s.reqs[slot as usize].buf = None;
        s.reqs[slot as usize].state = ReqState::Sending;
        let cqe = self.cqe(&mut s, cid, st, dw0);
        drop(s);
        self.queue_resp(cqe, Some(slot));
    }

    // ---- send --------------------------------------------------------------------------

    fn queue_raw(&self, bytes: Vec<u8>, close_after: bool) {
        let mut s = self.st.borrow_mut();
        let hdr = pdu::HeaderBuf {
            bytes: [0; 132],
            len: 0,
        };
        s.push_tx(TxPdu {
            hdr,
            data: TxData::Owned(bytes),
            ddgst: None,
            sent: 0,
            free_slot: None,
            close_after,
        });
    }

    fn queue_resp(&self, cqe: Cqe, free_slot: Option<u16>) {
        let mut s = self.st.borrow_mut();
        let hd = s.digests.is_some_and(|d| d.0);
        s.push_tx(TxPdu {
            hdr: pdu::capsule_resp(cqe, hd),
            data: TxData::None,
            ddgst: None,
            sent: 0,
            free_slot,
            close_after: false,
        });
    }

    fn queue_c2h_owned(&self, cid: u16, d: Vec<u8>, success: bool) {
        let mut s = self.st.borrow_mut();
        let (hd, dd) = s.digests.unwrap_or((false, false));
        let ddgst = dd.then(|| pdu::digest(&[&d]).to_le_bytes());
        let hdr = pdu::data(
            pdu_type::C2H_DATA,
            cid,
            0,
            0,
            d.len() as u32,
            true,
            success,
            hd,
            dd,
        );
        s.push_tx(TxPdu {
            hdr,
            data: TxData::Owned(d),
            ddgst,
            sent: 0,
            free_slot: None,
            close_after: false,
        });
    }

    /// Writes queued PDUs until the socket would block.
    pub(crate) fn flush(&self) {
        let mut close = false;
        {
            let mut s = self.st.borrow_mut();
            if s.phase == Phase::Closed {
                return;
            }
            while !s.tx.is_empty() {
                let written = {
                    let st = &*s;
                    let mut iov: smallvec::SmallVec<[IoSlice<'_>; MAX_TX_IOV]> =
                        smallvec::SmallVec::new();
                    for p in st.tx.iter() {
                        if iov.len() + 3 > MAX_TX_IOV {
                            break;
                        }
                        let mut skip = p.sent;
                        push_iov(&mut iov, &mut skip, p.hdr.as_slice());
                        match &p.data {
                            TxData::None => {}
                            TxData::Owned(v) => push_iov(&mut iov, &mut skip, v),
                            TxData::Slot { slot, off, len } => {
                                if let Some(b) = &st.reqs[*slot as usize].buf {
                                    push_iov(&mut iov, &mut skip, &b.as_slice()[*off..*off + *len]);
                                }
                            }
                        }
                        if let Some(d) = &p.ddgst {
                            push_iov(&mut iov, &mut skip, d);
                        }
                        if p.close_after {
                            break;
                        }
                    }
                    if iov.is_empty() {
                        break;
                    }
                    (&self.stream).write_vectored(&iov)
                };
                let mut n = match written {
                    Ok(0) => {
                        close = true;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        close = true;
                        break;
                    }
                };
                while n > 0 {
                    let Some(p) = s.tx.front_mut() else { break };
                    let left = p.total() - p.sent;
                    if n < left {
                        p.sent += n;
                        break;
                    }
                    n -= left;
                    if let Some(p) = s.tx.pop_front() {
                        if let TxData::Owned(d) = &p.data {
                            s.tx_owned -= d.len();
                        }
                        if let Some(slot) = p.free_slot {
                            let r = &mut s.reqs[slot as usize];
                            r.state = ReqState::Free;
                            r.buf = None;
                            s.free.push(slot);
                        }
                        if p.close_after {
                            close = true;
                        }
                    }
                }
                if close {
                    break;
                }
            }
            let pending = !s.tx.is_empty();
            if let Some(g) = self.group.upgrade() {
                g.want_write(self.token, &self.stream, pending);
            }
        }
        if close {
            self.close("connection finished");
        }
    }
}

const ADMIN_DEPTH: u16 = 128;

/// Adds the part of `b` not yet sent (`skip` counts bytes already written) to `iov`.
fn push_iov<'a>(
    iov: &mut smallvec::SmallVec<[IoSlice<'a>; MAX_TX_IOV]>,
    skip: &mut usize,
    b: &'a [u8],
) {
    if *skip >= b.len() {
        *skip -= b.len();
    } else {
        iov.push(IoSlice::new(&b[*skip..]));
        *skip = 0;
    }
}

fn sink_write(sink: &mut Sink, reqs: &mut [Req], at: usize, src: &[u8]) {
    match sink {
        Sink::Capsule(b) => b.as_mut_slice()[at..at + src.len()].copy_from_slice(src),
        Sink::Term(v) => v[at..at + src.len()].copy_from_slice(src),
        Sink::H2c { slot, off } => {
            if let Some(b) = reqs[*slot as usize].buf.as_mut() {
                b.as_mut_slice()[*off + at..*off + at + src.len()].copy_from_slice(src);
            }
        }
    }
}

fn sink_slice<'a>(
    sink: &'a mut Sink,
    reqs: &'a mut [Req],
    at: usize,
    n: usize,
) -> Option<&'a mut [u8]> {
    match sink {
        Sink::Capsule(b) => Some(&mut b.as_mut_slice()[at..at + n]),
        Sink::Term(v) => Some(&mut v[at..at + n]),
        Sink::H2c { slot, off } => reqs[*slot as usize]
            .buf
            .as_mut()
            .map(|b| &mut b.as_mut_slice()[*off + at..*off + at + n]),
    }
}

fn sink_digest(sink: &Sink, reqs: &[Req], len: usize) -> u32 {
    match sink {
        Sink::Capsule(b) => pdu::digest(&[&b.as_slice()[..len]]),
        Sink::Term(v) => pdu::digest(&[&v[..len]]),
        Sink::H2c { slot, off } => match &reqs[*slot as usize].buf {
            Some(b) => pdu::digest(&[&b.as_slice()[*off..*off + len]]),
            None => 0,
        },
    }
}

fn bdev_status(io: &BdevIo) -> Status {
    match io.status {
        IoStatus::Success => Status::SUCCESS,
        IoStatus::OutOfRange => status::LBA_OUT_OF_RANGE,
        IoStatus::InvalidArgument => status::INVALID_FIELD,
        IoStatus::Unsupported => status::INVALID_OPCODE,
        IoStatus::Removed => status::NAMESPACE_NOT_READY,
        IoStatus::Aborted => status::ABORT_REQUESTED,
        IoStatus::NoMemory | IoStatus::Pending => status::INTERNAL_ERROR.retryable(),
        IoStatus::Failed => match io.io_type {
            IoType::Read | IoType::Checksum => status::UNRECOVERED_READ_ERROR,
            _ => status::WRITE_FAULT,
        },
    }
}

impl IoSink for Connection {
    fn io_done(self: Rc<Self>, mut bio: BdevIo, tag: u64) {
        let slot = tag as u16;
        let st = bdev_status(&bio);
        let mut s = self.st.borrow_mut();
        if s.phase == Phase::Closed {
            return;
        }
        let r = &mut s.reqs[slot as usize];
        if !st.is_success() && r.status.is_success() {
            r.status = st;
        }
        r.pending = r.pending.saturating_sub(1);
        if r.pending > 0 {
            return;
        }
        let sqe = r.sqe;
        let final_status = r.status;
        let data_len = r.len as usize;
        if final_status.is_success() && matches!(sqe.opcode, io::READ | io::VENDOR_CHECKSUM) {
            r.buf = bio.bufs.pop();
            r.state = ReqState::Sending;
            let (hd, dd) = s.digests.unwrap_or((false, false));
            let success = s.sqflow_disabled && s.c2h_success;
            let ddgst = if dd {
                s.reqs[slot as usize]
                    .buf
                    .as_ref()
                    .map(|b| pdu::digest(&[&b.as_slice()[..data_len]]).to_le_bytes())
            } else {
                None
            };
            let hdr = pdu::data(
                pdu_type::C2H_DATA,
                sqe.cid,
                0,
                0,
                data_len as u32,
                true,
                success,
                hd,
                dd,
            );
            if success {
                // Counts as consumed for the SQ head even without a CapsuleResp.
                s.sq_head = if s.sq_size == 0 {
                    0
                } else {
                    (s.sq_head + 1) % (s.sq_size + 1)
                };
            }
            s.push_tx(TxPdu {
                hdr,
                data: TxData::Slot {
                    slot,
                    off: 0,
                    len: data_len,
                },
                ddgst,
                sent: 0,
                free_slot: if success { Some(slot) } else { None },
                close_after: false,
            });
            drop(s);
            if !success {
                let mut s = self.st.borrow_mut();
                let cqe = self.cqe(&mut s, sqe.cid, Status::SUCCESS, 0);
                drop(s);
                self.queue_resp(cqe, Some(slot));
            }
        } else if final_status.is_success() && sqe.opcode == io::COMPARE {
            // Host data arrived into r.buf before; the read came back in bio.
            let same = match (r.buf.as_ref(), bio.bufs.first()) {
                (Some(h), Some(d)) => h.as_slice()[..data_len] == d.as_slice()[..data_len],
                _ => false,
            };
            drop(s);
            self.finish(
                slot,
                if same {
                    Status::SUCCESS
                } else {
                    status::COMPARE_FAILURE
                },
                0,
            );
        } else {
            drop(s);
            self.finish(slot, final_status, 0);
        }
        // One vectored write per reactor turn for all responses ready by then.
        if let Some(g) = self.group.upgrade() {
            g.mark_dirty(self.token);
        }
    }
}
