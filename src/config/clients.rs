//! `[[clients]]`: the internal services allowed to call, each with its
//! app, its keys (several at once while one is rotated) and, optionally,
//! the endpoints it may call (`allow`) and the share of its app's quotas it
//! may use (`quota_share`); only clients of store apps name a tenant.

use std::collections::HashMap;
use std::path::Path;

use super::apps::check_label;
use super::reader::{Problems, Section};
use super::Environment;
use crate::auth::{key_digest, AllowRule, ClientConfig, MAX_KEYS_PER_CLIENT};
use crate::endpoints::{Catalog, RouteConfig};
use crate::quota::Share;
use crate::tokens::{AppConfig, AppKind};

/// Client keys shorter than this are refused.
const MIN_KEY_LEN: usize = 16;

/// The three ways to give a key, each a string or a list of strings.
#[derive(Clone, Copy)]
enum KeySource {
    /// `key_env`: the name of an environment variable holding the key.
    Env,
    /// `key_file`: a file holding the key.
    File,
    /// `key_sha256`: the hex SHA-256 of the key (the key never reaches the
    /// gateway's host).
    Sha256,
}

impl KeySource {
    const ALL: [(&'static str, KeySource); 3] = [
        ("key_env", KeySource::Env),
        ("key_file", KeySource::File),
        ("key_sha256", KeySource::Sha256),
    ];
}

/// Reads `[[clients]]` (at least one). `apps` are the complete `[[apps]]`
/// entries, `app_names` every entry's name by file index (what a client's
/// `app` index counts). `allow` entries are checked against the catalog
/// (the built-in endpoints with `routes` applied; built once, when the
/// first `allow` is read, and skipped when it cannot be built: `load_config`
/// reports that): a template entry that names no catalog route is a
/// problem, a prefix entry that reaches none a warning (it can still allow
/// paths outside the catalog).
pub(super) fn read(
    root: &mut Section<'_>,
    apps: &[AppConfig],
    app_names: &[Option<String>],
    routes: &[RouteConfig],
    env: &dyn Environment,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> Vec<ClientConfig> {
    let mut catalog: Option<Option<Catalog>> = None;
    let sections = root.tables("clients", p);
    if sections.is_empty() {
        p.push("clients", "at least one [[clients]] entry is required");
    }
    let mut clients = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut owners: HashMap<[u8; 32], usize> = HashMap::new();
    for (i, mut s) in sections.into_iter().enumerate() {
        let name = s.required_string("name", p);
        let app_name = s.required_string("app", p);
        let tenant = s.string("tenant", p).map(str::to_string);
        if tenant.as_deref().is_some_and(|t| t.trim().is_empty()) {
            p.push(s.key("tenant"), "must not be empty");
        }
        let (keys, complete) = read_keys(&mut s, env, p);
        let quota_share = read_share(&mut s, p);
        let allow = if s.value("allow").is_some() {
            let catalog = catalog.get_or_insert_with(|| Catalog::with_overrides(routes).ok());
            read_allow(&mut s, catalog.as_ref(), p, warnings)
        } else {
            None
        };
        for (key, digest) in &keys {
            if let Some(j) = owners.insert(*digest, i) {
                if j != i {
                    p.push(
                        key.clone(),
                        format!("the same key is already used by clients[{j}]"),
                    );
                }
            }
        }
        if let Some(n) = name {
            check_label(&s, n, p);
            if let Some(j) = names.insert(n.to_string(), i) {
                p.push(
                    s.key("name"),
                    format!("{n:?} is already used by clients[{j}]"),
                );
            }
        }
        let app = app_name.and_then(|a| {
            let found = app_names.iter().position(|x| x.as_deref() == Some(a));
            if found.is_none() {
                p.push(s.key("app"), format!("no [[apps]] entry is named {a:?}"));
            }
            found
        });
        s.finish(p);
        if let (Some(name), Some(app), true) = (name, app, complete) {
            clients.push(ClientConfig {
                name: name.to_string(),
                app,
                keys: keys.into_iter().map(|(_, d)| d).collect(),
                tenant,
                allow,
                quota_share,
            });
        }
    }
    for c in &clients {
        // `c.app` counts every `[[apps]]` entry; `apps` holds the complete
        // ones only: find the app by its name.
        let app = app_names
            .get(c.app)
            .and_then(Option::as_deref)
            .and_then(|name| apps.iter().find(|a| a.name == name));
        if c.tenant.is_some() && app.is_some_and(|a| matches!(a.kind, AppKind::SelfBuilt)) {
            p.push(
                format!("clients[name = {:?}].tenant", c.name),
                "only clients of store apps name a tenant",
            );
        }
    }
    clients
}

/// Reads `quota_share`: a fraction in `(0, 1]` (an integer 1 is the whole
/// quota too). The shares of one app's clients may add up to more than 1:
/// each is a ceiling for its client, not a reservation (README, "Client
/// shares").
fn read_share(s: &mut Section<'_>, p: &mut Problems) -> Option<Share> {
    let found = match s.value("quota_share")? {
        toml::Value::Float(f) => Share::from_fraction(*f),
        toml::Value::Integer(1) => Share::from_fraction(1.0),
        toml::Value::Integer(i) => Share::from_fraction(*i as f64),
        other => Err(format!(
            "expected a fraction greater than 0 and at most 1, like 0.3, found {}",
            other.type_str()
        )),
    };
    found.map_err(|e| p.push(s.key("quota_share"), e)).ok()
}

/// Reads a client's keys from `key_env`, `key_file` and `key_sha256`, any
/// of them, each a string or a list: for each key read, the dotted key it
/// came from and its SHA-256; and whether they are complete (no problem
/// recorded, at least one key).
fn read_keys(
    s: &mut Section<'_>,
    env: &dyn Environment,
    p: &mut Problems,
) -> (Vec<(String, [u8; 32])>, bool) {
    let mut keys: Vec<(String, [u8; 32])> = Vec::new();
    let mut given = 0;
    let mut broken = false;
    for (name, source) in KeySource::ALL {
        let Some(value) = s.value(name) else {
            continue;
        };
        let items: Vec<(String, Option<&str>)> = match value {
            toml::Value::String(v) => vec![(s.key(name), Some(v.as_str()))],
            toml::Value::Array(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(j, v)| (format!("{}[{j}]", s.key(name)), v.as_str()))
                .collect(),
            toml::Value::Array(_) => {
                p.push(
                    s.key(name),
                    "is empty: give at least one key, or leave it out",
                );
                broken = true;
                continue;
            }
            other => {
                p.push(
                    s.key(name),
                    format!(
                        "expected a string or a list of strings, found {}",
                        other.type_str()
                    ),
                );
                broken = true;
                continue;
            }
        };
        for (key, item) in items {
            given += 1;
            let Some(item) = item else {
                p.push(key, "expected a string");
                broken = true;
                continue;
            };
            match key_of(source, item, env) {
                Ok(digest) if keys.iter().any(|(_, d)| *d == digest) => {
                    p.push(key, "the same key is given twice for this client");
                    broken = true;
                }
                Ok(digest) => keys.push((key, digest)),
                Err(e) => {
                    p.push(key, e);
                    broken = true;
                }
            }
        }
    }
    if given == 0 && !broken {
        p.push(
            s.key("key_env"),
            "is required: set one of `key_env`, `key_file`, `key_sha256` (each a string, or a list while a key is rotated)",
        );
    }
    if given > MAX_KEYS_PER_CLIENT {
        p.push(
            s.key("key_env"),
            format!(
                "{given} keys: a client holds at most {MAX_KEYS_PER_CLIENT} at once (remove the keys no longer in use)"
            ),
        );
        broken = true;
    }
    let complete = !broken && !keys.is_empty();
    (keys, complete)
}

/// The SHA-256 of one key, or what is wrong with it (never the key).
fn key_of(source: KeySource, item: &str, env: &dyn Environment) -> Result<[u8; 32], String> {
    let short = |what: String| {
        format!("{what} is shorter than {MIN_KEY_LEN} characters: use a long random key")
    };
    match source {
        KeySource::Env => match env.var(item) {
            Some(v) if v.trim().is_empty() => Err(format!("environment variable {item} is empty")),
            Some(v) if v.trim().len() < MIN_KEY_LEN => {
                Err(short(format!("the key in environment variable {item}")))
            }
            Some(v) => Ok(key_digest(v.trim().as_bytes())),
            None => Err(format!("environment variable {item} is not set")),
        },
        KeySource::File => match env.read_file(Path::new(item)) {
            Ok(v) if v.trim().is_empty() => Err(format!("file {item} is empty")),
            Ok(v) if v.trim().len() < MIN_KEY_LEN => Err(short(format!("the key in file {item}"))),
            Ok(v) => Ok(key_digest(v.trim().as_bytes())),
            Err(e) => Err(format!("cannot read {item}: {e}")),
        },
        KeySource::Sha256 => match hex::decode(item.trim()) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut d = [0u8; 32];
                d.copy_from_slice(&bytes);
                Ok(d)
            }
            _ => Err("must be 64 hex digits (SHA-256 of the key)".to_string()),
        },
    }
}

