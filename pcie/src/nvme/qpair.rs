//! A reactor's I/O queue pair on a controller: its own SQ/CQ (no locks on the data path),
//! PRP lists built from the I/O's own buffers, completions reaped by the reactor's poller
//! (phase bit), woken by the queue's MSI-X eventfd in interrupt mode.
//!
//! An I/O larger than the controller's transfer limit is split into several commands and
//! completes when the last one does. Buffers the PRP rules cannot describe go as an SGL
//! where the controller supports one, else through a bounce buffer from the (IOMMU-mapped)
//! pools. A command outstanding longer than
//! `bdev_nvme_set_options timeout_us` is aborted; one that outlives the abort has the
//! controller reset. Whenever the controller is failed or reset (a new epoch), the queue's
//! outstanding I/O fails -- the device's bus mastering is already off -- and the queue is
//! made again once the controller is live.

use super::cmd::{io_status, sgl_data_block, Command, DsmRange, SglDescriptor, SGL_LAST_SEGMENT};
use super::ctrlr::{Controller, State};
use super::prp::{self, PrpEntries, PAGE};
use super::regs;
use crate::dma::{Mapping, QueueMemory};
use crate::PcieError;
use smallvec::SmallVec;
use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use strata_bdev::{BdevError, BdevIo, IoStatus, IoType};
use strata_nvmf::spec::{Cqe, Status};
use strata_reactor::dma::DmaBuf;
use strata_reactor::{clock, PollerHandle};

/// Blocks one Write Zeroes command covers at most (NLB is 16 bits, 0-based).
const MAX_ZEROES_BLOCKS: u64 = 1 << 16;
/// Ranges one Dataset Management command carries (one PRP page of 16-byte ranges).
const MAX_DSM_RANGES: usize = 256;

struct Bounce {
    buf: DmaBuf,
    /// Where its bytes belong in the I/O's buffers.
    io_off: usize,
    read: bool,
}

#[derive(Default)]
struct Slot {
    active: bool,
    req: u16,
    submitted: u64,
    aborted: bool,
    bounce: Option<Bounce>,
}

struct Req {
    io: Option<BdevIo>,
    remaining: u32,
    status: IoStatus,
}

struct HwQueue {
    qid: u16,
    entries: u16,
    mem: QueueMemory,
    cq_off: usize,
    prp_off: usize,
    sq_tail: u16,
    /// Commands written since the SQ tail doorbell was last rung.
    sq_dirty: bool,
    cq_head: u16,
    phase: bool,
    epoch: u64,
}

#[inline]
fn ring_sq(c: &Controller, hw: &mut HwQueue) {
    // The entries must be in memory before the device reads the new tail.
    std::sync::atomic::fence(Ordering::SeqCst);
    c.bar
        .write32(regs::sq_doorbell(hw.qid, c.stride), hw.sq_tail as u32);
    hw.sq_dirty = false;
}

struct State_ {
    hw: Option<HwQueue>,
    qid: u16,
    slots: Vec<Slot>,
    free_slots: Vec<u16>,
    reqs: Vec<Req>,
    free_reqs: Vec<u16>,
    /// This reactor's copy of the controller's IOVA mappings (refreshed on a miss).
    maps: Vec<Mapping>,
    interrupts: bool,
    /// The reactor may sleep between turns (interrupt mode).
    reactor_sleeps: bool,
    /// Earliest tick for another attempt at making the queue after one failed.
    next_create: u64,
    outstanding: u64,
    pieces: Vec<(u64, usize)>,
    prps: PrpEntries,
}

/// One planned command of an I/O.
struct Planned {
    slot: u16,
    cmd: Command,
}

pub struct QueuePair {
    ctrlr: Arc<Controller>,
    st: RefCell<State_>,
    /// I/O finished by the poller, completed once the state is no longer borrowed.
    done: RefCell<Vec<(BdevIo, IoStatus)>>,
    pollers: RefCell<Vec<PollerHandle>>,
    /// Inside `poll`: submissions from completions leave the doorbell to its end.
    in_poll: std::cell::Cell<bool>,
}

