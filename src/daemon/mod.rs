//! The daemon: the only code with threads, sockets, clocks and signals.
//!
//! Threads (see docs/architecture.md):
//! - `core`: owns the [`Node`]; takes inputs from one bounded channel, steps the node, and
//!   routes its actions to the log writer, the I/O workers and the replication links.
//! - `log-writer`: appends, fsyncs, cuts, saves epochs (see `storage`).
//! - `io-N`: client sockets on a mio poll each (see `io`).
//! - `accept`: accepts client connections and deals them to the workers.
//! - `heartbeat`: UDP heartbeats both ways (see `heartbeat`), when paired.
//! - `repl-*`: the replication link (see `link`), when paired.
//! - `witness-send`, `witness-recv`: strict mode's claims to the witness and its answers
//!   (see `witness_client`), when `failover.mode = "strict"`.
//! - `signals`: turns TERM/INT/HUP/USR1 into inputs; no work happens in a signal handler.
//! - `admin`: the admin socket for `pbchatctl` (see `admin`).
//! - `metrics`: the Prometheus endpoint, when `[metrics]` is set (see `metrics`).
//! - `verify-N`: argon2 token checks off the core and I/O threads, with `auth.mode = "token"`
//!   (see `verifier`).
//! - `hook`: runs `hooks.role_change` on role changes, when set (see `hooks`).
//!
//! Layout: `acceptor`, `io`, `storage`, `link`, `heartbeat`, `state` (epochs file,
//! data-dir lock), `logging`, `notify` (systemd), `admin`, `metrics`, `hooks`, `verifier`,
//! `witness_client` (strict mode), `witness` (the `pbchat-witness` process).

pub mod acceptor;
pub mod admin;
pub mod batch;
pub mod heartbeat;
pub mod histogram;
pub mod hooks;
pub mod io;
pub mod link;
mod link_stream;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod per_ip;
mod queue;
mod reload;
pub mod state;
pub mod storage;
pub mod verifier;
pub mod web;
pub mod witness;
pub mod witness_client;
pub mod witness_metrics;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, never, select, Receiver, Sender};

use crate::config::{self, AuthMode, Config, Role};
use crate::core::epochs::EpochHistory;
use crate::core::link::handshake::LogView;
use crate::core::{AccessConfig, Action, CoreConfig, Input, LogLevel, Node, PairConfig, SELF_LINK};
use crate::entry::Entry;
use crate::log::{Log, LogOptions};
use acceptor::{worker_of, WorkerHandle};
use batch::{PublishBatch, Published};
use heartbeat::{HeartbeatConfig, HeartbeatStats, LocalStatus, Received};
use io::{Command, Worker, WorkerLimits};
use link::{LinkCommand, LinkContext};
use storage::{unpack_durable, LogCommand, Progress, Writer};

/// Single inputs waiting for the core (from the link, heartbeat, witness and token
/// threads; the I/O workers send batches, `WORKER_BATCHES_MAX`). A bounded channel allocates and touches all its slots
/// at start (an `Input` slot is about 260 bytes: 1 MiB here), so the bound is resident
/// memory whether or not it is used.
const CORE_INPUTS_MAX: usize = 4_096;
/// Commands waiting for one I/O worker; the core blocks when it is full, which workers
/// never do, so it drains. Memory follows the depth (`queue`; a `bounded` channel's
/// 176-byte slots were 11.5 MiB a worker at start). Not smaller: at 4 096, a pair's
/// primary under N = 1000, P = 100 blocked on its busy worker long enough to fence itself
/// as stalled (519 ms) in 2 of 6 runs, none of 6 at 65 536 (`pbchat-bench fanout --target pair --members 1000
/// --senders 100 --verbose`).
const WORKER_COMMANDS_MAX: usize = 65_536;
/// Inputs the core takes per turn before it routes their actions, so one busy client
/// cannot starve ticks.
const CORE_BATCH_MAX: usize = 1_024;
/// Batches of inputs (each at most `io::INPUT_BATCH_MAX`) waiting for the core from the I/O
/// workers; a worker holds its inputs back (and stops reading) while it is full.
const WORKER_BATCHES_MAX: usize = 64;
/// The core's tick: timeouts, failure detection, retention.
const TICK: Duration = Duration::from_millis(50);
/// Heartbeats waiting for the core; a newer one follows within an interval.
const HEARTBEATS_MAX: usize = 64;
/// Commands waiting for the log writer, at most (appends are bounded by `log.max_pending`).
const LOG_COMMANDS_EXTRA: usize = 1_024;
/// The status for `pbchatctl` and metrics is rebuilt at least this often (and at once when
/// role, epoch, degraded, the backup link or a reload changes), never on every turn.
const STATUS_REFRESH: Duration = Duration::from_millis(100);

/// What the signal thread (and the admin socket) tells the core; `from` says who asked
/// (`SIGTERM from pid 812 (systemd)`, `pbchatctl failover`), for the line that says why the
/// node acts.
#[derive(Debug, Clone)]
enum Signal {
    Stop {
        from: String,
    },
    Reload {
        from: String,
    },
    Drill {
        from: String,
    },
    /// `pbchatctl clients`: up to `max` of the core's connections and how many more, on
    /// `reply` (bounded(1); the admin thread waits on it with a deadline).
    Clients {
        max: usize,
        reply: crossbeam_channel::Sender<(Vec<crate::core::ClientInfo>, usize)>,
    },
    /// `pbchatctl kick`: close the connection of `nick` with `reason`; `reply` says whether
    /// a connection had that nick.
    Kick {
        nick: String,
        reason: String,
        reply: crossbeam_channel::Sender<bool>,
    },
    /// `pbchatctl rooms`: the same for rooms and their member counts.
    Rooms {
        max: usize,
        reply: crossbeam_channel::Sender<(Vec<(String, usize)>, usize)>,
    },
}

pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// True when the log dir holds any segment (a node with history, even without an epochs file).
fn has_log(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".seg"))
    })
}

/// Runs the node until a signal stops it. Errors here are start-up failures, for people.
pub fn run(config: Config) -> Result<(), String> {
    let _lock = state::lock_data_dir(&config.data_dir)?;
    let base = Instant::now();
    let started_ms = wall_ms();
    let notifier = notify::Notifier::from_env();
    let log_dir = config.data_dir.join("log");
    let loaded = state::load_epochs(&config.data_dir)?;
    let fresh = loaded.is_none() && !has_log(&log_dir);
    let pair = config.peer.as_ref().map(|p| PairConfig {
        rank: u64::from(config.node_id > p.id),
        peer_client_address: p.client_address.clone(),
        interval_ms: p.heartbeat_interval_ms,
        detection_ms: p.detection_ms(),
        mode: p.replication_mode,
        ack_timeout_ms: p.ack_timeout_ms,
        promotion_cooldown_ms: p.promotion_cooldown_ms,
        check_address: p.check_address.is_some(),
    });
    let users = match &config.auth.users_file {
        Some(path) => {
            Some(crate::auth::Users::load(path).map_err(|e| format!("auth.users_file: {e}"))?)
        }
        None => None,
    };
    let keys = match &config.peer {
        Some(p) => Some(Arc::new(
            crate::secret_file::load_keyring(&p.secret_file).map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    // TLS files are read before anything starts, so a bad one stops the start with its key.
    let client_tls: Option<acceptor::TlsSlot> = match &config.client.tls {
        Some(identity) => Some(Arc::new(Mutex::new(
            crate::node_tls::client_listener(&config.file, identity).map_err(|e| e.to_string())?,
        ))),
        None => None,
    };
    let link_tls = match config.peer.as_ref().and_then(|p| p.link_tls.as_ref()) {
        Some(link) => {
            Some(crate::node_tls::replication_link(&config.file, link).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let rank = pair.as_ref().map_or(0, |p| p.rank);
    // Where the node starts: a paired node with history starts as backup and finds the
    // primary, or promotes when the peer stays silent; a new one takes its configured role.
    let (role, history, seen) = match (&pair, loaded) {
        (None, Some(e)) => (Role::Primary, e.history, e.seen),
        (None, None) => (Role::Primary, EpochHistory::default(), 0),
        (Some(_), Some(e)) => (Role::Backup, e.history, e.seen),
        // A new node waits to hear its peer before serving, even when configured primary:
        // the peer may be primary already, or have used epochs this node cannot know.
        (Some(_), None) if fresh => (Role::Backup, EpochHistory::default(), 0),
        (Some(_), None) => (Role::Backup, EpochHistory::default(), 0),
    };

    let core_config = core_config(&config, pair.clone());
    let mut node = Node::new(core_config, role, history, seen);
    if fresh && pair.is_some() && config.role == Role::Primary {
        node.start_as_primary();
    }
    let started = Instant::now();
    node.expect_recovered(
        (dir_bytes(&log_dir) / RECORD_BYTES_TYPICAL).min(config.log.retain_messages),
    );
    let (mut log, recovery) = Log::open(
        LogOptions {
            dir: log_dir.clone(),
            segment_bytes: config.log.segment_bytes,
            retain_messages: config.log.retain_messages,
            retain_bytes: config.log.retain_bytes,
        },
        |entry| node.recover(entry),
    )
    .map_err(|e| format!("log {}: {e}", log_dir.display()))?;
    node.finish_recovery();
    // A primary without an epoch yet (new, or standalone after serving as backup) begins one.
    node.begin_first_epoch(rank);
    if let Some(strict) = config.peer.as_ref().and_then(|p| p.strict.as_ref()) {
        node.enable_strict(crate::core::strict::StrictConfig {
            lease_ms: strict.lease_ms,
            drift_ppm: strict.clock_drift_ppm,
        });
    }
    state::save_epochs(&config.data_dir, node.epochs(), node.seen_epoch())?;
    let reader = log.reader();
    log.enforce_retention()
        .map_err(|e| format!("log {}: retention: {e}", log_dir.display()))?;
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

    let listener = bind(config.client.listen)?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("client.listen {}: {e}", config.client.listen))?;

    let (input_tx, input_rx) = bounded::<Input>(CORE_INPUTS_MAX);
    let (batch_tx, batch_rx) = bounded::<Vec<Input>>(WORKER_BATCHES_MAX);
    let (log_tx, log_rx) = queue::queue::<LogCommand>(config.log.max_pending + LOG_COMMANDS_EXTRA);
    let (durable_tx, durable_rx) = bounded::<()>(1);
    let (appended_tx, appended_rx) = bounded::<()>(1);
    let progress = Arc::new(Progress::default());
    let latencies = Arc::new(histogram::Latencies::default());
    progress
        .durable
        .store(storage::pack_durable(0, node.head()), Ordering::Release);
    progress
        .appended_seq
        .store(log.last_seq(), Ordering::Release);
    progress.first_seq.store(log.first_seq(), Ordering::Release);
    let writer = spawn("log-writer", {
        let writer = Writer {
            latencies: latencies.clone(),
            log,
            mode: config.log.fsync,
            data_dir: config.data_dir.clone(),
            commands: log_rx,
            progress: progress.clone(),
            durable_wake: durable_tx,
            appended_wake: appended_tx,
        };
        move || writer.run()
    })?;

    let clients = Arc::new(AtomicUsize::new(0));
    let io_stats = Arc::new(io::IoStats::default());
    let max_clients = Arc::new(AtomicUsize::new(config.client.max_clients));
    let per_ip = Arc::new(per_ip::PerIp::new(config.client.max_connections_per_ip));
    let verifier = match users {
        Some(users) => {
            log::info!(
                "clients authenticate with tokens: {} users in {}",
                users.len(),
                config
                    .auth
                    .users_file
                    .as_ref()
                    .expect("token mode has a file")
                    .display()
            );
            Some(verifier::Verifier::spawn(
                users,
                config.auth.verify_threads,
                config.auth.max_pending_verifies,
                input_tx.clone(),
            )?)
        }
        None => None,
    };
    let site = config.web.as_ref().map(|w| {
        Arc::new(web::Site::new(
            &config.node_id,
            w,
            config.client.max_line_bytes,
            config.client.send_queue_bytes,
            client_tls.is_some(),
        ))
    });
    let limits = WorkerLimits {
        max_line_bytes: config.client.max_line_bytes,
        max_body_bytes: config.client.max_body_bytes,
        send_queue_bytes: config.client.send_queue_bytes,
        idle_timeout: Duration::from_millis(config.client.idle_timeout_ms),
    };
    let mut handles = Vec::new();
    let mut worker_threads = Vec::new();
    for i in 0..config.client.io_threads {
        let (tx, rx) = queue::queue(WORKER_COMMANDS_MAX);
        let (worker, waker) = Worker::new(
            rx,
            batch_tx.clone(),
            reader.clone(),
            limits.clone(),
            clients.clone(),
            node.head(),
            io_stats.clone(),
            per_ip.clone(),
            site.clone(),
        )
        .map_err(|e| format!("client I/O worker: {e}"))?;
        worker_threads.push(spawn(&format!("io-{i}"), move || worker.run())?);
        handles.push(WorkerHandle {
            commands: tx,
            waker,
        });
    }
    let stopping = Arc::new(AtomicBool::new(false));
    // Both listeners number connections from one counter: ids route to workers.
    let next_conn = Arc::new(AtomicU64::new(1));
    let mut listeners = vec![(
        "accept",
        listener,
        match &client_tls {
            Some(slot) => acceptor::Listener::Tls(slot.clone()),
            None => acceptor::Listener::Plain,
        },
    )];
    if let Some(w) = &config.web {
        let web_listener = bind(w.listen).map_err(|e| e.replace("client.listen", "web.listen"))?;
        let web_bound = web_listener
            .local_addr()
            .map_err(|e| format!("web.listen {}: {e}", w.listen))?;
        let scheme = if client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        log::info!("web page on {scheme}://{web_bound}/");
        listeners.push((
            "accept-web",
            web_listener,
            acceptor::Listener::Web(client_tls.clone()),
        ));
    }
    for (name, listener, kind) in listeners {
        let workers: Vec<WorkerHandle> = handles
            .iter()
            .map(|h| WorkerHandle {
                commands: h.commands.clone(),
                waker: h.waker.clone(),
            })
            .collect();
        let clients = clients.clone();
        let stop = stopping.clone();
        let max_clients = max_clients.clone();
        let next_conn = next_conn.clone();
        let per_ip = per_ip.clone();
        spawn(name, move || {
            acceptor::run(
                listener,
                workers,
                clients,
                max_clients,
                next_conn,
                stop,
                per_ip,
                kind,
            )
        })?;
    }

    // The pair: heartbeats and the replication link.
    let status = Arc::new(LocalStatus::new(
        node.role() == Role::Primary,
        node.epoch(),
        node.head(),
    ));
    let primary_flag = Arc::new(AtomicBool::new(node.role() == Role::Primary));
    // Filled before the link threads start: a dialer's first Hello must carry the recovered
    // log and epochs, or the primary would cut everything this node holds.
    let snapshot = Arc::new(Mutex::new(LogView {
        epoch: node.epoch(),
        seen_epoch: node.seen_epoch(),
        spans: node.epochs().spans().to_vec(),
        head: node.head(),
        last_seq: node.last_seq(),
        first_seq: progress.first_seq.load(Ordering::Acquire).max(1),
        log_stuck: false,
    }));
    let (heartbeat_tx, heartbeat_rx) = bounded::<Received>(HEARTBEATS_MAX);
    let (role_tx, role_rx) = bounded::<()>(1);
    let mut links = None;
    let mut heartbeat_stats = None;
    let mut claims = None;
    if let (Some(peer), Some(keys)) = (&config.peer, &keys) {
        let stats = Arc::new(HeartbeatStats::default());
        heartbeat::spawn(
            HeartbeatConfig {
                listen: peer.heartbeat_listen,
                peer: peer.heartbeat_address,
                peer_id: peer.id.clone(),
                node_id: config.node_id.clone(),
                interval_ms: peer.heartbeat_interval_ms,
            },
            keys.clone(),
            status.clone(),
            heartbeat_tx,
            stats.clone(),
            stopping.clone(),
        )
        .map_err(|e| e.to_string())?;
        heartbeat_stats = Some(stats);
        if let Some(strict) = &peer.strict {
            claims = Some(witness_client::spawn(
                config.node_id.clone(),
                strict.witness,
                keys.clone(),
                input_tx.clone(),
                stopping.clone(),
                base,
            )?);
        }
        let repl_listener = bind(peer.replication_listen)
            .map_err(|e| e.replace("client.listen", "replication.listen"))?;
        let ctx = Arc::new(LinkContext::new(
            config.node_id.clone(),
            peer.id.clone(),
            keys.clone(),
            reader.clone(),
            progress.clone(),
            appended_rx,
            input_tx.clone(),
            snapshot.clone(),
            primary_flag.clone(),
            stopping.clone(),
            peer.window,
            Duration::from_millis(peer.heartbeat_interval_ms),
            config.data_dir.clone(),
            base,
            link_tls,
            latencies.clone(),
        ));
        {
            let ctx = ctx.clone();
            spawn("repl-listen", move || {
                link::run_listener(ctx, repl_listener)
            })?;
        }
        {
            let ctx = ctx.clone();
            let address = peer.replication_address;
            spawn("repl-dial", move || link::run_dialer(ctx, address, role_rx))?;
        }
        links = Some(ctx);
    } else {
        drop(heartbeat_tx);
        drop(appended_rx);
        drop(role_rx);
    }

    let (signal_tx, signal_rx) = bounded::<Signal>(16);
    spawn_signals(signal_tx.clone())?;
    let ops = Arc::new(
        admin::Ops::new(base, io_stats, heartbeat_stats).with_latencies(latencies.clone()),
    );
    admin::spawn(&config.admin_socket, ops.clone(), signal_tx)?;
    log::info!(
        "admin socket at {} (pbchatctl -c {} status)",
        config.admin_socket.display(),
        config.file.display()
    );
    let metrics_bound = match config.metrics_listen {
        Some(listen) => Some(metrics::spawn(listen, ops.clone())?),
        None => None,
    };
    let admin_socket = config.admin_socket.clone();
    // Grows to `log.max_pending` only under that much load (4096 covers a busy primary).
    let ordered_capacity = config.log.max_pending.min(4_096);
    let hooks = match &config.role_change_hook {
        Some(program) => Some(hooks::Hooks::spawn(
            program.clone(),
            config.node_id.clone(),
        )?),
        None => None,
    };

    let mut driver = Driver {
        node,
        workers: handles,
        log: log_tx,
        progress,
        config,
        woken: Vec::new(),
        actions: Vec::new(),
        retained_seq: 0,
        clients,
        max_clients,
        per_ip,
        client_tls,
        verifier,
        status,
        snapshot,
        primary_flag,
        role_changed: role_tx,
        links,
        inputs: input_tx,
        base,
        last_role: None,
        own_orphans: None,
        ops,
        notifier,
        started_ms,
        commits_total: 0,
        failovers_total: 0,
        reloads: 0,
        last_reload: String::new(),
        status_key: None,
        status_built: None,
        notify_key: None,
        peer_reachable: false,
        claims,
        claims_dropped: logging::Throttle::new(1, Duration::from_secs(10)),
        hooks,
        ordered: VecDeque::with_capacity(ordered_capacity),
        latencies,
    };
    driver.publish();
    driver.publish_status(Instant::now());
    // Announced once the status is published, so whoever reads these lines (tests, scripts)
    // finds the metrics and the admin socket answering with the node's real state.
    if let Some(bound) = metrics_bound {
        log::info!("metrics on http://{bound}/metrics");
    }
    // Tests and scripts read the bound address (the port may be 0 in the config) from here.
    log::info!(
        "node {} serving as {} in epoch {} at head {}; clients on {bound}",
        driver.config.node_id,
        driver.node.role().as_str(),
        driver.node.epoch(),
        driver.node.head(),
    );
    let ready = driver.status_line();
    driver.notifier.ready(&ready);
    let heartbeats = if driver.links.is_some() {
        heartbeat_rx
    } else {
        never()
    };
    driver.run(&input_rx, &batch_rx, &durable_rx, &signal_rx, &heartbeats);

    // The core said goodbye to every client: let the workers flush it, then stop the rest.
    stopping.store(true, Ordering::Release);
    if let Some(links) = &driver.links {
        links.close_all();
    }
    for worker in &driver.workers {
        let _ = worker.commands.send(Command::Shutdown);
        let _ = worker.waker.wake();
    }
    for thread in worker_threads {
        let _ = thread.join();
    }
    drop(driver);
    let _ = writer.join();
    admin::remove(&admin_socket);
    log::info!("stopped cleanly");
    Ok(())
}

/// The core's view of a config: identity, limits and the pair.
fn core_config(config: &Config, pair: Option<PairConfig>) -> CoreConfig {
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

fn spawn<F: FnOnce() + Send + 'static>(
    name: &str,
    f: F,
) -> Result<std::thread::JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| format!("cannot start thread {name}: {e}"))
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    use socket2::{Domain, Socket, Type};
    let fail = |what: &str, e: std::io::Error| format!("client.listen {addr}: {what}: {e}");
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .map_err(|e| fail("socket", e))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| fail("SO_REUSEADDR", e))?;
    socket.bind(&addr.into()).map_err(|e| fail("bind", e))?;
    // A deep backlog absorbs the reconnect storm after a fail-over.
    socket.listen(4096).map_err(|e| fail("listen", e))?;
    Ok(socket.into())
}

fn spawn_signals(tx: Sender<Signal>) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    use signal_hook::iterator::exfiltrator::WithOrigin;
    use signal_hook::low_level::siginfo::Cause;
    let mut signals =
        signal_hook::iterator::SignalsInfo::<WithOrigin>::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    spawn("signals", move || {
        for origin in signals.forever() {
            let from = signal_origin(
                origin.signal,
                origin.process.map(|p| p.pid),
                origin.cause == Cause::Kernel,
            );
            let what = match origin.signal {
                SIGHUP => Signal::Reload { from },
                SIGUSR1 => Signal::Drill { from },
                _ => Signal::Stop { from },
            };
            if tx.send(what).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

/// Who sent a signal, in words: `SIGTERM from pid 812 (systemd)`. The kernel sends the
/// SIGINT of a Ctrl-C typed in the node's terminal (no pid then).
fn signal_origin(signal: i32, pid: Option<i32>, by_kernel: bool) -> String {
    let name = signal_hook::low_level::signal_name(signal).unwrap_or("a signal");
    match pid.filter(|&pid| pid > 0) {
        Some(pid) => match process_name(pid) {
            Some(comm) => format!("{name} from pid {pid} ({comm})"),
            None => format!("{name} from pid {pid}"),
        },
        None if by_kernel => format!("{name} from the kernel (Ctrl-C in the node's terminal?)"),
        None => format!("{name} from an unknown sender"),
    }
}

/// A process's command name (`/proc/PID/comm`, at most 15 bytes), or `None` once it has
/// exited or cannot be read; control characters become `?` to keep the line one line.
fn process_name(pid: i32) -> Option<String> {
    use std::io::Read;
    /// More than the kernel's TASK_COMM_LEN (16): a bound, not a limit that bites.
    const COMM_MAX_BYTES: u64 = 64;
    let mut bytes = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/comm"))
        .ok()?
        .take(COMM_MAX_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    let name: String = String::from_utf8_lossy(&bytes)
        .trim_end_matches('\n')
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The core thread's state: the node and where its actions go.
struct Driver {
    node: Node,
    workers: Vec<WorkerHandle>,
    log: queue::QueueSender<LogCommand>,
    progress: Arc<Progress>,
    config: Config,
    /// Workers sent a command this turn; each is woken once per turn.
    woken: Vec<bool>,
    actions: Vec<Action>,
    retained_seq: u64,
    clients: Arc<AtomicUsize>,
    max_clients: Arc<AtomicUsize>,
    /// Connections per source address (the acceptor's table; its limit reloads).
    per_ip: Arc<per_ip::PerIp>,
    /// The client listener's TLS config, swapped by a reload; `None`: plain TCP.
    client_tls: Option<acceptor::TlsSlot>,
    /// Token checks, with `auth.mode = "token"`.
    verifier: Option<verifier::Verifier>,
    status: Arc<LocalStatus>,
    snapshot: Arc<Mutex<LogView>>,
    primary_flag: Arc<AtomicBool>,
    role_changed: Sender<()>,
    links: Option<Arc<LinkContext>>,
    inputs: Sender<Input>,
    base: Instant,
    last_role: Option<(Role, u64)>,
    /// Own kept-aside messages being re-committed: the last one's orig, and the bytes of the
    /// orphans file they came from.
    own_orphans: Option<((u64, u64), u64)>,
    /// What `pbchatctl` and metrics read; rebuilt by `publish_status`.
    ops: Arc<admin::Ops>,
    notifier: notify::Notifier,
    /// Wall-clock ms at start, for `started_at` (uptime is measured on `base`).
    started_ms: u64,
    /// Messages committed (one `Publish` each) since start.
    commits_total: u64,
    /// Promotions to primary since start.
    failovers_total: u64,
    /// Reloads handled, and what the latest one said, for `pbchatctl reload`.
    reloads: u64,
    last_reload: String,
    /// What the published status was built from, and when: it is rebuilt when this changes
    /// or after `STATUS_REFRESH`.
    status_key: Option<StatusKey>,
    status_built: Option<Instant>,
    /// What the latest systemd STATUS line was built from.
    notify_key: Option<(Role, u64, bool, usize)>,
    /// The peer was heard within the detection time, as of the latest turn.
    peer_reachable: bool,
    /// Strict mode: claims for the witness threads (`witness_client`).
    claims: Option<Sender<witness_client::ClaimRequest>>,
    claims_dropped: logging::Throttle,
    /// `hooks.role_change`, when set: told of every (role, epoch) change.
    hooks: Option<hooks::Hooks>,
    /// Primary: (seq, when the core ordered it) of sends not yet committed, oldest first, for
    /// `send_ack`. At most `log.max_pending` (the core's own bound on pending entries;
    /// allocated once at start); cleared when the role or the log's history moves.
    ordered: VecDeque<(u64, Instant)>,
    latencies: Arc<histogram::Latencies>,
}

/// The values whose change republishes the status at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StatusKey {
    role: Role,
    epoch: u64,
    degraded: bool,
    link: bool,
    reloads: u64,
    last_change_ms: Option<u64>,
    /// `/role` follows it at once (a load balancer moves traffic on it).
    serving: bool,
}

impl Driver {
    fn mono_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn run(
        &mut self,
        inputs: &Receiver<Input>,
        batches: &Receiver<Vec<Input>>,
        durable: &Receiver<()>,
        signals: &Receiver<Signal>,
        heartbeats: &Receiver<Received>,
    ) {
        self.woken = vec![false; self.workers.len()];
        let mut next_tick = Instant::now();
        let mut stopping = false;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            select! {
                recv(inputs) -> input => {
                    let Ok(input) = input else { return };
                    // An overdue tick goes first: after a stall the node must learn it
                    // stalled before it acts on what piled up meanwhile.
                    self.tick_if_due(&mut next_tick);
                    self.node.step(input, &mut self.actions);
                    for _ in 1..CORE_BATCH_MAX {
                        match inputs.try_recv() {
                            Ok(input) => self.node.step(input, &mut self.actions),
                            Err(_) => break,
                        }
                    }
                }
                recv(batches) -> batch => {
                    let Ok(batch) = batch else { return };
                    self.tick_if_due(&mut next_tick);
                    let mut taken = 0;
                    let mut next = Some(batch);
                    while let Some(batch) = next.take() {
                        taken += batch.len();
                        for input in batch {
                            self.node.step(input, &mut self.actions);
                        }
                        if taken < CORE_BATCH_MAX {
                            next = batches.try_recv().ok();
                        }
                    }
                }
                recv(durable) -> _ => {
                    self.tick_if_due(&mut next_tick);
                    let word = self.progress.durable.load(Ordering::Acquire);
                    let (generation, seq) = unpack_durable(word);
                    // Strict mode checks its lease at each commit against this clock.
                    let mono_ms = self.mono_ms();
                    self.node.step(Input::Clock { mono_ms }, &mut self.actions);
                    self.node.step(Input::Durable { generation, seq }, &mut self.actions);
                }
                recv(heartbeats) -> received => {
                    self.tick_if_due(&mut next_tick);
                    if let Ok(Received { heartbeat, at }) = received {
                        let mono_ms = at.saturating_duration_since(self.base).as_millis() as u64;
                        self.node.step(
                            Input::Heartbeat {
                                primary: heartbeat.primary,
                                epoch: heartbeat.epoch,
                                head: heartbeat.head,
                                mono_ms,
                            },
                            &mut self.actions,
                        );
                    }
                }
                recv(signals) -> signal => match signal {
                    Ok(Signal::Stop { from }) if stopping => {
                        log::warn!("{from} while stopping: exiting at once, without waiting");
                        std::process::exit(1);
                    }
                    Ok(Signal::Stop { from }) => {
                        stopping = true;
                        self.notifier.stopping();
                        // The core's next line says how: a hand-over, or committing alone.
                        log::info!("{from}: stopping");
                        self.node.step(Input::Shutdown, &mut self.actions);
                    }
                    Ok(Signal::Reload { from }) => {
                        log::info!("{from}: re-reading {}", self.config.file.display());
                        self.reload();
                    }
                    Ok(Signal::Drill { from }) => {
                        log::info!("{from}: fail-over drill");
                        self.node.step(Input::Drill, &mut self.actions);
                    }
                    // A reply nobody waits for any more (the admin gave up) is dropped.
                    Ok(Signal::Clients { max, reply }) => {
                        let _ = reply.try_send(self.node.client_list(max));
                    }
                    Ok(Signal::Rooms { max, reply }) => {
                        let _ = reply.try_send(self.node.room_list(max));
                    }
                    Ok(Signal::Kick { nick, reason, reply }) => {
                        let found = self.node.has_nick(&nick);
                        self.node.step(Input::Kick { nick, reason }, &mut self.actions);
                        let _ = reply.try_send(found);
                    }
                    Err(_) => {}
                },
                default(timeout) => {}
            }
            self.tick_if_due(&mut next_tick);
            let exit = self.route();
            self.publish();
            self.after_turn();
            if exit {
                return;
            }
        }
    }

    fn tick_if_due(&mut self, next_tick: &mut Instant) {
        if Instant::now() < *next_tick {
            return;
        }
        *next_tick = Instant::now() + TICK;
        let tick = Input::Tick {
            now_ms: wall_ms(),
            mono_ms: self.mono_ms(),
        };
        self.node.step(tick, &mut self.actions);
        let first_seq = self.progress.first_seq.load(Ordering::Acquire);
        if first_seq > self.retained_seq {
            self.retained_seq = first_seq;
            self.node
                .step(Input::Retained { first_seq }, &mut self.actions);
        }
    }

    /// Shares the node's role, epoch and head with the heartbeat and link threads.
    fn publish(&mut self) {
        let primary = self.node.role() == Role::Primary;
        self.status.primary.store(primary, Ordering::Release);
        self.status
            .epoch
            .store(self.node.epoch(), Ordering::Release);
        self.status.head.store(self.node.head(), Ordering::Release);
        self.primary_flag.store(primary, Ordering::Release);
        {
            let mut snapshot = self.snapshot.lock().expect("snapshot lock");
            snapshot.epoch = self.node.epoch();
            snapshot.seen_epoch = self.node.seen_epoch();
            snapshot.head = self.node.head();
            snapshot.last_seq = self.node.last_seq();
            snapshot.first_seq = self.retained_seq.max(1);
            snapshot.log_stuck = self.node.log_stuck();
            if snapshot.spans.len() != self.node.epochs().spans().len()
                || snapshot.spans.as_slice() != self.node.epochs().spans()
            {
                snapshot.spans = self.node.epochs().spans().to_vec();
            }
        }
        let now = (self.node.role(), self.node.epoch());
        if self.last_role != Some(now) {
            if self.last_role.is_some_and(|(role, _)| role == Role::Backup)
                && now.0 == Role::Primary
            {
                self.failovers_total += 1;
            }
            self.last_role = Some(now);
            self.ordered.clear();
            let _ = self.role_changed.try_send(());
            if let Some(hooks) = &self.hooks {
                hooks.role_changed(hooks::RoleEvent {
                    role: now.0.as_str(),
                    epoch: now.1,
                    peer: self
                        .config
                        .peer
                        .as_ref()
                        .map_or_else(|| "none".to_string(), |p| p.id.clone()),
                });
            }
            if now.0 == Role::Primary {
                self.resubmit_own_orphans();
            }
        }
    }

    /// A node that kept messages aside (cut from its log after a lost history) and is now
    /// primary re-commits them itself: no backup session would ever send them.
    fn resubmit_own_orphans(&mut self) {
        let (batches, bytes) = match storage::read_orphans_with_len(&self.config.data_dir) {
            Ok(found) => found,
            Err(e) => {
                log::warn!("reading the orphans file: {e}");
                return;
            }
        };
        let Some(last) = batches.last().and_then(|b| b.last()) else {
            return;
        };
        self.own_orphans = Some((last.orig.unwrap_or((last.epoch, last.seq)), bytes));
        let count: usize = batches.iter().map(Vec::len).sum();
        log::info!("re-committing {count} messages this node kept aside");
        for entries in batches {
            self.node.step(
                Input::Resubmit {
                    link: SELF_LINK,
                    entries,
                },
                &mut self.actions,
            );
        }
    }

    /// Operations after each turn: peer up/down in the log, systemd status and watchdog,
    /// and the status `pbchatctl` and metrics read.
    fn after_turn(&mut self) {
        let now = Instant::now();
        self.note_peer();
        let key = (
            self.node.role(),
            self.node.epoch(),
            self.node.degraded(),
            self.node.clients(),
        );
        if self.notify_key != Some(key) {
            self.notify_key = Some(key);
            let line = self.status_line();
            self.notifier.status(line, now);
        } else {
            self.notifier.poll(now);
        }
        self.publish_status(now);
    }

    /// `<role> epoch <n>, head <n>, <k> clients[, degraded]`, for systemd's STATUS.
    fn status_line(&self) -> String {
        format!(
            "{} epoch {}, head {}, {} clients{}",
            self.node.role().as_str(),
            self.node.epoch(),
            self.node.head(),
            self.node.clients(),
            if self.node.degraded() {
                ", degraded"
            } else {
                ""
            }
        )
    }

    /// Logs the peer going silent and being heard again (heartbeats or link), once each.
    fn note_peer(&mut self) {
        let Some(peer) = &self.config.peer else {
            return;
        };
        let detection_ms = peer.detection_ms();
        let heard = self.node.peer_status().heard_ms;
        let now = self.mono_ms();
        let reachable = heard.is_some_and(|at| now.saturating_sub(at) < detection_ms);
        if reachable == self.peer_reachable {
            return;
        }
        self.peer_reachable = reachable;
        if reachable {
            log::info!("peer {}: up (heard from it)", peer.id);
        } else if let Some(at) = heard {
            log::warn!(
                "peer {}: down: silent for {} ms (detection time {detection_ms} ms)",
                peer.id,
                now.saturating_sub(at)
            );
        }
    }

    /// Rebuilds the shared status when something an operator watches changed, or after
    /// `STATUS_REFRESH`; otherwise costs one comparison.
    fn publish_status(&mut self, now: Instant) {
        let link = self.node.peer_status().link;
        let key = StatusKey {
            role: self.node.role(),
            epoch: self.node.epoch(),
            degraded: self.node.degraded(),
            link,
            reloads: self.reloads,
            last_change_ms: self.node.last_change().map(|c| c.at_ms),
            serving: self.node.serving(),
        };
        let fresh = self
            .status_built
            .is_some_and(|at| now.saturating_duration_since(at) < STATUS_REFRESH);
        if fresh && self.status_key == Some(key) {
            return;
        }
        self.status_key = Some(key);
        self.status_built = Some(now);
        let node = &self.node;
        let primary = node.role() == Role::Primary;
        let peer = self.config.peer.as_ref().map(|p| {
            let seen = node.peer_status();
            admin::PeerInfo {
                id: p.id.clone(),
                detection_ms: p.detection_ms(),
                replication_mode: match p.replication_mode {
                    config::ReplicationMode::Sync => "sync",
                    config::ReplicationMode::Async => "async",
                },
                heard_mono_ms: seen.heard_ms,
                primary: seen.primary,
                epoch: seen.epoch,
                head: seen.head,
                link: seen.link,
                acked: (primary && seen.link).then(|| node.peer_acked()),
                strict: p.strict.as_ref().zip(node.strict_status()).map(|(s, st)| {
                    admin::StrictInfo {
                        witness: s.witness.to_string(),
                        lease_until_mono_ms: (st.lease_left_ms > 0)
                            .then(|| self.mono_ms() + st.lease_left_ms),
                        witness_heard_mono_ms: st.witness_heard_ms,
                        bidding: st.bidding,
                        counts: st.counts,
                    }
                }),
            }
        });
        self.ops.publish(admin::Status {
            node: self.config.node_id.clone(),
            role: node.role().as_str(),
            epoch: node.epoch(),
            head: node.head(),
            last_seq: node.last_seq(),
            pending: node.pending(),
            degraded: node.degraded(),
            clients: node.clients(),
            rooms: node.rooms(),
            started_ms: self.started_ms,
            log_first_seq: self.progress.first_seq.load(Ordering::Acquire),
            log_last_seq: self.progress.appended_seq.load(Ordering::Acquire),
            fsync: match self.config.log.fsync {
                crate::log::FsyncMode::Always => "always",
                crate::log::FsyncMode::Batch => "batch",
                crate::log::FsyncMode::Never => "never",
            },
            peer,
            last_change: node.last_change().cloned(),
            commits_total: self.commits_total,
            failovers_total: self.failovers_total,
            rate_limited_total: node.rate_limited_total(),
            reloads: self.reloads,
            last_reload: self.last_reload.clone(),
            serving: node.serving(),
            serving_reason: node.not_serving_reason(),
            log_stuck: node.log_stuck(),
            built_at: Some(now),
        });
    }

    /// Carries out the turn's actions; true once the node may exit.
    fn route(&mut self) -> bool {
        let mut exit = false;
        let mut appends: Vec<Entry> = Vec::new();
        let n = self.workers.len();
        let actions = std::mem::take(&mut self.actions);
        let mut batch = PublishBatch::new(self.config.client.send_queue_bytes);
        // One clock read per turn: what the core ordered and committed in it shares it.
        let turn_at = Instant::now();
        let primary = self.node.role() == Role::Primary;
        for action in actions {
            if !matches!(action, Action::Publish { .. }) {
                // Anything else for a worker must follow the messages committed before it.
                if let Some(done) = batch.take() {
                    self.send_published(done);
                }
            }
            match action {
                Action::Publish { room, seq, frame } => {
                    self.commits_total += 1;
                    self.on_committed(seq, turn_at);
                    if let Some(done) = batch.push(room, seq, frame) {
                        self.send_published(done);
                    }
                }
                Action::Append(entry) => {
                    if primary {
                        self.on_ordered(entry.seq, turn_at);
                    }
                    appends.push(entry);
                }
                Action::SaveEpochs { spans, seen } => {
                    self.flush_appends(&mut appends);
                    self.log_command(LogCommand::SaveEpochs { spans, seen });
                }
                Action::Truncate { after_seq } => {
                    self.ordered.clear();
                    self.flush_appends(&mut appends);
                    self.log_command(LogCommand::Truncate { after_seq });
                }
                Action::RestartLog { first_seq } => {
                    self.flush_appends(&mut appends);
                    self.log_command(LogCommand::Restart { first_seq });
                }
                Action::Exit => exit = true,
                Action::Presence { .. } | Action::CommittedTo { .. } => {
                    for (i, worker) in self.workers.iter().enumerate() {
                        let _ = worker.commands.send(Command::Core(action.clone()));
                        self.woken[i] = true;
                    }
                }
                Action::Authenticate { conn, nick, token } => {
                    let queued = self
                        .verifier
                        .as_ref()
                        .is_some_and(|v| v.submit(conn, nick, token));
                    if !queued {
                        // The core forgets the connection once the worker reports it closed.
                        let frame =
                            crate::wire::client::encode_reply(&crate::wire::client::Reply::Error {
                                code: crate::wire::client::ErrorCode::Unavailable,
                                message: "too many logins being checked; try again shortly",
                                id: None,
                            });
                        let i = worker_of(conn, n);
                        for action in [
                            Action::Send {
                                conn,
                                frame: frame.into(),
                            },
                            Action::Close { conn },
                        ] {
                            let _ = self.workers[i].commands.send(Command::Core(action));
                        }
                        self.woken[i] = true;
                    }
                }
                Action::Send { conn, .. }
                | Action::Close { conn }
                | Action::Subscribe { conn, .. }
                | Action::Unsubscribe { conn, .. }
                | Action::History { conn, .. } => {
                    let i = worker_of(conn, n);
                    let _ = self.workers[i].commands.send(Command::Core(action));
                    self.woken[i] = true;
                }
                Action::AcceptBackup {
                    link,
                    truncate_after,
                    restart_at,
                } => self.link_command(
                    link,
                    LinkCommand::Accept {
                        truncate_after,
                        restart_at,
                    },
                ),
                Action::Handover { link, epoch } => {
                    self.link_command(link, LinkCommand::Handover { epoch })
                }
                Action::TookOver { link, epoch } => {
                    self.link_command(link, LinkCommand::TookOver { epoch })
                }
                Action::ResubmitDone { link, epoch, seq } if link == SELF_LINK => {
                    if let Some((orig, bytes)) = self.own_orphans {
                        if orig == (epoch, seq) {
                            self.own_orphans = None;
                            self.log_command(LogCommand::ConsumeOrphans { bytes });
                        }
                    }
                }
                Action::ResubmitDone { link, epoch, seq } => {
                    self.link_command(link, LinkCommand::ResubmitDone { epoch, seq })
                }
                Action::CloseLink { link, reason } => {
                    if let Some(links) = &self.links {
                        links.close(link, &reason);
                    }
                }
                Action::AbortLink { link, reason } => {
                    if let Some(links) = &self.links {
                        links.abort(link, &reason);
                    }
                }
                Action::AckPrimary { link, durable_seq } => {
                    if let Some(links) = &self.links {
                        links.ack(link, durable_seq);
                    }
                }
                Action::Probe => self.probe(),
                Action::Claim { request, epoch } => {
                    let full = self
                        .claims
                        .as_ref()
                        .is_some_and(|c| c.try_send((request, epoch)).is_err());
                    if full {
                        if let Some(n) = self.claims_dropped.allow(Instant::now()) {
                            log::warn!(
                                "witness: claim dropped, the sender is behind; the next renewal asks again{}",
                                logging::suppressed_note(n)
                            );
                        }
                    }
                }
                // Published after the turn (see `publish`); the core logged why.
                Action::RoleChanged => {}
                Action::Log { level, message } => match level {
                    LogLevel::Warn => log::warn!("{message}"),
                    LogLevel::Info => log::info!("{message}"),
                },
            }
        }
        if let Some(done) = batch.take() {
            self.send_published(done);
        }
        self.flush_appends(&mut appends);
        for (i, woken) in self.woken.iter_mut().enumerate() {
            if std::mem::take(woken) {
                let _ = self.workers[i].waker.wake();
            }
        }
        exit
    }

    /// Hands committed messages to every worker (each fans them out to its own subscribers).
    fn send_published(&mut self, published: Published) {
        for (i, worker) in self.workers.iter().enumerate() {
            let _ = worker.commands.send(Command::Publish(published.clone()));
            self.woken[i] = true;
        }
    }

    /// A send the primary ordered at `at`: its ack is timed from here (`send_ack`).
    fn on_ordered(&mut self, seq: u64, at: Instant) {
        if self.ordered.len() >= self.config.log.max_pending {
            self.ordered.pop_front();
        }
        self.ordered.push_back((seq, at));
    }

    /// `seq` committed at `at`: what was ordered up to it is done; its own wait is observed.
    fn on_committed(&mut self, seq: u64, at: Instant) {
        while let Some(&(ordered_seq, ordered_at)) = self.ordered.front() {
            if ordered_seq > seq {
                break;
            }
            self.ordered.pop_front();
            if ordered_seq == seq {
                self.latencies
                    .send_ack
                    .observe(at.saturating_duration_since(ordered_at));
            }
        }
    }

    fn flush_appends(&self, appends: &mut Vec<Entry>) {
        if !appends.is_empty() {
            self.log_command(LogCommand::Append(std::mem::take(appends)));
        }
    }

    fn log_command(&self, command: LogCommand) {
        // Bounded by max_pending plus the rare non-append commands: the writer drains it.
        let _ = self.log.send(command);
    }

    fn link_command(&self, link: u64, command: LinkCommand) {
        if let Some(links) = &self.links {
            links.command(link, command);
        }
    }

    /// Tries `failover.check_address` off the core thread.
    fn probe(&self) {
        let Some(peer) = &self.config.peer else {
            return;
        };
        let Some(address) = peer.check_address else {
            return;
        };
        let timeout = Duration::from_millis(peer.check_timeout_ms);
        let inputs = self.inputs.clone();
        let _ = spawn("probe", move || {
            let ok = std::net::TcpStream::connect_timeout(&address, timeout).is_ok();
            let _ = inputs.send(Input::ProbeResult { ok });
        });
    }
}

/// About what one log record of a short chat line takes on disk (a 64-byte body makes 147):
/// the log's size over this sizes the de-duplication index before recovery.
const RECORD_BYTES_TYPICAL: u64 = 128;

/// Bytes in the files directly inside `dir` (0 when it cannot be read: nothing is reserved).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
