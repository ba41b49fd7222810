//! The in-memory metadata of a redundant volume with superblocks (RAID arrays, mirrors): the
//! generation and the write-intent / change bitmap, and the rule that orders their writes
//! against data writes.
//!
//! Write intent: before a write touches a region, its bit must be set *on disk*
//! ([`IntentBitmap::begin_write`] says whether the caller must wait for a sync). A region's
//! bit is cleared only when no write is in flight in it and none started during a whole
//! clearing period, so a crash leaves set bits over every region whose copies (or parity)
//! might disagree. While bits are held ([`IntentBitmap::hold_bits`]: a mirror split or
//! degraded, a resync running) they record every change until a resync clears them.
//!
//! Region locks let a background copy exclude host writes from the regions it works on: a
//! locked region admits no new writes ([`IntentBitmap::try_begin_range`] parks the writer),
//! and the copy waits for the writes already in flight to drain.
//!
//! Metadata writes are serialised: one sync at a time writes a consistent snapshot, and a
//! waiter is satisfied by a sync that started after its change.

use parking_lot::Mutex;
use std::task::{Poll, Waker};

pub struct IntentBitmap {
    st: Mutex<IntentState>,
    /// Stripes per bitmap bit.
    pub region_units: u64,
    pub bits: u64,
}

struct IntentState {
    /// Generation of the in-memory state; bumped by every change that must reach the disk.
    generation: u64,
    /// Generation of the last completed metadata write.
    disk_gen: u64,
    writing: bool,
    waiters: Vec<Waker>,
    bitmap: Vec<u64>,
    inflight: Vec<u32>,
    /// Regions that saw a write since the last clearing pass.
    touched: Vec<u64>,
    /// Generation at which the newest bit was set.
    last_set_gen: u64,
    /// Generation of the newest member-state change.
    state_gen: u64,
    /// While a resync works through the bitmap, bits are not cleared behind its back.
    hold_bits: bool,
    /// Regions a background copy has locked.
    locked: Vec<u64>,
    /// Writers parked on a locked region.
    write_waiters: Vec<Waker>,
    /// The change map since a mark (a mirror's regions written since its last backup's
    /// image), when tracked: set with the write-intent bit and persisted before the write
    /// like it, never cleared by the clearing pass.
    tracking: bool,
    track: Vec<u64>,
    /// A copy waiting for in-flight writes of its locked regions to drain.
    drain_waiters: Vec<Waker>,
}

/// What a sync should write.
pub struct Snapshot {
    pub generation: u64,
    pub bitmap: Vec<u64>,
    /// The change map (empty when not tracked).
    pub track: Vec<u64>,
}

impl IntentBitmap {
    /// `disk_gen`: the generation already on disk (0 for a new array).
    pub fn new(
        generation: u64,
        disk_gen: u64,
        region_units: u64,
        bits: u64,
        bitmap: Vec<u64>,
    ) -> IntentBitmap {
        let words = bits.div_ceil(64) as usize;
        let mut bm = bitmap;
        bm.resize(words, 0);
        IntentBitmap {
            st: Mutex::new(IntentState {
                generation,
                disk_gen,
                writing: false,
                waiters: Vec::new(),
                bitmap: bm,
                inflight: vec![0; bits as usize],
                touched: vec![0; words],
                last_set_gen: 0,
                state_gen: 0,
                hold_bits: false,
                locked: vec![0; words],
                write_waiters: Vec::new(),
                drain_waiters: Vec::new(),
                tracking: false,
                track: Vec::new(),
            }),
            region_units,
            bits,
        }
    }

    pub fn region_of(&self, stripe: u64) -> usize {
        (stripe / self.region_units) as usize
    }

    pub fn generation(&self) -> u64 {
        self.st.lock().generation
    }

    /// Records a member-state change to persist.
    pub fn bump(&self) {
        let mut s = self.st.lock();
        s.generation += 1;
        s.state_gen = s.generation;
    }

    /// Records a change to persist that host writes need not wait for (a job's checkpoint).
    pub fn bump_unordered(&self) {
        self.st.lock().generation += 1;
    }

    /// The generation that holds the newest member states: writes wait for it before they
    /// are acknowledged (bitmap-only changes do not hold them up).
    pub fn state_generation(&self) -> u64 {
        self.st.lock().state_gen
    }

    /// Counts a write into `region`. Returns the generation that must be on disk before
    /// the write may start (0: nothing to wait for). Ignores region locks (RAID arrays do
    /// not take them).
    pub fn begin_write(&self, region: usize) -> u64 {
        let mut s = self.st.lock();
        Self::count_in(&mut s, region);
        Self::need(&s)
    }

