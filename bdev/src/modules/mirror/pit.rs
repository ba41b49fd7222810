//! The point-in-time image of a snapshot split (`bdev_mirror_split` with `snapshot`).
//!
//! The split answers at once, even while the initial copy or a resync still owes the
//! secondary regions: from that instant the secondary is defined as the image of the
//! primary as of the split. The regions still owed are the *owed map*; they are copied
//! primary → secondary in the background ([`super::jobs::JobKind::ImageCopy`]) and, on
//! demand, by whoever needs one first:
//!
//! - a host write to the primary that would overwrite an owed region copies it to the
//!   secondary first (copy before write: the image's contents are preserved on the
//!   secondary itself, no preserve area);
//! - a read of the image ([`super::image`]) copies the owed regions it covers, then reads the
//!   secondary;
//! - a backup either reflects every owed region into the secondary before it transfers
//!   (mode `secondary`), or reads owed regions from the primary into memory and sends them
//!   with the copied ones (mode `memory`) without writing the secondary.
//!
//! One copier per region at a time ([`Pit::claim`]); a copy holds the region's bitmap lock,
//! so host writes wait for it and it waits for none (a write into an owed region always
//! copies first, so none is in flight there). A region copied is cleared from the owed map
//! and from the change bitmap at once (primary and secondary agree on it); the next host
//! write sets the change bit again and, with it, persists the owed map before the write
//! goes down — so an owed region is never written on the primary while the disk still says
//! it is owed.

use super::jobs::{self, JobKind};
use super::superblock::{BackupRecord, ImageRecord};
use super::volume::Mirror;
use crate::channel::IoChannel;
use crate::io::IoStatus;
use crate::volume::job::JobSlot;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Poll, Waker};

struct OwedState {
    owed: Vec<u64>,
    /// Regions a copier holds.
    copying: Vec<u64>,
    waiters: Vec<Waker>,
    remaining: u64,
}

fn bit(w: &[u64], r: usize) -> bool {
    w.get(r / 64).is_some_and(|x| x & (1 << (r % 64)) != 0)
}

/// A snapshot split's image state, shared by the mirror, its channels and the image bdev.
pub struct Pit {
    pub image_name: String,
    pub split_time: u64,
    pub split_time_ns: u32,
    st: Mutex<OwedState>,
    /// Regions changed between the last backup's image and this one.
    pub delta: Vec<u64>,
    /// A backup of this image completed.
    pub backed_up: AtomicBool,
    pub backup: JobSlot<super::backup::BackupJob>,
    /// The backup being written, persisted so it resumes after a restart.
    pub backup_rec: Mutex<Option<BackupRecord>>,
    pub last_backup_job: Mutex<Option<Value>>,
    /// Set when the image is dropped: copiers and backups stop.
    pub dropped: AtomicBool,
    pub owed_at_split: u64,
    /// Regions copied before a host write / an image read / a memory-mode backup read.
    pub copied_for_writes: AtomicU64,
    pub copied_for_reads: AtomicU64,
    pub copied_in_background: AtomicU64,
}

impl Pit {
    pub fn new(
        image_name: String,
        (split_time, split_time_ns): (u64, u32),
        owed: Vec<u64>,
        delta: Vec<u64>,
        words: usize,
    ) -> Pit {
        let mut owed = owed;
        owed.resize(words, 0);
        let mut delta = delta;
        delta.resize(words, 0);
        let remaining = owed.iter().map(|w| w.count_ones() as u64).sum();
        Pit {
            image_name,
            split_time,
            split_time_ns,
            st: Mutex::new(OwedState {
                owed,
                copying: vec![0; words],
                waiters: Vec::new(),
                remaining,
            }),
            delta,
            backed_up: AtomicBool::new(false),
            backup: JobSlot::default(),
            backup_rec: Mutex::new(None),
            last_backup_job: Mutex::new(None),
            dropped: AtomicBool::new(false),
            owed_at_split: remaining,
            copied_for_writes: AtomicU64::new(0),
            copied_for_reads: AtomicU64::new(0),
            copied_in_background: AtomicU64::new(0),
        }
    }

