//! DH-HMAC-CHAP between strata's own pieces: the host library authenticates against
//! `strata-tgt` (one-way and bidirectional, every queue) and is refused with a wrong secret,
//! a wrong controller secret (the host refuses the controller) and none; and a second node
//! attaches the first node's namespace with `bdev_nvme_attach_controller dhchap_key ...`
//! (a remote member with keys), reads back what the host library wrote, and keeps its keys
//! in `save_config` by name. Two processes on their own loopback addresses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use strata_nvmf::auth::DhchapSecret;
use strata_nvmf::host::auth::DhchapKeys;
use strata_nvmf::host::blocking::BlockingController;
use strata_nvmf::host::controller::ControllerOptions;
use strata_nvmf::host::HostError;

mod common;
use common::{free_port, rpc_call, TgtProcess};

const NQN: &str = "nqn.2026-12.io.strata:auth-e2e";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:7a1c7d5e-1b2a-4c55-9d10-a0b0c0d0e0f1";
const BS: usize = 4096;

fn rpc_ok(t: &TgtProcess, method: &str, params: Value) -> Value {
    rpc_call(&t.sock, method, &params)
        .unwrap_or_else(|e| panic!("{method} {params}: {e:?}\n{}", t.log_text()))
}

fn secret(transform: u8, len: usize) -> DhchapSecret {
    DhchapSecret {
        transform,
        key: (0..len).map(|_| rand::random::<u8>()).collect(),
    }
}

fn add_key(t: &TgtProcess, name: &str, s: &DhchapSecret) {
    let p = t.dir.join(format!("{name}-{}.key", t.ip));
    std::fs::write(&p, s.format()).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    rpc_ok(
        t,
        "keyring_file_add_key",
        json!({ "name": name, "path": p }),
    );
}

fn connect(t: &TgtProcess, keys: Option<DhchapKeys>) -> Result<BlockingController, HostError> {
    let opts = ControllerOptions {
        io_queues: 2,
        queue_depth: 8,
        timeout: Duration::from_secs(20),
        hostnqn: Some(HOSTNQN.into()),
        dhchap: keys.map(Arc::new),
        ..Default::default()
    };
    BlockingController::connect(t.addr(), NQN, opts)
}

