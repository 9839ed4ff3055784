//! The history checker of the fault lab: every client of a scenario records what it did and
//! saw (each send attempt, each ack, each delivered message) with the time the harness read
//! it, the nodes' logs add the epochs each node was primary in, and [`check`] proves the
//! issue's invariants over the whole run, or returns the smallest excerpt that breaks one.
//!
//! Pure: no sockets, processes or sleeps here, so the checker is unit-tested on hand-made
//! bad histories (`tests/it/history_check.rs`) and the lab (`tests/it/netlab`) only feeds it.
//!
//! Invariants, per run:
//! 1. every acknowledged message (and every message in a node's final stored history) was
//!    delivered to every receiver that stayed joined (listeners, and the stored history of
//!    the surviving primary, recorded as receiver `store:<node>`) exactly once;
//! 2. one order: a receiver's deliveries that were not superseded (a message re-committed
//!    after a merge names the losing (epoch, seq) it replaces in `orig`; the receiver may
//!    have shown the losing copy) rise in seq, and any two receivers deliver the messages
//!    they share in the same relative order;
//! 3. no (epoch, seq) ever named two different messages, across every receiver;
//! 4. no two nodes were primary (committed) in the same epoch, and every delivered epoch is
//!    one some node was primary in (when the nodes' terms were recorded);
//! 5. an ack's seq is where receivers show the message (or its re-committed copy's `orig`).
//!
//! It also measures the longest client-visible unavailability (from a message's first send
//! attempt to its ack) and how many messages were merged after a partition (delivered with
//! `orig`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one client (or node) did or saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A send attempt of `id` to `node` (a resend after a fail-over is another attempt).
    /// `clock_ns`: the sender's CLOCK_MONOTONIC read just before the send left it, so no
    /// node can have received this attempt earlier (see [`check_one_committer`]).
    Send {
        id: String,
        node: String,
        clock_ns: Option<u64>,
    },
    /// `node` acknowledged `id` with `seq`. `clock_ns`: the sender's CLOCK_MONOTONIC read
    /// just after the ack arrived, so the commit it reports happened before.
    Ack {
        id: String,
        seq: u64,
        node: String,
        clock_ns: Option<u64>,
    },
    /// The client showed message `(from, id)` at `(epoch, seq)`; `orig` when it was
    /// re-committed from a history that lost.
    Deliver {
        from: String,
        id: String,
        epoch: u64,
        seq: u64,
        orig: Option<(u64, u64)>,
    },
    /// `node` became primary in `epoch` (from its log: `promoted to primary in epoch N`).
    Term { node: String, epoch: u64 },
    /// A fault the scenario injected or removed, for context in excerpts.
    Fault { what: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Time since the history began, when the harness read it.
    pub at: Duration,
    /// The client's nick (`store:<node>` for a stored history, `node:<id>` for a term).
    pub client: String,
    pub kind: Kind,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{:>8.3}s {:<10} ", self.at.as_secs_f64(), self.client)?;
        match &self.kind {
            Kind::Send { id, node, .. } => write!(f, "send {id} to {node}"),
            Kind::Ack { id, seq, node, .. } => write!(f, "ack {id} seq {seq} from {node}"),
            Kind::Deliver {
                from,
                id,
                epoch,
                seq,
                orig,
            } => {
                write!(f, "deliver {from}/{id} at epoch {epoch} seq {seq}")?;
                match orig {
                    Some((e, s)) => write!(f, " (orig epoch {e} seq {s})"),
                    None => Ok(()),
                }
            }
            Kind::Term { node, epoch } => write!(f, "node {node} primary in epoch {epoch}"),
            Kind::Fault { what } => write!(f, "fault: {what}"),
        }
    }
}

