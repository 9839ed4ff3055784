//! The fan-out load generator: one room, N members, P senders, on one thread and one mio
//! poll (the issue gives the load generator one core).
//!
//! Each sender keeps at most `window` sends in flight (or sends at a fixed total rate,
//! still bounded by the window); a send is in flight until its ack, or with
//! [`WindowOn::Deliveries`] until its ack and its delivery to every member. The body
//! carries the sender's index, a per-sender counter and the send time in nanoseconds since
//! the run began on this process's monotonic clock, so every delivery yields its latency and
//! lets each member check, per sender, that nothing is missing or out of order. pbchat
//! senders are members too (the protocol delivers a message to its sender); Redis
//! publishers are separate connections (a subscribed Redis connection cannot publish), so
//! both deliver each message to exactly N connections.
//!
//! Parsing is by fixed prefixes (`{"type":"msg"`), not a JSON library: the generator must
//! cost less per delivery than the server it measures, or it measures itself.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::frames::{parse_body, BodyFields, Frame, Wire, NATS_PONG, NATS_SID};
pub use super::frames::{Protocol, BODY_BYTES_MIN};
use super::procs::{cpu_ticks, own_runnable_wait_ns, runnable_wait_ns, CoreTimes};
use super::report::Histogram;
use super::window::DeliveryRing;
pub use super::window::WindowOn;
use super::ws::{self, Transport};

/// Errors kept verbatim per run; past it they are only counted.
const ERRORS_KEPT_MAX: usize = 20;
/// Each connection's receive buffer: one `read` takes up to this much (about 140 Redis
/// deliveries of 64-byte bodies), so a busy member costs one syscall per ~100 deliveries.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// A member's or subscriber's setup (connect, hello, join) may take this long.
const SETUP_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub protocol: Protocol,
    /// pbchat members' socket; `addr` is the web listener's for `Ws`.
    pub transport: Transport,
    pub addr: SocketAddr,
    pub members: usize,
    pub senders: usize,
    /// Sends in flight per sender, at most.
    pub window: usize,
    /// What ends a send's flight: its ack, or its ack and its delivery to every member.
    pub window_on: WindowOn,
    pub body_bytes: usize,
    pub warmup: Duration,
    pub measure: Duration,
    /// Total sends per second over all senders; `None`: as fast as the windows allow.
    pub rate: Option<f64>,
    /// Stop sending after this many sends in all (a fill, not a timed run); the measured
    /// window then runs from the first send to the last delivery.
    pub total_sends: Option<u64>,
    pub room: String,
    /// Makes nicks and sessions unique across runs against one server.
    pub tag: String,
    /// Processes whose CPU time is read at the start and end of the measured window.
    pub sample_pids: Vec<u32>,
    /// The core the server is pinned to, if it is: how much of the window it spent idle and
    /// waiting on the disk is read too.
    pub server_core: Option<usize>,
    /// After the window, how long to wait for outstanding acks and deliveries.
    pub drain: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    pub measured_secs: f64,
    /// Acks received within the measured window.
    pub acks_in_window: u64,
    /// Deliveries received within the measured window, over all members.
    pub deliveries_in_window: u64,
    /// Send-to-delivery latency of the deliveries in the window, nanoseconds.
    pub latency_ns: Histogram,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    /// Sends (times members) never delivered by the end of the drain.
    pub lost: u64,
    /// Deliveries that were not the next one expected from their sender at that member,
    /// or whose `seq` did not increase.
    pub out_of_order: u64,
    pub errors: Vec<String>,
    pub error_count: u64,
    /// CPU ticks of each `sample_pids` process within the window.
    pub server_ticks: Vec<u64>,
    /// Nanoseconds each `sample_pids` process's threads waited, runnable, for a CPU within
    /// the window (contention from outside the benchmark shows here).
    pub server_wait_ns: Vec<u64>,
    /// CPU time of the generator's thread within the window (user + system).
    pub loadgen_cpu_ns: u64,
    /// Nanoseconds the generator's thread waited, runnable, for its core within the window.
    pub loadgen_wait_ns: u64,
    /// Where the server's core's time went within the window (`LoadSpec::server_core`).
    pub server_core: Option<CoreTimes>,
    /// Rate mode: times a due send waited because its sender's window was full.
    pub window_full: u64,
}

