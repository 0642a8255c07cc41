//! `[quota]`: margins, overflow, and the shared Redis backend.
//!
//! The margins are checked with the quota module's own planner
//! ([`crate::quota::Plan`]): a `margin` or `min_rate_fraction` that leaves
//! no plan even for a 50/s limit is refused here, not when the gateway
//! starts.

use std::time::Duration;

use super::reader::{Problems, Section};
use super::{secret_source, Environment};
use crate::quota::{OverflowMode, QuotaConfig};
use crate::redis_connection::{ClusterTarget, NodeAuth, RedisTarget, SentinelTarget};
use crate::secret::Secret;

/// Reads `[quota]`. Absent, quotas are local with the defaults.
pub(super) fn read(root: &mut Section<'_>, env: &dyn Environment, p: &mut Problems) -> QuotaConfig {
    use crate::quota::{BackendKind, FailMode};
    let defaults = crate::quota::PlanPolicy::default();
    let mut q = QuotaConfig {
        margin: defaults.margin,
        min_rate_fraction: defaults.min_rate_fraction,
        overflow: OverflowMode::Reject,
        max_wait: Duration::from_secs(5),
        max_waiters: 256,
        backend: BackendKind::Local,
        redis: None,
        redis_ca_file: None,
        key_prefix: "feishu-gateway:".to_string(),
        fail: FailMode::Local,
        replicas: 1,
        redis_timeout: Duration::from_millis(50),
    };
    let Some(mut s) = root.table("quota", p) else {
        return q;
    };
    if let Some(m) = s.duration("margin", p) {
        q.margin = m;
    }
    match s.value("min_rate_fraction") {
        Some(toml::Value::Float(f)) if *f > 0.0 && *f <= 1.0 => q.min_rate_fraction = *f,
        Some(toml::Value::Integer(1)) => q.min_rate_fraction = 1.0,
        Some(_) => p.push(
            s.key("min_rate_fraction"),
            "must be a number greater than 0 and at most 1, like 0.965",
        ),
        None => {}
    }
    if let Some(o) = overflow(&mut s, p) {
        q.overflow = o;
    }
    if let Some(w) = s.duration("max_wait", p) {
        q.max_wait = w;
    }
    if let Some(n) = s.integer("max_waiters", 1_000_000, p) {
        q.max_waiters = n as u32;
    }
    match s.string("backend", p) {
        None | Some("local") => {}
        Some("redis") => q.backend = BackendKind::Redis,
        Some(other) => p.push(
            s.key("backend"),
            format!("{other:?} is not \"local\" or \"redis\""),
        ),
    }
    if q.backend == BackendKind::Redis {
        read_redis(&mut s, &mut q, env, p);
    } else {
        for k in [
            "redis_url",
            "redis_url_env",
            "redis_url_file",
            "redis_sentinels",
            "redis_sentinel_master",
            "redis_sentinel_username",
            "redis_sentinel_password_env",
            "redis_sentinel_password_file",
            "redis_db",
            "redis_cluster_nodes",
            "redis_tls",
            "redis_username",
            "redis_password",
            "redis_password_env",
            "redis_password_file",
            "redis_ca_file",
            "key_prefix",
            "fail",
            "replicas",
            "redis_timeout",
        ] {
            if s.value(k).is_some() {
                p.push(s.key(k), "only applies with backend = \"redis\"");
            }
        }
    }
    s.finish(p);
    let policy = crate::quota::PlanPolicy {
        margin: q.margin,
        min_rate_fraction: q.min_rate_fraction,
    };
    let probe = crate::quota::Window::new(50, Duration::from_secs(1)).expect("valid window");
    if let Err(e) = crate::quota::Plan::new(&[probe], &policy) {
        p.push("quota.margin", e.to_string());
    }
    q
}