/// The shared, append-only record of one run; clones record into the same history.
#[derive(Clone)]
pub struct History {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            events: Arc::default(),
        }
    }

    /// Records an event that happened now.
    pub fn record(&self, client: &str, kind: Kind) {
        self.record_at(Instant::now(), client, kind);
    }

    /// Records an event that happened at `at` (a node's log line read earlier).
    pub fn record_at(&self, at: Instant, client: &str, kind: Kind) {
        let event = Event {
            at: at.saturating_duration_since(self.start),
            client: client.to_string(),
            kind,
        };
        self.events.lock().unwrap().push(event);
    }

    pub fn fault(&self, what: &str) {
        self.record(
            "lab",
            Kind::Fault {
                what: what.to_string(),
            },
        );
    }

    /// Every event so far, in time order (stable: events read at the same instant keep the
    /// order they were recorded in).
    pub fn events(&self) -> Vec<Event> {
        let mut events = self.events.lock().unwrap().clone();
        events.sort_by_key(|e| e.at);
        events
    }

    /// (from, id) of every acknowledged message so far.
    pub fn acked_keys(&self) -> BTreeSet<(String, String)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match &e.kind {
                Kind::Ack { id, .. } => Some((e.client.clone(), id.clone())),
                _ => None,
            })
            .collect()
    }

    /// (from, id) of every message `client` showed so far.
    pub fn delivered_keys(&self, client: &str) -> BTreeSet<(String, String)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.client == client)
            .filter_map(|e| match &e.kind {
                Kind::Deliver { from, id, .. } => Some((from.clone(), id.clone())),
                _ => None,
            })
            .collect()
    }

    /// The node that sent `client` its latest ack.
    pub fn last_ack_node(&self, client: &str) -> Option<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|e| match &e.kind {
                Kind::Ack { node, .. } if e.client == client => Some(node.clone()),
                _ => None,
            })
    }

    pub fn ack_count(&self, client: &str) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.client == client && matches!(e.kind, Kind::Ack { .. }))
            .count()
    }
}

/// Which invariant a run broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// An acknowledged (or stored) message never reached a receiver.
    Lost,
    /// A receiver showed a message twice.
    Duplicated,
    /// A receiver's seqs went down, or two receivers disagree on the order.
    Order,
    /// One (epoch, seq) named two different messages.
    SeqNamedTwice,
    /// Two nodes were primary in one epoch.
    EpochOfTwoNodes,
    /// A message carries an epoch no node was primary in.
    UnknownEpoch,
    /// An ack named a seq at which no receiver showed the message (neither as its seq nor
    /// as the `orig` of its re-committed copy).
    AckedAtAnotherSeq,
    /// Strict mode ([`check_one_committer`]): the clocks cannot rule out that two nodes
    /// committed in overlapping time.
    TwoCommitting,
    /// Strict mode: an ack whose commit cannot be placed in time (no stamp, or no send of
    /// the message to the node that held its epoch).
    CommitNotPlaced,
}

/// A broken invariant with the fewest events that show it.
#[derive(Debug)]
pub struct Violation {
    pub broken: Broken,
    pub what: String,
    pub excerpt: Vec<Event>,
    /// Events in the whole history.
    pub total: usize,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "history violation ({:?}): {}", self.broken, self.what)?;
        writeln!(
            f,
            "smallest excerpt ({} of {} events):",
            self.excerpt.len(),
            self.total
        )?;
        for e in &self.excerpt {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// What a run that kept every invariant measured.
#[derive(Debug, Default)]
pub struct Report {
    pub events: usize,
    /// Distinct acknowledged messages.
    pub acked: usize,
    /// Messages each receiver showed.
    pub delivered: BTreeMap<String, usize>,
    /// Distinct messages re-committed after a merge (shown with `orig`).
    pub merged: usize,
    /// The longest wait from a message's first send attempt to its ack, who waited, for
    /// which id, and from when.
    pub longest_unavailable: Duration,
    pub longest_unavailable_at: Option<(String, String, Duration)>,
    /// (node, epoch) of every term.
    pub terms: Vec<(String, u64)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "history: {} events; {} acked, 0 lost",
            self.events, self.acked
        )?;
        let shown: Vec<String> = self
            .delivered
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        write!(f, "; delivered once each: {}", shown.join(", "))?;
        write!(f, "; {} merged (orig)", self.merged)?;
        write!(
            f,
            "; longest unavailability {} ms",
            self.longest_unavailable.as_millis()
        )?;
        if let Some((client, id, from)) = &self.longest_unavailable_at {
            write!(f, " ({client} {id} from +{:.3}s)", from.as_secs_f64())?;
        }
        let terms: Vec<String> = self.terms.iter().map(|(n, e)| format!("{n}:{e}")).collect();
        write!(f, "; terms {}", terms.join(" "))
    }
}

type Key = (String, String);

