//! The (session, id) index that makes a resend commit at most once.
//!
//! Bounded by log retention: an entry lives while its message is retained, so the index
//! holds at most `log.retain_messages` keys plus the pending ones.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// Keys are 128-bit hashes of (session, id) rather than the strings, to keep the index small
/// (24 bytes a message instead of ~100). Two independent 64-bit SipHashes make an accidental
/// collision among a million keys about 1 in 10^26.
type Key = u128;

/// The map's own hasher: a key is a SipHash already, so its low 64 bits are as good a hash as
/// hashing it again (which was a tenth of start-up recovery's time, docs/benchmarks.md).
#[derive(Default)]
struct KeyIsHash(u64);

impl Hasher for KeyIsHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used for a `Key`; anything else still hashes, just not well.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, key: u128) {
        self.0 = key as u64;
    }
}

#[derive(Debug, Default)]
pub struct Dedup {
    seqs: HashMap<Key, u64, BuildHasherDefault<KeyIsHash>>,
    /// Keys in seq order, for forgetting the oldest when retention moves on.
    order: VecDeque<(u64, Key)>,
}

fn key(session: &str, id: &str) -> Key {
    let half = |salt: u8| {
        let mut hasher = DefaultHasher::new();
        salt.hash(&mut hasher);
        session.hash(&mut hasher);
        id.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

impl Dedup {
    /// Room for `keys` more keys, so start-up recovery of a long log does not rehash the map
    /// a score of times on the way.
    pub fn reserve(&mut self, keys: usize) {
        self.seqs.reserve(keys);
        self.order.reserve(keys);
    }

    pub fn get(&self, session: &str, id: &str) -> Option<u64> {
        self.seqs.get(&key(session, id)).copied()
    }

    /// Records (session, id) at `seq`; seqs arrive in increasing order.
    pub fn insert(&mut self, session: &str, id: &str, seq: u64) {
        debug_assert!(self.order.back().is_none_or(|&(last, _)| last < seq));
        let k = key(session, id);
        self.seqs.insert(k, seq);
        self.order.push_back((seq, k));
    }

    /// Forgets every key whose message is below `first_seq` (dropped by retention).
    pub fn forget_below(&mut self, first_seq: u64) {
        while let Some(&(seq, k)) = self.order.front() {
            if seq >= first_seq {
                break;
            }
            self.order.pop_front();
            if self.seqs.get(&k) == Some(&seq) {
                self.seqs.remove(&k);
            }
        }
    }

    /// Forgets every key at `seq` or above (their messages were cut from the log).
    pub fn forget_from(&mut self, seq: u64) {
        while let Some(&(last, k)) = self.order.back() {
            if last < seq {
                break;
            }
            self.order.pop_back();
            if self.seqs.get(&k) == Some(&last) {
                self.seqs.remove(&k);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_retention_moves_past() {
        let mut dedup = Dedup::default();
        dedup.insert("s", "m-1", 1);
        dedup.insert("s", "m-2", 2);
        dedup.insert("t", "m-1", 3);
        assert_eq!(dedup.get("s", "m-1"), Some(1));
        assert_eq!(dedup.get("t", "m-1"), Some(3));
        assert_eq!(dedup.get("t", "m-2"), None);
        dedup.forget_below(3);
        assert_eq!(dedup.get("s", "m-1"), None);
        assert_eq!(dedup.get("t", "m-1"), Some(3));
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn many_keys_stay_distinct_and_forgetting_follows_seq_order() {
        let mut dedup = Dedup::default();
        dedup.reserve(1_000);
        for seq in 1..=20_000u64 {
            dedup.insert(&format!("s{}", seq % 7), &format!("m-{seq}"), seq);
        }
        assert_eq!(dedup.len(), 20_000);
        assert_eq!(dedup.get("s3", "m-10"), Some(10));
        assert_eq!(dedup.get("s4", "m-10"), None);
        dedup.forget_below(15_001);
        dedup.forget_from(19_001);
        assert_eq!(dedup.len(), 4_000);
        assert_eq!(dedup.get("s3", "m-10"), None);
        assert_eq!(
            dedup.get(&format!("s{}", 15_001 % 7), "m-15001"),
            Some(15_001)
        );
        assert_eq!(dedup.get(&format!("s{}", 19_001 % 7), "m-19001"), None);
    }
}
