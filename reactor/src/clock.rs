//! Cheap timestamps for the hot path: raw TSC ticks (through quanta) with a calibrated rate.

use std::sync::OnceLock;
use std::time::Duration;

fn clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// Raw ticks: monotonic, comparable across threads, a few nanoseconds to read.
#[inline]
pub fn ticks() -> u64 {
    clock().raw()
}

/// Ticks per second of [`ticks`], measured once.
pub fn tick_rate() -> u64 {
    static RATE: OnceLock<u64> = OnceLock::new();
    *RATE.get_or_init(|| {
        let c = clock();
        let a = c.raw();
        let ns = c.delta_as_nanos(a, a + 1_000_000_000);
        // 1e9 ticks took `ns` nanoseconds.
        ((1_000_000_000u128 * 1_000_000_000u128) / ns.max(1) as u128) as u64
    })
}

/// Nanoseconds between two tick readings.
#[inline]
pub fn ticks_to_nanos(start: u64, end: u64) -> u64 {
    clock().delta_as_nanos(start, end.max(start))
}

pub fn duration_to_ticks(d: Duration) -> u64 {
    ((d.as_nanos() * tick_rate() as u128) / 1_000_000_000u128) as u64
}

pub fn ticks_to_duration(t: u64) -> Duration {
    Duration::from_nanos(((t as u128 * 1_000_000_000u128) / tick_rate().max(1) as u128) as u64)
}
