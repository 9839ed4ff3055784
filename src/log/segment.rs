//! One segment file: its name (`log-<first seq, 20 digits>.seg`), its magic header, creating
//! it, cutting it, and the recovery scan that validates every record in it.
//!
//! Owns the file-level I/O of a single segment. It must not decide what to do about damage
//! (cutting later segments, notes): it reports where the valid prefix ends and why, and
//! `Log::open` acts on that.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{self, Damage, Parsed};
use super::{spare, LogError};
use crate::entry::Entry;

pub(crate) use super::record::MAGIC;
pub(crate) const MAGIC_BYTES: u64 = MAGIC.len() as u64;

/// Largest byte offset a record may end at. Index entries store offsets as u32 to halve the
/// index; `LogOptions::validate` keeps `segment_bytes` far enough below this that a segment
/// never reaches it (a segment outgrows `segment_bytes` by at most one record).
pub(crate) const MAX_SEGMENT_END: u64 = u32::MAX as u64;

/// Largest seq a segment name may carry. Far beyond any reachable seq; it keeps
/// `base + records` arithmetic free of overflow for any name found on disk.
pub(crate) const MAX_BASE_SEQ: u64 = u64::MAX >> 1;

/// Bytes read per syscall during recovery: large enough that a scan is bound by parsing, not
/// syscalls, small enough to be a negligible allocation.
const RECOVERY_READ_BYTES: usize = 4 << 20;

const PREFIX: &str = "log-";
const SUFFIX: &str = ".seg";
const SEQ_DIGITS: usize = 20;

/// An open segment, shared by the writer and readers (`Arc<SegmentFile>`). All I/O on it is
/// positional (`read_at`/`write_all_at`), so sharing the handle never races on a cursor.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    /// Seq of the first record the segment holds or will hold.
    pub base_seq: u64,
    pub path: PathBuf,
    pub file: File,
}

pub(crate) fn file_name(base_seq: u64) -> String {
    format!("{PREFIX}{base_seq:0width$}{SUFFIX}", width = SEQ_DIGITS)
}

/// The base seq named by a segment file name, or `None` if the name is not one.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse()
        .ok()
        .filter(|base| (1..=MAX_BASE_SEQ).contains(base))
}

/// Whether `name` looks like it was meant to be a segment (so a bad one deserves a note,
/// while other files that share the data directory are left alone silently).
pub(crate) fn looks_like_segment(name: &str) -> bool {
    name.starts_with(PREFIX) && name.ends_with(SUFFIX)
}

pub(crate) fn io_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io {
        path,
        action,
        source,
    }
}

impl SegmentFile {
    /// Creates an empty segment (magic header only). A file already there with this name can
    /// only be left over from a crash (recovery deletes every segment past the log's end), so
    /// it is overwritten.
    pub fn create(dir: &Path, base_seq: u64) -> Result<SegmentFile, LogError> {
        let path = dir.join(file_name(base_seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_error(&path, "create segment"))?;
        file.write_all_at(MAGIC, 0)
            .map_err(io_error(&path, "write segment header"))?;
        Ok(SegmentFile {
            base_seq,
            path,
            file,
        })
    }

    /// Makes the zeroed `spare` file (at `spare_path`) the segment for records from
    /// `base_seq` on. The header is flushed before the file takes a segment's name, so a
    /// segment never starts with zeros; a file already there with that name is a crash's
    /// leftover, as in `create`, and is replaced.
    pub fn adopt(
        spare: File,
        spare_path: &Path,
        dir: &Path,
        base_seq: u64,
    ) -> Result<SegmentFile, LogError> {
        let path = dir.join(file_name(base_seq));
        spare
            .write_all_at(MAGIC, 0)
            .and_then(|()| spare.sync_data())
            .map_err(io_error(spare_path, "write segment header"))?;
        std::fs::rename(spare_path, &path).map_err(io_error(&path, "rename spare segment"))?;
        Ok(SegmentFile {
            base_seq,
            path,
            file: spare,
        })
    }

    /// Opens an existing segment for reading and writing (an older segment becomes the one
    /// being written again after `truncate_after`).
    pub fn open(path: PathBuf, base_seq: u64) -> Result<SegmentFile, LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path, "open segment"))?;
        Ok(SegmentFile {
            base_seq,
            path,
            file,
        })
    }

    /// Cuts the file to `valid_end` bytes. A cut inside the magic header rewrites the header,
    /// leaving an empty segment that still records the next seq in its name.
    pub fn cut(&self, valid_end: u64) -> Result<(), LogError> {
        let error = || io_error(&self.path, "truncate segment");
        if valid_end < MAGIC_BYTES {
            self.file.set_len(0).map_err(error())?;
            self.file.write_all_at(MAGIC, 0).map_err(error())?;
        } else {
            self.file.set_len(valid_end).map_err(error())?;
        }
        Ok(())
    }

    /// Reads at `offset` until `buf` is full or the file ends; returns the bytes read.
    pub fn read_up_to(&self, buf: &mut [u8], offset: u64) -> Result<usize, LogError> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&self.path, "read segment")(e)),
            }
        }
        Ok(done)
    }

    pub fn len(&self) -> Result<u64, LogError> {
        Ok(self
            .file
            .metadata()
            .map_err(io_error(&self.path, "stat segment"))?
            .len())
    }
}

