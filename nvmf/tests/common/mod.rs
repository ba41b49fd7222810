//! Shared set-up of the end-to-end tests that run the real `strata-tgt`: finding the built
//! binaries, free ports, waiting for a listener, and signals.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// A binary of this workspace (built by `cargo build --workspace --bins`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|p| p.parent()).unwrap();
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `addrs` all accept connections; fails with the target's log if the process
/// exits or 30 s pass.
pub fn wait_listening(child: &mut Child, log: Option<&Path>, addrs: &[SocketAddr]) {
    let t0 = Instant::now();
    while addrs.iter().any(|a| TcpStream::connect(a).is_err()) {
        let text = || {
            log.and_then(|l| std::fs::read_to_string(l).ok())
                .unwrap_or_default()
        };
        if let Some(s) = child.try_wait().unwrap() {
            panic!("target exited ({s:?}):\n{}", text());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "target did not listen:\n{}",
            text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig` to the process.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) takes no pointers.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}
