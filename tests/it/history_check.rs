//! The fault lab's history checker (`tests/it/history`) on hand-made histories: a good run with
//! a fail-over and a merge passes with the right figures, and each kind of bad run is caught
//! with the smallest excerpt that shows it. No root or network needed.

use crate::history;

use std::time::Duration;

use history::{check, check_one_committer, Broken, Event, Kind};

/// A history written by hand, one event per call, 10 ms apart.
#[derive(Default)]
struct Script {
    events: Vec<Event>,
}

impl Script {
    fn at(&mut self, client: &str, kind: Kind) -> &mut Self {
        let at = Duration::from_millis(10 * self.events.len() as u64);
        self.events.push(Event {
            at,
            client: client.into(),
            kind,
        });
        self
    }
    fn term(&mut self, node: &str, epoch: u64) -> &mut Self {
        self.at(
            &format!("node:{node}"),
            Kind::Term {
                node: node.into(),
                epoch,
            },
        )
    }
    fn send(&mut self, client: &str, id: &str, node: &str) -> &mut Self {
        self.at(
            client,
            Kind::Send {
                id: id.into(),
                node: node.into(),
                clock_ns: None,
            },
        )
    }
    fn ack(&mut self, client: &str, id: &str, seq: u64) -> &mut Self {
        self.at(
            client,
            Kind::Ack {
                id: id.into(),
                seq,
                node: "a".into(),
                clock_ns: None,
            },
        )
    }
    /// The next event's time as a sender's clock stamp (10 ms per event, like `at`).
    fn clock_ns(&self) -> Option<u64> {
        Some(10_000_000 * self.events.len() as u64)
    }
    /// A stamped send attempt of `id` to the node at `address`.
    fn send_to(&mut self, client: &str, id: &str, address: &str) -> &mut Self {
        let clock_ns = self.clock_ns();
        self.at(
            client,
            Kind::Send {
                id: id.into(),
                node: address.into(),
                clock_ns,
            },
        )
    }
    /// A stamped ack of `id` at `seq` from the node at `address`.
    fn ack_from(&mut self, client: &str, id: &str, seq: u64, address: &str) -> &mut Self {
        let clock_ns = self.clock_ns();
        self.at(
            client,
            Kind::Ack {
                id: id.into(),
                seq,
                node: address.into(),
                clock_ns,
            },
        )
    }
    /// `client` shows `from/id` at (epoch, seq).
    fn show(&mut self, client: &str, msg: &str, epoch: u64, seq: u64) -> &mut Self {
        self.show_orig(client, msg, epoch, seq, None)
    }
    fn show_orig(
        &mut self,
        client: &str,
        msg: &str,
        epoch: u64,
        seq: u64,
        orig: Option<(u64, u64)>,
    ) -> &mut Self {
        let (from, id) = msg.split_once('/').unwrap();
        self.at(
            client,
            Kind::Deliver {
                from: from.into(),
                id: id.into(),
                epoch,
                seq,
                orig,
            },
        )
    }
    /// A sender `s` whose m1..m3 are acked by epoch 1 and shown by both listeners.
    fn healthy() -> Script {
        let mut s = Script::default();
        s.term("a", 1);
        for n in 1..=3 {
            let id = format!("m{n}");
            s.send("s", &id, "a").ack("s", &id, n);
            s.show("ear", &format!("s/{id}"), 1, n);
            s.show("eye", &format!("s/{id}"), 1, n);
        }
        s
    }
}

fn broken(script: &Script, receivers: &[&str]) -> history::Violation {
    let violation = check(&script.events, receivers).expect_err("the checker missed it");
    // A failing run prints this: the excerpt is part of the message.
    let text = violation.to_string();
    assert!(text.contains("smallest excerpt"), "{text}");
    violation
}

