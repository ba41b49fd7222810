//! Background work on a mirror: metadata writes, and the three jobs that move data between
//! the legs — resync (copy the regions the change bitmap marks), scan (the checksum resync
//! used when the bitmap cannot be trusted: both legs checksum each chunk where the data
//! lives, only mismatching chunks are copied) and scrub (the same comparison on an in-sync
//! mirror, counting mismatches and repairing them when asked).
//!
//! Every copy writes the secondary in whole units of its geometry
//! ([`crate::Bdev::optimal_io_boundary`]: a RAID volume's stripe), reading the data from
//! the primary, so a RAID secondary computes parity without reading its members. A copy
//! holds the bitmap regions it covers locked ([`IntentBitmap::lock_range`]): host writes to
//! them wait, and the copy waits for the ones in flight, so a host write is never
//! overtaken by an older copy of its blocks. Jobs are rate-limited and report progress.
//!
//! [`IntentBitmap::lock_range`]: crate::volume::intent::IntentBitmap::lock_range

use super::channel::MirrorChannel;
use super::superblock::{LegState, MirrorState};
use super::volume::Mirror;
use crate::channel::IoChannel;
use crate::io::{BdevIo, IoStatus, IoType};
use crate::volume::intent::Snapshot;
use crate::volume::job::{JobRun, Progress};
use crate::volume::persist::{self, MetaWrite, MetaWriter};
use crate::wait;
use serde_json::{json, Value};
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Resync,
    Scan,
    Scrub,
    /// The background copy of a snapshot split's owed regions ([`super::pit`]).
    ImageCopy,
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Resync => "resync",
            JobKind::Scan => "scan",
            JobKind::Scrub => "scrub",
            JobKind::ImageCopy => "image_copy",
        }
    }
}

/// A running job and its progress (read by `bdev_mirror_get` from any thread).
pub struct Job {
    pub kind: JobKind,
    pub repair: bool,
    /// Bytes of the volume gone through, of how many, since when; and cancel.
    pub progress: Progress,
    pub copied_bytes: AtomicU64,
    pub mismatches: AtomicU64,
    pub repaired: AtomicU64,
}

impl Job {
    pub fn new(kind: JobKind, repair: bool) -> Job {
        Job {
            kind,
            repair,
            progress: Progress::new(kind.name(), None, 0),
            copied_bytes: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
        }
    }

    pub fn info(&self) -> Value {
        let mut v = self.progress.report().json(self.kind.name());
        v["repair"] = json!(self.repair);
        v["copied_bytes"] = json!(self.copied_bytes.load(Ordering::Relaxed));
        v["mismatches"] = json!(self.mismatches.load(Ordering::Relaxed));
        v["repaired"] = json!(self.repaired.load(Ordering::Relaxed));
        v
    }
}

// ---------------------------------------------------------------------------------------
// Metadata

/// Makes the on-disk metadata at least as new as generation `want`: header and bitmap to
/// every attached leg that has not failed. A leg whose write fails is failed, and the
/// change that makes is written too.
pub async fn sync_meta(m: &Arc<Mirror>, want: u64) {
    persist::sync_meta(&m.intent, m.as_ref(), want).await;
}

/// Makes the leg states on disk as new as in memory.
pub async fn persist(m: &Arc<Mirror>) {
    persist::persist(&m.intent, m.as_ref()).await;
}

/// Writes the whole in-memory metadata, bitmap included, if the disk is behind.
pub async fn persist_all(m: &Arc<Mirror>) {
    persist::persist_all(&m.intent, m.as_ref()).await;
}

/// Persists from a task on this reactor (callers on the data path or off any reactor).
pub fn persist_in_background(m: &Arc<Mirror>) {
    let m = m.clone();
    crate::volume::examine::on_a_reactor(move || async move { persist(&m).await });
}

