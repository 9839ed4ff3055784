//! Node configuration: TOML text to a validated [`Config`].
//!
//! Parsing rejects unknown keys; [`RawConfig::validate`] checks every value and names the
//! key and the problem. This module reads one file and touches nothing else.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

use crate::log::FsyncMode;
// The core's own words for a role and a replication mode, read from TOML as they are.
pub use crate::core::{ReplicationMode, Role};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn to_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    Stderr,
    /// The local syslog socket (`logging.syslog_socket`, `/dev/log` by default).
    Syslog,
}

/// The syslog facilities a daemon may log under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFacility {
    User,
    Daemon,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

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

/// `[web]`: the browser page and its WebSocket endpoint (see `daemon::web`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    pub listen: String,
    /// The peer's page origin (`http://host:port`); empty: none.
    #[serde(default)]
    pub peer_url: String,
    /// Page origins allowed to open a WebSocket besides this node's own and the peer's.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

/// `[hooks]`: programs the node runs on events.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHooks {
    /// Empty: none.
    pub role_change: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub id: String,
    pub role: Role,
    pub data_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClient {
    pub listen: String,
    pub max_clients: usize,
    /// Unset: [`default_io_threads`].
    pub io_threads: Option<usize>,
    pub max_line_bytes: usize,
    pub max_body_bytes: usize,
    pub hello_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub send_queue_bytes: usize,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub room_rate_per_sec: u32,
    pub room_rate_burst: u32,
    pub max_errors: u32,
    pub max_rooms_per_client: usize,
    pub max_connections_per_ip: usize,
    pub rate_violations_max: u32,
    pub rate_violations_window_ms: u64,
    pub max_room_members: usize,
    /// Empty: plain TCP. Both set: the listener speaks TLS only.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
}

/// `client.io_threads` when unset: two workers, or one when this process may run on one
/// core only (`taskset -c 0`, a cpuset): there the workers, the core thread and the log writer
/// would only wait on each other (docs/benchmarks.md, "Threads on one core").
pub fn default_io_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

impl Default for RawClient {
    fn default() -> Self {
        RawClient {
            listen: "127.0.0.1:7400".into(),
            max_clients: 10_000,
            io_threads: None,
            max_line_bytes: 65_536,
            max_body_bytes: 4_096,
            hello_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            send_queue_bytes: 1 << 20,
            rate_per_sec: 1_000,
            rate_burst: 2_000,
            room_rate_per_sec: 50,
            room_rate_burst: 200,
            max_errors: 20,
            max_rooms_per_client: 100,
            max_connections_per_ip: 256,
            rate_violations_max: 20,
            rate_violations_window_ms: 10_000,
            max_room_members: 10_000,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
        }
    }
}

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
            failure_delay_ms: 300,
            verify_threads: 1,
            max_pending_verifies: 64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub fsync: FsyncMode,
    pub segment_bytes: u64,
    pub retain_messages: u64,
    pub retain_bytes: u64,
    pub max_pending: usize,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            fsync: FsyncMode::Batch,
            segment_bytes: 64 << 20,
            retain_messages: 1_000_000,
            retain_bytes: 1 << 30,
            max_pending: 65_536,
        }
    }
}

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
            lease_ms: 600,
            clock_drift_ppm: 10_000,
        }
    }
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLogging {
    pub level: LogLevel,
    pub target: LogTarget,
    pub facility: SyslogFacility,
    pub syslog_socket: PathBuf,
}

