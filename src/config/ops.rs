//! `[logging]`, `[admin]`, `[metrics]` and `[hooks]`: how operators watch and drive a node.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::check::{check_executable, check_not_empty, parse_socket};
use super::ConfigError;

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

impl RawLogging {
    /// Every value is checked by its type but the socket, which must be named.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        check_not_empty(file, "logging.syslog_socket", &self.syslog_socket)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Empty: `<data_dir>/admin.sock`.
    pub socket: PathBuf,
}

/// A Unix socket path must fit `sockaddr_un.sun_path` (108 bytes with its NUL).
const UNIX_PATH_MAX_BYTES: usize = 107;

impl RawAdmin {
    /// The admin socket's path; unset, it lies in `data_dir`.
    pub fn validate(&self, file: &str, data_dir: &Path) -> Result<PathBuf, ConfigError> {
        let socket = if self.socket.as_os_str().is_empty() {
            data_dir.join("admin.sock")
        } else {
            self.socket.clone()
        };
        if socket.as_os_str().len() > UNIX_PATH_MAX_BYTES {
            return Err(ConfigError::invalid(
                file,
                "admin.socket",
                format!(
                    "{} is longer than a Unix socket path may be ({UNIX_PATH_MAX_BYTES} bytes); set a shorter admin.socket",
                    socket.display()
                ),
            ));
        }
        Ok(socket)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: String,
}

impl RawMetrics {
    pub fn validate(&self, file: &str) -> Result<SocketAddr, ConfigError> {
        parse_socket(file, "metrics.listen", &self.listen)
    }
}

/// `[hooks]`: programs the node runs on events.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHooks {
    /// Empty: none.
    pub role_change: PathBuf,
}

impl RawHooks {
    /// The role-change program, if any.
    pub fn validate(&self, file: &str) -> Result<Option<PathBuf>, ConfigError> {
        if self.role_change.as_os_str().is_empty() {
            return Ok(None);
        }
        check_executable(file, "hooks.role_change", &self.role_change).map(Some)
    }
}
