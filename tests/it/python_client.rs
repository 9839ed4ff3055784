//! The Python reference client (examples/python/pbchat_client.py) against a real pair on
//! loopback: under kill -9 and SIGSTOP of the primary, its sender ends with every message
//! acknowledged once, the pair stores each once, and its listener shows each once, in order.
//! It runs the real `python3`; without one the tests fail (they never skip). Every wait has a
//! deadline, and every process is killed on drop.

use crate::common;
use crate::common::state;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, PairFiles, DEADLINE};
use serde_json::{json, Value};

const ROOM: &str = "general";

/// Messages the sender sends, and how fast: 200 at 40/s is 5 s of traffic, long enough for
/// a fail-over (about 1 s of detection) to fall in the middle of it.
const LOAD_COUNT: usize = 200;
const LOAD_RATE_PER_SEC: u32 = 40;

/// Acks before the fault, so that the fault hits a client in full flow (1 s of traffic).
const ACKS_BEFORE_FAULT: usize = 40;

/// The whole run of the Python sender, fail-over included; its own `--timeout` is below it.
const SENDER_DEADLINE: Duration = Duration::from_secs(60);
const SENDER_TIMEOUT_SECS: &str = "50";

/// The longest pause between two acks allowed when the primary is stopped: the liveness
/// rule brings it to about 1.1-1.3 s (detection 1.0 s, then the held probe is welcomed);
/// the bound is generous so that a loaded 2-core CI does not flake. Without the probe the
/// client would wait for its 7 s silence limit.
const STOP_GAP_MAX: Duration = Duration::from_secs(3);

fn script() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/pbchat_client.py"
    )
    .to_string()
}

/// Fails (never skips) when python3 is missing: the reference client must be tested.
fn require_python3() {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(check_python3);
}

fn check_python3() {
    match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout);
            eprintln!("python3: {}", version.trim());
        }
        Ok(out) => panic!("python3 --version failed: {out:?}"),
        Err(e) => panic!(
            "python3 is required to test the Python reference client \
             (examples/python/pbchat_client.py): {e}"
        ),
    }
}

/// One run of the Python client; its stdout JSON events are collected, its stderr forwarded.
struct Python {
    name: String,
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
}

