//! The mirror bdev over JSON-RPC on the real daemon, on malloc legs: create / inspect / split /
//! resume / verify / delete / re-create, the error of every bad parameter (and that a refused
//! request leaves nothing claimed), `-16` for a resume while a job runs, a scrub with sha256
//! checksums, and the `strata-rpc` subcommands of the `bdev_mirror_*` methods.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use strata_tests::{is_uuid, json_out, ok, Target};

const BS: u64 = 4096;
/// The metadata before the data of a leg without stripes: 1 MiB.
const DATA_OFFSET_BLOCKS: u64 = 256;

/// 4 KiB-block malloc bdevs of `num_blocks` blocks.
fn mallocs(t: &Target, names: &[&str], num_blocks: u64) {
    for n in names {
        t.rpc_ok(
            "bdev_malloc_create",
            json!({"name": n, "num_blocks": num_blocks, "block_size": BS}),
        );
    }
}

/// `bdev_mirror_get` of one mirror.
fn mirror(t: &Target, name: &str) -> Value {
    let v = t.rpc_ok("bdev_mirror_get", json!({ "name": name }));
    let arr = v
        .as_array()
        .unwrap_or_else(|| panic!("bdev_mirror_get did not return an array: {v}"));
    assert_eq!(arr.len(), 1, "bdev_mirror_get {name}: {v}");
    arr[0].clone()
}

/// The leg of `m` in `role` (primary / secondary).
fn leg<'a>(m: &'a Value, role: &str) -> &'a Value {
    let legs = m["legs"]
        .as_array()
        .unwrap_or_else(|| panic!("no legs array: {m}"));
    assert_eq!(legs.len(), 2, "{m}");
    let found: Vec<&Value> = legs.iter().filter(|l| l["role"] == role).collect();
    assert_eq!(found.len(), 1, "one {role} leg expected: {m}");
    found[0]
}

