//! Parameters of the framework methods.

use super::{is_false, SpdkParams};
use serde::{Deserialize, Serialize};

/// `rpc_get_methods`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct GetMethods {
    /// Only methods callable in the current state.
    #[arg(short = 'c', long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub current: bool,
    /// SPDK's: strata has no aliases (no flag: strata-rpc never had one).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub include_aliases: bool,
}
impl SpdkParams for GetMethods {}

/// `spdk_kill_instance`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct KillInstance {
    /// SIGINT or SIGTERM.
    pub sig_name: String,
}
impl SpdkParams for KillInstance {}

impl KillInstance {
    /// The signal the daemon shuts down as.
    pub fn signal(&self) -> Result<&'static str, crate::rpc::RpcError> {
        match self.sig_name.as_str() {
            "SIGINT" | "INT" => Ok("SIGINT"),
            "SIGTERM" | "TERM" => Ok("SIGTERM"),
            other => Err(crate::rpc::RpcError::invalid_params(format!(
                "invalid parameter 'sig_name': {other} (use SIGINT or SIGTERM)"
            ))),
        }
    }
}
