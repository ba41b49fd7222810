//! Backups: the repository format ([`repo`]) over a directory or a bdev ([`store`],
//! [`bdev_store`]), and the jobs that work on a repository alone —
//! verify (re-read every chunk and check its CRC32C) and restore (a backup chain, full plus
//! incrementals merged, onto any bdev of the right size). The jobs that *write* backups
//! belong to the volume types that take them (a mirror's split image:
//! [`crate::modules::mirror::backup`]); they store through [`repo::Repository`].
//!
//! File-system calls block, so jobs run them on a helper thread ([`offload`]) and await the
//! result on their reactor.

pub mod bdev_store;
pub mod repo;
pub mod store;
mod sys;

use crate::registry;
use crate::volume::job::Progress;
use crate::wait;
use crate::{BdevError, IoType};
use parking_lot::Mutex;
use repo::Repository;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    NotARepository(String),
    #[error("no backup '{0}' in the repository")]
    NotFound(String),
    #[error("backup '{0}' already exists in the repository")]
    Exists(String),
    #[error("damaged repository: {0}")]
    Damaged(String),
    #[error("chunk {index} is damaged (CRC32C mismatch or wrong length): {path}")]
    ChunkDamaged { index: u64, path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("the helper thread of a backup job died")]
    Offload,
}

impl From<BackupError> for BdevError {
    fn from(e: BackupError) -> BdevError {
        match e {
            BackupError::Io { path, source } => BdevError::Io { path, source },
            BackupError::NotFound(id) => BdevError::NotFound(format!("backup {id}")),
            BackupError::Exists(id) => BdevError::Exists(format!("backup {id}")),
            e => BdevError::Invalid(e.to_string()),
        }
    }
}

/// Runs blocking file-system work on a helper thread; the calling task awaits it.
pub async fn offload<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> Result<T, BackupError> {
    let (tx, rx) = strata_reactor::oneshot::channel();
    strata_reactor::run_on_helper(move || tx.send(f())).map_err(|_| BackupError::Offload)?;
    rx.await.map_err(|_| BackupError::Offload)?
}

/// Opens (`create`: or creates) the repository at `path` off the reactor.
pub async fn open_repository(path: &str, create: bool) -> Result<Arc<Repository>, BackupError> {
    if path.is_empty() {
        return Err(BackupError::Invalid("repository path is empty".into()));
    }
    let p = path.to_string();
    offload(move || {
        if create {
            Repository::open_or_create(&p)
        } else {
            Repository::open(&p)
        }
    })
    .await
    .map(Arc::new)
}

