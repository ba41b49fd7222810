//! Background jobs over a volume (rebuild, resync, scan, scrub; later backup, drain and
//! parity rebuild): one slot per volume, so two jobs never race over the same cursor, one
//! progress record that RPCs read from any thread, one pacer for the bandwidth limit, and
//! cancel. A job moves its volume's data in steps; [`JobRun::step`] accounts each step's
//! bytes, sleeps when the job runs ahead of its rate, and says whether to stop.

use super::pacer::Pacer;
use parking_lot::Mutex;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A job's progress, shared between the job and whoever reports it.
#[derive(Debug)]
pub struct Progress {
    /// What the job does ("rebuild", "resync", "scan", ...).
    pub kind: &'static str,
    /// The member or leg it works on, if one.
    pub target: Option<String>,
    pub started: Instant,
    total_bytes: AtomicU64,
    done_bytes: AtomicU64,
    cancelled: AtomicBool,
    /// The job's task while it sleeps for its rate: cancel wakes it at once.
    sleeper: Mutex<Option<std::task::Waker>>,
}

/// Progress at one instant, with the derived figures every report shows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProgressReport {
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// 0..=100 (100 for an empty job).
    pub percent: f64,
    pub bytes_per_sec: f64,
    /// Seconds to go at the rate so far; `None` before anything moved.
    pub eta_secs: Option<f64>,
    pub elapsed_secs: f64,
}

impl ProgressReport {
    /// The fields every job report shows (`bdev_*_get`, `strata-rpc --wait`'s bar).
    pub fn json(&self, kind: &str) -> serde_json::Value {
        let round = |x: f64, k: f64| (x * k).round() / k;
        serde_json::json!({
            "kind": kind,
            "percent": round(self.percent, 10.0),
            "mb_per_sec": round(self.bytes_per_sec / 1e6, 10.0),
            "eta_seconds": round(self.eta_secs.unwrap_or(0.0), 10.0),
            "elapsed_seconds": round(self.elapsed_secs, 1000.0),
            "done_bytes": self.done_bytes,
            "total_bytes": self.total_bytes,
        })
    }
}

impl Progress {
    pub fn new(kind: &'static str, target: Option<String>, total_bytes: u64) -> Progress {
        Progress {
            kind,
            target,
            started: Instant::now(),
            total_bytes: AtomicU64::new(total_bytes),
            done_bytes: AtomicU64::new(0),
            cancelled: AtomicBool::new(false),
            sleeper: Mutex::new(None),
        }
    }
    pub fn set_total(&self, bytes: u64) {
        self.total_bytes.store(bytes, Ordering::Relaxed);
    }
    pub fn set_done(&self, bytes: u64) {
        self.done_bytes.store(bytes, Ordering::Relaxed);
    }
    pub fn add_done(&self, bytes: u64) {
        self.done_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Asks the job to stop at its next step.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        if let Some(w) = self.sleeper.lock().take() {
            w.wake();
        }
    }
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    pub fn report(&self) -> ProgressReport {
        let total = self.total_bytes.load(Ordering::Relaxed);
        let done = self.done_bytes.load(Ordering::Relaxed).min(total);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        ProgressReport {
            done_bytes: done,
            total_bytes: total,
            percent: if total == 0 {
                100.0
            } else {
                done as f64 * 100.0 / total as f64
            },
            bytes_per_sec: rate,
            eta_secs: (rate > 0.0).then(|| (total - done) as f64 / rate),
            elapsed_secs: secs,
        }
    }
}

/// A volume's one background-job slot, holding the running job's record `J` (a module's
/// record embeds a [`Progress`]).
#[derive(Debug)]
pub struct JobSlot<J> {
    cur: Mutex<Option<Arc<J>>>,
}

impl<J> Default for JobSlot<J> {
    fn default() -> Self {
        JobSlot {
            cur: Mutex::new(None),
        }
    }
}

