//! The drain (claims 1, 3, 12): copies each volume's undrained changes — the journal's
//! records up to the durable point the drain starts at — to the backup repository, then
//! trims the journal.
//!
//! - A volume's first drain makes a *full* backup: every chunk read from the base, with the
//!   volume's records up to the drain point laid over it (a base write still in flight
//!   when the chunk was read is in the journal, so nothing before the point is missed).
//! - Later drains make *incremental* backups built from the journal alone: each chunk a
//!   record touches is the parent backup's chunk with the records laid over it in order.
//!   The base is not read: a drain works while the base is degraded.
//! - Then the catalog (with each volume's new last backup and the drain point) is copied to
//!   the repository, and the header, with the new tail and the catalog, is written to the
//!   legs: only then is the log space reused.
//!
//! Host writes go on during a drain (their records come after the point and stay). A drain
//! cut short (kill -9) is redone from the journal after the restart under the same backup
//! ids: a backup already committed by the cut drain is taken as it is, not made twice.

use super::catalog::{DrainPoint, VolumeBackup, VolumeEntry};
use super::format::RecordKind;
use super::log::RecordLoc;
use super::Group;
use crate::backup::repo::{self, BackupKind, ChunkRef, Manifest, Repository};
use crate::backup::{self, BackupError};
use crate::error::BdevError;
use crate::volume::examine;
use crate::volume::job::{JobRun, Progress};
use crate::wait;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct DrainJob {
    pub reason: String,
    pub progress: Progress,
    pub phase: Mutex<String>,
    pub upto_seq: AtomicU64,
    pub backups: Mutex<Vec<Value>>,
    /// Volumes without a backup whose records stopped the trim (their base is not online).
    pub held_back_by: Mutex<Vec<String>>,
    pub stored_chunks: AtomicU64,
    pub stored_bytes: AtomicU64,
}

impl DrainJob {
    pub fn info(&self) -> Value {
        let mut v = self.progress.report().json("drain");
        v["reason"] = json!(self.reason);
        v["phase"] = json!(*self.phase.lock());
        v["upto_sequence"] = json!(self.upto_seq.load(Ordering::Relaxed));
        v["backups"] = json!(*self.backups.lock());
        v["held_back_by"] = json!(*self.held_back_by.lock());
        v["stored_chunks"] = json!(self.stored_chunks.load(Ordering::Relaxed));
        v["stored_bytes"] = json!(self.stored_bytes.load(Ordering::Relaxed));
        v
    }
}

fn new_job(g: &Group, reason: &str) -> DrainJob {
    DrainJob {
        reason: reason.to_string(),
        progress: Progress::new("drain", Some(g.name.clone()), 0),
        phase: Mutex::new("starting".into()),
        upto_seq: AtomicU64::new(0),
        backups: Mutex::new(Vec::new()),
        held_back_by: Mutex::new(Vec::new()),
        stored_chunks: AtomicU64::new(0),
        stored_bytes: AtomicU64::new(0),
    }
}

/// Starts a drain unless one runs. Returns whether this call started it.
pub fn request(g: &Arc<Group>, reason: &str) -> bool {
    if g.stopping.load(Ordering::Acquire) {
        return false;
    }
    let Some(mut job) = g.drain.reserve(|| new_job(g, reason)) else {
        return false;
    };
    let g = g.clone();
    examine::on_a_reactor(move || async move {
        loop {
            tracing::info!(group = %g.name, reason = %job.reason, "drain started");
            let res = run(&g, &job).await;
            let mut info = job.info();
            match &res {
                Ok(()) => {
                    g.drains_done.fetch_add(1, Ordering::Relaxed);
                    info["result"] = json!("done");
                    tracing::info!(group = %g.name, secs = job.progress.started.elapsed().as_secs_f64(), upto = job.upto_seq.load(Ordering::Relaxed),
                        stored_bytes = job.stored_bytes.load(Ordering::Relaxed), "drain done; journal trimmed");
                }
                Err(e) => {
                    info["result"] = json!("failed");
                    info["error"] = json!(e.to_string());
                    tracing::error!(group = %g.name, error = %e, "drain failed: the journal keeps every record");
                }
            }
            *g.last_drain.lock() = Some(info);
            // An operator asked for a drain while this one ran: its point may be later.
            // The slot passes to the next drain without a gap (`--wait` follows both).
            let mut slot = g.drain.lock();
            if g.drain_again.swap(false, Ordering::AcqRel) && !g.stopping.load(Ordering::Acquire) {
                job = Arc::new(new_job(&g, "rpc (asked during the previous drain)"));
                *slot = Some(job.clone());
                continue;
            }
            *slot = None;
            return;
        }
    });
    true
}

