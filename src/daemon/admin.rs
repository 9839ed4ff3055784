//! The admin socket: a Unix stream socket (mode 0600) that `pbchatctl` talks to, one
//! line-based request per connection: `status`, `role`, `pid`, `failover`, `reload`,
//! `log-level LEVEL`, `clients`, `rooms`, `kick NICK [REASON]`, each
//! optionally followed by `json` for one JSON object instead of text (or `text`).
//!
//! It owns the [`Status`] the driver publishes after its turns (swapped behind a mutex that
//! is never held across I/O) and how that status reads for people and for programs. It
//! decides nothing: `failover` and `reload` go to the driver through the same channel as
//! SIGUSR1 and SIGHUP, and the answer is read back from the next published status; `clients`,
//! `rooms` and `kick` go the same way with a reply channel, as the core is the driver's.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::{json, Value};

use super::error::DaemonError;
use super::heartbeat::HeartbeatStats;
use super::io::IoStats;
use super::logging::utc_seconds;
use super::signals::Signal;
use crate::core::RoleChange;

/// A request line longer than this is refused: it bounds what one request can make the
/// admin thread read (`kick NICK REASON` is the only long one; pbchatctl checks first).
pub const REQUEST_MAX_BYTES: u64 = 256;
/// A client that does not send its request (or read the answer) in this long is dropped;
/// requests are served one at a time, so this bounds how long one client delays another.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// `failover` waits this long for the role to move (the core's hand-over gives up after
/// `HANDOVER_TIMEOUT_MS`).
const FAILOVER_WAIT: Duration =
    Duration::from_millis(crate::core::peer::HANDOVER_TIMEOUT_MS + 1_000);
/// `reload` waits this long for the driver to have re-read the file.
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// What the node looks like as of the driver's latest publication.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub node: String,
    /// `primary` or `backup`.
    pub role: &'static str,
    pub epoch: u64,
    /// Highest committed seq.
    pub head: u64,
    /// Highest seq ordered (committed or pending).
    pub last_seq: u64,
    pub pending: usize,
    pub degraded: bool,
    pub clients: usize,
    pub rooms: usize,
    /// Wall-clock start of the process, in ms (when it started, as a date; how long ago is
    /// [`Ops::uptime_ms`]).
    pub started_ms: u64,
    /// Oldest retained seq, and the newest one written to the log.
    pub log_first_seq: u64,
    pub log_last_seq: u64,
    pub fsync: &'static str,
    pub peer: Option<PeerInfo>,
    pub last_change: Option<RoleChange>,
    pub commits_total: u64,
    /// Promotions of this node to primary since start (automatic or planned).
    pub failovers_total: u64,
    pub rate_limited_total: u64,
    /// HUP or `reload` requests handled, and what the latest one said (`ok: ...`/`error: ...`).
    pub reloads: u64,
    pub last_reload: String,
    /// The primary takes sends now (see `Node::serving`): `/role` answers 200.
    pub serving: bool,
    /// Why not, in a word (`backup`, `draining`, `fenced`...); `serving` when it does.
    pub serving_reason: &'static str,
    /// The log completed no write for the detection time while entries wait.
    pub log_stuck: bool,
    /// When the driver built this status; `/healthz` fails when it grows old (the core
    /// thread stopped turning). `None`: never published.
    pub built_at: Option<Instant>,
}

/// The pair as this node sees it.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    pub id: String,
    pub detection_ms: u64,
    pub replication_mode: &'static str,
    /// Monotonic ms (on [`Ops::base`]) of the last word from the peer; `None`: never heard.
    pub heard_mono_ms: Option<u64>,
    /// What its latest heartbeat said.
    pub primary: bool,
    pub epoch: u64,
    pub head: u64,
    /// A replication link to it is up.
    pub link: bool,
    /// Primary side with a backup linked: what the backup has acknowledged durably.
    pub acked: Option<u64>,
    /// `failover.mode = "strict"`: the witness as this node sees it; `None` in available mode.
    pub strict: Option<StrictInfo>,
}

