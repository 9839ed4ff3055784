//! Text for people: how the interactive client shows messages, presence and connection
//! status, and the one-line status of the scripted modes.
//!
//! Pure apart from reading the local time zone: events in, lines out. Printing is the
//! binary's job.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{Local, TimeZone};

use crate::client::net::Event;
use crate::wire::client::ServerFrame;

/// Characters of a message quoted in a line about it: enough to recognise it, and short
/// enough that the line stays one line.
pub const QUOTE_CHARS_MAX: usize = 40;

/// `body` as quoted in a line about it: whole when short, else its first
/// [`QUOTE_CHARS_MAX`] characters, `…` and its length.
pub fn quote(body: &str) -> String {
    let count = body.chars().count();
    if count <= QUOTE_CHARS_MAX {
        return body.to_string();
    }
    let head: String = body.chars().take(QUOTE_CHARS_MAX).collect();
    format!("{head}… ({count} characters)")
}

/// `text` made safe for a terminal: a body is anyone's text, and a control character in it
/// could move the cursor, clear the screen or retitle the window. C0 controls show as
/// `^X`, the others as `\u{…}`.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\u{0}'..='\u{1f}' => {
                shown.push('^');
                shown.push(char::from(c as u8 + b'@'));
            }
            '\u{7f}' => shown.push_str("^?"),
            c if c.is_control() => shown.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => shown.push(c),
        }
    }
    Cow::Owned(shown)
}

/// `HH:MM:SS` in local time of a `ts` in milliseconds since the Unix epoch.
pub fn clock_time(ts_ms: u64) -> String {
    let ms = i64::try_from(ts_ms).unwrap_or(i64::MAX);
    match Local.timestamp_millis_opt(ms).earliest() {
        Some(time) => time.format("%H:%M:%S").to_string(),
        None => "??:??:??".to_string(),
    }
}

/// `HH:MM:SS <nick> body`, after `[room] ` when `with_room`.
pub fn format_msg(frame: &ServerFrame, with_room: bool) -> String {
    let room = match (with_room, frame.room.as_deref()) {
        (true, Some(room)) => format!("[{room}] "),
        _ => String::new(),
    };
    format!(
        "{room}{} <{}> {}",
        clock_time(frame.ts.unwrap_or(0)),
        frame.from.as_deref().unwrap_or("?"),
        frame.body.as_deref().unwrap_or(""),
    )
}

/// Failures remembered during one outage: the `--server` list is short, and the redirects
/// followed add a few addresses at most. Beyond it the oldest is forgotten, so a node that
/// keeps naming new primaries cannot grow the summary without end.
pub const FAILURES_REMEMBERED_MAX: usize = 16;

/// Whether a session is open, for the words of the status lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// No session opened yet: "connecting", "cannot connect".
    NeverOpened,
    Open,
    /// A session was open and was lost: "reconnected" when one opens again.
    Lost,
}

/// The connection status told to people: fed every network event, it says in words what
/// happened (cannot connect to whom and why, lost, reconnected), once per change rather than
/// once per attempt. Quiet by default in the scripted modes, so a success prints nothing;
/// `verbose` tells every attempt and redirect.
#[derive(Debug)]
pub struct Progress {
    /// How many servers the `--server` list has: after that many failed attempts in a row,
    /// every one was tried and the summary is due.
    servers: usize,
    verbose: bool,
    /// The interactive client says "connecting" before the first session; a script does
    /// not, so that its stderr stays empty when all goes well.
    interactive: bool,
    link: Link,
    /// The node of the open (or last) session.
    node: Option<String>,
    /// Why each server failed, last reason per server, in order of first failure, since the
    /// last open session. At most [`FAILURES_REMEMBERED_MAX`].
    failures: Vec<(String, String)>,
    /// Failed attempts (refusals and redirects included) since the last open session.
    attempts_failed: usize,
    /// The "cannot connect …; still trying" line was shown for this outage.
    summary_shown: bool,
    /// The first "connecting to" line was shown.
    announced: bool,
}