thread_local! {
    static QPAIRS: RefCell<Vec<(usize, Weak<QueuePair>)>> = const { RefCell::new(Vec::new()) };
}

/// This reactor's queue pair on `ctrlr`, made on first use.
pub fn get_or_create(ctrlr: &Arc<Controller>) -> Result<Rc<QueuePair>, BdevError> {
    let key = Arc::as_ptr(ctrlr) as usize;
    if let Some(q) = QPAIRS.with(|m| {
        let mut m = m.borrow_mut();
        m.retain(|(_, w)| w.strong_count() > 0);
        m.iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, w)| w.upgrade())
    }) {
        return Ok(q);
    }
    let q = QueuePair::new(ctrlr.clone())?;
    QPAIRS.with(|m| m.borrow_mut().push((key, Rc::downgrade(&q))));
    Ok(q)
}

fn timeout_ticks() -> u64 {
    let us = strata_nvmf::remote::options().timeout_us;
    if us == 0 {
        0
    } else {
        clock::duration_to_ticks(Duration::from_micros(us))
    }
}

impl QueuePair {
    fn new(ctrlr: Arc<Controller>) -> Result<Rc<QueuePair>, BdevError> {
        let qid = ctrlr.take_qid().ok_or_else(|| {
            BdevError::Invalid(format!(
                "controller {}: all {} I/O queues are in use (one per reactor)",
                ctrlr.name, ctrlr.id.io_queues
            ))
        })?;
        let interrupts = strata_reactor::in_interrupt_mode() && ctrlr.vector_fd(qid).is_some();
        let slots_n = ctrlr.io_entries() as usize - 1;
        let maps = ctrlr.iova.lock().mappings().to_vec();
        let q = Rc::new(QueuePair {
            st: RefCell::new(State_ {
                hw: None,
                qid,
                slots: (0..slots_n).map(|_| Slot::default()).collect(),
                free_slots: (0..slots_n as u16).rev().collect(),
                reqs: (0..slots_n)
                    .map(|_| Req {
                        io: None,
                        remaining: 0,
                        status: IoStatus::Success,
                    })
                    .collect(),
                free_reqs: (0..slots_n as u16).rev().collect(),
                maps,
                interrupts,
                reactor_sleeps: strata_reactor::in_interrupt_mode(),
                next_create: 0,
                outstanding: 0,
                pieces: Vec::with_capacity(64),
                prps: PrpEntries::new(),
            }),
            done: RefCell::new(Vec::with_capacity(slots_n)),
            pollers: RefCell::new(Vec::new()),
            in_poll: std::cell::Cell::new(false),
            ctrlr,
        });
        {
            // A controller being reset gets the queue once it is live again (sync_epoch).
            let mut st = q.st.borrow_mut();
            if q.ctrlr.state() == State::Live {
                if let Err(e) = q.create_hw(&mut st) {
                    drop(st);
                    q.ctrlr.give_qid(qid);
                    return Err(e);
                }
            }
        }
        let name = format!("nvme_pcie_{}_q{qid}", q.ctrlr.name);
        let w = Rc::downgrade(&q);
        let poll = move || w.upgrade().is_some_and(|q| q.poll());
        let main = if interrupts {
            let fd = q.ctrlr.vector_fd(qid).map(|f| f.as_raw_fd()).unwrap_or(-1);
            strata_reactor::register_fd_poller(&name, fd, poll)
        } else if strata_reactor::in_interrupt_mode() {
            // No vector of its own: a shared one could wake another reactor instead.
            strata_reactor::register_periodic_poller(&name, Duration::from_millis(1), poll)
        } else {
            strata_reactor::register_poller(&name, poll)
        }
        .map_err(|e| BdevError::Invalid(e.to_string()))?;
        let w = Rc::downgrade(&q);
        let watchdog = strata_reactor::register_periodic_poller(
            &format!("{name}_watchdog"),
            Duration::from_millis(250),
            move || w.upgrade().is_some_and(|q| q.watchdog()),
        )
        .map_err(|e| BdevError::Invalid(e.to_string()))?;
        q.pollers.borrow_mut().extend([main, watchdog]);
        Ok(q)
    }

