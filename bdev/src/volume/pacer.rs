//! Rate limiting for background jobs (rebuild, resync, scan, scrub): a job accounts the
//! bytes it moved and sleeps whenever it runs ahead of the configured rate.

use std::time::{Duration, Instant};

pub struct Pacer {
    pub start: Instant,
    bytes: u64,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

impl Pacer {
    pub fn new() -> Pacer {
        Pacer {
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `bytes` and sleeps until the job is back under `mb_per_sec` (0: unlimited).
    pub async fn account(&mut self, mb_per_sec: u64, bytes: u64) {
        self.account_unless(mb_per_sec, bytes, &|| false).await
    }

    /// As [`Pacer::account`], waking early once `stop` says so (a job cancelled while it
    /// sleeps stops within a millisecond: a snapshot split waits for that).
    pub async fn account_unless(&mut self, mb_per_sec: u64, bytes: u64, stop: &dyn Fn() -> bool) {
        self.bytes += bytes;
        if mb_per_sec == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / (mb_per_sec as f64 * 1e6));
        loop {
            let el = self.start.elapsed();
            if due <= el || stop() {
                return;
            }
            strata_reactor::sleep((due - el).min(Duration::from_millis(1))).await;
        }
    }
}
