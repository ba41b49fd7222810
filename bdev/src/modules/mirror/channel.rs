//! A reactor's I/O path into a mirror.
//!
//! Reads (and checksums) are handed down whole to one leg that is in sync, offset by the
//! metadata area: no child I/O, no copy. A read the leg fails is retried on the other leg.
//! Writes (write_zeroes, and unmap served as write_zeroes) count into their bitmap regions
//! ([`crate::volume::intent::IntentBitmap::try_begin_range`]) and fan out to every leg that
//! takes writes, as child I/Os whose buffers are views of the host's (no copy); the host
//! write completes when every leg has answered. A write waits (as a task on this reactor)
//! only when its region's bit must first reach the disk or a resync copy holds the region.
//! A leg that fails a write is failed (the mirror runs degraded, the bitmap records the
//! change) and the write completes once that state is on disk.

use super::jobs;
use super::superblock::LegState;
use super::volume::Mirror;
use crate::bdev::BdevChannel;
use crate::bufs::share_range;
use crate::channel::IoChannel;
use crate::io::{BdevIo, IoSink, IoStatus, IoType};
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Completion tag kinds (bits 40..).
const TAG_READ: u64 = 1 << 40;
const TAG_FAN: u64 = 2 << 40;
const KIND_MASK: u64 = 0xff << 40;

/// A host write (or flush) fanned out to the legs.
struct Fan {
    parent: Option<BdevIo>,
    pending: u32,
    /// Legs (by slot) that completed it / failed it.
    ok: u32,
    failed: u32,
    /// Bitmap regions it counted into (`None` for flushes).
    regions: Option<(usize, usize)>,
    /// The first non-leg-failure status a leg returned (bad request): passed up as is.
    reject: Option<IoStatus>,
}

pub struct MirrorChannel {
    pub m: Arc<Mirror>,
    legs: RefCell<[Option<IoChannel>; 2]>,
    epoch: Cell<u64>,
    fans: RefCell<Vec<Fan>>,
    free: RefCell<Vec<u32>>,
    rr: Cell<u32>,
    me: Weak<MirrorChannel>,
}

/// Statuses that mean the leg itself is broken (rather than the request).
fn leg_fault(st: IoStatus) -> bool {
    matches!(
        st,
        IoStatus::Failed | IoStatus::Removed | IoStatus::Aborted | IoStatus::PathError
    )
}

impl MirrorChannel {
    pub fn new(m: Arc<Mirror>) -> Rc<MirrorChannel> {
        Rc::new_cyclic(|me| MirrorChannel {
            m,
            legs: RefCell::new([None, None]),
            epoch: Cell::new(0),
            fans: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            rr: Cell::new(0),
            me: me.clone(),
        })
    }

    /// This reactor's channel to the leg in `slot`.
    #[inline]
    pub fn leg(&self, slot: usize) -> Option<IoChannel> {
        let e = self.m.epoch.load(Ordering::Acquire);
        if e != self.epoch.get() {
            let c = self.m.ctl.lock();
            let v = [0, 1].map(|i| c.legs[i].base.as_ref().and_then(|b| b.channel().ok()));
            drop(c);
            *self.legs.borrow_mut() = v;
            self.epoch.set(e);
        }
        self.legs.borrow()[slot].clone()
    }

    /// The leg slot a read goes to, given the legs that serve reads.
    fn read_slot(&self, serving: u32) -> Option<usize> {
        if serving == 0 {
            return None;
        }
        let primary = self.m.primary_slot();
        if serving == 3 && self.m.balance_reads() {
            let n = self.rr.get().wrapping_add(1);
            self.rr.set(n);
            return Some((n & 1) as usize);
        }
        if serving & (1 << primary) != 0 {
            Some(primary)
        } else {
            Some(serving.trailing_zeros() as usize)
        }
    }

    /// Sends a read to a serving leg not in `tried` (bit per slot).
    fn read(&self, mut io: BdevIo, tried: u32) {
        let serving = self.m.read_legs() & !tried;
        let (Some(slot), Some(me)) = (self.read_slot(serving), self.me.upgrade()) else {
            io.complete_deferred(IoStatus::Failed);
            return;
        };
        let Some(ch) = self.leg(slot) else {
            io.complete_deferred(IoStatus::Failed);
            return;
        };
        io.offset_blocks += self.m.data_offset;
        let tried = tried | 1 << slot;
        io.push_completion(me, TAG_READ | (slot as u64) << 8 | tried as u64);
        ch.submit(io);
    }

