//! Client I/O workers: each owns a share of the connections on its own mio poll.
//!
//! A worker reads bytes, splits and decodes lines, and passes requests to the core; it
//! carries out the core's actions for its connections: queueing frames, fanning published
//! messages out to its local room subscribers, pacing replays and history from the log as
//! each client drains, and dropping a client whose queue overflows. It never blocks except
//! in `poll`, so the core may block sending to it without a deadlock.
//!
//! A connection on a TLS listener carries its rustls state (boxed; `None` on a plain
//! connection, which pays one pointer and one branch per read and flush for it). Its bytes
//! go socket → `read_tls` → `process_new_packets` → plaintext → the same line splitter,
//! and queued frames → rustls's writer → `write_tls` → socket. rustls's own buffers are
//! bounded (its default 64 KiB of outgoing records, and the plaintext it decrypts is
//! drained before more is read), so a TLS connection's memory is bounded like a plain one's
//! plus that; a handshake that never finishes is closed by the hello timeout.
//!
//! A connection on the `[web]` listener carries its [`Phase`] (boxed; `None` elsewhere):
//! first its one HTTP request, answered by `web::route` (the page, or a refusal, then
//! closed), or upgraded to a WebSocket. Only then does the core learn of it
//! (`Input::Connected`), so a page load costs the core nothing. Each WebSocket text message
//! is one frame, decoded like a line; each queued line goes out as one text message: a
//! fan-out's batch framed once for all of a worker's WebSocket members (`web::text_frames`)
//! and written as it is, any other frame through tungstenite. The limits are the TCP
//! client's: the line length bounds a message, the send queue bounds `out` (tungstenite's
//! own write buffer takes from it only while the socket takes bytes).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, IoSlice, Read, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::ServerConnection;
use tungstenite::{Bytes, Message, Utf8Bytes};

use super::batch::Published;
use super::per_ip::PerIp;
use super::queue::QueueReceiver;
use super::web::{self, Routed, Site};
use crate::core::{Action, ConnId, Frame, Input};
use crate::daemon::logging::{suppressed_note, Throttle};
use crate::entry::Entry;
use crate::log::LogReader;
use crate::wire::client::{decode_request, encode_msg, encode_reply, ErrorCode, Reply};
use crate::wire::lines::Lines;

const WAKER: Token = Token(usize::MAX);
/// Inputs a worker holds for the core while the core's channel is full; past it, the worker
/// stops reading sockets until the core catches up (backpressure instead of growth).
const OUTBOX_MAX: usize = 4096;
/// Inputs handed to the core in one channel message, at most. One message per turn means
/// one wake-up of the core per turn: sent one by one, each input woke the core thread,
/// which (on a shared core) preempted the worker, stepped one input and slept again.
pub const INPUT_BATCH_MAX: usize = 256;
/// Frames one connection may hand to the core per turn of its worker; a connection with
/// more waits (listed in `Worker::paused`) until the others have had theirs, so one client
/// pipelining requests as fast as it can write cannot take the whole outbox turn after turn.
const FRAMES_PER_TURN: usize = 256;
/// Bytes read per `read` call; also the scratch buffer each worker owns.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Replay and history refill a connection only while less than this is queued to it, so a
/// catch-up of any length costs bounded memory.
const REPLAY_LOW_WATER_BYTES: usize = 64 * 1024;
/// Messages read from the log per replay refill.
const REPLAY_BATCH: usize = 256;
/// Frames gathered into one `writev`.
const WRITEV_FRAMES_MAX: usize = 64;
/// A closing connection that will not drain its queue is dropped after this.
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// History requests one connection may have queued.
const HISTORY_JOBS_MAX: usize = 4;
/// How often idle and closing connections are checked.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// A `[web]` connection must have sent its whole HTTP request within this; a browser sends
/// it at once, so only a stalled or hostile peer is cut (each one holds a client slot).
const WEB_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-connection warnings and slow-consumer drops each worker logs, at most this many per
/// [`LOG_WINDOW`]; the rest are counted into the next line (and into [`IoStats`]).
const LOG_BURST: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Counters every worker adds to, for metrics and status. Each is bumped at most once per
/// flush or per event, never per recipient of a message.
#[derive(Debug, Default)]
pub struct IoStats {
    /// Connections dropped because their output queue overflowed.
    pub slow_consumer_drops: AtomicU64,
    /// Bytes written to client sockets.
    pub bytes_sent: AtomicU64,
    /// Whole frames written to client sockets.
    pub frames_sent: AtomicU64,
    /// Successful write calls to client sockets.
    pub writes: AtomicU64,
    /// Committed batches waiting in a worker's command queue before its fan-out.
    pub delivery_queue: super::histogram::Histogram,
}

/// Work for a worker, from the acceptor or the core.
#[derive(Debug)]
pub enum Command {
    Adopt {
        conn: ConnId,
        stream: std::net::TcpStream,
        /// The key the acceptor counted it under in [`PerIp`]; released when it is dropped.
        ip: IpAddr,
        /// Its TLS server state, on a TLS listener.
        tls: Option<Box<ServerConnection>>,
        /// From the `[web]` listener: an HTTP request first (see [`Phase`]).
        web: bool,
    },
    Core(Action),
    /// Committed messages of one room, for its local subscribers.
    Publish(Published),
    /// Close what is left and stop, within `CLOSE_LINGER`.
    Shutdown,
}

/// Connection ids are sequential numbers the acceptor makes, never chosen by a client, so a
/// multiplicative hash spreads them as well as SipHash does at a fraction of the cost that
/// every delivery pays (one lookup per subscriber).
#[derive(Default, Clone, Copy)]
pub struct ConnIdHasher(u64);

impl Hasher for ConnIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type ConnMap<V> = HashMap<ConnId, V, BuildHasherDefault<ConnIdHasher>>;

/// Bytes queued to a connection: one frame, or several `msg` lines joined (see `batch`).
#[derive(Debug)]
struct Queued {
    bytes: Frame,
    /// Frames in `bytes`, for the frames-sent counter.
    frames: u32,
    /// `bytes` are WebSocket messages already (`web::text_frames`), written to the socket as
    /// they are; otherwise lines (for a WebSocket, each becomes a message in tungstenite).
    framed: bool,
}

#[derive(Clone, Debug)]
pub struct WorkerLimits {
    pub max_line_bytes: usize,
    pub max_body_bytes: usize,
    pub send_queue_bytes: usize,
    pub idle_timeout: Duration,
}

