//! NVMe/TCP PDUs: header types, validation of received headers, and encoding.
//!
//! [`PduLayout::of`] checks a received common header against the PDU type's rules (header
//! length, data offset, length, digest flags) and tells the receiver where the header digest,
//! the data and the data digest are; a violation yields the Fatal Error Status and offset a
//! TermReq must carry.

use crate::spec::{Cqe, Sqe};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub mod pdu_type {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

pub mod flags {
    pub const HDGST: u8 = 0x01;
    pub const DDGST: u8 = 0x02;
    /// Last data PDU of a command's transfer (H2CData, C2HData).
    pub const DATA_LAST: u8 = 0x04;
    /// C2HData: the command succeeded; no CapsuleResp follows.
    pub const DATA_SUCCESS: u8 = 0x08;
}

/// Fatal error status codes of a TermReq.
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    pub const DATA_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

pub const COMMON_HEADER_LEN: usize = 8;
pub const DIGEST_LEN: usize = 4;
/// Most of a TermReq's data: the offending PDU header.
pub const TERM_REQ_MAX_DATA: usize = 152;
/// Largest header strata accepts (IC PDUs).
pub const MAX_HEADER_LEN: usize = 128;
/// Largest header strata accepts plus its header digest: what a receiver must hold to
/// look at a whole header.
pub const MAX_HEADER_WITH_DIGEST: usize = MAX_HEADER_LEN + DIGEST_LEN;

#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout, PartialEq, Eq,
)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}
const _: () = assert!(std::mem::size_of::<CommonHeader>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IcReq {
    pub ch: CommonHeader,
    pub pfv: u16,
    /// Host PDU data alignment, in dwords, 0-based.
    pub hpda: u8,
    /// Bit 0: header digest, bit 1: data digest.
    pub dgst: u8,
    /// Maximum outstanding R2Ts per command, 0-based.
    pub maxr2t: u32,
    pub rsvd: [u8; 112],
}
const _: () = assert!(std::mem::size_of::<IcReq>() == 128);

#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IcResp {
    pub ch: CommonHeader,
    pub pfv: u16,
    /// Controller PDU data alignment, in dwords, 0-based.
    pub cpda: u8,
    pub dgst: u8,
    /// Largest H2CData payload the controller accepts.
    pub maxh2cdata: u32,
    pub rsvd: [u8; 112],
}
const _: () = assert!(std::mem::size_of::<IcResp>() == 128);

#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CapsuleCmdHdr {
    pub ch: CommonHeader,
    pub sqe: Sqe,
}
const _: () = assert!(std::mem::size_of::<CapsuleCmdHdr>() == 72);

#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CapsuleRespHdr {
    pub ch: CommonHeader,
    pub cqe: Cqe,
}
const _: () = assert!(std::mem::size_of::<CapsuleRespHdr>() == 24);

/// H2CData and C2HData header.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DataHdr {
    pub ch: CommonHeader,
    pub cccid: u16,
    pub ttag: u16,
    pub datao: u32,
    pub datal: u32,
    pub rsvd: u32,
}
const _: () = assert!(std::mem::size_of::<DataHdr>() == 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct R2tHdr {
    pub ch: CommonHeader,
    pub cccid: u16,
    pub ttag: u16,
    pub r2to: u32,
    pub r2tl: u32,
    pub rsvd: u32,
}
const _: () = assert!(std::mem::size_of::<R2tHdr>() == 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TermReqHdr {
    pub ch: CommonHeader,
    pub fes: u16,
    /// Field error information: byte offset of the bad field (unaligned u32, LE).
    pub fei: [u8; 4],
    pub rsvd: [u8; 10],
}
const _: () = assert!(std::mem::size_of::<TermReqHdr>() == 24);

/// A fatal PDU error: what a TermReq reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fatal PDU error: status {fes:#x} at byte {fei}")]
pub struct PduError {
    pub fes: u16,
    pub fei: u32,
}

impl PduError {
    pub fn field(offset: u32) -> Self {
        PduError {
            fes: fes::INVALID_HEADER_FIELD,
            fei: offset,
        }
    }
}

/// Which side receives: the target accepts host-to-controller PDUs and vice versa.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    Controller,
    Host,
}

/// Where the parts of a received PDU are, once its common header is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PduLayout {
    pub pdu_type: u8,
    pub hlen: usize,
    /// Header digest follows the header.
    pub hdgst: bool,
    /// Data digest follows the data.
    pub ddgst: bool,
    /// Offset of the data from the start of the PDU (0 when none).
    pub data_off: usize,
    pub data_len: usize,
    pub plen: usize,
}

