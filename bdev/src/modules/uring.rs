//! `uring`: a bdev backed by a file or block device through io_uring. It also serves SPDK's
//! `aio` bdev (same engine, different module name, product name and RPC method).
//!
//! The file is opened read-write with `O_DIRECT` where the file system allows it (buffered
//! otherwise). Each reactor's channel owns an io_uring of its own, a fixed table of in-flight
//! operations (slots, indexed by `user_data`, with preallocated iovec arrays) and a queue for
//! I/O that finds no free slot. `submit` only pushes SQEs; a poller registered on an eventfd
//! (so interrupt-mode reactors wake on completions) submits them in batches, reaps completions
//! and completes I/O from its own call stack.
//!
//! Multi-step operations keep one slot and issue one SQE at a time: short transfers are
//! resubmitted for the remainder; `XorWrite` reads each piece (≤ 128 KiB) into a pool buffer,
//! XORs the payload in and writes it back; `Checksum` reads pieces and chains CRC32C across
//! them; `WriteZeroes`/`Unmap` use `fallocate` and fall back to writing zeroes where the file
//! system refuses it.
//!
//! XOR writes are read-modify-write, so they are serialised against other XOR writes and
//! writes (write, write_zeroes, unmap) to overlapping ranges on every reactor by a range lock
//! shared in the [`UringBdev`]. Writes pay for it only while an XOR write holds a lock: they
//! count themselves in an atomic (`fast_writes`) and check another (`xor_held`); an XOR write
//! takes its range and then waits until the writes that missed it have drained (Dekker-style,
//! both sides `SeqCst`), so no write can slip between its read and its write-back.

use crate::bdev::{Bdev, BdevChannel, ConfigEntry};
use crate::error::BdevError;
use crate::io::{BdevIo, IoStatus, IoType};
use crate::kernels;
use crate::modules::validate_block_size;
use crate::registry;
use io_uring::{opcode, squeue, types, IoUring};
use parking_lot::Mutex;
use serde_json::json;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use strata_reactor::dma::{self, DmaBuf};
use strata_reactor::sys::EventFd;
use strata_reactor::PollerHandle;
use uuid::Uuid;

/// Entries of each channel's submission queue (the completion queue gets twice as many).
const RING_ENTRIES: u32 = 256;
/// In-flight operations per channel. Each has at most one SQE outstanding, so the rings can
/// never overflow.
const SLOTS: usize = RING_ENTRIES as usize;
/// iovecs per slot; an I/O with more buffers is transferred in several steps.
const IOV_PER_SLOT: usize = 16;
/// Preallocated capacity of the queue of I/O waiting for a slot or a range lock.
const QUEUE_CAPACITY: usize = 4096;
/// Largest temporary buffer (XOR, checksum, zero-fill pieces).
const PIECE_MAX: usize = 128 << 10;
/// CQEs copied out of the ring per batch.
const REAP_BATCH: usize = 64;

/// Parameters of `bdev_uring_create` / `bdev_aio_create`.
#[derive(Debug, Clone)]
pub struct UringOptions {
    pub name: String,
    pub filename: String,
    pub block_size: Option<u32>,
    pub uuid: Option<Uuid>,
    /// `"uring"` or `"aio"` (SPDK's name for the same kind of bdev).
    pub module: &'static str,
}

/// A bdev backed by a file or block device.
pub struct UringBdev {
    name: String,
    filename: String,
    module: &'static str,
    uuid: Uuid,
    block_size: u32,
    num_blocks: u64,
    file: File,
    o_direct: bool,
    locks: RangeLocks,
    /// The file system refused `FALLOC_FL_ZERO_RANGE` / `FALLOC_FL_PUNCH_HOLE`: write zeroes.
    no_zero_range: AtomicBool,
    no_punch_hole: AtomicBool,
}

impl std::fmt::Debug for UringBdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBdev")
            .field("name", &self.name)
            .field("filename", &self.filename)
            .field("module", &self.module)
            .field("block_size", &self.block_size)
            .field("num_blocks", &self.num_blocks)
            .field("o_direct", &self.o_direct)
            .finish()
    }
}

