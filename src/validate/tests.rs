//! Unit tests: every rule with a valid and an invalid example, the bodies
//! the official SDKs send, hostile bodies, the answer, and a differential
//! property test against the simulated Feishu's own body check.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method};

use super::json::Path;
use super::request::{is_json_media_type, path_problem};
use super::*;
use crate::endpoints::{
    builtin_contract as builtin, put_top_notice, Catalog, Contracts, DELETE_TOP_NOTICE,
    PUT_TOP_NOTICE,
};
use crate::proxy::body::ProxyBody;
use crate::proxy::error::X_GATEWAY_ERROR;
use feishu_sim::contract::{delete_top_notice_ok, put_top_notice_ok};

const CHAT: &str = "oc_5ad11d72b830411d72b836c20";
const MSG: &str = "om_dc13264520392913993dd051dba21dcf";
const JSON_UTF8: &str = "application/json; charset=utf-8";

use super::call_tests::{pairs, Call as Req};

impl<'a> Req<'a> {
    fn put(body: &'a str) -> Req<'a> {
        Req {
            route_id: PUT_TOP_NOTICE,
            param: CHAT,
            query: None,
            content_type: Some(JSON_UTF8),
            body: body.as_bytes(),
            unknown_fields: UnknownFields::Allow,
        }
    }

    fn delete(body: &'a str) -> Req<'a> {
        Req {
            route_id: DELETE_TOP_NOTICE,
            content_type: None,
            ..Req::put(body)
        }
    }
}

#[test]
fn put_bodies_table() {
    let one = r#"must be a string: send "1", not the number 1"#;
    let table: &[(&str, &[(&str, &str)])] = &[
        // chat_top_notice
        (r#"{"chat_top_notice":[{}]}"#, &[]),
        (r#"{}"#, &[("chat_top_notice", "required")]),
        (
            r#"{"chat_top_notice":null}"#,
            &[("chat_top_notice", "must be an array, got null")],
        ),
        (
            r#"{"chat_top_notice":{}}"#,
            &[("chat_top_notice", "must be an array, got an object")],
        ),
        (
            r#"{"chat_top_notice":"x"}"#,
            &[("chat_top_notice", "must be an array, got a string")],
        ),
        (
            r#"{"chat_top_notice":[]}"#,
            &[("chat_top_notice", "must have at least 1 item")],
        ),
        // each item an object
        (r#"{"chat_top_notice":[{},{}]}"#, &[]),
        (
            r#"{"chat_top_notice":[1]}"#,
            &[("chat_top_notice[0]", "must be an object, got a number")],
        ),
        (
            r#"{"chat_top_notice":[{}, "x", []]}"#,
            &[
                ("chat_top_notice[1]", "must be an object, got a string"),
                ("chat_top_notice[2]", "must be an object, got an array"),
            ],
        ),
        // action_type
        (r#"{"chat_top_notice":[{"action_type":"2"}]}"#, &[]),
        (
            r#"{"chat_top_notice":[{"action_type":"3"}]}"#,
            &[("chat_top_notice[0].action_type", r#"must be "1" or "2""#)],
        ),
        (
            r#"{"chat_top_notice":[{"action_type":""}]}"#,
            &[("chat_top_notice[0].action_type", r#"must be "1" or "2""#)],
        ),
        (
            r#"{"chat_top_notice":[{"action_type":1,"message_id":"om_1"}]}"#,
            &[("chat_top_notice[0].action_type", one)],
        ),
        (
            r#"{"chat_top_notice":[{"action_type":2}]}"#,
            &[(
                "chat_top_notice[0].action_type",
                r#"must be a string: send "2", not the number 2"#,
            )],
        ),
        (
            r#"{"chat_top_notice":[{"action_type":3}]}"#,
            &[(
                "chat_top_notice[0].action_type",
                r#"must be the string "1" or "2", got a number"#,
            )],
        ),
        (
            r#"{"chat_top_notice":[{"action_type":null}]}"#,
            &[(
                "chat_top_notice[0].action_type",
                r#"must be the string "1" or "2", got null"#,
            )],
        ),
        (
            r#"{"chat_top_notice":[{"action_type":true}]}"#,
            &[(
                "chat_top_notice[0].action_type",
                r#"must be the string "1" or "2", got a boolean"#,
            )],
        ),
        (
            r#"{"chat_top_notice":[{"action_type":["1"]}]}"#,
            &[(
                "chat_top_notice[0].action_type",
                r#"must be the string "1" or "2", got an array"#,
            )],
        ),
        // message_id when action_type is "1"
        (
            &format!(r#"{{"chat_top_notice":[{{"action_type":"1","message_id":"{MSG}"}}]}}"#),
            &[],
        ),
        (
            r#"{"chat_top_notice":[{"action_type":"1","message_id":"om_"}]}"#,
            &[],
        ),
        (
            r#"{"chat_top_notice":[{"action_type":"1"}]}"#,
            &[(
                "chat_top_notice[0].message_id",
                r#"required when action_type is "1""#,
            )],
        ),
        (
            r#"{"chat_top_notice":[{"action_type":"1","message_id":""}]}"#,
            &[("chat_top_notice[0].message_id", "must not be empty")],
        ),
        (
            r#"{"chat_top_notice":[{"action_type":"1","message_id":"oc_1"}]}"#,
            &[("chat_top_notice[0].message_id", r#"must start with "om_""#)],
        ),
        (
            r#"{"chat_top_notice":[{"action_type":"1","message_id":7}]}"#,
            &[(
                "chat_top_notice[0].message_id",
                "must be a string, got a number",
            )],
        ),
        (
            r#"{"chat_top_notice":[{"action_type":"1","message_id":null}]}"#,
            &[(
                "chat_top_notice[0].message_id",
                "must be a string, got null",
            )],
        ),
        // ... also when message_id comes first
        (
            r#"{"chat_top_notice":[{"message_id":"om_1","action_type":"1"}]}"#,
            &[],
        ),
        (
            r#"{"chat_top_notice":[{"message_id":"x","action_type":"1"}]}"#,
            &[("chat_top_notice[0].message_id", r#"must start with "om_""#)],
        ),
        // message_id allowed and ignored when action_type is "2" or absent
        (
            r#"{"chat_top_notice":[{"action_type":"2","message_id":""}]}"#,
            &[],
        ),
        (
            r#"{"chat_top_notice":[{"message_id":7,"action_type":"2"}]}"#,
            &[],
        ),
        (r#"{"chat_top_notice":[{"message_id":{"deep":[1]}}]}"#, &[]),
        // message_id is not judged when action_type itself is invalid
        (
            r#"{"chat_top_notice":[{"message_id":"x","action_type":1}]}"#,
            &[("chat_top_notice[0].action_type", one)],
        ),
        // unknown fields pass (Allow is the default)
        (r#"{"chat_top_notice":[{"x":1}],"extra":{"a":[null]}}"#, &[]),
        // every violation is listed, in order
        (
            r#"{"chat_top_notice":[{"action_type":"1"},7,{"action_type":1,"message_id":"om_1"},{"action_type":"1","message_id":""}]}"#,
            &[
                (
                    "chat_top_notice[0].message_id",
                    r#"required when action_type is "1""#,
                ),
                ("chat_top_notice[1]", "must be an object, got a number"),
                ("chat_top_notice[2].action_type", one),
                ("chat_top_notice[3].message_id", "must not be empty"),
            ],
        ),
        // a known field twice is ambiguous
        (
            r#"{"chat_top_notice":[],"chat_top_notice":[{}]}"#,
            &[
                ("chat_top_notice", "must have at least 1 item"),
                ("chat_top_notice", "appears more than once; send it once"),
            ],
        ),
        // the body as a whole
        ("", &[("body", "required: a JSON object")]),
        (" \r\n\t", &[("body", "required: a JSON object")]),
        ("[]", &[("body", "must be a JSON object, got an array")]),
        (r#""x""#, &[("body", "must be a JSON object, got a string")]),
        ("null", &[("body", "must be a JSON object, got null")]),
        (
            "not json",
            &[("body", "invalid JSON at line 1, column 2: expected ident")],
        ),
        (
            "{\n  \"chat_top_notice\": [\n    {\"action_type\": \"1\",}\n  ]\n}",
            &[("body", "invalid JSON at line 3, column 25: trailing comma")],
        ),
        (
            r#"{"chat_top_notice":[{"action_type":"1""#,
            &[(
                "body",
                "invalid JSON at line 1, column 38: EOF while parsing an object",
            )],
        ),
        (
            r#"{"chat_top_notice":[{}]} {}"#,
            &[(
                "body",
                "invalid JSON at line 1, column 26: trailing characters",
            )],
        ),
    ];
    for (body, expected) in table {
        assert_eq!(Req::put(body).problems(), pairs(expected), "body: {body}");
    }
}

#[test]
fn chat_id_table() {
    let form = r#"must be "oc_" followed by letters and digits"#;
    let table: &[(&str, Option<&str>)] = &[
        (CHAT, None),
        ("oc_A1", None),
        ("", Some("required")),
        ("oc_", Some(form)),
        ("oc_a-b", Some(form)),
        ("oc_a_b", Some(form)),
        ("om_123", Some(form)),
        ("OC_123", Some(form)),
        (
            "oc_a%2Fb",
            Some("must not contain an encoded '/' or '\\' (%2F, %5C)"),
        ),
        (
            "oc_a%2fb",
            Some("must not contain an encoded '/' or '\\' (%2F, %5C)"),
        ),
        (
            "oc_%41",
            Some("must not be percent-encoded (an id never needs escaping)"),
        ),
        (
            "oc_a%252Fb",
            Some("must not be percent-encoded (an id never needs escaping)"),
        ),
        ("..", Some("must not contain '..'")),
        ("oc_1..", Some("must not contain '..'")),
        ("oc_1\u{1}", Some("must not contain control characters")),
        ("oc_1\u{7f}", Some("must not contain control characters")),
    ];
    for (chat, expected) in table {
        for route_id in [PUT_TOP_NOTICE, DELETE_TOP_NOTICE] {
            let req = Req {
                route_id,
                param: chat,
                ..Req::put(r#"{"chat_top_notice":[{}]}"#)
            };
            let want = expected
                .map(|d| ("chat_id", d))
                .into_iter()
                .collect::<Vec<_>>();
            assert_eq!(req.problems(), pairs(&want), "{route_id} chat_id {chat:?}");
        }
    }
    assert_eq!(
        path_problem("oc_1/x").as_deref(),
        Some("must not contain '/'")
    );
}

#[test]
fn chat_id_missing_when_the_path_is_short() {
    let catalog = Catalog::builtin();
    let route = &catalog.routes()[0];
    let headers = HeaderMap::new();
    let err = put_top_notice()
        .check(&RequestView {
            route,
            path: "/open-apis/im/v1/chats",
            query: None,
            headers: &headers,
            body: b"",
        })
        .unwrap_err();
    assert_eq!(err.list()[0].field, "chat_id");
    assert_eq!(err.list()[0].description, "required");
    assert_eq!(err.list()[0].value, None);
}

#[test]
fn content_type_table() {
    let body = r#"{"chat_top_notice":[{}]}"#;
    let wrong = r#"must be application/json, optionally with "; charset=utf-8""#;
    let table: &[(Option<&str>, Option<&str>)] = &[
        (Some("application/json"), None),
        (Some("application/json; charset=utf-8"), None),
        (Some("application/json;charset=utf-8"), None),
        (Some("Application/JSON; Charset=UTF-8"), None),
        (Some("application/json ; charset=\"utf-8\""), None),
        (None, Some("required: application/json; charset=utf-8")),
        (Some("text/plain"), Some(wrong)),
        (Some("application/jsonx"), Some(wrong)),
        (Some("application/json; charset=latin1"), Some(wrong)),
        (Some("application/json; boundary=x"), Some(wrong)),
        (Some("application/json;"), Some(wrong)),
        (
            Some("application/json; charset=utf-8; charset=utf-8"),
            Some(wrong),
        ),
    ];
    for (ct, expected) in table {
        let req = Req {
            content_type: *ct,
            ..Req::put(body)
        };
        let want = expected
            .map(|d| ("Content-Type", d))
            .into_iter()
            .collect::<Vec<_>>();
        assert_eq!(req.problems(), pairs(&want), "Content-Type {ct:?}");
    }
    assert!(!is_json_media_type(""));
}

#[test]
fn content_type_twice_is_refused() {
    let catalog = Catalog::builtin();
    let route = catalog
        .routes()
        .iter()
        .find(|r| r.id == PUT_TOP_NOTICE)
        .unwrap();
    let path = route.template.replace(":chat_id", CHAT);
    let mut headers = HeaderMap::new();
    headers.append(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.append(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    let err = put_top_notice()
        .check(&RequestView {
            route,
            path: &path,
            query: None,
            headers: &headers,
            body: br#"{"chat_top_notice":[{}]}"#,
        })
        .unwrap_err();
    assert_eq!(err.list()[0].field, "Content-Type");
    assert_eq!(err.list()[0].description, "must appear once");
}

#[test]
fn path_header_and_body_violations_are_all_listed() {
    let req = Req {
        param: "oc_%2F",
        content_type: Some("text/plain"),
        ..Req::put(r#"{"chat_top_notice":[]}"#)
    };
    let fields: Vec<String> = req.problems().into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["chat_id", "Content-Type", "chat_top_notice"]);
}

#[test]
fn unknown_fields_can_be_rejected() {
    let body = r#"{"chat_top_notice":[{"action_type":"2","x":1},{"y":{}}],"extra":[1]}"#;
    assert_eq!(Req::put(body).problems(), vec![]);
    let req = Req {
        unknown_fields: UnknownFields::Reject,
        ..Req::put(body)
    };
    assert_eq!(
        req.problems(),
        pairs(&[
            ("chat_top_notice[0].x", "unknown field"),
            ("chat_top_notice[1].y", "unknown field"),
            ("extra", "unknown field"),
        ])
    );
    let req = Req {
        unknown_fields: UnknownFields::Reject,
        ..Req::delete(r#"{"z":1}"#)
    };
    assert_eq!(req.problems(), pairs(&[("z", "unknown field")]));
}

#[test]
fn the_bodies_the_official_sdks_send_pass() {
    let pin_message =
        format!(r#"{{"chat_top_notice":[{{"action_type":"1","message_id":"{MSG}"}}]}}"#);
    for body in [
        pin_message.as_str(),
        r#"{"chat_top_notice":[{"action_type":"2"}]}"#,
        // Pretty-printed and with the default charset spelled differently.
        "{\n  \"chat_top_notice\": [\n    {\n      \"action_type\": \"2\"\n    }\n  ]\n}",
    ] {
        assert_eq!(Req::put(body).problems(), vec![], "{body}");
        assert!(put_top_notice_ok(body.as_bytes()));
    }
    // delete: empty body, `{}`, no body and no Content-Type.
    for (ct, body) in [(Some(JSON_UTF8), ""), (Some(JSON_UTF8), "{}"), (None, "")] {
        let req = Req {
            content_type: ct,
            ..Req::delete(body)
        };
        assert_eq!(req.problems(), vec![], "{ct:?} {body:?}");
    }
}

#[test]
fn delete_bodies_table() {
    let table: &[(&str, &[(&str, &str)])] = &[
        ("", &[]),
        (" \n", &[]),
        ("{}", &[]),
        (r#"{"anything":[1]}"#, &[]),
        ("[]", &[("body", "must be a JSON object, got an array")]),
        ("1", &[("body", "must be a JSON object, got a number")]),
        (
            "{",
            &[(
                "body",
                "invalid JSON at line 1, column 1: EOF while parsing an object",
            )],
        ),
    ];
    for (body, expected) in table {
        assert_eq!(Req::delete(body).problems(), pairs(expected), "{body:?}");
    }
}

#[test]
fn hostile_bodies_get_a_short_clear_answer() {
    // Not UTF-8: the offset of the first bad byte.
    let req = Req {
        body: b"{\"chat_top_notice\":[{\"message_id\":\"om_\xff\"}]}",
        ..Req::put("")
    };
    assert_eq!(
        req.problems(),
        pairs(&[(
            "body",
            "must be UTF-8: invalid byte at offset 38 (line 1, column 39)"
        )])
    );
    // 100 000 `[`, at the root, inside a known field and inside an unknown
    // one: the recursion limit, never the stack.
    for body in [
        "[".repeat(100_000),
        format!("{{\"chat_top_notice\":{}", "[".repeat(100_000)),
        format!("{{\"x\":{}", "[".repeat(100_000)),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        "{\"a\":".repeat(100_000),
    ] {
        let problems = Req::put(&body).problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "body");
        assert!(
            problems[0].1.ends_with("recursion limit exceeded"),
            "{problems:?}"
        );
        assert!(!put_top_notice_ok(body.as_bytes()));
    }
    // A million wrong items: a bounded list and a count.
    let body = format!(r#"{{"chat_top_notice":[{}1]}}"#, "1,".repeat(999_999));
    let err = Req::put(&body).check().unwrap_err();
    assert_eq!(err.list().len(), MAX_VIOLATIONS);
    assert_eq!(err.omitted(), 1_000_000 - MAX_VIOLATIONS);
    assert!(
        err.msg().contains("and 999999 more problems"),
        "{}",
        err.msg()
    );
}

#[test]
fn values_are_capped_and_never_more_than_needed() {
    let long = format!("oc_{}", "x".repeat(1000));
    let body = format!(
        r#"{{"chat_top_notice":[{{"action_type":"1","message_id":"{long}"}},{{"action_type":"1","message_id":{{"big":"{long}"}}}},{{"action_type":"1"}}]}}"#
    );
    let err = Req::put(&body).check().unwrap_err();
    let values: Vec<Option<&str>> = err.list().iter().map(|v| v.value.as_deref()).collect();
    let capped = format!("{}…", &long[..MAX_VALUE_CHARS]);
    assert_eq!(values, [Some(capped.as_str()), None, None]);
    assert_eq!(err.list()[1].description, "must be a string, got an object");
    // A type error on a scalar echoes the scalar.
    let err = Req::put(r#"{"chat_top_notice":[{"action_type":1}]}"#)
        .check()
        .unwrap_err();
    assert_eq!(err.list()[0].value.as_deref(), Some("1"));
    // Long unknown keys are capped in the field path too.
    let key = "k".repeat(500);
    let body = format!(r#"{{"chat_top_notice":[{{}}],"{key}":1}}"#);
    let req = Req {
        unknown_fields: UnknownFields::Reject,
        ..Req::put(&body)
    };
    let problems = req.problems();
    assert_eq!(problems[0].0.chars().count(), MAX_VALUE_CHARS + 1);
}

#[test]
fn the_answer_is_feishu_shaped() {
    let err = Req::put(r#"{"chat_top_notice":[{"action_type":"1"},{"action_type":1}]}"#)
        .check()
        .unwrap_err();
    let msg = err.msg();
    assert_eq!(
        msg,
        "feishu-gateway: invalid request: chat_top_notice[0].message_id: required when action_type is \"1\" (and 1 more problem, see error.field_violations)"
    );
    let resp = crate::proxy::error::GatewayError::Invalid(Box::new(err)).into_response();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()[X_GATEWAY_ERROR], "invalid-request");
    assert!(resp.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let ProxyBody::Full(Some(bytes)) = resp.into_body() else {
        panic!("no body");
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "code": 232001,
            "msg": msg,
            "error": {"field_violations": [
                {"field": "chat_top_notice[0].message_id",
                 "description": "required when action_type is \"1\""},
                {"field": "chat_top_notice[1].action_type", "value": "1",
                 "description": "must be a string: send \"1\", not the number 1"},
            ]}
        })
    );
}

#[test]
fn builtin_contracts_by_route_id() {
    assert!(builtin(PUT_TOP_NOTICE).is_some());
    assert!(builtin(DELETE_TOP_NOTICE).is_some());
    assert!(builtin("im.v1.chat.get").is_none());
    let catalog = Catalog::builtin();
    let mut contracts = Contracts::for_catalog(&catalog);
    let with_contract = [
        PUT_TOP_NOTICE,
        DELETE_TOP_NOTICE,
        crate::endpoints::SEND_MESSAGE,
        crate::endpoints::REPLY_MESSAGE,
        crate::endpoints::EDIT_MESSAGE,
    ];
    for (i, route) in catalog.routes().iter().enumerate() {
        let builtin = with_contract.contains(&route.id.as_str());
        assert_eq!(contracts.get(i).is_some(), builtin, "{}", route.id);
    }
    assert!(contracts.get(catalog.routes().len()).is_none());
    let put = catalog
        .find(
            &Method::POST,
            &format!("/open-apis/im/v1/chats/{CHAT}/top_notice/put_top_notice"),
        )
        .unwrap();
    contracts.get_mut(put).unwrap().unknown_fields = UnknownFields::Reject;
    assert_eq!(
        contracts.get(put).unwrap().unknown_fields,
        UnknownFields::Reject
    );
}

#[test]
fn malformed_contracts_are_refused() {
    let f = |n: &str| Field::optional(n, Shape::Any);
    assert!(Object::try_new((0..=MAX_FIELDS).map(|i| f(&format!("f{i}"))).collect()).is_err());
    assert!(Object::try_new(vec![f("a"), f("a")]).is_err());
    let mut many = vec![f("src")];
    many.extend(
        (0..=MAX_CONDITIONAL)
            .map(|i| Field::required_when(&format!("c{i}"), Shape::Any, "src", "1")),
    );
    assert!(Object::try_new(many).is_err());
    assert!(Object::try_new(vec![Field::required_when("a", Shape::Any, "b", "1")]).is_err());
    assert!(Object::try_new(vec![Field::required_when("a", Shape::Any, "a", "1")]).is_err());
    assert!(Object::try_new(vec![
        f("b"),
        Field::required_when("a", Shape::Any, "b", "1")
    ])
    .is_ok());
}

#[test]
fn paths_render_like_feishu_field_names() {
    let body = Path::Body;
    let a = Path::Field(&body, "chat_top_notice");
    let b = Path::Index(&a, 3);
    let c = Path::Field(&b, "message_id");
    assert_eq!(body.render(), "body");
    assert_eq!(a.render(), "chat_top_notice");
    assert_eq!(c.render(), "chat_top_notice[3].message_id");
    assert_eq!(Path::Index(&body, 0).render(), "body[0]");
}

/// The differential property test: bodies near the contract, and the
/// validator agrees with the simulated Feishu's own check.
mod differential {
    use proptest::prelude::*;

    use super::*;

    /// Any JSON, shallow, as text.
    fn junk() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            (-3i64..1000).prop_map(|n| n.to_string()),
            (-1e6f64..1e6).prop_map(|f| format!("{f:?}")),
            prop::sample::select(vec!["", "1", "2", "om_", "om_x", "oc_1", "x"])
                .prop_map(|s| format!("{s:?}")),
            "[a-z_0-9 \\\\\"]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        leaf.prop_recursive(3, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[a-z]{1,3}", inner), 0..4).prop_map(|kv| object(
                    kv.into_iter().map(|(k, v)| (format!("x_{k}"), v)).collect()
                )),
            ]
        })
    }

    /// `{"k":v,...}` from keys and JSON texts; a key listed twice is
    /// written twice.
    fn object(entries: Vec<(String, String)>) -> String {
        let parts: Vec<String> = entries
            .into_iter()
            .map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap()))
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    fn optional(s: impl Strategy<Value = String>) -> impl Strategy<Value = Option<String>> {
        prop_oneof![1 => Just(None), 3 => s.prop_map(Some)]
    }

    fn action_type() -> impl Strategy<Value = Option<String>> {
        optional(prop_oneof![
            6 => prop::sample::select(vec![r#""1""#, r#""2""#]).prop_map(str::to_string),
            3 => prop::sample::select(vec![r#""3""#, r#""""#, "1", "2", "null", "true"])
                .prop_map(str::to_string),
            1 => junk(),
        ])
    }

    fn message_id() -> impl Strategy<Value = Option<String>> {
        optional(prop_oneof![
            4 => Just(r#""om_dc13264520392913993dd051dba21dcf""#.to_string()),
            4 => prop::sample::select(vec![
                r#""om_""#, r#""""#, r#""oc_1""#, r#""OM_x""#, r#""\u006fm_x""#, "7", "null",
            ])
            .prop_map(str::to_string),
            1 => junk(),
        ])
    }

    fn item() -> impl Strategy<Value = String> {
        let fields = (
            action_type(),
            message_id(),
            prop::collection::vec(("[a-z]{1,4}", junk()), 0..2),
        )
            .prop_flat_map(|(a, m, extra)| {
                let mut entries: Vec<(String, String)> = extra
                    .into_iter()
                    .map(|(k, v)| (format!("x_{k}"), v))
                    .collect();
                entries.extend(a.map(|a| ("action_type".to_string(), a)));
                entries.extend(m.map(|m| ("message_id".to_string(), m)));
                Just(entries).prop_shuffle()
            })
            .prop_map(object);
        prop_oneof![12 => fields, 1 => junk()]
    }

    fn body() -> impl Strategy<Value = String> {
        let notices = optional(prop_oneof![
            8 => prop::collection::vec(item(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
            1 => junk(),
        ]);
        let root = (notices, prop::collection::vec(("[a-z]{1,4}", junk()), 0..2))
            .prop_flat_map(|(n, extra)| {
                let mut entries: Vec<(String, String)> = extra
                    .into_iter()
                    .map(|(k, v)| (format!("x_{k}"), v))
                    .collect();
                entries.extend(n.map(|n| ("chat_top_notice".to_string(), n)));
                Just(entries).prop_shuffle()
            })
            .prop_map(object);
        prop_oneof![8 => root, 1 => junk()]
    }

    /// A body, sometimes cut short, with a byte changed or with whitespace.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        (
            body(),
            0usize..16,
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
                    2 => b.insert(i, byte),
                    3 => {
                        b.insert(0, b'\n');
                        b.push(b' ');
                    }
                    _ => {}
                }
                b
            })
    }

    fn put_verdict(body: &[u8], unknown_fields: UnknownFields) -> Result<(), Violations> {
        Req {
            body,
            unknown_fields,
            ..Req::put("")
        }
        .check()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn put_agrees_with_the_simulated_feishu(body in mutated()) {
            let ours = put_verdict(&body, UnknownFields::Allow);
            prop_assert_eq!(
                ours.is_ok(),
                put_top_notice_ok(&body),
                "body {:?}: {:?}", String::from_utf8_lossy(&body), ours
            );
            // Rejecting unknown fields only ever adds violations.
            if ours.is_err() {
                prop_assert!(put_verdict(&body, UnknownFields::Reject).is_err());
            }
        }

        #[test]
        fn delete_agrees_with_the_simulated_feishu(body in mutated()) {
            let ours = Req { body: &body, ..Req::delete("") }.check();
            prop_assert_eq!(ours.is_ok(), delete_top_notice_ok(&body));
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..64)) {
            let ours = put_verdict(&body, UnknownFields::Allow);
            prop_assert_eq!(ours.is_ok(), put_top_notice_ok(&body));
            let _ = put_verdict(&body, UnknownFields::Reject);
        }
    }
}
