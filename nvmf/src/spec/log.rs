//! Log pages.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub mod lid {
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS_LIST: u8 = 0x04;
    pub const COMMAND_EFFECTS: u8 = 0x05;
    pub const ANA: u8 = 0x0c;
    pub const DISCOVERY: u8 = 0x70;
}

/// SMART / Health Information (512 bytes).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SmartLog {
    pub critical_warning: u8,
    /// Composite temperature in kelvins, little-endian (unaligned in the spec).
    pub temperature: [u8; 2],
    pub avail_spare: u8,
    pub spare_thresh: u8,
    pub percent_used: u8,
    pub endu_grp_crit_warn_sumry: u8,
    pub rsvd7: [u8; 25],
    /// 128-bit little-endian counters. Data units are 1000 × 512 bytes.
    pub data_units_read: [u8; 16],
    pub data_units_written: [u8; 16],
    pub host_reads: [u8; 16],
    pub host_writes: [u8; 16],
    pub ctrl_busy_time: [u8; 16],
    pub power_cycles: [u8; 16],
    pub power_on_hours: [u8; 16],
    pub unsafe_shutdowns: [u8; 16],
    pub media_errors: [u8; 16],
    pub num_err_log_entries: [u8; 16],
    pub warning_temp_time: u32,
    pub critical_comp_time: u32,
    pub temp_sensor: [u16; 8],
    pub thm_temp_trans_count: [u32; 2],
    pub thm_temp_total_time: [u32; 2],
    pub rsvd232: [u8; 280],
}
const _: () = assert!(std::mem::size_of::<SmartLog>() == 512);

pub fn u128_le(v: u128) -> [u8; 16] {
    v.to_le_bytes()
}

/// Firmware Slot Information (512 bytes).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FirmwareSlotLog {
    pub afi: u8,
    pub rsvd1: [u8; 7],
    pub frs: [[u8; 8]; 7],
    pub rsvd64: [u8; 448],
}
const _: () = assert!(std::mem::size_of::<FirmwareSlotLog>() == 512);

/// Commands Supported and Effects (4096 bytes).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CommandEffectsLog {
    pub acs: [u32; 256],
    pub iocs: [u32; 256],
    pub rsvd: [u8; 2048],
}
const _: () = assert!(std::mem::size_of::<CommandEffectsLog>() == 4096);

/// Command supported.
pub const CSE_CSUPP: u32 = 1;
/// Logical block content change.
pub const CSE_LBCC: u32 = 1 << 1;

/// Discovery log page header (1024 bytes), followed by `numrec` entries.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DiscoveryLogHeader {
    pub genctr: u64,
    pub numrec: u64,
    pub recfmt: u16,
    pub rsvd: [u8; 1006],
}
const _: () = assert!(std::mem::size_of::<DiscoveryLogHeader>() == 1024);

/// TSAS security type of a TCP discovery log entry: TLS 1.3.
pub const TCP_SECTYPE_TLS13: u8 = 2;
/// TREQ bits 1:0, secure channel: required (01b) or not required (10b).
pub const TREQ_SECURE_CHANNEL_REQUIRED: u8 = 0x01;
pub const TREQ_SECURE_CHANNEL_NOT_REQUIRED: u8 = 0x02;
/// TREQ bit 2: the controller can disable SQ flow control (Connect CATTR bit 2).
pub const TREQ_SQ_FLOW_CONTROL_DISABLE_SUPPORTED: u8 = 0x04;

/// One discovery log entry (1024 bytes).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DiscoveryLogEntry {
    /// 3: TCP.
    pub trtype: u8,
    /// 1: IPv4, 2: IPv6.
    pub adrfam: u8,
    /// 2: NVM subsystem, 3: current discovery subsystem.
    pub subtype: u8,
    /// Transport requirements: bits 1:0 secure channel (2: not required), bit 2 SQ flow
    /// control disable supported.
    pub treq: u8,
    pub portid: u16,
    pub cntlid: u16,
    pub asqsz: u16,
    pub eflags: u16,
    pub rsvd12: [u8; 20],
    pub trsvcid: [u8; 32],
    pub rsvd64: [u8; 192],
    pub subnqn: [u8; 256],
    pub traddr: [u8; 256],
    /// TCP: byte 0 is the security type (0: none).
    pub tsas: [u8; 256],
}
const _: () = assert!(std::mem::size_of::<DiscoveryLogEntry>() == 1024);

pub const TRTYPE_TCP: u8 = 3;
pub const ADRFAM_IPV4: u8 = 1;
pub const ADRFAM_IPV6: u8 = 2;
pub const SUBTYPE_NVME: u8 = 2;
pub const SUBTYPE_CURRENT_DISCOVERY: u8 = 3;

/// Async event: notice, namespace attribute changed, log page 04h.
/// Type 02h (notice) in bits 2:0, info 00h (namespace attribute changed) in 15:8, log page
/// in 23:16.
pub const AER_NS_CHANGED: u32 = 0x02 | ((lid::CHANGED_NS_LIST as u32) << 16);
/// Notice, Asymmetric Namespace Access Change (info 03h), ANA log page.
pub const AER_ANA_CHANGED: u32 = 0x02 | (0x03 << 8) | ((lid::ANA as u32) << 16);
