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
    /// Create a RAID volume.
    #[command(name = "bdev_raid_create")]
    BdevRaidCreate {
        #[arg(short = 'n', long)]
        name: String,
        /// raid0, raid1, raid5 (raid5f), raid6 or concat.
        #[arg(short = 'r', long)]
        raid_level: String,
        #[arg(short = 'z', long)]
        strip_size_kb: Option<u64>,
        /// Base bdev names, space-separated in one argument.
        #[arg(short = 'b', long)]
        base_bdevs: String,
        #[arg(long)]
        uuid: Option<String>,
        /// Write superblocks (re-assembly after restart, write-intent bitmap).
        #[arg(short = 's', long)]
        superblock: bool,
    },
    /// Delete a RAID volume.
    #[command(name = "bdev_raid_delete")]
    BdevRaidDelete { name: String },
    /// List RAID volumes: all, online, configuring or offline.
    #[command(name = "bdev_raid_get_bdevs")]
    BdevRaidGetBdevs {
        #[arg(default_value = "all")]
        category: String,
    },
    /// Add a base bdev to a degraded RAID volume (it is rebuilt).
    #[command(name = "bdev_raid_add_base_bdev")]
    BdevRaidAddBaseBdev {
        raid_bdev: String,
        base_bdev: String,
    },
    /// Remove a base bdev from its RAID volume.
    #[command(name = "bdev_raid_remove_base_bdev")]
    BdevRaidRemoveBaseBdev { name: String },
    /// Set RAID module options (rebuild/resync rate limit).
    #[command(name = "bdev_raid_set_options")]
    BdevRaidSetOptions {
        #[arg(short = 'w', long)]
        process_window_size_kb: Option<u64>,
        #[arg(short = 'b', long)]
        process_max_bandwidth_mb_sec: Option<u64>,
    },
    /// Create a mirror of two bdevs (legs).
    #[command(name = "bdev_mirror_create")]
    BdevMirrorCreate {
        #[arg(short = 'n', long)]
        name: String,
        #[arg(short = 'p', long)]
        primary: String,
        #[arg(short = 's', long)]
        secondary: String,
        /// Change-bitmap region size (KiB, power of two).
        #[arg(short = 'r', long)]
        region_size_kb: Option<u64>,
        /// Checksum scan / scrub chunk size (KiB).
        #[arg(long)]
        scan_chunk_kb: Option<u64>,
        /// primary or balance.
        #[arg(long)]
        read_policy: Option<String>,
        /// crc32c or sha256.
        #[arg(long)]
        checksum: Option<String>,
        #[arg(long = "scrub-interval")]
        scrub_interval_s: Option<u32>,
        #[arg(short = 'b', long)]
        max_bandwidth_mb_sec: Option<u32>,
        #[arg(long)]
        uuid: Option<String>,
        /// The legs already hold the same data: no initial copy.
        #[arg(long)]
        no_initial_sync: bool,
        /// Show the initial copy's progress until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Delete a mirror (wipes its superblocks, releases the legs).
    #[command(name = "bdev_mirror_delete")]
    BdevMirrorDelete { name: String },
    /// Show mirrors: state, legs, dirty regions, job progress.
    #[command(name = "bdev_mirror_get")]
    BdevMirrorGet {
        #[arg(short = 'n', long)]
        name: Option<String>,
    },
    /// Split a mirror: the secondary pauses, changes are recorded.
    #[command(name = "bdev_mirror_split")]
    BdevMirrorSplit { name: String },
    /// Resume a split mirror: copy the changes to the secondary.
    #[command(name = "bdev_mirror_resume")]
    BdevMirrorResume {
        name: String,
        /// auto, bitmap or checksum.
        #[arg(short = 'm', long)]
        mode: Option<String>,
        /// Show the job's progress until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Scrub a mirror: compare the legs by checksums (and repair).
    #[command(name = "bdev_mirror_verify")]
    BdevMirrorVerify {
        name: String,
        #[arg(long)]
        repair: bool,
        /// Show the job's progress until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Attach a bdev in place of a failed or missing leg (it is resynced).
    #[command(name = "bdev_mirror_add_leg")]
    BdevMirrorAddLeg {
        name: String,
        base_bdev: String,
        /// Show the resync's progress until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Change a mirror's options.
    #[command(name = "bdev_mirror_set_options")]
    BdevMirrorSetOptions {
        name: String,
        #[arg(long)]
        read_policy: Option<String>,
        #[arg(long = "scrub-interval")]
        scrub_interval_s: Option<u32>,
        #[arg(short = 'b', long)]
        max_bandwidth_mb_sec: Option<u32>,
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
    /// Create the NVMe-oF transport (TCP only).
    #[command(name = "nvmf_create_transport")]
    NvmfCreateTransport {
        /// Transport type: TCP.
        #[arg(short = 't', long)]
        trtype: String,
        /// Max number of outstanding I/Os per queue.
        #[arg(short = 'q', long)]
        max_queue_depth: Option<u32>,
        /// Max number of I/O queue pairs per controller.
        #[arg(short = 'm', long)]
        max_io_qpairs_per_ctrlr: Option<u32>,
        /// Max in-capsule data size in bytes.
        #[arg(short = 'c', long)]
        in_capsule_data_size: Option<u32>,
        /// Max I/O size in bytes.
        #[arg(short = 'i', long)]
        max_io_size: Option<u32>,
        /// I/O unit size in bytes.
        #[arg(short = 'u', long)]
        io_unit_size: Option<u32>,
        /// Max admin queue depth.
        #[arg(short = 'a', long)]
        max_aq_depth: Option<u32>,
        /// Number of pooled data buffers.
        #[arg(short = 'n', long)]
        num_shared_buffers: Option<u32>,
        /// Per-poll-group buffer cache size.
        #[arg(short = 'b', long)]
        buf_cache_size: Option<u32>,
        /// Disable the C2H success optimization (sends c2h_success=false).
        #[arg(short = 'o', long = "c2h-success")]
        disable_c2h_success: bool,
    },
    /// List the NVMe-oF transports.
    #[command(name = "nvmf_get_transports")]
    NvmfGetTransports {
        /// Only this transport type.
        #[arg(short = 't', long)]
        trtype: Option<String>,
    },
    /// Create an NVM subsystem.
    #[command(name = "nvmf_create_subsystem")]
    NvmfCreateSubsystem {
        /// Subsystem NQN.
        nqn: String,
        /// Serial number (≤ 20 ASCII characters).
        #[arg(short = 's', long)]
        serial_number: Option<String>,
        /// Model number (≤ 40 ASCII characters).
        #[arg(short = 'd', long)]
        model_number: Option<String>,
        /// Allow any host to connect.
        #[arg(short = 'a', long)]
        allow_any_host: bool,
        /// Max number of namespaces (0: default).
        #[arg(short = 'm', long)]
        max_namespaces: Option<u32>,
    },
    /// Delete an NVM subsystem (its namespaces, listeners and connections go with it).
    #[command(name = "nvmf_delete_subsystem")]
    NvmfDeleteSubsystem { nqn: String },
    /// Make a subsystem reachable on a transport address.
    #[command(name = "nvmf_subsystem_add_listener")]
    NvmfSubsystemAddListener {
        nqn: String,
        #[command(flatten)]
        addr: ListenAddressArgs,
    },
    /// Stop a subsystem listening on a transport address.
    #[command(name = "nvmf_subsystem_remove_listener")]
    NvmfSubsystemRemoveListener {
        nqn: String,
        #[command(flatten)]
        addr: ListenAddressArgs,
    },
    /// Add a bdev as a namespace of a subsystem (claims the bdev); prints the nsid.
    #[command(name = "nvmf_subsystem_add_ns")]
    NvmfSubsystemAddNs {
        nqn: String,
        bdev_name: String,
        /// Namespace ID (default: the lowest free one).
        #[arg(short = 'n', long)]
        nsid: Option<u32>,
        /// Namespace UUID (default: the bdev's).
        #[arg(short = 'u', long)]
        uuid: Option<String>,
        /// Namespace NGUID (32 hex digits).
        #[arg(short = 'g', long)]
        nguid: Option<String>,
        /// Namespace EUI-64 (16 hex digits).
        #[arg(short = 'e', long)]
        eui64: Option<String>,
    },
    /// Remove a namespace from a subsystem (releases the bdev).
    #[command(name = "nvmf_subsystem_remove_ns")]
    NvmfSubsystemRemoveNs { nqn: String, nsid: u32 },
    /// Allow a host NQN to connect to a subsystem.
    #[command(name = "nvmf_subsystem_add_host")]
    NvmfSubsystemAddHost { nqn: String, host: String },
    /// Remove a host NQN from a subsystem's allowed hosts.
    #[command(name = "nvmf_subsystem_remove_host")]
    NvmfSubsystemRemoveHost { nqn: String, host: String },
    /// Allow (-e) or restrict (-d) any host to connect to a subsystem.
    #[command(name = "nvmf_subsystem_allow_any_host")]
    NvmfSubsystemAllowAnyHost {
        nqn: String,
        /// Allow any host.
        #[arg(
            short = 'e',
            long,
            conflicts_with = "disable",
            required_unless_present = "disable"
        )]
        enable: bool,
        /// Only allow the hosts added with nvmf_subsystem_add_host.
        #[arg(short = 'd', long)]
        disable: bool,
    },
    /// List subsystems (all, or the one named).
    #[command(name = "nvmf_get_subsystems")]
    NvmfGetSubsystems { nqn: Option<String> },
    /// Controllers connected to a subsystem.
    #[command(name = "nvmf_subsystem_get_controllers")]
    NvmfSubsystemGetControllers { nqn: String },
    /// Queue pairs connected to a subsystem.
    #[command(name = "nvmf_subsystem_get_qpairs")]
    NvmfSubsystemGetQpairs { nqn: String },
    /// NVMe-oF statistics, one poll group per reactor.
    #[command(name = "nvmf_get_stats")]
    NvmfGetStats,
    /// Shut the target down.
    #[command(name = "spdk_kill_instance")]
    SpdkKillInstance {
        /// SIGINT or SIGTERM.
        sig_name: String,
    },
}

/// The transport address of `nvmf_subsystem_add_listener` / `nvmf_subsystem_remove_listener`.
#[derive(Debug, clap::Args)]
struct ListenAddressArgs {
    /// Transport type: TCP.
    #[arg(short = 't', long)]
    trtype: String,
    /// Transport address: an IP address.
    #[arg(short = 'a', long)]
    traddr: String,
    /// Transport service ID: a port.
    #[arg(short = 's', long)]
    trsvcid: String,
    /// Address family: ipv4 or ipv6 (sent as IPv4 / IPv6).
    #[arg(short = 'f', long, default_value = "ipv4")]
    adrfam: String,
}

impl ListenAddressArgs {
    fn to_json(&self) -> Value {
        json!({
            "trtype": self.trtype,
            "adrfam": adrfam(&self.adrfam),
            "traddr": self.traddr,
            "trsvcid": self.trsvcid,
        })
    }
}

/// SPDK's spelling of an address family given in any case (`ipv4` → `IPv4`).
fn adrfam(s: &str) -> String {
    match s.to_ascii_lowercase().as_str() {
        "ipv4" => "IPv4".into(),
        "ipv6" => "IPv6".into(),
        "ib" => "IB".into(),
        "fc" => "FC".into(),
        "intra_host" => "INTRA_HOST".into(),
        _ => s.to_string(),
    }
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
        Method::BdevRaidCreate {
            name,
            raid_level,
            strip_size_kb,
            base_bdevs,
            uuid,
            superblock,
        } => (
            "bdev_raid_create",
            Params::new()
                .set("name", name)
                .set("raid_level", raid_level)
                .opt("strip_size_kb", strip_size_kb)
                .set(
                    "base_bdevs",
                    base_bdevs
                        .split_whitespace()
                        .map(|s| Value::String(s.to_string()))
                        .collect::<Vec<_>>(),
                )
                .opt("uuid", uuid)
                .opt("superblock", superblock.then_some(true))
                .build(),
        ),
        Method::BdevRaidDelete { name } => ("bdev_raid_delete", named(name)),
        Method::BdevRaidGetBdevs { category } => (
            "bdev_raid_get_bdevs",
            Params::new().set("category", category).build(),
        ),
        Method::BdevRaidAddBaseBdev {
            raid_bdev,
            base_bdev,
        } => (
            "bdev_raid_add_base_bdev",
            Params::new()
                .set("raid_bdev", raid_bdev)
                .set("base_bdev", base_bdev)
                .build(),
        ),
        Method::BdevRaidRemoveBaseBdev { name } => ("bdev_raid_remove_base_bdev", named(name)),
        Method::BdevRaidSetOptions {
            process_window_size_kb,
            process_max_bandwidth_mb_sec,
        } => (
            "bdev_raid_set_options",
            Params::new()
                .opt("process_window_size_kb", process_window_size_kb)
                .opt("process_max_bandwidth_mb_sec", process_max_bandwidth_mb_sec)
                .build(),
        ),
        Method::BdevMirrorCreate {
            name,
            primary,
            secondary,
            region_size_kb,
            scan_chunk_kb,
            read_policy,
            checksum,
            scrub_interval_s,
            max_bandwidth_mb_sec,
            uuid,
            no_initial_sync,
            wait: _,
        } => (
            "bdev_mirror_create",
            Params::new()
                .set("name", name)
                .set("primary", primary)
                .set("secondary", secondary)
                .opt("region_size_kb", region_size_kb)
                .opt("scan_chunk_kb", scan_chunk_kb)
                .opt("read_policy", read_policy)
                .opt("checksum", checksum)
                .opt("scrub_interval_s", scrub_interval_s)
                .opt("max_bandwidth_mb_sec", max_bandwidth_mb_sec)
                .opt("uuid", uuid)
                .opt("initial_sync", no_initial_sync.then_some(false))
                .build(),
        ),
        Method::BdevMirrorDelete { name } => ("bdev_mirror_delete", named(name)),
        Method::BdevMirrorGet { name } => {
            ("bdev_mirror_get", Params::new().opt("name", name).build())
        }
        Method::BdevMirrorSplit { name } => ("bdev_mirror_split", named(name)),
        Method::BdevMirrorResume {
            name,
            mode,
            wait: _,
        } => (
            "bdev_mirror_resume",
            Params::new().set("name", name).opt("mode", mode).build(),
        ),
        Method::BdevMirrorVerify {
            name,
            repair,
            wait: _,
        } => (
            "bdev_mirror_verify",
            Params::new()
                .set("name", name)
                .opt("repair", repair.then_some(true))
                .build(),
        ),
        Method::BdevMirrorAddLeg {
            name,
            base_bdev,
            wait: _,
        } => (
            "bdev_mirror_add_leg",
            Params::new()
                .set("name", name)
                .set("base_bdev", base_bdev)
                .build(),
        ),
        Method::BdevMirrorSetOptions {
            name,
            read_policy,
            scrub_interval_s,
            max_bandwidth_mb_sec,
        } => (
            "bdev_mirror_set_options",
            Params::new()
                .set("name", name)
                .opt("read_policy", read_policy)
                .opt("scrub_interval_s", scrub_interval_s)
                .opt("max_bandwidth_mb_sec", max_bandwidth_mb_sec)
                .build(),
        ),
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
        Method::NvmfCreateTransport {
            trtype,
            max_queue_depth,
            max_io_qpairs_per_ctrlr,
            in_capsule_data_size,
            max_io_size,
            io_unit_size,
            max_aq_depth,
            num_shared_buffers,
            buf_cache_size,
            disable_c2h_success,
        } => (
            "nvmf_create_transport",
            Params::new()
                .set("trtype", trtype)
                .opt("max_queue_depth", max_queue_depth)
                .opt("max_io_qpairs_per_ctrlr", max_io_qpairs_per_ctrlr)
                .opt("in_capsule_data_size", in_capsule_data_size)
                .opt("max_io_size", max_io_size)
                .opt("io_unit_size", io_unit_size)
                .opt("max_aq_depth", max_aq_depth)
                .opt("num_shared_buffers", num_shared_buffers)
                .opt("buf_cache_size", buf_cache_size)
                .opt("c2h_success", disable_c2h_success.then_some(false))
                .build(),
        ),
        Method::NvmfGetTransports { trtype } => (
            "nvmf_get_transports",
            Params::new().opt("trtype", trtype).build(),
        ),
        Method::NvmfCreateSubsystem {
            nqn,
            serial_number,
            model_number,
            allow_any_host,
            max_namespaces,
        } => (
            "nvmf_create_subsystem",
            Params::new()
                .set("nqn", nqn)
                .opt("serial_number", serial_number)
                .opt("model_number", model_number)
                .opt("allow_any_host", allow_any_host.then_some(true))
                .opt("max_namespaces", max_namespaces)
                .build(),
        ),
        Method::NvmfDeleteSubsystem { nqn } => ("nvmf_delete_subsystem", with_nqn(nqn)),
        Method::NvmfSubsystemAddListener { nqn, addr } => (
            "nvmf_subsystem_add_listener",
            Params::new()
                .set("nqn", nqn)
                .set("listen_address", addr.to_json())
                .build(),
        ),
        Method::NvmfSubsystemRemoveListener { nqn, addr } => (
            "nvmf_subsystem_remove_listener",
            Params::new()
                .set("nqn", nqn)
                .set("listen_address", addr.to_json())
                .build(),
        ),
        Method::NvmfSubsystemAddNs {
            nqn,
            bdev_name,
            nsid,
            uuid,
            nguid,
            eui64,
        } => (
            "nvmf_subsystem_add_ns",
            Params::new()
                .set("nqn", nqn)
                .set(
                    "namespace",
                    Params::new()
                        .set("bdev_name", bdev_name)
                        .opt("nsid", nsid)
                        .opt("uuid", uuid)
                        .opt("nguid", nguid)
                        .opt("eui64", eui64)
                        .0,
                )
                .build(),
        ),
        Method::NvmfSubsystemRemoveNs { nqn, nsid } => (
            "nvmf_subsystem_remove_ns",
            Params::new().set("nqn", nqn).set("nsid", nsid).build(),
        ),
        Method::NvmfSubsystemAddHost { nqn, host } => (
            "nvmf_subsystem_add_host",
            Params::new().set("nqn", nqn).set("host", host).build(),
        ),
        Method::NvmfSubsystemRemoveHost { nqn, host } => (
            "nvmf_subsystem_remove_host",
            Params::new().set("nqn", nqn).set("host", host).build(),
        ),
        Method::NvmfSubsystemAllowAnyHost {
            nqn,
            enable,
            disable: _,
        } => (
            "nvmf_subsystem_allow_any_host",
            Params::new()
                .set("nqn", nqn)
                .set("allow_any_host", enable)
                .build(),
        ),
        Method::NvmfGetSubsystems { nqn } => {
            ("nvmf_get_subsystems", Params::new().opt("nqn", nqn).build())
        }
        Method::NvmfSubsystemGetControllers { nqn } => {
            ("nvmf_subsystem_get_controllers", with_nqn(nqn))
        }
        Method::NvmfSubsystemGetQpairs { nqn } => ("nvmf_subsystem_get_qpairs", with_nqn(nqn)),
        Method::NvmfGetStats => ("nvmf_get_stats", None),
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

fn with_nqn(nqn: String) -> Option<Value> {
    Params::new().set("nqn", nqn).build()
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

/// The mirror whose job a subcommand asked to follow (`--wait`).
fn job_to_follow(method: &Method) -> Option<String> {
    match method {
        Method::BdevMirrorCreate {
            name, wait: true, ..
        }
        | Method::BdevMirrorResume {
            name, wait: true, ..
        }
        | Method::BdevMirrorVerify {
            name, wait: true, ..
        }
        | Method::BdevMirrorAddLeg {
            name, wait: true, ..
        } => Some(name.clone()),
        _ => None,
    }
}

/// One line of progress: `[#####.....]  45.2 % resync  812.3 MB/s  ETA 3.1 s`.
fn progress_line(job: &Value) -> String {
    let pct = job["percent"].as_f64().unwrap_or(0.0);
    let filled = ((pct / 100.0) * 30.0).round().clamp(0.0, 30.0) as usize;
    format!(
        "[{}{}] {:5.1} % {} {:8.1} MB/s  ETA {:.1} s",
        "#".repeat(filled),
        ".".repeat(30 - filled),
        pct,
        job["kind"].as_str().unwrap_or("job"),
        job["mb_per_sec"].as_f64().unwrap_or(0.0),
        job["eta_seconds"].as_f64().unwrap_or(0.0)
    )
}

/// Polls `bdev_mirror_get` and draws the job's progress on stderr until it ends; fails
/// if the job did not complete.
fn follow_job(client: &mut RpcClient, name: &str) -> Result<(), String> {
    use std::io::Write;
    loop {
        let req = client.build_request("bdev_mirror_get", Some(json!({ "name": name })));
        let resp = client.call_raw(&req).map_err(|e| e.to_string())?;
        let m = resp["result"][0].clone();
        if m.is_null() {
            return Err(format!("mirror {name} is gone"));
        }
        match m.get("job").filter(|j| !j.is_null()) {
            Some(job) => {
                eprint!("\r{}", progress_line(job));
                let _ = std::io::stderr().flush();
            }
            None => {
                let last = &m["last_job"];
                if !last.is_null() {
                    eprintln!("\r{}", progress_line(last));
                }
                return match last["result"].as_str() {
                    Some("done") | None => Ok(()),
                    Some(r) => Err(format!("{} {r}", last["kind"].as_str().unwrap_or("job"))),
                };
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let follow = job_to_follow(&cli.method);
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
    match follow {
        Some(name) => follow_job(&mut client, &name),
        None => Ok(()),
    }
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
    fn raid() {
        assert_eq!(
            ok(&[
                "bdev_raid_create",
                "-n",
                "r5",
                "-r",
                "raid5f",
                "-z",
                "64",
                "-b",
                "M0 M1 M2",
                "-s"
            ])
            .1,
            Some(
                json!({"name": "r5", "raid_level": "raid5f", "strip_size_kb": 64, "base_bdevs": ["M0", "M1", "M2"], "superblock": true})
            )
        );
        assert_eq!(
            ok(&["bdev_raid_get_bdevs"]).1,
            Some(json!({"category": "all"}))
        );
        assert_eq!(
            ok(&["bdev_raid_add_base_bdev", "r5", "M3"]).1,
            Some(json!({"raid_bdev": "r5", "base_bdev": "M3"}))
        );
        assert_eq!(
            ok(&["bdev_raid_set_options", "-b", "100"]).1,
            Some(json!({"process_max_bandwidth_mb_sec": 100}))
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
    fn nvmf_transport() {
        assert_eq!(
            ok(&["nvmf_create_transport", "-t", "TCP"]),
            (
                "nvmf_create_transport".into(),
                Some(json!({"trtype": "TCP"}))
            )
        );
        assert_eq!(
            ok(&[
                "nvmf_create_transport",
                "-t",
                "tcp",
                "-q",
                "64",
                "-m",
                "4",
                "-c",
                "8192",
                "-i",
                "65536",
                "-u",
                "8192",
                "-a",
                "32",
                "-n",
                "1023",
                "-b",
                "16",
                "-o"
            ])
            .1,
            Some(json!({
                "trtype": "tcp", "max_queue_depth": 64, "max_io_qpairs_per_ctrlr": 4,
                "in_capsule_data_size": 8192, "max_io_size": 65536, "io_unit_size": 8192,
                "max_aq_depth": 32, "num_shared_buffers": 1023, "buf_cache_size": 16,
                "c2h_success": false
            }))
        );
        assert_eq!(
            ok(&[
                "nvmf_create_transport",
                "--trtype=TCP",
                "--max-queue-depth=8",
                "--max-io-size=4096"
            ])
            .1,
            Some(json!({"trtype": "TCP", "max_queue_depth": 8, "max_io_size": 4096}))
        );
        assert!(req(&["nvmf_create_transport"]).is_err());
        assert!(req(&["nvmf_create_transport", "-t", "TCP", "-q", "x"]).is_err());
        assert_eq!(
            ok(&["nvmf_get_transports"]),
            ("nvmf_get_transports".into(), None)
        );
        assert_eq!(
            ok(&["nvmf_get_transports", "--trtype", "TCP"]).1,
            Some(json!({"trtype": "TCP"}))
        );
    }

    #[test]
    fn nvmf_subsystems() {
        let nqn = "nqn.2016-06.io.spdk:cnode1";
        assert_eq!(
            ok(&["nvmf_create_subsystem", nqn]),
            ("nvmf_create_subsystem".into(), Some(json!({"nqn": nqn})))
        );
        assert_eq!(
            ok(&[
                "nvmf_create_subsystem",
                nqn,
                "-s",
                "SPDK001",
                "-d",
                "Model X",
                "-a",
                "-m",
                "8"
            ])
            .1,
            Some(json!({
                "nqn": nqn, "serial_number": "SPDK001", "model_number": "Model X",
                "allow_any_host": true, "max_namespaces": 8
            }))
        );
        assert_eq!(
            ok(&["nvmf_delete_subsystem", nqn]),
            ("nvmf_delete_subsystem".into(), Some(json!({"nqn": nqn})))
        );
        assert_eq!(
            ok(&["nvmf_get_subsystems"]),
            ("nvmf_get_subsystems".into(), None)
        );
        assert_eq!(
            ok(&["nvmf_get_subsystems", nqn]).1,
            Some(json!({"nqn": nqn}))
        );
        for m in [
            "nvmf_subsystem_get_controllers",
            "nvmf_subsystem_get_qpairs",
        ] {
            assert_eq!(ok(&[m, nqn]), (m.to_string(), Some(json!({"nqn": nqn}))));
            assert!(req(&[m]).is_err());
        }
        assert_eq!(ok(&["nvmf_get_stats"]), ("nvmf_get_stats".into(), None));
    }

    #[test]
    fn nvmf_listeners() {
        let nqn = "nqn.2016-06.io.spdk:cnode1";
        for m in [
            "nvmf_subsystem_add_listener",
            "nvmf_subsystem_remove_listener",
        ] {
            assert_eq!(
                ok(&[m, nqn, "-t", "tcp", "-a", "127.0.0.1", "-s", "4420"]),
                (
                    m.to_string(),
                    Some(json!({"nqn": nqn, "listen_address": {
                        "trtype": "tcp", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4420"
                    }}))
                )
            );
            assert_eq!(
                ok(&[m, nqn, "-t", "TCP", "-a", "::1", "-s", "4421", "-f", "ipv6"]).1,
                Some(json!({"nqn": nqn, "listen_address": {
                    "trtype": "TCP", "adrfam": "IPv6", "traddr": "::1", "trsvcid": "4421"
                }}))
            );
            assert_eq!(
                ok(&[
                    m,
                    nqn,
                    "--trtype=TCP",
                    "--traddr=10.0.0.1",
                    "--trsvcid=4422",
                    "--adrfam=IPv4"
                ])
                .1,
                Some(json!({"nqn": nqn, "listen_address": {
                    "trtype": "TCP", "adrfam": "IPv4", "traddr": "10.0.0.1", "trsvcid": "4422"
                }}))
            );
            assert!(req(&[m, nqn, "-a", "127.0.0.1", "-s", "4420"]).is_err());
            assert!(req(&[m, "-t", "TCP", "-a", "127.0.0.1", "-s", "4420"]).is_err());
        }
    }

    #[test]
    fn nvmf_namespaces_and_hosts() {
        let nqn = "nqn.2016-06.io.spdk:cnode1";
        assert_eq!(
            ok(&["nvmf_subsystem_add_ns", nqn, "Malloc0"]),
            (
                "nvmf_subsystem_add_ns".into(),
                Some(json!({"nqn": nqn, "namespace": {"bdev_name": "Malloc0"}}))
            )
        );
        assert_eq!(
            ok(&[
                "nvmf_subsystem_add_ns",
                nqn,
                "Malloc1",
                "-n",
                "7",
                "-u",
                "6a1c9e2b-7d3f-4b8a-9c0d-1e2f3a4b5c6d",
                "-g",
                "00112233445566778899AABBCCDDEEFF",
                "-e",
                "0011223344556677"
            ])
            .1,
            Some(json!({"nqn": nqn, "namespace": {
                "bdev_name": "Malloc1", "nsid": 7,
                "uuid": "6a1c9e2b-7d3f-4b8a-9c0d-1e2f3a4b5c6d",
                "nguid": "00112233445566778899AABBCCDDEEFF", "eui64": "0011223344556677"
            }}))
        );
        assert!(req(&["nvmf_subsystem_add_ns", nqn]).is_err());
        assert_eq!(
            ok(&["nvmf_subsystem_remove_ns", nqn, "3"]),
            (
                "nvmf_subsystem_remove_ns".into(),
                Some(json!({"nqn": nqn, "nsid": 3}))
            )
        );
        assert!(req(&["nvmf_subsystem_remove_ns", nqn, "x"]).is_err());
        let host = "nqn.2014-08.org.nvmexpress:uuid:0b7e5d4c-3a29-4f18-9e07-d6c5b4a39281";
        for m in ["nvmf_subsystem_add_host", "nvmf_subsystem_remove_host"] {
            assert_eq!(
                ok(&[m, nqn, host]),
                (m.to_string(), Some(json!({"nqn": nqn, "host": host})))
            );
            assert!(req(&[m, nqn]).is_err());
        }
        assert_eq!(
            ok(&["nvmf_subsystem_allow_any_host", nqn, "-e"]),
            (
                "nvmf_subsystem_allow_any_host".into(),
                Some(json!({"nqn": nqn, "allow_any_host": true}))
            )
        );
        assert_eq!(
            ok(&["nvmf_subsystem_allow_any_host", nqn, "--disable"]).1,
            Some(json!({"nqn": nqn, "allow_any_host": false}))
        );
        assert!(req(&["nvmf_subsystem_allow_any_host", nqn]).is_err());
        assert!(req(&["nvmf_subsystem_allow_any_host", nqn, "-e", "-d"]).is_err());
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