impl Python {
    fn start(name: &str, servers: &[SocketAddr], mode: &[&str]) -> Python {
        require_python3();
        let mut cmd = Command::new("python3");
        cmd.arg(script());
        for server in servers {
            cmd.arg("--server").arg(server.to_string());
        }
        let mut child = cmd
            .args([
                "--nick",
                name,
                "--session",
                &format!("s-{name}"),
                "--room",
                ROOM,
            ])
            .args(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        {
            let events = events.clone();
            let name = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let event: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("{name}: stdout line {line:?}: {e}"));
                    events.lock().unwrap().push(event);
                }
            });
        }
        {
            let name = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("  {name}| {line}");
                }
            });
        }
        Python {
            name: name.into(),
            child,
            events,
        }
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == kind)
            .cloned()
            .collect()
    }

    fn wait_until(&self, what: &str, condition: impl Fn(&Python) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !condition(self) {
            assert!(
                Instant::now() < deadline,
                "{}: no {what} in time",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "{} did not finish", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// id -> seq of every ack; asserts that each id was acknowledged exactly once.
    fn acked_once(&self) -> BTreeMap<String, u64> {
        let mut acked = BTreeMap::new();
        for ack in self.events("ack") {
            let id = ack["id"].as_str().unwrap().to_string();
            let seq = ack["seq"].as_u64().unwrap();
            assert!(
                acked.insert(id.clone(), seq).is_none(),
                "{}: {id} acknowledged twice",
                self.name
            );
        }
        let seqs: BTreeSet<u64> = acked.values().copied().collect();
        assert_eq!(seqs.len(), acked.len(), "two sends acked with one seq");
        acked
    }

    /// The longest time between two consecutive acks, by the client's own clock.
    fn longest_ack_gap(&self) -> Duration {
        let times: Vec<f64> = self
            .events("ack")
            .iter()
            .map(|a| a["t"].as_f64().unwrap())
            .collect();
        let longest = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
        Duration::from_secs_f64(longest)
    }

    /// Waits until the listener has shown every id `from` sent (`acked`), then checks that
    /// it showed each message once, in increasing seq, with the seq the sender was acked.
    fn check_shown(&self, from: &str, acked: &BTreeMap<String, u64>) {
        let shown_ids = |p: &Python| -> BTreeSet<String> {
            p.events("msg")
                .iter()
                .filter(|m| m["from"] == from)
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect()
        };
        let wanted: BTreeSet<String> = acked.keys().cloned().collect();
        self.wait_until("message shown", |p| wanted.is_subset(&shown_ids(p)));
        let mut last_seq = 0;
        let mut keys = BTreeSet::new();
        for msg in self.events("msg") {
            let seq = msg["seq"].as_u64().unwrap();
            assert!(seq > last_seq, "{}: seq {seq} after {last_seq}", self.name);
            last_seq = seq;
            let key = (msg["from"].to_string(), msg["id"].to_string());
            assert!(
                keys.insert(key.clone()),
                "{}: {key:?} shown twice",
                self.name
            );
            if msg["from"] == from {
                assert_eq!(Some(&seq), acked.get(msg["id"].as_str().unwrap()));
            }
        }
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_pair(pair: &PairFiles) -> (Daemon, Daemon) {
    let a = pair.start_a();
    let b = pair.start_b();
    b.wait_state("following its peer", state::following_its_peer);
    (a, b)
}

/// The stored history of the room read from `addr`: each of `from`'s acked ids exactly once,
/// at its acked seq, and nothing else of `from`'s.
fn check_history(addr: SocketAddr, from: &str, acked: &BTreeMap<String, u64>) {
    let mut reader = common::hello_at(addr, "reader", "s-reader");
    reader.send(json!({"type":"history","room":ROOM,"limit":1000}));
    let mut stored: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let frame = reader.recv();
        match frame.kind.as_str() {
            "history_end" => break,
            "msg" if frame.from.as_deref() == Some(from) => {
                let id = frame.id.unwrap();
                let seq = frame.seq.unwrap();
                assert!(
                    stored.insert(id.clone(), seq).is_none(),
                    "{id} stored twice"
                );
            }
            "msg" => {}
            other => panic!("history: unexpected {other}: {frame:?}"),
        }
    }
    assert_eq!(
        &stored, acked,
        "the history is not the acked sends once each"
    );
}

fn load_args() -> Vec<String> {
    vec![
        "--load".into(),
        LOAD_COUNT.to_string(),
        "--rate".into(),
        LOAD_RATE_PER_SEC.to_string(),
        "--timeout".into(),
        SENDER_TIMEOUT_SECS.into(),
    ]
}

/// The listener and the sender on a fresh pair; returns once the sender is in full flow.
fn start_clients(pair: &PairFiles) -> (Python, Python) {
    let servers = [pair.client_a, pair.client_b];
    let listener = Python::start("ear", &servers, &["--listen", "--after", "0"]);
    listener.wait_until("join", |p| !p.events("joined").is_empty());
    let args = load_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sender = Python::start("mouth", &servers, &args);
    sender.wait_until("traffic", |p| p.events("ack").len() >= ACKS_BEFORE_FAULT);
    (listener, sender)
}

#[test]
fn python_client_rides_over_kill9_of_the_primary_with_each_message_once() {
    let pair = PairFiles::new("");
    let (mut a, b) = start_pair(&pair);
    let (listener, mut sender) = start_clients(&pair);

    let killed_at = Instant::now();
    a.kill9();
    b.wait_state("primary", state::primary);
    eprintln!("promoted {:?} after the kill", killed_at.elapsed());
    assert_eq!(sender.wait_exit(SENDER_DEADLINE), Some(0), "sender failed");

    let acked = sender.acked_once();
    assert_eq!(acked.len(), LOAD_COUNT, "every message acknowledged");
    let reconnected = sender
        .events("connected")
        .iter()
        .any(|c| c["via"] == "reconnect" && c["node"] == "b");
    assert!(reconnected, "the sender moved to b after the kill");
    check_history(pair.client_b, "mouth", &acked);
    listener.check_shown("mouth", &acked);
    eprintln!(
        "kill -9: longest gap between acks {:?}",
        sender.longest_ack_gap()
    );
}

#[test]
fn python_client_probes_past_a_stopped_primary_and_loses_nothing() {
    let pair = PairFiles::new("");
    let (a, b) = start_pair(&pair);
    let (listener, mut sender) = start_clients(&pair);

    let stopped_at = Instant::now();
    common::signal_pid(a.pid(), "STOP");
    // A client started now connects to a first: a's kernel accepts, a says nothing. After
    // 400 ms it says the same hello to b, which welcomes it on taking over.
    let mut newcomer = Python::start(
        "newcomer",
        &[pair.client_a, pair.client_b],
        &["--send", "hello during the stop"],
    );
    b.wait_state("primary", state::primary);
    let promoted = stopped_at.elapsed();
    eprintln!("promoted {promoted:?} after the stop");
    assert_eq!(
        newcomer.wait_exit(SENDER_DEADLINE),
        Some(0),
        "newcomer failed"
    );
    let newcomer_done = stopped_at.elapsed();
    eprintln!("newcomer acked {newcomer_done:?} after the stop");
    assert!(
        newcomer_done < promoted + Duration::from_millis(1_500),
        "the newcomer waited out its hello timeout on the stopped node: {newcomer_done:?}"
    );
    sender.wait_until("move by the probe", |p| {
        p.events("connected")
            .iter()
            .any(|c| c["via"] == "probe" && c["node"] == "b")
    });
    eprintln!("sender on b {:?} after the stop", stopped_at.elapsed());
    common::signal_pid(a.pid(), "CONT");
    a.wait_log("stepping down");
    a.wait_state("following b", state::following("b"));
    assert_eq!(sender.wait_exit(SENDER_DEADLINE), Some(0), "sender failed");

    let acked = sender.acked_once();
    assert_eq!(acked.len(), LOAD_COUNT, "every message acknowledged");
    let gap = sender.longest_ack_gap();
    eprintln!("SIGSTOP: longest gap between acks {gap:?}");
    assert!(gap < STOP_GAP_MAX, "longest gap between acks {gap:?}");
    // What only the old primary stored is re-committed through b (de-duplicated): let that
    // finish before reading the history, so that a double would show.
    if a.log_contains("re-committing") {
        a.wait_log("every message kept aside is re-committed");
    }
    check_history(pair.client_b, "mouth", &acked);
    listener.check_shown("mouth", &acked);
}

#[test]
fn python_client_stays_on_a_primary_that_pauses_shorter_than_detection() {
    // Detection 3 s (15 misses of 200 ms): the pause below ends long before the backup
    // could take over, while the client suspects after probe_ms (400 ms).
    let pair = PairFiles::new("misses = 15");
    let (a, b) = start_pair(&pair);
    let (listener, mut sender) = start_clients(&pair);

    let stopped_at = Instant::now();
    common::signal_pid(a.pid(), "STOP");
    sender.wait_until("probe", |p| !p.events("probe").is_empty());
    eprintln!("probe {:?} after the stop", stopped_at.elapsed());
    common::signal_pid(a.pid(), "CONT");
    // The backup, hearing its primary again, redirects the probe: the client stays.
    sender.wait_until("probe answer", |p| !p.events("probe_failed").is_empty());
    assert_eq!(sender.wait_exit(SENDER_DEADLINE), Some(0), "sender failed");

    let failed = sender.events("probe_failed");
    eprintln!("probe outcomes: {failed:?}");
    assert!(
        failed[0]["reason"].as_str().unwrap().contains("redirect"),
        "{failed:?}"
    );
    let moved = sender.events("connected").iter().any(|c| c["node"] == "b");
    assert!(!moved, "the client left a primary that was only slow");
    assert!(!b.log_contains("promoted to primary"));
    let acked = sender.acked_once();
    assert_eq!(acked.len(), LOAD_COUNT, "every message acknowledged");
    eprintln!(
        "short pause: longest gap between acks {:?}",
        sender.longest_ack_gap()
    );
    check_history(pair.client_a, "mouth", &acked);
    listener.check_shown("mouth", &acked);
}
