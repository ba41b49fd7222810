//! The journal log of a group: space, sequence numbers and the durable frontier (shared by
//! every reactor's appender), the header slots, reading records back (with the other
//! leg's copy when one is damaged), and the scan that finds every record after a restart.
//!
//! Positions are counted in blocks from the log's start, every lap included (so they only
//! grow); a batch never straddles the end of the log: it starts the next lap instead.
//! Batches are written by several reactors at once, so they can finish out of order; the
//! *frontier* is the end of the longest run of finished batches from the tail, and a batch
//! is acknowledged only once the frontier passes it — a scan after a crash reads batches in
//! order and stops at the first missing one, so nothing acknowledged lies beyond it.

use super::format::{self, BatchHeader, HeaderBody, LegRecord, LegState, RecordKind, SlotHeader};
use super::Group;
use crate::channel::IoChannel;
use crate::error::BdevError;
use crate::wait;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::Instant;

/// One undrained record: where its data is and what it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLoc {
    pub seq: u64,
    /// The batch it came in: its log position and first sequence number (a drain that
    /// must keep this record trims no further than its batch).
    pub batch_pos: u64,
    pub batch_seq: u64,
    pub kind: RecordKind,
    pub volume: u32,
    pub lba: u64,
    pub blocks: u64,
    /// Log position of its data.
    pub data_pos: u64,
    pub data_blocks: u32,
    pub crc: u32,
}

/// Per-volume delta: the undrained changes of a volume.
#[derive(Clone, Copy, Debug, Default)]
pub struct VolumeDelta {
    pub records: u64,
    pub bytes: u64,
}

/// The undrained records in sequence order, and per-volume totals.
#[derive(Default)]
pub struct Index {
    pub records: VecDeque<RecordLoc>,
    pub per_volume: HashMap<u32, VolumeDelta>,
    /// When the oldest undrained record became durable (None: nothing undrained).
    pub oldest: Option<Instant>,
}

impl Index {
    pub fn push(&mut self, r: RecordLoc, bs: u32) {
        if r.kind != RecordKind::Catalog {
            let d = self.per_volume.entry(r.volume).or_default();
            d.records += 1;
            d.bytes += r.blocks * bs as u64;
        }
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        self.records.push_back(r);
    }

    /// Drops records up to `seq` (drained).
    pub fn trim(&mut self, seq: u64, bs: u32) {
        while self.records.front().is_some_and(|r| r.seq <= seq) {
            if let Some(r) = self.records.pop_front() {
                if r.kind != RecordKind::Catalog {
                    if let Some(d) = self.per_volume.get_mut(&r.volume) {
                        d.records = d.records.saturating_sub(1);
                        d.bytes = d.bytes.saturating_sub(r.blocks * bs as u64);
                    }
                }
            }
        }
        self.per_volume.retain(|_, d| d.records > 0);
        self.oldest = if self.records.is_empty() {
            None
        } else {
            // Not exact after a trim (the next record's own time is not kept): the
            // remaining records are younger than the trimmed ones, so this errs early.
            self.oldest
        };
    }

    pub fn volume_records(&self, id: u32, upto: u64) -> Vec<RecordLoc> {
        self.records
            .iter()
            .filter(|r| r.volume == id && r.kind != RecordKind::Catalog && r.seq <= upto)
            .copied()
            .collect()
    }
}

struct Inflight {
    start: u64,
    end: u64,
    next_seq: u64,
    done: bool,
    locs: Vec<RecordLoc>,
}

/// Space and order of the log.
pub struct LogState {
    /// Next free position, and the next sequence number.
    pub head: u64,
    pub next_seq: u64,
    /// Oldest position still needed (the header's tail once durable).
    pub tail: u64,
    pub tail_seq: u64,
    /// What the header says (or is being written to say).
    pub header_tail: u64,
    pub header_tail_seq: u64,
    /// Batches reserved and not yet passed by the frontier, in log order.
    inflight: VecDeque<Inflight>,
    /// Every batch before this position is durable, and every record before this seq.
    pub frontier: u64,
    pub frontier_seq: u64,
    /// This run's number (batches carry it: a stale batch of an earlier run is never
    /// taken for a new one).
    pub run: u32,
    frontier_waiters: Vec<(u64, Waker)>,
    space_waiters: Vec<Waker>,
    /// Pins (id, position, sequence number): a trim stops at the lowest.
    pins: Vec<(u64, u64, u64)>,
}