    /// Counts a write into regions `first..=last` unless one of them is locked; then parks
    /// `waker` (woken when a lock is released) and returns `None`, having counted nothing.
    /// `Some(generation)` as for [`Self::begin_write`].
    pub fn try_begin_range(&self, first: usize, last: usize, waker: Option<&Waker>) -> Option<u64> {
        let mut s = self.st.lock();
        if (first..=last).any(|r| bit(&s.locked, r)) {
            if let Some(w) = waker {
                if !s.write_waiters.iter().any(|x| x.will_wake(w)) {
                    s.write_waiters.push(w.clone());
                }
            }
            return None;
        }
        for r in first..=last {
            Self::count_in(&mut s, r);
        }
        Some(Self::need(&s))
    }

    fn count_in(s: &mut IntentState, region: usize) {
        s.inflight[region] += 1;
        s.touched[region / 64] |= 1 << (region % 64);
        let (w, b) = (region / 64, 1u64 << (region % 64));
        let new_track = s.tracking && s.track[w] & b == 0;
        if new_track {
            s.track[w] |= b;
        }
        if s.bitmap[w] & b == 0 || new_track {
            s.bitmap[w] |= b;
            s.generation += 1;
            s.last_set_gen = s.generation;
        }
    }

    /// Starts tracking the change map, from `track` (the persisted one).
    pub fn set_tracking(&self, track: Vec<u64>) {
        let mut s = self.st.lock();
        let mut t = track;
        t.resize(s.bitmap.len(), 0);
        s.track = t;
        s.tracking = true;
        s.generation += 1;
    }

    /// Takes the change map and starts a new, empty one (a new mark); the caller persists.
    pub fn take_track(&self) -> Vec<u64> {
        let mut s = self.st.lock();
        let n = s.bitmap.len();
        let t = std::mem::replace(&mut s.track, vec![0; n]);
        s.generation += 1;
        t
    }

    /// Adds regions back into the change map (a mark that was given up); the caller persists.
    pub fn merge_track(&self, bits: &[u64]) {
        let mut s = self.st.lock();
        for (w, x) in s.track.iter_mut().zip(bits) {
            *w |= x;
        }
        s.generation += 1;
    }

    /// A copy of the change map.
    pub fn track_bits(&self) -> Vec<u64> {
        self.st.lock().track.clone()
    }

    fn need(s: &IntentState) -> u64 {
        if s.disk_gen >= s.last_set_gen {
            0
        } else {
            s.last_set_gen
        }
    }

    pub fn end_write(&self, region: usize) {
        self.end_range(region, region);
    }

    /// Ends a write counted into regions `first..=last`; returns whether the newest state
    /// change is on disk (one lock for both, on the write's completion path).
    pub fn end_range(&self, first: usize, last: usize) -> bool {
        let (wake, durable) = {
            let mut s = self.st.lock();
            let mut drained = false;
            for r in first..=last {
                s.inflight[r] = s.inflight[r].saturating_sub(1);
                drained |= s.inflight[r] == 0 && bit(&s.locked, r);
            }
            let wake = if drained {
                std::mem::take(&mut s.drain_waiters)
            } else {
                Vec::new()
            };
            (wake, s.disk_gen >= s.state_gen)
        };
        wake.into_iter().for_each(Waker::wake);
        durable
    }

    /// Locks regions `first..=last` against new writes (one background copy at a time
    /// locks; it must unlock what it locked). Wait with [`Self::poll_drained`].
    pub fn lock_range(&self, first: usize, last: usize) {
        let mut s = self.st.lock();
        for r in first..=last {
            s.locked[r / 64] |= 1 << (r % 64);
        }
    }

    /// Ready once no write is in flight in regions `first..=last`.
    pub fn poll_drained(&self, first: usize, last: usize, waker: &Waker) -> Poll<()> {
        let mut s = self.st.lock();
        if (first..=last).all(|r| s.inflight[r] == 0) {
            return Poll::Ready(());
        }
        if !s.drain_waiters.iter().any(|x| x.will_wake(waker)) {
            s.drain_waiters.push(waker.clone());
        }
        Poll::Pending
    }

    /// Unlocks regions `first..=last` and wakes the writers parked on them.
    pub fn unlock_range(&self, first: usize, last: usize) {
        let wake = {
            let mut s = self.st.lock();
            for r in first..=last {
                s.locked[r / 64] &= !(1 << (r % 64));
            }
            std::mem::take(&mut s.write_waiters)
        };
        wake.into_iter().for_each(Waker::wake);
    }

    /// Whether region `r`'s bit is set.
    pub fn is_dirty(&self, r: usize) -> bool {
        bit(&self.st.lock().bitmap, r)
    }

    /// Sets every region's bit (a full copy is owed); the caller persists.
    pub fn set_all(&self) {
        let mut s = self.st.lock();
        let bits = self.bits as usize;
        for r in 0..bits {
            s.bitmap[r / 64] |= 1 << (r % 64);
        }
        s.generation += 1;
    }

    /// A copy of the bitmap words.
    pub fn snapshot_bits(&self) -> Vec<u64> {
        self.st.lock().bitmap.clone()
    }

