//! The on-disk metadata format every volume member carries at its start: a common header,
//! a module's body after it in the same CRC-protected area, and (elsewhere in the metadata
//! blocks, where the module puts it) the bitmap, protected by its own CRC kept in the header
//! so a damaged bitmap is detected while the header still says whose member this is.
//!
//! Header layout (little-endian):
//!
//! | bytes  | field |
//! |--------|-------|
//! | 0..8   | magic (one per volume type) |
//! | 8..12  | format version |
//! | 12..16 | CRC32C of the whole area with this field zero |
//! | 16..32 | volume uuid |
//! | 32..40 | generation (bumped by every metadata write: the newest member speaks) |
//! | 40..44 | member index (RAID slot, mirror role, ...) |
//! | 44..48 | CRC32C of the bitmap words |
//! | 48..64 | reserved (zero) |
//! | 64..   | the module's body, up to the end of the area |

use super::ondisk::{get_u32, get_u64, put_u32, put_u64};
use crate::kernels;
use uuid::Uuid;

/// Where a module's body starts in the area.
pub const BODY_AT: usize = 64;
const VERSION_AT: usize = 8;
const CRC_AT: usize = 12;
const UUID_AT: usize = 16;
const GENERATION_AT: usize = 32;
const INDEX_AT: usize = 40;
const BITMAP_CRC_AT: usize = 44;

/// The fields every member's metadata has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub volume_uuid: Uuid,
    pub generation: u64,
    pub index: u32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SbError {
    #[error("no strata superblock of this volume type")]
    NoMagic,
    #[error("superblock checksum mismatch")]
    Checksum,
    #[error("unsupported superblock version {0}")]
    Version(u32),
    #[error("corrupt superblock: {0}")]
    Corrupt(&'static str),
}

/// One volume type's metadata format.
#[derive(Clone, Copy, Debug)]
pub struct Format {
    /// Volume type, for messages ("RAID", "mirror").
    pub what: &'static str,
    pub magic: &'static [u8; 8],
    pub version: u32,
    /// Bytes of header + body (independent of the block size).
    pub area: usize,
}

impl Format {
    /// Writes the header, and the body `body` fills, into `out[..area]` and seals it with
    /// its CRC. `bitmap_crc` is [`encode_bitmap`]'s result (0 without a bitmap).
    pub fn seal(&self, h: &Header, bitmap_crc: u32, out: &mut [u8], body: impl FnOnce(&mut [u8])) {
        let b = &mut out[..self.area];
        b.fill(0);
        b[..8].copy_from_slice(self.magic);
        put_u32(b, VERSION_AT, self.version);
        b[UUID_AT..UUID_AT + 16].copy_from_slice(h.volume_uuid.as_bytes());
        put_u64(b, GENERATION_AT, h.generation);
        put_u32(b, INDEX_AT, h.index);
        put_u32(b, BITMAP_CRC_AT, bitmap_crc);
        body(&mut b[BODY_AT..]);
        let crc = kernels::crc32c(b);
        put_u32(b, CRC_AT, crc);
    }

    /// Checks magic, CRC and version of the area at the start of `raw`; returns the header
    /// and the body bytes.
    pub fn open<'a>(&self, raw: &'a [u8]) -> Result<(Header, &'a [u8]), SbError> {
        let b = match raw.get(..self.area) {
            Some(b) if &b[..8] == self.magic => b,
            _ => return Err(SbError::NoMagic),
        };
        // The CRC covers the area with its own field zero: no copy needed.
        let crc = kernels::crc32c_append(kernels::crc32c(&b[..CRC_AT]), &[0; 4]);
        let crc = kernels::crc32c_append(crc, &b[CRC_AT + 4..]);
        if crc != get_u32(b, CRC_AT) {
            return Err(SbError::Checksum);
        }
        let v = get_u32(b, VERSION_AT);
        if v != self.version {
            return Err(SbError::Version(v));
        }
        let volume_uuid =
            Uuid::from_slice(&b[UUID_AT..UUID_AT + 16]).map_err(|_| SbError::Corrupt("uuid"))?;
        let h = Header {
            volume_uuid,
            generation: get_u64(b, GENERATION_AT),
            index: get_u32(b, INDEX_AT),
        };
        Ok((h, &b[BODY_AT..]))
    }
}

