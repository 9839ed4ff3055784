//! Strict mode, a node's side: it commits only while it holds a lease, and it takes over
//! only with a grant from the witness (`core::witness`), so two nodes never commit in
//! overlapping time. Pure like the rest of the core.
//!
//! Two leases let a primary commit:
//! - the **witness lease**: `Granted` for a claim of its epoch, counted on this node's clock
//!   from when it *sent* the claim, shortened for clock-rate drift ([`safe_ms`]);
//! - the **pair lease**: a synchronous backup acknowledged an entry that was appended at
//!   time `t`; that backup heard from us at or after `t`, and a backup claims an epoch only
//!   after hearing nothing for the detection time, so until `t + safe_ms(detection)` no
//!   other node can hold a grant. It covers only entries the backup holds. This is what
//!   keeps a pair that lost only its witness committing.
//!
//! The arithmetic is in `docs/failover.md` ("Strict mode").

use std::collections::VecDeque;

use super::epochs::next_epoch;
use super::{Action, LinkId, LogLevel, Node};
use super::{ReplicationMode, Role};

/// Claims in flight that an answer may still match; an older one is forgotten (its answer,
/// if it ever comes, is ignored: a lease counted from that long ago is worth little).
pub const CLAIMS_INFLIGHT_MAX: usize = 16;

/// Strict-mode settings of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrictConfig {
    /// The lease the witness is configured to give; only used to pace renewals (the
    /// witness's answer says how long the lease it gave really is).
    pub lease_ms: u64,
    /// Bound on how far two clocks' rates may differ from real time, in parts per million.
    pub drift_ppm: u64,
}

/// Of a span of `ms` on another clock, the part this clock may count and stay inside it
/// whatever the drift: both clocks run within `drift_ppm` of real time, so `ms` there lasts
/// at least `ms / (1 + ρ)` real, and `x` here lasts at most `x / (1 - ρ)` real.
pub fn safe_ms(ms: u64, drift_ppm: u64) -> u64 {
    const PPM: u128 = 1_000_000;
    let ppm = u128::from(drift_ppm).min(PPM / 2);
    let safe = u128::from(ms) * (PPM - ppm) / (PPM + ppm);
    // One millisecond less: timers here and there are whole milliseconds.
    (safe as u64).saturating_sub(1)
}

/// A claim sent to the witness, waiting for its answer.
#[derive(Clone, Copy, Debug)]
struct Claim {
    request: u64,
    epoch: u64,
    sent_ms: u64,
}

/// A backup's bid to take over, waiting for a grant.
#[derive(Clone, Copy, Debug)]
struct Bid {
    epoch: u64,
    /// The bid answers a planned hand-over on this link: tell the old primary once promoted.
    handover_link: Option<LinkId>,
    why_silent_ms: Option<u64>,
}

/// Strict-mode state of a node.
#[derive(Debug)]
pub(super) struct Strict {
    config: StrictConfig,
    next_request: u64,
    inflight: VecDeque<Claim>,
    /// The witness lease: commits allowed before this local time, in `lease_epoch`.
    lease_until_ms: u64,
    lease_epoch: u64,
    /// The pair lease: a synchronous backup cannot be granted anything before this.
    pair_lease_until_ms: u64,
    /// A hand-over was offered on this link: the backup there may bid while it still hears
    /// us, so its acks prove nothing about its bids and renew no pair lease.
    handover_link: Option<LinkId>,
    last_claim_ms: Option<u64>,
    bid: Option<Bid>,
    /// Local time of the latest answer from the witness.
    witness_heard_ms: Option<u64>,
    /// The witness was answering, as of the last change (logged once each way).
    lease_held: bool,
    /// Counters for metrics, from the start (they only rise).
    counts: StrictCounts,
}

/// What strict mode did since the node started, for the metrics (counters, never reset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StrictCounts {
    /// Claims sent to the witness: lease renewals of a primary and bids of a backup.
    pub claims: u64,
    /// Answers that granted the epoch claimed (a renewal or a take-over).
    pub grants: u64,
    /// Answers that refused it (another node holds a newer or a running lease).
    pub refusals: u64,
    /// Client sends answered `unavailable` because this primary held no lease.
    pub sends_refused: u64,
}

/// What an operator sees of strict mode (status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrictStatus {
    /// How much longer the witness lease runs (0 without one).
    pub lease_left_ms: u64,
    /// Local monotonic time of the latest answer from the witness.
    pub witness_heard_ms: Option<u64>,
    /// The epoch this backup asked the witness for, while it waits.
    pub bidding: Option<u64>,
    pub counts: StrictCounts,
}

