//! A data member's background work, one job at a time through its job slot:
//!
//! - **repair** (write hole, returned parity): every region marked in the bitmap is
//!   compared with the parity's view of this member (its rebuild source on the parity node:
//!   `X = what P says D_i is`); where they differ, `D ^ X` is XOR-written to the parity
//!   (scaled by g^i for Q), which makes it hold exactly this member's data. Then the bit
//!   is cleared.
//! - **fold**: a member added to a group XORs its existing data into the parity, region
//!   by region under the region's lock, so a host write sees the region either not yet in
//!   the parity (no delta) or in it (delta), never half.
//! - **rebuild**: a replacement member copies every region from the rebuild source
//!   (regions rebuilt on demand by host I/O are skipped).
//!
//! The cursor is checkpointed in the superblock about once a second; a fold region whose
//! delta may or may not have reached the parity at a crash is covered by its intent bit,
//! which the repair closes (and then counts the region as folded).

use super::member::ParityMember;
use super::piece;
use super::superblock::MemberState;
use crate::channel::IoChannel;
use crate::io::{IoStatus, IoType};
use crate::volume::job::{JobRun, Progress};
use crate::volume::persist;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn sync_meta(m: &ParityMember, want: u64) {
    persist::sync_meta(&m.intent, m, want).await;
}

pub async fn persist_all(m: &ParityMember) {
    persist::persist_all(&m.intent, m).await;
}

pub fn job_info(p: &Progress) -> Value {
    p.report().json(p.kind)
}

/// Pieces a job keeps in flight at once (bounded: the pool's large buffers are shared
/// with the NVMe/TCP target).
const BATCH: usize = 8;
/// On-demand rebuilds of one member in flight at once.
const REBUILDS_IN_FLIGHT: u64 = 4;

/// Makes region `r` rebuilt if the member is being rebuilt and it is not (the caller
/// holds the region's lock units): copied from the first reachable parity's rebuild
/// source; the other parities (Q beside P) are then made to agree with what was copied
/// (the lost node may have left them disagreeing).
pub async fn ensure_rebuilt(m: &ParityMember, base: &IoChannel, r: u64) -> Result<(), IoStatus> {
    if m.is_rebuilt(r) {
        return Ok(());
    }
    let (first, src) = m
        .targets
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.peer.is_failed())
        .find_map(|(k, t)| t.source.clone().map(|s| (k, s)))
        .ok_or(IoStatus::PathError)?;
    let ch = src.channel().map_err(|_| IoStatus::PathError)?;
    // A few at a time (each holds pool buffers while it waits on the parity node).
    let _slot = m.rebuild_slots.lock(r % REBUILDS_IN_FLIGHT).await;
    if m.is_rebuilt(r) {
        return Ok(());
    }
    let (a, n) = m.region_range(r);
    m.bump_seq(r);
    for batch in piece::pieces(a, n, m.block_size).chunks(BATCH) {
        let data = piece::read_many(&ch, batch).await?;
        for (k, t) in m.targets.iter().enumerate() {
            // A parity without a rebuild source here cannot be checked (a member rebuilt
            // from a pair source); its deltas still go out.
            if k == first || t.peer.is_failed() || t.source.is_none() {
                continue;
            }
            if let Err(st) = agree(m, t, batch, &data).await {
                m.fail_target(k, "checking the rebuilt region failed");
                tracing::warn!(member = %m.name, parity = %t.peer.name, region = r, status = ?st, "parity not checked against the rebuilt region");
            }
        }
        // A member deleted meanwhile must not write its base (it may be reopened already).
        if m.deleted.load(Ordering::Acquire) {
            return Err(IoStatus::Removed);
        }
        let at = batch.iter().map(|&(lba, _)| m.data_offset + lba);
        piece::write_many(base, IoType::Write, 1, at.zip(data)).await?;
    }
    m.mark_rebuilt(r);
    m.bump_seq(r);
    Ok(())
}

/// Makes parity `t` agree with `data` (this member's blocks of `batch`): its rebuild
/// source's view is read a piece at a time, and the difference, if any, XOR-written.
async fn agree(
    m: &ParityMember,
    t: &super::member::Target,
    batch: &[(u64, u64)],
    data: &[strata_reactor::dma::DmaBuf],
) -> Result<(), IoStatus> {
    let Some(src) = &t.source else {
        return Err(IoStatus::PathError);
    };
    let (sch, pch) = (
        src.channel().map_err(|_| IoStatus::PathError)?,
        t.peer.channel().map_err(|_| IoStatus::PathError)?,
    );
    let (op, coef) = t.delta_op(m.coef_q);
    for (&(lba, c), mine) in batch.iter().zip(data) {
        let mut view = piece::read(&sch, lba, c).await?;
        crate::kernels::xor_into(view.as_mut_slice(), mine.as_slice());
        if !piece::is_zero(view.as_slice()) {
            tracing::info!(member = %m.name, parity = %t.peer.name, lba, blocks = c, "parity differed from the rebuilt data: corrected");
            piece::write(&pch, op, lba, view, coef).await?;
        }
    }
    Ok(())
}

