//! The UDP heartbeat datagram between the two nodes of a pair, and replay protection for it.
//!
//! Owns the byte layout, its authentication with the [`Keyring`], and [`ReplayGuard`]. Pure:
//! no sockets and no clocks; the boot nonce and counter come from the caller.
//!
//! Layout (integers little-endian), 75 to 107 bytes:
//!
//! ```text
//! magic "PBHB" | version u8 | key id u32 | node id length u8 | node id (1..=32 bytes, UTF-8)
//! | flags u8 (bit 0: primary; the rest zero) | epoch u64 | head u64 | boot u64 | counter u64
//! | HMAC-SHA256 over every byte before it (32 bytes)
//! ```
//!
//! The decoder checks the size, the magic, the version and the key id, then the MAC, and only
//! then reads the fields, so nothing unauthenticated is interpreted beyond the fixed header.

use std::collections::VecDeque;

use thiserror::Error;

use super::keyring::{Keyring, MAC_BYTES};

pub const HEARTBEAT_VERSION: u8 = 1;
const MAGIC: &[u8; 4] = b"PBHB";
/// Node ids are 1-32 bytes (the config enforces the same bound).
pub const NODE_ID_MAX_BYTES: usize = 32;
const FLAG_PRIMARY: u8 = 1;
/// Magic, version, key id, node id length.
const HEADER_BYTES: usize = MAGIC.len() + 1 + 4 + 1;
/// Flags, epoch, head, boot, counter.
const FIELDS_BYTES: usize = 1 + 8 * 4;
/// The shortest valid datagram: a one-byte node id.
pub const MIN_HEARTBEAT_BYTES: usize = HEADER_BYTES + 1 + FIELDS_BYTES + MAC_BYTES;
/// The longest valid datagram; a receive buffer one byte larger tells an oversized datagram
/// from one that fits.
pub const MAX_HEARTBEAT_BYTES: usize = HEADER_BYTES + NODE_ID_MAX_BYTES + FIELDS_BYTES + MAC_BYTES;
/// Senders a [`ReplayGuard`] remembers. A pair has one peer; a little room lets a guard
/// shared by tests or a future multi-peer setup work, and the bound stops a holder of the
/// key from growing it without end by inventing node ids.
pub const MAX_TRACKED_NODES: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's node id, 1..=`NODE_ID_MAX_BYTES` bytes.
    pub node_id: String,
    /// The sender's role: true = primary, false = backup.
    pub primary: bool,
    /// The sender's current epoch.
    pub epoch: u64,
    /// The sender's committed head seq.
    pub head: u64,
    /// The sender's boot nonce: microseconds since the Unix epoch at process start, so a
    /// later boot is larger.
    pub boot: u64,
    /// Strictly increasing within one boot.
    pub counter: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HeartbeatError {
    #[error("malformed heartbeat: {0}")]
    Malformed(&'static str),
    #[error("heartbeat version {0}, expected {HEARTBEAT_VERSION}")]
    Version(u8),
    #[error("heartbeat signed with key {0}, which is not in our keyring")]
    UnknownKey(u32),
    #[error("heartbeat MAC does not match (wrong secret, or altered in transit)")]
    BadMac,
}

/// Encodes and signs with the keyring's first key.
///
/// Panics if `hb.node_id` is empty or longer than `NODE_ID_MAX_BYTES`: node ids are
/// validated with the config, so such an id here is a bug.
pub fn encode(hb: &Heartbeat, keys: &Keyring) -> Vec<u8> {
    let node_id = hb.node_id.as_bytes();
    assert!(
        (1..=NODE_ID_MAX_BYTES).contains(&node_id.len()),
        "heartbeat node id must be 1-{NODE_ID_MAX_BYTES} bytes, got {}",
        node_id.len()
    );
    let mut out = Vec::with_capacity(HEADER_BYTES + node_id.len() + FIELDS_BYTES + MAC_BYTES);
    out.extend_from_slice(MAGIC);
    out.push(HEARTBEAT_VERSION);
    // The key id is covered by the MAC, so a receiver that holds several keys cannot be
    // steered to a different one.
    let key_id = keys.signing_key_id();
    out.extend_from_slice(&key_id.to_le_bytes());
    out.push(node_id.len() as u8);
    out.extend_from_slice(node_id);
    out.push(if hb.primary { FLAG_PRIMARY } else { 0 });
    for field in [hb.epoch, hb.head, hb.boot, hb.counter] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    let (signed_by, mac) = keys.sign(&out);
    assert_eq!(signed_by, key_id, "the keyring signs with its first key");
    out.extend_from_slice(&mac);
    debug_assert!((MIN_HEARTBEAT_BYTES..=MAX_HEARTBEAT_BYTES).contains(&out.len()));
    out
}

/// Checks and decodes one datagram. Never panics, whatever the bytes.
pub fn decode(datagram: &[u8], keys: &Keyring) -> Result<Heartbeat, HeartbeatError> {
    if datagram.len() < MIN_HEARTBEAT_BYTES {
        return Err(HeartbeatError::Malformed("too short"));
    }
    if datagram.len() > MAX_HEARTBEAT_BYTES {
        return Err(HeartbeatError::Malformed("too long"));
    }
    let mut reader = Reader(datagram);
    if reader.take(MAGIC.len())? != MAGIC {
        return Err(HeartbeatError::Malformed("not a heartbeat (bad magic)"));
    }
    let version = reader.u8()?;
    if version != HEARTBEAT_VERSION {
        return Err(HeartbeatError::Version(version));
    }
    let key_id = reader.u32()?;
    if !keys.contains(key_id) {
        return Err(HeartbeatError::UnknownKey(key_id));
    }
    let (signed, mac) = datagram.split_at(datagram.len() - MAC_BYTES);
    if !keys.verify(key_id, signed, mac) {
        return Err(HeartbeatError::BadMac);
    }

    // Authenticated: the rest was written by a holder of the key, but is still checked.
    let mut reader = Reader(&signed[HEADER_BYTES - 1..]);
    let node_id_len = usize::from(reader.u8()?);
    if node_id_len == 0 || node_id_len > NODE_ID_MAX_BYTES {
        return Err(HeartbeatError::Malformed("node id length out of range"));
    }
    let node_id = std::str::from_utf8(reader.take(node_id_len)?)
        .map_err(|_| HeartbeatError::Malformed("node id is not UTF-8"))?
        .to_string();
    let flags = reader.u8()?;
    if flags & !FLAG_PRIMARY != 0 {
        return Err(HeartbeatError::Malformed("unknown flag bits"));
    }
    let heartbeat = Heartbeat {
        node_id,
        primary: flags & FLAG_PRIMARY != 0,
        epoch: reader.u64()?,
        head: reader.u64()?,
        boot: reader.u64()?,
        counter: reader.u64()?,
    };
    if !reader.0.is_empty() {
        return Err(HeartbeatError::Malformed("trailing bytes"));
    }
    Ok(heartbeat)
}

/// Reads fixed-size fields from the front of a slice, failing instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], HeartbeatError> {
        if self.0.len() < len {
            return Err(HeartbeatError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, HeartbeatError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, HeartbeatError> {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(bytes))
    }

    fn u64(&mut self) -> Result<u64, HeartbeatError> {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(bytes))
    }
}

