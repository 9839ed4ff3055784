//! The pair's secret file on disk: reading it (owner-only, bounded) into a [`Keyring`], and
//! making a new key line from the OS random source (`pbchatd --gen-secret`). The format and
//! the MACs are `wire::keyring`'s, which does no I/O.

use std::path::Path;

use rand::rngs::OsRng;
use rand::RngCore;

use crate::wire::keyring::{
    parse_keyring, Keyring, KeyringError, SECRET_FILE_MAX_BYTES, SECRET_MIN_BYTES,
};

/// Reads a secret file, refusing one that group or others may read or write.
pub fn load_keyring(path: &Path) -> Result<Keyring, KeyringError> {
    use crate::private_file::{read_private_text, PrivateFileError};
    let file = path.display().to_string();
    let text = read_private_text(path, SECRET_FILE_MAX_BYTES).map_err(|e| match e {
        PrivateFileError::Read(source) => KeyringError::Read {
            file: file.clone(),
            source,
        },
        PrivateFileError::Permissions { mode } => KeyringError::Permissions {
            file: file.clone(),
            mode,
        },
        PrivateFileError::TooLarge => KeyringError::TooLarge { file: file.clone() },
        PrivateFileError::NotUtf8 => KeyringError::Line {
            file: file.clone(),
            line: 0,
            problem: "not UTF-8 text".to_string(),
        },
    })?;
    parse_keyring(&file, &text)
}

/// A fresh secret-file line, `KEY_ID HEX_SECRET` without a newline, with a random
/// `SECRET_MIN_BYTES`-byte secret from the OS random source.
pub fn generate_secret_line(id: u32) -> String {
    let mut secret = [0u8; SECRET_MIN_BYTES];
    OsRng.fill_bytes(&mut secret);
    let mut line = format!("{id} ");
    for byte in secret {
        line.push_str(&format!("{byte:02x}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    const SECRET_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn generated_lines_parse_and_differ() {
        let first = generate_secret_line(3);
        let second = generate_secret_line(4);
        assert!(first.starts_with("3 "));
        assert_eq!(first.len(), 2 + SECRET_MIN_BYTES * 2);
        assert_ne!(first[2..], second[2..]);
        let keys = parse_keyring("test", &format!("{first}\n{second}\n")).unwrap();
        assert_eq!(keys.key_ids().collect::<Vec<_>>(), vec![3, 4]);
    }

    fn write_secret_file(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("peer.key");
        let mut file = fs::File::create(&path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn loads_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_secret_file(dir.path(), &format!("1 {SECRET_A}\n"), 0o600);
        let keys = load_keyring(&path).unwrap();
        assert_eq!(keys.signing_key_id(), 1);
        let path = write_secret_file(dir.path(), &format!("2 {SECRET_A}\n"), 0o400);
        assert_eq!(load_keyring(&path).unwrap().signing_key_id(), 2);
    }

    #[test]
    fn refuses_a_file_group_or_others_can_touch() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o640, 0o604, 0o620, 0o602, 0o644, 0o666] {
            let path = write_secret_file(dir.path(), &format!("1 {SECRET_A}\n"), mode);
            let error = load_keyring(&path).unwrap_err();
            assert!(matches!(error, KeyringError::Permissions { .. }), "{error}");
            let message = error.to_string();
            assert!(message.contains("chmod 600"), "{message}");
            assert!(message.contains("peer.key"), "{message}");
        }
    }

    #[test]
    fn load_errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_secret_file(dir.path(), &format!("\n1 {}\n", &SECRET_A[..8]), 0o600);
        let message = load_keyring(&path).unwrap_err().to_string();
        assert!(message.contains("peer.key: line 2: key 1"), "{message}");
        assert!(!message.contains(&SECRET_A[..8]), "{message}");
        let missing = dir.path().join("missing.key");
        let message = load_keyring(&missing).unwrap_err().to_string();
        assert!(message.contains("missing.key: cannot read"), "{message}");
    }

    #[test]
    fn refuses_an_oversized_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = "#".repeat(SECRET_FILE_MAX_BYTES as usize + 1);
        let path = write_secret_file(dir.path(), &text, 0o600);
        assert!(matches!(
            load_keyring(&path),
            Err(KeyringError::TooLarge { .. })
        ));
    }
}
