//! Replication link codec: the frames the primary and the backup exchange over their TCP link,
//! to bytes and back.
//!
//! Pure: byte slices in, [`PeerFrame`]s out, and the reverse. It must not touch sockets, clocks
//! or keys: the daemon reads and writes the socket, the core decides what a frame means, and
//! the MACs are computed by the caller over [`handshake_transcript`]. The codec checks shape
//! only (lengths, UTF-8, known kinds), never protocol rules such as "entries are consecutive".
//!
//! Wire format: each frame is `len: u32 | kind: u8 | body`, where `len` counts the bytes after
//! itself. Integers are little-endian; a string is `len: u32 | UTF-8 bytes`; a list is
//! `count: u32 | items`; an entry is `epoch: u64 | seq: u64 | payload len: u32 | payload` with
//! the payload of [`Entry::encode_payload`]. A partial frame is a normal state: [`FrameReader`]
//! keeps it until the rest arrives.

use thiserror::Error;

use crate::entry::{Entry, PayloadError};
use crate::log::MAX_RECORD_BYTES;

/// Sent in `Hello`; a primary refuses a backup that speaks another version.
pub const REPLICATION_VERSION: u16 = 1;

/// Largest `len` a frame may declare. Far above any batch the sender builds (see
/// [`MAX_ENTRIES_BYTES_PER_FRAME`]), so only a corrupt or hostile length reaches it, and the
/// reader refuses such a length before buffering what it claims.
pub const MAX_FRAME_BYTES: usize = 8 << 20;

/// Budget the primary fills an `Entries` or `Resubmit` batch to, counted with
/// [`entry_wire_bytes`]: add entries while the batch is below it, always at least one. The last
/// entry may overshoot by one entry, which the compile-time check below keeps inside
/// [`MAX_FRAME_BYTES`]. 1 MiB keeps one batch's fsync and ack round short while still
/// amortising the per-frame cost over thousands of chat messages.
pub const MAX_ENTRIES_BYTES_PER_FRAME: usize = 1 << 20;

/// Largest slice a caller should hand to [`FrameReader::push`] at once (its socket read size).
/// The reader's buffer is bounded by one frame plus one such chunk.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Length of the handshake nonces.
pub const NONCE_BYTES: usize = 16;
/// Length of the handshake MACs (HMAC-SHA256).
pub const MAC_BYTES: usize = 32;

/// The `len` field before every frame.
const LEN_BYTES: usize = 4;
/// Bytes of an entry before its payload: epoch, seq, payload len.
const ENTRY_HEADER_BYTES: usize = 8 + 8 + 4;
/// Smallest payload [`Entry::encode_payload`] writes: version, ts_ms, orig flag and five empty
/// strings. Used only to refuse entry counts the frame cannot possibly hold.
const ENTRY_PAYLOAD_MIN_BYTES: usize = 1 + 8 + 1 + 5 * 4;
/// Entries allocated up front for a list, whatever its count says; a longer list grows as its
/// entries actually decode, so a count alone never decides an allocation's size.
const ENTRIES_PREALLOCATED_MAX: usize = 1024;
/// Kind, commit_seq and entry count of an `Entries` frame, the largest fixed part of a batch.
const ENTRIES_FRAME_FIXED_BYTES: usize = 1 + 8 + 4;
/// Every frame the reader may hold at once plus one pushed chunk.
const MAX_BUFFERED_BYTES: usize = LEN_BYTES + MAX_FRAME_BYTES + READ_CHUNK_BYTES;
/// The reader moves its unread bytes to the front only once at least this much has been read,
/// and at least as much as is left, so compaction costs O(1) per byte on average and nothing
/// per small frame.
const COMPACT_MIN_BYTES: usize = 64 * 1024;

// A full batch plus one overshooting entry of the largest size the log accepts fits a frame.
const _: () = assert!(
    ENTRIES_FRAME_FIXED_BYTES + MAX_ENTRIES_BYTES_PER_FRAME + ENTRY_HEADER_BYTES + MAX_RECORD_BYTES
        <= MAX_FRAME_BYTES
);

// Kind bytes. 0 is never used, so a zeroed buffer is not a frame.
const KIND_HELLO: u8 = 1;
const KIND_WELCOME: u8 = 2;
const KIND_AUTH: u8 = 3;
const KIND_REFUSE: u8 = 4;
const KIND_TRUNCATE: u8 = 5;
const KIND_RESTART: u8 = 6;
const KIND_ENTRIES: u8 = 7;
const KIND_ACK: u8 = 8;
const KIND_BEAT: u8 = 9;
const KIND_HANDOVER: u8 = 10;
const KIND_TOOK_OVER: u8 = 11;
const KIND_RESUBMIT: u8 = 12;
const KIND_RESUBMIT_DONE: u8 = 13;

