//! Data kernels the bdevs apply to buffers in place: XOR, RAID-6 P+Q, CRC32C and RAID-6
//! recovery.
//!
//! Each function uses whichever implementation measured faster on `bench/benches/kernels.rs`
//! (`cargo bench -p strata-bench --bench kernels`; ISA-L through `strata-isal` against the
//! pure-Rust code in `strata_isal::portable`):
//!
//! | function | implementation | why |
//! | --- | --- | --- |
//! | [`crc32c`], [`crc32c_append`] | ISA-L `crc32_iscsi` | 22.7 vs 17.9 GiB/s at 4 KiB, 22.8 vs 21.4 at 64 KiB, even at 1 MiB (`crc32c` crate) |
//! | [`xor_into`], [`xor_acc`] (`dst ^= src`) | portable | ISA-L's in-place xor_gen writes with non-temporal stores: 10-18 GiB/s against 63-84 |
//! | [`xor_gen`] | ISA-L from [`XOR_GEN_ISAL_MIN`] bytes of sources, portable below | 4 × 4 KiB: portable 57 vs 43-53 GiB/s; 8 × 4 KiB and more: ISA-L 63-84 vs 45-59 |
//! | [`pq_gen`] | portable (Horner's rule) | libisal 2.30's pq_gen reaches 3-17 GiB/s on this CPU (AMD EPYC; 5.5 GB/s from C too), the portable code 26-30 |
//! | [`xor_check`] | ISA-L | 51-68 vs 22-24 GiB/s (8 + 1 blocks) |
//! | [`pq_check`] | ISA-L | 35-37 vs 19-20 GiB/s (4 + 2) |
//! | RAID-6 recovery | ISA-L `ec_encode_data` | one pass over the survivors; no comparable portable code |
//!
//! All the RAID functions take the caller's buffers (no copies) and check their arguments:
//! same lengths, 1 to [`MAX_SOURCES`] sources.

use strata_isal::portable;
pub use strata_isal::{
    raid6_recover, raid6_recover_data_and_p, raid6_recover_data_and_q, raid6_recover_two_data,
    Error as KernelError, MAX_SOURCES,
};

/// [`xor_gen`] uses ISA-L when the sources hold at least this many bytes in all.
pub const XOR_GEN_ISAL_MIN: usize = 32 << 10;

/// Whether [`xor_check`] uses ISA-L (`xor_check`) rather than the portable check.
pub const XOR_CHECK_ISAL: bool = true;

/// Whether [`pq_check`] uses ISA-L (`pq_check`) rather than the portable check.
pub const PQ_CHECK_ISAL: bool = true;

/// GF(2^8) (polynomial 0x11d): `a · b`, the inverse, and `2^i` (data member i's RAID-6 /
/// Q coefficient).
pub use strata_isal::gf::{gf_inv, gf_mul, gf_pow2};

/// `dest = Σ coefs[j] · sources[j]` in GF(2^8) over whole buffers (ISA-L `ec_encode_data`):
/// with all coefficients 1 it is an XOR of the sources. Remote parity uses it to scale a
/// delta for Q, to reconstruct a lost member from P or Q and the survivors, and to verify.
pub fn gf_combine(coefs: &[u8], sources: &[&[u8]], dest: &mut [u8]) -> Result<(), KernelError> {
    strata_isal::gf::ec_encode(coefs, sources, &mut [dest])
}

/// Most sources of one [`gf_combine`] call.
pub const MAX_COMBINE_SOURCES: usize = strata_isal::gf::MAX_EC_SOURCES;

/// `dst ^= src` over the common length.
#[inline]
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    portable::xor_into(dst, src);
}

/// CRC32C (Castagnoli, iSCSI) of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    strata_isal::crc32c(data)
}

/// Continues a CRC32C over more data.
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    strata_isal::crc32c_append(crc, data)
}

/// Continues a CRC32C over bytes `off..off+len` of a device's backing store, in place (no
/// copy, no reference into memory other reactors may be writing). None if out of bounds.
pub fn crc32c_append_region(
    crc: u32,
    region: &strata_reactor::dma::DmaRegion,
    off: usize,
    len: usize,
) -> Option<u32> {
    let p = region.raw_range(off, len)?;
    // SAFETY: `raw_range` checked the range lies in the region's mapping, which `region`
    // keeps mapped for this call; ISA-L only reads through the pointer.
    Some(unsafe { strata_isal::crc32c_append_in_place(crc, p, len) })
}

/// A per-chunk digest being computed over data fed piece by piece (`Checksum` I/O).
pub enum ChunkHasher {
    Crc32c(u32),
    Sha256(Box<sha2::Sha256>),
}

