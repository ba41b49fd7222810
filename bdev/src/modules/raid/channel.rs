//! A reactor's I/O path into a RAID volume.
//!
//! The fast path serves what needs no coordination by fanning the I/O out to the members
//! as child I/Os that each own a consecutive part of the parent's buffers (carved with
//! [`crate::bufs::Carver`] and joined back on completion: no copy, no allocation): every raid0/concat I/O, raid1 reads, raid5/6 reads of healthy strips, and
//! flushes. Everything that needs a stripe lock, the write-intent bitmap, reads before
//! writes or reconstruction (parity writes, raid1 writes, degraded reads, checksums) runs
//! as a task on this reactor ([`super::stripe`]); so does a fast-path read whose member
//! failed, which is then retried degraded.

use super::array::{Array, LIVE_ACTIVE, LIVE_OUT, LIVE_REBUILDING};
use super::geometry::{Level, Role};
use crate::bdev::BdevChannel;
pub use crate::bufs::Bufs;
use crate::bufs::{join_into, total_len, Carver};
use crate::channel::IoChannel;
use crate::io::{BdevIo, IoSink, IoStatus, IoType};
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A contiguous run of logical blocks inside one data strip.
#[derive(Clone, Copy, Debug)]
pub struct Piece {
    pub stripe: u64,
    /// Data strip index within the stripe.
    pub strip: usize,
    /// First row (block within the strip).
    pub row: u64,
    pub blocks: u64,
    /// Byte offset of the piece in the parent I/O's data.
    pub byte_off: usize,
}

/// Splits the logical range into per-strip pieces, in logical order.
pub fn for_each_piece(
    strip: u64,
    data_strips: usize,
    offset: u64,
    num: u64,
    block_size: u32,
    mut f: impl FnMut(Piece),
) {
    let sb = strip * data_strips as u64;
    let end = offset + num;
    let mut lba = offset;
    while lba < end {
        let in_stripe = lba % sb;
        let row = in_stripe % strip;
        let blocks = (strip - row).min(end - lba);
        f(Piece {
            stripe: lba / sb,
            strip: (in_stripe / strip) as usize,
            row,
            blocks,
            byte_off: ((lba - offset) * block_size as u64) as usize,
        });
        lba += blocks;
    }
}

#[derive(Default)]
struct Fan {
    parent: Option<BdevIo>,
    pending: u32,
    status: IoStatus,
    /// A member failed under a read: redo the parent on the degraded path.
    retry: bool,
    /// The children own consecutive parts of the parent's buffers.
    carried: bool,
    /// With several children: each child's part once it is back, by child index (one child
    /// hands its part straight back to the parent).
    parts: SmallVec<[Bufs; 8]>,
    /// The bytes past the transfer.
    rest: Bufs,
}

/// A fan-out's children: (member slot, child I/O), in data order.
type Children = SmallVec<[(usize, BdevIo); 8]>;

/// Children one fan-out may have (the child index field of the tag).
const MAX_CHILDREN: usize = 0xffff;

/// A child's completion tag: fan index, member slot, child index.
fn child_tag(fan: u32, slot: usize, child: usize) -> u64 {
    fan as u64 | (slot as u64 & 0xffff) << 32 | (child as u64 & 0xffff) << 48
}

/// Gives the parts carved for `children` back to `io`, for a fast path that cannot go on.
fn restore(io: &mut BdevIo, children: Children, rest: Bufs) {
    let mut bufs = Bufs::new();
    for (_, mut c) in children {
        join_into(&mut bufs, std::mem::take(&mut c.bufs));
    }
    join_into(&mut bufs, rest);
    io.bufs = bufs;
}

pub struct RaidChannel {
    pub array: Arc<Array>,
    members: RefCell<Vec<Option<IoChannel>>>,
    epoch: Cell<u64>,
    fans: RefCell<Vec<Fan>>,
    free: RefCell<Vec<u32>>,
    /// raid1 read balancing.
    rr: Cell<usize>,
    pub(super) me: Weak<RaidChannel>,
}

impl RaidChannel {
    pub fn new(array: Arc<Array>) -> Rc<RaidChannel> {
        Rc::new_cyclic(|me| RaidChannel {
            array,
            members: RefCell::new(Vec::new()),
            epoch: Cell::new(0),
            fans: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            rr: Cell::new(0),
            me: me.clone(),
        })
    }

    /// This reactor's channel to the bdev in `slot`, if it has one.
    #[inline]
    pub fn member(&self, slot: usize) -> Option<IoChannel> {
        let e = self.array.epoch.load(Ordering::Acquire);
        if e != self.epoch.get() {
            let slots = self.array.slots.read();
            let v = slots
                .iter()
                .map(|s| s.base.as_ref().and_then(|b| b.channel().ok()))
                .collect();
            drop(slots);
            *self.members.borrow_mut() = v;
            self.epoch.set(e);
        }
        self.members.borrow().get(slot).cloned().flatten()
    }

