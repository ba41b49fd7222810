//! The daemon's few direct system calls.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Takes an exclusive, non-blocking flock. Ok(false) when another process holds it.
pub fn try_lock_exclusive(f: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}
