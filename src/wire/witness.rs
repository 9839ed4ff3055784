//! The witness datagrams (strict mode): a node's claim of an epoch, and the witness's answer.
//!
//! Owns the byte layouts and their authentication with the pair's [`Keyring`] (the same
//! keys as heartbeats). Pure: no sockets, no clocks. Replay protection: a claim carries the
//! sender's boot nonce and counter, which the witness checks with a
//! [`ReplayGuard`](super::heartbeat::ReplayGuard); an answer echoes them, and a node accepts
//! an answer only for a claim it still waits on, so neither can be replayed. The magics
//! differ from each other and from the heartbeat's, so one kind cannot be passed off as
//! another.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! claim:  magic "PBWC" | version u8 | key id u32 | node id length u8 | node id (1..=32)
//!         | epoch u64 | boot u64 | counter u64 | HMAC-SHA256 over every byte before it
//! answer: magic "PBWA" | version u8 | key id u32 | node id length u8 | node id (1..=32)
//!         | boot u64 | counter u64 (the claim's) | verdict u8 (1 granted, 0 refused)
//!         | epoch u64 | lease_ms u64 (granted) or wait_ms u64 (refused) | HMAC-SHA256
//! ```

use thiserror::Error;

use super::heartbeat::NODE_ID_MAX_BYTES;
use super::keyring::{Keyring, MAC_BYTES};

/// The witness's answer to a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The claimant holds `epoch` and its lease runs `lease_ms` on the witness's clock from
    /// when the witness read the claim.
    Granted { epoch: u64, lease_ms: u64 },
    /// Not granted: `epoch` is the highest the witness granted; `wait_ms` is how much longer
    /// the holder's lease runs (0 when the claim is simply too old).
    Refused { epoch: u64, wait_ms: u64 },
}

pub const WITNESS_VERSION: u8 = 1;
const CLAIM_MAGIC: &[u8; 4] = b"PBWC";
const ANSWER_MAGIC: &[u8; 4] = b"PBWA";
/// Magic, version, key id, node id length.
const HEADER_BYTES: usize = 4 + 1 + 4 + 1;
const CLAIM_FIELDS_BYTES: usize = 8 * 3;
const ANSWER_FIELDS_BYTES: usize = 8 * 2 + 1 + 8 * 2;
/// The longest valid datagram of either kind; a receive buffer one byte larger tells an
/// oversized datagram from one that fits.
pub const WITNESS_DATAGRAM_MAX_BYTES: usize =
    HEADER_BYTES + NODE_ID_MAX_BYTES + ANSWER_FIELDS_BYTES + MAC_BYTES;

/// A node claims `epoch`: a renewal of its lease, or a bid to take over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub node_id: String,
    pub epoch: u64,
    /// The sender's boot nonce (microseconds since the Unix epoch at start) and a counter
    /// that rises with each claim, for replay protection.
    pub boot: u64,
    pub counter: u64,
}

/// The witness's answer to the claim from `node_id` numbered (`boot`, `counter`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub node_id: String,
    pub boot: u64,
    pub counter: u64,
    pub verdict: Verdict,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WitnessWireError {
    #[error("malformed witness datagram: {0}")]
    Malformed(&'static str),
    #[error("witness datagram version {0}, expected {WITNESS_VERSION}")]
    Version(u8),
    #[error("witness datagram signed with key {0}, which is not in our keyring")]
    UnknownKey(u32),
    #[error("witness datagram MAC does not match (wrong secret, or altered in transit)")]
    BadMac,
}

fn header(magic: &[u8; 4], node_id: &str, keys: &Keyring) -> Vec<u8> {
    let id = node_id.as_bytes();
    assert!(
        (1..=NODE_ID_MAX_BYTES).contains(&id.len()),
        "node ids are validated as 1-{NODE_ID_MAX_BYTES} bytes"
    );
    let mut out = Vec::with_capacity(WITNESS_DATAGRAM_MAX_BYTES);
    out.extend_from_slice(magic);
    out.push(WITNESS_VERSION);
    out.extend_from_slice(&keys.signing_key_id().to_le_bytes());
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out
}

fn sign(mut out: Vec<u8>, keys: &Keyring) -> Vec<u8> {
    let (_, mac) = keys.sign(&out);
    out.extend_from_slice(&mac);
    out
}

pub fn encode_claim(claim: &Claim, keys: &Keyring) -> Vec<u8> {
    let mut out = header(CLAIM_MAGIC, &claim.node_id, keys);
    for field in [claim.epoch, claim.boot, claim.counter] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    sign(out, keys)
}

pub fn encode_answer(answer: &Answer, keys: &Keyring) -> Vec<u8> {
    let mut out = header(ANSWER_MAGIC, &answer.node_id, keys);
    out.extend_from_slice(&answer.boot.to_le_bytes());
    out.extend_from_slice(&answer.counter.to_le_bytes());
    let (granted, epoch, ms) = match answer.verdict {
        Verdict::Granted { epoch, lease_ms } => (1u8, epoch, lease_ms),
        Verdict::Refused { epoch, wait_ms } => (0u8, epoch, wait_ms),
    };
    out.push(granted);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&ms.to_le_bytes());
    sign(out, keys)
}

