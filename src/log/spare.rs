//! The next segment's file, zeroed ahead of need by a helper thread.
//!
//! An append that grows a file makes every fdatasync commit the file system's journal too
//! (the new size and blocks); an append into blocks already written and flushed makes it
//! flush data only: on this project's ext4 test machine, about two thirds of the time and
//! of the CPU per 10 KiB append + fdatasync (docs/benchmarks.md). So the
//! writer appends into a file of zeros: this module writes one, `segment_bytes` long, off
//! the writer's thread, and hands it over at the next roll.
//!
//! The spare never takes a file system's last room: it is written only while a segment's
//! worth stays free beside it (`check_room`), and a zeroing that stops (that rule, a full
//! disk, an I/O error) deletes its file, so on a filling disk the log's own appends keep
//! every byte the spare would have held.
//!
//! Owns the spare file (`SPARE_NAME` in the log directory) until it is handed over. It must
//! not touch segments: the writer renames the spare into one (`SegmentFile::adopt`).
//! Recovery reads zeros from a segment's last record to its end as unused space, not as
//! damage (`segment::scan`).

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The spare's name in the log directory; not a segment name, so a listing never mistakes
/// a half-zeroed spare for one.
pub(crate) const SPARE_NAME: &str = "next-segment.zero";

/// Zeros written, then flushed, at a time: the log's own fsync never queues behind more
/// than this much of the spare's write-back (1 MiB chunks tripled the log's fsync p99
/// beside a zeroing; docs/benchmarks.md, "Zeroed segments").
const ZERO_CHUNK_BYTES: usize = 256 << 10;

/// At most one spare exists or is being written at a time.
#[derive(Debug)]
pub(crate) struct Spare {
    path: PathBuf,
    bytes: u64,
    job: Option<JoinHandle<io::Result<File>>>,
    /// Set on drop: a zeroing nobody will take stops at its next chunk.
    cancel: Arc<AtomicBool>,
    /// Why the last zeroing failed, until the writer reports it.
    failed: Option<String>,
}

impl Spare {
    /// Starts zeroing a spare of `bytes` in `dir`, replacing any file of that name (an
    /// earlier run's spare may be half written).
    pub fn start(dir: &Path, bytes: u64) -> Spare {
        let mut spare = Spare {
            path: dir.join(SPARE_NAME),
            bytes,
            job: None,
            cancel: Arc::new(AtomicBool::new(false)),
            failed: None,
        };
        spare.spawn();
        spare
    }

    /// Whether a zeroed spare is waiting to be taken.
    pub fn ready(&self) -> bool {
        self.job.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// The zeroed spare, when it is ready; `None` while it is being written or after it
    /// failed (see `take_failure`). The caller renames it away, then calls `refill`.
    pub fn take(&mut self) -> Option<File> {
        if !self.ready() {
            return None;
        }
        let job = self.job.take().expect("ready means a job");
        let outcome = job
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the zeroing thread panicked")));
        match outcome {
            Ok(file) => Some(file),
            Err(e) => {
                self.failed = Some(format!("{}: {e}", self.path.display()));
                None
            }
        }
    }

    /// Starts zeroing the next spare unless one is under way. Only once the last one is
    /// renamed away: the new one is written under the same name. The writer calls this at
    /// every roll, so after a failure (a full disk) it tries again once a segment, not in
    /// a loop.
    pub fn refill(&mut self) {
        if self.job.is_none() {
            self.spawn();
        }
    }

    /// Why the last zeroing failed, once.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failed.take()
    }

    fn spawn(&mut self) {
        let (path, bytes, cancel) = (self.path.clone(), self.bytes, Arc::clone(&self.cancel));
        let job = std::thread::Builder::new()
            .name("log-spare".into())
            .spawn(move || zero_file(&path, bytes, &cancel));
        match job {
            Ok(job) => self.job = Some(job),
            Err(e) => self.failed = Some(format!("starting the zeroing thread: {e}")),
        }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        // The thread is not joined: it stops at its next chunk, and the next `start`
        // replaces what it left.
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Writes `bytes` zeros to a new file at `path`, flushing each chunk as it goes. A zeroing
/// that fails deletes its file: a half-written spare on a full disk would keep its room
/// from the log. A cancelled one is left alone: the next `start` may already have made a
/// new file under this name.
fn zero_file(path: &Path, bytes: u64, cancel: &AtomicBool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    match fill_zeros(&file, bytes, cancel) {
        Ok(()) => Ok(file),
        Err(e) => {
            if !cancel.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(path);
            }
            Err(e)
        }
    }
}

fn fill_zeros(file: &File, bytes: u64, cancel: &AtomicBool) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut at = 0u64;
    while at < bytes {
        if cancel.load(Ordering::Relaxed) {
            return Err(io::Error::new(ErrorKind::Interrupted, "cancelled"));
        }
        let stat = rustix::fs::fstatvfs(file)?;
        check_room(
            stat.f_bavail.saturating_mul(stat.f_frsize),
            bytes - at,
            bytes,
        )?;
        let n = (bytes - at).min(ZERO_CHUNK_BYTES as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        file.sync_data()?;
        at += n as u64;
    }
    Ok(())
}

/// Whether the file system, with `free` bytes free to this process, may take the `left`
/// bytes of zeros still to write and keep one segment (`segment_bytes`) free beside them:
/// the room the current segment needs to grow if no spare is ready when it fills.
fn check_room(free: u64, left: u64, segment_bytes: u64) -> io::Result<()> {
    if left
        .checked_add(segment_bytes)
        .is_some_and(|need| free >= need)
    {
        return Ok(());
    }
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    Err(io::Error::new(
        ErrorKind::StorageFull,
        format!(
            "the file system has {:.1} MiB free: {:.1} MiB more of zeros would leave less than a segment ({:.1} MiB) for the log",
            mib(free),
            mib(left),
            mib(segment_bytes)
        ),
    ))
}

/// Whether `bytes` holds only zeros (a spare's unused end).
pub(crate) fn all_zero(bytes: &[u8]) -> bool {
    // An OR over each page, with no early exit inside it, compiles to vector code: recovery
    // checks up to a whole segment's unused end this way.
    bytes
        .chunks(4096)
        .all(|page| page.iter().fold(0, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spare_keeps_a_segment_free_beside_it() {
        let segment = 64 << 20;
        assert!(check_room(2 * segment, segment, segment).is_ok());
        let short = check_room(2 * segment - 1, segment, segment).unwrap_err();
        assert_eq!(short.kind(), ErrorKind::StorageFull);
        assert!(short.to_string().contains("128.0 MiB free"), "{short}");
        // Halfway through, only the rest of the zeros counts.
        assert!(check_room(segment + segment / 2, segment / 2, segment).is_ok());
        assert!(check_room(u64::MAX, u64::MAX, segment).is_err());
    }

    /// No file system has an exabyte free: the zeroing stops before its first chunk,
    /// deletes the file it made, and says why once.
    #[test]
    fn a_zeroing_without_room_leaves_no_file_and_says_why() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut spare = Spare::start(dir.path(), 1 << 60);
        while !spare.ready() {
            std::thread::yield_now();
        }
        assert!(spare.take().is_none());
        let why = spare.take_failure().expect("a failure");
        assert!(
            why.contains(SPARE_NAME) && why.contains("MiB free"),
            "{why}"
        );
        assert_eq!(spare.take_failure(), None);
        assert!(!dir.path().join(SPARE_NAME).exists());
    }
}
