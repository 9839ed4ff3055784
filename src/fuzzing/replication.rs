//! Fuzzes the replication link's frame decoder, as bytes in memory (`decode_prefix`) and as
//! a link delivers them (`FrameReader`, fed in reads of arbitrary size).
//!
//! Input: bytes 0-1 pick the read size (1..=65536), the rest is what the peer sent.
//! Invariants beyond "no panic": both ways yield the same frames and the same error; every
//! frame re-encodes to exactly the bytes it was decoded from (one encoding per frame, so a
//! frame cannot be smuggled past a check on its bytes); the reader's buffer stays within one
//! frame plus one read.

use crate::wire::replication::{
    decode_prefix, encode, FrameReader, PeerFrame, PeerFrameError, MAX_FRAME_BYTES,
    READ_CHUNK_BYTES,
};

/// What the stream meant: its frames, then the error that ended it (if any).
type Meaning = (Vec<PeerFrame>, Option<String>);

fn in_memory(mut bytes: &[u8]) -> Meaning {
    let mut frames = Vec::new();
    loop {
        match decode_prefix(bytes) {
            Ok(Some((frame, used))) => {
                let mut again = Vec::new();
                encode(&frame, &mut again);
                assert_eq!(
                    again,
                    &bytes[..used],
                    "{} frame re-encodes to other bytes",
                    frame.name()
                );
                frames.push(frame);
                bytes = &bytes[used..];
            }
            Ok(None) => return (frames, None),
            Err(error) => return (frames, Some(describe(&error))),
        }
    }
}

fn through_reader(bytes: &[u8], chunk: usize) -> Meaning {
    let mut reader = FrameReader::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk) {
        reader.push(piece);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => return (frames, Some(describe(&error))),
            }
        }
        assert!(reader.unread_bytes() <= 4 + MAX_FRAME_BYTES + READ_CHUNK_BYTES);
    }
    (frames, None)
}

fn describe(error: &PeerFrameError) -> String {
    let text = error.to_string();
    assert!(text.len() <= 400, "{}-byte error: {text}", text.len());
    text
}

/// Runs every check of this target on one input; panics on a broken invariant.
pub fn check(data: &[u8]) {
    let Some((chunk_bytes, stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let chunk = usize::from(u16::from_le_bytes(*chunk_bytes)) + 1;
    let whole = in_memory(stream);
    let chunked = through_reader(stream, chunk.min(READ_CHUNK_BYTES));
    assert_eq!(whole, chunked, "reads of {chunk} bytes changed the frames");
}
