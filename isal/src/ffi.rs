//! The crate's only `unsafe`: hand-written declarations of the ISA-L functions used
//! (checked against `/usr/include/isa-l/{raid,crc,erasure_code}.h` of ISA-L 2.30) and
//! thin safe wrappers that check every precondition before calling them.
//!
//! ISA-L's requirements, as documented in its headers and implemented in its x86 assembly:
//!
//! | function | pointers | length | vectors |
//! | --- | --- | --- | --- |
//! | `xor_gen` | 32 B aligned (AVX; `vmovdqa` loads, `vmovntdq` stores) | any | ≥ 2 sources + dest |
//! | `xor_check` | 16 B aligned (`movntdqa`) | any | ≥ 2 |
//! | `pq_gen` | 32 B aligned (AVX2; non-temporal loads/stores) | multiple of 32 | ≥ 2 sources + P + Q |
//! | `pq_check` | 16 B aligned | multiple of 16 | ≥ 2 sources + P + Q |
//! | `ec_encode_data` | any (`vmovdqu`) | any (< 32 B runs the base code) | tables of 32·k·rows bytes |
//! | `crc32_iscsi` | any | any (`int`) | - |
//!
//! The wrappers here apply one stricter rule to the four RAID functions: every pointer
//! [`ALIGN`](crate::FAST_ALIGN)-aligned and the length a multiple of
//! [`LEN_MULTIPLE`](crate::FAST_LEN_MULTIPLE) that fits an `int`. When a call does not meet
//! it the wrapper does nothing and says so, and the caller runs the portable code (or
//! ISA-L on the aligned prefix and the portable code on the tail).
//!
//! Pointer arrays (`void **`) are built on the stack (at most
//! [`MAX_SOURCES`](crate::MAX_SOURCES) + 2 entries): no allocation per call.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_uchar, c_uint, c_void};
use std::ptr;

use crate::{FAST_ALIGN, FAST_LEN_MULTIPLE, MAX_SOURCES};

extern "C" {
    fn xor_gen(vects: c_int, len: c_int, array: *mut *mut c_void) -> c_int;
    fn xor_check(vects: c_int, len: c_int, array: *mut *mut c_void) -> c_int;
    fn pq_gen(vects: c_int, len: c_int, array: *mut *mut c_void) -> c_int;
    fn pq_check(vects: c_int, len: c_int, array: *mut *mut c_void) -> c_int;
    fn crc32_iscsi(buffer: *mut c_uchar, len: c_int, init_crc: c_uint) -> c_uint;
    fn gf_mul(a: c_uchar, b: c_uchar) -> c_uchar;
    fn gf_inv(a: c_uchar) -> c_uchar;
    fn gf_gen_rs_matrix(a: *mut c_uchar, m: c_int, k: c_int);
    fn gf_gen_cauchy1_matrix(a: *mut c_uchar, m: c_int, k: c_int);
    fn gf_invert_matrix(input: *mut c_uchar, output: *mut c_uchar, n: c_int) -> c_int;
    fn ec_init_tables(k: c_int, rows: c_int, a: *mut c_uchar, gftbls: *mut c_uchar);
    fn ec_encode_data(
        len: c_int,
        k: c_int,
        rows: c_int,
        gftbls: *mut c_uchar,
        data: *mut *mut c_uchar,
        coding: *mut *mut c_uchar,
    );
}

/// Most pointers one call passes: the sources plus two outputs (P and Q) or one
/// accumulator used twice.
const MAX_PTRS: usize = MAX_SOURCES + 2;
const _: () = assert!(MAX_PTRS == crate::gf::MAX_EC_SOURCES);

/// Largest `int` length handed to ISA-L in one call, a multiple of every block rule.
pub(crate) const MAX_CALL_LEN: usize = 1 << 30;

/// A `void **` array on the stack, filled with sub-ranges `[off, off + len)` of buffers
/// that all satisfy the fast-path rule.
struct PtrArray {
    ptrs: [*mut c_void; MAX_PTRS],
    n: usize,
    off: usize,
    len: usize,
}

