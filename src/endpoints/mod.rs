//! Everything the gateway knows per Feishu endpoint: the catalog of
//! [`Route`]s (method, template, limits, per-route options) and each
//! route's body [`Contract`].
//!
//! | file          | concern                                                        |
//! |---------------|----------------------------------------------------------------|
//! | `data.rs`     | `data/feishu-api-limits.tsv`: every endpoint's documented limit |
//! | `router.rs`   | request path → route (segment tree; static segments first)      |
//! | `route.rs`    | one entry: template, limits, options, parameter extraction      |
//! | `resources.rs`| per-resource limits (a chat, a document, a table) and their endpoints |
//! | one file per family ([`top_notice`], [`messages`], [`uploads`]) | hand-written additions: contract, body limit, upload form |
//!
//! The catalog is built from the data file (every row, with its limits),
//! then each family's [`Builtin`] rows add what the data cannot say (a body
//! contract, a larger body limit), then the config's `[[routes]]`
//! ([`RouteConfig`]) override any of it field by field or add endpoints. A
//! request that matches no route is still forwarded, as route `other`,
//! without gateway-specific rules.

pub mod data;
pub mod messages;
pub mod resources;
mod route;
mod router;
pub mod top_notice;
pub mod uploads;

pub use messages::{
    edit_message, reply_message, send_message, EDIT_MESSAGE, REPLY_MESSAGE, SEND_MESSAGE,
};
pub use resources::{KeySource, ResourceRule};
pub use route::Route;
pub use router::shape;
pub use top_notice::{delete_top_notice, put_top_notice, DELETE_TOP_NOTICE, PUT_TOP_NOTICE};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::quota::{OverflowMode, Window};
use crate::validate::{Contract, FormContract, UnknownFields, ValidationMode};
use data::Documented;
use router::Router;

/// A hand-written addition to a catalog endpoint, as its family's file
/// lists it: what the data file cannot say.
#[derive(Debug, Clone)]
pub struct Builtin {
    /// Stable id, e.g. `im.v1.chat_top_notice.put_top_notice`.
    pub id: &'static str,
    /// HTTP method.
    pub method: Method,
    /// Path template, as in the data file.
    pub template: &'static str,
    /// The body contract, if the gateway checks one.
    pub contract: Option<fn() -> Contract>,
    /// The endpoint's body limit, when it is not the global one (uploads).
    pub max_body_bytes: Option<usize>,
}

/// Every family's additions.
pub const BUILTIN: &[&[Builtin]] = &[
    top_notice::ENDPOINTS,
    messages::ENDPOINTS,
    uploads::ENDPOINTS,
];

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
    /// Per-resource limits (`[[routes.resource_limits]]`): a rule with a
    /// built-in rule's name replaces it; any other is added.
    pub resource_limits: Vec<ResourceRule>,
}

/// All known routes.
#[derive(Debug, Clone)]
pub struct Catalog {
    routes: Vec<Route>,
    router: Router,
    /// Route index by method and template shape (overrides, lookups).
    by_shape: HashMap<(Method, String), usize>,
    /// Per-resource rules; routes name them by index ([`Route::resources`]).
    rules: Vec<ResourceRule>,
}

impl Catalog {
    /// Every endpoint of the data file with its documented limits, and the
    /// families' additions.
    pub fn builtin() -> Catalog {
        Catalog::with_overrides(&[]).expect("the built-in catalog is consistent (tested)")
    }

    /// The built-in entries with the config's `[[routes]]` applied: an entry
    /// with the same method and path shape (parameter names aside) is
    /// overridden field by field, any other is added.
    pub fn with_overrides(overrides: &[RouteConfig]) -> Result<Catalog, String> {
        let mut catalog = Catalog {
            routes: Vec::new(),
            router: Router::default(),
            by_shape: HashMap::new(),
            rules: Vec::new(),
        };
        for row in data::rows() {
            let id = format!("{} {}", row.method, row.template);
            let mut r = Route::new(&id, row.method, row.template)?;
            match row.limits {
                Documented::Windows(ws) => r.limits = ws,
                Documented::Special => r.special = true,
                Documented::None => {}
            }
            r.doc = row.doc;
            catalog.add(r)?;
        }
        for b in BUILTIN.iter().flat_map(|family| family.iter()) {
            let i = match catalog.position(&b.method, b.template) {
                Some(i) => i,
                None => catalog.add(Route::new(b.id, b.method.clone(), b.template)?)?,
            };
            let route = &mut catalog.routes[i];
            route.id = b.id.to_string();
            route.max_body_bytes = route.max_body_bytes.or(b.max_body_bytes);
        }
        for b in resources::BUILTIN_RULES {
            let r = catalog.add_rule(b.rule());
            for (method, template) in b.endpoints {
                let i = catalog.position(method, template).ok_or_else(|| {
                    format!("resource rule {}: no endpoint {method} {template}", b.name)
                })?;
                catalog.attach(i, r)?;
            }
        }
        for o in overrides {
            let i = match catalog.position(&o.method, &o.path) {
                Some(i) => i,
                None => {
                    let id = format!("{} {}", o.method, o.path);
                    catalog.add(Route::new(&id, o.method.clone(), &o.path)?)?
                }
            };
            let route = &mut catalog.routes[i];
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
            for rule in &o.resource_limits {
                let r = catalog.add_rule(rule.clone());
                catalog.attach(i, r)?;
            }
        }
        Ok(catalog)
    }

