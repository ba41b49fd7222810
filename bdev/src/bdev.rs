//! The `Bdev` trait (a block device of any kind) and `BdevChannel` (its per-reactor I/O path).

use crate::error::BdevError;
use crate::io::{BdevIo, IoType};
use serde_json::Value;
use std::rc::Rc;
use std::sync::Arc;
use uuid::Uuid;

/// A block device: base (malloc, uring, ...) or virtual (error, delay, raid, mirror, ...).
///
/// A `Bdev` is shared by all reactors; I/O goes through a per-reactor [`BdevChannel`] made by
/// [`Bdev::create_channel`], so the data path needs no locks.
pub trait Bdev: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// SPDK's product name ("Malloc disk", "URING bdev", ...).
    fn product_name(&self) -> &'static str;
    /// The module that owns it ("malloc", "uring", "error", ...).
    fn module(&self) -> &'static str;
    fn uuid(&self) -> Uuid;
    fn block_size(&self) -> u32;
    fn num_blocks(&self) -> u64;
    fn supports(&self, io_type: IoType) -> bool;
    /// I/O should not cross multiples of this many blocks (0: no boundary). RAID volumes set
    /// their stripe size, so layers above can write whole stripes.
    fn optimal_io_boundary(&self) -> u64 {
        0
    }
    /// Writes should be multiples of this many blocks to avoid read-modify-write.
    fn write_unit_blocks(&self) -> u32 {
        1
    }
    /// Whether a read that asks for a view ([`BdevIo::read_view`]) completes with one of this
    /// bdev's own memory in [`crate::io::IoInner::view`] (zero-copy, SPDK's "zcopy"):
    /// RAM-backed bdevs.
    fn lends_read_views(&self) -> bool {
        false
    }
    /// Creates this reactor's I/O channel. Called on the reactor that will use it.
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError>;
    /// Module-specific details for `bdev_get_bdevs`.
    fn driver_specific(&self) -> Value {
        Value::Object(Default::default())
    }
    /// The RPC call that recreates this bdev (`save_config`), if it can be recreated.
    fn config(&self) -> Option<ConfigEntry>;
    /// Called once when the bdev is unregistered: release claims on base bdevs, flush.
    fn on_unregister(&self) {}
}

/// One reactor's path to a bdev. Implementations complete every submitted I/O exactly once,
/// from a later call stack if they finish synchronously ([`BdevIo::complete_deferred`]).
pub trait BdevChannel {
    fn submit(&self, io: BdevIo);
    /// I/O submitted and not yet completed on this channel.
    fn outstanding(&self) -> u64 {
        0
    }
}

/// An RPC method call that recreates a bdev.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigEntry {
    pub method: &'static str,
    pub params: Value,
}
