//! The `[web]` listener's HTTP side: the one request a browser connection makes before it
//! becomes a WebSocket (or gets the page), answered here without I/O.
//!
//! [`route`] takes the bytes read so far and says what to do: wait for more, answer and
//! close (the page, `/config.json`, 403, 404, ...), or upgrade `/ws` to a WebSocket. The
//! I/O worker (`io.rs`) owns the socket; once upgraded, each WebSocket text message is one
//! protocol frame through the same path as a TCP client's line, with the same limits.
//!
//! Origins: a browser names the page's origin in `Origin`; the upgrade is refused (403)
//! unless it is this node's own (`http://` + the `Host` the browser asked for), the peer's
//! page (`web.peer_url`: after a fail-over a page loaded from one node talks to the other)
//! or one of `web.allowed_origins`. A request without `Origin` is not from a browser page
//! and is let through (tokens, not cookies, are what authenticate a client).

use sha2::{Digest, Sha256};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use crate::config::WebConfig;

/// The page: one file, HTML with its CSS and JS inline, embedded in the binary.
const PAGE: &str = include_str!("web_page.html");
/// Longest request head (request line and headers) read; a longer one gets 431. A browser's
/// upgrade request is well under 2 KiB.
pub const REQUEST_HEAD_MAX_BYTES: usize = 8 * 1024;
/// Headers parsed in one request; more gets 431.
const REQUEST_HEADERS_MAX: usize = 32;
/// The WebSocket upgrade path.
pub const WS_PATH: &str = "/ws";
/// Bytes each WebSocket reads from its socket at a time. tungstenite allocates and zeroes
/// this per connection (128 KiB by default), so it sets most of an idle member's memory:
/// 4 KiB made an idle WebSocket member cost 6.3 KiB against a TCP member's 2.4 KiB. A
/// browser's frames are small; a 64 KiB one takes 64 reads.
const WS_READ_BUFFER_BYTES: usize = 1024;
/// Bytes tungstenite gathers before writing to the socket (it writes on every flush anyway).
const WS_WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// What the node knows to answer browsers: fixed at start.
#[derive(Debug)]
pub struct Site {
    node_id: String,
    /// The peer's page origin and its WebSocket URL.
    peer: Option<(String, String)>,
    allowed_origins: Vec<String>,
    /// The `sha256-…` CSP sources of the page's inline script and style.
    script_hash: String,
    style_hash: String,
    max_line_bytes: usize,
    send_queue_bytes: usize,
    /// `wss` when the listener speaks TLS (the client listener's certificate), else `ws`.
    ws_scheme: &'static str,
}

/// What to do with a connection's request bytes.
#[derive(Debug, PartialEq)]
pub enum Routed {
    /// The request head is not complete yet.
    Incomplete,
    /// Write this response, then close.
    Respond(Vec<u8>),
    /// Write this `101` response, then speak WebSocket; `leftover` was read past the head.
    Upgrade {
        response: Vec<u8>,
        leftover: Vec<u8>,
    },
}

impl Site {
    pub fn new(
        node_id: &str,
        web: &WebConfig,
        max_line_bytes: usize,
        send_queue_bytes: usize,
        tls: bool,
    ) -> Site {
        let peer = web.peer_url.as_ref().map(|origin| {
            let ws = origin.replacen("http", "ws", 1);
            (origin.clone(), format!("{ws}{WS_PATH}"))
        });
        Site {
            node_id: node_id.to_string(),
            peer,
            allowed_origins: web.allowed_origins.clone(),
            script_hash: csp_hash(inline(PAGE, "script")),
            style_hash: csp_hash(inline(PAGE, "style")),
            max_line_bytes,
            send_queue_bytes,
            ws_scheme: if tls { "wss" } else { "ws" },
        }
    }

    /// A WebSocket over a just-upgraded connection, with the client limits: a message
    /// longer than a client line fails the read (`too_large`), and the write buffer holds
    /// at most one send queue past its batching size (the queue itself is bounded before it).
    pub fn websocket(&self, leftover: Vec<u8>) -> WebSocketContext {
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER_BYTES)
            .write_buffer_size(WS_WRITE_BUFFER_BYTES)
            .max_write_buffer_size(WS_WRITE_BUFFER_BYTES + self.send_queue_bytes)
            .max_message_size(Some(self.max_line_bytes))
            .max_frame_size(Some(self.max_line_bytes));
        WebSocketContext::from_partially_read(leftover, Role::Server, Some(config))
    }
}

/// `lines` (the node's `\n`-ended JSON lines) as the WebSocket text messages a server
/// sends for them, one unmasked single-frame message per line (RFC 6455 5.2), byte for byte
/// what tungstenite writes. A fan-out frames a batch once here and queues the same bytes to
/// every WebSocket member, as it queues the lines to every TCP member, instead of each
/// member's tungstenite framing and copying each message again.
pub fn text_frames(lines: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.len() + lines.len() / 16 + 16);
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        // FIN + opcode 1 (text); no mask bit: servers do not mask.
        out.push(0x81);
        match text.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= usize::from(u16::MAX) => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(text);
    }
    out
}

