//! Asymmetric Namespace Access against the real `strata-tgt`: one subsystem with ANA
//! reporting on two listeners, a controller through each (strata's host library). Setting
//! a group inaccessible on one listener refuses I/O there with the path status (SCT 3h,
//! SC 02h) while the other path serves the same data, announces the change with an
//! asynchronous event and the ANA log page, and is written by `save_config`; bad
//! parameters get JSON-RPC errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use strata_nvmf::host::blocking::BlockingController;
use strata_nvmf::host::controller::ControllerOptions;
use strata_nvmf::host::{cmd, DataDir, HostError};
use strata_nvmf::spec::cmd::feature;
use strata_nvmf::spec::identify::{IdentifyController, IdentifyNamespace};
use strata_nvmf::spec::log::{lid, AER_ANA_CHANGED};
use zerocopy::FromBytes;

mod common;
use common::{free_port, rpc_call, TgtProcess};

const NQN: &str = "nqn.2026-12.io.strata:ana";
const PLAIN: &str = "nqn.2026-12.io.strata:plain";
const BS: usize = 4096;

fn rpc_ok(t: &TgtProcess, method: &str, params: Value) -> Value {
    rpc_call(&t.sock, method, &params)
        .unwrap_or_else(|e| panic!("{method} {params}: {e:?}\n{}", t.log_text()))
}

