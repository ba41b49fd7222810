//! Driving a Linux-host test's QEMU guest (`scripts/linux-host/run-guest.sh`): the install
//! check (the only allowed skip), starting the guest with a command, the file hand-shakes
//! through its share directory, and its outcome.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `scripts/linux-host/install.sh`; false (after printing why) when QEMU cannot run
/// here at all (exit 3, "SKIPPED: ..."): the test then returns.
pub fn installed() -> bool {
    let install = Command::new(repo_dir().join("scripts/linux-host/install.sh"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if install.status.code() == Some(3) {
        eprintln!("{}", String::from_utf8_lossy(&install.stdout));
        return false;
    }
    assert!(
        install.status.success(),
        "install.sh failed:\n{}{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    true
}

/// Debian's backports kernel (`scripts/linux-host/newer-kernel.sh`), for host features
/// Debian 12's kernel is built without (DH-HMAC-CHAP, TLS).
pub fn newer_kernel() -> PathBuf {
    let out = Command::new(repo_dir().join("scripts/linux-host/newer-kernel.sh"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "newer-kernel.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub struct Guest {
    child: Child,
    pub share: PathBuf,
    dir: PathBuf,
    limit: Duration,
}

impl Guest {
    /// Boots a guest running `command` (bash), with its share in `dir/share`.
    pub fn start(dir: &Path, command: &str, timeout_s: u64) -> Guest {
        Self::start_on(dir, command, timeout_s, None)
    }

    /// Like [`Guest::start`], booting `kernel` (see `newer_kernel`) instead of Debian 12's.
    pub fn start_on(dir: &Path, command: &str, timeout_s: u64, kernel: Option<&Path>) -> Guest {
        let share = dir.join("share");
        std::fs::create_dir_all(&share).unwrap();
        let mut cmd = Command::new(repo_dir().join("scripts/linux-host/run-guest.sh"));
        if let Some(k) = kernel {
            cmd.arg("--kernel").arg(k);
        }
        let child = cmd
            .args(["--timeout", &timeout_s.to_string(), "--share"])
            .arg(&share)
            .args(["--", command])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("run-guest.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("run-guest.err")).unwrap())
            .spawn()
            .unwrap();
        Guest {
            child,
            share,
            dir: dir.to_path_buf(),
            limit: Duration::from_secs(timeout_s),
        }
    }

    /// The guest's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.share.join("guest-output.log")).unwrap_or_default()
    }

    /// Waits for the guest to write `name` in the share.
    pub fn wait_file(&mut self, name: &str) {
        let t0 = Instant::now();
        while !self.share.join(name).exists() {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("guest ended ({st}) before writing {name}:\n{}", self.log());
            }
            assert!(
                t0.elapsed() < self.limit,
                "guest did not write {name}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Tells the guest `name` (a file in the share).
    pub fn signal(&self, name: &str) {
        std::fs::write(self.share.join(name), b"").unwrap();
    }

    /// Waits for the guest to end; asserts its script printed "ALL STEPS OK".
    pub fn finish(mut self) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                t0.elapsed() < self.limit,
                "guest did not finish:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let log = self.log();
        println!("{log}");
        assert!(
            status.success() && log.contains("ALL STEPS OK"),
            "guest failed ({status}):\n{log}\n{}",
            std::fs::read_to_string(self.dir.join("run-guest.err")).unwrap_or_default()
        );
    }
}
