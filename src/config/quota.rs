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
        redis_url: None,
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
    let inline = s.string("redis_url", p);
    let given = [
        inline.is_some(),
        s.value("redis_url_env").is_some(),
        s.value("redis_url_file").is_some(),
    ];
    q.redis_url = match given.iter().filter(|g| **g).count() {
        0 => {
            p.push(
                s.key("redis_url_env"),
                "is required with backend = \"redis\": set one of `redis_url_env`, `redis_url_file`, `redis_url`",
            );
            None
        }
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
    };
    if let Some(url) = &q.redis_url {
        // The message never repeats the URL: it may carry a password.
        let url = url.expose();
        let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|prefix| url.starts_with(prefix));
        if !scheme_ok || redis::IntoConnectionInfo::into_connection_info(url).is_err() {
            p.push(
                "quota.redis_url",
                "is not a URL like redis://host:6379/0 or rediss://:password@host:6380/0",
            );
        }
    }
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
