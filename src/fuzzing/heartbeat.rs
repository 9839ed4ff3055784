//! Fuzzes the heartbeat datagram decoder and the replay guard.
//!
//! A random datagram never gets past the MAC, so the input is used three ways: (1) as a
//! datagram as it arrives; (2) as the signed part of a datagram that is then signed with the
//! pair's key, which reaches the field parsing behind the MAC (what a holder of the key, or a
//! bug in our own encoder, could send); (3) as a script of (node, boot, counter) beats for the
//! replay guard, checked against a model. Invariants beyond "no panic": whatever decodes
//! re-encodes to the same bytes, and the guard accepts a beat exactly when it is newer than
//! the newest accepted from that node.

use std::collections::HashMap;

use crate::wire::heartbeat::{decode, encode, Heartbeat, ReplayGuard, MAX_TRACKED_NODES};
use crate::wire::keyring::{parse_keyring, Keyring};

/// The pair key the target signs with (`tests/it/fuzz_corpus.rs` signs its seeds with it too).
pub const KEY_LINE: &str = "7 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// Where the key id sits in a datagram: after the magic and the version.
const KEY_ID_AT: usize = 5;

fn keyring() -> Keyring {
    parse_keyring("fuzz", KEY_LINE).expect("the fuzz key parses")
}

fn decode_checked(datagram: &[u8], keys: &Keyring) {
    if let Ok(heartbeat) = decode(datagram, keys) {
        assert!(!heartbeat.node_id.is_empty() && heartbeat.node_id.len() <= 32);
        assert_eq!(
            encode(&heartbeat, keys),
            datagram,
            "a decoded heartbeat re-encodes to other bytes"
        );
    }
}

fn replay_script(data: &[u8]) {
    let mut guard = ReplayGuard::new();
    // Node ids stay within the guard's capacity, so the model needs no eviction.
    let mut newest: HashMap<u8, (u64, u64)> = HashMap::new();
    for beat in data.chunks_exact(3) {
        let node = beat[0] % MAX_TRACKED_NODES as u8;
        let (boot, counter) = (u64::from(beat[1] % 4), u64::from(beat[2] % 16));
        let heartbeat = Heartbeat {
            node_id: format!("n{node}"),
            primary: false,
            epoch: 1,
            head: 0,
            boot,
            counter,
        };
        let fresh = newest.get(&node).is_none_or(|&last| (boot, counter) > last);
        assert_eq!(guard.accept(&heartbeat), fresh, "beat {beat:?}");
        if fresh {
            newest.insert(node, (boot, counter));
        }
    }
}

/// Runs every check of this target on one input; panics on a broken invariant.
pub fn check(data: &[u8]) {
    let keys = keyring();
    decode_checked(data, &keys);

    let mut signed = data.to_vec();
    if let Some(key_id) = signed.get_mut(KEY_ID_AT..KEY_ID_AT + 4) {
        key_id.copy_from_slice(&keys.signing_key_id().to_le_bytes());
    }
    let (_, mac) = keys.sign(&signed);
    signed.extend_from_slice(&mac);
    decode_checked(&signed, &keys);

    replay_script(data);
}
