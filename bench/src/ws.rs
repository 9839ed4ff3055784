//! The load generator's side of a WebSocket (RFC 6455), only as much as a benchmark member
//! needs: the upgrade request, masked text messages out, and the server's unmasked frames
//! rewritten in place into the `\n`-ended lines the rest of the generator parses.
//!
//! Not a general client: the server is pbchatd, which sends each frame as one unfragmented
//! text message (or a ping or close). The generator must stay far cheaper per delivery than
//! the server, so nothing here allocates per message.

/// Which socket a pbchat member uses: the client listener or the web listener's `/ws`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Ws,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
        }
    }

    pub fn parse(text: &str) -> Result<Transport, String> {
        match text {
            "tcp" => Ok(Transport::Tcp),
            "ws" => Ok(Transport::Ws),
            other => Err(format!("--transport: {other:?} is neither tcp nor ws")),
        }
    }
}

const OPCODE_TEXT: u8 = 0x1;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xA;
/// FIN set: every message the generator sends is one frame.
const FIN: u8 = 0x80;
/// A client's frames must be masked; the key is all zeros, so the payload goes as it is
/// (the server cannot tell, and the benchmark's bytes are no secret).
const MASK_BIT: u8 = 0x80;
const ZERO_MASK: [u8; 4] = [0; 4];

/// The upgrade request for `/ws` on `host` (no `Origin`: not a browser page).
pub fn upgrade_request(host: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Turns `out[start..]`, one line ending in `\n`, into one masked text message.
pub fn frame_tail(out: &mut Vec<u8>, start: usize) {
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    let length = out.len() - start;
    let mut header = [0u8; 14];
    let used = header_bytes(&mut header, OPCODE_TEXT, length);
    out.splice(start..start, header[..used].iter().copied());
}

/// Appends one masked frame of `opcode` carrying `payload`.
fn append_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let mut header = [0u8; 14];
    let used = header_bytes(&mut header, opcode, payload.len());
    out.extend_from_slice(&header[..used]);
    out.extend_from_slice(payload);
}

/// Writes a masked frame header for `length` payload bytes; returns its size.
fn header_bytes(header: &mut [u8; 14], opcode: u8, length: usize) -> usize {
    header[0] = FIN | opcode;
    let at = if length < 126 {
        header[1] = MASK_BIT | length as u8;
        2
    } else if length <= usize::from(u16::MAX) {
        header[1] = MASK_BIT | 126;
        header[2..4].copy_from_slice(&(length as u16).to_be_bytes());
        4
    } else {
        header[1] = MASK_BIT | 127;
        header[2..10].copy_from_slice(&(length as u64).to_be_bytes());
        10
    };
    header[at..at + 4].copy_from_slice(&ZERO_MASK);
    at + 4
}

/// One server frame's shape: opcode, header bytes, payload bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub opcode: u8,
    pub header: usize,
    pub payload: usize,
}

/// The head of the frame at the start of `buf`, once the whole frame is there.
/// `Err` for what pbchatd never sends (a masked or fragmented frame).
pub fn complete_frame(buf: &[u8]) -> Result<Option<FrameHead>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] & FIN == 0 || buf[1] & MASK_BIT != 0 {
        return Err(format!(
            "unexpected WebSocket frame {:#04x} {:#04x}",
            buf[0], buf[1]
        ));
    }
    let (header, payload) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
        127 if buf.len() >= 10 => {
            let bytes: [u8; 8] = buf[2..10].try_into().expect("eight bytes");
            (10, u64::from_be_bytes(bytes) as usize)
        }
        126 | 127 => return Ok(None),
        short => (2, usize::from(short)),
    };
    let head = FrameHead {
        opcode: buf[0] & 0x0f,
        header,
        payload,
    };
    Ok((buf.len() - header >= payload).then_some(head))
}

