//! Rebuild beyond redundancy (claims 7–9, 17–19): when a volume's base failed beyond what
//! its RAID level survives, `bdev_journal_volume_rebuild` recreates the base from the
//! catalog's blueprint (level, width, strip) on new members — or takes a new base bdev —,
//! restores the volume's last backup chain from the repository, then replays the journal's
//! undrained records of the volume in order; the volume comes back online holding every
//! acknowledged write. The same replay brings a base up to date at re-assembly.

use super::catalog::BaseLayout;
use super::format::RecordKind;
use super::log::RecordLoc;
use super::volume::{self, ProtectedVolume};
use crate::backup;
use crate::error::BdevError;
use crate::io::IoType;
use crate::modules::base::ClaimedBase;
use crate::modules::raid;
use crate::registry;
use crate::volume::examine;
use crate::volume::job::{JobRun, Progress};
use crate::wait;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What the base is rebuilt onto.
#[derive(Clone, Debug)]
pub enum NewBase {
    /// New members for the blueprint's RAID (as many as it had).
    Members(Vec<String>),
    /// Any bdev of at least the volume's size.
    Bdev(String),
}

/// Writes the records (sequence order) onto `base`. `progress` counts their bytes.
pub async fn replay(
    v: &ProtectedVolume,
    base: &ClaimedBase,
    recs: &[RecordLoc],
    mut run: Option<&mut JobRun<'_>>,
) -> Result<(), BdevError> {
    let ch = base.channel()?;
    let bs = v.block_size as u64;
    for r in recs {
        let res = match r.kind {
            RecordKind::Write => {
                let d = v.group.read_record(r).await?;
                wait::write_slice(&ch, r.lba, &d[..(r.blocks * bs) as usize]).await
            }
            RecordKind::Zeroes => zero(&ch, r.lba, r.blocks, bs).await,
            RecordKind::Catalog => continue,
        };
        res.map_err(|st| {
            BdevError::IoFailed(format!(
                "replaying record {} onto {}: {st:?}",
                r.seq, base.name
            ))
        })?;
        if let Some(run) = run.as_deref_mut() {
            let _ = run.step(r.blocks * bs, 0).await;
        }
    }
    Ok(())
}

async fn zero(ch: &crate::IoChannel, lba: u64, n: u64, bs: u64) -> Result<(), crate::IoStatus> {
    if ch.bdev().supports(IoType::WriteZeroes) {
        return wait::no_data(ch, IoType::WriteZeroes, lba, n).await;
    }
    let step = ((1u64 << 20) / bs).max(1);
    let mut at = lba;
    while at < lba + n {
        let k = step.min(lba + n - at);
        wait::write_slice(ch, at, &vec![0u8; (k * bs) as usize]).await?;
        at += k;
    }
    Ok(())
}

fn invalid(s: String) -> BdevError {
    BdevError::Invalid(s)
}

