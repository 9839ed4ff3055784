//! The network thread against scripted fake nodes on 127.0.0.1: each test plays the node's
//! side of the exchange line by line and checks what the client sends and reports.
//!
//! Every wait has a deadline; nothing sleeps a fixed time.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::{json, Value};

use super::*;

/// Longest wait for any one step; generous for a loaded 2-core CI machine.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's end of one client connection.
struct Peer {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Peer {
    fn accept(listener: &TcpListener) -> Peer {
        listener.set_nonblocking(false).unwrap();
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
        Peer {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("a frame from the client");
        assert!(line.ends_with('\n'), "frame without newline: {line:?}");
        serde_json::from_str(&line).unwrap()
    }

    /// Reads frames until one of `kind` (pings may come in between).
    fn recv_kind(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv();
            if frame["type"] == kind {
                return frame;
            }
            assert_eq!(frame["type"], "ping", "expected {kind}, got {frame}");
        }
    }

    fn send(&mut self, frame: Value) {
        let mut line = frame.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).unwrap();
    }

    /// Accepts the client's hello and answers `welcome`.
    fn welcome(listener: &TcpListener, node: &str, epoch: u64) -> Peer {
        let mut peer = Peer::accept(listener);
        let hello = peer.recv_kind("hello");
        assert_eq!(hello["version"], 1);
        assert_eq!(hello["nick"], "alice");
        assert_eq!(hello["session"], "s-1");
        peer.send(json!({"type":"welcome","version":1,"node":node,"role":"primary","epoch":epoch,"head":10}));
        peer
    }
}

fn msg(seq: u64, epoch: u64, from: &str, id: &str, body: &str) -> Value {
    json!({"type":"msg","room":"general","seq":seq,"epoch":epoch,"ts":1_764_084_000_123u64,
           "from":from,"id":id,"body":body})
}

fn start(servers: Vec<String>) -> (Sender<Command>, Receiver<Event>, JoinHandle<()>) {
    let (command_tx, command_rx) = bounded(16);
    let (event_tx, event_rx) = bounded(64);
    let config = NetConfig {
        servers,
        nick: "alice".into(),
        session: "s-1".into(),
        token: None,
        ping_interval: Duration::from_millis(PING_INTERVAL_MS),
        seed: Some(7),
        tls: None,
    };
    let handle = spawn(config, command_rx, event_tx).unwrap();
    (command_tx, event_rx, handle)
}

/// The next event that is not about connection attempts.
fn next_event(events: &Receiver<Event>) -> Event {
    loop {
        let event = events.recv_timeout(STEP_TIMEOUT).expect("an event in time");
        match event {
            Event::Connecting { .. } | Event::AttemptFailed { .. } => continue,
            other => return other,
        }
    }
}

/// Asks the client to join "general" with no position (live messages only).
fn join_general(commands: &Sender<Command>) {
    commands
        .send(Command::Join {
            room: "general".into(),
            after: None,
        })
        .unwrap();
}

/// Asks the client to send `body` to "general" as `id`.
fn send_general(commands: &Sender<Command>, id: &str, body: &str) {
    commands
        .send(Command::Send {
            room: "general".into(),
            id: id.into(),
            body: body.into(),
        })
        .unwrap();
}

fn shown_seq(event: Event) -> (u64, bool) {
    match event {
        Event::Msg { frame, history, .. } => (frame.seq.unwrap(), history),
        other => panic!("expected a msg, got {other:?}"),
    }
}

fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    (listener, address)
}

fn quit(
    commands: &Sender<Command>,
    events: &Receiver<Event>,
    peer: &mut Peer,
    handle: JoinHandle<()>,
) {
    commands.send(Command::Quit).unwrap();
    assert_eq!(peer.recv_kind("quit")["type"], "quit");
    // The thread ends and drops its sender.
    loop {
        match events.recv_timeout(STEP_TIMEOUT) {
            Ok(_) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("network thread did not end"),
        }
    }
    handle.join().unwrap();
}

