//! The on-leg superblock of a mirror: who the mirror is, which role this leg plays, the
//! mirror's state and each leg's, a generation number, options, and the change bitmap.
//!
//! Layout of a leg: the header ([`HEADER_BYTES`], CRC32C protected) from byte 0; the change
//! bitmap from byte [`bitmap_at`] (1 bit per region, little-endian u64 words), protected by
//! its own CRC32C kept in the header, so a damaged bitmap is detected (and distrusted) while
//! the header still says who the mirror is; then, at `data_offset` blocks, the volume's data.
//! Every metadata update writes header and bitmap together to every reachable leg and bumps
//! the generation, so the leg with the highest generation speaks for the mirror.
//!
//! The split section ([`SplitRecord`], bytes [`SPLIT_AT`]..[`BITMAP_AT`], its own CRC) holds
//! what a snapshot split and backups need across a restart: the point-in-time image, the
//! backup being written, the last backup taken; its three maps (regions changed since the
//! last backup's image, regions the image still owes the secondary, the image's changes
//! since the previous backup) follow the change bitmap, one bitmap's size each, when the
//! metadata area has room for them (mirrors created before the section have one bitmap's
//! room at least: a snapshot split tells when it is too small).

use crate::state_codes;
use crate::volume::ondisk::{get_u32, get_u64, put_u32, put_u64};
use crate::volume::superblock::{self as meta, Format, Header};
pub use crate::volume::superblock::{bitmap_bytes, SbError};
use uuid::Uuid;

/// Bytes of the header area: common header and mirror body (independent of the block size).
pub const HEADER_BYTES: usize = 512;
/// Mirror legs' metadata: the common header (member index = the leg's role), then the body.
pub const FORMAT: Format = Format {
    what: "mirror",
    magic: b"STRATMR1",
    version: 2,
    area: HEADER_BYTES,
};
/// The bitmap starts here (bytes), or at the second block for blocks larger than this.
pub const BITMAP_AT: u64 = 4096;
/// Bitmap bytes at most: 1 MiB (8 Mi regions; a 8 TiB volume at the default 1 MiB regions).
pub const MAX_BITMAP_BYTES: u64 = 1 << 20;
/// Data starts at least this far into each leg.
pub const MIN_DATA_OFFSET_BYTES: u64 = 1 << 20;
const NAME_MAX: usize = 128;
/// The split section: magic, length, CRC32C, then its JSON.
pub const SPLIT_AT: usize = 512;
const SPLIT_MAGIC: &[u8; 8] = b"STRATSPL";
const SPLIT_MAX: usize = BITMAP_AT as usize - SPLIT_AT - 16;
/// Maps after the change bitmap: change map, owed map, image delta.
pub const EXTRA_MAPS: u64 = 3;

// Body layout (offsets in the body, after the common header).
const STATE_AT: usize = 0;
const LEGS_AT: usize = 1;
const READ_POLICY_AT: usize = 3;
const CHECKSUM_AT: usize = 4;
const FLAGS_AT: usize = 8;
const BLOCK_SIZE_AT: usize = 12;
const NUM_BLOCKS_AT: usize = 16;
const DATA_OFFSET_AT: usize = 24;
const REGION_AT: usize = 32;
const BITS_AT: usize = 40;
const SCAN_CHUNK_AT: usize = 48;
const SCRUB_AT: usize = 56;
const MAX_BW_AT: usize = 60;
const LEG_UUIDS_AT: usize = 64;
const NAME_LEN_AT: usize = 96;

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

state_codes!(MirrorState {
    InSync = 1 => "in_sync",
    Split = 2 => "split",
    Resyncing = 3 => "resyncing",
    Degraded = 4 => "degraded",
    Offline = 5 => "offline",
});

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

state_codes!(LegState {
    InSync = 1 => "in_sync",
    Stale = 2 => "stale",
    Resyncing = 3 => "resyncing",
    Failed = 4 => "failed",
    Missing = 5 => "missing",
});

impl LegState {
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

/// A backup being written, as the split section keeps it to resume after a restart.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupRecord {
    pub repository: String,
    pub id: String,
    pub kind: String,
    pub mode: String,
    pub chunk_size: u64,
    pub parent: Option<String>,
    /// The backup's rate limit (0: none).
    #[serde(default)]
    pub max_bandwidth_mb_sec: u32,
}

/// The point-in-time image of a snapshot split.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    pub name: String,
    /// Unix seconds of the split.
    pub split_time: u64,
    pub split_time_ns: u32,
    /// A backup of this image completed (its changes are consumed).
    pub backed_up: bool,
    pub backup: Option<BackupRecord>,
}

/// The last complete backup of the mirror (the parent of the next incremental).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastBackup {
    pub repository: String,
    pub id: String,
    pub image_time: u64,
    pub image_time_ns: u32,
    pub chunk_size: u64,
}

/// The split section: snapshot split, backups, and the CRCs of the maps after the bitmap.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitRecord {
    pub image: Option<ImageRecord>,
    pub last_backup: Option<LastBackup>,
    /// CRC32C of the change map, owed map and image delta (when written).
    pub map_crcs: Option<[u32; 3]>,
}

