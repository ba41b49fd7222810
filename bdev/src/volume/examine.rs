//! Examine plumbing shared by the volume modules: examine reads run on reactor 0 and are
//! counted (so `bdev_wait_for_examine` and the end of a `--json` load can wait for them),
//! then volumes still pending are assembled with what is present.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Examine reads started and not finished, across modules.
static EXAMINING: AtomicUsize = AtomicUsize::new(0);

/// Runs a module's examine of bdev `name` on reactor 0, counted until it finishes.
pub fn spawn_examine<F, Fut>(name: &str, examine: F)
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
pub fn assemble_pending<K, F, Fut>(pending: impl FnOnce() -> Vec<K>, assemble: F)
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
pub fn on_a_reactor<F, Fut>(make: F)
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
