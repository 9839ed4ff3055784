//! Fuzzes log recovery: the input becomes segment files in an empty data directory, which
//! `Log::open` then recovers, as at a start after a crash or a disk fault.
//!
//! Two input forms, told apart by the first byte:
//!
//! - *Damage* (not `P`): a recipe. A real log is written with `Log::append` (entries, their
//!   bodies and the segment size taken from the input), then one fault is applied to its
//!   files: a cut at any byte, a flipped byte, a deleted segment, or garbage appended. The
//!   checksums cannot stop the fuzzer here, and the answer is known exactly: recovery must
//!   keep every record before the fault and none after it (see [`check_damage`]).
//! - *Files* (`P`, as in the magic): the input is the bytes of one or more segment files
//!   laid end to end, checked as below.
//!
//! Files input: the bytes of one or more segment files laid end to end; each occurrence of the
//! segment magic after the first byte starts the next file (at most `SEGMENTS_MAX`). A file
//! is named after the seq of its first record when that is readable (so a real log, laid end
//! to end, recovers whole), else after the previous name plus one.
//!
//! Invariants beyond "no panic": recovery succeeds whatever the bytes; what it keeps is a
//! prefix of what was there (each surviving file a prefix of its original, later files
//! deleted after a cut), holding consecutive seqs; each kept file is exactly the records of
//! the entries reported from it (appending them to an empty log writes the same bytes), then
//! at most zeros (a zeroed segment's unused end); and a second recovery finds nothing to cut
//! and the same entries.

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
    if data.first() != Some(&b'P') {
        check_damage(data, dir);
        return;
    }
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
    let mut survivors = Vec::new();
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
                survivors.push((*base, now));
            }
            Err(_) => gone = true,
        }
    }
    drop(log);

    // Each surviving file holds exactly the records of the entries reported from it (seqs
    // from its name up to the next file's), then nothing but zeros: a zeroed segment's
    // unused end.
    for (i, (base, now)) in survivors.iter().enumerate() {
        let next = survivors.get(i + 1).map_or(u64::MAX, |(next, _)| *next);
        let own: Vec<Entry> = entries
            .iter()
            .filter(|e| (*base..next).contains(&e.seq))
            .cloned()
            .collect();
        let records = encoded(&own, fresh);
        let body = now.get(MAGIC.len()..).unwrap_or(&[]);
        assert!(
            body.starts_with(&records) && body[records.len()..].iter().all(|&b| b == 0),
            "segment {base}: {} bytes after the header are not the {} bytes of its {} \
             entries' records and zeros",
            body.len(),
            records.len(),
            own.len()
        );
    }

    // Recovery is idempotent: nothing more to cut the second time.
    let (_, entries_again, second) = open(dir);
    assert_eq!(entries_again, entries);
    assert_eq!(
        second.truncated_bytes, 0,
        "second recovery cut: {:?}",
        second.notes
    );
}

/// The records `entries` (consecutive seqs) encode to, as a log in the empty-or-scratch
/// directory `dir` writes them.
fn encoded(entries: &[Entry], dir: &Path) -> Vec<u8> {
    for file in fs::read_dir(dir).expect("list scratch dir") {
        fs::remove_file(file.expect("scratch entry").path()).expect("clear scratch dir");
    }
    let Some(first) = entries.first() else {
        return Vec::new();
    };
    let (mut log, none, _) = open(dir);
    assert!(none.is_empty());
    log.restart_at(first.seq).expect("restart");
    log.append(entries)
        .expect("re-append the recovered entries");
    drop(log);
    let bytes = fs::read(dir.join(file_name(first.seq))).expect("the one segment");
    bytes[MAGIC.len()..].to_vec()
}

/// Entries a damage recipe writes at most.
const DAMAGE_ENTRIES_MAX: usize = 24;

/// One record of a written log: which segment file (in name order) and where it ends there.
struct Placed {
    file: usize,
    end: usize,
}