/// Checks a whole run. `receivers` are the clients that stayed joined for the whole run
/// (and `store:<node>` stored histories): each must have shown every acknowledged and every
/// stored message exactly once.
pub fn check(events: &[Event], receivers: &[&str]) -> Result<Report, Violation> {
    let total = events.len();
    let violation = |broken, what: String, excerpt: Vec<&Event>| Violation {
        broken,
        what,
        excerpt: excerpt.into_iter().cloned().collect(),
        total,
    };
    let deliveries = |client: &str| -> Vec<&Event> {
        events
            .iter()
            .filter(|e| e.client == client && matches!(e.kind, Kind::Deliver { .. }))
            .collect()
    };
    let key_of = |e: &Event| -> Key {
        match &e.kind {
            Kind::Deliver { from, id, .. } => (from.clone(), id.clone()),
            _ => unreachable!("deliveries only"),
        }
    };
    let place_of = |e: &Event| -> (u64, u64) {
        match &e.kind {
            Kind::Deliver { epoch, seq, .. } => (*epoch, *seq),
            _ => unreachable!("deliveries only"),
        }
    };

    // (4) Terms: no epoch belongs to two nodes.
    let mut terms: BTreeMap<u64, &Event> = BTreeMap::new();
    for e in events {
        if let Kind::Term { node, epoch } = &e.kind {
            if let Some(first) = terms.get(epoch) {
                let Kind::Term { node: other, .. } = &first.kind else {
                    unreachable!()
                };
                if other != node {
                    return Err(violation(
                        Broken::EpochOfTwoNodes,
                        format!("nodes {other} and {node} were both primary in epoch {epoch}"),
                        vec![first, e],
                    ));
                }
            } else {
                terms.insert(*epoch, e);
            }
        }
    }

    // (3) One (epoch, seq) names one message, across every receiver.
    let mut named: HashMap<(u64, u64), &Event> = HashMap::new();
    for e in events {
        if let Kind::Deliver { .. } = &e.kind {
            let place = place_of(e);
            match named.get(&place) {
                Some(first) if key_of(first) != key_of(e) => {
                    return Err(violation(
                        Broken::SeqNamedTwice,
                        format!(
                            "(epoch {}, seq {}) named both {:?} and {:?}",
                            place.0,
                            place.1,
                            key_of(first),
                            key_of(e)
                        ),
                        vec![first, e],
                    ));
                }
                Some(_) => {}
                None => {
                    named.insert(place, e);
                }
            }
            if !terms.is_empty() && !terms.contains_key(&place.0) {
                return Err(violation(
                    Broken::UnknownEpoch,
                    format!(
                        "a message in epoch {}, which no node was primary in",
                        place.0
                    ),
                    vec![e],
                ));
            }
        }
    }

    // (1) Exactly once: each receiver shows each required message once.
    let acks: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.kind, Kind::Ack { .. }))
        .collect();
    let mut required: BTreeMap<Key, &Event> = BTreeMap::new();
    for e in &acks {
        let Kind::Ack { id, .. } = &e.kind else {
            unreachable!()
        };
        required.entry((e.client.clone(), id.clone())).or_insert(e);
    }
    for store in receivers.iter().filter(|r| r.starts_with("store:")) {
        for e in deliveries(store) {
            required.entry(key_of(e)).or_insert(e);
        }
    }
    let mut report = Report {
        events: total,
        acked: required
            .values()
            .filter(|e| matches!(e.kind, Kind::Ack { .. }))
            .count(),
        ..Report::default()
    };
    for receiver in receivers {
        let shown = deliveries(receiver);
        let mut first_of: HashMap<Key, &Event> = HashMap::new();
        for e in &shown {
            if let Some(first) = first_of.insert(key_of(e), e) {
                return Err(violation(
                    Broken::Duplicated,
                    format!("{receiver} showed {:?} twice", key_of(e)),
                    vec![first, e],
                ));
            }
        }
        for (key, because) in &required {
            if first_of.contains_key(key) {
                continue;
            }
            // The cause, and the receiver's deliveries on either side of it: it was alive
            // and showing other messages, yet not this one.
            let before = shown.iter().rev().find(|e| e.at <= because.at);
            let after = shown.iter().find(|e| e.at > because.at);
            let mut excerpt = vec![*because];
            excerpt.extend(before.copied());
            excerpt.extend(after.copied());
            excerpt.sort_by_key(|e| e.at);
            let why = if matches!(because.kind, Kind::Ack { .. }) {
                "acknowledged"
            } else {
                "stored"
            };
            return Err(violation(
                Broken::Lost,
                format!("{receiver} never showed {key:?}, which was {why}"),
                excerpt,
            ));
        }
        report.delivered.insert(receiver.to_string(), shown.len());
    }

    // (5) An ack names the message's place: its seq, or the orig seq of its copy.
    let mut seqs_of: HashMap<Key, BTreeSet<u64>> = HashMap::new();
    for e in events {
        if let Kind::Deliver { seq, orig, .. } = &e.kind {
            let seqs = seqs_of.entry(key_of(e)).or_default();
            seqs.insert(*seq);
            seqs.extend(orig.map(|(_, s)| s));
        }
    }
    for e in &acks {
        let Kind::Ack { id, seq, .. } = &e.kind else {
            unreachable!()
        };
        let key = (e.client.clone(), id.clone());
        let Some(seqs) = seqs_of.get(&key) else {
            continue; // Lost, reported above when a receiver had to show it.
        };
        if !seqs.contains(seq) {
            let shown = events
                .iter()
                .find(|d| matches!(d.kind, Kind::Deliver { .. }) && key_of(d) == key)
                .expect("shown somewhere");
            return Err(violation(
                Broken::AckedAtAnotherSeq,
                format!("{key:?} was acked at seq {seq} but shown at {seqs:?}"),
                vec![e, shown],
            ));
        }
    }

    // (2) One order. A delivery whose (epoch, seq) some re-committed message names in
    // `orig` was superseded: it belonged to a history that lost.
    let superseded: BTreeSet<(u64, u64)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::Deliver { orig, .. } => *orig,
            _ => None,
        })
        .collect();
    let kept = |receiver: &str| -> Vec<&Event> {
        deliveries(receiver)
            .into_iter()
            .filter(|e| !superseded.contains(&place_of(e)))
            .collect()
    };
    for receiver in receivers {
        let shown = kept(receiver);
        for pair in shown.windows(2) {
            if place_of(pair[1]).1 <= place_of(pair[0]).1 {
                return Err(violation(
                    Broken::Order,
                    format!("{receiver}'s seqs went down"),
                    vec![pair[0], pair[1]],
                ));
            }
        }
    }
    for (n, x) in receivers.iter().enumerate() {
        for y in &receivers[n + 1..] {
            let at_y: HashMap<Key, (usize, &Event)> = kept(y)
                .into_iter()
                .enumerate()
                .map(|(i, e)| (key_of(e), (i, e)))
                .collect();
            let mut last: Option<(usize, &Event, &Event)> = None;
            for e in kept(x) {
                let Some(&(i, e_y)) = at_y.get(&key_of(e)) else {
                    continue;
                };
                if let Some((j, prev_x, prev_y)) = last {
                    if i < j {
                        return Err(violation(
                            Broken::Order,
                            format!(
                                "{x} and {y} showed {:?} and {:?} in opposite orders",
                                key_of(prev_x),
                                key_of(e)
                            ),
                            vec![prev_x, e, e_y, prev_y],
                        ));
                    }
                }
                last = Some((i, e, e_y));
            }
        }
    }

    // Figures.
    let mut first_send: HashMap<Key, &Event> = HashMap::new();
    for e in events {
        if let Kind::Send { id, .. } = &e.kind {
            first_send
                .entry((e.client.clone(), id.clone()))
                .or_insert(e);
        }
    }
    for e in &acks {
        let Kind::Ack { id, .. } = &e.kind else {
            unreachable!()
        };
        let key = (e.client.clone(), id.clone());
        if let Some(sent) = first_send.get(&key) {
            let waited = e.at.saturating_sub(sent.at);
            if waited > report.longest_unavailable {
                report.longest_unavailable = waited;
                report.longest_unavailable_at = Some((key.0, key.1, sent.at));
            }
        }
    }
    report.merged = events
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::Deliver { orig: Some(_), .. } => Some(key_of(e)),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .len();
    report.terms = terms
        .iter()
        .map(|(epoch, e)| match &e.kind {
            Kind::Term { node, .. } => (node.clone(), *epoch),
            _ => unreachable!(),
        })
        .collect();
    Ok(report)
}

