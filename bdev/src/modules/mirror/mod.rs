//! Mirror volumes: two legs (any bdevs — plain devices, RAID volumes of different level and
//! width, later remote namespaces) holding the same data, with split and resume, a
//! persistent change bitmap, checksum resync when the bitmap cannot be trusted, scrub, and
//! re-assembly from the legs' superblocks after a restart.
//!
//! - [`volume`]: the mirror as a bdev, its legs and state machine.
//! - [`channel`]: the per-reactor I/O path (reads from one leg, writes to both).
//! - [`jobs`]: metadata writes, resync / scan / scrub, housekeeping.
//! - [`superblock`]: the on-leg format.
//! - [`record`]: its leg states in the cluster store (optional).
//! - [`pit`], [`image`], [`snapshot`]: the snapshot split — a point-in-time image of the
//!   primary, exported as a read-only bdev while the copy to the secondary still runs.
//! - [`backup`]: backups of that image into a repository ([`crate::backup`]).
//!
//! This module holds the operations behind the `bdev_mirror_*` RPCs and examine: a bdev
//! carrying a mirror superblock is held until its partner appears (or, at the end of
//! examine, the mirror starts degraded from the newest leg if that leg holds the data).
//! The mirror uses its legs only through the [`crate::Bdev`] interface.

pub mod backup;
pub mod channel;
pub mod image;
pub mod jobs;
pub mod pit;
pub mod record;
pub mod snapshot;
pub mod superblock;
pub mod volume;

use crate::error::BdevError;
use crate::io::ChecksumAlg;
use crate::module::BdevModule;
use crate::modules::base::ClaimedBase;
use crate::registry::{self, BdevEvent};
use crate::volume::examine;
use crate::volume::intent::IntentBitmap;
use crate::wait;
use jobs::JobKind;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use superblock::{LegState, MirrorState, Superblock, FLAG_BITMAP_UNTRUSTED};
use uuid::Uuid;
use volume::{Control, Leg, Mirror, MirrorOptions, ReadPolicy};

pub use jobs::wait_idle;

static MIRRORS: Mutex<Vec<Arc<Mirror>>> = Mutex::new(Vec::new());

/// The running mirror `name`.
pub fn mirror(name: &str) -> Option<Arc<Mirror>> {
    MIRRORS.lock().iter().find(|m| m.name == name).cloned()
}

/// The mirror bdev `bdev` is, or whose point-in-time image it is.
pub fn mirror_of(bdev: &str) -> Option<Arc<Mirror>> {
    MIRRORS
        .lock()
        .iter()
        .find(|m| m.name == bdev || m.pit().is_some_and(|p| p.image_name == bdev))
        .cloned()
}

fn find(name: &str) -> Result<Arc<Mirror>, BdevError> {
    mirror(name).ok_or_else(|| BdevError::NotFound(name.to_string()))
}

/// Drops the mirror from the module's list (it was unregistered).
pub(crate) fn forget(name: &str) {
    MIRRORS.lock().retain(|m| m.name != name);
}

/// Parameters of `bdev_mirror_create`.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub name: String,
    pub primary: String,
    pub secondary: String,
    pub region_size_kb: u64,
    pub scan_chunk_kb: u64,
    pub read_policy: ReadPolicy,
    pub checksum: ChecksumAlg,
    pub scrub_interval_s: u32,
    pub max_bandwidth_mb_sec: u32,
    pub uuid: Option<Uuid>,
    /// Copy the whole primary to the secondary first (false: the legs are known equal,
    /// e.g. both freshly zeroed).
    pub initial_sync: bool,
}

impl CreateOptions {
    pub fn new(name: &str, primary: &str, secondary: &str) -> CreateOptions {
        CreateOptions {
            name: name.into(),
            primary: primary.into(),
            secondary: secondary.into(),
            region_size_kb: 1024,
            scan_chunk_kb: 64,
            read_policy: ReadPolicy::Primary,
            checksum: ChecksumAlg::Crc32c,
            scrub_interval_s: 0,
            max_bandwidth_mb_sec: 0,
            uuid: None,
            initial_sync: true,
        }
    }
}

/// How `bdev_mirror_resume` finds what to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeMode {
    /// The bitmap if it is trusted, else a checksum scan.
    Auto,
    Bitmap,
    Checksum,
}

impl ResumeMode {
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(ResumeMode::Auto),
            "bitmap" => Some(ResumeMode::Bitmap),
            "checksum" => Some(ResumeMode::Checksum),
            _ => None,
        }
    }
}

fn invalid(msg: String) -> BdevError {
    BdevError::Invalid(msg)
}

fn leg_removed(mirror_name: &str, bdev: &str) {
    if let Some(m) = mirror(mirror_name) {
        if let Some(slot) = m.slot_of(bdev) {
            if let Some(b) = m.detach(slot) {
                b.release();
            }
            jobs::persist_in_background(&m);
        }
    }
}

