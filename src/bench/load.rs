//! The fan-out load generator: one room, N members, P senders, on one thread and one mio
//! poll (the issue gives the load generator one core).
//!
//! Each sender keeps at most `window` sends unacknowledged (or sends at a fixed total rate,
//! still bounded by the window). The body carries the sender's index, a per-sender counter
//! and the send time in nanoseconds since the run began on this process's monotonic clock,
//! so every delivery yields its latency and lets each member check, per sender, that nothing
//! is missing or out of order. pbchat senders are members too (the protocol delivers a
//! message to its sender); Redis publishers are separate connections (a subscribed Redis
//! connection cannot publish), so both deliver each message to exactly N connections.
//!
//! Parsing is by fixed prefixes (`{"type":"msg"`), not a JSON library: the generator must
//! cost less per delivery than the server it measures, or it measures itself.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::procs::{cpu_ticks, runnable_wait_ns};

/// Smallest body that holds the sender, counter and send-time fields.
pub const BODY_BYTES_MIN: usize = 48;
/// Errors kept verbatim per run; past it they are only counted.
const ERRORS_KEPT_MAX: usize = 20;
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// A member's or subscriber's setup (connect, hello, join) may take this long.
const SETUP_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Pbchat,
    Redis,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pbchat => "pbchat",
            Protocol::Redis => "redis",
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub protocol: Protocol,
    pub addr: SocketAddr,
    pub members: usize,
    pub senders: usize,
    /// Unacknowledged sends per sender, at most.
    pub window: usize,
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
    /// Send-to-delivery latency of each delivery in the window, nanoseconds.
    pub latencies_ns: Vec<u64>,
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
    /// CPU ticks of this process within the window.
    pub loadgen_ticks: u64,
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
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Receives the room's messages (pbchat members, Redis subscribers).
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
    in_flight: usize,
}

/// The body of one send: `ssssss.cccccccccccc.tttttttttttttttttttt.` padded with `x`.
fn write_body(out: &mut Vec<u8>, sender: usize, counter: u64, t_ns: u64, body_bytes: usize) {
    let start = out.len();
    let _ = write!(out, "{sender:06}.{counter:012}.{t_ns:020}.");
    let used = out.len() - start;
    out.resize(start + body_bytes.max(used), b'x');
}

/// Reads the fields `write_body` wrote; `None` for anything else.
fn parse_body(body: &[u8]) -> Option<(usize, u64, u64)> {
    if body.len() < 41 || body[6] != b'.' || body[19] != b'.' || body[40] != b'.' {
        return None;
    }
    Some((
        parse_u64(&body[0..6])? as usize,
        parse_u64(&body[7..19])?,
        parse_u64(&body[20..40])?,
    ))
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(value)
}

/// Digits at the start of `bytes`.
pub(super) fn leading_u64(bytes: &[u8]) -> Option<u64> {
    let end = bytes
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len());
    parse_u64(&bytes[..end])
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// One RESP value as far as this generator needs: arrays of bulk strings and integers.
#[derive(Debug)]
enum Resp<'a> {
    Array(Vec<&'a [u8]>),
    Integer(i64),
    Simple,
    Error(&'a [u8]),
}

/// Parses one complete RESP value at the start of `buf`: (bytes used, value), or `None`
/// while incomplete. Malformed input is reported as an error value.
fn parse_resp(buf: &[u8]) -> Option<(usize, Resp<'_>)> {
    let line_end = find(buf, b"\r\n")?;
    let head = &buf[1..line_end];
    match buf[0] {
        b'+' => Some((line_end + 2, Resp::Simple)),
        b'-' => Some((line_end + 2, Resp::Error(head))),
        b':' => {
            let value = std::str::from_utf8(head).ok()?.parse().ok()?;
            Some((line_end + 2, Resp::Integer(value)))
        }
        b'*' => {
            let count = leading_u64(head)? as usize;
            let mut at = line_end + 2;
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let rest = buf.get(at..)?;
                let end = find(rest, b"\r\n")?;
                match rest.first()? {
                    b'$' => {
                        let len = leading_u64(&rest[1..end])? as usize;
                        let body_start = at + end + 2;
                        let body = buf.get(body_start..body_start + len)?;
                        buf.get(body_start + len..body_start + len + 2)?;
                        items.push(body);
                        at = body_start + len + 2;
                    }
                    _ => {
                        items.push(&rest[1..end]);
                        at += end + 2;
                    }
                }
            }
            Some((at, Resp::Array(items)))
        }
        _ => Some((buf.len(), Resp::Error(b"unparsable reply"))),
    }
}

/// Reads from `stream` until one of the `done` markers has been seen (pbchat: a `joined`
/// line; Redis: the subscribe confirmation); returns the bytes after it.
fn setup_read(stream: &mut std::net::TcpStream, done: &[u8]) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
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
        if let Some(at) = find(&buf, b"\"type\":\"error\"").or_else(|| find(&buf, b"redirect")) {
            let line = String::from_utf8_lossy(&buf[at.saturating_sub(2)..]).into_owned();
            return Err(format!("setup refused: {}", line.trim_end()));
        }
        if Instant::now() >= deadline {
            return Err("setup timed out".into());
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("closed during setup".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("setup read: {e}")),
        }
    }
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

