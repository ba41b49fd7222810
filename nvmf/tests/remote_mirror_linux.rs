//! The Linux kernel as the host of a mirror whose secondary is on another node: a QEMU guest
//! (`scripts/linux-host/run-guest.sh`) writes a pattern to node A's mirror — primary a local
//! raid5, secondary a raid5 on node B reached with `bdev_nvme_attach_controller` — while this
//! test cuts the link between the nodes (nftables) and restores it. The mirror must resync by
//! itself; the guest then checks the data through A and, with A stopped, reads it from node
//! B's export of the leg alone (`scripts/linux-host/remote-mirror-guest.sh` has the steps).
//!
//! The only allowed skip: `scripts/linux-host/install.sh` exits 3 ("SKIPPED: ...") when QEMU
//! cannot run here at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::time::{Duration, Instant};

mod common;
use common::linux_guest::{self, Guest};
use common::{free_port, rpc_call, LinkCut, TgtProcess};

const A: &str = "127.0.0.16";
const B: &str = "127.0.0.17";
const NQN_A: &str = "nqn.2026-12.io.strata:kmirror-a";
const NQN_B: &str = "nqn.2026-12.io.strata:kleg-b";
const BS: u64 = 4096;
/// MiB the guest writes per pass.
const MIB: u64 = 24;
const GUEST_TIMEOUT_S: u64 = 420;

fn repo() -> std::path::PathBuf {
    linux_guest::repo_dir()
}

fn rpc_ok(t: &TgtProcess, method: &str, params: Value) -> Value {
    rpc_call(&t.sock, method, &params)
        .unwrap_or_else(|e| panic!("{method} {params}: {e:?}\n{}", t.log_text()))
}

fn raid5(prefix: &str) -> Vec<Value> {
    let members: Vec<String> = (0..3).map(|i| format!("{prefix}{i}")).collect();
    let mut v: Vec<Value> = members
        .iter()
        .map(|m| json!({ "method": "bdev_malloc_create", "params": { "name": m, "num_blocks": 4096, "block_size": BS } }))
        .collect();
    v.push(
        json!({ "method": "bdev_raid_create", "params": { "name": format!("{prefix}R"),
        "raid_level": "raid5", "strip_size_kb": 64, "base_bdevs": members } }),
    );
    v
}

/// A second listener on 127.0.0.1 for the guest (QEMU user networking reaches only that).
fn guest_listener(t: &TgtProcess, nqn: &str) -> u16 {
    let port = free_port();
    rpc_ok(
        t,
        "nvmf_subsystem_add_listener",
        json!({ "nqn": nqn, "listen_address":
        { "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string() } }),
    );
    port
}

#[test]
fn linux_host_writes_to_a_mirror_with_a_remote_raid5_leg_across_a_link_cut() {
    if !linux_guest::installed() {
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let b = TgtProcess::launch_on(
        B,
        free_port(),
        dir.path(),
        "b",
        raid5("B"),
        NQN_B,
        "BR",
        &["--interrupt-mode"],
    );
    let mut acfg = raid5("A");
    acfg.extend([
        json!({ "method": "bdev_nvme_set_options", "params": { "keep_alive_timeout_ms": 2000 } }),
        json!({ "method": "bdev_nvme_attach_controller", "params": { "name": "R", "trtype": "TCP",
            "traddr": B, "trsvcid": b.port.to_string(), "subnqn": NQN_B, "hostaddr": A,
            "ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 1, "fast_io_fail_timeout_sec": 4 } }),
        json!({ "method": "bdev_mirror_create", "params": { "name": "M0", "primary": "AR", "secondary": "Rn1" } }),
    ]);
    let a = TgtProcess::launch_on(
        A,
        free_port(),
        dir.path(),
        "a",
        acfg,
        NQN_A,
        "M0",
        &["--interrupt-mode"],
    );
    let t0 = Instant::now();
    while !(a.mirror_get("M0")["state"] == "in_sync" && a.mirror_get("M0")["job"].is_null()) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "initial sync: {}",
            a.mirror_get("M0")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = a.mirror_get("M0");
    assert!(m["num_blocks"].as_u64().unwrap() >= MIB * 256, "{m}");
    let data_offset = m["data_offset_blocks"].as_u64().unwrap();
    let a_port = guest_listener(&a, NQN_A);
    let b_port = guest_listener(&b, NQN_B);

    let script = repo().join("scripts/linux-host/remote-mirror-guest.sh");
    let command = format!(
        "A_PORT={a_port} A_NQN={NQN_A} B_PORT={b_port} B_NQN={NQN_B} DATA_OFFSET={data_offset} MIB={MIB} bash {}",
        script.display()
    );
    let mut guest = Guest::start(dir.path(), &command, GUEST_TIMEOUT_S);

    guest.wait_file("writing");
    let cut = LinkCut::new(A, B);
    let t0 = Instant::now();
    while a.mirror_get("M0")["state"] != "degraded" {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not degraded: {}\n{}",
            a.mirror_get("M0"),
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("mirror degraded {:?} after the cut", t0.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    drop(cut);
    guest.signal("healed");

    guest.wait_file("written");
    let t0 = Instant::now();
    loop {
        let m = a.mirror_get("M0");
        if m["state"] == "in_sync" && m["job"].is_null() {
            eprintln!(
                "in sync {:?} after the guest's last pass; last job {}",
                t0.elapsed(),
                m["last_job"]
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no resync by itself: {m}\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    guest.signal("resynced");

    guest.wait_file("verified-a");
    a.stop();
    guest.signal("a-stopped");
    guest.finish();
    b.stop();
}
