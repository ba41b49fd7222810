//! The operations of a snapshot split: take the image (`bdev_mirror_split` with
//! `snapshot`), drop it (`bdev_mirror_resume`, a replaced secondary), and bring it back
//! after a restart from the split section of the superblock.

use super::image::MirrorImage;
use super::jobs::{self, JobKind};
use super::pit::Pit;
use super::superblock::{LegState, MirrorState, SplitMaps, SplitRecord};
use super::volume::Mirror;
use crate::error::BdevError;
use crate::registry;
use serde_json::{json, Value};
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

fn invalid(s: String) -> BdevError {
    BdevError::Invalid(s)
}

/// Splits the mirror with a point-in-time image, answering at once even while a copy to the
/// secondary runs. Returns the image's description.
pub async fn split_snapshot(name: &str, image: Option<String>) -> Result<Value, BdevError> {
    let started = Instant::now();
    let m = super::find(name)?;
    let image = image.unwrap_or_else(|| format!("{name}_pit"));
    if image.is_empty() || image.len() > 128 {
        return Err(invalid(format!(
            "image name '{image}' must be 1 to 128 bytes"
        )));
    }
    if let Some(p) = m.pit() {
        return Err(invalid(format!(
            "mirror {name} already has the image {} (drop it with bdev_mirror_resume)",
            p.image_name
        )));
    }
    if registry::get(&image).is_some() {
        return Err(BdevError::Exists(image));
    }
    if !m.maps_fit {
        return Err(invalid(format!(
            "mirror {name}'s metadata area has no room for a snapshot split's maps (recreate it with a larger region_size_kb)"
        )));
    }
    let unit = jobs::unit_blocks(&m);
    if m.region_blocks % unit != 0 {
        return Err(invalid(format!(
            "mirror {name}: region_size_kb ({}) is not a multiple of the secondary's stripe ({} KiB): an owed region could not be copied alone",
            m.region_blocks * m.block_size as u64 / 1024,
            unit * m.block_size as u64 / 1024
        )));
    }
    let check_state = |m: &Mirror| -> Result<(), BdevError> {
        let c = m.ctl.lock();
        let sec = c.by_role(1);
        match c.state {
            MirrorState::InSync | MirrorState::Resyncing
                if sec.base.is_some() && sec.state.takes_writes() =>
            {
                Ok(())
            }
            st => Err(invalid(format!(
                "mirror {name} is {}: only an in-sync or resyncing mirror can be split with a snapshot",
                st.name()
            ))),
        }
    };
    check_state(&m)?;
    if !m.intent.states_durable() {
        jobs::persist(&m).await;
    }
    // A running copy stops: what it still owes becomes the image's owed map. A checksum
    // scan does not know what it owes region by region. The split takes the job slot (for
    // the image's copy) before it quiesces, so no other job can start in between.
    let job = loop {
        if let Some(j) = jobs::reserve(&m, JobKind::ImageCopy, false) {
            break j;
        }
        if let Some(j) = m.job.current() {
            if j.kind == JobKind::Scan {
                return Err(invalid(format!(
                    "mirror {name} runs a checksum resync (its bitmap was lost): what the secondary lacks is not known region by region; split after it ends"
                )));
            }
            j.progress.cancel();
        }
        jobs::wait_idle(&m).await;
    };
    let t_job = started.elapsed();
    // Quiesce: no write is in flight while the routing changes, so every write is either
    // before the split (on both legs, or owed) or after it (on the primary only).
    let last = (m.intent.bits - 1) as usize;
    m.intent.lock_range(0, last);
    poll_fn(|cx| m.intent.poll_drained(0, last, cx.waker())).await;
    let res = (|| {
        check_state(&m)?;
        let mut c = m.ctl.lock();
        if c.state == MirrorState::Resyncing && !c.bitmap_trusted {
            return Err(invalid(format!(
                "mirror {name} is resyncing without a trusted bitmap: what the secondary lacks is not known region by region; split after the resync"
            )));
        }
        let owed = if c.state == MirrorState::Resyncing {
            m.intent.snapshot_bits()
        } else {
            Vec::new()
        };
        let s = c.secondary();
        c.legs[s].state = LegState::Stale;
        c.state = MirrorState::Split;
        m.intent.hold_bits(true);
        let delta = m.intent.take_track();
        let words = m.intent.bits.div_ceil(64) as usize;
        let pit = Arc::new(Pit::new(
            image.clone(),
            crate::backup::now(),
            owed,
            delta,
            words,
        ));
        m.set_pit(Some(pit.clone()));
        m.intent.bump();
        m.refresh(&c);
        Ok(pit)
    })();
    let t_quiesce = started.elapsed();
    let pit = match res {
        Ok(p) => p,
        Err(e) => {
            m.intent.unlock_range(0, last);
            m.job.release();
            return Err(e);
        }
    };
    jobs::persist_all(&m).await;
    let t_persist = started.elapsed();
    m.intent.unlock_range(0, last);
    let owed = pit.owed_count();
    if owed > 0 {
        let mm = m.clone();
        crate::volume::examine::on_a_reactor(move || jobs::run(mm, job));
    } else {
        m.job.release();
    }
    if !m.intent.is_durable(m.intent.generation()) && m.state() == MirrorState::Offline {
        return Err(BdevError::IoFailed(format!(
            "mirror {name}: the split could not be written to any leg"
        )));
    }
    registry::register(Arc::new(MirrorImage::new(m.clone(), pit.clone())))?;
    let us = started.elapsed().as_micros() as u64;
    tracing::info!(mirror = %name, image = %image, owed_regions = owed, split_us = us,
        job_stopped_us = t_job.as_micros() as u64, quiesced_us = t_quiesce.as_micros() as u64,
        persisted_us = t_persist.as_micros() as u64, "snapshot split: the image is the primary as of now");
    Ok(json!({
        "image": image,
        "split_time": pit.split_time,
        "owed_regions": owed,
        "copy_running": owed > 0,
        "split_us": us,
    }))
}

