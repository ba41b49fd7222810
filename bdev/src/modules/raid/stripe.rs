//! The slow path: operations that lock a stripe, read before they write, or rebuild data
//! from parity. Each runs as a task on the submitting reactor and works on a stripe in
//! *chunks* of rows (at most [`CHUNK_BYTES`] per member) held in pool buffers.
//!
//! Writes of a chunk choose reconstruct-write (read the data the write leaves alone, then
//! compute parity from the whole row range) or read-modify-write (read the old data being
//! replaced and the old parity, and fold the difference in), whichever reads fewer blocks;
//! a chunk the write covers on every data strip reads nothing. With a member out, a chunk
//! is loaded from every readable member, the missing strips are reconstructed, the new data
//! is laid over them and parity is computed afresh. A member that fails mid-operation is
//! marked failed and the chunk is redone degraded: the redo writes the complete new data
//! and parity, so it is correct whatever part of the first attempt reached the disks.

use super::channel::{Piece, RaidChannel};
use super::geometry::{Level, Role};
use crate::bdev::BdevChannel;
use crate::bufs::{copy_into_at, join_into, share_range, total_len, Bufs, Carver};
use crate::io::{BdevIo, IoStatus, IoType};
use crate::kernels;
use crate::wait::{self, IoWait};
use futures_util::future::join_all;
use smallvec::SmallVec;
use strata_reactor::dma::{self, DmaBuf};

/// Bytes per member a slow-path chunk covers.
pub const CHUNK_BYTES: usize = 64 << 10;

/// Why a chunk did not complete.
pub enum Step {
    /// A member failed: redo the chunk with the new member states.
    Retry,
    Fail(IoStatus),
}

type Pieces = SmallVec<[(Piece, Bufs); 8]>;

/// A member I/O in flight, or one that could not be submitted (its buffers handed back).
pub enum Pending {
    Now(IoStatus, Bufs),
    Wait(IoWait),
}

impl Pending {
    /// The I/O's status and its buffers, given back.
    async fn finish(self) -> (IoStatus, Bufs) {
        match self {
            Pending::Now(st, bufs) => (st, bufs),
            Pending::Wait(w) => {
                let mut io = w.await;
                (io.status, std::mem::take(&mut io.bufs))
            }
        }
    }
}

/// Where a scratch strip buffer's bytes are while member reads fill parts of it.
enum Part {
    /// Kept here (rows the write supplies).
    Here(DmaBuf),
    /// Lent to read `k` of the batch.
    Read(usize),
}

/// One buffer from the parts a read batch gave back (`got[k]` for read `k`).
fn single(bufs: Bufs) -> Result<DmaBuf, Step> {
    let mut it = bufs.into_iter();
    let mut b = it.next().ok_or(Step::Fail(IoStatus::Failed))?;
    for next in it {
        b.unsplit(next).map_err(|_| Step::Fail(IoStatus::Failed))?;
    }
    Ok(b)
}

/// Joins a strip buffer's parts back together, taking the lent ones from `got`.
fn assemble(parts: SmallVec<[Part; 3]>, got: &mut [Bufs]) -> Result<DmaBuf, Step> {
    let mut out = Bufs::new();
    for p in parts {
        match p {
            Part::Here(b) => join_into(&mut out, [b]),
            Part::Read(k) => {
                let b = got.get_mut(k).ok_or(Step::Fail(IoStatus::Failed))?;
                join_into(&mut out, std::mem::take(b));
            }
        }
    }
    single(out)
}

/// Written rows `[a, b)` of data strip `i` and the new data for them.
struct Written {
    i: usize,
    a: u64,
    b: u64,
    src: Bufs,
}

async fn scratch(len: usize) -> Result<DmaBuf, Step> {
    if let Some(b) = dma::alloc(len) {
        return Ok(b);
    }
    dma::alloc_wait(len)
        .await
        .map_err(|_| Step::Fail(IoStatus::InvalidArgument))
}

pub(super) fn one(b: DmaBuf) -> Bufs {
    let mut v = Bufs::new();
    v.push(b);
    v
}

/// A read-only view of bytes `off..off + len` of `b`, for member writes.
pub(super) fn shared(b: &DmaBuf, off: usize, len: usize) -> Bufs {
    one(b
        .share(off, len)
        .unwrap_or_else(|| unreachable!("view inside its buffer")))
}

