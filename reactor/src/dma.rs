//! DMA-able memory: regions from 2 MiB hugepages when the system has them reserved (ordinary
//! pages otherwise), and pools of fixed-size, 4 KiB-aligned I/O buffers carved from them.
//!
//! Buffers are taken from a per-thread cache first, so a reactor allocates and frees them with
//! no atomic operation in the common case; the cache refills from and spills to a lock-free
//! global queue in batches. Nothing is allocated per I/O.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::task::Waker;

use crossbeam::queue::ArrayQueue;

use crate::ReactorError;

const HUGEPAGE: usize = 2 << 20;
/// Alignment of every buffer: enough for O_DIRECT on any common device.
pub const BUF_ALIGN: usize = 4096;

/// An anonymous memory mapping, hugepage-backed when possible. Lives until dropped.
#[derive(Debug)]
pub struct DmaRegion {
    ptr: NonNull<u8>,
    len: usize,
    hugepages: bool,
}

// SAFETY: the region is plain memory; access discipline is up to its users (pools hand out
// disjoint buffers; bdevs serialise access to their own backing store).
unsafe impl Send for DmaRegion {}
// SAFETY: as above: `&DmaRegion` only exposes raw pointers.
unsafe impl Sync for DmaRegion {}

static HUGEPAGE_LOGGED: AtomicBool = AtomicBool::new(false);

