//! NVMe I/O commands mapped onto bdev I/O on the reactor's channels.

use super::*;
use crate::spec::cmd::io;
use strata_bdev::bufs::{join_into, Bufs};
use strata_bdev::ChecksumAlg;

impl Connection {
    // ---- I/O commands ------------------------------------------------------------------

    /// The reactor's channel to namespace `nsid`, its block size and its ANA group.
    pub(super) fn channel(&self, s: &mut State, nsid: u32) -> Option<(IoChannel, u32, u32)> {
        let gen = s.subsys.as_ref()?.ns_generation.load(Ordering::Acquire);
        if gen != s.ns_gen {
            s.ns_cache.clear();
            s.ns_gen = gen;
        }
        if let Some(c) = s.ns_cache.iter().find(|c| c.nsid == nsid) {
            return Some((c.ch.clone(), c.block_size, c.anagrpid));
        }
        let ns = s.subsys.as_ref()?.namespace(nsid)?;
        let ch = ns.desc.channel().ok()?;
        let bs = ch.block_size();
        s.ns_cache.push(NsChannel {
            nsid,
            ch: ch.clone(),
            block_size: bs,
            anagrpid: ns.anagrpid,
        });
        Some((ch, bs, ns.anagrpid))
    }

    pub(super) fn take_slot(&self, s: &mut State, sqe: Sqe) -> Option<u16> {
        let slot = s.free.pop()?;
        let r = &mut s.reqs[slot as usize];
        r.state = ReqState::Executing;
        r.sqe = sqe;
        r.buf = None;
        r.view = None;
        r.len = 0;
        r.r2t_off = 0;
        r.r2t_len = 0;
        r.h2c_got = 0;
        r.pending = 0;
        r.status = Status::SUCCESS;
        Some(slot)
    }

    pub(super) fn on_io(&self, sqe: Sqe, capsule: Option<DmaBuf>) {
        let mut s = self.st.borrow_mut();
        let Some((ch, bs, anagrpid)) = self.channel(&mut s, sqe.nsid) else {
            drop(s);
            self.respond_now(sqe.cid, status::INVALID_NAMESPACE, 0);
            return;
        };
        // Through a listener where the namespace's ANA group is inaccessible, the host is
        // told to use another path.
        if let Some(refused) = s.ctrl.as_ref().and_then(|c| c.ana_refusal(anagrpid)) {
            drop(s);
            self.respond_now(sqe.cid, refused, 0);
            return;
        }
        // Never two commands with one CID in flight, and at most SQSIZE + 1 outstanding
        // (the queue size the host asked for at Connect).
        let (word, bit) = (sqe.cid as usize / 64, 1u64 << (sqe.cid % 64));
        if s.cids_in_flight[word] & bit != 0 {
            drop(s);
            tracing::warn!(peer = %self.peer, cid = sqe.cid, "command ID already in flight");
            self.respond_now(sqe.cid, status::COMMAND_ID_CONFLICT, 0);
            return;
        }
        let outstanding = s.reqs.len() - s.free.len();
        if s.sq_size > 0 && outstanding > s.sq_size as usize {
            drop(s);
            tracing::warn!(peer = %self.peer, outstanding, "more commands outstanding than the queue size the host asked for");
            self.respond_now(sqe.cid, status::COMMAND_ID_CONFLICT, 0);
            return;
        }
        let Some(slot) = self.take_slot(&mut s, sqe) else {
            drop(s);
            tracing::warn!(peer = %self.peer, "more commands outstanding than the queue size");
            self.respond_now(sqe.cid, status::COMMAND_ID_CONFLICT, 0);
            return;
        };
        s.cids_in_flight[word] |= bit;
        drop(s);
        let max_io = self.st.borrow().max_io_size as u64;
        let len = match sqe.opcode {
            io::READ | io::WRITE | io::VENDOR_XOR_WRITE | io::COMPARE => sqe.nlb() * bs as u64,
            // The coefficient is CDW13 bits 7:0; 0 (it would erase the delta) or stray high
            // bits are refused before any data moves.
            io::VENDOR_GF_XOR_WRITE if sqe.cdw13 == 0 || sqe.cdw13 > 0xff => {
                tracing::warn!(peer = %self.peer, cdw13 = sqe.cdw13, "GF XOR write with an invalid coefficient");
                self.finish(slot, status::INVALID_FIELD, 0);
                return;
            }
            io::VENDOR_GF_XOR_WRITE => sqe.nlb() * bs as u64,
            io::VENDOR_CHECKSUM => match checksum_alg(sqe.cdw14) {
                Some(alg) => alg.digest_len() as u64 * sqe.nlb().div_ceil(sqe.cdw13.max(1) as u64),
                None => {
                    self.finish(slot, status::INVALID_FIELD, 0);
                    return;
                }
            },
            io::DATASET_MANAGEMENT => (((sqe.cdw10 & 0xff) + 1) * 16) as u64,
            io::FLUSH | io::WRITE_ZEROES => 0,
            _ => {
                self.finish(slot, status::INVALID_OPCODE, 0);
                return;
            }
        };
        if len > max_io {
            self.finish(slot, status::INVALID_FIELD, 0);
            return;
        }
        let dir = direction(sqe.opcode);
        if len > 0 && (sqe.sgl.length as u64) < len {
            self.finish(slot, status::DATA_SGL_LENGTH_INVALID, 0);
            return;
        }
        {
            let mut s = self.st.borrow_mut();
            s.reqs[slot as usize].len = len as u32;
        }
        match dir {
            Direction::HostToController if len > 0 => match (sqe.sgl.sgl_id, capsule) {
                (SGL_IN_CAPSULE, Some(mut b)) if b.len() as u64 >= len => {
                    b.set_len(len as usize);
                    self.st.borrow_mut().reqs[slot as usize].buf = Some(b);
                    self.execute(slot, &ch);
                }
                (SGL_TRANSPORT, None) => {
                    self.st.borrow_mut().reqs[slot as usize].state = ReqState::NeedBuffer;
                    self.start_h2c(slot);
                }
                _ => self.finish(slot, status::SGL_DESCRIPTOR_TYPE_INVALID, 0),
            },
            Direction::ControllerToHost if len > 0 => {
                if sqe.sgl.sgl_id != SGL_TRANSPORT {
                    self.finish(slot, status::SGL_DESCRIPTOR_TYPE_INVALID, 0);
                    return;
                }
                self.execute(slot, &ch);
            }
            _ => self.execute(slot, &ch),
        }
    }