impl ChunkHasher {
    pub fn new(alg: crate::io::ChecksumAlg) -> ChunkHasher {
        use sha2::Digest;
        match alg {
            crate::io::ChecksumAlg::Crc32c => ChunkHasher::Crc32c(0),
            crate::io::ChecksumAlg::Sha256 => ChunkHasher::Sha256(Box::new(sha2::Sha256::new())),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest;
        match self {
            ChunkHasher::Crc32c(c) => *c = crc32c_append(*c, data),
            ChunkHasher::Sha256(h) => h.update(data),
        }
    }

    /// The digest so far; the hasher restarts for the next chunk.
    pub fn finish(&mut self) -> smallvec::SmallVec<[u8; 32]> {
        use sha2::Digest;
        match self {
            ChunkHasher::Crc32c(c) => {
                let d = smallvec::SmallVec::from_slice(&c.to_le_bytes());
                *c = 0;
                d
            }
            ChunkHasher::Sha256(h) => smallvec::SmallVec::from_slice(&h.finalize_reset()),
        }
    }
}

/// Digest of one chunk of data.
pub fn digest(alg: crate::io::ChecksumAlg, data: &[u8]) -> smallvec::SmallVec<[u8; 32]> {
    let mut h = ChunkHasher::new(alg);
    h.update(data);
    h.finish()
}

/// Checks a kernel's arguments the way `strata_isal` does: 1 to `max` sources, every
/// length equal to `len`.
fn check_args<'a>(
    sources: &[&'a [u8]],
    max: usize,
    len: usize,
    more: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), KernelError> {
    if sources.is_empty() {
        return Err(KernelError::NoSources);
    }
    if sources.len() > max {
        return Err(KernelError::TooManySources {
            count: sources.len(),
            max,
        });
    }
    for (index, b) in sources.iter().copied().chain(more).enumerate() {
        if b.len() != len {
            return Err(KernelError::LengthMismatch {
                index,
                len: b.len(),
                expected: len,
            });
        }
    }
    Ok(())
}

/// `dest = XOR of sources` (RAID-5 parity of a full stripe, or a rebuilt member).
pub fn xor_gen(sources: &[&[u8]], dest: &mut [u8]) -> Result<(), KernelError> {
    if sources.len().saturating_mul(dest.len()) >= XOR_GEN_ISAL_MIN {
        return strata_isal::xor_gen(sources, dest);
    }
    check_args(sources, MAX_SOURCES, dest.len(), [])?;
    portable::xor_gen(sources, dest);
    Ok(())
}

/// `dest ^= XOR of sources` in place (read-modify-write parity update, `xor_write`).
pub fn xor_acc(dest: &mut [u8], sources: &[&[u8]]) -> Result<(), KernelError> {
    if sources.is_empty() {
        return Ok(());
    }
    check_args(sources, MAX_SOURCES, dest.len(), [])?;
    portable::xor_acc(dest, sources);
    Ok(())
}

/// Whether `blocks` (data members and their XOR parity) XOR to zero.
pub fn xor_check(blocks: &[&[u8]]) -> Result<bool, KernelError> {
    if XOR_CHECK_ISAL {
        return strata_isal::xor_check(blocks);
    }
    let len = blocks.first().map_or(0, |b| b.len());
    check_args(blocks, MAX_SOURCES + 1, len, [])?;
    Ok(portable::xor_check(blocks))
}

/// RAID-6 parity: `p = Σ D_i`, `q = Σ 2^i · D_i` over GF(2^8) (polynomial 0x11d).
pub fn pq_gen(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) -> Result<(), KernelError> {
    check_args(data, MAX_SOURCES, p.len(), [&q[..]])?;
    portable::pq_gen(data, p, q);
    Ok(())
}

/// Whether `p` and `q` are the RAID-6 parity of `data`.
pub fn pq_check(data: &[&[u8]], p: &[u8], q: &[u8]) -> Result<bool, KernelError> {
    if PQ_CHECK_ISAL {
        return strata_isal::pq_check(data, p, q);
    }
    check_args(data, MAX_SOURCES, p.len(), [q])?;
    Ok(portable::pq_check(data, p, q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_crc_in_place_matches_a_copy() {
        let r = strata_reactor::dma::DmaRegion::new(1 << 16).unwrap();
        let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
        assert!(r.write_at(100, &data));
        assert_eq!(
            crc32c_append_region(0, &r, 100, data.len()),
            Some(crc32c(&data))
        );
        let (a, b) = data.split_at(123);
        let first = crc32c_append_region(0, &r, 100, a.len()).unwrap();
        assert_eq!(
            crc32c_append_region(first, &r, 223, b.len()),
            Some(crc32c(&data))
        );
        assert_eq!(
            crc32c_append_region(0, &r, r.len() - 1, 2),
            None,
            "out of bounds"
        );
    }

    #[test]
    fn xor_and_crc() {
        let mut a: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let b: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let orig = a.clone();
        xor_into(&mut a, &b);
        assert!(a.iter().zip(&orig).zip(&b).all(|((x, o), y)| *x == o ^ y));
        xor_into(&mut a, &b);
        assert_eq!(a, orig);
        // Known answer: CRC32C("123456789") = 0xE3069283.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c_append(crc32c(b"1234"), b"56789"), 0xE306_9283);
    }

    #[test]
    fn raid_kernels_agree_on_both_sides_of_the_thresholds() {
        for len in [100usize, 4096, 65536] {
            let srcs: Vec<Vec<u8>> = (0..8u8)
                .map(|s| {
                    (0..len)
                        .map(|i| (i as u8).wrapping_mul(s + 3) ^ s)
                        .collect()
                })
                .collect();
            let s: Vec<&[u8]> = srcs.iter().map(Vec::as_slice).collect();
            let mut parity = vec![0u8; len];
            xor_gen(&s, &mut parity).unwrap();
            let mut acc = s[0].to_vec();
            xor_acc(&mut acc, &s[1..]).unwrap();
            assert_eq!(acc, parity);
            let mut all = s.clone();
            all.push(&parity);
            assert!(xor_check(&all).unwrap());

            let (mut p, mut q) = (vec![0u8; len], vec![0u8; len]);
            pq_gen(&s, &mut p, &mut q).unwrap();
            assert_eq!(p, parity);
            assert!(pq_check(&s, &p, &q).unwrap());
            q[len / 2] ^= 4;
            assert!(!pq_check(&s, &p, &q).unwrap());
        }
        let mut d = [0u8; 8];
        assert!(xor_gen(&[&[0u8; 7][..]], &mut d).is_err());
        assert!(pq_gen(&[], &mut [0u8; 8], &mut [0u8; 8]).is_err());
    }
}
