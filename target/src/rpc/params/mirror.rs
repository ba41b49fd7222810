//! Parameters of the mirror methods (`bdev_mirror_*`). The `wait` fields are `strata-rpc`'s
//! own (follow the job the method starts): never sent, refused by the server.

use super::{invalid, is_false, is_true, parse_uuid, yes, SpdkParams};
use crate::rpc::RpcError;
use serde::{Deserialize, Serialize};
use strata_bdev::backup::repo::BackupKind;
use strata_bdev::modules::mirror::backup::{BackupMode, BackupOptions};
use strata_bdev::modules::mirror::{volume::ReadPolicy, CreateOptions, ResumeMode, SetOptions};
use strata_bdev::ChecksumAlg;

fn bad(m: &str, key: &str, v: &str, allowed: &str) -> RpcError {
    invalid(m, key, format!("{v} ({allowed})"))
}

fn read_policy(m: &str, v: Option<&str>) -> Result<Option<ReadPolicy>, RpcError> {
    v.map(|v| ReadPolicy::from_name(v).ok_or_else(|| bad(m, "read_policy", v, "primary, balance")))
        .transpose()
}

/// `bdev_mirror_create`: a mirror of two bdevs (legs).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct MirrorCreate {
    #[arg(short = 'n', long)]
    pub name: String,
    #[arg(short = 'p', long)]
    pub primary: String,
    #[arg(short = 's', long)]
    pub secondary: String,
    /// Change-bitmap region size (KiB, power of two).
    #[arg(short = 'r', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region_size_kb: Option<u64>,
    /// Checksum scan / scrub chunk size (KiB).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_chunk_kb: Option<u64>,
    /// primary or balance.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_policy: Option<String>,
    /// crc32c or sha256.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[arg(long = "scrub-interval")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrub_interval_s: Option<u32>,
    #[arg(short = 'b', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_mb_sec: Option<u32>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// The legs already hold the same data: no initial copy.
    #[arg(long = "no-initial-sync", action = clap::ArgAction::SetFalse)]
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub initial_sync: bool,
    /// Show the initial copy's progress until it ends.
    #[arg(long)]
    #[serde(skip)]
    pub wait: bool,
}
impl SpdkParams for MirrorCreate {}

impl MirrorCreate {
    const METHOD: &'static str = "bdev_mirror_create";
    pub fn options(self) -> Result<CreateOptions, RpcError> {
        let m = Self::METHOD;
        let mut o = CreateOptions::new(&self.name, &self.primary, &self.secondary);
        // Sizes are checked (and named in the error) by mirror::create.
        if let Some(r) = self.region_size_kb {
            o.region_size_kb = r;
        }
        if let Some(c) = self.scan_chunk_kb {
            o.scan_chunk_kb = c;
        }
        if let Some(r) = read_policy(m, self.read_policy.as_deref())? {
            o.read_policy = r;
        }
        if let Some(c) = &self.checksum {
            o.checksum =
                ChecksumAlg::from_name(c).ok_or_else(|| bad(m, "checksum", c, "crc32c, sha256"))?;
        }
        o.scrub_interval_s = self.scrub_interval_s.unwrap_or(0);
        o.max_bandwidth_mb_sec = self.max_bandwidth_mb_sec.unwrap_or(0);
        o.uuid = parse_uuid(m, "uuid", self.uuid.as_deref())?;
        o.initial_sync = self.initial_sync;
        Ok(o)
    }
}

/// `bdev_mirror_get`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct MirrorGet {
    #[arg(short = 'n', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
impl SpdkParams for MirrorGet {}

/// `bdev_mirror_resume`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct MirrorResume {
    pub name: String,
    /// auto, bitmap or checksum.
    #[arg(short = 'm', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Show the job's progress until it ends.
    #[arg(long)]
    #[serde(skip)]
    pub wait: bool,
}
impl SpdkParams for MirrorResume {}

impl MirrorResume {
    pub fn mode(&self) -> Result<ResumeMode, RpcError> {
        match &self.mode {
            None => Ok(ResumeMode::Auto),
            Some(v) => ResumeMode::from_name(v)
                .ok_or_else(|| bad("bdev_mirror_resume", "mode", v, "auto, bitmap, checksum")),
        }
    }
}

