//! The parity volume (P or Q) on a parity node: a bdev over its base, offset by the
//! metadata area, that data members XOR their deltas into.
//!
//! P takes `xor_write(delta)`; Q takes `gf_xor_write(g^i, delta)`, which it serves by
//! multiplying the delta into a scratch buffer (ISA-L) and XOR-writing that to its base: the
//! base's XOR write is atomic per block, and deltas commute, so concurrent deltas from many
//! members need no ordering. Reads, writes and checksums pass straight through (the verify
//! and rebuild jobs use them). The volume also knows the group's data members (as bdevs,
//! usually remote namespaces of the data nodes), which the rebuild source and verify read.
//!
//! Those readers need a view in which every member's data and the parity agree, while the
//! members keep writing: a member holds a write's lock units until both its local write
//! and its delta are done, and its reads wait for them, so a member read never sees data
//! whose delta is still on its way. What remains is a delta applied between reading the
//! members and reading the parity: every XOR write bumps the change counters of the
//! pieces it covers (when it starts and when it ends), and a reader that saw them move
//! reads again ([`ParityVolume::stamp`]).

use super::peer::Peer;
use super::piece::{self, PIECE_BYTES};
use super::superblock::{Kind, MemberState, Superblock, PARITY_INDEX};
use super::verify::VerifyJob;
use crate::bdev::{Bdev, BdevChannel, ConfigEntry};
use crate::channel::IoChannel;
use crate::error::BdevError;
use crate::io::{BdevIo, IoSink, IoStatus, IoType};
use crate::kernels;
use crate::modules::base::ClaimedBase;
use crate::volume::job::JobSlot;
use crate::volume::locks::StripeLocks;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

/// A data member as the parity volume knows it.
pub struct GroupMember {
    pub index: u32,
    pub peer: Arc<Peer>,
    /// Removed (`bdev_parity_remove_member`: the node is lost) until a bdev is added for
    /// the index again. The parity still holds its data, so reconstructions of the other
    /// members (and verify) cannot run without it.
    pub lost: bool,
}

impl GroupMember {
    /// The name kept in the superblock and the cluster record ("" for a lost member).
    pub fn recorded_name(&self) -> String {
        if self.lost {
            String::new()
        } else {
            self.peer.name.clone()
        }
    }
}

pub struct ParityVolume {
    pub name: String,
    pub uuid: Uuid,
    pub group_uuid: Uuid,
    pub kind: Kind,
    pub base: Arc<ClaimedBase>,
    pub block_size: u32,
    pub num_blocks: u64,
    pub data_offset: u64,
    pub members: Mutex<Vec<GroupMember>>,
    pub generation: AtomicU64,
    /// Serialises metadata writes (key 0).
    pub meta_lock: StripeLocks,
    pub job: JobSlot<VerifyJob>,
    /// The last verify's outcome, for `bdev_parity_get`.
    pub last_verify: Mutex<Option<Value>>,
    /// Change counters of the pieces, hashed (a collision only costs a reader a retry).
    pub changes: Box<[AtomicU64]>,
    /// The rebuild sources reading this volume (removed with it).
    pub sources: Mutex<Vec<String>>,
}

/// Change counters per parity volume.
pub const CHANGE_COUNTERS: usize = 4096;

/// How many times a reader retries a piece whose parity moved under it before it waits
/// between attempts.
const QUIET_RETRIES: u32 = 8;
/// Reads of a piece that keeps moving before a reader gives up (about 4 s).
pub const MAX_ATTEMPTS: u32 = 200;

/// The bdev uuid of a group's P or Q volume (derived, so it is the same after a restart).
pub fn volume_uuid(group: Uuid, kind: Kind) -> Uuid {
    Uuid::new_v5(&group, kind.name().as_bytes())
}

/// The coefficient member `index`'s data has in the volume: 1 in P, g^index in Q.
pub fn coef(kind: Kind, index: u32) -> u8 {
    match kind {
        Kind::Q => kernels::gf_pow2(index as usize),
        _ => 1,
    }
}

impl ParityVolume {
    pub fn new_counters() -> Box<[AtomicU64]> {
        (0..CHANGE_COUNTERS).map(|_| AtomicU64::new(0)).collect()
    }

