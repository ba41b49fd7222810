//! The NVMe/TCP host (initiator): used by strata-perf, tests and remote bdevs.
//!
//! - [`QueuePair`]: one NVMe/TCP connection (one queue). A non-blocking state machine driven by
//!   [`QueuePair::poll`] — from a reactor poller or a plain loop. Command slots are preallocated
//!   and indexed by CID; headers are encoded into reused buffers; data moves from/to
//!   caller-provided buffers ([`IoBuf`]) with no copy on send and at most one on receive.
//! - [`Controller`]: an admin queue plus N I/O queues, with controller bring-up (CC.EN,
//!   Identify, Number of Queues, namespaces), keep-alive, shutdown and reconnect.
//! - [`BlockingController`]: a blocking convenience wrapper with timeouts, for tests and tools.
//! - [`cmd`]: builders for the submission queue entries the host sends.
//!
//! Nothing received from the network can make the host panic: every header is validated with
//! [`PduLayout::of`](crate::tcp::pdu::PduLayout::of), and CIDs, transfer tags and offsets are
//! checked against the command they name. A violation ends the connection with an
//! H2CTermReq and a [`HostError`].

pub mod auth;
pub mod blocking;
pub mod cmd;
pub mod controller;
pub mod qpair;

pub use blocking::BlockingController;
pub use controller::{Controller, ControllerOptions, NamespaceInfo, QueueRef};
pub use qpair::{ConnectParams, HostTls, QueuePair, QueuePairOptions};

use crate::spec::status::Status;
use crate::spec::Cqe;
use strata_reactor::dma::DmaBuf;

/// Errors of the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("command failed: status type {sct:#x}, code {sc:#x}")]
    Status { sct: u8, sc: u8 },
    #[error("timed out")]
    Timeout,
    #[error("controller terminated the connection: fatal error status {fes:#x}, field {fei:#x}")]
    Term { fes: u16, fei: u32 },
    #[error("queue full")]
    QueueFull,
    #[error("connection closed")]
    Closed,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("TLS: {0}")]
    Tls(String),
}

impl HostError {
    /// The error for a failed completion status.
    pub fn from_status(s: Status) -> HostError {
        HostError::Status {
            sct: s.sct,
            sc: s.sc,
        }
    }

    /// Whether this is the failed completion status `s` (type and code).
    pub fn is_status(&self, s: Status) -> bool {
        matches!(self, HostError::Status { sct, sc } if (*sct, *sc) == (s.sct, s.sc))
    }
}

/// Status given to commands that were outstanding when their connection failed (path-related
/// status type, Host Pathing Error — what Linux reports).
pub const HOST_PATH_ERROR: Status = Status {
    sct: 3,
    sc: 0x70,
    dnr: false,
};

/// A data buffer: DMA-able pool memory on the hot path, or heap memory for admin commands and
/// tests.
#[derive(Debug)]
pub enum IoBuf {
    Dma(DmaBuf),
    Heap(Vec<u8>),
}

impl IoBuf {
    pub fn len(&self) -> usize {
        match self {
            IoBuf::Dma(b) => b.len(),
            IoBuf::Heap(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn as_slice(&self) -> &[u8] {
        match self {
            IoBuf::Dma(b) => b.as_slice(),
            IoBuf::Heap(v) => v,
        }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            IoBuf::Dma(b) => b.as_mut_slice(),
            IoBuf::Heap(v) => v,
        }
    }
    /// The bytes as a vector (copies a DMA buffer).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            IoBuf::Dma(b) => b.as_slice().to_vec(),
            IoBuf::Heap(v) => v,
        }
    }
}

impl From<DmaBuf> for IoBuf {
    fn from(b: DmaBuf) -> Self {
        IoBuf::Dma(b)
    }
}

impl From<Vec<u8>> for IoBuf {
    fn from(v: Vec<u8>) -> Self {
        IoBuf::Heap(v)
    }
}

/// The data of a command and its direction. The transfer length is the buffer's length.
#[derive(Debug, Default)]
pub enum DataDir {
    #[default]
    None,
    /// Host to controller (write, compare, xor_write, DSM ranges, Connect data).
    ToController(IoBuf),
    /// Controller to host (read, identify, log pages, checksum); filled in by the transfer.
    FromController(IoBuf),
}

impl DataDir {
    pub fn len(&self) -> usize {
        match self {
            DataDir::None => 0,
            DataDir::ToController(b) | DataDir::FromController(b) => b.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn into_buf(self) -> Option<IoBuf> {
        match self {
            DataDir::None => None,
            DataDir::ToController(b) | DataDir::FromController(b) => Some(b),
        }
    }
}

/// A finished command: the caller's cookie, the completion entry and the data buffer back.
#[derive(Debug)]
pub struct Completion {
    pub cookie: u64,
    pub cid: u16,
    pub cqe: Cqe,
    pub data: Option<IoBuf>,
    /// Bytes the controller transferred to the host (reads).
    pub transferred: u32,
}

impl Completion {
    pub fn status(&self) -> Status {
        Status::from_cqe_status(self.cqe.status)
    }
    pub fn is_success(&self) -> bool {
        self.status().is_success()
    }
    /// `Ok(self)` on success, the status as an error otherwise.
    pub fn into_result(self) -> Result<Completion, HostError> {
        let s = self.status();
        if s.is_success() {
            Ok(self)
        } else {
            Err(HostError::from_status(s))
        }
    }
}
