//! TLS against the real binaries: the client listener (rustls clients and `pbchat-client
//! --tls`), certificate reload on HUP, and mutual TLS on the replication link through a
//! fail-over. Certificates are made in each test with rcgen. See docs/security.md.

use crate::common;
use crate::common::state;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{pbchatd, write_config, Daemon, PairFiles, DEADLINE};
use pbchat::wire::client::{decode_server_frame, ServerFrame};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

/// A private CA in a directory: issues certificates as PEM files there.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM), what `--ca` and `tls_ca` name.
    ca: PathBuf,
}

/// An issued certificate: its files and its DER, to recognise it on the wire.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, cert.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    /// Writes `<stem>.pem` and `<stem>.key` (mode 0600) for `names` (DNS names or IPs).
    fn issue(&self, stem: &str, common_name: &str, names: &[&str]) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = self.dir.join(format!("{stem}.pem"));
        let key_path = self.dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Issued {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }
}

fn client_tls_keys(issued: &Issued) -> String {
    format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        issued.cert.display(),
        issued.key.display()
    )
}

/// A standalone node whose client listener speaks TLS with `issued`; `log_extra` is
/// appended after `[log]` (more sections may follow it).
fn start_tls_node(dir: PathBuf, issued: &Issued, log_extra: &str) -> Daemon {
    let config = write_config(&dir, "primary", &client_tls_keys(issued), log_extra);
    Daemon::start_with(dir, config)
}

/// A protocol client over rustls, trusting only `ca`.
struct TlsClient {
    reader: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsClient {
    fn connect(addr: SocketAddr, ca: &Path) -> TlsClient {
        let config = pbchat::tls::client_config(Some(ca), None).unwrap();
        let name = pbchat::tls::server_name("127.0.0.1").unwrap();
        let mut session = rustls::ClientConnection::new(config, name).unwrap();
        let mut socket = TcpStream::connect(addr).unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        while session.is_handshaking() {
            session.complete_io(&mut socket).expect("TLS handshake");
        }
        TlsClient {
            reader: BufReader::new(rustls::StreamOwned::new(session, socket)),
        }
    }

    /// The certificate the node presented.
    fn peer_certificate(&self) -> CertificateDer<'static> {
        self.reader.get_ref().conn.peer_certificates().unwrap()[0].clone()
    }

    fn send(&mut self, frame: Value) {
        let mut line = frame.to_string();
        line.push('\n');
        let stream = self.reader.get_mut();
        stream.write_all(line.as_bytes()).unwrap();
        stream.flush().unwrap();
    }

    fn recv(&mut self) -> ServerFrame {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("a frame in time");
        assert!(n > 0 && line.ends_with('\n'), "closed: {line:?}");
        decode_server_frame(line.trim_end().as_bytes()).unwrap()
    }

    fn recv_kind(&mut self, kind: &str) -> ServerFrame {
        loop {
            let frame = self.recv();
            if frame.kind == kind {
                return frame;
            }
        }
    }

    fn hello(&mut self, nick: &str, session: &str, token: Option<&str>) -> ServerFrame {
        let mut frame = json!({"type":"hello","version":1,"nick":nick,"session":session});
        if let Some(token) = token {
            frame["token"] = json!(token);
        }
        self.send(frame);
        self.recv()
    }

    fn ping(&mut self) {
        self.send(json!({"type":"ping"}));
        self.recv_kind("pong");
    }
}