impl MetaWriter for Mirror {
    async fn write_meta(&self, snap: &Snapshot) -> MetaWrite {
        let (wrote, failed) = write_legs_meta(self, snap).await;
        MetaWrite {
            durable: wrote,
            member_failed: failed,
        }
    }
    fn is_offline(&self) -> bool {
        self.state() == MirrorState::Offline
    }
}

/// Returns (written to at least one leg, some leg failed). The cluster store (if any) gets
/// the leg states first: they are recorded there before the change is acted on.
async fn write_legs_meta(m: &Mirror, snap: &Snapshot) -> (bool, bool) {
    super::record::write(m, snap.generation).await;
    let targets: Vec<(usize, IoChannel, u64)> = {
        let c = m.ctl.lock();
        (0..2)
            .filter(|&s| !matches!(c.legs[s].state, LegState::Failed | LegState::Missing))
            .filter_map(|s| {
                c.legs[s]
                    .base
                    .as_ref()
                    .and_then(|b| b.channel().ok().map(|ch| (s, ch, b.write_granule())))
            })
            .collect()
    };
    let split = m.split_record(snap);
    let mut wrote = false;
    let mut failed = false;
    // One leg after the other: a crash tears at most one leg's metadata.
    for (slot, ch, unit) in targets {
        let sb = m.superblock_for(slot, snap.generation);
        let meta = if split.is_some() {
            super::superblock::meta_blocks_with_maps(sb.bits, sb.block_size)
        } else {
            sb.meta_blocks()
        };
        // Whole units of the leg (a RAID leg's stripes), so it never reads to write them.
        let blocks = (meta.div_ceil(unit) * unit).min(m.data_offset);
        let bytes = (blocks * m.block_size as u64) as usize;
        let mut raw = vec![0u8; bytes];
        sb.encode_meta(&snap.bitmap, split.as_ref().map(|(r, x)| (r, x)), &mut raw);
        match wait::write_slice(&ch, 0, &raw).await {
            Ok(()) => wrote = true,
            Err(st) => {
                failed = true;
                m.fail_leg(slot, false, &format!("superblock write failed: {st:?}"));
            }
        }
    }
    (wrote, failed)
}

// ---------------------------------------------------------------------------------------
// Jobs

/// Reserves the mirror's job slot for a new job. False if one runs.
pub fn reserve(m: &Mirror, kind: JobKind, repair: bool) -> Option<Arc<Job>> {
    m.job.reserve(|| Job::new(kind, repair))
}

/// Runs a reserved job to its end on this reactor, then records its outcome.
pub async fn run(m: Arc<Mirror>, job: Arc<Job>) {
    if !matches!(job.kind, JobKind::Scrub) {
        m.intent.hold_bits(true);
    }
    let ch = MirrorChannel::new(m.clone());
    tracing::info!(mirror = %m.name, job = job.kind.name(), repair = job.repair, "mirror job started");
    let res = match job.kind {
        JobKind::Resync => resync(&m, &ch, &job).await,
        JobKind::Scan | JobKind::Scrub => scan(&m, &ch, &job).await,
        JobKind::ImageCopy => image_copy(&m, &ch, &job).await,
    };
    let result = match res {
        Ok(()) => "done",
        Err(Stop::Aborted) => "aborted",
        Err(Stop::Failed(_)) => "failed",
    };
    if res.is_ok() && job.kind != JobKind::Scrub {
        let mut c = m.ctl.lock();
        let s = c.secondary();
        if c.state == MirrorState::Resyncing && c.legs[s].state == LegState::Resyncing {
            c.legs[s].state = LegState::InSync;
            c.state = MirrorState::InSync;
            c.bitmap_trusted = true;
            m.intent.hold_bits(false);
            m.intent.bump();
            m.refresh(&c);
        }
    }
    persist_all(&m).await;
    let mut info = job.info();
    info["result"] = json!(result);
    match res {
        Ok(()) => {
            tracing::info!(mirror = %m.name, job = job.kind.name(), secs = job.progress.started.elapsed().as_secs_f64(),
                copied_bytes = job.copied_bytes.load(Ordering::Relaxed), mismatches = job.mismatches.load(Ordering::Relaxed),
                "mirror job complete")
        }
        Err(Stop::Aborted) => {
            tracing::warn!(mirror = %m.name, job = job.kind.name(), "mirror job aborted")
        }
        Err(Stop::Failed(why)) => {
            info["error"] = json!(why);
            tracing::error!(mirror = %m.name, job = job.kind.name(), error = %why, "mirror job failed; changed regions stay marked")
        }
    }
    *m.last_job.lock() = Some(info);
    m.job.release();
}

