//! The receive framer both sides share: where a PDU's header ends, whether it is valid
//! (common header rules, negotiated digests, data limits), its header digest, its data
//! digest, and the TermReq a violation calls for.
//!
//! The framer owns no buffer: the target frames headers in place in its staging buffer, the
//! host in the header bytes it has assembled so far. Either way a header is looked at once
//! it is whole, and nothing is copied or allocated on success.

use super::pdu::{
    self, fes, pdu_type, CommonHeader, PduError, PduLayout, Receiver, COMMON_HEADER_LEN,
    DIGEST_LEN, TERM_REQ_MAX_DATA,
};
use zerocopy::FromBytes;

pub use super::pdu::MAX_HEADER_WITH_DIGEST;

/// A received header with its digest, as the receiver keeps it.
pub type HeaderBytes = [u8; MAX_HEADER_WITH_DIGEST];

/// The largest data part a receiver accepts, by kind of PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxLimits {
    /// In-capsule data of a CapsuleCmd.
    pub capsule: usize,
    /// Data of one H2CData / C2HData PDU.
    pub transfer: usize,
}

impl RxLimits {
    fn max_data(&self, t: u8) -> usize {
        match t {
            pdu_type::CAPSULE_CMD => self.capsule,
            pdu_type::H2C_DATA | pdu_type::C2H_DATA => self.transfer,
            // Only TermReqs carry data otherwise; PduLayout bounds them itself.
            _ => TERM_REQ_MAX_DATA,
        }
    }
}

/// What the bytes at a PDU boundary amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// The header is not whole: this many bytes from the boundary are needed.
    Need(usize),
    /// A valid header (digest checked) of this layout.
    Header(PduLayout),
}

/// A header that ends the connection: the error its TermReq carries, and how many bytes of
/// the header (from the PDU boundary) it quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Reject {
    pub error: PduError,
    pub quote: usize,
}

/// One side's receive framer: its role and what was negotiated.
#[derive(Debug, Clone, Copy)]
pub struct Framer {
    pub rx: Receiver,
    /// (header, data) digests; None until the ICReq/ICResp exchange.
    pub digests: Option<(bool, bool)>,
    pub limits: RxLimits,
}

impl Framer {
    /// Frames the header starting at `bytes[0]` (a PDU boundary). An error is fatal to the
    /// connection: send [`Framer::term_req`] and close.
    #[inline]
    pub fn header(&self, bytes: &[u8]) -> Result<Frame, Reject> {
        let reject = |error, quote| Reject { error, quote };
        let Some(ch_bytes) = bytes.get(..COMMON_HEADER_LEN) else {
            return Ok(Frame::Need(COMMON_HEADER_LEN));
        };
        let ch = CommonHeader::read_from_bytes(ch_bytes)
            .map_err(|_| reject(PduError::field(0), COMMON_HEADER_LEN))?;
        let layout = PduLayout::of(
            &ch,
            self.rx,
            self.digests,
            self.limits.max_data(ch.pdu_type),
        )
        .map_err(|e| reject(e, COMMON_HEADER_LEN))?;
        let hb = layout.header_bytes();
        let Some(hdr) = bytes.get(..hb) else {
            return Ok(Frame::Need(hb));
        };
        let (hdr, dg) = hdr.split_at(layout.hlen);
        if layout.hdgst && Some(pdu::digest(&[hdr])) != read_digest(dg) {
            let e = PduError {
                fes: fes::HEADER_DIGEST_ERROR,
                fei: 0,
            };
            return Err(reject(e, hb));
        }
        Ok(Frame::Header(layout))
    }

    /// Whether `data` matches the data digest received after it. A mismatch fails the
    /// command, not the connection.
    #[inline]
    pub fn data_digest_ok(data: &[u8], received: &[u8]) -> bool {
        Some(pdu::digest(&[data])) == read_digest(received)
    }

    /// The TermReq this receiver sends for a fatal error: C2H from the controller, H2C from
    /// the host, quoting the offending header.
    pub fn term_req(&self, e: PduError, offending: &[u8]) -> Vec<u8> {
        let t = match self.rx {
            Receiver::Controller => pdu_type::C2H_TERM_REQ,
            Receiver::Host => pdu_type::H2C_TERM_REQ,
        };
        pdu::term_req(t, e, offending)
    }
}

/// A digest field (CRC32C, little-endian). `b` is exactly the field; anything else reads as
/// `None`, which matches no digest.
#[inline]
fn read_digest(b: &[u8]) -> Option<u32> {
    <[u8; DIGEST_LEN]>::try_from(b).ok().map(u32::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Sqe;

    const FRAMER: Framer = Framer {
        rx: Receiver::Controller,
        digests: Some((true, false)),
        limits: RxLimits {
            capsule: 8192,
            transfer: 1 << 20,
        },
    };

    #[test]
    fn header_needs_then_frames() {
        let h = pdu::capsule_cmd(Sqe::default(), true, false, 0);
        let b = h.as_slice();
        assert_eq!(FRAMER.header(&b[..3]), Ok(Frame::Need(COMMON_HEADER_LEN)));
        assert_eq!(FRAMER.header(&b[..8]), Ok(Frame::Need(72 + DIGEST_LEN)));
        let Ok(Frame::Header(l)) = FRAMER.header(b) else {
            panic!("whole capsule header not framed");
        };
        assert_eq!((l.hlen, l.header_bytes()), (72, 76));
    }

    #[test]
    fn header_digest_error_quotes_whole_header() {
        let h = pdu::capsule_cmd(Sqe::default(), true, false, 0);
        let mut b = h.as_slice().to_vec();
        b[74] ^= 1;
        let r = FRAMER.header(&b).unwrap_err();
        assert_eq!((r.error.fes, r.quote), (fes::HEADER_DIGEST_ERROR, 76));
        let t = FRAMER.term_req(r.error, &b[..r.quote]);
        assert_eq!((t[0], t.len()), (pdu_type::C2H_TERM_REQ, 24 + 76));
    }
}
