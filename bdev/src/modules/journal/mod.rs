//! `journal`: dual redundancy. A *protected volume group* keeps a mirrored journal (the
//! second scheme: two journal bdevs holding the same log) and a backup repository; each
//! *protected volume* in it is a bdev over a base (the first scheme, usually a RAID-5 or
//! RAID-6). Every write lands in the base and, as a journal record, in both journal legs,
//! and is acknowledged when both schemes have it. The group keeps a catalog of its volumes
//! (the blueprint of their bases, their attributes, their last backups) and per-volume
//! deltas (the undrained records). A drain copies the deltas to the repository as
//! incremental backups (the first drain of a volume takes a full one) and trims the
//! journal; when a base fails beyond its redundancy, a rebuild recreates it from the
//! catalog, restores the last backup chain and replays the journal.
//!
//! Map: [`format`] the on-disk layout of a leg; [`catalog`] the skeleton; [`log`] space,
//! order, header and scan of the log; [`append`] group commit (one appender per reactor);
//! [`volume`] the volume bdev and its I/O path; [`drain`] and [`rebuild`] the jobs. This file
//! holds the group itself, the management operations and re-assembly from the legs.

pub mod append;
pub mod catalog;
pub mod drain;
pub mod format;
pub mod log;
pub mod rebuild;
pub mod volume;

use crate::backup;
use crate::error::BdevError;
use crate::module::BdevModule;
use crate::modules::base::ClaimedBase;
use crate::registry;
use crate::volume::examine;
use crate::volume::job::{JobSlot, Progress};
use crate::wait;
use catalog::{BaseLayout, Catalog, DrainPolicy, VolumeEntry};
use format::LegState;
use log::{HeaderSync, Index, LogState};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use uuid::Uuid;
use volume::ProtectedVolume;

/// One journal leg of a group.
pub struct Leg {
    pub base: Option<Arc<ClaimedBase>>,
    pub name: String,
    pub uuid: Uuid,
    pub state: LegState,
}

/// A protected volume group.
pub struct Group {
    pub name: String,
    pub uuid: Uuid,
    pub block_size: u32,
    /// The log's first block on each leg and its length in blocks.
    pub log_start: u64,
    pub log_blocks: u64,
    pub legs: Mutex<[Leg; 2]>,
    pub epoch: AtomicU64,
    /// Bumped by every leg failure (the header records which version it shows).
    pub legs_version: AtomicU64,
    /// Pins ids (each pin's bounds live in the log state).
    pub next_pin: AtomicU64,
    pub log: Mutex<LogState>,
    pub index: Mutex<Index>,
    pub header: Mutex<HeaderSync>,
    pub catalog: Mutex<Catalog>,
    pub volumes: Mutex<Vec<Arc<ProtectedVolume>>>,
    pub stopping: AtomicBool,
    pub drain: JobSlot<drain::DrainJob>,
    /// A drain was asked for while one ran: another follows it.
    pub drain_again: AtomicBool,
    pub last_drain: Mutex<Option<Value>>,
    pub resync: JobSlot<Progress>,
    pub backpressure_waits: AtomicU64,
    pub last_full_warning: Mutex<Option<Instant>>,
    pub appended_records: AtomicU64,
    pub appended_batches: AtomicU64,
    pub appended_bytes: AtomicU64,
    /// Records found damaged on one leg (the other's copy used), and on both.
    pub damaged_repaired: AtomicU64,
    pub damaged_lost: AtomicU64,
    pub drains_done: AtomicU64,
}

static GROUPS: Mutex<Vec<Arc<Group>>> = Mutex::new(Vec::new());

pub fn group(name: &str) -> Option<Arc<Group>> {
    GROUPS.lock().iter().find(|g| g.name == name).cloned()
}

fn find_group(name: &str) -> Result<Arc<Group>, BdevError> {
    group(name).ok_or_else(|| BdevError::NotFound(format!("journal group {name}")))
}

/// The protected volume named `name`, and its group.
pub fn volume(name: &str) -> Option<Arc<ProtectedVolume>> {
    GROUPS
        .lock()
        .iter()
        .flat_map(|g| g.volumes.lock().clone())
        .find(|v| v.name == name)
}

fn find_volume(name: &str) -> Result<Arc<ProtectedVolume>, BdevError> {
    volume(name).ok_or_else(|| BdevError::NotFound(format!("protected volume {name}")))
}

fn invalid(s: String) -> BdevError {
    BdevError::Invalid(s)
}

/// Where a bdev is exported, as the NVMe-oF layer knows it (the bdev layer cannot ask it).
pub type ExportLookup = fn(&str) -> Vec<catalog::Export>;
static EXPORTS: Mutex<Option<ExportLookup>> = Mutex::new(None);

/// Set by the target at start-up: the catalog then records each volume's subsystem and
/// namespace.
pub fn set_export_lookup(f: ExportLookup) {
    *EXPORTS.lock() = Some(f);
}

/// Refreshes the export entries of the catalog; whether any changed.
fn refresh_exports(g: &Group) -> bool {
    let Some(f) = *EXPORTS.lock() else {
        return false;
    };
    let mut c = g.catalog.lock();
    let mut next = c.clone();
    let mut changed = false;
    for v in next.volumes.iter_mut() {
        let e = f(&v.name);
        if e != v.export {
            v.export = e;
            changed = true;
        }
    }
    if changed && catalog_fits(&next).is_ok() {
        *c = next;
        return true;
    }
    false
}

/// Parameters of `bdev_journal_group_create`.
#[derive(Clone, Debug)]
pub struct GroupOptions {
    pub name: String,
    pub journal_bdevs: [String; 2],
    pub repository: String,
    pub drain: DrainPolicy,
    pub create_repository: bool,
}

/// The smallest log: twice the largest batch (a batch may take at most half the log, so
/// one that skips to the next lap always fits once the log is drained).
fn min_log_bytes(bs: u32) -> u64 {
    2 * (format::header_blocks(format::MAX_BATCH_RECORDS, bs) as u64 * bs as u64
        + append::MAX_BATCH_DATA)
}

/// Keeps the records a job reads in place (a rebuild's or a replay's, a leg resync's
/// copy) from being trimmed while it lives: a trim never moves the tail past a pin.
pub struct TailPin {
    g: Arc<Group>,
    id: u64,
}

impl TailPin {
    /// Only records from `loc`'s batch on are needed any more (none: `None`).
    pub fn narrow_to(&self, loc: Option<&log::RecordLoc>) {
        let mut st = self.g.log.lock();
        match loc {
            Some(r) => st.move_pin(self.id, r.batch_pos, r.batch_seq),
            None => st.drop_pin(self.id),
        }
    }
}

impl Drop for TailPin {
    fn drop(&mut self) {
        self.g.log.lock().drop_pin(self.id);
    }
}

