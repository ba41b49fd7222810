//! Block ranges moved as contiguous pool buffers ("pieces" of at most [`PIECE_BYTES`]):
//! what the parity jobs and the rebuild source read from several bdevs and combine with
//! the GF(2^8) kernel, which wants whole slices.

use crate::channel::IoChannel;
use crate::io::{BdevIo, IoStatus, IoType};
use crate::wait::submit_wait;
use strata_reactor::dma::{self, DmaBuf};

/// Bytes of one piece (a large pool buffer holds one).
pub const PIECE_BYTES: u64 = 128 << 10;

fn status(io: &BdevIo) -> Result<(), IoStatus> {
    if io.status.is_success() {
        Ok(())
    } else {
        Err(io.status)
    }
}

/// An exclusive pool buffer of exactly `len` bytes.
pub async fn buffer(len: usize) -> Result<DmaBuf, IoStatus> {
    let mut b = dma::alloc_wait(len)
        .await
        .map_err(|_| IoStatus::InvalidArgument)?;
    if !b.set_len(len) {
        return Err(IoStatus::InvalidArgument);
    }
    Ok(b)
}

/// Reads `n` blocks at `lba` into one buffer (`n` blocks fit in a piece).
pub async fn read(ch: &IoChannel, lba: u64, n: u64) -> Result<DmaBuf, IoStatus> {
    let b = buffer((n * ch.block_size() as u64) as usize).await?;
    let mut io = submit_wait(ch, BdevIo::read(lba, n, b)).await;
    status(&io)?;
    io.bufs.pop().ok_or(IoStatus::Failed)
}

/// Reads blocks `lba..lba+n` of a bdev of `have` blocks: blocks past its end read as zero
/// (a group member smaller than the parity).
pub async fn read_zero_extended(
    ch: &IoChannel,
    lba: u64,
    n: u64,
    have: u64,
) -> Result<DmaBuf, IoStatus> {
    let bs = ch.block_size() as u64;
    let inside = have.saturating_sub(lba).min(n);
    if inside == n {
        return read(ch, lba, n).await;
    }
    let mut b = buffer((n * bs) as usize).await?;
    if inside > 0 {
        let part = read(ch, lba, inside).await?;
        b.as_mut_slice()[..part.len()].copy_from_slice(part.as_slice());
    }
    b.as_mut_slice()[(inside * bs) as usize..].fill(0);
    Ok(b)
}

/// Writes `data` (a view or an exclusive buffer) at `lba` as `t` (write, XOR write, or GF
/// XOR write with `coef`).
pub async fn write(
    ch: &IoChannel,
    t: IoType,
    lba: u64,
    data: DmaBuf,
    coef: u8,
) -> Result<(), IoStatus> {
    let n = data.len() as u64 / ch.block_size() as u64;
    let mut io = BdevIo::new(t, lba, n);
    io.gf_coef = coef;
    io.bufs.push(data);
    status(&submit_wait(ch, io).await)
}

/// A read-only view of a whole buffer.
pub fn view(b: &DmaBuf) -> Result<DmaBuf, IoStatus> {
    b.share(0, b.len()).ok_or(IoStatus::Failed)
}

/// Whether every byte is zero.
pub fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}