/// Strict mode, for status: the witness and this node's lease.
#[derive(Clone, Debug, Default)]
pub struct StrictInfo {
    pub witness: String,
    /// Monotonic ms (on [`Ops::base`]) the witness lease runs to; `None`: no lease held.
    pub lease_until_mono_ms: Option<u64>,
    /// Monotonic ms of the latest answer from the witness; `None`: never answered.
    pub witness_heard_mono_ms: Option<u64>,
    /// A backup waiting for a grant of this epoch.
    pub bidding: Option<u64>,
    /// Claims, grants, refusals and refused sends since the start (metrics).
    pub counts: crate::core::strict::StrictCounts,
}

impl StrictInfo {
    pub fn lease_left_ms(&self, now_mono_ms: u64) -> u64 {
        self.lease_until_mono_ms
            .map_or(0, |until| until.saturating_sub(now_mono_ms))
    }

    fn text(&self, now_mono_ms: u64) -> String {
        let heard = match self.witness_heard_mono_ms {
            Some(at) => format!(
                "answered {} ago",
                elapsed_text(now_mono_ms.saturating_sub(at))
            ),
            None => "never answered".into(),
        };
        let lease = match self.lease_left_ms(now_mono_ms) {
            0 => "no lease".to_string(),
            left => format!("lease {left} ms left"),
        };
        let bid = self
            .bidding
            .map_or(String::new(), |e| format!(", asking for epoch {e}"));
        format!("strict, witness {} {heard}, {lease}{bid}", self.witness)
    }
}

/// Shared between the driver (which publishes), the admin thread and the metrics thread.
pub struct Ops {
    status: Mutex<Arc<Status>>,
    /// The core's monotonic clock starts here (heard times are relative to it).
    pub base: Instant,
    pub io: Arc<IoStats>,
    pub heartbeats: Option<Arc<HeartbeatStats>>,
    /// Latency histograms the driver, the log writer and the links observe.
    pub latencies: Arc<super::histogram::Latencies>,
}

impl Ops {
    pub fn new(base: Instant, io: Arc<IoStats>, heartbeats: Option<Arc<HeartbeatStats>>) -> Ops {
        Ops {
            status: Mutex::new(Arc::new(Status::default())),
            base,
            io,
            heartbeats,
            latencies: Arc::default(),
        }
    }

    /// The histograms the node's threads observe (the default is a fresh, unshared set).
    pub fn with_latencies(mut self, latencies: Arc<super::histogram::Latencies>) -> Ops {
        self.latencies = latencies;
        self
    }

    /// The latest published status (a reference-count bump under the lock).
    pub fn current(&self) -> Arc<Status> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn publish(&self, status: Status) {
        let status = Arc::new(status);
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    fn now_mono_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Since the start, on the same monotonic clock as the heard times, so that `uptime`
    /// and `last heard` always agree (a wall-clock step moves neither).
    pub fn uptime_ms(&self) -> u64 {
        self.now_mono_ms()
    }
}

impl PeerInfo {
    /// How long ago the peer was last heard, as of `now_mono_ms`.
    pub fn heard_ms_ago(&self, now_mono_ms: u64) -> Option<u64> {
        self.heard_mono_ms.map(|at| now_mono_ms.saturating_sub(at))
    }

    /// Heard within the detection time.
    pub fn reachable(&self, now_mono_ms: u64) -> bool {
        self.heard_ms_ago(now_mono_ms)
            .is_some_and(|ago| ago < self.detection_ms)
    }

