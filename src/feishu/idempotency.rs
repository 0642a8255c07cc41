//! Feishu's idempotency keys: the endpoints where a caller-chosen field makes
//! a repeated call harmless, because Feishu acts at most once per key
//! (`../shared/feishu-platform.md` §3.2). A request carrying its endpoint's
//! key may be sent again after a transient failure; any other POST may not.
//!
//! [`KEYS`] is the table, as data: method, path template (`:name` matches one
//! segment), where the key travels and its name. A field outside its
//! endpoint proves nothing (a `uuid` elsewhere may be an entity id), so a
//! key counts only on its own endpoint, only where Feishu reads it, and only
//! when it is a non-empty string.

use http::Method;

/// Where an endpoint's idempotency key travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPlace {
    /// A top-level string field of the JSON body.
    Body,
    /// A query parameter.
    Query,
}

/// One endpoint that takes an idempotency key.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKey {
    /// The endpoint's method, e.g. `POST`.
    pub method: &'static str,
    /// Its path template, e.g. `/open-apis/im/v1/messages/:message_id/reply`.
    pub template: &'static str,
    /// Body or query.
    pub place: KeyPlace,
    /// The key's name: `uuid` or `client_token`.
    pub field: &'static str,
}

const fn key(
    method: &'static str,
    template: &'static str,
    place: KeyPlace,
    field: &'static str,
) -> IdempotencyKey {
    IdempotencyKey {
        method,
        template,
        place,
        field,
    }
}

use KeyPlace::{Body, Query};

/// The endpoints with an idempotency key (feishu-platform.md §3.2; the
/// windows are Feishu's: messages 1 h, chats 10 h, tasks 5 min).
pub const KEYS: &[IdempotencyKey] = &[
    // Send a message / reply: "持有相同 uuid 的请求，在 1 小时内至多成功发送一条消息".
    key("POST", "/open-apis/im/v1/messages", Body, "uuid"),
    key(
        "POST",
        "/open-apis/im/v1/messages/:message_id/reply",
        Body,
        "uuid",
    ),
    // Create a chat: the same uuid (+ owner) creates one chat in 10 h.
    key("POST", "/open-apis/im/v1/chats", Query, "uuid"),
    // Create an approval instance: a reused uuid fails with 60012.
    key("POST", "/open-apis/approval/v4/instances", Body, "uuid"),
    // Bitable record and field creation: `client_token` (a UUIDv4) in the query.
    key(
        "POST",
        "/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records",
        Query,
        "client_token",
    ),
    key(
        "POST",
        "/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records/batch_create",
        Query,
        "client_token",
    ),
    key(
        "POST",
        "/open-apis/bitable/v1/apps/:app_token/tables/:table_id/fields",
        Query,
        "client_token",
    ),
    // Docx block operations: `client_token` in the query; the answer echoes it.
    key(
        "POST",
        "/open-apis/docx/v1/documents/:document_id/blocks/:block_id/children",
        Query,
        "client_token",
    ),
    key(
        "PATCH",
        "/open-apis/docx/v1/documents/:document_id/blocks/:block_id",
        Query,
        "client_token",
    ),
    key(
        "PATCH",
        "/open-apis/docx/v1/documents/:document_id/blocks/batch_update",
        Query,
        "client_token",
    ),
    key(
        "DELETE",
        "/open-apis/docx/v1/documents/:document_id/blocks/:block_id/children/batch_delete",
        Query,
        "client_token",
    ),
    // Task v2 create: `client_token` is a field of the task in the body
    // (kept 5 minutes after success, per API and caller).
    key("POST", "/open-apis/task/v2/tasks", Body, "client_token"),
];

/// The idempotency key of the endpoint `method` `path` names, if it has one.
pub fn key_for(method: &Method, path: &str) -> Option<&'static IdempotencyKey> {
    KEYS.iter()
        .find(|k| k.method == method.as_str() && template_matches(k.template, path))
}