impl<J> JobSlot<J> {
    /// Reserves the slot for the job `make` builds. None (and `make` is not called) if a job
    /// holds it.
    pub fn reserve(&self, make: impl FnOnce() -> J) -> Option<Arc<J>> {
        let mut c = self.cur.lock();
        if c.is_some() {
            return None;
        }
        let j = Arc::new(make());
        *c = Some(j.clone());
        Some(j)
    }
    /// Frees the slot (the job ended).
    pub fn release(&self) {
        *self.cur.lock() = None;
    }
    /// The running job, if one.
    pub fn current(&self) -> Option<Arc<J>> {
        self.cur.lock().clone()
    }
    pub fn is_busy(&self) -> bool {
        self.cur.lock().is_some()
    }
    /// The slot itself, locked (for callers that check and act under one lock).
    pub fn lock(&self) -> parking_lot::MutexGuard<'_, Option<Arc<J>>> {
        self.cur.lock()
    }
}

/// Why a job step says stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancelled;

/// A running job's side of its progress: counts steps, paces them, notices cancel.
pub struct JobRun<'a> {
    progress: &'a Progress,
    pacer: Pacer,
}

impl<'a> JobRun<'a> {
    pub fn new(progress: &'a Progress) -> JobRun<'a> {
        JobRun {
            progress,
            pacer: Pacer::new(),
        }
    }

    /// Counts a finished step of `bytes` and waits until the job is back under
    /// `mb_per_sec` (0: unlimited). Err if the job was cancelled.
    pub async fn step(&mut self, bytes: u64, mb_per_sec: u64) -> Result<(), Cancelled> {
        self.progress.add_done(bytes);
        self.pace(bytes, mb_per_sec).await
    }

    /// As [`JobRun::step`], for bytes moved that are not progress (a scan's copies).
    pub async fn pace(&mut self, bytes: u64, mb_per_sec: u64) -> Result<(), Cancelled> {
        if let Some(d) = self.pacer.delay(mb_per_sec, bytes) {
            let p = self.progress;
            let mut sleep = std::pin::pin!(strata_reactor::sleep(d));
            std::future::poll_fn(|cx| {
                *p.sleeper.lock() = Some(cx.waker().clone());
                if p.is_cancelled() {
                    return std::task::Poll::Ready(());
                }
                sleep.as_mut().poll(cx)
            })
            .await;
            p.sleeper.lock().take();
        }
        if self.progress.is_cancelled() {
            return Err(Cancelled);
        }
        Ok(())
    }

    pub fn elapsed_secs(&self) -> f64 {
        self.pacer.start.elapsed().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_derives_percent_rate_and_eta() {
        let p = Progress::new("resync", None, 1000);
        assert_eq!(p.report().eta_secs, None, "nothing moved yet");
        std::thread::sleep(std::time::Duration::from_millis(5));
        p.add_done(250);
        let r = p.report();
        assert_eq!((r.done_bytes, r.total_bytes), (250, 1000));
        assert!((r.percent - 25.0).abs() < 1e-9);
        assert!(r.bytes_per_sec > 0.0 && r.eta_secs.is_some_and(|e| e > 0.0));
        p.set_done(5000);
        assert_eq!(p.report().done_bytes, 1000, "done never exceeds total");
        assert_eq!(Progress::new("x", None, 0).report().percent, 100.0);
    }

    #[test]
    fn one_job_per_slot_and_cancel() {
        let slot: JobSlot<Progress> = JobSlot::default();
        let j = slot.reserve(|| Progress::new("rebuild", Some("M1".into()), 10));
        let j = j.expect("free slot");
        assert!(slot.reserve(|| unreachable!()).is_none(), "slot is taken");
        assert!(slot.is_busy());
        j.cancel();
        assert!(slot.current().is_some_and(|c| c.is_cancelled()));
        slot.release();
        assert!(slot.reserve(|| Progress::new("resync", None, 0)).is_some());
    }
}