impl Strict {
    pub(super) fn new(config: StrictConfig) -> Self {
        Strict {
            config,
            next_request: 1,
            inflight: VecDeque::new(),
            lease_until_ms: 0,
            lease_epoch: 0,
            pair_lease_until_ms: 0,
            handover_link: None,
            last_claim_ms: None,
            bid: None,
            witness_heard_ms: None,
            lease_held: false,
            counts: StrictCounts::default(),
        }
    }
}

impl Node {
    /// Turns on strict mode (a paired node only); call before the first step.
    pub fn enable_strict(&mut self, config: StrictConfig) {
        assert!(self.pair().is_some(), "strict mode needs a pair");
        self.strict = Some(Strict::new(config));
    }

    pub fn strict_status(&self) -> Option<StrictStatus> {
        let s = self.strict.as_ref()?;
        Some(StrictStatus {
            lease_left_ms: if s.lease_epoch == self.epoch() && self.role == Role::Primary {
                s.lease_until_ms.saturating_sub(self.mono_ms)
            } else {
                0
            },
            witness_heard_ms: s.witness_heard_ms,
            bidding: s.bid.map(|b| b.epoch),
            counts: s.counts,
        })
    }

    /// The witness lease holds now, for our epoch.
    pub(super) fn witness_lease_valid(&self) -> bool {
        self.strict
            .as_ref()
            .is_some_and(|s| s.lease_epoch == self.epoch() && self.mono_ms < s.lease_until_ms)
    }

    fn pair_lease_valid(&self) -> bool {
        self.strict
            .as_ref()
            .is_some_and(|s| self.mono_ms < s.pair_lease_until_ms)
    }

    /// The backup acknowledges synchronously: its acks can renew the pair lease (not on a
    /// link a hand-over was offered on).
    fn synchronous_backup(&self) -> bool {
        let offered = self.strict.as_ref().and_then(|s| s.handover_link);
        matches!(self.link, Some(super::peer::Link::ToBackup { id, .. }) if Some(id) != offered)
            && self.pair().is_some_and(|p| p.mode == ReplicationMode::Sync)
            && !self.degraded
    }

    /// Strict mode: the highest seq this primary may commit now, given what the replication
    /// mode alone allows (`usual`). Without strict mode, `usual`.
    pub(super) fn strict_commit_limit(&self, usual: u64) -> u64 {
        if self.strict.is_none() || self.witness_lease_valid() {
            return usual;
        }
        if self.pair_lease_valid() {
            return usual.min(self.backup_acked()).max(self.head);
        }
        self.head
    }

