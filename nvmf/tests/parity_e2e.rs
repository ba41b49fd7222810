//! Remote parity between real `strata-tgt` processes, each on its own loopback address:
//! three data nodes (each serving its own volume to its own host) and two parity nodes (P
//! and Q), connected by NVMe/TCP remote bdevs both ways (data nodes send deltas to P and Q;
//! the parity nodes read the data nodes for verify and reconstruction). Proves that:
//! - three hosts writing verifiable patterns at once leave P and Q exact (the parity
//!   nodes' own verify);
//! - `kill -9` of a data node in the middle of writes, then a restart: the marked regions
//!   are repaired, P and Q are exact, every acknowledged write reads back;
//! - a data node lost entirely (its file deleted) is rebuilt onto a new empty file while
//!   its host keeps writing and reading: every acknowledged write reads back, parity exact;
//! - a parity node cut off (nftables) while a data node writes: the data node serves on
//!   with the group degraded, and when the link comes back it repairs the parity by itself;
//! - `kill -9` of the P node under writes and a restart from its superblock: the same;
//! - with the cluster store (a real etcd), a data node whose superblock is rolled back to a
//!   clean copy after it ran degraded (P cut off) still repairs P when it restarts: its
//!   record says a repair is owed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::etcd::Etcd;
use common::writes::{self, Blocks, Writers};
use common::{free_port, rpc_call, uring_cfg as uring, LinkCut, TgtProcess};

const GROUP: &str = "5a0c7a52-7c4e-4d3e-9a49-2b1f0c3e4d51";
const NQN_P: &str = "nqn.2026-12.io.strata:parity-p";
const NQN_Q: &str = "nqn.2026-12.io.strata:parity-q";
const DATA: [&str; 3] = ["127.0.0.24", "127.0.0.25", "127.0.0.26"];
const IP_P: &str = "127.0.0.27";
const IP_Q: &str = "127.0.0.28";
const FILE_MIB: u64 = 16;
const WAIT: Duration = Duration::from_secs(120);

fn nqn_d(i: usize) -> String {
    format!("nqn.2026-12.io.strata:data-{i}")
}

fn make_file(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(mib << 20).unwrap();
    p
}

fn attach(name: &str, ip: &str, port: u16, nqn: &str, hostaddr: &str) -> Value {
    json!({ "method": "bdev_nvme_attach_controller", "params": {
        "name": name, "trtype": "TCP", "traddr": ip, "trsvcid": port.to_string(),
        "subnqn": nqn, "hostaddr": hostaddr, "ctrlr_loss_timeout_sec": -1,
        "reconnect_delay_sec": 1, "fast_io_fail_timeout_sec": 2 } })
}

fn rpc(t: &TgtProcess, method: &str, params: Value) -> Value {
    rpc_call(&t.sock, method, &params)
        .unwrap_or_else(|e| panic!("{method} {params}: {e:?}\n{}", t.log_text()))
}

/// A parity node: its volume (ns 1) and the rebuild sources of members 0..3 (ns 2..4).
fn parity_node(dir: &Path, role: &str, tag: &str, ip: &str, port: u16, file: &Path) -> TgtProcess {
    let name = role.to_uppercase();
    let nqn = if role == "p" { NQN_P } else { NQN_Q };
    let mut cfg = vec![
        json!({ "method": "bdev_set_options", "params": { "bdev_auto_examine": false } }),
        json!({ "method": "bdev_nvme_set_options", "params": { "keep_alive_timeout_ms": 2000 } }),
        uring("base", file),
        json!({ "method": "bdev_parity_create", "params": {
            "name": name, "base_bdev": "base", "group_uuid": GROUP, "role": role } }),
    ];
    for i in 0..3 {
        cfg.push(json!({ "method": "bdev_parity_source_create", "params": { "name": name, "index": i } }));
    }
    let t = TgtProcess::launch_on(ip, port, dir, tag, cfg, nqn, &name, &["--interrupt-mode"]);
    for i in 0..3u32 {
        rpc(
            &t,
            "nvmf_subsystem_add_ns",
            json!({ "nqn": nqn, "namespace": { "bdev_name": format!("{name}_src{i}"), "nsid": i + 2 } }),
        );
    }
    t
}

