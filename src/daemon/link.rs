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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use rand::RngCore;

use super::link_stream::{establish, LinkReader, LinkWriter};
use super::storage::{read_orphans, Progress, ORPHANS_FILE};
use crate::core::{Input, LinkId};
use crate::entry::Entry;
use crate::log::LogReader;
use crate::wire::keyring::Keyring;
use crate::wire::replication::{
    encode, handshake_transcript, FrameReader, PeerFrame, Transcript, REPLICATION_VERSION,
};

/// The handshake must complete within this, or the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Log entries per `Entries` frame, at most.
const ENTRIES_PER_FRAME: usize = 512;
/// Bytes of entry payload per `Entries` frame, at most (well under the codec's frame bound).
const ENTRY_BYTES_PER_FRAME: usize = 512 * 1024;
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
/// What a node that is not primary answers a dialing backup.
const NOT_PRIMARY: &str = "this node is not the primary";

/// Why one link attempt or session ended.
#[derive(Debug)]
enum LinkEnd {
    /// The other end (or this node, for an incoming link) is not primary: the normal answer
    /// while the pair picks a primary, logged at debug.
    NotPrimary,
    /// Anything else, in words, logged at info.
    Failed(String),
}

impl From<String> for LinkEnd {
    fn from(text: String) -> Self {
        LinkEnd::Failed(text)
    }
}

impl std::fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkEnd::NotPrimary => f.write_str(NOT_PRIMARY),
            LinkEnd::Failed(text) => f.write_str(text),
        }
    }
}

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

/// What every link thread shares with the driver.
pub struct LinkContext {
    pub node_id: String,
    pub peer_id: String,
    pub keys: Arc<Keyring>,
    pub reader: LogReader,
    pub progress: Arc<Progress>,
    /// Pokes from the log writer: `appended_seq` moved.
    pub appended_wake: Receiver<()>,
    pub inputs: Sender<Input>,
    pub snapshot: Arc<Mutex<Snapshot>>,
    pub primary: Arc<AtomicBool>,
    pub stopping: Arc<AtomicBool>,
    pub window: u64,
    pub beat_interval: Duration,
    pub data_dir: std::path::PathBuf,
    pub base: Instant,
    /// `replication_round_trip` observes the primary's entries-to-ack times.
    pub latencies: Arc<super::histogram::Latencies>,
    /// Mutual TLS under the handshake; `None`: plain TCP. A reload may replace the
    /// certificates (never turn TLS on or off); each new connection takes what is here.
    tls: Mutex<Option<crate::node_tls::LinkTls>>,
    next_link: AtomicU64,
    links: Mutex<HashMap<LinkId, LinkHandle>>,
}

/// The node's view for handshakes, refreshed by the driver after each turn that changed it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub epoch: u64,
    pub seen_epoch: u64,
    pub spans: Vec<(u64, u64)>,
    pub head: u64,
    pub last_seq: u64,
    pub first_seq: u64,
    /// The core's `log_stuck`: do not follow a primary meanwhile.
    pub log_stuck: bool,
}

impl LinkContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: String,
        peer_id: String,
        keys: Arc<Keyring>,
        reader: LogReader,
        progress: Arc<Progress>,
        appended_wake: Receiver<()>,
        inputs: Sender<Input>,
        snapshot: Arc<Mutex<Snapshot>>,
        primary: Arc<AtomicBool>,
        stopping: Arc<AtomicBool>,
        window: u64,
        beat_interval: Duration,
        data_dir: std::path::PathBuf,
        base: Instant,
        tls: Option<crate::node_tls::LinkTls>,
        latencies: Arc<super::histogram::Latencies>,
    ) -> Self {
        LinkContext {
            node_id,
            peer_id,
            keys,
            reader,
            progress,
            appended_wake,
            inputs,
            snapshot,
            primary,
            stopping,
            window,
            beat_interval,
            data_dir,
            base,
            latencies,
            tls: Mutex::new(tls),
            next_link: AtomicU64::new(1),
            links: Mutex::new(HashMap::new()),
        }
    }

    fn mono_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn mono_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
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

    fn recv(&mut self) -> Result<PeerFrame, String> {
        loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => return Err(format!("bad frame: {e}")),
            }
            let n = self.stream.read(&mut self.buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed by the peer".into());
            }
            self.reader.push(&self.buf[..n]);
        }
    }
}

