//! Fabrics commands: Connect (and its data), Property Get/Set, and controller properties.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const FCTYPE_PROPERTY_SET: u8 = 0x00;
pub const FCTYPE_CONNECT: u8 = 0x01;
pub const FCTYPE_PROPERTY_GET: u8 = 0x04;
pub const FCTYPE_AUTH_SEND: u8 = 0x05;
pub const FCTYPE_AUTH_RECV: u8 = 0x06;
pub const FCTYPE_DISCONNECT: u8 = 0x08;

pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Connect command data (1024 bytes, in the capsule).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ConnectData {
    pub hostid: [u8; 16],
    pub cntlid: u16,
    pub reserved: [u8; 238],
    pub subnqn: [u8; 256],
    pub hostnqn: [u8; 256],
    pub reserved2: [u8; 256],
}
const _: () = assert!(std::mem::size_of::<ConnectData>() == 1024);

/// Connect attribute (CATTR) bit: the host does not need SQ head pointer updates (TP 8005).
pub const CATTR_SQ_FLOW_CONTROL_DISABLE: u8 = 0x04;

/// Connect fields of the command (CDW10.. in SQE terms).
#[derive(Debug, Clone, Copy)]
pub struct ConnectCmd {
    pub recfmt: u16,
    pub qid: u16,
    /// Submission queue size, 0-based.
    pub sqsize: u16,
    pub cattr: u8,
    /// Keep-alive timeout in milliseconds (admin queue only).
    pub kato: u32,
}

impl ConnectCmd {
    pub fn from_sqe(sqe: &super::Sqe) -> Self {
        ConnectCmd {
            recfmt: (sqe.cdw10 & 0xffff) as u16,
            qid: (sqe.cdw10 >> 16) as u16,
            sqsize: (sqe.cdw11 & 0xffff) as u16,
            cattr: ((sqe.cdw11 >> 16) & 0xff) as u8,
            kato: sqe.cdw12,
        }
    }
}

/// Property Get/Set fields: size flag (0: 4 bytes, 1: 8 bytes), offset, value.
#[derive(Debug, Clone, Copy)]
pub struct PropertyCmd {
    pub eight_bytes: bool,
    pub offset: u32,
    pub value: u64,
}

impl PropertyCmd {
    pub fn from_sqe(sqe: &super::Sqe) -> Self {
        PropertyCmd {
            eight_bytes: sqe.cdw10 & 7 == 1,
            offset: sqe.cdw11,
            value: sqe.cdw12 as u64 | ((sqe.cdw13 as u64) << 32),
        }
    }
}

/// Controller property offsets.
pub mod prop {
    pub const CAP: u32 = 0x00;
    pub const VS: u32 = 0x08;
    pub const CC: u32 = 0x14;
    pub const CSTS: u32 = 0x1c;
    pub const NSSR: u32 = 0x20;
}

/// NVMe version 1.3.
pub const VERSION_1_3: u32 = 0x0001_0300;

pub const CC_EN: u32 = 1;
pub const CC_SHN_SHIFT: u32 = 14;
pub const CSTS_RDY: u32 = 1;
pub const CSTS_CFS: u32 = 1 << 1;
pub const CSTS_SHST_COMPLETE: u32 = 2 << 2;
