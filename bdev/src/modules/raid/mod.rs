//! `raid`: RAID volumes over base bdevs — raid0, concat, raid1 (n legs), raid5 (rotating
//! left-symmetric parity, n ≥ 3) and raid6 (P+Q, n ≥ 4) — with SPDK's `bdev_raid_*` RPCs.
//!
//! Map: [`geometry`] places blocks on members; [`channel`] is the per-reactor fast path;
//! [`stripe`] the locked, reconstructing slow path (RMW/RCW writes, degraded I/O);
//! [`locks`] the stripe locks; [`superblock`] and [`meta`] the on-member metadata (member
//! states, generation, write-intent bitmap); [`process`] rebuild, resync and bitmap
//! clearing; [`array`] the volume itself. This file holds the management operations and
//! the examine step that re-assembles arrays from their superblocks when members appear.

pub mod array;
pub mod channel;
pub mod geometry;

pub mod process;
pub mod stripe;
pub mod superblock;

use crate::error::BdevError;
use crate::io::{BdevIo, IoType};
use crate::module::BdevModule;
use crate::modules::base::ClaimedBase;
use crate::registry;
use crate::volume::examine;
use crate::volume::intent::IntentBitmap as Meta;
use crate::wait;
use array::{Array, Slot};
use channel::RaidChannel;
use geometry::{Geometry, Level};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use superblock::{MemberState, Superblock, MAX_MEMBERS};
use uuid::Uuid;

/// Module options (`bdev_raid_set_options`).
#[derive(Clone, Copy, Debug)]
pub struct RaidOptions {
    pub process_window_size_kb: u64,
    /// Rebuild and resync rate limit; 0 = unlimited.
    pub process_max_bandwidth_mb_sec: u64,
}

static OPTIONS: Mutex<RaidOptions> = Mutex::new(RaidOptions {
    process_window_size_kb: 1024,
    process_max_bandwidth_mb_sec: 0,
});

pub fn options() -> RaidOptions {
    *OPTIONS.lock()
}

pub fn set_options(o: RaidOptions) {
    *OPTIONS.lock() = o;
}

static ARRAYS: Mutex<Vec<Arc<Array>>> = Mutex::new(Vec::new());

fn find(name: &str) -> Option<Arc<Array>> {
    ARRAYS.lock().iter().find(|a| a.name == name).cloned()
}

/// Drops the array from the module's list (it was unregistered).
pub(crate) fn forget(name: &str) {
    ARRAYS.lock().retain(|a| a.name != name);
}

/// Parameters of `bdev_raid_create`.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub name: String,
    pub level: Level,
    /// 0: the default (64 KiB; raid1 and concat accept 0).
    pub strip_size_kb: u64,
    pub base_bdevs: Vec<String>,
    pub uuid: Option<Uuid>,
    pub superblock: bool,
}

const DEFAULT_STRIP_KB: u64 = 64;

/// Called (on any thread) when a member bdev is removed from under the array.
fn member_removed(array_name: &str, slot: usize) {
    if let Some(a) = find(array_name) {
        if let Some(b) = a.detach(slot) {
            b.release();
        }
        sync_in_background(&a);
    }
}

/// Persists the metadata from a reactor task (callers off the data path).
fn sync_in_background(a: &Arc<Array>) {
    let a = a.clone();
    examine::on_a_reactor(move || async move { RaidChannel::new(a).persist().await });
}

fn open_member(base: &str, array: &str, slot: usize) -> Result<Arc<ClaimedBase>, BdevError> {
    let a = array.to_string();
    Ok(Arc::new(ClaimedBase::open_with(base, array, move || {
        member_removed(&a, slot)
    })?))
}

fn geometry(
    level: Level,
    strip: u64,
    members: &[Arc<ClaimedBase>],
    data_offset: u64,
) -> Result<Geometry, BdevError> {
    let usable = |b: &ClaimedBase| b.num_blocks.saturating_sub(data_offset) / strip * strip;
    let member_blocks = members.iter().map(|b| usable(b)).min().unwrap_or(0);
    let concat: Vec<u64> = if level == Level::Concat {
        members.iter().map(|b| usable(b)).collect()
    } else {
        Vec::new()
    };
    if member_blocks == 0 {
        return Err(BdevError::Invalid(format!(
            "base bdevs are too small: each needs at least one strip ({strip} blocks) after {data_offset} metadata blocks"
        )));
    }
    Ok(Geometry {
        level,
        members: members.len(),
        strip,
        member_blocks,
        concat,
    })
}

