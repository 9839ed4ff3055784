//! What the load generator writes and reads on the wire: the body it sends, and the frames
//! it picks out of what pbchatd, Redis and NATS send back.
//!
//! The generator must cost far less per delivery than the server it measures, so the
//! frames that come once per delivery are recognised by a fixed prefix computed once per
//! run (the room, the body length and the subscription are the same for every message),
//! and the body's numbers are fixed-width digit fields read eight at a time. Anything that
//! does not match the fixed shape goes to a slower general parser (errors, pings, presence
//! lines), which is rare and allowed to be slow.

use std::io::Write;

/// Smallest body that holds the sender, counter and send-time fields.
pub const BODY_BYTES_MIN: usize = 48;
/// Digits of each body field (multiples of 8: one 8-byte load per 8 digits).
const SENDER_DIGITS: usize = 8;
const COUNTER_DIGITS: usize = 16;
const TIME_DIGITS: usize = 16;
const COUNTER_AT: usize = SENDER_DIGITS + 1;
const TIME_AT: usize = COUNTER_AT + COUNTER_DIGITS + 1;
const FIELDS_END: usize = TIME_AT + TIME_DIGITS + 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Pbchat,
    Redis,
    Nats,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pbchat => "pbchat",
            Protocol::Redis => "redis",
            Protocol::Nats => "nats",
        }
    }
}

/// The fields one send carries in its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyFields {
    pub sender: usize,
    pub counter: u64,
    /// Send time, nanoseconds since the run began on the generator's monotonic clock.
    pub sent_ns: u64,
}

/// Appends a body: `ssssssss.cccccccccccccccc.tttttttttttttttt.` padded with `x` to
/// `body_bytes`.
pub fn write_body(out: &mut Vec<u8>, fields: BodyFields, body_bytes: usize) {
    let start = out.len();
    let _ = write!(
        out,
        "{:0sw$}.{:0cw$}.{:0tw$}.",
        fields.sender,
        fields.counter,
        fields.sent_ns,
        sw = SENDER_DIGITS,
        cw = COUNTER_DIGITS,
        tw = TIME_DIGITS
    );
    let used = out.len() - start;
    out.resize(start + body_bytes.max(used), b'x');
}

/// Reads the fields `write_body` wrote; `None` for anything else.
pub fn parse_body(body: &[u8]) -> Option<BodyFields> {
    if body.len() < FIELDS_END
        || body[SENDER_DIGITS] != b'.'
        || body[TIME_AT - 1] != b'.'
        || body[FIELDS_END - 1] != b'.'
    {
        return None;
    }
    let counter = digits16(&body[COUNTER_AT..])?;
    let sent_ns = digits16(&body[TIME_AT..])?;
    Some(BodyFields {
        sender: digits8(body)? as usize,
        counter,
        sent_ns,
    })
}

/// The value of the 8 ASCII digits at the start of `bytes` (which holds at least 8), or
/// `None` if one is not a digit: one load and three multiply-shift steps, no loop.
fn digits8(bytes: &[u8]) -> Option<u64> {
    let chunk = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const HIGH: u64 = 0xf0f0_f0f0_f0f0_f0f0;
    // Each byte is 0x30..=0x39: its high nibble is 3 and adding 6 does not carry into it.
    if chunk & HIGH != ZEROS || (chunk.wrapping_add(0x0606_0606_0606_0606) & HIGH) != ZEROS {
        return None;
    }
    let v = chunk - ZEROS;
    let v = (v * 10 + (v >> 8)) & 0x00ff_00ff_00ff_00ff;
    let v = (v * 100 + (v >> 16)) & 0x0000_ffff_0000_ffff;
    Some((v * 10_000 + (v >> 32)) & 0xffff_ffff)
}

fn digits16(bytes: &[u8]) -> Option<u64> {
    Some(digits8(bytes)? * 100_000_000 + digits8(&bytes[8..])?)
}

