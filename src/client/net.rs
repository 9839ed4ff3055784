//! The network thread of the client: owns the `TcpStream` to a node, says hello, carries
//! out [`Command`]s, reports [`Event`]s, and on any loss of the connection reconnects,
//! rejoins after the last shown message, and resends what was not acknowledged.
//!
//! It never touches the terminal; it talks to the front end only through bounded channels.
//! Protocol decisions live in `session` and `reconnect`; this file does the I/O around them.
//!
//! With [`NetConfig::tls`] every connection (the first, redirects, reconnects) is TLS:
//! rustls over the blocking socket, its handshake finished before `hello` is sent. A server
//! whose certificate does not verify is a [`Event::Fatal`]: no retry would fix it.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use thiserror::Error;

use crate::client::frames;
use crate::client::liveness::Liveness;
use crate::client::reconnect::{refusal_is_final, Reconnect};
use crate::client::session::{MsgVerdict, PendingSend, Position, SendErrorAction, Session};
use crate::core::DEFAULT_PROBE_MS;
use crate::wire::client::{decode_server_frame, ServerFrame};
use crate::wire::lines::{Lines, TooLong};

/// Bound on resolving and connecting to one server; a node on this machine or a LAN
/// answers in well under it, and a dead one must not hold up trying the next.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// Bound on the node's answer to `hello`.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 3_000;

/// Read timeout of the socket: how often the thread looks at its command channel and
/// timers while the node is quiet. It bounds the extra latency of a typed line.
pub const READ_POLL_MS: u64 = 20;

/// Bound on one blocked write; a node that takes nothing for this long is treated as gone.
pub const WRITE_TIMEOUT_MS: u64 = 5_000;

/// Ping period; the contract asks for at least one frame every 15 s. Short, so that a node
/// that stopped answering (paused, or cut off by a partition that leaves TCP silent) is
/// left within seconds; a ping costs the node one tiny frame.
pub const PING_INTERVAL_MS: u64 = 3_000;

/// A connection from which nothing (not even a pong) arrived for this long is dead: two
/// missed pongs plus a margin are proof enough to go elsewhere (and resuming is lossless).
/// The last resort: the liveness probe (`client::liveness`) moves a client within the pair's
/// detection time when the other node takes over.
pub const SILENCE_DEAD_MS: u64 = 7_000;

/// Pause before resending a send refused as `rate_limited` or `unavailable`.
pub const SEND_RETRY_DELAY_MS: u64 = 500;

/// A node that answered every send `unavailable` for this long is left for the other
/// servers: in strict mode an old primary cut off from its backup and the witness refuses
/// sends until the partition heals, while the backup may already serve (docs/failover.md).
/// Longer than what a strict hand-over waits (one lease, 600 ms by default) and than a
/// commit queue that is full for a moment.
pub const UNAVAILABLE_MOVE_MS: u64 = 2_500;

/// After `/quit`, how long unacknowledged sends may still wait for their ack (across a
/// reconnect too) before the client says `quit` anyway: long enough for a commit, short
/// enough that leaving never feels stuck.
pub const QUIT_ACK_WAIT_MS: u64 = 2_000;

/// Longest line accepted from a node. Nodes refuse lines over their `max_line_bytes`
/// (64 KiB by default), but a `msg` they send can be longer than the `send` it came from
/// (escaping), and nodes may be configured higher; 1 MiB is generous and still bounded.
pub const LINE_MAX_BYTES: usize = 1 << 20;

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What the client needs to open sessions.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// `host:port` client addresses, tried in turn. Never empty.
    pub servers: Vec<String>,
    pub nick: String,
    /// Stable across this process's reconnects: it scopes message ids.
    pub session: String,
    pub token: Option<String>,
    pub ping_interval: Duration,
    /// Seed of the backoff jitter; `None` draws one.
    pub seed: Option<u64>,
    /// Speak TLS to every server; `None`: plain TCP.
    pub tls: Option<ClientTls>,
}

/// How the client speaks TLS.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// Trust anchors (the public roots, or `--ca`), TLS 1.2+.
    pub config: Arc<rustls::ClientConfig>,
    /// The name every server's certificate must carry; `None`: the host of the address
    /// dialed (a name, or an IP that the certificate lists).
    pub name: Option<String>,
}

/// Requests of the front end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Join {
        room: String,
        after: Option<Position>,
    },
    Leave {
        room: String,
    },
    Send {
        room: String,
        id: String,
        body: String,
    },
    History {
        room: String,
        limit: usize,
    },
    /// Answered by [`Event::Members`].
    Who {
        room: String,
    },
    /// Say `quit` and end the thread, once unacknowledged sends are acknowledged or
    /// [`QUIT_ACK_WAIT_MS`] has passed.
    Quit,
}

