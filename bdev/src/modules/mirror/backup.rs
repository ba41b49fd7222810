//! Backups of a snapshot split's image into a repository (`bdev_mirror_backup`), started
//! during or after the image's background copy.
//!
//! 1. *Reflect* (mode `secondary`): every region the image still owes the secondary is
//!    copied first (claims 1, 3, 7), then every chunk is read from the secondary. In mode
//!    `memory` nothing is written to the secondary: owed regions are read from the primary
//!    into memory, held against host writes while read, and sent with the copied ones
//!    (claims 4, 8).
//! 2. *Transfer*: chunk by chunk (default 1 MiB): zero chunks are holes; the others are
//!    hashed (SHA-256 names the stored chunk, so equal chunks are stored once) and
//!    checksummed (CRC32C in the manifest) on a helper thread while the next chunk is read.
//!    A full backup goes through every chunk; an incremental only through the chunks of
//!    regions changed since the parent's image (the change map the split took).
//! 3. A checkpoint (the manifest so far and its cursor) is written every few seconds; the
//!    mirror's superblock names the backup, so after a restart the job resumes from its
//!    checkpoint. The manifest appears under its final name last: a backup is complete in
//!    the repository or listed as incomplete, never half-listed.

use super::pit::{self, CopyFor, Pit};
use super::superblock::{BackupRecord, LastBackup};
use super::volume::Mirror;
use crate::backup::repo::{self, BackupKind, ChunkRef, Manifest, Repository};
use crate::backup::{self, BackupError};
use crate::error::BdevError;
use crate::volume::job::{JobRun, Progress};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the blocks the image still owes are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupMode {
    /// Copied into the secondary first, then everything is read from the secondary.
    Secondary,
    /// Read from the primary into memory; the secondary is not written.
    Memory,
}

impl BackupMode {
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "secondary" => Some(BackupMode::Secondary),
            "memory" => Some(BackupMode::Memory),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            BackupMode::Secondary => "secondary",
            BackupMode::Memory => "memory",
        }
    }
}

/// Parameters of `bdev_mirror_backup`.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    pub repository: String,
    pub kind: BackupKind,
    pub mode: BackupMode,
    pub chunk_kb: Option<u64>,
    /// The backup's id (default: `<mirror>-<split time>`); an id whose checkpoint is in
    /// the repository resumes that backup.
    pub id: Option<String>,
    /// The backup's own rate limit (0: none; the mirror's limit paces its copies, not this).
    pub max_bandwidth_mb_sec: u32,
    /// Make the repository if it is not there (the RPC does; a host's vendor command only
    /// uses repositories that exist).
    pub create_repository: bool,
}

/// A running backup, read by `bdev_mirror_get` from any thread.
pub struct BackupJob {
    pub id: String,
    pub repository: String,
    pub kind: BackupKind,
    pub mode: BackupMode,
    pub progress: Progress,
    pub phase: Mutex<&'static str>,
    pub reflected_regions: AtomicU64,
    pub stored_chunks: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub deduplicated_chunks: AtomicU64,
    pub zero_chunks: AtomicU64,
    pub resumed_at_chunk: AtomicU64,
}

impl BackupJob {
    pub fn info(&self) -> Value {
        let mut v = self.progress.report().json("backup");
        v["id"] = json!(self.id);
        v["repository"] = json!(self.repository);
        v["type"] = json!(self.kind.name());
        v["mode"] = json!(self.mode.name());
        v["phase"] = json!(*self.phase.lock());
        v["reflected_regions"] = json!(self.reflected_regions.load(Ordering::Relaxed));
        v["stored_chunks"] = json!(self.stored_chunks.load(Ordering::Relaxed));
        v["stored_bytes"] = json!(self.stored_bytes.load(Ordering::Relaxed));
        v["deduplicated_chunks"] = json!(self.deduplicated_chunks.load(Ordering::Relaxed));
        v["zero_chunks"] = json!(self.zero_chunks.load(Ordering::Relaxed));
        v["resumed_at_chunk"] = json!(self.resumed_at_chunk.load(Ordering::Relaxed));
        v
    }
}

/// A chunk being stored on a helper thread: its reference and whether it was new.
type StoreResult = strata_reactor::oneshot::Receiver<Result<(ChunkRef, bool), BackupError>>;

/// Longest repository path (it is kept in the superblock's split section).
pub const MAX_REPOSITORY_PATH: usize = 1024;

const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

fn invalid(s: String) -> BdevError {
    BdevError::Invalid(s)
}

