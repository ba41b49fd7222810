//! A mirror whose secondary leg lives on another node, between real `strata-tgt` processes
//! on their own loopback addresses: node A (the mirror, its primary leg, the host's export)
//! attaches node B's namespace with `bdev_nvme_attach_controller`. Proves that:
//! - with a local raid5 primary and a raid5 secondary on node B, a silent link cut in the
//!   middle of a write load degrades the mirror without failing a host write, and when the
//!   link comes back the mirror resyncs the leg by itself (no RPC); afterwards node B alone
//!   (node A stopped) holds every acknowledged write;
//! - `kill -9` of node B under writes: the mirror runs on, and when B restarts the leg is
//!   resynced by itself; `kill -9` of node A under writes: after A restarts the mirror is
//!   re-assembled from the superblocks of its local and remote legs, resynced, and no
//!   acknowledged write is lost, on either node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::writes::{self, Blocks, Writers, BS};
use common::{free_port, rpc_call, uring_cfg as uring, LinkCut, TgtProcess};

const NQN_A: &str = "nqn.2026-12.io.strata:mirror-a";
const NQN_B: &str = "nqn.2026-12.io.strata:leg-b";
const MIRROR: &str = "M0";
const KATO_MS: u64 = 2000;
const FAST_FAIL_S: u64 = 4;
const JOB_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Clone, Copy)]
struct Pair {
    a: &'static str,
    b: &'static str,
}
const PAIR_CUT: Pair = Pair {
    a: "127.0.0.8",
    b: "127.0.0.9",
};
const PAIR_KILL: Pair = Pair {
    a: "127.0.0.10",
    b: "127.0.0.11",
};

fn remote_attach(p: Pair, b_port: u16) -> Value {
    json!({ "method": "bdev_nvme_attach_controller", "params": {
        "name": "R", "trtype": "TCP", "traddr": p.b, "trsvcid": b_port.to_string(),
        "subnqn": NQN_B, "hostaddr": p.a, "ctrlr_loss_timeout_sec": -1,
        "reconnect_delay_sec": 1, "fast_io_fail_timeout_sec": FAST_FAIL_S } })
}

/// Keep-alive 2 s; 4 command slots per queue pair, so the mirror's 1 MiB copies (8
/// commands of 128 KiB) go out in rounds.
fn set_options() -> Value {
    json!({ "method": "bdev_nvme_set_options", "params": { "keep_alive_timeout_ms": KATO_MS, "io_queue_requests": 4 } })
}

fn malloc(name: &str, blocks: u64) -> Value {
    json!({ "method": "bdev_malloc_create", "params": { "name": name, "num_blocks": blocks, "block_size": BS } })
}

fn raid5(name: &str, members: &[&str]) -> Value {
    json!({ "method": "bdev_raid_create", "params": { "name": name, "raid_level": "raid5",
        "strip_size_kb": 64, "base_bdevs": members } })
}

fn create_mirror(primary: &str) -> Value {
    json!({ "method": "bdev_mirror_create", "params": { "name": MIRROR, "primary": primary,
        "secondary": "Rn1", "region_size_kb": 1024, "scan_chunk_kb": 64 } })
}

fn make_file(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(mib << 20).unwrap();
    p
}

/// The volume through node A's export checks against the record.
fn check_through(a: &TgtProcess, blocks: &Blocks, volume_blocks: u64) {
    let img = a.host(NQN_A).read_blocks(1, 0, volume_blocks).unwrap();
    if let Err(e) = writes::check_image(&img, blocks) {
        panic!("through node A: {e}\n{}", a.log_text());
    }
}

/// Node B's namespace alone holds the volume at `data_offset` blocks.
fn check_on_b(b: &TgtProcess, blocks: &Blocks, data_offset: u64, volume_blocks: u64) {
    let img = b
        .host(NQN_B)
        .read_blocks(1, data_offset, volume_blocks)
        .unwrap();
    if let Err(e) = writes::check_image(&img, blocks) {
        panic!("on node B alone: {e}\n{}", b.log_text());
    }
}