fn send(stream: &mut LinkWriter, frame: &PeerFrame) -> Result<(), String> {
    let mut bytes = Vec::new();
    encode(frame, &mut bytes);
    stream.write_all(&bytes).map_err(|e| e.to_string())
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
        if ctx.stopping.load(Ordering::Acquire) {
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
                let throttle = match end {
                    LinkEnd::NotPrimary => &not_primary,
                    LinkEnd::Failed(_) => &failures,
                };
                let allowed = throttle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .allow(Instant::now());
                let Some(suppressed) = allowed else { return };
                let note = suppressed_note(suppressed);
                match end {
                    LinkEnd::NotPrimary => log::debug!(
                        "replication link from {peer}: refused, {NOT_PRIMARY} (yet){note}"
                    ),
                    LinkEnd::Failed(e) => log::info!("replication link from {peer}: {e}{note}"),
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a replication link thread: {e}");
        }
    }
}

fn serve_backup(ctx: &Arc<LinkContext>, stream: TcpStream) -> Result<(), LinkEnd> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let tls = match &ctx.tls() {
        Some(tls) => Some(
            rustls::ServerConnection::new(tls.server.clone())
                .map_err(|e| format!("TLS: {e}"))?
                .into(),
        ),
        None => None,
    };
    let (reader, mut writer) = establish(stream, tls)?;
    let mut conn = Conn::new(reader);
    let hello = conn.recv()?;
    let PeerFrame::Hello {
        version,
        ref node_id,
        epoch,
        last_seq,
        ref epochs,
        nonce: backup_nonce,
        ..
    } = hello
    else {
        return Err(format!("expected hello, got {}", hello.name()).into());
    };
    if version != REPLICATION_VERSION {
        let reason = format!("replication version {version} is not {REPLICATION_VERSION}");
        let _ = send(
            &mut writer,
            &PeerFrame::Refuse {
                reason: reason.clone(),
            },
        );
        return Err(reason.into());
    }
    if *node_id != ctx.peer_id {
        let reason = format!(
            "node {node_id:?} is not this node's peer ({:?})",
            ctx.peer_id
        );
        let _ = send(
            &mut writer,
            &PeerFrame::Refuse {
                reason: reason.clone(),
            },
        );
        return Err(reason.into());
    }
    if !ctx.primary.load(Ordering::Acquire) {
        let _ = send(
            &mut writer,
            &PeerFrame::Refuse {
                reason: NOT_PRIMARY.into(),
            },
        );
        return Err(LinkEnd::NotPrimary);
    }
    let _ = backup_nonce;
    let snapshot = ctx.snapshot.lock().expect("snapshot lock").clone();
    // The MACs cover both frames whole (nonces, ids, epochs, heads), so nothing in the
    // handshake can be altered, replayed on another connection or reflected.
    let mut welcome = PeerFrame::Welcome {
        node_id: ctx.node_id.clone(),
        epoch: snapshot.epoch,
        epochs: snapshot.spans.clone(),
        head: snapshot.head,
        nonce: nonce(),
        key_id: ctx.keys.signing_key_id(),
        mac: [0; 32],
    };
    let (_, signed) = ctx
        .keys
        .sign(&handshake_transcript(Transcript::Welcome, &hello, &welcome));
    if let PeerFrame::Welcome { mac, .. } = &mut welcome {
        *mac = signed;
    }
    send(&mut writer, &welcome)?;
    match conn.recv()? {
        PeerFrame::Auth { key_id, mac } => {
            let t = handshake_transcript(Transcript::Auth, &hello, &welcome);
            if !ctx.keys.verify(key_id, &t, &mac) {
                return Err(
                    "handshake: the backup's MAC does not verify (wrong secret?)"
                        .to_string()
                        .into(),
                );
            }
        }
        other => {
            return Err(format!("handshake: expected auth, got {}", other.name()).into());
        }
    }
    conn.stream
        .set_read_timeout(None)
        .map_err(|e| e.to_string())?;
    let (link, commands, _ack, wake) = ctx.register(writer.socket()).map_err(|e| e.to_string())?;
    log::info!(
        "replication link {link}: backup {node_id} connected (epoch {epoch}, last seq {last_seq}) over {}",
        ctx.transport()
    );
    let result = primary_session(
        ctx,
        link,
        conn,
        writer,
        commands,
        wake,
        epoch,
        last_seq,
        epochs.clone(),
    );
    ctx.unregister(link);
    let _ = ctx.inputs.send(Input::LinkDown { link });
    Ok(result?)
}