impl DmaRegion {
    /// Maps `len` bytes (rounded up), zero-filled and populated.
    pub fn new(len: usize) -> Result<Self, ReactorError> {
        let len = len.max(BUF_ALIGN);
        let huge_len = len.div_ceil(HUGEPAGE) * HUGEPAGE;
        if let Some(ptr) = map(huge_len, true) {
            log_backing(true);
            return Ok(Self {
                ptr,
                len: huge_len,
                hugepages: true,
            });
        }
        let len = len.div_ceil(BUF_ALIGN) * BUF_ALIGN;
        let ptr = map(len, false).ok_or_else(|| {
            ReactorError::Dma(format!(
                "mmap of {len} bytes failed: {}",
                std::io::Error::last_os_error()
            ))
        })?;
        log_backing(false);
        Ok(Self {
            ptr,
            len,
            hugepages: false,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_hugepage_backed(&self) -> bool {
        self.hugepages
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

fn log_backing(huge: bool) {
    if !HUGEPAGE_LOGGED.swap(true, Ordering::Relaxed) {
        if huge {
            tracing::info!("DMA memory: 2 MiB hugepages");
        } else {
            tracing::info!(
                "DMA memory: ordinary pages (no hugepages reserved; see scripts/setup.sh)"
            );
        }
    }
}

fn map(len: usize, huge: bool) -> Option<NonNull<u8>> {
    // Populated up front: a page fault on a reactor costs microseconds of I/O latency.
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
    if huge {
        flags |= libc::MAP_HUGETLB;
    }
    // SAFETY: anonymous mapping with no address hint; the result is checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    NonNull::new(p.cast())
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing references it any more
        // (pools are 'static and never dropped; bdev stores drop their region last).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A pool of `count` buffers of `buf_size` bytes.
#[derive(Debug)]
pub struct DmaPool {
    id: usize,
    name: &'static str,
    region: DmaRegion,
    buf_size: usize,
    count: usize,
    free: ArrayQueue<u32>,
    /// Per buffer: the [`DmaBuf`]s (parts and views) that refer to it. The buffer returns to
    /// the pool when the last one drops.
    refs: Box<[AtomicU32]>,
    /// Per buffer: its live read-only views; none of its handles writes while non-zero.
    shares: Box<[AtomicU32]>,
    /// Buffers handed out and not yet returned (for stats and leak checks).
    in_use: AtomicUsize,
}

const MAX_POOLS: usize = 8;
const CACHE_MAX: usize = 256;
const CACHE_BATCH: usize = 32;

static POOL_IDS: AtomicUsize = AtomicUsize::new(0);

/// Address and length of every pool's memory, in creation order: a device driver maps these
/// for its DMA engine (an IOMMU) so that any pool buffer can be handed to the device as is.
static POOL_REGIONS: parking_lot::Mutex<Vec<(usize, usize)>> = parking_lot::Mutex::new(Vec::new());

/// The memory of every buffer pool created so far, as `(address, length)` pairs. Pools live
/// for the rest of the process, so the ranges stay valid.
pub fn pool_regions() -> Vec<(usize, usize)> {
    POOL_REGIONS.lock().clone()
}

struct ThreadCache {
    lists: [Vec<u32>; MAX_POOLS],
    pools: [Option<&'static DmaPool>; MAX_POOLS],
    waiters: Vec<Waker>,
}

impl Drop for ThreadCache {
    fn drop(&mut self) {
        for (i, l) in self.lists.iter_mut().enumerate() {
            if let Some(p) = self.pools[i] {
                for idx in l.drain(..) {
                    let _ = p.free.push(idx);
                }
            }
        }
    }
}

thread_local! {
    static CACHE: RefCell<ThreadCache> = RefCell::new(ThreadCache {
        lists: Default::default(),
        pools: [None; MAX_POOLS],
        waiters: Vec::new(),
    });
}

impl DmaPool {
    /// Creates a pool that lives for the rest of the process.
    pub fn new(
        name: &'static str,
        buf_size: usize,
        count: usize,
    ) -> Result<&'static Self, ReactorError> {
        let id = POOL_IDS.fetch_add(1, Ordering::Relaxed);
        if id >= MAX_POOLS {
            return Err(ReactorError::Dma(format!(
                "at most {MAX_POOLS} buffer pools"
            )));
        }
        if buf_size == 0
            || !buf_size.is_multiple_of(BUF_ALIGN)
            || count == 0
            || count > u32::MAX as usize
        {
            return Err(ReactorError::Dma(format!(
                "pool {name}: buffer size must be a non-zero multiple of {BUF_ALIGN} (got {buf_size}), count non-zero"
            )));
        }
        let region = DmaRegion::new(buf_size * count)?;
        POOL_REGIONS
            .lock()
            .push((region.as_ptr() as usize, region.len()));
        let free = ArrayQueue::new(count);
        for i in 0..count as u32 {
            let _ = free.push(i);
        }
        Ok(Box::leak(Box::new(Self {
            id,
            name,
            region,
            buf_size,
            count,
            free,
            refs: (0..count).map(|_| AtomicU32::new(0)).collect(),
            shares: (0..count).map(|_| AtomicU32::new(0)).collect(),
            in_use: AtomicUsize::new(0),
        })))
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }
    pub fn count(&self) -> usize {
        self.count
    }
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }
    pub fn is_hugepage_backed(&self) -> bool {
        self.region.is_hugepage_backed()
    }

    /// Takes a buffer whose length is set to `len` (≤ buf_size), or None when exhausted.
    pub fn alloc(&'static self, len: usize) -> Option<DmaBuf> {
        if len > self.buf_size {
            return None;
        }
        let idx = CACHE.with(|c| {
            let mut c = c.borrow_mut();
            c.pools[self.id] = Some(self);
            let list = &mut c.lists[self.id];
            if list.is_empty() {
                for _ in 0..CACHE_BATCH {
                    match self.free.pop() {
                        Some(i) => list.push(i),
                        None => break,
                    }
                }
            }
            list.pop()
        })?;
        self.in_use.fetch_add(1, Ordering::Relaxed);
        // The buffer was free, so nobody else refers to it.
        self.refs[idx as usize].store(1, Ordering::Relaxed);
        // SAFETY: idx < count, so the offset stays inside the region.
        let ptr = unsafe {
            NonNull::new_unchecked(self.region.as_ptr().add(idx as usize * self.buf_size))
        };
        Some(DmaBuf {
            pool: self,
            idx,
            ptr,
            len,
            cap: self.buf_size,
            access: Access::Exclusive,
        })
    }

    fn release(&'static self, idx: u32) {
        self.in_use.fetch_sub(1, Ordering::Relaxed);
        let waiter = CACHE.try_with(|c| {
            let mut c = c.borrow_mut();
            c.pools[self.id] = Some(self);
            let list = &mut c.lists[self.id];
            list.push(idx);
            if list.len() > CACHE_MAX {
                for _ in 0..CACHE_MAX / 2 {
                    if let Some(i) = list.pop() {
                        let _ = self.free.push(i);
                    }
                }
            }
            c.waiters.pop()
        });
        match waiter {
            Ok(Some(w)) => w.wake(),
            Ok(None) => {}
            // Thread is exiting: its cache is gone, return straight to the global queue.
            Err(_) => {
                let _ = self.free.push(idx);
            }
        }
    }
}

/// Who may touch the bytes a [`DmaBuf`] covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// The handle owns its range: no other handle covers any byte of it, except read-only
    /// views made from it. It may write while none of those views is alive.
    Exclusive,
    /// A read-only view ([`DmaBuf::share`]): never written through.
    Shared,
}

/// One I/O buffer from a [`DmaPool`] (4 KiB-aligned), or a part or read-only view of one.
///
/// # The aliasing rule
/// No safe code can reach the same bytes through a `&mut [u8]` and any other reference:
/// - An **exclusive** handle (from [`DmaPool::alloc`], or a part made by
///   [`DmaBuf::split_to`] / [`DmaBuf::split_off`]) is the only handle that may write its
///   range. Splitting moves bytes from one exclusive handle to a new one, so exclusive
///   handles of one pool buffer always cover disjoint ranges; [`DmaBuf::unsplit`] joins
///   adjacent parts back. A layer that fans an I/O out hands each child a part (the child's
///   device owns it until completion) and joins the parts when the children come back.
/// - A **shared** handle ([`DmaBuf::share`]) is a read-only view, for fan-out of data that
///   several devices read at once (mirror legs, RAID parity inputs). While any shared view of
///   a pool buffer is alive, no handle of it can be written through: [`DmaBuf::try_as_mut_slice`]
///   returns `None` (the check is per pool buffer, deliberately conservative).
///
/// Every handle counts a reference to the pool buffer, which returns to the pool when the
/// last one drops: a part or view never outlives its memory.
pub struct DmaBuf {
    pool: &'static DmaPool,
    idx: u32,
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes from `ptr` that this handle covers (and may grow its length to).
    cap: usize,
    access: Access,
}

// SAFETY: a DmaBuf refers to pool memory (not thread-local), its counts are atomic, and the
// aliasing rule above holds across threads (the share count is read with Acquire).
unsafe impl Send for DmaBuf {}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf")
            .field("pool", &self.pool.name)
            .field("idx", &self.idx)
            .field("len", &self.len)
            .field("access", &self.access)
            .finish()
    }
}

impl DmaBuf {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bytes this handle covers: its length may grow to this ([`DmaBuf::set_len`]).
    pub fn capacity(&self) -> usize {
        self.cap
    }
    /// Changes the length within the capacity; false if it exceeds it.
    pub fn set_len(&mut self, len: usize) -> bool {
        if len > self.cap {
            return false;
        }
        self.len = len;
        true
    }
    /// Whether this is a read-only view.
    pub fn is_shared(&self) -> bool {
        self.access == Access::Shared
    }
    /// Whether the bytes may be written through this handle now: it is exclusive and no
    /// read-only view of its pool buffer is alive.
    pub fn is_writable(&self) -> bool {
        // Acquire pairs with the Release in a view's drop: its reads happen before our writes.
        self.access == Access::Exclusive
            && self.pool.shares[self.idx as usize].load(Ordering::Acquire) == 0
    }

    /// A new handle over `ptr..ptr+len` of the same pool buffer (counts are the caller's).
    fn handle(&self, ptr: NonNull<u8>, len: usize, cap: usize, access: Access) -> DmaBuf {
        // Relaxed as in Arc::clone: the caller's handle keeps the count above zero.
        self.pool.refs[self.idx as usize].fetch_add(1, Ordering::Relaxed);
        if access == Access::Shared {
            self.pool.shares[self.idx as usize].fetch_add(1, Ordering::Relaxed);
        }
        DmaBuf {
            pool: self.pool,
            idx: self.idx,
            ptr,
            len,
            cap,
            access,
        }
    }

    /// A read-only view of bytes `off..off + len` (no copy). None if the range is not inside
    /// `0..len()`. Until the view drops, nothing writes this pool buffer.
    pub fn share(&self, off: usize, len: usize) -> Option<DmaBuf> {
        if off.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: off + len <= self.len <= cap, so the pointer stays inside this handle.
        let ptr = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(off)) };
        Some(self.handle(ptr, len, len, Access::Shared))
    }

