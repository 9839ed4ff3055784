//! Network faults between real `pbchatd` processes in network namespaces (the fault lab,
//! `tests/netlab`): partitions, a one-way partition, heartbeat loss, kill -9 across hosts.
//! Node a runs in host 1 (first primary), node b in host 2 (backup), clients in host 3.
//! Every scenario keeps a client sending and checks that each acknowledged message is
//! stored exactly once by the surviving primary and shown once, in order, by a listener.
//!
//! Needs root, `ip netns` and nftables; without them each test prints `skipped: ...` and
//! passes. Scenarios run one at a time (the lab serializes them). See docs/testing.md.

mod netlab;
mod resilient;

use std::time::{Duration, Instant};

use netlab::{
    check_history, expected_keys, Lab, Listener, SenderProc, CLIENT_PORT, HEARTBEAT_PORT,
};

/// Not a scenario: the body of the sender processes the lab starts inside a host (this test
/// binary re-run on this test alone). In an ordinary run it does nothing.
#[test]
fn netlab_client_process() {
    netlab::client_process_main();
}

fn lab() -> Option<Lab> {
    Lab::new()
}

/// Partition {a, clients} | {b}: b promotes while a keeps serving (two primaries); on heal
/// a (the lower epoch) steps down, rejoins b as backup, and what it acknowledged alone is
/// re-committed by b with `orig`. No acknowledged message is lost or doubled.
#[test]
fn partition_between_the_nodes_makes_two_primaries_and_heal_merges_without_loss() {
    let Some(lab) = lab() else { return };
    let (a, b) = lab.start_pair();
    let servers = [a.client_addr, b.client_addr];
    let listener = Listener::start(&lab, 3, "ear", &servers);
    let mut sender = SenderProc::start(&lab, 3, "mouth", &servers);
    sender.wait_more(20, "traffic before the partition");

    let cut = Instant::now();
    lab.partition(1, 2);
    lab.partition(3, 2);
    let promoted = b.wait_log("promoted to primary");
    let degraded = a.wait_log("degraded");
    let before_heal = sender.count();
    sender.wait_more(50, "acks from a while b is primary too");
    let acked_in_partition = sender.count() - before_heal;
    assert!(
        !a.log_contains("stepping down"),
        "a stepped down before the heal"
    );

    let healed = Instant::now();
    lab.heal();
    let stepped = a.wait_log("stepping down");
    a.wait_log("following the primary b");
    a.wait_log("every message kept aside is re-committed");
    let merged_at = Instant::now();
    sender.wait_more(20, "acks from b after the heal");
    sender.stop();

    let expected = expected_keys(&[&sender]);
    let history = lab.history(b.client_addr);
    let merged = check_history(&history, &expected);
    let moves = listener.check(&expected);
    assert!(merged > 0, "nothing was re-committed with orig");
    eprintln!(
        "figures: b promoted {:?} after the cut; a degraded {:?} after the cut; \
         {acked_in_partition}+ acks from a alone during the partition; a stepped down {:?} \
         after the heal, merge done {:?} after it; {merged} messages re-committed with orig; \
         {} acked in all; listener moved history {moves} time(s); sender gaps {:?}",
        promoted - cut,
        degraded - cut,
        stepped - healed,
        merged_at - healed,
        expected.len(),
        sender.gaps.lock().unwrap()
    );
}

/// One-way partition: a drops everything from b (a hears nothing from b; b still hears a's
/// heartbeats). b does not promote (it hears a); a stops hearing acks and degrades after
/// ack_timeout_ms, acknowledging on its own durability; on heal b catches up and replication
/// is synchronous again. Nothing is lost.
#[test]
fn one_way_partition_backup_to_primary_degrades_the_primary_and_nothing_promotes() {
    let Some(lab) = lab() else { return };
    let (a, b) = lab.start_pair();
    let servers = [a.client_addr, b.client_addr];
    let listener = Listener::start(&lab, 3, "ear", &servers);
    let mut sender = SenderProc::start(&lab, 3, "mouth", &servers);
    sender.wait_more(20, "traffic before the fault");

    let cut = Instant::now();
    lab.drop_from(1, 2);
    let degraded = a.wait_log("degraded");
    sender.wait_more(100, "acks while degraded");
    // Well past detection (1 s) and the stall threshold: b heard a all along.
    let watch_until = cut + Duration::from_secs(5);
    while Instant::now() < watch_until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!b.log_contains("promoted"), "b promoted while it heard a");
    let syncs_before = a.log_count("replication is synchronous again");

    let healed = Instant::now();
    lab.heal();
    netlab::wait_until("a in sync with b again", || {
        a.log_count("replication is synchronous again") > syncs_before
    });
    let synced = Instant::now();
    sender.wait_more(20, "acks in sync again");
    sender.stop();
    assert!(!a.log_contains("stepping down"));
    assert!(!b.log_contains("promoted"));

    let expected = expected_keys(&[&sender]);
    let history = lab.history(a.client_addr);
    check_history(&history, &expected);
    listener.check(&expected);
    eprintln!(
        "figures: a degraded {:?} after the cut; resynced {:?} after the heal; {} acked in \
         all; sender gaps {:?}",
        degraded - cut,
        synced - healed,
        expected.len(),
        sender.gaps.lock().unwrap()
    );
}

