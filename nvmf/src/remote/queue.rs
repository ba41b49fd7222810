//! One reactor's I/O queue pair to a remote controller.
//!
//! All bdevs of a controller share the reactor's [`IoQueue`]; it lives in a thread-local
//! map and is polled by a poller on the queue pair's socket, so the data path takes no lock
//! and never leaves the reactor. A bdev I/O becomes one or more NVMe commands (split at the
//! controller's transfer limit and at 65536 blocks); its buffers move into the queue pair
//! and come back with the completions, so nothing is copied.
//!
//! While the path is down the queue holds I/O; a command the lost connection failed is
//! re-submitted after the reconnect (it is idempotent: read, write, zeroes, unmap, flush,
//! checksum), except an XOR write, which may already have been applied and fails with a
//! path error. Once the controller's fast-fail timer fires, held and new I/O fail with a
//! path error at once.

use super::ctrlr::{Event, Shared};
use crate::host::{cmd, Completion, DataDir, HostError, IoBuf, QueuePair, HOST_PATH_ERROR};
use crate::spec::cmd::io as op;
use crate::spec::status;
use crate::spec::Sqe;
use smallvec::SmallVec;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use strata_bdev::bufs::{join_into, Bufs};
use strata_bdev::{BdevError, BdevIo, ChecksumAlg, IoStatus, IoType};
use strata_reactor::dma::DmaBuf;
use strata_reactor::{clock, PollerHandle};

thread_local! {
    static QUEUES: RefCell<HashMap<u64, Rc<IoQueue>>> = RefCell::new(HashMap::new());
}

/// Most blocks one NVMe read/write/zeroes command carries (NLB is 16 bits, 0-based).
const MAX_NLB: u64 = 65536;
/// Most ranges in one Dataset Management command.
const MAX_DSM_RANGES: usize = 256;

/// One command of a request: its LBA range and the part of the I/O's buffers it moves.
#[derive(Default)]
struct Part {
    lba: u64,
    nlb: u32,
    /// Bytes the command moves (data, or digests for a checksum).
    len: u32,
    /// The buffer part; in the queue pair while the command is in flight.
    buf: Option<DmaBuf>,
    /// Buffer bytes beyond the transfer: no command, kept to give the buffers back whole.
    spare: bool,
    /// Sent in the current attempt (in flight or completed).
    sent: bool,
}

impl Part {
    fn command(lba: u64, nlb: u64, buf: Option<DmaBuf>) -> Part {
        Part {
            lba,
            nlb: nlb as u32,
            len: buf.as_ref().map(|b| b.len() as u32).unwrap_or(0),
            buf,
            spare: false,
            sent: false,
        }
    }
    fn spare(buf: DmaBuf) -> Part {
        Part {
            buf: Some(buf),
            spare: true,
            ..Default::default()
        }
    }
}

type Parts = SmallVec<[Part; 2]>;

/// Cuts `bufs` into commands of at most `per_cmd` blocks over `lba..lba + n`. A command of
/// `nlb` blocks takes `bytes(nlb)` bytes of one segment; `fit(len)` is the most blocks whose
/// bytes fit in `len`. Left-over buffer becomes spare parts.
#[allow(clippy::too_many_arguments)]
fn carve(
    bufs: Bufs,
    parts: &mut Parts,
    lba: u64,
    n: u64,
    per_cmd: u64,
    bytes: impl Fn(u64) -> u64,
    fit: impl Fn(u64) -> u64,
) -> Result<(), &'static str> {
    let mut off = 0;
    let mut segs = bufs.into_iter();
    for seg in segs.by_ref() {
        let mut seg = Some(seg);
        while off < n {
            let Some(s) = seg.as_mut() else { break };
            if s.is_empty() {
                break;
            }
            let nlb = (n - off).min(per_cmd).min(fit(s.len() as u64));
            if nlb == 0 {
                parts.extend(seg.take().map(Part::spare));
                parts.extend(segs.map(Part::spare));
                return Err("a buffer segment does not end on a block");
            }
            let b = bytes(nlb) as usize;
            let piece = if b < s.len() {
                s.split_to(b)
            } else {
                seg.take()
            };
            parts.push(Part::command(lba + off, nlb, piece));
            off += nlb;
        }
        parts.extend(seg.map(Part::spare));
        if off >= n {
            break;
        }
    }
    parts.extend(segs.map(Part::spare));
    if off < n {
        return Err("buffers shorter than the transfer");
    }
    Ok(())
}

