//! Fuzzes PDU header validation and decoding: any byte string, for both receivers and every
//! digest state, must yield a layout or a PduError, never a panic; an accepted layout must be
//! self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_nvmf::tcp::pdu::*;
use zerocopy::FromBytes;

fuzz_target!(|data: &[u8]| {
    let Ok((ch, _)) = CommonHeader::read_from_prefix(data) else { return };
    for rx in [Receiver::Controller, Receiver::Host] {
        for d in [None, Some((false, false)), Some((true, false)), Some((true, true))] {
            if let Ok(l) = PduLayout::of(&ch, rx, d, 1 << 17) {
                assert!(l.plen == ch.plen as usize);
                assert!(l.data_len <= 1 << 17 || l.data_off == l.hlen);
                if l.data_len > 0 {
                    assert!(l.data_off >= l.hlen && l.data_off + l.data_len <= l.plen);
                }
                let _ = CapsuleCmdHdr::read_from_prefix(data);
                let _ = DataHdr::read_from_prefix(data);
                let _ = IcReq::read_from_prefix(data);
                let _ = term_req(pdu_type::C2H_TERM_REQ, PduError::field(1), data);
            }
        }
    }
});