    /// Splits off bytes `0..at` as a new handle of the same access; `self` keeps `at..`.
    /// None if `at > len()`.
    pub fn split_to(&mut self, at: usize) -> Option<DmaBuf> {
        if at > self.len {
            return None;
        }
        let front = self.handle(self.ptr, at, at, self.access);
        // SAFETY: at <= len <= cap: the pointer stays inside (or one past) this handle.
        self.ptr = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(at)) };
        self.len -= at;
        self.cap -= at;
        Some(front)
    }

    /// Splits off bytes `at..len()` (and the spare capacity) as a new handle of the same
    /// access; `self` keeps `0..at`. None if `at > len()`.
    pub fn split_off(&mut self, at: usize) -> Option<DmaBuf> {
        if at > self.len {
            return None;
        }
        // SAFETY: at <= len <= cap, as in split_to.
        let ptr = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(at)) };
        let back = self.handle(ptr, self.len - at, self.cap - at, self.access);
        self.len = at;
        self.cap = at;
        Some(back)
    }

    /// Whether `next` starts where this handle's range ends, in the same pool buffer, with
    /// the same access, and this handle is full (its length is its capacity).
    pub fn is_followed_by(&self, next: &DmaBuf) -> bool {
        std::ptr::eq(self.pool, next.pool)
            && self.idx == next.idx
            && self.access == next.access
            && self.len == self.cap
            && self.ptr.as_ptr().wrapping_add(self.cap) == next.ptr.as_ptr()
    }

    /// Joins `next`, the part that follows this one (see [`DmaBuf::is_followed_by`]), back
    /// into this handle. Gives `next` back if it does not follow.
    pub fn unsplit(&mut self, next: DmaBuf) -> Result<(), DmaBuf> {
        if !self.is_followed_by(&next) {
            return Err(next);
        }
        self.len += next.len;
        self.cap += next.cap;
        // `next`'s counts are released by its drop; this handle holds its own.
        drop(next);
        Ok(())
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len lies inside the pool buffer, which stays allocated while this
        // handle counts a reference. No `&mut` to these bytes can exist meanwhile: only an
        // exclusive handle covering them can write, through `&mut self` (so not while this
        // borrow of `self` lives, if it is this handle), and not while a shared view (if this
        // is one) is alive.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    /// The bytes, writable, or None if this handle may not write now
    /// ([`DmaBuf::is_writable`]).
    pub fn try_as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if !self.is_writable() {
            return None;
        }
        // SAFETY: this handle is exclusive (no other exclusive handle covers these bytes) and
        // no shared view of the pool buffer is alive; a new view needs `&self` of a handle
        // covering the range, i.e. of this one, which `&mut self` borrows.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }
    /// The bytes, writable.
    ///
    /// # Panics
    /// If this handle may not write ([`DmaBuf::is_writable`]): a read-only view, or a
    /// buffer with a view still alive. That is a bug in the caller (as a second
    /// `RefCell::borrow_mut` is); code that can meet foreign buffers uses
    /// [`DmaBuf::try_as_mut_slice`].
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self.try_as_mut_slice() {
            Some(s) => s,
            None => panic!("DmaBuf: write through a read-only or shared buffer"),
        }
    }
    /// A pointer a device may write through until it gives the buffer back, or None if this
    /// handle may not write now.
    pub fn try_as_mut_ptr(&mut self) -> Option<*mut u8> {
        self.try_as_mut_slice().map(|s| s.as_mut_ptr())
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        let i = self.idx as usize;
        if self.access == Access::Shared {
            // Release: this view's reads happen before a writer's Acquire load sees zero.
            self.pool.shares[i].fetch_sub(1, Ordering::Release);
        }
        // Release/Acquire as in Arc's drop: the last holder sees every write through parts.
        if self.pool.refs[i].fetch_sub(1, Ordering::Release) == 1 {
            fence(Ordering::Acquire);
            self.pool.release(self.idx);
        }
    }
}

