//! Client authentication: the users file and token hashes.
//!
//! A users file maps each nick to an argon2id hash of its token, one `nick:PHC` line per
//! user (`#` starts a comment line; blank lines are skipped). Hashes are PHC strings with
//! their own salt and parameters, so a file may mix old and new parameters and a stolen
//! file does not give tokens away cheaply. This module reads files and hashes; it owns no
//! thread and keeps no state: the daemon's verifier pool runs [`Users::verify`] off the
//! core and I/O threads, because argon2 is slow on purpose (tens of milliseconds).

use std::collections::HashMap;
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use thiserror::Error;

/// A users file larger than this is the wrong file (about 40 000 users of ~100 bytes).
pub const USERS_FILE_MAX_BYTES: u64 = 4 << 20;
/// A token longer than this is refused without hashing it: argon2's cost grows with the
/// input only a little, but nothing legitimate needs more.
pub const TOKEN_MAX_BYTES: usize = 1024;

#[derive(Debug, Error)]
pub enum UsersError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error(
        "{file}: mode {mode:04o} lets group or others read or write the users file; \
         run `chmod 600 {file}`"
    )]
    Permissions { file: String, mode: u32 },
    #[error("{file}: larger than {USERS_FILE_MAX_BYTES} bytes; is this the users file?")]
    TooLarge { file: String },
    #[error("{file}: line {line}: {problem}")]
    Line {
        file: String,
        line: usize,
        problem: String,
    },
}

/// Nick -> PHC hash string of its token. Hashes are checked for shape when loaded, so a
/// verify never fails on a malformed hash.
#[derive(Clone, Debug, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
}

impl Users {
    /// Parses users-file text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Users, UsersError> {
        let mut hashes = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |problem: String| UsersError::Line {
                file: file.to_string(),
                line: i + 1,
                problem,
            };
            let (nick, hash) = line
                .split_once(':')
                .ok_or_else(|| bad("expected `nick:$argon2id$...`".into()))?;
            let nick = nick.trim();
            let hash = hash.trim();
            if crate::wire::client::check_nick(nick).is_err() {
                return Err(bad(format!(
                    "{nick:?} is not a nick (1-32 of letters, digits, `_`, `-`)"
                )));
            }
            let parsed = PasswordHash::new(hash)
                .map_err(|e| bad(format!("the hash for {nick} is not a PHC string: {e}")))?;
            if !parsed.algorithm.as_str().starts_with("argon2") {
                return Err(bad(format!(
                    "the hash for {nick} is {}, not argon2; make one with `pbchatd --hash-token`",
                    parsed.algorithm
                )));
            }
            if hashes.insert(nick.to_string(), hash.to_string()).is_some() {
                return Err(bad(format!("{nick} appears twice")));
            }
        }
        Ok(Users { hashes })
    }

    /// Reads a users file, refusing one that group or others may read or write.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        use crate::private_file::{read_private_text, PrivateFileError};
        let file = path.display().to_string();
        let text = read_private_text(path, USERS_FILE_MAX_BYTES).map_err(|e| match e {
            PrivateFileError::Read(source) => UsersError::Read {
                file: file.clone(),
                source,
            },
            PrivateFileError::Permissions { mode } => UsersError::Permissions {
                file: file.clone(),
                mode,
            },
            PrivateFileError::TooLarge => UsersError::TooLarge { file: file.clone() },
            PrivateFileError::NotUtf8 => UsersError::Line {
                file: file.clone(),
                line: 0,
                problem: "not UTF-8 text".into(),
            },
        })?;
        Users::parse(&text, &file)
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn contains(&self, nick: &str) -> bool {
        self.hashes.contains_key(nick)
    }

    /// True when `token` is `nick`'s token. Slow (argon2) whether or not the nick exists,
    /// so the time taken does not tell an attacker which nicks are users.
    pub fn verify(&self, nick: &str, token: &str) -> bool {
        if token.len() > TOKEN_MAX_BYTES {
            return false;
        }
        match self.hashes.get(nick) {
            Some(hash) => {
                let parsed = PasswordHash::new(hash).expect("checked when loaded");
                Argon2::default()
                    .verify_password(token.as_bytes(), &parsed)
                    .is_ok()
            }
            None => {
                // Burn the same work against a fixed hash, then refuse.
                let _ = hash_token_with_salt(token, &[0u8; 16]);
                false
            }
        }
    }
}

/// Hashes a token into a PHC string (argon2id, default parameters, a random 16-byte salt).
pub fn hash_token(token: &str) -> String {
    use rand::RngCore;
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    hash_token_with_salt(token, &salt)
}

fn hash_token_with_salt(token: &str, salt: &[u8]) -> String {
    let salt = SaltString::encode_b64(salt).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(token.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail on a short input")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_hashed_token_verifies_for_its_nick_only() {
        let hash = hash_token("s3cret");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let users = Users::parse(&format!("# team\n\nalice:{hash}\n"), "u").unwrap();
        assert_eq!(users.len(), 1);
        assert!(users.verify("alice", "s3cret"));
        assert!(!users.verify("alice", "s3cret "));
        assert!(!users.verify("bob", "s3cret"));
        assert!(!users.verify("alice", &"x".repeat(TOKEN_MAX_BYTES + 1)));
        // Two hashes of one token differ: each has its own salt.
        assert_ne!(hash, hash_token("s3cret"));
    }

    #[test]
    fn bad_lines_are_named() {
        let hash = hash_token("t");
        for (text, needle) in [
            ("alice\n".to_string(), "line 1: expected"),
            (format!("al ice:{hash}\n"), "is not a nick"),
            ("alice:plain\n".to_string(), "not a PHC string"),
            (format!("a:{hash}\na:{hash}\n"), "line 2: a appears twice"),
        ] {
            let err = Users::parse(&text, "users").unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn a_users_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, format!("alice:{}\n", hash_token("t"))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Users::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Users::load(&path).unwrap().contains("alice"));
    }
}
