//! The client protocol of docs/protocol.md against the real `pbchatd` binary over TCP.

use crate::common;

use common::{Client, Daemon};
use serde_json::json;

#[test]
fn two_members_chat_and_the_sender_gets_ack_and_msg() {
    let node = Daemon::start("primary", "", "");
    let mut alice = node.hello("alice", "sa");
    let mut bob = node.hello("bob", "sb");
    let joined = alice.join("general");
    assert_eq!(joined.members.as_deref(), Some(&["alice".to_string()][..]));
    let joined = bob.join("general");
    assert_eq!(
        joined.members.as_deref(),
        Some(&["alice".to_string(), "bob".to_string()][..])
    );
    let presence = alice.recv();
    assert_eq!(
        (
            presence.kind.as_str(),
            presence.nick.as_deref(),
            presence.event.as_deref()
        ),
        ("presence", Some("bob"), Some("join"))
    );

    alice.send(json!({"type":"send","room":"general","id":"m-1","body":"hello ✓"}));
    let mut got_ack = false;
    let mut got_msg = false;
    while !(got_ack && got_msg) {
        let frame = alice.recv();
        match frame.kind.as_str() {
            "ack" => {
                assert_eq!((frame.id.as_deref(), frame.seq), (Some("m-1"), Some(1)));
                got_ack = true;
            }
            "msg" => got_msg = true,
            other => panic!("unexpected {other}"),
        }
    }
    let msg = bob.recv();
    assert_eq!(msg.kind, "msg");
    assert_eq!(msg.room.as_deref(), Some("general"));
    assert_eq!(msg.from.as_deref(), Some("alice"));
    assert_eq!(msg.body.as_deref(), Some("hello ✓"));
    assert_eq!((msg.seq, msg.epoch), (Some(1), Some(1)));
    assert!(msg.ts.unwrap() > 1_700_000_000_000);

    bob.send(json!({"type":"leave","room":"general"}));
    assert_eq!(bob.recv_kind("left").room.as_deref(), Some("general"));
    let presence = alice.recv_kind("presence");
    assert_eq!(presence.event.as_deref(), Some("leave"));
    bob.send(json!({"type":"ping","token":"t-1"}));
    assert_eq!(bob.recv_kind("pong").token, Some(json!("t-1")));
    bob.send(json!({"type":"quit"}));
    assert!(bob.closed());
}

#[test]
fn every_input_error_gets_its_code_and_the_connection_survives() {
    let node = Daemon::start("primary", "", "");
    let mut c = node.client();
    c.send(json!({"type":"join","room":"r"}));
    assert_eq!(
        c.recv().code.as_deref(),
        Some("bad_request"),
        "frame before hello"
    );
    c.send(json!({"type":"hello","version":2,"nick":"a","session":"s"}));
    assert_eq!(c.recv().code.as_deref(), Some("unsupported_version"));
    c.send(json!({"type":"hello","version":1,"nick":"a","session":"s"}));
    assert_eq!(c.recv().kind, "welcome");
    c.send_raw(b"{not json\n");
    assert_eq!(c.recv().code.as_deref(), Some("bad_request"));
    c.send_raw(b"{\"type\":\"send\",\"room\":\"r\",\"id\":\"x\",\"body\":\"\xff\xfe\"}\n");
    assert_eq!(
        c.recv().code.as_deref(),
        Some("bad_request"),
        "invalid UTF-8"
    );
    c.send(json!({"type":"dance"}));
    assert_eq!(c.recv().code.as_deref(), Some("unknown_type"));
    c.send(json!({"type":"send","room":"r","id":"m-1","body":"x"}));
    let frame = c.recv();
    assert_eq!(
        (frame.code.as_deref(), frame.id.as_deref()),
        (Some("not_joined"), Some("m-1"))
    );
    c.join("r");
    c.send(json!({"type":"send","room":"r","id":"m-2","body":"x".repeat(4097)}));
    let frame = c.recv();
    assert_eq!(
        (frame.code.as_deref(), frame.id.as_deref()),
        (Some("too_large"), Some("m-2"))
    );
    // Blank lines and CRLF are fine; the connection still works.
    c.send_raw(b"\r\n\n{\"type\":\"ping\"}\r\n");
    assert_eq!(c.recv().kind, "pong");
    assert_eq!(c.send_acked("r", "m-3", "still here"), 1);

    let mut other = node.client();
    other.send(json!({"type":"hello","version":1,"nick":"a","session":"s2"}));
    assert_eq!(other.recv().code.as_deref(), Some("nick_in_use"));
}