/// Polls the mirror until `pred` holds (60 s at most); returns that state.
fn wait_mirror(t: &Target, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let m = mirror(t, name);
        if pred(&m) {
            return m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "mirror {name} was not {what}: {m}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the mirror is in sync with no job running; both legs in sync.
fn wait_in_sync(t: &Target, name: &str) -> Value {
    let m = wait_mirror(t, name, "in sync and idle", |m| {
        m["state"] == "in_sync" && m["job"].is_null()
    });
    for role in ["primary", "secondary"] {
        assert_eq!(leg(&m, role)["state"], "in_sync", "{m}");
    }
    m
}

/// Waits until a job started after `prev` was the last one has finished; checks its kind
/// and that it succeeded; returns it.
fn wait_job_done(t: &Target, name: &str, prev: &Value, kind: &str) -> Value {
    let m = wait_mirror(t, name, "done with its job", |m| {
        m["job"].is_null() && !m["last_job"].is_null() && m["last_job"] != *prev
    });
    let job = m["last_job"].clone();
    assert_eq!(job["kind"], kind, "{m}");
    assert_eq!(job["result"], "done", "{m}");
    job
}

fn claimed(t: &Target, bdev: &str) -> bool {
    t.bdev(bdev)["claimed"]
        .as_bool()
        .unwrap_or_else(|| panic!("{bdev}: no claimed flag"))
}

#[test]
fn mirror_lifecycle() {
    let t = Target::start(&["--no-default"]);
    // 16 MiB legs.
    let leg_blocks = 4096;
    let vol_blocks = leg_blocks - DATA_OFFSET_BLOCKS;
    mallocs(&t, &["L0", "L1"], leg_blocks);
    let r = t.rpc_ok(
        "bdev_mirror_create",
        json!({"name": "M0", "primary": "L0", "secondary": "L1"}),
    );
    assert_eq!(r, json!("M0"));

    // The volume is a bdev of the mirror module.
    let b = t.bdev("M0");
    assert_eq!(b["block_size"], BS, "{b}");
    assert_eq!(b["num_blocks"], vol_blocks, "{b}");
    let product = b["product_name"].as_str().unwrap_or_default();
    assert!(
        product.to_lowercase().contains("mirror"),
        "product_name: {b}"
    );
    assert!(b["driver_specific"]["mirror"].is_object(), "{b}");
    assert!(
        claimed(&t, "L0") && claimed(&t, "L1"),
        "the legs are claimed"
    );

    let m = mirror(&t, "M0");
    assert_eq!(m["name"], "M0", "{m}");
    let uuid = m["uuid"].as_str().unwrap_or_default();
    assert!(is_uuid(uuid), "{m}");
    assert_eq!(
        uuid.to_lowercase(),
        b["uuid"].as_str().unwrap().to_lowercase()
    );
    assert_eq!(m["block_size"], BS, "{m}");
    assert_eq!(m["num_blocks"], vol_blocks, "{m}");
    assert_eq!(m["data_offset_blocks"], DATA_OFFSET_BLOCKS, "{m}");
    assert_eq!(m["region_size_kb"], 1024, "{m}");
    assert_eq!(m["regions"], vol_blocks / 256, "{m}");
    assert_eq!(m["read_policy"], "primary", "{m}");
    assert_eq!(m["checksum"], "crc32c", "{m}");
    assert_eq!(m["scrub_interval_s"], 0, "{m}");
    assert_eq!(m["max_bandwidth_mb_sec"], 0, "{m}");
    assert_eq!(m["bitmap_trusted"], true, "{m}");
    assert_eq!(leg(&m, "primary")["name"], "L0", "{m}");
    assert_eq!(leg(&m, "secondary")["name"], "L1", "{m}");

    // The initial sync.
    let m = wait_in_sync(&t, "M0");
    assert_eq!(m["last_job"]["kind"], "resync", "{m}");
    assert_eq!(m["last_job"]["result"], "done", "{m}");
    assert_eq!(m["dirty_regions"], 0, "{m}");

    // Split, then resume: nothing was written, nothing to copy.
    assert_eq!(
        t.rpc_ok("bdev_mirror_split", json!({"name": "M0"})),
        json!(true)
    );
    let m = mirror(&t, "M0");
    assert_eq!(m["state"], "split", "{m}");
    assert!(m["job"].is_null(), "{m}");
    let prev = m["last_job"].clone();
    assert_eq!(
        t.rpc_ok("bdev_mirror_resume", json!({"name": "M0"})),
        json!(true)
    );
    let job = wait_job_done(&t, "M0", &prev, "resync");
    assert_eq!(job["copied_bytes"], 0, "{job}");
    wait_in_sync(&t, "M0");

    // Options.
    assert_eq!(
        t.rpc_ok(
            "bdev_mirror_set_options",
            json!({"name": "M0", "read_policy": "balance", "max_bandwidth_mb_sec": 100}),
        ),
        json!(true)
    );
    let m = mirror(&t, "M0");
    assert_eq!(m["read_policy"], "balance", "{m}");
    assert_eq!(m["max_bandwidth_mb_sec"], 100, "{m}");
    t.rpc_ok(
        "bdev_mirror_set_options",
        json!({"name": "M0", "read_policy": "primary", "max_bandwidth_mb_sec": 0}),
    );
    let m = mirror(&t, "M0");
    assert_eq!(m["read_policy"], "primary", "{m}");
    assert_eq!(m["max_bandwidth_mb_sec"], 0, "{m}");

    // Scrub of identical legs.
    let prev = m["last_job"].clone();
    assert_eq!(
        t.rpc_ok("bdev_mirror_verify", json!({"name": "M0"})),
        json!(true)
    );
    let job = wait_job_done(&t, "M0", &prev, "scrub");
    assert_eq!(job["mismatches"], 0, "{job}");

    // Without a name: all mirrors.
    let all = t.rpc_ok("bdev_mirror_get", json!({}));
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    assert_eq!(all[0]["name"], "M0", "{all}");

    // Delete releases the legs.
    assert_eq!(
        t.rpc_ok("bdev_mirror_delete", json!({"name": "M0"})),
        json!(true)
    );
    assert!(
        !claimed(&t, "L0") && !claimed(&t, "L1"),
        "the legs are released"
    );
    let (code, msg) = t.rpc_err("bdev_get_bdevs", json!({"name": "M0"}));
    assert_eq!(code, -19, "{msg}");
    assert_eq!(t.rpc_ok("bdev_mirror_get", json!({})), json!([]));
    let (code, msg) = t.rpc_err("bdev_mirror_get", json!({"name": "M0"}));
    assert_eq!(code, -19, "{msg}");

    // The same legs make a new mirror.
    let r = t.rpc_ok(
        "bdev_mirror_create",
        json!({"name": "M0", "primary": "L1", "secondary": "L0", "initial_sync": false}),
    );
    assert_eq!(r, json!("M0"));
    let m = wait_in_sync(&t, "M0");
    assert_eq!(leg(&m, "primary")["name"], "L1", "{m}");
    assert_eq!(leg(&m, "secondary")["name"], "L0", "{m}");
    assert!(claimed(&t, "L0") && claimed(&t, "L1"));
    t.rpc_ok("bdev_mirror_delete", json!({"name": "M0"}));
    assert!(!claimed(&t, "L0") && !claimed(&t, "L1"));
}

/// `bdev_mirror_create` params: a valid request with `changes` applied (a null value removes
/// the key).
fn create_with(changes: Value) -> Value {
    let mut p = json!({"name": "M", "primary": "L0", "secondary": "L1"});
    let obj = p.as_object_mut().unwrap();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), v.clone());
        }
    }
    p
}

