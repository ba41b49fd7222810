//! The NVMe-oF JSON-RPC methods (`nvmf_*`), the embedded default export, and the `nvmf` part
//! of `save_config`, against a real strata-tgt.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{json, Value};
use strata_tests::{free_port, free_ports, json_out, ok, tcp_connects, text, wait_for, Target};

const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
const DEFAULT_NQN: &str = "nqn.2026-11.io.strata:default";
const NQN1: &str = "nqn.2016-06.io.spdk:cnode1";
const NQN2: &str = "nqn.2016-06.io.spdk:cnode2";
const HOST1: &str = "nqn.2014-08.org.nvmexpress:uuid:0b7e5d4c-3a29-4f18-9e07-d6c5b4a39281";
const HOST2: &str = "nqn.2016-06.io.spdk:host2";

/// A target with the embedded default on free ports: (target, nvmf port, discovery port).
fn start_default(extra: &[&str]) -> (Target, u16, u16) {
    let ports = free_ports(2);
    let (p, d) = (ports[0].to_string(), ports[1].to_string());
    let mut args = vec!["--nvmf-port", &p, "--discovery-port", &d];
    args.extend_from_slice(extra);
    (Target::start(&args), ports[0], ports[1])
}

/// A target without the embedded default (its ports are still moved off the defaults).
fn start_bare(extra: &[&str]) -> Target {
    let ports = free_ports(2);
    let (p, d) = (ports[0].to_string(), ports[1].to_string());
    let mut args = vec!["--no-default", "--nvmf-port", &p, "--discovery-port", &d];
    args.extend_from_slice(extra);
    Target::start(&args)
}

fn subsystems(t: &Target) -> Vec<Value> {
    match t.rpc_ok("nvmf_get_subsystems", Value::Null) {
        Value::Array(v) => v,
        other => panic!("nvmf_get_subsystems did not return an array: {other}"),
    }
}

fn find_subsystem(subs: &[Value], nqn: &str) -> Option<Value> {
    subs.iter().find(|s| s["nqn"] == nqn).cloned()
}

fn subsystem(t: &Target, nqn: &str) -> Value {
    let subs = subsystems(t);
    find_subsystem(&subs, nqn)
        .unwrap_or_else(|| panic!("{nqn} not in nvmf_get_subsystems: {}", json!(subs)))
}

