//! The `strata-rpc` command-line client (rpc.py syntax).
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use strata_tests::{cli_at, json_out, make_file, ok, text, Target};

#[test]
fn malloc_create_and_get() {
    let t = Target::start(&["--no-default"]);
    let out = t.cli(&["bdev_malloc_create", "-b", "M1", "64", "512"]);
    let s = ok(&out, "bdev_malloc_create");
    assert!(s.contains("M1"), "stdout {s:?}");

    let b = t.bdev("M1");
    assert_eq!(b["block_size"], 512, "{b}");
    assert_eq!(b["num_blocks"], 131072, "{b}");
    assert_eq!(b["product_name"], "Malloc disk", "{b}");

    let out = t.cli(&["bdev_get_bdevs", "-b", "M1"]);
    let s = ok(&out, "bdev_get_bdevs -b M1");
    assert!(
        s.trim_end().contains('\n'),
        "expected pretty-printed (multi-line) JSON, got {s:?}"
    );
    let v: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v[0]["name"], "M1");
    assert_eq!(v[0]["num_blocks"], 131072);
    assert_eq!(v[0]["block_size"], 512);

    // Without -b: all bdevs.
    let v = json_out(&t.cli(&["bdev_get_bdevs"]), "bdev_get_bdevs");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
}

#[test]
fn malloc_create_auto_name_and_uuid() {
    let t = Target::start(&["--no-default"]);
    let uuid = "0b7e5d4c-3a29-4f18-9e07-d6c5b4a39281";
    let out = t.cli(&["bdev_malloc_create", "-u", uuid, "8", "4096"]);
    let s = ok(&out, "bdev_malloc_create -u");
    let name = s.trim().trim_matches('"').to_string();
    assert!(name.starts_with("Malloc"), "stdout {s:?}");
    let b = t.bdev(&name);
    assert_eq!(b["uuid"].as_str().unwrap().to_lowercase(), uuid);
    assert_eq!(b["num_blocks"], 2048, "{b}");
    assert_eq!(b["block_size"], 4096, "{b}");
    ok(&t.cli(&["bdev_malloc_delete", &name]), "bdev_malloc_delete");
    assert!(t.bdevs().is_empty());
}

#[test]
fn call_with_raw_params() {
    let t = Target::start(&["--no-default"]);
    ok(
        &t.cli(&["bdev_malloc_create", "-b", "M1", "64", "512"]),
        "create",
    );
    let v = json_out(
        &t.cli(&["call", "bdev_get_bdevs", r#"{"name":"M1"}"#]),
        "call bdev_get_bdevs",
    );
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v[0]["name"], "M1");

    // `call` without params.
    let v = json_out(
        &t.cli(&["call", "spdk_get_version"]),
        "call spdk_get_version",
    );
    assert!(v["version"].as_str().unwrap().contains("strata"), "{v}");

    // `call` creating something.
    let out = t.cli(&[
        "call",
        "bdev_null_create",
        r#"{"name":"N9","num_blocks":64,"block_size":512}"#,
    ]);
    let s = ok(&out, "call bdev_null_create");
    assert!(s.contains("N9"), "{s:?}");
    assert_eq!(t.bdev("N9")["num_blocks"], 64);
}

#[test]
fn errors_exit_1_with_code_on_stderr() {
    let t = Target::start(&[]);
    let out = t.cli(&["bdev_malloc_delete", "NoSuch"]);
    assert_eq!(out.status.code(), Some(1), "stderr {:?}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("-19"),
        "stderr must contain the code: {:?}",
        text(&out.stderr)
    );

    let out = t.cli(&["bdev_malloc_create", "-b", "Malloc0", "8", "512"]);
    assert_eq!(out.status.code(), Some(1), "stderr {:?}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("-17"),
        "stderr must contain the code: {:?}",
        text(&out.stderr)
    );

    let out = t.cli(&["call", "no_such_method"]);
    assert_eq!(out.status.code(), Some(1), "stderr {:?}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("-32601"),
        "stderr must contain the code: {:?}",
        text(&out.stderr)
    );

    let out = t.cli(&["bdev_get_bdevs", "-b", "NoSuch"]);
    assert_eq!(out.status.code(), Some(1), "stderr {:?}", text(&out.stderr));
    assert!(text(&out.stderr).contains("-19"), "{:?}", text(&out.stderr));
}

#[test]
fn bad_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nothing-here.sock");
    let out = cli_at(&sock, &["spdk_get_version"]);
    assert_eq!(out.status.code(), Some(1), "status {}", out.status);
    let err = text(&out.stderr);
    let lower = err.to_lowercase();
    assert!(
        err.contains(sock.to_str().unwrap())
            || lower.contains("connect")
            || lower.contains("no such file"),
        "stderr should explain the connection failure: {err:?}"
    );
    assert!(out.stdout.is_empty(), "stdout {:?}", text(&out.stdout));
}

