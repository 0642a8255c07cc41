//! `[[apps]]`: the Feishu apps the gateway holds secrets for (at least
//! one); apps without an `upstream` of their own use the global one.

use std::collections::HashMap;
use std::time::Duration;

use super::reader::{Problems, Section};
use super::{secret_source, Environment};
use crate::tokens::{AppConfig, AppKind, StoreAppSettings};
use crate::upstream::Upstream;

/// Reads `[[apps]]`. Returns the complete entries and every entry's name
/// (by file index, for resolving `clients[].app`). When an entry is
/// incomplete a problem is recorded, so the two lists only need to align
/// when there are no problems.
pub(super) fn read(
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
pub(super) fn check_label(s: &Section<'_>, name: &str, p: &mut Problems) {
    if !valid_label(name) {
        p.push(
            s.key("name"),
            format!("{name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"),
        );
    }
}

/// Names used as metric labels: short and tame.
fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
