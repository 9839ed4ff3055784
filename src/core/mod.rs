//! The pure node state machine: role, epoch, sequence numbers, sessions, rooms, dedup.
//!
//! [`Node::step`] takes one [`Input`] and pushes [`Action`]s for the daemon to carry out.
//! It does no I/O, reads no clock (time comes in on inputs as logical milliseconds) and uses
//! no randomness, so every behaviour can be replayed in a test. Fan-out is O(1) here: the
//! core encodes a committed message once and hands one [`Action::Publish`] to the daemon,
//! which owns room subscriptions per I/O thread.
//!
//! Layout: `epochs` (epoch history, where histories part), `rate` (token bucket),
//! `dedup` (bounded (session, id) index), `peer` (the pair), `strict` (strict mode's
//! leases, a node's side), `witness` (the witness's rules).

// Functions here stay short enough to read at once (clippy.toml sets 70 lines); a longer
// one says why where it stands.
#![warn(clippy::too_many_lines)]

pub mod dedup;
pub mod epochs;
mod invariants;
pub mod link;
pub mod peer;
pub mod rate;
pub mod strict;
pub mod witness;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::Deserialize;

use crate::entry::Entry;
use crate::wire::client::{encode_msg, encode_reply, DecodeError, ErrorCode, Reply, Request};
use dedup::Dedup;
use epochs::EpochHistory;
pub use peer::PairConfig;
use peer::{Handover, Link, PeerView, Resubmission, StorageWatch};
use rate::TokenBucket;

/// An encoded frame, shared by every connection it goes to.
pub type Frame = Arc<[u8]>;
/// A connection, numbered by the daemon; never reused within a process.
pub type ConnId = u64;
/// A replication link to the peer, numbered by the daemon from 1; never reused within a
/// process.
pub type LinkId = u64;
/// The link id a primary uses to re-commit its own kept-aside messages (`Input::Resubmit`).
pub const SELF_LINK: LinkId = 0;

/// Severity of a [`Action::Log`] line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Warn,
    Info,
}

/// A node's own timers firing this much later than due means it was stopped or starved.
pub const STALL_MIN_MS: u64 = 500;

/// Longest a backup holds a `hello` while it waits to see whether it takes over: below
/// `pbchat-client`'s wait for an answer (`client::net::HANDSHAKE_TIMEOUT_MS`, 3 s), so a held
/// client is answered before it gives up on the connection.
pub const HELLO_HOLD_MAX_MS: u64 = 2_000;

/// The liveness wait of a pair with the default heartbeat (2 x 200 ms). A standalone node
/// announces it in `welcome` (it has no peer to probe, but a client with other servers may
/// use it the same way), and a client waits this long for the answer to a `hello` before
/// it also asks another server.
pub const DEFAULT_PROBE_MS: u64 = 400;

/// Frames a client may send behind a held `hello` (a pipelined `join`, say); they are
/// handled in order once the hello is answered. More get `bad_request`.
pub const HELD_REQUESTS_MAX: usize = 8;

/// The `id` of a refused `send`, which its error names so that the client knows which one
/// to send again.
fn send_id(request: &Request) -> Option<&str> {
    match request {
        Request::Send { id, .. } => Some(id),
        _ => None,
    }
}

/// Limits and identity the core needs; validated by `config` before a node is built.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub node_id: String,
    pub role: Role,
    /// Client address of the other node, announced in `redirect` and `goodbye`.
    pub peer_client_address: Option<String>,
    pub hello_timeout_ms: u64,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub max_errors: u32,
    pub max_rooms_per_client: usize,
    /// Messages ordered but not yet committed; sends beyond it get `unavailable`.
    pub max_pending: usize,
    /// The pair, when this node has a peer.
    pub pair: Option<PairConfig>,
    /// Authentication and abuse limits for clients.
    pub access: AccessConfig,
}

/// What the core enforces against hostile or greedy clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessConfig {
    /// `hello` must carry a token the daemon verifies (`Action::Authenticate`).
    pub auth_required: bool,
    /// A refused `hello` is answered this long after the verdict.
    pub auth_failure_delay_ms: u64,
    /// Members one room may have.
    pub max_room_members: usize,
    /// `rate_limited` refusals within `rate_violations_window_ms` that close a connection.
    pub rate_violations_max: u32,
    pub rate_violations_window_ms: u64,
    /// Per-connection token bucket for `join`, `leave` and `history`: each join or leave
    /// sends presence to every member of the room, and each history request reads the log.
    pub room_rate_per_sec: u32,
    pub room_rate_burst: u32,
}

