//! I/O descriptors: what a bdev is asked to do, the buffers it moves data through, and the
//! stack of completions that carry it back up through the layers that submitted it.
//!
//! A [`BdevIo`] is a recycled heap object (a per-thread free list), so submitting an I/O
//! allocates nothing in steady state. Each layer that needs to see the completion pushes a
//! [`Completion`] (an `Rc` to an [`IoSink`] plus a tag) before passing the I/O down; a bdev
//! finishes an I/O with [`BdevIo::complete`], which pops the top completion and hands the I/O
//! to it; that layer does its work and calls [`BdevIo::done`] to pass it further up.

use smallvec::SmallVec;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use strata_reactor::dma::{DmaBuf, RegionView};

/// The operations a bdev may support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum IoType {
    Read = 0,
    Write = 1,
    WriteZeroes = 2,
    Unmap = 3,
    Flush = 4,
    Reset = 5,
    /// The device XORs the payload into what it stores: `new = old ^ buf`.
    XorWrite = 6,
    /// The device returns a digest per chunk of `chunk_blocks` blocks: a CRC32C
    /// (little-endian u32) or, by `checksum_alg`, a SHA-256 (32 bytes).
    Checksum = 7,
    /// The device multiplies the payload by `gf_coef` in GF(2^8) (RAID-6 polynomial 0x11d)
    /// and XORs the product into what it stores: `new = old ^ coef·buf`. A Q parity device
    /// implements it (remote parity: data node i sends `g^i · (new ^ old)`).
    GfXorWrite = 8,
}

/// The digest a `Checksum` I/O computes per chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChecksumAlg {
    #[default]
    Crc32c,
    Sha256,
}

impl ChecksumAlg {
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlg::Crc32c => "crc32c",
            ChecksumAlg::Sha256 => "sha256",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "crc32c" => Some(ChecksumAlg::Crc32c),
            "sha256" => Some(ChecksumAlg::Sha256),
            _ => None,
        }
    }
    /// Bytes of one digest.
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumAlg::Crc32c => 4,
            ChecksumAlg::Sha256 => 32,
        }
    }
}

impl IoType {
    pub const ALL: [IoType; 9] = [
        IoType::Read,
        IoType::Write,
        IoType::WriteZeroes,
        IoType::Unmap,
        IoType::Flush,
        IoType::Reset,
        IoType::XorWrite,
        IoType::Checksum,
        IoType::GfXorWrite,
    ];
    pub const COUNT: usize = 9;

    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::WriteZeroes => "write_zeroes",
            IoType::Unmap => "unmap",
            IoType::Flush => "flush",
            IoType::Reset => "reset",
            IoType::XorWrite => "xor_write",
            IoType::Checksum => "checksum",
            IoType::GfXorWrite => "gf_xor_write",
        }
    }

    pub fn from_name(s: &str) -> Option<IoType> {
        IoType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Whether the I/O carries `num_blocks * block_size` bytes of data in its buffers.
    pub fn carries_blocks(self) -> bool {
        matches!(
            self,
            IoType::Read | IoType::Write | IoType::XorWrite | IoType::GfXorWrite
        )
    }

    /// Whether `num_blocks` must be non-zero.
    pub fn needs_range(self) -> bool {
        !matches!(self, IoType::Flush | IoType::Reset)
    }
}

/// Outcome of an I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoStatus {
    #[default]
    Pending,
    Success,
    /// The device failed the I/O (media or transport error).
    Failed,
    /// LBA range beyond the end of the bdev, or zero-length where a range is required.
    OutOfRange,
    /// Malformed request: buffers too small, bad chunk size.
    InvalidArgument,
    /// Temporarily out of resources; the bdev layer queues and retries it.
    NoMemory,
    Aborted,
    Unsupported,
    /// The bdev was removed.
    Removed,
    /// The path to the device failed (a lost connection to a remote namespace); the device
    /// itself may be fine and the I/O may succeed on another path or after a reconnect.
    PathError,
}

impl IoStatus {
    pub fn is_success(self) -> bool {
        self == IoStatus::Success
    }
}

/// Receiver of a completed I/O. Implemented by each layer that needs to see completions.
pub trait IoSink {
    fn io_done(self: Rc<Self>, io: BdevIo, tag: u64);
}

/// One entry of an I/O's completion stack.
pub struct Completion {
    pub sink: Rc<dyn IoSink>,
    pub tag: u64,
}

