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
        if let Some(d) = self.delay(mb_per_sec, bytes) {
            strata_reactor::sleep(d).await;
        }
    }

    /// Counts `bytes`; how long to sleep to be back under `mb_per_sec` (None: no need).
    pub fn delay(&mut self, mb_per_sec: u64, bytes: u64) -> Option<Duration> {
        self.bytes += bytes;
        if mb_per_sec == 0 {
            return None;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / (mb_per_sec as f64 * 1e6));
        let el = self.start.elapsed();
        (due > el).then(|| due - el)
    }
}
