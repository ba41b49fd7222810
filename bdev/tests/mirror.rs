//! Mirror volumes on a real reactor: model-checked random I/O through many split → write →
//! resume cycles whose resyncs (bitmap and checksum scan) race host writes to the regions
//! being copied; a leg failing mid-run (degraded, then a new leg resynced in); a scrub that
//! finds a difference planted behind the mirror's back and repairs it; and mirrors of unlike
//! RAID volumes whose resyncs write the secondary in whole stripes, proven by its members
//! seeing zero reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;
use strata_bdev::modules::error;
use strata_bdev::modules::mirror::{self, CreateOptions, ResumeMode, SetOptions};
use strata_bdev::modules::raid::{self, geometry::Level};
use strata_bdev::wait::{read_vec, write_slice};
use strata_bdev::{registry, IoType};

mod common;
use common::{on_reactor, reactors, spawn_read, spawn_write, InFlight};

const BS: u32 = 512;

fn mk_malloc(name: &str, kib: u64) {
    common::malloc_kib(name, kib, BS);
}

fn setup() {
    reactors().install_global();
}

fn create(o: CreateOptions) {
    on_reactor(move || async move { mirror::create(o).await.map(|_| ()) }).unwrap();
}

fn info(name: &str) -> serde_json::Value {
    mirror::get(Some(name)).unwrap().remove(0)
}

fn state(name: &str) -> String {
    info(name)["state"].as_str().unwrap().to_string()
}

/// Waits until no job runs; returns the last job's report.
fn wait_job(name: &str) -> serde_json::Value {
    let m = mirror::mirror(name).unwrap();
    on_reactor(move || async move { mirror::wait_idle(&m).await });
    info(name)["last_job"].clone()
}

fn num_blocks(name: &str) -> u64 {
    registry::get(name).unwrap().bdev.num_blocks()
}

/// The volume's image as each leg holds it (read from the legs directly, past the
/// metadata).
fn leg_images(name: &str) -> [Vec<u8>; 2] {
    let i = info(name);
    let off = i["data_offset_blocks"].as_u64().unwrap();
    let n = i["num_blocks"].as_u64().unwrap();
    let legs: Vec<String> = (0..2)
        .map(|k| i["legs"][k]["name"].as_str().unwrap().to_string())
        .collect();
    let read = |leg: String| {
        on_reactor(move || async move {
            let d = registry::open(&leg, |_| {}).unwrap();
            let ch = d.channel().unwrap();
            let mut out = Vec::new();
            let mut b = 0;
            while b < n {
                let k = 2048.min(n - b);
                out.extend(read_vec(&ch, off + b, k).await.unwrap());
                b += k;
            }
            out
        })
    };
    [read(legs[0].clone()), read(legs[1].clone())]
}

fn assert_volume_is(name: &str, model: &[u8]) {
    let n = num_blocks(name);
    let nm = name.to_string();
    let got = on_reactor(move || async move {
        let d = registry::open(&nm, |_| {}).unwrap();
        let ch = d.channel().unwrap();
        read_vec(&ch, 0, n).await.unwrap()
    });
    assert!(got == model, "{name}: volume differs from the model");
}

