//! A blocking wrapper over [`Controller`] for tests and tools: every call submits, then polls
//! (sleeping in the socket between polls) until the command completes or the timeout passes.
//! Transfers larger than the controller's MDTS (or 65536 blocks) are split.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::controller::QueueRef;
use super::{
    cmd, Completion, Controller, ControllerOptions, DataDir, HostError, IoBuf, NamespaceInfo,
};
use crate::spec::status;
use crate::spec::Sqe;

/// Blocking access to a controller. I/O goes to I/O queue 0 unless a queue is named.
#[derive(Debug)]
pub struct BlockingController {
    ctrl: Controller,
    timeout: Duration,
    next_cookie: u64,
}

impl BlockingController {
    pub fn connect(
        addr: SocketAddr,
        subnqn: &str,
        opts: ControllerOptions,
    ) -> Result<BlockingController, HostError> {
        let timeout = opts.timeout;
        Ok(Self::new(Controller::connect(addr, subnqn, opts)?, timeout))
    }

    pub fn new(ctrl: Controller, timeout: Duration) -> BlockingController {
        BlockingController {
            ctrl,
            timeout,
            next_cookie: 1,
        }
    }

    pub fn controller(&self) -> &Controller {
        &self.ctrl
    }
    pub fn controller_mut(&mut self) -> &mut Controller {
        &mut self.ctrl
    }
    pub fn into_inner(self) -> Controller {
        self.ctrl
    }
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }
    pub fn namespaces(&self) -> &[NamespaceInfo] {
        self.ctrl.namespaces()
    }

    fn ns(&self, nsid: u32) -> Result<&NamespaceInfo, HostError> {
        self.ctrl
            .namespace(nsid)
            .ok_or_else(|| HostError::InvalidArgument(format!("no namespace {nsid}")))
    }

    /// Runs a command on I/O queue `q` and returns its completion whatever the status.
    pub fn io_raw(&mut self, q: usize, sqe: Sqe, data: DataDir) -> Result<Completion, HostError> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let deadline = Instant::now() + self.timeout;
        let cid = self.ctrl.submit_io(q, sqe, data, cookie)?;
        loop {
            let ar = self.ctrl.poll_admin();
            let qp = self
                .ctrl
                .io_queue(q)
                .ok_or_else(|| HostError::InvalidArgument(format!("no I/O queue {q}")))?;
            let r = qp.poll();
            if let Some(c) = qp.take_completion(cid) {
                // A command failed by a dying connection reports why the connection died.
                r?;
                return Ok(c);
            }
            r?;
            ar?;
            let now = Instant::now();
            if now >= deadline {
                return Err(HostError::Timeout);
            }
            qp.wait((deadline - now).min(Duration::from_millis(5)))?;
        }
    }

    /// Runs a command on I/O queue 0; a failed status is an error.
    pub fn io(&mut self, sqe: Sqe, data: DataDir) -> Result<Completion, HostError> {
        self.io_raw(0, sqe, data)?.into_result()
    }

    /// Runs an admin command; a failed status is an error.
    pub fn admin(&mut self, sqe: Sqe, data: DataDir) -> Result<Completion, HostError> {
        self.ctrl.admin_exec(sqe, data)
    }

    /// Blocks per command: MDTS, at most 65536, at most 1 MiB.
    fn chunk_blocks(&self, bs: usize) -> usize {
        let max = self.ctrl.max_transfer().unwrap_or(usize::MAX).min(1 << 20);
        (max / bs).clamp(1, 65536)
    }

    pub fn read_blocks(&mut self, nsid: u32, lba: u64, n: u64) -> Result<Vec<u8>, HostError> {
        let bs = self.ns(nsid)?.block_size as usize;
        let step = self.chunk_blocks(bs) as u64;
        let mut out = Vec::with_capacity(n as usize * bs);
        let mut done = 0;
        while done < n {
            let k = (n - done).min(step);
            let c = self.io(
                cmd::read(nsid, lba + done, k as u32),
                DataDir::FromController(IoBuf::Heap(vec![0; k as usize * bs])),
            )?;
            let data = c.data.map(IoBuf::into_vec).unwrap_or_default();
            out.extend_from_slice(&data);
            done += k;
        }
        Ok(out)
    }

    fn data_cmd(
        &mut self,
        nsid: u32,
        lba: u64,
        data: &[u8],
        make: fn(u32, u64, u32) -> Sqe,
    ) -> Result<(), HostError> {
        let bs = self.ns(nsid)?.block_size as usize;
        if data.is_empty() || !data.len().is_multiple_of(bs) {
            return Err(HostError::InvalidArgument(format!(
                "{} bytes is not a whole number of {bs}-byte blocks",
                data.len()
            )));
        }
        let step = self.chunk_blocks(bs);
        for (i, ch) in data.chunks(step * bs).enumerate() {
            let at = lba + (i * step) as u64;
            self.io(
                make(nsid, at, (ch.len() / bs) as u32),
                DataDir::ToController(IoBuf::Heap(ch.to_vec())),
            )?;
        }
        Ok(())
    }

    pub fn write_blocks(&mut self, nsid: u32, lba: u64, data: &[u8]) -> Result<(), HostError> {
        self.data_cmd(nsid, lba, data, cmd::write)
    }

    /// strata's XOR write: the stored blocks become `stored ^ data`.
    pub fn xor_blocks(&mut self, nsid: u32, lba: u64, data: &[u8]) -> Result<(), HostError> {
        self.data_cmd(nsid, lba, data, cmd::xor_write)
    }

    /// Compare: Ok(true) when equal, Ok(false) on Compare Failure.
    pub fn compare_blocks(&mut self, nsid: u32, lba: u64, data: &[u8]) -> Result<bool, HostError> {
        match self.data_cmd(nsid, lba, data, cmd::compare) {
            Ok(()) => Ok(true),
            Err(e) if e.is_status(status::COMPARE_FAILURE) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn write_zeroes(&mut self, nsid: u32, lba: u64, n: u64) -> Result<(), HostError> {
        let mut done = 0;
        while done < n {
            let k = (n - done).min(65536);
            self.io(
                cmd::write_zeroes(nsid, lba + done, k as u32, false),
                DataDir::None,
            )?;
            done += k;
        }
        Ok(())
    }

    /// Dataset Management / Deallocate of (LBA, blocks) ranges.
    pub fn deallocate(&mut self, nsid: u32, ranges: &[(u64, u32)]) -> Result<(), HostError> {
        if ranges.is_empty() || ranges.len() > 256 {
            return Err(HostError::InvalidArgument("1..=256 DSM ranges".into()));
        }
        self.io(
            cmd::dsm_deallocate(nsid, ranges.len()),
            DataDir::ToController(IoBuf::Heap(cmd::dsm_ranges(ranges))),
        )?;
        Ok(())
    }

    pub fn flush(&mut self, nsid: u32) -> Result<(), HostError> {
        self.io(cmd::flush(nsid), DataDir::None)?;
        Ok(())
    }

    /// strata's checksum: one CRC32C per `chunk` blocks (0 means 1) over `n` blocks.
    pub fn checksum(
        &mut self,
        nsid: u32,
        lba: u64,
        n: u32,
        chunk: u32,
    ) -> Result<Vec<u32>, HostError> {
        let c = self.io(
            cmd::checksum(nsid, lba, n, chunk),
            DataDir::FromController(IoBuf::Heap(vec![0; cmd::checksum_len(n, chunk)])),
        )?;
        let data = c.data.map(IoBuf::into_vec).unwrap_or_default();
        Ok(data
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    pub fn identify(&mut self, cns: u8, nsid: u32, cntid: u16) -> Result<Vec<u8>, HostError> {
        self.ctrl.identify(cns, nsid, cntid)
    }

    pub fn get_log_page(&mut self, lid: u8, nsid: u32, len: usize) -> Result<Vec<u8>, HostError> {
        self.ctrl.get_log_page(lid, nsid, len, 0)
    }

    /// Splits the mirror behind namespace `nsid` with a point-in-time image (strata's
    /// vendor admin command C0h); returns the regions the image still owes its secondary.
    pub fn mirror_split(&mut self, nsid: u32) -> Result<u32, HostError> {
        Ok(self
            .admin(super::cmd::mirror_split(nsid), DataDir::None)?
            .cqe
            .dw0)
    }

    /// Starts a backup of the image behind `nsid` (vendor admin command C1h) with these
    /// JSON parameters (`{"repository": ..., "type"?, "mode"?, "chunk_kb"?, "id"?}`).
    pub fn mirror_backup(&mut self, nsid: u32, params: &str) -> Result<(), HostError> {
        let data = DataDir::ToController(IoBuf::Heap(params.as_bytes().to_vec()));
        self.admin(super::cmd::mirror_backup(nsid), data)
            .map(|_| ())
    }

    /// The image and backup state of the mirror behind `nsid` (vendor admin command C2h),
    /// as the JSON text the target sent.
    pub fn mirror_status(&mut self, nsid: u32) -> Result<String, HostError> {
        let data = DataDir::FromController(IoBuf::Heap(vec![0u8; 4096]));
        let c = self.admin(super::cmd::mirror_status(nsid), data)?;
        let raw = c
            .data
            .as_ref()
            .map(|d| d.as_slice().to_vec())
            .unwrap_or_default();
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Ok(String::from_utf8_lossy(&raw[..end]).into_owned())
    }

    pub fn keep_alive(&mut self) -> Result<(), HostError> {
        self.ctrl.keep_alive()
    }

    pub fn reconnect(&mut self) -> Result<Vec<(QueueRef, Completion)>, HostError> {
        self.ctrl.reconnect()
    }

    pub fn disconnect(self) -> Result<(), HostError> {
        self.ctrl.disconnect()
    }
}