/// Sizes of the process-wide I/O buffer pools (SPDK's iobuf "small" and "large").
#[derive(Debug, Clone, Copy)]
pub struct IobufOptions {
    pub small_size: usize,
    pub small_count: usize,
    pub large_size: usize,
    pub large_count: usize,
}

impl Default for IobufOptions {
    fn default() -> Self {
        Self {
            small_size: 8 << 10,
            small_count: 8192,
            large_size: 128 << 10,
            large_count: 1024,
        }
    }
}

struct Iobuf {
    small: &'static DmaPool,
    large: &'static DmaPool,
}

static IOBUF: OnceLock<Result<Iobuf, String>> = OnceLock::new();

/// Creates the global pools; later calls (and the first `alloc`) keep the first settings.
pub fn init_iobuf(opts: IobufOptions) -> Result<(), ReactorError> {
    let r = IOBUF.get_or_init(|| {
        let small =
            DmaPool::new("small", opts.small_size, opts.small_count).map_err(|e| e.to_string())?;
        let large =
            DmaPool::new("large", opts.large_size, opts.large_count).map_err(|e| e.to_string())?;
        Ok(Iobuf { small, large })
    });
    r.as_ref()
        .map(|_| ())
        .map_err(|e| ReactorError::Dma(e.clone()))
}

