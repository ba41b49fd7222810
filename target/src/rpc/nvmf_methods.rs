//! NVMe-oF methods, with SPDK's names and parameters.

use super::params::Params;
use super::{MethodTable, RpcError};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use strata_nvmf::target::subsystem::{ListenAddress, Subsystem, SubsystemKind};
use strata_nvmf::target::transport::SockGroup;
use strata_nvmf::target::{Target, TargetError, TransportOptions};

impl From<TargetError> for RpcError {
    fn from(e: TargetError) -> Self {
        let code = match &e {
            TargetError::Invalid(_) | TargetError::NoTransport => super::error::INVALID_PARAMS,
            other => other.errno() as i64,
        };
        RpcError::new(code, e.to_string())
    }
}

fn subsystem(nqn: &str) -> Result<Arc<Subsystem>, RpcError> {
    Target::get()
        .find_subsystem(nqn)
        .ok_or_else(|| RpcError::new(-(libc::ENODEV as i64), format!("subsystem {nqn} not found")))
}

fn listen_address(p: &Params, m: &str) -> Result<ListenAddress, RpcError> {
    let v = p.object("listen_address")?.ok_or_else(|| {
        RpcError::invalid_params(format!("{m}: missing required parameter 'listen_address'"))
    })?;
    let sub = Params::new(
        "listen_address",
        Some(Value::Object(v)),
        &["trtype", "adrfam", "traddr", "trsvcid"],
        &["trsvcid_range"],
    )?;
    let trtype = sub.str("trtype")?;
    Ok(ListenAddress {
        trtype: trtype.to_uppercase(),
        adrfam: sub.opt_str("adrfam")?.unwrap_or_else(|| "IPv4".into()),
        traddr: sub.str("traddr")?,
        trsvcid: sub.opt_str("trsvcid")?.unwrap_or_else(|| "4420".into()),
    })
}