impl Group {
    /// Pins the records from the current tail on (the trim's lock and this one are the
    /// same: a trim under way has moved the tail before, or moves it after, never past).
    pub fn pin_tail(self: &Arc<Self>) -> TailPin {
        let id = self.next_pin.fetch_add(1, Ordering::Relaxed);
        self.log.lock().add_pin(id);
        TailPin {
            g: self.clone(),
            id,
        }
    }
}

/// Largest catalog (JSON) a header slot takes, with room to spare.
const MAX_CATALOG: usize = format::MAX_BODY - 4096;

fn catalog_fits(c: &Catalog) -> Result<(), BdevError> {
    let n = c.to_bytes().len();
    if n > MAX_CATALOG {
        return Err(invalid(format!(
            "the catalog would need {n} bytes; it holds at most {MAX_CATALOG} (fewer volumes or attributes)"
        )));
    }
    Ok(())
}

fn leg_removed(group_name: &str, bdev: &str) {
    let Some(g) = group(group_name) else { return };
    let idx = {
        let mut legs = g.legs.lock();
        let i = legs.iter().position(|l| l.name == bdev);
        if let Some(i) = i {
            if let Some(b) = legs[i].base.take() {
                b.release();
            }
        }
        i
    };
    if let Some(i) = idx {
        g.fail_leg(i, "the leg bdev was removed");
        let g2 = g.clone();
        examine::on_a_reactor(move || async move {
            let _ = g2.persist_header().await;
        });
    }
}

fn open_leg(bdev: &str, group_name: &str) -> Result<Arc<ClaimedBase>, BdevError> {
    let (gn, b) = (group_name.to_string(), bdev.to_string());
    Ok(Arc::new(ClaimedBase::open_with(
        bdev,
        &format!("journal group {group_name}"),
        move || leg_removed(&gn, &b),
    )?))
}

fn base_removed(volume_name: &str) {
    if let Some(v) = volume(volume_name) {
        if let Some(b) = v.base.write().take() {
            b.release();
        }
        v.epoch.fetch_add(1, Ordering::AcqRel);
        if v.state() == volume::ONLINE {
            v.go_offline("its base bdev was removed");
        }
    }
}

fn open_base(bdev: &str, volume_name: &str) -> Result<Arc<ClaimedBase>, BdevError> {
    let vn = volume_name.to_string();
    Ok(Arc::new(ClaimedBase::open_with(
        bdev,
        volume_name,
        move || base_removed(&vn),
    )?))
}

/// The layout of bdev `name` for the catalog: a RAID's level, strip and members, or a
/// plain bdev.
fn layout_of(name: &str) -> BaseLayout {
    let uuid = registry::get(name)
        .map(|h| h.bdev.uuid().to_string())
        .unwrap_or_default();
    match crate::modules::raid::array(name) {
        Some(a) => BaseLayout {
            bdev: name.into(),
            uuid,
            kind: "raid".into(),
            level: Some(a.level().name().into()),
            strip_size_kb: Some(a.geo.strip * a.block_size as u64 / 1024),
            members: a.slots.read().iter().map(|s| s.name.clone()).collect(),
            member_blocks: Some(a.geo.member_blocks + a.data_offset),
        },
        None => BaseLayout {
            bdev: name.into(),
            uuid,
            kind: "bdev".into(),
            level: None,
            strip_size_kb: None,
            members: Vec::new(),
            member_blocks: None,
        },
    }
}

fn check_leg(name: &str) -> Result<(u32, u64), BdevError> {
    let h = registry::get(name).ok_or_else(|| BdevError::NotFound(name.into()))?;
    if let Some(by) = &h.claimed_by {
        return Err(BdevError::Claimed {
            name: name.into(),
            by: by.clone(),
        });
    }
    Ok((h.bdev.block_size(), h.bdev.num_blocks()))
}

/// Reads the newest valid header slot of a bdev, if it holds one.
async fn read_header(ch: &crate::IoChannel) -> Option<(format::SlotHeader, format::HeaderBody)> {
    let bs = ch.block_size() as u64;
    if !(512..=4096).contains(&bs) || ch.num_blocks() * bs < format::LOG_START_BYTES {
        return None;
    }
    let mut best: Option<(format::SlotHeader, format::HeaderBody)> = None;
    for slot in [0, format::SLOT_BYTES] {
        let lba = slot / bs;
        let Ok(first) = wait::read_vec(ch, lba, 1).await else {
            continue;
        };
        if !format::has_magic(&first) {
            continue;
        }
        let len = format::slot_len(&first) as u64;
        let Ok(raw) = wait::read_vec(ch, lba, len.div_ceil(bs)).await else {
            continue;
        };
        match format::decode_slot(&raw) {
            Ok((h, b)) => {
                if best
                    .as_ref()
                    .is_none_or(|(bh, _)| h.generation > bh.generation)
                {
                    best = Some((h, b));
                }
            }
            Err(e) => {
                tracing::warn!(bdev = %ch.bdev().name(), slot, error = %e, "journal header slot unusable")
            }
        }
    }
    best
}

#[allow(clippy::too_many_arguments)]
fn new_group(
    name: &str,
    uuid: Uuid,
    bs: u32,
    log_blocks: u64,
    legs: [Leg; 2],
    log: LogState,
    catalog: Catalog,
    generation: u64,
) -> Arc<Group> {
    Arc::new(Group {
        name: name.into(),
        uuid,
        block_size: bs,
        log_start: format::LOG_START_BYTES / bs as u64,
        log_blocks,
        legs: Mutex::new(legs),
        epoch: AtomicU64::new(0),
        legs_version: AtomicU64::new(0),
        next_pin: AtomicU64::new(1),
        log: Mutex::new(log),
        index: Mutex::new(Index::default()),
        header: Mutex::new(HeaderSync {
            generation,
            ..Default::default()
        }),
        catalog: Mutex::new(catalog),
        volumes: Mutex::new(Vec::new()),
        stopping: AtomicBool::new(false),
        drain: JobSlot::default(),
        drain_again: AtomicBool::new(false),
        last_drain: Mutex::new(None),
        resync: JobSlot::default(),
        backpressure_waits: AtomicU64::new(0),
        last_full_warning: Mutex::new(None),
        appended_records: AtomicU64::new(0),
        appended_batches: AtomicU64::new(0),
        appended_bytes: AtomicU64::new(0),
        damaged_repaired: AtomicU64::new(0),
        damaged_lost: AtomicU64::new(0),
        drains_done: AtomicU64::new(0),
    })
}

