//! Operations, end to end through the real binaries: systemd notifications, the admin
//! socket and `pbchatctl`, metrics, syslog. Every wait is on a condition with a deadline.

use crate::common;
use crate::common::state;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wait_until;
use common::{ctl, http_get, http_status, pbchatctl, status_json, Daemon, PairFiles, DEADLINE};
use serde_json::Value;

const ROOM: &str = "general";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A standalone node's config in `dir` with `extra` TOML appended (new sections only).
fn standalone_config(dir: &Path, extra: &str) -> PathBuf {
    let path = common::write_config(dir, "primary", "", "");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(file, "\n{extra}").unwrap();
    path
}

/// pbchatd run by hand (with an environment of our choosing); stderr lines are collected.
struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    fn start(config: &Path, env: &[(&str, &str)]) -> Process {
        let mut command = common::pbchatd();
        command
            .arg("-c")
            .arg(config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start pbchatd");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("  pbchatd| {line}");
                    log.lock().unwrap().push(line);
                }
            });
        }
        Process { child, log }
    }

    fn signal(&self, name: &str) {
        common::signal_pid(self.child.id(), name);
    }

    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "pbchatd did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Datagrams arriving on `socket` until `done` says enough, or the deadline.
fn collect(socket: &UnixDatagram, seen: &mut Vec<String>, mut done: impl FnMut(&[String]) -> bool) {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let mut buf = vec![0u8; 4096];
    while !done(seen) {
        assert!(
            Instant::now() < deadline,
            "timed out; datagrams so far: {seen:?}"
        );
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(text(&buf[..n]));
        }
    }
}

#[test]
fn systemd_hears_ready_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let config = standalone_config(dir.path(), "");
    let notify_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).unwrap();
    let mut node = Process::start(
        &config,
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut seen = Vec::new();
    collect(&socket, &mut seen, |seen| {
        seen.iter().filter(|d| *d == "WATCHDOG=1").count() >= 2
            && seen.iter().any(|d| d.starts_with("READY=1"))
    });
    let ready = seen.iter().find(|d| d.starts_with("READY=1")).unwrap();
    assert!(
        ready.contains("\nSTATUS=primary epoch 1, head 0, 0 clients"),
        "{ready:?}"
    );
    // A client changes the STATUS line.
    let mut client = common::hello_at(listen_address(&node), "alice", "s-alice");
    client.join(ROOM);
    collect(&socket, &mut seen, |seen| {
        seen.iter()
            .any(|d| d.contains("STATUS=primary epoch 1, head 0, 1 clients"))
    });
    node.signal("TERM");
    collect(&socket, &mut seen, |seen| {
        seen.iter().any(|d| d.starts_with("STOPPING=1"))
    });
    assert_eq!(node.wait_exit(), Some(0));
}

/// The client address from a hand-run node's "clients on" line.
fn listen_address(node: &Process) -> std::net::SocketAddr {
    let mut found = None;
    wait_until("the node to serve", || {
        found = node
            .log
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.split("clients on ").nth(1).map(|a| a.trim().to_string()));
        found.is_some()
    });
    found.unwrap().parse().unwrap()
}

fn start_pair(pair: &PairFiles) -> (Daemon, Daemon) {
    let a = pair.start_a();
    let b = pair.start_b();
    b.wait_state("following its peer", state::following_its_peer);
    (a, b)
}

/// Waits until `config`'s node reports a caught-up, synchronous primary at `head` or later
/// with a linked backup.
fn wait_in_sync(config: &Path, head: u64) -> Value {
    common::wait_status(
        config,
        "a synchronous primary with a caught-up backup",
        state::in_sync(head),
    )
}