fn hex_bytes<const N: usize>(m: &str, key: &str, s: &str) -> Result<[u8; N], RpcError> {
    let clean: String = s.chars().filter(|c| *c != '-').collect();
    let bad = || {
        RpcError::invalid_params(format!(
            "{m}: invalid parameter '{key}': expected {} hex digits",
            N * 2
        ))
    };
    // ASCII hex only: slicing below is by byte.
    if clean.len() != N * 2 || !clean.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&clean[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

pub fn register(t: &mut MethodTable) {
    t.add("nvmf_create_transport", |_, p| {
        let m = "nvmf_create_transport";
        let p = Params::new(
            m,
            p,
            &[
                "trtype",
                "max_queue_depth",
                "max_io_qpairs_per_ctrlr",
                "in_capsule_data_size",
                "max_io_size",
                "io_unit_size",
                "max_aq_depth",
                "c2h_success",
                "num_shared_buffers",
                "buf_cache_size",
                "sock_priority",
                "abort_timeout_sec",
            ],
            &[
                "dif_insert_or_strip",
                "zcopy",
                "ack_timeout",
                "data_wr_pool_size",
                "max_qpairs_per_ctrlr",
                "tgt_name",
                "control_msg_num",
                "disable_command_passthru",
            ],
        )?;
        let d = TransportOptions::default();
        let u16p = |k: &str, def: u16| -> Result<u16, RpcError> {
            match p.opt_u32(k)? {
                None => Ok(def),
                Some(v) => u16::try_from(v).map_err(|_| {
                    RpcError::invalid_params(format!("{m}: invalid parameter '{k}': too large"))
                }),
            }
        };
        let opts = TransportOptions {
            trtype: p.str("trtype")?.to_uppercase(),
            max_queue_depth: u16p("max_queue_depth", d.max_queue_depth)?,
            max_io_qpairs_per_ctrlr: u16p("max_io_qpairs_per_ctrlr", d.max_io_qpairs_per_ctrlr)?,
            in_capsule_data_size: p
                .opt_u32("in_capsule_data_size")?
                .unwrap_or(d.in_capsule_data_size),
            max_io_size: p.opt_u32("max_io_size")?.unwrap_or(d.max_io_size),
            io_unit_size: p.opt_u32("io_unit_size")?.unwrap_or(d.io_unit_size),
            max_aq_depth: u16p("max_aq_depth", d.max_aq_depth)?,
            c2h_success: p.opt_bool("c2h_success")?.unwrap_or(d.c2h_success),
            num_shared_buffers: p
                .opt_u32("num_shared_buffers")?
                .unwrap_or(d.num_shared_buffers),
            buf_cache_size: p.opt_u32("buf_cache_size")?.unwrap_or(d.buf_cache_size),
            sock_priority: p.opt_u32("sock_priority")?.unwrap_or(d.sock_priority),
            abort_timeout_sec: p
                .opt_u32("abort_timeout_sec")?
                .unwrap_or(d.abort_timeout_sec),
        };
        Target::get().create_transport(opts)?;
        Ok(Value::Bool(true))
    });
    t.add("nvmf_get_transports", |_, p| {
        Params::new("nvmf_get_transports", p, &["trtype"], &["tgt_name"])?;
        Ok(Value::Array(
            Target::get().transport().iter().map(|o| json!(o)).collect(),
        ))
    });
    t.add("nvmf_create_subsystem", |_, p| {
        let m = "nvmf_create_subsystem";
        let p = Params::new(
            m,
            p,
            &[
                "nqn",
                "serial_number",
                "model_number",
                "allow_any_host",
                "max_namespaces",
            ],
            &[
                "ana_reporting",
                "min_cntlid",
                "max_cntlid",
                "tgt_name",
                "max_discard_size_kib",
                "max_write_zeroes_size_kib",
                "passthrough",
                "enable_nssr",
            ],
        )?;
        let nqn = p.str("nqn")?;
        Target::get().create_subsystem(
            &nqn,
            &p.opt_str("serial_number")?
                .unwrap_or_else(|| "00000000000000000000".into()),
            &p.opt_str("model_number")?
                .unwrap_or_else(|| "strata Controller".into()),
            p.opt_bool("allow_any_host")?.unwrap_or(false),
            match p.opt_u32("max_namespaces")? {
                None | Some(0) => 32,
                Some(n) => n,
            },
        )?;
        Ok(Value::Bool(true))
    });
    t.add("nvmf_delete_subsystem", |_, p| {
        let p = Params::new("nvmf_delete_subsystem", p, &["nqn"], &["tgt_name"])?;
        Target::get().delete_subsystem(&p.str("nqn")?)?;
        Ok(Value::Bool(true))
    });
    for (m, add) in [
        ("nvmf_subsystem_add_listener", true),
        ("nvmf_subsystem_remove_listener", false),
    ] {
        t.add(m, move |_, p| {
            let p = Params::new(
                m,
                p,
                &["nqn", "listen_address"],
                &[
                    "tgt_name",
                    "secure_channel",
                    "ana_state",
                    "anagrpid",
                    "sock_impl",
                ],
            )?;
            let s = subsystem(&p.str("nqn")?)?;
            let a = listen_address(&p, m)?;
            if add {
                Target::get().add_listener(&s, a)?;
            } else {
                Target::get().remove_listener(&s, &a)?;
            }
            Ok(Value::Bool(true))
        });
    }
    t.add("nvmf_subsystem_add_ns", |_, p| {
        let m = "nvmf_subsystem_add_ns";
        let p = Params::new(
            m,
            p,
            &["nqn", "namespace"],
            &["tgt_name", "no_auto_visible"],
        )?;
        let s = subsystem(&p.str("nqn")?)?;
        let ns = p.object("namespace")?.ok_or_else(|| {
            RpcError::invalid_params(format!("{m}: missing required parameter 'namespace'"))
        })?;
        let ns = Params::new(
            "namespace",
            Some(Value::Object(ns)),
            &["bdev_name", "nsid", "uuid", "nguid", "eui64"],
            &["ptpl_file", "anagrpid", "no_auto_visible"],
        )?;
        let nguid = match ns.opt_str("nguid")? {
            Some(s) => Some(hex_bytes::<16>(m, "nguid", &s)?),
            None => None,
        };
        let eui64 = match ns.opt_str("eui64")? {
            Some(s) => Some(hex_bytes::<8>(m, "eui64", &s)?),
            None => None,
        };
        let nsid = s.add_namespace(
            &ns.str("bdev_name")?,
            ns.opt_u32("nsid")?.unwrap_or(0),
            ns.opt_uuid("uuid")?,
            nguid,
            eui64,
        )?;
        Ok(json!(nsid))
    });
    t.add("nvmf_subsystem_remove_ns", |_, p| {
        let p = Params::new(
            "nvmf_subsystem_remove_ns",
            p,
            &["nqn", "nsid"],
            &["tgt_name"],
        )?;
        subsystem(&p.str("nqn")?)?.remove_namespace(p.u32("nsid")?)?;
        Ok(Value::Bool(true))
    });
    for (m, add) in [
        ("nvmf_subsystem_add_host", true),
        ("nvmf_subsystem_remove_host", false),
    ] {
        t.add(m, move |_, p| {
            let p = Params::new(
                m,
                p,
                &["nqn", "host"],
                &["tgt_name", "psk", "dhchap_key", "dhchap_ctrlr_key"],
            )?;
            let s = subsystem(&p.str("nqn")?)?;
            let host = p.str("host")?;
            strata_nvmf::target::subsystem::validate_nqn(&host)?;
            let mut st = s.state.lock();
            if add {
                if st.hosts.contains(&host) {
                    return Err(RpcError::new(
                        -(libc::EEXIST as i64),
                        format!("host {host} already allowed"),
                    ));
                }
                st.hosts.push(host);
            } else {
                let before = st.hosts.len();
                st.hosts.retain(|h| *h != host);
                if st.hosts.len() == before {
                    return Err(RpcError::new(
                        -(libc::ENODEV as i64),
                        format!("host {host} not found"),
                    ));
                }
            }
            Ok(Value::Bool(true))
        });
    }
    t.add("nvmf_subsystem_allow_any_host", |_, p| {
        let p = Params::new(
            "nvmf_subsystem_allow_any_host",
            p,
            &["nqn", "allow_any_host"],
            &["tgt_name"],
        )?;
        let s = subsystem(&p.str("nqn")?)?;
        let allow = p.opt_bool("allow_any_host")?.ok_or_else(|| {
            RpcError::invalid_params(
                "nvmf_subsystem_allow_any_host: missing required parameter 'allow_any_host'",
            )
        })?;
        s.state.lock().allow_any_host = allow;
        Ok(Value::Bool(true))
    });
    t.add("nvmf_get_subsystems", |_, p| {
        let p = Params::new("nvmf_get_subsystems", p, &["nqn"], &["tgt_name"])?;
        let subs = match p.opt_str("nqn")? {
            Some(n) => vec![subsystem(&n)?],
            None => Target::get().subsystems(),
        };
        Ok(Value::Array(
            subs.iter().map(|s| subsystem_json(s)).collect(),
        ))
    });
    t.add("nvmf_subsystem_get_controllers", |_, p| {
        let p = Params::new("nvmf_subsystem_get_controllers", p, &["nqn"], &["tgt_name"])?;
        let s = subsystem(&p.str("nqn")?)?;
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
    t.add("nvmf_subsystem_get_qpairs", |ctx, p| {
        let p = Params::new("nvmf_subsystem_get_qpairs", p, &["nqn"], &["tgt_name"])?;
        let nqn = p.str("nqn")?;
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
    t.add("nvmf_get_stats", |ctx, p| {
        Params::new("nvmf_get_stats", p, &[], &["tgt_name"])?;
        let mut groups = Vec::new();
        for r in 0..ctx.reactors.len() {
            let (admin, io) = ctx
                .reactors
                .call_timeout(r, Duration::from_secs(2), || {
                    let conns = SockGroup::connections();
                    let admin = conns.iter().filter(|c| c.qid() == Some(0)).count();
                    let io = conns
                        .iter()
                        .filter(|c| c.qid().is_some_and(|q| q > 0))
                        .count();
                    (admin, io)
                })
                .unwrap_or((0, 0));
            groups.push(json!({
                "name": format!("nvmf_tgt_poll_group_{r}"),
                "current_admin_qpairs": admin,
                "current_io_qpairs": io,
                "transports": [{ "trtype": "TCP" }],
            }));
        }
        Ok(json!({ "tick_rate": strata_reactor::clock::tick_rate(), "poll_groups": groups }))
    });
}

pub fn subsystem_json(s: &Subsystem) -> Value {
    let st = s.state.lock();
    let listeners: Vec<Value> = st.listeners.iter().map(|l| json!(l)).collect();
    let mut v = json!({
        "nqn": s.nqn,
        "subtype": if s.kind == SubsystemKind::Discovery { "Discovery" } else { "NVMe" },
        "listen_addresses": listeners,
        "allow_any_host": st.allow_any_host,
        "hosts": st.hosts.iter().map(|h| json!({ "nqn": h })).collect::<Vec<_>>(),
    });
    if s.kind == SubsystemKind::Nvme {
        if let Some(o) = v.as_object_mut() {
            o.insert("serial_number".into(), json!(st.serial_number));
            o.insert("model_number".into(), json!(st.model_number));
            o.insert("max_namespaces".into(), json!(st.max_namespaces));
            let ns: Vec<Value> = st
                .namespaces
                .values()
                .map(|n| {
                    let mut j = json!({ "nsid": n.nsid, "bdev_name": n.desc.name(), "name": n.desc.name(), "uuid": n.uuid.to_string() });
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

/// The `nvmf` part of `save_config`.
pub fn save() -> Vec<Value> {
    let t = Target::get();
    let mut out = Vec::new();
    let Some(o) = t.transport() else { return out };
    out.push(json!({ "method": "nvmf_create_transport", "params": o }));
    for s in t.subsystems() {
        let st = s.state.lock();
        if s.kind == SubsystemKind::Nvme {
            out.push(json!({ "method": "nvmf_create_subsystem", "params": {
                "nqn": s.nqn, "serial_number": st.serial_number, "model_number": st.model_number,
                "allow_any_host": st.allow_any_host, "max_namespaces": st.max_namespaces,
            }}));
            for h in &st.hosts {
                out.push(json!({ "method": "nvmf_subsystem_add_host", "params": { "nqn": s.nqn, "host": h } }));
            }
            for n in st.namespaces.values() {
                let mut ns = json!({ "nsid": n.nsid, "bdev_name": n.desc.name(), "uuid": n.uuid.to_string() });
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
        for l in &st.listeners {
            out.push(json!({ "method": "nvmf_subsystem_add_listener", "params": { "nqn": s.nqn, "listen_address": l } }));
        }
    }
    out
}
