//! Hostile input against the real `pbchatd`: random bytes, invalid UTF-8, pathological JSON,
//! megabyte lines, frames split byte by byte, half-open and never-reading connections, connect
//! storms from one address, and forged, replayed and garbage heartbeat datagrams at a pair.
//!
//! Throughout each attack a well-behaved pair of clients (a [`Witness`]) keeps chatting: every
//! message it sends must reach its other member exactly once and in order, be in the room's
//! history afterwards, and its ping round trips must stay quick. Each hostile connection must
//! get the protocol's answer (`bad_request`, `too_large`, `slow_consumer`, ...) or be closed,
//! and the node must stay up. Seeds are printed so a failure can be replayed.

use crate::common;
use crate::common::state;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::wait_until;
use common::{hello_at, Client, Daemon, PairFiles, DEADLINE};
use rand::{Rng, RngCore, SeedableRng};
use serde_json::json;

/// A witness's worst ping round trip during an attack. Generous: the attackers and the node
/// share two loaded cores with other test processes; a stalled node takes seconds.
const RTT_LIMIT: Duration = Duration::from_millis(1000);

/// Error codes a node may answer hostile input with (never `internal`).
const HOSTILE_ANSWERS: [&str; 6] = [
    "bad_request",
    "unknown_type",
    "unsupported_version",
    "too_large",
    "not_joined",
    "unavailable",
];

