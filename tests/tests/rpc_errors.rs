//! JSON-RPC error paths and server robustness (bad input, huge input, slow and many clients).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strata_tests::{wait_for, RpcConn, Target};

fn assert_alive(t: &Target) {
    let v = t.rpc_ok("spdk_get_version", Value::Null);
    assert!(v["version"].is_string(), "{v}");
}

/// Reads the next response on `c` and returns its error code (panics on a success response).
fn next_error_code(c: &mut RpcConn) -> i64 {
    let r = c
        .read_value()
        .unwrap_or_else(|e| panic!("reading error response: {e}"))
        .expect("server closed the connection without an error response");
    assert_eq!(r["jsonrpc"], "2.0", "{r}");
    r["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error response, got {r}"))
}

/// After a parse error the server closes the connection: reads hit EOF (or a reset).
fn assert_closed(c: &mut RpcConn) {
    match c.read_value() {
        Ok(None) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Some(v)) => panic!("expected the connection to be closed, got {v}"),
        Err(e) => panic!("expected the connection to be closed, got error {e}"),
    }
}

#[test]
fn unknown_method() {
    let t = Target::start(&[]);
    let (code, msg) = t.rpc_err("no_such_method", Value::Null);
    assert_eq!(code, -32601, "{msg}");
    let (code, msg) = t.rpc_err("bdev_frobnicate", json!({"name": "x"}));
    assert_eq!(code, -32601, "{msg}");
    assert_alive(&t);
}

#[test]
fn unknown_method_keeps_connection_usable() {
    let t = Target::start(&[]);
    let mut c = t.connect();
    assert_eq!(c.call("no_such_method", Value::Null).unwrap_err().0, -32601);
    assert!(c.call("spdk_get_version", Value::Null).is_ok());
}

#[test]
fn malformed_json_bad_token() {
    let t = Target::start(&[]);
    let mut c = t.connect();
    c.send_raw(b"{bad json}").unwrap();
    assert_eq!(next_error_code(&mut c), -32700);
    assert_closed(&mut c);
    assert_alive(&t);
}