/// `bdev_mirror_backup`: starts a backup of the mirror's image. Returns the backup's id.
pub async fn start(name: &str, o: BackupOptions) -> Result<Value, BdevError> {
    let m = super::find(name)?;
    let pit = m.pit().ok_or_else(|| {
        invalid(format!(
            "mirror {name} has no point-in-time image (split it with snapshot first)"
        ))
    })?;
    // The superblock's split section names the repository (so a backup resumes after a
    // restart): the path must fit there.
    if serde_json::to_string(&o.repository).map_or(usize::MAX, |j| j.len()) > MAX_REPOSITORY_PATH {
        return Err(invalid(format!(
            "repository path longer than {MAX_REPOSITORY_PATH} bytes"
        )));
    }
    let bs = m.block_size as u64;
    let chunk_kb = o.chunk_kb.unwrap_or(1024);
    if !chunk_kb.is_power_of_two() || !(4..=65536).contains(&chunk_kb) || chunk_kb * 1024 < bs {
        return Err(invalid(format!(
            "chunk_kb {chunk_kb} is not a power of two between 4 and 65536 (and at least one block)"
        )));
    }
    if let Some(id) = &o.id {
        if !repo::valid_id(id) {
            return Err(invalid(format!(
                "backup id '{id}': letters, digits, '-', '_' and '.' only, not leading '.'"
            )));
        }
    }
    let r = backup::open_repository(&o.repository, o.create_repository).await?;
    let (parent, chunk_size) = match o.kind {
        BackupKind::Full => (None, chunk_kb * 1024),
        BackupKind::Incremental => {
            let lb = m.last_backup.lock().clone().ok_or_else(|| {
                invalid(format!(
                    "mirror {name} has no complete backup to be incremental to: take a full backup first"
                ))
            })?;
            let (r2, id) = (r.clone(), lb.id.clone());
            let pm = backup::offload(move || r2.manifest(&id)).await.map_err(|e| {
                invalid(format!(
                    "the last backup of mirror {name}, {} (in {}), is not usable in {}: {e}; take a full backup",
                    lb.id, lb.repository, o.repository
                ))
            })?;
            if pm.volume_uuid != m.uuid.to_string() || pm.image_time != lb.image_time {
                return Err(invalid(format!(
                    "backup {} in {} is not the last backup of mirror {name} (another volume or image): take a full backup",
                    lb.id, o.repository
                )));
            }
            (Some(pm), lb.chunk_size)
        }
    };
    let base = o.id.clone().unwrap_or_else(|| {
        let t = std::time::UNIX_EPOCH + Duration::new(pit.split_time, pit.split_time_ns);
        let stamp = humantime::format_rfc3339_millis(t)
            .to_string()
            .replace(':', "");
        format!("{name}-{stamp}-{}", o.kind.name())
    });
    let base: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // A default id that is taken (a second backup of one image) gets a suffix; a chosen
    // one is refused.
    let (r2, b2, pick) = (r.clone(), base.clone(), o.id.is_none());
    let id = backup::offload(move || {
        for k in 1..1000 {
            let id = if k == 1 {
                b2.clone()
            } else {
                format!("{b2}-{k}")
            };
            match r2.manifest(&id) {
                Err(BackupError::NotFound(_)) => return Ok(id),
                Ok(_) if pick => continue,
                Ok(_) => return Err(BackupError::Exists(id)),
                Err(e) => return Err(e),
            }
        }
        Err(BackupError::Exists(b2))
    })
    .await?;
    let rec = BackupRecord {
        repository: o.repository.clone(),
        id: id.clone(),
        kind: o.kind.name().into(),
        mode: o.mode.name().into(),
        chunk_size,
        parent: parent.as_ref().map(|p| p.id.clone()),
        max_bandwidth_mb_sec: o.max_bandwidth_mb_sec,
    };
    let job = pit
        .backup
        .reserve(|| new_job(&rec, o.kind, o.mode))
        .ok_or_else(|| BdevError::Claimed {
            name: pit.image_name.clone(),
            by: "a running backup".into(),
        })?;
    *pit.backup_rec.lock() = Some(rec);
    // The superblock names the backup before it starts: a restart resumes it.
    m.intent.bump_unordered();
    super::jobs::persist_all(&m).await;
    launch(m, pit, job, r);
    Ok(json!({ "id": id }))
}

fn new_job(rec: &BackupRecord, kind: BackupKind, mode: BackupMode) -> BackupJob {
    BackupJob {
        id: rec.id.clone(),
        repository: rec.repository.clone(),
        kind,
        mode,
        progress: Progress::new("backup", Some(rec.id.clone()), 0),
        phase: Mutex::new("starting"),
        reflected_regions: AtomicU64::new(0),
        stored_chunks: AtomicU64::new(0),
        stored_bytes: AtomicU64::new(0),
        deduplicated_chunks: AtomicU64::new(0),
        zero_chunks: AtomicU64::new(0),
        resumed_at_chunk: AtomicU64::new(0),
    }
}