#[test]
fn a_run_with_a_failover_and_a_merge_passes_with_its_figures() {
    let mut s = Script::default();
    s.term("a", 1);
    s.send("s", "m1", "a").ack("s", "m1", 1);
    s.show("ear", "s/m1", 1, 1);
    // Partition: a acks m2 alone; b promotes in epoch 2 and commits t1 from another client.
    s.send("s", "m2", "a").ack("s", "m2", 2);
    s.show("ear", "s/m2", 1, 2);
    s.term("b", 2);
    s.send("t", "t1", "b").ack("t", "t1", 2);
    s.show("eye", "s/m1", 1, 1);
    s.show("eye", "t/t1", 2, 2);
    // Heal: m2 re-committed by b with orig; ear moves to b's history and skips m2.
    s.show("ear", "t/t1", 2, 2);
    s.show_orig("eye", "s/m2", 2, 3, Some((1, 2)));
    s.send("s", "m3", "a");
    s.send("s", "m3", "b").ack("s", "m3", 4);
    s.show("ear", "s/m3", 2, 4);
    s.show("eye", "s/m3", 2, 4);
    for (msg, seq, orig) in [
        ("s/m1", 1, None),
        ("t/t1", 2, None),
        ("s/m2", 3, Some((1, 2))),
        ("s/m3", 4, None),
    ] {
        s.show_orig("store:b", msg, if seq == 1 { 1 } else { 2 }, seq, orig);
    }
    let report = check(&s.events, &["ear", "eye", "store:b"]).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(report.acked, 4);
    assert_eq!(report.merged, 1);
    assert_eq!(report.delivered["ear"], 4);
    // m3: first attempt at event 16 (160 ms), acked at event 18 (180 ms).
    assert_eq!(report.longest_unavailable, Duration::from_millis(20));
    assert_eq!(
        report.terms,
        vec![("a".to_string(), 1), ("b".to_string(), 2)]
    );
}

#[test]
fn an_acked_message_a_listener_never_showed_is_lost() {
    let mut s = Script::healthy();
    s.send("s", "m4", "a").ack("s", "m4", 4);
    s.show("ear", "s/m4", 1, 4);
    s.send("s", "m5", "a").ack("s", "m5", 5);
    s.show("ear", "s/m5", 1, 5).show("eye", "s/m5", 1, 5);
    let v = broken(&s, &["ear", "eye"]);
    assert_eq!(v.broken, Broken::Lost);
    assert!(
        v.what.contains("eye never showed") && v.what.contains("m4"),
        "{v}"
    );
    // The ack, and eye's deliveries on either side of it.
    assert_eq!(v.excerpt.len(), 3, "{v}");
    assert!(matches!(&v.excerpt[0].kind, Kind::Deliver { id, .. } if id == "m3"));
    assert!(matches!(&v.excerpt[1].kind, Kind::Ack { id, .. } if id == "m4"));
    assert!(matches!(&v.excerpt[2].kind, Kind::Deliver { id, .. } if id == "m5"));
}

#[test]
fn a_message_missing_from_the_stored_history_is_lost() {
    let mut s = Script::healthy();
    s.show("store:b", "s/m1", 1, 1)
        .show("store:b", "s/m3", 1, 3);
    let v = broken(&s, &["ear", "store:b"]);
    assert_eq!(v.broken, Broken::Lost);
    assert!(
        v.what.contains("store:b never showed") && v.what.contains("m2"),
        "{v}"
    );
}

#[test]
fn a_stored_message_a_listener_never_showed_is_lost_even_unacked() {
    let mut s = Script::healthy();
    s.show("store:b", "s/m1", 1, 1)
        .show("store:b", "s/m2", 1, 2)
        .show("store:b", "s/m3", 1, 3)
        .show("store:b", "s/m4", 1, 4);
    let v = broken(&s, &["ear", "store:b"]);
    assert_eq!(v.broken, Broken::Lost);
    assert!(v.what.contains("which was stored"), "{v}");
}

#[test]
fn a_message_shown_twice_is_duplicated_even_with_orig() {
    let mut s = Script::healthy();
    // The client should have skipped the re-committed copy of what it showed.
    s.term("b", 2);
    s.show_orig("ear", "s/m2", 2, 4, Some((1, 2)));
    let v = broken(&s, &["ear", "eye"]);
    assert_eq!(v.broken, Broken::Duplicated);
    assert_eq!(v.excerpt.len(), 2);
}

#[test]
fn seqs_that_go_down_on_one_receiver_break_the_order() {
    let mut s = Script::default();
    s.term("a", 1);
    for n in 1..=3 {
        s.send("s", &format!("m{n}"), "a")
            .ack("s", &format!("m{n}"), n);
    }
    s.show("ear", "s/m1", 1, 1)
        .show("ear", "s/m3", 1, 3)
        .show("ear", "s/m2", 1, 2);
    let v = broken(&s, &["ear"]);
    assert_eq!(v.broken, Broken::Order);
    assert_eq!(v.excerpt.len(), 2, "{v}");
}

