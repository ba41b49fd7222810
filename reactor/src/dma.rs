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
    /// Per buffer: the [`DmaBuf`]s (the owner and its views) that refer to it. The buffer
    /// returns to the pool when the last one drops.
    refs: Box<[AtomicU32]>,
    /// Buffers handed out and not yet returned (for stats and leak checks).
    in_use: AtomicUsize,
}

const MAX_POOLS: usize = 4;
const CACHE_MAX: usize = 256;
const CACHE_BATCH: usize = 32;

static POOL_IDS: AtomicUsize = AtomicUsize::new(0);

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

/// One I/O buffer from a [`DmaPool`] (4 KiB-aligned), or a view of part of one.
///
/// A view ([`DmaBuf::view`]) lets a layer hand a sub-range of an I/O's buffer to a child I/O
/// without copying (RAID splits). Views share the pool buffer through a reference count, so
/// the memory returns to the pool only when the owner and all its views are gone: a view can
/// never outlive its memory. Views alias their parent: like a device doing DMA into a buffer,
/// whoever holds a view of a range owns that range's contents until it gives the view back
/// (concurrent writes to the same bytes give unspecified contents, never unsoundness, since
/// the bytes are plain memory in a mapping that nothing else types).
pub struct DmaBuf {
    pool: &'static DmaPool,
    idx: u32,
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes from `ptr` that this buffer or view may cover.
    cap: usize,
}

// SAFETY: a DmaBuf refers to pool memory (not thread-local) and its reference count is atomic.
unsafe impl Send for DmaBuf {}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf")
            .field("pool", &self.pool.name)
            .field("idx", &self.idx)
            .field("len", &self.len)
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
    /// Bytes this buffer may grow to ([`DmaBuf::set_len`]).
    pub fn capacity(&self) -> usize {
        self.cap
    }
    /// Changes the length; fails if it exceeds the capacity.
    pub fn set_len(&mut self, len: usize) -> bool {
        if len > self.cap {
            return false;
        }
        self.len = len;
        true
    }
    /// A buffer covering bytes `off..off + len` of this one, sharing its memory (no copy).
    /// None if the range is not inside `0..len()`.
    pub fn view(&self, off: usize, len: usize) -> Option<DmaBuf> {
        if off.checked_add(len)? > self.len {
            return None;
        }
        // Relaxed as in Arc::clone: the caller's reference keeps the count above zero.
        self.pool.refs[self.idx as usize].fetch_add(1, Ordering::Relaxed);
        // SAFETY: off + len <= self.len <= cap, so the pointer stays inside this buffer.
        let ptr = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(off)) };
        Some(DmaBuf {
            pool: self.pool,
            idx: self.idx,
            ptr,
            len,
            cap: len,
        })
    }
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len lies inside the pool buffer, which stays allocated while this
        // DmaBuf holds a reference; see the type's documentation on views.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above; `&mut self` guarantees no other reference through this DmaBuf.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // Release/Acquire as in Arc's drop: the last holder sees every write through views.
        if self.pool.refs[self.idx as usize].fetch_sub(1, Ordering::Release) == 1 {
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
/// Different reactors may access the same region at once. Each call touches only the range
/// it is given; overlapping I/O issued concurrently by hosts has unspecified content, as NVMe
/// allows, and the bdev serialises the read-modify-write operations (XOR) itself.
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

    /// Runs `f` over the bytes at `off..off+len` mutably (read-modify-write kernels). The
    /// caller must hold whatever lock serialises writers of that range.
    pub fn with_mut<R>(&self, off: usize, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if !self.in_bounds(off, len) {
            return None;
        }
        // SAFETY: bounds checked; the caller serialises read-modify-write on this range.
        let s = unsafe { std::slice::from_raw_parts_mut(self.as_ptr().add(off), len) };
        Some(f(s))
    }

    /// Runs `f` over the bytes at `off..off+len` (checksums, without copying them out).
    pub fn with_ref<R>(&self, off: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if !self.in_bounds(off, len) {
            return None;
        }
        // SAFETY: bounds checked; concurrent writes to the range give unspecified (not unsafe
        // for u8 data) results, as with a real device.
        let s = unsafe { std::slice::from_raw_parts(self.as_ptr().add(off), len) };
        Some(f(s))
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
    fn views_share_memory_and_keep_it_alive() {
        let p = DmaPool::new("v", 4096, 1).unwrap();
        let mut owner = p.alloc(4096).unwrap();
        owner.as_mut_slice().fill(1);
        let mut v = owner.view(1024, 512).unwrap();
        assert!(owner.view(4000, 200).is_none(), "view past the end");
        assert_eq!(v.len(), 512);
        assert!(!v.set_len(513), "a view cannot grow past its range");
        v.as_mut_slice().fill(7);
        assert_eq!(owner.as_slice()[1024], 7);
        assert_eq!(owner.as_slice()[1023], 1);
        let vv = v.view(256, 256).unwrap();
        drop(owner);
        drop(v);
        // The pool buffer is still referenced by `vv`.
        assert!(p.alloc(4096).is_none());
        assert_eq!(vv.as_slice()[0], 7);
        drop(vv);
        assert_eq!(p.in_use(), 0);
        assert!(p.alloc(4096).is_some());
    }
}
