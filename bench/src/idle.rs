//! K idle clients on one thread and one mio poll: each connects, says hello, joins the room,
//! and then only listens. When its connection drops it does what the protocol asks of a
//! client after a failure: reconnect (the node that dropped it first if it named a primary,
//! else the other node), hello again with the same session, and rejoin with `after` set to
//! the last `seq` it saw, using the real client's backoff policy between failed attempts.
//! The run reports when every client is back ("resumed": `joined` received again).
//!
//! Each client is a small state machine; nothing here blocks except `poll`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::frames::leading_u64;
use super::load::find;
use pbchat::client::reconnect::backoff_delay;

/// Connection attempts in flight at once: a thundering herd of SYNs overflows the accept
/// queue and costs a one-second SYN retransmission, which would measure the herd, not the
/// server.
pub const CONNECTING_MAX: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting until `retry_at` before the next attempt.
    Waiting,
    Connecting,
    /// hello and join sent; waiting for `joined`.
    Joining,
    Ready,
}

struct Client {
    stream: Option<TcpStream>,
    state: State,
    server: usize,
    retry_at: Instant,
    failures: u32,
    inbuf: Vec<u8>,
    /// Highest seq seen in the room (from `joined` head or a `msg`).
    last_seq: u64,
    /// Where the last `redirect` or `goodbye` said the primary is.
    hint: Option<SocketAddr>,
}

pub struct IdleClients {
    poll: Poll,
    clients: Vec<Client>,
    servers: Vec<SocketAddr>,
    room: String,
    /// Clients per room: client `i` joins room `<room><i / room_size>`.
    room_size: usize,
    tag: String,
    rng: StdRng,
    connecting: usize,
    /// Clients in `Waiting`, soonest `retry_at` first.
    waiting: BinaryHeap<Reverse<(Instant, usize)>>,
    pub ready: usize,
    /// Connections that were refused with an error frame (e.g. `unavailable`: too many
    /// clients), counted for the report.
    pub refusals: u64,
    /// Retry after a uniform pick in [d/2, d] instead of the real client's backoff.
    pub fixed_retry: Option<Duration>,
    scratch: Vec<u8>,
}

fn number_after(line: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(line, key)? + key.len();
    leading_u64(&line[at..])
}

impl IdleClients {
    pub fn new(
        count: usize,
        servers: Vec<SocketAddr>,
        room: &str,
        room_size: usize,
        tag: &str,
    ) -> io::Result<Self> {
        let now = Instant::now();
        let clients = (0..count)
            .map(|_| Client {
                stream: None,
                state: State::Waiting,
                server: 0,
                retry_at: now,
                failures: 0,
                inbuf: Vec::new(),
                last_seq: 0,
                hint: None,
            })
            .collect();
        Ok(IdleClients {
            poll: Poll::new()?,
            clients,
            servers,
            room: room.into(),
            room_size: room_size.max(1),
            tag: tag.into(),
            rng: StdRng::seed_from_u64(7),
            connecting: 0,
            waiting: (0..count).map(|i| Reverse((now, i))).collect(),
            ready: 0,
            refusals: 0,
            fixed_retry: None,
            scratch: vec![0; 64 * 1024],
        })
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Drives the clients until `done(ready)` holds or `deadline` passes; `tick` runs about
    /// every millisecond (the caller's own checks). Returns whether `done` held.
    pub fn run_until(
        &mut self,
        deadline: Duration,
        mut done: impl FnMut(usize) -> bool,
        mut tick: impl FnMut(),
    ) -> io::Result<bool> {
        let until = Instant::now() + deadline;
        let mut events = Events::with_capacity(4096);
        loop {
            if done(self.ready) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(false);
            }
            tick();
            self.start_due(now);
            self.poll
                .poll(&mut events, Some(Duration::from_millis(1)))?;
            for event in events.iter() {
                let i = event.token().0;
                if self.clients[i].state == State::Connecting
                    && (event.is_writable() || event.is_error())
                {
                    self.on_connected(i);
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.on_readable(i);
                }
            }
        }
    }