fn listen_address(port: u16) -> Value {
    json!({"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()})
}

fn add_listener(t: &Target, nqn: &str, port: u16) -> Result<Value, (i64, String)> {
    t.rpc(
        "nvmf_subsystem_add_listener",
        json!({"nqn": nqn, "listen_address": listen_address(port)}),
    )
}

fn malloc(t: &Target, name: &str) {
    t.rpc_ok(
        "bdev_malloc_create",
        json!({"name": name, "num_blocks": 256, "block_size": 512}),
    );
}

fn claimed(t: &Target, name: &str) -> bool {
    let b = t.bdev(name);
    b["claimed"]
        .as_bool()
        .unwrap_or_else(|| panic!("bdev without claimed: {b}"))
}

/// Namespaces of a subsystem as (nsid, bdev_name).
fn ns_list(sub: &Value) -> Vec<(u64, String)> {
    sub["namespaces"]
        .as_array()
        .unwrap_or_else(|| panic!("subsystem without namespaces array: {sub}"))
        .iter()
        .map(|n| {
            (
                n["nsid"].as_u64().unwrap(),
                n["bdev_name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A transport, a subsystem NQN1 with allow-any-host, no listener.
fn bare_with_subsystem() -> Target {
    let t = start_bare(&[]);
    t.rpc_ok("nvmf_create_transport", json!({"trtype": "TCP"}));
    t.rpc_ok(
        "nvmf_create_subsystem",
        json!({"nqn": NQN1, "allow_any_host": true}),
    );
    t
}

#[test]
fn default_export_is_visible() {
    let (t, port, disc) = start_default(&[]);
    let subs = subsystems(&t);

    let d = find_subsystem(&subs, DISCOVERY_NQN)
        .unwrap_or_else(|| panic!("no discovery subsystem: {}", json!(subs)));
    assert_eq!(d["subtype"], "Discovery", "{d}");
    assert_eq!(d["listen_addresses"], json!([listen_address(disc)]), "{d}");

    let s = find_subsystem(&subs, DEFAULT_NQN)
        .unwrap_or_else(|| panic!("no default subsystem: {}", json!(subs)));
    assert_eq!(s["subtype"], "NVMe", "{s}");
    assert_eq!(s["allow_any_host"], true, "{s}");
    assert_eq!(s["listen_addresses"], json!([listen_address(port)]), "{s}");
    assert_eq!(ns_list(&s), vec![(1, "Malloc0".to_string())], "{s}");
    assert_eq!(subs.len(), 2, "{}", json!(subs));

    assert!(
        claimed(&t, "Malloc0"),
        "Malloc0 is exported but not claimed"
    );
    let tr = t.rpc_ok("nvmf_get_transports", Value::Null);
    assert_eq!(tr.as_array().map(Vec::len), Some(1), "{tr}");
    assert_eq!(tr[0]["trtype"], "TCP", "{tr}");
    // Zero-copy reads are strata's default (SPDK's `zcopy`, off there by default).
    assert_eq!(tr[0]["zcopy"], true, "{tr}");
    // SUCCESS without a CapsuleResp only where the host disabled SQ flow control (the spec's
    // rule; SPDK's behaviour is the opt-in `c2h_success_always`).
    assert_eq!(tr[0]["c2h_success"], true, "{tr}");
    assert_eq!(tr[0]["c2h_success_always"], false, "{tr}");

    assert!(tcp_connects(port), "no TCP listener on 127.0.0.1:{port}");
    assert!(
        tcp_connects(disc),
        "no discovery listener on 127.0.0.1:{disc}"
    );

    // The default volume cannot be exported twice.
    t.rpc_ok("nvmf_create_subsystem", json!({"nqn": NQN1}));
    let (code, msg) = t.rpc_err(
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN1, "namespace": {"bdev_name": "Malloc0"}}),
    );
    assert_eq!(code, -16, "add_ns of the exported Malloc0: {msg}");
}

#[test]
fn default_export_port_in_use_fails_startup() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let disc = free_port().to_string();
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("strata.sock");
    let out = strata_tests::run_tgt(
        &[
            "-r",
            sock.to_str().unwrap(),
            "-m",
            "0x1",
            "--interrupt-mode",
            "--nvmf-port",
            &port,
            "--discovery-port",
            &disc,
        ],
        Duration::from_secs(20),
    );
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "strata-tgt with its NVMe/TCP port taken should exit with an error: {}\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked at"),
        "strata-tgt panicked:\n{stderr}"
    );
    assert!(
        stderr.contains(&port),
        "stderr should name the port {port}:\n{stderr}"
    );
}

#[test]
fn create_flow_via_cli() {
    let t = start_bare(&[]);
    let port = free_port();
    let port_s = port.to_string();
    let uuid = "6a1c9e2b-7d3f-4b8a-9c0d-1e2f3a4b5c6d";
    let nguid = "0123456789abcdef0123456789ABCDEF";
    let eui64 = "a1b2c3d4e5f60718";

    let tr = json_out(&t.cli(&["nvmf_get_transports"]), "get_transports (none)");
    assert_eq!(tr, json!([]), "no transport yet");
    ok(
        &t.cli(&[
            "nvmf_create_transport",
            "-t",
            "TCP",
            "-q",
            "64",
            "-c",
            "8192",
            "-i",
            "65536",
            "-o",
        ]),
        "nvmf_create_transport",
    );
    let tr = json_out(
        &t.cli(&["nvmf_get_transports", "--trtype", "TCP"]),
        "get_transports",
    );
    assert_eq!(tr.as_array().map(Vec::len), Some(1), "{tr}");
    assert_eq!(tr[0]["trtype"], "TCP", "{tr}");
    assert_eq!(tr[0]["max_queue_depth"], 64, "{tr}");
    assert_eq!(tr[0]["in_capsule_data_size"], 8192, "{tr}");
    assert_eq!(tr[0]["max_io_size"], 65536, "{tr}");
    assert_eq!(tr[0]["c2h_success"], false, "{tr}");

    ok(
        &t.cli(&[
            "nvmf_create_subsystem",
            NQN1,
            "-s",
            "SPDK00000000000001",
            "-d",
            "strata test model",
            "-m",
            "8",
        ]),
        "nvmf_create_subsystem",
    );
    ok(
        &t.cli(&["bdev_malloc_create", "-b", "M1", "16", "512"]),
        "bdev_malloc_create",
    );
    ok(
        &t.cli(&["bdev_malloc_create", "-b", "M2", "8", "4096"]),
        "bdev_malloc_create",
    );
    let nsid = json_out(
        &t.cli(&[
            "nvmf_subsystem_add_ns",
            NQN1,
            "M1",
            "-n",
            "3",
            "-u",
            uuid,
            "-g",
            nguid,
            "-e",
            eui64,
        ]),
        "nvmf_subsystem_add_ns",
    );
    assert_eq!(nsid, 3, "add_ns should print the nsid");
    // Without -n: the lowest free nsid.
    let nsid = json_out(&t.cli(&["nvmf_subsystem_add_ns", NQN1, "M2"]), "add_ns M2");
    assert_eq!(nsid, 1, "add_ns without -n should pick nsid 1");
    ok(
        &t.cli(&[
            "nvmf_subsystem_add_listener",
            NQN1,
            "-t",
            "tcp",
            "-a",
            "127.0.0.1",
            "-s",
            &port_s,
        ]),
        "nvmf_subsystem_add_listener",
    );
    ok(
        &t.cli(&["nvmf_subsystem_add_host", NQN1, HOST1]),
        "nvmf_subsystem_add_host",
    );
    ok(
        &t.cli(&["nvmf_subsystem_add_host", NQN1, HOST2]),
        "nvmf_subsystem_add_host",
    );

    let subs = json_out(&t.cli(&["nvmf_get_subsystems"]), "nvmf_get_subsystems");
    let subs = subs.as_array().unwrap().clone();
    assert_eq!(subs.len(), 2, "discovery + {NQN1}: {}", json!(subs));
    let d = find_subsystem(&subs, DISCOVERY_NQN).unwrap();
    assert_eq!(d["listen_addresses"], json!([]), "--no-default: {d}");
    let s = find_subsystem(&subs, NQN1).unwrap();
    assert_eq!(s["subtype"], "NVMe", "{s}");
    assert_eq!(s["serial_number"], "SPDK00000000000001", "{s}");
    assert_eq!(s["model_number"], "strata test model", "{s}");
    assert_eq!(s["max_namespaces"], 8, "{s}");
    assert_eq!(s["allow_any_host"], false, "{s}");
    assert_eq!(
        s["hosts"],
        json!([{"nqn": HOST1}, {"nqn": HOST2}]),
        "hosts: {s}"
    );
    assert_eq!(s["listen_addresses"], json!([listen_address(port)]), "{s}");
    assert_eq!(
        ns_list(&s),
        vec![(1, "M2".to_string()), (3, "M1".to_string())],
        "{s}"
    );
    let ns3 = s["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["nsid"] == 3)
        .unwrap();
    let field = |k: &str| ns3[k].as_str().unwrap_or_default().replace('-', "");
    assert_eq!(
        ns3["uuid"].as_str().map(str::to_lowercase),
        Some(uuid.into())
    );
    assert!(field("nguid").eq_ignore_ascii_case(nguid), "nguid: {ns3}");
    assert!(field("eui64").eq_ignore_ascii_case(eui64), "eui64: {ns3}");
    // Without -u, the namespace UUID is the bdev's.
    let ns1 = &s["namespaces"][0];
    assert_eq!(
        ns1["uuid"].as_str().map(str::to_lowercase),
        t.bdev("M2")["uuid"].as_str().map(str::to_lowercase),
        "{ns1}"
    );
    assert!(claimed(&t, "M1") && claimed(&t, "M2"));
    assert!(tcp_connects(port), "no listener on {port}");

    // Filtered by NQN.
    let one = json_out(&t.cli(&["nvmf_get_subsystems", NQN1]), "get_subsystems NQN");
    assert_eq!(one, json!([s]));

    // allow_any_host on and off.
    ok(
        &t.cli(&["nvmf_subsystem_allow_any_host", NQN1, "-e"]),
        "allow_any_host -e",
    );
    assert_eq!(subsystem(&t, NQN1)["allow_any_host"], true);
    ok(
        &t.cli(&["nvmf_subsystem_allow_any_host", NQN1, "-d"]),
        "allow_any_host -d",
    );
    assert_eq!(subsystem(&t, NQN1)["allow_any_host"], false);

    // And take it apart again.
    ok(
        &t.cli(&["nvmf_subsystem_remove_host", NQN1, HOST1]),
        "remove_host",
    );
    assert_eq!(subsystem(&t, NQN1)["hosts"], json!([{"nqn": HOST2}]));
    ok(
        &t.cli(&["nvmf_subsystem_remove_ns", NQN1, "3"]),
        "remove_ns",
    );
    assert_eq!(ns_list(&subsystem(&t, NQN1)), vec![(1, "M2".to_string())]);
    assert!(!claimed(&t, "M1"), "M1 still claimed after remove_ns");
    ok(
        &t.cli(&[
            "nvmf_subsystem_remove_listener",
            NQN1,
            "-t",
            "TCP",
            "-a",
            "127.0.0.1",
            "-s",
            &port_s,
            "-f",
            "ipv4",
        ]),
        "remove_listener",
    );
    assert_eq!(subsystem(&t, NQN1)["listen_addresses"], json!([]));
    ok(&t.cli(&["nvmf_delete_subsystem", NQN1]), "delete_subsystem");
    assert!(find_subsystem(&subsystems(&t), NQN1).is_none());
    assert!(
        !claimed(&t, "M2"),
        "M2 still claimed after delete_subsystem"
    );
}

#[test]
fn cli_errors_exit_1_with_code() {
    let t = bare_with_subsystem();
    let out = t.cli(&["nvmf_create_subsystem", NQN1]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("-17"), "{}", text(&out.stderr));
    let out = t.cli(&["nvmf_subsystem_add_ns", NQN2, "Nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("-19"), "{}", text(&out.stderr));
}

#[test]
fn transport_errors() {
    let t = start_bare(&[]);
    // Invalid options.
    for (params, what) in [
        (json!({"trtype": "TCP", "max_io_size": 1000}), "max_io_size"),
        (
            json!({"trtype": "TCP", "in_capsule_data_size": 100}),
            "in_capsule_data_size",
        ),
        (
            json!({"trtype": "TCP", "max_queue_depth": 1}),
            "max_queue_depth",
        ),
        (json!({"trtype": "RDMA"}), "trtype"),
        (json!({}), "missing trtype"),
        (json!({"trtype": "TCP", "bogus": 1}), "unknown parameter"),
        (
            json!({"trtype": "TCP", "zcopy": "yes"}),
            "zcopy not a boolean",
        ),
        (
            json!({"trtype": "TCP", "c2h_success_always": 1}),
            "c2h_success_always not a boolean",
        ),
    ] {
        let (code, msg) = t.rpc_err("nvmf_create_transport", params.clone());
        assert_eq!(code, -32602, "{what}: {params} → {code} {msg}");
        assert!(!msg.is_empty(), "{what}: empty message");
    }
    assert_eq!(t.rpc_ok("nvmf_get_transports", Value::Null), json!([]));

    // A listener before the transport exists.
    t.rpc_ok("nvmf_create_subsystem", json!({"nqn": NQN1}));
    let port = free_port();
    let (code, msg) = add_listener(&t, NQN1, port).unwrap_err();
    assert!(
        msg.contains("transport") && msg.contains("TCP"),
        "the error should name the missing TCP transport: {code} {msg}"
    );
    assert!(code < 0, "{code} {msg}");
    assert_eq!(subsystem(&t, NQN1)["listen_addresses"], json!([]));

    // Created once; the second time is EEXIST.
    assert_eq!(
        t.rpc_ok(
            "nvmf_create_transport",
            json!({"trtype": "tcp", "zcopy": false})
        ),
        true
    );
    let (code, msg) = t.rpc_err("nvmf_create_transport", json!({"trtype": "TCP"}));
    assert_eq!(code, -17, "{msg}");
    let tr = t.rpc_ok("nvmf_get_transports", Value::Null);
    assert_eq!(tr[0]["zcopy"], false, "{tr}");
    // Now the listener works.
    add_listener(&t, NQN1, port).unwrap();
    assert!(tcp_connects(port));
}

#[test]
fn subsystem_errors() {
    let t = bare_with_subsystem();
    // Duplicate.
    let (code, msg) = t.rpc_err("nvmf_create_subsystem", json!({"nqn": NQN1}));
    assert_eq!(code, -17, "duplicate subsystem: {msg}");
    let (code, msg) = t.rpc_err("nvmf_create_subsystem", json!({"nqn": DISCOVERY_NQN}));
    assert_eq!(code, -17, "the discovery NQN: {msg}");
    // Bad NQNs.
    for nqn in [
        "foo",
        "nqn.bad",
        "nqn.2016-06.io.spdk:with space",
        "nqn.2014-08.org.nvmexpress:uuid:not-a-uuid",
    ] {
        let (code, msg) = t.rpc_err("nvmf_create_subsystem", json!({"nqn": nqn}));
        assert!(
            code == -32602 || code == -22,
            "bad NQN {nqn:?}: {code} {msg}"
        );
        assert!(!msg.is_empty(), "bad NQN {nqn:?}: empty message");
    }
    let long = format!("nqn.2016-06.io.spdk:{}", "x".repeat(220));
    let (code, msg) = t.rpc_err("nvmf_create_subsystem", json!({"nqn": long}));
    assert!(code == -32602 || code == -22, "too long: {code} {msg}");
    // Too long serial/model.
    let (code, msg) = t.rpc_err(
        "nvmf_create_subsystem",
        json!({"nqn": NQN2, "serial_number": "X".repeat(21)}),
    );
    assert!(code == -32602 || code == -22, "serial: {code} {msg}");
    assert_eq!(subsystems(&t).len(), 2, "failed creations left something");

    // Unknown subsystem, for every method taking an NQN.
    let unknown = "nqn.2016-06.io.spdk:nosuch";
    for (m, p) in [
        ("nvmf_delete_subsystem", json!({"nqn": unknown})),
        (
            "nvmf_subsystem_add_listener",
            json!({"nqn": unknown, "listen_address": listen_address(free_port())}),
        ),
        (
            "nvmf_subsystem_add_ns",
            json!({"nqn": unknown, "namespace": {"bdev_name": "X"}}),
        ),
        (
            "nvmf_subsystem_remove_ns",
            json!({"nqn": unknown, "nsid": 1}),
        ),
        (
            "nvmf_subsystem_add_host",
            json!({"nqn": unknown, "host": HOST1}),
        ),
        (
            "nvmf_subsystem_allow_any_host",
            json!({"nqn": unknown, "allow_any_host": true}),
        ),
        ("nvmf_get_subsystems", json!({"nqn": unknown})),
        ("nvmf_subsystem_get_controllers", json!({"nqn": unknown})),
        ("nvmf_subsystem_get_qpairs", json!({"nqn": unknown})),
    ] {
        let (code, msg) = t.rpc_err(m, p);
        assert_eq!(code, -19, "{m} on an unknown subsystem: {msg}");
    }
    // The discovery subsystem cannot be deleted.
    let (code, msg) = t.rpc_err("nvmf_delete_subsystem", json!({"nqn": DISCOVERY_NQN}));
    assert!(code < 0, "{code} {msg}");
    assert!(find_subsystem(&subsystems(&t), DISCOVERY_NQN).is_some());

    // Hosts: duplicate, unknown, invalid.
    t.rpc_ok(
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN1, "host": HOST1}),
    );
    let (code, msg) = t.rpc_err(
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN1, "host": HOST1}),
    );
    assert_eq!(code, -17, "duplicate host: {msg}");
    let (code, msg) = t.rpc_err(
        "nvmf_subsystem_remove_host",
        json!({"nqn": NQN1, "host": HOST2}),
    );
    assert_eq!(code, -19, "unknown host: {msg}");
    let (code, msg) = t.rpc_err(
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN1, "host": "not an nqn"}),
    );
    assert!(code == -32602 || code == -22, "bad host NQN: {code} {msg}");
    let (code, msg) = t.rpc_err("nvmf_subsystem_allow_any_host", json!({"nqn": NQN1}));
    assert_eq!(code, -32602, "allow_any_host without the flag: {msg}");
}

