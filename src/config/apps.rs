//! `[[apps]]` (the Feishu apps the gateway holds secrets for) and
//! `[[clients]]` (the internal services allowed to call), read together:
//! each client names its app, and only clients of store apps name a tenant.

use std::collections::HashMap;
use std::time::Duration;

use super::reader::{Problems, Section};
use super::{secret_source, Environment};
use crate::auth::{key_digest, ClientConfig};
use crate::tokens::{AppConfig, AppKind, StoreAppSettings};
use crate::upstream::Upstream;

/// Reads `[[apps]]` and `[[clients]]`; both need at least one entry. Apps
/// without an `upstream` of their own use `global`.
pub(super) fn read(
    root: &mut Section<'_>,
    global: &Upstream,
    env: &dyn Environment,
    p: &mut Problems,
) -> (Vec<AppConfig>, Vec<ClientConfig>) {
    let (apps, app_names) = read_apps(root, global, env, p);
    let clients = read_clients(root, &app_names, env, p);
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
    (apps, clients)
}

/// Reads `[[apps]]`. Returns the complete entries and every entry's name
/// (by file index, for resolving `clients[].app`). When an entry is
/// incomplete a problem is recorded, so the two lists only need to align
/// when there are no problems.
fn read_apps(
    root: &mut Section<'_>,
    global: &Upstream,
    env: &dyn Environment,
    p: &mut Problems,
) -> (Vec<AppConfig>, Vec<Option<String>>) {
    let sections = root.tables("apps", p);
    if sections.is_empty() {
        p.push("apps", "at least one [[apps]] entry is required");
    }
    let mut apps = Vec::new();
    let mut all_names = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, mut s) in sections.into_iter().enumerate() {
        let name = s.required_string("name", p);
        let app_id = s.required_string("app_id", p);
        let app_secret = secret_source(&mut s, "app_secret_env", "app_secret_file", &[], env, p);
        let upstream = match s.value("upstream") {
            Some(_) => super::server::upstream(&mut s, "upstream", p),
            None => Some(global.clone()),
        };
        let kind = read_app_kind(&mut s, env, p);
        if let Some(n) = name {
            check_label(&s, n, p);
            if let Some(j) = names.insert(n.to_string(), i) {
                p.push(s.key("name"), format!("{n:?} is already used by apps[{j}]"));
            }
        }
        if let Some(id) = app_id {
            if id.trim().is_empty() {
                p.push(s.key("app_id"), "must not be empty");
            } else if let Some(j) = ids.insert(id.to_string(), i) {
                p.push(
                    s.key("app_id"),
                    format!("{id:?} is already used by apps[{j}]"),
                );
            }
        }
        s.finish(p);
        all_names.push(name.map(str::to_string));
        if let (Some(name), Some(app_id), Some(app_secret), Some(upstream), Some(kind)) =
            (name, app_id, app_secret, upstream, kind)
        {
            apps.push(AppConfig {
                name: name.to_string(),
                app_id: app_id.to_string(),
                app_secret,
                upstream,
                kind,
            });
        }
    }
    (apps, all_names)
}

