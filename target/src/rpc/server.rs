//! The JSON-RPC 2.0 server on a Unix socket.
//!
//! Each connection gets its own thread, so a slow-drip or stuck client never delays another
//! client, and no RPC work runs on a reactor. Requests on one connection are parsed as a
//! stream of JSON values (rpc.py sends no framing); each is answered in order. Method
//! handlers run one at a time (like SPDK's single RPC thread), so concurrent creates and
//! deletes never interleave. A request over [`MAX_REQUEST`] bytes or unparseable input gets
//! an error and the connection is closed.

use super::error::RpcError;
use super::MethodTable;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Largest accepted request.
pub const MAX_REQUEST: usize = 1 << 20;
/// Most simultaneous connections; more are refused.
const MAX_CONNECTIONS: usize = 64;
/// A request that stays incomplete this long is abandoned.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("RPC socket {0} is in use by another strata-tgt (lock {1} is held); stop it or choose another path with -r")]
    InUse(PathBuf, PathBuf),
    #[error("RPC socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The running server. Dropping it does not stop it; call [`RpcServer::stop`].
pub struct RpcServer {
    path: PathBuf,
    lock_path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    _lock: File,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("path", &self.path)
            .finish()
    }
}

/// Takes the socket's lock file, proving no other instance serves `path`.
pub fn lock_socket(path: &Path) -> Result<(File, PathBuf), ServerError> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let io = |source| ServerError::Io {
        path: lock_path.clone(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io)?;
    if !crate::sys::try_lock_exclusive(&f).map_err(io)? {
        return Err(ServerError::InUse(path.to_path_buf(), lock_path));
    }
    Ok((f, lock_path))
}

