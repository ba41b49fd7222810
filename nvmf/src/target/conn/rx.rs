//! Receive: staging reads, PDU parsing, where each payload goes.

use super::tx::{TX_BACKLOG_BYTES, TX_BACKLOG_PDUS};
use super::*;

/// Where the payload of the PDU being received goes.
pub(super) enum Sink {
    Capsule(DmaBuf),
    /// H2CData into request `slot`'s buffer at byte `off`.
    H2c {
        slot: u16,
        off: usize,
    },
    Term(Vec<u8>),
}

/// A PDU whose header is in and whose payload is still arriving.
pub(super) struct DataRx {
    hdr: [u8; 132],
    layout: PduLayout,
    /// Padding bytes between header and data still to skip.
    pad: usize,
    sink: Sink,
    /// Payload bytes received so far.
    got: usize,
}

// Stored in place in the connection state (no allocation per PDU), so the size gap between
// the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Rx {
    Header,
    Data(DataRx),
}

impl Connection {
    // ---- receive -----------------------------------------------------------------------

    /// Reads what the socket has into staging. Ok(false): nothing (would block).
    pub(super) fn fill(&self, s: &mut State) -> Result<bool, Fatal> {
        if s.sp > 0 && s.sp == s.se {
            s.sp = 0;
            s.se = 0;
        }
        if s.se == s.staging.len() {
            // Compact: the unparsed tail moves to the front.
            s.staging.copy_within(s.sp..s.se, 0);
            s.se -= s.sp;
            s.sp = 0;
        }
        if s.drained {
            // The last read came back short: the socket is empty until epoll says otherwise.
            return Ok(false);
        }
        let se = s.se;
        let space = s.staging.len() - se;
        match (&self.stream).read(&mut s.staging[se..]) {
            Ok(0) => Err(Fatal::Closed),
            Ok(n) => {
                s.se += n;
                s.drained = n < space;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(true),
            Err(_) => Err(Fatal::Closed),
        }
    }

    pub(super) fn receive(&self) -> Result<(), Fatal> {
        loop {
            let mut s = self.st.borrow_mut();
            if s.phase == Phase::Closed {
                return Ok(());
            }
            let avail = s.se - s.sp;
            let rx = std::mem::replace(&mut s.rx, Rx::Header);
            match rx {
                Rx::Header => {
                    // A host that sends commands but does not read the answers must not
                    // make us queue without bound: take no new command until it reads.
                    if s.tx.len() > TX_BACKLOG_PDUS || s.tx_owned > TX_BACKLOG_BYTES {
                        if !s.stalled {
                            tracing::warn!(
                                pdus = s.tx.len(),
                                bytes = s.tx_owned,
                                "host is not reading its responses: receive paused"
                            );
                        }
                        s.stalled = true;
                        return Ok(());
                    }
                    if avail < pdu::COMMON_HEADER_LEN {
                        if !self.fill(&mut s)? {
                            return Ok(());
                        }
                        continue;
                    }
                    let sp = s.sp;
                    let ch = CommonHeader::read_from_bytes(&s.staging[sp..sp + 8])
                        .map_err(|_| Fatal::Closed)?;
                    let max_data = self.max_data_for(&s, ch.pdu_type);
                    let layout = PduLayout::of(&ch, Receiver::Controller, s.digests, max_data)
                        .map_err(|e| Fatal::Pdu(e, s.staging[sp..sp + 8].to_vec()))?;
                    let hb = layout.header_bytes();
                    if avail < hb {
                        if !self.fill(&mut s)? {
                            return Ok(());
                        }
                        continue;
                    }
                    let mut hdr = [0u8; 132];
                    hdr[..hb].copy_from_slice(&s.staging[sp..sp + hb]);
                    if layout.hdgst {
                        let want = u32::from_le_bytes([
                            hdr[layout.hlen],
                            hdr[layout.hlen + 1],
                            hdr[layout.hlen + 2],
                            hdr[layout.hlen + 3],
                        ]);
                        if pdu::digest(&[&hdr[..layout.hlen]]) != want {
                            return Err(Fatal::Pdu(
                                PduError {
                                    fes: fes::HEADER_DIGEST_ERROR,
                                    fei: 0,
                                },
                                hdr[..hb].to_vec(),
                            ));
                        }
                    }
                    s.sp += hb;
                    if layout.data_len == 0 {
                        drop(s);
                        self.dispatch(&hdr, layout, None)?;
                        continue;
                    }
                    let Some(sink) = self.data_sink(&mut s, &hdr, &layout)? else {
                        // No DMA buffer for the payload right now: leave the PDU unparsed
                        // (backpressure) and retry from the periodic tick.
                        s.sp -= hb;
                        s.stalled = true;
                        return Ok(());
                    };
                    let pad = layout.data_off - hb;
                    s.rx = Rx::Data(DataRx {
                        hdr,
                        layout,
                        pad,
                        sink,
                        got: 0,
                    });
                }
                Rx::Data(mut d) => {
                    // Skip padding between header and data.
                    let skip = d.pad.min(avail);
                    s.sp += skip;
                    d.pad -= skip;
                    let want = d.layout.data_len - d.got;
                    let avail = s.se - s.sp;
                    if d.pad == 0 && want > 0 && avail > 0 {
                        let n = want.min(avail);
                        let sp = s.sp;
                        let state: &mut State = &mut s;
                        sink_write(
                            &mut d.sink,
                            &mut state.reqs,
                            d.got,
                            &state.staging[sp..sp + n],
                        );
                        s.sp += n;
                        d.got += n;
                    }
                    let want = d.layout.data_len - d.got;
                    if d.pad > 0 || want > 0 {
                        if d.pad == 0 && want >= DIRECT_READ_MIN && s.se == s.sp && !s.drained {
                            // Straight into the data buffer.
                            let r = {
                                let state: &mut State = &mut s;
                                match sink_slice(&mut d.sink, &mut state.reqs, d.got, want) {
                                    Some(dst) => (&self.stream).read(dst),
                                    None => Ok(0),
                                }
                            };
                            match r {
                                Ok(0) => return Err(Fatal::Closed),
                                Ok(n) => {
                                    d.got += n;
                                    s.drained = n < want;
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                    s.rx = Rx::Data(d);
                                    return Ok(());
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                                Err(_) => return Err(Fatal::Closed),
                            }
                            s.rx = Rx::Data(d);
                            continue;
                        }
                        s.rx = Rx::Data(d);
                        if !self.fill(&mut s)? {
                            return Ok(());
                        }
                        continue;
                    }
                    if d.layout.ddgst {
                        if s.se - s.sp < 4 {
                            s.rx = Rx::Data(d);
                            if !self.fill(&mut s)? {
                                return Ok(());
                            }
                            continue;
                        }
                        let sp = s.sp;
                        let want = u32::from_le_bytes([
                            s.staging[sp],
                            s.staging[sp + 1],
                            s.staging[sp + 2],
                            s.staging[sp + 3],
                        ]);
                        s.sp += 4;
                        let have = sink_digest(&d.sink, &s.reqs, d.layout.data_len);
                        if have != want {
                            // A data digest error fails the command, not the connection.
                            drop(s);
                            let DataRx {
                                hdr, layout, sink, ..
                            } = d;
                            self.data_digest_error(&hdr, layout, sink);
                            continue;
                        }
                    }
                    drop(s);
                    let DataRx {
                        hdr, layout, sink, ..
                    } = d;
                    self.dispatch(&hdr, layout, Some(sink))?;
                }
            }
        }
    }

    pub(super) fn max_data_for(&self, s: &State, t: u8) -> usize {
        match t {
            pdu_type::CAPSULE_CMD => {
                if s.qid == Some(0) || s.qid.is_none() {
                    ADMIN_IN_CAPSULE as usize
                } else {
                    s.in_capsule as usize
                }
            }
            pdu_type::H2C_DATA => s.maxh2cdata as usize,
            _ => pdu::TERM_REQ_MAX_DATA,
        }
    }

    /// Decides where a PDU's payload goes (before it arrives).
    /// Decided before the payload arrives; `None`: no DMA buffer free right now.
    pub(super) fn data_sink(
        &self,
        s: &mut State,
        hdr: &[u8; 132],
        layout: &PduLayout,
    ) -> Result<Option<Sink>, Fatal> {
        match layout.pdu_type {
            pdu_type::CAPSULE_CMD => Ok(dma::alloc(layout.data_len).map(Sink::Capsule)),
            pdu_type::H2C_DATA => {
                let d = DataHdr::read_from_bytes(&hdr[..24]).map_err(|_| Fatal::Closed)?;
                let bad = |fei: u32| {
                    Fatal::Pdu(
                        PduError {
                            fes: fes::DATA_OUT_OF_RANGE,
                            fei,
                        },
                        hdr[..24].to_vec(),
                    )
                };
                let slot = d.ttag as usize;
                let r = s
                    .reqs
                    .get(slot)
                    .ok_or_else(|| Fatal::Pdu(PduError::field(10), hdr[..24].to_vec()))?;
                if r.state != ReqState::AwaitH2c || r.sqe.cid != d.cccid {
                    return Err(Fatal::Pdu(
                        PduError {
                            fes: fes::PDU_SEQUENCE_ERROR,
                            fei: 8,
                        },
                        hdr[..24].to_vec(),
                    ));
                }
                if d.datal as usize != layout.data_len {
                    return Err(Fatal::Pdu(PduError::field(16), hdr[..24].to_vec()));
                }
                if d.datao != r.r2t_off + r.h2c_got {
                    return Err(bad(12));
                }
                if r.h2c_got + d.datal > r.r2t_len {
                    return Err(bad(16));
                }
                Ok(Some(Sink::H2c {
                    slot: slot as u16,
                    off: d.datao as usize,
                }))
            }
            _ => Ok(Some(Sink::Term(vec![0; layout.data_len]))),
        }
    }

    pub(super) fn data_digest_error(&self, hdr: &[u8; 132], layout: PduLayout, sink: Sink) {
        tracing::warn!(peer = %self.peer, "data digest error");
        match (layout.pdu_type, sink) {
            (pdu_type::CAPSULE_CMD, _) => {
                if let Ok(c) = CapsuleCmdHdr::read_from_bytes(&hdr[..72]) {
                    let mut s = self.st.borrow_mut();
                    let cqe = self.cqe(
                        &mut s,
                        c.sqe.cid,
                        status::DATA_TRANSFER_ERROR.retryable(),
                        0,
                    );
                    drop(s);
                    self.queue_resp(cqe, None);
                }
            }
            (_, Sink::H2c { slot, .. }) => {
                self.finish(slot, status::DATA_TRANSFER_ERROR.retryable(), 0);
            }
            _ => {}
        }
    }

    pub(super) fn dispatch(
        &self,
        hdr: &[u8; 132],
        layout: PduLayout,
        sink: Option<Sink>,
    ) -> Result<(), Fatal> {
        match layout.pdu_type {
            pdu_type::IC_REQ => self.on_icreq(hdr),
            pdu_type::CAPSULE_CMD => {
                let c = CapsuleCmdHdr::read_from_bytes(&hdr[..72]).map_err(|_| Fatal::Closed)?;
                let data = match sink {
                    Some(Sink::Capsule(b)) => Some(b),
                    _ => None,
                };
                self.on_command(c.sqe, data);
                Ok(())
            }
            pdu_type::H2C_DATA => {
                if let Some(Sink::H2c { slot, .. }) = sink {
                    self.on_h2c_data(slot, layout.data_len as u32);
                }
                Ok(())
            }
            _ => {
                tracing::warn!(peer = %self.peer, "host sent H2CTermReq; closing");
                Err(Fatal::Closed)
            }
        }
    }
}

pub(super) fn sink_write(sink: &mut Sink, reqs: &mut [Req], at: usize, src: &[u8]) {
    match sink {
        Sink::Capsule(b) => b.as_mut_slice()[at..at + src.len()].copy_from_slice(src),
        Sink::Term(v) => v[at..at + src.len()].copy_from_slice(src),
        Sink::H2c { slot, off } => {
            if let Some(b) = reqs[*slot as usize].buf.as_mut() {
                b.as_mut_slice()[*off + at..*off + at + src.len()].copy_from_slice(src);
            }
        }
    }
}

pub(super) fn sink_slice<'a>(
    sink: &'a mut Sink,
    reqs: &'a mut [Req],
    at: usize,
    n: usize,
) -> Option<&'a mut [u8]> {
    match sink {
        Sink::Capsule(b) => Some(&mut b.as_mut_slice()[at..at + n]),
        Sink::Term(v) => Some(&mut v[at..at + n]),
        Sink::H2c { slot, off } => reqs[*slot as usize]
            .buf
            .as_mut()
            .map(|b| &mut b.as_mut_slice()[*off + at..*off + at + n]),
    }
}

pub(super) fn sink_digest(sink: &Sink, reqs: &[Req], len: usize) -> u32 {
    match sink {
        Sink::Capsule(b) => pdu::digest(&[&b.as_slice()[..len]]),
        Sink::Term(v) => pdu::digest(&[&v[..len]]),
        Sink::H2c { slot, off } => match &reqs[*slot as usize].buf {
            Some(b) => pdu::digest(&[&b.as_slice()[*off..*off + len]]),
            None => 0,
        },
    }
}
