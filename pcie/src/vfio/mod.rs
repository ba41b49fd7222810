//! vfio: a PCI function given to this process by the kernel's vfio-pci driver, behind safe
//! types. A [`Container`] is an IOMMU address space (type 1) into which memory is mapped for
//! the device's DMA; a [`Device`] is the function itself: its BARs ([`Bar`]), config space,
//! MSI-X vectors routed to eventfds, and the kernel's request to give it back (hot removal).
//! The ioctls are in [`sys`]; register access in [`mmio`]. [`sysfs`] checks a function
//! before any of this is opened.

pub mod mmio;
mod sys;
pub mod sysfs;

pub use mmio::Bar;
pub use sysfs::{Bdf, Sysfs};

use parking_lot::Mutex;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("'{0}' is not a PCI address (use dddd:bb:dd.f, e.g. 0000:01:00.0)")]
    BadAddress(String),
    #[error("no PCI device {0}")]
    NoDevice(String),
    #[error("{0} is not an NVMe controller (class {1:06x})")]
    NotNvme(String, u32),
    #[error("{0} is bound to {1}, not vfio-pci: run scripts/setup.sh --bind {0}")]
    NotBound(String, String),
    #[error("{0} has no IOMMU group: boot with the IOMMU on (intel_iommu=on / amd_iommu=on)")]
    NoIommuGroup(String),
    #[error("{0} shares IOMMU group {1} with {2:?}: vfio would give this process all of them")]
    SharedGroup(String, u32, Vec<String>),
    #[error("IOMMU group {0} is not viable (a device in it is bound to a host driver)")]
    NotViable(u32),
    #[error("vfio: {0}")]
    Unsupported(String),
    #[error("sysfs: {0}")]
    Sysfs(String),
    #[error("{what}: {err}")]
    Os { what: String, err: std::io::Error },
}

