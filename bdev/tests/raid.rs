//! RAID volumes on a real reactor: model-checked random I/O (read, write, write_zeroes,
//! unmap, checksum; queue depth up to 16; sizes unaligned to strips and stripes) on every
//! level in normal, degraded and rebuilding states, with member failures injected through
//! error bdevs and hot removal in the middle of the run; after each run the whole volume
//! equals the model and every stripe's parity checks (read from the members directly).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};
use strata_bdev::modules::raid::geometry::{Level, Role};
use strata_bdev::modules::raid::{self, CreateOptions, RaidOptions};
use strata_bdev::modules::{error, malloc};
use strata_bdev::wait::{read_vec, write_slice};
use strata_bdev::{kernels, registry, IoStatus, IoType};

mod common;
use common::{
    on_reactor, reactors, spawn_checksums, spawn_no_data, spawn_read, spawn_write, InFlight,
};

const BS: u32 = 512;

fn mk_malloc(name: &str, mib: u64) {
    malloc::create(malloc::MallocOptions {
        name: name.into(),
        num_blocks: mib * 2048,
        block_size: BS,
        uuid: None,
    })
    .unwrap();
}

fn setup() {
    reactors().install_global();
}

fn create(name: &str, level: Level, bases: &[String], strip_kb: u64, superblock: bool) {
    let opts = CreateOptions {
        name: name.into(),
        level,
        strip_size_kb: strip_kb,
        base_bdevs: bases.to_vec(),
        uuid: None,
        superblock,
    };
    on_reactor(move || async move { raid::create(opts).await.map(|_| ()) }).unwrap();
}

/// Something to do to the array in the middle of a run.
#[derive(Clone)]
enum Event {
    /// Make the error bdev fail every I/O (the member fails).
    FailMember(String),
    /// Unregister a member bdev (hot removal).
    Remove(String),
    /// Add a new member (starts a rebuild).
    Add(String),
}

fn apply(raid_name: &str, e: &Event) {
    match e {
        Event::FailMember(ee) => {
            error::inject(
                ee,
                error::Target::All,
                error::ErrorKind::Failure,
                u64::MAX,
                0,
                0,
            )
            .unwrap();
        }
        Event::Remove(b) => registry::unregister(b).unwrap(),
        Event::Add(b) => {
            let (r, b) = (raid_name.to_string(), b.clone());
            on_reactor(move || async move { raid::add_base_bdev(&r, &b).await }).unwrap();
        }
    }
}

/// Random I/O against a model with `events` applied after the given op counts.
/// Returns how many operations were issued while a rebuild or resync was running.
async fn model_run(
    name: String,
    seed: u64,
    ops: usize,
    max_blocks: u64,
    events: Vec<(usize, Event)>,
) -> usize {
    let d = registry::open(&name, |_| {}).unwrap();
    let ch = d.channel().unwrap();
    let bs = ch.block_size() as usize;
    let blocks = ch.num_blocks();
    // The volume starts zeroed (creation zeroes redundant levels; raid0/concat members are
    // fresh malloc bdevs).
    let mut model = vec![0u8; blocks as usize * bs];
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut inflight = InFlight::new(&name);
    let mut events = events;
    let mut i = 0;
    let mut during_job = 0;
    let array = raid::array(&name);
    while i < ops {
        if let Some(pos) = events.iter().position(|(at, _)| *at == i) {
            let (_, e) = events.remove(pos);
            match e {
                Event::Add(b) => raid::add_base_bdev(&name, &b).await.unwrap(),
                e => apply(&name, &e),
            }
        }
        let n = rng.gen_range(1..=max_blocks.min(blocks));
        let off = rng.gen_range(0..=blocks - n);
        if inflight.overlaps(off, n) || inflight.len() >= 16 {
            inflight.retire_oldest().await;
            continue;
        }
        i += 1;
        if array.as_ref().is_some_and(|a| a.process.lock().is_some()) {
            during_job += 1;
        }
        let range = off as usize * bs..(off + n) as usize * bs;
        let (h, expect) = match rng.gen_range(0..10) {
            0..=3 => (spawn_read(&ch, off, n), Some(model[range].to_vec())),
            4..=7 => {
                let data: Vec<u8> = (0..range.len()).map(|_| rng.gen()).collect();
                model[range].copy_from_slice(&data);
                (spawn_write(&ch, off, data), None)
            }
            8 => {
                model[range].fill(0);
                let t = if rng.gen() {
                    IoType::WriteZeroes
                } else {
                    IoType::Unmap
                };
                (spawn_no_data(&ch, t, off, n), None)
            }
            _ => spawn_checksums(&ch, off, n, rng.gen_range(1..=8u32), &model[range]),
        };
        inflight.push(off, n, h, expect);
    }
    inflight.drain().await;
    assert_image(&name, &model).await;
    during_job
}