fn seed() -> u64 {
    let seed = std::env::var("PBCHAT_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("hostile seed {seed} (PBCHAT_HOSTILE_SEED={seed} replays it)");
    seed
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn assert_alive(node: &mut Daemon) {
    let child = node.child.as_mut().expect("node running");
    assert!(
        child.try_wait().unwrap().is_none(),
        "pbchatd exited under attack"
    );
}

/// What a witness saw.
#[derive(Debug)]
struct WitnessReport {
    messages: usize,
    worst_rtt: Duration,
    median_rtt: Duration,
}

/// Two well-behaved clients in a room of their own: one sends, the other must receive each
/// message once, in order, and answer pings quickly, for as long as the attack lasts.
struct Witness {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<WitnessReport>>,
}

impl Witness {
    fn start(addr: SocketAddr) -> Witness {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let mut sender = hello_at(addr, "w-sender", "w-s1");
        let mut receiver = hello_at(addr, "w-receiver", "w-s2");
        sender.join("calm");
        receiver.join("calm");
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::Builder::new()
                .name("witness".into())
                .spawn(move || Witness::run(sender, receiver, &stop, &sent))
                .unwrap()
        };
        Witness {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    fn run(
        mut sender: Client,
        mut receiver: Client,
        stop: &AtomicBool,
        sent: &AtomicU64,
    ) -> WitnessReport {
        let mut rtts = Vec::new();
        let mut last_seq = 0;
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) || i < 3 {
            i += 1;
            let id = format!("w-{i}");
            let seq = sender.send_acked("calm", &id, &format!("steady {i}"));
            sent.fetch_add(1, Ordering::Relaxed);
            let msg = loop {
                let msg = receiver.recv_kind("msg");
                if msg.from.as_deref() == Some("w-sender") {
                    break msg;
                }
            };
            assert_eq!(
                msg.id.as_deref(),
                Some(id.as_str()),
                "lost or reordered: {msg:?}"
            );
            assert_eq!(msg.seq, Some(seq));
            assert!(seq > last_seq, "seq went back: {seq} after {last_seq}");
            last_seq = seq;
            let started = Instant::now();
            receiver.send(json!({"type":"ping","token":i}));
            assert_eq!(receiver.recv_kind("pong").token, Some(json!(i)));
            rtts.push(started.elapsed());
            // A chatty user's pace, not a flood: the witness measures, it does not load.
            std::thread::sleep(Duration::from_millis(20));
        }
        // Everything it sent is stored, once.
        receiver.send(json!({"type":"history","room":"calm","limit":1000}));
        let mut stored = Vec::new();
        loop {
            let frame = receiver.recv();
            match frame.kind.as_str() {
                "msg" => stored.push(frame.id.unwrap()),
                "history_end" => break,
                _ => {}
            }
        }
        let expected: Vec<String> = (1..=i).map(|n| format!("w-{n}")).collect();
        let tail = &stored[stored.len().saturating_sub(expected.len())..];
        if i <= 1000 {
            assert_eq!(tail, &expected[..], "history of the witness's room");
        }
        rtts.sort();
        WitnessReport {
            messages: i,
            worst_rtt: *rtts.last().unwrap(),
            median_rtt: rtts[rtts.len() / 2],
        }
    }

    /// Waits until the witness has chatted through at least `count` messages.
    fn wait_sent(&self, count: u64) {
        wait_until("the witness to chat", || {
            self.sent.load(Ordering::Relaxed) >= count
        });
    }

    /// Stops, checks and reports.
    fn finish(mut self, attack: &str) -> WitnessReport {
        self.stop.store(true, Ordering::Relaxed);
        let report = match self.thread.take().unwrap().join() {
            Ok(report) => report,
            Err(_) => panic!("{attack}: the well-behaved clients failed (see the panic above)"),
        };
        eprintln!(
            "{attack}: witness chatted {} messages, nothing lost; ping round trip median {:?}, \
             worst {:?}",
            report.messages, report.median_rtt, report.worst_rtt
        );
        assert!(
            report.worst_rtt < RTT_LIMIT,
            "{attack}: worst ping round trip {:?} (median {:?})",
            report.worst_rtt,
            report.median_rtt
        );
        report
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads every frame until the node closes; asserts each is an error with a hostile-input
/// code (or one of `allowed` other kinds). Returns the codes.
fn drain_answers(stream: TcpStream, allowed: &[&str]) -> Vec<String> {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut bytes = Vec::new();
    let mut reader = stream;
    // A reset after the node closed with our bytes unread is a close too.
    let _ = reader.read_to_end(&mut bytes);
    answer_codes(&bytes, allowed)
}

/// Like [`drain_answers`], but done at a `pong` too: the answer to a `ping` sent after
/// the garbage, when the node has not closed (a half-close instead would end the
/// connection before the node answered what it had read, see docs/protocol.md).
fn answers_until_pong(mut stream: TcpStream, allowed: &[&str]) -> Vec<String> {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
        let pong = b"{\"type\":\"pong\"";
        if bytes.ends_with(b"\n") && bytes.windows(pong.len()).any(|w| w == pong) {
            break;
        }
    }
    answer_codes(&bytes, allowed)
}

fn answer_codes(bytes: &[u8], allowed: &[&str]) -> Vec<String> {
    let mut codes = Vec::new();
    // Complete lines only: a reset may cut the last one short.
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => &bytes[..end],
        None => &[][..],
    };
    for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let frame = pbchat::wire::client::decode_server_frame(line)
            .unwrap_or_else(|e| panic!("node sent a bad frame {line:?}: {e}"));
        if allowed.contains(&frame.kind.as_str()) {
            continue;
        }
        assert_eq!(frame.kind, "error", "{frame:?}");
        let code = frame.code.unwrap();
        assert!(HOSTILE_ANSWERS.contains(&code.as_str()), "code {code}");
        codes.push(code);
    }
    codes
}

#[test]
fn random_bytes_and_invalid_utf8_get_errors_or_a_close_and_chat_goes_on() {
    let seed = seed();
    let mut node = Daemon::start("primary", "", "");
    let witness = Witness::start(node.addr);
    let addr = node.addr;
    let attackers: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ t);
                let mut answered = 0;
                for c in 0..10 {
                    let mut stream = TcpStream::connect(addr).unwrap();
                    let mut allowed = vec![];
                    if c % 2 == 1 {
                        // Half speak a valid hello first, so garbage reaches a session too.
                        let hello = format!(
                            "{{\"type\":\"hello\",\"version\":1,\"nick\":\"g{t}x{c}\",\"session\":\"g{t}x{c}\"}}\n"
                        );
                        stream.write_all(hello.as_bytes()).unwrap();
                        allowed.push("welcome");
                    }
                    // Answers are read as they come: once the node closes on us, the rest
                    // of our garbage draws a reset, which discards what we have not read.
                    allowed.push("pong");
                    let reader = {
                        let stream = stream.try_clone().unwrap();
                        std::thread::spawn(move || answers_until_pong(stream, &allowed))
                    };
                    for _ in 0..64 {
                        let mut chunk = vec![0u8; rng.gen_range(1..2048)];
                        rng.fill_bytes(&mut chunk);
                        match rng.gen_range(0..4) {
                            // Invalid UTF-8 inside an otherwise valid frame.
                            0 => chunk = b"{\"type\":\"send\",\"room\":\"calm\",\"id\":\"\xff\xfe\",\"body\":\"\xc3\x28\"}\n".to_vec(),
                            1 => chunk.push(b'\n'),
                            _ => {}
                        }
                        if stream.write_all(&chunk).is_err() {
                            break; // closed on us: max_errors, as the protocol allows
                        }
                    }
                    let _ = stream.write_all(b"\n{\"type\":\"ping\"}\n");
                    answered += reader.join().unwrap().len();
                }
                answered
            })
        })
        .collect();
    let answered: usize = attackers.into_iter().map(|a| a.join().unwrap()).sum();
    eprintln!("40 garbage connections got {answered} error answers");
    assert!(answered >= 40, "hostile connections got {answered} answers");
    assert_alive(&mut node);
    witness.finish("random bytes");
}

