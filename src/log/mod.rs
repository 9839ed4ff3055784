//! The append-only, checksummed segment log and its in-memory indexes.
//!
//! Owns the segment files `log-<first seq, 20 digits>.seg` in the data directory, crash
//! recovery, retention, and the indexes that readers query. It must not decide what to append
//! or when to fsync (the core and the daemon do, the latter per [`FsyncMode`]), and it does not
//! log: what recovery cut is returned in [`Recovery::notes`] for the caller to report.
//!
//! Layout:
//! - `record`: pure codec of one record, `len | crc | epoch | seq | payload`, and [`Damage`].
//! - `segment`: one segment file: name, magic header, creation, cutting, the recovery scan.
//! - `index`: the in-memory indexes, shared by the writer and readers behind one `RwLock`.
//! - `reader`: [`LogReader`], concurrent positional reads with crc checks.
//! - `spare`: the next segment's file, zeroed ahead by a helper thread once
//!   [`Log::preallocate`] asks for it, so appends do not grow files.
//!
//! Concurrency: one [`Log`] is owned by the single writer thread. It does its file I/O first
//! and then updates the index under a short write lock, so a reader either does not see a
//! record yet or finds its bytes already in the page cache. Nobody holds the lock across I/O.
//!
//! On disk, segments hold consecutive seqs with no gaps; every segment but the last holds at
//! least one record; a segment's name is the seq of its first record (or, for an empty last
//! segment, the seq the next record will get). A segment's file may run on past its last
//! record in zeros (a zeroed spare's unused end); only the index knows where records end.
//! Startup and crash recovery are one code path: [`Log::open`] keeps the longest valid
//! prefix and cuts everything after the first damage.

mod index;
mod reader;
mod record;
mod room_seqs;
mod segment;
mod spare;
#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use thiserror::Error;

use crate::entry::Entry;
use index::{Index, Loc};
pub use reader::LogReader;
pub use record::{Damage, MAX_RECORD_BYTES};
use segment::{io_error, SegmentFile, MAGIC_BYTES, MAX_SEGMENT_END};
use spare::Spare;

/// Smallest `segment_bytes`: below a few records per segment, every append creates a file.
/// Low enough that tests can roll segments every few records.
pub const MIN_SEGMENT_BYTES: u64 = 64;

/// Largest `segment_bytes`. Index offsets are u32 and a segment outgrows `segment_bytes` by
/// at most one record, so this leaves ample room below `u32::MAX`; and 1 GiB files are already
/// coarse units for retention to drop.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

const _: () = assert!(
    MAX_SEGMENT_BYTES + (record::HEADER_BYTES + MAX_RECORD_BYTES) as u64 <= MAX_SEGMENT_END
);

/// When the daemon fsyncs the log (the log itself only fsyncs when asked, via [`Log::sync`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Before acknowledging each append.
    Always,
    /// Once per batch of appends.
    Batch,
    /// Never; the OS writes back in its own time.
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// Directory holding the segment files; created if missing. Other files in it are left
    /// alone.
    pub dir: PathBuf,
    /// A segment is closed and a new one started once it holds at least this many bytes.
    pub segment_bytes: u64,
    /// Retention: whole oldest segments are dropped while more records than this are kept...
    pub retain_messages: u64,
    /// ...or while the segments take more bytes than this. The segment being written is
    /// never dropped, so either bound may be exceeded by up to one segment.
    pub retain_bytes: u64,
}

impl LogOptions {
    pub fn validate(&self) -> Result<(), LogError> {
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return Err(LogError::Options(format!(
                "segment_bytes {} is outside {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}",
                self.segment_bytes
            )));
        }
        Ok(())
    }
}

/// What [`Log::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Records retained and visited.
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Bytes cut from damaged segments plus the sizes of segments deleted after them.
    pub truncated_bytes: u64,
    /// One line per thing cut or ignored: file, offset, bytes, cause. Empty after a clean
    /// shutdown.
    pub notes: Vec<String>,
}

#[derive(Debug, Error)]
pub enum LogError {
    #[error("log {}: {action}: {source}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("log append: entry has seq {got}, expected {expected}")]
    Gap { expected: u64, got: u64 },
    #[error(
        "log append: entry {seq} has a {payload_bytes}-byte payload, over the {max_bytes}-byte limit"
    )]
    RecordTooLarge {
        seq: u64,
        payload_bytes: usize,
        max_bytes: usize,
    },
    #[error("log segment {}: record at offset {offset}: {damage}", .path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        damage: Damage,
    },
    #[error("log options: {0}")]
    Options(String),
}

