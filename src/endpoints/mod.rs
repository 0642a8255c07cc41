//! The endpoint catalog: which Feishu endpoints the gateway knows, as data.
//!
//! Each [`Route`] names a method and a path template (`:name` segments match
//! one path segment). A request that matches no route is still forwarded,
//! as route `other`, without gateway-specific rules.
//!
//! Matching walks the templates segment by segment over the request path
//! without allocating; the catalog is small (tens of routes), so a linear
//! scan over pre-split templates is both simplest and fast.

use http::Method;

use crate::config::{OverflowMode, RouteConfig, ValidationMode};
use crate::quota::Window;
use crate::validate::UnknownFields;

/// Feishu's published limit of the top-notice endpoints: 50 per second AND
/// 1000 per minute, per app (facts §7).
pub const TOP_NOTICE_LIMITS: [(u32, u64); 2] = [(50, 1), (1000, 60)];

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
    /// Overrides the global over-limit behaviour.
    pub overflow: Option<OverflowMode>,
    /// Overrides the global longest wait.
    pub max_wait: Option<std::time::Duration>,
    /// Enforce the route's contract, or only log what breaks it.
    pub validation: ValidationMode,
    /// Unknown body fields allowed (default) or rejected.
    pub unknown_fields: UnknownFields,
    /// Overrides the global body limit.
    pub max_body_bytes: Option<usize>,
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
        if !template.starts_with("/open-apis/") {
            return Err(format!("{template:?} must start with /open-apis/"));
        }
        let mut segments = Vec::new();
        for seg in template[1..].split('/') {
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
        Ok(Route {
            id: id.to_string(),
            method,
            template: template.to_string(),
            limits: Vec::new(),
            overflow: None,
            max_wait: None,
            validation: ValidationMode::Enforce,
            unknown_fields: UnknownFields::Allow,
            max_body_bytes: None,
            segments,
        })
    }

    /// True when `method` and `path` match this route.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        if *method != self.method {
            return false;
        }
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        for seg in &self.segments {
            match (seg, parts.next()) {
                (Segment::Literal(l), Some(p)) if l == p => {}
                (Segment::Param(_), Some(p)) if !p.is_empty() => {}
                _ => return false,
            }
        }
        parts.next().is_none()
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

/// All known routes.
#[derive(Debug, Clone)]
pub struct Catalog {
    routes: Vec<Route>,
}

impl Catalog {
    /// The built-in entries (the seed endpoints).
    pub fn builtin() -> Catalog {
        let routes = [
            (
                "im.v1.chat_top_notice.put_top_notice",
                "/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice",
            ),
            (
                "im.v1.chat_top_notice.delete_top_notice",
                "/open-apis/im/v1/chats/:chat_id/top_notice/delete_top_notice",
            ),
        ]
        .into_iter()
        .map(|(id, t)| {
            let mut r = Route::new(id, Method::POST, t).expect("built-in templates are valid");
            r.limits = TOP_NOTICE_LIMITS
                .iter()
                .map(|&(n, secs)| {
                    Window::new(n, std::time::Duration::from_secs(secs)).expect("valid window")
                })
                .collect();
            r
        })
        .collect();
        Catalog { routes }
    }

    /// The built-in entries with the config's `[[routes]]` applied: an entry
    /// with the same method and path is overridden field by field, any other
    /// is added.
    pub fn with_overrides(overrides: &[RouteConfig]) -> Result<Catalog, String> {
        let mut catalog = Catalog::builtin();
        for o in overrides {
            let existing = catalog
                .routes
                .iter()
                .position(|r| r.method == o.method && r.template == o.path);
            let route = match existing {
                Some(i) => &mut catalog.routes[i],
                None => {
                    let id = format!("{} {}", o.method, o.path);
                    catalog
                        .routes
                        .push(Route::new(&id, o.method.clone(), &o.path)?);
                    catalog.routes.last_mut().expect("just pushed")
                }
            };
            if let Some(l) = &o.limits {
                route.limits = l.clone();
            }
            if o.overflow.is_some() {
                route.overflow = o.overflow;
            }
            if o.max_wait.is_some() {
                route.max_wait = o.max_wait;
            }
            if let Some(v) = o.validation {
                route.validation = v;
            }
            if let Some(u) = o.unknown_fields {
                route.unknown_fields = u;
            }
            if o.max_body_bytes.is_some() {
                route.max_body_bytes = o.max_body_bytes;
            }
        }
        Ok(catalog)
    }

    /// The route index matching `method` and `path`, if any.
    pub fn find(&self, method: &Method, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.matches(method, path))
    }

    /// The route at `index`.
    pub fn route(&self, index: usize) -> &Route {
        &self.routes[index]
    }

    /// All routes, in index order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Route templates, in index order (metric labels).
    pub fn templates(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.template.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_templates_and_extracts_params() {
        let c = Catalog::builtin();
        let p = "/open-apis/im/v1/chats/oc_123/top_notice/put_top_notice";
        let i = c.find(&Method::POST, p).unwrap();
        assert_eq!(c.route(i).param(p, "chat_id"), Some("oc_123"));
        assert_eq!(c.find(&Method::GET, p), None);
        assert_eq!(
            c.find(
                &Method::POST,
                "/open-apis/im/v1/chats//top_notice/put_top_notice"
            ),
            None
        );
        assert_eq!(
            c.find(
                &Method::POST,
                "/open-apis/im/v1/chats/oc_1/top_notice/put_top_notice/x"
            ),
            None
        );
        assert!(c
            .find(
                &Method::POST,
                "/open-apis/im/v1/chats/oc_1/top_notice/delete_top_notice"
            )
            .is_some());
    }

    #[test]
    fn config_overrides_and_additions() {
        let o = vec![
            RouteConfig {
                method: Method::POST,
                path: "/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice".into(),
                limits: Some(vec!["5/1s".parse().unwrap()]),
                overflow: Some(OverflowMode::Wait),
                max_wait: None,
                validation: None,
                unknown_fields: None,
                max_body_bytes: None,
            },
            RouteConfig {
                method: Method::POST,
                path: "/open-apis/im/v1/messages".into(),
                limits: Some(vec!["20/10s".parse().unwrap()]),
                overflow: None,
                max_wait: None,
                validation: None,
                unknown_fields: None,
                max_body_bytes: None,
            },
        ];
        let c = Catalog::with_overrides(&o).unwrap();
        assert_eq!(c.routes().len(), 3);
        assert_eq!(c.route(0).limits.len(), 1);
        assert_eq!(c.route(0).overflow, Some(OverflowMode::Wait));
        assert_eq!(
            c.route(1).limits.len(),
            2,
            "untouched seed keeps 50/1s and 1000/60s"
        );
        let i = c.find(&Method::POST, "/open-apis/im/v1/messages").unwrap();
        assert_eq!(c.route(i).limits[0].to_string(), "20/10s");
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(Route::new("x", Method::GET, "/other/x").is_err());
        assert!(Route::new("x", Method::GET, "/open-apis//x").is_err());
        assert!(Route::new("x", Method::GET, "/open-apis/:/x").is_err());
    }
}