/// The path to a failed leg came back (a remote leg reconnected): resync it from the
/// bitmap, with no operator step. Runs the same steps as `bdev_mirror_add_leg` with the
/// leg's own bdev, on a reactor.
fn leg_returned(mirror_name: &str, bdev: &str) {
    let Some(m) = mirror(mirror_name) else { return };
    let Some(slot) = m.slot_of(bdev) else { return };
    if m.ctl.lock().legs[slot].state != LegState::Failed {
        return;
    }
    let Some(fw) = strata_reactor::framework() else {
        return;
    };
    tracing::info!(mirror = %mirror_name, leg = %bdev, "failed leg is reachable again: resyncing it");
    let (name, leg) = (mirror_name.to_string(), bdev.to_string());
    let started = fw.spawn_on(0, move || async move {
        // A job may still be winding down after the failure; give it a moment.
        for _ in 0..50 {
            let Some(m) = mirror(&name) else { return };
            if !m.job.is_busy() {
                break;
            }
            strata_reactor::sleep(Duration::from_millis(100)).await;
        }
        if let Err(e) = add_leg_from(&name, &leg, true).await {
            tracing::error!(mirror = %name, leg = %leg, error = %e, "automatic resync of the returned leg did not start");
        }
    });
    if let Err(e) = started {
        tracing::error!(mirror = %mirror_name, error = %e, "cannot start the leg's resync");
    }
}

fn open_leg(base: &str, mirror_name: &str) -> Result<Arc<ClaimedBase>, BdevError> {
    let (m, b) = (mirror_name.to_string(), base.to_string());
    Ok(Arc::new(ClaimedBase::open_with_events(
        base,
        mirror_name,
        move |ev| match ev {
            BdevEvent::Remove => leg_removed(&m, &b),
            BdevEvent::PathRestored => leg_returned(&m, &b),
        },
    )?))
}

fn lcm(a: u64, b: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    a / gcd(a, b) * b
}

/// The volume's shape over two legs: (data offset, volume blocks, bitmap bits).
fn shape(
    p: &ClaimedBase,
    s: &ClaimedBase,
    region_blocks: u64,
) -> Result<(u64, u64, u64), BdevError> {
    let bs = p.block_size as u64;
    let unit = [p, s].iter().map(|b| b.write_granule()).fold(1, lcm);
    let leg_blocks = p.num_blocks.min(s.num_blocks);
    let bits_max = leg_blocks.div_ceil(region_blocks);
    if superblock::bitmap_bytes(bits_max) > superblock::MAX_BITMAP_BYTES {
        return Err(invalid(format!(
            "region_size_kb {} is too small for a volume of {leg_blocks} blocks (the bitmap would exceed {} KiB)",
            region_blocks * bs / 1024,
            superblock::MAX_BITMAP_BYTES / 1024
        )));
    }
    let meta =
        superblock::meta_blocks(bits_max, p.block_size).max(superblock::MIN_DATA_OFFSET_BYTES / bs);
    let data_offset = meta.div_ceil(unit) * unit;
    let num_blocks = leg_blocks.saturating_sub(data_offset) / unit * unit;
    if num_blocks == 0 {
        return Err(invalid(format!(
            "legs too small: {leg_blocks} blocks leave no room for data after {data_offset} blocks of metadata"
        )));
    }
    Ok((data_offset, num_blocks, num_blocks.div_ceil(region_blocks)))
}

