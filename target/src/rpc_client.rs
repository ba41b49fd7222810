//! A small blocking JSON-RPC 2.0 client for strata-tgt's Unix-socket RPC server.
//!
//! This is the engine behind the `strata-rpc` command-line tool (the equivalent of SPDK's
//! `scripts/rpc.py`), and it is meant to be reused by tests and benches:
//!
//! ```no_run
//! use std::{path::Path, time::Duration};
//! use strata_target::rpc_client::RpcClient;
//!
//! let mut client = RpcClient::connect(Path::new("/var/tmp/strata.sock"), Duration::from_secs(5))?;
//! let name = client.call(
//!     "bdev_malloc_create",
//!     Some(serde_json::json!({"num_blocks": 131072, "block_size": 512})),
//! )?;
//! println!("created {name}");
//! # Ok::<(), strata_target::rpc_client::RpcClientError>(())
//! ```
//!
//! The server does not frame its responses (they are JSON values written back to back, with or
//! without a newline), so responses are detected by streaming-parsing a growing receive buffer
//! with [`serde_json::Deserializer::into_iter`]. Bytes received after a complete response are
//! kept for the next call. Each call is bounded by the client's timeout (covering both the write
//! of the request and the read of the response).
//!
//! The module also holds the conversion of sizes in MiB to block counts (rpc.py's
//! `TOTAL_SIZE_MB`), used by the create methods' command-line arguments
//! ([`crate::rpc::params::bdev`]).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

/// The socket strata-tgt listens on by default (`strata-tgt -r PATH` changes it).
pub const DEFAULT_SOCKET_PATH: &str = "/var/tmp/strata.sock";

/// The default per-call timeout of `strata-rpc` (the same as rpc.py's), in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 60.0;

/// Size of the chunks the receive buffer grows by.
const READ_CHUNK: usize = 64 * 1024;

/// Errors returned by [`RpcClient`].
#[derive(Debug, thiserror::Error)]
pub enum RpcClientError {
    /// The server answered with a JSON-RPC error object.
    #[error("JSON-RPC error {code}: {message}")]
    Rpc {
        /// The `error.code` of the response (negative errno for strata's own failures).
        code: i64,
        /// The `error.message` of the response.
        message: String,
    },
    /// Connecting to the socket failed (no such file, connection refused, permission denied...).
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket path that was tried.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An I/O error on an established connection.
    #[error("I/O error on the RPC connection: {0}")]
    Io(#[from] io::Error),
    /// No complete response arrived within the timeout.
    #[error("timed out waiting for the RPC response")]
    Timeout,
    /// The server sent something that is not a valid JSON-RPC response, or closed the
    /// connection before the response was complete.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// A connection to a JSON-RPC server on a Unix socket.
///
/// Requests built by [`RpcClient::call`] (and [`RpcClient::build_request`]) get ids 1, 2, 3, ...
/// After a timeout, I/O or protocol error the connection is in an unknown state (a late response
/// could be mistaken for the answer to the next request), so every later call fails with
/// [`RpcClientError::Protocol`]; connect again instead. JSON-RPC error responses
/// ([`RpcClientError::Rpc`]) leave the connection usable.
#[derive(Debug)]
pub struct RpcClient {
    stream: UnixStream,
    path: PathBuf,
    timeout: Duration,
    next_id: u64,
    /// Received bytes not yet consumed by a parsed response.
    buf: Vec<u8>,
    /// Set after an error that leaves the stream position unknown.
    broken: bool,
}

impl RpcClient {
    /// Connects to the server listening on the Unix socket `path`. `timeout` bounds every
    /// later [`call`](Self::call) / [`call_raw`](Self::call_raw); a zero timeout is treated as
    /// 1 ms.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, RpcClientError> {
        let stream = UnixStream::connect(path).map_err(|source| RpcClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(RpcClient {
            stream,
            path: path.to_path_buf(),
            timeout: timeout.max(Duration::from_millis(1)),
            next_id: 1,
            buf: Vec::new(),
            broken: false,
        })
    }

    /// The socket path this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the per-call timeout (a zero timeout is treated as 1 ms).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout.max(Duration::from_millis(1));
    }

    /// Builds a JSON-RPC 2.0 request for `method`, taking the next request id. `params` is
    /// omitted from the request when `None`.
    pub fn build_request(&mut self, method: &str, params: Option<Value>) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        make_request(id, method, params)
    }