#[derive(Debug)]
enum Stop {
    Aborted,
    Failed(String),
}

/// Blocks per secondary write unit: whole stripes of a RAID secondary, else one block.
pub(super) fn unit_blocks(m: &Mirror) -> u64 {
    let c = m.ctl.lock();
    c.legs[c.secondary()]
        .base
        .as_ref()
        .map_or(1, |b| b.write_granule())
}

/// `[a, b)` widened to whole units, within the volume.
fn widen(m: &Mirror, a: u64, b: u64, unit: u64) -> (u64, u64) {
    (
        a - a % unit,
        b.div_ceil(unit).saturating_mul(unit).min(m.num_blocks),
    )
}

/// Channels to (primary, secondary) on this reactor.
fn leg_channels(m: &Mirror, ch: &MirrorChannel) -> Result<(IoChannel, IoChannel), Stop> {
    let (p, s) = {
        let c = m.ctl.lock();
        (c.primary, c.secondary())
    };
    match (ch.leg(p), ch.leg(s)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(Stop::Failed("a leg is gone".into())),
    }
}

fn check_running(m: &Mirror) -> Result<(), Stop> {
    if m.stopping.load(Ordering::Acquire) {
        return Err(Stop::Aborted);
    }
    match m.state() {
        MirrorState::Degraded | MirrorState::Offline => {
            Err(Stop::Failed("a leg failed during the job".into()))
        }
        // A split (a snapshot's image on the secondary): copies from the primary stop.
        MirrorState::Split => Err(Stop::Aborted),
        _ => Ok(()),
    }
}

/// The background copy of a snapshot split's owed regions.
async fn image_copy(m: &Arc<Mirror>, ch: &MirrorChannel, job: &Job) -> Result<(), Stop> {
    let Some(pit) = m.pit() else {
        return Ok(());
    };
    let (p, s) = leg_channels(m, ch)?;
    tracing::info!(mirror = %m.name, image = %pit.image_name, owed_regions = pit.owed_count(), "image copy started");
    let res = super::pit::copy_owed(m, &pit, &p, &s, job).await;
    match res {
        Ok(()) => {
            tracing::info!(mirror = %m.name, image = %pit.image_name, "image complete: the secondary holds the point-in-time image");
            // The owed map is empty now: on disk too.
            m.intent.bump_unordered();
            Ok(())
        }
        Err(e) if pit.dropped.load(Ordering::Acquire) || e == "cancelled" || e == "aborted" => {
            Err(Stop::Aborted)
        }
        Err(e) => Err(Stop::Failed(e)),
    }
}

/// Copies blocks `[a, b)` primary → secondary; the caller holds their regions locked.
/// A leg that fails is failed.
pub(super) async fn copy_range(
    m: &Mirror,
    p: &IoChannel,
    s: &IoChannel,
    a: u64,
    b: u64,
) -> Result<(), IoStatus> {
    let unit = unit_blocks(m);
    copy_locked(m, p, s, a, b, unit).await.map_err(|e| {
        tracing::error!(mirror = %m.name, lba = a, blocks = b - a, error = ?e, "copy to the secondary failed");
        IoStatus::Failed
    })
}

/// Locks the regions covering blocks `[a, b)` and waits for the host writes in flight in
/// them; the guard unlocks.
pub(super) async fn lock_blocks(m: &Mirror, a: u64, b: u64) -> RegionLock<'_> {
    let (f, l) = m.regions(a, b - a);
    m.intent.lock_range(f, l);
    poll_fn(|cx| m.intent.poll_drained(f, l, cx.waker())).await;
    RegionLock { m, f, l }
}

