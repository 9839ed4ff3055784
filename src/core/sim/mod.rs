//! The simulation harness the pair and strict simulations (`pair_tests`, `strict_tests`)
//! run on: the world around real [`Node`]s that the daemon and the machine would be. It owns
//! the pieces both need and nothing either checks:
//! - [`Rng`]: one seeded generator per concern, so a seed replays a run exactly;
//! - [`Clock`]: each process's monotonic clock, started at 0 with the process and running
//!   at its own rate (drift);
//! - [`Disk`]: what survives a process (log, epochs file, orphans side file) with fsync
//!   semantics: what was fsynced survives a power cut, what was only written survives a
//!   crash of the process;
//! - [`Network`]: per-direction cuts between the nodes and the witness, and the datagram
//!   path's latency, loss, duplication and reordering; streams keep their order;
//! - [`EventQueue`]: events due at simulated times, run in time order, ties in the order
//!   they were scheduled;
//! - the pair's configuration and each node's side of the link's handshake; the link itself
//!   is [`crate::core::link::sim::LinkEnds`], the real handshake and sessions.
//!
//! Each simulation keeps its own driver, fault schedule and checker; this module decides
//! nothing about what a fault is or what must hold.

mod disk;
mod network;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

pub use disk::Disk;
pub use network::{Network, WITNESS};

use super::link::sim::{node_side, LinkTiming, NodeSide};
use super::link::LinkCommand;
use super::{
    Action, CoreConfig, Input, LinkId, Node, PairConfig, ReplicationMode, Role, SELF_LINK,
};
use crate::entry::Entry;
use crate::wire::keyring::Keyring;

pub const NODE_IDS: [&str; 2] = ["a", "b"];
/// Each node's client address; a node announces the other's in `goodbye` and `redirect`.
pub const CLIENT_ADDRESSES: [&str; 2] = ["10.0.0.1:7400", "10.0.0.2:7400"];
pub const INTERVAL_MS: u64 = 200;
pub const DETECTION_MS: u64 = 1_000;
/// The daemon's core tick.
pub const TICK_MS: u64 = 50;
/// A backup dials again this long after a dial failed or its link ended.
pub const REDIAL_MS: u64 = 50;
/// Wall-clock milliseconds at sim time 0, so timestamps look like real ones.
pub const WALL_BASE_MS: u64 = 1_700_000_000_000;
pub const ROOM: &str = "r";
/// The link's pace: `replication.window`'s default, and a beat every heartbeat interval.
pub const TIMING: LinkTiming = LinkTiming {
    window: 8_192,
    beat_interval: Duration::from_millis(INTERVAL_MS),
};
/// A clock running at real time, in millionths of real time.
pub const REAL_TIME_PPM: u64 = 1_000_000;

/// What differs between the simulations' pair settings.
#[derive(Clone, Copy, Debug)]
pub struct PairKnobs {
    pub mode: ReplicationMode,
    pub ack_timeout_ms: u64,
    pub cooldown_ms: u64,
}

/// Node `index`'s core configuration: a paired node with limits no simulated client reaches.
pub fn core_config(index: usize, knobs: PairKnobs) -> CoreConfig {
    CoreConfig {
        node_id: NODE_IDS[index].into(),
        // Where a node starts is `Node::new`'s role argument; this field is not read here.
        role: Role::Backup,
        peer_client_address: Some(CLIENT_ADDRESSES[1 - index].into()),
        hello_timeout_ms: 60_000,
        rate_per_sec: 10_000,
        rate_burst: 10_000,
        max_errors: 3,
        max_rooms_per_client: 4,
        max_pending: 10_000,
        pair: Some(PairConfig {
            rank: index as u64,
            peer_client_address: CLIENT_ADDRESSES[1 - index].into(),
            interval_ms: INTERVAL_MS,
            detection_ms: DETECTION_MS,
            mode: knobs.mode,
            ack_timeout_ms: knobs.ack_timeout_ms,
            promotion_cooldown_ms: knobs.cooldown_ms,
            check_address: false,
        }),
        access: Default::default(),
    }
}

/// Node `i` as its end of a handshake sees itself: its core and its disk.
pub fn side<'a>(keys: &'a Keyring, i: usize, node: &Node, disk: &Disk) -> NodeSide<'a> {
    node_side(keys, NODE_IDS, (i, node), disk.first_seq.max(1))
}

/// What an action asks of the node's end of a link, as `daemon::Driver::route` passes it on.
#[derive(Debug)]
pub enum LinkWork {
    /// A command to the end's session, which may send frames.
    Command(LinkId, LinkCommand),
    /// The end closes (its FIN follows what it sent).
    Close(LinkId),
    /// The backup end's core asked to ack this durable seq.
    Ack(LinkId, u64),
}

