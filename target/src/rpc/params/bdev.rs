//! Parameters of the bdev methods (malloc, null, uring/aio, error, delay, RAID, queries).

use super::{
    check_block_size, invalid, is_false, parse_uuid, yes, BdevNames, CliParams, SpdkParams,
};
use crate::rpc::RpcError;
use crate::rpc_client::{size_mib_to_num_blocks, ArgError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strata_bdev::modules::raid::{self, geometry::Level};
use strata_bdev::modules::{delay, error, malloc, null, uring};
use strata_bdev::registry;

/// SPDK parameters of the malloc and null create methods that strata accepts and ignores.
const CREATE_IGNORED: &[&str] = &[
    "physical_block_size",
    "optimal_io_boundary",
    "md_size",
    "md_interleave",
    "dif_type",
    "dif_is_head_of_md",
    "dif_pi_format",
    "numa_id",
];

fn positive(method: &str, key: &str, v: u64) -> Result<u64, RpcError> {
    match v {
        0 => Err(invalid(method, key, "must be > 0")),
        v => Ok(v),
    }
}

/// `bdev_malloc_create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MallocCreate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    // Declaration order is the order missing parameters are reported in.
    pub block_size: u32,
    pub num_blocks: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}
impl SpdkParams for MallocCreate {
    const IGNORED: &'static [&'static str] = CREATE_IGNORED;
}

impl MallocCreate {
    const METHOD: &'static str = "bdev_malloc_create";
    pub fn options(self) -> Result<malloc::MallocOptions, RpcError> {
        let block_size = check_block_size(Self::METHOD, "block_size", self.block_size)?;
        let num_blocks = positive(Self::METHOD, "num_blocks", self.num_blocks)?;
        Ok(malloc::MallocOptions {
            uuid: parse_uuid(Self::METHOD, "uuid", self.uuid.as_deref())?,
            name: self.name.unwrap_or_else(|| registry::unused_name("Malloc")),
            num_blocks,
            block_size,
        })
    }
}

/// rpc.py's `bdev_malloc_create [-b NAME] [-u UUID] TOTAL_SIZE_MB BLOCK_SIZE`: the size is
/// given in MiB, the method takes blocks.
#[derive(Debug, Clone, clap::Args)]
pub struct MallocCreateArgs {
    /// Bdev name (default: MallocN).
    #[arg(short = 'b', long)]
    pub name: Option<String>,
    /// UUID of the bdev.
    #[arg(short = 'u', long)]
    pub uuid: Option<String>,
    /// Size in MiB (may be fractional).
    #[arg(value_name = "TOTAL_SIZE_MB")]
    pub total_size: f64,
    /// Block size in bytes.
    pub block_size: u32,
}

impl MallocCreateArgs {
    pub fn params(&self) -> Result<MallocCreate, ArgError> {
        Ok(MallocCreate {
            name: self.name.clone(),
            num_blocks: size_mib_to_num_blocks(self.total_size, self.block_size)?,
            block_size: self.block_size,
            uuid: self.uuid.clone(),
        })
    }
}

impl CliParams for MallocCreateArgs {
    fn to_params(&self) -> Result<Option<Value>, ArgError> {
        self.params()?.to_params()
    }
}

/// `bdev_null_create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullCreate {
    pub name: String,
    pub block_size: u32,
    pub num_blocks: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}
impl SpdkParams for NullCreate {
    const IGNORED: &'static [&'static str] = CREATE_IGNORED;
}

impl NullCreate {
    const METHOD: &'static str = "bdev_null_create";
    pub fn options(self) -> Result<null::NullOptions, RpcError> {
        let block_size = check_block_size(Self::METHOD, "block_size", self.block_size)?;
        let num_blocks = positive(Self::METHOD, "num_blocks", self.num_blocks)?;
        Ok(null::NullOptions {
            uuid: parse_uuid(Self::METHOD, "uuid", self.uuid.as_deref())?,
            name: self.name,
            num_blocks,
            block_size,
        })
    }
}

/// rpc.py's `bdev_null_create NAME TOTAL_SIZE_MB BLOCK_SIZE [-u UUID]`.
#[derive(Debug, Clone, clap::Args)]
pub struct NullCreateArgs {
    pub name: String,
    /// Size in MiB (may be fractional).
    #[arg(value_name = "TOTAL_SIZE_MB")]
    pub total_size: f64,
    /// Block size in bytes.
    pub block_size: u32,
    /// UUID of the bdev.
    #[arg(short = 'u', long)]
    pub uuid: Option<String>,
}

impl NullCreateArgs {
    pub fn params(&self) -> Result<NullCreate, ArgError> {
        Ok(NullCreate {
            name: self.name.clone(),
            num_blocks: size_mib_to_num_blocks(self.total_size, self.block_size)?,
            block_size: self.block_size,
            uuid: self.uuid.clone(),
        })
    }
}

impl CliParams for NullCreateArgs {
    fn to_params(&self) -> Result<Option<Value>, ArgError> {
        self.params()?.to_params()
    }
}

