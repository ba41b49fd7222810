//! The point-in-time image of a snapshot split as a read-only bdev (`<mirror>_pit`), which
//! can be exported over NVMe/TCP the moment the split answers.
//!
//! A read whose regions the secondary already holds goes straight down to the secondary
//! (offset by the mirror's metadata area: no copy, no child I/O). A read that touches a
//! region still owed copies that region from the primary first ([`super::pit`]: the copy
//! on demand the background copy then skips), as a task on this reactor, then reads the
//! secondary. Writes are refused: the image is the primary as it was at the split.

use super::channel::MirrorChannel;
use super::pit::{self, CopyFor, Pit};
use super::volume::Mirror;
use crate::bdev::{Bdev, BdevChannel, ConfigEntry};
use crate::error::BdevError;
use crate::io::{BdevIo, IoSink, IoStatus, IoType};
use serde_json::{json, Value};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use uuid::Uuid;

pub struct MirrorImage {
    pub name: String,
    pub m: Arc<Mirror>,
    pub pit: Arc<Pit>,
    uuid: Uuid,
}

impl MirrorImage {
    pub fn new(m: Arc<Mirror>, pit: Arc<Pit>) -> MirrorImage {
        // Stable across restarts: the mirror and the split instant name the image.
        let key = format!("{}:{}.{}", m.uuid, pit.split_time, pit.split_time_ns);
        MirrorImage {
            name: pit.image_name.clone(),
            uuid: Uuid::new_v5(&m.uuid, key.as_bytes()),
            m,
            pit,
        }
    }
}

impl Bdev for MirrorImage {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &'static str {
        "Mirror point-in-time image"
    }
    fn module(&self) -> &'static str {
        "mirror"
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        self.m.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.m.num_blocks
    }
    fn supports(&self, io_type: IoType) -> bool {
        matches!(io_type, IoType::Read | IoType::Flush | IoType::Reset)
    }
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        Ok(Rc::new_cyclic(|me| ImageChannel {
            legs: MirrorChannel::new(self.m.clone()),
            img: self.clone(),
            me: me.clone(),
        }))
    }
    fn driver_specific(&self) -> Value {
        json!({ "mirror_image": { "mirror": self.m.name, "read_only": true, "image": self.pit.info(&self.m) } })
    }
    /// The image is re-created from the mirror's superblock, not from the config.
    fn config(&self) -> Option<ConfigEntry> {
        None
    }
}

struct ImageChannel {
    legs: Rc<MirrorChannel>,
    img: Arc<MirrorImage>,
    me: Weak<ImageChannel>,
}

impl ImageChannel {
    /// (primary, secondary) slots, from the routing word (no lock on the read path).
    fn slots(&self) -> (usize, usize) {
        let p = self.img.m.primary_slot();
        (p, 1 - p)
    }

    fn read_secondary(&self, mut io: BdevIo) {
        let (_, s) = self.slots();
        let (Some(ch), Some(me)) = (self.legs.leg(s), self.me.upgrade()) else {
            io.complete_deferred(IoStatus::Failed);
            return;
        };
        io.offset_blocks += self.img.m.data_offset;
        io.push_completion(me, 0);
        ch.submit(io);
    }
}

impl IoSink for ImageChannel {
    fn io_done(self: Rc<Self>, mut io: BdevIo, _tag: u64) {
        io.offset_blocks -= self.img.m.data_offset;
        io.done();
    }
}

impl BdevChannel for ImageChannel {
    fn submit(&self, io: BdevIo) {
        match io.io_type {
            IoType::Read => {}
            IoType::Flush | IoType::Reset => {
                io.complete_deferred(IoStatus::Success);
                return;
            }
            _ => {
                io.complete_deferred(IoStatus::Unsupported);
                return;
            }
        }
        if self.img.pit.dropped.load(Ordering::Acquire) {
            io.complete_deferred(IoStatus::Removed);
            return;
        }
        let (first, last) = self.img.m.regions(io.offset_blocks, io.num_blocks);
        if !self.img.pit.any_owed(first, last) {
            self.read_secondary(io);
            return;
        }
        let Some(me) = self.me.upgrade() else {
            io.complete_deferred(IoStatus::Removed);
            return;
        };
        strata_reactor::spawn_local(async move {
            let (p, s) = me.slots();
            let (Some(pc), Some(sc)) = (me.legs.leg(p), me.legs.leg(s)) else {
                io.complete(IoStatus::Failed);
                return;
            };
            for r in first..=last {
                if let Err(st) =
                    pit::ensure_copied(&me.img.m, &me.img.pit, &pc, &sc, r, CopyFor::Read).await
                {
                    io.complete(st);
                    return;
                }
            }
            if me.img.pit.dropped.load(Ordering::Acquire) {
                io.complete(IoStatus::Removed);
                return;
            }
            me.read_secondary(io);
        })
        .detach();
    }
}