async fn assert_image(name: &str, model: &[u8]) {
    let d = registry::open(name, |_| {}).unwrap();
    let ch = d.channel().unwrap();
    let bs = ch.block_size() as u64;
    let step = 256u64;
    let blocks = ch.num_blocks();
    let mut b = 0;
    while b < blocks {
        let n = step.min(blocks - b);
        let got = read_vec(&ch, b, n).await.unwrap();
        let r = (b * bs) as usize..((b + n) * bs) as usize;
        assert!(
            got == model[r],
            "{name}: final image differs from the model in blocks {b}+{n}"
        );
        b += n;
    }
}

/// Reads every stripe from the members and checks its parity (raid5/6) or that the legs
/// agree (raid1).
async fn check_redundancy(name: &str) {
    let a = raid::array(name).unwrap();
    let geo = a.geo.clone();
    let names: Vec<String> = a.slots.read().iter().map(|s| s.name.clone()).collect();
    let mut chans = Vec::new();
    let mut descs = Vec::new();
    for n in &names {
        let d = registry::open(n, |_| {}).unwrap();
        chans.push(d.channel().unwrap());
        descs.push(d);
    }
    for s in 0..geo.stripes() {
        let off = a.data_offset + s * geo.strip;
        let mut strips = Vec::new();
        for k in 0..geo.roles() {
            let m = match geo.level {
                Level::Raid1 => k,
                _ => geo.member_of(s, geo.role(k)),
            };
            strips.push(read_vec(&chans[m], off, geo.strip).await.unwrap());
        }
        match geo.level {
            Level::Raid1 => {
                for (m, c) in chans.iter().enumerate().skip(1) {
                    let other = read_vec(c, off, geo.strip).await.unwrap();
                    assert!(
                        other == strips[0],
                        "{name}: raid1 leg {m} differs in region {s}"
                    );
                }
            }
            Level::Raid5 => {
                let v: Vec<&[u8]> = strips.iter().map(|x| x.as_slice()).collect();
                assert!(
                    kernels::xor_check(&v).unwrap(),
                    "{name}: parity of stripe {s} does not check"
                );
            }
            Level::Raid6 => {
                let d = geo.data_strips();
                let v: Vec<&[u8]> = strips[..d].iter().map(|x| x.as_slice()).collect();
                assert!(
                    kernels::pq_check(&v, &strips[d], &strips[d + 1]).unwrap(),
                    "{name}: P/Q of stripe {s} do not check"
                );
            }
            _ => {}
        }
    }
    let _ = Role::P;
}

fn members(prefix: &str, n: usize, mib: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}m{i}");
            mk_malloc(&name, mib);
            name
        })
        .collect()
}

fn run(name: &str, seed: u64, ops: usize, max_blocks: u64, events: Vec<(usize, Event)>) -> usize {
    let n = name.to_string();
    on_reactor(move || model_run(n, seed, ops, max_blocks, events))
}

