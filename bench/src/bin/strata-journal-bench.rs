//! Dual-redundancy benchmark, in one process on malloc bdevs (one reactor on core 0, poll
//! mode; the repository's hashing and file writes on helper threads of the other core):
//! 1. 4 KiB random writes QD32 on a RAID-5 of three members, unprotected;
//! 2. the same RAID-5 as a protected volume (the journal mirrored on two malloc bdevs of
//!    its own, no drain running): IOPS and p99 against (1), from the same run;
//! 3. the volume's first drain (a full backup of the whole volume from the base) and an
//!    incremental drain of (2)'s records: GB/s;
//! 4. two members lost: the time to rebuild the volume onto new members from the
//!    repository and the journal.
//!
//! Usage: see `bench/journal.sh`.

use clap::Parser;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use strata_bdev::modules::journal::{self, catalog::DrainPolicy, rebuild::NewBase, GroupOptions};
use strata_bdev::modules::{malloc, raid};
use strata_bdev::registry;
use strata_bench::bdevperf::{run_job, JobSpec, Workload};
use strata_bench::stats::JobStats;
use strata_reactor::{dma, Mode, ReactorSet};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "strata-journal-bench",
    about = "Protected volume write path, drain and rebuild"
)]
struct Cli {
    /// Data size of the volume in MiB (a RAID-5 of three members of half this each).
    #[arg(long, default_value_t = 4096)]
    size_mb: u64,
    /// Size of each journal leg in MiB.
    #[arg(long, default_value_t = 3072)]
    journal_mb: u64,
    /// Seconds of each write measurement.
    #[arg(long, default_value_t = 2)]
    secs: u64,
    /// Repository directory (emptied first).
    #[arg(long, default_value = "build/bench-journal-repo")]
    repo: String,
}

type Res<T> = Result<T, String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

const BS: u32 = 4096;

fn mk_malloc(name: &str, mib: u64) -> Res<()> {
    malloc::create(malloc::MallocOptions {
        name: name.into(),
        num_blocks: mib * 1024 * 1024 / BS as u64,
        block_size: BS,
        uuid: None,
    })
    .map(|_| ())
    .map_err(err)
}

fn randwrite(rs: &ReactorSet, bdev: &str, secs: u64) -> Res<JobStats> {
    let spec = JobSpec {
        bdev: bdev.to_string(),
        queue_depth: 32,
        io_size: 4096,
        workload: Workload::RandWrite,
        read_pct: 0,
        duration: Duration::from_secs(secs),
        seed: 7,
    };
    rs.block_on(0, move || async move { run_job(spec).await })
        .map_err(err)?
        .map(|r| r.stats)
}

fn group() -> Value {
    journal::get(Some("BG"))
        .ok()
        .and_then(|mut v| v.pop())
        .unwrap_or(Value::Null)
}

