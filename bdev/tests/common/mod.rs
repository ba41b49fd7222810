//! Shared set-up of the bdev integration tests: one reactor for the whole test binary, and a
//! way to run an async test body on it.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::OnceLock;
use strata_reactor::{Mode, ReactorSet};

pub fn reactors() -> &'static ReactorSet {
    static SET: OnceLock<ReactorSet> = OnceLock::new();
    SET.get_or_init(|| ReactorSet::start(&[0], Mode::Interrupt).unwrap())
}

/// Runs the future built by `f` on the test reactor and returns its output.
pub fn on_reactor<F, Fut, R>(f: F) -> R
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
    R: Send + 'static,
{
    reactors().block_on(0, f).unwrap()
}