#[test]
fn listener_errors() {
    let t = bare_with_subsystem();
    t.rpc_ok("nvmf_create_subsystem", json!({"nqn": NQN2}));

    // A port another process listens on.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let (code, msg) = add_listener(&t, NQN1, busy_port).unwrap_err();
    assert!(code < 0, "{code} {msg}");
    assert!(
        msg.contains(&busy_port.to_string()),
        "the error should name the port {busy_port}: {code} {msg}"
    );
    assert_eq!(subsystem(&t, NQN1)["listen_addresses"], json!([]));
    t.rpc_ok("spdk_get_version", Value::Null);
    drop(busy);

    // Bad addresses.
    for (la, what) in [
        (
            json!({"trtype": "TCP", "traddr": "not-an-ip", "trsvcid": "4420"}),
            "traddr",
        ),
        (
            json!({"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "port"}),
            "trsvcid",
        ),
        (
            json!({"trtype": "RDMA", "traddr": "127.0.0.1", "trsvcid": "4420"}),
            "trtype",
        ),
        (json!({"trtype": "TCP", "trsvcid": "4420"}), "no traddr"),
    ] {
        let (code, msg) = t.rpc_err(
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN1, "listen_address": la}),
        );
        assert!(code == -32602 || code == -22, "{what}: {code} {msg}");
    }
    let (code, msg) = t.rpc_err("nvmf_subsystem_add_listener", json!({"nqn": NQN1}));
    assert_eq!(code, -32602, "no listen_address: {msg}");

    // Twice on one subsystem: EEXIST; shared between two subsystems: fine.
    let port = free_port();
    add_listener(&t, NQN1, port).unwrap();
    let (code, msg) = add_listener(&t, NQN1, port).unwrap_err();
    assert_eq!(code, -17, "duplicate listener: {msg}");
    add_listener(&t, NQN2, port).unwrap();
    // Removing one user keeps the port open for the other.
    t.rpc_ok(
        "nvmf_subsystem_remove_listener",
        json!({"nqn": NQN1, "listen_address": listen_address(port)}),
    );
    assert!(tcp_connects(port), "shared listener closed too early");
    let (code, msg) = t.rpc_err(
        "nvmf_subsystem_remove_listener",
        json!({"nqn": NQN1, "listen_address": listen_address(port)}),
    );
    assert_eq!(code, -19, "removing a listener that is not there: {msg}");
    t.rpc_ok(
        "nvmf_subsystem_remove_listener",
        json!({"nqn": NQN2, "listen_address": listen_address(port)}),
    );
    assert!(
        wait_for(Duration::from_secs(5), || !tcp_connects(port)),
        "port {port} still accepts after its last listener was removed"
    );
}

