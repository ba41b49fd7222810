//! Block ranges moved as contiguous pool buffers ("pieces" of at most [`PIECE_BYTES`]):
//! what the parity jobs and the rebuild source read from several bdevs and combine with
//! the GF(2^8) kernel, which wants whole slices.

use crate::channel::IoChannel;
use crate::io::{BdevIo, IoStatus, IoType};
use crate::wait::submit_wait;
use strata_reactor::dma::{self, DmaBuf};

/// Bytes of one piece (a large pool buffer holds one).
pub const PIECE_BYTES: u64 = 128 << 10;

use crate::wait::status;

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

/// Reads blocks `lba..lba+n` of every input `(channel, its blocks)` at once; blocks past
/// an input's end read as zero (a group member smaller than the parity). The buffers in
/// input order.
pub async fn read_inputs(
    inputs: &[(IoChannel, u64)],
    lba: u64,
    n: u64,
) -> Result<Vec<DmaBuf>, IoStatus> {
    let mut waits = Vec::with_capacity(inputs.len());
    for (ch, have) in inputs {
        let bs = ch.block_size() as u64;
        let mut b = buffer((n * bs) as usize).await?;
        let inside = have.saturating_sub(lba).min(n);
        b.as_mut_slice()[(inside * bs) as usize..].fill(0);
        // The device fills only the blocks it has; the zeroed tail comes back with the
        // buffer's full length.
        b.set_len((inside * bs) as usize);
        waits.push(if inside == 0 {
            Err(b)
        } else {
            Ok(submit_wait(ch, BdevIo::read(lba, inside, b)))
        });
    }
    let mut out = Vec::with_capacity(inputs.len());
    let mut failed = None;
    let full = |mut b: DmaBuf, len: usize| {
        let ok = b.set_len(len);
        (b, ok)
    };
    for (w, (ch, _)) in waits.into_iter().zip(inputs) {
        let len = (n * ch.block_size() as u64) as usize;
        match w {
            Err(zero) => out.push(full(zero, len).0),
            Ok(w) => {
                let mut io = w.await;
                match (status(&io), io.bufs.pop().map(|b| full(b, len))) {
                    (Ok(()), Some((b, true))) => out.push(b),
                    (Err(st), _) => failed = failed.or(Some(st)),
                    (Ok(()), _) => failed = failed.or(Some(IoStatus::Failed)),
                }
            }
        }
    }
    failed.map_or(Ok(out), Err)
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

/// The pieces of blocks `a..a+n`: `(lba, blocks)`.
pub fn pieces(a: u64, n: u64, block_size: u32) -> Vec<(u64, u64)> {
    let per = PIECE_BYTES / block_size as u64;
    (0..n.div_ceil(per))
        .map(|k| (a + k * per, per.min(n - k * per)))
        .collect()
}

/// Reads every `(lba, blocks)` range at once (all in flight together); the buffers in
/// order.
pub async fn read_many(ch: &IoChannel, ranges: &[(u64, u64)]) -> Result<Vec<DmaBuf>, IoStatus> {
    let bs = ch.block_size() as u64;
    let mut waits = Vec::with_capacity(ranges.len());
    for &(lba, n) in ranges {
        let b = buffer((n * bs) as usize).await?;
        waits.push(submit_wait(ch, BdevIo::read(lba, n, b)));
    }
    let mut out = Vec::with_capacity(ranges.len());
    let mut failed = None;
    for w in waits {
        let mut io = w.await;
        match (status(&io), io.bufs.pop()) {
            (Ok(()), Some(b)) => out.push(b),
            (Err(st), _) => failed = failed.or(Some(st)),
            (Ok(()), None) => failed = failed.or(Some(IoStatus::Failed)),
        }
    }
    failed.map_or(Ok(out), Err)
}

/// Writes every `(lba, data)` as `t` at once (all in flight together).
pub async fn write_many(
    ch: &IoChannel,
    t: IoType,
    coef: u8,
    items: impl IntoIterator<Item = (u64, DmaBuf)>,
) -> Result<(), IoStatus> {
    let bs = ch.block_size() as u64;
    let waits: Vec<_> = items
        .into_iter()
        .map(|(lba, data)| {
            let mut io = BdevIo::new(t, lba, data.len() as u64 / bs);
            io.gf_coef = coef;
            io.bufs.push(data);
            submit_wait(ch, io)
        })
        .collect();
    let mut failed = None;
    for w in waits {
        if let Err(st) = status(&w.await) {
            failed = failed.or(Some(st));
        }
    }
    failed.map_or(Ok(()), Err)
}

/// A read-only view of a whole buffer.
pub fn view(b: &DmaBuf) -> Result<DmaBuf, IoStatus> {
    b.share(0, b.len()).ok_or(IoStatus::Failed)
}

/// Whether every byte is zero.
pub fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}
