//! The driver: the one `core` thread. It owns the [`Node`], takes inputs from its inbox
//! (one bounded channel each for single inputs, the I/O workers' batches, the log writer's
//! "durable moved", heartbeats and signals), steps the node, and routes the actions to the
//! log writer, the I/O workers and the replication links. After each turn it publishes the
//! role view and the status `pbchatctl` and metrics read.
//!
//! It must not block on anything but its bounded queues to the workers and the log writer,
//! which drain on their own.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use super::acceptor::{worker_of, TlsSlot, WorkerHandle};
use super::batch::{PublishBatch, Published};
use super::heartbeat::Received;
use super::io::Command;
use super::link::{LinkCommand, LinkContext};
use super::per_ip::PerIp;
use super::queue::{QueueReceiver, QueueSender};
use super::role_view::RoleView;
use super::signals::Signal;
use super::start::{Inbox, Running, Shared, Wiring};
use super::storage::{self, unpack_durable, LogCommand, Progress};
use super::{admin, histogram, hooks, logging, notify, spawn, verifier, wall_ms, witness_client};
use crate::config::{self, Config, Role};
use crate::core::{Action, Input, LogLevel, Node, SELF_LINK};
use crate::entry::Entry;

/// Inputs the core takes per turn before it routes their actions, so one busy client
/// cannot starve ticks.
const CORE_BATCH_MAX: usize = 1_024;
/// The core's tick: timeouts, failure detection, retention.
const TICK: Duration = Duration::from_millis(50);
/// The status for `pbchatctl` and metrics is rebuilt at least this often (and at once when
/// role, epoch, degraded, the backup link or a reload changes), never on every turn.
const STATUS_REFRESH: Duration = Duration::from_millis(100);
/// Grows to `log.max_pending` only under that much load (4096 covers a busy primary).
const ORDERED_INITIAL: usize = 4_096;

/// The core thread's state: the node and where its actions go. The fields `reload` uses
/// are `pub(super)`: it lives in the parent module.
pub(super) struct Driver {
    pub(super) node: Node,
    workers: Vec<WorkerHandle>,
    log: QueueSender<LogCommand>,
    progress: Arc<Progress>,
    pub(super) config: Config,
    /// Workers sent a command this turn; each is woken once per turn.
    woken: Vec<bool>,
    actions: Vec<Action>,
    retained_seq: u64,
    pub(super) clients: Arc<AtomicUsize>,
    pub(super) max_clients: Arc<AtomicUsize>,
    /// Connections per source address (the acceptor's table; its limit reloads).
    pub(super) per_ip: Arc<PerIp>,
    /// The client listener's TLS config, swapped by a reload; `None`: plain TCP.
    pub(super) client_tls: Option<TlsSlot>,
    /// Token checks, with `auth.mode = "token"`.
    pub(super) verifier: Option<verifier::Verifier>,
    /// What the heartbeat and link threads read; `publish` refreshes it after each turn.
    role: Arc<RoleView>,
    pub(super) links: Option<Arc<LinkContext>>,
    inputs: QueueSender<Input>,
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
    pub(super) reloads: u64,
    pub(super) last_reload: String,
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

/// What one turn's routing gathers: the appends and committed messages are sent in
/// batches, and every action of the turn shares one clock read.
struct Turn {
    exit: bool,
    appends: Vec<Entry>,
    batch: PublishBatch,
    at: Instant,
    primary: bool,
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
    pub(super) fn new(node: Node, config: Config, wiring: Wiring) -> Driver {
        let Shared {
            base,
            progress,
            latencies,
            role,
            clients,
            max_clients,
            per_ip,
            ..
        } = wiring.shared;
        let ordered = VecDeque::with_capacity(config.log.max_pending.min(ORDERED_INITIAL));
        Driver {
            node,
            woken: vec![false; wiring.workers.len()],
            workers: wiring.workers,
            log: wiring.log,
            progress,
            config,
            actions: Vec::new(),
            retained_seq: 0,
            clients,
            max_clients,
            per_ip,
            client_tls: wiring.client_tls,
            verifier: wiring.verifier,
            role,
            links: wiring.links,
            inputs: wiring.inputs,
            base,
            last_role: None,
            own_orphans: None,
            ops: wiring.ops,
            notifier: wiring.notifier,
            started_ms: wiring.started_ms,
            commits_total: 0,
            failovers_total: 0,
            reloads: 0,
            last_reload: String::new(),
            status_key: None,
            status_built: None,
            notify_key: None,
            peer_reachable: false,
            claims: wiring.claims,
            claims_dropped: logging::Throttle::new(1, Duration::from_secs(10)),
            hooks: wiring.hooks,
            ordered,
            latencies,
        }
    }