impl Progress {
    /// `servers`: the length of the `--server` list (at least 1).
    pub fn new(servers: usize, verbose: bool, interactive: bool) -> Self {
        Progress {
            servers: servers.max(1),
            verbose,
            interactive,
            link: Link::NeverOpened,
            node: None,
            failures: Vec::new(),
            attempts_failed: 0,
            summary_shown: false,
            announced: false,
        }
    }

    /// Whether a session is open now.
    pub fn is_open(&self) -> bool {
        self.link == Link::Open
    }

    /// The status lines an event calls for (none for events that are not about the
    /// connection).
    pub fn on_event(&mut self, event: &Event) -> Vec<String> {
        let mut lines = Vec::new();
        match event {
            Event::Connecting {
                server, attempt, ..
            } => {
                if self.verbose {
                    lines.push(match attempt {
                        1 => format!("-- connecting to {server}…"),
                        n => format!("-- connecting to {server} (attempt {n})…"),
                    });
                } else if self.interactive && !self.announced {
                    lines.push(format!("-- connecting to {server}…"));
                }
                self.announced = true;
            }
            Event::AttemptFailed { server, reason } => {
                let reason = plain_reason(server, reason);
                if self.verbose {
                    lines.push(format!("-- cannot connect to {server} ({reason})"));
                }
                self.failed(server, reason);
                lines.extend(self.summary_due());
            }
            Event::Redirected { server, primary } => {
                let reason = match primary {
                    Some(primary) => {
                        if self.verbose {
                            lines.push(format!("-- {server} is not the primary; trying {primary}"));
                        }
                        format!("not the primary; it named {primary}")
                    }
                    None => {
                        if self.verbose {
                            lines.push(format!("-- {server} is not the primary and knows none"));
                        }
                        "not the primary, and it knows none".to_string()
                    }
                };
                self.failed(server, reason);
                // A named primary is tried next: not yet a reason to say nothing answers.
                if primary.is_none() {
                    lines.extend(self.summary_due());
                }
            }
            Event::Connected { node, epoch, .. } => {
                match self.link {
                    Link::Lost => {
                        lines.push(format!("-- reconnected to node {node} (epoch {epoch})"))
                    }
                    Link::NeverOpened | Link::Open if self.interactive || self.verbose => {
                        lines.push(format!("-- connected to node {node} (epoch {epoch})"))
                    }
                    _ => {}
                }
                self.link = Link::Open;
                self.node = Some(node.clone());
                self.failures.clear();
                self.attempts_failed = 0;
                self.summary_shown = false;
            }
            Event::Disconnected { server, reason } => {
                self.link = Link::Lost;
                lines.push(format!("-- lost {server}: {reason}; reconnecting…"));
            }
            _ => {}
        }
        lines
    }

    fn failed(&mut self, server: &str, reason: String) {
        self.attempts_failed = self.attempts_failed.saturating_add(1);
        match self.failures.iter_mut().find(|(s, _)| s == server) {
            Some(entry) => entry.1 = reason,
            None => {
                if self.failures.len() == FAILURES_REMEMBERED_MAX {
                    self.failures.remove(0);
                }
                self.failures.push((server.to_string(), reason));
            }
        }
    }

    /// After a full round of failed attempts, once per outage: who failed and why.
    fn summary_due(&mut self) -> Option<String> {
        if self.summary_shown || self.verbose || self.attempts_failed < self.servers {
            return None;
        }
        self.summary_shown = true;
        Some(format!("-- {}; still trying", self.cannot_connect()?))
    }

    /// `cannot connect to A (why), B (why)`; `None` before any failure.
    pub fn cannot_connect(&self) -> Option<String> {
        if self.failures.is_empty() {
            return None;
        }
        let each: Vec<String> = self
            .failures
            .iter()
            .map(|(server, reason)| format!("{server} ({reason})"))
            .collect();
        Some(format!("cannot connect to {}", each.join(", ")))
    }

