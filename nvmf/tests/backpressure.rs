//! A target whose I/O buffer pools are nearly empty must slow hosts down, not fail them: 32
//! concurrent in-capsule writes against 8 buffers all complete, with the right data, and no
//! TermReq or closed connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use strata_nvmf::host::blocking::BlockingController;
use strata_nvmf::host::controller::{Controller, ControllerOptions};
use strata_nvmf::host::IoBuf;

mod common;
use common::{bin, free_port, wait_listening};

const BS: usize = 4096;
const N: u64 = 32;

fn pattern(i: u64) -> Vec<u8> {
    (0..BS).map(|j| (j as u64 * 13 + i * 101) as u8).collect()
}

#[test]
fn exhausted_buffer_pools_apply_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let (port, disc) = (free_port(), free_port());
    let log = dir.path().join("tgt.log");
    let mut child = Command::new(bin("strata-tgt"))
        .args([
            "-m",
            "0x1",
            "--interrupt-mode",
            "--iobuf-small-count",
            "4",
            "--iobuf-large-count",
            "4",
            "-r",
        ])
        .arg(dir.path().join("rpc.sock"))
        .args([
            "--nvmf-port",
            &port.to_string(),
            "--discovery-port",
            &disc.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(&mut child, Some(&log), &[addr]);
    let opts = ControllerOptions {
        io_queues: 1,
        queue_depth: N as u16 + 1,
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let nqn = "nqn.2026-11.io.strata:default";
    let mut c = Controller::connect(addr, nqn, opts.clone()).expect("connect");
    for i in 0..N {
        c.write(0, 1, i * 3, IoBuf::Heap(pattern(i)), i).unwrap();
    }
    let mut done = 0;
    let t1 = Instant::now();
    while done < N {
        c.poll()
            .expect("connection failed while buffers were short");
        while let Some(comp) = c.pop_completion(0) {
            assert!(
                comp.is_success(),
                "write {} failed: {:?}",
                comp.cookie,
                comp.status()
            );
            done += 1;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "only {done} of {N} writes completed"
        );
    }
    c.disconnect().unwrap();
    let mut b = BlockingController::connect(addr, nqn, opts).unwrap();
    for i in 0..N {
        assert!(
            b.read_blocks(1, i * 3, 1).unwrap() == pattern(i),
            "block {} has the wrong data",
            i * 3
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("TermReq"),
        "the target treated buffer exhaustion as a protocol error:\n{text}"
    );
}