/// Why a job step stopped.
enum Stop {
    Cancelled,
    Failed(String),
}

/// Runs whatever the member owes: repair of marked regions, then the fold or the rebuild.
/// Called at start-up, after a parity came back, and by `bdev_parity_member_repair`.
pub fn start(m: &Arc<ParityMember>) {
    if m.deleted.load(Ordering::Acquire) {
        return;
    }
    let Some(p) = m.job.reserve(|| Progress::new(job_kind(m), None, 0)) else {
        m.repair_wanted.store(true, Ordering::Release);
        return;
    };
    let m = m.clone();
    crate::volume::examine::on_a_reactor(move || async move {
        let mut p = p;
        loop {
            m.repair_wanted.store(false, Ordering::Release);
            let outcome = run_all(&m, &p).await;
            m.work_owed
                .store(matches!(outcome, Err(Stop::Failed(_))), Ordering::Release);
            let mut info = job_info(&p);
            match &outcome {
                Ok(()) => info["result"] = json!("done"),
                Err(Stop::Cancelled) => info["result"] = json!("cancelled"),
                Err(Stop::Failed(e)) => {
                    info["result"] = json!("failed");
                    info["error"] = json!(e);
                    tracing::warn!(member = %m.name, error = %e, "parity member job stopped");
                }
            }
            *m.last_job.lock() = Some(info);
            m.job.release();
            // A request that came while the slot was held is served now; one that comes
            // after this check finds the slot free and starts its own run.
            if m.deleted.load(Ordering::Acquire) || !m.repair_wanted.load(Ordering::Acquire) {
                break;
            }
            match m.job.reserve(|| Progress::new(job_kind(&m), None, 0)) {
                Some(n) => p = n,
                None => return,
            }
        }
    });
}

fn job_kind(m: &ParityMember) -> &'static str {
    match m.state() {
        MemberState::Folding => "fold",
        MemberState::Rebuilding => "rebuild",
        MemberState::Active => "repair",
    }
}

async fn run_all(m: &Arc<ParityMember>, p: &Arc<Progress>) -> Result<(), Stop> {
    // This run answers what was owed; its outcome says whether something still is.
    m.work_owed.store(false, Ordering::Release);
    let base = m.base.channel().map_err(|e| Stop::Failed(e.to_string()))?;
    repair(m, &base, p).await?;
    match m.state() {
        MemberState::Folding => walk(m, &base, p, MemberState::Folding).await,
        MemberState::Rebuilding => walk(m, &base, p, MemberState::Rebuilding).await,
        MemberState::Active => Ok(()),
    }
}

/// Brings every parity (back) up to date with the regions marked in the bitmap.
async fn repair(m: &ParityMember, base: &IoChannel, _p: &Progress) -> Result<(), Stop> {
    // Parities are tried again: deltas go to them from now on, and the marked regions
    // cover everything they missed before.
    let epoch = m.hold_epoch.load(Ordering::Acquire);
    for t in &m.targets {
        if !t.peer.is_removed() {
            t.peer.set_ok();
        }
    }
    let dirty = m.intent.dirty_regions();
    if !dirty.is_empty() {
        tracing::info!(member = %m.name, regions = dirty.len(), "repairing the parity of marked regions");
    }
    let state = m.state();
    let cursor = m.cursor.load(Ordering::Acquire);
    let (mut repaired, mut unsettled) = (0u64, 0u64);
    for r in dirty {
        if m.deleted.load(Ordering::Acquire) {
            return Err(Stop::Cancelled);
        }
        match state {
            // Not in the parity yet: nothing to repair (the fold will take it).
            MemberState::Folding if r > cursor => {
                m.intent.clear_region(r);
                continue;
            }
            // Not rebuilt (the rebuilt regions are kept in the superblock): it holds
            // nothing of its own; the rebuild takes the parity's view of it.
            MemberState::Rebuilding if !m.is_rebuilt(r) => {
                m.intent.clear_region(r);
                continue;
            }
            _ => {}
        }
        if !repair_region(m, base, r).await? {
            // Writes kept it busy, or another member's repair kept changing it: it stays
            // marked, and the repair goes on with the others (tried again later).
            unsettled += 1;
            continue;
        }
        m.intent.clear_region(r);
        repaired += 1;
        if state == MemberState::Folding && r == cursor {
            // A fold cut short at this region: the repair folded it.
            m.cursor.store(r + 1, Ordering::Release);
        }
    }
    // Released only if nothing asked to hold the bits while this ran (a failure then may
    // have marked regions this pass did not see).
    if !m.degraded() && unsettled == 0 && m.hold_epoch.load(Ordering::Acquire) == epoch {
        m.intent.hold_bits(false);
    }
    m.intent.bump_unordered();
    persist_all(m).await;
    if repaired > 0 {
        tracing::info!(member = %m.name, regions = repaired, "parity repaired");
    }
    if m.degraded() {
        return Err(Stop::Failed("a parity is unreachable".into()));
    }
    if unsettled > 0 {
        return Err(Stop::Failed(format!(
            "{unsettled} regions did not settle (tried again later)"
        )));
    }
    Ok(())
}

