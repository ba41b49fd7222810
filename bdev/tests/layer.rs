//! Bdev layer tests on a real reactor: range checks, claims and hot-remove, error injection
//! (including NOMEM queueing and retry), delay, iostat, and a model-checked random workload
//! at queue depth > 1 on malloc.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};
use strata_bdev::modules::{delay, error, malloc};
use strata_bdev::wait::{no_data, read_vec, write_slice};
use strata_bdev::{kernels, registry, BdevIo, IoStatus, IoType};

mod common;
use common::{
    on_reactor, spawn_checksums, spawn_no_data, spawn_read, spawn_write, spawn_xor_write, InFlight,
};

fn mk_malloc(name: &str, blocks: u64, bs: u32) {
    malloc::create(malloc::MallocOptions {
        name: name.into(),
        num_blocks: blocks,
        block_size: bs,
        uuid: None,
    })
    .unwrap();
}

#[test]
fn out_of_range_io_fails_and_touches_nothing() {
    mk_malloc("range0", 64, 512);
    on_reactor(|| async {
        let d = registry::open("range0", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        write_slice(&ch, 0, &vec![7u8; 64 * 512]).await.unwrap();
        assert_eq!(
            write_slice(&ch, 63, &[1u8; 1024]).await,
            Err(IoStatus::OutOfRange)
        );
        assert_eq!(
            write_slice(&ch, 64, &[1u8; 512]).await,
            Err(IoStatus::OutOfRange)
        );
        assert_eq!(read_vec(&ch, u64::MAX, 1).await, Err(IoStatus::OutOfRange));
        assert_eq!(
            no_data(&ch, IoType::Unmap, 60, 5).await,
            Err(IoStatus::OutOfRange)
        );
        assert_eq!(
            no_data(&ch, IoType::WriteZeroes, 0, 0).await,
            Err(IoStatus::OutOfRange)
        );
        // A buffer smaller than the transfer is refused, not overrun.
        let mut io = BdevIo::new(IoType::Write, 0, 2);
        io.bufs.push(strata_reactor::dma::alloc(512).unwrap());
        let io = strata_bdev::wait::submit_wait(&ch, io).await;
        assert_eq!(io.status, IoStatus::InvalidArgument);
        assert!(read_vec(&ch, 0, 64).await.unwrap().iter().all(|b| *b == 7));
        let st = registry::get("range0").unwrap().stats.snapshot();
        assert!(st.errors >= 6, "rejected I/O are counted as errors: {st:?}");
        assert_eq!(st.outstanding, 0);
    });
    registry::unregister("range0").unwrap();
}

#[test]
fn claims_and_hot_remove_cascade() {
    mk_malloc("claim0", 128, 512);
    let ee = error::create("claim0", None).unwrap();
    assert_eq!(strata_bdev::Bdev::name(ee.as_ref()), "EE_claim0");
    assert!(registry::get("claim0").unwrap().claimed_by.is_some());
    // Claimed: a second virtual bdev cannot take it.
    assert!(matches!(
        error::create("claim0", None),
        Err(strata_bdev::BdevError::Exists(_))
    ));
    let r = delay::create(delay::DelayOptions {
        name: "dly_claim0".into(),
        base_bdev_name: "claim0".into(),
        latencies_us: [0; 4],
        uuid: None,
    });
    assert!(
        matches!(r, Err(strata_bdev::BdevError::Claimed { .. })),
        "{:?}",
        r.err()
    );
    // Removing the base removes the virtual bdev built on it.
    registry::unregister("claim0").unwrap();
    assert!(registry::get("EE_claim0").is_none());
    assert!(registry::get("claim0").is_none());
}

#[test]
fn delete_of_virtual_bdev_releases_claim() {
    mk_malloc("rel0", 128, 512);
    error::create("rel0", None).unwrap();
    error::delete("EE_rel0").unwrap();
    assert!(registry::get("rel0").unwrap().claimed_by.is_none());
    error::create("rel0", None).unwrap();
    registry::unregister("rel0").unwrap();
}

#[test]
fn error_injection_failure_corrupt_and_nomem_retry() {
    mk_malloc("inj0", 256, 512);
    error::create("inj0", None).unwrap();
    on_reactor(|| async {
        let d = registry::open("EE_inj0", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let data = vec![0x5au8; 4096];
        write_slice(&ch, 0, &data).await.unwrap();

        error::inject(
            "EE_inj0",
            error::Target::One(IoType::Read),
            error::ErrorKind::Failure,
            2,
            0,
            0,
        )
        .unwrap();
        assert_eq!(read_vec(&ch, 0, 8).await, Err(IoStatus::Failed));
        assert_eq!(read_vec(&ch, 0, 8).await, Err(IoStatus::Failed));
        assert_eq!(
            read_vec(&ch, 0, 8).await.unwrap(),
            data,
            "injection count exhausted"
        );

        error::inject(
            "EE_inj0",
            error::Target::One(IoType::Read),
            error::ErrorKind::CorruptData,
            1,
            3,
            0xff,
        )
        .unwrap();
        let bad = read_vec(&ch, 0, 8).await.unwrap();
        assert_eq!(bad[3], 0x5a ^ 0xff);
        assert_eq!(
            read_vec(&ch, 0, 8).await.unwrap(),
            data,
            "stored data was not corrupted by a read"
        );

        // NOMEM: the layer queues the I/O and retries it; the caller sees success.
        error::inject(
            "EE_inj0",
            error::Target::One(IoType::Write),
            error::ErrorKind::NoMemory,
            3,
            0,
            0,
        )
        .unwrap();
        write_slice(&ch, 8, &[9u8; 512]).await.unwrap();
        assert_eq!(read_vec(&ch, 8, 1).await.unwrap(), vec![9u8; 512]);

        // Pending: held until cleared.
        error::inject(
            "EE_inj0",
            error::Target::One(IoType::Flush),
            error::ErrorKind::Pending,
            1,
            0,
            0,
        )
        .unwrap();
        let h = strata_reactor::spawn_local({
            let ch = ch.clone();
            async move { no_data(&ch, IoType::Flush, 0, 0).await }
        });
        strata_reactor::sleep(Duration::from_millis(20)).await;
        assert!(!h.is_finished(), "pending I/O completed");
        error::inject(
            "EE_inj0",
            error::Target::Clear,
            error::ErrorKind::Failure,
            1,
            0,
            0,
        )
        .unwrap();
        // The next submission on the channel releases held I/O.
        read_vec(&ch, 0, 1).await.unwrap();
        assert_eq!(h.await, Ok(()));
    });
    registry::unregister("inj0").unwrap();
}

#[test]
fn delay_bdev_adds_latency() {
    mk_malloc("dlyb", 64, 512);
    delay::create(delay::DelayOptions {
        name: "dly0".into(),
        base_bdev_name: "dlyb".into(),
        latencies_us: [20_000, 20_000, 0, 0],
        uuid: None,
    })
    .unwrap();
    let elapsed = on_reactor(|| async {
        let d = registry::open("dly0", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        write_slice(&ch, 0, &[1u8; 512]).await.unwrap();
        let t = Instant::now();
        assert_eq!(read_vec(&ch, 0, 1).await.unwrap(), vec![1u8; 512]);
        t.elapsed()
    });
    assert!(
        elapsed >= Duration::from_millis(20),
        "read took {elapsed:?}"
    );
    delay::update_latency("dly0", delay::LatencyKind::AvgRead, 0).unwrap();
    assert!(delay::update_latency("dly0", delay::LatencyKind::P99Write, 1).is_ok());
    assert!(
        delay::update_latency("dly0", delay::LatencyKind::AvgWrite, 5).is_err(),
        "avg above p99"
    );
    registry::unregister("dlyb").unwrap();
    assert!(registry::get("dly0").is_none());
}

/// Random read/write/write_zeroes/unmap/xor_write/checksum at queue depth up to 16 against an
/// in-memory model. In-flight writes never overlap each other, so the model's order is the
/// device's order; reads check against the model at submission (no overlapping write in
/// flight, either).
pub async fn model_check(name: String, seed: u64, ops: usize) {
    let d = registry::open(&name, |_| {}).unwrap();
    let ch = d.channel().unwrap();
    let bs = ch.block_size() as usize;
    let blocks = ch.num_blocks();
    let mut model = vec![0u8; blocks as usize * bs];
    // Start from a known state.
    for b in (0..blocks).step_by(32) {
        let n = 32.min(blocks - b);
        no_data(&ch, IoType::WriteZeroes, b, n).await.unwrap();
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut inflight = InFlight::new(&name);
    for _ in 0..ops {
        let n = rng.gen_range(1..=16u64.min(blocks));
        let off = rng.gen_range(0..=blocks - n);
        if inflight.overlaps(off, n) || inflight.len() >= 16 {
            inflight.retire_oldest().await;
            continue;
        }
        let range = off as usize * bs..(off + n) as usize * bs;
        let (h, expect) = match rng.gen_range(0..6) {
            0 => (spawn_read(&ch, off, n), Some(model[range].to_vec())),
            1 => {
                let data: Vec<u8> = (0..range.len()).map(|_| rng.gen()).collect();
                model[range].copy_from_slice(&data);
                (spawn_write(&ch, off, data), None)
            }
            2 => {
                model[range].fill(0);
                (spawn_no_data(&ch, IoType::WriteZeroes, off, n), None)
            }
            3 => {
                model[range].fill(0);
                (spawn_no_data(&ch, IoType::Unmap, off, n), None)
            }
            4 => {
                let data: Vec<u8> = (0..range.len()).map(|_| rng.gen()).collect();
                kernels::xor_into(&mut model[range], &data);
                (spawn_xor_write(&ch, off, data), None)
            }
            _ => spawn_checksums(&ch, off, n, rng.gen_range(1..=4u32), &model[range]),
        };
        inflight.push(off, n, h, expect);
    }
    inflight.drain().await;
    let all = read_vec(&ch, 0, blocks).await.unwrap();
    assert!(all == model, "final image differs from the model");
    assert_eq!(ch.outstanding(), 0);
}

#[test]
fn malloc_random_ops_match_model() {
    mk_malloc("model0", 256, 512);
    on_reactor(|| model_check("model0".into(), 1, 4000));
    mk_malloc("model1", 64, 4096);
    on_reactor(|| model_check("model1".into(), 2, 2000));
    registry::unregister("model0").unwrap();
    registry::unregister("model1").unwrap();
}

#[test]
fn model_through_error_bdev_with_nomem() {
    mk_malloc("modelee", 128, 512);
    error::create("modelee", None).unwrap();
    error::inject(
        "EE_modelee",
        error::Target::All,
        error::ErrorKind::NoMemory,
        200,
        0,
        0,
    )
    .unwrap();
    on_reactor(|| model_check("EE_modelee".into(), 3, 2000));
    registry::unregister("modelee").unwrap();
}

#[test]
fn iostat_counts_ops_and_bytes() {
    mk_malloc("stat0", 64, 512);
    on_reactor(|| async {
        let d = registry::open("stat0", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        write_slice(&ch, 0, &[1u8; 2048]).await.unwrap();
        read_vec(&ch, 0, 4).await.unwrap();
        read_vec(&ch, 4, 2).await.unwrap();
    });
    let s = registry::get("stat0").unwrap().stats.snapshot();
    assert_eq!(s.by_type[IoType::Write as usize].ops, 1);
    assert_eq!(s.by_type[IoType::Write as usize].bytes, 2048);
    assert_eq!(s.by_type[IoType::Read as usize].ops, 2);
    assert_eq!(s.by_type[IoType::Read as usize].bytes, 3072);
    registry::unregister("stat0").unwrap();
}

#[test]
fn removed_bdev_fails_new_io() {
    mk_malloc("gone0", 64, 512);
    let d = registry::open("gone0", |_| {}).unwrap();
    let d = std::sync::Arc::new(d);
    let d2 = d.clone();
    on_reactor(move || async move {
        let ch = d2.channel().unwrap();
        write_slice(&ch, 0, &[1u8; 512]).await.unwrap();
    });
    registry::unregister("gone0").unwrap();
    assert!(d.is_removed());
    let d3 = d.clone();
    on_reactor(move || async move {
        let ch = d3.channel().unwrap();
        assert_eq!(read_vec(&ch, 0, 1).await, Err(IoStatus::Removed));
    });
}

#[test]
fn malloc_lends_views_for_reads_without_buffers() {
    mk_malloc("view0", 64, 512);
    error::create("view0", None).unwrap();
    let pattern: Vec<u8> = (0..64 * 512).map(|i| (i * 7 % 251) as u8).collect();
    let p2 = pattern.clone();
    let kept = on_reactor(move || async move {
        let d = registry::open("view0", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        assert!(ch.lends_read_views());
        write_slice(&ch, 0, &p2).await.unwrap();
        let io = strata_bdev::wait::submit_wait(&ch, BdevIo::read_view(3, 5)).await;
        assert_eq!(io.status, IoStatus::Success);
        let v = io.view.as_ref().expect("a view");
        assert_eq!(v.len(), 5 * 512);
        let mut got = vec![0u8; 5 * 512];
        assert!(v.copy_to(0, &mut got));
        assert_eq!(got, &p2[3 * 512..8 * 512]);
        assert!(
            !v.copy_to(1, &mut got),
            "a copy past the view's end is refused"
        );
        // Out of range is refused as for any read.
        let bad = strata_bdev::wait::submit_wait(&ch, BdevIo::read_view(62, 5)).await;
        assert_eq!(bad.status, IoStatus::OutOfRange);
        assert!(bad.view.is_none());
        // A bdev that does not lend its memory refuses a read with no buffers.
        let e = registry::open("EE_view0", |_| {}).unwrap();
        let ech = e.channel().unwrap();
        assert!(!ech.lends_read_views());
        let io2 = strata_bdev::wait::submit_wait(&ech, BdevIo::read_view(0, 1)).await;
        assert_eq!(io2.status, IoStatus::InvalidArgument);
        // A read that lost its buffers (no view asked for) fails, even on malloc.
        let io3 = strata_bdev::wait::submit_wait(&ch, BdevIo::new(IoType::Read, 0, 1)).await;
        assert_eq!(io3.status, IoStatus::InvalidArgument);
        assert!(io3.view.is_none());
        let mut io = io;
        io.view.take().unwrap()
    });
    // The view keeps the memory after the bdev is gone.
    registry::unregister("EE_view0").unwrap();
    registry::unregister("view0").unwrap();
    let mut got = vec![0u8; 5 * 512];
    assert!(kept.copy_to(0, &mut got));
    assert_eq!(got, &pattern[3 * 512..8 * 512]);
}
