//! The mirror volume as a bdev: its two legs and their states, the mirror's state machine
//! (in sync → split → resyncing → in sync; a failing leg → degraded), the change bitmap,
//! the background job slot, and the routing every reactor's channel reads on its fast path.
//!
//! Legs sit in fixed slots (so an I/O in flight always knows which leg answered it);
//! `primary` names the slot of the primary (reads, the source of every copy), the other is
//! the secondary. When the primary fails while the secondary is in sync, the secondary
//! becomes the primary.
//! Every state change bumps the bitmap's generation; the caller persists it
//! ([`super::jobs::persist`]) before relying on it.

use super::channel::MirrorChannel;
use super::jobs::Job;
use super::pit::Pit;
use super::superblock::{
    self as sbf, LastBackup, LegState, MirrorState, SplitMaps, SplitRecord, Superblock,
    FLAG_BITMAP_UNTRUSTED,
};
use crate::bdev::{Bdev, BdevChannel, ConfigEntry};
use crate::error::BdevError;
use crate::io::{ChecksumAlg, IoType};
use crate::modules::base::ClaimedBase;
use crate::volume::intent::IntentBitmap;
use crate::volume::intent::Snapshot;
use crate::volume::job::JobSlot;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

/// Where reads go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPolicy {
    /// Always the primary.
    Primary,
    /// Round-robin over the legs in sync.
    Balance,
}

impl ReadPolicy {
    pub fn name(self) -> &'static str {
        match self {
            ReadPolicy::Primary => "primary",
            ReadPolicy::Balance => "balance",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "primary" => Some(ReadPolicy::Primary),
            "balance" => Some(ReadPolicy::Balance),
            _ => None,
        }
    }
}

/// Settings an operator can change on a running mirror (kept in the superblock).
#[derive(Clone, Copy, Debug)]
pub struct MirrorOptions {
    pub read_policy: ReadPolicy,
    pub checksum: ChecksumAlg,
    pub scrub_interval_s: u32,
    pub max_bandwidth_mb_sec: u32,
}

pub struct Leg {
    pub base: Option<Arc<ClaimedBase>>,
    /// Name of the bdev last in this role ("" if none).
    pub name: String,
    pub uuid: Uuid,
    pub state: LegState,
}

impl Leg {
    pub fn missing() -> Leg {
        Leg {
            base: None,
            name: String::new(),
            uuid: Uuid::nil(),
            state: LegState::Missing,
        }
    }
}

/// State changed only under the mirror's control lock.
pub struct Control {
    pub state: MirrorState,
    /// Legs by slot.
    pub legs: [Leg; 2],
    /// Slot of the primary.
    pub primary: usize,
    /// False when the bitmap was lost: resume must scan checksums.
    pub bitmap_trusted: bool,
    pub opts: MirrorOptions,
}

/// Fields of the routing word: which legs take writes and which serve reads.
const WRITE_SHIFT: u32 = 0;
const READ_SHIFT: u32 = 2;
const PRIMARY_BIT: u32 = 1 << 4;
const BALANCE_BIT: u32 = 1 << 5;

impl Control {
    pub fn secondary(&self) -> usize {
        1 - self.primary
    }
    /// The leg in `role` (0 primary, 1 secondary).
    pub fn by_role(&self, role: usize) -> &Leg {
        &self.legs[if role == 0 {
            self.primary
        } else {
            1 - self.primary
        }]
    }
}

pub struct Mirror {
    pub name: String,
    pub uuid: Uuid,
    pub block_size: u32,
    pub num_blocks: u64,
    /// Leg block where the volume's data starts.
    pub data_offset: u64,
    pub region_blocks: u64,
    pub scan_chunk_blocks: u64,
    pub ctl: Mutex<Control>,
    /// Bit r of the write field: leg r takes writes; of the read field: leg r serves reads.
    routing: AtomicU32,
    /// Bumped whenever a leg's bdev or role changes: channels refresh their leg channels.
    pub epoch: AtomicU64,
    pub intent: IntentBitmap,
    pub job: JobSlot<Job>,
    pub last_job: Mutex<Option<Value>>,
    /// Set while the mirror is being deleted or unregistered: jobs stop.
    pub stopping: AtomicBool,
    /// The leg states last written to the cluster store (written again only on a change).
    pub recorded: Mutex<Option<super::record::Record>>,
    /// The point-in-time image of a snapshot split, while there is one.
    pit: Mutex<Option<Arc<Pit>>>,
    /// Fast-path flag: an image exists (writes check its owed map).
    pit_on: AtomicBool,
    /// The last complete backup (parent of the next incremental).
    pub last_backup: Mutex<Option<LastBackup>>,
    /// The metadata area has room for the split section's maps.
    pub maps_fit: bool,
    supported: [bool; IoType::COUNT],
    boundary: u64,
}

