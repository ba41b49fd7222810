//! The volume framework: what every redundant volume type (RAID, mirror, and the coming
//! remote parity, split-mirror backup and journal volumes) is built from.
//!
//! - [`superblock`]: the on-disk metadata format, a common header (magic, version, volume
//!   uuid, member index, generation, CRC) followed by a module's body, and the bitmap area
//!   after it; [`ondisk`] holds the little-endian field helpers.
//! - [`intent`]: the write-intent / change bitmap, its region counts and locks, and the
//!   generation bookkeeping behind the rule that a region's bit is on disk before a write
//!   to it is acknowledged; [`persist`] is the one loop that writes metadata snapshots to
//!   a volume's members until the disk is as new as memory.
//! - [`job`]: background jobs (rebuild, resync, scan, scrub, ...) with one progress record
//!   (percent, bytes, rate, ETA), one pacer ([`pacer`]) and cancel.
//! - [`locks`]: range locks across reactors (RAID stripes, parity members' block ranges).
//! - [`examine`]: examine reads counted for `bdev_wait_for_examine`, and assembly of the
//!   volumes still pending once they end.
//!
//! A volume module plugs in by implementing [`crate::module::BdevModule`] (examine,
//! assemble, config entries), a `Body` for its superblock and a `MetaWriter` for its
//! members, and runs its background work as jobs.

pub mod cluster;
pub mod examine;
pub mod intent;
pub mod job;
pub mod locks;
pub mod ondisk;
pub mod pacer;
pub mod persist;
pub mod superblock;