/// Whether a request carries its endpoint's idempotency key: a non-empty
/// `field` in the query, or a non-empty string `field` at the top of a JSON
/// object body. `false` for endpoints without one.
pub fn carries_key(method: &Method, path: &str, query: Option<&str>, body: &[u8]) -> bool {
    let Some(k) = key_for(method, path) else {
        return false;
    };
    match k.place {
        Query => query.is_some_and(|q| {
            q.split('&').any(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                name == k.field && !value.is_empty()
            })
        }),
        Body => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.get(k.field)
                    .and_then(|f| f.as_str())
                    .map(|s| !s.is_empty())
            })
            .unwrap_or(false),
    }
}

/// `path` against a template whose `:name` segments match one non-empty
/// segment each.
fn template_matches(template: &str, path: &str) -> bool {
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) => {
                let ok = match ts.strip_prefix(':') {
                    Some(_) => !ps.is_empty(),
                    None => ts == ps,
                };
                if !ok {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_is_under_open_apis_and_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for k in KEYS {
            assert!(k.template.starts_with("/open-apis/"), "{}", k.template);
            assert!(seen.insert((k.method, k.template)), "{} twice", k.template);
            assert!(k.method.parse::<Method>().is_ok());
        }
    }

    #[test]
    fn a_body_uuid_counts_on_its_own_endpoint_only() {
        let post = Method::POST;
        let body = br#"{"receive_id":"oc_1","msg_type":"text","uuid":"a-1"}"#;
        assert!(carries_key(&post, "/open-apis/im/v1/messages", None, body));
        assert!(carries_key(
            &post,
            "/open-apis/im/v1/messages/om_1/reply",
            None,
            body
        ));
        // The same field on another endpoint proves nothing.
        assert!(!carries_key(
            &post,
            "/open-apis/im/v1/chats/oc_1/top_notice/put_top_notice",
            None,
            body
        ));
        // Nor on another method, nor a deeper path.
        assert!(!carries_key(
            &Method::PUT,
            "/open-apis/im/v1/messages",
            None,
            body
        ));
        assert!(!carries_key(
            &post,
            "/open-apis/im/v1/messages/om_1/reply/x",
            None,
            body
        ));
        // Empty, absent, not a string, not at the top, not JSON: no key.
        for body in [
            &br#"{"uuid":""}"#[..],
            br#"{"msg_type":"text"}"#,
            br#"{"uuid":17}"#,
            br#"{"content":{"uuid":"a"}}"#,
            b"uuid=a",
            b"",
        ] {
            assert!(!carries_key(&post, "/open-apis/im/v1/messages", None, body));
        }
        // The query is not where a message's key travels.
        assert!(!carries_key(
            &post,
            "/open-apis/im/v1/messages",
            Some("uuid=a"),
            b"{}"
        ));
    }

    #[test]
    fn a_query_key_counts_when_present_and_not_empty() {
        let post = Method::POST;
        let records = "/open-apis/bitable/v1/apps/bas_1/tables/tbl_1/records";
        assert!(carries_key(
            &post,
            records,
            Some("user_id_type=open_id&client_token=fe599b60-450f-46ff-b2ef-9f6675625b97"),
            b"{}"
        ));
        assert!(!carries_key(&post, records, Some("client_token="), b"{}"));
        assert!(!carries_key(&post, records, Some("xclient_token=a"), b"{}"));
        assert!(!carries_key(
            &post,
            records,
            None,
            br#"{"client_token":"a"}"#
        ));
        assert!(carries_key(
            &post,
            "/open-apis/im/v1/chats",
            Some("uuid=u1"),
            b"{}"
        ));
        assert!(!carries_key(
            &Method::PATCH,
            "/open-apis/docx/v1/documents/d/blocks/b",
            Some("document_revision_id=-1"),
            b"{}"
        ));
    }
}
