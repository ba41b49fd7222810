//! A data member of a parity group (on a data node): a bdev over the node's own base that
//! serves its hosts locally and sends every write's delta to the group's parity volumes
//! (P: `xor_write(new ^ old)`, Q: `gf_xor_write(g^i, new ^ old)`), usually remote bdevs.
//!
//! State ([`MemberState`]) and the fold / rebuild cursor live in the member's superblock
//! with its write-intent bitmap: a region's bit is on disk before a delta for it goes out,
//! and is cleared only when the parity is known to hold the region's deltas, so after a
//! crash (or while a parity node is unreachable) the set bits cover every region whose
//! parity may disagree; the repair job closes them through the rebuild sources. The I/O
//! path is in [`super::member_io`], the jobs in [`super::member_jobs`].

use super::peer::Peer;
use super::superblock::{Kind, MemberState, Superblock};
use crate::bdev::{Bdev, BdevChannel, ConfigEntry};
use crate::error::BdevError;
use crate::io::IoType;
use crate::kernels;
use crate::modules::base::ClaimedBase;
use crate::volume::intent::{IntentBitmap, Snapshot};
use crate::volume::job::{JobSlot, Progress};
use crate::volume::locks::StripeLocks;
use crate::volume::persist::{MetaWrite, MetaWriter};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

/// A parity volume a member sends deltas to, and the rebuild source of this member on the
/// same parity node (what repair and rebuild read).
pub struct Target {
    pub kind: Kind,
    pub peer: Arc<Peer>,
    pub source: Option<Arc<Peer>>,
}

impl Target {
    /// The I/O type and coefficient of this member's deltas to it.
    pub fn delta_op(&self, coef_q: u8) -> (IoType, u8) {
        match self.kind {
            Kind::Q => (IoType::GfXorWrite, coef_q),
            _ => (IoType::XorWrite, 1),
        }
    }
}

pub struct ParityMember {
    pub name: String,
    pub uuid: Uuid,
    pub group_uuid: Uuid,
    pub index: u32,
    /// g^index: this member's coefficient in Q.
    pub coef_q: u8,
    pub base: Arc<ClaimedBase>,
    pub block_size: u32,
    pub num_blocks: u64,
    pub data_offset: u64,
    pub region_blocks: u64,
    pub bits: u64,
    /// Blocks per range lock: a write locks the units it covers, a job whole regions.
    pub lock_blocks: u64,
    pub targets: Vec<Target>,
    pub state: Mutex<MemberState>,
    /// Fold or rebuild cursor, in regions: regions below it are folded in / rebuilt.
    pub cursor: AtomicU64,
    /// Regions above the cursor rebuilt on demand (by a read or write) during a rebuild.
    pub rebuilt: Mutex<Vec<u64>>,
    pub intent: IntentBitmap,
    pub locks: StripeLocks,
    /// Per region, bumped when a write or rebuild of it starts and ends: a repair that read
    /// the parity's view without the region's lock knows whether it is stale.
    pub seqs: Box<[AtomicU32]>,
    /// Bounds the on-demand rebuilds in flight (each holds pool buffers under its lock).
    pub rebuild_slots: StripeLocks,
    /// Bumped by every request to hold the bitmap (a parity failed, a local write failed
    /// after its delta): a repair releases the hold only if none came while it ran.
    pub hold_epoch: AtomicU64,
    pub job: JobSlot<Progress>,
    pub last_job: Mutex<Option<Value>>,
    /// A repair was asked for while a job ran: the job runner goes round again.
    pub repair_wanted: AtomicBool,
    /// The last job stopped on a failure: housekeeping tries it again.
    pub work_owed: AtomicBool,
    /// The state last written to the cluster store.
    pub recorded: Mutex<Option<super::record::MemberRecord>>,
    /// Rate limit of the fold and the rebuild (MB/s, 0: none).
    pub max_bandwidth_mb_sec: AtomicU64,
    pub deleted: AtomicBool,
}

impl ParityMember {
    pub fn state(&self) -> MemberState {
        *self.state.lock()
    }

    /// Regions `(first, last)` blocks `off..off+n` touch.
    pub fn regions(&self, off: u64, n: u64) -> (u64, u64) {
        (
            off / self.region_blocks,
            (off + n.max(1) - 1) / self.region_blocks,
        )
    }

    /// Blocks of region `r`: `(first block, count)`.
    pub fn region_range(&self, r: u64) -> (u64, u64) {
        let a = r * self.region_blocks;
        (a, self.region_blocks.min(self.num_blocks - a))
    }