/// The Redis keys of `[quota]`, with `backend = "redis"`.
fn read_redis(s: &mut Section<'_>, q: &mut QuotaConfig, env: &dyn Environment, p: &mut Problems) {
    use crate::quota::FailMode;
    q.redis = redis_target(s, env, p);
    q.redis_ca_file = s.string("redis_ca_file", p).map(std::path::PathBuf::from);
    if let Some(path) = &q.redis_ca_file {
        match env.read_file(path) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => {}
            Ok(_) => p.push(s.key("redis_ca_file"), "holds no PEM certificate"),
            Err(e) => p.push(
                s.key("redis_ca_file"),
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }
    if let Some(prefix) = s.string("key_prefix", p) {
        if prefix.len() > 128
            || prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            p.push(
                s.key("key_prefix"),
                "must be at most 128 characters without spaces or braces",
            );
        }
        q.key_prefix = prefix.to_string();
    }
    match s.string("fail", p) {
        None | Some("local") => {}
        Some("closed") => q.fail = FailMode::Closed,
        Some("open") => q.fail = FailMode::Open,
        Some(other) => p.push(
            s.key("fail"),
            format!("{other:?} is not \"local\", \"closed\" or \"open\""),
        ),
    }
    match s.integer("replicas", 1000, p) {
        Some(0) => p.push(s.key("replicas"), "must be at least 1"),
        Some(n) => q.replicas = n as u32,
        None if q.fail == FailMode::Local => p.push(
            s.key("replicas"),
            "is required with backend = \"redis\" and fail = \"local\": the most gateway replicas that run at once (each falls back to 1/replicas of every limit)",
        ),
        None => {}
    }
    if let Some(t) = s.duration("redis_timeout", p) {
        q.redis_timeout = t;
    }
    if q.redis_timeout.is_zero() || q.redis_timeout > q.margin / 2 {
        p.push(
            s.key("redis_timeout"),
            format!(
                "must be more than 0 and at most half of quota.margin ({:?}): Redis's answer travels before the request does, so it counts against the margin",
                q.margin / 2
            ),
        );
    }
}

/// Where Redis is: exactly one of a URL (`redis_url*`), a Sentinel setup
/// (`redis_sentinels` + `redis_sentinel_master`) or a Cluster
/// (`redis_cluster_nodes`). No message repeats a URL or a password.
fn redis_target(
    s: &mut Section<'_>,
    env: &dyn Environment,
    p: &mut Problems,
) -> Option<RedisTarget> {
    let url_keys = ["redis_url", "redis_url_env", "redis_url_file"];
    let forms = [
        url_keys.iter().any(|k| s.value(k).is_some()),
        s.value("redis_sentinels").is_some(),
        s.value("redis_cluster_nodes").is_some(),
    ];
    let node_keys = [
        "redis_tls",
        "redis_username",
        "redis_password",
        "redis_password_env",
        "redis_password_file",
    ];
    let sentinel_keys = [
        "redis_sentinel_master",
        "redis_db",
        "redis_sentinel_username",
        "redis_sentinel_password_env",
        "redis_sentinel_password_file",
    ];
    match forms {
        [false, false, false] => {
            p.push(
                s.key("redis_url_env"),
                "is required with backend = \"redis\": set one of `redis_url_env`, `redis_url_file`, `redis_url` (one server), `redis_sentinels` (Sentinel) or `redis_cluster_nodes` (Cluster)",
            );
            None
        }
        [true, false, false] => {
            misplaced(s, p, &node_keys, "only applies with `redis_sentinels` or `redis_cluster_nodes` (a URL carries its own)");
            misplaced(s, p, &sentinel_keys, "only applies with `redis_sentinels`");
            redis_url(s, env, p).map(RedisTarget::Url)
        }
        [false, true, false] => {
            let sentinels = redis_nodes(s, "redis_sentinels", p);
            let master = match s.string("redis_sentinel_master", p) {
                Some(m) if !m.trim().is_empty() => Some(m.trim().to_string()),
                Some(_) => {
                    p.push(s.key("redis_sentinel_master"), "must not be empty");
                    None
                }
                None => {
                    p.push(
                        s.key("redis_sentinel_master"),
                        "is required with `redis_sentinels`: the name the sentinels monitor the primary under",
                    );
                    None
                }
            };
            let db = s.integer("redis_db", 1_000_000, p).unwrap_or(0) as i64;
            let (tls, auth) = node_auth(s, env, p);
            let sentinel_auth = NodeAuth {
                username: s.string("redis_sentinel_username", p).map(str::to_string),
                password: optional_secret(
                    s,
                    "redis_sentinel_password_env",
                    "redis_sentinel_password_file",
                    env,
                    p,
                ),
            };
            Some(RedisTarget::Sentinel(SentinelTarget {
                sentinels: sentinels?,
                master: master?,
                db,
                tls,
                auth,
                sentinel_auth,
            }))
        }
        [false, false, true] => {
            misplaced(s, p, &sentinel_keys, "only applies with `redis_sentinels`");
            let nodes = redis_nodes(s, "redis_cluster_nodes", p);
            let (tls, auth) = node_auth(s, env, p);
            Some(RedisTarget::Cluster(ClusterTarget {
                nodes: nodes?,
                tls,
                auth,
            }))
        }
        _ => {
            p.push(
                "quota.redis_url",
                "give only one of a URL (`redis_url*`), `redis_sentinels` and `redis_cluster_nodes`",
            );
            None
        }
    }
}

