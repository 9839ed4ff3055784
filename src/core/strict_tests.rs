//! Strict mode under a seeded simulation: two real [`Node`]s and a real [`Witness`] on the
//! simulation harness (`core::sim`) and its event queue, a network that delays, drops and
//! partitions, processes that crash, restart
//! and stop (SIGSTOP), and clocks that run at slightly different rates. After every step
//! it checks the strict-mode promise: **at most one node commits at any moment**, in the
//! form "once a node committed in epoch E, no node ever commits in an older epoch".
//!
//! The emulation follows the daemon where it matters for that promise (`daemon::mod`'s
//! overdue tick first, `Input::Clock` before `Durable`; the real link frames between the
//! real link sessions (`core::link`), in order and held while the network is cut, as TCP
//! does; datagrams lost while it is cut) and leaves out what does not (log retention,
//! orphans, authentication). `STRICT_SEEDS=N` runs more seeds; a failure prints the command
//! that replays its seed (`STRICT_SEED=N STRICT_TRACE=1`, every fault and log line printed).

use std::time::Duration;

use super::link::sim::{pair_keys, LinkEnds, Segment};
use super::link::{LinkCommand, Next, NodeView};
use super::sim::{
    env_u64, link_work, replay_command, side, Clock, Disk, EventQueue, LinkWork, Network,
    PairKnobs, Rng, DETECTION_MS, INTERVAL_MS, NODE_IDS, REDIAL_MS, ROOM, TICK_MS, TIMING,
    WALL_BASE_MS, WITNESS as W,
};
use super::strict::StrictConfig;
use super::witness::{Granted, Verdict, Witness};
use super::ReplicationMode;
use super::*;
use crate::wire::client::decode_request;
use crate::wire::keyring::Keyring;
use crate::wire::replication::PeerFrame;

const LEASE_MS: u64 = 600;
/// What the nodes allow for; the simulated clocks stay within half of it.
const DRIFT_PPM: u64 = 10_000;
const CLOCK_SPREAD_PPM: u64 = 5_000;
const RUN_MS: u64 = 30_000;
/// Datagrams (heartbeats, claims, witness answers) each take 1-20 ms.
const LATENCY_MIN_MS: u64 = 1;
const LATENCY_MAX_MS: u64 = 20;
/// Datagrams lost at random in the fault runs. The calm runs lose none: two renewals lost
/// in a row let a lease lapse by design, and a scenario that asserts a primary keeps its
/// lease must not depend on where random losses fall.
const FAULT_LOSS_PERCENT: u64 = 5;

/// The pair settings of a run in `mode`.
fn knobs(mode: ReplicationMode) -> PairKnobs {
    PairKnobs {
        mode,
        ack_timeout_ms: 1_000,
        cooldown_ms: 0,
    }
}

/// Knobs of one run; the planted bugs prove the checker can fail.
#[derive(Clone, Copy, Debug)]
struct Setup {
    strict: bool,
    mode: ReplicationMode,
    /// Planted bug: the witness tells nodes this much longer a lease than it enforces.
    witness_overstates_ms: u64,
    /// The drift the nodes allow for.
    drift_ppm: u64,
    /// How far each simulated clock's rate may be from real time.
    clock_spread_ppm: u64,
    lease_ms: u64,
    /// Random faults; scenario tests inject their own instead.
    faults: bool,
}

impl Setup {
    fn strict() -> Self {
        Setup {
            strict: true,
            mode: ReplicationMode::Sync,
            witness_overstates_ms: 0,
            drift_ppm: DRIFT_PPM,
            clock_spread_ppm: CLOCK_SPREAD_PPM,
            lease_ms: LEASE_MS,
            faults: true,
        }
    }
}

#[derive(Clone, Debug)]
enum Event {
    /// The process's loop turns: an overdue tick runs, the dialer and streams move.
    Wake(usize),
    Heartbeat {
        to: usize,
        primary: bool,
        epoch: u64,
        head: u64,
    },
    Claim {
        from: usize,
        incarnation: u64,
        request: u64,
        epoch: u64,
    },
    Answer {
        to: usize,
        incarnation: u64,
        request: u64,
        verdict: Verdict,
    },
    Frame {
        link: usize,
        to: usize,
        frame: Segment,
    },
    Fsync {
        node: usize,
        generation: u64,
        seq: u64,
    },
    Client,
    Fault,
    Restart(usize),
    RestartWitness,
}

/// What the strict simulation keeps in a running pbchatd besides its core and timers.
#[derive(Debug)]
struct StrictProcess {
    /// Which start of a node this is: a witness answer to an earlier one is dropped.
    incarnation: u64,
    /// The client connection on this node, if open.
    conn: Option<ConnId>,
}

type Process = super::sim::Process<StrictProcess>;

struct SimNode {
    /// Orphans are left out here: a truncation's cut entries are dropped.
    disk: Disk,
    process: Option<Process>,
    /// Clock rate, in millionths of real time.
    rate_ppm: u64,
}

struct SimLink {
    open: [bool; 2],
    /// Latest due time per direction, so frames keep their order.
    last_due: [u64; 2],
    /// The handshake and the sessions at both ends.
    ends: LinkEnds,
}

