//! DH-HMAC-CHAP with the Linux kernel host: a QEMU guest on Debian's backports kernel (Debian
//! 12's own is built without CONFIG_NVME_HOST_AUTH; `scripts/linux-host/newer-kernel.sh`)
//! connects with `nvme connect --dhchap-secret ... --dhchap-ctrl-secret ...` and runs fio
//! verify, connects one-way, and is refused with a wrong secret and with none
//! (`scripts/linux-host/auth-guest.sh`). The target chooses SHA-512 and ffdhe2048 (the
//! strongest of what the host offers and `nvmf_set_config` allows). The keyring's checks
//! are exercised on the way: a key file others may read, an unknown key name, a string
//! that is no secret.
//!
//! The only allowed skip: `scripts/linux-host/install.sh` exits 3 ("SKIPPED: ...") when QEMU
//! cannot run here at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use strata_nvmf::auth::DhchapSecret;

mod common;
use common::linux_guest::{self, Guest};
use common::{rpc_call, TgtProcess};

const NQN: &str = "nqn.2026-12.io.strata:kauth";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:5e2f0a4c-7d1b-4c3e-9a61-2b8d7f00a001";
const HOSTID: &str = "5e2f0a4c-7d1b-4c3e-9a61-2b8d7f00a001";

fn rpc_ok(t: &TgtProcess, method: &str, params: Value) -> Value {
    rpc_call(&t.sock, method, &params)
        .unwrap_or_else(|e| panic!("{method} {params}: {e:?}\n{}", t.log_text()))
}

fn secret(transform: u8, len: usize) -> String {
    DhchapSecret {
        transform,
        key: (0..len).map(|_| rand::random::<u8>()).collect(),
    }
    .format()
}

#[test]
fn linux_host_authenticates_with_dhchap_and_wrong_or_missing_secrets_are_refused() {
    if !linux_guest::installed() {
        return;
    }
    let kernel = linux_guest::newer_kernel();
    let dir = tempfile::tempdir().unwrap();
    let t = TgtProcess::launch(
        dir.path(),
        "kauth",
        vec![json!({ "method": "bdev_malloc_create", "params":
            { "name": "M0", "num_blocks": 256, "block_size": 4096 } })],
        "nqn.2026-12.io.strata:kauth-plain",
        "M0",
        &["--interrupt-mode"],
    );
    let (host_secret, ctrl_secret) = (secret(1, 32), secret(0, 48));
    for (name, s, mode) in [
        ("host", &host_secret, 0o600),
        ("ctrl", &ctrl_secret, 0o400),
        ("open", &host_secret, 0o644),
        ("junk", &"not a secret".to_string(), 0o600),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, s).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let r = rpc_call(
            &t.sock,
            "keyring_file_add_key",
            &json!({ "name": name, "path": p }),
        );
        if name == "open" {
            let e = r.unwrap_err();
            assert_eq!(e.0, -32602, "{e:?}");
            assert!(e.1.contains("only its owner"), "{e:?}");
        } else {
            r.unwrap();
        }
    }
    let keys = rpc_ok(&t, "keyring_get_keys", json!({}));
    assert!(
        !keys.to_string().contains(&host_secret),
        "secrets never leave"
    );
    rpc_ok(
        &t,
        "bdev_malloc_create",
        json!({ "name": "M1", "num_blocks": 8192, "block_size": 4096 }),
    );
    rpc_ok(&t, "nvmf_create_subsystem", json!({ "nqn": NQN }));
    rpc_ok(
        &t,
        "nvmf_subsystem_add_ns",
        json!({ "nqn": NQN, "namespace": { "bdev_name": "M1" } }),
    );
    let port = common::free_port();
    rpc_ok(
        &t,
        "nvmf_subsystem_add_listener",
        json!({ "nqn": NQN, "listen_address":
            { "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string() } }),
    );
    for (params, code) in [
        (
            json!({ "nqn": NQN, "host": HOSTNQN, "dhchap_key": "nope" }),
            -126,
        ),
        (
            json!({ "nqn": NQN, "host": HOSTNQN, "dhchap_key": "junk" }),
            -32602,
        ),
        (
            json!({ "nqn": NQN, "host": HOSTNQN, "dhchap_ctrlr_key": "ctrl" }),
            -32602,
        ),
    ] {
        let e = rpc_call(&t.sock, "nvmf_subsystem_add_host", &params).unwrap_err();
        assert_eq!(e.0, code, "{params}: {e:?}");
    }
    rpc_ok(
        &t,
        "nvmf_subsystem_add_host",
        json!({ "nqn": NQN, "host": HOSTNQN, "dhchap_key": "host", "dhchap_ctrlr_key": "ctrl" }),
    );
    rpc_ok(
        &t,
        "nvmf_set_config",
        json!({ "dhchap_dhgroups": ["null", "ffdhe2048"] }),
    );
    let cfg = rpc_ok(&t, "save_config", json!({})).to_string();
    assert!(cfg.contains("\"dhchap_key\":\"host\"") && cfg.contains("keyring_file_add_key"));
    assert!(!cfg.contains(&host_secret) && !cfg.contains(&ctrl_secret));

    let script = linux_guest::repo_dir().join("scripts/linux-host/auth-guest.sh");
    let command = format!(
        "PORT={port} NQN={NQN} HOSTNQN={HOSTNQN} HOSTID={HOSTID} SECRET='{host_secret}' \
         CTRL_SECRET='{ctrl_secret}' WRONG='{}' bash {}",
        secret(1, 32),
        script.display()
    );
    let guest = Guest::start_on(dir.path(), &command, 600, Some(&kernel));
    guest.finish();
    let log = t.log_text();
    assert!(
        log.contains("queue authenticated (DH-HMAC-CHAP)")
            && log.contains("hash=\"sha512\"")
            && log.contains("dhgroup=\"ffdhe2048\""),
        "{log}"
    );
    assert!(log.contains("authentication failed"), "{log}");
    t.stop();
}