    /// A recycled fan record (its part lists keep their capacity: no allocation).
    fn fan_new(&self, parent: BdevIo, pending: u32, carried: bool, rest: Bufs) -> u32 {
        let mut fans = self.fans.borrow_mut();
        let i = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                fans.push(Fan::default());
                (fans.len() - 1) as u32
            }
        };
        let f = &mut fans[i as usize];
        f.parent = Some(parent);
        f.pending = pending;
        f.status = IoStatus::Success;
        f.retry = false;
        f.carried = carried;
        f.parts.clear();
        if carried && pending > 1 {
            f.parts.resize_with(pending as usize, Bufs::new);
        }
        f.rest = rest;
        i
    }

    /// Submits prepared children for `parent`. `carried`: the children own consecutive
    /// parts of the parent's buffers, `rest` the bytes past them; both go back to the parent
    /// when the last child completes.
    fn fan_out(&self, mut parent: BdevIo, children: Children, carried: bool, rest: Bufs) {
        let Some(me) = self.me.upgrade() else {
            restore(&mut parent, children, rest);
            parent.complete_deferred(IoStatus::Removed);
            return;
        };
        if children.is_empty() {
            restore(&mut parent, children, rest);
            parent.complete_deferred(IoStatus::Success);
            return;
        }
        let idx = self.fan_new(parent, children.len() as u32, carried, rest);
        for (k, (slot, mut child)) in children.into_iter().enumerate() {
            child.push_completion(me.clone(), child_tag(idx, slot, k));
            match self.member(slot) {
                Some(ch) => ch.submit(child),
                None => child.complete_deferred(IoStatus::Removed),
            }
        }
    }

    fn child(&self, t: IoType, member_off: u64, blocks: u64) -> BdevIo {
        BdevIo::new(t, self.array.data_offset + member_off, blocks)
    }

    /// Splits `io`'s blocks into this array's per-strip pieces, in logical order.
    pub(super) fn pieces_of(&self, io: &BdevIo, f: impl FnMut(Piece)) {
        let geo = &self.array.geo;
        for_each_piece(
            geo.strip,
            geo.data_strips(),
            io.offset_blocks,
            io.num_blocks,
            self.array.block_size,
            f,
        );
    }

    /// raid0/5/6 fast path over data strips. Gives the I/O back if it needs the slow path.
    fn striped(&self, mut io: BdevIo) -> Result<(), BdevIo> {
        let geo = &self.array.geo;
        let bs = self.array.block_size;
        let mut children = Children::new();
        let mut ok = true;
        let t = io.io_type;
        // Only data-carrying I/Os lend their buffers out.
        let mut carver = Carver::new(if t.carries_blocks() {
            std::mem::take(&mut io.bufs)
        } else {
            Bufs::new()
        });
        self.pieces_of(&io, |p| {
            // A child's index must fit its completion tag; bigger I/Os take the slow path.
            if !ok || children.len() >= MAX_CHILDREN {
                ok = false;
                return;
            }
            let m = geo.member_of(p.stripe, Role::Data(p.strip));
            if geo.level != Level::Raid0 && !self.array.usable(m, p.stripe) {
                ok = false;
                return;
            }
            let mut c = self.child(t, p.stripe * geo.strip + p.row, p.blocks);
            if t.carries_blocks() {
                let len = (p.blocks * bs as u64) as usize;
                c.bufs = carver.take(len);
                ok = total_len(&c.bufs) == len;
            }
            children.push((m, c));
        });
        let rest = carver.rest();
        if !ok {
            restore(&mut io, children, rest);
            return Err(io);
        }
        self.fan_out(io, children, t.carries_blocks(), rest);
        Ok(())
    }

    fn concat(&self, mut io: BdevIo) {
        let geo = &self.array.geo;
        let bs = self.array.block_size as u64;
        let mut children = Children::new();
        let (mut lba, end) = (io.offset_blocks, io.offset_blocks + io.num_blocks);
        let mut ok = true;
        let carries = io.io_type.carries_blocks();
        let mut carver = Carver::new(if carries {
            std::mem::take(&mut io.bufs)
        } else {
            Bufs::new()
        });
        while lba < end {
            let Some((m, off)) = geo.concat_locate(lba) else {
                ok = false;
                break;
            };
            let n = (geo.concat[m] - off).min(end - lba);
            let mut c = self.child(io.io_type, off, n);
            if carries {
                c.bufs = carver.take((n * bs) as usize);
                ok &= total_len(&c.bufs) == (n * bs) as usize;
            }
            children.push((m, c));
            lba += n;
        }
        let rest = carver.rest();
        if !ok {
            restore(&mut io, children, rest);
            io.complete_deferred(IoStatus::InvalidArgument);
            return;
        }
        self.fan_out(io, children, carries, rest);
    }

    /// A raid1 leg that holds valid data for the whole range, round-robin over the legs.
    pub fn raid1_leg(&self, offset: u64, num: u64) -> Option<usize> {
        let n = self.array.geo.members;
        let last_region = (offset + num - 1) / self.array.geo.strip;
        let start = self.rr.get();
        self.rr.set(start.wrapping_add(1));
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&m| match self.array.live(m) {
                LIVE_ACTIVE => true,
                LIVE_REBUILDING => last_region < self.array.rebuild_cursor.load(Ordering::Acquire),
                _ => false,
            })
    }

    fn raid1_read(&self, mut io: BdevIo) -> Result<(), BdevIo> {
        let Some(m) = self.raid1_leg(io.offset_blocks, io.num_blocks) else {
            return Err(io);
        };
        let mut c = self.child(IoType::Read, io.offset_blocks, io.num_blocks);
        let len = io.xfer_len();
        let mut carver = Carver::new(std::mem::take(&mut io.bufs));
        c.bufs = carver.take(len);
        let ok = total_len(&c.bufs) == len;
        let mut v = Children::new();
        v.push((m, c));
        let rest = carver.rest();
        if !ok {
            restore(&mut io, v, rest);
            return Err(io);
        }
        self.fan_out(io, v, true, rest);
        Ok(())
    }

    fn flush(&self, io: BdevIo) {
        let mut v = Children::new();
        for m in 0..self.array.geo.members {
            if self.array.live(m) != LIVE_OUT {
                v.push((m, BdevIo::new(IoType::Flush, 0, 0)));
            }
        }
        self.fan_out(io, v, false, Bufs::new());
    }

    /// Hands the I/O to a task on this reactor (the slow path).
    fn slow(&self, io: BdevIo) {
        let Some(me) = self.me.upgrade() else {
            io.complete_deferred(IoStatus::Removed);
            return;
        };
        strata_reactor::spawn_local(async move {
            let mut io = io;
            let st = me.run_slow(&mut io).await;
            io.complete(st);
        })
        .detach();
    }
}

