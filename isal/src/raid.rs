//! RAID-5 (XOR) and RAID-6 (P+Q) parity over caller buffers, with ISA-L where the buffers
//! allow it (see the crate documentation) and the [`portable`](crate::portable) code
//! elsewhere.

use crate::ffi::{self, MAX_CALL_LEN};
use crate::{portable, same_len, Error, Result, FAST_LEN_MULTIPLE, MAX_SOURCES};

/// Runs `fast` over `[0, len)` rounded down to [`FAST_LEN_MULTIPLE`], in calls of at most
/// `MAX_CALL_LEN` bytes, until it declines; returns where the portable code must go on.
fn fast_prefix(len: usize, mut fast: impl FnMut(usize, usize) -> bool) -> usize {
    let bulk = len & !(FAST_LEN_MULTIPLE - 1);
    let mut off = 0;
    while off < bulk {
        let n = (bulk - off).min(MAX_CALL_LEN);
        if !fast(off, n) {
            break;
        }
        off += n;
    }
    off
}

/// Like [`fast_prefix`] for a check: `Err(())` as soon as ISA-L finds a mismatch.
fn fast_prefix_check(
    len: usize,
    mut fast: impl FnMut(usize, usize) -> Option<bool>,
) -> std::result::Result<usize, ()> {
    let bulk = len & !(FAST_LEN_MULTIPLE - 1);
    let mut off = 0;
    while off < bulk {
        let n = (bulk - off).min(MAX_CALL_LEN);
        match fast(off, n) {
            Some(true) => off += n,
            Some(false) => return Err(()),
            None => break,
        }
    }
    Ok(off)
}

fn check_count(count: usize, max: usize) -> Result<()> {
    match count {
        0 => Err(Error::NoSources),
        c if c > max => Err(Error::TooManySources { count: c, max }),
        _ => Ok(()),
    }
}

/// `dest = sources[0] ^ sources[1] ^ ...` (RAID-5 parity, or a rebuilt member).
///
/// All buffers must have the same length; 1 to [`MAX_SOURCES`] sources.
pub fn xor_gen(sources: &[&[u8]], dest: &mut [u8]) -> Result<()> {
    check_count(sources.len(), MAX_SOURCES)?;
    same_len(dest.len(), 0, sources.iter().map(|s| s.len()))?;
    if let [only] = sources {
        dest.copy_from_slice(only);
        return Ok(());
    }
    let from = fast_prefix(dest.len(), |off, n| {
        ffi::xor_gen_range(sources, dest, off, n)
    });
    portable::xor_gen_from(sources, dest, from);
    Ok(())
}

/// `dest ^= sources[0] ^ sources[1] ^ ...` in place (read-modify-write parity update,
/// `xor_write`).
///
/// All buffers must have the same length; 0 to [`MAX_SOURCES`] sources.
pub fn xor_acc(dest: &mut [u8], sources: &[&[u8]]) -> Result<()> {
    if sources.is_empty() {
        return Ok(());
    }
    check_count(sources.len(), MAX_SOURCES)?;
    same_len(dest.len(), 0, sources.iter().map(|s| s.len()))?;
    let from = fast_prefix(dest.len(), |off, n| {
        ffi::xor_acc_range(dest, sources, off, n)
    });
    portable::xor_acc_from(dest, sources, from);
    Ok(())
}

/// Whether `blocks` XOR to zero (data members plus their parity are consistent).
///
/// All buffers must have the same length; 1 to [`MAX_SOURCES`] + 1 blocks.
pub fn xor_check(blocks: &[&[u8]]) -> Result<bool> {
    check_count(blocks.len(), MAX_SOURCES + 1)?;
    let len = blocks.first().map_or(0, |b| b.len());
    same_len(len, 0, blocks.iter().map(|b| b.len()))?;
    match fast_prefix_check(len, |off, n| ffi::xor_check_range(blocks, off, n)) {
        Ok(from) => Ok(portable::xor_check_from(blocks, from)),
        Err(()) => Ok(false),
    }
}

/// RAID-6 parity of `data`: `p = Σ D_i`, `q = Σ 2^i · D_i` over GF(2^8).
///
/// All buffers must have the same length; 1 to [`MAX_SOURCES`] data buffers.
pub fn pq_gen(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) -> Result<()> {
    check_count(data.len(), MAX_SOURCES)?;
    let len = p.len();
    same_len(len, 0, data.iter().map(|d| d.len()).chain([q.len()]))?;
    let from = fast_prefix(len, |off, n| ffi::pq_gen_range(data, p, q, off, n));
    portable::pq_gen_from(data, p, q, from);
    Ok(())
}

/// Whether `p` and `q` are the RAID-6 parity of `data`.
///
/// All buffers must have the same length; 1 to [`MAX_SOURCES`] data buffers.
pub fn pq_check(data: &[&[u8]], p: &[u8], q: &[u8]) -> Result<bool> {
    check_count(data.len(), MAX_SOURCES)?;
    let len = p.len();
    same_len(len, 0, data.iter().map(|d| d.len()).chain([q.len()]))?;
    match fast_prefix_check(len, |off, n| ffi::pq_check_range(data, p, q, off, n)) {
        Ok(from) => Ok(portable::pq_check_from(data, p, q, from)),
        Err(()) => Ok(false),
    }
}
