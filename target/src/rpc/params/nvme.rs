//! Parameters of the remote-bdev methods (`bdev_nvme_*`), with SPDK's names and defaults so
//! that `rpc.py` and SPDK-written configuration files work unchanged.

use super::{invalid, is_false, SpdkParams};
use crate::rpc::RpcError;
use serde::{Deserialize, Serialize};
use strata_nvmf::remote::{AttachOptions, NvmeOptions};

/// `bdev_nvme_attach_controller`: connect to a remote NVMe/TCP subsystem; one bdev per
/// namespace (`<name>n<nsid>`).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct NvmeAttach {
    /// Name of the controller; its bdevs are NAMEn1, NAMEn2, ...
    #[arg(short = 'b', long)]
    pub name: String,
    /// Transport: TCP, or PCIe (a local controller bound to vfio-pci; -a is its PCI address).
    #[arg(short = 't', long)]
    pub trtype: String,
    /// Address of the remote target.
    #[arg(short = 'a', long)]
    pub traddr: String,
    /// IPv4 or IPv6.
    #[arg(short = 'f', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adrfam: Option<String>,
    /// Port (default 4420).
    #[arg(short = 's', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trsvcid: Option<String>,
    /// Subsystem NQN (required for TCP).
    #[arg(short = 'n', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnqn: Option<String>,
    #[arg(short = 'q', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostnqn: Option<String>,
    /// Local address to connect from.
    #[arg(short = 'i', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostaddr: Option<String>,
    /// Header digest.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub hdgst: bool,
    /// Data digest.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub ddgst: bool,
    /// Seconds to keep reconnecting before the controller is deleted (-1: forever).
    #[arg(short = 'l', long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctrlr_loss_timeout_sec: Option<i64>,
    /// Seconds between reconnect attempts.
    #[arg(short = 'o', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_delay_sec: Option<u64>,
    /// Seconds after a path loss at which I/O fails instead of waiting.
    #[arg(short = 'u', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_io_fail_timeout_sec: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_io_queues: Option<u32>,
    /// Only one path per controller: "disable" or "failover" (one path, so the same).
    #[arg(short = 'x', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multipath: Option<String>,
    /// End-to-end protection checks (no protection information here: false only).
    #[arg(short = 'r', long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub prchk_reftag: bool,
    #[arg(short = 'g', long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub prchk_guard: bool,
    /// Keyring key with this host's DH-HMAC-CHAP secret.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhchap_key: Option<String>,
    /// Keyring key with the controller's secret (it must prove itself too).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhchap_ctrlr_key: Option<String>,
    /// Keyring key with the TLS PSK: the controller is reached over TLS 1.3.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psk: Option<String>,
}
impl SpdkParams for NvmeAttach {
    // Settings SPDK writes that have no effect on one TCP path without PI.
    const IGNORED: &'static [&'static str] = &[
        "priority",
        "hostsvcid",
        "fabrics_connect_timeout_us",
        "max_bdevs",
        "allow_unrecognized_csi",
    ];
}

impl NvmeAttach {
    const METHOD: &'static str = "bdev_nvme_attach_controller";

    /// For `-t PCIe`: the controller name, its PCI address and the I/O queue count; None
    /// for other transports. Fabrics-only parameters are refused with PCIe.
    pub fn pcie(&self) -> Result<Option<(String, String, Option<u32>)>, RpcError> {
        let m = Self::METHOD;
        if !self.trtype.eq_ignore_ascii_case("pcie") {
            return Ok(None);
        }
        let fabrics_only = [
            ("subnqn", self.subnqn.is_some()),
            ("trsvcid", self.trsvcid.is_some()),
            ("hostnqn", self.hostnqn.is_some()),
            ("hostaddr", self.hostaddr.is_some()),
            ("hdgst", self.hdgst),
            ("ddgst", self.ddgst),
            ("dhchap_key", self.dhchap_key.is_some()),
            ("dhchap_ctrlr_key", self.dhchap_ctrlr_key.is_some()),
            ("psk", self.psk.is_some()),
            ("prchk_reftag", self.prchk_reftag || self.prchk_guard),
        ];
        if let Some((k, _)) = fabrics_only.iter().find(|(_, set)| *set) {
            return Err(invalid(m, k, "not used with trtype PCIe"));
        }
        if self.name.is_empty() {
            return Err(invalid(m, "name", "empty"));
        }
        if let Some(0) = self.num_io_queues {
            return Err(invalid(m, "num_io_queues", "must be at least 1"));
        }
        Ok(Some((
            self.name.clone(),
            self.traddr.clone(),
            self.num_io_queues,
        )))
    }
    pub fn options(self) -> Result<AttachOptions, RpcError> {
        let m = Self::METHOD;
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(invalid(
                m,
                "trtype",
                format!("{} (TCP or PCIe)", self.trtype),
            ));
        }
        let Some(subnqn) = self.subnqn else {
            return Err(invalid(m, "subnqn", "required for TCP"));
        };
        if let Some(mp) = &self.multipath {
            if !matches!(mp.as_str(), "disable" | "failover") {
                return Err(invalid(
                    m,
                    "multipath",
                    format!("{mp} (disable or failover)"),
                ));
            }
        }
        if self.prchk_reftag || self.prchk_guard {
            return Err(invalid(
                m,
                "prchk_reftag",
                "no protection information on strata bdevs",
            ));
        }
        let trsvcid = self.trsvcid.unwrap_or_else(|| "4420".into());
        let mut o = AttachOptions::new(&self.name, &self.traddr, &trsvcid, &subnqn);
        if let Some(a) = self.adrfam {
            o.adrfam = a;
        }
        o.hostnqn = self.hostnqn;
        o.hostaddr = self.hostaddr;
        o.hdgst = self.hdgst;
        o.ddgst = self.ddgst;
        // SPDK's defaults for the three timers come from bdev_nvme_set_options (all 0 here).
        o.ctrlr_loss_timeout_sec = self.ctrlr_loss_timeout_sec.unwrap_or(0);
        o.reconnect_delay_sec = self.reconnect_delay_sec.unwrap_or(0);
        o.fast_io_fail_timeout_sec = self.fast_io_fail_timeout_sec.unwrap_or(0);
        if let Some(n) = self.num_io_queues {
            o.num_io_queues = n;
        }
        o.dhchap_key_names = (self.dhchap_key, self.dhchap_ctrlr_key);
        o.psk_key_name = self.psk;
        Ok(o)
    }
}