    /// Makes the queue's SQ and CQ on the controller.
    fn create_hw(&self, st: &mut State_) -> Result<(), BdevError> {
        let c = &self.ctrlr;
        let entries = c.io_entries();
        let sq_len = entries as usize * 64;
        let cq_off = sq_len.div_ceil(4096) * 4096;
        let prp_off = cq_off + (entries as usize * 16).div_ceil(4096) * 4096;
        let len = prp_off + entries as usize * PAGE as usize;
        let epoch = c.epoch();
        let mem = QueueMemory::new(&mut c.iova.lock(), &c.dev.container, len)
            .map_err(|e| BdevError::Invalid(e.to_string()))?;
        let qid = st.qid;
        let vector = if c.vector_fd(qid).is_some() { qid } else { 0 };
        let create = || {
            c.admin(Command::create_cq(
                qid,
                entries,
                mem.iova + cq_off as u64,
                vector,
                st.interrupts,
            ))
            .and_then(|_| {
                c.admin(Command::create_sq(qid, entries, mem.iova, qid))
                    .inspect_err(|_| {
                        let _ = c.admin(Command::delete_cq(qid));
                    })
            })
        };
        let mut made = create();
        if let Err(PcieError::Status { sct: 1, sc: 1, .. }) = made {
            // Invalid queue identifier: a queue of this id outlived a reset that raced
            // its creation. Delete it and make ours.
            let _ = c.admin(Command::delete_sq(qid));
            let _ = c.admin(Command::delete_cq(qid));
            made = create();
        }
        if let Err(e) = made {
            mem.release(&mut c.iova.lock(), &c.dev.container);
            return Err(BdevError::Invalid(format!(
                "{}: I/O queue {qid}: {e}",
                c.name
            )));
        }
        tracing::debug!(ctrlr = %c.name, qid, entries, interrupts = st.interrupts, "I/O queue pair created");
        st.hw = Some(HwQueue {
            qid,
            entries,
            mem,
            cq_off,
            prp_off,
            sq_tail: 0,
            sq_dirty: false,
            cq_head: 0,
            phase: true,
            epoch,
        });
        Ok(())
    }

    pub fn outstanding(&self) -> u64 {
        self.st.borrow().outstanding
    }

    /// Brings the queue in line with the controller's epoch: outstanding I/O of an older
    /// epoch fails (the device's DMA is already off), and a live controller gets the queue
    /// made again.
    fn sync_epoch(&self, st: &mut State_) {
        let epoch = self.ctrlr.epoch();
        let stale = st.hw.as_ref().is_none_or(|h| h.epoch != epoch);
        if !stale {
            return;
        }
        let status = if self.ctrlr.state() == State::Removed {
            IoStatus::Removed
        } else {
            IoStatus::Failed
        };
        for i in 0..st.slots.len() {
            if st.slots[i].active {
                self.finish_slot(st, i as u16, status);
            }
        }
        // Completed from the deferred poller: this may run inside `submit`, whose caller
        // does not expect other I/O to complete under it, and nothing else may come to
        // drain the done list (no I/O is outstanding any more).
        for (io, s) in self.done.borrow_mut().drain(..) {
            io.complete_deferred(s);
        }
        if let Some(h) = st.hw.take() {
            h.mem
                .release(&mut self.ctrlr.iova.lock(), &self.ctrlr.dev.container);
        }
        let now = clock::ticks();
        if self.ctrlr.state() == State::Live && now >= st.next_create {
            if let Err(e) = self.create_hw(st) {
                // Not on every I/O: each attempt is two admin commands on this reactor.
                st.next_create = now + clock::duration_to_ticks(Duration::from_secs(1));
                tracing::error!(error = %e, "I/O queue not made again after reset");
            }
        }
    }