/// The log's single writer.
#[derive(Debug)]
pub struct Log {
    options: LogOptions,
    index: Arc<RwLock<Index>>,
    /// The segment appends go to; always the index's last segment.
    current: Arc<SegmentFile>,
    /// Valid bytes of `current`: where the next record goes.
    current_bytes: u64,
    /// Length of `current`'s file: past `current_bytes` when it was a zeroed spare. An
    /// append beyond it grows the file (a slower fsync, see `spare`).
    current_file_bytes: u64,
    /// Zeroes the next segment ahead, once `preallocate` asked for it.
    spare: Option<Spare>,
    current_records: u64,
    /// Older segments written since the last `sync`, which it must flush too.
    unsynced: Vec<Arc<SegmentFile>>,
    /// `current` was written since the last `sync`.
    current_dirty: bool,
    /// A segment was created or deleted since the last `sync`, so the directory needs fsync.
    dir_dirty: bool,
    /// The data directory, kept open to fsync it.
    dir: File,
    /// Encoded records of one `append`; reused so appends do not allocate.
    buf: Vec<u8>,
    /// Length of each record in `buf`; reused.
    record_lens: Vec<u32>,
}

impl Log {
    /// Opens or creates the log in `options.dir`. Crash recovery and normal start are one
    /// code path: every segment is scanned and each record's length, crc, seq and payload
    /// checked; at the first damage the segment is cut there and every later segment deleted,
    /// with a line in [`Recovery::notes`] for each. Never panics on any file contents.
    /// Calls `visit` for every surviving record in seq order so the caller can rebuild its
    /// own state.
    ///
    /// Retention is not applied here (it would drop records `visit` already saw); the first
    /// `append` or [`Log::enforce_retention`] applies it.
    pub fn open(
        options: LogOptions,
        mut visit: impl FnMut(&Entry),
    ) -> Result<(Log, Recovery), LogError> {
        options.validate()?;
        let dir_path = options.dir.clone();
        fs::create_dir_all(&dir_path).map_err(io_error(&dir_path, "create directory"))?;
        let dir = File::open(&dir_path).map_err(io_error(&dir_path, "open directory"))?;
        remove_stale_spare(&dir_path)?;
        let mut notes = Vec::new();
        let listing = list_segments(&dir_path, &mut notes)?;

        let mut index: Option<Index> = None;
        let mut truncated_bytes = 0;
        let mut changed = false;
        let mut buf = Vec::new();
        let mut rest = listing.into_iter();
        while let Some((base_seq, path)) = rest.next() {
            if let Some(index) = &index {
                if base_seq != index.next_seq() {
                    notes.push(format!(
                        "{}: starts at seq {base_seq} but the log continues at {}: deleting it \
                         and every later segment",
                        path.display(),
                        index.next_seq()
                    ));
                    let later = std::iter::once(path).chain(rest.by_ref().map(|(_, path)| path));
                    truncated_bytes += delete_segments(later, &mut notes)?;
                    changed = true;
                    break;
                }
            }
            let segment = Arc::new(SegmentFile::open(path, base_seq)?);
            let index = match &mut index {
                Some(index) => {
                    index.push_segment(Arc::clone(&segment));
                    index
                }
                None => index.insert(Index::new(Arc::clone(&segment))),
            };
            let outcome = segment::scan(&segment, &mut buf, |entry, found| {
                let loc = Loc {
                    offset: found.offset,
                    len: found.len,
                };
                index.push(entry.seq, entry.epoch, &entry.room, loc);
                visit(&entry);
            })?;
            if let Some(damage) = outcome.damage {
                let cut_bytes = outcome.file_bytes.saturating_sub(outcome.valid_end);
                notes.push(format!(
                    "{}: cut {cut_bytes} bytes at offset {}: {damage}",
                    segment.path.display(),
                    outcome.valid_end
                ));
                segment.cut(outcome.valid_end)?;
                truncated_bytes += cut_bytes;
                changed = true;
                let later = rest.by_ref().map(|(_, path)| path);
                truncated_bytes += delete_segments(later, &mut notes)?;
                break;
            }
        }
        let index = match index {
            Some(index) => index,
            None => {
                changed = true;
                Index::new(Arc::new(SegmentFile::create(&dir_path, 1)?))
            }
        };

        let current = Arc::clone(&index.current().file);
        let recovery = Recovery {
            records: index.records() as u64,
            first_seq: index.first_seq,
            last_seq: index.last_seq(),
            truncated_bytes,
            notes,
        };
        let mut log = Log {
            current_bytes: index.current().bytes,
            current_file_bytes: current.len()?,
            spare: None,
            current_records: index.next_seq() - current.base_seq,
            current,
            index: Arc::new(RwLock::new(index)),
            options,
            unsynced: Vec::new(),
            current_dirty: changed,
            dir_dirty: changed,
            dir,
            buf: Vec::new(),
            record_lens: Vec::new(),
        };
        if changed {
            // Make the cut durable before anything is built on top of it, so a second crash
            // cannot bring deleted segments back behind newer records.
            log.sync()?;
        }
        Ok((log, recovery))
    }

