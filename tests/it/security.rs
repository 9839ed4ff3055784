//! Client authentication and abuse limits, against the real `pbchatd` binary over TCP.
//! See docs/security.md.

use crate::common;

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{pbchatd, write_config, Client, Daemon, DEADLINE};
use serde_json::json;

/// The users-file line for `nick` with `token`, as `pbchatd --hash-token` prints it.
fn hash_line(nick: &str, token: &str) -> String {
    use std::io::Write;
    let mut child = pbchatd()
        .arg("--hash-token")
        .arg(nick)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with(&format!("{nick}:$argon2id$")), "{line}");
    line
}

fn write_users(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.concat()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A node with `auth.mode = "token"` and the given users; returns it and its users file.
fn start_with_auth(users: &[String], client_extra: &str) -> (Daemon, PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let users_file = dir.join("users");
    write_users(&users_file, users);
    let auth = format!(
        "\n[auth]\nmode = \"token\"\nusers_file = \"{}\"\nfailure_delay_ms = 300\n",
        users_file.display()
    );
    let config = write_config(&dir, "primary", client_extra, &auth);
    (Daemon::start_with(dir, config), users_file)
}

fn hello(client: &mut Client, nick: &str, session: &str, token: Option<&str>) {
    let mut frame = json!({"type":"hello","version":1,"nick":nick,"session":session});
    if let Some(token) = token {
        frame["token"] = json!(token);
    }
    client.send(frame);
}

/// Says hello with `token`; returns the answer's kind or error code, and how long it took.
fn try_login(node: &Daemon, nick: &str, session: &str, token: Option<&str>) -> (String, Duration) {
    let mut client = node.client();
    let started = Instant::now();
    hello(&mut client, nick, session, token);
    let frame = client.recv();
    let took = started.elapsed();
    match frame.kind.as_str() {
        "error" => {
            assert!(client.closed(), "a refused hello closes the connection");
            (frame.code.unwrap(), took)
        }
        kind => (kind.to_string(), took),
    }
}

#[test]
fn without_a_valid_token_a_client_gets_unauthorized_after_a_delay_and_no_welcome() {
    let (node, _) = start_with_auth(&[hash_line("alice", "open sesame")], "");
    for token in [Some("wrong"), None, Some("")] {
        let (answer, took) = try_login(&node, "alice", "s1", token);
        assert_eq!(answer, "unauthorized", "token {token:?}");
        assert!(took >= Duration::from_millis(250), "answered in {took:?}");
    }
    // A nick with no entry is refused the same way.
    let (answer, _) = try_login(&node, "mallory", "s9", Some("open sesame"));
    assert_eq!(answer, "unauthorized");
    // Nothing but ping is served before the verdict.
    let mut alice = node.client();
    alice.send(json!({"type":"join","room":"r"}));
    assert_eq!(alice.recv().code.as_deref(), Some("bad_request"));
    hello(&mut alice, "alice", "s1", Some("open sesame"));
    assert_eq!(alice.recv().kind, "welcome");
    alice.join("general");
    alice.send_acked("general", "m-1", "hello");
}

#[test]
fn a_session_cannot_be_taken_over_by_another_user() {
    let (node, _) = start_with_auth(
        &[hash_line("alice", "a-token"), hash_line("bob", "b-token")],
        "",
    );
    let mut alice = node.client();
    hello(&mut alice, "alice", "shared", Some("a-token"));
    assert_eq!(alice.recv().kind, "welcome");
    let mut bob = node.client();
    hello(&mut bob, "bob", "shared", Some("b-token"));
    let refused = bob.recv();
    assert_eq!(refused.code.as_deref(), Some("unauthorized"), "{refused:?}");
    // Alice keeps her session; she may take it over herself.
    alice.send(json!({"type":"ping","token":"still-here"}));
    assert_eq!(alice.recv_kind("pong").token, Some(json!("still-here")));
    let mut alice2 = node.client();
    hello(&mut alice2, "alice", "shared", Some("a-token"));
    assert_eq!(alice2.recv().kind, "welcome");
    assert!(alice.closed());
}

#[test]
fn sighup_reloads_the_users_file_and_a_bad_one_keeps_the_users_loaded() {
    let alice = hash_line("alice", "a-token");
    let (node, users_file) = start_with_auth(std::slice::from_ref(&alice), "");
    assert_eq!(
        try_login(&node, "carol", "sc", Some("c-token")).0,
        "unauthorized"
    );
    write_users(&users_file, &[alice.clone(), hash_line("carol", "c-token")]);
    node.signal(1);
    node.wait_log("auth.users_file reloaded (1 -> 2 users)");
    assert_eq!(
        try_login(&node, "carol", "sc", Some("c-token")).0,
        "welcome"
    );
    write_users(&users_file, &["this is not a users file\n".to_string()]);
    node.signal(1);
    node.wait_log("keeping the users loaded before");
    assert_eq!(
        try_login(&node, "alice", "sa", Some("a-token")).0,
        "welcome"
    );
    assert_eq!(
        try_login(&node, "carol", "sc2", Some("c-token")).0,
        "welcome"
    );
}

#[test]
fn a_users_file_others_may_read_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("users");
    write_users(&users_file, &[hash_line("alice", "t")]);
    std::fs::set_permissions(&users_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let auth = format!(
        "\n[auth]\nmode = \"token\"\nusers_file = \"{}\"\n",
        users_file.display()
    );
    let config = write_config(dir.path(), "primary", "", &auth);
    for check in [true, false] {
        let mut command = pbchatd();
        command.arg("-c").arg(&config);
        if check {
            command.arg("--check");
        }
        let out = command.output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("chmod 600"), "{stderr}");
    }
}