#[allow(clippy::too_many_arguments)]
fn primary_session(
    ctx: &Arc<LinkContext>,
    link: LinkId,
    mut conn: Conn,
    mut writer: LinkWriter,
    commands: Receiver<LinkCommand>,
    wake: Receiver<()>,
    epoch: u64,
    last_seq: u64,
    spans: Vec<(u64, u64)>,
) -> Result<(), String> {
    ctx.inputs
        .send(Input::BackupHello {
            link,
            epoch,
            last_seq,
            spans,
            mono_ms: ctx.mono_ms(),
        })
        .map_err(|_| "core gone".to_string())?;
    // The core answers with Accept (or closes the link, which ends the recv below).
    let (truncate_after, restart_at) = loop {
        select! {
            recv(commands) -> command => match command {
                Ok(LinkCommand::Accept { truncate_after, restart_at }) => break (truncate_after, restart_at),
                Ok(_) => continue,
                Err(_) => return Err("link closed".into()),
            },
            default(HANDSHAKE_TIMEOUT) => return Err("the core did not accept the backup in time".into()),
        }
    };
    send(
        &mut writer,
        &PeerFrame::Truncate {
            after_seq: truncate_after,
        },
    )?;
    if let Some(first_seq) = restart_at {
        send(&mut writer, &PeerFrame::Restart { first_seq })?;
    }
    let acked = Arc::new(AtomicU64::new(truncate_after));
    let probe = Arc::new(RoundTripProbe::default());
    let done = Arc::new(AtomicBool::new(false));
    // The reader: acks, beats, hand-over answers, resubmissions.
    let reader = {
        let ctx = ctx.clone();
        let acked = acked.clone();
        let probe = probe.clone();
        let done = done.clone();
        std::thread::Builder::new()
            .name("repl-primary-rx".into())
            .spawn(move || {
                let result = primary_reader(&ctx, link, &mut conn, &acked, &probe);
                done.store(true, Ordering::Release);
                ctx.close(link, "reader ended");
                result
            })
            .map_err(|e| e.to_string())?
    };
    let mut next = restart_at.unwrap_or(truncate_after + 1);
    let mut last_sent = Instant::now();
    let result = loop {
        if done.load(Ordering::Acquire) || ctx.stopping.load(Ordering::Acquire) {
            break Ok(());
        }
        // Stream what the log has, within the window.
        let appended = ctx.progress.appended_seq.load(Ordering::Acquire);
        let window_end = acked.load(Ordering::Acquire) + ctx.window;
        let upto = appended.min(window_end);
        if next <= upto {
            let entries = match ctx.reader.range(next, upto, ENTRIES_PER_FRAME) {
                Ok(entries) => entries,
                Err(e) => break Err(format!("reading the log at {next}: {e}")),
            };
            let mut batch: Vec<Entry> = Vec::new();
            let mut bytes = 0;
            for entry in entries {
                if entry.seq != next {
                    break;
                }
                bytes += entry.body.len() + entry.room.len() + entry.session.len() + 64;
                next += 1;
                batch.push(entry);
                if bytes >= ENTRY_BYTES_PER_FRAME {
                    break;
                }
            }
            if batch.is_empty() {
                break Err(format!("the log no longer holds seq {next}"));
            }
            let commit_seq = ctx.snapshot_head();
            let sent_ns = ctx.mono_ns();
            if let Err(e) = send(
                &mut writer,
                &PeerFrame::Entries {
                    commit_seq,
                    entries: batch,
                },
            ) {
                break Err(e);
            }
            probe.sent(next - 1, sent_ns);
            last_sent = Instant::now();
            continue;
        }
        let beat_due = ctx.beat_interval.saturating_sub(last_sent.elapsed());
        select! {
            recv(commands) -> command => {
                let frame = match command {
                    Ok(LinkCommand::Handover { epoch }) => PeerFrame::Handover { epoch },
                    Ok(LinkCommand::ResubmitDone { epoch, seq }) => PeerFrame::ResubmitDone { epoch, seq },
                    Ok(_) => continue,
                    Err(_) => break Ok(()),
                };
                if let Err(e) = send(&mut writer, &frame) {
                    break Err(e);
                }
                last_sent = Instant::now();
            }
            recv(ctx.appended_wake) -> _ => {}
            recv(wake) -> _ => {}
            default(beat_due.max(Duration::from_millis(1))) => {
                if let Err(e) = beat_if_due(ctx, &mut writer, &mut last_sent) {
                    break Err(e);
                }
            }
        }
    };
    let _ = writer.shutdown(Shutdown::Both);
    let _ = reader.join();
    result
}