/// `bdev_journal_volume_rebuild`: checks, prepares the new base, and starts the job.
pub async fn start(name: &str, target: NewBase) -> Result<(), BdevError> {
    let v = super::find_volume(name)?;
    let g = v.group.clone();
    let st = v.state();
    if st == volume::ONLINE {
        return Err(invalid(format!(
            "volume {name} is online: its base still serves (nothing to rebuild)"
        )));
    }
    if st == volume::REBUILDING || v.rebuild.is_busy() {
        return Err(BdevError::Claimed {
            name: name.into(),
            by: "a running rebuild".into(),
        });
    }
    let entry = g
        .catalog
        .lock()
        .volume(v.id)
        .cloned()
        .ok_or_else(|| BdevError::NotFound(name.into()))?;
    let Some(last) = entry.backup.clone() else {
        return Err(invalid(format!(
            "volume {name} has no backup in the repository yet: without one the blocks written before the journal's records are lost"
        )));
    };
    let bs = v.block_size;
    // Check the new base's parts before touching the old one.
    let check = |b: &str, min: u64, allow_claim_by: Option<&str>| -> Result<(), BdevError> {
        let h = registry::get(b).ok_or_else(|| BdevError::NotFound(b.into()))?;
        if let Some(by) = &h.claimed_by {
            if allow_claim_by.is_none_or(|a| by != a) {
                return Err(BdevError::Claimed {
                    name: b.into(),
                    by: by.clone(),
                });
            }
        }
        if h.bdev.block_size() != bs {
            return Err(invalid(format!(
                "{b} has {}-byte blocks; the volume {bs}",
                h.bdev.block_size()
            )));
        }
        if h.bdev.num_blocks() < min {
            return Err(invalid(format!(
                "{b} is too small: {} blocks, the blueprint needs {min}",
                h.bdev.num_blocks()
            )));
        }
        Ok(())
    };
    let layout = entry.base.clone();
    match &target {
        NewBase::Members(m) => {
            if layout.kind != "raid" {
                return Err(invalid(format!(
                    "the base of {name} was no RAID ({}): give base_bdev, a new bdev of at least {} blocks",
                    layout.bdev, entry.num_blocks
                )));
            }
            if m.len() != layout.members.len() {
                return Err(invalid(format!(
                    "the blueprint of {} is a {} of {} members: give {} base bdevs, not {}",
                    layout.bdev,
                    layout.level.as_deref().unwrap_or("raid"),
                    layout.members.len(),
                    layout.members.len(),
                    m.len()
                )));
            }
            let mut seen = std::collections::HashSet::new();
            for b in m {
                if !seen.insert(b) {
                    return Err(invalid(format!("{b} is given twice")));
                }
                // A surviving member of the old RAID may be reused.
                check(b, layout.member_blocks.unwrap_or(0), Some(&layout.bdev))?;
            }
        }
        NewBase::Bdev(b) => {
            if b == &layout.bdev && registry::get(b).is_some() {
                return Err(invalid(format!("{b} is the failed base: give a new bdev")));
            }
            check(b, entry.num_blocks, None)?;
        }
    }
    let job = v
        .rebuild
        .reserve(|| Progress::new("rebuild", Some(name.to_string()), 0))
        .ok_or_else(|| BdevError::Claimed {
            name: name.into(),
            by: "a running rebuild".into(),
        })?;
    v.state.store(volume::REBUILDING, Ordering::Release);
    *v.reason.lock() = "rebuilding from the repository and the journal".into();
    // Durable before the old base is touched: a restart in the middle leaves the volume
    // offline instead of serving a half-restored base.
    if let Some(e) = g.catalog.lock().volume_mut(v.id) {
        e.rebuilding = true;
    }
    if let Err(e) = super::append::append_catalog(&g).await {
        v.state.store(st, Ordering::Release);
        v.rebuild.release();
        return Err(e);
    }
    let v2 = v.clone();
    examine::on_a_reactor(move || async move {
        tracing::info!(volume = %v2.name, backup = %last.id, ?target, "rebuild started");
        let res = run(&v2, &layout, target, &job).await;
        let secs = job.started.elapsed().as_secs_f64();
        let info = match &res {
            Ok(replayed) => {
                v2.state.store(volume::ONLINE, Ordering::Release);
                v2.reason.lock().clear();
                tracing::info!(volume = %v2.name, secs, replayed, "rebuild done: volume online");
                json!({ "kind": "rebuild", "percent": 100.0, "result": "done", "seconds": secs, "backup": last.id, "replayed_records": replayed })
            }
            Err(e) => {
                *v2.reason.lock() = format!("rebuild failed: {e}");
                v2.state.store(volume::OFFLINE, Ordering::Release);
                tracing::error!(volume = %v2.name, error = %e, "rebuild failed: volume offline");
                json!({ "kind": "rebuild", "result": "failed", "error": e.to_string(), "seconds": secs })
            }
        };
        *v2.last_rebuild.lock() = Some(info);
        v2.rebuild.release();
    });
    Ok(())
}