/// Creates and registers a uring (or aio) bdev on `opts.filename`.
pub fn create(opts: UringOptions) -> Result<Arc<UringBdev>, BdevError> {
    let module = match opts.module {
        "uring" => "uring",
        "aio" => "aio",
        m => {
            return Err(BdevError::Invalid(format!(
                "unknown module '{m}' (expected uring or aio)"
            )))
        }
    };
    if opts.name.is_empty() {
        return Err(BdevError::Invalid("name must not be empty".into()));
    }
    if opts.filename.is_empty() {
        return Err(BdevError::Invalid("filename must not be empty".into()));
    }
    if let Some(bs) = opts.block_size {
        validate_block_size(bs)?;
    }
    if registry::get(&opts.name).is_some() {
        return Err(BdevError::Exists(opts.name));
    }
    // A tiny ring proves io_uring works here (kernel support, io_uring_disabled, seccomp).
    IoUring::new(2).map_err(BdevError::UringUnavailable)?;

    let path = opts.filename.clone();
    let io_err = |source: std::io::Error| BdevError::Io {
        path: path.clone(),
        source,
    };
    let (file, o_direct) = open(&opts.filename).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    let fd = file.as_raw_fd();
    let (size, dev_block) = if meta.file_type().is_block_device() {
        (
            sys::block_device_size(fd).map_err(io_err)?,
            sys::logical_block_size(fd).map_err(io_err)?,
        )
    } else if meta.is_file() {
        // O_DIRECT on a file needs the alignment of the device under the file system.
        let align = if o_direct {
            sys::dio_alignment(fd).unwrap_or(512)
        } else {
            512
        };
        (meta.len(), align.max(512))
    } else {
        return Err(BdevError::Invalid(format!(
            "{} is neither a regular file nor a block device",
            opts.filename
        )));
    };
    let block_size = opts.block_size.unwrap_or(dev_block);
    validate_block_size(block_size)?;
    if o_direct && block_size < dev_block {
        return Err(BdevError::Invalid(format!(
            "block_size {block_size} is smaller than the logical block size {dev_block} of {} (required for O_DIRECT)",
            opts.filename
        )));
    }
    let num_blocks = size / block_size as u64;
    if num_blocks == 0 {
        return Err(BdevError::Invalid(format!(
            "{} ({size} bytes) is smaller than one block of {block_size} bytes",
            opts.filename
        )));
    }
    if !o_direct {
        tracing::info!(
            bdev = %opts.name,
            filename = %opts.filename,
            "O_DIRECT is not supported by this file system; using buffered I/O"
        );
    }
    let b = Arc::new(UringBdev {
        name: opts.name,
        filename: opts.filename,
        module,
        uuid: opts.uuid.unwrap_or_else(Uuid::new_v4),
        block_size,
        num_blocks,
        file,
        o_direct,
        locks: RangeLocks::default(),
        no_zero_range: AtomicBool::new(false),
        no_punch_hole: AtomicBool::new(false),
    });
    registry::register(b.clone())?;
    Ok(b)
}

/// Unregisters a uring bdev (`module` "uring") or an aio bdev (`module` "aio").
pub fn delete(name: &str, module: &'static str) -> Result<(), BdevError> {
    super::delete_of_module(name, module)
}

/// Opens read-write, with O_DIRECT unless the file system rejects it (EINVAL).
fn open(path: &str) -> std::io::Result<(File, bool)> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    match o.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((o.open(path)?, false)),
        Err(e) => Err(e),
    }
}

