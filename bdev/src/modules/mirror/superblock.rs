//! The on-leg superblock of a mirror: who the mirror is, which role this leg plays, the
//! mirror's state and each leg's, a generation number, options, and the change bitmap.
//!
//! Layout of a leg: the header ([`HEADER_BYTES`], CRC32C protected) from byte 0; the change
//! bitmap from byte [`bitmap_at`] (1 bit per region, little-endian u64 words), protected by
//! its own CRC32C kept in the header, so a damaged bitmap is detected (and distrusted) while
//! the header still says who the mirror is; then, at `data_offset` blocks, the volume's data.
//! Every metadata update writes header and bitmap together to every reachable leg and bumps
//! the generation, so the leg with the highest generation speaks for the mirror.

use crate::kernels;
use crate::volume::ondisk::{get_u32, get_u64, put_u32, put_u64};
use uuid::Uuid;

pub const MAGIC: &[u8; 8] = b"STRATMR1";
pub const VERSION: u32 = 1;
/// Bytes of the header (independent of the block size).
pub const HEADER_BYTES: usize = 512;
/// The bitmap starts here (bytes), or at the second block for blocks larger than this.
pub const BITMAP_AT: u64 = 4096;
/// Bitmap bytes at most: 1 MiB (8 Mi regions; a 8 TiB volume at the default 1 MiB regions).
pub const MAX_BITMAP_BYTES: u64 = 1 << 20;
/// Data starts at least this far into each leg.
pub const MIN_DATA_OFFSET_BYTES: u64 = 1 << 20;
const NAME_MAX: usize = 128;

/// Flag: the bitmap does not record every difference between the legs (it was lost); a
/// resume must scan checksums. Cleared by a completed scan.
pub const FLAG_BITMAP_UNTRUSTED: u32 = 1;

/// The mirror's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorState {
    /// Both legs hold the same data and receive every write.
    InSync,
    /// The secondary is paused: writes go to the primary and mark the change bitmap.
    Split,
    /// A job copies changed regions to the secondary; writes go to both legs.
    Resyncing,
    /// One leg failed or is missing: writes go to the other and mark the change bitmap.
    Degraded,
    /// No leg serves.
    Offline,
}

impl MirrorState {
    pub fn code(self) -> u8 {
        match self {
            MirrorState::InSync => 1,
            MirrorState::Split => 2,
            MirrorState::Resyncing => 3,
            MirrorState::Degraded => 4,
            MirrorState::Offline => 5,
        }
    }
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => MirrorState::InSync,
            2 => MirrorState::Split,
            3 => MirrorState::Resyncing,
            4 => MirrorState::Degraded,
            5 => MirrorState::Offline,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            MirrorState::InSync => "in_sync",
            MirrorState::Split => "split",
            MirrorState::Resyncing => "resyncing",
            MirrorState::Degraded => "degraded",
            MirrorState::Offline => "offline",
        }
    }
}

/// A leg's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegState {
    /// Holds the volume's data; receives every write; may serve reads.
    InSync,
    /// Paused by a split: receives no writes; its differences are in the bitmap.
    Stale,
    /// Being resynced: receives writes, serves no reads.
    Resyncing,
    /// Failed I/O: receives nothing.
    Failed,
    /// Not present.
    Missing,
}

