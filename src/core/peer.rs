//! The pair: failure detection, promotion, step-down, replication progress, hand-over and
//! re-commit of messages from a history that lost. Pure, like the rest of the core: time is
//! the monotonic milliseconds that inputs carry.

use super::epochs::{common_prefix, next_epoch, EpochHistory};
use super::{Action, LinkId, LogLevel, Node, Pending};
use super::{ReplicationMode, Role};
use crate::entry::Entry;
use crate::wire::client::{encode_reply, Reply};

/// A planned hand-over gives up waiting for the backup's answer after this long, and the
/// backup then takes over by failure detection instead.
pub const HANDOVER_TIMEOUT_MS: u64 = 2_000;

/// Bugs planted on purpose, for the simulator's tests that it can find them. While
/// `SKIP_HEARTBEAT_EPOCH_CHECK` is set on a thread
/// (`pair_tests::the_simulator_finds_a_planted_bug`), a primary on that thread ignores a
/// heartbeat from a newer epoch instead of stepping down. While `STANDOFF_BY_LAST_SEQ` is set
/// (`pair_tests::the_standoff_regression_test_finds_the_old_standoff_bug`), the standoff
/// compares the node's own last seq with the peer's head and the higher rank wins a tie, the
/// rule 1ea472b replaced. Compiled only into the unit tests, so neither can exist in a real
/// binary.
#[cfg(test)]
pub(super) mod planted {
    use std::cell::Cell;

    thread_local! {
        pub static SKIP_HEARTBEAT_EPOCH_CHECK: Cell<bool> = const { Cell::new(false) };
        pub static STANDOFF_BY_LAST_SEQ: Cell<bool> = const { Cell::new(false) };
    }

    pub fn skips_heartbeat_epoch_check() -> bool {
        SKIP_HEARTBEAT_EPOCH_CHECK.with(Cell::get)
    }

    pub fn standoff_by_last_seq() -> bool {
        STANDOFF_BY_LAST_SEQ.with(Cell::get)
    }
}

#[cfg(not(test))]
mod planted {
    pub const fn skips_heartbeat_epoch_check() -> bool {
        false
    }

    pub const fn standoff_by_last_seq() -> bool {
        false
    }
}

/// The pair settings the core needs.
#[derive(Clone, Debug)]
pub struct PairConfig {
    /// 0 or 1, by node id order: picks the parity of this node's epochs.
    pub rank: u64,
    pub peer_client_address: String,
    pub interval_ms: u64,
    /// Silence after which the peer is declared dead (interval × misses).
    pub detection_ms: u64,
    pub mode: ReplicationMode,
    pub ack_timeout_ms: u64,
    pub promotion_cooldown_ms: u64,
    /// A promotion first needs a successful probe of `failover.check_address`.
    pub check_address: bool,
}

/// What this node last heard from its peer.
#[derive(Clone, Debug, Default)]
pub(super) struct PeerView {
    /// Monotonic time of the last heartbeat or replication frame from the peer.
    pub last_heard_ms: u64,
    /// Monotonic time of the last heartbeat (the UDP path alone).
    pub beat_ms: u64,
    /// Last time the peer said it was primary.
    pub primary_seen_ms: u64,
    pub primary: bool,
    pub epoch: u64,
    pub head: u64,
}

/// The replication link, seen from either end.
#[derive(Clone, Debug)]
pub(super) enum Link {
    /// We are primary: the backup on `id` has `acked` durably; `heard_ms` is the monotonic
    /// time of the last frame from it on this link (an ack or a beat).
    ToBackup {
        id: LinkId,
        acked: u64,
        heard_ms: u64,
    },
    /// We are backup, following the primary on `id`.
    ToPrimary { id: LinkId },
}

impl Link {
    fn id(&self) -> LinkId {
        match self {
            Link::ToBackup { id, .. } | Link::ToPrimary { id } => *id,
        }
    }
}

/// A hand-over in progress (SIGTERM or SIGUSR1 on the primary).
#[derive(Clone, Debug)]
pub(super) struct Handover {
    pub started_ms: u64,
    pub kind: HandoverKind,
    pub sent: bool,
}

/// Why a hand-over runs, which decides what follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HandoverKind {
    /// TERM: exit afterwards.
    Shutdown,
    /// USR1 (a drill): stay up as the new backup.
    Drill,
    /// The log stopped completing writes (`watch_storage`): sent without waiting for what
    /// is pending, which cannot commit here; stay up as a backup that follows no one until
    /// the log moves.
    StuckLog,
}

impl HandoverKind {
    /// For log lines: what was handed over for.
    fn what(self) -> &'static str {
        match self {
            HandoverKind::Shutdown => "shutdown",
            HandoverKind::Drill => "fail-over drill",
            HandoverKind::StuckLog => "the log is stuck",
        }
    }
}