/// `bdev_uring_create` and `bdev_aio_create` (both served by the uring engine).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct FileCreate {
    // rpc.py's order is FILENAME NAME; SPDK reports a missing name first.
    #[arg(index = 2)]
    pub name: String,
    #[arg(index = 1)]
    pub filename: String,
    /// Block size in bytes (default: detected).
    #[arg(index = 3)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}
impl SpdkParams for FileCreate {
    const IGNORED: &'static [&'static str] = &["readonly", "fallocate"];
}

impl FileCreate {
    /// `module`: "uring" or "aio", the module the bdev reports.
    pub fn options(
        self,
        method: &str,
        module: &'static str,
    ) -> Result<uring::UringOptions, RpcError> {
        Ok(uring::UringOptions {
            block_size: self
                .block_size
                .map(|bs| check_block_size(method, "block_size", bs))
                .transpose()?,
            uuid: parse_uuid(method, "uuid", self.uuid.as_deref())?,
            name: self.name,
            filename: self.filename,
            module,
        })
    }
}

/// `bdev_error_create`: an error-injection bdev EE_<BASE_NAME> on top of BASE_NAME.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ErrorCreate {
    pub base_name: String,
    /// UUID of the bdev.
    #[arg(short = 'u', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}
impl SpdkParams for ErrorCreate {}

impl ErrorCreate {
    pub fn uuid(&self) -> Result<Option<uuid::Uuid>, RpcError> {
        parse_uuid("bdev_error_create", "uuid", self.uuid.as_deref())
    }
}

/// `bdev_error_inject_error`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ErrorInject {
    pub name: String,
    /// read, write, unmap, flush, write_zeroes, xor_write, checksum, all or clear.
    pub io_type: String,
    /// failure, pending, corrupt_data or nomem.
    pub error_type: String,
    /// Number of I/Os to fail (server default: 1).
    #[arg(short = 'n', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num: Option<u64>,
    /// Queue depth at which to start injecting.
    #[arg(short = 'q', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u64>,
    /// Byte offset to corrupt (corrupt_data).
    #[arg(short = 'o', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupt_offset: Option<u64>,
    /// Value XORed into the corrupted byte (corrupt_data).
    #[arg(short = 'u', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupt_value: Option<u64>,
}
impl SpdkParams for ErrorInject {}

/// An injection, checked.
pub struct Injection {
    pub target: error::Target,
    pub kind: error::ErrorKind,
    pub num: u64,
    pub corrupt_offset: u64,
    pub corrupt_value: u8,
}

impl ErrorInject {
    const METHOD: &'static str = "bdev_error_inject_error";
    pub fn injection(&self) -> Result<Injection, RpcError> {
        let m = Self::METHOD;
        let target = error::Target::from_name(&self.io_type).ok_or_else(|| {
            invalid(m, "io_type", format!("{} (read, write, unmap, flush, write_zeroes, reset, xor_write, checksum, all, clear)", self.io_type))
        })?;
        let kind = error::ErrorKind::from_name(&self.error_type).ok_or_else(|| {
            invalid(
                m,
                "error_type",
                format!(
                    "{} (failure, pending, corrupt_data, nomem)",
                    self.error_type
                ),
            )
        })?;
        let value = u8::try_from(self.corrupt_value.unwrap_or(0))
            .map_err(|_| invalid(m, "corrupt_value", "must be 0..255"))?;
        let kind_needs_value =
            kind == error::ErrorKind::CorruptData && target != error::Target::Clear;
        if kind_needs_value && value == 0 {
            return Err(invalid(
                m,
                "corrupt_value",
                "corrupt_data needs a non-zero value",
            ));
        }
        Ok(Injection {
            target,
            kind,
            num: self.num.unwrap_or(1),
            corrupt_offset: self.corrupt_offset.unwrap_or(0),
            corrupt_value: value,
        })
    }
}

/// `bdev_delay_create`: a delay bdev on top of another bdev (latencies in µs).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct DelayCreate {
    #[arg(short = 'b', long)]
    pub base_bdev_name: String,
    #[arg(short = 'd', long)]
    pub name: String,
    #[arg(short = 'r', long)]
    pub avg_read_latency: u64,
    #[arg(short = 't', long = "nine-nine-read-latency")]
    pub p99_read_latency: u64,
    #[arg(short = 'w', long)]
    pub avg_write_latency: u64,
    #[arg(short = 'n', long = "nine-nine-write-latency")]
    pub p99_write_latency: u64,
    #[arg(short = 'u', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}
impl SpdkParams for DelayCreate {}

impl DelayCreate {
    pub fn options(self) -> Result<delay::DelayOptions, RpcError> {
        Ok(delay::DelayOptions {
            uuid: parse_uuid("bdev_delay_create", "uuid", self.uuid.as_deref())?,
            name: self.name,
            base_bdev_name: self.base_bdev_name,
            latencies_us: [
                self.avg_read_latency,
                self.p99_read_latency,
                self.avg_write_latency,
                self.p99_write_latency,
            ],
        })
    }
}