#[test]
fn pathological_json_is_a_bad_request_and_the_connection_stays() {
    // Lines up to 1 MiB, so each pathological line reaches the JSON parser.
    let mut node = Daemon::start("primary", "max_line_bytes = 1048576", "");
    let witness = Witness::start(node.addr);
    let rss_before = rss_kib(node.pid());
    let deep = 100_000;
    let lines: Vec<Vec<u8>> = vec![
        "[".repeat(deep).into_bytes(),
        "{\"a\":".repeat(deep).into_bytes(),
        format!("{{\"type\":\"ping\",\"token\":{}}}", "[".repeat(deep)).into_bytes(),
        format!(
            "{{\"type\":\"ping\",\"token\":{}1{}}}",
            "[".repeat(deep),
            "]".repeat(deep)
        )
        .into_bytes(),
        format!(
            "{{\"type\":\"send\",\"room\":\"r\",\"id\":\"x\",\"body\":{}}}",
            "9".repeat(900_000)
        )
        .into_bytes(),
        format!(
            "{{\"type\":\"hello\",\"nick\":\"{}\"}}",
            "\\u0000".repeat(150_000)
        )
        .into_bytes(),
        format!("{{\"type\":\"{}\"}}", "\\ud800".repeat(100_000)).into_bytes(),
        format!("{{{}\"type\":\"nonsense\"}}", "\"k\":1,".repeat(150_000)).into_bytes(),
    ];
    let mut client = node.hello("deep", "s-deep");
    for (i, line) in lines.iter().enumerate() {
        client.send_raw(line);
        client.send_raw(b"\n");
        let answer = client.recv();
        assert_eq!(answer.kind, "error", "line {i}: {answer:?}");
        let code = answer.code.unwrap();
        assert!(
            ["bad_request", "unknown_type", "too_large"].contains(&code.as_str()),
            "line {i}: {code}"
        );
        let message = answer.message.unwrap();
        assert!(
            message.len() < 400,
            "line {i}: a {}-byte message",
            message.len()
        );
        // The connection stays: fewer bad frames than max_errors.
        client.send(json!({"type":"ping","token":i}));
        assert_eq!(client.recv_kind("pong").token, Some(json!(i)));
    }
    let grown = rss_kib(node.pid()).saturating_sub(rss_before);
    eprintln!("pathological JSON: RSS grew {grown} KiB");
    assert!(grown < 64 * 1024, "RSS grew {grown} KiB");
    assert_alive(&mut node);
    witness.finish("pathological JSON");
}