/// One frame of the replication link. Directions are a protocol rule the core enforces; the
/// codec encodes and decodes every variant either way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerFrame {
    /// Backup -> primary, first frame after connecting.
    Hello {
        version: u16,
        node_id: String,
        epoch: u64,
        last_seq: u64,
        first_seq: u64,
        /// (epoch, first seq) spans of the backup's log.
        epochs: Vec<(u64, u64)>,
        nonce: [u8; NONCE_BYTES],
        /// Distinguishes restarts of the same node.
        boot: u64,
    },
    /// Primary -> backup: the primary's side of the handshake. `mac` covers
    /// [`handshake_transcript`] with [`Transcript::Welcome`], computed by the caller.
    Welcome {
        node_id: String,
        epoch: u64,
        epochs: Vec<(u64, u64)>,
        head: u64,
        nonce: [u8; NONCE_BYTES],
        key_id: u32,
        mac: [u8; MAC_BYTES],
    },
    /// Backup -> primary: proves the backup holds the key too. `mac` covers
    /// [`handshake_transcript`] with [`Transcript::Auth`].
    Auth { key_id: u32, mac: [u8; MAC_BYTES] },
    /// Either side: the link is refused; `reason` is for people (e.g. "epoch 3 is older than
    /// ours (4)").
    Refuse { reason: String },
    /// Primary -> backup: drop every entry after `after_seq` (where the logs part), then expect
    /// entries from after_seq+1.
    Truncate { after_seq: u64 },
    /// Primary -> backup: the primary's log is empty below `first_seq`: restart the backup's log
    /// there (it has nothing the primary retains).
    Restart { first_seq: u64 },
    /// Primary -> backup: consecutive log entries, and the primary's committed head.
    Entries {
        commit_seq: u64,
        entries: Vec<Entry>,
    },
    /// Backup -> primary: everything up to `durable_seq` is durable on the backup.
    Ack { durable_seq: u64 },
    /// Either side, when it has nothing else to say for a while: a sign of life carrying its
    /// view.
    Beat { epoch: u64, head: u64 },
    /// Primary -> backup: planned hand-over; take over at once with an epoch above `epoch`.
    Handover { epoch: u64 },
    /// Backup -> primary: it took over (reply to Handover).
    TookOver { epoch: u64 },
    /// Backup -> primary: messages only this node had (from a history that lost), to be
    /// re-committed.
    Resubmit { entries: Vec<Entry> },
    /// Primary -> backup: every resubmitted entry up to and including the one with orig
    /// (epoch, seq) is committed or was a duplicate.
    ResubmitDone { epoch: u64, seq: u64 },
}

impl PeerFrame {
    /// The variant's name, for logs and error messages.
    pub fn name(&self) -> &'static str {
        kind_name(self.kind()).expect("every variant has a kind")
    }

    fn kind(&self) -> u8 {
        match self {
            PeerFrame::Hello { .. } => KIND_HELLO,
            PeerFrame::Welcome { .. } => KIND_WELCOME,
            PeerFrame::Auth { .. } => KIND_AUTH,
            PeerFrame::Refuse { .. } => KIND_REFUSE,
            PeerFrame::Truncate { .. } => KIND_TRUNCATE,
            PeerFrame::Restart { .. } => KIND_RESTART,
            PeerFrame::Entries { .. } => KIND_ENTRIES,
            PeerFrame::Ack { .. } => KIND_ACK,
            PeerFrame::Beat { .. } => KIND_BEAT,
            PeerFrame::Handover { .. } => KIND_HANDOVER,
            PeerFrame::TookOver { .. } => KIND_TOOK_OVER,
            PeerFrame::Resubmit { .. } => KIND_RESUBMIT,
            PeerFrame::ResubmitDone { .. } => KIND_RESUBMIT_DONE,
        }
    }
}

fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        KIND_HELLO => "Hello",
        KIND_WELCOME => "Welcome",
        KIND_AUTH => "Auth",
        KIND_REFUSE => "Refuse",
        KIND_TRUNCATE => "Truncate",
        KIND_RESTART => "Restart",
        KIND_ENTRIES => "Entries",
        KIND_ACK => "Ack",
        KIND_BEAT => "Beat",
        KIND_HANDOVER => "Handover",
        KIND_TOOK_OVER => "TookOver",
        KIND_RESUBMIT => "Resubmit",
        KIND_RESUBMIT_DONE => "ResubmitDone",
        _ => return None,
    })
}

/// Why bytes from the peer are not a frame. Any of these ends the link; the message names the
/// frame and the field so the log line says what the peer got wrong.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeerFrameError {
    #[error("frame of {len} bytes is over the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("empty frame: no kind byte")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("{frame} frame: truncated field {field}")]
    Truncated {
        frame: &'static str,
        field: &'static str,
    },
    #[error(
        "{frame} frame: {field} claims {count} items, more than its remaining {remaining_bytes} \
         bytes can hold"
    )]
    Count {
        frame: &'static str,
        field: &'static str,
        count: u32,
        remaining_bytes: usize,
    },
    #[error("{frame} frame: field {field} is not valid UTF-8")]
    Utf8 {
        frame: &'static str,
        field: &'static str,
    },
    #[error("{frame} frame: {count} trailing bytes")]
    Trailing { frame: &'static str, count: usize },
    #[error("{frame} frame: entry {index}: {source}")]
    Entry {
        frame: &'static str,
        index: usize,
        source: PayloadError,
    },
    /// A `Hello` of another version whose body does not parse as ours: reported instead of the
    /// parse error, which would only be a symptom.
    #[error("Hello frame: replication version {got} is not ours ({ours})")]
    Version { got: u16, ours: u16 },
}

/// Encoded size of `entry` inside an `Entries` or `Resubmit` frame, for sizing batches against
/// [`MAX_ENTRIES_BYTES_PER_FRAME`] without encoding them.
pub fn entry_wire_bytes(entry: &Entry) -> usize {
    // Mirrors Entry::encode_payload; `entry_wire_bytes_matches_the_encoding` keeps them in step.
    let orig_bytes = if entry.orig.is_some() { 16 } else { 0 };
    let strings_bytes: usize = [
        &entry.room,
        &entry.from,
        &entry.session,
        &entry.id,
        &entry.body,
    ]
    .iter()
    .map(|field| 4 + field.len())
    .sum();
    ENTRY_HEADER_BYTES + 1 + 8 + 1 + orig_bytes + strings_bytes
}

