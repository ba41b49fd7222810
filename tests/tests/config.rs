//! `save_config` / `--json FILE` round trips and config-file error handling.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{json, Value};
use strata_tests::{bdev_summary, make_file, run_tgt, Target};

type Summary = (String, String, u64, u64, String, bool);

fn summaries(t: &Target) -> Vec<Summary> {
    let mut v: Vec<Summary> = t.bdevs().iter().map(bdev_summary).collect();
    v.sort();
    v
}

fn write_config(dir: &std::path::Path, name: &str, cfg: &Value) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(cfg).unwrap()).unwrap();
    path
}

#[test]
fn save_config_round_trip() {
    let files = tempfile::tempdir().unwrap();
    let img = make_file(files.path(), "uring.img", 64 << 20);

    let mut a = Target::start(&["--no-default"]);
    let uuid = "6a1c9e2b-7d3f-4b8a-9c0d-1e2f3a4b5c6d";
    a.rpc_ok(
        "bdev_malloc_create",
        json!({"name": "MU", "num_blocks": 1024, "block_size": 4096, "uuid": uuid}),
    );
    a.rpc_ok(
        "bdev_null_create",
        json!({"name": "N1", "num_blocks": 1 << 16, "block_size": 512}),
    );
    a.rpc_ok(
        "bdev_uring_create",
        json!({"filename": img.to_str().unwrap(), "name": "U1", "block_size": 4096}),
    );
    a.rpc_ok(
        "bdev_malloc_create",
        json!({"name": "EBase", "num_blocks": 256, "block_size": 512}),
    );
    a.rpc_ok("bdev_error_create", json!({"base_name": "EBase"}));
    a.rpc_ok(
        "bdev_malloc_create",
        json!({"name": "DBase", "num_blocks": 512, "block_size": 512}),
    );
    a.rpc_ok(
        "bdev_delay_create",
        json!({
            "base_bdev_name": "DBase", "name": "D1",
            "avg_read_latency": 10, "p99_read_latency": 20,
            "avg_write_latency": 30, "p99_write_latency": 40,
        }),
    );
    // An auto-named malloc bdev, too.
    a.rpc_ok(
        "bdev_malloc_create",
        json!({"num_blocks": 32, "block_size": 512}),
    );

    let before = summaries(&a);
    assert_eq!(before.len(), 8, "{before:?}");
    let cfg = a.rpc_ok("save_config", Value::Null);
    let subsystems = cfg["subsystems"]
        .as_array()
        .unwrap_or_else(|| panic!("save_config: no subsystems array: {cfg}"));
    let bdev = subsystems
        .iter()
        .find(|s| s["subsystem"] == "bdev")
        .unwrap_or_else(|| panic!("save_config: no bdev subsystem: {cfg}"));
    let methods: Vec<&str> = bdev["config"]
        .as_array()
        .unwrap_or_else(|| panic!("bdev subsystem has no config array: {cfg}"))
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    for m in [
        "bdev_malloc_create",
        "bdev_null_create",
        "bdev_uring_create",
        "bdev_error_create",
        "bdev_delay_create",
    ] {
        assert!(methods.contains(&m), "save_config lacks {m}: {cfg}");
    }
    let path = write_config(files.path(), "saved.json", &cfg);

    a.signal(libc::SIGTERM);
    let status = a.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status}");
    drop(a);

    let b = Target::start(&["--json", path.to_str().unwrap(), "--no-default"]);
    b.rpc_ok("framework_wait_init", Value::Null);
    let after = summaries(&b);
    assert_eq!(b.bdev("MU")["uuid"].as_str().unwrap().to_lowercase(), uuid);

    // Saving again yields the same set of entries.
    let cfg2 = b.rpc_ok("save_config", Value::Null);
    let entries = |c: &Value| -> Vec<String> {
        let mut v: Vec<String> = c["subsystems"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["subsystem"] == "bdev")
            .flat_map(|s| s["config"].as_array().unwrap().clone())
            .map(|e| e.to_string())
            .collect();
        v.sort();
        v
    };

    // Report every difference at once.
    let mut problems = Vec::new();
    for x in &before {
        if !after.contains(x) {
            let now = after.iter().find(|y| y.0 == x.0);
            problems.push(format!("before reload {x:?}, after reload {now:?}"));
        }
    }
    for y in &after {
        if !before.iter().any(|x| x.0 == y.0) {
            problems.push(format!("new after reload: {y:?}"));
        }
    }
    let (e1, e2) = (entries(&cfg), entries(&cfg2));
    for e in &e1 {
        if !e2.contains(e) {
            problems.push(format!("save_config entry lost/changed by reload: {e}"));
        }
    }
    for e in &e2 {
        if !e1.contains(e) {
            problems.push(format!(
                "save_config entry after reload not in original: {e}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "config round trip is not faithful:\n{}",
        problems.join("\n")
    );
}

#[test]
fn foreign_subsystems_are_ignored() {
    let files = tempfile::tempdir().unwrap();
    let cfg = json!({
        "subsystems": [
            {"subsystem": "iobuf", "config": [
                {"method": "iobuf_set_options",
                 "params": {"small_pool_count": 8192, "large_pool_count": 1024,
                            "small_bufsize": 8192, "large_bufsize": 135168}}
            ]},
            {"subsystem": "sock", "config": [
                {"method": "sock_set_default_impl", "params": {"impl_name": "posix"}},
                {"method": "sock_impl_set_options",
                 "params": {"impl_name": "posix", "recv_buf_size": 2097152,
                            "send_buf_size": 2097152, "enable_zerocopy_send_server": true}}
            ]},
            {"subsystem": "accel", "config": [
                {"method": "accel_set_options",
                 "params": {"small_cache_size": 128, "large_cache_size": 16}}
            ]},
            {"subsystem": "vmd", "config": []},
            {"subsystem": "bdev", "config": [
                {"method": "bdev_set_options",
                 "params": {"bdev_io_pool_size": 65535, "bdev_io_cache_size": 256,
                            "bdev_auto_examine": true}},
                {"method": "bdev_nvme_set_options",
                 "params": {"action_on_timeout": "none", "timeout_us": 0}},
                {"method": "bdev_malloc_create",
                 "params": {"name": "Malloc7", "num_blocks": 1024, "block_size": 512}},
                {"method": "bdev_wait_for_examine"}
            ]},
            {"subsystem": "scheduler", "config": [
                {"method": "framework_set_scheduler", "params": {"name": "static"}}
            ]}
        ]
    });
    let path = write_config(files.path(), "spdk.json", &cfg);
    let t = Target::start(&["--json", path.to_str().unwrap(), "--no-default"]);
    t.rpc_ok("framework_wait_init", Value::Null);
    let bdevs = t.bdevs();
    assert_eq!(bdevs.len(), 1, "{bdevs:?}");
    assert_eq!(bdevs[0]["name"], "Malloc7");
    assert_eq!(bdevs[0]["num_blocks"], 1024);
    assert_eq!(bdevs[0]["block_size"], 512);
}

#[test]
fn empty_config_is_fine() {
    let files = tempfile::tempdir().unwrap();
    let path = write_config(files.path(), "empty.json", &json!({"subsystems": []}));
    let t = Target::start(&["--json", path.to_str().unwrap(), "--no-default"]);
    t.rpc_ok("framework_wait_init", Value::Null);
    assert!(t.bdevs().is_empty());
}

/// Runs strata-tgt with a config that must be rejected; returns its stderr.
fn expect_rejected(cfg_path: &std::path::Path) -> String {
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("strata.sock");
    let out = run_tgt(
        &[
            "-r",
            sock.to_str().unwrap(),
            "-m",
            "0x1",
            "--interrupt-mode",
            "--no-default",
            "--json",
            cfg_path.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "strata-tgt accepted a bad config ({}); stderr:\n{stderr}",
        out.status
    );
    assert!(
        out.status.code().is_some(),
        "strata-tgt should exit with an error status, not die from a signal: {}\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked at"),
        "strata-tgt panicked instead of reporting the error:\n{stderr}"
    );
    stderr
}

#[test]
fn unknown_bdev_method_in_config_fails() {
    let files = tempfile::tempdir().unwrap();
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create",
         "params": {"name": "M1", "num_blocks": 64, "block_size": 512}},
        {"method": "bdev_frobnicate_create", "params": {"name": "F1"}}
    ]}]});
    let path = write_config(files.path(), "unknown.json", &cfg);
    let stderr = expect_rejected(&path);
    assert!(
        stderr.contains("bdev_frobnicate_create"),
        "stderr should name the unknown method:\n{stderr}"
    );
}

#[test]
fn malformed_config_fails() {
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("broken.json");
    std::fs::write(
        &path,
        br#"{"subsystems": [ {"subsystem": "bdev", "config": [ "#,
    )
    .unwrap();
    let stderr = expect_rejected(&path);
    let lower = stderr.to_lowercase();
    assert!(
        stderr.contains("broken.json") || lower.contains("json") || lower.contains("parse"),
        "stderr should say the config is not valid JSON:\n{stderr}"
    );
}

#[test]
fn config_with_bad_params_fails() {
    let files = tempfile::tempdir().unwrap();
    let cfg = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create",
         "params": {"name": "M1", "num_blocks": 64, "block_size": 1000}}
    ]}]});
    let path = write_config(files.path(), "badparams.json", &cfg);
    let stderr = expect_rejected(&path);
    assert!(
        stderr.contains("block_size") || stderr.contains("bdev_malloc_create"),
        "stderr should name the problem:\n{stderr}"
    );
}

#[test]
fn missing_config_file_fails() {
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("does-not-exist.json");
    let stderr = expect_rejected(&path);
    assert!(
        stderr.contains("does-not-exist.json"),
        "stderr should name the missing file:\n{stderr}"
    );
}