/// Bytes of `path` before its zeroed end, about: the first 4 KiB page from which every
/// page is zeros, found by halving (so a page of zeros amid records ends it early).
pub(crate) fn used_bytes_estimate(path: &Path) -> io::Result<u64> {
    const PAGE: u64 = 4096;
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut page = [0u8; PAGE as usize];
    let mut zero_at = |at: u64| -> io::Result<bool> {
        let n = file.read_at(&mut page, at)?;
        Ok(spare::all_zero(&page[..n]))
    };
    // Invariant: the data ends after page `lo` starts and at or before page `hi` starts.
    let (mut lo, mut hi) = (0, len.div_ceil(PAGE));
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        if zero_at(mid * PAGE)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok((hi * PAGE).min(len))
}

/// What a recovery scan found in one segment.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    pub records: u64,
    /// Offset just past the last valid record (or 0 if even the header is bad).
    pub valid_end: u64,
    pub file_bytes: u64,
    /// Why the scan stopped before `file_bytes`; `None` when the whole file is valid.
    pub damage: Option<Damage>,
}

/// Location of one valid record found by [`scan`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found {
    pub offset: u32,
    pub len: u32,
}

/// Validates every record of `segment` in order: length bound, crc, seq continuity from the
/// segment's base, payload decoding. Calls `on_record` for each valid record and stops at the
/// first damage, unless only zeros follow the last valid record (the unused end of a zeroed
/// segment). Reads `RECOVERY_READ_BYTES` at a time into `buf` (reused across segments).
/// Never panics on any file contents.
pub(crate) fn scan(
    segment: &SegmentFile,
    buf: &mut Vec<u8>,
    on_record: impl FnMut(Entry, Found),
) -> Result<ScanOutcome, LogError> {
    let mut outcome = scan_records(segment, buf, on_record)?;
    if outcome.damage.is_some()
        && outcome.valid_end >= MAGIC_BYTES
        && zeros_between(segment, buf, outcome.valid_end, outcome.file_bytes)?
    {
        // A zeroed segment's unused end (`spare`): nothing was ever written there. Anything
        // else after the last record is damage, even zeros followed by bytes: a record
        // written into the zeros and lost before its fsync was never acknowledged.
        outcome.damage = None;
    }
    Ok(outcome)
}

/// Whether the file holds only zeros from `from` to `to`.
fn zeros_between(
    segment: &SegmentFile,
    buf: &mut [u8],
    from: u64,
    to: u64,
) -> Result<bool, LogError> {
    let mut at = from;
    while at < to {
        let want = usize::try_from(to - at).map_or(buf.len(), |rest| rest.min(buf.len()));
        let got = segment.read_up_to(&mut buf[..want], at)?;
        if got == 0 {
            // The file shrank under us: what is left of it was checked.
            return Ok(true);
        }
        if !spare::all_zero(&buf[..got]) {
            return Ok(false);
        }
        at += got as u64;
    }
    Ok(true)
}