/// Appends one frame to `out`.
///
/// Panics if the frame exceeds [`MAX_FRAME_BYTES`]: the sender sizes batches with
/// [`entry_wire_bytes`], so an oversized frame is a bug, and the peer would refuse it anyway.
pub fn encode(frame: &PeerFrame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_BYTES]);
    out.push(frame.kind());
    match frame {
        PeerFrame::Hello {
            version,
            node_id,
            epoch,
            last_seq,
            first_seq,
            epochs,
            nonce,
            boot,
        } => {
            out.extend_from_slice(&version.to_le_bytes());
            put_string(out, node_id);
            put_u64(out, *epoch);
            put_u64(out, *last_seq);
            put_u64(out, *first_seq);
            put_spans(out, epochs);
            out.extend_from_slice(nonce);
            put_u64(out, *boot);
        }
        PeerFrame::Welcome {
            node_id,
            epoch,
            epochs,
            head,
            nonce,
            key_id,
            mac,
        } => {
            put_welcome_fields(out, node_id, *epoch, epochs, *head, nonce, *key_id);
            out.extend_from_slice(mac);
        }
        PeerFrame::Auth { key_id, mac } => {
            put_u32(out, *key_id);
            out.extend_from_slice(mac);
        }
        PeerFrame::Refuse { reason } => put_string(out, reason),
        PeerFrame::Truncate { after_seq } => put_u64(out, *after_seq),
        PeerFrame::Restart { first_seq } => put_u64(out, *first_seq),
        PeerFrame::Entries {
            commit_seq,
            entries,
        } => {
            put_u64(out, *commit_seq);
            put_entries(out, entries);
        }
        PeerFrame::Ack { durable_seq } => put_u64(out, *durable_seq),
        PeerFrame::Beat { epoch, head } => {
            put_u64(out, *epoch);
            put_u64(out, *head);
        }
        PeerFrame::Handover { epoch } | PeerFrame::TookOver { epoch } => put_u64(out, *epoch),
        PeerFrame::Resubmit { entries } => put_entries(out, entries),
        PeerFrame::ResubmitDone { epoch, seq } => {
            put_u64(out, *epoch);
            put_u64(out, *seq);
        }
    }
    let len = out.len() - start - LEN_BYTES;
    assert!(
        len <= MAX_FRAME_BYTES,
        "{} frame of {len} bytes is over the {MAX_FRAME_BYTES}-byte limit",
        frame.name()
    );
    out[start..start + LEN_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
}

/// Which MAC a transcript is for. They differ in a leading label so that a backup cannot pass
/// the handshake by echoing the primary's Welcome MAC back as its Auth MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transcript {
    /// The primary's `Welcome.mac`.
    Welcome,
    /// The backup's `Auth.mac`.
    Auth,
}