/// Creates a mirror over two unclaimed bdevs. Runs on a reactor.
pub async fn create(o: CreateOptions) -> Result<Arc<Mirror>, BdevError> {
    if o.name.is_empty() {
        return Err(invalid("name must not be empty".into()));
    }
    if registry::get(&o.name).is_some() {
        return Err(BdevError::Exists(o.name));
    }
    if o.primary == o.secondary {
        return Err(invalid(format!(
            "primary and secondary are the same bdev '{}'",
            o.primary
        )));
    }
    if !o.region_size_kb.is_power_of_two() || !(4..=65536).contains(&o.region_size_kb) {
        return Err(invalid(format!(
            "region_size_kb {} is not a power of two between 4 and 65536",
            o.region_size_kb
        )));
    }
    if !o.scan_chunk_kb.is_power_of_two() || o.scan_chunk_kb > o.region_size_kb {
        return Err(invalid(format!(
            "scan_chunk_kb {} is not a power of two up to region_size_kb ({})",
            o.scan_chunk_kb, o.region_size_kb
        )));
    }
    for leg in [&o.primary, &o.secondary] {
        if registry::get(leg).is_none() {
            return Err(BdevError::NotFound(leg.clone()));
        }
    }
    let p = open_leg(&o.primary, &o.name)?;
    let s = match open_leg(&o.secondary, &o.name) {
        Ok(s) => s,
        Err(e) => {
            p.release();
            return Err(e);
        }
    };
    let release = || {
        p.release();
        s.release();
    };
    let bs = p.block_size;
    if s.block_size != bs {
        release();
        return Err(invalid(format!(
            "legs have different block sizes: {} has {bs}, {} has {}",
            o.primary, o.secondary, s.block_size
        )));
    }
    let region_blocks = o.region_size_kb * 1024 / bs as u64;
    let chunk_blocks = o.scan_chunk_kb * 1024 / bs as u64;
    if region_blocks == 0 || chunk_blocks == 0 {
        release();
        return Err(invalid(format!(
            "region_size_kb and scan_chunk_kb must be at least one block ({bs} bytes)"
        )));
    }
    let (data_offset, num_blocks, bits) = match shape(&p, &s, region_blocks) {
        Ok(x) => x,
        Err(e) => {
            release();
            return Err(e);
        }
    };
    let intent = IntentBitmap::new(1, 0, 1, bits, Vec::new());
    let sec_state = if o.initial_sync {
        intent.set_all();
        intent.hold_bits(true);
        LegState::Resyncing
    } else {
        LegState::InSync
    };
    let leg = |b: &Arc<ClaimedBase>, state| Leg {
        base: Some(b.clone()),
        name: b.name.clone(),
        uuid: b.uuid,
        state,
    };
    let ctl = Control {
        state: if o.initial_sync {
            MirrorState::Resyncing
        } else {
            MirrorState::InSync
        },
        legs: [leg(&p, LegState::InSync), leg(&s, sec_state)],
        primary: 0,
        bitmap_trusted: true,
        opts: MirrorOptions {
            read_policy: o.read_policy,
            checksum: o.checksum,
            scrub_interval_s: o.scrub_interval_s,
            max_bandwidth_mb_sec: o.max_bandwidth_mb_sec,
        },
    };
    let m = Arc::new(Mirror::new(
        o.name.clone(),
        o.uuid.unwrap_or_else(Uuid::new_v4),
        bs,
        num_blocks,
        data_offset,
        region_blocks,
        chunk_blocks,
        ctl,
        intent,
    ));
    // The superblocks go down before the volume exists.
    jobs::persist_all(&m).await;
    if m.state() == MirrorState::Offline || !m.intent.is_durable(m.intent.generation()) {
        release();
        return Err(BdevError::IoFailed(format!(
            "cannot write the mirror superblock to {} and {}",
            o.primary, o.secondary
        )));
    }
    if let Err(e) = registry::register(m.clone()) {
        release();
        return Err(e);
    }
    MIRRORS.lock().push(m.clone());
    tracing::info!(mirror = %m.name, primary = %o.primary, secondary = %o.secondary, num_blocks, data_offset, initial_sync = o.initial_sync, "mirror created");
    start_background(&m);
    if o.initial_sync {
        start_job(&m, JobKind::Resync, false)?;
    }
    Ok(m)
}

fn start_background(m: &Arc<Mirror>) {
    let m = m.clone();
    examine::on_a_reactor(move || jobs::housekeeping(m));
}

fn start_job(m: &Arc<Mirror>, kind: JobKind, repair: bool) -> Result<(), BdevError> {
    let job = jobs::reserve(m, kind, repair).ok_or_else(|| BdevError::Claimed {
        name: m.name.clone(),
        by: "a running mirror job".into(),
    })?;
    let m = m.clone();
    examine::on_a_reactor(move || jobs::run(m, job));
    Ok(())
}

/// Deletes a mirror: stops its job, wipes both legs' superblocks (so it does not
/// re-assemble) and releases the legs. Runs on a reactor.
pub async fn delete(name: &str) -> Result<(), BdevError> {
    let m = find(name)?;
    m.stopping.store(true, Ordering::Release);
    jobs::wait_idle(&m).await;
    let chans: Vec<_> = {
        let c = m.ctl.lock();
        c.legs
            .iter()
            .filter_map(|l| {
                l.base
                    .as_ref()
                    .and_then(|b| b.channel().ok().map(|ch| (ch, b.write_granule())))
            })
            .collect()
    };
    for (ch, unit) in chans {
        // The header, in whole units of the leg (no read-modify-write on a RAID leg).
        let header = (superblock::HEADER_BYTES as u64).div_ceil(m.block_size as u64);
        let blocks = (header.div_ceil(unit) * unit).min(m.data_offset);
        let zero = vec![0u8; (blocks * m.block_size as u64) as usize];
        if let Err(st) = wait::write_slice(&ch, 0, &zero).await {
            tracing::warn!(mirror = %name, leg = %ch.bdev().name(), status = ?st, "could not wipe the mirror superblock");
        }
    }
    registry::unregister(name)?;
    tracing::info!(mirror = %name, "mirror deleted");
    Ok(())
}

/// Splits the mirror: the secondary stops receiving writes; the primary's writes mark the
/// change bitmap. Returns once the new state is on disk.
pub async fn split(name: &str) -> Result<(), BdevError> {
    let m = find(name)?;
    {
        let mut c = m.ctl.lock();
        if c.state != MirrorState::InSync {
            return Err(invalid(format!(
                "mirror {name} is {}, not in_sync: only an in-sync mirror can be split",
                c.state.name()
            )));
        }
        if m.job.is_busy() {
            return Err(BdevError::Claimed {
                name: name.into(),
                by: "a running mirror job".into(),
            });
        }
        let s = c.secondary();
        c.legs[s].state = LegState::Stale;
        c.state = MirrorState::Split;
        m.intent.hold_bits(true);
        m.intent.bump();
        m.refresh(&c);
    }
    jobs::persist_all(&m).await;
    tracing::info!(mirror = %name, "mirror split: secondary paused, changes recorded in the bitmap");
    Ok(())
}