#[test]
fn an_overlong_line_is_too_large_and_closes_the_connection() {
    let node = Daemon::start("primary", "max_line_bytes = 1024\nmax_body_bytes = 512", "");
    let mut c = node.hello("alice", "s");
    let mut line = vec![b'x'; 2048];
    line.push(b'\n');
    c.send_raw(&line);
    assert_eq!(c.recv().code.as_deref(), Some("too_large"));
    assert!(c.closed());
    // The node is fine.
    let mut d = node.hello("bob", "s2");
    d.send(json!({"type":"ping"}));
    assert_eq!(d.recv().kind, "pong");
}

#[test]
fn session_takeover_closes_the_older_connection() {
    let node = Daemon::start("primary", "", "");
    let mut first = node.hello("alice", "same");
    first.join("r");
    let mut second = node.hello("alice", "same");
    assert!(first.closed());
    second.join("r");
    assert_eq!(second.send_acked("r", "m-1", "x"), 1);
}

#[test]
fn a_resent_id_is_acked_with_the_original_seq_and_not_broadcast_again() {
    let node = Daemon::start("primary", "", "");
    let mut alice = node.hello("alice", "sa");
    let mut bob = node.hello("bob", "sb");
    bob.join("r");
    alice.join("r");
    let seq = alice.send_acked("r", "m-1", "once");
    assert_eq!(bob.recv_kind("msg").seq, Some(seq));
    // Reconnect as the same session and resend the same id.
    drop(alice);
    let mut alice = node.hello("alice", "sa");
    alice.join("r");
    assert_eq!(alice.send_acked("r", "m-1", "once"), seq);
    // Bob sees only the next, new message, not a second copy.
    let next = alice.send_acked("r", "m-2", "twice");
    let msg = bob.recv_kind("msg");
    assert_eq!((msg.seq, msg.id.as_deref()), (Some(next), Some("m-2")));
}

#[test]
fn join_after_replays_every_stored_message_then_live_with_no_gap_or_duplicate() {
    let node = Daemon::start("primary", "rate_per_sec = 100000\nrate_burst = 100000", "");
    let mut alice = node.hello("alice", "sa");
    alice.join("r");
    alice.join("other");
    // More than one replay batch, interleaved with another room.
    for i in 0..700 {
        let room = if i % 7 == 0 { "other" } else { "r" };
        alice.send(json!({"type":"send","room":room,"id":format!("m-{i}"),"body":format!("b{i}")}));
    }
    let mut acked = 0;
    while acked < 700 {
        if alice.recv().kind == "ack" {
            acked += 1;
        }
    }
    let mut bob = node.hello("bob", "sb");
    bob.send(json!({"type":"join","room":"r","after":100,"after_epoch":1}));
    let joined = bob.recv();
    assert_eq!((joined.kind.as_str(), joined.head), ("joined", Some(700)));
    // Live sends race the replay.
    for i in 700..750 {
        alice.send(json!({"type":"send","room":"r","id":format!("m-{i}"),"body":"live"}));
    }
    let expected: Vec<u64> = (101..=750)
        .filter(|s| *s > 700 || (s - 1) % 7 != 0)
        .collect();
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let frame = bob.recv();
        if frame.kind == "msg" {
            assert_eq!(frame.room.as_deref(), Some("r"));
            got.push(frame.seq.unwrap());
        }
    }
    if let Some(at) = (0..got.len()).find(|&i| got[i] != expected[i]) {
        panic!(
            "replay differs at {at}: got {:?}, expected {:?}",
            &got[at.saturating_sub(3)..(at + 5).min(got.len())],
            &expected[at.saturating_sub(3)..(at + 5).min(expected.len())]
        );
    }
}

