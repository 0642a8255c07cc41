//! Request validation: a request to a catalog route is checked against the
//! route's [`Contract`] before any quota is spent, and bad input is answered
//! by the gateway, in Feishu's words (400, the endpoint's invalid-parameter
//! code such as 232001 or 230001, `field_violations`).
//!
//! ```
//! use feishu_gateway::endpoints::{Catalog, Contracts};
//! use feishu_gateway::validate::RequestView;
//!
//! let catalog = Catalog::builtin();
//! let contracts = Contracts::for_catalog(&catalog);
//! let path = "/open-apis/im/v1/chats/oc_5ad11d72b830411d72b836c20/top_notice/put_top_notice";
//! let index = catalog.find(&http::Method::POST, path).unwrap();
//! let mut headers = http::HeaderMap::new();
//! headers.insert("content-type", "application/json; charset=utf-8".parse().unwrap());
//! let req = RequestView {
//!     route: catalog.route(index),
//!     path,
//!     query: None,
//!     headers: &headers,
//!     body: br#"{"chat_top_notice":[{"action_type":"1"}]}"#,
//! };
//! let err = contracts.get(index).unwrap().check(&req).unwrap_err();
//! assert_eq!(err.list()[0].field, "chat_top_notice[0].message_id");
//! assert_eq!(err.list()[0].description, r#"required when action_type is "1""#);
//! let answer = err.to_json(); // the body of the 400 the proxy sends
//! assert_eq!(answer["code"], 232001);
//! ```
//!
//! # Layout
//!
//! | file           | concern                                                      |
//! |----------------|--------------------------------------------------------------|
//! | `contract.rs`  | the contract as plain data: params, query, headers, body [`Shape`]s |
//! | `request.rs`   | [`Contract::check`]: path parameters, headers, body          |
//! | `query.rs`     | query parameters: found, decoded only when escaped, checked  |
//! | `json.rs`      | the one-pass streaming walk of the body (and of JSON inside a string) |
//! | [`form`]       | uploads: a multipart form's contract, checked part by part   |
//! | `text.rs`      | the forms of a string ([`Text`]) and why a value is not one  |
//! | `violation.rs` | [`Violations`] and the body of the 400 answer                |
//!
//! # Why a declarative form of our own
//!
//! - **Messages.** A contract is a tree of [`Shape`]s that knows Feishu's
//!   rules (a condition on a sibling with a default, the number `1` where the
//!   string `"1"` is meant), so each violation is a precise phrase naming
//!   its field: `chat_top_notice[0].message_id: required when action_type
//!   is "1"`. JSON Schema expresses the condition as `if`/`then` and then
//!   reports `"message_id" is a required property`, without the condition,
//!   and `1 is not one of ["1","2"]`, without the hint; a schema engine
//!   also needs the body as a `serde_json::Value` first. Serde types stop
//!   at the first error.
//! - **Speed.** The walk streams over the body once, borrowing keys and
//!   strings from it, and allocates nothing for a valid body (no
//!   `serde_json::Value`, no schema engine): checking a typical
//!   `put_top_notice` body costs about two thirds of the instructions and
//!   half the time of merely parsing it into a `Value` (see
//!   `benches/validate.rs`). One exception: a string holding JSON (a
//!   message's `content`) is unescaped into `serde_json`'s buffer when it
//!   has escapes, which a real `content` always has; the buffer grows to
//!   the string's length, no more.
//! - **No new dependency.** serde and serde_json are already there.
//!
//! # Rules common to every contract
//!
//! - Path parameters are checked raw (still percent-encoded): any `%`,
//!   `/`, `..` or control character is refused before the form is looked at.
//! - Query parameters are decoded (`+`, `%XX`) as Feishu decodes them; one
//!   given twice is refused. Their violations name them plainly
//!   (`receive_id_type`).
//! - An empty body (or only whitespace) passes unless the body is required.
//! - A body that is not UTF-8 is refused with the offset of the first bad
//!   byte; invalid JSON with the line and column of the error, and nothing
//!   else about the body. Nesting deeper than serde_json's recursion limit
//!   (128) is invalid JSON, so 100 000 `[` cost a short error, not the stack.
//! - A known field given twice is refused: parsers disagree on which copy
//!   wins, and the gateway must not pass what it did not check.
//! - Unknown fields pass unless the contract says
//!   [`UnknownFields::Reject`].
//! - At most [`MAX_VIOLATIONS`] violations are listed, the rest counted;
//!   echoed values are cut at [`MAX_VALUE_CHARS`] characters, and missing
//!   fields, objects and arrays echo no value at all.

mod contract;
pub mod form;
mod json;
mod query;
mod request;
mod text;
mod violation;

#[cfg(test)]
mod call_tests;
#[cfg(test)]
mod message_tests;
#[cfg(test)]
mod tests;

pub use contract::{
    Array, BodyRule, Contract, Field, HeaderCheck, HeaderRule, LengthCap, Object, Param, Presence,
    QueryParam, Shape, Text, UnknownFields, MAX_CAPS, MAX_CONDITIONAL, MAX_FIELDS,
};
pub use form::{FieldValue, FilePart, FormCheck, FormContract, FormField};
pub use violation::{Violation, Violations, MAX_VALUE_CHARS, MAX_VIOLATIONS};

use http::HeaderMap;

/// Where a contract finds the request's path parameters: the catalog route
/// the request matched (`crate::endpoints::Route` implements it).
pub trait PathParams {
    /// The raw (still percent-encoded) value of parameter `name` in `path`.
    fn param<'p>(&self, path: &'p str, name: &str) -> Option<&'p str>;
}

/// What the validation phase does with a request that breaks its contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValidationMode {
    /// Answer 400 itself; nothing is sent, no quota spent.
    #[default]
    Enforce,
    /// Forward anyway, but log and count it (safe rollout).
    LogOnly,
}

/// The parts of a request a contract looks at.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    /// The path parameters of the route the request matched.
    pub route: &'a dyn PathParams,
    /// The request path, without the query (`uri.path()`), still
    /// percent-encoded.
    pub path: &'a str,
    /// The query, without the `?` (`uri.query()`), still percent-encoded.
    pub query: Option<&'a str>,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The whole request body.
    pub body: &'a [u8],
}