    pub fn owed_bits(&self) -> Vec<u64> {
        self.st.lock().owed.clone()
    }

    pub fn owed_count(&self) -> u64 {
        self.st.lock().remaining
    }

    pub fn is_owed(&self, r: usize) -> bool {
        bit(&self.st.lock().owed, r)
    }

    /// Whether any region of `first..=last` is still owed (the fast paths' one check).
    #[inline]
    pub fn any_owed(&self, first: usize, last: usize) -> bool {
        if self.dropped.load(Ordering::Acquire) {
            return false;
        }
        let s = self.st.lock();
        s.remaining > 0 && (first..=last).any(|r| bit(&s.owed, r))
    }

    pub fn owed_regions(&self) -> Vec<usize> {
        let s = self.st.lock();
        (0..s.owed.len() * 64)
            .filter(|&r| bit(&s.owed, r))
            .collect()
    }

    /// Takes region `r` for a copier: `true` if it is owed and now held by the caller,
    /// `false` once it is not owed (waits while another copier holds it).
    async fn claim(&self, r: usize) -> bool {
        poll_fn(|cx| {
            let mut s = self.st.lock();
            if !bit(&s.owed, r) || self.dropped.load(Ordering::Acquire) {
                return Poll::Ready(false);
            }
            if bit(&s.copying, r) {
                if !s.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    s.waiters.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
            s.copying[r / 64] |= 1 << (r % 64);
            Poll::Ready(true)
        })
        .await
    }

    /// Lets go of region `r`; `copied`: it is no longer owed.
    fn release(&self, r: usize, copied: bool) {
        let wake = {
            let mut s = self.st.lock();
            s.copying[r / 64] &= !(1 << (r % 64));
            if copied && bit(&s.owed, r) {
                s.owed[r / 64] &= !(1 << (r % 64));
                s.remaining -= 1;
            }
            std::mem::take(&mut s.waiters)
        };
        wake.into_iter().for_each(Waker::wake);
    }

    /// The image is lost (its secondary failed): nothing is owed any more, so host writes
    /// go on; copiers stop. The caller drops the image bdev.
    pub fn abandon(&self) {
        self.dropped.store(true, Ordering::Release);
        let wake = {
            let mut s = self.st.lock();
            s.owed.iter_mut().for_each(|w| *w = 0);
            s.remaining = 0;
            std::mem::take(&mut s.waiters)
        };
        wake.into_iter().for_each(Waker::wake);
    }

    /// Waits until no copier holds a region (after `dropped` is set, none starts).
    pub async fn wait_no_copiers(&self) {
        while self.st.lock().copying.iter().any(|&w| w != 0) {
            strata_reactor::sleep(std::time::Duration::from_micros(250)).await;
        }
    }

    pub fn record(&self) -> ImageRecord {
        ImageRecord {
            name: self.image_name.clone(),
            split_time: self.split_time,
            split_time_ns: self.split_time_ns,
            backed_up: self.backed_up.load(Ordering::Acquire),
            backup: self.backup_rec.lock().clone(),
        }
    }

    pub fn info(&self, m: &Mirror) -> Value {
        let bytes = m.region_blocks * m.block_size as u64;
        json!({
            "name": self.image_name,
            "split_time": self.split_time,
            "split_time_ns": self.split_time_ns,
            "complete": self.owed_count() == 0,
            "owed_regions": self.owed_count(),
            "owed_regions_at_split": self.owed_at_split,
            "owed_bytes": self.owed_count() * bytes,
            "copied_before_writes": self.copied_for_writes.load(Ordering::Relaxed),
            "copied_for_reads": self.copied_for_reads.load(Ordering::Relaxed),
            "copied_in_background": self.copied_in_background.load(Ordering::Relaxed),
            "changed_regions_since_last_backup": self.delta.iter().map(|w| w.count_ones() as u64).sum::<u64>(),
            "backed_up": self.backed_up.load(Ordering::Acquire),
            "backup": self.backup.current().map(|j| j.info()),
            "last_backup_job": self.last_backup_job.lock().clone(),
        })
    }
}

/// Who asked for an on-demand copy (for the counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyFor {
    Write,
    Read,
    Background,
}

