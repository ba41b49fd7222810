//! Parameters of the backup repository methods (`backup_*`). The `wait` fields are
//! `strata-rpc`'s own (follow the job the method starts): never sent, refused by the server.

use super::SpdkParams;
use serde::{Deserialize, Serialize};

/// `backup_repository_create`: make a repository (hosts' vendor backup commands only use
/// repositories that exist).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct BackupRepositoryCreate {
    pub repository: String,
}
impl SpdkParams for BackupRepositoryCreate {}

/// `backup_list`: the backups in a repository, complete, incomplete or damaged.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct BackupList {
    pub repository: String,
}
impl SpdkParams for BackupList {}

/// `backup_verify`: re-read every chunk of a backup (or of all) and check its CRC32C.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct BackupVerify {
    pub repository: String,
    /// One backup (default: every complete one).
    #[arg(short = 'b', long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Show the job's progress until it ends.
    #[arg(long)]
    #[serde(skip)]
    pub wait: bool,
}
impl SpdkParams for BackupVerify {}

/// `backup_restore`: write a backup (its chain merged) onto a bdev.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct BackupRestore {
    pub repository: String,
    pub backup: String,
    /// The bdev written (same block size, at least the backup's size, unclaimed).
    pub bdev: String,
    /// Show the job's progress until it ends.
    #[arg(long)]
    #[serde(skip)]
    pub wait: bool,
}
impl SpdkParams for BackupRestore {}

/// `backup_job_get`: verify and restore jobs (one, or all).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct BackupJobGet {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}
impl SpdkParams for BackupJobGet {}