#[test]
fn bad_parameters() {
    let t = Target::start(&["--no-default"]);
    mallocs(&t, &["L0", "L1", "L3", "L4"], 1024);
    // Same size in bytes, 512-byte blocks.
    t.rpc_ok(
        "bdev_malloc_create",
        json!({"name": "L2", "num_blocks": 8192, "block_size": 512}),
    );
    // MX holds L3 and L4.
    t.rpc_ok(
        "bdev_mirror_create",
        json!({"name": "MX", "primary": "L3", "secondary": "L4", "initial_sync": false}),
    );
    wait_in_sync(&t, "MX");

    // (changes, expected code, word the message must contain)
    let cases: Vec<(Value, i64, Option<&str>)> = vec![
        (json!({"name": null}), -32602, Some("name")),
        (json!({"primary": null}), -32602, Some("primary")),
        (json!({"secondary": null}), -32602, Some("secondary")),
        (json!({"primary": "nope"}), -19, None),
        (json!({"secondary": "nope"}), -19, None),
        (json!({"primary": "L3"}), -16, None),
        (json!({"secondary": "L4"}), -16, None),
        (json!({"name": "MX"}), -17, None),
        (json!({"region_size_kb": 0}), -32602, Some("region_size_kb")),
        (json!({"region_size_kb": 3}), -32602, Some("region_size_kb")),
        (
            json!({"region_size_kb": 1000}),
            -32602,
            Some("region_size_kb"),
        ),
        (json!({"region_size_kb": 2}), -32602, Some("region_size_kb")),
        (
            json!({"region_size_kb": 131072}),
            -32602,
            Some("region_size_kb"),
        ),
        (
            json!({"scan_chunk_kb": 2048}),
            -32602,
            Some("scan_chunk_kb"),
        ),
        (
            json!({"region_size_kb": 64, "scan_chunk_kb": 128}),
            -32602,
            Some("scan_chunk_kb"),
        ),
        (json!({"scan_chunk_kb": 48}), -32602, Some("scan_chunk_kb")),
        (json!({"scan_chunk_kb": 0}), -32602, Some("scan_chunk_kb")),
        (
            json!({"read_policy": "random"}),
            -32602,
            Some("read_policy"),
        ),
        (json!({"checksum": "md5"}), -32602, Some("checksum")),
        (json!({"secondary": "L2"}), -32602, None),
        (json!({"colour": 1}), -32602, Some("colour")),
    ];
    for (changes, code, word) in cases {
        let params = create_with(changes);
        let (c, msg) = t.rpc_err("bdev_mirror_create", params.clone());
        assert_eq!(c, code, "{params}: {msg}");
        if let Some(w) = word {
            assert!(
                msg.contains(w),
                "{params}: the message must name {w}: {msg}"
            );
        }
    }
    // The same bdev for both legs.
    let params = create_with(json!({"secondary": "L0"}));
    let (c, msg) = t.rpc_err("bdev_mirror_create", params.clone());
    assert!(c == -22 || c == -32602, "{params}: {c} {msg}");

    // Nothing was created or left claimed by the refused requests.
    for l in ["L0", "L1", "L2"] {
        assert!(!claimed(&t, l), "{l} left claimed");
    }
    let (c, _) = t.rpc_err("bdev_get_bdevs", json!({"name": "M"}));
    assert_eq!(c, -19);
    let all = t.rpc_ok("bdev_mirror_get", json!({}));
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    // The refused requests did not disturb MX.
    assert_eq!(mirror(&t, "MX")["state"], "in_sync");

    // Operations on an unknown mirror.
    for (method, params) in [
        ("bdev_mirror_split", json!({"name": "nope"})),
        ("bdev_mirror_resume", json!({"name": "nope"})),
        ("bdev_mirror_verify", json!({"name": "nope"})),
        ("bdev_mirror_delete", json!({"name": "nope"})),
        ("bdev_mirror_get", json!({"name": "nope"})),
        (
            "bdev_mirror_set_options",
            json!({"name": "nope", "max_bandwidth_mb_sec": 1}),
        ),
    ] {
        let (c, msg) = t.rpc_err(method, params.clone());
        assert_eq!(c, -19, "{method} {params}: {msg}");
    }

    // Bad parameters of the other methods.
    for (method, params, word) in [
        ("bdev_mirror_split", json!({}), "name"),
        (
            "bdev_mirror_resume",
            json!({"name": "MX", "mode": "fast"}),
            "mode",
        ),
        (
            "bdev_mirror_verify",
            json!({"name": "MX", "repair": "yes"}),
            "repair",
        ),
        (
            "bdev_mirror_set_options",
            json!({"name": "MX", "read_policy": "random"}),
            "read_policy",
        ),
    ] {
        let (c, msg) = t.rpc_err(method, params.clone());
        assert_eq!(c, -32602, "{method} {params}: {msg}");
        assert!(
            msg.contains(word),
            "{method} {params}: the message must name {word}: {msg}"
        );
    }
    let m = mirror(&t, "MX");
    assert_eq!(m["state"], "in_sync", "{m}");
    assert_eq!(m["read_policy"], "primary", "{m}");
}

