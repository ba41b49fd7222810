//! The RAID volume as a bdev: its shape, its member slots and their states, and the shared
//! state every reactor's channel reads (stripe locks, write intent, rebuild cursor).

use super::channel::RaidChannel;
use super::geometry::{Geometry, Level};
use super::superblock::{MemberState, Superblock};
use crate::bdev::{Bdev, BdevChannel, ConfigEntry};
use crate::error::BdevError;
use crate::io::IoType;
use crate::modules::base::ClaimedBase;
use crate::volume::intent::IntentBitmap as Meta;
use crate::volume::job::{JobSlot, Progress};
use crate::volume::locks::StripeLocks;
use parking_lot::RwLock;
use serde_json::{json, Value};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use uuid::Uuid;

/// Fast-path view of a slot's state.
pub const LIVE_ACTIVE: u8 = 0;
pub const LIVE_REBUILDING: u8 = 1;
pub const LIVE_OUT: u8 = 2;

/// One member position of the array.
pub struct Slot {
    pub base: Option<Arc<ClaimedBase>>,
    /// Name of the bdev last in this slot ("" if none ever was).
    pub name: String,
    pub uuid: Option<Uuid>,
    pub state: MemberState,
}

pub struct Array {
    pub name: String,
    pub uuid: Uuid,
    pub geo: Geometry,
    pub block_size: u32,
    /// Member blocks before the data area (superblock + bitmap); 0 without superblock.
    pub data_offset: u64,
    pub superblock: bool,
    pub slots: RwLock<Vec<Slot>>,
    live: Vec<AtomicU8>,
    /// Stripes below the cursor are valid on a rebuilding member.
    pub rebuild_cursor: AtomicU64,
    /// The cursor as last persisted (the job's checkpoint): a restarted rebuild resumes here.
    pub rebuild_checkpoint: AtomicU64,
    /// Bumped whenever a slot's bdev changes: channels then refresh their member channels.
    pub epoch: AtomicU64,
    offline: AtomicBool,
    /// Set while the array is being deleted or unregistered: jobs stop.
    pub stopping: AtomicBool,
    pub locks: StripeLocks,
    pub meta: Option<Meta>,
    /// The one background job (rebuild or resync) and its progress.
    pub process: JobSlot<Progress>,
    supported: [bool; IoType::COUNT],
}

