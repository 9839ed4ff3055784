//! The daemon: the only code with threads, sockets, clocks and signals.
//!
//! Threads (see docs/architecture.md):
//! - `core`: owns the [`Node`]; takes inputs from one bounded channel, steps the node, and
//!   routes its actions to the log writer and the I/O workers.
//! - `log-writer`: appends and fsyncs (see `storage`).
//! - `io-N`: client sockets on a mio poll each (see `io`).
//! - `accept`: accepts connections and deals them to the workers.
//! - `signals`: turns TERM/INT/HUP/USR1 into inputs; no work happens in a signal handler.
//!
//! Layout: `acceptor`, `io`, `storage`, `state` (epochs file, data-dir lock), `logging`.

pub mod acceptor;
pub mod io;
pub mod logging;
pub mod state;
pub mod storage;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};

use crate::config::{self, Config};
use crate::core::{Action, CoreConfig, Input, Node};
use crate::entry::Entry;
use crate::log::{Log, LogOptions};
use acceptor::{worker_of, WorkerHandle};
use io::{Command, Worker, WorkerLimits};
use storage::Progress;

/// Inputs waiting for the core; workers hold back (and stop reading) when it is full.
const CORE_INPUTS_MAX: usize = 16_384;
/// Commands waiting for one I/O worker; the core blocks when it is full, which workers
/// never do, so it drains.
const WORKER_COMMANDS_MAX: usize = 65_536;
/// Inputs the core takes per turn before it routes their actions, so one busy client
/// cannot starve ticks.
const CORE_BATCH_MAX: usize = 1_024;
/// The core's tick: hello timeouts, retention.
const TICK: Duration = Duration::from_millis(100);