    /// Clears the bits of regions idle for a whole period. Returns whether any changed.
    pub fn clear_idle(&self) -> bool {
        let mut s = self.st.lock();
        if s.hold_bits {
            return false;
        }
        let mut changed = false;
        for r in 0..self.bits as usize {
            let (w, b) = (r / 64, 1u64 << (r % 64));
            if s.bitmap[w] & b != 0 && s.inflight[r] == 0 && s.touched[w] & b == 0 {
                s.bitmap[w] &= !b;
                changed = true;
            }
        }
        s.touched.iter_mut().for_each(|t| *t = 0);
        if changed {
            s.generation += 1;
        }
        changed
    }

    /// Regions with their bit set.
    pub fn dirty_regions(&self) -> Vec<u64> {
        let s = self.st.lock();
        (0..self.bits)
            .filter(|&r| s.bitmap[(r / 64) as usize] & (1 << (r % 64)) != 0)
            .collect()
    }

    pub fn dirty_count(&self) -> u64 {
        let s = self.st.lock();
        s.bitmap.iter().map(|w| w.count_ones() as u64).sum()
    }

    pub fn hold_bits(&self, hold: bool) {
        self.st.lock().hold_bits = hold;
    }

    /// Clears one region's bit after a resync repaired it (unless a write is in flight).
    pub fn clear_region(&self, region: u64) {
        let mut s = self.st.lock();
        let (w, b) = ((region / 64) as usize, 1u64 << (region % 64));
        if s.inflight[region as usize] == 0 && s.bitmap[w] & b != 0 {
            s.bitmap[w] &= !b;
            s.generation += 1;
        }
    }

    /// Whether the newest state change is on disk.
    pub fn states_durable(&self) -> bool {
        let s = self.st.lock();
        s.disk_gen >= s.state_gen
    }

    pub fn is_durable(&self, generation: u64) -> bool {
        self.st.lock().disk_gen >= generation
    }

    /// Starts a metadata write if none is running and the disk is behind: returns the
    /// snapshot to write. Otherwise registers `waker` to be woken when the running one ends.
    pub fn try_start_sync(&self, want: u64, waker: &Waker) -> Poll<Option<Snapshot>> {
        let mut s = self.st.lock();
        if s.disk_gen >= want {
            return Poll::Ready(None);
        }
        if s.writing {
            s.waiters.push(waker.clone());
            return Poll::Pending;
        }
        s.writing = true;
        Poll::Ready(Some(Snapshot {
            generation: s.generation,
            bitmap: s.bitmap.clone(),
            track: s.track.clone(),
        }))
    }

    pub fn finish_sync(&self, generation: u64) {
        let waiters = {
            let mut s = self.st.lock();
            s.writing = false;
            s.disk_gen = s.disk_gen.max(generation);
            std::mem::take(&mut s.waiters)
        };
        for w in waiters {
            w.wake();
        }
    }
}

fn bit(words: &[u64], r: usize) -> bool {
    words.get(r / 64).is_some_and(|w| w & (1 << (r % 64)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intent_bits_follow_writes() {
        let m = IntentBitmap::new(1, 1, 1, 10, vec![]);
        let need = m.begin_write(3);
        assert!(need > 1, "a new bit needs a metadata write");
        assert!(!m.is_durable(need));
        m.finish_sync(need);
        // A second write to a region already set on disk waits for nothing.
        assert_eq!(m.begin_write(3), 0);
        m.end_write(3);
        m.end_write(3);
        // Touched during this period: kept; idle for a whole period: cleared.
        assert!(!m.clear_idle());
        assert_eq!(m.dirty_regions(), vec![3]);
        assert!(m.clear_idle());
        assert!(m.dirty_regions().is_empty());
    }

    #[test]
    fn change_map_is_persisted_before_the_write_and_survives_clearing() {
        let m = IntentBitmap::new(1, 1, 1, 4, vec![]);
        m.set_tracking(vec![]);
        m.finish_sync(m.generation());
        let need = m.begin_write(2);
        assert!(need > 0);
        m.finish_sync(need);
        m.end_write(2);
        m.clear_idle();
        m.clear_idle();
        assert!(m.dirty_regions().is_empty());
        assert_eq!(m.track_bits(), vec![0b100]);
        // A region whose intent bit is still set but whose change bit is new waits too.
        assert_eq!(m.take_track(), vec![0b100]);
        m.finish_sync(m.generation());
        m.begin_write(1);
        m.finish_sync(m.generation());
        m.end_write(1);
        m.take_track();
        m.finish_sync(m.generation());
        assert!(
            m.begin_write(1) > 0,
            "the new mark's first write must wait for its bit"
        );
    }

    #[test]
    fn in_flight_region_is_never_cleared() {
        let m = IntentBitmap::new(1, 1, 1, 4, vec![]);
        m.begin_write(0);
        m.clear_idle();
        m.clear_idle();
        assert_eq!(m.dirty_regions(), vec![0]);
    }
}
