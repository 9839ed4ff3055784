//! `pbchat-client` in its scripted modes against the real `pbchatd`.

use crate::common;
use crate::common::state;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{Daemon, DEADLINE};

fn client(node: &Daemon) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbchat-client"));
    cmd.arg("--server").arg(node.addr.to_string());
    // Nothing remembered in the runner's ~/.local/state between tests.
    cmd.arg("--no-state");
    cmd.stdin(Stdio::null());
    cmd
}

#[test]
fn send_waits_for_the_ack_and_listen_prints_json_lines() {
    let node = Daemon::start("primary", "", "");
    let mut listener = client(&node)
        .args(["--nick", "ears", "--room", "general", "--listen"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    // The listener must have joined before the send for a live delivery: wait until the
    // node has it as a member.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let suffix = rand_suffix();
        let mut probe = node.hello(
            &format!("probe{}", suffix % 1_000_000),
            &format!("probe-{suffix}"),
        );
        let joined = probe.join("general");
        if joined.members.unwrap().iter().any(|m| m == "ears") {
            break;
        }
        assert!(Instant::now() < deadline, "listener never joined");
    }
    let out = client(&node)
        .args([
            "--nick",
            "bot",
            "--room",
            "general",
            "--send",
            "hello, world",
            "-v",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seq: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let line = lines.next().unwrap().unwrap();
    let frame: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(frame["type"], "msg");
    assert_eq!(frame["body"], "hello, world");
    assert_eq!(frame["from"], "bot");
    assert_eq!(frame["seq"], seq);
    listener.kill().unwrap();
    let _ = listener.wait();

    // --history prints the stored message and exits 0.
    let out = client(&node)
        .args(["--nick", "h", "--room", "general", "--history", "5"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("hello, world"));
}

#[test]
fn send_reports_an_error_frame_and_exits_nonzero() {
    let node = Daemon::start("primary", "max_body_bytes = 10", "");
    let out = client(&node)
        .args([
            "--nick",
            "bot",
            "--room",
            "r",
            "--send",
            "this body is too long",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("too_large"), "{stderr}");
}

#[test]
fn the_client_follows_a_redirect_from_the_backup() {
    let pair = common::PairFiles::new("");
    let primary = pair.start_a();
    let backup = pair.start_b();
    backup.wait_state("following its peer", state::following_its_peer);
    // The backup knows the primary by now (heartbeats): it redirects there. That is normal
    // and, without -v, silent (issue 15: every call printed two stderr lines).
    let out = client(&backup)
        .args(["--nick", "bot", "--room", "r", "--send", "via the backup"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr, "");
    let mut reader = primary.hello("reader", "s");
    reader.send(serde_json::json!({"type":"history","room":"r"}));
    assert_eq!(
        reader.recv_kind("msg").body.as_deref(),
        Some("via the backup")
    );
}

/// Issue 15: with no server, `--send` printed "reconnecting to … (attempt 2)" ten times,
/// then "timed out waiting for the ack", never that it could not connect. Each scripted
/// mode now says so in words, gives up at --timeout-ms and exits 3.
#[test]
fn with_no_server_the_scripted_modes_say_they_cannot_connect_and_give_up_with_exit_3() {
    let (one, two) = (common::free_port(false), common::free_port(false));
    let (one, two) = (format!("127.0.0.1:{one}"), format!("127.0.0.1:{two}"));
    for mode in [
        &["--send", "hello"][..],
        &["--history", "5"][..],
        &["--listen"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_pbchat-client"))
            .args(["--server", &one, "--server", &two, "--room", "r"])
            .args(["--timeout-ms", "3000"])
            .args(mode)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{mode:?}: {stderr}");
        let summary = format!(
            "-- cannot connect to {one} (connection refused), {two} (connection refused); \
             still trying\n"
        );
        let gave_up = "pbchat-client: gave up after 3 s: no server answered\n";
        assert_eq!(stderr, format!("{summary}{gave_up}"), "{mode:?}");
        assert!(out.stdout.is_empty(), "{mode:?}");
    }
}

/// Issue 15: `--send ""` and `--send "   "` exited 0 and posted a blank message, which the
/// interactive client never sends.
#[test]
fn a_blank_send_is_refused_before_connecting_with_exit_2() {
    // Nothing listens there: a refusal that came after a connect attempt would not be 2.
    let nowhere = format!("127.0.0.1:{}", common::free_port(false));
    for body in ["", "   ", " \t "] {
        let out = Command::new(env!("CARGO_BIN_EXE_pbchat-client"))
            .args(["--server", &nowhere, "--room", "r", "--send", body])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body:?}: {stderr}");
        assert!(stderr.contains("--send: the message is blank"), "{stderr}");
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A `--listen` client with its state in `dir`, its stdout lines on a channel.
fn remembering_listener(
    node: &Daemon,
    dir: &std::path::Path,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pbchat-client"))
        .arg("--server")
        .arg(node.addr.to_string())
        .arg("--state-dir")
        .arg(dir)
        .args(["--nick", "ears", "--room", "general", "--listen"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn send(node: &Daemon, body: &str) {
    let out = client(node)
        .args(["--nick", "bot", "--room", "general", "--send", body])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bodies(rx: &std::sync::mpsc::Receiver<String>, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let line = rx.recv_timeout(DEADLINE).expect("a message line");
            let frame: serde_json::Value = serde_json::from_str(&line).unwrap();
            frame["body"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Issue 18: a restarted client forgot what it had shown. With its state file it resumes
/// each room after the last message shown: no gap, no repeat, even after kill -9.
#[test]
fn a_restarted_listener_prints_exactly_what_it_missed() {
    let node = Daemon::start("primary", "", "");
    let dir = tempfile::tempdir().unwrap();
    let (mut first, lines) = remembering_listener(&node, dir.path());
    // Joined (the node names it a member) before the sends, so they arrive live.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let suffix = rand_suffix();
        let mut probe = node.hello(&format!("p{}", suffix % 1_000_000), &format!("p-{suffix}"));
        if probe
            .join("general")
            .members
            .unwrap()
            .iter()
            .any(|m| m == "ears")
        {
            break;
        }
        assert!(Instant::now() < deadline, "listener never joined");
    }
    for body in ["one", "two", "three"] {
        send(&node, body);
    }
    assert_eq!(bodies(&lines, 3), ["one", "two", "three"]);
    // The state file says seq 3 within its write interval; then the client dies outright.
    let file = std::fs::read_dir(dir.path())
        .ok()
        .and_then(|mut entries| entries.next())
        .map(|entry| entry.unwrap().path());
    let deadline = Instant::now() + DEADLINE;
    let state = loop {
        let text = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
            .find(|t| t.contains("\"seq\":3"));
        if let Some(text) = text {
            break text;
        }
        assert!(Instant::now() < deadline, "no state with seq 3: {file:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let session = state["session"].as_str().unwrap().to_string();
    first.kill().unwrap();
    let _ = first.wait();
    for body in ["four", "five"] {
        send(&node, body);
    }
    let (mut second, lines) = remembering_listener(&node, dir.path());
    assert_eq!(bodies(&lines, 2), ["four", "five"]);
    // Nothing else comes: one more message is the next line.
    send(&node, "six");
    assert_eq!(bodies(&lines, 1), ["six"]);
    // SIGTERM writes the state at once, with the same session.
    common::signal_pid(second.id(), "TERM");
    let _ = second.wait();
    let text = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .find(|t| t.contains("\"seq\":6"))
        .expect("state written at exit");
    assert!(text.contains(&session), "{text}");
}

/// Issue 18: `--token` shows the secret in `ps`; `--token-file` reads it from an
/// owner-only file and refuses one that group or others may read.
#[test]
fn a_token_file_readable_by_others_is_refused_with_exit_2() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pbchat-client"))
        .args(["--server", "127.0.0.1:1", "--room", "r", "--send", "x"])
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mode 0644 lets group or others read") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}
