//! `[auth]`: how clients prove who they are.

use serde::Deserialize;
use std::path::PathBuf;

use super::check::range;
use super::ConfigError;
use crate::core::AccessConfig;

/// How clients prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Any client may take any free nick.
    None,
    /// `hello` must carry a `token` that verifies against the nick's hash in the users file.
    Token,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub mode: AuthMode,
    /// Empty: none (required with mode token).
    pub users_file: PathBuf,
    pub failure_delay_ms: u64,
    pub verify_threads: usize,
    pub max_pending_verifies: usize,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            mode: AuthMode::None,
            users_file: PathBuf::new(),
            failure_delay_ms: AccessConfig::DEFAULT.auth_failure_delay_ms,
            verify_threads: 1,
            max_pending_verifies: 64,
        }
    }
}

/// Client authentication (`[auth]`).
#[derive(Clone, Debug, PartialEq)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// The users file (`nick:PHC hash` lines); `Some` exactly when `mode` is token.
    pub users_file: Option<PathBuf>,
    /// A refused `hello` is answered `unauthorized` this long after the verdict, to slow
    /// guessing down.
    pub failure_delay_ms: u64,
    /// Threads that run argon2 off the core and I/O threads.
    pub verify_threads: usize,
    /// Verifications queued for those threads; a `hello` beyond it gets `unavailable`.
    pub max_pending_verifies: usize,
}

impl RawAuth {
    pub fn validate(&self, file: &str) -> Result<AuthConfig, ConfigError> {
        let a = self;
        Ok(AuthConfig {
            mode: a.mode,
            users_file: self.users_file(file)?,
            failure_delay_ms: range!(file, "auth", a.failure_delay_ms, 0, 10_000),
            verify_threads: range!(file, "auth", a.verify_threads, 1, 16),
            max_pending_verifies: range!(file, "auth", a.max_pending_verifies, 1, 65_536),
        })
    }

    /// The users file: required with mode token, refused without it.
    fn users_file(&self, file: &str) -> Result<Option<PathBuf>, ConfigError> {
        let key = "auth.users_file";
        match (self.mode, self.users_file.as_os_str().is_empty()) {
            (AuthMode::Token, true) => Err(ConfigError::invalid(
                file,
                key,
                "is required with auth.mode = \"token\"",
            )),
            (AuthMode::Token, false) => Ok(Some(self.users_file.clone())),
            (AuthMode::None, true) => Ok(None),
            (AuthMode::None, false) => Err(ConfigError::invalid(
                file,
                key,
                "is read only with auth.mode = \"token\"; set the mode or remove the key",
            )),
        }
    }
}