/// Corrections of one region before a repair leaves it for later (another member's
/// corrections keep cancelling ours).
const REPAIR_ROUNDS: u32 = 16;
/// Views of one region a repair reads before it leaves it for later (our writes keep
/// changing it).
const REPAIR_VIEWS: u32 = 1000;

/// Makes every parity hold exactly this member's data in region `r`; false if the region
/// did not settle (left marked). The rebuild source is read without this member's lock
/// (the source reads the other members, whose own repairs may be waiting on their locks:
/// holding ours would deadlock two nodes); then the lock is taken and the view used only
/// if no write of ours touched the region meanwhile (its exact sequence number). A
/// correction fixes the parity for every member at once, so two members repairing one
/// region can cancel each other's: the region is checked again until the view agrees.
async fn repair_region(m: &ParityMember, base: &IoChannel, r: u64) -> Result<bool, Stop> {
    let (a, n) = m.region_range(r);
    let pieces = piece::pieces(a, n, m.block_size);
    for (k, t) in m.targets.iter().enumerate() {
        let Some(src) = &t.source else {
            return Err(Stop::Failed(format!(
                "parity {} has no rebuild source: region {r} cannot be repaired",
                t.peer.name
            )));
        };
        let fail = |what: &str, st: IoStatus| {
            m.fail_target(k, "repair failed");
            Stop::Failed(format!("{what} for region {r}: {st:?}"))
        };
        let (Ok(sch), Ok(pch)) = (src.channel(), t.peer.channel()) else {
            return Err(fail("no channel", IoStatus::PathError));
        };
        let (op, coef) = t.delta_op(m.coef_q);
        for batch in pieces.chunks(BATCH) {
            let (mut rounds, mut views) = (0, 0);
            loop {
                views += 1;
                if rounds >= REPAIR_ROUNDS || views > REPAIR_VIEWS {
                    tracing::warn!(member = %m.name, parity = %t.peer.name, region = r, rounds, views, "region did not settle: left for a later repair");
                    return Ok(false);
                }
                let before = m.seq(r);
                let mut seen = piece::read_many(&sch, batch)
                    .await
                    .map_err(|st| fail("reading the rebuild source", st))?;
                let (ua, uz) = m.region_units(r);
                let held = m.locks.lock_units(ua, uz).await;
                if m.seq(r) != before {
                    drop(held);
                    strata_reactor::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let local: Vec<_> = batch.iter().map(|&(l, c)| (m.data_offset + l, c)).collect();
                let mine = piece::read_many(base, &local)
                    .await
                    .map_err(|st| Stop::Failed(format!("reading the base: {st:?}")))?;
                let mut fixes = Vec::new();
                for ((&(lba, c), mut diff), mine) in batch.iter().zip(seen.drain(..)).zip(mine) {
                    crate::kernels::xor_into(diff.as_mut_slice(), mine.as_slice());
                    if !piece::is_zero(diff.as_slice()) {
                        tracing::info!(member = %m.name, parity = %t.peer.name, lba, blocks = c, round = rounds, "parity differed: corrected");
                        fixes.push((lba, diff));
                    }
                }
                if fixes.is_empty() {
                    break;
                }
                rounds += 1;
                piece::write_many(&pch, op, coef, fixes)
                    .await
                    .map_err(|st| fail("correcting the parity", st))?;
                drop(held);
                // Check again (after a pause that breaks a tie with another member's repair).
                let jitter = (m.index as u64 * 7 + rounds as u64 * 13) % 20 + 1;
                strata_reactor::sleep(Duration::from_millis(jitter)).await;
            }
        }
    }
    Ok(true)
}

/// The fold (XOR this member's data into the parity) or the rebuild (copy it from the
/// rebuild source), from the cursor to the end; then the member is active.
async fn walk(
    m: &ParityMember,
    base: &IoChannel,
    p: &Progress,
    kind: MemberState,
) -> Result<(), Stop> {
    let name = if kind == MemberState::Folding {
        "fold"
    } else {
        "rebuild"
    };
    let start = m.cursor.load(Ordering::Acquire);
    p.set_total((m.bits - start.min(m.bits)) * m.region_blocks * m.block_size as u64);
    p.set_done(0);
    tracing::info!(member = %m.name, job = name, from_region = start, regions = m.bits, "parity member job started");
    let mut run = JobRun::new(p);
    let mut checkpoint = Instant::now();
    for r in start..m.bits {
        if m.deleted.load(Ordering::Acquire) {
            return Err(Stop::Cancelled);
        }
        let (ua, uz) = m.region_units(r);
        let held = m.locks.lock_units(ua, uz).await;
        let (a, n) = m.region_range(r);
        if kind == MemberState::Rebuilding {
            ensure_rebuilt(m, base, r)
                .await
                .map_err(|st| Stop::Failed(format!("rebuilding region {r}: {st:?}")))?;
        } else {
            if m.degraded() {
                return Err(Stop::Failed(
                    "a parity is unreachable: the fold waits".into(),
                ));
            }
            let need = m.intent.begin_write(r as usize);
            if need > 0 {
                sync_meta(m, need).await;
            }
            let folded = fold_region(m, base, a, n).await;
            m.intent.end_write(r as usize);
            folded.map_err(|e| Stop::Failed(format!("folding region {r}: {e}")))?;
        }
        m.cursor.store(r + 1, Ordering::Release);
        drop(held);
        if checkpoint.elapsed() > Duration::from_secs(1) {
            checkpoint = Instant::now();
            m.intent.bump_unordered();
            persist_all(m).await;
        }
        let limit = m.max_bandwidth_mb_sec.load(Ordering::Relaxed);
        if run.step(n * m.block_size as u64, limit).await.is_err() {
            return Err(Stop::Cancelled);
        }
    }
    m.set_state(MemberState::Active);
    m.rebuilt.lock().clear();
    persist_all(m).await;
    tracing::info!(member = %m.name, job = name, secs = run.elapsed_secs(), "parity member job done: the member is active");
    Ok(())
}

/// XORs blocks `a..a+n` of the base into every parity: the region's pieces read at once,
/// then sent to every parity at once.
async fn fold_region(m: &ParityMember, base: &IoChannel, a: u64, n: u64) -> Result<(), String> {
    let ranges = piece::pieces(a, n, m.block_size);
    let local: Vec<_> = ranges
        .iter()
        .map(|&(lba, c)| (m.data_offset + lba, c))
        .collect();
    let data = piece::read_many(base, &local)
        .await
        .map_err(|st| format!("reading the base: {st:?}"))?;
    for (k, t) in m.targets.iter().enumerate() {
        let (op, coef) = t.delta_op(m.coef_q);
        let views: Result<Vec<_>, _> = data.iter().map(piece::view).collect();
        let sent = match (t.peer.channel(), views) {
            (Ok(ch), Ok(v)) => {
                let at = ranges.iter().map(|&(lba, _)| lba);
                piece::write_many(&ch, op, coef, at.zip(v)).await
            }
            _ => Err(IoStatus::PathError),
        };
        if let Err(st) = sent {
            m.fail_target(k, "fold write failed");
            return Err(format!("to {}: {st:?}", t.peer.name));
        }
    }
    Ok(())
}

/// First and longest wait before a failed repair (or fold, or rebuild) is tried again.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Clears idle bitmap regions once a second and writes the bitmap when it changed; tries a
/// job that stopped on a failure again (5 s, doubling to 60 s: a parity node that came back
/// without a path event, or whose rebuild sources could not read yet); until the member is
/// deleted.
pub async fn housekeeping(m: Arc<ParityMember>) {
    let mut backoff = RETRY_FIRST;
    let mut next_try = Instant::now() + backoff;
    while !m.deleted.load(Ordering::Acquire) {
        strata_reactor::sleep(Duration::from_secs(1)).await;
        if m.deleted.load(Ordering::Acquire) {
            break;
        }
        if m.job.is_busy() {
            continue;
        }
        if m.work_owed.load(Ordering::Acquire) || m.degraded() {
            if Instant::now() >= next_try {
                tracing::info!(member = %m.name, "trying the parity repair again");
                start(&m);
                backoff = (backoff * 2).min(RETRY_MAX);
                next_try = Instant::now() + backoff;
            }
            continue;
        }
        backoff = RETRY_FIRST;
        next_try = Instant::now() + backoff;
        if m.intent.clear_idle() {
            persist_all(&m).await;
        }
    }
}
