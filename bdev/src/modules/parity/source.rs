//! The rebuild source of data member `i` on a parity node: a read-only bdev whose block b
//! is member i's block b as the parity sees it, `D_i = c_i^-1 · (V_b + Σ_{j≠i} c_j · D_j,b)`
//! (V is P or Q, c the member's coefficient in it). Exported over NVMe/TCP, it is what a
//! replacement data node rebuilds from and serves degraded reads from, and what a data
//! member compares itself with to close a write hole. Each read reads the parity base and
//! every other member (zero past a smaller member's end) and combines them with one ISA-L
//! pass per piece.

use super::piece::{self, PIECE_BYTES};
use super::volume::ParityVolume;
use crate::bdev::{Bdev, BdevChannel, ConfigEntry};
use crate::bufs::copy_into_at;
use crate::error::BdevError;
use crate::io::{BdevIo, IoStatus, IoType};
use crate::kernels;
use serde_json::{json, Value};
use std::rc::Rc;
use std::sync::Arc;
use uuid::Uuid;

pub struct RebuildSource {
    pub name: String,
    pub uuid: Uuid,
    pub v: Arc<ParityVolume>,
    pub index: u32,
}

impl Bdev for RebuildSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &'static str {
        "Parity rebuild source"
    }
    fn module(&self) -> &'static str {
        "parity"
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        self.v.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.v.num_blocks
    }
    fn supports(&self, t: IoType) -> bool {
        matches!(t, IoType::Read | IoType::Flush)
    }
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        Ok(Rc::new(SourceChannel { s: self }))
    }
    fn driver_specific(&self) -> Value {
        json!({ "parity_source": { "parity": self.v.name, "index": self.index } })
    }
    fn config(&self) -> Option<ConfigEntry> {
        Some(ConfigEntry {
            method: "bdev_parity_source_create",
            params: json!({ "name": self.v.name, "index": self.index, "source_name": self.name }),
        })
    }
}

struct SourceChannel {
    s: Arc<RebuildSource>,
}

impl BdevChannel for SourceChannel {
    fn submit(&self, mut io: BdevIo) {
        if io.io_type == IoType::Flush {
            io.complete_deferred(IoStatus::Success);
            return;
        }
        let s = self.s.clone();
        strata_reactor::spawn_local(async move {
            let st = match reconstruct(&s, &mut io).await {
                Ok(()) => IoStatus::Success,
                Err(st) => {
                    tracing::warn!(source = %s.name, lba = io.offset_blocks, blocks = io.num_blocks, status = ?st, "reconstruction read failed");
                    st
                }
            };
            io.complete(st);
        })
        .detach();
    }
}

async fn reconstruct(s: &RebuildSource, io: &mut BdevIo) -> Result<(), IoStatus> {
    let v = &s.v;
    let (inv, others) = v.reconstruct_plan(s.index)?;
    let base = v.base.channel().map_err(|_| IoStatus::Failed)?;
    let mut chans = Vec::with_capacity(others.len());
    for (p, c) in &others {
        chans.push((
            p.channel().map_err(|_| IoStatus::PathError)?,
            p.num_blocks,
            *c,
        ));
    }
    let bs = v.block_size as u64;
    let piece_blocks = PIECE_BYTES / bs;
    let mut coefs = Vec::with_capacity(others.len() + 1);
    coefs.push(inv);
    coefs.extend(chans.iter().map(|c| c.2));
    let mut lba = io.offset_blocks;
    let end = io.offset_blocks + io.num_blocks;
    while lba < end {
        let n = (end - lba).min(piece_blocks);
        // The members first, then the parity; again if a delta moved in between.
        let mut attempt = 0;
        let bufs = loop {
            attempt += 1;
            ParityVolume::back_off(attempt).await;
            let before = v.stamp(lba, n);
            let mut bufs = Vec::with_capacity(chans.len() + 1);
            for (ch, have, _) in &chans {
                bufs.push(piece::read_zero_extended(ch, lba, n, *have).await?);
            }
            bufs.insert(0, piece::read(&base, v.data_offset + lba, n).await?);
            if v.stamp(lba, n) == before {
                break bufs;
            }
        };
        let mut out = piece::buffer((n * bs) as usize).await?;
        let srcs: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
        kernels::gf_combine(&coefs, &srcs, out.as_mut_slice())
            .map_err(|_| IoStatus::InvalidArgument)?;
        let at = ((lba - io.offset_blocks) * bs) as usize;
        copy_into_at(&mut io.bufs, at, out.as_slice());
        lba += n;
    }
    Ok(())
}