fn pbchat_client(servers: &[SocketAddr]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pbchat-client"));
    // Nothing remembered in the runner's ~/.local/state between tests.
    cmd.arg("--no-state");
    for server in servers {
        cmd.arg("--server").arg(server.to_string());
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// The users-file line for `nick` with `token`, from `pbchatd --hash-token`.
fn hash_line(nick: &str, token: &str) -> String {
    let mut child = pbchatd()
        .arg("--hash-token")
        .arg(nick)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn chat_over_tls_with_pbchat_client_and_tokens_end_to_end() {
    let dir = tempfile::tempdir().unwrap().keep();
    let pki = Pki::new(&dir, "chat");
    let issued = pki.issue("node", "node", &["127.0.0.1", "localhost"]);
    let users = dir.join("users");
    std::fs::write(
        &users,
        hash_line("alice", "alice-token") + &hash_line("reader", "reader-token"),
    )
    .unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    let auth = format!(
        "\n[auth]\nmode = \"token\"\nusers_file = \"{}\"\nfailure_delay_ms = 0\n",
        users.display()
    );
    let node = start_tls_node(dir, &issued, &auth);
    assert_eq!(
        TlsClient::connect(node.addr, &pki.ca).peer_certificate(),
        issued.der
    );

    let mut reader = TlsClient::connect(node.addr, &pki.ca);
    let welcome = reader.hello("reader", "r-1", Some("reader-token"));
    assert_eq!(welcome.kind, "welcome", "{welcome:?}");
    reader.send(json!({"type":"join","room":"general"}));
    reader.recv_kind("joined");

    let ca = pki.ca.to_str().unwrap();
    let out = pbchat_client(&[node.addr])
        .args([
            "--tls",
            "--ca",
            ca,
            "--nick",
            "alice",
            "--token",
            "alice-token",
        ])
        .args(["--room", "general", "--send", "sealed in TLS", "-v"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let seq: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let msg = reader.recv_kind("msg");
    assert_eq!(msg.body.as_deref(), Some("sealed in TLS"));
    assert_eq!(msg.from.as_deref(), Some("alice"));
    assert_eq!(msg.seq, Some(seq));

    // The server name may be given for certificates that name the host, not the IP.
    let out = pbchat_client(&[node.addr])
        .args(["--tls", "--ca", ca, "--tls-name", "localhost"])
        .args(["--nick", "alice", "--token", "alice-token"])
        .args(["--room", "general", "--history", "5"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sealed in TLS"));

    // Over TLS as over TCP, a wrong or missing token cannot chat.
    for token in [Some("guess"), None] {
        let mut cmd = pbchat_client(&[node.addr]);
        cmd.args(["--tls", "--ca", ca, "--nick", "alice"]);
        if let Some(token) = token {
            cmd.args(["--token", token]);
        }
        let out = cmd
            .args(["--room", "general", "--send", "forged"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("unauthorized"), "{token:?}: {stderr}");
    }
    reader.ping();
}

#[test]
fn a_plain_client_on_a_tls_listener_is_closed_and_others_carry_on() {
    let dir = tempfile::tempdir().unwrap().keep();
    let pki = Pki::new(&dir, "chat");
    let issued = pki.issue("node", "node", &["127.0.0.1"]);
    let mut node = start_tls_node(dir, &issued, "");
    let mut talker = TlsClient::connect(node.addr, &pki.ca);
    assert_eq!(talker.hello("talker", "t-1", None).kind, "welcome");

    for attempt in 0..20 {
        let mut plain = TcpStream::connect(node.addr).unwrap();
        plain.set_read_timeout(Some(DEADLINE)).unwrap();
        let hello =
            json!({"type":"hello","version":1,"nick":format!("plain{attempt}"),"session":"p"});
        plain.write_all(format!("{hello}\n").as_bytes()).unwrap();
        // The node answers with (at most) a TLS alert and closes: never a protocol frame.
        let mut answer = Vec::new();
        match plain.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        assert!(
            !String::from_utf8_lossy(&answer).contains("\"type\""),
            "{answer:?}"
        );
    }
    // A connection that never says anything is not a cost either: the TLS client is served.
    let _silent = TcpStream::connect(node.addr).unwrap();
    let started = Instant::now();
    talker.ping();
    assert!(started.elapsed() < Duration::from_secs(2));
    talker.send(json!({"type":"join","room":"r"}));
    talker.recv_kind("joined");
    talker.send(json!({"type":"send","room":"r","id":"1","body":"still here"}));
    assert_eq!(talker.recv_kind("ack").id.as_deref(), Some("1"));
    assert!(node.child.as_mut().unwrap().try_wait().unwrap().is_none());
}

#[test]
fn a_tls_handshake_that_never_finishes_is_closed_by_the_hello_timeout() {
    let dir = tempfile::tempdir().unwrap().keep();
    let pki = Pki::new(&dir, "chat");
    let issued = pki.issue("node", "node", &["127.0.0.1"]);
    let extra = format!("{}hello_timeout_ms = 500\n", client_tls_keys(&issued));
    let config = write_config(&dir, "primary", &extra, "");
    let node = Daemon::start_with(dir, config);
    // The header of a handshake record, and never the record.
    let mut stalled = TcpStream::connect(node.addr).unwrap();
    stalled.set_read_timeout(Some(DEADLINE)).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
    let mut silent = TcpStream::connect(node.addr).unwrap();
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    let started = Instant::now();
    for socket in [&mut stalled, &mut silent] {
        let mut rest = Vec::new();
        match socket.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    assert!(started.elapsed() < DEADLINE);
    let mut other = TlsClient::connect(node.addr, &pki.ca);
    assert_eq!(other.hello("other", "o-1", None).kind, "welcome");
}

#[test]
fn line_limits_hold_inside_tls() {
    let dir = tempfile::tempdir().unwrap().keep();
    let pki = Pki::new(&dir, "chat");
    let issued = pki.issue("node", "node", &["127.0.0.1"]);
    let extra = format!(
        "{}max_line_bytes = 1024\nmax_body_bytes = 512\n",
        client_tls_keys(&issued)
    );
    let config = write_config(&dir, "primary", &extra, "");
    let node = Daemon::start_with(dir, config);
    let mut flooder = TlsClient::connect(node.addr, &pki.ca);
    assert_eq!(flooder.hello("flood", "f-1", None).kind, "welcome");
    let mut line = vec![b'x'; 2048];
    line.push(b'\n');
    let stream = flooder.reader.get_mut();
    stream.write_all(&line).unwrap();
    stream.flush().unwrap();
    assert_eq!(flooder.recv().code.as_deref(), Some("too_large"));
    // Then close_notify and the end of the connection.
    let mut rest = String::new();
    assert_eq!(flooder.reader.read_line(&mut rest).unwrap(), 0, "{rest:?}");
    let mut other = TlsClient::connect(node.addr, &pki.ca);
    assert_eq!(other.hello("other", "o-1", None).kind, "welcome");
    other.ping();
}

#[test]
fn pbchat_client_refuses_a_certificate_it_cannot_trust() {
    let dir = tempfile::tempdir().unwrap().keep();
    let pki = Pki::new(&dir, "chat");
    let stranger = Pki::new(&dir, "stranger");
    let issued = pki.issue("node", "node", &["127.0.0.1"]);
    let node = start_tls_node(dir, &issued, "");
    let ca = pki.ca.to_str().unwrap().to_string();
    let stranger_ca = stranger.ca.to_str().unwrap().to_string();
    for (args, expected) in [
        (
            vec!["--ca", stranger_ca.as_str()],
            "not issued by a trusted CA (give its CA with --ca)",
        ),
        // The public roots do not vouch for a private CA either.
        (vec![], "not issued by a trusted CA (give its CA with --ca)"),
        (
            vec!["--ca", ca.as_str(), "--tls-name", "elsewhere.example"],
            "does not carry the name it was reached by",
        ),
    ] {
        let started = Instant::now();
        let out = pbchat_client(&[node.addr])
            .arg("--tls")
            .args(&args)
            .args(["--room", "r", "--send", "never sent"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("error tls:") && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
        // A certificate that does not verify is final: no retries until the timeout.
        assert!(started.elapsed() < Duration::from_secs(5), "{args:?}");
    }
    // A node that does not speak TLS there is as final.
    let plain = Daemon::start("primary", "", "");
    let out = pbchat_client(&[plain.addr])
        .args(["--tls", "--ca", &ca, "--room", "r", "--send", "never sent"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("does not speak TLS on this address"),
        "{stderr}"
    );
    let out = pbchat_client(&[node.addr])
        .args([
            "--tls",
            "--ca",
            "/nonexistent/ca.pem",
            "--room",
            "r",
            "--send",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca: /nonexistent/ca.pem: cannot read"));
    assert_eq!(node.log_count("clients on"), 1);
}

#[test]
fn sighup_swaps_the_certificate_and_a_broken_file_keeps_the_one_in_use() {
    let dir = tempfile::tempdir().unwrap().keep();
    let pki = Pki::new(&dir, "chat");
    let first = pki.issue("node", "first", &["127.0.0.1"]);
    let node = start_tls_node(dir, &first, "");
    let mut old = TlsClient::connect(node.addr, &pki.ca);
    assert_eq!(old.peer_certificate(), first.der);
    assert_eq!(old.hello("old", "o-1", None).kind, "welcome");

    // A renewal: new files at the same paths, then HUP.
    let second = pki.issue("node", "second", &["127.0.0.1"]);
    assert_ne!(first.der, second.der);
    node.signal(1);
    node.wait_log("client TLS certificate reloaded");
    let new = TlsClient::connect(node.addr, &pki.ca);
    assert_eq!(new.peer_certificate(), second.der);
    // Connections made before keep going.
    old.ping();

    // A broken file on reload: the certificate in use stays, and the reload says why.
    std::fs::write(&second.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    node.signal(1);
    node.wait_log("client TLS certificate NOT reloaded");
    assert!(node.log_contains("client.tls_cert"));
    let after = TlsClient::connect(node.addr, &pki.ca);
    assert_eq!(after.peer_certificate(), second.der);
    old.ping();
}

/// Adds `lines` at the end of `section` (which must be followed by `next`) in a config.
fn add_to_section(config: &Path, next: &str, lines: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains(next), "{next} in {text}");
    std::fs::write(config, text.replacen(next, &format!("{lines}\n{next}"), 1)).unwrap();
}

/// Turns on client TLS and mutual link TLS in both of `pair`'s configs; each node has its
/// own certificate, `link_a` and `link_b` for the link, issued by the CA in `ca`.
fn tls_pair(pair: &PairFiles, ca: &Path, link_a: &Issued, link_b: &Issued) {
    for (config, link) in [(&pair.config_a, link_a), (&pair.config_b, link_b)] {
        add_to_section(config, "[log]", &client_tls_keys(link));
        add_to_section(
            config,
            "[failover]",
            &format!("{}tls_ca = \"{}\"\n", client_tls_keys(link), ca.display()),
        );
    }
}

#[test]
fn a_mutual_tls_pair_replicates_and_a_tls_client_resumes_on_the_backup_after_kill9() {
    let pair = PairFiles::new("");
    let pki = Pki::new(&pair.dir, "pair");
    let cert_a = pki.issue("node-a", "node-a", &["127.0.0.1"]);
    let cert_b = pki.issue("node-b", "node-b", &["127.0.0.1"]);
    tls_pair(&pair, &pki.ca, &cert_a, &cert_b);
    let mut a = pair.start_a();
    let b = pair.start_b();
    b.wait_log("following the primary a in epoch");
    assert!(b.log_contains("over mutual TLS"));
    a.wait_log("over mutual TLS");

    let ca = pki.ca.to_str().unwrap().to_string();
    let servers = [pair.client_a, pair.client_b];
    let mut listener = pbchat_client(&servers)
        .args([
            "--tls", "--ca", &ca, "--nick", "ears", "--room", "r", "--listen",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (line_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = listener.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    // Live delivery needs the listener in the room first.
    let deadline = Instant::now() + DEADLINE;
    for attempt in 0.. {
        let mut probe = TlsClient::connect(pair.client_a, &pki.ca);
        assert_eq!(
            probe
                .hello(&format!("probe{attempt}"), &format!("p-{attempt}"), None)
                .kind,
            "welcome"
        );
        probe.send(json!({"type":"join","room":"r"}));
        let joined = probe.recv_kind("joined");
        if joined.members.unwrap().iter().any(|m| m == "ears") {
            break;
        }
        assert!(Instant::now() < deadline, "the listener never joined");
    }
    let mut talker = TlsClient::connect(pair.client_a, &pki.ca);
    assert_eq!(talker.hello("talker", "t-1", None).kind, "welcome");
    talker.send(json!({"type":"join","room":"r"}));
    talker.recv_kind("joined");
    let mut expected = Vec::new();
    for i in 1..=5 {
        let body = format!("before {i}");
        talker.send(json!({"type":"send","room":"r","id":i.to_string(),"body":body}));
        assert_eq!(
            talker.recv_kind("ack").id.as_deref(),
            Some(i.to_string().as_str())
        );
        expected.push(body);
    }

    a.kill9();
    // A new send goes wherever the primary is now: the backup, once it has promoted.
    let out = pbchat_client(&servers)
        .args(["--tls", "--ca", &ca, "--nick", "late", "--room", "r"])
        .args(["--send", "after the fail-over", "--timeout-ms", "30000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expected.push("after the fail-over".to_string());

    let mut bodies = Vec::new();
    let mut seqs = Vec::new();
    while bodies.len() < expected.len() {
        let line = lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("the listener printed only {bodies:?}"));
        let frame: Value = serde_json::from_str(&line).unwrap();
        if frame["type"] == "msg" {
            bodies.push(frame["body"].as_str().unwrap().to_string());
            seqs.push(frame["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(bodies, expected, "each message once, in order");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    b.wait_state("primary", state::primary);
    listener.kill().unwrap();
    let _ = listener.wait();
}

#[test]
fn a_link_peer_with_an_untrusted_certificate_is_refused_until_hup_brings_a_good_one() {
    let pair = PairFiles::new("");
    let pki = Pki::new(&pair.dir, "pair");
    let rogue = Pki::new(&pair.dir, "rogue");
    let cert_a = pki.issue("node-a", "node-a", &["127.0.0.1"]);
    // b trusts the pair's CA, but its own certificate comes from another.
    let cert_b = rogue.issue("node-b", "node-b", &["127.0.0.1"]);
    tls_pair(&pair, &pki.ca, &cert_a, &cert_b);
    let a = pair.start_a();
    let b = pair.start_b();
    a.wait_log("TLS: the peer's certificate is not issued by a trusted CA");
    b.wait_log("TLS: the peer refused this side's certificate (TLS alert: unknown CA)");
    assert!(!b.log_contains("following the primary"));
    assert!(!a.log_contains("backup b connected"));

    // A certificate from the pair's CA at the same paths, and HUP: the next dial passes.
    pki.issue("node-b", "node-b", &["127.0.0.1"]);
    b.signal(1);
    b.wait_log("replication TLS certificates reloaded");
    b.wait_log("following the primary a in epoch");
    a.wait_log("backup b connected");
}

#[test]
fn check_names_the_key_of_a_tls_file_that_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "chat");
    let issued = pki.issue("node", "node", &["127.0.0.1"]);
    let config = write_config(dir.path(), "primary", &client_tls_keys(&issued), "");
    let check = || {
        let out = pbchatd()
            .arg("--check")
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(check().0, Some(0));
    std::fs::set_permissions(&issued.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stderr) = check();
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("node.toml: client.tls_key:") && stderr.contains("readable by others"),
        "{stderr}"
    );
    std::fs::set_permissions(&issued.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(&issued.cert).unwrap();
    let (code, stderr) = check();
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("node.toml: client.tls_cert:") && stderr.contains("cannot read"),
        "{stderr}"
    );
    // The node refuses to start the same way.
    let out = pbchatd().arg("-c").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("client.tls_cert"));
}

/// Issue 15: the certificate most people make first, `openssl req -x509 -newkey ec ...
/// -addext subjectAltName=IP:127.0.0.1`, is a CA certificate (openssl's default
/// basicConstraints CA:TRUE). pbchatd serves it, and pbchat-client said only `invalid peer
/// certificate: Other(OtherError(CaUsedAsEndEntity))`.
#[test]
fn pbchat_client_explains_a_ca_certificate_used_as_the_servers_own() {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join("node.pem");
    let key_path = dir.join("node.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let issued = Issued {
        cert: cert_path.clone(),
        key: key_path,
        der: cert.der().clone(),
    };
    let node = start_tls_node(dir, &issued, "");
    let out = pbchat_client(&[node.addr])
        .args(["--tls", "--ca", cert_path.to_str().unwrap()])
        .args(["--room", "r", "--send", "never sent"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the peer's certificate is a CA certificate (basicConstraints CA:TRUE"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pbchatd --gen-cert DIR --name NAME"),
        "{stderr}"
    );
    assert!(!stderr.contains("OtherError"), "{stderr}");
}

/// Issue 15: nothing in the project made a CA and a node certificate signed by it, the pair
/// that pbchat-client accepts. `pbchatd --gen-cert` does, for the client listener and for
/// the replication link's mutual TLS, and never overwrites what is there.
#[test]
fn gen_cert_makes_certificates_that_a_tls_pair_and_pbchat_client_accept() {
    let pair = PairFiles::new("");
    let tls = pair.dir.join("tls");
    let gen_cert = |name: &str, names: &[&str]| {
        let out = pbchatd()
            .arg("--gen-cert")
            .arg(&tls)
            .args(["--name", name])
            .args(names)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), said)
    };
    let (code, said) = gen_cert("node-a", &["--ip", "127.0.0.1"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("made a private CA"), "{said}");
    let ca = tls.join("ca.pem");
    let ca_text = std::fs::read(&ca).unwrap();
    let (code, said) = gen_cert("node-b", &["--ip", "127.0.0.1", "--dns", "localhost"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("signed with the CA already in"), "{said}");
    assert_eq!(std::fs::read(&ca).unwrap(), ca_text, "the CA is kept");
    for key in ["ca.key", "node-a.key", "node-b.key"] {
        let mode = std::fs::metadata(tls.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let node_a = std::fs::read(tls.join("node-a.pem")).unwrap();
    let (code, said) = gen_cert("node-a", &["--ip", "127.0.0.1"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("node-a.pem: exists; nothing was written"),
        "{said}"
    );
    assert_eq!(std::fs::read(tls.join("node-a.pem")).unwrap(), node_a);
    let (code, said) = gen_cert("node-c", &[]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("--ip IP and/or --dns NAME"), "{said}");

    let issued = |name: &str| Issued {
        cert: tls.join(format!("{name}.pem")),
        key: tls.join(format!("{name}.key")),
        der: CertificateDer::from_pem_file(tls.join(format!("{name}.pem"))).unwrap(),
    };
    tls_pair(&pair, &ca, &issued("node-a"), &issued("node-b"));
    let _a = pair.start_a();
    let b = pair.start_b();
    b.wait_log("following the primary a in epoch");
    assert!(b.log_contains("over mutual TLS"));
    let out = pbchat_client(&[pair.client_a])
        .args(["--tls", "--ca", ca.to_str().unwrap()])
        .args([
            "--nick",
            "newcomer",
            "--room",
            "r",
            "--send",
            "hello over TLS",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