#[test]
fn strata_hosts_and_remote_members_authenticate_and_wrong_secrets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = TgtProcess::launch_on(
        "127.0.0.34",
        free_port(),
        dir.path(),
        "a",
        vec![json!({ "method": "bdev_malloc_create", "params":
            { "name": "M0", "num_blocks": 4096, "block_size": BS } })],
        NQN,
        "M0",
        &["--interrupt-mode"],
    );
    // The subsystem of the helper config allows any host; this one must authenticate.
    let (host, ctrl) = (secret(2, 48), secret(0, 32));
    add_key(&a, "host", &host);
    add_key(&a, "ctrl", &ctrl);
    rpc_ok(
        &a,
        "nvmf_subsystem_add_host",
        json!({ "nqn": NQN, "host": HOSTNQN, "dhchap_key": "host", "dhchap_ctrlr_key": "ctrl" }),
    );

    // Bidirectional, with the strongest defaults (SHA-512, ffdhe8192), on every queue.
    let mut c = connect(
        &a,
        Some(DhchapKeys {
            key: host.clone(),
            ctrl_key: Some(ctrl.clone()),
        }),
    )
    .unwrap();
    let data: Vec<u8> = (0..64 * BS).map(|i| (i % 253) as u8).collect();
    c.write_blocks(1, 10, &data).unwrap();
    assert_eq!(c.read_blocks(1, 10, 64).unwrap(), data);
    drop(c);
    let log = a.log_text();
    assert!(
        log.contains("hash=\"sha512\"") && log.contains("dhgroup=\"ffdhe8192\""),
        "{log}"
    );
    // One-way, with a cheaper group.
    rpc_ok(
        &a,
        "nvmf_set_config",
        json!({ "dhchap_digests": ["sha256"], "dhchap_dhgroups": ["ffdhe2048"] }),
    );
    let mut c = connect(
        &a,
        Some(DhchapKeys {
            key: host.clone(),
            ctrl_key: None,
        }),
    )
    .unwrap();
    assert_eq!(c.read_blocks(1, 10, 64).unwrap(), data);
    drop(c);

    // Refusals: a wrong host secret, no secret, a controller that cannot prove itself.
    match connect(
        &a,
        Some(DhchapKeys {
            key: secret(2, 48),
            ctrl_key: None,
        }),
    ) {
        Err(HostError::Auth(m)) => assert!(m.contains("refused"), "{m}"),
        other => panic!("a wrong secret: {:?}", other.map(|_| ())),
    }
    match connect(&a, None) {
        Err(HostError::Auth(m)) => assert!(m.contains("no secret"), "{m}"),
        other => panic!("no secret: {:?}", other.map(|_| ())),
    }
    match connect(
        &a,
        Some(DhchapKeys {
            key: host.clone(),
            ctrl_key: Some(secret(0, 32)),
        }),
    ) {
        Err(HostError::Auth(m)) => assert!(m.contains("authentication failed"), "{m}"),
        other => panic!("a controller with another key: {:?}", other.map(|_| ())),
    }
    assert!(a.log_text().contains("the host failed the authentication"));

    // Key rotation: a connected controller keeps running; new connections need the new key.
    let mut kept = connect(
        &a,
        Some(DhchapKeys {
            key: host.clone(),
            ctrl_key: None,
        }),
    )
    .unwrap();
    let host2 = secret(1, 32);
    add_key(&a, "host2", &host2);
    rpc_ok(
        &a,
        "nvmf_subsystem_set_keys",
        json!({ "nqn": NQN, "host": HOSTNQN, "dhchap_key": "host2" }),
    );
    assert!(matches!(
        connect(
            &a,
            Some(DhchapKeys {
                key: host.clone(),
                ctrl_key: None,
            }),
        ),
        Err(HostError::Auth(_))
    ));
    assert_eq!(kept.read_blocks(1, 10, 64).unwrap(), data);
    drop(kept);
    let c = connect(
        &a,
        Some(DhchapKeys {
            key: host2.clone(),
            ctrl_key: None,
        }),
    )
    .unwrap();
    drop(c);
    rpc_ok(
        &a,
        "nvmf_subsystem_set_keys",
        json!({ "nqn": NQN, "host": HOSTNQN, "dhchap_key": "host", "dhchap_ctrlr_key": "ctrl" }),
    );

    // A remote member with keys: node B attaches A's namespace.
    let b = TgtProcess::launch_on(
        "127.0.0.35",
        free_port(),
        dir.path(),
        "b",
        vec![json!({ "method": "bdev_malloc_create", "params":
            { "name": "B0", "num_blocks": 256, "block_size": BS } })],
        "nqn.2026-12.io.strata:auth-e2e-b",
        "B0",
        &["--interrupt-mode"],
    );
    add_key(&b, "host", &host);
    add_key(&b, "ctrl", &ctrl);
    // A host holding a controller key accepts no controller that skips authentication.
    let opts = ControllerOptions {
        hostnqn: Some(HOSTNQN.into()),
        timeout: Duration::from_secs(20),
        dhchap: Some(Arc::new(DhchapKeys {
            key: host.clone(),
            ctrl_key: Some(ctrl.clone()),
        })),
        ..Default::default()
    };
    match BlockingController::connect(b.addr(), "nqn.2026-12.io.strata:auth-e2e-b", opts) {
        Err(HostError::Auth(m)) => assert!(m.contains("did not authenticate"), "{m}"),
        other => panic!(
            "a controller that skips authentication: {:?}",
            other.map(|_| ())
        ),
    }
    let attach = |keys: Value| {
        let mut p = json!({ "name": "RA", "trtype": "TCP", "traddr": a.ip, "adrfam": "IPv4",
            "trsvcid": a.port.to_string(), "subnqn": NQN, "hostnqn": HOSTNQN, "hostaddr": b.ip });
        for (k, v) in keys.as_object().unwrap() {
            p[k] = v.clone();
        }
        rpc_call(&b.sock, "bdev_nvme_attach_controller", &p)
    };
    let e = attach(json!({})).unwrap_err();
    assert!(e.1.contains("DH-HMAC-CHAP"), "{e:?}");
    assert_eq!(
        attach(json!({ "dhchap_key": "missing" })).unwrap_err().0,
        -126
    );
    attach(json!({ "dhchap_key": "host", "dhchap_ctrlr_key": "ctrl" })).unwrap();
    let cfg = rpc_ok(&b, "save_config", json!({})).to_string();
    assert!(cfg.contains("\"dhchap_ctrlr_key\":\"ctrl\""), "{cfg}");
    assert!(!cfg.contains(&host.format()), "no secret in save_config");
    // B exports the remote namespace; the host library reads A's data through it.
    rpc_ok(
        &b,
        "nvmf_create_subsystem",
        json!({ "nqn": "nqn.2026-12.io.strata:auth-e2e-via-b", "allow_any_host": true }),
    );
    rpc_ok(
        &b,
        "nvmf_subsystem_add_ns",
        json!({ "nqn": "nqn.2026-12.io.strata:auth-e2e-via-b", "namespace": { "bdev_name": "RAn1" } }),
    );
    rpc_ok(
        &b,
        "nvmf_subsystem_add_listener",
        json!({ "nqn": "nqn.2026-12.io.strata:auth-e2e-via-b", "listen_address":
            { "trtype": "TCP", "adrfam": "IPv4", "traddr": b.ip, "trsvcid": b.port.to_string() } }),
    );
    let mut via_b = b.connect("nqn.2026-12.io.strata:auth-e2e-via-b");
    assert_eq!(via_b.read_blocks(1, 10, 64).unwrap(), data);
    drop(via_b);
    b.stop();
    a.stop();
}
