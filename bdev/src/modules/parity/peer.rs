//! A bdev a parity volume or member talks to without owning it: the parity volumes a data
//! member sends deltas to, the data members a parity volume reads. Several group objects
//! may share one (P and Q on one node read the same members), so it is opened without a
//! claim; its events (removal, a restored path) go to the owner's callback.

use crate::channel::IoChannel;
use crate::error::BdevError;
use crate::registry::{self, BdevDesc, BdevEvent};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Peer {
    pub name: String,
    pub block_size: u32,
    pub num_blocks: u64,
    desc: Mutex<Option<BdevDesc>>,
    /// I/O to it failed (or it was removed): the owner treats it as unreachable until it
    /// is back (a restored path, or the owner's repair job).
    failed: AtomicBool,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("name", &self.name).finish()
    }
}

impl Peer {
    pub fn open(
        name: &str,
        on_event: impl Fn(BdevEvent) + Send + Sync + 'static,
    ) -> Result<Peer, BdevError> {
        let desc = registry::open(name, on_event)?;
        let b = desc.bdev().clone();
        Ok(Peer {
            name: name.to_string(),
            block_size: b.block_size(),
            num_blocks: b.num_blocks(),
            desc: Mutex::new(Some(desc)),
            failed: AtomicBool::new(false),
        })
    }

    pub fn supports(&self, t: crate::io::IoType) -> bool {
        self.desc
            .lock()
            .as_ref()
            .is_some_and(|d| d.bdev().supports(t))
    }

    /// This reactor's channel to it (an error once it was removed).
    pub fn channel(&self) -> Result<IoChannel, BdevError> {
        let d = self.desc.lock();
        d.as_ref()
            .ok_or_else(|| BdevError::NotFound(self.name.clone()))?
            .channel()
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

    pub fn is_removed(&self) -> bool {
        self.desc.lock().as_ref().is_none_or(|d| d.is_removed())
    }

    /// Closes the descriptor.
    pub fn close(&self) {
        self.failed.store(true, Ordering::Release);
        self.desc.lock().take();
    }
}
