//! `[peer]`, `[heartbeat]`, `[replication]` and `[failover]`: the pair. They are set
//! together (a node without `[peer]` is standalone), so they validate together into one
//! [`PeerConfig`].

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::check::{check_host_port, check_identity, check_node_id, check_not_empty};
use super::check::{check_range, parse_socket, range};
use super::ConfigError;
pub use crate::core::ReplicationMode;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    pub id: String,
    pub client_address: String,
    pub heartbeat_address: String,
    pub replication_address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeartbeat {
    pub listen: String,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_misses")]
    pub misses: u32,
    pub secret_file: PathBuf,
}

fn default_interval_ms() -> u64 {
    200
}
fn default_misses() -> u32 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplication {
    pub listen: String,
    #[serde(default = "default_mode")]
    pub mode: ReplicationMode,
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    #[serde(default = "default_window")]
    pub window: u64,
    /// All empty: the link is plain TCP. Otherwise all three: mutual TLS.
    #[serde(default)]
    pub tls_cert: PathBuf,
    #[serde(default)]
    pub tls_key: PathBuf,
    #[serde(default)]
    pub tls_ca: PathBuf,
    /// The name the peer's certificate must carry; empty: the IP of
    /// `peer.replication_address`.
    #[serde(default)]
    pub tls_name: String,
}

fn default_mode() -> ReplicationMode {
    ReplicationMode::Sync
}
fn default_ack_timeout_ms() -> u64 {
    1_000
}
fn default_window() -> u64 {
    8_192
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFailover {
    pub promotion_cooldown_ms: u64,
    /// Empty: no check.
    pub check_address: String,
    pub check_timeout_ms: u64,
    /// `available` (two nodes alone) or `strict` (a witness decides who may commit).
    pub mode: FailoverMode,
    /// Strict mode: the witness's UDP address (`pbchat-witness`'s `listen`).
    pub witness: String,
    /// Strict mode: the lease the witness gives (its `lease_ms`); paces renewals.
    pub lease_ms: u64,
    /// Strict mode: the bound on clock-rate drift that leases allow for.
    pub clock_drift_ppm: u64,
}

impl Default for RawFailover {
    fn default() -> Self {
        RawFailover {
            promotion_cooldown_ms: 30_000,
            check_address: String::new(),
            check_timeout_ms: 300,
            mode: FailoverMode::Available,
            witness: String::new(),
            lease_ms: LEASE_DEFAULT_MS,
            clock_drift_ppm: 10_000,
        }
    }
}

/// Bounds of a witness lease (the witness's `lease_ms`, the nodes' `failover.lease_ms`):
/// below this a lease cannot outlast one network round trip and a renewal; above it a lost
/// primary would hold the pair unavailable for minutes.
pub const LEASE_MIN_MS: u64 = 50;
pub const LEASE_MAX_MS: u64 = 60_000;

/// The lease a witness gives when its config does not say, and the one nodes expect.
pub const LEASE_DEFAULT_MS: u64 = 600;

/// How the pair fails over (`failover.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    /// Two nodes alone: a partition can leave both serving for a while (see failover.md).
    #[default]
    Available,
    /// With a witness: at most one node commits at any moment.
    Strict,
}

/// Strict-mode settings of a paired node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrictSettings {
    pub witness: SocketAddr,
    pub lease_ms: u64,
    pub clock_drift_ppm: u64,
}

#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub id: String,
    /// Where this node sends clients when it is not the primary (as `host:port` text, so a
    /// DNS name reaches clients unchanged).
    pub client_address: String,
    pub heartbeat_address: SocketAddr,
    pub replication_address: SocketAddr,
    pub heartbeat_listen: SocketAddr,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_misses: u32,
    pub secret_file: PathBuf,
    pub replication_listen: SocketAddr,
    pub replication_mode: ReplicationMode,
    pub ack_timeout_ms: u64,
    /// Entries sent to the backup and not yet acknowledged, at most.
    pub window: u64,
    pub promotion_cooldown_ms: u64,
    pub check_address: Option<SocketAddr>,
    pub check_timeout_ms: u64,
    /// `failover.mode = "strict"`: the witness and the lease; `None` in available mode.
    pub strict: Option<StrictSettings>,
    /// Mutual TLS on the replication link; `None`: plain TCP.
    pub link_tls: Option<LinkTlsConfig>,
}

