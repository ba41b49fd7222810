//! Create / inspect / delete cycles for every bdev type over JSON-RPC.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use strata_tests::{is_uuid, make_file, Target};

const MIB: u64 = 1024 * 1024;

fn names(t: &Target) -> Vec<String> {
    t.bdevs()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn malloc_create_delete() {
    let t = Target::start(&["--no-default"]);
    let name = t.rpc_ok(
        "bdev_malloc_create",
        json!({"name": "M1", "num_blocks": 2048, "block_size": 512}),
    );
    assert_eq!(name, json!("M1"));
    let b = t.bdev("M1");
    assert_eq!(b["block_size"], 512, "{b}");
    assert_eq!(b["num_blocks"], 2048, "{b}");
    assert_eq!(b["product_name"], "Malloc disk", "{b}");
    assert_eq!(b["claimed"], false, "{b}");
    assert!(is_uuid(b["uuid"].as_str().unwrap()), "{b}");
    assert_eq!(b["supported_io_types"]["read"], true, "{b}");
    assert_eq!(b["supported_io_types"]["write"], true, "{b}");
    assert_eq!(names(&t), vec!["M1".to_string()]);

    assert_eq!(
        t.rpc_ok("bdev_malloc_delete", json!({"name": "M1"})),
        json!(true)
    );
    assert!(names(&t).is_empty());
    let (code, msg) = t.rpc_err("bdev_get_bdevs", json!({"name": "M1"}));
    assert_eq!(code, -19, "{msg}");
    // The name is free again.
    t.rpc_ok(
        "bdev_malloc_create",
        json!({"name": "M1", "num_blocks": 16, "block_size": 4096}),
    );
    assert_eq!(t.bdev("M1")["num_blocks"], 16);
}

#[test]
fn malloc_explicit_uuid() {
    let t = Target::start(&["--no-default"]);
    let uuid = "3f0b2a4c-1d2e-4f60-8a9b-0c1d2e3f4a5b";
    t.rpc_ok(
        "bdev_malloc_create",
        json!({"name": "MU", "num_blocks": 64, "block_size": 4096, "uuid": uuid}),
    );
    let b = t.bdev("MU");
    assert_eq!(b["uuid"].as_str().unwrap().to_lowercase(), uuid, "{b}");
}

#[test]
fn malloc_auto_names_are_unique() {
    let t = Target::start(&[]);
    let a = t.rpc_ok(
        "bdev_malloc_create",
        json!({"num_blocks": 64, "block_size": 512}),
    );
    let b = t.rpc_ok(
        "bdev_malloc_create",
        json!({"num_blocks": 64, "block_size": 512}),
    );
    let a = a
        .as_str()
        .unwrap_or_else(|| panic!("name: {a}"))
        .to_string();
    let b = b
        .as_str()
        .unwrap_or_else(|| panic!("name: {b}"))
        .to_string();
    for n in [&a, &b] {
        assert!(n.starts_with("Malloc"), "auto name {n:?}");
        assert!(
            n["Malloc".len()..].parse::<u32>().is_ok(),
            "auto name {n:?} is not MallocN"
        );
    }
    assert_ne!(a, b);
    assert_ne!(a, "Malloc0", "auto name collides with the default bdev");
    assert_ne!(b, "Malloc0", "auto name collides with the default bdev");
    let all = names(&t);
    assert!(all.contains(&a) && all.contains(&b) && all.contains(&"Malloc0".to_string()));
    // The default bdev can be deleted like any malloc bdev.
    t.rpc_ok("bdev_malloc_delete", json!({"name": "Malloc0"}));
    assert!(!names(&t).contains(&"Malloc0".to_string()));
}

#[test]
fn distinct_uuids() {
    let t = Target::start(&["--no-default"]);
    for i in 0..4 {
        t.rpc_ok(
            "bdev_malloc_create",
            json!({"name": format!("U{i}"), "num_blocks": 8, "block_size": 512}),
        );
    }
    let mut uuids: Vec<String> = t
        .bdevs()
        .iter()
        .map(|b| b["uuid"].as_str().unwrap().to_string())
        .collect();
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), 4, "uuids not unique: {uuids:?}");
}

