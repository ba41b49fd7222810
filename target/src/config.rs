//! SPDK's JSON configuration format: `{"subsystems":[{"subsystem":"bdev","config":[{"method",
//! "params"}]}]}`. Loading replays the method calls through the RPC method table; saving
//! emits the calls that rebuild the current state.

use crate::rpc::MethodTable;
use serde_json::{json, Value};
use std::path::Path;
use strata_bdev::registry;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("config {path}: {what}")]
    Shape { path: String, what: String },
    #[error(
        "config {path}: subsystem '{subsystem}' entry {index} ({method}): {message} (code {code})"
    )]
    Method {
        path: String,
        subsystem: String,
        index: usize,
        method: String,
        code: i64,
        message: String,
    },
}

/// SPDK methods whose settings have no counterpart in strata: accepted and logged.
fn ignored(method: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "iobuf_",
        "sock_",
        "accel_",
        "vmd_",
        "keyring_",
        "scheduler_",
        "fsdev_",
    ];
    const METHODS: &[&str] = &[
        "framework_set_scheduler",
        "bdev_nvme_set_hotplug",
        "bdev_iscsi_set_options",
        "bdev_raid_set_options",
        "nvmf_set_max_subsystems",
        "nvmf_set_crdt",
        "nvmf_set_pci_config",
        "iscsi_set_options",
        "vhost_set_options",
    ];
    PREFIXES.iter().any(|p| method.starts_with(p)) || METHODS.contains(&method)
}

/// Applies a config file. Returns how many method calls ran.
pub fn load(path: &Path, methods: &MethodTable) -> Result<usize, ConfigError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: p.clone(),
        source,
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
        path: p.clone(),
        source,
    })?;
    let shape = |what: &str| ConfigError::Shape {
        path: p.clone(),
        what: what.to_string(),
    };
    let subsystems = v
        .get("subsystems")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("expected an object with a \"subsystems\" array"))?;
    let mut ran = 0;
    for s in subsystems {
        let name = s
            .get("subsystem")
            .and_then(Value::as_str)
            .ok_or_else(|| shape("a subsystem without a name"))?;
        let entries = match s.get("config") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(a)) => a,
            Some(_) => {
                return Err(shape(&format!(
                    "subsystem '{name}': config must be an array"
                )))
            }
        };
        for (i, e) in entries.iter().enumerate() {
            let method = e
                .get("method")
                .and_then(Value::as_str)
                .ok_or_else(|| shape(&format!("subsystem '{name}' entry {i}: no method")))?;
            if !methods.contains(method) && ignored(method) {
                tracing::info!(
                    subsystem = name,
                    method,
                    "config: SPDK setting with no strata counterpart, ignored"
                );
                continue;
            }
            let params = e.get("params").cloned();
            methods
                .call(method, params)
                .map_err(|err| ConfigError::Method {
                    path: p.clone(),
                    subsystem: name.to_string(),
                    index: i,
                    method: method.to_string(),
                    code: err.code,
                    message: err.message,
                })?;
            ran += 1;
        }
    }
    tracing::info!(path = %p, calls = ran, "config loaded");
    Ok(ran)
}

/// The current configuration, in the format `load` reads.
pub fn save() -> Value {
    // Layer and module-wide settings first, then the bdevs in registration order.
    let opts = strata_bdev::ConfigEntry {
        method: "bdev_set_options",
        params: json!({ "bdev_auto_examine": registry::auto_examine() }),
    };
    let mut bdev: Vec<Value> = std::iter::once(opts)
        .chain(strata_bdev::module::config_entries())
        .chain(registry::list().iter().filter_map(|h| h.bdev.config()))
        .map(|c| json!({ "method": c.method, "params": c.params }))
        .collect();
    bdev.push(json!({ "method": "bdev_wait_for_examine" }));
    let nvmf = crate::rpc::nvmf_methods::save();
    let keyring = crate::rpc::keyring_methods::save();
    json!({ "subsystems": [
        { "subsystem": "keyring", "config": keyring },
        { "subsystem": "bdev", "config": bdev },
        { "subsystem": "nvmf", "config": nvmf },
    ] })
}
