//! Micro-benchmarks of the bdev hot path's building blocks: the clock, DMA buffer
//! alloc/free, I/O descriptor recycling, and the XOR/CRC kernels.
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use strata_bdev::{kernels, BdevIo, IoType};
use strata_reactor::{clock, dma};

fn clock_and_alloc(c: &mut Criterion) {
    c.bench_function("clock::ticks", |b| b.iter(clock::ticks));
    c.bench_function("std::time::Instant::now", |b| {
        b.iter(std::time::Instant::now)
    });
    dma::init_iobuf(dma::IobufOptions::default()).unwrap();
    c.bench_function("dma alloc+free 4KiB", |b| b.iter(|| dma::alloc(4096)));
    c.bench_function("BdevIo new+drop", |b| {
        b.iter(|| BdevIo::new(IoType::Read, 0, 8))
    });
}

fn kernels_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernels");
    for size in [4096usize, 65536, 1 << 20] {
        let src = vec![0x5au8; size];
        let mut dst = vec![0xa5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("xor_into", size), &size, |b, _| {
            b.iter(|| kernels::xor_into(&mut dst, &src))
        });
        g.bench_with_input(BenchmarkId::new("crc32c", size), &size, |b, _| {
            b.iter(|| kernels::crc32c(&src))
        });
    }
    g.finish();
}

criterion_group!(benches, clock_and_alloc, kernels_bench);
criterion_main!(benches);