impl BdevChannel for RaidChannel {
    fn submit(&self, io: BdevIo) {
        if self.array.is_offline() {
            io.complete_deferred(IoStatus::Failed);
            return;
        }
        let level = self.array.geo.level;
        let res = match (level, io.io_type) {
            (_, IoType::Reset) => {
                io.complete_deferred(IoStatus::Success);
                Ok(())
            }
            (_, IoType::Flush) => {
                self.flush(io);
                Ok(())
            }
            (_, IoType::Checksum) => Err(io),
            (Level::Concat, _) => {
                self.concat(io);
                Ok(())
            }
            (Level::Raid0, _) => self.striped(io),
            (Level::Raid1, IoType::Read) => self.raid1_read(io),
            (Level::Raid5 | Level::Raid6, IoType::Read) => self.striped(io),
            _ => Err(io),
        };
        if let Err(io) = res {
            self.slow(io);
        }
    }
}

impl IoSink for RaidChannel {
    fn io_done(self: Rc<Self>, mut child: BdevIo, tag: u64) {
        let idx = (tag & 0xffff_ffff) as usize;
        let slot = ((tag >> 32) & 0xffff) as usize;
        let k = (tag >> 48) as usize;
        let st = child.status;
        let t = child.io_type;
        let part = std::mem::take(&mut child.bufs);
        drop(child);
        let member_failed = matches!(
            st,
            IoStatus::Failed | IoStatus::Removed | IoStatus::PathError
        );
        if member_failed {
            self.array.fail_member(slot, "I/O error");
        }
        let finished = {
            let mut fans = self.fans.borrow_mut();
            let f = &mut fans[idx];
            // One child: its part is the parent's whole transfer.
            let mut single = None;
            match f.parts.get_mut(k) {
                Some(p) => *p = part,
                None if f.carried => single = Some(part),
                None => {}
            }
            if !st.is_success() {
                if member_failed && self.array.level().has_redundancy() {
                    // Reads are redone degraded.
                    // A flush goes to the slow path, which persists the failure first.
                    f.retry |= matches!(t, IoType::Read | IoType::Flush);
                } else if f.status.is_success() {
                    f.status = if member_failed { IoStatus::Failed } else { st };
                }
            }
            f.pending -= 1;
            if f.pending == 0 {
                f.parent.take().map(|mut p| {
                    if let Some(part) = single {
                        p.bufs = part;
                        join_into(&mut p.bufs, std::mem::take(&mut f.rest));
                    } else if !f.parts.is_empty() {
                        let mut bufs = Bufs::new();
                        for part in f.parts.drain(..) {
                            join_into(&mut bufs, part);
                        }
                        join_into(&mut bufs, std::mem::take(&mut f.rest));
                        p.bufs = bufs;
                    }
                    (p, f.status, f.retry)
                })
            } else {
                None
            }
        };
        if let Some((parent, status, retry)) = finished {
            self.free.borrow_mut().push(idx as u32);
            if retry && status.is_success() && !self.array.is_offline() {
                self.slow(parent);
            } else if self.array.is_offline() && status.is_success() && retry {
                parent.complete(IoStatus::Failed);
            } else {
                parent.complete(status);
            }
        }
    }
}
