//! End-to-end test harness for `strata-tgt` / `strata-rpc`.
//!
//! The tests drive the real binaries (built by `cargo build --workspace --bins`) over real Unix
//! sockets. Nothing here links against the other workspace crates: the daemon is tested through
//! its public interface only (command line, JSON-RPC socket, signals, exit status, stderr).
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long a single RPC may take before the test fails.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `strata-tgt` may take to start accepting on its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a `strata-rpc` invocation may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// `build/debug/` (the directory holding the workspace binaries), derived from the location of
/// the running test executable (`build/debug/deps/<test>-<hash>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test exe has a parent").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Path of the `strata-tgt` binary (panics with a clear message when it was not built).
pub fn tgt_bin() -> PathBuf {
    bin("strata-tgt")
}

/// Path of the `strata-rpc` binary (panics with a clear message when it was not built).
pub fn rpc_bin() -> PathBuf {
    bin("strata-rpc")
}

/// Path of the repository's `docs/rpc.md`.
pub fn rpc_doc_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("docs")
        .join("rpc.md")
}

/// Every method name listed in the method table of `docs/rpc.md` (first column, in backticks).
pub fn documented_methods() -> Vec<String> {
    let doc = std::fs::read_to_string(rpc_doc_path()).expect("read docs/rpc.md");
    let mut methods = Vec::new();
    for line in doc.lines() {
        let line = line.trim();
        if !line.starts_with("| `") {
            continue;
        }
        let first_cell = line[1..].split('|').next().unwrap_or("");
        for (i, part) in first_cell.split('`').enumerate() {
            if i % 2 == 1 && !part.trim().is_empty() {
                methods.push(part.trim().to_string());
            }
        }
    }
    methods
}

/// Runs `cmd` with stdout/stderr captured to anonymous files (no pipe deadlocks), killing it
/// and panicking if it does not exit within `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut out = tempfile::tempfile().unwrap();
    let mut err = tempfile::tempfile().unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(err.try_clone().unwrap()));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = read_all(&mut err);
            let stdout = read_all(&mut out);
            panic!(
                "{cmd:?} did not exit within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: read_all(&mut out),
        stderr: read_all(&mut err),
    }
}

fn read_all(f: &mut File) -> Vec<u8> {
    let mut v = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut v).unwrap();
    v
}

/// Runs `strata-tgt` with exactly `args` (nothing added) and waits for it to exit; for
/// invocations that are expected to fail.
pub fn run_tgt(args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new(tgt_bin());
    cmd.args(args).env("RUST_BACKTRACE", "1");
    run_with_timeout(&mut cmd, timeout)
}

/// Polls `cond` every 10 ms until it returns true or `timeout` passes; returns whether it did.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A tiny JSON-RPC 2.0 client on one Unix-socket connection.
pub struct RpcConn {
    pub stream: UnixStream,
    buf: Vec<u8>,
}

impl RpcConn {
    /// Connects with 30 s read/write timeouts.
    pub fn connect(sock: &Path) -> io::Result<RpcConn> {
        let stream = UnixStream::connect(sock)?;
        stream.set_read_timeout(Some(RPC_TIMEOUT))?;
        stream.set_write_timeout(Some(RPC_TIMEOUT))?;
        Ok(RpcConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes raw bytes to the socket.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Closes the write half (the server sees EOF).
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)
    }