/// The damage form: writes a real log, damages it once, and checks that recovery keeps
/// exactly the records before the damage.
///
/// Recipe: byte 0 the entry count, byte 1 the segment size, byte 2 the fault, bytes 3-4 where,
/// the rest the bodies.
fn check_damage(data: &[u8], dir: &Path) {
    let [count, size, fault, at_low, at_high, bodies @ ..] = data else {
        return;
    };
    let count = 1 + usize::from(*count) % DAMAGE_ENTRIES_MAX;
    let segment_bytes = crate::log::MIN_SEGMENT_BYTES + u64::from(*size) * 16;
    let at = usize::from(u16::from_le_bytes([*at_low, *at_high]));
    let chunk = bodies.len().div_ceil(count).max(1);
    let entries: Vec<Entry> = (0..count)
        .map(|i| {
            let body = bodies.chunks(chunk).nth(i).unwrap_or(&[]);
            Entry {
                epoch: 1 + i as u64 / 5,
                seq: 1 + i as u64,
                ts_ms: 1_764_084_000_000 + i as u64,
                room: ["general", "r"][i % 2].into(),
                from: "alice".into(),
                session: "s".into(),
                id: format!("m-{i}"),
                body: String::from_utf8_lossy(body).into_owned(),
                orig: (i % 3 == 2).then_some((1, 100 + i as u64)),
            }
        })
        .collect();
    let options = LogOptions {
        segment_bytes,
        ..options(dir)
    };
    let (mut log, _) = Log::open(options.clone(), |_| {}).expect("open an empty log");
    log.append(&entries).expect("append");
    log.sync().expect("sync");
    drop(log);

    // Where each record lies: segments hold consecutive records after the magic.
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    let sizes: Vec<usize> = files
        .iter()
        .map(|f| fs::metadata(f).unwrap().len() as usize)
        .collect();
    let mut placed = Vec::new();
    let (mut file, mut end) = (0, MAGIC.len());
    for entry in &entries {
        let mut payload = Vec::new();
        entry.encode_payload(&mut payload);
        let len = 24 + payload.len();
        if end + len > sizes[file] {
            assert_eq!(end, sizes[file], "segment {file} does not end on a record");
            (file, end) = (file + 1, MAGIC.len());
        }
        end += len;
        placed.push(Placed { file, end });
    }
    assert_eq!(end, sizes[file], "records do not fill segment {file}");
    // Past the last record only an empty segment (a header) may follow.
    assert!(sizes[file + 1..].iter().all(|&size| size == MAGIC.len()));

    // One fault, and the records that must survive it.
    let total: usize = sizes.iter().sum();
    let position = |at: usize| {
        let mut offset = at % total;
        let mut file = 0;
        while offset >= sizes[file] {
            offset -= sizes[file];
            file += 1;
        }
        (file, offset)
    };
    let before = |file: usize, offset: usize| {
        placed
            .iter()
            .take_while(|p| p.file < file || (p.file == file && p.end <= offset))
            .count()
    };
    let expected: std::ops::Range<usize> = match fault % 4 {
        0 => {
            let (file, offset) = position(at);
            let bytes = fs::read(&files[file]).unwrap();
            fs::write(&files[file], &bytes[..offset]).unwrap();
            0..before(file, offset)
        }
        1 => {
            // Any byte of the header, a length, crc, epoch, seq or payload: crc32 catches
            // every single-byte change.
            let (file, offset) = position(at);
            let mut bytes = fs::read(&files[file]).unwrap();
            bytes[offset] ^= fault | 1;
            fs::write(&files[file], &bytes).unwrap();
            0..before(file, offset)
        }
        2 => {
            let file = at % files.len();
            fs::remove_file(&files[file]).unwrap();
            if file == 0 {
                // As retention does: the log now starts later, and all the rest is kept.
                before(1, 0)..count
            } else {
                0..before(file, 0)
            }
        }
        _ => {
            let last = files.last().unwrap();
            let mut bytes = fs::read(last).unwrap();
            bytes.extend_from_slice(&bodies[..bodies.len().min(at % 512)]);
            fs::write(last, &bytes).unwrap();
            0..count
        }
    };

    let (_, recovered, _) = open(dir);
    let expected = &entries[expected];
    if fault % 4 == 3 {
        // Garbage forms a valid next record only by solving its crc; what was there stays.
        assert!(
            recovered.starts_with(expected),
            "appended garbage cost records"
        );
    } else {
        assert!(
            recovered == expected,
            "fault {} at {at}: kept {} records, expected {} (seqs {:?})",
            fault % 4,
            recovered.len(),
            expected.len(),
            expected.first().map(|e| e.seq)..expected.last().map(|e| e.seq + 1),
        );
    }
    let (_, again, second) = open(dir);
    assert_eq!(again, recovered);
    assert_eq!(
        second.truncated_bytes, 0,
        "second recovery cut: {:?}",
        second.notes
    );
}
