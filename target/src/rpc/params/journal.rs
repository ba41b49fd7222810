//! Parameters of the dual-redundancy methods (`bdev_journal_*`): protected volume groups
//! (a mirrored journal and a backup repository) and the protected volumes in them. The
//! `wait` fields are `strata-rpc`'s own (follow the job the method starts): never sent,
//! refused by the server.

use super::{invalid, is_true, yes, BdevNames, SpdkParams};
use crate::rpc::RpcError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use strata_bdev::modules::journal::catalog::DrainPolicy;
use strata_bdev::modules::journal::rebuild::NewBase;
use strata_bdev::modules::journal::GroupOptions;

/// A JSON object given on the command line (`--attributes '{"owner": "db01"}'`).
fn json_object(s: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    Ok(v)
}

fn two_legs(m: &str, legs: &BdevNames) -> Result<[String; 2], RpcError> {
    match legs.0.as_slice() {
        [a, b] => Ok([a.clone(), b.clone()]),
        l => Err(invalid(
            m,
            "journal_bdevs",
            format!(
                "{} names: the journal is mirrored on exactly two bdevs",
                l.len()
            ),
        )),
    }
}

/// Attributes: an object of strings (`nulls`: a null removes the attribute).
fn attributes(
    m: &str,
    v: Option<&Value>,
    nulls: bool,
) -> Result<BTreeMap<String, Option<String>>, RpcError> {
    let mut out = BTreeMap::new();
    let Some(v) = v else { return Ok(out) };
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(m, "attributes", "expected an object of strings"))?;
    for (k, x) in obj {
        match x {
            Value::String(s) => {
                out.insert(k.clone(), Some(s.clone()));
            }
            Value::Null if nulls => {
                out.insert(k.clone(), None);
            }
            _ => {
                return Err(invalid(
                    m,
                    "attributes",
                    format!(
                        "'{k}': values are strings{}",
                        if nulls { " (or null to remove)" } else { "" }
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// `bdev_journal_group_create`: a protected volume group on two journal bdevs (formatted)
/// with a backup repository.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct JournalGroupCreate {
    #[arg(short = 'n', long)]
    pub name: String,
    /// The two journal bdevs, space-separated in one argument.
    #[arg(short = 'j', long)]
    pub journal_bdevs: BdevNames,
    /// A directory, or bdev:NAME.
    #[arg(short = 'r', long)]
    pub repository: String,
    /// Journal fill (percent) that starts a drain (0: never by fill; default 50).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_fill_percent: Option<u32>,
    /// Age (seconds) of the oldest undrained record that starts a drain (0: never;
    /// default 300).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_age_sec: Option<u64>,
    /// Backup chunk size (KiB, power of two, default 1024).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_kb: Option<u64>,
    /// Rate limit of drains and rebuilds (MB/s, 0: none).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_mb_sec: Option<u32>,
    /// Use only a repository that exists.
    #[arg(long = "no-create-repository", action = clap::ArgAction::SetFalse)]
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub create_repository: bool,
}
impl SpdkParams for JournalGroupCreate {}

impl JournalGroupCreate {
    pub fn options(&self) -> Result<GroupOptions, RpcError> {
        let m = "bdev_journal_group_create";
        let d = DrainPolicy::default();
        let chunk_kb = self.chunk_kb.unwrap_or(d.chunk_size / 1024);
        if !chunk_kb.is_power_of_two() || !(4..=65536).contains(&chunk_kb) {
            return Err(invalid(m, "chunk_kb", "a power of two from 4 to 65536"));
        }
        if self.drain_fill_percent.is_some_and(|f| f > 100) {
            return Err(invalid(m, "drain_fill_percent", "0 to 100"));
        }
        Ok(GroupOptions {
            name: self.name.clone(),
            journal_bdevs: two_legs(m, &self.journal_bdevs)?,
            repository: self.repository.clone(),
            drain: DrainPolicy {
                fill_percent: self.drain_fill_percent.unwrap_or(d.fill_percent),
                max_age_secs: self.drain_age_sec.unwrap_or(d.max_age_secs),
                chunk_size: chunk_kb * 1024,
                max_bandwidth_mb_sec: self.max_bandwidth_mb_sec.unwrap_or(0),
            },
            create_repository: self.create_repository,
        })
    }
}

/// `bdev_journal_group_get`: groups with their journal (fill, oldest undrained record),
/// volumes (state, delta size, last backup, layout, attributes), drain and rebuild progress.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct JournalGroupGet {
    #[arg(short = 'n', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
impl SpdkParams for JournalGroupGet {}

/// `bdev_journal_group_drain`: copy every volume's undrained changes to the repository now
/// and trim the journal.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct JournalGroupDrain {
    pub name: String,
    /// Show the drain's progress until it ends.
    #[arg(long)]
    #[serde(skip)]
    pub wait: bool,
}
impl SpdkParams for JournalGroupDrain {}

/// `bdev_journal_group_set_options`: the drain conditions.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct JournalGroupSetOptions {
    pub name: String,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_fill_percent: Option<u32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_age_sec: Option<u64>,
    /// Rate limit of drains and rebuilds (MB/s, 0: none).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_mb_sec: Option<u32>,
}
impl SpdkParams for JournalGroupSetOptions {}

/// `bdev_journal_group_replace_leg`: a new bdev in place of the failed journal leg
/// (resynced from the other while writes go on).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct JournalGroupReplaceLeg {
    pub name: String,
    pub new_bdev: String,
}
impl SpdkParams for JournalGroupReplaceLeg {}

/// `bdev_journal_group_recover`: bring a group back from its repository's catalog and its
/// journal legs after the loss of the machine's metadata.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct JournalGroupRecover {
    #[arg(short = 'n', long)]
    pub name: String,
    #[arg(short = 'j', long)]
    pub journal_bdevs: BdevNames,
    #[arg(short = 'r', long)]
    pub repository: String,
}
impl SpdkParams for JournalGroupRecover {}

impl JournalGroupRecover {
    pub fn legs(&self) -> Result<[String; 2], RpcError> {
        two_legs("bdev_journal_group_recover", &self.journal_bdevs)
    }
}

/// `bdev_journal_volume_create`: a protected volume over a base bdev (usually a RAID-5 or
/// RAID-6) in a group.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct JournalVolumeCreate {
    #[arg(short = 'g', long)]
    pub group: String,
    #[arg(short = 'n', long)]
    pub name: String,
    #[arg(short = 'b', long)]
    pub base_bdev: String,
    /// User attributes, a JSON object of strings.
    #[arg(short = 'a', long, value_parser = json_object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Value>,
}
impl SpdkParams for JournalVolumeCreate {}

