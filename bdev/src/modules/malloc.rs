//! `malloc`: a RAM disk in DMA memory (hugepages when reserved).

use crate::bdev::{Bdev, BdevChannel, ConfigEntry};
use crate::error::BdevError;
use crate::io::{BdevIo, ChecksumAlg, IoStatus, IoType};
use crate::kernels;
use crate::modules::validate_block_size;
use crate::registry;
use parking_lot::Mutex;
use serde_json::json;
use std::rc::Rc;
use std::sync::Arc;
use strata_reactor::dma::DmaRegion;
use uuid::Uuid;

/// Parameters of `bdev_malloc_create`.
#[derive(Debug, Clone)]
pub struct MallocOptions {
    pub name: String,
    pub num_blocks: u64,
    pub block_size: u32,
    pub uuid: Option<Uuid>,
}

/// Locks serialising XOR (read-modify-write) per stripe of blocks, hashed by block number.
const XOR_LOCKS: usize = 64;

pub struct MallocBdev {
    name: String,
    uuid: Uuid,
    block_size: u32,
    num_blocks: u64,
    /// Shared with the views its zero-copy reads lend out.
    mem: Arc<DmaRegion>,
    xor_locks: [Mutex<()>; XOR_LOCKS],
}

/// Creates and registers a malloc bdev.
pub fn create(opts: MallocOptions) -> Result<Arc<MallocBdev>, BdevError> {
    validate_block_size(opts.block_size)?;
    if opts.num_blocks == 0 {
        return Err(BdevError::Invalid("num_blocks must be > 0".into()));
    }
    let bytes = opts
        .num_blocks
        .checked_mul(opts.block_size as u64)
        .filter(|b| *b <= isize::MAX as u64)
        .ok_or_else(|| BdevError::Invalid("size overflows".into()))?;
    if registry::get(&opts.name).is_some() {
        return Err(BdevError::Exists(opts.name));
    }
    let mem = DmaRegion::new(bytes as usize).map_err(|e| BdevError::NoMemory(e.to_string()))?;
    let b = Arc::new(MallocBdev {
        name: opts.name,
        uuid: opts.uuid.unwrap_or_else(Uuid::new_v4),
        block_size: opts.block_size,
        num_blocks: opts.num_blocks,
        mem: Arc::new(mem),
        xor_locks: std::array::from_fn(|_| Mutex::new(())),
    });
    registry::register(b.clone())?;
    Ok(b)
}

/// Unregisters a malloc bdev (only one of this module).
pub fn delete(name: &str) -> Result<(), BdevError> {
    super::delete_of_module(name, "malloc")
}

impl Bdev for MallocBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &'static str {
        "Malloc disk"
    }
    fn module(&self) -> &'static str {
        "malloc"
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
        // GF XOR writes are a parity volume's (it scales, then XOR-writes here).
        t != IoType::GfXorWrite
    }
    fn lends_read_views(&self) -> bool {
        true
    }
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        Ok(Rc::new(MallocChannel { bdev: self }))
    }
    fn driver_specific(&self) -> serde_json::Value {
        json!({ "malloc": { "hugepages": self.mem.is_hugepage_backed() } })
    }
    fn config(&self) -> Option<ConfigEntry> {
        Some(ConfigEntry {
            method: "bdev_malloc_create",
            params: json!({
                "name": self.name,
                "num_blocks": self.num_blocks,
                "block_size": self.block_size,
                "uuid": self.uuid.to_string(),
            }),
        })
    }
}

struct MallocChannel {
    bdev: Arc<MallocBdev>,
}

impl MallocBdev {
    fn execute(&self, io: &mut BdevIo) -> IoStatus {
        let bs = self.block_size as usize;
        let off = io.offset_blocks as usize * bs;
        let len = io.num_blocks as usize * bs;
        let ok = match io.io_type {
            // The channel let a view read through because this bdev lends views.
            IoType::Read if io.want_view && io.bufs.is_empty() => {
                io.view = self.mem.view(off, len);
                io.view.is_some()
            }
            IoType::Read => {
                let mut ok = true;
                io.for_each_segment_mut(len, |o, s| ok &= self.mem.read_at(off + o, s));
                ok
            }
            IoType::Write => {
                let mut ok = true;
                io.for_each_segment(len, |o, s| ok &= self.mem.write_at(off + o, s));
                ok
            }
            IoType::WriteZeroes | IoType::Unmap => self.mem.zero_at(off, len),
            IoType::Flush | IoType::Reset => true,
            // Refused by the channel (not supported).
            IoType::GfXorWrite => false,
            IoType::XorWrite => {
                // Lock every stripe the range hashes to, in index order (no deadlock).
                let first = io.offset_blocks as usize;
                let n = (io.num_blocks as usize).min(XOR_LOCKS);
                let mut idx: Vec<usize> = (first..first + n).map(|b| b % XOR_LOCKS).collect();
                idx.sort_unstable();
                idx.dedup();
                let _guards: Vec<_> = idx.iter().map(|&i| self.xor_locks[i].lock()).collect();
                let mut ok = true;
                io.for_each_segment(len, |o, s| {
                    ok &= self.mem.xor_at(off + o, s, kernels::xor_into);
                });
                ok
            }
            IoType::Checksum => {
                let chunk = io.chunk_blocks as usize * bs;
                let count = io.checksum_count() as usize;
                let mut ok = true;
                for i in 0..count {
                    let c_off = off + i * chunk;
                    let c_len = chunk.min(off + len - c_off);
                    // CRC32C reads the store in place; SHA-256 through private copies.
                    let digest = match io.checksum_alg {
                        ChecksumAlg::Crc32c => {
                            kernels::crc32c_append_region(0, &self.mem, c_off, c_len)
                                .map(|c| smallvec::SmallVec::from_slice(&c.to_le_bytes()))
                        }
                        ChecksumAlg::Sha256 => {
                            let mut h = kernels::ChunkHasher::new(io.checksum_alg);
                            self.mem
                                .visit_at(c_off, c_len, |d| h.update(d))
                                .then(|| h.finish())
                        }
                    };
                    match digest {
                        Some(d) => io.put_digest(i, &d),
                        None => ok = false,
                    }
                }
                ok
            }
        };
        if ok {
            IoStatus::Success
        } else {
            IoStatus::OutOfRange
        }
    }
}

impl BdevChannel for MallocChannel {
    #[inline]
    fn submit(&self, mut io: BdevIo) {
        let st = self.bdev.execute(&mut io);
        io.complete_deferred(st);
    }
}