fn iobuf() -> Option<&'static Iobuf> {
    if IOBUF.get().is_none() {
        let _ = init_iobuf(IobufOptions::default());
    }
    IOBUF.get()?.as_ref().ok()
}

/// Largest buffer [`alloc`] can return.
pub fn max_buf_size() -> usize {
    iobuf().map(|b| b.large.buf_size).unwrap_or(0)
}

/// Takes an I/O buffer of `len` bytes from the global pools, or None when exhausted.
#[inline]
pub fn alloc(len: usize) -> Option<DmaBuf> {
    let b = iobuf()?;
    if len <= b.small.buf_size {
        // A small request may use a large buffer rather than fail while large ones are free.
        b.small.alloc(len).or_else(|| b.large.alloc(len))
    } else {
        b.large.alloc(len)
    }
}

/// Whether every buffer of every pool is handed out (nothing [`alloc`] could return).
pub fn exhausted() -> bool {
    iobuf()
        .is_none_or(|b| b.small.in_use() >= b.small.count() && b.large.in_use() >= b.large.count())
}

/// The global pools, for statistics.
pub fn pools() -> Vec<&'static DmaPool> {
    iobuf().map(|b| vec![b.small, b.large]).unwrap_or_default()
}

/// Waits (on a reactor) until a buffer of `len` bytes is free. Errors only if `len` is larger
/// than any pool buffer.
pub async fn alloc_wait(len: usize) -> Result<DmaBuf, ReactorError> {
    if len > max_buf_size() {
        return Err(ReactorError::Dma(format!(
            "buffer of {len} bytes exceeds the largest pool buffer"
        )));
    }
    loop {
        if let Some(b) = alloc(len) {
            return Ok(b);
        }
        // Woken by a free on this thread, or re-checked after 1 ms (frees on other threads).
        std::future::poll_fn(|cx| {
            CACHE.with(|c| c.borrow_mut().waiters.push(cx.waker().clone()));
            std::task::Poll::Ready(())
        })
        .await;
        crate::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Byte-addressed access to a region used as a device's backing store (the malloc bdev).
///
/// Different reactors may access the same region at once, so, like guest memory in
/// vm-memory, it is only ever copied to and from through raw pointers: no method makes a
/// reference into it. Each call touches only the range it is given; overlapping I/O issued
/// concurrently by hosts has unspecified content, as NVMe allows, and the bdev serialises
/// the read-modify-write operations (XOR) itself.
impl DmaRegion {
    fn in_bounds(&self, off: usize, len: usize) -> bool {
        off.checked_add(len).is_some_and(|end| end <= self.len)
    }

    /// Copies `dst.len()` bytes at `off` into `dst`. False if out of bounds.
    pub fn read_at(&self, off: usize, dst: &mut [u8]) -> bool {
        if !self.in_bounds(off, dst.len()) {
            return false;
        }
        // SAFETY: bounds checked above; `dst` is a distinct allocation (a pool buffer or heap).
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(off), dst.as_mut_ptr(), dst.len())
        };
        true
    }

    /// Copies `src` to `off`. False if out of bounds.
    pub fn write_at(&self, off: usize, src: &[u8]) -> bool {
        if !self.in_bounds(off, src.len()) {
            return false;
        }
        // SAFETY: bounds checked above; `src` does not alias the region.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.as_ptr().add(off), src.len()) };
        true
    }

    /// Zeroes `len` bytes at `off`. False if out of bounds.
    pub fn zero_at(&self, off: usize, len: usize) -> bool {
        if !self.in_bounds(off, len) {
            return false;
        }
        // SAFETY: bounds checked above.
        unsafe { std::ptr::write_bytes(self.as_ptr().add(off), 0, len) };
        true
    }

    /// XORs `src` into the bytes at `off` (`region ^= src`). False if out of bounds. Not
    /// atomic: the caller holds whatever lock serialises read-modify-writes of the range.
    pub fn xor_at(&self, off: usize, src: &[u8], xor: impl Fn(&mut [u8], &[u8])) -> bool {
        if !self.in_bounds(off, src.len()) {
            return false;
        }
        // Through a private copy: no reference into the region (other reactors may be
        // copying the same bytes) is ever made.
        let mut tmp = [0u8; REGION_CHUNK];
        for (i, s) in src.chunks(REGION_CHUNK).enumerate() {
            let at = off + i * REGION_CHUNK;
            let t = &mut tmp[..s.len()];
            self.read_at(at, t);
            xor(t, s);
            self.write_at(at, t);
        }
        true
    }

    /// The address of bytes `off..off+len`, for code that reads the region in place without
    /// a reference (a CRC engine over a raw pointer), or None if out of bounds. Valid while
    /// the region is borrowed.
    pub fn raw_range(&self, off: usize, len: usize) -> Option<*const u8> {
        if !self.in_bounds(off, len) {
            return None;
        }
        // SAFETY: bounds checked: the offset stays inside the mapping.
        Some(unsafe { self.as_ptr().add(off) }.cast_const())
    }

    /// Hands the bytes at `off..off+len` to `f` in consecutive pieces (checksums), each a
    /// private copy. False if out of bounds.
    pub fn visit_at(&self, off: usize, len: usize, mut f: impl FnMut(&[u8])) -> bool {
        if !self.in_bounds(off, len) {
            return false;
        }
        let mut tmp = [0u8; REGION_CHUNK];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(REGION_CHUNK);
            self.read_at(off + done, &mut tmp[..n]);
            f(&tmp[..n]);
            done += n;
        }
        true
    }
}

