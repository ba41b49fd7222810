//! A repository on a block device (`"repository": "bdev:NAME"`): the same objects as the
//! directory store, kept as an append-only log.
//!
//! ```text
//! bytes 0..8192    two header slots of 4096 bytes: "STRATBKP", version u32, CRC32C u32 (of
//!                  the 4096 bytes with this field 0), durable end of the log u64 (byte
//!                  offset), generation u64; the valid slot of the higher generation counts
//!                  (they are written in turn, so a torn header write loses nothing)
//! from 8192        records, each a 4096-byte record header — "STRATREC", kind u8
//!                  (1 chunk, 2 manifest, 3 checkpoint, 4 checkpoint removed), name length
//!                  u16 at 10, data length u64 at 16, data CRC32C u32 at 24, header CRC32C
//!                  u32 at 28, the name from 64 — then the data, padded to 4096 bytes
//! ```
//!
//! Opening scans the log up to the durable end into an in-memory index; a later record of
//! the same name wins. The bdev is claimed ("backup repository") while the target runs, so
//! no volume or namespace takes it. Appends go past the durable end and become part of the repository
//! when the header is rewritten ([`Store::sync`], after a flush): a crash loses at most what
//! was appended since the last sync, which no checkpoint or manifest names yet. The device
//! is used through the bdev layer from the helper thread that runs the repository call
//! (each I/O is handed to reactor 0 and awaited there).

use super::store::{Kind, Store};
use super::BackupError;
use crate::volume::ondisk::{get_u32, get_u64, put_u32, put_u64};
use crate::{registry, wait, IoType};
use parking_lot::Mutex;
use std::collections::HashMap;

const UNIT: u64 = 4096;
const MAGIC: &[u8; 8] = b"STRATBKP";
const REC_MAGIC: &[u8; 8] = b"STRATREC";
const VERSION: u32 = 1;
const NAME_AT: usize = 64;

fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::Chunk => 1,
        Kind::Manifest => 2,
        Kind::Checkpoint => 3,
        Kind::Catalog => 5,
    }
}

fn kind_of(c: u8) -> Option<Kind> {
    match c {
        1 => Some(Kind::Chunk),
        2 => Some(Kind::Manifest),
        3 | 4 => Some(Kind::Checkpoint),
        5 => Some(Kind::Catalog),
        _ => None,
    }
}

fn pad(n: u64) -> u64 {
    n.div_ceil(UNIT) * UNIT
}

/// A record's end (`pos` + header + padded data), None when a damaged length overflows.
fn record_end(pos: u64, len: u64) -> Option<u64> {
    len.checked_add(UNIT - 1)
        .map(|l| l / UNIT * UNIT)
        .and_then(|d| pos.checked_add(UNIT)?.checked_add(d))
}

/// Seals a 4096-byte header: its CRC32C (with the CRC field zero) at `crc_at`.
fn seal(b: &mut [u8], crc_at: usize) {
    put_u32(b, crc_at, 0);
    let c = crate::kernels::crc32c(b);
    put_u32(b, crc_at, c);
}

fn sealed_ok(b: &[u8], crc_at: usize) -> bool {
    let mut x = b.to_vec();
    put_u32(&mut x, crc_at, 0);
    crate::kernels::crc32c(&x) == get_u32(b, crc_at)
}

struct Log {
    /// Durable end (in the header) and append position.
    end: u64,
    tail: u64,
    /// Generation of the newest header slot written.
    generation: u64,
    /// (kind, name) → (data offset, data length).
    index: HashMap<(Kind, String), (u64, u64)>,
}

pub struct BdevStore {
    bdev: String,
    uuid: uuid::Uuid,
    size: u64,
    log: Mutex<Log>,
    /// Holds the claim.
    _desc: registry::BdevDesc,
}

/// The log starts after the two header slots.
const LOG_AT: u64 = 2 * UNIT;

/// One store per bdev in the process: every backup, restore and listing of a bdev
/// repository shares its log (its append position and index).
static OPEN: Mutex<Vec<std::sync::Arc<BdevStore>>> = Mutex::new(Vec::new());

fn err(bdev: &str, what: String) -> BackupError {
    BackupError::Io {
        path: format!("bdev:{bdev}"),
        source: std::io::Error::other(what),
    }
}

