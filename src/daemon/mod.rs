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
mod link_stream;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod per_ip;
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

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::config::{self, AuthMode, Config};
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

// `reload` is long: it moves to src/daemon/reload.rs and splits there (issue 17).
#[allow(clippy::too_many_lines)]
impl Driver {
    /// HUP: re-reads the config file and applies what can change at run time, saying what
    /// changed and what waits for a restart.
    fn reload(&mut self) {
        let file = self.config.file.clone();
        self.reloads += 1;
        let new = match config::load(&file) {
            Ok(new) => new,
            Err(e) => {
                log::error!("reload refused, keeping the running config: {e}");
                self.last_reload =
                    format!("error: reload refused, keeping the running config: {e}");
                return;
            }
        };
        let (old_c, new_c) = (&self.config.client, &new.client);
        let mut changed = Vec::new();
        macro_rules! note {
            ($name:literal, $old:expr, $new:expr) => {
                if $old != $new {
                    changed.push(format!("{} {:?} -> {:?}", $name, $old, $new));
                }
            };
        }
        note!("logging.level", self.config.log_level, new.log_level);
        note!("client.max_clients", old_c.max_clients, new_c.max_clients);
        note!(
            "client.hello_timeout_ms",
            old_c.hello_timeout_ms,
            new_c.hello_timeout_ms
        );
        note!(
            "client.rate_per_sec",
            old_c.rate_per_sec,
            new_c.rate_per_sec
        );
        note!("client.rate_burst", old_c.rate_burst, new_c.rate_burst);
        note!(
            "client.room_rate_per_sec",
            old_c.room_rate_per_sec,
            new_c.room_rate_per_sec
        );
        note!(
            "client.room_rate_burst",
            old_c.room_rate_burst,
            new_c.room_rate_burst
        );
        note!("client.max_errors", old_c.max_errors, new_c.max_errors);
        note!(
            "client.max_rooms_per_client",
            old_c.max_rooms_per_client,
            new_c.max_rooms_per_client
        );
        note!(
            "client.max_connections_per_ip",
            old_c.max_connections_per_ip,
            new_c.max_connections_per_ip
        );
        note!(
            "client.rate_violations_max",
            old_c.rate_violations_max,
            new_c.rate_violations_max
        );
        note!(
            "client.rate_violations_window_ms",
            old_c.rate_violations_window_ms,
            new_c.rate_violations_window_ms
        );
        note!(
            "client.max_room_members",
            old_c.max_room_members,
            new_c.max_room_members
        );
        note!(
            "auth.failure_delay_ms",
            self.config.auth.failure_delay_ms,
            new.auth.failure_delay_ms
        );
        // The users file is re-read on every reload; a bad one keeps the loaded users.
        if let (Some(verifier), Some(path)) = (&self.verifier, &self.config.auth.users_file) {
            match crate::auth::Users::load(path) {
                Ok(users) => {
                    let before = verifier.users();
                    changed.push(format!(
                        "auth.users_file reloaded ({before} -> {} users)",
                        users.len()
                    ));
                    verifier.replace_users(users);
                }
                Err(e) => {
                    log::error!("reload: keeping the users loaded before: {e}");
                    changed.push(format!("auth.users_file NOT reloaded ({e})"));
                }
            }
        }
        // The certificate is re-read on every reload (renewals keep their paths); new
        // connections get it, open ones keep theirs. A file that does not load keeps the
        // one in use.
        let mut tls_applied = false;
        if let (Some(slot), Some(identity)) = (&self.client_tls, &new_c.tls) {
            match crate::node_tls::client_listener(&file, identity) {
                Ok(tls) => {
                    *slot.lock().expect("never poisoned: no panic inside") = tls;
                    tls_applied = true;
                    changed.push(format!(
                        "client TLS certificate reloaded from {}",
                        identity.cert.display()
                    ));
                }
                Err(e) => {
                    log::error!("reload: keeping the TLS certificate in use: {e}");
                    changed.push(format!("client TLS certificate NOT reloaded ({e})"));
                }
            }
        }
        // The link's certificates likewise, for links made from now on.
        let mut link_tls_applied = false;
        let link_tls = |c: &Config| c.peer.as_ref().and_then(|p| p.link_tls.clone());
        if let (Some(links), Some(_), Some(fresh)) =
            (&self.links, link_tls(&self.config), link_tls(&new))
        {
            match crate::node_tls::replication_link(&file, &fresh) {
                Ok(tls) => {
                    links.replace_tls(tls);
                    link_tls_applied = true;
                    changed.push(format!(
                        "replication TLS certificates reloaded from {}",
                        fresh.identity.cert.display()
                    ));
                }
                Err(e) => {
                    log::error!("reload: keeping the replication TLS certificates in use: {e}");
                    changed.push(format!("replication TLS certificates NOT reloaded ({e})"));
                }
            }
        }
        let mut restart = Vec::new();
        macro_rules! needs_restart {
            ($name:literal, $old:expr, $new:expr) => {
                if $old != $new {
                    restart.push($name);
                }
            };
        }
        needs_restart!("node.id", self.config.node_id, new.node_id);
        needs_restart!("node.data_dir", self.config.data_dir, new.data_dir);
        needs_restart!("client.listen", old_c.listen, new_c.listen);
        // Turning TLS on or off changes what the listener speaks: a restart.
        needs_restart!(
            "client.tls_cert (TLS on or off)",
            old_c.tls.is_some(),
            new_c.tls.is_some()
        );
        needs_restart!("client.io_threads", old_c.io_threads, new_c.io_threads);
        needs_restart!(
            "client.max_line_bytes",
            old_c.max_line_bytes,
            new_c.max_line_bytes
        );
        needs_restart!(
            "client.max_body_bytes",
            old_c.max_body_bytes,
            new_c.max_body_bytes
        );
        needs_restart!(
            "client.send_queue_bytes",
            old_c.send_queue_bytes,
            new_c.send_queue_bytes
        );
        needs_restart!(
            "client.idle_timeout_ms",
            old_c.idle_timeout_ms,
            new_c.idle_timeout_ms
        );
        needs_restart!("log.fsync", self.config.log.fsync, new.log.fsync);
        // The log writer's queue was sized for it at start.
        needs_restart!(
            "log.max_pending",
            self.config.log.max_pending,
            new.log.max_pending
        );
        needs_restart!(
            "log.segment_bytes",
            self.config.log.segment_bytes,
            new.log.segment_bytes
        );
        needs_restart!(
            "log.retain_messages",
            self.config.log.retain_messages,
            new.log.retain_messages
        );
        needs_restart!(
            "log.retain_bytes",
            self.config.log.retain_bytes,
            new.log.retain_bytes
        );
        // The link's TLS files reload (above); only turning link TLS on or off restarts.
        let without_tls_files = |c: &Config| {
            c.peer.clone().map(|mut p| {
                let tls_on = p.link_tls.is_some();
                p.link_tls = None;
                (p, tls_on)
            })
        };
        needs_restart!(
            "[peer], [heartbeat], [replication], [failover]",
            format!("{:?}", without_tls_files(&self.config)),
            format!("{:?}", without_tls_files(&new))
        );
        needs_restart!("logging.target", self.config.log_target, new.log_target);
        needs_restart!(
            "logging.facility",
            self.config.log_facility,
            new.log_facility
        );
        needs_restart!(
            "logging.syslog_socket",
            self.config.syslog_socket,
            new.syslog_socket
        );
        needs_restart!("admin.socket", self.config.admin_socket, new.admin_socket);
        needs_restart!("auth.mode", self.config.auth.mode, new.auth.mode);
        needs_restart!(
            "auth.users_file",
            self.config.auth.users_file,
            new.auth.users_file
        );
        needs_restart!(
            "auth.verify_threads",
            self.config.auth.verify_threads,
            new.auth.verify_threads
        );
        needs_restart!(
            "auth.max_pending_verifies",
            self.config.auth.max_pending_verifies,
            new.auth.max_pending_verifies
        );
        needs_restart!(
            "metrics.listen",
            self.config.metrics_listen,
            new.metrics_listen
        );
        needs_restart!("web", self.config.web, new.web);
        needs_restart!(
            "hooks.role_change",
            self.config.role_change_hook,
            new.role_change_hook
        );
        log::set_max_level(new.log_level.to_filter());
        self.max_clients.store(new_c.max_clients, Ordering::Relaxed);
        self.per_ip
            .max
            .store(new_c.max_connections_per_ip, Ordering::Relaxed);
        let mut limits = core_config(&new, None);
        limits.max_pending = self.config.log.max_pending;
        // Whether tokens are needed changes only with a restart (the verifier starts then).
        limits.access.auth_required = self.config.auth.mode == AuthMode::Token;
        self.node.set_limits(&limits);
        let mut summary = if changed.is_empty() {
            log::info!(
                "reload of {}: nothing that can change at run time changed",
                file.display()
            );
            format!(
                "ok: reloaded {}: nothing that can change at run time changed",
                file.display()
            )
        } else {
            log::info!(
                "reload of {} ({} clients connected): {}",
                file.display(),
                self.clients.load(Ordering::Relaxed),
                changed.join(", ")
            );
            format!("ok: reloaded {}: {}", file.display(), changed.join(", "))
        };
        if !restart.is_empty() {
            log::warn!(
                "reload of {}: {} changed; that takes a restart (still running with the old values)",
                file.display(),
                restart.join(", ")
            );
            summary.push_str(&format!(
                "; {} changed, which takes a restart",
                restart.join(", ")
            ));
        }
        self.last_reload = summary;
        // Keep the old values of what did not apply, so the next reload compares right.
        let mut kept = new;
        kept.node_id = self.config.node_id.clone();
        kept.data_dir = self.config.data_dir.clone();
        let applied_link_tls = link_tls(&kept).filter(|_| link_tls_applied);
        kept.peer = self.config.peer.clone();
        if let (Some(peer), Some(tls)) = (kept.peer.as_mut(), applied_link_tls) {
            peer.link_tls = Some(tls);
        }
        kept.log = self.config.log.clone();
        kept.log_target = self.config.log_target;
        kept.log_facility = self.config.log_facility;
        kept.syslog_socket = self.config.syslog_socket.clone();
        kept.admin_socket = self.config.admin_socket.clone();
        kept.metrics_listen = self.config.metrics_listen;
        kept.web = self.config.web.clone();
        kept.role_change_hook = self.config.role_change_hook.clone();
        kept.auth = crate::config::AuthConfig {
            failure_delay_ms: kept.auth.failure_delay_ms,
            ..self.config.auth.clone()
        };
        let tls = if tls_applied {
            kept.client.tls.clone()
        } else {
            self.config.client.tls.clone()
        };
        kept.client = crate::config::ClientConfig {
            tls,
            max_clients: kept.client.max_clients,
            hello_timeout_ms: kept.client.hello_timeout_ms,
            rate_per_sec: kept.client.rate_per_sec,
            rate_burst: kept.client.rate_burst,
            room_rate_per_sec: kept.client.room_rate_per_sec,
            room_rate_burst: kept.client.room_rate_burst,
            max_errors: kept.client.max_errors,
            max_rooms_per_client: kept.client.max_rooms_per_client,
            max_connections_per_ip: kept.client.max_connections_per_ip,
            rate_violations_max: kept.client.rate_violations_max,
            rate_violations_window_ms: kept.client.rate_violations_window_ms,
            max_room_members: kept.client.max_room_members,
            ..self.config.client.clone()
        };
        self.config = kept;
    }
}
