//! A controller: the state one host association has with a subsystem (properties CC/CSTS,
//! features, keep-alive, asynchronous events) and the admin command set it answers.
//! Admin commands are answered here without I/O; data moves through the queue pair.

use super::subsystem::{AnaState, ListenAddress, Subsystem, SubsystemKind, SubsystemState};
use crate::spec::cmd::{admin, cns, feature};
use crate::spec::fabrics::{self, prop};
use crate::spec::identify::*;
use crate::spec::log::{self, lid};
use crate::spec::status::{self, Status};
use crate::spec::{put_ascii, put_nqn, Sqe};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;
use strata_bdev::IoType;
use zerocopy::{FromZeros, IntoBytes};

/// Transport limits a controller advertises.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_queue_depth: u16,
    pub max_io_qpairs: u16,
    pub in_capsule_data_size: u32,
    pub max_io_size: u32,
}

/// Most Asynchronous Event Requests a host may have outstanding.
pub const AER_LIMIT: usize = 4;
/// Changed-namespace list entries before it overflows to "rescan everything".
const CHANGED_NS_MAX: usize = 1024;

struct CtrlState {
    cc: u32,
    csts: u32,
    async_event_config: u32,
    io_queues_granted: Option<u16>,
    changed_ns: Vec<u32>,
    pending_events: VecDeque<u32>,
    volatile_write_cache: bool,
    host_behavior: [u8; 512],
    timestamp_base: Option<(u64, Instant)>,
}

/// What an admin command produced.
#[derive(Debug, Default)]
pub struct AdminOutcome {
    pub status: Option<Status>,
    pub dw0: u32,
    pub dw1: u32,
    /// Data for the host (controller-to-host commands).
    pub data: Option<Vec<u8>>,
    /// The command is an Asynchronous Event Request to hold until an event occurs.
    pub hold_aer: bool,
}

impl AdminOutcome {
    pub(crate) fn ok() -> Self {
        AdminOutcome {
            status: Some(Status::SUCCESS),
            ..Default::default()
        }
    }
    pub(crate) fn err(s: Status) -> Self {
        AdminOutcome {
            status: Some(s),
            ..Default::default()
        }
    }
    pub(crate) fn data(v: Vec<u8>) -> Self {
        AdminOutcome {
            status: Some(Status::SUCCESS),
            data: Some(v),
            ..Default::default()
        }
    }
}

pub struct Controller {
    pub cntlid: u16,
    pub subsys: Arc<Subsystem>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub limits: Limits,
    /// Keep-alive timeout in ms (0: none).
    pub kato_ms: AtomicU32,
    /// Ticks (ms since controller creation) of the last keep-alive.
    last_keepalive_ms: AtomicU64,
    created: Instant,
    /// Set when the controller failed (keep-alive timeout) or was shut down: queues close.
    pub dead: AtomicBool,
    /// The admin queue completed DH-HMAC-CHAP (I/O queues of a host with a key may only
    /// connect after it).
    pub admin_authenticated: AtomicBool,
    pub io_qpairs: AtomicU32,
    state: Mutex<CtrlState>,
    /// Wakes the admin queue to deliver pending asynchronous events (set by the admin queue).
    pub aer_notify: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// The subsystem's listener this controller connected through (None: discovery).
    pub listener: Option<ListenAddress>,
    /// ANA state per group id (index), as seen through `listener`: read by every I/O
    /// command without a lock.
    ana: Box<[AtomicU8]>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("cntlid", &self.cntlid)
            .field("subnqn", &self.subsys.nqn)
            .finish()
    }
}

/// Firmware revision reported in Identify and the firmware log.
const FIRMWARE: &str = concat!("v", env!("CARGO_PKG_VERSION"));

