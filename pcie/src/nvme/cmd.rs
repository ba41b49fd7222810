//! Submission queue entries as a PCIe controller reads them (data pointer: PRP1/PRP2), the
//! commands the driver sends, and how a completion's status maps to a bdev status.

use strata_bdev::IoStatus;
use strata_nvmf::spec::cmd::{admin, cns, feature, io as nvm};
use strata_nvmf::spec::Status;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A 64-byte submission queue entry with a PRP data pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Command {
    pub opcode: u8,
    pub flags: u8,
    pub cid: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    pub prp1: u64,
    pub prp2: u64,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}
const _: () = assert!(std::mem::size_of::<Command>() == 64);

/// SGL descriptors (16 bytes): the layout fabrics commands use too.
pub use strata_nvmf::spec::cmd::SglDescriptor;

pub const SGL_DATA_BLOCK: u8 = 0x00;
pub const SGL_LAST_SEGMENT: u8 = 0x30;
/// Command flags PSDT = 01b: the data pointer is an SGL.
const PSDT_SGL: u8 = 0x40;

/// An SGL data block descriptor: `length` bytes at `address`.
pub fn sgl_data_block(address: u64, length: u32) -> SglDescriptor {
    SglDescriptor {
        address,
        length,
        reserved: [0; 3],
        sgl_id: SGL_DATA_BLOCK,
    }
}

/// One Dataset Management range (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DsmRange {
    pub attributes: u32,
    pub blocks: u32,
    pub slba: u64,
}

impl Command {
    /// Makes the data pointer the SGL descriptor `d` (PSDT = 01b).
    pub fn set_sgl(&mut self, d: SglDescriptor) {
        self.flags = (self.flags & !0xc0) | PSDT_SGL;
        self.prp1 = d.address;
        self.prp2 = d.length as u64 | ((d.sgl_id as u64) << 56);
    }

    pub fn identify(cns_value: u8, nsid: u32, prp1: u64) -> Command {
        Command {
            opcode: admin::IDENTIFY,
            nsid,
            prp1,
            cdw10: cns_value as u32,
            ..Default::default()
        }
    }

    pub fn identify_controller(prp1: u64) -> Command {
        Command::identify(cns::CONTROLLER, 0, prp1)
    }

    pub fn active_namespaces(prp1: u64) -> Command {
        Command::identify(cns::ACTIVE_NS_LIST, 0, prp1)
    }

    /// Asks for `n` I/O submission and completion queues.
    pub fn set_queue_count(n: u16) -> Command {
        let v = (n.max(1) - 1) as u32;
        Command {
            opcode: admin::SET_FEATURES,
            cdw10: feature::NUMBER_OF_QUEUES as u32,
            cdw11: v | (v << 16),
            ..Default::default()
        }
    }

    /// A physically contiguous I/O completion queue of `entries`, raising MSI-X `vector`
    /// when `interrupts`.
    pub fn create_cq(qid: u16, entries: u16, prp1: u64, vector: u16, interrupts: bool) -> Command {
        Command {
            opcode: admin::CREATE_IO_CQ,
            prp1,
            cdw10: ((entries as u32 - 1) << 16) | qid as u32,
            cdw11: ((vector as u32) << 16) | ((interrupts as u32) << 1) | 1,
            ..Default::default()
        }
    }

    pub fn create_sq(qid: u16, entries: u16, prp1: u64, cqid: u16) -> Command {
        Command {
            opcode: admin::CREATE_IO_SQ,
            prp1,
            cdw10: ((entries as u32 - 1) << 16) | qid as u32,
            cdw11: ((cqid as u32) << 16) | 1,
            ..Default::default()
        }
    }

    pub fn delete_sq(qid: u16) -> Command {
        Command {
            opcode: admin::DELETE_IO_SQ,
            cdw10: qid as u32,
            ..Default::default()
        }
    }

    pub fn delete_cq(qid: u16) -> Command {
        Command {
            opcode: admin::DELETE_IO_CQ,
            cdw10: qid as u32,
            ..Default::default()
        }
    }

    pub fn abort(sqid: u16, cid: u16) -> Command {
        Command {
            opcode: admin::ABORT,
            cdw10: ((cid as u32) << 16) | sqid as u32,
            ..Default::default()
        }
    }

    /// Read or write of `blocks` (1..=65536) at `slba`.
    pub fn rw(write: bool, nsid: u32, slba: u64, blocks: u32) -> Command {
        Command {
            opcode: if write { nvm::WRITE } else { nvm::READ },
            nsid,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: blocks - 1,
            ..Default::default()
        }
    }

    pub fn write_zeroes(nsid: u32, slba: u64, blocks: u32) -> Command {
        Command {
            opcode: nvm::WRITE_ZEROES,
            ..Command::rw(false, nsid, slba, blocks)
        }
    }

    /// Deallocate `ranges` (1..=256) ranges listed at `prp1`.
    pub fn deallocate(nsid: u32, ranges: u32, prp1: u64) -> Command {
        Command {
            opcode: nvm::DATASET_MANAGEMENT,
            nsid,
            prp1,
            cdw10: ranges - 1,
            // AD: deallocate.
            cdw11: 1 << 2,
            ..Default::default()
        }
    }

    pub fn flush(nsid: u32) -> Command {
        Command {
            opcode: nvm::FLUSH,
            nsid,
            ..Default::default()
        }
    }
}

/// What a completion's status means to the bdev layer.
pub fn io_status(s: Status) -> IoStatus {
    match (s.sct, s.sc) {
        (0, 0) => IoStatus::Success,
        // Abort requested, aborted by SQ deletion.
        (0, 0x07) | (0, 0x08) => IoStatus::Aborted,
        // LBA out of range.
        (0, 0x80) => IoStatus::OutOfRange,
        (0, 0x01) | (0, 0x02) => IoStatus::InvalidArgument,
        _ => IoStatus::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_their_fields() {
        let c = Command::rw(true, 1, 0x1_2345_6789, 8);
        assert_eq!(
            (c.opcode, c.nsid, c.cdw10, c.cdw11, c.cdw12),
            (0x01, 1, 0x2345_6789, 1, 7)
        );
        let c = Command::create_cq(3, 256, 0x1000, 3, true);
        assert_eq!((c.cdw10, c.cdw11), (0x00ff_0003, 0x0003_0003));
        let c = Command::create_sq(3, 256, 0x2000, 3);
        assert_eq!((c.cdw10, c.cdw11), (0x00ff_0003, 0x0003_0001));
        assert_eq!(Command::set_queue_count(4).cdw11, 0x0003_0003);
        assert_eq!(Command::abort(2, 17).cdw10, (17 << 16) | 2);
        let mut c = Command::rw(false, 1, 0, 8);
        c.set_sgl(SglDescriptor {
            address: 0x5000,
            length: 48,
            reserved: [0; 3],
            sgl_id: SGL_LAST_SEGMENT,
        });
        assert_eq!((c.flags, c.prp1, c.prp2), (0x40, 0x5000, 48 | (0x30 << 56)));
        let c = Command::deallocate(1, 3, 0x3000);
        assert_eq!((c.cdw10, c.cdw11), (2, 4));
        assert_eq!(std::mem::size_of::<DsmRange>(), 16);
        assert_eq!(io_status(Status::generic(0x80)), IoStatus::OutOfRange);
        assert_eq!(io_status(Status::media(0x81)), IoStatus::Failed);
    }
}
