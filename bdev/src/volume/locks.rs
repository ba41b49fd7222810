//! Range locks: writes to one stripe (and rebuild, resync and degraded reads of it) run one
//! at a time, across all reactors; different stripes proceed in parallel. RAID locks by
//! stripe; a parity member locks the fixed-size block units a write covers, in ascending
//! order (so two multi-unit lockers never deadlock).
//!
//! Waiters park their task's waker (wakers are `Send`), so an unlock on one reactor wakes a
//! waiter on another. An uncontended lock costs one short mutex hold.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct StripeLocks {
    held: Mutex<HashMap<u64, Vec<Waker>>>,
}

/// A held stripe lock; dropping it unlocks and wakes the waiters.
pub struct StripeGuard<'a> {
    locks: &'a StripeLocks,
    stripe: u64,
}

impl StripeLocks {
    pub async fn lock(&self, stripe: u64) -> StripeGuard<'_> {
        poll_fn(|cx| {
            let mut h = self.held.lock();
            match h.get_mut(&stripe) {
                None => {
                    h.insert(stripe, Vec::new());
                    Poll::Ready(())
                }
                Some(w) => {
                    if !w.iter().any(|x| x.will_wake(cx.waker())) {
                        w.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        })
        .await;
        StripeGuard {
            locks: self,
            stripe,
        }
    }
}

impl StripeLocks {
    /// Locks units `first..=last` now if every one is free (for a caller on the I/O path
    /// that cannot await); false, having locked nothing, otherwise. The caller unlocks with
    /// [`StripeLocks::unlock_units`].
    pub fn try_lock_units(&self, first: u64, last: u64) -> bool {
        let mut h = self.held.lock();
        if (first..=last).any(|u| h.contains_key(&u)) {
            return false;
        }
        for u in first..=last {
            h.insert(u, Vec::new());
        }
        true
    }

    /// Unlocks units `first..=last` taken by [`StripeLocks::try_lock_units`].
    pub fn unlock_units(&self, first: u64, last: u64) {
        let mut wake: Vec<Waker> = Vec::new();
        {
            let mut h = self.held.lock();
            for u in first..=last {
                if let Some(w) = h.remove(&u) {
                    wake.extend(w);
                }
            }
        }
        wake.into_iter().for_each(Waker::wake);
    }

    /// Locks units `first..=last` in ascending order.
    pub async fn lock_units(&self, first: u64, last: u64) -> Vec<StripeGuard<'_>> {
        let mut held = Vec::with_capacity((last - first + 1) as usize);
        for u in first..=last {
            held.push(self.lock(u).await);
        }
        held
    }
}

impl Drop for StripeGuard<'_> {
    fn drop(&mut self) {
        let waiters = self.locks.held.lock().remove(&self.stripe);
        // Every waiter retries; one wins, the others park again.
        for w in waiters.into_iter().flatten() {
            w.wake();
        }
    }
}
