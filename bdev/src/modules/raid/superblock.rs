//! The on-member superblock: who the array is, its shape, each member's state, a generation
//! number, and the write-intent bitmap that follows it.
//!
//! Layout of a member: the superblock ([`SB_BYTES`], CRC32C protected) from block 0 over
//! [`sb_blocks`] blocks, then the write-intent bitmap, then (at `data_offset`, 1 MiB) data.
//! [`Superblock::encode_meta`] and [`decode_bitmap`] are the only code that knows where the
//! bitmap sits. Every metadata update writes superblock and bitmap together and
//! bumps the generation, so the member with the highest generation speaks for the array.

use super::geometry::Level;
use crate::state_codes;
use crate::volume::ondisk::{get_u32, get_u64, put_u32, put_u64};
pub use crate::volume::superblock::SbError;
use crate::volume::superblock::{self as meta, Format, Header};
use uuid::Uuid;

/// Bytes of block 0 the superblock uses (independent of the block size).
pub const SB_BYTES: usize = 1024;
/// RAID members' metadata: the common header, then the body below.
pub const FORMAT: Format = Format {
    what: "RAID",
    magic: b"STRATRD1",
    version: 2,
    area: SB_BYTES,
};
pub const MAX_MEMBERS: usize = 32;
/// Data starts this far into each member, leaving room for superblock and bitmap.
pub const DATA_OFFSET_BYTES: u64 = 1 << 20;
/// Bitmap bytes at most (so each metadata update is a small write).
pub const MAX_BITMAP_BYTES: u64 = 16 << 10;

// Body layout (offsets in the body, after the common header).
const LEVEL_AT: usize = 0;
const MEMBERS_COUNT_AT: usize = 1;
const BLOCK_SIZE_AT: usize = 4;
const STRIP_AT: usize = 8;
const DATA_OFFSET_AT: usize = 16;
const MEMBER_BLOCKS_AT: usize = 24;
const REGION_AT: usize = 32;
const BITS_AT: usize = 40;
const NAME_AT: usize = 48;
const NAME_MAX: usize = 64;
const REBUILD_CHECKPOINT_AT: usize = 112;
/// Per member: state (1 byte), then at +8 its concat size.
const MEMBERS_AT: usize = 120;
const MEMBER_BYTES: usize = 24;

/// A member's state as recorded in the superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// In sync.
    Active,
    /// Failed or removed: its data is not trusted.
    Failed,
    /// Being rebuilt (not trusted after a restart: the rebuild starts over).
    Rebuilding,
    /// The slot has no member.
    Missing,
}

state_codes!(MemberState {
    Active = 1 => "active",
    Failed = 2 => "failed",
    Rebuilding = 3 => "rebuilding",
    Missing = 4 => "missing",
});

#[derive(Clone, Debug, PartialEq)]
pub struct Superblock {
    pub array_uuid: Uuid,
    pub name: String,
    pub generation: u64,
    pub level: Level,
    pub members: usize,
    /// Which slot the member carrying this copy occupies.
    pub index: usize,
    pub block_size: u32,
    pub strip_blocks: u64,
    pub data_offset: u64,
    pub member_blocks: u64,
    /// Stripes per bitmap bit, and the number of bits.
    pub region_stripes: u64,
    pub bitmap_bits: u64,
    pub states: Vec<MemberState>,
    /// concat: data blocks per member.
    pub concat: Vec<u64>,
    /// Stripes a rebuilding member holds rebuilt and durable: a restarted rebuild resumes
    /// here (0 when no rebuild runs).
    pub rebuild_checkpoint: u64,
}

/// Bitmap blocks for `bits` bits at `block_size`.
pub fn bitmap_blocks(bits: u64, block_size: u32) -> u64 {
    bits.div_ceil(8).div_ceil(block_size as u64).max(1)
}

/// Stripes per bitmap bit so the bitmap fits [`MAX_BITMAP_BYTES`].
pub fn region_stripes(stripes: u64) -> u64 {
    stripes.div_ceil(MAX_BITMAP_BYTES * 8).max(1)
}

/// Blocks the superblock itself occupies.
pub fn sb_blocks(block_size: u32) -> u64 {
    (SB_BYTES as u64).div_ceil(block_size as u64)
}

/// Blocks reserved at the start of each member (superblock + bitmap), in member blocks.
pub fn data_offset_blocks(block_size: u32) -> u64 {
    (DATA_OFFSET_BYTES / block_size as u64)
        .max(sb_blocks(block_size) + bitmap_blocks(MAX_BITMAP_BYTES * 8, block_size))
}