/// The text between `<tag>` and `</tag>` in the page (the page has one of each).
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let start = page.find(&open).expect("the page has its inline tag") + open.len();
    let end = page[start..]
        .find(&format!("</{tag}>"))
        .expect("the page closes its inline tag");
    &page[start..start + end]
}

fn csp_hash(text: &str) -> String {
    use base64::Engine;
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Decides what the request in `head` gets. Pure: the caller does the I/O.
pub fn route(site: &Site, head: &[u8]) -> Routed {
    let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = match request.parse(head) {
        Ok(httparse::Status::Partial) if head.len() < REQUEST_HEAD_MAX_BYTES => {
            return Routed::Incomplete
        }
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Routed::Respond(plain(431, "Request Header Fields Too Large"))
        }
        Err(_) => return Routed::Respond(plain(400, "Bad Request")),
        Ok(httparse::Status::Complete(parsed)) => parsed,
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    // The host goes into the CSP and the origin check: header-safe characters only.
    let host = match header("host") {
        Some(h)
            if !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)) =>
        {
            h
        }
        _ => return Routed::Respond(plain(400, "Bad Request")),
    };
    if request.method != Some("GET") {
        return Routed::Respond(plain(405, "Method Not Allowed"));
    }
    let path = request.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/" => Routed::Respond(page(site, host)),
        "/config.json" => Routed::Respond(config_json(site)),
        WS_PATH => upgrade(site, host, &header, &head[parsed..]),
        _ => Routed::Respond(plain(404, "Not Found")),
    }
}

