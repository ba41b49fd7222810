//! Background work on an array: metadata writes, rebuild onto a new member, resync of the
//! stripes the write-intent bitmap marks after a crash, and the periodic clearing of idle
//! bitmap regions. Jobs hold the stripe lock of the stripe they work on, so host I/O stays
//! correct around them, and are rate-limited by `process_max_bandwidth_mb_sec`.

use super::array::{Array, LIVE_OUT, LIVE_REBUILDING};
use super::channel::{Bufs, RaidChannel};
use super::geometry::Level;
use super::stripe::{one, shared, Step};
use crate::bufs::share_range;
use crate::io::{IoStatus, IoType};
use crate::volume::intent::Snapshot;
use crate::volume::job::JobRun;
use crate::volume::persist::{self, MetaWrite, MetaWriter};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_reactor::dma;

impl MetaWriter for RaidChannel {
    async fn write_meta(&self, snap: &Snapshot) -> MetaWrite {
        match self.write_members_meta(snap).await {
            Ok(()) => MetaWrite {
                durable: true,
                member_failed: false,
            },
            // On every member still serving (the others were failed): durable.
            Err(Step::Retry) => MetaWrite {
                durable: true,
                member_failed: true,
            },
            // Nothing was written.
            Err(Step::Fail(_)) => MetaWrite {
                durable: false,
                member_failed: false,
            },
        }
    }
    fn is_offline(&self) -> bool {
        self.array.is_offline()
    }
}

impl RaidChannel {
    /// Makes the on-disk metadata at least as new as generation `want`.
    pub(super) async fn sync_meta(&self, want: u64) {
        if let Some(meta) = &self.array.meta {
            persist::sync_meta(meta, self, want).await;
        }
    }

    /// Makes the member states on disk as new as in memory (no-op when they are).
    pub(super) async fn persist(&self) {
        if let Some(m) = &self.array.meta {
            persist::persist(m, self).await;
        }
    }

    /// Writes the whole in-memory metadata, bitmap included, if the disk is behind.
    pub(super) async fn persist_all(&self) {
        if let Some(m) = &self.array.meta {
            persist::persist_all(m, self).await;
        }
    }

    /// Writes superblock + bitmap to every member still serving. A member whose write
    /// fails in any way is failed: the snapshot is durable only on the members that took it.
    async fn write_members_meta(&self, snap: &Snapshot) -> Result<(), Step> {
        let bs = self.array.block_size as usize;
        let mut v = Vec::new();
        for slot in 0..self.array.geo.members {
            if self.array.live(slot) == LIVE_OUT {
                continue;
            }
            let sb = self.array.superblock_for(slot, snap.generation);
            let blocks = sb.meta_blocks();
            let Ok(mut buf) = dma::alloc_wait(blocks as usize * bs).await else {
                return Err(Step::Fail(IoStatus::InvalidArgument));
            };
            sb.encode_meta(&snap.bitmap, buf.as_mut_slice());
            let mut bufs = Bufs::new();
            bufs.push(buf);
            v.push((slot, self.mio_abs(slot, IoType::Write, 0, blocks, bufs)));
        }
        let mut out = Ok(());
        for (slot, p) in v {
            if self.wait_all(vec![(slot, p)]).await.is_err() {
                self.array.fail_member(slot, "superblock write failed");
                out = Err(Step::Retry);
            }
        }
        out
    }

    /// Persists a rebuild's progress: stripes below `cursor` are rebuilt on `slot`. The
    /// member is flushed first, so the checkpoint never claims data the member could lose.
    async fn checkpoint_rebuild(&self, slot: usize, cursor: u64) {
        let p = self.mio_abs(slot, IoType::Flush, 0, 0, Bufs::new());
        if self.wait_all(vec![(slot, p)]).await.is_err() {
            return;
        }
        self.array
            .rebuild_checkpoint
            .store(cursor, Ordering::Release);
        // Not a member-state change: host writes do not wait for this metadata write.
        if let Some(m) = &self.array.meta {
            m.bump_unordered();
        }
        self.persist_all().await;
    }

    /// Rebuilds rows of `stripe` onto `slot`. Retries when a source member fails.
    async fn rebuild_stripe(&self, s: u64, slot: usize) -> Result<(), IoStatus> {
        let geo = &self.array.geo;
        let cr = self.chunk_rows();
        let mut c0 = 0;
        while c0 < geo.strip {
            let c1 = (c0 + cr).min(geo.strip);
            let r = if geo.level == Level::Raid1 {
                self.copy_rows(s, c0, c1, &[slot]).await
            } else {
                self.rebuild_rows(s, c0, c1, slot).await
            };
            match r {
                Ok(()) => c0 = c1,
                Err(Step::Retry)
                    if self.array.live(slot) == LIVE_REBUILDING && !self.array.is_offline() => {}
                Err(Step::Retry) => return Err(IoStatus::Failed),
                Err(Step::Fail(st)) => return Err(st),
            }
        }
        Ok(())
    }

