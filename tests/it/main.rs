//! The integration tests: one binary (linking the crate once instead of once per file) that
//! starts the real binaries (`pbchatd`, `pbchat-client`, `pbchatctl`, `pbchat-witness`) and
//! talks to them over their real interfaces. docs/testing.md says which module proves what
//! and how to run one: `cargo test --test it MODULE::` (e.g. `cargo test --test it failover::`).
//!
//! Shared support: `common` (nodes, pairs, clients, waiting with deadlines, HTTP), `resilient`
//! (a test sender that rides over fail-overs), `netlab` (the namespace fault lab), `history`
//! (the checker every lab scenario ends with).

mod common;
mod history;
mod netlab;
mod resilient;

mod browser;
mod client_cli;
mod client_terminal;
mod completions;
mod config_check;
mod docs;
mod durability;
mod failover;
mod fuzz_corpus;
mod history_check;
mod hostile;
mod operations;
mod pair_script;
mod partitions;
mod protocol;
mod python_client;
mod readme;
mod security;
mod strict;
mod strict_lab;
mod tls;
mod web;
