//! NVMe status codes: type, code and the DNR bit, packed into a completion's status field.

/// A completion status (SCT and SC, plus Do Not Retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    pub dnr: bool,
}

impl Status {
    pub const SUCCESS: Status = Status {
        sct: 0,
        sc: 0,
        dnr: false,
    };

    pub const fn generic(sc: u8) -> Status {
        Status {
            sct: 0,
            sc,
            dnr: true,
        }
    }
    pub const fn command_specific(sc: u8) -> Status {
        Status {
            sct: 1,
            sc,
            dnr: true,
        }
    }
    pub const fn media(sc: u8) -> Status {
        Status {
            sct: 2,
            sc,
            dnr: false,
        }
    }
    /// Whether the host may retry.
    pub const fn retryable(self) -> Status {
        Status { dnr: false, ..self }
    }

    /// The 15-bit status field shifted into CQE bits 15:1 (phase bit 0 left clear).
    pub fn to_cqe_status(self) -> u16 {
        let field = (self.sc as u16) | ((self.sct as u16 & 7) << 8) | ((self.dnr as u16) << 14);
        field << 1
    }

    pub fn from_cqe_status(v: u16) -> Status {
        let f = v >> 1;
        Status {
            sc: (f & 0xff) as u8,
            sct: ((f >> 8) & 7) as u8,
            dnr: f & (1 << 14) != 0,
        }
    }

    pub fn is_success(self) -> bool {
        self.sct == 0 && self.sc == 0
    }
}

// Generic command status (SCT 0).
pub const INVALID_OPCODE: Status = Status::generic(0x01);
pub const INVALID_FIELD: Status = Status::generic(0x02);
pub const COMMAND_ID_CONFLICT: Status = Status::generic(0x03);
pub const DATA_TRANSFER_ERROR: Status = Status::generic(0x04);
pub const INTERNAL_ERROR: Status = Status::generic(0x06);
pub const ABORT_REQUESTED: Status = Status::generic(0x07);
/// The transport could not move the command's data (here: it did not arrive in time).
pub const TRANSIENT_TRANSPORT_ERROR: Status = Status::generic(0x22);
pub const ABORTED_SQ_DELETION: Status = Status::generic(0x08);
pub const INVALID_NAMESPACE: Status = Status::generic(0x0b);
pub const COMMAND_SEQUENCE_ERROR: Status = Status::generic(0x0c);
pub const DATA_SGL_LENGTH_INVALID: Status = Status::generic(0x0f);
pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = Status::generic(0x11);
pub const LBA_OUT_OF_RANGE: Status = Status::generic(0x80);
pub const NAMESPACE_NOT_READY: Status = Status {
    sct: 0,
    sc: 0x82,
    dnr: false,
};

// Command specific (SCT 1).
pub const INVALID_LOG_PAGE: Status = Status::command_specific(0x09);
pub const ASYNC_EVENT_LIMIT_EXCEEDED: Status = Status::command_specific(0x05);
pub const FEATURE_NOT_SAVEABLE: Status = Status::command_specific(0x0d);
pub const CONNECT_INCOMPATIBLE_FORMAT: Status = Status::command_specific(0x80);
pub const CONNECT_CONTROLLER_BUSY: Status = Status::command_specific(0x81);
pub const CONNECT_INVALID_PARAMETERS: Status = Status::command_specific(0x82);
pub const CONNECT_INVALID_HOST: Status = Status::command_specific(0x84);
/// The queue must complete DH-HMAC-CHAP first (the host re-authenticates on it).
pub const AUTH_REQUIRED: Status = Status::command_specific(0x91);
pub const INVALID_QUEUE_IDENTIFIER: Status = Status::command_specific(0x01);

// Media and data integrity errors (SCT 2).
/// Path related (SCT 3h): the namespace's ANA group is inaccessible through this
/// controller; the host retries on another path.
pub const ANA_INACCESSIBLE: Status = Status {
    sct: 3,
    sc: 0x02,
    dnr: false,
};
pub const WRITE_FAULT: Status = Status::media(0x80);
pub const UNRECOVERED_READ_ERROR: Status = Status::media(0x81);
pub const COMPARE_FAILURE: Status = Status {
    sct: 2,
    sc: 0x85,
    dnr: true,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip() {
        for s in [
            Status::SUCCESS,
            LBA_OUT_OF_RANGE,
            CONNECT_INVALID_HOST,
            COMPARE_FAILURE,
            NAMESPACE_NOT_READY,
        ] {
            assert_eq!(Status::from_cqe_status(s.to_cqe_status()), s);
        }
        // LBA out of range with DNR: SC 0x80, SCT 0, DNR bit 14 of the field.
        assert_eq!(LBA_OUT_OF_RANGE.to_cqe_status(), ((1 << 14) | 0x80) << 1);
    }
}