    /// Publishes the first status, then says where the node serves: tests and scripts read
    /// these lines (and the bound address: the port may be 0 in the config), so they come
    /// once the metrics and the admin socket answer with the node's real state.
    pub(super) fn announce(&mut self, client_address: SocketAddr, metrics: Option<SocketAddr>) {
        self.publish();
        self.publish_status(Instant::now());
        if let Some(bound) = metrics {
            log::info!("metrics on http://{bound}/metrics");
        }
        log::info!(
            "node {} serving as {} in epoch {} at head {}; clients on {client_address}",
            self.config.node_id,
            self.node.role().as_str(),
            self.node.epoch(),
            self.node.head(),
        );
        let ready = self.status_line();
        self.notifier.ready(&ready);
    }

    /// At the stop: closes the replication links.
    pub(super) fn close_links(&self) {
        if let Some(links) = &self.links {
            links.close_all();
        }
    }

    /// After the driver's last turn (the core said goodbye to every client): lets the
    /// workers flush it, then stops the rest and waits for the log writer.
    pub(super) fn stop(self, running: Running) {
        running.stopping.store(true, Ordering::Release);
        self.close_links();
        for worker in &self.workers {
            let _ = worker.commands.send(Command::Shutdown);
            let _ = worker.waker.wake();
        }
        for thread in running.workers {
            let _ = thread.join();
        }
        // The writer ends once the driver's queue to it is dropped and drained.
        drop(self);
        let _ = running.writer.join();
        admin::remove(&running.admin_socket);
    }
}

impl Driver {
    fn mono_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    pub(super) fn run(&mut self, inbox: &Inbox) {
        let Inbox {
            inputs,
            batches,
            durable,
            signals,
            heartbeats,
        } = inbox;
        let mut next_tick = Instant::now();
        let mut stopping = false;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            select! {
                recv(inputs.channel()) -> input => {
                    let Some(input) = inputs.selected(input) else { return };
                    // An overdue tick goes first: after a stall the node must learn it
                    // stalled before it acts on what piled up meanwhile.
                    self.tick_if_due(&mut next_tick);
                    self.on_inputs(input, inputs);
                }
                recv(batches) -> batch => {
                    let Ok(batch) = batch else { return };
                    self.tick_if_due(&mut next_tick);
                    self.on_batches(batch, batches);
                }
                recv(durable) -> _ => {
                    self.tick_if_due(&mut next_tick);
                    self.on_durable();
                }
                recv(heartbeats) -> received => {
                    self.tick_if_due(&mut next_tick);
                    if let Ok(received) = received {
                        self.on_heartbeat(received);
                    }
                }
                recv(signals) -> signal => {
                    if let Ok(signal) = signal {
                        self.on_signal(signal, &mut stopping);
                    }
                }
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

    /// Steps `first` and up to `CORE_BATCH_MAX` more single inputs waiting.
    fn on_inputs(&mut self, first: Input, inputs: &QueueReceiver<Input>) {
        self.node.step(first, &mut self.actions);
        for _ in 1..CORE_BATCH_MAX {
            match inputs.try_recv() {
                Some(input) => self.node.step(input, &mut self.actions),
                None => break,
            }
        }
    }

    /// Steps `first` and further waiting batches while fewer than `CORE_BATCH_MAX` inputs
    /// were taken.
    fn on_batches(&mut self, first: Vec<Input>, batches: &Receiver<Vec<Input>>) {
        let mut taken = 0;
        let mut next = Some(first);
        while let Some(batch) = next.take() {
            taken += batch.len();
            for input in &batch {
                self.node.prefetch(input);
            }
            for input in batch {
                self.node.step(input, &mut self.actions);
            }
            if taken < CORE_BATCH_MAX {
                next = batches.try_recv().ok();
            }
        }
    }

    /// The log writer made more durable (the seq is in `Progress`).
    fn on_durable(&mut self) {
        let word = self.progress.durable.load(Ordering::Acquire);
        let (generation, seq) = unpack_durable(word);
        // Strict mode checks its lease at each commit against this clock.
        let mono_ms = self.mono_ms();
        self.node.step(Input::Clock { mono_ms }, &mut self.actions);
        self.node
            .step(Input::Durable { generation, seq }, &mut self.actions);
    }

    fn on_heartbeat(&mut self, Received { heartbeat, at }: Received) {
        let mono_ms = at.saturating_duration_since(self.base).as_millis() as u64;
        let input = Input::Heartbeat {
            primary: heartbeat.primary,
            epoch: heartbeat.epoch,
            head: heartbeat.head,
            mono_ms,
        };
        self.node.step(input, &mut self.actions);
    }

    /// A signal or an admin request; a second stop while `stopping` exits at once.
    fn on_signal(&mut self, signal: Signal, stopping: &mut bool) {
        match signal {
            Signal::Stop { from } if *stopping => {
                log::warn!("{from} while stopping: exiting at once, without waiting");
                std::process::exit(1);
            }
            Signal::Stop { from } => {
                *stopping = true;
                self.notifier.stopping();
                // The core's next line says how: a hand-over, or committing alone.
                log::info!("{from}: stopping");
                self.node.step(Input::Shutdown, &mut self.actions);
            }
            Signal::Reload { from } => {
                log::info!("{from}: re-reading {}", self.config.file.display());
                self.reload();
            }
            Signal::Drill { from } => {
                log::info!("{from}: fail-over drill");
                self.node.step(Input::Drill, &mut self.actions);
            }
            // A reply nobody waits for any more (the admin gave up) is dropped.
            Signal::Clients { max, reply } => {
                let _ = reply.try_send(self.node.client_list(max));
            }
            Signal::Rooms { max, reply } => {
                let _ = reply.try_send(self.node.room_list(max));
            }
            Signal::Kick {
                nick,
                reason,
                reply,
            } => {
                let found = self.node.has_nick(&nick);
                self.node
                    .step(Input::Kick { nick, reason }, &mut self.actions);
                let _ = reply.try_send(found);
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

    /// Shares the node's role, epoch, head and log with the heartbeat and link threads;
    /// on a role or epoch change, tells the dialer and the hook.
    fn publish(&mut self) {
        let node = &self.node;
        let first_seq = self.retained_seq.max(1);
        self.role.publish(node.role() == Role::Primary, |view| {
            view.epoch = node.epoch();
            view.seen_epoch = node.seen_epoch();
            view.head = node.head();
            view.last_seq = node.last_seq();
            view.first_seq = first_seq;
            view.log_stuck = node.log_stuck();
            if view.spans.as_slice() != node.epochs().spans() {
                view.spans = node.epochs().spans().to_vec();
            }
        });
        let now = (self.node.role(), self.node.epoch());
        if self.last_role != Some(now) {
            if self.last_role.is_some_and(|(role, _)| role == Role::Backup)
                && now.0 == Role::Primary
            {
                self.failovers_total += 1;
            }
            self.last_role = Some(now);
            self.ordered.clear();
            self.role.ring_changed();
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
    pub(super) fn status_line(&self) -> String {
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
        let status = self.status(now);
        self.ops.publish(status);
    }

    /// The peer as `pbchatctl status` and metrics show it; `None` for a standalone node.
    fn peer_info(&self) -> Option<admin::PeerInfo> {
        let node = &self.node;
        let primary = node.role() == Role::Primary;
        self.config.peer.as_ref().map(|p| {
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
        })
    }

    /// The status as of `now`, for `pbchatctl` and metrics.
    fn status(&self, now: Instant) -> admin::Status {
        let node = &self.node;
        let peer = self.peer_info();
        admin::Status {
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
        }
    }

    /// Carries out the turn's actions; true once the node may exit.
    fn route(&mut self) -> bool {
        let mut turn = Turn {
            exit: false,
            appends: Vec::new(),
            batch: PublishBatch::new(self.config.client.send_queue_bytes),
            at: Instant::now(),
            primary: self.node.role() == Role::Primary,
        };
        for action in std::mem::take(&mut self.actions) {
            if !matches!(action, Action::Publish { .. }) {
                // Anything else for a worker must follow the messages committed before it.
                if let Some(done) = turn.batch.take() {
                    self.send_published(done);
                }
            }
            self.route_one(action, &mut turn);
        }
        if let Some(done) = turn.batch.take() {
            self.send_published(done);
        }
        self.flush_appends(&mut turn.appends);
        for (i, woken) in self.woken.iter_mut().enumerate() {
            if std::mem::take(woken) {
                let _ = self.workers[i].waker.wake();
            }
        }
        turn.exit
    }

    fn route_one(&mut self, action: Action, turn: &mut Turn) {
        match action {
            Action::Publish { room, seq, frame } => {
                self.commits_total += 1;
                self.on_committed(seq, turn.at);
                if let Some(done) = turn.batch.push(room, seq, frame) {
                    self.send_published(done);
                }
            }
            Action::Append(entry) => {
                if turn.primary {
                    self.on_ordered(entry.seq, turn.at);
                }
                turn.appends.push(entry);
            }
            Action::SaveEpochs { .. } | Action::Truncate { .. } | Action::RestartLog { .. } => {
                self.route_to_log(action, &mut turn.appends)
            }
            Action::Exit => turn.exit = true,
            Action::Presence { .. } | Action::CommittedTo { .. } => {
                for (i, worker) in self.workers.iter().enumerate() {
                    let _ = worker.commands.send(Command::Core(action.clone()));
                    self.woken[i] = true;
                }
            }
            Action::Authenticate { conn, nick, token } => self.authenticate(conn, nick, token),
            Action::Send { conn, .. }
            | Action::Close { conn }
            | Action::Subscribe { conn, .. }
            | Action::Unsubscribe { conn, .. }
            | Action::History { conn, .. } => self.send_to_worker(conn, action),
            Action::ResubmitDone { link, epoch, seq } if link == SELF_LINK => {
                self.own_resubmit_done(epoch, seq)
            }
            Action::AcceptBackup { .. }
            | Action::Handover { .. }
            | Action::TookOver { .. }
            | Action::ResubmitDone { .. }
            | Action::CloseLink { .. }
            | Action::AbortLink { .. }
            | Action::AckPrimary { .. } => self.route_to_link(action),
            Action::Probe => self.probe(),
            Action::Claim { request, epoch } => self.claim(request, epoch),
            // Published after the turn (see `publish`); the core logged why.
            Action::RoleChanged => {}
            Action::Log { level, message } => match level {
                LogLevel::Warn => log::warn!("{message}"),
                LogLevel::Info => log::info!("{message}"),
            },
        }
    }

    /// The log writer's commands other than appends, after the appends before them.
    fn route_to_log(&mut self, action: Action, appends: &mut Vec<Entry>) {
        self.flush_appends(appends);
        let command = match action {
            Action::SaveEpochs { spans, seen } => LogCommand::SaveEpochs { spans, seen },
            Action::Truncate { after_seq } => {
                self.ordered.clear();
                LogCommand::Truncate { after_seq }
            }
            Action::RestartLog { first_seq } => LogCommand::Restart { first_seq },
            other => unreachable!("not a log command: {other:?}"),
        };
        self.log_command(command);
    }

    /// An action for the one worker that owns `conn`.
    fn send_to_worker(&mut self, conn: u64, action: Action) {
        let i = worker_of(conn, self.workers.len());
        let _ = self.workers[i].commands.send(Command::Core(action));
        self.woken[i] = true;
    }

    /// Queues a token check; when the checkers are full, the client is told to try again
    /// and closed (the core forgets the connection once the worker reports it closed).
    fn authenticate(&mut self, conn: u64, nick: Arc<str>, token: String) {
        let queued = self
            .verifier
            .as_ref()
            .is_some_and(|v| v.submit(conn, nick, token));
        if queued {
            return;
        }
        use crate::wire::client::{encode_reply, ErrorCode, Reply};
        let frame = encode_reply(&Reply::Error {
            code: ErrorCode::Unavailable,
            message: "too many logins being checked; try again shortly",
            id: None,
        });
        self.send_to_worker(
            conn,
            Action::Send {
                conn,
                frame: frame.into(),
            },
        );
        self.send_to_worker(conn, Action::Close { conn });
    }

    /// This node's own kept-aside messages are re-committed up to `(epoch, seq)`: once the
    /// last one is, the orphans file they came from is consumed.
    fn own_resubmit_done(&mut self, epoch: u64, seq: u64) {
        if let Some((orig, bytes)) = self.own_orphans {
            if orig == (epoch, seq) {
                self.own_orphans = None;
                self.log_command(LogCommand::ConsumeOrphans { bytes });
            }
        }
    }

    /// The replication links' actions (nothing to do on a standalone node).
    fn route_to_link(&mut self, action: Action) {
        let Some(links) = &self.links else {
            return;
        };
        let (link, command) = match action {
            Action::AcceptBackup {
                link,
                truncate_after,
                restart_at,
            } => (
                link,
                LinkCommand::Accept {
                    truncate_after,
                    restart_at,
                },
            ),
            Action::Handover { link, epoch } => (link, LinkCommand::Handover { epoch }),
            Action::TookOver { link, epoch } => (link, LinkCommand::TookOver { epoch }),
            Action::ResubmitDone { link, epoch, seq } => {
                (link, LinkCommand::ResubmitDone { epoch, seq })
            }
            Action::CloseLink { link, reason } => return links.close(link, &reason),
            Action::AbortLink { link, reason } => return links.abort(link, &reason),
            Action::AckPrimary { link, durable_seq } => return links.ack(link, durable_seq),
            other => unreachable!("not a link action: {other:?}"),
        };
        links.command(link, command);
    }

    /// Strict mode: a claim for the witness threads; a full queue drops it (the core asks
    /// again at its next renewal).
    fn claim(&mut self, request: u64, epoch: u64) {
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
