//! Split-mirror backup benchmark, on a mirror of two malloc legs (1 GiB of random data by
//! default, one reactor in poll mode on core 0):
//! - the answer latency of a snapshot split taken while a resync of the whole volume runs,
//!   and of one taken on an in-sync mirror;
//! - host 4 KiB random writes QD32 on the mirror before the split, during the image's
//!   background copy (the first write into each owed region copies it first) and after it;
//! - a full backup of the image and a 1 % incremental one into a directory on this machine,
//!   and a restore of the full backup onto a malloc bdev (GB/s).
//!
//! Usage: see `bench/split_backup.sh`.

use clap::Parser;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::rc::Rc;
use std::time::{Duration, Instant};
use strata_bdev::backup::{self, repo::BackupKind};
use strata_bdev::modules::mirror::backup::{BackupMode, BackupOptions};
use strata_bdev::modules::{malloc, mirror};
use strata_bdev::wait::{submit_wait, write_slice};
use strata_bdev::{registry, BdevIo, IoType};
use strata_reactor::{dma, Mode, ReactorSet};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "strata-split-bench",
    about = "Time snapshot splits, backups and restores"
)]
struct Cli {
    /// Data size of the mirror in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mb: u64,
    /// Seconds of each host write measurement.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Repository directory (emptied first).
    #[arg(long, default_value = "build/bench-backup-repo")]
    repo: String,
    /// Mode of the backups: secondary or memory.
    #[arg(long, default_value = "secondary")]
    mode: String,
    /// Run the reactor in interrupt mode (it sleeps when idle: the file system's writeback
    /// threads get the CPU a polling reactor would take).
    #[arg(long)]
    interrupt: bool,
}