/// Drops the mirror's image, if any: stops its copy and its backup (`force`; else a running
/// backup refuses), removes the image bdev (its hosts see the namespace go), and gives the
/// image's change map back if no backup consumed it. The caller persists.
pub async fn drop_image(m: &Arc<Mirror>, force: bool) -> Result<(), BdevError> {
    let Some(pit) = m.pit() else {
        return Ok(());
    };
    if let Some(b) = pit.backup.current() {
        if !force {
            return Err(BdevError::Claimed {
                name: pit.image_name.clone(),
                by: format!("the running backup {}", b.id),
            });
        }
        b.progress.cancel();
    }
    pit.dropped.store(true, Ordering::Release);
    if let Some(j) = m.job.current().filter(|j| j.kind == JobKind::ImageCopy) {
        j.progress.cancel();
    }
    jobs::wait_idle(m).await;
    while pit.backup.is_busy() {
        strata_reactor::sleep(std::time::Duration::from_millis(2)).await;
    }
    pit.wait_no_copiers().await;
    if !pit.backed_up.load(Ordering::Acquire) {
        m.intent.merge_track(&pit.delta);
    }
    m.set_pit(None);
    match registry::unregister(&pit.image_name) {
        Ok(()) | Err(BdevError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    tracing::info!(mirror = %m.name, image = %pit.image_name, owed_regions = pit.owed_count(), "image dropped");
    Ok(())
}

/// The secondary failed under the image: the image is lost. Host writes must not wait for
/// copies that cannot be made: nothing is owed from now on; the image bdev goes in the
/// background (its hosts see the namespace go).
pub fn image_lost(m: &Arc<Mirror>, why: &str) {
    let Some(pit) = m.pit() else { return };
    if pit.dropped.swap(true, Ordering::AcqRel) {
        return;
    }
    pit.abandon();
    tracing::error!(mirror = %m.name, image = %pit.image_name, reason = why, "the secondary failed: the point-in-time image is lost and dropped");
    let m = m.clone();
    crate::volume::examine::on_a_reactor(move || async move {
        if let Err(e) = drop_image(&m, true).await {
            tracing::error!(mirror = %m.name, error = %e, "dropping the lost image failed");
        }
        jobs::persist_all(&m).await;
    });
}

/// After a restart: the change map, the last backup and the image from the superblock's
/// split section (`Err`: the section was damaged).
pub fn restore(m: &Arc<Mirror>, split: Result<Option<(SplitRecord, SplitMaps)>, String>) {
    let (rec, maps) = match split {
        Ok(Some(x)) => x,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(mirror = %m.name, error = %e, "split section damaged: the image and the backup history are lost; the next backup must be full");
            return;
        }
    };
    if m.maps_fit {
        m.intent.set_tracking(maps.track.clone());
    }
    *m.last_backup.lock() = rec.last_backup.clone();
    let Some(img) = rec.image else {
        return;
    };
    let usable = {
        let c = m.ctl.lock();
        c.state == MirrorState::Split && c.by_role(1).base.is_some()
    };
    if !usable || registry::get(&img.name).is_some() {
        tracing::error!(mirror = %m.name, image = %img.name, state = m.state().name(), "the image cannot be brought back (its secondary is not there, or its name is taken): dropped");
        m.intent.merge_track(&maps.delta);
        return;
    }
    let words = m.intent.bits.div_ceil(64) as usize;
    let pit = Arc::new(Pit::new(
        img.name.clone(),
        (img.split_time, img.split_time_ns),
        maps.owed,
        maps.delta,
        words,
    ));
    pit.backed_up.store(img.backed_up, Ordering::Release);
    *pit.backup_rec.lock() = img.backup;
    m.set_pit(Some(pit.clone()));
    if let Err(e) = registry::register(Arc::new(MirrorImage::new(m.clone(), pit.clone()))) {
        tracing::error!(mirror = %m.name, image = %img.name, error = %e, "image bdev not registered");
    }
    tracing::info!(mirror = %m.name, image = %img.name, owed_regions = pit.owed_count(), "image brought back after the restart");
    if pit.owed_count() > 0 {
        if let Err(e) = super::start_job(m, JobKind::ImageCopy, false) {
            tracing::error!(mirror = %m.name, error = %e, "image copy not restarted");
        }
    }
    super::backup::resume_after_restart(m, &pit);
}