impl Array {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        uuid: Uuid,
        geo: Geometry,
        block_size: u32,
        data_offset: u64,
        slots: Vec<Slot>,
        meta: Option<Meta>,
    ) -> Array {
        let live = slots
            .iter()
            .map(|s| AtomicU8::new(live_code(s.state, s.base.is_some())))
            .collect();
        let mut supported = [false; IoType::COUNT];
        for t in [
            IoType::Read,
            IoType::Write,
            IoType::Flush,
            IoType::Reset,
            IoType::Checksum,
        ] {
            supported[t as usize] = true;
        }
        // Zeroing and unmapping: parity levels write zeroes through the stripe path; the
        // others pass them down, so every member must support them.
        let members_zero = |t: IoType| {
            slots
                .iter()
                .filter_map(|s| s.base.as_ref())
                .all(|b| b.supports(t))
        };
        for t in [IoType::WriteZeroes, IoType::Unmap] {
            // raid1 serves unmap as write_zeroes (legs must stay identical).
            let needed = if geo.level == Level::Raid1 {
                IoType::WriteZeroes
            } else {
                t
            };
            supported[t as usize] =
                matches!(geo.level, Level::Raid5 | Level::Raid6) || members_zero(needed);
        }
        let superblock = meta.is_some();
        Array {
            name,
            uuid,
            geo,
            block_size,
            data_offset,
            superblock,
            slots: RwLock::new(slots),
            live,
            rebuild_cursor: AtomicU64::new(0),
            rebuild_checkpoint: AtomicU64::new(0),
            epoch: AtomicU64::new(1),
            offline: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            locks: StripeLocks::default(),
            meta,
            process: JobSlot::default(),
            supported,
        }
    }

    /// Reserves the array's one background-job slot (rebuild or resync). False if a job
    /// holds it: two jobs would share the rebuild cursor.
    pub fn begin_process(&self, kind: &'static str, target: Option<String>) -> bool {
        let total = self.geo.stripes() * self.geo.stripe_blocks() * self.block_size as u64;
        self.process
            .reserve(|| Progress::new(kind, target, total))
            .is_some()
    }

    pub fn end_process(&self) {
        self.process.release();
    }

    pub fn level(&self) -> Level {
        self.geo.level
    }

    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Acquire)
    }

    #[inline]
    pub fn live(&self, slot: usize) -> u8 {
        self.live[slot].load(Ordering::Acquire)
    }

    /// Whether `slot` holds valid data for `stripe`.
    #[inline]
    pub fn usable(&self, slot: usize, stripe: u64) -> bool {
        match self.live(slot) {
            LIVE_ACTIVE => true,
            LIVE_REBUILDING => stripe < self.rebuild_cursor.load(Ordering::Acquire),
            _ => false,
        }
    }

    /// Slots not serving data (failed, missing, or being rebuilt).
    pub fn degraded_count(&self) -> usize {
        (0..self.geo.members)
            .filter(|&s| self.live(s) != LIVE_ACTIVE)
            .count()
    }

    /// Marks a member failed after an I/O error or removal. The array goes on if the level
    /// tolerates it, otherwise it goes offline. Returns whether the state changed.
    pub fn fail_member(&self, slot: usize, why: &str) -> bool {
        let mut slots = self.slots.write();
        let s = &mut slots[slot];
        if !matches!(s.state, MemberState::Active | MemberState::Rebuilding) {
            return false;
        }
        tracing::error!(raid = %self.name, member = %s.name, slot, why, "RAID member failed");
        s.state = MemberState::Failed;
        self.live[slot].store(LIVE_OUT, Ordering::Release);
        drop(slots);
        if let Some(m) = &self.meta {
            m.bump();
        }
        self.check_offline();
        true
    }

    fn check_offline(&self) {
        // A member being rebuilt does not hold every stripe yet: it does not count as serving.
        let out = self.degraded_count();
        if out > self.geo.level.tolerance(self.geo.members)
            && !self.offline.swap(true, Ordering::AcqRel)
        {
            tracing::error!(
                raid = %self.name,
                failed = out,
                "RAID volume offline: more members failed than the level tolerates"
            );
        }
    }

    /// Puts `base` into `slot` as a rebuild target (its stripes become valid as the cursor
    /// passes them).
    pub fn attach_rebuild_target(&self, slot: usize, base: Arc<ClaimedBase>) {
        let mut slots = self.slots.write();
        let s = &mut slots[slot];
        s.name = base.name.clone();
        s.uuid = Some(base.uuid);
        s.base = Some(base);
        s.state = MemberState::Rebuilding;
        self.rebuild_cursor.store(0, Ordering::Release);
        self.rebuild_checkpoint.store(0, Ordering::Release);
        self.live[slot].store(LIVE_REBUILDING, Ordering::Release);
        drop(slots);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(m) = &self.meta {
            m.bump();
        }
    }

    /// A rebuild target attached after a restart resumes at its persisted checkpoint: the
    /// stripes below it are rebuilt and durable on the member, and it took every write to
    /// them since (its superblock is of the newest generation).
    pub fn resume_rebuild_at(&self, checkpoint: u64) {
        let c = checkpoint.min(self.geo.stripes());
        self.rebuild_cursor.store(c, Ordering::Release);
        self.rebuild_checkpoint.store(c, Ordering::Release);
    }

    /// The rebuild finished: the member serves all stripes.
    pub fn rebuild_done(&self, slot: usize) -> bool {
        let mut slots = self.slots.write();
        if slots[slot].state != MemberState::Rebuilding {
            return false;
        }
        slots[slot].state = MemberState::Active;
        self.live[slot].store(LIVE_ACTIVE, Ordering::Release);
        self.rebuild_checkpoint.store(0, Ordering::Release);
        drop(slots);
        if let Some(m) = &self.meta {
            m.bump();
        }
        true
    }

    /// Takes the bdev out of `slot` (removal); the slot becomes missing.
    pub fn detach(&self, slot: usize) -> Option<Arc<ClaimedBase>> {
        self.fail_member(slot, "removed");
        let mut slots = self.slots.write();
        let b = slots[slot].base.take();
        slots[slot].state = MemberState::Missing;
        drop(slots);
        // The slot's bdev changed: channels drop their channel to it.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        b
    }

    /// The superblock this array writes to `slot`, for generation `generation`.
    pub fn superblock_for(&self, slot: usize, generation: u64) -> Superblock {
        let slots = self.slots.read();
        Superblock {
            array_uuid: self.uuid,
            name: self.name.clone(),
            generation,
            level: self.geo.level,
            members: self.geo.members,
            index: slot,
            block_size: self.block_size,
            strip_blocks: self.geo.strip,
            data_offset: self.data_offset,
            member_blocks: self.geo.member_blocks,
            region_stripes: self.meta.as_ref().map_or(1, |m| m.region_units),
            bitmap_bits: self.meta.as_ref().map_or(0, |m| m.bits),
            states: slots.iter().map(|s| s.state).collect(),
            concat: self.geo.concat.clone(),
            rebuild_checkpoint: self.rebuild_checkpoint.load(Ordering::Acquire),
        }
    }

    pub fn state_name(&self) -> &'static str {
        if self.is_offline() {
            "offline"
        } else {
            "online"
        }
    }

    pub fn info(&self) -> Value {
        let slots = self.slots.read();
        let members: Vec<Value> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({
                    "name": if s.name.is_empty() { Value::Null } else { Value::String(s.name.clone()) },
                    "uuid": s.uuid.map(|u| u.to_string()),
                    "slot": i,
                    "state": s.state.name(),
                    "is_configured": s.base.is_some(),
                    "data_offset": self.data_offset,
                    "data_size": self.geo.concat.get(i).copied().unwrap_or(self.geo.member_blocks),
                })
            })
            .collect();
        let discovered = slots.iter().filter(|s| s.base.is_some()).count();
        let operational = slots
            .iter()
            .filter(|s| s.state == MemberState::Active)
            .count();
        drop(slots);
        let bs = self.block_size as u64;
        let process = self.process.current().map(|p| {
            let r = p.report();
            json!({
                "type": p.kind,
                "target": p.target,
                "progress": {
                    "blocks": r.done_bytes / bs,
                    "total_blocks": r.total_bytes / bs,
                    "percent": (r.percent * 10.0).floor() / 10.0,
                    "mb_per_sec": (r.bytes_per_sec / 1e6 * 10.0).round() / 10.0,
                    "eta_seconds": r.eta_secs.map_or(Value::Null, |e| json!(e.ceil())),
                }
            })
        });
        json!({
            "name": self.name,
            "uuid": self.uuid.to_string(),
            "strip_size_kb": self.geo.strip * self.block_size as u64 / 1024,
            "state": self.state_name(),
            "raid_level": self.geo.level.name(),
            "superblock": self.superblock,
            "num_base_bdevs": self.geo.members,
            "num_base_bdevs_discovered": discovered,
            "num_base_bdevs_operational": operational,
            "degraded": self.degraded_count() > 0,
            "dirty_regions": self.meta.as_ref().map(|m| m.dirty_count()),
            "generation": self.meta.as_ref().map(|m| m.generation()),
            "process": process,
            "base_bdevs_list": members,
        })
    }
}