/// `bdev_journal_group_create`: formats the two journal bdevs and makes the group.
pub async fn create_group(o: GroupOptions) -> Result<(), BdevError> {
    if !backup::repo::valid_id(&o.name) {
        return Err(invalid(format!(
            "group name '{}': letters, digits, '-', '_' and '.' only, not leading '.'",
            o.name
        )));
    }
    if group(&o.name).is_some() {
        return Err(BdevError::Exists(format!("journal group {}", o.name)));
    }
    let [a, b] = &o.journal_bdevs;
    if a == b {
        return Err(invalid("the two journal bdevs must differ".into()));
    }
    if o.drain.fill_percent > 100 {
        return Err(invalid(format!(
            "drain_fill_percent {} is over 100",
            o.drain.fill_percent
        )));
    }
    let ck = o.drain.chunk_size / 1024;
    if !ck.is_power_of_two() || !(4..=65536).contains(&ck) {
        return Err(invalid(format!(
            "chunk_kb {ck} is not a power of two between 4 and 65536"
        )));
    }
    let (bs_a, nb_a) = check_leg(a)?;
    let (bs_b, nb_b) = check_leg(b)?;
    if bs_a != bs_b {
        return Err(invalid(format!(
            "journal bdevs {a} and {b} have different block sizes ({bs_a} and {bs_b})"
        )));
    }
    let bs = bs_a;
    if !(512..=4096).contains(&bs) {
        return Err(invalid(format!(
            "journal block size {bs}: 512 to 4096 bytes"
        )));
    }
    let bytes = nb_a.min(nb_b) * bs as u64;
    let need = format::LOG_START_BYTES + min_log_bytes(bs);
    if bytes < need {
        return Err(invalid(format!(
            "the journal bdevs hold {bytes} bytes, less than one record batch needs ({need}: 256 KiB of headers and a {} KiB log)",
            min_log_bytes(bs) / 1024
        )));
    }
    if o.drain.chunk_size < bs as u64 {
        return Err(invalid("chunk_kb is smaller than a block".into()));
    }
    let repo = backup::open_repository(&o.repository, o.create_repository).await?;
    // A bdev that holds a group's journal already is not formatted over.
    for leg in [a, b] {
        let d = registry::open(leg, |_| {})?;
        let ch = d.channel()?;
        if let Some((_, body)) = read_header(&ch).await {
            return Err(BdevError::Exists(format!(
                "{leg} holds the journal of group {} already (delete that group first, or let it assemble)",
                body.catalog.group
            )));
        }
    }
    if o.repository
        .strip_prefix("bdev:")
        .is_some_and(|r| r == a || r == b)
    {
        return Err(invalid("the repository cannot be a journal bdev".into()));
    }
    let uuid = Uuid::new_v4();
    let log_blocks = bytes / bs as u64 - format::LOG_START_BYTES / bs as u64;
    let la = open_leg(a, &o.name)?;
    let lb = match open_leg(b, &o.name) {
        Ok(x) => x,
        Err(e) => {
            la.release();
            return Err(e);
        }
    };
    let legs = [la, lb].map(|base| Leg {
        name: base.name.clone(),
        uuid: base.uuid,
        base: Some(base),
        state: LegState::Ok,
    });
    let catalog = Catalog::new(
        &o.name,
        &uuid.to_string(),
        bs,
        log_blocks,
        &o.repository,
        o.drain,
    );
    let g = new_group(
        &o.name,
        uuid,
        bs,
        log_blocks,
        legs,
        LogState::new(0, 1, 1),
        catalog,
        0,
    );
    if let Err(e) = g.persist_header().await {
        release_legs(&g);
        return Err(e);
    }
    // The repository holds the catalog from the start: the layout can be recreated from it.
    let (r2, name, raw) = (repo.clone(), o.name.clone(), g.catalog.lock().to_bytes());
    backup::offload(move || r2.put_catalog(&name, &raw)).await?;
    GROUPS.lock().push(g.clone());
    start_housekeeping(&g);
    tracing::info!(group = %o.name, legs = ?o.journal_bdevs, repository = %o.repository, log_mib = (log_blocks * bs as u64) >> 20, "journal group created");
    Ok(())
}

fn release_legs(g: &Group) {
    let mut legs = g.legs.lock();
    release_leg_bases(&legs);
    for l in legs.iter_mut() {
        l.base = None;
    }
}

fn release_leg_bases(legs: &[Leg; 2]) {
    for b in legs.iter().flat_map(|l| l.base.as_ref()) {
        b.release();
    }
}

/// `bdev_journal_group_delete`: the group must hold no volumes. Its journal headers are
/// wiped (the legs are free bdevs again); the repository is left as it is.
pub async fn delete_group(name: &str) -> Result<(), BdevError> {
    let g = find_group(name)?;
    if !g.volumes.lock().is_empty() {
        return Err(BdevError::Claimed {
            name: format!("journal group {name}"),
            by: "its protected volumes (delete them first)".into(),
        });
    }
    g.stopping.store(true, Ordering::Release);
    if let Some(j) = g.drain.current() {
        j.progress.cancel();
    }
    let bs = g.block_size as u64;
    for ch in g.leg_channels().into_iter().flatten() {
        let z = vec![0u8; (format::LOG_START_BYTES) as usize];
        let _ = wait::write_slice(&ch, 0, &z[..(format::LOG_START_BYTES / bs * bs) as usize]).await;
    }
    release_legs(&g);
    GROUPS.lock().retain(|x| !Arc::ptr_eq(x, &g));
    tracing::info!(group = %name, "journal group deleted");
    Ok(())
}

/// Takes a group down without touching its legs (the target is shutting down, or a test
/// plays a crash): its volumes are unregistered and its legs released; the group
/// re-assembles from the legs when they are examined again.
pub fn stop_group(name: &str) -> Result<(), BdevError> {
    let g = find_group(name)?;
    g.stopping.store(true, Ordering::Release);
    if let Some(j) = g.drain.current() {
        j.progress.cancel();
    }
    if let Some(j) = g.resync.current() {
        j.cancel();
    }
    let vols = std::mem::take(&mut *g.volumes.lock());
    for v in vols {
        if let Some(j) = v.rebuild.current() {
            j.cancel();
        }
        let _ = registry::unregister(&v.name);
    }
    release_legs(&g);
    g.wake_all();
    GROUPS.lock().retain(|x| !Arc::ptr_eq(x, &g));
    tracing::info!(group = %name, "journal group stopped");
    Ok(())
}