#[test]
fn null_create_delete() {
    let t = Target::start(&["--no-default"]);
    let r = t.rpc_ok(
        "bdev_null_create",
        json!({"name": "N1", "num_blocks": 1 << 20, "block_size": 4096}),
    );
    assert_eq!(r, json!("N1"));
    let b = t.bdev("N1");
    assert_eq!(b["block_size"], 4096, "{b}");
    assert_eq!(b["num_blocks"], 1 << 20, "{b}");
    assert_eq!(b["claimed"], false, "{b}");
    assert!(is_uuid(b["uuid"].as_str().unwrap()), "{b}");
    assert_eq!(
        t.rpc_ok("bdev_null_delete", json!({"name": "N1"})),
        json!(true)
    );
    assert!(names(&t).is_empty());
    let (code, msg) = t.rpc_err("bdev_null_delete", json!({"name": "N1"}));
    assert_eq!(code, -19, "{msg}");
}

fn file_bdev_cycle(create: &str, delete: &str) {
    let t = Target::start(&["--no-default"]);
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let file = make_file(dir.path(), "disk.img", size);
    let file = file.to_str().unwrap();

    let r = t.rpc_ok(
        create,
        json!({"filename": file, "name": "F4k", "block_size": 4096}),
    );
    assert_eq!(r, json!("F4k"));
    let b = t.bdev("F4k");
    assert_eq!(b["block_size"], 4096, "{b}");
    assert_eq!(b["num_blocks"], size / 4096, "{b}");
    assert_eq!(b["claimed"], false, "{b}");
    assert!(is_uuid(b["uuid"].as_str().unwrap()), "{b}");
    assert_eq!(b["supported_io_types"]["read"], true, "{b}");
    assert_eq!(b["supported_io_types"]["write"], true, "{b}");
    assert_eq!(t.rpc_ok(delete, json!({"name": "F4k"})), json!(true));
    assert!(names(&t).is_empty());

    // 512-byte blocks on a second file.
    let file2 = make_file(dir.path(), "disk2.img", 16 * MIB);
    t.rpc_ok(
        create,
        json!({"filename": file2.to_str().unwrap(), "name": "F512", "block_size": 512}),
    );
    let b = t.bdev("F512");
    assert_eq!(b["block_size"], 512, "{b}");
    assert_eq!(b["num_blocks"], 16 * MIB / 512, "{b}");

    // block_size is optional; whatever is chosen must cover the file exactly.
    let file3 = make_file(dir.path(), "disk3.img", 8 * MIB);
    t.rpc_ok(
        create,
        json!({"filename": file3.to_str().unwrap(), "name": "Fdef"}),
    );
    let b = t.bdev("Fdef");
    let bs = b["block_size"].as_u64().unwrap();
    assert!(bs.is_power_of_two() && bs >= 512, "{b}");
    assert_eq!(b["num_blocks"].as_u64().unwrap() * bs, 8 * MIB, "{b}");

    t.rpc_ok(delete, json!({"name": "F512"}));
    t.rpc_ok(delete, json!({"name": "Fdef"}));
    assert!(names(&t).is_empty());
    let (code, msg) = t.rpc_err(delete, json!({"name": "F512"}));
    assert_eq!(code, -19, "{msg}");

    // A file that does not exist.
    let missing = dir.path().join("missing.img");
    let (code, msg) = t.rpc_err(
        create,
        json!({"filename": missing.to_str().unwrap(), "name": "Fmissing", "block_size": 4096}),
    );
    assert!(code < 0, "{code} {msg}");
    assert!(names(&t).is_empty(), "failed create left a bdev behind");
}

#[test]
fn uring_create_delete() {
    file_bdev_cycle("bdev_uring_create", "bdev_uring_delete");
}

#[test]
fn aio_create_delete() {
    file_bdev_cycle("bdev_aio_create", "bdev_aio_delete");
}

