//! Start-up wiring: reads the secret and TLS files, recovers the log into the node, binds
//! the listeners, spawns every thread and hands the driver its ends; and the stop, which
//! ends them in order. It keeps no state once the driver runs.
//!
//! Recovery and a start after kill -9 are one path: whatever a crash left behind (a torn
//! record, a stale admin socket, a held lock) is dealt with here, as at any start.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, never, Receiver, Sender};

use super::acceptor::{self, TlsSlot, WorkerHandle};
use super::error::DaemonError;
use super::heartbeat::{self, HeartbeatConfig, HeartbeatStats, Received};
use super::histogram::Latencies;
use super::io::{IoStats, Worker, WorkerLimits};
use super::link::{self, LinkContext, LinkSetup};
use super::per_ip::PerIp;
use super::queue::{self, QueueReceiver, QueueSender};
use super::role_view::RoleView;
use super::signals::{self, Signal};
use super::storage::{self, LogCommand, Progress, Writer};
use super::{admin, hooks, metrics, notify, spawn, state, verifier, web, witness_client};
use crate::auth::Users;
use crate::config::{AuthMode, Config, PeerConfig, Role};
use crate::core::epochs::EpochHistory;
use crate::core::link::handshake::LogView;
use crate::core::{AccessConfig, CoreConfig, Input, Node, PairConfig};
use crate::log::{Log, LogOptions, LogReader};
use crate::node_tls::LinkTls;
use crate::wire::keyring::Keyring;

/// Single inputs waiting for the core (from the link, witness, token-verifier and probe
/// threads; the I/O workers send batches, `WORKER_BATCHES_MAX`, and heartbeats have their
/// own channel). A sender waits while it is full. Memory follows the depth (`queue`; an
/// `Input` is about 100 bytes: a full queue holds about 400 KiB, an idle one a block at most).
const CORE_INPUTS_MAX: usize = 4_096;
/// Commands waiting for one I/O worker; the core blocks when it is full, which workers
/// never do, so it drains. Memory follows the depth (`queue`; a `bounded` channel's
/// 176-byte slots were 11.5 MiB a worker at start). Not smaller: at 4 096, a pair's
/// primary under N = 1000, P = 100 blocked on its busy worker long enough to fence itself
/// as stalled (519 ms) in 2 of 6 runs, none of 6 at 65 536 (`pbchat-bench fanout --target pair --members 1000
/// --senders 100 --verbose`).
pub(super) const WORKER_COMMANDS_MAX: usize = 65_536;
/// Batches of inputs (each at most `io::INPUT_BATCH_MAX`) waiting for the core from the I/O
/// workers; a worker holds its inputs back (and stops reading) while it is full.
const WORKER_BATCHES_MAX: usize = 64;
/// Heartbeats waiting for the core; a newer one follows within an interval.
const HEARTBEATS_MAX: usize = 64;
/// Commands waiting for the log writer, at most (appends are bounded by `log.max_pending`).
const LOG_COMMANDS_EXTRA: usize = 1_024;
/// Signals and admin requests waiting for the core; an operator sends them one at a time.
const SIGNALS_MAX: usize = 16;
/// A deep backlog absorbs the reconnect storm after a fail-over.
const LISTEN_BACKLOG: i32 = 4_096;
/// About what one log record of a short chat line takes on disk (a 64-byte body makes 147):
/// the log's size over this sizes the de-duplication index before recovery.
const RECORD_BYTES_TYPICAL: u64 = 128;

/// The files the node needs, read before anything starts so that a bad one stops the start
/// with its key.
pub(super) struct Secrets {
    users: Option<Users>,
    keys: Option<Arc<Keyring>>,
    client_tls: Option<TlsSlot>,
    link_tls: Option<LinkTls>,
}

impl Secrets {
    pub(super) fn read(config: &Config) -> Result<Secrets, DaemonError> {
        let users = match &config.auth.users_file {
            Some(path) => Some(Users::load(path)?),
            None => None,
        };
        let keys = match &config.peer {
            Some(p) => Some(Arc::new(crate::secret_file::load_keyring(&p.secret_file)?)),
            None => None,
        };
        let client_tls = match &config.client.tls {
            Some(identity) => Some(Arc::new(Mutex::new(crate::node_tls::client_listener(
                &config.file,
                identity,
            )?))),
            None => None,
        };
        let link_tls = match config.peer.as_ref().and_then(|p| p.link_tls.as_ref()) {
            Some(link) => Some(crate::node_tls::replication_link(&config.file, link)?),
            None => None,
        };
        Ok(Secrets {
            users,
            keys,
            client_tls,
            link_tls,
        })
    }
}

