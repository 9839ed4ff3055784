//! The replication link: TCP between the two nodes.
//!
//! The backup dials the primary's `replication.listen` (the dialer thread runs while this
//! node is backup); the primary accepts. An authenticated handshake (HMAC over both sides'
//! nonces under the pair's secret) comes first, then the core decides where the logs part.
//! The primary streams its log from there, read from the log itself so catch-up and live
//! traffic are one path, within a window of unacknowledged entries; the backup acks what
//! it has durably. Each link has a reader and a writer thread; the core reaches the writer
//! through [`LinkCommand`]s and an ack word.
//!
//! With `[replication] tls_*` set, the link is mutual TLS ([`super::link_stream`]): each
//! side presents its certificate and checks the other's against the pair's CA before the
//! first frame, and the HMAC handshake still runs on top (TLS proves the CA vouches for the
//! peer; the secret proves it is this pair's peer).

use std::collections::HashMap;
use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use rand::RngCore;

pub use super::link_error::LinkError;
use super::link_stream::{establish, LinkReader, LinkWriter};
use super::queue::QueueSender;
use super::role_view::RoleView;
use super::storage::{read_orphans, Progress, ORPHANS_FILE};
use crate::core::link::{
    BackupHello, BackupSession, Next, NodeView, PrimarySession, ENTRIES_PER_FRAME,
};
use crate::core::{Input, LinkId};
use crate::log::LogReader;
use crate::wire::keyring::Keyring;
use crate::wire::replication::{encode, FrameReader, PeerFrame};

/// The handshake must complete within this, or the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Dial retry backoff bounds.
const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(50);
const DIAL_BACKOFF_MAX: Duration = Duration::from_millis(1_000);
/// Commands queued to one link's writer.
const LINK_COMMANDS_MAX: usize = 64;
/// Bytes read per `read` on the link.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Failed handshakes logged per window on the primary side (anyone who can reach the port
/// can fail one): a few lines, then a count on the next line let through.
const HANDSHAKE_FAILURE_LINES: u32 = 10;
const HANDSHAKE_FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// "This node is not the primary" refusals logged (at debug) per window. While the two
/// nodes pick a primary each dials the other every 50-1000 ms and is refused; that is the
/// pair working, so it is debug, and a few lines a window say it is still going on.
const NOT_PRIMARY_LINES: u32 = 3;
const NOT_PRIMARY_WINDOW: Duration = Duration::from_secs(10);
/// Why a link thread ends when the driver is gone (the process is stopping).
use crate::core::link::handshake::{self, Ends, LinkEnd, LogView, NOT_PRIMARY};
pub use crate::core::link::LinkCommand;

/// A new link's id, its command queue, its ack word and its wake-up, for its writer.
type Registered = (LinkId, Receiver<LinkCommand>, Arc<AtomicU64>, Receiver<()>);

struct LinkHandle {
    commands: Sender<LinkCommand>,
    stream: TcpStream,
    /// Backup side: latest durable seq to ack (the writer sends the newest value).
    ack: Arc<AtomicU64>,
    wake: Sender<()>,
}

/// What the link threads are given at start.
pub struct LinkSetup {
    pub node_id: String,
    pub peer_id: String,
    pub keys: Arc<Keyring>,
    pub reader: LogReader,
    pub progress: Arc<Progress>,
    /// Pokes from the log writer: `appended_seq` moved.
    pub appended_wake: Receiver<()>,
    pub inputs: QueueSender<Input>,
    /// The node's role and log as the driver last published them.
    pub role: Arc<RoleView>,
    pub stopping: Arc<AtomicBool>,
    pub window: u64,
    pub beat_interval: Duration,
    pub data_dir: std::path::PathBuf,
    pub base: Instant,
    /// `replication_round_trip` observes the primary's entries-to-ack times.
    pub latencies: Arc<super::histogram::Latencies>,
}

/// What every link thread shares with the driver.
pub struct LinkContext {
    pub setup: LinkSetup,
    /// Mutual TLS under the handshake; `None`: plain TCP. A reload may replace the
    /// certificates (never turn TLS on or off); each new connection takes what is here.
    tls: Mutex<Option<crate::node_tls::LinkTls>>,
    next_link: AtomicU64,
    links: Mutex<HashMap<LinkId, LinkHandle>>,
}