/// What the primary watches of its own log: the durable seq when it last moved.
#[derive(Clone, Debug, Default)]
pub(super) struct StorageWatch {
    pub durable: u64,
    pub since_ms: u64,
    /// The stuck log was acted on (or reported) once; again only after it moves.
    pub acted: bool,
}

/// Re-commits tracked at once: the primary's own orphans and one backup link's, with room
/// for a link whose end the core has not heard of yet. Beyond it the oldest is forgotten:
/// its sender keeps its orphans and resubmits them on its next link (de-duplicated).
pub(super) const RESUBMISSIONS_MAX: usize = 4;

/// Resubmitted messages waiting to commit before the backup is told they are done.
#[derive(Clone, Debug)]
pub(super) struct Resubmission {
    pub link: LinkId,
    /// The highest new seq given to a resubmitted entry of this batch.
    pub upto: u64,
    /// The orig (epoch, seq) of the batch's last entry, echoed in `ResubmitDone`.
    pub last_orig: (u64, u64),
}

impl Node {
    pub(super) fn pair(&self) -> Option<&PairConfig> {
        self.config.pair.as_ref()
    }

    /// A sign of life from the peer (heartbeat or any replication frame).
    pub(super) fn heard(&mut self, mono_ms: u64) {
        self.peer.last_heard_ms = self.peer.last_heard_ms.max(mono_ms);
        // What the peer sent while we were stopped waits in our sockets and arrives at once
        // when we wake; only word that arrives a while after waking is fresh evidence.
        let fresh_after = self.pair().map_or(0, |p| 2 * p.interval_ms);
        if self
            .fenced_since
            .is_some_and(|since| mono_ms >= since + fresh_after)
        {
            self.fenced_since = None;
            self.recheck = true;
            self.log(
                LogLevel::Info,
                "heard from the peer after a stall: committing again".into(),
            );
        }
    }

    /// Records an epoch seen anywhere; persists a new high.
    pub(super) fn note_epoch(&mut self, epoch: u64, actions: &mut Vec<Action>) {
        if epoch > self.seen_epoch {
            self.seen_epoch = epoch;
            self.save_epochs(actions);
        }
    }

    pub(super) fn save_epochs(&self, actions: &mut Vec<Action>) {
        actions.push(Action::SaveEpochs {
            spans: self.epochs.spans().to_vec(),
            seen: self.seen_epoch,
        });
    }

    pub(super) fn on_heartbeat(
        &mut self,
        primary: bool,
        epoch: u64,
        head: u64,
        mono_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        self.heard(mono_ms);
        self.peer.beat_ms = self.peer.beat_ms.max(mono_ms);
        self.peer.primary = primary;
        self.peer.epoch = epoch;
        self.peer.head = head;
        if primary {
            self.peer.primary_seen_ms = mono_ms;
        }
        self.note_epoch(epoch, actions);
        if self.role == Role::Primary
            && epoch > self.epoch()
            && !planted::skips_heartbeat_epoch_check()
        {
            let why = format!(
                "peer is {} in epoch {epoch}, newer than ours ({})",
                if primary { "primary" } else { "backup" },
                self.epoch()
            );
            self.step_down(&why, actions);
        }
    }

    /// Loses the primary role: clients are told where to go, uncommitted messages wait in
    /// the log for the new primary's verdict (the link handshake).
    pub(super) fn step_down(&mut self, why: &str, actions: &mut Vec<Action>) {
        if self.role != Role::Primary {
            return;
        }
        self.log(LogLevel::Warn, format!("stepping down to backup: {why}"));
        self.role = Role::Backup;
        self.note_change("stepped down", why);
        self.degraded = false;
        self.fenced_since = None;
        self.strict_on_step_down();
        self.handover = None;
        // A drill in progress ends here; a shutdown still exits (maybe_exit).
        self.draining = self.exit_requested;
        self.resubmissions.clear();
        self.pending.clear();
        if let Some(link) = self.link.take() {
            actions.push(Action::CloseLink {
                link: link.id(),
                reason: "stepping down".into(),
            });
        }
        self.goodbye_all("demoted", actions);
        actions.push(Action::RoleChanged);
    }

    /// Tells every client where to go and closes it.
    pub(super) fn goodbye_all(&mut self, reason: &str, actions: &mut Vec<Action>) {
        let primary = self.pair().map(|p| p.peer_client_address.clone());
        let frame: super::Frame = encode_reply(&Reply::Goodbye {
            reason,
            primary: primary.as_deref(),
        })
        .into();
        let mut conns: Vec<_> = self.conns.keys().copied().collect();
        conns.sort_unstable();
        for conn in conns {
            actions.push(Action::Send {
                conn,
                frame: frame.clone(),
            });
            self.close(conn, actions);
        }
    }

