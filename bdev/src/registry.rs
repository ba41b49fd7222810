//! The process-wide list of bdevs: registration, lookup, open descriptors, claims and
//! hot-remove notification.
//!
//! A virtual bdev opens its base bdevs and claims them, so they cannot be claimed or exported
//! again. Unregistering a bdev notifies every opener (`BdevEvent::Remove`), which is how a
//! virtual bdev learns its base went away; it then unregisters itself.

use crate::bdev::Bdev;
use crate::error::BdevError;
use crate::stats::IoStats;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Events delivered to a descriptor's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BdevEvent {
    /// The bdev is being unregistered; close the descriptor.
    Remove,
    /// The path to the device came back after a failure (a remote namespace reconnected):
    /// I/O that failed with `PathError` may now succeed. A mirror resyncs the leg.
    PathRestored,
}

type EventFn = Arc<dyn Fn(BdevEvent) + Send + Sync>;

struct Entry {
    id: u64,
    bdev: Arc<dyn Bdev>,
    stats: Arc<IoStats>,
    removed: Arc<AtomicBool>,
    claim: Option<String>,
    descs: Vec<(u64, EventFn)>,
}

#[derive(Default)]
struct Registry {
    entries: Vec<Entry>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    entries: Vec::new(),
});
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A registered bdev as seen by management code.
#[derive(Clone)]
pub struct BdevHandle {
    pub id: u64,
    pub bdev: Arc<dyn Bdev>,
    pub stats: Arc<IoStats>,
    pub claimed_by: Option<String>,
}

impl std::fmt::Debug for BdevHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BdevHandle")
            .field("name", &self.bdev.name())
            .finish()
    }
}

/// Adds a bdev. Names are unique.
/// Whether new bdevs are examined as they register (SPDK's `bdev_auto_examine`). A node
/// that only exports raw devices to other nodes turns it off, so it does not assemble the
/// volumes whose superblocks those devices carry (that is the remote node's business).
static AUTO_EXAMINE: AtomicBool = AtomicBool::new(true);

pub fn set_auto_examine(on: bool) {
    AUTO_EXAMINE.store(on, Ordering::Release);
}

pub fn auto_examine() -> bool {
    AUTO_EXAMINE.load(Ordering::Acquire)
}

/// Lets the modules examine `name` now (`bdev_examine`, with auto-examine off).
pub fn examine(name: &str) -> Result<(), BdevError> {
    if get(name).is_none() {
        return Err(BdevError::NotFound(name.to_string()));
    }
    crate::module::examine(name);
    Ok(())
}

pub fn register(bdev: Arc<dyn Bdev>) -> Result<(), BdevError> {
    let name = bdev.name().to_string();
    let mut r = REGISTRY.lock();
    if r.entries.iter().any(|e| e.bdev.name() == bdev.name()) {
        return Err(BdevError::Exists(bdev.name().to_string()));
    }
    if bdev.block_size() == 0 || bdev.num_blocks() == 0 {
        return Err(BdevError::Invalid(format!(
            "bdev '{}' has no blocks",
            bdev.name()
        )));
    }
    tracing::info!(
        bdev = bdev.name(),
        module = bdev.module(),
        blocks = bdev.num_blocks(),
        block_size = bdev.block_size(),
        "bdev registered"
    );
    r.entries.push(Entry {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        bdev,
        stats: Arc::new(IoStats::default()),
        removed: Arc::new(AtomicBool::new(false)),
        claim: None,
        descs: Vec::new(),
    });
    drop(r);
    if auto_examine() {
        crate::module::examine(&name);
    }
    Ok(())
}

/// Removes a bdev: openers get `Remove`, new I/O on existing channels fails with `Removed`,
/// and the bdev's `on_unregister` runs.
pub fn unregister(name: &str) -> Result<(), BdevError> {
    let (bdev, removed, callbacks) = {
        let mut r = REGISTRY.lock();
        let pos = r
            .entries
            .iter()
            .position(|e| e.bdev.name() == name)
            .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        let e = r.entries.remove(pos);
        let cbs: Vec<EventFn> = e.descs.iter().map(|(_, f)| f.clone()).collect();
        (e.bdev, e.removed, cbs)
    };
    removed.store(true, Ordering::Release);
    // Outside the lock: a callback typically unregisters the opener's own bdev.
    for cb in callbacks {
        cb(BdevEvent::Remove);
    }
    bdev.on_unregister();
    tracing::info!(bdev = name, "bdev unregistered");
    Ok(())
}