/// `bdev_journal_volume_create`: a protected volume over `base`.
pub async fn create_volume(
    group_name: &str,
    name: &str,
    base: &str,
    attributes: BTreeMap<String, String>,
) -> Result<(), BdevError> {
    let g = find_group(group_name)?;
    if name.is_empty() || name.len() > 255 {
        return Err(invalid("volume name must be 1 to 255 bytes".into()));
    }
    if registry::get(name).is_some() || g.catalog.lock().by_name(name).is_some() {
        return Err(BdevError::Exists(name.into()));
    }
    let h = registry::get(base).ok_or_else(|| BdevError::NotFound(base.into()))?;
    if h.bdev.block_size() != g.block_size {
        return Err(invalid(format!(
            "base {base} has {}-byte blocks, the group's journal {}: they must match",
            h.bdev.block_size(),
            g.block_size
        )));
    }
    if !h.bdev.supports(crate::IoType::Write) {
        return Err(invalid(format!("base {base} does not take writes")));
    }
    if g.journal_lost() {
        return Err(BdevError::IoFailed(format!(
            "group {group_name} has no journal leg left"
        )));
    }
    let cbase = open_base(base, name)?;
    let id = {
        let mut c = g.catalog.lock();
        let id = c.next_volume_id;
        c.next_volume_id += 1;
        c.volumes.push(VolumeEntry {
            id,
            name: name.into(),
            uuid: Uuid::new_v4().to_string(),
            block_size: g.block_size,
            num_blocks: cbase.num_blocks,
            base: layout_of(base),
            export: Vec::new(),
            attributes,
            backup: None,
            created: backup::now().0,
            rebuilding: false,
        });
        c.updated = backup::now().0;
        if let Err(e) = catalog_fits(&c) {
            c.volumes.retain(|v| v.id != id);
            drop(c);
            cbase.release();
            return Err(e);
        }
        id
    };
    // The catalog is durable in the journal before the volume takes a write.
    if let Err(e) = append::append_catalog(&g).await {
        g.catalog.lock().volumes.retain(|v| v.id != id);
        cbase.release();
        return Err(e);
    }
    let v = make_volume(&g, id, Some(cbase))?;
    v.state.store(volume::ONLINE, Ordering::Release);
    if let Err(e) = registry::register(v.clone()) {
        g.volumes.lock().retain(|x| x.id != id);
        return Err(e);
    }
    tracing::info!(group = %group_name, volume = %name, base, id, "protected volume created");
    // Its first drain takes the full backup a rebuild starts from.
    drain::request(&g, "new volume");
    Ok(())
}

fn make_volume(
    g: &Arc<Group>,
    id: u32,
    base: Option<Arc<ClaimedBase>>,
) -> Result<Arc<ProtectedVolume>, BdevError> {
    let e = g
        .catalog
        .lock()
        .volume(id)
        .cloned()
        .ok_or_else(|| BdevError::NotFound(format!("volume id {id}")))?;
    let zeroes = base
        .as_ref()
        .is_none_or(|b| b.supports(crate::IoType::WriteZeroes));
    let v = Arc::new(ProtectedVolume {
        name: e.name.clone(),
        uuid: Uuid::parse_str(&e.uuid).unwrap_or_else(|_| Uuid::new_v4()),
        id,
        block_size: e.block_size,
        num_blocks: e.num_blocks,
        group: g.clone(),
        base: parking_lot::RwLock::new(base),
        epoch: AtomicU64::new(0),
        state: AtomicU8::new(volume::NO_BASE),
        reason: Mutex::new(String::new()),
        rebuild: JobSlot::default(),
        last_rebuild: Mutex::new(None),
        zeroes,
    });
    g.volumes.lock().push(v.clone());
    Ok(v)
}

/// `bdev_journal_volume_delete`: unregisters the volume (its base is released, untouched)
/// and drops it from the catalog.
pub async fn delete_volume(name: &str) -> Result<(), BdevError> {
    let v = find_volume(name)?;
    if v.rebuild.is_busy() {
        return Err(BdevError::Claimed {
            name: name.into(),
            by: "a running rebuild".into(),
        });
    }
    let g = v.group.clone();
    let _ = registry::unregister(name);
    g.volumes.lock().retain(|x| !Arc::ptr_eq(x, &v));
    g.catalog.lock().volumes.retain(|e| e.id != v.id);
    append::append_catalog(&g).await?;
    tracing::info!(group = %g.name, volume = %name, "protected volume deleted");
    Ok(())
}

/// `bdev_journal_volume_set_attributes`: sets (or, with a null value, removes) user
/// attributes; journaled with the catalog.
pub async fn set_attributes(
    name: &str,
    set: BTreeMap<String, Option<String>>,
) -> Result<(), BdevError> {
    let v = find_volume(name)?;
    let g = v.group.clone();
    for k in set.keys() {
        if k.is_empty() || k.len() > 255 {
            return Err(invalid("attribute names must be 1 to 255 bytes".into()));
        }
    }
    let old = {
        let mut c = g.catalog.lock();
        let e = c
            .volume_mut(v.id)
            .ok_or_else(|| BdevError::NotFound(name.into()))?;
        let old = e.attributes.clone();
        for (k, val) in set {
            match val {
                Some(x) => {
                    e.attributes.insert(k, x);
                }
                None => {
                    e.attributes.remove(&k);
                }
            }
        }
        old
    };
    let fits = catalog_fits(&g.catalog.lock());
    if let Err(e) = fits {
        if let Some(e) = g.catalog.lock().volume_mut(v.id) {
            e.attributes = old;
        }
        return Err(e);
    }
    append::append_catalog(&g).await
}

/// `bdev_journal_group_get`.
pub fn get(name: Option<&str>) -> Result<Vec<Value>, BdevError> {
    let gs: Vec<Arc<Group>> = match name {
        Some(n) => vec![find_group(n)?],
        None => GROUPS.lock().clone(),
    };
    Ok(gs.iter().map(|g| g.info()).collect())
}

/// `bdev_journal_volume_get`.
pub fn get_volumes(name: Option<&str>) -> Result<Vec<Value>, BdevError> {
    match name {
        Some(n) => Ok(vec![find_volume(n)?.info()]),
        None => Ok(GROUPS
            .lock()
            .iter()
            .flat_map(|g| g.volumes.lock().clone())
            .map(|v| v.info())
            .collect()),
    }
}

