//! HUP and `pbchatctl reload`: re-reads the config file and carries out the plan
//! [`config::reload::plan`] makes of it. Which change applies at run time is decided there;
//! this file applies it (log level, limits, certificates, users) and says what it did.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::{core_config, Driver};
use crate::config::reload::ReloadPlan;
use crate::config::{self, Config};

impl Driver {
    /// HUP: re-reads the config file and applies what can change at run time, saying what
    /// changed and what waits for a restart.
    pub(super) fn reload(&mut self) {
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
        let plan = config::reload::plan(&self.config, &new);
        let restart = plan.restart_keys();
        let ReloadPlan {
            live, mut config, ..
        } = plan;
        let mut changed: Vec<String> = live.iter().map(ToString::to_string).collect();
        self.reload_users(&mut changed);
        self.reload_client_tls(&new, &mut config, &mut changed);
        self.reload_link_tls(&new, &mut config, &mut changed);
        self.apply_limits(&config);
        self.last_reload = self.report(&file, &changed, &restart);
        // What did not apply keeps its running value, so the next reload compares right.
        self.config = config;
    }

    /// The users file is re-read on every reload; a bad one keeps the loaded users.
    fn reload_users(&self, changed: &mut Vec<String>) {
        let (Some(verifier), Some(path)) = (&self.verifier, &self.config.auth.users_file) else {
            return;
        };
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

    /// The certificate is re-read on every reload (renewals keep their paths); new
    /// connections get it, open ones keep theirs. A file that does not load keeps the one
    /// in use, in `config` too.
    fn reload_client_tls(&self, new: &Config, config: &mut Config, changed: &mut Vec<String>) {
        let (Some(slot), Some(identity)) = (&self.client_tls, &new.client.tls) else {
            return;
        };
        match crate::node_tls::client_listener(&new.file, identity) {
            Ok(tls) => {
                *slot.lock().expect("never poisoned: no panic inside") = tls;
                config.client.tls = Some(identity.clone());
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

    /// The link's certificates likewise, for links made from now on (turning link TLS on
    /// or off takes a restart).
    fn reload_link_tls(&self, new: &Config, config: &mut Config, changed: &mut Vec<String>) {
        let link_tls = |c: &Config| c.peer.as_ref().and_then(|p| p.link_tls.clone());
        let (Some(links), Some(_), Some(fresh)) =
            (&self.links, link_tls(&self.config), link_tls(new))
        else {
            return;
        };
        match crate::node_tls::replication_link(&new.file, &fresh) {
            Ok(tls) => {
                links.replace_tls(tls);
                changed.push(format!(
                    "replication TLS certificates reloaded from {}",
                    fresh.identity.cert.display()
                ));
                if let Some(peer) = config.peer.as_mut() {
                    peer.link_tls = Some(fresh);
                }
            }
            Err(e) => {
                log::error!("reload: keeping the replication TLS certificates in use: {e}");
                changed.push(format!("replication TLS certificates NOT reloaded ({e})"));
            }
        }
    }

    /// The values that apply at once: the log level, the acceptor's limits and the core's.
    /// `config` holds the running `log.max_pending` and `auth.mode` (both take a restart).
    fn apply_limits(&mut self, config: &Config) {
        log::set_max_level(config.log_level.to_filter());
        self.max_clients
            .store(config.client.max_clients, Ordering::Relaxed);
        self.per_ip
            .max
            .store(config.client.max_connections_per_ip, Ordering::Relaxed);
        self.node.set_limits(&core_config(config, None));
    }

    /// Logs what the reload did and returns it for `pbchatctl reload`.
    fn report(&self, file: &Path, changed: &[String], restart: &[&str]) -> String {
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
        summary
    }
}