    /// Why a scripted mode gave up at its deadline, `after` its timeout: no server, a lost
    /// one, or a node that did not send `what` (such as "the ack of m-1").
    pub fn gave_up(&self, after_ms: u64, what: &str) -> String {
        let after = duration_words(after_ms);
        let details = match self.cannot_connect() {
            Some(text) if !self.summary_shown => format!(" ({text})"),
            _ => String::new(),
        };
        match (self.link, &self.node) {
            (Link::Open, Some(node)) => {
                format!("gave up after {after}: node {node} did not send {what}")
            }
            (Link::Lost, _) => format!(
                "gave up after {after}: the connection was lost and no server answered since{details}"
            ),
            _ => format!("gave up after {after}: no server answered{details}"),
        }
    }
}

/// `10 s`, `2.5 s`, `300 ms`.
pub fn duration_words(ms: u64) -> String {
    match ms {
        ms if ms % 1000 == 0 => format!("{} s", ms / 1000),
        ms if ms > 1000 => format!("{:.1} s", ms as f64 / 1000.0),
        ms => format!("{ms} ms"),
    }
}

/// The reason of a failed attempt without what the status line says already: the server
/// address, `connect:`, the OS error number. `Connection refused (os error 111)` becomes
/// `connection refused`.
pub fn plain_reason(server: &str, reason: &str) -> String {
    let mut text = reason;
    let resolve = format!("cannot resolve {server}: ");
    let mut prefix = "";
    if let Some(rest) = text.strip_prefix(&resolve) {
        text = rest;
        prefix = "cannot resolve the name: ";
    }
    text = text
        .strip_prefix(server)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(text);
    text = text.strip_prefix("connect: ").unwrap_or(text);
    if let Some(at) = text.rfind(" (os error ") {
        if text.ends_with(')') {
            text = &text[..at];
        }
    }
    // `Connection refused` reads as a sentence start; in the middle of a line it is lower.
    let mut chars = text.chars();
    let text = match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_uppercase() && second.is_lowercase() => {
            first.to_lowercase().chain(text.chars().skip(1)).collect()
        }
        _ => text.to_string(),
    };
    format!("{prefix}{text}")
}

/// After a reconnect, how long a member from before it may take to come back before the
/// view says they left. A fail-over drops everyone at once, and every client comes back on
/// the same schedule: the loss seen at once (or within `SILENCE_DEAD_MS`, 7 s, when the
/// connection went silent instead of closing), then backoff steps of at most 2 s while
/// the backup takes over. 10 s covers the slowest detection plus a step.
pub const REJOIN_GRACE_MS: u64 = 10_000;

/// What the view knows of one joined room.
#[derive(Debug, Default)]
struct RoomView {
    /// Members as last shown: the first `joined`, then `presence`, and each rejoin.
    members: BTreeSet<String>,
    /// After a reconnect, members from before it that the node has not seen rejoin yet:
    /// their `presence` join is a return, not news. Given up on at `returning_until`.
    returning: BTreeSet<String>,
    returning_until: Option<Instant>,
}

/// What the interactive view remembers to format events: the rooms it shows as joined,
/// with their members, so that presence across a reconnect means what it says.
///
/// A fail-over drops every member's connection; each client rejoins on the new primary in
/// its own time, and the node announces each rejoin as a `presence` join. Shown as they
/// come, the first back would see "bob joined" of a bob who never left, and nobody would
/// ever see a member who did not come back leave (issue 15). So a rejoin is compared with
/// the members from before: whoever is new is shown joining; whoever is missing has
/// [`REJOIN_GRACE_MS`] to come back silently, after which they are shown as gone.
#[derive(Debug, Default)]
pub struct View {
    /// Rooms a `joined` was shown for and no `left` since. With more than one, messages
    /// carry a `[room]` prefix.
    rooms: BTreeMap<String, RoomView>,
}

