//! Submission and completion queue entries, opcodes and the command fields strata reads.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A 64-byte submission queue entry. Fabrics commands share the layout (`fctype` is the
/// first byte of `nsid`).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq,
)]
pub struct Sqe {
    pub opcode: u8,
    /// Bits 7:6 PSDT (10b: SGLs), bits 1:0 FUSE.
    pub flags: u8,
    pub cid: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    /// Data pointer: for fabrics an SGL descriptor (address, length, type).
    pub sgl: SglDescriptor,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}
const _: () = assert!(std::mem::size_of::<Sqe>() == 64);

/// An SGL descriptor (16 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq,
)]
pub struct SglDescriptor {
    pub address: u64,
    pub length: u32,
    pub reserved: [u8; 3],
    /// Bits 7:4 descriptor type, 3:0 subtype.
    pub sgl_id: u8,
}
const _: () = assert!(std::mem::size_of::<SglDescriptor>() == 16);

/// Data block with offset subtype: the data is in the command capsule.
pub const SGL_IN_CAPSULE: u8 = 0x01;
/// Transport SGL data block: the data moves in H2CData/C2HData PDUs.
pub const SGL_TRANSPORT: u8 = 0x5a;

/// A 16-byte completion queue entry.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq,
)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    /// Bit 0 phase (unused on fabrics), bits 15:1 the status field.
    pub status: u16,
}
const _: () = assert!(std::mem::size_of::<Cqe>() == 16);

/// Data direction encoded in an opcode's low two bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    None,
    HostToController,
    ControllerToHost,
    Bidirectional,
}

pub fn direction(opcode: u8) -> Direction {
    match opcode & 3 {
        0 => Direction::None,
        1 => Direction::HostToController,
        2 => Direction::ControllerToHost,
        _ => Direction::Bidirectional,
    }
}

/// Admin command opcodes.
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0a;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0c;
    pub const KEEP_ALIVE: u8 = 0x18;
    pub const FABRICS: u8 = 0x7f;
    /// strata: split the mirror exported as namespace NSID with a point-in-time image (a
    /// production host's freeze/thaw hook). No data; answers once the split is durable, with
    /// DW0 = regions the image still owes the secondary (saturated to u32).
    pub const VENDOR_MIRROR_SPLIT: u8 = 0xc0;
    /// strata: start a backup of the image of the mirror behind namespace NSID (the image's
    /// own namespace or the mirror's). Host to controller: a JSON object in the capsule,
    /// `{"repository": ..., "type"?: "full"|"incremental", "mode"?: "secondary"|"memory",
    /// "chunk_kb"?: n, "id"?: "..."}`.
    pub const VENDOR_MIRROR_BACKUP: u8 = 0xc1;
    /// strata: the image and backup state of the mirror behind namespace NSID, as JSON
    /// (`bdev_mirror_get`'s `image` object), zero-padded to the transfer length.
    /// Controller to host.
    pub const VENDOR_MIRROR_STATUS: u8 = 0xc2;
}

/// NVM (I/O) command opcodes, and strata's vendor-specific ones.
pub mod io {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const COMPARE: u8 = 0x05;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    /// strata: XOR the payload into the stored blocks (`new = old ^ data`). Host to
    /// controller; SLBA in CDW10/11, NLB (0-based) in CDW12 bits 15:0, like Write.
    pub const VENDOR_XOR_WRITE: u8 = 0x81;
    /// strata: return a digest per chunk of CDW13 blocks (0 means 1) over SLBA/NLB; CDW14
    /// selects the digest ([`CHECKSUM_CRC32C`]: u32 LE, [`CHECKSUM_SHA256`]: 32 bytes).
    /// Controller to host; the data length is digest size × ceil(NLB / chunk).
    pub const VENDOR_CHECKSUM: u8 = 0x82;
    /// strata: multiply the payload by the GF(2^8) coefficient in CDW13 bits 7:0 (RAID-6
    /// polynomial 0x11d; 0 is refused with Invalid Field) and XOR the product into the
    /// stored blocks (`new = old ^ coef·data`): a Q parity volume's delta update. Host to
    /// controller (opcode bits 1:0 = 01b), SLBA/NLB like Write.
    pub const VENDOR_GF_XOR_WRITE: u8 = 0x85;
    /// CDW14 of [`VENDOR_CHECKSUM`]: CRC32C (the default, 0).
    pub const CHECKSUM_CRC32C: u32 = 0;
    /// CDW14 of [`VENDOR_CHECKSUM`]: SHA-256.
    pub const CHECKSUM_SHA256: u32 = 1;
}

/// Identify CNS values.
pub mod cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    pub const NS_DESCRIPTOR_LIST: u8 = 0x03;
    pub const CS_NAMESPACE: u8 = 0x05;
    pub const CS_CONTROLLER: u8 = 0x06;
    pub const CS_ACTIVE_NS_LIST: u8 = 0x07;
    pub const CS_INDEP_NAMESPACE: u8 = 0x08;
}

/// Feature identifiers.
pub mod feature {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    pub const TIMESTAMP: u8 = 0x0e;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
    pub const HOST_BEHAVIOR: u8 = 0x16;
}

impl Sqe {
    /// Starting LBA of a read/write-style command.
    pub fn slba(&self) -> u64 {
        self.cdw10 as u64 | ((self.cdw11 as u64) << 32)
    }
    /// Number of logical blocks (NLB is 0-based in the command).
    pub fn nlb(&self) -> u64 {
        (self.cdw12 & 0xffff) as u64 + 1
    }
    /// Fabrics command type (fabrics commands only).
    pub fn fctype(&self) -> u8 {
        (self.nsid & 0xff) as u8
    }
}