impl PtrArray {
    /// `None` unless `len` is a non-zero multiple of [`FAST_LEN_MULTIPLE`] that fits an
    /// `int`.
    fn new(off: usize, len: usize) -> Option<Self> {
        let ok = len != 0 && len & (FAST_LEN_MULTIPLE - 1) == 0 && len <= MAX_CALL_LEN;
        ok.then_some(Self {
            ptrs: [ptr::null_mut(); MAX_PTRS],
            n: 0,
            off,
            len,
        })
    }

    /// Start of `buf[off..off + len]`, if the range exists and is aligned.
    fn range_start(&self, buf_ptr: *const u8, buf_len: usize) -> Option<*const u8> {
        let end = self.off.checked_add(self.len)?;
        if end > buf_len {
            return None;
        }
        let p = buf_ptr.wrapping_add(self.off);
        ((p as usize) & (FAST_ALIGN - 1) == 0).then_some(p)
    }

    fn push_ptr(&mut self, p: *mut c_void) -> Option<()> {
        let slot = self.ptrs.get_mut(self.n)?;
        *slot = p;
        self.n += 1;
        Some(())
    }

    fn push_src(&mut self, buf: &[u8]) -> Option<()> {
        let p = self.range_start(buf.as_ptr(), buf.len())?;
        self.push_ptr(p.cast_mut().cast())
    }

    /// Pushes an output; returns its pointer (to push it again as an input).
    fn push_dst(&mut self, buf: &mut [u8]) -> Option<*mut c_void> {
        let len = buf.len();
        let p = self.range_start(buf.as_mut_ptr(), len)?.cast_mut().cast();
        self.push_ptr(p)?;
        Some(p)
    }

    fn vects(&self) -> c_int {
        // n <= MAX_PTRS (34), so it fits.
        self.n as c_int
    }

    fn len(&self) -> c_int {
        // len <= MAX_CALL_LEN < i32::MAX (checked in new).
        self.len as c_int
    }
}

/// `dest[off..off+len] = XOR of sources[i][off..off+len]` with ISA-L. `false`: the
/// call does not meet the fast-path rule (or has < 2 or > [`MAX_SOURCES`] sources) and
/// nothing was written.
pub(crate) fn xor_gen_range(sources: &[&[u8]], dest: &mut [u8], off: usize, len: usize) -> bool {
    let mut build = || -> Option<PtrArray> {
        if sources.len() < 2 || sources.len() > MAX_SOURCES {
            return None;
        }
        let mut a = PtrArray::new(off, len)?;
        for s in sources {
            a.push_src(s)?;
        }
        a.push_dst(dest)?;
        Some(a)
    };
    let Some(mut a) = build() else { return false };
    // SAFETY: `a` holds sources.len() >= 2 pointers to `len` readable bytes of the
    // borrowed sources, then one pointer to `len` writable bytes of `dest` (exclusively
    // borrowed, so it overlaps no source); all are 32 B aligned and `len` is a positive
    // multiple of 64 that fits an int, as xor_gen requires. ISA-L reads and writes
    // nothing else and keeps no pointer after returning.
    unsafe { xor_gen(a.vects(), a.len(), a.ptrs.as_mut_ptr()) == 0 }
}

/// `dest[off..off+len] ^= XOR of sources[i][off..off+len]` with ISA-L (`dest` is both the
/// first source and the output of xor_gen). Same `false` contract as [`xor_gen_range`].
pub(crate) fn xor_acc_range(dest: &mut [u8], sources: &[&[u8]], off: usize, len: usize) -> bool {
    let mut build = || -> Option<PtrArray> {
        if sources.is_empty() || sources.len() > MAX_SOURCES {
            return None;
        }
        let mut a = PtrArray::new(off, len)?;
        let d = a.push_dst(dest)?;
        for s in sources {
            a.push_src(s)?;
        }
        a.push_ptr(d)?;
        Some(a)
    };
    let Some(mut a) = build() else { return false };
    // SAFETY: as in xor_gen_range; in addition the output pointer is also the first
    // input. xor_gen (SSE, AVX and AVX-512 versions alike) loads every input block at
    // a position before it stores the parity of that position and never reads a
    // position after writing it, so the in-place accumulate reads the old `dest` bytes.
    // Both uses of the pointer come from the one exclusive borrow of `dest`.
    unsafe { xor_gen(a.vects(), a.len(), a.ptrs.as_mut_ptr()) == 0 }
}

