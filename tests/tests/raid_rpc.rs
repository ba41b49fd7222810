//! RAID over JSON-RPC on the real daemon: create / inspect / remove / add / delete, and the
//! error of every bad parameter.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use strata_tests::Target;

fn mallocs(t: &Target, n: usize) {
    for i in 0..n {
        t.rpc_ok(
            "bdev_malloc_create",
            json!({"name": format!("M{i}"), "num_blocks": 1024, "block_size": 4096}),
        );
    }
}

#[test]
fn raid5_lifecycle() {
    let t = Target::start(&["--no-default"]);
    mallocs(&t, 5);
    let r = t.rpc_ok(
        "bdev_raid_create",
        json!({"name": "R5", "raid_level": "raid5f", "strip_size_kb": 16, "base_bdevs": ["M0", "M1", "M2", "M3"], "superblock": true}),
    );
    assert_eq!(r, json!("R5"));
    let b = t.bdev("R5");
    // 4 MiB members, 1 MiB of metadata: 3 MiB × 3 data members.
    assert_eq!(b["num_blocks"], 3 * 768, "{b}");
    assert_eq!(b["product_name"], "Raid Volume", "{b}");
    assert_eq!(t.bdev("M0")["claimed"], true);
    let list = t.rpc_ok("bdev_raid_get_bdevs", json!({"category": "online"}));
    let r5 = &list[0];
    assert_eq!(r5["raid_level"], "raid5", "{r5}");
    assert_eq!(r5["num_base_bdevs_operational"], 4, "{r5}");
    assert_eq!(r5["base_bdevs_list"][2]["state"], "active", "{r5}");

    t.rpc_ok("bdev_raid_remove_base_bdev", json!({"name": "M2"}));
    let r5 = &t.rpc_ok("bdev_raid_get_bdevs", json!({}))[0];
    assert_eq!(r5["base_bdevs_list"][2]["state"], "missing", "{r5}");
    assert_eq!(r5["degraded"], true, "{r5}");
    assert_eq!(
        t.bdev("M2")["claimed"],
        false,
        "a removed member is released"
    );

    t.rpc_ok(
        "bdev_raid_add_base_bdev",
        json!({"raid_bdev": "R5", "base_bdev": "M4"}),
    );
    assert!(strata_tests::wait_for(
        std::time::Duration::from_secs(30),
        || { t.rpc_ok("bdev_raid_get_bdevs", json!({}))[0]["num_base_bdevs_operational"] == 4 }
    ));
    let (code, msg) = t.rpc_err(
        "bdev_raid_add_base_bdev",
        json!({"raid_bdev": "R5", "base_bdev": "M2"}),
    );
    assert_eq!(code, -32602, "no failed member to replace: {msg}");

    t.rpc_ok("bdev_raid_delete", json!({"name": "R5"}));
    assert_eq!(t.bdev("M0")["claimed"], false);
    assert_eq!(t.rpc_ok("bdev_raid_get_bdevs", json!({})), json!([]));
}

#[test]
fn bad_parameters() {
    let t = Target::start(&["--no-default"]);
    mallocs(&t, 3);
    let bases = json!(["M0", "M1", "M2"]);
    for (params, code) in [
        (
            json!({"name": "R", "raid_level": "raid7", "strip_size_kb": 16, "base_bdevs": bases}),
            -32602,
        ),
        (
            json!({"name": "R", "raid_level": "raid5", "strip_size_kb": 16}),
            -32602,
        ),
        (
            json!({"name": "R", "raid_level": "raid5", "strip_size_kb": 16, "base_bdevs": []}),
            -32602,
        ),
        (
            json!({"name": "R", "raid_level": "raid5", "strip_size_kb": 16, "base_bdevs": [1, 2]}),
            -32602,
        ),
        (
            json!({"name": "R", "raid_level": "raid5", "strip_size_kb": 12, "base_bdevs": bases}),
            -32602,
        ),
        (
            json!({"name": "R", "raid_level": "raid5", "base_bdevs": bases}),
            -32602,
        ),
        (
            json!({"name": "R", "raid_level": "raid6", "strip_size_kb": 16, "base_bdevs": bases}),
            -32602,
        ),
        (
            json!({"name": "R", "raid_level": "raid0", "strip_size_kb": 16, "base_bdevs": ["M0", "nope"]}),
            -19,
        ),
        (
            json!({"name": "R", "raid_level": "raid0", "strip_size_kb": 16, "base_bdevs": ["M0", "M0"]}),
            -32602,
        ),
        (
            json!({"name": "R", "raid_level": "raid0", "strip_size_kb": 16, "base_bdevs": bases, "colour": 1}),
            -32602,
        ),
    ] {
        let (c, msg) = t.rpc_err("bdev_raid_create", params.clone());
        assert_eq!(c, code, "{params}: {msg}");
    }
    // Nothing was left claimed by the refused requests.
    for m in ["M0", "M1", "M2"] {
        assert_eq!(t.bdev(m)["claimed"], false, "{m}");
    }
    let (c, _) = t.rpc_err("bdev_raid_get_bdevs", json!({"category": "sideways"}));
    assert_eq!(c, -32602);
    let (c, _) = t.rpc_err("bdev_raid_delete", json!({"name": "nope"}));
    assert_eq!(c, -19);
    let (c, _) = t.rpc_err("bdev_raid_remove_base_bdev", json!({"name": "M0"}));
    assert_eq!(c, -19);
    let (c, _) = t.rpc_err(
        "bdev_raid_set_options",
        json!({"process_window_size_kb": 0}),
    );
    assert_eq!(c, -32602);
    // raid0 cannot rebuild.
    t.rpc_ok("bdev_raid_create", json!({"name": "R0", "raid_level": "raid0", "strip_size_kb": 16, "base_bdevs": ["M0", "M1"]}));
    let (c, _) = t.rpc_err(
        "bdev_raid_add_base_bdev",
        json!({"raid_bdev": "R0", "base_bdev": "M2"}),
    );
    assert_eq!(c, -95);
    // A config without superblock is saved and recreated.
    let cfg = t.rpc_ok("save_config", json!({}));
    assert!(cfg.to_string().contains("bdev_raid_create"), "{cfg}");
}
