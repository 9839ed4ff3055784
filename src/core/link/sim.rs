//! The link as both simulators (pair_tests, strict_tests) carry it, the way the daemon's
//! link threads do: a stream of segments between [`LinkEnds`], which run the real
//! handshake under the pair's keys and then the real sessions, checking their invariants
//! after every step. The simulators own the network (delays, cuts, FINs) and the disks.

use std::time::Duration;

use super::handshake::{auth, authenticated, hello, welcome, Ends, LogView};
use super::{BackupSession, LinkCommand, Next, NodeView, PrimarySession, ENTRIES_PER_FRAME};
use crate::core::{Input, LinkId, Node, Role};
use crate::entry::Entry;
use crate::wire::keyring::{parse_keyring, Keyring};
use crate::wire::replication::{PeerFrame, NONCE_BYTES};

/// What a link's byte stream carries to one end: a frame, or the FIN after the last one.
#[derive(Clone, Debug)]
pub enum Segment {
    Frame(PeerFrame),
    /// The sender's socket closed: FIN after everything it sent.
    Fin,
}

/// A primary session's [`super::Next::ReadLog`] from a simulated log: the entries from
/// `from` up to `upto`, at most [`ENTRIES_PER_FRAME`], as `LogReader::range` reads them.
pub fn read_log(log: &[Entry], from: u64, upto: u64) -> Vec<Entry> {
    log.iter()
        .skip_while(|e| e.seq < from)
        .take_while(|e| e.seq <= upto)
        .take(ENTRIES_PER_FRAME)
        .cloned()
        .collect()
}

/// The pair's secret in the simulations: both nodes hold it, so every handshake verifies.
const PAIR_SECRET: &str = "1 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";

pub fn pair_keys() -> Keyring {
    parse_keyring("simulation", PAIR_SECRET).expect("the simulation's secret parses")
}

/// Node `i` of the pair named `ids` as its end of a handshake sees itself; `first_seq`:
/// where its log starts.
pub fn node_side<'a>(
    keys: &'a Keyring,
    ids: [&'a str; 2],
    (i, node): (usize, &Node),
    first_seq: u64,
) -> NodeSide<'a> {
    NodeSide {
        ends: Ends {
            node_id: ids[i],
            peer_id: ids[1 - i],
            keys,
        },
        view: log_view(node, first_seq),
        primary: node.role() == Role::Primary,
    }
}

/// Node `node`'s log and epochs as its driver's snapshot shows them to the handshake.
fn log_view(node: &Node, first_seq: u64) -> LogView {
    LogView {
        epoch: node.epoch(),
        seen_epoch: node.seen_epoch(),
        spans: node.epochs().spans().to_vec(),
        head: node.head(),
        last_seq: node.last_seq(),
        first_seq,
        log_stuck: node.log_stuck(),
    }
}

/// The link's pace, as the daemon's config sets it.
#[derive(Clone, Copy, Debug)]
pub struct LinkTiming {
    pub window: u64,
    pub beat_interval: Duration,
}

/// Node `i` as its end of a handshake sees itself: who it is, its log, its role now.
pub struct NodeSide<'a> {
    pub ends: Ends<'a>,
    pub view: LogView,
    pub primary: bool,
}

/// What an end does with a frame that reached it.
#[derive(Debug, Default)]
pub struct Arrived {
    /// Frames it sends back.
    pub replies: Vec<PeerFrame>,
    /// For its core.
    pub input: Option<Input>,
    /// The end closes, for this reason.
    pub end: Option<String>,
    /// Primary end: its writer goes on at once (the window moved).
    pub wake_writer: bool,
    /// Backup end: everything kept aside is re-committed; the orphans file goes.
    pub orphans_done: bool,
}

/// Both ends of one simulated link as the daemon's link threads hold them: the handshake's
/// frames, then each side's session. Every step of either end checks both ends'
/// invariants after it.
#[derive(Debug)]
pub struct LinkEnds {
    id: LinkId,
    /// The dialing node's index; the other is the primary end.
    backup: usize,
    timing: LinkTiming,
    /// The handshake's frames, which its MACs cover.
    hello: PeerFrame,
    welcome: Option<PeerFrame>,
    primary_end: Option<PrimarySession>,
    backup_end: Option<BackupSession>,
    /// Backup end: the newest durable seq its core asked to ack (the daemon's ack atomic).
    ack_seq: u64,
}

impl LinkEnds {
    /// Node `backup` dials: the link's ends, and the `Hello` it sends first.
    pub fn dial(id: LinkId, backup: usize, timing: LinkTiming, side: &NodeSide) -> Self {
        LinkEnds {
            id,
            backup,
            timing,
            hello: hello(&side.ends, &side.view, [0; NONCE_BYTES]),
            welcome: None,
            primary_end: None,
            backup_end: None,
            ack_seq: 0,
        }
    }

    pub fn hello(&self) -> PeerFrame {
        self.hello.clone()
    }

    /// Node `i`'s end finished the handshake (its core knows the link).
    pub fn established(&self, i: usize) -> bool {
        if i == self.backup {
            self.backup_end.is_some()
        } else {
            self.primary_end.is_some()
        }
    }

    /// Node `i`'s end reads frames now: the primary's reader waits for its core's accept.
    pub fn reading(&self, i: usize) -> bool {
        i == self.backup || self.primary_end.as_ref().is_none_or(|s| s.accepted())
    }

    fn check(&self) {
        let primary = self.primary_end.as_ref().map_or(Ok(()), |s| s.invariants());
        let backup = self.backup_end.as_ref().map_or(Ok(()), |s| s.invariants());
        if let Err(problem) = primary.and(backup) {
            panic!("link invariant broken: {problem}");
        }
    }