/// Copies the bytes of `src` views into `dst` from `off`.
fn copy_in(dst: &mut [u8], mut off: usize, src: &[DmaBuf]) {
    for b in src {
        dst[off..off + b.len()].copy_from_slice(b.as_slice());
        off += b.len();
    }
}

/// XORs the bytes of `src` views into `dst` from `off`.
fn xor_in(dst: &mut [u8], mut off: usize, src: &[DmaBuf]) {
    for b in src {
        kernels::xor_into(&mut dst[off..off + b.len()], b.as_slice());
        off += b.len();
    }
}

impl RaidChannel {
    fn bs(&self) -> usize {
        self.array.block_size as usize
    }

    pub(super) fn chunk_rows(&self) -> u64 {
        (CHUNK_BYTES / self.bs()).max(1) as u64
    }

    /// Submits an I/O to a member at an absolute member block.
    pub(super) fn mio_abs(
        &self,
        slot: usize,
        t: IoType,
        off: u64,
        blocks: u64,
        bufs: Bufs,
    ) -> Pending {
        let Some(ch) = self.member(slot) else {
            return Pending::Now(IoStatus::Removed, bufs);
        };
        let mut io = BdevIo::new(t, off, blocks);
        io.bufs = bufs;
        Pending::Wait(wait::submit_wait(&ch, io))
    }

    /// Submits an I/O to row `row` of `stripe` on a member's data area.
    pub(super) fn mio(
        &self,
        slot: usize,
        t: IoType,
        stripe: u64,
        row: u64,
        blocks: u64,
        bufs: Bufs,
    ) -> Pending {
        let off = self.array.data_offset + stripe * self.array.geo.strip + row;
        self.mio_abs(slot, t, off, blocks, bufs)
    }

    /// Waits for member I/Os. Failed members are marked; `Retry` if any failed.
    pub(super) async fn wait_all(&self, v: Vec<(usize, Pending)>) -> Result<(), Step> {
        self.wait_count(v).await.1
    }

    /// As [`Self::wait_all`], also counting the I/Os that succeeded. The I/Os' buffers are
    /// dropped as they come back (nothing is collected: writes need none back).
    pub(super) async fn wait_count(&self, v: Vec<(usize, Pending)>) -> (usize, Result<(), Step>) {
        self.wait_each(v, drop).await
    }

    /// As [`Self::wait_count`], also giving back each I/O's buffers, in order (reads fill
    /// buffers they own until they complete).
    pub(super) async fn wait_bufs(
        &self,
        v: Vec<(usize, Pending)>,
    ) -> (Vec<Bufs>, usize, Result<(), Step>) {
        let mut got = Vec::with_capacity(v.len());
        let (ok, res) = self.wait_each(v, |b| got.push(b)).await;
        (got, ok, res)
    }

    /// Waits for member I/Os in order, handing each one's buffers to `back`. Failed members
    /// are marked; `Retry` if any failed.
    async fn wait_each(
        &self,
        v: Vec<(usize, Pending)>,
        mut back: impl FnMut(Bufs),
    ) -> (usize, Result<(), Step>) {
        let mut out = Ok(());
        let mut ok = 0;
        for (slot, p) in v {
            let (st, bufs) = p.finish().await;
            back(bufs);
            match st {
                IoStatus::Success => ok += 1,
                IoStatus::Failed | IoStatus::Removed | IoStatus::PathError => {
                    self.array.fail_member(slot, "I/O error");
                    if out.is_ok() {
                        out = Err(Step::Retry);
                    }
                }
                other => out = Err(Step::Fail(other)),
            }
        }
        (ok, out)
    }

    pub(super) async fn run_slow(&self, io: &mut BdevIo) -> IoStatus {
        let level = self.array.level();
        match (level, io.io_type) {
            (_, IoType::Checksum) => self.checksum(io).await,
            // A member failed under a flush: its failure is on disk before the flush is done.
            (_, IoType::Flush) => {
                self.persist().await;
                if self.array.is_offline() {
                    IoStatus::Failed
                } else {
                    IoStatus::Success
                }
            }
            (Level::Raid1, IoType::Read) => self.raid1_read_slow(io).await,
            (Level::Raid1, IoType::Write | IoType::WriteZeroes | IoType::Unmap) => {
                self.raid1_write(io).await
            }
            (Level::Raid5 | Level::Raid6, IoType::Read) => self.parity_io(io, false).await,
            (Level::Raid5 | Level::Raid6, IoType::Write | IoType::WriteZeroes | IoType::Unmap) => {
                self.parity_io(io, true).await
            }
            _ => IoStatus::Unsupported,
        }
    }