#[test]
fn null_uring_aio_via_cli() {
    let t = Target::start(&["--no-default"]);
    let dir = tempfile::tempdir().unwrap();
    let f1 = make_file(dir.path(), "u.img", 32 << 20);
    let f2 = make_file(dir.path(), "a.img", 16 << 20);

    let s = ok(&t.cli(&["bdev_null_create", "N1", "16", "4096"]), "null");
    assert!(s.contains("N1"), "{s:?}");
    assert_eq!(t.bdev("N1")["num_blocks"], 4096);
    assert_eq!(t.bdev("N1")["block_size"], 4096);

    let s = ok(
        &t.cli(&["bdev_uring_create", f1.to_str().unwrap(), "U1", "4096"]),
        "uring",
    );
    assert!(s.contains("U1"), "{s:?}");
    assert_eq!(t.bdev("U1")["num_blocks"], (32 << 20) / 4096);

    let s = ok(
        &t.cli(&["bdev_aio_create", f2.to_str().unwrap(), "A1", "512"]),
        "aio",
    );
    assert!(s.contains("A1"), "{s:?}");
    assert_eq!(t.bdev("A1")["num_blocks"], (16 << 20) / 512);
    assert_eq!(t.bdev("A1")["block_size"], 512);

    ok(&t.cli(&["bdev_null_delete", "N1"]), "null delete");
    ok(&t.cli(&["bdev_uring_delete", "U1"]), "uring delete");
    ok(&t.cli(&["bdev_aio_delete", "A1"]), "aio delete");
    assert!(t.bdevs().is_empty());
}

#[test]
fn error_and_delay_via_cli() {
    let t = Target::start(&["--no-default"]);
    ok(
        &t.cli(&["bdev_malloc_create", "-b", "B1", "8", "512"]),
        "b1",
    );
    ok(
        &t.cli(&["bdev_malloc_create", "-b", "B2", "8", "512"]),
        "b2",
    );

    let s = ok(&t.cli(&["bdev_error_create", "B1"]), "error create");
    assert!(s.contains("EE_B1"), "{s:?}");
    assert_eq!(t.bdev("B1")["claimed"], true);
    ok(
        &t.cli(&[
            "bdev_error_inject_error",
            "EE_B1",
            "write",
            "failure",
            "-n",
            "2",
        ]),
        "inject",
    );

    let s = ok(
        &t.cli(&[
            "bdev_delay_create",
            "-b",
            "B2",
            "-d",
            "D2",
            "-r",
            "10",
            "-t",
            "20",
            "-w",
            "30",
            "-n",
            "40",
        ]),
        "delay create",
    );
    assert!(s.contains("D2"), "{s:?}");
    assert_eq!(t.bdev("B2")["claimed"], true);
    assert_eq!(t.bdev("D2")["num_blocks"], 16384);
    ok(
        &t.cli(&["bdev_delay_update_latency", "D2", "p99_write", "500"]),
        "update latency",
    );

    ok(&t.cli(&["bdev_error_delete", "EE_B1"]), "error delete");
    ok(&t.cli(&["bdev_delay_delete", "D2"]), "delay delete");
    assert_eq!(t.bdev("B1")["claimed"], false);
    assert_eq!(t.bdev("B2")["claimed"], false);
}

#[test]
fn info_methods_via_cli() {
    let t = Target::start(&[]);
    let v = json_out(&t.cli(&["spdk_get_version"]), "spdk_get_version");
    assert!(v["version"].as_str().unwrap().contains("strata"), "{v}");

    let v = json_out(&t.cli(&["rpc_get_methods"]), "rpc_get_methods");
    let methods = v.as_array().unwrap();
    assert!(methods.contains(&json!("bdev_malloc_create")), "{v}");

    let v = json_out(
        &t.cli(&["framework_get_reactors"]),
        "framework_get_reactors",
    );
    assert_eq!(v["reactors"].as_array().map(Vec::len), Some(1), "{v}");

    let v = json_out(&t.cli(&["bdev_get_iostat", "-b", "Malloc0"]), "iostat");
    assert_eq!(v["bdevs"][0]["name"], "Malloc0", "{v}");

    let v = json_out(&t.cli(&["save_config"]), "save_config");
    assert!(v["subsystems"].is_array(), "{v}");
}

#[test]
fn kill_instance_via_cli() {
    let mut t = Target::start(&[]);
    let out = t.cli(&["spdk_kill_instance", "SIGTERM"]);
    ok(&out, "spdk_kill_instance");
    let status = t.wait_exit(std::time::Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status}");
}