impl Mirror {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        uuid: Uuid,
        block_size: u32,
        num_blocks: u64,
        data_offset: u64,
        region_blocks: u64,
        scan_chunk_blocks: u64,
        ctl: Control,
        intent: IntentBitmap,
    ) -> Mirror {
        let bases: Vec<&Arc<ClaimedBase>> =
            ctl.legs.iter().filter_map(|l| l.base.as_ref()).collect();
        let all = |t: IoType| bases.iter().all(|b| b.supports(t));
        let mut supported = [false; IoType::COUNT];
        for t in [IoType::Read, IoType::Write, IoType::Flush, IoType::Reset] {
            supported[t as usize] = true;
        }
        // Unmap is served as write_zeroes on both legs, so the legs stay identical.
        supported[IoType::WriteZeroes as usize] = all(IoType::WriteZeroes);
        supported[IoType::Unmap as usize] = all(IoType::WriteZeroes);
        supported[IoType::Checksum as usize] = all(IoType::Checksum);
        let boundary = ctl.legs[ctl.primary]
            .base
            .as_ref()
            .map_or(0, |b| b.optimal_io_boundary);
        let maps_fit = data_offset >= sbf::meta_blocks_with_maps(intent.bits, block_size);
        if maps_fit {
            intent.set_tracking(Vec::new());
        }
        let m = Mirror {
            name,
            uuid,
            block_size,
            num_blocks,
            data_offset,
            region_blocks,
            scan_chunk_blocks,
            ctl: Mutex::new(ctl),
            routing: AtomicU32::new(0),
            epoch: AtomicU64::new(1),
            intent,
            job: JobSlot::default(),
            last_job: Mutex::new(None),
            stopping: AtomicBool::new(false),
            recorded: Mutex::new(None),
            pit: Mutex::new(None),
            pit_on: AtomicBool::new(false),
            last_backup: Mutex::new(None),
            maps_fit,
            supported,
            boundary,
        };
        {
            let c = m.ctl.lock();
            m.refresh(&c);
        }
        m
    }

    /// The snapshot split's image, if there is one.
    pub fn pit(&self) -> Option<Arc<Pit>> {
        if !self.pit_on.load(Ordering::Acquire) {
            return None;
        }
        self.pit.lock().clone()
    }

    /// Installs (or, with `None`, drops) the image; the caller persists.
    pub fn set_pit(&self, pit: Option<Arc<Pit>>) {
        let mut g = self.pit.lock();
        self.pit_on.store(pit.is_some(), Ordering::Release);
        *g = pit;
        self.intent.bump();
    }

    /// The split section and its maps for a metadata write of `snap` (None: no room).
    pub fn split_record(&self, snap: &Snapshot) -> Option<(SplitRecord, SplitMaps)> {
        if !self.maps_fit {
            return None;
        }
        let pit = self.pit.lock().clone();
        let rec = SplitRecord {
            image: pit.as_ref().map(|p| p.record()),
            last_backup: self.last_backup.lock().clone(),
            map_crcs: None,
        };
        let maps = SplitMaps {
            track: snap.track.clone(),
            owed: pit.as_ref().map(|p| p.owed_bits()).unwrap_or_default(),
            delta: pit.as_ref().map(|p| p.delta.clone()).unwrap_or_default(),
        };
        Some((rec, maps))
    }

    /// Recomputes the fast-path routing from the legs' states, after any change.
    pub fn refresh(&self, c: &Control) {
        let mut w = 0u32;
        let mut r = 0u32;
        for (i, l) in c.legs.iter().enumerate() {
            if l.base.is_some() && l.state.takes_writes() {
                w |= 1 << i;
            }
            if l.base.is_some() && l.state == LegState::InSync {
                r |= 1 << i;
            }
        }
        let mut word = w << WRITE_SHIFT | r << READ_SHIFT;
        if c.primary == 1 {
            word |= PRIMARY_BIT;
        }
        if c.opts.read_policy == ReadPolicy::Balance {
            word |= BALANCE_BIT;
        }
        self.routing.store(word, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Legs that take writes (bit per role).
    #[inline]
    pub fn write_legs(&self) -> u32 {
        (self.routing.load(Ordering::Acquire) >> WRITE_SHIFT) & 3
    }

    /// Legs that serve reads (bit per role).
    #[inline]
    pub fn read_legs(&self) -> u32 {
        (self.routing.load(Ordering::Acquire) >> READ_SHIFT) & 3
    }

    #[inline]
    pub fn primary_slot(&self) -> usize {
        usize::from(self.routing.load(Ordering::Acquire) & PRIMARY_BIT != 0)
    }

    #[inline]
    pub fn balance_reads(&self) -> bool {
        self.routing.load(Ordering::Acquire) & BALANCE_BIT != 0
    }

    pub fn state(&self) -> MirrorState {
        self.ctl.lock().state
    }

    pub fn options(&self) -> MirrorOptions {
        self.ctl.lock().opts
    }

    /// Bitmap regions `first..=last` covering blocks `off..off + n`.
    #[inline]
    pub fn regions(&self, off: u64, n: u64) -> (usize, usize) {
        let last = (off + n.max(1) - 1).min(self.num_blocks.saturating_sub(1));
        (
            (off / self.region_blocks) as usize,
            (last / self.region_blocks) as usize,
        )
    }

    /// A leg failed I/O (or went away): it stops receiving I/O; the mirror runs degraded
    /// and the bitmap records every change from now on. When the primary fails while the
    /// secondary is in sync, the secondary becomes the primary. Returns whether anything
    /// changed (the caller persists).
    pub fn fail_leg(&self, slot: usize, missing: bool, why: &str) -> bool {
        let mut c = self.ctl.lock();
        let new = if missing {
            LegState::Missing
        } else {
            LegState::Failed
        };
        let was = c.legs[slot].state;
        if was == new || (was == LegState::Missing && !missing) {
            return false;
        }
        c.legs[slot].state = new;
        let role = if slot == c.primary { 0 } else { 1 };
        tracing::error!(mirror = %self.name, leg = %c.legs[slot].name, role = role_name(role), was = was.name(), reason = why, "mirror leg out");
        if slot == c.primary && c.legs[1 - slot].state == LegState::InSync {
            c.primary = 1 - slot;
            tracing::warn!(mirror = %self.name, leg = %c.legs[c.primary].name, "secondary promoted to primary");
        }
        let p = &c.legs[c.primary];
        c.state = if p.state == LegState::InSync && p.base.is_some() {
            MirrorState::Degraded
        } else {
            tracing::error!(mirror = %self.name, "no leg holds the volume's data: mirror offline");
            MirrorState::Offline
        };
        self.intent.hold_bits(true);
        self.intent.bump();
        self.refresh(&c);
        true
    }

    /// The slot of the leg bdev `name`, if it is attached.
    pub fn slot_of(&self, name: &str) -> Option<usize> {
        let c = self.ctl.lock();
        c.legs
            .iter()
            .position(|l| l.name == name && l.base.is_some())
    }

    /// Takes a leg's bdev out of the mirror (it was removed); returns it to release.
    pub fn detach(&self, slot: usize) -> Option<Arc<ClaimedBase>> {
        self.fail_leg(slot, true, "removed");
        let mut c = self.ctl.lock();
        let b = c.legs[slot].base.take();
        self.refresh(&c);
        b
    }

    /// The superblock describing the current state, for the leg in `slot`.
    pub fn superblock_for(&self, slot: usize, generation: u64) -> Superblock {
        let c = self.ctl.lock();
        let role = usize::from(slot != c.primary);
        Superblock {
            mirror_uuid: self.uuid,
            name: self.name.clone(),
            generation,
            role,
            state: c.state,
            legs: [c.by_role(0).state, c.by_role(1).state],
            leg_uuids: [c.by_role(0).uuid, c.by_role(1).uuid],
            flags: if c.bitmap_trusted {
                0
            } else {
                FLAG_BITMAP_UNTRUSTED
            },
            block_size: self.block_size,
            num_blocks: self.num_blocks,
            data_offset: self.data_offset,
            region_blocks: self.region_blocks,
            bits: self.intent.bits,
            scan_chunk_blocks: self.scan_chunk_blocks,
            read_policy: match c.opts.read_policy {
                ReadPolicy::Primary => 0,
                ReadPolicy::Balance => 1,
            },
            checksum: match c.opts.checksum {
                ChecksumAlg::Crc32c => 0,
                ChecksumAlg::Sha256 => 1,
            },
            scrub_interval_s: c.opts.scrub_interval_s,
            max_bandwidth_mb_sec: c.opts.max_bandwidth_mb_sec,
        }
    }

    pub fn info(&self) -> Value {
        let c = self.ctl.lock();
        let legs: Vec<Value> = [0, 1]
            .iter()
            .map(|&i| {
                let l = c.by_role(i);
                json!({
                    "name": l.name,
                    "uuid": l.uuid.to_string(),
                    "role": role_name(i),
                    "state": l.state.name(),
                    "present": l.base.is_some(),
                    "optimal_io_boundary": l.base.as_ref().map_or(0, |b| b.optimal_io_boundary),
                    "write_unit_blocks": l.base.as_ref().map_or(1, |b| b.write_unit_blocks),
                })
            })
            .collect();
        let job = self.job.current().map(|j| j.info());
        let image = self.pit().map(|p| p.info(self));
        let last_backup = self.last_backup.lock().clone();
        json!({
            "name": self.name,
            "uuid": self.uuid.to_string(),
            "state": c.state.name(),
            "generation": self.intent.generation(),
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "data_offset_blocks": self.data_offset,
            "region_size_kb": self.region_blocks * self.block_size as u64 / 1024,
            "scan_chunk_kb": self.scan_chunk_blocks * self.block_size as u64 / 1024,
            "regions": self.intent.bits,
            "dirty_regions": self.intent.dirty_count(),
            "bitmap_trusted": c.bitmap_trusted,
            "read_policy": c.opts.read_policy.name(),
            "checksum": c.opts.checksum.name(),
            "scrub_interval_s": c.opts.scrub_interval_s,
            "max_bandwidth_mb_sec": c.opts.max_bandwidth_mb_sec,
            "legs": legs,
            "job": job,
            "last_job": self.last_job.lock().clone(),
            "image": image,
            "last_backup": last_backup,
            "changed_regions_since_last_backup": self.intent.track_bits().iter().map(|w| w.count_ones() as u64).sum::<u64>(),
        })
    }
}

pub fn role_name(role: usize) -> &'static str {
    if role == 0 {
        "primary"
    } else {
        "secondary"
    }
}

impl Bdev for Mirror {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &'static str {
        "Mirror disk"
    }
    fn module(&self) -> &'static str {
        "mirror"
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn supports(&self, io_type: IoType) -> bool {
        self.supported[io_type as usize]
    }
    fn optimal_io_boundary(&self) -> u64 {
        self.boundary
    }
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        Ok(MirrorChannel::new(self))
    }
    fn driver_specific(&self) -> Value {
        json!({ "mirror": self.info() })
    }
    /// Mirrors re-assemble from their legs' superblocks; save_config needs no entry.
    fn config(&self) -> Option<ConfigEntry> {
        None
    }
    fn on_unregister(&self) {
        self.stopping.store(true, Ordering::Release);
        // The image reads the legs through the mirror: it goes with it.
        let pit = self.pit.lock().take();
        if let Some(p) = pit {
            p.dropped.store(true, Ordering::Release);
            let _ = crate::registry::unregister(&p.image_name);
        }
        let c = self.ctl.lock();
        for l in c.legs.iter() {
            if let Some(b) = &l.base {
                b.release();
            }
        }
        drop(c);
        super::forget(&self.name);
    }
}