impl AccessConfig {
    /// The documented defaults, authentication off. The config's defaults for these keys
    /// (`client.max_room_members`, `client.rate_violations_*`, `client.room_rate_*`,
    /// `auth.failure_delay_ms`) are these values: the core owns them, as config depends on
    /// the core and not the other way round.
    pub const DEFAULT: AccessConfig = AccessConfig {
        auth_required: false,
        auth_failure_delay_ms: 300,
        max_room_members: 10_000,
        rate_violations_max: 20,
        rate_violations_window_ms: 10_000,
        room_rate_per_sec: 50,
        room_rate_burst: 200,
    };
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig::DEFAULT
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A connection was accepted, from `addr` (`None`: the socket could not say).
    Connected {
        conn: ConnId,
        addr: Option<std::net::SocketAddr>,
        now_ms: u64,
    },
    /// A decoded frame from a connection.
    Request {
        conn: ConnId,
        request: Request,
        now_ms: u64,
    },
    /// A line that did not decode; the core answers it and counts it.
    BadFrame { conn: ConnId, error: DecodeError },
    /// The verdict on an `Action::Authenticate` for `conn`.
    Authenticated { conn: ConnId, ok: bool, now_ms: u64 },
    /// The connection is gone (closed by the peer, an I/O error, or the daemon).
    Disconnected { conn: ConnId },
    /// The local log is durable up to and including `seq`, as of the log's `generation`
    /// (bumped by each truncation, so a report from before one is recognised as stale).
    Durable { generation: u64, seq: u64 },
    /// Log retention dropped every message below `first_seq`.
    Retained { first_seq: u64 },
    /// Time passes: wall clock for timestamps, monotonic for every timer.
    Tick { now_ms: u64, mono_ms: u64 },
    /// Stop: hand over to a caught-up backup, or commit what is pending; say goodbye; exit.
    Shutdown,
    /// Fail-over drill: hand over to the backup and stay up as the new backup.
    Drill,
    /// An operator closes the connection of `nick` (`pbchatctl kick`): a `kicked` error
    /// frame with `reason`, then the close. Nothing when no connection has that nick.
    Kick { nick: String, reason: String },
    /// An authenticated, fresh heartbeat from the peer.
    Heartbeat {
        primary: bool,
        epoch: u64,
        head: u64,
        mono_ms: u64,
    },
    /// Primary side: a backup finished the handshake on `link`.
    BackupHello {
        link: LinkId,
        epoch: u64,
        last_seq: u64,
        spans: Vec<(u64, u64)>,
        mono_ms: u64,
    },
    /// Primary side: the backup has everything up to `durable_seq` durably.
    BackupAck {
        link: LinkId,
        durable_seq: u64,
        mono_ms: u64,
    },
    /// Either side: a frame that carries nothing but life.
    LinkAlive { mono_ms: u64 },
    /// Either side: the link is gone.
    LinkDown { link: LinkId },
    /// Primary side: the backup took over after our `Handover`.
    TookOver { link: LinkId, epoch: u64 },
    /// Primary side: messages only the backup had, to re-commit.
    Resubmit { link: LinkId, entries: Vec<Entry> },
    /// Backup side: the primary welcomed us on `link` in `epoch`.
    PrimaryWelcome {
        link: LinkId,
        epoch: u64,
        mono_ms: u64,
    },
    /// Backup side: our log matches the primary's up to `after_seq`; its epoch history.
    PrimaryTruncate {
        link: LinkId,
        after_seq: u64,
        spans: Vec<(u64, u64)>,
    },
    /// Backup side: the primary retains nothing below `first_seq`; start the log there.
    PrimaryRestart { link: LinkId, first_seq: u64 },
    /// Backup side: consecutive entries from the primary, and its committed head.
    Replicate {
        link: LinkId,
        commit_seq: u64,
        entries: Vec<Entry>,
        mono_ms: u64,
    },
    /// Backup side: the primary asks us to take over now.
    HandoverAsked { link: LinkId, epoch: u64 },
    /// The `failover.check_address` probe answered (or not).
    ProbeResult { ok: bool },
    /// Time passes without a tick's timers: strict mode checks its lease against the
    /// freshest clock, so the daemon sends this before an input that carries no time
    /// (`Durable`) and may commit.
    Clock { mono_ms: u64 },
    /// Strict mode: the witness answered `Action::Claim` number `request`: granted `epoch`
    /// with a lease of `lease_ms` on its clock, or refused (`epoch` is then the highest it
    /// granted).
    WitnessAnswer {
        request: u64,
        granted: bool,
        epoch: u64,
        lease_ms: u64,
        /// When it arrived: the lease is checked against it before anything commits.
        mono_ms: u64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Queue a frame to one connection.
    Send {
        conn: ConnId,
        frame: Frame,
    },
    /// Close a connection once what is queued to it is written.
    Close {
        conn: ConnId,
    },
    /// Check `token` against `nick`'s entry in the users file, off the core thread; an
    /// `Input::Authenticated` answers (unless the connection is dropped first).
    Authenticate {
        conn: ConnId,
        nick: Arc<str>,
        token: String,
    },
    /// Append to the log; a `Durable` input follows once it is durable.
    Append(Entry),
    /// A committed message for every subscriber of `room`.
    Publish {
        room: Arc<str>,
        seq: u64,
        frame: Frame,
    },
    /// Everything up to `seq` is committed (without a `Publish` of its own: entries a
    /// promotion inherited), so replays may read up to it.
    CommittedTo {
        seq: u64,
    },
    /// A presence frame for every subscriber of `room` but `except`.
    Presence {
        room: Arc<str>,
        except: ConnId,
        frame: Frame,
    },
    /// Start delivering `room` to `conn`: first the stored messages after `replay_after`
    /// (when given), then live ones, with no gap or duplicate between the two.
    Subscribe {
        conn: ConnId,
        room: Arc<str>,
        replay_after: Option<u64>,
    },
    Unsubscribe {
        conn: ConnId,
        room: Arc<str>,
    },
    /// Send up to `limit` stored messages of `room` with `seq < before` (and `<= upto`, the
    /// head when asked), then `history_end`.
    History {
        conn: ConnId,
        room: Arc<str>,
        before: u64,
        upto: u64,
        limit: usize,
    },
    /// Everything is committed and everyone told: the process may exit.
    Exit,
    /// Persist the epoch history and the highest epoch seen, before anything after it.
    SaveEpochs {
        spans: Vec<(u64, u64)>,
        seen: u64,
    },
    /// Cut the log after `after_seq`, keeping what is cut aside for re-commit.
    Truncate {
        after_seq: u64,
    },
    /// Empty the log and continue at `first_seq`.
    RestartLog {
        first_seq: u64,
    },
    /// Primary side: the backup on `link` is accepted; it cuts its log after
    /// `truncate_after` (and restarts it at `restart_at`), then receives entries from there.
    AcceptBackup {
        link: LinkId,
        truncate_after: u64,
        restart_at: Option<u64>,
    },
    CloseLink {
        link: LinkId,
        reason: String,
    },
    /// Primary side: close `link` at once with a reset, dropping what is queued on it (a
    /// stalled link, see `Node::abort_stalled_link`).
    AbortLink {
        link: LinkId,
        reason: String,
    },
    /// Backup side: tell the primary what is durable here.
    AckPrimary {
        link: LinkId,
        durable_seq: u64,
    },
    /// Primary side: ask the backup to take over now.
    Handover {
        link: LinkId,
        epoch: u64,
    },
    /// Backup side: tell the old primary we took over in `epoch`.
    TookOver {
        link: LinkId,
        epoch: u64,
    },
    /// Primary side: resubmitted messages up to the one with orig (epoch, seq) are in.
    ResubmitDone {
        link: LinkId,
        epoch: u64,
        seq: u64,
    },
    /// Try a TCP connect to `failover.check_address`; answer with `ProbeResult`.
    Probe,
    /// Strict mode: ask the witness for a lease in `epoch` (our epoch: a renewal; a newer
    /// one: a take-over); answer with `WitnessAnswer` carrying the same `request`.
    Claim {
        request: u64,
        epoch: u64,
    },
    /// Role or epoch changed: the daemon re-reads them.
    RoleChanged,
    /// A line for the node's log.
    Log {
        level: LogLevel,
        message: String,
    },
}

/// The node's latest change of role, with the reason it logged: for operators (status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleChange {
    /// Wall-clock milliseconds as of the input that caused it (the latest tick or request).
    pub at_ms: u64,
    /// What happened: `promoted`, `stepped down` or `handed over`.
    pub what: &'static str,
    /// The role and epoch it led to.
    pub role: Role,
    pub epoch: u64,
    /// Why, as logged (`peer silent for 1018 ms`, `planned hand-over from the primary`, ...).
    pub reason: String,
}

/// What this node knows of its peer, for operators (status). Read-only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStatus {
    /// Monotonic time of the last heartbeat or replication frame from the peer; `None`
    /// until it is first heard.
    pub heard_ms: Option<u64>,
    /// What its latest heartbeat said.
    pub primary: bool,
    pub epoch: u64,
    pub head: u64,
    /// A replication link to the peer is up (to the backup, or to the primary).
    pub link: bool,
}

/// One connection as `pbchatctl clients` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// `None` before its `hello` is welcomed.
    pub nick: Option<String>,
    pub addr: Option<std::net::SocketAddr>,
    /// Sorted by name.
    pub rooms: Vec<String>,
    /// When it connected, on the clock of `Input::Connected`'s `now_ms`.
    pub connected_ms: u64,
}

/// What the core knows of one connection.
#[derive(Debug)]
struct Conn {
    /// Where it comes from and when (the caller's clock), for `pbchatctl clients`.
    addr: Option<std::net::SocketAddr>,
    connected_ms: u64,
    /// `None` until a `hello` is welcomed.
    session: Option<Arc<str>>,
    nick: Option<Arc<str>>,
    rooms: HashSet<Arc<str>>,
    bucket: TokenBucket,
    /// For `join`, `leave` and `history` (`AccessConfig::room_rate_per_sec`).
    room_bucket: TokenBucket,
    /// Bad frames so far; at `max_errors` the connection is closed.
    errors: u32,
    /// Where authentication stands (always `Open` without authentication).
    auth: AuthState,
    /// `rate_limited` refusals in the current flood window, and when it began.
    violations: u32,
    violations_since_ms: u64,
}

/// A connection's authentication, before its session opens.
#[derive(Debug)]
enum AuthState {
    /// No `hello` is being checked.
    Open,
    /// A `hello` waits for its token's verdict.
    Verifying { nick: Arc<str>, session: Arc<str> },
    /// Refused: it gets `unauthorized` at its deadline and is closed; input is ignored.
    Refused,
    /// A backup that has stopped hearing its primary holds the `hello` until it knows who
    /// serves (see `Node::hold_hello`). Boxed: most connections never hold one.
    Held(Box<HeldHello>),
}

