//! `strata-rpc`: the JSON-RPC command-line client of strata-tgt, the equivalent of SPDK's
//! `scripts/rpc.py`.
//!
//! ```text
//! strata-rpc [-s SOCK] [-t SECS] METHOD [ARGS...]
//! strata-rpc [-s SOCK] [-t SECS] call METHOD ['{"json":"params"}']
//! ```
//!
//! Every method of `docs/rpc.md` is a subcommand taking rpc.py's positional arguments and
//! options. The result is printed as pretty JSON on stdout. A JSON-RPC error response is printed
//! to stderr the way rpc.py prints it (`request:` / `Got JSON-RPC error response` / `response:`)
//! and the exit status is 1; so it is for connection failures and timeouts.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};
use strata_target::rpc_client::{
    bdev_malloc_create_params, bdev_null_create_params, error_fields, make_request,
    response_result, ArgError, RpcClient, RpcClientError, DEFAULT_SOCKET_PATH,
};

/// strata JSON-RPC client (rpc.py-compatible syntax).
#[derive(Debug, Parser)]
#[command(name = "strata-rpc", version)]
struct Cli {
    /// RPC server Unix socket path.
    #[arg(short = 's', long = "server", value_name = "SOCK", default_value = DEFAULT_SOCKET_PATH)]
    server: PathBuf,

    /// Timeout in seconds for the response (fractions allowed).
    #[arg(short = 't', long = "timeout", value_name = "SECS", default_value = "60",
          value_parser = parse_timeout)]
    timeout: Duration,

    /// Print the request that would be sent to stdout and exit, without connecting.
    #[arg(long = "dry-run")]
    dry_run: bool,

    #[command(subcommand)]
    method: Method,
}

