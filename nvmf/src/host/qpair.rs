//! One NVMe/TCP connection of the host: a non-blocking state machine over a `TcpStream`.
//!
//! [`QueuePair::submit`] takes a command slot (indexed by CID), encodes the capsule header
//! into the transmit queue and keeps the caller's buffer in the slot; [`QueuePair::poll`]
//! writes pending PDUs with `writev` (headers, then the data straight from the caller's
//! buffer), reads from the socket, and walks received PDUs through a byte-exact receive state
//! machine (so any split of the stream into reads works). Large C2HData payloads are read
//! straight into the command's buffer. Completed commands queue up for
//! [`QueuePair::pop_completion`]. After warm-up, nothing is allocated per command.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, IntoBytes};

use super::{cmd, Completion, DataDir, HostError, IoBuf, HOST_PATH_ERROR};
use crate::spec::cmd::{SglDescriptor, SGL_IN_CAPSULE, SGL_TRANSPORT};
use crate::spec::status::{self, Status};
use crate::spec::{Cqe, Sqe};
use crate::tcp::framer::{Frame, Framer, HeaderBytes, Reject, RxLimits, MAX_HEADER_WITH_DIGEST};
use crate::tcp::pdu::{
    self, fes, flags, pdu_type, CapsuleCmdHdr, CapsuleRespHdr, CommonHeader, DataHdr, HeaderBuf,
    IcResp, PduError, PduLayout, R2tHdr, Receiver, TermReqHdr, COMMON_HEADER_LEN, DIGEST_LEN,
    TERM_REQ_MAX_DATA,
};
use crate::tls::TlsStream;

/// Size of the receive staging buffer (headers and small payloads are read through it).
const RX_STAGING: usize = 64 * 1024;
/// Payload remainders at least this large are read straight into the command's buffer.
const DIRECT_MIN: usize = 4096;
/// Reads per `poll` before yielding, so one busy connection cannot starve others.
const MAX_READS_PER_POLL: usize = 16;
/// Cookie of commands issued by [`QueuePair::exec`].
pub const SYNC_COOKIE: u64 = u64::MAX;

static ZEROS: [u8; 256] = [0; 256];

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct QueuePairOptions {
    /// Queue identifier (0: admin).
    pub qid: u16,
    /// Command slots: the most commands outstanding at once. SQSIZE is `depth - 1`.
    pub depth: u16,
    /// Ask for header / data digests.
    pub hdgst: bool,
    pub ddgst: bool,
    /// Largest write payload sent inside the command capsule (larger ones wait for R2T).
    pub icd_limit: usize,
    /// Limit for connection set-up (TCP connect, ICReq/ICResp, Fabrics Connect).
    pub timeout: Duration,
    /// Local address to connect from (SPDK's `hostaddr`); by default the kernel picks one.
    pub source: Option<std::net::IpAddr>,
    /// TLS 1.3 with a PSK before NVMe/TCP begins (a secure-channel listener).
    pub tls: Option<HostTls>,
}

/// A queue's TLS: the PSK, and the NQNs its identity names.
#[derive(Debug, Clone)]
pub struct HostTls {
    pub psk: std::sync::Arc<crate::tls::ConfiguredPsk>,
    pub hostnqn: String,
    pub subnqn: String,
    /// Hand the record layer to the kernel after the handshake where it offers kTLS.
    pub kernel: bool,
}

impl Default for QueuePairOptions {
    fn default() -> Self {
        QueuePairOptions {
            qid: 0,
            depth: 32,
            hdgst: false,
            ddgst: false,
            icd_limit: 8192,
            timeout: Duration::from_secs(10),
            source: None,
            tls: None,
        }
    }
}

/// A TCP connection to `addr`, from `source` if given.
fn tcp_connect(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, HostError> {
    let Some(ip) = source else {
        return Ok(TcpStream::connect_timeout(&addr, timeout)?);
    };
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.bind(&SockAddr::from(SocketAddr::new(ip, 0)))
        .map_err(|e| {
            HostError::InvalidArgument(format!("cannot bind to host address {ip}: {e}"))
        })?;
    sock.connect_timeout(&SockAddr::from(addr), timeout)?;
    Ok(sock.into())
}

/// What the Fabrics Connect command carries.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    pub subnqn: String,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// 0xffff for the admin queue (dynamic controller), the admin's CNTLID for I/O queues.
    pub cntlid: u16,
    /// Keep-alive timeout in ms (admin queue only; 0 disables).
    pub kato_ms: u32,
    /// DH-HMAC-CHAP secrets, for a controller that asks the queue to authenticate.
    pub dhchap: Option<std::sync::Arc<super::auth::DhchapKeys>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    None,
    Write,
    Read,
}

#[derive(Debug)]
struct Slot {
    active: bool,
    cookie: u64,
    buf: Option<IoBuf>,
    dir: Dir,
    /// Write data travels in the capsule (no R2T expected).
    in_capsule: bool,
    xfer_len: u32,
    /// Read: bytes received so far (C2HData must arrive in order).
    rcvd: u32,
    /// Write: offset the next R2T must ask for.
    r2t_next: u32,
    /// A data digest mismatch was seen: the command fails with a transfer error.
    data_error: bool,
    /// Transmit-queue entries still referencing the buffer.
    tx_refs: u32,
    /// Completion that arrived while the buffer was still being sent.
    pending: Option<Cqe>,
}

impl Slot {
    fn new() -> Self {
        Slot {
            active: false,
            cookie: 0,
            buf: None,
            dir: Dir::None,
            in_capsule: false,
            xfer_len: 0,
            rcvd: 0,
            r2t_next: 0,
            data_error: false,
            tx_refs: 0,
            pending: None,
        }
    }
}

/// A copy of the fields of a slot that received headers are checked against.
#[derive(Debug, Clone, Copy)]
struct SlotView {
    dir: Dir,
    in_capsule: bool,
    xfer_len: u32,
    rcvd: u32,
    r2t_next: u32,
    data_error: bool,
}