impl Group {
    pub fn info(&self) -> Value {
        let (head, tail, frontier_seq, run) = {
            let st = self.log.lock();
            (st.head, st.tail, st.frontier_seq, st.run)
        };
        let (undrained, oldest) = {
            let ix = self.index.lock();
            (ix.records.len(), ix.oldest)
        };
        let c = self.catalog.lock().clone();
        let legs: Vec<Value> = self
            .legs
            .lock()
            .iter()
            .enumerate()
            .map(|(i, l)| {
                json!({
                    "slot": i,
                    "name": l.name,
                    "uuid": l.uuid.to_string(),
                    "state": l.state.name(),
                    "present": l.base.is_some(),
                })
            })
            .collect();
        let bs = self.block_size as u64;
        let vols: Vec<Value> = self.volumes.lock().iter().map(|v| v.info()).collect();
        json!({
            "name": self.name,
            "uuid": self.uuid.to_string(),
            "block_size": self.block_size,
            "repository": c.repository,
            "journal": {
                "legs": legs,
                "size_bytes": self.log_blocks * bs,
                "used_bytes": (head - tail) * bs,
                "fill_percent": ((head - tail) as f64 * 1000.0 / self.log_blocks as f64).round() / 10.0,
                "undrained_records": undrained,
                "oldest_undrained_age_seconds": oldest.map(|t| (t.elapsed().as_secs_f64() * 10.0).round() / 10.0),
                "next_sequence": frontier_seq,
                "run": run,
                "appended_records": self.appended_records.load(Ordering::Relaxed),
                "appended_batches": self.appended_batches.load(Ordering::Relaxed),
                "appended_bytes": self.appended_bytes.load(Ordering::Relaxed),
                "backpressure_waits": self.backpressure_waits.load(Ordering::Relaxed),
                "damaged_records_repaired": self.damaged_repaired.load(Ordering::Relaxed),
                "damaged_records_lost": self.damaged_lost.load(Ordering::Relaxed),
                "resync": self.resync.current().map(|p| p.report().json(p.kind)),
            },
            "drain_policy": {
                "fill_percent": c.drain.fill_percent,
                "max_age_seconds": c.drain.max_age_secs,
                "chunk_kb": c.drain.chunk_size / 1024,
                "max_bandwidth_mb_sec": c.drain.max_bandwidth_mb_sec,
            },
            "drain": self.drain.current().map(|j| j.info()),
            "last_drain": self.last_drain.lock().clone(),
            "drains_done": self.drains_done.load(Ordering::Relaxed),
            "volumes": vols,
        })
    }
}

/// `bdev_journal_group_set_options`: the drain conditions.
pub fn set_policy(
    name: &str,
    fill_percent: Option<u32>,
    max_age_secs: Option<u64>,
    max_bandwidth_mb_sec: Option<u32>,
) -> Result<(), BdevError> {
    let g = find_group(name)?;
    if fill_percent.is_some_and(|f| f > 100) {
        return Err(invalid("drain_fill_percent is over 100".into()));
    }
    let mut c = g.catalog.lock();
    if let Some(f) = fill_percent {
        c.drain.fill_percent = f;
    }
    if let Some(a) = max_age_secs {
        c.drain.max_age_secs = a;
    }
    if let Some(b) = max_bandwidth_mb_sec {
        c.drain.max_bandwidth_mb_sec = b;
    }
    Ok(())
}

// ---- background ----

fn start_housekeeping(g: &Arc<Group>) {
    let g = g.clone();
    examine::on_a_reactor(move || housekeeping(g));
}

/// Once a second: the drain conditions, and the bases' health.
async fn housekeeping(g: Arc<Group>) {
    loop {
        strata_reactor::sleep(Duration::from_secs(1)).await;
        if g.stopping.load(Ordering::Acquire) {
            return;
        }
        for v in g.volumes.lock().iter() {
            if v.state() != volume::ONLINE {
                continue;
            }
            if let Some(b) = v.base_name() {
                if crate::modules::raid::array(&b).is_some_and(|a| a.is_offline()) {
                    v.go_offline(&format!(
                        "its base {b} is offline (failed beyond its redundancy)"
                    ));
                }
            }
        }
        let (fill_at, age) = {
            let c = g.catalog.lock();
            (c.drain.fill_percent, c.drain.max_age_secs)
        };
        let oldest = g.index.lock().oldest;
        if fill_at > 0 && g.fill_percent() >= fill_at as f64 {
            drain::request(&g, "journal fill");
        } else if age > 0 && oldest.is_some_and(|t| t.elapsed() >= Duration::from_secs(age)) {
            drain::request(&g, "record age");
        } else if refresh_exports(&g) {
            let _ = append::append_catalog(&g).await;
        }
    }
}

// ---- journal legs ----

/// `bdev_journal_group_replace_leg`: puts `new_bdev` in place of a failed (or missing)
/// leg and resyncs it from the other leg while writes go on.
pub async fn replace_leg(name: &str, new_bdev: &str) -> Result<(), BdevError> {
    let g = find_group(name)?;
    let (bs, nb) = check_leg(new_bdev)?;
    if bs != g.block_size {
        return Err(invalid(format!(
            "{new_bdev} has {bs}-byte blocks, the journal {}",
            g.block_size
        )));
    }
    if nb < g.log_start + g.log_blocks {
        return Err(invalid(format!(
            "{new_bdev} has {nb} blocks; the journal needs {}",
            g.log_start + g.log_blocks
        )));
    }
    let slot = {
        let legs = g.legs.lock();
        let ok = legs
            .iter()
            .filter(|l| l.state == LegState::Ok && l.base.is_some())
            .count();
        if ok == 0 {
            return Err(BdevError::IoFailed(format!(
                "group {name} has no good journal leg to resync from"
            )));
        }
        legs.iter()
            .position(|l| l.state != LegState::Ok || l.base.is_none())
            .ok_or_else(|| invalid(format!("both journal legs of group {name} are fine")))?
    };
    if g.resync.is_busy() {
        return Err(BdevError::Claimed {
            name: name.into(),
            by: "a running leg resync".into(),
        });
    }
    let base = open_leg(new_bdev, name)?;
    {
        let mut legs = g.legs.lock();
        if let Some(old) = legs[slot].base.take() {
            old.release();
        }
        legs[slot] = Leg {
            name: base.name.clone(),
            uuid: base.uuid,
            base: Some(base),
            state: LegState::Resyncing,
        };
    }
    g.epoch.fetch_add(1, Ordering::AcqRel);
    g.header.lock().failed = false;
    g.persist_header().await?;
    let job = g
        .resync
        .reserve(|| Progress::new("leg_resync", Some(new_bdev.to_string()), 0))
        .ok_or_else(|| BdevError::Claimed {
            name: name.into(),
            by: "a running leg resync".into(),
        })?;
    let g2 = g.clone();
    examine::on_a_reactor(move || async move {
        let res = resync_leg(&g2, slot, &job).await;
        match res {
            Ok(()) => {
                // Only if no write failed on it meanwhile (that made it Failed).
                let done = {
                    let mut legs = g2.legs.lock();
                    let ok = legs[slot].state == LegState::Resyncing;
                    if ok {
                        legs[slot].state = LegState::Ok;
                    }
                    ok
                };
                g2.epoch.fetch_add(1, Ordering::AcqRel);
                if !done {
                    tracing::error!(group = %g2.name, leg = slot, "the new journal leg failed during its resync: replace it again");
                    g2.resync.release();
                    return;
                }
                let _ = g2.persist_header().await;
                tracing::info!(group = %g2.name, leg = slot, secs = job.started.elapsed().as_secs_f64(), "journal leg resynced");
            }
            Err(e) => {
                g2.fail_leg(slot, &e.to_string());
                let _ = g2.persist_header().await;
                tracing::error!(group = %g2.name, leg = slot, error = %e, "journal leg resync failed");
            }
        }
        g2.resync.release();
    });
    tracing::info!(group = %name, leg = slot, bdev = new_bdev, "journal leg replaced: resync started");
    Ok(())
}

