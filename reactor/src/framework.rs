//! The set of reactors of a process: starting them on a core mask, sending them work, reading
//! their statistics and stopping them.

use crate::clock;
use crate::poller::PollerInfo;
use crate::reactor::{enter, Reactor, ReactorShared};
use crate::ReactorError;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// How reactors wait for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Busy-poll: lowest latency, one full core per reactor.
    Poll,
    /// Sleep in epoll when every poller is idle.
    Interrupt,
}

/// What `framework_get_reactors` reports of one reactor.
#[derive(Debug, Clone, Serialize)]
pub struct ReactorInfo {
    pub lcore: usize,
    pub index: usize,
    pub busy: u64,
    pub idle: u64,
    pub in_interrupt: bool,
    pub wakeups: u64,
    pub tasks: usize,
    pub pollers: Vec<PollerInfo>,
}

static HELPER_CORES: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

type HelperJob = Box<dyn FnOnce() + Send>;
static HELPERS: std::sync::OnceLock<crossbeam::channel::Sender<HelperJob>> =
    std::sync::OnceLock::new();
/// Helper threads: enough for a backup's pipeline next to a long verify.
const HELPER_THREADS: usize = 4;

/// Runs `f` on a helper thread: blocking work (file-system calls) a reactor must not make.
/// The helpers are a small pool started with the reactors, on the cores no reactor uses (all
/// the process's cores if every one has a reactor). Jobs queue when all are busy. (A thread
/// spawned per job by a polling reactor would start on the reactor's core and wait a whole
/// scheduler slice before it could move.)
pub fn run_on_helper(f: impl FnOnce() + Send + 'static) -> Result<(), ReactorError> {
    let tx = HELPERS.get_or_init(start_helpers);
    tx.send(Box::new(f)).map_err(|_| ReactorError::Stopped)
}

fn start_helpers() -> crossbeam::channel::Sender<HelperJob> {
    let (tx, rx) = crossbeam::channel::unbounded::<HelperJob>();
    let cores = HELPER_CORES.get().cloned().unwrap_or_default();
    for i in 0..HELPER_THREADS {
        let (rx, cores) = (rx.clone(), cores.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("helper_{i}"))
            .spawn(move || {
                if !cores.is_empty() {
                    if let Err(e) = crate::sys::set_thread_affinity(&cores) {
                        tracing::warn!(error = %e, "helper thread keeps its inherited CPU affinity");
                    }
                }
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start a helper thread");
        }
    }
    tx
}

/// Handle to the running reactors. Cloneable and `Send`.
#[derive(Clone, Debug)]
pub struct ReactorSet {
    inner: Arc<SetInner>,
}

#[derive(Debug)]
struct SetInner {
    shared: Vec<Arc<ReactorShared>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    mode: Mode,
}

static GLOBAL: OnceLock<ReactorSet> = OnceLock::new();

/// The process's reactor set, once one was started with `install_global`.
pub fn framework() -> Option<&'static ReactorSet> {
    GLOBAL.get()
}