    /// Reads one complete JSON value from the stream. `Ok(None)`: the server closed the
    /// connection without sending (more) data. Errors: I/O errors, timeouts, a truncated value
    /// at EOF, or bytes that are not JSON.
    pub fn read_value(&mut self) -> io::Result<Option<Value>> {
        loop {
            {
                let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
                match it.next() {
                    Some(Ok(v)) => {
                        let off = it.byte_offset();
                        self.buf.drain(..off);
                        return Ok(Some(v));
                    }
                    Some(Err(e)) if e.is_eof() => {}
                    Some(Err(e)) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "server sent invalid JSON ({e}): {:?}",
                                String::from_utf8_lossy(&self.buf)
                            ),
                        ))
                    }
                    None => {}
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed in the middle of a response: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends one request and returns the raw response object (panics on I/O errors).
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mut req = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if !params.is_null() {
            req["params"] = params;
        }
        let bytes = serde_json::to_vec(&req).unwrap();
        self.send_raw(&bytes)
            .unwrap_or_else(|e| panic!("sending {method}: {e}"));
        let resp = self
            .read_value()
            .unwrap_or_else(|e| panic!("reading response to {method}: {e}"))
            .unwrap_or_else(|| panic!("connection closed without a response to {method}"));
        assert_eq!(
            resp.get("id"),
            Some(&json!(id)),
            "response id does not match request id: {resp}"
        );
        resp
    }

    /// Calls `method`; `Ok(result)` or `Err((code, message))`.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        let resp = self.request(method, params);
        response_result(resp)
    }
}

/// Splits a JSON-RPC response object into `Ok(result)` / `Err((code, message))`.
pub fn response_result(resp: Value) -> Result<Value, (i64, String)> {
    if let Some(err) = resp.get("error") {
        let code = err
            .get("code")
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("error without an integer code: {resp}"));
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        return Err((code, msg));
    }
    match resp.get("result") {
        Some(r) => Ok(r.clone()),
        None => panic!("response has neither result nor error: {resp}"),
    }
}

/// A running `strata-tgt`. Killed with SIGKILL on drop if still running.
pub struct Target {
    child: Child,
    status: Option<ExitStatus>,
    sock: PathBuf,
    stderr_path: PathBuf,
    dir: tempfile::TempDir,
}

impl Target {
    /// Starts `strata-tgt` on a fresh socket in a new temporary directory. Unless `args` say
    /// otherwise, `-m 0x1 --interrupt-mode` are added so that tests do not burn CPU.
    pub fn start(args: &[&str]) -> Target {
        let dir = tempfile::Builder::new()
            .prefix("strata-e2e")
            .tempdir()
            .unwrap();
        let sock = dir.path().join("strata.sock");
        Target::start_in(dir, sock, args)
    }

    /// Like [`Target::start`] but on the given socket path.
    pub fn start_at(sock: &Path, args: &[&str]) -> Target {
        let dir = tempfile::Builder::new()
            .prefix("strata-e2e")
            .tempdir()
            .unwrap();
        Target::start_in(dir, sock.to_path_buf(), args)
    }

    fn start_in(dir: tempfile::TempDir, sock: PathBuf, args: &[&str]) -> Target {
        let mut full: Vec<String> = vec!["-r".into(), sock.to_str().unwrap().into()];
        let has_mask = args
            .iter()
            .any(|a| *a == "-m" || *a == "--cpumask" || a.starts_with("--cpumask="));
        if !has_mask {
            full.push("-m".into());
            full.push("0x1".into());
        }
        if !args.contains(&"--interrupt-mode") {
            full.push("--interrupt-mode".into());
        }
        full.extend(args.iter().map(|s| s.to_string()));
        Target::spawn_exact(dir, sock, &full)
    }

    /// Spawns with exactly these arguments (which must make it listen on `sock`), then waits
    /// until the socket accepts connections.
    pub fn spawn_exact(mut dir: tempfile::TempDir, sock: PathBuf, args: &[String]) -> Target {
        // The embedded default listens on NVMe/TCP ports; tests run in parallel, so each
        // target gets free ones unless the test chose them. A port found free can still be
        // taken (as another connection's ephemeral port) before the target binds it: then
        // the target is started again on other ports.
        let ours = !args
            .iter()
            .any(|a| a == "--nvmf-port" || a == "--discovery-port");
        let mut attempt = 0;
        loop {
            let mut full = args.to_vec();
            if ours {
                let p = free_ports(2);
                full.extend([
                    "--nvmf-port".into(),
                    p[0].to_string(),
                    "--discovery-port".into(),
                    p[1].to_string(),
                ]);
            }
            let stderr_path = dir.path().join("strata-tgt.stderr");
            let stdout_path = dir.path().join("strata-tgt.stdout");
            let stderr = File::create(&stderr_path).unwrap();
            let stdout = File::create(&stdout_path).unwrap();
            let child = Command::new(tgt_bin())
                .args(&full)
                .env("RUST_BACKTRACE", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::from(stdout))
                .stderr(Stdio::from(stderr))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn strata-tgt: {e}"));
            let mut t = Target {
                child,
                status: None,
                sock: sock.clone(),
                stderr_path,
                dir,
            };
            let Err(e) = t.wait_ready(&full) else {
                return t;
            };
            if !(ours && attempt < 5 && t.stderr().contains("Address already in use")) {
                panic!("{e}");
            }
            attempt += 1;
            // Keep the directory (and the socket path in it) for the next attempt.
            dir = std::mem::replace(&mut t.dir, tempfile::tempdir().unwrap());
        }
    }