#[test]
fn megabyte_lines_are_too_large_and_closed_with_memory_bounded() {
    let mut node = Daemon::start("primary", "max_connections_per_ip = 1000", "");
    let witness = Witness::start(node.addr);
    witness.wait_sent(3);
    let rss_before = rss_kib(node.pid());
    let addr = node.addr;
    let megabyte = vec![b'a'; 1 << 20];
    let attackers: Vec<_> = (0..20)
        .map(|i| {
            let megabyte = megabyte.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                if i % 2 == 0 {
                    let hello = format!(
                        "{{\"type\":\"hello\",\"version\":1,\"nick\":\"big{i}\",\"session\":\"b{i}\"}}\n"
                    );
                    stream.write_all(hello.as_bytes()).unwrap();
                }
                // A 1 MB line, then its newline; the node refuses it long before the end.
                let _ = stream.write_all(&megabyte).and_then(|_| stream.write_all(b"\n"));
                let codes = drain_answers(stream, &["welcome"]);
                assert_eq!(codes, ["too_large"], "connection {i}");
            })
        })
        .collect();
    for attacker in attackers {
        attacker.join().unwrap();
    }
    let grown = rss_kib(node.pid()).saturating_sub(rss_before);
    eprintln!("20 megabyte lines: RSS grew {grown} KiB");
    assert!(grown < 64 * 1024, "RSS grew {grown} KiB for 20 MB of lines");
    assert_alive(&mut node);
    witness.finish("megabyte lines");
}

#[test]
fn frames_split_byte_by_byte_are_understood() {
    let node = Daemon::start("primary", "", "");
    let witness = Witness::start(node.addr);
    let mut slow = node.client();
    slow.stream.set_nodelay(true).unwrap();
    let frames = [
        json!({"type":"hello","version":1,"nick":"trickle","session":"s-trickle"}),
        json!({"type":"join","room":"trickle"}),
        json!({"type":"send","room":"trickle","id":"t-1","body":"one byte at a time \u{e9}"}),
        json!({"type":"ping","token":"t"}),
    ];
    for frame in &frames {
        let line = format!("{frame}\r\n");
        for byte in line.as_bytes() {
            slow.send_raw(&[*byte]);
        }
    }
    assert_eq!(slow.recv().kind, "welcome");
    slow.recv_kind("joined");
    // The pong may come before the ack, which waits for the message to be durable.
    let (mut acked, mut ponged) = (false, false);
    while !(acked && ponged) {
        let frame = slow.recv();
        match frame.kind.as_str() {
            "ack" => acked = frame.id.as_deref() == Some("t-1"),
            "pong" => ponged = frame.token == Some(json!("t")),
            "msg" => assert_eq!(frame.body.as_deref(), Some("one byte at a time \u{e9}")),
            _ => panic!("{frame:?}"),
        }
    }
    witness.finish("byte-by-byte frames");
}