impl Controller {
    pub fn new(
        cntlid: u16,
        subsys: Arc<Subsystem>,
        hostnqn: &str,
        hostid: [u8; 16],
        kato_ms: u32,
        limits: Limits,
        listener: Option<ListenAddress>,
    ) -> Arc<Self> {
        let groups = subsys.state.lock().max_namespaces as usize + 1;
        Arc::new(Controller {
            listener,
            ana: (0..groups)
                .map(|_| AtomicU8::new(AnaState::Optimized as u8))
                .collect(),
            cntlid,
            subsys,
            hostnqn: hostnqn.to_string(),
            hostid,
            limits,
            kato_ms: AtomicU32::new(kato_ms),
            last_keepalive_ms: AtomicU64::new(0),
            created: Instant::now(),
            dead: AtomicBool::new(false),
            admin_authenticated: AtomicBool::new(false),
            io_qpairs: AtomicU32::new(0),
            state: Mutex::new(CtrlState {
                cc: 0,
                csts: 0,
                async_event_config: 0,
                io_queues_granted: None,
                changed_ns: Vec::new(),
                pending_events: VecDeque::new(),
                volatile_write_cache: true,
                host_behavior: [0; 512],
                timestamp_base: None,
            }),
            aer_notify: Mutex::new(None),
        })
    }

    pub fn is_discovery(&self) -> bool {
        self.subsys.kind == SubsystemKind::Discovery
    }

    pub fn is_enabled(&self) -> bool {
        self.state.lock().csts & fabrics::CSTS_RDY != 0
    }