/// `[replication] tls_*`: each node presents `identity` and accepts only a peer whose
/// certificate `ca` issued; the dialing backup also checks the primary's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkTlsConfig {
    pub identity: crate::tls::Identity,
    pub ca: PathBuf,
    /// The name (DNS or IP) the primary's certificate must carry for the dialing backup.
    pub peer_name: String,
}

impl PeerConfig {
    /// How long the peer may be silent before it is declared dead.
    pub fn detection_ms(&self) -> u64 {
        self.heartbeat_interval_ms * u64::from(self.heartbeat_misses)
    }
}

/// The four sections of a pair as the file gives them.
pub struct RawPair<'a> {
    pub peer: Option<&'a RawPeer>,
    pub heartbeat: Option<&'a RawHeartbeat>,
    pub replication: Option<&'a RawReplication>,
    pub failover: &'a RawFailover,
}

impl RawPair<'_> {
    /// `None`: a standalone node, which must set none of the pair's sections.
    pub fn validate(&self, file: &str, node_id: &str) -> Result<Option<PeerConfig>, ConfigError> {
        let Some(peer) = self.peer else {
            self.check_standalone(file)?;
            return Ok(None);
        };
        let id = check_node_id(file, "peer.id", &peer.id)?;
        if id == node_id {
            let problem = format!("{id:?} is this node's own id (node.id)");
            return Err(ConfigError::invalid(file, "peer.id", problem));
        }
        let missing = |key: &'static str| {
            let problem =
                "is required when [peer] is set (a pair needs heartbeats and replication)";
            ConfigError::invalid(file, key, problem)
        };
        let hb = self.heartbeat.ok_or_else(|| missing("heartbeat"))?;
        let repl = self.replication.ok_or_else(|| missing("replication"))?;
        check_not_empty(file, "heartbeat.secret_file", &hb.secret_file)?;
        let replication_address =
            parse_socket(file, "peer.replication_address", &peer.replication_address)?;
        let link_tls = check_link_tls(file, repl, replication_address)?;
        let f = self.failover;
        let check_address = match f.check_address.as_str() {
            "" => None,
            text => Some(parse_socket(file, "failover.check_address", text)?),
        };
        Ok(Some(PeerConfig {
            strict: f.strict(file, hb.interval_ms.saturating_mul(u64::from(hb.misses)))?,
            id,
            client_address: check_host_port(file, "peer.client_address", &peer.client_address)?,
            heartbeat_address: parse_socket(
                file,
                "peer.heartbeat_address",
                &peer.heartbeat_address,
            )?,
            replication_address,
            heartbeat_listen: parse_socket(file, "heartbeat.listen", &hb.listen)?,
            heartbeat_interval_ms: range!(file, "heartbeat", hb.interval_ms, 10, 60_000),
            heartbeat_misses: range!(file, "heartbeat", hb.misses, 2, 1_000),
            secret_file: hb.secret_file.clone(),
            replication_listen: parse_socket(file, "replication.listen", &repl.listen)?,
            replication_mode: repl.mode,
            ack_timeout_ms: range!(file, "replication", repl.ack_timeout_ms, 10, 600_000),
            window: range!(file, "replication", repl.window, 16, 1 << 20),
            promotion_cooldown_ms: range!(file, "failover", f.promotion_cooldown_ms, 0, 86_400_000),
            check_address,
            check_timeout_ms: range!(file, "failover", f.check_timeout_ms, 10, 60_000),
            link_tls,
        }))
    }

    /// Without `[peer]`, heartbeats, replication and fail-over settings mean nothing.
    fn check_standalone(&self, file: &str) -> Result<(), ConfigError> {
        let (f, default) = (self.failover, RawFailover::default());
        let failover_set = f.check_address != default.check_address
            || f.promotion_cooldown_ms != default.promotion_cooldown_ms
            || f.check_timeout_ms != default.check_timeout_ms
            || f.mode != default.mode
            || f.witness != default.witness;
        for (present, key) in [
            (self.heartbeat.is_some(), "heartbeat"),
            (self.replication.is_some(), "replication"),
            (failover_set, "failover"),
        ] {
            if present {
                let problem = "makes sense only with a [peer] section";
                return Err(ConfigError::invalid(file, key, problem));
            }
        }
        Ok(())
    }
}