/// The link work in `action`, if any. A re-commit the primary did on its own
/// ([`SELF_LINK`]) is no link's business.
pub fn link_work(action: &Action) -> Option<LinkWork> {
    let work = match *action {
        Action::AcceptBackup {
            link,
            truncate_after,
            restart_at,
        } => {
            let accept = LinkCommand::Accept {
                truncate_after,
                restart_at,
            };
            LinkWork::Command(link, accept)
        }
        Action::CloseLink { link, .. } | Action::AbortLink { link, .. } => LinkWork::Close(link),
        Action::AckPrimary { link, durable_seq } => LinkWork::Ack(link, durable_seq),
        Action::Handover { link, epoch } => {
            LinkWork::Command(link, LinkCommand::Handover { epoch })
        }
        Action::TookOver { link, epoch } => {
            LinkWork::Command(link, LinkCommand::TookOver { epoch })
        }
        Action::ResubmitDone { link, epoch, seq } if link != SELF_LINK => {
            LinkWork::Command(link, LinkCommand::ResubmitDone { epoch, seq })
        }
        _ => return None,
    };
    Some(work)
}

/// Message `m-{seq}` of session `alice` in room [`ROOM`], as committed at (`epoch`, `seq`).
pub fn entry(epoch: u64, seq: u64) -> Entry {
    Entry {
        epoch,
        seq,
        ts_ms: 0,
        room: ROOM.into(),
        from: "alice".into(),
        session: "alice".into(),
        id: format!("m-{seq}"),
        body: format!("alice/m-{seq}"),
        orig: None,
    }
}

/// A number from the environment variable `name` (`PAIR_SEEDS`, `STRICT_SEED`, ...), if it
/// is set to one.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// The one command that replays `seed` of the simulation whose variables start with
/// `prefix` (`PAIR`, `STRICT`) in the tests named by `filter`, every step printed.
pub fn replay_command(prefix: &str, seed: u64, filter: &str) -> String {
    format!("{prefix}_SEED={seed} {prefix}_TRACE=1 cargo test --lib {filter} -- --nocapture")
}

/// xorshift64*: a tiny deterministic generator, so a seed replays a run exactly.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A process's monotonic clock: 0 when the process starts (the daemon's `Instant` base),
/// then running at `rate_ppm` millionths of real time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Sim time the process started.
    pub started_ms: u64,
    pub rate_ppm: u64,
}

impl Clock {
    pub fn start(now_ms: u64, rate_ppm: u64) -> Self {
        Clock {
            started_ms: now_ms,
            rate_ppm,
        }
    }

    /// What the process reads at sim time `now_ms`.
    pub fn mono_ms(&self, now_ms: u64) -> u64 {
        (now_ms - self.started_ms) * self.rate_ppm / REAL_TIME_PPM
    }
}

/// A running pbchatd around a real [`Node`]: its clock and the timers of its loop, as
/// `daemon::run` keeps them. `X`: what one simulation keeps besides.
pub struct Process<X> {
    pub node: Node,
    pub clock: Clock,
    /// The core's next tick, heartbeat and (as a backup without a link) dial.
    pub next_tick_ms: u64,
    pub next_beat_ms: u64,
    pub redial_at_ms: u64,
    /// The log writer's generation, bumped by each cut (the daemon's writer keeps its own).
    pub writer_generation: u64,
    /// SIGSTOP: nothing in the process runs before this time.
    pub stopped_until: Option<u64>,
    pub own: X,
}

impl<X> Process<X> {
    /// Starts at `now_ms` with a clock at `rate_ppm`: everything is due at once.
    pub fn start(node: Node, now_ms: u64, rate_ppm: u64, own: X) -> Self {
        Process {
            node,
            clock: Clock::start(now_ms, rate_ppm),
            next_tick_ms: now_ms,
            next_beat_ms: now_ms,
            redial_at_ms: now_ms,
            writer_generation: 0,
            stopped_until: None,
            own,
        }
    }

    /// The core's tick (`TICK_MS`), if one is due at `now_ms`.
    pub fn tick_due(&mut self, now_ms: u64) -> Option<Input> {
        if now_ms < self.next_tick_ms {
            return None;
        }
        self.next_tick_ms = now_ms + TICK_MS;
        Some(Input::Tick {
            now_ms: WALL_BASE_MS + now_ms,
            mono_ms: self.clock.mono_ms(now_ms),
        })
    }
}

/// Events due at sim times: the earliest first, ties in the order they were scheduled, so
/// a run does not depend on how the heap breaks ties.
#[derive(Debug)]
pub struct EventQueue<E> {
    /// (due, order scheduled, slot in `events`).
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    /// Each event, taken out when it runs; slots are not reused (a run is 30 s at most).
    events: Vec<Option<E>>,
    next_order: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            queue: BinaryHeap::new(),
            events: Vec::new(),
            next_order: 0,
        }
    }
}

impl<E> EventQueue<E> {
    pub fn schedule_at(&mut self, at_ms: u64, event: E) {
        let slot = self.events.len();
        self.events.push(Some(event));
        self.queue.push(Reverse((at_ms, self.next_order, slot)));
        self.next_order += 1;
    }

    /// The earliest event due at or before `until_ms`, with its time.
    pub fn pop_due(&mut self, until_ms: u64) -> Option<(u64, E)> {
        let &Reverse((at, _, slot)) = self.queue.peek()?;
        if at > until_ms {
            return None;
        }
        self.queue.pop();
        let event = self.events[slot].take().expect("each event runs once");
        Some((at, event))
    }
}

mod tests;