#[test]
fn malformed_json_garbage_then_eof() {
    let t = Target::start(&[]);
    let mut c = t.connect();
    c.send_raw(br#"{"jsonrpc":"2.0","method":@#!%garbage"#)
        .unwrap();
    c.shutdown_write().unwrap();
    assert_eq!(next_error_code(&mut c), -32700);
    assert_closed(&mut c);
    assert_alive(&t);
}

#[test]
fn malformed_json_after_a_good_request() {
    // The good request is answered first, then the parse error.
    let t = Target::start(&[]);
    let mut c = t.connect();
    c.send_raw(br#"{"jsonrpc":"2.0","id":7,"method":"spdk_get_version"} ]]garbage"#)
        .unwrap();
    let first = c.read_value().unwrap().expect("first response");
    assert_eq!(first["id"], 7, "{first}");
    assert!(first["result"]["version"].is_string(), "{first}");
    assert_eq!(next_error_code(&mut c), -32700);
    assert_closed(&mut c);
    assert_alive(&t);
}

#[test]
fn truncated_request_then_eof_does_not_hurt() {
    let t = Target::start(&[]);
    {
        let c = t.connect();
        let mut s = c.stream;
        s.write_all(br#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_ver"#)
            .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // Whatever the server answers (a parse error or nothing), it must close.
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    assert_alive(&t);
}

#[test]
fn not_a_request_object() {
    let t = Target::start(&[]);
    for bad in [
        &br#"42"#[..],
        br#"{"jsonrpc":"2.0","id":1}"#,
        br#"{"jsonrpc":"2.0","id":1,"method":5}"#,
    ] {
        let mut c = t.connect();
        c.send_raw(bad).unwrap();
        c.send_raw(b"\n").unwrap();
        let code = next_error_code(&mut c);
        assert_eq!(code, -32600, "for {}", String::from_utf8_lossy(bad));
    }
    assert_alive(&t);
}

#[test]
fn missing_param_names_it() {
    let t = Target::start(&["--no-default"]);
    let (code, msg) = t.rpc_err(
        "bdev_malloc_create",
        json!({"name": "X", "num_blocks": 100}),
    );
    assert_eq!(code, -32602, "{msg}");
    assert!(
        msg.contains("block_size"),
        "message must name block_size: {msg:?}"
    );

    let (code, msg) = t.rpc_err(
        "bdev_malloc_create",
        json!({"name": "X", "block_size": 512}),
    );
    assert_eq!(code, -32602, "{msg}");
    assert!(
        msg.contains("num_blocks"),
        "message must name num_blocks: {msg:?}"
    );

    let (code, msg) = t.rpc_err("bdev_malloc_delete", json!({}));
    assert_eq!(code, -32602, "{msg}");
    assert!(msg.contains("name"), "message must name name: {msg:?}");

    let (code, msg) = t.rpc_err("bdev_uring_create", json!({"name": "U"}));
    assert_eq!(code, -32602, "{msg}");
    assert!(
        msg.contains("filename"),
        "message must name filename: {msg:?}"
    );

    let (code, msg) = t.rpc_err("bdev_error_create", json!({}));
    assert_eq!(code, -32602, "{msg}");
    assert!(
        msg.contains("base_name"),
        "message must name base_name: {msg:?}"
    );

    // No params at all where some are required.
    let (code, msg) = t.rpc_err("bdev_malloc_create", Value::Null);
    assert_eq!(code, -32602, "{msg}");

    assert!(t.bdevs().is_empty(), "a failed create left a bdev behind");
}

#[test]
fn ill_typed_param_names_it() {
    let t = Target::start(&["--no-default"]);
    let (code, msg) = t.rpc_err(
        "bdev_malloc_create",
        json!({"name": "X", "num_blocks": 100, "block_size": "abc"}),
    );
    assert_eq!(code, -32602, "{msg}");
    assert!(
        msg.contains("block_size"),
        "message must name block_size: {msg:?}"
    );

    let (code, msg) = t.rpc_err(
        "bdev_malloc_create",
        json!({"name": "X", "num_blocks": -5, "block_size": 512}),
    );
    assert_eq!(code, -32602, "{msg}");
    assert!(
        msg.contains("num_blocks"),
        "message must name num_blocks: {msg:?}"
    );

    let (code, msg) = t.rpc_err(
        "bdev_malloc_create",
        json!({"name": 17, "num_blocks": 100, "block_size": 512}),
    );
    assert_eq!(code, -32602, "{msg}");
    assert!(msg.contains("name"), "message must name name: {msg:?}");

    let (code, msg) = t.rpc_err(
        "bdev_malloc_create",
        json!({"name": "X", "num_blocks": 100, "block_size": 512, "uuid": "not-a-uuid"}),
    );
    assert_eq!(code, -32602, "{msg}");
    assert!(msg.contains("uuid"), "message must name uuid: {msg:?}");

    // params must be structured (JSON-RPC 2.0): a string is rejected, either as an invalid
    // request (-32600) or as invalid params (-32602); the docs do not pin this down.
    let (code, msg) = t.rpc_err("bdev_malloc_create", json!("M"));
    assert!(code == -32600 || code == -32602, "{code} {msg}");

    assert!(t.bdevs().is_empty(), "a failed create left a bdev behind");
}

#[test]
fn block_size_not_power_of_two() {
    let t = Target::start(&["--no-default"]);
    for bs in [1000, 0, 513] {
        let (code, msg) = t.rpc_err(
            "bdev_malloc_create",
            json!({"name": "X", "num_blocks": 100, "block_size": bs}),
        );
        assert_eq!(code, -32602, "block_size {bs}: {msg}");
        assert!(
            msg.contains("block_size"),
            "message must name block_size: {msg:?}"
        );
    }
    assert!(t.bdevs().is_empty());
}

#[test]
fn duplicate_name_is_eexist() {
    let t = Target::start(&[]);
    let (code, msg) = t.rpc_err(
        "bdev_malloc_create",
        json!({"name": "Malloc0", "num_blocks": 8, "block_size": 512}),
    );
    assert_eq!(code, -17, "{msg}");
    let (code, msg) = t.rpc_err(
        "bdev_null_create",
        json!({"name": "Malloc0", "num_blocks": 8, "block_size": 512}),
    );
    assert_eq!(code, -17, "{msg}");
    // The original is untouched.
    let b = t.bdev("Malloc0");
    assert_eq!(b["num_blocks"], 65536, "{b}");
    assert_eq!(b["block_size"], 4096, "{b}");
    assert_eq!(t.bdevs().len(), 1);
}

#[test]
fn delete_unknown_is_enodev() {
    let t = Target::start(&[]);
    for m in [
        "bdev_malloc_delete",
        "bdev_null_delete",
        "bdev_uring_delete",
        "bdev_aio_delete",
        "bdev_error_delete",
        "bdev_delay_delete",
    ] {
        let (code, msg) = t.rpc_err(m, json!({"name": "NoSuchBdev"}));
        assert_eq!(code, -19, "{m}: {msg}");
    }
}

#[test]
fn oversized_request_is_rejected_and_server_survives() {
    let t = Target::start(&["--no-default"]);
    let big = "A".repeat(2 * 1024 * 1024);
    let req = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "bdev_malloc_create",
        "params": {"name": big, "num_blocks": 8, "block_size": 512},
    });
    let bytes = serde_json::to_vec(&req).unwrap();
    let mut c = t.connect();
    let start = Instant::now();
    // The server may stop reading and close after 1 MiB: a failed write is acceptable.
    let write_res = c.send_raw(&bytes);
    let read_res = c.read_value();
    match (&write_res, &read_res) {
        (_, Ok(Some(v))) => {
            assert_eq!(
                v["error"]["code"], -32600,
                "oversized request must get -32600, got {v}"
            );
        }
        (_, Ok(None)) => {}
        (_, Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) => {}
        (_, Err(e)) => panic!("oversized request: write {write_res:?}, read error {e}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "oversized request took {:?}",
        start.elapsed()
    );
    // After an error response the server closes that connection.
    if let Ok(Some(_)) = read_res {
        assert_closed(&mut c);
    }
    drop(c);
    // Other clients keep working, and nothing was created.
    assert_alive(&t);
    assert!(t.bdevs().is_empty(), "oversized request created a bdev");
    let mut c2 = t.connect();
    for _ in 0..5 {
        assert!(c2.call("spdk_get_version", Value::Null).is_ok());
    }
}

#[test]
fn large_but_legal_request_is_fine() {
    // ~512 KiB of whitespace padding inside a request stays under the 1 MiB limit.
    let t = Target::start(&[]);
    let mut c = t.connect();
    let pad = " ".repeat(512 * 1024);
    let req = format!(r#"{{"jsonrpc":"2.0","id":5,{pad}"method":"spdk_get_version"}}"#);
    c.send_raw(req.as_bytes()).unwrap();
    let r = c.read_value().unwrap().expect("response");
    assert_eq!(r["id"], 5, "{r}");
    assert!(r["result"]["version"].is_string(), "{r}");
}

#[test]
fn slow_drip_client_does_not_stall_others() {
    let t = Target::start(&[]);
    let mut drip = t.connect();
    let req = br#"{"jsonrpc":"2.0","id":99,"method":"spdk_get_version"}"#;
    let prefix_len = 15;
    let sock = t.sock().to_path_buf();

    // The drip client: one byte every 200 ms, in the background.
    let mut drip_stream = drip.stream.try_clone().unwrap();
    let dripper = std::thread::spawn(move || {
        for b in &req[..prefix_len] {
            drip_stream.write_all(&[*b]).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
    });

    // Meanwhile another client must be served promptly.
    std::thread::sleep(Duration::from_millis(300));
    let mut other = RpcConn::connect(&sock).unwrap();
    for i in 0..8 {
        let start = Instant::now();
        let r = other.call("bdev_get_bdevs", Value::Null);
        let took = start.elapsed();
        assert!(r.is_ok(), "call {i}: {r:?}");
        assert!(
            took < Duration::from_secs(2),
            "call {i} took {took:?} while a slow client was dripping"
        );
        // Fresh connections too.
        let start = Instant::now();
        assert!(RpcConn::connect(&sock)
            .unwrap()
            .call("spdk_get_version", Value::Null)
            .is_ok());
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "new-connection call {i} took {took:?} while a slow client was dripping"
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    dripper.join().unwrap();

    // A client holding a partial request open still doesn't block anyone.
    let start = Instant::now();
    assert!(t.rpc("spdk_get_version", Value::Null).is_ok());
    assert!(start.elapsed() < Duration::from_secs(2));

    // Once the drip client finishes its request it gets its answer.
    drip.send_raw(&req[prefix_len..]).unwrap();
    let r = drip.read_value().unwrap().expect("drip response");
    assert_eq!(r["id"], 99, "{r}");
    assert!(r["result"]["version"].is_string(), "{r}");
}

#[test]
fn idle_connections_do_not_stall_others() {
    let t = Target::start(&[]);
    // Several connections that never send anything.
    let idle: Vec<RpcConn> = (0..10).map(|_| t.connect()).collect();
    let start = Instant::now();
    for _ in 0..5 {
        assert!(t.rpc("spdk_get_version", Value::Null).is_ok());
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "5 calls took {:?} with idle clients connected",
        start.elapsed()
    );
    drop(idle);
    assert!(t.rpc("spdk_get_version", Value::Null).is_ok());
}

#[test]
fn twenty_concurrent_clients() {
    let t = Target::start(&[]);
    let sock = t.sock().to_path_buf();
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut c = RpcConn::connect(&sock).unwrap();
                let mut done = 0;
                for j in 0..20 {
                    let name = format!("C{i}_{}", j / 4);
                    match j % 4 {
                        0 => {
                            let r = c
                                .call(
                                    "bdev_malloc_create",
                                    json!({"name": name, "num_blocks": 16, "block_size": 512}),
                                )
                                .unwrap_or_else(|e| panic!("client {i} call {j}: {e:?}"));
                            assert_eq!(r, json!(name));
                        }
                        1 => {
                            let r = c
                                .call("bdev_get_bdevs", json!({"name": name}))
                                .unwrap_or_else(|e| panic!("client {i} call {j}: {e:?}"));
                            assert_eq!(r[0]["name"], json!(name));
                            assert_eq!(r[0]["num_blocks"], 16);
                        }
                        2 => {
                            let r = c
                                .call("bdev_malloc_delete", json!({"name": name}))
                                .unwrap_or_else(|e| panic!("client {i} call {j}: {e:?}"));
                            assert_eq!(r, json!(true));
                        }
                        _ => {
                            let r = c
                                .call("spdk_get_version", Value::Null)
                                .unwrap_or_else(|e| panic!("client {i} call {j}: {e:?}"));
                            assert!(r["version"].is_string());
                        }
                    }
                    done += 1;
                }
                done
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, 400);
    let names: Vec<Value> = t.bdevs().iter().map(|b| b["name"].clone()).collect();
    assert_eq!(names, vec![json!("Malloc0")]);
}

#[test]
fn a_client_over_the_connection_limit_gets_a_json_error() {
    let t = Target::start(&[]);
    // Open connections until one is refused: the refusal comes unasked, before any request.
    let mut held: Vec<RpcConn> = Vec::new();
    let refusal = loop {
        assert!(held.len() <= 64, "more than 64 connections were accepted");
        let mut c = t.connect();
        c.stream
            .set_read_timeout(Some(Duration::from_millis(150)))
            .unwrap();
        match c.read_value() {
            Ok(Some(v)) => break (c, v),
            Ok(None) => panic!("connection {} closed without a JSON-RPC error", held.len()),
            Err(_) => {
                c.stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                assert!(c.call("spdk_get_version", Value::Null).is_ok());
                held.push(c);
            }
        }
    };
    let (mut extra, r) = refusal;
    assert!(
        held.len() >= 60,
        "refused after only {} connections",
        held.len()
    );
    assert_eq!(r["jsonrpc"], "2.0", "{r}");
    assert_eq!(r["id"], Value::Null, "{r}");
    assert_eq!(r["error"]["code"], -32603, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("too many"),
        "{r}"
    );
    extra
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_closed(&mut extra);
    // One closed: a new client is served again (once the server has seen the close).
    held.pop();
    let t0 = Instant::now();
    loop {
        let mut c = t.connect();
        c.stream
            .set_read_timeout(Some(Duration::from_millis(150)))
            .unwrap();
        if c.read_value().is_err() {
            c.stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            assert!(c.call("spdk_get_version", Value::Null).is_ok());
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no service after a connection was freed"
        );
    }
}

/// Remote parity methods refuse bad parameters with -32602 naming them, and bad states
/// (a taken index, a base that is no parity, a parity that is not one) with errno codes;
/// the target serves on.
#[test]
fn parity_methods_refuse_bad_input() {
    let t = Target::start(&[]);
    let g = "1f0e2d3c-4b5a-4697-8877-665544332211";
    for (name, size) in [("pb", 12), ("db", 8), ("db2", 8)] {
        t.rpc_ok(
            "bdev_malloc_create",
            json!({"name": name, "num_blocks": size * 256, "block_size": 4096}),
        );
    }
    let bad = |method: &str, params: Value, code: i64, needle: &str| {
        let (c, msg) = t.rpc_err(method, params.clone());
        assert_eq!(c, code, "{method} {params}: {msg}");
        assert!(msg.contains(needle), "{method} {params}: {msg}");
    };
    let create = |role: &str, uuid: &str| json!({"name": "P", "base_bdev": "pb", "group_uuid": uuid, "role": role});
    bad("bdev_parity_create", create("r", g), -32602, "role");
    bad(
        "bdev_parity_create",
        create("p", "not-a-uuid"),
        -32602,
        "group_uuid",
    );
    bad(
        "bdev_parity_create",
        json!({"name": "P", "base_bdev": "nope", "group_uuid": g, "role": "p"}),
        -19,
        "nope",
    );
    t.rpc_ok("bdev_parity_create", create("p", g));
    // The base is claimed by the parity volume now.
    bad(
        "bdev_parity_create",
        json!({"name": "P2", "base_bdev": "pb", "group_uuid": g, "role": "q"}),
        -16,
        "claimed",
    );
    bad(
        "bdev_parity_add_member",
        json!({"name": "P", "index": 999, "bdev": "db"}),
        -32602,
        "out of range",
    );
    t.rpc_ok(
        "bdev_parity_add_member",
        json!({"name": "P", "index": 0, "bdev": "db"}),
    );
    bad(
        "bdev_parity_add_member",
        json!({"name": "P", "index": 0, "bdev": "db2"}),
        -17,
        "index 0",
    );
    bad(
        "bdev_parity_source_create",
        json!({"name": "P", "index": 1, "partner": "db"}),
        -32602,
        "also_lost",
    );
    bad(
        "bdev_parity_source_create",
        json!({"name": "P", "index": 1, "also_lost": 1, "partner": "pb"}),
        -32602,
        "another index",
    );
    let src = t.rpc_ok(
        "bdev_parity_source_create",
        json!({"name": "P", "index": 1}),
    );
    assert_eq!(src, "P_src1");
    let member = |extra: Value| {
        let mut p =
            json!({"name": "D", "base_bdev": "db2", "group_uuid": g, "index": 1, "p_bdev": "P"});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    bad(
        "bdev_parity_member_create",
        member(json!({"mode": "sideways"})),
        -32602,
        "mode",
    );
    bad(
        "bdev_parity_member_create",
        member(json!({"index": 40})),
        -32602,
        "out of range",
    );
    bad(
        "bdev_parity_member_create",
        member(json!({"region_size_kb": 100})),
        -32602,
        "region_size_kb",
    );
    bad(
        "bdev_parity_member_create",
        member(json!({"p_bdev": null})),
        -32602,
        "p_bdev, q_bdev",
    );
    bad(
        "bdev_parity_member_create",
        member(json!({"q_bdev": "P"})),
        -32602,
        "same bdev",
    );
    bad(
        "bdev_parity_member_create",
        member(json!({"p_bdev": null, "q_bdev": "P"})),
        -32602,
        "not the q",
    );
    bad(
        "bdev_parity_member_create",
        member(json!({"group_uuid": "00000000-0000-4000-8000-000000000001"})),
        -32602,
        "not the p",
    );
    bad(
        "bdev_parity_member_create",
        member(json!({"mode": "rebuild"})),
        -32602,
        "rebuild source",
    );
    bad(
        "bdev_parity_member_create",
        member(json!({"p_bdev": "nope"})),
        -19,
        "nope",
    );
    // A base another bdev holds.
    bad(
        "bdev_parity_member_create",
        member(json!({"base_bdev": "pb"})),
        -16,
        "claimed",
    );
    t.rpc_ok(
        "bdev_parity_member_create",
        member(json!({"p_source": "P_src1", "mode": "clean"})),
    );
    let got = t.rpc_ok("bdev_parity_get", json!({"name": "D"}));
    assert_eq!(got[0]["state"], "active", "{got}");
    bad("bdev_parity_get", json!({"name": "nope"}), -19, "nope");
    bad("bdev_parity_verify", json!({"name": "nope"}), -19, "nope");
    assert_alive(&t);
}

/// The split-mirror backup methods refuse bad parameters with -32602 naming them and bad
/// states with errno codes and a reason; nothing is written to a directory that is not a
/// repository; the target serves on.
#[test]
fn split_backup_methods_refuse_bad_input() {
    let t = Target::start(&[]);
    for name in ["la", "lb", "deg_a", "deg_b"] {
        t.rpc_ok(
            "bdev_malloc_create",
            json!({"name": name, "num_blocks": 8 * 256, "block_size": 4096}),
        );
    }
    t.rpc_ok(
        "bdev_mirror_create",
        json!({"name": "M", "primary": "la", "secondary": "lb", "initial_sync": false, "region_size_kb": 64}),
    );
    let bad = |method: &str, params: Value, code: i64, needle: &str| {
        let (c, msg) = t.rpc_err(method, params.clone());
        assert_eq!(c, code, "{method} {params}: {msg}");
        assert!(msg.contains(needle), "{method} {params}: {msg}");
    };
    let repo = t.dir().join("repo");
    let repo_s = repo.to_string_lossy().to_string();
    bad(
        "bdev_mirror_split",
        json!({"name": "M", "image": "X"}),
        -32602,
        "image",
    );
    bad(
        "bdev_mirror_split",
        json!({"name": "nope", "snapshot": true}),
        -19,
        "nope",
    );
    bad(
        "bdev_mirror_backup",
        json!({"name": "M", "repository": repo_s}),
        -32602,
        "no point-in-time image",
    );
    let s = t.rpc_ok("bdev_mirror_split", json!({"name": "M", "snapshot": true}));
    assert_eq!(s["image"], "M_pit", "{s}");
    assert!(t.bdev("M_pit")["supported_io_types"]["write"] == false);
    bad(
        "bdev_mirror_split",
        json!({"name": "M", "snapshot": true}),
        -32602,
        "already has the image",
    );
    bad(
        "bdev_mirror_split",
        json!({"name": "M"}),
        -32602,
        "not in_sync",
    );
    for (params, needle) in [
        (
            json!({"name": "M", "repository": repo_s, "type": "weekly"}),
            "type",
        ),
        (
            json!({"name": "M", "repository": repo_s, "mode": "tape"}),
            "mode",
        ),
        (json!({"name": "M", "repository": ""}), "repository"),
        (
            json!({"name": "M", "repository": repo_s, "chunk_kb": "big"}),
            "chunk_kb",
        ),
    ] {
        bad("bdev_mirror_backup", params, -32602, needle);
    }
    bad(
        "bdev_mirror_backup",
        json!({"name": "M", "repository": repo_s, "chunk_kb": 3}),
        -32602,
        "chunk_kb",
    );
    bad(
        "bdev_mirror_backup",
        json!({"name": "M", "repository": repo_s, "type": "incremental"}),
        -32602,
        "full backup first",
    );
    bad(
        "bdev_mirror_backup",
        json!({"name": "M", "repository": repo_s, "id": "../etc"}),
        -32602,
        "backup id",
    );
    // A directory holding other files is never turned into a repository.
    let other = t.dir().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep"), b"x").unwrap();
    bad(
        "bdev_mirror_backup",
        json!({"name": "M", "repository": other}),
        -32602,
        "not empty",
    );
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
    bad(
        "backup_list",
        json!({"repository": other}),
        -32602,
        "not a backup repository",
    );
    bad("backup_list", json!({}), -32602, "repository");
    bad(
        "backup_restore",
        json!({"repository": other, "backup": "b", "bdev": "deg_a"}),
        -32602,
        "not a backup repository",
    );
    bad(
        "backup_verify",
        json!({"repository": other}),
        -32602,
        "not a backup repository",
    );
    bad("backup_job_get", json!({"id": 999}), -19, "999");
    bad("backup_job_get", json!({"id": "x"}), -32602, "id");
    // A degraded mirror cannot be split with a snapshot.
    t.rpc_ok(
        "bdev_mirror_create",
        json!({"name": "D", "primary": "deg_a", "secondary": "deg_b", "initial_sync": false, "region_size_kb": 64}),
    );
    t.rpc_ok("bdev_malloc_delete", json!({"name": "deg_b"}));
    assert!(wait_for(Duration::from_secs(5), || {
        t.rpc_ok("bdev_mirror_get", json!({"name": "D"}))[0]["state"] == "degraded"
    }));
    bad(
        "bdev_mirror_split",
        json!({"name": "D", "snapshot": true}),
        -32602,
        "degraded",
    );
    // A good backup, listed; a restore onto a bdev too small is refused.
    let id = t.rpc_ok(
        "bdev_mirror_backup",
        json!({"name": "M", "repository": repo_s}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(wait_for(Duration::from_secs(10), || {
        t.rpc_ok("bdev_mirror_get", json!({"name": "M"}))[0]["image"]["last_backup_job"]["result"]
            == "done"
    }));
    let l = t.rpc_ok("backup_list", json!({"repository": repo_s}));
    assert_eq!(l[0]["id"], id.as_str(), "{l}");
    assert_eq!(l[0]["state"], "complete", "{l}");
    t.rpc_ok(
        "bdev_malloc_create",
        json!({"name": "tiny", "num_blocks": 16, "block_size": 4096}),
    );
    bad(
        "backup_restore",
        json!({"repository": repo_s, "backup": id, "bdev": "tiny"}),
        -32602,
        "does not fit",
    );
    bad(
        "backup_restore",
        json!({"repository": repo_s, "backup": "nope", "bdev": "tiny"}),
        -19,
        "nope",
    );
    // A backup is refused while one runs? (It finished.) Resume drops the image.
    t.rpc_ok("bdev_mirror_resume", json!({"name": "M"}));
    assert!(t.bdevs().iter().all(|b| b["name"] != "M_pit"));
    assert_alive(&t);
}

#[test]
fn journal_methods_refuse_bad_input() {
    let t = Target::start(&[]);
    for (name, blocks, bs) in [
        ("ja", 4096, 4096),
        ("jb", 4096, 4096),
        ("tiny_a", 64, 4096),
        ("tiny_b", 64, 4096),
        ("base", 2048, 4096),
        ("base512", 8192, 512),
    ] {
        t.rpc_ok(
            "bdev_malloc_create",
            json!({"name": name, "num_blocks": blocks, "block_size": bs}),
        );
    }
    let bad = |method: &str, params: Value, code: i64, needle: &str| {
        let (c, msg) = t.rpc_err(method, params.clone());
        assert_eq!(c, code, "{method} {params}: {msg}");
        assert!(msg.contains(needle), "{method} {params}: {msg}");
    };
    let repo = t.dir().join("repo").to_string_lossy().to_string();
    for (params, code, needle) in [
        (
            json!({"name": "G", "journal_bdevs": ["ja"], "repository": repo}),
            -32602,
            "exactly two",
        ),
        (
            json!({"name": "G", "journal_bdevs": ["ja", "jb"]}),
            -32602,
            "repository",
        ),
        (
            json!({"name": "G", "journal_bdevs": ["ja", "jb"], "repository": repo, "chunk_kb": 3}),
            -32602,
            "chunk_kb",
        ),
        (
            json!({"name": "G", "journal_bdevs": ["ja", "jb"], "repository": repo, "drain_fill_percent": 101}),
            -32602,
            "drain_fill_percent",
        ),
        (
            json!({"name": "G", "journal_bdevs": ["tiny_a", "tiny_b"], "repository": repo}),
            -32602,
            "record batch",
        ),
        (
            json!({"name": "G", "journal_bdevs": ["ja", "nope"], "repository": repo}),
            -19,
            "nope",
        ),
        (
            json!({"name": "G/x", "journal_bdevs": ["ja", "jb"], "repository": repo}),
            -32602,
            "group name",
        ),
        (
            json!({"name": "G", "journal_bdevs": ["ja", "jb"], "repository": repo, "extra": 1}),
            -32602,
            "extra",
        ),
    ] {
        bad("bdev_journal_group_create", params, code, needle);
    }
    t.rpc_ok(
        "bdev_journal_group_create",
        json!({"name": "G", "journal_bdevs": "ja jb", "repository": repo, "chunk_kb": 64}),
    );
    bad(
        "bdev_journal_group_create",
        json!({"name": "G", "journal_bdevs": ["tiny_a", "tiny_b"], "repository": repo}),
        -17,
        "G",
    );
    bad(
        "bdev_journal_volume_create",
        json!({"group": "G", "name": "V", "base_bdev": "base512"}),
        -32602,
        "must match",
    );
    bad(
        "bdev_journal_volume_create",
        json!({"group": "G", "name": "V", "base_bdev": "base", "attributes": {"k": 1}}),
        -32602,
        "attributes",
    );
    bad(
        "bdev_journal_volume_create",
        json!({"group": "nope", "name": "V", "base_bdev": "base"}),
        -19,
        "nope",
    );
    t.rpc_ok(
        "bdev_journal_volume_create",
        json!({"group": "G", "name": "V", "base_bdev": "base", "attributes": {"owner": "ops"}}),
    );
    bad(
        "bdev_journal_volume_create",
        json!({"group": "G", "name": "V", "base_bdev": "base"}),
        -17,
        "V",
    );
    bad(
        "bdev_journal_volume_set_attributes",
        json!({"name": "V", "attributes": ["x"]}),
        -32602,
        "attributes",
    );
    t.rpc_ok(
        "bdev_journal_volume_set_attributes",
        json!({"name": "V", "attributes": {"owner": null, "tier": "gold"}}),
    );
    let v = t.rpc_ok("bdev_journal_volume_get", json!({"name": "V"}))[0].clone();
    assert_eq!(v["attributes"], json!({"tier": "gold"}), "{v}");
    bad(
        "bdev_journal_volume_rebuild",
        json!({"name": "V"}),
        -32602,
        "base_bdevs",
    );
    bad(
        "bdev_journal_volume_rebuild",
        json!({"name": "V", "base_bdev": "ja", "base_bdevs": ["jb"]}),
        -32602,
        "not both",
    );
    bad(
        "bdev_journal_volume_rebuild",
        json!({"name": "V", "base_bdev": "tiny_a"}),
        -32602,
        "online",
    );
    bad(
        "bdev_journal_group_replace_leg",
        json!({"name": "G", "new_bdev": "tiny_a"}),
        -32602,
        "",
    );
    bad(
        "bdev_journal_group_delete",
        json!({"name": "G"}),
        -16,
        "volumes",
    );
    bad(
        "bdev_journal_group_get",
        json!({"name": "nope"}),
        -19,
        "nope",
    );
    bad(
        "bdev_journal_volume_get",
        json!({"name": "nope"}),
        -19,
        "nope",
    );
    let g = t.rpc_ok("bdev_journal_group_get", json!({"name": "G"}))[0].clone();
    assert_eq!(g["volumes"][0]["name"], "V", "{g}");
    assert_eq!(g["drain_policy"]["chunk_kb"], 64, "{g}");
    assert_alive(&t);
}

/// `bdev_nvme_attach_controller -t PCIe` refusals that need no device: each a JSON-RPC error
/// naming the problem, nothing attached, the target unharmed. (The driver itself is tested
/// against an emulated controller in `pcie/tests/vfio_guest.rs`.)
#[test]
fn pcie_attach_refusals() {
    let t = Target::start(&[]);
    let attach = |p: Value| t.rpc_err("bdev_nvme_attach_controller", p);
    let (code, msg) = attach(json!({"name": "P", "trtype": "PCIe", "traddr": "not-a-bdf"}));
    assert!(
        code == -32602 && msg.contains("not a PCI address"),
        "{code} {msg}"
    );
    let (code, msg) = attach(json!({"name": "P", "trtype": "PCIe", "traddr": "0000:7f:1f.7"}));
    assert!(code == -19 && msg.contains("no PCI device"), "{code} {msg}");
    let (code, msg) = attach(
        json!({"name": "P", "trtype": "PCIe", "traddr": "0000:00:00.0", "subnqn": "nqn.2026-12.io.strata:x"}),
    );
    assert!(code == -32602 && msg.contains("subnqn"), "{code} {msg}");
    let (code, msg) = attach(
        json!({"name": "P", "trtype": "PCIe", "traddr": "0000:00:00.0", "num_io_queues": 0}),
    );
    assert!(
        code == -32602 && msg.contains("num_io_queues"),
        "{code} {msg}"
    );
    let (code, msg) = attach(json!({"name": "P", "trtype": "RDMA", "traddr": "1.2.3.4"}));
    assert!(
        code == -32602 && msg.contains("TCP or PCIe"),
        "{code} {msg}"
    );
    // A PCI function that exists here but is not an NVMe controller (the host bridge, when
    // this machine has PCI at all).
    if std::path::Path::new("/sys/bus/pci/devices/0000:00:00.0/class").exists()
        && std::fs::read_to_string("/sys/bus/pci/devices/0000:00:00.0/class")
            .unwrap()
            .trim()
            != "0x010802"
    {
        let (code, msg) = attach(json!({"name": "P", "trtype": "PCIe", "traddr": "0000:00:00.0"}));
        assert!(
            code == -32602 && msg.contains("not an NVMe controller"),
            "{code} {msg}"
        );
    }
    let c = t.rpc_ok("bdev_nvme_get_controllers", json!({}));
    assert_eq!(c, json!([]));
    assert_alive(&t);
}
