//! Fuzzes the client side of the wire: the line splitter as the daemon drives it (bytes
//! arriving in arbitrary chunks into a bounded buffer), the request decoder on every line,
//! and the client's own decoder of server frames.
//!
//! Input: byte 0 picks the read size (1..=256 bytes per read), the rest is the stream a
//! client sent. Invariants beyond "no panic": the lines are the same whatever the chunking
//! (so a read boundary never changes what a connection means), no line exceeds the limit,
//! every accepted request obeys the protocol's field rules, and an error's message is
//! bounded (a hostile line is never echoed back in full).

use crate::wire::client::{
    check_nick, check_printable, check_room, decode_request, decode_server_frame, ErrorCode,
    Request, ERROR_MESSAGE_MAX_BYTES, HISTORY_LIMIT_MAX, ID_CHARS_MAX, SESSION_CHARS_MAX,
};
use crate::wire::lines::Lines;

/// Small, so that the fuzzer reaches the too-long path with short inputs.
const MAX_LINE_BYTES: usize = 256;
const MAX_BODY_BYTES: usize = 64;

/// What the stream meant: its lines, then whether it ended on an overlong line.
#[derive(Debug, PartialEq)]
struct Meaning {
    lines: Vec<Vec<u8>>,
    too_long: bool,
}

/// Splits `stream` as the daemon does: read `chunk` bytes, take every complete line, drop
/// what was consumed, keep the unfinished tail.
fn split(stream: &[u8], chunk: usize) -> Meaning {
    let mut buf: Vec<u8> = Vec::new();
    let mut lines = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        let mut iter = Lines::new(&buf, MAX_LINE_BYTES);
        for line in iter.by_ref() {
            match line {
                Ok(line) => {
                    assert!(line.len() <= MAX_LINE_BYTES);
                    assert!(!line.contains(&b'\n'));
                    lines.push(line.to_vec());
                }
                Err(_) => {
                    return Meaning {
                        lines,
                        too_long: true,
                    }
                }
            }
        }
        let used = iter.consumed();
        buf.drain(..used);
        // The bound the daemon relies on: the unfinished tail never outgrows the limit by
        // more than one read.
        assert!(
            buf.len() <= MAX_LINE_BYTES + chunk,
            "tail of {} bytes",
            buf.len()
        );
    }
    Meaning {
        lines,
        too_long: false,
    }
}

fn check_request(request: &Request) {
    match request {
        Request::Hello { nick, session, .. } => {
            check_nick(nick).expect("an accepted nick passes its own check");
            check_printable("session", session, SESSION_CHARS_MAX).expect("session");
        }
        Request::Join { room, .. } | Request::Leave { room } => {
            check_room(room).expect("room");
        }
        Request::Send { room, id, body } => {
            check_room(room).expect("room");
            check_printable("id", id, ID_CHARS_MAX).expect("id");
            assert!(body.len() <= MAX_BODY_BYTES);
        }
        Request::History { room, limit, .. } => {
            check_room(room).expect("room");
            assert!(*limit <= HISTORY_LIMIT_MAX);
        }
        Request::Ping { .. } | Request::Quit => {}
    }
}

/// Runs every check of this target on one input; panics on a broken invariant.
pub fn check(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first) + 1;
    let whole = split(stream, stream.len().max(1));
    let chunked = split(stream, chunk);
    assert_eq!(whole, chunked, "chunking by {chunk} changed the lines");
    for line in &whole.lines {
        match decode_request(line, MAX_BODY_BYTES) {
            Ok(request) => check_request(&request),
            Err(error) => {
                assert!(
                    matches!(
                        error.code,
                        ErrorCode::BadRequest
                            | ErrorCode::UnknownType
                            | ErrorCode::UnsupportedVersion
                            | ErrorCode::TooLarge
                    ),
                    "decoder answered {:?}",
                    error.code
                );
                assert!(
                    error.message.len() <= ERROR_MESSAGE_MAX_BYTES,
                    "{}-byte error message: {:?}",
                    error.message.len(),
                    error.message
                );
                if let Some(id) = &error.id {
                    check_printable("id", id, ID_CHARS_MAX).expect("an echoed id is valid");
                }
            }
        }
        // The same bytes from a server (pbchat-client's side) must not panic either.
        let _ = decode_server_frame(line);
    }
}