/// Resumes a split (or re-syncs a returned leg): copies the changed regions, or, when the
/// bitmap cannot be trusted or `mode` asks, the chunks whose checksums differ.
pub async fn resume(name: &str, mode: ResumeMode) -> Result<(), BdevError> {
    let m = find(name)?;
    // A snapshot split's image goes first (a running backup of it refuses the resume); the
    // bitmap then holds the regions it still owed and every write since the split.
    if m.job
        .current()
        .is_some_and(|j| j.kind == JobKind::ImageCopy)
        || m.pit().is_some()
    {
        snapshot::drop_image(&m, false).await?;
    }
    let kind = {
        let mut c = m.ctl.lock();
        if m.job.is_busy() {
            return Err(BdevError::Claimed {
                name: name.into(),
                by: "a running mirror job".into(),
            });
        }
        let s = c.secondary();
        let sec = &c.legs[s];
        if sec.base.is_none() {
            return Err(invalid(format!(
                "mirror {name} has no secondary leg to resume (add one with bdev_mirror_add_leg)"
            )));
        }
        if c.legs[c.primary].state != LegState::InSync || sec.state == LegState::InSync {
            return Err(invalid(format!(
                "mirror {name} is {}: nothing to resume",
                c.state.name()
            )));
        }
        let kind = match (mode, c.bitmap_trusted) {
            (ResumeMode::Checksum, _) | (ResumeMode::Auto, false) => JobKind::Scan,
            (ResumeMode::Bitmap | ResumeMode::Auto, true) => JobKind::Resync,
            (ResumeMode::Bitmap, false) => {
                return Err(invalid(format!(
                    "mirror {name}: the change bitmap is not trusted (it was lost); resume with mode checksum or auto"
                )))
            }
        };
        if kind == JobKind::Scan {
            tracing::warn!(mirror = %name, "change bitmap not trusted: resuming with a checksum scan of both legs");
        }
        c.legs[s].state = LegState::Resyncing;
        c.state = MirrorState::Resyncing;
        m.intent.hold_bits(true);
        m.intent.bump();
        m.refresh(&c);
        kind
    };
    jobs::persist_all(&m).await;
    start_job(&m, kind, false)
}

/// Starts a scrub: compares the legs by checksums; with `repair`, copies mismatching
/// chunks from the primary.
pub async fn verify(name: &str, repair: bool) -> Result<(), BdevError> {
    let m = find(name)?;
    let st = m.state();
    if st != MirrorState::InSync {
        return Err(invalid(format!(
            "mirror {name} is {}: only an in-sync mirror can be verified",
            st.name()
        )));
    }
    start_job(&m, JobKind::Scrub, repair)
}

/// Attaches `base` in place of the failed or missing leg and resyncs it: from the bitmap
/// if the bdev carries this mirror's superblock and the bitmap is trusted, else in full.
pub async fn add_leg(name: &str, base: &str) -> Result<(), BdevError> {
    add_leg_from(name, base, false).await
}

/// `add_leg`; `automatic`: the leg came back by itself (examine, a restored path), so a leg
/// that ran on its own (split brain) is refused instead of overwritten.
async fn add_leg_from(name: &str, base: &str, automatic: bool) -> Result<(), BdevError> {
    let m = find(name)?;
    if registry::get(base).is_none() {
        return Err(BdevError::NotFound(base.into()));
    }
    let slot = {
        let c = m.ctl.lock();
        let s = c.secondary();
        if !matches!(c.legs[s].state, LegState::Failed | LegState::Missing)
            || c.legs[c.primary].state != LegState::InSync
        {
            return Err(invalid(format!(
                "mirror {name} has no failed or missing leg to replace"
            )));
        }
        if m.job.is_busy() {
            return Err(BdevError::Claimed {
                name: name.into(),
                by: "a running mirror job".into(),
            });
        }
        s
    };
    // An image read the old secondary: it is gone with it.
    if m.pit().is_some() {
        tracing::warn!(mirror = %name, "the secondary is replaced: the point-in-time image on it is dropped");
        snapshot::drop_image(&m, true).await?;
    }
    // The failed leg's bdev, if still attached, is let go first.
    let old = m.ctl.lock().legs[slot].base.take();
    if let Some(b) = old {
        b.release();
    }
    let b = open_leg(base, name)?;
    if b.block_size != m.block_size || b.num_blocks < m.data_offset + m.num_blocks {
        b.release();
        return Err(invalid(format!(
            "{base} does not fit mirror {name}: needs {} blocks of {} bytes",
            m.data_offset + m.num_blocks,
            m.block_size
        )));
    }
    // A returning leg of this mirror needs only the changes; any other bdev a full copy.
    let sb = match b.channel() {
        Ok(ch) => read_superblock_from(&ch)
            .await
            .filter(|(sb, _, _)| sb.mirror_uuid == m.uuid)
            .map(|(sb, _, _)| sb),
        Err(_) => None,
    };
    let ours = sb.is_some();
    // A returning leg whose own superblock says it held the data while this mirror's other
    // leg was out ran as a mirror of its own (split brain): its changes are not in our
    // bitmap. Brought back by itself it is refused; the operator's add_leg overwrites it.
    if automatic {
        if let Some(sb) = sb.as_ref().filter(|sb| {
            sb.legs[sb.role] == LegState::InSync
                && matches!(sb.legs[1 - sb.role], LegState::Failed | LegState::Missing)
        }) {
            b.release();
            return Err(invalid(format!(
                "split brain: {base} (generation {}) took writes as a mirror of its own while apart; \
                 not resynced automatically. bdev_mirror_add_leg {name} {base} overwrites its changes",
                sb.generation
            )));
        }
    }
    let kind = {
        let mut c = m.ctl.lock();
        let kind = if ours && c.bitmap_trusted {
            JobKind::Resync
        } else if ours {
            JobKind::Scan
        } else {
            m.intent.set_all();
            JobKind::Resync
        };
        c.legs[slot] = Leg {
            base: Some(b.clone()),
            name: base.into(),
            uuid: b.uuid,
            state: LegState::Resyncing,
        };
        c.state = MirrorState::Resyncing;
        m.intent.hold_bits(true);
        m.intent.bump();
        m.refresh(&c);
        kind
    };
    tracing::info!(mirror = %name, leg = %base, returning = ours, job = kind.name(), "leg added");
    jobs::persist_all(&m).await;
    start_job(&m, kind, false)
}