impl RpcServer {
    /// Binds `path` (replacing a stale socket file) and starts accepting. `lock` comes from
    /// [`lock_socket`].
    pub fn start(
        path: &Path,
        lock: (File, PathBuf),
        methods: Arc<MethodTable>,
    ) -> Result<Self, ServerError> {
        let io = |source| ServerError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed stale RPC socket"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let accept = std::thread::Builder::new()
            .name("rpc_accept".into())
            .spawn(move || accept_loop(listener, methods, st))
            .map_err(io)?;
        tracing::info!(path = %path.display(), "JSON-RPC server listening");
        Ok(Self {
            path: path.to_path_buf(),
            lock_path: lock.1,
            stop,
            accept: Some(accept),
            _lock: lock.0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes the socket file and releases the lock.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Tells a client over the connection limit why it is closed: one JSON-RPC error (id null,
/// as for a request that could not be read), then the close.
fn refuse(mut stream: std::os::unix::net::UnixStream) {
    use std::io::Write;
    let err = RpcError::internal(format!(
        "too many JSON-RPC connections (at most {MAX_CONNECTIONS}); try again later"
    ));
    let body = serde_json::json!({ "jsonrpc": "2.0", "id": null, "error": err.to_json() });
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = stream.write_all(body.to_string().as_bytes());
}

fn accept_loop(listener: UnixListener, methods: Arc<MethodTable>, stop: Arc<AtomicBool>) {
    let live = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if live.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                    tracing::warn!("RPC: too many connections, refusing one");
                    refuse(stream);
                    continue;
                }
                live.fetch_add(1, Ordering::AcqRel);
                let (m, s, l) = (methods.clone(), stop.clone(), live.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("rpc_conn".into())
                        .spawn(move || {
                            serve_connection(stream, &m, &s);
                            l.fetch_sub(1, Ordering::AcqRel);
                        });
                if spawned.is_err() {
                    live.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!("RPC: could not start a connection thread");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                tracing::warn!(error = %e, "RPC accept failed");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn serve_connection(mut stream: UnixStream, methods: &MethodTable, stop: &AtomicBool) {
    if stream.set_nonblocking(false).is_err()
        || stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .is_err()
    {
        return;
    }
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16384];
    let mut started: Option<Instant> = None;
    loop {
        // Answer every complete value already buffered.
        loop {
            match take_value(&mut buf) {
                Parsed::Value(v) => {
                    started = None;
                    let resp = handle_value(v, methods);
                    if let Some(r) = resp {
                        if write_json(&mut stream, &r).is_err() {
                            return;
                        }
                    }
                }
                Parsed::Incomplete => break,
                Parsed::Invalid(msg) => {
                    tracing::warn!(error = %msg, "RPC: malformed JSON, closing connection");
                    let _ = write_json(
                        &mut stream,
                        &error_response(Value::Null, &RpcError::parse(msg)),
                    );
                    return;
                }
            }
        }
        if buf.len() > MAX_REQUEST {
            tracing::warn!(
                bytes = buf.len(),
                "RPC: request larger than 1 MiB, closing connection"
            );
            let e = RpcError::invalid_request(format!("request larger than {MAX_REQUEST} bytes"));
            let _ = write_json(&mut stream, &error_response(Value::Null, &e));
            return;
        }
        if !buf.iter().all(u8::is_ascii_whitespace) {
            let t = *started.get_or_insert_with(Instant::now);
            if t.elapsed() > REQUEST_DEADLINE {
                tracing::warn!("RPC: request incomplete after 60 s, closing connection");
                return;
            }
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                if !buf.iter().all(u8::is_ascii_whitespace) {
                    tracing::warn!("RPC: connection closed mid-request");
                    let e = RpcError::parse("incomplete JSON at end of stream");
                    let _ = write_json(&mut stream, &error_response(Value::Null, &e));
                }
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

enum Parsed {
    Value(Value),
    Incomplete,
    Invalid(String),
}

/// Removes the first complete JSON value from `buf`.
fn take_value(buf: &mut Vec<u8>) -> Parsed {
    let start = buf.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        buf.clear();
        return Parsed::Incomplete;
    };
    let mut it = serde_json::Deserializer::from_slice(&buf[start..]).into_iter::<Value>();
    match it.next() {
        Some(Ok(v)) => {
            let used = start + it.byte_offset();
            buf.drain(..used);
            Parsed::Value(v)
        }
        Some(Err(e)) if e.is_eof() => Parsed::Incomplete,
        Some(Err(e)) => Parsed::Invalid(format!("Parse error: {e}")),
        None => Parsed::Incomplete,
    }
}

fn write_json(s: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    out.push(b'\n');
    s.write_all(&out)
}

fn error_response(id: Value, e: &RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": e.to_json() })
}

/// Serialises method execution across connections.
static EXEC: Mutex<()> = Mutex::new(());

/// Answers one JSON value: a request, a notification (no answer) or a batch.
pub fn handle_value(v: Value, methods: &MethodTable) -> Option<Value> {
    match v {
        Value::Array(reqs) => {
            if reqs.is_empty() {
                return Some(error_response(
                    Value::Null,
                    &RpcError::invalid_request("empty batch"),
                ));
            }
            let out: Vec<Value> = reqs
                .into_iter()
                .filter_map(|r| handle_one(r, methods))
                .collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => handle_one(other, methods),
    }
}

fn handle_one(v: Value, methods: &MethodTable) -> Option<Value> {
    let Value::Object(mut obj) = v else {
        return Some(error_response(
            Value::Null,
            &RpcError::invalid_request("request must be an object"),
        ));
    };
    let id = obj.remove("id");
    let id_json = id.clone().unwrap_or(Value::Null);
    if !matches!(id_json, Value::Null | Value::String(_) | Value::Number(_)) {
        return Some(error_response(
            Value::Null,
            &RpcError::invalid_request("id must be a string or number"),
        ));
    }
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(error_response(
            id_json,
            &RpcError::invalid_request("jsonrpc must be \"2.0\""),
        ));
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => {
            return Some(error_response(
                id_json,
                &RpcError::invalid_request("missing method"),
            ))
        }
    };
    let params = obj.remove("params");
    if !matches!(
        params,
        None | Some(Value::Object(_)) | Some(Value::Array(_)) | Some(Value::Null)
    ) {
        return Some(error_response(
            id_json,
            &RpcError::invalid_request("params must be an object or array"),
        ));
    }
    let result = {
        let _g = EXEC.lock().unwrap_or_else(|p| p.into_inner());
        methods.call(&method, params)
    };
    if let Err(e) = &result {
        tracing::warn!(method = %method, code = e.code, error = %e.message, "RPC failed");
    } else {
        tracing::debug!(method = %method, "RPC ok");
    }
    // A request without an id is a notification: no response.
    id.as_ref()?;
    Some(match result {
        Ok(r) => json!({ "jsonrpc": "2.0", "id": id_json, "result": r }),
        Err(e) => error_response(id_json, &e),
    })
}
