//! Protocol state of one client session, kept across reconnects, so that a fail-over is
//! never seen as lost or doubled text (docs/protocol.md, section 11, guarantee 3).
//!
//! It holds the rooms the client is in, with the position of the last message shown in
//! each; the sends not yet acknowledged; the history requests not yet answered; and a
//! bounded set of recently shown messages per room for skipping replays and `orig` copies.
//!
//! Pure: frames in, verdicts and frames to send out. No sockets, clocks, threads or terminal.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};

use serde_json::Value;
use thiserror::Error;

use crate::client::frames;
use crate::wire::client::{ServerFrame, HISTORY_LIMIT_MAX};

/// Recently shown (epoch, seq) kept per room. A message carried over from a losing history
/// (`orig`) comes back after the partition heals; human chat during one partition stays far
/// below this, and 4096 pairs cost about 100 KiB per room with the index.
pub const RECENT_SHOWN_PER_ROOM_MAX: usize = 4096;

/// Sends waiting for their ack. This many unacknowledged lines means the node has not
/// answered for a long while; refusing more tells the person instead of growing a queue
/// that would all be resent at once.
pub const UNACKED_SENDS_MAX: usize = 1000;

/// History requests waiting for `history_end`. More than a handful in flight is a person
/// hammering `/history`; each answer may be up to `HISTORY_LIMIT_MAX` messages.
pub const PENDING_HISTORY_MAX: usize = 16;

/// Where a room was left, as a `join` frame's `after`/`after_epoch` carry it.
pub use super::frames::Position;

/// A `send` the node has not acknowledged yet; resent with the same `id` after a reconnect,
/// which the node de-duplicates by (session, id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSend {
    pub room: String,
    pub id: String,
    pub body: String,
}

/// Expected refusals of a local request, before anything reaches the wire.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("{count} messages already await acknowledgment; not queuing more")]
    TooManyUnacked { count: usize },
    #[error("message id {0} already awaits acknowledgment")]
    DuplicateId(String),
    #[error("{count} history requests already await an answer")]
    TooManyHistoryRequests { count: usize },
    #[error("not in room {0}")]
    NotInRoom(String),
}

/// What to do with a `msg` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgVerdict {
    /// A message of the live (or replayed) stream not shown before: show it.
    Show,
    /// Part of the answer to a pending `history` request: print it as history.
    History,
    /// Already shown: a replay after reconnect, or a history answer re-sent after one.
    Duplicate,
    /// A carried-over copy (`orig`) of a message already shown, or the surviving history's
    /// copy (same sender and id) of one shown from a history the node replaced.
    OrigShown,
    /// A message of a room this client is not in and asked no history of.
    Stray,
}

/// What to do after an `error` frame that answers one of our sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendErrorAction {
    /// Final: the message will not be stored; it left the unacknowledged set.
    Failed(PendingSend),
    /// Not stored now, may be later (`rate_limited`, `unavailable`): resend after a pause.
    RetryLater,
    /// The node cannot take writes (`not_primary`): find the primary, resend there.
    Reconnect,
    /// No unacknowledged send has that id (answered already): nothing to do.
    Unknown,
}

/// Bounded FIFO set of shown (epoch, seq).
#[derive(Debug, Default)]
struct RecentShown {
    /// Insertion order, oldest first; evicted from the front beyond the bound.
    order: VecDeque<(u64, u64)>,
    /// Same pairs as `order`, for lookup, each with the [`fingerprint`] of its sender and id.
    set: HashMap<(u64, u64), u64>,
}

impl RecentShown {
    fn contains(&self, key: (u64, u64)) -> bool {
        self.set.contains_key(&key)
    }

    fn insert(&mut self, key: (u64, u64), fingerprint: u64) {
        if self.set.insert(key, fingerprint).is_some() {
            return;
        }
        self.order.push_back(key);
        if self.order.len() > RECENT_SHOWN_PER_ROOM_MAX {
            let oldest = self
                .order
                .pop_front()
                .expect("over the bound, so not empty");
            self.set.remove(&oldest);
        }
        debug_assert_eq!(self.order.len(), self.set.len());
    }