    // -----------------------------------------------------------------------------------
    // Metadata ordering

    /// Counts a write into the bitmap regions of stripes `first..=last` and waits (one
    /// metadata write at most) until they are marked on disk. Returns the regions to
    /// release with [`Self::intent_end`].
    async fn intent_begin(&self, first: u64, last: u64) -> SmallVec<[usize; 2]> {
        let mut regions = SmallVec::new();
        let Some(meta) = self.array.meta.as_ref() else {
            return regions;
        };
        let mut need = 0;
        for r in meta.region_of(first)..=meta.region_of(last) {
            need = need.max(meta.begin_write(r));
            regions.push(r);
        }
        if need > 0 {
            self.sync_meta(need).await;
        }
        regions
    }

    fn intent_end(&self, regions: SmallVec<[usize; 2]>) {
        if let Some(m) = &self.array.meta {
            regions.into_iter().for_each(|r| m.end_write(r));
        }
    }

    // -----------------------------------------------------------------------------------
    // Checksums (computed here from the volume's data)

    async fn checksum(&self, io: &mut BdevIo) -> IoStatus {
        let bs = self.bs() as u64;
        let chunk = io.chunk_blocks.max(1) as u64;
        let step = (dma::max_buf_size() as u64 / bs).max(1);
        let (mut lba, end) = (io.offset_blocks, io.offset_blocks + io.num_blocks);
        let mut hasher = kernels::ChunkHasher::new(io.checksum_alg);
        let mut idx = 0usize;
        let mut in_chunk = 0u64;
        while lba < end {
            let n = step.min(end - lba).min(chunk - in_chunk);
            let Ok(buf) = dma::alloc_wait((n * bs) as usize).await else {
                return IoStatus::InvalidArgument;
            };
            let mut r = BdevIo::new(IoType::Read, lba, n);
            r.bufs.push(buf);
            r.block_size = self.array.block_size;
            let r = wait::submit_wait_with(r, |r| self.submit(r)).await;
            if !r.status.is_success() {
                return r.status;
            }
            hasher.update(r.bufs[0].as_slice());
            in_chunk += n;
            lba += n;
            if in_chunk == chunk || lba == end {
                io.put_digest(idx, &hasher.finish());
                idx += 1;
                in_chunk = 0;
            }
        }
        IoStatus::Success
    }

    // -----------------------------------------------------------------------------------
    // raid1

    async fn raid1_read_slow(&self, io: &mut BdevIo) -> IoStatus {
        for _ in 0..=self.array.geo.members {
            let Some(m) = self.raid1_leg(io.offset_blocks, io.num_blocks) else {
                return IoStatus::Failed;
            };
            // The leg's read owns the buffers until it completes, then gives them back.
            let bufs = std::mem::take(&mut io.bufs);
            let p = self.mio(m, IoType::Read, 0, io.offset_blocks, io.num_blocks, bufs);
            let (mut got, _, res) = self.wait_bufs(vec![(m, p)]).await;
            io.bufs = got.pop().unwrap_or_default();
            match res {
                Ok(()) => return IoStatus::Success,
                Err(Step::Retry) => continue,
                Err(Step::Fail(st)) => return st,
            }
        }
        IoStatus::Failed
    }

