//! Parameters of the NVMe-oF methods (`nvmf_*`).

use super::{invalid, is_false, parse_uuid, SpdkParams};
use crate::rpc::RpcError;
use serde::{Deserialize, Serialize};
use strata_nvmf::target::subsystem::ListenAddress;
use strata_nvmf::target::TransportOptions;

/// `nvmf_create_transport`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct CreateTransport {
    /// Transport type: TCP.
    #[arg(short = 't', long)]
    pub trtype: String,
    /// Max number of outstanding I/Os per queue.
    #[arg(short = 'q', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queue_depth: Option<u32>,
    /// Max number of I/O queue pairs per controller.
    #[arg(short = 'm', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_io_qpairs_per_ctrlr: Option<u32>,
    /// Max in-capsule data size in bytes.
    #[arg(short = 'c', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_capsule_data_size: Option<u32>,
    /// Max I/O size in bytes.
    #[arg(short = 'i', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_io_size: Option<u32>,
    /// I/O unit size in bytes.
    #[arg(short = 'u', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_unit_size: Option<u32>,
    /// Max admin queue depth.
    #[arg(short = 'a', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_aq_depth: Option<u32>,
    /// Number of pooled data buffers.
    #[arg(short = 'n', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_shared_buffers: Option<u32>,
    /// Per-poll-group buffer cache size.
    #[arg(short = 'b', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buf_cache_size: Option<u32>,
    /// Disable the C2H success optimization (sends c2h_success=false).
    // rpc.py's `-o` turns the optimization off; on is the default of both.
    #[arg(short = 'o', long = "c2h-success", action = clap::ArgAction::SetFalse)]
    #[serde(
        default = "c2h_success_default",
        skip_serializing_if = "is_c2h_success_default"
    )]
    pub c2h_success: bool,
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sock_priority: Option<u32>,
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_timeout_sec: Option<u32>,
    /// strata: fail a write whose data does not arrive within this many ms of its R2T.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_wait_timeout_ms: Option<u32>,
    /// strata: close a connection that has not connected within this many ms.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u32>,
    /// strata: most connections from one host (IP address).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_host: Option<u32>,
    /// strata: most connections on one listener.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_listener: Option<u32>,
    /// strata: most buffers one connection holds for writes awaiting their data.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_r2t_buffers_per_connection: Option<u32>,
    /// strata: the same over all connections of one host (IP address).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_r2t_buffers_per_host: Option<u32>,
    /// strata: on secure-channel listeners, hand the TLS record layer to the kernel after
    /// the handshake where it offers kTLS (default true; false keeps it in user space).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_ktls: Option<bool>,
    /// Send reads of bdevs that lend their memory (malloc) straight from it, with no copy
    /// (SPDK's zcopy; strata's default is true).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zcopy: Option<bool>,
    /// strata: set SUCCESS on a read's last C2HData even when the host kept SQ flow control
    /// on (SPDK's behaviour; the spec allows it only with SQ flow control disabled). Default
    /// false.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c2h_success_always: Option<bool>,
}
impl SpdkParams for CreateTransport {
    const IGNORED: &'static [&'static str] = &[
        "dif_insert_or_strip",
        "ack_timeout",
        "data_wr_pool_size",
        "max_qpairs_per_ctrlr",
        "tgt_name",
        "control_msg_num",
        "disable_command_passthru",
    ];
}

fn c2h_success_default() -> bool {
    TransportOptions::default().c2h_success
}

fn is_c2h_success_default(b: &bool) -> bool {
    *b == c2h_success_default()
}

