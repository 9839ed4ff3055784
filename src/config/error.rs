//! The one error type of configuration files (the node's and the witness's) and the reading
//! and parsing steps they share: every message names the file, then the key and the problem.

use serde::de::DeserializeOwned;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {key}: {problem}")]
    Invalid {
        file: String,
        key: &'static str,
        problem: String,
    },
}

impl ConfigError {
    /// A value that parsed but is not allowed: `file: key: problem`.
    pub fn invalid(file: &str, key: &'static str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: file.to_string(),
            key,
            problem: problem.into(),
        }
    }
}

/// The text of a config file; errors name it as `path` displays.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.display().to_string(),
        source,
    })
}

/// TOML text to the raw (unvalidated) form `T`; `file` names it in errors.
pub fn parse_toml<T: DeserializeOwned>(text: &str, file: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        file: file.to_string(),
        message: e.to_string().trim_end().replace('\n', "\n  "),
    })
}