    /// Lock units `(first, last)` a range of blocks covers; widened to whole regions while
    /// rebuilding (the I/O may rebuild the regions it touches).
    pub fn lock_units(&self, off: u64, n: u64) -> (u64, u64) {
        let (mut a, mut z) = (off, off + n.max(1) - 1);
        if self.state() == MemberState::Rebuilding {
            a = a / self.region_blocks * self.region_blocks;
            z = (z / self.region_blocks + 1) * self.region_blocks - 1;
        }
        (a / self.lock_blocks, z / self.lock_blocks)
    }

    /// Lock units of region `r`.
    pub fn region_units(&self, r: u64) -> (u64, u64) {
        let (a, n) = self.region_range(r);
        (a / self.lock_blocks, (a + n - 1) / self.lock_blocks)
    }

    /// Whether region `r` is rebuilt (below the cursor, or on demand).
    pub fn is_rebuilt(&self, r: u64) -> bool {
        if self.state() != MemberState::Rebuilding || r < self.cursor.load(Ordering::Acquire) {
            return true;
        }
        let b = self.rebuilt.lock();
        b.get((r / 64) as usize)
            .is_some_and(|w| w & (1 << (r % 64)) != 0)
    }

    /// The region's write sequence ([`Self::seqs`]).
    pub fn seq(&self, r: u64) -> u32 {
        self.seqs
            .get(r as usize)
            .map_or(0, |s| s.load(Ordering::Acquire))
    }

