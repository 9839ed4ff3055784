//! The `[web]` listener against the real pbchatd: the page over HTTP, protocol frames as
//! WebSocket text messages (tungstenite as the client), and the TCP client's limits.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{free_port, write_config, Daemon, DEADLINE};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

struct WebNode {
    daemon: Daemon,
    web: SocketAddr,
}

/// A standalone node with `[web]` on a free port; `client_extra` goes under `[client]`.
fn start(client_extra: &str) -> WebNode {
    start_in(tempfile::tempdir().unwrap().keep(), client_extra)
}

fn start_in(dir: PathBuf, client_extra: &str) -> WebNode {
    let config = write_config(&dir, "primary", client_extra, "");
    let web: SocketAddr = ([127, 0, 0, 1], free_port(false)).into();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[web]\nlisten = \"{web}\"\n"));
    std::fs::write(&config, text).unwrap();
    WebNode {
        daemon: Daemon::start_with(dir, config),
        web,
    }
}

/// One HTTP request over a fresh connection; the whole answer (the node closes after it).
fn http(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn upgrade_request(addr: SocketAddr, origin: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Origin: {origin}\r\n\r\n"
    )
}

/// A browser's upgrade request, from the node's own page (`scheme` `http` or `https`).
fn ws_request(addr: SocketAddr, scheme: &str) -> tungstenite::handshake::client::Request {
    let ws = if scheme == "https" { "wss" } else { "ws" };
    tungstenite::http::Request::builder()
        .uri(format!("{ws}://{addr}/ws"))
        .header("Host", addr.to_string())
        .header("Origin", format!("{scheme}://{addr}"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap()
}

fn ws_connect(addr: SocketAddr) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let (socket, response) =
        tungstenite::client::client(ws_request(addr, "http"), stream).expect("upgrade");
    assert_eq!(response.status(), 101);
    socket
}

fn say<S: Read + Write>(socket: &mut WebSocket<S>, frame: Value) {
    socket.send(Message::text(frame.to_string())).unwrap();
}

/// The next protocol frame; None once the node closed the socket.
fn hear<S: Read + Write>(socket: &mut WebSocket<S>) -> Option<Value> {
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Message::Close(_)) => continue,
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed)
            | Err(tungstenite::Error::AlreadyClosed)
            | Err(tungstenite::Error::Protocol(_)) => return None,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return None
            }
            Err(e) => panic!("reading the WebSocket: {e}"),
        }
    }
}

fn hear_type<S: Read + Write>(socket: &mut WebSocket<S>, kind: &str) -> Value {
    loop {
        let frame = hear(socket).unwrap_or_else(|| panic!("closed while waiting for {kind}"));
        if frame["type"] == kind {
            return frame;
        }
    }
}

fn welcomed(addr: SocketAddr, nick: &str) -> WebSocket<TcpStream> {
    let mut socket = ws_connect(addr);
    say(
        &mut socket,
        json!({"type":"hello","version":1,"nick":nick,"session":format!("s-{nick}")}),
    );
    hear_type(&mut socket, "welcome");
    socket
}

#[test]
fn websocket_client_chats_with_a_tcp_client_and_html_stays_text() {
    let node = start("");
    let mut alice = welcomed(node.web, "alice");
    say(&mut alice, json!({"type":"join","room":"general"}));
    hear_type(&mut alice, "joined");
    let mut bob = node.daemon.hello("bob", "s-bob");
    bob.join("general");

    let hostile = "<img src=x onerror=alert(1)> & </div>\n\"quoted\"";
    say(
        &mut alice,
        json!({"type":"send","room":"general","id":"a-1","body":hostile}),
    );
    let ack = hear_type(&mut alice, "ack");
    assert_eq!(ack["id"], "a-1");
    let seen = bob.recv_kind("msg");
    assert_eq!(seen.body.as_deref(), Some(hostile));
    assert_eq!(seen.seq, ack["seq"].as_u64());

    bob.send_acked("general", "b-1", "hi alice");
    let msg = loop {
        let m = hear_type(&mut alice, "msg");
        if m["id"] == "b-1" {
            break m;
        }
    };
    assert_eq!(msg["body"], "hi alice");
    assert_eq!(msg["from"], "bob");
}

#[test]
fn page_headers_paths_and_a_foreign_origin_refused_with_403() {
    let node = start("");
    let page = http(
        node.web,
        &format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", node.web),
    );
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page:.200}");
    assert!(page.contains("Content-Security-Policy: default-src 'none';"));
    assert!(page.contains("X-Content-Type-Options: nosniff\r\n"));
    assert!(page.contains("<title>pbchat</title>"));
    let missing = http(
        node.web,
        &format!("GET /x HTTP/1.1\r\nHost: {}\r\n\r\n", node.web),
    );
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    let config = http(
        node.web,
        &format!("GET /config.json HTTP/1.1\r\nHost: {}\r\n\r\n", node.web),
    );
    let body: Value = serde_json::from_str(config.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body, json!({"node":"a","peer_ws":null}));

    let refused = http(node.web, &upgrade_request(node.web, "http://evil.example"));
    assert!(refused.starts_with("HTTP/1.1 403 "), "{refused}");
    let own = format!("http://{}", node.web);
    let mut stream = TcpStream::connect(node.web).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(upgrade_request(node.web, &own).as_bytes())
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
}

