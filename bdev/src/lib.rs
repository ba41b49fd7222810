//! strata's block device layer.
//!
//! [`Bdev`] is a block device (base or virtual); I/O reaches it through a per-reactor
//! [`IoChannel`] obtained from an open [`BdevDesc`] ([`registry::open`]). An I/O is a
//! recycled [`BdevIo`] carrying DMA pool buffers and a stack of completions, so the data path
//! allocates nothing and copies nothing it can avoid. The channel checks LBA ranges,
//! capabilities and buffer sizes, counts iostat ([`stats`]), and retries I/O a device
//! returned with `NoMemory`. [`modules`] holds one file per bdev type; [`kernels`] the XOR and
//! CRC kernels; [`wait`] async helpers for code that awaits single I/Os.

pub mod backup;
pub mod bdev;
pub mod bufs;
pub mod channel;
pub mod error;
pub mod io;
pub mod kernels;
pub mod module;
pub mod modules;
pub mod registry;
pub mod stats;
pub mod volume;
pub mod wait;

pub use bdev::{Bdev, BdevChannel, ConfigEntry};
pub use channel::IoChannel;
pub use error::BdevError;
pub use io::{BdevIo, ChecksumAlg, Completion, FnSink, IoSink, IoStatus, IoType};
pub use registry::{BdevDesc, BdevEvent, BdevHandle};