/// Checks and panics with the excerpt when the run broke an invariant.
pub fn assert_history(history: &History, receivers: &[&str]) -> Report {
    match check(&history.events(), receivers) {
        Ok(report) => report,
        Err(violation) => panic!("{violation}"),
    }
}

/// One term's observed commits, bounded by the senders' clocks: every commit that an ack
/// of this term reports happened within `[from_ns, until_ns]` (CLOCK_MONOTONIC).
#[derive(Clone, Debug)]
pub struct CommitSpan {
    pub node: String,
    pub epoch: u64,
    /// The earliest send, to this node, of a message it committed in this epoch: no commit
    /// of those messages can precede it.
    pub from_ns: u64,
    /// The latest ack of this term read by its sender: every commit of the term precedes it.
    pub until_ns: u64,
    pub acks: usize,
    first_send: Event,
    last_ack: Event,
}

/// What [`check_one_committer`] proved.
#[derive(Debug, Default)]
pub struct Committers {
    /// One per term that acknowledged something, in time order.
    pub spans: Vec<CommitSpan>,
    /// The shortest time between one node's last observed commit and another node's first.
    pub closest_handoff: Option<Duration>,
    /// Acks sent by a node that did not hold the message's epoch: a resend answered from
    /// the dedup table (protocol: "a send ... already committed ... gets an ack with the
    /// original seq"). They say when the holder committed only loosely (before this ack),
    /// so they bound no span; the order checks in [`check`] still cover them.
    pub dedup_acks: usize,
    /// The earliest clock stamp of the run, for printing spans relative to it.
    pub origin_ns: u64,
}

