//! Client protocol v1 codec (docs/protocol.md): JSON-line frames in both directions.
//!
//! Pure: bytes in, typed frames out, and typed frames to bytes. Line splitting lives in
//! [`super::lines`]; this module sees one complete line at a time.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use thiserror::Error;

use crate::entry::Entry;

pub const PROTOCOL_VERSION: u64 = 1;
/// Hard ceiling on `history.limit` set by the protocol.
pub const HISTORY_LIMIT_MAX: usize = 1000;
/// `history.limit` when the client gives none.
pub const HISTORY_LIMIT_DEFAULT: usize = 50;
pub const NICK_CHARS_MAX: usize = 32;
pub const SESSION_CHARS_MAX: usize = 64;
pub const ROOM_CHARS_MAX: usize = 64;
pub const ID_CHARS_MAX: usize = 64;

/// Error codes of the contract, spelled as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    UnsupportedVersion,
    Unauthorized,
    NickInUse,
    NotJoined,
    TooLarge,
    RateLimited,
    SlowConsumer,
    NotPrimary,
    Unavailable,
    Internal,
    /// An operator closed the connection (`pbchatctl kick`).
    Kicked,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NickInUse => "nick_in_use",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::NotPrimary => "not_primary",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Kicked => "kicked",
        }
    }
}

/// A frame from a client, validated against the contract's field rules.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Hello {
        version: u64,
        nick: String,
        session: String,
        token: Option<String>,
    },
    Join {
        room: String,
        after: Option<u64>,
        after_epoch: Option<u64>,
    },
    Leave {
        room: String,
    },
    Send {
        room: String,
        id: String,
        body: String,
    },
    History {
        room: String,
        before: Option<u64>,
        limit: usize,
    },
    Ping {
        token: Option<Value>,
    },
    Quit,
}

/// Why a client line was refused; carries the error frame's code and a message for people.
#[derive(Clone, Debug, Error, PartialEq)]
#[error("{message}")]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
    /// The `id` of a `send` that was refused, when it could be read.
    pub id: Option<String>,
}

impl DecodeError {
    fn bad(message: impl Into<String>) -> Self {
        DecodeError {
            code: ErrorCode::BadRequest,
            message: clip_message(message.into()),
            id: None,
        }
    }
}

/// Every field any client frame may carry; unknown fields are ignored as the contract says.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    version: Option<u64>,
    nick: Option<String>,
    session: Option<String>,
    token: Option<Value>,
    room: Option<String>,
    after: Option<u64>,
    after_epoch: Option<u64>,
    id: Option<String>,
    body: Option<String>,
    before: Option<u64>,
    limit: Option<u64>,
}

fn need<T>(field: Option<T>, kind: &str, name: &str) -> Result<T, DecodeError> {
    field.ok_or_else(|| DecodeError::bad(format!("{kind}: missing field `{name}`")))
}

