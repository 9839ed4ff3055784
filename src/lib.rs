//! pbchat: a primary-backup chat daemon.
//!
//! Layout:
//! - `entry`: the committed message, shared by core, log and codecs.
//! - `wire`: pure codecs (client JSON lines, line splitting, the pair's keyring and MACs).
//! - `log`: the append-only, checksummed segment log and its indexes.
//! - `core`: the pure node state machine: inputs in, actions out; no I/O.
//! - `config`: TOML to validated `Config`; `witness_config` the same for `pbchat-witness`.
//! - `auth`: client users files and argon2 token hashes (no threads, no state).
//! - `tls`: rustls configs from PEM files (certificates, keys, CAs), for the node and the
//!   client; no sockets.
//! - `secret_file`: the pair's secret file read into a keyring, and new keys drawn from
//!   the OS (`pbchatd --gen-secret`).
//! - `node_tls`: the node's TLS configs from its `Config`, errors by config key.
//! - `certs`: `pbchatd --gen-cert`, a private CA and node certificates as files.
//! - `daemon`: the only code with threads, sockets, clocks and signals.
//! - `fuzzing`: the fuzz targets' invariant checks (`fuzz/`, `tests/it/fuzz_corpus.rs`); test
//!   code, compiled only with the `fuzzing` feature, so no shipped build carries it.
//! - `completions`: shell completions of the binaries (clap_complete), for the package.
//!
//! The `pbchat-bench` harness is not here: it is the workspace member `bench/`, a client of
//! the daemon over TCP that uses this library, never a part of it.

pub mod auth;
pub mod certs;
pub mod client;
pub mod completions;
pub mod config;
pub mod core;
pub mod daemon;
pub mod entry;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod log;
pub mod node_tls;
pub mod private_file;
pub mod secret_file;
pub mod tls;
pub mod wire;
pub mod witness_config;

#[cfg(test)]
mod layers;
