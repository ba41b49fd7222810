//! Where each logical block of a RAID volume lives: levels, strips and stripes, and the
//! rotating parity placement (left-symmetric, as md's default layout).
//!
//! A *stripe* is one strip (`strip` blocks) on every member at the same member offset; the
//! data strips of a stripe hold consecutive logical blocks. Within a strip, block `r` is
//! *row* `r`: parity is computed across members row by row.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Level {
    Raid0,
    Raid1,
    Raid5,
    Raid6,
    Concat,
}

impl Level {
    /// SPDK's names; `raid5f` (SPDK's full-stripe-only RAID-5) is served as raid5.
    pub fn from_name(s: &str) -> Option<Level> {
        Some(match s {
            "raid0" | "0" => Level::Raid0,
            "raid1" | "1" => Level::Raid1,
            "raid5" | "raid5f" | "5" => Level::Raid5,
            "raid6" | "6" => Level::Raid6,
            "concat" => Level::Concat,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Raid0 => "raid0",
            Level::Raid1 => "raid1",
            Level::Raid5 => "raid5",
            Level::Raid6 => "raid6",
            Level::Concat => "concat",
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Level::Raid0 => 0,
            Level::Raid1 => 1,
            Level::Raid5 => 5,
            Level::Raid6 => 6,
            Level::Concat => 10,
        }
    }

    pub fn from_code(c: u8) -> Option<Level> {
        Some(match c {
            0 => Level::Raid0,
            1 => Level::Raid1,
            5 => Level::Raid5,
            6 => Level::Raid6,
            10 => Level::Concat,
            _ => return None,
        })
    }

    /// Fewest members the level accepts.
    pub fn min_members(self) -> usize {
        match self {
            Level::Raid0 | Level::Concat => 1,
            Level::Raid1 => 2,
            Level::Raid5 => 3,
            Level::Raid6 => 4,
        }
    }

    /// Members that may fail with the volume still serving all data.
    pub fn tolerance(self, members: usize) -> usize {
        match self {
            Level::Raid0 | Level::Concat => 0,
            Level::Raid1 => members - 1,
            Level::Raid5 => 1,
            Level::Raid6 => 2,
        }
    }

    pub fn parity_count(self) -> usize {
        match self {
            Level::Raid5 => 1,
            Level::Raid6 => 2,
            _ => 0,
        }
    }

    pub fn has_redundancy(self) -> bool {
        !matches!(self, Level::Raid0 | Level::Concat)
    }
}

/// What a member's strip holds in one stripe: data strip `i`, or a parity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Data(usize),
    P,
    Q,
}

/// The shape of a RAID volume.
#[derive(Clone, Debug)]
pub struct Geometry {
    pub level: Level,
    pub members: usize,
    /// Blocks per strip (raid1: the unit of locking and rebuild).
    pub strip: u64,
    /// Data blocks each member contributes (a multiple of `strip`; concat: see `concat`).
    pub member_blocks: u64,
    /// concat: data blocks of each member (each a multiple of `strip`).
    pub concat: Vec<u64>,
}

impl Geometry {
    /// Data strips per stripe.
    pub fn data_strips(&self) -> usize {
        match self.level {
            Level::Raid0 | Level::Concat => self.members,
            Level::Raid1 => 1,
            Level::Raid5 => self.members - 1,
            Level::Raid6 => self.members - 2,
        }
    }

    /// Logical blocks per stripe.
    pub fn stripe_blocks(&self) -> u64 {
        self.strip * self.data_strips() as u64
    }

    /// Stripes of the volume (rows of strips across the members).
    pub fn stripes(&self) -> u64 {
        self.member_blocks / self.strip
    }

    /// Logical size in blocks.
    pub fn num_blocks(&self) -> u64 {
        match self.level {
            Level::Concat => self.concat.iter().sum(),
            Level::Raid1 => self.member_blocks,
            _ => self.stripes() * self.stripe_blocks(),
        }
    }

    /// Strips per stripe including parity.
    pub fn roles(&self) -> usize {
        self.data_strips() + self.level.parity_count()
    }

    /// The member holding `role` in `stripe`.
    pub fn member_of(&self, stripe: u64, role: Role) -> usize {
        let n = self.members;
        match self.level {
            Level::Raid0 | Level::Concat | Level::Raid1 => match role {
                Role::Data(i) => i,
                _ => unreachable!("no parity at this level"),
            },
            Level::Raid5 => {
                let p = n - 1 - (stripe % n as u64) as usize;
                match role {
                    Role::P => p,
                    Role::Data(i) => (p + 1 + i) % n,
                    Role::Q => unreachable!("raid5 has no Q"),
                }
            }
            Level::Raid6 => {
                let p = n - 1 - (stripe % n as u64) as usize;
                match role {
                    Role::P => p,
                    Role::Q => (p + 1) % n,
                    Role::Data(i) => (p + 2 + i) % n,
                }
            }
        }
    }

    /// Role index `k` in the order data 0..d, then P, then Q (the order ISA-L's RAID-6
    /// recovery expects).
    pub fn role(&self, k: usize) -> Role {
        let d = self.data_strips();
        match k {
            k if k < d => Role::Data(k),
            k if k == d => Role::P,
            _ => Role::Q,
        }
    }

    /// concat: the member holding logical block `lba`, and the block's offset in it.
    pub fn concat_locate(&self, lba: u64) -> Option<(usize, u64)> {
        let mut base = 0;
        for (m, &size) in self.concat.iter().enumerate() {
            if lba < base + size {
                return Some((m, lba - base));
            }
            base += size;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(level: Level, n: usize) -> Geometry {
        Geometry {
            level,
            members: n,
            strip: 16,
            member_blocks: 160,
            concat: vec![],
        }
    }

    #[test]
    fn every_stripe_places_each_role_on_a_distinct_member() {
        for (level, n) in [
            (Level::Raid5, 3),
            (Level::Raid5, 5),
            (Level::Raid6, 4),
            (Level::Raid6, 6),
        ] {
            let g = geo(level, n);
            for s in 0..(3 * n as u64) {
                let mut seen: Vec<usize> =
                    (0..g.roles()).map(|k| g.member_of(s, g.role(k))).collect();
                seen.sort();
                seen.dedup();
                assert_eq!(seen.len(), n, "{level:?} stripe {s}");
            }
        }
    }

    #[test]
    fn raid5_is_left_symmetric() {
        // md's left-symmetric layout over 4 members: parity walks from the last member to
        // the first, and data starts on the member after parity.
        let g = geo(Level::Raid5, 4);
        let layout: Vec<(usize, usize)> = (0..4)
            .map(|s| (g.member_of(s, Role::P), g.member_of(s, Role::Data(0))))
            .collect();
        assert_eq!(layout, vec![(3, 0), (2, 3), (1, 2), (0, 1)]);
    }

    #[test]
    fn sizes() {
        assert_eq!(geo(Level::Raid0, 4).num_blocks(), 640);
        assert_eq!(geo(Level::Raid5, 4).num_blocks(), 480);
        assert_eq!(geo(Level::Raid6, 6).num_blocks(), 640);
        assert_eq!(geo(Level::Raid1, 3).num_blocks(), 160);
        let c = Geometry {
            concat: vec![32, 64],
            ..geo(Level::Concat, 2)
        };
        assert_eq!(c.num_blocks(), 96);
        assert_eq!(c.concat_locate(40), Some((1, 8)));
        assert_eq!(c.concat_locate(96), None);
    }
}
