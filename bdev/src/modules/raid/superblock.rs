//! The on-member superblock: who the array is, its shape, each member's state, a generation
//! number, and the write-intent bitmap that follows it.
//!
//! Layout of a member: the superblock ([`SB_BYTES`], CRC32C protected) from block 0 over
//! [`sb_blocks`] blocks, then the write-intent bitmap, then (at `data_offset`, 1 MiB) data.
//! [`Superblock::encode_meta`] and [`decode_bitmap`] are the only code that knows where the
//! bitmap sits. Every metadata update writes superblock and bitmap together and
//! bumps the generation, so the member with the highest generation speaks for the array.

use super::geometry::Level;
use crate::kernels;
use crate::volume::ondisk::{get_u32, get_u64, put_u32, put_u64};
use uuid::Uuid;

pub const MAGIC: &[u8; 8] = b"STRATRD1";
pub const VERSION: u32 = 1;
/// Bytes of block 0 the superblock uses (independent of the block size).
pub const SB_BYTES: usize = 1024;
pub const MAX_MEMBERS: usize = 32;
/// Data starts this far into each member, leaving room for superblock and bitmap.
pub const DATA_OFFSET_BYTES: u64 = 1 << 20;
/// Bitmap bytes at most (so each metadata update is a small write).
pub const MAX_BITMAP_BYTES: u64 = 16 << 10;

const MEMBERS_AT: usize = 160;
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

impl MemberState {
    pub fn code(self) -> u8 {
        match self {
            MemberState::Active => 1,
            MemberState::Failed => 2,
            MemberState::Rebuilding => 3,
            MemberState::Missing => 4,
        }
    }
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => MemberState::Active,
            2 => MemberState::Failed,
            3 => MemberState::Rebuilding,
            4 => MemberState::Missing,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Active => "active",
            MemberState::Failed => "failed",
            MemberState::Rebuilding => "rebuilding",
            MemberState::Missing => "missing",
        }
    }
}

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
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SbError {
    #[error("no strata RAID superblock")]
    NoMagic,
    #[error("superblock checksum mismatch")]
    Checksum,
    #[error("unsupported superblock version {0}")]
    Version(u32),
    #[error("corrupt superblock: {0}")]
    Corrupt(&'static str),
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
pub fn decode_bitmap(sb: &Superblock, meta: &[u8]) -> Vec<u64> {
    let at = (sb_blocks(sb.block_size) * sb.block_size as u64) as usize;
    let raw = meta.get(at..).unwrap_or(&[]);
    (0..sb.bitmap_bits.div_ceil(64) as usize)
        .map(|i| {
            let mut w = [0u8; 8];
            if let Some(s) = raw.get(i * 8..i * 8 + 8) {
                w.copy_from_slice(s);
            }
            u64::from_le_bytes(w)
        })
        .collect()
}

impl Superblock {
    /// Metadata blocks to write: superblock block + bitmap blocks.
    pub fn meta_blocks(&self) -> u64 {
        sb_blocks(self.block_size) + bitmap_blocks(self.bitmap_bits, self.block_size)
    }

    /// Serialises superblock and `bitmap` into `out` (`meta_blocks()` blocks).
    pub fn encode_meta(&self, bitmap: &[u64], out: &mut [u8]) {
        out.fill(0);
        self.encode(out);
        let at = (sb_blocks(self.block_size) * self.block_size as u64) as usize;
        for (i, w) in bitmap.iter().enumerate() {
            if let Some(d) = out.get_mut(at + i * 8..at + i * 8 + 8) {
                d.copy_from_slice(&w.to_le_bytes());
            }
        }
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

    /// Serialises the superblock into `out[..SB_BYTES]` (the rest of `out` is the bitmap's).
    pub fn encode(&self, out: &mut [u8]) {
        let b = &mut out[..SB_BYTES];
        b.fill(0);
        b[0..8].copy_from_slice(MAGIC);
        put_u32(b, 8, VERSION);
        b[16..32].copy_from_slice(self.array_uuid.as_bytes());
        put_u64(b, 32, self.generation);
        b[40] = self.level.code();
        b[41] = self.members as u8;
        b[42] = self.index as u8;
        put_u32(b, 44, self.block_size);
        put_u64(b, 48, self.strip_blocks);
        put_u64(b, 56, self.data_offset);
        put_u64(b, 64, self.member_blocks);
        put_u64(b, 72, self.region_stripes);
        put_u64(b, 80, self.bitmap_bits);
        let name = self.name.as_bytes();
        let n = name.len().min(64);
        b[88..88 + n].copy_from_slice(&name[..n]);
        for (i, st) in self.states.iter().enumerate() {
            let at = MEMBERS_AT + i * MEMBER_BYTES;
            b[at] = st.code();
            put_u64(b, at + 8, self.concat.get(i).copied().unwrap_or(0));
        }
        let crc = kernels::crc32c(b);
        put_u32(b, 12, crc);
    }

    pub fn decode(buf: &[u8]) -> Result<Superblock, SbError> {
        if buf.len() < SB_BYTES || &buf[0..8] != MAGIC {
            return Err(SbError::NoMagic);
        }
        let mut b = [0u8; SB_BYTES];
        b.copy_from_slice(&buf[..SB_BYTES]);
        let crc = get_u32(&b, 12);
        put_u32(&mut b, 12, 0);
        if kernels::crc32c(&b) != crc {
            return Err(SbError::Checksum);
        }
        let v = get_u32(&b, 8);
        if v != VERSION {
            return Err(SbError::Version(v));
        }
        let level = Level::from_code(b[40]).ok_or(SbError::Corrupt("level"))?;
        let members = b[41] as usize;
        let index = b[42] as usize;
        if members == 0 || members > MAX_MEMBERS || index >= members {
            return Err(SbError::Corrupt("member count or index"));
        }
        let mut states = Vec::with_capacity(members);
        let mut concat = Vec::new();
        for i in 0..members {
            let at = MEMBERS_AT + i * MEMBER_BYTES;
            states.push(MemberState::from_code(b[at]).ok_or(SbError::Corrupt("member state"))?);
            if level == Level::Concat {
                concat.push(get_u64(&b, at + 8));
            }
        }
        let name_end = b[88..152].iter().position(|&c| c == 0).unwrap_or(64);
        let name = String::from_utf8(b[88..88 + name_end].to_vec())
            .map_err(|_| SbError::Corrupt("name"))?;
        let sb = Superblock {
            array_uuid: Uuid::from_slice(&b[16..32]).map_err(|_| SbError::Corrupt("uuid"))?,
            name,
            generation: get_u64(&b, 32),
            level,
            members,
            index,
            block_size: get_u32(&b, 44),
            strip_blocks: get_u64(&b, 48),
            data_offset: get_u64(&b, 56),
            member_blocks: get_u64(&b, 64),
            region_stripes: get_u64(&b, 72),
            bitmap_bits: get_u64(&b, 80),
            states,
            concat,
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
