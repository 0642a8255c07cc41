//! Least privilege per client: the endpoints a client may call
//! (`[[clients]] allow`).
//!
//! An entry is `"METHOD PATH"`; `METHOD` is an HTTP method or `*` (any).
//! `PATH` is either
//! - a catalog template, `:name` standing for one segment
//!   (`"POST /open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice"`):
//!   the request must have been matched to that catalog route (parameter
//!   names need not agree, their places must); or
//! - a prefix ending in the segment `*`
//!   (`"GET /open-apis/contact/v3/users/*"`): any path with those leading
//!   segments (`:name` still one segment) and at least one more, catalog
//!   route or not.
//!
//! A client without `allow` may call everything (the behaviour before
//! allow lists). [`AllowList::compile`] turns the entries into a bitset of
//! catalog route indices plus the prefixes, once, so checking a request
//! costs a bit test and a walk over the prefix entries.
//!
//! An entry is compiled against ONE catalog: a client table built with one
//! catalog must not be used with another (a reload swaps both together).

use std::fmt;

use http::Method;

use crate::endpoints::{Catalog, Route};
use crate::feishu::paths;

/// One `allow` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// `None`: any method (`*`).
    method: Option<Method>,
    /// The path's segments after the leading `/`.
    segments: Vec<Segment>,
    /// Ends in `/*`: a prefix.
    prefix: bool,
    /// The entry as written, for messages.
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `:name`: any one non-empty segment.
    Param,
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for AllowRule {
    type Err = String;

    fn from_str(entry: &str) -> Result<AllowRule, String> {
        AllowRule::parse(entry)
    }
}

impl AllowRule {
    /// Parses `"METHOD PATH"`; the error says what is wrong, in one
    /// sentence.
    pub fn parse(entry: &str) -> Result<AllowRule, String> {
        let shape = "write \"METHOD /open-apis/...\" with a catalog template (\":name\" for a parameter) or a prefix ending in \"/*\"";
        let mut words = entry.split_whitespace();
        let (Some(method), Some(path), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("{entry:?}: {shape}"));
        };
        let method = match method {
            "*" => None,
            m if m.bytes().all(|b| b.is_ascii_alphabetic()) => {
                match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => return Err(format!("{entry:?}: {method:?} is not an HTTP method")),
                }
            }
            _ => {
                return Err(format!(
                    "{entry:?}: {method:?} is not an HTTP method or \"*\""
                ))
            }
        };
        if !path.starts_with(paths::OPEN_APIS) {
            return Err(format!(
                "{entry:?}: the path must start with {}",
                paths::OPEN_APIS
            ));
        }
        if path.contains(['?', '#', '%']) {
            return Err(format!(
                "{entry:?}: a path without query, fragment or %-escapes"
            ));
        }
        let mut raw: Vec<&str> = path[1..].split('/').collect();
        let prefix = raw.last() == Some(&"*");
        if prefix {
            raw.pop();
        }
        let mut segments = Vec::with_capacity(raw.len());
        for seg in raw {
            if seg.is_empty() {
                return Err(format!("{entry:?}: the path has an empty segment"));
            }
            if seg.contains('*') {
                return Err(format!(
                    "{entry:?}: \"*\" stands only as the whole last segment, as in \"GET /open-apis/contact/v3/users/*\""
                ));
            }
            if seg == "." || seg == ".." {
                return Err(format!("{entry:?}: the path has a dot segment"));
            }
            match seg.strip_prefix(':') {
                Some(name)
                    if !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                {
                    segments.push(Segment::Param)
                }
                Some(_) => {
                    return Err(format!(
                        "{entry:?}: parameter {seg:?} needs a name of letters, digits or '_'"
                    ))
                }
                None => segments.push(Segment::Literal(seg.to_string())),
            }
        }
        Ok(AllowRule {
            method,
            segments,
            prefix,
            text: entry.trim().to_string(),
        })
    }

    /// True for a prefix entry (`.../*`).
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }

    fn method_matches(&self, method: &Method) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
    }

    /// A template entry: whether `route` is the route it names (same
    /// method, same literal segments, parameters in the same places).
    fn names(&self, route: &Route) -> bool {
        if self.prefix || !self.method_matches(&route.method) {
            return false;
        }
        let mut template = route.template[1..].split('/');
        for seg in &self.segments {
            match (seg, template.next()) {
                (Segment::Literal(l), Some(t)) if l == t => {}
                (Segment::Param, Some(t)) if t.starts_with(':') => {}
                _ => return false,
            }
        }
        template.next().is_none()
    }

    /// A prefix entry: whether `method` and `path` (a request's) are under
    /// it.
    fn covers(&self, method: &Method, path: &str) -> bool {
        if !self.prefix || !self.method_matches(method) {
            return false;
        }
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        for seg in &self.segments {
            match (seg, parts.next()) {
                (Segment::Literal(l), Some(p)) if l == p => {}
                (Segment::Param, Some(p)) if !p.is_empty() => {}
                _ => return false,
            }
        }
        // `*`: at least one more segment.
        parts.next().is_some()
    }

    /// A prefix entry: whether some path of `route`'s template could be
    /// under it (a template's parameter may take a literal's value).
    fn overlaps(&self, route: &Route) -> bool {
        if !self.prefix || !self.method_matches(&route.method) {
            return false;
        }
        let mut template = route.template[1..].split('/');
        for seg in &self.segments {
            match (seg, template.next()) {
                (Segment::Literal(l), Some(t)) if l == t || t.starts_with(':') => {}
                (Segment::Param, Some(_)) => {}
                _ => return false,
            }
        }
        template.next().is_some()
    }

    /// How many catalog routes this entry names (a template) or reaches (a
    /// prefix). `check-config` reports the entries for which it is 0.
    pub fn catalog_matches(&self, catalog: &Catalog) -> usize {
        catalog
            .routes()
            .iter()
            .filter(|r| {
                if self.prefix {
                    self.overlaps(r)
                } else {
                    self.names(r)
                }
            })
            .count()
    }
}