/// Checks the size, magic, version, key and MAC; returns the node id and the fields after
/// it. Nothing unauthenticated is read beyond the fixed header.
fn open<'a>(
    datagram: &'a [u8],
    magic: &[u8; 4],
    fields: usize,
    keys: &Keyring,
) -> Result<(String, Reader<'a>), WitnessWireError> {
    let min = HEADER_BYTES + 1 + fields + MAC_BYTES;
    if datagram.len() < min {
        return Err(WitnessWireError::Malformed("too short"));
    }
    if datagram.len() > min - 1 + NODE_ID_MAX_BYTES {
        return Err(WitnessWireError::Malformed("too long"));
    }
    if &datagram[..4] != magic {
        return Err(WitnessWireError::Malformed("bad magic"));
    }
    if datagram[4] != WITNESS_VERSION {
        return Err(WitnessWireError::Version(datagram[4]));
    }
    let key_id = u32::from_le_bytes(datagram[5..9].try_into().expect("4 bytes"));
    if !keys.contains(key_id) {
        return Err(WitnessWireError::UnknownKey(key_id));
    }
    let (signed, mac) = datagram.split_at(datagram.len() - MAC_BYTES);
    if !keys.verify(key_id, signed, mac) {
        return Err(WitnessWireError::BadMac);
    }
    let id_len = usize::from(signed[9]);
    if id_len == 0 || HEADER_BYTES + id_len + fields != signed.len() {
        return Err(WitnessWireError::Malformed("node id length does not match"));
    }
    let node_id = std::str::from_utf8(&signed[HEADER_BYTES..HEADER_BYTES + id_len])
        .map_err(|_| WitnessWireError::Malformed("node id is not UTF-8"))?
        .to_string();
    Ok((node_id, Reader(&signed[HEADER_BYTES + id_len..])))
}

/// Checks and decodes a claim. Never panics, whatever the bytes.
pub fn decode_claim(datagram: &[u8], keys: &Keyring) -> Result<Claim, WitnessWireError> {
    let (node_id, mut r) = open(datagram, CLAIM_MAGIC, CLAIM_FIELDS_BYTES, keys)?;
    Ok(Claim {
        node_id,
        epoch: r.u64(),
        boot: r.u64(),
        counter: r.u64(),
    })
}

/// Checks and decodes an answer. Never panics, whatever the bytes.
pub fn decode_answer(datagram: &[u8], keys: &Keyring) -> Result<Answer, WitnessWireError> {
    let (node_id, mut r) = open(datagram, ANSWER_MAGIC, ANSWER_FIELDS_BYTES, keys)?;
    let boot = r.u64();
    let counter = r.u64();
    let granted = r.u8();
    let epoch = r.u64();
    let ms = r.u64();
    let verdict = match granted {
        1 => Verdict::Granted {
            epoch,
            lease_ms: ms,
        },
        0 => Verdict::Refused { epoch, wait_ms: ms },
        _ => return Err(WitnessWireError::Malformed("verdict is neither 0 nor 1")),
    };
    Ok(Answer {
        node_id,
        boot,
        counter,
        verdict,
    })
}

/// Reads fields whose total length `open` already checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.0[0];
        self.0 = &self.0[1..];
        b
    }
    fn u64(&mut self) -> u64 {
        let (head, rest) = self.0.split_at(8);
        self.0 = rest;
        u64::from_le_bytes(head.try_into().expect("8 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::keyring::parse_keyring;
    use proptest::prelude::*;

    const SECRET_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const SECRET_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn ring(text: &str) -> Keyring {
        parse_keyring("test", text).unwrap()
    }

    fn claim() -> Claim {
        Claim {
            node_id: "node-a".into(),
            epoch: 7,
            boot: 1_700_000_000_000_000,
            counter: 42,
        }
    }

    #[test]
    fn claims_and_answers_round_trip() {
        let keys = ring(&format!("1 {SECRET_A}\n"));
        let bytes = encode_claim(&claim(), &keys);
        assert_eq!(decode_claim(&bytes, &keys), Ok(claim()));
        for verdict in [
            Verdict::Granted {
                epoch: 9,
                lease_ms: 600,
            },
            Verdict::Refused {
                epoch: 10,
                wait_ms: 17,
            },
        ] {
            let answer = Answer {
                node_id: "b".repeat(NODE_ID_MAX_BYTES),
                boot: 5,
                counter: 6,
                verdict,
            };
            let bytes = encode_answer(&answer, &keys);
            assert_eq!(bytes.len(), WITNESS_DATAGRAM_MAX_BYTES);
            assert_eq!(decode_answer(&bytes, &keys), Ok(answer));
        }
    }

    #[test]
    fn a_forged_or_reflected_datagram_is_refused() {
        let keys = ring(&format!("1 {SECRET_A}\n"));
        let other = ring(&format!("1 {SECRET_B}\n"));
        let bytes = encode_claim(&claim(), &other);
        assert_eq!(decode_claim(&bytes, &keys), Err(WitnessWireError::BadMac));
        let unknown = ring(&format!("2 {SECRET_A}\n"));
        let bytes = encode_claim(&claim(), &unknown);
        assert_eq!(
            decode_claim(&bytes, &keys),
            Err(WitnessWireError::UnknownKey(2))
        );
        // A claim is no answer, and an altered epoch breaks the MAC.
        let mut bytes = encode_claim(&claim(), &keys);
        assert!(decode_answer(&bytes, &keys).is_err());
        bytes[HEADER_BYTES + 6] ^= 1;
        assert_eq!(decode_claim(&bytes, &keys), Err(WitnessWireError::BadMac));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let keys = ring(&format!("1 {SECRET_A}\n"));
            let _ = decode_claim(&bytes, &keys);
            let _ = decode_answer(&bytes, &keys);
        }
    }
}
