//! NVMe-oF methods, with SPDK's names and parameters.

use super::params::nvmf::{
    AddNs, AllowAnyHost, ByNqn, CreateSubsystem, CreateTransport, GetStats, GetSubsystems,
    GetTransports, Host, Listener, ListenerAnaState, RemoveNs, SetConfig, SetKeys,
};
use super::{MethodTable, RpcError};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use strata_nvmf::auth::{DhGroup, DhchapHash};
use strata_nvmf::target::auth::{AuthPolicy, HostKeys};
use strata_nvmf::target::subsystem::{
    AnaState, ListenAddress, Subsystem, SubsystemKind, SubsystemState,
};
use strata_nvmf::target::tls::HostPsk;
use strata_nvmf::target::transport::SockGroup;
use strata_nvmf::target::{Target, TargetError};

impl From<TargetError> for RpcError {
    fn from(e: TargetError) -> Self {
        let code = match &e {
            TargetError::Invalid(_) | TargetError::NoTransport => super::error::INVALID_PARAMS,
            other => other.errno() as i64,
        };
        RpcError::new(code, e.to_string())
    }
}

/// A host's DH-HMAC-CHAP secrets from the keyring (none: no authentication).
fn host_keys(key: Option<&str>, ctrlr: Option<&str>) -> Result<Option<HostKeys>, RpcError> {
    let load = |name: &str| super::keyring_methods::dhchap_secret(name).map(Arc::new);
    match (key, ctrlr) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(RpcError::invalid_params(
            "dhchap_ctrlr_key needs dhchap_key (the host authenticates first)",
        )),
        (Some(k), c) => Ok(Some(HostKeys {
            key_name: k.to_string(),
            key: load(k)?,
            ctrlr_key: c.map(|c| load(c).map(|k| (c.to_string(), k))).transpose()?,
        })),
    }
}

fn subsystem(nqn: &str) -> Result<Arc<Subsystem>, RpcError> {
    Target::get()
        .find_subsystem(nqn)
        .ok_or_else(|| RpcError::new(-(libc::ENODEV as i64), format!("subsystem {nqn} not found")))
}