#[test]
fn dropped_connection_resumes_after_last_shown_and_resends_unacked_send() {
    let (first, first_address) = listener();
    let (second, second_address) = listener();
    let (commands, events, handle) = start(vec![first_address.clone()]);
    join_general(&commands);

    // Connection 1: join, one message shown, a send that is never acknowledged.
    let mut peer = Peer::welcome(&first, "a", 1);
    let join = peer.recv_kind("join");
    assert_eq!(join["room"], "general");
    assert!(join.get("after").is_none());
    peer.send(json!({"type":"joined","room":"general","members":["alice","bob"],"head":10}));
    peer.send(msg(11, 1, "bob", "b-1", "hi"));
    assert!(
        matches!(next_event(&events), Event::Connected { ref node, epoch: 1, .. } if node == "a")
    );
    assert!(matches!(next_event(&events), Event::Joined { ref members, .. } if members.len() == 2));
    assert_eq!(shown_seq(next_event(&events)), (11, false));
    send_general(&commands, "m-1", "hello");
    assert_eq!(peer.recv_kind("send")["id"], "m-1");
    drop(peer);
    assert!(matches!(next_event(&events), Event::Disconnected { .. }));

    // Connection 2: rejoin after (11, epoch 1), resend m-1 with its id; replays skipped.
    let mut peer = Peer::welcome(&first, "b", 2);
    let join = peer.recv_kind("join");
    assert_eq!(join["after"], 11);
    assert_eq!(join["after_epoch"], 1);
    let resend = peer.recv_kind("send");
    assert_eq!(resend["id"], "m-1");
    assert_eq!(resend["body"], "hello");
    peer.send(json!({"type":"joined","room":"general","members":["alice"],"head":11}));
    peer.send(msg(11, 1, "bob", "b-1", "hi"));
    peer.send(msg(12, 2, "alice", "m-1", "hello"));
    peer.send(json!({"type":"ack","id":"m-1","seq":12}));
    let mut copy = msg(13, 2, "bob", "b-1", "hi");
    copy["orig"] = json!({"epoch":1,"seq":11});
    peer.send(copy);
    peer.send(msg(14, 2, "bob", "b-2", "again"));
    assert!(matches!(
        next_event(&events),
        Event::Connected { epoch: 2, .. }
    ));
    assert!(matches!(next_event(&events), Event::Joined { .. }));
    assert_eq!(shown_seq(next_event(&events)), (12, false));
    assert_eq!(
        next_event(&events),
        Event::Acked {
            id: "m-1".into(),
            seq: 12
        }
    );
    assert_eq!(shown_seq(next_event(&events)), (14, false));

    // A goodbye naming the new primary sends the client there, resuming after 14.
    peer.send(json!({"type":"goodbye","reason":"failover","primary":second_address}));
    assert!(
        matches!(next_event(&events), Event::Disconnected { ref reason, .. } if reason.contains("failover"))
    );
    let mut peer = Peer::welcome(&second, "c", 3);
    let join = peer.recv_kind("join");
    assert_eq!(
        (join["after"].clone(), join["after_epoch"].clone()),
        (json!(14), json!(2))
    );
    assert!(
        matches!(next_event(&events), Event::Connected { ref server, .. } if *server == second_address)
    );
    quit(&commands, &events, &mut peer, handle);
}

#[test]
fn redirect_leads_to_the_named_primary() {
    let (backup, backup_address) = listener();
    let (primary, primary_address) = listener();
    let (commands, events, handle) = start(vec![backup_address.clone()]);
    let mut peer = Peer::accept(&backup);
    peer.recv_kind("hello");
    peer.send(json!({"type":"redirect","primary":primary_address,"epoch":2}));
    drop(peer);
    assert_eq!(
        next_event(&events),
        Event::Redirected {
            server: backup_address,
            primary: Some(primary_address.clone())
        }
    );
    let mut peer = Peer::welcome(&primary, "a", 2);
    assert!(
        matches!(next_event(&events), Event::Connected { ref server, .. } if *server == primary_address)
    );
    quit(&commands, &events, &mut peer, handle);
}

#[test]
fn slow_consumer_reconnects_and_rejoins_without_loss() {
    let (node, address) = listener();
    let (commands, events, handle) = start(vec![address]);
    commands
        .send(Command::Join {
            room: "general".into(),
            after: Some(Position {
                seq: 3,
                epoch: None,
            }),
        })
        .unwrap();
    let mut peer = Peer::welcome(&node, "a", 1);
    let join = peer.recv_kind("join");
    assert_eq!(join["after"], 3);
    peer.send(json!({"type":"joined","room":"general","members":["alice"],"head":20}));
    peer.send(msg(4, 1, "bob", "b-4", "four"));
    peer.send(json!({"type":"error","code":"slow_consumer","message":"queue overflowed"}));
    drop(peer);
    assert!(matches!(next_event(&events), Event::Connected { .. }));
    assert!(matches!(next_event(&events), Event::Joined { .. }));
    assert_eq!(shown_seq(next_event(&events)), (4, false));
    assert!(
        matches!(next_event(&events), Event::Disconnected { ref reason, .. } if reason.contains("slow_consumer"))
    );
    let mut peer = Peer::welcome(&node, "a", 1);
    let join = peer.recv_kind("join");
    assert_eq!(
        (join["after"].clone(), join["after_epoch"].clone()),
        (json!(4), json!(1))
    );
    quit(&commands, &events, &mut peer, handle);
}