/// One subcommand per RPC method; the subcommand name is the method name.
#[derive(Debug, Subcommand)]
enum Method {
    /// Send any method with raw JSON params.
    #[command(name = "call")]
    Call {
        /// Method name.
        method: String,
        /// Params: a JSON object or array (omitted from the request when not given).
        params: Option<String>,
    },
    /// List the methods the server supports.
    #[command(name = "rpc_get_methods")]
    RpcGetMethods {
        /// Only methods callable in the current state.
        #[arg(short = 'c', long)]
        current: bool,
    },
    /// Version of the target.
    #[command(name = "spdk_get_version")]
    SpdkGetVersion,
    /// Reactors and their pollers.
    #[command(name = "framework_get_reactors")]
    FrameworkGetReactors,
    /// Create a RAM-backed bdev.
    #[command(name = "bdev_malloc_create")]
    BdevMallocCreate {
        /// Bdev name (default: MallocN).
        #[arg(short = 'b', long)]
        name: Option<String>,
        /// UUID of the bdev.
        #[arg(short = 'u', long)]
        uuid: Option<String>,
        /// Size in MiB (may be fractional).
        #[arg(value_name = "TOTAL_SIZE_MB")]
        total_size: f64,
        /// Block size in bytes.
        block_size: u32,
    },
    /// Delete a malloc bdev.
    #[command(name = "bdev_malloc_delete")]
    BdevMallocDelete { name: String },
    /// Create a null bdev (discards writes, reads return nothing useful).
    #[command(name = "bdev_null_create")]
    BdevNullCreate {
        name: String,
        /// Size in MiB (may be fractional).
        #[arg(value_name = "TOTAL_SIZE_MB")]
        total_size: f64,
        /// Block size in bytes.
        block_size: u32,
        /// UUID of the bdev.
        #[arg(short = 'u', long)]
        uuid: Option<String>,
    },
    /// Delete a null bdev.
    #[command(name = "bdev_null_delete")]
    BdevNullDelete { name: String },
    /// Create a bdev on a file or block device, served by io_uring.
    #[command(name = "bdev_uring_create")]
    BdevUringCreate {
        filename: String,
        name: String,
        /// Block size in bytes (default: detected).
        block_size: Option<u32>,
    },
    /// Delete a uring bdev.
    #[command(name = "bdev_uring_delete")]
    BdevUringDelete { name: String },
    /// Create an AIO bdev (served by the uring engine).
    #[command(name = "bdev_aio_create")]
    BdevAioCreate {
        filename: String,
        name: String,
        /// Block size in bytes (default: detected).
        block_size: Option<u32>,
    },
    /// Delete an AIO bdev.
    #[command(name = "bdev_aio_delete")]
    BdevAioDelete { name: String },
    /// Create an error-injection bdev EE_<BASE_NAME> on top of BASE_NAME.
    #[command(name = "bdev_error_create")]
    BdevErrorCreate {
        base_name: String,
        /// UUID of the bdev.
        #[arg(short = 'u', long)]
        uuid: Option<String>,
    },
    /// Delete an error-injection bdev.
    #[command(name = "bdev_error_delete")]
    BdevErrorDelete { name: String },
    /// Inject errors into an error bdev.
    #[command(name = "bdev_error_inject_error")]
    BdevErrorInjectError {
        name: String,
        /// read, write, unmap, flush, write_zeroes, xor_write, checksum, all or clear.
        io_type: String,
        /// failure, pending, corrupt_data or nomem.
        error_type: String,
        /// Number of I/Os to fail (server default: 1).
        #[arg(short = 'n', long)]
        num: Option<u64>,
        /// Queue depth at which to start injecting.
        #[arg(short = 'q', long)]
        queue_depth: Option<u64>,
        /// Byte offset to corrupt (corrupt_data).
        #[arg(short = 'o', long)]
        corrupt_offset: Option<u64>,
        /// Value XORed into the corrupted byte (corrupt_data).
        #[arg(short = 'u', long)]
        corrupt_value: Option<u64>,
    },
    /// Create a delay bdev on top of another bdev (latencies in µs).
    #[command(name = "bdev_delay_create")]
    BdevDelayCreate {
        #[arg(short = 'b', long)]
        base_bdev_name: String,
        #[arg(short = 'd', long)]
        name: String,
        #[arg(short = 'r', long)]
        avg_read_latency: u64,
        #[arg(short = 't', long = "nine-nine-read-latency")]
        p99_read_latency: u64,
        #[arg(short = 'w', long)]
        avg_write_latency: u64,
        #[arg(short = 'n', long = "nine-nine-write-latency")]
        p99_write_latency: u64,
        #[arg(short = 'u', long)]
        uuid: Option<String>,
    },
    /// Delete a delay bdev.
    #[command(name = "bdev_delay_delete")]
    BdevDelayDelete { name: String },
    /// Change one latency of a delay bdev.
    #[command(name = "bdev_delay_update_latency")]
    BdevDelayUpdateLatency {
        #[arg(value_name = "NAME")]
        delay_bdev_name: String,
        /// avg_read, p99_read, avg_write or p99_write.
        latency_type: String,
        latency_us: u64,
    },
    /// List bdevs (all, or the one named).
    #[command(name = "bdev_get_bdevs")]
    BdevGetBdevs {
        #[arg(short = 'b', long)]
        name: Option<String>,
        /// Milliseconds to wait for the bdev to appear.
        #[arg(short = 't', long)]
        timeout: Option<u64>,
    },
    /// I/O statistics of bdevs (all, or the one named).
    #[command(name = "bdev_get_iostat")]
    BdevGetIostat {
        #[arg(short = 'b', long)]
        name: Option<String>,
    },
    /// The current configuration as an SPDK JSON config.
    #[command(name = "save_config")]
    SaveConfig,
    /// Wait for the framework to be initialized.
    #[command(name = "framework_wait_init")]
    FrameworkWaitInit,
    /// Wait for bdev examination to finish.
    #[command(name = "bdev_wait_for_examine")]
    BdevWaitForExamine,
    /// Shut the target down.
    #[command(name = "spdk_kill_instance")]
    SpdkKillInstance {
        /// SIGINT or SIGTERM.
        sig_name: String,
    },
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("not a number of seconds: {s:?}"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!(
            "the timeout must be a positive number of seconds, got {s}"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid timeout {s}: {e}"))
}

/// Params object builder that leaves out options which were not given.
#[derive(Default)]
struct Params(Map<String, Value>);

impl Params {
    fn new() -> Self {
        Self::default()
    }

    fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.to_string(), value.into());
        self
    }

