//! Awaiting single I/Os from async code (management jobs, tests): off the hot path, so a small
//! allocation per I/O is fine here.

use crate::channel::IoChannel;
use crate::io::{BdevIo, IoSink, IoStatus, IoType};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use strata_reactor::dma::{self, DmaBuf};

#[derive(Default)]
struct WaitSlot {
    io: Option<BdevIo>,
    waker: Option<Waker>,
}

struct WaitSink(RefCell<WaitSlot>);

impl IoSink for WaitSink {
    fn io_done(self: Rc<Self>, io: BdevIo, _tag: u64) {
        let w = {
            let mut s = self.0.borrow_mut();
            s.io = Some(io);
            s.waker.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// A submitted I/O, resolving to it once completed.
pub struct IoWait(Rc<WaitSink>);

impl Future for IoWait {
    type Output = BdevIo;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<BdevIo> {
        let mut s = self.0 .0.borrow_mut();
        match s.io.take() {
            Some(io) => Poll::Ready(io),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Submits `io` and resolves to it once completed (status set).
pub fn submit_wait(ch: &IoChannel, io: BdevIo) -> IoWait {
    submit_wait_with(io, |io| ch.submit(io))
}

/// Hands `io` to `submit` (any submission path) and resolves to it once completed.
pub fn submit_wait_with(mut io: BdevIo, submit: impl FnOnce(BdevIo)) -> IoWait {
    let sink = Rc::new(WaitSink(RefCell::new(WaitSlot::default())));
    io.push_completion(sink.clone(), 0);
    submit(io);
    IoWait(sink)
}

/// Buffers covering `len` bytes, each as large as the pool allows.
pub async fn alloc_bufs(len: usize) -> Result<smallvec::SmallVec<[DmaBuf; 2]>, IoStatus> {
    let max = dma::max_buf_size();
    let mut out = smallvec::SmallVec::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(max);
        out.push(
            dma::alloc_wait(n)
                .await
                .map_err(|_| IoStatus::InvalidArgument)?,
        );
        left -= n;
    }
    Ok(out)
}

/// The I/O's outcome as a `Result`.
pub(crate) fn status(io: &BdevIo) -> Result<(), IoStatus> {
    if io.status.is_success() {
        Ok(())
    } else {
        Err(io.status)
    }
}

/// Reads blocks into a new byte vector.
pub async fn read_vec(
    ch: &IoChannel,
    offset_blocks: u64,
    num_blocks: u64,
) -> Result<Vec<u8>, IoStatus> {
    let len = (num_blocks * ch.block_size() as u64) as usize;
    let mut io = BdevIo::new(IoType::Read, offset_blocks, num_blocks);
    io.bufs = alloc_bufs(len).await?;
    let io = submit_wait(ch, io).await;
    status(&io)?;
    let mut out = vec![0u8; len];
    io.for_each_segment(len, |off, s| out[off..off + s.len()].copy_from_slice(s));
    Ok(out)
}

async fn data_io(
    ch: &IoChannel,
    t: IoType,
    offset_blocks: u64,
    data: &[u8],
) -> Result<(), IoStatus> {
    let bs = ch.block_size() as usize;
    if data.is_empty() || !data.len().is_multiple_of(bs) {
        return Err(IoStatus::InvalidArgument);
    }
    let mut io = BdevIo::new(t, offset_blocks, (data.len() / bs) as u64);
    io.bufs = alloc_bufs(data.len()).await?;
    io.for_each_segment_mut(data.len(), |off, s| {
        let n = s.len();
        s.copy_from_slice(&data[off..off + n])
    });
    status(&submit_wait(ch, io).await)
}

/// Writes whole blocks from a byte slice.
pub async fn write_slice(ch: &IoChannel, offset_blocks: u64, data: &[u8]) -> Result<(), IoStatus> {
    data_io(ch, IoType::Write, offset_blocks, data).await
}

/// XORs whole blocks from a byte slice into the bdev.
pub async fn xor_write_slice(
    ch: &IoChannel,
    offset_blocks: u64,
    data: &[u8],
) -> Result<(), IoStatus> {
    data_io(ch, IoType::XorWrite, offset_blocks, data).await
}

/// An I/O without data (write_zeroes, unmap, flush, reset).
pub async fn no_data(
    ch: &IoChannel,
    t: IoType,
    offset_blocks: u64,
    num_blocks: u64,
) -> Result<(), IoStatus> {
    status(&submit_wait(ch, BdevIo::new(t, offset_blocks, num_blocks)).await)
}

/// The digests (`alg`) of each chunk of `chunk_blocks` blocks, computed by the bdev, back
/// to back.
pub async fn digests(
    ch: &IoChannel,
    offset_blocks: u64,
    num_blocks: u64,
    chunk_blocks: u32,
    alg: crate::io::ChecksumAlg,
) -> Result<Vec<u8>, IoStatus> {
    let mut io = BdevIo::new(IoType::Checksum, offset_blocks, num_blocks);
    io.chunk_blocks = chunk_blocks;
    io.checksum_alg = alg;
    io.bufs = alloc_bufs((io.digest_bytes() as usize).max(4)).await?;
    let io = submit_wait(ch, io).await;
    status(&io)?;
    Ok(io.digests())
}

/// CRC32C of each chunk of `chunk_blocks` blocks, computed by the bdev.
pub async fn checksums(
    ch: &IoChannel,
    offset_blocks: u64,
    num_blocks: u64,
    chunk_blocks: u32,
) -> Result<Vec<u32>, IoStatus> {
    let mut io = BdevIo::new(IoType::Checksum, offset_blocks, num_blocks);
    io.chunk_blocks = chunk_blocks;
    let n = io.checksum_count() as usize;
    io.bufs = alloc_bufs((n * 4).max(4)).await?;
    let io = submit_wait(ch, io).await;
    status(&io)?;
    Ok(io.checksums())
}