    async fn raid1_write(&self, io: &BdevIo) -> IoStatus {
        let strip = self.array.geo.strip;
        let (first, last) = (
            io.offset_blocks / strip,
            (io.offset_blocks + io.num_blocks - 1) / strip,
        );
        let mut guards = Vec::with_capacity((last - first + 1) as usize);
        for r in first..=last {
            guards.push(self.array.locks.lock(r).await);
        }
        let regions = self.intent_begin(first, last).await;
        // Legs must read back alike: an unmap zeroes them (a device may keep unmapped data).
        let t = match io.io_type {
            IoType::Unmap => IoType::WriteZeroes,
            t => t,
        };
        let mut v = Vec::new();
        for m in 0..self.array.geo.members {
            // Holding the locks keeps the rebuild from copying any region in [first, last]
            // meanwhile, but it may have finished `first` and wait for the next one: a
            // rebuilding leg takes the write when any region in the range is rebuilt (the
            // rest it gets again from the rebuild, which copies the same data).
            if !self.array.usable(m, first) {
                continue;
            }
            let mut bufs = Bufs::new();
            if io.io_type == IoType::Write {
                share_range(&io.bufs, 0, io.xfer_len(), &mut bufs);
            }
            v.push((m, self.mio(m, t, 0, io.offset_blocks, io.num_blocks, bufs)));
        }
        let (written, res) = self.wait_count(v).await;
        // A leg that failed must be recorded as failed before the write is acknowledged.
        self.persist().await;
        self.intent_end(regions);
        drop(guards);
        match res {
            Err(Step::Fail(st)) => st,
            _ if written == 0 => IoStatus::Failed,
            _ => IoStatus::Success,
        }
    }

    // -----------------------------------------------------------------------------------
    // raid5 / raid6

    /// Reads or writes a parity-level I/O: one task per stripe, all in parallel.
    async fn parity_io(&self, io: &mut BdevIo, write: bool) -> IoStatus {
        let bs = self.array.block_size;
        let mut groups: Vec<(u64, Pieces)> = Vec::new();
        let mut ok = true;
        let carries = io.io_type.carries_blocks();
        // Writes read the host's data through shared views; reads own their pieces of the
        // buffers until they are done, then give them back.
        let mut carver = Carver::new(if write {
            Bufs::new()
        } else {
            std::mem::take(&mut io.bufs)
        });
        self.pieces_of(io, |p| {
            let mut v = Bufs::new();
            let len = (p.blocks * bs as u64) as usize;
            if carries && write {
                ok &= share_range(&io.bufs, p.byte_off, len, &mut v);
            } else if carries {
                v = carver.take(len);
                ok &= total_len(&v) == len;
            }
            match groups.last_mut() {
                Some((s, ps)) if *s == p.stripe => ps.push((p, v)),
                _ => {
                    let mut ps = Pieces::new();
                    ps.push((p, v));
                    groups.push((p.stripe, ps));
                }
            }
        });
        let rest = carver.rest();
        let st = if ok {
            let zeroes = !carries;
            let one_stripe = |s, ps| async move {
                if write {
                    self.stripe_write(s, ps, zeroes).await
                } else {
                    self.stripe_read(s, ps).await
                }
            };
            if groups.len() == 1 {
                one_stripe(groups[0].0, &mut groups[0].1).await
            } else {
                let results = join_all(groups.iter_mut().map(|(s, ps)| one_stripe(*s, ps))).await;
                results
                    .into_iter()
                    .find(|st| !st.is_success())
                    .unwrap_or(IoStatus::Success)
            }
        } else {
            IoStatus::InvalidArgument
        };
        if !write {
            let mut bufs = Bufs::new();
            for (_, ps) in groups.iter_mut() {
                for (_, b) in ps.iter_mut() {
                    join_into(&mut bufs, std::mem::take(b));
                }
            }
            join_into(&mut bufs, rest);
            io.bufs = bufs;
        }
        st
    }

    fn pieces_rows(pieces: &Pieces) -> (u64, u64) {
        let lo = pieces.iter().map(|(p, _)| p.row).min().unwrap_or(0);
        let hi = pieces
            .iter()
            .map(|(p, _)| p.row + p.blocks)
            .max()
            .unwrap_or(0);
        (lo, hi)
    }

