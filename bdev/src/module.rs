//! Bdev modules as the bdev layer sees them: each module that wants to look at new bdevs
//! (re-assembly of volumes from their members' superblocks) or to contribute module-wide
//! entries to `save_config` implements [`BdevModule`]; the registry calls them without
//! knowing which modules exist. The built-in list is [`crate::modules::BUILTIN`]; a new
//! volume type adds itself there.

use crate::bdev::ConfigEntry;

/// A bdev module's hooks into the bdev layer. Every method has a do-nothing default.
pub trait BdevModule: Send + Sync {
    /// The module's name (as in `Bdev::module`).
    fn name(&self) -> &'static str;

    /// A bdev was registered: look at it (read a superblock, claim a member). Long work goes
    /// through [`crate::volume::examine::spawn_examine`], so `bdev_wait_for_examine` waits
    /// for it.
    fn examine(&self, _bdev: &str) {}

    /// End of examine (`bdev_wait_for_examine`, end of a `--json` load): bring up the
    /// volumes that can run with the members present.
    fn finish_examine(&self) {}

    /// Module-wide settings for `save_config` (placed before the bdevs).
    fn config_entries(&self) -> Vec<ConfigEntry> {
        Vec::new()
    }
}

/// Modules of upper crates (the NVMe/TCP remote bdev lives in strata-nvmf), added at start-up.
static EXTRA: parking_lot::RwLock<Vec<&'static dyn BdevModule>> =
    parking_lot::RwLock::new(Vec::new());

/// Adds a module defined outside this crate. Its hooks run before the built-in volume
/// modules' (it provides base bdevs that volumes stack on). Adding one twice is a no-op.
pub fn register(m: &'static dyn BdevModule) {
    let mut e = EXTRA.write();
    if !e.iter().any(|x| x.name() == m.name()) {
        e.push(m);
    }
}

/// The modules with hooks, in the order their hooks run (base-bdev modules first, then
/// volumes before the volumes that stack on them: a mirror's legs may be RAID volumes).
pub fn modules() -> Vec<&'static dyn BdevModule> {
    let mut v = EXTRA.read().clone();
    v.extend_from_slice(crate::modules::BUILTIN);
    v
}

/// Lets every module look at a newly registered bdev.
pub(crate) fn examine(name: &str) {
    for m in modules() {
        m.examine(name);
    }
}

/// End of examine, for every module in order.
pub fn finish_examine() {
    for m in modules() {
        m.finish_examine();
    }
}

/// Every module's module-wide `save_config` entries.
pub fn config_entries() -> Vec<ConfigEntry> {
    modules().iter().flat_map(|m| m.config_entries()).collect()
}