fn spare_all(bufs: Bufs, parts: &mut Parts) {
    parts.extend(bufs.into_iter().map(Part::spare));
}

/// A bdev I/O in this queue. It waits in `waiting` until all its commands are sent (in
/// rounds when it has more commands than the queue has free slots), then completes when the
/// last one does.
#[derive(Default)]
struct Req {
    io: Option<BdevIo>,
    nsid: u32,
    parts: Parts,
    /// Commands sent and not completed.
    pending: u16,
    /// Commands of this attempt not sent yet (the request is in `waiting` while > 0).
    unsent: u16,
    /// Worst NVMe-level outcome of the commands so far (no further commands are sent).
    failed: Option<IoStatus>,
    /// A command was failed by this host's lost connection (resent after the reconnect).
    path_failed: bool,
    /// A command failed with a retryable status (resent `bdev_retry_count` times).
    retry: bool,
    retries: u32,
    submitted_at: u64,
}

impl Req {
    fn commands(&self) -> u16 {
        self.parts.iter().filter(|p| !p.spare).count() as u16
    }
    fn io_type(&self) -> Option<IoType> {
        self.io.as_ref().map(|i| i.io_type)
    }
    /// Starts a new attempt: every command is to be sent again.
    fn rearm(&mut self) {
        for p in self.parts.iter_mut() {
            p.sent = false;
        }
        self.unsent = self.commands();
        self.path_failed = false;
        self.retry = false;
    }
}

struct State {
    qp: Option<QueuePair>,
    /// Generation of `qp` (see [`Shared::epoch`]).
    epoch: u64,
    reqs: Vec<Req>,
    free: Vec<u32>,
    /// Requests waiting for a connection or for free command slots, in arrival order.
    waiting: VecDeque<u32>,
    destroyed: bool,
}

/// One reactor's queue pair to a controller. See the module documentation.
pub struct IoQueue {
    shared: Arc<Shared>,
    /// This reactor's index (its traffic counters).
    reactor: usize,
    me: Weak<IoQueue>,
    st: RefCell<State>,
    poller: RefCell<Option<PollerHandle>>,
    timeout_poller: RefCell<Option<PollerHandle>>,
}

/// This reactor's queue to the controller, made on first use.
pub(crate) fn get_or_create(shared: &Arc<Shared>) -> Result<Rc<IoQueue>, BdevError> {
    if let Some(q) = QUEUES.with(|m| m.borrow().get(&shared.id).cloned()) {
        return Ok(q);
    }
    let Some(reactor) = strata_reactor::current_index().filter(|&i| i < shared.traffic.len())
    else {
        return Err(BdevError::Reactor(
            strata_reactor::ReactorError::NotOnReactor,
        ));
    };
    let q = Rc::new_cyclic(|me| IoQueue {
        shared: shared.clone(),
        reactor,
        me: me.clone(),
        st: RefCell::new(State {
            qp: None,
            epoch: 0,
            reqs: Vec::new(),
            free: Vec::new(),
            waiting: VecDeque::new(),
            destroyed: false,
        }),
        poller: RefCell::new(None),
        timeout_poller: RefCell::new(None),
    });
    QUEUES.with(|m| m.borrow_mut().insert(shared.id, q.clone()));
    q.pick_up();
    if shared.nvme.timeout_us > 0 {
        let w = Rc::downgrade(&q);
        let period =
            Duration::from_micros(shared.nvme.timeout_us / 4).max(Duration::from_millis(10));
        let h = strata_reactor::register_periodic_poller("nvme_timeout", period, move || {
            w.upgrade().is_some_and(|q| q.check_timeouts())
        })?;
        *q.timeout_poller.borrow_mut() = Some(h);
    }
    Ok(q)
}

fn with_queue(id: u64, f: impl FnOnce(&Rc<IoQueue>)) {
    if let Some(q) = QUEUES.with(|m| m.borrow().get(&id).cloned()) {
        f(&q)
    }
}

/// Message from the control thread: a queue pair for this reactor waits in the hand-off slot.
pub(crate) fn pick_up(id: u64) {
    with_queue(id, |q| q.pick_up())
}

