//! The log writer thread: the one owner of the log and of the node's persisted epochs.
//!
//! It appends what the core orders and makes it durable as the fsync mode says; cuts the
//! log where a new primary says it parts from ours, keeping what is cut in a side file for
//! re-commit; and saves the epoch history. Doing all of these on one thread, in the order
//! the core issued them, is what keeps "epochs saved before the first entry of a new epoch"
//! and "cut before the new entries land" true. It reports progress through atomics and
//! one-slot wake-up channels, so it never blocks on the core and the core never waits on
//! the disk.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::queue::QueueReceiver;

use super::state;
use crate::core::epochs::EpochHistory;
use crate::entry::Entry;
use crate::log::{FsyncMode, Log};
use crate::wire::replication::{encode, PeerFrame};

/// Entries per record of the orphans side file.
const ORPHANS_PER_FRAME: usize = 256;
/// The side file of messages cut from this node's log, waiting to be re-committed.
pub const ORPHANS_FILE: &str = "orphans";

/// Work for the log writer, in the core's order.
#[derive(Debug)]
pub enum LogCommand {
    Append(Vec<Entry>),
    Truncate {
        after_seq: u64,
    },
    Restart {
        first_seq: u64,
    },
    SaveEpochs {
        spans: Vec<(u64, u64)>,
        seen: u64,
    },
    /// The first `bytes` of the orphans file are re-committed: drop them. (Only this thread
    /// writes the file, and only appends, so the prefix is what the reader saw.)
    ConsumeOrphans {
        bytes: u64,
    },
}

/// Durable progress as one word: the log generation (bumped by each cut) in the top 16
/// bits, the seq below, so a reader never pairs a seq with the wrong generation.
pub fn pack_durable(generation: u64, seq: u64) -> u64 {
    (generation << 48) | (seq & ((1 << 48) - 1))
}

pub fn unpack_durable(word: u64) -> (u64, u64) {
    (word >> 48, word & ((1 << 48) - 1))
}

/// What the writer publishes.
#[derive(Default)]
pub struct Progress {
    /// `pack_durable(generation, seq)`: seq is as durable as the fsync mode promises.
    pub durable: AtomicU64,
    /// Highest seq written to the log (readable by the replication stream), durable or not.
    pub appended_seq: AtomicU64,
    /// Oldest retained seq, after retention.
    pub first_seq: AtomicU64,
}

pub struct Writer {
    /// `fsync` observes each log fsync's duration.
    pub latencies: Arc<super::histogram::Latencies>,
    pub log: Log,
    pub mode: FsyncMode,
    pub data_dir: PathBuf,
    pub commands: QueueReceiver<LogCommand>,
    pub progress: Arc<Progress>,
    /// Pokes the core that `durable` moved.
    pub durable_wake: Sender<()>,
    /// Pokes the replication stream that `appended_seq` moved.
    pub appended_wake: Sender<()>,
}

fn fatal(what: &str, e: &dyn std::fmt::Display) -> ! {
    // A failed write or fsync leaves durability unknown: never retry, stop.
    log::error!("log {what} failed: {e}; stopping so that nothing unsure is acknowledged");
    std::process::exit(1);
}

impl Writer {
    pub fn run(mut self) {
        let mut generation = 0;
        while let Some(first) = self.commands.recv() {
            let mut batch: Vec<Entry> = Vec::new();
            let mut next = Some(first);
            // Group commit: everything that queued up while the last fsync ran goes in one,
            // up to the first command that is not an append (order matters there).
            while let Some(command) = next.take() {
                match command {
                    LogCommand::Append(entries) => batch.extend(entries),
                    other => {
                        self.flush(&mut batch, generation);
                        generation = self.apply(other, generation);
                    }
                }
                if let Some(more) = self.commands.try_recv() {
                    next = Some(more);
                } else {
                    // Before closing the group, let the threads that share this core run
                    // once: when the core's first append wakes this thread, the socket
                    // worker and the core are often still turning the rest of a client's
                    // burst into appends, and an fsync started now would leave that rest
                    // for the next one (a group, an fsync and a write per member each).
                    // With the whole daemon on one core this took a sender with 64 in
                    // flight from 1.42 M to 1.79 M deliveries/s at N = 100 (pair: 1.14 M
                    // to 1.61 M; docs/benchmarks.md). With a core to itself it costs one
                    // syscall per group.
                    std::thread::yield_now();
                    if let Some(more) = self.commands.try_recv() {
                        next = Some(more);
                    }
                }
            }
            self.flush(&mut batch, generation);
            self.progress
                .first_seq
                .store(self.log.first_seq(), Ordering::Release);
        }
        if let Err(e) = self.log.sync() {
            log::error!("log fsync at shutdown failed: {e}");
        }
    }

    fn report(&self, generation: u64, seq: u64) {
        self.progress
            .durable
            .store(pack_durable(generation, seq), Ordering::Release);
        // A full slot means a wake-up is already pending; the core reads the atomic.
        let _ = self.durable_wake.try_send(());
    }

    fn appended(&self, seq: u64) {
        self.progress.appended_seq.store(seq, Ordering::Release);
        let _ = self.appended_wake.try_send(());
    }

    /// Fsyncs the log, timed for `pbchat_log_fsync_seconds`; a failure is fatal.
    fn sync(&mut self) {
        let started = std::time::Instant::now();
        if let Err(e) = self.log.sync() {
            fatal("fsync", &e);
        }
        self.latencies.fsync.observe(started.elapsed());
    }

