//! Parameters of the remote parity methods (`bdev_parity_*`). The `wait` fields are
//! `strata-rpc`'s own (follow the job the method starts): never sent, refused by the server.

use super::{invalid, is_false, parse_uuid, SpdkParams};
use crate::rpc::RpcError;
use serde::{Deserialize, Serialize};
use strata_bdev::modules::parity::superblock::Kind;
use strata_bdev::modules::parity::{MemberMode, MemberOptions, ParityOptions};
use uuid::Uuid;

fn group(method: &str, s: &str) -> Result<Uuid, RpcError> {
    parse_uuid(method, "group_uuid", Some(s))?
        .ok_or_else(|| invalid(method, "group_uuid", "missing"))
}

/// `bdev_parity_create`: the P or Q parity volume of a group, on a parity node.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ParityCreate {
    #[arg(short = 'n', long)]
    pub name: String,
    #[arg(short = 'b', long)]
    pub base_bdev: String,
    #[arg(short = 'g', long)]
    pub group_uuid: String,
    /// p or q.
    #[arg(short = 'r', long)]
    pub role: String,
}
impl SpdkParams for ParityCreate {}

impl ParityCreate {
    pub fn options(&self) -> Result<ParityOptions, RpcError> {
        let m = "bdev_parity_create";
        let role = match self.role.as_str() {
            "p" => Kind::P,
            "q" => Kind::Q,
            r => return Err(invalid(m, "role", format!("{r} (p, q)"))),
        };
        Ok(ParityOptions {
            name: self.name.clone(),
            base_bdev: self.base_bdev.clone(),
            group_uuid: group(m, &self.group_uuid)?,
            role,
        })
    }
}

/// `bdev_parity_add_member`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ParityAddMember {
    /// The parity volume.
    pub name: String,
    /// The data member's index in the group.
    #[arg(short = 'i', long)]
    pub index: u32,
    /// The bdev the parity node reaches the member through.
    #[arg(short = 'b', long)]
    pub bdev: String,
}
impl SpdkParams for ParityAddMember {}

/// `bdev_parity_remove_member`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ParityRemoveMember {
    pub name: String,
    #[arg(short = 'i', long)]
    pub index: u32,
}
impl SpdkParams for ParityRemoveMember {}

/// `bdev_parity_source_create`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ParitySourceCreate {
    /// The parity volume.
    pub name: String,
    /// The lost member's index.
    #[arg(short = 'i', long)]
    pub index: u32,
    /// The source's name (default <parity>_src<index>).
    #[arg(short = 's', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    /// A second lost member (P and Q together rebuild both).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub also_lost: Option<u32>,
    /// With also_lost: the bdev of the group's other parity volume.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partner: Option<String>,
}
impl SpdkParams for ParitySourceCreate {}

/// `bdev_parity_verify`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ParityVerify {
    pub name: String,
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub repair: bool,
    #[arg(short = 'b', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_mb_sec: Option<u64>,
    /// Show the job's progress until it ends.
    #[arg(long)]
    #[serde(skip)]
    pub wait: bool,
}
impl SpdkParams for ParityVerify {}

/// `bdev_parity_member_create`: a data member on a data node.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ParityMemberCreate {
    #[arg(short = 'n', long)]
    pub name: String,
    #[arg(short = 'b', long)]
    pub base_bdev: String,
    #[arg(short = 'g', long)]
    pub group_uuid: String,
    #[arg(short = 'i', long)]
    pub index: u32,
    /// The P parity volume (usually a remote bdev).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_bdev: Option<String>,
    /// P's rebuild source of this member (repair, rebuild).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_source: Option<String>,
    /// The Q parity volume.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q_bdev: Option<String>,
    /// Q's rebuild source of this member.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q_source: Option<String>,
    /// fold (the base's data joins the parity), rebuild (an empty replacement), clean
    /// (data and parity known to agree, e.g. both zero).
    #[arg(short = 'm', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Intent bitmap region size (KiB, power of two, 128 to 65536).
    #[arg(short = 'r', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_size_kb: Option<u64>,
    /// Rate limit of the fold and the rebuild (MB/s; 0 or absent: none).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_mb_sec: Option<u64>,
    /// Show the fold's or rebuild's progress until it ends.
    #[arg(long)]
    #[serde(skip)]
    pub wait: bool,
}
impl SpdkParams for ParityMemberCreate {}

impl ParityMemberCreate {
    pub fn options(&self) -> Result<MemberOptions, RpcError> {
        let m = "bdev_parity_member_create";
        let mode = match &self.mode {
            None => MemberMode::Fold,
            Some(v) => MemberMode::from_name(v)
                .ok_or_else(|| invalid(m, "mode", format!("{v} (fold, rebuild, clean)")))?,
        };
        Ok(MemberOptions {
            name: self.name.clone(),
            base_bdev: self.base_bdev.clone(),
            group_uuid: group(m, &self.group_uuid)?,
            index: self.index,
            p_bdev: self.p_bdev.clone(),
            p_source: self.p_source.clone(),
            q_bdev: self.q_bdev.clone(),
            q_source: self.q_source.clone(),
            mode,
            region_size_kb: self.region_size_kb.unwrap_or(1024),
            max_bandwidth_mb_sec: self.max_bandwidth_mb_sec.unwrap_or(0),
        })
    }
}

/// `bdev_parity_get`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ParityGet {
    #[arg(short = 'n', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
impl SpdkParams for ParityGet {}

/// `bdev_parity_member_repair`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ParityMemberRepair {
    pub name: String,
    /// Show the job's progress until it ends.
    #[arg(long)]
    #[serde(skip)]
    pub wait: bool,
}
impl SpdkParams for ParityMemberRepair {}
