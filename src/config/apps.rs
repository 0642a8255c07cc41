//! `[[apps]]`: the Feishu apps the gateway holds secrets for (at least
//! one); apps without an `upstream` of their own use the global one. The
//! apps' `monthly_budget` and `budget_group` make the budget groups
//! ([`BudgetConfig`]); their `events`, callback keys and
//! `require_signature` make their [`AppEvents`]. `[[clients]]` are read
//! by `clients.rs`, with the names this reader returns.

use std::collections::HashMap;
use std::time::Duration;

use super::reader::{Problems, Section};
use super::{secret_source, Environment};
use crate::budget::{BudgetConfig, BudgetGroup};
use crate::events::{AppEvents, Transport};
use crate::store_apps::callback::CallbackKeys;
use crate::tokens::{AppConfig, AppKind, StoreAppSettings};
use crate::upstream::Upstream;

/// Largest `monthly_budget`: far above any plan, and exact in a
/// Prometheus gauge (a float).
const MAX_MONTHLY_BUDGET: u64 = 1 << 50;

/// What `[[apps]]` makes: the complete entries, every entry's name by
/// file index (what `clients[].app` resolves against), the budget groups,
/// and the complete entries' event settings (aligned with `apps`).
pub(super) struct Apps {
    pub(super) apps: Vec<AppConfig>,
    pub(super) names: Vec<Option<String>>,
    pub(super) budget: BudgetConfig,
    pub(super) events: Vec<AppEvents>,
    /// The file index of each complete entry (for problems' keys).
    pub(super) file_index: Vec<usize>,
}

/// Reads `[[apps]]` (at least one entry; apps without an `upstream` of
/// their own use `global`).
pub(super) fn read(
    root: &mut Section<'_>,
    global: &Upstream,
    env: &dyn Environment,
    p: &mut Problems,
) -> Apps {
    let (apps, names, budget_keys, events, file_index) = read_apps(root, global, env, p);
    let budget = budget_groups(&budget_keys, &names, p);
    Apps {
        apps,
        names,
        budget,
        events,
        file_index,
    }
}

/// The budget keys of one complete self-built `[[apps]]` entry.
struct BudgetKeys {
    /// Index in the file (`apps[i]`).
    file_index: usize,
    /// Index among the complete apps (`Config::apps`).
    app: usize,
    name: String,
    /// `monthly_budget`, with its dotted key.
    limit: Option<u64>,
    limit_key: String,
    /// `budget_group`, with its dotted key.
    group: Option<String>,
    group_key: String,
}

/// One budget group per `budget_group` name (its apps must all give the
/// same `monthly_budget`), and one per other self-built app, named after
/// it. A group's name may not be the name of an app outside it: the
/// group's Redis key and `state_dir` file are named after it.
fn budget_groups(
    keys: &[BudgetKeys],
    app_names: &[Option<String>],
    p: &mut Problems,
) -> BudgetConfig {
    let mut groups: Vec<BudgetGroup> = Vec::new();
    // `budget_group` name -> (index in `groups`, the entry that gave its
    // limit first).
    let mut named: HashMap<&str, (usize, Option<usize>)> = HashMap::new();
    for k in keys {
        let Some(name) = k.group.as_deref() else {
            groups.push(BudgetGroup {
                name: k.name.clone(),
                limit: k.limit,
                apps: vec![k.app],
            });
            continue;
        };
        if k.limit.is_none() {
            p.push(
                k.limit_key.clone(),
                format!("is required with budget_group: the apps of budget group {name:?} share one monthly_budget"),
            );
        }
        let Some((g, first)) = named.get_mut(name) else {
            named.insert(name, (groups.len(), k.limit.map(|_| k.file_index)));
            groups.push(BudgetGroup {
                name: name.to_string(),
                limit: k.limit,
                apps: vec![k.app],
            });
            continue;
        };
        let group = &mut groups[*g];
        group.apps.push(k.app);
        match (group.limit, k.limit, *first) {
            (Some(had), Some(given), Some(j)) if had != given => p.push(
                k.limit_key.clone(),
                format!("{given} differs from the {had} of apps[{j}] in budget group {name:?}: the apps of a group share one monthly_budget"),
            ),
            (None, Some(given), _) => {
                group.limit = Some(given);
                *first = Some(k.file_index);
            }
            _ => {}
        }
    }
    // A group named like an app outside it would share that app's key.
    for k in keys {
        let Some(name) = k.group.as_deref() else {
            continue;
        };
        let clash = app_names.iter().position(|n| n.as_deref() == Some(name));
        if let Some(j) = clash {
            let inside = keys
                .iter()
                .any(|o| o.file_index == j && o.group.as_deref() == Some(name));
            if !inside {
                p.push(
                    k.group_key.clone(),
                    format!("{name:?} is the name of apps[{j}], which is not in this budget group"),
                );
            }
        }
    }
    BudgetConfig { groups }
}