/// Bytes of bitmap for `bits` regions (whole u64 words).
pub fn bitmap_bytes(bits: u64) -> u64 {
    bits.div_ceil(64) * 8
}

/// Writes the first `bits` bits of `words` (missing words as zero) at `out[at..]`; returns
/// their CRC for the header.
pub fn encode_bitmap(words: &[u64], bits: u64, out: &mut [u8], at: usize) -> u32 {
    let mut crc = 0;
    for i in 0..bits.div_ceil(64) as usize {
        let w = words.get(i).copied().unwrap_or(0).to_le_bytes();
        crc = kernels::crc32c_append(crc, &w);
        if let Some(d) = out.get_mut(at + i * 8..at + i * 8 + 8) {
            d.copy_from_slice(&w);
        }
    }
    crc
}

/// The bitmap of `bits` bits at `meta[at..]`, or `None` when it is cut short or its CRC
/// does not match the one in the header at the start of `meta` (damaged or dropped).
pub fn decode_bitmap(meta: &[u8], bits: u64, at: usize) -> Option<Vec<u64>> {
    let words = bits.div_ceil(64) as usize;
    let raw = meta.get(at..at + words * 8)?;
    let crc = kernels::crc32c_append(0, raw);
    let stored = get_u32(meta.get(..BODY_AT)?, BITMAP_CRC_AT);
    (crc == stored).then(|| {
        raw.chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect()
    })
}

/// The one-byte on-disk codes and the names of a state enum, from one table:
/// `state_codes!(LegState { InSync = 1 => "in_sync", ... })`.
#[macro_export]
macro_rules! state_codes {
    ($ty:ident { $($v:ident = $code:literal => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The on-disk code.
            pub fn code(self) -> u8 {
                match self { $($ty::$v => $code),+ }
            }
            /// The state an on-disk code stands for.
            pub fn from_code(c: u8) -> Option<Self> {
                match c { $($code => Some($ty::$v),)+ _ => None }
            }
            /// The name RPCs report.
            pub fn name(self) -> &'static str {
                match self { $($ty::$v => $name),+ }
            }
            /// The state of a name RPCs report (and the cluster store keeps).
            pub fn from_name(n: &str) -> Option<Self> {
                match n { $($name => Some($ty::$v),)+ _ => None }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Format = Format {
        what: "test",
        magic: b"STRATTS1",
        version: 3,
        area: 256,
    };

    #[test]
    fn header_round_trip_and_damage() {
        let h = Header {
            volume_uuid: Uuid::new_v4(),
            generation: 9,
            index: 2,
        };
        let mut buf = vec![0u8; 1024];
        let crc = encode_bitmap(&[5, 6], 100, &mut buf, 512);
        F.seal(&h, crc, &mut buf, |b| b[0] = 42);
        let (got, body) = F.open(&buf).unwrap();
        assert_eq!(got, h);
        assert_eq!(body[0], 42);
        assert_eq!(body.len(), 256 - BODY_AT);
        assert_eq!(decode_bitmap(&buf, 100, 512), Some(vec![5, 6]));
        buf[513] ^= 1;
        assert_eq!(decode_bitmap(&buf, 100, 512), None, "damaged bitmap");
        assert!(F.open(&buf).is_ok(), "the header still opens");
        buf[BODY_AT] ^= 1;
        assert_eq!(F.open(&buf), Err(SbError::Checksum));
        assert_eq!(F.open(&[0u8; 256]), Err(SbError::NoMagic));
        assert_eq!(F.open(&buf[..100]), Err(SbError::NoMagic), "short");
        let mut v = vec![0u8; 256];
        Format { version: 4, ..F }.seal(&h, 0, &mut v, |_| {});
        assert_eq!(F.open(&v), Err(SbError::Version(4)));
    }
}
