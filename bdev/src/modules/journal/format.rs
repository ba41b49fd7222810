//! The on-disk format of a journal leg. Both legs of a group hold the same bytes at the
//! same offsets (the second scheme mirrors the journal).
//!
//! ```text
//! 0       .. 128 KiB   header slot A   \  written in turn (even generations in A, odd in B):
//! 128 KiB .. 256 KiB   header slot B   /  a torn header write leaves the other slot whole
//! 256 KiB .. end       the log: batches, one after the other, wrapping to its start
//! ```
//!
//! A header slot: magic `STRJRNL1`, version, CRC32C (of the slot's used bytes with this
//! field zero), group uuid, generation, leg index, body length, then the body as JSON
//! ([`HeaderBody`]: where the undrained log starts, the legs' states and the catalog).
//!
//! A batch (one group commit, one write per leg): a header of whole blocks — magic
//! `STRJBAT1`, group uuid, the sequence number of its first record, record count, header
//! blocks, total blocks, header CRC32C, run number — with one 32-byte [`Entry`] per record, then each
//! record's data blocks in order. Records carry volume id, LBA range, sequence number (the
//! batch's first plus the entry's index) and the CRC32C of their data, so a damaged or torn
//! record is found, and the other leg's copy is used.

use super::catalog::Catalog;
use crate::kernels;
use crate::volume::ondisk::{get_u32, get_u64, put_u32, put_u64};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const SLOT_BYTES: u64 = 128 * 1024;
pub const LOG_START_BYTES: u64 = 2 * SLOT_BYTES;
const SLOT_MAGIC: &[u8; 8] = b"STRJRNL1";
const BATCH_MAGIC: &[u8; 8] = b"STRJBAT1";
pub const VERSION: u32 = 1;
const FIXED: usize = 64;
pub const ENTRY_BYTES: usize = 32;
/// Records one batch may hold.
pub const MAX_BATCH_RECORDS: usize = 256;
/// Longest header body (JSON), so a slot always fits.
pub const MAX_BODY: usize = SLOT_BYTES as usize - FIXED;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A host write: `data_blocks` blocks of data for `lba..lba+blocks`.
    Write = 1,
    /// The group's catalog as JSON (`lba` = its byte length).
    Catalog = 2,
    /// Zeroes over `lba..lba+blocks` (write_zeroes, unmap): no data.
    Zeroes = 3,
}

impl RecordKind {
    fn from_code(c: u8) -> Option<RecordKind> {
        match c {
            1 => Some(RecordKind::Write),
            2 => Some(RecordKind::Catalog),
            3 => Some(RecordKind::Zeroes),
            _ => None,
        }
    }
}

/// One record of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: RecordKind,
    pub volume: u32,
    pub lba: u64,
    /// Blocks of the volume it covers (Catalog: 0).
    pub blocks: u64,
    /// Blocks of data that follow in the log.
    pub data_blocks: u32,
    pub crc: u32,
}

/// A decoded batch header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub first_seq: u64,
    /// The run (assembly) that wrote it: a scan never takes a batch of an earlier run
    /// after one of a later run (stale batches past a crash's end of log).
    pub run: u32,
    pub hdr_blocks: u32,
    pub total_blocks: u64,
    pub entries: Vec<Entry>,
}

/// Blocks a batch header with `n` records takes.
pub fn header_blocks(n: usize, bs: u32) -> u32 {
    (FIXED + n * ENTRY_BYTES).div_ceil(bs as usize) as u32
}

/// Writes a batch header into `out` (its `hdr_blocks * bs` bytes).
pub fn encode_batch(out: &mut [u8], uuid: &Uuid, h: &BatchHeader) {
    out.fill(0);
    out[..8].copy_from_slice(BATCH_MAGIC);
    out[8..24].copy_from_slice(uuid.as_bytes());
    put_u64(out, 24, h.first_seq);
    put_u32(out, 32, h.entries.len() as u32);
    put_u32(out, 36, h.hdr_blocks);
    put_u64(out, 40, h.total_blocks);
    put_u32(out, 52, h.run);
    for (i, e) in h.entries.iter().enumerate() {
        let at = FIXED + i * ENTRY_BYTES;
        out[at] = e.kind as u8;
        put_u32(out, at + 4, e.volume);
        put_u64(out, at + 8, e.lba);
        put_u64(out, at + 16, e.blocks);
        put_u32(out, at + 24, e.data_blocks);
        put_u32(out, at + 28, e.crc);
    }
    let used = FIXED + h.entries.len() * ENTRY_BYTES;
    let crc = kernels::crc32c(&out[..used]);
    put_u32(out, 48, crc);
}

