//! A host-side NVMe-oF controller: the admin queue plus N I/O queues.
//!
//! [`Controller::connect`] brings the controller up the way Linux does: admin Connect (with
//! KATO), Property Get CAP/VS, Property Set CC (IOSQES/IOCQES, then EN), wait for CSTS.RDY,
//! Identify Controller, Set Features Number of Queues, Identify active namespace list and
//! Identify Namespace for each, then one Fabrics Connect per I/O queue. Set-up and admin
//! helpers block (with the configured timeout); I/O submission is non-blocking and completions
//! are collected with [`Controller::poll`]. [`Controller::poll`] also sends Keep Alive every
//! KATO/2. I/O queues can be moved out ([`Controller::take_io_queue`]) to be driven on other
//! threads (strata-perf does this, one reactor per queue).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, FromZeros};

use super::qpair::SYNC_COOKIE;
use super::{cmd, Completion, ConnectParams, DataDir, HostError, IoBuf, QueuePair};
use crate::spec::cmd::cns;
use crate::spec::fabrics::{self, prop, CSTS_CFS, CSTS_RDY};
use crate::spec::identify::{IdentifyController, IdentifyNamespace};
use crate::spec::Sqe;

/// A block-data command: its builder `(nsid, lba, nlb) -> Sqe` and its data direction.
type BlockOp = (fn(u32, u64, u32) -> Sqe, fn(IoBuf) -> DataDir);

/// Cookie of the controller's own Keep Alive commands.
const KA_COOKIE: u64 = u64::MAX - 1;
/// In-capsule data limit of the admin queue (NVMe/TCP: 8 KiB).
const ADMIN_ICD: usize = 8192;
/// CC.IOSQES = 6 (64-byte SQEs), CC.IOCQES = 4 (16-byte CQEs).
const CC_QES: u32 = (6 << 16) | (4 << 20);
const CC_SHN_NORMAL: u32 = 1 << fabrics::CC_SHN_SHIFT;
const CSTS_SHST_MASK: u32 = 3 << 2;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// I/O queues to create (fewer if the controller grants fewer).
    pub io_queues: u16,
    /// Commands outstanding per I/O queue (capped by CAP.MQES).
    pub queue_depth: u16,
    pub admin_depth: u16,
    pub hdgst: bool,
    pub ddgst: bool,
    /// Keep-alive timeout (0: none).
    pub kato_ms: u32,
    /// Host NQN; by default a UUID-based one derived from the host ID.
    pub hostnqn: Option<String>,
    /// Host identifier; random by default.
    pub hostid: Option<[u8; 16]>,
    /// Limit for set-up steps and blocking admin commands.
    pub timeout: Duration,
    /// Local address to connect from (SPDK's `hostaddr`).
    pub source: Option<std::net::IpAddr>,
    /// DH-HMAC-CHAP secrets (for subsystems that require authentication).
    pub dhchap: Option<std::sync::Arc<super::auth::DhchapKeys>>,
    /// TLS PSK: every queue connects over TLS 1.3 with it (a secure-channel listener).
    pub tls_psk: Option<std::sync::Arc<crate::tls::ConfiguredPsk>>,
    /// With TLS: hand the record layer to the kernel where it offers kTLS.
    pub tls_kernel: bool,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            io_queues: 1,
            queue_depth: 128,
            admin_depth: 32,
            hdgst: false,
            ddgst: false,
            kato_ms: 10_000,
            hostnqn: None,
            hostid: None,
            timeout: Duration::from_secs(10),
            source: None,
            dhchap: None,
            tls_psk: None,
            tls_kernel: true,
        }
    }
}

/// What Identify Namespace said about one active namespace.
#[derive(Clone)]
pub struct NamespaceInfo {
    pub nsid: u32,
    pub block_size: u32,
    /// Size in blocks.
    pub nsze: u64,
    pub id: Box<IdentifyNamespace>,
    /// The namespace's UUID from its Identification Descriptor list (CNS 03h), if it
    /// reports one: what tells the same namespace from another one with the same NSID.
    pub uuid: Option<[u8; 16]>,
}