    pub fn touch_keepalive(&self) {
        self.last_keepalive_ms
            .store(self.created.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether the keep-alive timeout has passed without a keep-alive.
    pub fn keepalive_expired(&self) -> bool {
        let kato = self.kato_ms.load(Ordering::Relaxed) as u64;
        if kato == 0 {
            return false;
        }
        let now = self.created.elapsed().as_millis() as u64;
        // Allow a grace of one timeout beyond KATO, as hosts send at KATO/2 intervals.
        now.saturating_sub(self.last_keepalive_ms.load(Ordering::Relaxed)) > kato * 2
    }

    /// Called by the subsystem when namespace `nsid` was added or removed.
    pub fn namespace_changed(&self, nsid: u32) {
        {
            let mut s = self.state.lock();
            if s.changed_ns.len() < CHANGED_NS_MAX && !s.changed_ns.contains(&nsid) {
                s.changed_ns.push(nsid);
            } else if s.changed_ns.len() >= CHANGED_NS_MAX {
                s.changed_ns = vec![u32::MAX];
            }
            // Notice events are masked unless the host enabled them (AEC bit 8).
            if s.async_event_config & (1 << 8) == 0 {
                return;
            }
            if !s.pending_events.contains(&log::AER_NS_CHANGED) {
                s.pending_events.push_back(log::AER_NS_CHANGED);
            }
        }
        if let Some(n) = self.aer_notify.lock().as_ref() {
            n();
        }
    }

    /// Takes the ANA states of its listener (called under the subsystem's lock, where
    /// changes are made, so none is missed).
    pub fn load_ana(&self, s: &SubsystemState) {
        if let Some(l) = &self.listener {
            for (g, a) in self.ana.iter().enumerate().skip(1) {
                a.store(s.ana_state(l, g as u32) as u8, Ordering::Relaxed);
            }
        }
    }

    /// The ANA state of group `grp` (None: every group) changed on this controller's
    /// listener: stored for the I/O path and announced (AEC bit 11 enables the notice).
    pub fn ana_changed(&self, grp: Option<u32>, state: AnaState) {
        match grp {
            Some(g) => {
                if let Some(a) = self.ana.get(g as usize) {
                    a.store(state as u8, Ordering::Release);
                }
            }
            None => {
                for a in self.ana.iter().skip(1) {
                    a.store(state as u8, Ordering::Release);
                }
            }
        }
        {
            let mut s = self.state.lock();
            if s.async_event_config & (1 << 11) == 0 {
                return;
            }
            if !s.pending_events.contains(&log::AER_ANA_CHANGED) {
                s.pending_events.push_back(log::AER_ANA_CHANGED);
            }
        }
        if let Some(n) = self.aer_notify.lock().as_ref() {
            n();
        }
    }

    /// The path status an I/O command to a namespace of group `grp` gets, if it may not
    /// run through this controller.
    pub fn ana_refusal(&self, grp: u32) -> Option<Status> {
        let v = self.ana.get(grp as usize)?.load(Ordering::Acquire);
        (AnaState::from_u8(v) == AnaState::Inaccessible).then_some(status::ANA_INACCESSIBLE)
    }

    /// Takes one pending asynchronous event (its completion DW0).
    pub fn take_event(&self) -> Option<u32> {
        self.state.lock().pending_events.pop_front()
    }

    // ---- properties --------------------------------------------------------------------

    pub fn cap(&self) -> u64 {
        let mqes = (self.limits.max_queue_depth.max(2) - 1) as u64;
        // MQES, CQR (contiguous queues), TO = 30 × 500 ms, CSS: NVM command set.
        mqes | (1 << 16) | (30 << 24) | (1 << 37)
    }

    pub fn property_get(&self, offset: u32, eight: bool) -> Result<u64, Status> {
        let s = self.state.lock();
        match (offset, eight) {
            (prop::CAP, true) => Ok(self.cap()),
            (prop::CAP, false) => Ok(self.cap() & 0xffff_ffff),
            (prop::VS, false) => Ok(fabrics::VERSION_1_3 as u64),
            (prop::CC, false) => Ok(s.cc as u64),
            (prop::CSTS, false) => Ok(s.csts as u64),
            (prop::NSSR, false) => Ok(0),
            _ => Err(status::INVALID_FIELD),
        }
    }

    pub fn property_set(&self, offset: u32, eight: bool, value: u64) -> Result<(), Status> {
        if offset != prop::CC || eight {
            return Err(status::INVALID_FIELD);
        }
        let v = value as u32;
        let mut s = self.state.lock();
        let was_enabled = s.cc & fabrics::CC_EN != 0;
        s.cc = v;
        let shn = (v >> fabrics::CC_SHN_SHIFT) & 3;
        if shn != 0 {
            s.csts = (s.csts & !(3 << 2)) | fabrics::CSTS_SHST_COMPLETE;
            tracing::info!(cntlid = self.cntlid, nqn = %self.subsys.nqn, "controller shutdown by host");
        }
        match (was_enabled, v & fabrics::CC_EN != 0) {
            (false, true) => s.csts |= fabrics::CSTS_RDY,
            (true, false) => {
                s.csts &= !fabrics::CSTS_RDY;
                s.io_queues_granted = None;
            }
            _ => {}
        }
        Ok(())
    }

    // ---- admin commands ----------------------------------------------------------------

    /// Executes an admin command. `data_in` holds host-to-controller data (if any).
    pub fn admin(
        &self,
        sqe: &Sqe,
        data_in: &[u8],
        discovery_log: &dyn Fn(&str) -> Vec<u8>,
    ) -> AdminOutcome {
        if !self.is_enabled() && sqe.opcode != admin::KEEP_ALIVE {
            return AdminOutcome::err(status::COMMAND_SEQUENCE_ERROR);
        }
        let discovery = self.is_discovery();
        match sqe.opcode {
            admin::IDENTIFY => self.identify(sqe),
            admin::GET_LOG_PAGE => self.get_log_page(sqe, discovery_log),
            admin::SET_FEATURES => self.set_features(sqe, data_in),
            admin::GET_FEATURES => self.get_features(sqe),
            admin::KEEP_ALIVE => {
                self.touch_keepalive();
                AdminOutcome::ok()
            }
            admin::ASYNC_EVENT_REQUEST => AdminOutcome {
                hold_aer: true,
                ..Default::default()
            },
            // Commands complete too fast to abort: report "not aborted" (DW0 bit 0).
            admin::ABORT if !discovery => AdminOutcome {
                status: Some(Status::SUCCESS),
                dw0: 1,
                ..Default::default()
            },
            _ => AdminOutcome::err(status::INVALID_OPCODE),
        }
    }

    fn identify(&self, sqe: &Sqe) -> AdminOutcome {
        let c = (sqe.cdw10 & 0xff) as u8;
        let csi = (sqe.cdw11 >> 24) as u8;
        match c {
            cns::CONTROLLER => AdminOutcome::data(self.identify_controller().as_bytes().to_vec()),
            _ if self.is_discovery() => AdminOutcome::err(status::INVALID_FIELD),
            cns::NAMESPACE => self.identify_namespace(sqe.nsid),
            cns::ACTIVE_NS_LIST | cns::CS_ACTIVE_NS_LIST => {
                if c == cns::CS_ACTIVE_NS_LIST && csi != 0 {
                    return AdminOutcome::data(vec![0; 4096]);
                }
                let mut out = vec![0u8; 4096];
                let ids = self
                    .subsys
                    .namespaces()
                    .into_iter()
                    .map(|n| n.nsid)
                    .filter(|n| *n > sqe.nsid)
                    .take(1024);
                for (i, id) in ids.enumerate() {
                    out[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
                }
                AdminOutcome::data(out)
            }
            cns::NS_DESCRIPTOR_LIST => match self.subsys.namespace(sqe.nsid) {
                Some(ns) => {
                    let mut out = vec![0u8; 4096];
                    ns_descriptor_list(&mut out, ns.eui64, ns.nguid, *ns.uuid.as_bytes());
                    AdminOutcome::data(out)
                }
                None => AdminOutcome::err(status::INVALID_NAMESPACE),
            },
            // NVM command set specific namespace / controller structures: all-zero means no
            // extra limits.
            cns::CS_NAMESPACE | cns::CS_CONTROLLER => {
                if csi != 0 {
                    return AdminOutcome::err(status::INVALID_FIELD);
                }
                if c == cns::CS_NAMESPACE && self.subsys.namespace(sqe.nsid).is_none() {
                    return AdminOutcome::err(status::INVALID_NAMESPACE);
                }
                AdminOutcome::data(vec![0; 4096])
            }
            cns::CS_INDEP_NAMESPACE => match self.subsys.namespace(sqe.nsid) {
                Some(ns) => {
                    let mut id = IdentifyNamespaceIndependent::new_zeroed();
                    id.nmic = 1;
                    if self.subsys.state.lock().ana_reporting {
                        id.anagrpid = ns.anagrpid;
                    }
                    id.nstat = 1;
                    AdminOutcome::data(id.as_bytes().to_vec())
                }
                None => AdminOutcome::err(status::INVALID_NAMESPACE),
            },
            _ => AdminOutcome::err(status::INVALID_FIELD),
        }
    }

    pub fn identify_controller(&self) -> IdentifyController {
        let mut id = IdentifyController::new_zeroed();
        let (serial, model, nn, ana) = {
            let s = self.subsys.state.lock();
            (
                s.serial_number.clone(),
                s.model_number.clone(),
                s.max_namespaces,
                s.ana_reporting,
            )
        };
        put_ascii(&mut id.sn, &serial);
        put_ascii(&mut id.mn, &model);
        put_ascii(&mut id.fr, FIRMWARE);
        id.rab = 6;
        id.cmic = CMIC_MULTI_CTRL;
        id.mdts = (self.limits.max_io_size / 4096).max(1).ilog2() as u8;
        id.cntlid = self.cntlid;
        id.ver = fabrics::VERSION_1_3;
        id.ctratt = 1; // 128-bit host identifier
        id.kas = 10; // keep-alive granularity: 1 s
        id.aerl = (AER_LIMIT - 1) as u8;
        id.lpa = LPA_CMD_EFFECTS | LPA_EXTENDED;
        id.elpe = 0;
        id.frmw = 0x03; // one slot, slot 1 read-only
        id.sgls = SGLS_FABRICS;
        put_nqn(&mut id.subnqn, &self.subsys.nqn);
        id.iorcsz = 1;
        id.msdbd = 1;
        if self.is_discovery() {
            id.cntrltype = 2;
            id.maxcmd = self.limits.max_queue_depth;
            id.ioccsz = 4;
            return id;
        }
        id.cntrltype = 1;
        id.oaes = OAES_NS_ATTR_CHANGED;
        id.acl = 3;
        id.wctemp = 343;
        id.cctemp = 373;
        id.sqes = 0x66;
        id.cqes = 0x44;
        id.maxcmd = self.limits.max_queue_depth;
        id.nn = nn;
        id.mnan = nn;
        if ana {
            id.cmic |= CMIC_ANA_REPORTING;
            id.oaes |= OAES_ANA_CHANGE;
            id.anacap = ANACAP_STATES;
            id.anatt = 10;
            id.anagrpmax = nn;
            id.nanagrpid = nn;
        }
        id.oncs = ONCS_COMPARE | ONCS_DSM | ONCS_WRITE_ZEROES;
        id.vwc = 1;
        id.ioccsz = (64 + self.limits.in_capsule_data_size) / 16;
        // Power state 0: 25 W maximum.
        id.psd[0][..2].copy_from_slice(&2500u16.to_le_bytes());
        id
    }

    fn identify_namespace(&self, nsid: u32) -> AdminOutcome {
        let max = self.subsys.state.lock().max_namespaces;
        if nsid == 0 || (nsid > max && nsid != u32::MAX) {
            return AdminOutcome::err(status::INVALID_NAMESPACE);
        }
        let mut id = IdentifyNamespace::new_zeroed();
        // An allocated but inactive nsid reads as zeroes.
        if let Some(ns) = self.subsys.namespace(nsid) {
            let b = ns.desc.bdev();
            id.nsze = b.num_blocks();
            id.ncap = b.num_blocks();
            id.nuse = b.num_blocks();
            id.nlbaf = 0;
            id.flbas = 0;
            id.nmic = 1;
            if self.subsys.state.lock().ana_reporting {
                id.anagrpid = ns.anagrpid;
            }
            id.dlfeat = DLFEAT_READ_ZEROES;
            id.lbaf[0].lbads = b.block_size().trailing_zeros() as u8;
            let wu = b.write_unit_blocks();
            let boundary = b.optimal_io_boundary();
            if wu > 1 {
                id.nsfeat |= NSFEAT_OPTPERF;
                id.npwg = (wu - 1).min(u16::MAX as u32) as u16;
                id.nows = id.npwg;
            }
            if boundary > 0 {
                id.noiob = boundary.min(u16::MAX as u64) as u16;
            }
            if let Some(g) = ns.nguid {
                id.nguid = g;
            }
            if let Some(e) = ns.eui64 {
                id.eui64 = e;
            }
        }
        AdminOutcome::data(id.as_bytes().to_vec())
    }

    fn get_log_page(&self, sqe: &Sqe, discovery_log: &dyn Fn(&str) -> Vec<u8>) -> AdminOutcome {
        let lid = (sqe.cdw10 & 0xff) as u8;
        let rae = sqe.cdw10 & (1 << 15) != 0;
        let numd = (((sqe.cdw11 & 0xffff) << 16) | (sqe.cdw10 >> 16)) as u64 + 1;
        let len = (numd * 4) as usize;
        let offset = sqe.cdw12 as u64 | ((sqe.cdw13 as u64) << 32);
        if len > 1 << 20 || !offset.is_multiple_of(4) {
            return AdminOutcome::err(status::INVALID_FIELD);
        }
        let page: Vec<u8> = match lid {
            lid::DISCOVERY if self.is_discovery() => discovery_log(&self.hostnqn),
            _ if self.is_discovery() => return AdminOutcome::err(status::INVALID_LOG_PAGE),
            lid::ERROR => vec![0; 64],
            lid::SMART => self.smart_log(),
            lid::FIRMWARE_SLOT => {
                let mut f = log::FirmwareSlotLog::new_zeroed();
                f.afi = 1;
                put_ascii(&mut f.frs[0], FIRMWARE);
                f.as_bytes().to_vec()
            }
            lid::CHANGED_NS_LIST => {
                let mut s = self.state.lock();
                let mut out = vec![0u8; 4096];
                for (i, id) in s.changed_ns.iter().take(1024).enumerate() {
                    out[i * 4..i * 4 + 4].copy_from_slice(&id.to_le_bytes());
                }
                if !rae {
                    s.changed_ns.clear();
                }
                out
            }
            lid::COMMAND_EFFECTS => command_effects().as_bytes().to_vec(),
            lid::ANA => self.ana_log(sqe.cdw10 & (1 << 8) != 0),
            _ => return AdminOutcome::err(status::INVALID_LOG_PAGE),
        };
        let mut out = vec![0u8; len];
        if (offset as usize) < page.len() {
            let src = &page[offset as usize..];
            let n = src.len().min(len);
            out[..n].copy_from_slice(&src[..n]);
        }
        AdminOutcome::data(out)
    }

    fn smart_log(&self) -> Vec<u8> {
        let mut s = log::SmartLog::new_zeroed();
        s.temperature = 293u16.to_le_bytes();
        s.avail_spare = 100;
        s.spare_thresh = 10;
        let (mut rb, mut wb, mut ro, mut wo, mut errs) = (0u128, 0u128, 0u128, 0u128, 0u128);
        for ns in self.subsys.namespaces() {
            if let Some(h) = strata_bdev::registry::get(ns.desc.name()) {
                let st = h.stats.snapshot();
                let r = st.by_type[IoType::Read as usize];
                let w = st.by_type[IoType::Write as usize];
                rb += r.bytes as u128;
                wb += w.bytes as u128;
                ro += r.ops as u128;
                wo += w.ops as u128;
                errs += st.errors as u128;
            }
        }
        // Data units are thousands of 512-byte units, rounded up.
        s.data_units_read = log::u128_le(rb.div_ceil(512_000));
        s.data_units_written = log::u128_le(wb.div_ceil(512_000));
        s.host_reads = log::u128_le(ro);
        s.host_writes = log::u128_le(wo);
        s.power_cycles = log::u128_le(1);
        s.power_on_hours = log::u128_le((self.created.elapsed().as_secs() / 3600) as u128);
        s.media_errors = log::u128_le(errs);
        s.as_bytes().to_vec()
    }

    /// The ANA log page as seen through this controller's listener: one descriptor per
    /// group holding a namespace (with its NSIDs unless `groups_only`).
    fn ana_log(&self, groups_only: bool) -> Vec<u8> {
        let change_count = self.subsys.state.lock().ana_change_count.max(1);
        let mut groups: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
        for n in self.subsys.namespaces() {
            groups.entry(n.anagrpid).or_default().push(n.nsid);
        }
        let mut out = Vec::with_capacity(16 + groups.len() * 32 + groups.len() * 4);
        out.extend_from_slice(&change_count.to_le_bytes());
        out.extend_from_slice(&(groups.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 6]);
        for (g, nsids) in groups {
            let state = self
                .ana
                .get(g as usize)
                .map_or(AnaState::Optimized as u8, |a| a.load(Ordering::Acquire));
            let listed = if groups_only { 0 } else { nsids.len() };
            out.extend_from_slice(&g.to_le_bytes());
            out.extend_from_slice(&(listed as u32).to_le_bytes());
            out.extend_from_slice(&change_count.to_le_bytes());
            out.push(state);
            out.extend_from_slice(&[0; 15]);
            for n in nsids.iter().take(listed) {
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
        out
    }

    fn set_features(&self, sqe: &Sqe, data_in: &[u8]) -> AdminOutcome {
        let fid = (sqe.cdw10 & 0xff) as u8;
        if sqe.cdw10 & (1 << 31) != 0 {
            return AdminOutcome::err(status::FEATURE_NOT_SAVEABLE);
        }
        let mut s = self.state.lock();
        match fid {
            feature::NUMBER_OF_QUEUES if !self.is_discovery() => {
                if s.io_queues_granted.is_some() {
                    // Only once per controller enable, as on a PCIe controller.
                    return AdminOutcome::err(status::COMMAND_SEQUENCE_ERROR);
                }
                let req = (sqe.cdw11 & 0xffff).max(sqe.cdw11 >> 16) as u16;
                if req == u16::MAX {
                    return AdminOutcome::err(status::INVALID_FIELD);
                }
                let granted = req.min(self.limits.max_io_qpairs.max(1) - 1);
                s.io_queues_granted = Some(granted);
                AdminOutcome {
                    status: Some(Status::SUCCESS),
                    dw0: granted as u32 | ((granted as u32) << 16),
                    ..Default::default()
                }
            }
            feature::ASYNC_EVENT_CONFIG => {
                s.async_event_config = sqe.cdw11;
                AdminOutcome::ok()
            }
            feature::KEEP_ALIVE_TIMER => {
                self.kato_ms.store(sqe.cdw11, Ordering::Relaxed);
                self.touch_keepalive();
                AdminOutcome::ok()
            }
            feature::VOLATILE_WRITE_CACHE if !self.is_discovery() => {
                s.volatile_write_cache = sqe.cdw11 & 1 != 0;
                AdminOutcome::ok()
            }
            feature::TIMESTAMP if !self.is_discovery() => {
                if data_in.len() < 8 {
                    return AdminOutcome::err(status::INVALID_FIELD);
                }
                let mut ts = [0u8; 8];
                ts[..6].copy_from_slice(&data_in[..6]);
                s.timestamp_base = Some((u64::from_le_bytes(ts), Instant::now()));
                AdminOutcome::ok()
            }
            feature::HOST_BEHAVIOR if !self.is_discovery() => {
                let n = data_in.len().min(512);
                s.host_behavior[..n].copy_from_slice(&data_in[..n]);
                AdminOutcome::ok()
            }
            feature::ARBITRATION
            | feature::POWER_MANAGEMENT
            | feature::TEMPERATURE_THRESHOLD
            | feature::ERROR_RECOVERY
                if !self.is_discovery() =>
            {
                AdminOutcome::ok()
            }
            _ => AdminOutcome::err(status::INVALID_FIELD),
        }
    }

    fn get_features(&self, sqe: &Sqe) -> AdminOutcome {
        let fid = (sqe.cdw10 & 0xff) as u8;
        let sel = (sqe.cdw10 >> 8) & 7;
        if sel == 3 {
            // Supported capabilities: changeable, not saveable.
            return AdminOutcome {
                status: Some(Status::SUCCESS),
                dw0: 0b100,
                ..Default::default()
            };
        }
        let s = self.state.lock();
        let dw0 = match fid {
            feature::NUMBER_OF_QUEUES if !self.is_discovery() => {
                let g = s
                    .io_queues_granted
                    .unwrap_or(self.limits.max_io_qpairs.max(1) - 1) as u32;
                g | (g << 16)
            }
            feature::ASYNC_EVENT_CONFIG => s.async_event_config,
            feature::KEEP_ALIVE_TIMER => self.kato_ms.load(Ordering::Relaxed),
            feature::VOLATILE_WRITE_CACHE if !self.is_discovery() => s.volatile_write_cache as u32,
            feature::TEMPERATURE_THRESHOLD if !self.is_discovery() => 343,
            feature::ARBITRATION | feature::POWER_MANAGEMENT | feature::ERROR_RECOVERY
                if !self.is_discovery() =>
            {
                0
            }
            feature::TIMESTAMP if !self.is_discovery() => {
                let now_ms = match s.timestamp_base {
                    Some((base, at)) => base + at.elapsed().as_millis() as u64,
                    None => std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                };
                let mut v = (now_ms & 0xffff_ffff_ffff).to_le_bytes().to_vec();
                // Attributes: timestamp set by a host (bit 1) or not.
                v[6] = if s.timestamp_base.is_some() { 0x02 } else { 0 };
                return AdminOutcome::data(v);
            }
            feature::HOST_BEHAVIOR if !self.is_discovery() => {
                return AdminOutcome::data(s.host_behavior.to_vec())
            }
            _ => return AdminOutcome::err(status::INVALID_FIELD),
        };
        AdminOutcome {
            status: Some(Status::SUCCESS),
            dw0,
            ..Default::default()
        }
    }
}

/// The Commands Supported and Effects log.
pub fn command_effects() -> log::CommandEffectsLog {
    use crate::spec::cmd::io;
    let mut l = log::CommandEffectsLog::new_zeroed();
    for op in [
        admin::GET_LOG_PAGE,
        admin::IDENTIFY,
        admin::ABORT,
        admin::SET_FEATURES,
        admin::GET_FEATURES,
        admin::ASYNC_EVENT_REQUEST,
        admin::KEEP_ALIVE,
    ] {
        l.acs[op as usize] = log::CSE_CSUPP;
    }
    for op in [io::FLUSH, io::READ, io::COMPARE, io::VENDOR_CHECKSUM] {
        l.iocs[op as usize] = log::CSE_CSUPP;
    }
    for op in [
        io::WRITE,
        io::WRITE_ZEROES,
        io::DATASET_MANAGEMENT,
        io::VENDOR_XOR_WRITE,
        io::VENDOR_GF_XOR_WRITE,
    ] {
        l.iocs[op as usize] = log::CSE_CSUPP | log::CSE_LBCC;
    }
    l
}