    /// Becomes primary in a new epoch of this node's parity, continuing `seq` from the log.
    pub(super) fn promote(&mut self, why: &str, actions: &mut Vec<Action>) {
        self.promote_keeping_link(why, false, actions);
    }

    /// `keep_link`: a hand-over promotes with the old primary still on the link, which must
    /// carry our `TookOver` before it closes (the old primary closes it then).
    fn promote_keeping_link(&mut self, why: &str, keep_link: bool, actions: &mut Vec<Action>) {
        let rank = self.pair().map_or(0, |p| p.rank);
        let epoch = next_epoch(self.seen_epoch.max(self.epoch()), rank);
        self.promote_into(epoch, why, keep_link, actions);
    }

    /// Becomes primary in `epoch` (above every epoch seen; strict mode: the one the witness
    /// granted).
    pub(super) fn promote_into(
        &mut self,
        epoch: u64,
        why: &str,
        keep_link: bool,
        actions: &mut Vec<Action>,
    ) {
        assert!(
            epoch > self.seen_epoch.max(self.epoch()),
            "promotion to epoch {epoch} not above {}",
            self.seen_epoch
        );
        // Our history may run past our log (adopted from the primary, then a crash before
        // the entries came): the new epoch starts where our log ends, after what we hold.
        self.epochs.forget_past(self.last_seq);
        self.epochs.begin(epoch, self.last_seq + 1);
        self.seen_epoch = epoch;
        self.save_epochs(actions);
        self.role = Role::Primary;
        // The peer was just declared dead (or is handing over and will return as backup):
        // commit on local durability until it has caught up.
        self.degraded = self.pair().is_some();
        self.fenced_since = None;
        self.last_promotion_ms = Some(self.mono_ms);
        if let Some(link) = self.link.take() {
            if !keep_link {
                actions.push(Action::CloseLink {
                    link: link.id(),
                    reason: "promoted".into(),
                });
            }
        }
        // Everything this node holds is committed in the new epoch once durable.
        self.tail_commit = self.last_seq;
        self.head = self.head.max(self.durable.min(self.tail_commit));
        // Replays may read everything committed so far, including what was inherited.
        actions.push(Action::CommittedTo { seq: self.head });
        // A warning only for a fail-over: the peer was primary when last heard and has been
        // silent for the detection time. A first start, the pick between two backups and a
        // planned hand-over are the pair working as it should.
        let lost_primary = self.peer.primary
            && self.pair().is_some_and(|pair| {
                self.mono_ms.saturating_sub(self.peer.last_heard_ms) >= pair.detection_ms
            });
        self.log(
            if lost_primary {
                LogLevel::Warn
            } else {
                LogLevel::Info
            },
            format!(
                "promoted to primary in epoch {epoch} at seq {} ({why})",
                self.last_seq + 1
            ),
        );
        self.note_change("promoted", why);
        actions.push(Action::RoleChanged);
        // Clients that came to this node while it waited to take over get their welcome now.
        self.review_held(actions);
    }

    /// Whether this node, of rank `rank`, wins a standoff: both sides compare the same
    /// quantities (epoch, committed head as heartbeats report it), and the lower rank
    /// breaks a tie, so exactly one of them wins.
    fn wins_standoff(&self, rank: u64) -> bool {
        if planted::standoff_by_last_seq() {
            return (self.epoch(), self.last_seq(), rank)
                > (self.peer.epoch, self.peer.head, 1 - rank);
        }
        (self.epoch(), self.head, 1 - rank) > (self.peer.epoch, self.peer.head, rank)
    }

    pub(super) fn on_pair_tick(&mut self, actions: &mut Vec<Action>) {
        let Some(pair) = self.pair().cloned() else {
            return;
        };
        match self.role {
            Role::Backup => self.backup_tick(&pair, actions),
            Role::Primary => self.primary_tick(&pair, actions),
        }
    }