/// The pair as the core sees it.
fn pair_config(config: &Config) -> Option<PairConfig> {
    config.peer.as_ref().map(|p| PairConfig {
        rank: u64::from(config.node_id > p.id),
        peer_client_address: p.client_address.clone(),
        interval_ms: p.heartbeat_interval_ms,
        detection_ms: p.detection_ms(),
        mode: p.replication_mode,
        ack_timeout_ms: p.ack_timeout_ms,
        promotion_cooldown_ms: p.promotion_cooldown_ms,
        check_address: p.check_address.is_some(),
    })
}

/// The node before recovery, in the role it starts in: a paired node with history starts
/// as backup and finds the primary, or promotes when the peer stays silent. A new paired
/// node waits to hear its peer before serving, even when configured primary (the peer may
/// be primary already, or have used epochs this node cannot know), unless it is the
/// configured primary of a pair that never ran.
fn new_node(config: &Config, log_dir: &Path) -> Result<Node, DaemonError> {
    let loaded = state::load_epochs(&config.data_dir)?;
    let fresh = loaded.is_none() && !has_log(log_dir);
    let pair = pair_config(config);
    let role = if pair.is_some() {
        Role::Backup
    } else {
        Role::Primary
    };
    let (history, seen) = loaded.map_or((EpochHistory::default(), 0), |e| (e.history, e.seen));
    let paired = pair.is_some();
    let mut node = Node::new(core_config(config, pair), role, history, seen);
    if fresh && paired && config.role == Role::Primary {
        node.start_as_primary();
    }
    Ok(node)
}

/// Opens the log, replaying it into the node, and readies the node to run: its first
/// epoch, strict mode, the retention and the epochs file.
pub(super) fn recover(config: &Config) -> Result<(Node, Log), DaemonError> {
    let dir = config.data_dir.join("log");
    let mut node = new_node(config, &dir)?;
    let started = Instant::now();
    node.expect_recovered(
        (crate::log::bytes_estimate(&dir) / RECORD_BYTES_TYPICAL).min(config.log.retain_messages),
    );
    let options = LogOptions {
        dir: dir.clone(),
        segment_bytes: config.log.segment_bytes,
        retain_messages: config.log.retain_messages,
        retain_bytes: config.log.retain_bytes,
    };
    let log_error = |step| {
        let dir = dir.clone();
        move |source| DaemonError::Log { dir, step, source }
    };
    let (mut log, recovery) =
        Log::open(options, |entry| node.recover(entry)).map_err(log_error(""))?;
    if config.log.fsync != crate::log::FsyncMode::Never {
        // Every append is flushed: into zeroed blocks, a flush skips the journal.
        log.preallocate();
    }
    node.finish_recovery();
    // A primary without an epoch yet (new, or standalone after serving as backup) begins one.
    node.begin_first_epoch(pair_config(config).map_or(0, |p| p.rank));
    if let Some(strict) = config.peer.as_ref().and_then(|p| p.strict.as_ref()) {
        node.enable_strict(crate::core::strict::StrictConfig {
            lease_ms: strict.lease_ms,
            drift_ppm: strict.clock_drift_ppm,
        });
    }
    state::save_epochs(&config.data_dir, node.epochs(), node.seen_epoch())?;
    log.enforce_retention().map_err(log_error("retention: "))?;
    node.set_log_start(log.first_seq());
    for note in &recovery.notes {
        log::warn!("log recovery: {note}");
    }
    log::info!(
        "log recovered: {} messages (seq {}..{}), {} bytes cut, in {} ms",
        recovery.records,
        recovery.first_seq,
        recovery.last_seq,
        recovery.truncated_bytes,
        started.elapsed().as_millis()
    );
    Ok((node, log))
}