    /// [`Self::sync_epoch`] if the queue belongs to an older epoch; true if it did.
    fn sync_if_stale(&self, st: &mut State_) -> bool {
        let stale = st.hw.as_ref().is_none_or(|h| h.epoch != self.ctrlr.epoch());
        if stale {
            self.sync_epoch(st);
        }
        stale
    }

    /// Submits `io` on namespace `nsid`.
    pub fn submit(&self, nsid: u32, io: BdevIo) {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        if self.ctrlr.state() != State::Live
            || st.hw.as_ref().is_none_or(|h| h.epoch != self.ctrlr.epoch())
        {
            self.sync_epoch(st);
            if st.hw.is_none() || self.ctrlr.state() != State::Live {
                let s = if self.ctrlr.state() == State::Removed {
                    IoStatus::Removed
                } else {
                    IoStatus::Failed
                };
                io.complete_deferred(s);
                return;
            }
        }
        if io.io_type == IoType::Flush && !self.ctrlr.id.volatile_write_cache {
            // Nothing volatile to flush.
            io.complete_deferred(IoStatus::Success);
            return;
        }
        let Some(ridx) = st.free_reqs.pop() else {
            io.complete_deferred(IoStatus::NoMemory);
            return;
        };
        let mut planned: SmallVec<[Planned; 8]> = SmallVec::new();
        let r = self.plan(st, nsid, &io, &mut planned);
        if let Err(status) = r {
            for p in planned.drain(..) {
                let s = &mut st.slots[p.slot as usize];
                s.active = false;
                s.bounce = None;
                st.free_slots.push(p.slot);
            }
            st.free_reqs.push(ridx);
            io.complete_deferred(status);
            return;
        }
        let now = clock::ticks();
        let n = planned.len() as u32;
        let Some(hw) = st.hw.as_mut() else {
            // Checked above; kept total: the I/O is never dropped uncompleted.
            for p in planned.drain(..) {
                st.slots[p.slot as usize].bounce = None;
                st.free_slots.push(p.slot);
            }
            st.free_reqs.push(ridx);
            io.complete_deferred(IoStatus::Failed);
            return;
        };
        for mut p in planned.drain(..) {
            p.cmd.cid = p.slot;
            let s = &mut st.slots[p.slot as usize];
            s.active = true;
            s.req = ridx;
            s.submitted = now;
            s.aborted = false;
            hw.mem.store(hw.sq_tail as usize * 64, p.cmd);
            hw.sq_tail = (hw.sq_tail + 1) % hw.entries;
        }
        // The doorbell is one device access for any number of commands: a poll-mode queue
        // rings it at the end of its poller's turn (SPDK's delayed submission), and so does
        // an interrupt-mode one for commands submitted from its own completions. Otherwise
        // a sleeping reactor would leave them unsubmitted: ring now.
        if st.reactor_sleeps && !self.in_poll.get() {
            ring_sq(&self.ctrlr, hw);
        } else {
            hw.sq_dirty = true;
        }
        st.outstanding += 1;
        let rq = &mut st.reqs[ridx as usize];
        rq.io = Some(io);
        rq.remaining = n;
        rq.status = IoStatus::Success;
    }

