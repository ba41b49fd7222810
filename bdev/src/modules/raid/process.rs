//! Background work on an array: metadata writes, rebuild onto a new member, resync of the
//! stripes the write-intent bitmap marks after a crash, and the periodic clearing of idle
//! bitmap regions. Jobs hold the stripe lock of the stripe they work on, so host I/O stays
//! correct around them, and are rate-limited by `process_max_bandwidth_mb_sec`.

use super::array::{Array, Process, LIVE_OUT, LIVE_REBUILDING};
use super::channel::{Bufs, RaidChannel};
use super::geometry::Level;
use super::meta::Snapshot;
use super::stripe::{Step, CHUNK_BYTES};
use crate::io::{IoStatus, IoType};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_reactor::dma;

impl RaidChannel {
    /// Makes the on-disk metadata at least as new as generation `want`.
    pub(super) async fn sync_meta(&self, want: u64) {
        let Some(meta) = &self.array.meta else {
            return;
        };
        let mut want = want;
        loop {
            let snap = poll_fn(|cx| meta.try_start_sync(want, cx.waker())).await;
            let Some(snap) = snap else {
                return;
            };
            let res = self.write_meta(&snap).await;
            meta.finish_sync(snap.generation);
            if res.is_err() {
                if self.array.is_offline() {
                    return;
                }
                // A member failed under the write: persist that too.
                want = want.max(meta.generation());
            }
        }
    }

    async fn write_meta(&self, snap: &Snapshot) -> Result<(), Step> {
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
        self.wait_all(v).await
    }

    /// Rebuilds rows of `stripe` onto `slot`. Retries when a source member fails.
    async fn rebuild_stripe(&self, s: u64, slot: usize) -> Result<(), IoStatus> {
        let geo = &self.array.geo;
        let bs = self.array.block_size as usize;
        let cr = (CHUNK_BYTES / bs).max(1) as u64;
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
        let mut v = Bufs::new();
        v.push(b.view(0, b.len()).ok_or(Step::Fail(IoStatus::Failed))?);
        let off = self.array.data_offset + s * geo.strip + c0;
        let p = self.mio_abs(slot, IoType::Write, off, c1 - c0, v);
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
        let off = self.array.data_offset + s * geo.strip + c0;
        let mut v = Bufs::new();
        v.push(buf.view(0, len).ok_or(Step::Fail(IoStatus::Failed))?);
        let p = self.mio_abs(src, IoType::Read, off, c1 - c0, v);
        self.wait_all(vec![(src, p)]).await?;
        let mut w = Vec::new();
        for &t in targets {
            let mut v = Bufs::new();
            v.push(buf.view(0, len).ok_or(Step::Fail(IoStatus::Failed))?);
            w.push((t, self.mio_abs(t, IoType::Write, off, c1 - c0, v)));
        }
        self.wait_all(w).await
    }

    /// Recomputes the redundancy of `stripe` from its data (after a crash).
    async fn resync_stripe(&self, s: u64) -> Result<(), Step> {
        let geo = &self.array.geo;
        let bs = self.array.block_size as usize;
        let cr = (CHUNK_BYTES / bs).max(1) as u64;
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
                    let mut bv = Bufs::new();
                    bv.push(b.view(0, b.len()).ok_or(Step::Fail(IoStatus::Failed))?);
                    let off = self.array.data_offset + s * geo.strip + c0;
                    v.push((m, self.mio_abs(m, IoType::Write, off, c1 - c0, bv)));
                }
                self.wait_all(v).await?;
            }
            c0 = c1;
        }
        Ok(())
    }
}

/// Paces a job to `process_max_bandwidth_mb_sec`.
struct Pacer {
    start: Instant,
    bytes: u64,
}

impl Pacer {
    async fn account(&mut self, bytes: u64) {
        self.bytes += bytes;
        let rate = super::options().process_max_bandwidth_mb_sec;
        if rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / (rate as f64 * 1e6));
        let el = self.start.elapsed();
        if due > el {
            strata_reactor::sleep(due - el).await;
        }
    }
}

fn set_progress(array: &Array, done: u64) {
    if let Some(p) = array.process.lock().as_mut() {
        p.done_blocks = done;
    }
}

/// Rebuilds `slot` (already attached as a rebuild target) stripe by stripe.
pub async fn rebuild(array: Arc<Array>, slot: usize) {
    let ch = RaidChannel::new(array.clone());
    if let Some(m) = &array.meta {
        ch.sync_meta(m.generation()).await;
    }
    let geo = array.geo.clone();
    let stripes = geo.stripes();
    let per_stripe = geo.stripe_blocks();
    let target = array.slots.read()[slot].name.clone();
    *array.process.lock() = Some(Process {
        kind: "rebuild",
        target: Some(target.clone()),
        done_blocks: 0,
        total_blocks: stripes * per_stripe,
        started: Instant::now(),
    });
    tracing::info!(raid = %array.name, target = %target, stripes, "rebuild started");
    let mut pacer = Pacer {
        start: Instant::now(),
        bytes: 0,
    };
    let mut ok = true;
    for s in 0..stripes {
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
        set_progress(&array, (s + 1) * per_stripe);
        pacer.account(per_stripe * array.block_size as u64).await;
    }
    if ok && array.rebuild_done(slot) {
        if let Some(m) = &array.meta {
            ch.sync_meta(m.generation()).await;
        }
        tracing::info!(raid = %array.name, target = %target,
            secs = pacer.start.elapsed().as_secs_f64(), "rebuild complete");
    }
    *array.process.lock() = None;
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
    meta.hold_bits(true);
    let ch = RaidChannel::new(array.clone());
    let stripes = array.geo.stripes();
    let per_region = meta.region_stripes;
    let total = regions.len() as u64 * per_region * array.geo.stripe_blocks();
    *array.process.lock() = Some(Process {
        kind: "resync",
        target: None,
        done_blocks: 0,
        total_blocks: total,
        started: Instant::now(),
    });
    tracing::info!(raid = %array.name, regions = regions.len(), "resync of dirty regions started");
    let mut pacer = Pacer {
        start: Instant::now(),
        bytes: 0,
    };
    let mut done = 0;
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
            done += array.geo.stripe_blocks();
            set_progress(&array, done);
            pacer
                .account(array.geo.stripe_blocks() * array.block_size as u64)
                .await;
        }
        meta.clear_region(r);
    }
    meta.hold_bits(false);
    ch.sync_meta(meta.generation()).await;
    *array.process.lock() = None;
    if failed {
        tracing::error!(raid = %array.name, "resync stopped before the end");
    } else {
        tracing::info!(raid = %array.name, secs = pacer.start.elapsed().as_secs_f64(), "resync complete");
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
            ch.sync_meta(meta.generation()).await;
        }
    }
}