impl PduLayout {
    /// Bytes of header plus header digest.
    pub fn header_bytes(&self) -> usize {
        self.hlen + if self.hdgst { DIGEST_LEN } else { 0 }
    }

    /// Validates a common header. `digests`: (header, data) digests negotiated, or None
    /// before initialization. `max_data`: the largest data part accepted for this type.
    pub fn of(
        ch: &CommonHeader,
        rx: Receiver,
        digests: Option<(bool, bool)>,
        max_data: usize,
    ) -> Result<PduLayout, PduError> {
        use pdu_type::*;
        let t = ch.pdu_type;
        let allowed = match rx {
            Receiver::Controller => matches!(t, IC_REQ | H2C_TERM_REQ | CAPSULE_CMD | H2C_DATA),
            Receiver::Host => matches!(t, IC_RESP | C2H_TERM_REQ | CAPSULE_RESP | C2H_DATA | R2T),
        };
        if !allowed {
            return Err(PduError::field(0));
        }
        let is_ic = matches!(t, IC_REQ | IC_RESP);
        match (is_ic, digests) {
            (true, Some(_)) | (false, None) if !matches!(t, H2C_TERM_REQ | C2H_TERM_REQ) => {
                return Err(PduError {
                    fes: fes::PDU_SEQUENCE_ERROR,
                    fei: 0,
                });
            }
            _ => {}
        }
        let expect_hlen = match t {
            IC_REQ | IC_RESP => 128,
            CAPSULE_CMD => 72,
            _ => 24,
        };
        if ch.hlen as usize != expect_hlen {
            return Err(PduError::field(2));
        }
        let (hd, dd) = digests.unwrap_or((false, false));
        let has_hdgst = ch.flags & flags::HDGST != 0;
        let has_ddgst = ch.flags & flags::DDGST != 0;
        let term = matches!(t, H2C_TERM_REQ | C2H_TERM_REQ);
        // Digest flags must match what was negotiated (TermReq/IC PDUs carry none).
        if !term && !is_ic && has_hdgst != hd {
            return Err(PduError::field(1));
        }
        if (term || is_ic) && (has_hdgst || has_ddgst) {
            return Err(PduError::field(1));
        }
        let plen = ch.plen as usize;
        let hbytes = expect_hlen + if has_hdgst { DIGEST_LEN } else { 0 };
        let carries_data = matches!(t, CAPSULE_CMD | H2C_DATA | C2H_DATA);
        if term {
            if plen < expect_hlen || plen > expect_hlen + TERM_REQ_MAX_DATA || ch.pdo != 0 {
                return Err(PduError::field(4));
            }
            return Ok(PduLayout {
                pdu_type: t,
                hlen: expect_hlen,
                hdgst: false,
                ddgst: false,
                data_off: expect_hlen,
                data_len: plen - expect_hlen,
                plen,
            });
        }
        if !carries_data || plen == hbytes {
            if plen != hbytes {
                return Err(PduError::field(4));
            }
            if ch.pdo != 0 || has_ddgst {
                return Err(PduError::field(if ch.pdo != 0 { 3 } else { 1 }));
            }
            return Ok(PduLayout {
                pdu_type: t,
                hlen: expect_hlen,
                hdgst: has_hdgst,
                ddgst: false,
                data_off: 0,
                data_len: 0,
                plen,
            });
        }
        if has_ddgst != dd {
            return Err(PduError::field(1));
        }
        let pdo = ch.pdo as usize;
        if pdo < hbytes || pdo > plen {
            return Err(PduError::field(3));
        }
        let tail = if has_ddgst { DIGEST_LEN } else { 0 };
        if plen < pdo + tail + 1 {
            return Err(PduError::field(4));
        }
        let data_len = plen - pdo - tail;
        if data_len > max_data {
            return Err(PduError {
                fes: fes::DATA_LIMIT_EXCEEDED,
                fei: 4,
            });
        }
        Ok(PduLayout {
            pdu_type: t,
            hlen: expect_hlen,
            hdgst: has_hdgst,
            ddgst: has_ddgst,
            data_off: pdo,
            data_len,
            plen,
        })
    }
}

/// CRC32C of a header or data, as carried in a digest field (little-endian).
pub fn digest(parts: &[&[u8]]) -> u32 {
    parts
        .iter()
        .fold(0u32, |c, p| strata_bdev::kernels::crc32c_append(c, p))
}

/// An encoded header (with its header digest when enabled), ready to send.
#[derive(Clone, Copy)]
pub struct HeaderBuf {
    pub bytes: [u8; MAX_HEADER_WITH_DIGEST],
    pub len: usize,
}

