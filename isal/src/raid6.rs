//! RAID-6 recovery of two failed members, in place, with one ISA-L `ec_encode_data` pass.
//!
//! With `P = Σ D_i` and `Q = Σ g^i · D_i` (g = 2), each lost member is a GF(2^8) linear
//! combination of the survivors; the coefficients come from ISA-L's `gf_mul`/`gf_inv`:
//!
//! - data `x`, `y`: with `d = (g^x + g^y)^-1`, `A = g^y·d`, `B = d`:
//!   `D_x = A·P + B·Q + Σ (A + B·g^i)·D_i` and `D_y = D_x + P + Σ D_i` (sums over survivors);
//! - data `x` and P: with `h = (g^x)^-1`: `D_x = h·Q + Σ g^i·h·D_i`, `P = D_x + Σ D_i`;
//! - data `x` and Q: `D_x = P + Σ D_i`, `Q = g^x·P + Σ (g^i + g^x)·D_i`;
//! - P and Q: [`pq_gen`](crate::pq_gen).

use crate::gf::{ec_encode, gf_inv, gf_mul, MAX_EC_SOURCES};
use crate::{same_len, Error, Result, MAX_SOURCES};

/// A surviving input of the recovery: data member `i`, or parity input `j`.
#[derive(Clone, Copy)]
enum Src {
    Data(usize),
    Parity(usize),
}

/// `g^i` for every data index of a stripe with `n` data members (1 to [`MAX_SOURCES`]).
fn powers(n: usize) -> Result<[u8; MAX_SOURCES]> {
    if n == 0 {
        return Err(Error::NoSources);
    }
    if n > MAX_SOURCES {
        return Err(Error::TooManySources {
            count: n,
            max: MAX_SOURCES,
        });
    }
    let mut pow = [1u8; MAX_SOURCES];
    for i in 1..n {
        pow[i] = gf_mul(pow[i - 1], 2);
    }
    Ok(pow)
}

fn check_member(index: usize, members: usize) -> Result<()> {
    if index >= members {
        return Err(Error::BadIndex { index, members });
    }
    Ok(())
}

/// Rebuilds `failed` data members (outputs first, in the given order) and optionally one
/// parity buffer (last output) from the surviving data plus `parity_in`, with
/// `coef(row, source)` as the decoding matrix.
fn recover_with(
    data: &mut [&mut [u8]],
    failed: &[usize],
    parity_in: &[&[u8]],
    parity_out: Option<&mut [u8]>,
    coef: impl Fn(usize, Src) -> u8,
) -> Result<()> {
    let n = data.len();
    if n == 0 {
        return Err(Error::NoSources);
    }
    if n > MAX_SOURCES {
        return Err(Error::TooManySources {
            count: n,
            max: MAX_SOURCES,
        });
    }
    for &f in failed {
        check_member(f, n)?;
    }
    let len = data[0].len();
    same_len(len, 0, data.iter().map(|d| d.len()))?;
    same_len(
        len,
        n,
        parity_in
            .iter()
            .map(|p| p.len())
            .chain(parity_out.as_ref().map(|p| p.len())),
    )?;

    let mut srcs: [&[u8]; MAX_EC_SOURCES] = [&[]; MAX_EC_SOURCES];
    let mut kinds = [Src::Parity(0); MAX_EC_SOURCES];
    let mut outs: [&mut [u8]; 2] = [&mut [], &mut []];
    let mut k = 0;
    for (i, d) in data.iter_mut().enumerate() {
        if let Some(row) = failed.iter().position(|&f| f == i) {
            outs[row] = &mut **d;
        } else {
            srcs[k] = &**d;
            kinds[k] = Src::Data(i);
            k += 1;
        }
    }
    for (j, p) in parity_in.iter().enumerate() {
        srcs[k] = p;
        kinds[k] = Src::Parity(j);
        k += 1;
    }
    let mut rows = failed.len();
    if let Some(p) = parity_out {
        outs[rows] = p;
        rows += 1;
    }

    let mut coefs = [0u8; 2 * MAX_EC_SOURCES];
    for r in 0..rows {
        for (c, kind) in coefs[r * k..(r + 1) * k].iter_mut().zip(&kinds[..k]) {
            *c = coef(r, *kind);
        }
    }
    ec_encode(&coefs[..rows * k], &srcs[..k], &mut outs[..rows])
}

