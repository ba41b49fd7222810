//! Prometheus exporter: `strata-tgt --metrics ADDR:PORT` serves `/metrics` in the text format.
//!
//! Each scrape builds a fresh registry from the same reports the JSON-RPC methods give
//! (`bdev_get_iostat`, `framework_get_reactors`, `nvmf_get_stats`, `bdev_raid_get_bdevs`,
//! `bdev_mirror_get`, `bdev_journal_group_get`), so a graph and an `rpc.py` call never disagree, and nothing on the I/O
//! path changes. The HTTP server runs on its own thread; it never touches a reactor directly
//! (the methods do that with their own timeouts).

use crate::rpc::MethodTable;
use prometheus::{
    CounterVec, Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {why}")]
    Bind { addr: String, why: String },
    #[error("metric {0}: {1}")]
    Metric(&'static str, prometheus::Error),
}

/// The running exporter; `stop` ends its thread.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn start(addr: &str, methods: Arc<MethodTable>) -> Result<MetricsServer, MetricsError> {
        let server = tiny_http::Server::http(addr).map_err(|e| MetricsError::Bind {
            addr: addr.to_string(),
            why: e.to_string(),
        })?;
        let server = Arc::new(server);
        let stopping = Arc::new(AtomicBool::new(false));
        let (s, stop) = (server.clone(), stopping.clone());
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&s, &stop, &methods))
            .map_err(|e| MetricsError::Bind {
                addr: addr.to_string(),
                why: e.to_string(),
            })?;
        tracing::info!(%addr, "Prometheus metrics at /metrics");
        Ok(MetricsServer {
            server,
            stopping,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::Release);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, stopping: &AtomicBool, methods: &MethodTable) {
    while !stopping.load(Ordering::Acquire) {
        let req = match server.recv_timeout(Duration::from_millis(500)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "metrics server stopped");
                return;
            }
        };
        let path = req.url().split('?').next().unwrap_or("");
        let resp = match (req.method(), path) {
            (tiny_http::Method::Get, "/metrics") => match gather(methods) {
                Ok(body) => {
                    let resp = tiny_http::Response::from_data(body);
                    match tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"text/plain; version=0.0.4; charset=utf-8"[..],
                    ) {
                        Ok(h) => resp.with_header(h),
                        Err(()) => resp,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "metrics scrape failed");
                    tiny_http::Response::from_string(e.to_string()).with_status_code(500)
                }
            },
            (tiny_http::Method::Get, _) => {
                tiny_http::Response::from_string("not found; try /metrics\n").with_status_code(404)
            }
            _ => tiny_http::Response::from_string("only GET\n").with_status_code(405),
        };
        if let Err(e) = req.respond(resp) {
            tracing::debug!(error = %e, "metrics client went away");
        }
    }
}