/// A `hello` a backup answers later, and what the client sent behind it.
#[derive(Debug)]
struct HeldHello {
    nick: String,
    session: String,
    token: Option<String>,
    /// Monotonic time the hello was held: word from the peer after it settles the answer.
    since_ms: u64,
    /// Monotonic time at which the hello is answered whatever happened (a redirect).
    until_ms: u64,
    /// At most [`HELD_REQUESTS_MAX`], handled in order after the answer.
    queued: Vec<Request>,
}

/// What a node is to its pair: the primary orders and commits; the backup follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Backup,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        }
    }
}

/// `replication.mode`: `Sync` acknowledges a send once the backup holds it too; `Async`
/// once the primary's own log does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    Sync,
    Async,
}

/// A message ordered and appended but not yet committed.
#[derive(Debug)]
struct Pending {
    entry: Entry,
    /// Monotonic time it was ordered, for the sync-replication ack timeout.
    appended_ms: u64,
}

pub struct Node {
    config: CoreConfig,
    role: Role,
    epochs: EpochHistory,
    /// Highest committed seq: everything up to it is acknowledged-durable.
    head: u64,
    /// Highest seq handed to the log: `head + pending.len()` on a primary, unless entries
    /// it inherited at its promotion wait (`tail_commit`); a backup's entries beyond `head`
    /// wait for its primary's commit (`Node::invariants`).
    last_seq: u64,
    /// Highest seq the local log reports durable.
    durable: u64,
    pending: VecDeque<Pending>,
    /// Boxed: the map keeps room for about 1.6 entries per connection, and a `Conn` is
    /// ~200 bytes, of which only sends and joins read (~100 bytes less per idle member).
    conns: HashMap<ConnId, Box<Conn>>,
    /// Open session -> the connection holding it.
    sessions: HashMap<Arc<str>, ConnId>,
    /// Nick -> the connection using it; nicks are unique among connected clients.
    nicks: HashMap<Arc<str>, ConnId>,
    /// Room -> nicks of members, for `joined.members`. A room leaves the map with its last member.
    rooms: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
    dedup: Dedup,
    /// Connections waiting for `hello`, in connect order with their deadline (FIFO because
    /// every connection gets the same timeout).
    hello_deadlines: VecDeque<(u64, ConnId)>,
    now_ms: u64,
    draining: bool,
    exited: bool,
    /// Highest epoch seen anywhere (ours, the peer's); a promotion goes above it.
    seen_epoch: u64,
    /// Oldest retained seq in the log.
    first_seq: u64,
    /// Monotonic time as of the latest input that carried it.
    mono_ms: u64,
    last_tick_mono_ms: Option<u64>,
    peer: PeerView,
    link: Option<Link>,
    /// Sync mode only: committing on local durability because the backup is away.
    degraded: bool,
    /// Primary woke from a stall at this time; commits wait for word from the peer.
    fenced_since: Option<u64>,
    last_promotion_ms: Option<u64>,
    probing: bool,
    probe_ok_ms: Option<u64>,
    handover: Option<Handover>,
    storage_watch: StorageWatch,
    /// Re-commits waiting to be reported done, at most one per link (the primary's own
    /// orphans on `SELF_LINK` and the backup's on its link can overlap), bounded by
    /// `RESUBMISSIONS_MAX`.
    resubmissions: Vec<Resubmission>,
    /// After a promotion, entries up to here (ordered by the old primary) commit once durable.
    tail_commit: u64,
    /// Bumped by each truncation; durable reports from an older generation are stale.
    log_generation: u64,
    /// Log lines from the current step, appended to its actions.
    logs: Vec<Action>,
    /// A stop signal arrived: exit once done (a drill only drains).
    exit_requested: bool,
    /// The commit rule got looser during this step (degraded on, stall fence lifted).
    recheck: bool,
    /// A new paired node configured as primary: it starts as backup and takes over once it
    /// has heard that the peer is no primary (or the peer stays silent).
    start_as_primary: bool,
    last_probe_ms: Option<u64>,
    probe_failing: bool,
    /// The latest role change and why, for status; `None` since start.
    last_change: Option<RoleChange>,
    /// Requests refused by a client's token buckets since start (a counter for metrics).
    rate_limited_total: u64,
    /// Refused `hello`s waiting out the failure delay: (deadline, conn), in order of
    /// refusal (one delay for all, so deadlines ascend but across a reload). At most one per
    /// connection.
    auth_failures: VecDeque<(u64, ConnId)>,
    /// Connections whose `hello` is held, oldest first (a connection closed meanwhile is
    /// skipped when the list is next reviewed). At most one entry per connection.
    held: VecDeque<ConnId>,
    /// Strict mode (`failover.mode = "strict"`): leases and the witness; `None` otherwise.
    strict: Option<strict::Strict>,
}

impl Node {
    /// Builds a node from its recovered state: the epoch history, and the committed log
    /// (every entry is offered to `recover` in order, then `finish_recovery`, before the first
    /// step).
    /// `role` is where the node starts (the daemon picks backup for a paired node with state);
    /// `seen_epoch` is the persisted highest epoch seen.
    pub fn new(config: CoreConfig, role: Role, epochs: EpochHistory, seen_epoch: u64) -> Self {
        Node {
            role,
            config,
            head: 0,
            last_seq: 0,
            durable: 0,
            pending: VecDeque::new(),
            conns: HashMap::new(),
            sessions: HashMap::new(),
            nicks: HashMap::new(),
            rooms: HashMap::new(),
            dedup: Dedup::default(),
            hello_deadlines: VecDeque::new(),
            now_ms: 0,
            draining: false,
            exited: false,
            seen_epoch: seen_epoch.max(epochs.current()),
            epochs,
            first_seq: 1,
            mono_ms: 0,
            last_tick_mono_ms: None,
            peer: PeerView::default(),
            link: None,
            degraded: false,
            fenced_since: None,
            last_promotion_ms: None,
            probing: false,
            probe_ok_ms: None,
            handover: None,
            storage_watch: StorageWatch::default(),
            resubmissions: Vec::new(),
            tail_commit: 0,
            log_generation: 0,
            logs: Vec::new(),
            exit_requested: false,
            recheck: false,
            start_as_primary: false,
            last_probe_ms: None,
            probe_failing: false,
            last_change: None,
            rate_limited_total: 0,
            auth_failures: VecDeque::new(),
            held: VecDeque::new(),
            strict: None,
        }
    }

    /// Applies limits re-read from the config (HUP); identity and the pair stay as they are.
    pub fn set_limits(&mut self, limits: &CoreConfig) {
        self.config.hello_timeout_ms = limits.hello_timeout_ms;
        self.config.rate_per_sec = limits.rate_per_sec;
        self.config.rate_burst = limits.rate_burst;
        self.config.max_errors = limits.max_errors;
        self.config.max_rooms_per_client = limits.max_rooms_per_client;
        self.config.max_pending = limits.max_pending;
        self.config.access = limits.access.clone();
    }

    /// A new paired node whose config says primary: it serves once it knows the peer is no
    /// primary, under an epoch above the peer's (see `on_pair_tick`).
    pub fn start_as_primary(&mut self) {
        self.start_as_primary = true;
    }

    /// A primary without an epoch (a new node, or a standalone one that last served as
    /// backup) begins one after its last seq. Call after recovery, before the first step.
    pub fn begin_first_epoch(&mut self, rank: u64) {
        if self.role == Role::Primary && self.epochs.current() == 0 {
            let epoch = epochs::next_epoch(self.seen_epoch, rank);
            self.epochs.begin(epoch, self.last_seq + 1);
            self.seen_epoch = self.seen_epoch.max(epoch);
        }
    }

