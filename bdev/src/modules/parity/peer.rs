//! A bdev a parity volume or member talks to without owning it: the parity volumes a data
//! member sends deltas to, the data members a parity volume reads. Several group objects
//! may share one (P and Q on one node read the same members), so it is opened without a
//! claim; its events (removal, a restored path) go to the owner's callback.
//!
//! It is found by name whenever it is needed: a remote bdev deleted (controller loss) and
//! attached again later, or one that did not exist yet when the group object was reopened
//! at start-up (its `bdev_nvme_attach_controller` comes later), is picked up at its next
//! use, provided its block size is the same.

use crate::channel::IoChannel;
use crate::error::BdevError;
use crate::registry::{self, BdevDesc, BdevEvent};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

type EventFn = Arc<dyn Fn(BdevEvent) + Send + Sync>;

pub struct Peer {
    pub name: String,
    pub block_size: u32,
    num_blocks: AtomicU64,
    desc: Mutex<Option<BdevDesc>>,
    on_event: EventFn,
    /// I/O to it failed (or it was removed): the owner treats it as unreachable until it
    /// is back (a restored path, or the owner's repair job).
    failed: AtomicBool,
    closed: AtomicBool,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("name", &self.name).finish()
    }
}

impl Peer {
    /// Opens `name`, which must exist.
    pub fn open(
        name: &str,
        on_event: impl Fn(BdevEvent) + Send + Sync + 'static,
    ) -> Result<Peer, BdevError> {
        let on_event: EventFn = Arc::new(on_event);
        let desc = Self::open_desc(name, &on_event)?;
        let b = desc.bdev().clone();
        Ok(Peer {
            name: name.to_string(),
            block_size: b.block_size(),
            num_blocks: AtomicU64::new(b.num_blocks()),
            desc: Mutex::new(Some(desc)),
            on_event,
            failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        })
    }

    /// A peer not (yet) registered: opened at its first use once it is.
    pub fn absent(
        name: &str,
        block_size: u32,
        on_event: impl Fn(BdevEvent) + Send + Sync + 'static,
    ) -> Peer {
        Peer {
            name: name.to_string(),
            block_size,
            num_blocks: AtomicU64::new(0),
            desc: Mutex::new(None),
            on_event: Arc::new(on_event),
            failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    fn open_desc(name: &str, on_event: &EventFn) -> Result<BdevDesc, BdevError> {
        let cb = on_event.clone();
        registry::open(name, move |ev| cb(ev))
    }

    /// Runs `f` on a live descriptor, opening the bdev again if it was removed (or never
    /// there) and has come back with the same block size.
    fn with_live<R>(&self, f: impl FnOnce(&BdevDesc) -> R) -> Option<R> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let mut d = self.desc.lock();
        if d.as_ref().is_none_or(|d| d.is_removed()) {
            *d = None;
            let fresh = Self::open_desc(&self.name, &self.on_event).ok()?;
            if fresh.bdev().block_size() != self.block_size {
                return None;
            }
            self.num_blocks
                .store(fresh.bdev().num_blocks(), Ordering::Release);
            tracing::info!(bdev = %self.name, "group peer (re)opened");
            *d = Some(fresh);
        }
        d.as_ref().map(f)
    }

    /// Blocks of the bdev (0 while it was never found).
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }

    pub fn supports(&self, t: crate::io::IoType) -> bool {
        self.with_live(|d| d.bdev().supports(t)).unwrap_or(false)
    }

    /// This reactor's channel to it (an error while it is not registered).
    pub fn channel(&self) -> Result<IoChannel, BdevError> {
        self.with_live(|d| d.channel())
            .unwrap_or_else(|| Err(BdevError::NotFound(self.name.clone())))
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks it failed; true if it was not already.
    pub fn fail(&self) -> bool {
        !self.failed.swap(true, Ordering::AcqRel)
    }

    pub fn set_ok(&self) {
        self.failed.store(false, Ordering::Release);
    }

    /// Whether it is missing now (after trying to find it again).
    pub fn is_removed(&self) -> bool {
        self.with_live(|_| ()).is_none()
    }

    /// Closes the descriptor for good.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.failed.store(true, Ordering::Release);
        self.desc.lock().take();
    }
}