/// Creates a RAID volume. Runs on a reactor.
pub async fn create(opts: CreateOptions) -> Result<Arc<Array>, BdevError> {
    let n = opts.base_bdevs.len();
    let level = opts.level;
    if opts.name.is_empty() {
        return Err(BdevError::Invalid("name must not be empty".into()));
    }
    if registry::get(&opts.name).is_some() {
        return Err(BdevError::Exists(opts.name));
    }
    if n < level.min_members() || n > MAX_MEMBERS {
        return Err(BdevError::Invalid(format!(
            "{} needs {} to {MAX_MEMBERS} base bdevs, got {n}",
            level.name(),
            level.min_members()
        )));
    }
    for (i, b) in opts.base_bdevs.iter().enumerate() {
        if opts.base_bdevs[..i].contains(b) {
            return Err(BdevError::Invalid(format!("base bdev {b} is listed twice")));
        }
    }
    let strip_kb = match opts.strip_size_kb {
        0 if matches!(level, Level::Raid1 | Level::Concat) => DEFAULT_STRIP_KB,
        0 => {
            return Err(BdevError::Invalid(format!(
                "strip_size_kb is required for {}",
                level.name()
            )))
        }
        k => k,
    };
    let mut bases = Vec::with_capacity(n);
    for (slot, b) in opts.base_bdevs.iter().enumerate() {
        bases.push(open_member(b, &opts.name, slot)?);
    }
    let release = |bases: &[Arc<ClaimedBase>]| bases.iter().for_each(|b| b.release());
    let bs = bases[0].block_size;
    if let Some(b) = bases.iter().find(|b| b.block_size != bs) {
        release(&bases);
        return Err(BdevError::Invalid(format!(
            "base bdevs differ in block size ({} has {}, {} has {bs})",
            b.name, b.block_size, bases[0].name
        )));
    }
    let strip_bytes = strip_kb.checked_mul(1024).unwrap_or(0);
    if strip_bytes == 0 || strip_bytes % bs as u64 != 0 || !strip_kb.is_power_of_two() {
        release(&bases);
        return Err(BdevError::Invalid(format!(
            "strip_size_kb {strip_kb} must be a power of two and a multiple of the block size ({bs} bytes)"
        )));
    }
    let strip = strip_bytes / bs as u64;
    let data_offset = if opts.superblock {
        superblock::data_offset_blocks(bs)
    } else {
        0
    };
    let geo = match geometry(level, strip, &bases, data_offset) {
        Ok(g) => g,
        Err(e) => {
            release(&bases);
            return Err(e);
        }
    };
    let meta = opts.superblock.then(|| {
        let rs = superblock::region_stripes(geo.stripes());
        let bits = geo.stripes().div_ceil(rs);
        Meta::new(1, 0, rs, bits, Vec::new())
    });
    if !opts.superblock && level.has_redundancy() {
        tracing::warn!(raid = %opts.name, "created without superblock: no write-intent bitmap, no re-assembly after restart");
    }
    let slots = bases
        .iter()
        .map(|b| Slot {
            name: b.name.clone(),
            uuid: Some(b.uuid),
            base: Some(b.clone()),
            state: MemberState::Active,
        })
        .collect();
    let array = Arc::new(Array::new(
        opts.name.clone(),
        opts.uuid.unwrap_or_else(Uuid::new_v4),
        geo,
        bs,
        data_offset,
        slots,
        meta,
    ));
    let ch = RaidChannel::new(array.clone());
    if level.has_redundancy() {
        // Start from consistent redundancy: zero data and parity areas.
        if let Err(e) = zero_members(&ch).await {
            release(&bases);
            return Err(e);
        }
    }
    if array.superblock {
        ch.sync_meta(1).await;
        if array.is_offline() {
            release(&bases);
            return Err(BdevError::IoFailed("writing superblocks failed".into()));
        }
    }
    if let Err(e) = registry::register(array.clone()) {
        release(&bases);
        return Err(e);
    }
    ARRAYS.lock().push(array.clone());
    start_background(&array, None);
    tracing::info!(raid = %array.name, level = level.name(), members = n, strip_kb, blocks = array.geo.num_blocks(), "RAID volume created");
    Ok(array)
}