#[test]
fn oversized_message_closes_only_that_socket() {
    let node = start("max_line_bytes = 1024\nmax_body_bytes = 512");
    let mut big = welcomed(node.web, "big");
    let mut other = welcomed(node.web, "other");
    let body = "x".repeat(2000);
    say(
        &mut big,
        json!({"type":"send","room":"general","id":"x","body":body}),
    );
    let error = hear_type(&mut big, "error");
    assert_eq!(error["code"], "too_large", "{error}");
    assert_eq!(hear(&mut big), None, "the oversized socket closes");
    say(&mut other, json!({"type":"ping","token":7}));
    assert_eq!(hear_type(&mut other, "pong")["token"], 7);
}

#[test]
fn per_address_limit_refuses_a_third_web_connection_with_503() {
    let node = start("max_connections_per_ip = 2");
    let _one = welcomed(node.web, "one");
    let _two = welcomed(node.web, "two");
    let refused = http(
        node.web,
        &upgrade_request(node.web, &format!("http://{}", node.web)),
    );
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
}

#[test]
fn server_pings_keep_a_quiet_websocket_open_past_the_idle_timeout() {
    let node = start("idle_timeout_ms = 1000");
    let mut quiet = welcomed(node.web, "quiet");
    // The client says nothing; tungstenite answers the node's pings while it reads.
    quiet
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let until = Instant::now() + Duration::from_millis(3000);
    let mut pings = 0;
    while Instant::now() < until {
        match quiet.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("closed after {pings} pings: {e}"),
        }
    }
    assert!(pings >= 2, "{pings} pings in 3 s with a 1 s idle timeout");
    quiet.get_ref().set_read_timeout(Some(DEADLINE)).unwrap();
    say(&mut quiet, json!({"type":"ping"}));
    hear_type(&mut quiet, "pong");
}

/// A WebSocket member gets a fan-out's messages as bytes framed once for every member,
/// written as they are; when its socket is full one such buffer is left half written. Its
/// pings, answered while it drains, must come between whole frames: a pong inside a
/// message's bytes would break the stream (the client would fail with a protocol error).
#[test]
fn pongs_to_a_draining_member_come_between_whole_frames() {
    let node = start("send_queue_bytes = 33554432");
    let mut carol = welcomed(node.web, "carol");
    say(&mut carol, json!({"type":"join","room":"r"}));
    hear_type(&mut carol, "joined");
    // Far more than the kernel's socket buffers hold, so the node's writes to carol stop
    // half way through a buffer while she is not reading.
    let (messages, window, body) = (2_000, 50, "x".repeat(4_000));
    let mut bob = node.daemon.hello("bob", "s-bob");
    bob.join("r");
    for round in 0..messages / window {
        for i in 0..window {
            let id = format!("b-{}", round * window + i);
            bob.send(json!({"type":"send","room":"r","id":id,"body":body}));
        }
        let mut acks = 0;
        while acks < window {
            acks += usize::from(bob.recv().kind == "ack");
        }
    }
    let (mut next, mut pongs, mut pinged) = (0, 0, 0);
    // Each ping is answered; the last pongs may come after the last message.
    while next < messages || pongs == 0 {
        if next % 20 == 0 && pinged <= next / 20 && next < messages {
            carol.send(Message::Ping(vec![1, 2, 3].into())).unwrap();
            pinged += 1;
        }
        match carol.read() {
            Ok(Message::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == "msg" {
                    assert_eq!(frame["id"], format!("b-{next}"), "in order, none missing");
                    next += 1;
                }
            }
            Ok(Message::Pong(payload)) => {
                assert_eq!(&payload[..], &[1, 2, 3]);
                pongs += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("after {next} messages and {pongs} pongs: {e}"),
        }
    }
}

#[test]
fn wss_uses_the_client_listeners_certificate_and_carries_frames() {
    let dir: PathBuf = tempfile::tempdir().unwrap().keep();
    let certs = dir.join("tls");
    let made = common::pbchatd()
        .arg("--gen-cert")
        .arg(&certs)
        .args(["--name", "node-a", "--ip", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let keys = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        certs.join("node-a.pem").display(),
        certs.join("node-a.key").display()
    );
    let node = start_in(dir, &keys);
    assert!(node
        .daemon
        .log_contains(&format!("web page on https://{}/", node.web)));

    let config = pbchat::tls::client_config(Some(&certs.join("ca.pem")), None).unwrap();
    let name = pbchat::tls::server_name("127.0.0.1").unwrap();
    let mut session = rustls::ClientConnection::new(config, name).unwrap();
    let mut socket = TcpStream::connect(node.web).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    while session.is_handshaking() {
        session.complete_io(&mut socket).expect("TLS handshake");
    }
    let stream = rustls::StreamOwned::new(session, socket);
    let (mut secure, response) =
        tungstenite::client::client(ws_request(node.web, "https"), stream).expect("upgrade");
    assert_eq!(response.status(), 101);
    say(
        &mut secure,
        json!({"type":"hello","version":1,"nick":"tls","session":"s-tls"}),
    );
    hear_type(&mut secure, "welcome");
    say(&mut secure, json!({"type":"join","room":"general"}));
    hear_type(&mut secure, "joined");
    say(
        &mut secure,
        json!({"type":"send","room":"general","id":"t-1","body":"over wss"}),
    );
    assert_eq!(hear_type(&mut secure, "msg")["body"], "over wss");
}

#[test]
fn a_flood_of_requests_on_one_connection_gets_one_answer() {
    let node = start("");
    // One connection, one answer: a client that pipelines the request thousands of times
    // (and reads late) gets the page once, then the close.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&node.web.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", node.web);
    for _ in 0..2000 {
        if stream.write_all(request.as_bytes()).is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 1, "{:.300}", answer);
    // The node is fine.
    let mut other = welcomed(node.web, "after");
    say(&mut other, json!({"type":"ping"}));
    hear_type(&mut other, "pong");
}