#[test]
fn resume_while_a_job_runs_is_busy() {
    let t = Target::start(&["--no-default"]);
    // 64 MiB legs synced at 1 MB/s: the initial sync lasts about a minute.
    mallocs(&t, &["L0", "L1"], 16384);
    t.rpc_ok(
        "bdev_mirror_create",
        json!({"name": "M0", "primary": "L0", "secondary": "L1", "max_bandwidth_mb_sec": 1}),
    );
    let m = wait_mirror(&t, "M0", "running its initial sync", |m| {
        m["job"]["kind"] == "resync"
    });
    assert_eq!(m["state"], "resyncing", "{m}");
    assert_eq!(leg(&m, "secondary")["state"], "resyncing", "{m}");
    assert_eq!(m["max_bandwidth_mb_sec"], 1, "{m}");
    assert!(m["job"]["percent"].as_f64().unwrap() < 100.0, "{m}");

    for params in [
        json!({"name": "M0"}),
        json!({"name": "M0", "mode": "checksum"}),
    ] {
        let (c, msg) = t.rpc_err("bdev_mirror_resume", params.clone());
        assert_eq!(c, -16, "{params}: {msg}");
    }
    let m = mirror(&t, "M0");
    assert_eq!(m["job"]["kind"], "resync", "the running job goes on: {m}");

    // Lifting the limit lets it finish.
    t.rpc_ok(
        "bdev_mirror_set_options",
        json!({"name": "M0", "max_bandwidth_mb_sec": 0}),
    );
    let m = wait_in_sync(&t, "M0");
    assert_eq!(m["max_bandwidth_mb_sec"], 0, "{m}");
    assert_eq!(m["last_job"]["kind"], "resync", "{m}");
    assert_eq!(m["last_job"]["result"], "done", "{m}");
}