/// Reads a batch header from the first block(s) of `raw`: None unless it is a whole, valid
/// header of group `uuid` that fits `log_blocks`. `raw` may be one block only: then
/// `Err(hdr_blocks)` asks for more.
pub fn decode_batch(
    raw: &[u8],
    uuid: &Uuid,
    bs: u32,
    log_blocks: u64,
) -> Option<Result<BatchHeader, u32>> {
    if raw.len() < FIXED || &raw[..8] != BATCH_MAGIC || &raw[8..24] != uuid.as_bytes() {
        return None;
    }
    let n = get_u32(raw, 32) as usize;
    let hdr_blocks = get_u32(raw, 36);
    let total = get_u64(raw, 40);
    if n == 0 || n > MAX_BATCH_RECORDS || hdr_blocks != header_blocks(n, bs) || total > log_blocks {
        return None;
    }
    let used = FIXED + n * ENTRY_BYTES;
    if raw.len() < used {
        return Some(Err(hdr_blocks));
    }
    let mut z = raw[..used].to_vec();
    put_u32(&mut z, 48, 0);
    if kernels::crc32c(&z) != get_u32(raw, 48) {
        return None;
    }
    let mut entries = Vec::with_capacity(n);
    let mut data = 0u64;
    for i in 0..n {
        let at = FIXED + i * ENTRY_BYTES;
        let kind = RecordKind::from_code(raw[at])?;
        let e = Entry {
            kind,
            volume: get_u32(raw, at + 4),
            lba: get_u64(raw, at + 8),
            blocks: get_u64(raw, at + 16),
            data_blocks: get_u32(raw, at + 24),
            crc: get_u32(raw, at + 28),
        };
        data += e.data_blocks as u64;
        entries.push(e);
    }
    if hdr_blocks as u64 + data != total {
        return None;
    }
    Some(Ok(BatchHeader {
        first_seq: get_u64(raw, 24),
        run: get_u32(raw, 52),
        hdr_blocks,
        total_blocks: total,
        entries,
    }))
}

/// A journal leg's state as the header records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LegState {
    /// Holds every record.
    Ok,
    /// Missed records: not read until it is resynced.
    Failed,
    /// Being filled from the other leg (a replacement).
    Resyncing,
}

impl LegState {
    pub fn name(self) -> &'static str {
        match self {
            LegState::Ok => "ok",
            LegState::Failed => "failed",
            LegState::Resyncing => "resyncing",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegRecord {
    pub bdev: String,
    pub uuid: String,
    pub state: LegState,
}

/// The header's body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeaderBody {
    /// Log position (blocks from the log's start, counting every lap) of the oldest
    /// undrained batch, and its first record's sequence number.
    pub tail: u64,
    pub tail_seq: u64,
    /// The current run: bumped at every assembly, before anything is appended.
    pub run: u32,
    pub log_blocks: u64,
    pub legs: [LegRecord; 2],
    pub catalog: Catalog,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SlotError {
    #[error("no journal header")]
    NoMagic,
    #[error("journal header checksum mismatch")]
    Checksum,
    #[error("unsupported journal header version {0}")]
    Version(u32),
    #[error("journal header body: {0}")]
    Body(String),
}

/// The fixed fields of a header slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotHeader {
    pub uuid: Uuid,
    pub generation: u64,
    pub leg: u32,
}

/// A header slot's bytes (rounded up to whole blocks of `bs`).
pub fn encode_slot(h: &SlotHeader, body: &HeaderBody, bs: u32) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    if json.len() > MAX_BODY {
        return Err(format!(
            "the catalog needs {} bytes, more than a header slot holds ({MAX_BODY})",
            json.len()
        ));
    }
    let used = FIXED + json.len();
    let mut out = vec![0u8; used.div_ceil(bs as usize) * bs as usize];
    out[..8].copy_from_slice(SLOT_MAGIC);
    put_u32(&mut out, 8, VERSION);
    out[16..32].copy_from_slice(h.uuid.as_bytes());
    put_u64(&mut out, 32, h.generation);
    put_u32(&mut out, 40, h.leg);
    put_u32(&mut out, 44, json.len() as u32);
    out[FIXED..used].copy_from_slice(&json);
    let crc = kernels::crc32c(&out[..used]);
    put_u32(&mut out, 12, crc);
    Ok(out)
}

