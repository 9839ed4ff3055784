//! kill -9 and restart: no acknowledged message is lost, in `always` and `batch` modes, and a
//! torn log tail is cut at start-up without losing what came before it; the de-duplication
//! index rebuilt at start-up still recognises a resend.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::Daemon;
use serde_json::json;

/// Acked (session, id) -> seq, shared by the sending threads.
type Acked = Arc<Mutex<BTreeMap<(String, String), u64>>>;

/// Several clients send with a window in flight until the node dies under them.
fn send_until_killed(node: &mut Daemon, clients: usize, kill_after_acks: usize) -> Acked {
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for c in 0..clients {
        let mut client = node.hello(&format!("user{c}"), &format!("session-{c}"));
        client.join("r");
        let acked = acked.clone();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let session = format!("session-{c}");
            let mut sent = 0u64;
            let mut in_flight = 0;
            loop {
                while in_flight < 8 && !stop.load(Ordering::Relaxed) {
                    let frame = json!({"type":"send","room":"r","id":format!("m-{sent}"),"body":format!("{c}:{sent}")});
                    if !client.try_send(frame) {
                        return;
                    }
                    sent += 1;
                    in_flight += 1;
                }
                // The node's death ends the connection: that is the way out.
                let Some(frame) = client.try_recv() else { return };
                if frame.kind == "ack" {
                    in_flight -= 1;
                    acked
                        .lock()
                        .unwrap()
                        .insert((session.clone(), frame.id.unwrap()), frame.seq.unwrap());
                }
            }
        }));
    }
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while acked.lock().unwrap().len() < kill_after_acks {
        assert!(std::time::Instant::now() < deadline, "sends were not acked");
        std::thread::yield_now();
    }
    node.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    acked
}

/// Every stored message of room `r`, read back through the protocol.
fn stored(node: &Daemon) -> Vec<(u64, String, String)> {
    let mut c = node.hello("reader", "reader-session");
    let joined = c.join("r");
    let head = joined.head.unwrap();
    c.send(json!({"type":"join","room":"r","after":0}));
    c.recv_kind("joined");
    let mut out = Vec::new();
    while out.len() < head as usize {
        let frame = c.recv_kind("msg");
        out.push((frame.seq.unwrap(), frame.from.unwrap(), frame.id.unwrap()));
    }
    out
}

fn kill_and_restart_loses_nothing(fsync: &str) {
    let mut node = Daemon::start(
        "primary",
        "rate_per_sec = 100000\nrate_burst = 100000",
        &format!("fsync = \"{fsync}\""),
    );
    let acked = send_until_killed(&mut node, 3, 300);
    node.restart();
    let messages = stored(&node);
    // A single dense sequence from 1, no duplicates.
    for (i, (seq, _, _)) in messages.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "seqs are dense from 1");
    }
    let by_key: BTreeMap<(String, String), u64> = messages
        .iter()
        .map(|(seq, from, id)| {
            let session = format!("session-{}", from.trim_start_matches("user"));
            ((session, id.clone()), *seq)
        })
        .collect();
    assert_eq!(
        by_key.len(),
        messages.len(),
        "no (session, id) stored twice"
    );
    let acked = acked.lock().unwrap();
    for (key, seq) in acked.iter() {
        assert_eq!(
            by_key.get(key),
            Some(seq),
            "acked {key:?} at {seq} was lost"
        );
    }
    // The node goes on from where it stopped.
    let mut c = node.hello("after", "after-session");
    c.join("r");
    assert_eq!(c.send_acked("r", "m-new", "x"), messages.len() as u64 + 1);
}

#[test]
fn kill9_and_restart_lose_no_acknowledged_message_with_fsync_always() {
    kill_and_restart_loses_nothing("always");
}

#[test]
fn kill9_and_restart_lose_no_acknowledged_message_with_fsync_batch() {
    kill_and_restart_loses_nothing("batch");
}

