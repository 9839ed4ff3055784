//! `pbchatd --gen-cert`: a private CA and node certificates signed by it, for a test or a
//! small deployment, that `pbchat-client --tls --ca` and the replication link's mutual TLS
//! accept as they are.
//!
//! It writes files in one directory and nothing else: no sockets, no threads. The CA
//! (`ca.pem`, `ca.key`) is made once and reused to sign every later node certificate
//! (`NAME.pem`, `NAME.key`). Keys are ECDSA P-256 (cheap handshakes: docs/security.md),
//! key files mode 0600, and no file is ever overwritten. Each new certificate is checked
//! against the CA file with the same verifier clients use before it is written.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use thiserror::Error;

/// The CA lasts ten years: its certificate is copied to every client and node, so
/// replacing it is the expensive step.
const CA_VALIDITY_DAYS: u64 = 3650;
/// A node certificate lasts 825 days (the longest browsers accepted for years): renewing
/// one is a run of `--gen-cert` with the same CA and a HUP.
const NODE_VALIDITY_DAYS: u64 = 825;
/// Certificates start a day back, so that a peer whose clock runs behind accepts them.
const BACKDATE_DAYS: u64 = 1;
/// Random bytes of a serial number (RFC 5280 allows up to 20 octets).
const SERIAL_BYTES: usize = 16;
/// The longest `--name`: it becomes two file names and the certificate's common name.
const NAME_MAX_BYTES: usize = 64;
/// The CA's own files in the directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
/// A key file, the CA's or a node's: the owner only.
const KEY_MODE: u32 = 0o600;
/// A certificate is public.
const CERT_MODE: u32 = 0o644;
/// The CA key is read back with a bound (a P-256 key in PEM is about 240 bytes).
const KEY_FILE_MAX_BYTES: u64 = 64 * 1024;

#[derive(Debug, Error)]
pub enum CertError {
    #[error("--name {name:?}: use 1-{NAME_MAX_BYTES} letters, digits, '.', '_' or '-', not starting with '.' or '-', and not \"ca\" (it names NAME.pem and NAME.key)")]
    BadName { name: String },
    #[error("no names for the certificate: give each address clients and the peer reach the node by, with --ip IP and/or --dns NAME (e.g. --ip 127.0.0.1)")]
    NoNames,
    #[error("--dns {name:?}: not a DNS name")]
    BadDns { name: String },
    #[error("{}: exists; nothing was written (remove it, or choose another --name)", path.display())]
    Exists { path: PathBuf },
    #[error("{} exists without {}: a CA needs both to sign; move the one there away to make a new CA, or put its partner back", present.display(), missing.display())]
    HalfCa { present: PathBuf, missing: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    BadCa { path: PathBuf, problem: String },
    #[error("making the certificate: {0}")]
    Make(#[from] rcgen::Error),
}

impl CertError {
    /// 2 for a bad command line (as for a bad config), 1 for a failure on the files.
    pub fn exit_code(&self) -> u8 {
        match self {
            CertError::BadName { .. } | CertError::NoNames | CertError::BadDns { .. } => 2,
            _ => 1,
        }
    }
}

/// What `pbchatd --gen-cert` asks for.
#[derive(Clone, Debug)]
pub struct Request {
    pub dir: PathBuf,
    /// File stem and common name of the node certificate.
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct Made {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// The CA was made now (else an existing one signed).
    pub ca_created: bool,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The subject alternative names, as `IP 127.0.0.1` and `DNS chat.example.org`.
    pub names: Vec<String>,
    /// The last day the node certificate is valid, `YYYY-MM-DD`.
    pub valid_until: String,
}

fn check_name(name: &str) -> Result<(), CertError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX_BYTES
        && name.chars().all(allowed)
        && !name.starts_with(['.', '-'])
        && name != "ca";
    if ok {
        Ok(())
    } else {
        Err(CertError::BadName { name: name.into() })
    }
}

/// Makes (or reuses) the CA in `request.dir` and a node certificate signed by it.
pub fn generate(request: &Request) -> Result<Made, CertError> {
    check_name(&request.name)?;
    if request.ips.is_empty() && request.dns.is_empty() {
        return Err(CertError::NoNames);
    }
    for name in &request.dns {
        if rustls_pki_types::DnsName::try_from(name.as_str()).is_err()
            || name.parse::<IpAddr>().is_ok()
        {
            return Err(CertError::BadDns { name: name.clone() });
        }
    }
    let dir = &request.dir;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cert_path = dir.join(format!("{}.pem", request.name));
    let key_path = dir.join(format!("{}.key", request.name));
    // Refused before anything is written.
    for path in [&cert_path, &key_path] {
        if path.symlink_metadata().is_ok() {
            return Err(CertError::Exists { path: path.clone() });
        }
    }
    let ca_cert = dir.join(CA_CERT_FILE);
    let ca_key = dir.join(CA_KEY_FILE);
    let (issuer, ca_pem, ca_created) = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => {
            let (issuer, pem) = load_ca(&ca_cert, &ca_key)?;
            (issuer, pem, false)
        }
        (false, false) => {
            let (issuer, pem) = new_ca()?;
            write_new(&ca_key, issuer.key().serialize_pem().as_bytes(), KEY_MODE)?;
            write_new(&ca_cert, pem.as_bytes(), CERT_MODE)?;
            (issuer, pem, true)
        }
        (true, false) => {
            return Err(CertError::HalfCa {
                present: ca_cert,
                missing: ca_key,
            })
        }
        (false, true) => {
            return Err(CertError::HalfCa {
                present: ca_key,
                missing: ca_cert,
            })
        }
    };

    let mut params = CertificateParams::default();
    let valid_until = set_validity(&mut params, NODE_VALIDITY_DAYS);
    params.serial_number = Some(serial());
    params
        .distinguished_name
        .push(DnType::CommonName, request.name.as_str());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Both: a node serves clients and, on the replication link, also dials its peer.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let mut names = Vec::new();
    for ip in &request.ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
        names.push(format!("IP {ip}"));
    }
    for dns in &request.dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(dns.as_str().try_into()?));
        names.push(format!("DNS {dns}"));
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    verify(&ca_cert, &ca_pem, cert.der(), request)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), KEY_MODE)?;
    write_new(&cert_path, cert.pem().as_bytes(), CERT_MODE)?;
    Ok(Made {
        ca_cert,
        ca_key,
        ca_created,
        cert: cert_path,
        key: key_path,
        names,
        valid_until,
    })
}