/// Resumes the backup the superblock names (after a restart).
pub fn resume_after_restart(m: &Arc<Mirror>, pit: &Arc<Pit>) {
    let Some(rec) = pit.backup_rec.lock().clone() else {
        return;
    };
    let (Some(kind), Some(mode)) = (
        BackupKind::from_name(&rec.kind),
        BackupMode::from_name(&rec.mode),
    ) else {
        tracing::error!(mirror = %m.name, backup = %rec.id, "backup record unusable: not resumed");
        return;
    };
    let Some(job) = pit.backup.reserve(|| new_job(&rec, kind, mode)) else {
        return;
    };
    let (m, pit) = (m.clone(), pit.clone());
    crate::volume::examine::on_a_reactor(move || async move {
        match backup::open_repository(&rec.repository, false).await {
            Ok(r) => {
                tracing::info!(mirror = %m.name, backup = %rec.id, "backup resumes after the restart");
                launch(m, pit, job, r)
            }
            Err(e) => {
                tracing::error!(mirror = %m.name, backup = %rec.id, error = %e, "backup cannot resume: repository unavailable");
                finish(&m, &pit, &job, Err(Stop::Failed(e.to_string()))).await;
            }
        }
    });
}

fn launch(m: Arc<Mirror>, pit: Arc<Pit>, job: Arc<BackupJob>, r: Arc<Repository>) {
    crate::volume::examine::on_a_reactor(move || async move {
        tracing::info!(mirror = %m.name, backup = %job.id, kind = job.kind.name(), mode = job.mode.name(), repository = %job.repository, "backup started");
        let res = run(&m, &pit, &job, &r).await;
        finish(&m, &pit, &job, res).await;
    });
}

#[derive(Debug)]
enum Stop {
    /// The image was dropped or the mirror is going away: the checkpoint stays.
    Aborted,
    Failed(String),
}

impl From<BackupError> for Stop {
    fn from(e: BackupError) -> Stop {
        Stop::Failed(e.to_string())
    }
}

async fn finish(
    m: &Arc<Mirror>,
    pit: &Arc<Pit>,
    job: &Arc<BackupJob>,
    res: Result<Manifest, Stop>,
) {
    let mut info = job.info();
    match &res {
        Ok(man) => {
            pit.backed_up.store(true, Ordering::Release);
            *m.last_backup.lock() = Some(LastBackup {
                repository: job.repository.clone(),
                id: man.id.clone(),
                image_time: pit.split_time,
                image_time_ns: pit.split_time_ns,
                chunk_size: man.chunk_size,
            });
            *pit.backup_rec.lock() = None;
            info["result"] = json!("done");
            tracing::info!(mirror = %m.name, backup = %man.id, secs = job.progress.started.elapsed().as_secs_f64(),
                stored_chunks = job.stored_chunks.load(Ordering::Relaxed), stored_bytes = job.stored_bytes.load(Ordering::Relaxed), "backup complete");
        }
        Err(Stop::Aborted) => {
            info["result"] = json!("aborted");
            tracing::warn!(mirror = %m.name, backup = %job.id, "backup stopped; its checkpoint stays in the repository");
        }
        Err(Stop::Failed(why)) => {
            // Not resumed by itself (it would fail again); the same id resumes it.
            *pit.backup_rec.lock() = None;
            info["result"] = json!("failed");
            info["error"] = json!(why);
            tracing::error!(mirror = %m.name, backup = %job.id, error = %why, "backup failed; nothing in the repository was changed but its checkpoint");
        }
    }
    if !matches!(res, Err(Stop::Aborted)) || !m.stopping.load(Ordering::Acquire) {
        m.intent.bump_unordered();
        super::jobs::persist_all(m).await;
    }
    *pit.last_backup_job.lock() = Some(info);
    pit.backup.release();
}

fn check(m: &Mirror, pit: &Pit, job: &BackupJob) -> Result<(), Stop> {
    if pit.dropped.load(Ordering::Acquire) || m.stopping.load(Ordering::Acquire) {
        return Err(Stop::Aborted);
    }
    if job.progress.is_cancelled() {
        return Err(Stop::Failed("cancelled".into()));
    }
    Ok(())
}