/// Message from the control thread: connections older than `epoch` are gone.
pub(crate) fn disconnect(id: u64, epoch: u64) {
    with_queue(id, |q| q.disconnect(epoch, "controller reset"))
}

/// Message from the control thread: the fast-fail timer of the outage that ended
/// connection `epoch` fired (ignored by a queue already on a newer connection).
pub(crate) fn fail_waiting(id: u64, epoch: u64) {
    with_queue(id, |q| {
        if q.st.borrow().epoch <= epoch {
            q.fail_waiting(IoStatus::PathError)
        }
    })
}

/// Message from the control thread: namespace `nsid` is gone (or is another device now):
/// its held I/O fails instead of reaching whatever answers to that NSID after the reconnect.
pub(crate) fn fail_nsid(id: u64, nsid: u32) {
    with_queue(id, |q| q.fail_nsid(nsid))
}

/// Message from the control thread: the controller is being deleted.
pub(crate) fn destroy(id: u64) {
    if let Some(q) = QUEUES.with(|m| m.borrow_mut().remove(&id)) {
        q.st.borrow_mut().destroyed = true;
        q.disconnect(u64::MAX, "controller deleted");
        q.fail_waiting(IoStatus::Removed);
        q.poller.borrow_mut().take();
        q.timeout_poller.borrow_mut().take();
    }
}

impl IoQueue {
    /// Installs the hand-off queue pair if it belongs to the current connection.
    fn pick_up(&self) {
        let Some(idx) = strata_reactor::current_index() else {
            return;
        };
        let Some(slot) = self.shared.handoff.get(idx) else {
            return;
        };
        let Some((epoch, qp)) = slot.lock().take() else {
            return;
        };
        if epoch != self.shared.epoch.load(Ordering::Acquire) || self.st.borrow().destroyed {
            return; // stale: that connection was lost before it got here
        }
        // An older queue pair still here is closed first; its commands wait for this one.
        self.disconnect(epoch, "replaced by a new connection");
        let fd = qp.as_raw_fd();
        {
            let mut st = self.st.borrow_mut();
            st.qp = Some(qp);
            st.epoch = epoch;
        }
        let w = self.me.clone();
        let name = format!("nvme_poll_{}", self.shared.name);
        match strata_reactor::register_fd_poller(&name, fd, move || {
            w.upgrade().is_some_and(|q| q.poll())
        }) {
            Ok(h) => *self.poller.borrow_mut() = Some(h),
            Err(e) => {
                tracing::error!(ctrlr = %self.shared.name, error = %e, "cannot poll the I/O queue");
                self.lost(HostError::Protocol(format!("poller: {e}")));
                return;
            }
        }
        tracing::debug!(ctrlr = %self.shared.name, epoch, "I/O queue connected");
        self.drain_waiting();
    }

    /// Submits a bdev I/O for namespace `nsid` (from a channel of one of the bdevs).
    pub fn submit(&self, nsid: u32, mut io: BdevIo) {
        {
            let mut st = self.st.borrow_mut();
            if st.destroyed {
                drop(st);
                io.complete_deferred(IoStatus::Removed);
                return;
            }
            let idx = match st.free.pop() {
                Some(i) => i,
                None => {
                    st.reqs.push(Req::default());
                    (st.reqs.len() - 1) as u32
                }
            };
            // The request's part list is reused (its inline storage holds two parts).
            let mut parts = std::mem::take(&mut st.reqs[idx as usize].parts);
            parts.clear();
            if let Err(why) = self.plan(&mut io, &mut parts) {
                tracing::warn!(ctrlr = %self.shared.name, ?io, why, "I/O refused");
                let mut bufs = Bufs::new();
                for part in parts.drain(..) {
                    join_into(&mut bufs, part.buf);
                }
                io.bufs = bufs;
                st.reqs[idx as usize].parts = parts;
                st.free.push(idx);
                drop(st);
                io.complete_deferred(IoStatus::InvalidArgument);
                return;
            }
            let r = &mut st.reqs[idx as usize];
            r.io = Some(io);
            r.nsid = nsid;
            r.parts = parts;
            r.pending = 0;
            r.failed = None;
            r.retries = 0;
            r.rearm();
            st.waiting.push_back(idx);
        }
        if self.st.borrow().qp.is_none() && self.shared.fast_fail.load(Ordering::Acquire) {
            self.fail_waiting(IoStatus::PathError);
            return;
        }
        self.drain_waiting();
    }