/// The maps the split section describes, by order after the change bitmap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitMaps {
    pub track: Vec<u64>,
    pub owed: Vec<u64>,
    pub delta: Vec<u64>,
}

/// Blocks of metadata with the split section's maps.
pub fn meta_blocks_with_maps(bits: u64, block_size: u32) -> u64 {
    (bitmap_at(block_size) + (1 + EXTRA_MAPS) * bitmap_bytes(bits)).div_ceil(block_size as u64)
}

/// Byte offset of the bitmap in a leg.
pub fn bitmap_at(block_size: u32) -> u64 {
    BITMAP_AT.max(block_size as u64)
}

/// Blocks of metadata (header area + bitmap).
pub fn meta_blocks(bits: u64, block_size: u32) -> u64 {
    (bitmap_at(block_size) + bitmap_bytes(bits)).div_ceil(block_size as u64)
}

impl Superblock {
    pub fn meta_blocks(&self) -> u64 {
        meta_blocks(self.bits, self.block_size)
    }

    /// Serialises header and `bitmap` into `out` (`meta_blocks()` blocks), and the split
    /// section with its maps when given (`out` then spans [`meta_blocks_with_maps`]).
    pub fn encode_meta(
        &self,
        bitmap: &[u64],
        split: Option<(&SplitRecord, &SplitMaps)>,
        out: &mut [u8],
    ) {
        out.fill(0);
        let at = bitmap_at(self.block_size) as usize;
        let crc = meta::encode_bitmap(bitmap, self.bits, out, at);
        if let Some((rec, maps)) = split {
            let bb = bitmap_bytes(self.bits) as usize;
            let mut r = rec.clone();
            let mut crcs = [0u32; 3];
            for (k, map) in [&maps.track, &maps.owed, &maps.delta]
                .into_iter()
                .enumerate()
            {
                crcs[k] = meta::encode_bitmap(map, self.bits, out, at + (k + 1) * bb);
            }
            r.map_crcs = Some(crcs);
            let json = serde_json::to_vec(&r).unwrap_or_default();
            if json.len() <= SPLIT_MAX {
                let sec = &mut out[SPLIT_AT..SPLIT_AT + 16 + json.len()];
                sec[..8].copy_from_slice(SPLIT_MAGIC);
                put_u32(sec, 8, json.len() as u32);
                put_u32(sec, 12, crate::kernels::crc32c(&json));
                sec[16..].copy_from_slice(&json);
            } else {
                // Names are bounded where they are set, so this is a bug, not an input.
                tracing::error!(mirror = %self.name, bytes = json.len(), "split section too large for the superblock: not written");
            }
        }
        let h = Header {
            volume_uuid: self.mirror_uuid,
            generation: self.generation,
            index: self.role as u32,
        };
        FORMAT.seal(&h, crc, out, |b| {
            b[STATE_AT] = self.state.code();
            b[LEGS_AT] = self.legs[0].code();
            b[LEGS_AT + 1] = self.legs[1].code();
            b[READ_POLICY_AT] = self.read_policy;
            b[CHECKSUM_AT] = self.checksum;
            put_u32(b, FLAGS_AT, self.flags);
            put_u32(b, BLOCK_SIZE_AT, self.block_size);
            put_u64(b, NUM_BLOCKS_AT, self.num_blocks);
            put_u64(b, DATA_OFFSET_AT, self.data_offset);
            put_u64(b, REGION_AT, self.region_blocks);
            put_u64(b, BITS_AT, self.bits);
            put_u64(b, SCAN_CHUNK_AT, self.scan_chunk_blocks);
            put_u32(b, SCRUB_AT, self.scrub_interval_s);
            put_u32(b, MAX_BW_AT, self.max_bandwidth_mb_sec);
            b[LEG_UUIDS_AT..LEG_UUIDS_AT + 16].copy_from_slice(self.leg_uuids[0].as_bytes());
            b[LEG_UUIDS_AT + 16..LEG_UUIDS_AT + 32].copy_from_slice(self.leg_uuids[1].as_bytes());
            let name = self.name.as_bytes();
            let n = name.len().min(NAME_MAX);
            b[NAME_LEN_AT] = n as u8;
            b[NAME_LEN_AT + 1..NAME_LEN_AT + 1 + n].copy_from_slice(&name[..n]);
        });
    }