    /// Entries the backup lacks (primary side, with a backup linked).
    pub fn lag(&self, last_seq: u64) -> Option<u64> {
        self.acked.map(|acked| last_seq.saturating_sub(acked))
    }
}

/// Binds the admin socket (mode 0600, a stale one removed) and serves it on a thread.
pub(super) fn spawn(
    path: &Path,
    ops: Arc<Ops>,
    signals: Sender<Signal>,
) -> Result<(), DaemonError> {
    let listener = bind(path)?;
    let path = path.to_path_buf();
    super::spawn("admin", move || serve(listener, &path, &ops, &signals))?;
    Ok(())
}

/// Binds under a temporary name, restricts it to the owner, then renames it into place, so
/// the socket is never reachable with looser permissions. The data-dir lock guarantees that
/// a socket already at `path` is a leftover of ours (a crash leaves it behind).
fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    let fail = |source| DaemonError::AdminSocket {
        path: path.to_path_buf(),
        source,
    };
    let occupied = |problem| DaemonError::AdminPath {
        path: path.to_path_buf(),
        problem,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(fail)?,
        Ok(_) => {
            return Err(occupied(
                "exists and is not a socket; remove it or set another path",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let name = path
        .file_name()
        .ok_or_else(|| occupied("not a file path"))?;
    let temporary: PathBuf = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary).map_err(fail)?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(fail(e));
    }
    Ok(listener)
}

/// Removes the socket file at a clean stop (a crash leaves it for the next start).
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

fn serve(listener: UnixListener, path: &Path, ops: &Ops, signals: &Sender<Signal>) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => handle(stream, ops, signals),
            Err(e) => {
                log::warn!("admin socket {}: accept: {e}", path.display());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle(stream: UnixStream, ops: &Ops, signals: &Sender<Signal>) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut line = String::new();
    let read = BufReader::new(&stream)
        .take(REQUEST_MAX_BYTES)
        .read_line(&mut line);
    let answer = match read {
        Err(e) => format!("error: reading the request: {e}\n"),
        Ok(_) => answer(line.trim(), ops, signals),
    };
    let _ = (&stream).write_all(answer.as_bytes());
}

/// The answer to one request: text ending in a newline; an error starts with `error: `.
pub(super) fn answer(request: &str, ops: &Ops, signals: &Sender<Signal>) -> String {
    if ops.current().node.is_empty() {
        return "error: the node is starting; retry in a moment\n".into();
    }
    let mut words: Vec<&str> = request.split_whitespace().collect();
    // `WORD json`: the same answer as one JSON object, for programs (errors stay text).
    // `WORD text` says text explicitly: pbchatctl ends `kick` with one or the other, so
    // that a reason whose last word is "json" stays part of the reason.
    let json = match words.as_slice() {
        [_, .., "json"] => true,
        [_, .., "text"] | [..] => false,
    };
    if matches!(words.as_slice(), [_, .., "json" | "text"]) {
        words.pop();
    }
    let text = match words.as_slice() {
        ["status"] if json => {
            let mut text = render_json(&ops.current(), ops).to_string();
            text.push('\n');
            return text;
        }
        ["status"] => render_text(&ops.current(), ops),
        // One word, for scripts: `[ "$(pbchatctl -c FILE role)" = primary ]`.
        ["role"] if json => return json_line(json!({ "role": ops.current().role })),
        ["role"] => format!("{}\n", ops.current().role),
        // For `kill`: the process that answers, whatever command line started it.
        ["pid"] if json => return json_line(json!({ "pid": std::process::id() })),
        ["pid"] => format!("{}\n", std::process::id()),
        ["failover"] => failover(ops, signals),
        ["reload"] => reload(ops, signals),
        ["log-level", level] => set_log_level(level),
        ["clients"] => clients(json, signals),
        ["rooms"] => rooms(json, signals),
        ["kick", nick, reason @ ..] => kick(nick, &reason.join(" "), signals),
        _ => format!(
            "error: unknown request {request:?}; the requests are: {REQUESTS}, each with `json` after it for one JSON object\n"
        ),
    };
    if json && !text.starts_with("error: ") && !text.starts_with('{') {
        // `ok: ...` answers: what happened, in the words a person reads.
        return json_line(json!({ "ok": true, "message": text.trim_end() }));
    }
    text
}

/// What `answer` takes, for its error on anything else.
const REQUESTS: &str =
    "status, role, pid, failover, reload, log-level LEVEL, clients, rooms, kick NICK [REASON]";

/// `clients` and `rooms` list at most this many rows, then say how many more there are: the
/// answer stays a few MB at most (rows are short), and a node with more clients than this
/// is better read through metrics than a terminal.
pub const LIST_ROWS_MAX: usize = 10_000;
/// How long `clients` and `rooms` wait for the driver, which answers between two turns.
const LIST_WAIT: Duration = Duration::from_secs(2);

/// Asks the driver for a list (built by `ask` around a reply channel) and waits for it.
fn list<T>(signals: &Sender<Signal>, ask: impl FnOnce(Sender<T>) -> Signal) -> Result<T, String> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    if signals.try_send(ask(reply)).is_err() {
        return Err("error: the node is busy with other signals; retry\n".into());
    }
    answer.recv_timeout(LIST_WAIT).map_err(|_| {
        format!(
            "error: the node did not answer within {} s; see its log\n",
            LIST_WAIT.as_secs()
        )
    })
}

fn clients(json: bool, signals: &Sender<Signal>) -> String {
    let (clients, more) = match list(signals, |reply| Signal::Clients {
        max: LIST_ROWS_MAX,
        reply,
    }) {
        Ok(list) => list,
        Err(error) => return error,
    };
    if json {
        let rows: Vec<Value> = clients
            .iter()
            .map(|c| {
                json!({
                    "nick": c.nick,
                    "address": c.addr.map(|a| a.to_string()),
                    "rooms": c.rooms,
                    "connected_at": utc_seconds(c.connected_ms),
                })
            })
            .collect();
        return json_line(json!({ "clients": rows, "more": more }));
    }
    let mut text = String::new();
    for c in &clients {
        text.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            c.nick.as_deref().unwrap_or("-"),
            c.addr.map_or("-".to_string(), |a| a.to_string()),
            if c.rooms.is_empty() {
                "-".to_string()
            } else {
                c.rooms.join(",")
            },
            utc_seconds(c.connected_ms),
        ));
    }
    if more > 0 {
        text.push_str(&format!(
            "... and {more} more (the list stops at {LIST_ROWS_MAX})\n"
        ));
    }
    text
}