/// A room a connection receives; `replay_cursor` is `Some(seq)` while stored messages after
/// `seq` are still being read from the log, and live messages are skipped meanwhile.
#[derive(Debug)]
struct Subscription {
    room: Arc<str>,
    replay_cursor: Option<u64>,
}

#[derive(Debug)]
struct HistoryJob {
    room: Arc<str>,
    before: u64,
    upto: u64,
    limit: usize,
    /// Loaded on the first refill, then drained into the queue as the client reads.
    entries: Option<VecDeque<Entry>>,
}

/// Where a `[web]` connection is.
enum Phase {
    /// Reading its HTTP request; `head` is what arrived so far (at most
    /// `web::REQUEST_HEAD_MAX_BYTES` and one read).
    Request { head: Vec<u8>, accepted: Instant },
    /// Upgraded. `pinged`: a WebSocket ping went out since the last message came in (the
    /// browser answers pings itself, so a hidden tab whose timers are slowed stays alive).
    Open {
        socket: Box<tungstenite::protocol::WebSocketContext>,
        pinged: bool,
    },
}

struct Conn {
    stream: TcpStream,
    /// On the `[web]` listener; `None` (no allocation) elsewhere.
    web: Option<Box<Phase>>,
    /// The core was told of it (`Input::Connected`) and must be told when it goes; false
    /// only for a `[web]` connection before its upgrade.
    announced: bool,
    /// The TLS session over `stream` on a TLS listener; `None` (no allocation) on plain TCP.
    tls: Option<Box<ServerConnection>>,
    /// Its source address as counted in [`PerIp`].
    ip: IpAddr,
    /// Unfinished line; empty (and unallocated) between frames.
    inbuf: Vec<u8>,
    out: VecDeque<Queued>,
    /// Bytes of `out.front()` already written.
    out_offset: usize,
    out_bytes: usize,
    subs: Vec<Subscription>,
    history: VecDeque<HistoryJob>,
    /// No more frames are queued; dropped once `out` drains or at `close_deadline`.
    closing: bool,
    close_deadline: Option<Instant>,
    /// Input is ignored from now on (after `too_large` or a slow-consumer drop).
    discard_input: bool,
    /// Reading stopped with data possibly left in the socket or in `inbuf` (outbox full,
    /// or its [`FRAMES_PER_TURN`] used); listed in `Worker::paused` when it became true.
    read_pending: bool,
    /// Listed in `Worker::dirty` (so it is listed once).
    dirty: bool,
    last_read: Instant,
}

impl Conn {
    fn new(stream: TcpStream, ip: IpAddr, tls: Option<Box<ServerConnection>>, web: bool) -> Self {
        let phase = web.then(|| {
            Box::new(Phase::Request {
                head: Vec::new(),
                accepted: Instant::now(),
            })
        });
        Conn {
            stream,
            web: phase,
            announced: !web,
            tls,
            ip,
            inbuf: Vec::new(),
            out: VecDeque::new(),
            out_offset: 0,
            out_bytes: 0,
            subs: Vec::new(),
            history: VecDeque::new(),
            closing: false,
            close_deadline: None,
            discard_input: false,
            read_pending: false,
            dirty: false,
            last_read: Instant::now(),
        }
    }

    /// Frees the history queue's memory once its jobs are done (a client that asked for
    /// history once would otherwise hold room for `HISTORY_JOBS_MAX` of them for good).
    /// `out` needs no sweep: `Worker::after_flush` frees it whenever it drains.
    fn release_spare_capacity(&mut self) {
        release_if_empty(&mut self.history);
    }

    fn push(&mut self, frame: Frame) {
        self.push_queued(frame, 1, false);
    }

    fn push_queued(&mut self, bytes: Frame, frames: u32, framed: bool) {
        self.out_bytes += bytes.len();
        self.out.push_back(Queued {
            bytes,
            frames,
            framed,
        });
    }

    fn is_websocket(&self) -> bool {
        matches!(self.web.as_deref(), Some(Phase::Open { .. }))
    }
}

fn release_if_empty<T>(queue: &mut VecDeque<T>) {
    if queue.is_empty() && queue.capacity() > 0 {
        *queue = VecDeque::new();
    }
}

/// A `[web]` connection's byte stream: the socket, or TLS over it when the client listener
/// speaks TLS (`wss://`). tungstenite and the HTTP request read and write through it.
struct Wire<'a> {
    stream: &'a mut TcpStream,
    tls: Option<&'a mut ServerConnection>,
    /// A framed item (`Queued::framed`) partly written: its rest goes out before any byte
    /// tungstenite writes, or a pong, a ping or a message would land inside a frame.
    unfinished: Option<Unfinished<'a>>,
}

/// The queue's front item and how much of it the socket took (`Conn::out_offset`).
struct Unfinished<'a> {
    bytes: &'a [u8],
    offset: &'a mut usize,
}

impl<'a> Wire<'a> {
    fn of(stream: &'a mut TcpStream, tls: &'a mut Option<Box<ServerConnection>>) -> Self {
        Wire {
            stream,
            tls: tls.as_deref_mut(),
            unfinished: None,
        }
    }

    /// The wire of a WebSocket whose queue is `out`, for tungstenite: a framed item
    /// begun at its front is finished before tungstenite's bytes.
    fn websocket(
        stream: &'a mut TcpStream,
        tls: &'a mut Option<Box<ServerConnection>>,
        out: &'a VecDeque<Queued>,
        offset: &'a mut usize,
    ) -> Self {
        let mut wire = Wire::of(stream, tls);
        wire.unfinished = match out.front() {
            Some(front) if front.framed && *offset > 0 => Some(Unfinished {
                bytes: &front.bytes,
                offset,
            }),
            _ => None,
        };
        wire
    }