    /// A backup's tick: takes over when the peer is silent, when both are backups and this
    /// one has the better log, or when it is a new node configured as primary.
    fn backup_tick(&mut self, pair: &PairConfig, actions: &mut Vec<Action>) {
        let now = self.mono_ms;
        let silent_ms = now.saturating_sub(self.peer.last_heard_ms);
        let no_primary_ms = now.saturating_sub(self.peer.primary_seen_ms);
        let silent = silent_ms >= pair.detection_ms;
        let heard = self.peer.last_heard_ms > 0 && !silent;
        // A new node configured as primary takes over as soon as it knows the peer is
        // no primary (its epoch then goes above what the peer reported), or once the
        // peer stays silent; it follows a peer that is primary already.
        if self.start_as_primary && heard && self.peer.primary {
            self.start_as_primary = false;
        }
        let configured_start = self.start_as_primary && heard && !self.peer.primary;
        // Both nodes backup and alive: the one with the better log takes over.
        let standoff = heard
            && !self.peer.primary
            && no_primary_ms >= pair.detection_ms
            && self.wins_standoff(pair.rank);
        // A node whose log is stuck cannot commit: it takes nothing over.
        if self.log_stuck() || (!silent && !standoff && !configured_start) {
            self.probe_ok_ms = None;
            self.strict_drop_bid();
            if self.strict_handover_bid() {
                // A planned hand-over waits for the old lease to lapse: ask again.
                self.strict_bid(None, None, actions);
            }
            return;
        }
        if let Some(last) = self.last_promotion_ms {
            if now < last + pair.promotion_cooldown_ms {
                return;
            }
        }
        let probe_stale = self
            .probe_ok_ms
            .is_none_or(|at| at + pair.interval_ms < now);
        if pair.check_address && probe_stale {
            // One probe at a time, and at most one per heartbeat interval.
            let due = self
                .last_probe_ms
                .is_none_or(|at| at + pair.interval_ms <= now);
            if !self.probing && due {
                self.probing = true;
                self.last_probe_ms = Some(now);
                actions.push(Action::Probe);
            }
            return;
        }
        let why = if configured_start {
            "new node configured as primary; the peer is a backup".to_string()
        } else if silent {
            format!("peer silent for {silent_ms} ms")
        } else {
            "both nodes were backups; this one has the newer log".into()
        };
        if self.strict_bid(None, silent.then_some(silent_ms), actions) {
            // Promotes when the witness grants (`on_witness_answer`).
            return;
        }
        self.start_as_primary = false;
        self.promote(&why, actions);
    }

    /// A primary's tick: strict mode's lease, a stalled link, the end of a fence, the
    /// degraded state, and a hand-over that got no answer.
    fn primary_tick(&mut self, pair: &PairConfig, actions: &mut Vec<Action>) {
        self.strict_primary_tick(actions);
        self.abort_stalled_link(pair, actions);
        self.end_fence_if_due(pair);
        self.degrade_if_unacked(pair);
        self.expire_handover(actions);
    }

    /// Fenced after a stall: commits again once the peer stayed silent for twice the
    /// detection time.
    fn end_fence_if_due(&mut self, pair: &PairConfig) {
        let now = self.mono_ms;
        if let Some(since) = self.fenced_since {
            if now >= since + 2 * pair.detection_ms {
                self.fenced_since = None;
                self.recheck = true;
                self.log(
                    LogLevel::Warn,
                    "no word from the peer since the stall: committing again".into(),
                );
            }
        }
    }

    /// Sync mode: acknowledges on local durability once the backup has not acknowledged
    /// the oldest pending entry within `ack_timeout_ms`.
    fn degrade_if_unacked(&mut self, pair: &PairConfig) {
        let now = self.mono_ms;
        if pair.mode == ReplicationMode::Sync && !self.degraded && self.fenced_since.is_none() {
            let acked = self.backup_acked();
            let stuck = self
                .pending
                .front()
                .is_some_and(|p| acked < p.entry.seq && now >= p.appended_ms + pair.ack_timeout_ms);
            if stuck {
                self.degraded = true;
                self.recheck = true;
                self.log(
                    LogLevel::Warn,
                    format!(
                        "degraded: the backup has not acknowledged for {} ms; acknowledging on local durability",
                        pair.ack_timeout_ms
                    ),
                );
            }
        }
    }

    /// A hand-over the backup did not answer within `HANDOVER_TIMEOUT_MS`.
    fn expire_handover(&mut self, actions: &mut Vec<Action>) {
        let now = self.mono_ms;
        if let Some(handover) = &self.handover {
            if now >= handover.started_ms + HANDOVER_TIMEOUT_MS {
                if handover.kind == HandoverKind::Shutdown {
                    self.log(
                        LogLevel::Warn,
                        "hand-over: the backup did not answer in time; it will take over by failure detection".into(),
                    );
                    self.finish_handover(None, actions);
                } else {
                    // A drill that got no answer changes nothing: stay primary.
                    let what = handover.kind.what();
                    if handover.kind == HandoverKind::StuckLog {
                        // Asked again after another detection time of a stuck log.
                        self.storage_watch.acted = false;
                        self.storage_watch.since_ms = now;
                    }
                    self.handover = None;
                    self.draining = false;
                    self.log(
                        LogLevel::Warn,
                        format!("hand-over ({what}) aborted: the backup did not take over in time; still primary"),
                    );
                }
            }
        }
    }

