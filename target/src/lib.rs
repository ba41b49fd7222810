//! placeholder
pub mod rpc_client;
