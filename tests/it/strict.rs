//! Strict mode with real processes on loopback: a `pbchat-witness` and a pair in
//! `failover.mode = "strict"`. kill -9 and SIGSTOP of the primary, loss of the witness, of
//! the witness and the backup, forged claims, a witness restart. Every wait is on a
//! condition with a deadline.

use crate::common;
use crate::common::state;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, hello_at, signal_pid, Client, Daemon, PairFiles, DEADLINE};
use serde_json::json;

const ROOM: &str = "general";

/// A running `pbchat-witness` with its stderr collected.
struct Witness {
    child: Option<Child>,
    config: PathBuf,
    state_file: PathBuf,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Witness {
    fn spawn(&mut self) {
        // Each run's lines only, so waits see this process's words.
        self.log.lock().unwrap().clear();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pbchat-witness"))
            .arg("-c")
            .arg(&self.config)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
        self.wait_log("witness on udp");
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.log_contains(needle) {
            assert!(
                Instant::now() < deadline,
                "witness: no log line with {needle:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A pair in strict mode with its witness, `a` serving as primary with a client on it.
fn strict_pair() -> (PairFiles, Witness, Daemon, Daemon) {
    strict_pair_with("")
}

/// As [`strict_pair`], with `extra` (whole sections) in both nodes' configs.
fn strict_pair_with(extra: &str) -> (PairFiles, Witness, Daemon, Daemon) {
    strict_pair_configured(extra, "")
}

/// As [`strict_pair_with`], with `witness_extra` lines in the witness's config.
fn strict_pair_configured(
    extra: &str,
    witness_extra: &str,
) -> (PairFiles, Witness, Daemon, Daemon) {
    // The witness's port must be known before the configs are written: reserve one, then
    // let the pair's failover section name it.
    let port = free_port(true);
    let pair = PairFiles::with_failover(
        "",
        "",
        "",
        &format!("mode = \"strict\"\nwitness = \"127.0.0.1:{port}\"\nlease_ms = 600\n{extra}"),
    );
    let witness = Witness::start_with(&pair, port, witness_extra);
    let a = pair.start_a();
    let b = pair.start_b();
    a.wait_state("primary in epoch 1", |s| {
        state::primary(s) && s["epoch"] == 1
    });
    b.wait_state("following a", state::following("a"));
    (pair, witness, a, b)
}

impl Witness {
    /// A witness on `port`, with `extra` lines in its config.
    fn start_with(pair: &PairFiles, port: u16, extra: &str) -> Witness {
        let mut w = Witness::start_unspawned(pair);
        w.addr = SocketAddr::from(([127, 0, 0, 1], port));
        let text = format!(
            "listen = \"{}\"\nsecret_file = \"{}\"\nstate_file = \"{}\"\nlease_ms = 600\nlog_level = \"debug\"\n{extra}",
            w.addr,
            pair.secret.display(),
            w.state_file.display()
        );
        std::fs::write(&w.config, text).unwrap();
        w.spawn();
        w
    }

    fn start_unspawned(pair: &PairFiles) -> Witness {
        Witness {
            child: None,
            config: pair.dir.join("witness.toml"),
            state_file: pair.dir.join("witness.state"),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: Arc::default(),
        }
    }
}

/// Sends `id` and returns the first answer to it: `Ok(seq)` for an ack, `Err(code)` else.
fn send(client: &mut Client, id: &str) -> Result<u64, String> {
    client.send(json!({"type":"send","room":ROOM,"id":id,"body":id}));
    while let Some(frame) = client.try_recv() {
        let mine = frame.id.as_deref() == Some(id);
        match frame.kind.as_str() {
            "ack" if mine => return Ok(frame.seq.unwrap()),
            "error" if mine => return Err(frame.code.unwrap()),
            "goodbye" => return Err("goodbye".into()),
            _ => {}
        }
    }
    Err("closed".into())
}

fn joined(addr: SocketAddr, nick: &str) -> Client {
    let mut c = hello_at(addr, nick, nick);
    c.join(ROOM);
    c
}

#[test]
fn kill_9_of_the_primary_fails_over_through_a_grant_within_the_usual_bound() {
    let (pair, witness, mut a, b) = strict_pair();
    let mut alice = joined(pair.client_a, "alice");
    assert!(send(&mut alice, "m-1").is_ok());
    let killed = Instant::now();
    a.kill9();
    b.wait_state("primary in epoch 2", |s| {
        state::primary(s) && s["epoch"] == 2
    });
    let failover = killed.elapsed();
    assert!(b.log_contains("the witness granted epoch 2"));
    witness.wait_log("granted epoch 2 to b");
    let mut bob = joined(pair.client_b, "bob");
    assert!(send(&mut bob, "m-2").is_ok());
    eprintln!(
        "strict fail-over after kill -9: {} ms",
        failover.as_millis()
    );
    // Detection is 1 s; the grant adds a round trip. The bound leaves room for a loaded
    // machine while still catching a wait for some other timer (a lease, a cooldown).
    assert!(failover < Duration::from_millis(3_000), "{failover:?}");
}

#[test]
fn a_stopped_primary_does_not_commit_when_it_wakes_and_steps_down() {
    let (pair, witness, a, b) = strict_pair();
    let mut alice = joined(pair.client_a, "alice");
    assert!(send(&mut alice, "m-1").is_ok());
    signal_pid(a.pid(), "STOP");
    // Written while `a` is stopped: it reads this only when it wakes, long after its lease.
    alice.send(json!({"type":"send","room":ROOM,"id":"m-2","body":"late"}));
    b.wait_state("primary in epoch 2", |s| {
        state::primary(s) && s["epoch"] == 2
    });
    witness.wait_log("granted epoch 2 to b");
    signal_pid(a.pid(), "CONT");
    a.wait_log("stepping down to backup");
    // Whatever `a` says before it closes the connection, it is no ack of m-2.
    while let Some(frame) = alice.try_recv() {
        assert!(
            !(frame.kind == "ack" && frame.id.as_deref() == Some("m-2")),
            "the stopped primary acked after its lease ran out: {frame:?}"
        );
    }
    a.wait_state("following b", state::following("b"));
}

#[test]
fn losing_only_the_witness_changes_nothing_while_the_nodes_see_each_other() {
    let (pair, mut witness, a, b) = strict_pair();
    let mut alice = joined(pair.client_a, "alice");
    witness.kill9();
    // Well past several leases: every send is still acked (the backup's acks carry it).
    let until = Instant::now() + Duration::from_secs(4);
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        assert_eq!(send(&mut alice, &format!("m-{n}")).map(|_| ()), Ok(()));
    }
    assert!(a.log_contains("witness lease ran out"));
    assert!(!b.log_contains("promoted to primary"));
}

#[test]
fn losing_the_witness_and_the_backup_leaves_the_primary_unavailable() {
    let (pair, mut witness, a, mut b) = strict_pair();
    let mut alice = joined(pair.client_a, "alice");
    assert!(send(&mut alice, "m-1").is_ok());
    witness.kill9();
    b.kill9();
    a.wait_log("witness lease ran out");
    // By design: nothing guarantees the backup is not about to be granted the next epoch.
    let deadline = Instant::now() + DEADLINE;
    let mut n = 1;
    loop {
        n += 1;
        match send(&mut alice, &format!("m-{n}")) {
            Err(code) if code == "unavailable" => break,
            _ => assert!(Instant::now() < deadline, "sends are still taken"),
        }
    }
    // The witness back: the primary renews its lease and serves again.
    witness.spawn();
    a.wait_log("witness lease held for epoch 1");
    let deadline = Instant::now() + DEADLINE;
    loop {
        n += 1;
        if send(&mut alice, &format!("m-{n}")).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no ack once the witness is back");
    }
}

#[test]
fn the_witness_refuses_forged_claims_and_keeps_its_grant_across_a_restart() {
    let (pair, mut witness, a, _b) = strict_pair();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Garbage, and a well-formed claim of epoch 99 signed with a key the pair does not use.
    socket.send_to(b"PBWC not a claim", witness.addr).unwrap();
    let other =
        pbchat::wire::keyring::parse_keyring("test", &format!("1 {}\n", "ab".repeat(32))).unwrap();
    let claim = pbchat::wire::witness::Claim {
        node_id: "b".into(),
        epoch: 99,
        boot: 1,
        counter: 1,
    };
    let forged = pbchat::wire::witness::encode_claim(&claim, &other);
    socket.send_to(&forged, witness.addr).unwrap();
    witness.wait_log("rejected a claim");
    let state = std::fs::read_to_string(&witness.state_file).unwrap();
    assert_eq!(state.trim(), "granted 1 a");
    witness.kill9();
    witness.spawn();
    witness.wait_log("granted epoch 1 to \"a\"");
    // The holder renews with the restarted witness and chat goes on.
    let mut alice = joined(pair.client_a, "alice");
    let deadline = Instant::now() + DEADLINE;
    let mut n = 0;
    loop {
        n += 1;
        if send(&mut alice, &format!("m-{n}")).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    assert!(!a.log_contains("stepping down"));
}

#[test]
fn a_planned_hand_over_waits_only_for_the_old_lease_to_lapse() {
    let (pair, witness, a, b) = strict_pair();
    let mut alice = joined(pair.client_a, "alice");
    assert!(send(&mut alice, "m-1").is_ok());
    let started = Instant::now();
    signal_pid(a.pid(), "TERM");
    b.wait_state("primary in epoch 2", |s| {
        state::primary(s) && s["epoch"] == 2
    });
    let took = started.elapsed();
    assert!(b.log_contains("planned hand-over from the primary"));
    witness.wait_log("granted epoch 2 to b");
    a.wait_log("hand-over: the peer took over in epoch 2");
    eprintln!("strict hand-over: {} ms", took.as_millis());
    let mut bob = joined(pair.client_b, "bob");
    assert!(send(&mut bob, "m-2").is_ok());
}

/// `pbchatctl -c CONFIG status [--json]`'s output, when the node answers.
fn status(config: &std::path::Path, json: bool) -> Option<String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbchatctl"));
    cmd.arg("-c").arg(config).arg("status");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls the primary's `status --json` until `done` holds for its `peer.failover`.
fn wait_failover_status(config: &std::path::Path, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let failover = status(config, true)
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .map(|v| v["peer"]["failover"].clone());
        if failover.as_ref().is_some_and(&done) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed it: {failover:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_shows_the_mode_the_lease_and_the_witness() {
    let (pair, mut witness, _a, _b) = strict_pair();
    wait_failover_status(&pair.config_a, |f| {
        f["mode"] == "strict"
            && f["lease_left_ms"].as_u64().is_some_and(|ms| ms > 0)
            && f["witness_heard_ms_ago"].is_u64()
    });
    let text = status(&pair.config_a, false).unwrap();
    let line = format!("strict, witness {} answered", witness.addr);
    assert!(text.contains(&line), "{text}");
    witness.kill9();
    wait_failover_status(&pair.config_a, |f| f["lease_left_ms"] == 0);
    let text = status(&pair.config_a, false).unwrap();
    assert!(text.contains("no lease"), "{text}");
}

/// systemd/pbchat-witness.service is `Type=notify` with `WatchdogSec=`: the witness says
/// READY once it answers, feeds the watchdog while idle, says STOPPING on TERM and exits 0.
/// Its stderr lines carry its own name, as the unit's SyslogIdentifier= does.
#[test]
fn the_witness_tells_systemd_ready_feeds_the_watchdog_and_says_stopping() {
    use std::os::unix::net::UnixDatagram;

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pair.secret");
    let made = Command::new(env!("CARGO_BIN_EXE_pbchatd"))
        .arg("--gen-secret")
        .arg(&secret)
        .output()
        .unwrap();
    assert!(made.status.success());
    let config = dir.path().join("witness.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nsecret_file = \"{}\"\nstate_file = \"{}\"\n",
            free_port(true),
            secret.display(),
            dir.path().join("witness.state").display()
        ),
    )
    .unwrap();
    let notify_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pbchat-witness"))
        .arg("-c")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let mut seen: Vec<String> = Vec::new();
    let mut collect = |done: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = [0u8; 1024];
        while !done(&seen) {
            assert!(Instant::now() < deadline, "datagrams so far: {seen:?}");
            if let Ok(n) = socket.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        seen.clone()
    };
    let seen_now = collect(&|seen| {
        seen.iter().any(|d| d.starts_with("READY=1"))
            && seen.iter().filter(|d| *d == "WATCHDOG=1").count() >= 2
    });
    let ready = seen_now.iter().find(|d| d.starts_with("READY=1")).unwrap();
    assert!(ready.contains("STATUS=granted epoch 0"), "{ready:?}");
    signal_pid(child.id(), "TERM");
    collect(&|seen| seen.iter().any(|d| d.starts_with("STOPPING=1")));
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let lines = log.join().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("pbchat-witness[witness]: witness on udp")),
        "{lines:?}"
    );
}

/// `GET /metrics` from the node's `[metrics]` endpoint (its address from the log).
fn scrape(node: &Daemon) -> String {
    use std::io::{Read, Write};

    node.wait_log("metrics on http://");
    let address = node
        .log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.split("metrics on http://")
                .nth(1)
                .map(|rest| rest.trim_end_matches("/metrics").to_string())
        })
        .unwrap();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn metric(body: &str, name: &str) -> u64 {
    metric_f64(body, name) as u64
}

/// A metric in base units (`_seconds` may be fractional).
fn metric_f64(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        .parse()
        .unwrap()
}

/// The primary's metrics follow strict mode through losing the witness and the backup:
/// its lease shows and renews, then runs out, the sends it refuses are counted, and the
/// backup's bids show as refused claims while the primary still holds its lease.
#[test]
fn metrics_show_the_lease_the_claims_and_the_refused_sends() {
    let (pair, mut witness, a, mut b) = strict_pair_with("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let mut alice = joined(pair.client_a, "alice");
    assert!(send(&mut alice, "m-1").is_ok());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let body = scrape(&a);
        if metric_f64(&body, "pbchat_witness_lease_remaining_seconds") > 0.0
            && metric(&body, "pbchat_witness_grants_total") >= 2
        {
            assert_eq!(metric(&body, "pbchat_strict_sends_refused_total"), 0);
            break;
        }
        assert!(Instant::now() < deadline, "no lease in the metrics: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The backup claims nothing while it hears the primary.
    assert_eq!(metric(&scrape(&b), "pbchat_witness_claims_total"), 0);

    witness.kill9();
    b.kill9();
    a.wait_log("witness lease ran out");
    let mut refused = 0;
    let mut n = 1;
    while refused < 3 {
        n += 1;
        if send(&mut alice, &format!("m-{n}")) == Err("unavailable".into()) {
            refused += 1;
        }
        assert!(Instant::now() < deadline + DEADLINE, "sends still taken");
    }
    // The status the metrics show is published at most every 100 ms: wait for it.
    let deadline = Instant::now() + DEADLINE;
    let body = loop {
        let body = scrape(&a);
        if metric(&body, "pbchat_strict_sends_refused_total") >= 3 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "refused sends not counted: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        metric_f64(&body, "pbchat_witness_lease_remaining_seconds"),
        0.0
    );
    let claims = metric(&body, "pbchat_witness_claims_total");
    // Unanswered renewals go on, one per heartbeat interval.
    let deadline = Instant::now() + DEADLINE;
    while metric(&scrape(&a), "pbchat_witness_claims_total") < claims + 3 {
        assert!(
            Instant::now() < deadline,
            "no more claims while the witness is away"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 18: the witness's own `/metrics` (what it granted, to whom, the holder's lease,
/// its answers) and `/healthz` follow a kill -9 fail-over, and pass `promtool check`.
#[test]
fn the_witness_metrics_follow_a_failover_and_pass_promtool() {
    let metrics = format!("127.0.0.1:{}", free_port(false));
    let (_pair, witness, mut a, b) =
        strict_pair_configured("", &format!("metrics_listen = \"{metrics}\"\n"));
    let value = |body: &str, name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            .parse()
            .unwrap()
    };
    let (code, body) = common::http_status(&metrics, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(value(&body, "pbchat_witness_granted_epoch"), 1.0, "{body}");
    assert!(
        body.contains("pbchat_witness_lease_holder{node=\"a\"} 1\n"),
        "{body}"
    );
    assert!(value(&body, "pbchat_witness_answers_total{verdict=\"granted\"}") >= 1.0);
    let lease = value(&body, "pbchat_witness_holder_lease_seconds");
    assert!(lease > 0.0 && lease <= 0.6, "{lease}");
    let (code, health) = common::http_status(&metrics, "/healthz");
    assert_eq!(code, 200, "{health}");
    assert!(
        health.starts_with("ok witness: epoch 1 held by a"),
        "{health}"
    );
    common::promtool_check(&body);
    a.kill9();
    b.wait_state("primary in epoch 2", |s| {
        state::primary(s) && s["epoch"] == 2
    });
    witness.wait_log("granted epoch 2 to b");
    let body = common::http_status(&metrics, "/metrics").1;
    assert_eq!(value(&body, "pbchat_witness_granted_epoch"), 2.0, "{body}");
    assert!(
        body.contains("pbchat_witness_lease_holder{node=\"b\"} 1\n"),
        "{body}"
    );
    // a's grant of epoch 1 (the state file's first write), then b's of epoch 2.
    assert_eq!(
        value(&body, "pbchat_witness_grant_changes_total"),
        2.0,
        "{body}"
    );
    // A forged datagram is dropped and counted.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(b"PBWC not a claim", witness.addr).unwrap();
    witness.wait_log("rejected a claim");
    let body = common::http_status(&metrics, "/metrics").1;
    assert_eq!(
        value(&body, "pbchat_witness_claims_rejected_total"),
        1.0,
        "{body}"
    );
    assert_eq!(common::http_status(&metrics, "/nope").0, 404);
}