    /// Plans the commands of `io` into `out` (taking their slots). On error the caller
    /// gives the slots back.
    fn plan(
        &self,
        st: &mut State_,
        nsid: u32,
        io: &BdevIo,
        out: &mut SmallVec<[Planned; 8]>,
    ) -> Result<(), IoStatus> {
        let bs = io.block_size.max(1) as u64;
        match io.io_type {
            IoType::Read | IoType::Write => {
                let write = io.io_type == IoType::Write;
                let max_blocks =
                    (self.ctrlr.id.max_transfer as u64 / bs).clamp(1, MAX_ZEROES_BLOCKS);
                let mut done = 0u64;
                while done < io.num_blocks {
                    let nb = (io.num_blocks - done).min(max_blocks);
                    let slot = self.take_slot(st, io.num_blocks.div_ceil(max_blocks))?;
                    out.push(Planned {
                        slot,
                        cmd: Command::default(),
                    });
                    let mut cmd = Command::rw(write, nsid, io.offset_blocks + done, nb as u32);
                    self.data_pointer(
                        st,
                        slot,
                        io,
                        (done * bs) as usize,
                        (nb * bs) as usize,
                        write,
                        &mut cmd,
                    )?;
                    if let Some(p) = out.last_mut() {
                        p.cmd = cmd;
                    }
                    done += nb;
                }
            }
            IoType::WriteZeroes => {
                let mut done = 0u64;
                while done < io.num_blocks {
                    let nb = (io.num_blocks - done).min(MAX_ZEROES_BLOCKS);
                    let slot = self.take_slot(st, io.num_blocks.div_ceil(MAX_ZEROES_BLOCKS))?;
                    out.push(Planned {
                        slot,
                        cmd: Command::write_zeroes(nsid, io.offset_blocks + done, nb as u32),
                    });
                    done += nb;
                }
            }
            IoType::Unmap => {
                let per_range = u32::MAX as u64;
                let per_cmd = per_range * MAX_DSM_RANGES as u64;
                let mut done = 0u64;
                while done < io.num_blocks {
                    let nb = (io.num_blocks - done).min(per_cmd);
                    let slot = self.take_slot(st, io.num_blocks.div_ceil(per_cmd))?;
                    let hw = st.hw.as_ref().ok_or(IoStatus::Failed)?;
                    let page = hw.prp_off + slot as usize * PAGE as usize;
                    let mut ranges = 0u32;
                    let mut r_done = 0u64;
                    while r_done < nb {
                        let rn = (nb - r_done).min(per_range);
                        hw.mem.store(
                            page + ranges as usize * 16,
                            DsmRange {
                                attributes: 0,
                                blocks: rn as u32,
                                slba: io.offset_blocks + done + r_done,
                            },
                        );
                        ranges += 1;
                        r_done += rn;
                    }
                    out.push(Planned {
                        slot,
                        cmd: Command::deallocate(nsid, ranges, hw.mem.iova + page as u64),
                    });
                    done += nb;
                }
            }
            IoType::Flush => {
                let slot = self.take_slot(st, 1)?;
                out.push(Planned {
                    slot,
                    cmd: Command::flush(nsid),
                });
            }
            _ => return Err(IoStatus::Unsupported),
        }
        Ok(())
    }

    fn take_slot(&self, st: &mut State_, needed: u64) -> Result<u16, IoStatus> {
        if needed > st.slots.len() as u64 {
            // More commands than the queue holds: the I/O can never be submitted.
            return Err(IoStatus::InvalidArgument);
        }
        st.free_slots.pop().ok_or(IoStatus::NoMemory)
    }

    /// The IOVA of `vaddr..vaddr+len`, mapping the pool it belongs to on a miss.
    fn translate(&self, st: &mut State_, vaddr: usize, len: usize) -> Option<u64> {
        if let Some(i) = st.maps.iter().find_map(|m| m.translate(vaddr, len)) {
            return Some(i);
        }
        // A pool made after attach (rare): map it, then refresh this reactor's copy.
        let region = strata_reactor::dma::pool_regions()
            .into_iter()
            .find(|&(a, l)| vaddr >= a && vaddr + len <= a + l)?;
        let mut m = self.ctrlr.iova.lock();
        if let Err(e) = m.map(&self.ctrlr.dev.container, region.0, region.1) {
            tracing::warn!(error = %e, "mapping a buffer pool for the device failed");
            return None;
        }
        st.maps = m.mappings().to_vec();
        st.maps.iter().find_map(|m| m.translate(vaddr, len))
    }