    async fn stripe_read(&self, s: u64, pieces: &mut Pieces) -> IoStatus {
        let geo = &self.array.geo;
        let healthy = pieces
            .iter()
            .all(|(p, _)| self.array.usable(geo.member_of(s, Role::Data(p.strip)), s));
        if healthy {
            // Direct reads (a fast-path read whose member failed lands here too).
            let mut v = Vec::new();
            for (p, bufs) in pieces.iter_mut() {
                let m = geo.member_of(s, Role::Data(p.strip));
                let b = std::mem::take(bufs);
                v.push((m, self.mio(m, IoType::Read, s, p.row, p.blocks, b)));
            }
            let (got, _, res) = self.wait_bufs(v).await;
            for ((_, bufs), g) in pieces.iter_mut().zip(got) {
                *bufs = g;
            }
            match res {
                Ok(()) => return IoStatus::Success,
                Err(Step::Fail(st)) => return st,
                Err(Step::Retry) => {}
            }
        }
        let _g = self.array.locks.lock(s).await;
        let (lo, hi) = Self::pieces_rows(pieces);
        let cr = self.chunk_rows();
        let mut c0 = lo;
        let mut tries = 0;
        while c0 < hi {
            let c1 = (c0 + cr).min(hi);
            match self.read_chunk(s, c0, c1, pieces).await {
                Ok(()) => c0 = c1,
                Err(Step::Retry) if tries < geo.members && !self.array.is_offline() => tries += 1,
                Err(Step::Retry) => return IoStatus::Failed,
                Err(Step::Fail(st)) => return st,
            }
        }
        IoStatus::Success
    }

    /// Degraded read of rows `[c0, c1)`: load, reconstruct, copy the pieces' rows out.
    async fn read_chunk(&self, s: u64, c0: u64, c1: u64, pieces: &mut Pieces) -> Result<(), Step> {
        let bs = self.bs() as u64;
        let (bufs, missing) = self.load(s, c0, c1, |_| false).await?;
        let mut bufs = bufs;
        self.recover(&mut bufs, &missing)?;
        for (p, dst) in pieces.iter_mut() {
            let a = p.row.max(c0);
            let b = (p.row + p.blocks).min(c1);
            if a >= b {
                continue;
            }
            let src = &bufs[p.strip].as_slice()[((a - c0) * bs) as usize..((b - c0) * bs) as usize];
            copy_into_at(dst, ((a - p.row) * bs) as usize, src);
        }
        Ok(())
    }

    /// Reads rows `[lo, hi)` of every role that is readable and not skipped into one
    /// buffer per role. Returns the buffers and the roles left unread.
    pub(super) async fn load(
        &self,
        s: u64,
        lo: u64,
        hi: u64,
        skip: impl Fn(usize) -> bool,
    ) -> Result<(Vec<DmaBuf>, SmallVec<[usize; 2]>), Step> {
        let geo = &self.array.geo;
        let len = ((hi - lo) as usize) * self.bs();
        let mut parts: Vec<SmallVec<[Part; 3]>> = Vec::with_capacity(geo.roles());
        let mut missing = SmallVec::new();
        let mut v = Vec::new();
        for k in 0..geo.roles() {
            let b = scratch(len).await?;
            let m = geo.member_of(s, geo.role(k));
            let mut p = SmallVec::new();
            if skip(k) || !self.array.usable(m, s) {
                missing.push(k);
                p.push(Part::Here(b));
            } else {
                p.push(Part::Read(v.len()));
                v.push((m, self.mio(m, IoType::Read, s, lo, hi - lo, one(b))));
            }
            parts.push(p);
        }
        let (mut got, _, res) = self.wait_bufs(v).await;
        res?;
        let bufs = parts
            .into_iter()
            .map(|p| assemble(p, &mut got))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((bufs, missing))
    }

    /// Reconstructs the `missing` roles of a loaded chunk from the others.
    pub(super) fn recover(&self, bufs: &mut [DmaBuf], missing: &[usize]) -> Result<(), Step> {
        let geo = &self.array.geo;
        let fail = |_| Step::Fail(IoStatus::Failed);
        match (geo.level, missing) {
            (_, []) => Ok(()),
            (Level::Raid5, [x]) => {
                let (before, rest) = bufs.split_at_mut(*x);
                let (target, after) = rest.split_at_mut(1);
                let srcs: SmallVec<[&[u8]; 16]> = before
                    .iter()
                    .chain(after.iter())
                    .map(|b| b.as_slice())
                    .collect();
                kernels::xor_gen(&srcs, target[0].as_mut_slice())
                    .map_err(|_| Step::Fail(IoStatus::Failed))
            }
            (Level::Raid6, [x]) => {
                // Recover it together with a parity (recomputed, consistent either way).
                let d = geo.data_strips();
                let other = if *x == d + 1 { d } else { d + 1 };
                let mut m: SmallVec<[&mut [u8]; 16]> =
                    bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
                strata_isal::raid6_recover(&mut m, *x, other).map_err(fail)
            }
            (Level::Raid6, [x, y]) => {
                let mut m: SmallVec<[&mut [u8]; 16]> =
                    bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
                strata_isal::raid6_recover(&mut m, *x, *y).map_err(fail)
            }
            _ => Err(Step::Fail(IoStatus::Failed)),
        }
    }