/// Whether `blocks[i][off..off+len]` XOR to zero, with ISA-L; `None`: the call does not
/// meet the fast-path rule (or has < 2 or > [`MAX_SOURCES`] + 1 blocks).
pub(crate) fn xor_check_range(blocks: &[&[u8]], off: usize, len: usize) -> Option<bool> {
    if blocks.len() < 2 || blocks.len() > MAX_SOURCES + 1 {
        return None;
    }
    let mut a = PtrArray::new(off, len)?;
    for b in blocks {
        a.push_src(b)?;
    }
    // SAFETY: `a` holds blocks.len() >= 2 pointers to `len` readable bytes of the
    // borrowed blocks, each 32 B aligned (xor_check needs 16 B), `len` a positive int.
    // xor_check only reads them.
    Some(unsafe { xor_check(a.vects(), a.len(), a.ptrs.as_mut_ptr()) == 0 })
}

/// Builds the `data..., P, Q` array for pq_gen / pq_check.
fn pq_array(data: &[&[u8]], off: usize, len: usize) -> Option<PtrArray> {
    if data.len() < 2 || data.len() > MAX_SOURCES {
        return None;
    }
    let mut a = PtrArray::new(off, len)?;
    for d in data {
        a.push_src(d)?;
    }
    Some(a)
}

/// `P, Q = pq(data[i][off..off+len])` with ISA-L. Same `false` contract as
/// [`xor_gen_range`].
pub(crate) fn pq_gen_range(
    data: &[&[u8]],
    p: &mut [u8],
    q: &mut [u8],
    off: usize,
    len: usize,
) -> bool {
    let mut build = || -> Option<PtrArray> {
        let mut a = pq_array(data, off, len)?;
        a.push_dst(p)?;
        a.push_dst(q)?;
        Some(a)
    };
    let Some(mut a) = build() else { return false };
    // SAFETY: `a` holds data.len() >= 2 pointers to `len` readable bytes of the borrowed
    // data blocks, then P and Q: `len` writable bytes of two exclusive borrows (so
    // disjoint from each other and from the sources). All are 32 B aligned and `len` is a
    // positive multiple of 64 (pq_gen needs 32) that fits an int.
    unsafe { pq_gen(a.vects(), a.len(), a.ptrs.as_mut_ptr()) == 0 }
}

/// Whether P and Q match the data over `[off, off+len)`, with ISA-L; `None`: the call
/// does not meet the fast-path rule.
pub(crate) fn pq_check_range(
    data: &[&[u8]],
    p: &[u8],
    q: &[u8],
    off: usize,
    len: usize,
) -> Option<bool> {
    let mut a = pq_array(data, off, len)?;
    a.push_src(p)?;
    a.push_src(q)?;
    // SAFETY: `a` holds data.len() >= 2 + 2 pointers to `len` readable bytes of borrowed
    // buffers, 32 B aligned (pq_check needs 16 B), `len` a positive multiple of 64 (pq_check
    // needs 16) that fits an int. pq_check only reads them.
    Some(unsafe { pq_check(a.vects(), a.len(), a.ptrs.as_mut_ptr()) == 0 })
}

/// ISA-L's raw CRC32C: no inversion of the initial value or of the result.
pub(crate) fn crc32_iscsi_raw(data: &[u8], mut crc: u32) -> u32 {
    for chunk in data.chunks(MAX_CALL_LEN) {
        // SAFETY: `chunk` is a borrowed slice of chunk.len() <= 2^30 readable bytes (fits
        // an int); crc32_iscsi only reads them (its `unsigned char *` is not written) and
        // has no alignment requirement.
        crc = unsafe { crc32_iscsi(chunk.as_ptr().cast_mut(), chunk.len() as c_int, crc) };
    }
    crc
}