impl std::fmt::Debug for HeaderBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderBuf").field("len", &self.len).finish()
    }
}

impl HeaderBuf {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Copies a header struct in, appending its CRC32C when `hdgst`.
    pub fn new<T: IntoBytes + Immutable>(hdr: &T, hdgst: bool) -> HeaderBuf {
        let b = hdr.as_bytes();
        let mut out = HeaderBuf {
            bytes: [0; MAX_HEADER_WITH_DIGEST],
            len: b.len(),
        };
        out.bytes[..b.len()].copy_from_slice(b);
        if hdgst {
            let d = digest(&[b]).to_le_bytes();
            out.bytes[b.len()..b.len() + 4].copy_from_slice(&d);
            out.len += 4;
        }
        out
    }
}

/// Common header of a PDU with `data_len` bytes of data placed right after the header.
pub fn data_pdu_header(
    pdu_type: u8,
    hlen: usize,
    hdgst: bool,
    ddgst: bool,
    data_len: usize,
    extra_flags: u8,
) -> CommonHeader {
    let hbytes = hlen + if hdgst { DIGEST_LEN } else { 0 };
    let has_data = data_len > 0;
    let mut f = extra_flags;
    if hdgst {
        f |= flags::HDGST;
    }
    if ddgst && has_data {
        f |= flags::DDGST;
    }
    let plen = hbytes + data_len + if ddgst && has_data { DIGEST_LEN } else { 0 };
    CommonHeader {
        pdu_type,
        flags: f,
        hlen: hlen as u8,
        pdo: if has_data { hbytes as u8 } else { 0 },
        plen: plen as u32,
    }
}

pub fn capsule_resp(cqe: Cqe, hdgst: bool) -> HeaderBuf {
    let ch = data_pdu_header(pdu_type::CAPSULE_RESP, 24, hdgst, false, 0, 0);
    HeaderBuf::new(&CapsuleRespHdr { ch, cqe }, hdgst)
}

pub fn capsule_cmd(sqe: Sqe, hdgst: bool, ddgst: bool, data_len: usize) -> HeaderBuf {
    let ch = data_pdu_header(pdu_type::CAPSULE_CMD, 72, hdgst, ddgst, data_len, 0);
    HeaderBuf::new(&CapsuleCmdHdr { ch, sqe }, hdgst)
}

/// C2HData or H2CData header for `datal` bytes at `datao`.
#[allow(clippy::too_many_arguments)]
pub fn data(
    pdu: u8,
    cccid: u16,
    ttag: u16,
    datao: u32,
    datal: u32,
    last: bool,
    success: bool,
    hdgst: bool,
    ddgst: bool,
) -> HeaderBuf {
    let mut f = 0;
    if last {
        f |= flags::DATA_LAST;
    }
    if success {
        f |= flags::DATA_SUCCESS;
    }
    let ch = data_pdu_header(pdu, 24, hdgst, ddgst, datal as usize, f);
    HeaderBuf::new(
        &DataHdr {
            ch,
            cccid,
            ttag,
            datao,
            datal,
            rsvd: 0,
        },
        hdgst,
    )
}

pub fn r2t(cccid: u16, ttag: u16, r2to: u32, r2tl: u32, hdgst: bool) -> HeaderBuf {
    let ch = data_pdu_header(pdu_type::R2T, 24, hdgst, false, 0, 0);
    HeaderBuf::new(
        &R2tHdr {
            ch,
            cccid,
            ttag,
            r2to,
            r2tl,
            rsvd: 0,
        },
        hdgst,
    )
}

/// A TermReq carrying (up to 152 bytes of) the offending header.
pub fn term_req(pdu: u8, e: PduError, offending: &[u8]) -> Vec<u8> {
    let n = offending.len().min(TERM_REQ_MAX_DATA);
    let ch = CommonHeader {
        pdu_type: pdu,
        flags: 0,
        hlen: 24,
        pdo: 0,
        plen: (24 + n) as u32,
    };
    let hdr = TermReqHdr {
        ch,
        fes: e.fes,
        fei: e.fei.to_le_bytes(),
        rsvd: [0; 10],
    };
    let mut v = hdr.as_bytes().to_vec();
    v.extend_from_slice(&offending[..n]);
    v
}

pub fn ic_req(hpda: u8, hdgst: bool, ddgst: bool, maxr2t: u32) -> IcReq {
    IcReq {
        ch: CommonHeader {
            pdu_type: pdu_type::IC_REQ,
            flags: 0,
            hlen: 128,
            pdo: 0,
            plen: 128,
        },
        pfv: 0,
        hpda,
        dgst: hdgst as u8 | ((ddgst as u8) << 1),
        maxr2t,
        rsvd: [0; 112],
    }
}