    fn wait_ready(&mut self, args: &[String]) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.status = Some(status);
                return Err(format!(
                    "strata-tgt {args:?} exited during startup with {status}\n--- stderr ---\n{}",
                    self.stderr()
                ));
            }
            if UnixStream::connect(&self.sock).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "strata-tgt {args:?} did not accept on {} within {START_TIMEOUT:?}\n--- stderr ---\n{}",
                    self.sock.display(),
                    self.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The RPC socket path.
    pub fn sock(&self) -> &Path {
        &self.sock
    }

    /// A temporary directory owned by this target (logs; tests may put files here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Everything the target wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A new connection to the RPC socket.
    pub fn connect(&self) -> RpcConn {
        RpcConn::connect(&self.sock)
            .unwrap_or_else(|e| panic!("connect {}: {e}\n{}", self.sock.display(), self.stderr()))
    }

    /// One RPC on a fresh connection: `Ok(result)` or `Err((code, message))`.
    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        self.connect().call(method, params)
    }

    /// One RPC that must succeed.
    pub fn rpc_ok(&self, method: &str, params: Value) -> Value {
        match self.rpc(method, params.clone()) {
            Ok(v) => v,
            // (the target's stderr is printed when the Target is dropped during the panic)
            Err((code, msg)) => panic!("{method} {params} failed: {code} {msg}"),
        }
    }

    /// On a target started without the embedded default: the TCP transport with `transport`
    /// (its params), `Malloc0` of `num_blocks` 4 KiB blocks exported as namespace 1 of `nqn`
    /// (any host) on 127.0.0.1:`port`.
    pub fn export_malloc(&self, transport: Value, num_blocks: u64, nqn: &str, port: u16) {
        self.rpc_ok("nvmf_create_transport", transport);
        self.rpc_ok(
            "bdev_malloc_create",
            json!({"name": "Malloc0", "num_blocks": num_blocks, "block_size": 4096}),
        );
        self.rpc_ok(
            "nvmf_create_subsystem",
            json!({"nqn": nqn, "allow_any_host": true}),
        );
        self.rpc_ok(
            "nvmf_subsystem_add_ns",
            json!({"nqn": nqn, "namespace": {"bdev_name": "Malloc0", "nsid": 1}}),
        );
        self.add_tcp_listener(nqn, port);
    }

    /// A TCP listener of `nqn` on 127.0.0.1:`port`.
    pub fn add_tcp_listener(&self, nqn: &str, port: u16) {
        self.rpc_ok(
            "nvmf_subsystem_add_listener",
            json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
                "traddr": "127.0.0.1", "trsvcid": port.to_string()}}),
        );
    }

    /// One RPC that must fail; returns `(code, message)`.
    pub fn rpc_err(&self, method: &str, params: Value) -> (i64, String) {
        match self.rpc(method, params.clone()) {
            Ok(v) => panic!("{method} {params} unexpectedly succeeded: {v}"),
            Err(e) => e,
        }
    }

    /// All bdevs (`bdev_get_bdevs` without a name).
    pub fn bdevs(&self) -> Vec<Value> {
        match self.rpc_ok("bdev_get_bdevs", json!({})) {
            Value::Array(v) => v,
            other => panic!("bdev_get_bdevs did not return an array: {other}"),
        }
    }

    /// The one bdev named `name`.
    pub fn bdev(&self, name: &str) -> Value {
        let v = self.rpc_ok("bdev_get_bdevs", json!({ "name": name }));
        let arr = v.as_array().expect("bdev_get_bdevs returns an array");
        assert_eq!(arr.len(), 1, "bdev_get_bdevs name={name}: {v}");
        arr[0].clone()
    }

    /// Runs `strata-rpc -s SOCK args...` (30 s timeout).
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_at(&self.sock, args)
    }

    /// Sends a signal with `kill(2)`.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped: `status` is None
        // or we only signal a zombie, which is harmless).
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Returns the exit status once it exited (non-blocking).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    /// Waits for the process to exit; panics (with stderr) if it is still running after
    /// `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit_status() {
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "strata-tgt (pid {}) still running {timeout:?} after being asked to exit\n--- stderr ---\n{}",
                    self.pid(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// user + system CPU time of the process, in clock ticks (`/proc/PID/stat`).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // fields[0] is field 3 (state); utime is field 14, stime field 15.
        let utime: u64 = fields[11].parse().unwrap();
        let stime: u64 = fields[12].parse().unwrap();
        utime + stime
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.try_exit_status().is_none() {
            // SAFETY: the child is ours and has not been reaped.
            unsafe {
                libc::kill(self.pid(), libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- strata-tgt stderr ({}) ---\n{}",
                self.sock.display(),
                self.stderr()
            );
        }
    }
}