/// Calls one method; a method that fails (e.g. no reactors yet) contributes nothing.
fn report(methods: &MethodTable, method: &str, params: Option<Value>) -> Value {
    methods.call(method, params).unwrap_or(Value::Null)
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The text exposition of every metric, as of now.
pub fn gather(methods: &MethodTable) -> Result<Vec<u8>, MetricsError> {
    let r = Registry::new();
    let reg = |name: &'static str, c: Box<dyn prometheus::core::Collector>| {
        r.register(c).map_err(|e| MetricsError::Metric(name, e))
    };
    let counter = |name: &'static str, help: &str, labels: &[&str]| {
        IntCounterVec::new(Opts::new(name, help), labels).map_err(|e| MetricsError::Metric(name, e))
    };
    let igauge = |name: &'static str, help: &str, labels: &[&str]| {
        IntGaugeVec::new(Opts::new(name, help), labels).map_err(|e| MetricsError::Metric(name, e))
    };
    let fcounter = |name: &'static str, help: &str, labels: &[&str]| {
        CounterVec::new(Opts::new(name, help), labels).map_err(|e| MetricsError::Metric(name, e))
    };
    let gauge = |name: &'static str, help: &str, labels: &[&str]| {
        GaugeVec::new(Opts::new(name, help), labels).map_err(|e| MetricsError::Metric(name, e))
    };

    // Per-bdev iostat.
    let ops = counter(
        "strata_bdev_ops_total",
        "I/Os completed, by bdev and type",
        &["bdev", "type"],
    )?;
    let bytes = counter(
        "strata_bdev_bytes_total",
        "Bytes moved, by bdev and type",
        &["bdev", "type"],
    )?;
    let lat = fcounter(
        "strata_bdev_latency_seconds_total",
        "Sum of I/O latencies, by bdev and type (divide by ops for the mean)",
        &["bdev", "type"],
    )?;
    let errors = counter("strata_bdev_io_errors_total", "I/Os that failed", &["bdev"])?;
    let qd = igauge("strata_bdev_queue_depth", "I/Os outstanding now", &["bdev"])?;
    let io = report(methods, "bdev_get_iostat", None);
    let bdevs = report(methods, "bdev_get_bdevs", None);
    let block_size: std::collections::HashMap<&str, u64> = arr(&bdevs)
        .iter()
        .map(|b| (s(b, "name"), u(b, "block_size")))
        .collect();
    let tick_rate = io
        .get("tick_rate")
        .and_then(Value::as_f64)
        .unwrap_or(1.0)
        .max(1.0);
    for b in arr(io.get("bdevs").unwrap_or(&Value::Null)) {
        let name = s(b, "name");
        for (t, n, by, l) in [
            ("read", "num_read_ops", "bytes_read", "read_latency_ticks"),
            (
                "write",
                "num_write_ops",
                "bytes_written",
                "write_latency_ticks",
            ),
            (
                "unmap",
                "num_unmap_ops",
                "bytes_unmapped",
                "unmap_latency_ticks",
            ),
            (
                "write_zeroes",
                "num_write_zeroes_ops",
                "bytes_write_zeroes",
                "",
            ),
            ("flush", "num_flush_ops", "", ""),
            (
                "xor_write",
                "num_xor_write_ops",
                "bytes_xor_written",
                "xor_write_latency_ticks",
            ),
            (
                "checksum",
                "num_checksum_ops",
                "bytes_checksummed",
                "checksum_latency_ticks",
            ),
        ] {
            ops.with_label_values(&[name, t]).inc_by(u(b, n));
            if !by.is_empty() {
                bytes.with_label_values(&[name, t]).inc_by(u(b, by));
            }
            if !l.is_empty() {
                lat.with_label_values(&[name, t])
                    .inc_by(u(b, l) as f64 / tick_rate);
            }
        }
        errors
            .with_label_values(&[name])
            .inc_by(u(b, "num_io_errors"));
        qd.with_label_values(&[name])
            .set(u(b, "queue_depth") as i64);
    }
    reg("strata_bdev_ops_total", Box::new(ops))?;
    reg("strata_bdev_bytes_total", Box::new(bytes))?;
    reg("strata_bdev_latency_seconds_total", Box::new(lat))?;
    reg("strata_bdev_io_errors_total", Box::new(errors))?;
    reg("strata_bdev_queue_depth", Box::new(qd))?;

    // Reactors.
    let rs = report(methods, "framework_get_reactors", None);
    let rate = rs
        .get("tick_rate")
        .and_then(Value::as_f64)
        .unwrap_or(1.0)
        .max(1.0);
    let busy = fcounter(
        "strata_reactor_busy_seconds_total",
        "Time a reactor spent doing work",
        &["lcore"],
    )?;
    let idle = fcounter(
        "strata_reactor_idle_seconds_total",
        "Time a reactor spent idle",
        &["lcore"],
    )?;
    let wakeups = counter(
        "strata_reactor_wakeups_total",
        "Wake-ups from interrupt mode",
        &["lcore"],
    )?;
    for x in arr(rs.get("reactors").unwrap_or(&Value::Null)) {
        let lc = u(x, "lcore").to_string();
        busy.with_label_values(&[&lc])
            .inc_by(u(x, "busy") as f64 / rate);
        idle.with_label_values(&[&lc])
            .inc_by(u(x, "idle") as f64 / rate);
        wakeups.with_label_values(&[&lc]).inc_by(u(x, "wakeups"));
    }
    reg("strata_reactor_busy_seconds_total", Box::new(busy))?;
    reg("strata_reactor_idle_seconds_total", Box::new(idle))?;
    reg("strata_reactor_wakeups_total", Box::new(wakeups))?;

    // NVMe/TCP queue pairs per poll group.
    let st = report(methods, "nvmf_get_stats", None);
    let qp = igauge(
        "strata_nvmf_qpairs",
        "NVMe/TCP queue pairs connected",
        &["poll_group", "kind"],
    )?;
    for g in arr(st.get("poll_groups").unwrap_or(&Value::Null)) {
        let name = s(g, "name");
        qp.with_label_values(&[name, "admin"])
            .set(u(g, "current_admin_qpairs") as i64);
        qp.with_label_values(&[name, "io"])
            .set(u(g, "current_io_qpairs") as i64);
    }
    reg("strata_nvmf_qpairs", Box::new(qp))?;

    // Volume states and background jobs.
    let state = igauge(
        "strata_volume_state",
        "1 for the volume's current state",
        &["volume", "kind", "state"],
    )?;
    let members = igauge(
        "strata_volume_members_operational",
        "Members or legs serving data",
        &["volume", "kind"],
    )?;
    let jpct = gauge(
        "strata_job_percent",
        "Progress of the volume's running job",
        &["volume", "job"],
    )?;
    let jdone = igauge(
        "strata_job_done_bytes",
        "Bytes the running job has done",
        &["volume", "job"],
    )?;
    let jtotal = igauge(
        "strata_job_total_bytes",
        "Bytes the running job has to do",
        &["volume", "job"],
    )?;
    let jrate = gauge(
        "strata_job_bytes_per_second",
        "Rate of the running job",
        &["volume", "job"],
    )?;
    for a in arr(&report(
        methods,
        "bdev_raid_get_bdevs",
        Some(json!({ "category": "all" })),
    )) {
        let name = s(a, "name");
        state
            .with_label_values(&[name, "raid", s(a, "state")])
            .set(1);
        members
            .with_label_values(&[name, "raid"])
            .set(u(a, "num_base_bdevs_operational") as i64);
        if let Some(p) = a.get("process").filter(|p| !p.is_null()) {
            let job = s(p, "type");
            let pr = p.get("progress").unwrap_or(&Value::Null);
            let bs = block_size.get(name).copied().unwrap_or(1).max(1);
            jpct.with_label_values(&[name, job])
                .set(pr.get("percent").and_then(Value::as_f64).unwrap_or(0.0));
            jdone
                .with_label_values(&[name, job])
                .set((u(pr, "blocks") * bs) as i64);
            jtotal
                .with_label_values(&[name, job])
                .set((u(pr, "total_blocks") * bs) as i64);
            jrate
                .with_label_values(&[name, job])
                .set(pr.get("mb_per_sec").and_then(Value::as_f64).unwrap_or(0.0) * 1e6);
        }
    }
    for m in arr(&report(methods, "bdev_mirror_get", None)) {
        let name = s(m, "name");
        state
            .with_label_values(&[name, "mirror", s(m, "state")])
            .set(1);
        let serving = arr(m.get("legs").unwrap_or(&Value::Null))
            .iter()
            .filter(|l| s(l, "state") == "in_sync")
            .count();
        members
            .with_label_values(&[name, "mirror"])
            .set(serving as i64);
        if let Some(j) = m.get("job").filter(|j| !j.is_null()) {
            let job = s(j, "kind");
            jpct.with_label_values(&[name, job])
                .set(j.get("percent").and_then(Value::as_f64).unwrap_or(0.0));
            jdone
                .with_label_values(&[name, job])
                .set(u(j, "done_bytes") as i64);
            jtotal
                .with_label_values(&[name, job])
                .set(u(j, "total_bytes") as i64);
            jrate
                .with_label_values(&[name, job])
                .set(j.get("mb_per_sec").and_then(Value::as_f64).unwrap_or(0.0) * 1e6);
        }
    }
    // Protected volume groups: journal fill and back-pressure, volumes' states and jobs.
    let jfill = gauge(
        "strata_journal_fill_ratio",
        "Fraction of the journal's log in use (undrained records)",
        &["group"],
    )?;
    let jundrained = igauge(
        "strata_journal_undrained_records",
        "Journal records not yet drained to the backup repository",
        &["group"],
    )?;
    let jage = gauge(
        "strata_journal_oldest_undrained_seconds",
        "Age of the oldest undrained journal record",
        &["group"],
    )?;
    let jwaits = counter(
        "strata_journal_backpressure_waits_total",
        "Journal batches that waited for a drain to trim a full journal",
        &["group"],
    )?;
    let jdrains = counter(
        "strata_journal_drains_total",
        "Drains completed (undrained changes copied to the repository, journal trimmed)",
        &["group"],
    )?;
    let jlegs = igauge(
        "strata_journal_legs_ok",
        "Journal legs holding every record",
        &["group"],
    )?;
    let jdelta = igauge(
        "strata_journal_volume_delta_bytes",
        "Bytes of a protected volume's changes not yet in the repository",
        &["group", "volume"],
    )?;
    for g in arr(&report(methods, "bdev_journal_group_get", None)) {
        let name = s(g, "name");
        let j = g.get("journal").unwrap_or(&Value::Null);
        jfill
            .with_label_values(&[name])
            .set(j.get("fill_percent").and_then(Value::as_f64).unwrap_or(0.0) / 100.0);
        jundrained
            .with_label_values(&[name])
            .set(u(j, "undrained_records") as i64);
        jage.with_label_values(&[name]).set(
            j.get("oldest_undrained_age_seconds")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
        );
        jwaits
            .with_label_values(&[name])
            .inc_by(u(j, "backpressure_waits"));
        jdrains
            .with_label_values(&[name])
            .inc_by(u(g, "drains_done"));
        let ok = arr(j.get("legs").unwrap_or(&Value::Null))
            .iter()
            .filter(|l| s(l, "state") == "ok")
            .count();
        jlegs.with_label_values(&[name]).set(ok as i64);
        for v in arr(g.get("volumes").unwrap_or(&Value::Null)) {
            let vn = s(v, "name");
            state
                .with_label_values(&[vn, "journal", s(v, "state")])
                .set(1);
            jdelta
                .with_label_values(&[name, vn])
                .set(u(v, "delta_bytes") as i64);
            if let Some(r) = v.get("rebuild").filter(|r| !r.is_null()) {
                jpct.with_label_values(&[vn, "rebuild"])
                    .set(r.get("percent").and_then(Value::as_f64).unwrap_or(0.0));
                jdone
                    .with_label_values(&[vn, "rebuild"])
                    .set(u(r, "done_bytes") as i64);
                jtotal
                    .with_label_values(&[vn, "rebuild"])
                    .set(u(r, "total_bytes") as i64);
            }
        }
        if let Some(d) = g.get("drain").filter(|d| !d.is_null()) {
            jpct.with_label_values(&[name, "drain"])
                .set(d.get("percent").and_then(Value::as_f64).unwrap_or(0.0));
            jdone
                .with_label_values(&[name, "drain"])
                .set(u(d, "done_bytes") as i64);
            jtotal
                .with_label_values(&[name, "drain"])
                .set(u(d, "total_bytes") as i64);
            jrate
                .with_label_values(&[name, "drain"])
                .set(d.get("mb_per_sec").and_then(Value::as_f64).unwrap_or(0.0) * 1e6);
        }
    }
    reg("strata_journal_fill_ratio", Box::new(jfill))?;
    reg("strata_journal_undrained_records", Box::new(jundrained))?;
    reg("strata_journal_oldest_undrained_seconds", Box::new(jage))?;
    reg("strata_journal_backpressure_waits_total", Box::new(jwaits))?;
    reg("strata_journal_drains_total", Box::new(jdrains))?;
    reg("strata_journal_legs_ok", Box::new(jlegs))?;
    reg("strata_journal_volume_delta_bytes", Box::new(jdelta))?;
    reg("strata_volume_state", Box::new(state))?;
    reg("strata_volume_members_operational", Box::new(members))?;
    reg("strata_job_percent", Box::new(jpct))?;
    reg("strata_job_done_bytes", Box::new(jdone))?;
    reg("strata_job_total_bytes", Box::new(jtotal))?;
    reg("strata_job_bytes_per_second", Box::new(jrate))?;

    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&r.gather(), &mut out)
        .map_err(|e| MetricsError::Metric("encode", e))?;
    Ok(out)
}