    /// Sets PRP1/PRP2 for bytes `off..off+len` of the I/O's buffers, through a bounce
    /// buffer when they cannot be described as they are.
    #[allow(clippy::too_many_arguments)]
    fn data_pointer(
        &self,
        st: &mut State_,
        slot: u16,
        io: &BdevIo,
        off: usize,
        len: usize,
        write: bool,
        cmd: &mut Command,
    ) -> Result<(), IoStatus> {
        let mut pieces = std::mem::take(&mut st.pieces);
        pieces.clear();
        let mut ok = true;
        let (mut skip, mut left) = (off, len);
        for b in io.bufs.iter() {
            if left == 0 {
                break;
            }
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let n = (b.len() - skip).min(left);
            let vaddr = b.as_ptr() as usize + skip;
            match self.translate(st, vaddr, n) {
                Some(iova) => pieces.push((iova, n)),
                None => {
                    ok = false;
                    break;
                }
            }
            skip = 0;
            left -= n;
        }
        if left != 0 {
            st.pieces = pieces;
            return Err(IoStatus::InvalidArgument);
        }
        let mut prps = std::mem::take(&mut st.prps);
        let max_entries = 1 + (PAGE as usize / 8);
        let mut built = ok && prp::build(&pieces, &mut prps, max_entries);
        if !built && ok && prp::sgl_fits(&pieces, self.ctrlr.id.sgl) {
            // Pieces PRPs cannot describe: an SGL, one data block per piece.
            self.ctrlr.sgl_commands.fetch_add(1, Ordering::Relaxed);
            let r = self.sgl(st, slot, &pieces, cmd);
            st.pieces = pieces;
            st.prps = prps;
            return r;
        }
        if !built {
            // Bounce: one pool buffer, page-aligned, so it always makes a PRP list.
            self.ctrlr.bounced_commands.fetch_add(1, Ordering::Relaxed);
            let Some(mut buf) = strata_reactor::dma::alloc(len) else {
                st.pieces = pieces;
                st.prps = prps;
                return Err(IoStatus::NoMemory);
            };
            if write {
                strata_bdev::bufs::copy_out_at(&io.bufs, off, buf.as_mut_slice());
            }
            let iova = self.translate(st, buf.as_ptr() as usize, len);
            pieces.clear();
            if let Some(iova) = iova {
                pieces.push((iova, len));
                built = prp::build(&pieces, &mut prps, max_entries);
            }
            st.slots[slot as usize].bounce = Some(Bounce {
                buf,
                io_off: off,
                read: !write,
            });
        }
        st.pieces = pieces;
        if !built {
            st.prps = prps;
            return Err(IoStatus::Failed);
        }
        cmd.prp1 = prps[0];
        match prps.len() {
            1 => {}
            2 => cmd.prp2 = prps[1],
            _ => {
                let hw = st.hw.as_ref().ok_or(IoStatus::Failed)?;
                let page = hw.prp_off + slot as usize * PAGE as usize;
                for (i, e) in prps[1..].iter().enumerate() {
                    hw.mem.store(page + i * 8, *e);
                }
                cmd.prp2 = hw.mem.iova + page as u64;
            }
        }
        st.prps = prps;
        Ok(())
    }

    /// Sets an SGL data pointer: the piece itself, or a last segment in the slot's page
    /// listing one data block per piece.
    fn sgl(
        &self,
        st: &mut State_,
        slot: u16,
        pieces: &[(u64, usize)],
        cmd: &mut Command,
    ) -> Result<(), IoStatus> {
        if let [(a, l)] = pieces {
            cmd.set_sgl(sgl_data_block(*a, *l as u32));
            return Ok(());
        }
        let hw = st.hw.as_ref().ok_or(IoStatus::Failed)?;
        let page = hw.prp_off + slot as usize * PAGE as usize;
        for (i, &(a, l)) in pieces.iter().enumerate() {
            hw.mem.store(page + i * 16, sgl_data_block(a, l as u32));
        }
        cmd.set_sgl(SglDescriptor {
            address: hw.mem.iova + page as u64,
            length: (pieces.len() * 16) as u32,
            reserved: [0; 3],
            sgl_id: SGL_LAST_SEGMENT,
        });
        Ok(())
    }