fn writers(a: &TgtProcess, blocks: &Blocks, span: u64, seed: u64, keep_going: bool) -> Writers {
    Writers::start(|| a.host(NQN_A), blocks, span, seed, keep_going)
}

#[test]
fn remote_raid5_leg_survives_a_link_cut_and_resyncs_by_itself() {
    let p = PAIR_CUT;
    let dir = tempfile::tempdir().unwrap();
    let members = ["B0", "B1", "B2"];
    let mut bcfg: Vec<Value> = members.iter().map(|m| malloc(m, 4096)).collect();
    bcfg.push(raid5("BR", &members));
    let b = TgtProcess::launch_on(
        p.b,
        free_port(),
        dir.path(),
        "b",
        bcfg,
        NQN_B,
        "BR",
        &["--interrupt-mode"],
    );
    let local = ["A0", "A1", "A2"];
    let mut acfg: Vec<Value> = local.iter().map(|m| malloc(m, 4096)).collect();
    acfg.extend([
        raid5("AR", &local),
        set_options(),
        remote_attach(p, b.port),
        create_mirror("AR"),
    ]);
    let a = TgtProcess::launch_on(
        p.a,
        free_port(),
        dir.path(),
        "a",
        acfg,
        NQN_A,
        MIRROR,
        &["--interrupt-mode"],
    );
    let m = a.wait_mirror_state(MIRROR, "in_sync", JOB_TIMEOUT);
    let volume = m["num_blocks"].as_u64().unwrap();
    let data_offset = m["data_offset_blocks"].as_u64().unwrap();
    let span = volume / 64 * 64;
    let blocks = writes::new_blocks(volume);

    let w = writers(&a, &blocks, span, 21, false);
    std::thread::sleep(Duration::from_secs(1));
    let cut = LinkCut::new(p.a, p.b);
    // Past keep-alive loss detection and fast_io_fail: the leg is out, writes go on.
    let t0 = Instant::now();
    loop {
        let m = a.mirror_get(MIRROR);
        if m["state"] == "degraded" {
            eprintln!("mirror degraded {:?} after the cut", t0.elapsed());
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "mirror not degraded: {m}\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    drop(cut);
    let t1 = Instant::now();
    let mut saw_job = false;
    loop {
        let m = a.mirror_get(MIRROR);
        saw_job |= m["job"]["kind"] == "resync";
        if m["state"] == "in_sync" && m["job"].is_null() {
            break;
        }
        assert!(
            t1.elapsed() < JOB_TIMEOUT,
            "mirror did not resync by itself: {m}\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = a.mirror_get(MIRROR)["last_job"].clone();
    eprintln!(
        "resynced {:?} after the link came back (job seen: {saw_job}); last job {last}",
        t1.elapsed()
    );
    assert_eq!(last["kind"], "resync", "{last}");
    let (acked, failed) = w.finish();
    assert_eq!(
        failed,
        0,
        "host writes failed during the cut\n{}",
        a.log_text()
    );
    assert!(acked > 20, "only {acked} writes acknowledged");
    a.wait_mirror_state(MIRROR, "in_sync", JOB_TIMEOUT);
    check_through(&a, &blocks, volume);
    a.stop();
    check_on_b(&b, &blocks, data_offset, volume);
    b.stop();
}

#[test]
fn kill_9_of_either_node_loses_no_acknowledged_write() {
    let p = PAIR_KILL;
    let dir = tempfile::tempdir().unwrap();
    let leg_a = make_file(dir.path(), "leg-a", 24);
    let leg_b = make_file(dir.path(), "leg-b", 24);
    let b_port = free_port();
    let a_port = free_port();
    // Node B only exports the leg: it must not assemble the mirror from the leg's
    // superblock when it restarts (that is node A's volume).
    let start_b = |tag: &str| {
        let cfg = vec![
            json!({ "method": "bdev_set_options", "params": { "bdev_auto_examine": false } }),
            uring("BF", &leg_b),
        ];
        TgtProcess::launch_on(
            p.b,
            b_port,
            dir.path(),
            tag,
            cfg,
            NQN_B,
            "BF",
            &["--interrupt-mode"],
        )
    };
    let start_a = |tag: &str, create: bool| {
        let mut cfg = vec![uring("AF", &leg_a), set_options(), remote_attach(p, b_port)];
        if create {
            cfg.push(create_mirror("AF"));
        }
        TgtProcess::launch_on(
            p.a,
            a_port,
            dir.path(),
            tag,
            cfg,
            NQN_A,
            MIRROR,
            &["--interrupt-mode"],
        )
    };
    let b = start_b("b1");
    let a = start_a("a1", true);
    let m = a.wait_mirror_state(MIRROR, "in_sync", JOB_TIMEOUT);
    let volume = m["num_blocks"].as_u64().unwrap();
    let data_offset = m["data_offset_blocks"].as_u64().unwrap();
    let span = volume / 64 * 64;
    let blocks = writes::new_blocks(volume);

    // kill -9 of node B: the mirror runs on and resyncs the leg when B is back.
    let w = writers(&a, &blocks, span, 31, false);
    std::thread::sleep(Duration::from_secs(1));
    b.kill9();
    let t0 = Instant::now();
    while a.mirror_get(MIRROR)["state"] != "degraded" {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not degraded after B died\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let b = start_b("b2");
    a.wait_mirror_state(MIRROR, "in_sync", JOB_TIMEOUT);
    let (acked, failed) = w.finish();
    assert_eq!(
        failed,
        0,
        "host writes failed while B was down\n{}",
        a.log_text()
    );
    assert!(acked > 10, "only {acked} writes");
    check_through(&a, &blocks, volume);

    // kill -9 of node A: after the restart the mirror comes back from both superblocks.
    let w = writers(&a, &blocks, span, 32, false);
    std::thread::sleep(Duration::from_secs(2));
    let log = a.kill9();
    let (acked, _) = w.finish();
    assert!(acked > 10, "only {acked} writes before the kill\n{log}");
    let a = start_a("a2", false);
    a.wait_mirror_state(MIRROR, "in_sync", JOB_TIMEOUT);
    check_through(&a, &blocks, volume);
    a.stop();
    check_on_b(&b, &blocks, data_offset, volume);
    b.stop();
}

const PAIR_SCAN: Pair = Pair {
    a: "127.0.0.12",
    b: "127.0.0.13",
};

fn data_received(a: &TgtProcess) -> u64 {
    let v = rpc_call(
        &a.sock,
        "bdev_nvme_get_controllers",
        &json!({ "name": "R" }),
    )
    .unwrap();
    v[0]["ctrlrs"][0]["strata"]["data_bytes_received"]
        .as_u64()
        .unwrap()
}

fn wait_job_done(a: &TgtProcess, kind: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let m = a.mirror_get(MIRROR);
        if m["job"].is_null() && m["last_job"]["kind"] == kind {
            return m;
        }
        assert!(
            t0.elapsed() < JOB_TIMEOUT,
            "{kind} did not finish: {m}\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A scrub and a checksum resume of two identical legs, one of them remote, move checksums
/// over the wire, not data: at most 1 % of the volume is received from node B.
#[test]
fn scans_across_the_wire_move_checksums_not_data() {
    let p = PAIR_SCAN;
    let dir = tempfile::tempdir().unwrap();
    let blocks = 16384; // 64 MiB legs
    let b = TgtProcess::launch_on(
        p.b,
        free_port(),
        dir.path(),
        "b",
        vec![malloc("BM", blocks)],
        NQN_B,
        "BM",
        &["--interrupt-mode"],
    );
    let mut create = create_mirror("AM");
    create["params"]["checksum"] = json!("sha256");
    let acfg = vec![
        malloc("AM", blocks),
        set_options(),
        remote_attach(p, b.port),
        create,
    ];
    let a = TgtProcess::launch_on(
        p.a,
        free_port(),
        dir.path(),
        "a",
        acfg,
        NQN_A,
        MIRROR,
        &["--interrupt-mode"],
    );
    let m = a.wait_mirror_state(MIRROR, "in_sync", JOB_TIMEOUT);
    let volume_bytes = m["num_blocks"].as_u64().unwrap() * BS as u64;
    // Some data, so the checksums are not all of zeroes.
    let mut h = a.host(NQN_A);
    for lba in (0..m["num_blocks"].as_u64().unwrap()).step_by(977) {
        h.write_blocks(1, lba, &writes::pattern(lba, 1)).unwrap();
    }
    drop(h);

    let before = data_received(&a);
    rpc_call(&a.sock, "bdev_mirror_verify", &json!({ "name": MIRROR })).unwrap();
    let m = wait_job_done(&a, "scrub");
    let scrub = data_received(&a) - before;
    assert_eq!(m["last_job"]["mismatches"], 0, "{m}");
    eprintln!(
        "scrub of {volume_bytes} bytes: {scrub} bytes received from the remote leg ({:.3} %)",
        scrub as f64 * 100.0 / volume_bytes as f64
    );
    assert!(
        scrub * 100 <= volume_bytes,
        "scrub moved {scrub} bytes of {volume_bytes}"
    );

    rpc_call(&a.sock, "bdev_mirror_split", &json!({ "name": MIRROR })).unwrap();
    let before = data_received(&a);
    rpc_call(
        &a.sock,
        "bdev_mirror_resume",
        &json!({ "name": MIRROR, "mode": "checksum" }),
    )
    .unwrap();
    let m = wait_job_done(&a, "scan");
    let scan = data_received(&a) - before;
    assert_eq!(m["last_job"]["copied_bytes"], 0, "{m}");
    eprintln!(
        "checksum resume of {volume_bytes} bytes: {scan} bytes received ({:.3} %)",
        scan as f64 * 100.0 / volume_bytes as f64
    );
    assert!(
        scan * 100 <= volume_bytes,
        "scan moved {scan} bytes of {volume_bytes}"
    );
    a.wait_mirror_state(MIRROR, "in_sync", JOB_TIMEOUT);
    a.stop();
    b.stop();
}

const PAIR_SPLIT: Pair = Pair {
    a: "127.0.0.18",
    b: "127.0.0.19",
};

fn write_version(t: &TgtProcess, nqn: &str, nsid: u32, lbas: std::ops::Range<u64>, v: u32) {
    let mut h = t.host(nqn);
    for lba in lbas {
        h.write_blocks(nsid, lba, &writes::pattern(lba, v)).unwrap();
    }
}

fn check_versions(img: &[u8], want: &dyn Fn(u64) -> u32, what: &str) {
    for (i, b) in img.chunks(BS).enumerate() {
        let v = want(i as u64);
        assert!(
            b == writes::pattern(i as u64, v).as_slice(),
            "{what}: block {i} is not version {v}"
        );
    }
}

/// Node A's mirror loses node B (link cut) and writes on; node A stops; node B's operator
/// brings the mirror up from B's leg alone and writes there too. When node A restarts with
/// both legs, neither leg may silently win: the mirror is held with state split_brain until
/// the operator keeps one leg; the other is then overwritten from it.
#[test]
fn split_brain_is_refused_until_the_operator_keeps_one_leg() {
    let p = PAIR_SPLIT;
    let dir = tempfile::tempdir().unwrap();
    let leg_a = make_file(dir.path(), "leg-a", 8);
    let leg_b = make_file(dir.path(), "leg-b", 8);
    let (a_port, b_port) = (free_port(), free_port());
    let b_export = |tag: &str| {
        let cfg = vec![
            json!({ "method": "bdev_set_options", "params": { "bdev_auto_examine": false } }),
            uring("BF", &leg_b),
        ];
        TgtProcess::launch_on(
            p.b,
            b_port,
            dir.path(),
            tag,
            cfg,
            NQN_B,
            "BF",
            &["--interrupt-mode"],
        )
    };
    let b = b_export("b1");
    let cfg = vec![
        uring("AF", &leg_a),
        set_options(),
        remote_attach(p, b_port),
        create_mirror("AF"),
    ];
    let a = TgtProcess::launch_on(
        p.a,
        a_port,
        dir.path(),
        "a1",
        cfg,
        NQN_A,
        MIRROR,
        &["--interrupt-mode"],
    );
    let m = a.wait_mirror_state(MIRROR, "in_sync", JOB_TIMEOUT);
    let data_offset = m["data_offset_blocks"].as_u64().unwrap();
    write_version(&a, NQN_A, 1, 0..64, 1);

    // Apart: A writes v2 to 0..32 while B is unreachable.
    let cut = LinkCut::new(p.a, p.b);
    write_version(&a, NQN_A, 1, 0..32, 2);
    a.wait_mirror_state(MIRROR, "degraded", Duration::from_secs(30));
    a.stop();
    drop(cut);
    // Node B brings the mirror up from its own leg (auto-examine on) and writes v3 to 16..48.
    b.stop();
    let bcfg = vec![uring("BF", &leg_b)];
    let b = TgtProcess::launch_on(
        p.b,
        b_port,
        dir.path(),
        "b2",
        bcfg,
        NQN_B,
        MIRROR,
        &["--interrupt-mode"],
    );
    assert_eq!(
        b.mirror_get(MIRROR)["state"],
        "degraded",
        "{}",
        b.log_text()
    );
    write_version(&b, NQN_B, 1, 16..48, 3);
    b.stop();

    // Both legs back on node A: held, not assembled.
    let b = b_export("b3");
    let cfg = vec![
        uring("AF", &leg_a),
        set_options(),
        remote_attach(p, b_port),
        malloc("X", 256),
    ];
    let a = TgtProcess::launch_on(
        p.a,
        a_port,
        dir.path(),
        "a2",
        cfg,
        NQN_A,
        "X",
        &["--interrupt-mode"],
    );
    let m = a.mirror_get(MIRROR);
    assert_eq!(m["state"], "split_brain", "{m}\n{}", a.log_text());
    let legs: Vec<&str> = m["legs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert!(legs.contains(&"AF") && legs.contains(&"Rn1"), "{m}");
    assert!(
        a.log_text().contains("split brain"),
        "no split brain in the log"
    );
    let bdevs = rpc_call(&a.sock, "bdev_get_bdevs", &json!({ "name": MIRROR }));
    assert!(bdevs.is_err(), "the mirror was brought up: {bdevs:?}");
    // Keep a leg that is not one: refused.
    let (code, msg) = rpc_call(
        &a.sock,
        "bdev_mirror_resolve_split_brain",
        &json!({ "name": MIRROR, "keep": "X" }),
    )
    .unwrap_err();
    assert_eq!(code, -32602, "{msg}");
    // Keep node A's leg: v2 on 0..32, v1 on 32..64; B's v3 is gone from both legs.
    rpc_call(
        &a.sock,
        "bdev_mirror_resolve_split_brain",
        &json!({ "name": MIRROR, "keep": "AF" }),
    )
    .unwrap();
    a.wait_mirror_state(MIRROR, "in_sync", JOB_TIMEOUT);
    rpc_call(
        &a.sock,
        "nvmf_subsystem_add_ns",
        &json!({ "nqn": NQN_A, "namespace": { "bdev_name": MIRROR, "nsid": 2 } }),
    )
    .unwrap();
    let want = |lba: u64| if lba < 32 { 2 } else { 1 };
    let img = a.host(NQN_A).read_blocks(2, 0, 64).unwrap();
    check_versions(&img, &want, "through node A");
    a.stop();
    let img = b.host(NQN_B).read_blocks(1, data_offset, 64).unwrap();
    check_versions(&img, &want, "node B's leg");
    b.stop();
}
