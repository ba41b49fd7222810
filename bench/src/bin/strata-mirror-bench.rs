//! Mirror job benchmark: on a mirror of two malloc legs (4 GiB of data by default), times
//! the full initial resync, a resync after dirtying 1 % of the change-bitmap regions, a
//! checksum-scan resync of the same 1 %, and a full scrub (the checksum scan rate). Host
//! I/O figures come from `strata-bdevperf` with `bench/configs/mirror*.json` (see
//! `bench/mirror.sh`).

use clap::Parser;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::time::Instant;
use strata_bdev::modules::{malloc, mirror};
use strata_bdev::registry;
use strata_bdev::wait::write_slice;
use strata_reactor::{dma, Mode, ReactorSet};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "strata-mirror-bench",
    about = "Time mirror resync, scan and scrub jobs"
)]
struct Cli {
    /// Data size of the mirror in MiB.
    #[arg(long, default_value_t = 4096)]
    size_mb: u64,
    /// Percent of bitmap regions to dirty before the partial resyncs.
    #[arg(long, default_value_t = 1.0)]
    dirty_pct: f64,
    /// Block size of the legs.
    #[arg(long, default_value_t = 4096)]
    block_size: u32,
}

fn main() -> Result<(), String> {
    let cli = Cli::parse();
    dma::init_iobuf(dma::IobufOptions::default()).map_err(|e| e.to_string())?;
    let reactors = ReactorSet::start(&[0], Mode::Poll).map_err(|e| e.to_string())?;
    reactors.install_global();
    let bs = cli.block_size as u64;
    // Room for the metadata (1 MiB) on top of the data.
    let leg_blocks = (cli.size_mb + 1) * (1 << 20) / bs;
    for leg in ["BL0", "BL1"] {
        malloc::create(malloc::MallocOptions {
            name: leg.into(),
            num_blocks: leg_blocks,
            block_size: cli.block_size,
            uuid: None,
        })
        .map_err(|e| e.to_string())?;
    }
    let job =
        |what: &'static str, f: Box<dyn FnOnce() -> Result<(), String>>| -> Result<Value, String> {
            let t = Instant::now();
            f()?;
            let m = mirror::mirror("BM").ok_or("mirror gone")?;
            reactors
                .block_on(0, move || async move { mirror::wait_idle(&m).await })
                .map_err(|e| e.to_string())?;
            let secs = t.elapsed().as_secs_f64();
            let info = mirror::get(Some("BM"))
                .map_err(|e| e.to_string())?
                .remove(0);
            let last = info["last_job"].clone();
            if last["result"] != "done" {
                return Err(format!("{what}: {last}"));
            }
            println!(
                "{what:<28} {secs:8.3} s  {:>9.1} MB/s  copied {:>6} MiB  mismatches {}",
                last["mb_per_sec"].as_f64().unwrap_or(0.0),
                last["copied_bytes"].as_u64().unwrap_or(0) >> 20,
                last["mismatches"]
            );
            Ok(serde_json::json!({"job": what, "seconds": secs, "last_job": last}))
        };
    let rb = |r: Result<Result<(), strata_bdev::BdevError>, strata_reactor::ReactorError>| {
        r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
    };
    let mut results = Vec::new();
    let rs = reactors.clone();
    results.push(job(
        "full resync (initial copy)",
        Box::new(move || {
            let o = mirror::CreateOptions::new("BM", "BL0", "BL1");
            rb(rs.block_on(
                0,
                move || async move { mirror::create(o).await.map(|_| ()) },
            ))
        }),
    )?);
    let regions = mirror::mirror("BM").ok_or("no mirror")?.intent.bits;
    let dirty = ((regions as f64 * cli.dirty_pct / 100.0).ceil() as u64).max(1);
    let region_blocks = mirror::mirror("BM").ok_or("no mirror")?.region_blocks;
    // Split, then one 4 KiB write into each of `dirty` distinct random regions.
    let dirty_some = |seed: u64| -> Result<(), String> {
        rb(reactors.block_on(0, || async { mirror::split("BM").await }))?;
        let r = reactors.block_on(0, move || async move {
            let d = registry::open("BM", |_| {})?;
            let ch = d.channel()?;
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let mut picked = std::collections::BTreeSet::new();
            while (picked.len() as u64) < dirty {
                picked.insert(rng.gen_range(0..regions));
            }
            let buf = vec![0x5au8 ^ seed as u8; 4096];
            for r in picked {
                write_slice(&ch, r * region_blocks, &buf[..ch.block_size() as usize])
                    .await
                    .map_err(|st| strata_bdev::BdevError::Invalid(format!("{st:?}")))?;
            }
            Ok::<(), strata_bdev::BdevError>(())
        });
        rb(r)
    };
    dirty_some(1)?;
    results.push(job(
        "resync of 1% dirty (bitmap)",
        Box::new(|| {
            rb(reactors.block_on(0, || async {
                mirror::resume("BM", mirror::ResumeMode::Bitmap).await
            }))
        }),
    )?);
    dirty_some(2)?;
    results.push(job(
        "resync of 1% dirty (checksum)",
        Box::new(|| {
            rb(reactors.block_on(0, || async {
                mirror::resume("BM", mirror::ResumeMode::Checksum).await
            }))
        }),
    )?);
    results.push(job(
        "scrub (checksum scan)",
        Box::new(|| rb(reactors.block_on(0, || async { mirror::verify("BM", false).await }))),
    )?);
    let full = results[0]["seconds"].as_f64().unwrap_or(1.0);
    let part = results[1]["seconds"].as_f64().unwrap_or(0.0);
    let scan = &results[3]["last_job"];
    println!(
        "dirty {dirty} of {regions} regions: partial/full resync time = {:.2} %; scan rate {:.2} GB/s",
        part * 100.0 / full,
        scan["total_bytes"].as_f64().unwrap_or(0.0) / results[3]["seconds"].as_f64().unwrap_or(1.0) / 1e9
    );
    reactors.stop();
    Ok(())
}
