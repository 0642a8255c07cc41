//! Per-resource limits: Feishu limits some calls per chat, message,
//! document or table, on top of the per-app tier (feishu-platform.md §1.3).
//! A [`ResourceRule`] names where the resource's id is in the request
//! ([`KeySource`]), its windows, an optional cap on calls in flight per
//! resource, and whether every app shares the resource's limit (a chat's
//! 5/s is shared by all bots in it).
//!
//! The built-in rules ([`BUILTIN_RULES`]) are below, with the endpoints
//! each applies to; `[[routes.resource_limits]]` in the config adds more.

use http::Method;

use crate::quota::Window;

/// Where a resource's id is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A path parameter of the route's template (`path.chat_id`).
    Path(String),
    /// A query parameter (`query.receive_id_type`).
    Query(String),
    /// A top-level string field of the JSON body (`body.receive_id`).
    Body(String),
    /// The endpoint itself (`endpoint`): one key per (app, endpoint), for
    /// limits of an endpoint beyond its tier (drive uploads: one in flight,
    /// 10,000 a day).
    Endpoint,
}

impl KeySource {
    /// Reads `path.<name>`, `query.<name>`, `body.<field>` or `endpoint`.
    pub fn parse(s: &str) -> Result<KeySource, String> {
        let named = |rest: &str| {
            if rest.is_empty()
                || !rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                Err(format!(
                    "{s:?}: the name after the dot must be letters, digits, '_' or '-'"
                ))
            } else {
                Ok(rest.to_string())
            }
        };
        if s == "endpoint" {
            Ok(KeySource::Endpoint)
        } else if let Some(r) = s.strip_prefix("path.") {
            named(r).map(KeySource::Path)
        } else if let Some(r) = s.strip_prefix("query.") {
            named(r).map(KeySource::Query)
        } else if let Some(r) = s.strip_prefix("body.") {
            named(r).map(KeySource::Body)
        } else {
            Err(format!(
                "{s:?}: expected \"path.<param>\", \"query.<name>\", \"body.<field>\" or \"endpoint\""
            ))
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Path(n) => write!(f, "path.{n}"),
            KeySource::Query(n) => write!(f, "query.{n}"),
            KeySource::Body(n) => write!(f, "body.{n}"),
            KeySource::Endpoint => f.write_str("endpoint"),
        }
    }
}

/// One per-resource limit.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRule {
    /// The rule's name: routes that name the same rule share its keys (a
    /// document's 3 edits/s span four block endpoints). Also the metrics'
    /// `resource` label.
    pub name: String,
    /// Where the resource id is.
    pub key: KeySource,
    /// Another value that qualifies the id (`query.receive_id_type`: an
    /// `open_id` and a `chat_id` are different resources).
    pub kind: Option<KeySource>,
    /// Windows per resource; all must hold. Windows longer than an hour
    /// (`10000/86400s`) are counted apart, so a day budget does not slow the
    /// per-second rate.
    pub limits: Vec<Window>,
    /// At most this many calls in flight per resource.
    pub concurrency: Option<u32>,
    /// Every app shares the resource's limit (`true`), or each app has its
    /// own (`false`).
    pub shared: bool,
    /// Resources held at most per app (per rule when shared); idle ones are
    /// forgotten once that cannot allow a violation.
    pub max_keys: usize,
}

/// Windows longer than this are counted apart from the rate (a day budget
/// must not slow the per-second rate to its daily average).
pub const LONG_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// The default `max_keys`.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// A built-in rule and the endpoints it applies to.
pub struct BuiltinRule {
    /// Name (see [`ResourceRule::name`]).
    pub name: &'static str,
    /// `path.x`, `query.x`, `body.x` or `endpoint`.
    pub key: &'static str,
    /// The qualifying value, if any.
    pub kind: Option<&'static str>,
    /// Windows as (requests, seconds).
    pub limits: &'static [(u32, u64)],
    /// Calls in flight per resource.
    pub concurrency: Option<u32>,
    /// Shared by all apps.
    pub shared: bool,
    /// (method, template) of the endpoints it applies to.
    pub endpoints: &'static [(Method, &'static str)],
}

const DOCX_BLOCKS: &[(Method, &str)] = &[
    (
        Method::PATCH,
        "/open-apis/docx/v1/documents/:document_id/blocks/:block_id",
    ),
    (
        Method::POST,
        "/open-apis/docx/v1/documents/:document_id/blocks/:block_id/children",
    ),
    (
        Method::DELETE,
        "/open-apis/docx/v1/documents/:document_id/blocks/:block_id/children/batch_delete",
    ),
    (
        Method::PATCH,
        "/open-apis/docx/v1/documents/:document_id/blocks/batch_update",
    ),
];

