//! A device's memory-mapped registers (a BAR mapped through vfio): bounds-checked volatile
//! 32- and 64-bit accesses, the only way the driver touches device registers.

use super::sys;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};

pub struct Bar {
    /// Null once revoked: accesses then read all ones and drop writes, as a removed device.
    ptr: AtomicPtr<u8>,
    len: usize,
}

// SAFETY: the mapping is device memory; every access is a single volatile load or store,
// which the device serialises. No reference into it is ever made.
unsafe impl Send for Bar {}
// SAFETY: as above.
unsafe impl Sync for Bar {}

impl std::fmt::Debug for Bar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bar").field("len", &self.len).finish()
    }
}

impl Bar {
    /// Takes ownership of a mapping made by [`sys::mmap_region`].
    pub(super) fn new(ptr: NonNull<u8>, len: usize) -> Bar {
        Bar {
            ptr: AtomicPtr::new(ptr.as_ptr()),
            len,
        }
    }

    /// Unmaps the registers now (the device is being given back); later accesses behave as
    /// on a removed device.
    ///
    /// # Safety
    /// No other thread may be inside an access to this Bar, or start one having loaded the
    /// mapping before this call: the caller has every thread that uses it pass a barrier
    /// after it stopped using the device (the reactors run a message).
    pub unsafe fn revoke(&self) {
        let p = self.ptr.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if let Some(p) = NonNull::new(p) {
            // SAFETY: the mapping this Bar owned; per this function's contract nothing is
            // using it.
            unsafe { sys::munmap(p, self.len) };
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn at<T>(&self, off: usize) -> Option<*mut T> {
        let size = std::mem::size_of::<T>();
        let base = self.ptr.load(Ordering::Acquire);
        (!base.is_null() && off.is_multiple_of(size) && off.checked_add(size)? <= self.len)
            // SAFETY: the offset is in bounds (checked above), so the pointer stays inside
            // the mapping.
            .then(|| unsafe { base.add(off) }.cast::<T>())
    }

    /// Reads a register; all ones (what a removed device answers) when out of bounds.
    pub fn read32(&self, off: usize) -> u32 {
        match self.at::<u32>(off) {
            // SAFETY: aligned and in bounds; device memory is read with one volatile load.
            Some(p) => unsafe { p.read_volatile() },
            None => u32::MAX,
        }
    }

    pub fn read64(&self, off: usize) -> u64 {
        match self.at::<u64>(off) {
            // SAFETY: aligned and in bounds.
            Some(p) => unsafe { p.read_volatile() },
            None => u64::MAX,
        }
    }

    /// Writes a register; writes out of bounds are dropped (and are a driver bug: logged).
    pub fn write32(&self, off: usize, v: u32) {
        match self.at::<u32>(off) {
            // SAFETY: aligned and in bounds; one volatile store.
            Some(p) => unsafe { p.write_volatile(v) },
            None if self.ptr.load(Ordering::Relaxed).is_null() => {}
            None => tracing::error!(off, "register write outside the BAR dropped"),
        }
    }

    pub fn write64(&self, off: usize, v: u64) {
        // Two halves, low first: what the NVMe specification allows for 64-bit registers
        // and what works on hosts without 64-bit MMIO.
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: nothing else can be accessing the mapping.
        unsafe { self.revoke() };
    }
}