    /// A link that has carried nothing from the backup for a detection time while the
    /// backup's heartbeats arrive is stuck, not idle (an idle link carries a beat every
    /// interval): typically the backup-to-primary direction was cut and has just healed, and
    /// TCP would resend what it lost only at its next retransmission timeout, which grows to
    /// seconds during a long cut. Aborting the link (a reset, which does not queue behind the
    /// unacknowledged data as a close would) makes the backup dial again at once.
    fn abort_stalled_link(&mut self, pair: &PairConfig, actions: &mut Vec<Action>) {
        let now = self.mono_ms;
        let Some(Link::ToBackup { id, heard_ms, .. }) = &mut self.link else {
            return;
        };
        let silent_ms = now.saturating_sub(*heard_ms);
        let beat_fresh = now.saturating_sub(self.peer.beat_ms) < 2 * pair.interval_ms;
        if silent_ms < pair.detection_ms || !beat_fresh {
            return;
        }
        // Once per detection time at most, until the link is gone.
        *heard_ms = now;
        let link = *id;
        actions.push(Action::AbortLink {
            link,
            reason: format!(
                "stalled: nothing from the backup on the link for {silent_ms} ms while its heartbeats arrive"
            ),
        });
    }

    /// The node's own timers fired far too late (a pause, SIGSTOP, CPU starvation): what it
    /// measured meanwhile cannot be trusted.
    pub(super) fn on_stall(&mut self, gap_ms: u64) {
        if self.pair().is_none() {
            return;
        }
        match self.role {
            Role::Backup => {
                // Restart the silence window: promote only on fresh evidence.
                self.peer.last_heard_ms = self.mono_ms;
                self.peer.primary_seen_ms = self.mono_ms;
            }
            Role::Primary => {
                self.fenced_since = Some(self.mono_ms);
            }
        }
        self.log(
            LogLevel::Warn,
            format!("stalled for {gap_ms} ms: waiting for word from the peer before acting"),
        );
    }

    pub(super) fn backup_acked(&self) -> u64 {
        match &self.link {
            Some(Link::ToBackup { acked, .. }) => *acked,
            _ => 0,
        }
    }

    /// Highest seq that may be committed now.
    pub(super) fn commit_limit(&self) -> u64 {
        if self.role != Role::Primary || self.fenced_since.is_some() {
            return self.head;
        }
        let usual = match self.pair() {
            Some(pair) if pair.mode == ReplicationMode::Sync && !self.degraded => {
                self.durable.min(self.backup_acked())
            }
            _ => self.durable,
        };
        self.strict_commit_limit(usual)
    }

    // ---- the link, primary side ----

    pub(super) fn on_backup_hello(
        &mut self,
        link: LinkId,
        epoch: u64,
        last_seq: u64,
        spans: Vec<(u64, u64)>,
        mono_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        self.heard(mono_ms);
        self.note_epoch(epoch, actions);
        if self.role != Role::Primary {
            actions.push(Action::CloseLink {
                link,
                reason: "this node is not the primary".into(),
            });
            return;
        }
        if epoch > self.epoch() {
            actions.push(Action::CloseLink {
                link,
                reason: format!("backup has seen epoch {epoch}, newer than ours"),
            });
            self.step_down(&format!("the backup has seen epoch {epoch}"), actions);
            return;
        }
        if let Some(old) = self.link.take() {
            actions.push(Action::CloseLink {
                link: old.id(),
                reason: "replaced by a new link".into(),
            });
        }
        let theirs = EpochHistory::from_spans(spans);
        let common = common_prefix(&self.epochs, self.last_seq, &theirs, last_seq);
        let restart_at = (common + 1 < self.first_seq).then_some(self.first_seq);
        if common < last_seq {
            self.log(
                LogLevel::Warn,
                format!(
                    "backup's log parts from ours after seq {common}; it keeps {} later entries aside to re-commit",
                    last_seq - common
                ),
            );
        }
        if let Some(first) = restart_at {
            self.log(
                LogLevel::Warn,
                format!(
                    "backup needs seq {} but this node retains from {first}: the backup restarts its log at {first}",
                    common + 1
                ),
            );
        }
        self.link = Some(super::peer::Link::ToBackup {
            id: link,
            acked: 0,
            heard_ms: self.mono_ms,
        });
        actions.push(Action::AcceptBackup {
            link,
            truncate_after: common,
            restart_at,
        });
        self.log(
            LogLevel::Info,
            format!(
                "backup connected at seq {last_seq}; streaming from {}",
                restart_at.unwrap_or(common + 1)
            ),
        );
    }

