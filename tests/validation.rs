//! Request validation through real sockets: bad input is answered by the
//! gateway in Feishu's words, before any quota is spent, and nothing
//! reaches Feishu.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::config::{Route, UnknownFields, Validation};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DELETE_PATH: &str = "/open-apis/im/v1/chats/oc_123/top_notice/delete_top_notice";
/// One request per 10 s: any spent quota would show at once.
const TIGHT: &[(u32, Duration)] = &[(1, Duration::from_secs(10))];

async fn post(h: &Harness, path: &str, content_type: Option<&str>, body: &str) -> Answer {
    let auth = format!("Bearer {CLIENT_KEY}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(ct) = content_type {
        headers.push(("content-type", ct));
    }
    h.call(Method::POST, path, &headers, body).await
}

fn violation(a: &Answer, i: usize) -> (String, String) {
    let v = a.json();
    let f = &v["error"]["field_violations"][i];
    (
        f["field"].as_str().unwrap_or_default().to_string(),
        f["description"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn every_rule_has_its_field_and_nothing_reaches_feishu_or_spends_quota() {
    let h = start_with(sim_config(), |c| c.put_limits(TIGHT)).await;
    h.ready().await;
    let json = Some("application/json; charset=utf-8");
    let cases: Vec<(&str, Option<&str>, &str, &str, &str)> = vec![
        // (path, content type, body, field, description fragment)
        (
            "/open-apis/im/v1/chats/chat123/top_notice/put_top_notice",
            json,
            PUT_BODY,
            "chat_id",
            "oc_",
        ),
        (
            "/open-apis/im/v1/chats/oc_1%2F2/top_notice/put_top_notice",
            json,
            PUT_BODY,
            "chat_id",
            "",
        ),
        (
            PUT_PATH,
            Some("text/plain"),
            PUT_BODY,
            "Content-Type",
            "application/json",
        ),
        (PUT_PATH, None, PUT_BODY, "Content-Type", ""),
        (PUT_PATH, json, "[1,2]", "body", "object"),
        (PUT_PATH, json, "{}", "chat_top_notice", "required"),
        (
            PUT_PATH,
            json,
            r#"{"chat_top_notice":{}}"#,
            "chat_top_notice",
            "array",
        ),
        (
            PUT_PATH,
            json,
            r#"{"chat_top_notice":[]}"#,
            "chat_top_notice",
            "",
        ),
        (
            PUT_PATH,
            json,
            r#"{"chat_top_notice":[5]}"#,
            "chat_top_notice[0]",
            "object",
        ),
        (
            PUT_PATH,
            json,
            r#"{"chat_top_notice":[{"action_type":"3"}]}"#,
            "chat_top_notice[0].action_type",
            "",
        ),
        (
            PUT_PATH,
            json,
            r#"{"chat_top_notice":[{"action_type":1,"message_id":"om_1"}]}"#,
            "chat_top_notice[0].action_type",
            "string",
        ),
        (
            PUT_PATH,
            json,
            r#"{"chat_top_notice":[{"action_type":"1"}]}"#,
            "chat_top_notice[0].message_id",
            "required when action_type is \"1\"",
        ),
        (
            PUT_PATH,
            json,
            r#"{"chat_top_notice":[{"action_type":"1","message_id":"msg_1"}]}"#,
            "chat_top_notice[0].message_id",
            "om_",
        ),
        (
            PUT_PATH,
            json,
            r#"{"chat_top_notice":[{"action_type":"1","#,
            "body",
            "line",
        ),
    ];
    for (path, ct, body, field, fragment) in &cases {
        let a = post(&h, path, *ct, body).await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "{path} {body}: {:?}",
            a.body
        );
        assert_eq!(a.header("x-gateway-error"), Some("invalid-request"));
        assert!(a
            .header("content-type")
            .unwrap()
            .starts_with("application/json"));
        assert_eq!(a.code(), 232001);
        let (f, d) = violation(&a, 0);
        assert_eq!(&f, field, "{body}: {:?}", a.json());
        assert!(d.contains(fragment), "{body}: {d:?} lacks {fragment:?}");
        let msg = a.json()["msg"].as_str().unwrap().to_string();
        assert!(msg.contains(field), "msg names the field: {msg}");
    }
    assert!(h.sim.requests().is_empty(), "nothing reached Feishu");
    // No quota was spent: the one request per 10 s still goes through.
    assert_eq!(h.put("oc_123").await.code(), 0);
}

#[tokio::test]
async fn every_violation_is_listed_and_values_are_capped() {
    let h = start(sim_config()).await;
    let long = "x".repeat(5000);
    let body = format!(
        r#"{{"chat_top_notice":[{{"action_type":"1"}},{{"action_type":"1","message_id":"{long}"}},{{"action_type":2}}]}}"#
    );
    let a = post(&h, PUT_PATH, Some("application/json"), &body).await;
    let v = a.json();
    let list = v["error"]["field_violations"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{v}");
    let fields: Vec<&str> = list.iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert_eq!(
        fields,
        [
            "chat_top_notice[0].message_id",
            "chat_top_notice[1].message_id",
            "chat_top_notice[2].action_type"
        ]
    );
    let echoed = list[1]["value"].as_str().unwrap();
    assert!(
        echoed.chars().count() <= 80,
        "value capped: {}",
        echoed.len()
    );
    assert!(a.body.len() < 2000, "never echoes more than needed");
}

#[tokio::test]
async fn the_sdks_bodies_and_the_three_delete_variants_pass() {
    let h = start(sim_config()).await;
    for body in [
        PUT_BODY,
        r#"{"chat_top_notice":[{"action_type":"2"}]}"#,
        r#"{"chat_top_notice":[{}]}"#,
        r#"{"chat_top_notice":[{"action_type":"2","message_id":"ignored"}],"extra":1}"#,
    ] {
        let a = post(&h, PUT_PATH, Some("application/json; charset=utf-8"), body).await;
        assert_eq!(a.code(), 0, "{body}: {:?}", a.body);
    }
    for (ct, body) in [
        (Some("application/json"), ""),
        (Some("application/json"), "{}"),
        (None, ""),
    ] {
        let a = post(&h, DELETE_PATH, ct, body).await;
        assert_eq!(a.code(), 0, "{ct:?} {body:?}: {:?}", a.body);
    }
}

#[tokio::test]
async fn hostile_bodies_get_bounded_answers_and_the_gateway_stays_healthy() {
    let h = start_with(sim_config(), |c| {
        c.max_body_bytes(65536)
            .body_read_timeout(Duration::from_millis(500))
    })
    .await;
    let json = Some("application/json");
    // Oversized.
    let big = format!(
        r#"{{"chat_top_notice":[],"pad":"{}"}}"#,
        "x".repeat(100_000)
    );
    let a = post(&h, PUT_PATH, json, &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.code(), 232001);
    assert_eq!(a.json()["error"]["field_violations"][0]["field"], "body");
    // The unread body makes the connection unusable: the answer says so,
    // so the client's pool does not reuse it for the next request.
    assert_eq!(a.headers["connection"], "close");
    // Deeply nested.
    let deep = "[".repeat(60_000);
    let a = post(&h, PUT_PATH, json, &deep).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    // Not UTF-8.
    let auth = format!("Bearer {CLIENT_KEY}");
    let mut s = tokio::net::TcpStream::connect(h.gw.addr()).await.unwrap();
    let head = format!(
        "POST {PUT_PATH} HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-type: application/json\r\ncontent-length: 4\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[0x7b, 0xff, 0xfe, 0x7d]).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("232001"));
    // Slow drip: the body never completes; the answer comes at the body
    // timeout, not never.
    let mut s = tokio::net::TcpStream::connect(h.gw.addr()).await.unwrap();
    let head = format!(
        "POST {PUT_PATH} HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n{{\"chat"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("answered at the body timeout")
        .unwrap();
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 408"));
    assert!(h.sim.requests().is_empty());
    assert_eq!(h.admin("/healthz").await.status, StatusCode::OK);
    assert_eq!(h.put("oc_123").await.code(), 0, "still serving");
}

#[tokio::test]
async fn log_only_forwards_and_counts_and_unknown_fields_can_be_rejected() {
    let h = start_with(sim_config(), |c| {
        c.route(Route::post(PUT_ROUTE).validation(Validation::LogOnly))
            .route(Route::post(DELETE_ROUTE).unknown_fields(UnknownFields::Reject))
    })
    .await;
    let a = post(
        &h,
        PUT_PATH,
        Some("application/json"),
        r#"{"chat_top_notice":[{"action_type":"1"}]}"#,
    )
    .await;
    assert_eq!(a.code(), 232001, "Feishu's own answer");
    assert!(
        a.header("x-gateway-error").is_none(),
        "forwarded in log-only mode"
    );
    assert_eq!(h.sim.requests().len(), 1);
    let m = h.metrics().await;
    assert!(
        m.contains("feishu_gateway_validation_would_reject_total{app=\"ops-bot\""),
        "{m}"
    );

    let a = post(
        &h,
        DELETE_PATH,
        Some("application/json"),
        r#"{"surprise":1}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(violation(&a, 0).0, "surprise");
}

const SEND_ROUTE: &str = "/open-apis/im/v1/messages";
const REPLY_ROUTE: &str = "/open-apis/im/v1/messages/:message_id/reply";
const EDIT_ROUTE: &str = "/open-apis/im/v1/messages/:message_id";
const SEND_PATH: &str = "/open-apis/im/v1/messages?receive_id_type=open_id";
const REPLY_PATH: &str = "/open-apis/im/v1/messages/om_dc13264520392913993dd051dba21dcf/reply";
const EDIT_PATH: &str = "/open-apis/im/v1/messages/om_dc13264520392913993dd051dba21dcf";
/// What the Python SDK (lark-oapi 1.7.5) sends for a text message.
const SEND_BODY: &str = r#"{"receive_id": "ou_7d8a6e6df7621556ce0d21922b676706ccs", "msg_type": "text", "content": "{\"text\": \"hello <b>\\u4e16\\u754c</b>\\nline2\"}", "uuid": "a0d69e20-1dd1-458b-k525-dfeca4015204"}"#;
const REPLY_BODY: &str =
    r#"{"content": "{\"text\": \"re\"}", "msg_type": "text", "reply_in_thread": true}"#;
const EDIT_BODY: &str = r#"{"msg_type":"post","content":"{\"zh_cn\":{\"title\":\"t\",\"content\":[[{\"tag\":\"text\",\"text\":\"y\"}]]}}"}"#;

async fn message_call(h: &Harness, method: Method, path: &str, body: &str) -> Answer {
    let auth = format!("Bearer {CLIENT_KEY}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json; charset=utf-8"),
    ];
    h.call(method, path, &headers, body).await
}

#[tokio::test]
async fn bad_message_calls_get_the_message_codes_and_nothing_reaches_feishu_or_spends_quota() {
    let h = start_with(sim_config(), |c| {
        c.route(Route::post(SEND_ROUTE).limits(TIGHT))
            .route(Route::post(REPLY_ROUTE).limits(TIGHT))
            .route(Route::new(Method::PUT, EDIT_ROUTE).limits(TIGHT))
    })
    .await;
    h.ready().await;
    let long_text =
        serde_json::to_string(&format!(r#"{{"text":"{}"}}"#, "x".repeat(160_000))).unwrap();
    let too_long = format!(r#"{{"receive_id":"ou_1","msg_type":"text","content":{long_text}}}"#);
    let cases: Vec<(Method, &str, String, i64, &str, &str)> = vec![
        // (method, path, body, code, field, description fragment)
        (
            Method::POST,
            "/open-apis/im/v1/messages",
            SEND_BODY.into(),
            230001,
            "receive_id_type",
            "required",
        ),
        (
            Method::POST,
            "/open-apis/im/v1/messages?receive_id_type=openid",
            SEND_BODY.into(),
            230001,
            "receive_id_type",
            "\"chat_id\"",
        ),
        (
            Method::POST,
            SEND_PATH,
            r#"{"receive_id":"ou_1","msg_type":"text","content":{"text":"hi"}}"#.into(),
            230001,
            "content",
            "serialized",
        ),
        (
            Method::POST,
            SEND_PATH,
            r#"{"receive_id":"ou_1","msg_type":"text","content":"hi"}"#.into(),
            230001,
            "content",
            "must hold JSON",
        ),
        (
            Method::POST,
            SEND_PATH,
            r#"{"receive_id":"ou_1","msg_type":"markdown","content":"{}"}"#.into(),
            230001,
            "msg_type",
            "\"interactive\"",
        ),
        (
            Method::POST,
            SEND_PATH,
            r#"{"msg_type":"text","content":"{}"}"#.into(),
            230001,
            "receive_id",
            "required",
        ),
        (
            Method::POST,
            SEND_PATH,
            format!(
                r#"{{"receive_id":"ou_1","msg_type":"text","content":"{{}}","uuid":"{}"}}"#,
                "u".repeat(51)
            ),
            230001,
            "uuid",
            "at most 50 characters",
        ),
        (
            Method::POST,
            SEND_PATH,
            too_long,
            230025,
            "content",
            "at most 153600 bytes (150 KB)",
        ),
        (
            Method::POST,
            REPLY_PATH,
            r#"{"msg_type":"text","content":"{}","reply_in_thread":"true"}"#.into(),
            230001,
            "reply_in_thread",
            "send true",
        ),
        (
            Method::POST,
            "/open-apis/im/v1/messages/oc_1/reply",
            REPLY_BODY.into(),
            230001,
            "message_id",
            "om_",
        ),
        (
            Method::PUT,
            EDIT_PATH,
            r#"{"msg_type":"interactive","content":"{}"}"#.into(),
            230001,
            "msg_type",
            r#"must be "text" or "post""#,
        ),
    ];
    for (method, path, body, code, field, fragment) in &cases {
        let a = message_call(&h, method.clone(), path, body).await;
        let what = format!("{method} {path} {:.80}", body);
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{what}: {:?}", a.text());
        assert_eq!(
            a.header("x-gateway-error"),
            Some("invalid-request"),
            "{what}"
        );
        assert_eq!(a.code(), *code, "{what}: {:?}", a.json());
        let (f, d) = violation(&a, 0);
        assert_eq!(&f, field, "{what}: {:?}", a.json());
        assert!(d.contains(fragment), "{what}: {d:?} lacks {fragment:?}");
        let msg = a.json()["msg"].as_str().unwrap().to_string();
        assert!(msg.contains(field), "msg names the field: {msg}");
    }
    assert!(h.sim.requests().is_empty(), "nothing reached Feishu");
    // No quota was spent: the one call per 10 s of each route still goes.
    for (method, path, body) in [
        (Method::POST, SEND_PATH, SEND_BODY),
        (Method::POST, REPLY_PATH, REPLY_BODY),
        (Method::PUT, EDIT_PATH, EDIT_BODY),
    ] {
        let a = message_call(&h, method.clone(), path, body).await;
        assert!(
            a.header("x-gateway-error").is_none(),
            "{method} {path}: answered by the gateway: {}",
            a.text()
        );
        assert_eq!(a.code(), 0, "{method} {path}: {}", a.text());
    }
    assert_eq!(h.sim.requests().len(), 3);
}

#[tokio::test]
async fn good_message_calls_reach_feishu_unchanged() {
    let h = start(sim_config()).await;
    h.ready().await;
    let node_send = r#"{"receive_id":"oc_84983ff6516d731e5b5f68d4ea2e1da5","msg_type":"post","content":"{\"zh_cn\":{\"title\":\"t\",\"content\":[[{\"tag\":\"text\",\"text\":\"x\"}]]}}"}"#;
    let calls = [
        (Method::POST, SEND_PATH, SEND_BODY),
        (
            Method::POST,
            "/open-apis/im/v1/messages?receive_id_type=chat_id",
            node_send,
        ),
        (Method::POST, REPLY_PATH, REPLY_BODY),
        (Method::PUT, EDIT_PATH, EDIT_BODY),
    ];
    for (method, path, body) in &calls {
        let a = message_call(&h, method.clone(), path, body).await;
        // Forwarded, not answered by the gateway, and taken by the
        // simulated Feishu (which serves every catalog endpoint).
        assert!(
            a.header("x-gateway-error").is_none(),
            "{method} {path}: answered by the gateway: {}",
            a.text()
        );
        assert_eq!(a.status, StatusCode::OK, "{method} {path}: {}", a.text());
        assert_eq!(a.code(), 0, "{method} {path}: {}", a.text());
    }
    let seen = h.sim.requests();
    assert_eq!(seen.len(), calls.len());
    for (r, (method, path, body)) in seen.iter().zip(&calls) {
        let (p, q) = path
            .split_once('?')
            .map_or((*path, None), |(p, q)| (p, Some(q)));
        assert_eq!((&r.method, r.path.as_str()), (method, p));
        assert_eq!(r.query.as_deref(), q, "the query is forwarded as sent");
        assert_eq!(r.body, body.as_bytes(), "the body is forwarded as sent");
        assert!(r.bearer.as_deref().is_some_and(|t| t.starts_with("t-")));
    }
}