    fn read_done(&self, mut io: BdevIo, slot: usize, tried: u32) {
        io.offset_blocks -= self.m.data_offset;
        if leg_fault(io.status) {
            if self.m.fail_leg(slot, false, "read failed") {
                jobs::persist_in_background(&self.m);
            }
            if self.m.read_legs() & !tried != 0 {
                io.status = IoStatus::Pending;
                self.read(io, tried);
                return;
            }
        }
        io.done();
    }

    fn fan_new(&self, f: Fan) -> u32 {
        match self.free.borrow_mut().pop() {
            Some(i) => {
                self.fans.borrow_mut()[i as usize] = f;
                i
            }
            None => {
                let mut fans = self.fans.borrow_mut();
                fans.push(f);
                (fans.len() - 1) as u32
            }
        }
    }

    /// Starts a write: counts it into its regions, then dispatches it, waiting first if a
    /// region's bit must reach the disk or a copy holds a region. A write into a region a
    /// snapshot split's image still owes copies that region to the secondary first
    /// ([`super::pit`]); the check follows the count, so a write parked across a split sees
    /// the image.
    fn write(&self, io: BdevIo) {
        let (first, last) = self.m.regions(io.offset_blocks, io.num_blocks);
        let need = self.m.intent.try_begin_range(first, last, None);
        if need == Some(0) && !self.owes(first, last) {
            self.dispatch(io, Some((first, last)));
            return;
        }
        let Some(me) = self.me.upgrade() else {
            if need.is_some() {
                self.end_regions(Some((first, last)));
            }
            io.complete_deferred(IoStatus::Removed);
            return;
        };
        strata_reactor::spawn_local(async move {
            let mut need = need;
            loop {
                let n = match need.take() {
                    Some(n) => n,
                    // A copy holds a region: wait until it lets go, then count.
                    None => {
                        poll_fn(|cx| {
                            match me.m.intent.try_begin_range(first, last, Some(cx.waker())) {
                                Some(n) => std::task::Poll::Ready(n),
                                None => std::task::Poll::Pending,
                            }
                        })
                        .await
                    }
                };
                if me.owes(first, last) {
                    me.m.intent.end_range(first, last);
                    if let Err(st) = me.copy_owed(first, last).await {
                        io.complete(st);
                        return;
                    }
                    continue;
                }
                if n > 0 {
                    jobs::sync_meta(&me.m, n).await;
                }
                me.dispatch(io, Some((first, last)));
                return;
            }
        })
        .detach();
    }

    /// Whether the image of a snapshot split still owes a region of `first..=last`.
    #[inline]
    fn owes(&self, first: usize, last: usize) -> bool {
        self.m.pit().is_some_and(|p| p.any_owed(first, last))
    }

    /// Copies the owed regions of `first..=last` to the secondary (before a host write).
    async fn copy_owed(&self, first: usize, last: usize) -> Result<(), IoStatus> {
        let Some(pit) = self.m.pit() else {
            return Ok(());
        };
        let (p, s) = {
            let c = self.m.ctl.lock();
            (c.primary, c.secondary())
        };
        let secondary_ok = |m: &super::volume::Mirror| {
            let c = m.ctl.lock();
            let l = c.by_role(1);
            l.base.is_some() && !matches!(l.state, LegState::Failed | LegState::Missing)
        };
        let (Some(pc), Some(sc)) = (self.leg(p), self.leg(s)) else {
            if !secondary_ok(&self.m) {
                super::snapshot::image_lost(&self.m, "the secondary is gone");
                return Ok(());
            }
            return Err(IoStatus::Failed);
        };
        for r in first..=last {
            let res =
                super::pit::ensure_copied(&self.m, &pit, &pc, &sc, r, super::pit::CopyFor::Write)
                    .await;
            if let Err(st) = res {
                // A copy that failed on the secondary loses the image, not the host's write.
                if !secondary_ok(&self.m) {
                    super::snapshot::image_lost(&self.m, "a copy to the secondary failed");
                    return Ok(());
                }
                return Err(st);
            }
        }
        Ok(())
    }