/// Reads `type` and the store-app keys of an `[[apps]]` entry.
fn read_app_kind(s: &mut Section<'_>, env: &dyn Environment, p: &mut Problems) -> Option<AppKind> {
    const STORE_KEYS: [&str; 8] = [
        "encrypt_key_env",
        "encrypt_key_file",
        "verification_token_env",
        "verification_token_file",
        "max_tenants",
        "tenant_idle_timeout",
        "require_signature",
        "type",
    ];
    match s.string("type", p).unwrap_or("self_built") {
        "self_built" => {
            for k in &STORE_KEYS[..7] {
                if s.value(k).is_some() {
                    p.push(s.key(k), "only store apps (type = \"store\") take this key");
                }
            }
            Some(AppKind::SelfBuilt)
        }
        "store" => {
            let encrypt_key =
                if s.value("encrypt_key_env").is_some() || s.value("encrypt_key_file").is_some() {
                    Some(secret_source(
                        s,
                        "encrypt_key_env",
                        "encrypt_key_file",
                        &[],
                        env,
                        p,
                    )?)
                } else {
                    None
                };
            let verification_token = secret_source(
                s,
                "verification_token_env",
                "verification_token_file",
                &[],
                env,
                p,
            );
            let max_tenants = s.integer("max_tenants", 1_000_000, p).unwrap_or(1000) as usize;
            if max_tenants == 0 {
                p.push(s.key("max_tenants"), "must be at least 1");
            }
            let tenant_idle_timeout = s
                .duration("tenant_idle_timeout", p)
                .unwrap_or(Duration::from_secs(3600));
            let require_signature = s.boolean("require_signature", p).unwrap_or(false);
            Some(AppKind::Store(StoreAppSettings {
                encrypt_key,
                verification_token: verification_token?,
                max_tenants,
                tenant_idle_timeout,
                require_signature,
            }))
        }
        other => {
            p.push(
                s.key("type"),
                format!("{other:?} is not \"self_built\" or \"store\""),
            );
            None
        }
    }
}

/// Reports a `name` that would make a poor metric label.
fn check_label(s: &Section<'_>, name: &str, p: &mut Problems) {
    if !valid_label(name) {
        p.push(
            s.key("name"),
            format!("{name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"),
        );
    }
}

fn read_clients(
    root: &mut Section<'_>,
    app_names: &[Option<String>],
    env: &dyn Environment,
    p: &mut Problems,
) -> Vec<ClientConfig> {
    let sections = root.tables("clients", p);
    if sections.is_empty() {
        p.push("clients", "at least one [[clients]] entry is required");
    }
    let mut clients = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut keys: HashMap<[u8; 32], usize> = HashMap::new();
    for (i, mut s) in sections.into_iter().enumerate() {
        let name = s.required_string("name", p);
        let app_name = s.required_string("app", p);
        let tenant = s.string("tenant", p).map(str::to_string);
        if tenant.as_deref().is_some_and(|t| t.trim().is_empty()) {
            p.push(s.key("tenant"), "must not be empty");
        }
        let digest = if s.value("key_sha256").is_some() {
            let given = s.string("key_sha256", p);
            let mut other = false;
            for k in ["key_env", "key_file"] {
                if s.value(k).is_some() {
                    p.push(
                        s.key(k),
                        "give only one of `key_env`, `key_file`, `key_sha256`",
                    );
                    other = true;
                }
            }
            match given.map(|h| hex::decode(h.trim())) {
                Some(Ok(bytes)) if bytes.len() == 32 && !other => {
                    let mut d = [0u8; 32];
                    d.copy_from_slice(&bytes);
                    Some(d)
                }
                Some(_) if !other => {
                    p.push(
                        s.key("key_sha256"),
                        "must be 64 hex digits (SHA-256 of the key)",
                    );
                    None
                }
                _ => None,
            }
        } else {
            secret_source(&mut s, "key_env", "key_file", &["key_sha256"], env, p).and_then(|key| {
                if key.expose().len() < 16 {
                    p.push(
                        s.key("key_env"),
                        "the key is shorter than 16 characters: use a long random key",
                    );
                    None
                } else {
                    Some(key_digest(key.expose().as_bytes()))
                }
            })
        };
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
        if let Some(d) = digest {
            if let Some(j) = keys.insert(d, i) {
                p.push(
                    s.key("key_env"),
                    format!("the same key is already used by clients[{j}]"),
                );
            }
        }
        s.finish(p);
        if let (Some(name), Some(app), Some(key_sha256)) = (name, app, digest) {
            clients.push(ClientConfig {
                name: name.to_string(),
                app,
                key_sha256,
                tenant,
            });
        }
    }
    clients
}

/// Names used as metric labels: short and tame.
fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
