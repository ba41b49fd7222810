//! Memory the device reads and writes, and the I/O virtual addresses (IOVAs) it knows it by.
//!
//! [`IovaMap`] gives each mapped range of this process an IOVA of its own, handed out
//! upwards from 4 GiB (clear of the MSI window below it, inside the 39 address bits the
//! smallest IOMMUs translate): the pools of I/O buffers are mapped when the controller is
//! attached, so an I/O's buffers go to the device as they are. [`QueueMemory`] is a region
//! the driver owns (queues, PRP lists), accessed only through volatile loads and stores
//! because the device writes it behind the compiler's back.

use crate::vfio::{Container, VfioError};
use strata_reactor::dma::DmaRegion;

const IOVA_BASE: u64 = 1 << 32;
const IOVA_ALIGN: u64 = 2 << 20;

/// One range of process memory mapped for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub vaddr: usize,
    pub len: usize,
    pub iova: u64,
}

impl Mapping {
    /// The IOVA of `vaddr..vaddr + len`, if the range is inside this mapping.
    #[inline]
    pub fn translate(&self, vaddr: usize, len: usize) -> Option<u64> {
        (vaddr >= self.vaddr && vaddr.checked_add(len)? <= self.vaddr + self.len)
            .then(|| self.iova + (vaddr - self.vaddr) as u64)
    }
}

/// The device's view of this process's memory.
#[derive(Debug, Default)]
pub struct IovaMap {
    next: u64,
    maps: Vec<Mapping>,
}

impl IovaMap {
    pub fn new() -> IovaMap {
        IovaMap {
            next: IOVA_BASE,
            maps: Vec::new(),
        }
    }

    /// The mappings, for a reactor's lock-free copy.
    pub fn mappings(&self) -> &[Mapping] {
        &self.maps
    }

    pub fn translate(&self, vaddr: usize, len: usize) -> Option<u64> {
        self.maps.iter().find_map(|m| m.translate(vaddr, len))
    }

    /// Maps `vaddr..vaddr + len` (page-aligned) unless it already is; returns its IOVA.
    pub fn map(&mut self, c: &Container, vaddr: usize, len: usize) -> Result<u64, VfioError> {
        if let Some(i) = self.translate(vaddr, len) {
            return Ok(i);
        }
        let iova = self.next;
        c.map_dma(vaddr, iova, len)?;
        self.next = (iova + len as u64).div_ceil(IOVA_ALIGN) * IOVA_ALIGN;
        self.maps.push(Mapping { vaddr, len, iova });
        Ok(iova)
    }

    /// Unmaps the range mapped at `iova` (a region being freed).
    pub fn unmap(&mut self, c: &Container, iova: u64) {
        if let Some(pos) = self.maps.iter().position(|m| m.iova == iova) {
            let m = self.maps.remove(pos);
            if let Err(e) = c.unmap_dma(m.iova, m.len) {
                tracing::warn!(error = %e, "DMA unmap failed");
            }
        }
    }

    /// Maps every buffer pool of the process (see `strata_reactor::dma::pool_regions`).
    pub fn map_pools(&mut self, c: &Container) -> Result<(), VfioError> {
        // The global pools exist once something allocated from them; make sure they do.
        let _ = strata_reactor::dma::pools();
        for (vaddr, len) in strata_reactor::dma::pool_regions() {
            self.map(c, vaddr, len)?;
        }
        Ok(())
    }
}

/// Driver-owned memory the device accesses (submission and completion queues, PRP lists,
/// Identify data), mapped at `iova`.
#[derive(Debug)]
pub struct QueueMemory {
    region: DmaRegion,
    pub iova: u64,
}

impl QueueMemory {
    /// Allocates `len` bytes (zeroed) and maps them.
    pub fn new(map: &mut IovaMap, c: &Container, len: usize) -> Result<QueueMemory, VfioError> {
        let region = DmaRegion::new(len).map_err(|e| VfioError::Unsupported(e.to_string()))?;
        let iova = map.map(c, region.as_ptr() as usize, region.len())?;
        Ok(QueueMemory { region, iova })
    }

    /// Unmaps the memory (the device must be done with it: its queue deleted or the
    /// controller disabled) and frees it.
    pub fn release(self, map: &mut IovaMap, c: &Container) {
        map.unmap(c, self.iova);
    }

    pub fn len(&self) -> usize {
        self.region.len()
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty()
    }

    fn ptr<T>(&self, off: usize) -> Option<*mut T> {
        let size = std::mem::size_of::<T>();
        (off.checked_add(size)? <= self.region.len()
            && (self.region.as_ptr() as usize + off).is_multiple_of(std::mem::align_of::<T>()))
        // SAFETY: in bounds and aligned (checked above).
        .then(|| unsafe { self.region.as_ptr().add(off) }.cast::<T>())
    }

    /// Stores a plain-data value (an SQE, a PRP entry) at `off`. False if out of bounds.
    #[inline]
    pub fn store<T: Copy + zerocopy::IntoBytes + zerocopy::Immutable>(
        &self,
        off: usize,
        v: T,
    ) -> bool {
        match self.ptr::<T>(off) {
            Some(p) => {
                // SAFETY: in bounds and aligned; a volatile store so it is not elided or
                // reordered with the doorbell write by the compiler.
                unsafe { p.write_volatile(v) };
                true
            }
            None => false,
        }
    }

    /// Loads a plain-data value (a CQE, Identify data) the device wrote at `off`.
    #[inline]
    pub fn load<T: Copy + zerocopy::FromBytes>(&self, off: usize) -> Option<T> {
        // SAFETY: in bounds and aligned; `T: FromBytes` is valid for any bytes the device
        // may have written.
        self.ptr::<T>(off).map(|p| unsafe { p.read_volatile() })
    }

    /// A 16-bit load (a CQE's status and phase, read before the rest of the entry).
    #[inline]
    pub fn load_u16(&self, off: usize) -> u16 {
        self.load::<u16>(off).unwrap_or(0)
    }

    /// Copies `dst.len()` bytes at `off` out (Identify data).
    pub fn read_bytes(&self, off: usize, dst: &mut [u8]) -> bool {
        self.region.read_at(off, dst)
    }

    pub fn write_bytes(&self, off: usize, src: &[u8]) -> bool {
        self.region.write_at(off, src)
    }

    pub fn zero(&self) {
        self.region.zero_at(0, self.region.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_stays_inside_a_mapping() {
        let m = Mapping {
            vaddr: 0x10_0000,
            len: 0x4000,
            iova: 1 << 32,
        };
        assert_eq!(m.translate(0x10_0000, 0x4000), Some(1 << 32));
        assert_eq!(m.translate(0x10_1000, 0x1000), Some((1 << 32) + 0x1000));
        assert_eq!(m.translate(0x10_3000, 0x1001), None);
        assert_eq!(m.translate(0xf_f000, 0x1000), None);
        assert_eq!(m.translate(usize::MAX, 2), None);
    }
}
