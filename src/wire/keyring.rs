//! Shared-secret keys that authenticate what one node of the pair sends the other.
//!
//! Owns the secret file format, the [`Keyring`] (the first key signs, every key verifies, so
//! a key can be rotated without downtime) and HMAC-SHA256 signing and checking. Pure: reading the
//! file and drawing new secrets from the OS are `crate::secret_file`'s. A secret must never reach a log line, an error or `Debug`.
//!
//! Rotation: add the new key as the second line on both nodes (both now verify it), then
//! move it to the first line on both (both now sign with it), then drop the old line.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of an HMAC-SHA256 tag.
pub const MAC_BYTES: usize = 32;
/// The shortest secret accepted: 256 bits, the strength of the hash behind the MAC.
pub const SECRET_MIN_BYTES: usize = 32;
/// Keys in one file. Rotation needs two; a few more is harmless, and the bound keeps a
/// verify with an unknown key id cheap and a mistaken file (a key per line of something
/// else) from being taken as a keyring.
pub const KEYS_MAX: usize = 8;
/// A secret file is a handful of short lines; anything this large is the wrong file.
pub const SECRET_FILE_MAX_BYTES: u64 = 64 * 1024;

#[derive(Debug, Error)]
pub enum KeyringError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error(
        "{file}: mode {mode:04o} lets group or others read or write the secret; \
         run `chmod 600 {file}`"
    )]
    Permissions { file: String, mode: u32 },
    #[error("{file}: larger than {SECRET_FILE_MAX_BYTES} bytes; is this the secret file?")]
    TooLarge { file: String },
    #[error("{file}: line {line}: {problem}")]
    Line {
        file: String,
        line: usize,
        problem: String,
    },
    #[error("{file}: no key; expected lines of `KEY_ID HEX_SECRET`")]
    Empty { file: String },
}

/// One shared secret and the id that names it on the wire.
pub struct Key {
    pub id: u32,
    /// Invariant: at least `SECRET_MIN_BYTES` long. Never printed.
    secret: Vec<u8>,
}

impl Key {
    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length, so this cannot fail.
        HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts keys of any length")
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The keys a node trusts. Invariant: 1..=`KEYS_MAX` keys with distinct ids; the first
/// signs, every one verifies.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    /// The id of the key that signs.
    pub fn signing_key_id(&self) -> u32 {
        self.keys[0].id
    }

    /// The ids of every key that verifies, the signing key first.
    pub fn key_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.iter().map(|k| k.id)
    }

    /// Whether `key_id` names a key this node verifies with; lets a decoder tell an unknown
    /// key (a rotation step missed on one node) from a bad MAC.
    pub fn contains(&self, key_id: u32) -> bool {
        self.key(key_id).is_some()
    }

    /// HMAC-SHA256 of `data` with the signing key, and that key's id.
    pub fn sign(&self, data: &[u8]) -> (u32, [u8; MAC_BYTES]) {
        let key = &self.keys[0];
        let mut mac = key.mac();
        mac.update(data);
        (key.id, mac.finalize().into_bytes().into())
    }

    /// Whether `mac` is the HMAC-SHA256 of `data` under key `key_id`; false for an unknown
    /// key. The comparison takes the same time wherever the tags differ.
    pub fn verify(&self, key_id: u32, data: &[u8], mac: &[u8]) -> bool {
        let Some(key) = self.key(key_id) else {
            return false;
        };
        let mut hmac = key.mac();
        hmac.update(data);
        hmac.verify_slice(mac).is_ok()
    }

    fn key(&self, key_id: u32) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == key_id)
    }
}

/// Parses secret-file text; `file` names the source in errors. Lines are `KEY_ID HEX_SECRET`;
/// `#` starts a comment; blank lines are ignored. Errors never quote a secret (nor any field
/// that might be one, since a malformed line may hold a secret in an unexpected place).
pub fn parse_keyring(file: &str, text: &str) -> Result<Keyring, KeyringError> {
    let mut keys: Vec<Key> = Vec::new();
    for (index, raw_line) in text.lines().enumerate() {
        let line = index + 1;
        let problem = |problem: String| KeyringError::Line {
            file: file.to_string(),
            line,
            problem,
        };
        let content = raw_line.split('#').next().unwrap_or("");
        let fields: Vec<&str> = content.split_whitespace().collect();
        match fields.as_slice() {
            [] => continue,
            [id, secret] => {
                let id: u32 = id.parse().map_err(|_| {
                    problem(format!(
                        "the key id is not a whole number from 0 to {}",
                        u32::MAX
                    ))
                })?;
                let secret = decode_hex(secret).map_err(problem)?;
                if secret.len() < SECRET_MIN_BYTES {
                    return Err(problem(format!(
                        "key {id}: the secret is {} bytes; at least {SECRET_MIN_BYTES} \
                         ({} hex digits) are needed",
                        secret.len(),
                        SECRET_MIN_BYTES * 2
                    )));
                }
                if keys.iter().any(|k| k.id == id) {
                    return Err(problem(format!("key id {id} appears twice")));
                }
                if keys.len() == KEYS_MAX {
                    return Err(problem(format!("more than {KEYS_MAX} keys")));
                }
                keys.push(Key { id, secret });
            }
            other => {
                return Err(problem(format!(
                    "expected `KEY_ID HEX_SECRET`, found {} field(s)",
                    other.len()
                )))
            }
        }
    }
    if keys.is_empty() {
        return Err(KeyringError::Empty {
            file: file.to_string(),
        });
    }
    Ok(Keyring { keys })
}