/// The newest (boot, counter) accepted from one sender.
#[derive(Debug)]
struct Seen {
    node_id: String,
    boot: u64,
    counter: u64,
}

/// Replay protection per sender node id: accepts a heartbeat only if its (boot, counter) is
/// newer than the last accepted one from that node (a greater boot, or the same boot and a
/// greater counter). Authenticate before calling: the guard trusts what it is given.
///
/// Bounded to `MAX_TRACKED_NODES` senders; a new sender beyond that evicts the one accepted
/// least recently, whose old heartbeats would then be accepted once more, so callers
/// should admit only the expected peer's id.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    /// Least recently accepted first. Invariant: at most `MAX_TRACKED_NODES`, ids distinct.
    seen: VecDeque<Seen>,
}

impl ReplayGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `hb` is fresh; if so, remembers it as the newest from its sender.
    pub fn accept(&mut self, hb: &Heartbeat) -> bool {
        self.accept_from(&hb.node_id, hb.boot, hb.counter)
    }

    /// Whether (`boot`, `counter`) from `node_id` is fresh (any authenticated datagram that
    /// carries them, such as a witness claim); if so, remembers it.
    pub fn accept_from(&mut self, node_id: &str, boot: u64, counter: u64) -> bool {
        let newest = (boot, counter);
        if let Some(index) = self.seen.iter().position(|s| s.node_id == node_id) {
            let last = &self.seen[index];
            if newest <= (last.boot, last.counter) {
                return false;
            }
            let mut seen = self.seen.remove(index).expect("index was just found");
            (seen.boot, seen.counter) = newest;
            self.seen.push_back(seen);
            return true;
        }
        if self.seen.len() == MAX_TRACKED_NODES {
            self.seen.pop_front();
        }
        self.seen.push_back(Seen {
            node_id: node_id.to_string(),
            boot,
            counter,
        });
        assert!(self.seen.len() <= MAX_TRACKED_NODES);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::keyring::parse_keyring;
    use proptest::prelude::*;

    const SECRET_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const SECRET_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn keys(text: &str) -> Keyring {
        parse_keyring("test", text).unwrap()
    }

    fn ring_a() -> Keyring {
        keys(&format!("1 {SECRET_A}\n"))
    }

    fn sample() -> Heartbeat {
        Heartbeat {
            node_id: "node-a".to_string(),
            primary: true,
            epoch: 7,
            head: 1_234_567,
            boot: 1_700_000_000_000_000,
            counter: 42,
        }
    }

    /// Frames `body` (everything after the key id) as a correctly signed datagram, to reach
    /// the field checks that run after the MAC.
    fn signed_raw(body: &[u8], keys: &Keyring) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(HEARTBEAT_VERSION);
        out.extend_from_slice(&keys.signing_key_id().to_le_bytes());
        out.extend_from_slice(body);
        let (_, mac) = keys.sign(&out);
        out.extend_from_slice(&mac);
        out
    }

    #[test]
    fn round_trip() {
        let keys = ring_a();
        for (node_id, primary) in [("a", false), ("node-a", true), (&*"x".repeat(32), true)] {
            let hb = Heartbeat {
                node_id: node_id.to_string(),
                primary,
                ..sample()
            };
            let bytes = encode(&hb, &keys);
            assert_eq!(bytes.len(), MIN_HEARTBEAT_BYTES - 1 + node_id.len());
            assert_eq!(decode(&bytes, &keys), Ok(hb));
        }
        let longest = encode(
            &Heartbeat {
                node_id: "x".repeat(NODE_ID_MAX_BYTES),
                ..sample()
            },
            &keys,
        );
        assert_eq!(longest.len(), MAX_HEARTBEAT_BYTES);
    }

    #[test]
    fn layout_is_as_documented() {
        let bytes = encode(&sample(), &ring_a());
        assert_eq!(&bytes[..4], b"PBHB");
        assert_eq!(bytes[4], HEARTBEAT_VERSION);
        assert_eq!(bytes[5..9], 1u32.to_le_bytes());
        assert_eq!(bytes[9], 6);
        assert_eq!(&bytes[10..16], b"node-a");
        assert_eq!(bytes[16], FLAG_PRIMARY);
        assert_eq!(bytes[17..25], 7u64.to_le_bytes());
        assert_eq!(bytes[41..49], 42u64.to_le_bytes());
        assert_eq!(bytes.len(), 49 + MAC_BYTES);
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let keys = ring_a();
        let bytes = encode(&sample(), &keys);
        for index in 0..bytes.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut altered = bytes.clone();
                altered[index] ^= mask;
                let result = decode(&altered, &keys);
                // The magic, version and key id are checked before the MAC and have errors
                // of their own; any other byte can only fail the MAC.
                let expected_ok = match index {
                    0..=3 => matches!(result, Err(HeartbeatError::Malformed(_))),
                    4 => matches!(result, Err(HeartbeatError::Version(_))),
                    5..=8 => matches!(result, Err(HeartbeatError::UnknownKey(_))),
                    _ => result == Err(HeartbeatError::BadMac),
                };
                assert!(expected_ok, "byte {index} ^ {mask:#x}: {result:?}");
            }
        }
    }

    #[test]
    fn truncations_and_extensions_are_rejected() {
        let keys = ring_a();
        let bytes = encode(&sample(), &keys);
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], &keys).is_err(), "cut to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, &keys).is_err());
        let oversized = vec![0u8; MAX_HEARTBEAT_BYTES + 1];
        assert_eq!(
            decode(&oversized, &keys),
            Err(HeartbeatError::Malformed("too long"))
        );
    }

    #[test]
    fn wrong_key_is_rejected() {
        let ours = ring_a();
        let forged = encode(&sample(), &keys(&format!("1 {SECRET_B}\n")));
        assert_eq!(decode(&forged, &ours), Err(HeartbeatError::BadMac));
        let other_id = encode(&sample(), &keys(&format!("2 {SECRET_A}\n")));
        assert_eq!(decode(&other_id, &ours), Err(HeartbeatError::UnknownKey(2)));
    }

    #[test]
    fn rotation_second_key_verifies() {
        let old = ring_a();
        let both = keys(&format!("1 {SECRET_A}\n2 {SECRET_B}\n"));
        let new = keys(&format!("2 {SECRET_B}\n1 {SECRET_A}\n"));
        assert_eq!(decode(&encode(&sample(), &old), &both), Ok(sample()));
        assert_eq!(decode(&encode(&sample(), &new), &both), Ok(sample()));
        assert_eq!(
            decode(&encode(&sample(), &new), &old),
            Err(HeartbeatError::UnknownKey(2)),
            "moving a key first before every node knows it breaks the pair"
        );
    }

    #[test]
    fn other_version_is_rejected() {
        let keys = ring_a();
        let mut bytes = encode(&sample(), &keys);
        bytes[4] = 2;
        assert_eq!(decode(&bytes, &keys), Err(HeartbeatError::Version(2)));
    }

    #[test]
    fn signed_but_malformed_bodies_are_rejected() {
        let keys = ring_a();
        let fields = [0u8; FIELDS_BYTES];
        let mut zero_len = vec![0u8];
        zero_len.extend_from_slice(&fields);
        zero_len.push(0);
        let mut bad_utf8 = vec![1u8, 0xff];
        bad_utf8.extend_from_slice(&fields);
        let mut bad_flags = vec![1u8, b'a', 0x02];
        bad_flags.extend_from_slice(&fields[1..]);
        let mut long_len = vec![2u8, b'a'];
        long_len.extend_from_slice(&fields);
        let mut short_len = vec![1u8, b'a', b'b'];
        short_len.extend_from_slice(&fields);
        for body in [zero_len, bad_utf8, bad_flags, long_len, short_len] {
            let result = decode(&signed_raw(&body, &keys), &keys);
            assert!(
                matches!(result, Err(HeartbeatError::Malformed(_))),
                "{body:?}: {result:?}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "node id")]
    fn encode_refuses_an_overlong_node_id() {
        let hb = Heartbeat {
            node_id: "x".repeat(NODE_ID_MAX_BYTES + 1),
            ..sample()
        };
        encode(&hb, &ring_a());
    }

    fn beat(node_id: &str, boot: u64, counter: u64) -> Heartbeat {
        Heartbeat {
            node_id: node_id.to_string(),
            boot,
            counter,
            ..sample()
        }
    }

    #[test]
    fn replayed_and_older_counters_are_rejected() {
        let mut guard = ReplayGuard::new();
        assert!(guard.accept(&beat("b", 100, 5)));
        assert!(!guard.accept(&beat("b", 100, 5)), "exact replay");
        assert!(!guard.accept(&beat("b", 100, 4)), "older counter");
        assert!(guard.accept(&beat("b", 100, 9)), "gaps are fine");
        assert!(!guard.accept(&beat("b", 99, 1_000)), "older boot");
        assert!(!guard.accept(&beat("b", 100, 9)));
    }

    #[test]
    fn newer_boot_is_accepted_with_a_reset_counter() {
        let mut guard = ReplayGuard::new();
        assert!(guard.accept(&beat("b", 100, 50)));
        assert!(guard.accept(&beat("b", 200, 1)));
        assert!(!guard.accept(&beat("b", 100, 51)), "the old boot is over");
        assert!(guard.accept(&beat("b", 200, 2)));
    }

    #[test]
    fn senders_are_tracked_separately() {
        let mut guard = ReplayGuard::new();
        assert!(guard.accept(&beat("a", 100, 5)));
        assert!(guard.accept(&beat("b", 100, 1)));
        assert!(!guard.accept(&beat("a", 100, 5)));
        assert!(!guard.accept(&beat("b", 100, 1)));
    }

    #[test]
    fn guard_is_bounded_and_evicts_the_least_recent_sender() {
        let mut guard = ReplayGuard::new();
        assert!(guard.accept(&beat("old", 1, 1)));
        for n in 0..MAX_TRACKED_NODES - 1 {
            assert!(guard.accept(&beat(&format!("n{n}"), 1, 1)));
        }
        // "old" is refreshed, so "n0" is now the least recent.
        assert!(guard.accept(&beat("old", 1, 2)));
        assert!(guard.accept(&beat("new", 1, 1)));
        assert_eq!(guard.seen.len(), MAX_TRACKED_NODES);
        assert!(!guard.accept(&beat("old", 1, 2)), "still tracked");
        assert!(guard.accept(&beat("n0", 1, 1)), "evicted, so forgotten");
        for n in 0..100 {
            guard.accept(&beat(&format!("flood{n}"), 1, 1));
        }
        assert_eq!(guard.seen.len(), MAX_TRACKED_NODES);
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_random_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..MAX_HEARTBEAT_BYTES + 16),
        ) {
            let _ = decode(&bytes, &ring_a());
        }

        #[test]
        fn decode_never_panics_on_signed_random_bodies(
            body in proptest::collection::vec(any::<u8>(), 0..MAX_HEARTBEAT_BYTES),
        ) {
            let keys = ring_a();
            let datagram = signed_raw(&body, &keys);
            if let Ok(hb) = decode(&datagram, &keys) {
                prop_assert_eq!(encode(&hb, &keys), datagram);
            }
        }

        #[test]
        fn round_trips_any_fields(
            node_id in "[a-zA-Z0-9_-]{1,32}",
            primary in any::<bool>(),
            epoch in any::<u64>(),
            head in any::<u64>(),
            boot in any::<u64>(),
            counter in any::<u64>(),
        ) {
            let keys = ring_a();
            let hb = Heartbeat { node_id, primary, epoch, head, boot, counter };
            prop_assert_eq!(decode(&encode(&hb, &keys), &keys), Ok(hb));
        }
    }
}