    fn opt<T: Into<Value>>(self, key: &str, value: Option<T>) -> Self {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }

    /// `None` for an empty object (rpc.py sends no params then).
    fn build(self) -> Option<Value> {
        (!self.0.is_empty()).then_some(Value::Object(self.0))
    }
}

/// The method name and params of the request a subcommand sends.
fn to_request(method: Method) -> Result<(String, Option<Value>), ArgError> {
    let (name, params): (&str, Option<Value>) = match method {
        Method::Call { method, params } => {
            let params = params.map(|p| parse_raw_params(&p)).transpose()?;
            return Ok((method, params));
        }
        Method::RpcGetMethods { current } => (
            "rpc_get_methods",
            Params::new()
                .opt("current", current.then_some(true))
                .build(),
        ),
        Method::SpdkGetVersion => ("spdk_get_version", None),
        Method::FrameworkGetReactors => ("framework_get_reactors", None),
        Method::BdevMallocCreate {
            name,
            uuid,
            total_size,
            block_size,
        } => (
            "bdev_malloc_create",
            Some(bdev_malloc_create_params(
                name.as_deref(),
                uuid.as_deref(),
                total_size,
                block_size,
            )?),
        ),
        Method::BdevMallocDelete { name } => ("bdev_malloc_delete", named(name)),
        Method::BdevNullCreate {
            name,
            total_size,
            block_size,
            uuid,
        } => (
            "bdev_null_create",
            Some(bdev_null_create_params(
                &name,
                total_size,
                block_size,
                uuid.as_deref(),
            )?),
        ),
        Method::BdevNullDelete { name } => ("bdev_null_delete", named(name)),
        Method::BdevUringCreate {
            filename,
            name,
            block_size,
        } => (
            "bdev_uring_create",
            Params::new()
                .set("filename", filename)
                .set("name", name)
                .opt("block_size", block_size)
                .build(),
        ),
        Method::BdevUringDelete { name } => ("bdev_uring_delete", named(name)),
        Method::BdevAioCreate {
            filename,
            name,
            block_size,
        } => (
            "bdev_aio_create",
            Params::new()
                .set("filename", filename)
                .set("name", name)
                .opt("block_size", block_size)
                .build(),
        ),
        Method::BdevAioDelete { name } => ("bdev_aio_delete", named(name)),
        Method::BdevErrorCreate { base_name, uuid } => (
            "bdev_error_create",
            Params::new()
                .set("base_name", base_name)
                .opt("uuid", uuid)
                .build(),
        ),
        Method::BdevErrorDelete { name } => ("bdev_error_delete", named(name)),
        Method::BdevErrorInjectError {
            name,
            io_type,
            error_type,
            num,
            queue_depth,
            corrupt_offset,
            corrupt_value,
        } => (
            "bdev_error_inject_error",
            Params::new()
                .set("name", name)
                .set("io_type", io_type)
                .set("error_type", error_type)
                .opt("num", num)
                .opt("queue_depth", queue_depth)
                .opt("corrupt_offset", corrupt_offset)
                .opt("corrupt_value", corrupt_value)
                .build(),
        ),
        Method::BdevDelayCreate {
            base_bdev_name,
            name,
            avg_read_latency,
            p99_read_latency,
            avg_write_latency,
            p99_write_latency,
            uuid,
        } => (
            "bdev_delay_create",
            Params::new()
                .set("base_bdev_name", base_bdev_name)
                .set("name", name)
                .set("avg_read_latency", avg_read_latency)
                .set("p99_read_latency", p99_read_latency)
                .set("avg_write_latency", avg_write_latency)
                .set("p99_write_latency", p99_write_latency)
                .opt("uuid", uuid)
                .build(),
        ),
        Method::BdevDelayDelete { name } => ("bdev_delay_delete", named(name)),
        Method::BdevDelayUpdateLatency {
            delay_bdev_name,
            latency_type,
            latency_us,
        } => (
            "bdev_delay_update_latency",
            Params::new()
                .set("delay_bdev_name", delay_bdev_name)
                .set("latency_type", latency_type)
                .set("latency_us", latency_us)
                .build(),
        ),
        Method::BdevGetBdevs { name, timeout } => (
            "bdev_get_bdevs",
            Params::new()
                .opt("name", name)
                .opt("timeout", timeout)
                .build(),
        ),
        Method::BdevGetIostat { name } => {
            ("bdev_get_iostat", Params::new().opt("name", name).build())
        }
        Method::SaveConfig => ("save_config", None),
        Method::FrameworkWaitInit => ("framework_wait_init", None),
        Method::BdevWaitForExamine => ("bdev_wait_for_examine", None),
        Method::SpdkKillInstance { sig_name } => (
            "spdk_kill_instance",
            Params::new().set("sig_name", sig_name).build(),
        ),
    };
    Ok((name.to_string(), params))
}

