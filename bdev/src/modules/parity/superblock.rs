//! The on-disk metadata of remote parity: one format for the parity volumes (P, Q) and the
//! data members, on the common volume header (volume uuid = the group's uuid, member index =
//! the data member's index in the group, or [`PARITY_INDEX`] for P and Q).
//!
//! Layout of a base: the header area ([`AREA`] bytes) from byte 0; a data member's
//! write-intent bitmap from byte [`bitmap_at`], then its rebuilt-region bitmap (regions a
//! replacement member has rebuilt ahead of its cursor, for host I/O; CRC in the body); the
//! volume's data from `data_offset` blocks.
//! A parity volume's body also lists the group's data members it knows (index and the name
//! of the bdev it reaches the member through), so the list survives a restart.

use crate::state_codes;
use crate::volume::ondisk::{get_u32, get_u64, put_u32, put_u64};
use crate::volume::superblock::{self as meta, Format, Header};
pub use crate::volume::superblock::{bitmap_bytes, SbError};
use uuid::Uuid;

/// Header + body bytes.
pub const AREA: usize = 4096;
pub const FORMAT: Format = Format {
    what: "parity",
    magic: b"STRATPG1",
    version: 1,
    area: AREA,
};
/// The member index in the header of a P or Q volume.
pub const PARITY_INDEX: u32 = u32::MAX;
/// [`Superblock::roles`]: the member sends deltas to P.
pub const ROLE_P: u8 = 1;
/// [`Superblock::roles`]: the member sends deltas to Q.
pub const ROLE_Q: u8 = 2;
/// Bitmap bytes at most (8 Mi regions).
pub const MAX_BITMAP_BYTES: u64 = 1 << 20;
/// Data starts at least this far into a base.
pub const MIN_DATA_OFFSET_BYTES: u64 = 1 << 20;
/// Data members a group can have: the sources of one GF(2^8) combine, less P.
pub const MAX_MEMBERS: usize = crate::kernels::MAX_COMBINE_SOURCES - 1;
/// Longest volume or member name the superblock keeps.
pub const NAME_MAX: usize = 100;
/// Longest name of a parity volume's member bdev the superblock keeps.
pub const MEMBER_NAME_MAX: usize = 59;

// Body layout (offsets in the body).
const KIND_AT: usize = 0;
const STATE_AT: usize = 1;
const ROLES_AT: usize = 2;
const BLOCK_SIZE_AT: usize = 4;
const NUM_BLOCKS_AT: usize = 8;
const DATA_OFFSET_AT: usize = 16;
const REGION_AT: usize = 24;
const BITS_AT: usize = 32;
const CURSOR_AT: usize = 40;
const MEMBER_COUNT_AT: usize = 48;
const NAME_LEN_AT: usize = 52;
const REBUILT_CRC_AT: usize = 56;
const MEMBERS_AT: usize = 160;
const MEMBER_BYTES: usize = 64;

/// What a base holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// P: the XOR of the data members.
    P,
    /// Q: Σ g^i · D_i over GF(2^8).
    Q,
    /// A data member's data.
    Data,
}

state_codes!(Kind {
    P = 1 => "p",
    Q = 2 => "q",
    Data = 3 => "data",
});

/// A data member's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Its data is in the parity: every write sends a delta.
    Active,
    /// Its data is being XORed into the parity (a new group, or a node added online):
    /// regions below the cursor are in it and send deltas, the rest do not yet.
    Folding,
    /// A replacement being rebuilt from the parity: regions below the cursor are rebuilt.
    Rebuilding,
}

state_codes!(MemberState {
    Active = 1 => "active",
    Folding = 2 => "folding",
    Rebuilding = 3 => "rebuilding",
});

#[derive(Clone, Debug, PartialEq)]
pub struct Superblock {
    pub group_uuid: Uuid,
    pub name: String,
    pub generation: u64,
    pub kind: Kind,
    /// Data member index ([`PARITY_INDEX`] for P and Q).
    pub index: u32,
    pub state: MemberState,
    pub block_size: u32,
    pub num_blocks: u64,
    pub data_offset: u64,
    /// A data member's bitmap: blocks per region and regions (0 for P and Q).
    pub region_blocks: u64,
    pub bits: u64,
    /// Fold or rebuild cursor (regions).
    pub cursor: u64,
    /// A data member's parity volumes ([`ROLE_P`] | [`ROLE_Q`]): it must be reopened with
    /// the same ones (a parity it stopped updating would silently go stale).
    pub roles: u8,
    /// A parity volume's data members: (index, bdev name).
    pub members: Vec<(u32, String)>,
}