/// `bdev_journal_group_drain`: starts a drain now; while one runs, another follows it (its
/// point takes in what was written meanwhile).
pub fn start(name: &str) -> Result<(), BdevError> {
    let g = super::find_group(name)?;
    if !request(&g, "rpc") {
        g.drain_again.store(true, Ordering::Release);
        // The running one may have ended between the two calls: then start now.
        if request(&g, "rpc") {
            g.drain_again.store(false, Ordering::Release);
        }
    }
    Ok(())
}

async fn run(g: &Arc<Group>, job: &DrainJob) -> Result<(), BdevError> {
    // The point first, then the catalog: a volume made after the catalog was read wrote
    // nothing before the point.
    let (point, point_seq) = g.durable_point();
    let upto = point_seq.saturating_sub(1);
    job.upto_seq.store(upto, Ordering::Relaxed);
    let (vols, repository, chunk_size) = {
        let c = g.catalog.lock();
        (c.volumes.clone(), c.repository.clone(), c.drain.chunk_size)
    };
    let rate = || g.catalog.lock().drain.max_bandwidth_mb_sec as u64;
    let r = backup::open_repository(&repository, true).await?;
    let bs = g.block_size as u64;
    // Progress: every volume's delta bytes, and whole volumes for first backups. A volume
    // with no backup yet whose base is not online (or that is not registered yet) cannot
    // have its first backup taken: it is left out, and the trim stops before its first
    // record, so nothing of it is lost and the other volumes still drain.
    let mut plan = Vec::new();
    let mut total = 0u64;
    let mut cut = (point, point_seq);
    for e in vols {
        let mut recs = g.index.lock().volume_records(e.id, upto);
        if let Some(b) = &e.backup {
            // Records a drain held back for another volume are in this one's backup already.
            recs.retain(|r| r.seq > b.seq);
            if recs.is_empty() {
                continue;
            }
        } else {
            let online = super::volume(&e.name).is_some_and(|v| v.state() == super::volume::ONLINE);
            if !online {
                if let Some(first) = g
                    .index
                    .lock()
                    .records
                    .iter()
                    .find(|r| r.volume == e.id && r.kind != RecordKind::Catalog)
                {
                    if first.batch_seq < cut.1 {
                        cut = (first.batch_pos, first.batch_seq);
                    }
                    job.held_back_by.lock().push(e.name.clone());
                }
                tracing::warn!(group = %g.name, volume = %e.name, "volume left out of the drain: no backup yet and its base is not online (the journal keeps its records)");
                continue;
            }
        }
        total += match e.backup {
            None => e.num_blocks * bs,
            Some(_) => recs.iter().map(|r| r.blocks * bs).sum(),
        };
        plan.push((e, recs));
    }
    job.progress.set_total(total);
    let mut run = JobRun::new(&job.progress);
    let mut results = Vec::new();
    for (e, recs) in plan {
        *job.phase.lock() = format!("volume {}", e.name);
        let b = backup_volume(g, job, &r, &e, &recs, upto, chunk_size, &mut run, &rate).await?;
        job.backups.lock().push(json!({
            "volume": e.name,
            "backup": b.id,
            "records": recs.len(),
            "chain": b.chain,
        }));
        results.push((e.id, b));
    }
    *job.phase.lock() = "catalog".into();
    let catalog_bytes = {
        let mut c = g.catalog.lock();
        for (id, b) in results {
            if let Some(v) = c.volume_mut(id) {
                v.backup = Some(b);
            }
        }
        c.drained = DrainPoint {
            tail: cut.0,
            seq: cut.1,
            point_seq,
        };
        c.touch();
        c.to_bytes()
    };
    let (r2, name) = (r.clone(), g.name.clone());
    backup::offload(move || r2.put_catalog(&name, &catalog_bytes)).await?;
    *job.phase.lock() = "trim".into();
    trim(g, cut.0, cut.1).await
}

