//! `[web]`: the browser page and its WebSocket endpoint (see `daemon::web`).

use serde::Deserialize;
use std::net::SocketAddr;

use super::check::parse_socket;
use super::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    pub listen: String,
    /// The peer's page origin (`http://host:port`); empty: none.
    #[serde(default)]
    pub peer_url: String,
    /// Page origins allowed to open a WebSocket besides this node's own and the peer's.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

/// `[web]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct WebConfig {
    pub listen: SocketAddr,
    /// The peer's page origin, `http://host:port` (or `https://`), without a path.
    pub peer_url: Option<String>,
    /// Origins (`scheme://host[:port]`) allowed besides the node's own and `peer_url`.
    pub allowed_origins: Vec<String>,
}

impl RawWeb {
    pub fn validate(&self, file: &str) -> Result<WebConfig, ConfigError> {
        let peer_url = match self.peer_url.as_str() {
            "" => None,
            url => Some(check_origin(file, "web.peer_url", url)?),
        };
        let allowed_origins = self
            .allowed_origins
            .iter()
            .map(|o| check_origin(file, "web.allowed_origins", o))
            .collect::<Result<_, _>>()?;
        Ok(WebConfig {
            listen: parse_socket(file, "web.listen", &self.listen)?,
            peer_url,
            allowed_origins,
        })
    }
}

/// An origin as browsers send it: `http://` or `https://`, then `host[:port]` with no
/// path, and only characters that may stand in an HTTP header (it goes into the CSP).
fn check_origin(file: &str, key: &'static str, text: &str) -> Result<String, ConfigError> {
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"));
    let fine = |c: char| c.is_ascii_alphanumeric() || ".-:[]".contains(c);
    match rest {
        Some(host) if !host.is_empty() && host.chars().all(fine) => Ok(text.to_string()),
        _ => Err(ConfigError::invalid(
            file,
            key,
            format!(
                "{text:?} is not an origin: http:// or https:// and host[:port], no path \
                 (e.g. http://10.0.0.2:7480)"
            ),
        )),
    }
}