fn live_code(state: MemberState, present: bool) -> u8 {
    match (state, present) {
        (MemberState::Active, true) => LIVE_ACTIVE,
        (MemberState::Rebuilding, true) => LIVE_REBUILDING,
        _ => LIVE_OUT,
    }
}

impl Bdev for Array {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &'static str {
        "Raid Volume"
    }
    fn module(&self) -> &'static str {
        "raid"
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.geo.num_blocks()
    }
    fn supports(&self, io_type: IoType) -> bool {
        self.supported[io_type as usize]
    }
    fn optimal_io_boundary(&self) -> u64 {
        match self.geo.level {
            Level::Raid5 | Level::Raid6 => self.geo.stripe_blocks(),
            Level::Raid0 => self.geo.strip,
            _ => 0,
        }
    }
    fn write_unit_blocks(&self) -> u32 {
        match self.geo.level {
            Level::Raid5 | Level::Raid6 => self.geo.stripe_blocks() as u32,
            _ => 1,
        }
    }
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        Ok(RaidChannel::new(self))
    }
    fn driver_specific(&self) -> Value {
        json!({ "raid": self.info() })
    }
    fn config(&self) -> Option<ConfigEntry> {
        // Arrays with superblocks re-assemble themselves when their members appear.
        if self.superblock {
            return None;
        }
        let slots = self.slots.read();
        Some(ConfigEntry {
            method: "bdev_raid_create",
            params: json!({
                "name": self.name,
                "uuid": self.uuid.to_string(),
                "raid_level": self.geo.level.name(),
                "strip_size_kb": self.geo.strip * self.block_size as u64 / 1024,
                "base_bdevs": slots.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
                "superblock": false,
            }),
        })
    }
    fn on_unregister(&self) {
        self.stopping.store(true, Ordering::Release);
        let slots = self.slots.read();
        for s in slots.iter() {
            if let Some(b) = &s.base {
                b.release();
            }
        }
        drop(slots);
        super::forget(&self.name);
    }
}