impl UringBdev {
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// Whether the file was opened with O_DIRECT.
    pub fn o_direct(&self) -> bool {
        self.o_direct
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Bdev for UringBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &'static str {
        if self.module == "aio" {
            "AIO disk"
        } else {
            "URING bdev"
        }
    }
    fn module(&self) -> &'static str {
        self.module
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
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        UringChannel::create(self)
    }
    fn driver_specific(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert(
            self.module.to_string(),
            json!({ "filename": self.filename, "o_direct": self.o_direct }),
        );
        serde_json::Value::Object(m)
    }
    fn config(&self) -> Option<ConfigEntry> {
        Some(ConfigEntry {
            method: if self.module == "aio" {
                "bdev_aio_create"
            } else {
                "bdev_uring_create"
            },
            params: json!({
                "name": self.name,
                "filename": self.filename,
                "block_size": self.block_size,
                "uuid": self.uuid.to_string(),
            }),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Range locks (XOR writes against XOR writes and writes, across reactors)

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LockRange {
    start: u64,
    end: u64,
    xor: bool,
}

impl LockRange {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start < end && start < self.end
    }
}

/// What a slot holds of the bdev's range locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    None,
    /// A write counted in `fast_writes` (no XOR lock existed when it started).
    FastWrite,
    Range(LockRange),
}

#[derive(Default)]
struct RangeLocks {
    /// Ranges of XOR writes, and of writes started while an XOR write held a lock.
    ranges: Mutex<Vec<LockRange>>,
    /// XOR entries in `ranges`.
    xor_held: AtomicUsize,
    /// Writes in flight that did not register a range.
    fast_writes: AtomicUsize,
}

impl RangeLocks {
    /// Locks `[start, end)` for a write, or None if an XOR write holds an overlapping range.
    fn lock_write(&self, start: u64, end: u64) -> Option<Held> {
        self.fast_writes.fetch_add(1, Ordering::SeqCst);
        if self.xor_held.load(Ordering::SeqCst) == 0 {
            return Some(Held::FastWrite);
        }
        self.fast_writes.fetch_sub(1, Ordering::SeqCst);
        let mut r = self.ranges.lock();
        if r.iter().any(|x| x.xor && x.overlaps(start, end)) {
            return None;
        }
        let l = LockRange {
            start,
            end,
            xor: false,
        };
        r.push(l);
        Some(Held::Range(l))
    }

    /// Locks `[start, end)` for an XOR write, or None if anything holds an overlapping range.
    /// The caller must also wait for [`RangeLocks::fast_writes_drained`] before reading.
    fn lock_xor(&self, start: u64, end: u64) -> Option<Held> {
        let mut r = self.ranges.lock();
        if r.iter().any(|x| x.overlaps(start, end)) {
            return None;
        }
        let l = LockRange {
            start,
            end,
            xor: true,
        };
        r.push(l);
        self.xor_held.fetch_add(1, Ordering::SeqCst);
        Some(Held::Range(l))
    }

    fn fast_writes_drained(&self) -> bool {
        self.fast_writes.load(Ordering::SeqCst) == 0
    }

    fn unlock(&self, h: Held) {
        match h {
            Held::None => {}
            Held::FastWrite => {
                self.fast_writes.fetch_sub(1, Ordering::SeqCst);
            }
            Held::Range(l) => {
                let mut r = self.ranges.lock();
                if let Some(pos) = r.iter().position(|x| *x == l) {
                    r.swap_remove(pos);
                }
                if l.xor {
                    self.xor_held.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Channel

/// The step a slot's operation is at (the SQE it has in flight, if any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Idle,
    /// Readv/Writev over the I/O's buffers.
    Read,
    Write,
    Fsync,
    Fallocate,
    /// Writing zeroes from `tmp` (fallocate unsupported).
    ZeroFill,
    /// XOR write holding its range lock, waiting for unlocked writes to drain.
    XorWait,
    XorRead,
    XorWrite,
    ChecksumRead,
}

/// One in-flight operation. `user_data` of its SQE is the slot's index.
struct Slot {
    io: Option<BdevIo>,
    step: Step,
    /// Byte offset in the file and length of the whole operation.
    base: u64,
    total: u64,
    /// Bytes of `total` finished.
    done: u64,
    /// Current piece (temp-buffer steps): its length and the bytes of it transferred.
    piece: u64,
    piece_done: u64,
    tmp: Option<DmaBuf>,
    held: Held,
    falloc_mode: i32,
    /// Checksum: bytes per chunk, running CRC, current chunk index and its bytes so far.
    chunk_bytes: u64,
    hasher: Option<kernels::ChunkHasher>,
    chunk: usize,
    chunk_fill: u64,
    iov: [libc::iovec; IOV_PER_SLOT],
}

impl Slot {
    fn new() -> Self {
        Slot {
            io: None,
            step: Step::Idle,
            base: 0,
            total: 0,
            done: 0,
            piece: 0,
            piece_done: 0,
            tmp: None,
            held: Held::None,
            falloc_mode: 0,
            chunk_bytes: 0,
            hasher: None,
            chunk: 0,
            chunk_fill: 0,
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; IOV_PER_SLOT],
        }
    }
}

enum Start {
    Started,
    /// No free slot.
    Busy(BdevIo),
    /// A conflicting range lock is held.
    Blocked(BdevIo),
    /// Finished without reaching the ring (or could not start).
    Done(BdevIo, IoStatus),
}

struct ChanState {
    bdev: Arc<UringBdev>,
    ring: IoUring,
    /// Never resized: in-flight SQEs point at the iovecs inside.
    slots: Box<[Slot]>,
    free: Vec<u32>,
    /// SQEs pushed whose CQE has not been reaped.
    in_kernel: usize,
    queue: VecDeque<BdevIo>,
    /// Slots in `Step::XorWait`.
    waiting: Vec<u32>,
    /// Finished I/O, completed by the poller once the state is no longer borrowed.
    done: Vec<(BdevIo, IoStatus)>,
    /// Largest temporary buffer, a multiple of the block size (0: pool unavailable).
    piece_cap: u64,
}

/// The `BdevChannel` handed out. Its poller holds only a `Weak` to the state, so dropping
/// the channel drops the state; the poller handle is declared first so it is unregistered
/// before the state goes.
struct UringChannel {
    _poller: PollerHandle,
    state: Rc<RefCell<ChanState>>,
}

static RING_FLAGS_LOGGED: AtomicBool = AtomicBool::new(false);

fn build_ring() -> std::io::Result<IoUring> {
    let coop = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(RING_ENTRIES);
    let (ring, flags) = match coop {
        Ok(r) => (r, "COOP_TASKRUN|TASKRUN_FLAG"),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (IoUring::new(RING_ENTRIES)?, "none"),
        Err(e) => return Err(e),
    };
    if !RING_FLAGS_LOGGED.swap(true, Ordering::Relaxed) {
        tracing::info!(
            setup_flags = flags,
            entries = RING_ENTRIES,
            "uring bdev: io_uring channels"
        );
    }
    Ok(ring)
}

impl UringChannel {
    fn create(bdev: Arc<UringBdev>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        let ring = build_ring().map_err(BdevError::UringUnavailable)?;
        let efd = EventFd::new().map_err(|e| BdevError::Reactor(e.into()))?;
        let interrupt = strata_reactor::in_interrupt_mode();
        if interrupt {
            // Only sleeping reactors need the kernel to signal completions.
            ring.submitter()
                .register_eventfd(efd.raw())
                .map_err(BdevError::UringUnavailable)?;
        }
        let bs = bdev.block_size as u64;
        let piece_cap = (dma::max_buf_size().min(PIECE_MAX) as u64 / bs) * bs;
        let name = format!("uring_{}", bdev.name);
        let state = Rc::new(RefCell::new(ChanState {
            bdev,
            ring,
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
            free: (0..SLOTS as u32).rev().collect(),
            in_kernel: 0,
            queue: VecDeque::with_capacity(QUEUE_CAPACITY),
            waiting: Vec::with_capacity(SLOTS),
            done: Vec::with_capacity(SLOTS * 2),
            piece_cap,
        }));
        let weak: Weak<RefCell<ChanState>> = Rc::downgrade(&state);
        let fd = efd.raw();
        // The closure owns the eventfd, so its number stays in use until the reactor has
        // removed the poller (and the fd) from its epoll set.
        let poller = strata_reactor::register_fd_poller(&name, fd, move || {
            if interrupt {
                efd.drain();
            }
            match weak.upgrade() {
                Some(state) => poll(&state),
                None => false,
            }
        })?;
        Ok(Rc::new(UringChannel {
            _poller: poller,
            state,
        }))
    }
}

impl BdevChannel for UringChannel {
    fn submit(&self, io: BdevIo) {
        let r = self.state.borrow_mut().submit(io);
        if let Some((io, st)) = r {
            io.complete_deferred(st);
        }
    }

    fn outstanding(&self) -> u64 {
        match self.state.try_borrow() {
            Ok(s) => (SLOTS - s.free.len() + s.queue.len()) as u64,
            Err(_) => 0,
        }
    }
}

/// The channel's poller: submits pending SQEs, reaps completions, starts queued I/O, then
/// completes finished I/O outside the state borrow (completions may submit more I/O).
fn poll(state: &RefCell<ChanState>) -> bool {
    let mut st = state.borrow_mut();
    let mut busy = st.flush();
    busy |= st.reap();
    busy |= st.run_waiters();
    busy |= st.drain_queue();
    st.flush();
    if st.done.is_empty() {
        return busy;
    }
    let mut done = std::mem::take(&mut st.done);
    drop(st);
    for (io, status) in done.drain(..) {
        io.complete(status);
    }
    let mut st = state.borrow_mut();
    if st.done.is_empty() {
        st.done = done;
    }
    // Submit what the completions queued, without waiting for the next turn.
    st.flush();
    true
}

fn is_write_like(t: IoType) -> bool {
    matches!(t, IoType::Write | IoType::WriteZeroes | IoType::Unmap)
}

impl ChanState {
    /// Starts `io` or queues it. Returns an I/O to complete (deferred) by the caller.
    fn submit(&mut self, io: BdevIo) -> Option<(BdevIo, IoStatus)> {
        if io.io_type == IoType::Reset {
            return Some((io, IoStatus::Success));
        }
        if !self.queue.is_empty() {
            self.queue.push_back(io);
            return None;
        }
        match self.start(io) {
            Start::Started => None,
            Start::Busy(io) | Start::Blocked(io) => {
                self.queue.push_back(io);
                None
            }
            Start::Done(io, st) => Some((io, st)),
        }
    }

    fn start(&mut self, io: BdevIo) -> Start {
        let t = io.io_type;
        if t == IoType::Reset {
            return Start::Done(io, IoStatus::Success);
        }
        if t == IoType::GfXorWrite {
            return Start::Done(io, IoStatus::Unsupported);
        }
        let Some(&idx) = self.free.last() else {
            return Start::Busy(io);
        };
        let bs = self.bdev.block_size as u64;
        let base = io.offset_blocks * bs;
        let total = io.num_blocks * bs;
        let (step, needs_tmp, falloc_mode) = match t {
            IoType::Read => (Step::Read, false, 0),
            IoType::Write => (Step::Write, false, 0),
            IoType::Flush => (Step::Fsync, false, 0),
            IoType::WriteZeroes if self.bdev.no_zero_range.load(Ordering::Relaxed) => {
                (Step::ZeroFill, true, 0)
            }
            IoType::WriteZeroes => (
                Step::Fallocate,
                false,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            ),
            IoType::Unmap if self.bdev.no_punch_hole.load(Ordering::Relaxed) => {
                (Step::ZeroFill, true, 0)
            }
            IoType::Unmap => (
                Step::Fallocate,
                false,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            ),
            IoType::XorWrite => (Step::XorRead, true, 0),
            IoType::Checksum => (Step::ChecksumRead, true, 0),
            IoType::Reset => return Start::Done(io, IoStatus::Success),
            IoType::GfXorWrite => return Start::Done(io, IoStatus::Unsupported),
        };
        let tmp = if needs_tmp {
            match self.alloc_tmp(total, step == Step::ZeroFill) {
                Ok(b) => Some(b),
                Err(st) => return Start::Done(io, st),
            }
        } else {
            None
        };
        let (first, end) = (io.offset_blocks, io.offset_blocks + io.num_blocks);
        let held = if is_write_like(t) {
            match self.bdev.locks.lock_write(first, end) {
                Some(h) => h,
                None => return Start::Blocked(io),
            }
        } else if t == IoType::XorWrite {
            match self.bdev.locks.lock_xor(first, end) {
                Some(h) => h,
                None => return Start::Blocked(io),
            }
        } else {
            Held::None
        };
        self.free.pop();
        let chunk_bytes = io.chunk_blocks.max(1) as u64 * bs;
        let i = idx as usize;
        let s = &mut self.slots[i];
        s.step = step;
        s.base = base;
        s.total = total;
        s.done = 0;
        s.piece = piece_len(tmp.as_ref(), 0, total);
        s.piece_done = 0;
        s.tmp = tmp;
        s.held = held;
        s.falloc_mode = falloc_mode;
        s.chunk_bytes = chunk_bytes;
        s.hasher = (t == IoType::Checksum).then(|| kernels::ChunkHasher::new(io.checksum_alg));
        s.chunk = 0;
        s.chunk_fill = 0;
        s.io = Some(io);
        if t == IoType::XorWrite && !self.bdev.locks.fast_writes_drained() {
            s.step = Step::XorWait;
            self.waiting.push(idx);
            return Start::Started;
        }
        if self.issue(i) {
            Start::Started
        } else {
            let io = self.release(i);
            Start::Done(io, IoStatus::Failed)
        }
    }

    /// A temporary buffer for pieces of `total` bytes (zeroed for zero-fill).
    fn alloc_tmp(&self, total: u64, zero: bool) -> Result<DmaBuf, IoStatus> {
        if self.piece_cap == 0 {
            tracing::warn!(bdev = %self.bdev.name, "no DMA buffer pool large enough for one block");
            return Err(IoStatus::Failed);
        }
        let len = total.min(self.piece_cap) as usize;
        let mut b = dma::alloc(len).ok_or(IoStatus::NoMemory)?;
        if zero {
            b.as_mut_slice().fill(0);
        }
        Ok(b)
    }

    /// Pushes the SQE for slot `i`'s current step. False if it could not.
    fn issue(&mut self, i: usize) -> bool {
        let fd = types::Fd(self.bdev.fd());
        let s = &mut self.slots[i];
        let entry: squeue::Entry = match s.step {
            Step::Read | Step::Write => {
                let Some(io) = s.io.as_mut() else {
                    return false;
                };
                let n = fill_iov(
                    &mut s.iov,
                    &mut io.bufs,
                    s.done as usize,
                    (s.total - s.done) as usize,
                    s.step == Step::Read,
                );
                if n == 0 {
                    return false;
                }
                let off = s.base + s.done;
                if s.step == Step::Read {
                    opcode::Readv::new(fd, s.iov.as_ptr(), n as u32)
                        .offset(off)
                        .build()
                } else {
                    opcode::Writev::new(fd, s.iov.as_ptr(), n as u32)
                        .offset(off)
                        .build()
                }
            }
            Step::Fsync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Step::Fallocate => opcode::Fallocate::new(fd, s.total)
                .offset(s.base)
                .mode(s.falloc_mode)
                .build(),
            Step::ZeroFill => {
                let Some(tmp) = s.tmp.as_mut() else {
                    return false;
                };
                let n = (tmp.len() as u64).min(s.total - s.done) as usize;
                let buf = &mut tmp.as_mut_slice()[..n];
                opcode::Write::new(fd, buf.as_mut_ptr(), n as u32)
                    .offset(s.base + s.done)
                    .build()
            }
            Step::XorRead | Step::XorWrite | Step::ChecksumRead => {
                let Some(tmp) = s.tmp.as_mut() else {
                    return false;
                };
                let (from, to) = (s.piece_done as usize, s.piece as usize);
                let Some(buf) = tmp.as_mut_slice().get_mut(from..to) else {
                    return false;
                };
                let off = s.base + s.done + s.piece_done;
                if s.step == Step::XorWrite {
                    opcode::Write::new(fd, buf.as_mut_ptr(), buf.len() as u32)
                        .offset(off)
                        .build()
                } else {
                    opcode::Read::new(fd, buf.as_mut_ptr(), buf.len() as u32)
                        .offset(off)
                        .build()
                }
            }
            Step::Idle | Step::XorWait => return false,
        };
        let entry = entry.user_data(i as u64);
        for attempt in 0..2 {
            // SAFETY: the SQE points at memory owned by slot `i` (the I/O's buffers, `tmp`,
            // the iovec array), and the slot table is never moved or resized. The slot keeps
            // all of it until this SQE's CQE is reaped; `ChanState::drop` waits for every
            // outstanding CQE (or leaks the slots) before anything is freed.
            let pushed = unsafe { self.ring.submission().push(&entry).is_ok() };
            if pushed {
                self.in_kernel += 1;
                return true;
            }
            if attempt == 0 {
                // Cannot happen with one SQE per slot and SLOTS == RING_ENTRIES; be safe.
                self.submit_ring();
            }
        }
        false
    }

    /// Enters the kernel if SQEs are pending or the kernel has task work / overflowed CQEs.
    fn flush(&mut self) -> bool {
        let sq = self.ring.submission();
        let needed = !sq.is_empty() || sq.taskrun() || sq.cq_overflow();
        drop(sq);
        if needed {
            self.submit_ring();
        }
        needed
    }

    fn submit_ring(&mut self) {
        loop {
            match self.ring.submit() {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // Out of kernel resources or CQ backlog: the next poll retries.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY)) => {
                    return
                }
                Err(e) => {
                    tracing::warn!(bdev = %self.bdev.name, error = %e, "io_uring_enter failed");
                    return;
                }
            }
        }
    }

    /// Processes every available CQE. Returns whether there were any.
    fn reap(&mut self) -> bool {
        let mut any = false;
        let mut batch = [(0u64, 0i32); REAP_BATCH];
        loop {
            let mut n = 0;
            {
                let mut cq = self.ring.completion();
                while n < REAP_BATCH {
                    match cq.next() {
                        Some(c) => {
                            batch[n] = (c.user_data(), c.result());
                            n += 1;
                        }
                        None => break,
                    }
                }
            }
            if n == 0 {
                return any;
            }
            any = true;
            for &(ud, res) in &batch[..n] {
                self.in_kernel -= 1;
                let i = ud as usize;
                if i >= self.slots.len() || self.slots[i].io.is_none() {
                    tracing::warn!(bdev = %self.bdev.name, user_data = ud, "CQE for an idle slot");
                    continue;
                }
                if let Some(st) = self.on_cqe(i, res) {
                    let io = self.release(i);
                    self.done.push((io, st));
                }
            }
        }
    }

    /// Advances slot `i` after a CQE. Some(status) when the operation is finished.
    fn on_cqe(&mut self, i: usize, res: i32) -> Option<IoStatus> {
        let step = self.slots[i].step;
        if res < 0 {
            let errno = -res;
            if step == Step::Fallocate && (errno == libc::EOPNOTSUPP || errno == libc::EINVAL) {
                return self.fallback_to_zero_fill(i);
            }
            self.log_failure(i, errno);
            return Some(IoStatus::Failed);
        }
        let n = res as u64;
        if n == 0 && step != Step::Fsync && step != Step::Fallocate {
            return self.zero_transfer(i);
        }
        let s = &mut self.slots[i];
        match step {
            Step::Fsync | Step::Fallocate => return Some(IoStatus::Success),
            Step::Read | Step::Write | Step::ZeroFill => {
                s.done += n;
                if s.done >= s.total {
                    return Some(IoStatus::Success);
                }
            }
            Step::XorRead => {
                s.piece_done += n;
                if s.piece_done >= s.piece {
                    // The piece's old data is in tmp: XOR the payload in, then write it back.
                    let (Some(tmp), Some(io)) = (s.tmp.as_mut(), s.io.as_ref()) else {
                        return Some(IoStatus::Failed);
                    };
                    xor_from_bufs(
                        &mut tmp.as_mut_slice()[..s.piece as usize],
                        &io.bufs,
                        s.done as usize,
                    );
                    s.step = Step::XorWrite;
                    s.piece_done = 0;
                }
            }
            Step::XorWrite => {
                s.piece_done += n;
                if s.piece_done >= s.piece {
                    if !s.next_piece() {
                        return Some(IoStatus::Success);
                    }
                    s.step = Step::XorRead;
                }
            }
            Step::ChecksumRead => {
                s.piece_done += n;
                if s.piece_done >= s.piece {
                    s.feed_crc();
                    if !s.next_piece() {
                        s.finish_crc();
                        return Some(IoStatus::Success);
                    }
                }
            }
            Step::Idle | Step::XorWait => return Some(IoStatus::Failed),
        }
        self.reissue(i)
    }

    fn reissue(&mut self, i: usize) -> Option<IoStatus> {
        if self.issue(i) {
            None
        } else {
            Some(IoStatus::Failed)
        }
    }

    /// A transfer that moved nothing: a read past the end of the file (truncated under us).
    fn zero_transfer(&self, i: usize) -> Option<IoStatus> {
        let s = &self.slots[i];
        let op = s.io.as_ref().map_or("?", |io| io.io_type.name());
        tracing::warn!(
            bdev = %self.bdev.name,
            op,
            offset = s.base + s.done + s.piece_done,
            step = ?s.step,
            "I/O transferred 0 bytes (past the end of the file?)"
        );
        Some(IoStatus::Failed)
    }

    fn log_failure(&self, i: usize, errno: i32) {
        let s = &self.slots[i];
        let op = s.io.as_ref().map_or("?", |io| io.io_type.name());
        tracing::warn!(
            bdev = %self.bdev.name,
            op,
            offset = s.base,
            len = s.total,
            errno,
            "I/O failed: {}",
            std::io::Error::from_raw_os_error(errno)
        );
    }

    /// fallocate is not supported here: remember it and write zeroes instead.
    fn fallback_to_zero_fill(&mut self, i: usize) -> Option<IoStatus> {
        let punch = self.slots[i].falloc_mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let flag = if punch {
            &self.bdev.no_punch_hole
        } else {
            &self.bdev.no_zero_range
        };
        if !flag.swap(true, Ordering::Relaxed) {
            tracing::info!(
                bdev = %self.bdev.name,
                mode = if punch { "PUNCH_HOLE" } else { "ZERO_RANGE" },
                "fallocate is not supported; writing zeroes instead"
            );
        }
        let total = self.slots[i].total;
        let tmp = match self.alloc_tmp(total, true) {
            Ok(b) => b,
            // Nothing was written yet, so the layer above may simply retry.
            Err(st) => return Some(st),
        };
        let s = &mut self.slots[i];
        s.tmp = Some(tmp);
        s.step = Step::ZeroFill;
        s.done = 0;
        self.reissue(i)
    }

    /// Starts XOR writes whose lock waited for unlocked writes to drain.
    fn run_waiters(&mut self) -> bool {
        if self.waiting.is_empty() {
            return false;
        }
        if !self.bdev.locks.fast_writes_drained() {
            return true;
        }
        while let Some(idx) = self.waiting.pop() {
            let i = idx as usize;
            self.slots[i].step = Step::XorRead;
            if !self.issue(i) {
                let io = self.release(i);
                self.done.push((io, IoStatus::Failed));
            }
        }
        true
    }

    /// Starts queued I/O while slots are free. True if anything happened, or if I/O waits
    /// for a lock another reactor may release (so an interrupt-mode reactor keeps polling).
    fn drain_queue(&mut self) -> bool {
        let mut busy = false;
        let n = self.queue.len();
        for _ in 0..n {
            if self.free.is_empty() {
                break;
            }
            let Some(io) = self.queue.pop_front() else {
                break;
            };
            match self.start(io) {
                Start::Started => busy = true,
                Start::Busy(io) => {
                    self.queue.push_front(io);
                    break;
                }
                Start::Blocked(io) => {
                    self.queue.push_back(io);
                    busy = true;
                }
                Start::Done(io, st) => {
                    self.done.push((io, st));
                    busy = true;
                }
            }
        }
        busy
    }

    /// Frees slot `i` (buffer, lock) and returns its I/O.
    fn release(&mut self, i: usize) -> BdevIo {
        let s = &mut self.slots[i];
        let io = s.io.take();
        s.tmp = None;
        s.step = Step::Idle;
        let held = std::mem::replace(&mut s.held, Held::None);
        self.bdev.locks.unlock(held);
        self.free.push(i as u32);
        // Callers only release occupied slots.
        io.unwrap_or_else(|| BdevIo::new(IoType::Reset, 0, 0))
    }
}

/// Length of the piece starting at `done` of `total` bytes, given the temp buffer.
fn piece_len(tmp: Option<&DmaBuf>, done: u64, total: u64) -> u64 {
    tmp.map_or(0, |b| (b.len() as u64).min(total - done))
}

impl Slot {
    /// Moves to the next piece after the current one completed. False when all are done.
    fn next_piece(&mut self) -> bool {
        self.done += self.piece;
        if self.done >= self.total {
            return false;
        }
        self.piece = piece_len(self.tmp.as_ref(), self.done, self.total);
        self.piece_done = 0;
        true
    }

    /// Chains the CRC over the piece just read, storing each completed chunk's checksum.
    fn feed_crc(&mut self) {
        let (Some(tmp), Some(io)) = (self.tmp.as_ref(), self.io.as_mut()) else {
            return;
        };
        let data = &tmp.as_slice()[..self.piece as usize];
        let mut p = 0;
        while p < data.len() {
            let n = (self.chunk_bytes - self.chunk_fill).min((data.len() - p) as u64) as usize;
            if let Some(h) = self.hasher.as_mut() {
                h.update(&data[p..p + n]);
            }
            self.chunk_fill += n as u64;
            p += n;
            if self.chunk_fill == self.chunk_bytes {
                if let Some(h) = self.hasher.as_mut() {
                    io.put_digest(self.chunk, &h.finish());
                }
                self.chunk += 1;
                self.chunk_fill = 0;
            }
        }
    }

    /// Stores the checksum of a last, partial chunk.
    fn finish_crc(&mut self) {
        if self.chunk_fill > 0 {
            if let (Some(io), Some(h)) = (self.io.as_mut(), self.hasher.as_mut()) {
                io.put_digest(self.chunk, &h.finish());
            }
        }
    }
}

impl Drop for ChanState {
    fn drop(&mut self) {
        // Normally nothing is in flight: every in-flight I/O keeps its channel alive through
        // its completion stack. Still never free memory the kernel may write to.
        while let Some(idx) = self.waiting.pop() {
            drop(self.release(idx as usize));
        }
        if self.in_kernel > 0 {
            tracing::warn!(
                bdev = %self.bdev.name,
                in_flight = self.in_kernel,
                "uring channel dropped with I/O in flight; waiting for it"
            );
        }
        while self.in_kernel > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::error!(bdev = %self.bdev.name, error = %e, "cannot reap in-flight I/O; leaking its buffers");
                    std::mem::forget(std::mem::take(&mut self.slots));
                    return;
                }
            }
            let mut ids = [0u64; REAP_BATCH];
            loop {
                let mut n = 0;
                {
                    let mut cq = self.ring.completion();
                    while n < REAP_BATCH {
                        match cq.next() {
                            Some(c) => {
                                ids[n] = c.user_data();
                                n += 1;
                            }
                            None => break,
                        }
                    }
                }
                if n == 0 {
                    break;
                }
                for &ud in &ids[..n] {
                    self.in_kernel -= 1;
                    let i = ud as usize;
                    if i < self.slots.len() && self.slots[i].io.is_some() {
                        drop(self.release(i));
                    }
                }
            }
        }
        self.queue.clear();
    }
}

