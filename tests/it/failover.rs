//! Fail-over with real processes on loopback: kill -9, SIGSTOP, restart, drills, hand-over,
//! forged heartbeats. Every wait is on a condition with a deadline.

use crate::common;
use crate::common::state;
use crate::resilient;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{disk, wait_until};
use common::{Client, Daemon, PairFiles, DEADLINE};
use resilient::{Connection, Next};
use serde_json::json;

const ROOM: &str = "general";

/// A test client that survives fail-overs the way the protocol's recipe says: on a dropped
/// connection, `goodbye` or `redirect` it reconnects (the announced primary first), rejoins,
/// and resends its unacknowledged send with the same id.
struct Sender {
    nick: String,
    servers: Vec<SocketAddr>,
    /// id -> seq of every acknowledged send.
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
    /// (time of the last ack before a break, time of the first ack after) per break.
    gaps: Arc<Mutex<Vec<Duration>>>,
}

impl Sender {
    fn new(nick: &str, servers: Vec<SocketAddr>) -> Sender {
        Sender {
            nick: nick.into(),
            servers,
            acked: Arc::default(),
            gaps: Arc::default(),
        }
    }

    /// Sends `m-0`, `m-1`, ... one at a time until `stop`, riding over fail-overs.
    fn spawn(&self, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        let nick = self.nick.clone();
        let servers = self.servers.clone();
        let acked = self.acked.clone();
        let gaps = self.gaps.clone();
        std::thread::spawn(move || {
            let mut next = 0u64;
            let mut target: Option<SocketAddr> = None;
            let mut turn = 0usize;
            let mut last_ack = Instant::now();
            let mut broken = false;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let addr = target.take().unwrap_or_else(|| {
                    turn += 1;
                    servers[turn % servers.len()]
                });
                let mut c = match Connection::open(addr, &nick, ROOM) {
                    Ok(c) => c,
                    Err(redirect) => {
                        target = redirect;
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                // Send (or resend) the current id until acked; then the next.
                'conn: while !stop.load(Ordering::Relaxed) {
                    let id = format!("m-{next}");
                    if c.send(
                        json!({"type":"send","room":ROOM,"id":id,"body":format!("{nick} {next}")}),
                    )
                    .is_err()
                    {
                        break;
                    }
                    loop {
                        let frame = match c.next(&nick, ROOM) {
                            Next::Frame(frame) => *frame,
                            // The liveness rule moved it: resend the same id there.
                            Next::Moved => {
                                broken = true;
                                continue 'conn;
                            }
                            Next::Lost => break 'conn,
                        };
                        match frame.kind.as_str() {
                            "ack" if frame.id.as_deref() == Some(id.as_str()) => {
                                acked.lock().unwrap().insert(id.clone(), frame.seq.unwrap());
                                let now = Instant::now();
                                if broken {
                                    gaps.lock().unwrap().push(now - last_ack);
                                    broken = false;
                                }
                                last_ack = now;
                                next += 1;
                                continue 'conn;
                            }
                            "goodbye" => {
                                target = frame.primary.and_then(|p| p.parse().ok());
                                break 'conn;
                            }
                            "error" => match frame.code.as_deref() {
                                // Retry the same id shortly.
                                Some("unavailable") | Some("rate_limited")
                                | Some("not_primary") => {
                                    std::thread::sleep(Duration::from_millis(10));
                                    continue 'conn;
                                }
                                _ => panic!("{nick}: {frame:?}"),
                            },
                            _ => {}
                        }
                    }
                }
                broken = true;
            }
        })
    }

    fn acked(&self) -> BTreeMap<String, u64> {
        self.acked.lock().unwrap().clone()
    }
}

