//! `[retries]`: retries by code after a transient upstream failure (the
//! policy is [`crate::proxy::RetryPolicy`]; what is retried and when is
//! documented there).

use std::time::Duration;

use super::reader::{Problems, Section};
use crate::proxy::RetryPolicy;

/// Reads `[retries]`; every key has a default.
pub(super) fn read(root: &mut Section<'_>, p: &mut Problems) -> RetryPolicy {
    let mut r = RetryPolicy::default();
    let Some(mut s) = root.table("retries", p) else {
        return r;
    };
    if let Some(b) = s.boolean("enabled", p) {
        r.enabled = b;
    }
    if let Some(n) = s.integer("max_retries", 10, p) {
        r.max_retries = n as u32;
    }
    if let Some(d) = s.duration("backoff_base", p) {
        r.backoff_base = d;
    }
    if let Some(d) = s.duration("backoff_max", p) {
        r.backoff_max = d;
    }
    match s.value("budget_ratio") {
        Some(toml::Value::Float(f)) if (0.0..=1.0).contains(f) => r.budget_ratio = *f,
        Some(toml::Value::Integer(i)) if *i == 0 || *i == 1 => r.budget_ratio = *i as f64,
        Some(_) => p.push(
            s.key("budget_ratio"),
            "must be a number from 0 to 1, like 0.1 (retries per window at most this fraction of the requests)",
        ),
        None => {}
    }
    if let Some(n) = s.integer("budget_min", 1_000_000, p) {
        r.budget_min = n as u32;
    }
    if let Some(d) = s.duration("budget_window", p) {
        if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
            p.push(s.key("budget_window"), "must be between 1s and 1h");
        } else {
            r.budget_window = d;
        }
    }
    if r.backoff_max < r.backoff_base {
        p.push(
            s.key("backoff_max"),
            "must be at least retries.backoff_base",
        );
    }
    if r.backoff_max > Duration::from_secs(30) {
        p.push(
            s.key("backoff_max"),
            "must be at most 30s (a retry shares the request's upstream timeout)",
        );
    }
    s.finish(p);
    r
}
