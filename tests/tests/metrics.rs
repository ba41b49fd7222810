//! `strata-tgt --metrics`: the Prometheus endpoint, scraped directly and by a real
//! Prometheus (Debian's package, installed by scripts/setup.sh, started here on a loopback
//! port and stopped at the end).
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use strata_tests::{free_ports, run_tgt, text, wait_for, Target};

const BS: u64 = 4096;

/// GET `path` from 127.0.0.1:`port`: (status code, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    try_get(port, path).unwrap_or_else(|e| panic!("GET 127.0.0.1:{port}{path}: {e}"))
}

fn try_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let resp = text(&out);
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Ok((code, body.to_string()))
}

/// The value of the sample of `metric` whose labels include every `labels` pair.
fn sample(body: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(metric))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A Prometheus server on a loopback port, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(scrape_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_ports(1)[0];
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: strata\n    static_configs:\n      - targets: ['127.0.0.1:{scrape_port}']\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed by scripts/setup.sh");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// The value of an instant query with one result, if it has one yet.
    fn query(&self, q: &str) -> Option<f64> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        // Refused until Prometheus listens.
        let (code, body) = try_get(self.port, &format!("/api/v1/query?query={enc}")).ok()?;
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let r = v["data"]["result"].as_array()?;
        if r.len() != 1 {
            return None;
        }
        r[0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn metrics_endpoint_and_a_real_prometheus_see_a_mirror_copy() {
    let port = free_ports(1)[0];
    let addr = format!("127.0.0.1:{port}");
    let t = Target::start(&["--no-default", "--metrics", &addr]);
    // Known work: a mirror's initial copy writes its whole data area to the secondary.
    for n in ["L0", "L1"] {
        t.rpc_ok(
            "bdev_malloc_create",
            json!({"name": n, "num_blocks": 4096, "block_size": BS}),
        );
    }
    t.rpc_ok(
        "bdev_mirror_create",
        json!({"name": "M0", "primary": "L0", "secondary": "L1"}),
    );
    let in_sync = || {
        let m = t.rpc_ok("bdev_mirror_get", json!({"name": "M0"}));
        m[0]["job"].is_null()
            && m[0]["legs"]
                .as_array()
                .is_some_and(|l| l.iter().all(|l| l["state"] == "in_sync"))
    };
    assert!(
        wait_for(Duration::from_secs(60), in_sync),
        "mirror M0 never got in sync"
    );
    let vol_bytes = t.bdev("M0")["num_blocks"].as_u64().unwrap() * BS;
    let io = t.rpc_ok("bdev_get_iostat", json!({"name": "L1"}));
    let written = io["bdevs"][0]["bytes_written"].as_u64().unwrap();
    assert!(
        written >= vol_bytes,
        "the copy wrote {written} of {vol_bytes} bytes"
    );

    let (code, body) = http_get(port, "/metrics");
    assert_eq!(code, 200, "{body}");
    let got = sample(
        &body,
        "strata_bdev_bytes_total",
        &[("bdev", "L1"), ("type", "write")],
    );
    assert_eq!(got, Some(written as f64), "L1 writes in /metrics:\n{body}");
    assert_eq!(
        sample(
            &body,
            "strata_volume_state",
            &[("volume", "M0"), ("kind", "mirror")]
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "strata_volume_members_operational",
            &[("volume", "M0")]
        ),
        Some(2.0),
        "{body}"
    );
    assert!(
        sample(
            &body,
            "strata_reactor_busy_seconds_total",
            &[("lcore", "0")]
        )
        .is_some(),
        "{body}"
    );
    assert!(
        body.contains("# TYPE strata_bdev_ops_total counter"),
        "{body}"
    );
    assert_eq!(http_get(port, "/other").0, 404);

    // A real Prometheus scrapes the same figure.
    let p = Prometheus::start(port);
    let q = r#"strata_bdev_bytes_total{bdev="L1",type="write"}"#;
    let mut seen = None;
    let found = wait_for(Duration::from_secs(60), || {
        seen = p.query(q);
        seen == Some(written as f64)
    });
    assert!(found, "Prometheus query {q} gave {seen:?}, want {written}");
    let up = p.query(r#"up{job="strata"}"#);
    assert_eq!(up, Some(1.0), "strata target health in Prometheus");
}

#[test]
fn a_bad_metrics_address_stops_the_start_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let out = run_tgt(
        &[
            "--no-default",
            "-r",
            sock.to_str().unwrap(),
            "--metrics",
            "not-an-address",
        ],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("metrics") && err.contains("not-an-address"),
        "{err}"
    );
}

#[test]
fn metrics_show_a_journal_groups_legs_drains_and_volumes() {
    let port = free_ports(1)[0];
    let addr = format!("127.0.0.1:{port}");
    let t = Target::start(&["--no-default", "--metrics", &addr]);
    for (n, blocks) in [("JA", 2048), ("JB", 2048), ("B0", 1024)] {
        t.rpc_ok(
            "bdev_malloc_create",
            json!({"name": n, "num_blocks": blocks, "block_size": BS}),
        );
    }
    let repo = t.dir().join("repo");
    t.rpc_ok(
        "bdev_journal_group_create",
        json!({"name": "G", "journal_bdevs": "JA JB", "repository": repo}),
    );
    t.rpc_ok(
        "bdev_journal_volume_create",
        json!({"group": "G", "name": "PV", "base_bdev": "B0"}),
    );
    // The volume's first drain (its full backup) ends.
    assert!(wait_for(Duration::from_secs(60), || {
        let g = t.rpc_ok("bdev_journal_group_get", json!({"name": "G"}));
        g[0]["drain"].is_null() && g[0]["drains_done"].as_u64() >= Some(1)
    }));
    let (code, body) = http_get(port, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        sample(&body, "strata_journal_legs_ok", &[("group", "G")]),
        Some(2.0),
        "{body}"
    );
    assert!(
        sample(&body, "strata_journal_drains_total", &[("group", "G")]) >= Some(1.0),
        "{body}"
    );
    assert!(
        sample(&body, "strata_journal_fill_ratio", &[("group", "G")]).is_some(),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "strata_volume_state",
            &[("volume", "PV"), ("kind", "journal"), ("state", "online")]
        ),
        Some(1.0),
        "{body}"
    );
}
