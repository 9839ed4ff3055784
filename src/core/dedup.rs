//! The (session, id) index that makes a resend commit at most once.
//!
//! Bounded by log retention: a key answers while its message is retained (and among the last
//! [`SPAN_MAX`] seqs). Keys whose messages retention dropped are not removed one by one (that
//! took a seq-ordered list of every key, as large again as the table): they stay, unanswered,
//! until the table fills, and then one sweep frees them all before the table would grow. So
//! the table holds the retained and pending keys plus what fills it up to its load limit,
//! and grows only when the retained keys alone would fill it.
//!
//! The index is small open-addressing tables of its own (`SHARDS` of them, so that one
//! growing never holds the whole index twice) rather than a `HashMap`: start-up
//! recovery inserts every retained key at a random place in a table far larger than the
//! caches, and with hashbrown each insert missed twice (its control bytes, then its 32-byte
//! bucket), about 37 % of the daemon's start-up (issue 6). Here a slot is 16 bytes and holds
//! all that a probe reads, and recovery hands keys over in batches whose home slots are
//! prefetched first, so the misses of a batch overlap instead of following one another.

use crate::entry::Entry;
use std::hash::{BuildHasher, RandomState};

/// Recovered keys handed to the table at once. Each key's home slot is prefetched before the
/// first is inserted, so a batch keeps this many misses in flight: about what a core's
/// line-fill buffers can track (10-24 on current x86); beyond that the prefetches only queue.
pub const RECOVERY_BATCH: usize = 16;

/// The table grows before it is fuller than this. Linear probing stays short below it (at
/// most about 2.5 probes for a hit and 8.5 for a miss, most in the same cache line).
const LOAD_MAX_PERCENT: usize = 75;

/// A table grows to this share of its size (or to what it must hold, if more). Not doubling:
/// a table between sizes is fuller (1M keys take 1.33-1.67M slots, 21-27 MB), and while it
/// grows its old and new slots live at once, 2.25 times the old table rather than 3 times.
const GROWTH_PERCENT: usize = 125;

/// The index is this many tables, a key's `tag` choosing its table, each growing and being
/// swept on its own. One table growing holds its old and new slots at once, so the index's
/// peak is 1 + 1.25 / SHARDS times its size rather than 2.25 times (a busy node's peak RSS,
/// docs/benchmarks.md "Memory"), and a growth or a sweep stops the core for 1 / SHARDS of
/// the time a single table's would: inserting a million keys one by one, the longest insert
/// (a growth) took 20.6 ms with one table and 1.2 ms with 16, on the benchmark machine.
const SHARDS: usize = 16;

/// The smallest table once a key arrives, so a handful of keys do not grow it repeatedly.
const SLOTS_MIN: usize = 16;

/// A full table's sweep of forgotten keys must free at least 1/this of its capacity, or the
/// table grows: a sweep reads every slot, so it must buy room for many inserts (here at least
/// capacity / 8, so a sweep costs under 11 slot reads per insert).
const SWEEP_FREES_MIN_DIVISOR: usize = 8;

/// How far back de-duplication reaches at most, in seqs: a slot keeps its seq as a 32-bit
/// offset from the table's base. Only a `log.retain_messages` above it (4.29 billion) meets
/// this bound; the keys older than the newest seq minus this are then forgotten.
pub const SPAN_MAX: u64 = u32::MAX as u64;

/// A 96-bit keyed hash of (session, id), kept instead of the strings to keep the index small.
/// The chance that a new key matches one of a million held ones by accident is 2^-76 per
/// send: about 1 in 10^11 over a year of a million sends a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// Also places the key: its home slot is `hash * slots / 2^64`.
    hash: u64,
    tag: u32,
}

impl Key {
    /// Marks a free slot. The one real key equal to it is stored as `(0, 1)` instead (see
    /// `Key::new`): a chance of 2^-96 to merge two keys, next to 2^-76 for any collision.
    const EMPTY: Key = Key { hash: 0, tag: 0 };

