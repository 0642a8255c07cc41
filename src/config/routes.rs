//! `[[routes]]`: catalog overrides and additions.
//!
//! Each entry is checked with the parsers the running gateway uses: the path
//! with [`crate::endpoints::Route::new`], the limits with
//! [`crate::quota::Window`] and [`crate::quota::Plan::new`] under the
//! `[quota]` margins.

use super::reader::{Problems, Section};
use crate::endpoints::{KeySource, ResourceRule, RouteConfig};
use crate::quota::QuotaConfig;
use crate::validate::ValidationMode;

/// Reads `[[routes]]`; `quota` gives the margins each entry's limits must
/// leave room for.
pub(super) fn read(
    root: &mut Section<'_>,
    quota: &QuotaConfig,
    p: &mut Problems,
) -> Vec<RouteConfig> {
    let policy = crate::quota::PlanPolicy {
        margin: quota.margin,
        min_rate_fraction: quota.min_rate_fraction,
    };
    let mut out: Vec<RouteConfig> = Vec::new();
    for mut s in root.tables("routes", p) {
        let method = s.required_string("method", p).and_then(|m| {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    p.push(s.key("method"), format!("{m:?} is not an HTTP method"));
                    None
                }
            }
        });
        let path =
            s.required_string("path", p).and_then(|path| {
                match crate::endpoints::Route::new("config", http::Method::GET, path) {
                    Ok(_) => Some(path.to_string()),
                    Err(e) => {
                        p.push(s.key("path"), e);
                        None
                    }
                }
            });
        let limits = s.strings("limits", p).map(|list| {
            let mut windows = Vec::new();
            for (i, w) in list.iter().enumerate() {
                match w.parse::<crate::quota::Window>() {
                    Ok(w) => windows.push(w),
                    Err(e) => p.push(format!("{}[{i}]", s.key("limits")), e.to_string()),
                }
            }
            if !windows.is_empty() {
                if let Err(e) = crate::quota::Plan::new(&windows, &policy) {
                    p.push(s.key("limits"), e.to_string());
                }
            }
            windows
        });
        let overflow = super::quota::overflow(&mut s, p);
        let max_wait = s.duration("max_wait", p);
        let validation = match s.string("validation", p) {
            None => None,
            Some("enforce") => Some(ValidationMode::Enforce),
            Some("log-only") => Some(ValidationMode::LogOnly),
            Some(other) => {
                p.push(
                    s.key("validation"),
                    format!("{other:?} is not \"enforce\" or \"log-only\""),
                );
                None
            }
        };
        let unknown_fields = match s.string("unknown_fields", p) {
            None => None,
            Some("allow") => Some(crate::validate::UnknownFields::Allow),
            Some("reject") => Some(crate::validate::UnknownFields::Reject),
            Some(other) => {
                p.push(
                    s.key("unknown_fields"),
                    format!("{other:?} is not \"allow\" or \"reject\""),
                );
                None
            }
        };
        let max_body_bytes = s.integer("max_body_bytes", 1 << 30, p).map(|v| v as usize);
        let resource_limits = s
            .tables("resource_limits", p)
            .into_iter()
            .filter_map(|r| resource_rule(r, &policy, p))
            .collect();
        if let (Some(m), Some(path)) = (&method, &path) {
            if out.iter().any(|r| r.method == *m && r.path == *path) {
                p.push(s.key("path"), format!("{m} {path} is listed twice"));
            }
        }
        s.finish(p);
        if let (Some(method), Some(path)) = (method, path) {
            out.push(RouteConfig {
                method,
                path,
                limits,
                overflow,
                max_wait,
                validation,
                unknown_fields,
                max_body_bytes,
                resource_limits,
            });
        }
    }
    out
}

/// One `[[routes.resource_limits]]` entry: `name`, `key` (`path.<param>`,
/// `query.<name>`, `body.<field>` or `endpoint`), optional `kind`, `limits`
/// and/or `concurrency`, `shared` (default false), `max_keys` (default
/// 100,000).
fn resource_rule(
    mut s: Section<'_>,
    policy: &crate::quota::PlanPolicy,
    p: &mut Problems,
) -> Option<ResourceRule> {
    let name = s.required_string("name", p).map(str::to_string);
    let source = |s: &mut Section<'_>, field: &'static str, required: bool, p: &mut Problems| {
        let v = if required {
            s.required_string(field, p)
        } else {
            s.string(field, p)
        }?;
        KeySource::parse(v)
            .map_err(|e| p.push(s.key(field), e))
            .ok()
    };
    let key = source(&mut s, "key", true, p);
    let kind = source(&mut s, "kind", false, p);
    let mut limits = Vec::new();
    for (i, w) in s
        .strings("limits", p)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match w.parse::<crate::quota::Window>() {
            Ok(w) => limits.push(w),
            Err(e) => p.push(format!("{}[{i}]", s.key("limits")), e.to_string()),
        }
    }
    let short: Vec<_> = limits
        .iter()
        .copied()
        .filter(|w| w.period() <= crate::endpoints::resources::LONG_WINDOW)
        .collect();
    if !short.is_empty() {
        if let Err(e) = crate::quota::Plan::new(&short, policy) {
            p.push(s.key("limits"), e.to_string());
        }
    }
    let concurrency = s.integer("concurrency", 10_000, p).map(|v| v as u32);
    if concurrency == Some(0) {
        p.push(s.key("concurrency"), "must be at least 1");
    }
    if limits.is_empty() && concurrency.is_none() {
        p.push(
            s.key("limits"),
            "a resource limit needs limits, concurrency or both",
        );
    }
    let shared = s.boolean("shared", p).unwrap_or(false);
    let max_keys = s
        .integer("max_keys", 10_000_000, p)
        .map_or(crate::endpoints::resources::DEFAULT_MAX_KEYS, |v| {
            v as usize
        });
    if max_keys == 0 {
        p.push(s.key("max_keys"), "must be at least 1");
    }
    s.finish(p);
    Some(ResourceRule {
        name: name?,
        key: key?,
        kind,
        limits,
        concurrency,
        shared,
        max_keys,
    })
}
