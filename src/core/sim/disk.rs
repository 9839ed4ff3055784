//! A node's disk in the simulations: the log file, the epochs file and the orphans side
//! file, with fsync semantics. A crash of the process keeps what was written; a power cut
//! keeps only what was fsynced; a torn write keeps part of what was not.

use super::super::{EpochHistory, Node, Role};
use super::{core_config, PairKnobs};
use crate::entry::Entry;

/// What survives the process.
#[derive(Clone, Debug)]
pub struct Disk {
    /// Entries written to the log, consecutive by seq, durable or not.
    pub log: Vec<Entry>,
    /// The seq the log starts at (1 unless the primary made it restart).
    pub first_seq: u64,
    /// Everything up to here is fsynced: it survives even a power cut.
    pub synced_seq: u64,
    /// The epochs file: the epoch history's spans and the highest epoch seen.
    pub spans: Vec<(u64, u64)>,
    pub seen: u64,
    /// Batches cut from the log, kept to re-commit through the primary (`storage::ORPHANS_FILE`).
    pub orphans: Vec<Vec<Entry>>,
}

impl Default for Disk {
    fn default() -> Self {
        Disk {
            log: Vec::new(),
            first_seq: 1,
            synced_seq: 0,
            spans: Vec::new(),
            seen: 0,
            orphans: Vec::new(),
        }
    }
}

impl Disk {
    pub fn last_seq(&self) -> u64 {
        self.log.last().map_or(self.first_seq - 1, |e| e.seq)
    }

    /// (epoch, seq, "session/id") of each entry, to compare two logs.
    pub fn ids(&self) -> Vec<(u64, u64, String)> {
        self.log
            .iter()
            .map(|e| (e.epoch, e.seq, format!("{}/{}", e.session, e.id)))
            .collect()
    }

    /// The log writer appends `entry` (not yet fsynced). `node` names the writer.
    pub fn append(&mut self, node: &str, entry: Entry) {
        assert_eq!(
            entry.seq,
            self.last_seq() + 1,
            "node {node} appends seq {} after {}: the log would refuse the gap",
            entry.seq,
            self.last_seq()
        );
        self.log.push(entry);
    }

    /// An fsync up to `seq` completed.
    pub fn synced(&mut self, seq: u64) {
        self.synced_seq = self.synced_seq.max(seq);
    }

    /// The log is cut after `after_seq`: the cut entries, in order.
    pub fn truncate(&mut self, after_seq: u64) -> Vec<Entry> {
        let keep = self.log.iter().take_while(|e| e.seq <= after_seq).count();
        self.log.split_off(keep)
    }

    /// The log restarts empty at `first_seq` (a backup too far behind to catch up).
    pub fn restart_log(&mut self, first_seq: u64) {
        self.log.clear();
        self.first_seq = first_seq;
    }

    /// A power cut: what was written but not fsynced is gone.
    pub fn power_cut(&mut self) {
        let synced = self.synced_seq;
        self.log.retain(|e| e.seq <= synced);
    }

    /// A crash during a write: of what was written since the last fsync only the first
    /// `keep` entries reach the disk whole; the log's recovery cuts the torn one after them.
    pub fn tear(&mut self, keep: usize) {
        let synced = self.synced_seq;
        let mut unsynced = 0;
        self.log.retain(|e| {
            if e.seq <= synced {
                return true;
            }
            unsynced += 1;
            unsynced <= keep
        });
    }

    /// Node `i` recovered from this disk as `daemon::run` starts it: a backup that read its
    /// epochs file and replayed its log; everything it read counts as fsynced from now on.
    pub fn recover(&mut self, i: usize, knobs: PairKnobs) -> Node {
        let mut node = Node::new(
            core_config(i, knobs),
            Role::Backup,
            EpochHistory::from_spans(self.spans.clone()),
            self.seen,
        );
        for entry in &self.log {
            node.recover(entry);
        }
        node.finish_recovery();
        self.synced_seq = self.last_seq();
        node
    }

    /// The daemon saves the epochs file at start-up.
    pub fn save_epochs(&mut self, node: &Node) {
        self.spans = node.epochs().spans().to_vec();
        self.seen = node.seen_epoch();
    }
}
