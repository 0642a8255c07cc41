//! One request to a built-in contract, as the contract tests write it
//! (`tests.rs`: top notices, `message_tests.rs`: messages): the route by id,
//! the value of its one path parameter, the query, `Content-Type`, the
//! body and the unknown-fields mode; checked against the built-in catalog.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue};

use super::*;
use crate::endpoints::{builtin_contract as builtin, Catalog};

/// A request to the built-in contract of `route_id`.
#[derive(Clone, Copy)]
pub(super) struct Call<'a> {
    pub(super) route_id: &'a str,
    /// The value of the route's one path parameter (`:chat_id`,
    /// `:message_id`).
    pub(super) param: &'a str,
    pub(super) query: Option<&'a str>,
    pub(super) content_type: Option<&'a str>,
    pub(super) body: &'a [u8],
    pub(super) unknown_fields: UnknownFields,
}

impl Call<'_> {
    /// The contract's verdict.
    pub(super) fn check(&self) -> Result<(), Violations> {
        static CATALOG: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
        let catalog = CATALOG.get_or_init(Catalog::builtin);
        let route = catalog
            .routes()
            .iter()
            .find(|r| r.id == self.route_id)
            .unwrap();
        let path: String = route
            .template
            .split('/')
            .map(|s| if s.starts_with(':') { self.param } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let mut headers = HeaderMap::new();
        if let Some(ct) = self.content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        }
        let contract = builtin(self.route_id)
            .unwrap()
            .with_unknown_fields(self.unknown_fields);
        contract.check(&RequestView {
            route,
            path: &path,
            query: self.query,
            headers: &headers,
            body: self.body,
        })
    }

    /// (field, description) of every violation, in order.
    pub(super) fn problems(&self) -> Vec<(String, String)> {
        match self.check() {
            Ok(()) => vec![],
            Err(v) => v
                .list()
                .iter()
                .map(|v| (v.field.clone(), v.description.clone()))
                .collect(),
        }
    }
}

/// Expected (field, description) pairs, owned.
pub(super) fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(f, d)| (f.to_string(), d.to_string()))
        .collect()
}