    /// Sizes the de-duplication index for about `entries` recovered entries (the caller's
    /// estimate from the log's size, capped by retention).
    pub fn expect_recovered(&mut self, entries: u64) {
        self.dedup
            .reserve(usize::try_from(entries).unwrap_or(usize::MAX));
    }

    /// Feeds one recovered, durable log entry (in seq order) at start-up.
    pub fn recover(&mut self, entry: &Entry) {
        assert!(
            entry.seq > self.head,
            "recovered seq {} not after {}",
            entry.seq,
            self.head
        );
        self.head = entry.seq;
        self.last_seq = entry.seq;
        self.durable = entry.seq;
        self.dedup.recover(&entry.session, &entry.id, entry.seq);
    }

    /// Ends start-up recovery: call after the last `recover` (or none), before anything else.
    /// `recover` batches its keys for the de-duplication index, and this hands over the rest.
    pub fn finish_recovery(&mut self) {
        self.dedup.finish_recovery();
    }

    /// Tells the node that retention left `first_seq` as the oldest message, at start-up or
    /// later; an empty log that starts past 1 continues from there.
    pub fn set_log_start(&mut self, first_seq: u64) {
        self.first_seq = first_seq;
        if self.head == 0 && first_seq > 1 {
            self.head = first_seq - 1;
            self.last_seq = self.head;
            self.durable = self.head;
        }
        self.dedup.forget_below(first_seq);
    }

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn epoch(&self) -> u64 {
        self.epochs.current()
    }
    pub fn head(&self) -> u64 {
        self.head
    }
    pub fn epochs(&self) -> &EpochHistory {
        &self.epochs
    }
    pub fn clients(&self) -> usize {
        self.sessions.len()
    }
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
    pub fn seen_epoch(&self) -> u64 {
        self.seen_epoch
    }
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
    pub fn degraded(&self) -> bool {
        self.degraded
    }
    /// What a load balancer asks (`GET /role`): this node is the primary and takes sends
    /// now, i.e. it is not shutting down or handing over, not fenced after a stall, and its
    /// log is not stuck.
    pub fn serving(&self) -> bool {
        self.role == Role::Primary
            && !self.draining
            && self.handover.is_none()
            && self.fenced_since.is_none()
            && !self.log_stuck()
    }
    /// Why [`Node::serving`] is false, in a word or two, for `/role`'s answer.
    pub fn not_serving_reason(&self) -> &'static str {
        if self.role != Role::Primary {
            "backup"
        } else if self.draining {
            "draining"
        } else if self.handover.is_some() {
            "handing over"
        } else if self.fenced_since.is_some() {
            "fenced"
        } else if self.log_stuck() {
            "log stuck"
        } else {
            "serving"
        }
    }
    pub fn log_generation(&self) -> u64 {
        self.log_generation
    }
    /// What the backup has acknowledged (primary side), 0 without a backup.
    pub fn peer_acked(&self) -> u64 {
        self.backup_acked()
    }
    /// Rooms with at least one member.
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Up to `max` connections in the order they came (`pbchatctl clients`), and how many
    /// more there are.
    pub fn client_list(&self, max: usize) -> (Vec<ClientInfo>, usize) {
        let mut conns: Vec<(&ConnId, &Conn)> =
            self.conns.iter().map(|(id, c)| (id, &**c)).collect();
        conns.sort_unstable_by_key(|(id, _)| **id);
        let more = conns.len().saturating_sub(max);
        let list = conns
            .into_iter()
            .take(max)
            .map(|(_, c)| {
                let mut rooms: Vec<String> = c.rooms.iter().map(|r| r.to_string()).collect();
                rooms.sort_unstable();
                ClientInfo {
                    nick: c.nick.as_deref().map(str::to_string),
                    addr: c.addr,
                    rooms,
                    connected_ms: c.connected_ms,
                }
            })
            .collect();
        (list, more)
    }

    /// Up to `max` rooms by name with their member counts (`pbchatctl rooms`), and how many
    /// more there are.
    pub fn room_list(&self, max: usize) -> (Vec<(String, usize)>, usize) {
        let mut rooms: Vec<(String, usize)> = self
            .rooms
            .iter()
            .map(|(name, members)| (name.to_string(), members.len()))
            .collect();
        rooms.sort_unstable();
        let more = rooms.len().saturating_sub(max);
        rooms.truncate(max);
        (rooms, more)
    }
    /// The latest role change and its reason; `None` since start.
    pub fn last_change(&self) -> Option<&RoleChange> {
        self.last_change.as_ref()
    }
    /// Sends refused as rate-limited since start.
    pub fn rate_limited_total(&self) -> u64 {
        self.rate_limited_total
    }
    /// What this node knows of its peer (all zero without a pair).
    pub fn peer_status(&self) -> PeerStatus {
        PeerStatus {
            heard_ms: (self.peer.last_heard_ms > 0).then_some(self.peer.last_heard_ms),
            primary: self.peer.primary,
            epoch: self.peer.epoch,
            head: self.peer.head,
            link: self.link.is_some(),
        }
    }
    /// Where a client should go when this node is not the primary, if it knows.
    pub fn known_primary(&self) -> Option<&str> {
        match &self.config.pair {
            Some(pair) if self.role == Role::Backup && self.peer.primary => {
                Some(pair.peer_client_address.as_str())
            }
            Some(_) => None,
            None => self.config.peer_client_address.as_deref(),
        }
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.logs.push(Action::Log { level, message });
    }

    /// A hint before `step(input)`: a send's de-duplication slot starts loading, so a batch's
    /// cache misses overlap (the index is far larger than the cache). Changes nothing.
    pub fn prefetch(&self, input: &Input) {
        let Input::Request {
            conn,
            request: Request::Send { id, .. },
            ..
        } = input
        else {
            return;
        };
        if let Some(session) = self.conns.get(conn).and_then(|c| c.session.as_deref()) {
            self.dedup.prefetch_key(self.dedup.key(session, id));
        }
    }

    /// Processes one input, appending what to do to `actions`.
    // Long because it is the one dispatch over every `Input` kind, one short arm each: the
    // whole table of what the node reacts to, read at once.
    #[allow(clippy::too_many_lines)]
    pub fn step(&mut self, input: Input, actions: &mut Vec<Action>) {
        debug_assert!(
            !self.dedup.is_recovering(),
            "Node::step before Node::finish_recovery"
        );
        match input {
            Input::Connected { conn, addr, now_ms } => self.on_connected(conn, addr, now_ms),
            Input::Kick { nick, reason } => self.on_kick(&nick, &reason, actions),
            Input::Request {
                conn,
                request,
                now_ms,
            } => {
                self.now_ms = self.now_ms.max(now_ms);
                self.on_request(conn, request, actions)
            }
            Input::BadFrame { conn, error } => self.on_bad_frame(conn, error, actions),
            Input::Authenticated { conn, ok, now_ms } => {
                self.now_ms = self.now_ms.max(now_ms);
                self.on_authenticated(conn, ok, actions)
            }
            Input::Disconnected { conn } => self.on_disconnected(conn, actions),
            Input::Durable { generation, seq } => {
                if generation == self.log_generation {
                    self.on_durable(seq, actions)
                }
            }
            Input::Retained { first_seq } => {
                self.first_seq = self.first_seq.max(first_seq);
                self.dedup.forget_below(first_seq)
            }
            Input::Tick { now_ms, mono_ms } => self.on_tick(now_ms, mono_ms, actions),
            Input::Shutdown => self.on_shutdown(true, actions),
            Input::Drill => self.on_shutdown(false, actions),
            Input::Heartbeat {
                primary,
                epoch,
                head,
                mono_ms,
            } => {
                self.advance(mono_ms);
                self.on_heartbeat(primary, epoch, head, mono_ms, actions)
            }
            Input::BackupHello {
                link,
                epoch,
                last_seq,
                spans,
                mono_ms,
            } => {
                self.advance(mono_ms);
                self.on_backup_hello(link, epoch, last_seq, spans, mono_ms, actions)
            }
            Input::BackupAck {
                link,
                durable_seq,
                mono_ms,
            } => {
                self.advance(mono_ms);
                self.on_backup_ack(link, durable_seq, mono_ms, actions)
            }
            Input::LinkAlive { mono_ms } => {
                self.advance(mono_ms);
                self.heard(mono_ms);
                if let Some(Link::ToBackup { heard_ms, .. }) = &mut self.link {
                    *heard_ms = (*heard_ms).max(mono_ms);
                }
            }
            Input::LinkDown { link } => self.on_link_down(link),
            Input::TookOver { link, epoch } => self.on_took_over(link, epoch, actions),
            Input::Resubmit { link, entries } => self.on_resubmit(link, entries, actions),
            Input::PrimaryWelcome {
                link,
                epoch,
                mono_ms,
            } => {
                self.advance(mono_ms);
                self.on_primary_welcome(link, epoch, mono_ms, actions)
            }
            Input::PrimaryTruncate {
                link,
                after_seq,
                spans,
            } => self.on_primary_truncate(link, after_seq, None, spans, actions),
            Input::PrimaryRestart { link, first_seq } => {
                let spans = self.epochs.spans().to_vec();
                let last = self.last_seq;
                self.on_primary_truncate(link, last, Some(first_seq), spans, actions)
            }
            Input::Replicate {
                link,
                commit_seq,
                entries,
                mono_ms,
            } => {
                self.advance(mono_ms);
                self.on_replicate(link, commit_seq, entries, mono_ms, actions)
            }
            Input::HandoverAsked { link, epoch } => self.on_handover_asked(link, epoch, actions),
            Input::ProbeResult { ok } => self.on_probe_result(ok),
            Input::Clock { mono_ms } => self.advance(mono_ms),
            Input::WitnessAnswer {
                request,
                granted,
                epoch,
                lease_ms,
                mono_ms,
            } => {
                self.advance(mono_ms);
                self.on_witness_answer(request, granted, epoch, lease_ms, actions)
            }
        }
        // The commit rule got looser this step (degraded on, fence lifted): what waited may
        // commit now, and a hand-over or shutdown waiting on it may go on.
        if std::mem::take(&mut self.recheck) {
            self.commit_ready(actions);
            self.maybe_handover(actions);
            self.maybe_exit(actions);
        }
        actions.append(&mut self.logs);
        self.assert_positions();
        #[cfg(test)]
        if let Err(problem) = self.invariants() {
            panic!("core invariant broken after a step: {problem}");
        }
    }

    fn advance(&mut self, mono_ms: u64) {
        self.mono_ms = self.mono_ms.max(mono_ms);
    }

    fn on_shutdown(&mut self, exit: bool, actions: &mut Vec<Action>) {
        if self.handover.is_some() || self.exited {
            return;
        }
        if self.start_handover(exit, actions) {
            return;
        }
        if !exit {
            self.log(
                LogLevel::Warn,
                "fail-over drill refused: it needs a primary with a caught-up backup".into(),
            );
            return;
        }
        let how = match self.role {
            Role::Backup => "as backup".to_string(),
            Role::Primary => {
                let why = if self.pair().is_none() {
                    "no peer configured"
                } else if self.degraded {
                    "the backup has not caught up"
                } else {
                    "no backup connected"
                };
                format!("without a hand-over ({why})")
            }
        };
        self.log(
            LogLevel::Info,
            format!("stopping {how}: committing what is pending, then closing clients"),
        );
        self.draining = true;
        self.exit_requested = true;
        self.maybe_exit(actions);
    }

    fn on_connected(&mut self, conn: ConnId, addr: Option<std::net::SocketAddr>, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.conns.insert(
            conn,
            Box::new(Conn {
                addr,
                connected_ms: now_ms,
                session: None,
                nick: None,
                rooms: HashSet::new(),
                bucket: TokenBucket::new(self.config.rate_burst, now_ms),
                room_bucket: TokenBucket::new(self.config.access.room_rate_burst, now_ms),
                errors: 0,
                auth: AuthState::Open,
                violations: 0,
                violations_since_ms: now_ms,
            }),
        );
        // From the latest time seen, not this input's: workers report connections with
        // their own clocks, slightly out of order, and the deadlines expire front first.
        self.hello_deadlines
            .push_back((self.now_ms + self.config.hello_timeout_ms, conn));
    }

    fn on_tick(&mut self, now_ms: u64, mono_ms: u64, actions: &mut Vec<Action>) {
        self.now_ms = self.now_ms.max(now_ms);
        self.advance(mono_ms);
        if let Some(last) = self.last_tick_mono_ms {
            let gap_ms = mono_ms.saturating_sub(last);
            let threshold = self
                .pair()
                .map_or(u64::MAX, |p| (p.detection_ms / 2).max(STALL_MIN_MS));
            if gap_ms >= threshold {
                self.on_stall(gap_ms);
            }
        }
        self.last_tick_mono_ms = Some(mono_ms);
        self.on_pair_tick(actions);
        self.watch_storage(actions);
        self.review_held(actions);
        while let Some(&(deadline, conn)) = self.hello_deadlines.front() {
            if deadline > self.now_ms {
                break;
            }
            self.hello_deadlines.pop_front();
            let silent = |c: &Conn| c.session.is_none() && !matches!(c.auth, AuthState::Held(_));
            if self.conns.get(&conn).map(|c| &**c).is_some_and(silent) {
                self.error(
                    conn,
                    ErrorCode::BadRequest,
                    "no hello in time",
                    None,
                    actions,
                );
                self.close(conn, actions);
            }
        }
        while let Some(&(deadline, conn)) = self.auth_failures.front() {
            if deadline > self.now_ms {
                break;
            }
            self.auth_failures.pop_front();
            if self
                .conns
                .get(&conn)
                .is_some_and(|c| matches!(c.auth, AuthState::Refused))
            {
                // The same words whether the nick exists or not.
                let message = "hello: no valid token for this nick";
                self.error(conn, ErrorCode::Unauthorized, message, None, actions);
                self.close(conn, actions);
            }
        }
    }

    fn error(
        &self,
        conn: ConnId,
        code: ErrorCode,
        message: &str,
        id: Option<&str>,
        actions: &mut Vec<Action>,
    ) {
        let frame = encode_reply(&Reply::Error { code, message, id });
        actions.push(Action::Send {
            conn,
            frame: frame.into(),
        });
    }

    fn reply(&self, conn: ConnId, reply: &Reply, actions: &mut Vec<Action>) {
        actions.push(Action::Send {
            conn,
            frame: encode_reply(reply).into(),
        });
    }

    fn on_bad_frame(&mut self, conn: ConnId, error: DecodeError, actions: &mut Vec<Action>) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        self.error(
            conn,
            error.code,
            &error.message,
            error.id.as_deref(),
            actions,
        );
        if error.code == ErrorCode::TooLarge && error.id.is_none() {
            // An overlong line: the contract closes the connection.
            self.close(conn, actions);
            return;
        }
        self.count_error(conn, actions);
    }

    fn count_error(&mut self, conn: ConnId, actions: &mut Vec<Action>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.errors += 1;
        if c.errors >= self.config.max_errors {
            let message = format!("{} bad frames; closing", c.errors);
            self.error(conn, ErrorCode::BadRequest, &message, None, actions);
            self.close(conn, actions);
        }
    }

    /// Forgets a connection and tells the daemon to close it.
    fn close(&mut self, conn: ConnId, actions: &mut Vec<Action>) {
        if self.conns.contains_key(&conn) {
            self.forget_conn(conn, actions);
            actions.push(Action::Close { conn });
        }
    }

    fn on_kick(&mut self, nick: &str, reason: &str, actions: &mut Vec<Action>) {
        let Some(&conn) = self.nicks.get(nick) else {
            return;
        };
        let message = format!("closed by the operator: {reason}");
        self.error(conn, ErrorCode::Kicked, &message, None, actions);
        self.close(conn, actions);
        self.log(
            LogLevel::Info,
            format!("client {nick}: kicked by the operator: {reason}"),
        );
    }

    /// A connection has this nick now (`pbchatctl kick` says when none has).
    pub fn has_nick(&self, nick: &str) -> bool {
        self.nicks.contains_key(nick)
    }

    fn on_disconnected(&mut self, conn: ConnId, actions: &mut Vec<Action>) {
        self.forget_conn(conn, actions);
    }

    fn forget_conn(&mut self, conn: ConnId, actions: &mut Vec<Action>) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(session) = &c.session {
            if self.sessions.get(session) == Some(&conn) {
                self.sessions.remove(session);
            }
        }
        if let Some(nick) = &c.nick {
            if self.nicks.get(nick) == Some(&conn) {
                self.nicks.remove(nick);
            }
            for room in &c.rooms {
                self.remove_member(room, nick, conn, actions);
            }
        }
    }

    fn remove_member(
        &mut self,
        room: &Arc<str>,
        nick: &Arc<str>,
        conn: ConnId,
        actions: &mut Vec<Action>,
    ) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(nick);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
        actions.push(Action::Unsubscribe {
            conn,
            room: room.clone(),
        });
        let frame = encode_reply(&Reply::Presence {
            room,
            nick,
            event: "leave",
        });
        actions.push(Action::Presence {
            room: room.clone(),
            except: conn,
            frame: frame.into(),
        });
    }

    // Long because it is the one dispatch over every client `Request`, one short arm each.
    #[allow(clippy::too_many_lines)]
    fn on_request(&mut self, conn: ConnId, request: Request, actions: &mut Vec<Action>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let open = c.session.is_some();
        match c.auth {
            // It will be told and closed at its deadline; nothing it says matters now.
            AuthState::Refused => return,
            AuthState::Held(_) if !matches!(request, Request::Ping { .. } | Request::Quit) => {
                self.queue_behind_held(conn, request, actions);
                return;
            }
            AuthState::Verifying { .. } if !matches!(request, Request::Ping { .. }) => {
                self.error(
                    conn,
                    ErrorCode::BadRequest,
                    "hello: the token is being checked; wait for the answer",
                    None,
                    actions,
                );
                self.count_error(conn, actions);
                return;
            }
            _ => {}
        }
        match request {
            Request::Hello {
                nick,
                session,
                token,
                ..
            } => {
                if open {
                    self.error(
                        conn,
                        ErrorCode::BadRequest,
                        "hello: the session is already open",
                        None,
                        actions,
                    );
                    self.count_error(conn, actions);
                } else {
                    self.on_hello(conn, nick, session, token, actions);
                }
            }
            // Ping and quit need no session.
            Request::Ping { token } => self.reply(
                conn,
                &Reply::Pong {
                    token: token.as_ref(),
                },
                actions,
            ),
            Request::Quit => self.close(conn, actions),
            _ if !open => {
                self.error(
                    conn,
                    ErrorCode::BadRequest,
                    "the first frame must be hello",
                    send_id(&request),
                    actions,
                );
                self.count_error(conn, actions);
            }
            // Each fans out presence to a room or reads the log: paced per connection.
            Request::Join { .. } | Request::Leave { .. } | Request::History { .. }
                if !self.take_room_token(conn, actions) => {}
            Request::Join {
                room,
                after,
                after_epoch,
            } => self.on_join(conn, room, after, after_epoch, actions),
            Request::Leave { room } => self.on_leave(conn, room, actions),
            Request::Send { room, id, body } => self.on_send(conn, room, id, body, actions),
            Request::History {
                room,
                before,
                limit,
            } => {
                let before = before.unwrap_or(u64::MAX).min(self.head.saturating_add(1));
                actions.push(Action::History {
                    conn,
                    room: room.into(),
                    before,
                    upto: self.head,
                    limit,
                });
            }
        }
    }

    fn on_hello(
        &mut self,
        conn: ConnId,
        nick: String,
        session: String,
        token: Option<String>,
        actions: &mut Vec<Action>,
    ) {
        if !self.hold_hello(conn, &nick, &session, &token) {
            self.answer_hello(conn, nick, session, token, actions);
        }
    }

    /// Redirects, refuses, opens the session or starts checking the token.
    fn answer_hello(
        &mut self,
        conn: ConnId,
        nick: String,
        session: String,
        token: Option<String>,
        actions: &mut Vec<Action>,
    ) {
        if !self.may_open_session(conn, actions) {
            return;
        }
        let nick: Arc<str> = nick.into();
        let session: Arc<str> = session.into();
        if !self.config.access.auth_required {
            self.open_session(conn, nick, session, actions);
            return;
        }
        let c = self.conns.get_mut(&conn).expect("checked by caller");
        match token {
            Some(token) => {
                c.auth = AuthState::Verifying {
                    nick: nick.clone(),
                    session,
                };
                actions.push(Action::Authenticate { conn, nick, token });
            }
            None => self.refuse(conn),
        }
    }

    /// The verdict on a connection's token.
    fn on_authenticated(&mut self, conn: ConnId, ok: bool, actions: &mut Vec<Action>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let AuthState::Verifying { nick, session } =
            std::mem::replace(&mut c.auth, AuthState::Open)
        else {
            return;
        };
        if !ok {
            self.refuse(conn);
            return;
        }
        // The role may have changed while the token was checked.
        if self.may_open_session(conn, actions) {
            self.open_session(conn, nick, session, actions);
        }
    }

    /// Refuses `conn`'s hello: `unauthorized` follows after the failure delay.
    fn refuse(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.auth = AuthState::Refused;
            let deadline = self.now_ms + self.config.access.auth_failure_delay_ms;
            self.auth_failures.push_back((deadline, conn));
        }
    }

    /// Redirects (backup) or refuses (draining) a hello; true when a session may open here.
    fn may_open_session(&mut self, conn: ConnId, actions: &mut Vec<Action>) -> bool {
        if self.role != Role::Primary {
            let primary = self.known_primary();
            self.reply(
                conn,
                &Reply::Redirect {
                    primary,
                    epoch: self.epoch(),
                },
                actions,
            );
            self.close(conn, actions);
            return false;
        }
        if self.draining {
            self.error(
                conn,
                ErrorCode::Unavailable,
                "the node is shutting down",
                None,
                actions,
            );
            self.close(conn, actions);
            return false;
        }
        true
    }

    /// A backup whose primary has gone quiet (a heartbeat interval without word) may be about
    /// to take over: it holds the `hello` instead of redirecting the client to a primary that
    /// is probably gone. The client is answered as soon as this node knows who serves (it
    /// promotes: `welcome`; the primary speaks again: `redirect`), or with a redirect at
    /// [`HELLO_HOLD_MAX_MS`]. Without this, every client of a failed primary bounces between
    /// the nodes with growing back-off during detection and comes back up to a back-off step
    /// after the promotion (docs/benchmarks.md, "Capacity").
    fn hold_hello(
        &mut self,
        conn: ConnId,
        nick: &str,
        session: &str,
        token: &Option<String>,
    ) -> bool {
        let Some(hold_ms) = self.hello_hold_ms() else {
            return false;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        c.auth = AuthState::Held(Box::new(HeldHello {
            nick: nick.to_string(),
            session: session.to_string(),
            token: token.clone(),
            since_ms: self.mono_ms,
            until_ms: self.mono_ms + hold_ms,
            queued: Vec::new(),
        }));
        self.held.push_back(conn);
        true
    }

    /// How long a `hello` arriving now would be held: `None` unless this is a backup whose
    /// primary may be gone: its replication link is down (a primary that dies closes it at
    /// once), or it has been silent for a heartbeat interval or more (a stopped or cut-off
    /// one). Long enough to cover the rest of detection and the promotion.
    fn hello_hold_ms(&self) -> Option<u64> {
        let pair = self.pair()?;
        let quiet = self.mono_ms.saturating_sub(self.peer.last_heard_ms) >= pair.interval_ms;
        if self.role != Role::Backup || self.draining || !(quiet || self.link.is_none()) {
            return None;
        }
        Some((pair.detection_ms + 2 * pair.interval_ms).min(HELLO_HOLD_MAX_MS))
    }

    /// How long a client that wrote a frame waits, hearing nothing at all, before it asks the
    /// peer whether it took over: two heartbeat intervals, so that by the time the probe
    /// arrives the backup has missed a heartbeat of a stopped primary and holds the `hello`
    /// until it decides (`hello_hold_ms`), rather than redirecting back to the stopped node.
    fn probe_ms(&self) -> u64 {
        self.pair()
            .map_or(DEFAULT_PROBE_MS, |pair| 2 * pair.interval_ms)
    }

    /// A frame behind a held `hello` waits for the answer, within [`HELD_REQUESTS_MAX`].
    fn queue_behind_held(&mut self, conn: ConnId, request: Request, actions: &mut Vec<Action>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let AuthState::Held(held) = &mut c.auth else {
            return;
        };
        if matches!(request, Request::Hello { .. }) || held.queued.len() >= HELD_REQUESTS_MAX {
            self.error(
                conn,
                ErrorCode::BadRequest,
                "hello: this node answers once it knows which node serves; wait for the answer",
                send_id(&request),
                actions,
            );
            self.count_error(conn, actions);
            return;
        }
        held.queued.push(request);
    }

    /// Answers the held `hello`s whose answer is known: every one once this node is primary
    /// (or draining), each with a redirect once the peer has spoken since it was held (a
    /// primary that is alive after all sends a heartbeat every interval), and each at its own
    /// deadline.
    fn review_held(&mut self, actions: &mut Vec<Action>) {
        if self.held.is_empty() {
            return;
        }
        let settled = self.role != Role::Backup || self.draining;
        let heard_ms = self.peer.last_heard_ms;
        let mut kept = VecDeque::new();
        while let Some(conn) = self.held.pop_front() {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let AuthState::Held(held) = &c.auth else {
                continue;
            };
            if !settled && heard_ms <= held.since_ms && self.mono_ms < held.until_ms {
                kept.push_back(conn);
                continue;
            }
            let AuthState::Held(held) = std::mem::replace(&mut c.auth, AuthState::Open) else {
                unreachable!("matched above");
            };
            let HeldHello {
                nick,
                session,
                token,
                queued,
                ..
            } = *held;
            // Held past its deadline on a backup that is still not sure: the answer is the
            // usual redirect, naming the primary it last heard of.
            self.answer_hello(conn, nick, session, token, actions);
            for request in queued {
                self.on_request(conn, request, actions);
            }
        }
        self.held = kept;
    }

    /// Opens the session (taking it over from an older connection of the same nick).
    fn open_session(
        &mut self,
        conn: ConnId,
        nick: Arc<str>,
        session: Arc<str>,
        actions: &mut Vec<Action>,
    ) {
        let older = self.sessions.get(&session).copied();
        if let Some(older) = older {
            let held_by = self.conns.get(&older).and_then(|c| c.nick.clone());
            if held_by.as_deref() != Some(&*nick) {
                // A session is its nick's: another nick may not take it over (its message
                // ids, its acks).
                let message = format!("session {session} is held by another nick");
                self.error(conn, ErrorCode::Unauthorized, &message, None, actions);
                self.count_error(conn, actions);
                return;
            }
        }
        if let Some(&holder) = self.nicks.get(&nick) {
            if Some(holder) != older {
                let message = format!("nick {nick} is in use");
                self.error(conn, ErrorCode::NickInUse, &message, None, actions);
                self.count_error(conn, actions);
                return;
            }
        }
        if let Some(older) = older {
            // Session takeover: the newer connection wins, the older one is closed.
            self.close(older, actions);
        }
        let c = self.conns.get_mut(&conn).expect("checked by caller");
        c.session = Some(session.clone());
        c.nick = Some(nick.clone());
        self.sessions.insert(session, conn);
        self.nicks.insert(nick, conn);
        let reply = Reply::Welcome {
            version: crate::wire::client::PROTOCOL_VERSION,
            node: &self.config.node_id,
            role: self.role.as_str(),
            epoch: self.epoch(),
            head: self.head,
            peer: self.pair().map(|pair| pair.peer_client_address.as_str()),
            probe_ms: self.probe_ms(),
        };
        self.reply(conn, &reply, actions);
    }

    fn on_join(
        &mut self,
        conn: ConnId,
        room: String,
        after: Option<u64>,
        after_epoch: Option<u64>,
        actions: &mut Vec<Action>,
    ) {
        // The room's name is shared by its members and their subscriptions, not copied
        // for each join.
        let room: Arc<str> = match self.rooms.get_key_value(room.as_str()) {
            Some((name, _)) => name.clone(),
            None => room.into(),
        };
        let c = self.conns.get_mut(&conn).expect("checked by caller");
        let nick = c.nick.clone().expect("open session has a nick");
        let rejoin = c.rooms.contains(&room);
        if !rejoin && c.rooms.len() >= self.config.max_rooms_per_client {
            let message = format!(
                "already in {} rooms, the most this node allows",
                self.config.max_rooms_per_client
            );
            self.error(conn, ErrorCode::BadRequest, &message, None, actions);
            return;
        }
        let max_members = self.config.access.max_room_members;
        if !rejoin
            && self
                .rooms
                .get(&room)
                .is_some_and(|m| m.len() >= max_members)
        {
            let message = format!("room {room} is full ({max_members} members)");
            self.error(conn, ErrorCode::BadRequest, &message, None, actions);
            return;
        }
        let c = self.conns.get_mut(&conn).expect("checked by caller");
        c.rooms.insert(room.clone());
        let members = self.rooms.entry(room.clone()).or_default();
        members.insert(nick.clone());
        let names: Vec<&str> = members.iter().map(|m| &**m).collect();
        let joined = encode_reply(&Reply::Joined {
            room: &room,
            members: &names,
            head: self.head,
        });
        if rejoin {
            actions.push(Action::Unsubscribe {
                conn,
                room: room.clone(),
            });
        }
        actions.push(Action::Send {
            conn,
            frame: joined.into(),
        });
        let replay_after =
            after.map(|after| self.epochs.replay_point(after, after_epoch, self.head));
        actions.push(Action::Subscribe {
            conn,
            room: room.clone(),
            replay_after,
        });
        if !rejoin {
            let frame = encode_reply(&Reply::Presence {
                room: &room,
                nick: &nick,
                event: "join",
            });
            actions.push(Action::Presence {
                room,
                except: conn,
                frame: frame.into(),
            });
        }
    }

    fn on_leave(&mut self, conn: ConnId, room: String, actions: &mut Vec<Action>) {
        let room: Arc<str> = room.into();
        let c = self.conns.get_mut(&conn).expect("checked by caller");
        let nick = c.nick.clone().expect("open session has a nick");
        if c.rooms.remove(&room) {
            self.remove_member(&room, &nick, conn, actions);
        }
        self.reply(conn, &Reply::Left { room: &room }, actions);
    }

    /// Takes a token from `conn`'s bucket for `join`, `leave` and `history`, or answers
    /// `rate_limited` (the request is not carried out) and returns false.
    fn take_room_token(&mut self, conn: ConnId, actions: &mut Vec<Action>) -> bool {
        let access = &self.config.access;
        let (rate, burst) = (access.room_rate_per_sec, access.room_rate_burst);
        let now = self.now_ms;
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.room_bucket.take(rate, burst, now) {
            return true;
        }
        let refusal = (
            "join, leave and history requests",
            "too many join, leave and history requests; retry later",
        );
        self.refuse_rate(conn, refusal, None, actions);
        false
    }

    /// Answers `rate_limited` to a request one of `conn`'s buckets refused: `refusal` is
    /// (what was refused, in the plural; the message for one refusal). A client that keeps
    /// asking into refusals (`rate_violations_max` within the window) is cut off.
    fn refuse_rate(
        &mut self,
        conn: ConnId,
        (what, message): (&str, &str),
        id: Option<&str>,
        actions: &mut Vec<Action>,
    ) {
        self.rate_limited_total += 1;
        let now = self.now_ms;
        let access = &self.config.access;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if now.saturating_sub(c.violations_since_ms) >= access.rate_violations_window_ms {
            c.violations = 0;
            c.violations_since_ms = now;
        }
        c.violations += 1;
        if c.violations >= access.rate_violations_max {
            let message = format!(
                "{} {what} refused as too fast within {} ms; closing",
                c.violations, access.rate_violations_window_ms
            );
            self.error(conn, ErrorCode::RateLimited, &message, id, actions);
            self.close(conn, actions);
            return;
        }
        self.error(conn, ErrorCode::RateLimited, message, id, actions);
    }

    fn on_send(
        &mut self,
        conn: ConnId,
        room: String,
        id: String,
        body: String,
        actions: &mut Vec<Action>,
    ) {
        let c = self.conns.get(&conn).expect("checked by caller");
        let session = c.session.clone().expect("open session");
        let nick = c.nick.clone().expect("open session has a nick");
        if !c.rooms.contains(room.as_str()) {
            let message = format!("not joined to room {room}");
            self.error(conn, ErrorCode::NotJoined, &message, Some(&id), actions);
            return;
        }
        let key = self.dedup.key(&session, &id);
        if let Some(seq) = self.dedup.get_key(key) {
            // Already ordered: a committed one is acked again with its seq; a pending one
            // will be acked to the session's connection when it commits.
            if seq <= self.head {
                self.reply(conn, &Reply::Ack { id: &id, seq }, actions);
            }
            return;
        }
        if let Some((code, message)) = self.send_refused() {
            self.error(conn, code, message, Some(&id), actions);
            return;
        }
        // Last: a refused send takes no token.
        let (rate, burst, now) = (
            self.config.rate_per_sec,
            self.config.rate_burst,
            self.now_ms,
        );
        let c = self.conns.get_mut(&conn).expect("checked by caller");
        if !c.bucket.take(rate, burst, now) {
            let refusal = ("sends", "sending too fast; retry later");
            self.refuse_rate(conn, refusal, Some(&id), actions);
            return;
        }
        self.last_seq += 1;
        let entry = Entry {
            epoch: self.epoch(),
            seq: self.last_seq,
            ts_ms: self.now_ms,
            room,
            from: nick.to_string(),
            session: session.to_string(),
            id,
            body,
            orig: None,
        };
        self.dedup.insert_key(key, entry.seq);
        actions.push(Action::Append(entry.clone()));
        self.pending.push_back(Pending {
            entry,
            appended_ms: self.mono_ms,
        });
    }

    /// Why this node cannot order a send now, if it cannot: the error's code and words.
    fn send_refused(&mut self) -> Option<(ErrorCode, &'static str)> {
        if self.role != Role::Primary {
            return Some((ErrorCode::NotPrimary, "this node is not the primary"));
        }
        if self.draining {
            return Some((ErrorCode::Unavailable, "the node is shutting down"));
        }
        if self.fenced_since.is_some() {
            let message = "this node is confirming it is still the primary; retry";
            return Some((ErrorCode::Unavailable, message));
        }
        if let Some(message) = self.strict_refusal() {
            self.strict_on_send_refused();
            return Some((ErrorCode::Unavailable, message));
        }
        if self.pending.len() >= self.config.max_pending {
            let message = "too many messages waiting for storage; retry";
            return Some((ErrorCode::Unavailable, message));
        }
        None
    }

    fn on_durable(&mut self, seq: u64, actions: &mut Vec<Action>) {
        let seq = seq.min(self.last_seq);
        self.durable = self.durable.max(seq);
        if let Some(Link::ToPrimary { id }) = &self.link {
            actions.push(Action::AckPrimary {
                link: *id,
                durable_seq: self.durable,
            });
        }
        self.commit_ready(actions);
        self.maybe_handover(actions);
        self.maybe_exit(actions);
    }

    /// Commits every pending message the replication mode allows, in order.
    fn commit_ready(&mut self, actions: &mut Vec<Action>) {
        if self.role != Role::Primary {
            return;
        }
        let limit = self.commit_limit();
        if self.head < self.tail_commit {
            // Entries a promotion inherited: nobody waits for their ack here, but replays
            // must now reach them.
            let head = self.head.max(limit.min(self.tail_commit));
            if head > self.head {
                self.head = head;
                actions.push(Action::CommittedTo { seq: head });
            }
        }
        // A batch's acks go out before its messages, so the messages of one room stand
        // together and the daemon can hand them to each connection as one write. Every ack
        // and every message still follows its own commit.
        let mut published = Vec::new();
        while self.pending.front().is_some_and(|p| p.entry.seq <= limit) {
            let Pending { entry, .. } = self.pending.pop_front().expect("front exists");
            self.commit(entry, actions, &mut published);
        }
        actions.append(&mut published);
        self.check_resubmission(actions);
    }

    fn commit(&mut self, entry: Entry, actions: &mut Vec<Action>, published: &mut Vec<Action>) {
        assert_eq!(entry.seq, self.head + 1, "commits are in seq order");
        self.head = entry.seq;
        if let Some(&conn) = self.sessions.get(entry.session.as_str()) {
            self.reply(
                conn,
                &Reply::Ack {
                    id: &entry.id,
                    seq: entry.seq,
                },
                actions,
            );
        }
        let frame: Frame = encode_msg(&entry).into();
        published.push(Action::Publish {
            room: entry.room.into(),
            seq: entry.seq,
            frame,
        });
    }

    fn maybe_exit(&mut self, actions: &mut Vec<Action>) {
        if !self.exit_requested || self.exited || self.handover.is_some() {
            return;
        }
        // A primary commits what it ordered first (in sync mode that waits for the backup
        // or the degrade timeout).
        if self.role == Role::Primary && !self.pending.is_empty() {
            return;
        }
        self.exited = true;
        self.goodbye_all("shutdown", actions);
        actions.push(Action::Exit);
    }
}

// Tests are exempt from the length limit: a scenario or a simulator's router reads best as
// one story.
#[cfg(test)]
#[allow(clippy::too_many_lines)]
mod pair_tests;
#[cfg(test)]
mod sim;
#[cfg(test)]
#[allow(clippy::too_many_lines)]
mod strict_tests;
#[cfg(test)]
#[allow(clippy::too_many_lines)]
mod tests;