/// The rebuild job: new base, restore, replay, catalog. Returns the records replayed.
async fn run(
    v: &Arc<ProtectedVolume>,
    layout: &BaseLayout,
    target: NewBase,
    job: &Progress,
) -> Result<usize, BdevError> {
    let g = v.group.clone();
    // 1. The new base.
    if let Some(old) = v.base.write().take() {
        old.release();
    }
    v.epoch.fetch_add(1, Ordering::AcqRel);
    let base_name = match target {
        NewBase::Members(members) => {
            if raid::array(&layout.bdev).is_some() {
                raid::delete(&layout.bdev).await?;
            } else if registry::get(&layout.bdev).is_some() {
                return Err(invalid(format!(
                    "{} is registered and no RAID: delete it first",
                    layout.bdev
                )));
            }
            let level = layout
                .level
                .as_deref()
                .and_then(raid::geometry::Level::from_name)
                .ok_or_else(|| invalid("the blueprint names no RAID level".into()))?;
            let a = raid::create(raid::CreateOptions {
                name: layout.bdev.clone(),
                level,
                strip_size_kb: layout.strip_size_kb.unwrap_or(0),
                base_bdevs: members,
                uuid: None,
                superblock: true,
            })
            .await?;
            if a.geo.num_blocks() < v.num_blocks {
                let n = a.geo.num_blocks();
                let _ = raid::delete(&layout.bdev).await;
                return Err(invalid(format!(
                    "the new {} holds {n} blocks; the volume needs {}: members too small",
                    layout.bdev, v.num_blocks
                )));
            }
            layout.bdev.clone()
        }
        NewBase::Bdev(b) => b,
    };
    let base = super::open_base(&base_name, &v.name)?;
    let base_ch = base.channel()?;
    // No trim from here to the end of the replay: the backup named now and the records
    // after it stay one consistent pair.
    let pin = g.pin_tail();
    // 2. Restore the backup chain.
    let (repository, last) = {
        let c = g.catalog.lock();
        (
            c.repository.clone(),
            c.volume(v.id).and_then(|e| e.backup.clone()),
        )
    };
    let last = last.ok_or_else(|| invalid("the volume lost its backup record".into()))?;
    let r = backup::open_repository(&repository, false).await?;
    let (r2, id) = (r.clone(), last.id.clone());
    let (m, map) = backup::offload(move || r2.resolve(&id)).await?;
    if m.num_blocks != v.num_blocks || m.block_size != v.block_size {
        return Err(invalid(format!(
            "backup {} is of another size than volume {}",
            last.id, v.name
        )));
    }
    let mut recs = g.index.lock().volume_records(v.id, u64::MAX);
    recs.retain(|r| r.seq > last.seq);
    // Only these records are needed now: trims may pass everything before them.
    pin.narrow_to(recs.first());
    let bs = v.block_size as u64;
    let replay_bytes: u64 = recs.iter().map(|r| r.blocks * bs).sum();
    job.set_total(m.num_blocks * bs + replay_bytes);
    let mut run = JobRun::new(job);
    // The next chunk is read from the repository while this one is written.
    let fetch = |i: usize| {
        let r = r.clone();
        let c = map[i].clone();
        let len = m.chunk_len(i as u64);
        backup::offload(move || match c {
            Some(c) => r.read_chunk(&c, len).map(Some),
            None => Ok(None),
        })
    };
    let mut next = (!map.is_empty()).then(|| fetch(0));
    for i in 0..map.len() {
        let data = match next.take() {
            Some(f) => f.await?,
            None => None,
        };
        if i + 1 < map.len() {
            next = Some(fetch(i + 1));
        }
        let lba = i as u64 * m.chunk_size / bs;
        let n = m.chunk_len(i as u64) / bs;
        let res = match data {
            Some(d) => wait::write_slice(&base_ch, lba, &d).await,
            None => zero(&base_ch, lba, n, bs).await,
        };
        res.map_err(|st| BdevError::IoFailed(format!("restoring chunk {i}: {st:?}")))?;
        let rate = g.catalog.lock().drain.max_bandwidth_mb_sec as u64;
        if run.step(n * bs, rate).await.is_err() || g.stopping.load(Ordering::Acquire) {
            return Err(BdevError::IoFailed("rebuild stopped".into()));
        }
    }
    // 3. Replay what the journal holds beyond the backup.
    replay(v, &base, &recs, Some(&mut run)).await?;
    if base_ch.bdev().supports(IoType::Flush) {
        let _ = wait::no_data(&base_ch, IoType::Flush, 0, 0).await;
    }
    // The catalog append below may wait for a drain (a full journal): unpin first.
    drop(pin);
    // 4. The catalog names the new base; the volume takes I/O again.
    let new_layout = super::layout_of(&base_name);
    if let Some(e) = g.catalog.lock().volume_mut(v.id) {
        e.base = new_layout;
        e.rebuilding = false;
    }
    super::append::append_catalog(&g).await?;
    v.set_base(Some(base));
    Ok(recs.len())
}
