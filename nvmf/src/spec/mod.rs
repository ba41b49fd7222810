//! NVMe and NVMe-over-Fabrics data structures, as `#[repr(C)]` little-endian types with
//! compile-time size checks. Untrusted bytes are decoded with zerocopy's checked
//! `read_from_bytes` (no `transmute`); every type here is valid for any bit pattern.

pub mod cmd;
pub mod fabrics;
pub mod identify;
pub mod log;
pub mod status;

pub use cmd::{Cqe, Sqe};
pub use status::Status;

/// Writes `s` into a fixed-size, space-padded ASCII field (serial, model, firmware).
pub fn put_ascii(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    for (d, b) in dst
        .iter_mut()
        .zip(s.bytes().filter(|b| b.is_ascii_graphic() || *b == b' '))
    {
        *d = b;
    }
}

/// Writes `s` into a fixed-size, NUL-padded field (NQNs).
pub fn put_nqn(dst: &mut [u8], s: &str) {
    dst.fill(0);
    let n = s.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Reads a NUL-terminated (or full-length) string field, if it is valid UTF-8.
pub fn get_cstr(src: &[u8]) -> Option<String> {
    let end = src.iter().position(|b| *b == 0).unwrap_or(src.len());
    std::str::from_utf8(&src[..end])
        .ok()
        .map(|s| s.trim_end().to_string())
}