#[test]
fn half_open_and_never_reading_connections_are_closed_without_stalling_the_room() {
    let mut node = Daemon::start(
        "primary",
        "hello_timeout_ms = 1000\nsend_queue_bytes = 65536\nmax_connections_per_ip = 1000",
        "",
    );
    let witness = Witness::start(node.addr);
    // Half-open: half a hello, never read, never finished.
    let mut half_open: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(node.addr).unwrap();
            s.write_all(b"{\"type\":\"hello\",\"version\":1,\"ni")
                .unwrap();
            s
        })
        .collect();
    // Welcomed members of a busy room that never read what it sends them.
    let mut deaf: Vec<Client> = (0..5)
        .map(|i| {
            let mut c = Client::connect_small_receive_buffer(node.addr);
            c.send(json!({"type":"hello","version":1,"nick":format!("deaf{i}"),"session":format!("d{i}")}));
            assert_eq!(c.recv().kind, "welcome");
            c.join("busy");
            c
        })
        .collect();
    let mut noise = node.hello("noise", "s-noise");
    noise.join("busy");
    let body = "n".repeat(4000);
    // The kernel's socket buffers absorb a few MB before the node's own queue (64 KiB here)
    // fills; send until the node drops a deaf member.
    let mut sent = 0;
    while !node.log_contains("dropped as a slow consumer") {
        assert!(
            sent < 5000,
            "no slow consumer dropped after {sent} messages"
        );
        noise.send_acked("busy", &format!("n-{sent}"), &body);
        sent += 1;
    }
    eprintln!("a deaf member was dropped after {sent} messages of 4000 bytes");
    // Each deaf member got a gapless prefix of the room, then `slow_consumer` and a close;
    // one that was not dropped got everything.
    let last_id = format!("n-{}", sent - 1);
    for (i, c) in deaf.iter_mut().enumerate() {
        let mut next = 0;
        let mut ended_with = None;
        while let Some(frame) = c.try_recv() {
            if frame.kind == "msg" {
                assert_eq!(
                    frame.id,
                    Some(format!("n-{next}")),
                    "deaf {i}: gap or duplicate"
                );
                next += 1;
                if frame.id.as_deref() == Some(last_id.as_str()) {
                    break;
                }
            }
            ended_with = Some(frame);
        }
        let ended = ended_with.map(|f| f.code.unwrap_or(f.kind));
        eprintln!("deaf {i}: {next} messages, then {ended:?}");
    }
    for s in &mut half_open {
        drain_answers(s.try_clone().unwrap(), &[]);
    }
    assert_alive(&mut node);
    witness.finish("half-open and never-reading connections");
}

#[test]
fn a_welcomed_client_that_goes_silent_is_closed_at_the_idle_timeout() {
    let node = Daemon::start("primary", "idle_timeout_ms = 1000", "");
    // The witness pings far more often than the idle timeout, so it stays.
    let witness = Witness::start(node.addr);
    let mut silent = node.hello("silent", "s-silent");
    let started = Instant::now();
    assert!(silent.closed(), "the node closed the silent connection");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    assert!(after < Duration::from_secs(10), "closed after {after:?}");
    witness.finish("idle connection");
}

#[test]
fn thousands_of_connects_per_second_from_one_address_leave_the_node_serving() {
    let mut node = Daemon::start("primary", "", "");
    let witness = Witness::start(node.addr);
    witness.wait_sent(3);
    let addr = node.addr;
    let started = Instant::now();
    let stormers: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut refused = 0;
                for i in 0..1500 {
                    let Ok(mut stream) = TcpStream::connect(addr) else {
                        continue;
                    };
                    match i % 3 {
                        // Connect and hang up at once.
                        0 => {}
                        // A hello, then gone without reading the answer.
                        1 => {
                            let hello = format!(
                                "{{\"type\":\"hello\",\"version\":1,\"nick\":\"c{t}x{i}\",\"session\":\"c{t}x{i}\"}}\n"
                            );
                            let _ = stream.write_all(hello.as_bytes());
                        }
                        // A reset instead of a clean close.
                        _ => {
                            let socket = socket2::Socket::from(stream.try_clone().unwrap());
                            socket.set_linger(Some(Duration::ZERO)).unwrap();
                        }
                    }
                    if i % 100 == 0 {
                        // Sample what a stormer is told once the node is busy.
                        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                        let mut buf = [0u8; 512];
                        if let Ok(n) = stream.read(&mut buf) {
                            if String::from_utf8_lossy(&buf[..n]).contains("unavailable") {
                                refused += 1;
                            }
                        }
                    }
                }
                refused
            })
        })
        .collect();
    let refused: usize = stormers.into_iter().map(|s| s.join().unwrap()).sum();
    let elapsed = started.elapsed();
    eprintln!(
        "connect storm: 6000 connections in {elapsed:?} ({:.0}/s); {refused} sampled refusals",
        6000.0 / elapsed.as_secs_f64()
    );
    assert_alive(&mut node);
    // Every slot is released: a new client gets in (the release is asynchronous: retry).
    wait_until("a new client to be welcomed after the storm", || {
        let mut c = node.client();
        c.send(json!({"type":"hello","version":1,"nick":"after","session":"s-after"}));
        c.try_recv().is_some_and(|f| f.kind == "welcome")
    });
    witness.finish("connect storm");
}

