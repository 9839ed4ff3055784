//! Builders of the client → node frames of protocol v1 (docs/protocol.md).
//!
//! Pure: each returns a JSON value; [`to_line`] makes the wire line. No validation here:
//! callers check names with `wire::client::check_*` before they get this far.

use serde_json::{json, Value};

use crate::wire::client::PROTOCOL_VERSION;

/// A place in a room's history: the message numbered `seq`, committed in `epoch` when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    /// `None` when the position came from a `joined` head or a `--after` without epoch.
    pub epoch: Option<u64>,
}

pub fn hello(nick: &str, session: &str, token: Option<&str>) -> Value {
    let mut frame = json!({
        "type": "hello",
        "version": PROTOCOL_VERSION,
        "nick": nick,
        "session": session,
    });
    if let Some(token) = token {
        frame["token"] = json!(token);
    }
    frame
}

/// `join`; with a position, asks for replay after it (`after`, and `after_epoch` when the
/// epoch of that message is known).
pub fn join(room: &str, after: Option<Position>) -> Value {
    let mut frame = json!({"type": "join", "room": room});
    if let Some(position) = after {
        frame["after"] = json!(position.seq);
        if let Some(epoch) = position.epoch {
            frame["after_epoch"] = json!(epoch);
        }
    }
    frame
}

pub fn leave(room: &str) -> Value {
    json!({"type": "leave", "room": room})
}

pub fn send(room: &str, id: &str, body: &str) -> Value {
    json!({"type": "send", "room": room, "id": id, "body": body})
}

pub fn history(room: &str, before: Option<u64>, limit: usize) -> Value {
    let mut frame = json!({"type": "history", "room": room, "limit": limit});
    if let Some(before) = before {
        frame["before"] = json!(before);
    }
    frame
}

pub fn ping(token: &str) -> Value {
    json!({"type": "ping", "token": token})
}

pub fn quit() -> Value {
    json!({"type": "quit"})
}

/// One wire line: the frame's JSON and its `\n`.
pub fn to_line(frame: &Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(frame).expect("a JSON value always serializes");
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::client::{decode_request, Request};

    /// The node's own decoder must accept what the client builds.
    #[test]
    fn frames_decode_with_the_node_codec() {
        let decode = |frame: Value| {
            let line = to_line(&frame);
            assert_eq!(line.last(), Some(&b'\n'));
            decode_request(&line[..line.len() - 1], 4096).unwrap()
        };
        assert_eq!(
            decode(hello("alice", "s1", Some("t"))),
            Request::Hello {
                version: 1,
                nick: "alice".into(),
                session: "s1".into(),
                token: Some("t".into())
            }
        );
        assert_eq!(
            decode(join(
                "general",
                Some(Position {
                    seq: 7,
                    epoch: Some(2)
                })
            )),
            Request::Join {
                room: "general".into(),
                after: Some(7),
                after_epoch: Some(2)
            }
        );
        assert_eq!(
            decode(join(
                "general",
                Some(Position {
                    seq: 7,
                    epoch: None
                })
            )),
            Request::Join {
                room: "general".into(),
                after: Some(7),
                after_epoch: None
            }
        );
        assert_eq!(
            decode(history("r", None, 5)),
            Request::History {
                room: "r".into(),
                before: None,
                limit: 5
            }
        );
        assert_eq!(decode(quit()), Request::Quit);
    }
}