impl Default for RawLogging {
    fn default() -> Self {
        RawLogging {
            level: LogLevel::Info,
            target: LogTarget::Stderr,
            facility: SyslogFacility::Daemon,
            syslog_socket: PathBuf::from("/dev/log"),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Empty: `<data_dir>/admin.sock`.
    pub socket: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: String,
}

/// A Unix socket path must fit `sockaddr_un.sun_path` (108 bytes with its NUL).
const UNIX_PATH_MAX_BYTES: usize = 107;

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

/// `[web]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct WebConfig {
    pub listen: SocketAddr,
    /// The peer's page origin, `http://host:port` (or `https://`), without a path.
    pub peer_url: Option<String>,
    /// Origins (`scheme://host[:port]`) allowed besides the node's own and `peer_url`.
    pub allowed_origins: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub listen: SocketAddr,
    pub max_clients: usize,
    pub io_threads: usize,
    pub max_line_bytes: usize,
    pub max_body_bytes: usize,
    pub hello_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub send_queue_bytes: usize,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// Per-connection token bucket for `join`, `leave` and `history` (each fans out presence
    /// or reads the log): requests per second, and the burst allowed.
    pub room_rate_per_sec: u32,
    pub room_rate_burst: u32,
    pub max_errors: u32,
    pub max_rooms_per_client: usize,
    /// Connections open at once from one IP address; more get `unavailable`.
    pub max_connections_per_ip: usize,
    /// A connection refused `rate_limited` this many times within
    /// `rate_violations_window_ms` is closed (flood control).
    pub rate_violations_max: u32,
    pub rate_violations_window_ms: u64,
    /// Members one room may have; a `join` beyond it gets `bad_request`.
    pub max_room_members: usize,
    /// The listener's certificate and key: `Some` makes it speak TLS only. The files are
    /// read at start and on every reload (see `tls::client_listener`).
    pub tls: Option<crate::tls::Identity>,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub fsync: FsyncMode,
    pub segment_bytes: u64,
    pub retain_messages: u64,
    pub retain_bytes: u64,
    pub max_pending: usize,
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

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file)?.validate(path)
}

/// Parses TOML text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        file: file.to_string(),
        message: e.to_string().trim_end().replace('\n', "\n  "),
    })
}

fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    file: &str,
    key: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::Invalid {
            file: file.to_string(),
            key,
            problem: format!("{value} is out of range ({min} to {max})"),
        });
    }
    Ok(value)
}

fn check_node_id(file: &str, key: &'static str, id: &str) -> Result<String, ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        return Err(ConfigError::Invalid {
            file: file.to_string(),
            key,
            problem: format!("{id:?} must be 1-32 characters of ASCII letters, digits, `_`, `-`"),
        });
    }
    Ok(id.to_string())
}

/// A program the node runs: an absolute path (the daemon's working directory is no
/// business of the config) to a regular file with an execute bit.
fn check_executable(file: &str, key: &'static str, path: &Path) -> Result<PathBuf, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |problem: String| ConfigError::Invalid {
        file: file.to_string(),
        key,
        problem,
    };
    if !path.is_absolute() {
        return Err(bad(format!("{} is not an absolute path", path.display())));
    }
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(bad(format!("{} is not a regular file", path.display())));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(bad(format!(
            "{} is not executable (chmod +x it)",
            path.display()
        )));
    }
    Ok(path.to_path_buf())
}

fn parse_socket(file: &str, key: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| ConfigError::Invalid {
        file: file.to_string(),
        key,
        problem: format!("{text:?} is not an IP address with a port (e.g. 127.0.0.1:7400)"),
    })
}

/// An origin as browsers send it: `http://` or `https://`, then `host[:port]` with no
/// path, and only characters that may stand in an HTTP header (it goes into the CSP).
fn check_origin(file: &str, key: &'static str, text: &str) -> Result<String, ConfigError> {
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"));
    let fine = |c: char| c.is_ascii_alphanumeric() || ".-:[]".contains(c);
    match rest {
        Some(host) if !host.is_empty() && host.chars().all(fine) => Ok(text.to_string()),
        _ => Err(ConfigError::Invalid {
            file: file.to_string(),
            key,
            problem: format!(
                "{text:?} is not an origin: http:// or https:// and host[:port], no path \
                 (e.g. http://10.0.0.2:7480)"
            ),
        }),
    }
}

fn check_web(file: &str, raw: &RawWeb) -> Result<WebConfig, ConfigError> {
    let peer_url = match raw.peer_url.as_str() {
        "" => None,
        url => Some(check_origin(file, "web.peer_url", url)?),
    };
    let allowed_origins = raw
        .allowed_origins
        .iter()
        .map(|o| check_origin(file, "web.allowed_origins", o))
        .collect::<Result<_, _>>()?;
    Ok(WebConfig {
        listen: parse_socket(file, "web.listen", &raw.listen)?,
        peer_url,
        allowed_origins,
    })
}

