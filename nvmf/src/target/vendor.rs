//! strata's vendor-specific admin commands (opcodes C0h–C2h, [`crate::spec::cmd::admin`]):
//! a host asks the target to act on the volume behind one of its namespaces — the
//! production host splits its mirror with a point-in-time image (from a freeze/thaw hook),
//! the backup host starts a backup of that image and follows it. They map onto the same
//! operations as the `bdev_mirror_split` / `bdev_mirror_backup` / `bdev_mirror_get` RPCs;
//! a refusal is an NVMe status plus a log line with the reason.

use super::controller::AdminOutcome;
use crate::spec::cmd::admin;
use crate::spec::status::{self, Status};
use crate::spec::Sqe;
use serde::Deserialize;
use strata_bdev::backup::repo::BackupKind;
use strata_bdev::modules::mirror::{self, backup::BackupMode, backup::BackupOptions};
use strata_bdev::BdevError;

pub fn is_vendor_admin(opcode: u8) -> bool {
    matches!(
        opcode,
        admin::VENDOR_MIRROR_SPLIT | admin::VENDOR_MIRROR_BACKUP | admin::VENDOR_MIRROR_STATUS
    )
}

/// The JSON of a backup command.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupParams {
    repository: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    mode: Option<String>,
    chunk_kb: Option<u64>,
    id: Option<String>,
    max_bandwidth_mb_sec: Option<u32>,
}

fn refuse(st: Status, opcode: u8, bdev: &str, peer: &str, why: &str) -> AdminOutcome {
    tracing::warn!(
        peer,
        opcode,
        bdev,
        reason = why,
        "vendor admin command refused"
    );
    AdminOutcome::err(st)
}

fn status_of(e: &BdevError) -> Status {
    match e {
        BdevError::NotFound(_) => status::INVALID_NAMESPACE,
        BdevError::Invalid(_) | BdevError::Exists(_) => status::INVALID_FIELD,
        BdevError::Claimed { .. } => status::COMMAND_SEQUENCE_ERROR,
        _ => status::INTERNAL_ERROR,
    }
}

/// Runs vendor admin command `sqe` against the bdev behind its namespace.
pub async fn run(sqe: &Sqe, bdev: &str, data: &[u8], peer: &str) -> AdminOutcome {
    let op = sqe.opcode;
    let Some(m) = mirror::mirror_of(bdev) else {
        return refuse(
            status::INVALID_FIELD,
            op,
            bdev,
            peer,
            "the namespace is not a mirror or a mirror's image",
        );
    };
    match op {
        admin::VENDOR_MIRROR_SPLIT => {
            if m.name != bdev {
                return refuse(
                    status::INVALID_FIELD,
                    op,
                    bdev,
                    peer,
                    "split is asked of the mirror's own namespace, not of its image",
                );
            }
            match mirror::snapshot::split_snapshot(&m.name, None).await {
                Ok(v) => {
                    tracing::info!(peer, mirror = %m.name, "mirror split by the host's vendor command");
                    let owed = v["owed_regions"].as_u64().unwrap_or(0);
                    AdminOutcome {
                        dw0: owed.min(u32::MAX as u64) as u32,
                        ..AdminOutcome::ok()
                    }
                }
                Err(e) => refuse(status_of(&e), op, bdev, peer, &e.to_string()),
            }
        }
        admin::VENDOR_MIRROR_BACKUP => {
            let raw = data.split(|&b| b == 0).next().unwrap_or(&[]);
            let p: BackupParams = match serde_json::from_slice(raw) {
                Ok(p) => p,
                Err(e) => {
                    return refuse(
                        status::INVALID_FIELD,
                        op,
                        bdev,
                        peer,
                        &format!("backup parameters are not the expected JSON: {e}"),
                    )
                }
            };
            let kind = match p.kind.as_deref() {
                None => Some(BackupKind::Full),
                Some(k) => BackupKind::from_name(k),
            };
            let mode = match p.mode.as_deref() {
                None => Some(BackupMode::Secondary),
                Some(k) => BackupMode::from_name(k),
            };
            let (Some(kind), Some(mode)) = (kind, mode) else {
                return refuse(
                    status::INVALID_FIELD,
                    op,
                    bdev,
                    peer,
                    "type is full or incremental, mode secondary or memory",
                );
            };
            let o = BackupOptions {
                repository: p.repository,
                kind,
                mode,
                chunk_kb: p.chunk_kb,
                id: p.id,
                max_bandwidth_mb_sec: p.max_bandwidth_mb_sec.unwrap_or(0),
                // A host names only repositories the operator made.
                create_repository: false,
            };
            match mirror::backup::start(&m.name, o).await {
                Ok(v) => {
                    tracing::info!(peer, mirror = %m.name, backup = %v["id"], "backup started by the host's vendor command");
                    AdminOutcome::ok()
                }
                Err(e) => refuse(status_of(&e), op, bdev, peer, &e.to_string()),
            }
        }
        _ => {
            let v = m.info();
            let mut out = serde_json::to_vec(&serde_json::json!({
                "mirror": m.name,
                "state": v["state"],
                "image": v["image"],
                "last_backup": v["last_backup"],
            }))
            .unwrap_or_default();
            // At most 4 KiB whatever the host asks for: no allocation sized by the host.
            let want = (sqe.sgl.length as usize).min(4096);
            if out.len() > want {
                return refuse(
                    status::INVALID_FIELD,
                    op,
                    bdev,
                    peer,
                    &format!("the status needs {} bytes of transfer length", out.len()),
                );
            }
            out.resize(want, 0);
            AdminOutcome::data(out)
        }
    }
}