    /// Cuts the I/O's buffers into commands. On error the parts made so far come back so
    /// the buffers can be returned.
    fn plan(&self, io: &mut BdevIo, parts: &mut Parts) -> Result<(), &'static str> {
        let bs = io.block_size.max(1) as u64;
        let max_bytes = (self.shared.max_xfer.load(Ordering::Relaxed) as u64).max(bs);
        let (lba, n) = (io.offset_blocks, io.num_blocks);
        match io.io_type {
            IoType::Read | IoType::Write | IoType::XorWrite | IoType::GfXorWrite => {
                let per_cmd = (max_bytes / bs).clamp(1, MAX_NLB);
                let bufs = std::mem::take(&mut io.bufs);
                carve(bufs, parts, lba, n, per_cmd, |nlb| nlb * bs, |len| len / bs)?;
            }
            IoType::Checksum => {
                let chunk = io.chunk_blocks.max(1) as u64;
                let dlen = io.checksum_alg.digest_len() as u64;
                // Whole chunks per command, within NLB and the transfer limit.
                let chunks_per_cmd = (MAX_NLB / chunk).min(max_bytes / dlen);
                let bufs = std::mem::take(&mut io.bufs);
                if chunks_per_cmd == 0 {
                    spare_all(bufs, parts);
                    return Err("checksum chunk larger than one command");
                }
                if bufs.len() != 1 {
                    spare_all(bufs, parts);
                    return Err("checksum digests need one buffer");
                }
                let per_cmd = chunks_per_cmd * chunk;
                carve(
                    bufs,
                    parts,
                    lba,
                    n,
                    per_cmd,
                    |nlb| nlb.div_ceil(chunk) * dlen,
                    |len| (len / dlen) * chunk,
                )?;
            }
            IoType::WriteZeroes => {
                let mut off = 0;
                while off < n {
                    let nlb = (n - off).min(MAX_NLB);
                    parts.push(Part::command(lba + off, nlb, None));
                    off += nlb;
                }
            }
            IoType::Unmap => {
                if n.div_ceil(u32::MAX as u64) as usize > MAX_DSM_RANGES {
                    return Err("unmap range too large for one command");
                }
                // One Dataset Management command over the whole range (see `command`).
                parts.push(Part::command(lba, 0, None));
            }
            IoType::Flush => parts.push(Part::command(0, 0, None)),
            IoType::Reset => return Err("reset is not supported on a remote namespace"),
        }
        Ok(())
    }

    /// Sends waiting requests' commands while there are command slots, in arrival order.
    fn drain_waiting(&self) {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let Some(qp) = st.qp.as_mut() else { return };
        // Requests that ended with nothing in flight (every submission refused).
        let mut refused: SmallVec<[u32; 2]> = SmallVec::new();
        while let Some(&idx) = st.waiting.front() {
            if qp.is_dead() || !qp.is_initialized() || qp.free_slots() == 0 {
                break;
            }
            let r = &mut st.reqs[idx as usize];
            let Some(io) = r.io.as_ref() else {
                st.waiting.pop_front();
                continue;
            };
            let ctx = CmdCtx {
                t: io.io_type,
                nsid: r.nsid,
                alg: io.checksum_alg,
                chunk: io.chunk_blocks,
                coef: io.gf_coef,
                io_lba: io.offset_blocks,
                io_blocks: io.num_blocks,
            };
            if r.pending == 0 {
                r.submitted_at = clock::ticks();
            }
            for (k, part) in r.parts.iter_mut().enumerate() {
                if part.spare || part.sent {
                    continue;
                }
                if qp.free_slots() == 0 {
                    break;
                }
                let (sqe, data) = command(&ctx, part);
                let cookie = ((idx as u64) << 16) | k as u64;
                part.sent = true;
                r.unsent -= 1;
                // Cannot fail: the queue pair is alive, initialized and has a slot.
                match qp.submit(sqe, data, cookie) {
                    Ok(_) => r.pending += 1,
                    Err(e) => {
                        tracing::error!(ctrlr = %self.shared.name, error = %e, "submission refused");
                        r.failed = Some(IoStatus::Failed);
                        r.unsent = 0;
                        break;
                    }
                }
            }
            if r.unsent > 0 {
                break; // the rest of this request goes when slots free up
            }
            st.waiting.pop_front();
            if r.pending == 0 {
                refused.push(idx);
            }
        }
        // No write here: the queue pair's poller sends everything queued in this reactor
        // turn with one writev (a submission always happens in a busy turn, which the
        // reactor follows with another turn, pollers included, before it may sleep).
        let dead = qp.is_dead();
        let mut done: SmallVec<[(BdevIo, IoStatus); 2]> = SmallVec::new();
        for idx in refused {
            done.extend(self.finish_locked(st, idx));
        }
        drop(guard);
        for (io, s) in done {
            io.complete_deferred(s);
        }
        if dead {
            self.lost(HostError::Closed);
        }
    }

    /// The reactor's poller: moves data, handles completions, refills the queue.
    fn poll(&self) -> bool {
        let r = {
            let mut st = self.st.borrow_mut();
            match st.qp.as_mut() {
                Some(qp) => qp.poll(),
                None => return false,
            }
        };
        let n = self.reap();
        if let Err(e) = r {
            self.lost(e);
            return true;
        }
        if n > 0 {
            self.drain_waiting();
        }
        // Data still queued for the socket: stay busy, since only readability wakes an
        // idle reactor in interrupt mode.
        let tx = self.st.borrow().qp.as_ref().is_some_and(|q| q.tx_pending());
        n > 0 || tx
    }

    /// Handles every completion the queue pair holds; returns how many.
    fn reap(&self) -> usize {
        let mut n = 0;
        loop {
            let (c, local) = {
                let mut st = self.st.borrow_mut();
                let Some(qp) = st.qp.as_mut() else { return n };
                // A dead queue pair's path errors are its own, not the remote's.
                let local = qp.is_dead();
                match qp.pop_completion() {
                    Some(c) => (c, local),
                    None => return n,
                }
            };
            n += 1;
            if let Some((io, s)) = self.on_completion(c, local) {
                io.complete(s);
            }
        }
    }

    /// One command completed. `local`: a path error in it was made by this host when its
    /// connection died (the command may not have reached the remote). Returns the I/O when
    /// the request is finished, for the caller to complete.
    fn on_completion(&self, c: Completion, local: bool) -> Option<(BdevIo, IoStatus)> {
        let idx = (c.cookie >> 16) as usize;
        let k = (c.cookie & 0xffff) as usize;
        let mut st = self.st.borrow_mut();
        let retry_limit = self.shared.nvme.bdev_retry_count;
        let destroyed = st.destroyed;
        let Some(r) = st
            .reqs
            .get_mut(idx)
            .filter(|r| r.io.is_some() && r.pending > 0)
        else {
            tracing::warn!(ctrlr = %self.shared.name, cookie = c.cookie, "completion for no request");
            return None;
        };
        let t = r.io_type();
        let part = r.parts.get_mut(k)?;
        let expect = part.len as usize;
        let is_read = matches!(t, Some(IoType::Read | IoType::Checksum));
        let (s, transferred) = (c.status(), c.transferred);
        match c.data {
            Some(IoBuf::Dma(b)) => part.buf = Some(b),
            Some(IoBuf::Heap(_)) | None => {}
        }
        if s.is_success() {
            let traffic = &self.shared.traffic[self.reactor];
            if is_read {
                traffic
                    .received
                    .fetch_add(transferred as u64, Ordering::Relaxed);
            } else if matches!(
                t,
                Some(IoType::Write | IoType::XorWrite | IoType::GfXorWrite)
            ) {
                traffic.sent.fetch_add(expect as u64, Ordering::Relaxed);
            }
            if is_read && transferred as usize != expect {
                tracing::error!(ctrlr = %self.shared.name, got = transferred, expect, "short read from the remote");
                r.failed = Some(IoStatus::Failed);
            }
        } else if s == HOST_PATH_ERROR && local {
            r.path_failed = true;
        } else if t.is_some_and(never_resent) {
            // Never resent: the remote may have applied it, and applying it twice undoes it.
            r.failed = Some(nvme_to_io_status(s));
        } else if !s.dnr && (retry_limit < 0 || r.retries < retry_limit as u32) {
            r.retry = true;
        } else {
            r.failed = Some(nvme_to_io_status(s));
        }
        r.pending -= 1;
        if r.pending > 0 {
            return None;
        }
        if r.unsent > 0 {
            // Part of the request is still to be sent (it is at the head of `waiting`).
            if r.failed.is_none() && !r.path_failed && !r.retry {
                return None;
            }
            let xor = t.is_some_and(never_resent);
            let fast_fail = self.shared.fast_fail.load(Ordering::Acquire);
            if r.failed.is_none() && !xor && !fast_fail && !destroyed {
                // Start over with every command (idempotent), still first in line.
                if r.retry {
                    r.retries += 1;
                }
                r.rearm();
                return None;
            }
            r.unsent = 0;
            let i = idx as u32;
            st.waiting.retain(|&w| w != i);
        }
        self.finish_locked(&mut st, idx as u32)
    }

    /// All commands of request `idx` are done: retry it, or give the I/O back.
    fn finish_locked(&self, st: &mut State, idx: u32) -> Option<(BdevIo, IoStatus)> {
        let fast_fail = self.shared.fast_fail.load(Ordering::Acquire);
        let r = &mut st.reqs[idx as usize];
        let xor = r.io_type().is_some_and(never_resent);
        let status = if let Some(f) = r.failed {
            f
        } else if r.path_failed && (xor || fast_fail || st.destroyed) {
            IoStatus::PathError
        } else if r.path_failed || r.retry {
            if r.retry {
                r.retries += 1;
            }
            r.rearm();
            st.waiting.push_back(idx);
            return None;
        } else {
            IoStatus::Success
        };
        Some((self.release(st, idx), status))
    }

    /// Frees request `idx`, giving its buffers back to the I/O whole.
    fn release(&self, st: &mut State, idx: u32) -> BdevIo {
        let r = &mut st.reqs[idx as usize];
        let mut io =
            r.io.take()
                .unwrap_or_else(|| BdevIo::new(IoType::Flush, 0, 0));
        let mut bufs = Bufs::new();
        for part in r.parts.drain(..) {
            join_into(&mut bufs, part.buf);
        }
        io.bufs = bufs;
        r.pending = 0;
        r.unsent = 0;
        st.free.push(idx);
        io
    }

    /// The connection died (seen on this reactor): close it, hold its I/O, tell the control
    /// thread.
    fn lost(&self, e: HostError) {
        let epoch = self.st.borrow().epoch;
        tracing::warn!(ctrlr = %self.shared.name, error = %e, "I/O queue lost its connection");
        self.disconnect(epoch + 1, "connection lost");
        let _ = self.shared.events.send(Event::Lost {
            epoch,
            why: e.to_string(),
        });
    }

    /// Closes the queue pair if it is older than `epoch`; its outstanding commands complete
    /// with a path error and their requests wait for the next connection (or fail). I/O
    /// finished here completes from a later call stack (this may run inside a submit).
    fn disconnect(&self, epoch: u64, why: &str) {
        let qp = {
            let mut st = self.st.borrow_mut();
            if st.qp.is_none() || st.epoch >= epoch {
                return;
            }
            st.qp.take()
        };
        self.poller.borrow_mut().take();
        let Some(mut qp) = qp else { return };
        tracing::debug!(ctrlr = %self.shared.name, why, "closing I/O queue");
        qp.close();
        while let Some(c) = qp.pop_completion() {
            if let Some((io, s)) = self.on_completion(c, true) {
                io.complete_deferred(s);
            }
        }
        if self.shared.fast_fail.load(Ordering::Acquire) || self.st.borrow().destroyed {
            self.fail_waiting(IoStatus::PathError);
        }
    }

    /// Fails every waiting request with `status` (from a later call stack). A request with
    /// commands still in flight stops sending and fails when they complete.
    fn fail_waiting(&self, status: IoStatus) {
        self.fail_waiting_where(status, |_| true)
    }

    /// Fails the waiting requests of namespace `nsid` (it is gone, or another device now).
    fn fail_nsid(&self, nsid: u32) {
        self.fail_waiting_where(IoStatus::Removed, |r| r.nsid == nsid)
    }

    fn fail_waiting_where(&self, status: IoStatus, which: impl Fn(&Req) -> bool) {
        let mut done: SmallVec<[BdevIo; 4]> = SmallVec::new();
        {
            let mut st = self.st.borrow_mut();
            let mut keep = VecDeque::new();
            while let Some(idx) = st.waiting.pop_front() {
                let r = &mut st.reqs[idx as usize];
                if !which(r) {
                    keep.push_back(idx);
                    continue;
                }
                r.unsent = 0;
                if r.pending > 0 {
                    r.failed.get_or_insert(status);
                    continue;
                }
                done.push(self.release(&mut st, idx));
            }
            // Only non-empty when a filter left some (a namespace's requests were failed).
            if !keep.is_empty() {
                st.waiting = keep;
            }
        }
        for io in done {
            io.complete_deferred(status);
        }
    }

    /// Periodic: a command outstanding longer than `timeout_us` resets the controller.
    fn check_timeouts(&self) -> bool {
        let limit = clock::duration_to_ticks(Duration::from_micros(self.shared.nvme.timeout_us));
        let now = clock::ticks();
        let (late, epoch) = {
            let st = self.st.borrow();
            if st.qp.is_none() {
                return false;
            }
            let late = st
                .reqs
                .iter()
                .any(|r| r.pending > 0 && now.saturating_sub(r.submitted_at) > limit);
            (late, st.epoch)
        };
        if late {
            tracing::error!(ctrlr = %self.shared.name, timeout_us = self.shared.nvme.timeout_us, "I/O timed out: resetting the controller");
            self.disconnect(epoch + 1, "I/O timeout");
            let _ = self.shared.events.send(Event::Lost {
                epoch,
                why: "I/O timeout".into(),
            });
        }
        late
    }
}

