//! `pbchatd --check` and start-up refusals: the error names the file, the key and the problem.

use crate::common;

use common::pbchatd;

fn check(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = pbchatd()
        .arg("--check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const NODE: &str = "[node]\nid = \"a\"\nrole = \"primary\"\ndata_dir = \"d\"\n";

/// The shipped configs name paths relative to where the pair runs (`scripts/pair.sh` runs
/// it from the repository, where it makes `data/pair.secret`); they are checked from a
/// scratch dir holding a fresh secret, so the test needs no earlier quick start.
#[test]
fn shipped_configs_pass_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let made = pbchatd()
        .args(["--gen-secret", "data/pair.secret"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    for name in ["config/primary.toml", "config/backup.toml"] {
        let out = pbchatd()
            .arg("--check")
            .arg("-c")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name))
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_bad_value_names_file_key_and_problem_and_exits_2() {
    let (code, err) = check(&format!("{NODE}[client]\nlisten = \"127.0.0.1\"\n"));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("bad.toml: client.listen: \"127.0.0.1\" is not an IP address with a port"),
        "{err}"
    );
    let (code, err) = check(&format!(
        "{NODE}[client]\nmax_rooms_per_client = 300\nroom_rate_burst = 250\n"
    ));
    assert_eq!(code, Some(2));
    assert!(
        err.contains(
            "bad.toml: client.room_rate_burst: 250 is below client.max_rooms_per_client (300)"
        ),
        "{err}"
    );
    let (code, err) = check(&format!("{NODE}[log]\nfsync = \"sometimes\"\n"));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("bad.toml") && err.contains("fsync") && err.contains("sometimes"),
        "{err}"
    );
}

#[test]
fn an_unknown_key_is_refused() {
    let (code, err) = check(&format!("{NODE}[client]\nmax_client = 5\n"));
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown field `max_client`"), "{err}");
}

#[test]
fn broken_toml_and_a_missing_file_are_explained() {
    let (code, err) = check("[node\nid = ");
    assert_eq!(code, Some(2));
    assert!(err.contains("bad.toml") && err.contains("line 1"), "{err}");
    let out = pbchatd()
        .args(["--check", "-c", "/nonexistent/x.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.toml: cannot read"));
}

#[test]
fn a_data_dir_in_use_is_refused_at_start() {
    let first = common::Daemon::start("primary", "", "");
    let out = pbchatd()
        .arg("-c")
        .arg(&first.config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another pbchatd"));
}
