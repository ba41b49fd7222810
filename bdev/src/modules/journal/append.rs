//! Group commit: each reactor has one appender per group. Records queue while the
//! reactor's previous batch is being written, then go down together as one batch — one
//! write per leg, the records' data passed by reference (views of the host's buffers, no
//! copy). A batch completes its records once it is durable on every leg that takes writes
//! and the frontier has passed it ([`super::log`]). A full log holds the batch back
//! (back-pressure: writes wait, counted and warned about) until a drain trims it.
//!
//! A record is a [`BdevIo`]: `offset_blocks`/`num_blocks` are the volume's LBA range,
//! `user_tag` = volume id | kind << 32, `bufs` its data (none for zeroes); a catalog record
//! carries the JSON padded to blocks, its length in `offset_blocks`.

use super::format::{self, BatchHeader, Entry, RecordKind};
use super::log::{RecordLoc, Reserve};
use super::Group;
use crate::bufs::share_range;
use crate::io::{BdevIo, IoStatus, IoType};
use crate::wait;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Data one batch carries at most (a single larger record still goes alone).
pub const MAX_BATCH_DATA: u64 = 1 << 20;

pub const KIND_SHIFT: u32 = 32;

pub fn record_tag(kind: RecordKind, volume: u32) -> u64 {
    (kind as u64) << KIND_SHIFT | volume as u64
}

fn tag_kind(tag: u64) -> RecordKind {
    match tag >> KIND_SHIFT {
        2 => RecordKind::Catalog,
        3 => RecordKind::Zeroes,
        _ => RecordKind::Write,
    }
}

pub struct Appender {
    g: Arc<Group>,
    queue: RefCell<VecDeque<BdevIo>>,
    waker: RefCell<Option<Waker>>,
    running: Cell<bool>,
}

thread_local! {
    static APPENDERS: RefCell<HashMap<uuid::Uuid, Rc<Appender>>> = RefCell::new(HashMap::new());
}

impl Appender {
    /// This reactor's appender for group `g`.
    pub fn for_group(g: &Arc<Group>) -> Rc<Appender> {
        APPENDERS.with(|a| {
            let mut a = a.borrow_mut();
            if let Some(x) = a.get(&g.uuid) {
                if Arc::ptr_eq(&x.g, g) {
                    return x.clone();
                }
            }
            let x = Rc::new(Appender {
                g: g.clone(),
                queue: RefCell::new(VecDeque::with_capacity(256)),
                waker: RefCell::new(None),
                running: Cell::new(false),
            });
            a.insert(g.uuid, x.clone());
            x
        })
    }