    pub(super) fn on_backup_ack(
        &mut self,
        link: LinkId,
        durable_seq: u64,
        mono_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        self.heard(mono_ms);
        let Some(Link::ToBackup {
            id,
            acked,
            heard_ms,
        }) = &mut self.link
        else {
            return;
        };
        if *id != link {
            return;
        }
        *heard_ms = (*heard_ms).max(mono_ms);
        *acked = (*acked).max(durable_seq.min(self.last_seq));
        let acked = *acked;
        self.strict_on_backup_ack(link, acked);
        // Caught up with everything committed: from here on commits wait for the backup
        // again (under steady traffic it never holds *every* appended entry at once).
        if self.degraded && acked >= self.head && self.link.is_some() {
            self.degraded = false;
            self.log(
                LogLevel::Info,
                format!("backup caught up at seq {acked}: replication is synchronous again"),
            );
        }
        self.commit_ready(actions);
        self.maybe_handover(actions);
    }

    pub(super) fn on_link_down(&mut self, link: LinkId) {
        if self.link.as_ref().is_some_and(|l| l.id() == link) {
            self.link = None;
            self.log(
                LogLevel::Warn,
                "replication link to the peer is down".into(),
            );
        }
        self.resubmissions.retain(|r| r.link != link);
    }

    pub(super) fn on_resubmit(
        &mut self,
        link: LinkId,
        entries: Vec<Entry>,
        actions: &mut Vec<Action>,
    ) {
        if self.role != Role::Primary || self.draining {
            actions.push(Action::CloseLink {
                link,
                reason: "cannot re-commit now: not serving as primary".into(),
            });
            return;
        }
        let Some(last) = entries.last() else {
            return;
        };
        let last_orig = last.orig.unwrap_or((last.epoch, last.seq));
        let mut upto = self.head;
        let mut merged = 0;
        for entry in entries {
            if self.dedup.get(&entry.session, &entry.id).is_some() {
                continue;
            }
            self.last_seq += 1;
            let merged_entry = Entry {
                epoch: self.epoch(),
                seq: self.last_seq,
                orig: entry.orig.or(Some((entry.epoch, entry.seq))),
                ..entry
            };
            upto = self.last_seq;
            merged += 1;
            self.dedup
                .insert(&merged_entry.session, &merged_entry.id, merged_entry.seq);
            actions.push(Action::Append(merged_entry.clone()));
            self.pending.push_back(Pending {
                entry: merged_entry,
                appended_ms: self.mono_ms,
            });
        }
        if merged > 0 {
            self.log(
                LogLevel::Info,
                format!("re-committing {merged} messages from a history that lost"),
            );
        }
        // A later batch on the same link supersedes the earlier (its upto is higher); a
        // batch on another link must not: each sender waits for its own ResubmitDone.
        self.resubmissions.retain(|r| r.link != link);
        if self.resubmissions.len() >= RESUBMISSIONS_MAX {
            self.resubmissions.remove(0);
        }
        self.resubmissions.push(Resubmission {
            link,
            upto,
            last_orig,
        });
        self.check_resubmission(actions);
    }

    pub(super) fn check_resubmission(&mut self, actions: &mut Vec<Action>) {
        let head = self.head;
        self.resubmissions.retain(|r| {
            if head < r.upto {
                return true;
            }
            actions.push(Action::ResubmitDone {
                link: r.link,
                epoch: r.last_orig.0,
                seq: r.last_orig.1,
            });
            false
        });
    }

    // ---- the link, backup side ----

    pub(super) fn on_primary_welcome(
        &mut self,
        link: LinkId,
        epoch: u64,
        mono_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        self.heard(mono_ms);
        self.peer.primary = true;
        self.peer.primary_seen_ms = mono_ms;
        if self.role == Role::Primary && epoch > self.epoch() {
            self.step_down(
                &format!("the peer serves as primary in epoch {epoch}"),
                actions,
            );
        }
        if self.role == Role::Primary || epoch < self.seen_epoch {
            actions.push(Action::CloseLink {
                link,
                reason: format!(
                    "peer's epoch {epoch} is not newer than ours ({})",
                    self.seen_epoch.max(self.epoch())
                ),
            });
            return;
        }
        self.note_epoch(epoch, actions);
        self.link = Some(Link::ToPrimary { id: link });
    }