/// A client's `allow` list, compiled against a catalog.
#[derive(Debug, Clone)]
pub struct AllowList {
    /// Bit `i` set: catalog route `i` is allowed by a template entry.
    routes: Vec<u64>,
    /// The prefix entries.
    prefixes: Vec<AllowRule>,
    /// Every entry, as written (for `Debug` and messages).
    entries: Vec<String>,
}

impl AllowList {
    /// Compiles `rules` against `catalog`. A template entry that names no
    /// catalog route allows nothing (`check-config` refuses such a file).
    pub fn compile(rules: &[AllowRule], catalog: &Catalog) -> AllowList {
        let n = catalog.routes().len();
        let mut routes = vec![0u64; n.div_ceil(64)];
        let mut prefixes = Vec::new();
        for rule in rules {
            if rule.prefix {
                prefixes.push(rule.clone());
                continue;
            }
            for (i, route) in catalog.routes().iter().enumerate() {
                if rule.names(route) {
                    routes[i / 64] |= 1 << (i % 64);
                }
            }
        }
        AllowList {
            routes,
            prefixes,
            entries: rules.iter().map(|r| r.text.clone()).collect(),
        }
    }

    /// Whether a request for `method` `path`, matched to catalog route
    /// `route` (`None`: outside the catalog), is allowed.
    pub fn allows(&self, method: &Method, path: &str, route: Option<usize>) -> bool {
        if let Some(i) = route {
            if self
                .routes
                .get(i / 64)
                .is_some_and(|w| w & (1 << (i % 64)) != 0)
            {
                return true;
            }
        }
        self.prefixes.iter().any(|p| p.covers(method, path))
    }

    /// The entries, as configured.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::RouteConfig;

    /// The built-in catalog (every Feishu endpoint of the data file) and
    /// one route added as `[[routes]]` would.
    fn catalog() -> Catalog {
        Catalog::with_overrides(&[RouteConfig {
            method: Method::GET,
            path: "/open-apis/gateway-test/v1/things/:thing_id".into(),
            limits: None,
            overflow: None,
            max_wait: None,
            validation: None,
            unknown_fields: None,
            max_body_bytes: None,
            resource_limits: Vec::new(),
        }])
        .unwrap()
    }

    fn list(entries: &[&str], c: &Catalog) -> AllowList {
        let rules: Vec<AllowRule> = entries.iter().map(|e| e.parse().unwrap()).collect();
        AllowList::compile(&rules, c)
    }

    fn allowed(l: &AllowList, c: &Catalog, method: Method, path: &str) -> bool {
        l.allows(&method, path, c.find(&method, path))
    }

    fn template(c: &Catalog, method: Method, path: &str) -> Option<String> {
        c.find(&method, path).map(|i| c.route(i).template.clone())
    }