/// The lists [`read_apps`] makes.
type AppLists = (
    Vec<AppConfig>,
    Vec<Option<String>>,
    Vec<BudgetKeys>,
    Vec<AppEvents>,
    Vec<usize>,
);

/// Reads `[[apps]]`. Returns the complete entries, every entry's name
/// (by file index, for resolving `clients[].app`), the budget keys of
/// the complete self-built ones, the complete entries' event settings and
/// file indexes. When an entry is incomplete a problem is recorded, so the
/// lists only need to align when there are no problems.
fn read_apps(
    root: &mut Section<'_>,
    global: &Upstream,
    env: &dyn Environment,
    p: &mut Problems,
) -> AppLists {
    let sections = root.tables("apps", p);
    if sections.is_empty() {
        p.push("apps", "at least one [[apps]] entry is required");
    }
    let mut apps = Vec::new();
    let mut all_names = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut budget_keys = Vec::new();
    let mut events = Vec::new();
    let mut file_index = Vec::new();
    for (i, mut s) in sections.into_iter().enumerate() {
        let name = s.required_string("name", p);
        let app_id = s.required_string("app_id", p);
        let app_secret = secret_source(&mut s, "app_secret_env", "app_secret_file", &[], env, p);
        let upstream = match s.value("upstream") {
            Some(_) => super::server::upstream(&mut s, "upstream", p),
            None => Some(global.clone()),
        };
        let callback = read_callback(&mut s, env, p);
        let kind = read_app_kind(&mut s, callback.as_ref(), p);
        let transport = read_transport(&mut s, kind.as_ref(), p);
        let (limit, group) = read_budget_keys(&mut s, kind.as_ref(), p);
        let (limit_key, group_key) = (s.key("monthly_budget"), s.key("budget_group"));
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
            if matches!(kind, AppKind::SelfBuilt) {
                budget_keys.push(BudgetKeys {
                    file_index: i,
                    app: apps.len(),
                    name: name.to_string(),
                    limit,
                    limit_key,
                    group: group.map(str::to_string),
                    group_key,
                });
            }
            let (keys, require_signature) = match callback {
                Some(c) => (c.keys, c.require_signature),
                None => (None, false),
            };
            events.push(AppEvents {
                name: name.to_string(),
                transport,
                callback: keys,
                require_signature,
            });
            file_index.push(i);
            apps.push(AppConfig {
                name: name.to_string(),
                app_id: app_id.to_string(),
                app_secret,
                upstream,
                kind,
            });
        }
    }
    (apps, all_names, budget_keys, events, file_index)
}

/// An entry's webhook keys and `require_signature`, as read.
struct Callback {
    /// `None` without a verification token.
    keys: Option<CallbackKeys>,
    require_signature: bool,
    /// An Encrypt Key was given without a verification token, or a key's
    /// source failed (a problem is recorded).
    broken: bool,
}

/// Reads `encrypt_key_env`/`_file`, `verification_token_env`/`_file` and
/// `require_signature` (apps of both kinds: the webhook intake verifies
/// pushes with them). `None` when none of them is given.
fn read_callback(s: &mut Section<'_>, env: &dyn Environment, p: &mut Problems) -> Option<Callback> {
    let mut given = |env_key: &'static str, file_key: &'static str| {
        let by_env = s.value(env_key).is_some();
        s.value(file_key).is_some() || by_env
    };
    let has_key = given("encrypt_key_env", "encrypt_key_file");
    let has_token = given("verification_token_env", "verification_token_file");
    let require_signature = s.boolean("require_signature", p);
    if !has_key && !has_token && require_signature.is_none() {
        return None;
    }
    // `Some(None)`: no key; `None`: a key whose source failed.
    let encrypt_key = if has_key {
        secret_source(s, "encrypt_key_env", "encrypt_key_file", &[], env, p).map(Some)
    } else {
        Some(None)
    };
    let token = if has_token || has_key {
        secret_source(
            s,
            "verification_token_env",
            "verification_token_file",
            &[],
            env,
            p,
        )
    } else {
        None
    };
    let broken = (has_key || has_token) && (encrypt_key.is_none() || token.is_none());
    let keys = match (encrypt_key, token) {
        (Some(encrypt_key), Some(verification_token)) => Some(CallbackKeys {
            encrypt_key,
            verification_token,
        }),
        _ => None,
    };
    Some(Callback {
        keys,
        require_signature: require_signature.unwrap_or(false),
        broken,
    })
}