/// The bitmap stored after the superblock in `meta` (the metadata blocks read from block 0).
/// A bitmap whose CRC does not match is not trusted: every region counts as dirty.
pub fn decode_bitmap(sb: &Superblock, meta: &[u8]) -> Vec<u64> {
    let at = (sb_blocks(sb.block_size) * sb.block_size as u64) as usize;
    meta::decode_bitmap(meta, sb.bitmap_bits, at)
        .unwrap_or_else(|| vec![u64::MAX; sb.bitmap_bits.div_ceil(64) as usize])
}

impl Superblock {
    /// Metadata blocks to write: superblock block + bitmap blocks.
    pub fn meta_blocks(&self) -> u64 {
        sb_blocks(self.block_size) + bitmap_blocks(self.bitmap_bits, self.block_size)
    }

    /// Serialises superblock and `bitmap` into `out` (`meta_blocks()` blocks).
    pub fn encode_meta(&self, bitmap: &[u64], out: &mut [u8]) {
        out.fill(0);
        let at = (sb_blocks(self.block_size) * self.block_size as u64) as usize;
        let crc = meta::encode_bitmap(bitmap, self.bitmap_bits, out, at);
        self.seal(crc, out);
    }

    /// Whether the shape is one this code can run: the level's member count, strips that
    /// tile the members, a bitmap with a bit per region, metadata that fits before the data.
    pub fn check_geometry(&self) -> Result<(), SbError> {
        let bad = |what| Err(SbError::Corrupt(what));
        if self.members < self.level.min_members() || self.states.len() != self.members {
            return bad("member count for the level");
        }
        if !self.block_size.is_power_of_two() || !(512..=65536).contains(&self.block_size) {
            return bad("block size");
        }
        if self.member_blocks == 0 || !self.member_blocks.is_multiple_of(self.strip_blocks) {
            return bad("member size");
        }
        let stripes = self.member_blocks / self.strip_blocks;
        if self.bitmap_bits != stripes.div_ceil(self.region_stripes) {
            return bad("bitmap size");
        }
        if self.data_offset < self.meta_blocks()
            || self.data_offset.checked_add(self.member_blocks).is_none()
        {
            return bad("data offset");
        }
        if self.level == Level::Concat
            && (self
                .concat
                .iter()
                .any(|&c| c % self.strip_blocks != 0 || c < self.member_blocks)
                || self.concat.iter().all(|&c| c == 0))
        {
            return bad("concat member sizes");
        }
        Ok(())
    }

    /// Serialises the superblock into `out[..SB_BYTES]` (the rest of `out` is the bitmap's),
    /// with an empty bitmap's CRC.
    pub fn encode(&self, out: &mut [u8]) {
        self.seal(meta::encode_bitmap(&[], self.bitmap_bits, &mut [], 0), out);
    }

    fn seal(&self, bitmap_crc: u32, out: &mut [u8]) {
        let h = Header {
            volume_uuid: self.array_uuid,
            generation: self.generation,
            index: self.index as u32,
        };
        FORMAT.seal(&h, bitmap_crc, out, |b| {
            b[LEVEL_AT] = self.level.code();
            b[MEMBERS_COUNT_AT] = self.members as u8;
            put_u32(b, BLOCK_SIZE_AT, self.block_size);
            put_u64(b, STRIP_AT, self.strip_blocks);
            put_u64(b, DATA_OFFSET_AT, self.data_offset);
            put_u64(b, MEMBER_BLOCKS_AT, self.member_blocks);
            put_u64(b, REGION_AT, self.region_stripes);
            put_u64(b, BITS_AT, self.bitmap_bits);
            put_u64(b, REBUILD_CHECKPOINT_AT, self.rebuild_checkpoint);
            let name = self.name.as_bytes();
            let n = name.len().min(NAME_MAX);
            b[NAME_AT..NAME_AT + n].copy_from_slice(&name[..n]);
            for (i, st) in self.states.iter().enumerate() {
                let at = MEMBERS_AT + i * MEMBER_BYTES;
                b[at] = st.code();
                put_u64(b, at + 8, self.concat.get(i).copied().unwrap_or(0));
            }
        });
    }

