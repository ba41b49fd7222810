//! Safe, zero-copy access to Intel ISA-L (the system `libisal`, linked through pkg-config)
//! for strata's RAID and checksum paths.
//!
//! | module | contents |
//! | --- | --- |
//! | crate root ([`raid`]) | RAID-5/6 parity on caller buffers: [`xor_gen`], [`xor_acc`], [`xor_check`], [`pq_gen`], [`pq_check`] |
//! | [`crc`] | [`crc32c`] and [`crc32c_append`] over ISA-L's `crc32_iscsi`, with the `crc32c` crate's semantics |
//! | [`raid6`] | recovery of any two failed RAID-6 members: [`raid6_recover_two_data`], [`raid6_recover_data_and_p`], [`raid6_recover_data_and_q`], [`raid6_recover`] |
//! | [`gf`] | GF(2^8) helpers (polynomial 0x11d): `gf_mul`, `gf_inv`, generator matrices, matrix inversion, and [`gf::ec_encode`] (ISA-L's `ec_encode_data`) |
//! | [`portable`] | pure-Rust versions of the RAID kernels: the fallback and the benchmark baseline |
//! | `ffi` (private) | the hand-written `extern "C"` declarations and the only `unsafe` code |
//!
//! Every function works on the caller's buffers in place; the `void **` arrays ISA-L wants
//! are built on the stack (at most [`MAX_SOURCES`] sources, more is an error), so nothing
//! allocates.
//!
//! ISA-L's XOR and P+Q routines need aligned pointers and (for P+Q) a length multiple of 32.
//! The rule applied here: when every buffer starts on a [`FAST_ALIGN`]-byte boundary, ISA-L
//! handles the longest prefix that is a multiple of [`FAST_LEN_MULTIPLE`] bytes and the
//! portable code the rest; otherwise the portable code handles everything. Results are the
//! same either way. Note that ISA-L's `xor_gen` and `pq_gen` write with non-temporal
//! stores: the parity leaves the CPU caches, which suits parity that goes to a device next.
//!
//! RAID-6 here is the usual (Linux md, SPDK, ISA-L `pq_gen`) code: `P = Σ D_i` and
//! `Q = Σ 2^i · D_i` over GF(2^8) with polynomial 0x11d, `i` the data member's index.
#![deny(unsafe_code)]

pub mod crc;
mod ffi;
pub mod gf;
pub mod portable;
pub mod raid;
pub mod raid6;

pub use crc::{crc32c, crc32c_append};
pub use ffi::crc32c_append_in_place;
pub use raid::{pq_check, pq_gen, xor_acc, xor_check, xor_gen};
pub use raid6::{
    raid6_recover, raid6_recover_data_and_p, raid6_recover_data_and_q, raid6_recover_two_data,
};

/// Most source buffers (data members) one call accepts.
pub const MAX_SOURCES: usize = 32;

/// Pointer alignment (bytes) every buffer needs for the ISA-L path of the RAID kernels.
pub const FAST_ALIGN: usize = 32;

/// The ISA-L path of the RAID kernels handles lengths in multiples of this many bytes.
pub const FAST_LEN_MULTIPLE: usize = 64;

/// Why a kernel refused its arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No source buffer was given.
    #[error("no source buffer given")]
    NoSources,
    /// More buffers than the stack-built pointer arrays hold.
    #[error("{count} buffers given, at most {max} supported")]
    TooManySources {
        /// Buffers given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A buffer's length differs from the others'.
    #[error("buffer {index} is {len} bytes, expected {expected}")]
    LengthMismatch {
        /// Position of the buffer in the call's argument order (sources first).
        index: usize,
        /// Its length.
        len: usize,
        /// The length of the first buffer.
        expected: usize,
    },
    /// A member index is out of range.
    #[error("member index {index} out of range ({members} members)")]
    BadIndex {
        /// The index.
        index: usize,
        /// Number of members.
        members: usize,
    },
    /// The two failed members given are the same one.
    #[error("the failed members must be distinct (both are {0})")]
    SameIndex(usize),
    /// A matrix or table buffer does not have the size its dimensions need.
    #[error("matrix buffer of {len} bytes, {needed} needed")]
    BadMatrix {
        /// Its length.
        len: usize,
        /// What the dimensions need.
        needed: usize,
    },
    /// The matrix has no inverse.
    #[error("matrix is singular")]
    Singular,
}

/// Result of this crate's fallible functions.
pub type Result<T> = std::result::Result<T, Error>;

/// Checks that every length equals `expected`; `first_index` numbers the first one.
pub(crate) fn same_len(
    expected: usize,
    first_index: usize,
    lens: impl IntoIterator<Item = usize>,
) -> Result<()> {
    for (i, len) in lens.into_iter().enumerate() {
        if len != expected {
            return Err(Error::LengthMismatch {
                index: first_index + i,
                len,
                expected,
            });
        }
    }
    Ok(())
}

/// Whether a buffer starts on a [`FAST_ALIGN`] boundary (one of the conditions for the
/// ISA-L path).
pub fn is_aligned(buf: &[u8]) -> bool {
    (buf.as_ptr() as usize) & (FAST_ALIGN - 1) == 0
}