    /// From now on, zero the next segment's file ahead on a helper thread and append into
    /// it (`spare`): for fsync modes that flush every append. The segment being written when
    /// this is called is left as soon as a zeroed one is ready.
    pub fn preallocate(&mut self) {
        if self.spare.is_none() {
            self.spare = Some(Spare::start(&self.options.dir, self.options.segment_bytes));
        }
    }

    /// Why zeroing a spare failed, once (the log then appends to growing files until the
    /// next roll tries again); for the caller to report.
    pub fn take_warning(&mut self) -> Option<String> {
        self.spare.as_mut().and_then(Spare::take_failure)
    }

    /// Appends `entries`, whose seqs must be `last_seq() + 1, + 2, ...` (else `Gap`, and
    /// nothing is written). Encodes all records into a reused buffer and writes them with one
    /// positional write per segment touched, rolling to a new segment once the current one
    /// holds `segment_bytes`. Readers see the entries as soon as this returns. Does not fsync.
    /// Applies retention afterwards.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        let next_seq = self.last_seq() + 1;
        for (i, entry) in entries.iter().enumerate() {
            let expected = next_seq + i as u64;
            if entry.seq != expected {
                return Err(LogError::Gap {
                    expected,
                    got: entry.seq,
                });
            }
        }
        if entries.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        self.record_lens.clear();
        for entry in entries {
            match record::encode(entry, &mut self.buf) {
                // Fits: at most HEADER_BYTES + MAX_RECORD_BYTES.
                Ok(len) => self.record_lens.push(len as u32),
                Err(Damage::TooLarge {
                    payload_bytes,
                    max_bytes,
                }) => {
                    return Err(LogError::RecordTooLarge {
                        seq: entry.seq,
                        payload_bytes,
                        max_bytes,
                    })
                }
                Err(other) => unreachable!("encode only fails with TooLarge, got {other}"),
            }
        }