pub fn register(t: &mut MethodTable) {
    t.add("nvmf_create_transport", |_, p: CreateTransport| {
        Target::get().create_transport(p.options()?)?;
        Ok(Value::Bool(true))
    });
    t.add("nvmf_get_transports", |_, _: GetTransports| {
        Ok(Value::Array(
            Target::get().transport().iter().map(|o| json!(o)).collect(),
        ))
    });
    t.add("nvmf_create_subsystem", |_, p: CreateSubsystem| {
        Target::get()
            .create_subsystem(
                &p.nqn,
                p.serial_number(),
                p.model_number(),
                p.allow_any_host,
                p.max_namespaces(),
            )?
            .state
            .lock()
            .ana_reporting = p.ana_reporting;
        Ok(Value::Bool(true))
    });
    t.add("nvmf_delete_subsystem", |_, p: ByNqn| {
        Target::get().delete_subsystem(&p.nqn)?;
        Ok(Value::Bool(true))
    });
    for (m, add) in [
        ("nvmf_subsystem_add_listener", true),
        ("nvmf_subsystem_remove_listener", false),
    ] {
        t.add(m, move |_, p: Listener| {
            let s = subsystem(&p.nqn)?;
            let a = p.listen_address.into();
            if add {
                Target::get().add_listener(&s, a, p.secure_channel)?;
            } else {
                Target::get().remove_listener(&s, &a)?;
            }
            Ok(Value::Bool(true))
        });
    }
    t.add("nvmf_subsystem_add_ns", |_, p: AddNs| {
        let s = subsystem(&p.nqn)?;
        let ns = p.namespace()?;
        let nsid = s.add_namespace(
            &ns.bdev_name,
            ns.nsid,
            ns.uuid,
            ns.nguid,
            ns.eui64,
            ns.anagrpid,
        )?;
        Ok(json!(nsid))
    });
    t.add(
        "nvmf_subsystem_listener_set_ana_state",
        |_, p: ListenerAnaState| {
            let s = subsystem(&p.nqn)?;
            let state = AnaState::parse(&p.ana_state).ok_or_else(|| {
                RpcError::new(
                    super::error::INVALID_PARAMS,
                    format!(
                        "ana_state '{}': expected optimized, non_optimized or inaccessible",
                        p.ana_state
                    ),
                )
            })?;
            let a: ListenAddress = p.listen_address.into();
            s.set_ana_state(&a, p.anagrpid, state)?;
            Ok(Value::Bool(true))
        },
    );
    t.add("nvmf_subsystem_get_listeners", |_, p: ByNqn| {
        let s = subsystem(&p.nqn)?;
        let st = s.state.lock();
        let v: Vec<Value> = st
            .listeners
            .iter()
            .map(|l| {
                let states: Vec<Value> = (1..=st.max_namespaces)
                    .map(|g| json!({ "ana_group": g, "ana_state": st.ana_state(l, g).name() }))
                    .collect();
                json!({ "address": l, "secure_channel": Target::get().listener_secure(l), "ana_states": states })
            })
            .collect();
        Ok(Value::Array(v))
    });
    t.add("nvmf_subsystem_remove_ns", |_, p: RemoveNs| {
        subsystem(&p.nqn)?.remove_namespace(p.nsid)?;
        Ok(Value::Bool(true))
    });
    t.add("nvmf_subsystem_add_host", |_, p: Host| {
        let s = subsystem(&p.nqn)?;
        let host = p.host;
        strata_nvmf::target::subsystem::validate_nqn(&host)?;
        let keys = host_keys(p.dhchap_key.as_deref(), p.dhchap_ctrlr_key.as_deref())?;
        let psk = p
            .psk
            .as_deref()
            .map(|name| {
                super::keyring_methods::tls_psk(name).map(|k| HostPsk {
                    key_name: name.to_string(),
                    psk: Arc::new(k),
                })
            })
            .transpose()?;
        let mut st = s.state.lock();
        if st.hosts.contains(&host) {
            return Err(RpcError::new(
                -(libc::EEXIST as i64),
                format!("host {host} already allowed"),
            ));
        }
        if let Some(k) = keys {
            st.host_keys.insert(host.clone(), k);
        }
        if let Some(k) = psk {
            st.host_psks.insert(host.clone(), k);
        }
        st.hosts.push(host);
        Ok(Value::Bool(true))
    });
    t.add("nvmf_subsystem_remove_host", |_, p: Host| {
        let s = subsystem(&p.nqn)?;
        let host = p.host;
        let mut st = s.state.lock();
        let before = st.hosts.len();
        st.hosts.retain(|h| *h != host);
        if st.hosts.len() == before {
            return Err(RpcError::new(
                -(libc::ENODEV as i64),
                format!("host {host} not found"),
            ));
        }
        st.host_keys.remove(&host);
        st.host_psks.remove(&host);
        Ok(Value::Bool(true))
    });
    t.add("nvmf_subsystem_set_keys", |_, p: SetKeys| {
        let s = subsystem(&p.nqn)?;
        let keys = host_keys(p.dhchap_key.as_deref(), p.dhchap_ctrlr_key.as_deref())?;
        let mut st = s.state.lock();
        if !st.hosts.contains(&p.host) {
            return Err(RpcError::new(
                -(libc::ENODEV as i64),
                format!("host {} is not a host of {}", p.host, p.nqn),
            ));
        }
        // New queues, and every re-authentication (a Negotiate), use the keys in force;
        // queues already authenticated keep running until then.
        match keys {
            Some(k) => st.host_keys.insert(p.host.clone(), k),
            None => st.host_keys.remove(&p.host),
        };
        tracing::info!(nqn = %p.nqn, host = %p.host, "DH-HMAC-CHAP keys set");
        Ok(Value::Bool(true))
    });
    t.add("nvmf_set_config", |_, p: SetConfig| {
        let mut policy = Target::get().auth_policy();
        if let Some(d) = &p.dhchap_digests {
            policy.digests = d
                .iter()
                .map(|n| {
                    DhchapHash::from_name(n).ok_or_else(|| {
                        RpcError::invalid_params(format!(
                            "dhchap_digests: unknown digest '{n}' (sha256, sha384, sha512)"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(g) = &p.dhchap_dhgroups {
            policy.dhgroups = g
                .iter()
                .map(|n| {
                    DhGroup::from_name(n).ok_or_else(|| {
                        RpcError::invalid_params(format!(
                            "dhchap_dhgroups: unknown DH group '{n}' (null, ffdhe2048 ... ffdhe8192)"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if policy.digests.is_empty() || policy.dhgroups.is_empty() {
            return Err(RpcError::invalid_params(
                "dhchap_digests and dhchap_dhgroups cannot be empty",
            ));
        }
        Target::get().set_auth_policy(policy);
        Ok(Value::Bool(true))
    });
    t.add("nvmf_subsystem_allow_any_host", |_, p: AllowAnyHost| {
        subsystem(&p.nqn)?.state.lock().allow_any_host = p.allow_any_host;
        Ok(Value::Bool(true))
    });
    t.add("nvmf_get_subsystems", |_, p: GetSubsystems| {
        let subs = match &p.nqn {
            Some(n) => vec![subsystem(n)?],
            None => Target::get().subsystems(),
        };
        Ok(Value::Array(
            subs.iter().map(|s| subsystem_json(s)).collect(),
        ))
    });
    t.add("nvmf_subsystem_get_controllers", |_, p: ByNqn| {
        let s = subsystem(&p.nqn)?;
        let v: Vec<Value> = s
            .controllers()
            .iter()
            .map(|c| {
                json!({
                    "cntlid": c.cntlid,
                    "hostnqn": c.hostnqn,
                    "hostid": uuid::Uuid::from_bytes(c.hostid).to_string(),
                    "num_io_qpairs": c.io_qpairs.load(std::sync::atomic::Ordering::Relaxed),
                    "kato_ms": c.kato_ms.load(std::sync::atomic::Ordering::Relaxed),
                })
            })
            .collect();
        Ok(Value::Array(v))
    });
    t.add("nvmf_subsystem_get_qpairs", |ctx, p: ByNqn| {
        let nqn = p.nqn;
        subsystem(&nqn)?;
        let mut out = Vec::new();
        for r in 0..ctx.reactors.len() {
            let nqn = nqn.clone();
            let list = ctx
                .reactors
                .call_timeout(r, Duration::from_secs(2), move || {
                    SockGroup::connections()
                        .iter()
                        .filter_map(|c| {
                            let ctrl = c.controller()?;
                            (ctrl.subsys.nqn == nqn).then(|| {
                                json!({
                                    "cntlid": ctrl.cntlid,
                                    "qid": c.qid(),
                                    "state": if c.is_closed() { "deleting" } else { "active" },
                                    "thread": format!("reactor_{r}"),
                                    "listen_address": { "trtype": "TCP", "adrfam": if c.local.is_ipv4() { "IPv4" } else { "IPv6" }, "traddr": c.local.ip().to_string(), "trsvcid": c.local.port().to_string() },
                                    "peer_address": { "trtype": "TCP", "adrfam": if c.peer.is_ipv4() { "IPv4" } else { "IPv6" }, "traddr": c.peer.ip().to_string(), "trsvcid": c.peer.port().to_string() },
                                })
                            })
                        })
                        .collect::<Vec<Value>>()
                })
                .unwrap_or_default();
            out.extend(list);
        }
        Ok(Value::Array(out))
    });
    t.add("nvmf_get_stats", |ctx, _: GetStats| {
        let mut groups = Vec::new();
        for r in 0..ctx.reactors.len() {
            let (admin, io, zcopy, frozen) = ctx
                .reactors
                .call_timeout(r, Duration::from_secs(2), || {
                    let conns = SockGroup::connections();
                    let admin = conns.iter().filter(|c| c.qid() == Some(0)).count();
                    let io = conns
                        .iter()
                        .filter(|c| c.qid().is_some_and(|q| q > 0))
                        .count();
                    (
                        admin,
                        io,
                        SockGroup::zcopy_reads(),
                        SockGroup::zcopy_frozen(),
                    )
                })
                .unwrap_or((0, 0, 0, 0));
            groups.push(json!({
                "name": format!("nvmf_tgt_poll_group_{r}"),
                "current_admin_qpairs": admin,
                "current_io_qpairs": io,
                "transports": [{ "trtype": "TCP", "zcopy_reads": zcopy, "zcopy_frozen": frozen }],
            }));
        }
        Ok(json!({ "tick_rate": strata_reactor::clock::tick_rate(), "poll_groups": groups }))
    });
}

pub fn subsystem_json(s: &Subsystem) -> Value {
    let st = s.state.lock();
    let listeners: Vec<Value> = st
        .listeners
        .iter()
        .map(|l| {
            let mut v = json!(l);
            // Only when set: the entry stays SPDK's four fields for plain listeners.
            if Target::get().listener_secure(l) {
                v["secure_channel"] = json!(true);
            }
            v
        })
        .collect();
    let mut v = json!({
        "nqn": s.nqn,
        "subtype": if s.kind == SubsystemKind::Discovery { "Discovery" } else { "NVMe" },
        "listen_addresses": listeners,
        "allow_any_host": st.allow_any_host,
        "hosts": st.hosts.iter().map(|h| host_json(&st, h)).collect::<Vec<_>>(),
    });
    if s.kind == SubsystemKind::Nvme {
        if let Some(o) = v.as_object_mut() {
            o.insert("serial_number".into(), json!(st.serial_number));
            o.insert("model_number".into(), json!(st.model_number));
            o.insert("max_namespaces".into(), json!(st.max_namespaces));
            o.insert("ana_reporting".into(), json!(st.ana_reporting));
            let ns: Vec<Value> = st
                .namespaces
                .values()
                .map(|n| {
                    let mut j = json!({ "nsid": n.nsid, "bdev_name": n.desc.name(), "name": n.desc.name(), "uuid": n.uuid.to_string(), "anagrpid": n.anagrpid });
                    if let (Some(g), Some(o)) = (n.nguid, j.as_object_mut()) {
                        o.insert("nguid".into(), json!(g.iter().map(|b| format!("{b:02X}")).collect::<String>()));
                    }
                    if let (Some(e), Some(o)) = (n.eui64, j.as_object_mut()) {
                        o.insert("eui64".into(), json!(e.iter().map(|b| format!("{b:02X}")).collect::<String>()));
                    }
                    j
                })
                .collect();
            o.insert("namespaces".into(), Value::Array(ns));
        }
    }
    v
}

/// A host entry: its NQN and the names of its keys.
fn host_json(st: &SubsystemState, h: &str) -> Value {
    let mut v = json!({ "nqn": h });
    if let Some(k) = st.host_psks.get(h) {
        v["psk"] = json!(k.key_name);
    }
    if let Some(k) = st.host_keys.get(h) {
        v["dhchap_key"] = json!(k.key_name);
        if let Some((n, _)) = &k.ctrlr_key {
            v["dhchap_ctrlr_key"] = json!(n);
        }
    }
    v
}

/// The `nvmf` part of `save_config`.
pub fn save() -> Vec<Value> {
    let t = Target::get();
    let mut out = Vec::new();
    let Some(o) = t.transport() else { return out };
    let policy = t.auth_policy();
    if policy != AuthPolicy::default() {
        out.push(json!({ "method": "nvmf_set_config", "params": {
            "dhchap_digests": policy.digests.iter().map(|d| d.name()).collect::<Vec<_>>(),
            "dhchap_dhgroups": policy.dhgroups.iter().map(|g| g.name()).collect::<Vec<_>>(),
        }}));
    }
    out.push(json!({ "method": "nvmf_create_transport", "params": o }));
    for s in t.subsystems() {
        let st = s.state.lock();
        if s.kind == SubsystemKind::Nvme {
            out.push(json!({ "method": "nvmf_create_subsystem", "params": {
                "nqn": s.nqn, "serial_number": st.serial_number, "model_number": st.model_number,
                "allow_any_host": st.allow_any_host, "max_namespaces": st.max_namespaces,
                "ana_reporting": st.ana_reporting,
            }}));
            for h in &st.hosts {
                let mut params = host_json(&st, h);
                params["host"] = params["nqn"].take();
                params["nqn"] = json!(s.nqn);
                out.push(json!({ "method": "nvmf_subsystem_add_host", "params": params }));
            }
            for n in st.namespaces.values() {
                let mut ns = json!({ "nsid": n.nsid, "bdev_name": n.desc.name(), "uuid": n.uuid.to_string(), "anagrpid": n.anagrpid });
                if let (Some(g), Some(o)) = (n.nguid, ns.as_object_mut()) {
                    o.insert(
                        "nguid".into(),
                        json!(g.iter().map(|b| format!("{b:02X}")).collect::<String>()),
                    );
                }
                if let (Some(e), Some(o)) = (n.eui64, ns.as_object_mut()) {
                    o.insert(
                        "eui64".into(),
                        json!(e.iter().map(|b| format!("{b:02X}")).collect::<String>()),
                    );
                }
                out.push(json!({ "method": "nvmf_subsystem_add_ns", "params": { "nqn": s.nqn, "namespace": ns } }));
            }
        }
        if s.kind == SubsystemKind::Discovery {
            // Hosts that discover over TLS hold their PSKs on the discovery subsystem.
            for h in st.host_psks.keys() {
                let mut params = host_json(&st, h);
                params["host"] = params["nqn"].take();
                params["nqn"] = json!(s.nqn);
                out.push(json!({ "method": "nvmf_subsystem_add_host", "params": params }));
            }
        }
        for l in &st.listeners {
            let mut params = json!({ "nqn": s.nqn, "listen_address": l });
            if t.listener_secure(l) {
                params["secure_channel"] = json!(true);
            }
            out.push(json!({ "method": "nvmf_subsystem_add_listener", "params": params }));
            for (g, a) in st.ana.get(l).into_iter().flatten() {
                out.push(
                    json!({ "method": "nvmf_subsystem_listener_set_ana_state", "params": {
                    "nqn": s.nqn, "listen_address": l, "ana_state": a.name(), "anagrpid": g } }),
                );
            }
        }
    }
    out
}