/// ISA-L's raw CRC32C over memory given by pointer (memory another thread may be writing,
/// as a device's would be).
///
/// # Safety
/// `ptr..ptr + len` must be mapped and readable for the duration of the call.
pub(crate) unsafe fn crc32_iscsi_ptr(ptr: *const u8, len: usize, mut crc: u32) -> u32 {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(MAX_CALL_LEN);
        // SAFETY: inside the caller's readable range; n <= 2^30 fits an int; crc32_iscsi
        // only reads through the pointer and has no alignment requirement.
        crc = unsafe { crc32_iscsi(ptr.add(done).cast_mut(), n as c_int, crc) };
        done += n;
    }
    crc
}

/// Continues a standard CRC32C over memory read in place, not through a reference: memory
/// that other threads may be writing meanwhile (a RAM disk's store), read the way a DMA
/// engine reads it (the result is then unspecified, never undefined).
///
/// # Safety
/// `ptr..ptr + len` must be mapped and readable for the duration of the call.
pub unsafe fn crc32c_append_in_place(crc: u32, ptr: *const u8, len: usize) -> u32 {
    // SAFETY: the caller's contract is crc32_iscsi_ptr's.
    !unsafe { crc32_iscsi_ptr(ptr, len, !crc) }
}

/// Product in GF(2^8) (polynomial 0x11d).
pub(crate) fn gf_mul_u8(a: u8, b: u8) -> u8 {
    // SAFETY: pure function of two bytes (table look-ups); no pointers.
    unsafe { gf_mul(a, b) }
}

/// Inverse in GF(2^8); 0 for 0.
pub(crate) fn gf_inv_u8(a: u8) -> u8 {
    // SAFETY: pure function of one byte (table look-ups); gf_inv(0) returns 0.
    unsafe { gf_inv(a) }
}

/// Fills `a[..m*k]` with ISA-L's generator matrix; `false` if the sizes are wrong.
pub(crate) fn gf_gen_matrix(a: &mut [u8], m: usize, k: usize, cauchy: bool) -> bool {
    let ok = k <= m && m <= 255 && m.checked_mul(k).is_some_and(|n| n <= a.len());
    if !ok {
        return false;
    }
    if cauchy {
        // SAFETY: `a` is exclusively borrowed with at least m*k bytes; the function writes
        // exactly a[0..m*k]. m <= 255 fits an int.
        unsafe { gf_gen_cauchy1_matrix(a.as_mut_ptr(), m as c_int, k as c_int) }
    } else {
        // SAFETY: as for the Cauchy matrix above.
        unsafe { gf_gen_rs_matrix(a.as_mut_ptr(), m as c_int, k as c_int) }
    }
    true
}

/// Inverts the n×n matrix `input` (destroyed) into `output`; `false` if it is singular or
/// a buffer is shorter than n·n.
pub(crate) fn gf_invert(input: &mut [u8], output: &mut [u8], n: usize) -> bool {
    let ok = n > 0
        && n <= 255
        && n.checked_mul(n)
            .is_some_and(|nn| nn <= input.len() && nn <= output.len());
    if !ok {
        return false;
    }
    // SAFETY: both buffers are exclusively borrowed (so disjoint) with at least n*n bytes;
    // gf_invert_matrix reads and writes exactly n*n bytes of each.
    unsafe { gf_invert_matrix(input.as_mut_ptr(), output.as_mut_ptr(), n as c_int) == 0 }
}

/// Expands the k×rows coefficient matrix `a` into ISA-L's multiplication tables
/// (`32·k·rows` bytes); `false` if a buffer is too short.
pub(crate) fn ec_tables(k: usize, rows: usize, a: &[u8], tables: &mut [u8]) -> bool {
    let Some(kr) = k.checked_mul(rows) else {
        return false;
    };
    let ok = k > 0
        && rows > 0
        && k <= MAX_PTRS
        && rows <= MAX_PTRS
        && kr <= a.len()
        && kr * 32 <= tables.len();
    if !ok {
        return false;
    }
    // SAFETY: ec_init_tables reads a[0..k*rows] (not written despite the `unsigned char *`)
    // and writes tables[0..32*k*rows]; both ranges were checked, the buffers are distinct
    // borrows, k and rows are small ints.
    unsafe {
        ec_init_tables(
            k as c_int,
            rows as c_int,
            a.as_ptr().cast_mut(),
            tables.as_mut_ptr(),
        )
    }
    true
}

