//! A test that keeps the module graph free of cycles: between two sibling modules (two
//! top-level modules, two files of `daemon`, ...) references go one way only, so each
//! layer can be read, tested and replaced without the one that uses it.
//!
//! It reads `src/` and `bench/src/` (see `TREES`) as text: every `crate::a::b` and
//! `super::b` path outside comments and before a file's `#[cfg(test)] mod tests` is an edge
//! from the file's module to the longest module the path names, counted between the two
//! siblings under their common parent (a child using its parent, or the reverse, is not a
//! layering question).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`daemon::io`) -> source text, without test modules and comments.
fn modules(src: &Path) -> BTreeMap<Vec<String>, String> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(src)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let Some(stem) = rel.strip_suffix(".rs") else {
                continue;
            };
            if rel.starts_with("bin/") || rel == "lib.rs" || stem.ends_with("tests") {
                continue;
            }
            let mut parts: Vec<String> = stem.split('/').map(str::to_string).collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            found.insert(parts, code_of(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    found
}

fn code_of(text: &str) -> String {
    let text = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths `code` names: `crate::x::y...` from the root, `super::y...` from `parent`.
fn paths(code: &str, parent: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (anchor, base) in [("crate::", &[][..]), ("super::", parent)] {
        for (at, _) in code.match_indices(anchor) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let mut path = base.to_vec();
            for part in code[at + anchor.len()..].split("::") {
                let word: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if word.is_empty() {
                    break;
                }
                path.push(word.clone());
                if word.len() != part.len() {
                    break;
                }
            }
            out.push(path);
        }
    }
    out
}

/// Edges between siblings: (common parent + the two children's names).
fn sibling_edges(mods: &BTreeMap<Vec<String>, String>) -> BTreeSet<(Vec<String>, Vec<String>)> {
    let mut edges = BTreeSet::new();
    for (module, code) in mods {
        let parent = &module[..module.len() - 1];
        for path in paths(code, parent) {
            let Some(target) = (1..=path.len())
                .rev()
                .map(|k| &path[..k])
                .find(|p| mods.contains_key(*p))
            else {
                continue;
            };
            let common = module
                .iter()
                .zip(target)
                .take_while(|(a, b)| a == b)
                .count();
            if common < module.len() && common < target.len() {
                edges.insert((module[..=common].to_vec(), target[..=common].to_vec()));
            }
        }
    }
    edges
}

/// Every pair of siblings that reach each other (directly or through other siblings).
fn cycles(edges: &BTreeSet<(Vec<String>, Vec<String>)>) -> Vec<String> {
    let reaches = |from: &Vec<String>, to: &Vec<String>| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(at) = todo.pop() {
            if &at == to {
                return true;
            }
            if seen.insert(at.clone()) {
                todo.extend(
                    edges
                        .iter()
                        .filter(|(a, _)| *a == at)
                        .map(|(_, b)| b.clone()),
                );
            }
        }
        false
    };
    edges
        .iter()
        .filter(|(a, b)| reaches(b, a))
        .map(|(a, b)| format!("{} -> {}", a.join("::"), b.join("::")))
        .collect()
}

/// The source trees read, each one crate's (`lib.rs` at its root), with the fewest edges a
/// working scan finds there: this library's, and the benchmark harness's (the workspace
/// member `bench/`, checked from here so that one lint covers the workspace).
const TREES: [(&str, usize); 2] = [("src", 21), ("bench/src", 5)];

#[test]
fn no_two_modules_use_each_other() {
    for (tree, edges_min) in TREES {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(tree);
        let mods = modules(&src);
        let edges = sibling_edges(&mods);
        assert!(
            edges.len() >= edges_min,
            "{tree}: the scan found only {} edges: {edges:?}",
            edges.len()
        );
        let found = cycles(&edges);
        assert!(
            found.is_empty(),
            "{tree}: module cycles (each edge below is part of one):\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn a_cycle_is_found() {
    let mut mods = BTreeMap::new();
    let name = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    mods.insert(name("a"), "use crate::b::Thing;".to_string());
    mods.insert(name("b"), "fn f() { super::a::g() }".to_string());
    mods.insert(name("c"), "use crate::a::x;".to_string());
    let found = cycles(&sibling_edges(&mods));
    assert_eq!(found, ["a -> b", "b -> a"]);
}
