//! Keyring methods (SPDK's `keyring_file_*`): named secrets read from files.

use super::SpdkParams;
use serde::{Deserialize, Serialize};

/// `keyring_file_add_key`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct AddKey {
    /// Key name.
    pub name: String,
    /// Absolute path of the key file (readable by its owner only).
    pub path: String,
}
impl SpdkParams for AddKey {}

/// `keyring_file_remove_key`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RemoveKey {
    /// Key name.
    pub name: String,
}
impl SpdkParams for RemoveKey {}

/// `keyring_get_keys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct GetKeys {}
impl SpdkParams for GetKeys {}
