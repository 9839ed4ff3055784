//! Tests of the log through its public API, plus index invariant checks after every change:
//! round trips, rolls, retention, queries at their edges, truncation, and recovery from a cut
//! or a flipped byte anywhere.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

use super::*;

const ROOMS: [&str; 3] = ["general", "random", "ops"];

fn entry(seq: u64, room: &str) -> Entry {
    Entry {
        epoch: 1 + seq / 50,
        seq,
        ts_ms: 1_700_000_000_000 + seq,
        room: room.to_owned(),
        from: "alice".into(),
        session: "s1".into(),
        id: format!("m{seq}"),
        body: format!("message number {seq}"),
        orig: seq.is_multiple_of(7).then_some((1, seq)),
    }
}

/// Entries `from..=upto`, rooms rotating through `ROOMS`.
fn entries(from: u64, upto: u64) -> Vec<Entry> {
    (from..=upto)
        .map(|seq| entry(seq, ROOMS[(seq % 3) as usize]))
        .collect()
}

fn options(dir: &Path) -> LogOptions {
    LogOptions {
        dir: dir.to_path_buf(),
        segment_bytes: 1 << 20,
        retain_messages: u64::MAX,
        retain_bytes: u64::MAX,
    }
}

fn open(options: &LogOptions) -> (Log, Recovery, Vec<Entry>) {
    let mut seen = Vec::new();
    let (log, recovery) = Log::open(options.clone(), |e| seen.push(e.clone())).unwrap();
    log.check();
    (log, recovery, seen)
}

impl Log {
    fn check(&self) {
        let index = index::read(&self.index);
        index.check_invariants();
        assert!(Arc::ptr_eq(&index.current().file, &self.current));
        assert_eq!(index.current().bytes, self.current_bytes);
        assert_eq!(
            index.next_seq() - self.current.base_seq,
            self.current_records
        );
        // The files on disk are exactly the indexed segments, each as long as the index
        // says or longer by zeros only (a zeroed spare's unused end).
        let on_disk: Vec<(u64, Vec<u8>)> = segment_files(&self.options.dir)
            .iter()
            .map(|(base, path)| (*base, fs::read(path).unwrap()))
            .collect();
        let indexed: Vec<(u64, u64)> = index
            .segments
            .iter()
            .map(|s| (s.file.base_seq, s.bytes))
            .collect();
        let bases: Vec<u64> = on_disk.iter().map(|(base, _)| *base).collect();
        assert_eq!(bases, indexed.iter().map(|s| s.0).collect::<Vec<_>>());
        for ((base, bytes), (_, indexed_bytes)) in on_disk.iter().zip(&indexed) {
            let tail = bytes.get(*indexed_bytes as usize..).unwrap_or_else(|| {
                panic!("segment {base} is shorter than its {indexed_bytes} indexed bytes")
            });
            assert!(spare::all_zero(tail), "segment {base} runs on in non-zeros");
        }
        assert!(self.current_file_bytes >= self.current_bytes);
    }

