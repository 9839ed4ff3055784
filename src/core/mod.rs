//! The pure node state machine: role, epoch, sequence numbers, sessions, rooms, dedup.
//!
//! [`Node::step`] takes one [`Input`] and pushes [`Action`]s for the daemon to carry out.
//! It does no I/O, reads no clock (time comes in on inputs as logical milliseconds) and uses
//! no randomness, so every behaviour can be replayed in a test. Fan-out is O(1) here: the
//! core encodes a committed message once and hands one [`Action::Publish`] to the daemon,
//! which owns room subscriptions per I/O thread.
//!
//! Layout: `epochs` (epoch history, where histories part), `rate` (token bucket),
//! `dedup` (bounded (session, id) index).

pub mod dedup;
pub mod epochs;
pub mod rate;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::config::Role;
use crate::entry::Entry;
use crate::wire::client::{encode_msg, encode_reply, DecodeError, ErrorCode, Reply, Request};
use dedup::Dedup;
use epochs::EpochHistory;
use rate::TokenBucket;

/// An encoded frame, shared by every connection it goes to.
pub type Frame = Arc<[u8]>;
/// A connection, numbered by the daemon; never reused within a process.
pub type ConnId = u64;

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
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A connection was accepted.
    Connected { conn: ConnId, now_ms: u64 },
    /// A decoded frame from a connection.
    Request {
        conn: ConnId,
        request: Request,
        now_ms: u64,
    },
    /// A line that did not decode; the core answers it and counts it.
    BadFrame { conn: ConnId, error: DecodeError },
    /// The connection is gone (closed by the peer, an I/O error, or the daemon).
    Disconnected { conn: ConnId },
    /// The local log is durable up to and including `seq`.
    Durable { seq: u64 },
    /// Log retention dropped every message below `first_seq`.
    Retained { first_seq: u64 },
    /// Time passes.
    Tick { now_ms: u64 },
    /// Stop taking sends, commit what is pending, say goodbye, then exit.
    Shutdown,
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
    /// Append to the log; a `Durable` input follows once it is durable.
    Append(Entry),
    /// A committed message for every subscriber of `room`.
    Publish {
        room: Arc<str>,
        seq: u64,
        frame: Frame,
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
}

/// What the core knows of one connection.
#[derive(Debug)]
struct Conn {
    /// `None` until a `hello` is welcomed.
    session: Option<Arc<str>>,
    nick: Option<Arc<str>>,
    rooms: HashSet<Arc<str>>,
    bucket: TokenBucket,
    /// Bad frames so far; at `max_errors` the connection is closed.
    errors: u32,
}

/// A message ordered and appended but not yet committed.
#[derive(Debug)]
struct Pending {
    entry: Entry,
}

pub struct Node {
    config: CoreConfig,
    role: Role,
    epochs: EpochHistory,
    /// Highest committed seq: everything up to it is acknowledged-durable.
    head: u64,
    /// Highest seq handed to the log (== head + pending.len()).
    last_seq: u64,
    /// Highest seq the local log reports durable.
    durable: u64,
    pending: VecDeque<Pending>,
    conns: HashMap<ConnId, Conn>,
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
}

impl Node {
    /// Builds a node from its recovered state: the epoch history, and the committed log
    /// (every entry is offered to `recover` in order before the first step).
    pub fn new(config: CoreConfig, epochs: EpochHistory) -> Self {
        assert!(epochs.current() > 0, "a node starts with an epoch");
        Node {
            role: config.role,
            config,
            epochs,
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
        }
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
        self.dedup.insert(&entry.session, &entry.id, entry.seq);
    }