#[test]
fn sha256_scrub() {
    let t = Target::start(&["--no-default"]);
    mallocs(&t, &["L0", "L1"], 4096);
    t.rpc_ok(
        "bdev_mirror_create",
        json!({"name": "M0", "primary": "L0", "secondary": "L1", "checksum": "sha256",
            "region_size_kb": 256, "scan_chunk_kb": 16}),
    );
    let m = wait_in_sync(&t, "M0");
    assert_eq!(m["checksum"], "sha256", "{m}");
    assert_eq!(m["region_size_kb"], 256, "{m}");
    // 3840 blocks of data in 64-block regions.
    assert_eq!(m["regions"], 60, "{m}");
    let prev = m["last_job"].clone();
    assert_eq!(
        t.rpc_ok("bdev_mirror_verify", json!({"name": "M0", "repair": true})),
        json!(true)
    );
    let job = wait_job_done(&t, "M0", &prev, "scrub");
    assert_eq!(job["mismatches"], 0, "{job}");
    assert_eq!(job["repaired"], 0, "{job}");
    assert_eq!(mirror(&t, "M0")["state"], "in_sync");
}

#[test]
fn strata_rpc_mirror_subcommands() {
    let t = Target::start(&["--no-default"]);
    mallocs(&t, &["L0", "L1", "L2", "L3"], 1024);
    t.rpc_ok(
        "bdev_mirror_create",
        json!({"name": "M0", "primary": "L0", "secondary": "L1"}),
    );
    wait_in_sync(&t, "M0");

    let v = json_out(
        &t.cli(&["bdev_mirror_get", "-n", "M0"]),
        "bdev_mirror_get -n M0",
    );
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v[0]["name"], "M0", "{v}");
    assert_eq!(v[0]["state"], "in_sync", "{v}");

    let v = json_out(&t.cli(&["bdev_mirror_split", "M0"]), "bdev_mirror_split M0");
    assert_eq!(v, json!(true));
    assert_eq!(mirror(&t, "M0")["state"], "split");

    ok(
        &t.cli(&["bdev_mirror_resume", "M0", "-m", "bitmap"]),
        "bdev_mirror_resume M0 -m bitmap",
    );
    wait_in_sync(&t, "M0");

    let prev = mirror(&t, "M0")["last_job"].clone();
    ok(
        &t.cli(&["bdev_mirror_verify", "M0"]),
        "bdev_mirror_verify M0",
    );
    let job = wait_job_done(&t, "M0", &prev, "scrub");
    assert_eq!(job["mismatches"], 0, "{job}");
    // --wait returns once the job is over.
    ok(
        &t.cli(&["bdev_mirror_verify", "M0", "--repair", "--wait"]),
        "bdev_mirror_verify M0 --repair --wait",
    );
    let m = mirror(&t, "M0");
    assert!(
        m["job"].is_null(),
        "--wait returned with the job running: {m}"
    );
    assert_eq!(m["last_job"]["kind"], "scrub", "{m}");
    assert_eq!(m["last_job"]["result"], "done", "{m}");
    assert_eq!(m["last_job"]["repaired"], 0, "{m}");

    ok(
        &t.cli(&[
            "bdev_mirror_set_options",
            "M0",
            "--read-policy",
            "balance",
            "-b",
            "7",
        ]),
        "bdev_mirror_set_options",
    );
    let m = mirror(&t, "M0");
    assert_eq!(m["read_policy"], "balance", "{m}");
    assert_eq!(m["max_bandwidth_mb_sec"], 7, "{m}");

    let v = json_out(
        &t.cli(&[
            "bdev_mirror_create",
            "-n",
            "M1",
            "-p",
            "L2",
            "-s",
            "L3",
            "-r",
            "256",
            "--checksum",
            "sha256",
            "--no-initial-sync",
        ]),
        "bdev_mirror_create",
    );
    assert_eq!(v, json!("M1"));
    let m = wait_in_sync(&t, "M1");
    assert_eq!(m["region_size_kb"], 256, "{m}");
    assert_eq!(m["checksum"], "sha256", "{m}");
    assert_eq!(leg(&m, "primary")["name"], "L2", "{m}");
    let v = json_out(&t.cli(&["bdev_mirror_get"]), "bdev_mirror_get");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");

    ok(
        &t.cli(&["bdev_mirror_delete", "M1"]),
        "bdev_mirror_delete M1",
    );
    assert!(!claimed(&t, "L2") && !claimed(&t, "L3"));
    // An error exits 1 with the code on stderr.
    let out = t.cli(&["bdev_mirror_split", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-19"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