/// Points `iov` at `len` bytes of `bufs` starting `skip` bytes in. Returns how many entries
/// it filled (fewer bytes than `len` if the iovec array runs out: the rest is another step).
fn fill_iov(
    iov: &mut [libc::iovec; IOV_PER_SLOT],
    bufs: &mut [DmaBuf],
    mut skip: usize,
    mut len: usize,
    device_writes: bool,
) -> usize {
    let mut n = 0;
    for b in bufs.iter_mut() {
        if len == 0 || n == IOV_PER_SLOT {
            break;
        }
        let bl = b.len();
        if skip >= bl {
            skip -= bl;
            continue;
        }
        let take = (bl - skip).min(len);
        // A read needs the bytes writable; a write's may be a shared view (the kernel only
        // reads through the pointer then).
        let base = if device_writes {
            match b.try_as_mut_ptr() {
                Some(p) => p,
                None => return 0,
            }
        } else {
            b.as_ptr().cast_mut()
        };
        iov[n] = libc::iovec {
            // SAFETY: skip + take <= b.len(): inside the buffer, which the slot's I/O owns
            // until the kernel completes it.
            iov_base: unsafe { base.add(skip) }.cast(),
            iov_len: take,
        };
        n += 1;
        len -= take;
        skip = 0;
    }
    n
}

