//! The witness's `metrics_listen`: `GET /metrics` (what it granted, to whom, how long the
//! holder's lease still runs, and how many claims it answered or dropped) and `GET /healthz`
//! (its claim loop turns). Served by the node's HTTP responder (`metrics::serve`).
//!
//! Names are the witness's own view, apart from the node's `pbchat_witness_*` metrics (the
//! claims a node sent and what it was answered): one Prometheus job scrapes each process.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::metrics::{self, metric, Reply, STATUS_MAX_AGE};
use crate::core::witness::Granted;

/// What the claim loop publishes after each turn; the HTTP thread only reads it.
#[derive(Clone, Debug)]
pub struct WitnessView {
    pub granted: Granted,
    /// When the holder's lease runs out (the witness's clock).
    pub lease_until: Instant,
    /// When the claim loop last turned: it turns at least every `STOP_CHECK_INTERVAL`.
    pub turned: Instant,
    /// Claims answered `granted` (renewals included).
    pub granted_total: u64,
    /// Grants that changed the state file (a new epoch or a new holder).
    pub grant_changes_total: u64,
    /// Claims answered `refused`.
    pub refused_total: u64,
    /// Datagrams dropped unanswered: bad MAC, malformed, replayed or stale.
    pub rejected_total: u64,
    /// Wall-clock start, for `process_start_time_seconds`.
    pub started_unix_ms: u64,
}

pub type SharedView = Arc<Mutex<WitnessView>>;

/// Binds `metrics_listen` and serves the view on a thread.
pub fn spawn(listen: SocketAddr, view: SharedView) -> Result<SocketAddr, super::DaemonError> {
    metrics::serve(listen, "metrics_listen", move |method, path| {
        let view = view.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match (method, path) {
            ("GET", "/metrics") => Reply::metrics(render(&view, Instant::now())),
            ("GET", "/healthz") => {
                let (ok, body) = health(&view, Instant::now());
                Reply::text(ok, body)
            }
            _ => Reply::other(method, "/metrics or /healthz"),
        }
    })
}

/// `/healthz`: 200 while the claim loop turns, with what is granted.
pub fn health(view: &WitnessView, now: Instant) -> (bool, String) {
    let idle = now.saturating_duration_since(view.turned);
    if idle > STATUS_MAX_AGE {
        return (
            false,
            format!(
                "unhealthy: the claim loop has not turned for {} ms\n",
                idle.as_millis()
            ),
        );
    }
    let body = if view.granted.holder.is_empty() {
        "ok witness: nothing granted yet\n".to_string()
    } else {
        format!(
            "ok witness: epoch {} held by {}, lease {} ms left\n",
            view.granted.epoch,
            view.granted.holder,
            lease_left(view, now).as_millis()
        )
    };
    (true, body)
}

fn lease_left(view: &WitnessView, now: Instant) -> Duration {
    view.lease_until.saturating_duration_since(now)
}

/// The exposition text.
pub fn render(view: &WitnessView, now: Instant) -> String {
    let mut out = String::new();
    metric(
        &mut out,
        "witness_granted_epoch",
        "gauge",
        "Highest epoch this witness granted (0: none yet).",
        view.granted.epoch,
    );
    if !view.granted.holder.is_empty() {
        let _ = writeln!(
            out,
            "# HELP pbchat_witness_lease_holder The node holding the granted epoch: always 1, the node in its label.\n\
             # TYPE pbchat_witness_lease_holder gauge\n\
             pbchat_witness_lease_holder{{node=\"{}\"}} 1",
            label_value(&view.granted.holder)
        );
    }
    metric(&mut out,
        "witness_holder_lease_seconds",
        "gauge",
        "How much longer the holder's lease runs on the witness's clock (0: no node may commit on a lease; another may be granted).",
        lease_left(view, now).as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "# HELP pbchat_witness_answers_total Claims answered, by verdict (renewals are granted claims).\n\
         # TYPE pbchat_witness_answers_total counter\n\
         pbchat_witness_answers_total{{verdict=\"granted\"}} {}\n\
         pbchat_witness_answers_total{{verdict=\"refused\"}} {}",
        view.granted_total, view.refused_total
    );
    metric(
        &mut out,
        "witness_grant_changes_total",
        "counter",
        "Grants of a new epoch or to a new node, each written to the state file first.",
        view.grant_changes_total,
    );
    metric(
        &mut out,
        "witness_claims_rejected_total",
        "counter",
        "Datagrams dropped unanswered: bad MAC, malformed, replayed or stale.",
        view.rejected_total,
    );
    metrics::process_metrics(&mut out, view.started_unix_ms);
    out
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(now: Instant) -> WitnessView {
        WitnessView {
            granted: Granted {
                epoch: 4,
                holder: "b".into(),
            },
            lease_until: now + Duration::from_millis(450),
            turned: now,
            granted_total: 30,
            grant_changes_total: 2,
            refused_total: 3,
            rejected_total: 1,
            started_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn the_exposition_says_what_is_granted_to_whom_and_the_counts() {
        let now = Instant::now();
        let text = render(&view(now), now);
        for line in [
            "pbchat_witness_granted_epoch 4\n",
            "pbchat_witness_lease_holder{node=\"b\"} 1\n",
            "pbchat_witness_holder_lease_seconds 0.45\n",
            "pbchat_witness_answers_total{verdict=\"granted\"} 30\n",
            "pbchat_witness_answers_total{verdict=\"refused\"} 3\n",
            "pbchat_witness_grant_changes_total 2\n",
            "pbchat_witness_claims_rejected_total 1\n",
            "process_start_time_seconds 1700000000\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        // Past the lease, the gauge reads 0 rather than going negative.
        let later = render(&view(now), now + Duration::from_secs(5));
        assert!(
            later.contains("pbchat_witness_holder_lease_seconds 0\n"),
            "{later}"
        );
    }

    #[test]
    fn before_the_first_grant_no_holder_is_made_up() {
        let now = Instant::now();
        let mut fresh = view(now);
        fresh.granted = Granted::default();
        assert!(!render(&fresh, now).contains("lease_holder{"));
        assert_eq!(
            health(&fresh, now),
            (true, "ok witness: nothing granted yet\n".into())
        );
    }

    #[test]
    fn healthz_fails_once_the_claim_loop_stops_turning() {
        let now = Instant::now();
        let (ok, body) = health(&view(now), now);
        assert!(
            ok && body.starts_with("ok witness: epoch 4 held by b, lease 450 ms"),
            "{body}"
        );
        let (ok, body) = health(&view(now), now + STATUS_MAX_AGE + Duration::from_millis(1));
        assert!(!ok && body.contains("has not turned"), "{body}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
