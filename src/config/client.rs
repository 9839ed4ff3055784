//! `[client]`: the client listener, its limits and its TLS.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::check::{check_identity, check_range, parse_socket, range};
use super::ConfigError;
use crate::core::AccessConfig;

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
    /// The documented defaults; those the core enforces come from [`AccessConfig::DEFAULT`].
    fn default() -> Self {
        let access = AccessConfig::DEFAULT;
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
            room_rate_per_sec: access.room_rate_per_sec,
            room_rate_burst: access.room_rate_burst,
            max_errors: 20,
            max_rooms_per_client: 100,
            max_connections_per_ip: 256,
            rate_violations_max: access.rate_violations_max,
            rate_violations_window_ms: access.rate_violations_window_ms,
            max_room_members: access.max_room_members,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
        }
    }
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

impl RawClient {
    pub fn validate(&self, file: &str) -> Result<ClientConfig, ConfigError> {
        let c = self;
        let client = ClientConfig {
            listen: parse_socket(file, "client.listen", &c.listen)?,
            max_clients: range!(file, "client", c.max_clients, 1, 1_000_000),
            io_threads: match c.io_threads {
                Some(n) => check_range(file, "client.io_threads", n, 1, 64)?,
                None => default_io_threads(),
            },
            max_line_bytes: range!(file, "client", c.max_line_bytes, 256, 16 << 20),
            max_body_bytes: range!(file, "client", c.max_body_bytes, 1, 1 << 20),
            hello_timeout_ms: range!(file, "client", c.hello_timeout_ms, 100, 600_000),
            idle_timeout_ms: range!(file, "client", c.idle_timeout_ms, 1_000, 86_400_000),
            send_queue_bytes: range!(file, "client", c.send_queue_bytes, 4_096, 1 << 30),
            rate_per_sec: range!(file, "client", c.rate_per_sec, 1, 10_000_000),
            rate_burst: range!(file, "client", c.rate_burst, 1, 10_000_000),
            room_rate_per_sec: range!(file, "client", c.room_rate_per_sec, 1, 1_000_000),
            room_rate_burst: range!(file, "client", c.room_rate_burst, 1, 1_000_000),
            max_errors: range!(file, "client", c.max_errors, 1, 1_000_000),
            max_rooms_per_client: range!(file, "client", c.max_rooms_per_client, 1, 100_000),
            max_connections_per_ip: range!(file, "client", c.max_connections_per_ip, 1, 1_000_000),
            rate_violations_max: range!(file, "client", c.rate_violations_max, 1, 1_000_000),
            rate_violations_window_ms: range!(
                file,
                "client",
                c.rate_violations_window_ms,
                100,
                3_600_000
            ),
            max_room_members: range!(file, "client", c.max_room_members, 1, 1_000_000),
            tls: check_identity(
                file,
                ("client.tls_cert", &c.tls_cert),
                ("client.tls_key", &c.tls_key),
            )?,
        };
        client.check_together(file)?;
        Ok(client)
    }
}

impl ClientConfig {
    /// The limits that constrain each other.
    fn check_together(&self, file: &str) -> Result<(), ConfigError> {
        // A body must fit in a line with its JSON around it, or no send could pass.
        if self.max_body_bytes + 256 > self.max_line_bytes {
            return Err(ConfigError::invalid(
                file,
                "client.max_body_bytes",
                format!(
                    "{} leaves no room for the frame around it within client.max_line_bytes ({}); keep it at least 256 bytes smaller",
                    self.max_body_bytes, self.max_line_bytes
                ),
            ));
        }
        // After a fail-over a client rejoins all its rooms at once: that must never be refused.
        if (self.room_rate_burst as usize) < self.max_rooms_per_client {
            return Err(ConfigError::invalid(
                file,
                "client.room_rate_burst",
                format!(
                    "{} is below client.max_rooms_per_client ({}): a client rejoining its rooms after a fail-over would be refused",
                    self.room_rate_burst, self.max_rooms_per_client
                ),
            ));
        }
        Ok(())
    }
}