/// What every command of one request shares.
struct CmdCtx {
    t: IoType,
    nsid: u32,
    alg: ChecksumAlg,
    chunk: u32,
    coef: u8,
    io_lba: u64,
    io_blocks: u64,
}

/// XOR writes are never resent: the remote may have applied one, and applying it twice
/// undoes it.
fn never_resent(t: IoType) -> bool {
    matches!(t, IoType::XorWrite | IoType::GfXorWrite)
}

/// The command for one part of a request, and its data (the part's buffer moves in).
fn command(c: &CmdCtx, part: &mut Part) -> (Sqe, DataDir) {
    let buf = part.buf.take().map(IoBuf::Dma);
    let (lba, nlb, nsid) = (part.lba, part.nlb, c.nsid);
    let sqe = match c.t {
        IoType::Read => cmd::read(nsid, lba, nlb),
        IoType::Write => cmd::write(nsid, lba, nlb),
        IoType::XorWrite => cmd::xor_write(nsid, lba, nlb),
        IoType::GfXorWrite => cmd::gf_xor_write(nsid, lba, nlb, c.coef),
        IoType::Checksum => {
            let a = match c.alg {
                ChecksumAlg::Crc32c => op::CHECKSUM_CRC32C,
                ChecksumAlg::Sha256 => op::CHECKSUM_SHA256,
            };
            cmd::checksum_with(nsid, lba, nlb, c.chunk, a)
        }
        IoType::WriteZeroes => cmd::write_zeroes(nsid, lba, nlb, false),
        IoType::Unmap => {
            let mut ranges: SmallVec<[(u64, u32); 4]> = SmallVec::new();
            let mut off = 0;
            while off < c.io_blocks {
                let k = (c.io_blocks - off).min(u32::MAX as u64);
                ranges.push((c.io_lba + off, k as u32));
                off += k;
            }
            let data = DataDir::ToController(IoBuf::Heap(cmd::dsm_ranges(&ranges)));
            return (cmd::dsm_deallocate(nsid, ranges.len()), data);
        }
        IoType::Flush | IoType::Reset => cmd::flush(nsid),
    };
    let data = match (c.t, buf) {
        (_, None) => DataDir::None,
        (IoType::Read | IoType::Checksum, Some(b)) => DataDir::FromController(b),
        (_, Some(b)) => DataDir::ToController(b),
    };
    (sqe, data)
}

/// The bdev status for a failed NVMe completion.
fn nvme_to_io_status(s: status::Status) -> IoStatus {
    if s == status::LBA_OUT_OF_RANGE {
        IoStatus::OutOfRange
    } else if s == status::INVALID_OPCODE {
        IoStatus::Unsupported
    } else if s == status::INVALID_FIELD {
        IoStatus::InvalidArgument
    } else if s.sct == 3 {
        IoStatus::PathError
    } else {
        IoStatus::Failed
    }
}
