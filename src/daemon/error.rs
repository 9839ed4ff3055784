//! Why the daemon could not start: each kind names what failed (the config key and its
//! value, the file, the thread) and the cause. `pbchatd` prints the message and exits 1;
//! nothing retries, since a restart would fail the same way.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::state::StateError;
use crate::auth::UsersError;
use crate::config::ConfigError;
use crate::log::LogError;
use crate::wire::keyring::KeyringError;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A TCP listener: `key` is the config key that set `address`; `step` the call that
    /// failed (`bind`, `listen`, ...).
    #[error("{key} {address}: {step}: {source}")]
    Listen {
        key: &'static str,
        address: SocketAddr,
        step: &'static str,
        source: io::Error,
    },
    /// The admin socket (`admin.socket`) could not be placed.
    #[error("admin.socket {}: {source}", path.display())]
    AdminSocket { path: PathBuf, source: io::Error },
    /// Something else occupies the admin socket's path.
    #[error("admin.socket {}: {problem}", path.display())]
    AdminPath {
        path: PathBuf,
        problem: &'static str,
    },
    /// The heartbeat's UDP socket (`heartbeat.listen`).
    #[error("heartbeat.listen {address}: cannot bind: {source}")]
    Heartbeat {
        address: SocketAddr,
        source: io::Error,
    },
    /// Strict mode's socket to the witness (`failover.witness`).
    #[error("witness {address}: {step}: {source}")]
    Witness {
        address: SocketAddr,
        step: &'static str,
        source: io::Error,
    },
    /// A client I/O worker's poll.
    #[error("client I/O worker: {0}")]
    Worker(io::Error),
    #[error("cannot start thread {name}: {source}")]
    Thread { name: String, source: io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    /// The data dir: its lock or its epochs file (the error names the file).
    #[error("{0}")]
    DataDir(#[from] StateError),
    /// The log in `dir`: opening and recovering it, or applying its retention at start.
    #[error("log {}: {step}{source}", dir.display())]
    Log {
        dir: PathBuf,
        /// Empty while opening; `retention: ` when applying the retention.
        step: &'static str,
        source: LogError,
    },
    #[error("auth.users_file: {0}")]
    Users(#[from] UsersError),
    /// `peer.secret_file` (the error names the file).
    #[error("{0}")]
    Keyring(#[from] KeyringError),
    /// A TLS certificate or key (the error names the key and the file).
    #[error("{0}")]
    Tls(#[from] ConfigError),
}

impl DaemonError {
    /// `f` for a failed call `step` on the listener that `key` set to `address`.
    pub fn listen(
        key: &'static str,
        address: SocketAddr,
        step: &'static str,
    ) -> impl FnOnce(io::Error) -> DaemonError {
        move |source| DaemonError::Listen {
            key,
            address,
            step,
            source,
        }
    }
}
