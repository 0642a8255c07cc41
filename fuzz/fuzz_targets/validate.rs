//! Fuzzes request validation and path parameter extraction.
//!
//! Input: one flag byte, then `segment \n content-type \n body`.
//! - flag bit 0: put_top_notice (0) or delete_top_notice (1);
//! - flag bit 1: unknown fields Allow (0) or Reject (1);
//! - flag bit 2: the segment is a whole path (1) or the chat id put into
//!   the route template (0).
//!
//! Checks, besides "never panics":
//! - `Route::param` of a matching path is a non-empty segment without '/';
//! - the chat_id verdict equals an independent reference (`oc_` + alnum);
//! - every echoed value is capped, the answer is Feishu-shaped JSON;
//! - the body verdict agrees with the simulated Feishu's own check
//!   (put and delete, unknown fields allowed), except where a known key is
//!   repeated: the gateway refuses that as ambiguous, the fake lets the
//!   last copy win.
#![no_main]

use feishu_gateway::endpoints::{
    builtin_contract as builtin, Catalog, DELETE_TOP_NOTICE, PUT_TOP_NOTICE,
};
use feishu_gateway::proxy::error::GatewayError;
use feishu_sim::contract::{delete_top_notice_ok, put_top_notice_ok};
use feishu_gateway::validate::{Contract, RequestView, UnknownFields, Violations, MAX_VALUE_CHARS};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let segment = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let content_type = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();

    let route_id = if flags & 1 == 0 {
        PUT_TOP_NOTICE
    } else {
        DELETE_TOP_NOTICE
    };
    let unknown = if flags & 2 == 0 {
        UnknownFields::Allow
    } else {
        UnknownFields::Reject
    };
    let catalog = Catalog::builtin();
    let route = catalog
        .routes()
        .iter()
        .find(|r| r.id == route_id)
        .expect("built-in route");
    let path = if flags & 4 == 0 {
        route.template.replace(":chat_id", &segment)
    } else {
        segment.clone()
    };

    // Path parameter extraction.
    let param = route.param(&path, "chat_id");
    // The catalog's router is the matcher: a path it sends to this route
    // has the parameter, one segment, never empty.
    let found = catalog.find(&Method::POST, &path);
    if found.map(|i| &catalog.route(i).id) == Some(&route.id) {
        let p = param.expect("a matching path has its parameter");
        assert!(!p.is_empty() && !p.contains('/'), "{path:?} -> {p:?}");
    }

    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(content_type) {
        if !content_type.is_empty() {
            headers.insert(CONTENT_TYPE, v);
        }
    }
    let contract = builtin(route_id)
        .expect("contract")
        .with_unknown_fields(unknown);
    let req = RequestView {
        route,
        path: &path,
        headers: &headers,
        body,
    };
    let verdict = contract.check(&req);

    // chat_id against a reference written independently.
    let id_ok = param.is_some_and(|p| {
        p.strip_prefix("oc_")
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()))
    });
    let id_flagged = verdict
        .as_ref()
        .err()
        .is_some_and(|v| v.list().iter().any(|v| v.field == "chat_id"));
    assert_eq!(id_ok, !id_flagged, "chat_id {param:?}: {verdict:?}");

    if let Err(v) = verdict {
        well_formed(v);
    }

    // The body, against the simulated Feishu.
    let body_only = Contract {
        params: vec![],
        headers: vec![],
        ..builtin(route_id).expect("contract")
    };
    let ours = body_only.check(&RequestView {
        route,
        path: &path,
        headers: &headers,
        body,
    });
    let repeated = ours.as_ref().err().is_some_and(|v| {
        v.list()
            .iter()
            .any(|v| v.description.contains("more than once"))
    });
    if !repeated {
        let sim = if route_id == PUT_TOP_NOTICE {
            put_top_notice_ok(body)
        } else {
            delete_top_notice_ok(body)
        };
        assert_eq!(
            ours.is_ok(),
            sim,
            "{route_id} body {:?}: {ours:?}",
            String::from_utf8_lossy(body)
        );
    }
});

fn well_formed(v: Violations) {
    assert!(!v.list().is_empty());
    for x in v.list() {
        if let Some(value) = &x.value {
            assert!(value.chars().count() <= MAX_VALUE_CHARS + 1, "{x:?}");
        }
        assert!(!x.description.is_empty());
        assert!(
            x.field.chars().count() <= 4 * (MAX_VALUE_CHARS + 1) + 16,
            "{x:?}"
        );
    }
    let json = v.to_json();
    assert_eq!(json["code"], 232001);
    assert!(json["msg"].is_string());
    assert!(json["error"]["field_violations"].is_array());
    let resp = GatewayError::Invalid(Box::new(v)).into_response();
    assert_eq!(resp.status(), 400);
}