/// A problem for each of `keys` that is set but means nothing here.
fn misplaced<'a>(s: &mut Section<'a>, p: &mut Problems, keys: &[&'a str], why: &str) {
    for k in keys {
        if s.value(k).is_some() {
            p.push(s.key(k), why.to_string());
        }
    }
}

/// `redis_url`, `redis_url_env` or `redis_url_file`, checked as a URL.
fn redis_url(s: &mut Section<'_>, env: &dyn Environment, p: &mut Problems) -> Option<Secret> {
    let inline = s.string("redis_url", p);
    let given = [
        inline.is_some(),
        s.value("redis_url_env").is_some(),
        s.value("redis_url_file").is_some(),
    ];
    let url = match given.iter().filter(|g| **g).count() {
        1 => match inline {
            Some(url) => Some(Secret::new(url.trim())),
            None => secret_source(s, "redis_url_env", "redis_url_file", &["redis_url"], env, p),
        },
        _ => {
            p.push(
                s.key("redis_url"),
                "give only one of `redis_url`, `redis_url_env`, `redis_url_file`",
            );
            None
        }
    }?;
    // The message never repeats the URL: it may carry a password.
    let shown = url.expose();
    let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|prefix| shown.starts_with(prefix));
    if !scheme_ok || redis::IntoConnectionInfo::into_connection_info(shown).is_err() {
        p.push(
            "quota.redis_url",
            "is not a URL like redis://host:6379/0 or rediss://:password@host:6380/0",
        );
        return None;
    }
    Some(url)
}

/// A non-empty list of `host:port` (`redis_sentinels`, `redis_cluster_nodes`).
fn redis_nodes(s: &mut Section<'_>, name: &'static str, p: &mut Problems) -> Option<Vec<String>> {
    let list = s.strings(name, p)?;
    if list.is_empty() {
        p.push(s.key(name), "must name at least one host:port");
        return None;
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, addr) in list.iter().enumerate() {
        let ok = addr.rsplit_once(':').is_some_and(|(h, port)| {
            !h.is_empty()
                && !h.contains('/')
                && !h.contains('@')
                && port.parse::<u16>().is_ok_and(|n| n > 0)
        });
        if ok {
            out.push(addr.to_string());
        } else {
            p.push(
                format!("{}[{i}]", s.key(name)),
                // Not quoted: a URL written here may carry a password.
                "is not host:port (credentials go in redis_password_env, TLS in redis_tls)",
            );
        }
    }
    (out.len() == list.len()).then_some(out)
}

/// `redis_tls` and the data nodes' credentials, for Sentinel and Cluster.
fn node_auth(s: &mut Section<'_>, env: &dyn Environment, p: &mut Problems) -> (bool, NodeAuth) {
    let tls = s.boolean("redis_tls", p).unwrap_or(false);
    let username = s.string("redis_username", p).map(str::to_string);
    let inline = s.string("redis_password", p);
    let elsewhere =
        s.value("redis_password_env").is_some() || s.value("redis_password_file").is_some();
    let password = match (inline, elsewhere) {
        (Some(_), true) => {
            p.push(
                s.key("redis_password"),
                "give only one of `redis_password`, `redis_password_env`, `redis_password_file`",
            );
            None
        }
        (Some(pw), false) => Some(Secret::new(pw)),
        (None, _) => optional_secret(s, "redis_password_env", "redis_password_file", env, p),
    };
    (tls, NodeAuth { username, password })
}

/// A secret that may be absent: from `env_key` or `file_key`, or none.
fn optional_secret<'a>(
    s: &mut Section<'a>,
    env_key: &'a str,
    file_key: &'a str,
    env: &dyn Environment,
    p: &mut Problems,
) -> Option<Secret> {
    if s.value(env_key).is_none() && s.value(file_key).is_none() {
        return None;
    }
    secret_source(s, env_key, file_key, &[], env, p)
}

/// `overflow`, in `[quota]` and in a `[[routes]]` entry.
pub(super) fn overflow(s: &mut Section<'_>, p: &mut Problems) -> Option<OverflowMode> {
    match s.string("overflow", p)? {
        "reject" => Some(OverflowMode::Reject),
        "wait" => Some(OverflowMode::Wait),
        other => {
            p.push(
                s.key("overflow"),
                format!("{other:?} is not \"reject\" or \"wait\""),
            );
            None
        }
    }
}