    /// Strict mode: why a new send cannot be taken now, if it cannot.
    pub(super) fn strict_refusal(&self) -> Option<&'static str> {
        if self.strict.is_none() || self.witness_lease_valid() || self.synchronous_backup() {
            return None;
        }
        Some("no lease from the witness and no synchronous backup: this node cannot commit now; retry")
    }

    /// Counts a send refused for [`Node::strict_refusal`]'s reason.
    pub(super) fn strict_on_send_refused(&mut self) {
        if let Some(s) = self.strict.as_mut() {
            s.counts.sends_refused += 1;
        }
    }

    /// A backup's ack of `acked` renews the pair lease from when that entry was appended
    /// (it was sent no sooner).
    pub(super) fn strict_on_backup_ack(&mut self, link: LinkId, acked: u64) {
        if self
            .strict
            .as_ref()
            .is_some_and(|s| s.handover_link == Some(link))
        {
            return;
        }
        let Some(detection_ms) = self.pair().map(|p| p.detection_ms) else {
            return;
        };
        let Some(appended_ms) = self
            .pending
            .iter()
            .take_while(|p| p.entry.seq <= acked)
            .last()
            .map(|p| p.appended_ms)
        else {
            return;
        };
        let Some(s) = self.strict.as_mut() else {
            return;
        };
        let until = appended_ms + safe_ms(detection_ms, s.config.drift_ppm);
        if until > s.pair_lease_until_ms {
            s.pair_lease_until_ms = until;
        }
    }

    fn send_claim(&mut self, epoch: u64, actions: &mut Vec<Action>) {
        let now = self.mono_ms;
        let s = self.strict.as_mut().expect("strict mode");
        let request = s.next_request;
        s.next_request += 1;
        if s.inflight.len() == CLAIMS_INFLIGHT_MAX {
            s.inflight.pop_front();
        }
        s.inflight.push_back(Claim {
            request,
            epoch,
            sent_ms: now,
        });
        s.last_claim_ms = Some(now);
        s.counts.claims += 1;
        actions.push(Action::Claim { request, epoch });
    }

    /// Primary: renew the witness lease every third of a lease (sooner while it is lost,
    /// every heartbeat interval).
    pub(super) fn strict_primary_tick(&mut self, actions: &mut Vec<Action>) {
        let Some(s) = &self.strict else {
            return;
        };
        let interval_ms = self.pair().map_or(0, |p| p.interval_ms);
        let every = if self.witness_lease_valid() {
            (s.config.lease_ms / 3).max(1)
        } else {
            interval_ms.min(s.config.lease_ms / 3).max(1)
        };
        let due = s.last_claim_ms.is_none_or(|at| at + every <= self.mono_ms);
        let lost = s.lease_held && !self.witness_lease_valid();
        if lost {
            self.strict.as_mut().expect("strict mode").lease_held = false;
            self.log(
                LogLevel::Warn,
                "witness lease ran out: committing only what a synchronous backup holds".into(),
            );
        }
        // A hand-over was sent: nothing is left to commit here, and the backup can be
        // granted its epoch only once this lease lapses, so stop renewing it.
        let handing_over = self.handover.as_ref().is_some_and(|h| h.sent);
        if due && !handing_over {
            self.send_claim(self.epoch(), actions);
        }
    }

    /// Backup: it would promote now (silence, standoff or configured start; cooldown and
    /// probe passed). In strict mode it asks the witness instead and promotes on the grant.
    /// Returns true when strict mode took the decision over.
    pub(super) fn strict_bid(
        &mut self,
        handover_link: Option<LinkId>,
        silent_ms: Option<u64>,
        actions: &mut Vec<Action>,
    ) -> bool {
        let Some(s) = &self.strict else {
            return false;
        };
        let interval_ms = self.pair().map_or(1, |p| p.interval_ms);
        let rank = self.pair().map_or(0, |p| p.rank);
        let epoch = next_epoch(self.seen_epoch.max(self.epoch()), rank);
        let due = s
            .last_claim_ms
            .is_none_or(|at| at + interval_ms <= self.mono_ms)
            || s.bid.is_none_or(|b| b.epoch != epoch)
            || handover_link.is_some();
        let first = s.bid.is_none();
        let s = self.strict.as_mut().expect("strict mode");
        s.bid = Some(Bid {
            epoch,
            handover_link: handover_link.or(s.bid.and_then(|b| b.handover_link)),
            why_silent_ms: silent_ms,
        });
        if first {
            self.log(
                LogLevel::Info,
                format!("asking the witness for epoch {epoch} before taking over"),
            );
        }
        if due {
            self.send_claim(epoch, actions);
        }
        true
    }

    /// Primary: a hand-over goes out on `link`; from now on the pair lease cannot hold.
    pub(super) fn strict_on_handover_sent(&mut self, link: LinkId) {
        if let Some(s) = self.strict.as_mut() {
            s.handover_link = Some(link);
            s.pair_lease_until_ms = 0;
        }
    }

    /// Backup: whether a grant answering `bid` may still be used now. A bid made on
    /// silence holds only while the primary is still silent (or says it is no primary):
    /// that is what the primary's pair lease counts on. A hand-over bid holds while the
    /// link it came on is up.
    fn bid_still_holds(&self, bid: &Bid) -> bool {
        let Some(pair) = self.pair() else {
            return false;
        };
        if let Some(link) = bid.handover_link {
            return matches!(self.link, Some(super::peer::Link::ToPrimary { id }) if id == link);
        }
        let now = self.mono_ms;
        let silent = now.saturating_sub(self.peer.last_heard_ms) >= pair.detection_ms;
        let no_primary = !self.peer.primary
            && now.saturating_sub(self.peer.primary_seen_ms) >= pair.detection_ms;
        silent || no_primary || (self.start_as_primary && !self.peer.primary)
    }

    /// Backup: a bid for a planned hand-over is waiting for its grant.
    pub(super) fn strict_handover_bid(&self) -> bool {
        self.strict
            .as_ref()
            .is_some_and(|s| s.bid.is_some_and(|b| b.handover_link.is_some()))
    }

    /// Backup: nothing calls for a take-over any more (the peer is heard again).
    pub(super) fn strict_drop_bid(&mut self) {
        let link = match &self.link {
            Some(super::peer::Link::ToPrimary { id }) => Some(*id),
            _ => None,
        };
        if let Some(s) = self.strict.as_mut() {
            // A hand-over bid lives as long as the link it was offered on.
            if s.bid
                .as_ref()
                .is_some_and(|b| b.handover_link.is_none() || b.handover_link != link)
            {
                s.bid = None;
            }
        }
    }

    /// The witness answered claim `request`.
    pub(super) fn on_witness_answer(
        &mut self,
        request: u64,
        granted: bool,
        epoch: u64,
        lease_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        let now = self.mono_ms;
        let Some(s) = self.strict.as_mut() else {
            return;
        };
        let Some(index) = s.inflight.iter().position(|c| c.request == request) else {
            return;
        };
        let claim = s.inflight.remove(index).expect("found");
        s.witness_heard_ms = Some(now);
        let drift_ppm = s.config.drift_ppm;
        if granted && epoch == claim.epoch {
            s.counts.grants += 1;
        } else if !granted {
            s.counts.refusals += 1;
        }
        if !granted {
            // `epoch` is the witness's highest grant: a primary below it was replaced.
            self.note_epoch(epoch, actions);
            if self.role == Role::Primary && epoch > self.epoch() {
                self.step_down(
                    &format!("the witness granted epoch {epoch} to the peer"),
                    actions,
                );
            }
            return;
        }
        if epoch != claim.epoch {
            return;
        }
        let until = claim.sent_ms + safe_ms(lease_ms, drift_ppm);
        let bid = self.strict.as_ref().and_then(|s| s.bid);
        let bid_holds = bid.is_some_and(|b| b.epoch == epoch && self.bid_still_holds(&b));
        match self.role {
            Role::Primary if epoch == self.epoch() => self.extend_lease(epoch, until),
            Role::Backup if epoch > self.seen_epoch.max(self.epoch()) && bid_holds => {
                self.take_over_on_grant(epoch, until, actions)
            }
            _ => {}
        }
    }

    /// A primary's lease for `epoch` granted until `until`.
    fn extend_lease(&mut self, epoch: u64, until: u64) {
        let now = self.mono_ms;
        let s = self.strict.as_mut().expect("strict mode");
        if s.lease_epoch != epoch || until > s.lease_until_ms {
            s.lease_epoch = epoch;
            s.lease_until_ms = until;
        }
        if !s.lease_held && now < until {
            s.lease_held = true;
            self.recheck = true;
            self.log(
                LogLevel::Info,
                format!("witness lease held for epoch {epoch}"),
            );
        }
    }

    /// A bidding backup granted `epoch` until `until`: promotes, unless the grant came too
    /// late to use.
    fn take_over_on_grant(&mut self, epoch: u64, until: u64, actions: &mut Vec<Action>) {
        let now = self.mono_ms;
        if now >= until {
            // The answer came after the lease it carried ran out (a pause, a slow
            // network): the witness may have granted a newer epoch since. Taking
            // over would commit the inherited tail without a lease; ask again.
            self.log(
                LogLevel::Warn,
                format!("the witness's grant of epoch {epoch} came too late to use"),
            );
            return;
        }
        self.start_as_primary = false;
        let s = self.strict.as_mut().expect("strict mode");
        let bid = s.bid.take();
        s.lease_epoch = epoch;
        s.lease_until_ms = until;
        s.lease_held = now < until;
        let handover_link = bid.and_then(|b| b.handover_link);
        let why = match (handover_link, bid.and_then(|b| b.why_silent_ms)) {
            (Some(_), _) => "planned hand-over from the primary".to_string(),
            (None, Some(ms)) => {
                format!("peer silent for {ms} ms; the witness granted epoch {epoch}")
            }
            (None, None) => format!("the witness granted epoch {epoch}"),
        };
        self.promote_into(epoch, &why, handover_link.is_some(), actions);
        if let Some(link) = handover_link {
            actions.push(Action::TookOver { link, epoch });
        }
    }

    /// Leaves strict state consistent with losing the primary role.
    pub(super) fn strict_on_step_down(&mut self) {
        if let Some(s) = self.strict.as_mut() {
            s.lease_until_ms = 0;
            s.pair_lease_until_ms = 0;
            s.lease_held = false;
            s.handover_link = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::safe_ms;

    #[test]
    fn the_safe_part_of_a_lease_allows_for_drift_on_both_clocks() {
        // 1 % drift: 600 ms there is at least 594.06 ms real; 582 ms here is at most
        // 587.9 ms real.
        assert_eq!(safe_ms(600, 10_000), 587);
        assert_eq!(safe_ms(1_000, 0), 999);
        assert_eq!(safe_ms(0, 10_000), 0);
        // An absurd drift is capped rather than overflowing.
        assert_eq!(safe_ms(900, u64::MAX), 299);
    }
}
