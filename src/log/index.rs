//! The in-memory indexes over the retained records: seq -> location, room -> seqs,
//! seq -> epoch, and the list of retained segments.
//!
//! Owns only memory: it must not do file I/O, because it lives behind the `RwLock` that the
//! writer and every reader share, and the lock is never held across I/O. The writer mutates it
//! after its file I/O succeeded; readers copy what they need out of it and drop the lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::room_seqs::RoomSeqs;
use super::segment::{SegmentFile, MAGIC_BYTES};

/// Where one record lives inside its segment. Only the offset is stored (4 bytes per
/// retained record): the segment is found by seq among the few segments, and the length is
/// where the next record starts, or the segment's end for its last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub offset: u32,
    /// Whole record, header included.
    pub len: u32,
}

#[derive(Debug)]
pub(crate) struct IndexedSegment {
    pub file: Arc<SegmentFile>,
    /// Bytes of the file that hold valid records, magic header included.
    pub bytes: u64,
}

pub(crate) struct Index {
    /// Seq of `locs[0]`; when `locs` is empty, the seq the next record will get.
    /// Invariant: equals `segments[0].file.base_seq`.
    pub first_seq: u64,
    /// Seq `first_seq + i` starts at `offsets[i]` in its segment: seqs are dense, so no key
    /// is stored; records are adjacent, so no length (`loc`).
    pub offsets: VecDeque<u32>,
    /// Retained segments, oldest first; the last is the one being written. Invariants: never
    /// empty; each segment's base is the previous base plus the previous record count; every
    /// segment but the last holds at least one record.
    pub segments: VecDeque<IndexedSegment>,
    /// (first seq, epoch) of each run of consecutive records with one epoch, ascending.
    /// Epochs change rarely, so this stays tiny where a per-record epoch would cost 8 bytes.
    pub epochs: VecDeque<(u64, u64)>,
    /// Seqs of each room's retained records, ascending. A room whose last record goes is
    /// removed, so the keys are exactly the rooms with retained messages.
    pub rooms: HashMap<Arc<str>, RoomSeqs>,
    /// Sum of `segments[..].bytes`, compared against `retain_bytes`.
    pub total_bytes: u64,
    /// Bumped whenever records are removed from the end (`truncate_after`, `restart_at`), after
    /// which their file bytes may be cut or rewritten. A reader that finds a record it planned
    /// to read changed re-plans if this moved, and reports corruption if it did not.
    pub rewrites: u64,
}

/// The fewest slots a per-record list grows by at once.
const GROWTH_MIN: usize = 16;

/// Appends to a per-record list (one entry per retained record), growing it by a quarter
/// rather than doubling it: a full list grown by doubling holds up to twice the records, and
/// both copies live while it moves (three times the list), which is what sets a busy node's
/// peak RSS; by a quarter, 1.25 and 2.25 times, for a few more (cheap, 4-byte) copies.
fn push_growing_by_a_quarter<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() == list.capacity() {
        list.reserve_exact((list.len() / 4).max(GROWTH_MIN));
    }
    list.push_back(item);
}

/// What `Index::truncate_after` took out, for the writer to carry out on disk.
pub(crate) struct Cut {
    /// Segments wholly past the cut, to delete.
    pub removed: Vec<Arc<SegmentFile>>,
    /// The segment the cut falls in, which becomes the one being written.
    pub segment: Arc<SegmentFile>,
    /// Its new length.
    pub bytes: u64,
}

impl std::fmt::Debug for Index {
    /// A summary: the full index has an entry per retained record.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("first_seq", &self.first_seq)
            .field("last_seq", &self.last_seq())
            .field("segments", &self.segments.len())
            .field("rooms", &self.rooms.len())
            .field("total_bytes", &self.total_bytes)
            .field("rewrites", &self.rewrites)
            .finish()
    }
}