/// Reads `events`: how Feishu sends the app's events (`"webhook"`, the
/// default, or `"long_connection"`, self-built apps only).
fn read_transport(s: &mut Section<'_>, kind: Option<&AppKind>, p: &mut Problems) -> Transport {
    match s.string("events", p) {
        None | Some("webhook") => Transport::Webhook,
        Some("long_connection") => {
            if matches!(kind, Some(AppKind::Store(_))) {
                p.push(
                    s.key("events"),
                    "\"long_connection\" is for self-built apps only: Feishu sends a store app's events by webhook",
                );
            }
            Transport::LongConnection
        }
        Some(other) => {
            p.push(
                s.key("events"),
                format!("{other:?} is not \"webhook\" or \"long_connection\""),
            );
            Transport::Webhook
        }
    }
}

/// Reads `monthly_budget` and `budget_group`: self-built apps only (Feishu
/// counts the calls of custom apps).
fn read_budget_keys<'a>(
    s: &mut Section<'a>,
    kind: Option<&AppKind>,
    p: &mut Problems,
) -> (Option<u64>, Option<&'a str>) {
    let limit = s.integer("monthly_budget", MAX_MONTHLY_BUDGET, p);
    if limit == Some(0) {
        p.push(
            s.key("monthly_budget"),
            "must be at least 1 (leave it out for no limit)",
        );
    }
    let group = s.string("budget_group", p);
    if let Some(g) = group {
        if !valid_label(g) {
            p.push(
                s.key("budget_group"),
                format!("{g:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"),
            );
        }
    }
    if matches!(kind, Some(AppKind::Store(_))) {
        for k in ["monthly_budget", "budget_group"] {
            if s.value(k).is_some() {
                p.push(
                    s.key(k),
                    "only self-built apps have a monthly call budget (Feishu counts the calls of custom apps)",
                );
            }
        }
    }
    (limit.filter(|&l| l > 0), group.filter(|g| valid_label(g)))
}

/// Reads `type` and the store-app keys of an `[[apps]]` entry; a store
/// app needs its verification token (`callback`).
fn read_app_kind(
    s: &mut Section<'_>,
    callback: Option<&Callback>,
    p: &mut Problems,
) -> Option<AppKind> {
    const STORE_KEYS: [&str; 2] = ["max_tenants", "tenant_idle_timeout"];
    match s.string("type", p).unwrap_or("self_built") {
        "self_built" => {
            for k in STORE_KEYS {
                if s.value(k).is_some() {
                    p.push(s.key(k), "only store apps (type = \"store\") take this key");
                }
            }
            if callback.is_some_and(|c| c.broken) {
                return None;
            }
            Some(AppKind::SelfBuilt)
        }
        "store" => {
            let max_tenants = s.integer("max_tenants", 1_000_000, p).unwrap_or(1000) as usize;
            if max_tenants == 0 {
                p.push(s.key("max_tenants"), "must be at least 1");
            }
            let tenant_idle_timeout = s
                .duration("tenant_idle_timeout", p)
                .unwrap_or(Duration::from_secs(3600));
            let keys = match callback {
                Some(Callback {
                    keys: Some(keys), ..
                }) => keys.clone(),
                Some(Callback { broken: true, .. }) => return None,
                _ => {
                    p.push(
                        s.key("verification_token_env"),
                        "is required: set one of `verification_token_env`, `verification_token_file`",
                    );
                    return None;
                }
            };
            Some(AppKind::Store(StoreAppSettings {
                encrypt_key: keys.encrypt_key,
                verification_token: keys.verification_token,
                max_tenants,
                tenant_idle_timeout,
                require_signature: callback.is_some_and(|c| c.require_signature),
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
