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
        self.bytes += bytes;
        if mb_per_sec == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / (mb_per_sec as f64 * 1e6));
        let el = self.start.elapsed();
        if due > el {
            strata_reactor::sleep(due - el).await;
        }
    }
}