    /// Computes the parity roles of a loaded chunk from its data roles.
    pub(super) fn regen(&self, bufs: &mut [DmaBuf]) -> Result<(), Step> {
        let d = self.array.geo.data_strips();
        let (data, parity) = bufs.split_at_mut(d);
        let srcs: SmallVec<[&[u8]; 16]> = data.iter().map(|b| b.as_slice()).collect();
        let r = match parity {
            [p] => kernels::xor_gen(&srcs, p.as_mut_slice()),
            [p, q] => kernels::pq_gen(&srcs, p.as_mut_slice(), q.as_mut_slice()),
            _ => Ok(()),
        };
        r.map_err(|_| Step::Fail(IoStatus::Failed))
    }

    async fn stripe_write(&self, s: u64, pieces: &mut Pieces, zeroes: bool) -> IoStatus {
        let _g = self.array.locks.lock(s).await;
        let regions = self.intent_begin(s, s).await;
        let (lo, hi) = Self::pieces_rows(pieces);
        let cr = self.chunk_rows();
        let mut c0 = lo;
        let mut tries = 0;
        let mut st = IoStatus::Success;
        while c0 < hi {
            let c1 = (c0 + cr).min(hi);
            match self.write_chunk(s, c0, c1, pieces, zeroes).await {
                Ok(()) => c0 = c1,
                Err(Step::Retry) if tries < self.array.geo.members && !self.array.is_offline() => {
                    tries += 1;
                }
                Err(Step::Retry) => {
                    st = IoStatus::Failed;
                    break;
                }
                Err(Step::Fail(e)) => {
                    st = e;
                    break;
                }
            }
        }
        // Whoever failed a member meanwhile (this task or another), the failure is on
        // disk before this write is acknowledged: after a crash the member is not trusted.
        self.persist().await;
        self.intent_end(regions);
        st
    }

    async fn write_chunk(
        &self,
        s: u64,
        c0: u64,
        c1: u64,
        pieces: &Pieces,
        zeroes: bool,
    ) -> Result<(), Step> {
        let geo = &self.array.geo;
        let bs = self.bs() as u64;
        let zero = if zeroes {
            let mut z = scratch(((c1 - c0) * bs) as usize).await?;
            z.as_mut_slice().fill(0);
            Some(z)
        } else {
            None
        };
        let mut ws: SmallVec<[Written; 8]> = SmallVec::new();
        for (p, src) in pieces {
            let a = p.row.max(c0);
            let b = (p.row + p.blocks).min(c1);
            if a >= b {
                continue;
            }
            let len = ((b - a) * bs) as usize;
            let src = match &zero {
                Some(z) => shared(z, 0, len),
                None => {
                    let mut v = Bufs::new();
                    share_range(src, ((a - p.row) * bs) as usize, len, &mut v);
                    v
                }
            };
            ws.push(Written {
                i: p.strip,
                a,
                b,
                src,
            });
        }
        if ws.is_empty() {
            return Ok(());
        }
        let lo = ws.iter().map(|w| w.a).min().unwrap_or(c0);
        let hi = ws.iter().map(|w| w.b).max().unwrap_or(c1);
        let roles_out =
            (0..geo.roles()).any(|k| !self.array.usable(geo.member_of(s, geo.role(k)), s));
        if roles_out {
            self.write_degraded(s, lo, hi, &ws).await
        } else {
            self.write_healthy(s, lo, hi, &ws).await
        }
    }

