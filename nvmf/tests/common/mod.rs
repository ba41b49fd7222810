//! Shared set-up of the end-to-end tests that run the real `strata-tgt`: finding the built
//! binaries, free ports, waiting for a listener, and signals.
#![allow(clippy::unwrap_used, dead_code)]

pub mod etcd;
pub mod linux_guest;
pub mod writes;

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

/// A free loopback port, never one this process handed out before: the tests of one binary
/// run in parallel, and the kernel may give a just-released port to the next `bind(0)`,
/// so two targets started at once could be told the same port.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut used = HANDED_OUT.lock().unwrap();
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
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

/// A `strata-tgt` started from a JSON config that creates file bdevs and exports one of them
/// over NVMe/TCP on a free port; killed on drop, so a failing test leaves no target behind.
pub struct TgtProcess {
    pub child: std::process::Child,
    pub dir: PathBuf,
    pub sock: PathBuf,
    /// Loopback address the node serves NVMe/TCP on (127.0.0.1, or 127.0.0.2, 127.0.0.3, ...
    /// for the nodes of a multi-node test).
    pub ip: String,
    pub port: u16,
    pub log: PathBuf,
}

impl Drop for TgtProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TgtProcess {
    /// Writes `bdevs` (then `bdev_wait_for_examine`) plus subsystem `nqn` exporting
    /// `ns_bdev` to `dir/cfg-{tag}.json`, starts the target (cores 0-1, `extra` arguments,
    /// log in `dir/tgt-{tag}.log`, RPC socket `dir/rpc.sock`) and waits for the listener.
    pub fn launch(
        dir: &Path,
        tag: &str,
        bdevs: Vec<serde_json::Value>,
        nqn: &str,
        ns_bdev: &str,
        extra: &[&str],
    ) -> TgtProcess {
        Self::launch_on(
            "127.0.0.1",
            free_port(),
            dir,
            tag,
            bdevs,
            nqn,
            ns_bdev,
            extra,
        )
    }

    /// Like [`TgtProcess::launch`], serving on `ip:port`, with its RPC socket at
    /// `dir/rpc-{ip}.sock` (several nodes may share a directory).
    #[allow(clippy::too_many_arguments)]
    pub fn launch_on(
        ip: &str,
        port: u16,
        dir: &Path,
        tag: &str,
        mut bdevs: Vec<serde_json::Value>,
        nqn: &str,
        ns_bdev: &str,
        extra: &[&str],
    ) -> TgtProcess {
        use serde_json::json;
        bdevs.push(json!({ "method": "bdev_wait_for_examine" }));
        let cfg = json!({ "subsystems": [
            { "subsystem": "bdev", "config": bdevs },
            { "subsystem": "nvmf", "config": [
                { "method": "nvmf_create_transport", "params": { "trtype": "TCP" } },
                { "method": "nvmf_create_subsystem", "params": { "nqn": nqn, "allow_any_host": true } },
                { "method": "nvmf_subsystem_add_ns", "params": { "nqn": nqn, "namespace": { "bdev_name": ns_bdev, "nsid": 1 } } },
                { "method": "nvmf_subsystem_add_listener", "params": { "nqn": nqn, "listen_address":
                    { "trtype": "TCP", "adrfam": "IPv4", "traddr": ip, "trsvcid": port.to_string() } } }
            ]}
        ]});
        let cfg_path = dir.join(format!("cfg-{tag}.json"));
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let log = dir.join(format!("tgt-{tag}.log"));
        let sock = if ip == "127.0.0.1" {
            dir.join("rpc.sock")
        } else {
            dir.join(format!("rpc-{ip}.sock"))
        };
        let child = std::process::Command::new(bin("strata-tgt"))
            .args(["-m", "0x3"])
            .args(extra)
            .args(["--log-level", "info", "-r"])
            .arg(&sock)
            .arg("--json")
            .arg(&cfg_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut t = TgtProcess {
            child,
            dir: dir.to_path_buf(),
            sock,
            ip: ip.to_string(),
            port,
            log,
        };
        let addr = t.addr();
        wait_listening(&mut t.child, Some(&t.log), &[addr]);
        // The JSON-RPC server comes up after the configuration's listeners (and replaces a
        // socket file a killed target left behind): wait until it answers connections too.
        let t0 = std::time::Instant::now();
        while std::os::unix::net::UnixStream::connect(&t.sock).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "RPC socket {} never came up:\n{}",
                t.sock.display(),
                t.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        t
    }

    pub fn addr(&self) -> SocketAddr {
        format!("{}:{}", self.ip, self.port).parse().unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A controller with one I/O queue of depth 8 on subsystem `nqn`.
    pub fn connect(&self, nqn: &str) -> strata_nvmf::host::blocking::BlockingController {
        let opts = strata_nvmf::host::controller::ControllerOptions {
            io_queues: 1,
            queue_depth: 8,
            timeout: Duration::from_secs(20),
            ..Default::default()
        };
        strata_nvmf::host::blocking::BlockingController::connect(self.addr(), nqn, opts)
            .expect("connect")
    }

    /// Orderly shutdown (SIGTERM); the target must exit successfully.
    pub fn stop(mut self) {
        signal(&self.child, libc::SIGTERM);
        let st = self.child.wait().unwrap();
        assert!(st.success(), "target exit {st:?}:\n{}", self.log_text());
    }

    /// `kill -9`; returns the log.
    pub fn kill9(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.log_text()
    }
}

/// A silent link cut between two loopback addresses: an nftables table of its own whose
/// input chain drops every packet from `a` to `b` and from `b` to `a` (no RST, no ICMP: the
/// peers notice only by timeouts, like a pulled cable). Dropping the value removes the table.
pub struct LinkCut {
    table: String,
}

fn nft(args: &[&str]) -> std::process::Output {
    std::process::Command::new("nft")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("nft {args:?}: {e} (scripts/setup.sh installs nftables; tests run as root)")
        })
}