/// Copies the live part of the log to the leg in `slot`. Batches reserved from now on are
/// written to it too; the copy covers everything before them.
async fn resync_leg(g: &Arc<Group>, slot: usize, job: &Progress) -> Result<(), BdevError> {
    // No trim while the copy runs: new batches never land on blocks still to be copied.
    let _pin = g.pin_tail();
    let head = g.log.lock().head;
    g.wait_frontier(head).await;
    let tail = g.log.lock().tail;
    let (src, dst) = {
        let chans = g.leg_channels();
        let readable = g.readable_legs();
        (readable[1 - slot].clone(), chans[slot].clone())
    };
    let (Some(src), Some(dst)) = (src, dst) else {
        return Err(BdevError::IoFailed("a journal leg went away".into()));
    };
    job.set_total((head - tail) * g.block_size as u64);
    let step = (1u64 << 20) / g.block_size as u64;
    let mut run = crate::volume::job::JobRun::new(job);
    let mut pos = tail;
    while pos < head {
        // Never across the end of a lap.
        let lap_left = g.log_blocks - pos % g.log_blocks;
        let n = step.min(head - pos).min(lap_left);
        let d = wait::read_vec(&src, g.phys(pos), n)
            .await
            .map_err(|st| BdevError::IoFailed(format!("reading the good leg: {st:?}")))?;
        wait::write_slice(&dst, g.phys(pos), &d)
            .await
            .map_err(|st| BdevError::IoFailed(format!("writing the new leg: {st:?}")))?;
        pos += n;
        if run.step(n * g.block_size as u64, 0).await.is_err() || g.stopping.load(Ordering::Acquire)
        {
            return Err(BdevError::IoFailed("resync stopped".into()));
        }
    }
    Ok(())
}

// ---- re-assembly ----

struct Candidate {
    bdev: String,
    header: format::SlotHeader,
    body: format::HeaderBody,
}

static PENDING: LazyLock<Mutex<HashMap<Uuid, Vec<Candidate>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

pub struct JournalModule;

impl BdevModule for JournalModule {
    fn name(&self) -> &'static str {
        "journal"
    }
    fn examine(&self, bdev: &str) {
        examine::spawn_examine(bdev, |n| async move { examine_bdev(&n).await });
    }
    fn finish_examine(&self) {
        examine::assemble_pending(
            || PENDING.lock().keys().copied().collect(),
            |u, _| async move { assemble(u).await },
        );
        // Volumes whose base did not come: offline with the reason.
        for g in GROUPS.lock().iter() {
            for v in g.volumes.lock().iter() {
                if v.state() == volume::NO_BASE {
                    *v.reason.lock() = "its base bdev is missing: rebuild it".into();
                    v.state.store(volume::OFFLINE, Ordering::Release);
                }
            }
        }
    }
}

async fn examine_bdev(name: &str) {
    // A base a volume waits for?
    let waiting: Option<Arc<ProtectedVolume>> = GROUPS
        .lock()
        .iter()
        .flat_map(|g| g.volumes.lock().clone())
        .find(|v| {
            v.state() == volume::NO_BASE
                && v.group
                    .catalog
                    .lock()
                    .volume(v.id)
                    .is_some_and(|e| e.base.bdev == name)
        });
    if let Some(v) = waiting {
        attach_base(&v, name).await;
        return;
    }
    let Some(h) = registry::get(name) else { return };
    if h.claimed_by.is_some() {
        return;
    }
    let Ok(desc) = registry::open(name, |_| {}) else {
        return;
    };
    let Ok(ch) = desc.channel() else { return };
    let Some((header, body)) = read_header(&ch).await else {
        return;
    };
    drop(ch);
    drop(desc);
    let uuid = header.uuid;
    if GROUPS.lock().iter().any(|g| g.uuid == uuid) {
        tracing::warn!(bdev = name, group = %body.catalog.group, "bdev holds a journal leg of a running group: not used (replace the failed leg with it to resync it)");
        return;
    }
    tracing::info!(bdev = name, group = %body.catalog.group, leg = header.leg, generation = header.generation, "found a journal leg");
    let ready = {
        let mut p = PENDING.lock();
        let c = p.entry(uuid).or_default();
        c.retain(|x| x.bdev != name);
        c.push(Candidate {
            bdev: name.into(),
            header,
            body,
        });
        let newest = c
            .iter()
            .max_by_key(|x| x.header.generation)
            .map(|x| x.body.legs.clone());
        newest.is_some_and(|legs| {
            legs.iter()
                .filter(|l| l.state == LegState::Ok)
                .all(|l| c.iter().any(|x| x.bdev == l.bdev))
        })
    };
    if ready {
        assemble(uuid).await;
    }
}

/// Brings up a group from the legs found: the newest header, the scan of the log, the
/// catalog (the newest in the log, else the header's), then its volumes.
async fn assemble(uuid: Uuid) {
    let Some(cands) = PENDING.lock().remove(&uuid) else {
        return;
    };
    let Some(newest) = cands.iter().max_by_key(|c| c.header.generation) else {
        return;
    };
    let body = newest.body.clone();
    let generation = newest.header.generation;
    let gname = body.catalog.group.clone();
    if group(&gname).is_some() {
        tracing::error!(group = %gname, "a journal group of that name runs already: legs not assembled");
        return;
    }
    let bs = body.catalog.block_size;
    // The legs, as the newest header says; one it says failed (or missing) is not used.
    let mut legs: [Leg; 2] = [0, 1].map(|i| Leg {
        base: None,
        name: body.legs[i].bdev.clone(),
        uuid: Uuid::parse_str(&body.legs[i].uuid).unwrap_or_default(),
        state: LegState::Failed,
    });
    for (i, leg) in legs.iter_mut().enumerate() {
        let rec = &body.legs[i];
        if rec.state != LegState::Ok || !cands.iter().any(|c| c.bdev == rec.bdev) {
            continue;
        }
        match open_leg(&rec.bdev, &gname) {
            Ok(b) => {
                leg.base = Some(b);
                leg.state = LegState::Ok;
            }
            Err(e) => {
                tracing::error!(group = %gname, bdev = %rec.bdev, error = %e, "journal leg not opened")
            }
        }
    }
    let start = Start {
        name: gname,
        uuid,
        bs,
        log_blocks: body.log_blocks,
        tail: body.tail,
        tail_seq: body.tail_seq,
        degraded: legs.iter().filter(|l| l.base.is_some()).count() < 2,
        max_run: body.run,
        header_run: body.run,
        catalog: body.catalog.clone(),
        generation,
    };
    if let Err(e) = bring_up(start, legs).await {
        tracing::error!(group = %body.catalog.group, error = %e, "journal group not assembled");
    }
}