fn upgrade<'h>(
    site: &Site,
    host: &str,
    header: &dyn Fn(&str) -> Option<&'h str>,
    leftover: &[u8],
) -> Routed {
    let has = |name: &str, token: &str| {
        header(name).is_some_and(|v| {
            v.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    };
    if !has("upgrade", "websocket") || !has("connection", "upgrade") {
        return Routed::Respond(plain(426, "Upgrade Required"));
    }
    if let Some(origin) = header("origin") {
        if !origin_allowed(site, host, origin) {
            return Routed::Respond(plain(403, "Forbidden"));
        }
    }
    let key = header("sec-websocket-key").unwrap_or("");
    if header("sec-websocket-version") != Some("13") || key.len() != 24 {
        return Routed::Respond(plain(400, "Bad Request"));
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    Routed::Upgrade {
        response: response.into_bytes(),
        leftover: leftover.to_vec(),
    }
}

fn origin_allowed(site: &Site, host: &str, origin: &str) -> bool {
    let own = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        == Some(host);
    own || site.peer.as_ref().is_some_and(|(peer, _)| peer == origin)
        || site.allowed_origins.iter().any(|o| o == origin)
}

/// Headers every answer carries: nothing is cached, sniffed, framed or referred.
const COMMON_HEADERS: &str = "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
    Referrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\nConnection: close\r\n";

fn respond(status: u16, reason: &str, content_type: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n{COMMON_HEADERS}{extra}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn plain(status: u16, reason: &str) -> Vec<u8> {
    let body = format!("{status} {reason}\n");
    respond(
        status,
        reason,
        "text/plain; charset=utf-8",
        "",
        body.as_bytes(),
    )
}

/// The page, with a policy that lets it run only its own inline script and style and
/// connect only to this node and the peer (`'self'` never covers another host's socket).
fn page(site: &Site, host: &str) -> Vec<u8> {
    let peer_ws = site.peer.as_ref().map_or("", |(_, ws)| ws.as_str());
    let csp = format!(
        "Content-Security-Policy: default-src 'none'; script-src {}; style-src {}; \
         connect-src 'self' {}://{host}{WS_PATH} {peer_ws}; img-src 'none'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'\r\n",
        site.script_hash, site.style_hash, site.ws_scheme
    );
    respond(200, "OK", "text/html; charset=utf-8", &csp, PAGE.as_bytes())
}

/// What the page reads before connecting: this node's name and the peer's WebSocket URL.
fn config_json(site: &Site) -> Vec<u8> {
    let body = serde_json::json!({
        "node": site.node_id,
        "peer_ws": site.peer.as_ref().map(|(_, ws)| ws),
    })
    .to_string();
    respond(200, "OK", "application/json", "", body.as_bytes())
}

/// The answer a full node or a crowded address gets on the web listener.
pub fn unavailable() -> Vec<u8> {
    plain(503, "Service Unavailable")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        let web = WebConfig {
            listen: "127.0.0.1:7480".parse().unwrap(),
            peer_url: Some("http://127.0.0.1:7481".into()),
            allowed_origins: vec!["https://chat.example".into()],
        };
        Site::new("a", &web, 65536, 1 << 20, false)
    }

    fn upgrade_request(origin: &str) -> String {
        format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:7480\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n"
        )
    }

    fn status(routed: &Routed) -> u16 {
        match routed {
            Routed::Respond(bytes) => std::str::from_utf8(&bytes[9..12]).unwrap().parse().unwrap(),
            Routed::Upgrade { .. } => 101,
            Routed::Incomplete => 0,
        }
    }

    /// Every length class of the header (7-bit, 16-bit, 64-bit), against tungstenite's own
    /// writer: a browser reads what `text_frames` queues as what tungstenite would send.
    #[test]
    fn text_frames_are_what_tungstenite_writes() {
        let lines: Vec<String> = [0, 1, 125, 126, 127, 65_535, 65_536, 70_000]
            .iter()
            .map(|&n| "x".repeat(n))
            .collect();
        let mut joined = Vec::new();
        let mut expected = std::io::Cursor::new(Vec::new());
        let mut socket = WebSocketContext::new(Role::Server, None);
        for line in &lines {
            joined.extend_from_slice(line.as_bytes());
            joined.push(b'\n');
            socket
                .write(&mut expected, tungstenite::Message::text(line.as_str()))
                .unwrap();
        }
        socket.flush(&mut expected).unwrap();
        assert_eq!(text_frames(&joined), expected.get_ref()[..]);
        // A last line without its newline is framed the same.
        assert_eq!(
            text_frames(b"ab\ncd"),
            [0x81, 2, b'a', b'b', 0x81, 2, b'c', b'd']
        );
    }

    #[test]
    fn origins_own_peer_and_listed_upgrade_others_get_403() {
        let site = site();
        for origin in [
            "http://127.0.0.1:7480",
            "http://127.0.0.1:7481",
            "https://chat.example",
        ] {
            assert_eq!(
                status(&route(&site, upgrade_request(origin).as_bytes())),
                101,
                "{origin}"
            );
        }
        for origin in ["http://evil.example", "http://127.0.0.1:7482", "null"] {
            assert_eq!(
                status(&route(&site, upgrade_request(origin).as_bytes())),
                403,
                "{origin}"
            );
        }
    }

    #[test]
    fn upgrade_answers_the_rfc_accept_key_and_keeps_leftover_bytes() {
        let mut request = upgrade_request("http://127.0.0.1:7480").into_bytes();
        request.extend_from_slice(b"\x81\x80");
        let Routed::Upgrade { response, leftover } = route(&site(), &request) else {
            panic!("not an upgrade");
        };
        // RFC 6455 section 1.3's example key and answer.
        let text = String::from_utf8(response).unwrap();
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert_eq!(leftover, b"\x81\x80");
    }

    #[test]
    fn page_paths_and_partial_heads() {
        let site = site();
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:7480\r\n\r\n");
        let Routed::Respond(page) = route(&site, get("/").as_bytes()) else {
            panic!()
        };
        let page = String::from_utf8(page).unwrap();
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(page.contains("connect-src 'self' ws://127.0.0.1:7480/ws ws://127.0.0.1:7481/ws;"));
        assert!(page.contains("X-Content-Type-Options: nosniff"));
        assert_eq!(status(&route(&site, get("/config.json").as_bytes())), 200);
        assert_eq!(status(&route(&site, get("/etc/passwd").as_bytes())), 404);
        assert_eq!(status(&route(&site, b"GET / HTTP/1.1\r\nHost: a")), 0);
        let huge = format!(
            "GET / HTTP/1.1\r\nX: {}",
            "y".repeat(REQUEST_HEAD_MAX_BYTES)
        );
        assert_eq!(status(&route(&site, huge.as_bytes())), 431);
        let injected = "GET / HTTP/1.1\r\nHost: a; script-src *\r\n\r\n";
        assert_eq!(status(&route(&site, injected.as_bytes())), 400);
        let post = "POST / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(status(&route(&site, post.as_bytes())), 405);
    }

    proptest::proptest! {
        /// Whatever a peer sends before the upgrade, routing answers without panicking,
        /// and what it hands on after an upgrade is the tail of what came.
        #[test]
        fn route_takes_any_bytes(
            prefix in proptest::sample::select(vec![
                String::new(),
                "GET / HTTP/1.1\r\nHost: a\r\n".to_string(),
                upgrade_request("http://127.0.0.1:7480"),
            ]),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        ) {
            let mut head = prefix.into_bytes();
            head.extend_from_slice(&bytes);
            if let Routed::Upgrade { leftover, .. } = route(&site(), &head) {
                proptest::prop_assert!(head.ends_with(&leftover));
            }
        }
    }

    #[test]
    fn the_policy_hashes_match_the_inline_script_and_style() {
        let site = site();
        assert_eq!(site.script_hash, csp_hash(inline(PAGE, "script")));
        assert!(!inline(PAGE, "script").is_empty() && !inline(PAGE, "style").is_empty());
    }
}