/// `host:port` where host may be a name; checked for shape only, as clients resolve it.
fn check_host_port(file: &str, key: &'static str, text: &str) -> Result<String, ConfigError> {
    let bad = |problem: String| ConfigError::Invalid {
        file: file.to_string(),
        key,
        problem,
    };
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(text.to_string());
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| bad(format!("{text:?} is not host:port")))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad(format!("{text:?}: port {port:?} is not 1-65535")))?;
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(bad(format!("{text:?}: {host:?} is not a host name")));
    }
    Ok(text.to_string())
}

/// A certificate and key named together: both or neither.
fn check_identity(
    file: &str,
    (cert_key, cert): (&'static str, &Path),
    (key_key, key): (&'static str, &Path),
) -> Result<Option<crate::tls::Identity>, ConfigError> {
    match (cert.as_os_str().is_empty(), key.as_os_str().is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Ok(Some(crate::tls::Identity {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })),
        (false, true) => Err(ConfigError::Invalid {
            file: file.to_string(),
            key: key_key,
            problem: format!("is required with {cert_key} (the certificate's private key)"),
        }),
        (true, false) => Err(ConfigError::Invalid {
            file: file.to_string(),
            key: cert_key,
            problem: format!("is required with {key_key} (the key's certificate chain)"),
        }),
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
    let invalid = |key: &'static str, problem: &str| ConfigError::Invalid {
        file: file.to_string(),
        key,
        problem: problem.to_string(),
    };
    let Some(identity) = identity else {
        if !repl.tls_ca.as_os_str().is_empty() {
            return Err(invalid(
                "replication.tls_ca",
                "is used only with replication.tls_cert and tls_key (mutual TLS); set them or remove it",
            ));
        }
        if !repl.tls_name.is_empty() {
            return Err(invalid(
                "replication.tls_name",
                "is used only with replication.tls_cert, tls_key and tls_ca; set them or remove it",
            ));
        }
        return Ok(None);
    };
    if repl.tls_ca.as_os_str().is_empty() {
        return Err(invalid(
            "replication.tls_ca",
            "is required with replication.tls_cert: each node checks the other's certificate against this CA",
        ));
    }
    let peer_name = if repl.tls_name.is_empty() {
        replication_address.ip().to_string()
    } else {
        repl.tls_name.clone()
    };
    if crate::tls::server_name(&peer_name).is_err() {
        return Err(ConfigError::Invalid {
            file: file.to_string(),
            key: "replication.tls_name",
            problem: format!("{peer_name:?} is not a DNS name or an IP address"),
        });
    }
    Ok(Some(LinkTlsConfig {
        identity,
        ca: repl.tls_ca.clone(),
        peer_name,
    }))
}

impl RawConfig {
    pub fn validate(self, path: &Path) -> Result<Config, ConfigError> {
        let file = &path.display().to_string();
        let node_id = check_node_id(file, "node.id", &self.node.id)?;
        if self.node.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                file: file.clone(),
                key: "node.data_dir",
                problem: "must not be empty".into(),
            });
        }
        let c = &self.client;
        let client = ClientConfig {
            listen: parse_socket(file, "client.listen", &c.listen)?,
            max_clients: check_range(file, "client.max_clients", c.max_clients, 1, 1_000_000)?,
            io_threads: match c.io_threads {
                Some(n) => check_range(file, "client.io_threads", n, 1, 64)?,
                None => default_io_threads(),
            },
            max_line_bytes: check_range(
                file,
                "client.max_line_bytes",
                c.max_line_bytes,
                256,
                16 << 20,
            )?,
            max_body_bytes: check_range(
                file,
                "client.max_body_bytes",
                c.max_body_bytes,
                1,
                1 << 20,
            )?,
            hello_timeout_ms: check_range(
                file,
                "client.hello_timeout_ms",
                c.hello_timeout_ms,
                100,
                600_000,
            )?,
            idle_timeout_ms: check_range(
                file,
                "client.idle_timeout_ms",
                c.idle_timeout_ms,
                1_000,
                86_400_000,
            )?,
            send_queue_bytes: check_range(
                file,
                "client.send_queue_bytes",
                c.send_queue_bytes,
                4_096,
                1 << 30,
            )?,
            rate_per_sec: check_range(file, "client.rate_per_sec", c.rate_per_sec, 1, 10_000_000)?,
            rate_burst: check_range(file, "client.rate_burst", c.rate_burst, 1, 10_000_000)?,
            room_rate_per_sec: check_range(
                file,
                "client.room_rate_per_sec",
                c.room_rate_per_sec,
                1,
                1_000_000,
            )?,
            room_rate_burst: check_range(
                file,
                "client.room_rate_burst",
                c.room_rate_burst,
                1,
                1_000_000,
            )?,
            max_errors: check_range(file, "client.max_errors", c.max_errors, 1, 1_000_000)?,
            max_rooms_per_client: check_range(
                file,
                "client.max_rooms_per_client",
                c.max_rooms_per_client,
                1,
                100_000,
            )?,
            max_connections_per_ip: check_range(
                file,
                "client.max_connections_per_ip",
                c.max_connections_per_ip,
                1,
                1_000_000,
            )?,
            rate_violations_max: check_range(
                file,
                "client.rate_violations_max",
                c.rate_violations_max,
                1,
                1_000_000,
            )?,
            rate_violations_window_ms: check_range(
                file,
                "client.rate_violations_window_ms",
                c.rate_violations_window_ms,
                100,
                3_600_000,
            )?,
            max_room_members: check_range(
                file,
                "client.max_room_members",
                c.max_room_members,
                1,
                1_000_000,
            )?,
            tls: check_identity(
                file,
                ("client.tls_cert", &c.tls_cert),
                ("client.tls_key", &c.tls_key),
            )?,
        };
        // A body must fit in a line with its JSON around it, or no send could pass.
        if client.max_body_bytes + 256 > client.max_line_bytes {
            return Err(ConfigError::Invalid {
                file: file.clone(),
                key: "client.max_body_bytes",
                problem: format!(
                    "{} leaves no room for the frame around it within client.max_line_bytes ({}); keep it at least 256 bytes smaller",
                    client.max_body_bytes, client.max_line_bytes
                ),
            });
        }
        // After a fail-over a client rejoins all its rooms at once: that must never be refused.
        if (client.room_rate_burst as usize) < client.max_rooms_per_client {
            return Err(ConfigError::Invalid {
                file: file.clone(),
                key: "client.room_rate_burst",
                problem: format!(
                    "{} is below client.max_rooms_per_client ({}): a client rejoining its rooms after a fail-over would be refused",
                    client.room_rate_burst, client.max_rooms_per_client
                ),
            });
        }
        let l = &self.log;
        let log = LogConfig {
            fsync: l.fsync,
            segment_bytes: check_range(
                file,
                "log.segment_bytes",
                l.segment_bytes,
                64 << 10,
                1 << 32,
            )?,
            retain_messages: check_range(
                file,
                "log.retain_messages",
                l.retain_messages,
                1_000,
                1 << 40,
            )?,
            retain_bytes: check_range(file, "log.retain_bytes", l.retain_bytes, 1 << 20, 1 << 50)?,
            max_pending: check_range(file, "log.max_pending", l.max_pending, 16, 1 << 22)?,
        };
        if log.retain_bytes < 2 * log.segment_bytes {
            return Err(ConfigError::Invalid {
                file: file.clone(),
                key: "log.retain_bytes",
                problem: format!(
                    "{} must be at least two segments (2 x log.segment_bytes = {}), as retention drops whole segments",
                    log.retain_bytes,
                    2 * log.segment_bytes
                ),
            });
        }
        let missing = |key: &'static str| ConfigError::Invalid {
            file: file.clone(),
            key,
            problem: "is required when [peer] is set (a pair needs heartbeats and replication)"
                .into(),
        };
        let peer = match self.peer {
            None => {
                let failover_set = self.failover.check_address
                    != RawFailover::default().check_address
                    || self.failover.promotion_cooldown_ms
                        != RawFailover::default().promotion_cooldown_ms
                    || self.failover.check_timeout_ms != RawFailover::default().check_timeout_ms
                    || self.failover.mode != FailoverMode::Available
                    || !self.failover.witness.is_empty();
                for (present, key) in [
                    (self.heartbeat.is_some(), "heartbeat"),
                    (self.replication.is_some(), "replication"),
                    (failover_set, "failover"),
                ] {
                    if present {
                        return Err(ConfigError::Invalid {
                            file: file.clone(),
                            key,
                            problem: "makes sense only with a [peer] section".into(),
                        });
                    }
                }
                None
            }
            Some(p) => {
                let id = check_node_id(file, "peer.id", &p.id)?;
                if id == node_id {
                    return Err(ConfigError::Invalid {
                        file: file.clone(),
                        key: "peer.id",
                        problem: format!("{id:?} is this node's own id (node.id)"),
                    });
                }
                let hb = self.heartbeat.ok_or_else(|| missing("heartbeat"))?;
                let repl = self.replication.ok_or_else(|| missing("replication"))?;
                let f = &self.failover;
                if hb.secret_file.as_os_str().is_empty() {
                    return Err(ConfigError::Invalid {
                        file: file.clone(),
                        key: "heartbeat.secret_file",
                        problem: "must not be empty".into(),
                    });
                }
                let replication_address =
                    parse_socket(file, "peer.replication_address", &p.replication_address)?;
                let link_tls = check_link_tls(file, &repl, replication_address)?;
                let check_address = if f.check_address.is_empty() {
                    None
                } else {
                    Some(parse_socket(
                        file,
                        "failover.check_address",
                        &f.check_address,
                    )?)
                };
                let strict = match f.mode {
                    FailoverMode::Available => {
                        if !f.witness.is_empty() {
                            return Err(ConfigError::Invalid {
                                file: file.clone(),
                                key: "failover.witness",
                                problem: "is used only with failover.mode = \"strict\"".into(),
                            });
                        }
                        None
                    }
                    FailoverMode::Strict => {
                        if f.witness.is_empty() {
                            return Err(ConfigError::Invalid {
                                file: file.clone(),
                                key: "failover.witness",
                                problem: "is required with failover.mode = \"strict\" (the witness's host:port)".into(),
                            });
                        }
                        let detection_ms = hb.interval_ms.saturating_mul(u64::from(hb.misses));
                        let lease_ms =
                            check_range(file, "failover.lease_ms", f.lease_ms, 50, 60_000)?;
                        if lease_ms >= detection_ms {
                            return Err(ConfigError::Invalid {
                                file: file.clone(),
                                key: "failover.lease_ms",
                                problem: format!(
                                    "{lease_ms} must be shorter than the detection time (heartbeat.interval_ms x heartbeat.misses = {detection_ms} ms), so that a backup that detects a failure finds the lease already run out"
                                ),
                            });
                        }
                        Some(StrictSettings {
                            witness: parse_socket(file, "failover.witness", &f.witness)?,
                            lease_ms,
                            clock_drift_ppm: check_range(
                                file,
                                "failover.clock_drift_ppm",
                                f.clock_drift_ppm,
                                0,
                                100_000,
                            )?,
                        })
                    }
                };
                Some(PeerConfig {
                    strict,
                    id,
                    client_address: check_host_port(
                        file,
                        "peer.client_address",
                        &p.client_address,
                    )?,
                    heartbeat_address: parse_socket(
                        file,
                        "peer.heartbeat_address",
                        &p.heartbeat_address,
                    )?,
                    replication_address,
                    heartbeat_listen: parse_socket(file, "heartbeat.listen", &hb.listen)?,
                    heartbeat_interval_ms: check_range(
                        file,
                        "heartbeat.interval_ms",
                        hb.interval_ms,
                        10,
                        60_000,
                    )?,
                    heartbeat_misses: check_range(file, "heartbeat.misses", hb.misses, 2, 1_000)?,
                    secret_file: hb.secret_file,
                    replication_listen: parse_socket(file, "replication.listen", &repl.listen)?,
                    replication_mode: repl.mode,
                    ack_timeout_ms: check_range(
                        file,
                        "replication.ack_timeout_ms",
                        repl.ack_timeout_ms,
                        10,
                        600_000,
                    )?,
                    window: check_range(file, "replication.window", repl.window, 16, 1 << 20)?,
                    promotion_cooldown_ms: check_range(
                        file,
                        "failover.promotion_cooldown_ms",
                        f.promotion_cooldown_ms,
                        0,
                        86_400_000,
                    )?,
                    check_address,
                    check_timeout_ms: check_range(
                        file,
                        "failover.check_timeout_ms",
                        f.check_timeout_ms,
                        10,
                        60_000,
                    )?,
                    link_tls,
                })
            }
        };
        let admin_socket = if self.admin.socket.as_os_str().is_empty() {
            self.node.data_dir.join("admin.sock")
        } else {
            self.admin.socket
        };
        if admin_socket.as_os_str().len() > UNIX_PATH_MAX_BYTES {
            return Err(ConfigError::Invalid {
                file: file.clone(),
                key: "admin.socket",
                problem: format!(
                    "{} is longer than a Unix socket path may be ({UNIX_PATH_MAX_BYTES} bytes); set a shorter admin.socket",
                    admin_socket.display()
                ),
            });
        }
        if self.logging.syslog_socket.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                file: file.clone(),
                key: "logging.syslog_socket",
                problem: "must not be empty".into(),
            });
        }
        let metrics_listen = match &self.metrics {
            Some(m) => Some(parse_socket(file, "metrics.listen", &m.listen)?),
            None => None,
        };
        let web = match &self.web {
            Some(w) => Some(check_web(file, w)?),
            None => None,
        };
        let a = &self.auth;
        let users_file =
            match (a.mode, a.users_file.as_os_str().is_empty()) {
                (AuthMode::Token, true) => {
                    return Err(ConfigError::Invalid {
                        file: file.clone(),
                        key: "auth.users_file",
                        problem: "is required with auth.mode = \"token\"".into(),
                    })
                }
                (AuthMode::Token, false) => Some(a.users_file.clone()),
                (AuthMode::None, true) => None,
                (AuthMode::None, false) => return Err(ConfigError::Invalid {
                    file: file.clone(),
                    key: "auth.users_file",
                    problem:
                        "is read only with auth.mode = \"token\"; set the mode or remove the key"
                            .into(),
                }),
            };
        let auth = AuthConfig {
            mode: a.mode,
            users_file,
            failure_delay_ms: check_range(
                file,
                "auth.failure_delay_ms",
                a.failure_delay_ms,
                0,
                10_000,
            )?,
            verify_threads: check_range(file, "auth.verify_threads", a.verify_threads, 1, 16)?,
            max_pending_verifies: check_range(
                file,
                "auth.max_pending_verifies",
                a.max_pending_verifies,
                1,
                65_536,
            )?,
        };
        let role_change_hook = if self.hooks.role_change.as_os_str().is_empty() {
            None
        } else {
            Some(check_executable(
                file,
                "hooks.role_change",
                &self.hooks.role_change,
            )?)
        };
        Ok(Config {
            file: path.to_path_buf(),
            node_id,
            role: self.node.role,
            data_dir: self.node.data_dir,
            client,
            log,
            peer,
            log_level: self.logging.level,
            log_target: self.logging.target,
            log_facility: self.logging.facility,
            syslog_socket: self.logging.syslog_socket,
            admin_socket,
            metrics_listen,
            web,
            auth,
            role_change_hook,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, ConfigError> {
        parse(text, "t.toml")?.validate(Path::new("t.toml"))
    }

    const MINIMAL: &str = "[node]\nid = \"a\"\nrole = \"primary\"\ndata_dir = \"d\"\n";

    #[test]
    fn role_change_hook_must_be_an_absolute_executable_file() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(check(MINIMAL).unwrap().role_change_hook, None);
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hook.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let with = |path: &str| check(&format!("{MINIMAL}[hooks]\nrole_change = \"{path}\"\n"));
        let err = with("hook.sh").unwrap_err().to_string();
        assert!(
            err.starts_with("t.toml: hooks.role_change: ") && err.contains("not an absolute path"),
            "{err}"
        );
        let err = with(script.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("is not executable"), "{err}");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = with(script.to_str().unwrap()).unwrap();
        assert_eq!(config.role_change_hook.as_deref(), Some(script.as_path()));
        let err = with(dir.path().to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let missing = dir.path().join("missing");
        let err = with(missing.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("No such file"), "{err}");
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let config = check(MINIMAL).unwrap();
        assert_eq!(config.client.max_body_bytes, 4096);
        assert_eq!(config.client.max_line_bytes, 65536);
        assert_eq!(config.log.fsync, FsyncMode::Batch);
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let err = check(&format!("{MINIMAL}[client]\nlisten = \"nowhere\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.toml: client.listen: \"nowhere\""),
            "{err}"
        );
        let err = check(&format!("{MINIMAL}[client]\nmax_clients = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("client.max_clients: 0 is out of range"),
            "{err}"
        );
        let err = check(&format!("{MINIMAL}[client]\nlisten_port = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml") && err.contains("unknown field `listen_port`"),
            "{err}"
        );
        let peer = "[peer]\nid = \"a\"\nclient_address = \"x:1\"\nheartbeat_address = \"127.0.0.1:1\"\nreplication_address = \"127.0.0.1:2\"\n";
        let err = check(&format!("{MINIMAL}{peer}")).unwrap_err().to_string();
        assert!(err.contains("peer.id"), "{err}");
        let err = check(&format!("{MINIMAL}{}", peer.replace("\"a\"", "\"b\"")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.toml: heartbeat: is required"), "{err}");
        let err = check("[node]\nid = \"a\"\nrole = \"boss\"\ndata_dir = \"d\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("role") && err.contains("boss"), "{err}");
    }

    #[test]
    fn strict_failover_needs_a_witness_and_a_lease_shorter_than_detection() {
        let pair = format!(
            "{MINIMAL}[peer]\nid = \"b\"\nclient_address = \"x:1\"\nheartbeat_address = \"127.0.0.1:1\"\nreplication_address = \"127.0.0.1:2\"\n\
             [heartbeat]\nlisten = \"127.0.0.1:3\"\nsecret_file = \"s\"\n[replication]\nlisten = \"127.0.0.1:4\"\n[failover]\n"
        );
        let config = check(&pair).unwrap();
        assert_eq!(
            config.peer.unwrap().strict,
            None,
            "available is the default"
        );
        let err = check(&format!("{pair}mode = \"strict\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("t.toml: failover.witness: is required"),
            "{err}"
        );
        let strict = format!("{pair}mode = \"strict\"\nwitness = \"127.0.0.1:7410\"\n");
        let settings = check(&strict).unwrap().peer.unwrap().strict.unwrap();
        assert_eq!((settings.lease_ms, settings.clock_drift_ppm), (600, 10_000));
        let err = check(&format!("{strict}lease_ms = 1000\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "t.toml: failover.lease_ms: 1000 must be shorter than the detection time"
            ),
            "{err}"
        );
        let err = check(&format!("{pair}witness = \"127.0.0.1:7410\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("failover.witness: is used only with"), "{err}");
        let err = check(&format!("{MINIMAL}[failover]\nmode = \"strict\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("failover: makes sense only with a [peer]"),
            "{err}"
        );
    }

    #[test]
    fn operations_keys_default_and_validate() {
        let config = check(MINIMAL).unwrap();
        assert_eq!(config.admin_socket, Path::new("d/admin.sock"));
        assert_eq!(config.metrics_listen, None);
        assert_eq!(config.log_target, LogTarget::Stderr);
        assert_eq!(config.log_facility, SyslogFacility::Daemon);
        let config = check(&format!(
            "{MINIMAL}[logging]\ntarget = \"syslog\"\nfacility = \"local3\"\n[admin]\nsocket = \"/run/x.sock\"\n[metrics]\nlisten = \"127.0.0.1:9400\"\n"
        ))
        .unwrap();
        assert_eq!(config.log_target, LogTarget::Syslog);
        assert_eq!(config.log_facility, SyslogFacility::Local3);
        assert_eq!(config.admin_socket, Path::new("/run/x.sock"));
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9400".parse().unwrap())
        );
        let err = check(&format!("{MINIMAL}[metrics]\nlisten = \"9400\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics.listen"), "{err}");
        let err = check(&format!("{MINIMAL}[logging]\nfacility = \"kern\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kern"), "{err}");
        let long = "x".repeat(200);
        let err = check(&format!("{MINIMAL}[admin]\nsocket = \"{long}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.socket"), "{err}");
    }

    #[test]
    fn security_keys_default_and_validate() {
        let config = check(MINIMAL).unwrap();
        assert_eq!(config.auth.mode, AuthMode::None);
        assert_eq!(config.auth.users_file, None);
        assert_eq!(config.client.max_connections_per_ip, 256);
        assert_eq!(config.client.rate_violations_max, 20);
        assert_eq!(config.client.max_room_members, 10_000);
        let config = check(&format!(
            "{MINIMAL}[auth]\nmode = \"token\"\nusers_file = \"u\"\nfailure_delay_ms = 0\n"
        ))
        .unwrap();
        assert_eq!(config.auth.mode, AuthMode::Token);
        assert_eq!(config.auth.users_file, Some(PathBuf::from("u")));
        for (extra, needle) in [
            ("[auth]\nmode = \"token\"\n", "auth.users_file: is required"),
            (
                "[auth]\nusers_file = \"u\"\n",
                "auth.users_file: is read only",
            ),
            ("[auth]\nmode = \"ldap\"\n", "ldap"),
            ("[auth]\nverify_threads = 0\n", "auth.verify_threads"),
            (
                "[client]\nmax_connections_per_ip = 0\n",
                "client.max_connections_per_ip",
            ),
            (
                "[client]\nrate_violations_window_ms = 5\n",
                "client.rate_violations_window_ms",
            ),
        ] {
            let err = check(&format!("{MINIMAL}{extra}")).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra}: {err}");
        }
    }

    #[test]
    fn tls_keys_come_in_sets() {
        let config = check(MINIMAL).unwrap();
        assert_eq!(config.client.tls, None);
        let config = check(&format!(
            "{MINIMAL}[client]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n"
        ))
        .unwrap();
        let identity = config.client.tls.unwrap();
        assert_eq!(
            (identity.cert, identity.key),
            (PathBuf::from("c.pem"), PathBuf::from("k.pem"))
        );
        let peer = "[peer]\nid = \"b\"\nclient_address = \"x:1\"\nheartbeat_address = \"127.0.0.1:1\"\nreplication_address = \"127.0.0.9:2\"\n[heartbeat]\nlisten = \"127.0.0.1:3\"\nsecret_file = \"s\"\n[replication]\nlisten = \"127.0.0.1:4\"\n";
        let config = check(&format!("{MINIMAL}{peer}")).unwrap();
        assert_eq!(config.peer.unwrap().link_tls, None);
        let config = check(&format!(
            "{MINIMAL}{peer}tls_cert = \"c\"\ntls_key = \"k\"\ntls_ca = \"ca\"\n"
        ))
        .unwrap();
        let link = config.peer.unwrap().link_tls.unwrap();
        assert_eq!(link.peer_name, "127.0.0.9", "defaults to the dialed IP");
        assert_eq!(link.ca, PathBuf::from("ca"));
        let config = check(&format!(
            "{MINIMAL}{peer}tls_cert = \"c\"\ntls_key = \"k\"\ntls_ca = \"ca\"\ntls_name = \"node-a.pair\"\n"
        ))
        .unwrap();
        assert_eq!(
            config.peer.unwrap().link_tls.unwrap().peer_name,
            "node-a.pair"
        );
        for (extra, needle) in [
            (
                "[client]\ntls_cert = \"c\"\n",
                "t.toml: client.tls_key: is required with client.tls_cert",
            ),
            (
                "[client]\ntls_key = \"k\"\n",
                "t.toml: client.tls_cert: is required with client.tls_key",
            ),
            (
                &format!("{peer}tls_cert = \"c\"\ntls_key = \"k\"\n"),
                "t.toml: replication.tls_ca: is required",
            ),
            (
                &format!("{peer}tls_ca = \"ca\"\n"),
                "t.toml: replication.tls_ca: is used only with",
            ),
            (
                &format!("{peer}tls_key = \"k\"\ntls_ca = \"ca\"\n"),
                "t.toml: replication.tls_cert: is required",
            ),
            (
                &format!("{peer}tls_cert = \"c\"\ntls_key = \"k\"\ntls_ca = \"ca\"\ntls_name = \"no spaces\"\n"),
                "t.toml: replication.tls_name: \"no spaces\"",
            ),
        ] {
            let err = check(&format!("{MINIMAL}{extra}")).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra}: {err}");
        }
    }

    #[test]
    fn shipped_configs_validate() {
        for name in ["config/primary.toml", "config/backup.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
            load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
