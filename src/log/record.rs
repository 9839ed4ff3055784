//! The on-disk record codec: `len: u32 LE | crc32: u32 LE | epoch: u64 LE | seq: u64 LE | payload`,
//! and the ways a record can be found damaged.
//!
//! Pure: works on byte slices only. It must not touch files; `segment` and `reader` do the I/O
//! and turn a [`Damage`] into a cut (recovery) or an error (reads).

use thiserror::Error;

use crate::entry::{Entry, PayloadError};

/// Largest payload a record may carry. A chat message is a few KiB at most; anything bigger on
/// disk is a corrupt length field, and refusing it keeps recovery from allocating whatever a
/// torn header claims.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// First bytes of every segment: tells a segment apart from a stray file, and versions the
/// record format (so it is stated here, with the format).
pub(crate) const MAGIC: &[u8; 8] = b"PBLOG001";
pub(crate) const MAGIC_TEXT: &str = "PBLOG001";

/// Bytes before the payload: len, crc, epoch, seq.
pub(crate) const HEADER_BYTES: usize = 4 + 4 + 8 + 8;

/// Where the crc starts: it covers epoch, seq and payload, which are contiguous on disk, so one
/// `crc32fast::hash` call over `record[CRC_START..]` checks a record.
const CRC_START: usize = 8;

/// Why a record (or a segment's header) is not usable. Shown to people in recovery notes and
/// read errors, so each variant says what was expected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Damage {
    #[error("segment does not start with the magic header {:?}", MAGIC_TEXT)]
    BadMagic,
    #[error("record ends early: {needed} bytes needed, {available} present")]
    Torn { needed: usize, available: usize },
    #[error("record payload length {payload_bytes} exceeds the {max_bytes}-byte limit")]
    TooLarge {
        payload_bytes: usize,
        max_bytes: usize,
    },
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("record has seq {found}, expected {expected}")]
    Seq { expected: u64, found: u64 },
    #[error("record at offset {offset} would end beyond the largest segment offset {max}")]
    Oversized { offset: u64, max: u64 },
    #[error("record payload: {0}")]
    Payload(PayloadError),
}

/// A record whose length and crc checked out; the payload is not decoded yet.
pub(crate) struct RawRecord<'a> {
    pub epoch: u64,
    pub seq: u64,
    pub payload: &'a [u8],
}

pub(crate) enum Parsed<'a> {
    /// A whole, crc-valid record of `len` bytes (header included).
    Record {
        record: RawRecord<'a>,
        len: usize,
    },
    /// The slice holds only part of a record; `needed` bytes would hold all of it. At the end
    /// of a file this is a torn write, elsewhere the caller reads more.
    Incomplete {
        needed: usize,
    },
    Damaged(Damage),
}

/// Appends `entry` as one record to `out` and returns the record's length.
/// On `TooLarge` nothing is left appended.
pub(crate) fn encode(entry: &Entry, out: &mut Vec<u8>) -> Result<usize, Damage> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    entry.encode_payload(out);
    let payload_bytes = out.len() - start - HEADER_BYTES;
    if payload_bytes > MAX_RECORD_BYTES {
        out.truncate(start);
        return Err(Damage::TooLarge {
            payload_bytes,
            max_bytes: MAX_RECORD_BYTES,
        });
    }
    let record = &mut out[start..];
    record[16..24].copy_from_slice(&entry.seq.to_le_bytes());
    record[8..16].copy_from_slice(&entry.epoch.to_le_bytes());
    let crc = crc32fast::hash(&record[CRC_START..]);
    // Fits: checked against MAX_RECORD_BYTES above.
    record[0..4].copy_from_slice(&(payload_bytes as u32).to_le_bytes());
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(payload_bytes + HEADER_BYTES)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses the record at the start of `bytes`, checking its length bound and crc.
pub(crate) fn parse(bytes: &[u8]) -> Parsed<'_> {
    if bytes.len() < HEADER_BYTES {
        return Parsed::Incomplete {
            needed: HEADER_BYTES,
        };
    }
    let payload_bytes = u32_at(bytes, 0) as usize;
    // Checked before asking for more bytes, so a garbage length never makes a caller read or
    // allocate more than one maximal record.
    if payload_bytes > MAX_RECORD_BYTES {
        return Parsed::Damaged(Damage::TooLarge {
            payload_bytes,
            max_bytes: MAX_RECORD_BYTES,
        });
    }
    let len = HEADER_BYTES + payload_bytes;
    if bytes.len() < len {
        return Parsed::Incomplete { needed: len };
    }
    let stored = u32_at(bytes, 4);
    let computed = crc32fast::hash(&bytes[CRC_START..len]);
    if stored != computed {
        return Parsed::Damaged(Damage::Crc { stored, computed });
    }
    Parsed::Record {
        record: RawRecord {
            epoch: u64_at(bytes, 8),
            seq: u64_at(bytes, 16),
            payload: &bytes[HEADER_BYTES..len],
        },
        len,
    }
}

/// Decodes the whole record that must fill `bytes` exactly and carry `expected_seq`.
/// Used by readers, which know each record's location and length from the index.
pub(crate) fn decode_exact(bytes: &[u8], expected_seq: u64) -> Result<Entry, Damage> {
    match parse(bytes) {
        Parsed::Record { record, len } if len == bytes.len() => decode(&record, expected_seq),
        Parsed::Record { len, .. } => Err(Damage::Torn {
            needed: len,
            available: bytes.len(),
        }),
        Parsed::Incomplete { needed } => Err(Damage::Torn {
            needed,
            available: bytes.len(),
        }),
        Parsed::Damaged(damage) => Err(damage),
    }
}

/// Checks the seq and decodes the payload of a crc-valid record.
pub(crate) fn decode(record: &RawRecord<'_>, expected_seq: u64) -> Result<Entry, Damage> {
    if record.seq != expected_seq {
        return Err(Damage::Seq {
            expected: expected_seq,
            found: record.seq,
        });
    }
    Entry::decode_payload(record.epoch, record.seq, record.payload).map_err(Damage::Payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(seq: u64) -> Entry {
        Entry {
            epoch: 7,
            seq,
            ts_ms: 1_700_000_000_000,
            room: "general".into(),
            from: "alice".into(),
            session: "s1".into(),
            id: format!("m{seq}"),
            body: "hello".into(),
            orig: None,
        }
    }

    #[test]
    fn record_round_trips_and_crc_covers_epoch_seq_payload() {
        let mut buf = Vec::new();
        let len = encode(&sample(42), &mut buf).unwrap();
        assert_eq!(len, buf.len());
        assert_eq!(decode_exact(&buf, 42).unwrap(), sample(42));
        assert!(matches!(decode_exact(&buf, 43), Err(Damage::Seq { .. })));
        for at in 4..buf.len() {
            let mut bad = buf.clone();
            bad[at] ^= 0x40;
            assert!(
                matches!(decode_exact(&bad, 42), Err(Damage::Crc { .. })),
                "byte {at}"
            );
        }
    }

    #[test]
    fn oversized_payload_is_refused_and_leaves_nothing() {
        let mut entry = sample(1);
        entry.body = "x".repeat(MAX_RECORD_BYTES);
        let mut buf = vec![1, 2, 3];
        assert!(matches!(
            encode(&entry, &mut buf),
            Err(Damage::TooLarge { .. })
        ));
        assert_eq!(buf, vec![1, 2, 3]);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
            let _ = decode_exact(&bytes, 1);
        }
    }
}
