//! Two-node scenario tests of the pair: two real [`Node`]s, one logical clock, and a router
//! that turns each node's actions into the other's inputs the way the daemon does
//! (`daemon::route`, `daemon::link`, `daemon::heartbeat`, `daemon::storage`), on the
//! simulation harness (`core::sim`: processes, clocks, disks, network, event queue) that
//! the strict simulation runs on too. This file owns the pair's driver (every process
//! steps each simulated millisecond), its fault schedule and its checker.
//!
//! No sockets, threads or sleeps: a test is a sequence of inputs, so it replays exactly.
//! The emulation keeps what matters for failover and leaves the rest out:
//! - each process's monotonic clock starts at 0 when it starts (the daemon's `Instant` base);
//! - heartbeats are datagrams: a cut network drops them, a stopped process finds them in
//!   its socket when it wakes and stamps them with the time it reads them;
//! - the replication link is a TCP stream of the real frames (`wire::replication::PeerFrame`)
//!   between the real handshake and sessions (`core::link`, through `core::link::sim`): a
//!   dial to a dead or cut-off peer fails at once, one to a peer that is not primary is
//!   refused in the handshake; frames arrive in order, a cut network holds them until it
//!   heals, and a closed end sends a FIN after what it sent; each session's invariants are
//!   checked after each of its steps;
//! - the disk keeps what was fsynced (and, for a process crash, what was written), the
//!   epochs file and the orphans side file that a log cut fills.

use std::collections::{BTreeMap, HashMap, VecDeque};

use std::time::Duration;

use super::link::sim::{pair_keys, LinkEnds, NodeSide, Segment};
use super::link::{LinkCommand, Next, NodeView};
use super::sim::{
    core_config, env_u64, link_work, replay_command, Disk, EventQueue, LinkWork, Network,
    PairKnobs, Rng, CLIENT_ADDRESSES, DETECTION_MS, INTERVAL_MS, NODE_IDS, REAL_TIME_PPM,
    REDIAL_MS, ROOM, TICK_MS, TIMING, WALL_BASE_MS,
};
use super::ReplicationMode;
use super::*;
use crate::wire::client::{decode_request, decode_server_frame, ServerFrame};
use crate::wire::keyring::Keyring;
use crate::wire::replication::PeerFrame;

const A: usize = 0;
const B: usize = 1;
const ACK_TIMEOUT_MS: u64 = 1_000;
/// The link id a primary's own resubmission of its orphans goes under (never a real link).
use super::SELF_LINK;

/// The pair settings with a promotion cooldown of `cooldown_ms`.
fn knobs(cooldown_ms: u64) -> PairKnobs {
    PairKnobs {
        mode: ReplicationMode::Sync,
        ack_timeout_ms: ACK_TIMEOUT_MS,
        cooldown_ms,
    }
}

/// What the pair simulation keeps in a running pbchatd besides its core and timers.
#[derive(Debug, Default)]
struct PairProcess {
    /// Fsyncs in flight: (due, generation, seq).
    fsyncs: VecDeque<(u64, u64, u64)>,
    /// Emulated fix: the orig of the last own orphan resubmitted while primary, if any.
    own_orphans_waiting: Option<(u64, u64)>,
}

type Process = super::sim::Process<PairProcess>;

struct SimNode {
    disk: Disk,
    process: Option<Process>,
    /// A slow disk: fsyncs take this long.
    fsync_ms: u64,
    /// A stuck disk: no fsync completes until the test releases it.
    hold_fsyncs: bool,
    /// Every frame this node sent a client, across restarts.
    frames: Vec<(ConnId, ServerFrame)>,
    /// Every message this node published.
    published: Vec<ServerFrame>,
    /// Pair actions worth asserting on, with the sim time they were taken.
    events: Vec<(u64, Action)>,
    /// (time, epoch) of each promotion.
    promotions: Vec<(u64, u64)>,
    /// (time, epoch) of each loss of the primary role.
    step_downs: Vec<(u64, u64)>,
    /// Highest epoch a heartbeat ever brought this node (invariant iii).
    heartbeat_epoch: u64,
    /// Sim time of the last heartbeat or link frame from the peer that reached the core.
    last_heard_ms: u64,
    /// Every line the node logged, with its level.
    logs: Vec<(LogLevel, String)>,
}

/// One TCP connection between the nodes, both ends.
struct SimLink {
    id: LinkId,
    /// The node dialed, and the dialing one.
    primary: usize,
    backup: usize,
    /// Which ends are still open, by node index.
    open: [bool; 2],
    /// Frames on their way to each node, in order: (due, segment).
    inflight: [VecDeque<(u64, Segment)>; 2],
    /// The handshake and the sessions at both ends, as the daemon's link threads run them.
    ends: LinkEnds,
}

#[derive(Clone, Debug)]
struct Datagram {
    to: usize,
    primary: bool,
    epoch: u64,
    head: u64,
}

/// An acknowledgment a client received.
#[derive(Clone, Debug)]
struct Acked {
    node: usize,
    session: String,
    id: String,
    seq: u64,
}

struct Pair {
    now_ms: u64,
    /// The pair's secret, for the link's handshake.
    keys: Keyring,
    nodes: [SimNode; 2],
    cooldown_ms: u64,
    /// Cuts, latency and the heartbeat path's faults; no randomness (no latency, no random
    /// loss) unless a seeded run gives it some.
    network: Network,
    /// (link id, from): frames `from` sends on that link wait even without a cut, as TCP's
    /// retransmission timeout holds a connection's data after a long cut has healed.
    stuck: Option<(LinkId, usize)>,
    /// Heartbeats on their way.
    datagrams: EventQueue<Datagram>,
    links: Vec<SimLink>,
    /// Inputs a node gives itself (link down after its own close, probe results).
    inbox: VecDeque<(usize, Input)>,
    next_link: LinkId,
    next_conn: ConnId,
    /// Open client connections: conn -> (node, session).
    conns: HashMap<ConnId, (usize, String)>,
    /// The core gets every heartbeat that arrives, copies and stale ones too (the daemon's
    /// replay guard would drop them): harsher.
    /// The node that published in each epoch (invariant iv: one node commits per epoch).
    epoch_publisher: BTreeMap<u64, usize>,
    /// Every (epoch, seq) ever published, with the (session, id) it named (invariant i).
    published: BTreeMap<(u64, u64), (String, String)>,
    acked: Vec<Acked>,
    /// Emulates the daemon, which while primary re-commits its own orphans through its core
    /// (`Input::Resubmit` on [`SELF_LINK`]).
    primary_resubmits_own_orphans: bool,
    /// Print every step (`PAIR_TRACE=1`).
    trace: bool,
}

impl Pair {
    /// Two new nodes start at time 0, `a` configured primary: as the daemon starts it, it
    /// waits as backup until it has heard that `b` is no primary, then takes epoch 1.
    fn new(cooldown_ms: u64) -> Self {
        let mut pair = Pair::empty(cooldown_ms);
        let mut a = Node::new(
            core_config(A, knobs(cooldown_ms)),
            Role::Backup,
            EpochHistory::default(),
            0,
        );
        a.start_as_primary();
        a.begin_first_epoch(A as u64);
        pair.start(A, a);
        let b = Node::new(
            core_config(B, knobs(cooldown_ms)),
            Role::Backup,
            EpochHistory::default(),
            0,
        );
        pair.start(B, b);
        pair
    }

    fn empty(cooldown_ms: u64) -> Self {
        let node = || SimNode {
            disk: Disk::default(),
            process: None,
            fsync_ms: 0,
            hold_fsyncs: false,
            frames: Vec::new(),
            published: Vec::new(),
            events: Vec::new(),
            promotions: Vec::new(),
            step_downs: Vec::new(),
            heartbeat_epoch: 0,
            last_heard_ms: 0,
            logs: Vec::new(),
        };
        Pair {
            now_ms: 0,
            keys: pair_keys(),
            nodes: [node(), node()],
            cooldown_ms,
            network: Network::calm(),
            stuck: None,
            datagrams: EventQueue::default(),
            links: Vec::new(),
            inbox: VecDeque::new(),
            next_link: 1,
            next_conn: 1,
            conns: HashMap::new(),
            epoch_publisher: BTreeMap::new(),
            published: BTreeMap::new(),
            acked: Vec::new(),
            primary_resubmits_own_orphans: true,
            trace: std::env::var_os("PAIR_TRACE").is_some(),
        }
    }

    /// Starts a process around `node`, as `daemon::run` does after recovery.
    fn start(&mut self, i: usize, mut node: Node) {
        node.set_log_start(self.nodes[i].disk.first_seq);
        self.nodes[i].disk.save_epochs(&node);
        let process = Process::start(node, self.now_ms, REAL_TIME_PPM, PairProcess::default());
        self.nodes[i].process = Some(process);
    }