    /// Allocates the buffer for a host-to-controller transfer and sends the first R2T,
    /// within the connection's and the host's R2T buffer quotas (else the write waits).
    pub(super) fn start_h2c(&self, slot: u16) {
        let mut s = self.st.borrow_mut();
        let len = s.reqs[slot as usize].len as usize;
        if !self.r2t_take(&mut s) {
            s.reqs[slot as usize].state = ReqState::NeedBuffer;
            s.need_buffer.push_back(slot);
            if !s.r2t_quota_logged {
                s.r2t_quota_logged = true;
                let (held, host) = (s.r2t_held, self.host_r2t.load(Ordering::Relaxed));
                drop(s);
                tracing::warn!(peer = %self.peer, connection_holds = held, host_holds = host, "R2T buffer quota reached: further writes wait until the host sends the data it was asked for");
            }
            return;
        }
        let Some(mut b) = dma::alloc(len) else {
            s.r2t_held -= 1;
            if s.r2t_host_limit > 0 {
                self.host_r2t.fetch_sub(1, Ordering::AcqRel);
            }
            s.reqs[slot as usize].state = ReqState::NeedBuffer;
            s.need_buffer.push_back(slot);
            return;
        };
        b.set_len(len);
        let r = &mut s.reqs[slot as usize];
        r.buf = Some(b);
        r.state = ReqState::AwaitH2c;
        r.r2t_charged = true;
        s.push_r2t(slot, 0);
    }

    /// Whether the quotas would allow one more R2T buffer.
    fn r2t_room(&self, s: &State) -> bool {
        (s.r2t_conn_limit == 0 || s.r2t_held < s.r2t_conn_limit)
            && (s.r2t_host_limit == 0 || self.host_r2t.load(Ordering::Acquire) < s.r2t_host_limit)
    }