/// What the signal thread tells the core.
#[derive(Debug, Clone, Copy)]
enum Signal {
    Stop,
    Reload,
    Drill,
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the node until a signal stops it. Errors here are start-up failures, for people.
pub fn run(config: Config) -> Result<(), String> {
    let _lock = state::lock_data_dir(&config.data_dir)?;
    let epochs = state::load_epochs(&config.data_dir)?;
    let core_config = CoreConfig {
        node_id: config.node_id.clone(),
        role: config.role,
        peer_client_address: config.peer.as_ref().map(|p| p.client_address.clone()),
        hello_timeout_ms: config.client.hello_timeout_ms,
        rate_per_sec: config.client.rate_per_sec,
        rate_burst: config.client.rate_burst,
        max_errors: config.client.max_errors,
        max_rooms_per_client: config.client.max_rooms_per_client,
        max_pending: config.log.max_pending,
    };
    let mut node = Node::new(core_config, epochs);

    let started = Instant::now();
    let log_dir = config.data_dir.join("log");
    let (log, recovery) = Log::open(
        LogOptions {
            dir: log_dir.clone(),
            segment_bytes: config.log.segment_bytes,
            retain_messages: config.log.retain_messages,
            retain_bytes: config.log.retain_bytes,
        },
        |entry| node.recover(entry),
    )
    .map_err(|e| format!("log {}: {e}", log_dir.display()))?;
    // Retention may have been tightened since the last run.
    let mut log = log;
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
    // Tests and scripts read the bound address (the port may be 0 in the config) from here.
    log::info!(
        "node {} serving as {} in epoch {} at head {}; clients on {bound}",
        config.node_id,
        node.role().as_str(),
        node.epoch(),
        node.head(),
    );

    let (input_tx, input_rx) = bounded::<Input>(CORE_INPUTS_MAX);
    let (append_tx, append_rx) = bounded::<Vec<Entry>>(config.log.max_pending);
    let (durable_tx, durable_rx) = bounded::<()>(1);
    let progress = Arc::new(Progress::default());
    progress.durable_seq.store(node.head(), Ordering::Release);
    progress.first_seq.store(log.first_seq(), Ordering::Release);
    let reader = log.reader();
    let fsync = config.log.fsync;
    let writer = spawn("log-writer", {
        let progress = progress.clone();
        move || storage::run(log, fsync, append_rx, progress, durable_tx)
    })?;

    let clients = Arc::new(AtomicUsize::new(0));
    let limits = WorkerLimits {
        max_line_bytes: config.client.max_line_bytes,
        max_body_bytes: config.client.max_body_bytes,
        send_queue_bytes: config.client.send_queue_bytes,
        idle_timeout: Duration::from_millis(config.client.idle_timeout_ms),
    };
    let mut handles = Vec::new();
    let mut worker_threads = Vec::new();
    for i in 0..config.client.io_threads {
        let (tx, rx) = bounded(WORKER_COMMANDS_MAX);
        let (worker, waker) = Worker::new(
            rx,
            input_tx.clone(),
            reader.clone(),
            limits.clone(),
            clients.clone(),
            node.head(),
        )
        .map_err(|e| format!("client I/O worker: {e}"))?;
        worker_threads.push(spawn(&format!("io-{i}"), move || worker.run())?);
        handles.push(WorkerHandle {
            commands: tx,
            waker,
        });
    }
    let workers: Vec<WorkerHandle> = handles
        .iter()
        .map(|h| WorkerHandle {
            commands: h.commands.clone(),
            waker: h.waker.clone(),
        })
        .collect();
    let stop_accepting = Arc::new(AtomicBool::new(false));
    {
        let clients = clients.clone();
        let stop = stop_accepting.clone();
        let max_clients = config.client.max_clients;
        let next_conn = Arc::new(AtomicU64::new(1));
        spawn("accept", move || {
            acceptor::run(listener, workers, clients, max_clients, next_conn, stop)
        })?;
    }
    let (signal_tx, signal_rx) = bounded::<Signal>(16);
    spawn_signals(signal_tx)?;

    let mut driver = Driver {
        node,
        workers: handles,
        appends: append_tx,
        progress,
        config,
        woken: Vec::new(),
        actions: Vec::new(),
        retained_seq: 0,
        clients,
    };
    driver.run(&input_rx, &durable_rx, &signal_rx);

    // The core said goodbye to every client: let the workers flush it, then stop the writer.
    stop_accepting.store(true, Ordering::Release);
    for worker in &driver.workers {
        let _ = worker.commands.send(Command::Shutdown);
        let _ = worker.waker.wake();
    }
    for thread in worker_threads {
        let _ = thread.join();
    }
    drop(driver);
    let _ = writer.join();
    log::info!("stopped cleanly");
    Ok(())
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

fn bind(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, String> {
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
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    spawn("signals", move || {
        for signal in signals.forever() {
            let what = match signal {
                SIGHUP => Signal::Reload,
                SIGUSR1 => Signal::Drill,
                _ => Signal::Stop,
            };
            if tx.send(what).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

/// The core thread's state: the node and where its actions go.
struct Driver {
    node: Node,
    workers: Vec<WorkerHandle>,
    appends: Sender<Vec<Entry>>,
    progress: Arc<Progress>,
    config: Config,
    /// Workers sent a command this turn; each is woken once per turn.
    woken: Vec<bool>,
    actions: Vec<Action>,
    retained_seq: u64,
    clients: Arc<AtomicUsize>,
}

impl Driver {
    fn run(
        &mut self,
        inputs: &Receiver<Input>,
        durable: &Receiver<()>,
        signals: &Receiver<Signal>,
    ) {
        self.woken = vec![false; self.workers.len()];
        let mut next_tick = Instant::now() + TICK;
        let mut stopping = false;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            select! {
                recv(inputs) -> input => {
                    let Ok(input) = input else { return };
                    self.node.step(input, &mut self.actions);
                    for _ in 1..CORE_BATCH_MAX {
                        match inputs.try_recv() {
                            Ok(input) => self.node.step(input, &mut self.actions),
                            Err(_) => break,
                        }
                    }
                }
                recv(durable) -> _ => {
                    let seq = self.progress.durable_seq.load(Ordering::Acquire);
                    self.node.step(Input::Durable { seq }, &mut self.actions);
                }
                recv(signals) -> signal => match signal {
                    Ok(Signal::Stop) if stopping => {
                        log::warn!("second stop signal: exiting without waiting");
                        std::process::exit(1);
                    }
                    Ok(Signal::Stop) => {
                        stopping = true;
                        log::info!("stop signal: committing what is pending, then closing clients");
                        self.node.step(Input::Shutdown, &mut self.actions);
                    }
                    Ok(Signal::Reload) => self.reload(),
                    Ok(Signal::Drill) => log::warn!(
                        "SIGUSR1 (fail-over drill) needs a replicating backup; this node has none yet"
                    ),
                    Err(_) => {}
                },
                default(timeout) => {}
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + TICK;
                self.node
                    .step(Input::Tick { now_ms: wall_ms() }, &mut self.actions);
                let first_seq = self.progress.first_seq.load(Ordering::Acquire);
                if first_seq > self.retained_seq {
                    self.retained_seq = first_seq;
                    self.node
                        .step(Input::Retained { first_seq }, &mut self.actions);
                }
            }
            if self.route() {
                return;
            }
        }
    }

    /// Carries out the turn's actions; true once the node may exit.
    fn route(&mut self) -> bool {
        let mut exit = false;
        let mut appends = Vec::new();
        let n = self.workers.len();
        for action in self.actions.drain(..) {
            match action {
                Action::Append(entry) => appends.push(entry),
                Action::Exit => exit = true,
                Action::Publish { .. } | Action::Presence { .. } => {
                    for (i, worker) in self.workers.iter().enumerate() {
                        let _ = worker.commands.send(Command::Core(action.clone()));
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
            }
        }
        if !appends.is_empty() {
            // Bounded by max_pending, as the core never has more than that outstanding.
            let _ = self.appends.send(appends);
        }
        for (i, woken) in self.woken.iter_mut().enumerate() {
            if std::mem::take(woken) {
                let _ = self.workers[i].waker.wake();
            }
        }
        exit
    }

    /// HUP: re-reads the config file and applies what can change at run time.
    fn reload(&mut self) {
        let file = self.config.file.clone();
        match config::load(&file) {
            Err(e) => log::error!("reload refused, keeping the running config: {e}"),
            Ok(new) => {
                if new.log_level != self.config.log_level {
                    log::info!(
                        "reload: logging.level {:?} -> {:?}",
                        self.config.log_level,
                        new.log_level
                    );
                    log::set_max_level(new.log_level.to_filter());
                }
                let restart_needed = new.client.listen != self.config.client.listen
                    || new.data_dir != self.config.data_dir
                    || new.node_id != self.config.node_id;
                if restart_needed {
                    log::warn!(
                        "reload: node.id, node.data_dir and client.listen change only on restart"
                    );
                }
                log::info!(
                    "reloaded {} ({} clients connected)",
                    file.display(),
                    self.clients.load(Ordering::Relaxed)
                );
                self.config.log_level = new.log_level;
            }
        }
    }
}