#[test]
fn two_receivers_in_opposite_orders_break_the_order() {
    // Each receiver's seqs rise, but they disagree on which message came first: only the
    // pairwise check sees it (seqs here are per receiver as if two histories were served).
    let mut s = Script::default();
    s.term("a", 1).term("b", 2);
    s.send("s", "m1", "a").ack("s", "m1", 1);
    s.send("s", "m2", "a").ack("s", "m2", 2);
    s.show("ear", "s/m1", 1, 1).show("ear", "s/m2", 1, 2);
    s.show("eye", "s/m2", 2, 1).show("eye", "s/m1", 2, 2);
    // (epoch, seq) differ, so check 3 passes; order must fail.
    let v = broken(&s, &["ear", "eye"]);
    assert_eq!(v.broken, Broken::Order);
    assert!(v.what.contains("opposite orders"), "{v}");
    assert_eq!(v.excerpt.len(), 4, "{v}");
}

#[test]
fn one_epoch_and_seq_naming_two_messages_is_caught() {
    let mut s = Script::healthy();
    s.send("t", "x", "b").ack("t", "x", 4);
    s.show("ear", "s/m4", 1, 4);
    s.show("eye", "t/x", 1, 4);
    let v = broken(&s, &["ear", "eye"]);
    assert_eq!(v.broken, Broken::SeqNamedTwice);
    assert_eq!(v.excerpt.len(), 2, "{v}");
}

#[test]
fn two_nodes_primary_in_one_epoch_is_caught() {
    let mut s = Script::healthy();
    s.term("b", 1);
    let v = broken(&s, &["ear", "eye"]);
    assert_eq!(v.broken, Broken::EpochOfTwoNodes);
    assert_eq!(v.excerpt.len(), 2, "{v}");
}

#[test]
fn a_message_in_an_epoch_no_node_held_is_caught() {
    let mut s = Script::healthy();
    s.send("s", "m4", "a").ack("s", "m4", 4);
    s.show("ear", "s/m4", 7, 4).show("eye", "s/m4", 7, 4);
    let v = broken(&s, &["ear", "eye"]);
    assert_eq!(v.broken, Broken::UnknownEpoch);
}

#[test]
fn a_superseded_copy_does_not_count_against_the_order() {
    // ear showed a's m2 at (1, 2), then b's history where t1 is seq 2 and m2 comes back as
    // seq 3 with orig (1, 2): ear skips it. Its kept seqs are 1, 2 (t1), rising.
    let mut s = Script::default();
    s.term("a", 1).term("b", 2);
    s.send("s", "m1", "a").ack("s", "m1", 1);
    s.send("s", "m2", "a").ack("s", "m2", 2);
    s.send("t", "t1", "b").ack("t", "t1", 2);
    s.show("ear", "s/m1", 1, 1).show("ear", "s/m2", 1, 2);
    s.show("ear", "t/t1", 2, 2);
    s.show("eye", "s/m1", 1, 1).show("eye", "t/t1", 2, 2);
    s.show_orig("eye", "s/m2", 2, 3, Some((1, 2)));
    let report = check(&s.events, &["ear", "eye"]).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(report.merged, 1);
}

#[test]
fn an_ack_naming_another_seq_than_the_message_is_caught() {
    let mut s = Script::healthy();
    s.send("s", "m4", "a").ack("s", "m4", 9);
    s.show("ear", "s/m4", 1, 4).show("eye", "s/m4", 1, 4);
    let v = broken(&s, &["ear", "eye"]);
    assert_eq!(v.broken, Broken::AckedAtAnotherSeq);
    assert_eq!(v.excerpt.len(), 2, "{v}");
}

#[test]
fn an_ack_at_the_seq_a_merge_names_in_orig_is_right() {
    let mut s = Script::healthy();
    s.term("b", 2);
    // m4 acked by a at seq 4 in a history that lost; b re-committed it at seq 5.
    s.send("s", "m4", "a").ack("s", "m4", 4);
    s.show_orig("ear", "s/m4", 2, 5, Some((1, 4)));
    s.show_orig("eye", "s/m4", 2, 5, Some((1, 4)));
    check(&s.events, &["ear", "eye"]).unwrap_or_else(|v| panic!("{v}"));
}

/// Strict mode's check: node a at address A, node b at B.
const NODES: [(&str, &str); 2] = [("a", "A"), ("b", "B")];

fn overlapping(script: &Script) -> history::Violation {
    let violation = check_one_committer(&script.events, &NODES).expect_err("the checker missed it");
    assert!(violation.to_string().contains("smallest excerpt"));
    violation
}