    /// Fans a counted write (or a flush) out to the legs that take writes.
    fn dispatch(&self, parent: BdevIo, regions: Option<(usize, usize)>) {
        let legs = self.m.write_legs();
        let Some(me) = self.me.upgrade() else {
            self.end_regions(regions);
            parent.complete_deferred(IoStatus::Removed);
            return;
        };
        if legs == 0 {
            self.end_regions(regions);
            parent.complete_deferred(IoStatus::Failed);
            return;
        }
        let t = match parent.io_type {
            IoType::Unmap => IoType::WriteZeroes,
            t => t,
        };
        let (off, n) = (parent.offset_blocks, parent.num_blocks);
        let len = parent.xfer_len();
        let mut children: SmallVec<[(usize, BdevIo); 2]> = SmallVec::new();
        for slot in 0..2 {
            if legs & (1 << slot) == 0 {
                continue;
            }
            let mut c = if t == IoType::Flush {
                BdevIo::new(t, 0, 0)
            } else {
                BdevIo::new(t, off + self.m.data_offset, n)
            };
            if t == IoType::Write && !share_range(&parent.bufs, 0, len, &mut c.bufs) {
                self.end_regions(regions);
                parent.complete_deferred(IoStatus::InvalidArgument);
                return;
            }
            children.push((slot, c));
        }
        let idx = self.fan_new(Fan {
            parent: Some(parent),
            pending: children.len() as u32,
            ok: 0,
            failed: 0,
            regions,
            reject: None,
        });
        for (slot, mut c) in children {
            c.push_completion(me.clone(), TAG_FAN | (slot as u64) << 32 | idx as u64);
            match self.leg(slot) {
                Some(ch) => ch.submit(c),
                None => c.complete_deferred(IoStatus::Removed),
            }
        }
    }

    /// Ends a write's count in its regions; returns whether the leg states are on disk.
    fn end_regions(&self, regions: Option<(usize, usize)>) -> bool {
        match regions {
            Some((f, l)) => self.m.intent.end_range(f, l),
            None => self.m.intent.states_durable(),
        }
    }

    fn fan_done(&self, child: BdevIo, slot: usize, idx: usize) {
        let st = child.status;
        drop(child);
        let finished = {
            let mut fans = self.fans.borrow_mut();
            let f = &mut fans[idx];
            if st.is_success() {
                f.ok |= 1 << slot;
            } else if leg_fault(st) {
                f.failed |= 1 << slot;
            } else if f.reject.is_none() {
                f.reject = Some(st);
            }
            f.pending -= 1;
            if f.pending > 0 {
                return;
            }
            (f.parent.take(), f.ok, f.failed, f.regions, f.reject)
        };
        self.free.borrow_mut().push(idx as u32);
        let (Some(parent), ok, failed, regions, reject) = finished else {
            return;
        };
        let durable = self.end_regions(regions);
        if let Some(st) = reject {
            parent.complete(st);
            return;
        }
        let mut changed = false;
        for slot in 0..2 {
            if failed & (1 << slot) != 0 {
                changed |= self.m.fail_leg(slot, false, "write failed");
            }
        }
        // Success only if a leg that still holds the volume's data took the write.
        let status = if ok & self.m.read_legs() != 0 {
            IoStatus::Success
        } else {
            IoStatus::Failed
        };
        if !changed && failed == 0 && durable {
            parent.complete(status);
            return;
        }
        // A leg state changed: acknowledge only once the change is on disk.
        let m = self.m.clone();
        strata_reactor::spawn_local(async move {
            jobs::persist(&m).await;
            parent.complete(status);
        })
        .detach();
    }
}

impl IoSink for MirrorChannel {
    fn io_done(self: Rc<Self>, io: BdevIo, tag: u64) {
        match tag & KIND_MASK {
            TAG_READ => self.read_done(io, ((tag >> 8) & 3) as usize, (tag & 3) as u32),
            _ => self.fan_done(
                io,
                ((tag >> 32) & 0xff) as usize,
                (tag & 0xffff_ffff) as usize,
            ),
        }
    }
}

impl BdevChannel for MirrorChannel {
    fn submit(&self, io: BdevIo) {
        match io.io_type {
            IoType::Read | IoType::Checksum => self.read(io, 0),
            IoType::Write | IoType::WriteZeroes | IoType::Unmap => self.write(io),
            IoType::Flush => self.dispatch(io, None),
            IoType::Reset => io.complete_deferred(IoStatus::Success),
            IoType::XorWrite | IoType::GfXorWrite => io.complete_deferred(IoStatus::Unsupported),
        }
    }
}