    /// A frame reaches node `to`'s end at `now` on its clock.
    pub fn on_frame(
        &mut self,
        to: usize,
        frame: PeerFrame,
        now: Duration,
        side: &NodeSide,
    ) -> Arrived {
        let arrived = if self.established(to) {
            self.on_session_frame(to, frame, now)
        } else if to == self.backup {
            self.on_welcome(frame, now, side)
        } else if self.welcome.is_none() {
            self.on_hello(frame, side)
        } else {
            self.on_auth(frame, now, side)
        };
        self.check();
        arrived
    }

    /// The primary end: refused unless primary (`link::serve_backup`), else welcomed.
    fn on_hello(&mut self, hello: PeerFrame, side: &NodeSide) -> Arrived {
        let nonce = [0; NONCE_BYTES];
        match welcome(&side.ends, &hello, (&side.view, side.primary), nonce) {
            Ok(welcome) => {
                self.welcome = Some(welcome.clone());
                Arrived {
                    replies: vec![welcome],
                    ..Arrived::default()
                }
            }
            Err(refusal) => Arrived {
                replies: refusal.answer().into_iter().collect(),
                end: Some(refusal.end.to_string()),
                ..Arrived::default()
            },
        }
    }

    /// The dialer checks the answer, authenticates and starts its session.
    fn on_welcome(&mut self, answer: PeerFrame, now: Duration, side: &NodeSide) -> Arrived {
        let welcomed = match auth(&side.ends, &self.hello, &answer) {
            Ok(welcomed) => welcomed,
            Err(end) => return ended(end.to_string()),
        };
        let beat = self.timing.beat_interval;
        let (session, input) =
            BackupSession::start(self.id, welcomed.epoch, welcomed.spans, beat, now);
        self.backup_end = Some(session);
        Arrived {
            replies: vec![welcomed.auth],
            input: Some(input),
            ..Arrived::default()
        }
    }

    /// The primary end checks the `Auth` and starts its session.
    fn on_auth(&mut self, frame: PeerFrame, now: Duration, side: &NodeSide) -> Arrived {
        let welcome = self.welcome.as_ref().expect("the primary end welcomed");
        let backup = match authenticated(&side.ends, &self.hello, welcome, &frame) {
            Ok(backup) => backup,
            Err(end) => return ended(end.to_string()),
        };
        let LinkTiming {
            window,
            beat_interval,
        } = self.timing;
        let (session, input) = PrimarySession::start(self.id, backup, window, beat_interval, now);
        self.primary_end = Some(session);
        Arrived {
            input: Some(input),
            ..Arrived::default()
        }
    }

    fn on_session_frame(&mut self, to: usize, frame: PeerFrame, now: Duration) -> Arrived {
        let received = match (&mut self.primary_end, &mut self.backup_end) {
            (_, Some(session)) if to == self.backup => session.on_frame(frame, now),
            (Some(session), _) => session.on_frame(frame, now),
            _ => unreachable!("an established end has its session"),
        };
        match received {
            Ok(received) => Arrived {
                input: received.input,
                wake_writer: received.wake_writer,
                orphans_done: received.orphans_done,
                ..Arrived::default()
            },
            Err(reason) => ended(reason),
        }
    }

    /// Node `i`'s writer: what its session asks next (`None` before the handshake ended).
    /// `appended_seq`: the primary's log end.
    pub fn next(
        &mut self,
        i: usize,
        now: Duration,
        appended_seq: u64,
        view: NodeView,
    ) -> Option<Next> {
        let next = match (&mut self.primary_end, &mut self.backup_end) {
            (_, Some(session)) if i == self.backup => session.next(now, self.ack_seq, view),
            (Some(session), _) if i != self.backup => session.next(now, appended_seq, view),
            _ => return None,
        };
        self.check();
        Some(next)
    }

    /// The primary end's log read for [`Next::ReadLog`], from a simulated log.
    pub fn on_read(
        &mut self,
        log: &[Entry],
        (from, upto): (u64, u64),
        view: NodeView,
        now: Duration,
    ) -> Result<PeerFrame, String> {
        let session = self.primary_end.as_mut().expect("the primary end reads");
        let frame = session.on_read(read_log(log, from, upto), view, now);
        self.check();
        frame
    }

    /// The backup end's orphans for [`Next::ReadOrphans`]: the frames to send.
    pub fn on_orphans(&mut self, batches: Vec<Vec<Entry>>, now: Duration) -> Vec<PeerFrame> {
        let session = self.backup_end.as_mut().expect("the backup end resubmits");
        let frames = session.on_orphans(batches, now);
        self.check();
        frames
    }

    /// A core command to node `from`'s end: the frames its session makes.
    pub fn on_command(
        &mut self,
        from: usize,
        command: LinkCommand,
        now: Duration,
    ) -> Vec<PeerFrame> {
        let frames = match (&mut self.primary_end, &mut self.backup_end) {
            (_, Some(session)) if from == self.backup => {
                session.on_command(command, now).into_iter().collect()
            }
            (Some(session), _) if from != self.backup => session.on_command(command, now),
            _ => Vec::new(),
        };
        self.check();
        frames
    }

    /// The backup end's core asked to ack `durable_seq` (`Action::AckPrimary`).
    pub fn ack(&mut self, durable_seq: u64) {
        self.ack_seq = self.ack_seq.max(durable_seq);
    }
}

fn ended(reason: String) -> Arrived {
    Arrived {
        end: Some(reason),
        ..Arrived::default()
    }
}
