//! Basic JSON-RPC behaviour: version, method list, the default bdev, socket permissions.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use serde_json::{json, Value};
use strata_tests::{documented_methods, is_uuid, Target};

#[test]
fn spdk_get_version_mentions_strata() {
    let t = Target::start(&[]);
    let v = t.rpc_ok("spdk_get_version", Value::Null);
    let version = v["version"]
        .as_str()
        .unwrap_or_else(|| panic!("no version string: {v}"));
    assert!(version.contains("strata"), "version {version:?}");
    assert!(v["fields"].is_object(), "no fields object: {v}");
    assert!(v["fields"]["major"].is_u64(), "fields.major: {v}");
    assert!(v["fields"]["minor"].is_u64(), "fields.minor: {v}");
    assert!(v["fields"]["patch"].is_u64(), "fields.patch: {v}");
}

#[test]
fn rpc_get_methods_lists_every_documented_method() {
    let documented = documented_methods();
    assert!(
        documented.len() >= 20,
        "parsed too few methods from docs/rpc.md: {documented:?}"
    );
    let t = Target::start(&[]);
    let v = t.rpc_ok("rpc_get_methods", Value::Null);
    let listed: Vec<&str> = v
        .as_array()
        .unwrap_or_else(|| panic!("rpc_get_methods: not an array: {v}"))
        .iter()
        .map(|m| {
            m.as_str()
                .unwrap_or_else(|| panic!("non-string method {m}"))
        })
        .collect();
    let missing: Vec<&String> = documented
        .iter()
        .filter(|m| !listed.contains(&m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "missing from rpc_get_methods: {missing:?}"
    );
    // `current: true` is accepted too.
    let v2 = t.rpc_ok("rpc_get_methods", json!({"current": true}));
    assert!(v2.is_array(), "rpc_get_methods current=true: {v2}");
}

#[test]
fn default_malloc0() {
    let t = Target::start(&[]);
    let bdevs = t.bdevs();
    let m = bdevs
        .iter()
        .find(|b| b["name"] == "Malloc0")
        .unwrap_or_else(|| panic!("no Malloc0 in {bdevs:?}"));
    assert_eq!(m["block_size"], 4096, "{m}");
    assert_eq!(m["num_blocks"], 65536, "{m}");
    assert_eq!(m["product_name"], "Malloc disk", "{m}");
    // Exported as namespace 1 of the default subsystem, so the NVMe-oF target claims it.
    assert_eq!(m["claimed"], true, "{m}");
    let uuid = m["uuid"].as_str().unwrap_or_else(|| panic!("uuid: {m}"));
    assert!(is_uuid(uuid), "not a uuid: {uuid:?}");
    assert_eq!(m["supported_io_types"]["read"], true, "{m}");
    assert_eq!(m["supported_io_types"]["write"], true, "{m}");
    assert!(m["aliases"].is_array(), "aliases: {m}");
    // By name, too.
    let by_name = t.bdev("Malloc0");
    assert_eq!(by_name["uuid"], m["uuid"]);
}

#[test]
fn no_default_means_no_bdevs() {
    let t = Target::start(&["--no-default"]);
    let v = t.rpc_ok("bdev_get_bdevs", Value::Null);
    assert_eq!(v, json!([]), "--no-default must start without bdevs");
}

#[test]
fn get_bdevs_unknown_name_is_enodev() {
    let t = Target::start(&["--no-default"]);
    let (code, msg) = t.rpc_err("bdev_get_bdevs", json!({"name": "nope"}));
    assert_eq!(code, -19, "{msg}");
}

#[test]
fn get_iostat_reports_default_bdev() {
    let t = Target::start(&[]);
    let v = t.rpc_ok("bdev_get_iostat", Value::Null);
    assert!(v["tick_rate"].is_u64(), "tick_rate: {v}");
    assert!(v["ticks"].is_u64(), "ticks: {v}");
    let bdevs = v["bdevs"]
        .as_array()
        .unwrap_or_else(|| panic!("bdevs: {v}"));
    let m = bdevs
        .iter()
        .find(|b| b["name"] == "Malloc0")
        .unwrap_or_else(|| panic!("no Malloc0 in iostat {v}"));
    for key in [
        "bytes_read",
        "num_read_ops",
        "bytes_written",
        "num_write_ops",
        "bytes_unmapped",
        "num_unmap_ops",
        "num_write_zeroes_ops",
        "read_latency_ticks",
        "write_latency_ticks",
        "num_io_errors",
    ] {
        assert!(m[key].is_u64(), "iostat {key}: {m}");
    }
    let one = t.rpc_ok("bdev_get_iostat", json!({"name": "Malloc0"}));
    assert_eq!(one["bdevs"].as_array().map(Vec::len), Some(1), "{one}");
}

#[test]
fn wait_init_and_examine_return_true() {
    let t = Target::start(&[]);
    assert_eq!(t.rpc_ok("framework_wait_init", Value::Null), json!(true));
    assert_eq!(t.rpc_ok("bdev_wait_for_examine", Value::Null), json!(true));
}

#[test]
fn socket_mode_is_0600() {
    let t = Target::start(&[]);
    let meta = std::fs::metadata(t.sock()).unwrap();
    assert!(meta.file_type().is_socket(), "not a socket");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "socket mode {:o}",
        meta.permissions().mode() & 0o777
    );
}

#[test]
fn response_envelope_is_jsonrpc_2() {
    let t = Target::start(&[]);
    let mut c = t.connect();
    let resp = c.request("spdk_get_version", Value::Null);
    assert_eq!(resp["jsonrpc"], "2.0", "{resp}");
    assert!(resp.get("result").is_some(), "{resp}");
    assert!(resp.get("error").is_none(), "{resp}");
}

#[test]
fn pipelined_requests_answered_in_order() {
    let t = Target::start(&[]);
    let mut c = t.connect();
    // Three requests in one write, separated by nothing / a newline, and a trailing newline.
    let batch = concat!(
        r#"{"jsonrpc":"2.0","id":101,"method":"spdk_get_version"}"#,
        r#"{"jsonrpc":"2.0","id":102,"method":"no_such_method"}"#,
        "\n",
        r#"{"jsonrpc":"2.0","id":103,"method":"bdev_get_bdevs","params":{"name":"Malloc0"}}"#,
        "\n"
    );
    c.send_raw(batch.as_bytes()).unwrap();
    let r1 = c.read_value().unwrap().expect("response 1");
    let r2 = c.read_value().unwrap().expect("response 2");
    let r3 = c.read_value().unwrap().expect("response 3");
    assert_eq!(r1["id"], 101, "{r1}");
    assert!(r1["result"]["version"].is_string(), "{r1}");
    assert_eq!(r2["id"], 102, "{r2}");
    assert_eq!(r2["error"]["code"], -32601, "{r2}");
    assert_eq!(r3["id"], 103, "{r3}");
    assert_eq!(r3["result"][0]["name"], "Malloc0", "{r3}");
    // The connection stays usable.
    let v = c.call("spdk_get_version", Value::Null).unwrap();
    assert!(v["version"].is_string());
}

#[test]
fn string_ids_are_echoed() {
    let t = Target::start(&[]);
    let mut c = t.connect();
    c.send_raw(br#"{"jsonrpc":"2.0","id":"abc-1","method":"spdk_get_version"}"#)
        .unwrap();
    let r = c.read_value().unwrap().expect("response");
    assert_eq!(r["id"], "abc-1", "{r}");
}