    /// Writes `bytes[*offset..]`, moving `offset`, until all is written or the socket
    /// would block (`WouldBlock`).
    fn write_rest(&mut self, bytes: &[u8], offset: &mut usize) -> io::Result<()> {
        while *offset < bytes.len() {
            match self.write_now(&bytes[*offset..])? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => *offset += n,
            }
        }
        Ok(())
    }

    fn finish_unfinished(&mut self) -> io::Result<()> {
        let Some(unfinished) = self.unfinished.take() else {
            return Ok(());
        };
        let result = self.write_rest(unfinished.bytes, unfinished.offset);
        if result.is_err() {
            self.unfinished = Some(unfinished);
        }
        result
    }

    fn write_now(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return self.stream.write(buf);
        };
        let taken = tls.writer().write(buf)?;
        // Best effort now; the rest goes on `flush` or the writable event.
        while tls.wants_write() {
            match tls.write_tls(self.stream) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                written => written?,
            };
        }
        if taken == 0 && !buf.is_empty() {
            // rustls's bounded buffer is full because the socket is.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }
}

// By hand rather than with `rustls::Stream`: that one may read the socket while writing
// (and the reverse), which on edge-triggered mio would leave bytes no event announces.
impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return self.stream.read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            if tls.read_tls(self.stream)? == 0 {
                return Ok(0);
            }
            tls.process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, crate::tls::explain(&e)))?;
        }
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.finish_unfinished()?;
        self.write_now(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.finish_unfinished()?;
        match self.tls.as_deref_mut() {
            // Writes out what rustls holds; WouldBlock leaves the rest for the writable event.
            Some(tls) => {
                while tls.wants_write() {
                    tls.write_tls(self.stream)?;
                }
                Ok(())
            }
            None => self.stream.flush(),
        }
    }
}

/// Lists `conn` once, by its flag: for this turn's flush (`Worker::dirty`), or for reading
/// again (`Worker::paused`).
fn list_once(list: &mut Vec<ConnId>, conn: ConnId, flag: &mut bool) {
    if !*flag {
        *flag = true;
        list.push(conn);
    }
}