#[test]
fn history_returns_the_newest_below_before_in_order_then_history_end() {
    let node = Daemon::start("primary", "", "");
    let mut alice = node.hello("alice", "sa");
    alice.join("r");
    for i in 1..=10 {
        alice.send_acked("r", &format!("m-{i}"), &format!("body {i}"));
    }
    // A non-member may ask.
    let mut bob = node.hello("bob", "sb");
    bob.send(json!({"type":"history","room":"r","before":9,"limit":3}));
    let seqs: Vec<u64> = (0..3).map(|_| bob.recv_kind("msg").seq.unwrap()).collect();
    assert_eq!(seqs, [6, 7, 8]);
    assert_eq!(bob.recv().kind, "history_end");
    bob.send(json!({"type":"history","room":"r","limit":2}));
    let seqs: Vec<u64> = (0..2).map(|_| bob.recv_kind("msg").seq.unwrap()).collect();
    assert_eq!(seqs, [9, 10]);
    assert_eq!(bob.recv().kind, "history_end");
    bob.send(json!({"type":"history","room":"empty-room"}));
    assert_eq!(bob.recv().kind, "history_end");
}

#[test]
fn a_backup_redirects_hello_to_the_primary() {
    // The peer is never started; slow heartbeats keep this node a backup for the test.
    let pair = common::PairFiles::new("interval_ms = 1000\nmisses = 60");
    let node = Daemon::start_with(pair.dir.clone(), pair.config_b.clone());
    let mut c = node.client();
    c.send(json!({"type":"hello","version":1,"nick":"alice","session":"s"}));
    let frame = c.recv();
    assert_eq!(frame.kind, "redirect");
    // No primary known yet: the contract's null.
    assert_eq!(frame.primary, None);
    assert!(c.closed());
}

#[test]
fn sends_beyond_the_rate_are_rate_limited() {
    let node = Daemon::start("primary", "rate_per_sec = 1\nrate_burst = 3", "");
    let mut c = node.hello("alice", "s");
    c.join("r");
    for i in 0..3 {
        c.send_acked("r", &format!("m-{i}"), "x");
    }
    c.send(json!({"type":"send","room":"r","id":"m-3","body":"x"}));
    let frame = c.recv_kind("error");
    assert_eq!(
        (frame.code.as_deref(), frame.id.as_deref()),
        (Some("rate_limited"), Some("m-3"))
    );
}

#[test]
fn a_connection_over_max_clients_gets_unavailable() {
    let node = Daemon::start("primary", "max_clients = 2", "");
    let _a = node.hello("a", "1");
    let _b = node.hello("b", "2");
    let mut c = node.client();
    let frame = c.recv();
    assert_eq!(frame.code.as_deref(), Some("unavailable"));
    assert!(c.closed());
}