/// `bdev_nvme_detach_controller`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct NvmeDetach {
    pub name: String,
}
impl SpdkParams for NvmeDetach {
    // Path selectors: a controller here has one path, so they name it or nothing.
    const IGNORED: &'static [&'static str] = &[
        "trtype",
        "traddr",
        "adrfam",
        "trsvcid",
        "subnqn",
        "hostaddr",
        "hostsvcid",
    ];
}

/// `bdev_nvme_get_controllers`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct NvmeGetControllers {
    #[arg(short = 'n', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
impl SpdkParams for NvmeGetControllers {}

/// `bdev_nvme_reset_controller`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct NvmeReset {
    pub name: String,
}
impl SpdkParams for NvmeReset {
    const IGNORED: &'static [&'static str] = &["cntlid"];
}

/// `bdev_nvme_set_options` (before any controller is attached).
#[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct NvmeSetOptions {
    /// A command outstanding longer than this resets the controller (0: no limit).
    #[arg(short = 't', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_us: Option<u64>,
    #[arg(short = 'r', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport_retry_count: Option<u32>,
    /// Retries of I/O failed with a retryable status (-1: forever).
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bdev_retry_count: Option<i32>,
    #[arg(short = 'k', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive_timeout_ms: Option<u32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_queue_requests: Option<u16>,
    /// SPDK's action on a timeout (none, reset, abort): strata always resets the
    /// controller when timeout_us is set.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_on_timeout: Option<String>,
}
impl SpdkParams for NvmeSetOptions {
    // SPDK settings for PCIe polling, RDMA, arbitration and statistics: no TCP effect here.
    const IGNORED: &'static [&'static str] = &[
        "timeout_admin_us",
        "retry_count",
        "arbitration_burst",
        "low_priority_weight",
        "medium_priority_weight",
        "high_priority_weight",
        "nvme_adminq_poll_period_us",
        "nvme_ioq_poll_period_us",
        "delay_cmd_submit",
        "transport_ack_timeout",
        "ctrlr_loss_timeout_sec",
        "reconnect_delay_sec",
        "fast_io_fail_timeout_sec",
        "disable_auto_failback",
        "generate_uuids",
        "transport_tos",
        "nvme_error_stat",
        "rdma_srq_size",
        "io_path_stat",
        "allow_accel_sequence",
        "rdma_max_cq_size",
        "rdma_cm_event_timeout_ms",
        "dhchap_digests",
        "dhchap_dhgroups",
        "rdma_umr_per_io",
        "tcp_connect_timeout_ms",
        "enable_flush",
    ];
}

impl NvmeSetOptions {
    const METHOD: &'static str = "bdev_nvme_set_options";
    pub fn options(self) -> Result<NvmeOptions, RpcError> {
        let m = Self::METHOD;
        let mut o = strata_nvmf::remote::options();
        if let Some(a) = &self.action_on_timeout {
            if !matches!(a.as_str(), "none" | "reset" | "abort") {
                return Err(invalid(
                    m,
                    "action_on_timeout",
                    format!("{a} (none, reset, abort)"),
                ));
            }
        }
        if let Some(t) = self.timeout_us {
            o.timeout_us = t;
        }
        if let Some(t) = self.transport_retry_count {
            o.transport_retry_count = t;
        }
        if let Some(t) = self.bdev_retry_count {
            if t < -1 {
                return Err(invalid(
                    m,
                    "bdev_retry_count",
                    format!("{t} (-1 = forever, or >= 0)"),
                ));
            }
            o.bdev_retry_count = t;
        }
        if let Some(k) = self.keep_alive_timeout_ms {
            o.keep_alive_timeout_ms = k;
        }
        if let Some(q) = self.io_queue_requests {
            if q < 2 {
                return Err(invalid(m, "io_queue_requests", "at least 2"));
            }
            o.io_queue_requests = q;
        }
        Ok(o)
    }
}
