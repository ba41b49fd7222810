//! The backup repository: content-addressed chunks and one manifest per backup, in a
//! directory or, as an append-only log, on a bdev ([`super::store`]). The format is
//! documented for users in `docs/backup-format.md`; the directory form in short:
//!
//! ```text
//! <repo>/strata-backup.json            {"format": "strata-backup", "version": 1}
//! <repo>/chunks/<hh>/<sha256 hex>      one chunk's bytes, named by its SHA-256 (stored once)
//! <repo>/backups/<id>.json             a complete backup's manifest
//! <repo>/backups/<id>.partial.json     the checkpoint of a backup being written
//! ```
//!
//! Every file is written to a temporary name and renamed into place, so a reader never sees
//! half a file. Chunks are not synced one by one: before a checkpoint or a manifest names
//! them, the whole file system is synced once ([`Repository::sync_chunks`], `syncfs`), so a
//! checkpoint or manifest is written only after every chunk it lists is durable, and a
//! half-written backup is never listed as complete. A chunk that is already there (the same
//! content address) is compared byte for byte before it is reused: one left damaged by a
//! crash before its sync is written again.
//! Nothing is ever overwritten or deleted by a backup, so a failing backup (a full or
//! read-only file system) loses nothing already in the repository.
//!
//! These calls block on the file system: jobs run them off the reactors
//! ([`super::offload`]).

use super::store::{DirStore, Kind, Store};
use super::BackupError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

pub const FORMAT: &str = "strata-backup";
pub const MANIFEST_FORMAT: &str = "strata-backup-manifest";
pub const VERSION: u32 = 1;
/// Chunks a volume may have (64 Mi: a 64 TiB volume at 1 MiB chunks).
const MAX_CHUNKS: u64 = 1 << 26;

/// A chunk's content address.
pub type ChunkId = [u8; 32];

pub fn chunk_id(data: &[u8]) -> ChunkId {
    Sha256::digest(data).into()
}

pub fn hex(id: &ChunkId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hex(s: &str) -> Option<ChunkId> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Full or incremental.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    Full,
    Incremental,
}

impl BackupKind {
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "full" => Some(BackupKind::Full),
            "incremental" => Some(BackupKind::Incremental),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
        }
    }
}

/// One chunk of the volume in a manifest. `sha256: None` is a chunk of zeros (stored as
/// nothing); a full backup lists only the chunks that are not zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub index: u64,
    pub sha256: Option<String>,
    /// CRC32C of the chunk's bytes (0 for a zero chunk).
    pub crc32c: u32,
}

/// A backup's manifest (also its checkpoint while it is written).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub volume_name: String,
    pub volume_uuid: String,
    pub block_size: u32,
    pub num_blocks: u64,
    /// Bytes per chunk (the last chunk of the volume may be shorter).
    pub chunk_size: u64,
    pub kind: BackupKind,
    pub parent: Option<String>,
    /// When the image was taken (the split), and when the backup was finished (unix s).
    pub image_time: u64,
    pub created: u64,
    /// Chunks gone through so far (a checkpoint's cursor; `chunk_count` when complete).
    pub done_chunks: u64,
    pub chunks: Vec<ChunkRef>,
    /// CRC32C of this manifest serialised with this field 0: a damaged manifest is found.
    pub manifest_crc32c: u32,
}