/// Bytes a region operation stages on the stack at a time.
const REGION_CHUNK: usize = 4096;

/// A read-only window onto bytes of a region, lent by the bdev that owns the region to the
/// layer above instead of a copy (zero-copy reads: a malloc bdev's read is sent to the host
/// straight from its memory). It holds the region, so the memory stays mapped until the last
/// view drops, even if the bdev is deleted meanwhile (so a view held long, by a host that
/// stops reading, pins the whole region).
///
/// The bytes are not frozen: a write to the same blocks while the view lives shows through
/// it, as it would through a copy taken during that write (a concurrent overlapping write, a
/// race the host made). Rust code therefore never reads a view in place: the kernel reads it
/// ([`RegionView::send_parts`], for a socket send) or it is copied out
/// ([`RegionView::copy_to`]).
pub struct RegionView {
    region: std::sync::Arc<DmaRegion>,
    /// Where the view starts in the region (bounds checked when it was made).
    start: usize,
    len: usize,
}

impl std::fmt::Debug for RegionView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionView")
            .field("len", &self.len)
            .finish()
    }
}

impl DmaRegion {
    /// A view of bytes `off..off+len`, or None if out of bounds.
    pub fn view(self: &std::sync::Arc<Self>, off: usize, len: usize) -> Option<RegionView> {
        self.in_bounds(off, len).then(|| RegionView {
            region: self.clone(),
            start: off,
            len,
        })
    }
}

