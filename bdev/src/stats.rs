//! Per-bdev I/O statistics with one cache-padded slot per reactor: each reactor writes only its
//! own slot (plain load + store, no locked instruction); readers sum the slots.

use crate::io::IoType;
// Each reactor's slot on its own cache line(s), so reactors never share one.
use crossbeam::utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};

const MAX_REACTORS: usize = 128;

#[derive(Default)]
struct TypeCounters {
    ops: AtomicU64,
    bytes: AtomicU64,
    latency_ticks: AtomicU64,
}

#[derive(Default)]
struct Slot {
    by_type: [TypeCounters; IoType::COUNT],
    errors: AtomicU64,
    submitted: AtomicU64,
    completed: AtomicU64,
}

/// Counters of one bdev.
pub struct IoStats {
    slots: Box<[CachePadded<Slot>]>,
}

impl Default for IoStats {
    fn default() -> Self {
        // The last slot is shared by non-reactor threads and updated with atomic adds.
        Self {
            slots: (0..=MAX_REACTORS).map(|_| CachePadded::default()).collect(),
        }
    }
}

#[inline]
fn bump(c: &AtomicU64, v: u64, exclusive: bool) {
    if exclusive {
        c.store(c.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
    } else {
        c.fetch_add(v, Ordering::Relaxed);
    }
}

/// Summed view of a bdev's counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct TypeTotals {
    pub ops: u64,
    pub bytes: u64,
    pub latency_ticks: u64,
}

#[derive(Debug, Default, Clone)]
pub struct IoStatsSnapshot {
    pub by_type: [TypeTotals; IoType::COUNT],
    pub errors: u64,
    pub outstanding: u64,
}

/// Which slot of an [`IoStats`] a thread writes: a channel takes it once, at creation.
#[derive(Debug, Clone, Copy)]
pub struct StatSlot(usize);

impl StatSlot {
    /// The calling thread's slot: its reactor index, or the shared slot off reactors.
    pub fn current() -> Self {
        match strata_reactor::current_index() {
            Some(i) if i < MAX_REACTORS => StatSlot(i),
            _ => StatSlot(MAX_REACTORS),
        }
    }
}

impl IoStats {
    #[inline]
    fn slot_at(&self, at: StatSlot) -> (&Slot, bool) {
        (&*self.slots[at.0], at.0 < MAX_REACTORS)
    }

    #[inline]
    fn slot(&self) -> (&Slot, bool) {
        self.slot_at(StatSlot::current())
    }

    #[inline]
    pub fn submitted(&self, at: StatSlot) {
        let (s, ex) = self.slot_at(at);
        bump(&s.submitted, 1, ex);
    }

    #[inline]
    pub fn completed(&self, at: StatSlot, t: IoType, bytes: u64, latency_ticks: u64, ok: bool) {
        let (s, ex) = self.slot_at(at);
        bump(&s.completed, 1, ex);
        if ok {
            let c = &s.by_type[t as usize];
            bump(&c.ops, 1, ex);
            bump(&c.bytes, bytes, ex);
            bump(&c.latency_ticks, latency_ticks, ex);
        } else {
            bump(&s.errors, 1, ex);
        }
    }

    /// An I/O the bdev returned with `NoMemory`, to be resubmitted.
    #[inline]
    pub fn requeued(&self, at: StatSlot) {
        let (s, ex) = self.slot_at(at);
        bump(&s.completed, 1, ex);
    }

    /// An I/O rejected before it reached the bdev.
    pub fn rejected(&self) {
        let (s, ex) = self.slot();
        bump(&s.errors, 1, ex);
    }

    pub fn snapshot(&self) -> IoStatsSnapshot {
        let mut out = IoStatsSnapshot::default();
        let (mut sub, mut comp) = (0u64, 0u64);
        for s in self.slots.iter() {
            let s: &Slot = s;
            for (i, c) in s.by_type.iter().enumerate() {
                out.by_type[i].ops += c.ops.load(Ordering::Relaxed);
                out.by_type[i].bytes += c.bytes.load(Ordering::Relaxed);
                out.by_type[i].latency_ticks += c.latency_ticks.load(Ordering::Relaxed);
            }
            out.errors += s.errors.load(Ordering::Relaxed);
            sub = sub.wrapping_add(s.submitted.load(Ordering::Relaxed));
            comp = comp.wrapping_add(s.completed.load(Ordering::Relaxed));
        }
        out.outstanding = sub.wrapping_sub(comp);
        out
    }
}
