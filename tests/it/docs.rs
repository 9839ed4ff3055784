//! The man pages and docs/configuration.md stay true to the code (issue 18 item 6): every
//! config key the daemon and the witness accept is documented in pbchat.toml(5),
//! pbchat-witness(8) and docs/configuration.md, none of them documents a key that does not
//! exist, and every long flag of each binary is an entry of its man page and the other way
//! round. The keys come from the deserializers themselves (the `deny_unknown_fields` error
//! names every field), the flags from the real binaries' `--help`: nothing to keep in sync.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use pbchat::config::reload::{Applies, KEYS};

fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The backquoted names serde lists after "expected" in an unknown-field error.
fn expected_fields(error: &str) -> BTreeSet<String> {
    let (_, list) = error
        .split_once("expected")
        .unwrap_or_else(|| panic!("no field list in {error:?}"));
    let list = list.lines().next().unwrap_or("");
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

const UNKNOWN: &str = "zz_not_a_key = 1";

fn daemon_error(text: &str) -> String {
    match pbchat::config::parse(text, "t.toml") {
        Ok(_) => panic!("{text:?} parsed"),
        Err(e) => e.to_string(),
    }
}

/// Every `(section, key)` pbchatd's config accepts.
fn daemon_keys() -> BTreeSet<(String, String)> {
    let sections = expected_fields(&daemon_error(UNKNOWN));
    assert!(
        sections.contains("node") && sections.len() >= 10,
        "{sections:?}"
    );
    let mut keys = BTreeSet::new();
    for section in sections {
        let fields = expected_fields(&daemon_error(&format!("[{section}]\n{UNKNOWN}\n")));
        assert!(!fields.is_empty(), "[{section}]");
        keys.extend(fields.into_iter().map(|key| (section.clone(), key)));
    }
    keys
}

/// Every key pbchat-witness's config accepts.
fn witness_keys() -> BTreeSet<String> {
    let e = match pbchat::witness_config::parse(UNKNOWN, "w.toml") {
        Ok(_) => panic!("parsed"),
        Err(e) => e.to_string(),
    };
    let keys = expected_fields(&e);
    assert!(keys.contains("lease_ms"), "{keys:?}");
    keys
}

/// A row of a key table of docs/configuration.md: `| key | default | range | meaning |`.
struct Row {
    default: String,
    meaning: String,
}

/// The rows of each table of docs/configuration.md, by key: `## [section]` headings, and
/// `## pbchat-witness` as section "witness".
fn configuration_md_rows() -> Vec<((String, String), Row)> {
    let mut section = String::new();
    let mut rows = Vec::new();
    for line in read("docs/configuration.md").lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            let word = heading.split_whitespace().next().unwrap_or("");
            section = match word {
                "pbchat-witness" => "witness".to_string(),
                _ => word
                    .strip_prefix('[')
                    .and_then(|w| w.strip_suffix(']'))
                    .unwrap_or("")
                    .to_string(),
            };
        } else if let Some(rest) = line.strip_prefix("| `") {
            if let (Some((key, _)), false) = (rest.split_once('`'), section.is_empty()) {
                let cells: Vec<&str> = line.trim_end_matches('|').split('|').collect();
                let row = Row {
                    default: cells.get(2).unwrap_or(&"").trim().to_string(),
                    meaning: cells.last().unwrap_or(&"").to_string(),
                };
                rows.push(((section.clone(), key.to_string()), row));
            }
        }
    }
    rows
}

/// The keys of each table of docs/configuration.md.
fn configuration_md() -> BTreeSet<(String, String)> {
    configuration_md_rows()
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

/// The man page's `.SH` sections with the tag lines of their `.TP` entries.
fn man_entries(name: &str) -> Vec<(String, Vec<String>)> {
    let text = read(name);
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(heading) = line.strip_prefix(".SH ") {
            sections.push((heading.trim_matches('"').to_string(), Vec::new()));
        } else if line == ".TP" {
            if let (Some(tag), Some((_, tags))) = (lines.next(), sections.last_mut()) {
                tags.push(tag.to_string());
            }
        }
    }
    sections
}

/// The words of a macro line: quoted arguments kept whole.
fn macro_args(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut rest = line.split_once(' ').map_or("", |(_, r)| r).trim_start();
    while !rest.is_empty() {
        let (arg, tail) = if let Some(quoted) = rest.strip_prefix('"') {
            quoted.split_once('"').unwrap_or((quoted, ""))
        } else {
            rest.split_once(' ').unwrap_or((rest, ""))
        };
        args.push(arg.to_string());
        rest = tail.trim_start();
    }
    args
}

