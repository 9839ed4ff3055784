//! TLS settings built from PEM files, for the node's client listener, the replication link
//! and `pbchat-client`.
//!
//! Everything here is rustls with the `ring` provider, TLS 1.3 and 1.2 only (rustls has no
//! older versions to offer). This module reads files and builds configs; it owns no socket
//! and no thread: the daemon and the client drive the connections. It knows no node config:
//! `node_tls` builds the node's configs from it and words their errors by config key.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;

/// A PEM file larger than this is not a certificate chain or a key (a long chain with a
/// few intermediates is well under 64 KiB; a CA bundle of all public roots is ~250 KiB).
pub const PEM_FILE_MAX_BYTES: u64 = 1 << 20;

/// Permission bits for others; a private key they can read is refused. Group bits are
/// allowed, as distributions give keys to a group (`ssl-cert`, mode 0640).
const OTHER_MODE_BITS: u32 = 0o007;

/// The versions offered and accepted: nothing below TLS 1.2.
static VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: larger than {PEM_FILE_MAX_BYTES} bytes; not a PEM certificate or key", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: not valid PEM: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("{}: holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` blocks)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: holds no private key (expected a PEM `PRIVATE KEY` block: PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: readable by others (mode {mode:04o}); chmod o-rwx it", path.display())]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{}: a CA certificate is not usable: {message}", path.display())]
    BadCa { path: PathBuf, message: String },
    /// rustls refused the combination (a key that does not match the certificate, an
    /// unsupported key type).
    #[error("{} with {}: {message}", cert.display(), key.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("{name:?} is not a DNS name or an IP address usable as a TLS server name")]
    ServerName { name: String },
}

/// The certificate and key of one TLS endpoint, by path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// PEM: the certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM private key; others may not read it.
    pub key: PathBuf,
}

impl TlsError {
    /// The file the problem is in, when it is one file's.
    pub fn path(&self) -> Option<&Path> {
        match self {
            TlsError::Read { path, .. }
            | TlsError::TooLarge { path }
            | TlsError::Pem { path, .. }
            | TlsError::NoCertificate { path }
            | TlsError::NoKey { path }
            | TlsError::KeyPermissions { path, .. }
            | TlsError::BadCa { path, .. } => Some(path),
            TlsError::Pair { .. } | TlsError::ServerName { .. } => None,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_bounded(path: &Path) -> Result<(Vec<u8>, u32), TlsError> {
    let read_error = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let mode = file.metadata().map_err(read_error)?.mode() & 0o7777;
    let mut bytes = Vec::new();
    file.by_ref()
        .take(PEM_FILE_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > PEM_FILE_MAX_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok((bytes, mode))
}

/// Every certificate in a PEM file, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let (bytes, _) = read_bounded(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file, refused when others may read the file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let (bytes, mode) = read_bounded(path)?;
    if mode & OTHER_MODE_BITS != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        other => TlsError::Pem {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })
}

/// The trust anchors in a PEM file of CA certificates.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn pair_error(identity: &Identity, e: rustls::Error) -> TlsError {
    TlsError::Pair {
        cert: identity.cert.clone(),
        key: identity.key.clone(),
        message: e.to_string(),
    }
}

/// A listener's config: presents `identity`; `client_ca` set asks every client for a
/// certificate issued by that CA (mutual TLS).
pub fn server_config(
    identity: &Identity,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&identity.cert)?;
    let key = load_key(&identity.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .expect("ring supports TLS 1.2 and 1.3");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::BadCa {
                        path: ca.to_path_buf(),
                        message: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| pair_error(identity, e))?;
    Ok(Arc::new(config))
}

/// A dialer's config: trusts `ca` (or the compiled-in public roots when `None`), and
/// presents `identity` when the server asks for a client certificate.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca {
        Some(path) => load_roots(path)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::BadCa {
            path: ca.map_or_else(|| PathBuf::from("<built-in roots>"), Path::to_path_buf),
            message: e.to_string(),
        })?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_webpki_verifier(verifier);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => builder
            .with_client_auth_cert(load_certs(&identity.cert)?, load_key(&identity.key)?)
            .map_err(|e| pair_error(identity, e))?,
    };
    Ok(Arc::new(config))
}

/// The name a server's certificate must carry: a DNS name, or an IP address (its
/// certificate then needs that IP as a subject alternative name).
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string()).map_err(|_| TlsError::ServerName {
        name: name.to_string(),
    })
}

/// The host part of `host:port` (`[v6]:port` too), for a server name.
pub fn host_of(address: &str) -> &str {
    match address.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
            host.trim_start_matches('[').trim_end_matches(']')
        }
        _ => address,
    }
}

/// What to run for a certificate pair that works: the fix offered when a certificate is
/// of the wrong kind.
pub const GEN_CERT_HINT: &str =
    "make a private CA and a node certificate signed by it: pbchatd --gen-cert DIR --name NAME --ip IP (docs/security.md)";

/// Says what a failed handshake means, for people: rustls names certificate problems
/// tersely (`invalid peer certificate: UnknownIssuer`), and passes some of webpki's through
/// as a Rust debug string (`Other(OtherError(CaUsedAsEndEntity))`).
pub fn explain(error: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the peer's certificate is not issued by a trusted CA".into()
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the peer's certificate does not carry the name it was reached by (as a subjectAltName: the CN is not read)".into(),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the peer's certificate has expired".into(),
        Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "the peer's certificate is not valid yet (is one of the two clocks wrong?)".into(),
        Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ) => "the peer's certificate is not for this use: its extendedKeyUsage lacks serverAuth (a server) or clientAuth (a replication peer dialing)".into(),
        Error::InvalidCertificate(CertificateError::BadSignature) => "the peer's certificate's signature does not verify against its issuer (was it signed with another key than its CA certificate's?)".into(),
        Error::InvalidCertificate(CertificateError::Other(other)) => {
            explain_webpki(other.0.downcast_ref::<webpki::Error>())
        }
        Error::InvalidCertificate(other) => {
            format!("the peer's certificate is refused: {}", words(&format!("{other:?}")))
        }
        Error::AlertReceived(
            alert @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired),
        ) => format!(
            "the peer refused this side's certificate (TLS alert: {})",
            words(&format!("{alert:?}"))
        ),
        Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            "the peer does not speak TLS on this address (it answered in plain text)".into()
        }
        other => other.to_string(),
    }
}

/// The certificate problems rustls passes through from webpki unnamed, in words with the
/// fix where there is one.
fn explain_webpki(error: Option<&webpki::Error>) -> String {
    let Some(error) = error else {
        return "the peer's certificate is refused".into();
    };
    match error {
        webpki::Error::CaUsedAsEndEntity => format!(
            "the peer's certificate is a CA certificate (basicConstraints CA:TRUE, which `openssl req -x509` sets by default), so it cannot be the server's own; {GEN_CERT_HINT}"
        ),
        webpki::Error::EndEntityUsedAsCa => format!(
            "the peer's certificate was signed by a certificate that is not a CA (no basicConstraints CA:TRUE); {GEN_CERT_HINT}"
        ),
        webpki::Error::UnsupportedCertVersion => format!(
            "the peer's certificate is X.509 version 1 (made without extensions); TLS needs version 3 with a subjectAltName; {GEN_CERT_HINT}"
        ),
        webpki::Error::PathLenConstraintViolated => {
            "the peer's certificate chain is longer than its CA's pathLenConstraint allows".into()
        }
        webpki::Error::MalformedExtensions
        | webpki::Error::ExtensionValueInvalid
        | webpki::Error::UnsupportedCriticalExtension
        | webpki::Error::EmptyEkuExtension => format!(
            "the peer's certificate has extensions that cannot be used ({}); {GEN_CERT_HINT}",
            words(&format!("{error:?}"))
        ),
        other => format!(
            "the peer's certificate is refused: {}",
            words(&format!("{other:?}"))
        ),
    }
}

/// `CaUsedAsEndEntity` as `ca used as end entity`, `UnknownCA` as `unknown CA`: a Rust name
/// read as words (what is left of the debug string before the first `(`, `{` or space).
fn words(debug: &str) -> String {
    let name: Vec<char> = debug
        .split(['(', '{', ' '])
        .next()
        .unwrap_or(debug)
        .chars()
        .collect();
    let mut parts: Vec<String> = Vec::new();
    for (i, &c) in name.iter().enumerate() {
        let previous = i.checked_sub(1).map(|j| name[j]);
        let next = name.get(i + 1);
        // A word starts at an upper-case letter after a lower-case one, or at the last
        // capital of a run that a lower-case letter follows (`CAUsed`: `CA`, `Used`).
        let starts = c.is_uppercase()
            && previous
                .is_some_and(|p| !p.is_uppercase() || next.is_some_and(|n| n.is_lowercase()));
        if starts || parts.is_empty() {
            parts.push(String::new());
        }
        parts.last_mut().expect("pushed above").push(c);
    }
    parts
        .iter()
        .map(|part| {
            if part.chars().count() > 1 && part.chars().all(char::is_uppercase) {
                part.clone()
            } else {
                part.to_lowercase()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// [`explain`] for an I/O error that carries a rustls error (as `complete_io` and the
/// stream adapters return them), or the error as it is.
pub fn explain_io(error: &std::io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => explain(tls),
        None => error.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    pub(crate) fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// A self-signed certificate for `names` and its key, as files in `dir`.
    pub(crate) fn identity(dir: &Path, names: &[&str]) -> Identity {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap()
                .self_signed(&key)
                .unwrap();
        Identity {
            cert: write(dir, "cert.pem", &cert.pem(), 0o644),
            key: write(dir, "key.pem", &key.serialize_pem(), 0o600),
        }
    }

    #[test]
    fn a_good_pair_loads_and_bad_files_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(dir.path(), &["localhost"]);
        server_config(&id, None).unwrap();
        client_config(Some(&id.cert), Some(&id)).unwrap();
        server_config(&id, Some(&id.cert)).unwrap();

        let missing = dir.path().join("nope.pem");
        let err = load_certs(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.pem: cannot read"), "{err}");

        let garbage = write(dir.path(), "garbage.pem", "hello\n", 0o600);
        let err = load_certs(&garbage).unwrap_err().to_string();
        assert!(err.contains("holds no certificate"), "{err}");
        let err = load_key(&garbage).unwrap_err().to_string();
        assert!(err.contains("holds no private key"), "{err}");

        std::fs::set_permissions(&id.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_key(&id.key).unwrap_err().to_string();
        assert!(err.contains("readable by others (mode 0644)"), "{err}");
        std::fs::set_permissions(&id.key, std::fs::Permissions::from_mode(0o640)).unwrap();
        load_key(&id.key).unwrap();

        // A key that is not the certificate's.
        let other = tempfile::tempdir().unwrap();
        let stranger = identity(other.path(), &["localhost"]);
        let mismatched = Identity {
            cert: id.cert.clone(),
            key: stranger.key,
        };
        let err = server_config(&mismatched, None).unwrap_err().to_string();
        assert!(err.contains("cert.pem with"), "{err}");
    }

    #[test]
    fn rust_names_read_as_words() {
        assert_eq!(words("CaUsedAsEndEntity"), "ca used as end entity");
        assert_eq!(words("UnknownCA"), "unknown CA");
        assert_eq!(words("Other(OtherError(X))"), "other");
        assert_eq!(words("BadDer"), "bad der");
    }

    /// Issue 15: the certificate most people make first (`openssl req -x509 ...`, a CA
    /// certificate) as the server's own gave `invalid peer certificate:
    /// Other(OtherError(CaUsedAsEndEntity))`.
    #[test]
    fn a_ca_certificate_as_the_servers_is_explained_with_the_fix() {
        let error = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
            rustls::OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity)),
        ));
        let text = explain(&error);
        assert!(
            text.contains("is a CA certificate (basicConstraints CA:TRUE"),
            "{text}"
        );
        assert!(
            text.contains("pbchatd --gen-cert DIR --name NAME"),
            "{text}"
        );
        assert!(!text.contains("Other("), "{text}");
        let alert = explain(&rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA,
        ));
        assert_eq!(
            alert,
            "the peer refused this side's certificate (TLS alert: unknown CA)"
        );
    }

    #[test]
    fn server_names_come_from_host_port() {
        assert_eq!(host_of("chat.example.org:7400"), "chat.example.org");
        assert_eq!(host_of("127.0.0.1:7400"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7400"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("chat.example.org").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("not a name").is_err());
    }
}