pub fn ic_resp(cpda: u8, hdgst: bool, ddgst: bool, maxh2cdata: u32) -> IcResp {
    IcResp {
        ch: CommonHeader {
            pdu_type: pdu_type::IC_RESP,
            flags: 0,
            hlen: 128,
            pdo: 0,
            plen: 128,
        },
        pfv: 0,
        cpda,
        dgst: hdgst as u8 | ((ddgst as u8) << 1),
        maxh2cdata,
        rsvd: [0; 112],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(t: u8, flags: u8, hlen: u8, pdo: u8, plen: u32) -> CommonHeader {
        CommonHeader {
            pdu_type: t,
            flags,
            hlen,
            pdo,
            plen,
        }
    }

    #[test]
    fn layouts() {
        let d = Some((false, false));
        // Capsule without data.
        let l = PduLayout::of(&ch(4, 0, 72, 0, 72), Receiver::Controller, d, 8192).unwrap();
        assert_eq!((l.data_len, l.header_bytes()), (0, 72));
        // Capsule with 4 KiB in-capsule data and both digests.
        let l = PduLayout::of(
            &ch(4, 3, 72, 76, 76 + 4096 + 4),
            Receiver::Controller,
            Some((true, true)),
            8192,
        )
        .unwrap();
        assert_eq!((l.data_off, l.data_len, l.ddgst), (76, 4096, true));
        // Wrong hlen.
        assert_eq!(
            PduLayout::of(&ch(4, 0, 71, 0, 71), Receiver::Controller, d, 8192),
            Err(PduError::field(2))
        );
        // Host PDU type sent to the host side is refused, and vice versa.
        assert!(PduLayout::of(&ch(5, 0, 24, 0, 24), Receiver::Controller, d, 0).is_err());
        assert!(PduLayout::of(&ch(4, 0, 72, 0, 72), Receiver::Host, d, 0).is_err());
        // pdo inside the header.
        assert_eq!(
            PduLayout::of(&ch(6, 0, 24, 8, 100), Receiver::Controller, d, 8192),
            Err(PduError::field(3))
        );
        // Data larger than allowed.
        let e =
            PduLayout::of(&ch(6, 0, 24, 24, 24 + 9000), Receiver::Controller, d, 8192).unwrap_err();
        assert_eq!(e.fes, fes::DATA_LIMIT_EXCEEDED);
        // Digest flag disagreeing with negotiation.
        assert_eq!(
            PduLayout::of(&ch(4, 1, 72, 0, 76), Receiver::Controller, d, 0),
            Err(PduError::field(1))
        );
        // A capsule before ICReq is a sequence error; ICReq after it too.
        assert_eq!(
            PduLayout::of(&ch(4, 0, 72, 0, 72), Receiver::Controller, None, 0)
                .unwrap_err()
                .fes,
            fes::PDU_SEQUENCE_ERROR
        );
        assert_eq!(
            PduLayout::of(&ch(0, 0, 128, 0, 128), Receiver::Controller, d, 0)
                .unwrap_err()
                .fes,
            fes::PDU_SEQUENCE_ERROR
        );
        assert!(PduLayout::of(&ch(0, 0, 128, 0, 128), Receiver::Controller, None, 0).is_ok());
    }

    #[test]
    fn encode_decode_round_trip() {
        let sqe = Sqe {
            opcode: 2,
            cid: 7,
            nsid: 1,
            cdw10: 5,
            ..Default::default()
        };
        let h = capsule_cmd(sqe, true, true, 4096);
        let (hdr, _) = CapsuleCmdHdr::read_from_prefix(h.as_slice()).unwrap();
        assert_eq!(hdr.sqe, sqe);
        let l = PduLayout::of(&hdr.ch, Receiver::Controller, Some((true, true)), 8192).unwrap();
        assert_eq!((l.data_off, l.data_len), (76, 4096));
        let dg = u32::from_le_bytes(h.bytes[72..76].try_into().unwrap());
        assert_eq!(dg, digest(&[&h.bytes[..72]]));
        let r = data(pdu_type::C2H_DATA, 7, 0, 0, 512, true, true, false, false);
        let (d, _) = DataHdr::read_from_prefix(r.as_slice()).unwrap();
        assert_eq!(
            (d.ch.plen, d.ch.pdo, d.ch.flags),
            (24 + 512, 24, flags::DATA_LAST | flags::DATA_SUCCESS)
        );
        assert!(PduLayout::of(&d.ch, Receiver::Host, Some((false, false)), 1 << 20).is_ok());
    }
}