/// The reason a kicked client reads when the operator gave none.
pub const KICK_REASON_DEFAULT: &str = "no reason given";

fn kick(nick: &str, reason: &str, signals: &Sender<Signal>) -> String {
    let reason = if reason.is_empty() {
        KICK_REASON_DEFAULT
    } else {
        reason
    };
    let found = list(signals, |reply| Signal::Kick {
        nick: nick.to_string(),
        reason: reason.to_string(),
        reply,
    });
    match found {
        Ok(true) => format!("ok: closed the connection of {nick} ({reason})\n"),
        Ok(false) => format!("error: kick {nick}: no connected client has that nick\n"),
        Err(error) => error,
    }
}

fn rooms(json: bool, signals: &Sender<Signal>) -> String {
    let (rooms, more) = match list(signals, |reply| Signal::Rooms {
        max: LIST_ROWS_MAX,
        reply,
    }) {
        Ok(list) => list,
        Err(error) => return error,
    };
    if json {
        let rows: Vec<Value> = rooms
            .iter()
            .map(|(name, members)| json!({ "name": name, "members": members }))
            .collect();
        return json_line(json!({ "rooms": rows, "more": more }));
    }
    let mut text = String::new();
    for (name, members) in &rooms {
        text.push_str(&format!("{name}\t{members}\n"));
    }
    if more > 0 {
        text.push_str(&format!(
            "... and {more} more (the list stops at {LIST_ROWS_MAX})\n"
        ));
    }
    text
}

/// The levels `log-level` takes: those of `logging.level`.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// `log-level LEVEL`: the running node's level, at once (the logger reads the global maximum
/// on every line). Not written anywhere: a reload sets `logging.level` again, and so does a
/// restart, so a forgotten `trace` does not outlive the next `systemctl reload`.
fn set_log_level(level: &str) -> String {
    let Some(new) = LOG_LEVELS
        .iter()
        .position(|name| *name == level)
        .and_then(|i| log::LevelFilter::iter().nth(i + 1))
    else {
        return format!(
            "error: log level {level:?}: not a level; the levels are: {}\n",
            LOG_LEVELS.join(", ")
        );
    };
    let old = log::max_level();
    log::set_max_level(new);
    let name = |filter: log::LevelFilter| filter.as_str().to_ascii_lowercase();
    let message = format!(
        "log level {} -> {} by pbchatctl, until the next reload or restart (logging.level is unchanged)",
        name(old),
        name(new)
    );
    // At WARN, so that it shows at the usual levels: the node logs differently from what
    // its file says.
    log::warn!("{message}");
    format!("ok: {message}\n")
}