#[test]
fn a_stalled_reader_is_dropped_as_slow_consumer_without_delaying_others() {
    let node = Daemon::start(
        "primary",
        "send_queue_bytes = 262144\nrate_per_sec = 100000\nrate_burst = 100000",
        "",
    );
    let mut stalled = Client::connect_small_receive_buffer(node.addr);
    stalled.send(json!({"type":"hello","version":1,"nick":"stalled","session":"s0"}));
    assert_eq!(stalled.recv().kind, "welcome");
    stalled.join("r");
    let mut reader = node.hello("reader", "s1");
    reader.join("r");
    let mut sender = node.hello("sender", "s2");
    sender.join("r");
    // 10 MB: beyond what the kernel's socket buffers can hide from the node's queue bound.
    let total = 2500;
    let body = "y".repeat(4000);
    // The sender keeps a bounded window in flight, as real clients do; it is a member too,
    // so it reads its own acks and messages as it goes.
    let sending = std::thread::spawn(move || {
        let mut acked = 0;
        for i in 0..total {
            sender.send(json!({"type":"send","room":"r","id":format!("m-{i}"),"body":body}));
            while i + 1 - acked >= 16 {
                if sender.recv().kind == "ack" {
                    acked += 1;
                }
            }
        }
        while acked < total {
            if sender.recv().kind == "ack" {
                acked += 1;
            }
        }
    });
    // The stalled client reads only once the node has given up on it, and then promptly
    // (the node lingers a few seconds for a closing connection to drain, no longer).
    let log = node.log.clone();
    let draining = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + common::DEADLINE;
        while !log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("dropped as a slow consumer"))
        {
            assert!(std::time::Instant::now() < deadline, "never dropped");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut codes = Vec::new();
        while let Some(frame) = stalled.try_recv() {
            if frame.kind == "error" {
                codes.push(frame.code.unwrap());
            }
        }
        codes
    });
    let mut delivered = 0;
    while delivered < total {
        if reader.recv().kind == "msg" {
            delivered += 1;
        }
    }
    sending.join().unwrap();
    // The stalled one was told why, then closed.
    assert_eq!(draining.join().unwrap(), ["slow_consumer"]);
}

#[test]
fn sigterm_says_goodbye_and_exits_zero() {
    let mut node = Daemon::start("primary", "", "");
    let mut c = node.hello("alice", "s");
    c.join("r");
    c.send_acked("r", "m-1", "x");
    node.signal(15);
    let frame = c.recv_kind("goodbye");
    assert_eq!(frame.reason.as_deref(), Some("shutdown"));
    assert!(c.closed());
    assert_eq!(node.wait_exit(), Some(0));
}

#[test]
fn a_silent_connection_is_closed_at_the_hello_timeout() {
    let node = Daemon::start("primary", "hello_timeout_ms = 300", "");
    let mut c = Client::connect(node.addr);
    let frame = c.recv();
    assert_eq!(frame.code.as_deref(), Some("bad_request"));
    assert!(c.closed());
}

#[test]
fn sighup_reloads_limits_and_says_what_needs_a_restart() {
    let node = Daemon::start(
        "primary",
        "max_rooms_per_client = 1\nroom_rate_per_sec = 1\nroom_rate_burst = 2",
        "",
    );
    let mut c = node.hello("alice", "s");
    c.join("r1");
    c.send(json!({"type":"join","room":"r2"}));
    assert_eq!(c.recv().code.as_deref(), Some("bad_request"));
    // Two room requests were the burst; the third waits for the next token (1 per second).
    c.send(json!({"type":"history","room":"r1"}));
    assert_eq!(c.recv().code.as_deref(), Some("rate_limited"));
    let text = std::fs::read_to_string(&node.config_path).unwrap();
    let text = text
        .replace("max_rooms_per_client = 1", "max_rooms_per_client = 5")
        .replace("room_rate_per_sec = 1\n", "room_rate_per_sec = 1000\n")
        .replace("room_rate_burst = 2", "room_rate_burst = 5")
        .replace("[log]\n", "[log]\nfsync = \"always\"\n");
    std::fs::write(&node.config_path, text).unwrap();
    node.signal(1);
    node.wait_log("client.max_rooms_per_client 1 -> 5");
    node.wait_log("client.room_rate_per_sec 1 -> 1000");
    node.wait_log("log.fsync changed; that takes a restart");
    assert_eq!(c.join("r2").room.as_deref(), Some("r2"));
    // A broken file is refused and the running config kept.
    std::fs::write(&node.config_path, "[node]\nid = ").unwrap();
    node.signal(1);
    node.wait_log("reload refused, keeping the running config");
    c.send(json!({"type":"ping"}));
    assert_eq!(c.recv().kind, "pong");
}
