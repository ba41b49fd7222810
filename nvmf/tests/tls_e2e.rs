//! NVMe/TCP over TLS 1.3 with PSKs between strata's own pieces: the host library connects
//! through a secure-channel listener with SHA-256 and SHA-384 PSKs and moves verified data
//! on several queues; a wrong PSK, a plain connection to the secure listener, garbage
//! instead of a ClientHello, a PSK host on a plain listener and a Connect whose host NQN is
//! not the TLS identity's are all refused with a log line while a connected host keeps its
//! service; a second node attaches the first one's namespace over TLS
//! (`bdev_nvme_attach_controller ... psk`, a remote member) and reads the data through it.
//! `save_config` keeps listener and key names, never a secret. Two processes on their own
//! loopback addresses (127.0.0.36, 127.0.0.37).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use strata_nvmf::host::blocking::BlockingController;
use strata_nvmf::host::controller::ControllerOptions;
use strata_nvmf::host::{ConnectParams, HostError, HostTls, QueuePair, QueuePairOptions};
use strata_nvmf::tls::{ConfiguredPsk, RetainedHash};
use zeroize::Zeroizing;

mod common;
use common::{free_port, rpc_call, TgtProcess};

const NQN: &str = "nqn.2026-12.io.strata:tls-e2e";
const HOST1: &str = "nqn.2014-08.org.nvmexpress:uuid:3d0c1a52-5b1e-4f3a-8c11-0e1f2a3b4c5d";
const HOST2: &str = "nqn.2014-08.org.nvmexpress:uuid:9e8d7c6b-5a49-4838-a726-15f4e3d2c1b0";
const BS: usize = 4096;

fn rpc_ok(t: &TgtProcess, method: &str, params: Value) -> Value {
    rpc_call(&t.sock, method, &params)
        .unwrap_or_else(|e| panic!("{method} {params}: {e:?}\n{}", t.log_text()))
}

fn psk(len: usize, hash: RetainedHash) -> ConfiguredPsk {
    ConfiguredPsk {
        hash,
        key: Zeroizing::new((0..len).map(|_| rand::random::<u8>()).collect()),
    }
}

fn add_key(t: &TgtProcess, name: &str, k: &ConfiguredPsk) {
    let p = t.dir.join(format!("{name}-{}.key", t.ip));
    std::fs::write(&p, k.format()).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    rpc_ok(
        t,
        "keyring_file_add_key",
        json!({ "name": name, "path": p }),
    );
}

fn listener(ip: &str, port: u16) -> Value {
    json!({ "trtype": "TCP", "adrfam": "IPv4", "traddr": ip, "trsvcid": port.to_string() })
}

fn connect(
    addr: std::net::SocketAddr,
    host: &str,
    k: Option<&ConfiguredPsk>,
) -> Result<BlockingController, HostError> {
    let opts = ControllerOptions {
        io_queues: 2,
        queue_depth: 16,
        timeout: Duration::from_secs(10),
        hostnqn: Some(host.into()),
        tls_psk: k.map(|k| Arc::new(k.clone())),
        ..Default::default()
    };
    BlockingController::connect(addr, NQN, opts)
}

