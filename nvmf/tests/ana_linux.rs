//! The Linux kernel host with native NVMe multipath against ANA: a QEMU guest
//! (`scripts/linux-host/run-guest.sh`) connects to one subsystem through two listeners and
//! runs fio write+verify rounds on the multipath device while the test makes one path
//! inaccessible, then the other, then both optimized again; no I/O error reaches fio, and
//! the kernel reports the states it was told (`scripts/linux-host/ana-guest.sh` has the
//! guest's steps).
//!
//! The only allowed skip: `scripts/linux-host/install.sh` exits 3 ("SKIPPED: ...") when QEMU
//! cannot run here at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::time::{Duration, Instant};

mod common;
use common::linux_guest::{self, Guest};
use common::{free_port, rpc_call, TgtProcess};

const NQN: &str = "nqn.2026-12.io.strata:kana";
const PLAIN: &str = "nqn.2026-12.io.strata:kana-plain";
const GUEST_TIMEOUT_S: u64 = 900;

fn rpc_ok(t: &TgtProcess, method: &str, params: Value) -> Value {
    rpc_call(&t.sock, method, &params)
        .unwrap_or_else(|e| panic!("{method} {params}: {e:?}\n{}", t.log_text()))
}

fn set_state(t: &TgtProcess, port: u16, state: &str) {
    rpc_ok(
        t,
        "nvmf_subsystem_listener_set_ana_state",
        json!({ "nqn": NQN, "ana_state": state, "listen_address":
            { "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string() } }),
    );
    eprintln!("port {port}: {state}");
}

/// The last fio round the guest finished cleanly.
fn rounds(g: &Guest) -> u32 {
    (1..)
        .take_while(|n| g.share.join(format!("round-{n}")).exists())
        .last()
        .unwrap_or(0)
}

/// Waits until the guest has finished `n` more clean rounds.
fn wait_rounds(g: &mut Guest, n: u32) {
    let want = rounds(g) + n;
    let t0 = Instant::now();
    while rounds(g) < want {
        g.wait_file(&format!("round-{}", rounds(g) + 1));
        assert!(t0.elapsed() < Duration::from_secs(600), "{}", g.log());
    }
}

#[test]
fn linux_multipath_host_keeps_verified_io_while_paths_turn_inaccessible() {
    if !linux_guest::installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t = TgtProcess::launch(
        dir.path(),
        "kana",
        vec![json!({ "method": "bdev_malloc_create", "params":
            { "name": "M0", "num_blocks": 256, "block_size": 4096 } })],
        PLAIN,
        "M0",
        &["--interrupt-mode"],
    );
    let (p1, p2) = (free_port(), free_port());
    rpc_ok(
        &t,
        "bdev_malloc_create",
        json!({ "name": "M1", "num_blocks": 8192, "block_size": 4096 }),
    );
    rpc_ok(
        &t,
        "nvmf_create_subsystem",
        json!({ "nqn": NQN, "allow_any_host": true, "ana_reporting": true }),
    );
    rpc_ok(
        &t,
        "nvmf_subsystem_add_ns",
        json!({ "nqn": NQN, "namespace": { "bdev_name": "M1", "nsid": 1 } }),
    );
    for p in [p1, p2] {
        rpc_ok(
            &t,
            "nvmf_subsystem_add_listener",
            json!({ "nqn": NQN, "listen_address":
                { "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": p.to_string() } }),
        );
    }
    let script = linux_guest::repo_dir().join("scripts/linux-host/ana-guest.sh");
    let command = format!("PORT1={p1} PORT2={p2} NQN={NQN} bash {}", script.display());
    let mut guest = Guest::start(dir.path(), &command, GUEST_TIMEOUT_S);
    guest.wait_file("connected");
    let ctrls = rpc_ok(&t, "nvmf_subsystem_get_controllers", json!({ "nqn": NQN }));
    assert_eq!(ctrls.as_array().unwrap().len(), 2, "{ctrls}");

    wait_rounds(&mut guest, 1);
    set_state(&t, p1, "inaccessible");
    wait_rounds(&mut guest, 2);
    set_state(&t, p1, "optimized");
    set_state(&t, p2, "inaccessible");
    wait_rounds(&mut guest, 2);
    set_state(&t, p2, "optimized");
    wait_rounds(&mut guest, 1);
    guest.signal("done");
    let log = guest.log();
    guest.finish();
    assert!(
        log.contains("=inaccessible"),
        "the kernel never reported a path inaccessible:\n{log}"
    );
    t.stop();
}