async fn zero_members(ch: &RaidChannel) -> Result<(), BdevError> {
    let a = &ch.array;
    for slot in 0..a.geo.members {
        let Some(m) = ch.member(slot) else {
            continue;
        };
        let len = a
            .geo
            .concat
            .get(slot)
            .copied()
            .unwrap_or(a.geo.member_blocks);
        let mut off = 0;
        while off < len {
            // Bounded pieces: a huge zeroing I/O would hold a file bdev's slot for long.
            let n = (len - off).min(1 << 18);
            let io = BdevIo::new(IoType::WriteZeroes, a.data_offset + off, n);
            let st = if m.bdev().supports(IoType::WriteZeroes) {
                wait::submit_wait(&m, io).await.status
            } else {
                let z = vec![0u8; (n.min(32) * a.block_size as u64) as usize];
                let mut st = crate::io::IoStatus::Success;
                let mut o = 0;
                while o < n && st.is_success() {
                    let k = (n - o).min(32);
                    st = match wait::write_slice(
                        &m,
                        a.data_offset + off + o,
                        &z[..(k * a.block_size as u64) as usize],
                    )
                    .await
                    {
                        Ok(()) => crate::io::IoStatus::Success,
                        Err(s) => s,
                    };
                    o += k;
                }
                st
            };
            if !st.is_success() {
                return Err(BdevError::IoFailed(format!(
                    "zeroing base bdev in slot {slot} failed: {st:?}"
                )));
            }
            off += n;
        }
    }
    Ok(())
}

/// Starts the array's background jobs: bitmap clearing, a resync of dirty regions, and a
/// rebuild of `rebuild_slot`.
fn start_background(array: &Arc<Array>, rebuild_slot: Option<usize>) {
    let a = array.clone();
    examine::on_a_reactor(move || async move {
        if a.meta.is_some() {
            strata_reactor::spawn_local(process::clear_idle_regions(a.clone())).detach();
            process::resync(a.clone()).await;
        }
        if let Some(slot) = rebuild_slot {
            let target = a.slots.read()[slot].name.clone();
            if a.begin_process("rebuild", Some(target)) {
                process::rebuild(a, slot).await;
            }
        }
    });
}