    fn start_due(&mut self, now: Instant) {
        while self.connecting < CONNECTING_MAX {
            match self.waiting.peek() {
                Some(Reverse((at, _))) if *at <= now => {}
                _ => return,
            }
            let Some(Reverse((_, i))) = self.waiting.pop() else {
                return;
            };
            let c = &mut self.clients[i];
            if c.state != State::Waiting {
                continue;
            }
            let addr = c.hint.take().unwrap_or(self.servers[c.server]);
            match TcpStream::connect(addr) {
                Ok(mut stream) => {
                    let registered = self.poll.registry().register(
                        &mut stream,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    if registered.is_err() {
                        self.fail(i);
                        continue;
                    }
                    let c = &mut self.clients[i];
                    c.stream = Some(stream);
                    c.state = State::Connecting;
                    self.connecting += 1;
                }
                Err(_) => self.fail(i),
            }
        }
    }

    fn on_connected(&mut self, i: usize) {
        self.connecting -= 1;
        let c = &mut self.clients[i];
        c.state = State::Joining;
        let stream = c.stream.as_mut().expect("connecting has a stream");
        // One syscall per step counts: this thread plays all K clients on one core, and
        // during a fail-over it is the thread that reconnects them all. A socket that is not
        // connected after all fails the write below. No TCP_NODELAY: the client writes once.
        if !matches!(stream.take_error(), Ok(None)) {
            self.fail(i);
            return;
        }
        let session = format!("i{}-{i}", self.tag);
        let hello = format!(
            "{{\"type\":\"hello\",\"version\":1,\"nick\":\"{session}\",\"session\":\"{session}\"}}\n\
             {{\"type\":\"join\",\"room\":\"{}{}\",\"after\":{}}}\n",
            self.room,
            i / self.room_size,
            c.last_seq
        );
        // A fresh socket's send buffer takes these few bytes whole.
        if stream.write_all(hello.as_bytes()).is_err() {
            self.fail(i);
        }
    }

    fn on_readable(&mut self, i: usize) {
        let mut open = true;
        {
            let c = &mut self.clients[i];
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            loop {
                match stream.read(&mut self.scratch) {
                    Ok(0) => {
                        open = false;
                        break;
                    }
                    Ok(n) => c.inbuf.extend_from_slice(&self.scratch[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        let mut refused = false;
        let buf = std::mem::take(&mut self.clients[i].inbuf);
        let mut at = 0;
        while let Some(len) = memchr::memchr(b'\n', &buf[at..]) {
            let line = &buf[at..at + len];
            at += len + 1;
            let c = &mut self.clients[i];
            if line.starts_with(b"{\"type\":\"joined\"") {
                c.last_seq = c
                    .last_seq
                    .max(number_after(line, b"\"head\":").unwrap_or(0));
                if c.state == State::Joining {
                    c.state = State::Ready;
                    c.failures = 0;
                    self.ready += 1;
                }
            } else if line.starts_with(b"{\"type\":\"msg\"") {
                c.last_seq = c.last_seq.max(number_after(line, b"\"seq\":").unwrap_or(0));
            } else if line.starts_with(b"{\"type\":\"redirect\"")
                || line.starts_with(b"{\"type\":\"goodbye\"")
            {
                c.hint = std::str::from_utf8(line)
                    .ok()
                    .and_then(|l| l.split("\"primary\":\"").nth(1))
                    .and_then(|rest| rest.split('"').next())
                    .and_then(|addr| addr.parse().ok());
            } else if line.starts_with(b"{\"type\":\"error\"") {
                self.refusals += 1;
                refused = true;
            }
        }
        let mut rest = buf;
        rest.drain(..at);
        self.clients[i].inbuf = rest;
        if !open || refused {
            self.fail(i);
        }
    }

    /// The connection is gone or refused: back off, then try the other node (or the hint).
    fn fail(&mut self, i: usize) {
        let servers = self.servers.len();
        let c = &mut self.clients[i];
        // Closing the socket takes it out of the poll set; no deregister call needed.
        drop(c.stream.take());
        match c.state {
            State::Ready => self.ready -= 1,
            State::Connecting => self.connecting -= 1,
            _ => {}
        }
        // A session that had been ready came back from a clean drop: retry at once.
        c.failures = if c.state == State::Ready {
            0
        } else {
            c.failures + 1
        };
        c.state = State::Waiting;
        c.inbuf = Vec::new();
        if c.hint.is_none() {
            c.server = (c.server + 1) % servers;
        }
        let delay = match self.fixed_retry {
            Some(d) if c.failures > 0 => {
                let half = d.as_micros() as u64 / 2;
                Duration::from_micros(half + self.rng.gen_range(0..=half))
            }
            _ => backoff_delay(c.failures, &mut self.rng),
        };
        c.retry_at = Instant::now() + delay;
        self.waiting.push(Reverse((c.retry_at, i)));
    }
}