impl LogState {
    pub fn new(tail: u64, tail_seq: u64, run: u32) -> LogState {
        LogState {
            head: tail,
            next_seq: tail_seq,
            tail,
            tail_seq,
            header_tail: tail,
            header_tail_seq: tail_seq,
            inflight: VecDeque::new(),
            frontier: tail,
            frontier_seq: tail_seq,
            run,
            frontier_waiters: Vec::new(),
            space_waiters: Vec::new(),
            pins: Vec::new(),
        }
    }

    /// A pin at the header's tail (what the disk says is needed).
    pub fn add_pin(&mut self, id: u64) {
        let (p, s) = (self.header_tail, self.header_tail_seq);
        self.pins.push((id, p, s));
    }

    pub fn move_pin(&mut self, id: u64, pos: u64, seq: u64) {
        for x in self.pins.iter_mut().filter(|x| x.0 == id) {
            // Only forward: what it pinned before stays pinned until now.
            if seq > x.2 {
                x.1 = pos;
                x.2 = seq;
            }
        }
    }

    pub fn drop_pin(&mut self, id: u64) {
        self.pins.retain(|x| x.0 != id);
    }

    /// The furthest a trim may go from `(pos, seq)`: not past any pin.
    pub fn pinned_cut(&self, pos: u64, seq: u64) -> (u64, u64) {
        self.pins
            .iter()
            .filter(|x| x.2 < seq)
            .min_by_key(|x| x.2)
            .map_or((pos, seq), |x| (x.1, x.2))
    }
}

impl LogState {
    /// The tasks waiting for space (the caller wakes them once the lock is dropped).
    pub fn take_space_waiters(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.space_waiters)
    }
}

/// Why a batch could not get space.
#[derive(Debug, PartialEq, Eq)]
pub enum Reserve {
    /// Wait for a drain to trim the log.
    Full,
    /// Larger than the whole log.
    TooBig,
}

/// Why a header write failed.
enum HeaderFail {
    /// No leg took it: the journal is gone.
    NoLeg,
    /// The body does not fit a slot (a catalog too large): nothing was written.
    Encode(String),
}

/// Header writes: wanted and written versions, one writer at a time.
#[derive(Default)]
pub struct HeaderSync {
    pub wanted: u64,
    pub written: u64,
    pub writing: bool,
    pub generation: u64,
    pub waiters: Vec<Waker>,
    pub failed: bool,
    /// The leg-state version the disk's header reflects.
    pub legs_durable: u64,
}

impl Group {
    /// The block of the log where position `pos` lies.
    pub fn phys(&self, pos: u64) -> u64 {
        self.log_start + pos % self.log_blocks
    }

    /// Reserves `blocks` at the head for a batch of `count` records: its position and first
    /// sequence number.
    pub fn reserve(&self, blocks: u64, count: u64) -> Result<(u64, u64, u32), Reserve> {
        let l = self.log_blocks;
        // A batch larger than half the log might never fit after a skip to the next lap.
        if blocks > l / 2 {
            return Err(Reserve::TooBig);
        }
        let mut st = self.log.lock();
        let mut pos = st.head;
        let off = pos % l;
        if off + blocks > l {
            pos += l - off;
        }
        if pos + blocks - st.tail > l {
            return Err(Reserve::Full);
        }
        st.head = pos + blocks;
        let seq = st.next_seq;
        st.next_seq += count;
        let next_seq = st.next_seq;
        st.inflight.push_back(Inflight {
            start: pos,
            end: pos + blocks,
            next_seq,
            done: false,
            locs: Vec::new(),
        });
        Ok((pos, seq, st.run))
    }

    /// Registers to be woken when space is trimmed.
    pub fn poll_space(&self, blocks: u64, waker: &Waker) -> Poll<()> {
        let mut st = self.log.lock();
        let l = self.log_blocks;
        let off = st.head % l;
        let pos = if off + blocks > l {
            st.head + l - off
        } else {
            st.head
        };
        if pos + blocks - st.tail <= l || self.stopping.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        st.space_waiters.push(waker.clone());
        Poll::Pending
    }