    /// Restarts a stopped node from its disk: a paired node with state starts as backup.
    fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].process.is_none(), "node {i} is running");
        let mut node = self.nodes[i].disk.recover(i, knobs(self.cooldown_ms));
        node.begin_first_epoch(i as u64);
        self.trace(i, "restarted");
        self.start(i, node);
    }

    /// kill -9: the process is gone; the kernel closes its sockets. `power_cut` also loses
    /// what was written but not yet fsynced.
    fn crash(&mut self, i: usize, power_cut: bool) {
        if self.nodes[i].process.take().is_none() {
            return;
        }
        self.trace(i, "crashed");
        if power_cut {
            self.nodes[i].disk.power_cut();
        }
        self.process_gone(i);
    }

    /// The process ended (exit or crash): its link ends close and its clients are gone.
    fn process_gone(&mut self, i: usize) {
        for link in 0..self.links.len() {
            if self.links[link].open[i] {
                self.close_end(link, i);
            }
        }
        self.conns.retain(|_, (node, _)| *node != i);
        self.inbox.retain(|(node, _)| *node != i);
    }

    /// kill -9 during a write: of what was written since the last fsync only the first
    /// `keep` entries reach the disk whole; the log's recovery cuts the torn one after them.
    fn crash_torn(&mut self, i: usize, keep: usize) {
        if self.nodes[i].process.take().is_none() {
            return;
        }
        self.trace(
            i,
            &format!("crashed, log torn after {keep} unsynced entries"),
        );
        self.nodes[i].disk.tear(keep);
        self.process_gone(i);
    }

    /// SIGSTOP for `ms`, then SIGCONT.
    fn stop(&mut self, i: usize, ms: u64) {
        if let Some(p) = &mut self.nodes[i].process {
            p.stopped_until = Some(self.now_ms + ms);
        }
    }

    fn partition(&mut self) {
        self.network.set_cut(A, B, true);
    }

    fn heal(&mut self) {
        self.network.heal();
    }

    fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
            .process
            .as_ref()
            .expect("node is running")
            .node
    }

    fn running(&self, i: usize) -> bool {
        self.nodes[i]
            .process
            .as_ref()
            .is_some_and(|p| p.stopped_until.is_none())
    }

    fn mono(&self, i: usize) -> u64 {
        let now = self.now_ms;
        self.nodes[i]
            .process
            .as_ref()
            .map_or(now, |p| p.clock.mono_ms(now))
    }

    /// Node `i`'s monotonic clock as its link sessions read it.
    fn mono_time(&self, i: usize) -> Duration {
        Duration::from_millis(self.mono(i))
    }

    fn trace(&self, i: usize, what: &str) {
        if self.trace {
            eprintln!("{:>6} {}: {what}", self.now_ms, NODE_IDS[i]);
        }
    }

    // ---- time ----

    fn run_for(&mut self, ms: u64) {
        let end = self.now_ms + ms;
        self.settle();
        while self.now_ms < end {
            self.now_ms += 1;
            self.settle();
        }
    }

    /// Runs until `done` holds, at most `max_ms`; true when it held.
    fn run_until(&mut self, max_ms: u64, done: impl Fn(&Pair) -> bool) -> bool {
        let end = self.now_ms + max_ms;
        self.settle();
        while !done(self) {
            if self.now_ms >= end {
                return false;
            }
            self.now_ms += 1;
            self.settle();
        }
        true
    }

    /// Does everything due now, until nothing is.
    fn settle(&mut self) {
        loop {
            let mut progressed = self.wake_and_tick();
            progressed |= self.drain_inbox();
            progressed |= self.complete_fsyncs();
            progressed |= self.deliver_datagrams();
            progressed |= self.deliver_frames();
            progressed |= self.pump_links();
            progressed |= self.send_beats();
            progressed |= self.dial();
            if !progressed {
                return;
            }
        }
    }

    /// The core's 50 ms tick; a process that wakes from SIGSTOP ticks first, late.
    fn wake_and_tick(&mut self) -> bool {
        let mut progressed = false;
        for i in [A, B] {
            let now = self.now_ms;
            let Some(p) = &mut self.nodes[i].process else {
                continue;
            };
            if p.stopped_until.is_some_and(|until| until <= now) {
                p.stopped_until = None;
            }
            if p.stopped_until.is_some() {
                continue;
            }
            if let Some(tick) = p.tick_due(now) {
                self.step(i, tick);
                progressed = true;
            }
        }
        progressed
    }

    fn drain_inbox(&mut self) -> bool {
        let mut progressed = false;
        let mut waiting = VecDeque::new();
        while let Some((i, input)) = self.inbox.pop_front() {
            if self.running(i) {
                self.step(i, input);
                progressed = true;
            } else if self.nodes[i].process.is_some() {
                waiting.push_back((i, input));
            }
        }
        self.inbox = waiting;
        progressed
    }

    fn complete_fsyncs(&mut self) -> bool {
        let mut progressed = false;
        for i in [A, B] {
            if !self.running(i) || self.nodes[i].hold_fsyncs {
                continue;
            }
            let now = self.now_ms;
            let sim = &mut self.nodes[i];
            let p = sim.process.as_mut().expect("running");
            let mut done = Vec::new();
            while p.own.fsyncs.front().is_some_and(|&(due, _, _)| due <= now) {
                let (_, generation, seq) = p.own.fsyncs.pop_front().expect("front");
                if generation == p.writer_generation {
                    sim.disk.synced(seq);
                }
                done.push(Input::Durable { generation, seq });
            }
            for input in done {
                self.step(i, input);
                progressed = true;
            }
        }
        progressed
    }

    fn deliver_datagrams(&mut self) -> bool {
        let now = self.now_ms;
        let mut progressed = false;
        while let Some((_, d)) = self.datagrams.pop_due(now) {
            let Some(p) = &self.nodes[d.to].process else {
                continue;
            };
            if let Some(until) = p.stopped_until {
                // It waits in the stopped process's socket.
                self.datagrams.schedule_at(until, d);
                continue;
            }
            let sim = &mut self.nodes[d.to];
            sim.heartbeat_epoch = sim.heartbeat_epoch.max(d.epoch);
            sim.last_heard_ms = now;
            let mono_ms = self.mono(d.to);
            let heartbeat = Input::Heartbeat {
                primary: d.primary,
                epoch: d.epoch,
                head: d.head,
                mono_ms,
            };
            self.step(d.to, heartbeat);
            progressed = true;
        }
        progressed
    }

    fn send_beats(&mut self) -> bool {
        let mut progressed = false;
        for i in [A, B] {
            if !self.running(i) {
                continue;
            }
            let now = self.now_ms;
            let p = self.nodes[i].process.as_mut().expect("running");
            if p.next_beat_ms > now {
                continue;
            }
            p.next_beat_ms = now + INTERVAL_MS;
            let heartbeat = Datagram {
                to: 1 - i,
                primary: p.node.role() == Role::Primary,
                epoch: p.node.epoch(),
                head: p.node.head(),
            };
            for delay in self.network.datagram(i, 1 - i) {
                self.datagrams.schedule_at(now + delay, heartbeat.clone());
            }
            progressed = true;
        }
        progressed
    }

    /// A backup without a link dials the primary (`link::run_dialer`); the primary side
    /// refuses unless it is primary (`link::serve_backup`).
    fn dial(&mut self) -> bool {
        let mut progressed = false;
        for i in [A, B] {
            let j = 1 - i;
            if !self.running(i) {
                continue;
            }
            let now = self.now_ms;
            let p = self.nodes[i].process.as_ref().expect("running");
            if p.node.role() == Role::Primary || p.redial_at_ms > now {
                continue;
            }
            if self.links.iter().any(|l| l.backup == i && l.open[i]) {
                continue;
            }
            // A cut or a dead peer refuses the connection; a peer that is not primary
            // refuses in the handshake.
            let reachable =
                self.running(j) && !self.network.is_cut(i, j) && !self.network.is_cut(j, i);
            if !reachable {
                self.nodes[i]
                    .process
                    .as_mut()
                    .expect("running")
                    .redial_at_ms = now + REDIAL_MS;
                continue;
            }
            let id = self.next_link;
            self.next_link += 1;
            let ends = LinkEnds::dial(id, i, TIMING, &node_side(&self.keys, &self.nodes, i));
            let hello = ends.hello();
            self.links.push(SimLink {
                id,
                primary: j,
                backup: i,
                open: [true, true],
                inflight: [VecDeque::new(), VecDeque::new()],
                ends,
            });
            self.send_frame(self.links.len() - 1, i, hello);
            self.trace(i, &format!("link {id} to the peer"));
            progressed = true;
        }
        progressed
    }

    // ---- the link ----

    fn link_index(&self, id: LinkId) -> Option<usize> {
        self.links.iter().position(|l| l.id == id)
    }

    fn send_frame(&mut self, link: usize, from: usize, frame: PeerFrame) {
        self.send_segment(link, from, Segment::Frame(frame));
    }

    fn send_segment(&mut self, link: usize, from: usize, segment: Segment) {
        let to = 1 - from;
        let last_due = self.links[link].inflight[to]
            .back()
            .map_or(0, |&(due, _)| due);
        let due = self.network.stream_due(self.now_ms, last_due);
        let l = &mut self.links[link];
        if l.open[from] {
            l.inflight[to].push_back((due, segment));
        }
    }

    /// One end closes (the core's `CloseLink`, an error, or the process ended).
    fn close_end(&mut self, link: usize, i: usize) {
        if !self.links[link].open[i] {
            return;
        }
        self.send_segment(link, i, Segment::Fin);
        let l = &mut self.links[link];
        l.open[i] = false;
        if l.backup == i {
            if let Some(p) = &mut self.nodes[i].process {
                p.redial_at_ms = self.now_ms + REDIAL_MS;
            }
        }
        let id = l.id;
        if self.nodes[i].process.is_some() && l.ends.established(i) {
            self.inbox.push_back((i, Input::LinkDown { link: id }));
        }
    }

    fn deliver_frames(&mut self) -> bool {
        let mut progressed = false;
        for link in 0..self.links.len() {
            for to in [A, B] {
                loop {
                    let l = &self.links[link];
                    let Some(&(due, _)) = l.inflight[to].front() else {
                        break;
                    };
                    let gone = self.nodes[to].process.is_none() || !l.open[to];
                    // The primary's reader starts once its core accepted the backup.
                    let unread = !l.ends.reading(to);
                    let stuck = self.stuck == Some((l.id, 1 - to)) || unread;
                    if !gone
                        && (due > self.now_ms
                            || self.network.is_cut(1 - to, to)
                            || stuck
                            || !self.running(to))
                    {
                        break;
                    }
                    let (_, segment) = self.links[link].inflight[to].pop_front().expect("front");
                    progressed = true;
                    if !gone {
                        self.on_segment(link, to, segment);
                    }
                }
            }
        }
        // Forget links that are closed at both ends with nothing left in flight.
        self.links
            .retain(|l| l.open.iter().any(|&o| o) || l.inflight.iter().any(|q| !q.is_empty()));
        progressed
    }

    /// A segment reaches the link reader of node `to`: the FIN ends its end, a frame goes
    /// to its session, which turns it into an input (or ends the link).
    fn on_segment(&mut self, link: usize, to: usize, segment: Segment) {
        self.nodes[to].last_heard_ms = self.now_ms;
        let Segment::Frame(frame) = segment else {
            self.reader_ended(link, to);
            return;
        };
        let now = self.mono_time(to);
        let side = node_side(&self.keys, &self.nodes, to);
        let arrived = self.links[link].ends.on_frame(to, frame, now, &side);
        for reply in arrived.replies {
            self.send_frame(link, to, reply);
        }
        if arrived.orphans_done {
            // Everything kept aside is re-committed: the side file goes.
            self.nodes[to].disk.orphans.clear();
        }
        if let Some(input) = arrived.input {
            self.step(to, input);
        }
        if let Some(reason) = arrived.end {
            self.trace(to, &format!("link {}: {reason}", self.links[link].id));
            self.close_end(link, to);
        }
    }

    /// The peer's FIN: this end's reader ends and the link is down for its core.
    fn reader_ended(&mut self, link: usize, to: usize) {
        let l = &mut self.links[link];
        l.open[to] = false;
        let id = l.id;
        if l.backup == to {
            if let Some(p) = &mut self.nodes[to].process {
                p.redial_at_ms = self.now_ms + REDIAL_MS;
            }
        }
        // A link its core never heard of (a refused dial) ends without a word to it.
        if l.ends.established(to) {
            self.step(to, Input::LinkDown { link: id });
        }
    }

    /// The link writers ask their sessions what is next and carry it out, as
    /// `daemon::link`'s do: the primary streams its log within the window, the backup acks
    /// and resubmits its orphans once caught up, and either beats when quiet.
    fn pump_links(&mut self) -> bool {
        let mut progressed = self.resubmit_own_orphans();
        for link in 0..self.links.len() {
            for i in [self.links[link].primary, self.links[link].backup] {
                while self.links[link].open[i] && self.running(i) && self.pump(link, i) {
                    progressed = true;
                }
            }
        }
        progressed
    }

    fn view(&self, i: usize) -> NodeView {
        let node = self.node(i);
        NodeView {
            epoch: node.epoch(),
            head: node.head(),
        }
    }

    /// One move of node `i`'s writer on a link; false when it waits.
    fn pump(&mut self, link: usize, i: usize) -> bool {
        let (now, view) = (self.mono_time(i), self.view(i));
        let disk = &self.nodes[i].disk;
        let ends = &mut self.links[link].ends;
        let frames = match ends.next(i, now, disk.last_seq(), view) {
            Some(Next::Send(frame)) => Ok(vec![frame]),
            Some(Next::ReadLog { from, upto }) => ends
                .on_read(&disk.log, (from, upto), view, now)
                .map(|frame| vec![frame]),
            Some(Next::ReadOrphans) => Ok(ends.on_orphans(disk.orphans.clone(), now)),
            Some(Next::WaitUntil(_)) | None => return false,
            Some(Next::End(reason)) => Err(reason),
        };
        match frames {
            Ok(frames) => {
                for frame in frames {
                    self.send_frame(link, i, frame);
                }
            }
            Err(reason) => {
                self.trace(i, &format!("link {}: {reason}", self.links[link].id));
                self.close_end(link, i);
            }
        }
        true
    }

    /// Emulated fix: a primary with orphans re-commits them itself, once per term.
    fn resubmit_own_orphans(&mut self) -> bool {
        if !self.primary_resubmits_own_orphans {
            return false;
        }
        let mut progressed = false;
        for i in [A, B] {
            if !self.running(i) {
                continue;
            }
            let sim = &mut self.nodes[i];
            let p = sim.process.as_mut().expect("running");
            if p.node.role() != Role::Primary {
                p.own.own_orphans_waiting = None;
                continue;
            }
            if p.own.own_orphans_waiting.is_some() || sim.disk.orphans.is_empty() {
                continue;
            }
            let batches = sim.disk.orphans.clone();
            let last = batches.last().and_then(|b| b.last()).expect("not empty");
            p.own.own_orphans_waiting = Some(last.orig.unwrap_or((last.epoch, last.seq)));
            for entries in batches {
                self.step(
                    i,
                    Input::Resubmit {
                        link: SELF_LINK,
                        entries,
                    },
                );
            }
            progressed = true;
        }
        progressed
    }

    // ---- one step of one node, and its actions ----

    fn step(&mut self, i: usize, input: Input) {
        let now = self.now_ms;
        let p = self.nodes[i]
            .process
            .as_mut()
            .expect("step on a running node");
        let before = (p.node.role(), p.node.epoch());
        if self.trace {
            eprintln!("{now:>6} {} <- {input:?}", NODE_IDS[i]);
        }
        let mut actions = Vec::new();
        // As the daemon's driver does before each batch.
        p.node.prefetch(&input);
        p.node.step(input, &mut actions);
        let after = (p.node.role(), p.node.epoch());
        if before.0 != Role::Primary && after.0 == Role::Primary {
            // (iv) No two nodes are ever primary in one epoch.
            if let Some((at, _)) = self.nodes[1 - i]
                .promotions
                .iter()
                .find(|(_, epoch)| *epoch == after.1)
            {
                panic!(
                    "{} promoted to epoch {} at {now} ms, which {} held since {at} ms",
                    NODE_IDS[i],
                    after.1,
                    NODE_IDS[1 - i]
                );
            }
            self.nodes[i].promotions.push((now, after.1));
        }
        if before.0 == Role::Primary && after.0 != Role::Primary {
            self.nodes[i].step_downs.push((now, before.1));
        }
        // Lines come last in a step, after an `Exit` that ends the routing below.
        for action in &actions {
            if let Action::Log { level, message } = action {
                self.nodes[i].logs.push((*level, message.clone()));
            }
        }
        for action in actions {
            if self.trace {
                match &action {
                    Action::Log { message, .. } => eprintln!("{now:>6} {}: {message}", NODE_IDS[i]),
                    _ => eprintln!("{now:>6} {} -> {action:?}", NODE_IDS[i]),
                }
            }
            self.route(i, action);
            if self.nodes[i].process.is_none() {
                // Exit: nothing after it is carried out.
                return;
            }
        }
    }

    /// Carries out one action as `daemon::Driver::route` and the threads behind it do.
    fn route(&mut self, i: usize, action: Action) {
        let now = self.now_ms;
        if matches!(
            action,
            Action::Truncate { .. }
                | Action::RestartLog { .. }
                | Action::AcceptBackup { .. }
                | Action::Handover { .. }
                | Action::TookOver { .. }
                | Action::ResubmitDone { .. }
                | Action::AbortLink { .. }
                | Action::Exit
        ) {
            self.nodes[i].events.push((now, action.clone()));
        }
        if let Some(work) = link_work(&action) {
            self.on_link_work(i, work);
            return;
        }
        match action {
            Action::Send { conn, frame } => self.on_send(i, conn, &frame),
            Action::Close { conn } => {
                self.conns.remove(&conn);
            }
            Action::Publish { seq, frame, .. } => self.on_publish(i, seq, &frame),
            Action::Exit => {
                self.trace(i, "exits");
                let sim = &mut self.nodes[i];
                sim.disk.synced_seq = sim.disk.last_seq();
                sim.process = None;
                self.process_gone(i);
            }
            Action::ResubmitDone { epoch, seq, .. } => {
                // The primary's own re-commit (`SELF_LINK`): its orphans file goes.
                let sim = &mut self.nodes[i];
                let p = sim.process.as_mut().expect("running");
                if p.own.own_orphans_waiting == Some((epoch, seq)) {
                    p.own.own_orphans_waiting = None;
                    sim.disk.orphans.clear();
                }
            }
            Action::Probe => self.inbox.push_back((i, Input::ProbeResult { ok: true })),
            // Log lines, role changes, presence and subscriptions change nothing here.
            action => self.on_disk_action(i, action),
        }
    }

    /// A frame to a client; an ack is noted for the checker.
    fn on_send(&mut self, i: usize, conn: ConnId, frame: &[u8]) {
        let frame = decode_server_frame(&frame[..frame.len() - 1]).expect("a frame");
        if frame.kind == "ack" {
            let session = self.conns.get(&conn).map(|(_, s)| s.clone());
            self.acked.push(Acked {
                node: i,
                session: session.expect("acks go to open connections"),
                id: frame.id.clone().expect("ack names the id"),
                seq: frame.seq.expect("ack has a seq"),
            });
        }
        self.nodes[i].frames.push((conn, frame));
    }

    /// The log writer's and the epochs file's work, as `daemon::storage` does it.
    fn on_disk_action(&mut self, i: usize, action: Action) {
        match action {
            Action::Append(entry) => {
                let sim = &mut self.nodes[i];
                let seq = entry.seq;
                sim.disk.append(NODE_IDS[i], entry);
                let p = sim.process.as_mut().expect("running");
                p.own
                    .fsyncs
                    .push_back((self.now_ms + sim.fsync_ms, p.writer_generation, seq));
            }
            Action::SaveEpochs { spans, seen } => {
                let disk = &mut self.nodes[i].disk;
                disk.spans = spans;
                disk.seen = seen;
            }
            Action::Truncate { after_seq } => {
                let disk = &mut self.nodes[i].disk;
                let cut = disk.truncate(after_seq);
                if !cut.is_empty() {
                    disk.orphans.push(cut);
                }
                self.rewrite_log(i);
            }
            Action::RestartLog { first_seq } => {
                self.nodes[i].disk.restart_log(first_seq);
                self.rewrite_log(i);
            }
            _ => {}
        }
    }

    /// Node `i`'s end of a link carries out what its core asked.
    fn on_link_work(&mut self, i: usize, work: LinkWork) {
        match work {
            LinkWork::Command(link, command) => self.command(link, i, command),
            LinkWork::Close(link) => {
                if let Some(link) = self.link_index(link) {
                    self.close_end(link, i);
                }
            }
            LinkWork::Ack(link, durable_seq) => {
                if let Some(link) = self.link_index(link) {
                    self.links[link].ends.ack(durable_seq);
                }
            }
        }
    }

    /// A core command to node `from`'s end of a link: the frames its session makes.
    fn command(&mut self, link: LinkId, from: usize, command: LinkCommand) {
        let Some(link) = self.link_index(link) else {
            return;
        };
        let now = self.mono_time(from);
        for frame in self.links[link].ends.on_command(from, command, now) {
            self.send_frame(link, from, frame);
        }
    }

    /// After a cut or restart the writer fsyncs, bumps its generation and reports.
    fn rewrite_log(&mut self, i: usize) {
        let now = self.now_ms;
        let sim = &mut self.nodes[i];
        let last = sim.disk.last_seq();
        sim.disk.synced_seq = last;
        let p = sim.process.as_mut().expect("running");
        p.own.fsyncs.clear();
        p.writer_generation += 1;
        p.own.fsyncs.push_back((now, p.writer_generation, last));
    }

    fn on_publish(&mut self, i: usize, seq: u64, frame: &[u8]) {
        let msg = decode_server_frame(&frame[..frame.len() - 1]).expect("a msg frame");
        let epoch = msg.epoch.expect("msg has an epoch");
        assert_eq!(msg.seq, Some(seq));
        let id = msg.id.clone().expect("msg has an id");
        let body = msg.body.clone().expect("msg has a body");
        let session = body
            .split('/')
            .next()
            .expect("body names its session")
            .to_string();
        // (i) An (epoch, seq) names one message, published once, by one node.
        let named = (session, id);
        if let Some(earlier) = self.published.insert((epoch, seq), named.clone()) {
            panic!(
                "(epoch {epoch}, seq {seq}) published twice: as {earlier:?} and by {} as {named:?}",
                NODE_IDS[i]
            );
        }
        // (iv) One node commits in an epoch.
        let publisher = *self.epoch_publisher.entry(epoch).or_insert(i);
        assert_eq!(
            publisher, i,
            "{} published seq {seq} in epoch {epoch}, in which {} published",
            NODE_IDS[i], NODE_IDS[publisher]
        );
        // (iii) Never publish below an epoch the peer announced.
        let heard = self.nodes[i].heartbeat_epoch;
        assert!(
            epoch >= heard,
            "{} published seq {seq} in epoch {epoch} after a heartbeat in epoch {heard}",
            NODE_IDS[i]
        );
        self.nodes[i].published.push(msg);
    }

    // ---- clients ----

    fn request(&mut self, i: usize, conn: ConnId, json: &str) {
        let request = decode_request(json.as_bytes(), 4096).expect("a valid request");
        if self.running(i) {
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
    }

    /// Connects a client of `session` (nick = session) to node `i` and joins the room.
    fn connect(&mut self, i: usize, session: &str) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(conn, (i, session.to_string()));
        let now_ms = WALL_BASE_MS + self.now_ms;
        self.step(
            i,
            Input::Connected {
                addr: None,
                conn,
                now_ms,
            },
        );
        self.request(
            i,
            conn,
            &format!(r#"{{"type":"hello","version":1,"nick":"{session}","session":"{session}"}}"#),
        );
        self.request(i, conn, &format!(r#"{{"type":"join","room":"{ROOM}"}}"#));
        self.settle();
        conn
    }

    /// A client sends message `id`; the body names the session, for the invariants.
    fn send(&mut self, conn: ConnId, id: &str) {
        let Some((i, session)) = self.conns.get(&conn).cloned() else {
            return;
        };
        self.request(
            i,
            conn,
            &format!(r#"{{"type":"send","room":"{ROOM}","id":"{id}","body":"{session}/{id}"}}"#),
        );
        self.settle();
    }

    fn frames_to(&self, conn: ConnId) -> Vec<ServerFrame> {
        self.nodes
            .iter()
            .flat_map(|n| n.frames.iter())
            .filter(|(c, _)| *c == conn)
            .map(|(_, f)| f.clone())
            .collect()
    }

    /// The seq node `i` acked `id` with, if it did.
    fn ack_of(&self, i: usize, session: &str, id: &str) -> Option<u64> {
        self.acked
            .iter()
            .find(|a| a.node == i && a.session == session && a.id == id)
            .map(|a| a.seq)
    }

    fn published_ids(&self, i: usize) -> Vec<String> {
        self.nodes[i]
            .published
            .iter()
            .map(|m| m.id.clone().unwrap())
            .collect()
    }

    fn events(&self, i: usize) -> Vec<Action> {
        self.nodes[i]
            .events
            .iter()
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// How many times (session, id) is in node `i`'s log.
    fn copies(&self, i: usize, session: &str, id: &str) -> usize {
        self.nodes[i]
            .disk
            .log
            .iter()
            .filter(|e| e.session == session && e.id == id)
            .count()
    }

    /// True once the pair runs in sync: one primary, the backup linked and caught up.
    fn in_sync(&self) -> bool {
        if !(self.running(A) && self.running(B)) {
            return false;
        }
        let (a, b) = (self.node(A), self.node(B));
        let (primary, backup) = match (a.role(), b.role()) {
            (Role::Primary, Role::Backup) => (A, B),
            (Role::Backup, Role::Primary) => (B, A),
            _ => return false,
        };
        let p = self.node(primary);
        !p.degraded()
            && p.pending() == 0
            && p.peer_acked() == p.last_seq()
            && self.nodes[backup].disk.ids() == self.nodes[primary].disk.ids()
    }
}

/// The pair after start-up: `b` follows `a`, and `a` commits synchronously.
/// Node `i` as its end of a handshake sees itself.
fn node_side<'a>(keys: &'a Keyring, nodes: &[SimNode; 2], i: usize) -> NodeSide<'a> {
    let node = &nodes[i].process.as_ref().expect("running").node;
    super::sim::side(keys, i, node, &nodes[i].disk)
}

fn linked_pair(cooldown_ms: u64) -> Pair {
    let mut pair = Pair::new(cooldown_ms);
    assert!(
        pair.run_until(1_000, Pair::in_sync),
        "the pair never linked"
    );
    pair
}

/// The level of each `promoted to primary` line node `i` logged.
fn promotion_levels(pair: &Pair, i: usize) -> Vec<LogLevel> {
    pair.nodes[i]
        .logs
        .iter()
        .filter(|(_, line)| line.starts_with("promoted to primary"))
        .map(|(level, _)| *level)
        .collect()
}

fn is_primary(i: usize) -> impl Fn(&Pair) -> bool {
    move |pair: &Pair| pair.running(i) && pair.node(i).role() == Role::Primary
}

fn goodbyes(frames: &[ServerFrame]) -> Vec<(Option<String>, Option<String>)> {
    frames
        .iter()
        .filter(|f| f.kind == "goodbye")
        .map(|f| (f.reason.clone(), f.primary.clone()))
        .collect()
}

// ---- scenarios ----

#[test]
fn sync_commit_waits_for_the_backup_then_acks() {
    let mut pair = linked_pair(0);
    let alice = pair.connect(A, "alice");
    // b's disk is slow: it has the message but cannot say it is durable yet.
    pair.nodes[B].hold_fsyncs = true;
    pair.send(alice, "m-1");
    pair.run_for(500);
    assert_eq!(pair.nodes[B].disk.last_seq(), 1, "the entry reached b");
    assert_eq!(
        pair.ack_of(A, "alice", "m-1"),
        None,
        "acked before b had it durably"
    );
    assert!(pair.published_ids(A).is_empty());
    assert_eq!(pair.node(A).head(), 0);
    pair.nodes[B].hold_fsyncs = false;
    pair.run_for(1);
    assert_eq!(pair.ack_of(A, "alice", "m-1"), Some(1));
    assert_eq!(pair.published_ids(A), ["m-1"]);
    assert!(
        !pair.node(A).degraded(),
        "it committed in sync, not by timeout"
    );
}

/// Commits `count` messages from `alice` on a, in sync; returns her connection.
fn commit_messages(pair: &mut Pair, count: usize) -> ConnId {
    let alice = pair.connect(A, "alice");
    for n in 1..=count {
        pair.send(alice, &format!("m-{n}"));
    }
    pair.run_for(10);
    for n in 1..=count {
        assert!(pair.ack_of(A, "alice", &format!("m-{n}")).is_some());
    }
    alice
}

#[test]
fn primary_crash_promotes_the_backup_after_detection_and_loses_no_acked_message() {
    let mut pair = linked_pair(0);
    commit_messages(&mut pair, 3);
    pair.run_for(123);
    pair.crash(A, true);
    let crashed_ms = pair.now_ms;
    let heard_ms = pair.nodes[B].last_heard_ms;
    assert!(pair.run_until(3_000, is_primary(B)), "b never promoted");
    let promoted_ms = pair.nodes[B].promotions[0].0;
    assert!(
        promoted_ms >= heard_ms + DETECTION_MS,
        "promoted {} ms after it last heard from a",
        promoted_ms - heard_ms
    );
    assert!(
        promoted_ms < heard_ms + DETECTION_MS + TICK_MS,
        "promoted only {} ms after the crash",
        promoted_ms - crashed_ms
    );
    // Issue 15: a's first start as the configured primary is news, not a warning; b's
    // take-over after losing its primary is.
    assert_eq!(promotion_levels(&pair, A), [LogLevel::Info]);
    assert_eq!(promotion_levels(&pair, B), [LogLevel::Warn]);
    let b = pair.node(B);
    assert_eq!(b.epoch(), 2, "b's epochs are even");
    assert!(b.head() >= 3, "b's head {} misses acked messages", b.head());
    for n in 1..=3 {
        assert_eq!(pair.copies(B, "alice", &format!("m-{n}")), 1);
    }
    // b serves alone: a send commits on local durability.
    let bob = pair.connect(B, "bob");
    pair.send(bob, "n-1");
    pair.run_for(10);
    assert_eq!(pair.ack_of(B, "bob", "n-1"), Some(4));
    assert!(pair.node(B).degraded());
    assert_eq!(pair.nodes[B].published[0].epoch, Some(2));
}

#[test]
fn old_primary_returns_as_backup_and_catches_up() {
    let mut pair = linked_pair(0);
    commit_messages(&mut pair, 3);
    pair.crash(A, true);
    assert!(pair.run_until(3_000, is_primary(B)));
    let bob = pair.connect(B, "bob");
    for n in 1..=5 {
        pair.send(bob, &format!("n-{n}"));
    }
    pair.run_for(10);
    assert!(pair.node(B).degraded());
    pair.restart(A);
    assert_eq!(pair.node(A).role(), Role::Backup);
    assert!(pair.run_until(1_000, Pair::in_sync), "a never caught up");
    assert_eq!(pair.nodes[A].disk.ids(), pair.nodes[B].disk.ids());
    assert_eq!(pair.nodes[A].disk.last_seq(), 8);
    assert_eq!(pair.node(A).epochs().spans(), pair.node(B).epochs().spans());
    assert!(!pair.node(B).degraded(), "b is synchronous again");
    // And commits wait for a again.
    pair.nodes[A].hold_fsyncs = true;
    pair.send(bob, "n-6");
    pair.run_for(300);
    assert_eq!(pair.ack_of(B, "bob", "n-6"), None);
    pair.nodes[A].hold_fsyncs = false;
    pair.run_for(1);
    assert_eq!(pair.ack_of(B, "bob", "n-6"), Some(9));
}

#[test]
fn a_higher_epoch_heartbeat_makes_the_primary_step_down_with_goodbye_demoted() {
    let mut pair = linked_pair(0);
    let alice = commit_messages(&mut pair, 1);
    pair.partition();
    pair.run_for(800);
    // Sent on a while it cannot reach b: it waits for b (not yet degraded).
    pair.send(alice, "m-2");
    assert!(pair.run_until(1_000, is_primary(B)));
    assert!(pair.node(A).role() == Role::Primary && !pair.node(A).degraded());
    pair.heal();
    assert!(pair.run_until(500, |p| p.node(A).role() == Role::Backup));
    assert_eq!(pair.nodes[A].step_downs, [(pair.now_ms, 1)]);
    let frames = pair.frames_to(alice);
    assert_eq!(
        goodbyes(&frames),
        [(Some("demoted".into()), Some(CLIENT_ADDRESSES[B].into()))]
    );
    assert!(!pair.conns.contains_key(&alice), "a closed alice");
    // a never acks m-2, however long it runs.
    pair.run_for(3_000);
    assert_eq!(pair.ack_of(A, "alice", "m-2"), None);
    assert!(!pair.published_ids(A).contains(&"m-2".to_string()));
    assert!(pair.in_sync(), "a follows b");
}

#[test]
fn partition_then_heal_recommits_the_losers_messages_with_orig() {
    let mut pair = linked_pair(0);
    let alice = commit_messages(&mut pair, 1);
    pair.partition();
    pair.run_for(100);
    pair.send(alice, "m-2");
    pair.send(alice, "m-3");
    // a keeps serving: after ack_timeout it degrades and commits in epoch 1.
    assert!(pair.run_until(1_500, |p| p.ack_of(A, "alice", "m-3").is_some()));
    assert!(pair.node(A).degraded());
    assert_eq!(pair.ack_of(A, "alice", "m-2"), Some(2));
    assert_eq!(pair.ack_of(A, "alice", "m-3"), Some(3));
    assert!(pair.nodes[A].published.iter().all(|m| m.epoch == Some(1)));
    // b promoted meanwhile, in epoch 2. Alice, unsure of m-3, also sends it there; bob
    // sends n-1.
    assert!(pair.run_until(1_000, is_primary(B)));
    assert_eq!(pair.node(B).epoch(), 2);
    let alice_b = pair.connect(B, "alice");
    pair.send(alice_b, "m-3");
    let bob = pair.connect(B, "bob");
    pair.send(bob, "n-1");
    pair.run_for(10);
    assert_eq!(pair.ack_of(B, "alice", "m-3"), Some(2));
    assert_eq!(pair.ack_of(B, "bob", "n-1"), Some(3));
    // Heal: a sees epoch 2 and steps down; its log is cut after seq 1, the common prefix.
    pair.heal();
    assert!(
        pair.run_until(2_000, Pair::in_sync),
        "the pair never settled"
    );
    assert_eq!(pair.nodes[A].step_downs.len(), 1);
    assert!(pair.events(A).contains(&Action::Truncate { after_seq: 1 }));
    // m-2 is re-committed once, in epoch 2 with a new seq, naming where it came from; m-3,
    // which b already has, is not committed twice.
    let recommitted: Vec<_> = pair.nodes[B]
        .published
        .iter()
        .filter(|m| m.orig.is_some())
        .map(|m| {
            (
                m.id.clone().unwrap(),
                m.epoch,
                m.seq,
                m.orig.map(|o| (o.epoch, o.seq)),
            )
        })
        .collect();
    assert_eq!(
        recommitted,
        [("m-2".to_string(), Some(2), Some(4), Some((1, 2)))]
    );
    assert_eq!(pair.copies(B, "alice", "m-3"), 1);
    assert_eq!(pair.copies(B, "alice", "m-2"), 1);
    assert!(pair.events(B).iter().any(|a| matches!(
        a,
        Action::ResubmitDone {
            epoch: 1,
            seq: 3,
            ..
        }
    )));
    assert!(
        pair.nodes[A].disk.orphans.is_empty(),
        "a dropped its side file"
    );
    assert_eq!(pair.nodes[A].disk.ids(), pair.nodes[B].disk.ids());
}

/// a is stopped for 700 ms (a pause b does not notice: less than detection) right after
/// ordering m-2, which b already acked but a's own disk had not yet confirmed.
fn stall_the_primary_with_m2_acked_by_the_backup() -> (Pair, ConnId) {
    let mut pair = linked_pair(0);
    let alice = commit_messages(&mut pair, 1);
    pair.nodes[A].hold_fsyncs = true;
    pair.send(alice, "m-2");
    assert_eq!(pair.node(A).peer_acked(), 2, "b acked m-2 before the stall");
    pair.stop(A, 700);
    pair.run_for(700);
    pair.nodes[A].hold_fsyncs = false;
    pair.run_for(1);
    (pair, alice)
}

#[test]
fn a_stalled_primary_commits_nothing_until_it_hears_from_its_peer() {
    let (mut pair, _alice) = stall_the_primary_with_m2_acked_by_the_backup();
    let woke_ms = pair.now_ms - 1;
    assert_eq!(pair.node(A).role(), Role::Primary);
    assert_eq!(
        pair.ack_of(A, "alice", "m-2"),
        None,
        "acked right after a stall"
    );
    // Word from b, backup in the same epoch, arrives every 200 ms: a commits again.
    let resumed = pair.run_until(5_000, |p| p.ack_of(A, "alice", "m-2").is_some());
    assert!(
        resumed,
        "m-2 (durable on a, acked by b) still pending {} ms after a woke, hearing b all along",
        pair.now_ms - woke_ms
    );
}

#[test]
fn a_stalled_primary_refuses_sends_until_fresh_word_from_its_peer() {
    let (mut pair, _alice) = stall_the_primary_with_m2_acked_by_the_backup();
    assert_eq!(
        pair.ack_of(A, "alice", "m-2"),
        None,
        "acked right after a stall"
    );
    // What b sent during the stall arrived at once on waking: not fresh evidence.
    let bob = pair.connect(A, "bob");
    pair.send(bob, "n-1");
    let refused = pair.frames_to(bob).last().cloned().unwrap();
    assert_eq!(
        (refused.code.as_deref(), refused.id.as_deref()),
        (Some("unavailable"), Some("n-1"))
    );
    // Fresh word from b comes with its next beats; then sends are taken again, and the
    // next commit takes m-2 with it.
    pair.run_for(3 * INTERVAL_MS);
    pair.send(bob, "n-2");
    pair.run_for(1);
    assert_eq!(pair.ack_of(A, "bob", "n-2"), Some(3));
    assert_eq!(pair.ack_of(A, "alice", "m-2"), Some(2));
    assert_eq!(pair.node(B).role(), Role::Backup);
}

#[test]
fn a_stalled_primary_steps_down_without_committing_when_the_peer_moved_on() {
    let mut pair = linked_pair(0);
    let alice = commit_messages(&mut pair, 1);
    // a is stopped right after ordering m-2, before anyone confirmed it.
    pair.nodes[A].hold_fsyncs = true;
    pair.nodes[B].hold_fsyncs = true;
    pair.send(alice, "m-2");
    pair.stop(A, 3_000);
    pair.nodes[B].hold_fsyncs = false;
    // b stops hearing from a and promotes in epoch 2.
    assert!(pair.run_until(2_000, is_primary(B)));
    pair.run_for(3_000 - (pair.now_ms % 3_000));
    pair.nodes[A].hold_fsyncs = false;
    assert!(pair.run_until(3_000, |p| p.node(A).role() == Role::Backup));
    pair.run_for(2_000);
    assert_eq!(
        pair.ack_of(A, "alice", "m-2"),
        None,
        "a acked m-2 in a dead epoch"
    );
    assert!(!pair.published_ids(A).contains(&"m-2".to_string()));
    assert_eq!(pair.nodes[A].step_downs.len(), 1);
    // m-2 was never acked by anyone; a cut it and b may re-commit it, once at most.
    assert!(pair.copies(B, "alice", "m-2") <= 1);
}

/// a's disk stops answering (no fsync completes): it commits nothing, and its heartbeats
/// keep b from taking over. After the detection time without a completed write it hands
/// the role to b, which holds everything acknowledged, and sends its clients there; the
/// message it could not commit is resent to b and stored once.
#[test]
fn a_primary_whose_disk_stops_answering_hands_the_role_to_its_backup() {
    let mut pair = linked_pair(0);
    let alice = commit_messages(&mut pair, 2);
    pair.nodes[A].hold_fsyncs = true;
    pair.send(alice, "m-3");
    pair.run_for(DETECTION_MS - 2 * TICK_MS);
    assert_eq!(
        pair.node(A).role(),
        Role::Primary,
        "moved before the detection time"
    );
    assert_eq!(pair.ack_of(A, "alice", "m-3"), None);
    assert!(
        pair.run_until(4 * TICK_MS, is_primary(B)),
        "b never took over"
    );
    assert!(pair.run_until(TICK_MS, |p| p.node(A).role() == Role::Backup));
    assert_eq!(
        goodbyes(&pair.frames_to(alice)),
        [(Some("failover".into()), Some(CLIENT_ADDRESSES[B].into()))]
    );
    // The client resends m-3 to b: committed there once; nothing acknowledged is missing.
    let again = pair.connect(B, "alice");
    pair.send(again, "m-3");
    pair.run_for(10);
    assert_eq!(pair.ack_of(B, "alice", "m-3"), Some(3));
    assert_eq!(pair.ack_of(A, "alice", "m-3"), None);
    // The disk comes back: a follows b and ends with b's log, m-3 once.
    pair.nodes[A].hold_fsyncs = false;
    assert!(pair.run_until(3_000, Pair::in_sync), "a never caught up");
    assert_eq!(pair.nodes[A].disk.ids(), pair.nodes[B].disk.ids());
    assert_eq!(pair.copies(B, "alice", "m-3"), 1);
}

/// A disk slower than the detection time for one fsync, but not stuck, moves nothing:
/// each completed write restarts the watch.
#[test]
fn a_slow_disk_that_keeps_completing_writes_keeps_the_primary() {
    let mut pair = linked_pair(0);
    let alice = commit_messages(&mut pair, 1);
    pair.nodes[A].fsync_ms = DETECTION_MS * 3 / 4;
    for n in 2..=8 {
        pair.send(alice, &format!("m-{n}"));
        pair.run_for(DETECTION_MS / 2);
    }
    pair.run_for(2 * DETECTION_MS);
    assert_eq!(pair.node(A).role(), Role::Primary);
    assert_eq!(pair.node(B).role(), Role::Backup);
    assert_eq!(pair.ack_of(A, "alice", "m-8"), Some(8));
}

#[test]
fn a_stalled_backup_does_not_promote_on_stale_silence() {
    let mut pair = linked_pair(0);
    commit_messages(&mut pair, 1);
    // a dies while b is stopped: no heartbeat reaches b meanwhile.
    pair.stop(B, 3_000);
    pair.run_for(10);
    pair.crash(A, true);
    pair.run_for(3_000 - 10);
    let woke_ms = pair.now_ms;
    pair.run_for(1);
    assert_eq!(
        pair.node(B).role(),
        Role::Backup,
        "promoted on stale silence"
    );
    assert!(pair.run_until(2 * DETECTION_MS, is_primary(B)));
    let promoted_ms = pair.nodes[B].promotions[0].0;
    assert!(
        promoted_ms >= woke_ms + DETECTION_MS,
        "promoted {} ms after waking",
        promoted_ms - woke_ms
    );
    assert!(promoted_ms < woke_ms + DETECTION_MS + 2 * TICK_MS);
}

#[test]
fn planned_handover_moves_the_primary_without_a_gap() {
    let mut pair = linked_pair(0);
    let alice = commit_messages(&mut pair, 1);
    // m-2 is not on b's disk yet when the stop comes.
    pair.nodes[B].hold_fsyncs = true;
    pair.send(alice, "m-2");
    pair.run_for(50);
    pair.step(A, Input::Shutdown);
    pair.settle();
    pair.send(alice, "m-3");
    let frames = pair.frames_to(alice);
    let refused = frames.last().unwrap();
    assert_eq!(
        (refused.code.as_deref(), refused.id.as_deref()),
        (Some("unavailable"), Some("m-3"))
    );
    assert!(!pair
        .events(A)
        .iter()
        .any(|a| matches!(a, Action::Handover { .. })));
    // Once b has everything, a hands over; b takes over at once.
    pair.nodes[B].hold_fsyncs = false;
    let released_ms = pair.now_ms;
    pair.run_for(1);
    assert_eq!(pair.ack_of(A, "alice", "m-2"), Some(2));
    assert!(pair
        .events(A)
        .iter()
        .any(|a| matches!(a, Action::Handover { epoch: 1, .. })));
    assert_eq!(
        pair.nodes[B].promotions,
        [(released_ms, 2)],
        "no detection wait"
    );
    assert!(pair
        .events(B)
        .iter()
        .any(|a| matches!(a, Action::TookOver { epoch: 2, .. })));
    let frames = pair.frames_to(alice);
    assert_eq!(
        goodbyes(&frames),
        [(Some("shutdown".into()), Some(CLIENT_ADDRESSES[B].into()))]
    );
    assert!(pair.events(A).contains(&Action::Exit));
    assert!(pair.nodes[A].process.is_none());
    assert_eq!(pair.copies(B, "alice", "m-2"), 1);
    assert_eq!(pair.copies(B, "alice", "m-3"), 0);
    assert_eq!(
        promotion_levels(&pair, B),
        [LogLevel::Info],
        "a planned move"
    );
}

/// Issue 15: a stop says how the node stops, so the line after `SIGTERM from pid ...:
/// stopping` explains itself.
#[test]
fn a_stop_without_a_hand_over_says_why() {
    let mut pair = linked_pair(0);
    pair.step(B, Input::Shutdown);
    assert!(pair.nodes[B]
        .logs
        .iter()
        .any(|(_, line)| line
            == "stopping as backup: committing what is pending, then closing clients"));
    pair.settle();
    pair.step(A, Input::Shutdown);
    let said: Vec<_> = pair.nodes[A].logs.iter().map(|(_, l)| l.as_str()).collect();
    assert!(
        said.contains(
            &"stopping without a hand-over (no backup connected): committing what is pending, then closing clients"
        ),
        "{said:?}"
    );
}

#[test]
fn a_drill_hands_over_and_the_old_primary_follows() {
    let mut pair = linked_pair(0);
    let alice = commit_messages(&mut pair, 2);
    pair.step(A, Input::Drill);
    pair.run_for(1);
    assert_eq!(pair.nodes[B].promotions.len(), 1);
    assert_eq!(pair.node(B).epoch(), 2);
    assert_eq!(pair.node(A).role(), Role::Backup);
    assert!(!pair.events(A).contains(&Action::Exit));
    assert_eq!(
        goodbyes(&pair.frames_to(alice)),
        [(Some("failover".into()), Some(CLIENT_ADDRESSES[B].into()))]
    );
    // a follows b, which commits in sync again.
    assert!(pair.run_until(1_000, Pair::in_sync));
    let alice_b = pair.connect(B, "alice");
    pair.nodes[A].hold_fsyncs = true;
    pair.send(alice_b, "m-3");
    pair.run_for(200);
    assert_eq!(pair.ack_of(B, "alice", "m-3"), None, "b waits for a");
    pair.nodes[A].hold_fsyncs = false;
    pair.run_for(1);
    assert_eq!(pair.ack_of(B, "alice", "m-3"), Some(3));
}

/// b promotes once (a crashed), then a, restarted, takes over again across a partition and
/// b steps down: b is a backup in sync with a, within `cooldown_ms` of its promotion (at the
/// returned time).
fn b_backup_within_its_cooldown(cooldown_ms: u64) -> (Pair, u64) {
    let mut pair = linked_pair(cooldown_ms);
    commit_messages(&mut pair, 1);
    pair.crash(A, true);
    assert!(pair.run_until(3_000, is_primary(B)));
    let first_ms = pair.nodes[B].promotions[0].0;
    pair.restart(A);
    assert!(pair.run_until(1_000, Pair::in_sync));
    // b is cut off: a (a new process, no cooldown) takes over; on healing b steps down.
    pair.partition();
    assert!(pair.run_until(3_000, is_primary(A)));
    pair.heal();
    assert!(pair.run_until(1_000, |p| p.node(B).role() == Role::Backup));
    assert!(pair.run_until(1_000, Pair::in_sync));
    (pair, first_ms)
}

#[test]
fn cooldown_limits_automatic_promotions() {
    const COOLDOWN_MS: u64 = 30_000;
    let (mut pair, first_ms) = b_backup_within_its_cooldown(COOLDOWN_MS);
    // a dies: b, silent for far longer than detection, waits out its cooldown.
    pair.crash(A, true);
    let silent = pair.run_until(COOLDOWN_MS, is_primary(B));
    assert!(silent);
    let second_ms = pair.nodes[B].promotions[1].0;
    assert!(
        second_ms >= first_ms + COOLDOWN_MS,
        "promoted again {} ms after the first promotion",
        second_ms - first_ms
    );
    assert!(second_ms < first_ms + COOLDOWN_MS + 2 * TICK_MS);
}

#[test]
fn two_backups_standoff_is_broken_by_the_better_log() {
    let mut pair = Pair::empty(0);
    // Both restart with state: a has seq 1..=5 of epoch 1, b only 1..=3.
    let entries: Vec<Entry> = (1..=5).map(|seq| super::sim::entry(1, seq)).collect();
    for (i, last) in [(A, 5), (B, 3)] {
        let disk = &mut pair.nodes[i].disk;
        disk.log = entries[..last].to_vec();
        disk.spans = vec![(1, 1)];
        disk.seen = 1;
        pair.restart(i);
    }
    assert!(pair.run_until(3_000, |p| is_primary(A)(p) || is_primary(B)(p)));
    pair.run_for(2_000);
    assert_eq!(
        pair.nodes[A].promotions.len(),
        1,
        "a, with the longer log, takes over"
    );
    assert!(pair.nodes[B].promotions.is_empty(), "b promoted too");
    assert_eq!(
        promotion_levels(&pair, A),
        [LogLevel::Info],
        "picking a primary after a restart of both is no fail-over"
    );
    assert_eq!(pair.node(A).epoch(), 3);
    assert!(pair.in_sync(), "b follows a");
    assert_eq!(pair.nodes[B].disk.last_seq(), 5);
}

/// Regression: the standoff compared its own last_seq with the peer's head, so a backup
/// whose head lagged (as it does after any traffic) and a restarted primary both won.
#[test]
fn a_primary_restarted_at_once_and_its_lagging_backup_do_not_both_promote() {
    let mut pair = linked_pair(0);
    // The two heartbeat threads beat half an interval apart (any phase but 0 will do).
    pair.nodes[B].process.as_mut().unwrap().next_beat_ms += INTERVAL_MS / 2;
    // The messages commit a quarter interval after a's heartbeat.
    pair.run_for(INTERVAL_MS - pair.now_ms % INTERVAL_MS + INTERVAL_MS / 4);
    commit_messages(&mut pair, 3);
    // b holds seq 3, but its head (from the last entries frame) says 2 until the idle
    // primary's next link beat, a beat interval after that frame.
    assert_eq!((pair.node(B).last_seq(), pair.node(B).head()), (3, 2));
    // a is killed just after its next heartbeat, before that link beat, and restarted at
    // once (systemd's default RestartSec is 100 ms).
    pair.run_for(INTERVAL_MS - pair.now_ms % INTERVAL_MS + 1);
    assert_eq!(
        pair.node(B).head(),
        2,
        "the link beat came before the crash"
    );
    pair.crash(A, false);
    pair.run_for(20);
    pair.restart(A);
    let restarted_ms = pair.now_ms;
    assert!(pair.run_until(3_000, |p| is_primary(A)(p) || is_primary(B)(p)));
    pair.run_for(2_000);
    let since = |i: usize| -> Vec<(u64, u64)> {
        let promotions = &pair.nodes[i].promotions;
        promotions
            .iter()
            .copied()
            .filter(|&(at, _)| at >= restarted_ms)
            .collect()
    };
    assert_eq!(
        since(A).len() + since(B).len(),
        1,
        "promotions after the restart: a {:?}, b {:?}",
        since(A),
        since(B)
    );
}

/// The regression test above can fail: with the old standoff rule planted back (own last
/// seq against the peer's head, the higher rank winning a tie), both nodes promote after
/// the restart.
#[test]
fn the_standoff_regression_test_finds_the_old_standoff_bug() {
    super::peer::planted::STANDOFF_BY_LAST_SEQ.with(|p| p.set(true));
    let outcome = std::panic::catch_unwind(
        a_primary_restarted_at_once_and_its_lagging_backup_do_not_both_promote,
    );
    super::peer::planted::STANDOFF_BY_LAST_SEQ.with(|p| p.set(false));
    assert!(
        outcome.is_err(),
        "the regression test passed with the old standoff rule planted"
    );
}

/// Regression: the link resubmitted orphans only right after an ack that changed, so a
/// new primary with nothing past the common prefix never got them.
#[test]
fn a_demoted_primarys_uncommitted_message_is_recommitted_when_the_new_primary_is_idle() {
    let mut pair = linked_pair(0);
    let alice = commit_messages(&mut pair, 1);
    pair.partition();
    pair.run_for(800);
    // m-2 is durable on a only; b promotes at seq 2 and commits nothing.
    pair.send(alice, "m-2");
    assert!(pair.run_until(1_000, is_primary(B)));
    pair.heal();
    assert!(pair.run_until(1_000, Pair::in_sync));
    assert!(pair.events(A).contains(&Action::Truncate { after_seq: 1 }));
    // The link's only ack (seq 1) went out before it learned the primary's commit point.
    let recommitted = pair.run_until(10_000, |p| p.copies(B, "alice", "m-2") == 1);
    assert!(
        recommitted,
        "m-2 still only in a's orphans: {:?}",
        pair.nodes[A].disk.orphans
    );
}

/// Regression (found by the pair simulation, seed 16568 of 20 000): a backup adopts its
/// primary's epoch history (here epoch 3 from seq 15) as soon as it is told where the logs
/// part, before any entry arrives. Restarted with that history and an empty log, its
/// promotion began the new epoch at seq 1, before 15: an assertion, so the node aborted at
/// every promotion and the pair had no primary.
#[test]
fn a_backup_whose_epoch_history_runs_past_its_log_can_still_promote() {
    let mut pair = Pair::empty(0);
    let b = Node::new(
        core_config(B, knobs(0)),
        Role::Backup,
        EpochHistory::from_spans(vec![(1, 1), (3, 15)]),
        3,
    );
    pair.start(B, b);
    assert!(pair.run_until(5_000, is_primary(B)), "b never promoted");
    let spans = pair.node(B).epochs().spans().to_vec();
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert_eq!(spans[0], (1, 1));
    assert!(spans[1].0 > 3 && spans[1].1 == 1, "{spans:?}");
}

// ---- the seeded random test ----

/// A chat client: one session, reconnecting to whichever node is primary.
struct Client {
    session: String,
    conn: Option<ConnId>,
    next_id: u64,
    /// Sent but not acked yet: resent now and then, with the same id.
    unacked: Vec<String>,
}

impl Client {
    fn new(session: &str) -> Self {
        Client {
            session: session.into(),
            conn: None,
            next_id: 1,
            unacked: Vec::new(),
        }
    }
}

/// Prints the seed of a failing run, and the one command that replays it exactly.
struct SeedReport(u64);

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() && !QUIET_SEED_REPORT.with(std::cell::Cell::get) {
            let replay = replay_command("PAIR", self.0, "random_pair");
            eprintln!(
                "pair simulation failed with seed {}; replay it (every step printed): {replay}",
                self.0
            );
        }
    }
}