    /// Queues a record; it completes once durable in the journal.
    pub fn submit(self: &Rc<Self>, io: BdevIo) {
        self.queue.borrow_mut().push_back(io);
        if !self.running.replace(true) {
            let me = self.clone();
            strata_reactor::spawn_local(async move { me.run().await }).detach();
        } else if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn data_blocks(io: &BdevIo) -> u64 {
        match tag_kind(io.user_tag) {
            RecordKind::Zeroes => 0,
            _ => io.num_blocks,
        }
    }

    async fn run(self: Rc<Self>) {
        let g = self.g.clone();
        let bs = g.block_size as u64;
        let mut batch: Vec<BdevIo> = Vec::with_capacity(format::MAX_BATCH_RECORDS);
        loop {
            poll_fn(|cx| {
                if self.queue.borrow().is_empty() {
                    *self.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            // Take what queued, up to a batch.
            let mut data = 0u64;
            {
                let mut q = self.queue.borrow_mut();
                while let Some(io) = q.front() {
                    let d = Self::data_blocks(io);
                    if !batch.is_empty()
                        && (batch.len() == format::MAX_BATCH_RECORDS
                            || (data + d) * bs > MAX_BATCH_DATA)
                    {
                        break;
                    }
                    data += d;
                    if let Some(io) = q.pop_front() {
                        batch.push(io);
                    }
                }
            }
            let status = self.write_batch(&mut batch, data).await;
            for io in batch.drain(..) {
                io.complete(status);
            }
        }
    }

    /// Writes one batch; the status its records complete with.
    async fn write_batch(&self, batch: &mut [BdevIo], data: u64) -> IoStatus {
        let g = &self.g;
        if g.journal_lost() || g.stopping.load(Ordering::Acquire) {
            return IoStatus::Failed;
        }
        let bs = g.block_size;
        let n = batch.len();
        let hb = format::header_blocks(n, bs);
        let total = hb as u64 + data;
        // Everything that can fail but the writes is checked before the space is taken: a
        // reserved batch always reaches the log (a hole would end a scan before later,
        // acknowledged batches).
        if batch
            .iter()
            .any(|io| io.data_len() < Self::data_blocks(io) as usize * bs as usize)
        {
            tracing::error!(group = %g.name, "journal batch: record buffers shorter than their blocks");
            return IoStatus::InvalidArgument;
        }
        let hdr_len = hb as usize * bs as usize;
        let mut hbuf = match strata_reactor::dma::alloc_wait(hdr_len).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(group = %g.name, error = %e, "no buffer for a journal batch header");
                return IoStatus::NoMemory;
            }
        };
        // Space, or back-pressure until a drain trims the log.
        let (pos, first_seq, run) = loop {
            match g.reserve(total, n as u64) {
                Ok(x) => break x,
                Err(Reserve::TooBig) => {
                    tracing::error!(group = %g.name, blocks = total, "journal record larger than the journal");
                    return IoStatus::Failed;
                }
                Err(Reserve::Full) => {
                    g.backpressure_waits.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    {
                        let mut last = g.last_full_warning.lock();
                        if last.is_none_or(|t| now.duration_since(t) > Duration::from_secs(5)) {
                            *last = Some(now);
                            tracing::warn!(group = %g.name, fill_percent = g.fill_percent(), "journal full: writes wait for a drain to trim it");
                        }
                    }
                    super::drain::request(g, "journal full");
                    poll_fn(|cx| g.poll_space(total, cx.waker())).await;
                    if g.journal_lost() || g.stopping.load(Ordering::Acquire) {
                        return IoStatus::Failed;
                    }
                }
            }
        };
        // The header: one entry per record, each with its data's CRC32C.
        let mut entries = Vec::with_capacity(n);
        let mut locs = Vec::with_capacity(n);
        let mut data_pos = pos + hb as u64;
        for (k, io) in batch.iter().enumerate() {
            let kind = tag_kind(io.user_tag);
            let db = Self::data_blocks(io) as u32;
            let len = db as usize * bs as usize;
            let mut crc = 0u32;
            if db > 0 {
                io.for_each_segment(len, |_, s| crc = crate::kernels::crc32c_append(crc, s));
            }
            let (lba, blocks) = match kind {
                RecordKind::Catalog => (io.offset_blocks, 0),
                _ => (io.offset_blocks, io.num_blocks),
            };
            let volume = (io.user_tag & 0xffff_ffff) as u32;
            entries.push(Entry {
                kind,
                volume,
                lba,
                blocks,
                data_blocks: db,
                crc,
            });
            locs.push(RecordLoc {
                seq: first_seq + k as u64,
                batch_pos: pos,
                batch_seq: first_seq,
                kind,
                volume,
                lba,
                blocks,
                data_pos,
                data_blocks: db,
                crc,
            });
            data_pos += db as u64;
        }
        let header = BatchHeader {
            first_seq,
            run,
            hdr_blocks: hb,
            total_blocks: total,
            entries,
        };
        format::encode_batch(hbuf.as_mut_slice(), &g.uuid, &header);
        // One write per leg: header, then every record's data.
        let chans = g.write_legs();
        let lba = g.phys(pos);
        let mut waits = Vec::with_capacity(2);
        for (i, leg) in chans.iter().enumerate() {
            let Some((ch, complete)) = leg else { continue };
            let mut w = BdevIo::new(IoType::Write, lba, total);
            // Lengths were checked above: the views cover what they must.
            share_range(std::slice::from_ref(&hbuf), 0, hdr_len, &mut w.bufs);
            for io in batch.iter() {
                let len = Self::data_blocks(io) as usize * bs as usize;
                if len > 0 {
                    share_range(&io.bufs, 0, len, &mut w.bufs);
                }
            }
            waits.push((i, *complete, wait::submit_wait(ch, w)));
        }
        // Durable only on a leg that holds every record (a resyncing one does not).
        let mut ok_legs = 0;
        let mut failed = false;
        for (i, complete, w) in waits {
            let io = w.await;
            if io.status.is_success() {
                if complete {
                    ok_legs += 1;
                }
            } else {
                g.fail_leg(i, &format!("journal write failed: {:?}", io.status));
                failed = true;
            }
        }
        drop(hbuf);
        // The header must show every failed leg before a write only the other one holds is
        // acknowledged (whoever noticed the failure first).
        if (failed || ok_legs < 2) && g.leg_states_durable().await.is_err() {
            ok_legs = 0;
        }
        if ok_legs == 0 || g.journal_lost() {
            g.batch_done(pos, Vec::new());
            return IoStatus::Failed;
        }
        let nrec = locs.len() as u64;
        let bytes = data * bs as u64;
        g.batch_done(pos, locs);
        g.wait_frontier(pos + total).await;
        if g.durable_point().0 < pos + total {
            // The group stopped before the batches ahead of this one finished.
            return IoStatus::Failed;
        }
        g.appended_records.fetch_add(nrec, Ordering::Relaxed);
        g.appended_batches.fetch_add(1, Ordering::Relaxed);
        g.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
        IoStatus::Success
    }
}

/// Appends the group's catalog as a journal record (from management code on a reactor).
pub async fn append_catalog(g: &Arc<Group>) -> Result<(), crate::BdevError> {
    let raw = {
        let mut c = g.catalog.lock();
        c.touch();
        c.to_bytes()
    };
    let bs = g.block_size as usize;
    let blocks = raw.len().div_ceil(bs).max(1);
    let mut padded = vec![0u8; blocks * bs];
    padded[..raw.len()].copy_from_slice(&raw);
    let mut io = BdevIo::new(IoType::Write, raw.len() as u64, blocks as u64);
    io.user_tag = record_tag(RecordKind::Catalog, 0);
    io.bufs = wait::alloc_bufs(padded.len())
        .await
        .map_err(|st| crate::BdevError::IoFailed(format!("no buffers: {st:?}")))?;
    io.for_each_segment_mut(padded.len(), |off, s| {
        let n = s.len();
        s.copy_from_slice(&padded[off..off + n])
    });
    let a = Appender::for_group(g);
    let io = wait::submit_wait_with(io, |io| a.submit(io)).await;
    if io.status.is_success() {
        Ok(())
    } else {
        Err(crate::BdevError::IoFailed(format!(
            "group {}: the catalog could not be journaled ({:?})",
            g.name, io.status
        )))
    }
}