impl std::fmt::Debug for NamespaceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceInfo")
            .field("nsid", &self.nsid)
            .field("block_size", &self.block_size)
            .field("nsze", &self.nsze)
            .finish()
    }
}

/// Which queue a completion came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRef {
    Admin,
    /// Index into the I/O queues (qid − 1).
    Io(usize),
}

/// A connected controller. See the module documentation.
pub struct Controller {
    addr: SocketAddr,
    subnqn: String,
    hostnqn: String,
    hostid: [u8; 16],
    opts: ControllerOptions,
    admin: QueuePair,
    io: Vec<Option<QueuePair>>,
    cntlid: u16,
    cap: u64,
    vs: u32,
    ident: Box<IdentifyController>,
    namespaces: Vec<NamespaceInfo>,
    io_icd: usize,
    io_depth: u16,
    cc: u32,
    ka_interval: Option<Duration>,
    last_ka: Instant,
    ka_outstanding: bool,
    admin_done: VecDeque<Completion>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("addr", &self.addr)
            .field("subnqn", &self.subnqn)
            .field("cntlid", &self.cntlid)
            .field("io_queues", &self.io.len())
            .field("namespaces", &self.namespaces)
            .finish()
    }
}

fn status_err(c: Completion) -> Result<Completion, HostError> {
    c.into_result()
}

/// The UUID (NIDT 3) of a Namespace Identification Descriptor list, if present.
fn descriptor_uuid(list: &[u8]) -> Option<[u8; 16]> {
    let mut at = 0;
    while at + 4 <= list.len() {
        let (nidt, nidl) = (list[at], list[at + 1] as usize);
        if nidt == 0 || nidl == 0 {
            return None;
        }
        let body = list.get(at + 4..at + 4 + nidl)?;
        if nidt == 3 && nidl == 16 {
            return body.try_into().ok();
        }
        at += 4 + nidl;
    }
    None
}

/// The default host NQN for a host ID.
pub fn default_hostnqn(hostid: &[u8; 16]) -> String {
    format!(
        "nqn.2014-08.org.nvmexpress:uuid:{}",
        uuid::Uuid::from_bytes(*hostid).hyphenated()
    )
}