impl SlotView {
    fn of(s: &Slot) -> SlotView {
        SlotView {
            dir: s.dir,
            in_capsule: s.in_capsule,
            xfer_len: s.xfer_len,
            rcvd: s.rcvd,
            r2t_next: s.r2t_next,
            data_error: s.data_error,
        }
    }
}

/// One PDU waiting to be sent: header (+ digest), padding, data from a slot, data digest.
#[derive(Debug)]
struct TxItem {
    hdr: HeaderBuf,
    pad: usize,
    /// (cid, offset, length) of data taken from the slot's buffer.
    data: Option<(u16, u32, u32)>,
    ddgst: Option<[u8; 4]>,
}

impl TxItem {
    fn total(&self) -> usize {
        self.hdr.len
            + self.pad
            + self.data.map(|d| d.2 as usize).unwrap_or(0)
            + if self.ddgst.is_some() { DIGEST_LEN } else { 0 }
    }

    fn parts<'a>(&'a self, slots: &'a [Slot]) -> [&'a [u8]; 4] {
        let data: &[u8] = match self.data {
            Some((cid, off, len)) => slots
                .get(cid as usize)
                .and_then(|s| s.buf.as_ref())
                .and_then(|b| b.as_slice().get(off as usize..(off + len) as usize))
                .unwrap_or(&[]),
            None => &[],
        };
        let dg: &[u8] = match &self.ddgst {
            Some(d) => d,
            None => &[],
        };
        [self.hdr.as_slice(), &ZEROS[..self.pad], data, dg]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxState {
    Header,
    Pad(usize),
    Data,
    Ddgst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    None,
    Slot(u16),
    Term,
}

/// One NVMe/TCP queue pair. See the module documentation.
pub struct QueuePair {
    stream: TcpStream,
    /// TLS over `stream`, when the queue connected through a secure channel.
    tls: Option<Box<TlsStream>>,
    peer: SocketAddr,
    qid: u16,
    depth: u16,
    hdgst: bool,
    ddgst: bool,
    ic_done: bool,
    /// Alignment of data in PDUs we send (from CPDA).
    tx_align: usize,
    maxh2cdata: u32,
    icd_limit: usize,
    slots: Vec<Slot>,
    free: Vec<u16>,
    outstanding: usize,
    done: VecDeque<Completion>,
    completed_now: usize,
    tx: VecDeque<TxItem>,
    tx_off: usize,
    staging: Box<[u8]>,
    state: RxState,
    hdr: HeaderBytes,
    hdr_got: usize,
    /// Header bytes the framer needs before it can say more.
    hdr_need: usize,
    layout: Option<PduLayout>,
    sink: Sink,
    data_base: usize,
    data_len: usize,
    data_got: usize,
    pdu_flags: u8,
    dg: [u8; 4],
    dg_got: usize,
    term: [u8; TERM_REQ_MAX_DATA],
    dead: bool,
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("peer", &self.peer)
            .field("qid", &self.qid)
            .field("outstanding", &self.outstanding)
            .field("dead", &self.dead)
            .finish()
    }
}

impl AsRawFd for QueuePair {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// Reads from the queue's byte stream: TLS when it has it, else the socket.
fn wire_read(
    stream: &TcpStream,
    tls: &mut Option<Box<TlsStream>>,
    b: &mut [u8],
) -> std::io::Result<usize> {
    match tls {
        Some(t) => t.read(b),
        None => (&*stream).read(b),
    }
}

fn wire_write(
    stream: &TcpStream,
    tls: &mut Option<Box<TlsStream>>,
    iov: &[IoSlice<'_>],
) -> std::io::Result<usize> {
    match tls {
        Some(t) => t.write_vectored(iov),
        None => (&*stream).write_vectored(iov),
    }
}

/// Runs the TLS handshake on a fresh connection, waiting for the socket between steps.
fn tls_handshake(
    stream: &TcpStream,
    t: &HostTls,
    deadline: Instant,
) -> Result<TlsStream, HostError> {
    let tls_err = |e: crate::tls::TlsError| HostError::Tls(e.to_string());
    let mut s = TlsStream::client(stream.try_clone()?, &t.psk, &t.hostnqn, &t.subnqn, t.kernel)
        .map_err(tls_err)?;
    loop {
        if s.handshake().map_err(tls_err)? {
            return Ok(s);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HostError::Tls("handshake timed out".into()));
        }
        // Wait for the server's flight (peek leaves it for OpenSSL).
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(left.min(Duration::from_millis(20))))?;
        let r = stream.peek(&mut [0u8; 1]);
        stream.set_nonblocking(true)?;
        match r {
            Ok(0) => {
                return Err(HostError::Tls(
                    "the target closed the connection during the TLS handshake".into(),
                ))
            }
            Ok(_) => {}
            Err(e) if would_block(&e) || e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(HostError::Io(e)),
        }
    }
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

impl QueuePair {
    /// Connects TCP, exchanges ICReq/ICResp and sends Fabrics Connect. Returns the queue pair
    /// and the controller ID from the Connect response.
    ///
    /// The Connect asks for SQ flow control disabled; a controller that refuses the Connect
    /// for it (Invalid Field or Connect Invalid Parameters) is connected again, once, on a
    /// new connection without it.
    pub fn connect(
        addr: SocketAddr,
        opts: &QueuePairOptions,
        params: &ConnectParams,
    ) -> Result<(QueuePair, u16), HostError> {
        let deadline = Instant::now() + opts.timeout;
        let (mut qp, c) = match Self::connect_once(addr, opts, params, deadline, true) {
            Err(e)
                if e.is_status(status::INVALID_FIELD)
                    || e.is_status(status::CONNECT_INVALID_PARAMETERS) =>
            {
                tracing::info!(%addr, qid = opts.qid, error = %e, "Connect with SQ flow control disabled refused: connecting with it on");
                Self::connect_once(addr, opts, params, deadline, false)?
            }
            r => r?,
        };
        // AUTHREQ ATR: the queue authenticates before anything else runs on it. A host
        // that holds a controller key accepts no controller that does not prove itself.
        if c.cqe.dw0 & (1 << 17) == 0
            && params.dhchap.as_ref().is_some_and(|k| k.ctrl_key.is_some())
        {
            return Err(HostError::Auth(
                "a controller key is configured and the controller did not authenticate".into(),
            ));
        }
        if c.cqe.dw0 & (1 << 17) != 0 {
            let Some(keys) = &params.dhchap else {
                return Err(HostError::Auth(
                    "the controller requires DH-HMAC-CHAP and no secret is configured".into(),
                ));
            };
            let left = deadline.saturating_duration_since(Instant::now());
            super::auth::authenticate(&mut qp, keys, &params.hostnqn, &params.subnqn, left)?;
        }
        Ok((qp, (c.cqe.dw0 & 0xffff) as u16))
    }

