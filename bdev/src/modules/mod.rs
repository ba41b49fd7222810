//! Bdev modules: one file per bdev type.
//!
//! Base bdevs: [`malloc`] (RAM), [`null`] (discards), [`uring`] (files and block devices
//! through io_uring; also serves SPDK's `aio`). Virtual bdevs for fault injection:
//! [`error`] and [`delay`], built on [`base::ClaimedBase`] (an opened, claimed base bdev).
//! Redundancy: [`raid`] (raid0/1/5/6, concat), [`mirror`] (two legs of any kind, split and
//! resume, checksum resync, scrub), [`parity`] (remote parity: data members sending XOR
//! deltas to P and Q parity volumes on other nodes), [`journal`] (dual redundancy: a base
//! plus a mirrored journal drained to a backup repository, rebuilt from both). Shared by them: the volume framework,
//! [`crate::volume`] (superblocks, intent bitmap, metadata writes, jobs, examine).

pub mod base;
pub mod delay;
pub mod error;
pub mod journal;
pub mod malloc;
pub mod mirror;
pub mod null;
pub mod parity;
pub mod raid;
pub mod uring;

use crate::error::BdevError;
use crate::module::BdevModule;
use crate::registry;

/// Block sizes strata accepts: powers of two from 512 B to 64 KiB.
pub fn validate_block_size(bs: u32) -> Result<(), BdevError> {
    if !(512..=65536).contains(&bs) || !bs.is_power_of_two() {
        return Err(BdevError::Invalid(format!(
            "block_size {bs} is not a power of two between 512 and 65536"
        )));
    }
    Ok(())
}

/// Unregisters `name` if it belongs to `module` (so `bdev_malloc_delete` cannot delete a
/// uring bdev).
pub(crate) fn delete_of_module(name: &str, module: &str) -> Result<(), BdevError> {
    let h = registry::get(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    if h.bdev.module() != module {
        return Err(BdevError::NotFound(format!(
            "{name} (it is a {} bdev, not {module})",
            h.bdev.module()
        )));
    }
    registry::unregister(name)
}

/// The modules with hooks into the bdev layer ([`crate::module::BdevModule`]), in order:
/// RAID before mirrors, whose legs may be RAID volumes.
pub static BUILTIN: &[&dyn BdevModule] = &[
    &raid::RaidModule,
    &mirror::MirrorModule,
    &journal::JournalModule,
];
