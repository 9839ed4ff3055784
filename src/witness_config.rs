//! The witness's configuration (`pbchat-witness`): TOML text to a validated
//! [`WitnessConfig`], with the same error shape as the node's (`FILE: KEY: problem`).
//!
//! It reads one file and touches nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::check::{check_not_empty, check_range, parse_socket_like};
use crate::config::{parse_toml, read_text, ConfigError, LogLevel};
use crate::config::{LEASE_DEFAULT_MS, LEASE_MAX_MS, LEASE_MIN_MS};

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

/// The node's `failover.lease_ms` is this lease: both default to the same value.
fn default_lease_ms() -> u64 {
    LEASE_DEFAULT_MS
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
    parse(&read_text(path)?, &path.display().to_string())
}

/// Parses and validates TOML text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<WitnessConfig, ConfigError> {
    let raw: RawWitnessConfig = parse_toml(text, file)?;
    let listen = parse_socket_like(file, "listen", &raw.listen, "0.0.0.0:7410")?;
    check_not_empty(file, "secret_file", &raw.secret_file)?;
    check_not_empty(file, "state_file", &raw.state_file)?;
    let metrics_listen = match raw.metrics_listen.as_deref() {
        None | Some("") => None,
        Some(text) => Some(parse_socket_like(
            file,
            "metrics_listen",
            text,
            "127.0.0.1:9412",
        )?),
    };
    Ok(WitnessConfig {
        listen,
        metrics_listen,
        secret_file: raw.secret_file,
        state_file: raw.state_file,
        lease_ms: check_range(file, "lease_ms", raw.lease_ms, LEASE_MIN_MS, LEASE_MAX_MS)?,
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