/// Deletes a RAID volume. Members of an array with superblocks have them wiped, so the
/// array does not re-assemble. Runs on a reactor.
pub async fn delete(name: &str) -> Result<(), BdevError> {
    let a = find(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    a.stopping.store(true, Ordering::Release);
    if a.superblock {
        let ch = RaidChannel::new(a.clone());
        for slot in 0..a.geo.members {
            if let Some(m) = ch.member(slot) {
                let _ = wait::no_data(&m, IoType::WriteZeroes, 0, 1).await;
                if !m.bdev().supports(IoType::WriteZeroes) {
                    let z = vec![0u8; a.block_size as usize];
                    let _ = wait::write_slice(&m, 0, &z).await;
                }
            }
        }
    }
    registry::unregister(name)
}

/// Adds `base` to the array in place of a failed or missing member and starts rebuilding
/// it. Runs on a reactor.
pub async fn add_base_bdev(raid: &str, base: &str) -> Result<(), BdevError> {
    let a = find(raid).ok_or_else(|| BdevError::NotFound(raid.to_string()))?;
    if !a.level().has_redundancy() {
        return Err(BdevError::Unsupported(format!(
            "adding a member to {} ({})",
            a.name,
            a.level().name()
        )));
    }
    if a.is_offline() {
        return Err(BdevError::Invalid(format!("{} is offline", a.name)));
    }
    // Reserved before anything changes: one job per array (they share the cursor).
    if !a.begin_process("rebuild", Some(base.to_string())) {
        return Err(BdevError::Claimed {
            name: a.name.clone(),
            by: "a running rebuild or resync".into(),
        });
    }
    let attach = || {
        let slot = {
            let slots = a.slots.read();
            slots
                .iter()
                .position(|s| matches!(s.state, MemberState::Missing | MemberState::Failed))
                .ok_or_else(|| {
                    BdevError::Invalid(format!("{} has no failed or missing member", a.name))
                })?
        };
        let b = open_member(base, &a.name, slot)?;
        let need = a.data_offset + a.geo.member_blocks;
        if b.block_size != a.block_size || b.num_blocks < need {
            b.release();
            return Err(BdevError::Invalid(format!(
                "{base} must have block size {} and at least {need} blocks",
                a.block_size
            )));
        }
        Ok((slot, b))
    };
    let (slot, b) = match attach() {
        Ok(x) => x,
        Err(e) => {
            a.end_process();
            return Err(e);
        }
    };
    let old = a.slots.write()[slot].base.take();
    if let Some(o) = old {
        o.release();
    }
    a.attach_rebuild_target(slot, b);
    tracing::info!(raid = %a.name, base, slot, "member added; rebuilding");
    strata_reactor::spawn_local(process::rebuild(a, slot)).detach();
    Ok(())
}

/// Removes `base` from its array: the member counts as missing. Runs on a reactor.
pub async fn remove_base_bdev(base: &str) -> Result<(), BdevError> {
    let found = ARRAYS.lock().iter().find_map(|a| {
        let slots = a.slots.read();
        slots
            .iter()
            .position(|s| s.base.is_some() && s.name == base)
            .map(|i| (a.clone(), i))
    });
    let (a, slot) =
        found.ok_or_else(|| BdevError::NotFound(format!("{base} (not a RAID member)")))?;
    if let Some(b) = a.detach(slot) {
        b.release();
    }
    RaidChannel::new(a.clone()).persist().await;
    Ok(())
}

/// `bdev_raid_get_bdevs`: arrays in `category` (all, online, configuring, offline).
pub fn get_bdevs(category: &str) -> Result<Vec<Value>, BdevError> {
    if !matches!(category, "all" | "online" | "configuring" | "offline") {
        return Err(BdevError::Invalid(format!(
            "category '{category}' (all, online, configuring, offline)"
        )));
    }
    let mut out: Vec<Value> = ARRAYS
        .lock()
        .iter()
        .filter(|a| category == "all" || a.state_name() == category)
        .map(|a| a.info())
        .collect();
    if matches!(category, "all" | "configuring") {
        out.extend(PENDING.lock().values().map(|p| p.info()));
    }
    Ok(out)
}

/// The array a bdev name belongs to, for tests and statistics.
pub fn array(name: &str) -> Option<Arc<Array>> {
    find(name)
}

// ---------------------------------------------------------------------------------------
// Examine: re-assembly from superblocks

struct Candidate {
    bdev: String,
    sb: Superblock,
    bitmap: Vec<u64>,
}

#[derive(Default)]
struct PendingArray {
    candidates: Vec<Candidate>,
}

impl PendingArray {
    fn best(&self) -> Option<&Candidate> {
        self.candidates.iter().max_by_key(|c| c.sb.generation)
    }

    fn info(&self) -> Value {
        let Some(b) = self.best() else {
            return Value::Null;
        };
        json!({
            "name": b.sb.name,
            "uuid": b.sb.array_uuid.to_string(),
            "state": "configuring",
            "raid_level": b.sb.level.name(),
            "superblock": true,
            "num_base_bdevs": b.sb.members,
            "num_base_bdevs_discovered": self.candidates.len(),
            "base_bdevs_list": self.candidates.iter().map(|c| json!({"name": c.bdev, "slot": c.sb.index, "generation": c.sb.generation})).collect::<Vec<_>>(),
        })
    }
}

/// Arrays seen in superblocks and not assembled yet, by array uuid.
static PENDING: LazyLock<Mutex<HashMap<Uuid, PendingArray>>> = LazyLock::new(Default::default);

/// The module's hooks: re-assembly from superblocks.
pub struct RaidModule;

impl BdevModule for RaidModule {
    fn name(&self) -> &'static str {
        "raid"
    }
    fn examine(&self, bdev: &str) {
        examine::spawn_examine(bdev, |n| async move { examine(&n).await });
    }
    fn finish_examine(&self) {
        finish_examine();
    }
}

async fn read_superblock(name: &str) -> Option<(Superblock, Vec<u64>)> {
    let h = registry::get(name)?;
    if h.claimed_by.is_some() {
        return None;
    }
    let desc = registry::open(name, |_| {}).ok()?;
    let ch = desc.channel().ok()?;
    let bs = ch.block_size();
    let first = superblock::sb_blocks(bs);
    if ch.num_blocks() < first {
        return None;
    }
    let head = wait::read_vec(&ch, 0, first).await.ok()?;
    let sb = Superblock::decode(&head).ok()?;
    let size = sb.concat.get(sb.index).copied().unwrap_or(sb.member_blocks);
    if sb.block_size != bs
        || sb
            .data_offset
            .checked_add(size)
            .is_none_or(|end| ch.num_blocks() < end)
    {
        tracing::warn!(
            bdev = name,
            "RAID superblock does not fit this bdev (block size or size); ignored"
        );
        return None;
    }
    let meta = wait::read_vec(&ch, 0, sb.meta_blocks()).await.ok()?;
    let bitmap = superblock::decode_bitmap(&sb, &meta);
    Some((sb, bitmap))
}

