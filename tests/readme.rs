//! README.md's configuration examples are true to the config reader: the
//! minimal one-app example and the complete reference parse as written
//! (with the variables they name set), every key the reader knows is in the
//! reference, and every key the reference shows commented out is one the
//! reader knows.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The first ```toml block after the heading line `heading`.
fn toml_block(readme: &str, heading: &str) -> String {
    let at = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no heading {heading:?}"));
    let rest = &readme[at..];
    let start = rest.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = rest[start..].find("\n```").expect("the block's end");
    rest[start..start + end + 1].to_string()
}

/// An environment with every variable the text names in a `*_env` key
/// (commented or not), each with a distinct value of 32+ characters.
fn env_for(text: &str) -> MapEnv {
    let mut env = MapEnv::new();
    for line in text.lines() {
        let line = line.trim_start_matches(['#', ' ']);
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        if key.trim().ends_with("_env") {
            let var = value.trim().split('"').nth(1).expect("a quoted variable");
            env.set(var, format!("value-of-{var}-0123456789abcdef"));
        }
    }
    env
}

/// The text with every commented-out key (`# key = ...`) and table header
/// (`# [table]`) uncommented.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_key_line(rest) || rest.starts_with('[') => rest.to_string(),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_key_line(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(k, _)| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// Every key name the config reader asks for: the string literals of its
/// typed reads in `src/config/*.rs`.
fn reader_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let calls = [
        "string(\"",
        "required_string(\"",
        "integer(\"",
        "duration(\"",
        "boolean(\"",
        "table(\"",
        "tables(\"",
        "strings(\"",
        "value(\"",
        "d(\"",
        "source(&mut s, \"",
        "(\"key_env\"",
        "(\"key_file\"",
        "(\"key_sha256\"",
    ];
    for entry in std::fs::read_dir(root().join("src/config")).expect("src/config") {
        let path = entry.expect("entry").path();
        if path
            .file_name()
            .is_some_and(|n| n == "tests.rs" || n == "reader.rs")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        // Test modules read made-up keys.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        // Secrets are read as `<base>_env` / `<base>_file` pairs.
        for (i, _) in text.match_indices('"') {
            let name: String = text[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let closed = text[i + 1 + name.len()..].starts_with('"');
            if closed && (name.ends_with("_env") || name.ends_with("_file")) {
                keys.insert(name);
            }
        }
        for call in calls {
            for (i, _) in text.match_indices(call) {
                let rest = &text[i + call.len() - 1..];
                let name: String = rest
                    .trim_start_matches('"')
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    keys.insert(name);
                }
            }
        }
    }
    keys
}

#[test]
fn the_minimal_example_parses() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let text = toml_block(&readme, "### A minimal config: one app, one client");
    let config = Config::parse(&text, &env_for(&text))
        .unwrap_or_else(|p| panic!("the minimal example: {p}\n{text}"));
    assert_eq!((config.apps.len(), config.clients.len()), (1, 1));
    assert!(config.admin_listen.ip().is_loopback(), "admin on loopback");
}

#[test]
fn the_configuration_reference_is_complete_and_parses() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let text = toml_block(&readme, "### Configuration reference");
    let env = env_for(&text);

    // As written.
    let config = Config::parse(&text, &env)
        .unwrap_or_else(|p| panic!("the configuration reference: {p}\n{text}"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    assert!(config.admin_listen.ip().is_loopback(), "admin on loopback");

    // Every commented key is one the reader knows: uncommented, the file
    // has problems (alternatives clash, files are missing) but no unknown
    // key and no syntax error.
    let all = uncommented(&text);
    assert_ne!(all, text);
    if let Err(problems) = Config::parse(&all, &env) {
        for p in &problems.0 {
            assert_ne!(p.message, "unknown key", "{p}");
            assert!(!p.key.starts_with("line "), "{p}\n{all}");
        }
    }

    // Every key the reader knows is in the reference.
    let keys = reader_keys();
    assert!(keys.len() > 60, "the reader's keys: {keys:?}");
    let shown: BTreeSet<String> = all
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            if let Some(header) = l.strip_prefix('[') {
                let name = header.trim_start_matches('[');
                let name = &name[..name.find(']').unwrap_or(name.len())];
                return Some(name.rsplit('.').next().unwrap_or(name).to_string());
            }
            l.split_once(" = ").map(|(k, _)| k.to_string())
        })
        .collect();
    let missing: Vec<&String> = keys.iter().filter(|k| !shown.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "README's configuration reference lacks {missing:?}"
    );
}
