//! strata's reactor layer: one event loop per core.
//!
//! A [`ReactorSet`] starts one pinned thread per core of an SPDK-style core mask
//! ([`parse_core_mask`]). Each thread runs a [`Reactor`](reactor::Reactor): it executes
//! messages sent from other threads ([`ReactorSet::send`]), polls local `!Send` futures
//! ([`spawn_local`]), fires timers ([`after`], [`sleep`]) and calls pollers
//! ([`register_poller`]) — closures that report whether they found work. In
//! [`Mode::Interrupt`] an idle reactor sleeps in epoll until an fd of a poller becomes
//! readable, a message or wake-up arrives, or a timer is due. [`dma`] carves fixed-size,
//! O_DIRECT-aligned I/O buffers from hugepages (or ordinary pages) with per-thread caches.
//! The only `unsafe` is in [`sys`] (epoll, eventfd) and [`dma`] (mmap'd memory).

pub mod clock;
pub mod cpumask;
pub mod dma;
mod executor;
mod framework;
pub mod oneshot;
mod poller;
pub mod reactor;
pub mod sys;
mod timer;

pub use cpumask::parse_core_mask;
pub use executor::{yield_now, JoinHandle};
pub use framework::{framework, run_on_helper, Mode, ReactorInfo, ReactorSet};
pub use poller::{PollerHandle, PollerInfo};
pub use reactor::{current_index, with_current};
pub use timer::{Sleep, TimerHandle};

use std::future::Future;
use std::os::fd::RawFd;
use std::time::Duration;

/// Errors of the reactor layer.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    #[error("invalid core mask '{0}' (use 0x3, 3 or [0-1])")]
    BadCoreMask(String),
    #[error("core {0} is not available to this process (available: {1:?})")]
    CoreUnavailable(usize, Vec<usize>),
    #[error("no reactor with index {0}")]
    NoSuchReactor(usize),
    #[error("not on a reactor thread")]
    NotOnReactor,
    #[error("reactor stopped")]
    Stopped,
    #[error("timed out waiting for a reactor")]
    Timeout,
    #[error("DMA memory: {0}")]
    Dma(String),
    #[error(transparent)]
    Os(#[from] std::io::Error),
}

impl<T> JoinHandle<T> {
    /// Lets the task run to completion without anyone awaiting it.
    pub fn detach(self) {}
}

/// Spawns a `!Send` future on the current reactor.
///
/// # Panics
/// Off a reactor thread: that is a programming error, not an input error.
pub fn spawn_local<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let (task, handle) = executor::wrap(fut);
    with_current(|r| r.spawn_boxed(task)).expect("spawn_local called off a reactor thread");
    handle
}

/// Registers a poller called on every turn of the current reactor.
pub fn register_poller(
    name: &str,
    f: impl FnMut() -> bool + 'static,
) -> Result<PollerHandle, ReactorError> {
    with_current(|r| r.register_poller(name, None, None, Box::new(f)))
        .ok_or(ReactorError::NotOnReactor)?
}

/// Registers a poller called every `period`.
pub fn register_periodic_poller(
    name: &str,
    period: Duration,
    f: impl FnMut() -> bool + 'static,
) -> Result<PollerHandle, ReactorError> {
    with_current(|r| r.register_poller(name, Some(period), None, Box::new(f)))
        .ok_or(ReactorError::NotOnReactor)?
}

/// Registers a poller that, in interrupt mode, also wakes the reactor when `fd` is readable.
pub fn register_fd_poller(
    name: &str,
    fd: RawFd,
    f: impl FnMut() -> bool + 'static,
) -> Result<PollerHandle, ReactorError> {
    with_current(|r| r.register_poller(name, None, Some(fd), Box::new(f)))
        .ok_or(ReactorError::NotOnReactor)?
}