/// Runs `strata-rpc -s SOCK args...` (30 s timeout).
pub fn cli_at(sock: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(rpc_bin());
    cmd.arg("-s").arg(sock).args(args);
    run_with_timeout(&mut cmd, CLI_TIMEOUT)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(v > 0);
    v as u64
}

/// Creates a file of `len` bytes (sparse) and returns its path.
pub fn make_file(dir: &Path, name: &str, len: u64) -> PathBuf {
    let path = dir.join(name);
    let f = File::create(&path).unwrap();
    f.set_len(len).unwrap();
    path
}

/// A compact, comparable description of a bdev: name, uuid, block size, block count,
/// product name, claimed.
pub fn bdev_summary(b: &Value) -> (String, String, u64, u64, String, bool) {
    (
        b["name"]
            .as_str()
            .unwrap_or_else(|| panic!("bdev without name: {b}"))
            .to_string(),
        b["uuid"]
            .as_str()
            .unwrap_or_else(|| panic!("bdev without uuid: {b}"))
            .to_lowercase(),
        b["block_size"]
            .as_u64()
            .unwrap_or_else(|| panic!("bdev without block_size: {b}")),
        b["num_blocks"]
            .as_u64()
            .unwrap_or_else(|| panic!("bdev without num_blocks: {b}")),
        b["product_name"]
            .as_str()
            .unwrap_or_else(|| panic!("bdev without product_name: {b}"))
            .to_string(),
        b["claimed"]
            .as_bool()
            .unwrap_or_else(|| panic!("bdev without claimed: {b}")),
    )
}

/// True if `s` looks like a canonical UUID (8-4-4-4-12 hex digits).
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// `n` distinct TCP ports of 127.0.0.1 that were free a moment ago (bound all at once, then
/// released), for targets' NVMe/TCP listeners.
/// Never a port this process handed out before: tests of one binary run in parallel, and the
/// kernel may give a just-released port to the next `bind(0)`.
pub fn free_ports(n: usize) -> Vec<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut used = HANDED_OUT.lock().unwrap();
        if !used.contains(&port) {
            used.push(port);
            ports.push(port);
        }
        held.push(l);
    }
    ports
}

/// One TCP port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// Whether a TCP connection to 127.0.0.1:`port` is accepted within 2 s.
pub fn tcp_connects(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

/// A command's output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Stdout of a command that must have succeeded (panics with both streams otherwise).
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Stdout of a successful command, parsed as JSON.
pub fn json_out(out: &Output, what: &str) -> Value {
    let s = ok(out, what);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {s:?}"))
}
