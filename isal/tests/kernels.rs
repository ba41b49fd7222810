//! Every kernel against a straightforward pure-Rust reference, on random data, aligned
//! (ISA-L path) and misaligned / odd lengths (portable fallback and mixed prefix + tail).

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use strata_isal::gf::{self, gf_inv, gf_mul};
use strata_isal::{portable, Error, FAST_ALIGN, MAX_SOURCES};

const LENS: &[usize] = &[0, 1, 7, 31, 63, 64, 100, 1000, 4096, 4096 + 17, 65536 + 8];
/// Byte offsets from a 32 B boundary: 0 takes the ISA-L path.
const MISALIGN: &[usize] = &[0, 1, 16];

/// A buffer of `len` bytes starting `misalign` bytes after a 32 B boundary.
struct Buf {
    mem: Vec<u8>,
    off: usize,
    len: usize,
}

impl Buf {
    fn new(len: usize, misalign: usize, rng: &mut SmallRng) -> Self {
        let mut mem = vec![0u8; len + 2 * FAST_ALIGN];
        rng.fill_bytes(&mut mem);
        let off = mem.as_ptr().align_offset(FAST_ALIGN) + misalign;
        Self { mem, off, len }
    }
    fn get(&self) -> &[u8] {
        &self.mem[self.off..self.off + self.len]
    }
    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.off..self.off + self.len]
    }
}

fn bufs(n: usize, len: usize, misalign: usize, rng: &mut SmallRng) -> Vec<Buf> {
    (0..n).map(|_| Buf::new(len, misalign, rng)).collect()
}

fn ref_gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut r = 0u8;
    for _ in 0..8 {
        if b & 1 == 1 {
            r ^= a;
        }
        let hi = a & 0x80;
        a <<= 1;
        if hi != 0 {
            a ^= 0x1d;
        }
        b >>= 1;
    }
    r
}

fn ref_pow2(i: usize) -> u8 {
    (0..i).fold(1, |x, _| ref_gf_mul(x, 2))
}

fn ref_xor(srcs: &[&[u8]], len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| srcs.iter().fold(0, |a, s| a ^ s[i]))
        .collect()
}

fn ref_pq(data: &[&[u8]], len: usize) -> (Vec<u8>, Vec<u8>) {
    let p = ref_xor(data, len);
    let q = (0..len)
        .map(|i| {
            data.iter()
                .enumerate()
                .fold(0, |a, (j, d)| a ^ ref_gf_mul(ref_pow2(j), d[i]))
        })
        .collect();
    (p, q)
}

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(0x05ee_d1a1)
}