async fn examine(name: &str) {
    let Some((sb, bitmap)) = read_superblock(name).await else {
        return;
    };
    tracing::info!(bdev = name, raid = %sb.name, slot = sb.index, generation = sb.generation, "RAID superblock found");
    // A member of an array that is already running: rebuild it if it is behind.
    if let Some(a) = ARRAYS
        .lock()
        .iter()
        .find(|a| a.uuid == sb.array_uuid)
        .cloned()
    {
        let state = a
            .slots
            .read()
            .get(sb.index)
            .map(|s| (s.state, s.base.is_some()));
        match state {
            Some((MemberState::Failed | MemberState::Missing, _)) => {
                tracing::warn!(bdev = name, raid = %a.name, slot = sb.index, "stale member returned: it will be rebuilt");
                let name = name.to_string();
                // After any running resync or rebuild (not counted as examine time).
                strata_reactor::spawn_local(async move {
                    loop {
                        if a.stopping.load(Ordering::Acquire) {
                            return;
                        }
                        if !a.process.is_busy() {
                            match add_base_bdev(&a.name, &name).await {
                                // Another job took the slot first: wait for it too.
                                Err(BdevError::Claimed { .. }) if a.process.is_busy() => {}
                                Err(e) => {
                                    tracing::error!(bdev = %name, raid = %a.name, error = %e, "could not re-add member");
                                    return;
                                }
                                Ok(()) => return,
                            }
                        }
                        strata_reactor::sleep(Duration::from_millis(10)).await;
                    }
                })
                .detach();
            }
            _ => tracing::info!(bdev = name, raid = %a.name, "member of a running array; ignored"),
        }
        return;
    }
    PENDING
        .lock()
        .entry(sb.array_uuid)
        .or_default()
        .candidates
        .push(Candidate {
            bdev: name.to_string(),
            sb: sb.clone(),
            bitmap,
        });
    assemble(sb.array_uuid, false).await;
}

/// Brings up a pending array once every member the newest superblock trusts is present
/// (or, with `degraded_ok`, enough of them for the level).
async fn assemble(uuid: Uuid, degraded_ok: bool) {
    let plan = {
        let mut p = PENDING.lock();
        let Some(pa) = p.get_mut(&uuid) else {
            return;
        };
        // Candidates whose bdev went away or was claimed since are dropped.
        pa.candidates
            .retain(|c| registry::get(&c.bdev).is_some_and(|h| h.claimed_by.is_none()));
        let Some(best) = pa.best().map(|c| c.sb.clone()) else {
            p.remove(&uuid);
            return;
        };
        let pa = &p[&uuid];
        let n = best.members;
        let mut by_slot: Vec<Option<&Candidate>> = vec![None; n];
        // Only members that agree with the newest superblock on the array's shape count.
        let fits = |c: &Candidate| {
            let (a, b) = (&c.sb, &best);
            a.index < n
                && (
                    a.level,
                    a.members,
                    a.block_size,
                    a.strip_blocks,
                    a.data_offset,
                    a.member_blocks,
                ) == (
                    b.level,
                    b.members,
                    b.block_size,
                    b.strip_blocks,
                    b.data_offset,
                    b.member_blocks,
                )
        };
        for c in &pa.candidates {
            if fits(c) && by_slot[c.sb.index].is_none_or(|o| o.sb.generation < c.sb.generation) {
                by_slot[c.sb.index] = Some(c);
            }
        }
        let trusted: Vec<bool> = (0..n)
            .map(|i| best.states[i] == MemberState::Active && by_slot[i].is_some())
            .collect();
        // Every member that was in sync, and a rebuild target that can resume from its
        // checkpoint (assembling without it would throw its progress away).
        let want_all = (0..n).all(|i| match best.states[i] {
            MemberState::Active => trusted[i],
            MemberState::Rebuilding if best.rebuild_checkpoint > 0 => by_slot[i].is_some(),
            _ => true,
        });
        let have = trusted.iter().filter(|t| **t).count();
        let enough = have + best.level.tolerance(n) >= n;
        if !(want_all || degraded_ok && enough) {
            return;
        }
        if !want_all {
            tracing::warn!(raid = %best.name, present = have, members = n, "assembling degraded: members missing");
        }
        let mut bitmap = vec![0u64; best.bitmap_bits.div_ceil(64) as usize];
        for c in pa
            .candidates
            .iter()
            .filter(|c| fits(c) && trusted[c.sb.index] && c.sb.generation == best.generation)
        {
            for (w, x) in bitmap.iter_mut().zip(&c.bitmap) {
                *w |= x;
            }
        }
        let slots: Vec<(Option<String>, bool)> = (0..n)
            .map(|i| (by_slot[i].map(|c| c.bdev.clone()), trusted[i]))
            .collect();
        // A member that was being rebuilt and took every metadata write since resumes at
        // the checkpoint; any other untrusted member is rebuilt from the start.
        let resume = (0..n).find_map(|i| {
            let c = by_slot[i]?;
            (best.states[i] == MemberState::Rebuilding
                && c.sb.generation == best.generation
                && best.rebuild_checkpoint > 0)
                .then_some((i, best.rebuild_checkpoint))
        });
        p.remove(&uuid);
        (best, slots, bitmap, resume)
    };
    let (best, slots, bitmap, resume) = plan;
    if let Err(e) = bring_up(&best, &slots, bitmap, resume) {
        tracing::error!(raid = %best.name, error = %e, "RAID assembly failed");
    }
}

