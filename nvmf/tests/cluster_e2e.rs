//! The etcd cluster store: a real `etcd` (Debian's etcd-server) started by the test on a
//! loopback port, and two `strata-tgt` nodes; node A keeps its mirror's leg states there
//! (`strata-tgt --etcd`). Proves that the record survives the loss of node A's superblocks
//! and that a stale leg is not promoted: node B's leg misses writes during a link cut (the
//! record says it failed), node A's metadata area is then rolled back to a copy from when
//! both legs were in sync — so both superblocks claim "in sync" — and after the restart the
//! mirror still treats B's leg as stale, resyncs it, and both legs hold the newest data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::writes::{pattern, BS};
use common::{free_port, LinkCut, TgtProcess};

const A: &str = "127.0.0.22";
const B: &str = "127.0.0.23";
const NQN_A: &str = "nqn.2026-12.io.strata:etcd-a";
const NQN_B: &str = "nqn.2026-12.io.strata:etcd-b";

/// A throw-away etcd on 127.0.0.1, killed on drop.
struct Etcd {
    child: Child,
    url: String,
}

impl Etcd {
    fn start(dir: &Path) -> Etcd {
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "strata-test", "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("strata-test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd (scripts/setup.sh installs etcd-server)");
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(20), "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Etcd { child, url }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rpc_call(sock: &Path, method: &str, params: &Value) -> Result<Value, (i64, String)> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let req = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    s.write_all(req.to_string().as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let resp: Value = loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "no response to {method}");
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
            break v;
        }
    };
    match resp.get("error") {
        Some(e) => Err((
            e["code"].as_i64().unwrap(),
            e["message"].as_str().unwrap_or("").into(),
        )),
        None => Ok(resp["result"].clone()),
    }
}

fn mirror(a: &TgtProcess) -> Value {
    rpc_call(&a.sock, "bdev_mirror_get", &json!({ "name": "M0" }))
        .unwrap_or_else(|e| panic!("{e:?}\n{}", a.log_text()))[0]
        .clone()
}

fn wait_state(a: &TgtProcess, want: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let m = mirror(a);
        if m["state"] == want && m["job"].is_null() {
            return m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not {want}: {m}\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn uring(name: &str, file: &Path) -> Value {
    json!({ "method": "bdev_uring_create", "params": { "name": name, "filename": file, "block_size": BS } })
}

fn file(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
    p
}

fn host(t: &TgtProcess, nqn: &str) -> strata_nvmf::host::blocking::BlockingController {
    let opts = strata_nvmf::host::controller::ControllerOptions {
        io_queues: 1,
        queue_depth: 8,
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let mut h =
        strata_nvmf::host::blocking::BlockingController::connect(t.addr(), nqn, opts).unwrap();
    h.set_timeout(Duration::from_secs(60));
    h
}

fn check(img: &[u8], what: &str) {
    for (i, b) in img.chunks(BS).enumerate() {
        let v = if i < 32 { 2 } else { 1 };
        assert!(
            b == pattern(i as u64, v).as_slice(),
            "{what}: block {i} is not version {v}"
        );
    }
}

#[test]
fn leg_states_in_etcd_survive_lost_superblocks_and_a_stale_leg_is_not_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let (leg_a, leg_b) = (file(dir.path(), "leg-a"), file(dir.path(), "leg-b"));
    let (a_port, b_port) = (free_port(), free_port());
    let bcfg = vec![
        json!({ "method": "bdev_set_options", "params": { "bdev_auto_examine": false } }),
        uring("BF", &leg_b),
    ];
    let b = TgtProcess::launch_on(
        B,
        b_port,
        dir.path(),
        "b",
        bcfg,
        NQN_B,
        "BF",
        &["--interrupt-mode"],
    );
    let a_cfg = |create: bool| {
        let mut v = vec![
            uring("AF", &leg_a),
            json!({ "method": "bdev_nvme_set_options", "params": { "keep_alive_timeout_ms": 2000 } }),
            json!({ "method": "bdev_nvme_attach_controller", "params": { "name": "R", "trtype": "TCP",
                "traddr": B, "trsvcid": b_port.to_string(), "subnqn": NQN_B, "hostaddr": A,
                "ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 1, "fast_io_fail_timeout_sec": 4 } }),
        ];
        if create {
            v.push(json!({ "method": "bdev_mirror_create", "params": { "name": "M0", "primary": "AF", "secondary": "Rn1" } }));
        }
        v
    };
    let extra = ["--interrupt-mode", "--etcd", etcd.url.as_str()];
    let a = TgtProcess::launch_on(
        A,
        a_port,
        dir.path(),
        "a1",
        a_cfg(true),
        NQN_A,
        "M0",
        &extra,
    );
    let m = wait_state(&a, "in_sync");
    let meta_bytes = m["data_offset_blocks"].as_u64().unwrap() * BS as u64;
    // Node A's metadata while both legs are in sync: what "losing" the newer one brings back.
    let mut old_meta = vec![0u8; meta_bytes as usize];
    std::fs::File::open(&leg_a)
        .unwrap()
        .read_exact_at(&mut old_meta, 0)
        .unwrap();
    let mut h = host(&a, NQN_A);
    for lba in 0..64 {
        h.write_blocks(1, lba, &pattern(lba, 1)).unwrap();
    }
    drop(h);

    // B misses v2 of blocks 0..32: the record in etcd says its leg failed.
    let cut = LinkCut::new(A, B);
    let mut h = host(&a, NQN_A);
    for lba in 0..32 {
        h.write_blocks(1, lba, &pattern(lba, 2)).unwrap();
    }
    drop(h);
    wait_state(&a, "degraded");
    let store = rpc_call(&a.sock, "framework_get_cluster_store", &json!({})).unwrap();
    assert_eq!(store["endpoint"], etcd.url.as_str(), "{store}");
    let rec = &store["records"][0]["value"];
    let rn1 = rec["legs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "Rn1")
        .unwrap();
    assert_eq!(rn1["state"], "failed", "{store}");
    a.stop();
    drop(cut);

    // Node A's superblocks are lost: rolled back to the in-sync copy.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&leg_a)
        .unwrap()
        .write_all_at(&old_meta, 0)
        .unwrap();
    let a = TgtProcess::launch_on(
        A,
        a_port,
        dir.path(),
        "a2",
        a_cfg(false),
        NQN_A,
        "M0",
        &extra,
    );
    wait_state(&a, "in_sync");
    assert!(
        a.log_text()
            .contains("the cluster store says this leg is out of sync"),
        "{}",
        a.log_text()
    );
    let last = mirror(&a)["last_job"].clone();
    assert!(last["kind"] == "scan" || last["kind"] == "resync", "{last}");
    check(
        &host(&a, NQN_A).read_blocks(1, 0, 64).unwrap(),
        "through node A",
    );
    let off = mirror(&a)["data_offset_blocks"].as_u64().unwrap();
    a.stop();
    check(
        &host(&b, NQN_B).read_blocks(1, off, 64).unwrap(),
        "node B's leg",
    );
    b.stop();
}
