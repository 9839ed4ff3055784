//! [`LogReader`]: queries over the retained records, run by many threads at once while the
//! writer appends.
//!
//! Each query plans under the index read lock (which records, in which segment, at which
//! offset), drops the lock, then reads with positional reads on the shared segment handles and
//! checks every record's crc and seq. It must never hold the lock across I/O and never panic on
//! what it reads.

use std::sync::{Arc, RwLock};

use super::index::{self, Index, Loc};
use super::record::{self, Damage};
use super::segment::SegmentFile;
use super::LogError;
use crate::entry::Entry;

/// Most bytes one positional read fetches when adjacent records are read together. Large
/// enough that a catch-up `range` costs one syscall per MiB, small enough to bound the
/// per-query buffer (a single larger record is still read whole).
const MAX_READ_RUN_BYTES: usize = 1 << 20;

/// How often a query is re-planned when records it planned to read were removed from the end
/// of the log meanwhile (`truncate_after`). That happens on a step-down, at most once per
/// epoch change, so a second collision in a row is already vanishingly unlikely.
const MAX_READ_ATTEMPTS: usize = 3;

/// A cheap, cloneable handle for querying the log from any thread.
///
/// A record dropped by retention after a query planned it is still read (the unlinked file
/// stays readable through the shared handle), so a reader never sees a half-dropped segment.
#[derive(Clone, Debug)]
pub struct LogReader {
    pub(super) index: Arc<RwLock<Index>>,
}

/// What one query will read, copied out of the index so the lock can be dropped.
struct Plan {
    /// `Index::rewrites` when planned.
    rewrites: u64,
    /// Distinct segments of `items`, in order.
    segments: Vec<Arc<SegmentFile>>,
    items: Vec<Item>,
}

struct Item {
    seq: u64,
    /// Position in `Plan::segments`.
    segment: usize,
    loc: Loc,
}

impl Plan {
    fn new(rewrites: u64, capacity: usize) -> Plan {
        Plan {
            rewrites,
            segments: Vec::new(),
            items: Vec::with_capacity(capacity),
        }
    }

    /// Adds retained `seq`; seqs must be added in ascending order.
    fn add(&mut self, index: &Index, seq: u64) {
        let Some(loc) = index.loc(seq) else { return };
        let file = &index.segments[index.segment_of(seq)].file;
        if !self.segments.last().is_some_and(|s| Arc::ptr_eq(s, file)) {
            self.segments.push(Arc::clone(file));
        }
        self.items.push(Item {
            seq,
            segment: self.segments.len() - 1,
            loc,
        });
    }
}

impl LogReader {
    /// Entries of `room` with `after < seq <= upto`, ascending, at most `max`.
    pub fn room_after(
        &self,
        room: &str,
        after: u64,
        upto: u64,
        max: usize,
    ) -> Result<Vec<Entry>, LogError> {
        self.query(|index| {
            let Some(seqs) = index.rooms.get(room) else {
                return Plan::new(index.rewrites, 0);
            };
            let seqs = seqs.between(after, upto, max);
            plan_seqs(index, seqs.iter().copied(), seqs.len())
        })
    }

    /// The newest `limit` entries of `room` with `seq < before`, returned ascending.
    pub fn room_before(
        &self,
        room: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, LogError> {
        self.query(|index| {
            let Some(seqs) = index.rooms.get(room) else {
                return Plan::new(index.rewrites, 0);
            };
            let seqs = seqs.newest_below(before, limit);
            plan_seqs(index, seqs.iter().copied(), seqs.len())
        })
    }

    /// All entries with `from <= seq <= upto`, ascending, at most `max`. Seqs below
    /// `first_seq()` are no longer retained and are skipped, so a caller that needs `from`
    /// exactly (replication catch-up) checks the first entry's seq.
    pub fn range(&self, from: u64, upto: u64, max: usize) -> Result<Vec<Entry>, LogError> {
        self.query(|index| {
            let from = from.max(index.first_seq);
            let upto = upto.min(index.last_seq());
            if from > upto || max == 0 {
                return Plan::new(index.rewrites, 0);
            }
            // Retained seqs fit in memory, so the count fits usize.
            let count = ((upto - from) as usize).saturating_add(1).min(max);
            plan_seqs(index, from..from + count as u64, count)
        })
    }

    /// Epoch of the record with this seq, if retained.
    pub fn epoch_of(&self, seq: u64) -> Option<u64> {
        index::read(&self.index).epoch_of(seq)
    }

    /// Seq of the oldest retained record, or `last_seq() + 1` when none is retained.
    pub fn first_seq(&self) -> u64 {
        index::read(&self.index).first_seq
    }

    /// Seq of the newest record; 0 when nothing was ever appended.
    pub fn last_seq(&self) -> u64 {
        index::read(&self.index).last_seq()
    }

    /// Names of rooms that have retained messages.
    pub fn rooms(&self) -> Vec<String> {
        index::read(&self.index)
            .rooms
            .keys()
            .map(|room| room.to_string())
            .collect()
    }

    /// Plans under the read lock with `select`, then reads outside it; re-plans if a
    /// concurrent `truncate_after` changed records under the read.
    fn query(&self, select: impl Fn(&Index) -> Plan) -> Result<Vec<Entry>, LogError> {
        let mut attempts = 1;
        loop {
            let plan = select(&index::read(&self.index));
            match execute(&plan) {
                Ok(entries) => return Ok(entries),
                Err(error) => {
                    let rewritten = index::read(&self.index).rewrites != plan.rewrites;
                    if !rewritten || attempts >= MAX_READ_ATTEMPTS {
                        return Err(error);
                    }
                    attempts += 1;
                }
            }
        }
    }
}

fn plan_seqs(index: &Index, seqs: impl Iterator<Item = u64>, count: usize) -> Plan {
    let mut plan = Plan::new(index.rewrites, count);
    for seq in seqs {
        plan.add(index, seq);
    }
    plan
}

/// Reads and verifies the planned records, fetching runs of adjacent records with one
/// positional read each.
fn execute(plan: &Plan) -> Result<Vec<Entry>, LogError> {
    let items = &plan.items;
    let mut entries = Vec::with_capacity(items.len());
    let mut buf = Vec::new();
    let mut first = 0;
    while first < items.len() {
        let head = &items[first];
        let mut end = first + 1;
        let mut run_bytes = head.loc.len as usize;
        while let Some(next) = items.get(end) {
            let previous = &items[end - 1];
            let adjacent = next.segment == head.segment
                && u64::from(next.loc.offset)
                    == u64::from(previous.loc.offset) + u64::from(previous.loc.len);
            if !adjacent || run_bytes + next.loc.len as usize > MAX_READ_RUN_BYTES {
                break;
            }
            run_bytes += next.loc.len as usize;
            end += 1;
        }
        let segment = &plan.segments[head.segment];
        let corrupt = |offset: u32, damage| LogError::Corrupt {
            path: segment.path.clone(),
            offset: u64::from(offset),
            damage,
        };
        buf.resize(run_bytes, 0);
        let got = segment.read_up_to(&mut buf, u64::from(head.loc.offset))?;
        if got < run_bytes {
            return Err(corrupt(
                head.loc.offset,
                Damage::Torn {
                    needed: run_bytes,
                    available: got,
                },
            ));
        }
        let mut at = 0;
        for item in &items[first..end] {
            let len = item.loc.len as usize;
            let entry = record::decode_exact(&buf[at..at + len], item.seq)
                .map_err(|damage| corrupt(item.loc.offset, damage))?;
            entries.push(entry);
            at += len;
        }
        first = end;
    }
    Ok(entries)
}
