//! Data kernels the bdevs apply to buffers in place: XOR and CRC32C.
//!
//! CRC32C comes from the `crc32c` crate (SSE4.2 / ARMv8 instructions). XOR is a portable
//! word-wise loop the compiler vectorises; the ISA-L versions replace these where they
//! measure faster.

/// `dst ^= src` over the common length.
#[inline]
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    let n = dst.len().min(src.len());
    let (d, s) = (&mut dst[..n], &src[..n]);
    let mut dc = d.chunks_exact_mut(32);
    let mut sc = s.chunks_exact(32);
    for (a, b) in (&mut dc).zip(&mut sc) {
        for i in 0..32 {
            a[i] ^= b[i];
        }
    }
    for (a, b) in dc.into_remainder().iter_mut().zip(sc.remainder()) {
        *a ^= b;
    }
}

/// CRC32C (Castagnoli, iSCSI) of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Continues a CRC32C over more data.
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
