//! Kernel TLS: the TLS end-to-end test (`tls_e2e`: strata-tgt, the host library, a remote
//! member) runs again inside a QEMU guest whose kernel has the `tls` module, where both
//! sides hand their record layer to the kernel after the handshake; the test then insists
//! that every connection did (`ktls=true` in the target's log, STRATA_EXPECT_KTLS=1). This
//! machine's own kernel has no kTLS, so `tls_e2e` itself runs the user-space record layer.
//!
//! The only allowed skip: `scripts/linux-host/install.sh` exits 3 ("SKIPPED: ...") when QEMU
//! cannot run here at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::linux_guest::{self, Guest};

/// The newest build of the `tls_e2e` test binary next to this one.
fn tls_e2e_binary() -> std::path::PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::read_dir(&deps)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with("tls_e2e-") && !n.ends_with(".d") && p.extension().is_none()
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("build the tls_e2e test first (cargo test builds every test binary)")
}

#[test]
fn kernel_tls_carries_the_tls_end_to_end_test_in_a_guest() {
    if !linux_guest::installed() {
        return;
    }
    let bin = tls_e2e_binary();
    let dir = tempfile::tempdir().unwrap();
    // Two strata-tgt processes in the guest, each with its DMA pools. Nothing loads modules
    // on demand in the guest: kTLS needs the AES-GCM ones loaded by hand.
    std::env::set_var("LINUX_HOST_MEM", "3072M");
    let cmd = format!(
        "set -e; modprobe tls; grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp; \
         for m in ctr ghash-generic gcm aesni-intel ghash-clmulni-intel; do modprobe $m 2>/dev/null || true; done; \
         ip link set lo up; \
         STRATA_EXPECT_KTLS=1 {} --exact tls_hosts_move_verified_data_and_every_bad_connection_is_refused \
         --test-threads 1 --nocapture 2>&1 | tail -40; \
         test ${{PIPESTATUS[0]}} -eq 0 && echo 'ALL STEPS OK'",
        bin.display()
    );
    let g = Guest::start(dir.path(), &cmd, 900);
    g.finish();
}
