//! The vfio uAPI (`include/uapi/linux/vfio.h`): ioctl numbers and argument structures, and
//! the only calls into the kernel. Each wrapper takes owned or borrowed safe values and
//! returns `io::Result`, so the rest of the driver has no `unsafe` for vfio.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const VFIO_TYPE: u64 = b';' as u64;
const VFIO_BASE: u64 = 100;
/// `_IO(VFIO_TYPE, VFIO_BASE + n)`: vfio ioctls carry their size in `argsz`, not the number.
const fn vfio_io(n: u64) -> u64 {
    (VFIO_TYPE << 8) | (VFIO_BASE + n)
}
const GET_API_VERSION: u64 = vfio_io(0);
const CHECK_EXTENSION: u64 = vfio_io(1);
const SET_IOMMU: u64 = vfio_io(2);
const GROUP_GET_STATUS: u64 = vfio_io(3);
const GROUP_SET_CONTAINER: u64 = vfio_io(4);
const GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
const DEVICE_GET_INFO: u64 = vfio_io(7);
const DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
const DEVICE_GET_IRQ_INFO: u64 = vfio_io(9);
const DEVICE_SET_IRQS: u64 = vfio_io(10);
const DEVICE_RESET: u64 = vfio_io(11);
const IOMMU_MAP_DMA: u64 = vfio_io(13);
const IOMMU_UNMAP_DMA: u64 = vfio_io(14);