    pub fn decode(buf: &[u8]) -> Result<Superblock, SbError> {
        let (h, b) = FORMAT.open(buf)?;
        let level = Level::from_code(b[LEVEL_AT]).ok_or(SbError::Corrupt("level"))?;
        let members = b[MEMBERS_COUNT_AT] as usize;
        let index = h.index as usize;
        if members == 0 || members > MAX_MEMBERS || index >= members {
            return Err(SbError::Corrupt("member count or index"));
        }
        let mut states = Vec::with_capacity(members);
        let mut concat = Vec::new();
        for i in 0..members {
            let at = MEMBERS_AT + i * MEMBER_BYTES;
            states.push(MemberState::from_code(b[at]).ok_or(SbError::Corrupt("member state"))?);
            if level == Level::Concat {
                concat.push(get_u64(b, at + 8));
            }
        }
        let raw_name = &b[NAME_AT..NAME_AT + NAME_MAX];
        let name_end = raw_name.iter().position(|&c| c == 0).unwrap_or(NAME_MAX);
        let name = String::from_utf8(raw_name[..name_end].to_vec())
            .map_err(|_| SbError::Corrupt("name"))?;
        let sb = Superblock {
            array_uuid: h.volume_uuid,
            name,
            generation: h.generation,
            level,
            members,
            index,
            block_size: get_u32(b, BLOCK_SIZE_AT),
            strip_blocks: get_u64(b, STRIP_AT),
            data_offset: get_u64(b, DATA_OFFSET_AT),
            member_blocks: get_u64(b, MEMBER_BLOCKS_AT),
            region_stripes: get_u64(b, REGION_AT),
            bitmap_bits: get_u64(b, BITS_AT),
            states,
            concat,
            rebuild_checkpoint: get_u64(b, REBUILD_CHECKPOINT_AT),
        };
        if sb.strip_blocks == 0 || sb.region_stripes == 0 || sb.block_size == 0 {
            return Err(SbError::Corrupt("geometry"));
        }
        if sb.bitmap_bits.div_ceil(8) > MAX_BITMAP_BYTES {
            return Err(SbError::Corrupt("bitmap size"));
        }
        sb.check_geometry()?;
        Ok(sb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            array_uuid: Uuid::new_v4(),
            name: "r5".into(),
            generation: 7,
            level: Level::Raid5,
            members: 4,
            index: 2,
            block_size: 4096,
            strip_blocks: 16,
            data_offset: 256,
            member_blocks: 1024,
            region_stripes: 1,
            bitmap_bits: 64,
            states: vec![
                MemberState::Active,
                MemberState::Failed,
                MemberState::Active,
                MemberState::Rebuilding,
            ],
            concat: vec![],
            rebuild_checkpoint: 0,
        }
    }

    #[test]
    fn round_trip_and_corruption() {
        let sb = sample();
        let mut buf = vec![0u8; 4096];
        sb.encode(&mut buf);
        assert_eq!(Superblock::decode(&buf), Ok(sb));
        buf[100] ^= 1;
        assert_eq!(Superblock::decode(&buf), Err(SbError::Checksum));
        assert_eq!(Superblock::decode(&[0u8; 4096]), Err(SbError::NoMagic));
    }

    #[test]
    fn bitmap_follows_a_multi_block_superblock() {
        // 512-byte blocks: the superblock takes two blocks and the bitmap starts after them.
        let mut sb = sample();
        sb.block_size = 512;
        sb.states = vec![MemberState::Active; 4];
        sb.members = 4;
        let bitmap = vec![0xdead_beef_u64];
        let mut buf = vec![0u8; (sb.meta_blocks() * 512) as usize];
        sb.encode_meta(&bitmap, &mut buf);
        assert_eq!(Superblock::decode(&buf), Ok(sb.clone()));
        assert_eq!(decode_bitmap(&sb, &buf), bitmap);
    }

    #[test]
    fn impossible_shapes_are_refused() {
        let mut buf = vec![0u8; 4096];
        for f in [
            |s: &mut Superblock| s.bitmap_bits = 0,
            |s: &mut Superblock| s.members = 2,
            |s: &mut Superblock| s.data_offset = 0,
            |s: &mut Superblock| s.member_blocks = 1000,
            |s: &mut Superblock| s.block_size = 3000,
        ] {
            let mut sb = sample();
            f(&mut sb);
            sb.index = sb.index.min(sb.members - 1);
            sb.states.truncate(sb.members);
            sb.encode(&mut buf);
            assert!(
                matches!(Superblock::decode(&buf), Err(SbError::Corrupt(_))),
                "{sb:?}"
            );
        }
    }
}
