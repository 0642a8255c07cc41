//! Everything the gateway knows per Feishu endpoint: the catalog of
//! [`Route`]s (method, template, limits, per-route options) and each
//! route's body [`Contract`].
//!
//! The built-in entries come from one file per endpoint family
//! ([`top_notice`]), each listing its endpoints as [`Builtin`] rows; the
//! config's `[[routes]]` ([`RouteConfig`]) override them field by field or
//! add more. A request that matches no route is still forwarded, as route
//! `other`, without gateway-specific rules.
//!
//! The catalog is small (tens of routes), so matching is a linear scan over
//! pre-split templates: simplest, and fast.

mod route;
pub mod top_notice;

pub use route::Route;
pub use top_notice::{delete_top_notice, put_top_notice, DELETE_TOP_NOTICE, PUT_TOP_NOTICE};

use std::time::Duration;

use http::Method;

use crate::quota::{OverflowMode, Window};
use crate::validate::{Contract, UnknownFields, ValidationMode};

/// A built-in endpoint, as its family's file lists it.
#[derive(Debug, Clone)]
pub struct Builtin {
    /// Stable id, e.g. `im.v1.chat_top_notice.put_top_notice`.
    pub id: &'static str,
    /// HTTP method.
    pub method: Method,
    /// Path template.
    pub template: &'static str,
    /// Feishu's windows per app, as (requests, seconds).
    pub limits: &'static [(u32, u64)],
    /// The body contract, if the gateway checks one.
    pub contract: Option<fn() -> Contract>,
}

/// Every built-in endpoint, family by family.
pub const BUILTIN: &[&[Builtin]] = &[top_notice::ENDPOINTS];

/// The built-in contract of the route `route_id`, if it has one.
pub fn builtin_contract(route_id: &str) -> Option<Contract> {
    BUILTIN
        .iter()
        .flat_map(|family| family.iter())
        .find(|b| b.id == route_id)
        .and_then(|b| b.contract)
        .map(|make| make())
}

/// A catalog override or addition (`[[routes]]`). Fields left out keep the
/// built-in entry's values (or the global defaults for a new entry).
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// HTTP method (`method`).
    pub method: http::Method,
    /// Path template (`path`), e.g. `/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice`.
    pub path: String,
    /// Windows like `["50/1s", "1000/60s"]` (`limits`); `[]` removes the
    /// gateway quota of the route.
    pub limits: Option<Vec<Window>>,
    /// Overrides `quota.overflow` for this route (`overflow`).
    pub overflow: Option<OverflowMode>,
    /// Overrides `quota.max_wait` for this route (`max_wait`).
    pub max_wait: Option<Duration>,
    /// `"enforce"` (default) answers bad input itself; `"log-only"` forwards
    /// it but logs and counts what would have been rejected (`validation`).
    pub validation: Option<ValidationMode>,
    /// Unknown body fields: `"allow"` (default; Feishu ignores them) or
    /// `"reject"` (`unknown_fields`).
    pub unknown_fields: Option<UnknownFields>,
    /// Overrides the global `max_body_bytes` for this route.
    pub max_body_bytes: Option<usize>,
}

/// All known routes.
#[derive(Debug, Clone)]
pub struct Catalog {
    routes: Vec<Route>,
}

impl Catalog {
    /// The built-in entries, family by family.
    pub fn builtin() -> Catalog {
        let routes = BUILTIN
            .iter()
            .flat_map(|family| family.iter())
            .map(|b| {
                let mut r = Route::new(b.id, b.method.clone(), b.template)
                    .expect("built-in templates are valid");
                r.limits = b
                    .limits
                    .iter()
                    .map(|&(n, secs)| {
                        Window::new(n, Duration::from_secs(secs)).expect("valid window")
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

/// The contract of each catalog route, by route index.
#[derive(Debug, Clone)]
pub struct Contracts {
    by_route: Vec<Option<Contract>>,
}

impl Contracts {
    /// The built-in contract of every route of `catalog` that has one.
    pub fn for_catalog(catalog: &Catalog) -> Contracts {
        Contracts {
            by_route: catalog
                .routes()
                .iter()
                .map(|r| builtin_contract(&r.id))
                .collect(),
        }
    }

    /// The contract of route `index`, if it has one.
    pub fn get(&self, index: usize) -> Option<&Contract> {
        self.by_route.get(index).and_then(Option::as_ref)
    }

    /// The contract of route `index`, to adjust per-route options
    /// (e.g. [`Contract::unknown_fields`]).
    pub fn get_mut(&mut self, index: usize) -> Option<&mut Contract> {
        self.by_route.get_mut(index).and_then(Option::as_mut)
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
}