impl View {
    pub fn new() -> Self {
        View::default()
    }

    /// The lines an event shows in the interactive client, `now` being when it arrived.
    pub fn lines(&mut self, event: &Event, now: Instant) -> Vec<String> {
        let line = match event {
            Event::Msg { frame, history, .. } => {
                let with_room = self.rooms.len() > 1
                    || (*history && !self.rooms.contains_key(frame.room.as_deref().unwrap_or("")));
                format_msg(frame, with_room)
            }
            Event::HistoryEnd { room } => format!("-- end of history of {room}"),
            Event::Presence { room, nick, joined } => {
                return self.on_presence(room, nick, *joined);
            }
            Event::Joined { room, members } => return self.on_joined(room, members, now),
            Event::Left { room } => {
                self.rooms.remove(room);
                format!("-- left {room}")
            }
            Event::Members { room, members } => match members {
                Some(members) => format!("-- members of {room}: {}", members.join(", ")),
                None => format!("-- not in {room}"),
            },
            Event::SendFailed {
                send,
                code,
                message,
            } => format!(
                "-- not sent to {} ({code}: {message}): {}",
                send.room,
                quote(&send.body)
            ),
            Event::Error { code, message } => format!("-- error {code}: {message}"),
            Event::Rejected { message } => format!("-- {message}"),
            Event::Fatal { code, message } => format!("-- error {code}: {message}"),
            // The message itself comes back as a `msg`; its ack is no news.
            Event::Acked { .. } => return Vec::new(),
            // Connection status is told by `Progress`.
            Event::Connecting { .. }
            | Event::AttemptFailed { .. }
            | Event::Redirected { .. }
            | Event::Connected { .. }
            | Event::Disconnected { .. } => return Vec::new(),
        };
        vec![line]
    }