    /// Tells the node that retention left `first_seq` as the oldest message, at start-up or
    /// later; an empty log that starts past 1 continues from there.
    pub fn set_log_start(&mut self, first_seq: u64) {
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

    /// Processes one input, appending what to do to `actions`.
    pub fn step(&mut self, input: Input, actions: &mut Vec<Action>) {
        match input {
            Input::Connected { conn, now_ms } => self.on_connected(conn, now_ms),
            Input::Request {
                conn,
                request,
                now_ms,
            } => {
                self.now_ms = self.now_ms.max(now_ms);
                self.on_request(conn, request, actions)
            }
            Input::BadFrame { conn, error } => self.on_bad_frame(conn, error, actions),
            Input::Disconnected { conn } => self.on_disconnected(conn, actions),
            Input::Durable { seq } => self.on_durable(seq, actions),
            Input::Retained { first_seq } => self.dedup.forget_below(first_seq),
            Input::Tick { now_ms } => self.on_tick(now_ms, actions),
            Input::Shutdown => {
                self.draining = true;
                self.maybe_exit(actions);
            }
        }
    }

    fn on_connected(&mut self, conn: ConnId, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.conns.insert(
            conn,
            Conn {
                session: None,
                nick: None,
                rooms: HashSet::new(),
                bucket: TokenBucket::new(self.config.rate_burst, now_ms),
                errors: 0,
            },
        );
        self.hello_deadlines
            .push_back((now_ms + self.config.hello_timeout_ms, conn));
    }

    fn on_tick(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        self.now_ms = self.now_ms.max(now_ms);
        while let Some(&(deadline, conn)) = self.hello_deadlines.front() {
            if deadline > self.now_ms {
                break;
            }
            self.hello_deadlines.pop_front();
            if self.conns.get(&conn).is_some_and(|c| c.session.is_none()) {
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

    fn on_request(&mut self, conn: ConnId, request: Request, actions: &mut Vec<Action>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let open = c.session.is_some();
        match request {
            Request::Hello { nick, session, .. } => {
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
                    self.on_hello(conn, nick, session, actions);
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
                let id = match &request {
                    Request::Send { id, .. } => Some(id.as_str()),
                    _ => None,
                };
                self.error(
                    conn,
                    ErrorCode::BadRequest,
                    "the first frame must be hello",
                    id,
                    actions,
                );
                self.count_error(conn, actions);
            }
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

    fn on_hello(&mut self, conn: ConnId, nick: String, session: String, actions: &mut Vec<Action>) {
        if self.role != Role::Primary {
            let primary = self.config.peer_client_address.as_deref();
            self.reply(
                conn,
                &Reply::Redirect {
                    primary,
                    epoch: self.epoch(),
                },
                actions,
            );
            self.close(conn, actions);
            return;
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
            return;
        }
        let nick: Arc<str> = nick.into();
        let session: Arc<str> = session.into();
        let older = self.sessions.get(&session).copied();
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
        let room: Arc<str> = room.into();
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

    fn on_send(
        &mut self,
        conn: ConnId,
        room: String,
        id: String,
        body: String,
        actions: &mut Vec<Action>,
    ) {
        let (rate, burst, now) = (
            self.config.rate_per_sec,
            self.config.rate_burst,
            self.now_ms,
        );
        let c = self.conns.get_mut(&conn).expect("checked by caller");
        let session = c.session.clone().expect("open session");
        let nick = c.nick.clone().expect("open session has a nick");
        if !c.rooms.contains(room.as_str()) {
            let message = format!("not joined to room {room}");
            self.error(conn, ErrorCode::NotJoined, &message, Some(&id), actions);
            return;
        }
        if let Some(seq) = self.dedup.get(&session, &id) {
            // Already ordered: a committed one is acked again with its seq; a pending one
            // will be acked to the session's connection when it commits.
            if seq <= self.head {
                self.reply(conn, &Reply::Ack { id: &id, seq }, actions);
            }
            return;
        }
        if self.role != Role::Primary {
            self.error(
                conn,
                ErrorCode::NotPrimary,
                "this node is not the primary",
                Some(&id),
                actions,
            );
            return;
        }
        if self.draining {
            self.error(
                conn,
                ErrorCode::Unavailable,
                "the node is shutting down",
                Some(&id),
                actions,
            );
            return;
        }
        if self.pending.len() >= self.config.max_pending {
            self.error(
                conn,
                ErrorCode::Unavailable,
                "too many messages waiting for storage; retry",
                Some(&id),
                actions,
            );
            return;
        }
        if !c.bucket.take(rate, burst, now) {
            self.error(
                conn,
                ErrorCode::RateLimited,
                "sending too fast; retry later",
                Some(&id),
                actions,
            );
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
        self.dedup.insert(&entry.session, &entry.id, entry.seq);
        actions.push(Action::Append(entry.clone()));
        self.pending.push_back(Pending { entry });
    }

    fn on_durable(&mut self, seq: u64, actions: &mut Vec<Action>) {
        assert!(
            seq <= self.last_seq,
            "durable {seq} beyond appended {}",
            self.last_seq
        );
        self.durable = self.durable.max(seq);
        while self
            .pending
            .front()
            .is_some_and(|p| p.entry.seq <= self.durable)
        {
            let Pending { entry } = self.pending.pop_front().expect("front exists");
            self.commit(entry, actions);
        }
        self.maybe_exit(actions);
    }

    fn commit(&mut self, entry: Entry, actions: &mut Vec<Action>) {
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
        actions.push(Action::Publish {
            room: entry.room.into(),
            seq: entry.seq,
            frame,
        });
    }

    fn maybe_exit(&mut self, actions: &mut Vec<Action>) {
        if !self.draining || self.exited || !self.pending.is_empty() {
            return;
        }
        self.exited = true;
        let goodbye = encode_reply(&Reply::Goodbye {
            reason: "shutdown",
            primary: None,
        });
        let frame: Frame = goodbye.into();
        let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
        conns.sort_unstable();
        for conn in conns {
            actions.push(Action::Send {
                conn,
                frame: frame.clone(),
            });
            self.close(conn, actions);
        }
        actions.push(Action::Exit);
    }
}

#[cfg(test)]
mod tests;