impl CreateTransport {
    pub fn options(&self) -> Result<TransportOptions, RpcError> {
        let d = TransportOptions::default();
        // Queue sizes are 16-bit in NVMe; SPDK takes them as 32-bit numbers.
        let u16p = |k: &str, v: Option<u32>, def: u16| -> Result<u16, RpcError> {
            match v {
                None => Ok(def),
                Some(v) => {
                    u16::try_from(v).map_err(|_| invalid("nvmf_create_transport", k, "too large"))
                }
            }
        };
        Ok(TransportOptions {
            trtype: self.trtype.to_uppercase(),
            max_queue_depth: u16p("max_queue_depth", self.max_queue_depth, d.max_queue_depth)?,
            max_io_qpairs_per_ctrlr: u16p(
                "max_io_qpairs_per_ctrlr",
                self.max_io_qpairs_per_ctrlr,
                d.max_io_qpairs_per_ctrlr,
            )?,
            in_capsule_data_size: self.in_capsule_data_size.unwrap_or(d.in_capsule_data_size),
            max_io_size: self.max_io_size.unwrap_or(d.max_io_size),
            io_unit_size: self.io_unit_size.unwrap_or(d.io_unit_size),
            max_aq_depth: u16p("max_aq_depth", self.max_aq_depth, d.max_aq_depth)?,
            c2h_success: self.c2h_success,
            num_shared_buffers: self.num_shared_buffers.unwrap_or(d.num_shared_buffers),
            buf_cache_size: self.buf_cache_size.unwrap_or(d.buf_cache_size),
            sock_priority: self.sock_priority.unwrap_or(d.sock_priority),
            abort_timeout_sec: self.abort_timeout_sec.unwrap_or(d.abort_timeout_sec),
            data_wait_timeout_ms: self.data_wait_timeout_ms.unwrap_or(d.data_wait_timeout_ms),
            connect_timeout_ms: self.connect_timeout_ms.unwrap_or(d.connect_timeout_ms),
            max_connections_per_host: self
                .max_connections_per_host
                .unwrap_or(d.max_connections_per_host),
            max_connections_per_listener: self
                .max_connections_per_listener
                .unwrap_or(d.max_connections_per_listener),
            max_r2t_buffers_per_connection: self
                .max_r2t_buffers_per_connection
                .unwrap_or(d.max_r2t_buffers_per_connection),
            max_r2t_buffers_per_host: self
                .max_r2t_buffers_per_host
                .unwrap_or(d.max_r2t_buffers_per_host),
            enable_ktls: self.enable_ktls.unwrap_or(d.enable_ktls),
            zcopy: self.zcopy.unwrap_or(d.zcopy),
            c2h_success_always: self.c2h_success_always.unwrap_or(d.c2h_success_always),
        })
    }
}

/// `nvmf_get_transports`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct GetTransports {
    /// Only this transport type.
    #[arg(short = 't', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trtype: Option<String>,
}
impl SpdkParams for GetTransports {
    const IGNORED: &'static [&'static str] = &["tgt_name"];
}

/// `nvmf_create_subsystem`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct CreateSubsystem {
    /// Subsystem NQN.
    pub nqn: String,
    /// Serial number (≤ 20 ASCII characters).
    #[arg(short = 's', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// Model number (≤ 40 ASCII characters).
    #[arg(short = 'd', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_number: Option<String>,
    /// Allow any host to connect.
    #[arg(short = 'a', long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_any_host: bool,
    /// Max number of namespaces (0: default).
    #[arg(short = 'm', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_namespaces: Option<u32>,
    /// Report ANA (multipath) states to hosts.
    #[arg(short = 'r', long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub ana_reporting: bool,
}
impl SpdkParams for CreateSubsystem {
    const IGNORED: &'static [&'static str] = &[
        "min_cntlid",
        "max_cntlid",
        "tgt_name",
        "max_discard_size_kib",
        "max_write_zeroes_size_kib",
        "passthrough",
        "enable_nssr",
    ];
}

impl CreateSubsystem {
    pub fn serial_number(&self) -> &str {
        self.serial_number
            .as_deref()
            .unwrap_or("00000000000000000000")
    }
    pub fn model_number(&self) -> &str {
        self.model_number.as_deref().unwrap_or("strata Controller")
    }
    pub fn max_namespaces(&self) -> u32 {
        match self.max_namespaces {
            None | Some(0) => 32,
            Some(n) => n,
        }
    }
}

/// Methods naming one subsystem: delete, get_controllers, get_qpairs.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ByNqn {
    pub nqn: String,
}
impl SpdkParams for ByNqn {
    const IGNORED: &'static [&'static str] = &["tgt_name"];
}

