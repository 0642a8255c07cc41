//! Unit tests of the message contracts (send, reply, edit) and of the rules
//! they brought to the engine: query parameters, booleans, strings of at
//! most N characters, JSON inside a string, and length caps chosen by a
//! sibling's value. The bodies the official SDKs send pass; every violation
//! is named; a differential property test holds the send contract to an
//! independent `serde_json::Value` reading of Feishu's page.

use super::json::Path;
use super::query::decode;
use super::text::text_problem;
use super::*;
use crate::endpoints::messages::{
    CARD_MAX_BYTES, EDIT_TYPES, RECEIVE_ID_TYPES, SEND_TYPES, TEXT_MAX_BYTES,
};
use crate::endpoints::{
    builtin_contract as builtin, Catalog, EDIT_MESSAGE, REPLY_MESSAGE, SEND_MESSAGE,
};
use crate::feishu::codes;

const MSG: &str = "om_dc13264520392913993dd051dba21dcf";
const USER: &str = "ou_7d8a6e6df7621556ce0d21922b676706ccs";
const JSON_UTF8: &str = "application/json; charset=utf-8";
/// Feishu's own example: `{"text":"test content"}`, serialized.
const TEXT: &str = r#""{\"text\":\"test content\"}""#;

use super::call_tests::{pairs, Call as Msg};