pub struct Worker {
    poll: Poll,
    commands: QueueReceiver<Command>,
    inputs: Sender<Vec<Input>>,
    outbox: VecDeque<Input>,
    conns: ConnMap<Conn>,
    /// Local subscribers of each room.
    rooms: HashMap<Arc<str>, Vec<ConnId>>,
    /// Highest seq published to this worker: everything up to it is committed and in the log.
    seen_seq: u64,
    reader: LogReader,
    limits: WorkerLimits,
    /// Connections with queued output not yet handed to the socket (each once, by
    /// `Conn::dirty`; ids of connections dropped meanwhile are skipped).
    dirty: Vec<ConnId>,
    /// Connections that stopped reading while the outbox was full or with their turn's
    /// share used (`Conn::read_pending`), in the order they are to be resumed; a list, so
    /// that resuming does not scan every connection on every turn.
    paused: Vec<ConnId>,
    /// Connections with replay or history still to read from the log.
    catching_up: HashSet<ConnId>,
    scratch: Vec<u8>,
    clients: Arc<AtomicUsize>,
    per_ip: Arc<PerIp>,
    /// What the `[web]` listener answers; `None` when it is off.
    site: Option<Arc<Site>>,
    shutdown_deadline: Option<Instant>,
    last_sweep: Instant,
    stats: Arc<IoStats>,
    /// Keeps per-connection lines (slow consumers, registration failures) from flooding.
    warnings: Throttle,
    /// Bytes and frames written during the current flush, added to `stats` once.
    flushed_bytes: u64,
    flushed_frames: u64,
    flushed_writes: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Worker {
    // Each is a distinct shared handle the daemon wires up once; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        commands: QueueReceiver<Command>,
        inputs: Sender<Vec<Input>>,
        reader: LogReader,
        limits: WorkerLimits,
        clients: Arc<AtomicUsize>,
        committed_seq: u64,
        stats: Arc<IoStats>,
        per_ip: Arc<PerIp>,
        site: Option<Arc<Site>>,
    ) -> io::Result<(Worker, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let worker = Worker {
            poll,
            commands,
            inputs,
            outbox: VecDeque::new(),
            conns: ConnMap::default(),
            rooms: HashMap::new(),
            seen_seq: committed_seq,
            reader,
            limits,
            dirty: Vec::new(),
            paused: Vec::new(),
            catching_up: HashSet::new(),
            scratch: vec![0; READ_CHUNK_BYTES],
            clients,
            per_ip,
            site,
            shutdown_deadline: None,
            last_sweep: Instant::now(),
            stats,
            warnings: Throttle::new(LOG_BURST, LOG_WINDOW),
            flushed_bytes: 0,
            flushed_frames: 0,
            flushed_writes: 0,
        };
        Ok((worker, waker))
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let busy = !self.outbox.is_empty() || !self.catching_up.is_empty();
            let timeout = if !self.paused.is_empty() && self.outbox.len() < OUTBOX_MAX / 2 {
                // Input is waiting in buffers or sockets that no new event will announce.
                Duration::ZERO
            } else if busy || !self.paused.is_empty() {
                Duration::from_millis(2)
            } else {
                SWEEP_INTERVAL
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("client I/O poll failed: {e}");
                    std::process::exit(1);
                }
            }
            for event in events.iter() {
                let token = event.token();
                if token == WAKER {
                    continue;
                }
                let conn = token.0 as ConnId;
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read(conn);
                }
                if event.is_writable() {
                    self.mark_dirty(conn);
                }
            }
            while let Some(command) = self.commands.try_recv() {
                self.on_command(command);
            }
            self.flush_outbox();
            self.resume_reads();
            self.refill_catch_ups();
            self.flush_dirty();
            if self.last_sweep.elapsed() >= SWEEP_INTERVAL {
                self.sweep();
            }
            if let Some(deadline) = self.shutdown_deadline {
                if self.conns.is_empty() || Instant::now() >= deadline {
                    return;
                }
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Adopt {
                conn,
                stream,
                ip,
                tls,
                web,
            } => self.adopt(conn, stream, ip, tls, web),
            Command::Shutdown => {
                self.shutdown_deadline = Some(Instant::now() + CLOSE_LINGER);
                let ids: Vec<ConnId> = self.conns.keys().copied().collect();
                for id in ids {
                    self.close(id);
                }
            }
            Command::Core(action) => self.on_action(action),
            Command::Publish(published) => {
                self.stats
                    .delivery_queue
                    .observe(published.committed_at.elapsed());
                self.seen_seq = self.seen_seq.max(published.last_seq);
                self.fan_out(
                    &published.room,
                    None,
                    &published.frame,
                    published.messages,
                    true,
                );
            }
        }
    }

    fn mark_dirty(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            list_once(&mut self.dirty, conn, &mut c.dirty);
        }
    }

    fn adopt(
        &mut self,
        conn: ConnId,
        stream: std::net::TcpStream,
        ip: IpAddr,
        tls: Option<Box<ServerConnection>>,
        web: bool,
    ) {
        let mut stream = TcpStream::from_std(stream);
        let registered = self.poll.registry().register(
            &mut stream,
            Token(conn as usize),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(e) = registered {
            if let Some(suppressed) = self.warnings.allow(Instant::now()) {
                log::warn!(
                    "connection {conn}: cannot register with poll: {e}{}",
                    suppressed_note(suppressed)
                );
            }
            self.clients.fetch_sub(1, Ordering::Relaxed);
            self.per_ip.release(ip);
            return;
        }
        let addr = stream.peer_addr().ok();
        self.conns.insert(conn, Conn::new(stream, ip, tls, web));
        if web {
            // The core hears of it at the upgrade (`on_request`).
            return;
        }
        self.outbox.push_back(Input::Connected {
            conn,
            addr,
            now_ms: now_ms(),
        });
    }

    fn on_action(&mut self, action: Action) {
        match action {
            Action::Send { conn, frame } => self.enqueue(conn, frame),
            Action::Close { conn } => self.close(conn),
            Action::Presence {
                room,
                except,
                frame,
            } => self.fan_out(&room, Some(except), &frame, 1, false),
            Action::CommittedTo { seq } => self.seen_seq = self.seen_seq.max(seq),
            Action::Subscribe {
                conn,
                room,
                replay_after,
            } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                if c.closing {
                    return;
                }
                let replay_cursor = replay_after.filter(|&after| after < self.seen_seq);
                if replay_cursor.is_some() {
                    self.catching_up.insert(conn);
                }
                // Most connections are in one room or a few: room for exactly one more,
                // not the four `push` would take (Vec's smallest growth for these).
                c.subs.reserve_exact(1);
                c.subs.push(Subscription {
                    room: room.clone(),
                    replay_cursor,
                });
                self.rooms.entry(room).or_default().push(conn);
            }
            Action::Unsubscribe { conn, room } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.subs.retain(|s| s.room != room);
                }
                self.remove_subscriber(&room, conn);
            }
            Action::History {
                conn,
                room,
                before,
                upto,
                limit,
            } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                if c.history.len() >= HISTORY_JOBS_MAX {
                    let frame = encode_reply(&Reply::Error {
                        code: ErrorCode::RateLimited,
                        message: "too many history requests in flight",
                        id: None,
                    });
                    self.enqueue(conn, frame.into());
                    return;
                }
                c.history.push_back(HistoryJob {
                    room,
                    before,
                    upto,
                    limit,
                    entries: None,
                });
                self.catching_up.insert(conn);
            }
            other => unreachable!("the driver handles {other:?}"),
        }
    }

    fn remove_subscriber(&mut self, room: &Arc<str>, conn: ConnId) {
        if let Some(subscribers) = self.rooms.get_mut(room) {
            if let Some(at) = subscribers.iter().position(|&c| c == conn) {
                subscribers.swap_remove(at);
            }
            if subscribers.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Queues one shared buffer of `frames` frames to every local subscriber of `room`.
    /// `live` frames skip a subscriber still replaying that room (the replay will read them
    /// from the log).
    fn fan_out(
        &mut self,
        room: &Arc<str>,
        except: Option<ConnId>,
        frame: &Frame,
        frames: u32,
        live: bool,
    ) {
        let Some(subscribers) = self.rooms.get(room) else {
            return;
        };
        let mut overflowed = Vec::new();
        // Framed once for all of this worker's WebSocket members, when it has any.
        let mut websocket: Option<Frame> = None;
        for &conn in subscribers {
            if Some(conn) == except {
                continue;
            }
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            if c.closing {
                continue;
            }
            if live
                && c.subs
                    .iter()
                    .any(|s| &s.room == room && s.replay_cursor.is_some())
            {
                continue;
            }
            let (bytes, framed) = if c.is_websocket() {
                let framed = websocket.get_or_insert_with(|| web::text_frames(frame).into());
                (&*framed, true)
            } else {
                (frame, false)
            };
            if c.out_bytes + bytes.len() > self.limits.send_queue_bytes {
                overflowed.push(conn);
                continue;
            }
            c.push_queued(bytes.clone(), frames, framed);
            list_once(&mut self.dirty, conn, &mut c.dirty);
        }
        for conn in overflowed {
            self.drop_slow_consumer(conn);
        }
    }

    fn enqueue(&mut self, conn: ConnId, frame: Frame) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        if c.out_bytes + frame.len() > self.limits.send_queue_bytes {
            self.drop_slow_consumer(conn);
            return;
        }
        c.push(frame);
        list_once(&mut self.dirty, conn, &mut c.dirty);
    }

    /// The client did not read fast enough: what is queued is dropped (but for a frame
    /// half written), it gets `slow_consumer`, and the connection closes.
    fn drop_slow_consumer(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let keep = usize::from(c.out_offset > 0);
        while c.out.len() > keep {
            let queued = c.out.pop_back().expect("len checked");
            c.out_bytes -= queued.bytes.len();
        }
        let queued = self.limits.send_queue_bytes;
        let message = format!(
            "more than {queued} bytes queued to this connection; reconnect and rejoin with `after`"
        );
        let frame = encode_reply(&Reply::Error {
            code: ErrorCode::SlowConsumer,
            message: &message,
            id: None,
        });
        c.push(frame.into());
        c.discard_input = true;
        list_once(&mut self.dirty, conn, &mut c.dirty);
        self.stats
            .slow_consumer_drops
            .fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.warnings.allow(Instant::now()) {
            log::info!(
                "connection {conn}: dropped as a slow consumer (more than {queued} bytes queued){}",
                suppressed_note(suppressed)
            );
        }
        self.close(conn);
    }

    /// Stops queueing to `conn`; it is dropped once its queue drains.
    fn close(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.closing {
            c.closing = true;
            c.close_deadline = Some(Instant::now() + CLOSE_LINGER);
            c.history.clear();
            self.catching_up.remove(&conn);
            // The core learns at once, so the session and nick are free for a reconnect.
            if c.announced {
                self.outbox.push_back(Input::Disconnected { conn });
            }
            list_once(&mut self.dirty, conn, &mut c.dirty);
        }
    }

    fn drop_conn(&mut self, conn: ConnId) {
        let Some(mut c) = self.conns.remove(&conn) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        for sub in &c.subs {
            self.remove_subscriber(&sub.room, conn);
        }
        self.catching_up.remove(&conn);
        self.clients.fetch_sub(1, Ordering::Relaxed);
        self.per_ip.release(c.ip);
        if !c.closing && c.announced {
            self.outbox.push_back(Input::Disconnected { conn });
        }
    }

    /// A readiness event for `conn`. One already waiting in `paused` keeps its place
    /// there: reading it now would let a client that never stops writing go first on every
    /// event.
    fn read(&mut self, conn: ConnId) {
        if self.conns.get(&conn).is_some_and(|c| c.read_pending) {
            return;
        }
        let mut share = FRAMES_PER_TURN;
        self.read_some(conn, &mut share);
    }

    /// Reads `conn` until its socket would block, the outbox is full, or `share` frames were
    /// decoded; in the last two cases it is listed in `paused`.
    fn read_some(&mut self, conn: ConnId, share: &mut usize) {
        loop {
            if self.outbox.len() >= OUTBOX_MAX {
                if let Some(c) = self.conns.get_mut(&conn) {
                    list_once(&mut self.paused, conn, &mut c.read_pending);
                }
                return;
            }
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            if c.web.is_some() {
                self.read_web(conn, share);
                return;
            }
            if c.tls.is_some() {
                self.read_tls(conn, share);
                return;
            }
            c.read_pending = false;
            match c.stream.read(&mut self.scratch) {
                Ok(0) => {
                    // The peer closed its side: whatever is still queued cannot matter.
                    self.drop_conn(conn);
                    return;
                }
                Ok(n) => {
                    c.last_read = Instant::now();
                    if c.discard_input {
                        continue;
                    }
                    c.inbuf.extend_from_slice(&self.scratch[..n]);
                    if !self.process_lines(conn, share) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.drop_conn(conn);
                    return;
                }
            }
        }
    }

    /// Whether `conn` may be read now: it exists and the outbox has room (else it is listed
    /// in `paused`). Clears its `read_pending`, as a read follows.
    fn may_read(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if self.outbox.len() >= OUTBOX_MAX {
            list_once(&mut self.paused, conn, &mut c.read_pending);
            return false;
        }
        c.read_pending = false;
        true
    }

    /// [`Worker::read`] for a TLS connection: the plaintext rustls holds goes to the line
    /// splitter first, then more records are read from the socket, until it would block.
    fn read_tls(&mut self, conn: ConnId, share: &mut usize) {
        loop {
            if !self.may_read(conn) {
                return;
            }
            let c = self.conns.get_mut(&conn).expect("may_read checked");
            let tls = c.tls.as_mut().expect("read_tls is for TLS connections");
            match tls.reader().read(&mut self.scratch) {
                Ok(0) => {
                    // close_notify: the client is done.
                    self.drop_conn(conn);
                    return;
                }
                Ok(n) => {
                    if !c.discard_input {
                        c.inbuf.extend_from_slice(&self.scratch[..n]);
                        if !self.process_lines(conn, share) {
                            return;
                        }
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    // The socket ended without close_notify (or the stream is broken).
                    self.drop_conn(conn);
                    return;
                }
            }
            match tls.read_tls(&mut c.stream) {
                Ok(0) => {
                    self.drop_conn(conn);
                    return;
                }
                Ok(_) => {
                    c.last_read = Instant::now();
                    if let Err(e) = tls.process_new_packets() {
                        // rustls queued an alert saying why; it is sent if the socket takes it.
                        let _ = tls.write_tls(&mut c.stream);
                        log::debug!(
                            "connection {conn}: TLS: {}; closing",
                            crate::tls::explain(&e)
                        );
                        self.drop_conn(conn);
                        return;
                    }
                    if tls.wants_write() {
                        // Handshake answers (and whatever the core queued meanwhile).
                        list_once(&mut self.dirty, conn, &mut c.dirty);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.drop_conn(conn);
                    return;
                }
            }
        }
    }

    /// Decodes the complete lines buffered for `conn` into inputs for the core, at most
    /// `share` of them. False when it stopped with lines left (the outbox is full, or the
    /// share is used): `conn` is then listed in `paused`, and reading it must stop.
    fn process_lines(&mut self, conn: ConnId, share: &mut usize) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let mut lines = Lines::new(&c.inbuf, self.limits.max_line_bytes);
        let mut too_long = false;
        let mut stopped = false;
        let stamp = now_ms();
        for line in lines.by_ref() {
            match line {
                Err(_) => {
                    too_long = true;
                    break;
                }
                Ok(line) => {
                    let input = request_input(conn, line, self.limits.max_body_bytes, stamp);
                    self.outbox.push_back(input);
                    *share = share.saturating_sub(1);
                    if self.outbox.len() >= OUTBOX_MAX || *share == 0 {
                        list_once(&mut self.paused, conn, &mut c.read_pending);
                        stopped = true;
                        break;
                    }
                }
            }
        }
        let consumed = lines.consumed();
        if too_long {
            c.inbuf = Vec::new();
            c.discard_input = true;
            self.outbox
                .push_back(too_large_input(conn, self.limits.max_line_bytes));
            // Reading goes on, into the discard, until the node closes the connection.
            return true;
        }
        c.inbuf.drain(..consumed);
        if c.inbuf.is_empty() && c.inbuf.capacity() > 0 {
            // Idle connections hold no buffer.
            c.inbuf = Vec::new();
        }
        !stopped
    }

    /// Hands the outbox to the core in batches of at most [`INPUT_BATCH_MAX`], in order;
    /// what the channel has no room for waits at the front for the next turn.
    fn flush_outbox(&mut self) {
        while !self.outbox.is_empty() {
            let take = self.outbox.len().min(INPUT_BATCH_MAX);
            let batch: Vec<Input> = self.outbox.drain(..take).collect();
            match self.inputs.try_send(batch) {
                Ok(()) => {}
                Err(TrySendError::Full(batch)) => {
                    for input in batch.into_iter().rev() {
                        self.outbox.push_front(input);
                    }
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.outbox.clear();
                    return;
                }
            }
        }
    }

    /// Reads again from connections that stopped while the outbox was full or with their
    /// turn's share used, in turn: each gets up to [`FRAMES_PER_TURN`] frames; those the
    /// outbox had no room for this time go first next time.
    fn resume_reads(&mut self) {
        if self.paused.is_empty() || self.outbox.len() >= OUTBOX_MAX / 2 {
            return;
        }
        let mut waiting = std::mem::take(&mut self.paused).into_iter();
        for conn in waiting.by_ref() {
            match self.conns.get_mut(&conn) {
                // Listed again (at the back) if it stops again below.
                Some(c) if c.read_pending => c.read_pending = false,
                _ => continue,
            }
            // Lines already buffered go first, then the socket.
            let mut share = FRAMES_PER_TURN;
            if self.process_lines(conn, &mut share) {
                self.read_some(conn, &mut share);
            }
            if self.outbox.len() >= OUTBOX_MAX / 2 {
                break;
            }
        }
        // The ones not reached keep their place ahead of those that just had their turn.
        let turned = std::mem::take(&mut self.paused);
        self.paused = waiting.chain(turned).collect();
    }

    fn refill_catch_ups(&mut self) {
        let ids: Vec<ConnId> = self.catching_up.iter().copied().collect();
        for conn in ids {
            if let Err(message) = self.refill(conn) {
                log::error!("connection {conn}: reading the log: {message}");
                let frame = encode_reply(&Reply::Error {
                    code: ErrorCode::Internal,
                    message: "could not read stored messages; reconnect to resume",
                    id: None,
                });
                self.enqueue(conn, frame.into());
                self.close(conn);
            }
        }
    }

    /// Moves stored messages into `conn`'s queue while it is below the low-water mark.
    fn refill(&mut self, conn: ConnId) -> Result<(), String> {
        let seen_seq = self.seen_seq;
        let Some(c) = self.conns.get_mut(&conn) else {
            self.catching_up.remove(&conn);
            return Ok(());
        };
        while c.out_bytes < REPLAY_LOW_WATER_BYTES {
            if let Some(sub) = c.subs.iter_mut().find(|s| s.replay_cursor.is_some()) {
                let cursor = sub.replay_cursor.expect("found by is_some");
                let entries = self
                    .reader
                    .room_after(&sub.room, cursor, seen_seq, REPLAY_BATCH)
                    .map_err(|e| e.to_string())?;
                sub.replay_cursor = match entries.last() {
                    // A short batch reached everything published so far: go live.
                    Some(last) if entries.len() == REPLAY_BATCH => Some(last.seq),
                    _ => None,
                };
                for entry in &entries {
                    c.push(encode_msg(entry).into());
                }
                list_once(&mut self.dirty, conn, &mut c.dirty);
                continue;
            }
            let Some(job) = c.history.front_mut() else {
                self.catching_up.remove(&conn);
                return Ok(());
            };
            if job.entries.is_none() {
                let before = job.before.min(job.upto.saturating_add(1));
                let entries = self
                    .reader
                    .room_before(&job.room, before, job.limit)
                    .map_err(|e| e.to_string())?;
                job.entries = Some(entries.into());
            }
            let next = job.entries.as_mut().expect("loaded above").pop_front();
            match next {
                Some(entry) => c.push(encode_msg(&entry).into()),
                None => {
                    let job = c.history.pop_front().expect("front exists");
                    c.push(encode_reply(&Reply::HistoryEnd { room: &job.room }).into());
                }
            }
            list_once(&mut self.dirty, conn, &mut c.dirty);
        }
        Ok(())
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &conn in &dirty {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.dirty = false;
                self.flush(conn);
            }
        }
        // Keep the list's allocation for the next turn (nothing marks during a flush).
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        if self.flushed_bytes > 0 {
            let bytes = std::mem::take(&mut self.flushed_bytes);
            let frames = std::mem::take(&mut self.flushed_frames);
            let writes = std::mem::take(&mut self.flushed_writes);
            self.stats.writes.fetch_add(writes, Ordering::Relaxed);
            self.stats.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
            self.stats.frames_sent.fetch_add(frames, Ordering::Relaxed);
        }
    }

    /// Writes as much of `conn`'s queue as the socket takes, many frames per syscall.
    fn flush(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.is_websocket() {
            self.flush_websocket(conn);
            return;
        }
        if c.tls.is_some() {
            self.flush_tls(conn);
            return;
        }
        while !c.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITEV_FRAMES_MAX];
            let mut count = 0;
            for (slot, queued) in slices.iter_mut().zip(c.out.iter()) {
                let start = if count == 0 { c.out_offset } else { 0 };
                *slot = IoSlice::new(&queued.bytes[start..]);
                count += 1;
            }
            match c.stream.write_vectored(&slices[..count]) {
                Ok(0) => {
                    self.drop_conn(conn);
                    return;
                }
                Ok(mut written) => {
                    c.out_bytes -= written;
                    self.flushed_bytes += written as u64;
                    self.flushed_writes += 1;
                    while written > 0 {
                        let front_left = c.out[0].bytes.len() - c.out_offset;
                        if written >= front_left {
                            written -= front_left;
                            let done = c.out.pop_front().expect("written bytes were queued");
                            self.flushed_frames += u64::from(done.frames);
                            c.out_offset = 0;
                        } else {
                            c.out_offset += written;
                            written = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.drop_conn(conn);
                    return;
                }
            }
        }
        self.after_flush(conn);
    }

    /// [`Worker::flush`] for a TLS connection: frames go into rustls while its bounded
    /// buffer takes them, and its records go to the socket until it would block.
    fn flush_tls(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let tls = c.tls.as_mut().expect("flush_tls is for TLS connections");
        loop {
            while let Some(front) = c.out.front() {
                // 0 when rustls's buffer is full (or, before the handshake ends, its
                // plaintext buffer): the rest waits in `out`, counted against the limit.
                let taken = tls
                    .writer()
                    .write(&front.bytes[c.out_offset..])
                    .unwrap_or(0);
                if taken == 0 {
                    break;
                }
                c.out_bytes -= taken;
                self.flushed_bytes += taken as u64;
                c.out_offset += taken;
                if c.out_offset == front.bytes.len() {
                    self.flushed_frames += u64::from(front.frames);
                    c.out.pop_front();
                    c.out_offset = 0;
                }
            }
            if !tls.wants_write() {
                break;
            }
            match tls.write_tls(&mut c.stream) {
                Ok(0) => {
                    self.drop_conn(conn);
                    return;
                }
                Ok(_) => self.flushed_writes += 1,
                // The writable event brings it back here.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_conn(conn);
                    return;
                }
            }
        }
        self.after_flush(conn);
    }

    /// After a flush of either kind: a drained queue gives its memory back, and a closing
    /// connection goes (a TLS one says close_notify first, best effort).
    fn after_flush(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.out.is_empty() {
            return;
        }
        if c.out.capacity() > 0 {
            // Idle connections hold no queue: a queue that grew to a few dozen entries while
            // a room was busy (presence of a rejoin storm, say) would otherwise stay with
            // every idle client. Allocating it again costs far less than the write did.
            c.out = VecDeque::new();
        }
        if c.closing {
            if let Some(Phase::Open { socket, .. }) = c.web.as_deref_mut() {
                // A close frame, best effort: the browser then reports a clean close.
                let mut wire = Wire::of(&mut c.stream, &mut c.tls);
                let _ = socket.close(&mut wire, None);
                let _ = socket.flush(&mut wire);
            }
            if let Some(tls) = c.tls.as_mut() {
                tls.send_close_notify();
                let _ = tls.write_tls(&mut c.stream);
            }
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            self.drop_conn(conn);
        }
    }

    /// [`Worker::read`] for a `[web]` connection: its HTTP request, then WebSocket
    /// messages, each one frame, until the socket would block.
    fn read_web(&mut self, conn: ConnId, share: &mut usize) {
        self.read_web_messages(conn, share);
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.tls.as_ref().is_some_and(|tls| tls.wants_write()) {
                // TLS handshake answers (or alerts) that reading produced.
                list_once(&mut self.dirty, conn, &mut c.dirty);
            }
        }
    }

    fn read_web_messages(&mut self, conn: ConnId, share: &mut usize) {
        loop {
            if !self.may_read(conn) {
                return;
            }
            let c = self.conns.get_mut(&conn).expect("may_read checked");
            let phase = c
                .web
                .as_deref_mut()
                .expect("read_web is for web connections");
            let socket = match phase {
                Phase::Open { socket, .. } if !c.discard_input => socket,
                // The request, or input ignored until the close: plain bytes.
                _ => match Wire::of(&mut c.stream, &mut c.tls).read(&mut self.scratch) {
                    Ok(0) => return self.drop_conn(conn),
                    Ok(n) => {
                        c.last_read = Instant::now();
                        // After the answer to its request, a connection's input is
                        // dropped: neither the head nor the answers may grow with it.
                        if let (Phase::Request { head, .. }, false) = (phase, c.discard_input) {
                            head.extend_from_slice(&self.scratch[..n]);
                            if !self.on_request(conn) {
                                return;
                            }
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return self.drop_conn(conn),
                },
            };
            match socket.read(&mut Wire::websocket(
                &mut c.stream,
                &mut c.tls,
                &c.out,
                &mut c.out_offset,
            )) {
                Ok(message) => {
                    c.last_read = Instant::now();
                    if let Phase::Open { pinged, .. } = phase {
                        *pinged = false;
                    }
                    if !self.on_message(conn, message, share) {
                        return;
                    }
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(tungstenite::Error::Capacity(_)) => {
                    c.discard_input = true;
                    self.outbox
                        .push_back(too_large_input(conn, self.limits.max_line_bytes));
                }
                // A close handshake done, or a protocol breach (unmasked frame, bad UTF-8).
                Err(_) => return self.drop_conn(conn),
            }
        }
    }

    /// Answers or upgrades `conn`'s HTTP request once it is complete. True: keep reading.
    fn on_request(&mut self, conn: ConnId) -> bool {
        let site = self.site.clone().expect("web connections come with a site");
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let Some(Phase::Request { head, .. }) = c.web.as_deref() else {
            return false;
        };
        match web::route(&site, head) {
            Routed::Incomplete => true,
            Routed::Respond(response) => {
                c.discard_input = true;
                c.push(response.into());
                self.close(conn);
                false
            }
            Routed::Upgrade { response, leftover } => {
                // A fresh socket's send buffer is empty: these ~130 bytes go at once, and a
                // socket that cannot take them is broken.
                let mut wire = Wire::of(&mut c.stream, &mut c.tls);
                if wire
                    .write_all(&response)
                    .and_then(|()| wire.flush())
                    .is_err()
                {
                    self.drop_conn(conn);
                    return false;
                }
                c.web = Some(Box::new(Phase::Open {
                    socket: Box::new(site.websocket(leftover)),
                    pinged: false,
                }));
                c.announced = true;
                self.outbox.push_back(Input::Connected {
                    conn,
                    addr: c.stream.peer_addr().ok(),
                    now_ms: now_ms(),
                });
                true
            }
        }
    }

    /// One WebSocket message from `conn`. False when reading must stop (see
    /// [`Worker::process_lines`]).
    fn on_message(&mut self, conn: ConnId, message: Message, share: &mut usize) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let input = match message {
            Message::Text(text) => {
                request_input(conn, text.as_bytes(), self.limits.max_body_bytes, now_ms())
            }
            Message::Binary(_) => Input::BadFrame {
                conn,
                error: crate::wire::client::DecodeError {
                    code: ErrorCode::BadRequest,
                    message: "a frame is a WebSocket text message, not binary".into(),
                    id: None,
                },
            },
            // tungstenite queued the pong or the close answer: flush it.
            _ => {
                list_once(&mut self.dirty, conn, &mut c.dirty);
                return true;
            }
        };
        self.outbox.push_back(input);
        *share = share.saturating_sub(1);
        if self.outbox.len() >= OUTBOX_MAX || *share == 0 {
            list_once(&mut self.paused, conn, &mut c.read_pending);
            return false;
        }
        true
    }

    /// [`Worker::flush`] for a WebSocket. A framed item (a fan-out's batch, framed once for
    /// every WebSocket member) is written to the socket as it is, after whatever tungstenite
    /// holds; any other item's lines each become one text message in tungstenite, whose
    /// buffer takes them until the socket would block (the rest waits in `out`, counted
    /// against the limit). A line's text is a slice of the queued buffer, not a copy.
    fn flush_websocket(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(Phase::Open { socket, .. }) = c.web.as_deref_mut() else {
            return;
        };
        let mut wire = Wire::of(&mut c.stream, &mut c.tls);
        while let Some(front) = c.out.front() {
            if !front.framed {
                let (taken, stop) = match queue_lines(socket, &mut wire, front, &mut c.out_offset) {
                    Handed::Taken(taken) => (taken, false),
                    Handed::Stop(taken) => (taken, true),
                    Handed::Failed => return self.drop_conn(conn),
                };
                c.out_bytes -= taken;
                self.flushed_bytes += taken as u64;
                if c.out_offset == front.bytes.len() {
                    self.flushed_frames += u64::from(front.frames);
                    c.out.pop_front();
                    c.out_offset = 0;
                }
                if stop {
                    break;
                }
                continue;
            }
            // A framed item: tungstenite's bytes go first; once begun, the item goes before
            // any more of them (`Wire::websocket`).
            if c.out_offset == 0 {
                match socket.flush(&mut wire) {
                    Ok(()) => {}
                    Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        return
                    }
                    Err(_) => return self.drop_conn(conn),
                }
            }
            self.flushed_writes += 1;
            match wire.write_rest(&front.bytes, &mut c.out_offset) {
                Ok(()) => {}
                // The writable event brings it back here.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.drop_conn(conn),
            }
            c.out_bytes -= front.bytes.len();
            self.flushed_bytes += front.bytes.len() as u64;
            self.flushed_frames += u64::from(front.frames);
            c.out.pop_front();
            c.out_offset = 0;
        }
        match socket.flush(&mut wire) {
            Ok(()) => self.flushed_writes += 1,
            // The writable event brings it back here.
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => return self.drop_conn(conn),
        }
        self.after_flush(conn);
    }

    /// Pings a quiet WebSocket: the browser answers by itself, which counts as input.
    fn ping_websocket(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Some(Phase::Open { socket, pinged }) = c.web.as_deref_mut() {
            *pinged = true;
            // WouldBlock keeps it buffered; any other failure shows on the flush.
            let _ = socket.write(
                &mut Wire::websocket(&mut c.stream, &mut c.tls, &c.out, &mut c.out_offset),
                Message::Ping(Default::default()),
            );
            // At once: the sweep runs after this turn's flush.
            self.flush(conn);
        }
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        self.last_sweep = now;
        let idle = self.limits.idle_timeout;
        let mut expired = Vec::new();
        let mut idle_conns = Vec::new();
        let mut to_ping = Vec::new();
        for (&id, c) in &mut self.conns {
            c.release_spare_capacity();
            let quiet = now.duration_since(c.last_read);
            if c.close_deadline.is_some_and(|d| now >= d) {
                expired.push(id);
            } else if c.closing {
                continue;
            } else if quiet >= idle {
                idle_conns.push(id);
            } else {
                match c.web.as_deref() {
                    Some(Phase::Request { accepted, .. })
                        if now.duration_since(*accepted) >= WEB_REQUEST_TIMEOUT =>
                    {
                        idle_conns.push(id)
                    }
                    // Sent by half the timeout at the latest, so the answer has the
                    // other half to come back.
                    Some(Phase::Open { pinged: false, .. })
                        if quiet >= (idle / 2).saturating_sub(SWEEP_INTERVAL) =>
                    {
                        to_ping.push(id)
                    }
                    _ => {}
                }
            }
        }
        for id in expired {
            self.drop_conn(id);
        }
        for id in to_ping {
            self.ping_websocket(id);
        }
        for id in idle_conns {
            log::debug!("connection {id}: idle for {} ms; closing", idle.as_millis());
            self.close(id);
        }
    }
}