pub(super) struct RegionLock<'a> {
    m: &'a Mirror,
    f: usize,
    l: usize,
}

impl Drop for RegionLock<'_> {
    fn drop(&mut self) {
        self.m.intent.unlock_range(self.f, self.l);
    }
}

/// Copies blocks `[a, b)` (whole secondary units, regions locked) primary → secondary.
async fn copy_locked(
    m: &Mirror,
    p: &IoChannel,
    s: &IoChannel,
    a: u64,
    b: u64,
    unit: u64,
) -> Result<(), Stop> {
    let bs = m.block_size as u64;
    // Pieces of whole units, about 1 MiB each.
    let step = ((1u64 << 20) / bs).div_ceil(unit).max(1) * unit;
    let mut lba = a;
    while lba < b {
        let n = step.min(b - lba);
        let len = (n * bs) as usize;
        let bufs = wait::alloc_bufs(len)
            .await
            .map_err(|e| Stop::Failed(format!("no copy buffer: {e:?}")))?;
        let mut r = BdevIo::new(IoType::Read, m.data_offset + lba, n);
        r.bufs = bufs;
        let mut r = wait::submit_wait(p, r).await;
        if !r.status.is_success() {
            return Err(leg_error(m, 0, "read", r.status));
        }
        let mut w = BdevIo::new(IoType::Write, m.data_offset + lba, n);
        w.bufs = std::mem::take(&mut r.bufs);
        drop(r);
        let w = wait::submit_wait(s, w).await;
        if !w.status.is_success() {
            return Err(leg_error(m, 1, "write", w.status));
        }
        lba += n;
    }
    Ok(())
}

/// Fails the leg in `role` after a job I/O error on it.
fn leg_error(m: &Mirror, role: usize, what: &str, st: IoStatus) -> Stop {
    let slot = {
        let c = m.ctl.lock();
        if role == 0 {
            c.primary
        } else {
            c.secondary()
        }
    };
    let why = format!("{what} failed during a mirror job: {st:?}");
    m.fail_leg(slot, false, &why);
    Stop::Failed(why)
}

/// Copies every region the bitmap marks.
async fn resync(m: &Arc<Mirror>, ch: &MirrorChannel, job: &Job) -> Result<(), Stop> {
    let (p, s) = leg_channels(m, ch)?;
    let regions = m.intent.dirty_regions();
    let rb = m.region_blocks;
    let bs = m.block_size as u64;
    let unit = unit_blocks(m);
    job.progress.set_total(regions.len() as u64 * rb * bs);
    let mut run = JobRun::new(&job.progress);
    for r in regions {
        check_running(m)?;
        let (a, b) = (r * rb, ((r + 1) * rb).min(m.num_blocks));
        if m.intent.is_dirty(r as usize) {
            let (wa, wb) = widen(m, a, b, unit);
            let g = lock_blocks(m, wa, wb).await;
            copy_locked(m, &p, &s, wa, wb, unit).await?;
            // Every region the copy covered whole is now in sync.
            for q in wa / rb..=(wb - 1) / rb {
                if q * rb >= wa && ((q + 1) * rb).min(m.num_blocks) <= wb {
                    m.intent.clear_region(q);
                }
            }
            drop(g);
            job.copied_bytes
                .fetch_add((wb - wa) * bs, Ordering::Relaxed);
            run.pace((wb - wa) * bs, m.options().max_bandwidth_mb_sec as u64)
                .await
                .map_err(|_| Stop::Aborted)?;
        }
        job.progress.add_done((b - a) * bs);
    }
    Ok(())
}

