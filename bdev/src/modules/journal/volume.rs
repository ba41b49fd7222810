//! A protected volume as a bdev: reads go to its base (the first scheme, usually a RAID-5
//! or RAID-6); every write goes to the base and, as a journal record, to the group's
//! mirrored journal (the second scheme), and completes when both have it. Write-zeroes and
//! unmap are journaled as zero records (no data). The data is never copied: the base write
//! and the journal batch read views of the host's buffers.
//!
//! When the base fails beyond its redundancy (an I/O fault from it, its removal, or the
//! RAID reporting itself offline) the volume goes `offline`: every I/O fails with a clear
//! state in `bdev_journal_group_get` until `bdev_journal_volume_rebuild` recreates the base.

use super::append::{record_tag, Appender};
use super::format::RecordKind;
use super::Group;
use crate::bdev::{Bdev, BdevChannel, ConfigEntry};
use crate::bufs::share_range;
use crate::channel::IoChannel;
use crate::error::BdevError;
use crate::io::{BdevIo, IoSink, IoStatus, IoType};
use crate::modules::base::ClaimedBase;
use crate::volume::job::{JobSlot, Progress};
use parking_lot::{Mutex, RwLock};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use uuid::Uuid;

pub const ONLINE: u8 = 0;
pub const OFFLINE: u8 = 1;
pub const REBUILDING: u8 = 2;
/// Assembled from the journal, its base not (yet) present.
pub const NO_BASE: u8 = 3;

pub fn state_name(s: u8) -> &'static str {
    match s {
        ONLINE => "online",
        OFFLINE => "offline",
        REBUILDING => "rebuilding",
        _ => "no_base",
    }
}

pub struct ProtectedVolume {
    pub name: String,
    pub uuid: Uuid,
    pub id: u32,
    pub block_size: u32,
    pub num_blocks: u64,
    pub group: Arc<Group>,
    pub base: RwLock<Option<Arc<ClaimedBase>>>,
    /// Bumped when the base changes: channels refresh theirs.
    pub epoch: AtomicU64,
    pub state: AtomicU8,
    pub reason: Mutex<String>,
    pub rebuild: JobSlot<Progress>,
    pub last_rebuild: Mutex<Option<Value>>,
    /// The base zeroes blocks by itself (fixed at registration).
    pub zeroes: bool,
}

impl ProtectedVolume {
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// The base failed beyond its redundancy (or went away): stop serving.
    pub fn go_offline(&self, why: &str) {
        let prev = self.state.swap(OFFLINE, Ordering::AcqRel);
        if prev == ONLINE {
            *self.reason.lock() = why.to_string();
            tracing::error!(volume = %self.name, group = %self.group.name, why, "protected volume offline: its base failed beyond its redundancy; rebuild it with bdev_journal_volume_rebuild");
        } else if prev != OFFLINE {
            self.state.store(prev, Ordering::Release);
        }
    }