#[test]
fn namespace_errors() {
    let t = bare_with_subsystem();
    t.rpc_ok("nvmf_create_subsystem", json!({"nqn": NQN2}));
    malloc(&t, "B1");
    malloc(&t, "B2");
    let add = |nqn: &str, ns: Value| {
        t.rpc(
            "nvmf_subsystem_add_ns",
            json!({"nqn": nqn, "namespace": ns}),
        )
    };

    assert_eq!(add(NQN1, json!({"bdev_name": "B1"})).unwrap(), 1);
    // Claimed by another subsystem, by the same one, by a virtual bdev.
    let (code, msg) = add(NQN2, json!({"bdev_name": "B1"})).unwrap_err();
    assert_eq!(code, -16, "add_ns of a claimed bdev: {msg}");
    let (code, msg) = add(NQN1, json!({"bdev_name": "B1"})).unwrap_err();
    assert_eq!(code, -16, "add_ns of its own namespace's bdev: {msg}");
    t.rpc_ok("bdev_error_create", json!({"base_name": "B2"}));
    let (code, msg) = add(NQN1, json!({"bdev_name": "B2"})).unwrap_err();
    assert_eq!(
        code, -16,
        "add_ns of a bdev claimed by an error bdev: {msg}"
    );
    // Unknown bdev.
    let (code, msg) = add(NQN1, json!({"bdev_name": "Nope"})).unwrap_err();
    assert_eq!(code, -19, "add_ns of an unknown bdev: {msg}");
    // nsid taken / out of range; bad identifiers.
    malloc(&t, "B3");
    let (code, msg) = add(NQN1, json!({"bdev_name": "B3", "nsid": 1})).unwrap_err();
    assert_eq!(code, -17, "nsid taken: {msg}");
    let (code, msg) = add(NQN1, json!({"bdev_name": "B3", "nsid": 33})).unwrap_err();
    assert!(code == -32602 || code == -22, "nsid 33 of 32: {code} {msg}");
    for (ns, what) in [
        (json!({"bdev_name": "B3", "uuid": "xyz"}), "uuid"),
        (json!({"bdev_name": "B3", "nguid": "0011"}), "nguid"),
        (
            json!({"bdev_name": "B3", "eui64": "zz11223344556677"}),
            "eui64",
        ),
        (json!({"bdev_name": "B3", "bogus": 1}), "unknown parameter"),
        (json!({"nsid": 5}), "no bdev_name"),
    ] {
        let (code, msg) = add(NQN1, ns).unwrap_err();
        assert_eq!(code, -32602, "{what}: {msg}");
    }
    // Failed attempts did not leave a claim behind.
    assert!(!claimed(&t, "B3"), "B3 claimed after failed add_ns");
    assert_eq!(ns_list(&subsystem(&t, NQN1)), vec![(1, "B1".to_string())]);
    // Discovery has no namespaces.
    let (code, msg) = add(DISCOVERY_NQN, json!({"bdev_name": "B3"})).unwrap_err();
    assert!(code < 0, "{code} {msg}");
    assert!(!claimed(&t, "B3"));

    // remove_ns of an unknown nsid.
    let (code, msg) = t.rpc_err("nvmf_subsystem_remove_ns", json!({"nqn": NQN1, "nsid": 7}));
    assert_eq!(code, -19, "remove_ns of an unknown nsid: {msg}");
    let (code, msg) = t.rpc_err("nvmf_subsystem_remove_ns", json!({"nqn": NQN1}));
    assert_eq!(code, -32602, "remove_ns without nsid: {msg}");
    assert!(claimed(&t, "B1"));
}

