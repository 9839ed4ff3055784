//! The reload plan classifies a change of every key as its [`KEYS`] entry says, keeps the
//! running value of what does not apply, and leaves every other key alone.

use super::reload::{plan, Applies, KEYS};
use super::{parse, Config};
use std::path::Path;

/// Every key of the file with a valid value, and another valid value for it.
const FILE: &[(&str, &str, &str)] = &[
    ("node.id", "\"a\"", "\"c\""),
    ("node.role", "\"primary\"", "\"backup\""),
    ("node.data_dir", "\"d\"", "\"e\""),
    ("client.listen", "\"127.0.0.1:7400\"", "\"127.0.0.1:7401\""),
    ("client.max_clients", "10", "20"),
    ("client.io_threads", "1", "2"),
    ("client.max_line_bytes", "65536", "65537"),
    ("client.max_body_bytes", "4096", "4097"),
    ("client.hello_timeout_ms", "1000", "2000"),
    ("client.idle_timeout_ms", "60000", "60001"),
    ("client.send_queue_bytes", "1048576", "1048577"),
    ("client.rate_per_sec", "10", "11"),
    ("client.rate_burst", "10", "11"),
    ("client.room_rate_per_sec", "10", "11"),
    ("client.room_rate_burst", "200", "201"),
    ("client.max_errors", "10", "11"),
    ("client.max_rooms_per_client", "100", "101"),
    ("client.max_connections_per_ip", "10", "11"),
    ("client.rate_violations_max", "10", "11"),
    ("client.rate_violations_window_ms", "1000", "1001"),
    ("client.max_room_members", "10", "11"),
    ("client.tls_cert", "\"c.pem\"", "\"c2.pem\""),
    ("client.tls_key", "\"k.pem\"", "\"k2.pem\""),
    ("log.fsync", "\"batch\"", "\"always\""),
    ("log.segment_bytes", "1048576", "2097152"),
    ("log.retain_messages", "1000", "2000"),
    ("log.retain_bytes", "1073741824", "1073741825"),
    ("log.max_pending", "16", "17"),
    ("peer.id", "\"b\"", "\"f\""),
    ("peer.client_address", "\"x:1\"", "\"x:2\""),
    (
        "peer.heartbeat_address",
        "\"127.0.0.1:1\"",
        "\"127.0.0.1:2\"",
    ),
    (
        "peer.replication_address",
        "\"127.0.0.9:2\"",
        "\"127.0.0.9:3\"",
    ),
    ("heartbeat.listen", "\"127.0.0.1:3\"", "\"127.0.0.1:4\""),
    ("heartbeat.interval_ms", "200", "300"),
    ("heartbeat.misses", "5", "6"),
    ("heartbeat.secret_file", "\"s\"", "\"s2\""),
    ("replication.listen", "\"127.0.0.1:5\"", "\"127.0.0.1:6\""),
    ("replication.mode", "\"sync\"", "\"async\""),
    ("replication.ack_timeout_ms", "1000", "1001"),
    ("replication.window", "16", "17"),
    ("replication.tls_cert", "\"lc.pem\"", "\"lc2.pem\""),
    ("replication.tls_key", "\"lk.pem\"", "\"lk2.pem\""),
    ("replication.tls_ca", "\"ca.pem\"", "\"ca2.pem\""),
    ("replication.tls_name", "\"node-b\"", "\"node-f\""),
    ("failover.promotion_cooldown_ms", "0", "1"),
    (
        "failover.check_address",
        "\"127.0.0.1:7\"",
        "\"127.0.0.1:8\"",
    ),
    ("failover.check_timeout_ms", "300", "301"),
    ("failover.mode", "\"strict\"", "\"available\""),
    (
        "failover.witness",
        "\"127.0.0.1:7410\"",
        "\"127.0.0.1:7411\"",
    ),
    ("failover.lease_ms", "600", "700"),
    ("failover.clock_drift_ppm", "10000", "10001"),
    ("logging.level", "\"info\"", "\"debug\""),
    ("logging.target", "\"stderr\"", "\"syslog\""),
    ("logging.facility", "\"daemon\"", "\"local0\""),
    ("logging.syslog_socket", "\"/dev/log\"", "\"/dev/log2\""),
    ("admin.socket", "\"/run/a.sock\"", "\"/run/b.sock\""),
    ("metrics.listen", "\"127.0.0.1:9400\"", "\"127.0.0.1:9401\""),
    ("auth.mode", "\"token\"", "\"none\""),
    ("auth.users_file", "\"u\"", "\"u2\""),
    ("auth.failure_delay_ms", "300", "301"),
    ("auth.verify_threads", "1", "2"),
    ("auth.max_pending_verifies", "64", "65"),
    ("hooks.role_change", "\"/bin/sh\"", "\"/bin/cat\""),
    ("web.listen", "\"127.0.0.1:7480\"", "\"127.0.0.1:7481\""),
    (
        "web.peer_url",
        "\"http://127.0.0.1:1\"",
        "\"http://127.0.0.1:2\"",
    ),
    ("web.allowed_origins", "[]", "[\"http://x\"]"),
];

