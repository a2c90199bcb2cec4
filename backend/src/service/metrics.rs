//! Counters of the running service: the `stats` control method (JSON) and
//! the Prometheus text endpoint (`--metrics ADDR`).
//!
//! Per controller: frontends connected and accepted. Per LUN (kept by the
//! SCSI target, see [`crate::scsi::target::LunStats`]): commands, read and
//! write commands and bytes, errors, commands in flight, capacity, and a
//! latency histogram (powers of two of microseconds) with p50/p90/p99.
//! Per controller, what its frontends did wrong ([`TrustCounters`]): rings
//! broken, malformed chains, log lines rate-limited away, connections
//! dropped on a protocol error; and the SCSI layer's suppressed log lines.
//! Per controller, what daemon restarts under a running frontend brought
//! back ([`ReconnectCounters`]): reconnects that handed over an inflight
//! region, requests resubmitted from it; and the requests a fault holds.
//! Metric names follow Prometheus conventions (`vscsi_` prefix, `_total`
//! counters, `_bytes`, `_seconds`).
//!
//! The text format is written here rather than with `prometheus-client`:
//! that crate wants every metric registered as its own atomic type (or a
//! collector re-encoding ours at each scrape) and writes OpenMetrics
//! (`# EOF`, its own `_total` and unit rules), while these values are read
//! from the data plane's counters at scrape time and the names above are
//! what dashboards and tests use; what it would replace is the few lines
//! of `family` and `escape`.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{info, warn};

use super::Service;
use crate::scsi::target::LATENCY_BUCKETS;
use crate::vhost::queue_metrics::{ReconnectCounters, TrustCounters};

/// The `stats` result: every controller, or only `only`.
pub fn stats_json(service: &Service, only: Option<&str>) -> Value {
    let ctrls: Vec<Value> = service
        .controllers()
        .iter()
        .filter(|c| only.is_none_or(|n| n == c.name))
        .map(|c| {
            let luns: Vec<Value> = c
                .bus
                .load()
                .entries()
                .map(|(t, l, e)| {
                    let s = e.stats();
                    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                    json!({
                        "target": t,
                        "lun": l,
                        "image": e.lu().path(),
                        "commands": get(&s.commands),
                        "read_ops": get(&s.read_ops),
                        "write_ops": get(&s.write_ops),
                        "read_bytes": get(&s.read_bytes),
                        "written_bytes": get(&s.written_bytes),
                        "errors": get(&s.errors),
                        "in_flight": e.in_flight(),
                        "capacity_bytes": e.lu().capacity_blocks() * u64::from(e.lu().block_size()),
                        "cache_none_misaligned": misaligned(e.lu()),
                        "latency_us": {
                            "p50": s.latency_quantile_us(0.5),
                            "p90": s.latency_quantile_us(0.9),
                            "p99": s.latency_quantile_us(0.99),
                        },
                    })
                })
                .collect();
            let queues: Vec<Value> = c
                .opts
                .queue_metrics
                .snapshot()
                .into_iter()
                .map(|(q, requests, batches, notifications)| {
                    json!({
                        "queue": q,
                        "requests": requests,
                        "batches": batches,
                        "notifications": notifications,
                    })
                })
                .collect();
            json!({
                "name": c.name,
                "socket": c.socket,
                "connected": c.connections.connected.load(Ordering::Relaxed),
                "connections_total": c.connections.total.load(Ordering::Relaxed),
                "queues": queues,
                "trust": trust_json(&c.opts.queue_metrics.trust),
                "reconnect": reconnect_json(&c.opts.queue_metrics.reconnect),
                "held": c.opts.faults.held_now(),
                "luns": luns,
            })
        })
        .collect();
    json!({
        "uptime_seconds": service.uptime().as_secs(),
        "scsi_log_suppressed": crate::ratelimit::SCSI_SUPPRESSED.load(Ordering::Relaxed),
        "controllers": ctrls,
    })
}

fn trust_json(t: &TrustCounters) -> Value {
    let (broken_rings, malformed_chains, log_suppressed, dropped_connections) = t.snapshot();
    json!({
        "broken_rings": broken_rings,
        "malformed_chains": malformed_chains,
        "log_suppressed": log_suppressed,
        "dropped_connections": dropped_connections,
    })
}

fn reconnect_json(r: &ReconnectCounters) -> Value {
    let (reconnects, resubmitted) = r.snapshot();
    json!({ "reconnects": reconnects, "resubmitted": resubmitted })
}