fn json_line(value: Value) -> String {
    let mut text = value.to_string();
    text.push('\n');
    text
}

fn wait_for(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

fn failover(ops: &Ops, signals: &Sender<Signal>) -> String {
    let status = ops.current();
    let Some(peer) = &status.peer else {
        return "error: fail-over refused: this node has no peer\n".into();
    };
    if status.role != "primary" {
        let primary = if peer.primary {
            format!(" (the peer {} is primary)", peer.id)
        } else {
            String::new()
        };
        return format!(
            "error: fail-over refused: this node is {}; run it against the primary{primary}\n",
            status.role
        );
    }
    if status.degraded {
        return "error: fail-over refused: degraded, the backup has not caught up; retry once it has (status shows the lag)\n".into();
    }
    if peer.acked.is_none() {
        return format!(
            "error: fail-over refused: the backup {} is not connected\n",
            peer.id
        );
    }
    if signals
        .try_send(Signal::Drill {
            from: "pbchatctl failover".into(),
        })
        .is_err()
    {
        return "error: the node is busy with other signals; retry\n".into();
    }
    let moved = wait_for(FAILOVER_WAIT, || ops.current().role != "primary");
    if moved {
        format!(
            "ok: handed over to {}; this node ({}) is now backup\n",
            peer.id, status.node
        )
    } else {
        format!(
            "error: asked for a fail-over, but this node is still primary after {} ms; see its log for why\n",
            FAILOVER_WAIT.as_millis()
        )
    }
}

fn reload(ops: &Ops, signals: &Sender<Signal>) -> String {
    let before = ops.current().reloads;
    if signals
        .try_send(Signal::Reload {
            from: "pbchatctl reload".into(),
        })
        .is_err()
    {
        return "error: the node is busy with other signals; retry\n".into();
    }
    if wait_for(RELOAD_WAIT, || ops.current().reloads > before) {
        format!("{}\n", ops.current().last_reload)
    } else {
        format!(
            "error: asked for a reload, but the node did not answer within {} s; see its log\n",
            RELOAD_WAIT.as_secs()
        )
    }
}

fn duration_text(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d {}h", secs / 86_400, secs / 3600 % 24),
    }
}

/// A time span for people, as precise as it is useful: `81 ms`, `1.2 s`, `10m 47s`.
fn elapsed_text(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{}.{} s", ms / 1000, ms % 1000 / 100),
        _ => duration_text(ms),
    }
}

fn heard_text(peer: &PeerInfo, now_mono_ms: u64) -> String {
    match peer.heard_ms_ago(now_mono_ms) {
        None => "never heard".into(),
        Some(ago) if ago < peer.detection_ms => format!("heard {} ago", elapsed_text(ago)),
        Some(ago) => format!("UNREACHABLE, last heard {} ago", elapsed_text(ago)),
    }
}

/// Aligned `key: value` lines for people: which node is primary, how far behind the backup
/// is, when the role last moved and why.
pub fn render_text(status: &Status, ops: &Ops) -> String {
    let now = ops.now_mono_ms();
    let mut lines: Vec<(&str, String)> = vec![
        (
            "node",
            format!("{} (pbchat {})", status.node, env!("CARGO_PKG_VERSION")),
        ),
        ("pid", std::process::id().to_string()),
        ("role", format!("{} (epoch {})", status.role, status.epoch)),
        (
            "head",
            format!(
                "{} committed, last seq {}, {} pending",
                status.head, status.last_seq, status.pending
            ),
        ),
    ];
    push_peer_lines(&mut lines, status, now);
    lines.push((
        "degraded",
        if status.degraded {
            "YES: acknowledging without the backup".into()
        } else {
            "no".into()
        },
    ));
    lines.push((
        "clients",
        format!("{} in {} rooms", status.clients, status.rooms),
    ));
    lines.push(("log", log_text(status)));
    lines.push(("last change", last_change_text(status)));
    lines.push(("uptime", duration_text(ops.uptime_ms())));
    if let Some(hb) = &ops.heartbeats {
        lines.push((
            "heartbeats",
            format!(
                "sent {}, received {}, rejected {}",
                hb.sent.load(Ordering::Relaxed),
                hb.received.load(Ordering::Relaxed),
                hb.rejected.load(Ordering::Relaxed)
            ),
        ));
    }
    lines.push((
        "counters",
        format!(
            "commits {}, failovers {}, slow-consumer drops {}, rate-limited {}",
            status.commits_total,
            status.failovers_total,
            ops.io.slow_consumer_drops.load(Ordering::Relaxed),
            status.rate_limited_total
        ),
    ));
    aligned(&lines)
}