impl RawFailover {
    /// The strict-mode settings; `detection_ms` is how long heartbeats take to declare the
    /// peer dead, which a lease must undercut.
    fn strict(&self, file: &str, detection_ms: u64) -> Result<Option<StrictSettings>, ConfigError> {
        let key = "failover.witness";
        if self.mode == FailoverMode::Available {
            if !self.witness.is_empty() {
                let problem = "is used only with failover.mode = \"strict\"";
                return Err(ConfigError::invalid(file, key, problem));
            }
            return Ok(None);
        }
        if self.witness.is_empty() {
            let problem = "is required with failover.mode = \"strict\" (the witness's host:port)";
            return Err(ConfigError::invalid(file, key, problem));
        }
        let f = self;
        let lease_ms = range!(file, "failover", f.lease_ms, LEASE_MIN_MS, LEASE_MAX_MS);
        if lease_ms >= detection_ms {
            return Err(ConfigError::invalid(
                file,
                "failover.lease_ms",
                format!(
                    "{lease_ms} must be shorter than the detection time (heartbeat.interval_ms x heartbeat.misses = {detection_ms} ms), so that a backup that detects a failure finds the lease already run out"
                ),
            ));
        }
        Ok(Some(StrictSettings {
            witness: parse_socket(file, key, &self.witness)?,
            lease_ms,
            clock_drift_ppm: check_range(
                file,
                "failover.clock_drift_ppm",
                self.clock_drift_ppm,
                0,
                100_000,
            )?,
        }))
    }
}

/// `[replication] tls_*`: none of them, or certificate, key and CA together.
fn check_link_tls(
    file: &str,
    repl: &RawReplication,
    replication_address: SocketAddr,
) -> Result<Option<LinkTlsConfig>, ConfigError> {
    let identity = check_identity(
        file,
        ("replication.tls_cert", &repl.tls_cert),
        ("replication.tls_key", &repl.tls_key),
    )?;
    let Some(identity) = identity else {
        if !repl.tls_ca.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                file,
                "replication.tls_ca",
                "is used only with replication.tls_cert and tls_key (mutual TLS); set them or remove it",
            ));
        }
        if !repl.tls_name.is_empty() {
            return Err(ConfigError::invalid(
                file,
                "replication.tls_name",
                "is used only with replication.tls_cert, tls_key and tls_ca; set them or remove it",
            ));
        }
        return Ok(None);
    };
    if repl.tls_ca.as_os_str().is_empty() {
        return Err(ConfigError::invalid(
            file,
            "replication.tls_ca",
            "is required with replication.tls_cert: each node checks the other's certificate against this CA",
        ));
    }
    let peer_name = match repl.tls_name.as_str() {
        "" => replication_address.ip().to_string(),
        name => name.to_string(),
    };
    if crate::tls::server_name(&peer_name).is_err() {
        let problem = format!("{peer_name:?} is not a DNS name or an IP address");
        return Err(ConfigError::invalid(file, "replication.tls_name", problem));
    }
    Ok(Some(LinkTlsConfig {
        identity,
        ca: repl.tls_ca.clone(),
        peer_name,
    }))
}