/// The nodes' addresses and ports, and the data nodes' extra `strata-tgt` arguments.
struct Ports {
    p: u16,
    q: u16,
    d: [u16; 3],
    ip_p: &'static str,
    ip_q: &'static str,
    ip_d: [&'static str; 3],
    data_extra: Vec<String>,
}

impl Ports {
    fn new(ip_p: &'static str, ip_q: &'static str, ip_d: [&'static str; 3]) -> Ports {
        Ports {
            p: free_port(),
            q: free_port(),
            d: [free_port(), free_port(), free_port()],
            ip_p,
            ip_q,
            ip_d,
            data_extra: Vec::new(),
        }
    }
}

/// Data node `i`: P and Q attached (Pn1 the parity, Pn{i+2} its rebuild source), the
/// member `D` over its file, exported to its host.
fn data_node(
    dir: &Path,
    tag: &str,
    i: usize,
    ports: &Ports,
    file: &Path,
    mode: &str,
    mb_per_sec: u64,
) -> TgtProcess {
    let ip = ports.ip_d[i];
    let cfg = vec![
        json!({ "method": "bdev_set_options", "params": { "bdev_auto_examine": false } }),
        json!({ "method": "bdev_nvme_set_options", "params": { "keep_alive_timeout_ms": 2000 } }),
        attach("P", ports.ip_p, ports.p, NQN_P, ip),
        attach("Q", ports.ip_q, ports.q, NQN_Q, ip),
        uring("base", file),
        json!({ "method": "bdev_parity_member_create", "params": {
            "name": "D", "base_bdev": "base", "group_uuid": GROUP, "index": i,
            "p_bdev": "Pn1", "p_source": format!("Pn{}", i + 2),
            "q_bdev": "Qn1", "q_source": format!("Qn{}", i + 2),
            "mode": mode, "region_size_kb": 256, "max_bandwidth_mb_sec": mb_per_sec } }),
    ];
    let mut extra = vec!["--interrupt-mode"];
    extra.extend(ports.data_extra.iter().map(String::as_str));
    TgtProcess::launch_on(ip, ports.d[i], dir, tag, cfg, &nqn_d(i), "D", &extra)
}

/// The parity nodes read data member `i` through a remote bdev `D{i}n1`.
fn add_member_to(parity: &TgtProcess, name: &str, i: usize, ports: &Ports) {
    rpc(
        parity,
        "bdev_nvme_attach_controller",
        json!({ "name": format!("D{i}"), "trtype": "TCP", "traddr": ports.ip_d[i],
            "trsvcid": ports.d[i].to_string(), "subnqn": nqn_d(i), "hostaddr": parity.ip,
            "ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 1 }),
    );
    rpc(
        parity,
        "bdev_parity_add_member",
        json!({ "name": name, "index": i, "bdev": format!("D{i}n1") }),
    );
}

fn member(t: &TgtProcess) -> Value {
    rpc(t, "bdev_parity_get", json!({ "name": "D" }))[0].clone()
}

/// Waits until the member is active with nothing marked and no job running.
fn wait_settled(t: &TgtProcess) -> Value {
    let t0 = Instant::now();
    loop {
        let m = member(t);
        if m["state"] == "active"
            && m["job"].is_null()
            && m["dirty_regions"] == 0
            && m["group_state"] == "ok"
        {
            return m;
        }
        assert!(
            t0.elapsed() < WAIT,
            "member not settled: {m}\n{}",
            t.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the parity node's verify; asserts it found P (or Q) exact.
fn verify_exact(t: &TgtProcess, name: &str, what: &str) {
    rpc(t, "bdev_parity_verify", json!({ "name": name }));
    let t0 = Instant::now();
    loop {
        let v = rpc(t, "bdev_parity_get", json!({ "name": name }))[0].clone();
        if v["job"].is_null() && !v["last_verify"].is_null() {
            let l = &v["last_verify"];
            assert_eq!(
                l["result"],
                "done",
                "{what}: {name} verify: {v}\n{}",
                t.log_text()
            );
            assert_eq!(l["mismatched_blocks"], 0, "{what}: {name} differs: {v}");
            if name == "P" {
                // P is checked by the members' digests (remote checksum commands), not data.
                assert!(l["pieces_by_checksum"].as_u64().unwrap() > 0, "{what}: {v}");
            }
            eprintln!(
                "{what}: {name} exact ({} bytes at {} MB/s)",
                l["done_bytes"], l["mb_per_sec"]
            );
            return;
        }
        assert!(
            t0.elapsed() < WAIT,
            "{what}: verify of {name} did not end: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_node(t: &TgtProcess, i: usize, blocks: &Blocks, volume: u64, what: &str) {
    let img = t.host(&nqn_d(i)).read_blocks(1, 0, volume).unwrap();
    if let Err(e) = writes::check_image(&img, blocks) {
        panic!("{what}: data node {i}: {e}\n{}", t.log_text());
    }
}

fn writers(
    t: &TgtProcess,
    i: usize,
    blocks: &Blocks,
    span: u64,
    seed: u64,
    keep_going: bool,
) -> Writers {
    let nqn = nqn_d(i);
    Writers::start(|| t.host(&nqn), blocks, span, seed, keep_going)
}

#[test]
fn three_data_nodes_with_p_and_q_survive_kill_loss_and_a_cut_parity_link() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new(IP_P, IP_Q, DATA);
    let pfile = make_file(dir.path(), "p.img", FILE_MIB + 2);
    let qfile = make_file(dir.path(), "q.img", FILE_MIB + 2);
    let p = parity_node(dir.path(), "p", "p", IP_P, ports.p, &pfile);
    let q = parity_node(dir.path(), "q", "q", IP_Q, ports.q, &qfile);
    let files: Vec<PathBuf> = (0..3)
        .map(|i| make_file(dir.path(), &format!("d{i}.img"), FILE_MIB))
        .collect();
    let mut nodes: Vec<Option<TgtProcess>> = (0..3)
        .map(|i| {
            Some(data_node(
                dir.path(),
                &format!("d{i}"),
                i,
                &ports,
                &files[i],
                "fold",
                0,
            ))
        })
        .collect();
    for i in 0..3 {
        add_member_to(&p, "P", i, &ports);
        add_member_to(&q, "Q", i, &ports);
    }
    let volume = member(nodes[0].as_ref().unwrap())["num_blocks"]
        .as_u64()
        .unwrap();
    let span = volume / 64 * 64;
    let blocks: Vec<Blocks> = (0..3).map(|_| writes::new_blocks(volume)).collect();

    // 1. Three hosts write at once (the folds of the empty members race them).
    let w: Vec<Writers> = (0..3)
        .map(|i| {
            writers(
                nodes[i].as_ref().unwrap(),
                i,
                &blocks[i],
                span,
                40 + i as u64,
                false,
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    for (i, w) in w.into_iter().enumerate() {
        let (acked, failed) = w.finish();
        assert_eq!(failed, 0, "data node {i}: writes failed");
        assert!(acked > 20, "data node {i}: only {acked} writes");
    }
    for n in &nodes {
        wait_settled(n.as_ref().unwrap());
    }
    verify_exact(&p, "P", "concurrent writers");
    verify_exact(&q, "Q", "concurrent writers");

    // 2. kill -9 of data node 1 in the middle of writes; restart from the same file.
    let w1 = writers(nodes[1].as_ref().unwrap(), 1, &blocks[1], span, 50, true);
    std::thread::sleep(Duration::from_secs(2));
    let log = nodes[1].take().unwrap().kill9();
    let (acked, _) = w1.finish();
    assert!(acked > 5, "only {acked} writes before the kill:\n{log}");
    nodes[1] = Some(data_node(
        dir.path(),
        "d1-restart",
        1,
        &ports,
        &files[1],
        "fold",
        0,
    ));
    let n1 = nodes[1].as_ref().unwrap();
    wait_settled(n1);
    let text = n1.log_text();
    assert!(text.contains("parity group data member up"), "{text}");
    check_node(n1, 1, &blocks[1], volume, "after kill -9 and restart");
    verify_exact(&p, "P", "after kill -9 of node 1");
    verify_exact(&q, "Q", "after kill -9 of node 1");

    // 3. Data node 2 is lost with its file; a replacement on an empty file rebuilds from
    //    P while its host writes and reads.
    nodes[2].take().unwrap().kill9();
    std::fs::remove_file(&files[2]).unwrap();
    let fresh = make_file(dir.path(), "d2-new.img", FILE_MIB);
    nodes[2] = Some(data_node(
        dir.path(),
        "d2-new",
        2,
        &ports,
        &fresh,
        "rebuild",
        2,
    ));
    let n2 = nodes[2].as_ref().unwrap();
    // The rebuild runs at 2 MB/s (8 s for the volume): the host's writes and the reads of
    // the whole volume after them find most regions not rebuilt yet, and those reads come
    // reconstructed through the parity node.
    let w2 = writers(n2, 2, &blocks[2], span, 60, false);
    std::thread::sleep(Duration::from_secs(2));
    let (acked, failed) = w2.finish();
    assert_eq!(failed, 0, "writes to the rebuilding node failed");
    assert!(acked > 5, "only {acked} writes during the rebuild");
    let m = member(n2);
    assert_eq!(
        m["state"], "rebuilding",
        "the rebuild is still running: {m}"
    );
    check_node(n2, 2, &blocks[2], volume, "during the rebuild");
    let m = wait_settled(n2);
    assert_eq!(m["last_job"]["kind"], "rebuild", "{m}");
    check_node(n2, 2, &blocks[2], volume, "after the rebuild");
    verify_exact(&p, "P", "after rebuilding node 2");
    verify_exact(&q, "Q", "after rebuilding node 2");

    // 4. P cut off from data node 0 while its host writes: degraded, no failed write; the
    //    link back, the repair runs by itself.
    let n0 = nodes[0].as_ref().unwrap();
    let w0 = writers(n0, 0, &blocks[0], span, 70, false);
    std::thread::sleep(Duration::from_millis(500));
    let cut = LinkCut::new(DATA[0], IP_P);
    let t0 = Instant::now();
    loop {
        let m = member(n0);
        if m["group_state"] == "degraded" {
            eprintln!("group degraded {:?} after the cut: {m}", t0.elapsed());
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not degraded: {m}\n{}",
            n0.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(member(n0)["dirty_regions"].as_u64().unwrap() > 0);
    drop(cut);
    let (acked, failed) = w0.finish();
    assert_eq!(
        failed,
        0,
        "host writes failed during the cut\n{}",
        n0.log_text()
    );
    assert!(acked > 10, "only {acked} writes");
    let m = wait_settled(n0);
    eprintln!("repaired by itself: {m}");
    check_node(n0, 0, &blocks[0], volume, "after the cut");
    verify_exact(&p, "P", "after the cut");
    verify_exact(&q, "Q", "after the cut");

    // 5. kill -9 of the P node while data node 1 writes; P restarts from its file (its
    //    member list from the superblock; the members' remote bdevs attached again after
    //    it is up): the data node repairs P by itself once P can serve its rebuild source.
    let n1 = nodes[1].as_ref().unwrap();
    let w1 = writers(n1, 1, &blocks[1], span, 80, false);
    std::thread::sleep(Duration::from_millis(800));
    p.kill9();
    std::thread::sleep(Duration::from_secs(3));
    let p = parity_node(dir.path(), "p", "p-restart", IP_P, ports.p, &pfile);
    for i in 0..3 {
        add_member_to(&p, "P", i, &ports);
    }
    let (acked, failed) = w1.finish();
    assert_eq!(
        failed,
        0,
        "host writes failed while P was down\n{}",
        n1.log_text()
    );
    assert!(acked > 10, "only {acked} writes");
    for n in &nodes {
        wait_settled(n.as_ref().unwrap());
    }
    check_node(n1, 1, &blocks[1], volume, "after P's restart");
    verify_exact(&p, "P", "after P's restart");
    verify_exact(&q, "Q", "after P's restart");
    for (i, n) in nodes.into_iter().enumerate() {
        let n = n.unwrap();
        check_node(&n, i, &blocks[i], volume, "at the end");
        n.stop();
    }
    p.stop();
    q.stop();
}

#[test]
fn a_repair_owed_survives_a_rolled_back_superblock_through_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path());
    let mut ports = Ports::new(
        "127.0.0.30",
        "127.0.0.31",
        ["127.0.0.29", "127.0.0.32", "127.0.0.33"],
    );
    ports.data_extra = vec!["--etcd".into(), etcd.url.clone()];
    let pfile = make_file(dir.path(), "p.img", FILE_MIB + 2);
    let qfile = make_file(dir.path(), "q.img", FILE_MIB + 2);
    let p = parity_node(dir.path(), "p", "p", ports.ip_p, ports.p, &pfile);
    let q = parity_node(dir.path(), "q", "q", ports.ip_q, ports.q, &qfile);
    let file = make_file(dir.path(), "d0.img", FILE_MIB);
    let d = data_node(dir.path(), "d0", 0, &ports, &file, "fold", 0);
    add_member_to(&p, "P", 0, &ports);
    add_member_to(&q, "Q", 0, &ports);
    let info = wait_settled(&d);
    let volume = info["num_blocks"].as_u64().unwrap();
    let meta_bytes = info["data_offset"].as_u64().unwrap() as usize * writes::BS;
    let span = volume / 64 * 64;
    let blocks = writes::new_blocks(volume);
    let (acked, failed) = {
        let w = writers(&d, 0, &blocks, span, 90, false);
        std::thread::sleep(Duration::from_secs(2));
        w.finish()
    };
    assert!(acked > 10 && failed == 0, "{acked} acked, {failed} failed");
    wait_settled(&d);
    verify_exact(&p, "P", "before the cut");
    // The member's metadata as it is now: nothing owed.
    let clean = {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; meta_bytes];
        std::fs::File::open(&file)
            .unwrap()
            .read_exact_at(&mut b, 0)
            .unwrap();
        b
    };
    // P cut off: the member runs degraded, marks what it writes, and its record says so.
    let cut = LinkCut::new(ports.ip_d[0], ports.ip_p);
    let w = writers(&d, 0, &blocks, span, 91, false);
    let t0 = Instant::now();
    while member(&d)["group_state"] != "degraded" {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not degraded: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (acked, failed) = w.finish();
    assert!(
        acked > 10 && failed == 0,
        "{acked} acked, {failed} failed during the cut"
    );
    let log = d.kill9();
    assert!(
        log.contains("member state recorded in the cluster store"),
        "{log}"
    );
    // The superblock (and its bitmap) rolled back to the clean copy: alone, it says P
    // owes nothing.
    {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .write_all_at(&clean, 0)
            .unwrap();
    }
    drop(cut);
    let d = data_node(dir.path(), "d0-restart", 0, &ports, &file, "fold", 0);
    wait_settled(&d);
    let text = d.log_text();
    assert!(text.contains("the parity is owed a repair"), "{text}");
    check_node(&d, 0, &blocks, volume, "after the restart");
    verify_exact(&p, "P", "after the rolled-back restart");
    verify_exact(&q, "Q", "after the rolled-back restart");
    d.stop();
    p.stop();
    q.stop();
}