/// What a group is brought up from: a header (re-assembly) or the repository's catalog
/// (recovery after the loss of the machine's metadata).
struct Start {
    name: String,
    uuid: Uuid,
    bs: u32,
    log_blocks: u64,
    tail: u64,
    tail_seq: u64,
    /// Assembled from one leg: it may be a stale one (failed, then back while the good one
    /// is missing): checked against the repository's catalog.
    degraded: bool,
    /// Batches of later runs than this are not taken.
    max_run: u32,
    /// The run the header names (0: unknown, a recovery): the new run is past it and past
    /// every run the scan saw.
    header_run: u32,
    catalog: Catalog,
    generation: u64,
}

/// Scans the log from the start point, takes the newest catalog, writes the new run to the
/// header, registers the group and its volumes (attaching the bases present).
async fn bring_up(s: Start, legs: [Leg; 2]) -> Result<Arc<Group>, BdevError> {
    let gname = s.name.clone();
    let chans: [Option<crate::IoChannel>; 2] =
        [0, 1].map(|i| legs[i].base.as_ref().and_then(|b| b.channel().ok()));
    if chans.iter().all(|c| c.is_none()) {
        release_leg_bases(&legs);
        return Err(BdevError::IoFailed(format!(
            "group {gname}: no usable journal leg"
        )));
    }
    let log_start = format::LOG_START_BYTES / s.bs as u64;
    let scan = log::scan(
        &chans,
        &s.uuid,
        s.bs,
        log_start,
        s.log_blocks,
        s.tail,
        s.tail_seq,
        s.max_run,
    )
    .await;
    // The newer of the copy we start from and the newest journal record: a drain writes its
    // catalog to the header only, so the record may be the older one.
    let catalog = match scan.catalog.as_deref().map(Catalog::parse) {
        Some(Ok(c)) if c.revision >= s.catalog.revision => c,
        Some(Ok(_)) | None => s.catalog.clone(),
        Some(Err(e)) => {
            tracing::error!(group = %gname, error = %e, "the journal's newest catalog record is unusable: the older copy is used");
            s.catalog.clone()
        }
    };
    if s.degraded {
        // A leg that failed keeps an old header saying all is well. The repository's catalog
        // names the last drain's point, which a good leg always holds (a drain cuts at
        // records durable on it): a leg whose log ends before that point missed writes.
        let (repo, name) = (catalog.repository.clone(), gname.clone());
        let newer = backup::offload(move || {
            let r = backup::repo::Repository::open(&repo)?;
            Ok(r.catalog(&name)?.and_then(|raw| Catalog::parse(&raw).ok()))
        })
        .await;
        if let Ok(Some(rc)) = newer {
            if rc.group_uuid == catalog.group_uuid
                && rc.drained.seq.max(rc.drained.point_seq) > scan.next_seq
            {
                release_leg_bases(&legs);
                return Err(BdevError::Invalid(format!(
                    "group {gname}: the only journal leg present is stale (its log ends at record {}, the repository was drained up to {}); bring the other leg back, or recover the group from the repository",
                    scan.next_seq, rc.drained.seq.max(rc.drained.point_seq)
                )));
            }
        }
    }
    let run = s.header_run.max(scan.max_run).saturating_add(1);
    // The scan ended at the head: a batch header left there (cut by the crash) must not be
    // read as the next batch if the next one skips to the next lap.
    // A full log's head is its tail: that block is the first batch, not a leftover.
    if scan.head - s.tail < s.log_blocks {
        let zero = vec![0u8; s.bs as usize];
        for ch in chans.iter().flatten() {
            let at = log_start + scan.head % s.log_blocks;
            if let Err(st) = wait::write_slice(ch, at, &zero).await {
                tracing::warn!(group = %gname, status = ?st, "clearing the block at the log's head failed");
            }
        }
    }
    // Sequence numbers are never reused: the backups say which records they hold by number,
    // so a record numbered at or below a backup's would be skipped by a replay. An empty log
    // (its records drained, or blank legs after a recovery) starts after every backup.
    let needed = catalog
        .volumes
        .iter()
        .filter_map(|v| v.backup.as_ref().map(|b| b.seq + 1))
        .fold(catalog.drained.point_seq.max(catalog.drained.seq), u64::max);
    let first_seq = if scan.head == s.tail && needed > s.tail_seq {
        tracing::info!(group = %gname, from = s.tail_seq, to = needed, "empty log: sequence numbers continue after the backups");
        needed
    } else {
        if scan.next_seq < needed {
            tracing::error!(group = %gname, log_ends_at = scan.next_seq, backups_reach = needed, "the journal's records end before the backups' point: records written now could be taken as already drained");
        }
        s.tail_seq
    };
    let mut st = LogState::new(s.tail, first_seq, run);
    st.head = scan.head;
    st.next_seq = scan.next_seq.max(first_seq);
    st.frontier = scan.head;
    st.frontier_seq = st.next_seq;
    let g = new_group(
        &gname,
        s.uuid,
        s.bs,
        s.log_blocks,
        legs,
        st,
        catalog,
        s.generation,
    );
    {
        let mut ix = g.index.lock();
        for r in &scan.records {
            ix.push(*r, s.bs);
        }
    }
    g.damaged_repaired.store(scan.repaired, Ordering::Relaxed);
    // The new run is on disk before anything is appended.
    if let Err(e) = g.persist_header().await {
        release_legs(&g);
        return Err(e);
    }
    tracing::info!(group = %gname, batches = scan.batches, records = scan.records.len(), dropped_after_torn = scan.dropped_after_torn, repaired = scan.repaired, run, "journal group up from its legs");
    if scan.dropped_after_torn > 0 {
        tracing::warn!(group = %gname, batches = scan.dropped_after_torn, "batches after a torn one were dropped (never acknowledged)");
    }
    GROUPS.lock().push(g.clone());
    let ids: Vec<(u32, String)> = g
        .catalog
        .lock()
        .volumes
        .iter()
        .map(|v| (v.id, v.base.bdev.clone()))
        .collect();
    for (id, base) in ids {
        let v = match make_volume(&g, id, None) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(group = %gname, id, error = %e, "volume not brought up");
                continue;
            }
        };
        *v.reason.lock() = format!("waiting for its base {base}");
        if let Err(e) = registry::register(v.clone()) {
            tracing::error!(group = %gname, volume = %v.name, error = %e, "volume not registered");
            g.volumes.lock().retain(|x| !Arc::ptr_eq(x, &v));
            continue;
        }
        if registry::get(&base).is_some() {
            attach_base(&v, &base).await;
        }
    }
    start_housekeeping(&g);
    Ok(g)
}