/// Moves the log's tail to `pos` (first sequence number `seq`), or less far if a job reads
/// records in place there (a pin): the header first, flushed, then the space is reused.
async fn trim(g: &Arc<Group>, pos: u64, seq: u64) -> Result<(), BdevError> {
    let (pos, seq) = {
        let mut st = g.log.lock();
        let (pos, seq) = st.pinned_cut(pos, seq);
        if seq <= st.header_tail_seq {
            return Ok(());
        }
        st.header_tail = pos;
        st.header_tail_seq = seq;
        (pos, seq)
    };
    g.persist_header().await?;
    g.flush_legs().await;
    let wake = {
        let mut st = g.log.lock();
        st.tail = pos;
        st.tail_seq = seq;
        st.take_space_waiters()
    };
    g.index.lock().trim(seq.saturating_sub(1), g.block_size);
    for w in wake {
        w.wake();
    }
    Ok(())
}

/// Lays the records (in sequence order) over `buf`, which holds blocks `a..a + len/bs`.
async fn overlay(g: &Group, buf: &mut [u8], a: u64, recs: &[RecordLoc]) -> Result<(), BdevError> {
    let bs = g.block_size as u64;
    let b = a + buf.len() as u64 / bs;
    for r in recs {
        let (s, e) = (r.lba.max(a), (r.lba + r.blocks).min(b));
        if s >= e {
            continue;
        }
        let dst = &mut buf[((s - a) * bs) as usize..((e - a) * bs) as usize];
        match r.kind {
            RecordKind::Zeroes => dst.fill(0),
            RecordKind::Write => {
                let d = g.read_record(r).await?;
                let from = ((s - r.lba) * bs) as usize;
                dst.copy_from_slice(&d[from..from + dst.len()]);
            }
            RecordKind::Catalog => {}
        }
    }
    Ok(())
}

fn stop(e: BackupError) -> BdevError {
    BdevError::from(e)
}