    /// Writes the new data and the parity roles.
    async fn write_out(
        &self,
        s: u64,
        lo: u64,
        ws: &[Written],
        parity: &[(usize, &DmaBuf)],
    ) -> Result<(), Step> {
        let geo = &self.array.geo;
        let mut v = Vec::new();
        for w in ws {
            let m = geo.member_of(s, Role::Data(w.i));
            if !self.array.usable(m, s) {
                continue;
            }
            let mut b = Bufs::new();
            share_range(&w.src, 0, total_len(&w.src), &mut b);
            v.push((m, self.mio(m, IoType::Write, s, w.a, w.b - w.a, b)));
        }
        for &(k, buf) in parity {
            let m = geo.member_of(s, geo.role(k));
            if !self.array.usable(m, s) {
                continue;
            }
            let rows = (buf.len() / self.bs()) as u64;
            v.push((
                m,
                self.mio(m, IoType::Write, s, lo, rows, shared(buf, 0, buf.len())),
            ));
        }
        self.wait_all(v).await
    }

    /// Reconstruct-write's inputs: every data strip's rows `[lo, hi)`, old where the write
    /// leaves them, new where it supplies them. Old rows are read into parts of a scratch
    /// buffer that the reads own until they give them back; a strip the write covers in one
    /// piece is used in place (a shared view: no copy).
    async fn rcw_load(
        &self,
        s: u64,
        lo: u64,
        hi: u64,
        ws: &[Written],
    ) -> Result<Vec<DmaBuf>, Step> {
        let geo = &self.array.geo;
        let d = geo.data_strips();
        let bs = self.bs() as u64;
        let len = ((hi - lo) * bs) as usize;
        let fail = || Step::Fail(IoStatus::Failed);
        let mut plans: Vec<SmallVec<[Part; 3]>> = Vec::with_capacity(d);
        let mut v = Vec::new();
        for i in 0..d {
            let w = ws.iter().find(|w| w.i == i);
            let mut parts = SmallVec::new();
            if let Some(w) = w.filter(|w| w.a == lo && w.b == hi && w.src.len() == 1) {
                parts.push(Part::Here(w.src[0].share(0, len).ok_or_else(fail)?));
                plans.push(parts);
                continue;
            }
            let mut b = scratch(len).await?;
            let m = geo.member_of(s, Role::Data(i));
            let Some(w) = w else {
                parts.push(Part::Read(v.len()));
                v.push((m, self.mio(m, IoType::Read, s, lo, hi - lo, one(b))));
                plans.push(parts);
                continue;
            };
            if w.a > lo {
                let head = b.split_to(((w.a - lo) * bs) as usize).ok_or_else(fail)?;
                parts.push(Part::Read(v.len()));
                v.push((m, self.mio(m, IoType::Read, s, lo, w.a - lo, one(head))));
            }
            let tail = if w.b < hi {
                Some(b.split_off(((w.b - w.a) * bs) as usize).ok_or_else(fail)?)
            } else {
                None
            };
            // The written rows: filled from the write's data once the reads are back.
            parts.push(Part::Here(b));
            if let Some(t) = tail {
                parts.push(Part::Read(v.len()));
                v.push((m, self.mio(m, IoType::Read, s, w.b, hi - w.b, one(t))));
            }
            plans.push(parts);
        }
        let (mut got, _, res) = self.wait_bufs(v).await;
        res?;
        let mut data = plans
            .into_iter()
            .map(|p| assemble(p, &mut got))
            .collect::<Result<Vec<_>, _>>()?;
        for w in ws {
            if !(w.a == lo && w.b == hi && w.src.len() == 1) {
                copy_in(data[w.i].as_mut_slice(), ((w.a - lo) * bs) as usize, &w.src);
            }
        }
        Ok(data)
    }