/// The Prometheus families of [`ReconnectCounters`], one row per
/// `(controller, counters)`.
pub fn render_reconnect(out: &mut String, controllers: &[(&str, &ReconnectCounters)]) {
    const FAMILIES: [(&str, &str); 2] = [
        (
            "vscsi_controller_inflight_reconnects_total",
            "Frontend connections that handed over the inflight region of an earlier connection (a reconnect after a daemon restart or upgrade).",
        ),
        (
            "vscsi_controller_resubmitted_requests_total",
            "Requests taken from an inflight region and run again.",
        ),
    ];
    for (i, (name, help)) in FAMILIES.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (c, r) in controllers {
            let s = r.snapshot();
            let v = [s.0, s.1][i];
            let _ = writeln!(out, "{name}{{controller=\"{}\"}} {v}", escape(c));
        }
    }
}

/// The Prometheus families of [`TrustCounters`], one row per
/// `(controller, counters)`, and the SCSI layer's `scsi_suppressed`.
pub fn render_trust(
    out: &mut String,
    controllers: &[(&str, &TrustCounters)],
    scsi_suppressed: u64,
) {
    const FAMILIES: [(&str, &str); 4] = [
        (
            "vscsi_controller_broken_rings_total",
            "Queues stopped because the frontend broke the split-ring contract.",
        ),
        (
            "vscsi_controller_malformed_chains_total",
            "Descriptor chains completed with an error because they were malformed.",
        ),
        (
            "vscsi_controller_log_suppressed_total",
            "Log lines a frontend triggered that the rate limit suppressed.",
        ),
        (
            "vscsi_controller_dropped_connections_total",
            "Frontend connections that ended with a protocol error.",
        ),
    ];
    for (i, (name, help)) in FAMILIES.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (c, t) in controllers {
            let s = t.snapshot();
            let v = [s.0, s.1, s.2, s.3][i];
            let _ = writeln!(out, "{name}{{controller=\"{}\"}} {v}", escape(c));
        }
    }
    let _ = writeln!(out, "# HELP vscsi_scsi_log_suppressed_total Log lines of the SCSI layer (I/O errors) that the rate limit suppressed.");
    let _ = writeln!(out, "# TYPE vscsi_scsi_log_suppressed_total counter");
    let _ = writeln!(out, "vscsi_scsi_log_suppressed_total {scsi_suppressed}");
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Transfers of a `cache=none` image that were not aligned for `O_DIRECT`
/// (served through the page cache); 0 for other images.
fn misaligned(lu: &crate::scsi::LogicalUnit) -> u64 {
    lu.raw_image()
        .map_or(0, crate::storage::RawImage::misaligned)
}