    /// The fingerprints of the messages shown at `seq` or later in an epoch older than
    /// `epoch`: a history that the node's history (in `epoch` from `seq` on) replaced.
    fn replaced_by(&self, epoch: u64, seq: u64) -> HashSet<u64> {
        self.set
            .iter()
            .filter(|((shown_epoch, shown_seq), _)| *shown_epoch < epoch && *shown_seq >= seq)
            .map(|(_, fingerprint)| *fingerprint)
            .collect()
    }
}

/// Identifies a message by its sender and id. Within one history a (session, id) is stored
/// once; a message stored by two primaries at once (the old one alone, the new one from the
/// client's resend) keeps its sender and id in both, but only the copy that wins carries
/// on, without `orig`. Ids unique per nick (pbchat-client's are) make this exact.
fn fingerprint(frame: &ServerFrame) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    frame.from.hash(&mut hasher);
    frame.id.hash(&mut hasher);
    hasher.finish()
}

#[derive(Debug, Default)]
struct Room {
    /// Where this client is in the room's history: the last message shown, else where it
    /// joined (`joined.head`, or the `after` it asked for). A rejoin replays after it.
    /// `None` only until the first `joined` of a join without `after`.
    position: Option<Position>,
    recent: RecentShown,
    /// Fingerprints of messages shown from a part of history that the node replaced (after
    /// two primaries): their copies in the surviving history are not shown again. A subset
    /// of `recent`, so bounded by it.
    replaced: HashSet<u64>,
    /// Members as of the last `joined`, updated by `presence`.
    members: BTreeSet<String>,
}

#[derive(Debug)]
struct HistoryRequest {
    room: String,
    /// Only messages below it answer this request, which tells them from live ones: for a
    /// room we are in it is one past our position, so every live message is above it.
    before: Option<u64>,
    limit: usize,
    /// Highest seq printed for this request; a request re-sent after a reconnect is
    /// answered from the start again and those must not print twice.
    printed_through: Option<u64>,
}

/// The state of one session across its connections.
#[derive(Debug, Default)]
pub struct Session {
    rooms: BTreeMap<String, Room>,
    /// In order of first send, which is the order they are resent in.
    unacked: VecDeque<PendingSend>,
    /// In order of request; the node answers them in that order.
    histories: VecDeque<HistoryRequest>,
}

impl Session {
    pub fn new() -> Self {
        Session::default()
    }

    /// Enters a room (optionally replaying after `after`). Returns the frame to send now
    /// when connected; `None` when already in the room.
    pub fn join(&mut self, room: &str, after: Option<Position>) -> Option<Value> {
        if self.rooms.contains_key(room) {
            return None;
        }
        self.rooms.insert(
            room.to_string(),
            Room {
                position: after,
                ..Room::default()
            },
        );
        Some(frames::join(room, after))
    }

    /// Leaves a room; `None` when not in it. Its position is forgotten: joining again is a
    /// fresh start, as the person asked.
    pub fn leave(&mut self, room: &str) -> Option<Value> {
        self.rooms.remove(room)?;
        Some(frames::leave(room))
    }

    /// Queues a message until its ack; returns the `send` frame.
    pub fn send(&mut self, room: &str, id: &str, body: &str) -> Result<Value, SessionError> {
        if !self.rooms.contains_key(room) {
            return Err(SessionError::NotInRoom(room.to_string()));
        }
        if self.unacked.len() >= UNACKED_SENDS_MAX {
            return Err(SessionError::TooManyUnacked {
                count: self.unacked.len(),
            });
        }
        if self.unacked.iter().any(|send| send.id == id) {
            return Err(SessionError::DuplicateId(id.to_string()));
        }
        self.unacked.push_back(PendingSend {
            room: room.to_string(),
            id: id.to_string(),
            body: body.to_string(),
        });
        Ok(frames::send(room, id, body))
    }