/// `coding[r][off..off+len] = Σ_j coef(r, j) · data[j][off..off+len]` with the tables of
/// [`ec_tables`]; `false` (nothing written) if counts, lengths or the tables do not fit.
/// No alignment requirement.
pub(crate) fn ec_encode_range(
    tables: &[u8],
    data: &[&[u8]],
    coding: &mut [&mut [u8]],
    off: usize,
    len: usize,
) -> bool {
    let (k, rows) = (data.len(), coding.len());
    let ok = k > 0
        && rows > 0
        && k <= MAX_PTRS
        && rows <= MAX_PTRS
        && 32 * k * rows <= tables.len()
        && len <= MAX_CALL_LEN
        && off.checked_add(len).is_some_and(|end| {
            data.iter().all(|d| d.len() >= end) && coding.iter().all(|c| c.len() >= end)
        });
    if !ok {
        return false;
    }
    if len == 0 {
        return true;
    }
    let mut src = [ptr::null_mut::<c_uchar>(); MAX_PTRS];
    for (slot, d) in src.iter_mut().zip(data) {
        *slot = d.as_ptr().wrapping_add(off).cast_mut();
    }
    let mut dst = [ptr::null_mut::<c_uchar>(); MAX_PTRS];
    for (slot, c) in dst.iter_mut().zip(coding.iter_mut()) {
        *slot = c.as_mut_ptr().wrapping_add(off);
    }
    // SAFETY: src[..k] point to `len` readable bytes of the borrowed data blocks (only
    // read by ec_encode_data), dst[..rows] to `len` writable bytes of exclusively borrowed
    // outputs (disjoint from each other and from the inputs); ranges checked above.
    // `tables` holds at least 32*k*rows bytes (only read). No alignment is required
    // (ec_encode_data uses unaligned loads and stores; lengths < 32 run the base code).
    unsafe {
        ec_encode_data(
            len as c_int,
            k as c_int,
            rows as c_int,
            tables.as_ptr().cast_mut(),
            src.as_mut_ptr(),
            dst.as_mut_ptr(),
        )
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 64 KiB + 64 of zeros, the slice starting on a 32 B boundary plus `mis`.
    fn buf(mem: &mut Vec<u8>, mis: usize) -> &mut [u8] {
        *mem = vec![0u8; (64 << 10) + 128];
        let off = mem.as_ptr().align_offset(FAST_ALIGN) + mis;
        &mut mem[off..off + (64 << 10)]
    }

    #[test]
    fn aligned_calls_take_the_isal_path_and_misaligned_ones_decline() {
        let (mut m1, mut m2, mut m3, mut m4) = (vec![], vec![], vec![], vec![]);
        let (a, b) = (buf(&mut m1, 0), buf(&mut m2, 0));
        a[5] = 7;
        b[5] = 7;
        let (p, q) = (buf(&mut m3, 0), buf(&mut m4, 0));
        let len = a.len();
        assert!(xor_gen_range(&[a, b], p, 0, len));
        assert_eq!(xor_check_range(&[a, b], 0, len), Some(true));
        assert!(pq_gen_range(&[a, b], p, q, 0, len));
        assert_eq!(pq_check_range(&[a, b], p, q, 0, len), Some(true));
        assert!(xor_acc_range(p, &[a], 64, len - 64));
        // Length not a multiple of 64, or a misaligned buffer: declined, nothing written.
        assert!(!xor_gen_range(&[a, b], p, 0, len - 32));
        assert_eq!(xor_check_range(&[a, b], 1, 64), None);
        let mut m5 = vec![];
        let c = buf(&mut m5, 8);
        assert!(!pq_gen_range(&[a, c], p, q, 0, len));
        assert!(!xor_gen_range(&[a], p, 0, len));
    }
}
