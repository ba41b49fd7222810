//! NVMe/TCP against a real Linux host: a QEMU guest running Debian's stock kernel discovers,
//! connects to and exercises a `strata-tgt` on this machine with nvme-cli and fio
//! (`scripts/linux-host/nvme-tcp-test.sh`; see that script for the steps), once against the
//! embedded default and once with `c2h_success_always` (reads completed as SPDK completes them).
//!
//! The only allowed skip: `scripts/linux-host/install.sh` exits 3 ("SKIPPED: ...") when QEMU
//! cannot run here at all (not x86-64, or not installed and not installable).
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::json;
use strata_tests::{rpc_bin, run_with_timeout, Target};

/// apt-get may have to download ~0.7 GB on a fresh machine.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);
/// The whole guest run (one boot, all steps) takes 15-60 s under TCG; generous for slow
/// machines. The script's own guest timeout is below this so QEMU never outlives the test.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);
const GUEST_TIMEOUT_SECS: u64 = 240;
/// The subsystem of strata-tgt's embedded default config (Malloc0 as namespace 1).
const NQN: &str = "nqn.2026-11.io.strata:default";
const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("linux-host")
}

/// Free TCP ports on 127.0.0.1, distinct from each other (all listeners are held until every
/// port is picked; another process may still take one before the target binds it).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn linux_kernel_host_over_nvme_tcp() {
    // 1. QEMU, the guest kernel, nvme-cli, fio (idempotent; quick when already installed).
    let install = run_with_timeout(
        &mut Command::new(scripts_dir().join("install.sh")),
        INSTALL_TIMEOUT,
    );
    if install.status.code() == Some(3) {
        let stdout = String::from_utf8_lossy(&install.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("SKIPPED:"))
            .unwrap_or("SKIPPED: scripts/linux-host/install.sh exited 3");
        println!("{line}");
        eprintln!("{line}");
        return;
    }
    assert!(
        install.status.success(),
        "scripts/linux-host/install.sh failed ({})\n{}",
        install.status,
        text(&install)
    );

    // 2. The target: its default config (Malloc0 exported as NQN), NVMe/TCP and discovery on
    //    free ports of 127.0.0.1 (4420 may be taken by something else on this machine).
    let ports = free_ports(2);
    let (port, discovery_port) = (ports[0].to_string(), ports[1].to_string());
    let target = Target::start(&["--nvmf-port", &port, "--discovery-port", &discovery_port]);

    // 3. One guest boot runs every step.
    guest_steps(&target, &port, &discovery_port);
    drop(target);

    // 4. Again with `c2h_success_always` (SPDK's behaviour): reads on queues that keep SQ flow
    //    control on end with SUCCESS in their C2HData and no CapsuleResp, which the kernel's
    //    host must accept as it does from SPDK.
    let ports = free_ports(2);
    let target = Target::start(&["--no-default"]);
    target.export_malloc(
        json!({"trtype": "TCP", "c2h_success_always": true}),
        65536,
        NQN,
        ports[0],
    );
    target.add_tcp_listener(DISCOVERY_NQN, ports[1]);
    let (port, discovery_port) = (ports[0].to_string(), ports[1].to_string());
    guest_steps(&target, &port, &discovery_port);
}

/// One guest boot runs every step of `nvme-tcp-test.sh` against `target`; the script's exit
/// status is the verdict. (On a failure the target's stderr is printed when `target` is
/// dropped.)
fn guest_steps(target: &Target, port: &str, discovery_port: &str) {
    let start = Instant::now();
    let mut cmd = Command::new(scripts_dir().join("nvme-tcp-test.sh"));
    cmd.args(["--port", port, "--discovery-port", discovery_port])
        .args(["--nqn", NQN])
        .arg("--rpc-sock")
        .arg(target.sock())
        .arg("--rpc-bin")
        .arg(rpc_bin())
        .args(["--timeout", &GUEST_TIMEOUT_SECS.to_string()]);
    let out = run_with_timeout(&mut cmd, TEST_TIMEOUT);
    let took = start.elapsed();
    let output = text(&out);
    println!("{output}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdict = stdout
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .find(|l| l.contains("FAILED"))
        .unwrap_or("no step reported a failure")
        .to_string();
    assert!(
        out.status.success(),
        "nvme-tcp-test.sh against strata-tgt (127.0.0.1:{port}, discovery {discovery_port}) \
         failed with {} after {took:?}: {verdict}\n{output}",
        out.status
    );
    assert!(
        stdout.contains("ALL STEPS OK"),
        "nvme-tcp-test.sh exited 0 without finishing every step\n{output}"
    );
}
