//! Remote bdevs between real `strata-tgt` processes, each on its own loopback address (node A
//! on 127.0.0.2 attaches node B's namespace on 127.0.0.3 with `bdev_nvme_attach_controller`
//! and exports it again; the test host talks to A only). Proves that:
//! - random read / write / write_zeroes / unmap / flush / XOR write / checksum (CRC32C and
//!   SHA-256) through the remote bdev match a model, with digests on and off;
//! - during a short silent link cut (nftables drop between A and B) I/O is held and completes
//!   correctly after the reconnect; during a long one, I/O fails with a path error once
//!   `fast_io_fail_timeout_sec` has passed, never with wrong data, and after the link comes
//!   back the controller reconnects by itself and every block reads as the model says;
//! - bad attach parameters are refused with -32602 and an unreachable target with an error,
//!   and `save_config` writes the controller back as an attach call.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sha2::Digest;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use strata_nvmf::host::blocking::BlockingController;
use strata_nvmf::host::{cmd, DataDir, HostError, IoBuf};
use strata_nvmf::spec::cmd::io as op;

mod common;
use common::{free_port, rpc_call, LinkCut, TgtProcess};

const BS: usize = 4096;
/// Each test has its own pair of loopback addresses (A, B): a link cut drops everything
/// between two addresses, and the tests of this file run in parallel.
#[derive(Clone, Copy)]
struct Pair {
    a: &'static str,
    b: &'static str,
}
const PAIR_PLAIN: Pair = Pair {
    a: "127.0.0.2",
    b: "127.0.0.3",
};
const PAIR_DIGESTS: Pair = Pair {
    a: "127.0.0.4",
    b: "127.0.0.5",
};
const PAIR_RPC: Pair = Pair {
    a: "127.0.0.6",
    b: "127.0.0.7",
};
const NQN_A: &str = "nqn.2026-12.io.strata:node-a";
const NQN_B: &str = "nqn.2026-12.io.strata:node-b";
/// Blocks of node B's malloc namespace.
const VOLUME_BLOCKS: u64 = 2048;
/// Largest I/O of the random sequence, in blocks.
const MAX_IO_BLOCKS: u64 = 16;
const KATO_MS: u64 = 2000;
const FAST_FAIL_S: u64 = 4;

/// Node B: a malloc namespace exported on 127.0.0.3.
fn start_b(dir: &Path, p: Pair) -> TgtProcess {
    let bdevs = vec![json!({ "method": "bdev_malloc_create",
        "params": { "name": "M0", "num_blocks": VOLUME_BLOCKS, "block_size": BS } })];
    TgtProcess::launch_on(
        p.b,
        free_port(),
        dir,
        "b",
        bdevs,
        NQN_B,
        "M0",
        &["--interrupt-mode"],
    )
}

fn attach_params(p: Pair, b: &TgtProcess, digests: bool) -> Value {
    json!({ "name": "R", "trtype": "TCP", "adrfam": "IPv4", "traddr": p.b,
        "trsvcid": b.port.to_string(), "subnqn": NQN_B, "hostaddr": p.a,
        "hdgst": digests, "ddgst": digests, "ctrlr_loss_timeout_sec": -1,
        "reconnect_delay_sec": 1, "fast_io_fail_timeout_sec": FAST_FAIL_S })
}

/// Node A: attaches B's namespace as `Rn1` and exports it on 127.0.0.2.
fn start_a(dir: &Path, p: Pair, b: &TgtProcess, digests: bool) -> TgtProcess {
    let bdevs = vec![
        json!({ "method": "bdev_nvme_set_options", "params": { "keep_alive_timeout_ms": KATO_MS } }),
        json!({ "method": "bdev_nvme_attach_controller", "params": attach_params(p, b, digests) }),
    ];
    TgtProcess::launch_on(
        p.a,
        free_port(),
        dir,
        "a",
        bdevs,
        NQN_A,
        "Rn1",
        &["--interrupt-mode"],
    )
}