fn listener(port: u16) -> Value {
    json!({ "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string() })
}

fn connect(port: u16) -> BlockingController {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let opts = ControllerOptions {
        io_queues: 1,
        queue_depth: 8,
        timeout: Duration::from_secs(20),
        ..Default::default()
    };
    BlockingController::connect(addr, NQN, opts).expect("connect")
}

/// The ANA log page: (change count, [(group, state, nsids)]).
fn ana_log(c: &mut BlockingController) -> (u64, Vec<(u32, u8, Vec<u32>)>) {
    let raw = c
        .controller_mut()
        .get_log_page(lid::ANA, 0, 4096, 0)
        .unwrap();
    let cc = u64::from_le_bytes(raw[0..8].try_into().unwrap());
    let n = u16::from_le_bytes(raw[8..10].try_into().unwrap()) as usize;
    let mut at = 16;
    let mut groups = Vec::new();
    for _ in 0..n {
        let g = u32::from_le_bytes(raw[at..at + 4].try_into().unwrap());
        let k = u32::from_le_bytes(raw[at + 4..at + 8].try_into().unwrap()) as usize;
        let state = raw[at + 16];
        at += 32;
        let nsids = (0..k)
            .map(|i| u32::from_le_bytes(raw[at + i * 4..at + i * 4 + 4].try_into().unwrap()))
            .collect();
        at += k * 4;
        groups.push((g, state, nsids));
    }
    (cc, groups)
}

fn rpc_err(t: &TgtProcess, method: &str, params: Value) -> (i64, String) {
    match rpc_call(&t.sock, method, &params) {
        Ok(v) => panic!("{method} {params} succeeded: {v}"),
        Err(e) => e,
    }
}

#[test]
fn an_inaccessible_path_refuses_io_and_the_other_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let t = TgtProcess::launch(
        dir.path(),
        "ana",
        vec![json!({ "method": "bdev_malloc_create", "params":
            { "name": "M0", "num_blocks": 2048, "block_size": 4096 } })],
        PLAIN,
        "M0",
        &[],
    );
    let (p1, p2) = (free_port(), free_port());
    rpc_ok(
        &t,
        "bdev_malloc_create",
        json!({ "name": "M1", "num_blocks": 2048, "block_size": 4096 }),
    );
    rpc_ok(
        &t,
        "nvmf_create_subsystem",
        json!({ "nqn": NQN, "allow_any_host": true, "ana_reporting": true }),
    );
    rpc_ok(
        &t,
        "nvmf_subsystem_add_ns",
        json!({ "nqn": NQN, "namespace": { "bdev_name": "M1", "nsid": 1, "anagrpid": 5 } }),
    );
    for p in [p1, p2] {
        rpc_ok(
            &t,
            "nvmf_subsystem_add_listener",
            json!({ "nqn": NQN, "listen_address": listener(p) }),
        );
    }
    let mut c1 = connect(p1);
    let mut c2 = connect(p2);

    // Identify says ANA is reported, and which group the namespace is in.
    let raw = c1.controller_mut().identify(1, 0, 0).unwrap();
    let id = IdentifyController::read_from_bytes(&raw).unwrap();
    assert_ne!(id.cmic & (1 << 3), 0, "CMIC ANA reporting");
    assert_ne!({ id.oaes } & (1 << 11), 0, "OAES ANA change notices");
    assert_eq!(id.anacap & 0x07, 0x07);
    assert_eq!({ id.anagrpmax }, 32);
    let raw = c1.controller_mut().identify(0, 1, 0).unwrap();
    let ns = IdentifyNamespace::read_from_bytes(&raw).unwrap();
    assert_eq!({ ns.anagrpid }, 5);
    let (_, groups) = ana_log(&mut c1);
    assert_eq!(groups, vec![(5, 1, vec![1])]);

    // ANA change notices on c1, with an event request held.
    c1.controller_mut()
        .set_features(feature::ASYNC_EVENT_CONFIG, 1 << 11)
        .unwrap();
    let aer_cid = c1
        .controller_mut()
        .submit_admin(cmd::async_event_request(), DataDir::None, 77)
        .unwrap();

    let pattern: Vec<u8> = (0..64 * BS).map(|i| (i * 7 % 251) as u8).collect();
    c1.write_blocks(1, 100, &pattern).unwrap();

    rpc_ok(
        &t,
        "nvmf_subsystem_listener_set_ana_state",
        json!({ "nqn": NQN, "listen_address": listener(p1), "ana_state": "inaccessible", "anagrpid": 5 }),
    );
    // The event arrives on c1's admin queue.
    let t0 = Instant::now();
    let aer = loop {
        c1.controller_mut().poll_admin().unwrap();
        if let Some(c) = c1.controller_mut().pop_admin_completion() {
            break c;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no ANA change event"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(aer.cqe.cid, aer_cid);
    assert_eq!(aer.cqe.dw0, AER_ANA_CHANGED);
    let (cc1, g1) = ana_log(&mut c1);
    assert_eq!(g1, vec![(5, 3, vec![1])]);
    assert!(cc1 >= 1);
    let (_, g2) = ana_log(&mut c2);
    assert_eq!(
        g2,
        vec![(5, 1, vec![1])],
        "the other path is still optimized"
    );

    // I/O through the inaccessible path gets the path status; the other path has the data.
    match c1.read_blocks(1, 100, 64) {
        Err(HostError::Status { sct: 3, sc: 2 }) => {}
        other => panic!("read through an inaccessible path: {other:?}"),
    }
    match c1.write_blocks(1, 0, &pattern[..BS]) {
        Err(HostError::Status { sct: 3, sc: 2 }) => {}
        other => panic!("write through an inaccessible path: {other:?}"),
    }
    assert_eq!(c2.read_blocks(1, 100, 64).unwrap(), pattern);

    // Listed, and kept by save_config.
    let l = rpc_ok(&t, "nvmf_subsystem_get_listeners", json!({ "nqn": NQN }));
    let on_p1 = l
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["address"]["trsvcid"].as_str() == Some(p1.to_string().as_str()))
        .unwrap();
    assert_eq!(on_p1["ana_states"][4]["ana_group"], 5, "{l}");
    assert_eq!(on_p1["ana_states"][4]["ana_state"], "inaccessible", "{l}");
    let cfg = rpc_ok(&t, "save_config", json!({})).to_string();
    assert!(
        cfg.contains("nvmf_subsystem_listener_set_ana_state") && cfg.contains("\"anagrpid\":5"),
        "{cfg}"
    );

    // Bad input: clear errors, nothing changed.
    let set = |nqn: &str, l: Value, state: &str, g: Option<u32>| {
        let mut p = json!({ "nqn": nqn, "listen_address": l, "ana_state": state });
        if let Some(g) = g {
            p["anagrpid"] = json!(g);
        }
        p
    };
    let m = "nvmf_subsystem_listener_set_ana_state";
    assert_eq!(
        rpc_err(&t, m, set(NQN, listener(p1), "sideways", None)).0,
        -32602
    );
    assert_eq!(
        rpc_err(&t, m, set(NQN, listener(p1), "optimized", Some(0))).0,
        -32602
    );
    assert_eq!(
        rpc_err(&t, m, set(NQN, listener(p1), "optimized", Some(33))).0,
        -32602
    );
    let other = free_port();
    assert_eq!(
        rpc_err(&t, m, set(NQN, listener(other), "optimized", None)).0,
        -19
    );
    let e = rpc_err(&t, m, set(PLAIN, listener(t.port), "inaccessible", None));
    assert_eq!(e.0, -32602);
    assert!(e.1.contains("ANA reporting is disabled"), "{e:?}");
    assert_eq!(
        rpc_err(
            &t,
            "nvmf_subsystem_add_ns",
            json!({ "nqn": NQN, "namespace": { "bdev_name": "M0", "anagrpid": 0 } })
        )
        .0,
        -32602
    );
    assert!(c1.read_blocks(1, 100, 1).is_err(), "still inaccessible");

    // Back to optimized: the path serves I/O again.
    rpc_ok(
        &t,
        m,
        json!({ "nqn": NQN, "listen_address": listener(p1), "ana_state": "optimized" }),
    );
    assert_eq!(c1.read_blocks(1, 100, 64).unwrap(), pattern);
    let (cc2, g1) = ana_log(&mut c1);
    assert_eq!(g1, vec![(5, 1, vec![1])]);
    assert!(cc2 > cc1);
    // A controller connecting after a change starts with the listener's state.
    rpc_ok(
        &t,
        m,
        json!({ "nqn": NQN, "listen_address": listener(p2), "ana_state": "non_optimized" }),
    );
    let mut c3 = connect(p2);
    assert_eq!(ana_log(&mut c3).1, vec![(5, 2, vec![1])]);
    assert_eq!(c3.read_blocks(1, 100, 64).unwrap(), pattern);
}
