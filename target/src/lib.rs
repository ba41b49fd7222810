//! strata's daemon layer: everything `strata-tgt` is besides its I/O path.
//!
//! [`app`] runs the process (reactors, buffer pools, configuration, signals, orderly
//! shutdown); [`rpc`] is the JSON-RPC 2.0 server and its method table with SPDK's method
//! names; [`config`] loads and saves SPDK-format JSON configuration; [`rpc_client`] is the
//! client used by `strata-rpc`, benchmarks and tests; [`cluster`] the etcd cluster store;
//! [`metrics`] the Prometheus exporter (`--metrics`).

pub mod app;
pub mod cluster;
pub mod config;
pub mod keyring;
pub mod metrics;
pub mod rpc;
pub mod rpc_client;
mod sys;
