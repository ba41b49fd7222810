//! Keyring methods, with SPDK's names: `keyring_file_add_key`, `keyring_file_remove_key`,
//! `keyring_get_keys`.

use super::params::keyring::{AddKey, GetKeys, RemoveKey};
use super::{MethodTable, RpcError};
use crate::keyring::{self, KeyringError};
use serde_json::{json, Value};

impl From<KeyringError> for RpcError {
    fn from(e: KeyringError) -> Self {
        let code = match &e {
            KeyringError::Invalid(_) => super::error::INVALID_PARAMS,
            KeyringError::Exists(_) => -(libc::EEXIST as i64),
            KeyringError::NotFound(_) => -(libc::ENOENT as i64),
        };
        RpcError::new(code, e.to_string())
    }
}

pub fn register(t: &mut MethodTable) {
    t.add("keyring_file_add_key", |_, p: AddKey| {
        keyring::add_file_key(&p.name, &p.path)?;
        Ok(Value::Bool(true))
    });
    t.add("keyring_file_remove_key", |_, p: RemoveKey| {
        keyring::remove_key(&p.name)?;
        Ok(Value::Bool(true))
    });
    t.add("keyring_get_keys", |_, _: GetKeys| {
        Ok(Value::Array(
            keyring::list()
                .into_iter()
                .map(|(n, p)| json!({ "name": n, "module": "keyring_file", "path": p }))
                .collect(),
        ))
    });
}

/// The key in keyring key `name`, parsed: unknown → ENOKEY, not such a key → -32602.
fn parsed_key<T, E: std::fmt::Display>(
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, RpcError> {
    let s =
        keyring::secret(name).map_err(|e| RpcError::new(-(libc::ENOKEY as i64), e.to_string()))?;
    parse(&s).map_err(|e| RpcError::invalid_params(format!("key {name}: {e}")))
}

/// The DH-HMAC-CHAP secret in keyring key `name`.
pub fn dhchap_secret(name: &str) -> Result<strata_nvmf::auth::DhchapSecret, RpcError> {
    parsed_key(name, strata_nvmf::auth::DhchapSecret::parse)
}

/// The TLS PSK in keyring key `name`.
pub fn tls_psk(name: &str) -> Result<strata_nvmf::tls::ConfiguredPsk, RpcError> {
    parsed_key(name, strata_nvmf::tls::ConfiguredPsk::parse)
}

/// The `keyring` part of `save_config` (paths, never secrets).
pub fn save() -> Vec<Value> {
    keyring::list()
        .into_iter()
        .map(|(n, p)| json!({ "method": "keyring_file_add_key", "params": { "name": n, "path": p } }))
        .collect()
}
