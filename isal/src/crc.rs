//! CRC32C (Castagnoli, the iSCSI / NVMe-TCP digest) over ISA-L's `crc32_iscsi`.
//!
//! `crc32_iscsi(buf, len, init)` neither inverts `init` nor its result; the standard CRC32C
//! (what the `crc32c` crate computes) starts from all ones and inverts the result. So
//! `crc32c(d) = !crc32_iscsi(d, !0)` and `crc32c_append(c, d) = !crc32_iscsi(d, !c)`.

use crate::ffi;

/// Standard CRC32C of `data` (`crc32c(b"123456789") == 0xE306_9283`).
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// Continues a CRC32C: `crc32c_append(crc32c(a), b) == crc32c(a ++ b)`.
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    !ffi::crc32_iscsi_raw(data, !crc)
}