/// Keys that must change with `key` for the file to stay valid.
fn companions(key: &str) -> &'static [(&'static str, &'static str)] {
    match key {
        // Available mode takes no witness; auth without tokens no users file.
        "failover.mode" => &[("failover.witness", "\"\"")],
        "auth.mode" => &[("auth.users_file", "\"\"")],
        _ => &[],
    }
}

/// The config of [`FILE`] with `changes` made.
fn config(changes: &[(&str, &str)]) -> Config {
    let mut text = String::new();
    let mut section = "";
    for (key, value, _) in FILE {
        let (this, name) = key.split_once('.').unwrap();
        if this != section {
            text.push_str(&format!("[{this}]\n"));
            section = this;
        }
        let value = changes
            .iter()
            .find(|(k, _)| k == key)
            .map_or(*value, |(_, v)| v);
        text.push_str(&format!("{name} = {value}\n"));
    }
    let raw = parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    raw.validate(Path::new("t.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn every_key_of_the_file_is_in_the_table_once() {
    let file: Vec<&str> = FILE.iter().map(|(key, ..)| *key).collect();
    let table: Vec<&str> = KEYS.iter().map(|key| key.name).collect();
    assert_eq!(file, table);
}

#[test]
fn a_change_of_every_key_is_classified_and_kept_as_the_table_says() {
    let old = config(&[]);
    for (key, _, other) in FILE {
        let mut changes = vec![(*key, *other)];
        changes.extend_from_slice(companions(key));
        let new = config(&changes);
        let plan = plan(&old, &new);
        let live: Vec<&str> = plan.live.iter().map(|c| c.key).collect();
        let applies = KEYS.iter().find(|k| k.name == *key).unwrap().applies;
        let runs_with = match applies {
            Applies::Live => {
                assert_eq!(live, [*key], "{key}: {plan:?}");
                assert!(plan.restart.is_empty(), "{key}: {plan:?}");
                &new
            }
            Applies::Restart => {
                assert!(live.is_empty(), "{key}: {plan:?}");
                assert_eq!(plan.restart_keys().first(), Some(key), "{key}: {plan:?}");
                &old
            }
            // Only the daemon, once the files load, takes the new paths.
            Applies::Files => {
                assert!(
                    live.is_empty() && plan.restart.is_empty(),
                    "{key}: {plan:?}"
                );
                &old
            }
            Applies::FirstStart => {
                assert!(
                    live.is_empty() && plan.restart.is_empty(),
                    "{key}: {plan:?}"
                );
                &new
            }
        };
        let (runs, expected) = (format!("{:?}", plan.config), format!("{runs_with:?}"));
        assert_eq!(runs, expected, "{key}: the config the node runs with");
    }
}

#[test]
fn a_restart_only_change_is_reported_with_its_key_and_values() {
    let old = config(&[]);
    let new = config(&[("log.max_pending", "17"), ("client.max_clients", "20")]);
    let plan = plan(&old, &new);
    assert_eq!(plan.restart_keys(), ["log.max_pending"]);
    assert_eq!(plan.restart[0].to_string(), "log.max_pending 16 -> 17");
    assert_eq!(plan.live[0].to_string(), "client.max_clients 10 -> 20");
    assert_eq!(plan.config.log.max_pending, 16, "the running value stays");
    assert_eq!(plan.config.client.max_clients, 20);
}

#[test]
fn turning_tls_on_or_off_takes_a_restart() {
    let on = config(&[]);
    let off = config(&[("client.tls_cert", "\"\""), ("client.tls_key", "\"\"")]);
    let plan = plan(&on, &off);
    assert_eq!(plan.restart_keys(), ["client.tls_cert", "client.tls_key"]);
    assert_eq!(plan.config.client.tls, on.client.tls);
    let link_off = config(&[
        ("replication.tls_cert", "\"\""),
        ("replication.tls_key", "\"\""),
        ("replication.tls_ca", "\"\""),
        ("replication.tls_name", "\"\""),
    ]);
    let restart = super::reload::plan(&on, &link_off).restart_keys();
    assert_eq!(restart.len(), 4, "{restart:?}");
    assert!(restart.iter().all(|k| k.starts_with("replication.tls_")));
}

#[test]
fn an_unchanged_file_plans_nothing() {
    let plan = plan(&config(&[]), &config(&[]));
    assert!(plan.live.is_empty() && plan.restart.is_empty(), "{plan:?}");
}