#[test]
fn pbchatctl_status_json_shows_both_roles_epochs_and_no_lag_after_traffic() {
    let pair = PairFiles::new("");
    let (a, _b) = start_pair(&pair);
    let mut c = a.hello("alice", "s-alice");
    c.join(ROOM);
    let mut seq = 0;
    for i in 0..20 {
        seq = c.send_acked(ROOM, &format!("m-{i}"), "hello");
    }
    let primary = wait_in_sync(&pair.config_a, seq);
    assert_eq!(primary["node"], "a");
    assert_eq!(primary["head"], seq);
    assert_eq!(primary["peer"]["id"], "b");
    assert_eq!(primary["peer"]["reachable"], true);
    assert_eq!(primary["replication_mode"], "sync");
    assert_eq!(primary["clients"], 1);
    assert_eq!(primary["rooms"], 1);
    assert!(primary["counters"]["commits_total"].as_u64().unwrap() >= 20);
    assert!(primary["heartbeats"]["received"].as_u64().unwrap() > 0);
    let epoch = primary["epoch"].as_u64().unwrap();
    let mut backup = None;
    wait_until("the backup to hold every message", || {
        backup = status_json(&pair.config_b);
        backup.as_ref().is_some_and(|s| s["last_seq"] == seq)
    });
    let backup = backup.unwrap();
    assert_eq!(backup["role"], "backup");
    assert_eq!(backup["epoch"], epoch);
    assert_eq!(backup["peer"]["id"], "a");
    assert_eq!(backup["peer"]["primary"], true);
    assert_eq!(backup["peer"]["link"], true);
    // People get the same answers in aligned lines.
    let out = ctl(&pair.config_a, &["status"]);
    assert!(out.status.success());
    let human = text(&out.stdout);
    assert!(
        human.contains(&format!("role:        primary (epoch {epoch})")),
        "{human}"
    );
    assert!(
        human.contains(&format!("backup:      b, acked {seq}, lag 0, heard ")),
        "{human}"
    );
    assert!(human.contains("degraded:    no"), "{human}");
}