    /// Connects TCP and queues the ICReq; the ICResp is processed by later polls.
    /// [`QueuePair::connect`] is the usual entry point.
    pub fn start(addr: SocketAddr, opts: &QueuePairOptions) -> Result<QueuePair, HostError> {
        if opts.depth == 0 {
            return Err(HostError::InvalidArgument("queue depth 0".into()));
        }
        let deadline = Instant::now() + opts.timeout;
        let stream = tcp_connect(addr, opts.source, opts.timeout)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        let tls = match &opts.tls {
            Some(t) => Some(Box::new(tls_handshake(&stream, t, deadline)?)),
            None => None,
        };
        let depth = opts.depth;
        let mut qp = QueuePair {
            stream,
            tls,
            peer: addr,
            qid: opts.qid,
            depth,
            hdgst: opts.hdgst,
            ddgst: opts.ddgst,
            ic_done: false,
            tx_align: 4,
            maxh2cdata: 4096,
            icd_limit: opts.icd_limit,
            slots: (0..depth).map(|_| Slot::new()).collect(),
            free: (0..depth).rev().collect(),
            outstanding: 0,
            done: VecDeque::with_capacity(depth as usize),
            completed_now: 0,
            tx: VecDeque::with_capacity(depth as usize * 2 + 4),
            tx_off: 0,
            staging: vec![0u8; RX_STAGING].into_boxed_slice(),
            state: RxState::Header,
            hdr: [0; MAX_HEADER_WITH_DIGEST],
            hdr_got: 0,
            hdr_need: COMMON_HEADER_LEN,
            layout: None,
            sink: Sink::None,
            data_base: 0,
            data_len: 0,
            data_got: 0,
            pdu_flags: 0,
            dg: [0; 4],
            dg_got: 0,
            term: [0; TERM_REQ_MAX_DATA],
            dead: false,
        };
        let ic = pdu::ic_req(0, opts.hdgst, opts.ddgst, 0);
        qp.tx.push_back(TxItem {
            hdr: HeaderBuf::new(&ic, false),
            pad: 0,
            data: None,
            ddgst: None,
        });
        qp.flush_tx()?;
        Ok(qp)
    }

    /// One TCP connection, ICReq/ICResp and a successful Fabrics Connect.
    fn connect_once(
        addr: SocketAddr,
        opts: &QueuePairOptions,
        params: &ConnectParams,
        deadline: Instant,
        no_sq_flow: bool,
    ) -> Result<(QueuePair, Completion), HostError> {
        let mut qp = QueuePair::start(addr, opts)?;
        qp.run_until(deadline, |q| q.ic_done)?;
        let cid = qp.submit_connect(params, no_sq_flow)?;
        let c = qp.wait_cid(cid, deadline)?.into_result()?;
        Ok((qp, c))
    }

