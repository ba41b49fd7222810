//! strata's NVMe-over-Fabrics layer.
//!
//! [`spec`] holds the NVMe data structures (commands, completions, Identify, log pages,
//! status codes) as checked `#[repr(C)]` types; [`tcp`] the NVMe/TCP PDU codec; [`target`]
//! the target side (subsystems, controllers, queue pairs on reactors, discovery); [`host`]
//! the initiator used by tests and strata-perf; [`remote`] the remote bdev built on it (a
//! namespace of another NVMe/TCP target as a local bdev, SPDK's `bdev_nvme`); [`auth`] the
//! DH-HMAC-CHAP in-band authentication both sides share; [`tls`] TLS 1.3 with pre-shared
//! keys (TP 8011) for both sides' connections.

pub mod auth;
pub mod host;
pub mod remote;
pub mod spec;
pub mod target;
pub mod tcp;
pub mod tls;