/// The core's view of a config: identity, limits and the pair.
pub(super) fn core_config(config: &Config, pair: Option<PairConfig>) -> CoreConfig {
    CoreConfig {
        node_id: config.node_id.clone(),
        role: config.role,
        peer_client_address: config.peer.as_ref().map(|p| p.client_address.clone()),
        hello_timeout_ms: config.client.hello_timeout_ms,
        rate_per_sec: config.client.rate_per_sec,
        rate_burst: config.client.rate_burst,
        max_errors: config.client.max_errors,
        max_rooms_per_client: config.client.max_rooms_per_client,
        max_pending: config.log.max_pending,
        pair,
        access: AccessConfig {
            auth_required: config.auth.mode == AuthMode::Token,
            auth_failure_delay_ms: config.auth.failure_delay_ms,
            max_room_members: config.client.max_room_members,
            rate_violations_max: config.client.rate_violations_max,
            rate_violations_window_ms: config.client.rate_violations_window_ms,
            room_rate_per_sec: config.client.room_rate_per_sec,
            room_rate_burst: config.client.room_rate_burst,
        },
    }
}

/// True when the log dir holds any segment (a node with history, even without an epochs file).
fn has_log(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".seg"))
    })
}

/// A TCP listener on `address`, which the config key `key` set; returns it with the
/// address it got (the port may be 0 in the config).
pub(super) fn bind(
    key: &'static str,
    address: SocketAddr,
) -> Result<(TcpListener, SocketAddr), DaemonError> {
    use socket2::{Domain, Socket, Type};
    let fail = |step| DaemonError::listen(key, address, step);
    let socket =
        Socket::new(Domain::for_address(address), Type::STREAM, None).map_err(fail("socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(fail("SO_REUSEADDR"))?;
    socket.bind(&address.into()).map_err(fail("bind"))?;
    socket.listen(LISTEN_BACKLOG).map_err(fail("listen"))?;
    let listener: TcpListener = socket.into();
    let bound = listener.local_addr().map_err(fail("local address"))?;
    Ok((listener, bound))
}

/// The handles that threads share with the driver, made once at start.
pub(super) struct Shared {
    /// The monotonic origin the core, the link sessions and the status share.
    pub base: Instant,
    /// Set once the driver has finished: the threads that poll it end.
    pub stopping: Arc<AtomicBool>,
    pub progress: Arc<Progress>,
    pub latencies: Arc<Latencies>,
    pub role: Arc<RoleView>,
    /// Open client connections, and the limit on them (a reload changes it).
    pub clients: Arc<AtomicUsize>,
    pub max_clients: Arc<AtomicUsize>,
    pub per_ip: Arc<PerIp>,
    pub io_stats: Arc<IoStats>,
    /// Both listeners number connections from one counter: ids route to workers.
    pub next_conn: Arc<AtomicU64>,
}

impl Shared {
    fn new(base: Instant, config: &Config, node: &Node, log: &Log) -> Shared {
        let progress = Arc::new(Progress::default());
        let (head, first_seq) = (node.head(), log.first_seq());
        let durable = storage::pack_durable(0, head);
        progress.durable.store(durable, Ordering::Release);
        progress
            .appended_seq
            .store(log.last_seq(), Ordering::Release);
        progress.first_seq.store(first_seq, Ordering::Release);
        // Filled before the link threads start: a dialer's first Hello must carry the
        // recovered log and epochs, or the primary would cut everything this node holds.
        let view = LogView {
            epoch: node.epoch(),
            seen_epoch: node.seen_epoch(),
            spans: node.epochs().spans().to_vec(),
            head,
            last_seq: node.last_seq(),
            first_seq: first_seq.max(1),
            log_stuck: false,
        };
        Shared {
            base,
            stopping: Arc::new(AtomicBool::new(false)),
            progress,
            latencies: Arc::new(Latencies::default()),
            role: Arc::new(RoleView::new(node.role() == Role::Primary, view)),
            clients: Arc::new(AtomicUsize::new(0)),
            max_clients: Arc::new(AtomicUsize::new(config.client.max_clients)),
            per_ip: Arc::new(PerIp::new(config.client.max_connections_per_ip)),
            io_stats: Arc::new(IoStats::default()),
            next_conn: Arc::new(AtomicU64::new(1)),
        }
    }
}

/// The driver's receiving ends, one per kind of event.
pub(super) struct Inbox {
    /// Single inputs: the link, witness, token-verifier and probe threads.
    pub inputs: QueueReceiver<Input>,
    /// The I/O workers' batches.
    pub batches: Receiver<Vec<Input>>,
    /// The log writer's "durable moved" wake-up (the seq is in `Progress`).
    pub durable: Receiver<()>,
    pub signals: Receiver<Signal>,
    /// Heartbeats from the peer; `never()` for a standalone node.
    pub heartbeats: Receiver<Received>,
}

/// What start-up hands the driver besides the node and the config.
pub(super) struct Wiring {
    pub shared: Shared,
    pub started_ms: u64,
    pub workers: Vec<WorkerHandle>,
    pub log: QueueSender<LogCommand>,
    pub client_tls: Option<TlsSlot>,
    pub verifier: Option<verifier::Verifier>,
    pub links: Option<Arc<LinkContext>>,
    pub inputs: QueueSender<Input>,
    pub ops: Arc<admin::Ops>,
    pub notifier: notify::Notifier,
    pub claims: Option<Sender<witness_client::ClaimRequest>>,
    pub hooks: Option<hooks::Hooks>,
}

/// The threads the stop waits for, and what it removes.
pub(super) struct Running {
    pub workers: Vec<JoinHandle<()>>,
    pub writer: JoinHandle<()>,
    pub stopping: Arc<AtomicBool>,
    pub admin_socket: PathBuf,
}

/// Everything started: the node and what the driver gets with it, its inbox, and what the
/// stop needs.
pub(super) struct Started {
    pub node: Node,
    pub config: Config,
    pub wiring: Wiring,
    pub inbox: Inbox,
    pub running: Running,
    /// Where clients connect and where metrics answer, for the lines that announce them.
    pub client_address: SocketAddr,
    pub metrics_address: Option<SocketAddr>,
}

/// Spawns every thread around `node` and builds the driver. `base` is the monotonic
/// origin, `started_ms` the wall-clock start (`started_at` in the status).
pub(super) fn start(
    config: Config,
    (base, started_ms): (Instant, u64),
    secrets: Secrets,
    (node, log): (Node, Log),
) -> Result<Started, DaemonError> {
    let (client_listener, client_address) = bind("client.listen", config.client.listen)?;
    let shared = Shared::new(base, &config, &node, &log);
    let reader = log.reader();
    let (inputs, inputs_rx) = queue::queue::<Input>(CORE_INPUTS_MAX);
    let (batches, batches_rx) = bounded::<Vec<Input>>(WORKER_BATCHES_MAX);
    let (log_writer, writer, durable, appended) = spawn_log_writer(&config, log, &shared)?;
    let verifier = spawn_verifier(&config, secrets.users, &inputs)?;
    let (workers, worker_threads) = spawn_workers(&config, &shared, &reader, &batches, &node)?;
    let client_tls = secrets.client_tls;
    spawn_acceptors(&config, client_listener, &workers, &shared, &client_tls)?;
    let pair = match (&config.peer, secrets.keys) {
        (Some(peer), Some(keys)) => Some(spawn_pair(
            &config,
            peer,
            keys,
            secrets.link_tls,
            &shared,
            &inputs,
            reader,
            appended,
        )?),
        _ => None,
    };
    let heartbeat_stats = pair.as_ref().map(|p| p.heartbeat_stats.clone());
    let operations = spawn_operations(&config, &shared, heartbeat_stats)?;
    let (heartbeats, links, claims) = match pair {
        Some(p) => (p.heartbeats, Some(p.links), p.claims),
        None => (never(), None, None),
    };
    let running = Running {
        workers: worker_threads,
        writer,
        stopping: shared.stopping.clone(),
        admin_socket: config.admin_socket.clone(),
    };
    let wiring = Wiring {
        shared,
        started_ms,
        workers,
        log: log_writer,
        client_tls,
        verifier,
        links,
        inputs,
        ops: operations.ops,
        notifier: notify::Notifier::from_env(),
        claims,
        hooks: operations.hooks,
    };
    Ok(Started {
        node,
        config,
        wiring,
        inbox: Inbox {
            inputs: inputs_rx,
            batches: batches_rx,
            durable,
            signals: operations.signals,
            heartbeats,
        },
        running,
        client_address,
        metrics_address: operations.metrics_address,
    })
}

/// The operator's side: what the driver keeps of it.
struct Operations {
    signals: Receiver<Signal>,
    ops: Arc<admin::Ops>,
    metrics_address: Option<SocketAddr>,
    hooks: Option<hooks::Hooks>,
}

/// The operator's threads: signals, the admin socket, metrics and the role-change hook.
fn spawn_operations(
    config: &Config,
    shared: &Shared,
    heartbeat_stats: Option<Arc<HeartbeatStats>>,
) -> Result<Operations, DaemonError> {
    let (signals_tx, signals) = bounded::<Signal>(SIGNALS_MAX);
    signals::spawn_signals(signals_tx.clone())?;
    let ops = Arc::new(
        admin::Ops::new(shared.base, shared.io_stats.clone(), heartbeat_stats)
            .with_latencies(shared.latencies.clone()),
    );
    admin::spawn(&config.admin_socket, ops.clone(), signals_tx)?;
    log::info!(
        "admin socket at {} (pbchatctl -c {} status)",
        config.admin_socket.display(),
        config.file.display()
    );
    let metrics_address = match config.metrics_listen {
        Some(listen) => Some(metrics::spawn(listen, ops.clone())?),
        None => None,
    };
    let hooks = match &config.role_change_hook {
        Some(program) => Some(hooks::Hooks::spawn(
            program.clone(),
            config.node_id.clone(),
        )?),
        None => None,
    };
    Ok(Operations {
        signals,
        ops,
        metrics_address,
        hooks,
    })
}

/// The log writer and the ends the driver and the link keep: its queue, and its wake-ups
/// for "durable moved" (the driver) and "appended moved" (the primary's link).
type LogWriterEnds = (
    QueueSender<LogCommand>,
    JoinHandle<()>,
    Receiver<()>,
    Receiver<()>,
);

fn spawn_log_writer(
    config: &Config,
    log: Log,
    shared: &Shared,
) -> Result<LogWriterEnds, DaemonError> {
    let (commands, commands_rx) =
        queue::queue::<LogCommand>(config.log.max_pending + LOG_COMMANDS_EXTRA);
    let (durable_wake, durable) = bounded::<()>(1);
    let (appended_wake, appended) = bounded::<()>(1);
    let writer = Writer {
        latencies: shared.latencies.clone(),
        log,
        mode: config.log.fsync,
        data_dir: config.data_dir.clone(),
        commands: commands_rx,
        progress: shared.progress.clone(),
        durable_wake,
        appended_wake,
    };
    let thread = spawn("log-writer", move || writer.run())?;
    Ok((commands, thread, durable, appended))
}

/// The token checkers, with `auth.mode = "token"`.
fn spawn_verifier(
    config: &Config,
    users: Option<Users>,
    inputs: &QueueSender<Input>,
) -> Result<Option<verifier::Verifier>, DaemonError> {
    let (Some(users), Some(path)) = (users, &config.auth.users_file) else {
        return Ok(None);
    };
    log::info!(
        "clients authenticate with tokens: {} users in {}",
        users.len(),
        path.display()
    );
    let verifier = verifier::Verifier::spawn(
        users,
        config.auth.verify_threads,
        config.auth.max_pending_verifies,
        inputs.clone(),
    )?;
    Ok(Some(verifier))
}

/// The client I/O workers (`io-N`): the driver's handles on them and their threads.
fn spawn_workers(
    config: &Config,
    shared: &Shared,
    reader: &LogReader,
    batches: &Sender<Vec<Input>>,
    node: &Node,
) -> Result<(Vec<WorkerHandle>, Vec<JoinHandle<()>>), DaemonError> {
    let site = config.web.as_ref().map(|w| {
        Arc::new(web::Site::new(
            &config.node_id,
            w,
            config.client.max_line_bytes,
            config.client.send_queue_bytes,
            config.client.tls.is_some(),
        ))
    });
    let limits = WorkerLimits {
        max_line_bytes: config.client.max_line_bytes,
        max_body_bytes: config.client.max_body_bytes,
        send_queue_bytes: config.client.send_queue_bytes,
        idle_timeout: Duration::from_millis(config.client.idle_timeout_ms),
    };
    let mut handles = Vec::new();
    let mut threads = Vec::new();
    for i in 0..config.client.io_threads {
        let (commands, commands_rx) = queue::queue(WORKER_COMMANDS_MAX);
        let (worker, waker) = Worker::new(
            commands_rx,
            batches.clone(),
            reader.clone(),
            limits.clone(),
            shared.clients.clone(),
            node.head(),
            shared.io_stats.clone(),
            shared.per_ip.clone(),
            site.clone(),
        )
        .map_err(DaemonError::Worker)?;
        threads.push(spawn(&format!("io-{i}"), move || worker.run())?);
        handles.push(WorkerHandle { commands, waker });
    }
    Ok((handles, threads))
}

/// The client listener's acceptor (`accept`) and, with `[web]`, the web page's
/// (`accept-web`); both deal connections to the same workers.
fn spawn_acceptors(
    config: &Config,
    client_listener: TcpListener,
    workers: &[WorkerHandle],
    shared: &Shared,
    client_tls: &Option<TlsSlot>,
) -> Result<(), DaemonError> {
    let client_kind = match client_tls {
        Some(slot) => acceptor::Listener::Tls(slot.clone()),
        None => acceptor::Listener::Plain,
    };
    let mut listeners = vec![("accept", client_listener, client_kind)];
    if let Some(w) = &config.web {
        let (web_listener, web_address) = bind("web.listen", w.listen)?;
        let scheme = if client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        log::info!("web page on {scheme}://{web_address}/");
        let kind = acceptor::Listener::Web(client_tls.clone());
        listeners.push(("accept-web", web_listener, kind));
    }
    for (name, listener, kind) in listeners {
        let workers: Vec<WorkerHandle> = workers
            .iter()
            .map(|h| WorkerHandle {
                commands: h.commands.clone(),
                waker: h.waker.clone(),
            })
            .collect();
        let admission = acceptor::Admission {
            clients: shared.clients.clone(),
            max_clients: shared.max_clients.clone(),
            next_conn: shared.next_conn.clone(),
            stop: shared.stopping.clone(),
            per_ip: shared.per_ip.clone(),
        };
        spawn(name, move || {
            acceptor::run(listener, workers, admission, kind)
        })?;
    }
    Ok(())
}

/// A paired node's threads' ends for the driver.
struct Pair {
    heartbeats: Receiver<Received>,
    heartbeat_stats: Arc<HeartbeatStats>,
    links: Arc<LinkContext>,
    claims: Option<Sender<witness_client::ClaimRequest>>,
}

/// The pair's threads: heartbeats, strict mode's witness client, the replication link's
/// listener and dialer.
// The pair's own inputs (its config, keys and TLS) beside the shared handles and the
// core's inbox and log: grouping them would only rename them.
#[allow(clippy::too_many_arguments)]
fn spawn_pair(
    config: &Config,
    peer: &PeerConfig,
    keys: Arc<Keyring>,
    link_tls: Option<LinkTls>,
    shared: &Shared,
    inputs: &QueueSender<Input>,
    reader: LogReader,
    appended: Receiver<()>,
) -> Result<Pair, DaemonError> {
    let (heartbeats_tx, heartbeats) = bounded::<Received>(HEARTBEATS_MAX);
    let heartbeat_stats = Arc::new(HeartbeatStats::default());
    let heartbeat = HeartbeatConfig {
        listen: peer.heartbeat_listen,
        peer: peer.heartbeat_address,
        peer_id: peer.id.clone(),
        node_id: config.node_id.clone(),
        interval_ms: peer.heartbeat_interval_ms,
    };
    heartbeat::spawn(
        heartbeat,
        keys.clone(),
        shared.role.clone(),
        heartbeats_tx,
        heartbeat_stats.clone(),
        shared.stopping.clone(),
    )?;
    let claims = match &peer.strict {
        Some(strict) => Some(witness_client::spawn(
            config.node_id.clone(),
            strict.witness,
            keys.clone(),
            inputs.clone(),
            shared.stopping.clone(),
            shared.base,
        )?),
        None => None,
    };
    let (repl_listener, _) = bind("replication.listen", peer.replication_listen)?;
    let setup = LinkSetup {
        node_id: config.node_id.clone(),
        peer_id: peer.id.clone(),
        keys,
        reader,
        progress: shared.progress.clone(),
        appended_wake: appended,
        inputs: inputs.clone(),
        role: shared.role.clone(),
        stopping: shared.stopping.clone(),
        window: peer.window,
        beat_interval: Duration::from_millis(peer.heartbeat_interval_ms),
        data_dir: config.data_dir.clone(),
        base: shared.base,
        latencies: shared.latencies.clone(),
    };
    let links = Arc::new(LinkContext::new(setup, link_tls));
    let ctx = links.clone();
    spawn("repl-listen", move || {
        link::run_listener(ctx, repl_listener)
    })?;
    let (ctx, address) = (links.clone(), peer.replication_address);
    spawn("repl-dial", move || link::run_dialer(ctx, address))?;
    Ok(Pair {
        heartbeats,
        heartbeat_stats,
        links,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_that_cannot_bind_names_its_own_key_and_address() {
        let (_held, address) = bind("client.listen", "127.0.0.1:0".parse().unwrap()).unwrap();
        let error = bind("replication.listen", address).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("replication.listen {address}: bind: ")),
            "{error}"
        );
    }
}
