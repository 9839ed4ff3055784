//! README.md stays true to the code (issue 15: its command table lacked `/help`, its config
//! table `[auth]`, `max_connections_per_ip`, `max_room_members`, the TLS and strict-mode
//! keys). The full references are docs/configuration.md and pbchat-client's own `/help`;
//! the README's short tables must name everything they do.

use std::path::Path;

fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Each `## [section]` of docs/configuration.md with the keys of its table (rows that
/// start with a backquoted key).
fn documented_keys() -> Vec<(String, Vec<String>)> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for line in read("docs/configuration.md").lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            // `## [peer] (optional)` is a section; `## systemd` and the witness are not.
            sections.push((
                heading
                    .split_whitespace()
                    .next()
                    .filter(|w| w.starts_with('['))
                    .unwrap_or("")
                    .to_string(),
                Vec::new(),
            ));
        } else if let (Some(rest), Some((_, keys))) =
            (line.strip_prefix("| `"), sections.last_mut())
        {
            if let Some((key, _)) = rest.split_once('`') {
                keys.push(key.to_string());
            }
        }
    }
    sections.retain(|(section, _)| !section.is_empty());
    sections
}

#[test]
fn readme_config_table_names_every_documented_key() {
    let readme = read("README.md");
    let sections = documented_keys();
    assert!(sections.len() >= 10, "{sections:?}");
    let mut missing = Vec::new();
    for (section, keys) in &sections {
        let row_start = format!("| `{section}` |");
        let Some(row) = readme.lines().find(|l| l.starts_with(&row_start)) else {
            missing.push(format!("the row for {section}"));
            continue;
        };
        for key in keys {
            if !row.contains(&format!("`{key}`")) {
                missing.push(format!("{section} {key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README.md's config table lacks: {missing:?}"
    );
}

#[test]
fn readme_command_table_names_every_client_command() {
    let readme = read("README.md");
    let commands: Vec<&str> = pbchat::client::input::HELP
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|word| word.starts_with('/'))
        .collect();
    assert!(commands.contains(&"/help"), "{commands:?}");
    let missing: Vec<_> = commands
        .iter()
        .filter(|command| !readme.contains(&format!("| `{command}")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's command table lacks: {missing:?}"
    );
}
