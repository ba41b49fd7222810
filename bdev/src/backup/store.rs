//! Where a repository keeps its named objects — chunks, manifests, checkpoints — and the
//! directory store. The bdev store ([`super::bdev_store`]) keeps the same objects in a log
//! on a block device. [`super::repo::Repository`] holds the format's rules; a store only
//! puts, gets, lists and syncs.

use super::BackupError;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The kinds of object a repository holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A chunk's bytes, named by their SHA-256 (hex).
    Chunk,
    /// A complete backup's manifest, named by the backup's id.
    Manifest,
    /// The checkpoint of a backup being written, named by its id.
    Checkpoint,
    /// A protected volume group's catalog (its volumes' layout and attributes), named by
    /// the group: what recreates the layout from the repository alone.
    Catalog,
}

pub trait Store: Send + Sync {
    /// The object's bytes, or None if there is none of that name.
    fn get(&self, kind: Kind, name: &str) -> Result<Option<Vec<u8>>, BackupError>;
    /// Stores an object whole (replacing one of that name). Chunks are durable after
    /// [`Store::sync`]; manifests and checkpoints when this returns.
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), BackupError>;
    fn remove(&self, kind: Kind, name: &str) -> Result<(), BackupError>;
    /// Names of the objects of a kind (manifests and checkpoints only).
    fn names(&self, kind: Kind) -> Result<Vec<String>, BackupError>;
    /// Makes every object stored so far durable.
    fn sync(&self) -> Result<(), BackupError>;
    /// Where an object lives, for messages.
    fn describe(&self, kind: Kind, name: &str) -> String;
}

pub(super) fn io_err(path: &Path, e: std::io::Error) -> BackupError {
    BackupError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to a temporary file (synced if `sync`) and renames it to `path`.
pub(super) fn write_renamed(path: &Path, data: &[u8], sync: bool) -> Result<(), BackupError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let res = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(data).map_err(|e| io_err(&tmp, e))?;
        if sync {
            f.sync_all().map_err(|e| io_err(&tmp, e))?;
        }
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(dir, e))
}

const MARKER: &str = "strata-backup.json";

/// A repository in a directory: `chunks/<hh>/<sha256>`, `backups/<id>.json`,
/// `backups/<id>.partial.json`, and the marker `strata-backup.json`.
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// Opens the directory store at `path` (`create`: making it if the directory is missing
    /// or empty; a directory holding anything else is refused).
    pub fn open(path: &Path, create: bool) -> Result<DirStore, BackupError> {
        let marker = path.join(MARKER);
        if create && !marker.exists() {
            fs::create_dir_all(path).map_err(|e| io_err(path, e))?;
            let stray = fs::read_dir(path)
                .map_err(|e| io_err(path, e))?
                .filter_map(|e| e.ok())
                .any(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"));
            if stray {
                return Err(BackupError::NotARepository(format!(
                    "{} is not empty and holds no {MARKER}: refusing to use it as a backup repository",
                    path.display()
                )));
            }
            for d in ["chunks", "backups"] {
                fs::create_dir_all(path.join(d)).map_err(|e| io_err(path, e))?;
            }
            let m = serde_json::json!({ "format": super::repo::FORMAT, "version": super::repo::VERSION });
            write_renamed(&marker, m.to_string().as_bytes(), true)?;
            sync_dir(path)?;
        }
        let raw = fs::read(&marker).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BackupError::NotARepository(format!(
                    "{} is not a backup repository (no {MARKER})",
                    path.display()
                ))
            } else {
                io_err(&marker, e)
            }
        })?;
        super::repo::check_marker(&raw, &marker.display().to_string())?;
        Ok(DirStore {
            root: path.to_path_buf(),
        })
    }

    fn path(&self, kind: Kind, name: &str) -> PathBuf {
        match kind {
            Kind::Chunk => self
                .root
                .join("chunks")
                .join(name.get(..2).unwrap_or("00"))
                .join(name),
            Kind::Manifest => self.root.join("backups").join(format!("{name}.json")),
            Kind::Checkpoint => self
                .root
                .join("backups")
                .join(format!("{name}.partial.json")),
            Kind::Catalog => self.root.join("catalogs").join(format!("{name}.json")),
        }
    }
}

impl Store for DirStore {
    fn get(&self, kind: Kind, name: &str) -> Result<Option<Vec<u8>>, BackupError> {
        let p = self.path(kind, name);
        match fs::read(&p) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&p, e)),
        }
    }

    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), BackupError> {
        let p = self.path(kind, name);
        let dir = p.parent().unwrap_or(&self.root).to_path_buf();
        if kind == Kind::Chunk {
            fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            return write_renamed(&p, data, false);
        }
        if kind == Kind::Catalog {
            // Repositories made before catalogs existed have no such directory.
            fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        }
        write_renamed(&p, data, true)?;
        sync_dir(&dir)
    }

    fn remove(&self, kind: Kind, name: &str) -> Result<(), BackupError> {
        let p = self.path(kind, name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&p, e)),
        }
    }

    fn names(&self, kind: Kind) -> Result<Vec<String>, BackupError> {
        if kind == Kind::Catalog {
            let dir = self.root.join("catalogs");
            let Ok(rd) = fs::read_dir(&dir) else {
                return Ok(Vec::new());
            };
            return Ok(rd
                .flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    n.strip_suffix(".json").map(String::from)
                })
                .collect());
        }
        let dir = self.root.join("backups");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| io_err(&dir, e))?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            match (kind, stem.strip_suffix(".partial")) {
                (Kind::Checkpoint, Some(id)) => out.push(id.to_string()),
                (Kind::Manifest, None) => out.push(stem.to_string()),
                _ => {}
            }
        }
        Ok(out)
    }

    fn sync(&self) -> Result<(), BackupError> {
        super::sys::syncfs(&self.root).map_err(|e| io_err(&self.root, e))
    }

    fn describe(&self, kind: Kind, name: &str) -> String {
        self.path(kind, name).display().to_string()
    }
}
