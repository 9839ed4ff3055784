//! The log writer thread: appends what the core orders, makes it durable as the fsync mode
//! says, and reports the durable seq back through an atomic and a one-slot wake-up channel
//! (so the writer never blocks on the core, and the core never waits on the disk).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::entry::Entry;
use crate::log::{FsyncMode, Log};

/// What the writer publishes for the core.
#[derive(Default)]
pub struct Progress {
    /// Highest seq that is as durable as the fsync mode promises.
    pub durable_seq: AtomicU64,
    /// Oldest retained seq, after retention.
    pub first_seq: AtomicU64,
}

pub fn run(
    mut log: Log,
    mode: FsyncMode,
    appends: Receiver<Vec<Entry>>,
    progress: Arc<Progress>,
    wake: Sender<()>,
) {
    let report = |seq: u64| {
        progress.durable_seq.store(seq, Ordering::Release);
        // A full slot means a wake-up is already pending; the core reads the atomic.
        let _ = wake.try_send(());
    };
    let fatal = |what: &str, e: &dyn std::fmt::Display| -> ! {
        // A failed write or fsync leaves the log's durability unknown: never retry, stop.
        log::error!("log {what} failed: {e}; stopping so nothing unacknowledged is acked");
        std::process::exit(1);
    };
    while let Ok(first) = appends.recv() {
        let mut batch = first;
        // Group commit: everything that queued up while the last fsync ran goes in one.
        while let Ok(more) = appends.try_recv() {
            batch.extend(more);
        }
        match mode {
            FsyncMode::Always => {
                for entry in &batch {
                    if let Err(e) = log.append(std::slice::from_ref(entry)) {
                        fatal("append", &e);
                    }
                    if let Err(e) = log.sync() {
                        fatal("fsync", &e);
                    }
                    report(entry.seq);
                }
            }
            FsyncMode::Batch | FsyncMode::Never => {
                if let Err(e) = log.append(&batch) {
                    fatal("append", &e);
                }
                if mode == FsyncMode::Batch {
                    if let Err(e) = log.sync() {
                        fatal("fsync", &e);
                    }
                }
                if let Some(last) = batch.last() {
                    report(last.seq);
                }
            }
        }
        progress.first_seq.store(log.first_seq(), Ordering::Release);
    }
    if let Err(e) = log.sync() {
        log::error!("log fsync at shutdown failed: {e}");
    }
}