/// Random reads and writes (QD ≤ 8, 1–40 blocks) against `model` until `stop` says so (it
/// sees the op count); every read is checked. Returns ops issued.
fn model_io(
    name: &str,
    model: &mut Vec<u8>,
    seed: u64,
    stop: impl Fn(usize) -> bool + Send + 'static,
) -> usize {
    let nm = name.to_string();
    let m = std::mem::take(model);
    let (m, ops) = on_reactor(move || async move {
        let mut model = m;
        let d = registry::open(&nm, |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let blocks = ch.num_blocks();
        let bs = BS as usize;
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut q = InFlight::new(&nm);
        let mut ops = 0usize;
        while !stop(ops) {
            if q.len() >= 8 {
                q.retire_oldest().await;
            }
            let n = rng.gen_range(1..=40u64).min(blocks);
            let off = rng.gen_range(0..=blocks - n);
            if q.overlaps(off, n) {
                q.retire_oldest().await;
                continue;
            }
            let r = (off as usize * bs)..((off + n) as usize * bs);
            if rng.gen_bool(0.35) {
                q.push(off, n, spawn_read(&ch, off, n), Some(model[r].to_vec()));
            } else {
                let data: Vec<u8> = (0..r.len()).map(|_| rng.gen()).collect();
                model[r].copy_from_slice(&data);
                q.push(off, n, spawn_write(&ch, off, data), None);
            }
            ops += 1;
            if ops.is_multiple_of(64) {
                // Let background jobs run between bursts.
                strata_reactor::sleep(Duration::from_micros(200)).await;
            }
        }
        q.drain().await;
        (model, ops)
    });
    *model = m;
    ops
}

fn job_running(name: &str) -> bool {
    mirror::mirror(name).unwrap().job.lock().is_some()
}

#[test]
fn split_write_resume_cycles_match_the_model() {
    setup();
    mk_malloc("cyc_a", 8 << 10);
    mk_malloc("cyc_b", 8 << 10);
    let mut o = CreateOptions::new("cyc", "cyc_a", "cyc_b");
    o.region_size_kb = 64;
    o.scan_chunk_kb = 16;
    o.initial_sync = false;
    create(o);
    let n = num_blocks("cyc");
    let mut model = vec![0u8; (n * BS as u64) as usize];
    let mut raced = 0;
    for cycle in 0..10u64 {
        model_io("cyc", &mut model, cycle * 3, |ops| ops >= 300);
        on_reactor(|| async { mirror::split("cyc").await }).unwrap();
        assert_eq!(state("cyc"), "split");
        model_io("cyc", &mut model, cycle * 3 + 1, |ops| ops >= 400);
        assert!(info("cyc")["dirty_regions"].as_u64().unwrap() > 0);
        // Slow enough that host writes land in the regions being copied.
        let mode = if cycle % 3 == 2 {
            ResumeMode::Checksum
        } else {
            ResumeMode::Auto
        };
        let set = SetOptions {
            max_bandwidth_mb_sec: Some(40),
            ..Default::default()
        };
        on_reactor(move || async move { mirror::set_options("cyc", set).await }).unwrap();
        on_reactor(move || async move { mirror::resume("cyc", mode).await }).unwrap();
        let during = model_io("cyc", &mut model, cycle * 3 + 2, |ops| {
            ops >= 200 && !job_running("cyc")
        });
        raced += during;
        let last = wait_job("cyc");
        assert_eq!(last["result"], "done", "cycle {cycle}: {last}");
        let kind = if mode == ResumeMode::Checksum {
            "scan"
        } else {
            "resync"
        };
        assert_eq!(last["kind"], kind);
        assert_eq!(state("cyc"), "in_sync");
        assert_volume_is("cyc", &model);
        let [a, b] = leg_images("cyc");
        assert!(a == model, "cycle {cycle}: primary differs from the model");
        assert!(
            b == model,
            "cycle {cycle}: secondary differs from the model"
        );
    }
    assert!(raced >= 2000, "only {raced} ops ran during resyncs");
    on_reactor(|| async { mirror::delete("cyc").await }).unwrap();
    assert!(registry::get("cyc_a").unwrap().claimed_by.is_none());
}

#[test]
fn a_failed_leg_degrades_and_a_new_leg_is_resynced() {
    setup();
    mk_malloc("deg_a", 4 << 10);
    mk_malloc("deg_b0", 4 << 10);
    mk_malloc("deg_c", 4 << 10);
    error::create("deg_b0", None).unwrap();
    let mut o = CreateOptions::new("deg", "deg_a", "EE_deg_b0");
    o.region_size_kb = 64;
    create(o);
    wait_job("deg");
    let n = num_blocks("deg");
    let mut model = vec![0u8; (n * BS as u64) as usize];
    model_io("deg", &mut model, 11, |ops| ops >= 300);
    error::inject(
        "EE_deg_b0",
        error::Target::All,
        error::ErrorKind::Failure,
        u64::MAX,
        0,
        0,
    )
    .unwrap();
    model_io("deg", &mut model, 12, |ops| ops >= 500);
    assert_eq!(state("deg"), "degraded");
    assert_eq!(info("deg")["legs"][1]["state"], "failed");
    on_reactor(|| async { mirror::add_leg("deg", "deg_c").await }).unwrap();
    model_io("deg", &mut model, 13, |ops| ops >= 300);
    assert_eq!(wait_job("deg")["result"], "done");
    assert_eq!(state("deg"), "in_sync");
    let [a, b] = leg_images("deg");
    assert!(a == model && b == model, "legs differ from the model");
    // The primary failing now: the secondary takes over, nothing is lost.
    registry::unregister("deg_a").unwrap();
    assert_volume_is("deg", &model);
    let i = info("deg");
    assert_eq!(i["state"], "degraded");
    assert_eq!(i["legs"][0]["name"], "deg_c");
    on_reactor(|| async { mirror::delete("deg").await }).unwrap();
}

#[test]
fn scrub_finds_a_planted_difference_and_repairs_it() {
    setup();
    mk_malloc("scr_a", 4 << 10);
    mk_malloc("scr_b", 4 << 10);
    let mut o = CreateOptions::new("scr", "scr_a", "scr_b");
    o.region_size_kb = 256;
    o.scan_chunk_kb = 32;
    o.checksum = strata_bdev::ChecksumAlg::Sha256;
    create(o);
    wait_job("scr");
    let n = num_blocks("scr");
    let mut model = vec![0u8; (n * BS as u64) as usize];
    model_io("scr", &mut model, 21, |ops| ops >= 300);
    let off = info("scr")["data_offset_blocks"].as_u64().unwrap();
    // Behind the mirror's back: three blocks in three chunks of the secondary.
    on_reactor(move || async move {
        let d = registry::open("scr_b", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        for lba in [5u64, 700, 5000] {
            write_slice(&ch, off + lba, &[0xA5; BS as usize])
                .await
                .unwrap();
        }
    });
    on_reactor(|| async { mirror::verify("scr", false).await }).unwrap();
    let r = wait_job("scr");
    assert_eq!(r["kind"], "scrub");
    assert_eq!(r["mismatches"], 3, "{r}");
    assert_eq!(r["repaired"], 0);
    let [_, b] = leg_images("scr");
    assert!(
        b != model,
        "a scrub without repair must not change the legs"
    );
    on_reactor(|| async { mirror::verify("scr", true).await }).unwrap();
    let r = wait_job("scr");
    assert_eq!(
        (r["mismatches"].as_u64(), r["repaired"].as_u64()),
        (Some(3), Some(3)),
        "{r}"
    );
    let [a, b] = leg_images("scr");
    assert!(
        a == model && b == model,
        "repair did not make the legs equal"
    );
    on_reactor(|| async { mirror::verify("scr", false).await }).unwrap();
    assert_eq!(wait_job("scr")["mismatches"], 0);
    on_reactor(|| async { mirror::delete("scr").await }).unwrap();
}

fn raid(name: &str, level: Level, members: usize, strip_kb: u64, member_kib: u64) -> Vec<String> {
    let bases: Vec<String> = (0..members).map(|i| format!("{name}_m{i}")).collect();
    for b in &bases {
        mk_malloc(b, member_kib);
    }
    let opts = raid::CreateOptions {
        name: name.into(),
        level,
        strip_size_kb: strip_kb,
        base_bdevs: bases.clone(),
        uuid: None,
        superblock: false,
    };
    on_reactor(move || async move { raid::create(opts).await.map(|_| ()) }).unwrap();
    bases
}

fn reads_of(bdevs: &[String]) -> u64 {
    bdevs
        .iter()
        .map(|b| registry::get(b).unwrap().stats.snapshot().by_type[IoType::Read as usize].ops)
        .sum()
}

/// Writes `count` random small unaligned pieces through the volume (split: primary only).
fn scatter_writes(name: &str, model: &mut [u8], seed: u64, count: usize) {
    let nm = name.to_string();
    let mut m = model.to_vec();
    let m2 = on_reactor(move || async move {
        let d = registry::open(&nm, |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let mut rng = SmallRng::seed_from_u64(seed);
        let blocks = ch.num_blocks();
        for _ in 0..count {
            let n = rng.gen_range(1..=9u64);
            let off = rng.gen_range(0..=blocks - n);
            let data: Vec<u8> = (0..n as usize * BS as usize).map(|_| rng.gen()).collect();
            let r = off as usize * BS as usize..(off + n) as usize * BS as usize;
            m[r].copy_from_slice(&data);
            write_slice(&ch, off, &data).await.unwrap();
        }
        m
    });
    model.copy_from_slice(&m2);
}

#[test]
fn unlike_raid_legs_resync_in_whole_secondary_stripes() {
    setup();
    // (primary level, width, secondary level, width)
    let cases = [
        (Level::Raid5, 4, Level::Raid5, 3),
        (Level::Raid1, 2, Level::Raid5, 3),
        (Level::Raid6, 5, Level::Raid5, 4),
    ];
    for (i, (pl, pw, sl, sw)) in cases.into_iter().enumerate() {
        let p = format!("ur{i}p");
        let s = format!("ur{i}s");
        raid(&p, pl, pw, 16, 6 << 10);
        let s_members = raid(&s, sl, sw, 16, 6 << 10);
        let name = format!("ur{i}");
        // Fill the primary before the mirror exists: the initial copy must move it all.
        let mut model = vec![0u8; 0];
        {
            let pn = p.clone();
            let nb = num_blocks(&p);
            model.resize((nb * BS as u64) as usize, 0);
            scatter_writes(&pn, &mut model, 40 + i as u64, 200);
        }
        let before = reads_of(&s_members);
        let mut o = CreateOptions::new(&name, &p, &s);
        o.region_size_kb = 128;
        create(o);
        let r = wait_job(&name);
        assert_eq!(r["result"], "done");
        assert_eq!(
            reads_of(&s_members),
            before,
            "{name}: the initial copy read the secondary's members"
        );
        let off = info(&name)["data_offset_blocks"].as_u64().unwrap();
        let unit = info(&name)["legs"][1]["optimal_io_boundary"]
            .as_u64()
            .unwrap();
        assert!(
            unit > 1 && off.is_multiple_of(unit),
            "data offset {off} not stripe-aligned ({unit})"
        );
        let n = num_blocks(&name);
        let mut vol = model[(off * BS as u64) as usize..((off + n) * BS as u64) as usize].to_vec();
        let [a, b] = leg_images(&name);
        assert!(
            a == vol && b == vol,
            "{name}: legs differ after the initial copy"
        );
        // Split, small unaligned writes, resume: again no reads on the secondary's members.
        let nm = name.clone();
        on_reactor(move || async move { mirror::split(&nm).await }).unwrap();
        scatter_writes(&name, &mut vol, 50 + i as u64, 150);
        let before = reads_of(&s_members);
        let nm = name.clone();
        on_reactor(move || async move { mirror::resume(&nm, ResumeMode::Auto).await }).unwrap();
        let r = wait_job(&name);
        assert_eq!(r["result"], "done");
        assert_eq!(
            reads_of(&s_members),
            before,
            "{name}: the resync read the secondary's members"
        );
        let copied = r["copied_bytes"].as_u64().unwrap();
        assert!(
            copied > 0 && copied.is_multiple_of(unit * BS as u64),
            "copied {copied} not whole stripes"
        );
        let [a, b] = leg_images(&name);
        assert!(a == vol && b == vol, "{name}: legs differ after the resync");
        let nm = name.clone();
        on_reactor(move || async move { mirror::delete(&nm).await }).unwrap();
    }
}