/// Whether `raw` starts with a header slot's magic.
pub fn has_magic(raw: &[u8]) -> bool {
    raw.len() >= 8 && &raw[..8] == SLOT_MAGIC
}

/// Body bytes a slot says it holds (to read the rest of it).
pub fn slot_len(raw: &[u8]) -> usize {
    if raw.len() < FIXED {
        return FIXED;
    }
    FIXED + (get_u32(raw, 44) as usize).min(MAX_BODY)
}

pub fn decode_slot(raw: &[u8]) -> Result<(SlotHeader, HeaderBody), SlotError> {
    if !has_magic(raw) || raw.len() < FIXED {
        return Err(SlotError::NoMagic);
    }
    let v = get_u32(raw, 8);
    if v != VERSION {
        return Err(SlotError::Version(v));
    }
    let len = get_u32(raw, 44) as usize;
    if len > MAX_BODY || raw.len() < FIXED + len {
        return Err(SlotError::Checksum);
    }
    let mut z = raw[..FIXED + len].to_vec();
    put_u32(&mut z, 12, 0);
    if kernels::crc32c(&z) != get_u32(raw, 12) {
        return Err(SlotError::Checksum);
    }
    let body: HeaderBody = serde_json::from_slice(&raw[FIXED..FIXED + len])
        .map_err(|e| SlotError::Body(e.to_string()))?;
    let mut u = [0u8; 16];
    u.copy_from_slice(&raw[16..32]);
    Ok((
        SlotHeader {
            uuid: Uuid::from_bytes(u),
            generation: get_u64(raw, 32),
            leg: get_u32(raw, 40),
        },
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_header_round_trips_and_rejects_damage() {
        let u = Uuid::new_v4();
        let entries = vec![
            Entry {
                kind: RecordKind::Write,
                volume: 3,
                lba: 77,
                blocks: 8,
                data_blocks: 8,
                crc: 0xdead_beef,
            },
            Entry {
                kind: RecordKind::Zeroes,
                volume: 1,
                lba: 0,
                blocks: 1 << 20,
                data_blocks: 0,
                crc: 0,
            },
        ];
        let hb = header_blocks(entries.len(), 512);
        let h = BatchHeader {
            first_seq: 1000,
            run: 2,
            hdr_blocks: hb,
            total_blocks: hb as u64 + 8,
            entries,
        };
        let mut raw = vec![0u8; hb as usize * 512];
        encode_batch(&mut raw, &u, &h);
        assert_eq!(decode_batch(&raw, &u, 512, 1 << 20), Some(Ok(h.clone())));
        assert_eq!(
            decode_batch(&raw, &Uuid::new_v4(), 512, 1 << 20),
            None,
            "other group"
        );
        raw[70] ^= 1;
        assert_eq!(decode_batch(&raw, &u, 512, 1 << 20), None, "damaged header");
    }

    #[test]
    fn a_big_batch_header_asks_for_its_other_blocks() {
        let u = Uuid::new_v4();
        let e = Entry {
            kind: RecordKind::Write,
            volume: 0,
            lba: 1,
            blocks: 1,
            data_blocks: 1,
            crc: 1,
        };
        let h = BatchHeader {
            first_seq: 1,
            run: 0,
            hdr_blocks: header_blocks(100, 512),
            total_blocks: header_blocks(100, 512) as u64 + 100,
            entries: vec![e; 100],
        };
        let mut raw = vec![0u8; h.hdr_blocks as usize * 512];
        encode_batch(&mut raw, &u, &h);
        assert_eq!(
            decode_batch(&raw[..512], &u, 512, 1 << 20),
            Some(Err(h.hdr_blocks))
        );
        assert_eq!(decode_batch(&raw, &u, 512, 1 << 20), Some(Ok(h)));
    }
}