    #[test]
    fn templates_allow_their_catalog_route_only() {
        let c = catalog();
        let l = list(
            &[
                "POST /open-apis/im/v1/chats/:id/top_notice/put_top_notice",
                "get /open-apis/contact/v3/users/:user_id",
                "GET /open-apis/gateway-test/v1/things/:id",
            ],
            &c,
        );
        let put = "/open-apis/im/v1/chats/oc_1/top_notice/put_top_notice";
        assert!(
            allowed(&l, &c, Method::POST, put),
            "parameter names need not agree"
        );
        assert!(!allowed(&l, &c, Method::GET, put));
        assert!(!allowed(
            &l,
            &c,
            Method::POST,
            "/open-apis/im/v1/chats/oc_1/top_notice/delete_top_notice"
        ));
        assert!(allowed(
            &l,
            &c,
            Method::GET,
            "/open-apis/contact/v3/users/ou_1"
        ));
        assert!(!allowed(
            &l,
            &c,
            Method::PATCH,
            "/open-apis/contact/v3/users/ou_1"
        ));
        // `users/batch` is a route of its own, not `users/:user_id`.
        let batch = "/open-apis/contact/v3/users/batch";
        assert_eq!(template(&c, Method::GET, batch).as_deref(), Some(batch));
        assert!(!allowed(&l, &c, Method::GET, batch));
        assert!(!allowed(&l, &c, Method::POST, "/open-apis/im/v1/messages"));
        // A route added by [[routes]].
        assert!(allowed(
            &l,
            &c,
            Method::GET,
            "/open-apis/gateway-test/v1/things/t1"
        ));
        // Outside the catalog: never by a template entry.
        let outside = "/open-apis/contact/v3/users/ou_1/not/in/catalog";
        assert_eq!(template(&c, Method::GET, outside), None);
        assert!(!allowed(&l, &c, Method::GET, outside));
    }

    #[test]
    fn prefixes_allow_paths_below_them_in_and_outside_the_catalog() {
        let c = catalog();
        let l = list(
            &[
                "GET /open-apis/contact/v3/users/*",
                "* /open-apis/im/v1/chats/:chat_id/*",
            ],
            &c,
        );
        assert!(allowed(
            &l,
            &c,
            Method::GET,
            "/open-apis/contact/v3/users/ou_1"
        ));
        assert!(allowed(
            &l,
            &c,
            Method::GET,
            "/open-apis/contact/v3/users/batch"
        ));
        assert!(allowed(
            &l,
            &c,
            Method::GET,
            "/open-apis/contact/v3/users/ou_1/not/in/catalog"
        ));
        assert!(
            !allowed(&l, &c, Method::GET, "/open-apis/contact/v3/users"),
            "one more segment"
        );
        assert!(!allowed(
            &l,
            &c,
            Method::PATCH,
            "/open-apis/contact/v3/users/ou_1"
        ));
        assert!(!allowed(
            &l,
            &c,
            Method::POST,
            "/open-apis/contact/v3/users/batch_get_id"
        ));
        assert!(!allowed(
            &l,
            &c,
            Method::GET,
            "/open-apis/contact/v3/usersx/ou_1"
        ));
        for m in [Method::POST, Method::DELETE, Method::GET] {
            assert!(allowed(
                &l,
                &c,
                m,
                "/open-apis/im/v1/chats/oc_1/top_notice/put_top_notice"
            ));
        }
        assert!(!allowed(
            &l,
            &c,
            Method::POST,
            "/open-apis/im/v1/chats/oc_1"
        ));
        assert!(!allowed(&l, &c, Method::POST, "/open-apis/im/v1/messages"));
    }

    #[test]
    fn entries_are_checked_against_the_catalog() {
        let c = catalog();
        let n = |e: &str| e.parse::<AllowRule>().unwrap().catalog_matches(&c);
        assert_eq!(n("POST /open-apis/im/v1/messages"), 1);
        // DELETE, GET, PATCH and PUT users/:user_id.
        assert_eq!(n("* /open-apis/contact/v3/users/:user_id"), 4);
        assert_eq!(n("GET /open-apis/gateway-test/v1/things/:x"), 1);
        assert_eq!(n("POST /open-apis/im/v1/messagez"), 0);
        assert_eq!(n("DELETE /open-apis/im/v1/messages"), 0);
        // A prefix reaches templates below it; a parameter may take a
        // literal's value.
        assert!(n("GET /open-apis/contact/v3/users/*") >= 3);
        assert!(n("GET /open-apis/contact/v3/users/batch/*") == 0);
        assert_eq!(n("GET /open-apis/gateway-test/*"), 1);
        assert_eq!(n("GET /open-apis/gateway-test/v1/things/x/*"), 0);
        assert_eq!(n("GET /open-apis/gateway-nowhere/*"), 0);
    }

    #[test]
    fn malformed_entries_say_what_is_wrong() {
        for (entry, says) in [
            ("/open-apis/im/v1/messages", "METHOD"),
            ("POST", "METHOD"),
            ("POST /open-apis/im/v1/messages extra", "METHOD"),
            ("P0ST /open-apis/im/v1/messages", "HTTP method"),
            ("POST /im/v1/messages", "/open-apis/"),
            ("GET /open-apis/contact/*/users", "whole last segment"),
            ("GET /open-apis/contact/v3/users*", "whole last segment"),
            ("GET /open-apis/contact//users", "empty segment"),
            ("GET /open-apis/contact/../im", "dot segment"),
            ("GET /open-apis/contact/:/x", "parameter"),
            ("GET /open-apis/contact?x=1", "query"),
        ] {
            let e = AllowRule::parse(entry).unwrap_err();
            assert!(e.contains(says), "{entry}: {e}");
        }
    }
}