#[test]
fn field_limits_and_max_errors_are_enforced_through_the_binary() {
    let node = Daemon::start("primary", "max_errors = 5\nmax_body_bytes = 100", "");
    let mut c = node.client();
    c.send(json!({"type":"hello","version":1,"nick":"n".repeat(33),"session":"s"}));
    assert_eq!(
        c.recv().code.as_deref(),
        Some("bad_request"),
        "33-character nick"
    );
    c.send(json!({"type":"hello","version":1,"nick":"ok","session":"s".repeat(65)}));
    assert_eq!(
        c.recv().code.as_deref(),
        Some("bad_request"),
        "65-character session"
    );
    let mut c = node.hello("limits", "s-limits");
    c.send(json!({"type":"join","room":"r".repeat(65)}));
    assert_eq!(
        c.recv().code.as_deref(),
        Some("bad_request"),
        "65-character room"
    );
    c.join("r");
    c.send(json!({"type":"send","room":"r","id":"i".repeat(65),"body":"x"}));
    assert_eq!(
        c.recv().code.as_deref(),
        Some("bad_request"),
        "65-character id"
    );
    c.send(json!({"type":"send","room":"r","id":"big","body":"x".repeat(101)}));
    let big = c.recv();
    assert_eq!(
        (big.code.as_deref(), big.id.as_deref()),
        (Some("too_large"), Some("big"))
    );
    // Limits are inclusive: 32, 64, 64 and max_body_bytes are fine.
    let mut edge = node.hello(&"n".repeat(32), &"s".repeat(64));
    edge.join(&"r".repeat(64));
    edge.send_acked(&"r".repeat(64), &"i".repeat(64), &"x".repeat(100));
    // Four bad frames so far; the fifth closes the connection.
    c.send(json!({"type":"nonsense"}));
    assert_eq!(c.recv().code.as_deref(), Some("unknown_type"));
    c.send_raw(b"not json\n");
    let last = c.recv();
    assert_eq!(last.code.as_deref(), Some("bad_request"));
    let mut rest = Vec::new();
    while let Some(frame) = c.try_recv() {
        rest.push(frame);
    }
    assert!(
        rest.iter().any(|f| f
            .message
            .as_deref()
            .is_some_and(|m| m.contains("bad frames"))),
        "{last:?} {rest:?}"
    );
}

