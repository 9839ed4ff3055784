//! What a reload (HUP, `pbchatctl reload`) does with the file's new config: a pure
//! comparison of the running config and the new one, key by key. [`KEYS`] states once per
//! key whether a change applies at run time; the daemon carries out the [`ReloadPlan`], and
//! the tests hold the docs to the same table.

use std::fmt;

use super::Config;

/// When a change to a key takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    /// At once, on reload.
    Live,
    /// The files it names are read again on every reload, from the new paths (new
    /// connections or links get them; files that do not load leave the ones in use);
    /// setting or clearing the key takes a restart.
    Files,
    /// At the next start; until then the node runs with the old value.
    Restart,
    /// Read on a paired node's very first start only (`node.role`): never compared.
    FirstStart,
}

/// One key of the file.
pub struct Key {
    /// `section.key`, as in the file.
    pub name: &'static str,
    pub applies: Applies,
    /// The key's validated value as text, to compare and to report; for [`Applies::Files`]
    /// whether the key is set.
    value: fn(&Config) -> String,
    /// Puts the old config's value of the key into the one the node runs with.
    keep: fn(&mut Config, &Config),
}

/// A key whose value differs between the running config and the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: &'static str,
    pub old: String,
    pub new: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.key, self.old, self.new)
    }
}

/// What a reload changes.
#[derive(Debug)]
pub struct ReloadPlan {
    /// Changes that apply at once.
    pub live: Vec<Change>,
    /// Changes that wait for a restart (the node keeps running with the old value).
    pub restart: Vec<Change>,
    /// The config the node runs with from now on: the new one, but with the running values
    /// of the keys whose changes wait for a restart and of the [`Applies::Files`] keys (the
    /// daemon takes those from the new config once their files have loaded).
    pub config: Config,
}

impl ReloadPlan {
    /// The keys whose changes wait for a restart, for messages.
    pub fn restart_keys(&self) -> Vec<&'static str> {
        self.restart.iter().map(|c| c.key).collect()
    }
}

/// Compares the running config `old` with the file's `new`, key by key.
pub fn plan(old: &Config, new: &Config) -> ReloadPlan {
    let mut plan = ReloadPlan {
        live: Vec::new(),
        restart: Vec::new(),
        config: new.clone(),
    };
    for key in KEYS {
        let (was, now) = ((key.value)(old), (key.value)(new));
        let changed = was != now;
        let change = Change {
            key: key.name,
            old: was,
            new: now,
        };
        match key.applies {
            Applies::FirstStart => {}
            Applies::Live if changed => plan.live.push(change),
            Applies::Live => {}
            Applies::Files | Applies::Restart => {
                if changed || key.applies == Applies::Files {
                    (key.keep)(&mut plan.config, old);
                }
                if changed {
                    plan.restart.push(change);
                }
            }
        }
    }
    plan
}

/// A key held in one field of [`Config`].
macro_rules! key {
    ($name:literal, $applies:ident, $($field:ident).+) => {
        Key {
            name: $name,
            applies: Applies::$applies,
            value: |c| format!("{:?}", c.$($field).+),
            keep: |kept, old| kept.$($field).+ = old.$($field).+.to_owned(),
        }
    };
}

/// A key of the pair's sections: all of them take a restart.
macro_rules! pair_key {
    ($name:literal, $field:ident) => {
        Key {
            name: $name,
            applies: Applies::Restart,
            value: |c| format!("{:?}", c.peer.as_ref().map(|p| &p.$field)),
            keep: keep_peer,
        }
    };
}

/// A strict-mode key of `[failover]`.
macro_rules! strict_key {
    ($name:literal, $field:ident) => {
        Key {
            name: $name,
            applies: Applies::Restart,
            value: |c| {
                let strict = c.peer.as_ref().and_then(|p| p.strict.as_ref());
                format!("{:?}", strict.map(|s| &s.$field))
            },
            keep: keep_peer,
        }
    };
}

/// A key of `[web]`: all of them take a restart.
macro_rules! web_key {
    ($name:literal, $field:ident) => {
        Key {
            name: $name,
            applies: Applies::Restart,
            value: |c| format!("{:?}", c.web.as_ref().map(|w| &w.$field)),
            keep: |kept, old| kept.web = old.web.clone(),
        }
    };
}

/// Every key of the pair takes a restart but the link's TLS files, which are kept at the
/// running value too until the daemon has loaded the new ones: so the running pair stays
/// whole.
fn keep_peer(kept: &mut Config, old: &Config) {
    kept.peer = old.peer.clone();
}

fn client_tls_set(c: &Config) -> String {
    c.client.tls.is_some().to_string()
}

fn keep_client_tls(kept: &mut Config, old: &Config) {
    kept.client.tls = old.client.tls.clone();
}

fn link_tls_set(c: &Config) -> String {
    format!("{:?}", c.peer.as_ref().map(|p| p.link_tls.is_some()))
}

fn keep_link_tls(kept: &mut Config, old: &Config) {
    if let Some(peer) = kept.peer.as_mut() {
        peer.link_tls = old.peer.as_ref().and_then(|p| p.link_tls.clone());
    }
}