struct SimWitness {
    granted: Granted,
    state: Option<Witness>,
    clock: Clock,
}

struct World {
    setup: Setup,
    /// The pair's secret, for the link's handshake.
    keys: Keyring,
    rng: Rng,
    now_ms: u64,
    queue: EventQueue<Event>,
    nodes: [SimNode; 2],
    witness: SimWitness,
    /// Between a (0), b (1) and the witness (W).
    network: Network,
    links: Vec<SimLink>,
    next_conn: ConnId,
    next_message: u64,
    incarnations: u64,
    /// The newest epoch any node committed in, and when and by whom.
    newest_commit: Option<(u64, u64, usize)>,
    commits: u64,
    /// Commits per node, and when each node last committed.
    committed_by: [u64; 2],
    last_commit_ms: [u64; 2],
    /// Sim time of the latest promotion, and `unavailable` answers to sends, per node.
    promoted_ms: Option<u64>,
    unavailable: [u64; 2],
    promotions: u64,
    violation: Option<String>,
    trace: bool,
}

impl World {
    fn new(seed: u64, setup: Setup) -> Self {
        let mut rng = Rng::new(seed);
        let spread = setup.clock_spread_ppm;
        let mut rate = || 1_000_000 - spread + rng.below(2 * spread + 1);
        let rates = [rate(), rate(), rate()];
        let node = |rate_ppm| SimNode {
            disk: Disk::default(),
            process: None,
            rate_ppm,
        };
        let mut world = World {
            setup,
            keys: pair_keys(),
            rng,
            now_ms: 0,
            queue: EventQueue::default(),
            nodes: [node(rates[0]), node(rates[1])],
            witness: SimWitness {
                granted: Granted::default(),
                state: None,
                clock: Clock::start(0, rates[2]),
            },
            network: Network {
                rng: Some(Rng::new(seed ^ 0x5EED)),
                latency_min_ms: LATENCY_MIN_MS,
                latency_max_ms: LATENCY_MAX_MS,
                loss_percent: if setup.faults { FAULT_LOSS_PERCENT } else { 0 },
                ..Network::calm()
            },
            links: Vec::new(),
            next_conn: 1,
            next_message: 1,
            incarnations: 0,
            newest_commit: None,
            commits: 0,
            committed_by: [0; 2],
            last_commit_ms: [0; 2],
            promoted_ms: None,
            unavailable: [0; 2],
            promotions: 0,
            violation: None,
            trace: std::env::var_os("STRICT_TRACE").is_some(),
        };
        world.start_witness();
        world.start(0, true);
        world.start(1, false);
        world.schedule(0, Event::Client);
        if setup.faults {
            world.schedule(2_000, Event::Fault);
        }
        world
    }

    fn schedule(&mut self, delay_ms: u64, event: Event) {
        self.schedule_at(self.now_ms + delay_ms, event);
    }

    fn schedule_at(&mut self, at_ms: u64, event: Event) {
        self.queue.schedule_at(at_ms, event);
    }

    /// A datagram from `from` to `to`: each copy that arrives is scheduled.
    fn send_datagram(&mut self, from: usize, to: usize, event: Event) {
        for delay in self.network.datagram(from, to) {
            self.schedule(delay, event.clone());
        }
    }

    fn note(&self, what: &str) {
        if self.trace {
            eprintln!("{:>6} ms: {what}", self.now_ms);
        }
    }

    fn mono(&self, i: usize) -> u64 {
        let p = self.nodes[i].process.as_ref().expect("running");
        p.clock.mono_ms(self.now_ms)
    }

    fn witness_mono(&self) -> u64 {
        self.witness.clock.mono_ms(self.now_ms)
    }

    fn start_witness(&mut self) {
        self.witness.clock = Clock::start(self.now_ms, self.witness.clock.rate_ppm);
        self.witness.state = Some(Witness::new(
            self.witness.granted.clone(),
            self.setup.lease_ms,
            self.witness_mono(),
        ));
    }

    fn start(&mut self, i: usize, configured_primary: bool) {
        let n = &mut self.nodes[i];
        let mut node = n.disk.recover(i, knobs(self.setup.mode));
        if configured_primary {
            node.start_as_primary();
        }
        if self.setup.strict {
            node.enable_strict(StrictConfig {
                lease_ms: self.setup.lease_ms,
                drift_ppm: self.setup.drift_ppm,
            });
        }
        self.incarnations += 1;
        let own = StrictProcess {
            incarnation: self.incarnations,
            conn: None,
        };
        n.process = Some(Process::start(node, self.now_ms, n.rate_ppm, own));
        self.schedule(0, Event::Wake(i));
    }

    fn crash(&mut self, i: usize) {
        if self.nodes[i].process.take().is_none() {
            return;
        }
        self.note(&format!("{} crashes", NODE_IDS[i]));
        for link in 0..self.links.len() {
            if self.links[link].open[i] {
                self.close_end(link, i);
            }
        }
        let delay = 100 + self.rng.below(3_000);
        self.schedule(delay, Event::Restart(i));
    }

