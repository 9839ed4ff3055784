//! Checks of single values shared by every section: each returns the value it accepts or
//! an error naming the file, the key and the problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::ConfigError;

pub fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    file: &str,
    key: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        let problem = format!("{value} is out of range ({min} to {max})");
        return Err(ConfigError::invalid(file, key, problem));
    }
    Ok(value)
}

/// A path that must be given (an empty string is how TOML leaves it out).
pub fn check_not_empty(file: &str, key: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::invalid(file, key, "must not be empty"));
    }
    Ok(())
}

pub fn check_node_id(file: &str, key: &'static str, id: &str) -> Result<String, ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        let problem = format!("{id:?} must be 1-32 characters of ASCII letters, digits, `_`, `-`");
        return Err(ConfigError::invalid(file, key, problem));
    }
    Ok(id.to_string())
}

/// A program the node runs: an absolute path (the daemon's working directory is no
/// business of the config) to a regular file with an execute bit.
pub fn check_executable(
    file: &str,
    key: &'static str,
    path: &Path,
) -> Result<PathBuf, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |problem: String| ConfigError::invalid(file, key, problem);
    if !path.is_absolute() {
        return Err(bad(format!("{} is not an absolute path", path.display())));
    }
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(bad(format!("{} is not a regular file", path.display())));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(bad(format!(
            "{} is not executable (chmod +x it)",
            path.display()
        )));
    }
    Ok(path.to_path_buf())
}

/// An IP address with a port; `example` shows one in the error.
pub fn parse_socket_like(
    file: &str,
    key: &'static str,
    text: &str,
    example: &str,
) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        let problem = format!("{text:?} is not an IP address with a port (e.g. {example})");
        ConfigError::invalid(file, key, problem)
    })
}

pub fn parse_socket(file: &str, key: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    parse_socket_like(file, key, text, "127.0.0.1:7400")
}

/// `host:port` where host may be a name; checked for shape only, as clients resolve it.
pub fn check_host_port(file: &str, key: &'static str, text: &str) -> Result<String, ConfigError> {
    let bad = |problem: String| ConfigError::invalid(file, key, problem);
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(text.to_string());
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| bad(format!("{text:?} is not host:port")))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad(format!("{text:?}: port {port:?} is not 1-65535")))?;
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(bad(format!("{text:?}: {host:?} is not a host name")));
    }
    Ok(text.to_string())
}

/// A certificate and key named together: both or neither.
pub fn check_identity(
    file: &str,
    (cert_key, cert): (&'static str, &Path),
    (key_key, key): (&'static str, &Path),
) -> Result<Option<crate::tls::Identity>, ConfigError> {
    match (cert.as_os_str().is_empty(), key.as_os_str().is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Ok(Some(crate::tls::Identity {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })),
        (false, true) => Err(ConfigError::invalid(
            file,
            key_key,
            format!("is required with {cert_key} (the certificate's private key)"),
        )),
        (true, false) => Err(ConfigError::invalid(
            file,
            cert_key,
            format!("is required with {key_key} (the key's certificate chain)"),
        )),
    }
}

/// [`check_range`] of `$raw.$field`, named `$section.$field` in errors: the key's name is
/// the field's, written once.
macro_rules! range {
    ($file:expr, $section:literal, $raw:ident . $field:ident, $min:expr, $max:expr) => {
        $crate::config::check::check_range(
            $file,
            concat!($section, ".", stringify!($field)),
            $raw.$field,
            $min,
            $max,
        )?
    };
}
pub(crate) use range;