    /// Parses the header from the leg's first bytes (at least [`HEADER_BYTES`]).
    pub fn decode(raw: &[u8]) -> Result<Superblock, SbError> {
        let (h, b) = FORMAT.open(raw)?;
        let uuid = |at: usize| {
            let mut u = [0u8; 16];
            u.copy_from_slice(&b[at..at + 16]);
            Uuid::from_bytes(u)
        };
        let n = (b[NAME_LEN_AT] as usize).min(NAME_MAX);
        let name = std::str::from_utf8(&b[NAME_LEN_AT + 1..NAME_LEN_AT + 1 + n])
            .map_err(|_| SbError::Corrupt("name"))?
            .to_string();
        let leg = |c: u8| LegState::from_code(c).ok_or(SbError::Corrupt("leg state"));
        let sb = Superblock {
            mirror_uuid: h.volume_uuid,
            name,
            generation: h.generation,
            role: h.index as usize,
            state: MirrorState::from_code(b[STATE_AT]).ok_or(SbError::Corrupt("state"))?,
            legs: [leg(b[LEGS_AT])?, leg(b[LEGS_AT + 1])?],
            read_policy: b[READ_POLICY_AT],
            checksum: b[CHECKSUM_AT],
            flags: get_u32(b, FLAGS_AT),
            block_size: get_u32(b, BLOCK_SIZE_AT),
            num_blocks: get_u64(b, NUM_BLOCKS_AT),
            data_offset: get_u64(b, DATA_OFFSET_AT),
            region_blocks: get_u64(b, REGION_AT),
            bits: get_u64(b, BITS_AT),
            scan_chunk_blocks: get_u64(b, SCAN_CHUNK_AT),
            scrub_interval_s: get_u32(b, SCRUB_AT),
            max_bandwidth_mb_sec: get_u32(b, MAX_BW_AT),
            leg_uuids: [uuid(LEG_UUIDS_AT), uuid(LEG_UUIDS_AT + 16)],
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
        meta::decode_bitmap(meta, self.bits, bitmap_at(self.block_size) as usize)
    }

    /// The split section and its maps from `meta`: `Ok(None)` when there is none (never
    /// written), `Err` when it is damaged (section or a map's CRC).
    pub fn decode_split(&self, meta: &[u8]) -> Result<Option<(SplitRecord, SplitMaps)>, SbError> {
        let Some(sec) = meta.get(SPLIT_AT..SPLIT_AT + 16) else {
            return Ok(None);
        };
        if &sec[..8] != SPLIT_MAGIC {
            return Ok(None);
        }
        let len = get_u32(sec, 8) as usize;
        if len > SPLIT_MAX {
            return Err(SbError::Corrupt("split section length"));
        }
        let json = meta
            .get(SPLIT_AT + 16..SPLIT_AT + 16 + len)
            .ok_or(SbError::Corrupt("split section cut short"))?;
        if crate::kernels::crc32c(json) != get_u32(sec, 12) {
            return Err(SbError::Corrupt("split section checksum"));
        }
        let rec: SplitRecord =
            serde_json::from_slice(json).map_err(|_| SbError::Corrupt("split section"))?;
        let Some(crcs) = rec.map_crcs else {
            return Ok(Some((rec, SplitMaps::default())));
        };
        let at = bitmap_at(self.block_size) as usize;
        let bb = bitmap_bytes(self.bits) as usize;
        let words = self.bits.div_ceil(64) as usize;
        let mut maps: [Vec<u64>; 3] = Default::default();
        for (k, map) in maps.iter_mut().enumerate() {
            let off = at + (k + 1) * bb;
            let raw = meta
                .get(off..off + words * 8)
                .ok_or(SbError::Corrupt("split maps cut short"))?;
            if crate::kernels::crc32c_append(0, raw) != crcs[k] {
                return Err(SbError::Corrupt("split map checksum"));
            }
            *map = raw
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
        }
        let [track, owed, delta] = maps;
        Ok(Some((rec, SplitMaps { track, owed, delta })))
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
            sb.encode_meta(&[0b1010], None, &mut buf);
            assert_eq!(sb.decode_split(&buf), Ok(None));
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
    fn split_section_round_trip_and_damage() {
        let sb = sample(512);
        let rec = SplitRecord {
            image: Some(ImageRecord {
                name: "m0_pit".into(),
                split_time: 5,
                split_time_ns: 6,
                backed_up: false,
                backup: None,
            }),
            last_backup: None,
            map_crcs: None,
        };
        let maps = SplitMaps {
            track: vec![1],
            owed: vec![2],
            delta: vec![4],
        };
        let mut buf = vec![0u8; (meta_blocks_with_maps(sb.bits, 512) * 512) as usize];
        sb.encode_meta(&[8], Some((&rec, &maps)), &mut buf);
        let (r, m) = sb.decode_split(&buf).unwrap().unwrap();
        assert_eq!(r.image, rec.image);
        assert_eq!(m, maps);
        assert_eq!(sb.decode_bitmap(&buf), Some(vec![8]));
        let at = bitmap_at(512) as usize + 2 * bitmap_bytes(sb.bits) as usize;
        buf[at] ^= 1;
        assert!(
            sb.decode_split(&buf).is_err(),
            "a damaged owed map is found"
        );
    }

    #[test]
    fn impossible_shapes_are_refused() {
        let mut sb = sample(4096);
        sb.bits = 5;
        let mut buf = vec![0u8; 8192];
        sb.encode_meta(&[], None, &mut buf);
        assert_eq!(
            Superblock::decode(&buf),
            Err(SbError::Corrupt("bitmap size"))
        );
    }
}