pub struct IoInner {
    pub io_type: IoType,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    pub status: IoStatus,
    /// Scatter-gather list. For reads the bdev fills them; for writes it reads them.
    pub bufs: SmallVec<[DmaBuf; 2]>,
    /// A read that asks for it ([`BdevIo::read_view`]) from a bdev that lends its memory
    /// ([`crate::bdev::Bdev::lends_read_views`]) completes with the data here, uncopied.
    pub view: Option<RegionView>,
    /// Set by [`BdevIo::read_view`]: the read has no buffers and wants a view instead. Explicit,
    /// so a read that lost its buffers by mistake still fails instead of "succeeding" empty.
    pub want_view: bool,
    /// For `Checksum`: blocks per checksum (1 = one per block), and the digest.
    pub chunk_blocks: u32,
    pub checksum_alg: ChecksumAlg,
    /// For `GfXorWrite`: the GF(2^8) coefficient the payload is multiplied by (never 0).
    pub gf_coef: u8,
    /// Block size of the bdev the I/O was last submitted to (set by the channel).
    pub block_size: u32,
    /// Free for the submitter's bookkeeping.
    pub user_tag: u64,
    /// Tick at which the outermost bdev layer that has completed the I/O accepted it, and
    /// the tick at which it completed it: a submitter measures latency from these without
    /// reading the clock again.
    pub submit_ticks: u64,
    pub complete_ticks: u64,
    completions: SmallVec<[Completion; 4]>,
}

/// An I/O descriptor. `!Send`: it lives on the reactor that created it.
pub struct BdevIo(Option<Box<IoInner>>);

const FREE_LIST_MAX: usize = 4096;

thread_local! {
    // Boxes on purpose: recycling the heap objects is what makes I/O allocation-free.
    #[allow(clippy::vec_box)]
    static FREE: RefCell<Vec<Box<IoInner>>> = const { RefCell::new(Vec::new()) };
    static DEFERRED: RefCell<VecDeque<BdevIo>> = RefCell::new(VecDeque::with_capacity(1024));
    /// The batch `run_deferred` is working through (swapped with DEFERRED, so draining it
    /// needs no thread-local access per I/O and allocates nothing).
    static DRAINING: RefCell<VecDeque<BdevIo>> = RefCell::new(VecDeque::with_capacity(1024));
}

impl std::fmt::Debug for BdevIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BdevIo")
            .field("type", &self.io_type)
            .field("offset_blocks", &self.offset_blocks)
            .field("num_blocks", &self.num_blocks)
            .field("status", &self.status)
            .finish()
    }
}

impl BdevIo {
    pub fn new(io_type: IoType, offset_blocks: u64, num_blocks: u64) -> BdevIo {
        let inner = FREE.with(|f| f.borrow_mut().pop());
        let inner = match inner {
            Some(mut b) => {
                b.io_type = io_type;
                b.offset_blocks = offset_blocks;
                b.num_blocks = num_blocks;
                b.status = IoStatus::Pending;
                b.chunk_blocks = 1;
                b.checksum_alg = ChecksumAlg::Crc32c;
                b.gf_coef = 1;
                b.block_size = 0;
                b.user_tag = 0;
                b.submit_ticks = 0;
                b.complete_ticks = 0;
                b.view = None;
                b.want_view = false;
                b
            }
            None => Box::new(IoInner {
                io_type,
                offset_blocks,
                num_blocks,
                status: IoStatus::Pending,
                bufs: SmallVec::new(),
                view: None,
                want_view: false,
                chunk_blocks: 1,
                checksum_alg: ChecksumAlg::Crc32c,
                gf_coef: 1,
                block_size: 0,
                user_tag: 0,
                submit_ticks: 0,
                complete_ticks: 0,
                completions: SmallVec::new(),
            }),
        };
        BdevIo(Some(inner))
    }

    pub fn read(offset_blocks: u64, num_blocks: u64, buf: DmaBuf) -> BdevIo {
        let mut io = BdevIo::new(IoType::Read, offset_blocks, num_blocks);
        io.bufs.push(buf);
        io
    }

    /// A read with no buffers that completes with a view of the bdev's memory in
    /// [`IoInner::view`]; only for channels that [`crate::IoChannel::lends_read_views`].
    pub fn read_view(offset_blocks: u64, num_blocks: u64) -> BdevIo {
        let mut io = BdevIo::new(IoType::Read, offset_blocks, num_blocks);
        io.want_view = true;
        io
    }

    pub fn write(offset_blocks: u64, num_blocks: u64, buf: DmaBuf) -> BdevIo {
        let mut io = BdevIo::new(IoType::Write, offset_blocks, num_blocks);
        io.bufs.push(buf);
        io
    }

    #[inline]
    pub fn push_completion(&mut self, sink: Rc<dyn IoSink>, tag: u64) {
        self.completions.push(Completion { sink, tag });
    }

    /// Sets the status and hands the I/O to the layer above.
    #[inline]
    pub fn complete(mut self, status: IoStatus) {
        self.status = status;
        self.done();
    }

    /// Hands the I/O, status unchanged, to the next completion on its stack (or drops it).
    #[inline]
    pub fn done(mut self) {
        if let Some(c) = self.completions.pop() {
            c.sink.io_done(self, c.tag);
        }
    }

    /// Completes from the reactor's deferred-completion poller instead of the current call
    /// stack: for bdevs that finish synchronously, so a submitter that resubmits from its
    /// completion does not recurse without bound.
    #[inline]
    pub fn complete_deferred(mut self, status: IoStatus) {
        self.status = status;
        DEFERRED.with(|d| d.borrow_mut().push_back(self));
    }

