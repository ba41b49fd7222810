//! `null`: completes every I/O at once, storing nothing; reads return zeroes. For
//! benchmarking the layers above a device.

use crate::bdev::{Bdev, BdevChannel, ConfigEntry};
use crate::error::BdevError;
use crate::io::{BdevIo, IoStatus, IoType};
use crate::modules::validate_block_size;
use crate::registry;
use serde_json::json;
use std::rc::Rc;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct NullOptions {
    pub name: String,
    pub num_blocks: u64,
    pub block_size: u32,
    pub uuid: Option<Uuid>,
}

pub struct NullBdev {
    name: String,
    uuid: Uuid,
    block_size: u32,
    num_blocks: u64,
}

pub fn create(opts: NullOptions) -> Result<Arc<NullBdev>, BdevError> {
    validate_block_size(opts.block_size)?;
    if opts.num_blocks == 0
        || opts
            .num_blocks
            .checked_mul(opts.block_size as u64)
            .is_none()
    {
        return Err(BdevError::Invalid(
            "num_blocks must be > 0 and the size must fit in 64 bits".into(),
        ));
    }
    let b = Arc::new(NullBdev {
        name: opts.name,
        uuid: opts.uuid.unwrap_or_else(Uuid::new_v4),
        block_size: opts.block_size,
        num_blocks: opts.num_blocks,
    });
    registry::register(b.clone())?;
    Ok(b)
}

pub fn delete(name: &str) -> Result<(), BdevError> {
    super::delete_of_module(name, "null")
}

impl Bdev for NullBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &'static str {
        "Null disk"
    }
    fn module(&self) -> &'static str {
        "null"
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
        !matches!(t, IoType::XorWrite | IoType::GfXorWrite | IoType::Checksum)
    }
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        Ok(Rc::new(NullChannel))
    }
    fn config(&self) -> Option<ConfigEntry> {
        Some(ConfigEntry {
            method: "bdev_null_create",
            params: json!({
                "name": self.name,
                "num_blocks": self.num_blocks,
                "block_size": self.block_size,
                "uuid": self.uuid.to_string(),
            }),
        })
    }
}

struct NullChannel;

impl BdevChannel for NullChannel {
    #[inline]
    fn submit(&self, mut io: BdevIo) {
        // A read fills its buffers (zeroes here): pool buffers hold earlier I/O's data, which
        // must never reach another host.
        if io.io_type == IoType::Read {
            let len = io.xfer_len();
            io.for_each_segment_mut(len, |_, s| s.fill(0));
        }
        io.complete_deferred(IoStatus::Success);
    }
}