/// A new CA: it may sign node certificates only (path length 0).
fn new_ca() -> Result<(Issuer<'static, KeyPair>, String), CertError> {
    let mut params = CertificateParams::default();
    set_validity(&mut params, CA_VALIDITY_DAYS);
    params.serial_number = Some(serial());
    // A name of its own, so that two CAs made this way are never taken for each other.
    let mut tag = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut tag);
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("pbchat private CA {tag}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((Issuer::new(params, key), cert.pem()))
}

/// The CA already in the directory (made by an earlier run, or by any other tool).
fn load_ca(cert: &Path, key: &Path) -> Result<(Issuer<'static, KeyPair>, String), CertError> {
    let key_text =
        crate::private_file::read_private_text(key, KEY_FILE_MAX_BYTES).map_err(|e| {
            use crate::private_file::PrivateFileError as E;
            let problem = match e {
                E::Read(source) => {
                    return CertError::Io {
                        path: key.to_path_buf(),
                        source,
                    }
                }
                E::Permissions { mode } => {
                    format!("group or others may read it (mode {mode:04o}); chmod 600 it")
                }
                E::TooLarge => format!("larger than {KEY_FILE_MAX_BYTES} bytes; not a PEM key"),
                E::NotUtf8 => "not PEM text".into(),
            };
            CertError::BadCa {
                path: key.to_path_buf(),
                problem,
            }
        })?;
    let key_pair = KeyPair::from_pem(&key_text).map_err(|e| CertError::BadCa {
        path: key.to_path_buf(),
        problem: format!("not a private key this can sign with: {e}"),
    })?;
    let pem = std::fs::read_to_string(cert).map_err(|source| CertError::Io {
        path: cert.to_path_buf(),
        source,
    })?;
    let not_ca = |problem: &str| CertError::BadCa {
        path: cert.to_path_buf(),
        problem: problem.into(),
    };
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| not_ca("holds no PEM certificate"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| not_ca("not an X.509 certificate"))?;
    if !parsed.is_ca() {
        // webpki would trust it as an anchor all the same, but other TLS stacks would not.
        return Err(not_ca(
            "not a CA certificate (no basicConstraints CA:TRUE): a node's certificate? Put the CA that issued it there, or move both ca.* files away to make a new CA",
        ));
    }
    let issuer = Issuer::from_ca_cert_pem(&pem, key_pair).map_err(|e| CertError::BadCa {
        path: cert.to_path_buf(),
        problem: format!("not a CA certificate this can sign with: {e}"),
    })?;
    Ok((issuer, pem))
}

/// The new certificate verifies against the CA file for each of its names, with the
/// verifier `pbchat-client --ca` uses: a CA key that is not the CA certificate's, or a CA
/// that cannot issue, is found here, before anything is written.
fn verify(
    ca_path: &Path,
    ca_pem: &str,
    cert: &CertificateDer<'_>,
    request: &Request,
) -> Result<(), CertError> {
    use rustls::client::danger::ServerCertVerifier;
    let bad = |problem: String| CertError::BadCa {
        path: ca_path.to_path_buf(),
        problem,
    };
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let der = der.map_err(|e| bad(format!("not PEM: {e}")))?;
        roots
            .add(der)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    let names = request
        .ips
        .iter()
        .map(|ip| ServerName::IpAddress((*ip).into()))
        .chain(
            request
                .dns
                .iter()
                .filter_map(|dns| ServerName::try_from(dns.clone()).ok()),
        );
    for name in names {
        verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature) => bad(
                    format!("{CA_KEY_FILE} is not this CA certificate's key: a certificate signed with it does not verify"),
                ),
                other => bad(format!(
                    "a certificate signed with {CA_KEY_FILE} does not verify against it: {}",
                    crate::tls::explain(&other)
                )),
            })?;
    }
    Ok(())
}