#[test]
fn forged_replayed_and_garbage_heartbeats_at_volume_change_no_role() {
    use pbchat::secret_file::generate_secret_line;
    use pbchat::wire::heartbeat::{encode, Heartbeat};
    use pbchat::wire::keyring::parse_keyring;
    let seed = seed();
    let pair = PairFiles::new("");
    let mut a = pair.start_a();
    let mut b = pair.start_b();
    b.wait_state("following its peer", state::following_its_peer);
    let witness = Witness::start(pair.client_a);
    // a promoted itself once at its first start; count role changes from here.
    let changes =
        |node: &Daemon| node.log_count("promoted to primary") + node.log_count("stepping down");
    let changes_before = [changes(&a), changes(&b)];
    let real = parse_keyring("secret", &std::fs::read_to_string(&pair.secret).unwrap()).unwrap();
    let wrong = parse_keyring("forged", &generate_secret_line(1)).unwrap();
    let claim = |node_id: &str, primary: bool, epoch: u64, counter: u64| Heartbeat {
        node_id: node_id.into(),
        primary,
        epoch,
        head: 1 << 40,
        boot: 1,
        counter,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    // For three detection times (heartbeats every 200 ms, 5 misses): a backup that took the
    // flood for silence, or a primary that believed it, would have acted by then.
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        let epoch = rng.gen_range(1..1000);
        let datagrams: Vec<Vec<u8>> = vec![
            // "a is primary in a later epoch" under a wrong key, to the backup.
            encode(&claim("a", true, epoch, sent), &wrong),
            // "b is primary" under the real key but from an old boot: a replay.
            encode(&claim("b", true, epoch, sent), &real),
            // "a stepped down", replayed from an old boot, to the backup.
            encode(&claim("a", false, epoch, sent), &real),
            // Truncated, oversized and random datagrams.
            encode(&claim("b", true, epoch, sent), &real)[..50].to_vec(),
            vec![0x50; 2000],
            (0..rng.gen_range(1..200)).map(|_| rng.gen()).collect(),
        ];
        for datagram in &datagrams {
            for target in [pair.heartbeat_a, pair.heartbeat_b] {
                let _ = socket.send_to(datagram, target);
                sent += 1;
            }
        }
        // About 4000 datagrams a second, 20 times a node's own rate in each direction.
        std::thread::sleep(Duration::from_millis(3));
    }
    eprintln!(
        "spoofed heartbeats: {sent} datagrams in {:?}",
        started.elapsed()
    );
    a.wait_log("datagrams rejected");
    b.wait_log("datagrams rejected");
    for ((name, node), before) in [("a", &a), ("b", &b)].into_iter().zip(changes_before) {
        assert_eq!(changes(node), before, "{name} changed its role");
        // Rejections are counted, and logged at most once per 10 s (plus the first).
        let warnings = node.log_count("datagrams rejected");
        assert!(
            warnings <= 2,
            "{name}: {warnings} warnings about rejected datagrams"
        );
    }
    // b still follows a: it redirects clients to it.
    let mut to_b = Client::connect(pair.client_b);
    to_b.send(json!({"type":"hello","version":1,"nick":"probe","session":"s-probe"}));
    assert_eq!(to_b.recv().kind, "redirect");
    assert_alive(&mut a);
    assert_alive(&mut b);
    witness.finish("spoofed heartbeats");
}