/// Digits at the start of `bytes`, as many as there are; `None` for none or an overflow.
pub fn leading_u64(bytes: &[u8]) -> Option<u64> {
    let end = bytes
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len());
    if end == 0 {
        return None;
    }
    bytes[..end].iter().try_fold(0u64, |value, &d| {
        value.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// One frame the generator cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A message of the room, its body; pbchat also gives the message's `seq`.
    Delivery { body: &'a [u8], seq: Option<u64> },
    /// A publisher's send was taken: pbchat `ack`, Redis's PUBLISH reply (with the number
    /// of subscribers it reached), NATS `+OK`.
    Ack { receivers: Option<u64> },
    /// NATS asks whether we are alive; answer `PONG`.
    Ping,
    /// The server refused something or is closing the session.
    Error(&'a [u8]),
    /// Anything else (presence lines, INFO, subscribe confirmations).
    Other,
}

/// The per-run shapes of the frames: what every delivery and ack looks like.
pub struct Wire {
    pub protocol: Protocol,
    /// Every delivery starts with these bytes; the body follows at once (Redis, NATS) or
    /// after variable fields (pbchat, whose body ends the line).
    delivery_prefix: Vec<u8>,
    body_bytes: usize,
}

/// What a NATS server answers a `PING` with; the setup waits for it to know that its
/// `CONNECT` and `SUB` were taken.
pub const NATS_PONG: &[u8] = b"PONG\r\n";

impl Wire {
    pub fn new(protocol: Protocol, room: &str, body_bytes: usize) -> Wire {
        let delivery_prefix = match protocol {
            Protocol::Pbchat => format!("{{\"type\":\"msg\",\"room\":\"{room}\",\"seq\":"),
            Protocol::Redis => format!(
                "*3\r\n$7\r\nmessage\r\n${}\r\n{room}\r\n${body_bytes}\r\n",
                room.len()
            ),
            Protocol::Nats => format!("MSG {room} {NATS_SID} {body_bytes}\r\n"),
        };
        Wire {
            protocol,
            delivery_prefix: delivery_prefix.into_bytes(),
            body_bytes,
        }
    }

    /// A send of `fields` to `room`, appended to `out`.
    /// (pbchat's client id of a send is `<sender>-<counter>`, unique within the run.)
    pub fn write_send(&self, out: &mut Vec<u8>, room: &str, fields: BodyFields) {
        match self.protocol {
            Protocol::Pbchat => {
                let _ = write!(
                    out,
                    "{{\"type\":\"send\",\"room\":\"{room}\",\"id\":\"{}-{}\",\"body\":\"",
                    fields.sender, fields.counter
                );
                write_body(out, fields, self.body_bytes);
                out.extend_from_slice(b"\"}\n");
            }
            Protocol::Redis => {
                let _ = write!(
                    out,
                    "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{room}\r\n${}\r\n",
                    room.len(),
                    self.body_bytes
                );
                write_body(out, fields, self.body_bytes);
                out.extend_from_slice(b"\r\n");
            }
            Protocol::Nats => {
                let _ = write!(out, "PUB {room} {}\r\n", self.body_bytes);
                write_body(out, fields, self.body_bytes);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// The first complete frame in `buf`: (bytes it used, frame); `None` while incomplete.
    pub fn next<'a>(&self, buf: &'a [u8]) -> Option<(usize, Frame<'a>)> {
        match self.protocol {
            Protocol::Pbchat => self.next_line(buf),
            Protocol::Redis | Protocol::Nats => {
                let prefix = &self.delivery_prefix;
                let frame_len = prefix.len() + self.body_bytes + 2;
                if buf.starts_with(prefix) {
                    let body = buf.get(prefix.len()..prefix.len() + self.body_bytes)?;
                    let end = buf.get(frame_len - 2..frame_len)?;
                    return Some(if end == b"\r\n" {
                        (frame_len, Frame::Delivery { body, seq: None })
                    } else {
                        (frame_len, Frame::Error(b"delivery without its CRLF"))
                    });
                }
                if buf.len() < prefix.len() && prefix.starts_with(buf) {
                    return None;
                }
                match self.protocol {
                    Protocol::Redis => next_resp(buf),
                    _ => next_nats(buf),
                }
            }
        }
    }

    /// pbchat: one JSON line. A `msg` line ends with its body (`..."body":"<body>"}`).
    fn next_line<'a>(&self, buf: &'a [u8]) -> Option<(usize, Frame<'a>)> {
        let len = memchr::memchr(b'\n', buf)?;
        let line = &buf[..len];
        let frame = if line.starts_with(&self.delivery_prefix) {
            let seq = leading_u64(&line[self.delivery_prefix.len()..]);
            let body_start = len.checked_sub(self.body_bytes + 2);
            match body_start {
                Some(at)
                    if line.ends_with(b"\"}")
                        && line[..at].ends_with(b"\"body\":\"")
                        && seq.is_some() =>
                {
                    Frame::Delivery {
                        body: &line[at..at + self.body_bytes],
                        seq,
                    }
                }
                _ => Frame::Error(line),
            }
        } else if line.starts_with(b"{\"type\":\"ack\"") {
            Frame::Ack { receivers: None }
        } else if line.starts_with(b"{\"type\":\"error\"")
            || line.starts_with(b"{\"type\":\"goodbye\"")
        {
            Frame::Error(line)
        } else {
            Frame::Other
        };
        Some((len + 1, frame))
    }
}

/// The subscription id every NATS subscriber uses (ids are per connection).
pub const NATS_SID: u32 = 1;

/// One RESP value other than a `message` delivery: integers (PUBLISH replies), errors,
/// simple strings, and arrays (skipped whole).
fn next_resp(buf: &[u8]) -> Option<(usize, Frame<'_>)> {
    let line_end = crlf(buf)?;
    let head = &buf[1..line_end];
    let after = line_end + 2;
    match buf[0] {
        b':' => Some((
            after,
            match leading_u64(head) {
                Some(n) if head.iter().all(u8::is_ascii_digit) => Frame::Ack { receivers: Some(n) },
                _ => Frame::Error(head),
            },
        )),
        b'+' => Some((after, Frame::Other)),
        b'-' => Some((after, Frame::Error(head))),
        b'*' => {
            let count = leading_u64(head)?;
            let mut at = after;
            for _ in 0..count {
                let (used, _) = next_resp_item(&buf[at..])?;
                at += used;
            }
            Some((at, Frame::Other))
        }
        _ => Some((buf.len(), Frame::Error(b"unparsable reply"))),
    }
}

/// One element of a RESP array: a bulk string or a one-line value.
fn next_resp_item(buf: &[u8]) -> Option<(usize, ())> {
    let line_end = crlf(buf)?;
    if buf[0] != b'$' {
        return Some((line_end + 2, ()));
    }
    let len = leading_u64(&buf[1..line_end])? as usize;
    let end = line_end + 2 + len + 2;
    (buf.len() >= end).then_some((end, ()))
}

/// Where the first CRLF in `buf` starts.
fn crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let at = from + memchr::memchr(b'\r', &buf[from..])?;
        if *buf.get(at + 1)? == b'\n' {
            return Some(at);
        }
        from = at + 1;
    }
}

/// One NATS protocol line other than a delivery (`+OK`, `PING`, `-ERR`, `INFO`, `PONG`).
fn next_nats(buf: &[u8]) -> Option<(usize, Frame<'_>)> {
    let line_end = crlf(buf)?;
    let line = &buf[..line_end];
    let frame = if line == b"+OK" {
        Frame::Ack { receivers: None }
    } else if line == b"PING" {
        Frame::Ping
    } else if line.starts_with(b"-ERR") || line.starts_with(b"MSG ") {
        // A MSG not of the fixed shape is not one of this run's deliveries.
        Frame::Error(line)
    } else {
        Frame::Other
    };
    Some((line_end + 2, frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: BodyFields = BodyFields {
        sender: 12,
        counter: 345,
        sent_ns: 6_789_000_123,
    };

    #[test]
    fn body_round_trips_at_every_size_and_rejects_non_digits() {
        for size in [BODY_BYTES_MIN, 64, 100] {
            let mut out = Vec::new();
            write_body(&mut out, FIELDS, size);
            assert_eq!(out.len(), size);
            assert_eq!(parse_body(&out), Some(FIELDS));
        }
        let mut out = Vec::new();
        write_body(&mut out, FIELDS, 64);
        for at in [0, 7, COUNTER_AT, COUNTER_AT + 15, TIME_AT + 3] {
            for bad in [b'/', b':', b'x', b' '] {
                let mut broken = out.clone();
                broken[at] = bad;
                assert_eq!(parse_body(&broken), None, "byte {at} = {bad}");
            }
        }
        assert_eq!(parse_body(&out[..FIELDS_END - 1]), None);
    }

    #[test]
    fn digits_read_eight_at_a_time_match_the_number() {
        for n in [0u64, 1, 9, 10, 12_345_678, 99_999_999, 40_000_001] {
            assert_eq!(digits8(format!("{n:08}").as_bytes()), Some(n));
        }
        assert_eq!(digits16(b"1234567890123456"), Some(1_234_567_890_123_456));
    }

    /// Every frame, fed whole and cut at every byte: a cut frame waits, a whole one parses.
    fn check_frames(wire: &Wire, stream: &[u8], expected: &[Frame<'_>]) {
        let mut at = 0;
        for want in expected {
            let rest = &stream[at..];
            let (used, got) = wire.next(rest).expect("a whole frame");
            assert_eq!(&got, want);
            for cut in 0..used {
                assert!(
                    wire.next(&rest[..cut]).is_none(),
                    "cut at {cut} of {want:?}"
                );
            }
            at += used;
        }
        assert_eq!(at, stream.len());
    }

    fn body() -> Vec<u8> {
        let mut out = Vec::new();
        write_body(&mut out, FIELDS, 64);
        out
    }

    /// A delivery of `body()` with `prefix`, then `tail`: the frames a peer sends.
    fn check_peer(protocol: Protocol, prefix: &[u8], tail: &[u8], after: &[Frame<'_>]) {
        let wire = Wire::new(protocol, "bench", 64);
        let body = body();
        let stream = [prefix, &body, b"\r\n", tail].concat();
        let delivery = Frame::Delivery {
            body: &body,
            seq: None,
        };
        let expected: Vec<Frame<'_>> = [delivery]
            .into_iter()
            .chain(after.iter().copied())
            .collect();
        check_frames(&wire, &stream, &expected);
    }

    #[test]
    fn redis_deliveries_acks_and_errors() {
        check_peer(
            Protocol::Redis,
            b"*3\r\n$7\r\nmessage\r\n$5\r\nbench\r\n$64\r\n",
            b":100\r\n-ERR wrong\r\n*3\r\n$9\r\nsubscribe\r\n$5\r\nbench\r\n:1\r\n",
            &[
                Frame::Ack {
                    receivers: Some(100),
                },
                Frame::Error(b"ERR wrong"),
                Frame::Other,
            ],
        );
    }

    #[test]
    fn nats_deliveries_acks_and_pings() {
        check_peer(
            Protocol::Nats,
            b"MSG bench 1 64\r\n",
            b"+OK\r\nPING\r\nINFO {}\r\n-ERR 'Slow Consumer'\r\n",
            &[
                Frame::Ack { receivers: None },
                Frame::Ping,
                Frame::Other,
                Frame::Error(b"-ERR 'Slow Consumer'"),
            ],
        );
    }

    #[test]
    fn pbchat_msg_lines_give_body_and_seq() {
        let wire = Wire::new(Protocol::Pbchat, "bench", 64);
        let body = body();
        let mut stream = b"{\"type\":\"msg\",\"room\":\"bench\",\"seq\":42,\"epoch\":1,\"ts\":5,\
            \"from\":\"b1m0\",\"id\":\"0-3\",\"body\":\""
            .to_vec();
        stream.extend_from_slice(&body);
        stream.extend_from_slice(b"\"}\n{\"type\":\"ack\",\"id\":\"0-3\",\"seq\":42}\n");
        stream.extend_from_slice(b"{\"type\":\"joined\",\"room\":\"bench\"}\n");
        stream.extend_from_slice(
            b"{\"type\":\"msg\",\"room\":\"bench\",\"seq\":43,\"body\":\"x\"}\n",
        );
        let short = b"{\"type\":\"msg\",\"room\":\"bench\",\"seq\":43,\"body\":\"x\"}";
        check_frames(
            &wire,
            &stream,
            &[
                Frame::Delivery {
                    body: &body,
                    seq: Some(42),
                },
                Frame::Ack { receivers: None },
                Frame::Other,
                Frame::Error(short),
            ],
        );
    }

    #[test]
    fn sends_carry_the_body_each_server_expects() {
        for protocol in [Protocol::Pbchat, Protocol::Redis, Protocol::Nats] {
            let wire = Wire::new(protocol, "bench", 64);
            let mut out = Vec::new();
            wire.write_send(&mut out, "bench", FIELDS);
            let at = memchr::memmem::find(&out, &body()).expect("the body is in the send");
            assert_eq!(parse_body(&out[at..at + 64]), Some(FIELDS), "{protocol:?}");
        }
    }
}
