//! Node configuration: TOML text to a validated [`Config`].
//!
//! Parsing rejects unknown keys; each section's raw type states its defaults and validates
//! itself ([`RawClient::validate`], [`RawPair::validate`], ...), naming the file, the key
//! and the problem; [`RawConfig::validate`] puts the sections together. [`reload::plan`]
//! says which changes a reload applies. This module reads one file and touches nothing
//! else.

mod auth;
pub(crate) mod check;
mod client;
mod error;
mod log;
mod ops;
mod pair;
pub mod reload;
mod web;

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use auth::{AuthConfig, AuthMode, RawAuth};
pub use client::{default_io_threads, ClientConfig, RawClient};
pub use error::{parse_toml, read_text, ConfigError};
pub use log::{LogConfig, RawLog};
pub use ops::{LogLevel, LogTarget, RawAdmin, RawHooks, RawLogging, RawMetrics, SyslogFacility};
pub use pair::{FailoverMode, LinkTlsConfig, PeerConfig, StrictSettings};
pub use pair::{RawFailover, RawHeartbeat, RawPair, RawPeer, RawReplication};
pub use pair::{LEASE_DEFAULT_MS, LEASE_MAX_MS, LEASE_MIN_MS};
pub use web::{RawWeb, WebConfig};
// The core's own words for a role and a replication mode, read from TOML as they are.
pub use crate::core::{ReplicationMode, Role};

/// The file as written, before validation. Defaults are the documented ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub node: RawNode,
    #[serde(default)]
    pub client: RawClient,
    #[serde(default)]
    pub log: RawLog,
    pub peer: Option<RawPeer>,
    pub heartbeat: Option<RawHeartbeat>,
    pub replication: Option<RawReplication>,
    #[serde(default)]
    pub failover: RawFailover,
    #[serde(default)]
    pub logging: RawLogging,
    #[serde(default)]
    pub admin: RawAdmin,
    pub metrics: Option<RawMetrics>,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub hooks: RawHooks,
    pub web: Option<RawWeb>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub id: String,
    pub role: Role,
    pub data_dir: PathBuf,
}

impl RawNode {
    /// The node's id; `role` needs no check beyond its type.
    fn validate(&self, file: &str) -> Result<String, ConfigError> {
        let id = check::check_node_id(file, "node.id", &self.id)?;
        check::check_not_empty(file, "node.data_dir", &self.data_dir)?;
        Ok(id)
    }
}

/// A validated configuration: every value here was checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from, for messages.
    pub file: PathBuf,
    pub node_id: String,
    pub role: Role,
    pub data_dir: PathBuf,
    pub client: ClientConfig,
    pub log: LogConfig,
    pub peer: Option<PeerConfig>,
    pub log_level: LogLevel,
    pub log_target: LogTarget,
    pub log_facility: SyslogFacility,
    /// The local syslog socket, used when `log_target` is syslog.
    pub syslog_socket: PathBuf,
    /// The admin socket `pbchatctl` talks to (mode 0600).
    pub admin_socket: PathBuf,
    /// Where the Prometheus text endpoint listens; `None`: no metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// The browser page and WebSocket endpoint; `None`: off.
    pub web: Option<WebConfig>,
    pub auth: AuthConfig,
    /// `hooks.role_change`: an executable run with `ROLE EPOCH PEER` on every role change
    /// (see `daemon::hooks`); `None`: none.
    pub role_change_hook: Option<PathBuf>,
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read_text(path)?;
    parse(&text, &path.display().to_string())?.validate(path)
}

/// Parses TOML text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<RawConfig, ConfigError> {
    parse_toml(text, file)
}

impl RawConfig {
    /// Each section validates itself, in the order of the file's documentation; the pair's
    /// four sections validate together, as they are set together.
    pub fn validate(self, path: &Path) -> Result<Config, ConfigError> {
        let file = &path.display().to_string();
        let node_id = self.node.validate(file)?;
        let client = self.client.validate(file)?;
        let log = self.log.validate(file)?;
        let pair = RawPair {
            peer: self.peer.as_ref(),
            heartbeat: self.heartbeat.as_ref(),
            replication: self.replication.as_ref(),
            failover: &self.failover,
        };
        let peer = pair.validate(file, &node_id)?;
        let admin_socket = self.admin.validate(file, &self.node.data_dir)?;
        self.logging.validate(file)?;
        Ok(Config {
            file: path.to_path_buf(),
            node_id,
            role: self.node.role,
            client,
            log,
            peer,
            log_level: self.logging.level,
            log_target: self.logging.target,
            log_facility: self.logging.facility,
            admin_socket,
            metrics_listen: self.metrics.map(|m| m.validate(file)).transpose()?,
            web: self.web.map(|w| w.validate(file)).transpose()?,
            auth: self.auth.validate(file)?,
            role_change_hook: self.hooks.validate(file)?,
            syslog_socket: self.logging.syslog_socket,
            data_dir: self.node.data_dir,
        })
    }
}

#[cfg(test)]
mod reload_tests;
#[cfg(test)]
mod tests;
