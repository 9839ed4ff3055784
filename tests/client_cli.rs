//! `pbchat-client` in its scripted modes against the real `pbchatd`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{Daemon, DEADLINE};

fn client(node: &Daemon) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbchat-client"));
    cmd.arg("--server").arg(node.addr.to_string());
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
    backup.wait_log("following the primary");
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