/// `nvmf_get_subsystems`: all, or the one named.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct GetSubsystems {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nqn: Option<String>,
}
impl SpdkParams for GetSubsystems {
    const IGNORED: &'static [&'static str] = &["tgt_name"];
}

/// `nvmf_get_stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct GetStats {}
impl SpdkParams for GetStats {
    const IGNORED: &'static [&'static str] = &["tgt_name"];
}

fn ipv4() -> String {
    "IPv4".into()
}

fn port_4420() -> String {
    "4420".into()
}

/// SPDK's spelling of an address family given in any case (`ipv4` → `IPv4`).
fn spdk_adrfam(s: &str) -> Result<String, std::convert::Infallible> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "ipv4" => "IPv4".into(),
        "ipv6" => "IPv6".into(),
        "ib" => "IB".into(),
        "fc" => "FC".into(),
        "intra_host" => "INTRA_HOST".into(),
        _ => s.to_string(),
    })
}

/// The transport address of the listener methods (`listen_address`).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ListenAddressParams {
    /// Transport type: TCP.
    #[arg(short = 't', long)]
    pub trtype: String,
    /// Transport address: an IP address.
    #[arg(short = 'a', long)]
    pub traddr: String,
    /// Transport service ID: a port.
    #[arg(short = 's', long)]
    #[serde(default = "port_4420")]
    pub trsvcid: String,
    /// Address family: ipv4 or ipv6 (sent as IPv4 / IPv6).
    #[arg(short = 'f', long, default_value = "ipv4", value_parser = spdk_adrfam)]
    #[serde(default = "ipv4")]
    pub adrfam: String,
}

impl From<ListenAddressParams> for ListenAddress {
    fn from(a: ListenAddressParams) -> Self {
        ListenAddress {
            trtype: a.trtype.to_uppercase(),
            adrfam: a.adrfam,
            traddr: a.traddr,
            trsvcid: a.trsvcid,
        }
    }
}

/// `nvmf_subsystem_add_listener` and `nvmf_subsystem_remove_listener`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub nqn: String,
    #[command(flatten)]
    pub listen_address: ListenAddressParams,
    /// TLS 1.3 with PSKs on every connection (the port is secure for all its subsystems).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secure_channel: bool,
}
impl SpdkParams for Listener {
    const IGNORED: &'static [&'static str] = &[
        "tgt_name",
        "ana_state",
        "anagrpid",
        "sock_impl",
        "listen_address.trsvcid_range",
    ];
}

/// `nvmf_subsystem_listener_set_ana_state`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ListenerAnaState {
    pub nqn: String,
    #[command(flatten)]
    pub listen_address: ListenAddressParams,
    /// optimized, non_optimized or inaccessible.
    #[arg(short = 'n', long)]
    pub ana_state: String,
    /// ANA group ID (default: every group).
    #[arg(short = 'g', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anagrpid: Option<u32>,
}
impl SpdkParams for ListenerAnaState {
    const IGNORED: &'static [&'static str] = &["tgt_name"];
}

/// The `namespace` of `nvmf_subsystem_add_ns`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct NamespaceParams {
    pub bdev_name: String,
    /// Namespace ID (default: the lowest free one).
    #[arg(short = 'n', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nsid: Option<u32>,
    /// Namespace UUID (default: the bdev's).
    #[arg(short = 'u', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Namespace NGUID (32 hex digits).
    #[arg(short = 'g', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nguid: Option<String>,
    /// Namespace EUI-64 (16 hex digits).
    #[arg(short = 'e', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eui64: Option<String>,
    /// ANA group ID (default: the nsid).
    #[arg(short = 'a', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anagrpid: Option<u32>,
}

/// A namespace to add, checked.
pub struct NewNamespace {
    pub bdev_name: String,
    /// 0: the lowest free one.
    pub nsid: u32,
    pub uuid: Option<uuid::Uuid>,
    pub nguid: Option<[u8; 16]>,
    pub eui64: Option<[u8; 8]>,
    /// 0: the nsid.
    pub anagrpid: u32,
}