    /// Ends command `slot` with `status`; its I/O goes to the done list with its last one.
    fn finish_slot(&self, st: &mut State_, slot: u16, status: IoStatus) {
        let s = &mut st.slots[slot as usize];
        s.active = false;
        let bounce = s.bounce.take();
        let ridx = s.req;
        st.free_slots.push(slot);
        let rq = &mut st.reqs[ridx as usize];
        if let (Some(b), Some(io)) = (bounce, rq.io.as_mut()) {
            if b.read && status == IoStatus::Success {
                strata_bdev::bufs::copy_into_at(&mut io.bufs, b.io_off, b.buf.as_slice());
            }
        }
        if status != IoStatus::Success && rq.status == IoStatus::Success {
            rq.status = status;
        }
        rq.remaining = rq.remaining.saturating_sub(1);
        if rq.remaining == 0 {
            if let Some(io) = rq.io.take() {
                let s = rq.status;
                self.done.borrow_mut().push((io, s));
            }
            st.free_reqs.push(ridx);
            st.outstanding = st.outstanding.saturating_sub(1);
        }
    }

    /// Reaps completions. True if it found work.
    fn poll(&self) -> bool {
        let (interrupts, qid) = {
            let st = self.st.borrow();
            (st.interrupts, st.qid)
        };
        if interrupts {
            if let Some(fd) = self.ctrlr.vector_fd(qid) {
                crate::vfio::eventfd_drain(fd);
            }
        }
        let mut found = 0u32;
        let mut bad: Option<String> = None;
        {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            if st.outstanding == 0 {
                return false;
            }
            if !self.sync_if_stale(st) {
                if let Some(hw) = st.hw.as_mut().filter(|h| h.sq_dirty) {
                    ring_sq(&self.ctrlr, hw);
                    found += 1;
                }
                while let Some(hw) = st.hw.as_mut() {
                    let off = hw.cq_off + hw.cq_head as usize * 16;
                    let raw = hw.mem.load_u16(off + 14);
                    if (raw & 1 != 0) != hw.phase {
                        break;
                    }
                    std::sync::atomic::fence(Ordering::Acquire);
                    let cqe: Cqe = hw.mem.load(off).unwrap_or_default();
                    hw.cq_head += 1;
                    if hw.cq_head == hw.entries {
                        hw.cq_head = 0;
                        hw.phase = !hw.phase;
                    }
                    found += 1;
                    if !completion_is_valid(&cqe, hw.qid, hw.entries, &st.slots) {
                        bad = Some(format!(
                            "completion for unknown command {} (SQ head {}) on queue {}",
                            cqe.cid, cqe.sqhd, hw.qid
                        ));
                        break;
                    }
                    let s = Status::from_cqe_status(cqe.status);
                    if !s.is_success() {
                        tracing::warn!(ctrlr = %self.ctrlr.name, qid = hw.qid, sct = s.sct, sc = s.sc, "command failed");
                    }
                    self.finish_slot(st, cqe.cid, io_status(s));
                }
                if found > 0 {
                    if let Some(hw) = st.hw.as_ref() {
                        self.ctrlr.bar.write32(
                            regs::cq_doorbell(hw.qid, self.ctrlr.stride),
                            hw.cq_head as u32,
                        );
                    }
                }
            }
        }
        if let Some(why) = bad {
            // Nothing the device says on this queue can be trusted: stop its DMA, then fail
            // what is outstanding; the control thread resets the controller.
            self.ctrlr.fail(&why);
            self.ctrlr.reset_requested.store(true, Ordering::Release);
            let mut st = self.st.borrow_mut();
            self.sync_epoch(&mut st);
        }
        self.in_poll.set(true);
        self.complete_done();
        self.in_poll.set(false);
        // What the completions submitted goes to the device with one doorbell.
        let mut st = self.st.borrow_mut();
        if let Some(hw) = st.hw.as_mut().filter(|h| h.sq_dirty) {
            ring_sq(&self.ctrlr, hw);
        }
        found > 0
    }