    fn new(hash: u64, tag: u32) -> Key {
        if hash == 0 && tag == 0 {
            Key { hash: 0, tag: 1 }
        } else {
            Key { hash, tag }
        }
    }

    /// SipHash under this process's random keys (`Dedup::keys`): a client that could
    /// compute the hashes could choose ids whose keys all start their probe at one slot,
    /// making every insert and lookup walk one long run (hash flooding). The keys never leave
    /// the process: the index is rebuilt from the log at every start.
    fn of(keys: &RandomState, session: &str, id: &str) -> Key {
        let half = |salt: u8| keys.hash_one((salt, session, id));
        Key::new(half(1), half(2) as u32)
    }

    fn is_empty(self) -> bool {
        self == Key::EMPTY
    }

    /// The table a key lives in. From the tag, not the hash: the hash's top bits place the
    /// key inside its table, so a table chosen by them would use a sixteenth of its slots.
    fn shard(self) -> usize {
        self.tag as usize % SHARDS
    }
}

/// One key and where its seq lies from the table's base. The key's fields stand here rather
/// than a `Key`, whose 12 bytes would pad to 16 and the slot to 24.
#[derive(Clone, Copy, Debug)]
struct Slot {
    hash: u64,
    tag: u32,
    offset: u32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 16);

const EMPTY_SLOT: Slot = Slot {
    hash: 0,
    tag: 0,
    offset: 0,
};

impl Slot {
    fn key(self) -> Key {
        Key {
            hash: self.hash,
            tag: self.tag,
        }
    }

    fn is_empty(self) -> bool {
        self.key().is_empty()
    }
}

/// Linear probing, without tombstones: removals happen only in a sweep, which puts every key
/// left back in place (`retain`).
///
/// Invariants: every key sits in the run of occupied slots that starts at its home slot (no
/// free slot lies between the two, going up and wrapping); at least a quarter of the slots
/// are free, so every probe ends; every seq lies in `base ..= base + SPAN_MAX`.
#[derive(Debug, Default)]
struct Table {
    /// A slot holding `Key::EMPTY` is free.
    slots: Vec<Slot>,
    /// Occupied slots.
    len: usize,
    /// The seq that offset 0 stands for.
    base: u64,
    /// No key here is below this seq, so while `Dedup::floor` is not above it a sweep would
    /// free nothing.
    oldest: u64,
}

impl Table {
    /// Where a key's probe starts: the hash scaled to the slots (any table size, no modulo).
    /// The hash is a keyed SipHash already, so it is as hard to aim at one slot.
    fn home(&self, key: Key) -> usize {
        ((u128::from(key.hash) * self.slots.len() as u128) >> 64) as usize
    }

    fn next(&self, index: usize) -> usize {
        if index + 1 == self.slots.len() {
            0
        } else {
            index + 1
        }
    }

    fn seq(&self, slot: Slot) -> u64 {
        self.base + u64::from(slot.offset)
    }

    /// True if `seq` can be stored as an offset from `base`.
    fn fits(&self, seq: u64) -> bool {
        seq >= self.base && seq - self.base <= SPAN_MAX
    }

    fn slot(&self, key: Key, seq: u64) -> Slot {
        debug_assert!(self.fits(seq));
        Slot {
            hash: key.hash,
            tag: key.tag,
            offset: (seq - self.base) as u32,
        }
    }

    /// Keys the current slots hold without going over `LOAD_MAX_PERCENT`.
    fn capacity(&self) -> usize {
        self.slots.len() / 100 * LOAD_MAX_PERCENT + self.slots.len() % 100 * LOAD_MAX_PERCENT / 100
    }

    /// True when the next new key would have to grow the table.
    fn is_full(&self) -> bool {
        self.len >= self.capacity()
    }