#[test]
fn rate_limited_send_is_retried_with_the_same_id() {
    let (node, address) = listener();
    let (commands, events, handle) = start(vec![address]);
    join_general(&commands);
    send_general(&commands, "m-1", "x");
    let mut peer = Peer::welcome(&node, "a", 1);
    peer.recv_kind("join");
    assert_eq!(peer.recv_kind("send")["id"], "m-1");
    peer.send(json!({"type":"error","code":"rate_limited","message":"slow down","id":"m-1"}));
    let again = peer.recv_kind("send");
    assert_eq!(
        (again["id"].clone(), again["body"].clone()),
        (json!("m-1"), json!("x"))
    );
    peer.send(json!({"type":"ack","id":"m-1","seq":5}));
    assert!(matches!(next_event(&events), Event::Connected { .. }));
    assert_eq!(
        next_event(&events),
        Event::Acked {
            id: "m-1".into(),
            seq: 5
        }
    );
    quit(&commands, &events, &mut peer, handle);
}

#[test]
fn final_refusal_ends_the_thread() {
    let (node, address) = listener();
    let (_commands, events, handle) = start(vec![address]);
    let mut peer = Peer::accept(&node);
    peer.recv_kind("hello");
    peer.send(json!({"type":"error","code":"nick_in_use","message":"alice is taken"}));
    assert_eq!(
        next_event(&events),
        Event::Fatal {
            code: "nick_in_use".into(),
            message: "alice is taken".into()
        }
    );
    assert_eq!(
        events.recv_timeout(STEP_TIMEOUT),
        Err(RecvTimeoutError::Disconnected)
    );
    handle.join().unwrap();
}

#[test]
fn history_answer_is_told_from_live_messages() {
    let (node, address) = listener();
    let (commands, events, handle) = start(vec![address]);
    let mut peer = Peer::welcome(&node, "a", 1);
    assert!(matches!(next_event(&events), Event::Connected { .. }));
    commands
        .send(Command::History {
            room: "lobby".into(),
            limit: 2,
        })
        .unwrap();
    let request = peer.recv_kind("history");
    assert_eq!(
        (request["room"].clone(), request["limit"].clone()),
        (json!("lobby"), json!(2))
    );
    for seq in [7, 9] {
        let mut frame = msg(seq, 1, "bob", "b", "old");
        frame["room"] = json!("lobby");
        peer.send(frame);
    }
    peer.send(json!({"type":"history_end","room":"lobby"}));
    assert_eq!(shown_seq(next_event(&events)), (7, true));
    assert_eq!(shown_seq(next_event(&events)), (9, true));
    assert_eq!(
        next_event(&events),
        Event::HistoryEnd {
            room: "lobby".into()
        }
    );
    quit(&commands, &events, &mut peer, handle);
}

#[test]
fn a_node_that_keeps_refusing_sends_as_unavailable_is_left_for_the_other_server() {
    let (stuck, stuck_address) = listener();
    let (serving, serving_address) = listener();
    let (commands, events, handle) = start(vec![stuck_address.clone(), serving_address.clone()]);
    join_general(&commands);
    // The first node welcomes (it still believes it is the primary) but cannot commit.
    let mut peer = Peer::welcome(&stuck, "a", 1);
    peer.recv_kind("join");
    peer.send(json!({"type":"joined","room":"general","members":["alice"],"head":10}));
    send_general(&commands, "m-1", "hello");
    let started = Instant::now();
    let mut refusals = 0;
    let left = loop {
        let mut line = String::new();
        match peer.reader.read_line(&mut line) {
            Ok(0) => break started.elapsed(),
            Ok(_) => {}
            Err(e) => panic!("waiting for the client to leave: {e}"),
        }
        let frame: Value = serde_json::from_str(&line).unwrap();
        if frame["type"] == "send" {
            refusals += 1;
            peer.send(json!({"type":"error","code":"unavailable","message":"no lease","id":"m-1"}));
        }
    };
    assert!(refusals >= 2, "resent {refusals} times before leaving");
    assert!(
        left >= Duration::from_millis(UNAVAILABLE_MOVE_MS),
        "left after {left:?}"
    );
    // The other server, not the stuck one again, gets the resumed session and the send.
    let mut peer = Peer::welcome(&serving, "b", 2);
    peer.recv_kind("join");
    assert_eq!(peer.recv_kind("send")["id"], "m-1");
    peer.send(json!({"type":"joined","room":"general","members":["alice"],"head":10}));
    peer.send(json!({"type":"ack","id":"m-1","seq":11}));
    loop {
        match next_event(&events) {
            Event::Acked { id, seq } => {
                assert_eq!((id.as_str(), seq), ("m-1", 11));
                break;
            }
            Event::Disconnected { reason, .. } => {
                assert!(reason.contains("unavailable"), "{reason}")
            }
            _ => {}
        }
    }
    quit(&commands, &events, &mut peer, handle);
}

