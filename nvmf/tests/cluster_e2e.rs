//! The etcd cluster store: a real `etcd` (Debian's etcd-server) started by the test on a
//! loopback port, and two `strata-tgt` nodes; node A keeps its mirror's leg states there
//! (`strata-tgt --etcd`). Proves that the record survives the loss of node A's superblocks
//! and that a stale leg is not promoted: node B's leg misses writes during a link cut (the
//! record says it failed), node A's metadata area is then rolled back to a copy from when
//! both legs were in sync — so both superblocks claim "in sync" — and after the restart the
//! mirror still treats B's leg as stale, resyncs it, and both legs hold the newest data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;
use common::etcd::Etcd;
use common::writes::{pattern, BS};
use common::{free_port, rpc_call, uring_cfg as uring, LinkCut, TgtProcess};

const A: &str = "127.0.0.22";
const B: &str = "127.0.0.23";
const NQN_A: &str = "nqn.2026-12.io.strata:etcd-a";
const NQN_B: &str = "nqn.2026-12.io.strata:etcd-b";

fn file(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
    p
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
    let m = a.wait_mirror_state("M0", "in_sync", Duration::from_secs(60));
    let meta_bytes = m["data_offset_blocks"].as_u64().unwrap() * BS as u64;
    // Node A's metadata while both legs are in sync: what "losing" the newer one brings back.
    let mut old_meta = vec![0u8; meta_bytes as usize];
    std::fs::File::open(&leg_a)
        .unwrap()
        .read_exact_at(&mut old_meta, 0)
        .unwrap();
    let mut h = a.host(NQN_A);
    for lba in 0..64 {
        h.write_blocks(1, lba, &pattern(lba, 1)).unwrap();
    }
    drop(h);

    // B misses v2 of blocks 0..32: the record in etcd says its leg failed.
    let cut = LinkCut::new(A, B);
    let mut h = a.host(NQN_A);
    for lba in 0..32 {
        h.write_blocks(1, lba, &pattern(lba, 2)).unwrap();
    }
    drop(h);
    a.wait_mirror_state("M0", "degraded", Duration::from_secs(60));
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
    a.wait_mirror_state("M0", "in_sync", Duration::from_secs(60));
    assert!(
        a.log_text()
            .contains("the cluster store says this leg is out of sync"),
        "{}",
        a.log_text()
    );
    let last = a.mirror_get("M0")["last_job"].clone();
    assert!(last["kind"] == "scan" || last["kind"] == "resync", "{last}");
    check(
        &a.host(NQN_A).read_blocks(1, 0, 64).unwrap(),
        "through node A",
    );
    let off = a.mirror_get("M0")["data_offset_blocks"].as_u64().unwrap();
    a.stop();
    check(
        &b.host(NQN_B).read_blocks(1, off, 64).unwrap(),
        "node B's leg",
    );
    b.stop();
}