/// Byte offset of a data member's bitmap.
pub fn bitmap_at(block_size: u32) -> u64 {
    (AREA as u64).max(block_size as u64)
}

/// Byte offset of a data member's rebuilt-region bitmap.
pub fn rebuilt_at(bits: u64, block_size: u32) -> u64 {
    bitmap_at(block_size) + bitmap_bytes(bits)
}

/// Blocks of metadata (header area and both bitmaps).
pub fn meta_blocks(bits: u64, block_size: u32) -> u64 {
    (rebuilt_at(bits, block_size) + bitmap_bytes(bits)).div_ceil(block_size as u64)
}

/// Where the data starts: after the metadata, at least [`MIN_DATA_OFFSET_BYTES`] in.
pub fn data_offset(bits: u64, block_size: u32) -> u64 {
    meta_blocks(bits, block_size).max(MIN_DATA_OFFSET_BYTES / block_size as u64)
}

impl Superblock {
    pub fn meta_blocks(&self) -> u64 {
        meta_blocks(self.bits, self.block_size)
    }

    /// Serialises header, body, the intent `bitmap` and the `rebuilt` regions into `out`
    /// (`meta_blocks()` blocks).
    pub fn encode_meta(&self, bitmap: &[u64], rebuilt: &[u64], out: &mut [u8]) {
        out.fill(0);
        let crc = meta::encode_bitmap(bitmap, self.bits, out, bitmap_at(self.block_size) as usize);
        let at = rebuilt_at(self.bits, self.block_size) as usize;
        let rebuilt_crc = meta::encode_bitmap(rebuilt, self.bits, out, at);
        let h = Header {
            volume_uuid: self.group_uuid,
            generation: self.generation,
            index: self.index,
        };
        FORMAT.seal(&h, crc, out, |b| {
            b[KIND_AT] = self.kind.code();
            b[STATE_AT] = self.state.code();
            b[ROLES_AT] = self.roles;
            put_u32(b, REBUILT_CRC_AT, rebuilt_crc);
            put_u32(b, BLOCK_SIZE_AT, self.block_size);
            put_u64(b, NUM_BLOCKS_AT, self.num_blocks);
            put_u64(b, DATA_OFFSET_AT, self.data_offset);
            put_u64(b, REGION_AT, self.region_blocks);
            put_u64(b, BITS_AT, self.bits);
            put_u64(b, CURSOR_AT, self.cursor);
            let name = self.name.as_bytes();
            let n = name.len().min(NAME_MAX);
            b[NAME_LEN_AT] = n as u8;
            b[NAME_LEN_AT + 1..NAME_LEN_AT + 1 + n].copy_from_slice(&name[..n]);
            let count = self.members.len().min(MAX_MEMBERS);
            put_u32(b, MEMBER_COUNT_AT, count as u32);
            for (k, (index, bdev)) in self.members.iter().take(count).enumerate() {
                let at = MEMBERS_AT + k * MEMBER_BYTES;
                put_u32(b, at, *index);
                let nb = bdev.as_bytes();
                let n = nb.len().min(MEMBER_NAME_MAX);
                b[at + 4] = n as u8;
                b[at + 5..at + 5 + n].copy_from_slice(&nb[..n]);
            }
        });
    }

    /// Parses the header area at the start of `raw`.
    pub fn decode(raw: &[u8]) -> Result<Superblock, SbError> {
        let (h, b) = FORMAT.open(raw)?;
        let text = |at: usize, max: usize| {
            let n = (b[at] as usize).min(max);
            std::str::from_utf8(&b[at + 1..at + 1 + n])
                .map(str::to_string)
                .map_err(|_| SbError::Corrupt("name"))
        };
        let count = get_u32(b, MEMBER_COUNT_AT) as usize;
        if count > MAX_MEMBERS {
            return Err(SbError::Corrupt("member count"));
        }
        let mut members = Vec::with_capacity(count);
        for k in 0..count {
            let at = MEMBERS_AT + k * MEMBER_BYTES;
            members.push((get_u32(b, at), text(at + 4, MEMBER_NAME_MAX)?));
        }
        let sb = Superblock {
            group_uuid: h.volume_uuid,
            name: text(NAME_LEN_AT, NAME_MAX)?,
            generation: h.generation,
            kind: Kind::from_code(b[KIND_AT]).ok_or(SbError::Corrupt("kind"))?,
            index: h.index,
            state: MemberState::from_code(b[STATE_AT]).ok_or(SbError::Corrupt("state"))?,
            block_size: get_u32(b, BLOCK_SIZE_AT),
            num_blocks: get_u64(b, NUM_BLOCKS_AT),
            data_offset: get_u64(b, DATA_OFFSET_AT),
            region_blocks: get_u64(b, REGION_AT),
            bits: get_u64(b, BITS_AT),
            cursor: get_u64(b, CURSOR_AT),
            roles: b[ROLES_AT],
            members,
        };
        sb.check()?;
        Ok(sb)
    }