/// Reads `allow`: `None` when absent (every endpoint). Entries are parsed
/// one by one (each problem named by its index) and checked against
/// `catalog`.
fn read_allow(
    s: &mut Section<'_>,
    catalog: Option<&Catalog>,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<Vec<AllowRule>> {
    let entries = s.strings("allow", p)?;
    if entries.is_empty() {
        p.push(
            s.key("allow"),
            "is empty, which would allow nothing: list the endpoints, or leave `allow` out to allow every endpoint",
        );
        return None;
    }
    let mut rules = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let key = format!("{}[{i}]", s.key("allow"));
        let rule = match AllowRule::parse(entry) {
            Ok(rule) => rule,
            Err(e) => {
                p.push(key, e);
                continue;
            }
        };
        match catalog.map(|c| rule.catalog_matches(c)) {
            Some(0) if rule.is_prefix() => warnings.push(format!(
                "{key}: {entry:?} reaches no catalog route: it allows only paths outside the catalog"
            )),
            Some(0) => p.push(
                key,
                format!(
                    "{entry:?} names no catalog route: give the catalog's method and template (\":name\" for a parameter), a prefix ending in \"/*\", or add the endpoint with [[routes]]"
                ),
            ),
            _ => {}
        }
        rules.push(rule);
    }
    Some(rules)
}