impl Manifest {
    pub fn chunk_count(&self) -> u64 {
        (self.num_blocks * self.block_size as u64).div_ceil(self.chunk_size)
    }
    /// Bytes of chunk `index` (the last may be short).
    pub fn chunk_len(&self, index: u64) -> u64 {
        let total = self.num_blocks * self.block_size as u64;
        (total - index * self.chunk_size).min(self.chunk_size)
    }
    fn sealed(&self) -> Result<Vec<u8>, BackupError> {
        let mut m = self.clone();
        m.manifest_crc32c = 0;
        let body = serde_json::to_vec(&m).map_err(|e| BackupError::Damaged(e.to_string()))?;
        m.manifest_crc32c = crate::kernels::crc32c(&body);
        serde_json::to_vec_pretty(&m).map_err(|e| BackupError::Damaged(e.to_string()))
    }
    fn parse(raw: &[u8], what: &str) -> Result<Manifest, BackupError> {
        let m: Manifest = serde_json::from_slice(raw)
            .map_err(|e| BackupError::Damaged(format!("{what}: not a manifest ({e})")))?;
        let mut z = m.clone();
        z.manifest_crc32c = 0;
        let body = serde_json::to_vec(&z).map_err(|e| BackupError::Damaged(e.to_string()))?;
        if crate::kernels::crc32c(&body) != m.manifest_crc32c {
            return Err(BackupError::Damaged(format!(
                "{what}: manifest checksum mismatch"
            )));
        }
        if m.format != MANIFEST_FORMAT || m.version != VERSION {
            return Err(BackupError::Damaged(format!(
                "{what}: format {} version {} is not {MANIFEST_FORMAT} {VERSION}",
                m.format, m.version
            )));
        }
        // Sizes from a file: bounded before anything is computed or allocated from them.
        let bytes = m.num_blocks.checked_mul(m.block_size as u64);
        if m.chunk_size == 0
            || m.block_size == 0
            || !m.chunk_size.is_multiple_of(m.block_size as u64)
            || bytes.is_none_or(|b| b == 0 || b.div_ceil(m.chunk_size) > MAX_CHUNKS)
        {
            return Err(BackupError::Damaged(format!(
                "{what}: impossible chunk size or volume size"
            )));
        }
        let n = m.chunk_count();
        if m.chunks
            .iter()
            .any(|c| c.index >= n || c.sha256.as_deref().is_some_and(|h| parse_hex(h).is_none()))
        {
            return Err(BackupError::Damaged(format!(
                "{what}: chunk list out of range"
            )));
        }
        Ok(m)
    }
}

/// A backup as `backup_list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    pub id: String,
    /// complete, incomplete (a checkpoint: being written, or interrupted) or damaged.
    pub state: &'static str,
    pub kind: Option<BackupKind>,
    pub parent: Option<String>,
    pub volume_name: Option<String>,
    pub volume_uuid: Option<String>,
    pub image_time: Option<u64>,
    pub created: Option<u64>,
    pub size_bytes: Option<u64>,
    pub chunks: Option<usize>,
    pub done_chunks: Option<u64>,
    pub error: Option<String>,
}

pub struct Repository {
    store: Box<dyn Store>,
    location: String,
}

/// Checks the marker of a directory repository.
pub(super) fn check_marker(raw: &[u8], what: &str) -> Result<(), BackupError> {
    let v: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| BackupError::Damaged(format!("{what}: {e}")))?;
    if v["format"] != FORMAT || v["version"] != VERSION {
        return Err(BackupError::Damaged(format!(
            "{what}: not a {FORMAT} version {VERSION} repository"
        )));
    }
    Ok(())
}

/// Backup ids are file names: letters, digits, `-`, `_`, `.` (not leading).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.ends_with(".partial")
}

impl Repository {
    /// Opens the repository at `location` — a directory, or `bdev:NAME` — creating it if
    /// the directory is missing or empty (the bdev's first 8 KiB zero).
    pub fn open_or_create(location: &str) -> Result<Repository, BackupError> {
        Self::open_with(location, true)
    }

    /// Opens an existing repository.
    pub fn open(location: &str) -> Result<Repository, BackupError> {
        Self::open_with(location, false)
    }