    /// Total bytes in the buffers.
    pub fn data_len(&self) -> usize {
        self.bufs.iter().map(|b| b.len()).sum()
    }

    /// Bytes the I/O transfers: `num_blocks * block_size`.
    pub fn xfer_len(&self) -> usize {
        (self.num_blocks as usize).saturating_mul(self.block_size as usize)
    }

    /// Copies `src` into the buffers from their start (reads).
    pub fn copy_into_bufs(&mut self, src: &[u8]) {
        let mut off = 0;
        for b in self.bufs.iter_mut() {
            if off >= src.len() {
                break;
            }
            let n = b.len().min(src.len() - off);
            b.as_mut_slice()[..n].copy_from_slice(&src[off..off + n]);
            off += n;
        }
    }

    /// Visits the first `len` bytes of the buffers as consecutive slices (writes).
    pub fn for_each_segment(&self, len: usize, mut f: impl FnMut(usize, &[u8])) {
        let mut off = 0;
        for b in self.bufs.iter() {
            if off >= len {
                break;
            }
            let n = b.len().min(len - off);
            f(off, &b.as_slice()[..n]);
            off += n;
        }
    }

    /// Visits the first `len` bytes of the buffers mutably.
    pub fn for_each_segment_mut(&mut self, len: usize, mut f: impl FnMut(usize, &mut [u8])) {
        let mut off = 0;
        for b in self.bufs.iter_mut() {
            if off >= len {
                break;
            }
            let n = b.len().min(len - off);
            f(off, &mut b.as_mut_slice()[..n]);
            off += n;
        }
    }

    /// Number of checksums a `Checksum` I/O returns.
    pub fn checksum_count(&self) -> u64 {
        self.num_blocks.div_ceil(self.chunk_blocks.max(1) as u64)
    }

    /// Bytes of digests a `Checksum` I/O returns.
    pub fn digest_bytes(&self) -> u64 {
        self.checksum_count() * self.checksum_alg.digest_len() as u64
    }

    /// CRC32C checksums written by a completed CRC32C `Checksum` I/O.
    pub fn checksums(&self) -> Vec<u32> {
        self.digests()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// The digests written by a completed `Checksum` I/O, back to back.
    pub fn digests(&self) -> Vec<u8> {
        let n = self.digest_bytes() as usize;
        let mut raw = vec![0u8; n];
        self.for_each_segment(n, |off, s| raw[off..off + s.len()].copy_from_slice(s));
        raw
    }

    /// Stores CRC32C checksum `i` of a `Checksum` I/O into its buffers.
    pub fn put_checksum(&mut self, i: usize, crc: u32) {
        self.put_digest(i, &crc.to_le_bytes());
    }

    /// Stores digest `i` of a `Checksum` I/O into its buffers.
    pub fn put_digest(&mut self, i: usize, d: &[u8]) {
        let mut pos = i * d.len();
        let mut src = d;
        for b in self.bufs.iter_mut() {
            if src.is_empty() {
                return;
            }
            if pos >= b.len() {
                pos -= b.len();
                continue;
            }
            let s = b.as_mut_slice();
            let n = (s.len() - pos).min(src.len());
            s[pos..pos + n].copy_from_slice(&src[..n]);
            src = &src[n..];
            pos = 0;
        }
    }
}

impl Deref for BdevIo {
    type Target = IoInner;
    #[inline]
    fn deref(&self) -> &IoInner {
        // The Option is only None inside Drop.
        self.0.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for BdevIo {
    #[inline]
    fn deref_mut(&mut self) -> &mut IoInner {
        self.0.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for BdevIo {
    fn drop(&mut self) {
        if let Some(mut b) = self.0.take() {
            b.bufs.clear();
            b.view = None;
            b.completions.clear();
            let _ = FREE.try_with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < FREE_LIST_MAX {
                    f.push(b);
                }
            });
        }
    }
}

/// Runs deferred completions queued on this thread. Returns whether any ran.
pub(crate) fn run_deferred() -> bool {
    // Completions queued while the batch runs wait for the next turn.
    let mut batch = DRAINING.with(|d| std::mem::take(&mut *d.borrow_mut()));
    DEFERRED.with(|d| std::mem::swap(&mut *d.borrow_mut(), &mut batch));
    let did = !batch.is_empty();
    while let Some(io) = batch.pop_front() {
        io.done();
    }
    DRAINING.with(|d| *d.borrow_mut() = batch);
    did
}

/// An [`IoSink`] made of a closure, for code off the hot path.
pub struct FnSink<F: Fn(BdevIo, u64)>(pub F);

impl<F: Fn(BdevIo, u64)> IoSink for FnSink<F> {
    fn io_done(self: Rc<Self>, io: BdevIo, tag: u64) {
        (self.0)(io, tag)
    }
}