/// An admin queue over TLS with the identity `tls` (host, subsystem) whose Connect names
/// `connect_host` (for identities and Connects the host library would never pair).
fn admin_queue(
    addr: std::net::SocketAddr,
    k: &ConfiguredPsk,
    tls: (&str, &str),
    connect_host: &str,
) -> Result<QueuePair, HostError> {
    let qopts = QueuePairOptions {
        timeout: Duration::from_secs(10),
        tls: Some(HostTls {
            psk: Arc::new(k.clone()),
            hostnqn: tls.0.into(),
            subnqn: tls.1.into(),
            kernel: true,
        }),
        ..Default::default()
    };
    let params = ConnectParams {
        subnqn: tls.1.into(),
        hostnqn: connect_host.into(),
        hostid: [9; 16],
        cntlid: 0xffff,
        kato_ms: 0,
        dhchap: None,
    };
    QueuePair::connect(addr, &qopts, &params).map(|(q, _)| q)
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

#[test]
fn tls_hosts_move_verified_data_and_every_bad_connection_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = TgtProcess::launch_on(
        "127.0.0.36",
        free_port(),
        dir.path(),
        "a",
        vec![json!({ "method": "bdev_malloc_create", "params":
            { "name": "M0", "num_blocks": 8192, "block_size": BS } })],
        NQN,
        "M0",
        &["--interrupt-mode"],
    );
    let tls_port = free_port();
    rpc_ok(
        &a,
        "nvmf_subsystem_add_listener",
        json!({ "nqn": NQN, "listen_address": listener(&a.ip, tls_port), "secure_channel": true }),
    );
    let tls_addr: std::net::SocketAddr = format!("{}:{tls_port}", a.ip).parse().unwrap();
    // One port is TLS or not, for every subsystem on it.
    let e = rpc_call(
        &a.sock,
        "nvmf_subsystem_add_listener",
        &json!({ "nqn": NQN, "listen_address": listener(&a.ip, a.port), "secure_channel": true }),
    )
    .unwrap_err();
    assert!(e.0 == -32602 || e.0 == -17, "{e:?}");
    let (k1, k2) = (psk(32, RetainedHash::Sha256), psk(48, RetainedHash::Sha384));
    add_key(&a, "psk1", &k1);
    add_key(&a, "psk2", &k2);
    // A key file that is not a PSK is refused when a host is given it.
    std::fs::write(dir.path().join("junk.key"), "NVMeTLSkey-1:01:bm90IGEga2V5:").unwrap();
    std::fs::set_permissions(
        dir.path().join("junk.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    rpc_ok(
        &a,
        "keyring_file_add_key",
        json!({ "name": "junk", "path": dir.path().join("junk.key") }),
    );
    let e = rpc_call(
        &a.sock,
        "nvmf_subsystem_add_host",
        &json!({ "nqn": NQN, "host": HOST1, "psk": "junk" }),
    )
    .unwrap_err();
    assert_eq!(e.0, -32602, "{e:?}");
    rpc_ok(
        &a,
        "nvmf_subsystem_add_host",
        json!({ "nqn": NQN, "host": HOST1, "psk": "psk1" }),
    );
    rpc_ok(
        &a,
        "nvmf_subsystem_add_host",
        json!({ "nqn": NQN, "host": HOST2, "psk": "psk2" }),
    );

    // Verified data over TLS, both suites, large and small transfers on two queues.
    let data = pattern(7, 96 * BS);
    let mut c1 = connect(tls_addr, HOST1, Some(&k1)).unwrap();
    c1.write_blocks(1, 100, &data).unwrap();
    assert_eq!(c1.read_blocks(1, 100, 96).unwrap(), data);
    let mut c2 = connect(tls_addr, HOST2, Some(&k2)).unwrap();
    assert_eq!(c2.read_blocks(1, 100, 96).unwrap(), data);
    for i in 0..64u64 {
        let d = pattern(i as u8, BS);
        c2.write_blocks(1, 1000 + i, &d).unwrap();
        assert_eq!(c1.read_blocks(1, 1000 + i, 1).unwrap(), d);
    }
    let log = a.log_text();
    assert!(log.contains("TLS_AES_128_GCM_SHA256"), "{log}");
    assert!(log.contains("TLS_AES_256_GCM_SHA384"), "{log}");
    // Kernel TLS where the kernel offers it (nvmf/tests/ktls_linux.rs runs this test in a
    // guest with the `tls` module), user-space records elsewhere.
    let ktls = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .unwrap_or_default()
        .split_whitespace()
        .any(|u| u == "tls");
    if std::env::var("STRATA_EXPECT_KTLS").is_ok_and(|v| v == "1") {
        assert!(
            ktls,
            "STRATA_EXPECT_KTLS=1 and the kernel offers no `tls` ULP"
        );
    }
    let want = if ktls { "ktls=true" } else { "ktls=false" };
    let other = if ktls { "ktls=false" } else { "ktls=true" };
    assert!(
        log.contains(want) && !log.contains(other),
        "expected {want}:\n{log}"
    );

    // Refusals. A wrong PSK fails the handshake.
    match connect(tls_addr, HOST1, Some(&psk(32, RetainedHash::Sha256))) {
        Err(HostError::Tls(_)) => {}
        other => panic!("a wrong PSK: {:?}", other.map(|_| ())),
    }
    // A host that speaks plain NVMe/TCP to the secure listener.
    assert!(connect(tls_addr, HOST1, None).is_err());
    // Garbage, then a ClientHello-shaped record with nothing in it.
    for junk in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        &[0x16, 3, 1, 0, 4, 1, 0, 0, 0][..],
    ] {
        let mut s = std::net::TcpStream::connect(tls_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(junk).unwrap();
        let mut buf = [0u8; 64];
        // An alert at most, then the close.
        let mut total = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => panic!("the target neither answered nor closed: {e}"),
            }
        }
        assert!(total < 64);
    }
    // A certificate-style ClientHello (no PSK offered) fails the handshake.
    {
        let s = std::net::TcpStream::connect(tls_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
        b.set_verify(openssl::ssl::SslVerifyMode::NONE);
        let r = b.build().configure().unwrap().connect("strata", s);
        assert!(r.is_err(), "a ClientHello without a PSK was accepted");
    }
    // Identities of an unknown subsystem, a host without a PSK, the wrong suite, and a
    // malformed one: each fails the handshake.
    for (host, sub, key) in [
        (HOST1, "nqn.2026-12.io.strata:nosuch", k1.clone()),
        ("nqn.2026-12.io.strata:nokey-host", NQN, k1.clone()),
        (HOST1, NQN, k2.clone()),
        (HOST1, "has space", k1.clone()),
    ] {
        match admin_queue(tls_addr, &key, (host, sub), host) {
            Err(HostError::Tls(_)) => {}
            other => panic!("identity {host} {sub}: {:?}", other.map(|_| ())),
        }
    }
    // A PSK host on the plain listener: Connect Invalid Host.
    match connect(a.addr(), HOST1, None) {
        Err(HostError::Status { sct: 1, sc: 0x84 }) => {}
        other => panic!("a PSK host without TLS: {:?}", other.map(|_| ())),
    }
    // TLS as HOST1, Connect as HOST2 (both allowed, both with PSKs): Connect Invalid Host.
    match admin_queue(tls_addr, &k1, (HOST1, NQN), HOST2) {
        Err(HostError::Status { sct: 1, sc: 0x84 }) => {}
        other => panic!("a borrowed TLS identity: {:?}", other.map(|_| ())),
    }
    // Discovery over TLS: with a PSK on the discovery subsystem, the host's admin queue to
    // it connects through the secure port.
    const DISCOVERY: &str = "nqn.2014-08.org.nvmexpress.discovery";
    assert!(admin_queue(tls_addr, &k1, (HOST1, DISCOVERY), HOST1).is_err());
    rpc_ok(
        &a,
        "nvmf_subsystem_add_host",
        json!({ "nqn": DISCOVERY, "host": HOST1, "psk": "psk1" }),
    );
    admin_queue(tls_addr, &k1, (HOST1, DISCOVERY), HOST1).unwrap();
    let log = a.log_text();
    for want in [
        "TLS handshake failed",
        "no subsystem nqn.2026-12.io.strata:nosuch",
        "has no PSK for",
        "is for TLS_AES_128_GCM_SHA256",
        "malformed NQNs in the identity",
        "must connect through a secure_channel listener",
        "the TLS PSK identity is",
    ] {
        assert!(log.contains(want), "no '{want}' in the log:\n{log}");
    }
    // The connected hosts kept their service through all of that.
    assert_eq!(c1.read_blocks(1, 100, 96).unwrap(), data);
    drop(c2);

    let subs = rpc_ok(&a, "nvmf_get_subsystems", json!({ "nqn": NQN })).to_string();
    assert!(
        subs.contains("\"psk\":\"psk1\"") && subs.contains("\"secure_channel\":true"),
        "{subs}"
    );
    let cfg = rpc_ok(&a, "save_config", json!({})).to_string();
    assert!(cfg.contains("\"secure_channel\":true"), "{cfg}");
    assert!(cfg.contains("\"psk\":\"psk2\""), "{cfg}");
    assert!(
        cfg.contains(&format!("\"nqn\":\"{DISCOVERY}\",\"psk\":\"psk1\"")),
        "{cfg}"
    );
    assert!(
        !cfg.contains(&k1.format()[16..40]),
        "no secret in save_config"
    );

    // A remote member over TLS: node B attaches A's namespace through the secure listener.
    let b = TgtProcess::launch_on(
        "127.0.0.37",
        free_port(),
        dir.path(),
        "b",
        vec![json!({ "method": "bdev_malloc_create", "params":
            { "name": "B0", "num_blocks": 256, "block_size": BS } })],
        "nqn.2026-12.io.strata:tls-e2e-b",
        "B0",
        &["--interrupt-mode"],
    );
    add_key(&b, "psk1", &k1);
    let attach = |extra: Value| {
        let mut p = json!({ "name": "RA", "trtype": "TCP", "traddr": a.ip, "adrfam": "IPv4",
            "trsvcid": tls_port.to_string(), "subnqn": NQN, "hostnqn": HOST1, "hostaddr": b.ip });
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        rpc_call(&b.sock, "bdev_nvme_attach_controller", &p)
    };
    assert!(
        attach(json!({})).is_err(),
        "attached over plain TCP to a TLS port"
    );
    attach(json!({ "psk": "psk1" })).unwrap();
    let cfg = rpc_ok(&b, "save_config", json!({})).to_string();
    assert!(cfg.contains("\"psk\":\"psk1\""), "{cfg}");
    rpc_ok(
        &b,
        "nvmf_create_subsystem",
        json!({ "nqn": "nqn.2026-12.io.strata:tls-e2e-via-b", "allow_any_host": true }),
    );
    rpc_ok(
        &b,
        "nvmf_subsystem_add_ns",
        json!({ "nqn": "nqn.2026-12.io.strata:tls-e2e-via-b", "namespace": { "bdev_name": "RAn1" } }),
    );
    rpc_ok(
        &b,
        "nvmf_subsystem_add_listener",
        json!({ "nqn": "nqn.2026-12.io.strata:tls-e2e-via-b", "listen_address": listener(&b.ip, b.port) }),
    );
    let mut via_b = b.connect("nqn.2026-12.io.strata:tls-e2e-via-b");
    assert_eq!(via_b.read_blocks(1, 100, 96).unwrap(), data);
    drop(via_b);
    drop(c1);
    b.stop();
    a.stop();
}