thread_local! {
    /// Set by the planted-bug test, whose failing seeds are expected.
    static QUIET_SEED_REPORT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs one seeded history: random sends, crashes and restarts, partitions and stalls for
/// six seconds, then heals everything and checks what a user would notice.
fn random_pair_run(seed: u64) {
    let _report = SeedReport(seed);
    let mut rng = Rng::new(seed);
    let mut pair = random_pair(seed, &mut rng);
    let mut clients: Vec<Client> = (0..3).map(|n| Client::new(&format!("s{n}"))).collect();
    pair.run_for(500);
    for _slot in 0..120 {
        match rng.below(100) {
            0..=44 => {
                let c = &mut clients[rng.below(3) as usize];
                random_send(&mut pair, &mut rng, c);
            }
            slot => random_fault(&mut pair, &mut rng, slot),
        }
        pair.run_for(50);
        for c in &mut clients {
            let session = &c.session;
            c.unacked.retain(|id| {
                !pair
                    .acked
                    .iter()
                    .any(|a| &a.session == session && &a.id == id)
            });
        }
    }
    settle_after_heal(&mut pair, &mut rng);
    check_final_log(&pair);
}

/// The pair of a seeded run: its network's latency and, in half the runs, a lossy,
/// duplicating, reordering heartbeat path; its disks' fsync times.
fn random_pair(seed: u64, rng: &mut Rng) -> Pair {
    let mut pair = Pair::new(0);
    pair.network.rng = Some(Rng::new(seed ^ 0x5EED));
    pair.network.latency_max_ms = rng.below(25);
    if rng.chance(50) {
        pair.network.loss_percent = rng.below(31);
        pair.network.duplicate_percent = rng.below(21);
        pair.network.jitter_ms = rng.below(400);
    }
    for i in [A, B] {
        pair.nodes[i].fsync_ms = rng.below(30);
    }
    pair
}

/// The fault of schedule slot `slot` (45-99; from 68 on, none).
fn random_fault(pair: &mut Pair, rng: &mut Rng, slot: u64) {
    match slot {
        45..=47 => {
            // kill -9 with the disk kept whole, a power cut (what was not fsynced is
            // gone), or a write torn part-way through what was not fsynced.
            let i = rng.below(2) as usize;
            match rng.below(3) {
                0 => pair.crash(i, false),
                1 => pair.crash(i, true),
                _ => {
                    let disk = &pair.nodes[i].disk;
                    let unsynced = disk.last_seq().saturating_sub(disk.synced_seq);
                    let keep = rng.below(unsynced + 1) as usize;
                    pair.crash_torn(i, keep);
                }
            }
        }
        48..=55 => {
            let i = rng.below(2) as usize;
            if pair.nodes[i].process.is_none() {
                pair.restart(i);
            }
        }
        56..=59 => {
            let from = rng.below(2) as usize;
            pair.network.cut[from][1 - from] = true;
            if rng.chance(50) {
                pair.network.cut[1 - from][from] = true;
            }
        }
        60..=65 => pair.heal(),
        66..=67 => {
            let i = rng.below(2) as usize;
            let ms = 200 + rng.below(2_300);
            pair.stop(i, ms);
        }
        _ => {}
    }
}

/// Heals everything and lets the pair settle while a client keeps chatting (a commit
/// held by a stall waits for the next message: see the ignored stall test).
fn settle_after_heal(pair: &mut Pair, rng: &mut Rng) {
    pair.heal();
    for i in [A, B] {
        if pair.nodes[i].process.is_none() {
            pair.restart(i);
        }
    }
    let mut chatter = Client::new("chatter");
    let settled = |p: &Pair| p.in_sync() && p.nodes.iter().all(|n| n.disk.orphans.is_empty());
    for round in 0.. {
        if settled(pair) {
            break;
        }
        assert!(
            round < 100,
            "the pair did not settle: roles {:?}, orphans {:?}",
            [A, B].map(|i| pair.running(i).then(|| pair.node(i).role())),
            pair.nodes
                .iter()
                .map(|n| &n.disk.orphans)
                .collect::<Vec<_>>()
        );
        random_send(pair, rng, &mut chatter);
        pair.run_for(200);
    }
}

/// (ii) Every acked message is in the final log exactly once; none is there twice; and
/// whatever was published (committed, acked or not) is there too.
fn check_final_log(pair: &Pair) {
    let primary = if pair.node(A).role() == Role::Primary {
        A
    } else {
        B
    };
    let log = &pair.nodes[primary].disk.log;
    let mut copies: HashMap<(&str, &str), usize> = HashMap::new();
    for e in log {
        *copies.entry((&e.session, &e.id)).or_default() += 1;
    }
    for (key, n) in &copies {
        assert_eq!(*n, 1, "{key:?} is in the final log {n} times");
    }
    for acked in &pair.acked {
        assert!(
            copies.contains_key(&(acked.session.as_str(), acked.id.as_str())),
            "{acked:?} is missing from the final log"
        );
    }
    for ((epoch, seq), (session, id)) in &pair.published {
        assert!(
            copies.contains_key(&(session.as_str(), id.as_str())),
            "{session}/{id}, published at (epoch {epoch}, seq {seq}), is missing from the final log"
        );
    }
}

fn random_send(pair: &mut Pair, rng: &mut Rng, c: &mut Client) {
    if !c.conn.is_some_and(|conn| pair.conns.contains_key(&conn)) {
        let primaries: Vec<usize> = [A, B]
            .into_iter()
            .filter(|&i| pair.running(i) && pair.node(i).role() == Role::Primary)
            .collect();
        if primaries.is_empty() {
            return;
        }
        let i = primaries[rng.below(primaries.len() as u64) as usize];
        c.conn = Some(pair.connect(i, &c.session));
    }
    let id = if !c.unacked.is_empty() && rng.chance(30) {
        c.unacked[rng.below(c.unacked.len() as u64) as usize].clone()
    } else {
        let id = format!("m{}", c.next_id);
        c.next_id += 1;
        c.unacked.push(id.clone());
        id
    };
    pair.send(c.conn.expect("connected"), &id);
}

/// Seeds a plain `cargo test` runs: thousands, in well under a minute on 2 cores.
const DEFAULT_SEEDS: u64 = 2_000;

/// Runs seeds `0..count` on every core; the first failure panics with its seed printed.
fn run_seeds(count: u64) {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    std::thread::scope(|scope| {
        for worker in 0..workers {
            scope.spawn(move || {
                let mut seed = worker;
                while seed < count {
                    random_pair_run(seed);
                    seed += workers;
                }
            });
        }
    });
}

#[test]
fn random_pair_histories_keep_every_acked_message_once() {
    if let Some(seed) = env_u64("PAIR_SEED") {
        random_pair_run(seed);
        return;
    }
    // PAIR_SEEDS=N runs more (or fewer).
    let seeds = env_u64("PAIR_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let started = std::time::Instant::now();
    run_seeds(seeds);
    eprintln!(
        "pair simulation: {seeds} seeds in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The simulator can fail: with a bug planted in the core (a primary ignores a heartbeat
/// from a newer epoch instead of stepping down), some seed among the first few hundred
/// breaks an invariant, and replaying that seed breaks it again the same way.
#[test]
fn the_simulator_finds_a_planted_bug() {
    fn failure(seed: u64) -> Option<String> {
        let outcome = std::panic::catch_unwind(|| random_pair_run(seed));
        outcome.err().map(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    }
    QUIET_SEED_REPORT.with(|q| q.set(true));
    super::peer::planted::SKIP_HEARTBEAT_EPOCH_CHECK.with(|p| p.set(true));
    let found = (0..500).find_map(|seed| failure(seed).map(|message| (seed, message)));
    let replayed = found.as_ref().and_then(|(seed, _)| failure(*seed));
    super::peer::planted::SKIP_HEARTBEAT_EPOCH_CHECK.with(|p| p.set(false));
    QUIET_SEED_REPORT.with(|q| q.set(false));

    let (seed, message) = found.expect("500 seeds ran clean with the epoch check skipped");
    eprintln!("planted bug found by seed {seed}: {message}");
    assert_eq!(
        replayed.as_deref(),
        Some(message.as_str()),
        "seed {seed} did not replay the same failure"
    );
    // And without the planted bug the same seed passes.
    random_pair_run(seed);
}

#[test]
fn acked_messages_a_node_kept_aside_are_recommitted_when_it_becomes_primary() {
    let mut pair = linked_pair(0);
    let alice = commit_messages(&mut pair, 1);
    // a, cut off, degrades and acks m-2 in epoch 1; b promotes in epoch 2.
    pair.partition();
    pair.run_for(100);
    pair.send(alice, "m-2");
    assert!(pair.run_until(1_500, |p| p.ack_of(A, "alice", "m-2").is_some()));
    assert!(pair.run_until(1_000, is_primary(B)));
    // Healed, a steps down and cuts m-2 aside; b dies before a could resubmit it.
    pair.heal();
    assert!(pair.run_until(1_000, |p| p
        .events(A)
        .contains(&Action::Truncate { after_seq: 1 })));
    pair.crash(B, false);
    assert_eq!(pair.nodes[A].disk.orphans.len(), 1);
    // a takes over; b comes back and follows it.
    assert!(pair.run_until(3_000, is_primary(A)));
    pair.restart(B);
    assert!(pair.run_until(2_000, Pair::in_sync));
    pair.run_for(5_000);
    assert_eq!(
        pair.copies(A, "alice", "m-2"),
        1,
        "acked m-2 is only in the primary's orphans: {:?}",
        pair.nodes[A].disk.orphans
    );
}

fn kinds(frames: &[ServerFrame]) -> Vec<&str> {
    frames.iter().map(|f| f.kind.as_str()).collect()
}

#[test]
fn a_backup_holds_hellos_while_its_primary_is_quiet_and_welcomes_them_on_promotion() {
    let mut pair = linked_pair(0);
    commit_messages(&mut pair, 2);
    // Before anything is wrong, a backup redirects at once, naming the primary.
    let early = pair.connect(B, "early");
    let frames = pair.frames_to(early);
    assert_eq!(kinds(&frames), ["redirect"]);
    assert_eq!(frames[0].primary.as_deref(), Some(CLIENT_ADDRESSES[A]));
    pair.crash(A, true);
    pair.run_for(INTERVAL_MS + TICK_MS);
    // A heartbeat interval without word: b may be about to take over, so it holds the hello
    // (and the join sent right behind it) instead of sending the client to a.
    let bob = pair.connect(B, "bob");
    pair.run_for(DETECTION_MS / 2);
    assert!(!is_primary(B)(&pair));
    assert_eq!(kinds(&pair.frames_to(bob)), Vec::<&str>::new());
    assert!(pair.run_until(3_000, is_primary(B)), "b never promoted");
    let frames = pair.frames_to(bob);
    assert_eq!(kinds(&frames), ["welcome", "joined"]);
    assert_eq!(frames[0].epoch, Some(2), "welcomed in b's new epoch");
    // The welcome names where to go if b fails, and the client's liveness wait.
    assert_eq!(frames[0].peer.as_deref(), Some(CLIENT_ADDRESSES[A]));
    assert_eq!(frames[0].probe_ms, Some(2 * INTERVAL_MS));
    assert_eq!(frames[1].head, Some(2));
    // The session is open: bob's send commits at once.
    pair.send(bob, "b-1");
    pair.run_for(10);
    assert_eq!(pair.ack_of(B, "bob", "b-1"), Some(3));
}

#[test]
fn a_held_hello_is_redirected_when_the_primary_speaks_again() {
    let mut pair = linked_pair(0);
    commit_messages(&mut pair, 1);
    // a stalls for less than detection: b holds hellos meanwhile.
    pair.stop(A, DETECTION_MS / 2);
    pair.run_for(INTERVAL_MS + TICK_MS);
    let bob = pair.connect(B, "bob");
    assert_eq!(kinds(&pair.frames_to(bob)), Vec::<&str>::new());
    // What waits behind a held hello is bounded (connect queued one join already).
    for k in 1..HELD_REQUESTS_MAX {
        pair.request(B, bob, &format!(r#"{{"type":"leave","room":"r{k}"}}"#));
    }
    assert_eq!(kinds(&pair.frames_to(bob)), Vec::<&str>::new());
    pair.request(
        B,
        bob,
        &format!(r#"{{"type":"send","room":"{ROOM}","id":"over","body":"x"}}"#),
    );
    let frames = pair.frames_to(bob);
    assert_eq!(kinds(&frames), ["error"]);
    assert_eq!(frames[0].code.as_deref(), Some("bad_request"));
    assert_eq!(
        frames[0].id.as_deref(),
        Some("over"),
        "names the refused send"
    );
    assert!(pair.run_until(DETECTION_MS, |p| p.frames_to(bob).len() > 1));
    assert!(!is_primary(B)(&pair), "b took over from a live primary");
    let frames = pair.frames_to(bob);
    assert_eq!(kinds(&frames), ["error", "redirect"]);
    assert_eq!(frames[1].primary.as_deref(), Some(CLIENT_ADDRESSES[A]));
}

#[test]
fn a_held_hello_is_answered_by_its_deadline_when_the_backup_cannot_take_over() {
    const COOLDOWN_MS: u64 = 30_000;
    let (mut pair, _) = b_backup_within_its_cooldown(COOLDOWN_MS);
    // a dies, and b's cooldown keeps it from taking over for a long while: a held client
    // gets the usual redirect at the hold deadline and may try elsewhere.
    pair.crash(A, true);
    pair.run_for(INTERVAL_MS + TICK_MS);
    let bob = pair.connect(B, "bob");
    let held_at = pair.now_ms;
    assert!(pair.run_until(HELLO_HOLD_MAX_MS + TICK_MS, |p| !p
        .frames_to(bob)
        .is_empty()));
    let waited = pair.now_ms - held_at;
    let hold_ms = (DETECTION_MS + 2 * INTERVAL_MS).min(HELLO_HOLD_MAX_MS);
    assert!(
        (hold_ms..hold_ms + 2 * TICK_MS).contains(&waited),
        "answered after {waited} ms"
    );
    let frames = pair.frames_to(bob);
    assert_eq!(kinds(&frames), ["redirect"]);
    assert_eq!(frames[0].primary.as_deref(), Some(CLIENT_ADDRESSES[A]));
    assert!(!is_primary(B)(&pair));
}

#[test]
fn a_primary_aborts_a_link_that_stays_stuck_after_a_one_way_cut_heals() {
    let mut pair = linked_pair(0);
    commit_messages(&mut pair, 2);
    // An idle link carries beats: a long quiet spell aborts nothing.
    pair.run_for(3 * DETECTION_MS);
    let aborted = |p: &Pair| {
        p.events(A)
            .iter()
            .any(|a| matches!(a, Action::AbortLink { .. }))
    };
    assert!(!aborted(&pair));
    // b's packets to a are lost for a while: a hears nothing from b, b still hears a.
    pair.network.cut[B][A] = true;
    pair.run_for(3 * DETECTION_MS);
    assert!(!is_primary(B)(&pair), "b promoted while it heard a");
    assert!(
        !aborted(&pair),
        "aborted while b's heartbeats were lost too"
    );
    // The cut heals, but the link's own data stays stuck (TCP waits out its backed-off
    // retransmission timer): heartbeats arrive again, link frames do not.
    let stuck_id = pair.links.last().expect("a link").id;
    pair.stuck = Some((stuck_id, B));
    pair.network.cut[B][A] = false;
    let healed = pair.now_ms;
    assert!(
        pair.run_until(2 * INTERVAL_MS + 2 * TICK_MS, aborted),
        "a kept the stuck link"
    );
    // b dials again on a fresh connection and catches up.
    let relinked = |p: &Pair| {
        p.links
            .iter()
            .any(|l| l.id != stuck_id && l.open == [true; 2])
    };
    assert!(pair.run_until(DETECTION_MS, |p| relinked(p) && Pair::in_sync(p)));
    eprintln!("in sync {} ms after the heal", pair.now_ms - healed);
    let alice = pair.connect(A, "alice2");
    pair.send(alice, "after");
    pair.run_for(50);
    assert!(pair.ack_of(A, "alice2", "after").is_some());
    assert!(!pair.node(A).degraded());
}