    async fn rebuild_rows(&self, s: u64, c0: u64, c1: u64, slot: usize) -> Result<(), Step> {
        let geo = &self.array.geo;
        let target = (0..geo.roles())
            .find(|&k| geo.member_of(s, geo.role(k)) == slot)
            .ok_or(Step::Fail(IoStatus::Failed))?;
        let (mut bufs, missing) = self.load(s, c0, c1, |k| k == target).await?;
        self.recover(&mut bufs, &missing)?;
        let b = &bufs[target];
        let p = self.mio(slot, IoType::Write, s, c0, c1 - c0, shared(b, 0, b.len()));
        self.wait_all(vec![(slot, p)]).await
    }

    /// raid1: copies rows of region `s` from the first in-sync leg to `targets`.
    async fn copy_rows(&self, s: u64, c0: u64, c1: u64, targets: &[usize]) -> Result<(), Step> {
        let geo = &self.array.geo;
        let bs = self.array.block_size as usize;
        let src = (0..geo.members)
            .find(|&m| !targets.contains(&m) && self.array.usable(m, s))
            .ok_or(Step::Fail(IoStatus::Failed))?;
        let len = (c1 - c0) as usize * bs;
        let buf = dma::alloc_wait(len)
            .await
            .map_err(|_| Step::Fail(IoStatus::InvalidArgument))?;
        // The read owns the buffer until it completes; the writes then share it, read-only.
        let p = self.mio(src, IoType::Read, s, c0, c1 - c0, one(buf));
        let (mut got, _, res) = self.wait_bufs(vec![(src, p)]).await;
        res?;
        let buf = got.pop().unwrap_or_default();
        let w = targets
            .iter()
            .map(|&t| {
                let mut b = Bufs::new();
                share_range(&buf, 0, len, &mut b);
                (t, self.mio(t, IoType::Write, s, c0, c1 - c0, b))
            })
            .collect();
        self.wait_all(w).await
    }

    /// Recomputes the redundancy of `stripe` from its data (after a crash).
    async fn resync_stripe(&self, s: u64) -> Result<(), Step> {
        let geo = &self.array.geo;
        let cr = self.chunk_rows();
        let mut c0 = 0;
        while c0 < geo.strip {
            let c1 = (c0 + cr).min(geo.strip);
            if geo.level == Level::Raid1 {
                let targets: Vec<usize> = (0..geo.members)
                    .filter(|&m| self.array.usable(m, s))
                    .skip(1)
                    .collect();
                if !targets.is_empty() {
                    self.copy_rows(s, c0, c1, &targets).await?;
                }
            } else {
                let d = geo.data_strips();
                let data_ok = (0..d).all(|k| self.array.usable(geo.member_of(s, geo.role(k)), s));
                if !data_ok {
                    tracing::warn!(raid = %self.array.name, stripe = s,
                        "cannot resync parity of a stripe with a data member out; its parity may be stale");
                    return Ok(());
                }
                let (mut bufs, _) = self.load(s, c0, c1, |k| k >= d).await?;
                self.regen(&mut bufs)?;
                let mut v = Vec::new();
                for (k, b) in bufs.iter().enumerate().skip(d) {
                    let m = geo.member_of(s, geo.role(k));
                    if !self.array.usable(m, s) {
                        continue;
                    }
                    v.push((
                        m,
                        self.mio(m, IoType::Write, s, c0, c1 - c0, shared(b, 0, b.len())),
                    ));
                }
                self.wait_all(v).await?;
            }
            c0 = c1;
        }
        Ok(())
    }
}

/// How often a rebuild persists its progress (a restart resumes from there).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The array's job rate limit, MB/s (0: unlimited).
fn rate_limit() -> u64 {
    super::options().process_max_bandwidth_mb_sec
}

