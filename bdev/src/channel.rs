//! `IoChannel`: the bdev layer's per-reactor entry point to a bdev. It checks every I/O
//! against the bdev's size and capabilities, counts it in iostat, and queues I/O the bdev
//! returned with `NoMemory` until resources free up. Channels are cached per thread, so every
//! user of a bdev on one reactor shares one underlying `BdevChannel`.

use crate::bdev::{Bdev, BdevChannel};
use crate::error::BdevError;
use crate::io::{BdevIo, IoSink, IoStatus, IoType};
use crate::registry::BdevDesc;
use crate::stats::{IoStats, StatSlot};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_reactor::clock;

struct ChannelCore {
    bdev: Arc<dyn Bdev>,
    inner: Rc<dyn BdevChannel>,
    stats: Arc<IoStats>,
    slot: StatSlot,
    removed: Arc<AtomicBool>,
    num_blocks: u64,
    block_size: u32,
    supported: [bool; IoType::COUNT],
    lends_views: bool,
    outstanding: Cell<u64>,
    nomem: RefCell<VecDeque<BdevIo>>,
    retry_armed: Cell<bool>,
    me: Weak<ChannelCore>,
}

/// A reactor's handle for submitting I/O to one bdev. Cheap to clone; `!Send`.
#[derive(Clone)]
pub struct IoChannel {
    core: Rc<ChannelCore>,
}

impl std::fmt::Debug for IoChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoChannel")
            .field("bdev", &self.core.bdev.name())
            .finish()
    }
}

thread_local! {
    static CHANNELS: RefCell<HashMap<u64, Weak<ChannelCore>>> = RefCell::new(HashMap::new());
    static DEFERRED_POLLER: Cell<bool> = const { Cell::new(false) };
}

fn ensure_deferred_poller() -> Result<(), BdevError> {
    if DEFERRED_POLLER.with(Cell::get) {
        return Ok(());
    }
    let h = strata_reactor::register_poller("bdev_completions", crate::io::run_deferred)?;
    h.detach();
    DEFERRED_POLLER.with(|c| c.set(true));
    Ok(())
}

impl BdevDesc {
    /// This reactor's channel to the bdev (created on first use, then shared).
    pub fn channel(&self) -> Result<IoChannel, BdevError> {
        if strata_reactor::current_index().is_none() {
            return Err(BdevError::Reactor(
                strata_reactor::ReactorError::NotOnReactor,
            ));
        }
        ensure_deferred_poller()?;
        if let Some(core) = CHANNELS.with(|c| c.borrow().get(&self.bdev_id).and_then(Weak::upgrade))
        {
            return Ok(IoChannel { core });
        }
        let inner = self.bdev.clone().create_channel()?;
        let bdev = self.bdev.clone();
        let mut supported = [false; IoType::COUNT];
        for t in IoType::ALL {
            supported[t as usize] = bdev.supports(t);
        }
        let core = Rc::new_cyclic(|me| ChannelCore {
            num_blocks: bdev.num_blocks(),
            lends_views: bdev.lends_read_views(),
            block_size: bdev.block_size(),
            bdev,
            inner,
            stats: self.stats.clone(),
            slot: StatSlot::current(),
            removed: self.removed.clone(),
            supported,
            outstanding: Cell::new(0),
            nomem: RefCell::new(VecDeque::new()),
            retry_armed: Cell::new(false),
            me: me.clone(),
        });
        CHANNELS.with(|c| {
            let mut c = c.borrow_mut();
            c.retain(|_, w| w.strong_count() > 0);
            c.insert(self.bdev_id, Rc::downgrade(&core));
        });
        Ok(IoChannel { core })
    }
}

impl IoChannel {
    pub fn bdev(&self) -> &Arc<dyn Bdev> {
        &self.core.bdev
    }

    pub fn block_size(&self) -> u32 {
        self.core.block_size
    }

    pub fn num_blocks(&self) -> u64 {
        self.core.num_blocks
    }

    /// Whether a read that asks for a view ([`BdevIo::read_view`]) completes with one of the
    /// bdev's memory ([`crate::io::IoInner::view`]); others refuse such a read.
    pub fn lends_read_views(&self) -> bool {
        self.core.lends_views
    }

    /// I/O submitted through this channel and not yet completed (including queued ones).
    pub fn outstanding(&self) -> u64 {
        self.core.outstanding.get()
    }

