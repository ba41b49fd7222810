//! Process lifecycle: signals, socket ownership, reactors, idle CPU use.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileTypeExt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strata_tests::{clk_tck, run_tgt, Target};

fn assert_orderly_exit(sig: libc::c_int) {
    let mut t = Target::start(&[]);
    // Something to tear down.
    t.rpc_ok(
        "bdev_malloc_create",
        json!({"name": "M1", "num_blocks": 64, "block_size": 512}),
    );
    let start = Instant::now();
    t.signal(sig);
    let status = t.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after signal {sig}: {status}\n{}",
        t.stderr()
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(
        !t.stderr().contains("panicked at"),
        "panic during shutdown:\n{}",
        t.stderr()
    );
}

#[test]
fn sigterm_exits_zero() {
    assert_orderly_exit(libc::SIGTERM);
}

#[test]
fn sigint_exits_zero() {
    assert_orderly_exit(libc::SIGINT);
}

#[test]
fn sigterm_in_polling_mode_exits_zero() {
    // Busy-polling reactors must also notice the shutdown.
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("strata.sock");
    let mut t = Target::spawn_exact(
        tempfile::tempdir().unwrap(),
        sock.clone(),
        &[
            "-r".into(),
            sock.to_str().unwrap().into(),
            "-m".into(),
            "0x1".into(),
        ],
    );
    t.rpc_ok("spdk_get_version", Value::Null);
    t.signal(libc::SIGTERM);
    let status = t.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn spdk_kill_instance_exits_zero() {
    for sig in ["SIGTERM", "SIGINT"] {
        let mut t = Target::start(&[]);
        let v = t.rpc_ok("spdk_kill_instance", json!({"sig_name": sig}));
        assert_eq!(v, json!(true), "{sig}");
        let status = t.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "{sig}: {status}");
    }
}

#[test]
fn second_instance_on_same_socket_fails_fast() {
    let first = Target::start(&[]);
    first.rpc_ok(
        "bdev_malloc_create",
        json!({"name": "FirstOnly", "num_blocks": 8, "block_size": 512}),
    );
    let sock = first.sock().to_str().unwrap().to_string();

    let start = Instant::now();
    let out = run_tgt(
        &["-r", &sock, "-m", "0x1", "--interrupt-mode"],
        Duration::from_secs(20),
    );
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "second instance on a busy socket must fail; status {}\n{stderr}",
        out.status
    );
    assert!(
        took < Duration::from_secs(5),
        "second instance took {took:?} to fail"
    );
    assert!(
        stderr.contains(&sock) || stderr.to_lowercase().contains("in use"),
        "stderr should mention the socket / 'in use':\n{stderr}"
    );

    // The first instance still owns the socket and answers on new connections.
    let meta = std::fs::metadata(first.sock()).expect("socket file of the first instance");
    assert!(meta.file_type().is_socket());
    let b = first.bdev("FirstOnly");
    assert_eq!(b["num_blocks"], 8);
    assert!(first.rpc("spdk_get_version", Value::Null).is_ok());
}

#[test]
fn stale_socket_after_kill9_does_not_block_restart() {
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("strata.sock");
    {
        let mut a = Target::start_at(&sock, &[]);
        a.rpc_ok("spdk_get_version", Value::Null);
        a.signal(libc::SIGKILL);
        let status = a.wait_exit(Duration::from_secs(10));
        assert!(!status.success());
    }
    assert!(
        std::fs::symlink_metadata(&sock).is_ok(),
        "precondition: kill -9 leaves the socket file behind"
    );
    let b = Target::start_at(&sock, &[]);
    let v = b.rpc_ok("spdk_get_version", Value::Null);
    assert!(v["version"].is_string());
    let bdevs = b.bdevs();
    assert_eq!(
        bdevs.len(),
        1,
        "fresh instance has only the default bdev: {bdevs:?}"
    );
}

#[test]
fn restart_after_orderly_shutdown() {
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("strata.sock");
    {
        let mut a = Target::start_at(&sock, &[]);
        a.signal(libc::SIGTERM);
        assert_eq!(a.wait_exit(Duration::from_secs(10)).code(), Some(0));
    }
    let b = Target::start_at(&sock, &[]);
    assert!(b.rpc("spdk_get_version", Value::Null).is_ok());
}