#[test]
fn delete_subsystem_frees_bdev_and_port() {
    let t = bare_with_subsystem();
    malloc(&t, "D1");
    t.rpc_ok(
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN1, "namespace": {"bdev_name": "D1"}}),
    );
    let port = free_port();
    add_listener(&t, NQN1, port).unwrap();
    assert!(claimed(&t, "D1"));
    assert!(tcp_connects(port));

    t.rpc_ok("nvmf_delete_subsystem", json!({"nqn": NQN1}));
    assert!(find_subsystem(&subsystems(&t), NQN1).is_none());
    assert!(
        !claimed(&t, "D1"),
        "D1 still claimed after delete_subsystem"
    );
    // The port is really closed: another process can bind it.
    assert!(
        wait_for(Duration::from_secs(5), || {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        }),
        "port {port} still bound after delete_subsystem"
    );

    // The bdev and the port are usable by a new subsystem.
    t.rpc_ok(
        "nvmf_create_subsystem",
        json!({"nqn": NQN2, "allow_any_host": true}),
    );
    assert_eq!(
        t.rpc_ok(
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN2, "namespace": {"bdev_name": "D1"}}),
        ),
        1
    );
    add_listener(&t, NQN2, port).unwrap();
    assert!(tcp_connects(port));
    // And the same NQN can be created again.
    t.rpc_ok("nvmf_create_subsystem", json!({"nqn": NQN1}));
    assert_eq!(ns_list(&subsystem(&t, NQN1)), vec![]);
}