    /// A batch's writes ended (`locs`: its records, indexed once the frontier passes it).
    pub fn batch_done(&self, start: u64, locs: Vec<RecordLoc>) {
        let mut wake = Vec::new();
        {
            let mut st = self.log.lock();
            if let Some(b) = st.inflight.iter_mut().find(|b| b.start == start) {
                b.done = true;
                b.locs = locs;
            }
            let mut passed = Vec::new();
            while st.inflight.front().is_some_and(|b| b.done) {
                if let Some(b) = st.inflight.pop_front() {
                    st.frontier = b.end;
                    st.frontier_seq = b.next_seq;
                    passed.push(b.locs);
                }
            }
            if st.inflight.is_empty() {
                st.frontier = st.frontier.max(st.head);
            }
            if !passed.is_empty() {
                let mut ix = self.index.lock();
                for locs in passed {
                    for r in locs {
                        ix.push(r, self.block_size);
                    }
                }
            }
            let f = st.frontier;
            st.frontier_waiters.retain(|(end, w)| {
                if *end <= f {
                    wake.push(w.clone());
                    false
                } else {
                    true
                }
            });
        }
        for w in wake {
            w.wake();
        }
    }

    /// Wakes every task waiting on the log (the group is stopping: they fail out).
    pub fn wake_all(&self) {
        let (a, b) = {
            let mut st = self.log.lock();
            (
                std::mem::take(&mut st.frontier_waiters),
                std::mem::take(&mut st.space_waiters),
            )
        };
        for (_, w) in a {
            w.wake();
        }
        for w in b {
            w.wake();
        }
    }