    /// Queues the Fabrics Connect command (after the ICResp); `no_sq_flow` asks for SQ flow
    /// control disabled.
    pub fn submit_connect(
        &mut self,
        p: &ConnectParams,
        no_sq_flow: bool,
    ) -> Result<u16, HostError> {
        let sqe = cmd::connect(self.qid, self.depth - 1, p.kato_ms, no_sq_flow);
        let data = cmd::connect_data(p.hostid, p.cntlid, &p.subnqn, &p.hostnqn);
        self.submit(
            sqe,
            DataDir::ToController(IoBuf::Heap(data.as_bytes().to_vec())),
            SYNC_COOKIE,
        )
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
    pub fn depth(&self) -> u16 {
        self.depth
    }
    /// Commands submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }
    /// Completions waiting for [`QueuePair::pop_completion`].
    pub fn completions_ready(&self) -> usize {
        self.done.len()
    }
    /// Whether ICResp was received.
    pub fn is_initialized(&self) -> bool {
        self.ic_done
    }
    /// Whether the connection failed or was closed.
    pub fn is_dead(&self) -> bool {
        self.dead
    }
    /// Negotiated (header, data) digests.
    pub fn digests(&self) -> (bool, bool) {
        (self.hdgst, self.ddgst)
    }
    pub fn maxh2cdata(&self) -> u32 {
        self.maxh2cdata
    }
    pub fn icd_limit(&self) -> usize {
        self.icd_limit
    }
    /// Changes the in-capsule data limit (e.g. from IOCCSZ once known).
    pub fn set_icd_limit(&mut self, n: usize) {
        self.icd_limit = n;
    }
    /// Whether PDUs are waiting to be written.
    pub fn tx_pending(&self) -> bool {
        // TLS: sealed records to send, or decrypted input a socket wake-up would not
        // announce (the next poll must run either way).
        if self
            .tls
            .as_ref()
            .is_some_and(|t| t.pending_out() || t.pending_in())
        {
            return true;
        }
        !self.tx.is_empty()
    }

    pub fn pop_completion(&mut self) -> Option<Completion> {
        self.done.pop_front()
    }

    /// Submits a command. The CID, PSDT and SGL are filled in; write data up to the in-capsule limit
    /// rides in the capsule, larger writes wait for R2T, reads arrive in C2HData. The PDU is
    /// written by the next [`QueuePair::poll`] (or [`QueuePair::flush`]). On error the data
    /// buffer is dropped.
    pub fn submit(&mut self, mut sqe: Sqe, data: DataDir, cookie: u64) -> Result<u16, HostError> {
        if self.dead {
            return Err(HostError::Closed);
        }
        if !self.ic_done {
            return Err(HostError::Protocol("connection not initialized".into()));
        }
        let len = data.len();
        let Ok(len32) = u32::try_from(len) else {
            return Err(HostError::InvalidArgument(format!(
                "transfer of {len} bytes"
            )));
        };
        let Some(cid) = self.free.pop() else {
            return Err(HostError::QueueFull);
        };
        let (dir, in_capsule) = match &data {
            DataDir::None => (Dir::None, false),
            DataDir::ToController(_) => (Dir::Write, len > 0 && len <= self.icd_limit),
            DataDir::FromController(_) => (Dir::Read, false),
        };
        sqe.cid = cid;
        // The transport owns the data pointer: SGLs (PSDT 01b), as Linux and SPDK send.
        sqe.flags = (sqe.flags & !0xc0) | cmd::PSDT_SGL;
        sqe.sgl = SglDescriptor {
            address: 0,
            length: len32,
            reserved: [0; 3],
            sgl_id: if in_capsule {
                SGL_IN_CAPSULE
            } else {
                SGL_TRANSPORT
            },
        };
        let icd = if in_capsule { len } else { 0 };
        let (ch, pad) = self.data_ch(pdu_type::CAPSULE_CMD, 72, icd, 0);
        let hdr = HeaderBuf::new(&CapsuleCmdHdr { ch, sqe }, self.hdgst);
        let slot = &mut self.slots[cid as usize];
        slot.active = true;
        slot.cookie = cookie;
        slot.buf = data.into_buf();
        slot.dir = dir;
        slot.in_capsule = in_capsule;
        slot.xfer_len = len32;
        slot.rcvd = 0;
        slot.r2t_next = 0;
        slot.data_error = false;
        slot.pending = None;
        let mut ddgst = None;
        let mut item_data = None;
        if in_capsule {
            slot.tx_refs = 1;
            item_data = Some((cid, 0, len32));
            if self.ddgst {
                let d = slot.buf.as_ref().map(|b| b.as_slice()).unwrap_or(&[]);
                ddgst = Some(pdu::digest(&[d]).to_le_bytes());
            }
        } else {
            slot.tx_refs = 0;
        }
        self.outstanding += 1;
        self.tx.push_back(TxItem {
            hdr,
            pad,
            data: item_data,
            ddgst,
        });
        Ok(cid)
    }

    /// Common header for a PDU we send with `data_len` bytes of data, honouring CPDA.
    fn data_ch(&self, t: u8, hlen: usize, data_len: usize, extra: u8) -> (CommonHeader, usize) {
        let hbytes = hlen + if self.hdgst { DIGEST_LEN } else { 0 };
        let mut fl = extra;
        if self.hdgst {
            fl |= flags::HDGST;
        }
        if data_len == 0 {
            return (
                CommonHeader {
                    pdu_type: t,
                    flags: fl,
                    hlen: hlen as u8,
                    pdo: 0,
                    plen: hbytes as u32,
                },
                0,
            );
        }
        let pdo = hbytes.div_ceil(self.tx_align) * self.tx_align;
        if self.ddgst {
            fl |= flags::DDGST;
        }
        let plen = pdo + data_len + if self.ddgst { DIGEST_LEN } else { 0 };
        (
            CommonHeader {
                pdu_type: t,
                flags: fl,
                hlen: hlen as u8,
                pdo: pdo as u8,
                plen: plen as u32,
            },
            pdo - hbytes,
        )
    }

    /// Writes queued PDUs as far as the socket takes them.
    pub fn flush(&mut self) -> Result<(), HostError> {
        if self.dead {
            return Err(HostError::Closed);
        }
        self.flush_tx()
    }

    fn flush_tx(&mut self) -> Result<(), HostError> {
        if let Some(t) = &mut self.tls {
            // Sealed records first; the PDU loop below stops while some are left.
            if let Err(e) = t.flush_out() {
                return Err(self.die(HostError::Io(e)));
            }
        }
        while !self.tx.is_empty() {
            let mut iov = [IoSlice::new(&[]); 64];
            let mut n = 0;
            let mut skip = self.tx_off;
            'items: for item in self.tx.iter() {
                for part in item.parts(&self.slots) {
                    if part.is_empty() {
                        continue;
                    }
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    iov[n] = IoSlice::new(&part[skip..]);
                    skip = 0;
                    n += 1;
                    if n == iov.len() {
                        break 'items;
                    }
                }
            }
            match wire_write(&self.stream, &mut self.tls, &iov[..n]) {
                Ok(0) => return Err(self.die(HostError::Closed)),
                Ok(w) => self.advance_tx(w),
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.die(HostError::Io(e))),
            }
        }
        Ok(())
    }

    fn advance_tx(&mut self, written: usize) {
        let mut w = written + self.tx_off;
        while let Some(front) = self.tx.front() {
            let t = front.total();
            if w < t {
                break;
            }
            w -= t;
            let data = front.data;
            self.tx.pop_front();
            if let Some((cid, _, _)) = data {
                self.release_tx_ref(cid);
            }
        }
        self.tx_off = w;
    }

    fn release_tx_ref(&mut self, cid: u16) {
        let Some(slot) = self.slots.get_mut(cid as usize) else {
            return;
        };
        slot.tx_refs = slot.tx_refs.saturating_sub(1);
        if slot.tx_refs == 0 {
            if let Some(cqe) = slot.pending.take() {
                self.finish(cid, cqe);
            }
        }
    }

