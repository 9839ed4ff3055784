//! Reconnect policy: which server to try next, how long to wait before it, and which
//! refusals end the client instead of being retried.
//!
//! Pure: the caller supplies the random source and reports outcomes; no sockets or clocks.

use std::time::Duration;

use rand::Rng;

/// First backoff step after a failed attempt: short enough that a fail-over on one machine
/// or a LAN is followed within a blink.
pub const BACKOFF_START_MS: u64 = 50;

/// Longest wait between attempts: a person waiting for the chat to come back should see it
/// within a couple of seconds of the node being reachable again.
pub const BACKOFF_CAP_MS: u64 = 2_000;

/// A connection that lived at least this long counts as a success, so the next drop starts
/// again without delay. A shorter one counts as a failed attempt, so a node that accepts
/// and then drops us at once is retried with growing waits, not in a busy loop.
pub const STABLE_CONNECTION_MS: u64 = 2_000;

/// Refusals of `hello` that another attempt cannot fix: a person must change the command.
pub fn refusal_is_final(code: &str) -> bool {
    matches!(
        code,
        "nick_in_use" | "unauthorized" | "unsupported_version" | "bad_request" | "unknown_type"
    )
}

/// Wait before an attempt that follows `failures` failed attempts in a row: none after a
/// clean drop, then doubling from [`BACKOFF_START_MS`] up to [`BACKOFF_CAP_MS`], with
/// "equal jitter" (a uniform pick in the upper half) so that many clients dropped by one
/// node do not all come back in the same instant, while each still waits at least half.
pub fn backoff_delay(failures: u32, rng: &mut impl Rng) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    // Past 2^16 the cap has long been reached; the clamp keeps the shift in range.
    let doublings = (failures - 1).min(16);
    let ceiling_ms = BACKOFF_START_MS
        .saturating_mul(1 << doublings)
        .min(BACKOFF_CAP_MS);
    let half_ms = ceiling_ms / 2;
    Duration::from_millis(half_ms + rng.gen_range(0..=ceiling_ms - half_ms))
}

/// Server choice and failure count across attempts.
#[derive(Debug)]
pub struct Reconnect {
    /// The `--server` list, tried in turn. Never empty.
    servers: Vec<String>,
    /// Index in `servers` of the next list server to try.
    next_index: usize,
    /// Tried before the list, once: the primary a `redirect` or `goodbye` named, or the
    /// server we were connected to when the connection dropped.
    preferred: Option<String>,
    /// Failed attempts since the last stable connection.
    failures: u32,
}

impl Reconnect {
    pub fn new(servers: Vec<String>) -> Self {
        assert!(!servers.is_empty(), "the client needs at least one server");
        Reconnect {
            servers,
            next_index: 0,
            preferred: None,
            failures: 0,
        }
    }

    /// The server for the next attempt.
    pub fn next_target(&mut self) -> String {
        if let Some(preferred) = self.preferred.take() {
            return preferred;
        }
        let server = self.servers[self.next_index % self.servers.len()].clone();
        self.next_index = (self.next_index + 1) % self.servers.len();
        server
    }

    /// 1 for the first attempt after a success, counting up while attempts fail.
    pub fn attempt(&self) -> u32 {
        self.failures + 1
    }

    /// How long to wait before the next attempt.
    pub fn delay(&self, rng: &mut impl Rng) -> Duration {
        backoff_delay(self.failures, rng)
    }