/// `key: value` lines, the values in one column.
fn aligned(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut text = String::new();
    for (key, value) in lines {
        text.push_str(&format!("{:<width$} {value}\n", format!("{key}:")));
    }
    text
}

/// The pair's lines: the backup (on a primary) or the primary or peer, then the
/// replication and fail-over modes.
fn push_peer_lines(lines: &mut Vec<(&str, String)>, status: &Status, now: u64) {
    let Some(peer) = &status.peer else {
        lines.push(("peer", "none (standalone)".into()));
        return;
    };
    let heard = heard_text(peer, now);
    if status.role == "primary" {
        let value = match (peer.acked, peer.lag(status.last_seq)) {
            (Some(acked), Some(lag)) => {
                format!("{}, acked {acked}, lag {lag}, {heard}", peer.id)
            }
            _ => format!("{}, not connected, {heard}", peer.id),
        };
        lines.push(("backup", value));
    } else if peer.primary {
        let behind = peer.head.saturating_sub(status.head);
        let link = if peer.link { "following" } else { "not linked" };
        lines.push((
            "primary",
            format!(
                "{}, epoch {}, head {}, {link}, behind {behind}, {heard}",
                peer.id, peer.epoch, peer.head
            ),
        ));
    } else {
        lines.push((
            "peer",
            format!("{} (not primary, epoch {}), {heard}", peer.id, peer.epoch),
        ));
    }
    lines.push(("replication", peer.replication_mode.to_string()));
    let failover = match &peer.strict {
        Some(strict) => strict.text(now),
        None => "available".into(),
    };
    lines.push(("failover", failover));
}

/// The log's retained range and fsync mode.
fn log_text(status: &Status) -> String {
    if status.log_last_seq < status.log_first_seq {
        format!("empty, fsync {}", status.fsync)
    } else {
        format!(
            "seq {}..{}, fsync {}",
            status.log_first_seq, status.log_last_seq, status.fsync
        )
    }
}

/// When the role last moved, how and why.
fn last_change_text(status: &Status) -> String {
    match &status.last_change {
        Some(c) => format!(
            "{} {} to {} in epoch {} ({})",
            utc_seconds(c.at_ms),
            c.what,
            c.role.as_str(),
            c.epoch,
            c.reason
        ),
        None => format!("none since start ({})", utc_seconds(status.started_ms)),
    }
}

