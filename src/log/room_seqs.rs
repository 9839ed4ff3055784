//! One room's retained seqs, ascending, at 4 bytes each: fixed-size chunks of 32-bit offsets
//! from each chunk's first seq.
//!
//! A room's seqs are sparse among all seqs, and may span more than 2^32 (`log.retain_messages`
//! allows up to 2^40), so one base for the whole list would not do; a chunk starts a new
//! base whenever the next seq lies too far from its own. Chunks are at most `CHUNK_SEQS`
//! long, so the list never moves as a whole: growing allocates one more chunk, and
//! retention drops whole chunks (and moves at most one chunk's rest).

use std::collections::VecDeque;

/// Seqs per chunk: 16 KiB of offsets. Small in tests, so that they cross chunks.
const CHUNK_SEQS: usize = if cfg!(test) { 4 } else { 4096 };

#[derive(Debug)]
struct Chunk {
    /// The seq that offset 0 stands for: the chunk's first seq when it was made.
    base: u64,
    /// Ascending; never empty.
    offsets: Vec<u32>,
}

impl Chunk {
    fn seq(&self, at: usize) -> u64 {
        self.base + u64::from(self.offsets[at])
    }

    fn last(&self) -> u64 {
        self.seq(self.offsets.len() - 1)
    }

    /// How many of this chunk's seqs are at or below `seq`.
    fn count_upto(&self, seq: u64) -> usize {
        self.offsets
            .partition_point(|&o| self.base + u64::from(o) <= seq)
    }

    /// How many of this chunk's seqs are below `seq`.
    fn count_below(&self, seq: u64) -> usize {
        self.offsets
            .partition_point(|&o| self.base + u64::from(o) < seq)
    }

    fn seqs(&self) -> impl DoubleEndedIterator<Item = u64> + ExactSizeIterator + '_ {
        self.offsets.iter().map(|&o| self.base + u64::from(o))
    }
}

/// Invariants: no chunk is empty; seqs ascend within and across chunks; every chunk but the
/// last is full or was cut short by a seq too far from its base, or by `forget_below`.
#[derive(Debug, Default)]
pub(crate) struct RoomSeqs {
    chunks: VecDeque<Chunk>,
}

impl RoomSeqs {
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Adds `seq`, above every seq held.
    pub fn push(&mut self, seq: u64) {
        if let Some(last) = self.chunks.back_mut() {
            debug_assert!(last.last() < seq, "room seqs ascend");
            match u32::try_from(seq - last.base) {
                Ok(offset) if last.offsets.len() < CHUNK_SEQS => {
                    last.offsets.push(offset);
                    return;
                }
                _ => {}
            }
        }
        // Most rooms of a busy node hold a few messages: one chunk, sized as it fills.
        if self.chunks.is_empty() {
            self.chunks.reserve_exact(1);
        }
        self.chunks.push_back(Chunk {
            base: seq,
            offsets: vec![0],
        });
    }

    /// Forgets every seq below `first`.
    pub fn forget_below(&mut self, first: u64) {
        while self.chunks.front().is_some_and(|c| c.last() < first) {
            self.chunks.pop_front();
        }
        if let Some(front) = self.chunks.front_mut() {
            let below = front.count_below(first);
            front.offsets.drain(..below);
        }
    }

    /// Forgets every seq above `last`.
    pub fn forget_above(&mut self, last: u64) {
        while self.chunks.back().is_some_and(|c| c.base > last) {
            self.chunks.pop_back();
        }
        if let Some(back) = self.chunks.back_mut() {
            let keep = back.count_upto(last);
            back.offsets.truncate(keep);
            // Only the front chunk, whose base `forget_below` may have dropped, can hold no
            // seq up to `last` although its base is; there is no chunk before it.
            if keep == 0 {
                self.chunks.pop_back();
            }
        }
    }

