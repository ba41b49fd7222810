//! ISA-L (through `strata-isal`) against pure-Rust alternatives for the data kernels, at
//! 4 KiB, 64 KiB and 1 MiB per buffer, warm cache.
//!
//! Throughput counts every buffer touched, as ISA-L's own perf programs do: sources plus
//! outputs for xor_gen / pq_gen (`(n + 1) · len`, `(n + 2) · len`), the buffer for CRC32C.
//! Buffers start on a 64 B boundary (ISA-L's fast path).
//!
//! `cargo bench -p strata-bench --bench kernels -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use strata_isal::portable;

const SIZES: [usize; 3] = [4 << 10, 64 << 10, 1 << 20];

/// `count` buffers of `len` bytes, each starting on a 64 B boundary, filled with a pattern.
struct Bufs {
    mem: Vec<Vec<u8>>,
    off: Vec<usize>,
    len: usize,
}

impl Bufs {
    fn new(count: usize, len: usize) -> Self {
        let mut mem = Vec::new();
        let mut off = Vec::new();
        for i in 0..count {
            let mut m = vec![0u8; len + 64];
            for (j, b) in m.iter_mut().enumerate() {
                *b = (j as u8).wrapping_mul(31).wrapping_add(i as u8);
            }
            off.push(m.as_ptr().align_offset(64));
            mem.push(m);
        }
        Self { mem, off, len }
    }
    fn all(&self) -> Vec<&[u8]> {
        self.mem
            .iter()
            .zip(&self.off)
            .map(|(m, &o)| &m[o..o + self.len])
            .collect()
    }
    fn one_mut(&mut self, i: usize) -> &mut [u8] {
        let o = self.off[i];
        &mut self.mem[i][o..o + self.len]
    }
}

/// The multi-pass XOR strata used before: dest = s0, then dest ^= s_i per source.
fn xor_multipass(sources: &[&[u8]], dest: &mut [u8]) {
    dest.copy_from_slice(sources[0]);
    for s in &sources[1..] {
        portable::xor_into(dest, s);
    }
}

fn xor_gen(c: &mut Criterion) {
    for n in [4usize, 8] {
        let mut g = c.benchmark_group(format!("xor_gen_{n}src"));
        for len in SIZES {
            let srcs = Bufs::new(n, len);
            let s = srcs.all();
            let mut dst = Bufs::new(1, len);
            let d = dst.one_mut(0);
            g.throughput(Throughput::Bytes(((n + 1) * len) as u64));
            g.bench_function(BenchmarkId::new("isal", len), |b| {
                b.iter(|| strata_isal::xor_gen(&s, d).unwrap())
            });
            g.bench_function(BenchmarkId::new("portable_1pass", len), |b| {
                b.iter(|| portable::xor_gen(&s, d))
            });
            g.bench_function(BenchmarkId::new("xor_into_multipass", len), |b| {
                b.iter(|| xor_multipass(&s, d))
            });
        }
        g.finish();
    }
    // ISA-L's xor_gen_perf warm case: 10 sources x 8 KiB.
    let mut g = c.benchmark_group("xor_gen_10x8KiB");
    let srcs = Bufs::new(10, 8192);
    let s = srcs.all();
    let mut dst = Bufs::new(1, 8192);
    let d = dst.one_mut(0);
    g.throughput(Throughput::Bytes(11 * 8192));
    g.bench_function("isal", |b| b.iter(|| strata_isal::xor_gen(&s, d).unwrap()));
    g.bench_function("portable_1pass", |b| b.iter(|| portable::xor_gen(&s, d)));
    g.bench_function("xor_into_multipass", |b| b.iter(|| xor_multipass(&s, d)));
    g.finish();
}

/// `dst ^= src` (the shape of `kernels::xor_into`, `xor_write`, RAID-5 read-modify-write).
fn xor_into(c: &mut Criterion) {
    let mut g = c.benchmark_group("xor_into_dst^=src");
    for len in SIZES {
        let srcs = Bufs::new(1, len);
        let s = srcs.all();
        let mut dst = Bufs::new(1, len);
        let d = dst.one_mut(0);
        g.throughput(Throughput::Bytes((2 * len) as u64));
        g.bench_function(BenchmarkId::new("isal_xor_acc", len), |b| {
            b.iter(|| strata_isal::xor_acc(d, &s).unwrap())
        });
        g.bench_function(BenchmarkId::new("portable_xor_into", len), |b| {
            b.iter(|| portable::xor_into(d, s[0]))
        });
    }
    g.finish();
}