pub const API_VERSION: i32 = 0;
pub const TYPE1_IOMMU: u32 = 1;
pub const TYPE1V2_IOMMU: u32 = 3;
pub const GROUP_FLAGS_VIABLE: u32 = 1;
pub const DEVICE_FLAGS_RESET: u32 = 1;
pub const DEVICE_FLAGS_PCI: u32 = 2;
pub const REGION_INFO_FLAG_MMAP: u32 = 4;
pub const CONFIG_REGION_INDEX: u32 = 7;
pub const MSIX_IRQ_INDEX: u32 = 2;
pub const REQ_IRQ_INDEX: u32 = 4;
const IRQ_SET_DATA_NONE: u32 = 1;
const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
const DMA_MAP_FLAG_READ: u32 = 1;
const DMA_MAP_FLAG_WRITE: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct DeviceInfo {
    argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct RegionInfo {
    argsz: u32,
    pub flags: u32,
    index: u32,
    cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct IrqInfo {
    argsz: u32,
    pub flags: u32,
    index: u32,
    pub count: u32,
}

#[repr(C)]
struct IrqSetHeader {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

fn argsz<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An ioctl whose argument is an integer.
fn ioctl_val(fd: BorrowedFd<'_>, req: u64, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the request takes its argument by value; no memory is passed.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) })
}

/// An ioctl whose argument points at `T`, which the kernel reads and may fill in.
fn ioctl_ptr<T>(fd: BorrowedFd<'_>, req: u64, arg: &mut T) -> io::Result<libc::c_int> {
    // SAFETY: `arg` is a valid, exclusively borrowed `T` of the layout the request expects:
    // a vfio structure whose leading `argsz` says how many bytes the kernel may touch, or
    // (GROUP_SET_CONTAINER) a plain int.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) })
}

pub fn open(path: &str) -> io::Result<OwnedFd> {
    let c =
        std::ffi::CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string; the result is checked before it is owned.
    let fd = check(unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn api_version(container: BorrowedFd<'_>) -> io::Result<i32> {
    ioctl_val(container, GET_API_VERSION, 0)
}

pub fn check_extension(container: BorrowedFd<'_>, ext: u32) -> io::Result<bool> {
    Ok(ioctl_val(container, CHECK_EXTENSION, ext as _)? > 0)
}

pub fn set_iommu(container: BorrowedFd<'_>, kind: u32) -> io::Result<()> {
    ioctl_val(container, SET_IOMMU, kind as _).map(drop)
}

pub fn group_flags(group: BorrowedFd<'_>) -> io::Result<u32> {
    let mut s = GroupStatus {
        argsz: argsz::<GroupStatus>(),
        flags: 0,
    };
    ioctl_ptr(group, GROUP_GET_STATUS, &mut s)?;
    Ok(s.flags)
}

pub fn group_set_container(group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> io::Result<()> {
    let mut fd: libc::c_int = container.as_raw_fd();
    ioctl_ptr(group, GROUP_SET_CONTAINER, &mut fd).map(drop)
}

pub fn group_device_fd(group: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let c =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the kernel reads the NUL-terminated device name; the result is checked.
    let fd =
        check(unsafe { libc::ioctl(group.as_raw_fd(), GROUP_GET_DEVICE_FD as _, c.as_ptr()) })?;
    // SAFETY: a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn device_info(dev: BorrowedFd<'_>) -> io::Result<DeviceInfo> {
    let mut i = DeviceInfo {
        argsz: argsz::<DeviceInfo>(),
        ..Default::default()
    };
    ioctl_ptr(dev, DEVICE_GET_INFO, &mut i)?;
    Ok(i)
}

pub fn region_info(dev: BorrowedFd<'_>, index: u32) -> io::Result<RegionInfo> {
    let mut r = RegionInfo {
        argsz: argsz::<RegionInfo>(),
        index,
        ..Default::default()
    };
    ioctl_ptr(dev, DEVICE_GET_REGION_INFO, &mut r)?;
    Ok(r)
}

pub fn irq_info(dev: BorrowedFd<'_>, index: u32) -> io::Result<IrqInfo> {
    let mut r = IrqInfo {
        argsz: argsz::<IrqInfo>(),
        index,
        ..Default::default()
    };
    ioctl_ptr(dev, DEVICE_GET_IRQ_INFO, &mut r)?;
    Ok(r)
}

/// Routes interrupts `start..start + fds.len()` of `index` to eventfds (-1: none).
pub fn set_irq_eventfds(
    dev: BorrowedFd<'_>,
    index: u32,
    start: u32,
    fds: &[i32],
) -> io::Result<()> {
    #[repr(C)]
    struct Set {
        h: IrqSetHeader,
        fds: [i32; 256],
    }
    if fds.len() > 256 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut s = Set {
        h: IrqSetHeader {
            argsz: (std::mem::size_of::<IrqSetHeader>() + 4 * fds.len()) as u32,
            flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            index,
            start,
            count: fds.len() as u32,
        },
        fds: [-1; 256],
    };
    s.fds[..fds.len()].copy_from_slice(fds);
    ioctl_ptr(dev, DEVICE_SET_IRQS, &mut s).map(drop)
}

/// Turns every interrupt of `index` off.
pub fn disable_irqs(dev: BorrowedFd<'_>, index: u32) -> io::Result<()> {
    let mut h = IrqSetHeader {
        argsz: argsz::<IrqSetHeader>(),
        flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
        index,
        start: 0,
        count: 0,
    };
    ioctl_ptr(dev, DEVICE_SET_IRQS, &mut h).map(drop)
}

pub fn reset(dev: BorrowedFd<'_>) -> io::Result<()> {
    ioctl_val(dev, DEVICE_RESET, 0).map(drop)
}

/// Maps `len` bytes of this process's memory at `vaddr` for the device at `iova`. The kernel
/// pins the pages; they must stay mapped until [`dma_unmap`].
pub fn dma_map(container: BorrowedFd<'_>, vaddr: usize, iova: u64, len: usize) -> io::Result<()> {
    let mut m = DmaMap {
        argsz: argsz::<DmaMap>(),
        flags: DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
        vaddr: vaddr as u64,
        iova,
        size: len as u64,
    };
    ioctl_ptr(container, IOMMU_MAP_DMA, &mut m).map(drop)
}

pub fn dma_unmap(container: BorrowedFd<'_>, iova: u64, len: usize) -> io::Result<()> {
    let mut m = DmaUnmap {
        argsz: argsz::<DmaUnmap>(),
        flags: 0,
        iova,
        size: len as u64,
    };
    ioctl_ptr(container, IOMMU_UNMAP_DMA, &mut m).map(drop)
}

/// Reads `buf.len()` bytes of a device region (config space) at `off`.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, exclusively borrowed buffer of `buf.len()` bytes.
    let n = unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            off as i64,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], off: u64) -> io::Result<usize> {
    // SAFETY: `buf` is a valid buffer of `buf.len()` bytes the kernel only reads.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), off as i64) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A non-blocking eventfd (interrupts and removal requests are delivered through these).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before it is owned.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads (and so clears) an eventfd's counter; 0 if it was not signalled.
pub fn eventfd_drain(fd: BorrowedFd<'_>) -> u64 {
    let mut v = [0u8; 8];
    match pread_plain(fd, &mut v) {
        Some(8) => u64::from_ne_bytes(v),
        _ => 0,
    }
}

fn pread_plain(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `buf` is a valid, exclusively borrowed buffer.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then_some(n as usize)
}

/// Waits up to `timeout_ms` for `fd` to become readable.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    r > 0 && p.revents & libc::POLLIN != 0
}

/// A shared mapping of `len` bytes of a device region (a BAR) at file offset `off`.
pub fn mmap_region(fd: BorrowedFd<'_>, off: u64, len: usize) -> io::Result<std::ptr::NonNull<u8>> {
    // SAFETY: no address hint; the result is checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            off as i64,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    std::ptr::NonNull::new(p.cast()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))
}

/// Undoes [`mmap_region`].
///
/// # Safety
/// `ptr`/`len` must be exactly a live mapping from [`mmap_region`] that nothing uses any more.
pub unsafe fn munmap(ptr: std::ptr::NonNull<u8>, len: usize) {
    // SAFETY: per the function's contract.
    unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_and_layouts_match_the_kernel_header() {
        // From include/uapi/linux/vfio.h: _IO(';', 100) and friends.
        assert_eq!(GET_API_VERSION, 0x3b64);
        assert_eq!(SET_IOMMU, 0x3b66);
        assert_eq!(GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(std::mem::size_of::<RegionInfo>(), 32);
        assert_eq!(std::mem::size_of::<IrqSetHeader>(), 20);
        assert_eq!(std::mem::size_of::<DmaMap>(), 32);
        assert_eq!(std::mem::size_of::<DmaUnmap>(), 24);
    }
}