    /// Submits an I/O; its completion stack receives it exactly once, with a status.
    #[inline]
    pub fn submit(&self, io: BdevIo) {
        self.core.submit(io)
    }
}

impl ChannelCore {
    fn check(&self, io: &BdevIo) -> IoStatus {
        if self.removed.load(Ordering::Relaxed) {
            return IoStatus::Removed;
        }
        let t = io.io_type;
        if !self.supported[t as usize] {
            return IoStatus::Unsupported;
        }
        if t.needs_range() && io.num_blocks == 0 {
            return IoStatus::OutOfRange;
        }
        match io.offset_blocks.checked_add(io.num_blocks) {
            Some(end) if end <= self.num_blocks => {}
            _ => return IoStatus::OutOfRange,
        }
        // A read that asks for a view of a bdev that lends its memory carries no buffers.
        let view_read = t == IoType::Read && io.want_view && io.bufs.is_empty() && self.lends_views;
        if t.carries_blocks() && !view_read {
            let need = io.num_blocks.checked_mul(self.block_size as u64);
            if need.is_none_or(|n| (io.data_len() as u64) < n) {
                return IoStatus::InvalidArgument;
            }
        }
        // The device fills a read's (or checksum's) buffers: they must be its to write.
        if matches!(t, IoType::Read | IoType::Checksum) && !io.bufs.iter().all(|b| b.is_writable())
        {
            return IoStatus::InvalidArgument;
        }
        if t == IoType::GfXorWrite && io.gf_coef == 0 {
            return IoStatus::InvalidArgument;
        }
        if t == IoType::Checksum {
            if io.chunk_blocks == 0 {
                return IoStatus::InvalidArgument;
            }
            if (io.data_len() as u64) < io.digest_bytes() {
                return IoStatus::InvalidArgument;
            }
        }
        IoStatus::Success
    }

    #[inline]
    fn submit(&self, mut io: BdevIo) {
        let st = self.check(&io);
        if st != IoStatus::Success {
            tracing::debug!(bdev = self.bdev.name(), ?io, status = ?st, "I/O rejected");
            self.stats.rejected();
            io.complete_deferred(st);
            return;
        }
        io.block_size = self.block_size;
        let Some(me) = self.me.upgrade() else {
            io.complete_deferred(IoStatus::Removed);
            return;
        };
        io.push_completion(me, clock::ticks());
        self.outstanding.set(self.outstanding.get() + 1);
        self.stats.submitted(self.slot);
        self.inner.submit(io);
    }

    fn retry_nomem(&self) {
        // Resubmit what fits; anything that fails again goes back on the queue.
        let n = self.nomem.borrow().len();
        for _ in 0..n {
            let io = self.nomem.borrow_mut().pop_front();
            match io {
                Some(io) => self.submit(io),
                None => break,
            }
        }
    }

    fn arm_retry(&self) {
        if self.retry_armed.replace(true) {
            return;
        }
        let me = self.me.clone();
        let armed = strata_reactor::after(Duration::from_micros(100), move || {
            if let Some(c) = me.upgrade() {
                c.retry_armed.set(false);
                c.retry_nomem();
            }
        });
        match armed {
            Ok(t) => t.detach(),
            Err(_) => self.retry_armed.set(false),
        }
    }
}

impl IoSink for ChannelCore {
    #[inline]
    fn io_done(self: Rc<Self>, mut io: BdevIo, start: u64) {
        self.outstanding.set(self.outstanding.get() - 1);
        if io.status == IoStatus::NoMemory {
            // Balances the submit count; it is counted again when resubmitted.
            self.stats.requeued(self.slot);
            self.nomem.borrow_mut().push_back(io);
            if self.outstanding.get() == 0 {
                self.arm_retry();
            }
            return;
        }
        let ok = io.status.is_success();
        let bytes = match io.io_type {
            IoType::Flush | IoType::Reset | IoType::Checksum => 0,
            _ => io.num_blocks * self.block_size as u64,
        };
        let ops_bytes = if io.io_type == IoType::Checksum {
            io.num_blocks * self.block_size as u64
        } else {
            bytes
        };
        let now = clock::ticks();
        self.stats.completed(
            self.slot,
            io.io_type,
            ops_bytes,
            now.saturating_sub(start),
            ok,
        );
        io.submit_ticks = start;
        io.complete_ticks = now;
        io.done();
        if !self.nomem.borrow().is_empty() {
            self.retry_nomem();
        }
    }
}