impl LinkContext {
    pub fn new(setup: LinkSetup, tls: Option<crate::node_tls::LinkTls>) -> Self {
        LinkContext {
            setup,
            tls: Mutex::new(tls),
            next_link: AtomicU64::new(1),
            links: Mutex::new(HashMap::new()),
        }
    }

    /// The TLS configs for a new connection.
    fn tls(&self) -> Option<crate::node_tls::LinkTls> {
        self.tls.lock().expect("link TLS lock").clone()
    }

    /// Replaces the certificates new connections use (a reload); links up keep theirs.
    /// Does nothing on a plain link: TLS is not turned on at run time.
    pub fn replace_tls(&self, tls: crate::node_tls::LinkTls) {
        let mut slot = self.tls.lock().expect("link TLS lock");
        if slot.is_some() {
            *slot = Some(tls);
        }
    }

    /// What the link runs over, for log lines.
    fn transport(&self) -> &'static str {
        if self.tls().is_some() {
            "mutual TLS"
        } else {
            "plain TCP"
        }
    }

    fn register(&self, stream: &TcpStream) -> std::io::Result<Registered> {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = bounded(LINK_COMMANDS_MAX);
        let (wake_tx, wake_rx) = bounded(1);
        let ack = Arc::new(AtomicU64::new(0));
        let handle = LinkHandle {
            commands: tx,
            stream: stream.try_clone()?,
            ack: ack.clone(),
            wake: wake_tx,
        };
        self.links.lock().expect("links lock").insert(id, handle);
        Ok((id, rx, ack, wake_rx))
    }

    fn unregister(&self, id: LinkId) {
        if let Some(handle) = self.links.lock().expect("links lock").remove(&id) {
            let _ = handle.stream.shutdown(Shutdown::Both);
        }
    }

    /// Routes a core command to a link's writer; a link that is gone is ignored.
    pub fn command(&self, id: LinkId, command: LinkCommand) {
        let links = self.links.lock().expect("links lock");
        if let Some(handle) = links.get(&id) {
            if handle.commands.try_send(command).is_err() {
                // A writer that cannot keep up with rare commands is stuck: drop the link.
                let _ = handle.stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Backup side: the newest durable seq for the primary.
    pub fn ack(&self, id: LinkId, durable_seq: u64) {
        let links = self.links.lock().expect("links lock");
        if let Some(handle) = links.get(&id) {
            handle.ack.fetch_max(durable_seq, Ordering::AcqRel);
            let _ = handle.wake.try_send(());
        }
    }

    /// Wakes a link's writer (its window moved).
    fn poke(&self, id: LinkId) {
        let links = self.links.lock().expect("links lock");
        if let Some(handle) = links.get(&id) {
            let _ = handle.wake.try_send(());
        }
    }

    pub fn close(&self, id: LinkId, reason: &str) {
        let links = self.links.lock().expect("links lock");
        if let Some(handle) = links.get(&id) {
            log::info!("replication link {id}: closing: {reason}");
            let _ = handle.stream.shutdown(Shutdown::Both);
        }
    }

    /// Closes the link with a reset: no linger, so the last close of the socket drops what
    /// is queued instead of waiting behind it, and the peer learns at once.
    pub fn abort(&self, id: LinkId, reason: &str) {
        let links = self.links.lock().expect("links lock");
        if let Some(handle) = links.get(&id) {
            log::warn!("replication link {id}: aborting: {reason}");
            let _ = socket2::SockRef::from(&handle.stream).set_linger(Some(Duration::ZERO));
            let _ = handle.stream.shutdown(Shutdown::Both);
        }
    }

    pub fn close_all(&self) {
        for handle in self.links.lock().expect("links lock").values() {
            let _ = handle.stream.shutdown(Shutdown::Both);
        }
    }
}

fn nonce() -> [u8; 16] {
    let mut n = [0; 16];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

/// Blocking frame reads over one stream.
struct Conn {
    stream: LinkReader,
    reader: FrameReader,
    buf: Vec<u8>,
}

impl Conn {
    fn new(stream: LinkReader) -> Self {
        Conn {
            stream,
            reader: FrameReader::new(),
            buf: vec![0; READ_CHUNK_BYTES],
        }
    }

    fn recv(&mut self) -> Result<PeerFrame, LinkError> {
        loop {
            if let Some(frame) = self.reader.next_frame()? {
                return Ok(frame);
            }
            let n = self
                .stream
                .read(&mut self.buf)
                .map_err(LinkError::io("read"))?;
            if n == 0 {
                return Err(LinkError::Closed);
            }
            self.reader.push(&self.buf[..n]);
        }
    }
}

fn send(stream: &mut LinkWriter, frame: &PeerFrame) -> Result<(), LinkError> {
    let mut bytes = Vec::new();
    encode(frame, &mut bytes);
    stream.write_all(&bytes).map_err(LinkError::io("write"))
}

// ---------------------------------------------------------------------------------------
// Primary side

/// Accepts backups on `listener` for as long as the process runs.
pub fn run_listener(ctx: Arc<LinkContext>, listener: TcpListener) {
    use crate::daemon::logging::{suppressed_note, Throttle};
    let failures = Arc::new(Mutex::new(Throttle::new(
        HANDSHAKE_FAILURE_LINES,
        HANDSHAKE_FAILURE_WINDOW,
    )));
    let not_primary = Arc::new(Mutex::new(Throttle::new(
        NOT_PRIMARY_LINES,
        NOT_PRIMARY_WINDOW,
    )));
    for stream in listener.incoming() {
        if ctx.setup.stopping.load(Ordering::Acquire) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let ctx = ctx.clone();
        let failures = failures.clone();
        let not_primary = not_primary.clone();
        let spawned = std::thread::Builder::new()
            .name("repl-primary".into())
            .spawn(move || {
                let peer = stream
                    .peer_addr()
                    .map_or_else(|_| "an unknown address".to_string(), |a| a.to_string());
                let Err(end) = serve_backup(&ctx, stream) else {
                    return;
                };
                let refused = matches!(end, LinkError::End(LinkEnd::NotPrimary));
                let throttle = if refused { &not_primary } else { &failures };
                let allowed = throttle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .allow(Instant::now());
                let Some(suppressed) = allowed else { return };
                let note = suppressed_note(suppressed);
                if refused {
                    log::debug!("replication link from {peer}: refused, {NOT_PRIMARY} (yet){note}");
                } else {
                    log::info!("replication link from {peer}: {end}{note}");
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a replication link thread: {e}");
        }
    }
}

fn serve_backup(ctx: &Arc<LinkContext>, stream: TcpStream) -> Result<(), LinkError> {
    stream
        .set_nodelay(true)
        .map_err(LinkError::io("set_nodelay"))?;
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(LinkError::io("set_read_timeout"))?;
    let tls = match &ctx.tls() {
        Some(tls) => Some(
            rustls::ServerConnection::new(tls.server.clone())
                .map_err(|e| LinkError::Tls(e.to_string()))?
                .into(),
        ),
        None => None,
    };
    let (reader, mut writer) = establish(stream, tls)?;
    let mut conn = Conn::new(reader);
    let hello = conn.recv()?;
    let view = (&ctx.log_view(), ctx.setup.role.primary());
    let welcome = match handshake::welcome(&ctx.ends(), &hello, view, nonce()) {
        Ok(welcome) => welcome,
        Err(refusal) => {
            if let Some(answer) = refusal.answer() {
                let _ = send(&mut writer, &answer);
            }
            return Err(refusal.end.into());
        }
    };
    send(&mut writer, &welcome)?;
    let auth = conn.recv()?;
    let backup = handshake::authenticated(&ctx.ends(), &hello, &welcome, &auth)?;
    conn.stream
        .set_read_timeout(None)
        .map_err(LinkError::io("set_read_timeout"))?;
    let (link, commands, _ack, wake) = ctx
        .register(writer.socket())
        .map_err(LinkError::io("register"))?;
    log::info!(
        "replication link {link}: backup {} connected (epoch {}, last seq {}) over {}",
        ctx.setup.peer_id,
        backup.epoch,
        backup.last_seq,
        ctx.transport()
    );
    let result = primary_session(ctx, link, conn, writer, commands, wake, backup);
    ctx.unregister(link);
    let _ = ctx.setup.inputs.send(Input::LinkDown { link });
    result
}

/// Drives a [`PrimarySession`]: this thread writes (entries read from the log within the
/// window, beats, the core's commands); once the core accepted the backup, a reader thread
/// feeds the backup's frames to the same session.
fn primary_session(
    ctx: &Arc<LinkContext>,
    link: LinkId,
    conn: Conn,
    mut writer: LinkWriter,
    commands: Receiver<LinkCommand>,
    wake: Receiver<()>,
    hello: BackupHello,
) -> Result<(), LinkError> {
    let (session, input) = PrimarySession::start(
        link,
        hello,
        ctx.setup.window,
        ctx.setup.beat_interval,
        ctx.now(),
    );
    ctx.setup
        .inputs
        .send(input)
        .map_err(|_| LinkError::CoreGone)?;
    let session = Arc::new(Mutex::new(session));
    let done = Arc::new(AtomicBool::new(false));
    let mut conn = Some(conn);
    let mut reader = None;
    let result = loop {
        if done.load(Ordering::Acquire) || ctx.setup.stopping.load(Ordering::Acquire) {
            break Ok(());
        }
        // The backup's frames are read once the core accepted it, as the core expects.
        if let Some(conn) = conn.take_if(|_| lock(&session).accepted()) {
            match spawn_primary_reader(ctx, link, conn, &session, &done) {
                Ok(handle) => reader = Some(handle),
                Err(e) => break Err(e),
            }
        }
        match primary_turn(ctx, &session, &mut writer, &commands, &wake) {
            Ok(ControlFlow::Continue(())) => {}
            Ok(ControlFlow::Break(())) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let _ = writer.shutdown(Shutdown::Both);
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    result
}

fn spawn_primary_reader(
    ctx: &Arc<LinkContext>,
    link: LinkId,
    mut conn: Conn,
    session: &Arc<Mutex<PrimarySession>>,
    done: &Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<(), LinkError>>, LinkError> {
    let (ctx, session, done) = (ctx.clone(), session.clone(), done.clone());
    std::thread::Builder::new()
        .name("repl-primary-rx".into())
        .spawn(move || {
            let result = primary_reader(&ctx, link, &mut conn, &session);
            done.store(true, Ordering::Release);
            ctx.close(link, "reader ended");
            result
        })
        .map_err(LinkError::io("spawn a thread"))
}

/// One move of the primary's writer: what the session asks, carried out.
fn primary_turn(
    ctx: &LinkContext,
    session: &Mutex<PrimarySession>,
    writer: &mut LinkWriter,
    commands: &Receiver<LinkCommand>,
    wake: &Receiver<()>,
) -> Result<ControlFlow<()>, LinkError> {
    let appended = ctx.setup.progress.appended_seq.load(Ordering::Acquire);
    let next = lock(session).next(ctx.now(), appended, ctx.view());
    match next {
        Next::Send(frame) => send(writer, &frame)?,
        Next::ReadLog { from, upto } => {
            let entries = ctx
                .setup
                .reader
                .range(from, upto, ENTRIES_PER_FRAME)
                .map_err(|source| LinkError::Log { from, source })?;
            let frame = lock(session).on_read(entries, ctx.view(), ctx.now())?;
            send(writer, &frame)?;
        }
        Next::WaitUntil(at) => {
            select! {
                recv(commands) -> command => {
                    let Ok(command) = command else { return Ok(ControlFlow::Break(())) };
                    for frame in lock(session).on_command(command, ctx.now()) {
                        send(writer, &frame)?;
                    }
                }
                recv(ctx.setup.appended_wake) -> _ => {}
                recv(wake) -> _ => {}
                default(ctx.until(at)) => {}
            }
        }
        Next::End(reason) => return Err(LinkError::Session(reason)),
        Next::ReadOrphans => unreachable!("a primary session reads no orphans"),
    }
    Ok(ControlFlow::Continue(()))
}

fn primary_reader(
    ctx: &LinkContext,
    link: LinkId,
    conn: &mut Conn,
    session: &Mutex<PrimarySession>,
) -> Result<(), LinkError> {
    loop {
        let frame = conn.recv()?;
        let received = lock(session).on_frame(frame, ctx.now())?;
        if let Some(round_trip) = received.round_trip {
            ctx.setup
                .latencies
                .replication_round_trip
                .observe(round_trip);
        }
        if received.wake_writer {
            // A writer stopped at the window's edge goes on at once, not at the next beat.
            ctx.poke(link);
        }
        if let Some(input) = received.input {
            ctx.setup
                .inputs
                .send(input)
                .map_err(|_| LinkError::CoreGone)?;
        }
    }
}

impl LinkContext {
    /// Now, on the monotonic base the sessions and the core share.
    fn now(&self) -> Duration {
        self.setup.base.elapsed()
    }

    /// How long until `at`: at least a millisecond, so a due turn never spins.
    fn until(&self, at: Duration) -> Duration {
        at.saturating_sub(self.now()).max(Duration::from_millis(1))
    }

    fn ends(&self) -> Ends<'_> {
        Ends {
            node_id: &self.setup.node_id,
            peer_id: &self.setup.peer_id,
            keys: &self.setup.keys,
        }
    }

    /// The node as the handshake shows it: the driver's published view.
    fn log_view(&self) -> LogView {
        self.setup.role.log_view()
    }

    fn view(&self) -> NodeView {
        let (epoch, head) = self.setup.role.epoch_and_head();
        NodeView { epoch, head }
    }
}

fn lock<T>(session: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    session.lock().expect("link session lock")
}

// ---------------------------------------------------------------------------------------
// Backup side

/// Dials the primary while this node is backup, for as long as the process runs.
pub fn run_dialer(ctx: Arc<LinkContext>, peer: SocketAddr) {
    let mut backoff = DIAL_BACKOFF_MIN;
    let mut last_error = String::new();
    loop {
        if ctx.setup.stopping.load(Ordering::Acquire) {
            return;
        }
        if ctx.setup.role.primary() || ctx.setup.role.log_stuck() {
            // Wait for a role change (or check again now and then).
            ctx.setup.role.wait_changed(Duration::from_millis(500));
            continue;
        }
        match follow(&ctx, peer) {
            Ok(()) => backoff = DIAL_BACKOFF_MIN,
            Err(end) => {
                let e = end.to_string();
                if e != last_error {
                    if matches!(end, LinkError::End(LinkEnd::NotPrimary)) {
                        log::debug!(
                            "replication link to {peer}: refused, the peer is not primary (yet)"
                        );
                    } else {
                        log::info!("replication link to {peer}: {e}");
                    }
                    last_error = e;
                }
                ctx.setup.role.wait_changed(backoff);
                backoff = (backoff * 2).min(DIAL_BACKOFF_MAX);
            }
        }
    }
}

fn follow(ctx: &Arc<LinkContext>, peer: SocketAddr) -> Result<(), LinkError> {
    let stream =
        TcpStream::connect_timeout(&peer, HANDSHAKE_TIMEOUT).map_err(LinkError::io("connect"))?;
    stream
        .set_nodelay(true)
        .map_err(LinkError::io("set_nodelay"))?;
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(LinkError::io("set_read_timeout"))?;
    let tls = match &ctx.tls() {
        Some(tls) => Some(
            rustls::ClientConnection::new(tls.client.clone(), tls.peer_name.clone())
                .map_err(|e| LinkError::Tls(e.to_string()))?
                .into(),
        ),
        None => None,
    };
    let (reader, mut writer) = establish(stream, tls)?;
    let mut conn = Conn::new(reader);
    let hello = handshake::hello(&ctx.ends(), &ctx.log_view(), nonce());
    send(&mut writer, &hello)?;
    let answer = conn.recv()?;
    let welcomed = handshake::auth(&ctx.ends(), &hello, &answer)?;
    send(&mut writer, &welcomed.auth)?;
    let (epoch, spans) = (welcomed.epoch, welcomed.spans);
    conn.stream
        .set_read_timeout(None)
        .map_err(LinkError::io("set_read_timeout"))?;
    let (link, commands, ack, wake) = ctx
        .register(writer.socket())
        .map_err(LinkError::io("register"))?;
    log::info!(
        "replication link {link}: following the primary {} in epoch {epoch} over {}",
        ctx.setup.peer_id,
        ctx.transport()
    );
    let result = backup_session(ctx, link, conn, writer, commands, ack, wake, (epoch, spans));
    ctx.unregister(link);
    let _ = ctx.setup.inputs.send(Input::LinkDown { link });
    result
}

/// Drives a [`BackupSession`]: this thread writes (acks, orphans, beats, the core's
/// commands); a reader thread feeds the primary's frames to the same session.
#[allow(clippy::too_many_arguments)]
fn backup_session(
    ctx: &Arc<LinkContext>,
    link: LinkId,
    mut conn: Conn,
    mut writer: LinkWriter,
    commands: Receiver<LinkCommand>,
    ack: Arc<AtomicU64>,
    wake: Receiver<()>,
    (epoch, spans): (u64, Vec<(u64, u64)>),
) -> Result<(), LinkError> {
    let (session, input) =
        BackupSession::start(link, epoch, spans, ctx.setup.beat_interval, ctx.now());
    ctx.setup
        .inputs
        .send(input)
        .map_err(|_| LinkError::CoreGone)?;
    let session = Arc::new(Mutex::new(session));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (ctx, session, done) = (ctx.clone(), session.clone(), done.clone());
        std::thread::Builder::new()
            .name("repl-backup-rx".into())
            .spawn(move || {
                let result = backup_reader(&ctx, &mut conn, &session);
                done.store(true, Ordering::Release);
                ctx.close(link, "reader ended");
                result
            })
            .map_err(LinkError::io("spawn a thread"))?
    };
    let result = loop {
        if done.load(Ordering::Acquire) || ctx.setup.stopping.load(Ordering::Acquire) {
            break Ok(());
        }
        match backup_turn(ctx, &session, &mut writer, &commands, &ack, &wake) {
            Ok(ControlFlow::Continue(())) => {}
            Ok(ControlFlow::Break(())) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let _ = writer.shutdown(Shutdown::Both);
    let _ = reader.join();
    result
}

/// One move of the backup's writer: what the session asks, carried out.
fn backup_turn(
    ctx: &LinkContext,
    session: &Mutex<BackupSession>,
    writer: &mut LinkWriter,
    commands: &Receiver<LinkCommand>,
    ack: &AtomicU64,
    wake: &Receiver<()>,
) -> Result<ControlFlow<()>, LinkError> {
    let durable_seq = ack.load(Ordering::Acquire);
    let next = lock(session).next(ctx.now(), durable_seq, ctx.view());
    match next {
        Next::Send(frame) => send(writer, &frame)?,
        Next::ReadOrphans => resubmit_orphans(ctx, session, writer)?,
        Next::WaitUntil(at) => {
            select! {
                recv(commands) -> command => {
                    let Ok(command) = command else { return Ok(ControlFlow::Break(())) };
                    if let Some(frame) = lock(session).on_command(command, ctx.now()) {
                        send(writer, &frame)?;
                    }
                }
                recv(wake) -> _ => {}
                default(ctx.until(at)) => {}
            }
        }
        Next::End(reason) => return Err(LinkError::Session(reason)),
        Next::ReadLog { .. } => unreachable!("a backup session reads no log"),
    }
    Ok(ControlFlow::Continue(()))
}

/// Sends the orphans side file's batches, as the session asked.
fn resubmit_orphans(
    ctx: &LinkContext,
    session: &Mutex<BackupSession>,
    writer: &mut LinkWriter,
) -> Result<(), LinkError> {
    let batches = read_orphans(&ctx.setup.data_dir).map_err(LinkError::Orphans)?;
    let count: usize = batches.iter().map(Vec::len).sum();
    for frame in lock(session).on_orphans(batches, ctx.now()) {
        send(writer, &frame)?;
    }
    if count > 0 {
        log::info!("re-committing {count} messages kept aside through the primary");
    }
    Ok(())
}

fn backup_reader(
    ctx: &LinkContext,
    conn: &mut Conn,
    session: &Mutex<BackupSession>,
) -> Result<(), LinkError> {
    loop {
        let frame = conn.recv()?;
        let received = lock(session).on_frame(frame, ctx.now())?;
        if received.orphans_done {
            let path = ctx.setup.data_dir.join(ORPHANS_FILE);
            match std::fs::remove_file(&path) {
                Ok(()) => log::info!(
                    "every message kept aside is re-committed; removed {}",
                    path.display()
                ),
                Err(e) => log::warn!("{}: cannot remove: {e}", path.display()),
            }
        }
        if let Some(input) = received.input {
            ctx.setup
                .inputs
                .send(input)
                .map_err(|_| LinkError::CoreGone)?;
        }
    }
}