    /// The primary told where our logs part (`restart_at`: it retains nothing before that),
    /// and its epoch history, which ours follows from now on.
    pub(super) fn on_primary_truncate(
        &mut self,
        link: LinkId,
        after_seq: u64,
        restart_at: Option<u64>,
        spans: Vec<(u64, u64)>,
        actions: &mut Vec<Action>,
    ) {
        if !matches!(self.link, Some(Link::ToPrimary { id }) if id == link) {
            return;
        }
        if after_seq < self.last_seq {
            actions.push(Action::Truncate { after_seq });
            self.dedup.forget_from(after_seq + 1);
            self.last_seq = after_seq;
            self.head = self.head.min(after_seq);
            self.durable = self.durable.min(after_seq);
            self.tail_commit = self.tail_commit.min(after_seq);
            self.log_generation += 1;
        }
        if let Some(first) = restart_at {
            actions.push(Action::RestartLog { first_seq: first });
            self.dedup.forget_from(0);
            self.last_seq = first - 1;
            self.head = self.last_seq;
            self.durable = self.last_seq;
            self.first_seq = first;
            self.log_generation += 1;
        }
        // Only now, with the divergent tail cut, may our history say what the primary's does.
        self.epochs = EpochHistory::from_spans(spans);
        self.save_epochs(actions);
        actions.push(Action::AckPrimary {
            link,
            durable_seq: self.durable,
        });
    }

    pub(super) fn on_replicate(
        &mut self,
        link: LinkId,
        commit_seq: u64,
        entries: Vec<Entry>,
        mono_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        self.heard(mono_ms);
        self.peer.primary_seen_ms = mono_ms;
        if !matches!(self.link, Some(Link::ToPrimary { id }) if id == link) {
            return;
        }
        if let Some(first) = entries.first() {
            if first.seq != self.last_seq + 1 {
                actions.push(Action::CloseLink {
                    link,
                    reason: format!("expected seq {}, got {}", self.last_seq + 1, first.seq),
                });
                self.link = None;
                return;
            }
        }
        self.dedup.insert_entries(&entries);
        if let Some(last) = entries.last() {
            self.last_seq = last.seq;
        }
        self.head = self.head.max(commit_seq.min(self.last_seq));
        for entry in entries {
            actions.push(Action::Append(entry));
        }
    }

    pub(super) fn on_handover_asked(
        &mut self,
        link: LinkId,
        epoch: u64,
        actions: &mut Vec<Action>,
    ) {
        if self.role != Role::Backup
            || !matches!(self.link, Some(Link::ToPrimary { id }) if id == link)
        {
            return;
        }
        self.note_epoch(epoch, actions);
        if self.strict_bid(Some(link), None, actions) {
            // Takes over (and says so on the link) when the witness grants.
            return;
        }
        self.promote_keeping_link("planned hand-over from the primary", true, actions);
        actions.push(Action::TookOver {
            link,
            epoch: self.epoch(),
        });
    }

    // ---- hand-over, primary side ----

    /// Starts a planned hand-over; false when there is no caught-up backup to hand to.
    pub(super) fn start_handover(&mut self, exit: bool, actions: &mut Vec<Action>) -> bool {
        if self.role != Role::Primary
            || self.degraded
            || !matches!(self.link, Some(Link::ToBackup { .. }))
        {
            return false;
        }
        self.handover = Some(Handover {
            started_ms: self.mono_ms,
            kind: if exit {
                HandoverKind::Shutdown
            } else {
                HandoverKind::Drill
            },
            sent: false,
        });
        self.draining = true;
        self.exit_requested = exit;
        self.log(
            LogLevel::Info,
            "hand-over: no new sends; waiting for the backup to have everything".into(),
        );
        self.maybe_handover(actions);
        true
    }

    pub(super) fn maybe_handover(&mut self, actions: &mut Vec<Action>) {
        let acked = self.backup_acked();
        let Some(Link::ToBackup { id, .. }) = self.link.clone() else {
            return;
        };
        let Some(handover) = &mut self.handover else {
            return;
        };
        if handover.sent || !self.pending.is_empty() || acked < self.last_seq {
            return;
        }
        handover.sent = true;
        self.strict_on_handover_sent(id);
        actions.push(Action::Handover {
            link: id,
            epoch: self.epochs.current(),
        });
    }