    /// Adds `rule`, or replaces the rule of the same name; its index.
    fn add_rule(&mut self, rule: ResourceRule) -> usize {
        match self.rules.iter().position(|r| r.name == rule.name) {
            Some(i) => {
                self.rules[i] = rule;
                i
            }
            None => {
                self.rules.push(rule);
                self.rules.len() - 1
            }
        }
    }

    /// Applies rule `r` to route `i`, whose template must have the path
    /// parameters the rule reads.
    fn attach(&mut self, i: usize, r: usize) -> Result<(), String> {
        let rule = &self.rules[r];
        let route = &mut self.routes[i];
        for source in std::iter::once(&rule.key).chain(rule.kind.as_ref()) {
            if let KeySource::Path(name) = source {
                if !route.params().any(|p| p == name) {
                    return Err(format!(
                        "resource rule {}: {} {} has no path parameter {name:?}",
                        rule.name, route.method, route.template
                    ));
                }
            }
        }
        if !route.resources.contains(&r) {
            route.resources.push(r);
        }
        Ok(())
    }

    /// The per-resource rules, by index.
    pub fn rules(&self) -> &[ResourceRule] {
        &self.rules
    }

    fn add(&mut self, route: Route) -> Result<usize, String> {
        let i = self.routes.len();
        self.router.insert(&route.method, &route.template, i)?;
        self.by_shape
            .insert((route.method.clone(), shape(&route.template)), i);
        self.routes.push(route);
        Ok(i)
    }

    /// The route with this method and template (parameter names aside:
    /// `/a/:x` is `/a/:y`), if the catalog has it.
    pub fn position(&self, method: &Method, template: &str) -> Option<usize> {
        self.by_shape
            .get(&(method.clone(), shape(template)))
            .copied()
    }

    /// The route index matching `method` and `path`, if any.
    #[inline]
    pub fn find(&self, method: &Method, path: &str) -> Option<usize> {
        self.router.at(method, path)
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

/// The contract of each catalog route, by route index: a JSON body
/// contract, or for uploads a form contract.
#[derive(Debug, Clone)]
pub struct Contracts {
    by_route: Vec<Option<Contract>>,
    forms: Vec<Option<Arc<FormContract>>>,
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
            forms: catalog
                .routes()
                .iter()
                .map(|r| uploads::form(&r.id).map(Arc::new))
                .collect(),
        }
    }

    /// The contract of route `index`, if it has one.
    pub fn get(&self, index: usize) -> Option<&Contract> {
        self.by_route.get(index).and_then(Option::as_ref)
    }

