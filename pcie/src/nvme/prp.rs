//! Physical Region Page lists: how a command's data, given as (IOVA, length) pieces in order,
//! is described to a PCIe controller without copying it.
//!
//! PRP rules (NVMe base specification 4.1.1): the first entry may start anywhere
//! dword-aligned in a page; every later entry starts at a page boundary; every piece but
//! the last must end at a page boundary. Data that breaks them (a piece boundary inside a
//! page) cannot be described, and the caller copies it through a bounce buffer instead.

use smallvec::SmallVec;

pub const PAGE: u64 = 4096;

/// The page entries of one command: `[0]` goes in PRP1; with two entries `[1]` in PRP2;
/// with more, PRP2 points at a list page holding `[1..]`.
pub type PrpEntries = SmallVec<[u64; 40]>;

/// Appends the entries for `pieces` to `out`. False if the pieces break the PRP rules (the
/// caller bounces) or need more than `max_entries`.
pub fn build(pieces: &[(u64, usize)], out: &mut PrpEntries, max_entries: usize) -> bool {
    out.clear();
    let n = pieces.len();
    for (i, &(iova, len)) in pieces.iter().enumerate() {
        if len == 0 {
            return false;
        }
        let end = iova + len as u64;
        if i == 0 && !iova.is_multiple_of(4) {
            return false;
        }
        if i > 0 && !iova.is_multiple_of(PAGE) {
            return false;
        }
        if i + 1 < n && !end.is_multiple_of(PAGE) {
            return false;
        }
        let mut a = iova;
        while a < end {
            if out.len() == max_entries {
                return false;
            }
            out.push(a);
            a = (a & !(PAGE - 1)) + PAGE;
        }
    }
    !out.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prps(p: &[(u64, usize)]) -> Option<Vec<u64>> {
        let mut out = PrpEntries::new();
        build(p, &mut out, 64).then(|| out.to_vec())
    }

    #[test]
    fn one_page_two_pages_and_a_list() {
        assert_eq!(prps(&[(0x10000, 4096)]), Some(vec![0x10000]));
        assert_eq!(prps(&[(0x10000, 8192)]), Some(vec![0x10000, 0x11000]));
        assert_eq!(
            prps(&[(0x10000, 4 * 4096)]),
            Some(vec![0x10000, 0x11000, 0x12000, 0x13000])
        );
    }

    #[test]
    fn an_offset_first_page_crosses_page_boundaries() {
        // 512 bytes before a boundary, then a page and a half.
        assert_eq!(
            prps(&[(0x10e00, 512 + 4096 + 2048)]),
            Some(vec![0x10e00, 0x11000, 0x12000])
        );
        assert_eq!(prps(&[(0x10200, 512)]), Some(vec![0x10200]));
    }

    #[test]
    fn pieces_join_at_page_boundaries_only() {
        assert_eq!(
            prps(&[(0x10000, 4096), (0x80000, 8192), (0x20000, 100)]),
            Some(vec![0x10000, 0x80000, 0x81000, 0x20000])
        );
        assert_eq!(
            prps(&[(0x10800, 2048), (0x30000, 4096)]),
            Some(vec![0x10800, 0x30000])
        );
        // A piece ending inside a page, or a later one starting inside one: not PRP.
        assert_eq!(prps(&[(0x10000, 2048), (0x30000, 2048)]), None);
        assert_eq!(prps(&[(0x10000, 4096), (0x30200, 512)]), None);
        assert_eq!(prps(&[(0x10002, 512)]), None);
        assert_eq!(prps(&[(0x10000, 0)]), None);
    }

    #[test]
    fn too_many_entries_is_refused() {
        let mut out = PrpEntries::new();
        assert!(!build(&[(0x10000, 65 * 4096)], &mut out, 64));
        assert!(build(&[(0x10000, 64 * 4096)], &mut out, 64));
    }
}