/// Opens and sets up every connection of the run, one at a time (setup is not measured).
fn setup(spec: &LoadSpec, poll: &Poll) -> Result<(Vec<Conn>, Vec<Sender>), String> {
    let mut conns = Vec::new();
    let mut senders = Vec::new();
    let open = |stream: std::net::TcpStream,
                inbuf: Vec<u8>,
                member: bool,
                sender: Option<usize>,
                index: usize|
     -> Result<Conn, String> {
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut stream = TcpStream::from_std(stream);
        poll.registry()
            .register(
                &mut stream,
                Token(index),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        Ok(Conn {
            stream,
            inbuf,
            out: Vec::new(),
            member,
            sender,
            last_seq: 0,
            closed: false,
        })
    };
    match spec.protocol {
        Protocol::Pbchat => {
            for i in 0..spec.members {
                let mut stream = connect(spec.addr)?;
                let nick = format!("b{}m{i}", spec.tag);
                let hello = format!(
                    "{{\"type\":\"hello\",\"version\":1,\"nick\":\"{nick}\",\"session\":\"{nick}\"}}\n\
                     {{\"type\":\"join\",\"room\":\"{}\"}}\n",
                    spec.room
                );
                stream
                    .write_all(hello.as_bytes())
                    .map_err(|e| format!("member {i}: {e}"))?;
                let rest = setup_read(&mut stream, b"{\"type\":\"joined\"")
                    .map_err(|e| format!("member {i}: {e}"))?;
                let sender = (i < spec.senders).then_some(i);
                if sender.is_some() {
                    senders.push(Sender {
                        conn: i,
                        next_counter: 0,
                        in_flight: 0,
                    });
                }
                conns.push(open(stream, rest, true, sender, i)?);
            }
        }
        Protocol::Redis => {
            for i in 0..spec.members {
                let mut stream = connect(spec.addr)?;
                let room = &spec.room;
                let subscribe = format!("*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{room}\r\n", room.len());
                stream
                    .write_all(subscribe.as_bytes())
                    .map_err(|e| format!("subscriber {i}: {e}"))?;
                let rest = setup_read(&mut stream, b"subscribe\r\n")
                    .map_err(|e| format!("subscriber {i}: {e}"))?;
                // The confirmation goes on: `$<len>\r\n<room>\r\n:1\r\n`; skip those lines.
                let rest = skip_lines(rest, 3, &mut stream)?;
                conns.push(open(stream, rest, true, None, i)?);
            }
            for s in 0..spec.senders {
                let stream = connect(spec.addr)?;
                let index = conns.len();
                senders.push(Sender {
                    conn: index,
                    next_counter: 0,
                    in_flight: 0,
                });
                conns.push(open(stream, Vec::new(), false, Some(s), index)?);
            }
        }
    }
    Ok((conns, senders))
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
    result: LoadResult,
}

impl Tally {
    fn in_window(&self, now_ns: u64) -> bool {
        now_ns >= self.window_start_ns && now_ns < self.window_end_ns
    }

    fn on_delivery(&mut self, member: usize, body: &[u8], now_ns: u64) {
        let Some((sender, counter, sent_ns)) = parse_body(body) else {
            self.result
                .error(format!("member {member}: a message not from this run"));
            return;
        };
        if sender >= self.senders {
            self.result
                .error(format!("member {member}: unknown sender {sender}"));
            return;
        }
        self.result.delivered += 1;
        let slot = &mut self.expected[member * self.senders + sender];
        if counter != *slot {
            self.result.out_of_order += 1;
        }
        if counter >= *slot {
            *slot = counter + 1;
        }
        if self.in_window(now_ns) {
            self.result.deliveries_in_window += 1;
            self.result
                .latencies_ns
                .push(now_ns.saturating_sub(sent_ns));
        }
    }
}

/// Handles the complete frames in `conn.inbuf`; returns the number of acks it held.
fn consume(
    protocol: Protocol,
    index: usize,
    conn: &mut Conn,
    tally: &mut Tally,
    now_ns: u64,
) -> usize {
    let mut acks = 0;
    let mut at = 0;
    let buf = std::mem::take(&mut conn.inbuf);
    match protocol {
        Protocol::Pbchat => {
            while let Some(len) = memchr::memchr(b'\n', &buf[at..]) {
                let line = &buf[at..at + len];
                at += len + 1;
                if line.starts_with(b"{\"type\":\"msg\"") {
                    if let Some(seq) =
                        find(line, b"\"seq\":").and_then(|p| leading_u64(&line[p + 6..]))
                    {
                        if seq <= conn.last_seq {
                            tally.result.out_of_order += 1;
                        }
                        conn.last_seq = seq;
                    }
                    match find(line, b"\"body\":\"") {
                        Some(p) => tally.on_delivery(index, &line[p + 8..], now_ns),
                        None => tally
                            .result
                            .error(format!("member {index}: msg without body")),
                    }
                } else if line.starts_with(b"{\"type\":\"ack\"") {
                    acks += 1;
                } else if line.starts_with(b"{\"type\":\"error\"")
                    || line.starts_with(b"{\"type\":\"goodbye\"")
                {
                    tally.result.error(format!(
                        "connection {index}: {}",
                        String::from_utf8_lossy(line)
                    ));
                }
            }
        }
        Protocol::Redis => {
            while at < buf.len() {
                let Some((used, value)) = parse_resp(&buf[at..]) else {
                    break;
                };
                at += used;
                match value {
                    Resp::Array(items) if items.len() == 3 && items[0] == b"message" => {
                        tally.on_delivery(index, items[2], now_ns);
                    }
                    Resp::Integer(receivers) if !conn.member => {
                        acks += 1;
                        if receivers != tally.subscribers as i64 {
                            tally.result.error(format!(
                                "publisher {index}: PUBLISH reached {receivers} subscribers, not {}",
                                tally.subscribers
                            ));
                        }
                    }
                    Resp::Error(text) => tally.result.error(format!(
                        "connection {index}: redis error {}",
                        String::from_utf8_lossy(text)
                    )),
                    _ => {}
                }
            }
        }
    }
    conn.inbuf = buf;
    conn.inbuf.drain(..at);
    acks
}

/// Reads everything available; false once the connection is gone.
fn read_all(conn: &mut Conn, scratch: &mut [u8]) -> io::Result<bool> {
    loop {
        match conn.stream.read(scratch) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                conn.inbuf.extend_from_slice(&scratch[..n]);
                if n < scratch.len() {
                    // Probably drained; the next edge tells if not. Avoids one EAGAIN read.
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
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
fn queue_send(spec: &LoadSpec, s: usize, sender: &mut Sender, out: &mut Vec<u8>, t_ns: u64) {
    let counter = sender.next_counter;
    match spec.protocol {
        Protocol::Pbchat => {
            let _ = write!(
                out,
                "{{\"type\":\"send\",\"room\":\"{}\",\"id\":\"{s}-{counter}\",\"body\":\"",
                spec.room
            );
            write_body(out, s, counter, t_ns, spec.body_bytes);
            out.extend_from_slice(b"\"}\n");
        }
        Protocol::Redis => {
            let _ = write!(
                out,
                "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{}\r\n${}\r\n",
                spec.room.len(),
                spec.room,
                spec.body_bytes
            );
            write_body(out, s, counter, t_ns, spec.body_bytes);
            out.extend_from_slice(b"\r\n");
        }
    }
    sender.next_counter += 1;
    sender.in_flight += 1;
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
    let (mut conns, mut senders) = setup(spec, &poll)?;
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
        result: LoadResult::default(),
    };
    let self_pid = std::process::id();
    let mut ticks_start: Option<(Vec<u64>, u64)> = None;
    let mut wait_start: Vec<u64> = Vec::new();
    let mut sending = true;
    let mut drain_until: Option<Instant> = None;
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; READ_CHUNK_BYTES];
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
                cpu_ticks(self_pid).unwrap_or(0),
            ));
        }
        let fill_done = spec.total_sends.is_some_and(|total| issued >= total);
        if sending && (now_ns >= tally.window_end_ns || fill_done) {
            sending = false;
            if fill_done {
                // A fill measures from the first send to the last delivery.
                tally.window_end_ns = u64::MAX;
            } else {
                window_end_at = Some(now);
                if let Some((server, own)) = &ticks_start {
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
                    tally.result.loadgen_ticks =
                        cpu_ticks(self_pid).unwrap_or(*own).saturating_sub(*own);
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
                        while sender.in_flight < spec.window
                            && spec.total_sends.is_none_or(|total| issued < total)
                        {
                            queue_send(spec, s, sender, &mut conn.out, t_ns);
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
                        if conn.closed || sender.in_flight >= spec.window {
                            stuck += 1;
                            continue;
                        }
                        stuck = 0;
                        queue_send(spec, s, sender, &mut conn.out, t_ns);
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
                let open = match read_all(conn, &mut scratch) {
                    Ok(open) => open,
                    Err(e) => {
                        tally.result.error(format!("connection {index}: read: {e}"));
                        false
                    }
                };
                let acks = consume(spec.protocol, index, conn, &mut tally, now_ns);
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

    #[test]
    fn body_round_trips() {
        let mut out = Vec::new();
        write_body(&mut out, 12, 345, 6_789_000, 64);
        assert_eq!(out.len(), 64);
        assert_eq!(parse_body(&out), Some((12, 345, 6_789_000)));
    }

    #[test]
    fn resp_message_parses_and_partial_waits() {
        let frame = b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$3\r\nabc\r\n:5\r\n";
        let (used, value) = parse_resp(frame).unwrap();
        match value {
            Resp::Array(items) => assert_eq!(items, vec![&b"message"[..], b"room", b"abc"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_resp(&frame[used..]),
            Some((4, Resp::Integer(5)))
        ));
        for cut in 1..used {
            assert!(parse_resp(&frame[..cut]).is_none(), "cut at {cut}");
        }
    }
}