#[test]
fn save_config_round_trip() {
    let files = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let (p1, p2, disc) = (ports[0], ports[1], ports[2]);
    let uuid = "6a1c9e2b-7d3f-4b8a-9c0d-1e2f3a4b5c6d";

    let mut a = start_bare(&[]);
    a.rpc_ok(
        "nvmf_create_transport",
        json!({"trtype": "TCP", "max_queue_depth": 64, "in_capsule_data_size": 8192, "c2h_success": false}),
    );
    malloc(&a, "S1");
    malloc(&a, "S2");
    malloc(&a, "S3");
    malloc(&a, "Loose");
    a.rpc_ok(
        "nvmf_create_subsystem",
        json!({"nqn": NQN1, "serial_number": "SN0001", "model_number": "Round Trip", "max_namespaces": 8}),
    );
    a.rpc_ok(
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN1, "namespace": {"bdev_name": "S1", "nsid": 5, "uuid": uuid,
               "nguid": "00112233445566778899aabbccddeeff", "eui64": "0011223344556677"}}),
    );
    a.rpc_ok(
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN1, "namespace": {"bdev_name": "S2"}}),
    );
    a.rpc_ok(
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN1, "host": HOST1}),
    );
    a.rpc_ok(
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN1, "host": HOST2}),
    );
    add_listener(&a, NQN1, p1).unwrap();
    add_listener(&a, NQN1, p2).unwrap();
    a.rpc_ok(
        "nvmf_create_subsystem",
        json!({"nqn": NQN2, "allow_any_host": true}),
    );
    a.rpc_ok(
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN2, "namespace": {"bdev_name": "S3", "nsid": 2}}),
    );
    add_listener(&a, NQN2, p1).unwrap();
    add_listener(&a, DISCOVERY_NQN, disc).unwrap();

    let subs_before = a.rpc_ok("nvmf_get_subsystems", Value::Null);
    let tr_before = a.rpc_ok("nvmf_get_transports", Value::Null);
    let cfg = a.rpc_ok("save_config", Value::Null);
    let names: Vec<&str> = cfg["subsystems"]
        .as_array()
        .unwrap_or_else(|| panic!("no subsystems array: {cfg}"))
        .iter()
        .map(|s| s["subsystem"].as_str().unwrap_or_default())
        .collect();
    let bdev_at = names.iter().position(|n| *n == "bdev");
    let nvmf_at = names.iter().position(|n| *n == "nvmf");
    assert!(
        matches!((bdev_at, nvmf_at), (Some(b), Some(n)) if b < n),
        "save_config should have \"nvmf\" after \"bdev\": {names:?}"
    );
    let path = files.path().join("nvmf.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();

    a.signal(libc::SIGTERM);
    let status = a.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status}");
    drop(a);

    let b = Target::start(&["--json", path.to_str().unwrap(), "--no-default"]);
    b.rpc_ok("framework_wait_init", Value::Null);
    let subs_after = b.rpc_ok("nvmf_get_subsystems", Value::Null);
    assert_eq!(
        subs_after, subs_before,
        "nvmf_get_subsystems differs after save_config + reload\nbefore: {subs_before:#}\nafter: {subs_after:#}"
    );
    assert_eq!(
        b.rpc_ok("nvmf_get_transports", Value::Null),
        tr_before,
        "transport options differ after reload"
    );
    for n in ["S1", "S2", "S3"] {
        assert!(claimed(&b, n), "{n} not claimed after reload");
    }
    assert!(!claimed(&b, "Loose"));
    for p in [p1, p2, disc] {
        assert!(tcp_connects(p), "no listener on {p} after reload");
    }

    // Saving again yields the same nvmf config.
    let cfg2 = b.rpc_ok("save_config", Value::Null);
    let nvmf = |c: &Value| {
        c["subsystems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subsystem"] == "nvmf")
            .cloned()
    };
    assert_eq!(nvmf(&cfg2), nvmf(&cfg), "nvmf config changed by a reload");
}

