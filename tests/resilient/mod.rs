//! A client connection that follows the protocol's resume recipe at connect time: hello
//! (following a `redirect`), then join. Shared by the loopback fail-over tests and the
//! namespace lab's sender, which re-send on it until acked.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use pbchat::wire::client::{decode_server_frame, ServerFrame};
use serde_json::{json, Value};

pub struct Connection {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
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
        stream
            .set_read_timeout(Some(Duration::from_millis(2_000)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut c = Connection { stream, reader };
        c.send(json!({"type":"hello","version":1,"nick":nick,"session":format!("session-{nick}")}))
            .map_err(|_| None)?;
        let welcome = c.recv().ok_or(None)?;
        match welcome.kind.as_str() {
            "welcome" => {}
            "redirect" => return Err(welcome.primary.and_then(|p| p.parse().ok())),
            _ => return Err(None),
        }
        c.send(json!({"type":"join","room":room}))
            .map_err(|_| None)?;
        loop {
            let frame = c.recv().ok_or(None)?;
            if frame.kind == "joined" {
                return Ok(c);
            }
        }
    }

    pub fn send(&mut self, frame: Value) -> std::io::Result<()> {
        self.stream.write_all(format!("{frame}\n").as_bytes())
    }

    /// The next frame, or None once the connection is gone (or silent for 2 s).
    pub fn recv(&mut self) -> Option<ServerFrame> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => decode_server_frame(line.trim_end().as_bytes()).ok(),
            _ => None,
        }
    }
}
