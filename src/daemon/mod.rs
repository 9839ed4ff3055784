//! The daemon: the only code with threads, sockets, clocks and signals.
//!
//! Threads (see docs/architecture.md):
//! - `core` (`driver`): owns the [`Node`](crate::core::Node); takes inputs from bounded
//!   channels, steps the node, and routes its actions to the log writer, the I/O workers
//!   and the replication links.
//! - `log-writer`: appends, fsyncs, cuts, saves epochs (see `storage`).
//! - `io-N`: client sockets on a mio poll each (see `io`).
//! - `accept`: accepts client connections and deals them to the workers.
//! - `heartbeat`: UDP heartbeats both ways (see `heartbeat`), when paired.
//! - `repl-*`: the replication link (see `link`), when paired.
//! - `witness-send`, `witness-recv`: strict mode's claims to the witness and its answers
//!   (see `witness_client`), when `failover.mode = "strict"`.
//! - `signals`: turns TERM/INT/HUP/USR1 into inputs; no work happens in a signal handler.
//! - `admin`: the admin socket for `pbchatctl` (see `admin`).
//! - `metrics`: the Prometheus endpoint, when `[metrics]` is set (see `metrics`).
//! - `verify-N`: argon2 token checks off the core and I/O threads, with `auth.mode = "token"`
//!   (see `verifier`).
//! - `hook`: runs `hooks.role_change` on role changes, when set (see `hooks`).
//!
//! Layout: `run` below is the order of start-up; `start` (the wiring: files, recovery,
//! binding, threads), `driver` (the core thread), `role_view` (what the heartbeat and link
//! read of the node), `signals`, `error` (`DaemonError`); `acceptor`, `io`, `storage`,
//! `link`, `heartbeat`, `state` (epochs file, data-dir lock), `logging`, `notify`
//! (systemd), `admin`, `metrics`, `hooks`, `verifier`, `witness_client` (strict mode),
//! `witness` (the `pbchat-witness` process). The reload handler (HUP) is below `run`.

// Functions here stay short enough to read at once (clippy.toml sets 70 lines); a longer
// one says why where it stands.
#![warn(clippy::too_many_lines)]

pub mod acceptor;
pub mod admin;
pub mod batch;
mod driver;
pub mod error;
pub mod heartbeat;
pub mod histogram;
pub mod hooks;
pub mod io;
pub mod link;
mod link_error;
mod link_stream;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod per_ip;
mod queue;
mod reload;
pub mod role_view;
mod signals;
mod start;
pub mod state;
pub mod storage;
pub mod verifier;
pub mod web;
pub mod witness;
pub mod witness_client;
pub mod witness_metrics;

use std::time::Instant;

use crate::config::Config;
use driver::Driver;
pub use error::DaemonError;
use start::core_config;

pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts a named thread.
fn spawn<F: FnOnce() + Send + 'static>(
    name: &str,
    f: F,
) -> Result<std::thread::JoinHandle<()>, DaemonError> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|source| DaemonError::Thread {
            name: name.to_string(),
            source,
        })
}

/// Runs the node until a signal stops it. Errors here are start-up failures, for people.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let _lock = state::lock_data_dir(&config.data_dir)?;
    let origin = (Instant::now(), wall_ms());
    let secrets = start::Secrets::read(&config)?;
    let recovered = start::recover(&config)?;
    let start::Started {
        node,
        config,
        wiring,
        inbox,
        running,
        client_address,
        metrics_address,
    } = start::start(config, origin, secrets, recovered)?;
    let mut driver = Driver::new(node, config, wiring);
    driver.announce(client_address, metrics_address);
    driver.run(&inbox);
    driver.stop(running);
    log::info!("stopped cleanly");
    Ok(())
}
