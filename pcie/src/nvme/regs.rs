//! Controller registers (NVMe base specification, section 3.1) and their fields.

pub const CAP: usize = 0x00;
pub const VS: usize = 0x08;
pub const CC: usize = 0x14;
pub const CSTS: usize = 0x1c;
pub const AQA: usize = 0x24;
pub const ASQ: usize = 0x28;
pub const ACQ: usize = 0x30;
/// First doorbell; each queue has an SQ tail and a CQ head doorbell, `4 << CAP.DSTRD` apart.
pub const DOORBELLS: usize = 0x1000;

pub const CC_EN: u32 = 1;
/// I/O submission queue entry size 2^6 = 64, completion 2^4 = 16.
pub const CC_IOSQES_IOCQES: u32 = (6 << 16) | (4 << 20);
pub const CC_SHN_NORMAL: u32 = 1 << 14;
pub const CSTS_RDY: u32 = 1;
pub const CSTS_CFS: u32 = 1 << 1;
pub const CSTS_SHST_MASK: u32 = 3 << 2;
pub const CSTS_SHST_COMPLETE: u32 = 2 << 2;

/// The fields of CAP the driver uses.
#[derive(Debug, Clone, Copy)]
pub struct Cap(pub u64);

impl Cap {
    /// Largest queue the controller supports, in entries.
    pub fn max_queue_entries(self) -> u32 {
        (self.0 & 0xffff) as u32 + 1
    }
    /// How long CSTS.RDY may take to follow CC.EN (CAP.TO, 500 ms units).
    pub fn ready_timeout_ms(self) -> u64 {
        ((self.0 >> 24) & 0xff).max(1) * 500
    }
    /// Bytes between doorbells.
    pub fn doorbell_stride(self) -> usize {
        4 << ((self.0 >> 32) & 0xf)
    }
    /// Whether the NVM command set is supported (CAP.CSS bit 0).
    pub fn nvm_command_set(self) -> bool {
        (self.0 >> 37) & 1 != 0
    }
    /// Smallest memory page size the controller takes.
    pub fn min_page_size(self) -> usize {
        4096 << ((self.0 >> 48) & 0xf)
    }
}

/// Offset of queue `qid`'s SQ tail doorbell (CQ head: `+ stride`).
pub fn sq_doorbell(qid: u16, stride: usize) -> usize {
    DOORBELLS + 2 * qid as usize * stride
}

pub fn cq_doorbell(qid: u16, stride: usize) -> usize {
    DOORBELLS + (2 * qid as usize + 1) * stride
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields_and_doorbells() {
        // QEMU's emulated controller: MQES 2047, CQR, TO 15 (7.5 s), DSTRD 0, CSS NVM.
        let cap = Cap(0x0000_0020_0f01_07ff);
        assert_eq!(cap.max_queue_entries(), 2048);
        assert_eq!(cap.ready_timeout_ms(), 7500);
        assert_eq!(cap.doorbell_stride(), 4);
        assert!(cap.nvm_command_set());
        assert_eq!(cap.min_page_size(), 4096);
        assert_eq!(sq_doorbell(0, 4), 0x1000);
        assert_eq!(cq_doorbell(0, 4), 0x1004);
        assert_eq!(sq_doorbell(3, 16), 0x1000 + 6 * 16);
    }
}