/// Tells every opener of `name` about `ev` (called by the bdev's module, from any thread).
/// Unknown names are ignored: the bdev may just have been removed.
pub fn notify(name: &str, ev: BdevEvent) {
    let callbacks: Vec<EventFn> = {
        let r = REGISTRY.lock();
        match r.entries.iter().find(|e| e.bdev.name() == name) {
            Some(e) => e.descs.iter().map(|(_, f)| f.clone()).collect(),
            None => return,
        }
    };
    for cb in callbacks {
        cb(ev);
    }
}

/// Looks up a bdev by name.
pub fn get(name: &str) -> Option<BdevHandle> {
    let r = REGISTRY.lock();
    r.entries.iter().find(|e| e.bdev.name() == name).map(handle)
}

fn handle(e: &Entry) -> BdevHandle {
    BdevHandle {
        id: e.id,
        bdev: e.bdev.clone(),
        stats: e.stats.clone(),
        claimed_by: e.claim.clone(),
    }
}

/// All bdevs, in registration order (bases before the virtual bdevs built on them).
pub fn list() -> Vec<BdevHandle> {
    REGISTRY.lock().entries.iter().map(handle).collect()
}

/// Generates an unused name `<prefix><n>`.
pub fn unused_name(prefix: &str) -> String {
    let r = REGISTRY.lock();
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|n| !r.entries.iter().any(|e| e.bdev.name() == n))
        .unwrap_or_else(|| prefix.to_string())
}

/// An open handle on a bdev. Dropping it closes it (and releases its claim).
pub struct BdevDesc {
    id: u64,
    pub(crate) bdev_id: u64,
    pub(crate) bdev: Arc<dyn Bdev>,
    pub(crate) stats: Arc<IoStats>,
    pub(crate) removed: Arc<AtomicBool>,
    claimed: AtomicBool,
}

impl std::fmt::Debug for BdevDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BdevDesc")
            .field("bdev", &self.bdev.name())
            .finish()
    }
}

/// Opens a bdev; `on_event` is called (from any thread) when it is removed.
pub fn open(
    name: &str,
    on_event: impl Fn(BdevEvent) + Send + Sync + 'static,
) -> Result<BdevDesc, BdevError> {
    let mut r = REGISTRY.lock();
    let e = r
        .entries
        .iter_mut()
        .find(|e| e.bdev.name() == name)
        .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    e.descs.push((id, Arc::new(on_event)));
    Ok(BdevDesc {
        id,
        bdev_id: e.id,
        bdev: e.bdev.clone(),
        stats: e.stats.clone(),
        removed: e.removed.clone(),
        claimed: AtomicBool::new(false),
    })
}

impl BdevDesc {
    pub fn bdev(&self) -> &Arc<dyn Bdev> {
        &self.bdev
    }

    pub fn name(&self) -> &str {
        self.bdev.name()
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Claims the bdev for `owner` (a module or virtual bdev name). Fails if anyone holds it.
    pub fn claim(&self, owner: &str) -> Result<(), BdevError> {
        let mut r = REGISTRY.lock();
        let e = r
            .entries
            .iter_mut()
            .find(|e| e.id == self.bdev_id)
            .ok_or_else(|| BdevError::NotFound(self.bdev.name().to_string()))?;
        if let Some(by) = &e.claim {
            return Err(BdevError::Claimed {
                name: self.bdev.name().to_string(),
                by: by.clone(),
            });
        }
        e.claim = Some(owner.to_string());
        self.claimed.store(true, Ordering::Release);
        Ok(())
    }

    /// Releases a claim taken through this descriptor.
    pub fn release_claim(&self) {
        if self.claimed.swap(false, Ordering::AcqRel) {
            let mut r = REGISTRY.lock();
            if let Some(e) = r.entries.iter_mut().find(|e| e.id == self.bdev_id) {
                e.claim = None;
            }
        }
    }
}

impl Drop for BdevDesc {
    fn drop(&mut self) {
        self.release_claim();
        let mut r = REGISTRY.lock();
        if let Some(e) = r.entries.iter_mut().find(|e| e.id == self.bdev_id) {
            e.descs.retain(|(id, _)| *id != self.id);
        }
    }
}