    /// Waits, with a deadline, until the spare `preallocate` started is zeroed.
    fn wait_for_spare(&self) {
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while !self.spare.as_ref().expect("preallocating").ready() {
            assert!(Instant::now() < deadline, "no zeroed spare within 30 s");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

fn segment_files(dir: &Path) -> Vec<(u64, PathBuf)> {
    list_segments(dir, &mut Vec::new()).unwrap()
}

fn all(reader: &LogReader) -> Vec<Entry> {
    reader.range(0, u64::MAX, usize::MAX).unwrap()
}

#[test]
fn appends_survive_reopen_and_visit_sees_them_in_order() {
    let dir = TempDir::new().unwrap();
    let options = options(dir.path());
    let (mut log, recovery, seen) = open(&options);
    assert_eq!(
        (recovery.records, recovery.first_seq, recovery.last_seq),
        (0, 1, 0)
    );
    assert!(seen.is_empty());
    assert_eq!((log.first_seq(), log.last_seq()), (1, 0));
    log.append(&entries(1, 1)).unwrap();
    log.append(&entries(2, 40)).unwrap();
    log.append(&[]).unwrap();
    log.sync().unwrap();
    assert_eq!(all(&log.reader()), entries(1, 40));
    drop(log);

    let (log, recovery, seen) = open(&options);
    assert_eq!(seen, entries(1, 40));
    assert_eq!(
        recovery,
        Recovery {
            records: 40,
            first_seq: 1,
            last_seq: 40,
            truncated_bytes: 0,
            notes: vec![],
        }
    );
    assert_eq!(all(&log.reader()), entries(1, 40));
    assert_eq!(log.reader().epoch_of(40), Some(1));
    assert_eq!(log.reader().epoch_of(50), None);
}

#[test]
fn append_out_of_order_is_refused_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let (mut log, _, _) = open(&options(dir.path()));
    log.append(&entries(1, 3)).unwrap();
    let mut batch = entries(4, 6);
    batch[2].seq = 8;
    assert!(matches!(
        log.append(&batch),
        Err(LogError::Gap {
            expected: 6,
            got: 8
        })
    ));
    assert!(matches!(
        log.append(&entries(3, 3)),
        Err(LogError::Gap {
            expected: 4,
            got: 3
        })
    ));
    let mut huge = entry(4, "general");
    huge.body = "x".repeat(MAX_RECORD_BYTES + 1);
    let batch = [entry(4, "general"), {
        huge.seq = 5;
        huge
    }];
    assert!(matches!(
        log.append(&batch),
        Err(LogError::RecordTooLarge { seq: 5, .. })
    ));
    log.check();
    assert_eq!(log.last_seq(), 3);
    log.append(&entries(4, 5)).unwrap();
    drop(log);
    let (_, _, seen) = open(&options(dir.path()));
    assert_eq!(seen, entries(1, 5));
}

#[test]
fn segments_roll_once_they_reach_segment_bytes() {
    let dir = TempDir::new().unwrap();
    let options = LogOptions {
        segment_bytes: 300,
        ..options(dir.path())
    };
    let (mut log, _, _) = open(&options);
    // One big batch and many small ones must roll at the same places.
    log.append(&entries(1, 60)).unwrap();
    log.check();
    let big_batch_layout: Vec<u64> = segment_files(dir.path()).iter().map(|s| s.0).collect();
    assert!(big_batch_layout.len() > 5, "{big_batch_layout:?}");
    for (_, path) in segment_files(dir.path()) {
        let len = fs::metadata(path).unwrap().len();
        assert!(
            len < 300 + 200,
            "a segment outgrows segment_bytes by one record at most"
        );
    }
    drop(log);

    let dir2 = TempDir::new().unwrap();
    let (mut log, _, _) = open(&LogOptions {
        dir: dir2.path().to_path_buf(),
        ..options.clone()
    });
    for seq in 1..=60 {
        log.append(&entries(seq, seq)).unwrap();
    }
    log.check();
    let small_layout: Vec<u64> = segment_files(dir2.path()).iter().map(|s| s.0).collect();
    assert_eq!(small_layout, big_batch_layout);
    assert_eq!(all(&log.reader()), entries(1, 60));
    drop(log);
    let (log, _, seen) = open(&options);
    assert_eq!(seen, entries(1, 60));
    assert_eq!(all(&log.reader()), entries(1, 60));
}

#[test]
fn a_record_alone_in_its_segment_reads_back_whole() {
    // Each record outgrows the smallest segment, so every segment holds one record and all
    // of them start at the same offset: a record's length cannot come from where the next
    // record starts, only from its segment's end.
    let dir = TempDir::new().unwrap();
    let options = LogOptions {
        segment_bytes: MIN_SEGMENT_BYTES,
        ..options(dir.path())
    };
    let (mut log, _, _) = open(&options);
    log.append(&entries(1, 5)).unwrap();
    log.append(&entries(6, 6)).unwrap();
    log.check();
    assert_eq!(segment_files(dir.path()).len(), 6);
    assert_eq!(all(&log.reader()), entries(1, 6));
    assert_eq!(log.reader().range(3, 4, 10).unwrap(), entries(3, 4));
    drop(log);
    let (log, _, seen) = open(&options);
    assert_eq!(seen, entries(1, 6));
    assert_eq!(all(&log.reader()), entries(1, 6));
}

#[test]
fn retention_by_count_drops_oldest_whole_segments() {
    let dir = TempDir::new().unwrap();
    let options = LogOptions {
        segment_bytes: 400,
        retain_messages: 20,
        ..options(dir.path())
    };
    let (mut log, _, _) = open(&options);
    for seq in 1..=200 {
        log.append(&entries(seq, seq)).unwrap();
        log.check();
        let reader = log.reader();
        let retained = reader.last_seq() + 1 - reader.first_seq();
        assert!(retained <= 20, "seq {seq}: {retained} retained");
        // The oldest segment was dropped only while it was over the bound.
        let base = segment_files(dir.path())[0].0;
        assert_eq!(reader.first_seq(), base);
    }
    let reader = log.reader();
    assert!(reader.first_seq() > 150);
    assert_eq!(
        all(&reader),
        entries(reader.first_seq(), 200),
        "indexes match the files"
    );
    for room in reader.rooms() {
        let got = reader.room_after(&room, 0, u64::MAX, usize::MAX).unwrap();
        let want: Vec<Entry> = entries(reader.first_seq(), 200)
            .into_iter()
            .filter(|e| e.room == room)
            .collect();
        assert_eq!(got, want);
    }
    assert_eq!(reader.epoch_of(reader.first_seq() - 1), None);
    drop(log);
    let (log, recovery, seen) = open(&options);
    assert_eq!(seen, entries(recovery.first_seq, 200));
    assert_eq!(log.first_seq(), recovery.first_seq);
}

#[test]
fn retention_by_bytes_drops_oldest_whole_segments_but_never_the_current_one() {
    let dir = TempDir::new().unwrap();
    let options = LogOptions {
        segment_bytes: 1000,
        retain_bytes: 3000,
        ..options(dir.path())
    };
    let (mut log, _, _) = open(&options);
    log.append(&entries(1, 100)).unwrap();
    log.check();
    let total: u64 = segment_files(dir.path())
        .iter()
        .map(|(_, path)| fs::metadata(path).unwrap().len())
        .sum();
    assert!(total <= 3000, "{total} bytes retained");
    assert!(
        total > 3000 - 1100,
        "only whole segments over the bound go: {total}"
    );
    let first = log.first_seq();
    assert_eq!(all(&log.reader()), entries(first, 100));

    // A bound smaller than one segment keeps just the segment being written.
    drop(log);
    let (mut log, _, _) = open(&LogOptions {
        retain_bytes: 0,
        retain_messages: 0,
        ..options.clone()
    });
    log.enforce_retention().unwrap();
    log.check();
    assert_eq!(segment_files(dir.path()).len(), 1);
    log.append(&entries(101, 101)).unwrap();
    log.check();
    assert_eq!(log.last_seq(), 101);
    assert!(log.reader().range(101, 101, 1).unwrap().len() == 1);
}

#[test]
fn room_queries_respect_their_bounds() {
    let dir = TempDir::new().unwrap();
    let (mut log, _, _) = open(&LogOptions {
        segment_bytes: 256,
        ..options(dir.path())
    });
    log.append(&entries(1, 30)).unwrap();
    let reader = log.reader();
    let seqs = |entries: Vec<Entry>| entries.iter().map(|e| e.seq).collect::<Vec<_>>();
    // "random" holds seqs 1, 4, 7, ..., 28.
    let after = |a, u, m| seqs(reader.room_after("random", a, u, m).unwrap());
    assert_eq!(
        after(0, u64::MAX, usize::MAX),
        (1..=28).step_by(3).collect::<Vec<_>>()
    );
    assert_eq!(
        after(1, 10, 100),
        vec![4, 7, 10],
        "after is exclusive, upto inclusive"
    );
    assert_eq!(after(0, 9, 2), vec![1, 4], "max keeps the oldest");
    assert_eq!(after(28, 100, 10), Vec::<u64>::new());
    assert_eq!(after(10, 4, 10), Vec::<u64>::new());
    assert_eq!(after(0, 100, 0), Vec::<u64>::new());
    let before = |b, l| seqs(reader.room_before("random", b, l).unwrap());
    assert_eq!(
        before(10, 2),
        vec![4, 7],
        "before is exclusive, newest kept"
    );
    assert_eq!(before(11, 2), vec![7, 10]);
    assert_eq!(before(2, 5), vec![1]);
    assert_eq!(before(1, 5), Vec::<u64>::new());
    assert_eq!(before(u64::MAX, 3), vec![22, 25, 28]);
    assert_eq!(before(u64::MAX, 0), Vec::<u64>::new());
    assert!(reader.room_after("nobody", 0, 100, 10).unwrap().is_empty());
    assert!(reader.room_before("nobody", 100, 10).unwrap().is_empty());
    let mut rooms = reader.rooms();
    rooms.sort();
    assert_eq!(rooms, vec!["general", "ops", "random"]);

    let range = |f, u, m| seqs(reader.range(f, u, m).unwrap());
    assert_eq!(range(0, 3, 10), vec![1, 2, 3]);
    assert_eq!(range(5, 5, 10), vec![5]);
    assert_eq!(range(28, 100, 10), vec![28, 29, 30]);
    assert_eq!(range(10, 20, 3), vec![10, 11, 12]);
    assert_eq!(range(31, 40, 3), Vec::<u64>::new());
    assert_eq!(range(6, 5, 3), Vec::<u64>::new());
    assert_eq!(range(1, 30, 0), Vec::<u64>::new());
    assert_eq!(reader.range(1, 30, usize::MAX).unwrap(), entries(1, 30));
}

#[test]
fn epoch_of_follows_epoch_changes() {
    let dir = TempDir::new().unwrap();
    let (mut log, _, _) = open(&options(dir.path()));
    let batch: Vec<Entry> = [1, 1, 2, 2, 2, 5, 6, 6]
        .iter()
        .enumerate()
        .map(|(i, &epoch)| Entry {
            epoch,
            ..entry(i as u64 + 1, "general")
        })
        .collect();
    log.append(&batch).unwrap();
    let reader = log.reader();
    let epochs: Vec<_> = (0..=9).map(|seq| reader.epoch_of(seq)).collect();
    let want = [
        None,
        Some(1),
        Some(1),
        Some(2),
        Some(2),
        Some(2),
        Some(5),
        Some(6),
        Some(6),
        None,
    ];
    assert_eq!(epochs, want);
    log.truncate_after(6).unwrap();
    log.check();
    assert_eq!(reader.epoch_of(6), Some(5));
    assert_eq!(reader.epoch_of(7), None);
    log.append(&[Entry {
        epoch: 7,
        ..entry(7, "general")
    }])
    .unwrap();
    assert_eq!(reader.epoch_of(7), Some(7));
    log.check();
}

#[test]
fn truncate_after_removes_the_tail_and_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let options = LogOptions {
        segment_bytes: 300,
        ..options(dir.path())
    };
    let (mut log, _, _) = open(&options);
    log.append(&entries(1, 50)).unwrap();
    let reader = log.reader();
    assert!(log.truncate_after(50).unwrap().is_empty());
    assert!(log.truncate_after(99).unwrap().is_empty());
    assert_eq!(log.truncate_after(45).unwrap(), entries(46, 50));
    log.check();
    // Cut exactly at a segment start: the emptied segment stays as the current one.
    let bases: Vec<u64> = segment_files(dir.path()).iter().map(|s| s.0).collect();
    let boundary = bases[bases.len() / 2];
    assert_eq!(
        log.truncate_after(boundary - 1).unwrap(),
        entries(boundary, 45)
    );
    log.check();
    assert_eq!(log.last_seq(), boundary - 1);
    assert_eq!(reader.last_seq(), boundary - 1);
    assert!(reader.range(boundary, 100, 100).unwrap().is_empty());
    let mut tail: Vec<Entry> = entries(boundary, boundary + 9);
    for e in &mut tail {
        e.epoch = 9;
        e.body = format!("rewritten {}", e.seq);
    }
    log.append(&tail).unwrap();
    log.check();
    drop(log);

    let (log, recovery, seen) = open(&options);
    assert!(recovery.notes.is_empty(), "{:?}", recovery.notes);
    let mut want = entries(1, boundary - 1);
    want.extend(tail);
    assert_eq!(seen, want);
    assert_eq!(all(&log.reader()), want);
    for room in ROOMS {
        let got = log.reader().room_after(room, 0, u64::MAX, 1000).unwrap();
        let want_room: Vec<_> = want.iter().filter(|e| e.room == room).cloned().collect();
        assert_eq!(got, want_room);
    }
}

#[test]
fn truncate_after_below_first_seq_restarts_numbering_there() {
    let dir = TempDir::new().unwrap();
    let options = LogOptions {
        segment_bytes: 300,
        retain_messages: 10,
        ..options(dir.path())
    };
    let (mut log, _, _) = open(&options);
    for seq in 1..=60 {
        log.append(&entries(seq, seq)).unwrap();
    }
    let first = log.first_seq();
    assert!(first > 20);
    assert_eq!(log.truncate_after(5).unwrap(), entries(first, 60));
    log.check();
    assert_eq!((log.first_seq(), log.last_seq()), (6, 5));
    assert!(log.reader().rooms().is_empty());
    log.append(&entries(6, 8)).unwrap();
    drop(log);
    let (mut log, _, seen) = open(&options);
    assert_eq!(seen, entries(6, 8));

    log.restart_at(1000).unwrap();
    log.check();
    assert_eq!((log.first_seq(), log.last_seq()), (1000, 999));
    assert!(matches!(
        log.append(&entries(9, 9)),
        Err(LogError::Gap { expected: 1000, .. })
    ));
    log.append(&entries(1000, 1001)).unwrap();
    drop(log);
    let (log, recovery, seen) = open(&options);
    assert_eq!(seen, entries(1000, 1001));
    assert_eq!(recovery.first_seq, 1000);
    assert_eq!(all(&log.reader()), entries(1000, 1001));
}

#[test]
fn reader_reports_a_flipped_byte_as_corruption() {
    let dir = TempDir::new().unwrap();
    let (mut log, _, _) = open(&options(dir.path()));
    log.append(&entries(1, 5)).unwrap();
    let (_, path) = &segment_files(dir.path())[0];
    let loc = index::read(&log.index).loc(3).unwrap();
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(b"X", u64::from(loc.offset + loc.len - 1))
        .unwrap();
    let error = log.reader().range(1, 5, 10).unwrap_err();
    assert!(
        matches!(&error, LogError::Corrupt { offset, damage: Damage::Crc { .. }, .. }
            if *offset == u64::from(loc.offset)),
        "{error}"
    );
    assert_eq!(log.reader().range(1, 2, 10).unwrap(), entries(1, 2));
    assert!(
        log.reader().room_after("general", 0, 10, 10).is_err(),
        "seq 3 is in general"
    );
    assert_eq!(
        log.reader().room_after("random", 0, 10, 10).unwrap().len(),
        2
    );
}

#[test]
fn readers_run_concurrently_with_appends_rolls_and_retention() {
    let dir = TempDir::new().unwrap();
    let (mut log, _, _) = open(&LogOptions {
        segment_bytes: 2000,
        retain_messages: 300,
        ..options(dir.path())
    });
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let reader = log.reader();
                let stop = &stop;
                scope.spawn(move || {
                    let mut queries = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let last = reader.last_seq();
                        let got = reader.range(last.saturating_sub(50), last, 100).unwrap();
                        for pair in got.windows(2) {
                            assert_eq!(pair[0].seq + 1, pair[1].seq);
                        }
                        for e in &got {
                            assert_eq!(*e, entry(e.seq, ROOMS[(e.seq % 3) as usize]));
                        }
                        let room = reader.room_before("ops", u64::MAX, 20).unwrap();
                        assert!(room.iter().all(|e| e.room == "ops" && e.seq % 3 == 2));
                        queries += 1;
                    }
                    queries
                })
            })
            .collect();
        for seq in (1..=3000).step_by(3) {
            log.append(&entries(seq, seq + 2)).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            assert!(reader.join().unwrap() > 0);
        }
    });
    log.check();
}