    /// Calls `method` and returns its `result`. A JSON-RPC error response becomes
    /// [`RpcClientError::Rpc`].
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, RpcClientError> {
        let request = self.build_request(method, params);
        let response = self.call_raw(&request)?;
        response_result(response, request.get("id"))
    }

    /// Sends `request` as is (it is serialized, not checked) and returns the next complete JSON
    /// value the server sends, which must be an object or an array. The response is not
    /// interpreted: JSON-RPC errors come back as `Ok` (see [`response_result`]).
    pub fn call_raw(&mut self, request: &Value) -> Result<Value, RpcClientError> {
        if self.broken {
            return Err(RpcClientError::Protocol(
                "the connection is unusable after an earlier error; reconnect".to_string(),
            ));
        }
        let deadline = Instant::now() + self.timeout;
        let bytes = serde_json::to_vec(request)
            .map_err(|e| RpcClientError::Protocol(format!("cannot serialize request: {e}")))?;
        let result = self
            .send(&bytes, deadline)
            .and_then(|()| self.read_value(deadline));
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    fn send(&mut self, bytes: &[u8], deadline: Instant) -> Result<(), RpcClientError> {
        let mut written = 0;
        while written < bytes.len() {
            let remaining = remaining(deadline)?;
            self.stream.set_write_timeout(Some(remaining))?;
            match self.stream.write(&bytes[written..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(RpcClientError::Timeout),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads until the buffer holds one complete JSON value, removes it and returns it.
    fn read_value(&mut self, deadline: Instant) -> Result<Value, RpcClientError> {
        let mut chunk = vec![0u8; READ_CHUNK];
        // Leftover bytes from an earlier read may already hold a complete value.
        let mut try_parse = !self.buf.is_empty();
        loop {
            if try_parse {
                if let Some(value) = self.take_value()? {
                    return Ok(value);
                }
            }
            let remaining = remaining(deadline)?;
            self.stream.set_read_timeout(Some(remaining))?;
            let n = match self.stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => return Err(RpcClientError::Timeout),
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                // End of stream: whatever is buffered is all there will ever be.
                if let Some(value) = self.take_value()? {
                    return Ok(value);
                }
                let what = if self.buf.iter().all(u8::is_ascii_whitespace) {
                    "the server closed the connection without sending a response"
                } else {
                    "the server closed the connection in the middle of a response"
                };
                return Err(RpcClientError::Protocol(what.to_string()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
            try_parse = worth_parsing(&self.buf);
        }
    }

    /// Parses the first JSON value in the buffer. `Ok(None)` when the buffer holds only a
    /// prefix of a value (or only whitespace).
    fn take_value(&mut self) -> Result<Option<Value>, RpcClientError> {
        let (parsed, consumed) = {
            let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            let parsed = values.next();
            (parsed, values.byte_offset())
        };
        match parsed {
            None => {
                self.buf.clear();
                Ok(None)
            }
            Some(Err(e)) if e.is_eof() => Ok(None),
            Some(Err(e)) => Err(RpcClientError::Protocol(format!(
                "malformed JSON from the server: {e}"
            ))),
            Some(Ok(value)) => {
                self.buf.drain(..consumed);
                if value.is_object() || value.is_array() {
                    Ok(Some(value))
                } else {
                    Err(RpcClientError::Protocol(format!(
                        "expected a JSON-RPC response object, got {value}"
                    )))
                }
            }
        }
    }
}

/// Time left until `deadline`, or [`RpcClientError::Timeout`] when it has passed.
fn remaining(deadline: Instant) -> Result<Duration, RpcClientError> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(RpcClientError::Timeout),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Whether a parse attempt on `buf` can succeed or fail: a complete object or array ends with
/// `}` or `]`, and anything not starting with `{` or `[` is not a response at all. This avoids
/// re-parsing a large response from the start after every read.
fn worth_parsing(buf: &[u8]) -> bool {
    let first = buf.iter().find(|b| !b.is_ascii_whitespace());
    let last = buf.iter().rev().find(|b| !b.is_ascii_whitespace());
    match (first, last) {
        (Some(b'{' | b'['), Some(b'}' | b']')) => true,
        (Some(b'{' | b'['), _) => false,
        (Some(_), _) => true,
        (None, _) => false,
    }
}

/// Builds a JSON-RPC 2.0 request object; `params` is omitted when `None`.
pub fn make_request(id: u64, method: &str, params: Option<Value>) -> Value {
    let mut request = Map::new();
    request.insert("jsonrpc".to_string(), json!("2.0"));
    request.insert("method".to_string(), json!(method));
    request.insert("id".to_string(), json!(id));
    if let Some(params) = params {
        request.insert("params".to_string(), params);
    }
    Value::Object(request)
}

/// Interprets a JSON-RPC 2.0 response: its `result`, or [`RpcClientError::Rpc`] for an error
/// response. When `expected_id` is given, a response carrying another id is a protocol error
/// (an error response with a `null` id is accepted: the server sends those when it could not
/// read the request's id).
pub fn response_result(
    response: Value,
    expected_id: Option<&Value>,
) -> Result<Value, RpcClientError> {
    let Value::Object(mut response) = response else {
        return Err(RpcClientError::Protocol(format!(
            "expected a JSON-RPC response object, got {response}"
        )));
    };
    if let Some(error) = response.remove("error") {
        let (code, message) = error_fields(&error)?;
        let id_ok = match (expected_id, response.get("id")) {
            (None, _) | (_, None | Some(Value::Null)) => true,
            (Some(expected), Some(id)) => expected == id,
        };
        if !id_ok {
            return Err(id_mismatch(expected_id, response.get("id")));
        }
        return Err(RpcClientError::Rpc { code, message });
    }
    if let Some(expected) = expected_id {
        if response.get("id") != Some(expected) {
            return Err(id_mismatch(expected_id, response.get("id")));
        }
    }
    response.remove("result").ok_or_else(|| {
        RpcClientError::Protocol("response has neither \"result\" nor \"error\"".to_string())
    })
}

/// The `code` and `message` of a JSON-RPC error object.
pub fn error_fields(error: &Value) -> Result<(i64, String), RpcClientError> {
    let code = error.get("code").and_then(Value::as_i64).ok_or_else(|| {
        RpcClientError::Protocol(format!("error response without an integer code: {error}"))
    })?;
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok((code, message))
}

fn id_mismatch(expected: Option<&Value>, got: Option<&Value>) -> RpcClientError {
    let show = |v: Option<&Value>| v.map_or_else(|| "none".to_string(), Value::to_string);
    RpcClientError::Protocol(format!(
        "response id {} does not match request id {}",
        show(got),
        show(expected)
    ))
}

/// An invalid command-line argument (detected before anything is sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(pub String);

/// Converts a size in MiB (rpc.py's `TOTAL_SIZE`, may be fractional) and a block size in bytes
/// to a block count: `total_size_mib * 1048576 / block_size`. The size must be positive, a whole
/// number of bytes, and a multiple of the block size.
pub fn size_mib_to_num_blocks(total_size_mib: f64, block_size: u32) -> Result<u64, ArgError> {
    if block_size == 0 {
        return Err(ArgError("block size must be greater than 0".to_string()));
    }
    if !total_size_mib.is_finite() || total_size_mib <= 0.0 {
        return Err(ArgError(format!(
            "total size must be a positive number of MiB, got {total_size_mib}"
        )));
    }
    // Multiplying by a power of two is exact in binary floating point.
    let bytes = total_size_mib * 1_048_576.0;
    // 2^64 is exactly representable; anything at or above it does not fit in a u64.
    if bytes >= 18_446_744_073_709_551_616.0 {
        return Err(ArgError(format!(
            "total size {total_size_mib} MiB is too large"
        )));
    }
    if bytes.fract() != 0.0 {
        return Err(ArgError(format!(
            "total size {total_size_mib} MiB is not a whole number of bytes"
        )));
    }
    // In range and integral (checked above), so the conversion is exact.
    let bytes = bytes as u64;
    let num_blocks = bytes / u64::from(block_size);
    if num_blocks * u64::from(block_size) != bytes {
        return Err(ArgError(format!(
            "total size {total_size_mib} MiB ({bytes} bytes) is not a multiple of the block size {block_size}"
        )));
    }
    Ok(num_blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::params::bdev::{MallocCreateArgs, NullCreateArgs};
    use crate::rpc::params::CliParams;

    // The create params as strata-rpc builds them from rpc.py's arguments.
    /// Params of `bdev_malloc_create` from rpc.py's arguments
    /// (`bdev_malloc_create [-b NAME] [-u UUID] TOTAL_SIZE_MB BLOCK_SIZE`).
    fn bdev_malloc_create_params(
        name: Option<&str>,
        uuid: Option<&str>,
        total_size_mib: f64,
        block_size: u32,
    ) -> Result<Value, ArgError> {
        let args = MallocCreateArgs {
            name: name.map(str::to_string),
            uuid: uuid.map(str::to_string),
            total_size: total_size_mib,
            block_size,
        };
        Ok(args.to_params()?.unwrap_or_else(|| json!({})))
    }

    /// Params of `bdev_null_create` from rpc.py's arguments
    /// (`bdev_null_create NAME TOTAL_SIZE_MB BLOCK_SIZE [-u UUID]`).
    fn bdev_null_create_params(
        name: &str,
        total_size_mib: f64,
        block_size: u32,
        uuid: Option<&str>,
    ) -> Result<Value, ArgError> {
        let args = NullCreateArgs {
            name: name.to_string(),
            total_size: total_size_mib,
            block_size,
            uuid: uuid.map(str::to_string),
        };
        Ok(args.to_params()?.unwrap_or_else(|| json!({})))
    }

    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::thread;

    #[test]
    fn size_to_blocks() {
        assert_eq!(size_mib_to_num_blocks(64.0, 512), Ok(131_072));
        assert_eq!(size_mib_to_num_blocks(64.0, 4096), Ok(16_384));
        assert_eq!(size_mib_to_num_blocks(1.0, 1_048_576), Ok(1));
        assert_eq!(size_mib_to_num_blocks(0.5, 512), Ok(1024));
        assert_eq!(
            size_mib_to_num_blocks(1.0, 520),
            Err(ArgError(
                "total size 1 MiB (1048576 bytes) is not a multiple of the block size 520".into()
            ))
        );
        // 1/1024 MiB = 1 KiB: a whole number of bytes, but not of 4 KiB blocks.
        assert!(size_mib_to_num_blocks(1.0 / 1024.0, 4096).is_err());
        assert!(size_mib_to_num_blocks(0.1, 512).is_err());
        assert!(size_mib_to_num_blocks(0.0, 512).is_err());
        assert!(size_mib_to_num_blocks(-1.0, 512).is_err());
        assert!(size_mib_to_num_blocks(f64::NAN, 512).is_err());
        assert!(size_mib_to_num_blocks(f64::INFINITY, 512).is_err());
        assert!(size_mib_to_num_blocks(1e30, 512).is_err());
        assert!(size_mib_to_num_blocks(64.0, 0).is_err());
        // The largest size that fits: just under 2^64 bytes.
        assert_eq!(
            size_mib_to_num_blocks(17_592_186_044_415.0, 1_048_576),
            Ok(17_592_186_044_415)
        );
    }

    #[test]
    fn malloc_params() {
        assert_eq!(
            bdev_malloc_create_params(Some("Malloc1"), None, 64.0, 512).unwrap(),
            json!({"name": "Malloc1", "num_blocks": 131072, "block_size": 512})
        );
        assert_eq!(
            bdev_malloc_create_params(None, Some("u"), 8.0, 4096).unwrap(),
            json!({"num_blocks": 2048, "block_size": 4096, "uuid": "u"})
        );
        assert!(bdev_malloc_create_params(None, None, 1.0, 3000).is_err());
    }

    #[test]
    fn null_params() {
        assert_eq!(
            bdev_null_create_params("Null0", 16.0, 4096, None).unwrap(),
            json!({"name": "Null0", "num_blocks": 4096, "block_size": 4096})
        );
        assert_eq!(
            bdev_null_create_params("Null0", 1.0, 512, Some("x")).unwrap(),
            json!({"name": "Null0", "num_blocks": 2048, "block_size": 512, "uuid": "x"})
        );
    }

    #[test]
    fn request_shape() {
        assert_eq!(
            make_request(7, "spdk_get_version", None),
            json!({"jsonrpc": "2.0", "method": "spdk_get_version", "id": 7})
        );
        assert_eq!(
            make_request(1, "m", Some(json!({"a": 1}))),
            json!({"jsonrpc": "2.0", "method": "m", "id": 1, "params": {"a": 1}})
        );
    }

    #[test]
    fn response_interpretation() {
        let id = json!(3);
        assert_eq!(
            response_result(json!({"jsonrpc":"2.0","id":3,"result":true}), Some(&id)).unwrap(),
            json!(true)
        );
        assert!(matches!(
            response_result(json!({"jsonrpc":"2.0","id":4,"result":true}), Some(&id)),
            Err(RpcClientError::Protocol(_))
        ));
        assert!(matches!(
            response_result(
                json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}),
                Some(&id)
            ),
            Err(RpcClientError::Rpc { code: -32700, .. })
        ));
        assert!(matches!(
            response_result(json!({"jsonrpc":"2.0","id":3}), Some(&id)),
            Err(RpcClientError::Protocol(_))
        ));
        assert!(matches!(
            response_result(json!([1]), Some(&id)),
            Err(RpcClientError::Protocol(_))
        ));
    }

    #[test]
    fn parse_heuristic() {
        assert!(!worth_parsing(b""));
        assert!(!worth_parsing(b" \n"));
        assert!(!worth_parsing(b"{\"a\":"));
        assert!(worth_parsing(b"{\"a\":1}\n"));
        assert!(worth_parsing(b"[1]"));
        assert!(worth_parsing(b"garbage"));
    }

    /// A fresh socket path in the temp directory (removed by the returned guard).
    struct SockPath(PathBuf);

    impl SockPath {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "strata-rpc-client-test-{}-{}.sock",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_file(&path);
            SockPath(path)
        }
    }

    impl Drop for SockPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Server side: reads one request with the same streaming parse the client uses.
    fn read_request(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Value {
        let mut chunk = [0u8; 4096];
        loop {
            let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
            match values.next() {
                Some(Ok(v)) => {
                    let off = values.byte_offset();
                    buf.drain(..off);
                    return v;
                }
                Some(Err(e)) if !e.is_eof() => panic!("bad request: {e}"),
                _ => {}
            }
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "client closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[test]
    fn split_response_and_error_response() {
        let sock = SockPath::new();
        let listener = UnixListener::bind(&sock.0).unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = Vec::new();

            // 1: a result, written in two pieces split inside a string.
            let req = read_request(&mut stream, &mut buf);
            assert_eq!(req["jsonrpc"], "2.0");
            assert_eq!(req["method"], "bdev_malloc_create");
            assert_eq!(req["id"], 1);
            assert_eq!(
                req["params"],
                json!({"name": "Malloc1", "num_blocks": 131072, "block_size": 512})
            );
            let resp = br#"{"jsonrpc":"2.0","id":1,"result":"Malloc1"}"#;
            let (a, b) = resp.split_at(30);
            stream.write_all(a).unwrap();
            stream.flush().unwrap();
            thread::sleep(Duration::from_millis(100));
            stream.write_all(b).unwrap();

            // 2: an error (no params sent), followed by a newline.
            let req = read_request(&mut stream, &mut buf);
            assert_eq!(req["id"], 2);
            assert_eq!(req["method"], "bdev_get_bdevs");
            assert!(req.get("params").is_none());
            stream
                .write_all(
                    b"{\"jsonrpc\":\"2.0\",\"id\":2,\"error\":{\"code\":-19,\"message\":\"No such device\"}}\n",
                )
                .unwrap();

            // 3 and 4: both answers in one write, before the second request arrives; the client
            // must keep the second for its next call.
            let req = read_request(&mut stream, &mut buf);
            assert_eq!(req["id"], 3);
            stream
                .write_all(
                    b"{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":[1,2]}\n{\"jsonrpc\":\"2.0\",\"id\":4,\"result\":{\"x\":\"}\"}}",
                )
                .unwrap();
            let req = read_request(&mut stream, &mut buf);
            assert_eq!(req["id"], 4);

            // 5: raw call, answered after the client's request; then hang up.
            let req = read_request(&mut stream, &mut buf);
            assert_eq!(req, json!({"jsonrpc": "2.0", "method": "raw", "id": "abc"}));
            stream
                .write_all(br#"{"jsonrpc":"2.0","id":"abc","result":null}"#)
                .unwrap();
        });

        let mut client = RpcClient::connect(&sock.0, Duration::from_secs(10)).unwrap();
        let params = bdev_malloc_create_params(Some("Malloc1"), None, 64.0, 512).unwrap();
        let result = client.call("bdev_malloc_create", Some(params)).unwrap();
        assert_eq!(result, json!("Malloc1"));

        match client.call("bdev_get_bdevs", None) {
            Err(RpcClientError::Rpc { code, message }) => {
                assert_eq!(code, -19);
                assert_eq!(message, "No such device");
            }
            other => panic!("expected an RPC error, got {other:?}"),
        }

        // An RPC error leaves the connection usable.
        assert_eq!(client.call("m3", None).unwrap(), json!([1, 2]));
        assert_eq!(client.call("m4", None).unwrap(), json!({"x": "}"}));

        let raw = client
            .call_raw(&json!({"jsonrpc": "2.0", "method": "raw", "id": "abc"}))
            .unwrap();
        assert_eq!(raw, json!({"jsonrpc": "2.0", "id": "abc", "result": null}));
        server.join().unwrap();

        // The server has hung up.
        assert!(matches!(
            client.call("gone", None),
            Err(RpcClientError::Protocol(_) | RpcClientError::Io(_))
        ));
    }

    #[test]
    fn timeout_then_unusable() {
        let sock = SockPath::new();
        let listener = UnixListener::bind(&sock.0).unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            let _ = read_request(&mut stream, &mut buf);
            // Half a response, then silence until the client gives up.
            stream.write_all(br#"{"jsonrpc":"2.0","#).unwrap();
            thread::sleep(Duration::from_millis(600));
        });
        let mut client = RpcClient::connect(&sock.0, Duration::from_millis(200)).unwrap();
        let start = Instant::now();
        assert!(matches!(
            client.call("spdk_get_version", None),
            Err(RpcClientError::Timeout)
        ));
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        assert!(matches!(
            client.call("spdk_get_version", None),
            Err(RpcClientError::Protocol(_))
        ));
        server.join().unwrap();
    }

    #[test]
    fn malformed_response() {
        let sock = SockPath::new();
        let listener = UnixListener::bind(&sock.0).unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            let _ = read_request(&mut stream, &mut buf);
            stream.write_all(b"HTTP/1.1 400 Bad Request\r\n").unwrap();
            thread::sleep(Duration::from_millis(300));
        });
        let mut client = RpcClient::connect(&sock.0, Duration::from_secs(10)).unwrap();
        let start = Instant::now();
        assert!(matches!(
            client.call("spdk_get_version", None),
            Err(RpcClientError::Protocol(_))
        ));
        // Detected as soon as it arrives, not at the timeout.
        assert!(start.elapsed() < Duration::from_secs(5));
        server.join().unwrap();
    }

    #[test]
    fn connect_failure_names_the_path() {
        let sock = SockPath::new();
        let err = RpcClient::connect(&sock.0, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, RpcClientError::Connect { .. }));
        assert!(
            err.to_string().contains(&*sock.0.to_string_lossy()),
            "{err}"
        );
    }
}