/// Decodes one line (without its `\n`; a trailing `\r` is already stripped).
///
/// `max_body_bytes` is the node's body limit: a longer body is `too_large`.
pub fn decode_request(line: &[u8], max_body_bytes: usize) -> Result<Request, DecodeError> {
    let raw: RawRequest = serde_json::from_slice(line)
        .map_err(|e| DecodeError::bad(format!("not a valid JSON object: {e}")))?;
    let kind = raw
        .kind
        .as_deref()
        .ok_or_else(|| DecodeError::bad("missing string field `type`"))?;
    match kind {
        "hello" => {
            let version = need(raw.version, kind, "version")?;
            let nick = need(raw.nick, kind, "nick")?;
            let session = need(raw.session, kind, "session")?;
            if version != PROTOCOL_VERSION {
                return Err(DecodeError {
                    code: ErrorCode::UnsupportedVersion,
                    message: format!(
                        "protocol version {version} is not supported; this node speaks 1"
                    ),
                    id: None,
                });
            }
            check_nick(&nick)?;
            check_printable("session", &session, SESSION_CHARS_MAX)?;
            let token = match raw.token {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s),
                Some(_) => return Err(DecodeError::bad("hello: `token` must be a string")),
            };
            Ok(Request::Hello {
                version,
                nick,
                session,
                token,
            })
        }
        "join" => {
            let room = need(raw.room, kind, "room")?;
            check_room(&room)?;
            Ok(Request::Join {
                room,
                after: raw.after,
                after_epoch: raw.after_epoch,
            })
        }
        "leave" => {
            let room = need(raw.room, kind, "room")?;
            check_room(&room)?;
            Ok(Request::Leave { room })
        }
        "send" => {
            // Read the id first so every later error can name the send it answers.
            let id = need(raw.id, kind, "id")?;
            check_printable("id", &id, ID_CHARS_MAX)?;
            let with_id = |mut e: DecodeError| {
                e.id = Some(id.clone());
                e
            };
            let room = need(raw.room, kind, "room").map_err(with_id)?;
            check_room(&room).map_err(with_id)?;
            let body = need(raw.body, kind, "body").map_err(with_id)?;
            if body.len() > max_body_bytes {
                return Err(DecodeError {
                    code: ErrorCode::TooLarge,
                    message: format!(
                        "body is {} bytes; this node takes at most {max_body_bytes}",
                        body.len()
                    ),
                    id: Some(id),
                });
            }
            Ok(Request::Send { room, id, body })
        }
        "history" => {
            let room = need(raw.room, kind, "room")?;
            check_room(&room)?;
            let limit = raw
                .limit
                .map(|l| l.min(HISTORY_LIMIT_MAX as u64) as usize)
                .unwrap_or(HISTORY_LIMIT_DEFAULT);
            Ok(Request::History {
                room,
                before: raw.before,
                limit,
            })
        }
        "ping" => Ok(Request::Ping { token: raw.token }),
        "quit" => Ok(Request::Quit),
        other => Err(DecodeError {
            code: ErrorCode::UnknownType,
            message: format!("unknown frame type `{}`", truncate_for_message(other)),
            id: None,
        }),
    }
}

/// Longest `message` of an error answer, in bytes. serde_json quotes what it could not
/// parse, escaping control characters six-fold (`\u{7f}`), so its text grows with the input
/// unless clipped (found by the client_frame fuzzer).
pub const ERROR_MESSAGE_MAX_BYTES: usize = 400;

/// `message` cut to [`ERROR_MESSAGE_MAX_BYTES`] at a character boundary, marked with `…`.
fn clip_message(mut message: String) -> String {
    if message.len() <= ERROR_MESSAGE_MAX_BYTES {
        return message;
    }
    let mut end = ERROR_MESSAGE_MAX_BYTES - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push('…');
    message
}

fn truncate_for_message(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

pub fn check_nick(nick: &str) -> Result<(), DecodeError> {
    let count = nick.chars().count();
    if count == 0 || count > NICK_CHARS_MAX {
        return Err(DecodeError::bad(format!(
            "nick must be 1-{NICK_CHARS_MAX} characters, got {count}"
        )));
    }
    if let Some(c) = nick
        .chars()
        .find(|c| !(c.is_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(DecodeError::bad(format!(
            "nick may hold letters, digits, `_` and `-`, not {c:?}"
        )));
    }
    Ok(())
}

pub fn check_room(room: &str) -> Result<(), DecodeError> {
    let count = room.chars().count();
    if count == 0 || count > ROOM_CHARS_MAX {
        return Err(DecodeError::bad(format!(
            "room name must be 1-{ROOM_CHARS_MAX} characters, got {count}"
        )));
    }
    if let Some(c) = room
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '#')))
    {
        return Err(DecodeError::bad(format!(
            "room name may hold letters, digits, `_`, `-`, `.` and `#`, not {c:?}"
        )));
    }
    Ok(())
}

