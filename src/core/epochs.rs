//! Epoch history: which `seq` each epoch began at. Decides where two histories part.

/// Epochs in increasing order with the first seq each one committed (or would commit).
///
/// Invariant: epochs strictly increase, and so do start seqs (non-strictly: an epoch that
/// committed nothing shares its start with the next one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochHistory {
    spans: Vec<(u64, u64)>,
}

impl EpochHistory {
    pub fn from_spans(spans: Vec<(u64, u64)>) -> Self {
        for pair in spans.windows(2) {
            assert!(
                pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1,
                "bad epoch history {spans:?}"
            );
        }
        EpochHistory { spans }
    }

    pub fn spans(&self) -> &[(u64, u64)] {
        &self.spans
    }

    /// The current (highest) epoch, 0 when there is none yet.
    pub fn current(&self) -> u64 {
        self.spans.last().map_or(0, |s| s.0)
    }

    /// Starts `epoch` at `first_seq`.
    pub fn begin(&mut self, epoch: u64, first_seq: u64) {
        if let Some(&(last_epoch, last_start)) = self.spans.last() {
            assert!(
                epoch > last_epoch,
                "epoch {epoch} does not follow {last_epoch}"
            );
            assert!(
                first_seq >= last_start,
                "epoch start {first_seq} before {last_start}"
            );
        }
        self.spans.push((epoch, first_seq));
    }

    /// Forgets the epochs that start after `last_seq + 1`: they name messages this log does
    /// not hold (a backup adopts its primary's history before the entries arrive).
    pub fn forget_past(&mut self, last_seq: u64) {
        self.spans
            .retain(|&(_, first_seq)| first_seq <= last_seq + 1);
    }

    /// Epoch that the message numbered `seq` belongs to in this history.
    pub fn epoch_of(&self, seq: u64) -> Option<u64> {
        self.spans
            .iter()
            .rev()
            .find(|&&(_, start)| start <= seq)
            .map(|&(epoch, _)| epoch)
    }

    /// Where to replay from for a client that last saw (`after`, `after_epoch`) while this
    /// history's head is `head`: the last seq the client's history and ours surely share.
    ///
    /// A client whose message `after` came from epoch `after_epoch` shares our history only up
    /// to the end of that epoch here (the next epoch's start - 1).
    pub fn replay_point(&self, after: u64, after_epoch: Option<u64>, head: u64) -> u64 {
        let after = after.min(head);
        let Some(client_epoch) = after_epoch else {
            return after;
        };
        if self.epoch_of(after) == Some(client_epoch) {
            return after;
        }
        let end_of_client_epoch = self
            .spans
            .iter()
            .find(|&&(epoch, _)| epoch > client_epoch)
            .map_or(head, |&(_, start)| start.saturating_sub(1));
        after.min(end_of_client_epoch)
    }
}

/// The last seq two logs share, given each one's epoch history and last seq.
///
/// Within one epoch a single primary wrote every entry, in seq order, so two logs that hold
/// the same epoch at the same seq hold the same entry there, and agree on everything before
/// it (the log matching rule). The answer is the largest `s` where both name the same epoch.
pub fn common_prefix(
    ours: &EpochHistory,
    our_last: u64,
    theirs: &EpochHistory,
    their_last: u64,
) -> u64 {
    let mut seq = our_last.min(their_last);
    while seq > 0 {
        let (Some(a), Some(b)) = (ours.span_at(seq), theirs.span_at(seq)) else {
            return 0;
        };
        if a.0 == b.0 {
            return seq;
        }
        // Both histories are constant over [max(starts), seq]: skip below that.
        seq = a.1.max(b.1).saturating_sub(1);
    }
    0
}

/// The epoch a node of `rank` (0 or 1, by node id order) takes when it promotes after seeing
/// `seen`: the next number of its own parity, so two nodes never pick the same epoch.
pub fn next_epoch(seen: u64, rank: u64) -> u64 {
    let candidate = seen + 1;
    if candidate % 2 == (rank + 1) % 2 {
        candidate
    } else {
        candidate + 1
    }
}

impl EpochHistory {
    /// The (epoch, first seq) span that holds `seq`.
    pub fn span_at(&self, seq: u64) -> Option<(u64, u64)> {
        self.spans
            .iter()
            .rev()
            .find(|&&(_, start)| start <= seq)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_is_where_two_histories_part() {
        let a = EpochHistory::from_spans(vec![(1, 1), (3, 40)]);
        let b = EpochHistory::from_spans(vec![(1, 1), (3, 40), (4, 101)]);
        // a went on in epoch 3 to 120; b took over at 101.
        assert_eq!(common_prefix(&a, 120, &b, 130), 100);
        assert_eq!(common_prefix(&b, 130, &a, 120), 100);
        // a backup that is simply behind shares all it has.
        assert_eq!(common_prefix(&b, 130, &a, 90), 90);
        // nothing shared.
        let c = EpochHistory::from_spans(vec![(2, 1)]);
        assert_eq!(common_prefix(&a, 120, &c, 50), 0);
        let empty = EpochHistory::default();
        assert_eq!(common_prefix(&a, 120, &empty, 0), 0);
    }

    #[test]
    fn epochs_have_the_promoting_nodes_parity() {
        assert_eq!(next_epoch(0, 0), 1);
        assert_eq!(next_epoch(0, 1), 2);
        assert_eq!(next_epoch(1, 0), 3);
        assert_eq!(next_epoch(1, 1), 2);
        assert_eq!(next_epoch(4, 1), 6);
        assert_eq!(next_epoch(4, 0), 5);
    }

    #[test]
    fn replay_point_finds_where_histories_part() {
        // Common history to seq 100 in epoch 3; this node took over in epoch 4 at 101.
        let history = EpochHistory::from_spans(vec![(1, 1), (3, 40), (4, 101)]);
        assert_eq!(history.replay_point(120, Some(4), 130), 120);
        // The client saw seq 120 of the losing epoch-3 history: resume from 100.
        assert_eq!(history.replay_point(120, Some(3), 130), 100);
        assert_eq!(history.replay_point(90, Some(3), 130), 90);
        // Without after_epoch the client's word is taken as is.
        assert_eq!(history.replay_point(120, None, 130), 120);
        // Beyond our head: only up to what we have.
        assert_eq!(history.replay_point(500, Some(4), 130), 130);
        // An epoch newer than ours: we share up to our head at most.
        assert_eq!(history.replay_point(120, Some(9), 130), 120);
        assert_eq!(history.epoch_of(100), Some(3));
        assert_eq!(history.epoch_of(101), Some(4));
    }
}