    fn running(&self, i: usize) -> bool {
        self.nodes[i].process.is_some()
    }

    /// A stopped process reads nothing before it wakes: the event waits for it.
    fn stopped_until(&self, i: usize) -> Option<u64> {
        self.nodes[i]
            .process
            .as_ref()
            .and_then(|p| p.stopped_until)
            .filter(|&t| t > self.now_ms)
    }

    fn run(&mut self) {
        self.run_until(RUN_MS);
    }

    /// Runs every event due up to `until_ms` (or until the promise is broken).
    fn run_until(&mut self, until_ms: u64) {
        while self.violation.is_none() {
            let Some((at, event)) = self.queue.pop_due(until_ms) else {
                break;
            };
            self.now_ms = at;
            self.handle(event);
        }
        self.now_ms = self.now_ms.max(until_ms);
    }

    /// Runs until `done` holds, checking every 10 ms; false at `deadline_ms`.
    fn run_until_true(&mut self, deadline_ms: u64, done: impl Fn(&World) -> bool) -> bool {
        while self.now_ms < deadline_ms {
            if done(self) {
                return true;
            }
            self.run_until(self.now_ms + 10);
        }
        done(self)
    }

    fn role(&self, i: usize) -> Option<Role> {
        self.nodes[i].process.as_ref().map(|p| p.node.role())
    }

    fn head(&self, i: usize) -> u64 {
        self.nodes[i].process.as_ref().map_or(0, |p| p.node.head())
    }

    /// Node `i`'s strict-mode counters (what its metrics export).
    fn counts(&self, i: usize) -> super::strict::StrictCounts {
        let node = &self.nodes[i].process.as_ref().expect("running").node;
        node.strict_status().expect("strict mode").counts
    }

    /// Cuts (or heals) both directions between `x` and `y`.
    fn set_cut(&mut self, x: usize, y: usize, cut: bool) {
        self.network.set_cut(x, y, cut);
    }

    fn handle(&mut self, event: Event) {
        let target = match &event {
            Event::Wake(i) | Event::Fsync { node: i, .. } => Some(*i),
            Event::Heartbeat { to, .. } | Event::Answer { to, .. } | Event::Frame { to, .. } => {
                Some(*to)
            }
            _ => None,
        };
        if let Some(i) = target {
            if let Some(until) = self.stopped_until(i) {
                self.schedule_at(until, event);
                return;
            }
            if !self.running(i) {
                return;
            }
            self.tick_if_due(i);
        }
        self.on_event(event);
    }