/// The bytes a handshake MAC covers, so both sides compute it identically: a label naming
/// `purpose`, the `Hello` frame as encoded, then every `Welcome` field but `mac` (whose value is
/// ignored, so the primary may build the Welcome with a zero MAC, take the transcript, and fill
/// the MAC in). Both nonces are inside, so a transcript is never reused across connections.
///
/// Panics unless `hello` is a `Hello` and `welcome` a `Welcome`: anything else is a bug in the
/// caller, not something the peer can cause.
pub fn handshake_transcript(
    purpose: Transcript,
    hello: &PeerFrame,
    welcome: &PeerFrame,
) -> Vec<u8> {
    assert!(
        matches!(hello, PeerFrame::Hello { .. }),
        "handshake transcript needs a Hello, got {}",
        hello.name()
    );
    let PeerFrame::Welcome {
        node_id,
        epoch,
        epochs,
        head,
        nonce,
        key_id,
        mac: _,
    } = welcome
    else {
        panic!(
            "handshake transcript needs a Welcome, got {}",
            welcome.name()
        );
    };
    let label: &[u8] = match purpose {
        Transcript::Welcome => b"pbchat replication welcome\0",
        Transcript::Auth => b"pbchat replication auth\0",
    };
    let mut out = label.to_vec();
    encode(hello, &mut out);
    put_welcome_fields(&mut out, node_id, *epoch, epochs, *head, nonce, *key_id);
    out
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Writes a list count; a count beyond u32 could never fit a frame, so it is a bug.
fn put_count(out: &mut Vec<u8>, count: usize) {
    put_u32(out, u32::try_from(count).expect("list fits a frame"));
}

fn put_string(out: &mut Vec<u8>, value: &str) {
    put_count(out, value.len());
    out.extend_from_slice(value.as_bytes());
}

fn put_spans(out: &mut Vec<u8>, spans: &[(u64, u64)]) {
    put_count(out, spans.len());
    for &(epoch, first_seq) in spans {
        put_u64(out, epoch);
        put_u64(out, first_seq);
    }
}

fn put_entries(out: &mut Vec<u8>, entries: &[Entry]) {
    put_count(out, entries.len());
    for entry in entries {
        put_u64(out, entry.epoch);
        put_u64(out, entry.seq);
        let len_at = out.len();
        put_u32(out, 0);
        entry.encode_payload(out);
        let payload_len = out.len() - len_at - 4;
        out[len_at..len_at + 4].copy_from_slice(
            &u32::try_from(payload_len)
                .expect("payload fits a frame")
                .to_le_bytes(),
        );
    }
}

/// The Welcome fields before `mac`, shared by the frame and the transcript so they cannot
/// drift apart.
fn put_welcome_fields(
    out: &mut Vec<u8>,
    node_id: &str,
    epoch: u64,
    epochs: &[(u64, u64)],
    head: u64,
    nonce: &[u8; NONCE_BYTES],
    key_id: u32,
) {
    put_string(out, node_id);
    put_u64(out, epoch);
    put_spans(out, epochs);
    put_u64(out, head);
    out.extend_from_slice(nonce);
    put_u32(out, key_id);
}

/// Incremental decoder: feed bytes as they arrive, take complete frames out. A partial frame is
/// normal.
///
/// Contract: after each [`push`](Self::push), call [`next_frame`](Self::next_frame) until it
/// returns `Ok(None)` (or an error, after which the link is closed and the reader dropped),
/// and push at most [`READ_CHUNK_BYTES`] at a time. The buffer then never holds more than one
/// frame plus one chunk; `push` asserts that bound.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Bytes received; `buf[..read_pos]` are frames already returned, `buf[read_pos..]` the
    /// start of the next ones. Invariant: `buf.len() <= MAX_BUFFERED_BYTES`, and so is its
    /// capacity.
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    read_pos: usize,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the link.
    pub fn push(&mut self, bytes: &[u8]) {
        let unread = self.buf.len() - self.read_pos;
        if unread == 0 {
            // Everything was read: starting over is free.
            self.buf.clear();
            self.read_pos = 0;
        } else if self.read_pos >= COMPACT_MIN_BYTES.max(unread)
            || self.buf.len() + bytes.len() > MAX_BUFFERED_BYTES
        {
            self.buf.drain(..self.read_pos);
            self.read_pos = 0;
        }
        let needed = self.buf.len() + bytes.len();
        assert!(
            needed <= MAX_BUFFERED_BYTES,
            "replication reader would buffer {needed} bytes, over {MAX_BUFFERED_BYTES}: \
             the caller pushed without draining frames"
        );
        if needed > self.buf.capacity() {
            // Grow by doubling as Vec would, but never past the bound.
            let target = needed.max(self.buf.capacity() * 2).min(MAX_BUFFERED_BYTES);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Next complete frame; `Ok(None)` when more bytes are needed; `Err` on a malformed or
    /// oversized frame (the link is then closed by the caller). An oversized length is refused
    /// as soon as its 4 bytes are in, before the body it claims is buffered.
    pub fn next_frame(&mut self) -> Result<Option<PeerFrame>, PeerFrameError> {
        // On error read_pos stays put: the link is closing, and a retry reports the same error.
        let Some((frame, frame_bytes)) = decode_prefix(&self.buf[self.read_pos..])? else {
            return Ok(None);
        };
        self.read_pos += frame_bytes;
        Ok(Some(frame))
    }

    /// Bytes pushed but not yet returned as frames (a partial frame, or frames not yet taken).
    pub fn unread_bytes(&self) -> usize {
        self.buf.len() - self.read_pos
    }
}

/// Decodes the frame at the start of `bytes`, returning it with the bytes it took; `Ok(None)`
/// if `bytes` holds only part of it. For bytes already in memory (a file of frames); a link
/// uses [`FrameReader`]. An oversized length is refused from its 4 bytes alone.
pub fn decode_prefix(bytes: &[u8]) -> Result<Option<(PeerFrame, usize)>, PeerFrameError> {
    let Some(len_bytes) = bytes.first_chunk::<LEN_BYTES>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*len_bytes) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(PeerFrameError::TooLarge {
            len,
            limit: MAX_FRAME_BYTES,
        });
    }
    let Some(body) = bytes.get(LEN_BYTES..LEN_BYTES + len) else {
        return Ok(None);
    };
    Ok(Some((decode_frame(body)?, LEN_BYTES + len)))
}

/// Decodes one frame's kind and body (everything after `len`).
fn decode_frame(bytes: &[u8]) -> Result<PeerFrame, PeerFrameError> {
    let (&kind, body) = bytes.split_first().ok_or(PeerFrameError::Empty)?;
    let frame = kind_name(kind).ok_or(PeerFrameError::UnknownKind(kind))?;
    let mut body_reader = BodyReader {
        frame,
        bytes: body,
        pos: 0,
    };
    let decoded = decode_body(kind, &mut body_reader).and_then(|decoded| {
        body_reader.finish()?;
        Ok(decoded)
    });
    match decoded {
        Err(_) if kind == KIND_HELLO => {
            // A Hello from another version may be laid out differently; its version comes
            // first so that this is what gets reported.
            match body.first_chunk::<2>().map(|raw| u16::from_le_bytes(*raw)) {
                Some(got) if got != REPLICATION_VERSION => Err(PeerFrameError::Version {
                    got,
                    ours: REPLICATION_VERSION,
                }),
                _ => decoded,
            }
        }
        _ => decoded,
    }
}

fn decode_body(kind: u8, r: &mut BodyReader<'_>) -> Result<PeerFrame, PeerFrameError> {
    Ok(match kind {
        KIND_HELLO => PeerFrame::Hello {
            version: r.u16("version")?,
            node_id: r.string("node_id")?,
            epoch: r.u64("epoch")?,
            last_seq: r.u64("last_seq")?,
            first_seq: r.u64("first_seq")?,
            epochs: r.spans("epochs")?,
            nonce: r.array("nonce")?,
            boot: r.u64("boot")?,
        },
        KIND_WELCOME => PeerFrame::Welcome {
            node_id: r.string("node_id")?,
            epoch: r.u64("epoch")?,
            epochs: r.spans("epochs")?,
            head: r.u64("head")?,
            nonce: r.array("nonce")?,
            key_id: r.u32("key_id")?,
            mac: r.array("mac")?,
        },
        KIND_AUTH => PeerFrame::Auth {
            key_id: r.u32("key_id")?,
            mac: r.array("mac")?,
        },
        KIND_REFUSE => PeerFrame::Refuse {
            reason: r.string("reason")?,
        },
        KIND_TRUNCATE => PeerFrame::Truncate {
            after_seq: r.u64("after_seq")?,
        },
        KIND_RESTART => PeerFrame::Restart {
            first_seq: r.u64("first_seq")?,
        },
        KIND_ENTRIES => PeerFrame::Entries {
            commit_seq: r.u64("commit_seq")?,
            entries: r.entries()?,
        },
        KIND_ACK => PeerFrame::Ack {
            durable_seq: r.u64("durable_seq")?,
        },
        KIND_BEAT => PeerFrame::Beat {
            epoch: r.u64("epoch")?,
            head: r.u64("head")?,
        },
        KIND_HANDOVER => PeerFrame::Handover {
            epoch: r.u64("epoch")?,
        },
        KIND_TOOK_OVER => PeerFrame::TookOver {
            epoch: r.u64("epoch")?,
        },
        KIND_RESUBMIT => PeerFrame::Resubmit {
            entries: r.entries()?,
        },
        KIND_RESUBMIT_DONE => PeerFrame::ResubmitDone {
            epoch: r.u64("epoch")?,
            seq: r.u64("seq")?,
        },
        _ => unreachable!("kind {kind} was checked by kind_name"),
    })
}