#[test]
fn error_bdev_claims_base() {
    let t = Target::start(&["--no-default"]);
    t.rpc_ok(
        "bdev_malloc_create",
        json!({"name": "Base1", "num_blocks": 1024, "block_size": 512}),
    );
    let r = t.rpc_ok("bdev_error_create", json!({"base_name": "Base1"}));
    assert_eq!(r, json!("EE_Base1"));
    let base = t.bdev("Base1");
    assert_eq!(base["claimed"], true, "base must be claimed: {base}");
    let ee = t.bdev("EE_Base1");
    assert_eq!(ee["claimed"], false, "{ee}");
    assert_eq!(ee["block_size"], 512, "{ee}");
    assert_eq!(ee["num_blocks"], 1024, "{ee}");
    assert!(is_uuid(ee["uuid"].as_str().unwrap()), "{ee}");
    assert_ne!(ee["uuid"], base["uuid"], "error bdev needs its own uuid");

    // A second error bdev on the (claimed) base fails, and changes nothing.
    let (code, msg) = t.rpc_err("bdev_error_create", json!({"base_name": "Base1"}));
    assert!(code < 0, "{code} {msg}");
    assert_eq!(names(&t).len(), 2);

    // Error injection is accepted.
    assert_eq!(
        t.rpc_ok(
            "bdev_error_inject_error",
            json!({"name": "EE_Base1", "io_type": "read", "error_type": "failure", "num": 3}),
        ),
        json!(true)
    );
    assert_eq!(
        t.rpc_ok(
            "bdev_error_inject_error",
            json!({"name": "EE_Base1", "io_type": "clear", "error_type": "failure"}),
        ),
        json!(true)
    );
    let (code, msg) = t.rpc_err(
        "bdev_error_inject_error",
        json!({"name": "EE_Base1", "io_type": "bogus", "error_type": "failure"}),
    );
    assert!(code < 0, "{code} {msg}");
    let (code, msg) = t.rpc_err(
        "bdev_error_inject_error",
        json!({"name": "EE_nope", "io_type": "read", "error_type": "failure"}),
    );
    assert!(code < 0, "{code} {msg}");

    // Deleting the error bdev releases the claim.
    assert_eq!(
        t.rpc_ok("bdev_error_delete", json!({"name": "EE_Base1"})),
        json!(true)
    );
    let base = t.bdev("Base1");
    assert_eq!(base["claimed"], false, "base must be unclaimed: {base}");
    let (code, msg) = t.rpc_err("bdev_get_bdevs", json!({"name": "EE_Base1"}));
    assert_eq!(code, -19, "{msg}");
    // ... so it can be claimed again.
    assert_eq!(
        t.rpc_ok("bdev_error_create", json!({"base_name": "Base1"})),
        json!("EE_Base1")
    );
}

#[test]
fn error_bdev_on_missing_base() {
    let t = Target::start(&["--no-default"]);
    let (code, msg) = t.rpc_err("bdev_error_create", json!({"base_name": "Nope"}));
    assert_eq!(code, -19, "{msg}");
    assert!(names(&t).is_empty());
}

#[test]
fn error_bdev_explicit_uuid() {
    // The embedded default exports (claims) Malloc0: build an unclaimed one instead.
    let t = Target::start(&["--no-default"]);
    t.rpc_ok(
        "bdev_malloc_create",
        json!({"name": "Malloc0", "num_blocks": 65536, "block_size": 4096}),
    );
    let uuid = "11111111-2222-4333-8444-555555555555";
    t.rpc_ok(
        "bdev_error_create",
        json!({"base_name": "Malloc0", "uuid": uuid}),
    );
    assert_eq!(
        t.bdev("EE_Malloc0")["uuid"]
            .as_str()
            .unwrap()
            .to_lowercase(),
        uuid
    );
}

fn delay_params(base: &str, name: &str) -> Value {
    json!({
        "base_bdev_name": base,
        "name": name,
        "avg_read_latency": 10,
        "p99_read_latency": 20,
        "avg_write_latency": 30,
        "p99_write_latency": 40,
    })
}