impl RegionView {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes `off..off+len` of the view as a slice for a system call that reads them
    /// (`writev`), or None if out of range.
    ///
    /// # Safety
    /// The slice may only be handed to the kernel: no Rust code may read through it. Another
    /// reactor may write the same bytes (through raw pointers) while it lives, and a Rust
    /// read racing that write would be a data race.
    pub unsafe fn send_parts(&self, off: usize, len: usize) -> Option<&[u8]> {
        if off.checked_add(len)? > self.len {
            return None;
        }
        let ptr = self.region.raw_range(self.start + off, len)?;
        // SAFETY: raw_range checked the range is inside the mapping, which `region` keeps
        // alive while the view (and so the returned borrow) lives. The caller promises the
        // slice goes only to the kernel, which copies it out.
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    }

    /// Copies bytes `off..off + dst.len()` of the view into `dst`; false if out of range.
    pub fn copy_to(&self, off: usize, dst: &mut [u8]) -> bool {
        if off.checked_add(dst.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        self.region.read_at(self.start + off, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_exhaustion_and_reuse() {
        let p = DmaPool::new("t", 4096, 8).unwrap();
        let mut held: Vec<DmaBuf> = (0..8).map(|_| p.alloc(4096).unwrap()).collect();
        assert!(p.alloc(4096).is_none(), "pool of 8 handed out a 9th buffer");
        assert_eq!(p.in_use(), 8);
        // Buffers are distinct and aligned.
        let mut addrs: Vec<usize> = held.iter().map(|b| b.as_ptr() as usize).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 8);
        assert!(addrs.iter().all(|a| a % BUF_ALIGN == 0));
        held[0].as_mut_slice().fill(0xab);
        held.pop();
        assert!(p.alloc(4096).is_some());
        assert!(p.alloc(8192).is_none(), "oversize request must fail");
    }

    #[test]
    fn shared_views_are_read_only_and_block_writers() {
        let p = DmaPool::new("v", 4096, 1).unwrap();
        let mut owner = p.alloc(4096).unwrap();
        owner.as_mut_slice().fill(1);
        let mut v = owner.share(1024, 512).unwrap();
        assert!(owner.share(4000, 200).is_none(), "view past the end");
        assert_eq!(v.len(), 512);
        assert!(!v.set_len(513), "a view cannot grow past its range");
        assert!(v.is_shared());
        assert!(v.try_as_mut_slice().is_none(), "a view is never written");
        assert!(!owner.is_writable(), "no writes while a view is alive");
        assert!(owner.try_as_mut_slice().is_none());
        assert_eq!(v.as_slice()[0], 1);
        let vv = v.share(256, 256).unwrap();
        drop(v);
        assert!(
            owner.try_as_mut_slice().is_none(),
            "a view of a view still blocks"
        );
        drop(owner);
        // The pool buffer is still referenced by `vv`.
        assert!(p.alloc(4096).is_none());
        assert_eq!(vv.as_slice()[0], 1);
        drop(vv);
        assert_eq!(p.in_use(), 0);
        let mut again = p.alloc(4096).unwrap();
        assert!(
            again.try_as_mut_slice().is_some(),
            "last view gone: writable again"
        );
    }

    #[test]
    fn parts_are_disjoint_and_join_back() {
        let p = DmaPool::new("s", 4096, 1).unwrap();
        let mut b = p.alloc(4096).unwrap();
        let base = b.as_ptr() as usize;
        let mut front = b.split_to(1024).unwrap();
        let mut back = b.split_off(2048).unwrap();
        assert!(b.split_to(2049).is_none(), "split past the end");
        assert_eq!((front.len(), b.len(), back.len()), (1024, 2048, 1024));
        assert_eq!(b.as_ptr() as usize, base + 1024);
        assert_eq!(back.as_ptr() as usize, base + 3072);
        // Each part writes its own range at once: they are disjoint.
        front.as_mut_slice().fill(1);
        b.as_mut_slice().fill(2);
        back.as_mut_slice().fill(3);
        assert!(
            !front.set_len(1025),
            "a part cannot grow into its neighbour"
        );
        // Only neighbours, in order, join.
        let back = match front.unsplit(back) {
            Err(back) => back,
            Ok(()) => panic!("joined parts that are not adjacent"),
        };
        assert!(b.unsplit(back).is_ok());
        assert!(front.unsplit(b).is_ok());
        assert_eq!(front.len(), 4096);
        assert_eq!(front.capacity(), 4096, "a join restores the parent");
        assert_eq!(front.as_ptr() as usize, base);
        let s = front.as_slice();
        assert!(s[..1024].iter().all(|&x| x == 1));
        assert!(s[1024..3072].iter().all(|&x| x == 2));
        assert!(s[3072..].iter().all(|&x| x == 3));
        drop(front);
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn parts_keep_the_buffer_until_the_last_drops() {
        let p = DmaPool::new("k", 4096, 1).unwrap();
        let mut b = p.alloc(4096).unwrap();
        let tail = b.split_off(512).unwrap();
        drop(b);
        assert!(p.alloc(4096).is_none(), "a live part keeps its pool buffer");
        assert_eq!(tail.len(), 3584);
        drop(tail);
        assert!(p.alloc(4096).is_some());
    }

    #[test]
    fn shared_parts_stay_read_only() {
        let p = DmaPool::new("r", 4096, 1).unwrap();
        let b = p.alloc(4096).unwrap();
        let mut v = b.share(0, 4096).unwrap();
        let mut w = v.split_off(2048).unwrap();
        assert!(w.is_shared() && w.try_as_mut_slice().is_none());
        // A shared part never joins an exclusive one.
        let mut b = b;
        let tail = b.split_off(2048).unwrap();
        assert!(v.unsplit(tail).is_err());
        assert!(v.unsplit(w).is_ok());
        assert_eq!(v.len(), 4096);
    }

    #[test]
    fn region_xor_and_visit_copy_through_private_buffers() {
        let r = DmaRegion::new(3 * REGION_CHUNK).unwrap();
        let data: Vec<u8> = (0..2 * REGION_CHUNK + 100).map(|i| i as u8).collect();
        assert!(r.write_at(10, &data));
        let ones = vec![0xffu8; data.len()];
        assert!(r.xor_at(10, &ones, |d, s| d
            .iter_mut()
            .zip(s)
            .for_each(|(a, b)| *a ^= b)));
        let mut seen = Vec::new();
        assert!(r.visit_at(10, data.len(), |s| seen.extend_from_slice(s)));
        assert!(seen.iter().zip(&data).all(|(a, b)| *a == !b));
        assert!(!r.visit_at(r.len() - 1, 2, |_| {}), "out of bounds");
        assert!(!r.xor_at(r.len(), &[1], |_, _| {}));
    }
}