/// A welcomed client that toggles `join`/`leave` (and asks for history) as fast as it can
/// write, in a room with a listening member: each join or leave would send presence to the
/// whole room. The node carries out the first `room_rate_burst` (200 by default), answers
/// the rest `rate_limited` without doing them, and after `rate_violations_max` (20)
/// refusals closes the connection. The room's member hears a bounded number of presence
/// frames, and the witness chats on.
#[test]
fn join_leave_and_history_floods_are_refused_and_cut_off_without_a_presence_storm() {
    let mut node = Daemon::start("primary", "", "");
    let witness = Witness::start(node.addr);
    let mut member = node.hello("member", "s-member");
    member.join("crowd");
    witness.wait_sent(3);

    let flooder = node.hello("flood", "s-flood");
    let mut lines = String::new();
    for i in 0..10_000 {
        lines.push_str(match i % 3 {
            0 => "{\"type\":\"join\",\"room\":\"crowd\"}\n",
            1 => "{\"type\":\"leave\",\"room\":\"crowd\"}\n",
            _ => "{\"type\":\"history\",\"room\":\"crowd\",\"limit\":1000}\n",
        });
    }
    let mut writer = flooder.stream.try_clone().unwrap();
    let writing = std::thread::spawn(move || {
        // The node closes the connection partway: the rest of the write fails, as it should.
        let _ = writer.write_all(lines.as_bytes());
    });
    let mut reader = flooder.stream;
    reader.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut bytes = Vec::new();
    let _ = reader.read_to_end(&mut bytes);
    writing.join().unwrap();
    let mut done = 0;
    let mut refused = Vec::new();
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(frame) = pbchat::wire::client::decode_server_frame(line) else {
            continue; // a line cut short by the close
        };
        match frame.kind.as_str() {
            "joined" | "left" | "history_end" => done += 1,
            "error" => refused.push((frame.code.unwrap(), frame.message.unwrap_or_default())),
            _ => {}
        }
    }
    // A history request granted by the bucket may still find four in flight (the
    // worker's own bound), answered `rate_limited` too, with a message of its own.
    let (paced, busy): (Vec<_>, Vec<_>) = refused
        .iter()
        .partition(|(_, message)| message.contains("join, leave and history"));
    // Up to four granted history requests still in flight at the close get no answer.
    assert!(
        (196..=260).contains(&(done + busy.len())),
        "{done} requests carried out, {} history requests refused as in flight",
        busy.len()
    );
    assert_eq!(paced.len(), 20, "{paced:?}");
    assert!(refused.iter().all(|(code, _)| code == "rate_limited"));
    assert!(paced.last().unwrap().1.contains("closing"), "{paced:?}");

    // Everything the flood made the member hear is in before a pong to its own ping.
    member.send(json!({"type":"ping","token":"after"}));
    let mut presence = 0;
    loop {
        let frame = member.recv();
        match frame.kind.as_str() {
            "presence" => presence += 1,
            "pong" => break,
            _ => {}
        }
    }
    assert!(
        presence <= 200,
        "the member heard {presence} presence frames"
    );
    assert_alive(&mut node);
    witness.finish("join/leave/history flood");
    eprintln!(
        "join/leave/history flood: {done} of 10000 pipelined requests carried out, {} \
         history requests refused as in flight, 20 refused as too fast, then closed; the \
         room's member heard {presence} presence frames",
        busy.len()
    );
}

/// A welcomed client that pipelines pings as fast as it can write while reading the pongs.
/// Before each connection got a share of its worker's turn (`FRAMES_PER_TURN`), such a
/// client refilled the worker's outbox first on every turn and the connections behind it
/// (the witness's, when they shared its worker) never got a `hello` answered. The witness
/// must chat on with quick round trips while the flooder is answered too.
#[test]
fn a_ping_flood_from_one_connection_does_not_starve_the_others() {
    let mut node = Daemon::start("primary", "", "");
    let witness = Witness::start(node.addr);
    witness.wait_sent(3);
    let flooder = node.hello("pinger", "s-pinger");
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = flooder.stream.try_clone().unwrap();
    let writing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let batch = "{\"type\":\"ping\"}\n".repeat(1000);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && writer.write_all(batch.as_bytes()).is_ok() {
                sent += 1000;
            }
            sent
        })
    };
    let mut reader = flooder.stream;
    reader.set_read_timeout(Some(DEADLINE)).unwrap();
    let reading = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut pongs = 0u64;
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            pongs += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        }
        pongs
    });
    let from = witness.sent.load(Ordering::Relaxed);
    witness.wait_sent(from + 50);
    stop.store(true, Ordering::Relaxed);
    let sent = writing.join().unwrap();
    assert_alive(&mut node);
    let report = witness.finish("ping flood");
    drop(node);
    let pongs = reading.join().unwrap();
    assert!(pongs > 1000, "the flooder got {pongs} pongs");
    eprintln!("ping flood: {sent} pings written, {pongs} pongs read; witness {report:?}");
}