    /// Refuses shapes this code cannot run (a damaged or hostile header).
    fn check(&self) -> Result<(), SbError> {
        if crate::modules::validate_block_size(self.block_size).is_err() {
            return Err(SbError::Corrupt("block size"));
        }
        if self.num_blocks == 0 {
            return Err(SbError::Corrupt("geometry"));
        }
        match self.kind {
            Kind::Data => {
                if self.index as usize >= MAX_MEMBERS
                    || self.region_blocks == 0
                    || self.bits != self.num_blocks.div_ceil(self.region_blocks)
                    || bitmap_bytes(self.bits) > MAX_BITMAP_BYTES
                    || self.cursor > self.bits
                {
                    return Err(SbError::Corrupt("data member geometry"));
                }
            }
            Kind::P | Kind::Q => {
                if self.index != PARITY_INDEX || self.bits != 0 {
                    return Err(SbError::Corrupt("parity geometry"));
                }
            }
        }
        if self.data_offset < self.meta_blocks() {
            return Err(SbError::Corrupt("data offset inside the metadata"));
        }
        Ok(())
    }

    /// A data member's bitmap stored in `meta`, or `None` when its CRC does not match.
    pub fn decode_bitmap(&self, meta: &[u8]) -> Option<Vec<u64>> {
        meta::decode_bitmap(meta, self.bits, bitmap_at(self.block_size) as usize)
    }

    /// A data member's rebuilt regions stored in `meta`, or `None` when their CRC (in the
    /// body) does not match.
    pub fn decode_rebuilt(&self, meta: &[u8]) -> Option<Vec<u64>> {
        let at = rebuilt_at(self.bits, self.block_size) as usize;
        let words = self.bits.div_ceil(64) as usize;
        let raw = meta.get(at..at + words * 8)?;
        let (_, body) = FORMAT.open(meta).ok()?;
        (crate::kernels::crc32c_append(0, raw) == get_u32(body, REBUILT_CRC_AT))
            .then(|| raw.chunks_exact(8).map(|c| get_u64(c, 0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_both_kinds() {
        let data = Superblock {
            group_uuid: Uuid::new_v4(),
            name: "D1".into(),
            generation: 3,
            kind: Kind::Data,
            index: 2,
            state: MemberState::Folding,
            block_size: 4096,
            num_blocks: 1000,
            data_offset: 256,
            region_blocks: 256,
            bits: 4,
            cursor: 1,
            roles: ROLE_P | ROLE_Q,
            members: vec![],
        };
        let mut buf = vec![0u8; (data.meta_blocks() * 4096) as usize];
        data.encode_meta(&[0b10], &[0b11], &mut buf);
        let got = Superblock::decode(&buf).unwrap();
        assert_eq!(got, data);
        assert_eq!(got.decode_bitmap(&buf), Some(vec![0b10]));
        assert_eq!(got.decode_rebuilt(&buf), Some(vec![0b11]));
        let at = rebuilt_at(data.bits, 4096) as usize;
        let mut damaged = buf.clone();
        damaged[at] ^= 4;
        assert_eq!(got.decode_rebuilt(&damaged), None, "rebuilt bitmap CRC");

        let p = Superblock {
            kind: Kind::Q,
            index: PARITY_INDEX,
            state: MemberState::Active,
            region_blocks: 0,
            bits: 0,
            cursor: 0,
            roles: 0,
            members: vec![(0, "D0n1".into()), (7, "D7n1".into())],
            ..data.clone()
        };
        p.encode_meta(&[], &[], &mut buf);
        assert_eq!(Superblock::decode(&buf).unwrap(), p);
        buf[100] ^= 1;
        assert_eq!(Superblock::decode(&buf), Err(SbError::Checksum));
    }
}