/// `dst ^= bufs[skip .. skip + dst.len()]`.
fn xor_from_bufs(dst: &mut [u8], bufs: &[DmaBuf], mut skip: usize) {
    let mut pos = 0;
    for b in bufs {
        if pos >= dst.len() {
            break;
        }
        let bl = b.len();
        if skip >= bl {
            skip -= bl;
            continue;
        }
        let n = (bl - skip).min(dst.len() - pos);
        kernels::xor_into(&mut dst[pos..pos + n], &b.as_slice()[skip..skip + n]);
        pos += n;
        skip = 0;
    }
}

/// The raw Linux calls this module needs (block device geometry, direct-I/O alignment).
mod sys {
    use std::io;
    use std::os::fd::RawFd;

    /// `_IOR(0x12, 114, size_t)`.
    #[cfg(not(any(
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc64"
    )))]
    const BLKGETSIZE64: libc::Ioctl = ((2 << 30) | (8 << 16) | (0x12 << 8) | 114) as libc::Ioctl;
    #[cfg(any(
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc64"
    ))]
    const BLKGETSIZE64: libc::Ioctl = ((2 << 29) | (8 << 16) | (0x12 << 8) | 114) as libc::Ioctl;

    /// Size in bytes of the block device open on `fd`.
    pub fn block_device_size(fd: RawFd) -> io::Result<u64> {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a live
        // local of that type.
        let rc = unsafe { libc::ioctl(fd, BLKGETSIZE64, &mut size as *mut u64) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(size)
    }

    /// Logical block size of the block device open on `fd`.
    pub fn logical_block_size(fd: RawFd) -> io::Result<u32> {
        let mut bs: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer, which points at a live local
        // of that type.
        let rc = unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut bs as *mut libc::c_int) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        u32::try_from(bs).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// Required file-offset alignment for O_DIRECT on the file open on `fd` (statx
    /// STATX_DIOALIGN, Linux 6.1+), if the kernel reports it.
    pub fn dio_alignment(fd: RawFd) -> Option<u32> {
        // SAFETY: statx is plain old data; all-zero is a valid value.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: the path is a valid NUL-terminated (empty) string, AT_EMPTY_PATH makes
        // statx describe `fd` itself, and `stx` is a live, writable statx.
        let rc = unsafe {
            libc::statx(
                fd,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                libc::STATX_DIOALIGN,
                &mut stx,
            )
        };
        if rc < 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
            return None;
        }
        Some(stx.stx_dio_offset_align)
    }
}