/// 30 % loss of heartbeat datagrams, both directions, for 10 s under traffic: the
/// replication link (its frames count as life) keeps b from promoting at default settings.
#[test]
fn heartbeat_loss_of_30_percent_both_ways_makes_no_false_failover() {
    let Some(lab) = lab() else { return };
    let (a, b) = lab.start_pair();
    let servers = [a.client_addr, b.client_addr];
    let mut sender = SenderProc::start(&lab, 3, "mouth", &servers);
    sender.wait_more(20, "traffic before the loss");

    lab.udp_loss(1, HEARTBEAT_PORT, 30);
    lab.udp_loss(2, HEARTBEAT_PORT, 30);
    let from = sender.count();
    std::thread::sleep(Duration::from_secs(10));
    let during = sender.count() - from;
    let (lost_to_a, lost_to_b) = (lab.dropped(1), lab.dropped(2));
    lab.heal();
    sender.wait_more(10, "acks after the loss");
    sender.stop();

    assert!(
        !b.log_contains("promoted"),
        "false fail-over under heartbeat loss"
    );
    assert!(!a.log_contains("stepping down"));
    assert!(
        !a.log_contains("degraded"),
        "the link is untouched: a stays in sync"
    );
    assert!(lost_to_a + lost_to_b > 10, "the loss rule dropped nothing");
    assert!(during > 100, "only {during} acks in 10 s");
    let expected = expected_keys(&[&sender]);
    check_history(&lab.history(a.client_addr), &expected);
    eprintln!(
        "figures: heartbeats dropped: {lost_to_a} to a, {lost_to_b} to b in 10 s; {during} \
         acks meanwhile; no promotion"
    );
}

/// kill -9 of the primary in host 1: b in host 2 promotes within detection + 1 s, the
/// client in host 3 follows it, nothing is lost; a restarted a rejoins as backup.
#[test]
fn kill9_of_the_primary_across_hosts_fails_over_within_detection_plus_1s() {
    let Some(lab) = lab() else { return };
    let (mut a, b) = lab.start_pair();
    let servers = [a.client_addr, b.client_addr];
    let listener = Listener::start(&lab, 3, "ear", &servers);
    let mut sender = SenderProc::start(&lab, 3, "mouth", &servers);
    sender.wait_more(50, "traffic before the kill");

    let killed = Instant::now();
    a.kill9();
    let promoted = b.wait_log("promoted to primary");
    let failover = promoted.saturating_duration_since(killed);
    assert!(
        failover < Duration::from_millis(2_000),
        "promotion took {failover:?}"
    );
    sender.wait_more(30, "acks from b");
    let resumed = killed.elapsed();

    a.restart();
    a.wait_log("following the primary b");
    b.wait_log("replication is synchronous again");
    sender.wait_more(20, "acks with a as backup");
    sender.stop();

    let expected = expected_keys(&[&sender]);
    let history = lab.history(b.client_addr);
    let merged = check_history(&history, &expected);
    listener.check(&expected);
    assert_eq!(lab.addr(2, CLIENT_PORT), b.client_addr);
    eprintln!(
        "figures: promoted {failover:?} after kill -9 ({}); 30 acks from b {resumed:?} after \
         the kill; {} acked in all; {merged} re-committed with orig; sender gaps {:?}",
        b.log_line("promoted to primary").unwrap_or_default(),
        expected.len(),
        sender.gaps.lock().unwrap()
    );
}

/// A restarted node whose log is a prefix of the primary's rejoins at its head. Regression:
/// its replication dialer once sent `Hello` before the recovered state was published (epoch
/// 0, last seq 0, no epoch history), so the primary found the logs parting after seq 0, the
/// node cut its whole log into `orphans`, streamed everything again, and resubmitted every
/// message (all duplicates).
#[test]
fn a_restarted_old_primary_rejoins_without_cutting_the_log_it_shares() {
    let Some(lab) = lab() else { return };
    let (mut a, b) = lab.start_pair();
    let servers = [a.client_addr, b.client_addr];
    let mut sender = SenderProc::start(&lab, 3, "mouth", &servers);
    sender.wait_more(30, "traffic before the kill");
    a.kill9();
    b.wait_log("promoted to primary");
    sender.wait_more(10, "acks from b");
    sender.stop();
    a.restart();
    a.wait_log("following the primary b");
    b.wait_log("replication is synchronous again");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !b.log_contains("backup a connected (epoch 0, last seq 0)"),
        "a announced an empty log: {:?}",
        b.log_line("backup a connected")
    );
    assert!(
        !a.log_contains("log cut after"),
        "a cut a log it shares with b: {:?}",
        a.log_line("log cut after")
    );
}