/// Chunks to go through: all (full), or those over regions changed since the parent's image.
fn chunks_to_send(
    m: &Mirror,
    pit: &Pit,
    kind: BackupKind,
    chunk_size: u64,
    count: u64,
) -> Vec<u64> {
    if kind == BackupKind::Full {
        return (0..count).collect();
    }
    let same_image =
        m.last_backup.lock().as_ref().is_some_and(|lb| {
            (lb.image_time, lb.image_time_ns) == (pit.split_time, pit.split_time_ns)
        });
    if same_image {
        return Vec::new();
    }
    let bs = m.block_size as u64;
    let rb = m.region_blocks;
    let changed = |r: u64| {
        pit.delta
            .get((r / 64) as usize)
            .is_some_and(|w| w & (1 << (r % 64)) != 0)
    };
    (0..count)
        .filter(|&c| {
            let a = c * chunk_size / bs;
            let b = ((c + 1) * chunk_size / bs).min(m.num_blocks);
            (a / rb..=(b - 1) / rb).any(changed)
        })
        .collect()
}

async fn run(
    m: &Arc<Mirror>,
    pit: &Arc<Pit>,
    job: &Arc<BackupJob>,
    r: &Arc<Repository>,
) -> Result<Manifest, Stop> {
    let rec = pit
        .backup_rec
        .lock()
        .clone()
        .ok_or_else(|| Stop::Failed("no backup record".into()))?;
    let ch = super::channel::MirrorChannel::new(m.clone());
    let (ps, ss) = {
        let c = m.ctl.lock();
        (c.primary, c.secondary())
    };
    let (Some(p), Some(s)) = (ch.leg(ps), ch.leg(ss)) else {
        return Err(Stop::Failed("a leg of the mirror is gone".into()));
    };
    let bs = m.block_size as u64;
    let chunk_size = rec.chunk_size;
    let region_bytes = m.region_blocks * bs;

    // 1. Reflect the differential data still owed to the secondary (mode secondary).
    if job.mode == BackupMode::Secondary {
        *job.phase.lock() = "reflect";
        let owed = pit.owed_regions();
        job.progress.set_total(owed.len() as u64 * region_bytes);
        let mut run = JobRun::new(&job.progress);
        for reg in owed {
            check(m, pit, job)?;
            let copied = pit::ensure_copied(m, pit, &p, &s, reg, CopyFor::Background)
                .await
                .map_err(|st| Stop::Failed(format!("reflecting region {reg} failed: {st:?}")))?;
            if copied {
                job.reflected_regions.fetch_add(1, Ordering::Relaxed);
            }
            run.step(region_bytes, rec.max_bandwidth_mb_sec as u64)
                .await
                .map_err(|_| Stop::Failed("cancelled".into()))?;
        }
    }

    // 2. Transfer, from the checkpoint if there is one.
    *job.phase.lock() = "transfer";
    let mut man = Manifest {
        format: repo::MANIFEST_FORMAT.into(),
        version: repo::VERSION,
        id: rec.id.clone(),
        volume_name: m.name.clone(),
        volume_uuid: m.uuid.to_string(),
        block_size: m.block_size,
        num_blocks: m.num_blocks,
        chunk_size,
        kind: job.kind,
        parent: rec.parent.clone(),
        image_time: pit.split_time,
        created: 0,
        done_chunks: 0,
        chunks: Vec::new(),
        manifest_crc32c: 0,
    };
    let (r2, id2) = (r.clone(), rec.id.clone());
    if let Some(ck) = backup::offload(move || r2.checkpoint(&id2)).await? {
        let same = (
            ck.volume_uuid.as_str(),
            ck.image_time,
            ck.chunk_size,
            ck.kind,
            ck.num_blocks,
        ) == (
            man.volume_uuid.as_str(),
            man.image_time,
            man.chunk_size,
            man.kind,
            man.num_blocks,
        );
        if same {
            man.done_chunks = ck.done_chunks;
            man.chunks = ck.chunks;
            job.resumed_at_chunk
                .store(ck.done_chunks, Ordering::Relaxed);
            tracing::info!(backup = %rec.id, chunk = ck.done_chunks, "backup resumes from its checkpoint");
        } else {
            return Err(Stop::Failed(format!(
                "the repository holds a checkpoint of another backup under id {}",
                rec.id
            )));
        }
    }
    let count = man.chunk_count();
    let todo = chunks_to_send(m, pit, job.kind, chunk_size, count);
    let total: u64 = todo.iter().map(|&c| man.chunk_len(c)).sum();
    job.progress.set_total(total);
    job.progress.set_done(
        todo.iter()
            .filter(|&&c| c < man.done_chunks)
            .map(|&c| man.chunk_len(c))
            .sum(),
    );
    let mut run = JobRun::new(&job.progress);
    let mut last_ckpt = Instant::now();
    // Hashing and storing chunk i runs on a helper thread while chunk i+1 is read.
    let mut pending: Option<(u64, StoreResult)> = None;
    let store = |idx: u64, data: Vec<u8>| {
        let r = r.clone();
        let (tx, rx) = strata_reactor::oneshot::channel();
        let spawned = strata_reactor::run_on_helper(move || {
            let id = repo::chunk_id(&data);
            let crc = crate::kernels::crc32c(&data);
            tx.send(r.put_chunk(&id, &data).map(|wrote| {
                (
                    ChunkRef {
                        index: idx,
                        sha256: Some(repo::hex(&id)),
                        crc32c: crc,
                    },
                    wrote,
                )
            }))
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "no helper thread for a backup chunk");
        }
        rx
    };
    let start = man.done_chunks;
    for &idx in todo.iter().filter(|&&c| c >= start) {
        check(m, pit, job)?;
        let a = idx * chunk_size / bs;
        let b = a + man.chunk_len(idx) / bs;
        let data = match job.mode {
            BackupMode::Memory => pit::read_image_to_memory(m, pit, &p, &s, a, b).await,
            BackupMode::Secondary => {
                let (f, l) = m.regions(a, b - a);
                let mut res = Ok(());
                for reg in f..=l {
                    if let Err(st) =
                        pit::ensure_copied(m, pit, &p, &s, reg, CopyFor::Background).await
                    {
                        res = Err(st);
                        break;
                    }
                }
                match res {
                    Ok(()) => crate::wait::read_vec(&s, m.data_offset + a, b - a).await,
                    Err(st) => Err(st),
                }
            }
        }
        .map_err(|st| Stop::Failed(format!("reading chunk {idx} of the image failed: {st:?}")))?;
        if let Some((pidx, rx)) = pending.take() {
            settle(job, &mut man, pidx, rx).await?;
        }
        if data.iter().all(|&x| x == 0) {
            job.zero_chunks.fetch_add(1, Ordering::Relaxed);
            if job.kind == BackupKind::Incremental {
                man.chunks.push(ChunkRef {
                    index: idx,
                    sha256: None,
                    crc32c: 0,
                });
            }
            man.done_chunks = idx + 1;
        } else {
            pending = Some((idx, store(idx, data)));
        }
        run.step(man.chunk_len(idx), rec.max_bandwidth_mb_sec as u64)
            .await
            .map_err(|_| Stop::Failed("cancelled".into()))?;
        if last_ckpt.elapsed() >= CHECKPOINT_EVERY {
            if let Some((pidx, rx)) = pending.take() {
                settle(job, &mut man, pidx, rx).await?;
            }
            let (r2, ck) = (r.clone(), man.clone());
            backup::offload(move || r2.write_checkpoint(&ck)).await?;
            last_ckpt = Instant::now();
        }
    }
    if let Some((pidx, rx)) = pending.take() {
        settle(job, &mut man, pidx, rx).await?;
    }
    check(m, pit, job)?;
    man.done_chunks = count;
    man.chunks.sort_by_key(|c| c.index);
    man.created = backup::now().0;
    *job.phase.lock() = "commit";
    let (r2, fin) = (r.clone(), man.clone());
    match backup::offload(move || r2.commit(&fin)).await {
        Ok(()) => Ok(man),
        // A restart between the commit and the superblock's record of it: the manifest
        // there is this backup's if it names the same image and chunks.
        Err(BackupError::Exists(_)) => {
            let (r2, id) = (r.clone(), man.id.clone());
            let there = backup::offload(move || r2.manifest(&id)).await?;
            if (there.volume_uuid.as_str(), there.image_time, &there.chunks)
                == (man.volume_uuid.as_str(), man.image_time, &man.chunks)
            {
                Ok(there)
            } else {
                Err(Stop::Failed(format!(
                    "backup {} already exists in the repository",
                    man.id
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Waits for chunk `idx`'s store and records it in the manifest.
async fn settle(
    job: &BackupJob,
    man: &mut Manifest,
    idx: u64,
    rx: StoreResult,
) -> Result<(), Stop> {
    let (c, wrote) = rx
        .await
        .map_err(|_| Stop::Failed("chunk store thread died".into()))??;
    if wrote {
        job.stored_chunks.fetch_add(1, Ordering::Relaxed);
        job.stored_bytes
            .fetch_add(man.chunk_len(idx), Ordering::Relaxed);
    } else {
        job.deduplicated_chunks.fetch_add(1, Ordering::Relaxed);
    }
    man.chunks.push(c);
    man.done_chunks = man.done_chunks.max(idx + 1);
    Ok(())
}