/// `scan` up to the first record that does not check out.
fn scan_records(
    segment: &SegmentFile,
    buf: &mut Vec<u8>,
    mut on_record: impl FnMut(Entry, Found),
) -> Result<ScanOutcome, LogError> {
    let file_bytes = segment.len()?;
    let mut outcome = ScanOutcome {
        records: 0,
        valid_end: 0,
        file_bytes,
        damage: None,
    };
    let mut magic = [0u8; MAGIC.len()];
    let header_ok = file_bytes >= MAGIC_BYTES
        && segment.read_up_to(&mut magic, 0)? == magic.len()
        && &magic == MAGIC;
    if !header_ok {
        outcome.damage = Some(Damage::BadMagic);
        return Ok(outcome);
    }
    outcome.valid_end = MAGIC_BYTES;

    // The window buf[start..end] holds file bytes from `window_offset`; records are parsed
    // from `start`, and the unparsed tail is moved to the front before each read. The buffer
    // starts at one read's size (or the file's, if smaller) and grows only to hold one record.
    let first_read = usize::try_from(file_bytes).map_or(RECOVERY_READ_BYTES, |file_bytes| {
        file_bytes.min(RECOVERY_READ_BYTES)
    });
    if buf.len() < first_read {
        buf.resize(first_read, 0);
    }
    let mut window_offset = MAGIC_BYTES;
    let mut start = 0usize;
    let mut end = 0usize;
    loop {
        let record_offset = window_offset + start as u64;
        match record::parse(&buf[start..end]) {
            Parsed::Record { record, len } => {
                let expected = segment.base_seq + outcome.records;
                let record_end = record_offset + len as u64;
                if record_end > MAX_SEGMENT_END {
                    outcome.damage = Some(Damage::Oversized {
                        offset: record_offset,
                        max: MAX_SEGMENT_END,
                    });
                    return Ok(outcome);
                }
                match record::decode(&record, expected) {
                    Ok(entry) => {
                        // Both fit: record_end <= MAX_SEGMENT_END == u32::MAX.
                        let found = Found {
                            offset: record_offset as u32,
                            len: len as u32,
                        };
                        on_record(entry, found);
                    }
                    Err(damage) => {
                        outcome.damage = Some(damage);
                        return Ok(outcome);
                    }
                }
                outcome.records += 1;
                outcome.valid_end = record_end;
                start += len;
            }
            Parsed::Incomplete { needed } => {
                let file_rest = file_bytes - (window_offset + end as u64);
                if file_rest == 0 {
                    if start < end {
                        outcome.damage = Some(Damage::Torn {
                            needed,
                            available: end - start,
                        });
                    }
                    return Ok(outcome);
                }
                buf.copy_within(start..end, 0);
                window_offset += start as u64;
                end -= start;
                start = 0;
                // `parse` bounds `needed` by HEADER_BYTES + MAX_RECORD_BYTES, so this growth is
                // bounded, and after the read the window holds the whole record unless the
                // file ends first.
                if buf.len() < needed {
                    buf.resize(needed, 0);
                }
                let want = (buf.len() - end).min(usize::try_from(file_rest).unwrap_or(usize::MAX));
                let got =
                    segment.read_up_to(&mut buf[end..end + want], window_offset + end as u64)?;
                if got == 0 {
                    // The file shrank under us; treat what we have as its end.
                    if start < end {
                        outcome.damage = Some(Damage::Torn {
                            needed,
                            available: end - start,
                        });
                    }
                    return Ok(outcome);
                }
                end += got;
            }
            Parsed::Damaged(damage) => {
                outcome.damage = Some(damage);
                return Ok(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_look_alikes() {
        assert_eq!(file_name(1), "log-00000000000000000001.seg");
        assert_eq!(parse_file_name(&file_name(1)), Some(1));
        assert_eq!(
            parse_file_name(&file_name(MAX_BASE_SEQ)),
            Some(MAX_BASE_SEQ)
        );
        for bad in [
            "log-00000000000000000000.seg",
            "log-99999999999999999999.seg",
            "log-1.seg",
            "log-0000000000000000000a.seg",
            "log-00000000000000000001.seg.tmp",
            "epoch",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }
}