    fn pieces(&self, lba: u64, n: u64) -> std::ops::RangeInclusive<u64> {
        let pb = PIECE_BYTES / self.block_size as u64;
        lba / pb..=(lba + n.max(1) - 1) / pb
    }

    /// Counts an XOR write to blocks `lba..lba+n` starting or ending.
    pub fn bump(&self, lba: u64, n: u64) {
        for p in self.pieces(lba, n) {
            self.changes[p as usize % CHANGE_COUNTERS].fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A value that changes whenever an XOR write to blocks `lba..lba+n` starts or ends.
    pub fn stamp(&self, lba: u64, n: u64) -> u64 {
        self.pieces(lba, n).fold(0u64, |s, p| {
            s.wrapping_add(self.changes[p as usize % CHANGE_COUNTERS].load(Ordering::Acquire))
        })
    }

    /// Waits a little before the `attempt`th read of a piece whose parity keeps moving.
    pub async fn back_off(attempt: u32) {
        if attempt > QUIET_RETRIES {
            let ms = (attempt - QUIET_RETRIES).min(20) as u64;
            strata_reactor::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }

    pub fn superblock(&self, generation: u64) -> Superblock {
        Superblock {
            group_uuid: self.group_uuid,
            name: self.name.clone(),
            generation,
            kind: self.kind,
            index: PARITY_INDEX,
            state: MemberState::Active,
            block_size: self.block_size,
            num_blocks: self.num_blocks,
            data_offset: self.data_offset,
            region_blocks: 0,
            bits: 0,
            cursor: 0,
            roles: 0,
            members: self
                .members
                .lock()
                .iter()
                .map(|m| (m.index, m.recorded_name()))
                .collect(),
        }
    }

    /// Writes the superblock (member list included) with the next generation.
    pub async fn write_meta(&self) -> Result<(), BdevError> {
        let _g = self.meta_lock.lock(0).await;
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let sb = self.superblock(generation);
        let mut raw = vec![0u8; (sb.meta_blocks() * self.block_size as u64) as usize];
        sb.encode_meta(&[], &[], &mut raw);
        super::record::write_volume(self, generation).await;
        let ch = self.base.channel()?;
        crate::wait::write_slice(&ch, 0, &raw).await.map_err(|st| {
            BdevError::IoFailed(format!(
                "cannot write the parity superblock to {}: {st:?}",
                self.base.name
            ))
        })
    }

    /// The members other than `skip`, with their indexes. Err if one of them is lost
    /// or unreachable: the parity cannot be read without all of them.
    pub fn other_members(&self, skip: &[u32]) -> Result<Vec<(Arc<Peer>, u32)>, IoStatus> {
        let members = self.members.lock();
        let mut out = Vec::with_capacity(members.len());
        for m in members.iter().filter(|m| !skip.contains(&m.index)) {
            if m.lost || m.peer.is_removed() {
                tracing::debug!(parity = %self.name, index = m.index, lost = m.lost, "a member the reconstruction needs is missing");
                return Err(IoStatus::PathError);
            }
            out.push((m.peer.clone(), m.index));
        }
        Ok(out)
    }

    pub fn info(&self) -> Value {
        let members: Vec<Value> = self
            .members
            .lock()
            .iter()
            .map(|m| {
                let state = if m.lost {
                    "lost"
                } else if m.peer.is_removed() {
                    "unreachable"
                } else {
                    "ok"
                };
                json!({
                    "index": m.index,
                    "bdev": (!m.lost).then(|| m.peer.name.clone()),
                    "num_blocks": m.peer.num_blocks(),
                    "state": state,
                })
            })
            .collect();
        json!({
            "name": self.name,
            "type": "parity",
            "role": self.kind.name(),
            "group_uuid": self.group_uuid.to_string(),
            "base_bdev": self.base.name,
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "data_offset": self.data_offset,
            "generation": self.generation.load(Ordering::Acquire),
            "members": members,
            "job": self.job.current().map(|j| j.info()),
            "last_verify": self.last_verify.lock().clone(),
        })
    }
}

impl Bdev for ParityVolume {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &'static str {
        "Parity volume"
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
            IoType::GfXorWrite => self.base.supports(IoType::XorWrite),
            IoType::Reset | IoType::Unmap => false,
            t => self.base.supports(t),
        }
    }
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        let base = self.base.channel()?;
        Ok(Rc::new_cyclic(|me| ParityChannel {
            v: self,
            base,
            me: me.clone(),
        }))
    }
    fn driver_specific(&self) -> Value {
        json!({ "parity": self.info() })
    }
    fn config(&self) -> Option<ConfigEntry> {
        Some(ConfigEntry {
            method: "bdev_parity_create",
            params: json!({
                "name": self.name,
                "base_bdev": self.base.name,
                "group_uuid": self.group_uuid.to_string(),
                "role": self.kind.name(),
            }),
        })
    }
    fn on_unregister(&self) {
        if let Some(j) = self.job.current() {
            j.progress.cancel();
        }
        for m in self.members.lock().drain(..) {
            m.peer.close();
        }
        let sources = std::mem::take(&mut *self.sources.lock());
        for s in sources {
            // A source deleted on its own is gone already.
            let _ = crate::registry::unregister(&s);
        }
        self.base.release();
        super::forget(&self.name);
    }
}