/// The keys a `.TP` tag names: its first bold word, and the ones joined to it by `", "`
/// (`.BR tls_cert ", " tls_key " [empty] ..."`).
fn tag_keys(tag: &str) -> Vec<String> {
    if !(tag.starts_with(".B ") || tag.starts_with(".BR ")) {
        return Vec::new();
    }
    let args = macro_args(tag);
    let mut keys = vec![args[0].clone()];
    let mut i = 1;
    while i + 1 < args.len() && args[i] == ", " {
        keys.push(args[i + 1].clone());
        i += 2;
    }
    keys
}

fn missing_and_extra<T: Ord + Clone>(code: &BTreeSet<T>, doc: &BTreeSet<T>) -> (Vec<T>, Vec<T>) {
    (
        code.difference(doc).cloned().collect(),
        doc.difference(code).cloned().collect(),
    )
}

#[test]
fn configuration_md_documents_exactly_the_accepted_keys() {
    let mut code = daemon_keys();
    code.extend(
        witness_keys()
            .into_iter()
            .map(|k| ("witness".to_string(), k)),
    );
    let (missing, extra) = missing_and_extra(&code, &configuration_md());
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/configuration.md lacks {missing:?} and documents keys that do not exist: {extra:?}"
    );
}

#[test]
fn pbchat_toml_5_documents_exactly_the_accepted_keys() {
    let mut doc = BTreeSet::new();
    for (heading, tags) in man_entries("man/pbchat.toml.5") {
        let Some(section) = heading
            .strip_prefix('[')
            .and_then(|h| h.split_once(']'))
            .map(|(s, _)| s.to_string())
        else {
            continue;
        };
        for tag in &tags {
            doc.extend(tag_keys(tag).into_iter().map(|k| (section.clone(), k)));
        }
    }
    let (missing, extra) = missing_and_extra(&daemon_keys(), &doc);
    assert!(
        missing.is_empty() && extra.is_empty(),
        "man/pbchat.toml.5 lacks {missing:?} and documents keys that do not exist: {extra:?}"
    );
}

#[test]
fn pbchat_witness_8_documents_exactly_the_accepted_keys() {
    let doc: BTreeSet<String> = man_entries("man/pbchat-witness.8")
        .into_iter()
        .filter(|(heading, _)| heading == "CONFIGURATION")
        .flat_map(|(_, tags)| tags.iter().flat_map(|t| tag_keys(t)).collect::<Vec<_>>())
        .collect();
    let (missing, extra) = missing_and_extra(&witness_keys(), &doc);
    assert!(
        missing.is_empty() && extra.is_empty(),
        "man/pbchat-witness.8 lacks {missing:?} and documents keys that do not exist: {extra:?}"
    );
}