/// Settings changed by `bdev_mirror_set_options` (None: unchanged).
#[derive(Clone, Debug, Default)]
pub struct SetOptions {
    pub read_policy: Option<ReadPolicy>,
    pub scrub_interval_s: Option<u32>,
    pub max_bandwidth_mb_sec: Option<u32>,
}

pub async fn set_options(name: &str, o: SetOptions) -> Result<(), BdevError> {
    let m = find(name)?;
    {
        let mut c = m.ctl.lock();
        if let Some(p) = o.read_policy {
            c.opts.read_policy = p;
        }
        if let Some(s) = o.scrub_interval_s {
            c.opts.scrub_interval_s = s;
        }
        if let Some(b) = o.max_bandwidth_mb_sec {
            c.opts.max_bandwidth_mb_sec = b;
        }
        m.intent.bump();
        m.refresh(&c);
    }
    jobs::persist_all(&m).await;
    Ok(())
}

/// `bdev_mirror_get`: one mirror, or all.
pub fn get(name: Option<&str>) -> Result<Vec<Value>, BdevError> {
    let held: Vec<Value> = SPLIT_BRAIN.lock().values().cloned().collect();
    match name {
        Some(n) => match find(n) {
            Ok(m) => Ok(vec![m.info()]),
            Err(e) => held
                .into_iter()
                .find(|v| v["name"] == n)
                .map(|v| vec![v])
                .ok_or(e),
        },
        None => {
            let mut v: Vec<Value> = MIRRORS.lock().iter().map(|m| m.info()).collect();
            v.extend(held);
            Ok(v)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Examine: re-assembly from the legs' superblocks

struct Candidate {
    bdev: String,
    sb: Superblock,
    /// `None` when the bitmap's CRC failed.
    bitmap: Option<Vec<u64>>,
    /// The split section (`Err`: damaged).
    split: SplitSection,
}

type SplitSection = Result<Option<(superblock::SplitRecord, superblock::SplitMaps)>, String>;

static PENDING: LazyLock<Mutex<HashMap<Uuid, Vec<Candidate>>>> = LazyLock::new(Default::default);
/// Mirrors refused for split brain, as `bdev_mirror_get` shows them.
static SPLIT_BRAIN: LazyLock<Mutex<HashMap<Uuid, Value>>> = LazyLock::new(Default::default);

fn split_brain_info(x: &Candidate, y: &Candidate, why: &str) -> Value {
    let leg = |c: &Candidate| {
        serde_json::json!({
            "name": c.bdev,
            "generation": c.sb.generation,
            "role": volume::role_name(c.sb.role),
            "state": c.sb.legs[c.sb.role].name(),
            "says_other_is": c.sb.legs[1 - c.sb.role].name(),
        })
    };
    serde_json::json!({
        "name": x.sb.name,
        "uuid": x.sb.mirror_uuid.to_string(),
        "state": "split_brain",
        "legs": [leg(x), leg(y)],
        "error": why,
    })
}

/// `bdev_mirror_resolve_split_brain`: brings up the mirror refused for split brain from the
/// leg `keep`; the other leg's changes since the split are overwritten from `keep` (DRBD's
/// discard-my-data on the other side).
pub async fn resolve_split_brain(name: &str, keep: &str) -> Result<(), BdevError> {
    let uuid = SPLIT_BRAIN
        .lock()
        .iter()
        .find(|(_, v)| v["name"] == name)
        .map(|(u, _)| *u)
        .ok_or_else(|| {
            invalid(format!(
                "mirror {name} is not held for split brain (bdev_mirror_get lists such mirrors with state split_brain)"
            ))
        })?;
    let p = {
        let mut pend = PENDING.lock();
        let cands = pend
            .get_mut(&uuid)
            .ok_or_else(|| invalid(format!("the legs of mirror {name} are gone")))?;
        if !cands.iter().any(|c| c.bdev == keep) {
            return Err(invalid(format!("{keep} is not a leg of mirror {name}")));
        }
        let p = plan(cands, true, Some(keep), None)
            .map_err(invalid)?
            .ok_or_else(|| invalid(format!("mirror {name}: {keep} cannot be brought up")))?;
        pend.remove(&uuid);
        SPLIT_BRAIN.lock().remove(&uuid);
        p
    };
    tracing::warn!(mirror = %name, keep, "split brain resolved by the operator: the other leg's changes since the split are overwritten");
    bring_up(p).await
}

/// The module's hooks: re-assembly from superblocks.
pub struct MirrorModule;

impl BdevModule for MirrorModule {
    fn name(&self) -> &'static str {
        "mirror"
    }
    fn examine(&self, bdev: &str) {
        examine::spawn_examine(bdev, |n| async move { examine(&n).await });
    }
    fn finish_examine(&self) {
        finish_examine();
    }
}

async fn read_superblock_from(
    ch: &crate::channel::IoChannel,
) -> Option<(Superblock, Option<Vec<u64>>, SplitSection)> {
    let bs = ch.block_size() as u64;
    let head_blocks = (superblock::HEADER_BYTES as u64).div_ceil(bs);
    if ch.num_blocks() < head_blocks {
        return None;
    }
    let head = wait::read_vec(ch, 0, head_blocks).await.ok()?;
    let sb = match Superblock::decode(&head) {
        Ok(sb) => sb,
        Err(superblock::SbError::NoMagic) => return None,
        Err(e) => {
            tracing::warn!(bdev = %ch.bdev().name(), error = %e, "mirror superblock unusable; ignored");
            return None;
        }
    };
    if sb.block_size as u64 != bs
        || sb
            .data_offset
            .checked_add(sb.num_blocks)
            .is_none_or(|end| ch.num_blocks() < end)
    {
        tracing::warn!(bdev = %ch.bdev().name(), "mirror superblock does not fit this bdev; ignored");
        return None;
    }
    let with_maps = superblock::meta_blocks_with_maps(sb.bits, sb.block_size);
    let blocks = if with_maps <= sb.data_offset {
        with_maps
    } else {
        sb.meta_blocks()
    };
    let meta = wait::read_vec(ch, 0, blocks).await.ok()?;
    let bitmap = sb.decode_bitmap(&meta);
    let split = sb.decode_split(&meta).map_err(|e| e.to_string());
    if bitmap.is_none() {
        tracing::warn!(bdev = %ch.bdev().name(), mirror = %sb.name, "mirror change bitmap damaged (CRC mismatch): it will not be trusted");
    }
    Some((sb, bitmap, split))
}

async fn examine(name: &str) {
    let Some(h) = registry::get(name) else {
        return;
    };
    if h.claimed_by.is_some() {
        return;
    }
    let Ok(desc) = registry::open(name, |_| {}) else {
        return;
    };
    let Ok(ch) = desc.channel() else {
        return;
    };
    let Some((sb, bitmap, split)) = read_superblock_from(&ch).await else {
        return;
    };
    drop(ch);
    drop(desc);
    tracing::info!(bdev = name, mirror = %sb.name, role = volume::role_name(sb.role), generation = sb.generation, state = sb.state.name(), "mirror superblock found");
    // A leg of a running mirror came back: resync it if the mirror is missing it.
    let running = MIRRORS
        .lock()
        .iter()
        .find(|m| m.uuid == sb.mirror_uuid)
        .cloned();
    if let Some(m) = running {
        let name = name.to_string();
        strata_reactor::spawn_local(async move {
            loop {
                if m.stopping.load(Ordering::Acquire) {
                    return;
                }
                if !m.job.is_busy() {
                    match add_leg_from(&m.name, &name, true).await {
                        Err(BdevError::Claimed { .. }) if m.job.is_busy() => {}
                        Err(e) => {
                            tracing::info!(bdev = %name, mirror = %m.name, error = %e, "returning leg not added");
                            return;
                        }
                        Ok(()) => return,
                    }
                }
                strata_reactor::sleep(Duration::from_millis(10)).await;
            }
        })
        .detach();
        return;
    }
    PENDING
        .lock()
        .entry(sb.mirror_uuid)
        .or_default()
        .push(Candidate {
            bdev: name.to_string(),
            sb: sb.clone(),
            bitmap,
            split,
        });
    assemble(sb.mirror_uuid, false).await;
}

/// The plan for bringing up a mirror from its candidates.
struct Plan {
    best: Superblock,
    split: SplitSection,
    /// Bdev per role, and whether the newest superblock trusts it as it says.
    legs: [Option<(String, LegState)>; 2],
    bitmap: Option<Vec<u64>>,
}

/// Two legs each ran the mirror without the other and took writes (split brain): each one's
/// own superblock says it holds the data and the other leg does not. A single running mirror
/// never writes that (it records a failed leg only on the leg that stays), so this means two
/// instances — one per node — were brought up from one leg each.
fn split_brain(cands: &[Candidate]) -> Option<(&Candidate, &Candidate)> {
    let claims = |c: &Candidate| {
        let me = c.sb.role;
        c.sb.legs[me] == LegState::InSync
            && matches!(c.sb.legs[1 - me], LegState::Failed | LegState::Missing)
    };
    let mut it = cands.iter().filter(|c| claims(c));
    let x = it.next()?;
    // (Each instance made its own leg the primary, so both may say role 0.)
    it.find(|y| y.bdev != x.bdev).map(|y| (x, y))
}

fn plan(
    cands: &[Candidate],
    degraded_ok: bool,
    keep: Option<&str>,
    rec: Option<&record::Record>,
) -> Result<Option<Plan>, String> {
    if keep.is_none() {
        if let Some((x, y)) = split_brain(cands) {
            return Err(format!(
                "split brain: legs {} (generation {}) and {} (generation {}) each took writes without the other;                  nothing is brought up. Keep one leg's data and overwrite the other's with                  bdev_mirror_resolve_split_brain {{\"name\": \"{}\", \"keep\": \"{}\" or \"{}\"}}",
                x.bdev, x.sb.generation, y.bdev, y.sb.generation, x.sb.name, x.bdev, y.bdev
            ));
        }
    }
    let best = match keep {
        Some(k) => cands.iter().find(|c| c.bdev == k),
        None => cands.iter().max_by_key(|c| c.sb.generation),
    };
    let Some(best) = best else {
        return Ok(None);
    };
    let b = &best.sb;
    let mut legs: [Option<(String, LegState)>; 2] = [None, None];
    legs[b.role] = Some((best.bdev.clone(), b.legs[b.role]));
    // The other leg: any other candidate with the same shape; its role is what the newest
    // superblock does not hold.
    let other = cands.iter().find(|c| {
        c.bdev != best.bdev
            && (
                c.sb.num_blocks,
                c.sb.data_offset,
                c.sb.region_blocks,
                c.sb.block_size,
            ) == (b.num_blocks, b.data_offset, b.region_blocks, b.block_size)
    });
    let o = 1 - b.role;
    if let Some(c) = other {
        legs[o] = Some((c.bdev.clone(), b.legs[o]));
    }
    if other.is_none() && !degraded_ok {
        return Ok(None);
    }
    // The cluster record wins where it says a leg is out of sync (its superblock may have
    // been lost or rolled back); the bitmap is then not trusted.
    // A record older than the newest superblock missed a change (the store was down): the
    // superblocks know better then.
    let rec = rec.filter(|r| r.generation >= b.generation);
    let mut overridden = false;
    if let (Some(r), None) = (rec, keep) {
        for (name, state) in legs.iter_mut().flatten() {
            match r.leg_state(name) {
                Some(st) if *state == LegState::InSync && st != LegState::InSync => {
                    tracing::warn!(mirror = %b.name, leg = %name, superblock = state.name(), cluster = st.name(), "the cluster store says this leg is out of sync: it is not trusted");
                    *state = st;
                    overridden = true;
                }
                _ => {}
            }
        }
    }
    let lone_state = legs[b.role].as_ref().map(|l| l.1);
    if other.is_none() && lone_state != Some(LegState::InSync) {
        if overridden {
            return Err(format!(
                "leg {} is out of sync by the cluster store's record (generation {}): waiting for the other leg",
                best.bdev,
                rec.map_or(0, |r| r.generation)
            ));
        }
        return Err(format!(
            "leg {} is {} (it does not hold the latest data): waiting for the other leg",
            best.bdev,
            b.legs[b.role].name()
        ));
    }
    // Both legs' bitmaps of the newest generation count; any damaged one means lost.
    let mut bitmap = best.bitmap.clone();
    for c in cands.iter().filter(|c| c.sb.generation == b.generation) {
        match (&mut bitmap, &c.bitmap) {
            (Some(bm), Some(x)) => bm.iter_mut().zip(x).for_each(|(w, x)| *w |= x),
            _ => bitmap = None,
        }
    }
    if b.flags & FLAG_BITMAP_UNTRUSTED != 0
        || overridden
        || rec.is_some_and(|r| r.generation > b.generation)
    {
        bitmap = None;
    }
    // The primary must hold the data: an in-sync leg goes first.
    let in_sync =
        |l: &Option<(String, LegState)>| l.as_ref().is_some_and(|l| l.1 == LegState::InSync);
    if keep.is_none() && !in_sync(&legs[0]) && in_sync(&legs[1]) {
        legs.swap(0, 1);
    }
    if keep.is_some() {
        // The discarded leg's changes since the split are in its own bitmap: copy those
        // regions back from the kept leg too (a damaged bitmap on either side: scan).
        // The kept leg becomes the primary (slot 0); the other is overwritten from it.
        let kept = legs[b.role].take();
        let discarded = legs[o].take().map(|(n, _)| (n, LegState::Failed));
        legs = [kept, discarded];
        if let Some(c) = other {
            match (&mut bitmap, &c.bitmap) {
                (Some(bm), Some(x)) if c.sb.flags & FLAG_BITMAP_UNTRUSTED == 0 => {
                    bm.iter_mut().zip(x).for_each(|(w, x)| *w |= x)
                }
                _ => bitmap = None,
            }
        }
    }
    Ok(Some(Plan {
        best: b.clone(),
        split: best.split.clone(),
        legs,
        bitmap,
    }))
}

async fn assemble(uuid: Uuid, degraded_ok: bool) {
    let rec = match record::read(uuid).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(mirror = %uuid, error = %e, "cluster store unreachable: the mirror is not brought up from superblocks alone");
            return;
        }
    };
    let p = {
        let mut pend = PENDING.lock();
        let Some(cands) = pend.get_mut(&uuid) else {
            return;
        };
        cands.retain(|c| registry::get(&c.bdev).is_some_and(|h| h.claimed_by.is_none()));
        match plan(cands, degraded_ok, None, rec.as_ref()) {
            Ok(Some(p)) => {
                pend.remove(&uuid);
                SPLIT_BRAIN.lock().remove(&uuid);
                p
            }
            Ok(None) => return,
            Err(why) => {
                tracing::error!(mirror = %uuid, "{why}");
                if let Some((x, y)) = split_brain(cands) {
                    SPLIT_BRAIN
                        .lock()
                        .insert(uuid, split_brain_info(x, y, &why));
                }
                return;
            }
        }
    };
    let name = p.best.name.clone();
    if let Err(e) = bring_up(p).await {
        tracing::error!(mirror = %name, error = %e, "mirror assembly failed");
    }
}

