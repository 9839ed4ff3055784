//! The harness's own promises, which both simulations' verdicts rest on.

use super::*;

/// A disk holding seqs 1..=5, fsynced up to 2.
fn disk_synced_to_2() -> Disk {
    let mut disk = Disk::default();
    for seq in 1..=5 {
        disk.append("a", entry(1, seq));
    }
    disk.synced(2);
    disk
}

#[test]
fn a_power_cut_keeps_only_what_was_fsynced_and_a_torn_write_part_of_the_rest() {
    let mut cut = disk_synced_to_2();
    cut.power_cut();
    assert_eq!(cut.last_seq(), 2);
    let mut torn = disk_synced_to_2();
    torn.tear(1);
    assert_eq!(torn.last_seq(), 3);
    let mut truncated = disk_synced_to_2();
    let orphans = truncated.truncate(3);
    assert_eq!(orphans.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(truncated.last_seq(), 3);
}

#[test]
#[should_panic(expected = "the log would refuse the gap")]
fn a_disk_refuses_an_append_that_leaves_a_gap() {
    disk_synced_to_2().append("a", entry(1, 7));
}

#[test]
fn events_run_earliest_first_and_ties_in_the_order_scheduled() {
    let mut queue = EventQueue::default();
    for (at, name) in [(20, "late"), (10, "first"), (10, "second"), (5, "earliest")] {
        queue.schedule_at(at, name);
    }
    assert_eq!(queue.pop_due(9), Some((5, "earliest")));
    assert_eq!(queue.pop_due(9), None, "nothing else is due by 9 ms");
    let rest: Vec<_> = std::iter::from_fn(|| queue.pop_due(100)).collect();
    assert_eq!(rest, [(10, "first"), (10, "second"), (20, "late")]);
}

#[test]
fn a_cut_direction_loses_datagrams_and_a_calm_network_delivers_each_once_at_once() {
    let mut network = Network::calm();
    network.cut[0][WITNESS] = true;
    assert_eq!(network.datagram(0, WITNESS), Vec::<u64>::new());
    assert_eq!(network.datagram(WITNESS, 0), [0], "the cut is one way");
    network.heal();
    assert_eq!(network.datagram(0, WITNESS), [0]);
}

#[test]
fn a_seeded_network_loses_duplicates_and_delays_datagrams_within_its_bounds() {
    let mut network = Network {
        rng: Some(Rng::new(1)),
        latency_min_ms: 1,
        latency_max_ms: 20,
        loss_percent: 30,
        duplicate_percent: 20,
        jitter_ms: 100,
        ..Network::calm()
    };
    let sent = 10_000;
    let delays: Vec<Vec<u64>> = (0..sent).map(|_| network.datagram(0, 1)).collect();
    let arrived: usize = delays.iter().map(Vec::len).sum();
    assert!(delays.iter().any(Vec::is_empty), "some are lost");
    assert!(delays.iter().any(|d| d.len() == 2), "some come twice");
    // 1.2 copies sent per datagram, 70 % of each kept: 0.84 per datagram.
    assert!((8_000..8_800).contains(&arrived), "{arrived} arrived");
    assert!(delays.iter().flatten().all(|d| (1..=120).contains(d)));
}

#[test]
fn a_stream_keeps_its_order_whatever_each_segment_s_latency() {
    let mut network = Network {
        rng: Some(Rng::new(7)),
        latency_max_ms: 50,
        ..Network::calm()
    };
    let mut last_due = 0;
    for now_ms in 0..1_000 {
        let due = network.stream_due(now_ms, last_due);
        assert!(due >= last_due && due >= now_ms);
        last_due = due;
    }
}

#[test]
fn a_clock_runs_at_its_rate_from_its_start() {
    let fast = Clock::start(1_000, 1_010_000);
    assert_eq!(fast.mono_ms(1_000), 0);
    assert_eq!(fast.mono_ms(11_000), 10_100);
}