impl ReactorSet {
    /// Starts one pinned reactor thread per core in `cores`.
    pub fn start(cores: &[usize], mode: Mode) -> Result<Self, ReactorError> {
        let available: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        // Helper threads (blocking file work) run where no reactor polls, if there is such
        // a core: a thread spawned by a reactor would otherwise inherit its pinning and
        // queue behind a polling loop for whole scheduler slices.
        let free: Vec<usize> = available
            .iter()
            .copied()
            .filter(|c| !cores.contains(c))
            .collect();
        let _ = HELPER_CORES.set(if free.is_empty() {
            available.clone()
        } else {
            free
        });
        // Started here, from the thread starting the reactors, not later from a reactor.
        let _ = HELPERS.get_or_init(start_helpers);
        for c in cores {
            if !available.is_empty() && !available.contains(c) {
                return Err(ReactorError::CoreUnavailable(*c, available.clone()));
            }
        }
        // Calibrate the clock before any reactor measures time with it.
        let _ = clock::tick_rate();
        let mut shared = Vec::new();
        for (i, &c) in cores.iter().enumerate() {
            shared.push(Arc::new(ReactorShared::new(i, c, mode == Mode::Interrupt)?));
        }
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) =
            crossbeam::channel::bounded::<Result<(), ReactorError>>(cores.len());
        for s in &shared {
            let s = s.clone();
            let tx = ready_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("reactor_{}", s.core))
                .spawn(move || {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: s.core }) {
                        tracing::warn!(core = s.core, "could not pin reactor thread to its core");
                    }
                    let r = match Reactor::new(s.clone()) {
                        Ok(r) => std::rc::Rc::new(r),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(()));
                    enter(r, |r| r.run());
                })
                .map_err(ReactorError::Os)?;
            threads.push(t);
        }
        for _ in cores {
            ready_rx.recv().map_err(|_| ReactorError::Stopped)??;
        }
        tracing::info!(
            cores = ?cores,
            mode = if mode == Mode::Interrupt { "interrupt" } else { "poll" },
            "reactors started"
        );
        Ok(Self {
            inner: Arc::new(SetInner {
                shared,
                threads: Mutex::new(threads),
                mode,
            }),
        })
    }

    /// Makes this set reachable through [`framework`]. Only the first call wins.
    pub fn install_global(&self) {
        let _ = GLOBAL.set(self.clone());
    }

    pub fn len(&self) -> usize {
        self.inner.shared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.shared.is_empty()
    }

    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    pub fn cores(&self) -> Vec<usize> {
        self.inner.shared.iter().map(|s| s.core).collect()
    }

    fn shared(&self, index: usize) -> Result<&Arc<ReactorShared>, ReactorError> {
        self.inner
            .shared
            .get(index)
            .ok_or(ReactorError::NoSuchReactor(index))
    }

    /// Runs `f` on reactor `index` (fire and forget).
    pub fn send(
        &self,
        index: usize,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<(), ReactorError> {
        let s = self.shared(index)?;
        if s.stop.load(Ordering::Acquire) {
            return Err(ReactorError::Stopped);
        }
        s.post(Box::new(f));
        Ok(())
    }

    /// Runs `f` on reactor `index` and waits for its result. Never call it from reactor
    /// `index` itself.
    pub fn call<R: Send + 'static>(
        &self,
        index: usize,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, ReactorError> {
        self.call_timeout(index, Duration::from_secs(3600), f)
    }

    pub fn call_timeout<R: Send + 'static>(
        &self,
        index: usize,
        timeout: Duration,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, ReactorError> {
        let (tx, rx) = crossbeam::channel::bounded(1);
        self.send(index, move || {
            let _ = tx.send(f());
        })?;
        rx.recv_timeout(timeout).map_err(|_| ReactorError::Timeout)
    }

    /// Spawns the future built by `make` on reactor `index`; the future itself need not be Send.
    pub fn spawn_on<F, Fut>(&self, index: usize, make: F) -> Result<(), ReactorError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.send(index, move || {
            crate::spawn_local(make()).detach();
        })
    }

    /// Runs the future built by `make` on reactor `index` and blocks until it finishes.
    pub fn block_on<F, Fut, R>(&self, index: usize, make: F) -> Result<R, ReactorError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = crossbeam::channel::bounded(1);
        self.spawn_on(index, move || async move {
            let _ = tx.send(make().await);
        })?;
        rx.recv().map_err(|_| ReactorError::Stopped)
    }

    /// Statistics of every reactor (asks each reactor for its poller list).
    pub fn infos(&self) -> Vec<ReactorInfo> {
        let mut out = Vec::new();
        for s in &self.inner.shared {
            let (pollers, tasks) = self
                .call_timeout(s.index, Duration::from_secs(2), || {
                    crate::reactor::with_current(|r| (r.poller_infos(), r.live_tasks()))
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            out.push(ReactorInfo {
                lcore: s.core,
                index: s.index,
                busy: s.busy_ticks.load(Ordering::Relaxed),
                idle: s.idle_ticks.load(Ordering::Relaxed),
                in_interrupt: s.interrupt_mode,
                wakeups: s.wakeups.load(Ordering::Relaxed),
                tasks,
                pollers,
            });
        }
        out
    }

    /// Stops every reactor after its current turn and joins the threads.
    pub fn stop(&self) {
        for s in &self.inner.shared {
            s.stop.store(true, Ordering::Release);
            s.notify();
        }
        let threads: Vec<_> = match self.inner.threads.lock() {
            Ok(mut t) => t.drain(..).collect(),
            Err(p) => p.into_inner().drain(..).collect(),
        };
        for t in threads {
            let _ = t.join();
        }
    }
}
