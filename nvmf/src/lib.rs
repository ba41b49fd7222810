//! strata's NVMe-over-Fabrics layer.
//!
//! [`spec`] holds the NVMe data structures (commands, completions, Identify, log pages,
//! status codes) as checked `#[repr(C)]` types; [`tcp`] the NVMe/TCP PDU codec; [`target`]
//! the target side (subsystems, controllers, queue pairs on reactors, discovery); [`host`]
//! the initiator used by tests, strata-perf and remote bdevs.

pub mod host;
pub mod spec;
pub mod target;
pub mod tcp;