#[test]
fn a_torn_log_tail_is_cut_and_reported_and_what_came_before_survives() {
    let mut node = Daemon::start("primary", "", "");
    let mut c = node.hello("alice", "s");
    c.join("r");
    for i in 1..=20 {
        c.send_acked("r", &format!("m-{i}"), "before the tear");
    }
    node.kill9();
    // Half a record at the end, as a crash in the middle of a write leaves it.
    let log_dir = node.dir.join("data").join("log");
    let segment = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .expect("a segment file");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[0x30, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    std::fs::write(&segment, bytes).unwrap();
    node.restart();
    assert!(node.log_contains("log recovery:"), "the cut is reported");
    let messages = stored(&node);
    assert_eq!(messages.len(), 20);
    let mut c = node.hello("alice", "s");
    c.join("r");
    assert_eq!(c.send_acked("r", "m-21", "after"), 21);
}

/// The de-duplication index is rebuilt from the log at start-up, in batches (issue 6): a
/// resend after a restart, of an id from anywhere in the log (the first batch, a middle one,
/// the partial last one), is acked with its first seq and stored once.
#[test]
fn a_resend_after_a_restart_is_acked_with_its_first_seq_and_not_stored_again() {
    let mut node = Daemon::start("primary", "", "");
    let mut c = node.hello("alice", "s");
    c.join("r");
    // 2.5 recovery batches: the last keys reach the index only at finish_recovery.
    let sent = 2 * pbchat::core::dedup::RECOVERY_BATCH as u64 + 8;
    for i in 1..=sent {
        assert_eq!(c.send_acked("r", &format!("m-{i}"), "first"), i);
    }
    drop(c);
    node.restart();
    let mut c = node.hello("alice", "s");
    c.join("r");
    for i in [1, 17, sent - 1, sent] {
        assert_eq!(c.send_acked("r", &format!("m-{i}"), "again"), i, "m-{i}");
    }
    assert_eq!(c.send_acked("r", "m-new", "new"), sent + 1);
    let stored = stored(&node);
    assert_eq!(stored.len() as u64, sent + 1, "nothing was stored twice");
}

/// Segment files of a node's log and their lengths, by name.
fn segment_lengths(node: &Daemon) -> BTreeMap<String, u64> {
    std::fs::read_dir(node.dir.join("data").join("log"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, e.metadata().unwrap().len())
        })
        .collect()
}

/// On a disk with less than two segments free, the node zeroes no spare: the spare and a
/// segment beside it would not fit, and a spare holding the last room would make the log's
/// own appends fail first. It says why, leaves no file, and sends are acknowledged into a
/// growing segment; once room is back, the next roll zeroes a spare and appends move into
/// it. Nothing acknowledged is lost across a kill -9.
#[test]
fn a_nearly_full_disk_gets_no_spare_and_appends_go_on() {
    if !common::disk::root_or_skip("the full-disk test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap().keep();
    let disk = common::disk::LoopMount::new(&dir.join("data"));
    let filler = disk.at.join("filler");
    let full = common::TEST_SEGMENT_BYTES;
    disk.fill(&filler, disk.free_bytes() - full * 3 / 2);
    let config = common::write_config(&dir, "primary", "", "fsync = \"batch\"");
    let mut node = Daemon::start_with(dir, config);
    let mut c = node.hello("alice", "s");
    c.join("r");
    let body = "x".repeat(4000);
    let mut sent = 0;
    let mut send = |c: &mut common::Client, what: &str| {
        sent += 1;
        assert_eq!(
            c.send_acked("r", &format!("m-{sent}"), &body),
            sent,
            "{what}"
        );
    };
    common::wait_until("the spare's refusal in the log", || {
        send(&mut c, "beside the refusal");
        node.log_contains("zeroing the next segment failed")
    });
    assert!(node.log_contains("MiB free"), "the log names the free room");
    let spare = node.dir.join("data/log/next-segment.zero");
    assert!(!spare.exists(), "the refused spare left its file");

    std::fs::remove_file(&filler).unwrap();
    common::wait_until("a zeroed segment after the room came back", || {
        send(&mut c, "until a roll zeroes a spare");
        segment_lengths(&node).values().any(|&len| len == full)
    });
    for _ in 0..10 {
        send(&mut c, "in the zeros");
    }
    drop(c);
    node.restart();
    assert_eq!(stored(&node).len() as u64, sent);
    drop(node);
    drop(disk);
}

/// With fsync on, the node appends into a segment zeroed ahead (its file is a whole
/// `segment_bytes` from the start and appends do not grow it); a kill -9 leaves zeros after
/// the last record, which recovery reads as the segment's unused end: nothing is cut or
/// reported, nothing acknowledged is lost, and appends go on in the same zeros.
#[test]
fn a_zeroed_segment_survives_kill9_with_nothing_cut() {
    let mut node = Daemon::start("primary", "", "fsync = \"batch\"");
    let mut c = node.hello("alice", "s");
    c.join("r");
    let full = common::TEST_SEGMENT_BYTES;
    let deadline = std::time::Instant::now() + common::DEADLINE;
    let mut sent = 0;
    // The first segment grows until the zeroed spare is ready; the next append moves on.
    while !segment_lengths(&node).values().any(|&len| len == full) {
        assert!(std::time::Instant::now() < deadline, "no zeroed segment");
        sent += 1;
        assert_eq!(c.send_acked("r", &format!("m-{sent}"), "before"), sent);
    }
    for _ in 0..20 {
        sent += 1;
        assert_eq!(
            c.send_acked("r", &format!("m-{sent}"), "in the zeros"),
            sent
        );
    }
    let before = segment_lengths(&node);
    node.kill9();
    node.restart();
    assert!(!node.log_contains("log recovery:"), "nothing was cut");
    assert_eq!(stored(&node).len() as u64, sent);
    let mut c = node.hello("alice", "s");
    c.join("r");
    assert_eq!(c.send_acked("r", "m-after", "after"), sent + 1);
    assert_eq!(segment_lengths(&node), before, "appends stay in the zeros");
}
