//! Fuzzes log recovery: the input becomes segment files in an empty data directory, which
//! `Log::open` then recovers, as at a start after a crash or a disk fault.
//!
//! Input: the bytes of one or more segment files laid end to end; each occurrence of the
//! segment magic after the first byte starts the next file (at most `SEGMENTS_MAX`). A file
//! is named after the seq of its first record when that is readable (so a real log, laid end
//! to end, recovers whole), else after the previous name plus one.
//!
//! Invariants beyond "no panic": recovery succeeds whatever the bytes; what it keeps is a
//! prefix of what was there (each surviving file a prefix of its original, later files
//! deleted after a cut), holding consecutive seqs; those bytes are exactly the encoding of
//! the entries it reported (appending them to an empty log writes the same records); and a
//! second recovery finds nothing to cut and the same entries.

use std::fs;
use std::path::{Path, PathBuf};

use crate::entry::Entry;
use crate::log::{Log, LogOptions};

const MAGIC: &[u8] = b"PBLOG001";
const SEGMENTS_MAX: usize = 8;
/// Where the first record's seq sits in a segment: magic, then len, crc, epoch.
const FIRST_SEQ_AT: usize = 8 + 4 + 4 + 8;
/// Names stay in a small range so they are never rejected for size and the
/// arithmetic on them never matters.
const BASE_SEQ_MAX: u64 = 1 << 40;

fn file_name(base_seq: u64) -> String {
    format!("log-{base_seq:020}.seg")
}

/// Splits the input into segment files, with their base seqs.
fn segments(data: &[u8]) -> Vec<(u64, &[u8])> {
    let mut starts: Vec<usize> = vec![0];
    let mut at = 1;
    while let Some(found) = data
        .get(at..)
        .and_then(|rest| rest.windows(MAGIC.len()).position(|w| w == MAGIC))
    {
        if starts.len() == SEGMENTS_MAX {
            break;
        }
        starts.push(at + found);
        at += found + 1;
    }
    let mut previous = 0;
    let mut out = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(data.len());
        let bytes = &data[start..end];
        let named = bytes
            .get(FIRST_SEQ_AT..FIRST_SEQ_AT + 8)
            .map(|raw| u64::from_le_bytes(raw.try_into().unwrap()))
            .filter(|&seq| seq > previous && seq <= BASE_SEQ_MAX);
        let base = named.unwrap_or(previous + 1);
        out.push((base, bytes));
        previous = base;
    }
    out
}

fn options(dir: &Path) -> LogOptions {
    LogOptions {
        dir: dir.to_path_buf(),
        segment_bytes: 1 << 30,
        retain_messages: u64::MAX,
        retain_bytes: u64::MAX,
    }
}

fn open(dir: &Path) -> (Log, Vec<Entry>, crate::log::Recovery) {
    let mut entries = Vec::new();
    let (log, recovery) = Log::open(options(dir), |entry| entries.push(entry.clone()))
        .unwrap_or_else(|e| panic!("recovery refused the log: {e}"));
    (log, entries, recovery)
}

/// Runs every check of this target on one input; panics on a broken invariant. `dir` and
/// `fresh` are empty directories for the recovered log and for the rewritten one (on tmpfs
/// for speed: recovery fsyncs what it cut).
pub fn check(data: &[u8], dir: &Path, fresh: &Path) {
    let written = segments(data);
    for (base, bytes) in &written {
        fs::write(dir.join(file_name(*base)), bytes).expect("write segment");
    }

    let (log, entries, recovery) = open(dir);
    for pair in entries.windows(2) {
        assert_eq!(
            pair[1].seq,
            pair[0].seq + 1,
            "recovered seqs are not consecutive"
        );
    }
    assert_eq!(recovery.records, entries.len() as u64);

    // What survives is a prefix of what was written: files in order, each a prefix of its
    // original (or a bare header where a cut fell inside the header), none after a gap.
    let mut kept = Vec::new();
    let mut gone = false;
    for (base, bytes) in &written {
        let path: PathBuf = dir.join(file_name(*base));
        match fs::read(&path) {
            Ok(now) => {
                assert!(!gone, "{} survives after a deleted segment", path.display());
                assert!(
                    bytes.starts_with(&now) || now == MAGIC,
                    "{} is not a prefix of what was written",
                    path.display()
                );
                if now.len() < bytes.len() {
                    gone = true;
                }
                kept.extend_from_slice(now.get(MAGIC.len()..).unwrap_or(&[]));
            }
            Err(_) => gone = true,
        }
    }
    drop(log);

    // The kept bytes are exactly the records of the entries reported.
    let (mut rewritten, none, _) = open(fresh);
    assert!(none.is_empty());
    if let Some(first) = entries.first() {
        rewritten.restart_at(first.seq).expect("restart");
        rewritten
            .append(&entries)
            .expect("re-append the recovered entries");
    }
    drop(rewritten);
    let mut again = Vec::new();
    let mut names: Vec<_> = fs::read_dir(fresh)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for name in names {
        again.extend_from_slice(&fs::read(name).unwrap()[MAGIC.len()..]);
    }
    assert!(
        again == kept,
        "kept {} record bytes, but the entries encode to {}",
        kept.len(),
        again.len()
    );

    // Recovery is idempotent: nothing more to cut the second time.
    let (_, entries_again, second) = open(dir);
    assert_eq!(entries_again, entries);
    assert_eq!(
        second.truncated_bytes, 0,
        "second recovery cut: {:?}",
        second.notes
    );
}