/// Makes region `r` of the image hold its point-in-time contents on the secondary: copies it
/// from the primary if it is still owed. `Ok(true)` if this call copied it.
pub async fn ensure_copied(
    m: &Mirror,
    pit: &Pit,
    p: &IoChannel,
    s: &IoChannel,
    r: usize,
    why: CopyFor,
) -> Result<bool, IoStatus> {
    if !pit.claim(r).await {
        return Ok(false);
    }
    let rb = m.region_blocks;
    let (a, b) = (r as u64 * rb, ((r as u64 + 1) * rb).min(m.num_blocks));
    let g = jobs::lock_blocks(m, a, b).await;
    if pit.dropped.load(Ordering::Acquire) {
        // The image went while this copier waited: the secondary may be another bdev now.
        drop(g);
        pit.release(r, false);
        return Ok(false);
    }
    let res = jobs::copy_range(m, p, s, a, b).await;
    if res.is_ok() {
        // Both legs agree on the region now: it is no longer a difference either.
        m.intent.clear_region(r as u64);
    }
    drop(g);
    pit.release(r, res.is_ok());
    res?;
    let c = match why {
        CopyFor::Write => &pit.copied_for_writes,
        CopyFor::Read => &pit.copied_for_reads,
        CopyFor::Background => &pit.copied_in_background,
    };
    c.fetch_add(1, Ordering::Relaxed);
    Ok(true)
}

/// Reads blocks `[a, b)` of the image as of the split into memory without writing the
/// secondary: owed regions from the primary (held against host writes while read), the
/// others from the secondary (claims 4 and 8: the memory mode of a backup).
pub async fn read_image_to_memory(
    m: &Mirror,
    pit: &Pit,
    p: &IoChannel,
    s: &IoChannel,
    a: u64,
    b: u64,
) -> Result<Vec<u8>, IoStatus> {
    let rb = m.region_blocks;
    // One piece per region the range covers; a chunk within one region (the usual case)
    // is returned as read, not copied again.
    let mut out: Vec<u8> = Vec::new();
    let mut lba = a;
    while lba < b {
        let r = (lba / rb) as usize;
        let end = ((r as u64 + 1) * rb).min(b);
        let piece = if pit.claim(r).await {
            let g = jobs::lock_blocks(m, lba, end).await;
            let res = crate::wait::read_vec(p, m.data_offset + lba, end - lba).await;
            drop(g);
            pit.release(r, false);
            res?
        } else if pit.dropped.load(Ordering::Acquire) {
            return Err(IoStatus::Removed);
        } else {
            crate::wait::read_vec(s, m.data_offset + lba, end - lba).await?
        };
        if out.is_empty() {
            out = piece;
        } else {
            out.extend_from_slice(&piece);
        }
        lba = end;
    }
    Ok(out)
}

/// The background copy of every owed region (the copy the split did not wait for).
pub async fn copy_owed(
    m: &Mirror,
    pit: &Pit,
    p: &IoChannel,
    s: &IoChannel,
    job: &jobs::Job,
) -> Result<(), String> {
    let bytes = m.region_blocks * m.block_size as u64;
    job.progress.set_total(pit.owed_at_split * bytes);
    job.progress
        .set_done((pit.owed_at_split - pit.owed_count()) * bytes);
    let mut run = crate::volume::job::JobRun::new(&job.progress);
    for r in pit.owed_regions() {
        if pit.dropped.load(Ordering::Acquire) || m.stopping.load(Ordering::Acquire) {
            return Err("aborted".into());
        }
        let copied = ensure_copied(m, pit, p, s, r, CopyFor::Background)
            .await
            .map_err(|st| format!("copy of region {r} failed: {st:?}"))?;
        if copied {
            job.copied_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        job.progress
            .set_done((pit.owed_at_split - pit.owed_count()) * bytes);
        run.pace(
            if copied { bytes } else { 0 },
            m.options().max_bandwidth_mb_sec as u64,
        )
        .await
        .map_err(|_| "cancelled".to_string())?;
    }
    Ok(())
}

/// The kind of job the background copy runs as.
pub const COPY_JOB: JobKind = JobKind::ImageCopy;