/// Accepts the client's hello and answers `welcome` naming `peer` and a liveness wait.
fn welcome_with_peer(listener: &TcpListener, node: &str, epoch: u64, peer: &str) -> Peer {
    let mut conn = Peer::accept(listener);
    assert_eq!(conn.recv_kind("hello")["session"], "s-1");
    conn.send(
        json!({"type":"welcome","version":1,"node":node,"role":"primary","epoch":epoch,
                     "head":10,"peer":peer,"probe_ms":200}),
    );
    conn
}

/// A session on node "a" (whose welcome names `peer`) in "general", with send m-1 written
/// and not answered.
fn session_with_an_unanswered_send(
    commands: &Sender<Command>,
    events: &Receiver<Event>,
    a: &TcpListener,
    peer: &str,
) -> Peer {
    join_general(commands);
    let mut conn = welcome_with_peer(a, "a", 1, peer);
    conn.recv_kind("join");
    conn.send(json!({"type":"joined","room":"general","members":["alice"],"head":10}));
    assert!(matches!(next_event(events), Event::Connected { .. }));
    assert!(matches!(next_event(events), Event::Joined { .. }));
    send_general(commands, "m-1", "hello");
    assert_eq!(conn.recv_kind("send")["id"], "m-1");
    conn
}

#[test]
fn a_silent_node_is_left_for_the_peer_that_welcomes_the_probe() {
    let (first, first_address) = listener();
    let (second, second_address) = listener();
    // The client knows only a; a's welcome names b.
    let (commands, events, handle) = start(vec![first_address.clone()]);
    // a takes the send and says nothing more (stopped): the client asks b, with its session,
    // while a's connection stays open.
    let mut a = session_with_an_unanswered_send(&commands, &events, &first, &second_address);
    let mut b = welcome_with_peer(&second, "b", 2, &first_address);
    // Welcomed: the session moves to b, rejoins and resends m-1 with its id.
    assert_eq!(b.recv_kind("join")["room"], "general");
    assert_eq!(b.recv_kind("send")["id"], "m-1");
    b.send(json!({"type":"joined","room":"general","members":["alice"],"head":10}));
    b.send(json!({"type":"ack","id":"m-1","seq":11}));
    match next_event(&events) {
        Event::Disconnected { server, reason } => {
            assert_eq!(server, first_address);
            assert!(reason.contains("took over"), "{reason}");
        }
        other => panic!("expected the move off a, got {other:?}"),
    }
    assert!(
        matches!(next_event(&events), Event::Connected { ref node, epoch: 2, .. } if node == "b")
    );
    assert!(matches!(next_event(&events), Event::Joined { .. }));
    assert!(matches!(next_event(&events), Event::Acked { ref id, seq: 11 } if id == "m-1"));
    // a's connection was closed by the client.
    let mut rest = String::new();
    assert_eq!(
        a.reader.read_line(&mut rest).unwrap_or(0),
        0,
        "a got {rest}"
    );
    quit(&commands, &events, &mut b, handle);
}

#[test]
fn a_probe_redirected_back_keeps_the_session_on_a_slow_node() {
    let (first, first_address) = listener();
    let (second, second_address) = listener();
    let (commands, events, handle) = start(vec![first_address.clone(), second_address.clone()]);
    let mut a = session_with_an_unanswered_send(&commands, &events, &first, &second_address);
    // b hears its primary a: it sends the probe back there.
    let mut b = Peer::accept(&second);
    assert_eq!(b.recv_kind("hello")["session"], "s-1");
    b.send(json!({"type":"redirect","primary":first_address,"epoch":1}));
    drop(b);
    // a was only slow: the ack arrives on the same session, with no move.
    a.send(json!({"type":"ack","id":"m-1","seq":11}));
    assert!(matches!(next_event(&events), Event::Acked { ref id, seq: 11 } if id == "m-1"));
    quit(&commands, &events, &mut a, handle);
}

#[test]
fn a_hello_that_a_stopped_node_leaves_unanswered_is_asked_of_the_other_server_too() {
    // a's listener never accepts: the kernel completes the connection and the hello sits
    // in its queue, as with a stopped process.
    let (_stopped, stopped_address) = listener();
    let (second, second_address) = listener();
    let (commands, events, handle) = start(vec![stopped_address, second_address.clone()]);
    join_general(&commands);
    let started = std::time::Instant::now();
    let mut b = welcome_with_peer(&second, "b", 2, "127.0.0.1:9");
    match next_event(&events) {
        Event::Connected { server, node, .. } => {
            assert_eq!(
                (server.as_str(), node.as_str()),
                (second_address.as_str(), "b")
            );
        }
        other => panic!("expected the session on b, got {other:?}"),
    }
    // Well before the handshake timeout the client would otherwise have waited out.
    assert!(
        started.elapsed() < Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(b.recv_kind("join")["room"], "general");
    quit(&commands, &events, &mut b, handle);
}