/// How far `queue_lines` got with a queued item's lines.
enum Handed {
    /// These bytes of lines went into tungstenite's buffer: all that were left.
    Taken(usize),
    /// These went in, and tungstenite takes no more now: the socket or its buffer is full.
    Stop(usize),
    /// The connection failed.
    Failed,
}

/// Hands `front`'s lines from `offset` on to tungstenite, one text message each, moving
/// `offset` past each one it took.
fn queue_lines(
    socket: &mut tungstenite::protocol::WebSocketContext,
    wire: &mut Wire,
    front: &Queued,
    offset: &mut usize,
) -> Handed {
    let shared = Bytes::from_owner(front.bytes.clone());
    let start = *offset;
    while *offset < shared.len() {
        let rest = &shared[*offset..];
        let taken = memchr::memchr(b'\n', rest).map_or(rest.len(), |at| at + 1);
        let end = *offset + taken - usize::from(rest[taken - 1] == b'\n');
        let line = shared.slice(*offset..end);
        debug_assert!(std::str::from_utf8(&line).is_ok());
        // SAFETY: the queued lines are the node's own frames, written by its JSON
        // encoder from `String`s, and split here only at `\n` (ASCII): each is
        // UTF-8. Checking it again per message per member cost ~4 % of the node's
        // CPU at N = 100 (perf).
        #[allow(unsafe_code)]
        let text = unsafe { Utf8Bytes::from_bytes_unchecked(line) };
        match socket.write(wire, Message::Text(text)) {
            Ok(()) => *offset += taken,
            // The message is in tungstenite's buffer; the socket is full.
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                *offset += taken;
                return Handed::Stop(*offset - start);
            }
            Err(tungstenite::Error::WriteBufferFull(_)) => return Handed::Stop(*offset - start),
            Err(_) => return Handed::Failed,
        }
    }
    Handed::Taken(*offset - start)
}

/// What the core gets for one frame a client sent (a line, or a WebSocket text message).
fn request_input(conn: ConnId, frame: &[u8], max_body_bytes: usize, now_ms: u64) -> Input {
    match decode_request(frame, max_body_bytes) {
        Ok(request) => Input::Request {
            conn,
            request,
            now_ms,
        },
        Err(error) => Input::BadFrame { conn, error },
    }
}

/// A client frame longer than `client.max_line_bytes`: refused, and the connection closes.
fn too_large_input(conn: ConnId, limit: usize) -> Input {
    Input::BadFrame {
        conn,
        error: crate::wire::client::DecodeError {
            code: ErrorCode::TooLarge,
            message: format!("line longer than {limit} bytes; closing"),
            id: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_queue_gives_its_memory_back_and_a_busy_one_keeps_it() {
        let mut queue: VecDeque<u64> = (0..100).collect();
        release_if_empty(&mut queue);
        assert!(queue.capacity() >= 100, "a queue with items keeps its room");
        queue.clear();
        release_if_empty(&mut queue);
        assert_eq!(queue.capacity(), 0);
    }
}