impl LoadResult {
    fn error(&mut self, message: String) {
        self.error_count += 1;
        if self.errors.len() < ERRORS_KEPT_MAX {
            self.errors.push(message);
        }
    }
}

struct Conn {
    stream: TcpStream,
    /// Received bytes not yet handled are `inbuf[..filled]`: a frame cut by a read waits
    /// at the front for its rest. Its length is fixed when the connection opens.
    inbuf: Vec<u8>,
    filled: usize,
    /// `inbuf[..lines_end]` is ready for the frame parser: all of `filled` on TCP; on a
    /// WebSocket, the messages unwrapped so far (a cut WebSocket frame follows them).
    lines_end: usize,
    /// A pbchat member over WebSocket: what it reads is unwrapped, what it sends wrapped.
    websocket: bool,
    out: Vec<u8>,
    /// Receives the room's messages (pbchat members, Redis and NATS subscribers).
    member: bool,
    /// Index into `senders` when this connection sends.
    sender: Option<usize>,
    /// pbchat: highest `seq` delivered here; must increase.
    last_seq: u64,
    closed: bool,
}

struct Sender {
    conn: usize,
    next_counter: u64,
    /// Sends not yet acknowledged.
    in_flight: usize,
}

/// Whether sender `s` may send once more: fewer than `window` sends unacknowledged and,
/// with [`WindowOn::Deliveries`] (`rings` holds one per sender), fewer than `window` not
/// yet received by every member.
fn window_open(window: usize, s: usize, sender: &Sender, rings: &[DeliveryRing]) -> bool {
    let undelivered = rings
        .get(s)
        .map_or(0, |ring| sender.next_counter - ring.delivered());
    sender.in_flight < window && undelivered < window as u64
}

/// Reads from `stream` until one of the `done` markers has been seen (pbchat: a `joined`
/// line; Redis: the subscribe confirmation; NATS: the `PONG` after `SUB`); returns the
/// bytes after it.
fn setup_read(stream: &mut std::net::TcpStream, done: &[u8]) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let deadline = Instant::now() + SETUP_DEADLINE;
    loop {
        if let Some(at) = find(&buf, done) {
            // Keep what follows the line that held the marker.
            let after = at + done.len();
            let line_end = if done.ends_with(b"\n") {
                after
            } else {
                buf[after..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(buf.len(), |p| after + p + 1)
            };
            return Ok(buf.split_off(line_end));
        }
        refused(&buf)?;
        read_more(stream, &mut buf, deadline)?;
    }
}

/// An error, a redirect or a Redis error in what setup read so far.
fn refused(buf: &[u8]) -> Result<(), String> {
    let refusal = [&b"\"type\":\"error\""[..], b"redirect", b"-ERR"]
        .iter()
        .find_map(|marker| find(buf, marker));
    match refusal {
        Some(at) => {
            let line = String::from_utf8_lossy(&buf[at.saturating_sub(2)..]).into_owned();
            Err(format!("setup refused: {}", line.trim_end()))
        }
        None => Ok(()),
    }
}

/// One blocking read during setup, appended to `buf`.
fn read_more(
    stream: &mut std::net::TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<(), String> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if Instant::now() >= deadline {
            return Err("setup timed out".into());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("closed during setup".into()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("setup read: {e}")),
        }
    }
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

