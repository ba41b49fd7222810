//! Pure-Rust versions of the RAID kernels: the fallback when a buffer misses ISA-L's
//! alignment or length rule, and the baseline the benchmarks compare ISA-L with.
//!
//! They work in 64-byte blocks on fixed-size arrays, which the compiler vectorises for the
//! build's target features (SSE2 by default), then byte by byte on the tail. Every function
//! processes the common length of its buffers (the shortest one), and never panics.

/// Block size of the portable loops.
const B: usize = 64;

/// Multiplies a byte by the generator 2 in GF(2^8) (polynomial 0x11d).
#[inline(always)]
pub const fn gf_mul2(b: u8) -> u8 {
    (b << 1) ^ (0x1d & 0u8.wrapping_sub(b >> 7))
}

/// Product in GF(2^8) with polynomial 0x11d (shift and add; used for coefficients, not
/// bulk data).
pub const fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut r = 0;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        a = gf_mul2(a);
        b >>= 1;
    }
    r
}

fn common_len(bufs: &[&[u8]], other: usize) -> usize {
    bufs.iter().map(|b| b.len()).fold(other, usize::min)
}

/// `dest = XOR of sources` (zeros when there is no source).
pub fn xor_gen(sources: &[&[u8]], dest: &mut [u8]) {
    xor_gen_from(sources, dest, 0);
}

pub(crate) fn xor_gen_from(sources: &[&[u8]], dest: &mut [u8], from: usize) {
    let n = common_len(sources, dest.len());
    let mut pos = from;
    while pos + B <= n {
        let mut acc = [0u8; B];
        for s in sources {
            if let Some(c) = s[pos..].first_chunk::<B>() {
                for (a, x) in acc.iter_mut().zip(c) {
                    *a ^= x;
                }
            }
        }
        if let Some(d) = dest[pos..].first_chunk_mut::<B>() {
            *d = acc;
        }
        pos += B;
    }
    for i in pos..n {
        dest[i] = sources.iter().fold(0, |a, s| a ^ s[i]);
    }
}

/// `dest ^= XOR of sources`.
pub fn xor_acc(dest: &mut [u8], sources: &[&[u8]]) {
    xor_acc_from(dest, sources, 0);
}

pub(crate) fn xor_acc_from(dest: &mut [u8], sources: &[&[u8]], from: usize) {
    let n = common_len(sources, dest.len());
    let mut pos = from;
    while pos + B <= n {
        if let Some(d) = dest[pos..].first_chunk_mut::<B>() {
            let mut acc = *d;
            for s in sources {
                if let Some(c) = s[pos..].first_chunk::<B>() {
                    for (a, x) in acc.iter_mut().zip(c) {
                        *a ^= x;
                    }
                }
            }
            *d = acc;
        }
        pos += B;
    }
    for i in pos..n {
        dest[i] ^= sources.iter().fold(0, |a, s| a ^ s[i]);
    }
}

/// `dst ^= src` over the common length: one pass per source (the loop strata's
/// `kernels::xor_into` used before ISA-L).
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    let n = dst.len().min(src.len());
    let (d, s) = (&mut dst[..n], &src[..n]);
    let mut dc = d.chunks_exact_mut(32);
    let mut sc = s.chunks_exact(32);
    for (a, b) in (&mut dc).zip(&mut sc) {
        for (x, y) in a.iter_mut().zip(b) {
            *x ^= y;
        }
    }
    for (a, b) in dc.into_remainder().iter_mut().zip(sc.remainder()) {
        *a ^= b;
    }
}

/// Whether the blocks XOR to zero.
pub fn xor_check(blocks: &[&[u8]]) -> bool {
    xor_check_from(blocks, 0)
}

pub(crate) fn xor_check_from(blocks: &[&[u8]], from: usize) -> bool {
    let n = common_len(blocks, usize::MAX);
    let n = if blocks.is_empty() { 0 } else { n };
    let mut pos = from;
    while pos + B <= n {
        let mut acc = [0u8; B];
        for s in blocks {
            if let Some(c) = s[pos..].first_chunk::<B>() {
                for (a, x) in acc.iter_mut().zip(c) {
                    *a ^= x;
                }
            }
        }
        if acc.iter().fold(0, |a, x| a | x) != 0 {
            return false;
        }
        pos += B;
    }
    (pos..n).all(|i| blocks.iter().fold(0, |a, s| a ^ s[i]) == 0)
}

/// RAID-6 parity: `P = Σ D_i`, `Q = Σ 2^i · D_i` over GF(2^8) (Horner's rule from the
/// last block down).
pub fn pq_gen(data: &[&[u8]], p: &mut [u8], q: &mut [u8]) {
    pq_gen_from(data, p, q, 0);
}

pub(crate) fn pq_gen_from(data: &[&[u8]], p: &mut [u8], q: &mut [u8], from: usize) {
    let n = common_len(data, p.len().min(q.len()));
    let mut pos = from;
    while pos + B <= n {
        let (pb, qb) = pq_block(data, pos);
        if let Some(d) = p[pos..].first_chunk_mut::<B>() {
            *d = pb;
        }
        if let Some(d) = q[pos..].first_chunk_mut::<B>() {
            *d = qb;
        }
        pos += B;
    }
    for i in pos..n {
        let (pi, qi) = pq_byte(data, i);
        p[i] = pi;
        q[i] = qi;
    }
}

#[inline(always)]
fn pq_block(data: &[&[u8]], pos: usize) -> ([u8; B], [u8; B]) {
    let mut pb = [0u8; B];
    let mut qb = [0u8; B];
    for s in data.iter().rev() {
        if let Some(c) = s[pos..].first_chunk::<B>() {
            for ((pv, qv), x) in pb.iter_mut().zip(qb.iter_mut()).zip(c) {
                *pv ^= x;
                *qv = gf_mul2(*qv) ^ x;
            }
        }
    }
    (pb, qb)
}

#[inline(always)]
fn pq_byte(data: &[&[u8]], i: usize) -> (u8, u8) {
    data.iter()
        .rev()
        .fold((0, 0), |(pv, qv), s| (pv ^ s[i], gf_mul2(qv) ^ s[i]))
}

/// Whether P and Q are the RAID-6 parity of the data.
pub fn pq_check(data: &[&[u8]], p: &[u8], q: &[u8]) -> bool {
    pq_check_from(data, p, q, 0)
}

pub(crate) fn pq_check_from(data: &[&[u8]], p: &[u8], q: &[u8], from: usize) -> bool {
    let n = common_len(data, p.len().min(q.len()));
    let mut pos = from;
    while pos + B <= n {
        let (pb, qb) = pq_block(data, pos);
        if p[pos..pos + B] != pb || q[pos..pos + B] != qb {
            return false;
        }
        pos += B;
    }
    (pos..n).all(|i| pq_byte(data, i) == (p[i], q[i]))
}