        if let Some(zeroed) = self.zeroed_to_leave_for(self.buf.len() as u64) {
            self.roll(entries[0].seq, Some(zeroed))?;
        }
        let mut first = 0;
        let mut buf_start = 0;
        while first < entries.len() {
            if self.current_records > 0 && self.current_bytes >= self.options.segment_bytes {
                let zeroed = self.spare.as_mut().and_then(Spare::take);
                self.roll(entries[first].seq, zeroed)?;
            }
            // Take records while the segment is below segment_bytes; an empty segment takes
            // at least one, so every segment but the last holds records.
            let mut end = first;
            let mut bytes = 0u64;
            while end < entries.len()
                && (end == first || self.current_bytes + bytes < self.options.segment_bytes)
            {
                bytes += u64::from(self.record_lens[end]);
                end += 1;
            }
            let buf_end = buf_start + bytes as usize;
            self.write_to_current(entries, first..end, buf_start..buf_end)?;
            first = end;
            buf_start = buf_end;
        }
        self.enforce_retention()?;
        Ok(())
    }

    /// The zeroed spare to roll into before `bytes` more would grow the current file, if
    /// one is ready and the current segment holds records (every segment but the last must).
    fn zeroed_to_leave_for(&mut self, bytes: u64) -> Option<File> {
        if self.current_records == 0 || self.current_bytes + bytes <= self.current_file_bytes {
            return None;
        }
        self.spare.as_mut()?.take()
    }

    /// Writes the already-encoded `records` of `entries` (at `bytes` in `buf`) to the current
    /// segment, then indexes them.
    fn write_to_current(
        &mut self,
        entries: &[Entry],
        records: Range<usize>,
        bytes: Range<usize>,
    ) -> Result<(), LogError> {
        let offset = self.current_bytes;
        let written_len = (bytes.end - bytes.start) as u64;
        assert!(
            offset + written_len <= MAX_SEGMENT_END,
            "segment offset fits u32"
        );
        self.current_dirty = true;
        if let Err(source) = self.current.file.write_all_at(&self.buf[bytes], offset) {
            // Best effort: drop a partial write so the file ends at the last whole record.
            // If this fails too, recovery cuts the torn tail on the next start.
            let _ = self.current.file.set_len(offset);
            self.current_file_bytes = offset;
            return Err(LogError::Io {
                path: self.current.path.clone(),
                action: "append",
                source,
            });
        }
        let count = records.len() as u64;
        let mut index = index::write(&self.index);
        let mut at = offset;
        for (entry, &len) in entries[records.clone()]
            .iter()
            .zip(&self.record_lens[records])
        {
            // Fits: asserted above.
            let loc = Loc {
                offset: at as u32,
                len,
            };
            index.push(entry.seq, entry.epoch, &entry.room, loc);
            at += u64::from(len);
        }
        drop(index);
        self.current_bytes += written_len;
        self.current_file_bytes = self.current_file_bytes.max(self.current_bytes);
        self.current_records += count;
        Ok(())
    }

    /// Starts a new empty segment for records from `base_seq` on: the `zeroed` spare when
    /// one was ready, else a new file that appends grow.
    fn roll(&mut self, base_seq: u64, zeroed: Option<File>) -> Result<(), LogError> {
        let dir = &self.options.dir;
        let segment = Arc::new(match zeroed {
            Some(file) => SegmentFile::adopt(file, &dir.join(spare::SPARE_NAME), dir, base_seq)?,
            None => SegmentFile::create(dir, base_seq)?,
        });
        if let Some(spare) = &mut self.spare {
            spare.refill();
        }
        let file_bytes = segment.len()?;
        self.dir_dirty = true;
        index::write(&self.index).push_segment(Arc::clone(&segment));
        let previous = std::mem::replace(&mut self.current, segment);
        if self.current_dirty {
            self.unsynced.push(previous);
        }
        // The new file's header is unsynced data too.
        self.current_dirty = true;
        self.current_bytes = MAGIC_BYTES;
        self.current_file_bytes = file_bytes;
        self.current_records = 0;
        Ok(())
    }

    /// Flushes every segment written since the last sync, then the directory if segments were
    /// created or deleted. The caller must treat an error as fatal: after a failed fsync the
    /// kernel may have dropped the dirty pages, so retrying would falsely report success.
    pub fn sync(&mut self) -> Result<(), LogError> {
        for segment in &self.unsynced {
            segment
                .file
                .sync_data()
                .map_err(io_error(&segment.path, "fsync"))?;
        }
        self.unsynced.clear();
        if self.current_dirty {
            self.current
                .file
                .sync_data()
                .map_err(io_error(&self.current.path, "fsync"))?;
            self.current_dirty = false;
        }
        if self.dir_dirty {
            self.dir
                .sync_all()
                .map_err(io_error(&self.options.dir, "fsync directory"))?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Removes every record with seq > `seq` (a node stepping down whose log diverged) and
    /// returns them in order. Fsyncs before returning: the removal must not be undone by a
    /// crash once the caller has acted on it. With `seq` below `first_seq() - 1` the log
    /// continues empty at `seq + 1`.
    pub fn truncate_after(&mut self, seq: u64) -> Result<Vec<Entry>, LogError> {
        let (first_seq, last_seq) = (self.first_seq(), self.last_seq());
        if seq >= last_seq {
            return Ok(Vec::new());
        }
        let removed = self.reader().range(seq + 1, last_seq, usize::MAX)?;
        if seq + 1 < first_seq {
            self.restart_at(seq + 1)?;
            return Ok(removed);
        }
        let cut = index::write(&self.index).truncate_after(seq);
        cut.segment.cut(cut.bytes)?;
        self.current_dirty = true;
        if !cut.removed.is_empty() {
            self.dir_dirty = true;
        }
        delete_files(&cut.removed)?;
        self.current = cut.segment;
        self.current_bytes = cut.bytes;
        self.current_file_bytes = self.current.len()?;
        self.current_records = seq + 1 - self.current.base_seq;
        self.sync()?;
        Ok(removed)
    }

    /// Discards every record and continues, empty, at `next_seq`: for a node that must follow
    /// a log whose oldest retained record is beyond its own end. Fsyncs before returning.
    /// A crash midway leaves either the old log or an empty log at seq 1, both states the
    /// caller's catch-up already handles.
    pub fn restart_at(&mut self, next_seq: u64) -> Result<(), LogError> {
        if !(1..=segment::MAX_BASE_SEQ).contains(&next_seq) {
            return Err(LogError::Options(format!(
                "restart at seq {next_seq}: outside 1..={}",
                segment::MAX_BASE_SEQ
            )));
        }
        // Unlink the old files before creating the new one, which may reuse an old name:
        // readers still holding old handles keep reading the old inodes, never a rewritten one.
        let old: Vec<_> = index::read(&self.index)
            .segments
            .iter()
            .map(|s| Arc::clone(&s.file))
            .collect();
        delete_files(&old)?;
        let segment = Arc::new(SegmentFile::create(&self.options.dir, next_seq)?);
        index::write(&self.index).restart(Arc::clone(&segment));
        self.unsynced.clear();
        self.current = segment;
        self.current_bytes = MAGIC_BYTES;
        self.current_file_bytes = MAGIC_BYTES;
        self.current_records = 0;
        self.current_dirty = true;
        self.dir_dirty = true;
        self.sync()
    }

    /// Drops whole oldest segments while more than `retain_messages` records or more than
    /// `retain_bytes` bytes are retained, never the segment being written. Returns the
    /// number of segments dropped. `append` calls this; it is public for after `open`.
    pub fn enforce_retention(&mut self) -> Result<u64, LogError> {
        let mut dropped = 0;
        loop {
            let segment = {
                let mut index = index::write(&self.index);
                let over = index.records() as u64 > self.options.retain_messages
                    || index.total_bytes > self.options.retain_bytes;
                if !over || index.segments.len() < 2 {
                    break;
                }
                index.drop_oldest_segment()
            };
            // Readers that planned reads in it keep reading through their shared handle.
            delete_files(std::slice::from_ref(&segment))?;
            self.unsynced.retain(|s| !Arc::ptr_eq(s, &segment));
            self.dir_dirty = true;
            dropped += 1;
        }
        Ok(dropped)
    }

    /// Seq of the oldest retained record, or `last_seq() + 1` when none is retained.
    pub fn first_seq(&self) -> u64 {
        index::read(&self.index).first_seq
    }

    /// Seq of the newest record; 0 when nothing was ever appended.
    pub fn last_seq(&self) -> u64 {
        index::read(&self.index).last_seq()
    }

    pub fn reader(&self) -> LogReader {
        LogReader {
            index: Arc::clone(&self.index),
        }
    }
}

/// The segments in `dir`, ascending by base seq. Names that look like segments but do not
/// parse get a note; other files are someone else's and are left alone.
fn list_segments(dir: &Path, notes: &mut Vec<String>) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut segments = Vec::new();
    for dir_entry in fs::read_dir(dir).map_err(io_error(dir, "list directory"))? {
        let dir_entry = dir_entry.map_err(io_error(dir, "list directory"))?;
        let path = dir_entry.path();
        let Some(name) = dir_entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        match segment::parse_file_name(&name) {
            Some(base_seq) => segments.push((base_seq, path)),
            None if segment::looks_like_segment(&name) => {
                notes.push(format!(
                    "{}: ignored: not a valid segment name",
                    path.display()
                ));
            }
            None => {}
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// Deletes the segment files at `paths` during recovery, noting each; returns their bytes.
fn delete_segments(
    paths: impl Iterator<Item = PathBuf>,
    notes: &mut Vec<String>,
) -> Result<u64, LogError> {
    let mut bytes = 0;
    for path in paths {
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(&path).map_err(io_error(&path, "delete segment"))?;
        notes.push(format!(
            "{}: deleted {len} bytes: follows damage earlier in the log",
            path.display()
        ));
        bytes += len;
    }
    Ok(bytes)
}

/// Deletes the files of segments the index no longer (or is about to no longer) hold.
fn delete_files(segments: &[Arc<SegmentFile>]) -> Result<(), LogError> {
    for segment in segments {
        match fs::remove_file(&segment.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&segment.path, "delete segment")(e)),
        }
    }
    Ok(())
}

/// About how many bytes of records the log in `dir` holds, read before [`Log::open`] to
/// size what recovery fills (0 when nothing can be read). Each segment counts up to its
/// zeroed end, found by halving over 4 KiB pages: a page of zeros amid records would be
/// taken for the end, so this is an estimate, never used for anything but sizing.
pub fn bytes_estimate(dir: &Path) -> u64 {
    let mut notes = Vec::new();
    let segments = list_segments(dir, &mut notes).unwrap_or_default();
    segments
        .iter()
        .filter_map(|(_, path)| segment::used_bytes_estimate(path).ok())
        .sum()
}

/// Deletes a spare an earlier run left (it may be half zeroed; `preallocate` starts anew).
fn remove_stale_spare(dir: &Path) -> Result<(), LogError> {
    let path = dir.join(spare::SPARE_NAME);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&path, "remove spare")(e)),
        _ => Ok(()),
    }
}