impl LegState {
    pub fn code(self) -> u8 {
        match self {
            LegState::InSync => 1,
            LegState::Stale => 2,
            LegState::Resyncing => 3,
            LegState::Failed => 4,
            LegState::Missing => 5,
        }
    }
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => LegState::InSync,
            2 => LegState::Stale,
            3 => LegState::Resyncing,
            4 => LegState::Failed,
            5 => LegState::Missing,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            LegState::InSync => "in_sync",
            LegState::Stale => "stale",
            LegState::Resyncing => "resyncing",
            LegState::Failed => "failed",
            LegState::Missing => "missing",
        }
    }
    /// Whether the leg receives host writes.
    pub fn takes_writes(self) -> bool {
        matches!(self, LegState::InSync | LegState::Resyncing)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Superblock {
    pub mirror_uuid: Uuid,
    pub name: String,
    pub generation: u64,
    /// Role of the leg carrying this copy: 0 primary, 1 secondary.
    pub role: usize,
    pub state: MirrorState,
    /// Leg states by role.
    pub legs: [LegState; 2],
    /// Bdev uuids of the legs by role (nil when unknown).
    pub leg_uuids: [Uuid; 2],
    pub flags: u32,
    pub block_size: u32,
    /// Volume blocks.
    pub num_blocks: u64,
    /// Leg block where the volume's data starts.
    pub data_offset: u64,
    pub region_blocks: u64,
    pub bits: u64,
    pub scan_chunk_blocks: u64,
    /// 0 primary, 1 balance.
    pub read_policy: u8,
    /// 0 CRC32C, 1 SHA-256.
    pub checksum: u8,
    pub scrub_interval_s: u32,
    pub max_bandwidth_mb_sec: u32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SbError {
    #[error("no strata mirror superblock")]
    NoMagic,
    #[error("superblock checksum mismatch")]
    Checksum,
    #[error("unsupported superblock version {0}")]
    Version(u32),
    #[error("corrupt superblock: {0}")]
    Corrupt(&'static str),
}

/// Byte offset of the bitmap in a leg.
pub fn bitmap_at(block_size: u32) -> u64 {
    BITMAP_AT.max(block_size as u64)
}

/// Bytes of bitmap for `bits` regions (whole u64 words).
pub fn bitmap_bytes(bits: u64) -> u64 {
    bits.div_ceil(64) * 8
}

/// Blocks of metadata (header area + bitmap).
pub fn meta_blocks(bits: u64, block_size: u32) -> u64 {
    (bitmap_at(block_size) + bitmap_bytes(bits)).div_ceil(block_size as u64)
}

fn bitmap_crc(words: &[u64]) -> u32 {
    let mut crc = 0;
    for w in words {
        crc = kernels::crc32c_append(crc, &w.to_le_bytes());
    }
    crc
}

impl Superblock {
    pub fn meta_blocks(&self) -> u64 {
        meta_blocks(self.bits, self.block_size)
    }

    /// Serialises header and `bitmap` into `out` (`meta_blocks()` blocks).
    pub fn encode_meta(&self, bitmap: &[u64], out: &mut [u8]) {
        out.fill(0);
        let words = self.bits.div_ceil(64) as usize;
        let bm: Vec<u64> = (0..words)
            .map(|i| bitmap.get(i).copied().unwrap_or(0))
            .collect();
        let at = bitmap_at(self.block_size) as usize;
        for (i, w) in bm.iter().enumerate() {
            if let Some(d) = out.get_mut(at + i * 8..at + i * 8 + 8) {
                d.copy_from_slice(&w.to_le_bytes());
            }
        }
        let b = &mut out[..HEADER_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        put_u32(b, 8, VERSION);
        b[16..32].copy_from_slice(self.mirror_uuid.as_bytes());
        put_u64(b, 32, self.generation);
        b[40] = self.role as u8;
        b[41] = self.state.code();
        b[42] = self.legs[0].code();
        b[43] = self.legs[1].code();
        b[44] = self.read_policy;
        b[45] = self.checksum;
        put_u32(b, 48, self.flags);
        put_u32(b, 52, self.block_size);
        put_u64(b, 56, self.num_blocks);
        put_u64(b, 64, self.data_offset);
        put_u64(b, 72, self.region_blocks);
        put_u64(b, 80, self.bits);
        put_u64(b, 88, self.scan_chunk_blocks);
        put_u32(b, 96, self.scrub_interval_s);
        put_u32(b, 100, self.max_bandwidth_mb_sec);
        put_u32(b, 104, bitmap_crc(&bm));
        b[112..128].copy_from_slice(self.leg_uuids[0].as_bytes());
        b[128..144].copy_from_slice(self.leg_uuids[1].as_bytes());
        let name = self.name.as_bytes();
        let n = name.len().min(NAME_MAX);
        b[160] = n as u8;
        b[161..161 + n].copy_from_slice(&name[..n]);
        let crc = kernels::crc32c(b);
        put_u32(b, 12, crc);
    }

    /// Parses the header from the leg's first bytes (at least [`HEADER_BYTES`]).
    pub fn decode(raw: &[u8]) -> Result<Superblock, SbError> {
        let b = raw.get(..HEADER_BYTES).ok_or(SbError::NoMagic)?;
        if &b[0..8] != MAGIC {
            return Err(SbError::NoMagic);
        }
        let mut c = b.to_vec();
        put_u32(&mut c, 12, 0);
        if kernels::crc32c(&c) != get_u32(b, 12) {
            return Err(SbError::Checksum);
        }
        let v = get_u32(b, 8);
        if v != VERSION {
            return Err(SbError::Version(v));
        }
        let uuid = |at: usize| {
            let mut u = [0u8; 16];
            u.copy_from_slice(&b[at..at + 16]);
            Uuid::from_bytes(u)
        };
        let n = (b[160] as usize).min(NAME_MAX);
        let name = std::str::from_utf8(&b[161..161 + n])
            .map_err(|_| SbError::Corrupt("name"))?
            .to_string();
        let leg = |c: u8| LegState::from_code(c).ok_or(SbError::Corrupt("leg state"));
        let sb = Superblock {
            mirror_uuid: uuid(16),
            name,
            generation: get_u64(b, 32),
            role: b[40] as usize,
            state: MirrorState::from_code(b[41]).ok_or(SbError::Corrupt("state"))?,
            legs: [leg(b[42])?, leg(b[43])?],
            read_policy: b[44],
            checksum: b[45],
            flags: get_u32(b, 48),
            block_size: get_u32(b, 52),
            num_blocks: get_u64(b, 56),
            data_offset: get_u64(b, 64),
            region_blocks: get_u64(b, 72),
            bits: get_u64(b, 80),
            scan_chunk_blocks: get_u64(b, 88),
            scrub_interval_s: get_u32(b, 96),
            max_bandwidth_mb_sec: get_u32(b, 100),
            leg_uuids: [uuid(112), uuid(128)],
        };
        sb.check()?;
        Ok(sb)
    }

    /// Refuses shapes this code cannot run (a damaged or hostile header).
    fn check(&self) -> Result<(), SbError> {
        if self.role > 1 || self.read_policy > 1 || self.checksum > 1 {
            return Err(SbError::Corrupt("role or option"));
        }
        if crate::modules::validate_block_size(self.block_size).is_err() {
            return Err(SbError::Corrupt("block size"));
        }
        if self.region_blocks == 0
            || self.num_blocks == 0
            || self.scan_chunk_blocks == 0
            || self.scan_chunk_blocks > self.region_blocks
        {
            return Err(SbError::Corrupt("geometry"));
        }
        if self.bits != self.num_blocks.div_ceil(self.region_blocks)
            || bitmap_bytes(self.bits) > MAX_BITMAP_BYTES
        {
            return Err(SbError::Corrupt("bitmap size"));
        }
        if self.data_offset < self.meta_blocks() {
            return Err(SbError::Corrupt("data offset inside the metadata"));
        }
        Ok(())
    }

    /// The bitmap stored after the header in `meta` (`meta_blocks()` blocks), or `None`
    /// when its CRC does not match (the bitmap was damaged or dropped).
    pub fn decode_bitmap(&self, meta: &[u8]) -> Option<Vec<u64>> {
        let at = bitmap_at(self.block_size) as usize;
        let words = self.bits.div_ceil(64) as usize;
        let raw = meta.get(at..at + words * 8)?;
        let bm: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        let hdr = meta.get(..HEADER_BYTES)?;
        (bitmap_crc(&bm) == get_u32(hdr, 104)).then_some(bm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(bs: u32) -> Superblock {
        Superblock {
            mirror_uuid: Uuid::new_v4(),
            name: "m0".into(),
            generation: 7,
            role: 1,
            state: MirrorState::Split,
            legs: [LegState::InSync, LegState::Stale],
            leg_uuids: [Uuid::new_v4(), Uuid::nil()],
            flags: 0,
            block_size: bs,
            num_blocks: 1000,
            data_offset: 2048,
            region_blocks: 256,
            bits: 4,
            scan_chunk_blocks: 16,
            read_policy: 1,
            checksum: 1,
            scrub_interval_s: 60,
            max_bandwidth_mb_sec: 100,
        }
    }

    #[test]
    fn round_trip_and_bitmap_crc() {
        for bs in [512u32, 4096] {
            let sb = sample(bs);
            let mut buf = vec![0u8; (sb.meta_blocks() * bs as u64) as usize];
            sb.encode_meta(&[0b1010], &mut buf);
            let got = Superblock::decode(&buf).unwrap();
            assert_eq!(got, sb);
            assert_eq!(got.decode_bitmap(&buf), Some(vec![0b1010]));
            // A damaged bitmap is detected; the header still decodes.
            buf[bitmap_at(bs) as usize] ^= 0xff;
            assert_eq!(got.decode_bitmap(&buf), None);
            assert!(Superblock::decode(&buf).is_ok());
            // A damaged header is refused.
            buf[33] ^= 1;
            assert_eq!(Superblock::decode(&buf), Err(SbError::Checksum));
        }
    }

    #[test]
    fn impossible_shapes_are_refused() {
        let mut sb = sample(4096);
        sb.bits = 5;
        let mut buf = vec![0u8; 8192];
        sb.encode_meta(&[], &mut buf);
        assert_eq!(
            Superblock::decode(&buf),
            Err(SbError::Corrupt("bitmap size"))
        );
    }
}