#[test]
fn pbchatctl_failover_moves_the_primary_role_to_the_backup() {
    let pair = PairFiles::new("");
    let (a, b) = start_pair(&pair);
    let mut c = a.hello("alice", "s-alice");
    c.join(ROOM);
    let seq = c.send_acked(ROOM, "m-0", "before");
    wait_in_sync(&pair.config_a, seq);
    // Asking the backup is refused, and says where the primary is.
    let refused = ctl(&pair.config_b, &["failover"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("this node is backup"),
        "{}",
        text(&refused.stderr)
    );
    let out = ctl(&pair.config_a, &["failover"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ok: handed over to b"),
        "{}",
        text(&out.stdout)
    );
    b.wait_log("planned hand-over from the primary");
    wait_until("b to serve as primary", || {
        status_json(&pair.config_b).is_some_and(|s| s["role"] == "primary")
    });
    let a_status = status_json(&pair.config_a).unwrap();
    assert_eq!(a_status["role"], "backup");
    assert_eq!(a_status["last_change"]["what"], "handed over");
    let b_status = status_json(&pair.config_b).unwrap();
    assert_eq!(b_status["last_change"]["what"], "promoted");
    assert_eq!(
        b_status["last_change"]["reason"],
        "planned hand-over from the primary"
    );
    assert_eq!(b_status["counters"]["failovers_total"], 1);
}

#[test]
fn pbchatctl_status_after_a_kill9_fail_over_shows_when_and_why() {
    let pair = PairFiles::new("");
    let (mut a, b) = start_pair(&pair);
    let mut c = a.hello("alice", "s-alice");
    c.join(ROOM);
    let seq = c.send_acked(ROOM, "m-0", "before");
    wait_in_sync(&pair.config_a, seq);
    a.kill9();
    b.wait_state("primary", state::primary);
    let mut human = String::new();
    wait_until("b's status to show the promotion", || {
        let out = ctl(&pair.config_b, &["status"]);
        human = text(&out.stdout);
        out.status.success() && human.contains("role:        primary")
    });
    eprintln!("pbchatctl status on the new primary:\n{human}");
    let change = human
        .lines()
        .find(|l| l.starts_with("last change:"))
        .unwrap_or_else(|| panic!("{human}"));
    assert!(
        change.contains("Z promoted to primary in epoch "),
        "{change}"
    );
    assert!(change.contains("(peer silent for "), "{change}");
    assert!(
        human.contains("UNREACHABLE") || human.contains("not connected"),
        "{human}"
    );
    let json = status_json(&pair.config_b).unwrap();
    assert!(
        json["last_change"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("peer silent for "),
        "{json}"
    );
    // The dead node cannot answer: pbchatctl says so and exits 3.
    let down = ctl(&pair.config_a, &["status"]);
    assert_eq!(down.status.code(), Some(3));
    let message = text(&down.stderr);
    assert!(message.contains("cannot reach pbchatd at "), "{message}");
    assert!(message.contains("is it running?"), "{message}");
}

#[test]
fn admin_socket_is_owner_only_survives_kill9_and_pbchatctl_fails_clearly_when_down() {
    let mut node = Daemon::start("primary", "", "");
    let socket = node.dir.join("data").join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");
    let out = pbchatctl(&["--socket", socket.to_str().unwrap(), "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // kill -9 leaves the socket file behind; the next start replaces it.
    node.kill9();
    assert!(socket.exists());
    let down = pbchatctl(&["--socket", socket.to_str().unwrap(), "status"]);
    assert_eq!(down.status.code(), Some(3));
    assert!(
        text(&down.stderr).starts_with(&format!(
            "pbchatctl: cannot reach pbchatd at {}: ",
            socket.display()
        )),
        "{}",
        text(&down.stderr)
    );
    node.restart();
    let out = ctl(&node.config_path, &["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A reload answers with what it did.
    let out = ctl(&node.config_path, &["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("ok: reloaded "),
        "{}",
        text(&out.stdout)
    );
    // A clean stop removes it.
    node.signal(15);
    assert_eq!(node.wait_exit(), Some(0));
    assert!(!socket.exists());
}

fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_endpoint_counts_commits() {
    let dir = tempfile::tempdir().unwrap().keep();
    let config = standalone_config(&dir, "[metrics]\nlisten = \"127.0.0.1:0\"");
    let node = Daemon::start_with(dir, config);
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
    let response = http_get(&address, "/metrics");
    assert!(response.starts_with("HTTP/1.0 200 OK\r\n"), "{response}");
    assert!(response.contains("Content-Type: text/plain; version=0.0.4"));
    let body = response.split("\r\n\r\n").nth(1).unwrap().to_string();
    assert!(
        body.contains("# TYPE pbchat_commits_total counter"),
        "{body}"
    );
    assert_eq!(metric(&body, "pbchat_role_primary"), 1);
    let before = metric(&body, "pbchat_commits_total");
    let mut c = node.hello("alice", "s-alice");
    c.join(ROOM);
    c.send_acked(ROOM, "m-0", "counted");
    wait_until("commits_total to grow", || {
        let response = http_get(&address, "/metrics");
        metric(&response, "pbchat_commits_total") == before + 1
            && metric(&response, "pbchat_clients") == 1
            && metric(&response, "pbchat_client_bytes_sent_total") > 0
    });
    assert!(http_get(&address, "/nope").starts_with("HTTP/1.0 404"));
}

#[test]
fn syslog_target_sends_lines_with_the_facility_and_falls_back_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let syslog_path = dir.path().join("log.sock");
    let syslog = UnixDatagram::bind(&syslog_path).unwrap();
    let config = standalone_config(dir.path(), "");
    let text_before = std::fs::read_to_string(&config).unwrap();
    let with_syslog = text_before.replace(
        "[logging]\n",
        &format!(
            "[logging]\ntarget = \"syslog\"\nfacility = \"local3\"\nsyslog_socket = \"{}\"\n",
            syslog_path.display()
        ),
    );
    std::fs::write(&config, &with_syslog).unwrap();
    let mut node = Process::start(&config, &[]);
    let mut seen = Vec::new();
    collect(&syslog, &mut seen, |seen| {
        seen.iter().any(|d| d.contains("clients on "))
    });
    let line = seen.iter().find(|d| d.contains("clients on ")).unwrap();
    // local3 (19) * 8 + info (6) = 158.
    assert!(line.starts_with("<158>"), "{line}");
    assert!(
        line.contains("pbchatd[") && line.contains("]: [a] node a serving as primary"),
        "{line}"
    );
    node.signal("TERM");
    assert_eq!(node.wait_exit(), Some(0));
    drop(node);

    // Without a syslog socket, one warning, then stderr as usual.
    drop(syslog);
    std::fs::remove_file(&syslog_path).unwrap();
    let node = Daemon::start_with(dir.path().to_path_buf(), config);
    assert!(node.log_contains("logging to stderr instead"));
    drop(node);
}

/// The level of a node's stderr line (`2026-...Z INFO  pbchatd[a]: ...`).
fn level(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or("")
}

/// Issue 15: while a restarted pair picked its primary, each node logged `replication link
/// from Some(127.0.0.1:43738): this node is not the primary` at info several times a
/// second, and a normal first start logged its promotion as a warning.
#[test]
fn a_restarted_pair_picks_its_primary_quietly_and_only_a_fail_over_warns() {
    let pair = PairFiles::new("");
    let (mut a, mut b) = start_pair(&pair);
    let first_start = |node: &Daemon| {
        node.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("promoted to primary"))
            .cloned()
    };
    let promoted = first_start(&a).expect("a promoted at its first start");
    assert_eq!(level(&promoted), "INFO", "{promoted}");
    // Both stop and start again: both start as backups and pick one between them.
    a.kill9();
    b.kill9();
    let a = pair.start_a();
    let b = pair.start_b();
    wait_until("one of them to take over", || {
        a.log_contains("promoted to primary") || b.log_contains("promoted to primary")
    });
    let (primary, backup) = if a.log_contains("promoted to primary") {
        (a, b)
    } else {
        (b, a)
    };
    backup.wait_state("following its peer", state::following_its_peer);
    for node in [&primary, &backup] {
        for line in node.log.lock().unwrap().iter() {
            assert!(!line.contains("Some("), "Rust debug formatting: {line}");
            if line.contains("not the primary") || line.contains("not primary") {
                assert_eq!(level(line), "DEBUG", "{line}");
            }
        }
    }
    let promoted = first_start(&primary).unwrap();
    assert_eq!(level(&promoted), "INFO", "picking a primary: {promoted}");
    // Losing the primary is the one promotion that warns.
    let mut primary = primary;
    primary.kill9();
    backup.wait_state("primary", state::primary);
    let promoted = first_start(&backup).unwrap();
    assert_eq!(level(&promoted), "WARN", "a fail-over: {promoted}");
    assert!(promoted.contains("(peer silent for "), "{promoted}");
}

/// Issue 15: `pbchatctl --help` called itself "A highly available primary-backup chat
/// daemon"; `role` and `pid` answer scripts in one word.
#[test]
fn pbchatctl_says_what_it_is_and_answers_role_and_pid() {
    let help = pbchatctl(&["--help"]);
    let first = text(&help.stdout).lines().next().unwrap_or("").to_string();
    assert!(first.starts_with("Ask a running pbchatd"), "{first}");
    let pair = PairFiles::new("");
    let (a, b) = start_pair(&pair);
    let one_word = |config: &Path, request: &str| {
        let out = ctl(config, &[request]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(one_word(&pair.config_a, "role"), "primary\n");
    assert_eq!(one_word(&pair.config_b, "role"), "backup\n");
    assert_eq!(one_word(&pair.config_a, "pid"), format!("{}\n", a.pid()));
    assert_eq!(one_word(&pair.config_b, "pid"), format!("{}\n", b.pid()));
    let status = text(&ctl(&pair.config_a, &["status"]).stdout);
    assert!(
        status.contains(&format!("pid:         {}\n", a.pid())),
        "{status}"
    );
}

/// Issue 18 item 5: `pbchatctl NAME COMMAND` finds `$PBCHAT_CONFIG_DIR/NAME.toml` (as
/// `pbchat@NAME` runs /etc/pbchat/NAME.toml), and every command answers `--json`.
#[test]
fn pbchatctl_finds_a_node_by_name_and_answers_json_to_every_command() {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::rename(
        common::write_config(&dir, "primary", "", ""),
        dir.join("primary.toml"),
    )
    .unwrap();
    let node = Daemon::start_with(dir.clone(), dir.join("primary.toml"));
    let named = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pbchatctl"))
            .args(args)
            .env("PBCHAT_CONFIG_DIR", &dir)
            .output()
            .expect("run pbchatctl")
    };
    let out = named(&["primary", "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("role:"), "{}", text(&out.stdout));
    let json = |args: &[&str]| -> Value {
        let out = named(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("--json is JSON")
    };
    assert_eq!(json(&["primary", "status", "--json"])["role"], "primary");
    assert_eq!(json(&["primary", "--json", "role"])["role"], "primary");
    assert_eq!(json(&["primary", "pid", "--json"])["pid"], node.pid());
    let reload = json(&["primary", "reload", "--json"]);
    assert_eq!(reload["ok"], true);
    assert!(
        reload["message"]
            .as_str()
            .unwrap()
            .starts_with("ok: reloaded "),
        "{reload}"
    );
    // A refusal: stderr and exit 1, also with --json.
    let out = named(&["primary", "failover", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("pbchatctl: fail-over refused: this node has no peer"),
        "{}",
        text(&out.stderr)
    );
    // No such node, or a path for a name: exit 2, naming what was looked for.
    let out = named(&["backup", "status"]);
    assert_eq!(out.status.code(), Some(2));
    let expected = dir.join("backup.toml").display().to_string();
    assert!(
        text(&out.stderr).contains(&expected),
        "{}",
        text(&out.stderr)
    );
    let out = named(&["../primary", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("-c FILE"),
        "{}",
        text(&out.stderr)
    );
    // The help says what the exit codes mean.
    let help = text(&pbchatctl(&["--help"]).stdout);
    assert!(help.contains("Exit status:"), "{help}");
    assert!(help.contains("3  the node cannot be reached"), "{help}");
}

/// Issue 18 item 5: `pbchatctl log-level LEVEL` changes the running node's level at once and
/// does not outlive a reload (which sets the file's `logging.level` again).
#[test]
fn pbchatctl_log_level_applies_at_once_until_the_next_reload() {
    let node = Daemon::start("primary", "", "");
    // The file says debug; the reload's "re-reading" line is at INFO.
    let out = ctl(&node.config_path, &["log-level", "warn"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .starts_with("ok: log level debug -> warn by pbchatctl, until the next reload"),
        "{}",
        text(&out.stdout)
    );
    node.wait_log("log level debug -> warn by pbchatctl");
    // At warn, this reload's INFO line is not written; the reload sets debug again, so
    // the next one's is. The log is in order: once the second shows, the first would have.
    let reloaded = |n: usize| {
        let out = ctl(&node.config_path, &["reload"]);
        assert!(out.status.success(), "reload {n}: {}", text(&out.stderr));
    };
    reloaded(1);
    reloaded(2);
    node.wait_log("pbchatctl reload: re-reading");
    assert_eq!(node.log_count("pbchatctl reload: re-reading"), 1);
    // A level that is not one: a usage error, the node not asked.
    let out = ctl(&node.config_path, &["log-level", "loud"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = ctl(&node.config_path, &["log-level", "info", "--json"]);
    let value: Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert_eq!(value["ok"], true);
}

/// Issue 18 item 5: `pbchatctl clients` and `rooms` list who is connected, from where, in
/// which rooms, since when.
#[test]
fn pbchatctl_lists_clients_and_rooms() {
    let node = Daemon::start("primary", "", "");
    let mut alice = node.hello("alice", "s-a");
    alice.send(serde_json::json!({"type":"join","room":ROOM}));
    assert_eq!(alice.recv().kind, "joined");
    let _bob = node.hello("bob", "s-b");
    let out = ctl(&node.config_path, &["clients"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(lines[0].starts_with("alice\t127.0.0.1:"), "{listed}");
    assert!(lines[0].contains(&format!("\t{ROOM}\t20")), "{listed}");
    assert!(lines[1].starts_with("bob\t127.0.0.1:"), "{listed}");
    assert!(lines[1].contains("\t-\t20"), "{listed}");
    let out = ctl(&node.config_path, &["clients", "--json"]);
    let value: Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert_eq!(value["clients"][0]["nick"], "alice");
    assert_eq!(value["clients"][0]["rooms"][0], ROOM);
    assert_eq!(value["more"], 0);
    let out = ctl(&node.config_path, &["rooms"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{ROOM}\t1\n"));
    let out = ctl(&node.config_path, &["rooms", "--json"]);
    let value: Value = serde_json::from_slice(&out.stdout).expect("--json is JSON");
    assert_eq!(value["rooms"][0]["members"], 1);
}

/// Issue 18 item 5: `pbchatctl kick NICK` closes that client's connection with a `kicked`
/// error frame that says why; the others stay.
#[test]
fn pbchatctl_kick_closes_one_client_with_the_reason() {
    let node = Daemon::start("primary", "", "");
    let mut alice = node.hello("alice", "s-a");
    let mut bob = node.hello("bob", "s-b");
    let out = ctl(
        &node.config_path,
        &["kick", "alice", "--reason", "flooding general"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "ok: closed the connection of alice (flooding general)\n"
    );
    let frame = alice.recv();
    assert_eq!(frame.kind, "error");
    assert_eq!(frame.code.as_deref(), Some("kicked"));
    assert_eq!(
        frame.message.as_deref(),
        Some("closed by the operator: flooding general")
    );
    assert!(alice.closed());
    bob.send(serde_json::json!({"type":"ping"}));
    assert_eq!(bob.recv().kind, "pong");
    node.wait_log("client alice: kicked by the operator: flooding general");
    // A reason may end in "json": it is still text, and the answer too.
    let mut carol = node.hello("carol", "s-c");
    let out = ctl(
        &node.config_path,
        &["kick", "carol", "--reason", "bad json"],
    );
    assert_eq!(
        text(&out.stdout),
        "ok: closed the connection of carol (bad json)\n"
    );
    assert_eq!(
        carol.recv().message.as_deref(),
        Some("closed by the operator: bad json")
    );
    // No such nick: refused, exit 1. A reason that cannot be one line: exit 2.
    let out = ctl(&node.config_path, &["kick", "alice"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("kick alice: no connected client has that nick"),
        "{}",
        text(&out.stderr)
    );
    let long = "x".repeat(300);
    let out = ctl(&node.config_path, &["kick", "bob", "--reason", &long]);
    assert_eq!(out.status.code(), Some(2));
    let out = ctl(&node.config_path, &["kick", "bob", "--reason", "a\nb"]);
    assert_eq!(out.status.code(), Some(2));
    bob.send(serde_json::json!({"type":"ping"}));
    assert_eq!(bob.recv().kind, "pong");
}

/// Appends `text` (new sections) to a config file.
fn append_config(config: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(config)
        .unwrap();
    writeln!(file, "\n{text}").unwrap();
}

/// `GET path` on a metrics listener: the status code and the body.
/// Issue 18: load balancers ask `/role` (200 only on the serving primary) and `/healthz`
/// (200 on a working node of either role); `hooks.role_change` runs with `ROLE EPOCH PEER`
/// on every role change. A kill -9 of the primary moves the 200 and runs b's hook.
#[test]
fn role_endpoint_and_role_change_hook_follow_a_kill9_failover() {
    let pair = PairFiles::new("");
    let metrics_a = format!("127.0.0.1:{}", common::free_port(false));
    let metrics_b = format!("127.0.0.1:{}", common::free_port(false));
    let hook = pair.dir.join("role-change.sh");
    let calls = pair.dir.join("role-changes.txt");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$PBCHAT_NODE $*\" >> '{}'\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (config, metrics) in [(&pair.config_a, &metrics_a), (&pair.config_b, &metrics_b)] {
        append_config(
            config,
            &format!(
                "[metrics]\nlisten = \"{metrics}\"\n[hooks]\nrole_change = \"{}\"",
                hook.display()
            ),
        );
    }
    let hook_lines = || std::fs::read_to_string(&calls).unwrap_or_default();
    let (mut a, b) = start_pair(&pair);
    wait_until("a's /role to answer 200", || {
        let (code, body) = http_status(&metrics_a, "/role");
        code == 200 && body.starts_with("primary epoch ")
    });
    let (code, body) = http_status(&metrics_b, "/role");
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("backup epoch "), "{body}");
    let (code, body) = http_status(&metrics_a, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ok primary epoch "), "{body}");
    let (code, body) = http_status(&metrics_b, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ok backup epoch "), "{body}");
    // Each node ran its hook at start with its first role.
    wait_until("the hooks of the start", || {
        let lines = hook_lines();
        lines
            .lines()
            .any(|l| l.starts_with("a primary ") && l.ends_with(" b"))
            && lines
                .lines()
                .any(|l| l.starts_with("b backup ") && l.ends_with(" a"))
    });
    a.kill9();
    b.wait_state("primary", state::primary);
    wait_until("b's /role to answer 200", || {
        let (code, body) = http_status(&metrics_b, "/role");
        code == 200 && body.starts_with("primary epoch ")
    });
    let (code, body) = http_status(&metrics_b, "/healthz");
    assert_eq!(code, 200, "{body}");
    let epoch: u64 = body
        .strip_prefix("ok primary epoch ")
        .and_then(|e| e.trim().parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    wait_until("b's hook to say it is primary", || {
        hook_lines().contains(&format!("b primary {epoch} a\n"))
    });
    b.wait_log(&format!("primary {epoch} a: exited 0 in "));
}

/// Issue 18: latency histograms in seconds, `pbchat_build_info` and
/// `process_start_time_seconds` on a real primary with its backup, and the whole scrape
/// passes `promtool check metrics` (Debian's `prometheus` package; CI installs it).
#[test]
fn metrics_have_latency_histograms_build_info_and_pass_promtool() {
    let pair = PairFiles::new("");
    let metrics_a = format!("127.0.0.1:{}", common::free_port(false));
    append_config(
        &pair.config_a,
        &format!("[metrics]\nlisten = \"{metrics_a}\""),
    );
    let (a, _b) = start_pair(&pair);
    wait_in_sync(&pair.config_a, 0);
    let mut alice = a.hello("alice", "s-alice");
    alice.join(ROOM);
    for i in 0..5 {
        alice.send_acked(ROOM, &format!("m-{i}"), "timed");
    }
    let count = |body: &str, name: &str| metric(body, &format!("{name}_count"));
    let mut body = String::new();
    wait_until("every histogram to have samples", || {
        body = http_status(&metrics_a, "/metrics").1;
        count(&body, "pbchat_send_ack_seconds") >= 5
            && count(&body, "pbchat_log_fsync_seconds") > 0
            && count(&body, "pbchat_replication_round_trip_seconds") > 0
            && count(&body, "pbchat_delivery_queue_seconds") > 0
    });
    assert!(
        body.contains("# TYPE pbchat_send_ack_seconds histogram\n")
            && body.contains("pbchat_send_ack_seconds_bucket{le=\"+Inf\"} "),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "pbchat_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );
    let started: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("process_start_time_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now && now - started < 600.0,
        "{started} vs {now}"
    );
    common::promtool_check(&body);
}

/// pbchatd with stderr on a pipe of the test's own and `JOURNAL_STREAM` set to `stream`
/// (`None`: the pipe's own device and inode, as systemd sets it for the journal's stream).
fn start_on_stream(config: &Path, stream: Option<&str>) -> Process {
    use std::os::unix::fs::MetadataExt;
    let (reader, writer) = std::io::pipe().unwrap();
    let meta = std::fs::File::from(std::os::fd::OwnedFd::from(writer.try_clone().unwrap()))
        .metadata()
        .unwrap();
    let own = format!("{}:{}", meta.dev(), meta.ino());
    let child = common::pbchatd()
        .arg("-c")
        .arg(config)
        .env_remove("NOTIFY_SOCKET")
        .env("JOURNAL_STREAM", stream.unwrap_or(&own))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer)
        .spawn()
        .expect("start pbchatd");
    let log = Arc::new(Mutex::new(Vec::new()));
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                eprintln!("  pbchatd| {line}");
                log.lock().unwrap().push(line);
            }
        });
    }
    Process { child, log }
}

fn process_line(node: &Process, needle: &str) -> String {
    let mut found = None;
    wait_until(needle, || {
        found = node
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned();
        found.is_some()
    });
    found.unwrap()
}

/// Issue 18: under systemd every line reached the journal at priority "info" (`journalctl
/// -p warning` showed nothing although the node had warned) and carried a second timestamp.
#[test]
fn on_the_journal_stream_lines_carry_their_priority_and_no_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let config = standalone_config(dir.path(), "");
    let original = std::fs::read_to_string(&config).unwrap();
    let mut node = start_on_stream(&config, None);
    let serving = process_line(&node, "clients on ");
    assert!(serving.starts_with("<6>[a] "), "{serving}");
    // A change that takes a restart is a warning; a broken file is an error.
    std::fs::write(
        &config,
        original.replace("[log]\n", "[log]\nfsync = \"always\"\n"),
    )
    .unwrap();
    node.signal("HUP");
    let warning = process_line(&node, "that takes a restart");
    assert!(warning.starts_with("<4>[a] reload of "), "{warning}");
    std::fs::write(
        &config,
        original.replace("[client]\n", "[client]\nmax_clients = \"lots\"\n"),
    )
    .unwrap();
    node.signal("HUP");
    let error = process_line(&node, "reload refused");
    assert!(error.starts_with("<3>[a] "), "{error}");
    for line in node.log.lock().unwrap().iter() {
        assert!(line.starts_with('<'), "a line without its priority: {line}");
    }
    node.signal("TERM");
    assert_eq!(node.wait_exit(), Some(0));
    drop(node);

    // A variable inherited with stderr elsewhere (a child of a service, a shell started
    // from one): the readable form, with its timestamp and level.
    std::fs::write(&config, &original).unwrap();
    let node = start_on_stream(&config, Some("1:1"));
    let serving = process_line(&node, "clients on ");
    assert_eq!(level(&serving), "INFO", "{serving}");
    assert!(serving.starts_with("20"), "{serving}");
}

/// Issue 18: `systemctl reload` (then `kill -HUP`) answered "Reloaded" with rc 0 after
/// `max_clients = "lots"`, the error only in the journal. ExecReload= now runs `pbchatctl
/// reload`, which fails with the file, the key and the problem.
#[test]
fn pbchatctl_reload_fails_on_a_bad_file_and_applies_a_good_one() {
    let node = Daemon::start("primary", "max_clients = 100", "");
    let good = std::fs::read_to_string(&node.config_path).unwrap();
    std::fs::write(
        &node.config_path,
        good.replace("max_clients = 100", "max_clients = \"lots\""),
    )
    .unwrap();
    let out = ctl(&node.config_path, &["reload"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("pbchatctl: "), "{stderr}");
    assert!(
        stderr.contains(&node.config_path.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("max_clients"), "{stderr}");
    assert!(stderr.contains("invalid type: string \"lots\""), "{stderr}");
    assert!(stderr.contains("not reloaded"), "{stderr}");
    assert!(text(&out.stdout).is_empty());
    // The node runs on, with the config it had.
    let mut c = node.hello("alice", "s");
    c.send(serde_json::json!({"type":"ping"}));
    assert_eq!(c.recv().kind, "pong");
    // A value the parser takes but validation refuses names its key the same way.
    std::fs::write(
        &node.config_path,
        good.replace("max_clients = 100", "max_clients = 0"),
    )
    .unwrap();
    let out = ctl(&node.config_path, &["reload"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("client.max_clients"),
        "{}",
        text(&out.stderr)
    );
    // Fixed: exit 0, and the answer says what changed.
    std::fs::write(
        &node.config_path,
        good.replace("max_clients = 100", "max_clients = 200"),
    )
    .unwrap();
    let out = ctl(&node.config_path, &["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("ok: reloaded "), "{stdout}");
    assert!(stdout.contains("client.max_clients 100 -> 200"), "{stdout}");
    node.wait_log("client.max_clients 100 -> 200");
    // A key that takes a restart is named with it, and the node keeps its running value:
    // the next reload names it again, while what applied is not news any more.
    std::fs::write(
        &node.config_path,
        good.replace(
            "max_clients = 100",
            "max_clients = 200\nidle_timeout_ms = 30000",
        ),
    )
    .unwrap();
    let restart = "client.idle_timeout_ms changed, which takes a restart";
    for round in 1..=2 {
        let out = ctl(&node.config_path, &["reload"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(stdout.contains(restart), "reload {round}: {stdout}");
        assert!(
            !stdout.contains("client.max_clients"),
            "reload {round}: {stdout}"
        );
    }
}