/// A key whose files are re-read on every reload.
const fn files_key(
    name: &'static str,
    value: fn(&Config) -> String,
    keep: fn(&mut Config, &Config),
) -> Key {
    Key {
        name,
        applies: Applies::Files,
        value,
        keep,
    }
}

/// Every key of the file, in the order of docs/configuration.md, with when its change
/// applies. tests/docs.rs checks that it names every key the file accepts and that the
/// docs say what it says.
pub static KEYS: &[Key] = &[
    key!("node.id", Restart, node_id),
    key!("node.role", FirstStart, role),
    key!("node.data_dir", Restart, data_dir),
    key!("client.listen", Restart, client.listen),
    key!("client.max_clients", Live, client.max_clients),
    key!("client.io_threads", Restart, client.io_threads),
    key!("client.max_line_bytes", Restart, client.max_line_bytes),
    key!("client.max_body_bytes", Restart, client.max_body_bytes),
    key!("client.hello_timeout_ms", Live, client.hello_timeout_ms),
    key!("client.idle_timeout_ms", Restart, client.idle_timeout_ms),
    key!("client.send_queue_bytes", Restart, client.send_queue_bytes),
    key!("client.rate_per_sec", Live, client.rate_per_sec),
    key!("client.rate_burst", Live, client.rate_burst),
    key!("client.room_rate_per_sec", Live, client.room_rate_per_sec),
    key!("client.room_rate_burst", Live, client.room_rate_burst),
    key!("client.max_errors", Live, client.max_errors),
    key!(
        "client.max_rooms_per_client",
        Live,
        client.max_rooms_per_client
    ),
    key!(
        "client.max_connections_per_ip",
        Live,
        client.max_connections_per_ip
    ),
    key!(
        "client.rate_violations_max",
        Live,
        client.rate_violations_max
    ),
    key!(
        "client.rate_violations_window_ms",
        Live,
        client.rate_violations_window_ms
    ),
    key!("client.max_room_members", Live, client.max_room_members),
    files_key("client.tls_cert", client_tls_set, keep_client_tls),
    files_key("client.tls_key", client_tls_set, keep_client_tls),
    key!("log.fsync", Restart, log.fsync),
    key!("log.segment_bytes", Restart, log.segment_bytes),
    key!("log.retain_messages", Restart, log.retain_messages),
    key!("log.retain_bytes", Restart, log.retain_bytes),
    // The log writer's queue was sized for it at start.
    key!("log.max_pending", Restart, log.max_pending),
    pair_key!("peer.id", id),
    pair_key!("peer.client_address", client_address),
    pair_key!("peer.heartbeat_address", heartbeat_address),
    pair_key!("peer.replication_address", replication_address),
    pair_key!("heartbeat.listen", heartbeat_listen),
    pair_key!("heartbeat.interval_ms", heartbeat_interval_ms),
    pair_key!("heartbeat.misses", heartbeat_misses),
    pair_key!("heartbeat.secret_file", secret_file),
    pair_key!("replication.listen", replication_listen),
    pair_key!("replication.mode", replication_mode),
    pair_key!("replication.ack_timeout_ms", ack_timeout_ms),
    pair_key!("replication.window", window),
    files_key("replication.tls_cert", link_tls_set, keep_link_tls),
    files_key("replication.tls_key", link_tls_set, keep_link_tls),
    files_key("replication.tls_ca", link_tls_set, keep_link_tls),
    files_key("replication.tls_name", link_tls_set, keep_link_tls),
    pair_key!("failover.promotion_cooldown_ms", promotion_cooldown_ms),
    pair_key!("failover.check_address", check_address),
    pair_key!("failover.check_timeout_ms", check_timeout_ms),
    Key {
        name: "failover.mode",
        applies: Applies::Restart,
        value: |c| format!("{:?}", c.peer.as_ref().map(|p| p.strict.is_some())),
        keep: keep_peer,
    },
    strict_key!("failover.witness", witness),
    strict_key!("failover.lease_ms", lease_ms),
    strict_key!("failover.clock_drift_ppm", clock_drift_ppm),
    key!("logging.level", Live, log_level),
    key!("logging.target", Restart, log_target),
    key!("logging.facility", Restart, log_facility),
    key!("logging.syslog_socket", Restart, syslog_socket),
    key!("admin.socket", Restart, admin_socket),
    key!("metrics.listen", Restart, metrics_listen),
    key!("auth.mode", Restart, auth.mode),
    // Its path; the users in it are re-read on every reload.
    key!("auth.users_file", Restart, auth.users_file),
    key!("auth.failure_delay_ms", Live, auth.failure_delay_ms),
    key!("auth.verify_threads", Restart, auth.verify_threads),
    key!(
        "auth.max_pending_verifies",
        Restart,
        auth.max_pending_verifies
    ),
    key!("hooks.role_change", Restart, role_change_hook),
    web_key!("web.listen", listen),
    web_key!("web.peer_url", peer_url),
    web_key!("web.allowed_origins", allowed_origins),
];
