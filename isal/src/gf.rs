//! GF(2^8) arithmetic (polynomial 0x11d, generator 2) from ISA-L, and its erasure-code
//! kernel `ec_encode_data`: `coding[r] = Σ_j a[r][j] · data[j]` over whole buffers.

use crate::ffi::{self, MAX_CALL_LEN};
use crate::{same_len, Error, Result, MAX_SOURCES};

/// Most inputs of one [`ec_encode`] call (a RAID-6 stripe: the data members plus P and Q).
pub const MAX_EC_SOURCES: usize = MAX_SOURCES + 2;

/// Most outputs of one [`ec_encode`] call.
pub const MAX_EC_ROWS: usize = 4;

/// `a · b` in GF(2^8).
#[inline]
pub fn gf_mul(a: u8, b: u8) -> u8 {
    ffi::gf_mul_u8(a, b)
}

/// Multiplicative inverse in GF(2^8) (`gf_inv(0) == 0`).
#[inline]
pub fn gf_inv(a: u8) -> u8 {
    ffi::gf_inv_u8(a)
}

/// `2^i` in GF(2^8): the RAID-6 Q coefficient of data member `i`.
pub fn gf_pow2(i: usize) -> u8 {
    (0..i % 255).fold(1, |x, _| gf_mul(x, 2))
}

fn matrix_size(len: usize, m: usize, k: usize) -> Result<()> {
    let needed = m.saturating_mul(k);
    if len < needed || k > m || m > 255 {
        return Err(Error::BadMatrix { len, needed });
    }
    Ok(())
}

/// Fills `a[..m*k]` with ISA-L's Vandermonde-based RS generator matrix (k×k identity on
/// top, then m-k parity rows).
pub fn gen_rs_matrix(a: &mut [u8], m: usize, k: usize) -> Result<()> {
    matrix_size(a.len(), m, k)?;
    ffi::gf_gen_matrix(a, m, k, false);
    Ok(())
}

/// Fills `a[..m*k]` with ISA-L's Cauchy generator matrix (identity on top; every k×k
/// sub-matrix is invertible).
pub fn gen_cauchy1_matrix(a: &mut [u8], m: usize, k: usize) -> Result<()> {
    matrix_size(a.len(), m, k)?;
    ffi::gf_gen_matrix(a, m, k, true);
    Ok(())
}

/// Inverts the n×n matrix in `input[..n*n]` (which it overwrites) into `output[..n*n]`.
pub fn invert_matrix(input: &mut [u8], output: &mut [u8], n: usize) -> Result<()> {
    let needed = n.saturating_mul(n);
    let len = input.len().min(output.len());
    if n == 0 || n > 255 || len < needed {
        return Err(Error::BadMatrix { len, needed });
    }
    if ffi::gf_invert(input, output, n) {
        Ok(())
    } else {
        Err(Error::Singular)
    }
}

/// `coding[r] = Σ_j coefs[r * k + j] · data[j]` (k = `data.len()`) with ISA-L's
/// `ec_encode_data`: any alignment and length, in place in the caller's buffers.
///
/// 1 to [`MAX_EC_SOURCES`] inputs, 1 to [`MAX_EC_ROWS`] outputs, all the same length;
/// `coefs` holds exactly `coding.len() * data.len()` coefficients.
pub fn ec_encode(coefs: &[u8], data: &[&[u8]], coding: &mut [&mut [u8]]) -> Result<()> {
    let (k, rows) = (data.len(), coding.len());
    if k == 0 || rows == 0 {
        return Err(Error::NoSources);
    }
    if k > MAX_EC_SOURCES {
        return Err(Error::TooManySources {
            count: k,
            max: MAX_EC_SOURCES,
        });
    }
    if rows > MAX_EC_ROWS {
        return Err(Error::TooManySources {
            count: rows,
            max: MAX_EC_ROWS,
        });
    }
    if coefs.len() != k * rows {
        return Err(Error::BadMatrix {
            len: coefs.len(),
            needed: k * rows,
        });
    }
    let len = data[0].len();
    same_len(
        len,
        0,
        data.iter()
            .map(|d| d.len())
            .chain(coding.iter().map(|c| c.len())),
    )?;
    let mut tables = [0u8; 32 * MAX_EC_SOURCES * MAX_EC_ROWS];
    let built = ffi::ec_tables(k, rows, coefs, &mut tables);
    debug_assert!(built, "sizes checked above");
    let mut off = 0;
    while off < len {
        let n = (len - off).min(MAX_CALL_LEN);
        let done = ffi::ec_encode_range(&tables, data, coding, off, n);
        debug_assert!(done, "sizes checked above");
        off += n;
    }
    Ok(())
}