/// What happened, for the front end. The thread ends after [`Event::Fatal`] or a
/// [`Command::Quit`], dropping its sender.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// About to try `server`; `attempt` counts tries since the last stable connection,
    /// `reconnecting` says whether a session was open before.
    Connecting {
        server: String,
        attempt: u32,
        reconnecting: bool,
    },
    /// An attempt failed; another follows.
    AttemptFailed {
        server: String,
        reason: String,
    },
    /// `server` is not the primary and named `primary` (or none).
    Redirected {
        server: String,
        primary: Option<String>,
    },
    /// Session open: `welcome` from `node` in `epoch`.
    Connected {
        server: String,
        node: String,
        epoch: u64,
    },
    /// The open session ended; a reconnect follows.
    Disconnected {
        server: String,
        reason: String,
    },
    /// A `msg` to print: `history` tells an answer to `/history` from the live stream.
    /// `raw` is the line as received.
    Msg {
        /// Boxed: a frame is large next to the other events.
        frame: Box<ServerFrame>,
        raw: String,
        history: bool,
    },
    Joined {
        room: String,
        members: Vec<String>,
    },
    Left {
        room: String,
    },
    Presence {
        room: String,
        nick: String,
        joined: bool,
    },
    HistoryEnd {
        room: String,
    },
    Acked {
        id: String,
        seq: u64,
    },
    /// The node refused a send for good; it will not be stored.
    SendFailed {
        send: PendingSend,
        code: String,
        message: String,
    },
    /// An `error` frame not tied to a send.
    Error {
        code: String,
        message: String,
    },
    /// A command refused before reaching the wire (too many unacknowledged sends, …).
    Rejected {
        message: String,
    },
    /// Answer to [`Command::Who`]; `None` when not in the room.
    Members {
        room: String,
        members: Option<Vec<String>>,
    },
    /// The node refused the session in a way no retry fixes (`nick_in_use`, …).
    Fatal {
        code: String,
        message: String,
    },
}

/// Why a connection attempt or an open session ended.
#[derive(Debug, Error)]
pub enum NetError {
    #[error("cannot resolve {server}: {source}")]
    Resolve { server: String, source: io::Error },
    #[error("{server}: no address to connect to")]
    NoAddress { server: String },
    #[error("{server}: connect: {source}")]
    Connect { server: String, source: io::Error },
    #[error("{server}: {source}")]
    Io { server: String, source: io::Error },
    #[error("{server}: the node closed the connection")]
    Closed { server: String },
    #[error("{server}: a line longer than {limit} bytes")]
    LineTooLong { server: String, limit: usize },
    #[error("{server}: no answer to hello within {timeout_ms} ms")]
    HandshakeTimeout { server: String, timeout_ms: u64 },
    #[error("{server}: answered hello with unexpected `{kind}`")]
    Unexpected { server: String, kind: String },
    #[error("{server}: TLS: {message}")]
    Tls {
        server: String,
        message: String,
        /// The certificate did not verify, or the server does not speak TLS: retrying
        /// cannot help.
        certain: bool,
    },
}

/// The socket to a node, plain or TLS.
enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.read(buf),
            Transport::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => stream.write(buf),
            Transport::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.flush(),
            Transport::Tls(stream) => stream.flush(),
        }
    }
}