#[test]
fn a_failover_with_a_gap_between_the_committers_passes_with_the_gap() {
    let mut s = Script::default();
    s.term("a", 1);
    s.send_to("s", "m1", "A").ack_from("s", "m1", 1, "A");
    // m2 reaches a, which loses its lease and never commits it; t's n1 waits there too.
    s.send_to("s", "m2", "A").send_to("t", "n1", "A");
    s.term("b", 2);
    // Both resent to b once it was granted epoch 2: b's span starts at these sends.
    s.send_to("s", "m2", "B").ack_from("s", "m2", 2, "B");
    s.send_to("t", "n1", "B").ack_from("t", "n1", 3, "B");
    s.show("ear", "s/m1", 1, 1)
        .show("ear", "s/m2", 2, 2)
        .show("ear", "t/n1", 2, 3);
    let committers = check_one_committer(&s.events, &NODES).expect("one committer at a time");
    let spans: Vec<(&str, u64, usize)> = committers
        .spans
        .iter()
        .map(|s| (s.node.as_str(), s.epoch, s.acks))
        .collect();
    assert_eq!(spans, [("a", 1, 1), ("b", 2, 2)]);
    // a's last ack was event 2 (20 ms), b's first send to it event 6 (60 ms).
    assert_eq!(committers.closest_handoff, Some(Duration::from_millis(40)));
}

#[test]
fn two_nodes_acking_in_overlapping_time_are_caught() {
    // Available mode in a partition: a and b both commit, each for its own clients.
    let mut s = Script::default();
    s.term("a", 1).term("b", 2);
    s.send_to("left", "m1", "A");
    s.send_to("right", "n1", "B");
    s.ack_from("left", "m1", 7, "A");
    s.ack_from("right", "n1", 7, "B");
    s.show("ear", "left/m1", 1, 7).show("ear", "right/n1", 2, 7);
    let v = overlapping(&s);
    assert_eq!(v.broken, Broken::TwoCommitting);
    assert_eq!(v.excerpt.len(), 4, "{v}");
}

#[test]
fn an_old_primary_acking_once_after_the_new_one_began_is_caught() {
    // The new primary's first commit, then one late ack from the old one (a lease that
    // outlived the grant): the overlap is a single message long.
    let mut s = Script::default();
    s.term("a", 1);
    s.send_to("s", "m1", "A").ack_from("s", "m1", 1, "A");
    s.send_to("t", "n1", "A");
    s.term("b", 2);
    s.send_to("s", "m2", "B").ack_from("s", "m2", 2, "B");
    s.ack_from("t", "n1", 3, "A");
    s.show("ear", "s/m1", 1, 1)
        .show("ear", "s/m2", 2, 2)
        .show("ear", "t/n1", 1, 3);
    let v = overlapping(&s);
    assert_eq!(v.broken, Broken::TwoCommitting);
    assert!(v.what.contains("node a (epoch 1)"), "{v}");
}

#[test]
fn an_ack_without_a_clock_stamp_cannot_be_placed() {
    let mut s = Script::default();
    s.term("a", 1);
    s.send_to("s", "m1", "A");
    s.at(
        "s",
        Kind::Ack {
            id: "m1".into(),
            seq: 1,
            node: "A".into(),
            clock_ns: None,
        },
    );
    s.show("ear", "s/m1", 1, 1);
    assert_eq!(overlapping(&s).broken, Broken::CommitNotPlaced);
}

#[test]
fn a_resend_acked_from_the_new_primarys_dedup_table_bounds_no_span() {
    // a committed m1 but its ack was lost with a; b answers the resend with a's seq. That
    // ack is b's answer, not b's commit: it must not stretch a's span into b's.
    let mut s = Script::default();
    s.term("a", 1);
    s.send_to("s", "m0", "A").ack_from("s", "m0", 1, "A");
    s.send_to("s", "m1", "A");
    s.term("b", 2);
    s.send_to("t", "n1", "B").ack_from("t", "n1", 3, "B");
    s.send_to("s", "m1", "B").ack_from("s", "m1", 2, "B");
    s.show("ear", "s/m0", 1, 1)
        .show("ear", "s/m1", 1, 2)
        .show("ear", "t/n1", 2, 3);
    let committers = check_one_committer(&s.events, &NODES).expect("one committer at a time");
    assert_eq!(committers.dedup_acks, 1);
    assert_eq!(committers.spans.len(), 2);
}
