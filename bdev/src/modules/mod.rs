//! Bdev modules: one file per bdev type.
//!
//! Base bdevs: [`malloc`] (RAM), [`null`] (discards), [`uring`] (files and block devices
//! through io_uring; also serves SPDK's `aio`). Virtual bdevs for fault injection:
//! [`error`] and [`delay`], built on [`base::ClaimedBase`] (an opened, claimed base bdev).
//! Redundancy: [`raid`] (raid0/1/5/6, concat), [`mirror`] (two legs of any kind, split and
//! resume, checksum resync, scrub). Shared by them: [`intent`] (write-intent / change
//! bitmap and region locks), [`ondisk`] (superblock fields), [`pacer`] (job rate limits).

pub mod base;
pub mod delay;
pub mod error;
pub mod intent;
pub mod malloc;
pub mod mirror;
pub mod null;
pub mod ondisk;
pub mod pacer;
pub mod raid;
pub mod uring;

use crate::error::BdevError;
use crate::registry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Block sizes strata accepts: powers of two from 512 B to 64 KiB.
pub fn validate_block_size(bs: u32) -> Result<(), BdevError> {
    if !(512..=65536).contains(&bs) || !bs.is_power_of_two() {
        return Err(BdevError::Invalid(format!(
            "block_size {bs} is not a power of two between 512 and 65536"
        )));
    }
    Ok(())
}

/// Unregisters `name` if it belongs to `module` (so `bdev_malloc_delete` cannot delete a
/// uring bdev).
pub(crate) fn delete_of_module(name: &str, module: &str) -> Result<(), BdevError> {
    let h = registry::get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    if h.bdev.module() != module {
        return Err(BdevError::NotFound(format!(
            "{name} (it is a {} bdev, not {module})",
            h.bdev.module()
        )));
    }
    registry::unregister(name)
}

/// Lets modules look at a newly registered bdev (RAID and mirror re-assembly from
/// superblocks).
pub(crate) fn examine(name: &str) {
    raid::examine_hook(name);
    mirror::examine_hook(name);
}

/// End of examine (`bdev_wait_for_examine`, end of `--json` load): brings up degraded RAID
/// arrays, then mirrors (whose legs may be those arrays) that can run on one leg.
pub fn finish_examine() {
    raid::finish_examine();
    mirror::finish_examine();
}

/// Examine reads started and not finished, across modules.
static EXAMINING: AtomicUsize = AtomicUsize::new(0);

/// Runs a module's examine of bdev `name` on reactor 0, counted until it finishes.
pub(crate) fn spawn_examine<F, Fut>(name: &str, examine: F)
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let Some(f) = strata_reactor::framework() else {
        return;
    };
    let name = name.to_string();
    EXAMINING.fetch_add(1, Ordering::AcqRel);
    let spawned = f.spawn_on(0, move || async move {
        examine(name).await;
        EXAMINING.fetch_sub(1, Ordering::AcqRel);
    });
    if spawned.is_err() {
        EXAMINING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits (up to 3 s) until every examine started so far has finished.
pub fn wait_for_examine() {
    for _ in 0..3000 {
        if EXAMINING.load(Ordering::Acquire) == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Once examine reads are done: runs `assemble(key, true)` on reactor 0 for every volume
/// `pending` still lists.
pub(crate) fn assemble_pending<K, F, Fut>(pending: impl FnOnce() -> Vec<K>, assemble: F)
where
    K: Send + 'static,
    F: Fn(K, bool) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    wait_for_examine();
    let keys = pending();
    let Some(f) = strata_reactor::framework() else {
        return;
    };
    for k in keys {
        let _ = f.block_on(0, move || assemble(k, true));
    }
}

/// Runs a background task on this reactor, or on reactor 0 from other threads.
pub(crate) fn on_a_reactor<F, Fut>(make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    if strata_reactor::current_index().is_some() {
        strata_reactor::spawn_local(make()).detach();
    } else if let Some(f) = strata_reactor::framework() {
        let _ = f.spawn_on(0, make);
    }
}