/// Runs the TLS handshake on a connected socket, within [`HANDSHAKE_TIMEOUT_MS`].
fn tls_handshake(server: &str, stream: TcpStream, tls: &ClientTls) -> Result<Transport, NetError> {
    let fail = |message: String, certain: bool| NetError::Tls {
        server: server.to_string(),
        message,
        certain,
    };
    let name = tls
        .name
        .as_deref()
        .unwrap_or_else(|| crate::tls::host_of(server));
    let name = crate::tls::server_name(name).map_err(|e| fail(e.to_string(), true))?;
    let mut session = rustls::ClientConnection::new(tls.config.clone(), name)
        .map_err(|e| fail(e.to_string(), false))?;
    let io_error = |source| NetError::Io {
        server: server.to_string(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_millis(HANDSHAKE_TIMEOUT_MS)))
        .map_err(io_error)?;
    let mut socket = &stream;
    while session.is_handshaking() {
        if let Err(e) = session.complete_io(&mut socket) {
            let rustls_error = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            return Err(match rustls_error {
                Some(error @ rustls::Error::InvalidCertificate(problem)) => {
                    let hint = match problem {
                        rustls::CertificateError::UnknownIssuer => " (give its CA with --ca)",
                        rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. } => {
                            " (connect by a name it carries, or set --tls-name)"
                        }
                        _ => "",
                    };
                    fail(format!("{}{hint}", crate::tls::explain(error)), true)
                }
                Some(
                    error @ rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                ) => fail(
                    format!("{} (drop --tls, or check the address)", crate::tls::explain(error)),
                    true,
                ),
                Some(error) => fail(crate::tls::explain(error), false),
                None if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::TimedOut =>
                {
                    fail(
                        format!("no TLS handshake within {HANDSHAKE_TIMEOUT_MS} ms (does this address speak TLS?)"),
                        false,
                    )
                }
                None => fail(format!("handshake: {e}"), false),
            });
        }
    }
    stream
        .set_read_timeout(Some(Duration::from_millis(READ_POLL_MS)))
        .map_err(io_error)?;
    Ok(Transport::Tls(Box::new(rustls::StreamOwned::new(
        session, stream,
    ))))
}

/// Starts the network thread. Commands queued before the first `welcome` are kept and
/// carried out when it arrives.
pub fn spawn(
    config: NetConfig,
    commands: Receiver<Command>,
    events: Sender<Event>,
) -> io::Result<JoinHandle<()>> {
    assert!(!config.servers.is_empty(), "the client needs a server");
    thread::Builder::new()
        .name("pbchat-net".into())
        .spawn(move || Driver::new(config, commands, events).run())
}

/// How a session on one connection ended.
enum Ended {
    /// The front end asked to quit, or went away.
    Quit,
    /// Lost; reconnect, first to `primary` when a `goodbye` named it.
    Dropped {
        reason: String,
        primary: Option<String>,
    },
    /// The node refused every send as `unavailable` for [`UNAVAILABLE_MOVE_MS`]: reconnect,
    /// to the other servers first.
    Unavailable { reason: String },
    /// The node went silent and a liveness probe was welcomed by `server`, which serves
    /// now: the session goes on there.
    Moved {
        reason: String,
        server: String,
        connection: Box<Connection>,
        welcome: Welcome,
    },
}

/// What `welcome` said.
struct Welcome {
    node: String,
    epoch: u64,
    /// The other node's client address, the first place to probe.
    peer: Option<String>,
    /// The liveness wait; `None` from a node that does not announce one (no probing then).
    probe_ms: Option<u64>,
}

/// How a new connection's `hello` was answered: by its node, or, while that node said
/// nothing, by another node that a probe reached and that serves (the liveness rule: a
/// client that connects to a stopped primary would otherwise wait out its handshake).
enum Answered {
    Here(Handshake),
    Elsewhere(Connection, Welcome),
}

/// The node's answer to `hello`.
enum Handshake {
    Welcome(Welcome),
    Redirect { primary: Option<String> },
    Refused { code: String, message: String },
}

/// A `hello` to another node in flight while the session's node is silent
/// (`client::liveness`): a thread of its own, so the session goes on meanwhile.
struct Probe {
    server: String,
    answer: Receiver<Result<(Connection, Handshake), NetError>>,
}

impl Probe {
    /// At most one thread per session at a time, ending within the connect and handshake
    /// bounds; its answer is dropped if the session ended first.
    fn start(server: String, tls: Option<ClientTls>, hello: Value) -> io::Result<Probe> {
        let (tx, answer) = bounded(1);
        let target = server.clone();
        thread::Builder::new()
            .name("pbchat-probe".into())
            .spawn(move || {
                let result = Connection::open(&target, tls.as_ref()).and_then(|mut c| {
                    let handshake = match say_hello(&mut c, &hello, || None)? {
                        Answered::Here(handshake) => handshake,
                        Answered::Elsewhere(..) => unreachable!("a probe asks no one else"),
                    };
                    Ok((c, handshake))
                });
                let _ = tx.send(result);
            })?;
        Ok(Probe { server, answer })
    }
}

/// One TCP connection and its partial input.
struct Connection {
    server: String,
    stream: Transport,
    /// Bytes received and not yet split into complete lines.
    buffer: Vec<u8>,
    /// Complete lines that arrived with the answer to `hello`, for the session to handle.
    pending: Vec<String>,
    opened: Instant,
    last_received: Instant,
    last_ping: Instant,
    /// The first write since the node last sent anything: every frame is answered, so a
    /// node silent long after it is suspect (`client::liveness`).
    unanswered_since: Option<Instant>,
}