type Res<T> = Result<T, String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// 4 KiB random writes at QD32 on `bdev` for `secs`: IOPS.
fn randwrite(rs: &ReactorSet, bdev: &'static str, secs: u64) -> Res<f64> {
    let n = rs
        .block_on(0, move || async move {
            let d = registry::open(bdev, |_| {}).map_err(err)?;
            let ch = d.channel().map_err(err)?;
            let blocks = ch.num_blocks();
            let end = Instant::now() + Duration::from_secs(secs);
            let done = Rc::new(std::cell::Cell::new(0u64));
            let mut tasks = Vec::new();
            for q in 0..32u64 {
                let (ch, done) = (ch.clone(), done.clone());
                tasks.push(strata_reactor::spawn_local(async move {
                    let mut rng = rand::rngs::SmallRng::seed_from_u64(q);
                    let Some(mut buf) = dma::alloc(4096) else {
                        return;
                    };
                    buf.as_mut_slice().fill(q as u8);
                    let mut bufs = smallvec_of(buf);
                    while Instant::now() < end {
                        let mut io = BdevIo::new(IoType::Write, rng.gen_range(0..blocks), 1);
                        io.bufs = std::mem::take(&mut bufs);
                        let mut io = submit_wait(&ch, io).await;
                        bufs = std::mem::take(&mut io.bufs);
                        if io.status.is_success() {
                            done.set(done.get() + 1);
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            Ok::<u64, String>(done.get())
        })
        .map_err(err)??;
    Ok(n as f64 / secs as f64)
}

/// One 4 KiB write of `fill` at the start of each region in `regions` of mirror SM.
fn touch_regions(rs: &ReactorSet, regions: Vec<u64>, rb: u64, fill: u8) -> Res<()> {
    rs.block_on(0, move || async move {
        let d = registry::open("SM", |_| {}).map_err(err)?;
        let ch = d.channel().map_err(err)?;
        for r in regions {
            write_slice(&ch, r * rb, &[fill; 4096])
                .await
                .map_err(|st| format!("write to region {r}: {st:?}"))?;
        }
        Ok::<(), String>(())
    })
    .map_err(err)?
}

fn smallvec_of(b: dma::DmaBuf) -> strata_bdev::bufs::Bufs {
    let mut v = strata_bdev::bufs::Bufs::new();
    v.push(b);
    v
}

fn info() -> Res<Value> {
    Ok(mirror::get(Some("SM")).map_err(err)?.remove(0))
}

fn wait_until(what: &str, mut f: impl FnMut(&Value) -> bool) -> Res<Value> {
    let t = Instant::now();
    loop {
        let i = info()?;
        if f(&i) {
            return Ok(i);
        }
        if t.elapsed() > Duration::from_secs(600) {
            return Err(format!("{what}: {i}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn main() -> Res<()> {
    let cli = Cli::parse();
    dma::init_iobuf(dma::IobufOptions::default()).map_err(err)?;
    let mode_r = if cli.interrupt {
        Mode::Interrupt
    } else {
        Mode::Poll
    };
    let rs = ReactorSet::start(&[0], mode_r).map_err(err)?;
    rs.install_global();
    let bs = 4096u64;
    let leg_blocks = (cli.size_mb + 1) * (1 << 20) / bs;
    for leg in ["SL0", "SL1", "SR"] {
        malloc::create(malloc::MallocOptions {
            name: leg.into(),
            num_blocks: leg_blocks,
            block_size: bs as u32,
            uuid: None,
        })
        .map_err(err)?;
    }
    let _ = std::fs::remove_dir_all(&cli.repo);
    let mode = BackupMode::from_name(&cli.mode).ok_or("mode: secondary or memory")?;
    let mut o = mirror::CreateOptions::new("SM", "SL0", "SL1");
    o.initial_sync = false;
    rs.block_on(
        0,
        move || async move { mirror::create(o).await.map(|_| ()) },
    )
    .map_err(err)?
    .map_err(err)?;
    let m = mirror::mirror("SM").ok_or("no mirror")?;
    let (regions, rb, n) = (m.intent.bits, m.region_blocks, m.num_blocks);
    // Random data everywhere (zero chunks would be holes: nothing to measure).
    rs.block_on(0, move || async move {
        let d = registry::open("SM", |_| {})?;
        let ch = d.channel()?;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut buf = vec![0u8; 1 << 20];
        let mut b = 0;
        while b < n {
            rng.fill(&mut buf[..]);
            let k = 256.min(n - b);
            write_slice(&ch, b, &buf[..(k * bs) as usize])
                .await
                .map_err(|st| strata_bdev::BdevError::Invalid(format!("{st:?}")))?;
            b += k;
        }
        Ok::<(), strata_bdev::BdevError>(())
    })
    .map_err(err)?
    .map_err(err)?;
    println!(
        "mirror of {} MiB, {regions} regions of {} KiB",
        cli.size_mb,
        rb * bs / 1024
    );

    let before = randwrite(&rs, "SM", cli.secs)?;
    println!(
        "host 4 KiB randwrite QD32, in sync (before the split): {:>9.0} IOPS",
        before
    );

    // A resync of every region (split, one write per region, resume at 200 MB/s), then a
    // snapshot split while it runs.
    rs.block_on(0, || async { mirror::split("SM").await })
        .map_err(err)?
        .map_err(err)?;
    touch_regions(&rs, (0..regions).collect(), rb, 7)?;
    let set = |mb: u32| {
        let o = mirror::SetOptions {
            max_bandwidth_mb_sec: Some(mb),
            ..Default::default()
        };
        rs.block_on(0, move || async move { mirror::set_options("SM", o).await })
            .map_err(err)?
            .map_err(err)
    };
    set(200)?;
    rs.block_on(0, || async {
        mirror::resume("SM", mirror::ResumeMode::Bitmap).await
    })
    .map_err(err)?
    .map_err(err)?;
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let s = rs
        .block_on(0, || async {
            mirror::snapshot::split_snapshot("SM", None).await
        })
        .map_err(err)?
        .map_err(err)?;
    let wall = t.elapsed();
    println!(
        "snapshot split during a resync: answered in {:.0} µs (target-side {} µs), {} of {regions} regions owed",
        wall.as_secs_f64() * 1e6,
        s["split_us"],
        s["owed_regions"]
    );
    let during = randwrite(&rs, "SM", cli.secs)?;
    let i = info()?;
    println!(
        "host 4 KiB randwrite QD32, during the image copy:    {:>9.0} IOPS ({:.0} %; {} regions copied before writes)",
        during,
        during * 100.0 / before,
        i["image"]["copied_before_writes"]
    );
    set(0)?;
    wait_until("image complete", |i| i["image"]["complete"] == true)?;
    let after = randwrite(&rs, "SM", cli.secs)?;
    println!(
        "host 4 KiB randwrite QD32, image complete (split):   {:>9.0} IOPS ({:.0} %)",
        after,
        after * 100.0 / before
    );

    // A fresh image of the in-sync mirror for the backups: resume, split again.
    rs.block_on(0, || async {
        mirror::resume("SM", mirror::ResumeMode::Auto).await
    })
    .map_err(err)?
    .map_err(err)?;
    let m = mirror::mirror("SM").ok_or("no mirror")?;
    rs.block_on(0, move || async move { mirror::wait_idle(&m).await })
        .map_err(err)?;
    let t = Instant::now();
    rs.block_on(0, || async {
        mirror::snapshot::split_snapshot("SM", None).await
    })
    .map_err(err)?
    .map_err(err)?;
    println!(
        "snapshot split of an in-sync mirror: answered in {:.0} µs",
        t.elapsed().as_secs_f64() * 1e6
    );
    let backup = |kind: BackupKind| -> Res<(f64, Value)> {
        let o = BackupOptions {
            repository: cli.repo.clone(),
            kind,
            mode,
            chunk_kb: None,
            id: None,
            max_bandwidth_mb_sec: 0,
            create_repository: true,
        };
        let t = Instant::now();
        rs.block_on(
            0,
            move || async move { mirror::backup::start("SM", o).await },
        )
        .map_err(err)?
        .map_err(err)?;
        let i = wait_until("backup", |i| i["image"]["backup"].is_null())?;
        let last = i["image"]["last_backup_job"].clone();
        if last["result"] != "done" {
            return Err(format!("backup: {last}"));
        }
        Ok((t.elapsed().as_secs_f64(), last))
    };
    let (secs, full) = backup(BackupKind::Full)?;
    let bytes = n * bs;
    println!(
        "full backup ({}):        {:>7.3} s  {:>6.2} GB/s  stored {} MiB",
        cli.mode,
        secs,
        bytes as f64 / secs / 1e9,
        full["stored_bytes"].as_u64().unwrap_or(0) >> 20
    );
    let id = full["id"].as_str().ok_or("no id")?.to_string();

    // Restore.
    let (repo, rid) = (cli.repo.clone(), id.clone());
    let t = Instant::now();
    let job = rs
        .block_on(0, move || async move {
            backup::restore(&repo, &rid, "SR").await
        })
        .map_err(err)?
        .map_err(err)?;
    loop {
        let j = backup::jobs(Some(job)).map_err(err)?.remove(0);
        if j["state"] != "running" {
            if j["state"] != "done" {
                return Err(format!("restore: {j}"));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "restore of the full backup: {:>7.3} s  {:>6.2} GB/s",
        secs,
        bytes as f64 / secs / 1e9
    );

    // 1 % incremental: resume, change 1 % of the regions, split again.
    rs.block_on(0, || async {
        mirror::resume("SM", mirror::ResumeMode::Auto).await
    })
    .map_err(err)?
    .map_err(err)?;
    let m = mirror::mirror("SM").ok_or("no mirror")?;
    rs.block_on(0, move || async move { mirror::wait_idle(&m).await })
        .map_err(err)?;
    let dirty = (regions / 100).max(1);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
    let mut picked = std::collections::BTreeSet::new();
    while (picked.len() as u64) < dirty {
        picked.insert(rng.gen_range(0..regions));
    }
    touch_regions(&rs, picked.into_iter().collect(), rb, 9)?;
    rs.block_on(0, || async {
        mirror::snapshot::split_snapshot("SM", None).await
    })
    .map_err(err)?
    .map_err(err)?;
    let (secs, inc) = backup(BackupKind::Incremental)?;
    println!(
        "1 % incremental backup:    {:>7.3} s  {:>6.2} GB/s of changed data  ({} of {} MiB gone through, {:.1} % of the full backup's time)",
        secs,
        inc["total_bytes"].as_f64().unwrap_or(0.0) / secs / 1e9,
        inc["total_bytes"].as_u64().unwrap_or(0) >> 20,
        bytes >> 20,
        secs * 100.0 / full["elapsed_seconds"].as_f64().unwrap_or(1.0).max(1e-9)
    );
    rs.stop();
    let _ = std::fs::remove_dir_all(&cli.repo);
    Ok(())
}