    /// Sends what is queued, receives what arrived and processes it. Returns how many
    /// commands completed (their completions wait in [`QueuePair::pop_completion`]). A fatal
    /// error completes every outstanding command with [`HOST_PATH_ERROR`] and kills the
    /// connection.
    pub fn poll(&mut self) -> Result<usize, HostError> {
        if self.dead {
            return Err(HostError::Closed);
        }
        self.completed_now = 0;
        self.flush_tx()?;
        for _ in 0..MAX_READS_PER_POLL {
            if self.try_direct_read()? {
                continue;
            }
            let mut staging = std::mem::take(&mut self.staging);
            let r = wire_read(&self.stream, &mut self.tls, &mut staging);
            let res = match r {
                Ok(0) => Err(self.die(HostError::Closed)),
                Ok(n) => self.process(&staging[..n]).map(|_| true),
                Err(e) if would_block(&e) => Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
                Err(e) => Err(self.die(HostError::Io(e))),
            };
            self.staging = staging;
            if !res? {
                break;
            }
        }
        self.flush_tx()?;
        Ok(self.completed_now)
    }

    /// Reads the rest of a large C2HData payload straight into the command's buffer.
    /// Returns whether it read anything.
    fn try_direct_read(&mut self) -> Result<bool, HostError> {
        let Sink::Slot(cid) = self.sink else {
            return Ok(false);
        };
        if self.state != RxState::Data || self.data_len - self.data_got < DIRECT_MIN {
            return Ok(false);
        }
        let start = self.data_base + self.data_got;
        let end = self.data_base + self.data_len;
        let r = match self.slots[cid as usize]
            .buf
            .as_mut()
            .and_then(|b| b.as_mut_slice().get_mut(start..end))
        {
            Some(dst) => wire_read(&self.stream, &mut self.tls, dst),
            None => return Err(self.fatal(fes::DATA_OUT_OF_RANGE, 16, "C2HData buffer")),
        };
        match r {
            Ok(0) => Err(self.die(HostError::Closed)),
            Ok(n) => {
                self.data_got += n;
                if self.data_got == self.data_len {
                    self.data_complete()?;
                }
                Ok(true)
            }
            Err(e) if would_block(&e) => Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(self.die(HostError::Io(e))),
        }
    }

