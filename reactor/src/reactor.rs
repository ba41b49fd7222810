//! One reactor: the event loop of one core. It runs messages from other threads, ready tasks,
//! expired timers and pollers, and in interrupt mode sleeps in epoll when all of them are idle.

use crate::clock;
use crate::executor::Executor;
use crate::poller::{new_entry, PollerEntry, PollerHandle, PollerInfo};
use crate::sys::{Epoll, EventFd};
use crate::timer::{TimerHandle, TimerQueue};
use crate::ReactorError;
use crossbeam::queue::SegQueue;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) type Message = Box<dyn FnOnce() + Send>;

/// Token of the reactor's own eventfd in its epoll set.
const WAKE_TOKEN: u64 = u64::MAX;

/// The part of a reactor other threads may touch: its queues, wake-up fd and counters.
pub struct ReactorShared {
    pub(crate) index: usize,
    pub(crate) core: usize,
    pub(crate) msgs: SegQueue<Message>,
    pub(crate) ready: SegQueue<usize>,
    wake: EventFd,
    sleeping: AtomicBool,
    pub(crate) interrupt_mode: bool,
    pub(crate) stop: AtomicBool,
    pub(crate) busy_ticks: AtomicU64,
    pub(crate) idle_ticks: AtomicU64,
    pub(crate) wakeups: AtomicU64,
}

impl std::fmt::Debug for ReactorShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorShared")
            .field("index", &self.index)
            .field("core", &self.core)
            .finish()
    }
}

impl ReactorShared {
    pub(crate) fn new(
        index: usize,
        core: usize,
        interrupt_mode: bool,
    ) -> Result<Self, ReactorError> {
        Ok(Self {
            index,
            core,
            msgs: SegQueue::new(),
            ready: SegQueue::new(),
            wake: EventFd::new().map_err(ReactorError::Os)?,
            sleeping: AtomicBool::new(false),
            interrupt_mode,
            stop: AtomicBool::new(false),
            busy_ticks: AtomicU64::new(0),
            idle_ticks: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
        })
    }

    /// Wakes the reactor if it sleeps. Pairs with the fence in `Reactor::sleep`: either the
    /// reactor sees the queued item before sleeping, or we see it sleeping and write the eventfd.
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            self.wake.notify();
        }
    }

    pub(crate) fn post(&self, m: Message) {
        self.msgs.push(m);
        self.notify();
    }
}

/// The reactor-local half; lives in a thread-local of its thread.
pub struct Reactor {
    pub(crate) shared: Arc<ReactorShared>,
    pollers: RefCell<Vec<Rc<PollerEntry>>>,
    timers: RefCell<TimerQueue>,
    executor: Executor,
    epoll: Epoll,
    next_poller_token: Cell<u64>,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("shared", &self.shared)
            .finish()
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Reactor>>> = const { RefCell::new(None) };
    static CURRENT_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Runs `f` with the current thread's reactor, or returns None off reactor threads and
/// while the thread's reactor is being torn down (a task dropped with the reactor, e.g. a
/// pending timer, must not touch the thread-local being destroyed).
pub fn with_current<R>(f: impl FnOnce(&Rc<Reactor>) -> R) -> Option<R> {
    let r = CURRENT
        .try_with(|c| c.try_borrow().ok().and_then(|b| b.clone()))
        .ok()
        .flatten()?;
    Some(f(&r))
}

/// Index (0..n) of the reactor running this thread, if any. Cheap: one thread-local read.
#[inline]
pub fn current_index() -> Option<usize> {
    let i = CURRENT_INDEX.with(Cell::get);
    (i != usize::MAX).then_some(i)
}

impl Reactor {
    pub(crate) fn new(shared: Arc<ReactorShared>) -> Result<Self, ReactorError> {
        let epoll = Epoll::new().map_err(ReactorError::Os)?;
        epoll
            .add(shared.wake.raw(), WAKE_TOKEN)
            .map_err(ReactorError::Os)?;
        Ok(Self {
            shared,
            pollers: RefCell::new(Vec::new()),
            timers: RefCell::new(TimerQueue::default()),
            executor: Executor::default(),
            epoll,
            next_poller_token: Cell::new(0),
        })
    }

    pub fn index(&self) -> usize {
        self.shared.index
    }

    pub fn core(&self) -> usize {
        self.shared.core
    }

    pub fn interrupt_mode(&self) -> bool {
        self.shared.interrupt_mode
    }

    pub fn register_poller(
        &self,
        name: &str,
        period: Option<std::time::Duration>,
        fd: Option<RawFd>,
        f: Box<dyn FnMut() -> bool>,
    ) -> Result<PollerHandle, ReactorError> {
        let period_ticks = period.map(clock::duration_to_ticks).unwrap_or(0);
        if let Some(fd) = fd {
            // A dead poller's fd leaves epoll only when its entry is purged; purge first, or
            // purging later would take a reused fd number (this new one) out of epoll.
            self.purge_dead_pollers();
            let tok = self.next_poller_token.get();
            self.next_poller_token.set(tok + 1);
            self.epoll.add(fd, tok).map_err(ReactorError::Os)?;
        }
        let e = new_entry(name, period_ticks, fd, f, clock::ticks());
        let h = PollerHandle {
            entry: Rc::downgrade(&e),
        };
        self.pollers.borrow_mut().push(e);
        Ok(h)
    }