    fn flush(&mut self, batch: &mut Vec<Entry>, generation: u64) {
        if batch.is_empty() {
            return;
        }
        if let Some(why) = self.log.take_warning() {
            log::warn!("log: zeroing the next segment failed ({why}); appends grow files until the next segment tries again");
        }
        match self.mode {
            FsyncMode::Always => {
                for entry in batch.iter() {
                    if let Err(e) = self.log.append(std::slice::from_ref(entry)) {
                        fatal("append", &e);
                    }
                    self.appended(entry.seq);
                    self.sync();
                    self.report(generation, entry.seq);
                }
            }
            FsyncMode::Batch | FsyncMode::Never => {
                if let Err(e) = self.log.append(batch) {
                    fatal("append", &e);
                }
                let last = batch.last().expect("not empty").seq;
                // The backup may receive entries while they are being fsynced here.
                self.appended(last);
                if self.mode == FsyncMode::Batch {
                    self.sync();
                }
                self.report(generation, last);
            }
        }
        batch.clear();
    }

    fn apply(&mut self, command: LogCommand, generation: u64) -> u64 {
        match command {
            LogCommand::Append(_) => unreachable!("appends are batched by the caller"),
            LogCommand::SaveEpochs { spans, seen } => {
                let history = EpochHistory::from_spans(spans);
                if let Err(e) = state::save_epochs(&self.data_dir, &history, seen) {
                    fatal("saving epochs", &e);
                }
                generation
            }
            LogCommand::Truncate { after_seq } => {
                let cut = match self.log.truncate_after(after_seq) {
                    Ok(cut) => cut,
                    Err(e) => fatal("truncate", &e),
                };
                if !cut.is_empty() {
                    if let Err(e) = self.keep_orphans(&cut) {
                        fatal("writing the orphans file", &e);
                    }
                    log::warn!(
                        "log cut after seq {after_seq}: {} messages ({}..{}) kept in {} to re-commit through the primary",
                        cut.len(),
                        cut[0].seq,
                        cut[cut.len() - 1].seq,
                        self.data_dir.join(ORPHANS_FILE).display()
                    );
                }
                let generation = generation + 1;
                self.appended(self.log.last_seq());
                self.report(generation, self.log.last_seq());
                generation
            }
            LogCommand::ConsumeOrphans { bytes } => {
                if let Err(e) = consume_orphans(&self.data_dir, bytes) {
                    log::warn!("{}: {e}", self.data_dir.join(ORPHANS_FILE).display());
                }
                generation
            }
            LogCommand::Restart { first_seq } => {
                if let Err(e) = self.log.restart_at(first_seq) {
                    fatal("restart", &e);
                }
                let generation = generation + 1;
                self.appended(self.log.last_seq());
                self.report(generation, self.log.last_seq());
                generation
            }
        }
    }

    /// Appends cut entries to the side file and fsyncs it before the cut is final.
    fn keep_orphans(&self, cut: &[Entry]) -> std::io::Result<()> {
        let path = self.data_dir.join(ORPHANS_FILE);
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut bytes = Vec::new();
        for chunk in cut.chunks(ORPHANS_PER_FRAME) {
            encode(
                &PeerFrame::Resubmit {
                    entries: chunk.to_vec(),
                },
                &mut bytes,
            );
        }
        file.write_all(&bytes)?;
        file.sync_all()
    }
}

/// Removes the first `bytes` of the orphans file (the whole file when that is all of it).
fn consume_orphans(data_dir: &std::path::Path, bytes: u64) -> std::io::Result<()> {
    let path = data_dir.join(ORPHANS_FILE);
    let all = std::fs::read(&path)?;
    if all.len() as u64 <= bytes {
        std::fs::remove_file(&path)?;
        log::info!(
            "every message kept aside is re-committed; removed {}",
            path.display()
        );
        return Ok(());
    }
    let tmp = data_dir.join(format!("{ORPHANS_FILE}.tmp"));
    std::fs::write(&tmp, &all[bytes as usize..])?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// The orphans file's batches and how many bytes they came from.
pub fn read_orphans_with_len(
    data_dir: &std::path::Path,
) -> std::io::Result<(Vec<Vec<Entry>>, u64)> {
    let len = match std::fs::metadata(data_dir.join(ORPHANS_FILE)) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    Ok((read_orphans(data_dir)?, len))
}

/// Reads the orphans side file: batches of entries to resubmit, in order.
pub fn read_orphans(data_dir: &std::path::Path) -> std::io::Result<Vec<Vec<Entry>>> {
    let path = data_dir.join(ORPHANS_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut batches = Vec::new();
    let mut pos = 0;
    loop {
        match crate::wire::replication::decode_prefix(&bytes[pos..]) {
            Ok(Some((frame, used))) => {
                pos += used;
                if let PeerFrame::Resubmit { entries } = frame {
                    batches.push(entries);
                }
            }
            Ok(None) => break,
            Err(e) => {
                // A torn last record (crash while writing it): what came before stands.
                log::warn!("{}: {e}; using the records before it", path.display());
                break;
            }
        }
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_word_round_trips() {
        assert_eq!(unpack_durable(pack_durable(3, 123_456)), (3, 123_456));
        assert_eq!(unpack_durable(pack_durable(0, 0)), (0, 0));
    }
}
