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
pub use framework::{framework, Mode, ReactorInfo, ReactorSet};
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
    with_current(|r| r.register_poller(name, None, None, Box::new(f))).ok_or(ReactorError::NotOnReactor)?
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
