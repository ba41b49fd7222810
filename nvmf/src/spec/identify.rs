//! Identify data structures (4096 bytes each).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Identify Controller (CNS 01h).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IdentifyController {
    pub vid: u16,
    pub ssvid: u16,
    pub sn: [u8; 20],
    pub mn: [u8; 40],
    pub fr: [u8; 8],
    pub rab: u8,
    pub ieee: [u8; 3],
    pub cmic: u8,
    /// Maximum data transfer size, as a power of two in units of 4 KiB (0: no limit).
    pub mdts: u8,
    pub cntlid: u16,
    pub ver: u32,
    pub rtd3r: u32,
    pub rtd3e: u32,
    pub oaes: u32,
    pub ctratt: u32,
    pub rrls: u16,
    pub rsvd102: [u8; 9],
    /// 1: I/O controller, 2: discovery controller.
    pub cntrltype: u8,
    pub fguid: [u8; 16],
    pub crdt: [u16; 3],
    pub rsvd134: [u8; 122],
    pub oacs: u16,
    pub acl: u8,
    pub aerl: u8,
    pub frmw: u8,
    pub lpa: u8,
    pub elpe: u8,
    pub npss: u8,
    pub avscc: u8,
    pub apsta: u8,
    pub wctemp: u16,
    pub cctemp: u16,
    pub mtfa: u16,
    pub hmpre: u32,
    pub hmmin: u32,
    pub tnvmcap: [u8; 16],
    pub unvmcap: [u8; 16],
    pub rpmbs: u32,
    pub edstt: u16,
    pub dsto: u8,
    pub fwug: u8,
    /// Keep-alive granularity in 100 ms units.
    pub kas: u16,
    pub hctma: u16,
    pub mntmt: u16,
    pub mxtmt: u16,
    pub sanicap: u32,
    pub hmminds: u32,
    pub hmmaxd: u16,
    pub nsetidmax: u16,
    pub endgidmax: u16,
    pub anatt: u8,
    pub anacap: u8,
    pub anagrpmax: u32,
    pub nanagrpid: u32,
    pub pels: u32,
    pub rsvd356: [u8; 156],
    pub sqes: u8,
    pub cqes: u8,
    pub maxcmd: u16,
    pub nn: u32,
    pub oncs: u16,
    pub fuses: u16,
    pub fna: u8,
    pub vwc: u8,
    pub awun: u16,
    pub awupf: u16,
    pub icsvscc: u8,
    pub nwpc: u8,
    pub acwu: u16,
    pub ocfs: u16,
    pub sgls: u32,
    pub mnan: u32,
    pub rsvd544: [u8; 224],
    pub subnqn: [u8; 256],
    pub rsvd1024: [u8; 768],
    /// I/O queue command capsule size in 16-byte units (64-byte SQE + in-capsule data).
    pub ioccsz: u32,
    pub iorcsz: u32,
    pub icdoff: u16,
    pub fcatt: u8,
    pub msdbd: u8,
    pub ofcs: u16,
    pub rsvd1806: [u8; 242],
    pub psd: [[u8; 32]; 32],
    pub vs: [u8; 1024],
}
const _: () = assert!(std::mem::size_of::<IdentifyController>() == 4096);

pub const CMIC_MULTI_CTRL: u8 = 1 << 1;
pub const CMIC_ANA_REPORTING: u8 = 1 << 3;
pub const OAES_NS_ATTR_CHANGED: u32 = 1 << 8;
pub const OAES_ANA_CHANGE: u32 = 1 << 11;
/// ANACAP: optimized, non-optimized and inaccessible reported; a namespace's ANAGRPID does
/// not change while it is attached.
pub const ANACAP_STATES: u8 = 0x07 | (1 << 6);
pub const ONCS_COMPARE: u16 = 1 << 0;
pub const ONCS_DSM: u16 = 1 << 2;
pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;
pub const LPA_CMD_EFFECTS: u8 = 1 << 1;
pub const LPA_EXTENDED: u8 = 1 << 2;
/// SGLs supported (no alignment requirement), SGL offset and transport SGL data blocks.
pub const SGLS_FABRICS: u32 = 1 | (1 << 20) | (1 << 2);

/// LBA format: metadata size, data size (log2) and relative performance.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct LbaFormat {
    pub ms: u16,
    pub lbads: u8,
    pub rp: u8,
}

/// Identify Namespace (CNS 00h), NVM command set.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IdentifyNamespace {
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    pub nsfeat: u8,
    /// Number of LBA formats, 0-based.
    pub nlbaf: u8,
    pub flbas: u8,
    pub mc: u8,
    pub dpc: u8,
    pub dps: u8,
    pub nmic: u8,
    pub rescap: u8,
    pub fpi: u8,
    pub dlfeat: u8,
    pub nawun: u16,
    pub nawupf: u16,
    pub nacwu: u16,
    pub nabsn: u16,
    pub nabo: u16,
    pub nabspf: u16,
    pub noiob: u16,
    pub nvmcap: [u8; 16],
    pub npwg: u16,
    pub npwa: u16,
    pub npdg: u16,
    pub npda: u16,
    pub nows: u16,
    pub rsvd74: [u8; 18],
    pub anagrpid: u32,
    pub rsvd96: [u8; 3],
    pub nsattr: u8,
    pub nvmsetid: u16,
    pub endgid: u16,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub lbaf: [LbaFormat; 64],
    pub vs: [u8; 3712],
}
const _: () = assert!(std::mem::size_of::<IdentifyNamespace>() == 4096);

/// Deallocated blocks read as zeroes (DLFEAT bits 2:0 = 001b), Write Zeroes may deallocate.
pub const DLFEAT_READ_ZEROES: u8 = 0x01 | (1 << 3);
/// NSFEAT: NPWG/NPWA/NPDG/NPDA/NOWS are valid (optimal I/O hints).
pub const NSFEAT_OPTPERF: u8 = 1 << 4;

/// I/O command set independent Identify Namespace (CNS 08h).
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IdentifyNamespaceIndependent {
    pub nsfeat: u8,
    pub nmic: u8,
    pub rescap: u8,
    pub fpi: u8,
    pub anagrpid: u32,
    pub nsattr: u8,
    pub rsvd9: u8,
    pub nvmsetid: u16,
    pub endgid: u16,
    /// Bit 0: namespace ready.
    pub nstat: u8,
    pub rsvd15: [u8; 4081],
}
const _: () = assert!(std::mem::size_of::<IdentifyNamespaceIndependent>() == 4096);

/// Namespace identification descriptor types (CNS 03h).
pub mod nidt {
    pub const EUI64: u8 = 1;
    pub const NGUID: u8 = 2;
    pub const UUID: u8 = 3;
    pub const CSI: u8 = 4;
}

/// Builds a namespace identification descriptor list into `out` (4096 bytes).
pub fn ns_descriptor_list(
    out: &mut [u8],
    eui64: Option<[u8; 8]>,
    nguid: Option<[u8; 16]>,
    uuid: [u8; 16],
) {
    out.fill(0);
    let mut pos = 0;
    let mut put = |t: u8, id: &[u8]| {
        out[pos] = t;
        out[pos + 1] = id.len() as u8;
        out[pos + 4..pos + 4 + id.len()].copy_from_slice(id);
        pos += 4 + id.len();
    };
    if let Some(e) = eui64 {
        put(nidt::EUI64, &e);
    }
    if let Some(n) = nguid {
        put(nidt::NGUID, &n);
    }
    put(nidt::UUID, &uuid);
    put(nidt::CSI, &[0]);
}