    /// Feeds received bytes through the PDU state machine.
    fn process(&mut self, input: &[u8]) -> Result<(), HostError> {
        let mut pos = 0;
        while pos < input.len() {
            let avail = &input[pos..];
            match self.state {
                RxState::Header => {
                    let n = (self.hdr_need - self.hdr_got).min(avail.len());
                    self.hdr[self.hdr_got..self.hdr_got + n].copy_from_slice(&avail[..n]);
                    self.hdr_got += n;
                    pos += n;
                    if self.hdr_got < self.hdr_need {
                        continue;
                    }
                    match self.framer().header(&self.hdr[..self.hdr_got]) {
                        Ok(Frame::Need(n)) => self.hdr_need = n,
                        Ok(Frame::Header(l)) => {
                            self.layout = Some(l);
                            self.on_header(l)?;
                        }
                        Err(r) => return Err(self.reject(r)),
                    }
                }
                RxState::Pad(left) => {
                    let n = left.min(avail.len());
                    pos += n;
                    self.state = if n == left {
                        RxState::Data
                    } else {
                        RxState::Pad(left - n)
                    };
                    if self.state == RxState::Data && self.data_len == 0 {
                        self.data_complete()?;
                    }
                }
                RxState::Data => {
                    let n = (self.data_len - self.data_got).min(avail.len());
                    let at = self.data_base + self.data_got;
                    match self.sink {
                        Sink::Slot(cid) => {
                            let dst = self.slots[cid as usize]
                                .buf
                                .as_mut()
                                .and_then(|b| b.as_mut_slice().get_mut(at..at + n));
                            match dst {
                                Some(d) => d.copy_from_slice(&avail[..n]),
                                None => {
                                    return Err(self.fatal(
                                        fes::DATA_OUT_OF_RANGE,
                                        16,
                                        "C2HData buffer",
                                    ))
                                }
                            }
                        }
                        Sink::Term => {
                            if let Some(d) = self.term.get_mut(at..at + n) {
                                d.copy_from_slice(&avail[..n]);
                            }
                        }
                        Sink::None => {}
                    }
                    self.data_got += n;
                    pos += n;
                    if self.data_got == self.data_len {
                        self.data_complete()?;
                    }
                }
                RxState::Ddgst => {
                    let n = (DIGEST_LEN - self.dg_got).min(avail.len());
                    self.dg[self.dg_got..self.dg_got + n].copy_from_slice(&avail[..n]);
                    self.dg_got += n;
                    pos += n;
                    if self.dg_got == DIGEST_LEN {
                        self.pdu_done()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The receive framer for what was negotiated (a few words, built per header).
    fn framer(&self) -> Framer {
        Framer {
            rx: Receiver::Host,
            digests: self.ic_done.then_some((self.hdgst, self.ddgst)),
            limits: RxLimits {
                capsule: 0,
                transfer: u32::MAX as usize,
            },
        }
    }

    /// A header the framer refused: H2CTermReq and a dead connection.
    fn reject(&mut self, r: Reject) -> HostError {
        let e = r.error;
        if e.fes == fes::HEADER_DIGEST_ERROR {
            // The H2CTermReq quotes the header without its digest.
            let quote = self.hdr_got.saturating_sub(DIGEST_LEN);
            return self.fatal_quoting(e.fes, e.fei, "header digest mismatch", quote);
        }
        let msg = match CommonHeader::read_from_bytes(&self.hdr[..COMMON_HEADER_LEN]) {
            Ok(ch) => format!(
                "bad PDU header: {e} (type {:#x} flags {:#x} hlen {} pdo {} plen {})",
                ch.pdu_type, ch.flags, ch.hlen, ch.pdo, ch.plen
            ),
            Err(_) => format!("bad PDU header: {e}"),
        };
        self.fatal_pdu(e, msg)
    }

    /// A whole header, its digest checked, is in `self.hdr`.
    fn on_header(&mut self, l: PduLayout) -> Result<(), HostError> {
        self.pdu_flags = self.hdr[1];
        self.sink = Sink::None;
        self.data_base = 0;
        self.data_len = 0;
        self.data_got = 0;
        self.dg_got = 0;
        match l.pdu_type {
            pdu_type::IC_RESP => self.on_ic_resp()?,
            pdu_type::CAPSULE_RESP => self.on_capsule_resp()?,
            pdu_type::R2T => self.on_r2t()?,
            pdu_type::C2H_DATA => self.on_c2h_data(&l)?,
            pdu_type::C2H_TERM_REQ => {
                self.sink = Sink::Term;
                self.data_len = l.data_len.min(TERM_REQ_MAX_DATA);
            }
            t => {
                return Err(self.fatal(
                    fes::INVALID_HEADER_FIELD,
                    0,
                    &format!("unexpected PDU type {t:#x}"),
                ))
            }
        }
        if l.data_len == 0 && l.pdu_type != pdu_type::C2H_TERM_REQ {
            return self.pdu_done();
        }
        let pad = l.data_off.saturating_sub(l.header_bytes());
        self.state = if pad > 0 {
            RxState::Pad(pad)
        } else {
            RxState::Data
        };
        if pad == 0 && self.data_len == 0 {
            self.data_complete()?;
        }
        Ok(())
    }

    fn on_ic_resp(&mut self) -> Result<(), HostError> {
        let Ok(ic) = IcResp::read_from_bytes(&self.hdr[..128]) else {
            return Err(self.fatal(fes::INVALID_HEADER_FIELD, 0, "ICResp"));
        };
        if ic.pfv != 0 {
            return Err(self.fatal(fes::INVALID_HEADER_FIELD, 8, "ICResp PFV"));
        }
        if ic.cpda > 31 {
            return Err(self.fatal(fes::INVALID_HEADER_FIELD, 10, "ICResp CPDA"));
        }
        let (hd, dd) = (ic.dgst & 1 != 0, ic.dgst & 2 != 0);
        if (hd && !self.hdgst) || (dd && !self.ddgst) || ic.dgst & !3 != 0 {
            return Err(self.fatal(
                fes::INVALID_HEADER_FIELD,
                11,
                "ICResp enables a digest the host did not ask for",
            ));
        }
        if ic.maxh2cdata < 4096 || !ic.maxh2cdata.is_multiple_of(4) {
            return Err(self.fatal(fes::INVALID_HEADER_FIELD, 12, "ICResp MAXH2CDATA"));
        }
        self.hdgst = hd;
        self.ddgst = dd;
        self.tx_align = (ic.cpda as usize + 1) * 4;
        self.maxh2cdata = ic.maxh2cdata;
        self.ic_done = true;
        Ok(())
    }

    fn active_slot(&self, cid: u16) -> Option<&Slot> {
        self.slots.get(cid as usize).filter(|s| s.active)
    }

    fn on_capsule_resp(&mut self) -> Result<(), HostError> {
        let Ok(r) = CapsuleRespHdr::read_from_bytes(&self.hdr[..24]) else {
            return Err(self.fatal(fes::INVALID_HEADER_FIELD, 0, "CapsuleResp"));
        };
        let cid = r.cqe.cid;
        let Some(slot) = self.active_slot(cid).map(SlotView::of) else {
            return Err(self.fatal(
                fes::INVALID_HEADER_FIELD,
                20,
                &format!("CapsuleResp for unknown CID {cid}"),
            ));
        };
        let mut cqe = r.cqe;
        if slot.data_error && Status::from_cqe_status(cqe.status).is_success() {
            cqe.status = status::DATA_TRANSFER_ERROR.to_cqe_status();
        }
        self.complete(cid, cqe);
        Ok(())
    }

    fn on_r2t(&mut self) -> Result<(), HostError> {
        let Ok(r) = R2tHdr::read_from_bytes(&self.hdr[..24]) else {
            return Err(self.fatal(fes::INVALID_HEADER_FIELD, 0, "R2T"));
        };
        let cid = r.cccid;
        let Some(slot) = self.active_slot(cid).map(SlotView::of) else {
            return Err(self.fatal(
                fes::INVALID_HEADER_FIELD,
                8,
                &format!("R2T for unknown CID {cid}"),
            ));
        };
        if slot.dir != Dir::Write || slot.in_capsule {
            return Err(self.fatal(
                fes::INVALID_HEADER_FIELD,
                8,
                &format!("R2T for CID {cid}, which has no data to send"),
            ));
        }
        if r.r2to != slot.r2t_next {
            return Err(self.fatal(
                fes::DATA_OUT_OF_RANGE,
                12,
                &format!(
                    "R2T offset {} for CID {cid}, expected {}",
                    r.r2to, slot.r2t_next
                ),
            ));
        }
        let end = r.r2to as u64 + r.r2tl as u64;
        if r.r2tl == 0 || end > slot.xfer_len as u64 {
            return Err(self.fatal(
                fes::DATA_OUT_OF_RANGE,
                16,
                &format!(
                    "R2T length {} at {} for CID {cid} of {} bytes",
                    r.r2tl, r.r2to, slot.xfer_len
                ),
            ));
        }
        let mut off = r.r2to;
        let end = end as u32;
        let mut items = 0;
        while off < end {
            let n = (end - off).min(self.maxh2cdata);
            let last = off + n == end;
            let (ch, pad) = self.data_ch(
                pdu_type::H2C_DATA,
                24,
                n as usize,
                if last { flags::DATA_LAST } else { 0 },
            );
            let hdr = HeaderBuf::new(
                &DataHdr {
                    ch,
                    cccid: cid,
                    ttag: r.ttag,
                    datao: off,
                    datal: n,
                    rsvd: 0,
                },
                self.hdgst,
            );
            let ddgst = if self.ddgst {
                let d = self.slots[cid as usize]
                    .buf
                    .as_ref()
                    .and_then(|b| b.as_slice().get(off as usize..(off + n) as usize))
                    .unwrap_or(&[]);
                Some(pdu::digest(&[d]).to_le_bytes())
            } else {
                None
            };
            self.tx.push_back(TxItem {
                hdr,
                pad,
                data: Some((cid, off, n)),
                ddgst,
            });
            items += 1;
            off += n;
        }
        let slot = &mut self.slots[cid as usize];
        slot.tx_refs += items;
        slot.r2t_next = end;
        Ok(())
    }

    fn on_c2h_data(&mut self, l: &PduLayout) -> Result<(), HostError> {
        let Ok(d) = DataHdr::read_from_bytes(&self.hdr[..24]) else {
            return Err(self.fatal(fes::INVALID_HEADER_FIELD, 0, "C2HData"));
        };
        let cid = d.cccid;
        let Some(slot) = self.active_slot(cid).map(SlotView::of) else {
            return Err(self.fatal(
                fes::INVALID_HEADER_FIELD,
                8,
                &format!("C2HData for unknown CID {cid}"),
            ));
        };
        if slot.dir != Dir::Read {
            return Err(self.fatal(
                fes::INVALID_HEADER_FIELD,
                8,
                &format!("C2HData for CID {cid}, which reads no data"),
            ));
        }
        if d.datal as usize != l.data_len {
            return Err(self.fatal(
                fes::INVALID_HEADER_FIELD,
                16,
                &format!("C2HData DATAL {} but PDU carries {}", d.datal, l.data_len),
            ));
        }
        if d.datao != slot.rcvd {
            return Err(self.fatal(
                fes::DATA_OUT_OF_RANGE,
                12,
                &format!(
                    "C2HData offset {} for CID {cid}, expected {}",
                    d.datao, slot.rcvd
                ),
            ));
        }
        if d.datao as u64 + d.datal as u64 > slot.xfer_len as u64 {
            return Err(self.fatal(
                fes::DATA_OUT_OF_RANGE,
                16,
                &format!(
                    "C2HData {} bytes at {} for CID {cid} of {} bytes",
                    d.datal, d.datao, slot.xfer_len
                ),
            ));
        }
        if d.ch.flags & flags::DATA_SUCCESS != 0 && d.ch.flags & flags::DATA_LAST == 0 {
            return Err(self.fatal(
                fes::INVALID_HEADER_FIELD,
                1,
                "C2HData SUCCESS without LAST_PDU",
            ));
        }
        self.sink = Sink::Slot(cid);
        self.data_base = d.datao as usize;
        self.data_len = d.datal as usize;
        Ok(())
    }

    /// The data part of the current PDU is complete.
    fn data_complete(&mut self) -> Result<(), HostError> {
        let ddgst = self.layout.map(|l| l.ddgst).unwrap_or(false);
        if ddgst {
            self.state = RxState::Ddgst;
            self.dg_got = 0;
            return Ok(());
        }
        self.pdu_done()
    }

    /// The whole current PDU was received.
    fn pdu_done(&mut self) -> Result<(), HostError> {
        let l = self.layout.take();
        self.state = RxState::Header;
        self.hdr_got = 0;
        self.hdr_need = COMMON_HEADER_LEN;
        let sink = std::mem::replace(&mut self.sink, Sink::None);
        match sink {
            Sink::Slot(cid) => {
                let (base, len) = (self.data_base, self.data_len);
                let ddgst = l.map(|l| l.ddgst).unwrap_or(false);
                let slot = &mut self.slots[cid as usize];
                if ddgst {
                    let data = slot
                        .buf
                        .as_ref()
                        .and_then(|b| b.as_slice().get(base..base + len))
                        .unwrap_or(&[]);
                    if !Framer::data_digest_ok(data, &self.dg) {
                        tracing::warn!(qid = self.qid, cid, "C2HData data digest mismatch");
                        slot.data_error = true;
                    }
                }
                slot.rcvd += len as u32;
                if self.pdu_flags & flags::DATA_SUCCESS != 0 {
                    let status = if slot.data_error {
                        status::DATA_TRANSFER_ERROR.to_cqe_status()
                    } else {
                        0
                    };
                    let cqe = Cqe {
                        dw0: 0,
                        dw1: 0,
                        sqhd: 0,
                        sqid: self.qid,
                        cid,
                        status,
                    };
                    self.complete(cid, cqe);
                }
            }
            Sink::Term => {
                let t = TermReqHdr::read_from_bytes(&self.hdr[..24]).ok();
                let (fes, fei) = t
                    .map(|t| (t.fes, u32::from_le_bytes(t.fei)))
                    .unwrap_or((0, 0));
                tracing::warn!(
                    qid = self.qid,
                    peer = %self.peer,
                    fes,
                    fei,
                    data = ?&self.term[..self.data_len.min(TERM_REQ_MAX_DATA)],
                    "C2HTermReq received"
                );
                return Err(self.die(HostError::Term { fes, fei }));
            }
            Sink::None => {}
        }
        Ok(())
    }

    fn complete(&mut self, cid: u16, cqe: Cqe) {
        let slot = &mut self.slots[cid as usize];
        if slot.tx_refs > 0 {
            slot.pending = Some(cqe);
            return;
        }
        self.finish(cid, cqe);
    }

    fn finish(&mut self, cid: u16, cqe: Cqe) {
        let slot = &mut self.slots[cid as usize];
        if !slot.active {
            return;
        }
        slot.active = false;
        slot.pending = None;
        self.done.push_back(Completion {
            cookie: slot.cookie,
            cid,
            cqe,
            data: slot.buf.take(),
            transferred: slot.rcvd,
        });
        self.free.push(cid);
        self.outstanding -= 1;
        self.completed_now += 1;
    }

    fn fatal_pdu(&mut self, e: PduError, msg: String) -> HostError {
        self.fatal(e.fes, e.fei, &msg)
    }

    /// A protocol violation by the controller: send an H2CTermReq (when the transmit stream
    /// is at a PDU boundary) and fail the connection.
    fn fatal(&mut self, fes: u16, fei: u32, msg: &str) -> HostError {
        let hlen = self.layout.map(|l| l.hlen).unwrap_or(self.hdr_got);
        self.fatal_quoting(fes, fei, msg, hlen)
    }

    /// As [`Self::fatal`], quoting the first `quote` header bytes received.
    fn fatal_quoting(&mut self, fes: u16, fei: u32, msg: &str, quote: usize) -> HostError {
        let offending = &self.hdr[..quote.min(self.hdr_got).min(self.hdr.len())];
        tracing::warn!(
            qid = self.qid,
            peer = %self.peer,
            fes,
            fei,
            header = ?offending,
            "NVMe/TCP protocol error: {msg}"
        );
        if self.tx_off == 0 {
            let t = self.framer().term_req(PduError { fes, fei }, offending);
            let _ = wire_write(&self.stream, &mut self.tls, &[IoSlice::new(&t)]);
        }
        self.die(HostError::Protocol(format!(
            "{msg} (qid {}, header {:02x?})",
            self.qid, offending
        )))
    }

    /// Marks the connection dead and completes every outstanding command with
    /// [`HOST_PATH_ERROR`]. Returns `e` for convenience.
    fn die(&mut self, e: HostError) -> HostError {
        if !self.dead {
            self.dead = true;
            // Drop what the kernel still holds for the peer (reset, not a graceful close):
            // commands this side has given up on must not be delivered later by TCP
            // retransmission, after the caller has resent or failed them.
            let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
            self.tx.clear();
            self.tx_off = 0;
            self.fail_outstanding();
        }
        e
    }

    fn fail_outstanding(&mut self) {
        for cid in 0..self.slots.len() as u16 {
            if self.slots[cid as usize].active {
                self.slots[cid as usize].tx_refs = 0;
                let cqe = Cqe {
                    sqid: self.qid,
                    cid,
                    status: HOST_PATH_ERROR.to_cqe_status(),
                    ..Default::default()
                };
                self.finish(cid, cqe);
            }
        }
    }

    /// Closes the connection; outstanding commands complete with [`HOST_PATH_ERROR`].
    pub fn close(&mut self) {
        let _ = self.die(HostError::Closed);
    }

    /// Blocks until the socket is readable, `timeout` passes, or (with PDUs waiting to be
    /// written) a short while. For plain-loop callers; a reactor never calls it.
    pub fn wait(&mut self, timeout: Duration) -> Result<(), HostError> {
        if self.dead {
            return Err(HostError::Closed);
        }
        if !self.tx.is_empty() || !self.done.is_empty() || self.tls_pending() {
            std::thread::sleep(timeout.min(Duration::from_micros(50)));
            return Ok(());
        }
        let t = timeout.max(Duration::from_millis(1));
        self.stream.set_nonblocking(false)?;
        self.stream.set_read_timeout(Some(t))?;
        let r = self.stream.peek(&mut [0u8; 1]);
        self.stream.set_nonblocking(true)?;
        match r {
            Ok(_) => Ok(()),
            Err(e) if would_block(&e) || e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(HostError::Io(e)),
        }
    }

    /// TLS holds bytes a socket wait would not see: decrypted input, or sealed output.
    fn tls_pending(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.pending_in() || t.pending_out())
    }

    /// Polls (and waits) until `done(self)` holds or `deadline` passes.
    pub fn run_until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<(), HostError> {
        loop {
            self.poll()?;
            if done(self) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HostError::Timeout);
            }
            self.wait((deadline - now).min(Duration::from_millis(20)))?;
        }
    }

    /// Takes the completion of `cid` out of the completion queue, if it is there.
    pub fn take_completion(&mut self, cid: u16) -> Option<Completion> {
        let i = self.done.iter().position(|c| c.cid == cid)?;
        self.done.remove(i)
    }

    /// Polls until command `cid` completes; other completions stay queued.
    pub fn wait_cid(&mut self, cid: u16, deadline: Instant) -> Result<Completion, HostError> {
        self.wait_cid_then(cid, deadline, false)
    }

    /// Waits for `cid`; with `keep_good`, a successful completion is returned even if the
    /// connection closed in the same poll.
    fn wait_cid_then(
        &mut self,
        cid: u16,
        deadline: Instant,
        keep_good: bool,
    ) -> Result<Completion, HostError> {
        loop {
            let r = self.poll();
            if let Some(c) = self.take_completion(cid) {
                // A command failed by a dying connection reports why the connection died.
                if !(keep_good && c.status().is_success()) {
                    r?;
                }
                return Ok(c);
            }
            r?;
            let now = Instant::now();
            if now >= deadline {
                return Err(HostError::Timeout);
            }
            self.wait((deadline - now).min(Duration::from_millis(20)))?;
        }
    }

    /// Like [`QueuePair::exec`], but a completion that arrived is returned even when the
    /// controller closed the connection right after it (an AUTH_Failure1 is followed by
    /// the close, and its reason is what matters).
    pub fn exec_before_close(
        &mut self,
        sqe: Sqe,
        data: DataDir,
        timeout: Duration,
    ) -> Result<Completion, HostError> {
        self.exec_then(sqe, data, timeout, true)
    }

    /// Submits a command and waits for it (set-up and admin paths). The completion is
    /// returned whatever its status.
    pub fn exec(
        &mut self,
        sqe: Sqe,
        data: DataDir,
        timeout: Duration,
    ) -> Result<Completion, HostError> {
        self.exec_then(sqe, data, timeout, false)
    }

    fn exec_then(
        &mut self,
        sqe: Sqe,
        data: DataDir,
        timeout: Duration,
        keep_good: bool,
    ) -> Result<Completion, HostError> {
        let deadline = Instant::now() + timeout;
        let cid = self.submit(sqe, data, SYNC_COOKIE)?;
        self.wait_cid_then(cid, deadline, keep_good)
    }
}
