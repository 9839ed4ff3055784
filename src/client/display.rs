//! Text for people: how the interactive client shows messages, presence and connection
//! status, and the one-line status of the scripted modes.
//!
//! Pure apart from reading the local time zone: events in, lines out. Printing is the
//! binary's job.

use std::collections::BTreeSet;

use chrono::{Local, TimeZone};

use crate::client::net::Event;
use crate::wire::client::ServerFrame;

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

/// Connection status lines, shared by all modes (`None`: nothing worth a line).
pub fn status_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::Connecting {
            server,
            attempt,
            reconnecting,
        } => {
            if *reconnecting || *attempt > 1 {
                format!("-- reconnecting to {server} (attempt {attempt})…")
            } else {
                format!("-- connecting to {server}…")
            }
        }
        Event::Connected { node, epoch, .. } => {
            format!("-- connected to node {node} (epoch {epoch})")
        }
        Event::Disconnected { server, reason } => format!("-- lost {server}: {reason}"),
        Event::Redirected { server, primary } => match primary {
            Some(primary) => format!("-- {server} is not the primary; trying {primary}"),
            None => format!("-- {server} is not the primary and knows none"),
        },
        Event::AttemptFailed { reason, .. } => format!("-- {reason}"),
        _ => return None,
    })
}

/// What the interactive view remembers to format events: the rooms it shows as joined.
#[derive(Debug, Default)]
pub struct View {
    /// Rooms a `joined` was shown for and no `left` since. With more than one, messages
    /// carry a `[room]` prefix.
    joined: BTreeSet<String>,
}

impl View {
    pub fn new() -> Self {
        View::default()
    }

    /// The lines an event shows in the interactive client.
    pub fn lines(&mut self, event: &Event) -> Vec<String> {
        let line = match event {
            Event::Msg { frame, history, .. } => {
                let with_room = self.joined.len() > 1
                    || (*history && !self.joined.contains(frame.room.as_deref().unwrap_or("")));
                format_msg(frame, with_room)
            }
            Event::HistoryEnd { room } => format!("-- end of history of {room}"),
            Event::Presence { room, nick, joined } => {
                let verb = if *joined { "joined" } else { "left" };
                format!("* {nick} {verb} {room}")
            }
            Event::Joined { room, members } => {
                // A rejoin after a reconnect is no news.
                if !self.joined.insert(room.clone()) {
                    return Vec::new();
                }
                format!("-- joined {room}; members: {}", members.join(", "))
            }
            Event::Left { room } => {
                self.joined.remove(room);
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
                send.room, send.body
            ),
            Event::Error { code, message } => format!("-- error {code}: {message}"),
            Event::Rejected { message } => format!("-- {message}"),
            Event::Fatal { code, message } => format!("-- error {code}: {message}"),
            // The message itself comes back as a `msg`; its ack is no news.
            Event::Acked { .. } => return Vec::new(),
            // Each failed attempt is followed by the next "reconnecting" line.
            Event::AttemptFailed { .. } => return Vec::new(),
            other => return status_line(other).into_iter().collect(),
        };
        vec![line]
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
            view.lines(&joined("general")),
            ["-- joined general; members: alice, bob"]
        );
        let line = &view.lines(&msg_event("general", false))[0];
        assert!(line.ends_with(" <bob> hi there"), "{line}");
        assert!(!line.starts_with('['));
        // A rejoin after reconnect prints nothing.
        assert!(view.lines(&joined("general")).is_empty());
        view.lines(&joined("random"));
        let line = &view.lines(&msg_event("general", false))[0];
        assert!(line.starts_with("[general] "), "{line}");
        view.lines(&Event::Left {
            room: "random".into(),
        });
        assert!(!view.lines(&msg_event("general", false))[0].starts_with('['));
        // History of a room we are not in names it.
        assert!(view.lines(&msg_event("lobby", true))[0].starts_with("[lobby] "));
    }

    #[test]
    fn presence_and_status_read_naturally() {
        let mut view = View::new();
        assert_eq!(
            view.lines(&Event::Presence {
                room: "general".into(),
                nick: "bob".into(),
                joined: true
            }),
            ["* bob joined general"]
        );
        assert_eq!(
            view.lines(&Event::Connecting {
                server: "127.0.0.1:7400".into(),
                attempt: 3,
                reconnecting: true
            }),
            ["-- reconnecting to 127.0.0.1:7400 (attempt 3)…"]
        );
        assert_eq!(
            view.lines(&Event::Connected {
                server: "x".into(),
                node: "b".into(),
                epoch: 4
            }),
            ["-- connected to node b (epoch 4)"]
        );
        assert!(view
            .lines(&Event::Acked {
                id: "m-1".into(),
                seq: 3
            })
            .is_empty());
    }
}