    pub fn set_base(&self, base: Option<Arc<ClaimedBase>>) {
        *self.base.write() = base;
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn base_name(&self) -> Option<String> {
        self.base.read().as_ref().map(|b| b.name.clone())
    }

    fn base_supports(&self, t: IoType) -> bool {
        self.base.read().as_ref().is_some_and(|b| b.supports(t))
    }

    pub fn info(&self) -> Value {
        let delta = self
            .group
            .index
            .lock()
            .per_volume
            .get(&self.id)
            .copied()
            .unwrap_or_default();
        let entry = self.group.catalog.lock().volume(self.id).cloned();
        let rebuild = self.rebuild.current().map(|p| p.report().json(p.kind));
        json!({
            "name": self.name,
            "group": self.group.name,
            "uuid": self.uuid.to_string(),
            "id": self.id,
            "state": state_name(self.state()),
            "reason": match self.state() { ONLINE => Value::Null, _ => json!(*self.reason.lock()) },
            "base_bdev": self.base_name(),
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "delta_records": delta.records,
            "delta_bytes": delta.bytes,
            "attributes": entry.as_ref().map(|e| json!(e.attributes)),
            "layout": entry.as_ref().map(|e| json!(e.base)),
            "export": entry.as_ref().map(|e| json!(e.export)),
            "last_backup": entry.as_ref().and_then(|e| e.backup.as_ref()).map(|b| json!(b)),
            "rebuild": rebuild,
            "last_rebuild": self.last_rebuild.lock().clone(),
        })
    }
}

impl Bdev for ProtectedVolume {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &'static str {
        "Journal protected disk"
    }
    fn module(&self) -> &'static str {
        "journal"
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
            // Served as zeroes on the base, journaled as zero records.
            IoType::WriteZeroes | IoType::Unmap => self.zeroes,
            _ => false,
        }
    }
    fn optimal_io_boundary(&self) -> u64 {
        self.base
            .read()
            .as_ref()
            .map_or(0, |b| b.optimal_io_boundary)
    }
    fn write_unit_blocks(&self) -> u32 {
        self.base.read().as_ref().map_or(1, |b| b.write_unit_blocks)
    }
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        let app = Appender::for_group(&self.group);
        Ok(Rc::new_cyclic(|me| VolumeChannel {
            v: self,
            app,
            base: RefCell::new(None),
            epoch: Cell::new(u64::MAX),
            fans: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            outstanding: Cell::new(0),
            me: me.clone(),
        }))
    }
    fn driver_specific(&self) -> Value {
        json!({ "journal": self.info() })
    }
    /// Re-assembled from the journal legs' catalog: save_config needs no entry.
    fn config(&self) -> Option<ConfigEntry> {
        None
    }
    fn on_unregister(&self) {
        if let Some(b) = self.base.write().take() {
            b.release();
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

const TAG_BASE: u64 = 1 << 40;
const TAG_JOURNAL: u64 = 2 << 40;
const TAG_READ: u64 = 3 << 40;
const KIND_MASK: u64 = 0xff << 40;

/// A host write (or flush) fanned out to the base and the journal.
struct Fan {
    parent: Option<BdevIo>,
    pending: u32,
    status: IoStatus,
}

pub struct VolumeChannel {
    v: Arc<ProtectedVolume>,
    app: Rc<Appender>,
    base: RefCell<Option<IoChannel>>,
    epoch: Cell<u64>,
    fans: RefCell<Vec<Fan>>,
    free: RefCell<Vec<u32>>,
    outstanding: Cell<u64>,
    me: Weak<VolumeChannel>,
}

/// Statuses that mean the device failed (rather than the request was bad).
fn fault(st: IoStatus) -> bool {
    matches!(
        st,
        IoStatus::Failed | IoStatus::Removed | IoStatus::Aborted | IoStatus::PathError
    )
}

impl VolumeChannel {
    fn base(&self) -> Option<IoChannel> {
        let e = self.v.epoch.load(Ordering::Acquire);
        if e != self.epoch.get() {
            let b = self.v.base.read().as_ref().and_then(|b| b.channel().ok());
            *self.base.borrow_mut() = b;
            self.epoch.set(e);
        }
        self.base.borrow().clone()
    }

    fn fan_new(&self, f: Fan) -> u32 {
        match self.free.borrow_mut().pop() {
            Some(i) => {
                self.fans.borrow_mut()[i as usize] = f;
                i
            }
            None => {
                let mut fans = self.fans.borrow_mut();
                fans.push(f);
                (fans.len() - 1) as u32
            }
        }
    }

    fn child_done(&self, idx: u32, st: IoStatus) {
        let parent = {
            let mut fans = self.fans.borrow_mut();
            let f = &mut fans[idx as usize];
            if !st.is_success() && f.status.is_success() {
                f.status = st;
            }
            f.pending -= 1;
            if f.pending > 0 {
                return;
            }
            let st = f.status;
            f.parent.take().map(|p| (p, st))
        };
        self.free.borrow_mut().push(idx);
        if let Some((p, st)) = parent {
            self.outstanding.set(self.outstanding.get() - 1);
            p.complete(st);
        }
    }

    fn write(&self, io: BdevIo, me: Rc<VolumeChannel>, base: IoChannel) {
        let bs = self.v.block_size as usize;
        let zeroes = matches!(io.io_type, IoType::WriteZeroes | IoType::Unmap);
        let (off, n) = (io.offset_blocks, io.num_blocks);
        let mut bio = BdevIo::new(
            if zeroes {
                IoType::WriteZeroes
            } else {
                IoType::Write
            },
            off,
            n,
        );
        let mut jio = BdevIo::new(IoType::Write, off, n);
        jio.user_tag = record_tag(
            if zeroes {
                RecordKind::Zeroes
            } else {
                RecordKind::Write
            },
            self.v.id,
        );
        if !zeroes {
            let len = n as usize * bs;
            if !share_range(&io.bufs, 0, len, &mut bio.bufs)
                || !share_range(&io.bufs, 0, len, &mut jio.bufs)
            {
                io.complete_deferred(IoStatus::InvalidArgument);
                return;
            }
        } else if !self.v.base_supports(IoType::WriteZeroes) {
            // Only a rebuild onto a base that cannot zero gets here.
            io.complete_deferred(IoStatus::Unsupported);
            return;
        }
        self.outstanding.set(self.outstanding.get() + 1);
        let idx = self.fan_new(Fan {
            parent: Some(io),
            pending: 2,
            status: IoStatus::Success,
        }) as u64;
        bio.push_completion(me.clone(), TAG_BASE | idx);
        jio.push_completion(me, TAG_JOURNAL | idx);
        base.submit(bio);
        self.app.submit(jio);
    }

    fn flush(&self, io: BdevIo, me: Rc<VolumeChannel>, base: IoChannel) {
        let mut legs = self.v.group.leg_channels();
        for l in legs.iter_mut() {
            if l.as_ref()
                .is_some_and(|c| !c.bdev().supports(IoType::Flush))
            {
                *l = None;
            }
        }
        let n = 1 + legs.iter().flatten().count() as u32;
        self.outstanding.set(self.outstanding.get() + 1);
        let idx = self.fan_new(Fan {
            parent: Some(io),
            pending: n,
            status: IoStatus::Success,
        }) as u64;
        let mut b = BdevIo::new(IoType::Flush, 0, 0);
        b.push_completion(me.clone(), TAG_BASE | idx);
        base.submit(b);
        for ch in legs.into_iter().flatten() {
            let mut l = BdevIo::new(IoType::Flush, 0, 0);
            l.push_completion(me.clone(), TAG_JOURNAL | idx);
            ch.submit(l);
        }
    }
}

impl BdevChannel for VolumeChannel {
    fn submit(&self, mut io: BdevIo) {
        if self.v.state() != ONLINE {
            io.complete_deferred(IoStatus::Failed);
            return;
        }
        let (Some(base), Some(me)) = (self.base(), self.me.upgrade()) else {
            io.complete_deferred(IoStatus::Failed);
            return;
        };
        match io.io_type {
            IoType::Read => {
                self.outstanding.set(self.outstanding.get() + 1);
                io.push_completion(me, TAG_READ);
                base.submit(io);
            }
            IoType::Write | IoType::WriteZeroes | IoType::Unmap => self.write(io, me, base),
            IoType::Flush => {
                if base.bdev().supports(IoType::Flush) {
                    self.flush(io, me, base)
                } else {
                    io.complete_deferred(IoStatus::Success)
                }
            }
            _ => io.complete_deferred(IoStatus::Unsupported),
        }
    }

    fn outstanding(&self) -> u64 {
        self.outstanding.get()
    }
}

impl IoSink for VolumeChannel {
    fn io_done(self: Rc<Self>, io: BdevIo, tag: u64) {
        let st = io.status;
        match tag & KIND_MASK {
            TAG_READ => {
                self.outstanding.set(self.outstanding.get() - 1);
                if fault(st) {
                    self.v
                        .go_offline(&format!("a read of the base failed: {st:?}"));
                }
                io.done();
            }
            TAG_BASE => {
                if fault(st) && io.io_type != IoType::Flush {
                    self.v
                        .go_offline(&format!("a write to the base failed: {st:?}"));
                }
                drop(io);
                self.child_done((tag & 0xffff_ffff) as u32, st);
            }
            _ => {
                drop(io);
                self.child_done((tag & 0xffff_ffff) as u32, st);
            }
        }
    }
}