#[test]
fn connections_beyond_the_per_address_limit_get_unavailable() {
    let node = Daemon::start("primary", "max_connections_per_ip = 3", "");
    let mut held: Vec<Client> = (0..3)
        .map(|i| {
            let mut c = node.client();
            hello(&mut c, &format!("u{i}"), &format!("s{i}"), None);
            assert_eq!(c.recv().kind, "welcome");
            c
        })
        .collect();
    let mut extra = node.client();
    let refused = extra.recv();
    assert_eq!(refused.code.as_deref(), Some("unavailable"));
    assert!(refused
        .message
        .as_deref()
        .unwrap()
        .contains("too many connections from your address"));
    assert!(extra.closed());
    // Once one closes, its slot is free again (the release is asynchronous: retry).
    held.pop().unwrap().send(json!({"type":"quit"}));
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut c = node.client();
        hello(&mut c, "again", "s-again", None);
        if c.recv().kind == "welcome" {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never released");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_keeps_sending_into_rate_limits_is_disconnected() {
    let node = Daemon::start(
        "primary",
        "rate_per_sec = 1\nrate_burst = 1\nrate_violations_max = 5",
        "",
    );
    let mut flooder = node.hello("flood", "sf");
    flooder.join("r");
    for i in 0..50 {
        if !flooder.try_send(json!({"type":"send","room":"r","id":format!("m-{i}"),"body":"x"})) {
            break;
        }
    }
    let mut refusals = 0;
    while let Some(frame) = flooder.try_recv() {
        if frame.code.as_deref() == Some("rate_limited") {
            refusals += 1;
        }
    }
    assert_eq!(refusals, 5, "closed at the fifth refusal");
    // Others are unaffected.
    let mut other = node.hello("calm", "sc");
    other.join("r");
    other.send_acked("r", "c-1", "fine");
}

#[test]
fn a_join_beyond_max_room_members_is_refused() {
    let node = Daemon::start("primary", "max_room_members = 2", "");
    let mut a = node.hello("a", "sa");
    let mut b = node.hello("b", "sb");
    let mut c = node.hello("c", "sc");
    a.join("r");
    b.join("r");
    c.send(json!({"type":"join","room":"r"}));
    let refused = c.recv();
    assert_eq!(refused.code.as_deref(), Some("bad_request"));
    assert!(refused.message.unwrap().contains("full"));
    // Another room is fine, and a member leaving makes room.
    c.join("other");
    b.send(json!({"type":"leave","room":"r"}));
    b.recv_kind("left");
    c.join("r");
}

/// Round trip of a ping on a welcomed connection.
fn ping_rtt(client: &mut Client, i: usize) -> Duration {
    let started = Instant::now();
    client.send(json!({"type":"ping","token":i}));
    assert_eq!(client.recv_kind("pong").token, Some(json!(i)));
    started.elapsed()
}

#[test]
fn slow_loris_connections_are_closed_at_the_hello_timeout_and_do_not_delay_others() {
    const IDLE: usize = 500;
    let node = Daemon::start(
        "primary",
        "hello_timeout_ms = 2000\nmax_connections_per_ip = 1000",
        "",
    );
    let mut active = node.hello("active", "sa");
    let baseline = (0..20).map(|i| ping_rtt(&mut active, i)).max().unwrap();
    let opened = Instant::now();
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| {
            let mut s = TcpStream::connect(node.addr).unwrap();
            // Half of them start a hello and never finish the line.
            if i % 2 == 0 {
                std::io::Write::write_all(&mut s, b"{\"type\":\"hel").unwrap();
            }
            s
        })
        .collect();
    // While they sit there, the active client's round trips stay quick.
    let mut worst = Duration::ZERO;
    let mut i = 100;
    while opened.elapsed() < Duration::from_millis(1500) {
        worst = worst.max(ping_rtt(&mut active, i));
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("ping round trip: {baseline:?} before, worst {worst:?} with {IDLE} idle connections");
    assert!(
        worst < Duration::from_millis(250),
        "worst round trip {worst:?} (baseline {baseline:?})"
    );
    // Each idle connection is told and closed at the hello timeout, not before.
    for s in &mut idle {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    let closed_after = opened.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1900),
        "closed after {closed_after:?}"
    );
    assert!(
        closed_after < Duration::from_secs(10),
        "closed after {closed_after:?}"
    );
    ping_rtt(&mut active, 1);
}