/// Sends a `Beat` when nothing else went out for a beat interval: the peer counts any
/// frame as a sign of life, and a backup learns the idle primary's head from it.
fn beat_if_due(
    ctx: &LinkContext,
    writer: &mut LinkWriter,
    last_sent: &mut Instant,
) -> Result<(), String> {
    if last_sent.elapsed() < ctx.beat_interval {
        return Ok(());
    }
    let frame = PeerFrame::Beat {
        epoch: ctx.snapshot_epoch(),
        head: ctx.snapshot_head(),
    };
    send(writer, &frame)?;
    *last_sent = Instant::now();
    Ok(())
}

/// One replication round trip measured at a time (the writer arms it, the reader ends it):
/// two atomics and no per-frame bookkeeping, a sample per round trip, which is plenty for a
/// histogram.
#[derive(Default)]
struct RoundTripProbe {
    /// The last seq of the entries frame being timed; 0: none in flight.
    seq: AtomicU64,
    /// When that frame was sent, in ns on `LinkContext::base`.
    sent_ns: AtomicU64,
}

impl RoundTripProbe {
    /// Writer: an entries frame up to `seq` went out at `sent_ns`; timed unless one is.
    fn sent(&self, seq: u64, sent_ns: u64) {
        if self.seq.load(Ordering::Acquire) == 0 {
            self.sent_ns.store(sent_ns, Ordering::Relaxed);
            self.seq.store(seq, Ordering::Release);
        }
    }

    /// Reader: the backup acked up to `durable_seq`; when that covers the timed frame, its
    /// send time (and the probe is free again).
    fn acked(&self, durable_seq: u64) -> Option<u64> {
        let seq = self.seq.load(Ordering::Acquire);
        if seq == 0 || durable_seq < seq {
            return None;
        }
        let sent_ns = self.sent_ns.load(Ordering::Relaxed);
        self.seq.store(0, Ordering::Release);
        Some(sent_ns)
    }
}

fn primary_reader(
    ctx: &LinkContext,
    link: LinkId,
    conn: &mut Conn,
    acked: &AtomicU64,
    probe: &RoundTripProbe,
) -> Result<(), String> {
    loop {
        let frame = conn.recv()?;
        let mono_ms = ctx.mono_ms();
        let input = match frame {
            PeerFrame::Ack { durable_seq } => {
                acked.fetch_max(durable_seq, Ordering::AcqRel);
                if let Some(sent_ns) = probe.acked(durable_seq) {
                    ctx.latencies
                        .replication_round_trip
                        .observe(Duration::from_nanos(ctx.mono_ns().saturating_sub(sent_ns)));
                }
                // A writer stopped at the window's edge goes on at once, not at the next beat.
                ctx.poke(link);
                Input::BackupAck {
                    link,
                    durable_seq,
                    mono_ms,
                }
            }
            PeerFrame::Beat { .. } => Input::LinkAlive { mono_ms },
            PeerFrame::TookOver { epoch } => Input::TookOver { link, epoch },
            PeerFrame::Resubmit { entries } => Input::Resubmit { link, entries },
            PeerFrame::Refuse { reason } => return Err(format!("backup refused: {reason}")),
            other => return Err(format!("unexpected {} frame from the backup", other.name())),
        };
        ctx.inputs
            .send(input)
            .map_err(|_| "core gone".to_string())?;
    }
}