impl JournalVolumeCreate {
    pub fn attributes(&self) -> Result<BTreeMap<String, String>, RpcError> {
        Ok(attributes(
            "bdev_journal_volume_create",
            self.attributes.as_ref(),
            false,
        )?
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect())
    }
}

/// `bdev_journal_volume_get`: protected volumes (one, or all).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct JournalVolumeGet {
    #[arg(short = 'n', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
impl SpdkParams for JournalVolumeGet {}

/// `bdev_journal_volume_set_attributes`: set attributes (a null value removes one).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct JournalVolumeSetAttributes {
    pub name: String,
    /// A JSON object of strings (null removes).
    #[arg(value_parser = json_object)]
    pub attributes: Value,
}
impl SpdkParams for JournalVolumeSetAttributes {}

impl JournalVolumeSetAttributes {
    pub fn attributes(&self) -> Result<BTreeMap<String, Option<String>>, RpcError> {
        attributes(
            "bdev_journal_volume_set_attributes",
            Some(&self.attributes),
            true,
        )
    }
}

/// `bdev_journal_volume_rebuild`: recreate a failed base (new members for the blueprint's
/// RAID, or one new bdev), restore the backup chain and replay the journal.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct JournalVolumeRebuild {
    pub name: String,
    /// New members for the RAID the catalog describes, space-separated.
    #[arg(short = 'b', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_bdevs: Option<BdevNames>,
    /// Or one new bdev as the whole base.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_bdev: Option<String>,
    /// Show the rebuild's progress until it ends.
    #[arg(long)]
    #[serde(skip)]
    pub wait: bool,
}
impl SpdkParams for JournalVolumeRebuild {}

impl JournalVolumeRebuild {
    pub fn target(&self) -> Result<NewBase, RpcError> {
        let m = "bdev_journal_volume_rebuild";
        match (&self.base_bdevs, &self.base_bdev) {
            (Some(b), None) => Ok(NewBase::Members(b.0.clone())),
            (None, Some(b)) if !b.is_empty() => Ok(NewBase::Bdev(b.clone())),
            (Some(_), Some(_)) => Err(invalid(
                m,
                "base_bdev",
                "give base_bdevs or base_bdev, not both",
            )),
            _ => Err(invalid(m, "base_bdevs", "missing (or give base_bdev)")),
        }
    }
}