/// Creates `path` with `mode` and `bytes`, synced; an existing file is an error.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let fail = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CertError::Exists {
                path: path.to_path_buf(),
            },
            _ => fail(e),
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(fail)
}

fn serial() -> SerialNumber {
    let mut bytes = [0u8; SERIAL_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    // Positive and of full length: the top bit clear, the next one set.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Valid from `BACKDATE_DAYS` ago for `days` from today (UTC); the last day, as text.
fn set_validity(params: &mut CertificateParams, days: u64) -> String {
    use chrono::Datelike;
    // rcgen's dates are the `time` crate's; this crate reads the clock with chrono.
    let date = |day: chrono::NaiveDate| {
        rcgen::date_time_ymd(day.year(), day.month() as u8, day.day() as u8)
    };
    let today = chrono::Utc::now().date_naive();
    let end = today + chrono::Days::new(days);
    params.not_before = date(today - chrono::Days::new(BACKDATE_DAYS));
    params.not_after = date(end);
    end.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn request(dir: &Path, name: &str, ips: &[&str], dns: &[&str]) -> Request {
        Request {
            dir: dir.to_path_buf(),
            name: name.into(),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            dns: dns.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_ca_then_nodes_signed_by_it_and_nothing_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let a = generate(&request(dir.path(), "node-a", &["127.0.0.1"], &[])).unwrap();
        assert!(a.ca_created);
        assert_eq!(mode(&a.ca_key), 0o600);
        assert_eq!(mode(&a.key), 0o600);
        assert_eq!(mode(&a.cert), 0o644);
        assert_eq!(a.names, ["IP 127.0.0.1"]);
        let ca_before = std::fs::read(&a.ca_cert).unwrap();
        let b = generate(&request(dir.path(), "node-b", &["::1"], &["localhost"])).unwrap();
        assert!(!b.ca_created, "the CA is reused");
        assert_eq!(std::fs::read(&b.ca_cert).unwrap(), ca_before);
        // Both load as a server identity and verify against the CA, as pbchat-client does.
        for made in [&a, &b] {
            let identity = crate::tls::Identity {
                cert: made.cert.clone(),
                key: made.key.clone(),
            };
            crate::tls::server_config(&identity, Some(&made.ca_cert)).unwrap();
            crate::tls::client_config(Some(&made.ca_cert), Some(&identity)).unwrap();
        }
        let cert_before = std::fs::read(&a.cert).unwrap();
        let again = generate(&request(dir.path(), "node-a", &["127.0.0.1"], &[]));
        assert!(matches!(again, Err(CertError::Exists { .. })), "{again:?}");
        assert_eq!(std::fs::read(&a.cert).unwrap(), cert_before);
    }

    #[test]
    fn bad_requests_say_why_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for (name, ips, dns) in [
            ("../x", vec!["127.0.0.1"], vec![]),
            ("ca", vec!["127.0.0.1"], vec![]),
            ("", vec!["127.0.0.1"], vec![]),
            ("node", vec![], vec![]),
            ("node", vec![], vec!["not a name"]),
        ] {
            let e = generate(&request(dir.path(), name, &ips, &dns)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Half a CA cannot sign.
        std::fs::write(dir.path().join(CA_CERT_FILE), "x").unwrap();
        let e = generate(&request(dir.path(), "node", &["127.0.0.1"], &[])).unwrap_err();
        assert!(e.to_string().contains("ca.pem exists without"), "{e}");
    }

    #[test]
    fn a_node_certificate_in_place_of_the_ca_is_refused() {
        let first = tempfile::tempdir().unwrap();
        let node = generate(&request(first.path(), "node", &["127.0.0.1"], &[])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&node.cert, dir.path().join(CA_CERT_FILE)).unwrap();
        std::fs::copy(&node.key, dir.path().join(CA_KEY_FILE)).unwrap();
        let e = generate(&request(dir.path(), "other", &["127.0.0.1"], &[])).unwrap_err();
        assert!(e.to_string().contains("not a CA certificate"), "{e}");
    }

    #[test]
    fn a_ca_key_that_does_not_match_its_certificate_is_found_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let a = generate(&request(first.path(), "a", &["127.0.0.1"], &[])).unwrap();
        let b = generate(&request(second.path(), "b", &["127.0.0.1"], &[])).unwrap();
        std::fs::copy(&a.ca_cert, dir.path().join(CA_CERT_FILE)).unwrap();
        let key = dir.path().join(CA_KEY_FILE);
        std::fs::copy(&b.ca_key, &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = generate(&request(dir.path(), "node", &["127.0.0.1"], &[])).unwrap_err();
        assert!(
            e.to_string()
                .contains("ca.key is not this CA certificate's key"),
            "{e}"
        );
        assert!(!dir.path().join("node.pem").exists());
        assert!(!dir.path().join("node.key").exists());
    }
}