    fn open_with(location: &str, create: bool) -> Result<Repository, BackupError> {
        let store: Box<dyn Store> = match location.strip_prefix("bdev:") {
            Some(b) => Box::new(super::bdev_store::BdevStore::open(b, create)?),
            None => Box::new(DirStore::open(Path::new(location), create)?),
        };
        Ok(Repository {
            store,
            location: location.to_string(),
        })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Where chunk `h` is stored, for messages.
    pub fn chunk_location(&self, h: &str) -> String {
        self.store.describe(Kind::Chunk, h)
    }

    /// Stores a chunk unless the same bytes are there already. Returns whether it wrote
    /// one. Not durable until [`Repository::sync_chunks`].
    pub fn put_chunk(&self, id: &ChunkId, data: &[u8]) -> Result<bool, BackupError> {
        let h = hex(id);
        if self
            .store
            .get(Kind::Chunk, &h)?
            .is_some_and(|old| old == data)
        {
            return Ok(false);
        }
        self.store.put(Kind::Chunk, &h, data)?;
        Ok(true)
    }

    /// Reads a chunk back and checks it against its CRC32C.
    pub fn read_chunk(&self, c: &ChunkRef, len: u64) -> Result<Vec<u8>, BackupError> {
        let Some(h) = c.sha256.as_deref() else {
            return Ok(vec![0u8; len as usize]);
        };
        if parse_hex(h).is_none() {
            return Err(BackupError::Damaged(format!("chunk name {h}")));
        }
        let damaged = || BackupError::ChunkDamaged {
            index: c.index,
            path: self.store.describe(Kind::Chunk, h),
        };
        let data = self.store.get(Kind::Chunk, h)?.ok_or_else(damaged)?;
        if data.len() as u64 != len || crate::kernels::crc32c(&data) != c.crc32c {
            return Err(damaged());
        }
        Ok(data)
    }

    /// Makes every chunk written so far durable (a directory: one `syncfs`).
    pub fn sync_chunks(&self) -> Result<(), BackupError> {
        self.store.sync()
    }

    /// Writes a checkpoint of a backup being written (its chunks made durable first).
    pub fn write_checkpoint(&self, m: &Manifest) -> Result<(), BackupError> {
        self.sync_chunks()?;
        self.store.put(Kind::Checkpoint, &m.id, &m.sealed()?)
    }

    /// The checkpoint of backup `id`, if one is there.
    pub fn checkpoint(&self, id: &str) -> Result<Option<Manifest>, BackupError> {
        match self.store.get(Kind::Checkpoint, id)? {
            Some(raw) => {
                Manifest::parse(&raw, &self.store.describe(Kind::Checkpoint, id)).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Publishes a complete backup: chunks synced, manifest in place, checkpoint removed.
    pub fn commit(&self, m: &Manifest) -> Result<(), BackupError> {
        if self.store.get(Kind::Manifest, &m.id)?.is_some() {
            return Err(BackupError::Exists(m.id.clone()));
        }
        self.sync_chunks()?;
        self.store.put(Kind::Manifest, &m.id, &m.sealed()?)?;
        let _ = self.store.remove(Kind::Checkpoint, &m.id);
        Ok(())
    }

    /// A complete backup's manifest.
    pub fn manifest(&self, id: &str) -> Result<Manifest, BackupError> {
        if !valid_id(id) {
            return Err(BackupError::NotFound(id.to_string()));
        }
        let what = self.store.describe(Kind::Manifest, id);
        let raw = self
            .store
            .get(Kind::Manifest, id)?
            .ok_or_else(|| BackupError::NotFound(id.to_string()))?;
        let m = Manifest::parse(&raw, &what)?;
        if m.id != id {
            return Err(BackupError::Damaged(format!(
                "{what}: manifest names backup {}",
                m.id
            )));
        }
        Ok(m)
    }

    /// Backup `id` and its ancestors, the full backup first.
    pub fn chain(&self, id: &str) -> Result<Vec<Manifest>, BackupError> {
        let mut out = vec![self.manifest(id)?];
        while let Some(parent) = out.last().and_then(|m| m.parent.clone()) {
            if out.len() > 10_000 || out.iter().any(|m| m.id == parent) {
                return Err(BackupError::Damaged(format!("backup chain of {id} loops")));
            }
            let p = self.manifest(&parent).map_err(|e| match e {
                BackupError::NotFound(_) => BackupError::Damaged(format!(
                    "backup {id} needs parent {parent}, which is not in the repository"
                )),
                e => e,
            })?;
            let c = out
                .last()
                .map(|m| (m.volume_uuid.clone(), m.num_blocks, m.chunk_size));
            if c != Some((p.volume_uuid.clone(), p.num_blocks, p.chunk_size)) {
                return Err(BackupError::Damaged(format!(
                    "backup {parent} does not match its child's volume or chunk size"
                )));
            }
            out.push(p);
        }
        if out.last().is_some_and(|m| m.kind != BackupKind::Full) {
            return Err(BackupError::Damaged(format!(
                "backup chain of {id} does not start with a full backup"
            )));
        }
        out.reverse();
        Ok(out)
    }

    /// The volume's chunk map at backup `id`: full backup, then each incremental over it.
    /// Index → chunk (None for zeros).
    pub fn resolve(&self, id: &str) -> Result<(Manifest, Vec<Option<ChunkRef>>), BackupError> {
        let chain = self.chain(id)?;
        let last = chain
            .last()
            .cloned()
            .ok_or(BackupError::NotFound(id.into()))?;
        let mut map: Vec<Option<ChunkRef>> = vec![None; last.chunk_count() as usize];
        for m in &chain {
            for c in &m.chunks {
                map[c.index as usize] = c.sha256.as_ref().map(|_| c.clone());
            }
        }
        Ok((last, map))
    }

    /// Every backup in the repository, complete or not, oldest first.
    pub fn list(&self) -> Result<Vec<Listing>, BackupError> {
        let mut out = Vec::new();
        let mut names: Vec<(String, bool)> = Vec::new();
        names.extend(
            self.store
                .names(Kind::Manifest)?
                .into_iter()
                .map(|n| (n, false)),
        );
        names.extend(
            self.store
                .names(Kind::Checkpoint)?
                .into_iter()
                .map(|n| (n, true)),
        );
        for (id, partial) in names {
            if !valid_id(&id) {
                continue;
            }
            let kind = if partial {
                Kind::Checkpoint
            } else {
                Kind::Manifest
            };
            let what = self.store.describe(kind, &id);
            let parsed = self.store.get(kind, &id).and_then(|raw| {
                raw.ok_or_else(|| BackupError::NotFound(id.clone()))
                    .and_then(|raw| Manifest::parse(&raw, &what))
            });
            let id = id.as_str();
            out.push(match parsed {
                Ok(m) => Listing {
                    id: id.to_string(),
                    state: if partial { "incomplete" } else { "complete" },
                    kind: Some(m.kind),
                    parent: m.parent.clone(),
                    volume_name: Some(m.volume_name.clone()),
                    volume_uuid: Some(m.volume_uuid.clone()),
                    image_time: Some(m.image_time),
                    created: (!partial).then_some(m.created),
                    size_bytes: Some(m.num_blocks * m.block_size as u64),
                    chunks: Some(m.chunks.len()),
                    done_chunks: Some(m.done_chunks),
                    error: None,
                },
                Err(err) => Listing {
                    id: id.to_string(),
                    state: "damaged",
                    kind: None,
                    parent: None,
                    volume_name: None,
                    volume_uuid: None,
                    image_time: None,
                    created: None,
                    size_bytes: None,
                    chunks: None,
                    done_chunks: None,
                    error: Some(err.to_string()),
                },
            });
        }
        out.sort_by(|a, b| {
            (a.image_time, a.created.unwrap_or(u64::MAX), &a.id).cmp(&(
                b.image_time,
                b.created.unwrap_or(u64::MAX),
                &b.id,
            ))
        });
        Ok(out)
    }

    /// Stores a group's catalog (replacing the one before), durable when this returns.
    /// The bytes are the caller's (JSON with its own checksum).
    pub fn put_catalog(&self, group: &str, data: &[u8]) -> Result<(), BackupError> {
        if !valid_id(group) {
            return Err(BackupError::Invalid(format!("group name '{group}'")));
        }
        self.store.put(Kind::Catalog, group, data)
    }

    /// A group's catalog, if the repository holds one.
    pub fn catalog(&self, group: &str) -> Result<Option<Vec<u8>>, BackupError> {
        if !valid_id(group) {
            return Ok(None);
        }
        self.store.get(Kind::Catalog, group)
    }

    /// Names of the groups whose catalogs the repository holds.
    pub fn catalogs(&self) -> Result<Vec<String>, BackupError> {
        self.store.names(Kind::Catalog)
    }

    /// The newest complete backup of the volume `uuid`.
    pub fn latest_for(&self, uuid: &str) -> Result<Option<Manifest>, BackupError> {
        let mut best: Option<Manifest> = None;
        for l in self.list()? {
            if l.state != "complete" || l.volume_uuid.as_deref() != Some(uuid) {
                continue;
            }
            let m = self.manifest(&l.id)?;
            if best
                .as_ref()
                .is_none_or(|b| (m.image_time, m.created) >= (b.image_time, b.created))
            {
                best = Some(m);
            }
        }
        Ok(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn open(d: &tempfile::TempDir) -> Repository {
        Repository::open_or_create(d.path().to_str().unwrap()).unwrap()
    }

    fn manifest(
        id: &str,
        kind: BackupKind,
        parent: Option<&str>,
        chunks: Vec<ChunkRef>,
    ) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.into(),
            version: VERSION,
            id: id.into(),
            volume_name: "m0".into(),
            volume_uuid: "u".into(),
            block_size: 512,
            num_blocks: 16,
            chunk_size: 2048,
            kind,
            parent: parent.map(String::from),
            image_time: 1,
            created: 2,
            done_chunks: 4,
            chunks,
            manifest_crc32c: 0,
        }
    }

    fn put(r: &Repository, index: u64, fill: u8) -> ChunkRef {
        let data = vec![fill; 2048];
        let id = chunk_id(&data);
        r.put_chunk(&id, &data).unwrap();
        ChunkRef {
            index,
            sha256: Some(hex(&id)),
            crc32c: crate::kernels::crc32c(&data),
        }
    }

    #[test]
    fn chain_resolves_incrementals_over_the_full_backup() {
        let d = tempfile::tempdir().unwrap();
        let r = open(&d);
        let full = manifest(
            "a",
            BackupKind::Full,
            None,
            vec![put(&r, 0, 1), put(&r, 2, 2)],
        );
        r.commit(&full).unwrap();
        let zero = ChunkRef {
            index: 2,
            sha256: None,
            crc32c: 0,
        };
        let inc = manifest(
            "b",
            BackupKind::Incremental,
            Some("a"),
            vec![put(&r, 1, 3), zero],
        );
        r.commit(&inc).unwrap();
        let (_, map) = r.resolve("b").unwrap();
        assert_eq!(map[0].as_ref().map(|c| c.index), Some(0));
        assert!(map[1].is_some());
        assert!(map[2].is_none(), "chunk 2 became zero");
        assert!(map[3].is_none());
        assert_eq!(
            r.read_chunk(map[1].as_ref().unwrap(), 2048).unwrap(),
            vec![3u8; 2048]
        );
        // The same content is stored once.
        let n = fs::read_dir(d.path().join("chunks")).unwrap().count();
        put(&r, 3, 1);
        assert_eq!(fs::read_dir(d.path().join("chunks")).unwrap().count(), n);
        assert_eq!(r.latest_for("u").unwrap().unwrap().id, "b");
    }

    #[test]
    fn damage_is_found_and_reported() {
        let d = tempfile::tempdir().unwrap();
        let r = open(&d);
        let c = put(&r, 0, 7);
        r.commit(&manifest("a", BackupKind::Full, None, vec![c.clone()]))
            .unwrap();
        // A flipped byte in a chunk.
        let h = c.sha256.as_deref().unwrap();
        let p = d.path().join("chunks").join(&h[..2]).join(h);
        let mut raw = fs::read(&p).unwrap();
        raw[5] ^= 1;
        fs::write(&p, raw).unwrap();
        assert!(matches!(
            r.read_chunk(&c, 2048),
            Err(BackupError::ChunkDamaged { index: 0, .. })
        ));
        // A damaged manifest is listed as damaged, not as a backup.
        let mp = d.path().join("backups").join("a.json");
        let mut raw = fs::read(&mp).unwrap();
        let at = raw.iter().position(|&b| b == b'm').unwrap();
        raw[at] = b'n';
        fs::write(&mp, raw).unwrap();
        assert!(matches!(r.manifest("a"), Err(BackupError::Damaged(_))));
        assert_eq!(r.list().unwrap()[0].state, "damaged");
        // An incremental whose parent is missing does not resolve.
        r.commit(&manifest("b", BackupKind::Incremental, Some("zz"), vec![]))
            .unwrap();
        assert!(matches!(r.chain("b"), Err(BackupError::Damaged(_))));
    }

    #[test]
    fn a_manifest_with_impossible_sizes_is_damaged_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let r = open(&d);
        for (blocks, bs) in [(u64::MAX, 512u32), (1u64 << 40, 4096)] {
            let mut m = manifest("huge", BackupKind::Full, None, vec![]);
            m.num_blocks = blocks;
            m.block_size = bs;
            fs::write(
                d.path().join("backups").join("huge.json"),
                m.sealed().unwrap(),
            )
            .unwrap();
            assert!(matches!(r.manifest("huge"), Err(BackupError::Damaged(_))));
        }
    }

    #[test]
    fn a_directory_with_other_files_is_refused() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("x"), b"1").unwrap();
        assert!(matches!(
            Repository::open_or_create(d.path().to_str().unwrap()),
            Err(BackupError::NotARepository(_))
        ));
    }
}