/// Reads fields off one frame's body. Every length is checked against the bytes left before
/// anything is allocated, so a hostile count costs at most the frame it came in.
struct BodyReader<'a> {
    /// Frame name for errors.
    frame: &'static str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> BodyReader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], PeerFrameError> {
        if n > self.remaining() {
            return Err(PeerFrameError::Truncated {
                frame: self.frame,
                field,
            });
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], PeerFrameError> {
        Ok(self.take(N, field)?.try_into().expect("took N bytes"))
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, PeerFrameError> {
        self.array(field).map(u16::from_le_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, PeerFrameError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, PeerFrameError> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn string(&mut self, field: &'static str) -> Result<String, PeerFrameError> {
        let len = self.u32(field)? as usize;
        let raw = self.take(len, field)?;
        let text = std::str::from_utf8(raw).map_err(|_| PeerFrameError::Utf8 {
            frame: self.frame,
            field,
        })?;
        Ok(text.to_owned())
    }

    /// A list count, refused if `item_min_bytes`-sized items could not fit what is left.
    fn count(
        &mut self,
        field: &'static str,
        item_min_bytes: usize,
    ) -> Result<usize, PeerFrameError> {
        let count = self.u32(field)?;
        let remaining_bytes = self.remaining();
        if count as usize > remaining_bytes / item_min_bytes {
            return Err(PeerFrameError::Count {
                frame: self.frame,
                field,
                count,
                remaining_bytes,
            });
        }
        Ok(count as usize)
    }

    fn spans(&mut self, field: &'static str) -> Result<Vec<(u64, u64)>, PeerFrameError> {
        let count = self.count(field, 16)?;
        // Sixteen bytes per span on the wire and in memory: bounded by the frame.
        let mut spans = Vec::with_capacity(count);
        for _ in 0..count {
            spans.push((self.u64(field)?, self.u64(field)?));
        }
        Ok(spans)
    }

    fn entries(&mut self) -> Result<Vec<Entry>, PeerFrameError> {
        let count = self.count("entries", ENTRY_HEADER_BYTES + ENTRY_PAYLOAD_MIN_BYTES)?;
        let mut entries = Vec::with_capacity(count.min(ENTRIES_PREALLOCATED_MAX));
        for index in 0..count {
            let epoch = self.u64("entry epoch")?;
            let seq = self.u64("entry seq")?;
            let len = self.u32("entry payload length")? as usize;
            let payload = self.take(len, "entry payload")?;
            let entry = Entry::decode_payload(epoch, seq, payload).map_err(|source| {
                PeerFrameError::Entry {
                    frame: self.frame,
                    index,
                    source,
                }
            })?;
            entries.push(entry);
        }
        Ok(entries)
    }

    fn finish(&self) -> Result<(), PeerFrameError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(PeerFrameError::Trailing {
                frame: self.frame,
                count,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(seq: u64, orig: Option<(u64, u64)>) -> Entry {
        Entry {
            epoch: 4,
            seq,
            ts_ms: 1_764_084_000_123,
            room: "general".into(),
            from: "alice".into(),
            session: "3f2a9c".into(),
            id: format!("m-{seq}"),
            body: "hello ✓ — 你好".into(),
            orig,
        }
    }

    fn hello() -> PeerFrame {
        PeerFrame::Hello {
            version: REPLICATION_VERSION,
            node_id: "node-b".into(),
            epoch: 3,
            last_seq: 1234,
            first_seq: 17,
            epochs: vec![(1, 1), (2, 800), (3, 1200)],
            nonce: [7; NONCE_BYTES],
            boot: 0xdead_beef,
        }
    }

    fn welcome() -> PeerFrame {
        PeerFrame::Welcome {
            node_id: "node-a".into(),
            epoch: 4,
            epochs: vec![(1, 1), (4, 1201)],
            head: 1300,
            nonce: [9; NONCE_BYTES],
            key_id: 2,
            mac: [0xab; MAC_BYTES],
        }
    }

    fn every_variant() -> Vec<PeerFrame> {
        vec![
            hello(),
            PeerFrame::Hello {
                version: REPLICATION_VERSION,
                node_id: String::new(),
                epoch: 0,
                last_seq: 0,
                first_seq: 0,
                epochs: vec![],
                nonce: [0; NONCE_BYTES],
                boot: u64::MAX,
            },
            welcome(),
            PeerFrame::Auth {
                key_id: u32::MAX,
                mac: [0x5a; MAC_BYTES],
            },
            PeerFrame::Refuse {
                reason: "epoch 3 is older than ours (4)".into(),
            },
            PeerFrame::Truncate { after_seq: 1200 },
            PeerFrame::Restart { first_seq: 5000 },
            PeerFrame::Entries {
                commit_seq: 1299,
                entries: vec![entry(1299, None), entry(1300, Some((3, 1201)))],
            },
            PeerFrame::Entries {
                commit_seq: 0,
                entries: vec![],
            },
            PeerFrame::Ack { durable_seq: 1300 },
            PeerFrame::Beat {
                epoch: 4,
                head: 1300,
            },
            PeerFrame::Handover { epoch: 4 },
            PeerFrame::TookOver { epoch: 5 },
            PeerFrame::Resubmit {
                entries: vec![entry(1201, Some((3, 1201)))],
            },
            PeerFrame::ResubmitDone {
                epoch: 3,
                seq: 1201,
            },
        ]
    }

    fn encode_all(frames: &[PeerFrame]) -> Vec<u8> {
        let mut out = Vec::new();
        for frame in frames {
            encode(frame, &mut out);
        }
        out
    }

    /// Feeds `stream` in the given chunk sizes (cycled), draining after each push as the
    /// contract asks; stops at the first error.
    fn decode_in_chunks(
        stream: &[u8],
        chunk_sizes: &[usize],
    ) -> Result<Vec<PeerFrame>, PeerFrameError> {
        let mut reader = FrameReader::new();
        let mut frames = Vec::new();
        let mut pos = 0;
        for &size in chunk_sizes.iter().cycle() {
            if pos == stream.len() {
                break;
            }
            let end = (pos + size.max(1)).min(stream.len());
            reader.push(&stream[pos..end]);
            pos = end;
            while let Some(frame) = reader.next_frame()? {
                frames.push(frame);
            }
        }
        Ok(frames)
    }

    #[test]
    fn every_variant_round_trips() {
        for frame in every_variant() {
            let mut bytes = Vec::new();
            encode(&frame, &mut bytes);
            let mut reader = FrameReader::new();
            reader.push(&bytes);
            assert_eq!(
                reader.next_frame(),
                Ok(Some(frame.clone())),
                "{}",
                frame.name()
            );
            assert_eq!(reader.next_frame(), Ok(None));
            assert_eq!(reader.unread_bytes(), 0);
        }
    }

    #[test]
    fn encode_appends_and_writes_the_documented_layout() {
        let mut out = vec![0xff];
        encode(
            &PeerFrame::Ack {
                durable_seq: 0x0102,
            },
            &mut out,
        );
        let mut expected = vec![0xff, 9, 0, 0, 0, KIND_ACK];
        expected.extend_from_slice(&0x0102u64.to_le_bytes());
        assert_eq!(out, expected);
    }

    #[test]
    fn decode_prefix_walks_a_buffer_of_frames() {
        let frames = every_variant();
        let stream = encode_all(&frames);
        let mut pos = 0;
        let mut decoded = Vec::new();
        while let Some((frame, frame_bytes)) = decode_prefix(&stream[pos..]).unwrap() {
            decoded.push(frame);
            pos += frame_bytes;
        }
        assert_eq!(pos, stream.len());
        assert_eq!(decoded, frames);
        assert_eq!(
            decode_prefix(&stream[..stream.len() - 1])
                .unwrap()
                .unwrap()
                .0,
            frames[0]
        );
    }

    #[test]
    fn bytes_fed_one_at_a_time_yield_the_same_frames() {
        let frames = every_variant();
        let stream = encode_all(&frames);
        assert_eq!(decode_in_chunks(&stream, &[1]), Ok(frames));
    }

    #[test]
    fn every_truncation_of_a_stream_needs_more_bytes_until_complete() {
        let frames = every_variant();
        let mut ends = Vec::new();
        let mut stream = Vec::new();
        for frame in &frames {
            encode(frame, &mut stream);
            ends.push(stream.len());
        }
        for cut in 0..=stream.len() {
            let mut reader = FrameReader::new();
            reader.push(&stream[..cut]);
            let complete = ends.iter().filter(|&&end| end <= cut).count();
            for frame in &frames[..complete] {
                assert_eq!(reader.next_frame(), Ok(Some(frame.clone())), "cut {cut}");
            }
            assert_eq!(reader.next_frame(), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_body_is_buffered() {
        let mut reader = FrameReader::new();
        reader.push(&(MAX_FRAME_BYTES as u32 + 1).to_le_bytes());
        assert_eq!(
            reader.next_frame(),
            Err(PeerFrameError::TooLarge {
                len: MAX_FRAME_BYTES + 1,
                limit: MAX_FRAME_BYTES
            })
        );
        let mut reader = FrameReader::new();
        reader.push(&u32::MAX.to_le_bytes());
        assert!(matches!(
            reader.next_frame(),
            Err(PeerFrameError::TooLarge { .. })
        ));
        // Exactly the limit is allowed, and waits for its body.
        let mut reader = FrameReader::new();
        reader.push(&(MAX_FRAME_BYTES as u32).to_le_bytes());
        reader.push(&[KIND_REFUSE]);
        assert_eq!(reader.next_frame(), Ok(None));
    }

    #[test]
    fn a_hostile_count_is_refused_without_allocating_it() {
        // An Entries frame of 13 bytes claiming u32::MAX entries.
        let mut body = vec![KIND_ENTRIES];
        body.extend_from_slice(&7u64.to_le_bytes());
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_frame(&body),
            Err(PeerFrameError::Count {
                frame: "Entries",
                field: "entries",
                count: u32::MAX,
                remaining_bytes: 0
            })
        );
        // A Refuse whose string claims 4 GiB.
        let mut body = vec![KIND_REFUSE];
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        body.extend_from_slice(b"short");
        assert_eq!(
            decode_frame(&body),
            Err(PeerFrameError::Truncated {
                frame: "Refuse",
                field: "reason"
            })
        );
    }

    #[test]
    fn malformed_frames_name_what_is_wrong() {
        assert_eq!(decode_frame(&[]), Err(PeerFrameError::Empty));
        assert_eq!(decode_frame(&[0]), Err(PeerFrameError::UnknownKind(0)));
        assert_eq!(decode_frame(&[200]), Err(PeerFrameError::UnknownKind(200)));
        assert_eq!(
            decode_frame(&[KIND_ACK, 1, 2, 3]),
            Err(PeerFrameError::Truncated {
                frame: "Ack",
                field: "durable_seq"
            })
        );
        let mut ack = vec![KIND_ACK];
        ack.extend_from_slice(&[0; 8 + 3]);
        assert_eq!(
            decode_frame(&ack),
            Err(PeerFrameError::Trailing {
                frame: "Ack",
                count: 3
            })
        );
        let mut refuse = vec![KIND_REFUSE];
        refuse.extend_from_slice(&2u32.to_le_bytes());
        refuse.extend_from_slice(&[0xc3, 0x28]);
        assert_eq!(
            decode_frame(&refuse),
            Err(PeerFrameError::Utf8 {
                frame: "Refuse",
                field: "reason"
            })
        );
        // A damaged entry payload names the entry.
        let mut stream = Vec::new();
        encode(
            &PeerFrame::Resubmit {
                entries: vec![entry(1, None)],
            },
            &mut stream,
        );
        let payload_version_at = LEN_BYTES + 1 + 4 + ENTRY_HEADER_BYTES;
        stream[payload_version_at] = 99;
        assert_eq!(
            decode_frame(&stream[LEN_BYTES..]),
            Err(PeerFrameError::Entry {
                frame: "Resubmit",
                index: 0,
                source: PayloadError::Version(99)
            })
        );
        let message = decode_frame(&[KIND_ACK]).unwrap_err().to_string();
        assert_eq!(message, "Ack frame: truncated field durable_seq");
    }

    #[test]
    fn a_hello_of_another_version_is_reported_as_such() {
        // Parses as ours: handed up, the core refuses it with a reason.
        let mut newer = hello();
        let PeerFrame::Hello { version, .. } = &mut newer else {
            unreachable!()
        };
        *version = REPLICATION_VERSION + 1;
        let mut bytes = Vec::new();
        encode(&newer, &mut bytes);
        assert_eq!(decode_frame(&bytes[LEN_BYTES..]), Ok(newer));
        // Laid out differently: the version is what gets reported.
        let mut body = vec![KIND_HELLO];
        body.extend_from_slice(&(REPLICATION_VERSION + 1).to_le_bytes());
        body.extend_from_slice(b"xx");
        assert_eq!(
            decode_frame(&body),
            Err(PeerFrameError::Version {
                got: REPLICATION_VERSION + 1,
                ours: REPLICATION_VERSION
            })
        );
    }

    #[test]
    fn the_buffer_stays_bounded_while_streaming_frames_at_the_limit() {
        // Frames just under the limit, one big entry each.
        let overhead = LEN_BYTES
            + 1
            + 4
            + entry_wire_bytes(&Entry {
                body: String::new(),
                ..entry(1, None)
            });
        let big = Entry {
            body: "x".repeat(MAX_FRAME_BYTES + LEN_BYTES - overhead),
            ..entry(1, None)
        };
        let frame = PeerFrame::Resubmit { entries: vec![big] };
        let mut stream = Vec::new();
        let small = PeerFrame::Ack { durable_seq: 1 };
        for _ in 0..3 {
            encode(&small, &mut stream);
            encode(&frame, &mut stream);
        }
        let mut reader = FrameReader::new();
        let mut count = 0;
        for chunk in stream.chunks(READ_CHUNK_BYTES - 1) {
            reader.push(chunk);
            assert!(reader.buf.capacity() <= MAX_BUFFERED_BYTES);
            while let Some(decoded) = reader.next_frame().unwrap() {
                assert!(decoded == small || decoded == frame);
                count += 1;
            }
        }
        assert_eq!(count, 6);
        assert_eq!(reader.unread_bytes(), 0);
    }

    #[test]
    fn small_frames_do_not_move_the_buffer_each_time() {
        let frames = every_variant();
        let stream = encode_all(&frames);
        let mut reader = FrameReader::new();
        reader.push(&stream[..stream.len() - 1]);
        while reader.next_frame().unwrap().is_some() {}
        // A small consumed prefix stays in place until it is large.
        let read_pos = reader.read_pos;
        assert!(read_pos > 0);
        reader.push(&stream[stream.len() - 1..]);
        assert_eq!(reader.read_pos, read_pos);
        assert!(reader.next_frame().unwrap().is_some());
    }

    #[test]
    #[should_panic(expected = "over the 8388608-byte limit")]
    fn encoding_a_frame_over_the_limit_is_a_bug() {
        let frame = PeerFrame::Refuse {
            reason: "x".repeat(MAX_FRAME_BYTES),
        };
        encode(&frame, &mut Vec::new());
    }

    #[test]
    fn welcome_and_auth_transcripts_differ_and_ignore_the_mac() {
        let welcome_transcript = handshake_transcript(Transcript::Welcome, &hello(), &welcome());
        let auth_transcript = handshake_transcript(Transcript::Auth, &hello(), &welcome());
        assert_ne!(welcome_transcript, auth_transcript);
        let mut zero_mac = welcome();
        let PeerFrame::Welcome { mac, .. } = &mut zero_mac else {
            unreachable!()
        };
        *mac = [0; MAC_BYTES];
        assert_eq!(
            handshake_transcript(Transcript::Welcome, &hello(), &zero_mac),
            welcome_transcript
        );
    }

    #[test]
    fn the_transcript_covers_every_handshake_field() {
        let base = handshake_transcript(Transcript::Welcome, &hello(), &welcome());
        let hello_changes: [fn(&mut PeerFrame); 8] = [
            |f| {
                if let PeerFrame::Hello { version, .. } = f {
                    *version += 1
                }
            },
            |f| {
                if let PeerFrame::Hello { node_id, .. } = f {
                    node_id.push('x')
                }
            },
            |f| {
                if let PeerFrame::Hello { epoch, .. } = f {
                    *epoch += 1
                }
            },
            |f| {
                if let PeerFrame::Hello { last_seq, .. } = f {
                    *last_seq += 1
                }
            },
            |f| {
                if let PeerFrame::Hello { first_seq, .. } = f {
                    *first_seq += 1
                }
            },
            |f| {
                if let PeerFrame::Hello { epochs, .. } = f {
                    epochs.pop();
                }
            },
            |f| {
                if let PeerFrame::Hello { nonce, .. } = f {
                    nonce[15] ^= 1
                }
            },
            |f| {
                if let PeerFrame::Hello { boot, .. } = f {
                    *boot += 1
                }
            },
        ];
        for (index, change) in hello_changes.iter().enumerate() {
            let mut changed = hello();
            change(&mut changed);
            assert_ne!(changed, hello(), "hello change {index}");
            let transcript = handshake_transcript(Transcript::Welcome, &changed, &welcome());
            assert_ne!(transcript, base, "hello change {index}");
        }
        let welcome_changes: [fn(&mut PeerFrame); 6] = [
            |f| {
                if let PeerFrame::Welcome { node_id, .. } = f {
                    node_id.push('x')
                }
            },
            |f| {
                if let PeerFrame::Welcome { epoch, .. } = f {
                    *epoch += 1
                }
            },
            |f| {
                if let PeerFrame::Welcome { epochs, .. } = f {
                    epochs.pop();
                }
            },
            |f| {
                if let PeerFrame::Welcome { head, .. } = f {
                    *head += 1
                }
            },
            |f| {
                if let PeerFrame::Welcome { nonce, .. } = f {
                    nonce[0] ^= 1
                }
            },
            |f| {
                if let PeerFrame::Welcome { key_id, .. } = f {
                    *key_id += 1
                }
            },
        ];
        for (index, change) in welcome_changes.iter().enumerate() {
            let mut changed = welcome();
            change(&mut changed);
            assert_ne!(changed, welcome(), "welcome change {index}");
            let transcript = handshake_transcript(Transcript::Welcome, &hello(), &changed);
            assert_ne!(transcript, base, "welcome change {index}");
        }
    }

    #[test]
    #[should_panic(expected = "needs a Welcome")]
    fn a_transcript_of_the_wrong_frames_is_a_bug() {
        handshake_transcript(Transcript::Auth, &hello(), &hello());
    }

    fn arbitrary_entry() -> impl Strategy<Value = Entry> {
        (
            (any::<u64>(), any::<u64>(), any::<u64>()),
            (any::<String>(), any::<String>(), any::<String>()),
            (any::<String>(), any::<String>()),
            any::<Option<(u64, u64)>>(),
        )
            .prop_map(
                |((epoch, seq, ts_ms), (room, from, session), (id, body), orig)| Entry {
                    epoch,
                    seq,
                    ts_ms,
                    room,
                    from,
                    session,
                    id,
                    body,
                    orig,
                },
            )
    }

    proptest! {
        #[test]
        fn entries_round_trip(
            commit_seq in any::<u64>(),
            entries in proptest::collection::vec(arbitrary_entry(), 0..8),
            resubmit in any::<bool>(),
        ) {
            let frame = if resubmit {
                PeerFrame::Resubmit { entries }
            } else {
                PeerFrame::Entries { commit_seq, entries }
            };
            let mut bytes = Vec::new();
            encode(&frame, &mut bytes);
            let mut reader = FrameReader::new();
            reader.push(&bytes);
            prop_assert_eq!(reader.next_frame(), Ok(Some(frame)));
            prop_assert_eq!(reader.next_frame(), Ok(None));
        }

        #[test]
        fn entry_wire_bytes_matches_the_encoding(entry in arbitrary_entry()) {
            let mut with = Vec::new();
            encode(&PeerFrame::Resubmit { entries: vec![entry.clone()] }, &mut with);
            let mut without = Vec::new();
            encode(&PeerFrame::Resubmit { entries: vec![] }, &mut without);
            prop_assert_eq!(with.len() - without.len(), entry_wire_bytes(&entry));
        }

        #[test]
        fn any_chunking_yields_the_same_frames(
            chunk_sizes in proptest::collection::vec(1usize..200, 1..20),
        ) {
            let frames = every_variant();
            let stream = encode_all(&frames);
            prop_assert_eq!(decode_in_chunks(&stream, &chunk_sizes), Ok(frames));
        }

        #[test]
        fn the_decoder_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            chunk_sizes in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let _ = decode_in_chunks(&bytes, &chunk_sizes);
        }

        #[test]
        fn the_decoder_never_panics_on_arbitrary_bodies(
            kind in 0u8..=14,
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            // A well-formed length, so the body parsers rather than the length check see the
            // arbitrary bytes.
            let mut stream = ((body.len() + 1) as u32).to_le_bytes().to_vec();
            stream.push(kind);
            stream.extend_from_slice(&body);
            let mut reader = FrameReader::new();
            reader.push(&stream);
            let _ = reader.next_frame();
        }

        #[test]
        fn a_corrupted_stream_is_an_error_or_frames_never_a_panic(
            index in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut stream = encode_all(&every_variant());
            let at = index.index(stream.len());
            stream[at] = byte;
            let _ = decode_in_chunks(&stream, &[7]);
        }
    }
}