    async fn write_healthy(&self, s: u64, lo: u64, hi: u64, ws: &[Written]) -> Result<(), Step> {
        let geo = &self.array.geo;
        let d = geo.data_strips();
        let np = geo.level.parity_count();
        let rows = hi - lo;
        let bs = self.bs() as u64;
        let len = (rows * bs) as usize;
        let written: u64 = ws.iter().map(|w| w.b - w.a).sum();
        let rmw_reads = written + np as u64 * rows;
        let rcw_reads = d as u64 * rows - written;
        let mut parity: SmallVec<[DmaBuf; 2]> = SmallVec::new();
        if rcw_reads <= rmw_reads {
            for _ in 0..np {
                parity.push(scratch(len).await?);
            }
            let data = self.rcw_load(s, lo, hi, ws).await?;
            let srcs: SmallVec<[&[u8]; 16]> = data.iter().map(|b| b.as_slice()).collect();
            let r = match parity.as_mut_slice() {
                [p] => kernels::xor_gen(&srcs, p.as_mut_slice()),
                [p, q] => kernels::pq_gen(&srcs, p.as_mut_slice(), q.as_mut_slice()),
                _ => Ok(()),
            };
            r.map_err(|_| Step::Fail(IoStatus::Failed))?;
        } else {
            // Read-modify-write: old data of the written rows and the old parity, each read
            // into a scratch buffer the read owns until it gives it back.
            let mut v = Vec::new();
            for w in ws {
                let n = ((w.b - w.a) * bs) as usize;
                let b = scratch(n).await?;
                let m = geo.member_of(s, Role::Data(w.i));
                v.push((m, self.mio(m, IoType::Read, s, w.a, w.b - w.a, one(b))));
            }
            for j in 0..np {
                let p = scratch(len).await?;
                let m = geo.member_of(s, geo.role(d + j));
                v.push((m, self.mio(m, IoType::Read, s, lo, rows, one(p))));
            }
            let (got, _, res) = self.wait_bufs(v).await;
            res?;
            let mut old: SmallVec<[DmaBuf; 8]> = SmallVec::new();
            for (k, b) in got.into_iter().enumerate() {
                if k < ws.len() {
                    old.push(single(b)?);
                } else {
                    parity.push(single(b)?);
                }
            }
            // delta = old ^ new, per written strip.
            for (w, o) in ws.iter().zip(old.iter_mut()) {
                xor_in(o.as_mut_slice(), 0, &w.src);
            }
            if np == 1 {
                for (w, o) in ws.iter().zip(old.iter()) {
                    let off = ((w.a - lo) * bs) as usize;
                    kernels::xor_into(
                        &mut parity[0].as_mut_slice()[off..off + o.len()],
                        o.as_slice(),
                    );
                }
            } else {
                // RAID-6: (ΔP, ΔQ) = parity of the deltas (zero on unwritten strips).
                let mut deltas: Vec<DmaBuf> = Vec::with_capacity(d);
                for i in 0..d {
                    let mut b = scratch(len).await?;
                    b.as_mut_slice().fill(0);
                    if let Some((w, o)) = ws.iter().zip(old.iter()).find(|(w, _)| w.i == i) {
                        let off = ((w.a - lo) * bs) as usize;
                        b.as_mut_slice()[off..off + o.len()].copy_from_slice(o.as_slice());
                    }
                    deltas.push(b);
                }
                let mut dp = scratch(len).await?;
                let mut dq = scratch(len).await?;
                let srcs: SmallVec<[&[u8]; 16]> = deltas.iter().map(|b| b.as_slice()).collect();
                kernels::pq_gen(&srcs, dp.as_mut_slice(), dq.as_mut_slice())
                    .map_err(|_| Step::Fail(IoStatus::Failed))?;
                kernels::xor_into(parity[0].as_mut_slice(), dp.as_slice());
                kernels::xor_into(parity[1].as_mut_slice(), dq.as_slice());
            }
        }
        let par: SmallVec<[(usize, &DmaBuf); 2]> =
            parity.iter().enumerate().map(|(j, p)| (d + j, p)).collect();
        self.write_out(s, lo, ws, &par).await
    }

    async fn write_degraded(&self, s: u64, lo: u64, hi: u64, ws: &[Written]) -> Result<(), Step> {
        let d = self.array.geo.data_strips();
        let bs = self.bs() as u64;
        let (mut bufs, missing) = self.load(s, lo, hi, |_| false).await?;
        // Missing parity is recomputed below anyway; only missing data needs recovering.
        if missing.iter().any(|&k| k < d) {
            self.recover(&mut bufs, &missing)?;
        }
        for w in ws {
            copy_in(bufs[w.i].as_mut_slice(), ((w.a - lo) * bs) as usize, &w.src);
        }
        self.regen(&mut bufs)?;
        let par: SmallVec<[(usize, &DmaBuf); 2]> = bufs[d..]
            .iter()
            .enumerate()
            .map(|(j, p)| (d + j, p))
            .collect();
        self.write_out(s, lo, ws, &par).await
    }
}