fn controller_state(a: &TgtProcess) -> String {
    let v = rpc_call(
        &a.sock,
        "bdev_nvme_get_controllers",
        &json!({ "name": "R" }),
    )
    .unwrap();
    v[0]["ctrlrs"][0]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn wait_enabled(a: &TgtProcess, within: Duration) {
    let t0 = Instant::now();
    while controller_state(a) != "enabled" {
        assert!(
            t0.elapsed() < within,
            "controller did not reconnect:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What each block may hold: one value, or (after an I/O that failed with a path error and
/// may or may not have reached node B) any of several.
struct Model {
    blocks: Vec<Vec<u8>>,
    maybe: HashMap<u64, Vec<Vec<u8>>>,
}

impl Model {
    fn new() -> Model {
        Model {
            blocks: vec![vec![0; BS]; VOLUME_BLOCKS as usize],
            maybe: HashMap::new(),
        }
    }
    fn set(&mut self, lba: u64, data: &[u8]) {
        for (i, b) in data.chunks(BS).enumerate() {
            let l = lba + i as u64;
            self.blocks[l as usize] = b.to_vec();
            self.maybe.remove(&l);
        }
    }
    /// The write of `data` at `lba` failed: each block holds the old or the new bytes.
    fn uncertain(&mut self, lba: u64, data: &[u8]) {
        for (i, b) in data.chunks(BS).enumerate() {
            let l = lba + i as u64;
            let alts = self.maybe.entry(l).or_default();
            alts.push(b.to_vec());
        }
    }
    fn certain(&self, lba: u64, n: u64) -> bool {
        (lba..lba + n).all(|l| !self.maybe.contains_key(&l))
    }
    /// Checks a read; an uncertain block that reads as one of its candidates is settled.
    fn check(&mut self, lba: u64, got: &[u8], what: &str) {
        for (i, b) in got.chunks(BS).enumerate() {
            let l = lba + i as u64;
            if self.blocks[l as usize] == b {
                self.maybe.remove(&l);
                continue;
            }
            let ok = self
                .maybe
                .get(&l)
                .is_some_and(|alts| alts.iter().any(|a| a == b));
            assert!(ok, "{what}: block {l} holds data the model does not allow");
            self.blocks[l as usize] = b.to_vec();
            self.maybe.remove(&l);
        }
    }
    fn range(&self, lba: u64, n: u64) -> Vec<u8> {
        (lba..lba + n)
            .flat_map(|l| self.blocks[l as usize].clone())
            .collect()
    }
}

fn is_path_error(e: &HostError) -> bool {
    matches!(e, HostError::Status { sct: 3, sc: 0x70 })
}

/// One random operation against node A's export of the remote bdev, checked against the
/// model. Returns Err(()) when it failed with a path error (allowed only if `cut`).
fn random_op(
    h: &mut BlockingController,
    m: &mut Model,
    rng: &mut SmallRng,
    cut: bool,
) -> Result<(), ()> {
    let n = rng.gen_range(1..=MAX_IO_BLOCKS);
    let lba = rng.gen_range(0..=VOLUME_BLOCKS - n);
    let fail = |e: HostError, what: &str| -> Result<(), ()> {
        assert!(cut && is_path_error(&e), "{what} at {lba}+{n} failed: {e}");
        Err(())
    };
    match rng.gen_range(0..100) {
        0..=29 => {
            let data: Vec<u8> = (0..n as usize * BS).map(|_| rng.gen()).collect();
            match h.write_blocks(1, lba, &data) {
                Ok(()) => m.set(lba, &data),
                Err(e) => {
                    m.uncertain(lba, &data);
                    return fail(e, "write");
                }
            }
        }
        30..=59 => match h.read_blocks(1, lba, n) {
            Ok(got) => m.check(lba, &got, "read"),
            Err(e) => return fail(e, "read"),
        },
        60..=66 => match h.write_zeroes(1, lba, n) {
            Ok(()) => m.set(lba, &vec![0; n as usize * BS]),
            Err(e) => {
                m.uncertain(lba, &vec![0; n as usize * BS]);
                return fail(e, "write_zeroes");
            }
        },
        67..=72 => match h.deallocate(1, &[(lba, n as u32)]) {
            // Malloc namespaces read zeroes after a deallocate.
            Ok(()) => m.set(lba, &vec![0; n as usize * BS]),
            Err(e) => {
                m.uncertain(lba, &vec![0; n as usize * BS]);
                return fail(e, "deallocate");
            }
        },
        73..=75 => {
            if let Err(e) = h.flush(1) {
                return fail(e, "flush");
            }
        }
        76..=85 => {
            // Only on certain blocks: an XOR of an uncertain block multiplies the candidates.
            if !m.certain(lba, n) {
                return Ok(());
            }
            let x: Vec<u8> = (0..n as usize * BS).map(|_| rng.gen()).collect();
            let new: Vec<u8> = m.range(lba, n).iter().zip(&x).map(|(a, b)| a ^ b).collect();
            match h.xor_blocks(1, lba, &x) {
                Ok(()) => m.set(lba, &new),
                Err(e) => {
                    m.uncertain(lba, &new);
                    return fail(e, "xor_write");
                }
            }
        }
        86..=92 => {
            let chunk = rng.gen_range(1..=4u32);
            match h.checksum(1, lba, n as u32, chunk) {
                Ok(sums) => {
                    if m.certain(lba, n) {
                        let want: Vec<u32> = m
                            .range(lba, n)
                            .chunks(chunk as usize * BS)
                            .map(crc32c::crc32c)
                            .collect();
                        assert_eq!(sums, want, "crc32c checksums at {lba}+{n} chunk {chunk}");
                    }
                }
                Err(e) => return fail(e, "checksum"),
            }
        }
        _ => {
            let sqe = cmd::checksum_with(1, lba, n as u32, 1, op::CHECKSUM_SHA256);
            let data = DataDir::FromController(IoBuf::Heap(vec![0; 32 * n as usize]));
            match h.io(sqe, data) {
                Ok(c) => {
                    if m.certain(lba, n) {
                        let got = c.data.map(IoBuf::into_vec).unwrap_or_default();
                        let want: Vec<u8> = m
                            .range(lba, n)
                            .chunks(BS)
                            .flat_map(|b| sha2::Sha256::digest(b).to_vec())
                            .collect();
                        assert_eq!(got, want, "sha256 checksums at {lba}+{n}");
                    }
                }
                Err(e) => return fail(e, "sha256 checksum"),
            }
        }
    }
    Ok(())
}

fn verify_all(h: &mut BlockingController, m: &mut Model, what: &str) {
    let mut lba = 0;
    while lba < VOLUME_BLOCKS {
        let n = 32.min(VOLUME_BLOCKS - lba);
        let got = h
            .read_blocks(1, lba, n)
            .unwrap_or_else(|e| panic!("{what}: read {lba}: {e}"));
        m.check(lba, &got, what);
        lba += n;
    }
}

fn model_checked_io_across_link_cuts(p: Pair, digests: bool, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let b = start_b(dir.path(), p);
    let a = start_a(dir.path(), p, &b, digests);
    let mut h = a.host(NQN_A);
    let mut m = Model::new();
    let mut rng = SmallRng::seed_from_u64(seed);

    for _ in 0..400 {
        random_op(&mut h, &mut m, &mut rng, false).unwrap();
    }

    // A short cut (shorter than fast_io_fail): I/O waits and then completes correctly.
    let data: Vec<u8> = (0..8 * BS).map(|_| rng.gen()).collect();
    let cut = LinkCut::new(p.a, p.b);
    let healer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2500));
        cut.heal();
    });
    let t0 = Instant::now();
    h.write_blocks(1, 100, &data)
        .expect("a write during a short cut completes after it");
    m.set(100, &data);
    let got = h.read_blocks(1, 100, 8).expect("read after the short cut");
    m.check(100, &got, "after the short cut");
    healer.join().unwrap();
    eprintln!("short cut: write completed after {:?}", t0.elapsed());
    wait_enabled(&a, Duration::from_secs(30));
    for _ in 0..100 {
        random_op(&mut h, &mut m, &mut rng, false).unwrap();
    }

    // A long cut: past fast_io_fail_timeout_sec I/O fails with a path error.
    let cut = LinkCut::new(p.a, p.b);
    let t0 = Instant::now();
    let mut failed = 0;
    let mut ops = 0;
    while failed < 5 || t0.elapsed() < Duration::from_secs(FAST_FAIL_S + KATO_MS / 1000 + 1) {
        ops += 1;
        if random_op(&mut h, &mut m, &mut rng, true).is_err() {
            if failed == 0 {
                eprintln!("long cut: first path error after {:?}", t0.elapsed());
            }
            failed += 1;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "I/O did not fail during a long cut"
        );
    }
    eprintln!("long cut: {failed} of {ops} operations failed with a path error");
    let state = controller_state(&a);
    assert_ne!(state, "enabled", "controller still enabled during the cut");
    drop(cut);
    wait_enabled(&a, Duration::from_secs(30));
    verify_all(&mut h, &mut m, "after the long cut");
    for _ in 0..200 {
        random_op(&mut h, &mut m, &mut rng, false).unwrap();
    }
    verify_all(&mut h, &mut m, "at the end");
    let info = rpc_call(&a.sock, "bdev_nvme_get_controllers", &json!({})).unwrap();
    assert!(
        info[0]["ctrlrs"][0]["strata"]["reconnects"]
            .as_u64()
            .unwrap()
            >= 2,
        "{info}"
    );
    drop(h);
    a.stop();
    b.stop();
}