    /// Primary: the log has completed no write for the detection time while messages wait
    /// (a disk that stopped answering: an fsync that never returns). Such a node commits
    /// nothing, and its heartbeats keep the backup from taking over, so its clients would
    /// wait as long as the disk hangs. It hands the role to a backup that holds everything
    /// acknowledged, without waiting for what is pending: clients resend that to the new
    /// primary, and what the log wrote of it is cut when this node rejoins, as after a crash.
    pub(super) fn watch_storage(&mut self, actions: &mut Vec<Action>) {
        let Some(detection_ms) = self.pair().map(|pair| pair.detection_ms) else {
            return;
        };
        if self.durable >= self.last_seq || self.durable > self.storage_watch.durable {
            self.storage_watch = StorageWatch {
                durable: self.durable,
                since_ms: self.mono_ms,
                acted: false,
            };
            return;
        }
        let stuck_ms = self.mono_ms.saturating_sub(self.storage_watch.since_ms);
        if stuck_ms < detection_ms
            || self.role != Role::Primary
            || self.handover.is_some()
            || self.storage_watch.acted
        {
            return;
        }
        self.storage_watch.acted = true;
        let what = format!(
            "the log has completed no write for {stuck_ms} ms, {} messages waiting from seq {}",
            self.last_seq - self.durable,
            self.durable + 1
        );
        let link = match &self.link {
            Some(Link::ToBackup { id, .. }) if self.backup_acked() >= self.head => *id,
            Some(Link::ToBackup { .. }) => {
                let message = format!("{what}; the backup lacks acknowledged messages, so this node stays primary and commits nothing");
                self.log(LogLevel::Warn, message);
                return;
            }
            _ => {
                let message = format!("{what}; no backup is connected to take over, so this node stays primary and commits nothing");
                self.log(LogLevel::Warn, message);
                return;
            }
        };
        self.log(
            LogLevel::Warn,
            format!("{what}; handing the primary role to the backup"),
        );
        self.handover = Some(Handover {
            started_ms: self.mono_ms,
            kind: HandoverKind::StuckLog,
            sent: true,
        });
        self.draining = true;
        self.strict_on_handover_sent(link);
        actions.push(Action::Handover {
            link,
            epoch: self.epochs.current(),
        });
    }

    /// The log completed no write for the detection time while entries wait, and the node
    /// acted on it (`watch_storage`); until it moves again the node follows no primary: it
    /// could not keep up, and a primary in sync with it would wait on its acks.
    pub fn log_stuck(&self) -> bool {
        self.storage_watch.acted && self.durable < self.last_seq
    }

    pub(super) fn on_took_over(&mut self, link: LinkId, epoch: u64, actions: &mut Vec<Action>) {
        if self.link.as_ref().is_none_or(|l| l.id() != link) || self.handover.is_none() {
            return;
        }
        self.note_epoch(epoch, actions);
        // Heard on the link just now: the peer is primary. Without this, the heartbeats it
        // sent as backup would still stand for a moment, and the standoff rule could take
        // the role back.
        self.peer.primary = true;
        self.peer.epoch = epoch;
        self.peer.primary_seen_ms = self.mono_ms;
        self.log(
            LogLevel::Info,
            format!("hand-over: the peer took over in epoch {epoch}"),
        );
        self.finish_handover(Some(epoch), actions);
    }

    fn finish_handover(&mut self, epoch: Option<u64>, actions: &mut Vec<Action>) {
        let Some(handover) = self.handover.take() else {
            return;
        };
        if handover.kind == HandoverKind::Shutdown {
            self.goodbye_all("shutdown", actions);
            self.exited = true;
            actions.push(Action::Exit);
        } else {
            self.draining = false;
            self.role = Role::Backup;
            self.degraded = false;
            let what = handover.kind.what();
            if handover.kind == HandoverKind::StuckLog {
                // Never to commit here: the senders resend them to the new primary, and what
                // the log wrote of them is cut when this node rejoins.
                self.pending.clear();
                self.resubmissions.clear();
            }
            let why = match epoch {
                Some(epoch) => format!("{what}: the peer took over in epoch {epoch}"),
                None => format!("{what}: the backup did not answer in time"),
            };
            self.log(
                LogLevel::Info,
                format!("handed over: serving as backup ({why})"),
            );
            self.note_change("handed over", &why);
            if let Some(link) = self.link.take() {
                actions.push(Action::CloseLink {
                    link: link.id(),
                    reason: "hand-over done".into(),
                });
            }
            self.goodbye_all("failover", actions);
            actions.push(Action::RoleChanged);
        }
    }

    /// Remembers the latest role change and its reason, for status.
    fn note_change(&mut self, what: &'static str, why: &str) {
        self.last_change = Some(super::RoleChange {
            at_ms: self.now_ms,
            what,
            role: self.role,
            epoch: self.epoch(),
            reason: why.to_string(),
        });
    }

    pub(super) fn on_probe_result(&mut self, ok: bool) {
        self.probing = false;
        let was_failing = self.probe_failing;
        self.probe_failing = !ok;
        if ok {
            self.probe_ok_ms = Some(self.mono_ms);
            if was_failing {
                self.log(LogLevel::Info, "check_address answers again".into());
            }
        } else if !was_failing {
            // Logged when it starts failing, not on every retry.
            self.log(
                LogLevel::Warn,
                "check_address did not answer: not promoting (this node may be cut off)".into(),
            );
        }
    }
}