    /// The attempt failed: could not connect, no answer, or a refusal worth retrying.
    pub fn on_failure(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// The node is not the primary; it named one (or `None`: use the list).
    pub fn on_redirect(&mut self, primary: Option<&str>) {
        self.preferred = primary.map(str::to_string);
        self.on_failure();
    }

    /// `server` kept refusing sends as `unavailable` (it cannot commit: in strict mode, an
    /// old primary cut off from its backup and the witness, while the backup may already
    /// serve): the other servers are tried first. Counts as a failed attempt, so a pair
    /// where no node can commit is cycled through with growing waits.
    pub fn on_unavailable(&mut self, server: &str) {
        self.preferred = None;
        if let Some(at) = self.servers.iter().position(|s| s == server) {
            self.next_index = (at + 1) % self.servers.len();
        }
        self.on_failure();
    }

    /// A session on `server` ended after `lived`. `primary` is the address a `goodbye`
    /// named; without one, the same server is tried first, since most drops (a slow read,
    /// a restart) leave the primary where it was, and refusing connections costs little.
    pub fn on_dropped(&mut self, server: &str, lived: Duration, primary: Option<&str>) {
        self.preferred = Some(primary.unwrap_or(server).to_string());
        if lived >= Duration::from_millis(STABLE_CONNECTION_MS) {
            self.failures = 0;
        } else {
            self.on_failure();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn backoff_starts_at_zero_doubles_and_stays_within_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(backoff_delay(0, &mut rng), Duration::ZERO);
        for failures in 1..100 {
            let ceiling = (BACKOFF_START_MS << (failures - 1).min(16)).min(BACKOFF_CAP_MS);
            for _ in 0..50 {
                let delay = backoff_delay(failures, &mut rng).as_millis() as u64;
                assert!(
                    delay >= ceiling / 2,
                    "{failures}: {delay} < {}",
                    ceiling / 2
                );
                assert!(delay <= ceiling, "{failures}: {delay} > {ceiling}");
                assert!((BACKOFF_START_MS / 2..=BACKOFF_CAP_MS).contains(&delay));
            }
        }
        assert!(backoff_delay(u32::MAX, &mut rng) <= Duration::from_millis(BACKOFF_CAP_MS));
    }

    #[test]
    fn backoff_is_jittered() {
        let mut rng = StdRng::seed_from_u64(1);
        let picks: std::collections::HashSet<_> =
            (0..50).map(|_| backoff_delay(6, &mut rng)).collect();
        assert!(picks.len() > 10);
    }

    #[test]
    fn list_is_tried_in_turn() {
        let mut policy = Reconnect::new(vec!["a:1".into(), "b:2".into()]);
        assert_eq!(policy.next_target(), "a:1");
        assert_eq!(policy.next_target(), "b:2");
        assert_eq!(policy.next_target(), "a:1");
    }

    #[test]
    fn announced_primary_comes_first_then_the_list() {
        let mut policy = Reconnect::new(vec!["a:1".into(), "b:2".into()]);
        assert_eq!(policy.next_target(), "a:1");
        policy.on_redirect(Some("c:3"));
        assert_eq!(policy.attempt(), 2);
        assert_eq!(policy.next_target(), "c:3");
        policy.on_failure();
        assert_eq!(policy.next_target(), "b:2");
        policy.on_redirect(None);
        assert_eq!(policy.next_target(), "a:1");
    }

    #[test]
    fn goodbye_names_where_to_go_and_a_stable_session_resets_backoff() {
        let mut policy = Reconnect::new(vec!["a:1".into(), "b:2".into()]);
        let server = policy.next_target();
        policy.on_failure();
        policy.on_failure();
        policy.on_dropped(&server, Duration::from_secs(60), Some("b:2"));
        assert_eq!(policy.attempt(), 1);
        assert_eq!(policy.delay(&mut StdRng::seed_from_u64(0)), Duration::ZERO);
        assert_eq!(policy.next_target(), "b:2");
    }

    #[test]
    fn a_drop_without_goodbye_retries_the_same_server_and_a_quick_one_backs_off() {
        let mut policy = Reconnect::new(vec!["a:1".into(), "b:2".into()]);
        let server = policy.next_target();
        policy.on_dropped(&server, Duration::from_millis(10), None);
        assert_eq!(policy.attempt(), 2);
        assert!(policy.delay(&mut StdRng::seed_from_u64(0)) >= Duration::from_millis(25));
        assert_eq!(policy.next_target(), "a:1");
        assert_eq!(policy.next_target(), "b:2");
    }

    #[test]
    fn a_server_that_keeps_refusing_sends_is_left_for_the_next_one_with_a_backoff() {
        let mut policy = Reconnect::new(vec!["a:1".into(), "b:2".into(), "c:3".into()]);
        assert_eq!(policy.next_target(), "a:1");
        assert_eq!(policy.next_target(), "b:2");
        // Connected to b; it kept answering `unavailable`.
        policy.on_unavailable("b:2");
        assert_eq!(policy.next_target(), "c:3");
        assert!(policy.delay(&mut StdRng::seed_from_u64(0)) >= Duration::from_millis(25));
        // Connected to a server reached through a redirect, not in the list: the list goes on.
        policy.on_unavailable("elsewhere:9");
        assert_eq!(policy.next_target(), "a:1");
        assert_eq!(policy.attempt(), 3);
    }

    #[test]
    fn only_refusals_a_retry_cannot_fix_are_final() {
        assert!(refusal_is_final("nick_in_use"));
        assert!(refusal_is_final("unauthorized"));
        for code in ["unavailable", "not_primary", "internal", "slow_consumer"] {
            assert!(!refusal_is_final(code), "{code}");
        }
    }
}