#[test]
fn fsync_mode_reads_lowercase_names() {
    let modes: Vec<FsyncMode> = serde_json::from_str(r#"["always", "batch", "never"]"#).unwrap();
    assert_eq!(
        modes,
        [FsyncMode::Always, FsyncMode::Batch, FsyncMode::Never]
    );
    assert!(serde_json::from_str::<FsyncMode>(r#""Always""#).is_err());
}

#[test]
fn the_writer_moves_between_threads_and_readers_are_shared() {
    fn send<T: Send>() {}
    fn shared<T: Clone + Send + Sync>() {}
    send::<Log>();
    shared::<LogReader>();
}

#[test]
fn invalid_options_are_refused() {
    let dir = TempDir::new().unwrap();
    for segment_bytes in [0, MIN_SEGMENT_BYTES - 1, MAX_SEGMENT_BYTES + 1] {
        let options = LogOptions {
            segment_bytes,
            ..options(dir.path())
        };
        assert!(matches!(
            Log::open(options, |_| {}),
            Err(LogError::Options(_))
        ));
    }
}

#[test]
fn a_file_full_of_random_bytes_opens_without_panic() {
    let dir = TempDir::new().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut garbage = vec![0u8; 1 << 20];
    rng.fill(&mut garbage[..]);
    fs::write(dir.path().join(segment::file_name(1)), &garbage).unwrap();
    // Valid magic, garbage after it; and a stray file that only looks like a segment.
    garbage[..8].copy_from_slice(segment::MAGIC);
    fs::write(dir.path().join(segment::file_name(5)), &garbage).unwrap();
    fs::write(dir.path().join("log-7.seg"), b"junk").unwrap();
    fs::write(dir.path().join("epoch"), b"not ours").unwrap();

    let options = options(dir.path());
    let mut seen = 0;
    let (mut log, recovery) = Log::open(options.clone(), |_| seen += 1).unwrap();
    assert_eq!(seen, 0);
    assert_eq!(
        (recovery.records, recovery.first_seq, recovery.last_seq),
        (0, 1, 0)
    );
    assert_eq!(recovery.truncated_bytes, 2 << 20);
    assert_eq!(recovery.notes.len(), 3, "{:#?}", recovery.notes);
    assert!(
        fs::read(dir.path().join("epoch")).is_ok(),
        "other files are left alone"
    );
    log.append(&entries(1, 3)).unwrap();
    drop(log);
    let (_, recovery, seen) = open(&options);
    assert_eq!(seen, entries(1, 3));
    assert_eq!(recovery.notes.len(), 1, "only the stray log-7.seg");
}

#[test]
fn a_gap_between_segments_cuts_the_log_there() {
    let dir = TempDir::new().unwrap();
    let options = LogOptions {
        segment_bytes: 300,
        ..options(dir.path())
    };
    let (mut log, _, _) = open(&options);
    log.append(&entries(1, 40)).unwrap();
    drop(log);
    let files = segment_files(dir.path());
    fs::remove_file(&files[2].1).unwrap();
    let (log, recovery, seen) = open(&options);
    assert_eq!(seen, entries(1, files[2].0 - 1));
    // One note for the segment after the gap, one per segment deleted (all after the gap).
    assert_eq!(
        recovery.notes.len(),
        1 + files.len() - 3,
        "{:#?}",
        recovery.notes
    );
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert_eq!(log.last_seq(), files[2].0 - 1);
}

/// With `preallocate`, the log leaves its growing first segment for a zeroed one as soon as
/// that is ready, appends into it without growing the file, reopens with no note, and a
/// reopen deletes the spare a crash left.
#[test]
fn appends_go_into_a_zeroed_segment_that_reopens_cleanly() {
    let dir = TempDir::new().unwrap();
    let options = LogOptions {
        segment_bytes: 64 << 10,
        ..options(dir.path())
    };
    let (mut log, _, _) = open(&options);
    log.preallocate();
    log.append(&entries(1, 5)).unwrap();
    log.wait_for_spare();
    log.append(&entries(6, 10)).unwrap();
    log.check();
    let files = segment_files(dir.path());
    assert_eq!(
        files.iter().map(|f| f.0).collect::<Vec<_>>(),
        [1, 6],
        "the first append's segment is left for the zeroed one"
    );
    assert_eq!(fs::metadata(&files[1].1).unwrap().len(), 64 << 10);
    for from in (11..400).step_by(10) {
        log.append(&entries(from, from + 9)).unwrap();
    }
    log.check();
    assert_eq!(
        fs::metadata(&files[1].1).unwrap().len(),
        64 << 10,
        "appends land in the zeros"
    );
    let stored = index::read(&log.index).total_bytes;
    let estimate = bytes_estimate(dir.path());
    assert!(
        (stored..stored + 2 * 4096).contains(&estimate),
        "estimate {estimate} for {stored} stored bytes"
    );
    log.wait_for_spare();
    drop(log);
    assert!(dir.path().join(spare::SPARE_NAME).exists());

    let (mut log, recovery, seen) = open(&options);
    assert!(recovery.notes.is_empty(), "{:?}", recovery.notes);
    assert!(seen == entries(1, 400), "{} records seen", seen.len());
    assert!(!dir.path().join(spare::SPARE_NAME).exists());
    log.append(&entries(401, 410)).unwrap();
    log.check();
    assert_eq!(fs::metadata(&files[1].1).unwrap().len(), 64 << 10);
}

/// A spare that cannot be zeroed (here its name is taken by a directory; in life, a full
/// disk) is reported once per attempt, one attempt a roll, and the log goes on appending to
/// files that grow.
#[test]
fn a_failed_zeroing_is_reported_and_appends_go_on() {
    let dir = TempDir::new().unwrap();
    let options = LogOptions {
        segment_bytes: 300,
        ..options(dir.path())
    };
    let (mut log, _, _) = open(&options);
    fs::create_dir(dir.path().join(spare::SPARE_NAME)).unwrap();
    log.preallocate();
    log.append(&entries(1, 1)).unwrap();
    log.wait_for_spare();
    log.append(&entries(2, 2)).unwrap();
    let warning = log.take_warning().expect("the failure is reported");
    assert!(warning.contains(spare::SPARE_NAME), "{warning}");
    assert_eq!(log.take_warning(), None, "once");
    // Each roll tries once more; none of them stops the appends.
    let mut warnings = 0;
    for seq in 3..=40 {
        log.append(&entries(seq, seq)).unwrap();
        warnings += usize::from(log.take_warning().is_some());
    }
    let rolls = segment_files(dir.path()).len();
    assert!(rolls > 5, "{rolls} segments");
    assert!(warnings < rolls, "{warnings} warnings for {rolls} segments");
    log.check();
    drop(log);
    fs::remove_dir(dir.path().join(spare::SPARE_NAME)).unwrap();
    let (_, recovery, seen) = open(&options);
    assert!(recovery.notes.is_empty(), "{:?}", recovery.notes);
    assert_eq!(seen, entries(1, 40));
}

/// Zeros after the last record are a zeroed segment's unused end, but bytes after zeros
/// are damage: a record written into the zeros and lost before its fsync, never
/// acknowledged, must not come back behind newer records.
#[test]
fn bytes_after_a_zeroed_end_are_cut_and_noted() {
    let dir = TempDir::new().unwrap();
    let options = options(dir.path());
    let (mut log, _, _) = open(&options);
    log.append(&entries(1, 10)).unwrap();
    let end = index::read(&log.index).current().bytes;
    drop(log);
    let path = &segment_files(dir.path())[0].1;
    let stray = {
        let (mut other, _, _) = open(&LogOptions {
            dir: dir.path().join("other"),
            ..options.clone()
        });
        other.append(&entries(1, 12)).unwrap();
        let bytes = fs::read(segment_files(&dir.path().join("other"))[0].1.clone()).unwrap();
        bytes[end as usize..].to_vec()
    };
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(end + 4096).unwrap();
    let (_, recovery, seen) = open(&options);
    assert!(recovery.notes.is_empty(), "{:?}", recovery.notes);
    assert_eq!(seen, entries(1, 10));

    // Records 11 and 12, whole and valid, one page past the end: not taken back.
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&stray, end + 4096).unwrap();
    let (log, recovery, seen) = open(&options);
    assert_eq!(seen, entries(1, 10));
    assert_eq!(recovery.notes.len(), 1, "{:?}", recovery.notes);
    assert_eq!(fs::metadata(path).unwrap().len(), end);
    log.check();
}

/// Byte range of each record on disk, in seq order: (file, start, end).
fn layout(log: &Log) -> Vec<(PathBuf, u64, u64)> {
    let index = index::read(&log.index);
    (index.first_seq..index.next_seq())
        .map(|seq| {
            let loc = index.loc(seq).unwrap();
            let path = index.segments[index.segment_of(seq)].file.path.clone();
            let start = u64::from(loc.offset);
            (path, start, start + u64::from(loc.len))
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Crash {
    /// Cut the last segment to `at % (len + 1)` bytes.
    Cut { at: u64 },
    /// XOR a nonzero `mask` into byte `at % total` of the concatenated segments.
    Flip { at: u64, mask: u8 },
}

fn crash() -> impl Strategy<Value = Crash> {
    prop_oneof![
        any::<u64>().prop_map(|at| Crash::Cut { at }),
        (any::<u64>(), 1u8..=255).prop_map(|(at, mask)| Crash::Flip { at, mask }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn recovery_keeps_exactly_the_records_before_the_damage(
        body_lens in proptest::collection::vec(0usize..120, 1..40),
        batch in 1usize..5,
        segment_bytes in MIN_SEGMENT_BYTES..600,
        crash in crash(),
        zeroed in any::<bool>(),
    ) {
        let dir = TempDir::new().unwrap();
        let options = LogOptions { segment_bytes, ..options(dir.path()) };
        let written: Vec<Entry> = body_lens
            .iter()
            .enumerate()
            .map(|(i, &len)| Entry { body: "b".repeat(len), ..entry(i as u64 + 1, ROOMS[i % 3]) })
            .collect();
        let (mut log, _, _) = open(&options);
        if zeroed {
            log.preallocate();
        }
        for chunk in written.chunks(batch) {
            if zeroed {
                // Every roll that can take a zeroed spare does, so the damage lands in
                // zeroed ends as well as in records.
                log.wait_for_spare();
            }
            log.append(chunk).unwrap();
        }
        log.check();
        let layout = layout(&log);
        drop(log);

        let files = segment_files(dir.path());
        // Records wholly before the damage survive; the damaged one and all after it go.
        let survivors = match crash {
            Crash::Cut { at } => {
                let (_, last) = files.last().unwrap();
                let len = fs::metadata(last).unwrap().len();
                let at = at % (len + 1);
                OpenOptions::new().write(true).open(last).unwrap().set_len(at).unwrap();
                layout.iter().take_while(|(path, _, end)| path != last || *end <= at).count()
            }
            Crash::Flip { at, mask } => {
                let sizes: Vec<u64> =
                    files.iter().map(|(_, p)| fs::metadata(p).unwrap().len()).collect();
                let mut at = at % sizes.iter().sum::<u64>();
                let mut file = 0;
                while at >= sizes[file] {
                    at -= sizes[file];
                    file += 1;
                }
                let path = &files[file].1;
                let handle = OpenOptions::new().read(true).write(true).open(path).unwrap();
                let mut byte = [0u8];
                handle.read_exact_at(&mut byte, at).unwrap();
                handle.write_all_at(&[byte[0] ^ mask], at).unwrap();
                // Files sort by base seq, so "earlier file" is "earlier in `files`".
                let earlier: Vec<&PathBuf> = files[..file].iter().map(|(_, p)| p).collect();
                layout
                    .iter()
                    .take_while(|(p, _, end)| earlier.contains(&p) || (p == path && *end <= at))
                    .count()
            }
        };

        let (mut log, recovery, seen) = open(&options);
        prop_assert_eq!(&seen[..], &written[..survivors]);
        prop_assert_eq!(recovery.records, survivors as u64);
        prop_assert_eq!(recovery.last_seq, survivors as u64);
        if matches!(crash, Crash::Flip { .. }) {
            prop_assert!(!recovery.notes.is_empty(), "a flipped byte is always noticed");
        }
        prop_assert_eq!(all(&log.reader()), seen.clone());

        let more = entries(survivors as u64 + 1, survivors as u64 + 5);
        log.append(&more).unwrap();
        log.check();
        drop(log);
        let (log, recovery, seen) = open(&options);
        let mut want = written[..survivors].to_vec();
        want.extend(more);
        prop_assert_eq!(&seen, &want);
        prop_assert!(recovery.notes.is_empty());
        prop_assert_eq!(all(&log.reader()), want);
    }

    #[test]
    fn random_segment_files_open_without_panic(
        files in proptest::collection::vec(
            (1u64..50, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..400)),
            1..4,
        ),
    ) {
        let dir = TempDir::new().unwrap();
        for (base, magic, mut bytes) in files {
            if magic {
                bytes.splice(0..0, segment::MAGIC.iter().copied());
            }
            fs::write(dir.path().join(segment::file_name(base)), bytes).unwrap();
        }
        let options = options(dir.path());
        let (mut log, recovery, _) = open(&options);
        let next = recovery.last_seq + 1;
        log.append(&entries(next, next + 2)).unwrap();
        drop(log);
        let (_, again, _) = open(&options);
        prop_assert_eq!(again.last_seq, next + 2);
        prop_assert!(again.notes.is_empty());
    }
}

/// Measures recovery speed; run with
/// `cargo test --release --lib log::tests::recovery_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn recovery_speed() {
    const RECORDS: u64 = 2_000_000;
    let dir = TempDir::new().unwrap();
    let options = LogOptions {
        segment_bytes: 64 << 20,
        ..options(dir.path())
    };
    let (mut log, _, _) = open(&options);
    let started = Instant::now();
    for from in (1..=RECORDS).step_by(1000) {
        log.append(&entries(from, from + 999)).unwrap();
    }
    let append_secs = started.elapsed().as_secs_f64();
    let bytes = index::read(&log.index).total_bytes;
    drop(log);

    let started = Instant::now();
    let mut visited = 0u64;
    let (_, recovery) = Log::open(options, |_| visited += 1).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(recovery.records, RECORDS);
    assert_eq!(visited, RECORDS);
    println!(
        "append: {:.0} records/s; recovery: {RECORDS} records, {} MiB in {:?}: {:.0} records/s",
        RECORDS as f64 / append_secs,
        bytes >> 20,
        elapsed,
        RECORDS as f64 / elapsed.as_secs_f64().max(1e-9),
    );
}
