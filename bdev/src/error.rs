//! Errors of the bdev layer. The JSON-RPC edge maps them with [`BdevError::errno`] (SPDK's
//! negative-errno convention); the NVMe edge maps I/O failures from [`crate::IoStatus`].

#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    #[error("bdev '{0}' already exists")]
    Exists(String),
    #[error("no bdev named '{0}'")]
    NotFound(String),
    #[error("bdev '{name}' is already claimed by {by}")]
    Claimed { name: String, by: String },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("{0} is not supported")]
    Unsupported(String),
    #[error("out of memory: {0}")]
    NoMemory(String),
    /// A device failed I/O the operation needed (writing superblocks, zeroing members).
    #[error("I/O error: {0}")]
    IoFailed(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("io_uring is unavailable: {0} (kernel too old, or disabled by /proc/sys/kernel/io_uring_disabled)")]
    UringUnavailable(std::io::Error),
    #[error("{0}")]
    Reactor(#[from] strata_reactor::ReactorError),
}

impl BdevError {
    /// Negative errno, as SPDK's RPC server reports bdev failures.
    pub fn errno(&self) -> i32 {
        match self {
            BdevError::Exists(_) => -libc::EEXIST,
            BdevError::NotFound(_) => -libc::ENODEV,
            BdevError::Claimed { .. } => -libc::EBUSY,
            BdevError::Invalid(_) => -libc::EINVAL,
            BdevError::Unsupported(_) => -libc::EOPNOTSUPP,
            BdevError::NoMemory(_) => -libc::ENOMEM,
            BdevError::IoFailed(_) => -libc::EIO,
            BdevError::Io { source, .. } => -source.raw_os_error().unwrap_or(libc::EIO),
            BdevError::UringUnavailable(_) => -libc::ENOSYS,
            BdevError::Reactor(_) => -libc::EIO,
        }
    }
}
