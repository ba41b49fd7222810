//! The one system call the backup repository needs that std does not wrap: `syncfs(2)`,
//! which makes every file written on the repository's file system durable in one go (one
//! journal commit instead of an fsync per chunk file).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Syncs the whole file system holding `dir`.
pub fn syncfs(dir: &Path) -> io::Result<()> {
    let f = File::open(dir)?;
    // SAFETY: `f` is an open file descriptor for the duration of the call; syncfs reads
    // nothing from our memory and writes nothing to it.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