/// Runs one I/O on reactor 0 and waits for it (from a helper thread, never a reactor).
fn on_reactor<R: Send + 'static, F>(bdev: &str, f: F) -> Result<R, BackupError>
where
    F: FnOnce(
            crate::IoChannel,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<R, crate::IoStatus>>>>
        + Send
        + 'static,
{
    if strata_reactor::current_index().is_some() {
        return Err(err(bdev, "a bdev repository is used from a reactor".into()));
    }
    let fw =
        strata_reactor::framework().ok_or_else(|| err(bdev, "reactors are not running".into()))?;
    let name = bdev.to_string();
    let res = fw
        .block_on(0, move || async move {
            let d = registry::open(&name, |_| {}).map_err(|_| crate::IoStatus::Removed)?;
            let ch = d.channel().map_err(|_| crate::IoStatus::Removed)?;
            f(ch).await
        })
        .map_err(|e| err(bdev, e.to_string()))?;
    res.map_err(|st| err(bdev, format!("I/O failed: {st:?}")))
}

impl BdevStore {
    /// The store of bdev `bdev`, opened once per process (again if the bdev was replaced).
    pub fn open(bdev: &str, create: bool) -> Result<std::sync::Arc<BdevStore>, BackupError> {
        let h = registry::get(bdev).ok_or_else(|| {
            BackupError::NotARepository(format!("no bdev '{bdev}' for a backup repository"))
        })?;
        let mut open = OPEN.lock();
        open.retain(|s| registry::get(&s.bdev).is_some_and(|x| x.bdev.uuid() == s.uuid));
        if let Some(s) = open.iter().find(|s| s.bdev == bdev) {
            return Ok(s.clone());
        }
        let s = std::sync::Arc::new(Self::open_new(bdev, create, h)?);
        open.push(s.clone());
        Ok(s)
    }

    fn open_new(
        bdev: &str,
        create: bool,
        h: registry::BdevHandle,
    ) -> Result<BdevStore, BackupError> {
        if let Some(by) = &h.claimed_by {
            return Err(BackupError::NotARepository(format!(
                "bdev '{bdev}' is claimed by {by}: not usable as a backup repository"
            )));
        }
        let bs = h.bdev.block_size() as u64;
        if bs > UNIT || !UNIT.is_multiple_of(bs) {
            return Err(BackupError::NotARepository(format!(
                "bdev '{bdev}' has {bs}-byte blocks; a repository needs blocks dividing 4096"
            )));
        }
        let size = h.bdev.num_blocks() * bs / UNIT * UNIT;
        if size < 16 * UNIT {
            return Err(BackupError::NotARepository(format!(
                "bdev '{bdev}' is too small for a backup repository"
            )));
        }
        let desc = registry::open(bdev, |_| {})
            .map_err(|e| BackupError::NotARepository(format!("bdev '{bdev}': {e}")))?;
        desc.claim("backup repository")
            .map_err(|e| BackupError::NotARepository(format!("bdev '{bdev}': {e}")))?;
        let s = BdevStore {
            bdev: bdev.to_string(),
            uuid: h.bdev.uuid(),
            size,
            log: Mutex::new(Log {
                end: LOG_AT,
                tail: LOG_AT,
                generation: 0,
                index: HashMap::new(),
            }),
            _desc: desc,
        };
        let head = s.read(0, LOG_AT)?;
        let (a, b) = head.split_at(UNIT as usize);
        let valid = |h: &[u8]| &h[..8] == MAGIC && sealed_ok(h, 12) && get_u32(h, 8) == VERSION;
        let best = [a, b]
            .into_iter()
            .filter(|h| valid(h))
            .max_by_key(|h| get_u64(h, 24));
        let Some(best) = best else {
            if &a[..8] == MAGIC || &b[..8] == MAGIC {
                return Err(BackupError::Damaged(format!(
                    "bdev '{bdev}': both repository header slots damaged or of another version"
                )));
            }
            if !create {
                return Err(BackupError::NotARepository(format!(
                    "bdev '{bdev}' is not a backup repository"
                )));
            }
            if head.iter().any(|&b| b != 0) {
                return Err(BackupError::NotARepository(format!(
                    "bdev '{bdev}' holds data and no backup repository: refusing to use it (zero its first 8 KiB to allow it)"
                )));
            }
            let mut log = s.log.lock();
            s.write_header(&mut log, LOG_AT)?;
            drop(log);
            return Ok(s);
        };
        let end = get_u64(best, 16);
        let generation = get_u64(best, 24);
        if end < LOG_AT || end > size {
            return Err(BackupError::Damaged(format!(
                "bdev '{bdev}': log end {end} out of range"
            )));
        }
        // Scan the log.
        let mut index = HashMap::new();
        let mut pos = LOG_AT;
        while pos < end {
            let h = s.read(pos, UNIT)?;
            if &h[..8] != REC_MAGIC || !sealed_ok(&h, 28) {
                return Err(BackupError::Damaged(format!(
                    "bdev '{bdev}': record at byte {pos} damaged"
                )));
            }
            let code = h[8];
            let kind = kind_of(code).ok_or_else(|| {
                BackupError::Damaged(format!("bdev '{bdev}': record kind {code} at {pos}"))
            })?;
            let nlen = u16::from_le_bytes([h[10], h[11]]) as usize;
            let len = get_u64(&h, 16);
            let name = std::str::from_utf8(h.get(NAME_AT..NAME_AT + nlen).unwrap_or(&[]))
                .map_err(|_| BackupError::Damaged(format!("bdev '{bdev}': record name at {pos}")))?
                .to_string();
            let Some(next) = record_end(pos, len).filter(|&e| e <= end) else {
                return Err(BackupError::Damaged(format!(
                    "bdev '{bdev}': record at {pos} runs past the log end"
                )));
            };
            if code == 4 {
                index.remove(&(kind, name));
            } else {
                index.insert((kind, name), (pos + UNIT, len));
            }
            pos = next;
        }
        *s.log.lock() = Log {
            end,
            tail: end,
            generation,
            index,
        };
        Ok(s)
    }

    fn read(&self, off: u64, len: u64) -> Result<Vec<u8>, BackupError> {
        on_reactor(&self.bdev, move |ch| {
            Box::pin(async move {
                let bs = ch.block_size() as u64;
                wait::read_vec(&ch, off / bs, len / bs).await
            })
        })
    }

    fn write(&self, off: u64, data: Vec<u8>) -> Result<(), BackupError> {
        on_reactor(&self.bdev, move |ch| {
            Box::pin(async move {
                let bs = ch.block_size() as u64;
                wait::write_slice(&ch, off / bs, &data).await
            })
        })
    }

    fn flush(&self) -> Result<(), BackupError> {
        on_reactor(&self.bdev, move |ch| {
            Box::pin(async move {
                if ch.bdev().supports(IoType::Flush) {
                    wait::no_data(&ch, IoType::Flush, 0, 0).await
                } else {
                    Ok(())
                }
            })
        })
    }

    /// Writes the next header slot (the one not holding the newest header).
    fn write_header(&self, log: &mut Log, end: u64) -> Result<(), BackupError> {
        let generation = log.generation + 1;
        let mut h = vec![0u8; UNIT as usize];
        h[..8].copy_from_slice(MAGIC);
        put_u32(&mut h, 8, VERSION);
        put_u64(&mut h, 16, end);
        put_u64(&mut h, 24, generation);
        seal(&mut h, 12);
        self.write((generation % 2) * UNIT, h)?;
        self.flush()?;
        log.generation = generation;
        Ok(())
    }

    fn append(&self, log: &mut Log, code: u8, name: &str, data: &[u8]) -> Result<u64, BackupError> {
        if name.len() > (UNIT as usize - NAME_AT) {
            return Err(err(&self.bdev, format!("object name too long: {name}")));
        }
        let need = UNIT + pad(data.len() as u64);
        if log.tail + need > self.size {
            return Err(BackupError::Io {
                path: format!("bdev:{}", self.bdev),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        let mut rec = vec![0u8; need as usize];
        rec[..8].copy_from_slice(REC_MAGIC);
        rec[8] = code;
        rec[10..12].copy_from_slice(&(name.len() as u16).to_le_bytes());
        put_u64(&mut rec, 16, data.len() as u64);
        put_u32(&mut rec, 24, crate::kernels::crc32c(data));
        rec[NAME_AT..NAME_AT + name.len()].copy_from_slice(name.as_bytes());
        seal(&mut rec[..UNIT as usize], 28);
        rec[UNIT as usize..UNIT as usize + data.len()].copy_from_slice(data);
        let at = log.tail;
        self.write(at, rec)?;
        log.tail += need;
        Ok(at + UNIT)
    }

    fn sync_locked(&self, log: &mut Log) -> Result<(), BackupError> {
        if log.tail == log.end {
            return Ok(());
        }
        self.flush()?;
        let tail = log.tail;
        self.write_header(log, tail)?;
        log.end = tail;
        Ok(())
    }
}

impl Store for std::sync::Arc<BdevStore> {
    fn get(&self, kind: Kind, name: &str) -> Result<Option<Vec<u8>>, BackupError> {
        let Some((off, len)) = self
            .log
            .lock()
            .index
            .get(&(kind, name.to_string()))
            .copied()
        else {
            return Ok(None);
        };
        let mut v = self.read(off, pad(len))?;
        v.truncate(len as usize);
        Ok(Some(v))
    }

    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), BackupError> {
        let mut log = self.log.lock();
        let off = self.append(&mut log, kind_code(kind), name, data)?;
        log.index
            .insert((kind, name.to_string()), (off, data.len() as u64));
        if kind != Kind::Chunk {
            self.sync_locked(&mut log)?;
        }
        Ok(())
    }

    fn remove(&self, kind: Kind, name: &str) -> Result<(), BackupError> {
        let mut log = self.log.lock();
        if log.index.remove(&(kind, name.to_string())).is_none() || kind != Kind::Checkpoint {
            return Ok(());
        }
        self.append(&mut log, 4, name, &[])?;
        self.sync_locked(&mut log)
    }

    fn names(&self, kind: Kind) -> Result<Vec<String>, BackupError> {
        Ok(self
            .log
            .lock()
            .index
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.clone())
            .collect())
    }

    fn sync(&self) -> Result<(), BackupError> {
        let mut log = self.log.lock();
        self.sync_locked(&mut log)
    }

    fn describe(&self, kind: Kind, name: &str) -> String {
        format!("bdev:{} ({kind:?} {name})", self.bdev)
    }
}