    /// Asks for the last `limit` messages of `room` (before what was shown, when in it).
    pub fn history(&mut self, room: &str, limit: usize) -> Result<Value, SessionError> {
        if self.histories.len() >= PENDING_HISTORY_MAX {
            return Err(SessionError::TooManyHistoryRequests {
                count: self.histories.len(),
            });
        }
        let before = self
            .rooms
            .get(room)
            .and_then(|r| r.position)
            .map(|p| p.seq + 1);
        let request = HistoryRequest {
            room: room.to_string(),
            before,
            limit: limit.clamp(1, HISTORY_LIMIT_MAX),
            printed_through: None,
        };
        let frame = frames::history(room, request.before, request.limit);
        self.histories.push_back(request);
        Ok(frame)
    }

    /// Everything to send after a `welcome`, in order: rejoin each room after its position,
    /// resend each unacknowledged send with its original id, re-ask pending history.
    pub fn resume_frames(&self) -> Vec<Value> {
        let joins = self
            .rooms
            .iter()
            .map(|(name, room)| frames::join(name, room.position));
        let sends = self
            .unacked
            .iter()
            .map(|s| frames::send(&s.room, &s.id, &s.body));
        let histories = self
            .histories
            .iter()
            .map(|h| frames::history(&h.room, h.before, h.limit));
        joins.chain(sends).chain(histories).collect()
    }

    /// The `send` frame of an unacknowledged message, to retry it.
    pub fn resend_frame(&self, id: &str) -> Option<Value> {
        self.unacked
            .iter()
            .find(|s| s.id == id)
            .map(|s| frames::send(&s.room, &s.id, &s.body))
    }

