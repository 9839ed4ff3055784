//! Shell completions (src/completions.rs): each packaged binary prints bash, zsh and fish
//! scripts that offer every long flag its `--help` lists, and refuses an unknown shell.

use std::collections::BTreeSet;
use std::process::{Command, Output};

const BINARIES: [&str; 4] = [
    env!("CARGO_BIN_EXE_pbchatd"),
    env!("CARGO_BIN_EXE_pbchatctl"),
    env!("CARGO_BIN_EXE_pbchat-client"),
    env!("CARGO_BIN_EXE_pbchat-witness"),
];

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The long flags `BIN --help` names (`--help` and `--version` included).
fn help_flags(bin: &str) -> BTreeSet<String> {
    let help = run(bin, &["--help"]);
    assert!(help.status.success(), "{bin} --help: {help:?}");
    text(&help.stdout)
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '=' | '[' | ']' | '<'))
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| {
            word.trim_end_matches(|c: char| !c.is_alphanumeric())
                .to_string()
        })
        .collect()
}

/// The name the completions are for: the file name of the binary.
fn name(bin: &str) -> &str {
    bin.rsplit('/').next().unwrap()
}

#[test]
fn every_binary_completes_every_flag_of_its_help_in_bash_zsh_and_fish() {
    for bin in BINARIES {
        let flags = help_flags(bin);
        assert!(flags.len() >= 3, "{bin}: {flags:?}");
        for shell in ["bash", "zsh", "fish"] {
            let out = run(bin, &["--completions", shell]);
            assert!(out.status.success(), "{bin} --completions {shell}: {out:?}");
            let script = text(&out.stdout);
            assert!(
                script.contains(name(bin)),
                "{bin} {shell}: the script does not name it"
            );
            for flag in &flags {
                // fish writes `-l flag`; bash and zsh the flag itself.
                let fish_form = format!("-l {}", &flag[2..]);
                assert!(
                    script.contains(flag.as_str())
                        || (shell == "fish" && script.contains(&fish_form)),
                    "{bin} --completions {shell} lacks {flag}"
                );
            }
            assert!(
                !script.contains("--completions"),
                "{bin} {shell}: the hidden flag leaked"
            );
        }
    }
}

#[test]
fn pbchatctl_completions_offer_its_commands() {
    let script = text(&run(BINARIES[1], &["--completions", "bash"]).stdout);
    for command in [
        "status",
        "role",
        "reload",
        "failover",
        "log-level",
        "clients",
        "kick",
    ] {
        assert!(
            script.contains(command),
            "pbchatctl's bash completions lack {command}"
        );
    }
}

#[test]
fn an_unknown_shell_or_a_missing_one_is_a_usage_error() {
    for args in [
        &["--completions", "tcsh"][..],
        &["--completions"],
        &["--completions", "bash", "x"],
    ] {
        let out = run(BINARIES[0], args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            text(&out.stderr).contains("bash|zsh|fish"),
            "{args:?}: {out:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
}