pub(crate) fn read(lock: &RwLock<Index>) -> RwLockReadGuard<'_, Index> {
    // Only the writer mutates the index and a writer panic aborts the process in production,
    // so a poisoned lock is only seen in tests; the data is still the last consistent state.
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write(lock: &RwLock<Index>) -> RwLockWriteGuard<'_, Index> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl Index {
    /// An index over one empty segment.
    pub fn new(segment: Arc<SegmentFile>) -> Index {
        Index {
            first_seq: segment.base_seq,
            offsets: VecDeque::new(),
            segments: VecDeque::from([IndexedSegment {
                file: segment,
                bytes: MAGIC_BYTES,
            }]),
            epochs: VecDeque::new(),
            rooms: HashMap::new(),
            total_bytes: MAGIC_BYTES,
            rewrites: 0,
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.records() as u64
    }

    /// Retained records.
    pub fn records(&self) -> usize {
        self.offsets.len()
    }

    /// 0 when nothing was ever appended (first_seq 1).
    pub fn last_seq(&self) -> u64 {
        self.next_seq() - 1
    }

    pub fn is_retained(&self, seq: u64) -> bool {
        seq >= self.first_seq && seq < self.next_seq()
    }

    pub fn current(&self) -> &IndexedSegment {
        self.segments.back().expect("index always has a segment")
    }

    /// Adds an empty segment after the current one; appends go to it from now on.
    pub fn push_segment(&mut self, file: Arc<SegmentFile>) {
        assert_eq!(
            file.base_seq,
            self.next_seq(),
            "segment base must continue the log"
        );
        assert!(
            self.current().file.base_seq < file.base_seq,
            "only the last segment may be empty"
        );
        self.segments.push_back(IndexedSegment {
            file,
            bytes: MAGIC_BYTES,
        });
        self.total_bytes += MAGIC_BYTES;
    }

    /// Records that seq `seq` was written at `loc` in the current segment.
    pub fn push(&mut self, seq: u64, epoch: u64, room: &str, loc: Loc) {
        assert_eq!(seq, self.next_seq(), "seqs are appended densely");
        let current = self
            .segments
            .back_mut()
            .expect("index always has a segment");
        assert_eq!(u64::from(loc.offset), current.bytes, "records are adjacent");
        current.bytes += u64::from(loc.len);
        self.total_bytes += u64::from(loc.len);
        push_growing_by_a_quarter(&mut self.offsets, loc.offset);
        if self.epochs.back().map(|&(_, e)| e) != Some(epoch) {
            self.epochs.push_back((seq, epoch));
        }
        match self.rooms.get_mut(room) {
            Some(seqs) => seqs.push(seq),
            None => {
                let mut seqs = RoomSeqs::default();
                seqs.push(seq);
                self.rooms.insert(Arc::from(room), seqs);
            }
        }
    }

    /// Position in `segments` of the segment holding `seq`; `seq` must be retained.
    pub fn segment_of(&self, seq: u64) -> usize {
        debug_assert!(self.is_retained(seq));
        self.segments
            .partition_point(|s| s.file.base_seq <= seq)
            .checked_sub(1)
            .expect("first segment starts at first_seq")
    }

    pub fn loc(&self, seq: u64) -> Option<Loc> {
        if !self.is_retained(seq) {
            return None;
        }
        let at = (seq - self.first_seq) as usize;
        let offset = self.offsets[at];
        // The next record starts where this one ends, unless it opens the next segment: then
        // it starts at that segment's magic header, which is never past this offset.
        let end = match self.offsets.get(at + 1) {
            Some(&next) if next > offset => next,
            _ => {
                let bytes = self.segments[self.segment_of(seq)].bytes;
                u32::try_from(bytes).expect("segments end below MAX_SEGMENT_END")
            }
        };
        Some(Loc {
            offset,
            len: end - offset,
        })
    }

    pub fn epoch_of(&self, seq: u64) -> Option<u64> {
        if !self.is_retained(seq) {
            return None;
        }
        let run = self.epochs.partition_point(|&(start, _)| start <= seq);
        Some(self.epochs[run.checked_sub(1)?].1)
    }

    /// Forgets the oldest segment and its records; the caller deletes the file.
    /// Never the segment being written: there must be at least two.
    pub fn drop_oldest_segment(&mut self) -> Arc<SegmentFile> {
        assert!(
            self.segments.len() > 1,
            "never drop the segment being written"
        );
        let dropped = self.segments.pop_front().expect("checked above");
        let next_first = self.segments[0].file.base_seq;
        let count = (next_first - self.first_seq) as usize;
        self.offsets.drain(..count);
        self.first_seq = next_first;
        self.total_bytes -= dropped.bytes;
        while self.epochs.len() > 1 && self.epochs[1].0 <= next_first {
            self.epochs.pop_front();
        }
        self.rooms.retain(|_, seqs| {
            seqs.forget_below(next_first);
            !seqs.is_empty()
        });
        dropped.file
    }

    /// Forgets every record with seq > `seq`, where `first_seq - 1 <= seq < last_seq`; the
    /// caller carries out the returned [`Cut`] on disk.
    pub fn truncate_after(&mut self, seq: u64) -> Cut {
        assert!(seq + 1 >= self.first_seq && seq < self.last_seq());
        let cut_seq = seq + 1;
        let at = self.segment_of(cut_seq);
        let loc = self.loc(cut_seq).expect("cut_seq is retained");
        // A segment starting exactly at cut_seq is kept, emptied: it names the next seq.
        let removed = self
            .segments
            .drain(at + 1..)
            .map(|s| {
                self.total_bytes -= s.bytes;
                s.file
            })
            .collect();
        let segment = self.segments.back_mut().expect("segment `at` remains");
        self.total_bytes -= segment.bytes - u64::from(loc.offset);
        segment.bytes = u64::from(loc.offset);
        let segment_file = Arc::clone(&segment.file);
        self.offsets.truncate((cut_seq - self.first_seq) as usize);
        while self.epochs.back().is_some_and(|&(start, _)| start > seq) {
            self.epochs.pop_back();
        }
        self.rooms.retain(|_, seqs| {
            seqs.forget_above(seq);
            !seqs.is_empty()
        });
        self.rewrites += 1;
        Cut {
            removed,
            segment: segment_file,
            bytes: u64::from(loc.offset),
        }
    }

    /// Forgets everything and continues with the empty segment `segment`; returns the old
    /// segments for the caller to delete.
    pub fn restart(&mut self, segment: Arc<SegmentFile>) -> Vec<Arc<SegmentFile>> {
        let rewrites = self.rewrites + 1;
        let old = std::mem::replace(self, Index::new(segment));
        self.rewrites = rewrites;
        old.segments.into_iter().map(|s| s.file).collect()
    }

    /// Checks every invariant documented on the fields; for tests.
    #[cfg(test)]
    pub fn check_invariants(&self) {
        assert!(!self.segments.is_empty());
        assert_eq!(self.first_seq, self.segments[0].file.base_seq);
        let mut seq = self.first_seq;
        let mut total = 0;
        for (i, segment) in self.segments.iter().enumerate() {
            assert_eq!(segment.file.base_seq, seq, "segment {i} base");
            let mut offset = MAGIC_BYTES;
            while seq < self.next_seq()
                && self
                    .segments
                    .get(i + 1)
                    .is_none_or(|next| seq < next.file.base_seq)
            {
                let loc = self.loc(seq).unwrap();
                assert_eq!(u64::from(loc.offset), offset, "seq {seq} offset");
                offset += u64::from(loc.len);
                seq += 1;
            }
            assert_eq!(segment.bytes, offset, "segment {i} bytes");
            if i + 1 < self.segments.len() {
                assert!(offset > MAGIC_BYTES, "segment {i} is empty but not last");
            }
            total += segment.bytes;
        }
        assert_eq!(seq, self.next_seq());
        assert_eq!(total, self.total_bytes);
        for (room, seqs) in &self.rooms {
            assert!(!seqs.is_empty(), "room {room} kept without messages");
            assert!(seqs.iter().zip(seqs.iter().skip(1)).all(|(a, b)| a < b));
            assert!(seqs.iter().all(|s| self.is_retained(s)), "room {room}");
        }
        assert!(self
            .epochs
            .iter()
            .zip(self.epochs.iter().skip(1))
            .all(|(a, b)| a.0 < b.0 && a.1 != b.1));
        if !self.offsets.is_empty() {
            assert!(self.epochs[0].0 <= self.first_seq);
            assert!(self.epochs.back().unwrap().0 <= self.last_seq());
        }
    }
}