fn help(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "{bin} {args:?} --help: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The long flags of a binary and of its subcommands, from `--help`.
fn binary_flags(bin: &str) -> BTreeSet<String> {
    let top = help(bin, &[]);
    let mut texts = vec![top.clone()];
    let commands = top
        .split_once("Commands:\n")
        .map_or("", |(_, rest)| rest.split("\n\n").next().unwrap_or(""));
    for command in commands.lines().filter_map(|l| l.split_whitespace().next()) {
        if command != "help" {
            texts.push(help(bin, &[command]));
        }
    }
    let mut flags = BTreeSet::new();
    for text in texts {
        for line in text.lines() {
            let line = line.trim_start();
            if !line.starts_with('-') {
                continue;
            }
            let flag = line
                .split([' ', ',', '='])
                .find(|w| w.starts_with("--"))
                .unwrap_or_else(|| panic!("{bin}: no long flag in {line:?}"));
            flags.insert(flag.to_string());
        }
    }
    flags
}

/// The long flags the `.TP` entries of a man page name.
fn man_flags(page: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for (_, tags) in man_entries(page) {
        for tag in tags {
            let plain = tag.replace("\\-", "-");
            for (i, _) in plain.match_indices("--") {
                let flag: String = plain[i..]
                    .chars()
                    .take_while(|c| *c == '-' || c.is_ascii_alphanumeric())
                    .collect();
                flags.insert(flag);
            }
        }
    }
    flags
}

#[test]
fn man_pages_document_exactly_the_binaries_flags() {
    let pages = [
        (env!("CARGO_BIN_EXE_pbchatd"), "man/pbchatd.8"),
        (env!("CARGO_BIN_EXE_pbchatctl"), "man/pbchatctl.8"),
        (env!("CARGO_BIN_EXE_pbchat-client"), "man/pbchat-client.1"),
        (env!("CARGO_BIN_EXE_pbchat-witness"), "man/pbchat-witness.8"),
    ];
    let mut drift = Vec::new();
    for (bin, page) in pages {
        let code = binary_flags(bin);
        assert!(code.contains("--help"), "{bin}: {code:?}");
        let (missing, extra) = missing_and_extra(&code, &man_flags(page));
        if !missing.is_empty() || !extra.is_empty() {
            drift.push(format!("{page} lacks {missing:?}, names {extra:?}"));
        }
    }
    assert!(drift.is_empty(), "{drift:#?}");
}

/// The keys the reload table says apply at run time with `applies`.
fn reload_keys(applies: Applies) -> Vec<String> {
    KEYS.iter()
        .filter(|key| key.applies == applies)
        .map(|key| key.name.to_string())
        .collect()
}

/// The reload table names every key the file accepts, each once.
#[test]
fn reload_table_names_exactly_the_accepted_keys() {
    let table: Vec<(String, String)> = KEYS
        .iter()
        .map(|key| {
            let (section, name) = key.name.split_once('.').expect("section.key");
            (section.to_string(), name.to_string())
        })
        .collect();
    let unique: BTreeSet<_> = table.iter().cloned().collect();
    assert_eq!(unique.len(), table.len(), "a key twice in {table:?}");
    let (missing, extra) = missing_and_extra(&daemon_keys(), &unique);
    assert!(
        missing.is_empty() && extra.is_empty(),
        "config::reload::KEYS lacks {missing:?} and names keys that do not exist: {extra:?}"
    );
}

/// What a row of docs/configuration.md says of a reload agrees with the table: "Takes a
/// restart" is a restart, "reloadable with HUP" applies at once, "Re-read on HUP" re-reads
/// files (the users file from the path read at start, so its key takes a restart); and
/// the row of each key whose files the table says are re-read says so.
#[test]
fn configuration_md_rows_claim_what_the_reload_table_says() {
    let mut wrong = Vec::new();
    for ((section, key), Row { meaning, .. }) in configuration_md_rows() {
        let name = format!("{section}.{key}");
        let Some(entry) = KEYS.iter().find(|k| k.name == name) else {
            continue; // the witness's keys; the tables' key sets are checked above
        };
        let rereads = meaning.contains("Re-read on HUP");
        if entry.applies == Applies::Files && !rereads {
            wrong.push(format!(
                "{name}: docs do not say its files are re-read on HUP"
            ));
        }
        let allowed: &[Applies] = if meaning.contains("Takes a restart") {
            &[Applies::Restart]
        } else if meaning.contains("reloadable with HUP") {
            &[Applies::Live]
        } else if rereads {
            &[Applies::Files, Applies::Restart]
        } else {
            continue;
        };
        if !allowed.contains(&entry.applies) {
            wrong.push(format!(
                "{name}: docs say {meaning:?}, the table {:?}",
                entry.applies
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// What HUP applies at once is what README, docs and man pages say (issue 18 item 6: they
/// claimed `log.max_pending`, which takes a restart).
#[test]
fn reload_passages_name_what_reload_applies() {
    let applied = reload_keys(Applies::Live);
    let restart = reload_keys(Applies::Restart);
    assert!(
        applied.contains(&"logging.level".to_string()),
        "{applied:?}"
    );
    assert!(
        restart.contains(&"log.max_pending".to_string()),
        "{restart:?}"
    );
    let passages = [
        ("README.md", "- `HUP` re-reads", "re-reads the users file"),
        (
            "docs/configuration.md",
            "HUP re-reads the file:",
            "change at once",
        ),
        (
            "docs/failover.md",
            "Applied at once:",
            "the users file is re-read",
        ),
        (
            "man/pbchatd.8",
            "Re\\-read the configuration file.",
            "change at once",
        ),
        (
            "man/pbchat.toml.5",
            "signal re\\-reads the file.",
            "change at once",
        ),
    ];
    let mut wrong = Vec::new();
    for (file, from, to) in passages {
        let text = read(file);
        let start = text
            .find(from)
            .unwrap_or_else(|| panic!("{file}: {from:?}"));
        let len = text[start..]
            .find(to)
            .unwrap_or_else(|| panic!("{file}: {to:?}"));
        let passage = text[start..start + len].replace("\\-", "-");
        for name in &applied {
            // The README names the client limits without their section.
            let short = name.strip_prefix("client.").unwrap_or(name);
            if !passage.contains(name.as_str()) && !passage.contains(&format!("`{short}`")) {
                wrong.push(format!("{file} does not name {name}"));
            }
        }
        for name in &restart {
            if passage.contains(name.as_str()) {
                wrong.push(format!("{file} says {name} changes at once"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The TOML value a default cell of docs/configuration.md states, if it states one: a
/// number, or a backquoted word, `""` or `[]` (not prose such as "2, or 1 on one core").
fn md_default(cell: &str) -> Option<String> {
    if !cell.is_empty() && cell.chars().all(|c| c.is_ascii_digit()) {
        return Some(cell.to_string());
    }
    let token = cell.strip_prefix('`')?.split('`').next()?;
    Some(match token {
        "\"\"" | "[]" => token.to_string(),
        word => format!("{word:?}"),
    })
}

/// The defaults pbchat.toml(5) states, as TOML values where they are values: the
/// `[...]` after each key of a `.TP` tag.
fn man_defaults() -> BTreeSet<((String, String), String)> {
    let mut found = BTreeSet::new();
    for (heading, tags) in man_entries("man/pbchat.toml.5") {
        let Some(section) = heading.strip_prefix('[').and_then(|h| h.split_once(']')) else {
            continue;
        };
        for tag in tags.iter().filter(|t| t.starts_with(".BR ")) {
            let args = macro_args(tag);
            let Some(inside) = args.get(1).and_then(|a| a.trim().strip_prefix('[')) else {
                continue;
            };
            let default = inside.rsplit_once(']').map_or("", |(d, _)| d);
            let value = match default.replace("\\(dq", "\"").as_str() {
                number if number.chars().all(|c| c.is_ascii_digit()) => number.to_string(),
                "\"\"" | "[]" => default.replace("\\(dq", "\""),
                word if word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "./:".contains(c)) =>
                {
                    format!("{word:?}")
                }
                _ => continue,
            };
            found.insert(((section.0.to_string(), args[0].clone()), value));
        }
    }
    found
}

/// The sections of a paired node's file with their required keys: every key can be added.
const PAIRED: &[(&str, &str)] = &[
    ("node", "id = \"a\"\nrole = \"primary\"\ndata_dir = \"d\"\n"),
    ("client", ""),
    ("auth", ""),
    ("log", ""),
    (
        "peer",
        "id = \"b\"\nclient_address = \"x:1\"\nheartbeat_address = \"127.0.0.1:1\"\nreplication_address = \"127.0.0.1:2\"\n",
    ),
    ("heartbeat", "listen = \"127.0.0.1:3\"\nsecret_file = \"s\"\n"),
    ("replication", "listen = \"127.0.0.1:4\"\n"),
    ("failover", ""),
    ("logging", ""),
    ("admin", ""),
    ("hooks", ""),
    ("web", "listen = \"127.0.0.1:5\"\n"),
    ("metrics", "listen = \"127.0.0.1:6\"\n"),
];

/// The validated config of [`PAIRED`] with `line` added to `section`, in strict mode or
/// not, as text to compare.
fn paired_with(section: &str, line: &str, strict: bool) -> Result<String, String> {
    let mut text = String::new();
    for (name, body) in PAIRED {
        text.push_str(&format!("[{name}]\n{body}"));
        if *name == "failover" && strict {
            text.push_str("mode = \"strict\"\nwitness = \"127.0.0.1:7\"\n");
        }
        if *name == section {
            text.push_str(line);
        }
    }
    let raw = pbchat::config::parse(&text, "t.toml").map_err(|e| e.to_string())?;
    let config = raw
        .validate(Path::new("t.toml"))
        .map_err(|e| e.to_string())?;
    Ok(format!("{config:?}"))
}

/// The witness's config with `line` added, as text to compare.
fn witness_with(line: &str) -> Result<String, String> {
    let text =
        format!("listen = \"127.0.0.1:7410\"\nsecret_file = \"s\"\nstate_file = \"w\"\n{line}");
    let config = pbchat::witness_config::parse(&text, "w.toml").map_err(|e| e.to_string())?;
    Ok(format!("{config:?}"))
}

/// A documented default, written into the file, changes nothing: docs/configuration.md
/// and pbchat.toml(5) state the defaults the code has.
#[test]
fn documented_defaults_are_the_code_defaults() {
    let man = man_defaults();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for ((section, key), row) in configuration_md_rows() {
        let Some(value) = md_default(&row.default) else {
            continue;
        };
        checked += 1;
        let line = format!("{key} = {value}\n");
        let (with, without) = if section == "witness" {
            (witness_with(&line), witness_with(""))
        } else {
            // The lease keys count in strict mode only.
            let strict = ["lease_ms", "clock_drift_ppm"].contains(&key.as_str());
            (
                paired_with(&section, &line, strict),
                paired_with(&section, "", strict),
            )
        };
        let doc = format!("docs/configuration.md: {section}.{key} = {value}");
        match (with, without) {
            (Ok(with), Ok(without)) if with == without => {}
            (Err(e), _) | (_, Err(e)) => wrong.push(format!("{doc}: {e}")),
            _ => wrong.push(format!("{doc} is not the default")),
        }
        let in_man = man.iter().find(|(k, _)| k.0 == section && k.1 == key);
        if let Some((_, man_value)) = in_man.filter(|(_, v)| *v != value) {
            wrong.push(format!(
                "pbchat.toml.5: {section}.{key} = {man_value}, docs: {value}"
            ));
        }
    }
    assert!(checked >= 40, "only {checked} defaults read");
    assert!(wrong.is_empty(), "{wrong:#?}");
}
