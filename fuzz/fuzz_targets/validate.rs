//! Fuzzes request validation and path parameter extraction.
//!
//! Input: one flag byte, then `segment \n content-type \n body`.
//! - flag bits 3-4: the family: 0 a chat's top notice, 1 message send,
//!   2 message reply, 3 message edit;
//! - flag bit 0 (top notice): put_top_notice (0) or delete_top_notice (1);
//! - flag bit 1: unknown fields Allow (0) or Reject (1);
//! - flag bit 2: the segment is a whole path (1) or the id put into the
//!   route template (0). For send, the segment is the query string instead.
//!
//! Checks, besides "never panics":
//! - `Route::param` of a matching path is a non-empty segment without '/';
//! - the chat_id / message_id verdict equals an independent reference
//!   (`oc_` / `om_` + alnum), and so does send's `receive_id_type`;
//! - every echoed value is capped, the answer is Feishu-shaped JSON with the
//!   endpoint's code;
//! - the body verdict agrees with an independent check (unknown fields
//!   allowed): the simulated Feishu's for top notice, a `serde_json::Value`
//!   reading of Feishu's pages for messages; except where a known key is
//!   repeated: the gateway refuses that as ambiguous, the references let the
//!   last copy win.
#![no_main]

use feishu_gateway::endpoints::messages::{
    CARD_MAX_BYTES, EDIT_TYPES, RECEIVE_ID_TYPES, REPLY_TYPES, SEND_TYPES, TEXT_MAX_BYTES,
};
use feishu_gateway::endpoints::{
    builtin_contract as builtin, Catalog, DELETE_TOP_NOTICE, EDIT_MESSAGE, PUT_TOP_NOTICE,
    REPLY_MESSAGE, SEND_MESSAGE,
};
use feishu_gateway::proxy::error::GatewayError;
use feishu_gateway::validate::{Contract, RequestView, UnknownFields, Violations, MAX_VALUE_CHARS};
use feishu_sim::contract::{delete_top_notice_ok, put_top_notice_ok};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let segment = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let content_type = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();

    let route_id = match (flags >> 3) & 3 {
        0 if flags & 1 == 0 => PUT_TOP_NOTICE,
        0 => DELETE_TOP_NOTICE,
        1 => SEND_MESSAGE,
        2 => REPLY_MESSAGE,
        _ => EDIT_MESSAGE,
    };
    let unknown = if flags & 2 == 0 {
        UnknownFields::Allow
    } else {
        UnknownFields::Reject
    };
    // Built once: the catalog holds every Feishu endpoint (1,559 routes),
    // which would otherwise cost more than the check itself.
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    let catalog = CATALOG.get_or_init(Catalog::builtin);
    let route = catalog
        .routes()
        .iter()
        .find(|r| r.id == route_id)
        .expect("built-in route");
    // The path parameter of the route, if it has one, and its prefix.
    let id = match route_id {
        PUT_TOP_NOTICE | DELETE_TOP_NOTICE => Some(("chat_id", "oc_")),
        REPLY_MESSAGE | EDIT_MESSAGE => Some(("message_id", "om_")),
        _ => None,
    };
    let (path, query) = match id {
        None => (route.template.clone(), Some(segment.as_str())),
        Some(_) if flags & 4 != 0 => (segment.clone(), None),
        Some((name, _)) => (route.template.replace(&format!(":{name}"), &segment), None),
    };

    // Path parameter extraction: a path the catalog routes here has its
    // parameter, a non-empty segment without '/'.
    let param = id.and_then(|(name, _)| route.param(&path, name));
    if let Some((name, _)) = id {
        let found = catalog
            .find(&route.method, &path)
            .map(|i| &catalog.route(i).id);
        if found == Some(&route.id) {
            let p = param.expect("a matching path has its parameter");
            assert!(
                !p.is_empty() && !p.contains('/'),
                "{name}: {path:?} -> {p:?}"
            );
        }
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
        query,
        headers: &headers,
        body,
    };
    let verdict = contract.check(&req);
    let flagged = |field: &str| {
        verdict
            .as_ref()
            .err()
            .is_some_and(|v| v.list().iter().any(|v| v.field == field))
    };

    // The path parameter against a reference written independently.
    if let Some((name, prefix)) = id {
        let ok = param.is_some_and(|p| {
            p.strip_prefix(prefix)
                .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()))
        });
        assert_eq!(ok, !flagged(name), "{name} {param:?}: {verdict:?}");
    }
    // receive_id_type too.
    if route_id == SEND_MESSAGE {
        let ok = receive_id_type_ok(query.unwrap_or(""));
        assert_eq!(ok, !flagged("receive_id_type"), "{query:?}: {verdict:?}");
    }

    if let Err(v) = verdict {
        let codes: &[i64] = match route_id {
            PUT_TOP_NOTICE | DELETE_TOP_NOTICE => &[232001],
            _ => &[230001, 230025],
        };
        well_formed(v, codes);
    }

    // The body, against the independent references.
    let body_only = Contract {
        params: vec![],
        query: vec![],
        headers: vec![],
        ..builtin(route_id).expect("contract")
    };
    let ours = body_only.check(&RequestView {
        route,
        path: &path,
        query,
        headers: &headers,
        body,
    });
    let repeated = ours.as_ref().err().is_some_and(|v| {
        v.list()
            .iter()
            .any(|v| v.description.contains("more than once"))
    });
    if !repeated {
        let reference = match route_id {
            PUT_TOP_NOTICE => put_top_notice_ok(body),
            DELETE_TOP_NOTICE => delete_top_notice_ok(body),
            _ => message_ok(route_id, body),
        };
        assert_eq!(
            ours.is_ok(),
            reference,
            "{route_id} body {:?}: {ours:?}",
            String::from_utf8_lossy(body)
        );
    }
});

