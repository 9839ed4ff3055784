//! The history checker of the fault lab: every client of a scenario records what it did and
//! saw (each send attempt, each ack, each delivered message) with the time the harness read
//! it, the nodes' logs add the epochs each node was primary in, and [`check`] proves the
//! issue's invariants over the whole run, or returns the smallest excerpt that breaks one.
//!
//! Pure: no sockets, processes or sleeps here, so the checker is unit-tested on hand-made
//! bad histories (`tests/history_check.rs`) and the lab (`tests/netlab`) only feeds it.
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
    Send { id: String, node: String },
    /// `node` acknowledged `id` with `seq`.
    Ack { id: String, seq: u64, node: String },
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
            Kind::Send { id, node } => write!(f, "send {id} to {node}"),
            Kind::Ack { id, seq, node } => write!(f, "ack {id} seq {seq} from {node}"),
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