impl LinkContext {
    fn snapshot_head(&self) -> u64 {
        self.snapshot.lock().expect("snapshot lock").head
    }
    fn snapshot_epoch(&self) -> u64 {
        self.snapshot.lock().expect("snapshot lock").epoch
    }
}

// ---------------------------------------------------------------------------------------
// Backup side

/// Dials the primary while this node is backup, for as long as the process runs.
pub fn run_dialer(ctx: Arc<LinkContext>, peer: SocketAddr, role_changed: Receiver<()>) {
    let mut backoff = DIAL_BACKOFF_MIN;
    let mut last_error = String::new();
    loop {
        if ctx.stopping.load(Ordering::Acquire) {
            return;
        }
        let log_stuck = ctx.snapshot.lock().expect("snapshot lock").log_stuck;
        if ctx.primary.load(Ordering::Acquire) || log_stuck {
            // Wait for a role change (or check again now and then).
            let _ = role_changed.recv_timeout(Duration::from_millis(500));
            continue;
        }
        match follow(&ctx, peer) {
            Ok(()) => backoff = DIAL_BACKOFF_MIN,
            Err(end) => {
                let e = end.to_string();
                if e != last_error {
                    match end {
                        LinkEnd::NotPrimary => log::debug!(
                            "replication link to {peer}: refused, the peer is not primary (yet)"
                        ),
                        LinkEnd::Failed(_) => log::info!("replication link to {peer}: {e}"),
                    }
                    last_error = e;
                }
                let _ = role_changed.recv_timeout(backoff);
                backoff = (backoff * 2).min(DIAL_BACKOFF_MAX);
            }
        }
    }
}

fn follow(ctx: &Arc<LinkContext>, peer: SocketAddr) -> Result<(), LinkEnd> {
    let stream = TcpStream::connect_timeout(&peer, HANDSHAKE_TIMEOUT)
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let tls = match &ctx.tls() {
        Some(tls) => Some(
            rustls::ClientConnection::new(tls.client.clone(), tls.peer_name.clone())
                .map_err(|e| format!("TLS: {e}"))?
                .into(),
        ),
        None => None,
    };
    let (reader, mut writer) = establish(stream, tls)?;
    let mut conn = Conn::new(reader);
    let snapshot = ctx.snapshot.lock().expect("snapshot lock").clone();
    let hello = PeerFrame::Hello {
        version: REPLICATION_VERSION,
        node_id: ctx.node_id.clone(),
        epoch: snapshot.seen_epoch,
        last_seq: snapshot.last_seq,
        first_seq: snapshot.first_seq,
        epochs: snapshot.spans.clone(),
        nonce: nonce(),
        boot: 0,
    };
    send(&mut writer, &hello)?;
    let (epoch, spans) = match conn.recv()? {
        welcome @ PeerFrame::Welcome { .. } => {
            let PeerFrame::Welcome {
                node_id,
                epoch,
                epochs,
                key_id,
                mac,
                ..
            } = &welcome
            else {
                unreachable!("matched above")
            };
            if *node_id != ctx.peer_id {
                return Err(
                    format!("answered by {node_id:?}, not the peer {:?}", ctx.peer_id).into(),
                );
            }
            let t = handshake_transcript(Transcript::Welcome, &hello, &welcome);
            if !ctx.keys.verify(*key_id, &t, mac) {
                return Err(
                    "handshake: the primary's MAC does not verify (wrong secret?)"
                        .to_string()
                        .into(),
                );
            }
            let (key_id, mac) =
                ctx.keys
                    .sign(&handshake_transcript(Transcript::Auth, &hello, &welcome));
            send(&mut writer, &PeerFrame::Auth { key_id, mac })?;
            (*epoch, epochs.clone())
        }
        PeerFrame::Refuse { reason } if reason == NOT_PRIMARY => return Err(LinkEnd::NotPrimary),
        PeerFrame::Refuse { reason } => return Err(format!("refused: {reason}").into()),
        other => {
            return Err(format!("handshake: expected welcome, got {}", other.name()).into());
        }
    };
    conn.stream
        .set_read_timeout(None)
        .map_err(|e| e.to_string())?;
    let (link, commands, ack, wake) = ctx.register(writer.socket()).map_err(|e| e.to_string())?;
    log::info!(
        "replication link {link}: following the primary {} in epoch {epoch} over {}",
        ctx.peer_id,
        ctx.transport()
    );
    let result = backup_session(ctx, link, conn, writer, commands, ack, wake, epoch, spans);
    ctx.unregister(link);
    let _ = ctx.inputs.send(Input::LinkDown { link });
    Ok(result?)
}

