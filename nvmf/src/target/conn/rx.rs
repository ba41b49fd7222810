//! Receive: staging reads, PDU parsing, where each payload goes.

use super::tx::{TX_BACKLOG_BYTES, TX_BACKLOG_PDUS};
use super::*;
use crate::tcp::framer::{Frame, Framer, HeaderBytes, RxLimits, MAX_HEADER_WITH_DIGEST};
use crate::tcp::pdu::DIGEST_LEN;
use std::cell::RefMut;

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
    hdr: HeaderBytes,
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

impl Rx {
    /// The request whose H2CData payload is arriving right now, if any.
    pub(super) fn h2c_slot(&self) -> Option<u16> {
        match self {
            Rx::Data(DataRx {
                sink: Sink::H2c { slot, .. },
                ..
            }) => Some(*slot),
            _ => None,
        }
    }
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
        match self.sock_read(&mut s.staging[se..]) {
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
            let rx = std::mem::replace(&mut s.rx, Rx::Header);
            let more = match rx {
                Rx::Header => self.receive_header(s)?,
                Rx::Data(d) => self.receive_data(s, d)?,
            };
            if !more {
                return Ok(());
            }
        }
    }

    /// The receive framer for this queue's negotiated state (built per header: a few words,
    /// no lock, no allocation).
    pub(super) fn framer(s: &State) -> Framer {
        let capsule = if s.qid == Some(0) || s.qid.is_none() {
            ADMIN_IN_CAPSULE
        } else {
            s.in_capsule
        };
        Framer {
            rx: Receiver::Controller,
            digests: s.digests,
            limits: RxLimits {
                capsule: capsule as usize,
                transfer: s.maxh2cdata as usize,
            },
        }
    }

    /// At a PDU boundary: frames the next header in staging and dispatches it, or decides
    /// where its payload goes. Ok(false): stop receiving for now.
    fn receive_header(&self, mut s: RefMut<'_, State>) -> Result<bool, Fatal> {
        // A host that sends commands but does not read the answers must not make us queue
        // without bound: take no new command until it reads.
        if s.tx.len() > TX_BACKLOG_PDUS || s.tx_owned > TX_BACKLOG_BYTES {
            if !s.stalled {
                tracing::warn!(
                    pdus = s.tx.len(),
                    bytes = s.tx_owned,
                    "host is not reading its responses: receive paused"
                );
            }
            s.stalled = true;
            return Ok(false);
        }
        let (sp, se) = (s.sp, s.se);
        let layout = match Self::framer(&s).header(&s.staging[sp..se]) {
            Ok(Frame::Header(l)) => l,
            Ok(Frame::Need(_)) => return self.fill(&mut s),
            Err(r) => {
                let quoted = s.staging[sp..sp + r.quote].to_vec();
                return Err(Fatal::Pdu(r.error, quoted));
            }
        };
        let hb = layout.header_bytes();
        let mut hdr: HeaderBytes = [0; MAX_HEADER_WITH_DIGEST];
        hdr[..hb].copy_from_slice(&s.staging[sp..sp + hb]);
        s.sp += hb;
        if layout.data_len == 0 {
            drop(s);
            self.dispatch(&hdr, layout, None)?;
            return Ok(true);
        }
        let Some(sink) = self.data_sink(&mut s, &hdr, &layout)? else {
            // No DMA buffer for the payload right now: leave the PDU unparsed
            // (backpressure) and retry from the periodic tick.
            s.sp -= hb;
            s.stalled = true;
            return Ok(false);
        };
        let pad = layout.data_off - hb;
        s.rx = Rx::Data(DataRx {
            hdr,
            layout,
            pad,
            sink,
            got: 0,
        });
        Ok(true)
    }

    /// Inside a PDU's payload: padding, data (from staging, or read straight into the data
    /// buffer when large), then the data digest. Ok(false): stop receiving for now.
    fn receive_data(&self, mut s: RefMut<'_, State>, mut d: DataRx) -> Result<bool, Fatal> {
        // Skip padding between header and data.
        let avail = s.se - s.sp;
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
                return self.read_direct(s, d, want);
            }
            s.rx = Rx::Data(d);
            return self.fill(&mut s);
        }
        if d.layout.ddgst {
            if s.se - s.sp < DIGEST_LEN {
                s.rx = Rx::Data(d);
                return self.fill(&mut s);
            }
            let sp = s.sp;
            s.sp += DIGEST_LEN;
            let ok = sink_digest_ok(
                &d.sink,
                &s.reqs,
                d.layout.data_len,
                &s.staging[sp..sp + DIGEST_LEN],
            );
            if !ok {
                // A data digest error fails the command, not the connection.
                drop(s);
                let DataRx {
                    hdr, layout, sink, ..
                } = d;
                self.data_digest_error(&hdr, layout, sink);
                return Ok(true);
            }
        }
        drop(s);
        let DataRx {
            hdr, layout, sink, ..
        } = d;
        self.dispatch(&hdr, layout, Some(sink))?;
        Ok(true)
    }

    /// Reads the rest of a large payload straight into its data buffer (staging is empty).
    fn read_direct(
        &self,
        mut s: RefMut<'_, State>,
        mut d: DataRx,
        want: usize,
    ) -> Result<bool, Fatal> {
        let r = {
            let state: &mut State = &mut s;
            match sink_slice(&mut d.sink, &mut state.reqs, d.got, want) {
                Some(dst) => self.sock_read(dst),
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
                return Ok(false);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Fatal::Closed),
        }
        s.rx = Rx::Data(d);
        Ok(true)
    }

    /// Decides where a PDU's payload goes (before it arrives).
    /// Decided before the payload arrives; `None`: no DMA buffer free right now.
    pub(super) fn data_sink(
        &self,
        s: &mut State,
        hdr: &HeaderBytes,
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

    pub(super) fn data_digest_error(&self, hdr: &HeaderBytes, layout: PduLayout, sink: Sink) {
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
            // Only a request still waiting for its data (not one a timeout already ended).
            (_, Sink::H2c { slot, .. })
                if self.st.borrow().reqs[slot as usize].state == ReqState::AwaitH2c =>
            {
                self.finish(slot, status::DATA_TRANSFER_ERROR.retryable(), 0);
            }
            _ => {}
        }
    }

    pub(super) fn dispatch(
        &self,
        hdr: &HeaderBytes,
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

pub(super) fn sink_digest_ok(sink: &Sink, reqs: &[Req], len: usize, received: &[u8]) -> bool {
    let data = match sink {
        Sink::Capsule(b) => &b.as_slice()[..len],
        Sink::Term(v) => &v[..len],
        Sink::H2c { slot, off } => match &reqs[*slot as usize].buf {
            Some(b) => &b.as_slice()[*off..*off + len],
            None => return false,
        },
    };
    Framer::data_digest_ok(data, received)
}
