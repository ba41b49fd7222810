//! What a load-generator job measured, and the totals over jobs: shared by `strata-bdevperf`
//! and `strata-perf`, so both report throughput and latency the same way.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Throughput and latency of one job, or of several added together.
#[derive(Debug, Clone)]
pub struct JobStats {
    pub ios: u64,
    pub errors: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Average latency in µs (exact when the job summed every I/O's latency).
    pub avg_us: f64,
    /// Latencies in ns (possibly sampled).
    pub histogram: Histogram<u64>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl JobStats {
    /// `avg_us`: None takes the histogram's mean.
    pub fn new(
        ios: u64,
        errors: u64,
        bytes: u64,
        seconds: f64,
        avg_us: Option<f64>,
        histogram: Histogram<u64>,
    ) -> JobStats {
        JobStats {
            avg_us: avg_us.unwrap_or_else(|| histogram.mean() / 1000.0),
            ios,
            errors,
            bytes,
            seconds,
            histogram,
        }
    }

    /// The sum of several jobs run side by side (elapsed time: the longest job's).
    pub fn total<'a>(all: impl IntoIterator<Item = &'a JobStats>) -> Option<JobStats> {
        let mut it = all.into_iter();
        let mut t = it.next()?.clone();
        for s in it {
            let _ = t.histogram.add(&s.histogram);
            t.ios += s.ios;
            t.errors += s.errors;
            t.bytes += s.bytes;
            t.seconds = t.seconds.max(s.seconds);
        }
        t.avg_us = t.histogram.mean() / 1000.0;
        Some(t)
    }

    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.seconds.max(1e-9)
    }
    pub fn mib_s(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9) / (1024.0 * 1024.0)
    }
    pub fn min_us(&self) -> f64 {
        us(self.histogram.min())
    }
    pub fn max_us(&self) -> f64 {
        us(self.histogram.max())
    }
    /// Latency at quantile `q` (0.5, 0.99, ...), µs.
    pub fn quantile_us(&self, q: f64) -> f64 {
        us(self.histogram.value_at_quantile(q))
    }

    /// The figures as JSON (`--json-output`).
    pub fn json(&self) -> Value {
        json!({
            "iops": self.iops(), "mib_s": self.mib_s(),
            "avg_us": self.avg_us, "min_us": self.min_us(), "max_us": self.max_us(),
            "p50_us": self.quantile_us(0.5), "p99_us": self.quantile_us(0.99),
            "p999_us": self.quantile_us(0.999), "errors": self.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_jobs_and_keep_the_longest_time() {
        let mut h = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!());
        let _ = h.record(10_000);
        let a = JobStats::new(100, 0, 409_600, 1.0, None, h.clone());
        let b = JobStats::new(300, 2, 1_228_800, 2.0, None, h);
        let t = JobStats::total([&a, &b]).unwrap_or_else(|| unreachable!());
        assert_eq!((t.ios, t.errors, t.bytes), (400, 2, 1_638_400));
        assert_eq!(t.iops(), 200.0);
        assert!((t.avg_us - 10.0).abs() < 0.1);
        assert!(JobStats::total([]).is_none());
    }
}