/// The Prometheus text exposition (format 0.0.4) of every controller.
pub fn render(service: &Service) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let mut connected = Vec::new();
    let mut total = Vec::new();
    type Row = (String, String);
    let mut per_lun: Vec<(&str, &str, &str, Vec<Row>)> = vec![
        (
            "vscsi_lun_commands_total",
            "counter",
            "SCSI commands completed.",
            vec![],
        ),
        (
            "vscsi_lun_read_commands_total",
            "counter",
            "READ commands completed.",
            vec![],
        ),
        (
            "vscsi_lun_write_commands_total",
            "counter",
            "WRITE-family commands completed.",
            vec![],
        ),
        (
            "vscsi_lun_read_bytes_total",
            "counter",
            "Bytes returned to the frontend (Data-In).",
            vec![],
        ),
        (
            "vscsi_lun_written_bytes_total",
            "counter",
            "Bytes taken from the frontend (Data-Out).",
            vec![],
        ),
        (
            "vscsi_lun_errors_total",
            "counter",
            "Commands that did not end with GOOD status.",
            vec![],
        ),
        (
            "vscsi_lun_in_flight",
            "gauge",
            "Commands running now.",
            vec![],
        ),
        (
            "vscsi_lun_capacity_bytes",
            "gauge",
            "Capacity served.",
            vec![],
        ),
        (
            "vscsi_lun_cache_none_misaligned_total",
            "counter",
            "Transfers of a cache=none image served through the page cache because they were not aligned for O_DIRECT.",
            vec![],
        ),
    ];
    let mut per_queue: [(&str, &str, &str, Vec<Row>); 3] = [
        (
            "vscsi_queue_requests_total",
            "counter",
            "Requests the request queue completed.",
            vec![],
        ),
        (
            "vscsi_queue_batches_total",
            "counter",
            "Times the queue's worker woke up and found requests.",
            vec![],
        ),
        (
            "vscsi_queue_notifications_total",
            "counter",
            "Used-buffer notifications sent to the driver.",
            vec![],
        ),
    ];
    let mut hist = Vec::new();
    let mut nbd: Vec<Vec<Row>> = vec![Vec::new(); crate::storage::nbd::METRICS.len()];
    for c in service.controllers() {
        let cl = format!("{{controller=\"{}\"}}", escape(&c.name));
        connected.push((
            cl.clone(),
            c.connections.connected.load(Ordering::Relaxed).to_string(),
        ));
        total.push((cl, c.connections.total.load(Ordering::Relaxed).to_string()));
        for (q, requests, batches, notifications) in c.opts.queue_metrics.snapshot() {
            let labels = format!("{{controller=\"{}\",queue=\"{q}\"}}", escape(&c.name));
            per_queue[0].3.push((labels.clone(), requests.to_string()));
            per_queue[1].3.push((labels.clone(), batches.to_string()));
            per_queue[2].3.push((labels, notifications.to_string()));
        }
        for (t, l, e) in c.bus.load().entries() {
            let labels = format!(
                "controller=\"{}\",target=\"{t}\",lun=\"{l}\"",
                escape(&c.name)
            );
            let s = e.stats();
            let values = [
                s.commands.load(Ordering::Relaxed),
                s.read_ops.load(Ordering::Relaxed),
                s.write_ops.load(Ordering::Relaxed),
                s.read_bytes.load(Ordering::Relaxed),
                s.written_bytes.load(Ordering::Relaxed),
                s.errors.load(Ordering::Relaxed),
                e.in_flight(),
                e.lu().capacity_blocks() * u64::from(e.lu().block_size()),
                misaligned(e.lu()),
            ];
            for (f, v) in per_lun.iter_mut().zip(values) {
                f.3.push((format!("{{{labels}}}"), v.to_string()));
            }
            if let Some(n) = e.lu().image().as_nbd() {
                for (i, values) in n.metric_values().into_iter().enumerate() {
                    for (rows, v) in nbd.iter_mut().zip(values) {
                        rows.push((format!("{{{labels},connection=\"{i}\"}}"), v));
                    }
                }
            }
            let mut cumulative = 0u64;
            for i in 0..LATENCY_BUCKETS {
                cumulative += s.latency_buckets[i].load(Ordering::Relaxed);
                let le = (1u64 << i) as f64 / 1e6;
                hist.push(format!(
                    "vscsi_lun_command_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                ));
            }
            hist.push(format!(
                "vscsi_lun_command_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
            ));
            hist.push(format!(
                "vscsi_lun_command_duration_seconds_sum{{{labels}}} {}",
                s.latency_ns_sum.load(Ordering::Relaxed) as f64 / 1e9
            ));
            hist.push(format!(
                "vscsi_lun_command_duration_seconds_count{{{labels}}} {cumulative}"
            ));
        }
    }
    family(
        "vscsi_controller_connected",
        "gauge",
        "Frontends connected to the controller's socket.",
        &connected,
    );
    family(
        "vscsi_controller_connections_total",
        "counter",
        "Frontends accepted since start.",
        &total,
    );
    for (name, kind, help, rows) in per_queue.iter().chain(&per_lun) {
        family(name, kind, help, rows);
    }
    for ((name, kind, help), rows) in crate::storage::nbd::METRICS.iter().zip(&nbd) {
        if !rows.is_empty() {
            family(name, kind, help, rows);
        }
    }
    let trust: Vec<(&str, &TrustCounters)> = service
        .controllers()
        .iter()
        .map(|c| (c.name.as_str(), &c.opts.queue_metrics.trust))
        .collect();
    render_trust(
        &mut out,
        &trust,
        crate::ratelimit::SCSI_SUPPRESSED.load(Ordering::Relaxed),
    );
    let reconnect: Vec<(&str, &ReconnectCounters)> = service
        .controllers()
        .iter()
        .map(|c| (c.name.as_str(), &c.opts.queue_metrics.reconnect))
        .collect();
    render_reconnect(&mut out, &reconnect);
    let _ = writeln!(out, "# HELP vscsi_lun_command_duration_seconds Time from the target receiving a command to its status.");
    let _ = writeln!(out, "# TYPE vscsi_lun_command_duration_seconds histogram");
    for h in hist {
        let _ = writeln!(out, "{h}");
    }
    out
}

fn respond(service: &Service, mut stream: impl Read + Write) {
    let mut buf = [0u8; 2048];
    let n = stream.read(&mut buf).unwrap_or(0);
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if req.starts_with("GET ") && (path == "/metrics" || path == "/") {
        ("200 OK", render(service))
    } else {
        ("404 Not Found", "try GET /metrics\n".to_string())
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Where metrics are served.
pub enum MetricsListener {
    /// Loopback TCP.
    Tcp(TcpListener),
    /// A unix socket (mode 0600).
    Unix(UnixListener),
}

/// Binds `addr` (`HOST:PORT` on loopback, or `unix:PATH`).
pub fn bind(addr: &str) -> Result<MetricsListener, crate::daemon::DaemonError> {
    crate::config::check_metrics_addr(addr).map_err(|m| crate::daemon::DaemonError::Bind {
        path: addr.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, m),
    })?;
    if let Some(p) = addr.strip_prefix("unix:") {
        let access = crate::config::SocketAccess {
            mode: crate::config::CONTROL_SOCKET_MODE,
            ..Default::default()
        };
        return crate::daemon::bind_with(std::path::Path::new(p), &access)
            .map(MetricsListener::Unix);
    }
    TcpListener::bind(addr)
        .map(MetricsListener::Tcp)
        .map_err(|source| crate::daemon::DaemonError::Bind {
            path: addr.into(),
            source,
        })
}

/// Serves metrics until the service stops (one request per connection,
/// answered in turn on this thread).
pub fn serve(service: Arc<Service>, listener: MetricsListener) {
    info!("metrics endpoint ready");
    let timeout = Some(Duration::from_secs(5));
    loop {
        if service.stopping() {
            return;
        }
        match &listener {
            MetricsListener::Tcp(l) => match l.accept() {
                Ok((s, _)) => {
                    let _ = s.set_read_timeout(timeout);
                    let _ = s.set_write_timeout(timeout);
                    respond(&service, s);
                }
                Err(e) => warn!(error = %e, "metrics accept failed"),
            },
            MetricsListener::Unix(l) => match l.accept() {
                Ok((s, _)) => {
                    let _ = s.set_read_timeout(timeout);
                    let _ = s.set_write_timeout(timeout);
                    respond(&service, s);
                }
                Err(e) => warn!(error = %e, "metrics accept failed"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnect_counters_render_as_prometheus_text() {
        let a = ReconnectCounters::default();
        let b = ReconnectCounters::default();
        a.reconnects.fetch_add(2, Ordering::Relaxed);
        a.resubmitted.fetch_add(7, Ordering::Relaxed);
        b.resubmitted.fetch_add(1, Ordering::Relaxed);
        let mut out = String::new();
        render_reconnect(&mut out, &[("vm1", &a), ("vm2", &b)]);
        let expected = "\
# HELP vscsi_controller_inflight_reconnects_total Frontend connections that handed over the inflight region of an earlier connection (a reconnect after a daemon restart or upgrade).
# TYPE vscsi_controller_inflight_reconnects_total counter
vscsi_controller_inflight_reconnects_total{controller=\"vm1\"} 2
vscsi_controller_inflight_reconnects_total{controller=\"vm2\"} 0
# HELP vscsi_controller_resubmitted_requests_total Requests taken from an inflight region and run again.
# TYPE vscsi_controller_resubmitted_requests_total counter
vscsi_controller_resubmitted_requests_total{controller=\"vm1\"} 7
vscsi_controller_resubmitted_requests_total{controller=\"vm2\"} 1
";
        assert_eq!(out, expected);
    }

    #[test]
    fn the_trust_counters_render_as_prometheus_text() {
        let a = TrustCounters::default();
        let b = TrustCounters::default();
        TrustCounters::add(&a.broken_rings);
        TrustCounters::add(&a.broken_rings);
        TrustCounters::add(&a.malformed_chains);
        for _ in 0..7 {
            TrustCounters::add(&b.log_suppressed);
        }
        TrustCounters::add(&b.dropped_connections);
        let mut out = String::new();
        render_trust(&mut out, &[("vm1", &a), ("v\"2", &b)], 3);
        let expected = "\
# HELP vscsi_controller_broken_rings_total Queues stopped because the frontend broke the split-ring contract.
# TYPE vscsi_controller_broken_rings_total counter
vscsi_controller_broken_rings_total{controller=\"vm1\"} 2
vscsi_controller_broken_rings_total{controller=\"v\\\"2\"} 0
# HELP vscsi_controller_malformed_chains_total Descriptor chains completed with an error because they were malformed.
# TYPE vscsi_controller_malformed_chains_total counter
vscsi_controller_malformed_chains_total{controller=\"vm1\"} 1
vscsi_controller_malformed_chains_total{controller=\"v\\\"2\"} 0
# HELP vscsi_controller_log_suppressed_total Log lines a frontend triggered that the rate limit suppressed.
# TYPE vscsi_controller_log_suppressed_total counter
vscsi_controller_log_suppressed_total{controller=\"vm1\"} 0
vscsi_controller_log_suppressed_total{controller=\"v\\\"2\"} 7
# HELP vscsi_controller_dropped_connections_total Frontend connections that ended with a protocol error.
# TYPE vscsi_controller_dropped_connections_total counter
vscsi_controller_dropped_connections_total{controller=\"vm1\"} 0
vscsi_controller_dropped_connections_total{controller=\"v\\\"2\"} 1
# HELP vscsi_scsi_log_suppressed_total Log lines of the SCSI layer (I/O errors) that the rate limit suppressed.
# TYPE vscsi_scsi_log_suppressed_total counter
vscsi_scsi_log_suppressed_total 3
";
        assert_eq!(out, expected);
    }
}
