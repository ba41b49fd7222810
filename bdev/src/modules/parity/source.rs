//! The rebuild source of data member `a` on a parity node: a read-only bdev whose block b
//! is member a's block b as the parity sees it. Exported over NVMe/TCP, it is what a
//! replacement data node rebuilds from and serves degraded reads from, and what a data
//! member compares itself with to close a write hole.
//!
//! - One member lost: `D_a = c_a^-1 · (V + Σ_{j≠a} c_j · D_j)` from this node's volume V
//!   (P: every c is 1; Q: c_j = g^j).
//! - Two members lost (`a` and `b`), with P and Q: the source on the Q node also reads P
//!   (the `partner`, a remote bdev there) and solves the RAID-6 pair:
//!   `D_a = c·Q + c·g^b·P + Σ_{j∉{a,b}} c·(g^j + g^b)·D_j` with `c = (g^a + g^b)^-1`.
//!   A lost data member and a lost P are the one-member case on Q (P is then rebuilt by
//!   `bdev_parity_verify` with repair).
//!
//! Each piece is one ISA-L pass over the inputs, read as a consistent view: the partner
//! first, then the members (their reads wait for in-flight deltas), then this volume, then
//! the partner again; a delta landing in between (this volume's change counters, or the
//! partner's two reads differing) makes the piece read again.

use super::peer::Peer;
use super::piece::{self, PIECE_BYTES};
use super::superblock::Kind;
use super::volume::{self, coef, ParityVolume};
use crate::bdev::{Bdev, BdevChannel, ConfigEntry};
use crate::bufs::copy_into_at;
use crate::error::BdevError;
use crate::io::{BdevIo, IoStatus, IoType};
use crate::kernels;
use serde_json::{json, Value};
use std::rc::Rc;
use std::sync::Arc;
use uuid::Uuid;

/// The second lost member and the other parity volume (two-member reconstruction).
pub struct AlsoLost {
    pub index: u32,
    pub partner: Arc<Peer>,
}

pub struct RebuildSource {
    pub name: String,
    pub uuid: Uuid,
    pub v: Arc<ParityVolume>,
    pub index: u32,
    pub also_lost: Option<AlsoLost>,
}

/// The inputs of one reconstruction and their coefficients.
struct Combination {
    /// This node's volume.
    own: u8,
    partner: Option<(Arc<Peer>, u8)>,
    members: Vec<(Arc<Peer>, u8)>,
}

impl RebuildSource {
    fn combination(&self) -> Result<Combination, IoStatus> {
        let v = &self.v;
        let a = self.index;
        let Some(lost) = &self.also_lost else {
            let inv = kernels::gf_inv(coef(v.kind, a));
            let members = v
                .other_members(&[a])?
                .into_iter()
                .map(|(p, j)| (p, kernels::gf_mul(inv, coef(v.kind, j))))
                .collect();
            return Ok(Combination {
                own: inv,
                partner: None,
                members,
            });
        };
        let b = lost.index;
        let (ga, gb) = (coef(Kind::Q, a), coef(Kind::Q, b));
        let c = kernels::gf_inv(ga ^ gb);
        let (q_coef, p_coef) = (c, kernels::gf_mul(c, gb));
        let (own, partner) = match v.kind {
            Kind::Q => (q_coef, p_coef),
            _ => (p_coef, q_coef),
        };
        let members = v
            .other_members(&[a, b])?
            .into_iter()
            .map(|(p, j)| (p, kernels::gf_mul(c, coef(Kind::Q, j) ^ gb)))
            .collect();
        Ok(Combination {
            own,
            partner: Some((lost.partner.clone(), partner)),
            members,
        })
    }
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
        json!({ "parity_source": {
            "parity": self.v.name,
            "index": self.index,
            "also_lost": self.also_lost.as_ref().map(|l| l.index),
            "partner": self.also_lost.as_ref().map(|l| l.partner.name.clone()),
        } })
    }
    fn config(&self) -> Option<ConfigEntry> {
        let mut params =
            json!({ "name": self.v.name, "index": self.index, "source_name": self.name });
        if let Some(l) = &self.also_lost {
            params["also_lost"] = json!(l.index);
            params["partner"] = json!(l.partner.name);
        }
        Some(ConfigEntry {
            method: "bdev_parity_source_create",
            params,
        })
    }
    fn on_unregister(&self) {
        if let Some(l) = &self.also_lost {
            l.partner.close();
        }
        self.v.sources.lock().retain(|s| *s != self.name);
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
    let plan = s.combination()?;
    let own = v.base.channel().map_err(|_| IoStatus::Failed)?;
    let path = |p: &Peer| p.channel().map_err(|_| IoStatus::PathError);
    let partner = match &plan.partner {
        Some((p, _)) => Some((path(p)?, p.num_blocks())),
        None => None,
    };
    let mut members = Vec::with_capacity(plan.members.len());
    for (p, _) in &plan.members {
        members.push((path(p)?, p.num_blocks()));
    }
    // Inputs in coefficient order: own volume, partner, members.
    let mut coefs = vec![plan.own];
    coefs.extend(plan.partner.as_ref().map(|p| p.1));
    coefs.extend(plan.members.iter().map(|m| m.1));
    let bs = v.block_size as u64;
    let piece_blocks = PIECE_BYTES / bs;
    let mut lba = io.offset_blocks;
    let end = io.offset_blocks + io.num_blocks;
    while lba < end {
        let n = (end - lba).min(piece_blocks);
        let mut attempt = 0;
        let bufs = loop {
            attempt += 1;
            if attempt > volume::MAX_ATTEMPTS {
                tracing::warn!(source = %s.name, lba, blocks = n, "the blocks kept changing under the reconstruction");
                return Err(IoStatus::Failed);
            }
            ParityVolume::back_off(attempt).await;
            let before = v.stamp(lba, n);
            let first_partner = match &partner {
                Some(p) => piece::read_inputs(std::slice::from_ref(p), lba, n)
                    .await?
                    .pop(),
                None => None,
            };
            let mut bufs = piece::read_inputs(&members, lba, n).await?;
            bufs.insert(0, piece::read(&own, v.data_offset + lba, n).await?);
            if let (Some(p), Some(first)) = (&partner, first_partner) {
                let again = piece::read_inputs(std::slice::from_ref(p), lba, n)
                    .await?
                    .pop()
                    .ok_or(IoStatus::Failed)?;
                if again.as_slice() != first.as_slice() {
                    continue;
                }
                bufs.insert(1, again);
            }
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