fn bring_up(
    best: &Superblock,
    members: &[(Option<String>, bool)],
    bitmap: Vec<u64>,
    resume: Option<(usize, u64)>,
) -> Result<(), BdevError> {
    let mut slots = Vec::with_capacity(best.members);
    let mut stale = None;
    let mut opened = Vec::new();
    for (i, (bdev, trusted)) in members.iter().enumerate() {
        let mut slot = Slot {
            base: None,
            name: bdev.clone().unwrap_or_default(),
            uuid: None,
            state: if *trusted {
                MemberState::Active
            } else {
                best.states[i]
            },
        };
        if slot.state == MemberState::Active || slot.state == MemberState::Rebuilding {
            // Not present, or a rebuild that did not finish: it starts over.
            if !*trusted {
                slot.state = MemberState::Failed;
            }
        }
        if let Some(b) = bdev {
            match open_member(b, &best.name, i) {
                Ok(c) => {
                    slot.uuid = Some(c.uuid);
                    if *trusted {
                        slot.base = Some(c.clone());
                    } else if stale.is_none() {
                        stale = Some((i, c.clone()));
                    } else {
                        c.release();
                    }
                    opened.push(c);
                }
                Err(e) => {
                    tracing::error!(bdev = %b, error = %e, "cannot claim RAID member");
                    if *trusted {
                        slot.state = MemberState::Failed;
                    }
                }
            }
        } else if slot.state == MemberState::Active {
            slot.state = MemberState::Missing;
        }
        slots.push(slot);
    }
    let geo = Geometry {
        level: best.level,
        members: best.members,
        strip: best.strip_blocks,
        member_blocks: best.member_blocks,
        concat: best.concat.clone(),
    };
    let meta = Meta::new(
        best.generation,
        best.generation,
        best.region_stripes,
        best.bitmap_bits,
        bitmap,
    );
    let array = Arc::new(Array::new(
        best.name.clone(),
        best.array_uuid,
        geo,
        best.block_size,
        best.data_offset,
        slots,
        Some(meta),
    ));
    let changed = members
        .iter()
        .enumerate()
        .any(|(i, (b, t))| best.states[i] == MemberState::Active && !(b.is_some() && *t))
        || best.states.contains(&MemberState::Rebuilding);
    if changed {
        if let Some(m) = &array.meta {
            m.bump();
        }
    }
    if let Err(e) = registry::register(array.clone()) {
        opened.iter().for_each(|c| c.release());
        return Err(e);
    }
    ARRAYS.lock().push(array.clone());
    tracing::info!(raid = %best.name, generation = best.generation, degraded = array.degraded_count(), "RAID volume assembled from superblocks");
    sync_in_background(&array);
    let rebuild_slot = stale.map(|(i, c)| {
        tracing::warn!(raid = %best.name, bdev = %c.name, slot = i, "member is stale (older generation or failed): rebuilding it");
        array.attach_rebuild_target(i, c);
        if let Some((_, checkpoint)) = resume.filter(|(r, _)| *r == i) {
            array.resume_rebuild_at(checkpoint);
        }
        i
    });
    start_background(&array, rebuild_slot);
    Ok(())
}

/// End of examine (`bdev_wait_for_examine`, end of `--json` load): waits for examine reads
/// to finish, then brings up arrays that can run degraded.
fn finish_examine() {
    examine::assemble_pending(|| PENDING.lock().keys().copied().collect(), assemble);
}
