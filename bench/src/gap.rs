//! One client that sends without pause (one message in flight) and rides over fail-overs
//! the way the protocol's recipe says: on a dropped connection, `goodbye` or `redirect` it
//! reconnects (the announced primary first, else the other node), rejoins, and resends its
//! unacknowledged message with the same id. It follows the liveness rule too: a node that
//! says nothing for the `probe_ms` its welcome announced is asked about by a `hello` to the
//! `peer` it named, and a `welcome` there moves the client (a `redirect` keeps it waiting).
//! Each break is recorded as the time from the last ack before it to the first ack after
//! it: the gap a chat user sees.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Pause between reconnect attempts: short, so it adds little to the measured gap.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Wait for a line from a node that announced no liveness wait, and for the answer to a
/// `hello` (a backup may hold it up to 2 s while it decides whether to take over).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// One break as the client saw it.
#[derive(Clone, Copy, Debug)]
pub struct Break {
    pub last_ack_before: Instant,
    pub first_ack_after: Instant,
}

impl Break {
    pub fn gap(&self) -> Duration {
        self.first_ack_after - self.last_ack_before
    }
}

pub struct GapClient {
    pub acked: Arc<AtomicU64>,
    pub breaks: Arc<Mutex<Vec<Break>>>,
    /// Acks that came back with a seq not above the previous one (must stay 0).
    pub out_of_order: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Connection {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// The other node and the liveness wait, as `welcome` named them.
    peer: Option<SocketAddr>,
    probe: Option<Duration>,
}

enum Received {
    Line(String),
    /// Nothing for the read timeout.
    Silent,
    Closed,
}

enum Opened {
    Ready(Connection),
    /// Try this address next (from a `redirect`), or any.
    Elsewhere(Option<SocketAddr>),
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":");
    let at = line.find(&key)? + key.len();
    let rest = &line[at..];
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let end = rest.find(['"', ',', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

impl Connection {
    fn open(addr: SocketAddr, nick: &str, room: &str) -> Opened {
        let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            return Opened::Elsewhere(None);
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
        let Ok(reader) = stream.try_clone().map(BufReader::new) else {
            return Opened::Elsewhere(None);
        };
        let mut c = Connection {
            stream,
            reader,
            peer: None,
            probe: None,
        };
        let hello = format!(
            "{{\"type\":\"hello\",\"version\":1,\"nick\":\"{nick}\",\"session\":\"{nick}\"}}\n\
             {{\"type\":\"join\",\"room\":\"{room}\"}}\n"
        );
        if c.stream.write_all(hello.as_bytes()).is_err() {
            return Opened::Elsewhere(None);
        }
        loop {
            let Received::Line(line) = c.recv() else {
                return Opened::Elsewhere(None);
            };
            if line.starts_with("{\"type\":\"welcome\"") {
                c.peer = field(&line, "peer").and_then(|p| p.parse().ok());
                c.probe = field(&line, "probe_ms")
                    .and_then(|ms| ms.parse().ok())
                    .map(Duration::from_millis);
            }
            if line.starts_with("{\"type\":\"joined\"") {
                if let Some(probe) = c.probe {
                    let _ = c.stream.set_read_timeout(Some(probe));
                }
                return Opened::Ready(c);
            }
            if line.starts_with("{\"type\":\"redirect\"") || line.starts_with("{\"type\":\"error\"")
            {
                return Opened::Elsewhere(field(&line, "primary").and_then(|p| p.parse().ok()));
            }
        }
    }

    fn recv(&mut self) -> Received {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => Received::Line(line),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Received::Silent
            }
            _ => Received::Closed,
        }
    }

    /// The liveness rule: the node said nothing for `probe`; ask its peer. The new
    /// connection if the peer welcomed the probe (it serves now), else `None`: stay.
    fn probe_peer(&self, nick: &str, room: &str) -> Option<Connection> {
        self.probe?;
        match Connection::open(self.peer?, nick, room) {
            Opened::Ready(moved) => Some(moved),
            Opened::Elsewhere(_) => None,
        }
    }
}

impl GapClient {
    /// Starts sending to `servers[first]`, falling back to the others.
    pub fn start(nick: &str, room: &str, servers: Vec<SocketAddr>, first: usize) -> GapClient {
        let acked = Arc::new(AtomicU64::new(0));
        let breaks = Arc::new(Mutex::new(Vec::new()));
        let out_of_order = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (acked, breaks, out_of_order, stop) = (
                acked.clone(),
                breaks.clone(),
                out_of_order.clone(),
                stop.clone(),
            );
            let nick = nick.to_string();
            let room = room.to_string();
            std::thread::Builder::new()
                .name("gap-client".into())
                .spawn(move || {
                    run(
                        &nick,
                        &room,
                        &servers,
                        first,
                        &acked,
                        &breaks,
                        &out_of_order,
                        &stop,
                    )
                })
                .expect("start the gap client thread")
        };
        GapClient {
            acked,
            breaks,
            out_of_order,
            stop,
            thread: Some(thread),
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn breaks(&self) -> Vec<Break> {
        self.breaks.lock().expect("breaks lock").clone()
    }

    /// Waits until `count` breaks are recorded or `deadline` passes.
    pub fn wait_breaks(&self, count: usize, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if self.breaks.lock().expect("breaks lock").len() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// Waits until `more` acks beyond `from` arrived or `deadline` passes.
    pub fn wait_acks(&self, from: u64, more: u64, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if self.acked() >= from + more {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GapClient {
    fn drop(&mut self) {
        self.stop();
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    nick: &str,
    room: &str,
    servers: &[SocketAddr],
    first: usize,
    acked: &AtomicU64,
    breaks: &Mutex<Vec<Break>>,
    out_of_order: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut next = 0u64;
    let mut last_seq = 0u64;
    let mut target: Option<SocketAddr> = Some(servers[first % servers.len()]);
    let mut turn = first;
    let mut last_ack: Option<Instant> = None;
    let mut broken = false;
    while !stop.load(Ordering::Relaxed) {
        let addr = target.take().unwrap_or_else(|| {
            turn += 1;
            servers[turn % servers.len()]
        });
        let mut c = match Connection::open(addr, nick, room) {
            Opened::Ready(c) => c,
            Opened::Elsewhere(redirect) => {
                target = redirect;
                broken |= last_ack.is_some();
                std::thread::sleep(RETRY_PAUSE);
                continue;
            }
        };
        'conn: while !stop.load(Ordering::Relaxed) {
            let id = format!("g-{next}");
            let send = format!(
                "{{\"type\":\"send\",\"room\":\"{room}\",\"id\":\"{id}\",\"body\":\"gap probe {next}\"}}\n"
            );
            if c.stream.write_all(send.as_bytes()).is_err() {
                break;
            }
            loop {
                let line = match c.recv() {
                    Received::Line(line) => line,
                    Received::Closed => break 'conn,
                    Received::Silent if c.probe.is_none() => break 'conn,
                    Received::Silent => {
                        if let Some(moved) = c.probe_peer(nick, room) {
                            // Resume there: the same id goes out again on the new node.
                            c = moved;
                            broken |= last_ack.is_some();
                            continue 'conn;
                        }
                        continue;
                    }
                };
                if line.starts_with("{\"type\":\"ack\"") {
                    if field(&line, "id") != Some(id.as_str()) {
                        continue;
                    }
                    let seq: u64 = field(&line, "seq")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    if seq <= last_seq {
                        out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    last_seq = seq;
                    let now = Instant::now();
                    if broken {
                        if let Some(before) = last_ack {
                            breaks.lock().expect("breaks lock").push(Break {
                                last_ack_before: before,
                                first_ack_after: now,
                            });
                        }
                        broken = false;
                    }
                    last_ack = Some(now);
                    acked.fetch_add(1, Ordering::Relaxed);
                    next += 1;
                    continue 'conn;
                }
                if line.starts_with("{\"type\":\"goodbye\"") {
                    target = field(&line, "primary").and_then(|p| p.parse().ok());
                    break 'conn;
                }
                if line.starts_with("{\"type\":\"error\"") {
                    // unavailable / not_primary / rate_limited: resend the same id shortly.
                    std::thread::sleep(RETRY_PAUSE);
                    continue 'conn;
                }
            }
        }
        broken |= last_ack.is_some();
    }
}
