//! The liveness rule (docs/protocol.md, "Liveness"): when a client asks the other node
//! whether it took over, and where.
//!
//! Every client frame gets an answer, so a node that heard a frame and sent nothing at all
//! for `probe_ms` is stopped, cut off, or very slow. The client cannot tell which; the pair
//! can: the backup holds a `hello` while its primary is quiet and welcomes it if it takes
//! over. So the client keeps its connection and sends a `hello` to the other node: a
//! `welcome` means that node serves now (move there and resume), a `redirect` means the
//! current node is still the primary (stay). Only a primary says `welcome`, so a false
//! suspicion under load never moves a client; it costs the backup one short connection.
//!
//! Pure: the caller supplies the time and carries out the probe.

use std::time::{Duration, Instant};

/// The probe target and timing for one open session.
#[derive(Debug)]
pub struct Liveness {
    /// The node's `probe_ms`: the silence after a write that makes the node suspect.
    probe: Duration,
    /// Where to probe, in turn: the node's `peer` if it named one, else the client's other
    /// servers. Empty: nowhere to go (a single `--server` and a standalone node).
    targets: Vec<String>,
    next_index: usize,
    /// No new probe before this: a probe that found the node still serving is followed by
    /// another only after a further `probe` of silence.
    quiet_until: Option<Instant>,
}

impl Liveness {
    /// For a session on `current`, welcomed with `peer` and `probe_ms`. A node that
    /// announces no `probe_ms` (older than the rule) is never probed away from.
    pub fn new(
        current: &str,
        peer: Option<&str>,
        probe_ms: Option<u64>,
        servers: &[String],
    ) -> Self {
        let targets = match (probe_ms, peer) {
            (None, _) => Vec::new(),
            (Some(_), Some(peer)) if peer != current => vec![peer.to_string()],
            (Some(_), _) => servers.iter().filter(|s| *s != current).cloned().collect(),
        };
        Liveness {
            probe: Duration::from_millis(probe_ms.unwrap_or(0).max(1)),
            targets,
            next_index: 0,
            quiet_until: None,
        }
    }

    pub fn probe_ms(&self) -> u64 {
        self.probe.as_millis() as u64
    }

    /// Whether to probe now: a frame written at `unanswered_since` (the first write since
    /// the node last sent anything) has met `probe_ms` of silence.
    pub fn probe_due(&self, unanswered_since: Option<Instant>, now: Instant) -> bool {
        let Some(since) = unanswered_since else {
            return false;
        };
        !self.targets.is_empty()
            && now.saturating_duration_since(since) >= self.probe
            && self.quiet_until.is_none_or(|until| now >= until)
    }

    /// The server to probe next.
    pub fn next_target(&mut self) -> Option<String> {
        let target = self.targets.get(self.next_index)?.clone();
        self.next_index = (self.next_index + 1) % self.targets.len();
        Some(target)
    }

    /// A probe ended without a `welcome` at `now` (a redirect back, a refusal, no answer):
    /// the current node is still the one that serves.
    pub fn on_probe_failed(&mut self, now: Instant) {
        self.quiet_until = Some(now + self.probe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers() -> Vec<String> {
        vec!["a:1".into(), "b:2".into(), "c:3".into()]
    }

    #[test]
    fn a_node_is_suspect_only_after_probe_ms_of_silence_following_a_write() {
        let live = Liveness::new("a:1", Some("b:2"), Some(400), &servers());
        let t0 = Instant::now();
        assert!(
            !live.probe_due(None, t0 + Duration::from_secs(60)),
            "nothing owed"
        );
        assert!(!live.probe_due(Some(t0), t0 + Duration::from_millis(399)));
        assert!(live.probe_due(Some(t0), t0 + Duration::from_millis(400)));
    }

    #[test]
    fn the_peer_named_in_welcome_is_probed_else_the_other_servers_in_turn() {
        let mut live = Liveness::new("a:1", Some("b:2"), Some(400), &servers());
        assert_eq!(live.next_target().as_deref(), Some("b:2"));
        assert_eq!(live.next_target().as_deref(), Some("b:2"));
        let mut live = Liveness::new("b:2", None, Some(400), &servers());
        assert_eq!(live.next_target().as_deref(), Some("a:1"));
        assert_eq!(live.next_target().as_deref(), Some("c:3"));
        assert_eq!(live.next_target().as_deref(), Some("a:1"));
    }

    #[test]
    fn with_nowhere_to_go_nothing_is_probed() {
        let single = vec!["a:1".to_string()];
        let mut live = Liveness::new("a:1", None, Some(400), &single);
        let t0 = Instant::now();
        assert!(!live.probe_due(Some(t0), t0 + Duration::from_secs(5)));
        assert_eq!(live.next_target(), None);
        // A peer that names the node itself (a misconfigured pair) is no target either.
        let live = Liveness::new("a:1", Some("a:1"), Some(400), &single);
        assert!(!live.probe_due(Some(t0), t0 + Duration::from_secs(5)));
        // A node that announces no liveness wait is never probed away from.
        let live = Liveness::new("a:1", Some("b:2"), None, &servers());
        assert!(!live.probe_due(Some(t0), t0 + Duration::from_secs(5)));
    }

    #[test]
    fn a_failed_probe_is_followed_by_another_only_after_a_further_probe_ms() {
        let mut live = Liveness::new("a:1", Some("b:2"), Some(400), &servers());
        let t0 = Instant::now();
        let failed_at = t0 + Duration::from_millis(900);
        live.on_probe_failed(failed_at);
        assert!(!live.probe_due(Some(t0), failed_at + Duration::from_millis(399)));
        assert!(live.probe_due(Some(t0), failed_at + Duration::from_millis(400)));
    }
}
