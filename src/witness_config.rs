//! The witness's configuration (`pbchat-witness`): TOML text to a validated
//! [`WitnessConfig`], with the same error shape as the node's (`FILE: KEY: problem`).
//!
//! It reads one file and touches nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{ConfigError, LogLevel};

/// Bounds of `lease_ms`: below this a lease cannot outlast one network round trip and a
/// renewal; above it a lost primary would hold the pair unavailable for minutes.
pub const LEASE_MIN_MS: u64 = 50;
pub const LEASE_MAX_MS: u64 = 60_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWitnessConfig {
    listen: String,
    secret_file: PathBuf,
    state_file: PathBuf,
    #[serde(default = "default_lease_ms")]
    lease_ms: u64,
    #[serde(default = "default_log_level")]
    log_level: LogLevel,
    #[serde(default)]
    metrics_listen: Option<String>,
}

fn default_lease_ms() -> u64 {
    600
}

fn default_log_level() -> LogLevel {
    LogLevel::Info
}

#[derive(Clone, Debug)]
pub struct WitnessConfig {
    /// UDP address the witness answers claims on.
    pub listen: SocketAddr,
    /// The pair's shared secret file (`heartbeat.secret_file` on the nodes).
    pub secret_file: PathBuf,
    /// Where the highest grant is kept; written before each answer that changes it.
    pub state_file: PathBuf,
    /// How long a lease runs on the witness's clock from when it reads a claim.
    pub lease_ms: u64,
    pub log_level: LogLevel,
    /// HTTP address for `/metrics` and `/healthz`; `None`: none served.
    pub metrics_listen: Option<SocketAddr>,
}

/// Reads and validates a witness config file.
pub fn load(path: &Path) -> Result<WitnessConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file)
}

/// Parses and validates TOML text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<WitnessConfig, ConfigError> {
    let raw: RawWitnessConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        file: file.to_string(),
        message: e.to_string().trim_end().replace('\n', "\n  "),
    })?;
    let invalid = |key: &'static str, problem: String| ConfigError::Invalid {
        file: file.to_string(),
        key,
        problem,
    };
    let listen = raw.listen.parse().map_err(|_| {
        invalid(
            "listen",
            format!(
                "{:?} is not an IP address with a port (e.g. 0.0.0.0:7410)",
                raw.listen
            ),
        )
    })?;
    for (key, path) in [
        ("secret_file", &raw.secret_file),
        ("state_file", &raw.state_file),
    ] {
        if path.as_os_str().is_empty() {
            return Err(invalid(key, "must not be empty".into()));
        }
    }
    if !(LEASE_MIN_MS..=LEASE_MAX_MS).contains(&raw.lease_ms) {
        return Err(invalid(
            "lease_ms",
            format!(
                "{} is out of range ({LEASE_MIN_MS} to {LEASE_MAX_MS})",
                raw.lease_ms
            ),
        ));
    }
    let metrics_listen = match raw.metrics_listen.as_deref() {
        None | Some("") => None,
        Some(text) => Some(text.parse().map_err(|_| {
            invalid(
                "metrics_listen",
                format!("{text:?} is not an IP address with a port (e.g. 127.0.0.1:9412)"),
            )
        })?),
    };
    Ok(WitnessConfig {
        listen,
        metrics_listen,
        secret_file: raw.secret_file,
        state_file: raw.state_file,
        lease_ms: raw.lease_ms,
        log_level: raw.log_level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:7410"
secret_file = "/etc/pbchat/secret"
state_file = "/var/lib/pbchat-witness/state"
"#;

    #[test]
    fn a_minimal_config_takes_the_defaults() {
        let config = parse(GOOD, "w.toml").unwrap();
        assert_eq!(config.lease_ms, 600);
        assert_eq!(config.listen.port(), 7410);
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_problem() {
        let bad = GOOD.replace("127.0.0.1:7410", "localhost");
        let e = parse(&bad, "w.toml").unwrap_err().to_string();
        assert!(e.starts_with("w.toml: listen: \"localhost\" is not"), "{e}");
        let bad = format!("{GOOD}lease_ms = 10\n");
        let e = parse(&bad, "w.toml").unwrap_err().to_string();
        assert_eq!(e, "w.toml: lease_ms: 10 is out of range (50 to 60000)");
        let bad = format!("{GOOD}chat = true\n");
        let e = parse(&bad, "w.toml").unwrap_err().to_string();
        assert!(e.contains("unknown field `chat`"), "{e}");
    }
}