    pub fn unacked(&self) -> impl Iterator<Item = &PendingSend> {
        self.unacked.iter()
    }

    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.keys().map(String::as_str)
    }

    pub fn position(&self, room: &str) -> Option<Position> {
        self.rooms.get(room)?.position
    }

    /// Members of a room we are in, sorted; `None` when not in it.
    pub fn members(&self, room: &str) -> Option<Vec<String>> {
        Some(self.rooms.get(room)?.members.iter().cloned().collect())
    }

    /// `joined`: takes the member list; a join without `after` starts at `head`, so a
    /// rejoin after a drop replays what was committed meanwhile. Returns whether we are in
    /// the room.
    pub fn on_joined(&mut self, room: &str, members: &[String], head: Option<u64>) -> bool {
        let Some(state) = self.rooms.get_mut(room) else {
            return false;
        };
        state.members = members.iter().cloned().collect();
        if state.position.is_none() {
            state.position = head.map(|seq| Position { seq, epoch: None });
        }
        true
    }

    /// `presence`: returns whether it concerns a room we are in.
    pub fn on_presence(&mut self, room: &str, nick: &str, joined: bool) -> bool {
        let Some(state) = self.rooms.get_mut(room) else {
            return false;
        };
        if joined {
            state.members.insert(nick.to_string());
        } else {
            state.members.remove(nick);
        }
        true
    }

    /// Classifies a `msg` frame and records what is shown.
    pub fn on_msg(&mut self, frame: &ServerFrame) -> MsgVerdict {
        let (Some(room), Some(seq)) = (frame.room.as_deref(), frame.seq) else {
            return MsgVerdict::Stray;
        };
        let epoch = frame.epoch.unwrap_or(0);
        // The node answers history requests in order, so the first pending one for this
        // room is the one being answered.
        if let Some(request) = self.histories.iter_mut().find(|h| h.room == room) {
            let in_answer = request.before.is_none_or(|before| seq < before);
            if in_answer {
                if request
                    .printed_through
                    .is_some_and(|through| seq <= through)
                {
                    return MsgVerdict::Duplicate;
                }
                request.printed_through = Some(seq);
                return MsgVerdict::History;
            }
        }
        let Some(state) = self.rooms.get_mut(room) else {
            return MsgVerdict::Stray;
        };
        if state.recent.contains((epoch, seq)) {
            return MsgVerdict::Duplicate;
        }
        let fingerprint = fingerprint(frame);
        if let Some(position) = state.position {
            // Within one history epochs never fall as seq rises, so a message at or before
            // our position with an epoch no newer is one we showed (or skipped past). A
            // newer epoch at a seq we passed is the surviving history after two primaries,
            // replayed from where the histories part: new to us, so shown, except copies of
            // what we showed from the replaced part.
            let epoch_not_newer = position.epoch.is_none_or(|shown| epoch <= shown);
            if seq <= position.seq && epoch_not_newer {
                return MsgVerdict::Duplicate;
            }
            if seq <= position.seq {
                state.replaced = state.recent.replaced_by(epoch, seq);
            }
        }
        let copy = frame
            .orig
            .is_some_and(|orig| state.recent.contains((orig.epoch, orig.seq)));
        if copy || state.replaced.remove(&fingerprint) {
            // It now stands at (epoch, seq) in the node's history: resume after it.
            state.recent.insert((epoch, seq), fingerprint);
            state.position = Some(Position {
                seq,
                epoch: Some(epoch),
            });
            return MsgVerdict::OrigShown;
        }
        state.recent.insert((epoch, seq), fingerprint);
        state.position = Some(Position {
            seq,
            epoch: Some(epoch),
        });
        MsgVerdict::Show
    }

    /// `history_end`: returns whether it closed a pending request.
    pub fn on_history_end(&mut self, room: &str) -> bool {
        match self.histories.iter().position(|h| h.room == room) {
            Some(index) => {
                self.histories.remove(index);
                true
            }
            None => false,
        }
    }

    /// `ack`: the send it answers, now durable; `None` for an id not awaiting one.
    pub fn on_ack(&mut self, id: &str) -> Option<PendingSend> {
        let index = self.unacked.iter().position(|s| s.id == id)?;
        self.unacked.remove(index)
    }

    /// An `error` frame carrying the id of one of our sends.
    pub fn on_send_error(&mut self, id: &str, code: &str) -> SendErrorAction {
        let Some(index) = self.unacked.iter().position(|s| s.id == id) else {
            return SendErrorAction::Unknown;
        };
        match code {
            "rate_limited" | "unavailable" => SendErrorAction::RetryLater,
            "not_primary" => SendErrorAction::Reconnect,
            _ => SendErrorAction::Failed(
                self.unacked
                    .remove(index)
                    .expect("index was just found in the queue"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::client::ServerOrig;

    fn msg(room: &str, epoch: u64, seq: u64) -> ServerFrame {
        ServerFrame {
            kind: "msg".into(),
            room: Some(room.into()),
            epoch: Some(epoch),
            seq: Some(seq),
            ts: Some(1_764_084_000_123),
            from: Some("bob".into()),
            // One message, one id: the copies that keep an id are made explicitly.
            id: Some(format!("b-{epoch}-{seq}")),
            body: Some(format!("text {seq}")),
            ..ServerFrame::default()
        }
    }

    fn with_orig(mut frame: ServerFrame, epoch: u64, seq: u64) -> ServerFrame {
        frame.orig = Some(ServerOrig { epoch, seq });
        frame
    }

    fn joined_session(room: &str, head: u64) -> Session {
        let mut session = Session::new();
        session.join(room, None).unwrap();
        assert!(session.on_joined(room, &["alice".into()], Some(head)));
        session
    }

    fn field<'a>(frame: &'a Value, name: &str) -> &'a Value {
        &frame[name]
    }

    #[test]
    fn rejoin_uses_the_last_shown_message() {
        let mut session = joined_session("general", 10);
        session.join("random", None).unwrap();
        assert_eq!(session.on_msg(&msg("general", 3, 11)), MsgVerdict::Show);
        assert_eq!(session.on_msg(&msg("general", 4, 15)), MsgVerdict::Show);
        let frames = session.resume_frames();
        assert_eq!(frames.len(), 2);
        // BTreeMap order: general, random.
        assert_eq!(field(&frames[0], "room"), "general");
        assert_eq!(field(&frames[0], "after"), 15);
        assert_eq!(field(&frames[0], "after_epoch"), 4);
        // `random` never answered `joined`: rejoin without `after`.
        assert_eq!(field(&frames[1], "room"), "random");
        assert!(field(&frames[1], "after").is_null());
    }

    #[test]
    fn rejoin_without_shown_messages_uses_the_joined_head() {
        let session = joined_session("general", 42);
        let frames = session.resume_frames();
        assert_eq!(field(&frames[0], "after"), 42);
        assert!(field(&frames[0], "after_epoch").is_null());
    }

    #[test]
    fn explicit_after_is_kept_over_the_joined_head() {
        let mut session = Session::new();
        let frame = session
            .join(
                "general",
                Some(Position {
                    seq: 5,
                    epoch: None,
                }),
            )
            .unwrap();
        assert_eq!(field(&frame, "after"), 5);
        session.on_joined("general", &[], Some(99));
        assert_eq!(
            session.position("general"),
            Some(Position {
                seq: 5,
                epoch: None
            })
        );
        assert_eq!(session.on_msg(&msg("general", 1, 6)), MsgVerdict::Show);
    }

    #[test]
    fn unacked_sends_are_resent_in_order_with_their_ids() {
        let mut session = joined_session("general", 0);
        session.send("general", "m-1", "one").unwrap();
        session.send("general", "m-2", "two").unwrap();
        session.send("general", "m-3", "three").unwrap();
        assert_eq!(session.on_ack("m-2").unwrap().body, "two");
        assert_eq!(session.on_ack("m-2"), None);
        let frames = session.resume_frames();
        let sends: Vec<_> = frames
            .iter()
            .filter(|f| f["type"] == "send")
            .map(|f| (f["id"].as_str().unwrap(), f["body"].as_str().unwrap()))
            .collect();
        assert_eq!(sends, [("m-1", "one"), ("m-3", "three")]);
        // Joins come first: a send before its rejoin would be `not_joined`.
        assert_eq!(frames[0]["type"], "join");
    }

    #[test]
    fn sends_are_bounded_and_need_the_room() {
        let mut session = joined_session("general", 0);
        assert_eq!(
            session.send("elsewhere", "x", "b"),
            Err(SessionError::NotInRoom("elsewhere".into()))
        );
        for n in 0..UNACKED_SENDS_MAX {
            session.send("general", &format!("m-{n}"), "b").unwrap();
        }
        assert_eq!(
            session.send("general", "one-more", "b"),
            Err(SessionError::TooManyUnacked {
                count: UNACKED_SENDS_MAX
            })
        );
        assert_eq!(
            session.send("general", "m-0", "b").unwrap_err(),
            SessionError::TooManyUnacked {
                count: UNACKED_SENDS_MAX
            }
        );
        session.on_ack("m-5").unwrap();
        assert_eq!(
            session.send("general", "m-0", "b"),
            Err(SessionError::DuplicateId("m-0".into()))
        );
    }

    #[test]
    fn replayed_messages_at_or_before_the_last_shown_are_skipped() {
        let mut session = joined_session("general", 10);
        for seq in 11..=13 {
            assert_eq!(session.on_msg(&msg("general", 2, seq)), MsgVerdict::Show);
        }
        // Reconnect: the node replays after 13, but a sloppy one may resend 12 and 13.
        assert_eq!(
            session.on_msg(&msg("general", 2, 12)),
            MsgVerdict::Duplicate
        );
        assert_eq!(
            session.on_msg(&msg("general", 2, 13)),
            MsgVerdict::Duplicate
        );
        assert_eq!(session.on_msg(&msg("general", 3, 14)), MsgVerdict::Show);
        // Messages from before we joined, if ever replayed, are not new either.
        assert_eq!(session.on_msg(&msg("general", 1, 9)), MsgVerdict::Duplicate);
    }

    #[test]
    fn a_message_stored_by_both_primaries_is_shown_once() {
        let mut session = joined_session("general", 20);
        assert_eq!(session.on_msg(&msg("general", 1, 21)), MsgVerdict::Show);
        // The old primary stored alice's m-7 alone (its ack never reached her) ...
        let mut alone = msg("general", 1, 22);
        (alone.from, alone.id) = (Some("alice".into()), Some("m-7".into()));
        assert_eq!(session.on_msg(&alone), MsgVerdict::Show);
        // ... she resent it to the new primary, which stored it too, from 21 on in its
        // epoch 2. The merge drops the old primary's copy as a duplicate (same session and
        // id), so no `orig` ever names it: the copy is known by its sender and id.
        assert_eq!(session.on_msg(&msg("general", 2, 21)), MsgVerdict::Show);
        let mut resent = msg("general", 2, 22);
        (resent.from, resent.id) = (Some("alice".into()), Some("m-7".into()));
        assert_eq!(session.on_msg(&resent), MsgVerdict::OrigShown);
        // Another of alice's messages is new; so is m-7 of someone else.
        let mut next = msg("general", 2, 23);
        (next.from, next.id) = (Some("alice".into()), Some("m-8".into()));
        assert_eq!(session.on_msg(&next), MsgVerdict::Show);
        let mut other = msg("general", 2, 24);
        other.id = Some("m-7".into());
        assert_eq!(session.on_msg(&other), MsgVerdict::Show);
        // Within one history the same sender and id is not taken for a copy.
        let mut again = msg("general", 2, 25);
        (again.from, again.id) = (Some("alice".into()), Some("m-7".into()));
        assert_eq!(session.on_msg(&again), MsgVerdict::Show);
    }

    #[test]
    fn carried_over_copy_of_a_shown_message_is_skipped() {
        let mut session = joined_session("general", 1000);
        // Seen on the primary that later lost: epoch 3, seqs 1001-1002.
        assert_eq!(session.on_msg(&msg("general", 3, 1001)), MsgVerdict::Show);
        assert_eq!(session.on_msg(&msg("general", 3, 1002)), MsgVerdict::Show);
        // The winner (epoch 4) replays from where the histories part: its own 1001-1003
        // are new to us even though their seqs are not above ours.
        for seq in 1001..=1003 {
            assert_eq!(session.on_msg(&msg("general", 4, seq)), MsgVerdict::Show);
        }
        // Then the loser's messages, re-committed with `orig`.
        let copy = with_orig(msg("general", 4, 1004), 3, 1001);
        assert_eq!(session.on_msg(&copy), MsgVerdict::OrigShown);
        let copy = with_orig(msg("general", 4, 1005), 3, 1002);
        assert_eq!(session.on_msg(&copy), MsgVerdict::OrigShown);
        // A carried-over message we never saw is shown.
        let unseen = with_orig(msg("general", 4, 1006), 3, 1003);
        assert_eq!(session.on_msg(&unseen), MsgVerdict::Show);
        assert_eq!(
            session.position("general"),
            Some(Position {
                seq: 1006,
                epoch: Some(4)
            })
        );
        // The position moved past the skipped copies: a replay of them is a duplicate.
        assert_eq!(
            session.on_msg(&msg("general", 4, 1005)),
            MsgVerdict::Duplicate
        );
    }

    #[test]
    fn recent_shown_set_is_bounded() {
        let mut recent = RecentShown::default();
        let total = RECENT_SHOWN_PER_ROOM_MAX as u64 + 10;
        for seq in 0..total {
            recent.insert((1, seq), seq);
        }
        assert_eq!(recent.order.len(), RECENT_SHOWN_PER_ROOM_MAX);
        assert_eq!(recent.set.len(), RECENT_SHOWN_PER_ROOM_MAX);
        assert!(!recent.contains((1, 0)));
        assert!(recent.contains((1, total - 1)));
    }

    #[test]
    fn history_of_a_joined_room_is_told_from_live_messages() {
        let mut session = joined_session("general", 10);
        assert_eq!(session.on_msg(&msg("general", 1, 11)), MsgVerdict::Show);
        let frame = session.history("general", 2).unwrap();
        assert_eq!(frame["before"], 12);
        assert_eq!(frame["limit"], 2);
        // A live message overtakes the answer.
        assert_eq!(session.on_msg(&msg("general", 1, 12)), MsgVerdict::Show);
        assert_eq!(session.on_msg(&msg("general", 1, 10)), MsgVerdict::History);
        assert_eq!(session.on_msg(&msg("general", 1, 11)), MsgVerdict::History);
        assert!(session.on_history_end("general"));
        assert!(!session.on_history_end("general"));
        // After the answer, an old message is a duplicate again, not history.
        assert_eq!(
            session.on_msg(&msg("general", 1, 11)),
            MsgVerdict::Duplicate
        );
    }

    #[test]
    fn history_resent_after_reconnect_prints_each_message_once() {
        let mut session = Session::new();
        let frame = session.history("lobby", 3).unwrap();
        assert!(frame["before"].is_null());
        assert_eq!(session.on_msg(&msg("lobby", 1, 4)), MsgVerdict::History);
        assert_eq!(session.on_msg(&msg("lobby", 1, 5)), MsgVerdict::History);
        let again = session.resume_frames();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0]["type"], "history");
        for (seq, verdict) in [
            (4, MsgVerdict::Duplicate),
            (5, MsgVerdict::Duplicate),
            (6, MsgVerdict::History),
        ] {
            assert_eq!(session.on_msg(&msg("lobby", 1, seq)), verdict);
        }
        assert!(session.on_history_end("lobby"));
        assert_eq!(session.on_msg(&msg("lobby", 1, 7)), MsgVerdict::Stray);
    }

    #[test]
    fn history_requests_are_bounded() {
        let mut session = Session::new();
        for _ in 0..PENDING_HISTORY_MAX {
            session.history("r", 10_000).unwrap();
        }
        assert_eq!(session.resume_frames()[0]["limit"], HISTORY_LIMIT_MAX);
        assert!(matches!(
            session.history("r", 1),
            Err(SessionError::TooManyHistoryRequests { .. })
        ));
    }

    #[test]
    fn send_errors_pick_retry_reconnect_or_failure() {
        let mut session = joined_session("general", 0);
        session.send("general", "m-1", "a").unwrap();
        assert_eq!(
            session.on_send_error("m-1", "rate_limited"),
            SendErrorAction::RetryLater
        );
        assert_eq!(
            session.on_send_error("m-1", "not_primary"),
            SendErrorAction::Reconnect
        );
        assert!(session.resend_frame("m-1").is_some());
        assert!(matches!(
            session.on_send_error("m-1", "too_large"),
            SendErrorAction::Failed(PendingSend { ref id, .. }) if id == "m-1"
        ));
        assert_eq!(session.resend_frame("m-1"), None);
        assert_eq!(
            session.on_send_error("m-1", "too_large"),
            SendErrorAction::Unknown
        );
    }

    #[test]
    fn members_follow_joined_and_presence() {
        let mut session = Session::new();
        session.join("general", None).unwrap();
        assert_eq!(session.join("general", None), None);
        session.on_joined("general", &["alice".into(), "bob".into()], Some(1));
        assert!(session.on_presence("general", "carol", true));
        assert!(session.on_presence("general", "bob", false));
        assert!(!session.on_presence("other", "bob", true));
        assert_eq!(
            session.members("general").unwrap(),
            ["alice".to_string(), "carol".to_string()]
        );
        assert!(session.leave("general").is_some());
        assert_eq!(session.members("general"), None);
        assert!(session.leave("general").is_none());
    }
}