fn named(name: String) -> Option<Value> {
    Params::new().set("name", name).build()
}

/// Raw params of `call`: must be a JSON object or array.
fn parse_raw_params(text: &str) -> Result<Value, ArgError> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ (Value::Object(_) | Value::Array(_))) => Ok(v),
        Ok(other) => Err(ArgError(format!(
            "params must be a JSON object or array, got {other}"
        ))),
        Err(e) => Err(ArgError(format!("params are not valid JSON: {e}"))),
    }
}

/// The `request:` part of rpc.py's error report: the params with `method` and `req_id` added.
fn request_for_report(request: &Value) -> Value {
    let method = request.get("method").cloned().unwrap_or(Value::Null);
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    match request.get("params") {
        None => json!({"method": method, "req_id": id}),
        Some(Value::Object(params)) => {
            let mut shown = params.clone();
            shown.insert("method".to_string(), method);
            shown.insert("req_id".to_string(), id);
            Value::Object(shown)
        }
        Some(params) => json!({"params": params, "method": method, "req_id": id}),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn run(cli: Cli) -> Result<(), String> {
    let (method, params) = to_request(cli.method).map_err(|e| e.to_string())?;
    if cli.dry_run {
        println!("{}", pretty(&make_request(1, &method, params)));
        return Ok(());
    }
    let describe = |e: RpcClientError| match e {
        RpcClientError::Timeout => format!(
            "timed out after {}s waiting for the response to {method} from {}",
            cli.timeout.as_secs_f64(),
            cli.server.display()
        ),
        RpcClientError::Connect { .. } => format!("{e} (is strata-tgt running?)"),
        e => format!("{method} on {}: {e}", cli.server.display()),
    };
    let mut client = RpcClient::connect(&cli.server, cli.timeout).map_err(describe)?;
    let request = client.build_request(&method, params);
    let response = client.call_raw(&request).map_err(describe)?;
    if let Some(error) = response.get("error") {
        // Validate it the same way the library does, so malformed errors are reported as such.
        error_fields(error).map_err(describe)?;
        eprintln!(
            "request:\n{}\nGot JSON-RPC error response\nresponse:\n{}",
            pretty(&request_for_report(&request)),
            pretty(error)
        );
        return Err(String::new());
    }
    let result = response_result(response, request.get("id")).map_err(describe)?;
    println!("{}", pretty(&result));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("strata-rpc: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::collections::BTreeSet;

    fn req(args: &[&str]) -> Result<(String, Option<Value>), String> {
        let cli = Cli::try_parse_from(std::iter::once("strata-rpc").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        to_request(cli.method).map_err(|e| e.to_string())
    }

    fn ok(args: &[&str]) -> (String, Option<Value>) {
        req(args).unwrap()
    }

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options() {
        let cli = Cli::try_parse_from(["strata-rpc", "spdk_get_version"]).unwrap();
        assert_eq!(cli.server, PathBuf::from("/var/tmp/strata.sock"));
        assert_eq!(cli.timeout, Duration::from_secs(60));
        let cli = Cli::try_parse_from([
            "strata-rpc",
            "-s",
            "/tmp/x.sock",
            "-t",
            "0.5",
            "save_config",
        ])
        .unwrap();
        assert_eq!(cli.server, PathBuf::from("/tmp/x.sock"));
        assert_eq!(cli.timeout, Duration::from_millis(500));
        assert!(Cli::try_parse_from(["strata-rpc", "-t", "0", "save_config"]).is_err());
        assert!(Cli::try_parse_from(["strata-rpc", "-t", "-1", "save_config"]).is_err());
        assert!(Cli::try_parse_from(["strata-rpc", "-t", "nan", "save_config"]).is_err());
        assert!(Cli::try_parse_from(["strata-rpc", "-t", "abc", "save_config"]).is_err());
    }

    #[test]
    fn malloc() {
        assert_eq!(
            ok(&["bdev_malloc_create", "-b", "Malloc1", "64", "512"]),
            (
                "bdev_malloc_create".into(),
                Some(json!({"name": "Malloc1", "num_blocks": 131072, "block_size": 512}))
            )
        );
        assert_eq!(
            ok(&["bdev_malloc_create", "8", "4096", "-u", "abc"]).1,
            Some(json!({"num_blocks": 2048, "block_size": 4096, "uuid": "abc"}))
        );
        let err = req(&["bdev_malloc_create", "1", "520"]).unwrap_err();
        assert!(
            err.contains("not a multiple of the block size 520"),
            "{err}"
        );
        assert_eq!(
            ok(&["bdev_malloc_delete", "Malloc1"]).1,
            Some(json!({"name": "Malloc1"}))
        );
    }

    #[test]
    fn null_uring_aio() {
        assert_eq!(
            ok(&["bdev_null_create", "Null0", "16", "4096", "-u", "x"]).1,
            Some(json!({"name": "Null0", "num_blocks": 4096, "block_size": 4096, "uuid": "x"}))
        );
        assert_eq!(
            ok(&["bdev_uring_create", "/dev/nvme0n1", "U0"]).1,
            Some(json!({"filename": "/dev/nvme0n1", "name": "U0"}))
        );
        assert_eq!(
            ok(&["bdev_aio_create", "/tmp/f", "A0", "4096"]),
            (
                "bdev_aio_create".into(),
                Some(json!({"filename": "/tmp/f", "name": "A0", "block_size": 4096}))
            )
        );
    }

    #[test]
    fn error_and_delay() {
        assert_eq!(
            ok(&["bdev_error_create", "Malloc0"]).1,
            Some(json!({"base_name": "Malloc0"}))
        );
        assert_eq!(
            ok(&["bdev_error_inject_error", "EE_Malloc0", "read", "failure"]).1,
            Some(json!({"name": "EE_Malloc0", "io_type": "read", "error_type": "failure"}))
        );
        assert_eq!(
            ok(&[
                "bdev_error_inject_error",
                "EE_Malloc0",
                "write",
                "corrupt_data",
                "-n",
                "5",
                "-q",
                "8",
                "-o",
                "100",
                "-u",
                "255"
            ])
            .1,
            Some(json!({
                "name": "EE_Malloc0", "io_type": "write", "error_type": "corrupt_data",
                "num": 5, "queue_depth": 8, "corrupt_offset": 100, "corrupt_value": 255
            }))
        );
        assert_eq!(
            ok(&[
                "bdev_delay_create",
                "-b",
                "Malloc0",
                "-d",
                "D0",
                "-r",
                "10",
                "-t",
                "20",
                "-w",
                "30",
                "-n",
                "40"
            ])
            .1,
            Some(json!({
                "base_bdev_name": "Malloc0", "name": "D0", "avg_read_latency": 10,
                "p99_read_latency": 20, "avg_write_latency": 30, "p99_write_latency": 40
            }))
        );
        assert_eq!(
            ok(&[
                "bdev_delay_create",
                "--base-bdev-name=M",
                "--name=D",
                "--avg-read-latency=1",
                "--nine-nine-read-latency=2",
                "--avg-write-latency=3",
                "--nine-nine-write-latency=4",
                "--uuid=u"
            ])
            .1,
            Some(json!({
                "base_bdev_name": "M", "name": "D", "avg_read_latency": 1,
                "p99_read_latency": 2, "avg_write_latency": 3, "p99_write_latency": 4, "uuid": "u"
            }))
        );
        assert!(req(&["bdev_delay_create", "-b", "Malloc0", "-d", "D0"]).is_err());
        assert_eq!(
            ok(&["bdev_delay_update_latency", "D0", "p99_read", "100"]).1,
            Some(json!({"delay_bdev_name": "D0", "latency_type": "p99_read", "latency_us": 100}))
        );
    }

    #[test]
    fn queries() {
        assert_eq!(ok(&["bdev_get_bdevs"]), ("bdev_get_bdevs".into(), None));
        assert_eq!(
            ok(&["bdev_get_bdevs", "-b", "Malloc0", "-t", "1000"]).1,
            Some(json!({"name": "Malloc0", "timeout": 1000}))
        );
        assert_eq!(
            ok(&["bdev_get_iostat", "-b", "M"]).1,
            Some(json!({"name": "M"}))
        );
        assert_eq!(ok(&["rpc_get_methods"]).1, None);
        assert_eq!(
            ok(&["rpc_get_methods", "-c"]).1,
            Some(json!({"current": true}))
        );
        assert_eq!(
            ok(&["spdk_kill_instance", "SIGTERM"]).1,
            Some(json!({"sig_name": "SIGTERM"}))
        );
        for m in [
            "spdk_get_version",
            "framework_get_reactors",
            "save_config",
            "framework_wait_init",
            "bdev_wait_for_examine",
        ] {
            assert_eq!(ok(&[m]), (m.to_string(), None));
        }
    }

    #[test]
    fn raw_call() {
        assert_eq!(
            ok(&["call", "bdev_get_bdevs", r#"{"name":"M"}"#]),
            ("bdev_get_bdevs".into(), Some(json!({"name": "M"})))
        );
        assert_eq!(ok(&["call", "x", "[1,2]"]).1, Some(json!([1, 2])));
        assert_eq!(ok(&["call", "x"]), ("x".into(), None));
        assert!(req(&["call", "x", "42"])
            .unwrap_err()
            .contains("object or array"));
        assert!(req(&["call", "x", "{"])
            .unwrap_err()
            .contains("not valid JSON"));
    }

    #[test]
    fn error_report_request() {
        let r = make_request(1, "bdev_get_bdevs", Some(json!({"name": "X"})));
        assert_eq!(
            request_for_report(&r),
            json!({"name": "X", "method": "bdev_get_bdevs", "req_id": 1})
        );
        let r = make_request(2, "save_config", None);
        assert_eq!(
            request_for_report(&r),
            json!({"method": "save_config", "req_id": 2})
        );
    }

    /// Every method in docs/rpc.md's table has a subcommand of the same name, and vice versa.
    #[test]
    fn subcommands_match_docs() {
        let doc = include_str!("../../../docs/rpc.md");
        let mut documented = BTreeSet::new();
        for line in doc.lines().filter(|l| l.starts_with("| `")) {
            let first_cell = line.split('|').nth(1).unwrap_or_default();
            for (i, part) in first_cell.split('`').enumerate() {
                if i % 2 == 1 {
                    documented.insert(part.to_string());
                }
            }
        }
        assert!(documented.contains("bdev_malloc_create"));
        let subcommands: BTreeSet<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .filter(|n| n != "call" && n != "help")
            .collect();
        assert_eq!(subcommands, documented);
    }
}
