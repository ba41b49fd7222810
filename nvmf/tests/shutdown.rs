//! SIGTERM while hosts have I/O in flight: the target drains it and exits 0, and every write
//! it acknowledged is in the backing file afterwards. Real process, real NVMe/TCP (through
//! strata's host library), a real file behind an io_uring bdev under a delay bdev (so writes
//! are in flight when the signal lands).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_nvmf::host::blocking::BlockingController;
use strata_nvmf::host::controller::ControllerOptions;

mod common;
use common::{bin, free_port, signal, wait_listening};

const BS: usize = 4096;

fn pattern(i: u64) -> Vec<u8> {
    (0..BS)
        .map(|j| (i as usize * 31 + j * 7) as u8 ^ (i >> 8) as u8)
        .collect()
}

#[test]
fn sigterm_with_io_in_flight_exits_cleanly_and_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let port = free_port();
    let nqn = "nqn.2026-11.io.strata:shutdown";
    let cfg = serde_json::json!({ "subsystems": [
        { "subsystem": "bdev", "config": [
            { "method": "bdev_uring_create", "params": { "name": "Disk", "filename": img.to_str().unwrap(), "block_size": BS } },
            { "method": "bdev_delay_create", "params": { "name": "Slow", "base_bdev_name": "Disk",
                "avg_read_latency": 0, "p99_read_latency": 0, "avg_write_latency": 20000, "p99_write_latency": 20000 } }
        ]},
        { "subsystem": "nvmf", "config": [
            { "method": "nvmf_create_transport", "params": { "trtype": "TCP" } },
            { "method": "nvmf_create_subsystem", "params": { "nqn": nqn, "allow_any_host": true } },
            { "method": "nvmf_subsystem_add_ns", "params": { "nqn": nqn, "namespace": { "bdev_name": "Slow", "nsid": 1 } } },
            { "method": "nvmf_subsystem_add_listener", "params": { "nqn": nqn, "listen_address":
                { "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string() } } }
        ]}
    ]});
    let cfg_path = dir.path().join("cfg.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let log = dir.path().join("tgt.log");
    let mut child = Command::new(bin("strata-tgt"))
        .args(["-m", "0x1", "--interrupt-mode", "-r"])
        .arg(dir.path().join("rpc.sock"))
        .arg("--json")
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(&mut child, Some(&log), &[addr]);

    // Several writers, each acknowledging blocks it wrote.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let stop = stop.clone();
        writers.push(std::thread::spawn(move || {
            let opts = ControllerOptions {
                io_queues: 1,
                queue_depth: 8,
                timeout: Duration::from_secs(10),
                ..Default::default()
            };
            let mut c = BlockingController::connect(addr, nqn, opts).expect("connect");
            let mut acked = Vec::new();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) && i < 4096 {
                match c.write_blocks(1, i, &pattern(i)) {
                    Ok(()) => acked.push(i),
                    Err(_) => break,
                }
                i += 4;
            }
            acked
        }));
    }
    std::thread::sleep(Duration::from_millis(400));
    signal(&child, libc::SIGTERM);
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(15),
            "target did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<u64> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "exit status {status:?}\n{text}");
    assert!(text.contains("shutting down"), "{text}");
    assert!(
        !text.contains("still in flight"),
        "I/O was not drained:\n{text}"
    );
    assert!(
        acked.len() >= 8,
        "too few writes acknowledged before SIGTERM: {}",
        acked.len()
    );
    let mut disk = Vec::new();
    std::fs::File::open(&img)
        .unwrap()
        .read_to_end(&mut disk)
        .unwrap();
    for i in &acked {
        let at = *i as usize * BS;
        assert!(
            disk[at..at + BS] == pattern(*i)[..],
            "acknowledged write of block {i} is not on disk"
        );
    }
}
