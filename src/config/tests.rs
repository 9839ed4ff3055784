//! The node config's validation, one section and one cross-section rule at a time.

use super::*;
use crate::log::FsyncMode;

fn check(text: &str) -> Result<Config, ConfigError> {
    parse(text, "t.toml")?.validate(Path::new("t.toml"))
}

const MINIMAL: &str = "[node]\nid = \"a\"\nrole = \"primary\"\ndata_dir = \"d\"\n";

#[test]
fn role_change_hook_must_be_an_absolute_executable_file() {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(check(MINIMAL).unwrap().role_change_hook, None);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hook.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let with = |path: &str| check(&format!("{MINIMAL}[hooks]\nrole_change = \"{path}\"\n"));
    let err = with("hook.sh").unwrap_err().to_string();
    assert!(
        err.starts_with("t.toml: hooks.role_change: ") && err.contains("not an absolute path"),
        "{err}"
    );
    let err = with(script.to_str().unwrap()).unwrap_err().to_string();
    assert!(err.contains("is not executable"), "{err}");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = with(script.to_str().unwrap()).unwrap();
    assert_eq!(config.role_change_hook.as_deref(), Some(script.as_path()));
    let err = with(dir.path().to_str().unwrap()).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    let missing = dir.path().join("missing");
    let err = with(missing.to_str().unwrap()).unwrap_err().to_string();
    assert!(err.contains("No such file"), "{err}");
}

#[test]
fn minimal_config_takes_defaults() {
    let config = check(MINIMAL).unwrap();
    assert_eq!(config.client.max_body_bytes, 4096);
    assert_eq!(config.client.max_line_bytes, 65536);
    assert_eq!(config.log.fsync, FsyncMode::Batch);
}