/// What [`unframe`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unframed {
    /// `buf[..lines_end]` holds whole lines; `buf[lines_end..filled]` a cut frame.
    pub lines_end: usize,
    pub filled: usize,
    /// The server sent a close frame.
    pub closed: bool,
}

/// Rewrites the complete frames in `buf[from..filled]` in place: each text message becomes
/// its payload and a `\n`, each ping queues a pong on `out`; a cut frame moves up behind the
/// lines. A header is at least two bytes and a line adds one, so the lines never overtake
/// the frames still to be read.
pub fn unframe(
    buf: &mut [u8],
    from: usize,
    filled: usize,
    out: &mut Vec<u8>,
) -> Result<Unframed, String> {
    let (mut read, mut write) = (from, from);
    let mut closed = false;
    while let Some(head) = complete_frame(&buf[read..filled])? {
        let payload = read + head.header..read + head.header + head.payload;
        match head.opcode {
            OPCODE_TEXT => {
                buf.copy_within(payload.clone(), write);
                write += head.payload;
                buf[write] = b'\n';
                write += 1;
            }
            OPCODE_PING => append_frame(out, OPCODE_PONG, &buf[payload.clone()]),
            OPCODE_CLOSE => closed = true,
            OPCODE_PONG => {}
            other => return Err(format!("unexpected WebSocket opcode {other:#x}")),
        }
        read = payload.end;
    }
    buf.copy_within(read..filled, write);
    Ok(Unframed {
        lines_end: write,
        filled: write + (filled - read),
        closed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (unmasked), as pbchatd's tungstenite sends it.
    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![FIN | opcode];
        if payload.len() < 126 {
            out.push(payload.len() as u8);
        } else {
            out.push(126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn text_messages_become_lines_and_a_cut_frame_waits() {
        let long = vec![b'y'; 300];
        let mut stream = server_frame(OPCODE_TEXT, b"{\"a\":1}");
        stream.extend(server_frame(OPCODE_PING, b"p"));
        stream.extend(server_frame(OPCODE_TEXT, &long));
        let cut = server_frame(OPCODE_TEXT, b"{\"b\":2}");
        stream.extend_from_slice(&cut[..4]);
        let filled = stream.len();
        let mut out = Vec::new();
        let done = unframe(&mut stream, 0, filled, &mut out).unwrap();
        let mut expected = b"{\"a\":1}\n".to_vec();
        expected.extend_from_slice(&long);
        expected.push(b'\n');
        assert_eq!(&stream[..done.lines_end], &expected[..]);
        assert_eq!(&stream[done.lines_end..done.filled], &cut[..4]);
        assert!(!done.closed);
        // The pong: masked, zero key, same payload.
        assert_eq!(out, [FIN | OPCODE_PONG, MASK_BIT | 1, 0, 0, 0, 0, b'p']);
    }

    #[test]
    fn a_sent_line_is_one_masked_text_message_at_every_length_class() {
        for length in [10usize, 125, 126, 300, 70_000] {
            let mut out = b"before".to_vec();
            out.extend(std::iter::repeat_n(b'z', length));
            out.push(b'\n');
            frame_tail(&mut out, 6);
            let frame = &out[6..];
            let header = match length {
                0..=125 => 6,
                126..=65535 => 8,
                _ => 14,
            };
            assert_eq!(frame.len(), header + length, "{length}");
            assert_eq!(frame[0], FIN | OPCODE_TEXT);
            assert_eq!(frame[1] & MASK_BIT, MASK_BIT);
            assert_eq!(&frame[header - 4..header], &ZERO_MASK);
            assert!(frame[header..].iter().all(|&b| b == b'z'));
        }
    }

    #[test]
    fn masked_or_fragmented_server_frames_are_refused() {
        assert!(complete_frame(&[OPCODE_TEXT, 0]).is_err());
        assert!(complete_frame(&[FIN | OPCODE_TEXT, MASK_BIT]).is_err());
        assert_eq!(complete_frame(&[FIN | OPCODE_TEXT, 126, 1]), Ok(None));
    }
}