impl Controller {
    /// Connects the admin queue, enables the controller, reads its identity and namespaces and
    /// connects the I/O queues.
    pub fn connect(
        addr: SocketAddr,
        subnqn: &str,
        opts: ControllerOptions,
    ) -> Result<Controller, HostError> {
        let hostid = opts
            .hostid
            .unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes());
        let hostnqn = opts
            .hostnqn
            .clone()
            .unwrap_or_else(|| default_hostnqn(&hostid));
        let params = ConnectParams {
            subnqn: subnqn.to_string(),
            hostnqn: hostnqn.clone(),
            hostid,
            cntlid: 0xffff,
            kato_ms: opts.kato_ms,
            dhchap: opts.dhchap.clone(),
        };
        let aopts = super::QueuePairOptions {
            qid: 0,
            depth: opts.admin_depth.max(2),
            hdgst: opts.hdgst,
            ddgst: opts.ddgst,
            icd_limit: ADMIN_ICD,
            timeout: opts.timeout,
            source: opts.source,
            tls: opts.tls_psk.as_ref().map(|psk| super::HostTls {
                psk: psk.clone(),
                hostnqn: hostnqn.clone(),
                subnqn: subnqn.to_string(),
                kernel: opts.tls_kernel,
            }),
        };
        let (admin, cntlid) = QueuePair::connect(addr, &aopts, &params)?;
        let mut c = Controller {
            addr,
            subnqn: subnqn.to_string(),
            hostnqn,
            hostid,
            opts,
            admin,
            io: Vec::new(),
            cntlid,
            cap: 0,
            vs: 0,
            ident: Box::new(IdentifyController::new_zeroed()),
            namespaces: Vec::new(),
            io_icd: 0,
            io_depth: 0,
            cc: 0,
            ka_interval: None,
            last_ka: Instant::now(),
            ka_outstanding: false,
            admin_done: VecDeque::new(),
        };
        c.bring_up()?;
        Ok(c)
    }

    fn bring_up(&mut self) -> Result<(), HostError> {
        self.cap = self.property_get(prop::CAP, true)?;
        self.vs = self.property_get(prop::VS, false)? as u32;
        // Like Linux: write CC without EN, then with EN.
        self.cc = CC_QES;
        self.property_set(prop::CC, self.cc as u64)?;
        self.cc |= fabrics::CC_EN;
        self.property_set(prop::CC, self.cc as u64)?;
        // CAP.TO: worst-case ready time in 500 ms units.
        let to = Duration::from_millis(((self.cap >> 24) & 0xff).max(2) * 500);
        let deadline = Instant::now() + to.max(self.opts.timeout);
        loop {
            let csts = self.property_get(prop::CSTS, false)? as u32;
            if csts & CSTS_CFS != 0 {
                return Err(HostError::Protocol(format!(
                    "controller fatal status (CSTS {csts:#x})"
                )));
            }
            if csts & CSTS_RDY != 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(HostError::Timeout);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let data = self.identify(cns::CONTROLLER, 0, 0)?;
        *self.ident = IdentifyController::read_from_bytes(data.get(..4096).unwrap_or(&[]))
            .map_err(|_| HostError::Protocol("short Identify Controller data".into()))?;
        let ioccsz = self.ident.ioccsz as usize;
        self.io_icd = (ioccsz * 16).saturating_sub(64);
        self.ka_interval = (self.opts.kato_ms > 0).then(|| {
            Duration::from_millis(self.opts.kato_ms as u64 / 2).max(Duration::from_millis(50))
        });
        self.last_ka = Instant::now();
        if self.subnqn == fabrics::DISCOVERY_NQN || self.ident.cntrltype == 2 {
            return Ok(());
        }
        self.scan_namespaces()?;
        if self.opts.io_queues > 0 {
            self.connect_io_queues(self.opts.io_queues)?;
        }
        Ok(())
    }

    /// Asks for `n` I/O queues (Set Features Number of Queues) and connects as many as the
    /// controller grants. Done by [`Controller::connect`] when `io_queues` > 0; call it once
    /// yourself after connecting with `io_queues: 0` (e.g. once the namespaces are known).
    pub fn connect_io_queues(&mut self, n: u16) -> Result<usize, HostError> {
        if !self.io.is_empty() {
            return Err(HostError::InvalidArgument(
                "I/O queues are already connected".into(),
            ));
        }
        let mut n = n;
        if n > 0 {
            let c = self.admin_exec(cmd::set_num_queues(n), DataDir::None)?;
            let nsqa = (c.cqe.dw0 & 0xffff) as u16;
            let ncqa = (c.cqe.dw0 >> 16) as u16;
            let granted = nsqa.min(ncqa).saturating_add(1);
            if granted < n {
                tracing::warn!(asked = n, granted, "controller granted fewer I/O queues");
                n = granted;
            }
        }
        let mqes = (self.cap & 0xffff) as u32 + 1;
        self.io_depth = (self.opts.queue_depth.max(1) as u32).min(mqes) as u16;
        for q in 1..=n {
            let qopts = super::QueuePairOptions {
                qid: q,
                depth: self.io_depth,
                hdgst: self.opts.hdgst,
                ddgst: self.opts.ddgst,
                icd_limit: self.io_icd,
                timeout: self.opts.timeout,
                source: self.opts.source,
                tls: self.opts.tls_psk.as_ref().map(|psk| super::HostTls {
                    psk: psk.clone(),
                    hostnqn: self.hostnqn.clone(),
                    subnqn: self.subnqn.clone(),
                    kernel: self.opts.tls_kernel,
                }),
            };
            let params = ConnectParams {
                subnqn: self.subnqn.clone(),
                hostnqn: self.hostnqn.clone(),
                hostid: self.hostid,
                cntlid: self.cntlid,
                kato_ms: 0,
                dhchap: self.opts.dhchap.clone(),
            };
            let (qp, _) = QueuePair::connect(self.addr, &qopts, &params)?;
            self.io.push(Some(qp));
        }
        Ok(n as usize)
    }

    /// Re-reads the active namespace list and each namespace's identity.
    pub fn scan_namespaces(&mut self) -> Result<(), HostError> {
        let list = self.identify(cns::ACTIVE_NS_LIST, 0, 0)?;
        let mut out = Vec::new();
        for ch in list.chunks_exact(4) {
            let nsid = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]);
            if nsid == 0 {
                break;
            }
            let d = self.identify(cns::NAMESPACE, nsid, 0)?;
            let id = IdentifyNamespace::read_from_bytes(d.get(..4096).unwrap_or(&[]))
                .map_err(|_| HostError::Protocol("short Identify Namespace data".into()))?;
            let fmt = (id.flbas & 0xf) as usize;
            let lbads = id.lbaf.get(fmt).map(|f| f.lbads).unwrap_or(0);
            if !(9..=24).contains(&lbads) {
                return Err(HostError::Protocol(format!(
                    "namespace {nsid}: LBA data size 2^{lbads}"
                )));
            }
            let uuid = self
                .identify(cns::NS_DESCRIPTOR_LIST, nsid, 0)
                .ok()
                .and_then(|d| descriptor_uuid(&d));
            out.push(NamespaceInfo {
                nsid,
                block_size: 1 << lbads,
                nsze: id.nsze,
                id: Box::new(id),
                uuid,
            });
        }
        self.namespaces = out;
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn subnqn(&self) -> &str {
        &self.subnqn
    }
    pub fn hostnqn(&self) -> &str {
        &self.hostnqn
    }
    pub fn hostid(&self) -> [u8; 16] {
        self.hostid
    }
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }
    /// CAP property.
    pub fn cap(&self) -> u64 {
        self.cap
    }
    /// VS property.
    pub fn vs(&self) -> u32 {
        self.vs
    }
    pub fn identify_data(&self) -> &IdentifyController {
        &self.ident
    }
    pub fn namespaces(&self) -> &[NamespaceInfo] {
        &self.namespaces
    }
    pub fn namespace(&self, nsid: u32) -> Option<&NamespaceInfo> {
        self.namespaces.iter().find(|n| n.nsid == nsid)
    }
    /// In-capsule data limit of the I/O queues (IOCCSZ × 16 − 64).
    pub fn io_icd_limit(&self) -> usize {
        self.io_icd
    }
    /// Largest transfer per command (from MDTS, 4 KiB pages), if limited.
    pub fn max_transfer(&self) -> Option<usize> {
        let m = self.ident.mdts;
        (m != 0).then(|| 4096usize << m.min(20))
    }
    /// Depth of each I/O queue.
    pub fn io_depth(&self) -> u16 {
        self.io_depth
    }
    /// Changes the limit of blocking admin commands.
    pub fn set_timeout(&mut self, t: Duration) {
        self.opts.timeout = t;
    }

    pub fn options(&self) -> &ControllerOptions {
        &self.opts
    }

    pub fn admin_queue(&mut self) -> &mut QueuePair {
        &mut self.admin
    }
    pub fn io_queue_count(&self) -> usize {
        self.io.len()
    }
    /// I/O queue `i` (qid i+1), unless it was taken.
    pub fn io_queue(&mut self, i: usize) -> Option<&mut QueuePair> {
        self.io.get_mut(i).and_then(|q| q.as_mut())
    }
    /// Moves I/O queue `i` out, to be driven elsewhere.
    pub fn take_io_queue(&mut self, i: usize) -> Option<QueuePair> {
        self.io.get_mut(i).and_then(|q| q.take())
    }

    /// Submits an admin command (completion via [`Controller::pop_admin_completion`]).
    pub fn submit_admin(&mut self, sqe: Sqe, data: DataDir, cookie: u64) -> Result<u16, HostError> {
        self.admin.submit(sqe, data, cookie)
    }

    /// Submits an I/O command on I/O queue `q`.
    pub fn submit_io(
        &mut self,
        q: usize,
        sqe: Sqe,
        data: DataDir,
        cookie: u64,
    ) -> Result<u16, HostError> {
        let qp = self
            .io_queue(q)
            .ok_or_else(|| HostError::InvalidArgument(format!("no I/O queue {q}")))?;
        qp.submit(sqe, data, cookie)
    }

    fn blocks(&self, nsid: u32, len: usize) -> Result<u32, HostError> {
        let ns = self
            .namespace(nsid)
            .ok_or_else(|| HostError::InvalidArgument(format!("no namespace {nsid}")))?;
        let bs = ns.block_size as usize;
        if len == 0 || !len.is_multiple_of(bs) || len / bs > 65536 {
            return Err(HostError::InvalidArgument(format!(
                "{len} bytes is not 1..=65536 blocks of {bs}"
            )));
        }
        Ok((len / bs) as u32)
    }

    /// Submits a block-data command over `buf`: `op` is the command builder
    /// (`make(nsid, lba, nlb)`) and the data direction (`DataDir::ToController` / `FromController`).
    fn submit_blocks(
        &mut self,
        q: usize,
        nsid: u32,
        lba: u64,
        buf: IoBuf,
        cookie: u64,
        op: BlockOp,
    ) -> Result<u16, HostError> {
        let nlb = self.blocks(nsid, buf.len())?;
        self.submit_io(q, (op.0)(nsid, lba, nlb), (op.1)(buf), cookie)
    }

    /// Reads `buf.len()` bytes at `lba` into `buf`.
    pub fn read(
        &mut self,
        q: usize,
        nsid: u32,
        lba: u64,
        buf: IoBuf,
        cookie: u64,
    ) -> Result<u16, HostError> {
        self.submit_blocks(
            q,
            nsid,
            lba,
            buf,
            cookie,
            (cmd::read, DataDir::FromController),
        )
    }

    pub fn write(
        &mut self,
        q: usize,
        nsid: u32,
        lba: u64,
        buf: IoBuf,
        cookie: u64,
    ) -> Result<u16, HostError> {
        self.submit_blocks(
            q,
            nsid,
            lba,
            buf,
            cookie,
            (cmd::write, DataDir::ToController),
        )
    }

    pub fn compare(
        &mut self,
        q: usize,
        nsid: u32,
        lba: u64,
        buf: IoBuf,
        cookie: u64,
    ) -> Result<u16, HostError> {
        self.submit_blocks(
            q,
            nsid,
            lba,
            buf,
            cookie,
            (cmd::compare, DataDir::ToController),
        )
    }

    /// strata's XOR write: `stored ^= buf`.
    pub fn xor_write(
        &mut self,
        q: usize,
        nsid: u32,
        lba: u64,
        buf: IoBuf,
        cookie: u64,
    ) -> Result<u16, HostError> {
        self.submit_blocks(
            q,
            nsid,
            lba,
            buf,
            cookie,
            (cmd::xor_write, DataDir::ToController),
        )
    }

    /// strata's checksum: one CRC32C per `chunk` blocks, into a buffer it allocates.
    pub fn checksum(
        &mut self,
        q: usize,
        nsid: u32,
        lba: u64,
        nlb: u32,
        chunk: u32,
        cookie: u64,
    ) -> Result<u16, HostError> {
        let buf = IoBuf::Heap(vec![0; cmd::checksum_len(nlb, chunk)]);
        self.submit_io(
            q,
            cmd::checksum(nsid, lba, nlb, chunk),
            DataDir::FromController(buf),
            cookie,
        )
    }

    pub fn write_zeroes(
        &mut self,
        q: usize,
        nsid: u32,
        lba: u64,
        nlb: u32,
        cookie: u64,
    ) -> Result<u16, HostError> {
        self.submit_io(
            q,
            cmd::write_zeroes(nsid, lba, nlb, false),
            DataDir::None,
            cookie,
        )
    }

    pub fn flush(&mut self, q: usize, nsid: u32, cookie: u64) -> Result<u16, HostError> {
        self.submit_io(q, cmd::flush(nsid), DataDir::None, cookie)
    }

    /// Dataset Management / Deallocate over (LBA, blocks) ranges.
    pub fn deallocate(
        &mut self,
        q: usize,
        nsid: u32,
        ranges: &[(u64, u32)],
        cookie: u64,
    ) -> Result<u16, HostError> {
        if ranges.is_empty() || ranges.len() > 256 {
            return Err(HostError::InvalidArgument("1..=256 DSM ranges".into()));
        }
        self.submit_io(
            q,
            cmd::dsm_deallocate(nsid, ranges.len()),
            DataDir::ToController(IoBuf::Heap(cmd::dsm_ranges(ranges))),
            cookie,
        )
    }

    /// Polls the admin queue (sending Keep Alive when due) and every I/O queue still owned.
    /// Returns the number of completions; the first queue error is returned after all queues
    /// were polled.
    pub fn poll(&mut self) -> Result<usize, HostError> {
        let mut n = 0;
        let mut err = None;
        match self.poll_admin() {
            Ok(k) => n += k,
            Err(e) => err = Some(e),
        }
        for qp in self.io.iter_mut().flatten() {
            if qp.is_dead() {
                continue;
            }
            match qp.poll() {
                Ok(k) => n += k,
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Polls the admin queue only; sends Keep Alive every KATO/2.
    pub fn poll_admin(&mut self) -> Result<usize, HostError> {
        if let Some(iv) = self.ka_interval {
            if !self.ka_outstanding && self.last_ka.elapsed() >= iv && !self.admin.is_dead() {
                self.admin
                    .submit(cmd::keep_alive(), DataDir::None, KA_COOKIE)?;
                self.ka_outstanding = true;
                self.last_ka = Instant::now();
            }
        }
        let r = self.admin.poll();
        let mut n = 0;
        while let Some(c) = self.admin.pop_completion() {
            match c.cookie {
                KA_COOKIE => {
                    self.ka_outstanding = false;
                    if !c.is_success() {
                        tracing::warn!(status = ?c.status(), "Keep Alive failed");
                    }
                }
                SYNC_COOKIE => {}
                _ => {
                    n += 1;
                    self.admin_done.push_back(c);
                }
            }
        }
        r.map(|_| n)
    }

    /// Whether a Keep Alive has waited longer than half the keep-alive timeout for its
    /// answer (a silent peer: the next one would be due already).
    pub fn keep_alive_overdue(&self) -> bool {
        self.ka_outstanding
            && self.opts.kato_ms > 0
            && self.last_ka.elapsed()
                > Duration::from_millis(self.opts.kato_ms as u64 / 2)
                    .max(Duration::from_millis(100))
    }

    pub fn pop_admin_completion(&mut self) -> Option<Completion> {
        self.admin_done.pop_front()
    }

    /// Next completion of I/O queue `q`.
    pub fn pop_completion(&mut self, q: usize) -> Option<Completion> {
        self.io_queue(q).and_then(|qp| qp.pop_completion())
    }

    /// Runs an admin command to completion (blocking); a failed status is an error.
    pub fn admin_exec(&mut self, sqe: Sqe, data: DataDir) -> Result<Completion, HostError> {
        let t = self.opts.timeout;
        status_err(self.admin.exec(sqe, data, t)?)
    }

    pub fn property_get(&mut self, offset: u32, eight: bool) -> Result<u64, HostError> {
        let c = self.admin_exec(cmd::property_get(offset, eight), DataDir::None)?;
        Ok(if eight {
            c.cqe.dw0 as u64 | ((c.cqe.dw1 as u64) << 32)
        } else {
            c.cqe.dw0 as u64
        })
    }

    pub fn property_set(&mut self, offset: u32, value: u64) -> Result<(), HostError> {
        self.admin_exec(cmd::property_set(offset, false, value), DataDir::None)?;
        Ok(())
    }

    /// Identify (blocking): the 4096 bytes of data.
    pub fn identify(&mut self, cns: u8, nsid: u32, cntid: u16) -> Result<Vec<u8>, HostError> {
        let c = self.admin_exec(
            cmd::identify(cns, nsid, cntid),
            DataDir::FromController(IoBuf::Heap(vec![0; 4096])),
        )?;
        Ok(c.data.map(IoBuf::into_vec).unwrap_or_default())
    }

    /// Get Log Page (blocking): `len` bytes (rounded up to dwords) at byte `offset`.
    pub fn get_log_page(
        &mut self,
        lid: u8,
        nsid: u32,
        len: usize,
        offset: u64,
    ) -> Result<Vec<u8>, HostError> {
        let len4 = len.div_ceil(4) * 4;
        let c = self.admin_exec(
            cmd::get_log_page(lid, nsid, len4, offset),
            DataDir::FromController(IoBuf::Heap(vec![0; len4])),
        )?;
        let mut v = c.data.map(IoBuf::into_vec).unwrap_or_default();
        v.truncate(len);
        Ok(v)
    }

    /// Get Features (blocking): DW0 of the completion.
    pub fn get_features(&mut self, fid: u8, nsid: u32) -> Result<u32, HostError> {
        Ok(self
            .admin_exec(cmd::get_features(fid, nsid), DataDir::None)?
            .cqe
            .dw0)
    }

    /// Set Features (blocking): DW0 of the completion.
    pub fn set_features(&mut self, fid: u8, cdw11: u32) -> Result<u32, HostError> {
        Ok(self
            .admin_exec(cmd::set_features(fid, cdw11), DataDir::None)?
            .cqe
            .dw0)
    }

    /// Sends one Keep Alive now and waits for it.
    pub fn keep_alive(&mut self) -> Result<(), HostError> {
        self.admin_exec(cmd::keep_alive(), DataDir::None)?;
        self.last_ka = Instant::now();
        Ok(())
    }

    /// Normal shutdown (CC.SHN = 01b, wait for CSTS.SHST = complete), then closes every
    /// queue. Outstanding commands complete with a path error.
    pub fn disconnect(mut self) -> Result<(), HostError> {
        let r = self.shutdown();
        for qp in self.io.iter_mut().flatten() {
            qp.close();
        }
        self.admin.close();
        r
    }

    fn shutdown(&mut self) -> Result<(), HostError> {
        self.cc = (self.cc & !(3 << fabrics::CC_SHN_SHIFT)) | CC_SHN_NORMAL;
        self.property_set(prop::CC, self.cc as u64)?;
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            let csts = self.property_get(prop::CSTS, false)? as u32;
            if csts & CSTS_SHST_MASK == fabrics::CSTS_SHST_COMPLETE {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HostError::Timeout);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Drops every connection and connects again (a new admin queue, controller and I/O
    /// queues, including ones that were taken). Returns the completions that were pending or
    /// failed (with a path error) on the old queues.
    pub fn reconnect(&mut self) -> Result<Vec<(QueueRef, Completion)>, HostError> {
        let mut failed = Vec::new();
        self.admin.close();
        while let Some(c) = self.admin.pop_completion() {
            if c.cookie != KA_COOKIE && c.cookie != SYNC_COOKIE {
                failed.push((QueueRef::Admin, c));
            }
        }
        while let Some(c) = self.admin_done.pop_front() {
            failed.push((QueueRef::Admin, c));
        }
        for (i, qp) in self.io.iter_mut().enumerate() {
            if let Some(qp) = qp {
                qp.close();
                while let Some(c) = qp.pop_completion() {
                    failed.push((QueueRef::Io(i), c));
                }
            }
        }
        let mut opts = self.opts.clone();
        opts.io_queues = self.io.len() as u16;
        opts.hostid = Some(self.hostid);
        opts.hostnqn = Some(self.hostnqn.clone());
        let fresh = Controller::connect(self.addr, &self.subnqn, opts)?;
        *self = fresh;
        Ok(failed)
    }
}
