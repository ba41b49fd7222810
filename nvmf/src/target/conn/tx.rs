//! Transmit: the PDU queue, responses, vectored writes.

use super::*;
use crate::tcp::framer::MAX_HEADER_WITH_DIGEST;

pub(super) enum TxData {
    None,
    /// Bytes of request `slot`'s buffer.
    Slot {
        slot: u16,
        off: usize,
        len: usize,
    },
    Owned(Vec<u8>),
}

/// Responses queued for a host before its connection stops taking new commands.
pub(super) const TX_BACKLOG_PDUS: usize = 8192;
pub(super) const TX_BACKLOG_BYTES: usize = 8 << 20;

pub(super) struct TxPdu {
    pub(super) hdr: pdu::HeaderBuf,
    pub(super) data: TxData,
    pub(super) ddgst: Option<[u8; 4]>,
    /// Bytes of this PDU already written.
    pub(super) sent: usize,
    /// Free this request slot once the PDU is out.
    pub(super) free_slot: Option<u16>,
    pub(super) close_after: bool,
}

impl TxPdu {
    pub(super) fn total(&self) -> usize {
        let d = match &self.data {
            TxData::None => 0,
            TxData::Slot { len, .. } => *len,
            TxData::Owned(v) => v.len(),
        };
        self.hdr.len + d + if self.ddgst.is_some() { 4 } else { 0 }
    }
}

impl Connection {
    // ---- send --------------------------------------------------------------------------

    pub(super) fn queue_raw(&self, bytes: Vec<u8>, close_after: bool) {
        let mut s = self.st.borrow_mut();
        let hdr = pdu::HeaderBuf {
            bytes: [0; MAX_HEADER_WITH_DIGEST],
            len: 0,
        };
        s.push_tx(TxPdu {
            hdr,
            data: TxData::Owned(bytes),
            ddgst: None,
            sent: 0,
            free_slot: None,
            close_after,
        });
    }

    pub(super) fn queue_resp(&self, cqe: Cqe, free_slot: Option<u16>) {
        let mut s = self.st.borrow_mut();
        let hd = s.digests.is_some_and(|d| d.0);
        s.push_tx(TxPdu {
            hdr: pdu::capsule_resp(cqe, hd),
            data: TxData::None,
            ddgst: None,
            sent: 0,
            free_slot,
            close_after: false,
        });
    }

    pub(super) fn queue_c2h_owned(&self, cid: u16, d: Vec<u8>, success: bool) {
        let mut s = self.st.borrow_mut();
        let (hd, dd) = s.digests.unwrap_or((false, false));
        let ddgst = dd.then(|| pdu::digest(&[&d]).to_le_bytes());
        let hdr = pdu::data(
            pdu_type::C2H_DATA,
            cid,
            0,
            0,
            d.len() as u32,
            true,
            success,
            hd,
            dd,
        );
        s.push_tx(TxPdu {
            hdr,
            data: TxData::Owned(d),
            ddgst,
            sent: 0,
            free_slot: None,
            close_after: false,
        });
    }