/// A general-purpose portable GF(2^8) P+Q: Q by per-coefficient 256-entry product tables
/// (`Q = Σ g^i · D_i`), the textbook alternative to Horner's rule.
fn pq_gen_tables(data: &[&[u8]], p: &mut [u8], q: &mut [u8], tables: &[[u8; 256]]) {
    p.fill(0);
    q.fill(0);
    for (d, t) in data.iter().zip(tables) {
        for ((pv, qv), x) in p.iter_mut().zip(q.iter_mut()).zip(d.iter()) {
            *pv ^= x;
            *qv ^= t[*x as usize];
        }
    }
}

fn gf_tables(n: usize) -> Vec<[u8; 256]> {
    (0..n)
        .map(|i| {
            let g = strata_isal::gf::gf_pow2(i);
            let mut t = [0u8; 256];
            for (x, v) in t.iter_mut().enumerate() {
                *v = portable::gf_mul(g, x as u8);
            }
            t
        })
        .collect()
}

fn pq_case(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    n: usize,
    len: usize,
    id: &str,
) {
    let data = Bufs::new(n, len);
    let d = data.all();
    let mut pq = Bufs::new(2, len);
    let (p_mem, q_mem) = pq.mem.split_at_mut(1);
    let (po, qo) = (pq.off[0], pq.off[1]);
    let p = &mut p_mem[0][po..po + len];
    let q = &mut q_mem[0][qo..qo + len];
    let tables = gf_tables(n);
    g.throughput(Throughput::Bytes(((n + 2) * len) as u64));
    g.bench_function(BenchmarkId::new("isal", id), |b| {
        b.iter(|| strata_isal::pq_gen(&d, p, q).unwrap())
    });
    g.bench_function(BenchmarkId::new("portable_horner", id), |b| {
        b.iter(|| portable::pq_gen(&d, p, q))
    });
    g.bench_function(BenchmarkId::new("portable_gf_tables", id), |b| {
        b.iter(|| pq_gen_tables(&d, p, q, &tables))
    });
}

fn pq_gen(c: &mut Criterion) {
    let mut g = c.benchmark_group("pq_gen_10x8KiB");
    pq_case(&mut g, 10, 8192, "8192");
    g.finish();
    let mut g = c.benchmark_group("pq_gen_4+2");
    for len in SIZES {
        pq_case(&mut g, 4, len, &len.to_string());
    }
    g.finish();
}

/// Consistency checks: XOR over 8 sources + parity, P+Q over 4 + 2.
fn checks(c: &mut Criterion) {
    let mut g = c.benchmark_group("xor_check_8+1");
    for len in SIZES {
        let mut blocks = Bufs::new(9, len);
        {
            let parity = {
                let s = blocks.all();
                let mut p = vec![0u8; len];
                portable::xor_gen(&s[..8], &mut p);
                p
            };
            blocks.one_mut(8).copy_from_slice(&parity);
        }
        let s = blocks.all();
        g.throughput(Throughput::Bytes((9 * len) as u64));
        g.bench_function(BenchmarkId::new("isal", len), |b| {
            b.iter(|| assert!(strata_isal::xor_check(&s).unwrap()))
        });
        g.bench_function(BenchmarkId::new("portable", len), |b| {
            b.iter(|| assert!(portable::xor_check(&s)))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("pq_check_4+2");
    for len in SIZES {
        let data = Bufs::new(4, len);
        let d = data.all();
        let (mut p, mut q) = (Bufs::new(1, len), Bufs::new(1, len));
        portable::pq_gen(&d, p.one_mut(0), q.one_mut(0));
        let (p, q) = (p.all()[0], q.all()[0]);
        g.throughput(Throughput::Bytes((6 * len) as u64));
        g.bench_function(BenchmarkId::new("isal", len), |b| {
            b.iter(|| assert!(strata_isal::pq_check(&d, p, q).unwrap()))
        });
        g.bench_function(BenchmarkId::new("portable", len), |b| {
            b.iter(|| assert!(portable::pq_check(&d, p, q)))
        });
    }
    g.finish();
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for len in SIZES {
        let buf = Bufs::new(1, len);
        let d = buf.all()[0];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("isal_crc32_iscsi", len), |b| {
            b.iter(|| strata_isal::crc32c(d))
        });
        g.bench_function(BenchmarkId::new("crc32c_crate", len), |b| {
            b.iter(|| crc32c::crc32c(d))
        });
    }
    g.finish();
}

criterion_group!(benches, xor_gen, xor_into, pq_gen, checks, crc);
criterion_main!(benches);