/// `bdev_mirror_verify`: compare the legs by checksums (and repair).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct MirrorVerify {
    pub name: String,
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub repair: bool,
    /// Show the job's progress until it ends.
    #[arg(long)]
    #[serde(skip)]
    pub wait: bool,
}
impl SpdkParams for MirrorVerify {}

/// `bdev_mirror_add_leg`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct MirrorAddLeg {
    pub name: String,
    pub base_bdev: String,
    /// Show the resync's progress until it ends.
    #[arg(long)]
    #[serde(skip)]
    pub wait: bool,
}
impl SpdkParams for MirrorAddLeg {}

/// `bdev_mirror_resolve_split_brain`: bring up a mirror held for split brain from the leg
/// `keep`; the other leg's changes since the split are overwritten.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct MirrorResolveSplitBrain {
    pub name: String,
    /// The leg (bdev) whose data survives.
    #[arg(short = 'k', long)]
    pub keep: String,
}
impl SpdkParams for MirrorResolveSplitBrain {}

/// `bdev_mirror_set_options`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct MirrorSetOptions {
    pub name: String,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_policy: Option<String>,
    #[arg(long = "scrub-interval")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrub_interval_s: Option<u32>,
    #[arg(short = 'b', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_mb_sec: Option<u32>,
}
impl SpdkParams for MirrorSetOptions {}

impl MirrorSetOptions {
    pub fn options(&self) -> Result<SetOptions, RpcError> {
        Ok(SetOptions {
            read_policy: read_policy("bdev_mirror_set_options", self.read_policy.as_deref())?,
            scrub_interval_s: self.scrub_interval_s,
            max_bandwidth_mb_sec: self.max_bandwidth_mb_sec,
        })
    }
}

/// `bdev_mirror_split`: pause the secondary; with `snapshot`, a point-in-time image of the
/// primary as of now, exported as a read-only bdev while the copy to the secondary runs.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct MirrorSplit {
    pub name: String,
    /// Take a point-in-time image (answers at once, even while a copy runs).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub snapshot: bool,
    /// The image bdev's name (default <name>_pit).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}
impl SpdkParams for MirrorSplit {}

impl MirrorSplit {
    pub fn check(&self) -> Result<(), RpcError> {
        if self.image.is_some() && !self.snapshot {
            return Err(invalid(
                "bdev_mirror_split",
                "image",
                "only with snapshot: true",
            ));
        }
        Ok(())
    }
}

/// `bdev_mirror_backup`: back up a snapshot split's image into a repository.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct MirrorBackup {
    pub name: String,
    /// The repository: a directory (created if missing or empty).
    #[arg(short = 'r', long)]
    pub repository: String,
    /// full (default) or incremental (to the mirror's last backup).
    #[arg(short = 't', long = "type")]
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// secondary (default: owed regions are copied to the secondary first) or memory (read
    /// from the primary into memory; the secondary is not written).
    #[arg(short = 'm', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Chunk size in KiB (power of two, default 1024; an incremental uses its parent's).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_kb: Option<u64>,
    /// The backup's id (default <mirror>-<split time>-<type>); the id of an interrupted
    /// backup resumes it from its checkpoint.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The backup's rate limit in MB/s (default 0: none).
    #[arg(short = 'b', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_mb_sec: Option<u32>,
    /// Show the backup's progress until it ends.
    #[arg(long)]
    #[serde(skip)]
    pub wait: bool,
}
impl SpdkParams for MirrorBackup {}

impl MirrorBackup {
    pub fn options(&self) -> Result<BackupOptions, RpcError> {
        let m = "bdev_mirror_backup";
        let kind = match self.kind.as_deref() {
            None => BackupKind::Full,
            Some(v) => {
                BackupKind::from_name(v).ok_or_else(|| bad(m, "type", v, "full, incremental"))?
            }
        };
        let mode = match self.mode.as_deref() {
            None => BackupMode::Secondary,
            Some(v) => {
                BackupMode::from_name(v).ok_or_else(|| bad(m, "mode", v, "secondary, memory"))?
            }
        };
        if self.repository.is_empty() {
            return Err(invalid(m, "repository", "empty"));
        }
        Ok(BackupOptions {
            repository: self.repository.clone(),
            kind,
            mode,
            chunk_kb: self.chunk_kb,
            id: self.id.clone(),
            max_bandwidth_mb_sec: self.max_bandwidth_mb_sec.unwrap_or(0),
            create_repository: true,
        })
    }
}