/// The same, for programs: one JSON object.
pub fn render_json(status: &Status, ops: &Ops) -> Value {
    let now = ops.now_mono_ms();
    let peer = status
        .peer
        .as_ref()
        .map(|p| peer_json(p, status.last_seq, now));
    let last_change = status.last_change.as_ref().map(|c| {
        json!({
            "at": utc_seconds(c.at_ms),
            "at_ms": c.at_ms,
            "what": c.what,
            "role": c.role.as_str(),
            "epoch": c.epoch,
            "reason": c.reason,
        })
    });
    let heartbeats = ops.heartbeats.as_ref().map(|hb| {
        json!({
            "sent": hb.sent.load(Ordering::Relaxed),
            "send_errors": hb.send_errors.load(Ordering::Relaxed),
            "received": hb.received.load(Ordering::Relaxed),
            "dropped": hb.dropped.load(Ordering::Relaxed),
            "rejected": hb.rejected.load(Ordering::Relaxed),
        })
    });
    json!({
        "node": status.node,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "role": status.role,
        "epoch": status.epoch,
        "head": status.head,
        "last_seq": status.last_seq,
        "pending": status.pending,
        "degraded": status.degraded,
        "clients": status.clients,
        "rooms": status.rooms,
        "uptime_ms": ops.uptime_ms(),
        "started_at": utc_seconds(status.started_ms),
        "log": {
            "first_seq": status.log_first_seq,
            "last_seq": status.log_last_seq,
            "fsync": status.fsync,
        },
        "replication_mode": status.peer.as_ref().map(|p| p.replication_mode),
        "peer": peer,
        "last_change": last_change,
        "heartbeats": heartbeats,
        "counters": {
            "commits_total": status.commits_total,
            "failovers_total": status.failovers_total,
            "rate_limited_total": status.rate_limited_total,
            "slow_consumer_drops_total": ops.io.slow_consumer_drops.load(Ordering::Relaxed),
            "client_bytes_sent_total": ops.io.bytes_sent.load(Ordering::Relaxed),
            "client_frames_sent_total": ops.io.frames_sent.load(Ordering::Relaxed),
            "client_writes_total": ops.io.writes.load(Ordering::Relaxed),
        },
    })
}