/// `pbchat-client --listen` processes: the real client's resume logic, recorded line by line.
struct Listener {
    child: Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Listener {
    fn start(nick: &str, servers: &[SocketAddr]) -> Listener {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbchat-client"));
        // Nothing remembered in the runner's ~/.local/state between tests.
        cmd.arg("--no-state");
        for s in servers {
            cmd.arg("--server").arg(s.to_string());
        }
        let mut child = cmd
            .args(["--nick", nick, "--room", ROOM, "--listen", "--after", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str(&line) {
                        lines.lock().unwrap().push(v);
                    }
                }
            });
        }
        Listener { child, lines }
    }

    /// Waits until it has shown every (from, id) in `expected`, then checks the order.
    fn check(&self, expected: &BTreeSet<(String, String)>) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let seen: BTreeSet<(String, String)> = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .map(|v| {
                    (
                        v["from"].as_str().unwrap().to_string(),
                        v["id"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            if expected.is_subset(&seen) {
                break;
            }
            if Instant::now() >= deadline {
                let lines = self.lines.lock().unwrap();
                let shown: Vec<String> = lines
                    .iter()
                    .map(|v| format!("{}/{}:{}:{}", v["epoch"], v["seq"], v["from"], v["id"]))
                    .collect();
                panic!(
                    "listener missing {:?}; it showed {shown:?}",
                    expected.difference(&seen).take(5).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let lines = self.lines.lock().unwrap();
        let mut keys = BTreeSet::new();
        let mut last_seq = 0;
        for v in lines.iter() {
            let seq = v["seq"].as_u64().unwrap();
            assert!(
                seq > last_seq,
                "seq {seq} after {last_seq}: out of order or doubled"
            );
            last_seq = seq;
            let key = (
                v["from"].as_str().unwrap().to_string(),
                v["id"].as_str().unwrap().to_string(),
            );
            assert!(keys.insert(key.clone()), "{key:?} shown twice");
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn expected_keys(senders: &[Sender]) -> BTreeSet<(String, String)> {
    senders
        .iter()
        .flat_map(|s| s.acked().into_keys().map(|id| (s.nick.clone(), id)))
        .collect()
}

fn start_pair(pair: &PairFiles) -> (Daemon, Daemon) {
    let a = pair.start_a();
    let b = pair.start_b();
    b.wait_state("following its peer", state::following_its_peer);
    (a, b)
}

/// Three resilient senders and a `pbchat-client --listen` listener on a pair, already
/// sending when `start` returns.
struct Traffic {
    senders: Vec<Sender>,
    listener: Listener,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(servers: &[SocketAddr]) -> Traffic {
        let listener = Listener::start("ear", servers);
        let senders: Vec<Sender> = (0..3)
            .map(|i| Sender::new(&format!("mouth{i}"), servers.to_vec()))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = senders.iter().map(|s| s.spawn(stop.clone())).collect();
        let traffic = Traffic {
            senders,
            listener,
            stop,
            threads,
        };
        traffic.wait_more(20, "traffic");
        traffic
    }

    /// Waits until every sender has `more` acks beyond what it has now.
    fn wait_more(&self, more: usize, what: &str) {
        let before: Vec<usize> = self.senders.iter().map(|s| s.acked().len()).collect();
        wait_until(what, || {
            self.senders
                .iter()
                .zip(&before)
                .all(|(s, n)| s.acked().len() >= n + more)
        });
    }

    /// Stops the senders and checks that no two sends were acked with one seq and that the
    /// listener showed every acked message once, in order. Asserts that each sender saw
    /// one break, shorter than `bound`.
    fn finish_with_one_gap_each_under(mut self, bound: Duration, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let all: Vec<u64> = self
            .senders
            .iter()
            .flat_map(|s| s.acked().into_values())
            .collect();
        let distinct: BTreeSet<u64> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len(), "two sends acked with one seq");
        self.listener.check(&expected_keys(&self.senders));
        for s in &self.senders {
            let gaps = s.gaps.lock().unwrap().clone();
            eprintln!("{}: {what}; client-visible gaps {gaps:?}", s.nick);
            assert_eq!(gaps.len(), 1, "{}: {gaps:?}", s.nick);
            assert!(gaps[0] < bound, "{}: {gaps:?}, bound {bound:?}", s.nick);
        }
    }
}

#[test]
fn kill9_of_the_primary_under_load_loses_and_doubles_nothing() {
    let pair = PairFiles::new("");
    let (mut a, b) = start_pair(&pair);
    let servers = vec![pair.client_a, pair.client_b];
    let listeners: Vec<Listener> = (0..2)
        .map(|i| Listener::start(&format!("ear{i}"), &servers))
        .collect();
    let senders: Vec<Sender> = (0..3)
        .map(|i| Sender::new(&format!("mouth{i}"), servers.clone()))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = senders.iter().map(|s| s.spawn(stop.clone())).collect();
    wait_until("traffic", || senders.iter().all(|s| s.acked().len() >= 20));

    let killed_at = Instant::now();
    a.kill9();
    b.wait_state("primary", state::primary);
    let promoted_after = killed_at.elapsed();
    // Detection is 1.0 s by default; the contract is detection + 1 s at most.
    assert!(
        promoted_after < Duration::from_millis(2_000),
        "promotion took {promoted_after:?}"
    );
    let before: Vec<usize> = senders.iter().map(|s| s.acked().len()).collect();
    wait_until("sends acked by the new primary", || {
        senders
            .iter()
            .zip(&before)
            .all(|(s, n)| s.acked().len() >= n + 10)
    });
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    // Every acked seq is distinct; epochs moved on.
    let all: Vec<u64> = senders
        .iter()
        .flat_map(|s| s.acked().into_values())
        .collect();
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "two sends acked with one seq");
    let expected = expected_keys(&senders);
    for l in &listeners {
        l.check(&expected);
    }
    for s in &senders {
        let gaps = s.gaps.lock().unwrap();
        eprintln!("{}: client-visible gaps {:?}", s.nick, *gaps);
    }
    drop(b);
}

/// The liveness rule (docs/protocol.md): clients sending into a stopped primary's open
/// connections hear nothing for `probe_ms`, ask b, are held until b takes over and go on
/// there within the detection time, where the silence limit alone cost them seconds. After
/// SIGCONT a steps down; nothing is lost or doubled.
#[test]
fn sigstop_of_the_primary_under_load_clients_chat_again_within_the_detection_time() {
    let pair = PairFiles::new("");
    let (a, b) = start_pair(&pair);
    let traffic = Traffic::start(&[pair.client_a, pair.client_b]);

    let stopped_at = Instant::now();
    common::signal_pid(a.pid(), "STOP");
    // A client that starts now connects to a first: a's kernel accepts, a says nothing.
    let mut newcomer = Command::new(env!("CARGO_BIN_EXE_pbchat-client"))
        .args(["--server", &pair.client_a.to_string()])
        .args(["--server", &pair.client_b.to_string()])
        .args([
            "--nick",
            "newcomer",
            "--room",
            ROOM,
            "--send",
            "hello during the stop",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    b.wait_state("primary", state::primary);
    let promoted_after = stopped_at.elapsed();
    let status = newcomer.wait().unwrap();
    let newcomer_after = stopped_at.elapsed();
    assert!(status.success(), "pbchat-client --send: {status}");
    // It asked b too after 400 ms, and b welcomed it on taking over; waiting out its 3 s
    // handshake on a first would fail this.
    assert!(
        newcomer_after < promoted_after + Duration::from_millis(1_000),
        "pbchat-client --send took {newcomer_after:?}; b promoted {promoted_after:?} after the stop"
    );
    traffic.wait_more(10, "sends acked by the new primary");
    common::signal_pid(a.pid(), "CONT");
    a.wait_state("following b", state::following("b"));
    // Detection is 1.0 s (pbchat-bench failover --mode stop measures the gap's spread).
    // Each client goes on within a moment of the promotion, whenever that came on a loaded
    // machine; waiting out its 2 s read timeout instead would fail this.
    traffic.finish_with_one_gap_each_under(
        promoted_after + Duration::from_millis(600),
        &format!("promoted {promoted_after:?} after the stop"),
    );
}

#[test]
fn sigstop_past_detection_then_sigcont_steps_down_without_committing() {
    let pair = PairFiles::new("");
    let (a, b) = start_pair(&pair);
    let mut early = a.hello("early", "s-early");
    early.join(ROOM);
    early.send_acked(ROOM, "m-0", "before the stop");
    common::signal_pid(a.pid(), "STOP");
    // Sent while a is stopped: it sits in a's socket buffer.
    early.send(json!({"type":"send","room":ROOM,"id":"m-1","body":"during the stop"}));
    b.wait_state("primary", state::primary);
    common::signal_pid(a.pid(), "CONT");
    a.wait_log("stepping down");
    // a never acknowledged m-1; it told the client where to go.
    while let Some(frame) = early.try_recv() {
        assert!(
            !(frame.kind == "ack" && frame.id.as_deref() == Some("m-1")),
            "the stalled primary committed {frame:?}"
        );
        if frame.kind == "goodbye" {
            assert_eq!(frame.reason.as_deref(), Some("demoted"));
            assert_eq!(
                frame.primary.as_deref(),
                Some(pair.client_b.to_string().as_str())
            );
        }
    }
    a.wait_state("following b", state::following("b"));
    // a was cut back to where it parted from b, and b holds m-0 exactly once.
    let mut c = common::hello_at(pair.client_b, "reader", "s-reader");
    c.send(json!({"type":"history","room":ROOM}));
    let mut ids = Vec::new();
    loop {
        let f = c.recv();
        if f.kind == "history_end" {
            break;
        }
        ids.push(f.id.unwrap());
    }
    assert_eq!(ids.iter().filter(|i| *i == "m-0").count(), 1);
}

#[test]
fn the_old_primary_rejoins_as_backup_catches_up_and_a_drill_moves_the_role_back() {
    let pair = PairFiles::new("");
    let (mut a, b) = start_pair(&pair);
    let mut c = a.hello("alice", "s-alice");
    c.join(ROOM);
    for i in 0..50 {
        c.send_acked(ROOM, &format!("m-{i}"), "x");
    }
    a.kill9();
    b.wait_state("primary", state::primary);
    let mut d = common::hello_at(pair.client_b, "bob", "s-bob");
    d.join(ROOM);
    for i in 0..50 {
        d.send_acked(ROOM, &format!("n-{i}"), "y");
    }
    // The old primary comes back: as backup, by itself.
    a.restart();
    a.wait_state("following b", state::following("b"));
    b.wait_state("in sync", state::in_sync(0));
    // Drill on b: a becomes primary without a detection wait.
    common::signal_pid(b.pid(), "USR1");
    a.wait_log("planned hand-over from the primary");
    b.wait_log("hand-over: the peer took over");
    let mut e = common::hello_at(pair.client_a, "carol", "s-carol");
    e.send(json!({"type":"history","room":ROOM,"limit":1000}));
    let mut count = 0;
    loop {
        let f = e.recv();
        if f.kind == "history_end" {
            break;
        }
        count += 1;
    }
    assert_eq!(count, 100, "a caught up with everything b committed");
    e.join(ROOM);
    assert_eq!(e.send_acked(ROOM, "after", "z"), 101);
}

#[test]
fn kill9_of_the_backup_degrades_the_primary_which_resyncs_the_returning_backup() {
    let pair = PairFiles::new("");
    let (a, mut b) = start_pair(&pair);
    let servers = vec![pair.client_a, pair.client_b];
    let sender = Sender::new("mouth", servers);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = sender.spawn(stop.clone());
    wait_until("traffic", || sender.acked().len() >= 20);
    b.kill9();
    a.wait_state("degraded", state::degraded);
    let n = sender.acked().len();
    wait_until("acks while degraded", || sender.acked().len() >= n + 50);
    b.restart();
    a.wait_state("in sync", state::in_sync(0));
    let n = sender.acked().len();
    wait_until("acks in sync again", || sender.acked().len() >= n + 20);
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();
    assert!(!a.log_contains("stepping down"));
}

#[test]
fn forged_replayed_and_truncated_heartbeats_change_nothing() {
    use pbchat::wire::heartbeat::{encode, Heartbeat};
    use pbchat::wire::keyring::parse_keyring;
    let pair = PairFiles::new("");
    let (a, b) = start_pair(&pair);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let real = parse_keyring("secret", &std::fs::read_to_string(&pair.secret).unwrap()).unwrap();
    let forged_key =
        parse_keyring("forged", &pbchat::secret_file::generate_secret_line(1)).unwrap();
    // "b is primary in epoch 99": under a wrong key, replayed (an old boot) and cut short.
    let claim = Heartbeat {
        node_id: "b".into(),
        primary: true,
        epoch: 99,
        head: 0,
        boot: 1,
        counter: 1,
    };
    let forged = encode(&claim, &forged_key);
    let replayed = encode(&claim, &real);
    for datagram in [&forged[..], &replayed[..], &replayed[..40], b"PBHB garbage"] {
        for _ in 0..20 {
            socket.send_to(datagram, pair.heartbeat_a).unwrap();
        }
    }
    // a keeps serving as primary in its epoch; nothing stepped down or promoted.
    let mut c = a.hello("alice", "s");
    c.join(ROOM);
    c.send_acked(ROOM, "m-1", "still primary");
    a.wait_log("rejected");
    assert!(!a.log_contains("stepping down"));
    assert!(!b.log_contains("promoted"));
}

#[test]
fn sigterm_hands_over_with_a_short_pause_and_loses_nothing() {
    let pair = PairFiles::new("");
    let (mut a, b) = start_pair(&pair);
    let servers = vec![pair.client_a, pair.client_b];
    let listener = Listener::start("ear", &servers);
    let sender = Sender::new("mouth", servers);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = sender.spawn(stop.clone());
    wait_until("traffic", || sender.acked().len() >= 30);
    common::signal_pid(a.pid(), "TERM");
    assert_eq!(a.wait_exit(), Some(0));
    b.wait_log("planned hand-over from the primary");
    let n = sender.acked().len();
    wait_until("acks after the hand-over", || {
        sender.acked().len() >= n + 30
    });
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();
    listener.check(&expected_keys(std::slice::from_ref(&sender)));
    let gaps = sender.gaps.lock().unwrap().clone();
    eprintln!("hand-over gaps seen by the sender: {gaps:?}");
    assert_eq!(gaps.len(), 1, "one break: {gaps:?}");
    assert!(
        gaps[0] < Duration::from_millis(300),
        "hand-over pause {:?}",
        gaps[0]
    );
}

/// `b_sends`: whether the new primary commits anything of its own before the old one
/// returns (an idle pair must re-commit the kept-aside messages too).
fn losing_history_is_recommitted(b_sends: bool) {
    let pair = PairFiles::new("");
    let (mut a, mut b) = start_pair(&pair);
    let mut alice = a.hello("alice", "s-alice");
    alice.join(ROOM);
    alice.send_acked(ROOM, "x-1", "both nodes have this");
    // a alone (degraded) commits what b never sees.
    b.kill9();
    a.wait_log("replication link to the peer is down");
    let mut only_a = BTreeMap::new();
    for i in 1..=3 {
        let id = format!("y-{i}");
        only_a.insert(id.clone(), alice.send_acked(ROOM, &id, "only a has this"));
    }
    a.kill9();
    // b comes back alone, takes over in a new epoch and commits its own.
    b.restart();
    b.wait_state("primary", state::primary);
    if b_sends {
        let mut bob = common::hello_at(pair.client_b, "bob", "s-bob");
        bob.join(ROOM);
        bob.send_acked(ROOM, "z-1", "only b has this");
    }
    // The old primary returns: it parts from b after x-1, keeps y-* aside, catches up, and
    // re-commits them through b.
    a.restart();
    a.wait_state("following b", state::following("b"));
    a.wait_log("every message kept aside is re-committed");
    let mut reader = common::hello_at(pair.client_b, "reader", "s-reader");
    reader.send(json!({"type":"history","room":ROOM}));
    let mut history = Vec::new();
    loop {
        let f = reader.recv();
        if f.kind == "history_end" {
            break;
        }
        history.push(f);
    }
    let ids: Vec<&str> = history.iter().map(|f| f.id.as_deref().unwrap()).collect();
    let expected: &[&str] = if b_sends {
        &["x-1", "z-1", "y-1", "y-2", "y-3"]
    } else {
        &["x-1", "y-1", "y-2", "y-3"]
    };
    assert_eq!(ids, expected);
    let first_recommitted = expected.len() - 3;
    for f in &history[first_recommitted..] {
        let orig = f
            .orig
            .expect("a re-committed message names where it was first seen");
        assert_eq!(orig.epoch, 1);
        assert_eq!(
            Some(orig.seq),
            only_a.get(f.id.as_deref().unwrap()).copied()
        );
        assert_eq!(f.epoch, Some(2));
    }
    // A resend of a re-committed message by its sender is not stored again.
    let mut alice = common::hello_at(pair.client_b, "alice", "s-alice");
    alice.join(ROOM);
    let seq = alice.send_acked(ROOM, "y-2", "only a has this");
    assert_eq!(seq, history[first_recommitted + 1].seq.unwrap());
}

#[test]
fn messages_only_the_losing_history_had_are_recommitted_once_with_orig() {
    losing_history_is_recommitted(true);
}

#[test]
fn messages_kept_aside_are_recommitted_on_an_idle_pair_too() {
    losing_history_is_recommitted(false);
}

#[test]
fn a_backup_that_cannot_reach_check_address_does_not_promote() {
    // A port nothing listens on: the probe is refused, as for a node cut off from everyone.
    let unreachable = common::free_port(false);
    let pair = PairFiles::with_failover(
        "",
        "",
        "",
        &format!("check_address = \"127.0.0.1:{unreachable}\"\ncheck_timeout_ms = 100"),
    );
    // The gateway answers while the pair starts (the first promotion needs it too) ...
    let gateway = std::net::TcpListener::bind(("127.0.0.1", unreachable)).unwrap();
    let (mut a, b) = start_pair(&pair);
    // ... then b is cut off from it, and loses the primary.
    drop(gateway);
    a.kill9();
    b.wait_log("check_address did not answer: not promoting");
    // Well past detection (1 s), it is still a backup, and said so only once.
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        assert!(!b.log_contains("promoted to primary"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(b.log_count("check_address did not answer"), 1);
    // Once the check address answers, it promotes.
    let _gateway = std::net::TcpListener::bind(("127.0.0.1", unreachable)).unwrap();
    b.wait_state("primary", state::primary);
}

#[test]
fn a_client_that_reaches_the_backup_during_detection_is_welcomed_when_it_takes_over() {
    let pair = PairFiles::new("");
    let (mut a, b) = start_pair(&pair);
    let mut early = a.hello("early", "s-early");
    early.join(ROOM);
    let seq = early.send_acked(ROOM, "m-0", "before the kill");
    a.kill9();
    // Until b notices the silence it redirects to a; from then on it holds the hello (and
    // the join sent right behind it) and answers once it has taken over.
    let mut attempts = 0;
    let (mut client, sent_before_promotion) = loop {
        attempts += 1;
        assert!(attempts < 500, "b never held a hello");
        let sent_before_promotion = !b.log_contains("promoted to primary");
        let mut client = Client::connect(pair.client_b);
        client.send(json!({"type":"hello","version":1,"nick":"late","session":"s-late"}));
        client.send(json!({"type":"join","room":ROOM,"after":0}));
        let first = client.recv();
        match first.kind.as_str() {
            "redirect" => std::thread::sleep(Duration::from_millis(20)),
            "welcome" => {
                assert_eq!(first.role.as_deref(), Some("primary"));
                break (client, sent_before_promotion);
            }
            other => panic!("unexpected answer {other}: {first:?}"),
        }
    };
    assert!(
        sent_before_promotion,
        "every hello sent before the promotion was redirected ({attempts} attempts)"
    );
    let joined = client.recv_kind("joined");
    assert_eq!(joined.head, Some(seq));
    let replayed = client.recv_kind("msg");
    assert_eq!(replayed.id.as_deref(), Some("m-0"));
    let acked = client.send_acked(ROOM, "n-1", "after the take-over");
    assert!(acked > seq);
}

/// The primary's disk stops answering under load (its file system frozen: every write and
/// fsync blocks). Its heartbeats go on, so nothing else would move: after the detection
/// time without a completed write it says so and hands the role to the backup, its clients
/// are told to go there, and each chats again within a moment of that. After the thaw the
/// old primary follows; nothing acknowledged is lost or doubled.
#[test]
fn a_primary_whose_disk_stops_answering_gives_up_the_role_within_the_detection_time() {
    if !disk::root_or_skip("the stuck-disk test") {
        return;
    }
    let pair = PairFiles::new("");
    let disk = disk::LoopMount::new(&pair.dir.join("data-a"));
    let (a, b) = start_pair(&pair);
    let traffic = Traffic::start(&[pair.client_a, pair.client_b]);

    let frozen_at = Instant::now();
    let frozen = disk.freeze();
    a.wait_log("handing the primary role to the backup");
    let gave_up_after = frozen_at.elapsed();
    b.wait_state("primary", state::primary);
    traffic.wait_more(10, "sends acked by the new primary");
    drop(frozen);
    a.wait_state("following b", state::following("b"));
    // Detection is 1.0 s; a hand-over takes milliseconds. The bound leaves room for a
    // loaded machine and is far below "as long as the disk hangs".
    assert!(
        gave_up_after < Duration::from_millis(2_500),
        "gave up after {gave_up_after:?}"
    );
    traffic.finish_with_one_gap_each_under(
        gave_up_after + Duration::from_millis(600),
        &format!("gave up the role {gave_up_after:?} after the freeze"),
    );
    drop((a, b));
}
