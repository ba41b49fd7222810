//! Scatter-gather lists of DMA buffers, and the two ways a layer hands parts of an I/O's
//! data to child I/Os without copying (see the aliasing rule in `strata_reactor::dma`):
//!
//! - data the children only read (writes, XOR writes): [`share_range`] appends read-only
//!   views, so any number of children (mirror legs, RAID members) read the same bytes;
//! - data the children fill (reads): a [`Carver`] moves consecutive parts out of the
//!   parent's list into the children (each child's device owns its part until completion),
//!   and [`join_into`] puts the parts back, joined, once the children return them.

use smallvec::SmallVec;
use strata_reactor::dma::DmaBuf;

/// An I/O's buffers, in data order.
pub type Bufs = SmallVec<[DmaBuf; 2]>;

/// Total bytes of a list.
pub fn total_len(bufs: &[DmaBuf]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// Appends read-only views of bytes `off..off + len` of `src` to `dst`. False if the range
/// is not inside `src`.
pub fn share_range(src: &[DmaBuf], mut off: usize, mut len: usize, dst: &mut Bufs) -> bool {
    for b in src {
        if len == 0 {
            break;
        }
        if off >= b.len() {
            off -= b.len();
            continue;
        }
        let n = (b.len() - off).min(len);
        match b.share(off, n) {
            Some(v) => dst.push(v),
            None => return false,
        }
        off = 0;
        len -= n;
    }
    len == 0
}

/// Copies `src` into the list from byte `off` on (as far as the list reaches).
///
/// # Panics
/// If a segment it writes is read-only (a read's buffers are always writable: the bdev
/// channel refuses a read whose buffers are not).
pub fn copy_into_at(dst: &mut [DmaBuf], mut off: usize, mut src: &[u8]) {
    for b in dst.iter_mut() {
        if src.is_empty() {
            break;
        }
        if off >= b.len() {
            off -= b.len();
            continue;
        }
        let n = (b.len() - off).min(src.len());
        b.as_mut_slice()[off..off + n].copy_from_slice(&src[..n]);
        src = &src[n..];
        off = 0;
    }
}

/// Copies bytes `off..off + dst.len()` of the list into `dst` (as far as the list reaches):
/// the counterpart of [`copy_into_at`].
pub fn copy_out_at(src: &[DmaBuf], mut off: usize, dst: &mut [u8]) {
    let mut at = 0;
    for b in src {
        if at == dst.len() {
            break;
        }
        if off >= b.len() {
            off -= b.len();
            continue;
        }
        let n = (b.len() - off).min(dst.len() - at);
        dst[at..at + n].copy_from_slice(&b.as_slice()[off..off + n]);
        at += n;
        off = 0;
    }
}

/// Moves consecutive byte ranges out of a list, splitting segments where a range ends
/// inside one. The parts, given back in order to [`join_into`], restore the list.
pub struct Carver {
    segs: smallvec::IntoIter<[DmaBuf; 2]>,
    /// The unconsumed tail of a segment split by the last [`Carver::take`].
    cur: Option<DmaBuf>,
}

impl Carver {
    pub fn new(bufs: Bufs) -> Carver {
        Carver {
            segs: bufs.into_iter(),
            cur: None,
        }
    }

    /// The next `len` bytes as a list of their own (fewer if the list runs out).
    pub fn take(&mut self, len: usize) -> Bufs {
        let mut out = Bufs::new();
        let mut need = len;
        while need > 0 {
            let Some(mut b) = self.cur.take().or_else(|| self.segs.next()) else {
                break;
            };
            if b.len() > need {
                if let Some(front) = b.split_to(need) {
                    out.push(front);
                }
                self.cur = Some(b);
                break;
            }
            need -= b.len();
            out.push(b);
        }
        out
    }

    /// Whatever has not been taken.
    pub fn rest(mut self) -> Bufs {
        let mut out = Bufs::new();
        out.extend(self.cur.take());
        out.extend(self.segs.by_ref());
        out
    }
}

/// Appends `part`'s segments to `dst`, joining each to the last segment of `dst` where it
/// is that segment's continuation (undoing a [`Carver`] split).
pub fn join_into(dst: &mut Bufs, part: impl IntoIterator<Item = DmaBuf>) {
    for b in part {
        let b = match dst.last_mut() {
            Some(last) => match last.unsplit(b) {
                Ok(()) => continue,
                Err(b) => b,
            },
            None => b,
        };
        dst.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_reactor::dma;

    fn list(sizes: &[usize]) -> Bufs {
        sizes
            .iter()
            .map(|&n| dma::alloc(n).expect("pool buffer"))
            .collect()
    }

    #[test]
    fn copy_out_at_reads_across_segments_what_copy_into_at_wrote() {
        let mut bufs = list(&[4096, 4096]);
        let src: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        copy_into_at(&mut bufs, 1000, &src);
        let mut dst = vec![0u8; 5000];
        copy_out_at(&bufs, 1000, &mut dst);
        assert_eq!(dst, src);
        // Past the end of the list: only what the list holds is copied.
        copy_into_at(&mut bufs, 8100, &[7u8; 92]);
        let mut tail = vec![0xffu8; 200];
        copy_out_at(&bufs, 8100, &mut tail);
        assert!(tail[..92].iter().all(|&b| b == 7));
        assert!(tail[92..].iter().all(|&b| b == 0xff));
    }

    #[test]
    fn carve_and_join_restore_the_list() {
        let mut bufs = list(&[8192, 4096]);
        for (i, b) in bufs.iter_mut().enumerate() {
            b.as_mut_slice().fill(i as u8 + 1);
        }
        let ptrs: Vec<_> = bufs.iter().map(|b| (b.as_ptr(), b.len())).collect();
        let mut c = Carver::new(bufs);
        let a = c.take(3000);
        let b = c.take(6000);
        let d = c.take(100);
        let rest = c.rest();
        assert_eq!(
            (total_len(&a), total_len(&b), total_len(&d)),
            (3000, 6000, 100)
        );
        assert_eq!(b.len(), 2, "a part spanning two segments");
        assert_eq!(total_len(&rest), 12288 - 9100);
        let mut back = Bufs::new();
        for p in [a, b, d, rest] {
            join_into(&mut back, p);
        }
        let got: Vec<_> = back.iter().map(|b| (b.as_ptr(), b.len())).collect();
        assert_eq!(got, ptrs, "the same segments, joined back");
        assert!(back.iter_mut().all(|b| b.try_as_mut_slice().is_some()));
    }

    #[test]
    fn shared_ranges_are_read_only_views() {
        let mut bufs = list(&[4096, 4096]);
        bufs[1].as_mut_slice()[0] = 9;
        let mut v = Bufs::new();
        assert!(share_range(&bufs, 4000, 200, &mut v));
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].as_slice()[0], 9);
        assert!(v.iter().all(|b| b.is_shared()));
        assert!(
            bufs[0].try_as_mut_slice().is_none(),
            "no writes while shared"
        );
        assert!(
            !share_range(&bufs, 8000, 500, &mut Bufs::new()),
            "past the end"
        );
        drop(v);
        assert!(bufs[0].try_as_mut_slice().is_some());
    }
}
