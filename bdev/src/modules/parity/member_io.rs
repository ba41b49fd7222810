//! A reactor's I/O path into a parity group data member.
//!
//! Reads go to the base (offset by the metadata area) under the lock units they cover, so
//! a read never returns data whose delta is still on its way to the parity (what lets the
//! parity node read a consistent view of the group while members write). A read whose
//! units are free takes them on the spot and goes straight down (no task, no allocation);
//! one that would wait becomes a task. During a
//! rebuild, a read touching a region not yet rebuilt first rebuilds it from the parity's
//! rebuild source (a degraded read through the parity node) and then reads it locally.
//!
//! A write is a read-modify-write against the parity, one piece at a time, as a task on
//! this reactor: lock the piece's units (so two writes to one block never interleave their
//! deltas), mark its regions in the intent bitmap (on disk before anything is sent), read
//! the old data, `delta = old ^ new` (in the old data's buffer), then write the new data
//! locally and the delta to every reachable parity at once (views of the buffers, no
//! copies), and acknowledge when all have answered. Blocks not yet folded into the parity
//! (a member being added) are written without a delta: the fold picks them up. A parity
//! that fails a delta is marked unreachable; the write still succeeds on the node, and the
//! region stays marked for the repair job.

use super::member::ParityMember;
use super::member_jobs;
use super::piece::{self, PIECE_BYTES};
use crate::bdev::BdevChannel;
use crate::bufs::{share_range, Bufs};
use crate::channel::IoChannel;
use crate::error::BdevError;
use crate::io::{BdevIo, IoSink, IoStatus, IoType};
use crate::kernels;
use crate::wait::submit_wait;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use strata_reactor::dma::DmaBuf;

pub struct MemberChannel {
    m: Arc<ParityMember>,
    base: IoChannel,
    me: Weak<MemberChannel>,
}

/// A read's lock units in its completion tag: first unit and count.
const UNITS_SHIFT: u32 = 24;
const UNITS_MASK: u64 = (1 << UNITS_SHIFT) - 1;

impl MemberChannel {
    pub fn create(m: Arc<ParityMember>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        let base = m.base.channel()?;
        Ok(Rc::new_cyclic(|me| MemberChannel {
            m,
            base,
            me: me.clone(),
        }))
    }

    /// A read whose lock units are free and whose regions need no rebuild goes straight
    /// down, holding its units until it completes (no task). Gives the I/O back otherwise.
    fn try_read_now(&self, mut io: BdevIo) -> Option<BdevIo> {
        let m = &self.m;
        let (ua, uz) = m.lock_units(io.offset_blocks, io.num_blocks);
        let (ra, rz) = m.regions(io.offset_blocks, io.num_blocks);
        // (Units that do not fit the completion tag take the task path.)
        if uz - ua > UNITS_MASK
            || ua > u64::MAX >> UNITS_SHIFT
            || (ra..=rz).any(|r| !m.is_rebuilt(r))
            || !m.locks.try_lock_units(ua, uz)
        {
            return Some(io);
        }
        let Some(me) = self.me.upgrade() else {
            m.locks.unlock_units(ua, uz);
            return Some(io);
        };
        io.offset_blocks += m.data_offset;
        io.push_completion(me, ua << UNITS_SHIFT | (uz - ua));
        self.base.submit(io);
        None
    }
}

impl IoSink for MemberChannel {
    fn io_done(self: Rc<Self>, mut io: BdevIo, tag: u64) {
        let ua = tag >> UNITS_SHIFT;
        self.m.locks.unlock_units(ua, ua + (tag & UNITS_MASK));
        io.offset_blocks -= self.m.data_offset;
        io.done();
    }
}

impl BdevChannel for MemberChannel {
    fn submit(&self, io: BdevIo) {
        match io.io_type {
            IoType::Read | IoType::Checksum => {
                let Some(io) = self.try_read_now(io) else {
                    return;
                };
                let (m, base) = (self.m.clone(), self.base.clone());
                strata_reactor::spawn_local(async move {
                    let (ua, uz) = m.lock_units(io.offset_blocks, io.num_blocks);
                    let held = m.locks.lock_units(ua, uz).await;
                    if let Err(st) = rebuild_touched(&m, &base, &io).await {
                        drop(held);
                        io.complete(st);
                        return;
                    }
                    let mut io = io;
                    io.offset_blocks += m.data_offset;
                    let mut done = submit_wait(&base, io).await;
                    drop(held);
                    done.offset_blocks -= m.data_offset;
                    done.done();
                })
                .detach();
            }
            IoType::Write | IoType::WriteZeroes => {
                let (m, base) = (self.m.clone(), self.base.clone());
                strata_reactor::spawn_local(async move {
                    let st = write(&m, &base, &io).await;
                    io.complete(st.err().unwrap_or(IoStatus::Success));
                })
                .detach();
            }
            IoType::Flush => {
                let (m, base) = (self.m.clone(), self.base.clone());
                strata_reactor::spawn_local(async move {
                    let st = flush(&m, &base).await;
                    io.complete(st.err().unwrap_or(IoStatus::Success));
                })
                .detach();
            }
            _ => io.complete_deferred(IoStatus::Unsupported),
        }
    }
}

/// Rebuilds the regions an I/O touches that are not rebuilt yet (the caller holds their
/// lock units).
async fn rebuild_touched(m: &ParityMember, base: &IoChannel, io: &BdevIo) -> Result<(), IoStatus> {
    let (a, z) = m.regions(io.offset_blocks, io.num_blocks);
    for r in a..=z {
        member_jobs::ensure_rebuilt(m, base, r).await?;
    }
    Ok(())
}