#[test]
fn remote_bdev_model_checked_io_across_link_cuts_without_digests() {
    model_checked_io_across_link_cuts(PAIR_PLAIN, false, 11);
}

#[test]
fn remote_bdev_model_checked_io_across_link_cuts_with_digests() {
    model_checked_io_across_link_cuts(PAIR_DIGESTS, true, 12);
}

#[test]
fn attach_errors_and_save_config() {
    let p = PAIR_RPC;
    let dir = tempfile::tempdir().unwrap();
    let b = start_b(dir.path(), p);
    let a = start_a(dir.path(), p, &b, false);
    let sock = &a.sock;
    let base = attach_params(p, &b, false);
    let with = |k: &str, v: Value| {
        let mut p = base.clone();
        p["name"] = json!("R2");
        p[k] = v;
        p
    };
    // Parameter errors name the parameter (-32602).
    for (k, v, needle) in [
        ("trtype", json!("RDMA"), "trtype"),
        (
            "ctrlr_loss_timeout_sec",
            json!(-2),
            "ctrlr_loss_timeout_sec",
        ),
        ("reconnect_delay_sec", json!(0), "reconnect_delay_sec"),
        ("reconnect_delay_sec", json!(100), "reconnect_delay_sec"),
        ("trsvcid", json!("port"), "trsvcid"),
        ("hostaddr", json!("not-an-ip"), "hostaddr"),
        ("adrfam", json!("IPX"), "adrfam"),
    ] {
        let (code, msg) = rpc_call(sock, "bdev_nvme_attach_controller", &with(k, v)).unwrap_err();
        assert_eq!(code, -32602, "{k}: {msg}");
        assert!(msg.contains(needle), "{k}: {msg}");
    }
    // Same name, same path: exists.
    let (code, msg) = rpc_call(sock, "bdev_nvme_attach_controller", &base).unwrap_err();
    assert_eq!(code, -17, "{msg}");
    // Nothing listens there: a connect error, quickly, and nothing registered.
    let mut q = with("trsvcid", json!(free_port().to_string()));
    q["ctrlr_loss_timeout_sec"] = json!(0);
    q["reconnect_delay_sec"] = json!(0);
    q["fast_io_fail_timeout_sec"] = json!(0);
    let (code, msg) = rpc_call(sock, "bdev_nvme_attach_controller", &q).unwrap_err();
    assert_eq!(code, -6, "{msg}");
    // Unknown controller.
    let (code, _) = rpc_call(
        sock,
        "bdev_nvme_detach_controller",
        &json!({ "name": "nope" }),
    )
    .unwrap_err();
    assert_eq!(code, -19);
    // Options only before the first attach.
    let (code, msg) = rpc_call(
        sock,
        "bdev_nvme_set_options",
        &json!({ "timeout_us": 1000 }),
    )
    .unwrap_err();
    assert_eq!(code, -1, "{msg}");
    // save_config: options, then the attach that recreates Rn1, before the subsystem uses it.
    let cfg = rpc_call(sock, "save_config", &json!({})).unwrap();
    let bdev = cfg["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "bdev")
        .unwrap()["config"]
        .clone();
    let attach = bdev
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["method"] == "bdev_nvme_attach_controller")
        .unwrap_or_else(|| panic!("no attach in {bdev}"));
    assert_eq!(attach["params"]["traddr"], p.b);
    assert_eq!(attach["params"]["hostaddr"], p.a);
    assert_eq!(attach["params"]["fast_io_fail_timeout_sec"], FAST_FAIL_S);
    assert!(bdev
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["method"] == "bdev_nvme_set_options"));
    // Reset: reconnects and the namespace keeps working.
    rpc_call(sock, "bdev_nvme_reset_controller", &json!({ "name": "R" })).unwrap();
    let mut h = a.host(NQN_A);
    h.write_blocks(1, 0, &vec![7u8; BS]).unwrap();
    assert_eq!(h.read_blocks(1, 0, 1).unwrap(), vec![7u8; BS]);
    drop(h);
    // Detach: the bdev goes away.
    rpc_call(sock, "bdev_nvme_detach_controller", &json!({ "name": "R" })).unwrap();
    let bdevs = rpc_call(sock, "bdev_get_bdevs", &json!({})).unwrap();
    assert!(!bdevs.to_string().contains("Rn1"), "{bdevs}");
    let ctrls = rpc_call(sock, "bdev_nvme_get_controllers", &json!({})).unwrap();
    assert_eq!(ctrls, json!([]));
    a.stop();
    b.stop();
}