    /// Makes room for `additional` more keys, growing to what holds them or by
    /// `GROWTH_PERCENT`, whichever is more.
    fn reserve(&mut self, additional: usize) {
        let keys = self.len.saturating_add(additional);
        if keys <= self.capacity() {
            return;
        }
        let needed = keys
            .saturating_mul(100)
            .div_ceil(LOAD_MAX_PERCENT)
            .max(SLOTS_MIN);
        let grown = self.slots.len() / 100 * GROWTH_PERCENT;
        self.resize(needed.max(grown));
    }

    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, vec![EMPTY_SLOT; slots]);
        for slot in old {
            if !slot.is_empty() {
                let index = self.free_from(self.home(slot.key()));
                self.slots[index] = slot;
            }
        }
    }

    /// The first free slot at or after `index`.
    fn free_from(&self, mut index: usize) -> usize {
        while !self.slots[index].is_empty() {
            index = self.next(index);
        }
        index
    }

    /// The index of `key`'s slot, if present.
    fn find(&self, key: Key) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut index = self.home(key);
        loop {
            let slot = self.slots[index];
            if slot.key() == key {
                return Some(index);
            }
            if slot.is_empty() {
                return None;
            }
            index = self.next(index);
        }
    }

    fn get(&self, key: Key) -> Option<u64> {
        self.find(key).map(|index| self.seq(self.slots[index]))
    }

    /// Sets `key` to `seq`, over any earlier seq.
    fn insert(&mut self, key: Key, seq: u64) {
        self.reserve(1);
        self.insert_reserved(key, seq);
    }

    /// `insert` once `reserve` has made room.
    fn insert_reserved(&mut self, key: Key, seq: u64) {
        debug_assert!(!key.is_empty() && self.len < self.capacity());
        let new = self.slot(key, seq);
        let mut index = self.home(key);
        loop {
            let slot = &mut self.slots[index];
            if slot.key() == key {
                *slot = new;
                return;
            }
            if slot.is_empty() {
                *slot = new;
                self.len += 1;
                return;
            }
            index = self.next(index);
        }
    }

    /// Starts loading `key`'s home slot, so a `get` or `insert` soon after does not wait for
    /// memory.
    fn prefetch_home(&self, key: Key) {
        if let Some(slot) = self.slots.get(self.home(key)) {
            prefetch(slot);
        }
    }

    /// Keeps the keys whose seq `keep` accepts and counts offsets from `base` (at most the
    /// lowest seq kept), in place: no second table, so a sweep never doubles the index's
    /// memory.
    fn retain(&mut self, base: u64, keep: impl Fn(u64) -> bool) {
        // A slot free before the removals: no run crosses it (some exists, as a quarter of
        // the slots are free).
        let Some(start) = self.slots.iter().position(|s| s.is_empty()) else {
            self.base = base;
            return;
        };
        for index in 0..self.slots.len() {
            let slot = self.slots[index];
            if slot.is_empty() {
                continue;
            }
            let seq = self.seq(slot);
            if keep(seq) {
                debug_assert!(seq >= base);
                self.slots[index].offset = (seq - base) as u32;
            } else {
                self.slots[index] = EMPTY_SLOT;
                self.len -= 1;
            }
        }
        self.base = base;
        // The removals left holes inside runs. Walking once around from `start`, each key is
        // taken out and put back at the first free slot from its home: its home lies after
        // `start` and at or before where it was, so it lands there or earlier, and the keys
        // placed before it keep their runs whole.
        let mut index = start;
        for _ in 0..self.slots.len() {
            index = self.next(index);
            let slot = self.slots[index];
            if slot.is_empty() {
                continue;
            }
            self.slots[index] = EMPTY_SLOT;
            let at = self.free_from(self.home(slot.key()));
            self.slots[at] = slot;
        }
    }
}

/// Asks the CPU to start loading `slot`'s cache line without waiting for it. Only a hint: it
/// reads nothing and changes nothing the program sees.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline(always)]
fn prefetch(slot: &Slot) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // A 16-byte slot in a 16-byte-aligned position never straddles two lines.
    let first: *const i8 = (slot as *const Slot).cast();
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has; a prefetch never faults
    // and has no effect the program can observe, and the address lies inside `slot`.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(first);
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn prefetch(_slot: &Slot) {}