    pub fn bump_seq(&self, r: u64) {
        if let Some(s) = self.seqs.get(r as usize) {
            s.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Keeps the bitmap's bits until a repair that started after this call has ended.
    pub fn hold(&self) {
        self.hold_epoch.fetch_add(1, Ordering::AcqRel);
        self.intent.hold_bits(true);
    }

    pub fn mark_rebuilt(&self, r: u64) {
        let mut b = self.rebuilt.lock();
        let w = (r / 64) as usize;
        if b.len() <= w {
            b.resize(w + 1, 0);
        }
        b[w] |= 1 << (r % 64);
        drop(b);
        // Kept with the next metadata write (one comes before a write to the region is
        // acknowledged, as the write sets the region's intent bit).
        self.intent.bump_unordered();
    }

    /// The block where deltas stop: blocks at or past it are not in the parity yet (a
    /// member being folded in).
    pub fn folded_end(&self) -> u64 {
        match self.state() {
            MemberState::Folding => {
                (self.cursor.load(Ordering::Acquire) * self.region_blocks).min(self.num_blocks)
            }
            _ => self.num_blocks,
        }
    }

    /// A parity volume stopped answering: deltas to it stop, and the bitmap keeps every
    /// region written until the repair job has brought it up to date.
    pub fn fail_target(&self, k: usize, why: &str) {
        let t = &self.targets[k];
        if t.peer.fail() {
            self.hold();
            tracing::warn!(member = %self.name, parity = %t.peer.name, why, "parity unreachable: the group runs degraded; written regions are kept for repair");
            // The cluster record (and the superblock) learn of it now, not at the next
            // bitmap change.
            if let Some(m) = super::member(&self.name) {
                crate::volume::examine::on_a_reactor(move || async move {
                    m.intent.bump_unordered();
                    super::member_jobs::persist_all(&m).await;
                });
            }
        }
    }

    /// The parity volumes it sends deltas to, as the superblock keeps them.
    pub fn roles(&self) -> u8 {
        roles_of(self.targets.iter().map(|t| t.kind))
    }

    pub fn degraded(&self) -> bool {
        self.targets.iter().any(|t| t.peer.is_failed())
    }

    /// Sets the state; the caller persists it.
    pub fn set_state(&self, s: MemberState) {
        *self.state.lock() = s;
        self.intent.bump();
    }

    pub fn superblock(&self, generation: u64) -> Superblock {
        Superblock {
            group_uuid: self.group_uuid,
            name: self.name.clone(),
            generation,
            kind: Kind::Data,
            index: self.index,
            state: self.state(),
            block_size: self.block_size,
            num_blocks: self.num_blocks,
            data_offset: self.data_offset,
            region_blocks: self.region_blocks,
            bits: self.bits,
            cursor: self.cursor.load(Ordering::Acquire),
            roles: self.roles(),
            members: Vec::new(),
        }
    }

    pub fn info(&self) -> Value {
        let targets: Vec<Value> = self
            .targets
            .iter()
            .map(|t| {
                json!({
                    "role": t.kind.name(),
                    "bdev": t.peer.name,
                    "source": t.source.as_ref().map(|s| s.name.clone()),
                    "state": if t.peer.is_failed() { "unreachable" } else { "ok" },
                })
            })
            .collect();
        let state = self.state();
        json!({
            "name": self.name,
            "type": "data",
            "group_uuid": self.group_uuid.to_string(),
            "index": self.index,
            "base_bdev": self.base.name,
            "state": state.name(),
            "group_state": if self.degraded() { "degraded" } else { "ok" },
            "cursor_regions": self.cursor.load(Ordering::Acquire),
            "region_blocks": self.region_blocks,
            "regions": self.bits,
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "data_offset": self.data_offset,
            "dirty_regions": self.intent.dirty_count(),
            "max_bandwidth_mb_sec": self.max_bandwidth_mb_sec.load(Ordering::Relaxed),
            "targets": targets,
            "job": self.job.current().map(|p| super::member_jobs::job_info(&p)),
            "last_job": self.last_job.lock().clone(),
        })
    }
}

/// [`super::superblock::Superblock::roles`] of a set of parity kinds.
pub fn roles_of(kinds: impl Iterator<Item = Kind>) -> u8 {
    kinds.fold(0, |r, k| {
        r | match k {
            Kind::P => super::superblock::ROLE_P,
            Kind::Q => super::superblock::ROLE_Q,
            Kind::Data => 0,
        }
    })
}

/// `g^index`, this member's coefficient in Q.
pub fn coef_q(index: u32) -> u8 {
    kernels::gf_pow2(index as usize)
}

impl MetaWriter for ParityMember {
    async fn write_meta(&self, snap: &Snapshot) -> MetaWrite {
        // The cluster record first: it may be all that is left if the superblock is lost.
        super::record::write_member(self, snap.generation).await;
        let sb = self.superblock(snap.generation);
        let len = (sb.meta_blocks() * self.block_size as u64) as usize;
        let ok = async {
            // Header and bitmap may be larger than a pool buffer: written from a copy.
            let mut raw = vec![0u8; len];
            let rebuilt = self.rebuilt.lock().clone();
            sb.encode_meta(&snap.bitmap, &rebuilt, &mut raw);
            let ch = self.base.channel().map_err(|_| crate::IoStatus::Failed)?;
            crate::wait::write_slice(&ch, 0, &raw).await
        }
        .await;
        if let Err(st) = &ok {
            tracing::error!(member = %self.name, base = %self.base.name, status = ?st, "cannot write the member's superblock");
        }
        MetaWrite {
            durable: ok.is_ok(),
            member_failed: false,
        }
    }
    fn is_offline(&self) -> bool {
        false
    }
}

impl Bdev for ParityMember {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &'static str {
        "Parity group data member"
    }
    fn module(&self) -> &'static str {
        "parity"
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
    fn supports(&self, t: IoType) -> bool {
        match t {
            IoType::Read | IoType::Write | IoType::Flush => true,
            // Zeroes are written as data (their delta goes to the parity); unmap is not
            // offered, so hosts do not discard whole devices through read-modify-writes.
            IoType::WriteZeroes => true,
            IoType::Checksum => self.base.supports(t),
            _ => false,
        }
    }
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        super::member_io::MemberChannel::create(self)
    }
    fn driver_specific(&self) -> Value {
        json!({ "parity_member": self.info() })
    }
    fn config(&self) -> Option<ConfigEntry> {
        let role = |k: Kind| self.targets.iter().find(|t| t.kind == k);
        Some(ConfigEntry {
            method: "bdev_parity_member_create",
            params: json!({
                "name": self.name,
                "base_bdev": self.base.name,
                "group_uuid": self.group_uuid.to_string(),
                "index": self.index,
                "p_bdev": role(Kind::P).map(|t| t.peer.name.clone()),
                "p_source": role(Kind::P).and_then(|t| t.source.as_ref().map(|s| s.name.clone())),
                "q_bdev": role(Kind::Q).map(|t| t.peer.name.clone()),
                "q_source": role(Kind::Q).and_then(|t| t.source.as_ref().map(|s| s.name.clone())),
                "region_size_kb": self.region_blocks * self.block_size as u64 / 1024,
                "max_bandwidth_mb_sec": self.max_bandwidth_mb_sec.load(Ordering::Relaxed),
            }),
        })
    }
    fn on_unregister(&self) {
        self.deleted.store(true, Ordering::Release);
        if let Some(j) = self.job.current() {
            j.cancel();
        }
        for t in &self.targets {
            t.peer.close();
            if let Some(s) = &t.source {
                s.close();
            }
        }
        self.base.release();
        super::forget(&self.name);
    }
}