#[test]
fn crc32c_matches_the_crc32c_crate() {
    assert_eq!(strata_isal::crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(strata_isal::crc32c(b""), 0);
    assert_eq!(
        strata_isal::crc32c_append(strata_isal::crc32c(b"1234"), b"56789"),
        0xE306_9283
    );
    let mut r = rng();
    for &len in LENS.iter().chain(&[3, 8, 15, 16, 33, 511, 8192 + 5]) {
        for &mis in MISALIGN {
            let b = Buf::new(len, mis, &mut r);
            let d = b.get();
            assert_eq!(strata_isal::crc32c(d), crc32c::crc32c(d), "len {len}");
            let cut = r.gen_range(0..=len);
            let seed: u32 = r.gen();
            assert_eq!(
                strata_isal::crc32c_append(seed, d),
                crc32c::crc32c_append(seed, d)
            );
            assert_eq!(
                strata_isal::crc32c_append(strata_isal::crc32c(&d[..cut]), &d[cut..]),
                crc32c::crc32c(d)
            );
        }
    }
}

#[test]
fn xor_gen_and_acc_match_reference() {
    let mut r = rng();
    for &len in LENS {
        for &mis in MISALIGN {
            for n in [1, 2, 3, 4, 8, MAX_SOURCES] {
                let srcs = bufs(n, len, mis, &mut r);
                let s: Vec<&[u8]> = srcs.iter().map(Buf::get).collect();
                let want = ref_xor(&s, len);

                let mut dest = Buf::new(len, mis, &mut r);
                strata_isal::xor_gen(&s, dest.get_mut()).unwrap();
                assert_eq!(dest.get(), &want[..], "xor_gen n {n} len {len} mis {mis}");

                let mut pdest = vec![0u8; len];
                portable::xor_gen(&s, &mut pdest);
                assert_eq!(pdest, want);

                // dest ^= sources[1..] starting from dest = sources[0].
                let mut acc = Buf::new(len, mis, &mut r);
                acc.get_mut().copy_from_slice(s[0]);
                strata_isal::xor_acc(acc.get_mut(), &s[1..]).unwrap();
                assert_eq!(acc.get(), &want[..], "xor_acc n {n} len {len} mis {mis}");

                let mut pacc = s[0].to_vec();
                portable::xor_acc(&mut pacc, &s[1..]);
                assert_eq!(pacc, want);
            }
            // Accumulating MAX_SOURCES sources into dest.
            let srcs = bufs(MAX_SOURCES + 1, len, mis, &mut r);
            let s: Vec<&[u8]> = srcs.iter().map(Buf::get).collect();
            let mut acc = Buf::new(len, mis, &mut r);
            acc.get_mut().copy_from_slice(s[0]);
            strata_isal::xor_acc(acc.get_mut(), &s[1..]).unwrap();
            assert_eq!(acc.get(), &ref_xor(&s, len)[..]);
        }
    }
}

#[test]
fn xor_check_detects_a_flipped_byte() {
    let mut r = rng();
    for &len in LENS {
        for &mis in MISALIGN {
            for n in [2, 3, 5, 9] {
                let mut blocks = bufs(n, len, mis, &mut r);
                let parity = {
                    let s: Vec<&[u8]> = blocks[..n - 1].iter().map(Buf::get).collect();
                    ref_xor(&s, len)
                };
                blocks[n - 1].get_mut().copy_from_slice(&parity);
                let s: Vec<&[u8]> = blocks.iter().map(Buf::get).collect();
                assert!(strata_isal::xor_check(&s).unwrap(), "n {n} len {len}");
                assert!(portable::xor_check(&s));
                if len == 0 {
                    continue;
                }
                // Flip one byte: in the ISA-L prefix, in the tail, at the ends.
                for pos in [0, len - 1, r.gen_range(0..len)] {
                    let which = r.gen_range(0..n);
                    blocks[which].get_mut()[pos] ^= 1 << r.gen_range(0..8);
                    let s: Vec<&[u8]> = blocks.iter().map(Buf::get).collect();
                    assert!(!strata_isal::xor_check(&s).unwrap(), "pos {pos} len {len}");
                    assert!(!portable::xor_check(&s));
                    blocks[which].get_mut()[pos] = 0;
                    let s: Vec<&[u8]> = blocks.iter().map(Buf::get).collect();
                    let fix = s.iter().fold(0, |a, b| a ^ b[pos]);
                    blocks[which].get_mut()[pos] = fix;
                }
            }
        }
    }
}

#[test]
fn pq_gen_and_check_match_reference() {
    let mut r = rng();
    for &len in LENS {
        for &mis in MISALIGN {
            for n in [1, 2, 3, 4, 6, 10, MAX_SOURCES] {
                let data = bufs(n, len, mis, &mut r);
                let d: Vec<&[u8]> = data.iter().map(Buf::get).collect();
                let (wp, wq) = ref_pq(&d, len);
                let mut p = Buf::new(len, mis, &mut r);
                let mut q = Buf::new(len, mis, &mut r);
                strata_isal::pq_gen(&d, p.get_mut(), q.get_mut()).unwrap();
                assert_eq!(p.get(), &wp[..], "P n {n} len {len} mis {mis}");
                assert_eq!(q.get(), &wq[..], "Q n {n} len {len} mis {mis}");
                let (mut pp, mut pq) = (vec![0; len], vec![0; len]);
                portable::pq_gen(&d, &mut pp, &mut pq);
                assert_eq!((pp, pq), (wp, wq));

                assert!(strata_isal::pq_check(&d, p.get(), q.get()).unwrap());
                assert!(portable::pq_check(&d, p.get(), q.get()));
                if len == 0 {
                    continue;
                }
                let pos = r.gen_range(0..len);
                let bit = 1u8 << r.gen_range(0..8);
                p.get_mut()[pos] ^= bit;
                assert!(!strata_isal::pq_check(&d, p.get(), q.get()).unwrap());
                assert!(!portable::pq_check(&d, p.get(), q.get()));
                p.get_mut()[pos] ^= bit;
                q.get_mut()[pos] ^= bit;
                assert!(!strata_isal::pq_check(&d, p.get(), q.get()).unwrap());
                q.get_mut()[pos] ^= bit;
                drop(d);
                let mut data = data;
                let which = r.gen_range(0..n);
                data[which].get_mut()[pos] ^= bit;
                let d: Vec<&[u8]> = data.iter().map(Buf::get).collect();
                assert!(!strata_isal::pq_check(&d, p.get(), q.get()).unwrap());
                assert!(!portable::pq_check(&d, p.get(), q.get()));
            }
        }
    }
}

#[test]
fn raid6_recovers_every_pair_of_members() {
    let mut r = rng();
    for members in 4..=8 {
        let n = members - 2;
        for (len, mis) in [(4096, 0), (4096 + 13, 1), (7, 0), (0, 0), (65536, 16)] {
            let mut stripe = bufs(members, len, mis, &mut r);
            {
                let (data, pq) = stripe.split_at_mut(n);
                let d: Vec<&[u8]> = data.iter().map(Buf::get).collect();
                let (wp, wq) = ref_pq(&d, len);
                pq[0].get_mut().copy_from_slice(&wp);
                pq[1].get_mut().copy_from_slice(&wq);
            }
            let good: Vec<Vec<u8>> = stripe.iter().map(|b| b.get().to_vec()).collect();
            for a in 0..members {
                for b in 0..members {
                    if a == b {
                        continue;
                    }
                    stripe[a].get_mut().fill(0xEE);
                    stripe[b].get_mut().fill(0x11);
                    let mut m: Vec<&mut [u8]> = stripe.iter_mut().map(Buf::get_mut).collect();
                    strata_isal::raid6_recover(&mut m, a, b).unwrap();
                    for (i, g) in good.iter().enumerate() {
                        assert_eq!(
                            stripe[i].get(),
                            &g[..],
                            "members {members} failed ({a},{b}) member {i} len {len}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn raid6_specific_functions_and_errors() {
    let mut r = rng();
    let len = 4096;
    let mut stripe = bufs(6, len, 0, &mut r);
    let (data, pq) = stripe.split_at_mut(4);
    let (p, q) = pq.split_at_mut(1);
    {
        let d: Vec<&[u8]> = data.iter().map(Buf::get).collect();
        strata_isal::pq_gen(&d, p[0].get_mut(), q[0].get_mut()).unwrap();
    }
    let good: Vec<Vec<u8>> = data.iter().map(|b| b.get().to_vec()).collect();
    let (gp, gq) = (p[0].get().to_vec(), q[0].get().to_vec());

    let mut d: Vec<&mut [u8]> = data.iter_mut().map(Buf::get_mut).collect();
    d[1].fill(0);
    d[3].fill(0);
    strata_isal::raid6_recover_two_data(&mut d, &gp, &gq, 3, 1).unwrap();
    assert!(d.iter().zip(&good).all(|(a, b)| **a == b[..]));

    d[2].fill(0);
    let mut p2 = vec![0u8; len];
    strata_isal::raid6_recover_data_and_p(&mut d, &mut p2, &gq, 2).unwrap();
    assert_eq!(p2, gp);
    assert!(d.iter().zip(&good).all(|(a, b)| **a == b[..]));

    d[0].fill(0);
    let mut q2 = vec![0u8; len];
    strata_isal::raid6_recover_data_and_q(&mut d, &gp, &mut q2, 0).unwrap();
    assert_eq!(q2, gq);
    assert!(d.iter().zip(&good).all(|(a, b)| **a == b[..]));

    assert_eq!(
        strata_isal::raid6_recover_two_data(&mut d, &gp, &gq, 2, 2),
        Err(Error::SameIndex(2))
    );
    assert_eq!(
        strata_isal::raid6_recover_data_and_q(&mut d, &gp, &mut q2, 4),
        Err(Error::BadIndex {
            index: 4,
            members: 4
        })
    );
    assert!(matches!(
        strata_isal::raid6_recover_data_and_p(&mut d, &mut p2[..10], &gq, 1),
        Err(Error::LengthMismatch { .. })
    ));
}

#[test]
fn argument_errors() {
    let a = [0u8; 64];
    let b = [0u8; 65];
    let mut out = [0u8; 64];
    assert_eq!(strata_isal::xor_gen(&[], &mut out), Err(Error::NoSources));
    assert!(matches!(
        strata_isal::xor_gen(&[&a, &b], &mut out),
        Err(Error::LengthMismatch { index: 1, .. })
    ));
    let many = vec![&a[..]; MAX_SOURCES + 1];
    assert!(matches!(
        strata_isal::xor_gen(&many, &mut out),
        Err(Error::TooManySources { .. })
    ));
    assert!(matches!(
        strata_isal::pq_gen(&many, &mut [0u8; 64], &mut [0u8; 64]),
        Err(Error::TooManySources { .. })
    ));
    assert!(matches!(
        strata_isal::pq_check(&[&a], &a, &b),
        Err(Error::LengthMismatch { .. })
    ));
    assert_eq!(strata_isal::xor_check(&[]), Err(Error::NoSources));
    assert!(strata_isal::xor_check(&[&a]).unwrap());
    assert!(!strata_isal::xor_check(&[&[1u8][..]]).unwrap());
}

#[test]
fn gf_helpers_match_reference() {
    for a in 0..=255u8 {
        for b in 0..=255u8 {
            let m = gf_mul(a, b);
            assert_eq!(m, ref_gf_mul(a, b));
            assert_eq!(m, portable::gf_mul(a, b));
        }
        if a != 0 {
            assert_eq!(gf_mul(a, gf_inv(a)), 1);
        }
        assert_eq!(portable::gf_mul2(a), ref_gf_mul(a, 2));
    }
    for i in 0..300 {
        assert_eq!(gf::gf_pow2(i), ref_pow2(i % 255));
    }

    // Invert a k×k sub-matrix of a Cauchy generator; A · A^-1 = I.
    let (m, k) = (10, 6);
    let mut gen = vec![0u8; m * k];
    gf::gen_cauchy1_matrix(&mut gen, m, k).unwrap();
    let rows = [1, 4, 6, 7, 8, 9];
    let sub: Vec<u8> = rows
        .iter()
        .flat_map(|&r| gen[r * k..(r + 1) * k].to_vec())
        .collect();
    let mut work = sub.clone();
    let mut inv = vec![0u8; k * k];
    gf::invert_matrix(&mut work, &mut inv, k).unwrap();
    for i in 0..k {
        for j in 0..k {
            let v = (0..k).fold(0, |acc, t| acc ^ ref_gf_mul(sub[i * k + t], inv[t * k + j]));
            assert_eq!(v, u8::from(i == j));
        }
    }
    let mut singular = vec![1u8; 4];
    assert_eq!(
        gf::invert_matrix(&mut singular, &mut [0u8; 4], 2),
        Err(Error::Singular)
    );
    let mut rs = vec![0u8; m * k];
    gf::gen_rs_matrix(&mut rs, m, k).unwrap();
    assert!((0..k).all(|i| (0..k).all(|j| rs[i * k + j] == u8::from(i == j))));
    assert!(gf::gen_rs_matrix(&mut rs, m, m + 1).is_err());
}

#[test]
fn ec_encode_matches_reference() {
    let mut r = rng();
    for &len in LENS {
        for &mis in MISALIGN {
            for (k, rows) in [(1, 1), (3, 2), (8, 4), (gf::MAX_EC_SOURCES, 2)] {
                let data = bufs(k, len, mis, &mut r);
                let d: Vec<&[u8]> = data.iter().map(Buf::get).collect();
                let coefs: Vec<u8> = (0..k * rows).map(|_| r.gen()).collect();
                let mut outs = bufs(rows, len, mis, &mut r);
                let mut o: Vec<&mut [u8]> = outs.iter_mut().map(Buf::get_mut).collect();
                gf::ec_encode(&coefs, &d, &mut o).unwrap();
                for (row, out) in o.iter().enumerate() {
                    for i in 0..len {
                        let want =
                            (0..k).fold(0, |a, j| a ^ ref_gf_mul(coefs[row * k + j], d[j][i]));
                        assert_eq!(out[i], want, "k {k} rows {rows} len {len} byte {i}");
                    }
                }
            }
        }
    }
    assert!(gf::ec_encode(&[1, 2], &[&[0u8; 4][..]], &mut [&mut [0u8; 4][..]]).is_err());
}