impl fmt::Display for Committers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |ns: u64| (ns - self.origin_ns) as f64 / 1e9;
        write!(f, "commits, one node at a time:")?;
        for s in &self.spans {
            write!(
                f,
                " {}:{} +{:.3}..+{:.3}s ({} acks);",
                s.node,
                s.epoch,
                at(s.from_ns),
                at(s.until_ns),
                s.acks
            )?;
        }
        match self.closest_handoff {
            Some(gap) => write!(f, " closest hand-off {} ms", gap.as_millis())?,
            None => write!(f, " one committer")?,
        }
        write!(f, "; {} dedup acks", self.dedup_acks)
    }
}

/// Strict mode's invariant: at most one node commits at any moment. `nodes` maps each
/// node id (as terms name it) to its client address (as sends and acks name it).
///
/// Every ack places one commit in time: its message's epoch (from where receivers showed
/// it, or the `orig` of its re-committed copy) names the node that committed it; that node
/// cannot have committed it before the first send of it to that node (stamped before the
/// send left the sender) nor after the ack was read (stamped after). A term's commits
/// therefore lie within [earliest such send, latest such ack]. The check passes only if the
/// spans of different nodes are disjoint, with no slack: the lease arithmetic
/// (docs/failover.md) promises a real-time gap between the old primary's last commit and
/// the new one's first, and the stamps only ever widen a span, never narrow it, so a pass
/// proves the commits did not overlap, whatever the harness's read delays. All stamps come
/// from one clock: CLOCK_MONOTONIC of the one kernel every lab process runs on.
pub fn check_one_committer(
    events: &[Event],
    nodes: &[(&str, &str)],
) -> Result<Committers, Violation> {
    let total = events.len();
    let violation = |broken, what: String, mut excerpt: Vec<Event>| {
        excerpt.sort_by_key(|e| e.at);
        Violation {
            broken,
            what,
            excerpt,
            total,
        }
    };
    let mut holder_of: BTreeMap<u64, &str> = BTreeMap::new();
    for e in events {
        if let Kind::Term { node, epoch } = &e.kind {
            holder_of.entry(*epoch).or_insert(node);
        }
    }
    // ((from, id), seq) -> the epoch the message was committed in at that seq.
    let mut epoch_at: HashMap<(Key, u64), u64> = HashMap::new();
    for e in events {
        if let Kind::Deliver {
            from,
            id,
            epoch,
            seq,
            orig,
        } = &e.kind
        {
            let key = (from.clone(), id.clone());
            epoch_at.insert((key.clone(), *seq), *epoch);
            if let Some((orig_epoch, orig_seq)) = orig {
                epoch_at.insert((key, *orig_seq), *orig_epoch);
            }
        }
    }
    // (client, id, node address) -> the first stamped send of it there.
    let mut first_send: HashMap<(String, String, String), (u64, &Event)> = HashMap::new();
    for e in events {
        if let Kind::Send { id, node, clock_ns } = &e.kind {
            let Some(clock) = clock_ns else {
                return Err(violation(
                    Broken::CommitNotPlaced,
                    format!("a send of {id} by {} has no clock stamp", e.client),
                    vec![e.clone()],
                ));
            };
            first_send
                .entry((e.client.clone(), id.clone(), node.clone()))
                .and_modify(|(c, first)| {
                    if clock < c {
                        (*c, *first) = (*clock, e);
                    }
                })
                .or_insert((*clock, e));
        }
    }
    let mut report = Committers {
        origin_ns: u64::MAX,
        ..Committers::default()
    };
    let mut spans: BTreeMap<u64, CommitSpan> = BTreeMap::new();
    for e in events {
        let Kind::Ack {
            id,
            seq,
            node: acked_by,
            clock_ns,
        } = &e.kind
        else {
            continue;
        };
        let key = (e.client.clone(), id.clone());
        let Some(until) = *clock_ns else {
            return Err(violation(
                Broken::CommitNotPlaced,
                format!("the ack of {key:?} has no clock stamp"),
                vec![e.clone()],
            ));
        };
        // Not shown anywhere at that seq: `check` reports it (lost, or acked elsewhere).
        let Some(&epoch) = epoch_at.get(&(key.clone(), *seq)) else {
            continue;
        };
        let Some(&holder) = holder_of.get(&epoch) else {
            return Err(violation(
                Broken::CommitNotPlaced,
                format!("{key:?} was committed in epoch {epoch}, which no node's log announced"),
                vec![e.clone()],
            ));
        };
        let Some(&(_, address)) = nodes.iter().find(|(id, _)| *id == holder) else {
            return Err(violation(
                Broken::CommitNotPlaced,
                format!("node {holder} (epoch {epoch}) has no known address"),
                vec![e.clone()],
            ));
        };
        if acked_by != address {
            report.dedup_acks += 1;
            continue;
        }
        let Some(&(from, sent)) = first_send.get(&(key.0.clone(), key.1.clone(), address.into()))
        else {
            return Err(violation(
                Broken::CommitNotPlaced,
                format!("{key:?} was acked by {holder} but never sent to it"),
                vec![e.clone()],
            ));
        };
        report.origin_ns = report.origin_ns.min(from);
        let span = spans.entry(epoch).or_insert_with(|| CommitSpan {
            node: holder.to_string(),
            epoch,
            from_ns: from,
            until_ns: until,
            acks: 0,
            first_send: sent.clone(),
            last_ack: e.clone(),
        });
        span.acks += 1;
        if from < span.from_ns {
            span.from_ns = from;
            span.first_send = sent.clone();
        }
        if until > span.until_ns {
            span.until_ns = until;
            span.last_ack = e.clone();
        }
    }
    let mut spans: Vec<CommitSpan> = spans.into_values().collect();
    spans.sort_by_key(|s| s.from_ns);
    for (n, x) in spans.iter().enumerate() {
        for y in spans[n + 1..].iter().filter(|y| y.node != x.node) {
            // Sorted by start: y starts no earlier than x; they are disjoint only if x
            // ended before y's first possible commit.
            if y.from_ns <= x.until_ns {
                return Err(violation(
                    Broken::TwoCommitting,
                    format!(
                        "node {} (epoch {}) committed until as late as {:.3} ms after node {} \
                         (epoch {}) may have committed first: their commits may overlap",
                        x.node,
                        x.epoch,
                        (x.until_ns - y.from_ns) as f64 / 1e6,
                        y.node,
                        y.epoch
                    ),
                    vec![
                        x.first_send.clone(),
                        x.last_ack.clone(),
                        y.first_send.clone(),
                        y.last_ack.clone(),
                    ],
                ));
            }
            let gap = Duration::from_nanos(y.from_ns - x.until_ns);
            report.closest_handoff = Some(report.closest_handoff.map_or(gap, |g| g.min(gap)));
        }
    }
    if spans.is_empty() {
        report.origin_ns = 0;
    }
    report.spans = spans;
    Ok(report)
}
