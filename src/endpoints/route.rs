//! One catalog entry: a method and a path template (`:name` segments match
//! one path segment), and the gateway's rules for it.
//!
//! Matching is the catalog's router's (`router.rs`); a route extracts its
//! parameters by position, walking the path without allocating.

use std::time::Duration;

use http::Method;

use crate::feishu::paths;
use crate::quota::{OverflowMode, Window};
use crate::validate::{PathParams, UnknownFields, ValidationMode};

/// A catalog entry.
#[derive(Debug, Clone)]
pub struct Route {
    /// Stable id, e.g. `im.v1.chat_top_notice.put_top_notice`.
    pub id: String,
    /// HTTP method.
    pub method: Method,
    /// Path template, e.g. `/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice`;
    /// also the `route` label in metrics.
    pub template: String,
    /// Feishu's windows for this endpoint, per app; empty means no gateway
    /// quota.
    pub limits: Vec<Window>,
    /// Feishu documents a limit it does not publish (特殊频控): no gateway
    /// quota, only the pause after Feishu's own throttle answers.
    pub special: bool,
    /// The doc page's title, from the data file (empty for config routes).
    pub doc: &'static str,
    /// Overrides the global over-limit behaviour.
    pub overflow: Option<OverflowMode>,
    /// Overrides the global longest wait.
    pub max_wait: Option<Duration>,
    /// Enforce the route's contract, or only log what breaks it.
    pub validation: ValidationMode,
    /// Unknown body fields allowed (default) or rejected.
    pub unknown_fields: UnknownFields,
    /// Overrides the global body limit.
    pub max_body_bytes: Option<usize>,
    /// The per-resource rules on this route (indices into
    /// [`Catalog::rules`](super::Catalog::rules)).
    pub resources: Vec<usize>,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

impl Route {
    /// A route from a method and a template.
    pub fn new(id: &str, method: Method, template: &str) -> Result<Route, String> {
        if !template.starts_with(paths::OPEN_APIS) {
            return Err(format!("{template:?} must start with /open-apis/"));
        }
        let mut segments = Vec::new();
        let body = &template[1..];
        // Some Feishu templates end with a slash (`/drive/permission/v2/public/`).
        let body = body.strip_suffix('/').unwrap_or(body);
        for seg in body.split('/') {
            if seg.is_empty() {
                return Err(format!("{template:?} has an empty segment"));
            }
            if let Some(name) = seg.strip_prefix(':') {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!(
                        "{template:?}: parameter {seg:?} needs a name of letters, digits or '_'"
                    ));
                }
                segments.push(Segment::Param(name.to_string()));
            } else {
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        if body.len() + 1 < template.len() {
            segments.push(Segment::Literal(String::new()));
        }
        Ok(Route {
            id: id.to_string(),
            method,
            template: template.to_string(),
            limits: Vec::new(),
            special: false,
            doc: "",
            overflow: None,
            max_wait: None,
            validation: ValidationMode::Enforce,
            unknown_fields: UnknownFields::Allow,
            max_body_bytes: None,
            resources: Vec::new(),
            segments,
        })
    }

    /// The raw (still percent-encoded) value of parameter `name` in `path`,
    /// which must match this route.
    pub fn param<'p>(&self, path: &'p str, name: &str) -> Option<&'p str> {
        let rest = path.strip_prefix('/')?;
        self.segments
            .iter()
            .zip(rest.split('/'))
            .find_map(|(seg, p)| match seg {
                Segment::Param(n) if n == name => Some(p),
                _ => None,
            })
    }

    /// Names of the path parameters.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
    }
}

impl PathParams for Route {
    fn param<'p>(&self, path: &'p str, name: &str) -> Option<&'p str> {
        Route::param(self, path, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_templates_are_refused() {
        assert!(Route::new("x", Method::GET, "/other/x").is_err());
        assert!(Route::new("x", Method::GET, "/open-apis//x").is_err());
        assert!(Route::new("x", Method::GET, "/open-apis/:/x").is_err());
    }
}