fn hex_bytes<const N: usize>(m: &str, key: &str, s: &str) -> Result<[u8; N], RpcError> {
    let clean: String = s.chars().filter(|c| *c != '-').collect();
    let bad = || invalid(m, key, format!("expected {} hex digits", N * 2));
    // ASCII hex only: slicing below is by byte.
    if clean.len() != N * 2 || !clean.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&clean[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// `nvmf_subsystem_add_ns`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct AddNs {
    pub nqn: String,
    #[command(flatten)]
    pub namespace: NamespaceParams,
}
impl SpdkParams for AddNs {
    const IGNORED: &'static [&'static str] = &[
        "tgt_name",
        "no_auto_visible",
        "namespace.ptpl_file",
        "namespace.no_auto_visible",
    ];
}

impl AddNs {
    const METHOD: &'static str = "nvmf_subsystem_add_ns";
    pub fn namespace(self) -> Result<NewNamespace, RpcError> {
        let m = Self::METHOD;
        let ns = self.namespace;
        Ok(NewNamespace {
            nguid: ns
                .nguid
                .map(|s| hex_bytes::<16>(m, "nguid", &s))
                .transpose()?,
            eui64: ns
                .eui64
                .map(|s| hex_bytes::<8>(m, "eui64", &s))
                .transpose()?,
            // A nested parameter: SPDK names its object.
            uuid: parse_uuid("namespace", "uuid", ns.uuid.as_deref())?,
            nsid: ns.nsid.unwrap_or(0),
            anagrpid: match ns.anagrpid {
                Some(0) => return Err(invalid(m, "anagrpid", "ANA group IDs start at 1")),
                g => g.unwrap_or(0),
            },
            bdev_name: ns.bdev_name,
        })
    }
}

/// `nvmf_subsystem_remove_ns`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RemoveNs {
    pub nqn: String,
    pub nsid: u32,
}
impl SpdkParams for RemoveNs {
    const IGNORED: &'static [&'static str] = &["tgt_name"];
}

/// `nvmf_subsystem_add_host` and `nvmf_subsystem_remove_host`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub nqn: String,
    pub host: String,
    /// Keyring key with the host's DH-HMAC-CHAP secret: the host must authenticate.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhchap_key: Option<String>,
    /// Keyring key with the controller's secret (bidirectional authentication).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhchap_ctrlr_key: Option<String>,
    /// Keyring key with the host's TLS PSK (NVMeTLSkey-1): the host connects over TLS only.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psk: Option<String>,
}
impl SpdkParams for Host {
    const IGNORED: &'static [&'static str] = &["tgt_name"];
}

/// `nvmf_subsystem_set_keys`: a host's DH-HMAC-CHAP keys (none: no authentication).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SetKeys {
    pub nqn: String,
    pub host: String,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhchap_key: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhchap_ctrlr_key: Option<String>,
}
impl SpdkParams for SetKeys {
    const IGNORED: &'static [&'static str] = &["tgt_name"];
}

/// `nvmf_set_config`: the DH-HMAC-CHAP digests and DH groups the target may choose.
#[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// sha256, sha384, sha512 (comma separated).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhchap_digests: Option<Vec<String>>,
    /// null, ffdhe2048, ffdhe3072, ffdhe4096, ffdhe6144, ffdhe8192 (comma separated).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhchap_dhgroups: Option<Vec<String>>,
}
impl SpdkParams for SetConfig {
    const IGNORED: &'static [&'static str] = &[
        "tgt_name",
        "acceptor_poll_rate",
        "conn_sched",
        "passthru_identify_ctrlr",
        "poll_groups_mask",
        "discovery_filter",
        "admin_cmd_passthru",
    ];
}

/// `nvmf_subsystem_allow_any_host`: rpc.py says `-e` or `-d`, the method takes a bool.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct AllowAnyHost {
    pub nqn: String,
    /// Allow any host.
    #[arg(
        short = 'e',
        long = "enable",
        conflicts_with = "disable",
        required_unless_present = "disable"
    )]
    pub allow_any_host: bool,
    /// Only allow the hosts added with nvmf_subsystem_add_host.
    #[arg(short = 'd', long)]
    #[serde(skip)]
    pub disable: bool,
}
impl SpdkParams for AllowAnyHost {
    const IGNORED: &'static [&'static str] = &["tgt_name"];
}