impl Connection {
    fn open(server: &str, tls: Option<&ClientTls>) -> Result<Connection, NetError> {
        let addrs = server
            .to_socket_addrs()
            .map_err(|source| NetError::Resolve {
                server: server.to_string(),
                source,
            })?;
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let mut last_error = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    let io_error = |source| NetError::Io {
                        server: server.to_string(),
                        source,
                    };
                    stream.set_nodelay(true).map_err(io_error)?;
                    stream
                        .set_read_timeout(Some(Duration::from_millis(READ_POLL_MS)))
                        .map_err(io_error)?;
                    stream
                        .set_write_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)))
                        .map_err(io_error)?;
                    let stream = match tls {
                        Some(tls) => tls_handshake(server, stream, tls)?,
                        None => Transport::Plain(stream),
                    };
                    let now = Instant::now();
                    return Ok(Connection {
                        server: server.to_string(),
                        stream,
                        buffer: Vec::new(),
                        pending: Vec::new(),
                        opened: now,
                        last_received: now,
                        last_ping: now,
                        unanswered_since: None,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(match last_error {
            Some(source) => NetError::Connect {
                server: server.to_string(),
                source,
            },
            None => NetError::NoAddress {
                server: server.to_string(),
            },
        })
    }

    fn write(&mut self, frame: &Value) -> Result<(), NetError> {
        self.unanswered_since.get_or_insert_with(Instant::now);
        self.stream
            .write_all(&frames::to_line(frame))
            .map_err(|source| NetError::Io {
                server: self.server.clone(),
                source,
            })
    }

    /// Waits up to [`READ_POLL_MS`] for input and appends every complete line to `lines`.
    fn read_lines(&mut self, lines: &mut Vec<String>) -> Result<(), NetError> {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        let count = match self.stream.read(&mut chunk) {
            Ok(0) => {
                return Err(NetError::Closed {
                    server: self.server.clone(),
                })
            }
            Ok(count) => count,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(())
            }
            Err(source) => {
                return Err(NetError::Io {
                    server: self.server.clone(),
                    source,
                })
            }
        };
        self.last_received = Instant::now();
        self.unanswered_since = None;
        self.buffer.extend_from_slice(&chunk[..count]);
        let mut split = Lines::new(&self.buffer, LINE_MAX_BYTES);
        for line in split.by_ref() {
            match line {
                Ok(line) => lines.push(String::from_utf8_lossy(line).into_owned()),
                Err(TooLong { limit }) => {
                    return Err(NetError::LineTooLong {
                        server: self.server.clone(),
                        limit,
                    })
                }
            }
        }
        let consumed = split.consumed();
        self.buffer.drain(..consumed);
        Ok(())
    }
}

/// The thread's state across connections.
struct Driver {
    config: NetConfig,
    session: Session,
    policy: Reconnect,
    rng: StdRng,
    commands: Receiver<Command>,
    events: Sender<Event>,
    /// Ids of sends refused for now (`rate_limited`, `unavailable`) and when to resend them.
    retry: Vec<String>,
    retry_at: Option<Instant>,
    /// Since when this connection's sends have been refused as `unavailable` with no ack.
    unavailable_since: Option<Instant>,
    /// Counts pings, for their tokens.
    pings_sent: u64,
    /// Whether any session was open yet, for "connecting" versus "reconnecting".
    was_connected: bool,
    /// Set by `Quit`: the latest moment to leave even with sends unacknowledged.
    quit_deadline: Option<Instant>,
}

/// The front end hung up: there is no one left to serve.
struct UiGone;