/// Flushes the base and every reachable parity (the deltas are durable there too).
async fn flush(m: &ParityMember, base: &IoChannel) -> Result<(), IoStatus> {
    let mut waits = Vec::new();
    waits.push((None, submit_wait(base, BdevIo::new(IoType::Flush, 0, 0))));
    for (k, t) in m.targets.iter().enumerate() {
        if t.peer.is_failed() {
            continue;
        }
        if let Ok(ch) = t.peer.channel() {
            waits.push((Some(k), submit_wait(&ch, BdevIo::new(IoType::Flush, 0, 0))));
        }
    }
    let mut st = Ok(());
    for (k, w) in waits {
        let io = w.await;
        match (k, io.status.is_success()) {
            (_, true) => {}
            (None, false) => st = Err(io.status),
            (Some(k), false) => m.fail_target(k, "flush failed"),
        }
    }
    st
}

/// A host write (or write-zeroes, written as zero data), a piece at a time.
async fn write(m: &ParityMember, base: &IoChannel, io: &BdevIo) -> Result<(), IoStatus> {
    let bs = m.block_size as u64;
    let piece_blocks = PIECE_BYTES / bs;
    let zeroes = io.io_type != IoType::Write;
    let mut lba = io.offset_blocks;
    let end = io.offset_blocks + io.num_blocks;
    while lba < end {
        // Pieces end on lock-unit boundaries, so each locks as few units as it can.
        let n = (end - lba).min(piece_blocks - lba % piece_blocks);
        let data = if zeroes {
            let mut z = piece::buffer((n * bs) as usize).await?;
            z.as_mut_slice().fill(0);
            let mut b = Bufs::new();
            b.push(z);
            b
        } else {
            let mut b = Bufs::new();
            let at = ((lba - io.offset_blocks) * bs) as usize;
            if !share_range(&io.bufs, at, (n * bs) as usize, &mut b) {
                return Err(IoStatus::InvalidArgument);
            }
            b
        };
        write_piece(m, base, lba, n, data).await?;
        lba += n;
    }
    Ok(())
}

/// One piece: lock, mark, read old, delta, write everywhere.
async fn write_piece(
    m: &ParityMember,
    base: &IoChannel,
    lba: u64,
    n: u64,
    data: Bufs,
) -> Result<(), IoStatus> {
    let (ua, uz) = m.lock_units(lba, n);
    let _held = m.locks.lock_units(ua, uz).await;
    let (ra, rz) = m.regions(lba, n);
    for r in ra..=rz {
        member_jobs::ensure_rebuilt(m, base, r).await?;
        m.bump_seq(r);
    }
    // The part of the piece already in the parity sends a delta.
    let dn = m.folded_end().saturating_sub(lba).min(n);
    let mut delta: Option<DmaBuf> = None;
    let marked = if dn > 0 {
        let (da, dz) = m.regions(lba, dn);
        let mut need = 0;
        for r in da..=dz {
            need = need.max(m.intent.begin_write(r as usize));
        }
        if need > 0 {
            member_jobs::sync_meta(m, need).await;
        }
        match piece::read(base, m.data_offset + lba, dn).await {
            Ok(mut old) => {
                xor_bufs_into(old.as_mut_slice(), &data);
                delta = Some(old);
            }
            Err(st) => {
                end_regions(m, da, dz);
                return Err(st);
            }
        }
        Some((da, dz))
    } else {
        None
    };
    // New data locally and the delta to each reachable parity, all at once.
    let mut local = BdevIo::new(IoType::Write, m.data_offset + lba, n);
    local.bufs = data;
    let local = submit_wait(base, local);
    let mut sent: smallvec::SmallVec<[_; 2]> = smallvec::SmallVec::new();
    if let Some(d) = &delta {
        for (k, t) in m.targets.iter().enumerate() {
            if t.peer.is_failed() {
                continue;
            }
            let (Ok(ch), Ok(v)) = (t.peer.channel(), piece::view(d)) else {
                m.fail_target(k, "no channel");
                continue;
            };
            let (op, coef) = t.delta_op(m.coef_q);
            let mut io = BdevIo::new(op, lba, dn);
            io.gf_coef = coef;
            io.bufs.push(v);
            sent.push((k, submit_wait(&ch, io)));
        }
    }
    let local = local.await;
    let deltas_sent = !sent.is_empty();
    for (k, w) in sent {
        let io = w.await;
        if !io.status.is_success() {
            tracing::debug!(member = %m.name, lba, status = ?io.status, "delta not applied");
            m.fail_target(k, "delta write failed");
        }
    }
    if deltas_sent && !local.status.is_success() {
        // The parity may hold a delta for data the base did not take: keep the region
        // marked until the repair has made the parity match the base again.
        tracing::warn!(member = %m.name, lba, status = ?local.status, "local write failed after its delta went out: the region is kept for repair");
        m.hold();
        if let Some(arc) = super::member(&m.name) {
            member_jobs::start(&arc);
        }
    }
    if let Some((da, dz)) = marked {
        end_regions(m, da, dz);
    }
    for r in ra..=rz {
        m.bump_seq(r);
    }
    if local.status.is_success() {
        Ok(())
    } else {
        Err(local.status)
    }
}

fn end_regions(m: &ParityMember, a: u64, z: u64) {
    for r in a..=z {
        m.intent.end_write(r as usize);
    }
}

/// `dst ^= data` where `data` is a list of segments covering at least `dst.len()` bytes.
fn xor_bufs_into(dst: &mut [u8], data: &[DmaBuf]) {
    let mut off = 0;
    for b in data {
        if off >= dst.len() {
            break;
        }
        let n = b.len().min(dst.len() - off);
        kernels::xor_into(&mut dst[off..off + n], &b.as_slice()[..n]);
        off += n;
    }
}