    pub fn add_timer_at(&self, deadline: u64, f: Box<dyn FnOnce()>) -> TimerHandle {
        let seq = self.timers.borrow_mut().add(deadline, f);
        TimerHandle { seq, armed: true }
    }

    pub(crate) fn cancel_timer(&self, seq: u64) {
        self.timers.borrow_mut().cancel(seq);
    }

    pub(crate) fn spawn_boxed(&self, fut: std::pin::Pin<Box<dyn Future<Output = ()>>>) {
        self.executor.spawn(&self.shared, fut)
    }

    pub fn poller_infos(&self) -> Vec<PollerInfo> {
        self.pollers
            .borrow()
            .iter()
            .filter(|p| p.alive.get())
            .map(|p| p.info())
            .collect()
    }

    pub fn live_tasks(&self) -> usize {
        self.executor.live_tasks()
    }

    /// One turn of the loop. Returns whether anything did work.
    fn turn(&self) -> bool {
        let mut busy = false;
        // Messages: bounded per turn so a flood cannot starve I/O pollers.
        for _ in 0..128 {
            match self.shared.msgs.pop() {
                Some(m) => {
                    m();
                    busy = true;
                }
                None => break,
            }
        }
        for _ in 0..256 {
            if !self.executor.run_one(&self.shared) {
                break;
            }
            busy = true;
        }
        let now = clock::ticks();
        loop {
            // Take the callback out before calling it: it may add timers.
            let f = self.timers.borrow_mut().pop_expired(now);
            match f {
                Some(f) => {
                    f();
                    busy = true;
                }
                None => break,
            }
        }
        busy |= self.run_pollers(now);
        busy
    }

    fn run_pollers(&self, now: u64) -> bool {
        let mut busy = false;
        let mut dead = false;
        let mut i = 0;
        loop {
            // Index-based so pollers may register pollers while we iterate.
            let p = match self.pollers.borrow().get(i) {
                Some(p) => p.clone(),
                None => break,
            };
            i += 1;
            if !p.alive.get() {
                dead = true;
                continue;
            }
            if p.period_ticks != 0 {
                if now < p.next_due.get() {
                    continue;
                }
                p.next_due.set(now + p.period_ticks);
            }
            let did = match p.f.try_borrow_mut() {
                Ok(mut f) => f(),
                Err(_) => false, // re-entered from inside itself; skip
            };
            p.run_count.set(p.run_count.get() + 1);
            if did {
                p.busy_count.set(p.busy_count.get() + 1);
                busy = true;
            }
        }
        if dead {
            self.purge_dead_pollers();
        }
        busy
    }

    /// Drops unregistered pollers and takes their fds out of epoll.
    fn purge_dead_pollers(&self) {
        let mut ps = self.pollers.borrow_mut();
        ps.retain(|p| {
            if !p.alive.get() {
                if let Some(fd) = p.fd {
                    let _ = self.epoll.delete(fd);
                }
                false
            } else {
                true
            }
        });
    }

    /// Earliest tick at which a timer or periodic poller is due.
    fn next_deadline(&self) -> Option<u64> {
        let t = self.timers.borrow_mut().next_deadline();
        let p = self
            .pollers
            .borrow()
            .iter()
            .filter(|p| p.alive.get() && p.period_ticks != 0)
            .map(|p| p.next_due.get())
            .min();
        match (t, p) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn sleep(&self) {
        let s = &self.shared;
        s.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !s.msgs.is_empty() || !s.ready.is_empty() || s.stop.load(Ordering::SeqCst) {
            s.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        let now = clock::ticks();
        let timeout = self
            .next_deadline()
            .map(|d| clock::ticks_to_duration(d.saturating_sub(now)));
        if timeout.is_some_and(|t| t.is_zero()) {
            s.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        let _ = self.epoll.wait(timeout);
        s.sleeping.store(false, Ordering::SeqCst);
        s.wake.drain();
        s.wakeups.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn run(self: &Rc<Self>) {
        let s = self.shared.clone();
        let mut last = clock::ticks();
        loop {
            let busy = self.turn();
            if s.stop.load(Ordering::Acquire) && !busy {
                break;
            }
            if !busy && s.interrupt_mode {
                self.sleep();
            }
            let now = clock::ticks();
            let dt = now.saturating_sub(last);
            last = now;
            // Single writer: a plain load+store is enough and avoids a locked instruction.
            let ctr = if busy { &s.busy_ticks } else { &s.idle_ticks };
            ctr.store(ctr.load(Ordering::Relaxed) + dt, Ordering::Relaxed);
        }
    }
}

/// Installs `r` as this thread's reactor for the duration of `f`.
pub(crate) fn enter<R>(r: Rc<Reactor>, f: impl FnOnce(&Rc<Reactor>) -> R) -> R {
    CURRENT.with(|c| *c.borrow_mut() = Some(r.clone()));
    CURRENT_INDEX.with(|c| c.set(r.index()));
    let out = f(&r);
    CURRENT.with(|c| *c.borrow_mut() = None);
    CURRENT_INDEX.with(|c| c.set(usize::MAX));
    out
}
