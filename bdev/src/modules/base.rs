//! `ClaimedBase`: a base bdev that a virtual bdev has opened and claimed — the plumbing every
//! virtual bdev (error, delay, and later RAID members and mirror legs) shares: open + claim,
//! unregister the owner when the base goes away, per-reactor channels, release on delete.

use crate::channel::IoChannel;
use crate::error::BdevError;
use crate::io::IoType;
use crate::registry::{self, BdevDesc, BdevEvent};
use parking_lot::Mutex;

pub struct ClaimedBase {
    pub name: String,
    pub block_size: u32,
    pub num_blocks: u64,
    pub uuid: uuid::Uuid,
    /// The base's stripe shape ([`crate::Bdev::optimal_io_boundary`], `write_unit_blocks`).
    pub optimal_io_boundary: u64,
    pub write_unit_blocks: u32,
    supported: [bool; IoType::COUNT],
    desc: Mutex<Option<BdevDesc>>,
}

impl std::fmt::Debug for ClaimedBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedBase")
            .field("name", &self.name)
            .finish()
    }
}

impl ClaimedBase {
    /// Opens and claims `base` for the virtual bdev `owner`. If the base is removed later,
    /// `owner` is unregistered too (hot-remove cascades up the stack).
    pub fn open(base: &str, owner: &str) -> Result<Self, BdevError> {
        let o = owner.to_string();
        Self::open_with(base, owner, move || {
            let _ = registry::unregister(&o);
        })
    }

    /// Opens and claims `base` for `owner`; `on_remove` runs (on any thread) if the base is
    /// removed later. RAID uses it to fail the member instead of removing the array.
    pub fn open_with(
        base: &str,
        owner: &str,
        on_remove: impl Fn() + Send + Sync + 'static,
    ) -> Result<Self, BdevError> {
        Self::open_with_events(base, owner, move |ev| {
            if ev == BdevEvent::Remove {
                on_remove()
            }
        })
    }

    /// Opens and claims `base` for `owner`; `on_event` sees every event of the base (removal,
    /// a restored path), on any thread.
    pub fn open_with_events(
        base: &str,
        owner: &str,
        on_event: impl Fn(BdevEvent) + Send + Sync + 'static,
    ) -> Result<Self, BdevError> {
        let desc = registry::open(base, on_event)?;
        desc.claim(owner)?;
        let b = desc.bdev().clone();
        let mut supported = [false; IoType::COUNT];
        for t in IoType::ALL {
            supported[t as usize] = b.supports(t);
        }
        Ok(ClaimedBase {
            name: base.to_string(),
            block_size: b.block_size(),
            num_blocks: b.num_blocks(),
            uuid: b.uuid(),
            optimal_io_boundary: b.optimal_io_boundary(),
            write_unit_blocks: b.write_unit_blocks(),
            supported,
            desc: Mutex::new(Some(desc)),
        })
    }

    /// Blocks a write must cover to avoid read-modify-write below (a RAID base's stripe;
    /// 1 for plain devices).
    pub fn write_granule(&self) -> u64 {
        self.optimal_io_boundary
            .max(self.write_unit_blocks as u64)
            .max(1)
    }

    pub fn supports(&self, t: IoType) -> bool {
        self.supported[t as usize]
    }

    /// This reactor's channel to the base.
    pub fn channel(&self) -> Result<IoChannel, BdevError> {
        let d = self.desc.lock();
        d.as_ref()
            .ok_or_else(|| BdevError::NotFound(self.name.clone()))?
            .channel()
    }

    /// Closes the descriptor and releases the claim (the owner is being unregistered).
    pub fn release(&self) {
        self.desc.lock().take();
    }
}