/// Waits for the drain count to reach `n` (and no drain running): the last drain's report.
fn wait_drains(n: u64) -> Res<Value> {
    loop {
        let g = group();
        if g["drain"].is_null() && g["drains_done"].as_u64().unwrap_or(0) >= n {
            return Ok(g["last_drain"].clone());
        }
        if g["drain"].is_null() && g["last_drain"]["result"] == "failed" {
            return Err(format!("drain failed: {}", g["last_drain"]));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn volume_state() -> String {
    group()["volumes"][0]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn line(what: &str, s: &JobStats) {
    println!(
        "| {what} | {:.0} K IOPS | p50 {:.1} µs | p99 {:.1} µs |",
        s.iops() / 1e3,
        s.quantile_us(0.5),
        s.quantile_us(0.99)
    );
}

fn main() -> Res<()> {
    let cli = Cli::parse();
    let _ = std::fs::remove_dir_all(&cli.repo);
    dma::init_iobuf(dma::IobufOptions::default()).map_err(err)?;
    let rs = ReactorSet::start(&[0], Mode::Poll).map_err(err)?;
    rs.install_global();
    let member_mb = cli.size_mb / 2 + 16;
    for m in ["R0", "R1", "R2"] {
        mk_malloc(m, member_mb)?;
    }
    let o = raid::CreateOptions {
        name: "R".into(),
        level: raid::geometry::Level::Raid5,
        strip_size_kb: 64,
        base_bdevs: vec!["R0".into(), "R1".into(), "R2".into()],
        uuid: None,
        superblock: true,
    };
    rs.block_on(0, move || async move { raid::create(o).await.map(|_| ()) })
        .map_err(err)?
        .map_err(err)?;
    let vol_bytes = registry::get("R").map_or(0, |h| h.bdev.num_blocks() * BS as u64);
    println!(
        "# RAID-5 of 3 malloc members, {} MiB; journal legs 2 x {} MiB malloc; 4 KiB randwrite QD32, {} s each, 1 reactor",
        vol_bytes >> 20,
        cli.journal_mb,
        cli.secs
    );
    println!("| volume | IOPS | p50 | p99 |\n|---|---|---|---|");
    let plain = randwrite(&rs, "R", cli.secs)?;
    line("raid5, unprotected", &plain);

    // The group and the volume; its first drain is a full backup from the base.
    mk_malloc("JA", cli.journal_mb)?;
    mk_malloc("JB", cli.journal_mb)?;
    let go = GroupOptions {
        name: "BG".into(),
        journal_bdevs: ["JA".into(), "JB".into()],
        repository: cli.repo.clone(),
        drain: DrainPolicy {
            fill_percent: 0,
            max_age_secs: 0,
            chunk_size: 1 << 20,
            max_bandwidth_mb_sec: 0,
        },
        create_repository: true,
    };
    let t0 = Instant::now();
    rs.block_on(0, move || async move {
        journal::create_group(go).await?;
        journal::create_volume("BG", "PV", "R", BTreeMap::new()).await
    })
    .map_err(err)?
    .map_err(err)?;
    wait_drains(1)?;
    let full = t0.elapsed().as_secs_f64();

    let prot = randwrite(&rs, "PV", cli.secs)?;
    line("raid5 + mirrored journal (protected)", &prot);
    let g = group();
    println!(
        "\nprotected / unprotected: {:.0} % of the IOPS, p99 {:.2}x; journal: {} batches for {} records ({:.1} records per batch), {} back-pressure waits, {:.1} % full",
        prot.iops() * 100.0 / plain.iops(),
        prot.quantile_us(0.99) / plain.quantile_us(0.99),
        g["journal"]["appended_batches"],
        g["journal"]["appended_records"],
        g["journal"]["appended_records"].as_f64().unwrap_or(0.0)
            / g["journal"]["appended_batches"].as_f64().unwrap_or(1.0).max(1.0),
        g["journal"]["backpressure_waits"],
        g["journal"]["fill_percent"].as_f64().unwrap_or(0.0)
    );

    let delta: u64 = g["volumes"][0]["delta_bytes"].as_u64().unwrap_or(0);
    let t0 = Instant::now();
    journal::drain::start("BG").map_err(err)?;
    let d = wait_drains(2)?;
    let inc = t0.elapsed().as_secs_f64();
    println!("\n| drain | time | rate |\n|---|---|---|");
    println!(
        "| first drain: full backup of {} MiB from the base | {full:.2} s | {:.2} GB/s |",
        vol_bytes >> 20,
        vol_bytes as f64 / full / 1e9
    );
    println!(
        "| incremental drain of {} MiB of records ({} new chunks stored; the load writes one pattern, so most chunks equal stored ones) | {inc:.2} s | {:.2} GB/s of records |",
        delta >> 20,
        d["stored_chunks"],
        delta as f64 / inc / 1e9
    );

    // Some undrained records, then two members lost and the rebuild.
    randwrite(&rs, "PV", 1)?;
    let undrained = group()["journal"]["undrained_records"]
        .as_u64()
        .unwrap_or(0);
    registry::unregister("R0").map_err(err)?;
    registry::unregister("R1").map_err(err)?;
    while volume_state() != "offline" {
        std::thread::sleep(Duration::from_millis(20));
    }
    mk_malloc("N0", member_mb)?;
    mk_malloc("N1", member_mb)?;
    let t0 = Instant::now();
    rs.block_on(0, || async {
        journal::rebuild::start(
            "PV",
            NewBase::Members(vec!["N0".into(), "N1".into(), "R2".into()]),
        )
        .await
    })
    .map_err(err)?
    .map_err(err)?;
    loop {
        let v = group()["volumes"][0].clone();
        if v["state"] == "online" {
            break;
        }
        if v["state"] == "offline" && !v["last_rebuild"].is_null() {
            return Err(format!("rebuild failed: {}", v["last_rebuild"]));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rb = t0.elapsed().as_secs_f64();
    println!(
        "| rebuild of the {} MiB volume after two members were lost: restore of the backup chain + replay of {undrained} journal records | {rb:.2} s | {:.2} GB/s |",
        vol_bytes >> 20,
        vol_bytes as f64 / rb / 1e9
    );
    rs.stop();
    Ok(())
}