#[test]
fn save_config_of_default_export_reloads() {
    let files = tempfile::tempdir().unwrap();
    let (a, port, _disc) = start_default(&[]);
    let before = a.rpc_ok("nvmf_get_subsystems", Value::Null);
    let cfg = a.rpc_ok("save_config", Value::Null);
    let path = files.path().join("default.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    drop(a);
    let b = Target::start(&["--json", path.to_str().unwrap(), "--no-default"]);
    assert_eq!(b.rpc_ok("nvmf_get_subsystems", Value::Null), before);
    assert!(claimed(&b, "Malloc0"));
    assert!(tcp_connects(port));
}

#[test]
fn malloc_delete_removes_namespace() {
    let t = bare_with_subsystem();
    malloc(&t, "H1");
    malloc(&t, "H2");
    t.rpc_ok(
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN1, "namespace": {"bdev_name": "H1", "nsid": 1}}),
    );
    t.rpc_ok(
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN1, "namespace": {"bdev_name": "H2", "nsid": 2}}),
    );
    let port = free_port();
    add_listener(&t, NQN1, port).unwrap();

    let r = t.rpc("bdev_malloc_delete", json!({"name": "H1"}));
    assert!(r.is_ok(), "bdev_malloc_delete of an exported bdev: {r:?}");
    assert!(
        wait_for(Duration::from_secs(5), || {
            ns_list(&subsystem(&t, NQN1)) == vec![(2, "H2".to_string())]
        }),
        "namespace 1 still listed after its bdev was deleted: {}",
        subsystem(&t, NQN1)
    );
    let (code, _) = t.rpc_err("bdev_get_bdevs", json!({"name": "H1"}));
    assert_eq!(code, -19);
    assert!(claimed(&t, "H2"));
    assert!(tcp_connects(port));
    // nsid 1 is free again, and a new H1 can take it.
    malloc(&t, "H1");
    assert_eq!(
        t.rpc_ok(
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN1, "namespace": {"bdev_name": "H1"}}),
        ),
        1
    );
    // Deleting the subsystem after a hot remove is fine too.
    t.rpc_ok("bdev_malloc_delete", json!({"name": "H2"}));
    t.rpc_ok("nvmf_delete_subsystem", json!({"nqn": NQN1}));
    assert!(!claimed(&t, "H1"));
    t.rpc_ok("spdk_get_version", Value::Null);
}