#[allow(clippy::too_many_arguments)]
fn backup_session(
    ctx: &Arc<LinkContext>,
    link: LinkId,
    mut conn: Conn,
    mut writer: LinkWriter,
    commands: Receiver<LinkCommand>,
    ack: Arc<AtomicU64>,
    wake: Receiver<()>,
    epoch: u64,
    spans: Vec<(u64, u64)>,
) -> Result<(), String> {
    ctx.inputs
        .send(Input::PrimaryWelcome {
            link,
            epoch,
            mono_ms: ctx.mono_ms(),
        })
        .map_err(|_| "core gone".to_string())?;
    let commit_seq = Arc::new(AtomicU64::new(0));
    let commit_known = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (resubmitted_tx, resubmitted_rx) = bounded::<(u64, u64)>(16);
    let reader = {
        let ctx = ctx.clone();
        let commit_seq = commit_seq.clone();
        let commit_known = commit_known.clone();
        let done = done.clone();
        std::thread::Builder::new()
            .name("repl-backup-rx".into())
            .spawn(move || {
                let result = backup_reader(
                    &ctx,
                    link,
                    &mut conn,
                    spans,
                    (&commit_seq, &commit_known),
                    &resubmitted_tx,
                );
                done.store(true, Ordering::Release);
                ctx.close(link, "reader ended");
                result
            })
            .map_err(|e| e.to_string())?
    };
    let mut sent_ack = u64::MAX;
    let mut last_sent = Instant::now();
    // Orphans: the last entry's orig we wait to hear done, once sent.
    let mut orphans_waiting: Option<(u64, u64)> = None;
    // When the orphans file was last looked at: the log writer creates it when it carries
    // out the cut, which may come after our first ack, so it is looked at again (at most once
    // per beat interval) until something was sent.
    let mut orphans_checked_at: Option<Instant> = None;
    let result = loop {
        if done.load(Ordering::Acquire) || ctx.stopping.load(Ordering::Acquire) {
            break Ok(());
        }
        let durable = ack.load(Ordering::Acquire);
        if durable != sent_ack {
            if let Err(e) = send(
                &mut writer,
                &PeerFrame::Ack {
                    durable_seq: durable,
                },
            ) {
                break Err(e);
            }
            sent_ack = durable;
            last_sent = Instant::now();
            continue;
        }
        // Caught up with the primary's commits (known from its entries or beats): time to
        // re-commit what only we had. Checked every turn, so an idle pair gets there too.
        if orphans_waiting.is_none()
            && orphans_checked_at.is_none_or(|at| at.elapsed() >= ctx.beat_interval)
            && commit_known.load(Ordering::Acquire)
            && sent_ack != u64::MAX
            && sent_ack >= commit_seq.load(Ordering::Acquire)
        {
            orphans_checked_at = Some(Instant::now());
            match resubmit_orphans(ctx, &mut writer) {
                Ok(last) => orphans_waiting = last,
                Err(e) => break Err(e),
            }
        }
        let beat_due = ctx.beat_interval.saturating_sub(last_sent.elapsed());
        select! {
            recv(commands) -> command => {
                let frame = match command {
                    Ok(LinkCommand::TookOver { epoch }) => PeerFrame::TookOver { epoch },
                    Ok(_) => continue,
                    Err(_) => break Ok(()),
                };
                if let Err(e) = send(&mut writer, &frame) {
                    break Err(e);
                }
                last_sent = Instant::now();
            }
            recv(resubmitted_rx) -> done_orig => {
                if let (Ok(orig), Some(waiting)) = (done_orig, orphans_waiting) {
                    if orig == waiting {
                        let path = ctx.data_dir.join(ORPHANS_FILE);
                        match std::fs::remove_file(&path) {
                            Ok(()) => log::info!("every message kept aside is re-committed; removed {}", path.display()),
                            Err(e) => log::warn!("{}: cannot remove: {e}", path.display()),
                        }
                        orphans_waiting = None;
                    }
                }
            }
            recv(wake) -> _ => {}
            default(beat_due.max(Duration::from_millis(1))) => {
                if let Err(e) = beat_if_due(ctx, &mut writer, &mut last_sent) {
                    break Err(e);
                }
            }
        }
    };
    let _ = writer.shutdown(Shutdown::Both);
    let _ = reader.join();
    result
}