    /// The upload form of route `index`, if it is an upload.
    pub fn form(&self, index: usize) -> Option<&Arc<FormContract>> {
        self.forms.get(index).and_then(Option::as_ref)
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
    fn every_data_row_is_a_route_with_its_limits() {
        let c = Catalog::builtin();
        let rows = data::rows();
        assert_eq!(
            c.routes().len(),
            rows.len(),
            "the families add no new endpoint"
        );
        for (i, row) in rows.iter().enumerate() {
            let r = c.route(i);
            assert_eq!(
                (&r.method, r.template.as_str()),
                (&row.method, row.template)
            );
            match &row.limits {
                Documented::Windows(ws) => assert_eq!(&r.limits, ws),
                Documented::Special => assert!(r.special && r.limits.is_empty()),
                Documented::None => assert!(!r.special && r.limits.is_empty()),
            }
            // A path made from the template (each parameter a value) finds
            // this very route: no template shadows another.
            let path: String = row
                .template
                .split('/')
                .map(|s| if s.starts_with(':') { "v1x" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            assert_eq!(
                c.find(&row.method, &path),
                Some(i),
                "{} {}",
                row.method,
                row.template
            );
        }
    }

    #[test]
    fn builtin_resource_rules_sit_on_their_endpoints() {
        let c = Catalog::builtin();
        let rules_of = |m: Method, p: &str| -> Vec<String> {
            let r = c.route(c.find(&m, p).unwrap());
            r.resources
                .iter()
                .map(|&i| c.rules()[i].name.clone())
                .collect()
        };
        assert_eq!(
            rules_of(Method::POST, "/open-apis/im/v1/messages"),
            ["im.receiver"]
        );
        assert_eq!(
            rules_of(Method::PATCH, "/open-apis/im/v1/messages/om_1"),
            ["im.card"]
        );
        assert!(rules_of(Method::PUT, "/open-apis/im/v1/messages/om_1").is_empty());
        assert_eq!(
            rules_of(
                Method::PATCH,
                "/open-apis/docx/v1/documents/d1/blocks/batch_update"
            ),
            ["docx.document"]
        );
        assert_eq!(
            rules_of(Method::POST, "/open-apis/drive/v1/files/upload_all"),
            ["drive.upload"]
        );
        let bad = RouteConfig {
            method: Method::POST,
            path: "/open-apis/im/v1/messages".into(),
            limits: None,
            overflow: None,
            max_wait: None,
            validation: None,
            unknown_fields: None,
            max_body_bytes: None,
            resource_limits: vec![ResourceRule {
                name: "x".into(),
                key: KeySource::Path("chat_id".into()),
                kind: None,
                limits: vec!["1/1s".parse().unwrap()],
                concurrency: None,
                shared: false,
                max_keys: 10,
            }],
        };
        let e = Catalog::with_overrides(&[bad]).unwrap_err();
        assert!(e.contains("no path parameter \"chat_id\""), "{e}");
    }

    #[test]
    fn ambiguous_templates_resolve_to_the_static_segment() {
        let c = Catalog::builtin();
        let t = |m: Method, p: &str| c.find(&m, p).map(|i| c.route(i).template.as_str());
        assert_eq!(
            t(Method::GET, "/open-apis/im/v1/chats/search"),
            Some("/open-apis/im/v1/chats/search")
        );
        assert_eq!(
            t(Method::GET, "/open-apis/im/v1/chats/oc_1"),
            Some("/open-apis/im/v1/chats/:chat_id")
        );
        assert_eq!(
            t(Method::POST, "/open-apis/im/v1/messages/merge_forward"),
            Some("/open-apis/im/v1/messages/merge_forward")
        );
        assert_eq!(
            t(Method::POST, "/open-apis/im/v1/messages/om_1/forward"),
            Some("/open-apis/im/v1/messages/:message_id/forward")
        );
        assert_eq!(t(Method::GET, "/open-apis/nothing/here"), None);
        assert_eq!(t(Method::GET, "/not-open-apis"), None);
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
                resource_limits: Vec::new(),
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
                resource_limits: Vec::new(),
            },
        ];
        let c = Catalog::with_overrides(&o).unwrap();
        let builtin = Catalog::builtin();
        assert_eq!(c.routes().len(), builtin.routes().len(), "overrides only");
        let put = c
            .find(
                &Method::POST,
                "/open-apis/im/v1/chats/oc_1/top_notice/put_top_notice",
            )
            .unwrap();
        assert_eq!(c.route(put).limits.len(), 1);
        assert_eq!(c.route(put).overflow, Some(OverflowMode::Wait));
        assert_eq!(c.route(put).id, PUT_TOP_NOTICE, "still the family's entry");
        let del = c
            .find(
                &Method::POST,
                "/open-apis/im/v1/chats/oc_1/top_notice/delete_top_notice",
            )
            .unwrap();
        assert_eq!(
            c.route(del).limits.len(),
            2,
            "untouched seed keeps 50/1s and 1000/60s"
        );
        let i = c.find(&Method::POST, "/open-apis/im/v1/messages").unwrap();
        assert_eq!(c.route(i).limits[0].to_string(), "20/10s");
        let added = Catalog::with_overrides(&[RouteConfig {
            method: Method::POST,
            path: "/open-apis/new/v1/things/:thing_id".into(),
            limits: Some(vec!["1/1s".parse().unwrap()]),
            ..o[1].clone()
        }])
        .unwrap();
        assert_eq!(added.routes().len(), builtin.routes().len() + 1);
        let i = added
            .find(&Method::POST, "/open-apis/new/v1/things/t1")
            .unwrap();
        assert_eq!(
            added
                .route(i)
                .param("/open-apis/new/v1/things/t1", "thing_id"),
            Some("t1")
        );
    }
}
