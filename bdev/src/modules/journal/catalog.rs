//! The group's catalog — the claims' "skeleton": every protected volume's name, uuid, size,
//! block size, the layout of its base (the blueprint a rebuild recreates it from), where
//! it is exported, its user attributes, and the last backup of it in the repository. The
//! per-volume deltas (the claims' "delta files": changes in the journal not yet in the
//! backup) are the journal's undrained records, indexed per volume in memory
//! ([`super::log::Index`]).
//!
//! The catalog is journaled (a `Catalog` record in the log at every change), mirrored (both
//! legs hold the log and the header copy written at each trim) and copied to the backup
//! repository at each drain, so the repository alone can recreate the layout.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const FORMAT: &str = "strata-journal-catalog";
pub const VERSION: u32 = 1;

/// When a drain starts by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainPolicy {
    /// Journal fill (percent of the log) at which a drain starts (0: never by fill).
    pub fill_percent: u32,
    /// Age (seconds) of the oldest undrained record at which a drain starts (0: never).
    pub max_age_secs: u64,
    /// Bytes per backup chunk.
    pub chunk_size: u64,
    /// Rate limit of drains and rebuilds (MB/s, 0: none), so they leave the disks to hosts.
    #[serde(default)]
    pub max_bandwidth_mb_sec: u32,
}

impl Default for DrainPolicy {
    fn default() -> Self {
        DrainPolicy {
            fill_percent: 50,
            max_age_secs: 300,
            chunk_size: 1 << 20,
            max_bandwidth_mb_sec: 0,
        }
    }
}

/// The layout of a volume's base: what a rebuild recreates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseLayout {
    pub bdev: String,
    pub uuid: String,
    /// `raid` (with level, strip and members) or `bdev` (any other bdev: a rebuild needs a
    /// new base of at least the volume's size).
    pub kind: String,
    pub level: Option<String>,
    pub strip_size_kb: Option<u64>,
    #[serde(default)]
    pub members: Vec<String>,
    /// Blocks each member contributes (a new member must have at least this many plus the
    /// RAID superblock).
    pub member_blocks: Option<u64>,
}

/// Where a volume is exported (filled in by the NVMe-oF layer through
/// [`super::set_export_lookup`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    pub nqn: String,
    pub nsid: u32,
}

/// The last backup of a volume: its chain ends here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeBackup {
    pub id: String,
    /// Every record up to this sequence number is in the backup.
    pub seq: u64,
    pub chunk_size: u64,
    /// Backups in the chain (full first).
    pub chain: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeEntry {
    /// The id records name the volume by (never reused in a group).
    pub id: u32,
    pub name: String,
    pub uuid: String,
    pub block_size: u32,
    pub num_blocks: u64,
    pub base: BaseLayout,
    #[serde(default)]
    pub export: Vec<Export>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    pub backup: Option<VolumeBackup>,
    pub created: u64,
    /// A rebuild started and has not finished: the base named above is not trusted (a
    /// restart in the middle leaves a half-restored base) until a rebuild completes.
    #[serde(default)]
    pub rebuilding: bool,
}

/// Where the journal stood after the last drain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainPoint {
    pub tail: u64,
    pub seq: u64,
    /// The drain's own point (records before it are in the backups); above `seq` when a
    /// volume without a backup held the cut back. New records never reuse a number below it.
    #[serde(default)]
    pub point_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub format: String,
    pub version: u32,
    pub group: String,
    pub group_uuid: String,
    pub block_size: u32,
    /// Blocks of the log on each leg (the journal's geometry: a recovery from the
    /// repository reads the legs with it).
    pub log_blocks: u64,
    pub repository: String,
    pub drain: DrainPolicy,
    pub next_volume_id: u32,
    pub volumes: Vec<VolumeEntry>,
    /// The journal's drain point when this copy was taken (the repository's copy: where a
    /// recovery from the repository starts reading the journal).
    pub drained: DrainPoint,
    pub updated: u64,
    /// Bumped by every change: of two copies (the header's, the newest journal record, the
    /// repository's) the one with the higher revision is the newer.
    #[serde(default)]
    pub revision: u64,
}

impl Catalog {
    pub fn new(
        group: &str,
        uuid: &str,
        block_size: u32,
        log_blocks: u64,
        repository: &str,
        drain: DrainPolicy,
    ) -> Catalog {
        Catalog {
            format: FORMAT.into(),
            version: VERSION,
            group: group.into(),
            group_uuid: uuid.into(),
            block_size,
            log_blocks,
            repository: repository.into(),
            drain,
            next_volume_id: 1,
            volumes: Vec::new(),
            drained: DrainPoint::default(),
            updated: crate::backup::now().0,
            revision: 1,
        }
    }

    pub fn volume(&self, id: u32) -> Option<&VolumeEntry> {
        self.volumes.iter().find(|v| v.id == id)
    }

    pub fn volume_mut(&mut self, id: u32) -> Option<&mut VolumeEntry> {
        self.volumes.iter_mut().find(|v| v.id == id)
    }

    pub fn by_name(&self, name: &str) -> Option<&VolumeEntry> {
        self.volumes.iter().find(|v| v.name == name)
    }

    /// Parses a catalog (a journal record's or the repository's copy) and checks it.
    pub fn parse(raw: &[u8]) -> Result<Catalog, String> {
        let c: Catalog = serde_json::from_slice(raw).map_err(|e| format!("not a catalog: {e}"))?;
        if c.format != FORMAT || c.version != VERSION {
            return Err(format!(
                "format {} version {} is not {FORMAT} {VERSION}",
                c.format, c.version
            ));
        }
        Ok(c)
    }

    /// Marks a change (a new revision).
    pub fn touch(&mut self) {
        self.revision += 1;
        self.updated = crate::backup::now().0;
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
