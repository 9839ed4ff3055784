//! The node's TLS configs from its [`Config`]: the client listener's and the replication
//! link's, as start-up, `pbchatd --check` and each reload load them, with every problem put
//! in the config's words (`FILE: KEY: problem`). The files and rustls are `tls`'s.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;

use crate::config::{Config, ConfigError, LinkTlsConfig};
use crate::tls::{client_config, server_config, server_name, Identity, TlsError};

/// The node's config keys for one endpoint's files, to name the one at fault.
struct Keys {
    cert: &'static str,
    key: &'static str,
    ca: &'static str,
}

/// Puts a TLS problem in the config's words: `FILE: KEY: problem`.
fn config_error(
    file: &Path,
    keys: &Keys,
    identity: &Identity,
    ca: Option<&Path>,
    error: TlsError,
) -> ConfigError {
    let key = match error.path() {
        Some(path) if path == identity.cert => keys.cert,
        Some(path) if Some(path) == ca => keys.ca,
        // A key that does not match its certificate is the key's problem to fix.
        _ => keys.key,
    };
    ConfigError::invalid(&file.display().to_string(), key, error.to_string())
}

/// The client listener's TLS config from `client.tls_cert` / `client.tls_key`, read now
/// (at start, `--check` and each reload).
pub fn client_listener(file: &Path, identity: &Identity) -> Result<Arc<ServerConfig>, ConfigError> {
    let keys = Keys {
        cert: "client.tls_cert",
        key: "client.tls_key",
        ca: "client.tls_cert",
    };
    server_config(identity, None).map_err(|e| config_error(file, &keys, identity, None, e))
}

/// Both ends of a mutual-TLS replication link, from `[replication] tls_*`.
#[derive(Clone)]
pub struct LinkTls {
    /// The primary accepts backups with it (and asks for their certificates).
    pub server: Arc<ServerConfig>,
    /// The backup dials with it (presenting its own certificate).
    pub client: Arc<ClientConfig>,
    /// What the primary's certificate must name.
    pub peer_name: ServerName<'static>,
}

/// The replication link's TLS configs, read now.
pub fn replication_link(file: &Path, link: &LinkTlsConfig) -> Result<LinkTls, ConfigError> {
    let keys = Keys {
        cert: "replication.tls_cert",
        key: "replication.tls_key",
        ca: "replication.tls_ca",
    };
    let error = |e| config_error(file, &keys, &link.identity, Some(&link.ca), e);
    let server = server_config(&link.identity, Some(&link.ca)).map_err(error)?;
    let client = client_config(Some(&link.ca), Some(&link.identity)).map_err(error)?;
    let peer_name = server_name(&link.peer_name).map_err(|e| {
        ConfigError::invalid(
            &file.display().to_string(),
            "replication.tls_name",
            e.to_string(),
        )
    })?;
    Ok(LinkTls {
        server,
        client,
        peer_name,
    })
}

/// Loads every TLS file `config` names, as start-up and `--check` do.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    if let Some(identity) = &config.client.tls {
        client_listener(&config.file, identity)?;
    }
    if let Some(link) = config.peer.as_ref().and_then(|p| p.link_tls.as_ref()) {
        replication_link(&config.file, link)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::tests::identity;

    #[test]
    fn node_files_that_do_not_load_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path(), &["127.0.0.1"]);
        let file = Path::new("node.toml");
        let link = LinkTlsConfig {
            identity: id.clone(),
            ca: dir.path().join("missing-ca.pem"),
            peer_name: "127.0.0.1".into(),
        };
        let err = replication_link(file, &link).err().unwrap().to_string();
        assert!(
            err.starts_with("node.toml: replication.tls_ca: ") && err.contains("cannot read"),
            "{err}"
        );
        let link = LinkTlsConfig {
            ca: id.cert.clone(),
            ..link
        };
        replication_link(file, &link).unwrap();
        client_listener(file, &id).unwrap();
        let broken = Identity {
            cert: id.key.clone(),
            key: id.key.clone(),
        };
        let err = client_listener(file, &broken).err().unwrap().to_string();
        assert!(err.starts_with("node.toml: client.tls_cert: "), "{err}");
    }
}