fn connect(addr: SocketAddr) -> Result<std::net::TcpStream, String> {
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Connects and sends `request`, then reads up to `done`: one connection's setup.
fn open_session(
    addr: SocketAddr,
    request: &str,
    done: &[u8],
) -> Result<(std::net::TcpStream, Vec<u8>), String> {
    let mut stream = connect(addr)?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let rest = setup_read(&mut stream, done)?;
    Ok((stream, rest))
}

/// [`open_session`] over a WebSocket: upgrade, then `request`'s lines as text messages;
/// reads up to the message holding `done` and returns the raw bytes after it.
fn open_websocket(
    addr: SocketAddr,
    request: &str,
    done: &[u8],
) -> Result<(std::net::TcpStream, Vec<u8>), String> {
    let mut stream = connect(addr)?;
    let deadline = Instant::now() + SETUP_DEADLINE;
    let upgrade = ws::upgrade_request(&addr.to_string());
    stream
        .write_all(upgrade.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        read_more(&mut stream, &mut buf, deadline)?;
    };
    if !buf.starts_with(b"HTTP/1.1 101 ") {
        let head = String::from_utf8_lossy(&buf[..head_end]);
        return Err(format!(
            "upgrade refused: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    let mut messages = Vec::new();
    for line in request.lines() {
        let start = messages.len();
        messages.extend_from_slice(line.as_bytes());
        ws::frame_tail(&mut messages, start);
    }
    stream.write_all(&messages).map_err(|e| e.to_string())?;
    let mut at = head_end;
    loop {
        while let Some(head) = ws::complete_frame(&buf[at..])? {
            let payload = &buf[at + head.header..at + head.header + head.payload];
            at += head.header + head.payload;
            if find(payload, done).is_some() {
                return Ok((stream, buf.split_off(at)));
            }
            refused(payload)?;
        }
        read_more(&mut stream, &mut buf, deadline)?;
    }
}

/// The connections of a run and who sends, as setup leaves them.
#[derive(Default)]
struct Conns {
    conns: Vec<Conn>,
    senders: Vec<Sender>,
}

impl Conns {
    /// Registers a set-up connection with `poll`; `rest` is what setup read past its end.
    fn add(
        &mut self,
        poll: &Poll,
        spec: &LoadSpec,
        (stream, rest): (std::net::TcpStream, Vec<u8>),
        member: bool,
        sends: bool,
    ) -> Result<(), String> {
        let index = self.conns.len();
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut stream = TcpStream::from_std(stream);
        poll.registry()
            .register(
                &mut stream,
                Token(index),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        // Room for several whole frames whatever the body size, and for what setup left.
        let frame_bytes_max = spec.body_bytes + 256;
        let size = READ_BUFFER_BYTES
            .max(4 * frame_bytes_max)
            .max(2 * rest.len());
        let mut inbuf = vec![0; size];
        inbuf[..rest.len()].copy_from_slice(&rest);
        let websocket = spec.protocol == Protocol::Pbchat && spec.transport == Transport::Ws;
        let mut out = Vec::new();
        let (mut lines_end, mut filled) = (rest.len(), rest.len());
        if websocket {
            let done = ws::unframe(&mut inbuf, 0, filled, &mut out)?;
            (lines_end, filled) = (done.lines_end, done.filled);
        }
        let sender = sends.then(|| {
            self.senders.push(Sender {
                conn: index,
                next_counter: 0,
                in_flight: 0,
            });
            self.senders.len() - 1
        });
        self.conns.push(Conn {
            stream,
            inbuf,
            filled,
            lines_end,
            websocket,
            out,
            member,
            sender,
            last_seq: 0,
            closed: false,
        });
        Ok(())
    }
}

/// Opens and sets up every connection of the run, one at a time (setup is not measured).
/// Members (subscribers) come first, so a connection's index below `members` is a member.
fn setup(spec: &LoadSpec, poll: &Poll) -> Result<Conns, String> {
    let mut conns = Conns::default();
    let room = &spec.room;
    match spec.protocol {
        Protocol::Pbchat => {
            for i in 0..spec.members {
                let nick = format!("b{}m{i}", spec.tag);
                let hello = format!(
                    "{{\"type\":\"hello\",\"version\":1,\"nick\":\"{nick}\",\"session\":\"{nick}\"}}\n\
                     {{\"type\":\"join\",\"room\":\"{room}\"}}\n"
                );
                let joined = b"{\"type\":\"joined\"";
                let session = match spec.transport {
                    Transport::Tcp => open_session(spec.addr, &hello, joined),
                    Transport::Ws => open_websocket(spec.addr, &hello, joined),
                }
                .map_err(|e| format!("member {i}: {e}"))?;
                conns.add(poll, spec, session, true, i < spec.senders)?;
            }
        }
        Protocol::Redis => {
            for i in 0..spec.members {
                let subscribe = format!("*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{room}\r\n", room.len());
                let (mut stream, rest) = open_session(spec.addr, &subscribe, b"subscribe\r\n")
                    .map_err(|e| format!("subscriber {i}: {e}"))?;
                // The confirmation goes on: `$<len>\r\n<room>\r\n:1\r\n`; skip those lines.
                let rest = skip_lines(rest, 3, &mut stream)?;
                conns.add(poll, spec, (stream, rest), true, false)?;
            }
            for s in 0..spec.senders {
                let session = (connect(spec.addr), Vec::new());
                let stream = session.0.map_err(|e| format!("publisher {s}: {e}"))?;
                conns.add(poll, spec, (stream, session.1), false, true)?;
            }
        }
        Protocol::Nats => {
            // Subscribers stay quiet (`verbose` off); publishers get `+OK` for each PUB,
            // the acknowledgement that bounds their window (docs/benchmarks.md, "NATS").
            let subscribe = format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {room} {NATS_SID}\r\nPING\r\n"
            );
            for i in 0..spec.members {
                let session = open_session(spec.addr, &subscribe, NATS_PONG)
                    .map_err(|e| format!("subscriber {i}: {e}"))?;
                conns.add(poll, spec, session, true, false)?;
            }
            let publish = "CONNECT {\"verbose\":true,\"pedantic\":false}\r\nPING\r\n";
            for s in 0..spec.senders {
                let session = open_session(spec.addr, publish, NATS_PONG)
                    .map_err(|e| format!("publisher {s}: {e}"))?;
                conns.add(poll, spec, session, false, true)?;
            }
        }
    }
    Ok(conns)
}

/// Drops the first `lines` CRLF lines of what `stream` sends, reading more as needed.
fn skip_lines(
    mut buf: Vec<u8>,
    lines: usize,
    stream: &mut std::net::TcpStream,
) -> Result<Vec<u8>, String> {
    let mut chunk = [0u8; 4096];
    let mut skipped = 0;
    while skipped < lines {
        match find(&buf, b"\r\n") {
            Some(at) => {
                buf.drain(..at + 2);
                skipped += 1;
            }
            None => match stream.read(&mut chunk) {
                Ok(0) => return Err("closed during subscribe".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("subscribe: {e}")),
            },
        }
    }
    Ok(buf)
}

/// The run's bookkeeping, apart from the sockets.
struct Tally {
    started: Instant,
    window_start_ns: u64,
    window_end_ns: u64,
    /// `expected[m * senders + s]`: the next counter member `m` should get from sender `s`.
    expected: Vec<u64>,
    senders: usize,
    /// Connections that receive the room's messages.
    subscribers: usize,
    /// With [`WindowOn::Deliveries`], one per sender: its sends not yet received by every
    /// member. Empty with acks.
    rings: Vec<DeliveryRing>,
    result: LoadResult,
}

impl Tally {
    fn in_window(&self, now_ns: u64) -> bool {
        now_ns >= self.window_start_ns && now_ns < self.window_end_ns
    }

    fn on_delivery(&mut self, member: usize, body: &[u8], now_ns: u64) {
        let Some(fields) = parse_body(body) else {
            self.result
                .error(format!("member {member}: a message not from this run"));
            return;
        };
        if fields.sender >= self.senders {
            self.result
                .error(format!("member {member}: unknown sender {}", fields.sender));
            return;
        }
        self.result.delivered += 1;
        let slot = &mut self.expected[member * self.senders + fields.sender];
        let in_order = fields.counter == *slot;
        if !in_order {
            self.result.out_of_order += 1;
        }
        if fields.counter >= *slot {
            *slot = fields.counter + 1;
        }
        // Only the expected send counts towards full delivery, so a member counts each send
        // once; one it skipped (lost) never completes and holds its sender's window.
        if let (true, Some(ring)) = (in_order, self.rings.get_mut(fields.sender)) {
            if let Err(e) = ring.on_delivery(fields.counter) {
                let sender = fields.sender;
                self.result
                    .error(format!("member {member}: sender {sender}: {e}"));
            }
        }
        if self.in_window(now_ns) {
            self.result.deliveries_in_window += 1;
            self.result
                .latency_ns
                .record(now_ns.saturating_sub(fields.sent_ns));
        }
    }
}

/// Handles the complete frames at the front of `conn.inbuf`, keeps a cut one for the next
/// read, and returns the number of acks among them.
fn consume(wire: &Wire, index: usize, conn: &mut Conn, tally: &mut Tally, now_ns: u64) -> usize {
    let mut acks = 0;
    let mut at = 0;
    while let Some((used, frame)) = wire.next(&conn.inbuf[at..conn.lines_end]) {
        at += used;
        match frame {
            Frame::Delivery { body, seq } => {
                if let Some(seq) = seq {
                    if seq <= conn.last_seq {
                        tally.result.out_of_order += 1;
                    }
                    conn.last_seq = seq;
                }
                tally.on_delivery(index, body, now_ns);
            }
            Frame::Ack { receivers } => {
                acks += 1;
                if receivers.is_some_and(|r| r != tally.subscribers as u64) {
                    tally.result.error(format!(
                        "publisher {index}: PUBLISH reached {receivers:?} subscribers, not {}",
                        tally.subscribers
                    ));
                }
            }
            Frame::Ping => conn.out.extend_from_slice(b"PONG\r\n"),
            Frame::Error(text) => tally.result.error(format!(
                "connection {index}: {}",
                String::from_utf8_lossy(text)
            )),
            Frame::Other => {}
        }
    }
    conn.inbuf.copy_within(at..conn.filled, 0);
    conn.filled -= at;
    conn.lines_end -= at;
    acks
}

/// Reads and handles everything available: (still open, acks received).
fn receive(
    wire: &Wire,
    index: usize,
    conn: &mut Conn,
    tally: &mut Tally,
    now_ns: u64,
) -> Result<(bool, usize), String> {
    let mut acks = 0;
    loop {
        let space = conn.inbuf.len() - conn.filled;
        if space == 0 {
            return Err(format!(
                "connection {index}: a frame longer than the {}-byte read buffer",
                conn.inbuf.len()
            ));
        }
        match conn.stream.read(&mut conn.inbuf[conn.filled..]) {
            Ok(0) => return Ok((false, acks)),
            Ok(n) => {
                conn.filled += n;
                let closed =
                    unwrap_messages(conn).map_err(|e| format!("connection {index}: {e}"))?;
                acks += consume(wire, index, conn, tally, now_ns);
                if closed {
                    return Ok((false, acks));
                }
                if n < space {
                    // Probably drained; the next edge tells if not. Avoids one EAGAIN read.
                    return Ok((true, acks));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((true, acks)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("connection {index}: read: {e}")),
        }
    }
}

/// Makes what was just read ready for the frame parser; true when the server closed the
/// WebSocket.
fn unwrap_messages(conn: &mut Conn) -> Result<bool, String> {
    if !conn.websocket {
        conn.lines_end = conn.filled;
        return Ok(false);
    }
    let done = ws::unframe(&mut conn.inbuf, conn.lines_end, conn.filled, &mut conn.out)?;
    (conn.lines_end, conn.filled) = (done.lines_end, done.filled);
    Ok(done.closed)
}

fn flush(conn: &mut Conn) -> io::Result<()> {
    while !conn.out.is_empty() {
        match conn.stream.write(&conn.out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Appends one send to the sender's output.
fn queue_send(
    spec: &LoadSpec,
    wire: &Wire,
    s: usize,
    sender: &mut Sender,
    out: &mut Vec<u8>,
    t_ns: u64,
) {
    let fields = BodyFields {
        sender: s,
        counter: sender.next_counter,
        sent_ns: t_ns,
    };
    let start = out.len();
    wire.write_send(out, &spec.room, fields);
    if spec.protocol == Protocol::Pbchat && spec.transport == Transport::Ws {
        ws::frame_tail(out, start);
    }
    sender.next_counter += 1;
    sender.in_flight += 1;
}

/// CPU time (user + system) of the calling thread, nanoseconds.
fn thread_cpu_ns() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    getrusage(UsageWho::RUSAGE_THREAD).map_or(0, |usage| {
        (usage.user_time().num_nanoseconds() + usage.system_time().num_nanoseconds()) as u64
    })
}

/// Runs one load: setup, warm-up, the measured window, then a drain that waits for every
/// outstanding ack and delivery, and the lost / out-of-order accounting.
pub fn run(spec: &LoadSpec) -> Result<LoadResult, String> {
    assert!(
        spec.body_bytes >= BODY_BYTES_MIN,
        "body too small for its fields"
    );
    assert!(spec.window > 0 && spec.senders > 0 && spec.members > 0);
    if spec.protocol == Protocol::Pbchat && spec.senders > spec.members {
        return Err("pbchat senders are members: senders must be at most members".into());
    }
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let Conns {
        mut conns,
        mut senders,
    } = setup(spec, &poll)?;
    let wire = Wire::new(spec.protocol, &spec.room, spec.body_bytes);
    let started = Instant::now();
    let ns = |t: Duration| t.as_nanos() as u64;
    let window_start_ns = ns(spec.warmup);
    let mut tally = Tally {
        started,
        window_start_ns,
        window_end_ns: window_start_ns.saturating_add(ns(spec.measure)),
        expected: vec![0; conns.len() * senders.len()],
        senders: senders.len(),
        subscribers: spec.members,
        rings: match spec.window_on {
            WindowOn::Acks => Vec::new(),
            WindowOn::Deliveries => (0..senders.len())
                .map(|_| DeliveryRing::new(spec.window, spec.members))
                .collect(),
        },
        result: LoadResult::default(),
    };
    // At the window's start: the servers' CPU ticks, the generator's CPU and wait.
    let mut ticks_start: Option<(Vec<u64>, u64, u64)> = None;
    let mut core_start: Option<CoreTimes> = None;
    let mut wait_start: Vec<u64> = Vec::new();
    let mut sending = true;
    let mut drain_until: Option<Instant> = None;
    let mut events = Events::with_capacity(1024);
    let mut issued: u64 = 0;
    let mut next_sender = 0usize;
    let mut window_end_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let now_ns = ns(now - tally.started);
        if ticks_start.is_none() && now_ns >= tally.window_start_ns {
            wait_start = spec
                .sample_pids
                .iter()
                .map(|&p| runnable_wait_ns(p).unwrap_or(0))
                .collect();
            ticks_start = Some((
                spec.sample_pids
                    .iter()
                    .map(|&p| cpu_ticks(p).unwrap_or(0))
                    .collect(),
                thread_cpu_ns(),
                own_runnable_wait_ns(),
            ));
            core_start = spec.server_core.and_then(CoreTimes::read);
        }
        let fill_done = spec.total_sends.is_some_and(|total| issued >= total);
        if sending && (now_ns >= tally.window_end_ns || fill_done) {
            sending = false;
            if fill_done {
                // A fill measures from the first send to the last delivery.
                tally.window_end_ns = u64::MAX;
            } else {
                window_end_at = Some(now);
                if let Some((server, own, own_wait)) = &ticks_start {
                    tally.result.server_ticks = spec
                        .sample_pids
                        .iter()
                        .zip(server)
                        .map(|(&p, &before)| cpu_ticks(p).unwrap_or(before).saturating_sub(before))
                        .collect();
                    tally.result.server_wait_ns = spec
                        .sample_pids
                        .iter()
                        .zip(&wait_start)
                        .map(|(&p, &before)| {
                            runnable_wait_ns(p).unwrap_or(before).saturating_sub(before)
                        })
                        .collect();
                    tally.result.loadgen_cpu_ns = thread_cpu_ns().saturating_sub(*own);
                    tally.result.loadgen_wait_ns = own_runnable_wait_ns().saturating_sub(*own_wait);
                    tally.result.server_core = core_start
                        .zip(spec.server_core.and_then(CoreTimes::read))
                        .map(|(start, end)| end.since(start));
                }
            }
            drain_until = Some(now + spec.drain);
        }
        if let Some(until) = drain_until {
            let expected = tally.result.sent * (spec.members as u64);
            let settled = senders
                .iter()
                .all(|s| s.in_flight == 0 || conns[s.conn].closed)
                && tally.result.delivered >= expected;
            if settled || now >= until {
                if fill_done {
                    window_end_at = Some(now);
                }
                break;
            }
        }
        if sending {
            let t_ns = now_ns;
            match spec.rate {
                None => {
                    for (s, sender) in senders.iter_mut().enumerate() {
                        let conn = &mut conns[sender.conn];
                        if conn.closed {
                            continue;
                        }
                        while window_open(spec.window, s, sender, &tally.rings)
                            && spec.total_sends.is_none_or(|total| issued < total)
                        {
                            queue_send(spec, &wire, s, sender, &mut conn.out, t_ns);
                            issued += 1;
                        }
                    }
                }
                Some(rate) => {
                    let due = (rate * (now - started).as_secs_f64()) as u64;
                    let mut stuck = 0;
                    while issued < due
                        && spec.total_sends.is_none_or(|total| issued < total)
                        && stuck < senders.len()
                    {
                        let s = next_sender;
                        next_sender = (next_sender + 1) % senders.len();
                        let sender = &mut senders[s];
                        let conn = &mut conns[sender.conn];
                        if conn.closed || !window_open(spec.window, s, sender, &tally.rings) {
                            stuck += 1;
                            continue;
                        }
                        stuck = 0;
                        queue_send(spec, &wire, s, sender, &mut conn.out, t_ns);
                        issued += 1;
                    }
                    if issued < due {
                        tally.result.window_full += 1;
                    }
                }
            }
            tally.result.sent = issued;
            for sender in &senders {
                let conn = &mut conns[sender.conn];
                if !conn.closed && !conn.out.is_empty() {
                    if let Err(e) = flush(conn) {
                        conn.closed = true;
                        tally
                            .result
                            .error(format!("sender {}: write: {e}", sender.conn));
                    }
                }
            }
        }
        let timeout = if spec.rate.is_some() || drain_until.is_some() {
            Duration::from_micros(200)
        } else {
            Duration::from_millis(1)
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("poll: {e}"));
            }
        }
        let now_ns = ns(Instant::now() - tally.started);
        for event in events.iter() {
            let index = event.token().0;
            let conn = &mut conns[index];
            if conn.closed {
                continue;
            }
            if event.is_writable() && !conn.out.is_empty() {
                if let Err(e) = flush(conn) {
                    conn.closed = true;
                    tally
                        .result
                        .error(format!("connection {index}: write: {e}"));
                    continue;
                }
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                let (open, acks) = match receive(&wire, index, conn, &mut tally, now_ns) {
                    Ok(received) => received,
                    Err(e) => {
                        tally.result.error(e);
                        (false, 0)
                    }
                };
                if open && !conn.out.is_empty() {
                    // A NATS PING answered; a sender's queued sends go out with it.
                    if let Err(e) = flush(conn) {
                        tally
                            .result
                            .error(format!("connection {index}: write: {e}"));
                    }
                }
                if let Some(s) = conn.sender {
                    let sender = &mut senders[s];
                    sender.in_flight = sender.in_flight.saturating_sub(acks);
                    tally.result.acked += acks as u64;
                    if tally.in_window(now_ns) {
                        tally.result.acks_in_window += acks as u64;
                    }
                }
                if !open {
                    conn.closed = true;
                    tally
                        .result
                        .error(format!("connection {index}: closed by the server"));
                }
            }
        }
    }
    let mut result = tally.result;
    let window_started = started + spec.warmup;
    result.measured_secs = match (spec.total_sends, window_end_at) {
        (Some(_), Some(end)) => (end - started).as_secs_f64(),
        (None, Some(end)) => (end.max(window_started) - window_started).as_secs_f64(),
        _ => spec.measure.as_secs_f64(),
    };
    if spec.total_sends.is_some() {
        result.deliveries_in_window = result.delivered;
        result.acks_in_window = result.acked;
    }
    // Lost: what each sender sent that some member never got (its expected counter stops
    // short of what was sent).
    let sent_by: Vec<u64> = senders.iter().map(|s| s.next_counter).collect();
    for (slot, &expected) in tally.expected.iter().enumerate() {
        let member = slot / senders.len().max(1);
        if !conns[member].member {
            continue;
        }
        let sender = slot % senders.len().max(1);
        result.lost += sent_by[sender].saturating_sub(expected);
    }
    drop(conns);
    let _ = poll.registry();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::write_body;

    /// A tally of `members` members and `senders` senders whose windows count deliveries.
    fn tally(members: usize, senders: usize, window: usize) -> Tally {
        Tally {
            started: Instant::now(),
            window_start_ns: 0,
            window_end_ns: u64::MAX,
            expected: vec![0; members * senders],
            senders,
            subscribers: members,
            rings: (0..senders)
                .map(|_| DeliveryRing::new(window, members))
                .collect(),
            result: LoadResult::default(),
        }
    }

    fn deliver(tally: &mut Tally, member: usize, sender: usize, counter: u64) {
        let mut body = Vec::new();
        let fields = BodyFields {
            sender,
            counter,
            sent_ns: 0,
        };
        write_body(&mut body, fields, BODY_BYTES_MIN);
        tally.on_delivery(member, &body, 1);
    }

    fn delivered(tally: &Tally) -> Vec<u64> {
        tally.rings.iter().map(DeliveryRing::delivered).collect()
    }

    #[test]
    fn deliveries_interleaved_across_senders_free_each_senders_window_alone() {
        let mut tally = tally(2, 2, 4);
        // Member 0 reads sender 1 before sender 0; member 1 the other way round.
        for (member, sender, counter) in [(0, 1, 0), (0, 1, 1), (1, 0, 0), (0, 0, 0)] {
            deliver(&mut tally, member, sender, counter);
        }
        assert_eq!(delivered(&tally), [1, 0]);
        deliver(&mut tally, 1, 1, 0);
        deliver(&mut tally, 1, 1, 1);
        assert_eq!(delivered(&tally), [1, 2]);
        assert_eq!(tally.result.out_of_order, 0);
        assert_eq!(tally.result.error_count, 0);
    }

    #[test]
    fn a_send_a_member_skipped_holds_its_senders_window() {
        let mut tally = tally(2, 1, 4);
        deliver(&mut tally, 0, 0, 0);
        deliver(&mut tally, 1, 0, 1); // member 1 never got send 0
        deliver(&mut tally, 0, 0, 1);
        assert_eq!(delivered(&tally), [0]);
        assert_eq!(tally.result.out_of_order, 1);
        let sender = Sender {
            conn: 0,
            next_counter: 4,
            in_flight: 0,
        };
        assert!(
            !window_open(4, 0, &sender, &tally.rings),
            "four sends not fully delivered fill a window of 4"
        );
        assert!(window_open(4, 0, &sender, &[]), "acks alone: open");
    }
}