/// `bdev_delay_update_latency`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct DelayUpdateLatency {
    #[arg(value_name = "NAME")]
    pub delay_bdev_name: String,
    /// avg_read, p99_read, avg_write or p99_write.
    pub latency_type: String,
    pub latency_us: u64,
}
impl SpdkParams for DelayUpdateLatency {}

impl DelayUpdateLatency {
    pub fn kind(&self) -> Result<delay::LatencyKind, RpcError> {
        delay::LatencyKind::from_name(&self.latency_type).ok_or_else(|| {
            invalid(
                "bdev_delay_update_latency",
                "latency_type",
                format!(
                    "{} (avg_read, p99_read, avg_write, p99_write)",
                    self.latency_type
                ),
            )
        })
    }
}

/// `bdev_get_bdevs`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct GetBdevs {
    #[arg(short = 'b', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Milliseconds to wait for the bdev to appear.
    #[arg(short = 't', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}
impl SpdkParams for GetBdevs {}

/// `bdev_set_options`: strata acts on `bdev_auto_examine`; SPDK's pool and cache sizes
/// have no counterpart (strata's pools are sized by the iobuf options).
#[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct BdevSetOptions {
    /// Examine bdevs as they appear (false: only on `bdev_examine`).
    #[arg(long = "disable-auto-examine", action = clap::ArgAction::SetFalse)]
    #[serde(default = "yes")]
    pub bdev_auto_examine: bool,
}
impl SpdkParams for BdevSetOptions {
    const IGNORED: &'static [&'static str] = &[
        "bdev_io_pool_size",
        "bdev_io_cache_size",
        "iobuf_small_cache_size",
        "iobuf_large_cache_size",
    ];
}

/// `bdev_get_iostat`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct GetIostat {
    #[arg(short = 'b', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
impl SpdkParams for GetIostat {
    const IGNORED: &'static [&'static str] = &["per_channel"];
}

/// `bdev_raid_create`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RaidCreate {
    #[arg(short = 'n', long)]
    pub name: String,
    /// raid0, raid1, raid5 (raid5f), raid6 or concat.
    #[arg(short = 'r', long)]
    pub raid_level: String,
    #[arg(short = 'z', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip_size_kb: Option<u64>,
    /// Base bdev names, space-separated in one argument.
    #[arg(short = 'b', long)]
    pub base_bdevs: BdevNames,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Write superblocks (re-assembly after restart, write-intent bitmap).
    #[arg(short = 's', long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub superblock: bool,
}
impl SpdkParams for RaidCreate {
    const IGNORED: &'static [&'static str] = &["strip_size"];
}

impl RaidCreate {
    const METHOD: &'static str = "bdev_raid_create";
    pub fn options(self) -> Result<raid::CreateOptions, RpcError> {
        let level = Level::from_name(&self.raid_level).ok_or_else(|| {
            invalid(
                Self::METHOD,
                "raid_level",
                format!(
                    "{} (raid0, raid1, raid5, raid5f, raid6, concat)",
                    self.raid_level
                ),
            )
        })?;
        Ok(raid::CreateOptions {
            uuid: parse_uuid(Self::METHOD, "uuid", self.uuid.as_deref())?,
            name: self.name,
            level,
            strip_size_kb: self.strip_size_kb.unwrap_or(0),
            base_bdevs: self.base_bdevs.0,
            superblock: self.superblock,
        })
    }
}

fn all() -> String {
    "all".into()
}

/// `bdev_raid_get_bdevs`: all, online, configuring or offline.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RaidGetBdevs {
    #[arg(default_value = "all")]
    #[serde(default = "all")]
    pub category: String,
}
impl SpdkParams for RaidGetBdevs {}

/// `bdev_raid_add_base_bdev`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RaidAddBaseBdev {
    pub raid_bdev: String,
    pub base_bdev: String,
}
impl SpdkParams for RaidAddBaseBdev {}

/// `bdev_raid_set_options`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RaidSetOptions {
    #[arg(short = 'w', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_window_size_kb: Option<u64>,
    #[arg(short = 'b', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_max_bandwidth_mb_sec: Option<u64>,
}
impl SpdkParams for RaidSetOptions {}

impl RaidSetOptions {
    /// The module's options with these changes applied.
    pub fn apply(&self, mut o: raid::RaidOptions) -> Result<raid::RaidOptions, RpcError> {
        if let Some(w) = self.process_window_size_kb {
            if w == 0 {
                return Err(invalid(
                    "bdev_raid_set_options",
                    "process_window_size_kb",
                    "must be > 0",
                ));
            }
            o.process_window_size_kb = w;
        }
        if let Some(b) = self.process_max_bandwidth_mb_sec {
            o.process_max_bandwidth_mb_sec = b;
        }
        Ok(o)
    }
}