/// Completion tags.
const TAG_PASS: u64 = 0;
/// A GF XOR write with coefficient 1 went down as a plain XOR write.
const TAG_AS_XOR: u64 = 1;
/// An XOR write (its end bumps the change counters).
const TAG_XOR: u64 = 2;

struct ParityChannel {
    v: Arc<ParityVolume>,
    base: IoChannel,
    me: Weak<ParityChannel>,
}

impl BdevChannel for ParityChannel {
    fn submit(&self, mut io: BdevIo) {
        let Some(me) = self.me.upgrade() else {
            io.complete_deferred(IoStatus::Removed);
            return;
        };
        let mut tag = TAG_PASS;
        if matches!(io.io_type, IoType::XorWrite | IoType::GfXorWrite) {
            self.v.bump(io.offset_blocks, io.num_blocks);
            tag = TAG_XOR;
        }
        if io.io_type == IoType::GfXorWrite {
            if io.gf_coef != 1 {
                let (v, base) = (self.v.clone(), self.base.clone());
                strata_reactor::spawn_local(async move {
                    let st = scaled_xor(&v, &base, &io).await;
                    v.bump(io.offset_blocks, io.num_blocks);
                    io.complete(st.err().unwrap_or(IoStatus::Success));
                })
                .detach();
                return;
            }
            io.io_type = IoType::XorWrite;
            tag = TAG_AS_XOR;
        }
        if io.io_type != IoType::Flush {
            io.offset_blocks += self.v.data_offset;
        }
        io.push_completion(me, tag);
        self.base.submit(io);
    }
}

impl IoSink for ParityChannel {
    fn io_done(self: Rc<Self>, mut io: BdevIo, tag: u64) {
        if io.io_type != IoType::Flush {
            io.offset_blocks -= self.v.data_offset;
        }
        if tag == TAG_AS_XOR {
            io.io_type = IoType::GfXorWrite;
        }
        if tag != TAG_PASS {
            self.v.bump(io.offset_blocks, io.num_blocks);
        }
        io.done();
    }
}

/// `base ^= coef · payload`, a piece at a time: the product goes into a scratch buffer that
/// is XOR-written to the base.
async fn scaled_xor(v: &ParityVolume, base: &IoChannel, io: &BdevIo) -> Result<(), IoStatus> {
    let bs = v.block_size as u64;
    let total = io.xfer_len() as u64;
    let mut done = 0u64;
    while done < total {
        let n = (total - done).min(PIECE_BYTES);
        let mut scratch = piece::buffer(n as usize).await?;
        let out = scratch.as_mut_slice();
        // Walk the payload's segments that overlap this piece.
        let mut seg_start = 0u64;
        for b in io.bufs.iter() {
            let seg_end = seg_start + b.len() as u64;
            let (a, z) = (seg_start.max(done), seg_end.min(done + n));
            if a < z {
                let src = &b.as_slice()[(a - seg_start) as usize..(z - seg_start) as usize];
                let dst = &mut out[(a - done) as usize..(z - done) as usize];
                kernels::gf_combine(&[io.gf_coef], &[src], dst)
                    .map_err(|_| IoStatus::InvalidArgument)?;
            }
            seg_start = seg_end;
        }
        let lba = v.data_offset + io.offset_blocks + done / bs;
        piece::write(base, IoType::XorWrite, lba, scratch, 1).await?;
        done += n;
    }
    Ok(())
}