async fn bring_up(p: Plan) -> Result<(), BdevError> {
    let b = &p.best;
    let mut legs = [Leg::missing(), Leg::missing()];
    let mut opened = Vec::new();
    for (leg, planned) in legs.iter_mut().zip(&p.legs) {
        let Some((bdev, state)) = planned else {
            continue;
        };
        match open_leg(bdev, &b.name) {
            Ok(c) => {
                opened.push(c.clone());
                *leg = Leg {
                    base: Some(c.clone()),
                    name: bdev.clone(),
                    uuid: c.uuid,
                    state: *state,
                };
            }
            Err(e) => {
                tracing::error!(bdev = %bdev, error = %e, "cannot claim mirror leg");
            }
        }
    }
    let trusted = p.bitmap.is_some();
    let bitmap = p.bitmap.unwrap_or_default();
    let intent = IntentBitmap::new(b.generation, b.generation, 1, b.bits, bitmap);
    let dirty = intent.dirty_count();
    // The primary is the newest superblock's primary if present, else the other leg
    // (plan() only lets a lone leg through if it holds the data).
    // The planned primary holds the data: if it cannot be opened, the other leg may serve
    // only if it is in sync too.
    if p.legs[0].is_some() && legs[0].base.is_none() && legs[1].state != LegState::InSync {
        opened.iter().for_each(|c| c.release());
        return Err(invalid(format!(
            "mirror {}: the leg that holds the data cannot be opened; not brought up",
            b.name
        )));
    }
    let primary = usize::from(legs[0].base.is_none());
    let sec = 1 - primary;
    let sec_present = legs[sec].base.is_some();
    let mut job = None;
    let state = match (b.state, sec_present) {
        (_, false) => {
            if legs[sec].state != LegState::Failed {
                legs[sec].state = LegState::Missing;
            }
            MirrorState::Degraded
        }
        (MirrorState::Split, true) => MirrorState::Split,
        (MirrorState::InSync, true) if trusted && dirty == 0 => MirrorState::InSync,
        // In sync or resyncing at the crash: writes may have reached one leg only, or a
        // copy stopped half way; a leg that failed came back: resync.
        (_, true) => {
            legs[sec].state = LegState::Resyncing;
            job = Some(if trusted {
                JobKind::Resync
            } else {
                tracing::warn!(mirror = %b.name, "change bitmap lost: the resync falls back to a checksum scan of both legs");
                JobKind::Scan
            });
            MirrorState::Resyncing
        }
    };
    if state != MirrorState::InSync {
        intent.hold_bits(true);
    }
    intent.bump();
    let ctl = Control {
        state,
        legs,
        primary,
        bitmap_trusted: trusted,
        opts: MirrorOptions {
            read_policy: if b.read_policy == 1 {
                ReadPolicy::Balance
            } else {
                ReadPolicy::Primary
            },
            checksum: if b.checksum == 1 {
                ChecksumAlg::Sha256
            } else {
                ChecksumAlg::Crc32c
            },
            scrub_interval_s: b.scrub_interval_s,
            max_bandwidth_mb_sec: b.max_bandwidth_mb_sec,
        },
    };
    let m = Arc::new(Mirror::new(
        b.name.clone(),
        b.mirror_uuid,
        b.block_size,
        b.num_blocks,
        b.data_offset,
        b.region_blocks,
        b.scan_chunk_blocks,
        ctl,
        intent,
    ));
    // Before the mirror takes writes (their change-map bits must not be replaced) and before
    // the first metadata write (which writes the split section from memory).
    snapshot::restore(&m, p.split);
    if let Err(e) = registry::register(m.clone()) {
        opened.iter().for_each(|c| c.release());
        return Err(e);
    }
    MIRRORS.lock().push(m.clone());
    tracing::info!(mirror = %b.name, generation = b.generation, state = state.name(), dirty_regions = dirty, bitmap_trusted = trusted, "mirror assembled from superblocks");
    jobs::persist_all(&m).await;
    start_background(&m);
    if let Some(kind) = job {
        start_job(&m, kind, false)?;
    }
    Ok(())
}

/// End of examine (`bdev_wait_for_examine`, end of `--json` load): waits for examine reads
/// to finish, then brings up mirrors that can run on one leg.
fn finish_examine() {
    examine::assemble_pending(|| PENDING.lock().keys().copied().collect(), assemble);
}