/// `session` and `id`: 1..=max printable ASCII characters (space through `~`).
pub fn check_printable(field: &str, value: &str, max: usize) -> Result<(), DecodeError> {
    if value.is_empty() || value.len() > max {
        return Err(DecodeError::bad(format!(
            "{field} must be 1-{max} printable ASCII characters, got {}",
            value.chars().count()
        )));
    }
    if let Some(c) = value.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(DecodeError::bad(format!(
            "{field} must be printable ASCII, not {c:?}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Frames from the node. Each encoder returns one complete line, `\n` included.

fn line<T: Serialize>(frame: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(frame).expect("frame structs always serialize");
    out.push(b'\n');
    out
}

#[derive(Serialize)]
struct Orig {
    epoch: u64,
    seq: u64,
}

#[derive(Serialize)]
struct MsgFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    seq: u64,
    epoch: u64,
    ts: u64,
    from: &'a str,
    id: &'a str,
    body: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    orig: Option<Orig>,
}

/// The `msg` frame of a committed entry: encoded once, then shared by every recipient.
pub fn encode_msg(entry: &Entry) -> Vec<u8> {
    line(&MsgFrame {
        kind: "msg",
        room: &entry.room,
        seq: entry.seq,
        epoch: entry.epoch,
        ts: entry.ts_ms,
        from: &entry.from,
        id: &entry.id,
        body: &entry.body,
        orig: entry.orig.map(|(epoch, seq)| Orig { epoch, seq }),
    })
}

/// Frames other than `msg`, serialized with `type` first.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply<'a> {
    Welcome {
        version: u64,
        node: &'a str,
        role: &'a str,
        epoch: u64,
        head: u64,
        /// The other node's client address, where a client goes when this one fails;
        /// `None` on a standalone node.
        peer: Option<&'a str>,
        /// The client's liveness wait: a client that wrote a frame and heard nothing at all
        /// for this long asks `peer` whether it took over (docs/protocol.md, "Liveness").
        probe_ms: u64,
    },
    Redirect {
        primary: Option<&'a str>,
        epoch: u64,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    Joined {
        room: &'a str,
        members: &'a [&'a str],
        head: u64,
    },
    Left {
        room: &'a str,
    },
    Presence {
        room: &'a str,
        nick: &'a str,
        /// `join` or `leave`.
        event: &'a str,
    },
    Ack {
        id: &'a str,
        seq: u64,
    },
    HistoryEnd {
        room: &'a str,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a Value>,
    },
    Goodbye {
        /// `shutdown`, `failover` or `demoted`.
        reason: &'a str,
        primary: Option<&'a str>,
    },
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    line(reply)
}

/// A frame from the node, as a client reads it (used by `pbchat-client`, tests and benches).
///
/// Fields a frame type does not carry are `None`; unknown fields are ignored.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ServerFrame {
    #[serde(rename = "type")]
    pub kind: String,
    pub node: Option<String>,
    pub role: Option<String>,
    pub epoch: Option<u64>,
    pub head: Option<u64>,
    pub primary: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub id: Option<String>,
    pub room: Option<String>,
    pub members: Option<Vec<String>>,
    pub nick: Option<String>,
    pub event: Option<String>,
    pub seq: Option<u64>,
    pub ts: Option<u64>,
    pub from: Option<String>,
    pub body: Option<String>,
    pub orig: Option<ServerOrig>,
    pub token: Option<Value>,
    pub reason: Option<String>,
    pub peer: Option<String>,
    pub probe_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ServerOrig {
    pub epoch: u64,
    pub seq: u64,
}

pub fn decode_server_frame(line: &[u8]) -> Result<ServerFrame, serde_json::Error> {
    serde_json::from_slice(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(s: &str) -> Result<Request, DecodeError> {
        decode_request(s.as_bytes(), 4096)
    }

    #[test]
    fn hello_decodes_and_checks_version() {
        assert_eq!(
            decode(r#"{"type":"hello","version":1,"nick":"alice","session":"3f2a9c","x":[1]}"#),
            Ok(Request::Hello {
                version: 1,
                nick: "alice".into(),
                session: "3f2a9c".into(),
                token: None
            })
        );
        let err =
            decode(r#"{"type":"hello","version":2,"nick":"alice","session":"s"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedVersion);
    }

    #[test]
    fn field_rules_are_enforced() {
        for bad in [
            r#"{"type":"hello","version":1,"nick":"","session":"s"}"#,
            r#"{"type":"hello","version":1,"nick":"a b","session":"s"}"#,
            r#"{"type":"hello","version":1,"nick":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","session":"s"}"#,
            r#"{"type":"hello","version":1,"nick":"a","session":"é"}"#,
            r#"{"type":"join","room":"no space"}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"join","room":7}"#,
            r#"{"room":"x"}"#,
            r#"[1,2]"#,
            r#"{"type":"send","room":"r","id":"","body":"x"}"#,
        ] {
            assert_eq!(
                decode(bad).unwrap_err().code,
                ErrorCode::BadRequest,
                "{bad}"
            );
        }
        assert!(decode(r##"{"type":"join","room":"a.b-c_d#e"}"##).is_ok());
    }

    #[test]
    fn send_errors_carry_the_id() {
        let long = "x".repeat(4097);
        let err = decode(&format!(
            r#"{{"type":"send","room":"r","id":"m-1","body":"{long}"}}"#
        ))
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert_eq!(err.id.as_deref(), Some("m-1"));
        let err = decode(r#"{"type":"send","id":"m-2","body":"x"}"#).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("m-2"));
    }

    #[test]
    fn unknown_type_is_its_own_code() {
        assert_eq!(
            decode(r#"{"type":"dance"}"#).unwrap_err().code,
            ErrorCode::UnknownType
        );
    }

    #[test]
    fn msg_frame_matches_the_contract() {
        let entry = Entry {
            epoch: 3,
            seq: 1235,
            ts_ms: 1764084000123,
            room: "general".into(),
            from: "alice".into(),
            session: "s".into(),
            id: "m-17".into(),
            body: "hello".into(),
            orig: None,
        };
        assert_eq!(
            String::from_utf8(encode_msg(&entry)).unwrap(),
            "{\"type\":\"msg\",\"room\":\"general\",\"seq\":1235,\"epoch\":3,\"ts\":1764084000123,\"from\":\"alice\",\"id\":\"m-17\",\"body\":\"hello\"}\n"
        );
        let frame = decode_server_frame(&encode_msg(&Entry {
            orig: Some((2, 9)),
            ..entry
        }))
        .unwrap();
        assert_eq!(frame.orig, Some(ServerOrig { epoch: 2, seq: 9 }));
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_request(&bytes, 4096);
        }

        #[test]
        fn send_round_trips_any_body(body in ".{0,200}", id in "[ -~]{1,64}") {
            let line = serde_json::json!({"type":"send","room":"r","id":id,"body":body}).to_string();
            prop_assert_eq!(
                decode_request(line.as_bytes(), 4096),
                Ok(Request::Send { room: "r".into(), id: id.clone(), body: body.clone() })
            );
        }
    }

    #[test]
    fn an_error_message_quoting_control_characters_stays_bounded() {
        // What the client_frame fuzzer found: serde_json quotes the string with each 0x7f as
        // `\u{7f}`, which made a 482-byte message from a 73-byte line.
        let mut line = br#""moroMoo"#.to_vec();
        line.extend(std::iter::repeat_n(0x7f, 63));
        line.extend_from_slice(br#"m""#);
        let error = decode_request(&line, 4096).expect_err("not a request");
        assert_eq!(error.code, ErrorCode::BadRequest);
        assert!(
            error.message.starts_with("not a valid JSON object"),
            "{}",
            error.message
        );
        assert!(
            error.message.len() <= ERROR_MESSAGE_MAX_BYTES,
            "{}",
            error.message.len()
        );
        assert!(error.message.ends_with("…"), "{}", error.message);
    }
}
