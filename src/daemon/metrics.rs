//! `[metrics] listen`: a tiny HTTP/1.0 responder for `GET /metrics` in the Prometheus text
//! format, and for load balancers `GET /healthz` (the node works) and `GET /role` (200 only
//! on the serving primary). One thread, one request per connection, no framework.
//!
//! It exports only what the node counts: the status the driver publishes (at most 100 ms
//! old) and the I/O and heartbeat counters (live atomics). It changes nothing.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::admin::{Ops, PeerInfo, Status, StrictInfo};
use super::error::DaemonError;
use super::heartbeat::HeartbeatStats;

/// The request head we read at most; the rest is ignored.
const REQUEST_MAX_BYTES: u64 = 8 * 1024;
/// A scraper that does not send its request (or read the answer) in this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// `/healthz` fails once the driver's published status is this old: the driver republishes
/// at least every 100 ms (`STATUS_REFRESH`) and turns at least every 50 ms tick, so 2 s is
/// twenty missed refreshes, a core thread that stopped turning, not a busy one.
pub const STATUS_MAX_AGE: Duration = Duration::from_secs(2);

/// One HTTP answer: status line, content type, body.
pub struct Reply {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

pub const OK: &str = "200 OK";
pub const UNAVAILABLE: &str = "503 Service Unavailable";
pub const TEXT: &str = "text/plain; charset=utf-8";
pub const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Reply {
    pub fn text(ok: bool, body: String) -> Reply {
        let status = if ok { OK } else { UNAVAILABLE };
        Reply {
            status,
            content_type: TEXT,
            body,
        }
    }

    pub fn metrics(body: String) -> Reply {
        Reply {
            status: OK,
            content_type: EXPOSITION,
            body,
        }
    }

    /// 404 naming the paths there are, or 405 for anything but GET.
    pub fn other(method: &str, paths: &str) -> Reply {
        let (status, body) = if method == "GET" {
            ("404 Not Found", format!("not found: try {paths}\n"))
        } else {
            ("405 Method Not Allowed", "only GET\n".to_string())
        };
        Reply {
            status,
            content_type: TEXT,
            body,
        }
    }
}

/// Binds `listen` (an error names `key`, the config key that set it) and answers each
/// request with `answer(method, path)` on a thread of its own: the node's and the
/// witness's listeners alike.
pub fn serve(
    listen: SocketAddr,
    key: &'static str,
    answer: impl Fn(&str, &str) -> Reply + Send + 'static,
) -> Result<SocketAddr, DaemonError> {
    let fail = |step| DaemonError::listen(key, listen, step);
    let listener = TcpListener::bind(listen).map_err(fail("bind"))?;
    let bound = listener.local_addr().map_err(fail("local address"))?;
    super::spawn("metrics", move || {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => handle(stream, &answer),
                Err(e) => {
                    log::warn!("metrics {bound}: accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })?;
    Ok(bound)
}

/// The node's `[metrics] listen`.
pub fn spawn(listen: SocketAddr, ops: Arc<Ops>) -> Result<SocketAddr, DaemonError> {
    serve(listen, "metrics.listen", move |method, path| {
        match (method, path) {
            ("GET", "/metrics") => Reply::metrics(render(&ops)),
            ("GET", "/healthz") => {
                let (ok, body) = health(&ops);
                Reply::text(ok, body)
            }
            ("GET", "/role") => {
                let (ok, body) = role(&ops);
                Reply::text(ok, body)
            }
            _ => Reply::other(method, "/metrics, /healthz or /role"),
        }
    })
}

fn handle(stream: TcpStream, answer: &impl Fn(&str, &str) -> Reply) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut reader = BufReader::new(&stream).take(REQUEST_MAX_BYTES);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Read the headers to the blank line, so the client sees its request consumed.
    let mut header = String::new();
    while matches!(reader.read_line(&mut header), Ok(n) if n > 0) {
        if header.trim().is_empty() {
            break;
        }
        header.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let reply = answer(method, path);
    let response = format!(
        "HTTP/1.0 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.status,
        reply.content_type,
        reply.body.len(),
        reply.body
    );
    let _ = (&stream).write_all(response.as_bytes());
}

/// `/healthz`: the node works (its core thread turns, its log is not stuck), whatever its
/// role; the body says the role: `ok primary epoch 3`.
pub fn health(ops: &Ops) -> (bool, String) {
    let status = ops.current();
    let age = status.built_at.map(|at| at.elapsed());
    match age {
        None => (false, "unhealthy: starting\n".into()),
        Some(age) if age > STATUS_MAX_AGE => (
            false,
            format!(
                "unhealthy: the core thread has not turned for {} ms\n",
                age.as_millis()
            ),
        ),
        Some(_) if status.log_stuck => (
            false,
            format!(
                "unhealthy: {} epoch {}: the log completes no write\n",
                status.role, status.epoch
            ),
        ),
        Some(_) => (true, format!("ok {} epoch {}\n", status.role, status.epoch)),
    }
}

/// `/role`: 200 `primary epoch 3` only on the primary that takes sends now (not a backup,
/// not draining, handing over or fenced) and is healthy; 503 with the reason otherwise.
pub fn role(ops: &Ops) -> (bool, String) {
    let (healthy, why) = health(ops);
    if !healthy {
        return (false, why);
    }
    let status = ops.current();
    if status.serving {
        (true, format!("primary epoch {}\n", status.epoch))
    } else {
        (
            false,
            format!("{} epoch {}\n", status.serving_reason, status.epoch),
        )
    }
}

/// `pbchat_build_info` and `process_start_time_seconds`: the node's and the witness's.
pub fn process_metrics(out: &mut String, started_unix_ms: u64) {
    let _ = writeln!(
        out,
        "# HELP pbchat_build_info The running build: always 1, the version in its label.\n\
         # TYPE pbchat_build_info gauge\n\
         pbchat_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    // The standard name (no prefix) that Prometheus's `process_*` conventions use; its own
    // `time() - process_start_time_seconds` is the uptime.
    let _ = writeln!(
        out,
        "# HELP process_start_time_seconds Start time of the process since the Unix epoch, in seconds.\n\
         # TYPE process_start_time_seconds gauge\n\
         process_start_time_seconds {}",
        started_unix_ms as f64 / 1e3
    );
}

/// One metric without labels: its help, type and value.
pub fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP pbchat_{name} {help}");
    let _ = writeln!(out, "# TYPE pbchat_{name} {kind}");
    let _ = writeln!(out, "pbchat_{name} {value}");
}

/// The exposition text.
/// The exposition text.
pub fn render(ops: &Ops) -> String {
    let status = ops.current();
    let now_mono_ms = ops.base.elapsed().as_millis() as u64;
    let mut out = String::new();
    render_node(&mut out, &status);
    if let Some(peer) = &status.peer {
        render_peer(&mut out, peer, status.last_seq, now_mono_ms);
    }
    render_counters(&mut out, ops, &status);
    if let Some(heartbeats) = &ops.heartbeats {
        render_heartbeats(&mut out, heartbeats);
    }
    process_metrics(&mut out, status.started_ms);
    ops.latencies.render(&mut out);
    ops.io.delivery_queue.render(
        &mut out,
        "pbchat_delivery_queue_seconds",
        "Committed messages waiting in an I/O worker's queue before it fans them out.",
    );
    out
}

/// The node's role and log.
fn render_node(out: &mut String, status: &Status) {
    metric(
        out,
        "role_primary",
        "gauge",
        "1 while this node is the primary, 0 while backup.",
        u64::from(status.role == "primary"),
    );
    metric(out, "epoch", "gauge", "Current epoch.", status.epoch);
    metric(
        out,
        "head_seq",
        "gauge",
        "Highest committed seq.",
        status.head,
    );
    metric(
        out,
        "last_seq",
        "gauge",
        "Highest seq ordered (committed or pending).",
        status.last_seq,
    );
    metric(
        out,
        "pending",
        "gauge",
        "Messages ordered, not yet committed.",
        status.pending as u64,
    );
    metric(
        out,
        "clients",
        "gauge",
        "Clients with an open session.",
        status.clients as u64,
    );
    metric(
        out,
        "rooms",
        "gauge",
        "Rooms with at least one member.",
        status.rooms as u64,
    );
    metric(
        out,
        "degraded",
        "gauge",
        "1 while a sync-mode primary acknowledges without the backup.",
        u64::from(status.degraded),
    );
}

/// The pair, as this node last saw it.
fn render_peer(out: &mut String, peer: &PeerInfo, last_seq: u64, now_mono_ms: u64) {
    metric(
        out,
        "peer_reachable",
        "gauge",
        "1 while the peer was heard within the detection time.",
        u64::from(peer.reachable(now_mono_ms)),
    );
    if let Some(lag) = peer.lag(last_seq) {
        metric(
            out,
            "backup_lag",
            "gauge",
            "Entries the connected backup has not acknowledged (primary only).",
            lag,
        );
    }
    // failover.mode = "strict" only: in available mode there is no lease to report.
    if let Some(strict) = &peer.strict {
        render_strict(out, strict, now_mono_ms);
    }
}

/// Strict mode's lease and claims.
fn render_strict(out: &mut String, strict: &StrictInfo, now_mono_ms: u64) {
    metric(out,
        "witness_lease_remaining_seconds",
        "gauge",
        "How much longer this primary's witness lease runs (0: none; it then commits only what a synchronous backup holds).",
        strict.lease_left_ms(now_mono_ms) as f64 / 1e3,
    );
    metric(
        out,
        "witness_claims_total",
        "counter",
        "Claims sent to the witness: lease renewals (primary) and bids to take over (backup).",
        strict.counts.claims,
    );
    metric(
        out,
        "witness_grants_total",
        "counter",
        "Claims the witness granted (renewals and take-overs).",
        strict.counts.grants,
    );
    metric(
        out,
        "witness_refusals_total",
        "counter",
        "Claims the witness refused (another node's lease runs, or a newer epoch).",
        strict.counts.refusals,
    );
    metric(out,
        "strict_sends_refused_total",
        "counter",
        "Sends answered unavailable because this primary held no lease (no witness lease, no synchronous backup).",
        strict.counts.sends_refused,
    );
}

/// Uptime and the counters since start.
fn render_counters(out: &mut String, ops: &Ops, status: &Status) {
    metric(
        out,
        "uptime_seconds",
        "gauge",
        "Seconds since the process started.",
        ops.uptime_ms() / 1000,
    );

    metric(
        out,
        "commits_total",
        "counter",
        "Messages committed (acknowledged and published) by this node.",
        status.commits_total,
    );
    metric(
        out,
        "failovers_total",
        "counter",
        "Promotions of this node to primary (automatic or planned).",
        status.failovers_total,
    );
    metric(
        out,
        "rate_limited_total",
        "counter",
        "Requests (sends; joins, leaves and history requests) refused by a client's rate limits.",
        status.rate_limited_total,
    );
    metric(
        out,
        "slow_consumer_drops_total",
        "counter",
        "Clients dropped because they read too slowly.",
        ops.io.slow_consumer_drops.load(Ordering::Relaxed),
    );
    metric(
        out,
        "client_bytes_sent_total",
        "counter",
        "Bytes written to client sockets.",
        ops.io.bytes_sent.load(Ordering::Relaxed),
    );
    metric(
        out,
        "client_frames_sent_total",
        "counter",
        "Frames written to client sockets.",
        ops.io.frames_sent.load(Ordering::Relaxed),
    );
    metric(
        out,
        "client_writes_total",
        "counter",
        "Write system calls to client sockets (frames per write shows how well writes coalesce).",
        ops.io.writes.load(Ordering::Relaxed),
    );
}

/// The heartbeat thread's counters.
fn render_heartbeats(out: &mut String, hb: &HeartbeatStats) {
    metric(
        out,
        "heartbeats_sent_total",
        "counter",
        "Heartbeats sent to the peer.",
        hb.sent.load(Ordering::Relaxed),
    );
    metric(
        out,
        "heartbeats_received_total",
        "counter",
        "Valid heartbeats received from the peer.",
        hb.received.load(Ordering::Relaxed),
    );
    metric(
        out,
        "heartbeats_rejected_total",
        "counter",
        "Heartbeat datagrams rejected (bad MAC, replayed, wrong node, malformed).",
        hb.rejected.load(Ordering::Relaxed),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::admin::Status;
    use std::time::Instant;

    #[test]
    fn exposition_has_help_type_and_value_per_metric() {
        let ops = Ops::new(Instant::now(), Arc::default(), None);
        ops.publish(Status {
            role: "primary",
            epoch: 3,
            commits_total: 7,
            ..Status::default()
        });
        let text = render(&ops);
        assert!(text.contains("# TYPE pbchat_commits_total counter\npbchat_commits_total 7\n"));
        assert!(text.contains("pbchat_role_primary 1\n"));
        assert!(text.contains("pbchat_epoch 3\n"));
        // Standalone: nothing about a peer is made up.
        assert!(!text.contains("backup_lag"));
        assert!(!text.contains("heartbeats"));
        assert!(!text.contains("witness"));
    }

    #[test]
    fn healthz_and_role_follow_the_published_status() {
        let ops = Ops::new(Instant::now(), Arc::default(), None);
        // Nothing published yet: not healthy, not serving.
        assert!(!health(&ops).0);
        assert!(!role(&ops).0);
        ops.publish(Status {
            role: "primary",
            epoch: 3,
            serving: true,
            serving_reason: "serving",
            built_at: Some(Instant::now()),
            ..Status::default()
        });
        assert_eq!(health(&ops), (true, "ok primary epoch 3\n".into()));
        assert_eq!(role(&ops), (true, "primary epoch 3\n".into()));
        ops.publish(Status {
            role: "primary",
            epoch: 3,
            serving: false,
            serving_reason: "draining",
            built_at: Some(Instant::now()),
            ..Status::default()
        });
        assert!(health(&ops).0);
        assert_eq!(role(&ops), (false, "draining epoch 3\n".into()));
        ops.publish(Status {
            role: "backup",
            epoch: 4,
            serving_reason: "backup",
            built_at: Some(Instant::now()),
            ..Status::default()
        });
        assert_eq!(health(&ops), (true, "ok backup epoch 4\n".into()));
        assert!(!role(&ops).0);
        // A core that stopped turning: the status grows old.
        ops.publish(Status {
            role: "primary",
            serving: true,
            built_at: Some(Instant::now() - STATUS_MAX_AGE - Duration::from_millis(1)),
            ..Status::default()
        });
        let (ok, body) = health(&ops);
        assert!(!ok && body.contains("has not turned"), "{body}");
        assert!(!role(&ops).0);
        ops.publish(Status {
            role: "primary",
            serving: false,
            log_stuck: true,
            built_at: Some(Instant::now()),
            ..Status::default()
        });
        assert!(!health(&ops).0);
    }

    #[test]
    fn strict_mode_exports_the_lease_and_the_witness_counters() {
        use crate::core::strict::StrictCounts;
        use crate::daemon::admin::{PeerInfo, StrictInfo};

        let base = Instant::now() - Duration::from_secs(10);
        let now_mono_ms = base.elapsed().as_millis() as u64;
        let ops = Ops::new(base, Arc::default(), None);
        let strict = StrictInfo {
            witness: "10.0.0.3:7410".into(),
            // Far enough ahead that the render, a few ms later, still sees most of it.
            lease_until_mono_ms: Some(now_mono_ms + 60_000),
            witness_heard_mono_ms: Some(now_mono_ms),
            bidding: None,
            counts: StrictCounts {
                claims: 12,
                grants: 11,
                refusals: 1,
                sends_refused: 4,
            },
        };
        ops.publish(Status {
            role: "primary",
            peer: Some(PeerInfo {
                strict: Some(strict),
                ..PeerInfo::default()
            }),
            ..Status::default()
        });
        let text = render(&ops);
        let value = |name: &str| -> u64 {
            let prefix = format!("pbchat_{name} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .parse()
                .unwrap()
        };
        let lease = text
            .lines()
            .find_map(|l| l.strip_prefix("pbchat_witness_lease_remaining_seconds "))
            .unwrap()
            .parse::<f64>()
            .unwrap();
        assert!((50.0..=60.0).contains(&lease), "{lease}");
        assert_eq!(value("witness_claims_total"), 12);
        assert_eq!(value("witness_grants_total"), 11);
        assert_eq!(value("witness_refusals_total"), 1);
        assert_eq!(value("strict_sends_refused_total"), 4);
        assert!(text.contains("# TYPE pbchat_witness_grants_total counter\n"));
        // Without strict mode a paired node exports none of them.
        ops.publish(Status {
            role: "primary",
            peer: Some(PeerInfo::default()),
            ..Status::default()
        });
        assert!(!render(&ops).contains("witness"));
    }
}