    /// The seqs `s` with `after < s <= upto`, ascending, at most `max`.
    pub fn between(&self, after: u64, upto: u64, max: usize) -> Vec<u64> {
        let first = self.chunks.partition_point(|c| c.last() <= after);
        let mut out = Vec::new();
        for chunk in self.chunks.range(first..) {
            let from = chunk.count_upto(after);
            for seq in chunk.seqs().skip(from) {
                if seq > upto || out.len() == max {
                    return out;
                }
                out.push(seq);
            }
        }
        out
    }

    /// The newest `limit` seqs below `before`, ascending.
    pub fn newest_below(&self, before: u64, limit: usize) -> Vec<u64> {
        // Chunks whose base is below `before`: a chunk's base is at most its first seq.
        let end = self.chunks.partition_point(|c| c.base < before);
        let mut out = Vec::new();
        for chunk in self.chunks.range(..end).rev() {
            let below = chunk.count_below(before);
            let wanted = limit - out.len();
            out.extend(chunk.seqs().take(below).rev().take(wanted));
            if out.len() == limit {
                break;
            }
        }
        out.reverse();
        out
    }

    /// Every seq, ascending; for checks.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks.iter().flat_map(Chunk::seqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Push the seq this far above the last (a gap of 2^32 and more crosses a base).
        Push(u64),
        ForgetBelow(u64),
        ForgetAbove(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let gap = prop_oneof![6 => 1u64..4, 1 => (1u64 << 32) - 2..(1u64 << 32) + 2];
        prop_oneof![
            8 => gap.prop_map(Op::Push),
            1 => (0u64..12).prop_map(Op::ForgetBelow),
            1 => (0u64..12).prop_map(Op::ForgetAbove),
        ]
    }

    proptest! {
        /// Against a plain list of whole seqs, through every operation and query; the
        /// forgets' arguments count back from the newest seq pushed.
        #[test]
        fn behaves_like_a_list_of_seqs(ops in prop::collection::vec(op(), 0..80),
                                       after in 0u64..14, upto in 0u64..14, n in 0usize..6) {
            let mut seqs = RoomSeqs::default();
            let mut model: Vec<u64> = Vec::new();
            let mut newest = 0u64;
            for op in ops {
                match op {
                    Op::Push(gap) => {
                        newest = model.last().copied().unwrap_or(newest) + gap;
                        seqs.push(newest);
                        model.push(newest);
                    }
                    Op::ForgetBelow(back) => {
                        let first = newest.saturating_sub(back);
                        seqs.forget_below(first);
                        model.retain(|&s| s >= first);
                    }
                    Op::ForgetAbove(back) => {
                        let last = newest.saturating_sub(back);
                        seqs.forget_above(last);
                        model.retain(|&s| s <= last);
                    }
                }
                prop_assert_eq!(seqs.iter().collect::<Vec<_>>(), model.clone());
                prop_assert_eq!(seqs.is_empty(), model.is_empty());
                prop_assert!(seqs.chunks.iter().all(|c| !c.offsets.is_empty()));
                let (after, upto) = (newest.saturating_sub(after), newest.saturating_sub(upto));
                let between: Vec<u64> =
                    model.iter().copied().filter(|&s| after < s && s <= upto).take(n).collect();
                prop_assert_eq!(seqs.between(after, upto, n), between);
                let below: Vec<u64> = model.iter().copied().filter(|&s| s < after).collect();
                let newest_below = below[below.len().saturating_sub(n)..].to_vec();
                prop_assert_eq!(seqs.newest_below(after, n), newest_below);
            }
        }
    }

    #[test]
    fn a_seq_far_from_its_chunks_base_starts_a_chunk() {
        let mut seqs = RoomSeqs::default();
        let far = 1 + (1u64 << 32);
        for seq in [1, 2, far, far + 1] {
            seqs.push(seq);
        }
        assert_eq!(seqs.chunks.len(), 2);
        assert_eq!(seqs.iter().collect::<Vec<_>>(), vec![1, 2, far, far + 1]);
        assert_eq!(seqs.between(2, far, 10), vec![far]);
        assert_eq!(seqs.newest_below(far + 1, 2), vec![2, far]);
        assert_eq!(seqs.newest_below(0, 2), Vec::<u64>::new());
    }
}
