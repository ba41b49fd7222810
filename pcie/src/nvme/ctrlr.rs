//! One NVMe controller driven through vfio: bring-up (reset, admin queue, enable, Identify,
//! queue count), the admin queue (commands run synchronously under a lock: they are rare,
//! the I/O path never takes it), I/O queue ids and MSI-X vectors handed to reactors, and
//! failure: bus mastering off first, so no I/O buffer is touched by the device once the
//! driver has given it back.

use super::cmd::Command;
use super::regs::{self, Cap};
use crate::dma::{IovaMap, QueueMemory};
use crate::vfio::{Bar, Bdf, Device, Sysfs};
use crate::PcieError;
use parking_lot::Mutex;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};
use strata_nvmf::spec::identify::{IdentifyController, IdentifyNamespace};
use strata_nvmf::spec::{Cqe, Status};
use zerocopy::FromBytes;

const ADMIN_ENTRIES: u16 = 32;
/// Admin queue memory: SQ page, CQ page, one data page (Identify).
const ADMIN_SQ: usize = 0;
const ADMIN_CQ: usize = 4096;
const ADMIN_DATA: usize = 8192;
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Registers and doorbells: enough for 1024 queues at the smallest stride.
const BAR_MAP_LEN: usize = 0x1000 + 1024 * 8;
/// Largest I/O queue the driver makes.
pub const MAX_IO_ENTRIES: u32 = 256;

/// Where a controller is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Live = 0,
    /// Failed (CSTS.CFS, a timeout the abort did not clear, a bad completion); bus mastering
    /// is off; being reset.
    Failed = 1,
    /// Gone: detached, hot-removed, or failed beyond reset.
    Removed = 2,
}

/// An active namespace with a format the driver serves (no metadata).
#[derive(Debug, Clone)]
pub struct Namespace {
    pub nsid: u32,
    pub blocks: u64,
    pub block_size: u32,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
}

struct AdminQueue {
    mem: QueueMemory,
    sq_tail: u16,
    cq_head: u16,
    phase: bool,
    next_cid: u16,
}

pub struct Controller {
    pub name: String,
    pub bdf: Bdf,
    pub dev: Device,
    pub bar: Bar,
    pub cap: Cap,
    pub stride: usize,
    pub iova: Mutex<IovaMap>,
    admin: Mutex<Option<AdminQueue>>,
    /// Serialises the state changes (fail, reset, shutdown, removal), so none undoes
    /// another's half-done work (a reset must not make live a controller failed meanwhile).
    lifecycle: Mutex<()>,
    state: AtomicU8,
    /// Bumped each time the controller is reset: queues made before belong to the old
    /// controller and are made again.
    epoch: AtomicU64,
    /// A reactor saw something only a reset clears (an abort that did not help, a bad
    /// completion); the control thread resets.
    pub reset_requested: AtomicBool,
    /// Commands that outlived `timeout_us`, Aborts sent for them, and resets: shown by
    /// `bdev_nvme_get_controllers`.
    pub timeouts: AtomicU64,
    pub aborts: AtomicU64,
    pub resets: AtomicU64,
    /// Commands whose data went as an SGL, and through a bounce buffer (a copy): how often
    /// the I/O's buffers could not go to the device as PRPs.
    pub sgl_commands: AtomicU64,
    pub bounced_commands: AtomicU64,
    /// I/O queue ids free for reactors (1..=granted).
    qids: Mutex<Vec<u16>>,
    /// One eventfd per MSI-X vector (vector 0, the admin queue's, has none).
    vectors: Vec<Option<OwnedFd>>,
    pub id: IdentifyInfo,
    pub namespaces: Vec<Namespace>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("name", &self.name)
            .field("bdf", &self.bdf)
            .finish()
    }
}