#[test]
fn reactors_follow_cpumask() {
    let t = Target::start(&["-m", "0x3"]);
    let v = t.rpc_ok("framework_get_reactors", Value::Null);
    assert!(v["tick_rate"].as_u64().unwrap_or(0) > 0, "tick_rate: {v}");
    let reactors = v["reactors"]
        .as_array()
        .unwrap_or_else(|| panic!("no reactors array: {v}"));
    assert_eq!(reactors.len(), 2, "{v}");
    let mut lcores: Vec<u64> = reactors
        .iter()
        .map(|r| r["lcore"].as_u64().unwrap_or_else(|| panic!("lcore: {r}")))
        .collect();
    lcores.sort();
    assert_eq!(lcores, vec![0, 1], "{v}");
    for r in reactors {
        let pollers = r["pollers"]
            .as_array()
            .unwrap_or_else(|| panic!("reactor without pollers list: {r}"));
        for p in pollers {
            assert!(p["name"].is_string(), "poller name: {p}");
            assert!(p["run_count"].is_u64(), "poller run_count: {p}");
        }
        assert!(r["busy"].is_u64(), "busy: {r}");
        assert!(r["idle"].is_u64(), "idle: {r}");
        assert_eq!(r["in_interrupt"], true, "--interrupt-mode: {r}");
    }
}

#[test]
fn reactors_default_mask_one_core() {
    let t = Target::start(&["--cpumask", "0x1"]);
    let v = t.rpc_ok("framework_get_reactors", Value::Null);
    let reactors = v["reactors"].as_array().unwrap();
    assert_eq!(reactors.len(), 1, "{v}");
    assert_eq!(reactors[0]["lcore"], 0, "{v}");
}

#[test]
fn reactors_sparse_mask() {
    // 0x2: only lcore 1.
    let t = Target::start(&["-m", "0x2"]);
    let v = t.rpc_ok("framework_get_reactors", Value::Null);
    let reactors = v["reactors"].as_array().unwrap();
    assert_eq!(reactors.len(), 1, "{v}");
    assert_eq!(reactors[0]["lcore"], 1, "{v}");
}

#[test]
fn invalid_cpumask_rejected() {
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("strata.sock");
    for mask in ["0x0", "zzz"] {
        let out = run_tgt(
            &["-r", sock.to_str().unwrap(), "-m", mask, "--interrupt-mode"],
            Duration::from_secs(20),
        );
        assert!(
            !out.status.success(),
            "cpumask {mask} accepted; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.stderr.is_empty(),
            "no error message for cpumask {mask}"
        );
    }
}

#[test]
fn idle_interrupt_mode_uses_little_cpu() {
    for mask in ["0x1", "0x3"] {
        let t = Target::start(&["-m", mask]);
        t.rpc_ok("spdk_get_version", Value::Null);
        // Let startup settle.
        std::thread::sleep(Duration::from_millis(500));
        let t0 = t.cpu_ticks();
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs(3));
        let used = t.cpu_ticks() - t0;
        let wall = start.elapsed().as_secs_f64();
        let frac = used as f64 / clk_tck() as f64 / wall;
        assert!(
            frac < 0.05,
            "idle target (-m {mask} --interrupt-mode) used {:.1}% CPU over {wall:.1}s",
            frac * 100.0
        );
        // Still responsive after sleeping.
        let start = Instant::now();
        assert!(t.rpc("spdk_get_version", Value::Null).is_ok());
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "interrupt-mode target slow to wake: {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn log_level_option_accepted() {
    let t = Target::start(&["--log-level", "debug"]);
    assert!(t.rpc("spdk_get_version", Value::Null).is_ok());
    let t = Target::start(&["--log-level", "error"]);
    assert!(t.rpc("spdk_get_version", Value::Null).is_ok());
}

#[test]
fn logs_go_to_stderr() {
    let mut t = Target::start(&["--log-level", "info"]);
    t.rpc_ok("spdk_get_version", Value::Null);
    t.signal(libc::SIGTERM);
    assert_eq!(t.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(
        !t.stderr().trim().is_empty(),
        "expected some log output on stderr at info level"
    );
}

#[test]
fn unknown_option_rejected() {
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("strata.sock");
    let out = run_tgt(
        &["-r", sock.to_str().unwrap(), "--definitely-not-an-option"],
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    assert!(!out.stderr.is_empty());
}
