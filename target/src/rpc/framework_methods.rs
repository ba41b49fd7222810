//! Framework methods: version, reactors, configuration, shutdown.

use super::params::framework::KillInstance;
use super::params::NoParams;
use super::{MethodTable, RpcError};
use serde_json::{json, Value};
use strata_reactor::clock;

pub fn register(t: &mut MethodTable) {
    t.add("framework_get_cluster_store", |_, _: NoParams| {
        cluster_store()
    });
    t.add("spdk_get_version", |_, _: NoParams| {
        let v = env!("CARGO_PKG_VERSION");
        let mut parts = v.split('.').map(|x| x.parse::<u64>().unwrap_or(0));
        Ok(json!({
            "version": format!("strata v{v}"),
            "fields": {
                "major": parts.next().unwrap_or(0),
                "minor": parts.next().unwrap_or(0),
                "patch": parts.next().unwrap_or(0),
                "suffix": "",
            }
        }))
    });
    t.add("framework_get_reactors", |ctx, _: NoParams| {
        let reactors: Vec<Value> = ctx
            .reactors
            .infos()
            .into_iter()
            .map(|r| {
                json!({
                    "lcore": r.lcore,
                    "busy": r.busy,
                    "idle": r.idle,
                    "in_interrupt": r.in_interrupt,
                    "wakeups": r.wakeups,
                    "tasks": r.tasks,
                    "lw_threads": [{ "name": format!("reactor_{}", r.lcore), "id": r.index + 1 }],
                    "pollers": r.pollers,
                })
            })
            .collect();
        Ok(json!({ "tick_rate": clock::tick_rate(), "pid": std::process::id(), "reactors": reactors }))
    });
    t.add("framework_wait_init", |_, _: NoParams| {
        Ok(Value::Bool(true))
    });
    t.add("save_config", |_, _: NoParams| Ok(crate::config::save()));
    t.add("spdk_kill_instance", |ctx, p: KillInstance| {
        let sig = p.signal()?;
        let _ = ctx.shutdown.send(sig);
        Ok(Value::Bool(true))
    });
}

/// `framework_get_cluster_store`: the cluster store in use and the volume records in it.
fn cluster_store() -> Result<Value, RpcError> {
    let Some(store) = strata_bdev::volume::cluster::store() else {
        return Ok(json!({ "endpoint": null, "records": [] }));
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    store.list(
        "/strata/".into(),
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    let kvs = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .map_err(|_| RpcError::internal("the cluster store did not answer"))?
        .map_err(|e| RpcError::new(-(libc::EIO as i64), format!("cluster store: {e}")))?;
    let records: Vec<Value> = kvs
        .into_iter()
        .map(|(key, v)| {
            let value = serde_json::from_slice::<Value>(&v)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&v).into_owned()));
            json!({ "key": key, "value": value })
        })
        .collect();
    Ok(json!({ "endpoint": store.endpoint(), "records": records }))
}
