//! Fuzzes the text files a node loads: the config (TOML, then validation), the pair secret
//! file and the users file. Same text, three parsers; all are pure (`validate` only names
//! the path, it opens nothing).
//!
//! Invariants beyond "no panic": every error names the file it is about (the project's rule
//! for messages to people), and a secret-file error never quotes the secret.

use std::path::Path;

use crate::auth::Users;
use crate::config;
use crate::wire::keyring::parse_keyring;

const FILE: &str = "fuzz.toml";

/// Runs every check of this target on one input; panics on a broken invariant.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse(text, FILE).and_then(|raw| raw.validate(Path::new(FILE))) {
        Ok(config) => {
            assert!(!config.node_id.is_empty());
            assert!(config.client.max_line_bytes >= 256);
        }
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.starts_with(FILE),
                "error without the file: {message}"
            );
        }
    }

    if let Err(error) = parse_keyring(FILE, text) {
        let message = error.to_string();
        assert!(
            message.starts_with(FILE),
            "error without the file: {message}"
        );
        // No hex run as long as a minimal secret may appear in a message.
        let longest_hex_run = message
            .split(|c: char| !c.is_ascii_hexdigit())
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(
            longest_hex_run < 64,
            "a secret-file error quotes hex: {message}"
        );
    }

    if let Err(error) = Users::parse(text, FILE) {
        let message = error.to_string();
        assert!(message.contains(FILE), "error without the file: {message}");
    }
}
