//! The vfio NVMe driver against a real (emulated) controller: QEMU's NVMe device behind an
//! emulated Intel IOMMU, in a guest booted by `scripts/linux-host/run-guest.sh`. The outer
//! test boots the guest; inside it, `scripts/setup.sh --bind` gives the controller to
//! vfio-pci and this same binary runs the ignored test `in_guest`, which:
//!
//! 1. drives the controller in process (two reactors, a queue pair each, interrupt mode):
//!    refused attaches, a model-checked random mix of reads, writes, write zeroes, unmaps and
//!    flushes whose buffers start inside pages, join inside pages (bounced) and span more
//!    than MDTS (the device is given `mdts=2`: 16 KiB, so most I/O is split); detach and
//!    re-attach keep the data;
//! 2. serves it from `strata-tgt`: RPC attach (and its refusals), an NVMe/TCP export that the
//!    host library checks against a model, `save_config`, a restart from the saved config
//!    with the data intact;
//! 3. hot removal: while a host writes, the outer test removes the device through the QEMU
//!    monitor (`device_del`); the target must fail the I/O (no hang), drop the bdev, keep
//!    serving its other subsystem, and exit cleanly.
//!
//! The only allowed skip: `scripts/linux-host/install.sh` exits 3 when QEMU cannot run here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../nvmf/tests/common/mod.rs"]
mod common;

use common::linux_guest::{self, Guest};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const IMAGE_BYTES: u64 = 64 << 20;
const BLOCK: usize = 512;
/// The part of the namespace the model tracks.
const MODEL_BLOCKS: u64 = 8192;

