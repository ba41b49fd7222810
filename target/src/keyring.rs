//! The keyring: secrets by name, each read from a file only its owner may read (SPDK's
//! `keyring_file` module). Methods that take keys (`dhchap_key`, `psk`) name them; the
//! secret itself never appears in RPC answers, logs or `save_config` (only the path does).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

/// Largest key file read (secrets are a few hundred bytes).
const MAX_KEY_FILE: u64 = 4096;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("{0}")]
    Invalid(String),
    #[error("key {0} already exists")]
    Exists(String),
    #[error("key {0} not found")]
    NotFound(String),
}

struct Key {
    path: PathBuf,
    secret: zeroize::Zeroizing<String>,
}

static KEYS: Mutex<BTreeMap<String, Key>> = Mutex::new(BTreeMap::new());

/// Adds key `name` from the file at `path` (absolute; no access for group or others).
pub fn add_file_key(name: &str, path: &str) -> Result<(), KeyringError> {
    if name.is_empty() || name.len() > 255 {
        return Err(KeyringError::Invalid(
            "a key name is 1 to 255 characters".into(),
        ));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(KeyringError::Invalid(format!(
            "key file {path}: the path must be absolute"
        )));
    }
    // One open (no symlink followed), then the checks and the read on that descriptor: the
    // file checked is the file read.
    let bad = |e: std::io::Error| KeyringError::Invalid(format!("key file {path}: {e}"));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(bad)?;
    let meta = f.metadata().map_err(bad)?;
    if !meta.is_file() {
        return Err(KeyringError::Invalid(format!(
            "key file {path} is not a regular file"
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyringError::Invalid(format!(
            "key file {path} has mode {mode:03o}: only its owner may have access (chmod 0600)"
        )));
    }
    if meta.uid() != crate::sys::effective_uid() {
        return Err(KeyringError::Invalid(format!(
            "key file {path} belongs to uid {}, not to this process's user",
            meta.uid()
        )));
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(KeyringError::Invalid(format!(
            "key file {path} is {} bytes (a key file holds one secret, at most {MAX_KEY_FILE})",
            meta.len()
        )));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut (&f), &mut text).map_err(bad)?;
    let secret = text.trim().to_string();
    if secret.is_empty() {
        return Err(KeyringError::Invalid(format!("key file {path} is empty")));
    }
    let mut keys = KEYS.lock();
    if keys.contains_key(name) {
        return Err(KeyringError::Exists(name.into()));
    }
    keys.insert(
        name.to_string(),
        Key {
            path: p.to_path_buf(),
            secret: zeroize::Zeroizing::new(secret),
        },
    );
    tracing::info!(key = name, path, "key added to the keyring");
    Ok(())
}

pub fn remove_key(name: &str) -> Result<(), KeyringError> {
    KEYS.lock()
        .remove(name)
        .map(|_| ())
        .ok_or_else(|| KeyringError::NotFound(name.into()))
}

/// The secret of key `name`.
pub fn secret(name: &str) -> Result<String, KeyringError> {
    KEYS.lock()
        .get(name)
        .map(|k| k.secret.to_string())
        .ok_or_else(|| KeyringError::NotFound(name.into()))
}

/// (name, path) of every key.
pub fn list() -> Vec<(String, PathBuf)> {
    KEYS.lock()
        .iter()
        .map(|(n, k)| (n.clone(), k.path.clone()))
        .collect()
}