    /// `event` reaches its process, which is running and ticked.
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Wake(i) => {
                self.turn(i);
                self.schedule(10, Event::Wake(i));
            }
            Event::Heartbeat {
                to,
                primary,
                epoch,
                head,
            } => {
                let mono_ms = self.mono(to);
                self.step(
                    to,
                    Input::Heartbeat {
                        primary,
                        epoch,
                        head,
                        mono_ms,
                    },
                );
            }
            Event::Claim {
                from,
                incarnation,
                request,
                epoch,
            } => self.on_claim(from, incarnation, request, epoch),
            Event::Answer {
                to,
                incarnation,
                request,
                verdict,
            } => self.on_answer(to, incarnation, request, verdict),
            Event::Frame { link, to, frame } => self.on_frame(link, to, frame),
            Event::Fsync {
                node,
                generation,
                seq,
            } => self.on_fsync(node, generation, seq),
            event => self.on_timer(event),
        }
    }

    /// The witness's answer to a claim of incarnation `incarnation` of node `to`.
    fn on_answer(&mut self, to: usize, incarnation: u64, request: u64, verdict: Verdict) {
        if self.nodes[to].process.as_ref().map(|p| p.own.incarnation) != Some(incarnation) {
            return;
        }
        let mono_ms = self.mono(to);
        let (granted, epoch, lease_ms) = match verdict {
            Verdict::Granted { epoch, lease_ms } => (true, epoch, lease_ms),
            Verdict::Refused { epoch, .. } => (false, epoch, 0),
        };
        let answer = Input::WitnessAnswer {
            request,
            granted,
            epoch,
            lease_ms,
            mono_ms,
        };
        self.step(to, answer);
    }

    /// An fsync completed: the daemon's driver reads the clock before it reports it.
    fn on_fsync(&mut self, node: usize, generation: u64, seq: u64) {
        let n = &mut self.nodes[node];
        if n.process.as_ref().expect("running").writer_generation == generation {
            n.disk.synced(seq);
        }
        let mono_ms = self.mono(node);
        self.step(node, Input::Clock { mono_ms });
        self.step(node, Input::Durable { generation, seq });
    }

    /// The schedule's own events: chat, faults, restarts.
    fn on_timer(&mut self, event: Event) {
        match event {
            Event::Client => {
                self.client();
                let delay = 10 + self.rng.below(40);
                self.schedule(delay, Event::Client);
            }
            Event::Fault => {
                self.fault();
                let delay = 300 + self.rng.below(2_500);
                self.schedule(delay, Event::Fault);
            }
            Event::Restart(i) => {
                if !self.running(i) {
                    self.note(&format!("{} restarts", NODE_IDS[i]));
                    self.start(i, false);
                }
            }
            Event::RestartWitness => {
                if self.witness.state.is_none() {
                    self.note("witness restarts");
                    self.start_witness();
                }
            }
            _ => unreachable!("on_event handles the rest"),
        }
    }

    fn tick_if_due(&mut self, i: usize) {
        let p = self.nodes[i].process.as_mut().expect("running");
        if let Some(tick) = p.tick_due(self.now_ms) {
            self.step(i, tick);
        }
    }

    /// One turn of a node's loop besides the tick: heartbeats, beats, dialing, streaming.
    fn turn(&mut self, i: usize) {
        let now = self.now_ms;
        let p = self.nodes[i].process.as_mut().expect("running");
        if now >= p.next_beat_ms {
            p.next_beat_ms = now + INTERVAL_MS * 9 / 10 + self.rng.below(INTERVAL_MS / 5);
            let (primary, epoch, head) = (
                p.node.role() == Role::Primary,
                p.node.epoch(),
                p.node.head(),
            );
            let heartbeat = Event::Heartbeat {
                to: 1 - i,
                primary,
                epoch,
                head,
            };
            self.send_datagram(i, 1 - i, heartbeat);
        }
        let p = self.nodes[i].process.as_mut().expect("running");
        let dialing = p.node.role() == Role::Backup
            && now >= p.redial_at_ms
            && !self.links.iter().any(|l| l.open[i]);
        if dialing {
            p.redial_at_ms = now + REDIAL_MS;
            let id = self.links.len() as LinkId + 1;
            let ends = LinkEnds::dial(id, i, TIMING, &node_side(&self.keys, &self.nodes, i));
            let hello = ends.hello();
            self.links.push(SimLink {
                open: [true, true],
                last_due: [0, 0],
                ends,
            });
            let link = self.links.len() - 1;
            if !self.running(1 - i) {
                self.links[link].open[1 - i] = false;
                self.send_frame_from_closed(link, i);
            } else {
                self.send_frame(link, i, hello);
            }
        }
        for link in 0..self.links.len() {
            self.pump(link, i);
        }
    }

    /// A dial to a dead process: refused, the dialer learns at once.
    fn send_frame_from_closed(&mut self, link: usize, to: usize) {
        let delay = self.network.latency();
        self.schedule(
            delay,
            Event::Frame {
                link,
                to,
                frame: Segment::Fin,
            },
        );
    }

    fn send_frame(&mut self, link: usize, from: usize, frame: PeerFrame) {
        self.send_segment(link, from, Segment::Frame(frame));
    }

    fn send_segment(&mut self, link: usize, from: usize, frame: Segment) {
        let to = 1 - from;
        let due = self
            .network
            .stream_due(self.now_ms, self.links[link].last_due[to]);
        self.links[link].last_due[to] = due;
        self.schedule_at(due, Event::Frame { link, to, frame });
    }

    fn close_end(&mut self, link: usize, i: usize) {
        if self.links[link].open[i] {
            self.links[link].open[i] = false;
            if self.links[link].open[1 - i] {
                self.send_segment(link, i, Segment::Fin);
            }
        }
    }

    fn on_frame(&mut self, link: usize, to: usize, frame: Segment) {
        let from = 1 - to;
        // TCP holds what it could not deliver until the path heals; the primary end's
        // reader starts once its core accepted the backup.
        let l = &self.links[link];
        if self.network.is_cut(from, to) || (l.open[to] && !l.ends.reading(to)) {
            let due = self.now_ms + 10;
            self.links[link].last_due[to] = self.links[link].last_due[to].max(due);
            self.schedule_at(due, Event::Frame { link, to, frame });
            return;
        }
        if !self.links[link].open[to] {
            return;
        }
        let Segment::Frame(frame) = frame else {
            self.links[link].open[to] = false;
            self.step(
                to,
                Input::LinkDown {
                    link: link as LinkId + 1,
                },
            );
            return;
        };
        let (now, side) = (self.mono_time(to), node_side(&self.keys, &self.nodes, to));
        let arrived = self.links[link].ends.on_frame(to, frame, now, &side);
        for reply in arrived.replies {
            self.send_frame(link, to, reply);
        }
        if let Some(input) = arrived.input {
            self.step(to, input);
        }
        if arrived.wake_writer {
            self.pump(link, to);
        }
        if let Some(reason) = arrived.end {
            if self.trace {
                eprintln!("{:>6} ms: {}: link: {reason}", self.now_ms, NODE_IDS[to]);
            }
            self.close_end(link, to);
        }
    }

    fn mono_time(&self, i: usize) -> Duration {
        Duration::from_millis(self.mono(i))
    }

    fn view(&self, i: usize) -> NodeView {
        let node = &self.nodes[i].process.as_ref().expect("running").node;
        NodeView {
            epoch: node.epoch(),
            head: node.head(),
        }
    }

    /// Node `i`'s end of a link writes what its session asks (`daemon::link`'s writers):
    /// the primary streams its log within the window, the backup acks, either beats.
    fn pump(&mut self, link: usize, i: usize) {
        while self.running(i) && self.links[link].open[i] {
            let (now, view) = (self.mono_time(i), self.view(i));
            let log = &self.nodes[i].disk.log;
            let appended = self.nodes[i].disk.last_seq();
            let ends = &mut self.links[link].ends;
            let frame = match ends.next(i, now, appended, view) {
                Some(Next::Send(frame)) => Ok(frame),
                Some(Next::ReadLog { from, upto }) => ends.on_read(log, (from, upto), view, now),
                // No orphans here: this simulation leaves them out.
                Some(Next::ReadOrphans) => {
                    assert!(ends.on_orphans(Vec::new(), now).is_empty());
                    continue;
                }
                Some(Next::WaitUntil(_)) | None => return,
                Some(Next::End(reason)) => Err(reason),
            };
            match frame {
                Ok(frame) => self.send_frame(link, i, frame),
                Err(_) => self.close_end(link, i),
            }
        }
    }

    /// A core command to node `from`'s end of a link: the frames its session makes.
    fn command(&mut self, link: usize, from: usize, command: LinkCommand) {
        let now = self.mono_time(from);
        for frame in self.links[link].ends.on_command(from, command, now) {
            self.send_frame(link, from, frame);
        }
        self.pump(link, from);
    }

    fn on_claim(&mut self, from: usize, incarnation: u64, request: u64, epoch: u64) {
        let mono = self.witness_mono();
        let Some(w) = self.witness.state.as_mut() else {
            return;
        };
        let (verdict, saved) = w.on_claim(NODE_IDS[from], epoch, mono);
        if let Some(saved) = saved {
            self.witness.granted = saved;
        }
        let verdict = match verdict {
            Verdict::Granted { epoch, lease_ms } => Verdict::Granted {
                epoch,
                lease_ms: lease_ms + self.setup.witness_overstates_ms,
            },
            refused => refused,
        };
        let answer = Event::Answer {
            to: from,
            incarnation,
            request,
            verdict,
        };
        self.send_datagram(W, from, answer);
    }

    /// Steps node `i` and carries out its actions; checks the promise after it.
    fn step(&mut self, i: usize, input: Input) {
        let mut actions = Vec::new();
        let p = self.nodes[i].process.as_mut().expect("running");
        let before = (p.node.role(), p.node.epoch(), p.node.head());
        p.node.step(input, &mut actions);
        let after = (p.node.role(), p.node.epoch(), p.node.head());
        if after.2 > before.2 && (before.0 == Role::Primary || after.0 == Role::Primary) {
            let epoch = if before.0 == Role::Primary {
                before.1
            } else {
                after.1
            };
            self.on_commit(i, epoch);
        }
        if before.0 == Role::Backup && after.0 == Role::Primary {
            self.promotions += 1;
            self.promoted_ms = Some(self.now_ms);
        }
        for action in actions {
            self.route(i, action);
        }
    }

    fn on_commit(&mut self, i: usize, epoch: u64) {
        self.commits += 1;
        self.committed_by[i] += 1;
        self.last_commit_ms[i] = self.now_ms;
        match self.newest_commit {
            Some((newest, at, by)) if epoch < newest => {
                self.violation = Some(format!(
                    "{} committed in epoch {epoch} at {} ms, after {} committed in epoch {newest} at {at} ms",
                    NODE_IDS[i], self.now_ms, NODE_IDS[by]
                ));
            }
            Some((newest, _, _)) if epoch == newest => {}
            _ => self.newest_commit = Some((epoch, self.now_ms, i)),
        }
    }

    fn route(&mut self, i: usize, action: Action) {
        if let Some(work) = link_work(&action) {
            self.on_link_work(i, work);
            return;
        }
        match action {
            Action::Append(entry) => {
                let n = &mut self.nodes[i];
                let seq = entry.seq;
                n.disk.append(NODE_IDS[i], entry);
                let generation = n.process.as_ref().expect("running").writer_generation;
                let delay = self.rng.below(5);
                self.schedule(
                    delay,
                    Event::Fsync {
                        node: i,
                        generation,
                        seq,
                    },
                );
            }
            Action::SaveEpochs { spans, seen } => {
                self.nodes[i].disk.spans = spans;
                self.nodes[i].disk.seen = seen;
            }
            Action::Truncate { after_seq } => {
                let n = &mut self.nodes[i];
                n.disk.truncate(after_seq);
                n.process.as_mut().expect("running").writer_generation += 1;
            }
            Action::Claim { request, epoch } => {
                let incarnation = self.nodes[i]
                    .process
                    .as_ref()
                    .expect("running")
                    .own
                    .incarnation;
                let claim = Event::Claim {
                    from: i,
                    incarnation,
                    request,
                    epoch,
                };
                self.send_datagram(i, W, claim);
            }
            Action::Send { frame, .. }
                if std::str::from_utf8(&frame)
                    .is_ok_and(|f| f.contains(r#""code":"unavailable""#)) =>
            {
                self.unavailable[i] += 1;
            }
            Action::Close { conn } => {
                let p = self.nodes[i].process.as_mut().expect("running");
                if p.own.conn == Some(conn) {
                    p.own.conn = None;
                }
            }
            Action::Exit => {
                self.nodes[i].process = None;
                for link in 0..self.links.len() {
                    if self.links[link].open[i] {
                        self.close_end(link, i);
                    }
                }
                self.schedule(500, Event::Restart(i));
            }
            Action::Log { message, .. } if self.trace => {
                eprintln!("{:>6} ms: {}: {message}", self.now_ms, NODE_IDS[i]);
            }
            _ => {}
        }
    }

    /// Node `i`'s end of a link carries out what its core asked; link `id` is at index
    /// `id - 1` (links are never forgotten here).
    fn on_link_work(&mut self, i: usize, work: LinkWork) {
        match work {
            LinkWork::Command(link, command) => self.command(link as usize - 1, i, command),
            LinkWork::Close(link) => self.close_end(link as usize - 1, i),
            LinkWork::Ack(link, durable_seq) => {
                let link = link as usize - 1;
                self.links[link].ends.ack(durable_seq);
                self.pump(link, i);
            }
        }
    }

    fn request(&mut self, i: usize, conn: ConnId, json: &str) {
        let request = decode_request(json.as_bytes(), 4096).expect("a valid request");
        let now_ms = WALL_BASE_MS + self.now_ms;
        self.step(
            i,
            Input::Request {
                conn,
                request,
                now_ms,
            },
        );
    }

    /// A client on each running node sends now and then (the backup answers not_primary).
    fn client(&mut self) {
        let i = self.rng.below(2) as usize;
        if !self.running(i) || self.stopped_until(i).is_some() {
            return;
        }
        self.tick_if_due(i);
        let conn = match self.nodes[i].process.as_ref().expect("running").own.conn {
            Some(conn) => conn,
            None => {
                let conn = self.next_conn;
                self.next_conn += 1;
                let now_ms = WALL_BASE_MS + self.now_ms;
                // Set first: a backup's redirect closes it again (`Action::Close`).
                self.nodes[i].process.as_mut().expect("running").own.conn = Some(conn);
                self.step(
                    i,
                    Input::Connected {
                        addr: None,
                        conn,
                        now_ms,
                    },
                );
                let nick = NODE_IDS[i];
                self.request(
                    i,
                    conn,
                    &format!(
                        r#"{{"type":"hello","version":1,"nick":"{nick}","session":"{nick}"}}"#
                    ),
                );
                if !self.running(i) {
                    return;
                }
                self.request(i, conn, &format!(r#"{{"type":"join","room":"{ROOM}"}}"#));
                conn
            }
        };
        let id = self.next_message;
        self.next_message += 1;
        self.request(
            i,
            conn,
            &format!(r#"{{"type":"send","room":"{ROOM}","id":"m{id}","body":"x"}}"#),
        );
    }

    fn fault(&mut self) {
        let heal = |w: &mut World| w.network.heal();
        match self.rng.below(10) {
            0 => {
                heal(self);
                self.note("heal");
            }
            1 => {
                self.network.set_cut(0, 1, true);
                self.note("partition a | b");
            }
            2 => {
                let i = self.rng.below(2) as usize;
                self.network.set_cut(i, W, true);
                self.note(&format!("partition {} | witness", NODE_IDS[i]));
            }
            3 => {
                // One way only: a hears nothing from b.
                let i = self.rng.below(2) as usize;
                self.network.cut[1 - i][i] = true;
                self.note(&format!(
                    "{} no longer hears {}",
                    NODE_IDS[i],
                    NODE_IDS[1 - i]
                ));
            }
            4 => {
                let i = self.rng.below(2) as usize;
                self.crash(i);
            }
            5 | 6 => {
                let i = self.rng.below(2) as usize;
                let ms = 200 + self.rng.below(3_000);
                if let Some(p) = self.nodes[i].process.as_mut() {
                    p.stopped_until = Some(self.now_ms + ms);
                    self.note(&format!("{} stopped for {ms} ms", NODE_IDS[i]));
                }
            }
            7 => {
                if self.witness.state.take().is_some() {
                    self.note("witness crashes");
                    let delay = 100 + self.rng.below(3_000);
                    self.schedule(delay, Event::RestartWitness);
                }
            }
            8 => {
                let i = self.rng.below(2) as usize;
                if self.running(i) && self.stopped_until(i).is_none() {
                    self.note(&format!("{} drill", NODE_IDS[i]));
                    self.step(i, Input::Drill);
                }
            }
            _ => {
                heal(self);
                self.note("heal");
            }
        }
    }
}

/// Seeds a plain `cargo test` runs of the main test (a third of them for its variants).
const DEFAULT_SEEDS: u64 = 200;

fn seeds() -> u64 {
    env_u64("STRICT_SEEDS").unwrap_or(DEFAULT_SEEDS)
}

/// Seeds `1..=seeds`, or only `STRICT_SEED` when it is set (a replay).
fn seed_range(seeds: u64) -> std::ops::RangeInclusive<u64> {
    env_u64("STRICT_SEED").map_or(1..=seeds, |seed| seed..=seed)
}

/// The message of a violation by `seed`, with the command that replays it in `test`.
fn violated(seed: u64, violation: &str, test: &str) -> String {
    let replay = replay_command("STRICT", seed, test);
    format!("seed {seed}: {violation}; replay it (faults and log lines printed): {replay}")
}

/// Runs `seeds` runs; returns the first violation with its seed.
fn first_violation(setup: Setup, seeds: u64) -> Option<(u64, String)> {
    seed_range(seeds).find_map(|seed| {
        let mut world = World::new(seed, setup);
        world.run();
        world.violation.map(|v| (seed, v))
    })
}

#[test]
fn strict_mode_never_lets_two_nodes_commit_in_overlapping_time() {
    let (mut commits, mut promotions) = (0, 0);
    // A replay of one seed checks the promise only, not the totals below.
    let runs = if env_u64("STRICT_SEED").is_some() {
        0
    } else {
        seeds()
    };
    for seed in seed_range(seeds()) {
        let mut world = World::new(seed, Setup::strict());
        world.run();
        if let Some(v) = world.violation {
            panic!("{}", violated(seed, &v, "strict_mode_never"));
        }
        commits += world.commits;
        promotions += world.promotions;
    }
    // The faults must really move the primary around, and chat must really flow.
    assert!(
        promotions > runs,
        "only {promotions} promotions in {runs} runs"
    );
    assert!(
        commits > runs * 100,
        "only {commits} commits in {runs} runs"
    );
}

#[test]
fn strict_mode_with_async_replication_keeps_the_promise_too() {
    let setup = Setup {
        mode: ReplicationMode::Async,
        ..Setup::strict()
    };
    if let Some((seed, v)) = first_violation(setup, seeds() / 3) {
        panic!("{}", violated(seed, &v, "strict_mode_with_async"));
    }
}

#[test]
fn the_checker_catches_available_mode_committing_on_both_sides() {
    let setup = Setup {
        strict: false,
        ..Setup::strict()
    };
    assert!(
        first_violation(setup, 200).is_some(),
        "a partition in available mode must show two primaries committing"
    );
}

#[test]
fn the_checker_catches_a_witness_that_grants_before_the_lease_it_gave_ran_out() {
    let setup = Setup {
        witness_overstates_ms: LEASE_MS,
        ..Setup::strict()
    };
    assert!(
        first_violation(setup, 300).is_some(),
        "a primary trusting a lease the witness does not enforce must be caught"
    );
}

#[test]
fn strict_mode_keeps_the_promise_with_fast_and_slow_clocks_and_a_lease_longer_than_detection() {
    // Clocks up to 20 % off real time, allowed for; the backup's bids now meet a running
    // lease, so the witness's waiting and the node's margin are what keep the promise.
    let setup = Setup {
        drift_ppm: 200_000,
        clock_spread_ppm: 200_000,
        lease_ms: 1_500,
        ..Setup::strict()
    };
    if let Some((seed, v)) = first_violation(setup, seeds() / 3) {
        panic!(
            "{}",
            violated(seed, &v, "strict_mode_keeps_the_promise_with_fast")
        );
    }
}

#[test]
fn the_checker_catches_a_node_that_allows_no_margin_for_clock_drift() {
    let setup = Setup {
        drift_ppm: 0,
        clock_spread_ppm: 200_000,
        lease_ms: 1_500,
        ..Setup::strict()
    };
    assert!(
        first_violation(setup, 400).is_some(),
        "a lease counted as if clocks never drift must be caught"
    );
}

/// The seed of the calm scenarios.
const CALM_SEED: u64 = 7;

/// Node `i` as its end of a handshake sees itself.
fn node_side<'a>(
    keys: &'a Keyring,
    nodes: &[SimNode; 2],
    i: usize,
) -> super::link::sim::NodeSide<'a> {
    let node = &nodes[i].process.as_ref().expect("running").node;
    side(keys, i, node, &nodes[i].disk)
}

/// A calm pair, `a` primary and chat flowing, at 3 s.
fn calm(setup: Setup) -> World {
    calm_from(CALM_SEED, setup)
}

fn calm_from(seed: u64, setup: Setup) -> World {
    let mut world = World::new(
        seed,
        Setup {
            faults: false,
            ..setup
        },
    );
    world.run_until(3_000);
    assert_eq!(world.role(0), Some(Role::Primary));
    assert_eq!(world.role(1), Some(Role::Backup));
    assert!(world.committed_by[0] > 10, "chat flows through a");
    world
}

/// Time from `a`'s crash to `b`'s promotion, in the calm pair of `seed`.
fn failover_ms(seed: u64, setup: Setup) -> u64 {
    let mut world = calm_from(seed, setup);
    let crashed_ms = world.now_ms;
    world.nodes[0].process = None;
    for link in 0..world.links.len() {
        world.links[link].open[0] = false;
    }
    assert!(world.run_until_true(crashed_ms + 5_000, |w| w.role(1) == Some(Role::Primary)));
    world.promoted_ms.expect("promoted") - crashed_ms
}

/// Fail-over times over this many calm pairs: where the crash falls among the lease
/// renewals, lost witness answers and link frames varies with the seed, so one seed's figure
/// says little about the mechanism.
const FAILOVER_SEEDS: u64 = 9;

#[test]
fn primary_crash_fails_over_within_the_available_mode_bound() {
    let median = |mut figures: Vec<u64>| {
        figures.sort_unstable();
        figures[figures.len() / 2]
    };
    let available: Vec<u64> = (1..=FAILOVER_SEEDS)
        .map(|seed| {
            let setup = Setup {
                strict: false,
                ..Setup::strict()
            };
            failover_ms(seed, setup)
        })
        .collect();
    let strict: Vec<u64> = (1..=FAILOVER_SEEDS)
        .map(|seed| failover_ms(seed, Setup::strict()))
        .collect();
    eprintln!("fail-over after a crash: strict {strict:?} ms, available {available:?} ms");
    // Detection (1 s) and the next tick, every time.
    let slowest = available.iter().max().expect("figures");
    assert!(
        *slowest <= DETECTION_MS + 2 * TICK_MS,
        "available: {available:?} ms"
    );
    // Strict adds one round trip to the witness, typically.
    let (strict, available) = (median(strict), median(available));
    assert!(
        strict <= available + 2 * TICK_MS,
        "median strict: {strict} ms, available: {available} ms"
    );
}

#[test]
fn full_partition_between_the_nodes_leaves_exactly_one_side_committing() {
    let mut world = calm(Setup::strict());
    world.set_cut(0, 1, true);
    let cut_ms = world.now_ms;
    let before = world.committed_by[0];
    // a's first claims were refused while the new witness held epoch 0 for one lease.
    let a_before = world.counts(0);
    world.run_until(cut_ms + 10_000);
    assert_eq!(world.violation, None);
    // The primary keeps the witness lease and commits on; the backup asks in vain.
    assert_eq!(world.role(0), Some(Role::Primary));
    assert_eq!(world.role(1), Some(Role::Backup));
    assert!(world.committed_by[0] > before + 50, "a commits on");
    assert_eq!(world.committed_by[1], 0, "b never commits");
    // The metrics tell the story: b's bids all refused, a's renewals all granted.
    let (a, b) = (world.counts(0), world.counts(1));
    assert!(b.claims > 10 && b.refusals > 10 && b.grants == 0, "{b:?}");
    assert!(a.grants > a_before.grants + 10, "{a:?}");
    assert_eq!(
        (a.refusals, a.sends_refused),
        (a_before.refusals, 0),
        "{a:?}"
    );
    // Healed, b follows a again.
    world.set_cut(0, 1, false);
    let a_head = world.head(0);
    assert!(world.run_until_true(world.now_ms + 5_000, |w| w.head(1) >= a_head));
}

#[test]
fn losing_only_the_witness_changes_nothing_while_the_nodes_see_each_other() {
    let mut world = calm(Setup::strict());
    world.set_cut(0, W, true);
    world.set_cut(1, W, true);
    let cut_ms = world.now_ms;
    let before = world.committed_by[0];
    world.run_until(cut_ms + 10_000);
    assert_eq!(world.violation, None);
    assert_eq!(world.role(0), Some(Role::Primary));
    assert_eq!(world.promotions, 1, "nobody takes over");
    // Chat goes on through the pair lease: commits all along, none refused.
    assert!(world.committed_by[0] > before + 100);
    assert!(world.last_commit_ms[0] + 500 > world.now_ms);
    assert_eq!(world.unavailable[0], 0);
}

#[test]
fn losing_the_witness_and_the_backup_leaves_the_primary_unavailable() {
    let mut world = calm(Setup::strict());
    world.set_cut(0, W, true);
    world.set_cut(0, 1, true);
    let cut_ms = world.now_ms;
    world.run_until(cut_ms + 5_000);
    assert_eq!(world.violation, None);
    // Commits stop within one lease; sends are answered `unavailable` from then on.
    assert!(
        world.last_commit_ms[0] < cut_ms + LEASE_MS,
        "a committed at {} ms, cut at {cut_ms} ms",
        world.last_commit_ms[0]
    );
    assert!(world.unavailable[0] > 10);
    // Every one of those is counted for the metrics, from the node's own decisions.
    assert_eq!(world.counts(0).sends_refused, world.unavailable[0]);
    // b, which still reaches the witness, takes over once a's lease ran out.
    assert_eq!(world.role(1), Some(Role::Primary));
    assert!(world.committed_by[1] > 10);
}

#[test]
fn a_stopped_primary_does_not_commit_when_it_wakes_and_steps_down() {
    let mut world = calm(Setup::strict());
    let stop_ms = world.now_ms;
    world.nodes[0].process.as_mut().unwrap().stopped_until = Some(stop_ms + 3_000);
    assert!(world.run_until_true(stop_ms + 2_000, |w| w.role(1) == Some(Role::Primary)));
    let committed = world.committed_by[0];
    assert!(world.run_until_true(stop_ms + 6_000, |w| w.role(0) == Some(Role::Backup)));
    assert_eq!(world.committed_by[0], committed, "a committed after waking");
    assert_eq!(world.violation, None);
}