impl Driver {
    fn new(config: NetConfig, commands: Receiver<Command>, events: Sender<Event>) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Driver {
            policy: Reconnect::new(config.servers.clone()),
            config,
            session: Session::new(),
            rng,
            commands,
            events,
            retry: Vec::new(),
            retry_at: None,
            unavailable_since: None,
            pings_sent: 0,
            was_connected: false,
            quit_deadline: None,
        }
    }

    fn emit(&self, event: Event) -> Result<(), UiGone> {
        self.events.send(event).map_err(|_| UiGone)
    }

    fn run(mut self) {
        // Either way the thread ends; dropping `events` tells the front end.
        let _ = self.run_sessions();
    }

    fn begin_quit(&mut self) {
        self.quit_deadline
            .get_or_insert(Instant::now() + Duration::from_millis(QUIT_ACK_WAIT_MS));
    }

    /// Quit was asked, and nothing more is worth waiting for.
    fn quit_due(&self) -> bool {
        self.quit_deadline.is_some_and(|deadline| {
            self.session.unacked().next().is_none() || Instant::now() >= deadline
        })
    }

    fn run_sessions(&mut self) -> Result<(), UiGone> {
        loop {
            if self.quit_due() {
                return Ok(());
            }
            let delay = self.policy.delay(&mut self.rng);
            if !delay.is_zero() && self.idle_for(delay)? {
                return Ok(());
            }
            let server = self.policy.next_target();
            self.emit(Event::Connecting {
                server: server.clone(),
                attempt: self.policy.attempt(),
                reconnecting: self.was_connected,
            })?;
            let (server, connection, handshake) = match self.open_session(&server) {
                Ok(open) => open,
                Err(NetError::Tls {
                    server,
                    message,
                    certain: true,
                }) => {
                    self.emit(Event::Fatal {
                        code: "tls".into(),
                        message: format!("{server}: {message}"),
                    })?;
                    return Ok(());
                }
                Err(e) => {
                    self.emit(Event::AttemptFailed {
                        server,
                        reason: e.to_string(),
                    })?;
                    self.policy.on_failure();
                    continue;
                }
            };
            match handshake {
                Handshake::Redirect { primary } => {
                    self.emit(Event::Redirected {
                        server,
                        primary: primary.clone(),
                    })?;
                    self.policy.on_redirect(primary.as_deref());
                }
                Handshake::Refused { code, message } if refusal_is_final(&code) => {
                    self.emit(Event::Fatal { code, message })?;
                    return Ok(());
                }
                Handshake::Refused { code, message } => {
                    self.emit(Event::AttemptFailed {
                        server,
                        reason: format!("error {code}: {message}"),
                    })?;
                    self.policy.on_failure();
                }
                Handshake::Welcome(welcome) => {
                    if self.serve_until_lost(server, connection, welcome)? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Serves a welcomed session, and the sessions it moves to when its node goes silent and
    /// the other node took over, until one is lost (false: reconnect) or the client quits.
    fn serve_until_lost(
        &mut self,
        mut server: String,
        mut connection: Connection,
        mut welcome: Welcome,
    ) -> Result<bool, UiGone> {
        loop {
            self.was_connected = true;
            self.emit(Event::Connected {
                server: server.clone(),
                node: welcome.node.clone(),
                epoch: welcome.epoch,
            })?;
            match self.serve(&mut connection, &welcome)? {
                Ended::Quit => return Ok(true),
                Ended::Dropped { reason, primary } => {
                    self.emit(Event::Disconnected {
                        server: server.clone(),
                        reason,
                    })?;
                    let lived = connection.opened.elapsed();
                    self.policy.on_dropped(&server, lived, primary.as_deref());
                    return Ok(false);
                }
                Ended::Unavailable { reason } => {
                    self.emit(Event::Disconnected {
                        server: server.clone(),
                        reason,
                    })?;
                    self.policy.on_unavailable(&server);
                    return Ok(false);
                }
                Ended::Moved {
                    reason,
                    server: next,
                    connection: next_connection,
                    welcome: next_welcome,
                } => {
                    self.emit(Event::Disconnected {
                        server: server.clone(),
                        reason,
                    })?;
                    (server, connection, welcome) = (next, *next_connection, next_welcome);
                }
            }
        }
    }

    /// Connects to `server` and says hello. While the node does not answer, after
    /// [`DEFAULT_PROBE_MS`] the first other server is asked too, and its `welcome` is taken
    /// if it comes first. Returns the server that welcomed (or answered) and its connection.
    fn open_session(&self, server: &str) -> Result<(String, Connection, Handshake), NetError> {
        let hello = self.hello();
        let tls = self.config.tls.clone();
        let mut connection = Connection::open(server, tls.as_ref())?;
        let other = self.config.servers.iter().find(|s| *s != server).cloned();
        let probe_after = Instant::now() + Duration::from_millis(DEFAULT_PROBE_MS);
        let mut probe: Option<Probe> = None;
        let mut probed = false;
        let elsewhere = || {
            if !probed && Instant::now() >= probe_after {
                probed = true;
                probe = other
                    .clone()
                    .and_then(|other| Probe::start(other, tls.clone(), hello.clone()).ok());
            }
            match probe.as_ref()?.answer.try_recv() {
                Ok(Ok((next, Handshake::Welcome(welcome)))) => Some((next, welcome)),
                Err(TryRecvError::Empty) => None,
                Ok(_) | Err(TryRecvError::Disconnected) => {
                    probe = None;
                    None
                }
            }
        };
        Ok(match say_hello(&mut connection, &hello, elsewhere)? {
            Answered::Here(handshake) => (server.to_string(), connection, handshake),
            Answered::Elsewhere(next, welcome) => {
                log::info!(
                    "{server}: no answer to hello; {} welcomed the session",
                    next.server
                );
                (next.server.clone(), next, Handshake::Welcome(welcome))
            }
        })
    }

    fn hello(&self) -> Value {
        frames::hello(
            &self.config.nick,
            &self.config.session,
            self.config.token.as_deref(),
        )
    }
}

/// Sends `hello` and waits for the answer, or for `elsewhere` to hand over a session that
/// another node welcomed meanwhile.
fn say_hello(
    connection: &mut Connection,
    hello: &Value,
    mut elsewhere: impl FnMut() -> Option<(Connection, Welcome)>,
) -> Result<Answered, NetError> {
    connection.write(hello)?;
    let deadline = Instant::now() + Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        connection.read_lines(&mut lines)?;
        if lines.is_empty() {
            if let Some((next, welcome)) = elsewhere() {
                return Ok(Answered::Elsewhere(next, welcome));
            }
        }
        // Only the first frame answers hello; nothing else may come before it, and a
        // node sends nothing more after a redirect or a refusal.
        let Some(line) = lines.first() else {
            continue;
        };
        let Ok(frame) = decode_server_frame(line.as_bytes()) else {
            log::warn!("{}: undecodable answer to hello: {line}", connection.server);
            lines.remove(0);
            continue;
        };
        let answer = match frame.kind.as_str() {
            "welcome" => Handshake::Welcome(Welcome {
                node: frame.node.unwrap_or_default(),
                epoch: frame.epoch.unwrap_or(0),
                peer: frame.peer,
                probe_ms: frame.probe_ms,
            }),
            "redirect" => Handshake::Redirect {
                primary: frame.primary,
            },
            // A node going away before it let us in: follow it like a redirect.
            "goodbye" => Handshake::Redirect {
                primary: frame.primary,
            },
            "error" => Handshake::Refused {
                code: frame.code.unwrap_or_default(),
                message: frame.message.unwrap_or_default(),
            },
            other => {
                return Err(NetError::Unexpected {
                    server: connection.server.clone(),
                    kind: other.to_string(),
                })
            }
        };
        // Frames right behind welcome are the session's: keep them for `serve`.
        lines.remove(0);
        connection.pending = lines;
        return Ok(Answered::Here(answer));
    }
    Err(NetError::HandshakeTimeout {
        server: connection.server.clone(),
        timeout_ms: HANDSHAKE_TIMEOUT_MS,
    })
}

impl Driver {
    /// Waits out a backoff pause while still taking commands. Returns true on quit.
    fn idle_for(&mut self, pause: Duration) -> Result<bool, UiGone> {
        let deadline = Instant::now() + pause;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            match self.commands.recv_timeout(left) {
                Ok(command) => {
                    // Not connected: the state change is all; the frame goes out on resume.
                    let _ = self.on_command(command)?;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.begin_quit();
                    if !self.quit_due() {
                        // Unacknowledged sends may still make it: sit out the pause.
                        thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Ok(false),
            }
            if self.quit_due() {
                return Ok(true);
            }
        }
    }

    /// Applies a command to the session state; returns the frame to send, if any.
    fn on_command(&mut self, command: Command) -> Result<Option<Value>, UiGone> {
        let refused = |e: &dyn std::fmt::Display| Event::Rejected {
            message: e.to_string(),
        };
        Ok(match command {
            Command::Join { room, after } => self.session.join(&room, after),
            Command::Leave { room } => self.session.leave(&room),
            Command::Send { room, id, body } => match self.session.send(&room, &id, &body) {
                Ok(frame) => Some(frame),
                Err(e) => {
                    self.emit(refused(&e))?;
                    None
                }
            },
            Command::History { room, limit } => match self.session.history(&room, limit) {
                Ok(frame) => Some(frame),
                Err(e) => {
                    self.emit(refused(&e))?;
                    None
                }
            },
            Command::Who { room } => {
                let members = self.session.members(&room);
                self.emit(Event::Members { room, members })?;
                None
            }
            Command::Quit => {
                self.begin_quit();
                None
            }
        })
    }

    /// Runs an open session until it ends.
    fn serve(&mut self, connection: &mut Connection, welcome: &Welcome) -> Result<Ended, UiGone> {
        // The status line names the server already.
        let server_prefix = format!("{}: ", connection.server);
        let dropped = |e: NetError| {
            let text = e.to_string();
            Ended::Dropped {
                reason: text
                    .strip_prefix(&server_prefix)
                    .unwrap_or(&text)
                    .to_string(),
                primary: None,
            }
        };
        // A new connection: whatever waited for a retry goes out now with the resume.
        self.retry.clear();
        self.retry_at = None;
        self.unavailable_since = None;
        for frame in self.session.resume_frames() {
            if let Err(e) = connection.write(&frame) {
                return Ok(dropped(e));
            }
        }
        let mut lines = std::mem::take(&mut connection.pending);
        let mut liveness = Liveness::new(
            &connection.server,
            welcome.peer.as_deref(),
            welcome.probe_ms,
            &self.config.servers,
        );
        let mut probe: Option<Probe> = None;
        loop {
            if let Some(moved) = self.check_liveness(connection, &mut liveness, &mut probe) {
                return Ok(moved);
            }
            loop {
                let command = match self.commands.try_recv() {
                    Ok(command) => command,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.begin_quit();
                        break;
                    }
                };
                if let Some(frame) = self.on_command(command)? {
                    if let Err(e) = connection.write(&frame) {
                        return Ok(dropped(e));
                    }
                }
            }
            if self.quit_due() {
                // Leaving anyway: a failed write changes nothing.
                let _ = connection.write(&frames::quit());
                return Ok(Ended::Quit);
            }
            match self.on_timers(connection) {
                Ok(Some(ended)) => return Ok(ended),
                Ok(None) => {}
                Err(e) => return Ok(dropped(e)),
            }
            if let Err(e) = connection.read_lines(&mut lines) {
                return Ok(dropped(e));
            }
            for line in lines.drain(..) {
                if let Some(ended) = self.on_line(line)? {
                    return Ok(ended);
                }
            }
        }
    }

    /// The session's clocks: the silence limit, a node that refuses every send, the ping,
    /// and sends waiting to be retried. `Some`: the session ends.
    fn on_timers(&mut self, connection: &mut Connection) -> Result<Option<Ended>, NetError> {
        let now = Instant::now();
        if now.duration_since(connection.last_received) >= Duration::from_millis(SILENCE_DEAD_MS) {
            return Ok(Some(Ended::Dropped {
                reason: format!("nothing heard for {SILENCE_DEAD_MS} ms"),
                primary: None,
            }));
        }
        if self.unavailable_since.is_some_and(|since| {
            now.duration_since(since) >= Duration::from_millis(UNAVAILABLE_MOVE_MS)
        }) {
            return Ok(Some(Ended::Unavailable {
                reason: format!(
                    "every send refused as unavailable for {UNAVAILABLE_MOVE_MS} ms; \
                     trying the other servers"
                ),
            }));
        }
        if now.duration_since(connection.last_ping) >= self.config.ping_interval {
            self.pings_sent += 1;
            connection.last_ping = now;
            connection.write(&frames::ping(&self.pings_sent.to_string()))?;
        }
        if self.retry_at.is_some_and(|at| now >= at) {
            self.retry_at = None;
            for id in std::mem::take(&mut self.retry) {
                if let Some(frame) = self.session.resend_frame(&id) {
                    connection.write(&frame)?;
                }
            }
        }
        Ok(None)
    }

    /// The liveness rule: starts a probe of the other node when this one is suspect, and
    /// moves the session there if the probe was welcomed.
    fn check_liveness(
        &self,
        connection: &Connection,
        liveness: &mut Liveness,
        probe: &mut Option<Probe>,
    ) -> Option<Ended> {
        let now = Instant::now();
        let Some(out) = probe else {
            if liveness.probe_due(connection.unanswered_since, now) {
                let server = liveness.next_target()?;
                log::info!(
                    "{}: nothing heard for {} ms after a request; asking {server} whether it took over",
                    connection.server,
                    liveness.probe_ms()
                );
                let tls = self.config.tls.clone();
                match Probe::start(server, tls, self.hello()) {
                    Ok(started) => *probe = Some(started),
                    Err(e) => {
                        log::warn!("cannot start a liveness probe: {e}");
                        liveness.on_probe_failed(now);
                    }
                }
            }
            return None;
        };
        let answer = match out.answer.try_recv() {
            Ok(answer) => answer,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err(NetError::Closed {
                server: out.server.clone(),
            }),
        };
        let server = out.server.clone();
        *probe = None;
        match answer {
            Ok((next, Handshake::Welcome(welcome))) => Some(Ended::Moved {
                reason: format!(
                    "no answer for {} ms; {server} took over",
                    liveness.probe_ms()
                ),
                server,
                connection: Box::new(next),
                welcome,
            }),
            Ok(_) | Err(_) => {
                log::info!("{server} does not serve: staying on {}", connection.server);
                liveness.on_probe_failed(Instant::now());
                None
            }
        }
    }

    /// Handles one line of an open session.
    fn on_line(&mut self, raw: String) -> Result<Option<Ended>, UiGone> {
        let frame = match decode_server_frame(raw.as_bytes()) {
            Ok(frame) => frame,
            Err(e) => {
                log::warn!("undecodable frame from the node ({e}): {raw}");
                return Ok(None);
            }
        };
        let room = frame.room.clone().unwrap_or_default();
        match frame.kind.as_str() {
            "msg" => match self.session.on_msg(&frame) {
                MsgVerdict::Show => self.emit(Event::Msg {
                    frame: Box::new(frame),
                    raw,
                    history: false,
                })?,
                MsgVerdict::History => self.emit(Event::Msg {
                    frame: Box::new(frame),
                    raw,
                    history: true,
                })?,
                MsgVerdict::Duplicate | MsgVerdict::OrigShown | MsgVerdict::Stray => {
                    log::debug!("skipped: {raw}");
                }
            },
            "joined" => {
                let members = frame.members.unwrap_or_default();
                if self.session.on_joined(&room, &members, frame.head) {
                    self.emit(Event::Joined { room, members })?;
                }
            }
            "left" => self.emit(Event::Left { room })?,
            "presence" => {
                let nick = frame.nick.unwrap_or_default();
                let joined = frame.event.as_deref() == Some("join");
                if self.session.on_presence(&room, &nick, joined) {
                    self.emit(Event::Presence { room, nick, joined })?;
                }
            }
            "history_end" if self.session.on_history_end(&room) => {
                self.emit(Event::HistoryEnd { room })?;
            }
            "ack" => {
                if let (Some(id), Some(seq)) = (frame.id, frame.seq) {
                    self.unavailable_since = None;
                    if self.session.on_ack(&id).is_some() {
                        self.emit(Event::Acked { id, seq })?;
                    }
                }
            }
            "error" => return self.on_error(frame),
            "goodbye" => {
                return Ok(Some(Ended::Dropped {
                    reason: format!(
                        "goodbye ({})",
                        frame.reason.as_deref().unwrap_or("no reason")
                    ),
                    primary: frame.primary,
                }))
            }
            "redirect" => {
                return Ok(Some(Ended::Dropped {
                    reason: "redirected".into(),
                    primary: frame.primary,
                }))
            }
            // pong: its arrival already refreshed `last_received`. Unknown types are
            // extensions this client does not know: ignored, as the contract says.
            _ => {}
        }
        Ok(None)
    }

    fn on_error(&mut self, frame: ServerFrame) -> Result<Option<Ended>, UiGone> {
        let code = frame.code.unwrap_or_default();
        let message = frame.message.unwrap_or_default();
        if let Some(id) = frame.id {
            match self.session.on_send_error(&id, &code) {
                SendErrorAction::Failed(send) => {
                    self.emit(Event::SendFailed {
                        send,
                        code,
                        message,
                    })?;
                    return Ok(None);
                }
                SendErrorAction::RetryLater => {
                    log::info!("send {id}: {code}: {message}; retrying");
                    if code == "unavailable" {
                        self.unavailable_since.get_or_insert_with(Instant::now);
                    }
                    if !self.retry.contains(&id) {
                        self.retry.push(id);
                    }
                    self.retry_at
                        .get_or_insert(Instant::now() + Duration::from_millis(SEND_RETRY_DELAY_MS));
                    return Ok(None);
                }
                SendErrorAction::Reconnect => {
                    return Ok(Some(Ended::Dropped {
                        reason: format!("error {code}: {message}"),
                        primary: None,
                    }))
                }
                SendErrorAction::Unknown => {}
            }
        }
        match code.as_str() {
            // The node closes the connection after these (or cannot serve it): resume
            // elsewhere or anew, with `after`, which loses nothing.
            "slow_consumer" | "not_primary" | "too_large" => Ok(Some(Ended::Dropped {
                reason: format!("error {code}: {message}"),
                primary: None,
            })),
            _ => {
                self.emit(Event::Error { code, message })?;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests;