/// Sends the orphans side file's batches; returns the orig of the last entry sent.
fn resubmit_orphans(
    ctx: &LinkContext,
    writer: &mut LinkWriter,
) -> Result<Option<(u64, u64)>, String> {
    let batches = read_orphans(&ctx.data_dir).map_err(|e| format!("reading orphans: {e}"))?;
    let mut last = None;
    let mut count = 0;
    for entries in batches {
        if let Some(entry) = entries.last() {
            last = Some(entry.orig.unwrap_or((entry.epoch, entry.seq)));
        }
        count += entries.len();
        send(writer, &PeerFrame::Resubmit { entries })?;
    }
    if count > 0 {
        log::info!("re-committing {count} messages kept aside through the primary");
    }
    Ok(last)
}

fn backup_reader(
    ctx: &LinkContext,
    link: LinkId,
    conn: &mut Conn,
    spans: Vec<(u64, u64)>,
    (commit_seq, commit_known): (&AtomicU64, &AtomicBool),
    resubmitted: &Sender<(u64, u64)>,
) -> Result<(), String> {
    let mut spans = Some(spans);
    loop {
        let frame = conn.recv()?;
        let mono_ms = ctx.mono_ms();
        let input = match frame {
            PeerFrame::Truncate { after_seq } => Input::PrimaryTruncate {
                link,
                after_seq,
                spans: spans.take().unwrap_or_default(),
            },
            PeerFrame::Restart { first_seq } => Input::PrimaryRestart { link, first_seq },
            PeerFrame::Entries {
                commit_seq: commit,
                entries,
            } => {
                commit_seq.fetch_max(commit, Ordering::AcqRel);
                commit_known.store(true, Ordering::Release);
                Input::Replicate {
                    link,
                    commit_seq: commit,
                    entries,
                    mono_ms,
                }
            }
            PeerFrame::Beat { head, .. } => {
                commit_seq.fetch_max(head, Ordering::AcqRel);
                commit_known.store(true, Ordering::Release);
                // An idle primary's beat carries its committed head: the backup's view of
                // what is committed moves on without new entries.
                Input::Replicate {
                    link,
                    commit_seq: head,
                    entries: Vec::new(),
                    mono_ms,
                }
            }
            PeerFrame::Handover { epoch } => Input::HandoverAsked { link, epoch },
            PeerFrame::ResubmitDone { epoch, seq } => {
                let _ = resubmitted.try_send((epoch, seq));
                Input::LinkAlive { mono_ms }
            }
            PeerFrame::Refuse { reason } => return Err(format!("primary refused: {reason}")),
            other => {
                return Err(format!(
                    "unexpected {} frame from the primary",
                    other.name()
                ))
            }
        };
        ctx.inputs
            .send(input)
            .map_err(|_| "core gone".to_string())?;
    }
}