const PAIR_NS: Pair = Pair {
    a: "127.0.0.14",
    b: "127.0.0.15",
};

fn bdev_names(t: &TgtProcess) -> Vec<String> {
    let v = rpc_call(&t.sock, "bdev_get_bdevs", &json!({})).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

fn wait_bdevs(a: &TgtProcess, what: &str, cond: impl Fn(&[String]) -> bool) {
    let t0 = Instant::now();
    loop {
        let names = bdev_names(a);
        if cond(&names) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{what}: bdevs {names:?}\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A namespace added on the remote subsystem appears as a bdev, one removed is hot-removed
/// (Asynchronous Event Request + Changed Namespace List, no reconnect needed).
#[test]
fn namespace_changes_on_the_remote_reach_the_bdevs() {
    let p = PAIR_NS;
    let dir = tempfile::tempdir().unwrap();
    let b = start_b(dir.path(), p);
    let a = start_a(dir.path(), p, &b, false);
    rpc_call(
        &b.sock,
        "bdev_malloc_create",
        &json!({ "name": "M1", "num_blocks": 1024, "block_size": BS }),
    )
    .unwrap();
    rpc_call(
        &b.sock,
        "nvmf_subsystem_add_ns",
        &json!({ "nqn": NQN_B, "namespace": { "bdev_name": "M1", "nsid": 2 } }),
    )
    .unwrap();
    wait_bdevs(&a, "new namespace", |n| n.iter().any(|x| x == "Rn2"));
    let rn2 = rpc_call(&a.sock, "bdev_get_bdevs", &json!({ "name": "Rn2" })).unwrap();
    assert_eq!(rn2[0]["num_blocks"], 1024, "{rn2}");
    rpc_call(
        &b.sock,
        "nvmf_subsystem_remove_ns",
        &json!({ "nqn": NQN_B, "nsid": 2 }),
    )
    .unwrap();
    wait_bdevs(&a, "removed namespace", |n| !n.iter().any(|x| x == "Rn2"));
    // The first namespace is untouched and still works.
    let mut h = a.host(NQN_A);
    h.write_blocks(1, 5, &vec![9u8; BS]).unwrap();
    assert_eq!(h.read_blocks(1, 5, 1).unwrap(), vec![9u8; BS]);
    let info = rpc_call(&a.sock, "bdev_nvme_get_controllers", &json!({})).unwrap();
    assert_eq!(info[0]["ctrlrs"][0]["strata"]["reconnects"], 0, "{info}");
    drop(h);
    a.stop();
    b.stop();
}

const PAIR_RESTART: Pair = Pair {
    a: "127.0.0.20",
    b: "127.0.0.21",
};

fn bdev_uuid(t: &TgtProcess, name: &str) -> Option<String> {
    let v = rpc_call(&t.sock, "bdev_get_bdevs", &json!({ "name": name })).ok()?;
    v[0]["uuid"].as_str().map(str::to_string)
}

/// Node B comes back with another device under the same NQN and NSID (a new malloc): after
/// the reconnect the old bdev is hot-removed and a new one (another UUID) takes its place;
/// nothing written for the old device reaches the new one. Then, with SPDK's default timers
/// (ctrlr_loss_timeout_sec 0), a lost node B leaves the controller failed with its bdev,
/// I/O failing, until bdev_nvme_reset_controller brings it back.
#[test]
fn a_replaced_remote_device_is_not_taken_for_the_old_one_and_a_failed_controller_waits_for_reset() {
    let p = PAIR_RESTART;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let start_b = |tag: &str| {
        let bdevs = vec![json!({ "method": "bdev_malloc_create",
            "params": { "name": "M0", "num_blocks": VOLUME_BLOCKS, "block_size": BS } })];
        TgtProcess::launch_on(
            p.b,
            port,
            dir.path(),
            tag,
            bdevs,
            NQN_B,
            "M0",
            &["--interrupt-mode"],
        )
    };
    let b = start_b("b1");
    let a = start_a(dir.path(), p, &b, false);
    let mut h = a.host(NQN_A);
    h.write_blocks(1, 0, &vec![5u8; BS]).unwrap();
    drop(h);
    let old = bdev_uuid(&a, "Rn1").unwrap();
    b.kill9();
    let b = start_b("b2");
    let t0 = Instant::now();
    loop {
        if bdev_uuid(&a, "Rn1").is_some_and(|u| u != old) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "Rn1 not replaced\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        a.log_text().contains("replaced by another device"),
        "{}",
        a.log_text()
    );
    // The new device reads zeroes: the old one's data did not follow the name.
    let got = b.host(NQN_B).read_blocks(1, 0, 1).unwrap();
    assert_eq!(got, vec![0u8; BS]);
    rpc_call(
        &a.sock,
        "bdev_nvme_detach_controller",
        &json!({ "name": "R" }),
    )
    .unwrap();

    // Default timers: one attempt, then failed (bdev kept, I/O fails), reset recovers.
    let mut params = attach_params(p, &b, false);
    params["ctrlr_loss_timeout_sec"] = json!(0);
    params["reconnect_delay_sec"] = json!(0);
    params["fast_io_fail_timeout_sec"] = json!(0);
    rpc_call(&a.sock, "bdev_nvme_attach_controller", &params).unwrap();
    b.kill9();
    let t0 = Instant::now();
    while controller_state(&a) != "failed" {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not failed: {}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(bdev_uuid(&a, "Rn1").is_some(), "the bdev was removed");
    let (code, _) = rpc_call(
        &a.sock,
        "bdev_nvme_reset_controller",
        &json!({ "name": "R" }),
    )
    .unwrap_err();
    assert_eq!(code, -5, "reset with node B down must fail");
    let b = start_b("b3");
    rpc_call(
        &a.sock,
        "bdev_nvme_reset_controller",
        &json!({ "name": "R" }),
    )
    .unwrap();
    assert_eq!(controller_state(&a), "enabled");
    a.stop();
    b.stop();
}