/// Hex digits (either case) to bytes. The error never echoes the input.
fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return Err("the secret has an odd number of hex digits".to_string());
    }
    let nibble = |digit: u8| -> Result<u8, String> {
        match digit {
            b'0'..=b'9' => Ok(digit - b'0'),
            b'a'..=b'f' => Ok(digit - b'a' + 10),
            b'A'..=b'F' => Ok(digit - b'A' + 10),
            _ => Err("the secret is not hex digits (0-9, a-f)".to_string()),
        }
    };
    digits
        .chunks_exact(2)
        .map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const SECRET_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn ring(text: &str) -> Keyring {
        parse_keyring("test", text).expect("valid keyring")
    }

    fn line_error(text: &str) -> (usize, String) {
        match parse_keyring("keys", text) {
            Err(KeyringError::Line { line, problem, .. }) => (line, problem),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn parses_comments_blank_lines_and_either_hex_case() {
        let keys = ring(&format!(
            "# pbchat keys\n\n7 {SECRET_A}  # current\n  9\t{}\n",
            SECRET_B.to_uppercase()
        ));
        assert_eq!(keys.signing_key_id(), 7);
        assert_eq!(keys.key_ids().collect::<Vec<_>>(), vec![7, 9]);
        assert!(keys.contains(9));
        assert!(!keys.contains(8));
    }

    #[test]
    fn first_key_signs_and_every_key_verifies() {
        let old_first = ring(&format!("1 {SECRET_A}\n2 {SECRET_B}\n"));
        let new_first = ring(&format!("2 {SECRET_B}\n1 {SECRET_A}\n"));
        let (id, mac) = old_first.sign(b"hello");
        assert_eq!(id, 1);
        assert!(new_first.verify(id, b"hello", &mac));
        let (id, mac) = new_first.sign(b"hello");
        assert_eq!(id, 2);
        assert!(old_first.verify(id, b"hello", &mac));
    }

    #[test]
    fn verify_rejects_other_data_key_id_and_tags() {
        let keys = ring(&format!("1 {SECRET_A}\n2 {SECRET_B}\n"));
        let (id, mac) = keys.sign(b"hello");
        assert!(keys.verify(id, b"hello", &mac));
        assert!(!keys.verify(id, b"hellO", &mac));
        assert!(!keys.verify(2, b"hello", &mac));
        assert!(!keys.verify(3, b"hello", &mac));
        assert!(!keys.verify(id, b"hello", &mac[..MAC_BYTES - 1]));
        assert!(!keys.verify(id, b"hello", &[]));
        let mut flipped = mac;
        flipped[MAC_BYTES - 1] ^= 1;
        assert!(!keys.verify(id, b"hello", &flipped));
    }

    #[test]
    fn same_id_different_secret_does_not_verify() {
        let ours = ring(&format!("1 {SECRET_A}\n"));
        let theirs = ring(&format!("1 {SECRET_B}\n"));
        let (id, mac) = theirs.sign(b"hello");
        assert!(!ours.verify(id, b"hello", &mac));
    }

    #[test]
    fn matches_rfc4231_test_case_2() {
        // RFC 4231 test case 2 has a short key, so build the ring around the length check.
        let keys = Keyring {
            keys: vec![Key {
                id: 0,
                secret: b"Jefe".to_vec(),
            }],
        };
        let (_, mac) = keys.sign(b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn rejects_short_secret_without_quoting_it() {
        let short = &SECRET_A[..62];
        let (line, problem) = line_error(&format!("# c\n1 {short}\n"));
        assert_eq!(line, 2);
        assert!(problem.contains("31 bytes"), "{problem}");
        assert!(!problem.contains(short), "{problem}");
    }

    #[test]
    fn rejects_bad_lines_without_quoting_secrets() {
        let cases = [
            (format!("{SECRET_A}\n"), "found 1 field"),
            (format!("1 {SECRET_A} extra\n"), "found 3 field"),
            (format!("x{SECRET_A} {SECRET_A}\n"), "key id"),
            (format!("4294967296 {SECRET_A}\n"), "key id"),
            (format!("1 {SECRET_A}0\n"), "odd number"),
            (format!("1 {}zz\n", &SECRET_A[2..]), "not hex"),
        ];
        for (text, expected) in cases {
            let (line, problem) = line_error(&text);
            assert_eq!(line, 1);
            assert!(problem.contains(expected), "{problem:?} for {text:?}");
            assert!(!problem.contains(&SECRET_A[2..40]), "{problem}");
        }
    }

    #[test]
    fn rejects_repeated_key_id() {
        let (line, problem) = line_error(&format!("5 {SECRET_A}\n5 {SECRET_B}\n"));
        assert_eq!(line, 2);
        assert!(problem.contains("key id 5 appears twice"), "{problem}");
    }

    #[test]
    fn rejects_more_than_keys_max() {
        let text: String = (0..=KEYS_MAX as u32)
            .map(|id| format!("{id} {SECRET_A}\n"))
            .collect();
        let (line, problem) = line_error(&text);
        assert_eq!(line, KEYS_MAX + 1);
        assert!(problem.contains("more than"), "{problem}");
    }

    #[test]
    fn rejects_file_without_keys() {
        for text in ["", "\n\n", "# only a comment\n"] {
            assert!(matches!(
                parse_keyring("keys", text),
                Err(KeyringError::Empty { .. })
            ));
        }
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let keys = ring(&format!("1 {SECRET_A}\n"));
        let printed = format!("{keys:?} {:?}", keys.keys[0]);
        assert!(printed.contains("redacted"), "{printed}");
        assert!(!printed.contains("0, 17, 34"), "{printed}");
        assert!(!printed.contains("[0, 17"), "{printed}");
        assert!(!printed.contains(&SECRET_A[..16]), "{printed}");
    }
}