/// What Identify Controller said that the driver uses.
#[derive(Debug, Clone, Default)]
pub struct IdentifyInfo {
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Largest transfer in bytes (MDTS), capped by what one PRP list page describes.
    pub max_transfer: usize,
    pub oncs: u16,
    pub volatile_write_cache: bool,
    pub io_queues: u16,
    pub sgl: super::prp::SglSupport,
}

/// I/O queue pairs a Set Features (Number of Queues) completion grants: the smaller of
/// the 0-based submission and completion counts, plus one.
fn granted_queues(dw0: u32) -> u16 {
    ((dw0 & 0xffff).min(dw0 >> 16) + 1).min(u16::MAX as u32) as u16
}

/// Waits until CSTS.RDY is `ready`, for at most CAP.TO: a controller that never gets
/// there, reports a fatal status while enabling, or reads all ones (gone) is refused.
fn wait_ready(
    bdf: &Bdf,
    csts: impl Fn() -> u32,
    ready: bool,
    timeout_ms: u64,
) -> Result<(), PcieError> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let v = csts();
        if v == u32::MAX {
            return Err(PcieError::Controller(format!(
                "{bdf}: device gone (CSTS all ones)"
            )));
        }
        if ready && v & regs::CSTS_CFS != 0 {
            return Err(PcieError::Controller(format!(
                "{bdf}: controller fatal status while enabling"
            )));
        }
        if (v & regs::CSTS_RDY != 0) == ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(PcieError::Controller(format!(
                "{bdf}: CSTS.RDY did not become {} within CAP.TO ({timeout_ms} ms)",
                ready as u8
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Has every reactor run a message (so none is in the middle of a poller). False if there
/// is no global reactor set or one did not answer.
fn reactor_barrier() -> bool {
    let Some(f) = strata_reactor::framework() else {
        return false;
    };
    (0..f.len()).all(|i| f.call_timeout(i, Duration::from_secs(5), || ()).is_ok())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

impl Controller {
    /// Opens `bdf` through vfio and brings the controller up with `want_queues` I/O queues.
    pub fn attach(name: &str, bdf: &Bdf, want_queues: u16) -> Result<Controller, PcieError> {
        let dev = Device::open(&Sysfs::default(), bdf)?;
        // The whole BAR where it can be mapped (doorbells of every queue), else the
        // registers and the first doorbells (the MSI-X table may follow, not always
        // mappable).
        let bar = dev
            .map_bar(0, usize::MAX)
            .or_else(|_| dev.map_bar(0, BAR_MAP_LEN))?;
        let cap = Cap(bar.read64(regs::CAP));
        if cap.0 == u64::MAX {
            return Err(PcieError::Controller(format!(
                "{bdf}: registers read all ones"
            )));
        }
        if !cap.nvm_command_set() || cap.min_page_size() > 4096 {
            return Err(PcieError::Controller(format!(
                "{bdf}: needs the NVM command set and 4 KiB pages (CAP {:#x})",
                cap.0
            )));
        }
        let mut iova = IovaMap::new();
        iova.map_pools(&dev.container)?;
        let mem = QueueMemory::new(&mut iova, &dev.container, 3 * 4096)?;
        // One vector per I/O queue (and vector 0 for the admin queue), as many as exist.
        let nvec = dev.msix_vectors().min(want_queues as u32 + 1).min(256) as usize;
        let mut vectors: Vec<Option<OwnedFd>> = Vec::with_capacity(nvec);
        for v in 0..nvec {
            vectors.push(if v == 0 {
                None
            } else {
                Some(crate::vfio::eventfd()?)
            });
        }
        let mut c = Controller {
            name: name.to_string(),
            bdf: bdf.clone(),
            stride: cap.doorbell_stride(),
            cap,
            iova: Mutex::new(iova),
            admin: Mutex::new(Some(AdminQueue {
                mem,
                sq_tail: 0,
                cq_head: 0,
                phase: true,
                next_cid: 0,
            })),
            lifecycle: Mutex::new(()),
            state: AtomicU8::new(State::Live as u8),
            epoch: AtomicU64::new(0),
            reset_requested: AtomicBool::new(false),
            timeouts: AtomicU64::new(0),
            aborts: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            sgl_commands: AtomicU64::new(0),
            bounced_commands: AtomicU64::new(0),
            qids: Mutex::new(Vec::new()),
            vectors,
            id: IdentifyInfo::default(),
            namespaces: Vec::new(),
            dev,
            bar,
        };
        if c.vectors.len() > 1 {
            let fds: Vec<_> = c
                .vectors
                .iter()
                .map(|f| f.as_ref().map(|f| f.as_fd()))
                .collect();
            c.dev.set_msix(&fds)?;
        }
        c.enable()?;
        c.identify(want_queues)?;
        Ok(c)
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Live,
            1 => State::Failed,
            _ => State::Removed,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Disables the controller (CC.EN = 0) and waits for CSTS.RDY to clear.
    fn disable(&self) -> Result<(), PcieError> {
        let cc = self.bar.read32(regs::CC);
        if cc & regs::CC_EN != 0 {
            self.bar.write32(regs::CC, cc & !regs::CC_EN);
        }
        self.wait_ready(false)
    }

    fn wait_ready(&self, ready: bool) -> Result<(), PcieError> {
        wait_ready(
            &self.bdf,
            || self.bar.read32(regs::CSTS),
            ready,
            self.cap.ready_timeout_ms(),
        )
    }

    /// Reset and enable: disable, program the admin queue, enable, bus mastering on.
    fn enable(&self) -> Result<(), PcieError> {
        self.disable()?;
        self.dev.enable_bus_master()?;
        let mut g = self.admin.lock();
        let a = g
            .as_mut()
            .ok_or_else(|| PcieError::Controller("admin queue released".into()))?;
        a.mem.zero();
        a.sq_tail = 0;
        a.cq_head = 0;
        a.phase = true;
        let n = ADMIN_ENTRIES as u32 - 1;
        self.bar.write32(regs::AQA, (n << 16) | n);
        self.bar.write64(regs::ASQ, a.mem.iova + ADMIN_SQ as u64);
        self.bar.write64(regs::ACQ, a.mem.iova + ADMIN_CQ as u64);
        drop(g);
        self.bar
            .write32(regs::CC, regs::CC_IOSQES_IOCQES | regs::CC_EN);
        self.wait_ready(true)
    }

    /// Runs one admin command; its data page (if any) is the admin data page.
    pub fn admin(&self, cmd: Command) -> Result<Cqe, PcieError> {
        let mut g = self.admin.lock();
        let a = g
            .as_mut()
            .ok_or_else(|| PcieError::Controller("admin queue released".into()))?;
        self.admin_locked(a, cmd)
    }

    fn admin_locked(&self, a: &mut AdminQueue, mut cmd: Command) -> Result<Cqe, PcieError> {
        if self.state() == State::Removed {
            return Err(PcieError::Controller(format!("{} is removed", self.name)));
        }
        cmd.cid = a.next_cid;
        a.next_cid = a.next_cid.wrapping_add(1);
        a.mem.store(ADMIN_SQ + a.sq_tail as usize * 64, cmd);
        a.sq_tail = (a.sq_tail + 1) % ADMIN_ENTRIES;
        std::sync::atomic::fence(Ordering::SeqCst);
        self.bar
            .write32(regs::sq_doorbell(0, self.stride), a.sq_tail as u32);
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        let epoch = self.epoch();
        loop {
            let off = ADMIN_CQ + a.cq_head as usize * 16;
            let st = a.mem.load_u16(off + 14);
            if (st & 1 != 0) == a.phase {
                std::sync::atomic::fence(Ordering::Acquire);
                let cqe: Cqe = a.mem.load(off).unwrap_or_default();
                a.cq_head += 1;
                if a.cq_head == ADMIN_ENTRIES {
                    a.cq_head = 0;
                    a.phase = !a.phase;
                }
                self.bar
                    .write32(regs::cq_doorbell(0, self.stride), a.cq_head as u32);
                if cqe.cid != cmd.cid {
                    // A late answer to a command that timed out: skip it.
                    tracing::warn!(ctrlr = %self.name, cid = cqe.cid, "stale admin completion");
                    continue;
                }
                let s = Status::from_cqe_status(cqe.status);
                if !s.is_success() {
                    return Err(PcieError::Status {
                        opcode: cmd.opcode,
                        sct: s.sct,
                        sc: s.sc,
                    });
                }
                return Ok(cqe);
            }
            if Instant::now() > deadline {
                return Err(PcieError::Controller(format!(
                    "{}: admin command {:#04x} timed out",
                    self.name, cmd.opcode
                )));
            }
            if self.bar.read32(regs::CSTS) & regs::CSTS_CFS != 0 {
                return Err(PcieError::Controller(format!(
                    "{}: controller fatal status",
                    self.name
                )));
            }
            // Failed, removed or being reset meanwhile: no answer is coming.
            if self.epoch() != epoch {
                return Err(PcieError::Controller(format!(
                    "{}: controller disabled during an admin command",
                    self.name
                )));
            }
            std::hint::spin_loop();
        }
    }

    /// An admin command that returns a 4 KiB data page.
    fn admin_data(&self, cmd: impl FnOnce(u64) -> Command) -> Result<Box<[u8; 4096]>, PcieError> {
        let mut g = self.admin.lock();
        let a = g
            .as_mut()
            .ok_or_else(|| PcieError::Controller("admin queue released".into()))?;
        a.mem.write_bytes(ADMIN_DATA, &[0u8; 4096]);
        let c = cmd(a.mem.iova + ADMIN_DATA as u64);
        self.admin_locked(a, c)?;
        let mut out = Box::new([0u8; 4096]);
        a.mem.read_bytes(ADMIN_DATA, &mut out[..]);
        Ok(out)
    }

    fn identify(&mut self, want_queues: u16) -> Result<(), PcieError> {
        let d = self.admin_data(Command::identify_controller)?;
        let idc = IdentifyController::read_from_bytes(&d[..])
            .map_err(|_| PcieError::Controller("Identify Controller".into()))?;
        // MDTS is in units of the minimum page size; one PRP list page holds 512 entries.
        let mdts = if idc.mdts == 0 || idc.mdts > 20 {
            usize::MAX
        } else {
            4096usize << idc.mdts
        };
        self.id = IdentifyInfo {
            serial: text(&idc.sn),
            model: text(&idc.mn),
            firmware: text(&idc.fr),
            // A bounce buffer must fit one pool buffer.
            max_transfer: mdts
                .min(128 << 10)
                .min(strata_reactor::dma::max_buf_size().max(4096)),
            oncs: idc.oncs,
            volatile_write_cache: idc.vwc & 1 != 0,
            io_queues: 0,
            sgl: super::prp::SglSupport::from_identify(idc.sgls),
        };
        let cqe = self.admin(Command::set_queue_count(want_queues))?;
        // Only queues whose doorbells lie inside the mapped registers are usable.
        let fit = ((self.bar.len().saturating_sub(regs::DOORBELLS) / (2 * self.stride)) as u32)
            .saturating_sub(1)
            .min(u16::MAX as u32) as u16;
        let granted = granted_queues(cqe.dw0).min(want_queues).min(fit);
        if granted == 0 {
            return Err(PcieError::Controller(format!(
                "{}: no I/O queue available",
                self.name
            )));
        }
        self.id.io_queues = granted;
        *self.qids.lock() = (1..=granted).rev().collect();
        let list = self.admin_data(Command::active_namespaces)?;
        for ch in list.chunks_exact(4) {
            let nsid = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]);
            if nsid == 0 {
                break;
            }
            let d = self.admin_data(|p| {
                Command::identify(strata_nvmf::spec::cmd::cns::NAMESPACE, nsid, p)
            })?;
            let ns = IdentifyNamespace::read_from_bytes(&d[..])
                .map_err(|_| PcieError::Controller("Identify Namespace".into()))?;
            let fmt = ((ns.flbas & 0xf) | ((ns.flbas >> 1) & 0x30)) as usize;
            let lbaf = ns.lbaf.get(fmt).copied().unwrap_or_default();
            if lbaf.ms != 0 || !(9..=16).contains(&lbaf.lbads) || ns.nsze == 0 {
                tracing::warn!(ctrlr = %self.name, nsid, ms = lbaf.ms, lbads = lbaf.lbads,
                    "namespace skipped: formats with metadata or unusual block sizes are not served");
                continue;
            }
            self.namespaces.push(Namespace {
                nsid,
                blocks: ns.nsze,
                block_size: 1 << lbaf.lbads,
                nguid: ns.nguid,
                eui64: ns.eui64,
            });
        }
        tracing::info!(ctrlr = %self.name, bdf = %self.bdf, model = %self.id.model,
            serial = %self.id.serial, io_queues = granted, vectors = self.vectors.len(),
            max_transfer = self.id.max_transfer, namespaces = self.namespaces.len(),
            "NVMe PCIe controller attached");
        Ok(())
    }

    /// Takes a free I/O queue id.
    pub fn take_qid(&self) -> Option<u16> {
        self.qids.lock().pop()
    }

    pub fn give_qid(&self, qid: u16) {
        let mut q = self.qids.lock();
        if !q.contains(&qid) {
            q.push(qid);
        }
    }

    /// The eventfd of the MSI-X vector queue `qid` raises, if it has one of its own.
    pub fn vector_fd(&self, qid: u16) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.vectors.get(qid as usize)?.as_ref().map(|f| f.as_fd())
    }

    /// I/O queue entries: what the controller allows, at most [`MAX_IO_ENTRIES`].
    pub fn io_entries(&self) -> u16 {
        self.cap.max_queue_entries().min(MAX_IO_ENTRIES) as u16
    }

    /// Stops all DMA and marks the controller failed. Reactors then complete their
    /// outstanding I/O with an error: safe, since the device can no longer touch them.
    pub fn fail(&self, why: &str) {
        let _l = self.lifecycle.lock();
        if self.state() == State::Removed {
            return;
        }
        tracing::error!(ctrlr = %self.name, bdf = %self.bdf, reason = why, "controller failed: I/O in flight fails");
        self.state.store(State::Failed as u8, Ordering::Release);
        self.quiesce();
    }

    /// Bus mastering off and the controller disabled, then a new epoch: queues of the old
    /// one are dead. Called with the lifecycle lock held.
    fn quiesce(&self) {
        if let Err(e) = self.dev.disable_bus_master() {
            tracing::warn!(ctrlr = %self.name, error = %e, "could not turn bus mastering off");
        }
        let cc = self.bar.read32(regs::CC);
        if cc != u32::MAX {
            self.bar.write32(regs::CC, cc & !regs::CC_EN);
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Brings a failed controller back: the admin queue is programmed again and queues are
    /// made again by their reactors once it is live (the new epoch tells them).
    pub fn reset(&self) -> Result<(), PcieError> {
        let _l = self.lifecycle.lock();
        if self.state() == State::Removed {
            return Err(PcieError::Controller(format!("{} is removed", self.name)));
        }
        self.state.store(State::Failed as u8, Ordering::Release);
        self.quiesce();
        self.enable()?;
        let cqe = self.admin(Command::set_queue_count(self.id.io_queues))?;
        if granted_queues(cqe.dw0) < self.id.io_queues {
            return Err(PcieError::Controller(format!(
                "{}: after reset only {} I/O queues",
                self.name,
                granted_queues(cqe.dw0)
            )));
        }
        self.reset_requested.store(false, Ordering::Release);
        self.resets.fetch_add(1, Ordering::Relaxed);
        self.state.store(State::Live as u8, Ordering::Release);
        tracing::info!(ctrlr = %self.name, "controller reset: I/O resumes");
        Ok(())
    }

    /// Normal shutdown (CC.SHN), then disabled, bus mastering off: the controller is done.
    pub fn shutdown(&self) {
        let _l = self.lifecycle.lock();
        if self.state() != State::Removed {
            let cc = self.bar.read32(regs::CC);
            if cc != u32::MAX && cc & regs::CC_EN != 0 {
                self.bar.write32(regs::CC, cc | regs::CC_SHN_NORMAL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while self.bar.read32(regs::CSTS) & regs::CSTS_SHST_MASK != regs::CSTS_SHST_COMPLETE
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        self.state.store(State::Removed as u8, Ordering::Release);
        self.quiesce();
        self.dev.disable_msix();
    }

    /// Marks the controller removed (the device is going away, or failed beyond reset):
    /// DMA off, I/O fails.
    pub fn mark_removed(&self) {
        let _l = self.lifecycle.lock();
        self.state.store(State::Removed as u8, Ordering::Release);
        self.quiesce();
    }

    /// CSTS now: `None` when the device no longer answers.
    pub fn status(&self) -> Option<u32> {
        let v = self.bar.read32(regs::CSTS);
        (v != u32::MAX).then_some(v)
    }

    /// Gives the device back to the kernel now, though reactors may still hold queue pairs
    /// (a host keeps a namespace's channel until it disconnects): once the state is Removed
    /// and every reactor has run a message, no reactor is inside a register access and none
    /// starts one, so the registers can be unmapped and the device closed. Does nothing
    /// (the last reference closes it) when the reactors cannot be reached.
    pub fn release_device(&self) {
        if self.state() != State::Removed || !reactor_barrier() {
            return;
        }
        // Admin commands run under this lock; none is in flight while it is held.
        let _admin = self.admin.lock();
        // SAFETY: the state is Removed (stored before the barrier); every reactor ran a
        // message since, so none is inside a register access begun while the controller
        // looked usable, and none starts one (each access path checks the state first).
        // Other threads reach the registers only through admin commands (excluded by the
        // lock above) or are this one.
        unsafe { self.bar.revoke() };
        self.dev.release();
        tracing::info!(ctrlr = %self.name, bdf = %self.bdf, "device given back to the kernel");
    }

    /// Unmaps the DMA memory (after shutdown).
    pub fn release_memory(&self) {
        let mut g = self.admin.lock();
        if let Some(a) = g.take() {
            a.mem.release(&mut self.iova.lock(), &self.dev.container);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn granted_queue_counts() {
        assert_eq!(granted_queues(0x0003_0007), 4);
        assert_eq!(granted_queues(0), 1);
        assert_eq!(granted_queues(0xffff_ffff), u16::MAX);
    }

    #[test]
    fn a_controller_that_never_gets_ready_is_refused_after_cap_to() {
        let bdf = Bdf::parse("01:00.0").unwrap();
        let t0 = Instant::now();
        let e = wait_ready(&bdf, || 0, true, 50).unwrap_err().to_string();
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert!(e.contains("did not become 1 within CAP.TO (50 ms)"), "{e}");
        let e = wait_ready(&bdf, || u32::MAX, true, 50)
            .unwrap_err()
            .to_string();
        assert!(e.contains("device gone"), "{e}");
        let e = wait_ready(&bdf, || regs::CSTS_CFS, true, 50)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fatal status"), "{e}");
        assert!(wait_ready(&bdf, || regs::CSTS_RDY, true, 50).is_ok());
        assert!(wait_ready(&bdf, || 0, false, 50).is_ok());
        // Disabling: a fatal status does not stop RDY from clearing.
        assert!(wait_ready(&bdf, || regs::CSTS_CFS, false, 50).is_ok());
    }
}