    fn complete_done(&self) {
        let mut done = std::mem::take(&mut *self.done.borrow_mut());
        loop {
            for (io, s) in done.drain(..) {
                io.complete(s);
            }
            // Completion callbacks may have added more: take those too, keep the capacity.
            let mut d = self.done.borrow_mut();
            if d.is_empty() {
                *d = done;
                return;
            }
            std::mem::swap(&mut *d, &mut done);
        }
    }

    /// Every 250 ms: a failed or reset controller, and commands past the timeout.
    fn watchdog(&self) -> bool {
        {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            if st.outstanding == 0 {
                return false;
            }
            if !self.sync_if_stale(st) {
                let limit = timeout_ticks();
                if limit > 0 {
                    let now = clock::ticks();
                    let qid = st.qid;
                    for (cid, s) in st.slots.iter_mut().enumerate() {
                        if !s.active || now.saturating_sub(s.submitted) < limit {
                            continue;
                        }
                        if !s.aborted {
                            s.aborted = true;
                            self.ctrlr.timeouts.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(ctrlr = %self.ctrlr.name, qid, cid, "command timed out: aborting it");
                            self.ctrlr.aborts.fetch_add(1, Ordering::Relaxed);
                            if let Err(e) = self.ctrlr.admin(Command::abort(qid, cid as u16)) {
                                tracing::warn!(ctrlr = %self.ctrlr.name, error = %e, "abort failed");
                            }
                        } else if now.saturating_sub(s.submitted) >= 2 * limit {
                            tracing::error!(ctrlr = %self.ctrlr.name, qid, cid, "command outlived its abort: resetting the controller");
                            self.ctrlr.reset_requested.store(true, Ordering::Release);
                            break;
                        }
                    }
                }
            }
        }
        self.complete_done();
        false
    }
}

/// Whether a completion names a command this queue has outstanding and an SQ head inside
/// the queue. Anything else means the device (or its memory) cannot be trusted.
fn completion_is_valid(cqe: &Cqe, qid: u16, entries: u16, slots: &[Slot]) -> bool {
    cqe.sqid == qid && cqe.sqhd < entries && slots.get(cqe.cid as usize).is_some_and(|s| s.active)
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        let st = self.st.get_mut();
        if let Some(h) = st.hw.take() {
            let c = &self.ctrlr;
            if c.state() == State::Live && h.epoch == c.epoch() {
                let deleted = c
                    .admin(Command::delete_sq(h.qid))
                    .and_then(|_| c.admin(Command::delete_cq(h.qid)));
                if let Err(e) = deleted {
                    // The device might still write the queue's memory: stop it first.
                    c.fail(&format!("I/O queue {} not deleted: {e}", h.qid));
                    c.reset_requested.store(true, Ordering::Release);
                }
            }
            h.mem.release(&mut c.iova.lock(), &c.dev.container);
        }
        self.ctrlr.give_qid(st.qid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_for_unknown_commands_or_heads_are_rejected() {
        let mut slots: Vec<Slot> = (0..4).map(|_| Slot::default()).collect();
        slots[2].active = true;
        let cqe = |cid, sqhd| Cqe {
            cid,
            sqhd,
            sqid: 3,
            ..Default::default()
        };
        let ok = |c: Cqe, qid| completion_is_valid(&c, qid, 5, &slots);
        assert!(ok(cqe(2, 3), 3));
        assert!(!ok(cqe(2, 3), 4), "another queue's");
        assert!(!ok(cqe(1, 3), 3), "not outstanding");
        assert!(!ok(cqe(9, 3), 3), "no such command");
        assert!(!ok(cqe(2, 5), 3), "SQ head out of range");
    }
}