#[test]
fn pbchat_client_chats_with_its_token_and_is_refused_without_it() {
    let (node, _users) = start_with_auth(&[hash_line("alice", "s3cret-token")], "");
    let client = |token: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pbchat-client"));
        cmd.arg("--server").arg(node.addr.to_string());
        cmd.args([
            "--nick",
            "alice",
            "--room",
            "r",
            "--send",
            "hello",
            "--timeout-ms",
            "5000",
        ]);
        cmd.env_remove("PBCHAT_TOKEN");
        if let Some(token) = token {
            cmd.args(["--token", token]);
        }
        cmd.stdin(std::process::Stdio::null()).output().unwrap()
    };
    let ok = client(Some("s3cret-token"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = client(Some("wrong"));
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unauthorized"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let refused = client(None);
    assert_eq!(refused.status.code(), Some(1));
    // Issue 18: out of `ps`: from an owner-only file (trimmed), or from PBCHAT_TOKEN.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cret-token\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let hidden = |file: Option<&Path>, env: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pbchat-client"));
        cmd.arg("--server").arg(node.addr.to_string());
        cmd.args(["--nick", "alice", "--room", "r", "--send", "hi"]);
        cmd.env_remove("PBCHAT_TOKEN");
        if let Some(file) = file {
            cmd.arg("--token-file").arg(file);
        }
        if let Some(token) = env {
            cmd.env("PBCHAT_TOKEN", token);
        }
        cmd.stdin(std::process::Stdio::null()).output().unwrap()
    };
    for out in [
        hidden(Some(&file), None),
        hidden(None, Some("s3cret-token")),
    ] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