#[test]
fn errors_name_file_key_and_problem() {
    let err = check(&format!("{MINIMAL}[client]\nlisten = \"nowhere\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("t.toml: client.listen: \"nowhere\""),
        "{err}"
    );
    let err = check(&format!("{MINIMAL}[client]\nmax_clients = 0\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("client.max_clients: 0 is out of range"),
        "{err}"
    );
    // The log's own limit (1 GiB) is the config's: a bigger segment is refused here, by key,
    // not by the log at start-up.
    let err = check(&format!(
        "{MINIMAL}[log]\nsegment_bytes = 2147483648\nretain_bytes = 8589934592\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("t.toml: log.segment_bytes: 2147483648 is out of range"),
        "{err}"
    );
    let err = check(&format!("{MINIMAL}[client]\nlisten_port = 1\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("t.toml") && err.contains("unknown field `listen_port`"),
        "{err}"
    );
    let peer = "[peer]\nid = \"a\"\nclient_address = \"x:1\"\nheartbeat_address = \"127.0.0.1:1\"\nreplication_address = \"127.0.0.1:2\"\n";
    let err = check(&format!("{MINIMAL}{peer}")).unwrap_err().to_string();
    assert!(err.contains("peer.id"), "{err}");
    let err = check(&format!("{MINIMAL}{}", peer.replace("\"a\"", "\"b\"")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("t.toml: heartbeat: is required"), "{err}");
    let err = check("[node]\nid = \"a\"\nrole = \"boss\"\ndata_dir = \"d\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("role") && err.contains("boss"), "{err}");
}

#[test]
fn strict_failover_needs_a_witness_and_a_lease_shorter_than_detection() {
    let pair = format!(
        "{MINIMAL}[peer]\nid = \"b\"\nclient_address = \"x:1\"\nheartbeat_address = \"127.0.0.1:1\"\nreplication_address = \"127.0.0.1:2\"\n\
         [heartbeat]\nlisten = \"127.0.0.1:3\"\nsecret_file = \"s\"\n[replication]\nlisten = \"127.0.0.1:4\"\n[failover]\n"
    );
    let config = check(&pair).unwrap();
    assert_eq!(
        config.peer.unwrap().strict,
        None,
        "available is the default"
    );
    let err = check(&format!("{pair}mode = \"strict\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("t.toml: failover.witness: is required"),
        "{err}"
    );
    let strict = format!("{pair}mode = \"strict\"\nwitness = \"127.0.0.1:7410\"\n");
    let settings = check(&strict).unwrap().peer.unwrap().strict.unwrap();
    assert_eq!((settings.lease_ms, settings.clock_drift_ppm), (600, 10_000));
    let err = check(&format!("{strict}lease_ms = 1000\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("t.toml: failover.lease_ms: 1000 must be shorter than the detection time"),
        "{err}"
    );
    let err = check(&format!("{pair}witness = \"127.0.0.1:7410\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("failover.witness: is used only with"), "{err}");
    let err = check(&format!("{MINIMAL}[failover]\nmode = \"strict\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("failover: makes sense only with a [peer]"),
        "{err}"
    );
}

#[test]
fn operations_keys_default_and_validate() {
    let config = check(MINIMAL).unwrap();
    assert_eq!(config.admin_socket, Path::new("d/admin.sock"));
    assert_eq!(config.metrics_listen, None);
    assert_eq!(config.log_target, LogTarget::Stderr);
    assert_eq!(config.log_facility, SyslogFacility::Daemon);
    let config = check(&format!(
        "{MINIMAL}[logging]\ntarget = \"syslog\"\nfacility = \"local3\"\n[admin]\nsocket = \"/run/x.sock\"\n[metrics]\nlisten = \"127.0.0.1:9400\"\n"
    ))
    .unwrap();
    assert_eq!(config.log_target, LogTarget::Syslog);
    assert_eq!(config.log_facility, SyslogFacility::Local3);
    assert_eq!(config.admin_socket, Path::new("/run/x.sock"));
    assert_eq!(
        config.metrics_listen,
        Some("127.0.0.1:9400".parse().unwrap())
    );
    let err = check(&format!("{MINIMAL}[metrics]\nlisten = \"9400\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("metrics.listen"), "{err}");
    let err = check(&format!("{MINIMAL}[logging]\nfacility = \"kern\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("kern"), "{err}");
    let long = "x".repeat(200);
    let err = check(&format!("{MINIMAL}[admin]\nsocket = \"{long}\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("admin.socket"), "{err}");
}

#[test]
fn security_keys_default_and_validate() {
    let config = check(MINIMAL).unwrap();
    assert_eq!(config.auth.mode, AuthMode::None);
    assert_eq!(config.auth.users_file, None);
    assert_eq!(config.client.max_connections_per_ip, 256);
    assert_eq!(config.client.rate_violations_max, 20);
    assert_eq!(config.client.max_room_members, 10_000);
    let config = check(&format!(
        "{MINIMAL}[auth]\nmode = \"token\"\nusers_file = \"u\"\nfailure_delay_ms = 0\n"
    ))
    .unwrap();
    assert_eq!(config.auth.mode, AuthMode::Token);
    assert_eq!(config.auth.users_file, Some(PathBuf::from("u")));
    for (extra, needle) in [
        ("[auth]\nmode = \"token\"\n", "auth.users_file: is required"),
        (
            "[auth]\nusers_file = \"u\"\n",
            "auth.users_file: is read only",
        ),
        ("[auth]\nmode = \"ldap\"\n", "ldap"),
        ("[auth]\nverify_threads = 0\n", "auth.verify_threads"),
        (
            "[client]\nmax_connections_per_ip = 0\n",
            "client.max_connections_per_ip",
        ),
        (
            "[client]\nrate_violations_window_ms = 5\n",
            "client.rate_violations_window_ms",
        ),
    ] {
        let err = check(&format!("{MINIMAL}{extra}")).unwrap_err().to_string();
        assert!(err.contains(needle), "{extra}: {err}");
    }
}

#[test]
fn tls_keys_come_in_sets() {
    let config = check(MINIMAL).unwrap();
    assert_eq!(config.client.tls, None);
    let config = check(&format!(
        "{MINIMAL}[client]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n"
    ))
    .unwrap();
    let identity = config.client.tls.unwrap();
    assert_eq!(
        (identity.cert, identity.key),
        (PathBuf::from("c.pem"), PathBuf::from("k.pem"))
    );
    let peer = "[peer]\nid = \"b\"\nclient_address = \"x:1\"\nheartbeat_address = \"127.0.0.1:1\"\nreplication_address = \"127.0.0.9:2\"\n[heartbeat]\nlisten = \"127.0.0.1:3\"\nsecret_file = \"s\"\n[replication]\nlisten = \"127.0.0.1:4\"\n";
    let config = check(&format!("{MINIMAL}{peer}")).unwrap();
    assert_eq!(config.peer.unwrap().link_tls, None);
    let config = check(&format!(
        "{MINIMAL}{peer}tls_cert = \"c\"\ntls_key = \"k\"\ntls_ca = \"ca\"\n"
    ))
    .unwrap();
    let link = config.peer.unwrap().link_tls.unwrap();
    assert_eq!(link.peer_name, "127.0.0.9", "defaults to the dialed IP");
    assert_eq!(link.ca, PathBuf::from("ca"));
    let config = check(&format!(
        "{MINIMAL}{peer}tls_cert = \"c\"\ntls_key = \"k\"\ntls_ca = \"ca\"\ntls_name = \"node-a.pair\"\n"
    ))
    .unwrap();
    assert_eq!(
        config.peer.unwrap().link_tls.unwrap().peer_name,
        "node-a.pair"
    );
    for (extra, needle) in [
        (
            "[client]\ntls_cert = \"c\"\n",
            "t.toml: client.tls_key: is required with client.tls_cert",
        ),
        (
            "[client]\ntls_key = \"k\"\n",
            "t.toml: client.tls_cert: is required with client.tls_key",
        ),
        (
            &format!("{peer}tls_cert = \"c\"\ntls_key = \"k\"\n"),
            "t.toml: replication.tls_ca: is required",
        ),
        (
            &format!("{peer}tls_ca = \"ca\"\n"),
            "t.toml: replication.tls_ca: is used only with",
        ),
        (
            &format!("{peer}tls_key = \"k\"\ntls_ca = \"ca\"\n"),
            "t.toml: replication.tls_cert: is required",
        ),
        (
            &format!("{peer}tls_cert = \"c\"\ntls_key = \"k\"\ntls_ca = \"ca\"\ntls_name = \"no spaces\"\n"),
            "t.toml: replication.tls_name: \"no spaces\"",
        ),
    ] {
        let err = check(&format!("{MINIMAL}{extra}")).unwrap_err().to_string();
        assert!(err.contains(needle), "{extra}: {err}");
    }
}

#[test]
fn shipped_configs_validate() {
    for name in ["config/primary.toml", "config/backup.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        load(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}