impl<'a> Msg<'a> {
    fn send(body: &'a str) -> Msg<'a> {
        Msg {
            route_id: SEND_MESSAGE,
            param: MSG,
            query: Some("receive_id_type=open_id"),
            content_type: Some(JSON_UTF8),
            body: body.as_bytes(),
            unknown_fields: UnknownFields::Allow,
        }
    }

    fn reply(body: &'a str) -> Msg<'a> {
        Msg {
            route_id: REPLY_MESSAGE,
            query: None,
            ..Msg::send(body)
        }
    }

    fn edit(body: &'a str) -> Msg<'a> {
        Msg {
            route_id: EDIT_MESSAGE,
            query: None,
            ..Msg::send(body)
        }
    }
}

/// A send body with these (already JSON) values.
fn send_body(msg_type: &str, content: &str) -> String {
    format!(r#"{{"receive_id":"{USER}","msg_type":{msg_type},"content":{content}}}"#)
}

/// `content` for a text message whose content is exactly `len` bytes once
/// decoded: `{"text":"xxx…"}`, serialized.
fn text_of_len(len: usize) -> String {
    let inner = format!(r#"{{"text":"{}"}}"#, "x".repeat(len - 11));
    assert_eq!(inner.len(), len);
    serde_json::to_string(&inner).unwrap()
}

#[test]
fn the_bodies_the_official_sdks_send_pass() {
    // Captured from lark-oapi 1.7.5 (Python) and @larksuiteoapi/node-sdk
    // 1.74.0 pointed at a local server (tests/sdk pins them); the Python SDK
    // writes ", " and ": " and escapes non-ASCII, Node writes compact JSON
    // and sends `Content-Type: application/json` without a charset.
    let python = [
        (
            SEND_MESSAGE,
            Some("receive_id_type=open_id"),
            r#"{"receive_id": "ou_7d8a6e6df7621556ce0d21922b676706ccs", "msg_type": "text", "content": "{\"text\": \"hello <b>\\u4e16\\u754c</b>\\nline2\"}", "uuid": "a0d69e20-1dd1-458b-k525-dfeca4015204"}"#,
        ),
        (
            SEND_MESSAGE,
            Some("receive_id_type=chat_id"),
            r#"{"receive_id": "oc_84983ff6516d731e5b5f68d4ea2e1da5", "msg_type": "interactive", "content": "{\"elements\": [{\"tag\": \"markdown\", \"content\": \"**hi**\"}]}"}"#,
        ),
        (
            REPLY_MESSAGE,
            None,
            r#"{"content": "{\"text\": \"re\"}", "msg_type": "text", "reply_in_thread": true, "uuid": "u-1"}"#,
        ),
        (
            EDIT_MESSAGE,
            None,
            r#"{"msg_type": "text", "content": "{\"text\": \"edited\"}"}"#,
        ),
    ];
    for (route_id, query, body) in python {
        let req = Msg {
            route_id,
            query,
            ..Msg::send(body)
        };
        assert_eq!(req.problems(), vec![], "{route_id} {body}");
    }
    let node = [
        (
            SEND_MESSAGE,
            Some("receive_id_type=open_id"),
            r#"{"receive_id":"ou_7d8a6e6df7621556ce0d21922b676706ccs","msg_type":"text","content":"{\"text\":\"hello <b>世界</b>\\nline2\"}","uuid":"a0d69e20"}"#,
        ),
        (
            SEND_MESSAGE,
            Some("receive_id_type=chat_id"),
            r#"{"receive_id":"oc_84983ff6516d731e5b5f68d4ea2e1da5","msg_type":"post","content":"{\"zh_cn\":{\"title\":\"t\",\"content\":[[{\"tag\":\"text\",\"text\":\"x\"}]]}}"}"#,
        ),
        (
            REPLY_MESSAGE,
            None,
            r#"{"msg_type":"text","content":"{\"text\":\"re\"}","reply_in_thread":false}"#,
        ),
        (
            EDIT_MESSAGE,
            None,
            r#"{"msg_type":"post","content":"{\"zh_cn\":{\"title\":\"t\",\"content\":[[{\"tag\":\"text\",\"text\":\"y\"}]]}}"}"#,
        ),
    ];
    for (route_id, query, body) in node {
        let req = Msg {
            route_id,
            query,
            content_type: Some("application/json"),
            ..Msg::send(body)
        };
        assert_eq!(req.problems(), vec![], "{route_id} {body}");
    }
    // The Go SDK (not driven here) marshals with Go's HTML escaping, and
    // Feishu's page shows a card with escaped escapes.
    for body in [
        r#"{"receive_id":"ou_1","msg_type":"text","content":"{\"text\":\"\\u003cat user_id=\\\"all\\\"\\u003e\\u003c/at\\u003e hi\"}"}"#,
        r#"{"receive_id":"ou_7d8a6e6df7621556ce0d21922b676706ccs","msg_type":"interactive","content":"{\"elements\":[{\"tag\":\"markdown\",\"content\":\"普通文本\\n\\n <at id=\\\"all\\\"></at>\"}]}"}"#,
    ] {
        assert_eq!(Msg::send(body).problems(), vec![], "{body}");
    }
}

#[test]
fn send_bodies_table() {
    let table: Vec<(String, Vec<(&str, &str)>)> = vec![
        (send_body(r#""text""#, TEXT), vec![]),
        (
            "{}".into(),
            vec![
                ("receive_id", "required"),
                ("msg_type", "required"),
                ("content", "required"),
            ],
        ),
        (
            "[]".into(),
            vec![("body", "must be a JSON object, got an array")],
        ),
        // receive_id
        (
            format!(r#"{{"receive_id":"","msg_type":"text","content":{TEXT}}}"#),
            vec![("receive_id", "must not be empty")],
        ),
        (
            format!(r#"{{"receive_id":7,"msg_type":"text","content":{TEXT}}}"#),
            vec![("receive_id", "must be a string, got a number")],
        ),
        // msg_type
        (
            send_body(r#""Text""#, TEXT),
            vec![(
                "msg_type",
                r#"must be "text", "post", "image", "file", "audio", "media", "sticker", "interactive", "share_chat", "share_user" or "system""#,
            )],
        ),
        (
            send_body("null", TEXT),
            vec![(
                "msg_type",
                r#"must be the string "text", "post", "image", "file", "audio", "media", "sticker", "interactive", "share_chat", "share_user" or "system", got null"#,
            )],
        ),
        (
            send_body(r#""system""#, r#""{\"type\":\"divider\"}""#),
            vec![],
        ),
        // content: a string holding a JSON object
        (send_body(r#""text""#, r#""{}""#), vec![]),
        (
            send_body(r#""text""#, r#"{"text":"hi"}"#),
            vec![(
                "content",
                r#"must be a string holding JSON, got an object: send it serialized, e.g. "{\"text\":\"hi\"}""#,
            )],
        ),
        (
            send_body(r#""text""#, "42"),
            vec![("content", "must be a string holding JSON, got a number")],
        ),
        (
            send_body(r#""text""#, r#""hello""#),
            vec![(
                "content",
                "must hold JSON: invalid JSON at line 1, column 1: expected value",
            )],
        ),
        (
            send_body(r#""text""#, r#""""#),
            vec![(
                "content",
                "must hold JSON: invalid JSON at line 1, column 0: EOF while parsing a value",
            )],
        ),
        (
            send_body(r#""text""#, r#""{\"text\":\"hi\"""#),
            vec![(
                "content",
                "must hold JSON: invalid JSON at line 1, column 12: EOF while parsing an object",
            )],
        ),
        (
            send_body(r#""text""#, r#""{} x""#),
            vec![(
                "content",
                "must hold JSON: invalid JSON at line 1, column 4: trailing characters",
            )],
        ),
        (
            send_body(r#""text""#, r#""[\"hi\"]""#),
            vec![("content", "must hold a JSON object, got an array")],
        ),
        (
            send_body(r#""text""#, r#""\"hi\"""#),
            vec![("content", "must hold a JSON object, got a string")],
        ),
        (
            send_body(r#""text""#, r#""7""#),
            vec![("content", "must hold a JSON object, got a number")],
        ),
        // Inner JSON is judged as serde_json judges a body: a lone
        // surrogate is invalid there too.
        (
            send_body(r#""text""#, r#""{\"text\":\"\\ud800\"}""#),
            vec![(
                "content",
                "must hold JSON: invalid JSON at line 1, column 16: unexpected end of hex escape",
            )],
        ),
        // uuid
        (
            format!(
                r#"{{"receive_id":"ou_1","msg_type":"text","content":{TEXT},"uuid":"{}"}}"#,
                "u".repeat(50)
            ),
            vec![],
        ),
        (
            format!(
                r#"{{"receive_id":"ou_1","msg_type":"text","content":{TEXT},"uuid":"{}"}}"#,
                "去".repeat(50)
            ),
            vec![],
        ),
        (
            format!(
                r#"{{"receive_id":"ou_1","msg_type":"text","content":{TEXT},"uuid":"{}"}}"#,
                "u".repeat(51)
            ),
            vec![("uuid", "must be at most 50 characters, got 51")],
        ),
        (
            format!(r#"{{"receive_id":"ou_1","msg_type":"text","content":{TEXT},"uuid":""}}"#),
            vec![],
        ),
        (
            format!(r#"{{"receive_id":"ou_1","msg_type":"text","content":{TEXT},"uuid":5}}"#),
            vec![("uuid", "must be a string, got a number")],
        ),
        // A known field given twice.
        (
            format!(
                r#"{{"receive_id":"ou_1","msg_type":"text","msg_type":"post","content":{TEXT}}}"#
            ),
            vec![("msg_type", "appears more than once; send it once")],
        ),
        // Every problem at once, in body order.
        (
            r#"{"receive_id":"","msg_type":"txt","content":{},"uuid":[]}"#.into(),
            vec![
                ("receive_id", "must not be empty"),
                (
                    "msg_type",
                    r#"must be "text", "post", "image", "file", "audio", "media", "sticker", "interactive", "share_chat", "share_user" or "system""#,
                ),
                (
                    "content",
                    r#"must be a string holding JSON, got an object: send it serialized, e.g. "{\"text\":\"hi\"}""#,
                ),
                ("uuid", "must be a string, got an array"),
            ],
        ),
    ];
    for (body, expected) in &table {
        assert_eq!(Msg::send(body).problems(), pairs(expected), "body: {body}");
    }
}

#[test]
fn receive_id_type_table() {
    let body = send_body(r#""text""#, TEXT);
    let one_of = r#"must be "open_id", "user_id", "union_id", "email" or "chat_id""#;
    // (query, the violation of receive_id_type: echoed value, description)
    type Expected<'a> = Option<(Option<&'a str>, &'a str)>;
    let table: &[(Option<&str>, Expected)] = &[
        (Some("receive_id_type=open_id"), None),
        (Some("receive_id_type=chat_id"), None),
        (Some("user_id_type=open_id&receive_id_type=email"), None),
        (Some("&receive_id_type=union_id&"), None),
        // Decoded as Feishu decodes it.
        (Some("receive_id_type=open%5Fid"), None),
        (Some("receive%5Fid%5Ftype=user_id"), None),
        (None, Some((None, "required"))),
        (Some(""), Some((None, "required"))),
        (Some("receive_id_types=open_id"), Some((None, "required"))),
        (Some("receive_id_type"), Some((Some(""), one_of))),
        (Some("receive_id_type="), Some((Some(""), one_of))),
        (
            Some("receive_id_type=openid"),
            Some((Some("openid"), one_of)),
        ),
        (
            Some("receive_id_type=Open_Id"),
            Some((Some("Open_Id"), one_of)),
        ),
        (
            Some("receive_id_type=open+id"),
            Some((Some("open id"), one_of)),
        ),
        (
            Some("receive_id_type=open_id&receive_id_type=open_id"),
            Some((None, "appears more than once; send it once")),
        ),
        (
            Some("receive_id_type=open%zzid"),
            Some((Some("open%zzid"), "must be percent-encoded UTF-8")),
        ),
        (
            Some("receive_id_type=%ff"),
            Some((Some("%ff"), "must be percent-encoded UTF-8")),
        ),
        (
            Some("receive_id_type=%"),
            Some((Some("%"), "must be percent-encoded UTF-8")),
        ),
    ];
    for (query, expected) in table {
        let req = Msg {
            query: *query,
            ..Msg::send(&body)
        };
        let got = match req.check() {
            Ok(()) => None,
            Err(v) => {
                assert_eq!(v.list().len(), 1, "{query:?}: {v:?}");
                let v = &v.list()[0];
                assert_eq!(v.field, "receive_id_type");
                Some((v.value.clone(), v.description.clone()))
            }
        };
        let want = expected.map(|(v, d)| (v.map(str::to_string), d.to_string()));
        assert_eq!(got, want, "query {query:?}");
    }
    for t in RECEIVE_ID_TYPES {
        let q = format!("receive_id_type={t}");
        let req = Msg {
            query: Some(&q),
            ..Msg::send(&body)
        };
        assert_eq!(req.problems(), vec![], "{q}");
    }
}

#[test]
fn reply_bodies_table() {
    let table: &[(&str, &[(&str, &str)])] = &[
        (r#"{"msg_type":"text","content":"{}"}"#, &[]),
        (
            r#"{"msg_type":"text","content":"{}","reply_in_thread":true,"uuid":"x"}"#,
            &[],
        ),
        ("{}", &[("msg_type", "required"), ("content", "required")]),
        (
            r#"{"msg_type":"system","content":"{}"}"#,
            &[(
                "msg_type",
                r#"must be "text", "post", "image", "file", "audio", "media", "sticker", "interactive", "share_chat" or "share_user""#,
            )],
        ),
        (
            r#"{"msg_type":"text","content":"{}","reply_in_thread":"true"}"#,
            &[(
                "reply_in_thread",
                r#"must be a boolean: send true, not the string "true""#,
            )],
        ),
        (
            r#"{"msg_type":"text","content":"{}","reply_in_thread":"no"}"#,
            &[("reply_in_thread", "must be a boolean, got a string")],
        ),
        (
            r#"{"msg_type":"text","content":"{}","reply_in_thread":1}"#,
            &[("reply_in_thread", "must be a boolean, got a number")],
        ),
        (
            r#"{"msg_type":"text","content":"{}","reply_in_thread":null}"#,
            &[("reply_in_thread", "must be a boolean, got null")],
        ),
        // receive_id is send's business; here it is an unknown field.
        (r#"{"msg_type":"text","content":"{}","receive_id":7}"#, &[]),
    ];
    for (body, expected) in table {
        assert_eq!(Msg::reply(body).problems(), pairs(expected), "{body}");
    }
    // The path parameter.
    let form = r#"must be "om_" followed by letters and digits"#;
    for (id, expected) in [
        (MSG, None),
        ("oc_1", Some(form)),
        ("om_", Some(form)),
        (
            "om_1%2F2",
            Some("must not contain an encoded '/' or '\\' (%2F, %5C)"),
        ),
    ] {
        for req in [
            Msg::reply(r#"{"msg_type":"text","content":"{}"}"#),
            Msg::edit(r#"{"msg_type":"text","content":"{}"}"#),
        ] {
            let req = Msg { param: id, ..req };
            let want: Vec<(&str, &str)> = expected.map(|d| ("message_id", d)).into_iter().collect();
            assert_eq!(req.problems(), pairs(&want), "{} {id}", req.route_id);
        }
    }
}

#[test]
fn edit_takes_text_and_post_only() {
    for t in EDIT_TYPES {
        let body = format!(r#"{{"msg_type":"{t}","content":"{{}}"}}"#);
        assert_eq!(Msg::edit(&body).problems(), vec![], "{t}");
    }
    for t in SEND_TYPES.iter().filter(|t| !EDIT_TYPES.contains(t)) {
        let body = format!(r#"{{"msg_type":"{t}","content":"{{}}"}}"#);
        assert_eq!(
            Msg::edit(&body).problems(),
            pairs(&[("msg_type", r#"must be "text" or "post""#)]),
            "{t}"
        );
    }
    assert_eq!(
        Msg::edit(r#"{"content":"[]"}"#).problems(),
        pairs(&[
            ("content", "must hold a JSON object, got an array"),
            ("msg_type", "required")
        ])
    );
}

#[test]
fn headers_path_and_query_come_before_the_body() {
    let req = Msg {
        query: None,
        content_type: Some("text/plain"),
        ..Msg::send("{}")
    };
    let fields: Vec<String> = req.problems().into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        fields,
        [
            "receive_id_type",
            "Content-Type",
            "receive_id",
            "msg_type",
            "content"
        ]
    );
    let req = Msg {
        param: "x",
        content_type: None,
        ..Msg::reply(r#"{"msg_type":"text","content":"{}"}"#)
    };
    let fields: Vec<String> = req.problems().into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["message_id", "Content-Type"]);
}

#[test]
fn content_caps_by_msg_type() {
    let too_long = |len: usize, max: usize, types: &str| {
        format!(
            "is {len} bytes; Feishu takes at most {max} bytes ({} KB) when msg_type is {types}",
            max / 1024
        )
    };
    let text = r#""text""#;
    let cards = r#""post" or "interactive""#;
    // Text: 150 KB of content, not one byte more.
    assert_eq!(
        Msg::send(&send_body(text, &text_of_len(TEXT_MAX_BYTES))).problems(),
        vec![]
    );
    let body = send_body(text, &text_of_len(TEXT_MAX_BYTES + 1));
    let err = Msg::send(&body).check().unwrap_err();
    assert_eq!(
        err.list()
            .iter()
            .map(|v| (v.field.as_str(), v.description.as_str(), v.value.as_deref()))
            .collect::<Vec<_>>(),
        [(
            "content",
            too_long(TEXT_MAX_BYTES + 1, TEXT_MAX_BYTES, r#""text""#).as_str(),
            None
        )]
    );
    assert_eq!(err.code(), codes::MESSAGE_CONTENT_TOO_LONG);
    assert_eq!(err.to_json()["code"], 230025);
    // Post and card: 30 KB.
    for t in [r#""post""#, r#""interactive""#] {
        let ok = send_body(t, &text_of_len(CARD_MAX_BYTES));
        assert_eq!(Msg::send(&ok).problems(), vec![], "{t}");
        let over = send_body(t, &text_of_len(CARD_MAX_BYTES + 1));
        assert_eq!(
            Msg::send(&over).problems(),
            pairs(&[(
                "content",
                &too_long(CARD_MAX_BYTES + 1, CARD_MAX_BYTES, cards)
            )]),
            "{t}"
        );
    }
    // Other types have no documented cap.
    let big = send_body(r#""image""#, &text_of_len(TEXT_MAX_BYTES + 1));
    assert_eq!(Msg::send(&big).problems(), vec![]);
    // Whatever the order: content before msg_type (as the Python SDK writes
    // a reply), and in reply and edit too.
    let over = text_of_len(CARD_MAX_BYTES + 1);
    let reply = format!(r#"{{"content":{over},"msg_type":"post"}}"#);
    let edit = format!(r#"{{"msg_type":"post","content":{over}}}"#);
    for req in [Msg::reply(&reply), Msg::edit(&edit)] {
        assert_eq!(
            req.problems(),
            pairs(&[(
                "content",
                &too_long(CARD_MAX_BYTES + 1, CARD_MAX_BYTES, cards)
            )]),
            "{}",
            req.route_id
        );
    }
    // Measured on the decoded content: escapes do not count double, so a
    // body well over 30 KB whose content is 30 KB passes.
    let quotes = "\"".repeat((CARD_MAX_BYTES - 11) / 2);
    let inner = serde_json::json!({ "text": quotes }).to_string();
    assert!(inner.len() <= CARD_MAX_BYTES);
    let body = send_body(r#""post""#, &serde_json::to_string(&inner).unwrap());
    assert!(body.len() > 2 * CARD_MAX_BYTES, "{}", body.len());
    assert_eq!(Msg::send(&body).problems(), vec![]);
    // With other problems first, the answer keeps the contract's code.
    let body = format!(
        r#"{{"receive_id":"","msg_type":"text","content":{}}}"#,
        text_of_len(TEXT_MAX_BYTES + 1)
    );
    let err = Msg::send(&body).check().unwrap_err();
    assert_eq!(err.list().len(), 2);
    assert_eq!(err.code(), codes::MESSAGE_INVALID_PARAM);
    // An invalid msg_type or a content that is not a string: no cap applies,
    // their own violations say what is wrong.
    let over = text_of_len(TEXT_MAX_BYTES + 1);
    assert_eq!(Msg::send(&send_body(r#""txt""#, &over)).problems().len(), 1);
}

#[test]
fn the_answer_uses_the_message_codes() {
    let err = Msg::send("{}").check().unwrap_err();
    assert_eq!(err.code(), codes::MESSAGE_INVALID_PARAM);
    let json = err.to_json();
    assert_eq!(json["code"], 230001);
    assert_eq!(
        json["msg"],
        "feishu-gateway: invalid request: receive_id: required (and 2 more problems, see error.field_violations)"
    );
    let resp = crate::proxy::error::GatewayError::Invalid(Box::new(err)).into_response();
    assert_eq!(resp.status(), 400);
    // Top notice keeps its own code.
    let put = builtin(crate::endpoints::PUT_TOP_NOTICE).unwrap();
    assert_eq!(put.code, codes::INVALID_PARAM);
}

#[test]
fn unknown_fields_reject_applies_to_the_body_not_inside_content() {
    let body = r#"{"receive_id":"ou_1","msg_type":"text","content":"{\"text\":\"x\",\"any\":1}","extra":1}"#;
    let req = Msg {
        unknown_fields: UnknownFields::Reject,
        ..Msg::send(body)
    };
    assert_eq!(req.problems(), pairs(&[("extra", "unknown field")]));
}

#[test]
fn hostile_content_gets_a_short_clear_answer() {
    // Deep nesting inside content: serde_json's recursion limit, there too.
    let deep = serde_json::to_string(&"[".repeat(100_000)).unwrap();
    let problems = Msg::send(&send_body(r#""image""#, &deep)).problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, "content");
    assert!(
        problems[0].1.ends_with("recursion limit exceeded"),
        "{problems:?}"
    );
    // A long bad content is echoed capped.
    let long = serde_json::to_string(&"x".repeat(10_000)).unwrap();
    let err = Msg::send(&send_body(r#""text""#, &long))
        .check()
        .unwrap_err();
    let value = err.list()[0].value.as_deref().unwrap();
    assert_eq!(value.chars().count(), MAX_VALUE_CHARS + 1);
}

#[test]
fn text_forms() {
    assert_eq!(text_problem(&Text::NonEmpty, "a"), None);
    assert_eq!(
        text_problem(&Text::NonEmpty, "").as_deref(),
        Some("must not be empty")
    );
    assert_eq!(text_problem(&Text::MaxChars(3), ""), None);
    assert_eq!(
        text_problem(&Text::MaxChars(3), "éé"),
        None,
        "4 bytes, 2 chars"
    );
    assert_eq!(text_problem(&Text::MaxChars(3), "ééé"), None);
    assert_eq!(
        text_problem(&Text::MaxChars(3), "éééé").as_deref(),
        Some("must be at most 3 characters, got 4")
    );
}

#[test]
fn query_values_decode_as_feishu_decodes_them() {
    assert!(matches!(
        decode("open_id"),
        Some(std::borrow::Cow::Borrowed("open_id"))
    ));
    assert_eq!(decode("a+b%2Bc").as_deref(), Some("a b+c"));
    assert_eq!(decode("%E4%B8%96").as_deref(), Some("世"));
    assert_eq!(decode("%e4%b8%96").as_deref(), Some("世"));
    assert_eq!(decode("%"), None);
    assert_eq!(decode("%4"), None);
    assert_eq!(decode("%g0"), None);
    assert_eq!(decode("%C3"), None, "not UTF-8");
}

#[test]
fn malformed_caps_are_refused() {
    let s = |n: &str| Field::optional(n, Shape::Any);
    let capped = |shape: Shape, when: &str| {
        Field::optional("c", shape).with_cap(LengthCap::when(when, &["x"], 1))
    };
    assert!(
        Object::try_new(vec![s("t"), capped(Shape::Any, "t")]).is_err(),
        "not a string"
    );
    assert!(Object::try_new(vec![s("t"), capped(Shape::Bool, "t")]).is_err());
    assert!(
        Object::try_new(vec![capped(Shape::non_empty(), "t")]).is_err(),
        "no sibling"
    );
    assert!(
        Object::try_new(vec![capped(Shape::non_empty(), "c")]).is_err(),
        "itself"
    );
    assert!(Object::try_new(vec![s("t"), capped(Shape::non_empty(), "t")]).is_ok());
    assert!(Object::try_new(vec![s("t"), capped(Shape::json_text(Shape::Any), "t")]).is_ok());
    let mut many = Field::optional("c", Shape::non_empty());
    for _ in 0..=MAX_CAPS {
        many = many.with_cap(LengthCap::when("t", &["x"], 1));
    }
    assert!(Object::try_new(vec![s("t"), many]).is_err(), "too many");
}

#[test]
fn json_text_paths_render_like_the_string() {
    let body = Path::Body;
    let content = Path::Field(&body, "content");
    let inner = Path::Text(&content);
    assert_eq!(inner.render(), "content");
    assert_eq!(Path::Field(&inner, "text").render(), "content.text");
}

#[test]
fn every_message_route_has_its_contract() {
    let catalog = Catalog::builtin();
    let contracts = crate::endpoints::Contracts::for_catalog(&catalog);
    for (method, path) in [
        (http::Method::POST, "/open-apis/im/v1/messages".to_string()),
        (
            http::Method::POST,
            format!("/open-apis/im/v1/messages/{MSG}/reply"),
        ),
        (
            http::Method::PUT,
            format!("/open-apis/im/v1/messages/{MSG}"),
        ),
    ] {
        let i = catalog.find(&method, &path).unwrap();
        assert!(contracts.get(i).is_some(), "{method} {path}");
        assert_eq!(
            catalog.route(i).limits.len(),
            2,
            "the data file's limits stay"
        );
    }
    // Neighbours keep none: GET the message, PATCH a card, DELETE (recall).
    for method in [http::Method::GET, http::Method::PATCH, http::Method::DELETE] {
        let i = catalog
            .find(&method, &format!("/open-apis/im/v1/messages/{MSG}"))
            .unwrap();
        assert!(contracts.get(i).is_none(), "{method}");
    }
}

/// The differential property test: send bodies near the contract, and the
/// validator agrees with an independent reading of Feishu's page through a
/// `serde_json::Value`.
mod differential {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    /// Feishu's send page, read through a `Value`: what a valid body is.
    fn send_ok(body: &[u8]) -> bool {
        let Ok(Value::Object(root)) = serde_json::from_slice::<Value>(body) else {
            return false;
        };
        let receive_id = matches!(root.get("receive_id"), Some(Value::String(s)) if !s.is_empty());
        let Some(Value::String(msg_type)) = root.get("msg_type") else {
            return false;
        };
        let Some(Value::String(content)) = root.get("content") else {
            return false;
        };
        let inner = matches!(serde_json::from_str::<Value>(content), Ok(Value::Object(_)));
        let cap = match msg_type.as_str() {
            "text" => TEXT_MAX_BYTES,
            "post" | "interactive" => CARD_MAX_BYTES,
            _ => usize::MAX,
        };
        let uuid = match root.get("uuid") {
            None => true,
            Some(Value::String(u)) => u.chars().count() <= 50,
            Some(_) => false,
        };
        receive_id
            && SEND_TYPES.contains(&msg_type.as_str())
            && inner
            && content.len() <= cap
            && uuid
    }

    fn junk() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            (-3i64..1000).prop_map(|n| n.to_string()),
            "[a-z_0-9 \\\\\"{}:]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just("[]".to_string()),
            Just(r#"{"text":"hi"}"#.to_string()),
        ]
    }

    fn optional(s: impl Strategy<Value = String>) -> impl Strategy<Value = Option<String>> {
        prop_oneof![1 => Just(None), 6 => s.prop_map(Some)]
    }

    /// A `content` value: mostly a serialized object, near the caps too.
    fn content() -> impl Strategy<Value = String> {
        let inner = prop_oneof![
            4 => "[a-z \"\\\\\n世]{0,12}".prop_map(|t| serde_json::json!({ "text": t }).to_string()),
            1 => Just("{}".to_string()),
            2 => prop::sample::select(vec!["[]", "\"x\"", "7", "{", "{}}", "", "{\"a\":1,}", "{\"t\":\"\\ud800\"}"])
                .prop_map(str::to_string),
            1 => (0usize..3, prop::bool::ANY).prop_map(|(d, big)| {
                let cap = if big { TEXT_MAX_BYTES } else { CARD_MAX_BYTES };
                format!(r#"{{"text":"{}"}}"#, "x".repeat(cap - 12 + d))
            }),
        ];
        prop_oneof![
            8 => inner.prop_map(|s| serde_json::to_string(&s).unwrap()),
            1 => junk(),
        ]
    }

    fn body() -> impl Strategy<Value = String> {
        let receive_id = optional(prop_oneof![
            4 => Just(format!("{USER:?}")),
            1 => prop::sample::select(vec![r#""""#, "7", "null"]).prop_map(str::to_string),
        ]);
        let msg_type = optional(prop_oneof![
            6 => prop::sample::select(SEND_TYPES.to_vec()).prop_map(|t| format!("{t:?}")),
            2 => prop::sample::select(vec![r#""Text""#, r#""""#, "1", "null"]).prop_map(str::to_string),
        ]);
        let uuid = prop::option::of(prop_oneof![
            "[a-z0-9-]{0,52}".prop_map(|s| format!("{s:?}")),
            (49usize..52).prop_map(|n| format!("{:?}", "去".repeat(n))),
            Just("5".to_string()),
        ]);
        (
            receive_id,
            msg_type,
            optional(content()),
            uuid,
            prop::option::of(junk()),
        )
            .prop_flat_map(|(r, m, c, u, extra)| {
                let mut entries: Vec<(String, String)> = Vec::new();
                entries.extend(r.map(|v| ("receive_id".to_string(), v)));
                entries.extend(m.map(|v| ("msg_type".to_string(), v)));
                entries.extend(c.map(|v| ("content".to_string(), v)));
                entries.extend(u.map(|v| ("uuid".to_string(), v)));
                entries.extend(extra.map(|v| ("x_extra".to_string(), v)));
                Just(entries).prop_shuffle()
            })
            .prop_map(|entries| {
                let parts: Vec<String> = entries
                    .into_iter()
                    .map(|(k, v)| format!("{k:?}:{v}"))
                    .collect();
                format!("{{{}}}", parts.join(","))
            })
    }

    /// A body, sometimes cut short or with a byte changed.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        (
            body(),
            0usize..12,
            any::<prop::sample::Index>(),
            any::<u8>(),
        )
            .prop_map(|(b, how, at, byte)| {
                let mut b = b.into_bytes();
                let i = at.index(b.len().max(1)).min(b.len());
                match how {
                    0 => b.truncate(i),
                    1 if !b.is_empty() => {
                        let last = b.len() - 1;
                        b[i.min(last)] = byte;
                    }
                    _ => {}
                }
                b
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn send_agrees_with_a_value_reading_of_the_page(body in mutated()) {
            let ours = Msg { body: &body, ..Msg::send("") }.check();
            prop_assert_eq!(
                ours.is_ok(),
                send_ok(&body),
                "body {:?}: {:?}", String::from_utf8_lossy(&body), ours
            );
        }
    }
}