    /// Resolves once every batch up to `end` is durable (or the group stops).
    pub async fn wait_frontier(&self, end: u64) {
        poll_fn(|cx| {
            let mut st = self.log.lock();
            if st.frontier >= end || self.stopping.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            st.frontier_waiters.push((end, cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// Where a drain may cut: the frontier and the first sequence number after it.
    pub fn durable_point(&self) -> (u64, u64) {
        let st = self.log.lock();
        (st.frontier, st.frontier_seq)
    }

    /// Log fill in percent (reserved space, drained or not).
    pub fn fill_percent(&self) -> f64 {
        let st = self.log.lock();
        (st.head - st.tail) as f64 * 100.0 / self.log_blocks as f64
    }

    // ---- legs ----

    /// This reactor's channels to the legs that take writes (`Ok` or `Resyncing`).
    pub fn leg_channels(&self) -> [Option<IoChannel>; 2] {
        let legs = self.legs.lock();
        [0, 1].map(|i| {
            let l = &legs[i];
            if l.state == LegState::Failed {
                return None;
            }
            l.base.as_ref().and_then(|b| b.channel().ok())
        })
    }

    /// This reactor's channels to the legs that take writes, each with whether the leg holds
    /// every record (`Ok`): a write counts as durable only on such a leg.
    pub fn write_legs(&self) -> [Option<(IoChannel, bool)>; 2] {
        let legs = self.legs.lock();
        [0, 1].map(|i| {
            let l = &legs[i];
            if l.state == LegState::Failed {
                return None;
            }
            let ch = l.base.as_ref().and_then(|b| b.channel().ok())?;
            Some((ch, l.state == LegState::Ok))
        })
    }

    /// Flushes the legs' write caches (before log space is reused: the header naming the new
    /// tail must reach the media before any batch written over the old records does).
    pub async fn flush_legs(&self) {
        for ch in self.leg_channels().into_iter().flatten() {
            if ch.bdev().supports(crate::io::IoType::Flush) {
                if let Err(st) = wait::no_data(&ch, crate::io::IoType::Flush, 0, 0).await {
                    tracing::warn!(group = %self.name, status = ?st, "flushing a journal leg failed");
                }
            }
        }
    }

    /// Makes sure the header on disk shows every leg failure so far (before anything that
    /// only the surviving leg holds is acknowledged).
    pub async fn leg_states_durable(&self) -> Result<(), BdevError> {
        if self.legs_version.load(Ordering::Acquire) > self.header.lock().legs_durable {
            self.persist_header().await?;
        }
        Ok(())
    }

    /// Channels to the legs that hold every record (reads come from these).
    pub fn readable_legs(&self) -> [Option<IoChannel>; 2] {
        let legs = self.legs.lock();
        [0, 1].map(|i| {
            let l = &legs[i];
            if l.state != LegState::Ok {
                return None;
            }
            l.base.as_ref().and_then(|b| b.channel().ok())
        })
    }

    /// Marks a leg failed (a write to it failed, or it went away). Returns whether that
    /// changed anything; the caller persists the header before acknowledging anything.
    pub fn fail_leg(&self, i: usize, why: &str) -> bool {
        let mut legs = self.legs.lock();
        if legs[i].state == LegState::Failed {
            return false;
        }
        legs[i].state = LegState::Failed;
        let survivor = legs[1 - i].state == LegState::Ok;
        self.legs_version.fetch_add(1, Ordering::AcqRel);
        drop(legs);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if survivor {
            tracing::error!(group = %self.name, leg = i, why, "journal leg failed: the journal runs on the other leg");
        } else {
            tracing::error!(group = %self.name, leg = i, why, "both journal legs failed: protected volumes stop taking writes");
        }
        true
    }

    /// Whether no leg holds every record any more.
    pub fn journal_lost(&self) -> bool {
        let legs = self.legs.lock();
        !legs
            .iter()
            .any(|l| l.state == LegState::Ok && l.base.is_some())
    }

    // ---- header ----

    fn header_body(&self) -> (HeaderBody, u64) {
        // The version first: the body then shows at least that state.
        let version = self.legs_version.load(Ordering::Acquire);
        let (tail, tail_seq, run) = {
            let st = self.log.lock();
            (st.header_tail, st.header_tail_seq, st.run)
        };
        let legs = self.legs.lock();
        let rec = |i: usize| LegRecord {
            bdev: legs[i].name.clone(),
            uuid: legs[i].uuid.to_string(),
            state: legs[i].state,
        };
        let body = HeaderBody {
            tail,
            tail_seq,
            run,
            log_blocks: self.log_blocks,
            legs: [rec(0), rec(1)],
            catalog: self.catalog.lock().clone(),
        };
        (body, version)
    }

    /// Makes the header on the legs as new as memory is now. Err if no leg took it.
    pub async fn persist_header(&self) -> Result<(), BdevError> {
        let want = {
            let mut h = self.header.lock();
            h.wanted += 1;
            h.wanted
        };
        loop {
            let start = poll_fn(|cx| {
                let mut h = self.header.lock();
                if h.written >= want {
                    return Poll::Ready(None);
                }
                if h.failed {
                    return Poll::Ready(Some(Err(())));
                }
                if h.writing {
                    h.waiters.push(cx.waker().clone());
                    return Poll::Pending;
                }
                h.writing = true;
                h.generation += 1;
                Poll::Ready(Some(Ok((h.wanted, h.generation))))
            })
            .await;
            let (version, generation) = match start {
                None => return Ok(()),
                Some(Err(())) => {
                    return Err(BdevError::IoFailed(format!(
                        "group {}: no journal leg takes writes",
                        self.name
                    )))
                }
                Some(Ok(x)) => x,
            };
            let res = self.write_header(generation).await;
            let waiters = {
                let mut h = self.header.lock();
                h.writing = false;
                match &res {
                    Ok(v) => {
                        h.written = h.written.max(version);
                        h.legs_durable = h.legs_durable.max(*v);
                    }
                    Err(HeaderFail::NoLeg) => h.failed = true,
                    Err(HeaderFail::Encode(_)) => {}
                }
                std::mem::take(&mut h.waiters)
            };
            for w in waiters {
                w.wake();
            }
            match res {
                Ok(_) => {}
                Err(HeaderFail::NoLeg) => {
                    return Err(BdevError::IoFailed(format!(
                        "group {}: the journal header could not be written to any leg",
                        self.name
                    )))
                }
                Err(HeaderFail::Encode(e)) => return Err(BdevError::Invalid(e)),
            }
        }
    }

    /// Writes the header (generation `generation`) to every leg that takes writes; a leg
    /// that fails it is failed and the (changed) header written again. Ok: the leg-state
    /// version the written header shows.
    async fn write_header(&self, generation: u64) -> Result<u64, HeaderFail> {
        let mut generation = generation;
        loop {
            let (body, version) = self.header_body();
            let chans = self.leg_channels();
            let mut any = false;
            let mut failed_one = false;
            for (i, ch) in chans.iter().enumerate() {
                let Some(ch) = ch else { continue };
                let h = SlotHeader {
                    uuid: self.uuid,
                    generation,
                    leg: i as u32,
                };
                let raw = format::encode_slot(&h, &body, self.block_size).map_err(|e| {
                    tracing::error!(group = %self.name, error = %e, "journal header not written");
                    HeaderFail::Encode(e)
                })?;
                let slot = if generation.is_multiple_of(2) {
                    0
                } else {
                    format::SLOT_BYTES
                };
                let lba = slot / self.block_size as u64;
                match wait::write_slice(ch, lba, &raw).await {
                    Ok(()) => any = true,
                    Err(st) => {
                        failed_one |= self.fail_leg(i, &format!("header write failed: {st:?}"));
                    }
                }
            }
            if !failed_one {
                return if any {
                    Ok(version)
                } else {
                    Err(HeaderFail::NoLeg)
                };
            }
            if self.leg_channels().iter().all(|c| c.is_none()) {
                return Err(HeaderFail::NoLeg);
            }
            // A leg failed under the write: its new state goes to the other leg.
            generation = {
                let mut h = self.header.lock();
                h.generation += 1;
                h.generation
            };
        }
    }

    // ---- reading records ----

    /// A record's data, checked against its CRC; from the other leg when one copy is
    /// damaged (the damage is reported and the bad copy rewritten).
    pub async fn read_record(&self, r: &RecordLoc) -> Result<Vec<u8>, BdevError> {
        if r.data_blocks == 0 {
            return Ok(Vec::new());
        }
        let legs = self.readable_legs();
        let at = self.phys(r.data_pos);
        let mut bad: Vec<usize> = Vec::new();
        for (i, ch) in legs.iter().enumerate() {
            let Some(ch) = ch else { continue };
            match wait::read_vec(ch, at, r.data_blocks as u64).await {
                Ok(d) if crate::kernels::crc32c(&d) == r.crc => {
                    for &b in &bad {
                        tracing::error!(group = %self.name, leg = b, seq = r.seq, "journal record damaged on one leg: the other leg's copy is used and written back");
                        self.damaged_repaired.fetch_add(1, Ordering::Relaxed);
                        if let Some(bc) = &legs[b] {
                            let _ = wait::write_slice(bc, at, &d).await;
                        }
                    }
                    return Ok(d);
                }
                Ok(_) => bad.push(i),
                Err(st) => {
                    tracing::warn!(group = %self.name, leg = i, seq = r.seq, status = ?st, "journal record read failed");
                    bad.push(i);
                }
            }
        }
        self.damaged_lost.fetch_add(1, Ordering::Relaxed);
        tracing::error!(group = %self.name, seq = r.seq, volume = r.volume, lba = r.lba, "journal record damaged on every leg (CRC32C mismatch)");
        Err(BdevError::IoFailed(format!(
            "group {}: journal record {} (volume {}, lba {}) is damaged on every leg",
            self.name, r.seq, r.volume, r.lba
        )))
    }
}

/// What a scan of the log found.
pub struct Scan {
    pub records: Vec<RecordLoc>,
    /// Where the next batch goes, and its first sequence number.
    pub head: u64,
    pub next_seq: u64,
    /// The newest catalog record's bytes.
    pub catalog: Option<Vec<u8>>,
    pub batches: u64,
    /// Batches found after the first torn one (never acknowledged: dropped).
    pub dropped_after_torn: u64,
    /// Records whose copy on one leg was damaged (the other leg's was used).
    pub repaired: u64,
    /// The highest run of a batch taken.
    pub max_run: u32,
}

async fn read_header_at(
    ch: &IoChannel,
    lba: u64,
    uuid: &uuid::Uuid,
    bs: u32,
    log_blocks: u64,
) -> Option<BatchHeader> {
    let first = wait::read_vec(ch, lba, 1).await.ok()?;
    match format::decode_batch(&first, uuid, bs, log_blocks)? {
        Ok(h) => Some(h),
        Err(n) => {
            let all = wait::read_vec(ch, lba, n as u64).await.ok()?;
            format::decode_batch(&all, uuid, bs, log_blocks)?.ok()
        }
    }
}

/// Reads the log from `tail` (first record `tail_seq`), on the legs given, until the chain
/// of batches ends: every record found, checked by CRC32C (a record damaged on one leg is
/// taken from the other, and written back). `max_run`: batches of later runs are not ours.
#[allow(clippy::too_many_arguments)]
pub async fn scan(
    legs: &[Option<IoChannel>; 2],
    uuid: &uuid::Uuid,
    bs: u32,
    log_start: u64,
    log_blocks: u64,
    tail: u64,
    tail_seq: u64,
    max_run: u32,
) -> Scan {
    let mut out = Scan {
        records: Vec::new(),
        head: tail,
        next_seq: tail_seq,
        catalog: None,
        batches: 0,
        dropped_after_torn: 0,
        repaired: 0,
        max_run: 0,
    };
    let phys = |p: u64| log_start + p % log_blocks;
    let mut pos = tail;
    let mut seq = tail_seq;
    let mut last_run = 0u32;
    let mut torn = false;
    loop {
        // The batch at `pos`, or (after the end of a lap) at the next lap's start; if both
        // carry the expected sequence number, the later run's (the other is a stale header
        // of a batch cut by a crash, whose successor skipped to the next lap).
        let mut found: Option<(u64, BatchHeader)> = None;
        let next_lap = pos + (log_blocks - pos % log_blocks) % log_blocks;
        let spots: &[u64] = if next_lap == pos {
            &[pos]
        } else {
            &[pos, next_lap]
        };
        for &p in spots {
            for ch in legs.iter().flatten() {
                if let Some(h) = read_header_at(ch, phys(p), uuid, bs, log_blocks).await {
                    if h.first_seq == seq
                        && p % log_blocks + h.total_blocks <= log_blocks
                        && h.run <= max_run
                        && found.as_ref().is_none_or(|(_, f)| h.run > f.run)
                    {
                        found = Some((p, h));
                        break;
                    }
                }
            }
        }
        let Some((p, h)) = found else { break };
        let run = h.run;
        if run < last_run || run > max_run {
            break;
        }
        if torn {
            out.dropped_after_torn += 1;
            pos = p + h.total_blocks;
            seq += h.entries.len() as u64;
            if out.dropped_after_torn > 64 {
                break;
            }
            continue;
        }
        // Check every record's data on the legs; keep the good copy.
        let mut data_pos = p + h.hdr_blocks as u64;
        let mut recs = Vec::with_capacity(h.entries.len());
        let mut whole = true;
        for (k, e) in h.entries.iter().enumerate() {
            let loc = RecordLoc {
                seq: h.first_seq + k as u64,
                batch_pos: p,
                batch_seq: h.first_seq,
                kind: e.kind,
                volume: e.volume,
                lba: e.lba,
                blocks: e.blocks,
                data_pos,
                data_blocks: e.data_blocks,
                crc: e.crc,
            };
            if e.data_blocks > 0 {
                let mut good: Option<Vec<u8>> = None;
                let mut bad = Vec::new();
                for ch in legs.iter().flatten() {
                    match wait::read_vec(ch, phys(data_pos), e.data_blocks as u64).await {
                        Ok(d) if crate::kernels::crc32c(&d) == e.crc => {
                            good = Some(d);
                        }
                        _ => bad.push(ch.clone()),
                    }
                    if good.is_some() {
                        break;
                    }
                }
                match good {
                    Some(d) => {
                        for b in bad {
                            out.repaired += 1;
                            let _ = wait::write_slice(&b, phys(data_pos), &d).await;
                        }
                        if e.kind == RecordKind::Catalog {
                            let len = (e.lba as usize).min(d.len());
                            out.catalog = Some(d[..len].to_vec());
                        }
                    }
                    None => whole = false,
                }
            }
            recs.push(loc);
            data_pos += e.data_blocks as u64;
        }
        if !whole {
            // A batch cut short by the crash: it was never acknowledged, nor was anything
            // after it (the frontier never passed it).
            torn = true;
            pos = p + h.total_blocks;
            seq += h.entries.len() as u64;
            continue;
        }
        last_run = run;
        out.max_run = out.max_run.max(run);
        out.records.extend(recs);
        out.batches += 1;
        pos = p + h.total_blocks;
        seq += h.entries.len() as u64;
        out.head = pos;
        out.next_seq = seq;
    }
    out
}