/// Makes one volume's backup at `upto`: full (first) or incremental over the last.
#[allow(clippy::too_many_arguments)]
async fn backup_volume(
    g: &Arc<Group>,
    job: &DrainJob,
    r: &Arc<Repository>,
    e: &VolumeEntry,
    recs: &[RecordLoc],
    upto: u64,
    chunk_size: u64,
    run: &mut JobRun<'_>,
    rate: &dyn Fn() -> u64,
) -> Result<VolumeBackup, BdevError> {
    let bs = g.block_size as u64;
    let (kind, parent, chunk_size, chain) = match &e.backup {
        None => (BackupKind::Full, None, chunk_size, 1),
        Some(b) => (
            BackupKind::Incremental,
            Some(b.id.clone()),
            b.chunk_size,
            b.chain + 1,
        ),
    };
    let id: String = format!("{}-{}-{upto:012}", g.name, e.name)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut man = Manifest {
        format: repo::MANIFEST_FORMAT.into(),
        version: repo::VERSION,
        id: id.clone(),
        volume_name: e.name.clone(),
        volume_uuid: e.uuid.clone(),
        block_size: e.block_size,
        num_blocks: e.num_blocks,
        chunk_size,
        kind,
        parent: parent.clone(),
        image_time: backup::now().0,
        created: 0,
        done_chunks: 0,
        chunks: Vec::new(),
        manifest_crc32c: 0,
    };
    // A drain cut short after this backup was committed: take it as it is.
    let (r2, id2) = (r.clone(), id.clone());
    match backup::offload(move || r2.manifest(&id2)).await {
        Ok(there) if there.volume_uuid == e.uuid && there.parent == parent => {
            tracing::info!(group = %g.name, volume = %e.name, backup = %id, "backup of this drain point is in the repository already (an interrupted drain): reused");
            return Ok(VolumeBackup {
                id,
                seq: upto,
                chunk_size,
                chain,
            });
        }
        Ok(_) => {
            return Err(BdevError::Exists(format!(
                "backup {id} in the repository belongs to another volume or chain"
            )))
        }
        Err(BackupError::NotFound(_)) => {}
        Err(err) => return Err(stop(err)),
    }
    let count = man.chunk_count();
    // The chunks to write, and the records over each.
    let mut per_chunk: BTreeMap<u64, Vec<RecordLoc>> = BTreeMap::new();
    for rec in recs {
        let first = rec.lba * bs / chunk_size;
        let last = ((rec.lba + rec.blocks) * bs - 1) / chunk_size;
        for c in first..=last.min(count.saturating_sub(1)) {
            per_chunk.entry(c).or_default().push(*rec);
        }
    }
    let parent_map = match &parent {
        Some(p) => {
            let (r2, p2) = (r.clone(), p.clone());
            let (pm, map) = backup::offload(move || r2.resolve(&p2))
                .await
                .map_err(stop)?;
            if pm.chunk_size != chunk_size || pm.num_blocks != e.num_blocks {
                return Err(BdevError::Invalid(format!(
                    "the last backup of {} ({}) has another chunk or volume size",
                    e.name, pm.id
                )));
            }
            Some(map)
        }
        None => None,
    };
    let base = match kind {
        BackupKind::Full => {
            let v = super::volume(&e.name);
            let ch = v
                .as_ref()
                .and_then(|v| v.base.read().as_ref().and_then(|b| b.channel().ok()));
            let online = v
                .as_ref()
                .is_some_and(|v| v.state() == super::volume::ONLINE);
            match (ch, online) {
                (Some(ch), true) => Some(ch),
                _ => {
                    return Err(BdevError::IoFailed(format!(
                        "volume {} has no backup yet and its base is not online: its first (full) backup cannot be taken",
                        e.name
                    )))
                }
            }
        }
        BackupKind::Incremental => None,
    };
    let todo: Vec<u64> = match kind {
        BackupKind::Full => (0..count).collect(),
        BackupKind::Incremental => per_chunk.keys().copied().collect(),
    };
    let empty = Vec::new();
    for idx in todo {
        if g.stopping.load(Ordering::Acquire) || job.progress.is_cancelled() {
            return Err(BdevError::IoFailed("drain stopped".into()));
        }
        let len = man.chunk_len(idx);
        let a = idx * chunk_size / bs;
        let mut buf = match (&base, &parent_map) {
            (Some(ch), _) => wait::read_vec(ch, a, len / bs).await.map_err(|st| {
                BdevError::IoFailed(format!(
                    "reading chunk {idx} of {} from its base: {st:?}",
                    e.name
                ))
            })?,
            (None, Some(map)) => match map.get(idx as usize).cloned().flatten() {
                Some(c) => {
                    let r2 = r.clone();
                    backup::offload(move || r2.read_chunk(&c, len))
                        .await
                        .map_err(stop)?
                }
                None => vec![0u8; len as usize],
            },
            (None, None) => vec![0u8; len as usize],
        };
        let over = per_chunk.get(&idx).unwrap_or(&empty);
        overlay(g, &mut buf, a, over).await?;
        let step = match kind {
            BackupKind::Full => len,
            BackupKind::Incremental => over.iter().map(|r| r.blocks * bs).sum::<u64>().min(len),
        };
        if buf.iter().all(|&x| x == 0) {
            if kind == BackupKind::Incremental {
                man.chunks.push(ChunkRef {
                    index: idx,
                    sha256: None,
                    crc32c: 0,
                });
            }
        } else {
            let r2 = r.clone();
            let (cref, wrote) = backup::offload(move || {
                let cid = repo::chunk_id(&buf);
                let crc = crate::kernels::crc32c(&buf);
                r2.put_chunk(&cid, &buf).map(|w| {
                    (
                        ChunkRef {
                            index: idx,
                            sha256: Some(repo::hex(&cid)),
                            crc32c: crc,
                        },
                        w,
                    )
                })
            })
            .await
            .map_err(stop)?;
            if wrote {
                job.stored_chunks.fetch_add(1, Ordering::Relaxed);
                job.stored_bytes.fetch_add(len, Ordering::Relaxed);
            }
            man.chunks.push(cref);
        }
        if run.step(step, rate()).await.is_err() {
            return Err(BdevError::IoFailed("drain cancelled".into()));
        }
    }
    man.done_chunks = count;
    man.created = backup::now().0;
    let (r2, m2) = (r.clone(), man.clone());
    match backup::offload(move || r2.commit(&m2)).await {
        Ok(()) | Err(BackupError::Exists(_)) => {}
        Err(err) => return Err(stop(err)),
    }
    tracing::info!(group = %g.name, volume = %e.name, backup = %id, kind = kind.name(), chunks = man.chunks.len(), records = recs.len(), "volume drained to the repository");
    Ok(VolumeBackup {
        id,
        seq: upto,
        chunk_size,
        chain,
    })
}