/// Compares the legs chunk by chunk by checksums computed on each leg; copies mismatching
/// chunks when resyncing or repairing.
async fn scan(m: &Arc<Mirror>, ch: &MirrorChannel, job: &Job) -> Result<(), Stop> {
    let (p, s) = leg_channels(m, ch)?;
    let rb = m.region_blocks;
    let bs = m.block_size as u64;
    let chunk = m.scan_chunk_blocks;
    let unit = unit_blocks(m);
    let alg = m.options().checksum;
    let copy = job.kind == JobKind::Scan || job.repair;
    job.progress.set_total(m.num_blocks * bs);
    let mut run = JobRun::new(&job.progress);
    for r in 0..m.intent.bits {
        check_running(m)?;
        let (a, b) = (r * rb, ((r + 1) * rb).min(m.num_blocks));
        let (wa, wb) = widen(m, a, b, unit);
        let g = lock_blocks(m, wa, wb).await;
        let dp = wait::digests(&p, m.data_offset + a, b - a, chunk as u32, alg).await;
        let dp = dp.map_err(|st| leg_error(m, 0, "checksum", st))?;
        let ds = wait::digests(&s, m.data_offset + a, b - a, chunk as u32, alg).await;
        let ds = ds.map_err(|st| leg_error(m, 1, "checksum", st))?;
        let dl = alg.digest_len();
        let mut bad: Vec<(u64, u64)> = Vec::new();
        let mut n_bad = 0u64;
        for (i, (x, y)) in dp.chunks_exact(dl).zip(ds.chunks_exact(dl)).enumerate() {
            if x != y {
                let ca = a + i as u64 * chunk;
                let (ua, ub) = widen(m, ca, (ca + chunk).min(b), unit);
                match bad.last_mut() {
                    Some(last) if last.1 >= ua => last.1 = last.1.max(ub),
                    _ => bad.push((ua, ub)),
                }
                n_bad += 1;
                if job.kind == JobKind::Scrub {
                    tracing::warn!(mirror = %m.name, lba = ca, blocks = chunk, "scrub: legs differ");
                }
            }
        }
        job.mismatches.fetch_add(n_bad, Ordering::Relaxed);
        if copy {
            for &(ua, ub) in &bad {
                copy_locked(m, &p, &s, ua, ub, unit).await?;
                job.copied_bytes
                    .fetch_add((ub - ua) * bs, Ordering::Relaxed);
            }
            if job.kind == JobKind::Scrub {
                job.repaired.fetch_add(n_bad, Ordering::Relaxed);
            } else {
                m.intent.clear_region(r);
            }
        }
        drop(g);
        // Low priority: both legs were read whole for the checksums.
        run.step((b - a) * bs, m.options().max_bandwidth_mb_sec as u64)
            .await
            .map_err(|_| Stop::Aborted)?;
    }
    Ok(())
}

/// Per-mirror housekeeping, once a second: clears bitmap regions idle for a whole period
/// while the legs are in sync, and starts the periodic scrub when it is due.
pub async fn housekeeping(m: Arc<Mirror>) {
    let mut last_scrub = Instant::now();
    loop {
        strata_reactor::sleep(Duration::from_secs(1)).await;
        if m.stopping.load(Ordering::Acquire) {
            return;
        }
        let (state, every) = {
            let c = m.ctl.lock();
            (c.state, c.opts.scrub_interval_s)
        };
        if state != MirrorState::InSync || m.job.is_busy() {
            continue;
        }
        if m.intent.clear_idle() {
            persist_all(&m).await;
        }
        if every > 0 && last_scrub.elapsed() >= Duration::from_secs(every as u64) {
            last_scrub = Instant::now();
            if let Some(job) = reserve(&m, JobKind::Scrub, false) {
                tracing::info!(mirror = %m.name, "periodic scrub started");
                strata_reactor::spawn_local(run(m.clone(), job)).detach();
            }
        }
    }
}

/// Waits until no job runs on the mirror.
pub async fn wait_idle(m: &Mirror) {
    while m.job.is_busy() {
        strata_reactor::sleep(Duration::from_micros(250)).await;
    }
}
