//! strata's benchmarks: `strata-bdevperf` (an in-process load generator over the bdev layer,
//! like SPDK's bdevperf) and criterion micro-benchmarks in `benches/`.

pub mod bdevperf;
pub mod ceiling;
pub mod perf;
pub mod stats;
