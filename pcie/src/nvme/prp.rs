//! How a command's data, given as (IOVA, length) pieces in order, is described to a PCIe
//! controller without copying it: Physical Region Page lists, or, where the controller
//! supports them and PRPs cannot describe the pieces, a Scatter Gather List.
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

/// What the controller says of SGLs (Identify Controller SGLS bits 1:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SglSupport {
    #[default]
    None,
    /// Data blocks of any address and length.
    Unaligned,
    /// Data block addresses and lengths must be multiples of 4.
    DwordAligned,
}

impl SglSupport {
    pub fn from_identify(sgls: u32) -> SglSupport {
        match sgls & 3 {
            1 => SglSupport::Unaligned,
            2 => SglSupport::DwordAligned,
            _ => SglSupport::None,
        }
    }
}

/// Descriptors of one SGL segment page (16 bytes each).
pub const MAX_SGL_DESCRIPTORS: usize = (PAGE / 16) as usize;

/// Whether `pieces` can go as SGL data blocks (one in the command, or up to a page of
/// them in one last segment).
pub fn sgl_fits(pieces: &[(u64, usize)], support: SglSupport) -> bool {
    let aligned = |&(a, l): &(u64, usize)| a.is_multiple_of(4) && l.is_multiple_of(4);
    !pieces.is_empty()
        && pieces.len() <= MAX_SGL_DESCRIPTORS
        && pieces.iter().all(|&(_, l)| l > 0 && l <= u32::MAX as usize)
        && match support {
            SglSupport::None => false,
            SglSupport::Unaligned => true,
            SglSupport::DwordAligned => pieces.iter().all(aligned),
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgls_take_what_prps_cannot_when_the_controller_allows() {
        let odd = [(0x10000u64, 1536usize), (0x30600, 2560)];
        let mut out = PrpEntries::new();
        assert!(!build(&odd, &mut out, 64));
        assert!(sgl_fits(&odd, SglSupport::Unaligned));
        assert!(sgl_fits(&odd, SglSupport::DwordAligned));
        assert!(!sgl_fits(&odd, SglSupport::None));
        let unaligned = [(0x10001u64, 511usize)];
        assert!(sgl_fits(&unaligned, SglSupport::Unaligned));
        assert!(!sgl_fits(&unaligned, SglSupport::DwordAligned));
        let many: Vec<(u64, usize)> = (0..257).map(|i| (0x10000 + i * 64, 48)).collect();
        assert!(
            !sgl_fits(&many, SglSupport::Unaligned),
            "more than one segment page"
        );
        assert!(sgl_fits(&many[..256], SglSupport::Unaligned));
        assert_eq!(
            SglSupport::from_identify(0x0010_0001),
            SglSupport::Unaligned
        );
        assert_eq!(SglSupport::from_identify(0x2), SglSupport::DwordAligned);
        assert_eq!(SglSupport::from_identify(0x0), SglSupport::None);
    }

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