fn os(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VfioError {
    let what = what.into();
    move |err| VfioError::Os { what, err }
}

/// An IOMMU address space. Memory mapped into it stays pinned until unmapped or until the
/// container closes.
#[derive(Debug)]
pub struct Container {
    /// None once closed (every mapping is gone with it).
    fd: Mutex<Option<OwnedFd>>,
}

fn closed() -> VfioError {
    VfioError::Unsupported("the device was released".into())
}

impl Container {
    fn open() -> Result<Container, VfioError> {
        let fd =
            sys::open("/dev/vfio/vfio").map_err(os("open /dev/vfio/vfio (modprobe vfio-pci)"))?;
        let v = sys::api_version(fd.as_fd()).map_err(os("VFIO_GET_API_VERSION"))?;
        if v != sys::API_VERSION {
            return Err(VfioError::Unsupported(format!("API version {v}")));
        }
        Ok(Container {
            fd: Mutex::new(Some(fd)),
        })
    }

    fn with_fd<R>(
        &self,
        f: impl FnOnce(BorrowedFd<'_>) -> Result<R, VfioError>,
    ) -> Result<R, VfioError> {
        let g = self.fd.lock();
        f(g.as_ref().ok_or_else(closed)?.as_fd())
    }

    /// Maps `len` bytes at `vaddr` for the device at `iova`, readable and writable.
    pub fn map_dma(&self, vaddr: usize, iova: u64, len: usize) -> Result<(), VfioError> {
        self.with_fd(|fd| {
            sys::dma_map(fd, vaddr, iova, len).map_err(os(format!(
                "VFIO_IOMMU_MAP_DMA of {len} bytes at iova {iova:#x}"
            )))
        })
    }

    /// Unmaps a range; nothing to do once the container is closed (that unmapped it).
    pub fn unmap_dma(&self, iova: u64, len: usize) -> Result<(), VfioError> {
        let g = self.fd.lock();
        let Some(fd) = g.as_ref() else { return Ok(()) };
        sys::dma_unmap(fd.as_fd(), iova, len)
            .map_err(os(format!("VFIO_IOMMU_UNMAP_DMA at iova {iova:#x}")))
    }

    fn close(&self) {
        self.fd.lock().take();
    }
}

/// A PCI function opened through vfio. Dropping (or [`Device::release`]) gives the function
/// back to the kernel.
pub struct Device {
    /// The device and its group; None once released ([`Device::release`]).
    fds: Mutex<Option<(OwnedFd, OwnedFd)>>,
    config_off: u64,
    pub info_flags: u32,
    pub container: Container,
    pub bdf: Bdf,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("bdf", &self.bdf).finish()
    }
}

/// PCI command register bits.
const PCI_COMMAND: u64 = 0x04;
const CMD_MEMORY: u16 = 1 << 1;
const CMD_BUS_MASTER: u16 = 1 << 2;
const CMD_INTX_DISABLE: u16 = 1 << 10;

impl Device {
    /// Opens `bdf` (checked with `sysfs` first) in a container of its own.
    pub fn open(sysfs: &Sysfs, bdf: &Bdf) -> Result<Device, VfioError> {
        let group_no = sysfs.check_nvme_for_vfio(bdf)?;
        let container = Container::open()?;
        let group = sys::open(&format!("/dev/vfio/{group_no}"))
            .map_err(os(format!("open /dev/vfio/{group_no}")))?;
        let flags = sys::group_flags(group.as_fd()).map_err(os("VFIO_GROUP_GET_STATUS"))?;
        if flags & sys::GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::NotViable(group_no));
        }
        container.with_fd(|cfd| {
            sys::group_set_container(group.as_fd(), cfd).map_err(os("VFIO_GROUP_SET_CONTAINER"))?;
            let kind = if sys::check_extension(cfd, sys::TYPE1V2_IOMMU).unwrap_or(false) {
                sys::TYPE1V2_IOMMU
            } else if sys::check_extension(cfd, sys::TYPE1_IOMMU).unwrap_or(false) {
                sys::TYPE1_IOMMU
            } else {
                return Err(VfioError::Unsupported("no type 1 IOMMU".into()));
            };
            sys::set_iommu(cfd, kind).map_err(os("VFIO_SET_IOMMU"))
        })?;
        let fd = sys::group_device_fd(group.as_fd(), bdf.as_str())
            .map_err(os(format!("VFIO_GROUP_GET_DEVICE_FD {bdf}")))?;
        let info = sys::device_info(fd.as_fd()).map_err(os("VFIO_DEVICE_GET_INFO"))?;
        if info.flags & sys::DEVICE_FLAGS_PCI == 0 {
            return Err(VfioError::Unsupported(format!("{bdf} is not a PCI device")));
        }
        let cfg = sys::region_info(fd.as_fd(), sys::CONFIG_REGION_INDEX)
            .map_err(os("config space region"))?;
        Ok(Device {
            fds: Mutex::new(Some((fd, group))),
            config_off: cfg.offset,
            info_flags: info.flags,
            container,
            bdf: bdf.clone(),
        })
    }

    /// Runs `f` on the device's descriptor; an error once the device is released.
    fn with_fd<R>(
        &self,
        f: impl FnOnce(BorrowedFd<'_>) -> Result<R, VfioError>,
    ) -> Result<R, VfioError> {
        let g = self.fds.lock();
        let (fd, _) = g.as_ref().ok_or_else(closed)?;
        f(fd.as_fd())
    }

    /// Gives the device back to the kernel now: closes the device, its group and the
    /// container (which drops every DMA mapping). The BARs must be unmapped first (a
    /// mapping holds the device open).
    pub fn release(&self) {
        self.fds.lock().take();
        self.container.close();
    }

    pub fn read_config16(&self, off: u64) -> Result<u16, VfioError> {
        let mut b = [0u8; 2];
        self.with_fd(|fd| {
            sys::pread(fd, &mut b, self.config_off + off).map_err(os("config read"))
        })?;
        Ok(u16::from_le_bytes(b))
    }

    pub fn write_config16(&self, off: u64, v: u16) -> Result<(), VfioError> {
        self.with_fd(|fd| {
            sys::pwrite(fd, &v.to_le_bytes(), self.config_off + off)
                .map_err(os("config write"))
                .map(drop)
        })
    }

    /// Memory decoding and bus mastering on (the device may DMA), INTx off.
    pub fn enable_bus_master(&self) -> Result<(), VfioError> {
        let c = self.read_config16(PCI_COMMAND)?;
        self.write_config16(
            PCI_COMMAND,
            c | CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE,
        )
    }

    /// Bus mastering off: the device can no longer read or write memory. What makes it safe
    /// to hand I/O buffers back after a controller failed.
    pub fn disable_bus_master(&self) -> Result<(), VfioError> {
        let c = self.read_config16(PCI_COMMAND)?;
        self.write_config16(PCI_COMMAND, c & !CMD_BUS_MASTER)
    }

    /// Maps BAR `index` (at most `max_len` bytes of it: the registers and doorbells; the
    /// MSI-X table that may follow is not always mappable).
    pub fn map_bar(&self, index: u32, max_len: usize) -> Result<Bar, VfioError> {
        let r =
            self.with_fd(|fd| sys::region_info(fd, index).map_err(os(format!("BAR{index} info"))))?;
        if r.size == 0 {
            return Err(VfioError::Unsupported(format!(
                "BAR{index} is not implemented"
            )));
        }
        if r.flags & sys::REGION_INFO_FLAG_MMAP == 0 {
            return Err(VfioError::Unsupported(format!(
                "BAR{index} cannot be mapped"
            )));
        }
        let len = (r.size as usize).min(max_len);
        let p = self.with_fd(|fd| {
            sys::mmap_region(fd, r.offset, len).map_err(os(format!("mmap BAR{index}")))
        })?;
        Ok(Bar::new(p, len))
    }

    /// MSI-X vectors the function has.
    pub fn msix_vectors(&self) -> u32 {
        self.with_fd(|fd| {
            Ok(sys::irq_info(fd, sys::MSIX_IRQ_INDEX)
                .map(|i| i.count)
                .unwrap_or(0))
        })
        .unwrap_or(0)
    }

    /// Routes MSI-X vectors `0..fds.len()` to the given eventfds (None: vector unused).
    pub fn set_msix(&self, fds: &[Option<BorrowedFd<'_>>]) -> Result<(), VfioError> {
        use std::os::fd::AsRawFd;
        let raw: Vec<i32> = fds
            .iter()
            .map(|f| f.map_or(-1, |f| f.as_raw_fd()))
            .collect();
        self.with_fd(|fd| {
            sys::set_irq_eventfds(fd, sys::MSIX_IRQ_INDEX, 0, &raw)
                .map_err(os("VFIO_DEVICE_SET_IRQS (MSI-X)"))
        })
    }

    pub fn disable_msix(&self) {
        let _ = self.with_fd(|fd| Ok(sys::disable_irqs(fd, sys::MSIX_IRQ_INDEX)));
    }

    /// An eventfd the kernel signals when it wants the device back (hot removal). None if
    /// the kernel does not offer the request interrupt.
    pub fn removal_request_fd(&self) -> Option<OwnedFd> {
        use std::os::fd::AsRawFd;
        self.with_fd(|dev| {
            let info = sys::irq_info(dev, sys::REQ_IRQ_INDEX).map_err(os("REQ irq info"))?;
            if info.count == 0 {
                return Err(closed());
            }
            let fd = sys::eventfd().map_err(os("eventfd"))?;
            sys::set_irq_eventfds(dev, sys::REQ_IRQ_INDEX, 0, &[fd.as_raw_fd()])
                .map_err(os("REQ irq"))?;
            Ok(fd)
        })
        .ok()
    }

    /// Function-level reset, if the device offers one.
    pub fn reset(&self) -> Result<(), VfioError> {
        if self.info_flags & sys::DEVICE_FLAGS_RESET == 0 {
            return Err(VfioError::Unsupported("device has no reset".into()));
        }
        self.with_fd(|fd| sys::reset(fd).map_err(os("VFIO_DEVICE_RESET")))
    }
}

/// A non-blocking eventfd.
pub fn eventfd() -> Result<OwnedFd, VfioError> {
    sys::eventfd().map_err(os("eventfd"))
}

/// Clears an eventfd; returns how often it was signalled (0: not).
pub fn eventfd_drain(fd: BorrowedFd<'_>) -> u64 {
    sys::eventfd_drain(fd)
}

/// Waits up to `ms` for an eventfd to be signalled.
pub fn wait_readable(fd: BorrowedFd<'_>, ms: i32) -> bool {
    sys::wait_readable(fd, ms)
}