#[test]
fn delay_create_update_delete() {
    let t = Target::start(&["--no-default"]);
    t.rpc_ok(
        "bdev_malloc_create",
        json!({"name": "DBase", "num_blocks": 256, "block_size": 4096}),
    );
    let r = t.rpc_ok("bdev_delay_create", delay_params("DBase", "D1"));
    assert_eq!(r, json!("D1"));
    let d = t.bdev("D1");
    assert_eq!(d["block_size"], 4096, "{d}");
    assert_eq!(d["num_blocks"], 256, "{d}");
    assert_eq!(d["claimed"], false, "{d}");
    assert!(is_uuid(d["uuid"].as_str().unwrap()), "{d}");
    let base = t.bdev("DBase");
    assert_eq!(base["claimed"], true, "delay must claim its base: {base}");

    // A second consumer of the claimed base fails.
    let (code, msg) = t.rpc_err("bdev_delay_create", delay_params("DBase", "D2"));
    assert!(code < 0, "{code} {msg}");
    let (code, msg) = t.rpc_err("bdev_error_create", json!({"base_name": "DBase"}));
    assert!(code < 0, "{code} {msg}");

    // p99 first, so that avg never exceeds p99 along the way.
    for (lt, us) in [
        ("p99_read", 1000),
        ("avg_read", 100),
        ("p99_write", 1000),
        ("avg_write", 100),
    ] {
        assert_eq!(
            t.rpc_ok(
                "bdev_delay_update_latency",
                json!({"delay_bdev_name": "D1", "latency_type": lt, "latency_us": us}),
            ),
            json!(true),
            "{lt}"
        );
    }
    let (code, msg) = t.rpc_err(
        "bdev_delay_update_latency",
        json!({"delay_bdev_name": "D1", "latency_type": "median", "latency_us": 100}),
    );
    assert!(code < 0, "{code} {msg}");
    let (code, msg) = t.rpc_err(
        "bdev_delay_update_latency",
        json!({"delay_bdev_name": "nope", "latency_type": "avg_read", "latency_us": 100}),
    );
    assert!(code < 0, "{code} {msg}");

    assert_eq!(
        t.rpc_ok("bdev_delay_delete", json!({"name": "D1"})),
        json!(true)
    );
    assert_eq!(t.bdev("DBase")["claimed"], false);
    let (code, msg) = t.rpc_err("bdev_get_bdevs", json!({"name": "D1"}));
    assert_eq!(code, -19, "{msg}");
    let (code, msg) = t.rpc_err("bdev_delay_delete", json!({"name": "D1"}));
    assert_eq!(code, -19, "{msg}");
}

#[test]
fn delay_on_missing_base() {
    let t = Target::start(&["--no-default"]);
    let (code, msg) = t.rpc_err("bdev_delay_create", delay_params("Nope", "D1"));
    assert_eq!(code, -19, "{msg}");
    assert!(names(&t).is_empty());
}

#[test]
fn stacked_error_on_delay() {
    // The embedded default exports (claims) Malloc0: build an unclaimed one instead.
    let t = Target::start(&["--no-default"]);
    t.rpc_ok(
        "bdev_malloc_create",
        json!({"name": "Malloc0", "num_blocks": 65536, "block_size": 4096}),
    );
    t.rpc_ok("bdev_delay_create", delay_params("Malloc0", "Dm"));
    assert_eq!(
        t.rpc_ok("bdev_error_create", json!({"base_name": "Dm"})),
        json!("EE_Dm")
    );
    assert_eq!(t.bdev("Malloc0")["claimed"], true);
    assert_eq!(t.bdev("Dm")["claimed"], true);
    assert_eq!(t.bdev("EE_Dm")["claimed"], false);
    assert_eq!(t.bdev("EE_Dm")["num_blocks"], 65536);
    t.rpc_ok("bdev_error_delete", json!({"name": "EE_Dm"}));
    t.rpc_ok("bdev_delay_delete", json!({"name": "Dm"}));
    assert_eq!(t.bdev("Malloc0")["claimed"], false);
    assert_eq!(names(&t), vec!["Malloc0".to_string()]);
}

#[test]
fn delete_with_wrong_type_does_not_delete() {
    // bdev_null_delete on a malloc bdev must not remove it (SPDK checks the module).
    let t = Target::start(&[]);
    let r = t.rpc("bdev_null_delete", json!({"name": "Malloc0"}));
    assert!(r.is_err(), "bdev_null_delete removed a malloc bdev: {r:?}");
    assert!(names(&t).contains(&"Malloc0".to_string()));
}