#[derive(Debug, Default)]
pub struct Dedup {
    /// Random SipHash keys, chosen once per index (`RandomState::default`), for `Key::of`.
    keys: RandomState,
    /// Key `k` lives in `tables[k.shard()]`.
    tables: [Table; SHARDS],
    /// Keys below this seq are forgotten (retention dropped their messages, or they fell out
    /// of `SPAN_MAX`): `get` passes over them and the next sweep of their table frees their
    /// slots.
    floor: u64,
    /// The highest seq inserted and not cut (seqs arrive in increasing order).
    last: u64,
    /// Recovered keys the table has not taken yet, at most `RECOVERY_BATCH`, in seq order
    /// after `last`. Empty outside start-up recovery: `finish_recovery` empties it, and every
    /// other method asserts that it is empty, so a forgotten call stops the node at once
    /// rather than letting a resend commit twice.
    recovered: Vec<(Key, u64)>,
}

impl Dedup {
    /// Room for `keys` more keys, so start-up recovery of a long log does not grow the
    /// table a score of times on the way.
    pub fn reserve(&mut self, keys: usize) {
        // Keys spread over the tables binomially: at a million keys one table's share is
        // 62 500 +- 250, well inside the 3 % added here; a table given more just grows.
        let share = keys.div_ceil(SHARDS);
        for table in &mut self.tables {
            table.reserve(share + share / 32);
        }
    }

    pub fn get(&self, session: &str, id: &str) -> Option<u64> {
        self.get_key(self.key(session, id))
    }

    /// The key of (session, id), for a `get_key` and then an `insert_key` that hash once.
    pub fn key(&self, session: &str, id: &str) -> Key {
        Key::of(&self.keys, session, id)
    }

    /// Records (session, id) at `seq`; seqs arrive in increasing order.
    pub fn insert(&mut self, session: &str, id: &str, seq: u64) {
        self.insert_key(self.key(session, id), seq)
    }

    /// `insert` of each entry's (session, id) at its seq, in order, with every key's slot
    /// prefetched first so that the batch's cache misses overlap (a backup's replicated
    /// batch).
    pub fn insert_entries(&mut self, entries: &[Entry]) {
        let keys: Vec<Key> = entries
            .iter()
            .map(|entry| self.key(&entry.session, &entry.id))
            .collect();
        for &key in &keys {
            self.prefetch_key(key);
        }
        for (key, entry) in keys.into_iter().zip(entries) {
            self.insert_key(key, entry.seq);
        }
    }

    /// Records a recovered (session, id) at `seq` during start-up, in seq order after any
    /// `insert`. It may wait in a batch: call `finish_recovery` after the last one, before
    /// anything else.
    pub fn recover(&mut self, session: &str, id: &str, seq: u64) {
        self.recover_key(self.key(session, id), seq)
    }

    /// Hands the last recovered keys to the table.
    pub fn finish_recovery(&mut self) {
        self.flush_recovered();
    }

    /// True while recovered keys wait for `finish_recovery`.
    pub fn is_recovering(&self) -> bool {
        !self.recovered.is_empty()
    }

    /// Forgets every key whose message is below `first_seq` (dropped by retention).
    pub fn forget_below(&mut self, first_seq: u64) {
        self.assert_recovered();
        self.floor = self.floor.max(first_seq);
    }

    /// Forgets every key at `seq` or above (their messages were cut from the log). Reads every
    /// slot: a cut is rare (a merge after two primaries, a re-sync).
    pub fn forget_from(&mut self, seq: u64) {
        self.assert_recovered();
        for shard in 0..SHARDS {
            self.sweep(shard, |kept| kept < seq);
        }
        self.last = self.last.min(seq.saturating_sub(1));
    }