/// The pair in `status json`, as this node last saw it.
fn peer_json(p: &PeerInfo, last_seq: u64, now: u64) -> Value {
    json!({
        "id": p.id,
        "reachable": p.reachable(now),
        "heard_ms_ago": p.heard_ms_ago(now),
        "detection_ms": p.detection_ms,
        "link": p.link,
        "primary": p.primary,
        "epoch": p.epoch,
        "head": p.head,
        "acked": p.acked,
        "lag": p.lag(last_seq),
        "failover": match &p.strict {
            Some(strict) => json!({
                "mode": "strict",
                "witness": strict.witness,
                "lease_left_ms": strict.lease_left_ms(now),
                "witness_heard_ms_ago": strict.witness_heard_mono_ms.map(|at| now.saturating_sub(at)),
                "bidding_epoch": strict.bidding,
            }),
            None => json!({ "mode": "available" }),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    fn ops(status: Status) -> Ops {
        let ops = Ops::new(Instant::now(), Arc::default(), None);
        ops.publish(status);
        ops
    }

    fn primary() -> Status {
        Status {
            node: "a".into(),
            role: "primary",
            epoch: 3,
            head: 1234,
            last_seq: 1234,
            fsync: "batch",
            peer: Some(PeerInfo {
                id: "b".into(),
                detection_ms: 1000,
                replication_mode: "sync",
                heard_mono_ms: Some(0),
                link: true,
                acked: Some(1230),
                ..PeerInfo::default()
            }),
            last_change: Some(RoleChange {
                at_ms: 1_764_091_907_000,
                what: "promoted",
                role: Role::Primary,
                epoch: 3,
                reason: "peer silent for 1018 ms".into(),
            }),
            ..Status::default()
        }
    }

    #[test]
    fn text_status_answers_the_operators_questions() {
        let ops = ops(primary());
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let text = answer("status", &ops, &tx);
        assert!(text.contains("role:        primary (epoch 3)\n"), "{text}");
        assert!(
            text.contains("backup:      b, acked 1230, lag 4, heard "),
            "{text}"
        );
        assert!(text.contains("degraded:    no\n"), "{text}");
        assert!(
            text.contains(
                "last change: 2025-11-25T17:31:47Z promoted to primary in epoch 3 (peer silent for 1018 ms)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn json_status_and_errors() {
        let ops = ops(primary());
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let value: Value = serde_json::from_str(&answer("status json", &ops, &tx)).unwrap();
        assert_eq!(value["role"], "primary");
        assert_eq!(value["peer"]["lag"], 4);
        assert_eq!(value["last_change"]["reason"], "peer silent for 1018 ms");
        assert!(answer("frobnicate", &ops, &tx).starts_with("error: unknown request"));
        ops.publish(Status {
            role: "backup",
            ..primary()
        });
        assert!(answer("failover", &ops, &tx)
            .starts_with("error: fail-over refused: this node is backup"));
    }

    #[test]
    fn role_and_pid_answer_one_word_for_scripts() {
        let ops = ops(primary());
        let (tx, _rx) = crossbeam_channel::bounded(1);
        assert_eq!(answer("role", &ops, &tx), "primary\n");
        assert_eq!(
            answer("pid", &ops, &tx),
            format!("{}\n", std::process::id())
        );
        ops.publish(Status {
            role: "backup",
            ..primary()
        });
        assert_eq!(answer("role", &ops, &tx), "backup\n");
    }

    #[test]
    fn every_request_answers_json_when_asked() {
        let ops = ops(primary());
        let (tx, _rx) = crossbeam_channel::bounded(1);
        let parse =
            |request: &str| -> Value { serde_json::from_str(&answer(request, &ops, &tx)).unwrap() };
        assert_eq!(parse("role json")["role"], "primary");
        assert_eq!(parse("pid json")["pid"], std::process::id());
        assert_eq!(parse("status json")["epoch"], 3);
        // Refusals stay text: pbchatctl prints them on stderr and exits 1.
        ops.publish(Status {
            peer: None,
            ..primary()
        });
        assert!(answer("failover json", &ops, &tx).starts_with("error: fail-over refused"));
        assert!(answer("json", &ops, &tx).starts_with("error: unknown request"));
        // `text` after a request asks for the default explicitly (pbchatctl's kick).
        assert_eq!(answer("role text", &ops, &tx), "primary\n");
        // A bad level is refused before anything changes.
        assert_eq!(
            answer("log-level loud", &ops, &tx),
            "error: log level \"loud\": not a level; the levels are: error, warn, info, debug, trace\n"
        );
    }

    /// The driver's side of `clients` and `rooms`, played by a thread: the rows, and the line
    /// that says what the cap left off.
    #[test]
    fn lists_say_how_many_rows_the_cap_left_off() {
        let ops = ops(primary());
        let (tx, rx) = crossbeam_channel::bounded(1);
        let driver = std::thread::spawn(move || {
            for _ in 0..2 {
                match rx.recv().unwrap() {
                    Signal::Clients { max, reply } => {
                        assert_eq!(max, LIST_ROWS_MAX);
                        let alice = crate::core::ClientInfo {
                            nick: Some("alice".into()),
                            addr: Some("192.0.2.7:40000".parse().unwrap()),
                            rooms: vec!["general".into(), "ops".into()],
                            connected_ms: 1_764_091_907_000,
                        };
                        reply.send((vec![alice], 3)).unwrap();
                    }
                    Signal::Rooms { reply, .. } => {
                        reply.send((vec![("general".into(), 2)], 0)).unwrap();
                    }
                    _ => unreachable!(),
                }
            }
        });
        assert_eq!(
            answer("clients", &ops, &tx),
            "alice\t192.0.2.7:40000\tgeneral,ops\t2025-11-25T17:31:47Z\n\
             ... and 3 more (the list stops at 10000)\n"
        );
        let rooms: Value = serde_json::from_str(&answer("rooms json", &ops, &tx)).unwrap();
        assert_eq!(
            rooms,
            json!({"rooms": [{"name": "general", "members": 2}], "more": 0})
        );
        driver.join().unwrap();
    }

    #[test]
    fn times_read_as_people_say_them() {
        assert_eq!(elapsed_text(81), "81 ms");
        assert_eq!(elapsed_text(1_234), "1.2 s");
        assert_eq!(elapsed_text(59_999), "59.9 s");
        // The example: a peer gone for 646961 ms.
        assert_eq!(elapsed_text(646_961), "10m 46s");
        assert_eq!(elapsed_text(7_500_000), "2h 5m");
        let peer = PeerInfo {
            detection_ms: 1000,
            heard_mono_ms: Some(1_000),
            ..PeerInfo::default()
        };
        assert_eq!(heard_text(&peer, 1_081), "heard 81 ms ago");
        assert_eq!(
            heard_text(&peer, 647_961),
            "UNREACHABLE, last heard 10m 46s ago"
        );
    }
}