/// Seconds since the epoch, and the nanoseconds within.
pub fn now() -> (u64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

/// A job on a repository (verify, restore), as `backup_job_get` reports it.
pub struct RepoJob {
    pub id: u64,
    pub kind: &'static str,
    pub repository: String,
    pub backup: String,
    pub target: Option<String>,
    pub progress: Progress,
    pub result: Mutex<Option<Value>>,
    pub chunks_done: AtomicU64,
}

impl RepoJob {
    pub fn info(&self) -> Value {
        let mut v = self.progress.report().json(self.kind);
        v["id"] = json!(self.id);
        v["repository"] = json!(self.repository);
        v["backup"] = json!(self.backup);
        v["bdev"] = json!(self.target);
        v["chunks_done"] = json!(self.chunks_done.load(Ordering::Relaxed));
        match self.result.lock().clone() {
            Some(r) => {
                v["state"] = r["state"].clone();
                v["result"] = r;
            }
            None => v["state"] = json!("running"),
        }
        v
    }
}

static JOBS: Mutex<Vec<Arc<RepoJob>>> = Mutex::new(Vec::new());
static NEXT_JOB: AtomicU64 = AtomicU64::new(1);
/// Finished jobs kept for `backup_job_get`.
const KEEP_FINISHED: usize = 64;

fn new_job(
    kind: &'static str,
    repository: &str,
    backup: &str,
    target: Option<&str>,
) -> Arc<RepoJob> {
    let j = Arc::new(RepoJob {
        id: NEXT_JOB.fetch_add(1, Ordering::Relaxed),
        kind,
        repository: repository.into(),
        backup: backup.into(),
        target: target.map(String::from),
        progress: Progress::new(kind, target.map(String::from), 0),
        result: Mutex::new(None),
        chunks_done: AtomicU64::new(0),
    });
    let mut jobs = JOBS.lock();
    jobs.push(j.clone());
    let finished = jobs.iter().filter(|j| j.result.lock().is_some()).count();
    if finished > KEEP_FINISHED {
        if let Some(pos) = jobs.iter().position(|j| j.result.lock().is_some()) {
            jobs.remove(pos);
        }
    }
    j
}

/// `backup_job_get`: one job or all.
pub fn jobs(id: Option<u64>) -> Result<Vec<Value>, BdevError> {
    let jobs = JOBS.lock();
    match id {
        Some(id) => jobs
            .iter()
            .find(|j| j.id == id)
            .map(|j| vec![j.info()])
            .ok_or_else(|| BdevError::NotFound(format!("backup job {id}"))),
        None => Ok(jobs.iter().map(|j| j.info()).collect()),
    }
}

/// `backup_repository_create`: makes a repository (a missing or empty directory, or a bdev
/// whose first 8 KiB are zero); an existing repository is left as it is.
pub async fn create_repository(repository: &str) -> Result<(), BdevError> {
    open_repository(repository, true).await?;
    tracing::info!(repository, "backup repository ready");
    Ok(())
}

/// `backup_list`.
pub async fn list(repository: &str) -> Result<Value, BdevError> {
    let r = open_repository(repository, false).await?;
    let l = offload(move || r.list()).await?;
    Ok(serde_json::to_value(l).unwrap_or(Value::Null))
}

/// `backup_verify`: starts a job that re-reads every chunk of backup `id` (or of every
/// complete backup) and checks its CRC32C. Returns the job id.
pub async fn verify(repository: &str, id: Option<&str>) -> Result<u64, BdevError> {
    let r = open_repository(repository, false).await?;
    let ids: Vec<String> = match id {
        Some(id) => {
            let (r2, id2) = (r.clone(), id.to_string());
            offload(move || r2.manifest(&id2)).await?;
            vec![id.to_string()]
        }
        None => {
            let r2 = r.clone();
            offload(move || r2.list())
                .await?
                .into_iter()
                .filter(|l| l.state != "incomplete")
                .map(|l| l.id)
                .collect()
        }
    };
    let job = new_job("verify", repository, id.unwrap_or("*"), None);
    let j = job.clone();
    strata_reactor::run_on_helper(move || {
        let out = verify_blocking(&r, &ids, &j);
        tracing::info!(repository = %j.repository, result = %out, "backup verify finished");
        *j.result.lock() = Some(out);
    })
    .map_err(BdevError::from)?;
    Ok(job.id)
}

fn verify_blocking(r: &Repository, ids: &[String], job: &RepoJob) -> Value {
    let mut damaged = Vec::new();
    let mut checked = 0u64;
    let mut total = 0u64;
    let mut manifests = Vec::new();
    for id in ids {
        match r.manifest(id) {
            Ok(m) => {
                total += m
                    .chunks
                    .iter()
                    .filter(|c| c.sha256.is_some())
                    .map(|c| m.chunk_len(c.index))
                    .sum::<u64>();
                manifests.push(m);
            }
            Err(e) => damaged.push(json!({ "backup": id, "error": e.to_string() })),
        }
    }
    job.progress.set_total(total);
    for m in &manifests {
        if let Err(e) = r.chain(&m.id) {
            damaged.push(json!({ "backup": m.id, "error": e.to_string() }));
        }
        for c in m.chunks.iter().filter(|c| c.sha256.is_some()) {
            let len = m.chunk_len(c.index);
            if let Err(e) = r.read_chunk(c, len) {
                tracing::error!(backup = %m.id, chunk = c.index, error = %e, "backup verify: damaged chunk");
                damaged.push(json!({ "backup": m.id, "chunk": c.index, "error": e.to_string() }));
            }
            checked += 1;
            job.chunks_done.store(checked, Ordering::Relaxed);
            job.progress.add_done(len);
        }
    }
    json!({
        "state": if damaged.is_empty() { "ok" } else { "damaged" },
        "backups": ids,
        "chunks_checked": checked,
        "damaged": damaged,
    })
}

/// `backup_restore`: writes backup `id` (its chain merged) onto bdev `target`, which must
/// have the backup's block size and at least its size and be unclaimed. Returns the job id.
/// Idempotent: an interrupted restore is finished by running it again.
pub async fn restore(repository: &str, id: &str, target: &str) -> Result<u64, BdevError> {
    let r = open_repository(repository, false).await?;
    let (r2, id2) = (r.clone(), id.to_string());
    let (m, map) = offload(move || r2.resolve(&id2)).await?;
    if repository.strip_prefix("bdev:") == Some(target) {
        return Err(BdevError::Invalid(format!(
            "{target} holds the repository: restore onto another bdev"
        )));
    }
    let h = registry::get(target).ok_or_else(|| BdevError::NotFound(target.into()))?;
    if let Some(by) = &h.claimed_by {
        return Err(BdevError::Claimed {
            name: target.into(),
            by: by.clone(),
        });
    }
    let (hbs, hnb) = (h.bdev.block_size(), h.bdev.num_blocks());
    if hbs != m.block_size || hnb < m.num_blocks {
        return Err(BdevError::Invalid(format!(
            "{target} does not fit backup {id}: needs {} blocks of {} bytes, has {} of {}",
            m.num_blocks, m.block_size, hnb, hbs
        )));
    }
    let desc = registry::open(target, |_| {})?;
    let ch = desc.channel()?;
    let job = new_job("restore", repository, id, Some(target));
    job.progress.set_total(m.num_blocks * m.block_size as u64);
    let j = job.clone();
    strata_reactor::spawn_local(async move {
        let out = restore_run(&r, &m, &map, &ch, &j).await;
        drop(ch);
        drop(desc);
        let v = match out {
            Ok(()) => json!({ "state": "done" }),
            Err(e) => {
                tracing::error!(backup = %j.backup, bdev = ?j.target, error = %e, "restore failed");
                json!({ "state": "failed", "error": e.to_string() })
            }
        };
        tracing::info!(backup = %j.backup, bdev = ?j.target, secs = j.progress.started.elapsed().as_secs_f64(), result = %v, "restore finished");
        *j.result.lock() = Some(v);
    })
    .detach();
    Ok(job.id)
}

async fn restore_run(
    r: &Arc<Repository>,
    m: &repo::Manifest,
    map: &[Option<repo::ChunkRef>],
    ch: &crate::IoChannel,
    job: &RepoJob,
) -> Result<(), BdevError> {
    let bs = m.block_size as u64;
    let zeroes = ch.bdev().supports(IoType::WriteZeroes);
    // Two stages: the next chunk is read from the repository while this one is written.
    let fetch = |i: usize| {
        let r = r.clone();
        let c = map[i].clone();
        let len = m.chunk_len(i as u64);
        offload(move || match c {
            Some(c) => r.read_chunk(&c, len).map(Some),
            None => Ok(None),
        })
    };
    let mut next = (!map.is_empty()).then(|| fetch(0));
    for i in 0..map.len() {
        let data = match next.take() {
            Some(f) => f.await?,
            None => None,
        };
        if i + 1 < map.len() {
            next = Some(fetch(i + 1));
        }
        let lba = i as u64 * m.chunk_size / bs;
        let n = m.chunk_len(i as u64) / bs;
        let res = match data {
            Some(d) => wait::write_slice(ch, lba, &d).await,
            None if zeroes => wait::no_data(ch, IoType::WriteZeroes, lba, n).await,
            None => wait::write_slice(ch, lba, &vec![0u8; (n * bs) as usize]).await,
        };
        res.map_err(|st| BdevError::IoFailed(format!("writing chunk {i} to the bdev: {st:?}")))?;
        job.chunks_done.fetch_add(1, Ordering::Relaxed);
        job.progress.add_done(n * bs);
    }
    // Done means durable.
    if ch.bdev().supports(IoType::Flush) {
        wait::no_data(ch, IoType::Flush, 0, 0)
            .await
            .map_err(|st| BdevError::IoFailed(format!("flushing the restored bdev: {st:?}")))?;
    }
    Ok(())
}