    /// Keys that answer (not forgotten). Reads every slot: for checks and tests.
    pub fn len(&self) -> usize {
        self.assert_recovered();
        let answers = |table: &Table| {
            let floor = self.floor;
            let answering = |slot: &&Slot| !slot.is_empty() && table.seq(**slot) >= floor;
            table.slots.iter().filter(answering).count()
        };
        self.tables.iter().map(answers).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A hint that `key` is about to be looked up: its slot starts loading now, so the cache
    /// misses of a batch of sends overlap instead of stalling one after another.
    pub fn prefetch_key(&self, key: Key) {
        self.tables[key.shard()].prefetch_home(key);
    }

    pub fn get_key(&self, key: Key) -> Option<u64> {
        self.assert_recovered();
        let seq = self.tables[key.shard()].get(key);
        seq.filter(|&seq| seq >= self.floor)
    }

    /// `insert` of a key from `key`.
    pub fn insert_key(&mut self, key: Key, seq: u64) {
        self.assert_recovered();
        debug_assert!(self.last < seq, "seq {seq} inserted after {}", self.last);
        self.make_room(key.shard(), seq);
        self.tables[key.shard()].insert(key, seq);
        self.last = seq;
    }

    /// Gets table `shard` ready for a new key at `seq`: forgets what lies out of `SPAN_MAX`
    /// of it and counts from a base it fits, and frees the forgotten keys' slots of a full
    /// table, growing it when that frees too few.
    fn make_room(&mut self, shard: usize, seq: u64) {
        self.reach_to(shard, seq);
        if !self.tables[shard].is_full() {
            return;
        }
        if self.floor > self.tables[shard].oldest {
            self.sweep(shard, |_| true);
        }
        let table = &mut self.tables[shard];
        let wanted = table.capacity() / SWEEP_FREES_MIN_DIVISOR;
        if table.len + wanted > table.capacity() {
            table.reserve(wanted);
        }
    }

    /// Makes `seq` fit table `shard`'s offsets: forgets what lies more than `SPAN_MAX` below
    /// it and counts from the new floor.
    fn reach_to(&mut self, shard: usize, seq: u64) {
        if !self.tables[shard].fits(seq) {
            self.floor = self.floor.max(seq.saturating_sub(SPAN_MAX));
            self.sweep(shard, |_| true);
        }
    }

    /// Frees table `shard`'s forgotten keys' slots and those `keep` refuses, and counts from
    /// `floor`.
    fn sweep(&mut self, shard: usize, keep: impl Fn(u64) -> bool) {
        let floor = self.floor;
        let table = &mut self.tables[shard];
        table.retain(floor, |seq| seq >= floor && keep(seq));
        table.oldest = floor;
    }

    fn recover_key(&mut self, key: Key, seq: u64) {
        debug_assert!(self.recovered.last().map_or(self.last, |&(_, last)| last) < seq);
        if self.recovered.capacity() == 0 {
            self.recovered.reserve_exact(RECOVERY_BATCH);
        }
        self.recovered.push((key, seq));
        if self.recovered.len() == RECOVERY_BATCH {
            self.flush_recovered();
        }
    }

    fn flush_recovered(&mut self) {
        let Some(&(_, last)) = self.recovered.last() else {
            return;
        };
        let mut touched = [false; SHARDS];
        for &(key, _) in &self.recovered {
            touched[key.shard()] = true;
        }
        for (shard, _) in touched.iter().enumerate().filter(|&(_, &touched)| touched) {
            self.reach_to(shard, last);
        }
        let floor = self.floor;
        self.recovered.retain(|&(_, seq)| seq >= floor);
        self.insert_batch();
        self.last = last;
        self.recovered.clear();
    }

    /// Inserts the recovered keys in order, like `insert_key` on each, with every home slot
    /// prefetched first so that the cache misses of the batch overlap.
    fn insert_batch(&mut self) {
        // Grow first: growing moves every slot of a table, and would waste the prefetches.
        let mut per_table = [0; SHARDS];
        for &(key, _) in &self.recovered {
            per_table[key.shard()] += 1;
        }
        for (table, &keys) in self.tables.iter_mut().zip(&per_table) {
            table.reserve(keys);
        }
        for &(key, _) in &self.recovered {
            self.tables[key.shard()].prefetch_home(key);
        }
        for &(key, seq) in &self.recovered {
            self.tables[key.shard()].insert_reserved(key, seq);
        }
    }

    fn assert_recovered(&self) {
        assert!(
            self.recovered.is_empty(),
            "dedup index read with {} recovered keys not yet in it: finish_recovery was not \
             called",
            self.recovered.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn two_indexes_place_the_same_id_apart() {
        // Random hash keys per index (per process in the daemon): what a client sends cannot
        // be aimed at one slot. With fixed keys every index would agree on every key.
        let a = Dedup::default();
        let b = Dedup::default();
        let differs = (0..8).any(|n| {
            let id = format!("m-{n}");
            Key::of(&a.keys, "s", &id) != Key::of(&b.keys, "s", &id)
        });
        assert!(differs, "two indexes hashed eight ids alike");
        // Within one index a key is stable, so a resend finds its first seq.
        assert_eq!(Key::of(&a.keys, "s", "m-1"), Key::of(&a.keys, "s", "m-1"));
    }

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

    #[test]
    fn recovered_keys_count_once_the_recovery_is_finished() {
        let mut dedup = Dedup::default();
        // Not a multiple of the batch: the last keys wait for finish_recovery.
        let keys = 3 * RECOVERY_BATCH as u64 + 5;
        for seq in 1..=keys {
            dedup.recover("s", &format!("m-{seq}"), seq);
        }
        assert!(dedup.is_recovering());
        dedup.finish_recovery();
        assert!(!dedup.is_recovering());
        assert_eq!(dedup.len(), keys as usize);
        assert_eq!(dedup.get("s", &format!("m-{keys}")), Some(keys));
        dedup.insert("s", "m-new", keys + 1);
        dedup.forget_below(keys);
        assert_eq!(dedup.len(), 2);
        assert_eq!(dedup.get("s", "m-1"), None);
    }

    #[test]
    #[should_panic(expected = "finish_recovery was not called")]
    fn a_read_before_finish_recovery_stops_the_node() {
        let mut dedup = Dedup::default();
        dedup.recover("s", "m-1", 1);
        dedup.get("s", "m-1");
    }

    #[test]
    fn the_key_that_equals_empty_is_stored_all_the_same() {
        let zero = Key::new(0, 0);
        assert!(!zero.is_empty());
        let mut dedup = Dedup::default();
        dedup.insert_key(zero, 7);
        assert_eq!(dedup.get_key(Key::new(0, 0)), Some(7));
        assert_eq!(dedup.len(), 1);
        dedup.forget_below(8);
        assert_eq!(dedup.get_key(zero), None);
        assert!(dedup.is_empty());
    }

    #[test]
    fn a_sweep_at_the_end_of_the_slots_moves_keys_back_across_the_wrap() {
        let mut table = Table::default();
        table.reserve(1);
        let last = table.slots.len() - 1;
        // Three keys homed on the last slot fill it and wrap to slots 0 and 1.
        let keys: Vec<Key> = (1..=3).map(|tag| Key::new(u64::MAX, tag)).collect();
        for (seq, &key) in keys.iter().enumerate() {
            table.insert(key, seq as u64);
        }
        assert_eq!(table.find(keys[2]), Some(1));
        table.retain(0, |seq| seq != 0);
        assert_eq!(table.find(keys[1]), Some(last));
        assert_eq!(table.find(keys[2]), Some(0));
        assert!(table.slots[1].is_empty());
        assert_eq!(table.len, 2);
    }

    #[test]
    fn a_prefetch_needs_no_slot_and_changes_nothing() {
        let mut dedup = Dedup::default();
        let key = dedup.key("s1", "m-1");
        // The table has no slots yet: there is nothing to load.
        dedup.prefetch_key(key);
        assert_eq!(dedup.get_key(key), None);
        dedup.insert_key(key, 7);
        dedup.prefetch_key(key);
        dedup.prefetch_key(dedup.key("s1", "m-2"));
        assert_eq!(dedup.get_key(key), Some(7));
        assert_eq!(dedup.get_key(dedup.key("s1", "m-2")), None);
    }

    #[test]
    fn a_batch_of_entries_is_recorded_as_one_by_one_inserts_are_through_growth() {
        let entry = |seq: u64| Entry {
            epoch: 1,
            seq,
            ts_ms: 0,
            room: "r".into(),
            from: "n".into(),
            session: format!("s{}", seq % 7),
            id: format!("m-{seq}"),
            body: String::new(),
            orig: None,
        };
        let entries: Vec<Entry> = (1..=1_000).map(entry).collect();
        let (mut batched, mut single) = (Dedup::default(), Dedup::default());
        // Batches of 37 cross the table's growths at different points.
        for batch in entries.chunks(37) {
            batched.insert_entries(batch);
        }
        for e in &entries {
            single.insert(&e.session, &e.id, e.seq);
        }
        for e in &entries {
            assert_eq!(batched.get(&e.session, &e.id), Some(e.seq));
            assert_eq!(single.get(&e.session, &e.id), Some(e.seq));
        }
        assert_eq!(batched.get("s1", "m-2"), None);
        assert_eq!(batched.len(), 1_000);
        batched.insert_entries(&[]);
        assert_eq!(batched.len(), 1_000);
    }

    #[test]
    fn a_full_table_frees_forgotten_keys_before_it_grows() {
        let mut dedup = Dedup::default();
        let mut newest = 0;
        let mut insert = |dedup: &mut Dedup| {
            newest += 1;
            dedup.insert("s", &format!("m-{newest}"), newest);
            newest
        };
        while dedup.tables.iter().any(|table| table.slots.len() < 1024) {
            insert(&mut dedup);
        }
        let slots = total_slots(&dedup);
        // Retention keeps the newest half: the rest is freed, not grown for.
        let mut newest = dedup.last;
        for _ in 0..10 * slots {
            dedup.forget_below(newest + 1 - slots as u64 / 2);
            newest = insert(&mut dedup);
        }
        assert_eq!(total_slots(&dedup), slots);
        // The newest half before the last insert, and that insert.
        assert_eq!(dedup.len(), slots / 2 + 1);
        check_tables(&dedup);
        // Retention that keeps more than the tables hold makes them grow.
        for _ in 0..slots / 2 {
            insert(&mut dedup);
        }
        assert!(total_slots(&dedup) > slots);
        check_tables(&dedup);
    }

    #[test]
    fn keys_spread_evenly_over_the_tables_and_over_each_tables_slots() {
        let mut dedup = Dedup::default();
        let keys = 64_000;
        for seq in 1..=keys {
            dedup.insert(&format!("s{}", seq % 7), &format!("m-{seq}"), seq);
        }
        let share = keys as usize / SHARDS;
        for table in &dedup.tables {
            // Binomial: a share of 4 000 +- 61; 10 % off is 6.5 standard deviations.
            assert!(table.len.abs_diff(share) < share / 10, "{} keys", table.len);
            // Each table's keys fill both halves of its slots: the key's tag chose the
            // table, so its hash still places it anywhere in it.
            let half = table.slots.len() / 2;
            let low = table.slots[..half].iter().filter(|s| !s.is_empty()).count();
            assert!(
                low.abs_diff(table.len / 2) < table.len / 10,
                "{low} of {}",
                table.len
            );
        }
        check_tables(&dedup);
    }

    #[test]
    fn seqs_past_32_bits_come_back_whole_and_the_reach_stops_at_the_span() {
        let mut dedup = Dedup::default();
        let start = 5 * SPAN_MAX;
        dedup.insert("s", "old", 1);
        for n in 0..100 {
            dedup.insert("s", &format!("m-{n}"), start + n);
        }
        // Out of the span of the newest seq: forgotten, though no retention dropped it.
        assert_eq!(dedup.get("s", "old"), None);
        assert_eq!(dedup.get("s", "m-7"), Some(start + 7));
        let far = start + SPAN_MAX + 50;
        dedup.insert("s", "far", far);
        assert_eq!(dedup.get("s", "far"), Some(far));
        assert_eq!(dedup.get("s", "m-49"), None);
        assert_eq!(dedup.get("s", "m-50"), Some(start + 50));
        assert_eq!(dedup.len(), 51);
        check_tables(&dedup);
    }

    fn total_slots(dedup: &Dedup) -> usize {
        dedup.tables.iter().map(|table| table.slots.len()).sum()
    }

    /// Checks each table's invariant: its count, every key reachable from its home and in
    /// the table its tag names.
    fn check_tables(dedup: &Dedup) {
        for (shard, table) in dedup.tables.iter().enumerate() {
            let occupied = table.slots.iter().filter(|s| !s.is_empty()).count();
            assert_eq!(occupied, table.len);
            assert!(table.len <= table.capacity());
            for (index, slot) in table.slots.iter().enumerate() {
                if !slot.is_empty() {
                    assert_eq!(slot.key().shard(), shard, "{slot:?} in table {shard}");
                    assert_eq!(table.find(slot.key()), Some(index), "{slot:?} unreachable");
                }
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Insert key number `key` at the next seq.
        Insert(u8),
        /// Recover keys at the next seqs (only before any other op, as at start-up).
        Recover(Vec<u8>),
        /// Forget below the seq `back` before the next one.
        ForgetBelow(u8),
        /// Forget from the seq `back` before the next one.
        ForgetFrom(u8),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            6 => any::<u8>().prop_map(Op::Insert),
            1 => (0u8..40).prop_map(Op::ForgetBelow),
            1 => (0u8..40).prop_map(Op::ForgetFrom),
        ];
        (
            prop::collection::vec(any::<u8>(), 0..80),
            prop::collection::vec(op, 0..300),
        )
            .prop_map(|(recovered, mut ops)| {
                ops.insert(0, Op::Recover(recovered));
                ops
            })
    }

    /// Key number `n` of a test: only `spread` distinct hashes (homes), so keys collide on
    /// purpose and long runs form; home 0's hash is all ones, the last slot at every size, so
    /// runs wrap too.
    fn test_key(n: u8, spread: u8) -> Key {
        let hash = u64::from(n % spread)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_sub(1);
        Key::new(hash, u32::from(n) + 1)
    }

    proptest! {
        /// The table against `HashMap` through Dedup's own operations: each seq-ordered
        /// forget removes a key only when its latest seq goes, so the model keeps the same
        /// list and applies the same rule on a plain map.
        #[test]
        fn the_table_behaves_like_a_hash_map(ops in ops(), spread in 1u8..=32, reserve in 0usize..40) {
            let mut dedup = Dedup::default();
            dedup.reserve(reserve);
            let mut model: HashMap<Key, u64> = HashMap::new();
            let mut model_order: Vec<(u64, Key)> = Vec::new();
            let mut seq = 0u64;
            for op in ops {
                match op {
                    Op::Insert(n) => {
                        seq += 1;
                        let key = test_key(n, spread);
                        dedup.insert_key(key, seq);
                        model.insert(key, seq);
                        model_order.push((seq, key));
                    }
                    Op::Recover(keys) => {
                        for n in keys {
                            seq += 1;
                            let key = test_key(n, spread);
                            dedup.recover_key(key, seq);
                            model.insert(key, seq);
                            model_order.push((seq, key));
                        }
                        dedup.finish_recovery();
                    }
                    Op::ForgetBelow(back) => {
                        let below = seq.saturating_sub(u64::from(back));
                        dedup.forget_below(below);
                        model_order.retain(|&(s, key)| {
                            if s < below && model.get(&key) == Some(&s) {
                                model.remove(&key);
                            }
                            s >= below
                        });
                    }
                    Op::ForgetFrom(back) => {
                        let from = seq.saturating_sub(u64::from(back));
                        dedup.forget_from(from);
                        model_order.retain(|&(s, key)| {
                            if s >= from && model.get(&key) == Some(&s) {
                                model.remove(&key);
                            }
                            s < from
                        });
                    }
                }
                check_tables(&dedup);
                prop_assert_eq!(dedup.len(), model.len());
                for n in 0..=u8::MAX {
                    let key = test_key(n, spread);
                    prop_assert_eq!(dedup.get_key(key), model.get(&key).copied(), "key {}", n);
                }
            }
        }
    }
}