    /// Members who did not come back within [`REJOIN_GRACE_MS`] of a reconnect, as of
    /// `now`: shown as gone. Called every so often while nothing else happens.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        for (room, view) in &mut self.rooms {
            if view.returning_until.is_some_and(|until| now >= until) {
                view.returning_until = None;
                for nick in std::mem::take(&mut view.returning) {
                    lines.push(format!(
                        "* {nick} left {room} (not back since the reconnect)"
                    ));
                }
            }
        }
        lines
    }

    fn on_joined(&mut self, room: &str, members: &[String], now: Instant) -> Vec<String> {
        let current: BTreeSet<String> = members.iter().cloned().collect();
        let Some(view) = self.rooms.get_mut(room) else {
            self.rooms.insert(
                room.to_string(),
                RoomView {
                    members: current,
                    ..RoomView::default()
                },
            );
            return vec![format!("-- joined {room}; members: {}", members.join(", "))];
        };
        // A rejoin after a reconnect (the only second `joined` of a room not left).
        let before: BTreeSet<String> = view.members.union(&view.returning).cloned().collect();
        let lines = current
            .difference(&before)
            .map(|nick| format!("* {nick} joined {room}"))
            .collect();
        view.returning = before.difference(&current).cloned().collect();
        view.returning_until =
            (!view.returning.is_empty()).then(|| now + Duration::from_millis(REJOIN_GRACE_MS));
        view.members = current;
        lines
    }

    fn on_presence(&mut self, room: &str, nick: &str, joined: bool) -> Vec<String> {
        let verb = if joined { "joined" } else { "left" };
        let line = vec![format!("* {nick} {verb} {room}")];
        let Some(view) = self.rooms.get_mut(room) else {
            return line;
        };
        if joined {
            // Back after the reconnect, or already shown here: no news.
            let returned = view.returning.remove(nick);
            if !view.members.insert(nick.to_string()) || returned {
                return Vec::new();
            }
        } else {
            view.members.remove(nick);
            view.returning.remove(nick);
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(room: &str) -> ServerFrame {
        ServerFrame {
            kind: "msg".into(),
            room: Some(room.into()),
            seq: Some(1),
            epoch: Some(1),
            ts: Some(1_764_084_000_123),
            from: Some("bob".into()),
            body: Some("hi there".into()),
            ..ServerFrame::default()
        }
    }

    fn msg_event(room: &str, history: bool) -> Event {
        Event::Msg {
            frame: Box::new(msg(room)),
            raw: String::new(),
            history,
        }
    }

    #[test]
    fn clock_time_is_hh_mm_ss() {
        let time = clock_time(1_764_084_000_123);
        assert_eq!(time.len(), 8);
        assert_eq!(&time[2..3], ":");
        assert_eq!(&time[5..6], ":");
        assert!(time.chars().filter(|c| c.is_ascii_digit()).count() == 6);
        assert_eq!(clock_time(u64::MAX), "??:??:??");
    }

    #[test]
    fn messages_gain_a_room_prefix_with_two_rooms() {
        let mut view = View::new();
        let joined = |room: &str| Event::Joined {
            room: room.into(),
            members: vec!["alice".into(), "bob".into()],
        };
        assert_eq!(
            view.lines(&joined("general"), Instant::now()),
            ["-- joined general; members: alice, bob"]
        );
        let line = &view.lines(&msg_event("general", false), Instant::now())[0];
        assert!(line.ends_with(" <bob> hi there"), "{line}");
        assert!(!line.starts_with('['));
        // A rejoin after reconnect prints nothing.
        assert!(view.lines(&joined("general"), Instant::now()).is_empty());
        view.lines(&joined("random"), Instant::now());
        let line = &view.lines(&msg_event("general", false), Instant::now())[0];
        assert!(line.starts_with("[general] "), "{line}");
        view.lines(
            &Event::Left {
                room: "random".into(),
            },
            Instant::now(),
        );
        assert!(!view.lines(&msg_event("general", false), Instant::now())[0].starts_with('['));
        // History of a room we are not in names it.
        assert!(view.lines(&msg_event("lobby", true), Instant::now())[0].starts_with("[lobby] "));
    }

    #[test]
    fn presence_reads_naturally_and_acks_are_no_news() {
        let mut view = View::new();
        assert_eq!(
            view.lines(
                &Event::Presence {
                    room: "general".into(),
                    nick: "bob".into(),
                    joined: true
                },
                Instant::now()
            ),
            ["* bob joined general"]
        );
        assert!(view
            .lines(
                &Event::Acked {
                    id: "m-1".into(),
                    seq: 3
                },
                Instant::now()
            )
            .is_empty());
        // Connection status is `Progress`'s to tell.
        assert!(view.lines(&connected("b", 4), Instant::now()).is_empty());
    }

    fn in_general(members: &[&str]) -> Event {
        Event::Joined {
            room: "general".into(),
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    fn presence(nick: &str, joined: bool) -> Event {
        Event::Presence {
            room: "general".into(),
            nick: nick.into(),
            joined,
        }
    }

    /// Issue 15: after a fail-over bob saw "* alice joined general" though alice never
    /// left, and alice saw nothing for bob.
    #[test]
    fn members_coming_back_after_a_reconnect_are_no_news_and_the_missing_are_told() {
        let second = Duration::from_secs(1);
        let grace = Duration::from_millis(REJOIN_GRACE_MS);
        let start = Instant::now();
        let back = start + 3 * second;
        // bob's view: with alice and carol when the primary died; bob is back first.
        let mut bob = View::new();
        assert_eq!(
            bob.lines(&in_general(&["alice", "bob", "carol"]), start),
            ["-- joined general; members: alice, bob, carol"]
        );
        assert!(bob.lines(&in_general(&["bob"]), back).is_empty());
        assert!(bob
            .lines(&presence("alice", true), back + second)
            .is_empty());
        // Someone new is news.
        assert_eq!(
            bob.lines(&presence("dave", true), back + second),
            ["* dave joined general"]
        );
        // carol does not come back: gone once the grace is over, and said once.
        assert!(bob.expire(back + grace - second).is_empty());
        assert_eq!(
            bob.expire(back + grace),
            ["* carol left general (not back since the reconnect)"]
        );
        assert!(bob.expire(back + 2 * grace).is_empty());
        // Back later after all: that is news again.
        assert_eq!(
            bob.lines(&presence("carol", true), back + 2 * grace),
            ["* carol joined general"]
        );

        // alice's view: back after bob, so bob is in her rejoin's list; so is dave, who
        // joined while she was away.
        let mut alice = View::new();
        alice.lines(&in_general(&["alice", "bob", "carol"]), start);
        assert_eq!(
            alice.lines(&in_general(&["alice", "bob", "dave"]), back),
            ["* dave joined general"]
        );
        // A leave said by the node is shown as it comes.
        assert_eq!(
            alice.lines(&presence("bob", false), back),
            ["* bob left general"]
        );
        assert_eq!(
            alice.expire(back + grace),
            ["* carol left general (not back since the reconnect)"]
        );
    }

    const A: &str = "127.0.0.1:7400";
    const B: &str = "127.0.0.1:7410";

    fn connecting(server: &str, attempt: u32, reconnecting: bool) -> Event {
        Event::Connecting {
            server: server.into(),
            attempt,
            reconnecting,
        }
    }

    fn refused(server: &str) -> Event {
        Event::AttemptFailed {
            server: server.into(),
            reason: format!("{server}: connect: Connection refused (os error 111)"),
        }
    }

    fn connected(node: &str, epoch: u64) -> Event {
        Event::Connected {
            server: B.into(),
            node: node.into(),
            epoch,
        }
    }

    fn tell(progress: &mut Progress, events: &[Event]) -> Vec<String> {
        events.iter().flat_map(|e| progress.on_event(e)).collect()
    }

    /// Issue 15: with no server, a script printed "reconnecting to … (attempt 2)" ten
    /// times (the first connect among them) and never that it could not connect.
    #[test]
    fn no_server_is_told_once_in_words_and_the_give_up_says_why() {
        let mut progress = Progress::new(2, false, false);
        let round = [
            connecting(A, 1, false),
            refused(A),
            connecting(B, 2, false),
            refused(B),
        ];
        assert_eq!(
            tell(&mut progress, &round),
            ["-- cannot connect to 127.0.0.1:7400 (connection refused), \
              127.0.0.1:7410 (connection refused); still trying"]
        );
        // Further rounds add nothing.
        assert!(tell(&mut progress, &round).is_empty());
        assert_eq!(
            progress.gave_up(10_000, "the ack of m-1"),
            "gave up after 10 s: no server answered"
        );
        // A deadline before the first full round names the failures itself.
        let mut early = Progress::new(2, false, false);
        tell(&mut early, &round[..2]);
        assert_eq!(
            early.gave_up(500, "the ack of m-1"),
            "gave up after 500 ms: no server answered \
             (cannot connect to 127.0.0.1:7400 (connection refused))"
        );
    }

    /// Issue 15: when b was primary every scripted call printed two lines.
    #[test]
    fn a_redirect_followed_to_the_primary_is_silent_unless_verbose() {
        let events = [
            connecting(A, 1, false),
            Event::Redirected {
                server: A.into(),
                primary: Some(B.into()),
            },
            connecting(B, 2, false),
            connected("b", 2),
        ];
        assert!(tell(&mut Progress::new(2, false, false), &events).is_empty());
        assert_eq!(
            tell(&mut Progress::new(2, false, true), &events),
            [
                "-- connecting to 127.0.0.1:7400…",
                "-- connected to node b (epoch 2)"
            ]
        );
        assert_eq!(
            tell(&mut Progress::new(2, true, false), &events),
            [
                "-- connecting to 127.0.0.1:7400…",
                "-- 127.0.0.1:7400 is not the primary; trying 127.0.0.1:7410",
                "-- connecting to 127.0.0.1:7410 (attempt 2)…",
                "-- connected to node b (epoch 2)"
            ]
        );
    }

    #[test]
    fn a_lost_session_is_told_and_so_is_its_return() {
        let mut progress = Progress::new(2, false, false);
        tell(&mut progress, &[connecting(A, 1, false), connected("a", 1)]);
        assert!(progress.is_open());
        let lines = tell(
            &mut progress,
            &[
                Event::Disconnected {
                    server: A.into(),
                    reason: "the node closed the connection".into(),
                },
                connecting(A, 1, true),
                refused(A),
            ],
        );
        assert_eq!(
            lines,
            ["-- lost 127.0.0.1:7400: the node closed the connection; reconnecting…"]
        );
        assert_eq!(
            progress.gave_up(10_000, "x"),
            "gave up after 10 s: the connection was lost and no server answered since \
             (cannot connect to 127.0.0.1:7400 (connection refused))"
        );
        assert_eq!(
            tell(&mut progress, &[connecting(B, 2, true), connected("b", 2)]),
            ["-- reconnected to node b (epoch 2)"]
        );
        assert_eq!(
            progress.gave_up(2_500, "the ack of m-1"),
            "gave up after 2.5 s: node b did not send the ack of m-1"
        );
    }

    /// Issue 15: the `too_large` refusal of a 5000-character paste repeated it whole.
    #[test]
    fn a_refused_long_message_is_quoted_short() {
        let mut view = View::new();
        let body = "x".repeat(5000);
        let lines = view.lines(
            &Event::SendFailed {
                send: crate::client::session::PendingSend {
                    room: "general".into(),
                    id: "m-1".into(),
                    body,
                },
                code: "too_large".into(),
                message: "body is 5000 bytes; this node takes at most 4096".into(),
            },
            Instant::now(),
        );
        assert_eq!(
            lines,
            [format!(
                "-- not sent to general (too_large: body is 5000 bytes; this node takes at \
                 most 4096): {}… (5000 characters)",
                "x".repeat(QUOTE_CHARS_MAX)
            )]
        );
        assert_eq!(quote("short"), "short");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert!(matches!(printable("plain text, é漢"), Cow::Borrowed(_)));
        assert_eq!(printable("a\x1b[2Jb\nc\x7f\u{9b}"), "a^[[2Jb^Jc^?\\u{9b}");
    }

    #[test]
    fn reasons_lose_what_the_line_says_already() {
        assert_eq!(
            plain_reason(
                A,
                "127.0.0.1:7400: connect: Connection refused (os error 111)"
            ),
            "connection refused"
        );
        assert_eq!(
            plain_reason(A, "127.0.0.1:7400: no answer to hello within 3000 ms"),
            "no answer to hello within 3000 ms"
        );
        assert_eq!(
            plain_reason(
                "nohost:1",
                "cannot resolve nohost:1: failed to lookup address information: Name or \
                 service not known"
            ),
            "cannot resolve the name: failed to lookup address information: Name or service \
             not known"
        );
        assert_eq!(
            plain_reason(A, "error unavailable: not serving yet"),
            "error unavailable: not serving yet"
        );
        assert_eq!(duration_words(10_000), "10 s");
        assert_eq!(duration_words(1_500), "1.5 s");
    }

    #[test]
    fn failures_remembered_are_bounded() {
        let mut progress = Progress::new(1, true, false);
        for n in 0..FAILURES_REMEMBERED_MAX + 5 {
            progress.on_event(&refused(&format!("10.0.0.{n}:7400")));
        }
        assert_eq!(progress.failures.len(), FAILURES_REMEMBERED_MAX);
        assert!(progress
            .cannot_connect()
            .unwrap()
            .starts_with("cannot connect to 10.0.0.5:"));
    }
}