/// Calls `f` once after `d` on the current reactor.
pub fn after(d: Duration, f: impl FnOnce() + 'static) -> Result<TimerHandle, ReactorError> {
    let deadline = clock::ticks() + clock::duration_to_ticks(d);
    with_current(|r| r.add_timer_at(deadline, Box::new(f))).ok_or(ReactorError::NotOnReactor)
}

/// Completes after `d`; must be awaited on a reactor.
pub fn sleep(d: Duration) -> Sleep {
    Sleep::new(d)
}

/// Whether the current reactor (if any) runs in interrupt mode.
pub fn in_interrupt_mode() -> bool {
    with_current(|r| r.interrupt_mode()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn messages_tasks_and_wakers_across_threads() {
        let set = ReactorSet::start(&[0, 1], Mode::Interrupt).unwrap();
        // A task on reactor 0 waits on a oneshot completed from reactor 1.
        let (tx, rx) = oneshot::channel::<u32>();
        let s2 = set.clone();
        let got = set
            .block_on(0, move || async move {
                s2.send(1, move || tx.send(41)).unwrap();
                rx.await.unwrap() + 1
            })
            .unwrap();
        assert_eq!(got, 42);
        assert_eq!(set.call(1, current_index).unwrap(), Some(1));
        assert_eq!(current_index(), None);
        set.stop();
    }

    #[test]
    fn timers_and_periodic_pollers() {
        let set = ReactorSet::start(&[0], Mode::Interrupt).unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let r2 = runs.clone();
        let elapsed = set
            .block_on(0, move || async move {
                let h = register_periodic_poller("tick", Duration::from_millis(5), move || {
                    r2.fetch_add(1, Ordering::Relaxed);
                    true
                })
                .unwrap();
                let t = Instant::now();
                sleep(Duration::from_millis(50)).await;
                drop(h);
                t.elapsed()
            })
            .unwrap();
        assert!(elapsed >= Duration::from_millis(50));
        let n = runs.load(Ordering::Relaxed);
        assert!(
            (3..=15).contains(&n),
            "periodic poller ran {n} times in 50 ms at 5 ms period"
        );
        // Unregistered: no further runs.
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(runs.load(Ordering::Relaxed), n);
        let infos = set.infos();
        assert!(infos[0].pollers.iter().all(|p| p.name != "tick"));
        set.stop();
    }

    #[test]
    fn interrupt_mode_sleeps_and_wakes_on_message() {
        let set = ReactorSet::start(&[0], Mode::Interrupt).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let before = set.infos()[0].wakeups;
        // Idle: no wake-ups without work.
        std::thread::sleep(Duration::from_millis(200));
        let idle = set.infos()[0].wakeups;
        assert!(
            idle - before <= 4,
            "idle reactor woke {} times",
            idle - before
        );
        // A message from another thread wakes it promptly.
        let t = Instant::now();
        set.call(0, || ()).unwrap();
        assert!(t.elapsed() < Duration::from_millis(100));
        set.stop();
    }

    #[test]
    fn fd_poller_wakes_sleeping_reactor() {
        let set = ReactorSet::start(&[0], Mode::Interrupt).unwrap();
        let efd = Arc::new(sys::EventFd::new().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let (e2, h2) = (efd.clone(), hits.clone());
        set.call(0, move || {
            let e3 = e2.clone();
            register_fd_poller("efd", e2.raw(), move || {
                e3.drain();
                h2.fetch_add(1, Ordering::Relaxed);
                false
            })
            .unwrap()
            .detach();
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let before = hits.load(Ordering::Relaxed);
        efd.notify();
        let t = Instant::now();
        while hits.load(Ordering::Relaxed) == before && t.elapsed() < Duration::from_secs(2) {
            std::thread::yield_now();
        }
        assert!(
            hits.load(Ordering::Relaxed) > before,
            "fd readiness did not wake the reactor"
        );
        set.stop();
    }

    #[test]
    fn unavailable_core_is_an_error() {
        assert!(matches!(
            ReactorSet::start(&[1000], Mode::Interrupt),
            Err(ReactorError::CoreUnavailable(..))
        ));
    }
}