const BITABLE_WRITES: &[(Method, &str)] = &[
    (
        Method::POST,
        "/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records",
    ),
    (
        Method::PUT,
        "/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records/:record_id",
    ),
    (
        Method::DELETE,
        "/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records/:record_id",
    ),
    (
        Method::POST,
        "/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records/batch_create",
    ),
    (
        Method::POST,
        "/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records/batch_update",
    ),
    (
        Method::POST,
        "/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records/batch_delete",
    ),
];

const DRIVE_UPLOADS: &[(Method, &str)] = &[
    (Method::POST, "/open-apis/drive/v1/files/upload_all"),
    (Method::POST, "/open-apis/drive/v1/files/upload_prepare"),
    (Method::POST, "/open-apis/drive/v1/files/upload_part"),
    (Method::POST, "/open-apis/drive/v1/files/upload_finish"),
    (Method::POST, "/open-apis/drive/v1/medias/upload_all"),
    (Method::POST, "/open-apis/drive/v1/medias/upload_prepare"),
    (Method::POST, "/open-apis/drive/v1/medias/upload_part"),
    (Method::POST, "/open-apis/drive/v1/medias/upload_finish"),
];

/// Feishu's per-resource limits (feishu-platform.md §1.3). Shared across
/// apps where Feishu counts the resource, not the app: a chat's 5/s is
/// shared by every bot in it; the gateway also shares a user's, a
/// message's, a document's and a table's (stricter, never over).
pub const BUILTIN_RULES: &[BuiltinRule] = &[
    BuiltinRule {
        // "向同一用户发送消息的限频为 5 QPS、向同一群组发送消息的限频为群内机器人共享 5 QPS" → 230020
        name: "im.receiver",
        key: "body.receive_id",
        kind: Some("query.receive_id_type"),
        limits: &[(5, 1)],
        concurrency: None,
        shared: true,
        endpoints: &[(Method::POST, "/open-apis/im/v1/messages")],
    },
    BuiltinRule {
        // A reply goes to the chat of the message replied to; the gateway
        // cannot know that chat, so it holds replies to one message to 5/s.
        name: "im.reply",
        key: "path.message_id",
        kind: None,
        limits: &[(5, 1)],
        concurrency: None,
        shared: true,
        endpoints: &[(Method::POST, "/open-apis/im/v1/messages/:message_id/reply")],
    },
    BuiltinRule {
        // Updating one card message: 5/s per message.
        name: "im.card",
        key: "path.message_id",
        kind: None,
        limits: &[(5, 1)],
        concurrency: None,
        shared: true,
        endpoints: &[(Method::PATCH, "/open-apis/im/v1/messages/:message_id")],
    },
    BuiltinRule {
        // Docx: 3 edits/s per document (HTTP 429).
        name: "docx.document",
        key: "path.document_id",
        kind: None,
        limits: &[(3, 1)],
        concurrency: None,
        shared: true,
        endpoints: DOCX_BLOCKS,
    },
    BuiltinRule {
        // Bitable: one table takes no concurrent writes (1254291).
        name: "bitable.table",
        key: "path.table_id",
        kind: Some("path.app_token"),
        limits: &[],
        concurrency: Some(1),
        shared: true,
        endpoints: BITABLE_WRITES,
    },
    BuiltinRule {
        // Drive uploads: no concurrency, 5/s, 10,000 a day (1061045).
        name: "drive.upload",
        key: "endpoint",
        kind: None,
        limits: &[(5, 1), (10_000, 86_400)],
        concurrency: Some(1),
        shared: false,
        endpoints: DRIVE_UPLOADS,
    },
];

impl BuiltinRule {
    /// The rule as the catalog holds it.
    pub fn rule(&self) -> ResourceRule {
        ResourceRule {
            name: self.name.to_string(),
            key: KeySource::parse(self.key).expect("built-in key sources parse (tested)"),
            kind: self
                .kind
                .map(|k| KeySource::parse(k).expect("built-in key sources parse (tested)")),
            limits: self
                .limits
                .iter()
                .map(|&(n, s)| {
                    Window::new(n, std::time::Duration::from_secs(s)).expect("valid window")
                })
                .collect(),
            concurrency: self.concurrency,
            shared: self.shared,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sources_parse_and_print() {
        for s in [
            "path.chat_id",
            "query.receive_id_type",
            "body.receive_id",
            "endpoint",
        ] {
            assert_eq!(KeySource::parse(s).unwrap().to_string(), s);
        }
        for bad in ["chat_id", "path.", "body.a.b", "header.x"] {
            assert!(KeySource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_builtin_rule_is_valid() {
        for b in BUILTIN_RULES {
            let r = b.rule();
            assert!(
                !r.limits.is_empty() || r.concurrency.is_some(),
                "{}",
                r.name
            );
        }
    }
}