#[test]
fn controllers_and_qpairs_empty_without_hosts() {
    let (t, _port, _disc) = start_default(&[]);
    for nqn in [DEFAULT_NQN, DISCOVERY_NQN] {
        assert_eq!(
            t.rpc_ok("nvmf_subsystem_get_controllers", json!({"nqn": nqn})),
            json!([]),
            "{nqn}"
        );
        assert_eq!(
            t.rpc_ok("nvmf_subsystem_get_qpairs", json!({"nqn": nqn})),
            json!([]),
            "{nqn}"
        );
    }
    let v = json_out(
        &t.cli(&["nvmf_subsystem_get_controllers", DEFAULT_NQN]),
        "get_controllers",
    );
    assert_eq!(v, json!([]));
    let v = json_out(
        &t.cli(&["nvmf_subsystem_get_qpairs", DEFAULT_NQN]),
        "get_qpairs",
    );
    assert_eq!(v, json!([]));
}

#[test]
fn stats_have_one_poll_group_per_reactor() {
    for (mask, n) in [("0x1", 1), ("0x3", 2)] {
        let (t, _port, _disc) = start_default(&["-m", mask]);
        let reactors = t.rpc_ok("framework_get_reactors", Value::Null);
        assert_eq!(reactors["reactors"].as_array().map(Vec::len), Some(n));
        let s = json_out(&t.cli(&["nvmf_get_stats"]), "nvmf_get_stats");
        assert!(s["tick_rate"].as_u64().is_some_and(|r| r > 0), "{s}");
        let groups = s["poll_groups"]
            .as_array()
            .unwrap_or_else(|| panic!("no poll_groups: {s}"));
        assert_eq!(groups.len(), n, "-m {mask}: {s}");
        let mut names: Vec<&str> = groups.iter().map(|g| g["name"].as_str().unwrap()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "poll group names not distinct: {s}");
        for g in groups {
            assert_eq!(g["current_admin_qpairs"], 0, "{s}");
            assert_eq!(g["current_io_qpairs"], 0, "{s}");
        }
    }
}
