//! A client connection that follows the protocol's resume recipe at connect time: hello
//! (following a `redirect`), then join; and its liveness rule while it waits for an answer
//! (a node silent for the welcome's `probe_ms` is asked about by a `hello` to its `peer`; a
//! `welcome` there moves the connection). Shared by the loopback fail-over tests and the
//! namespace lab's sender, which re-send on it until acked.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pbchat::wire::client::{decode_server_frame, ServerFrame};
use serde_json::{json, Value};

/// Wait for the answer to `hello` (a backup may hold it up to 2 s while it decides whether
/// to take over), and the silence after which a connection is given up for lost.
const SILENCE_LOST: Duration = Duration::from_millis(2_000);

pub struct Connection {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    #[allow(dead_code)] // read by the namespace lab's sender only
    addr: SocketAddr,
    /// What `welcome` named: the other node, and the liveness wait.
    peer: Option<SocketAddr>,
    probe: Option<Duration>,
}

/// What [`Connection::next`] found.
pub enum Next {
    Frame(Box<ServerFrame>),
    /// The node went silent and its peer welcomed a probe: the connection now leads there,
    /// rejoined; resend what was not acknowledged.
    Moved,
    /// Closed, or silent for [`SILENCE_LOST`] with nowhere to move.
    Lost,
}

impl Connection {
    /// Connects, says hello as `nick` (session `session-<nick>`) and joins `room`. On a
    /// `redirect` the error names the primary to try next, when the node knows one.
    pub fn open(
        addr: SocketAddr,
        nick: &str,
        room: &str,
    ) -> Result<Connection, Option<SocketAddr>> {
        let stream =
            TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(|_| None)?;
        stream.set_read_timeout(Some(SILENCE_LOST)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut c = Connection {
            stream,
            reader,
            addr,
            peer: None,
            probe: None,
        };
        c.send(json!({"type":"hello","version":1,"nick":nick,"session":format!("session-{nick}")}))
            .map_err(|_| None)?;
        let welcome = c.recv().ok_or(None)?;
        match welcome.kind.as_str() {
            "welcome" => {
                c.peer = welcome.peer.and_then(|p| p.parse().ok());
                c.probe = welcome.probe_ms.map(Duration::from_millis);
            }
            "redirect" => return Err(welcome.primary.and_then(|p| p.parse().ok())),
            _ => return Err(None),
        }
        c.send(json!({"type":"join","room":room}))
            .map_err(|_| None)?;
        loop {
            let frame = c.recv().ok_or(None)?;
            if frame.kind == "joined" {
                if let Some(probe) = c.probe {
                    c.stream.set_read_timeout(Some(probe)).unwrap();
                }
                return Ok(c);
            }
        }
    }

    pub fn send(&mut self, frame: Value) -> std::io::Result<()> {
        self.stream.write_all(format!("{frame}\n").as_bytes())
    }

    /// The node this connection leads to.
    #[allow(dead_code)] // the namespace lab's sender only
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next frame, or None once the connection is gone (or silent for a read timeout).
    pub fn recv(&mut self) -> Option<ServerFrame> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => decode_server_frame(line.trim_end().as_bytes()).ok(),
            _ => None,
        }
    }

    /// The next frame, following the liveness rule while the node is silent.
    pub fn next(&mut self, nick: &str, room: &str) -> Next {
        let silent_since = Instant::now();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(n) if n > 0 => match decode_server_frame(line.trim_end().as_bytes()) {
                    Ok(frame) => return Next::Frame(Box::new(frame)),
                    Err(_) => return Next::Lost,
                },
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                _ => return Next::Lost,
            }
            if let (Some(_), Some(peer)) = (self.probe, self.peer) {
                // Welcomed: the peer serves now. Anything else: the node is still the one.
                if let Ok(moved) = Connection::open(peer, nick, room) {
                    *self = moved;
                    return Next::Moved;
                }
            }
            if silent_since.elapsed() >= SILENCE_LOST {
                return Next::Lost;
            }
        }
    }
}