    /// Writes queued PDUs until the socket would block.
    pub(crate) fn flush(&self) {
        let mut close = false;
        {
            let mut s = self.st.borrow_mut();
            if s.phase == Phase::Closed {
                return;
            }
            // TLS records sealed earlier go first (ciphertext is a byte stream too).
            let mut sealed_out = match self.sock_flush() {
                Ok(done) => done,
                Err(_) => {
                    close = true;
                    false
                }
            };
            while !close && sealed_out && !s.tx.is_empty() {
                let written = {
                    let st = &*s;
                    let mut iov: smallvec::SmallVec<[IoSlice<'_>; MAX_TX_IOV]> =
                        smallvec::SmallVec::new();
                    for p in st.tx.iter() {
                        if iov.len() + 3 > MAX_TX_IOV {
                            break;
                        }
                        let mut skip = p.sent;
                        push_iov(&mut iov, &mut skip, p.hdr.as_slice());
                        match &p.data {
                            TxData::None => {}
                            TxData::Owned(v) => push_iov(&mut iov, &mut skip, v),
                            TxData::Slot { slot, off, len } => {
                                let r = &st.reqs[*slot as usize];
                                if let Some(b) = &r.buf {
                                    push_iov(&mut iov, &mut skip, &b.as_slice()[*off..*off + *len]);
                                } else if let Some(v) = &r.view {
                                    // Views exist only on plain connections, where the
                                    // gathered slices go straight to writev.
                                    debug_assert!(self.tls.is_none());
                                    // SAFETY: the slice goes into `iov`, which only the
                                    // kernel reads (sock_write without TLS is a writev).
                                    if let Some(bytes) = unsafe { v.send_parts(*off, *len) } {
                                        push_iov(&mut iov, &mut skip, bytes);
                                    }
                                }
                            }
                        }
                        if let Some(d) = &p.ddgst {
                            push_iov(&mut iov, &mut skip, d);
                        }
                        if p.close_after {
                            break;
                        }
                    }
                    if iov.is_empty() {
                        break;
                    }
                    self.sock_write(&iov)
                };
                let mut n = match written {
                    Ok(0) => {
                        close = true;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        close = true;
                        break;
                    }
                };
                while n > 0 {
                    let Some(p) = s.tx.front_mut() else { break };
                    let left = p.total() - p.sent;
                    if n < left {
                        p.sent += n;
                        let slot = match p.data {
                            TxData::Slot { slot, .. } => Some(slot),
                            _ => None,
                        };
                        if let Some(slot) = slot {
                            if freeze_view(&mut s.reqs[slot as usize]) {
                                if let Some(g) = self.group.upgrade() {
                                    g.count_zcopy_frozen();
                                }
                            }
                        }
                        break;
                    }
                    n -= left;
                    if let Some(p) = s.tx.pop_front() {
                        if let TxData::Owned(d) = &p.data {
                            s.tx_owned -= d.len();
                        }
                        if let Some(slot) = p.free_slot {
                            let r = &mut s.reqs[slot as usize];
                            r.state = ReqState::Free;
                            r.buf = None;
                            r.view = None;
                            let cid = r.sqe.cid as usize;
                            s.cids_in_flight[cid / 64] &= !(1u64 << (cid % 64));
                            s.free.push(slot);
                        }
                        if p.close_after {
                            close = true;
                        }
                    }
                }
                if close {
                    break;
                }
            }
            if !close && self.tls.is_some() {
                sealed_out = self.sock_flush().unwrap_or(false);
            }
            let pending = !s.tx.is_empty() || !sealed_out;
            if let Some(g) = self.group.upgrade() {
                g.want_write(self.token, &self.stream, pending);
            }
        }
        if close {
            self.close("connection finished");
        }
    }
}

/// Adds the part of `b` not yet sent (`skip` counts bytes already written) to `iov`.
pub(super) fn push_iov<'a>(
    iov: &mut smallvec::SmallVec<[IoSlice<'a>; MAX_TX_IOV]>,
    skip: &mut usize,
    b: &'a [u8],
) {
    if *skip >= b.len() {
        *skip -= b.len();
    } else {
        iov.push(IoSlice::new(&b[*skip..]));
        *skip = 0;
    }
}

/// A read answered from a view whose C2HData went out only in part: the rest is copied into a
/// pool buffer now, so a write to those blocks before the next send cannot tear a block across
/// the two parts (single-block writes are atomic, AWUN 0). Only this backpressure path pays a
/// copy; without a buffer the view stays and is sent as it is. True if it copied.
fn freeze_view(r: &mut Req) -> bool {
    let Some(v) = r.view.as_ref() else {
        return false;
    };
    let Some(mut b) = dma::alloc(v.len()) else {
        tracing::debug!("no buffer to freeze a partly sent zero-copy read; sending from the view");
        return false;
    };
    b.set_len(v.len());
    if !v.copy_to(0, b.as_mut_slice()) {
        return false;
    }
    r.buf = Some(b);
    r.view = None;
    true
}