/// Rebuilds `slot` (already attached as a rebuild target) stripe by stripe. The caller has
/// reserved the array's job slot ([`Array::begin_process`]); it is released at the end.
pub async fn rebuild(array: Arc<Array>, slot: usize) {
    let ch = RaidChannel::new(array.clone());
    ch.persist().await;
    let geo = array.geo.clone();
    let stripes = geo.stripes();
    let per_stripe = geo.stripe_blocks();
    let target = array.slots.read()[slot].name.clone();
    tracing::info!(raid = %array.name, target = %target, stripes, "rebuild started");
    let Some(job) = array.process.current() else {
        return;
    };
    let mut run = JobRun::new(&job);
    let stripe_bytes = per_stripe * array.block_size as u64;
    // A rebuild resumed after a restart starts at its checkpoint.
    let first = array.rebuild_cursor.load(Ordering::Acquire).min(stripes);
    if first > 0 {
        tracing::info!(raid = %array.name, target = %target, stripe = first, "rebuild resumed from its checkpoint");
    }
    job.set_done(first * stripe_bytes);
    let mut checkpointed = Instant::now();
    let mut ok = true;
    for s in first..stripes {
        if array.stopping.load(Ordering::Acquire) || array.live(slot) != LIVE_REBUILDING {
            ok = false;
            break;
        }
        let g = array.locks.lock(s).await;
        let r = ch.rebuild_stripe(s, slot).await;
        if r.is_ok() {
            array.rebuild_cursor.store(s + 1, Ordering::Release);
        }
        drop(g);
        if let Err(st) = r {
            tracing::error!(raid = %array.name, target = %target, stripe = s, status = ?st, "rebuild failed");
            ok = false;
            break;
        }
        if run.step(stripe_bytes, rate_limit()).await.is_err() {
            ok = false;
            break;
        }
        if checkpointed.elapsed() >= CHECKPOINT_INTERVAL && s + 1 < stripes {
            ch.checkpoint_rebuild(slot, s + 1).await;
            checkpointed = Instant::now();
        }
    }
    if ok && array.rebuild_done(slot) {
        ch.persist().await;
        tracing::info!(raid = %array.name, target = %target,
            secs = run.elapsed_secs(), "rebuild complete");
    }
    array.end_process();
}

/// Recomputes the redundancy of the bitmap's dirty regions (after an unclean stop).
pub async fn resync(array: Arc<Array>) {
    let Some(meta) = &array.meta else {
        return;
    };
    let regions = meta.dirty_regions();
    if regions.is_empty() {
        return;
    }
    if !array.begin_process("resync", None) {
        tracing::warn!(raid = %array.name, "resync postponed: another job runs");
        return;
    }
    meta.hold_bits(true);
    let ch = RaidChannel::new(array.clone());
    let stripes = array.geo.stripes();
    let per_region = meta.region_units;
    let stripe_bytes = array.geo.stripe_blocks() * array.block_size as u64;
    let Some(job) = array.process.current() else {
        return;
    };
    job.set_total(regions.len() as u64 * per_region * stripe_bytes);
    tracing::info!(raid = %array.name, regions = regions.len(), "resync of dirty regions started");
    let mut run = JobRun::new(&job);
    let mut failed = false;
    'outer: for r in regions.iter().copied() {
        for s in r * per_region..((r + 1) * per_region).min(stripes) {
            if array.stopping.load(Ordering::Acquire) || array.is_offline() {
                failed = true;
                break 'outer;
            }
            let g = array.locks.lock(s).await;
            let mut res = ch.resync_stripe(s).await;
            while matches!(res, Err(Step::Retry)) && !array.is_offline() {
                res = ch.resync_stripe(s).await;
            }
            drop(g);
            if res.is_err() {
                failed = true;
                break 'outer;
            }
            if run.step(stripe_bytes, rate_limit()).await.is_err() {
                failed = true;
                break 'outer;
            }
        }
        meta.clear_region(r);
    }
    // Regions not repaired keep their bits (and stay held): a later start resyncs them.
    meta.hold_bits(failed);
    ch.persist_all().await;
    array.end_process();
    if failed {
        tracing::error!(raid = %array.name, "resync stopped before the end; unrepaired regions stay marked");
    } else {
        tracing::info!(raid = %array.name, secs = run.elapsed_secs(), "resync complete");
    }
}

/// Clears bitmap regions that stayed idle for a whole period, once a second.
pub async fn clear_idle_regions(array: Arc<Array>) {
    let ch: Rc<RaidChannel> = RaidChannel::new(array.clone());
    loop {
        strata_reactor::sleep(Duration::from_secs(1)).await;
        if array.stopping.load(Ordering::Acquire) {
            return;
        }
        let Some(meta) = &array.meta else {
            return;
        };
        if !array.is_offline() && meta.clear_idle() {
            ch.persist_all().await;
        }
    }
}