/// Feishu's send, reply and edit pages, read through a `Value`.
fn message_ok(route_id: &str, body: &[u8]) -> bool {
    let Ok(Value::Object(root)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let types = match route_id {
        SEND_MESSAGE => SEND_TYPES,
        REPLY_MESSAGE => REPLY_TYPES,
        _ => EDIT_TYPES,
    };
    let Some(Value::String(msg_type)) = root.get("msg_type") else {
        return false;
    };
    let Some(Value::String(content)) = root.get("content") else {
        return false;
    };
    let max = match msg_type.as_str() {
        "text" => TEXT_MAX_BYTES,
        "post" | "interactive" => CARD_MAX_BYTES,
        _ => usize::MAX,
    };
    let content_ok = matches!(serde_json::from_str::<Value>(content), Ok(Value::Object(_)))
        && content.len() <= max;
    let uuid_ok = match root.get("uuid") {
        None => true,
        Some(Value::String(u)) => u.chars().count() <= 50,
        Some(_) => false,
    };
    let rest_ok = match route_id {
        SEND_MESSAGE => {
            matches!(root.get("receive_id"), Some(Value::String(r)) if !r.is_empty()) && uuid_ok
        }
        REPLY_MESSAGE => {
            matches!(root.get("reply_in_thread"), None | Some(Value::Bool(_))) && uuid_ok
        }
        _ => true,
    };
    types.contains(&msg_type.as_str()) && content_ok && rest_ok
}

/// Exactly one `receive_id_type`, decoded, among the documented values.
fn receive_id_type_ok(query: &str) -> bool {
    let values: Vec<Option<String>> = query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (unescape(k).as_deref() == Some("receive_id_type")).then(|| unescape(v))
        })
        .collect();
    matches!(values.as_slice(), [Some(v)] if RECEIVE_ID_TYPES.contains(&v.as_str()))
}

/// Form decoding (`+`, `%XX`), written apart from the gateway's.
fn unescape(s: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                u8::try_from(hi * 16 + lo).ok()?
            }
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

fn well_formed(v: Violations, codes: &[i64]) {
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
    assert!(
        codes.contains(&json["code"].as_i64().unwrap_or(0)),
        "{json}"
    );
    assert!(json["msg"].is_string());
    assert!(json["error"]["field_violations"].is_array());
    let resp = GatewayError::Invalid(Box::new(v)).into_response();
    assert_eq!(resp.status(), 400);
}
