//! The uring bdev on real files: data round trips and persistence, write_zeroes/unmap,
//! xor_write and checksum semantics, range checks, queueing beyond the ring, errors at
//! create time, a model-checked random workload at queue depth > 1, and XOR writes racing
//! from two reactors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::Cell;
use std::collections::VecDeque;
use std::io::Write;
use std::rc::Rc;
use std::sync::Arc;
use strata_bdev::modules::uring::{self, UringBdev, UringOptions};
use strata_bdev::wait::{checksums, no_data, read_vec, write_slice, xor_write_slice};
use strata_bdev::{kernels, registry, Bdev, BdevError, BdevIo, FnSink, IoStatus, IoType};
use strata_reactor::{Mode, ReactorSet};

mod common;
use common::on_reactor;

/// A temporary file of `len` bytes filled with `fill`.
fn temp_file(len: usize, fill: u8) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&vec![fill; len]).unwrap();
    f.flush().unwrap();
    f
}

fn mk(name: &str, path: &std::path::Path, block_size: Option<u32>) -> Arc<UringBdev> {
    uring::create(UringOptions {
        name: name.into(),
        filename: path.to_str().unwrap().into(),
        block_size,
        uuid: None,
        module: "uring",
    })
    .unwrap()
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

#[test]
fn round_trip_and_properties() {
    let f = temp_file(4 << 20, 0);
    let b = mk("ur_rt", f.path(), None);
    assert_eq!(b.block_size(), 512);
    assert_eq!(b.num_blocks(), (4 << 20) / 512);
    assert_eq!(b.product_name(), "URING bdev");
    assert_eq!(b.module(), "uring");
    eprintln!(
        "uring on {}: o_direct = {}",
        f.path().display(),
        b.o_direct()
    );
    let ds = b.driver_specific();
    assert_eq!(ds["uring"]["filename"], f.path().to_str().unwrap());
    assert_eq!(ds["uring"]["o_direct"], b.o_direct());
    let cfg = b.config().unwrap();
    assert_eq!(cfg.method, "bdev_uring_create");
    assert_eq!(cfg.params["block_size"], 512);
    assert_eq!(cfg.params["name"], "ur_rt");
    // Every I/O type but the GF XOR write, which only a Q parity volume takes.
    assert!(IoType::ALL
        .iter()
        .all(|t| b.supports(*t) == (*t != IoType::GfXorWrite)));

    on_reactor(|| async {
        let d = registry::open("ur_rt", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        // Single block, a few blocks, and a transfer spanning several pool buffers.
        for (off, blocks, seed) in [(0u64, 1u64, 1u64), (7, 9, 2), (100, 700, 3), (8191, 1, 4)] {
            let data = pattern(seed, blocks as usize * 512);
            write_slice(&ch, off, &data).await.unwrap();
            assert_eq!(
                read_vec(&ch, off, blocks).await.unwrap(),
                data,
                "off {off} blocks {blocks}"
            );
        }
        no_data(&ch, IoType::Flush, 0, 0).await.unwrap();
        no_data(&ch, IoType::Reset, 0, 0).await.unwrap();
        assert_eq!(ch.outstanding(), 0);
    });
    // Wrong module name cannot delete it.
    assert!(uring::delete("ur_rt", "aio").is_err());
    uring::delete("ur_rt", "uring").unwrap();
    assert!(registry::get("ur_rt").is_none());
}

#[test]
fn aio_flavour_and_block_size() {
    let f = temp_file(1 << 20, 0);
    let b = uring::create(UringOptions {
        name: "ur_aio".into(),
        filename: f.path().to_str().unwrap().into(),
        block_size: Some(4096),
        uuid: Some(uuid::Uuid::nil()),
        module: "aio",
    })
    .unwrap();
    assert_eq!(b.module(), "aio");
    assert_eq!(b.product_name(), "AIO disk");
    assert_eq!(b.uuid(), uuid::Uuid::nil());
    assert_eq!(b.num_blocks(), 256);
    assert_eq!(b.config().unwrap().method, "bdev_aio_create");
    assert!(b.driver_specific()["aio"]["filename"].is_string());
    // Duplicate name.
    let dup = uring::create(UringOptions {
        name: "ur_aio".into(),
        filename: f.path().to_str().unwrap().into(),
        block_size: None,
        uuid: None,
        module: "aio",
    });
    assert!(matches!(dup, Err(BdevError::Exists(_))));
    on_reactor(|| async {
        let d = registry::open("ur_aio", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let data = pattern(9, 3 * 4096);
        write_slice(&ch, 250, &data).await.unwrap();
        assert_eq!(read_vec(&ch, 250, 3).await.unwrap(), data);
    });
    assert!(uring::delete("ur_aio", "uring").is_err());
    uring::delete("ur_aio", "aio").unwrap();
}

#[test]
fn create_errors() {
    let opts = |name: &str, filename: &str, bs: Option<u32>| UringOptions {
        name: name.into(),
        filename: filename.into(),
        block_size: bs,
        uuid: None,
        module: "uring",
    };
    match uring::create(opts("ur_missing", "/nonexistent/strata-uring-test", None)) {
        Err(BdevError::Io { path, source }) => {
            assert_eq!(path, "/nonexistent/strata-uring-test");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    let small = temp_file(100, 0);
    let p = small.path().to_str().unwrap();
    assert!(matches!(
        uring::create(opts("ur_small", p, None)),
        Err(BdevError::Invalid(_))
    ));
    let f = temp_file(8192, 0);
    let p = f.path().to_str().unwrap();
    assert!(matches!(
        uring::create(opts("ur_bs", p, Some(1000))),
        Err(BdevError::Invalid(_))
    ));
    assert!(matches!(
        uring::create(opts("ur_bs", p, Some(16384))),
        Err(BdevError::Invalid(_))
    ));
    let mut o = opts("ur_mod", p, None);
    o.module = "nvme";
    assert!(matches!(uring::create(o), Err(BdevError::Invalid(_))));
    // A directory cannot be opened for writing.
    assert!(matches!(
        uring::create(opts("ur_dir", "/tmp", None)),
        Err(BdevError::Io { .. })
    ));
    assert!(registry::get("ur_missing").is_none() && registry::get("ur_small").is_none());
}

#[test]
fn persists_to_the_file() {
    let f = temp_file(1 << 20, 0x11);
    mk("ur_persist", f.path(), None);
    let data = pattern(5, 64 * 512);
    let d2 = data.clone();
    on_reactor(move || async move {
        let d = registry::open("ur_persist", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        write_slice(&ch, 10, &d2).await.unwrap();
        no_data(&ch, IoType::Flush, 0, 0).await.unwrap();
    });
    let file = std::fs::read(f.path()).unwrap();
    assert_eq!(&file[10 * 512..74 * 512], &data[..]);
    assert!(file[..10 * 512].iter().all(|b| *b == 0x11));
    assert!(file[74 * 512..].iter().all(|b| *b == 0x11));
    uring::delete("ur_persist", "uring").unwrap();
}

async fn zeroes_and_unmap(name: &'static str) {
    let d = registry::open(name, |_| {}).unwrap();
    let ch = d.channel().unwrap();
    let n = ch.num_blocks();
    write_slice(&ch, 0, &vec![0xaa; n as usize * 512])
        .await
        .unwrap();
    no_data(&ch, IoType::WriteZeroes, 3, 5).await.unwrap();
    no_data(&ch, IoType::Unmap, 20, 600).await.unwrap();
    // A range larger than one temp buffer, for the zero-writing fallback.
    no_data(&ch, IoType::WriteZeroes, 700, 400).await.unwrap();
    let all = read_vec(&ch, 0, n).await.unwrap();
    for (blk, chunk) in all.chunks(512).enumerate() {
        let blk = blk as u64;
        let zero = (3..8).contains(&blk) || (20..620).contains(&blk) || (700..1100).contains(&blk);
        let want = if zero { 0 } else { 0xaa };
        assert!(
            chunk.iter().all(|b| *b == want),
            "{name}: block {blk} should be {want:#x}"
        );
    }
}

#[test]
fn write_zeroes_and_unmap_read_back_zero() {
    let f = temp_file(1 << 20, 0);
    mk("ur_zero", f.path(), None);
    on_reactor(|| zeroes_and_unmap("ur_zero"));
    uring::delete("ur_zero", "uring").unwrap();
}

/// tmpfs: no FALLOC_FL_ZERO_RANGE (the zero-writing fallback) and, on older kernels, no
/// O_DIRECT (the buffered fallback).
#[test]
fn write_zeroes_and_unmap_on_tmpfs() {
    let Ok(f) = tempfile::NamedTempFile::new_in("/dev/shm") else {
        eprintln!("no /dev/shm; skipped");
        return;
    };
    f.as_file().set_len(1 << 20).unwrap();
    let b = mk("ur_shm", f.path(), None);
    eprintln!("uring on tmpfs: o_direct = {}", b.o_direct());
    on_reactor(|| zeroes_and_unmap("ur_shm"));
    on_reactor(|| zeroes_and_unmap("ur_shm"));
    uring::delete("ur_shm", "uring").unwrap();
}

#[test]
fn xor_write_and_checksum() {
    let f = temp_file(2 << 20, 0);
    mk("ur_xor", f.path(), None);
    on_reactor(|| async {
        let d = registry::open("ur_xor", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        // 700 blocks = 350 KiB: several 128 KiB pieces, payload over several pool buffers.
        let (off, n) = (33u64, 700u64);
        let old = pattern(11, n as usize * 512);
        let x = pattern(12, n as usize * 512);
        write_slice(&ch, off, &old).await.unwrap();
        xor_write_slice(&ch, off, &x).await.unwrap();
        let want: Vec<u8> = old.iter().zip(&x).map(|(a, b)| a ^ b).collect();
        let got = read_vec(&ch, off, n).await.unwrap();
        assert!(got == want, "xor_write result differs");
        // Neighbours untouched.
        assert!(read_vec(&ch, off - 1, 1)
            .await
            .unwrap()
            .iter()
            .all(|b| *b == 0));
        assert!(read_vec(&ch, off + n, 1)
            .await
            .unwrap()
            .iter()
            .all(|b| *b == 0));
        // XOR twice restores.
        xor_write_slice(&ch, off + 5, &x[..512 * 3]).await.unwrap();
        xor_write_slice(&ch, off + 5, &x[..512 * 3]).await.unwrap();
        assert!(read_vec(&ch, off, n).await.unwrap() == want);

        // Checksums per chunk, with a last partial chunk; chunks both smaller and larger
        // than a 128 KiB read piece.
        for chunk_blocks in [1u32, 7, 256, 300, 1000] {
            let sums = checksums(&ch, off, n, chunk_blocks).await.unwrap();
            let chunk = chunk_blocks as usize * 512;
            let expect: Vec<u32> = want.chunks(chunk).map(kernels::crc32c).collect();
            assert_eq!(sums.len(), expect.len(), "chunk_blocks {chunk_blocks}");
            assert!(
                sums == expect,
                "chunk_blocks {chunk_blocks}: checksums differ"
            );
        }
    });
    uring::delete("ur_xor", "uring").unwrap();
}

#[test]
fn out_of_range_fails_and_file_untouched() {
    let f = temp_file(64 * 512, 7);
    mk("ur_range", f.path(), None);
    on_reactor(|| async {
        let d = registry::open("ur_range", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        assert_eq!(
            write_slice(&ch, 63, &[1u8; 1024]).await,
            Err(IoStatus::OutOfRange)
        );
        assert_eq!(
            write_slice(&ch, 64, &[1u8; 512]).await,
            Err(IoStatus::OutOfRange)
        );
        assert_eq!(
            xor_write_slice(&ch, 60, &[1u8; 512 * 5]).await,
            Err(IoStatus::OutOfRange)
        );
        assert_eq!(read_vec(&ch, u64::MAX, 1).await, Err(IoStatus::OutOfRange));
        assert_eq!(
            no_data(&ch, IoType::Unmap, 60, 5).await,
            Err(IoStatus::OutOfRange)
        );
        assert_eq!(
            no_data(&ch, IoType::WriteZeroes, 64, 1).await,
            Err(IoStatus::OutOfRange)
        );
        assert_eq!(checksums(&ch, 0, 65, 1).await, Err(IoStatus::OutOfRange));
    });
    let file = std::fs::read(f.path()).unwrap();
    assert_eq!(file.len(), 64 * 512);
    assert!(file.iter().all(|b| *b == 7));
    uring::delete("ur_range", "uring").unwrap();
}

#[test]
fn more_io_than_the_ring_queues_and_completes() {
    const N: u64 = 2000;
    let f = temp_file(N as usize * 4096, 0);
    mk("ur_flood", f.path(), Some(4096));
    on_reactor(|| async {
        let d = registry::open("ur_flood", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        // Submit every write before awaiting any.
        let done = Rc::new(Cell::new(0u64));
        let failed = Rc::new(Cell::new(0u64));
        let sink = {
            let (done, failed) = (done.clone(), failed.clone());
            Rc::new(FnSink(move |io: BdevIo, _| {
                done.set(done.get() + 1);
                if io.status != IoStatus::Success {
                    failed.set(failed.get() + 1);
                }
            }))
        };
        for i in 0..N {
            let mut buf = strata_reactor::dma::alloc(4096).unwrap();
            buf.as_mut_slice().fill((i % 251) as u8 + 1);
            let mut io = BdevIo::write(i, 1, buf);
            io.push_completion(sink.clone(), i);
            ch.submit(io);
        }
        assert!(
            ch.outstanding() > 256,
            "more I/O outstanding than the ring holds"
        );
        while done.get() < N {
            strata_reactor::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(failed.get(), 0);
        assert_eq!(ch.outstanding(), 0);
        let all = read_vec(&ch, 0, N).await.unwrap();
        for (i, blk) in all.chunks(4096).enumerate() {
            assert!(blk.iter().all(|b| *b == (i % 251) as u8 + 1), "block {i}");
        }
    });
    uring::delete("ur_flood", "uring").unwrap();
}

/// A channel dropped with I/O in flight waits for it instead of freeing busy buffers.
#[test]
fn channel_dropped_with_io_in_flight() {
    let f = temp_file(1 << 20, 0);
    let b = mk("ur_dropch", f.path(), None);
    on_reactor(move || async move {
        let ch = b.clone().create_channel().unwrap();
        let completed = Rc::new(Cell::new(0u32));
        let c2 = completed.clone();
        let sink = Rc::new(FnSink(move |_io: BdevIo, _| c2.set(c2.get() + 1)));
        for i in 0..300u64 {
            let mut buf = strata_reactor::dma::alloc(4096).unwrap();
            buf.as_mut_slice().fill(0x5a);
            let mut io = BdevIo::write(i * 8, 8, buf);
            io.block_size = 512;
            io.push_completion(sink.clone(), 0);
            ch.submit(io);
        }
        // Let the poller submit them, then drop the channel at once.
        strata_reactor::yield_now().await;
        drop(ch);
        strata_reactor::sleep(std::time::Duration::from_millis(5)).await;
        // A new channel still works.
        let d = registry::open("ur_dropch", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        write_slice(&ch, 0, &[3u8; 512]).await.unwrap();
        assert_eq!(read_vec(&ch, 0, 1).await.unwrap(), vec![3u8; 512]);
        eprintln!("completed before drop: {}", completed.get());
    });
    uring::delete("ur_dropch", "uring").unwrap();
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Read,
    Write,
    Zeroes,
    Unmap,
    Xor,
    Checksum,
}

/// A model-test task and the blocks `[start, end)` it touches; `true` if it writes.
type InFlight = (
    strata_reactor::JoinHandle<Result<(), String>>,
    u64,
    u64,
    bool,
);

#[test]
fn random_workload_matches_model() {
    const BLOCKS: u64 = 4096;
    const BS: usize = 512;
    let f = temp_file(BLOCKS as usize * BS, 0);
    mk("ur_model", f.path(), None);
    let mismatches = on_reactor(|| async {
        let d = registry::open("ur_model", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let mut model = vec![0u8; BLOCKS as usize * BS];
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let mut errors = Vec::new();
        for n in 0..3000u32 {
            let op = match rng.gen_range(0..100) {
                0..=29 => Op::Read,
                30..=59 => Op::Write,
                60..=67 => Op::Zeroes,
                68..=75 => Op::Unmap,
                76..=89 => Op::Xor,
                _ => Op::Checksum,
            };
            let len = rng.gen_range(1..=64u64);
            let off = rng.gen_range(0..=BLOCKS - len);
            let writes = matches!(op, Op::Write | Op::Zeroes | Op::Unmap | Op::Xor);
            // Keep ≤ 16 in flight, and no write in flight overlapping anything else in flight,
            // so the model's order is the only possible one.
            loop {
                let conflict = inflight
                    .iter()
                    .any(|(_, s, e, w)| (*w || writes) && off < *e && *s < off + len);
                if !conflict && inflight.len() < 16 {
                    break;
                }
                let (h, ..) = inflight.pop_front().unwrap();
                if let Err(e) = h.await {
                    errors.push(e);
                }
            }
            let r = off as usize * BS..(off + len) as usize * BS;
            let ch2 = ch.clone();
            let task = match op {
                Op::Read => {
                    let want = model[r].to_vec();
                    strata_reactor::spawn_local(async move {
                        let got = read_vec(&ch2, off, len)
                            .await
                            .map_err(|e| format!("op {n} read: {e:?}"))?;
                        if got != want {
                            return Err(format!("op {n}: read {off}+{len} differs from model"));
                        }
                        Ok(())
                    })
                }
                Op::Write => {
                    let data = pattern(n as u64, r.len());
                    model[r].copy_from_slice(&data);
                    strata_reactor::spawn_local(async move {
                        write_slice(&ch2, off, &data)
                            .await
                            .map_err(|e| format!("op {n} write: {e:?}"))
                    })
                }
                Op::Zeroes | Op::Unmap => {
                    model[r].fill(0);
                    let t = if matches!(op, Op::Zeroes) {
                        IoType::WriteZeroes
                    } else {
                        IoType::Unmap
                    };
                    strata_reactor::spawn_local(async move {
                        no_data(&ch2, t, off, len)
                            .await
                            .map_err(|e| format!("op {n} {t:?}: {e:?}"))
                    })
                }
                Op::Xor => {
                    let data = pattern(n as u64 ^ 0xffff, r.len());
                    kernels::xor_into(&mut model[r], &data);
                    strata_reactor::spawn_local(async move {
                        xor_write_slice(&ch2, off, &data)
                            .await
                            .map_err(|e| format!("op {n} xor: {e:?}"))
                    })
                }
                Op::Checksum => {
                    let chunk = rng.gen_range(1..=16u32);
                    let want: Vec<u32> = model[r]
                        .chunks(chunk as usize * BS)
                        .map(kernels::crc32c)
                        .collect();
                    strata_reactor::spawn_local(async move {
                        let got = checksums(&ch2, off, len, chunk)
                            .await
                            .map_err(|e| format!("op {n} crc: {e:?}"))?;
                        if got != want {
                            return Err(format!("op {n}: checksums of {off}+{len}/{chunk} differ"));
                        }
                        Ok(())
                    })
                }
            };
            inflight.push_back((task, off, off + len, writes));
        }
        for (h, ..) in inflight {
            if let Err(e) = h.await {
                errors.push(e);
            }
        }
        let all = read_vec(&ch, 0, BLOCKS).await.unwrap();
        if all != model {
            errors.push("final contents differ from the model".into());
        }
        errors
    });
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    uring::delete("ur_model", "uring").unwrap();
}

#[test]
fn xor_writes_from_two_reactors_serialise() {
    const ROUNDS: usize = 150;
    let set = ReactorSet::start(&[0, 1], Mode::Interrupt).unwrap();
    let f = temp_file(1 << 20, 0);
    mk("ur_xor2", f.path(), None);
    // Each reactor XORs its payloads into overlapping ranges around blocks 0..48, several
    // in flight at a time.
    let payloads: Vec<Vec<(u64, Vec<u8>)>> = (0..2u64)
        .map(|r| {
            let mut rng = SmallRng::seed_from_u64(100 + r);
            (0..ROUNDS)
                .map(|i| {
                    let off = rng.gen_range(0..16u64);
                    let len = rng.gen_range(1..=32u64);
                    (off, pattern(r * 10_000 + i as u64, len as usize * 512))
                })
                .collect()
        })
        .collect();
    let mut expect = vec![0u8; 48 * 512];
    for p in payloads.iter().flatten() {
        kernels::xor_into(&mut expect[p.0 as usize * 512..], &p.1);
    }
    std::thread::scope(|s| {
        for (r, mine) in payloads.into_iter().enumerate() {
            let set = set.clone();
            s.spawn(move || {
                set.block_on(r, move || async move {
                    let d = registry::open("ur_xor2", |_| {}).unwrap();
                    let ch = d.channel().unwrap();
                    let mut tasks = VecDeque::new();
                    for (off, data) in mine {
                        if tasks.len() >= 8 {
                            let t: strata_reactor::JoinHandle<Result<(), IoStatus>> =
                                tasks.pop_front().unwrap();
                            t.await.unwrap();
                        }
                        let ch = ch.clone();
                        tasks.push_back(strata_reactor::spawn_local(async move {
                            xor_write_slice(&ch, off, &data).await
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                })
                .unwrap();
            });
        }
    });
    let got = set
        .block_on(0, || async {
            let d = registry::open("ur_xor2", |_| {}).unwrap();
            let ch = d.channel().unwrap();
            read_vec(&ch, 0, 48).await.unwrap()
        })
        .unwrap();
    assert!(got == expect, "concurrent XOR writes lost an update");
    uring::delete("ur_xor2", "uring").unwrap();
    set.stop();
}

/// Poll mode: no eventfd registered with the ring, completions found by polling alone.
#[test]
fn works_on_a_polling_reactor() {
    let set = ReactorSet::start(&[1], Mode::Poll).unwrap();
    let f = temp_file(1 << 20, 0);
    mk("ur_poll", f.path(), None);
    set.block_on(0, || async {
        let d = registry::open("ur_poll", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let data = pattern(77, 300 * 512);
        write_slice(&ch, 5, &data).await.unwrap();
        xor_write_slice(&ch, 5, &data).await.unwrap();
        assert!(read_vec(&ch, 5, 300).await.unwrap().iter().all(|b| *b == 0));
        write_slice(&ch, 5, &data).await.unwrap();
        let sums = checksums(&ch, 5, 300, 64).await.unwrap();
        let expect: Vec<u32> = data.chunks(64 * 512).map(kernels::crc32c).collect();
        assert_eq!(sums, expect);
        no_data(&ch, IoType::Unmap, 5, 300).await.unwrap();
        no_data(&ch, IoType::Flush, 0, 0).await.unwrap();
        assert!(read_vec(&ch, 0, 400).await.unwrap().iter().all(|b| *b == 0));
    })
    .unwrap();
    uring::delete("ur_poll", "uring").unwrap();
    set.stop();
}