    /// Counts one more R2T buffer against the quotas, if they allow it.
    fn r2t_take(&self, s: &mut State) -> bool {
        if s.r2t_conn_limit > 0 && s.r2t_held >= s.r2t_conn_limit {
            return false;
        }
        if s.r2t_host_limit > 0 && self.host_r2t.fetch_add(1, Ordering::AcqRel) >= s.r2t_host_limit
        {
            self.host_r2t.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        s.r2t_held += 1;
        true
    }

    /// The request's data is in (or it ended): its buffer no longer counts.
    pub(super) fn r2t_release(&self, s: &mut State, slot: u16) {
        let r = &mut s.reqs[slot as usize];
        if !r.r2t_charged {
            return;
        }
        r.r2t_charged = false;
        s.r2t_held -= 1;
        if s.r2t_host_limit > 0 {
            self.host_r2t.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(super) fn on_h2c_data(&self, slot: u16, n: u32) {
        let ch = {
            let mut s = self.st.borrow_mut();
            let r = &mut s.reqs[slot as usize];
            if r.state != ReqState::AwaitH2c {
                return; // ended meanwhile (it cannot be: see `timeouts`); never run it twice
            }
            r.h2c_got += n;
            if r.h2c_got < r.r2t_len {
                return;
            }
            let next = r.r2t_off + r.r2t_len;
            if next < r.len {
                s.push_r2t(slot, next);
                return;
            }
            self.r2t_release(&mut s, slot);
            let r = &mut s.reqs[slot as usize];
            r.state = ReqState::Executing;
            let nsid = r.sqe.nsid;
            self.channel(&mut s, nsid).map(|c| c.0)
        };
        match ch {
            Some(ch) => self.execute(slot, &ch),
            None => self.finish(slot, status::INVALID_NAMESPACE, 0),
        }
    }

    pub(super) fn retry_need_buffer(&self) {
        loop {
            let slot = {
                let mut s = self.st.borrow_mut();
                match s.need_buffer.front() {
                    Some(&slot) => {
                        let r = &s.reqs[slot as usize];
                        let len = r.len as usize;
                        // A write that still needs its R2T waits while a quota is full.
                        let for_r2t = direction(r.sqe.opcode) == Direction::HostToController
                            && r.buf.is_none();
                        if for_r2t && !self.r2t_room(&s) {
                            return;
                        }
                        if len > 0 && dma::exhausted() {
                            return;
                        }
                        s.need_buffer.pop_front();
                        slot
                    }
                    None => return,
                }
            };
            let (opcode, has_data) = {
                let s = self.st.borrow();
                let r = &s.reqs[slot as usize];
                (r.sqe.opcode, r.buf.is_some())
            };
            // A write still waiting for its data buffer asks for the data; anything else
            // (reads, and a compare whose data arrived) waits for its execution buffer.
            if direction(opcode) == Direction::HostToController && !has_data {
                self.start_h2c(slot);
            } else {
                let nsid = self.st.borrow().reqs[slot as usize].sqe.nsid;
                let ch = self.channel(&mut self.st.borrow_mut(), nsid).map(|c| c.0);
                match ch {
                    Some(ch) => self.execute(slot, &ch),
                    None => self.finish(slot, status::INVALID_NAMESPACE, 0),
                }
            }
            // Still no buffer in the pool this request needs: wait for the next tick rather
            // than spin on it.
            if self.st.borrow().reqs[slot as usize].state == ReqState::NeedBuffer {
                return;
            }
        }
    }

    /// Turns a request whose data (if any) is in place into bdev I/O.
    pub(super) fn execute(&self, slot: u16, ch: &IoChannel) {
        let Some(me) = self.me.upgrade() else { return };
        let mut s = self.st.borrow_mut();
        // Zero-copy: the bdev lends a read's data instead of filling a buffer. Not under TLS
        // (user-space TLS reads the bytes to seal them) or data digests (the digest reads
        // them too): only the kernel reads a view (RegionView::send_parts).
        let zcopy = s.zcopy
            && self.tls.is_none()
            && !s.digests.is_some_and(|(_, dd)| dd)
            && ch.lends_read_views();
        let r = &mut s.reqs[slot as usize];
        let sqe = r.sqe;
        let mut ios: smallvec::SmallVec<[BdevIo; 2]> = smallvec::SmallVec::new();
        match sqe.opcode {
            io::READ if zcopy => {
                ios.push(BdevIo::read_view(sqe.slba(), sqe.nlb()));
            }
            io::READ | io::VENDOR_CHECKSUM | io::COMPARE => {
                let len = if sqe.opcode == io::COMPARE {
                    (sqe.nlb() * ch.block_size() as u64) as usize
                } else {
                    r.len as usize
                };
                let Some(mut b) = dma::alloc(len) else {
                    r.state = ReqState::NeedBuffer;
                    s.need_buffer.push_back(slot);
                    return;
                };
                b.set_len(len);
                let t = if sqe.opcode == io::VENDOR_CHECKSUM {
                    IoType::Checksum
                } else {
                    IoType::Read
                };
                let mut bio = BdevIo::new(t, sqe.slba(), sqe.nlb());
                if t == IoType::Checksum {
                    bio.chunk_blocks = sqe.cdw13.max(1);
                    // Checked when the command arrived.
                    bio.checksum_alg = checksum_alg(sqe.cdw14).unwrap_or_default();
                }
                bio.bufs.push(b);
                ios.push(bio);
            }
            io::WRITE | io::VENDOR_XOR_WRITE | io::VENDOR_GF_XOR_WRITE => {
                let t = match sqe.opcode {
                    io::WRITE => IoType::Write,
                    io::VENDOR_XOR_WRITE => IoType::XorWrite,
                    _ => IoType::GfXorWrite,
                };
                let mut bio = BdevIo::new(t, sqe.slba(), sqe.nlb());
                if t == IoType::GfXorWrite {
                    // Checked (1..=255) when the command arrived.
                    bio.gf_coef = sqe.cdw13 as u8;
                }
                if let Some(b) = r.buf.take() {
                    bio.bufs.push(b);
                }
                ios.push(bio);
            }
            io::FLUSH => ios.push(BdevIo::new(IoType::Flush, 0, 0)),
            io::WRITE_ZEROES => ios.push(BdevIo::new(IoType::WriteZeroes, sqe.slba(), sqe.nlb())),
            // Only deallocate (AD, CDW11 bit 2) does anything; other attributes are hints.
            io::DATASET_MANAGEMENT if sqe.cdw11 & 4 != 0 => {
                if let Some(b) = &r.buf {
                    for range in b.as_slice().chunks_exact(16) {
                        let nlb =
                            u32::from_le_bytes([range[4], range[5], range[6], range[7]]) as u64;
                        let slba = u64::from_le_bytes([
                            range[8], range[9], range[10], range[11], range[12], range[13],
                            range[14], range[15],
                        ]);
                        if nlb > 0 {
                            ios.push(BdevIo::new(IoType::Unmap, slba, nlb));
                        }
                    }
                }
            }
            _ => {}
        }
        if ios.is_empty() {
            drop(s);
            self.finish(slot, Status::SUCCESS, 0);
            return;
        }
        r.state = ReqState::Executing;
        r.pending = ios.len() as u32;
        drop(s);
        for mut bio in ios {
            bio.push_completion(me.clone(), slot as u64);
            ch.submit(bio);
        }
    }

    /// Completes request `slot` with a status (no data).
    pub(super) fn finish(&self, slot: u16, st: Status, dw0: u32) {
        let mut s = self.st.borrow_mut();
        let cid = s.reqs[slot as usize].sqe.cid;
        self.r2t_release(&mut s, slot);
        s.reqs[slot as usize].buf = None;
        s.reqs[slot as usize].view = None;
        s.reqs[slot as usize].state = ReqState::Sending;
        let cqe = self.cqe(&mut s, cid, st, dw0);
        drop(s);
        self.queue_resp(cqe, Some(slot));
    }
}

pub(super) fn bdev_status(io: &BdevIo) -> Status {
    match io.status {
        IoStatus::Success => Status::SUCCESS,
        IoStatus::OutOfRange => status::LBA_OUT_OF_RANGE,
        IoStatus::InvalidArgument => status::INVALID_FIELD,
        IoStatus::Unsupported => status::INVALID_OPCODE,
        IoStatus::Removed => status::NAMESPACE_NOT_READY,
        IoStatus::PathError => crate::host::HOST_PATH_ERROR,
        IoStatus::Aborted => status::ABORT_REQUESTED,
        IoStatus::NoMemory | IoStatus::Pending => status::INTERNAL_ERROR.retryable(),
        IoStatus::Failed => match io.io_type {
            IoType::Read | IoType::Checksum => status::UNRECOVERED_READ_ERROR,
            _ => status::WRITE_FAULT,
        },
    }
}

/// Whether a completed read carries its data in one buffer of at least `len` bytes (every
/// layer gives the parts it carved back, joined; this rejoins what a layer did not).
fn whole_read_buffer(bio: &mut BdevIo, len: usize) -> bool {
    if bio.bufs.len() > 1 {
        let mut joined = Bufs::new();
        join_into(&mut joined, std::mem::take(&mut bio.bufs));
        bio.bufs = joined;
    }
    bio.bufs.len() == 1 && bio.bufs[0].len() >= len
}

impl IoSink for Connection {
    fn io_done(self: Rc<Self>, mut bio: BdevIo, tag: u64) {
        let slot = tag as u16;
        let st = bdev_status(&bio);
        let mut s = self.st.borrow_mut();
        if s.phase == Phase::Closed {
            return;
        }
        let r = &mut s.reqs[slot as usize];
        if !st.is_success() && r.status.is_success() {
            r.status = st;
        }
        r.pending = r.pending.saturating_sub(1);
        if r.pending > 0 {
            return;
        }
        let sqe = r.sqe;
        let mut final_status = r.status;
        let mut zcopy = false;
        let data_len = r.len as usize;
        if final_status.is_success()
            && matches!(sqe.opcode, io::READ | io::VENDOR_CHECKSUM | io::COMPARE)
            && bio.view.as_ref().is_none_or(|v| v.len() < data_len)
            && !whole_read_buffer(&mut bio, data_len)
        {
            tracing::error!(peer = %self.peer, cid = sqe.cid, segments = bio.bufs.len(),
                "a read's buffer came back from the bdev in pieces or short: failing the command");
            final_status = status::INTERNAL_ERROR;
        }
        if final_status.is_success() && matches!(sqe.opcode, io::READ | io::VENDOR_CHECKSUM) {
            r.buf = bio.bufs.pop();
            r.view = bio.view.take();
            zcopy = r.view.is_some();
            r.state = ReqState::Sending;
            let (hd, dd) = s.digests.unwrap_or((false, false));
            let success = s.c2h_success;
            let ddgst = if dd {
                s.reqs[slot as usize]
                    .buf
                    .as_ref()
                    .map(|b| pdu::digest(&[&b.as_slice()[..data_len]]).to_le_bytes())
            } else {
                None
            };
            let hdr = pdu::data(
                pdu_type::C2H_DATA,
                sqe.cid,
                0,
                0,
                data_len as u32,
                true,
                success,
                hd,
                dd,
            );
            if success {
                // Counts as consumed for the SQ head even without a CapsuleResp.
                s.sq_head = if s.sq_size == 0 {
                    0
                } else {
                    (s.sq_head + 1) % (s.sq_size + 1)
                };
            }
            s.push_tx(TxPdu {
                hdr,
                data: TxData::Slot {
                    slot,
                    off: 0,
                    len: data_len,
                },
                ddgst,
                sent: 0,
                free_slot: if success { Some(slot) } else { None },
                close_after: false,
            });
            drop(s);
            if !success {
                let mut s = self.st.borrow_mut();
                let cqe = self.cqe(&mut s, sqe.cid, Status::SUCCESS, 0);
                drop(s);
                self.queue_resp(cqe, Some(slot));
            }
        } else if final_status.is_success() && sqe.opcode == io::COMPARE {
            // Host data arrived into r.buf before; the read came back in bio.
            let same = match (r.buf.as_ref(), bio.bufs.first()) {
                (Some(h), Some(d)) => h.as_slice()[..data_len] == d.as_slice()[..data_len],
                _ => false,
            };
            drop(s);
            self.finish(
                slot,
                if same {
                    Status::SUCCESS
                } else {
                    status::COMPARE_FAILURE
                },
                0,
            );
        } else {
            drop(s);
            self.finish(slot, final_status, 0);
        }
        // One vectored write per reactor turn for all responses ready by then.
        if let Some(g) = self.group.upgrade() {
            if zcopy {
                g.count_zcopy_read();
            }
            g.mark_dirty(self.token);
        }
    }
}

/// The digest CDW14 of a checksum command selects, if it is one strata computes.
fn checksum_alg(cdw14: u32) -> Option<ChecksumAlg> {
    match cdw14 {
        io::CHECKSUM_CRC32C => Some(ChecksumAlg::Crc32c),
        io::CHECKSUM_SHA256 => Some(ChecksumAlg::Sha256),
        _ => None,
    }
}