#[test]
fn vfio_nvme_driver_in_a_guest_with_an_emulated_iommu() {
    if !linux_guest::installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("nvme.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(IMAGE_BYTES)
        .unwrap();
    let slow = dir.path().join("slow.img");
    std::fs::File::create(&slow)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let monitor = dir.path().join("monitor.sock");
    std::env::set_var(
        "LINUX_HOST_QEMU_ARGS",
        format!(
            "-machine kernel-irqchip=split -device intel-iommu,intremap=on,caching-mode=on \
             -device pcie-root-port,id=rp1,slot=1,chassis=1 \
             -drive file={},if=none,id=nvm,format=raw \
             -device nvme,bus=rp1,id=nvme0,serial=strata-vfio-0,mdts=2,drive=nvm \
             -device pcie-root-port,id=rp2,slot=2,chassis=2 \
             -drive file={},if=none,id=slow,format=raw,throttling.iops-total=2 \
             -device nvme,bus=rp2,id=nvme1,serial=strata-vfio-slow,drive=slow \
             -monitor unix:{},server=on,wait=off",
            image.display(),
            slow.display(),
            monitor.display()
        ),
    );
    std::env::set_var("LINUX_HOST_APPEND", "intel_iommu=on iommu=pt");
    std::env::set_var("LINUX_HOST_MEM", "2048M");
    let me = std::env::current_exe().unwrap();
    let setup = linux_guest::repo_dir().join("scripts/setup.sh");
    let cmd = format!(
        "set -e; modprobe vfio-pci; ip link set lo up; \
         set -- $(for d in /sys/bus/pci/devices/*; do \
           if [ \"$(cat $d/class)\" = 0x010802 ]; then echo ${{d##*/}}; fi; done); \
         BDF=$1; SLOW=$2; echo \"NVMe controllers at $BDF and (throttled) $SLOW\"; \
         {setup} --bind $BDF; {setup} --bind $SLOW; \
         STRATA_VFIO_BDF=$BDF STRATA_VFIO_SLOW_BDF=$SLOW {me} --ignored --exact in_guest --test-threads 1 --nocapture 2>&1 | tail -60; \
         test ${{PIPESTATUS[0]}} -eq 0 && echo 'ALL STEPS OK'",
        setup = setup.display(),
        me = me.display()
    );
    let mut g = Guest::start(dir.path(), &cmd, 2400);
    g.wait_file("remove-now");
    let mut m = std::os::unix::net::UnixStream::connect(&monitor).unwrap();
    m.write_all(b"device_del nvme0\n").unwrap();
    g.signal("removal-sent");
    g.finish();
}

fn share() -> PathBuf {
    PathBuf::from(std::env::var("SHARE").unwrap_or_else(|_| "/run/share".into()))
}

/// A block's content for version `v`: every byte depends on the LBA and the version, so a
/// block written to the wrong place or a stale one is caught.
fn pattern(lba: u64, v: u32, out: &mut [u8]) {
    let mut x = (lba << 20) ^ (v as u64) ^ 0x9e37_79b9_7f4a_7c15;
    for c in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
}

#[test]
#[ignore = "runs inside the guest of vfio_nvme_driver_in_a_guest_with_an_emulated_iommu"]
fn in_guest() {
    let bdf = std::env::var("STRATA_VFIO_BDF").expect("STRATA_VFIO_BDF");
    let t0 = Instant::now();
    in_process::run(&bdf);
    println!(
        "STEP in-process driver OK ({:.0} s)",
        t0.elapsed().as_secs_f64()
    );
    let slow = std::env::var("STRATA_VFIO_SLOW_BDF").expect("STRATA_VFIO_SLOW_BDF");
    in_process::timeouts(&slow);
    println!(
        "STEP timeouts, abort and reset OK ({:.0} s)",
        t0.elapsed().as_secs_f64()
    );
    in_process::given_back_to_the_kernel(&slow);
    println!(
        "STEP unbind and refusal OK ({:.0} s)",
        t0.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().unwrap();
    target::run(&bdf, dir.path());
    println!("STEP strata-tgt OK ({:.0} s)", t0.elapsed().as_secs_f64());
    target::hot_removal(&bdf, dir.path());
    println!("STEP hot removal OK ({:.0} s)", t0.elapsed().as_secs_f64());
}

mod in_process {
    use super::*;
    use smallvec::SmallVec;
    use strata_bdev::wait::submit_wait;
    use strata_bdev::{registry, BdevIo, IoStatus, IoType};
    use strata_reactor::dma::{self, DmaBuf};
    use strata_reactor::{Mode, ReactorSet};

    /// How an I/O's data is laid out in buffers: each exercises another data-pointer path.
    #[derive(Clone, Copy, Debug)]
    enum Layout {
        /// Page-aligned buffers (PRP entries straight from them).
        Aligned,
        /// A view starting 512 bytes into a page (PRP1 with an offset).
        Offset,
        /// Pieces joined inside a page (not describable by PRPs: an SGL).
        OddPieces,
        /// 48-byte crumbs: more pieces than one SGL segment holds (bounced).
        Crumbs,
    }

    fn bufs_for(len: usize, layout: Layout) -> SmallVec<[DmaBuf; 2]> {
        let max = dma::max_buf_size();
        let mut out = SmallVec::new();
        let mut left = len;
        if let Layout::Offset = layout {
            // A writable part starting 512 bytes into a pool buffer: split the first 512
            // bytes off and drop them (the part keeps its place). It ends on a page boundary
            // when more follows, as PRP lists need.
            let n = left.min(max - 512);
            let mut b = dma::alloc(n + 512).unwrap();
            let _head = b.split_to(512).unwrap();
            out.push(b);
            left -= n;
        }
        while left > 0 {
            let n = left.min(max);
            let mut b = dma::alloc(n).unwrap();
            if let Layout::OddPieces = layout {
                // Pieces of 1.5 and 2.5 KiB: joins inside pages, which PRPs cannot describe.
                let mut cut = 1536usize;
                while b.len() > cut {
                    out.push(b.split_to(cut).unwrap());
                    cut = if cut == 1536 { 2560 } else { 1536 };
                }
            }
            if let Layout::Crumbs = layout {
                while b.len() > 48 {
                    out.push(b.split_to(48).unwrap());
                }
            }
            out.push(b);
            left -= n;
        }
        out
    }

    fn fill(bufs: &mut [DmaBuf], data: &[u8]) {
        let mut at = 0;
        for b in bufs {
            let n = b.len();
            b.as_mut_slice().copy_from_slice(&data[at..at + n]);
            at += n;
        }
    }

    fn collect(bufs: &[DmaBuf]) -> Vec<u8> {
        bufs.iter().flat_map(|b| b.as_slice().to_vec()).collect()
    }

    async fn io(
        ch: &strata_bdev::IoChannel,
        t: IoType,
        lba: u64,
        n: u64,
        bufs: SmallVec<[DmaBuf; 2]>,
    ) -> (IoStatus, SmallVec<[DmaBuf; 2]>) {
        let mut io = BdevIo::new(t, lba, n);
        io.bufs = bufs;
        let mut done = submit_wait(ch, io).await;
        let bufs = std::mem::take(&mut done.bufs);
        (done.status, bufs)
    }

    /// Random I/O on `lo..hi` of the namespace from reactor `r`, checked against `model`
    /// (None: content unknown, after an unmap).
    async fn random_io(seed: u64, ops: usize, lo: u64, hi: u64, model: &mut [Option<u32>]) {
        let d = registry::open("PV0n1", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut version = (seed as u32) << 16;
        let layouts = [
            Layout::Aligned,
            Layout::Offset,
            Layout::OddPieces,
            Layout::Crumbs,
        ];
        for _ in 0..ops {
            let n = *[1u64, 7, 8, 33, 64, 200, 256, 512]
                .get(rng.gen_range(0..8))
                .unwrap();
            let lba = rng.gen_range(lo..hi - n);
            let layout = layouts[rng.gen_range(0..layouts.len())];
            let len = n as usize * BLOCK;
            match rng.gen_range(0..10) {
                0..=3 => {
                    version += 1;
                    let mut data = vec![0u8; len];
                    for (i, c) in data.chunks_mut(BLOCK).enumerate() {
                        pattern(lba + i as u64, version, c);
                    }
                    let mut bufs = bufs_for(len, layout);
                    fill(&mut bufs, &data);
                    let (s, _) = io(&ch, IoType::Write, lba, n, bufs).await;
                    assert_eq!(s, IoStatus::Success, "write {lba}+{n} {layout:?}");
                    for i in 0..n {
                        model[(lba - lo + i) as usize] = Some(version);
                    }
                }
                4..=7 => {
                    let (s, bufs) = io(&ch, IoType::Read, lba, n, bufs_for(len, layout)).await;
                    assert_eq!(s, IoStatus::Success, "read {lba}+{n} {layout:?}");
                    let got = collect(&bufs);
                    let mut want = vec![0u8; BLOCK];
                    for i in 0..n as usize {
                        let blk = &got[i * BLOCK..(i + 1) * BLOCK];
                        match model[(lba - lo) as usize + i] {
                            Some(0) => assert!(
                                blk.iter().all(|&b| b == 0),
                                "block {} not zero",
                                lba + i as u64
                            ),
                            Some(v) => {
                                pattern(lba + i as u64, v, &mut want);
                                assert!(blk == &want[..], "block {} ({layout:?} read of {lba}+{n}) differs from version {v}", lba + i as u64);
                            }
                            None => {}
                        }
                    }
                }
                8 => {
                    let (s, _) = io(&ch, IoType::WriteZeroes, lba, n, SmallVec::new()).await;
                    assert_eq!(s, IoStatus::Success, "write zeroes {lba}+{n}");
                    for i in 0..n {
                        model[(lba - lo + i) as usize] = Some(0);
                    }
                }
                _ => {
                    if rng.gen_bool(0.5) {
                        let (s, _) = io(&ch, IoType::Unmap, lba, n, SmallVec::new()).await;
                        assert_eq!(s, IoStatus::Success, "unmap {lba}+{n}");
                        for i in 0..n {
                            model[(lba - lo + i) as usize] = None;
                        }
                    } else {
                        let (s, _) = io(&ch, IoType::Flush, 0, 0, SmallVec::new()).await;
                        assert_eq!(s, IoStatus::Success, "flush");
                    }
                }
            }
        }
    }

    async fn verify(lo: u64, model: &[Option<u32>]) {
        let d = registry::open("PV0n1", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let mut want = vec![0u8; BLOCK];
        for (chunk_i, chunk) in model.chunks(256).enumerate() {
            let lba = lo + chunk_i as u64 * 256;
            let n = chunk.len() as u64;
            let (s, bufs) = io(
                &ch,
                IoType::Read,
                lba,
                n,
                bufs_for(n as usize * BLOCK, Layout::Aligned),
            )
            .await;
            assert_eq!(s, IoStatus::Success);
            let got = collect(&bufs);
            for (i, m) in chunk.iter().enumerate() {
                let blk = &got[i * BLOCK..(i + 1) * BLOCK];
                match m {
                    Some(0) => assert!(blk.iter().all(|&b| b == 0)),
                    Some(v) => {
                        pattern(lba + i as u64, *v, &mut want);
                        assert!(
                            blk == &want[..],
                            "block {} lost after re-attach",
                            lba + i as u64
                        );
                    }
                    None => {}
                }
            }
        }
    }

    pub fn run(bdf: &str) {
        let set = ReactorSet::start(&[0, 1], Mode::Interrupt).unwrap();
        // Refusals first: nothing may be left attached by them.
        let e = strata_pcie::attach("PV0", "zz:00", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a PCI address"), "{e}");
        let e = strata_pcie::attach("PV0", "0000:00:00.0", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an NVMe controller"), "{e}");
        let e = strata_pcie::attach("PV0", "0000:7f:1f.7", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no PCI device"), "{e}");
        assert!(strata_pcie::detach("PV0").is_err());

        let names = strata_pcie::attach("PV0", bdf, Some(2)).unwrap();
        assert_eq!(names, vec!["PV0n1".to_string()]);
        let e = strata_pcie::attach("PV1", bdf, Some(2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("already"), "{e}");
        let h = registry::get("PV0n1").unwrap();
        assert_eq!(h.bdev.block_size(), BLOCK as u32);
        assert_eq!(h.bdev.num_blocks(), IMAGE_BYTES / BLOCK as u64);
        drop(h);

        // Two reactors, each its own queue pair and half of the model range.
        let half = MODEL_BLOCKS / 2;
        let models: Vec<Vec<Option<u32>>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2usize)
                .map(|r| {
                    let set = set.clone();
                    s.spawn(move || {
                        set.block_on(r, move || async move {
                            let lo = r as u64 * half;
                            let mut model = vec![Some(0u32); half as usize];
                            random_io(r as u64 + 1, 400, lo, lo + half, &mut model).await;
                            model
                        })
                        .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Every data-pointer path ran: PRPs, SGLs (odd pieces) and bounce buffers (crumbs).
        let c = strata_pcie::controllers(Some("PV0"));
        let c = &c[0]["ctrlrs"][0];
        println!("controller after the random I/O: {c}");
        assert!(c["sgl_commands"].as_u64().unwrap() > 0, "{c}");
        assert!(c["bounced_commands"].as_u64().unwrap() > 0, "{c}");
        // Stop the reactors (their queue pairs go with them), then detach: the device
        // is given back and can be attached again.
        set.stop();
        strata_pcie::detach("PV0").unwrap();
        assert!(registry::get("PV0n1").is_none());

        let set = ReactorSet::start(&[0], Mode::Poll).unwrap();
        strata_pcie::attach("PV0", bdf, Some(1)).unwrap();
        set.block_on(0, move || async move {
            for (r, m) in models.iter().enumerate() {
                verify(r as u64 * half, m).await;
            }
        })
        .unwrap();
        set.stop();
        strata_pcie::detach("PV0").unwrap();
    }

    /// Commands on a device throttled to 2 I/O per second outlive a 1 s timeout: they are
    /// aborted (QEMU does not abort them), then the controller is reset; the I/O fails in
    /// bounded time, never hangs, and every write acknowledged is there afterwards.
    pub fn timeouts(bdf: &str) {
        let set = ReactorSet::start(&[0], Mode::Interrupt).unwrap();
        let mut o = strata_nvmf::remote::options();
        o.timeout_us = 1_000_000;
        strata_nvmf::remote::set_options(o.clone()).unwrap();
        strata_pcie::attach("SLOW", bdf, Some(1)).unwrap();
        let t0 = Instant::now();
        let results: Vec<(u64, IoStatus)> = set
            .block_on(0, || async {
                let d = registry::open("SLOWn1", |_| {}).unwrap();
                let ch = d.channel().unwrap();
                let mut tasks = Vec::new();
                for i in 0..8u64 {
                    let ch = ch.clone();
                    tasks.push(strata_reactor::spawn_local(async move {
                        let mut data = vec![0u8; 8 * BLOCK];
                        for (k, c) in data.chunks_mut(BLOCK).enumerate() {
                            pattern(i * 8 + k as u64, 7, c);
                        }
                        let mut bufs = bufs_for(data.len(), Layout::Aligned);
                        fill(&mut bufs, &data);
                        (i * 8, io(&ch, IoType::Write, i * 8, 8, bufs).await.0)
                    }));
                }
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await);
                }
                out
            })
            .unwrap();
        let took = t0.elapsed();
        let ok: Vec<u64> = results
            .iter()
            .filter(|r| r.1 == IoStatus::Success)
            .map(|r| r.0)
            .collect();
        println!(
            "throttled device: {} of 8 writes acknowledged, the rest {:?}; all done in {:.1} s",
            ok.len(),
            results
                .iter()
                .filter(|r| r.1 != IoStatus::Success)
                .map(|r| r.1)
                .collect::<Vec<_>>(),
            took.as_secs_f64()
        );
        assert!(ok.len() < 8, "no write outlived the timeout: {results:?}");
        assert!(
            took < Duration::from_secs(30),
            "timed-out I/O took {took:?}"
        );
        let c = strata_pcie::controllers(Some("SLOW"));
        let c = &c[0]["ctrlrs"][0];
        println!("controller after the timeouts: {c}");
        assert!(
            c["timeouts"].as_u64().unwrap() > 0 && c["aborts"].as_u64().unwrap() > 0,
            "{c}"
        );
        // The reset finishes on the control thread.
        let t1 = Instant::now();
        while strata_pcie::controllers(Some("SLOW"))[0]["ctrlrs"][0]["resets"]
            .as_u64()
            .unwrap()
            == 0
            || strata_pcie::controllers(Some("SLOW"))[0]["ctrlrs"][0]["state"] != "enabled"
        {
            assert!(
                t1.elapsed() < Duration::from_secs(30),
                "the controller was not reset"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        o.timeout_us = 0;
        strata_nvmf::remote::set_options(o).unwrap();
        // After the reset the queue is made again and serves I/O; acknowledged writes stand.
        set.block_on(0, move || async move {
            let d = registry::open("SLOWn1", |_| {}).unwrap();
            let ch = d.channel().unwrap();
            let mut want = vec![0u8; BLOCK];
            for lba in ok {
                let (s, bufs) = io(
                    &ch,
                    IoType::Read,
                    lba,
                    8,
                    bufs_for(8 * BLOCK, Layout::Aligned),
                )
                .await;
                assert_eq!(s, IoStatus::Success, "read after reset");
                let got = collect(&bufs);
                for k in 0..8usize {
                    pattern(lba + k as u64, 7, &mut want);
                    assert!(
                        got[k * BLOCK..(k + 1) * BLOCK] == want[..],
                        "acknowledged block {} lost",
                        lba + k as u64
                    );
                }
            }
        })
        .unwrap();
        set.stop();
        strata_pcie::detach("SLOW").unwrap();
    }

    /// `scripts/setup.sh --unbind` gives the controller back to the kernel's nvme driver
    /// (a block device appears); strata then refuses it, naming the fix.
    pub fn given_back_to_the_kernel(bdf: &str) {
        let setup = linux_guest::repo_dir().join("scripts/setup.sh");
        let out = std::process::Command::new(&setup)
            .args(["--unbind", bdf])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let driver = format!("/sys/bus/pci/devices/{bdf}/driver");
        let t0 = Instant::now();
        while std::fs::read_link(&driver)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .as_deref()
            != Some("nvme")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{bdf} did not go back to nvme"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let e = strata_pcie::attach("BACK", bdf, Some(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bound to nvme, not vfio-pci") && e.contains("setup.sh --bind"),
            "{e}"
        );
    }
}

mod target {
    use super::*;
    use common::rpc_call;

    pub struct Tgt {
        child: std::process::Child,
        pub sock: PathBuf,
        pub log: PathBuf,
    }

    impl Drop for Tgt {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Tgt {
        pub fn start(dir: &Path, tag: &str, json: Option<&Path>) -> Tgt {
            let sock = dir.join(format!("{tag}.sock"));
            let log = dir.join(format!("{tag}.log"));
            let mut c = std::process::Command::new(common::bin("strata-tgt"));
            c.args([
                "-m",
                "0x3",
                "--interrupt-mode",
                "--no-default",
                "--log-level",
                "info",
                "-r",
            ])
            .arg(&sock);
            if let Some(j) = json {
                c.arg("--json").arg(j);
            }
            let child = c
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let t = Tgt { child, sock, log };
            let t0 = Instant::now();
            while std::os::unix::net::UnixStream::connect(&t.sock).is_err() {
                assert!(
                    t0.elapsed() < Duration::from_secs(120),
                    "no RPC socket:\n{}",
                    t.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            t
        }

        pub fn rpc(
            &self,
            m: &str,
            p: serde_json::Value,
        ) -> Result<serde_json::Value, (i64, String)> {
            rpc_call(&self.sock, m, &p)
        }

        pub fn log_text(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }

        pub fn stop(mut self) {
            common::signal(&self.child, libc::SIGTERM);
            let st = self.child.wait().unwrap();
            let log = self.log_text();
            assert!(st.success(), "target exit {st:?}:\n{log}");
            // What the driver had to say, for the record.
            for l in log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .take(20)
            {
                println!("  {}: {l}", self.log.display());
            }
        }
    }

    const NQN: &str = "nqn.2026-12.io.strata:vfio";
    /// The target's I/O goes past the blocks the in-process part wrote (still zero).
    const BASE: u64 = 2 * MODEL_BLOCKS;
    const PORT: u16 = 4420;

    fn export(t: &Tgt, nqn: &str, bdev: &str, port: u16) {
        let _ = t.rpc("nvmf_create_transport", json!({ "trtype": "TCP" }));
        t.rpc(
            "nvmf_create_subsystem",
            json!({ "nqn": nqn, "allow_any_host": true }),
        )
        .unwrap();
        t.rpc(
            "nvmf_subsystem_add_ns",
            json!({ "nqn": nqn, "namespace": { "bdev_name": bdev } }),
        )
        .unwrap();
        t.rpc(
            "nvmf_subsystem_add_listener",
            json!({ "nqn": nqn, "listen_address": { "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string() } }),
        )
        .unwrap();
    }

    fn host(nqn: &str, port: u16) -> strata_nvmf::host::blocking::BlockingController {
        let opts = strata_nvmf::host::controller::ControllerOptions {
            io_queues: 1,
            queue_depth: 16,
            timeout: Duration::from_secs(60),
            ..Default::default()
        };
        strata_nvmf::host::blocking::BlockingController::connect(
            format!("127.0.0.1:{port}").parse().unwrap(),
            nqn,
            opts,
        )
        .expect("connect")
    }

    pub fn run(bdf: &str, dir: &Path) {
        let t = Tgt::start(dir, "tgt1", None);
        let attach = |p: serde_json::Value| t.rpc("bdev_nvme_attach_controller", p);
        // Refusals: each a JSON-RPC error with a reason, nothing attached.
        let (code, msg) =
            attach(json!({ "name": "NV", "trtype": "PCIe", "traddr": "nope" })).unwrap_err();
        assert_eq!(code, -32602, "{msg}");
        let (code, msg) =
            attach(json!({ "name": "NV", "trtype": "PCIe", "traddr": "0000:00:00.0" }))
                .unwrap_err();
        assert!(
            code == -32602 && msg.contains("not an NVMe controller"),
            "{code} {msg}"
        );
        let (code, msg) =
            attach(json!({ "name": "NV", "trtype": "PCIe", "traddr": bdf, "subnqn": NQN }))
                .unwrap_err();
        assert!(code == -32602 && msg.contains("subnqn"), "{code} {msg}");
        let (_, msg) = t
            .rpc("bdev_nvme_detach_controller", json!({ "name": "NV" }))
            .unwrap_err();
        assert!(!msg.is_empty());

        let names = attach(json!({ "name": "NV", "trtype": "PCIe", "traddr": bdf })).unwrap();
        assert_eq!(names, json!(["NVn1"]));
        let b = t.rpc("bdev_get_bdevs", json!({ "name": "NVn1" })).unwrap();
        assert_eq!(
            b[0]["driver_specific"]["nvme"][0]["trid"]["trtype"], "PCIe",
            "{b}"
        );
        let c = t
            .rpc("bdev_nvme_get_controllers", json!({ "name": "NV" }))
            .unwrap();
        assert_eq!(c[0]["ctrlrs"][0]["trid"]["traddr"], bdf, "{c}");
        export(&t, NQN, "NVn1", PORT);

        // Verified random I/O from a host over NVMe/TCP: 4 KiB to 128 KiB, all split into
        // 16 KiB commands by the driver.
        let mut h = host(NQN, PORT);
        let mut rng = SmallRng::seed_from_u64(77);
        let mut model: Vec<u32> = vec![0; MODEL_BLOCKS as usize];
        let mut version = 1u32;
        for _ in 0..300 {
            let n = *[1u64, 8, 24, 64, 256].get(rng.gen_range(0..5)).unwrap();
            let lba = BASE + rng.gen_range(0..MODEL_BLOCKS - n);
            if rng.gen_bool(0.5) {
                version += 1;
                let mut data = vec![0u8; n as usize * BLOCK];
                for (i, c) in data.chunks_mut(BLOCK).enumerate() {
                    pattern(lba + i as u64, version, c);
                }
                h.write_blocks(1, lba, &data).unwrap();
                model[(lba - BASE) as usize..(lba - BASE + n) as usize].fill(version);
            } else {
                let got = h.read_blocks(1, lba, n).unwrap();
                check(
                    &got,
                    lba,
                    &model[(lba - BASE) as usize..(lba - BASE + n) as usize],
                );
            }
        }
        h.flush(1).unwrap();
        drop(h);

        // A controller reset while a host writes: writes in flight may fail, every
        // acknowledged one must be there afterwards, and I/O goes on after the reset.
        let writer = std::thread::spawn(move || {
            let mut h = host(NQN, PORT);
            let mut acked: Vec<(u64, u32)> = Vec::new();
            let mut failed = 0u32;
            let t0 = Instant::now();
            let mut i = 0u64;
            while t0.elapsed() < Duration::from_secs(8) {
                let lba = BASE + MODEL_BLOCKS + (i % 512) * 8;
                let v = 1_000_000 + i as u32;
                let mut data = vec![0u8; 8 * BLOCK];
                for (k, c) in data.chunks_mut(BLOCK).enumerate() {
                    pattern(lba + k as u64, v, c);
                }
                match h.write_blocks(1, lba, &data) {
                    Ok(()) => acked.push((lba, v)),
                    Err(_) => {
                        failed += 1;
                        // Unknown content now: forget what was acknowledged there before.
                        acked.retain(|(l, _)| *l != lba);
                    }
                }
                i += 1;
            }
            (acked, failed)
        });
        std::thread::sleep(Duration::from_secs(2));
        t.rpc("bdev_nvme_reset_controller", json!({ "name": "NV" }))
            .unwrap();
        let (acked, failed) = writer.join().unwrap();
        println!(
            "reset under load: {} writes acknowledged, {failed} failed",
            acked.len()
        );
        let log = t.log_text();
        assert!(log.contains("controller reset: I/O resumes"), "{log}");
        let mut last: std::collections::HashMap<u64, u32> = Default::default();
        for (l, v) in &acked {
            last.insert(*l, *v);
        }
        let mut h = host(NQN, PORT);
        for (l, v) in &last {
            let got = h.read_blocks(1, *l, 8).unwrap();
            check(&got, *l, &[*v; 8]);
        }
        drop(h);

        let cfg = t.rpc("save_config", json!({})).unwrap();
        let text = cfg.to_string();
        assert!(
            text.contains("\"trtype\":\"PCIe\"") && text.contains(bdf),
            "{text}"
        );
        let cfg_path = dir.join("saved.json");
        std::fs::write(&cfg_path, text).unwrap();
        t.stop();

        // A restart from the saved configuration attaches the controller again; every
        // acknowledged write is there.
        let t = Tgt::start(dir, "tgt2", Some(&cfg_path));
        let mut h = host(NQN, PORT);
        for i in (0..MODEL_BLOCKS).step_by(256) {
            let got = h.read_blocks(1, BASE + i, 256).unwrap();
            check(&got, BASE + i, &model[i as usize..i as usize + 256]);
        }
        drop(h);
        let log = t.log_text();
        assert!(log.contains("NVMe PCIe controller attached"), "{log}");
        t.stop();
    }

    fn check(got: &[u8], lba: u64, versions: &[u32]) {
        let mut want = vec![0u8; BLOCK];
        for (i, v) in versions.iter().enumerate() {
            let blk = &got[i * BLOCK..(i + 1) * BLOCK];
            if *v == 0 {
                assert!(
                    blk.iter().all(|&b| b == 0),
                    "block {} not zero",
                    lba + i as u64
                );
            } else {
                pattern(lba + i as u64, *v, &mut want);
                assert!(
                    blk == &want[..],
                    "block {} differs from version {v}",
                    lba + i as u64
                );
            }
        }
    }

    pub fn hot_removal(bdf: &str, dir: &Path) {
        let t = Tgt::start(dir, "tgt3", None);
        t.rpc(
            "bdev_nvme_attach_controller",
            json!({ "name": "NV", "trtype": "PCIe", "traddr": bdf }),
        )
        .unwrap();
        t.rpc(
            "bdev_malloc_create",
            json!({ "name": "M0", "num_blocks": 2048, "block_size": 512 }),
        )
        .unwrap();
        export(&t, NQN, "NVn1", PORT);
        export(&t, "nqn.2026-12.io.strata:other", "M0", PORT + 1);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut h = host(NQN, PORT);
                h.set_timeout(Duration::from_secs(90));
                let data = vec![0xa5u8; 16 * BLOCK];
                let mut ok = 0u64;
                let mut i = 0u64;
                // The host stays connected (it is returned): the device must be given back
                // to the kernel all the same.
                loop {
                    match h.write_blocks(1, (i * 16) % MODEL_BLOCKS, &data) {
                        Ok(()) => ok += 1,
                        Err(e) => return (ok, format!("{e}"), h),
                    }
                    i += 1;
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return (ok, "stopped without an error".to_string(), h);
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_secs(3));
        std::fs::write(share().join("remove-now"), b"").unwrap();
        let t0 = Instant::now();
        while !share().join("removal-sent").exists() {
            assert!(t0.elapsed() < Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(50));
        }
        // The guest's hotplug driver waits about 5 s (attention button) before removing.
        let t0 = Instant::now();
        loop {
            let b = t.rpc("bdev_get_bdevs", json!({})).unwrap();
            if !b.to_string().contains("NVn1") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(180),
                "the bdev stayed after device_del:\n{}",
                t.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        println!(
            "bdev removed {:.1} s after device_del",
            t0.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, err, connected) = writer.join().unwrap();
        println!("writer: {ok} writes acknowledged, then: {err}");
        assert!(
            ok > 0 && err != "stopped without an error",
            "writes kept succeeding after the device was removed"
        );
        let log = t.log_text();
        assert!(log.contains("controller removed"), "{log}");
        // The device is gone from the guest and the target still serves its other volume.
        let t0 = Instant::now();
        while Path::new(&format!("/sys/bus/pci/devices/{bdf}")).exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the device was never released"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        println!(
            "device released {:.1} s after the bdev went",
            t0.elapsed().as_secs_f64()
        );
        drop(connected);
        let mut h = host("nqn.2026-12.io.strata:other", PORT + 1);
        let data = vec![0x5au8; 8 * BLOCK];
        h.write_blocks(1, 8, &data).unwrap();
        assert_eq!(h.read_blocks(1, 8, 8).unwrap(), data);
        drop(h);
        let (_, msg) = t
            .rpc("bdev_nvme_get_controllers", json!({ "name": "NV" }))
            .unwrap_err();
        assert!(!msg.is_empty());
        t.stop();
    }
}