fn wait_idle(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while raid::array(name).unwrap().process.lock().is_some() {
        assert!(
            Instant::now() < deadline,
            "{name}: background job did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn verify(name: &str) {
    wait_idle(name);
    let n = name.to_string();
    on_reactor(move || async move { check_redundancy(&n).await });
}

#[test]
fn every_level_matches_the_model() {
    setup();
    let cases: &[(&str, Level, usize, bool)] = &[
        ("r0", Level::Raid0, 4, false),
        ("r1", Level::Raid1, 3, true),
        ("r5a", Level::Raid5, 3, true),
        ("r5b", Level::Raid5, 5, false),
        ("r6a", Level::Raid6, 4, true),
        ("r6b", Level::Raid6, 6, true),
    ];
    for (i, &(name, level, n, sb)) in cases.iter().enumerate() {
        eprintln!("{name}: {level:?} over {n}");
        let m = members(name, n, 3);
        create(name, level, &m, 4, sb);
        // Up to ~2.5 stripes per I/O: full-stripe, partial, and multi-stripe writes.
        let max = (4 * 2 * n as u64 * 5 / 2).max(16);
        run(name, 100 + i as u64, 1500, max, vec![]);
        verify(name);
    }
    // concat over members of different sizes.
    mk_malloc("cc0", 2);
    mk_malloc("cc1", 3);
    mk_malloc("cc2", 1);
    let m: Vec<String> = ["cc0", "cc1", "cc2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    create("cc", Level::Concat, &m, 4, false);
    assert_eq!(registry::get("cc").unwrap().bdev.num_blocks(), 6 * 2048);
    run("cc", 7, 1500, 64, vec![]);
}

fn with_error_members(prefix: &str, n: usize) -> Vec<String> {
    members(prefix, n, 3)
        .into_iter()
        .map(|m| {
            error::create(&m, None).unwrap();
            format!("EE_{m}")
        })
        .collect()
}

#[test]
fn member_failures_mid_run() {
    setup();
    // raid5: one member fails in the middle of the load.
    let m = with_error_members("f5", 4);
    create("f5", Level::Raid5, &m, 4, true);
    run(
        "f5",
        21,
        2000,
        48,
        vec![(700, Event::FailMember(m[1].clone()))],
    );
    let a = raid::array("f5").unwrap();
    assert_eq!(a.degraded_count(), 1);
    assert!(!a.is_offline());
    // raid6: two members fail, at different times.
    let m = with_error_members("f6", 5);
    create("f6", Level::Raid6, &m, 4, true);
    run(
        "f6",
        22,
        2000,
        48,
        vec![
            (500, Event::FailMember(m[0].clone())),
            (1200, Event::FailMember(m[3].clone())),
        ],
    );
    assert_eq!(raid::array("f6").unwrap().degraded_count(), 2);
    // raid1: a leg fails, another is hot-removed.
    let m = with_error_members("f1", 3);
    create("f1", Level::Raid1, &m, 4, true);
    run(
        "f1",
        23,
        1500,
        64,
        vec![
            (400, Event::FailMember(m[2].clone())),
            (900, Event::Remove("EE_f1m0".into())),
        ],
    );
    assert_eq!(raid::array("f1").unwrap().degraded_count(), 2);
    // One failure too many: the volume goes offline and fails I/O instead of lying.
    apply("f5", &Event::FailMember(m[1].clone()));
    let failed = on_reactor(|| async {
        let d = registry::open("f1", |_| {}).unwrap();
        read_vec(&d.channel().unwrap(), 0, 8).await
    });
    assert_eq!(failed, Err(IoStatus::Failed));
}

#[test]
fn rebuild_under_load() {
    setup();
    // Keep the rebuild slow enough to overlap the load.
    raid::set_options(RaidOptions {
        process_window_size_kb: 1024,
        process_max_bandwidth_mb_sec: 8,
    });
    for (name, level, n) in [
        ("b5", Level::Raid5, 4usize),
        ("b6", Level::Raid6, 5),
        ("b1", Level::Raid1, 2),
    ] {
        let m = members(name, n, 3);
        create(name, level, &m, 4, true);
        let spare = format!("{name}spare");
        mk_malloc(&spare, 3);
        let overlapped = run(
            name,
            31,
            2500,
            40,
            vec![
                (200, Event::Remove(m[1].clone())),
                (600, Event::Add(spare.clone())),
            ],
        );
        assert!(
            overlapped > 200,
            "{name}: only {overlapped} operations ran during the rebuild"
        );
        verify(name);
        let a = raid::array(name).unwrap();
        assert_eq!(a.degraded_count(), 0, "{name}: rebuild did not complete");
        // The rebuilt member holds the data: fail another member and read everything back.
        let n2 = name.to_string();
        let victim = m[0].clone();
        registry::unregister(&victim).unwrap();
        on_reactor(move || async move {
            let d = registry::open(&n2, |_| {}).unwrap();
            let ch = d.channel().unwrap();
            let all = read_vec(&ch, 0, ch.num_blocks().min(4096)).await;
            assert!(all.is_ok(), "{n2}: degraded read after rebuild failed");
        });
    }
    raid1_writes_across_the_rebuild_cursor();
    raid::set_options(RaidOptions {
        process_window_size_kb: 1024,
        process_max_bandwidth_mb_sec: 0,
    });
}

/// raid1 writes that straddle the rebuild cursor: the region below it is already rebuilt on
/// the new leg, so the write must reach that leg too, although the region above is not
/// (a CI run once lost such a write on the new leg). Part of `rebuild_under_load`, the one
/// test that sets the rate limit.
fn raid1_writes_across_the_rebuild_cursor() {
    // 4 KiB regions at 1 MB/s: the rebuild sleeps ~4 ms after each region it copied.
    raid::set_options(RaidOptions {
        process_window_size_kb: 1024,
        process_max_bandwidth_mb_sec: 1,
    });
    let m = members("bx", 2, 3);
    create("bx", Level::Raid1, &m, 4, true);
    registry::unregister(&m[1]).unwrap();
    mk_malloc("bxspare", 3);
    let writes = on_reactor(|| async {
        let d = registry::open("bx", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let bs = ch.block_size() as usize;
        let array = raid::array("bx").unwrap();
        let strip = array.geo.strip;
        raid::add_base_bdev("bx", "bxspare").await.unwrap();
        let mut writes = 0u32;
        while array.process.lock().is_some() {
            let c = array
                .rebuild_cursor
                .load(std::sync::atomic::Ordering::Acquire);
            if c > 0 && c < array.geo.stripes() {
                // The last block of region c-1 and the first of region c.
                let data = vec![(writes % 251 + 1) as u8; 2 * bs];
                write_slice(&ch, c * strip - 1, &data).await.unwrap();
                writes += 1;
            }
            strata_reactor::sleep(Duration::from_millis(1)).await;
        }
        writes
    });
    assert!(writes > 20, "only {writes} writes ran during the rebuild");
    // check_redundancy compares the legs region by region.
    verify("bx");
}

#[test]
fn bad_create_requests_are_refused() {
    setup();
    let m = members("bad", 3, 2);
    let try_create = |level, bases: Vec<String>, strip| {
        let opts = CreateOptions {
            name: "badr".into(),
            level,
            strip_size_kb: strip,
            base_bdevs: bases,
            uuid: None,
            superblock: true,
        };
        on_reactor(move || async move { raid::create(opts).await.map(|_| ()) })
    };
    assert!(
        try_create(Level::Raid5, m[..2].to_vec(), 4).is_err(),
        "raid5 over 2 members"
    );
    assert!(
        try_create(Level::Raid5, m.clone(), 0).is_err(),
        "raid5 without strip size"
    );
    assert!(
        try_create(Level::Raid5, m.clone(), 3).is_err(),
        "strip not a power of two"
    );
    assert!(
        try_create(Level::Raid0, vec![m[0].clone(), m[0].clone()], 4).is_err(),
        "member twice"
    );
    assert!(
        try_create(Level::Raid0, vec![m[0].clone(), "nope".into()], 4).is_err(),
        "missing member"
    );
    // Nothing stays claimed after a refused create.
    try_create(Level::Raid5, m.clone(), 4).unwrap();
    assert_eq!(
        registry::get(&m[0]).unwrap().claimed_by.as_deref(),
        Some("badr")
    );
}