/// `bdev_journal_group_recover`: brings a group back after the loss of the machine's
/// metadata (the journal headers, the target's configuration, the RAID superblocks): the
/// layout from the repository's copy of the catalog, the records after its drain point from
/// the journal legs (blank legs give the state of the last drain). Volumes whose bases are
/// not there come up offline, to be rebuilt.
pub async fn recover_group(
    name: &str,
    journal_bdevs: [String; 2],
    repository: &str,
) -> Result<(), BdevError> {
    if group(name).is_some() {
        return Err(BdevError::Exists(format!("journal group {name}")));
    }
    let r = backup::open_repository(repository, false).await?;
    let (r2, n2) = (r.clone(), name.to_string());
    let raw = backup::offload(move || r2.catalog(&n2))
        .await?
        .ok_or_else(|| BdevError::NotFound(format!("a catalog of group {name} in {repository}")))?;
    let catalog = Catalog::parse(&raw)
        .map_err(|e| invalid(format!("the repository's catalog of {name}: {e}")))?;
    let uuid = Uuid::parse_str(&catalog.group_uuid).map_err(|_| {
        invalid(format!(
            "the repository's catalog of {name} has no group uuid"
        ))
    })?;
    if journal_bdevs[0] == journal_bdevs[1] {
        return Err(invalid("the two journal bdevs must differ".into()));
    }
    let need = catalog.log_blocks + format::LOG_START_BYTES / catalog.block_size as u64;
    for leg in &journal_bdevs {
        let (bs, nb) = check_leg(leg)?;
        if bs != catalog.block_size || nb < need {
            return Err(invalid(format!(
                "{leg} does not fit the journal's geometry ({} blocks of {} bytes)",
                need, catalog.block_size
            )));
        }
        let d = registry::open(leg, |_| {})?;
        let ch = d.channel()?;
        if let Some((h, body)) = read_header(&ch).await {
            return Err(BdevError::Exists(if h.uuid == uuid {
                format!("{leg} holds this group's journal header: the group assembles from its legs (bdev_examine)")
            } else {
                format!("{leg} holds the journal of group {}", body.catalog.group)
            }));
        }
    }
    let mut legs_v = Vec::new();
    for leg in &journal_bdevs {
        match open_leg(leg, name) {
            Ok(b) => legs_v.push(b),
            Err(e) => {
                for b in legs_v {
                    b.release();
                }
                return Err(e);
            }
        }
    }
    // Slots of an older header could outrank the new ones: none is left.
    for b in &legs_v {
        if let Ok(ch) = b.channel() {
            let z = vec![0u8; format::LOG_START_BYTES as usize];
            let _ = wait::write_slice(&ch, 0, &z).await;
        }
    }
    let legs: [Leg; 2] = [0, 1].map(|i| Leg {
        name: legs_v[i].name.clone(),
        uuid: legs_v[i].uuid,
        base: Some(legs_v[i].clone()),
        state: LegState::Ok,
    });
    let start = Start {
        name: name.into(),
        uuid,
        bs: catalog.block_size,
        log_blocks: catalog.log_blocks,
        tail: catalog.drained.tail,
        tail_seq: catalog.drained.seq.max(1),
        degraded: false,
        max_run: u32::MAX - 1,
        header_run: 0,
        catalog: catalog.clone(),
        generation: 0,
    };
    let g = bring_up(start, legs).await?;
    tracing::warn!(group = %name, repository, volumes = g.volumes.lock().len(), "journal group recovered from the repository's catalog and the journal");
    // Volumes without a base are offline now (not waiting for an examine).
    for v in g.volumes.lock().iter() {
        if v.state() == volume::NO_BASE {
            *v.reason.lock() = "recovered from the repository: rebuild it".into();
            v.state.store(volume::OFFLINE, Ordering::Release);
        }
    }
    Ok(())
}

/// Claims a volume's base after a restart, brings it up to date with the journal's
/// undrained records (redo: a write whose base half was cut by the crash), and puts the
/// volume online.
async fn attach_base(v: &Arc<ProtectedVolume>, base: &str) {
    if v.state() != volume::NO_BASE {
        return;
    }
    let entry = v.group.catalog.lock().volume(v.id).cloned();
    if entry.as_ref().is_some_and(|e| e.rebuilding) {
        *v.reason.lock() = "a rebuild was cut short: run bdev_journal_volume_rebuild again".into();
        v.state.store(volume::OFFLINE, Ordering::Release);
        tracing::error!(volume = %v.name, base, "a rebuild of this volume was interrupted: its base is not used; rebuild again");
        return;
    }
    let uuid_now = registry::get(base).map(|h| h.bdev.uuid().to_string());
    if let (Some(e), Some(u)) = (&entry, &uuid_now) {
        // Only a RAID keeps its uuid across restarts (in its superblock); plain bdevs get
        // a new one each time they are created.
        if e.base.kind == "raid" && !e.base.uuid.is_empty() && &e.base.uuid != u {
            *v.reason.lock() = format!(
                "{base} is not the base the catalog names (uuid {u}, not {})",
                e.base.uuid
            );
            v.state.store(volume::OFFLINE, Ordering::Release);
            tracing::error!(volume = %v.name, base, "a bdev of the base's name with another uuid: not used");
            return;
        }
    }
    let b = match open_base(base, &v.name) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(volume = %v.name, base, error = %e, "base not claimed");
            return;
        }
    };
    if b.block_size != v.block_size || b.num_blocks < v.num_blocks {
        tracing::error!(volume = %v.name, base, "base does not fit the volume (block size or size changed): volume offline");
        b.release();
        *v.reason.lock() = format!("its base {base} does not fit it");
        v.state.store(volume::OFFLINE, Ordering::Release);
        return;
    }
    if crate::modules::raid::array(base).is_some_and(|a| a.is_offline()) {
        v.set_base(Some(b));
        *v.reason.lock() = format!("its base {base} is offline (failed beyond its redundancy)");
        v.state.store(volume::OFFLINE, Ordering::Release);
        tracing::error!(volume = %v.name, base, "base is offline: rebuild the volume");
        return;
    }
    v.set_base(Some(b.clone()));
    let pin = v.group.pin_tail();
    let recs = v.group.index.lock().volume_records(v.id, u64::MAX);
    pin.narrow_to(recs.first());
    let n = recs.len();
    match rebuild::replay(v, &b, &recs, None).await {
        Ok(()) => {
            v.state.store(volume::ONLINE, Ordering::Release);
            tracing::info!(volume = %v.name, base, replayed = n, "protected volume online");
        }
        Err(e) => {
            *v.reason.lock() = format!("replaying the journal onto {base} failed: {e}");
            v.state.store(volume::OFFLINE, Ordering::Release);
            tracing::error!(volume = %v.name, base, error = %e, "protected volume offline");
        }
    }
}
