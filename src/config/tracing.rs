//! `[tracing]`: distributed tracing over OTLP/HTTP (the settings are
//! [`crate::observe::trace::TraceConfig`]; what is traced is documented
//! there). Off by default.

use std::time::Duration;

use super::reader::{Problems, Section};
use crate::observe::trace::{traces_url, TraceConfig};

/// Reads `[tracing]`; every key has a default. The keys are checked whether
/// tracing is enabled or not, so a typo shows before it is turned on.
pub(super) fn read(root: &mut Section<'_>, p: &mut Problems) -> TraceConfig {
    let mut t = TraceConfig::default();
    let Some(mut s) = root.table("tracing", p) else {
        return t;
    };
    if let Some(b) = s.boolean("enabled", p) {
        t.enabled = b;
    }
    if let Some(endpoint) = s.string("endpoint", p) {
        match traces_url(endpoint) {
            Ok(url) => t.endpoint = url,
            Err(e) => p.push(
                s.key("endpoint"),
                format!(
                    "{e}: give the collector's OTLP/HTTP URL, like \"http://otel-collector:4318\""
                ),
            ),
        }
    }
    match s.value("sampling_ratio") {
        Some(toml::Value::Float(f)) if (0.0..=1.0).contains(f) => t.sampling_ratio = *f,
        Some(toml::Value::Integer(i)) if *i == 0 || *i == 1 => t.sampling_ratio = *i as f64,
        Some(_) => p.push(
            s.key("sampling_ratio"),
            "must be a number from 0 to 1, like 0.1 (the share of new traces sampled; a caller's traceparent decides for its own)",
        ),
        None => {}
    }
    if let Some(name) = s.string("service_name", p) {
        if name.trim().is_empty() {
            p.push(s.key("service_name"), "must not be empty");
        } else {
            t.service_name = name.to_string();
        }
    }
    if let Some(d) = s.duration("export_timeout", p) {
        if d.is_zero() || d > Duration::from_secs(60) {
            p.push(s.key("export_timeout"), "must be between 1ms and 60s");
        } else {
            t.export_timeout = d;
        }
    }
    s.finish(p);
    t
}