/// Rebuilds data members `a` and `b` (distinct) of `data` in place from the other data
/// members and the parity `p`, `q`.
pub fn raid6_recover_two_data(
    data: &mut [&mut [u8]],
    p: &[u8],
    q: &[u8],
    a: usize,
    b: usize,
) -> Result<()> {
    if a == b {
        return Err(Error::SameIndex(a));
    }
    let pow = powers(data.len())?;
    check_member(a, data.len())?;
    check_member(b, data.len())?;
    let d = gf_inv(pow[a] ^ pow[b]);
    let ca = gf_mul(pow[b], d); // coefficient of P⊕ΣD_i in D_a
    let cb = d; // coefficient of Q⊕Σg^i·D_i in D_a
                // Row 0 is D_a; row 1 is D_b = D_a + P + Σ D_i, so it adds 1 to the D_i and P terms.
    recover_with(data, &[a, b], &[p, q], None, move |row, src| {
        let extra = if row == 0 { 0 } else { 1 };
        match src {
            Src::Data(i) => ca ^ gf_mul(cb, pow[i]) ^ extra,
            Src::Parity(0) => ca ^ extra,
            Src::Parity(_) => cb,
        }
    })
}

/// Rebuilds data member `failed` and the P parity in place from the other data members
/// and Q.
pub fn raid6_recover_data_and_p(
    data: &mut [&mut [u8]],
    p: &mut [u8],
    q: &[u8],
    failed: usize,
) -> Result<()> {
    let pow = powers(data.len())?;
    check_member(failed, data.len())?;
    let h = gf_inv(pow[failed]);
    // Row 0 is D_x; row 1 is P = D_x + Σ D_i.
    recover_with(data, &[failed], &[q], Some(p), move |row, src| {
        let extra = if row == 0 { 0 } else { 1 };
        match src {
            Src::Data(i) => gf_mul(pow[i], h) ^ extra,
            Src::Parity(_) => h,
        }
    })
}

/// Rebuilds data member `failed` and the Q parity in place from the other data members
/// and P.
pub fn raid6_recover_data_and_q(
    data: &mut [&mut [u8]],
    p: &[u8],
    q: &mut [u8],
    failed: usize,
) -> Result<()> {
    let pow = powers(data.len())?;
    check_member(failed, data.len())?;
    let gx = pow[failed];
    // Row 0 is D_x; row 1 is Q.
    recover_with(data, &[failed], &[p], Some(q), move |row, src| {
        match (row, src) {
            (0, _) => 1,
            (_, Src::Data(i)) => pow[i] ^ gx,
            (_, Src::Parity(_)) => gx,
        }
    })
}

/// Rebuilds members `a` and `b` (distinct) of a RAID-6 stripe in place, whatever they are.
/// `members` is the stripe: the data members, then P, then Q (at least 3 members).
pub fn raid6_recover(members: &mut [&mut [u8]], a: usize, b: usize) -> Result<()> {
    let m = members.len();
    if m < 3 {
        return Err(Error::NoSources);
    }
    check_member(a, m)?;
    check_member(b, m)?;
    if a == b {
        return Err(Error::SameIndex(a));
    }
    let (lo, hi) = (a.min(b), a.max(b));
    let n = m - 2;
    let (data, pq) = members.split_at_mut(n);
    let [p, q] = pq else {
        return Err(Error::NoSources);
    };
    match (lo < n, hi) {
        (true, h) if h < n => raid6_recover_two_data(data, p, q, lo, hi),
        (true, h) if h == n => raid6_recover_data_and_p(data, p, q, lo),
        (true, _) => raid6_recover_data_and_q(data, p, q, lo),
        (false, _) => {
            let srcs = &mut [&[][..]; MAX_SOURCES];
            if n > MAX_SOURCES {
                return Err(Error::TooManySources {
                    count: n,
                    max: MAX_SOURCES,
                });
            }
            for (s, d) in srcs.iter_mut().zip(data.iter()) {
                *s = &**d;
            }
            crate::pq_gen(&srcs[..n], p, q)
        }
    }
}