impl LinkCut {
    pub fn new(a: &str, b: &str) -> LinkCut {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let table = format!(
            "strata_cut_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let chain = "{ type filter hook input priority 0 ; policy accept ; }";
        let script = format!(
            "add table inet {table}\nadd chain inet {table} input {chain}\n\
             add rule inet {table} input ip saddr {a} ip daddr {b} drop\n\
             add rule inet {table} input ip saddr {b} ip daddr {a} drop\n"
        );
        let path = std::env::temp_dir().join(format!("{table}.nft"));
        std::fs::write(&path, script).unwrap();
        let out = nft(&["-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LinkCut { table }
    }

    /// Restores the link.
    pub fn heal(self) {}
}

impl Drop for LinkCut {
    fn drop(&mut self) {
        let out = nft(&["delete", "table", "inet", &self.table]);
        if !out.status.success() {
            eprintln!(
                "warning: could not remove nftables table {}: {}",
                self.table,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// One JSON-RPC request on a fresh connection to `sock`: `Ok(result)` or
/// `Err((code, message))`.
pub fn rpc_call(
    sock: &Path,
    method: &str,
    params: &serde_json::Value,
) -> Result<serde_json::Value, (i64, String)> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = serde_json::json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    s.write_all(req.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("sending {method}: {e}"));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let resp: serde_json::Value = loop {
        let n = s
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("reading the response to {method}: {e}"));
        assert!(
            n > 0,
            "connection closed without a complete response to {method}: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&buf) {
            break v;
        }
    };
    match resp.get("error") {
        Some(e) => Err((
            e["code"]
                .as_i64()
                .unwrap_or_else(|| panic!("error without code: {resp}")),
            e["message"].as_str().unwrap_or("").to_string(),
        )),
        None => Ok(resp["result"].clone()),
    }
}

/// `bdev_uring_create` of `file` as `name` (4 KiB blocks), for a config.
pub fn uring_cfg(name: &str, file: &Path) -> serde_json::Value {
    serde_json::json!({ "method": "bdev_uring_create",
        "params": { "name": name, "filename": file, "block_size": writes::BS } })
}

impl TgtProcess {
    /// A controller on subsystem `nqn` (one I/O queue of depth 8) that waits up to 60 s per
    /// command: long enough for I/O a remote bdev holds across a link cut.
    pub fn host(&self, nqn: &str) -> strata_nvmf::host::blocking::BlockingController {
        let opts = strata_nvmf::host::controller::ControllerOptions {
            io_queues: 1,
            queue_depth: 8,
            timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let mut h =
            strata_nvmf::host::blocking::BlockingController::connect(self.addr(), nqn, opts)
                .unwrap_or_else(|e| panic!("connect to {nqn} at {}: {e}", self.addr()));
        h.set_timeout(Duration::from_secs(60));
        h
    }

    /// `bdev_mirror_get` of mirror `name`.
    pub fn mirror_get(&self, name: &str) -> serde_json::Value {
        rpc_call(
            &self.sock,
            "bdev_mirror_get",
            &serde_json::json!({ "name": name }),
        )
        .unwrap_or_else(|e| panic!("bdev_mirror_get {name}: {e:?}\n{}", self.log_text()))[0]
            .clone()
    }

    /// Waits until mirror `name` is in `state` with no job running; returns its info.
    pub fn wait_mirror_state(
        &self,
        name: &str,
        state: &str,
        within: Duration,
    ) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let m = self.mirror_get(name);
            if m["state"] == state && m["job"].is_null() {
                return m;
            }
            assert!(
                t0.elapsed() < within,
                "mirror {name} not {state}: {m}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
