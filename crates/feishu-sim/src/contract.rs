//! Body contracts of a chat's top-notice endpoints (`put_top_notice`,
//! `delete_top_notice`), as the fake enforces them. Public so that the
//! gateway's own validation can be differential-tested against the fake.

use serde_json::Value;

/// Whether `body` is a valid `put_top_notice` body:
///
/// - a JSON object with `chat_top_notice`, a non-empty array of objects;
/// - in each, `action_type`, when present, is the string `"1"` or `"2"`
///   (absent means `"2"`, pin the group announcement);
/// - with `"1"` (pin a message), `message_id` is a string starting with
///   `om_` (so it is non-empty).
///
/// Unknown fields are ignored. The fake answers 400 / 232001 when this is
/// false.
pub fn put_top_notice_ok(body: &[u8]) -> bool {
    let Ok(Value::Object(root)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let Some(Value::Array(notices)) = root.get("chat_top_notice") else {
        return false;
    };
    !notices.is_empty() && notices.iter().all(notice_ok)
}

fn notice_ok(notice: &Value) -> bool {
    let Value::Object(notice) = notice else {
        return false;
    };
    match notice.get("action_type") {
        None => true,
        Some(Value::String(a)) if a == "2" => true,
        Some(Value::String(a)) if a == "1" => matches!(
            notice.get("message_id"),
            Some(Value::String(id)) if id.starts_with("om_")
        ),
        Some(_) => false,
    }
}

/// Whether `body` is acceptable for `delete_top_notice`: empty (or only
/// whitespace), or any JSON object.
pub fn delete_top_notice_ok(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
        || matches!(serde_json::from_slice::<Value>(body), Ok(Value::Object(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_put_bodies() {
        for body in [
            r#"{"chat_top_notice":[{}]}"#,
            r#"{"chat_top_notice":[{"action_type":"2"}]}"#,
            r#"{"chat_top_notice":[{"action_type":"2","message_id":""}]}"#,
            r#"{"chat_top_notice":[{"action_type":"1","message_id":"om_dc13264520392913993dd051dba21dcf"}]}"#,
            r#"{"chat_top_notice":[{"action_type":"1","message_id":"om_x"},{}],"extra":1}"#,
            r#"{"chat_top_notice":[{"unknown":true}]}"#,
        ] {
            assert!(put_top_notice_ok(body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn invalid_put_bodies() {
        for body in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"chat_top_notice":null}"#,
            r#"{"chat_top_notice":[]}"#,
            r#"{"chat_top_notice":{}}"#,
            r#"{"chat_top_notice":["x"]}"#,
            r#"{"chat_top_notice":[{"action_type":1}]}"#,
            r#"{"chat_top_notice":[{"action_type":null}]}"#,
            r#"{"chat_top_notice":[{"action_type":"3"}]}"#,
            r#"{"chat_top_notice":[{"action_type":"1"}]}"#,
            r#"{"chat_top_notice":[{"action_type":"1","message_id":""}]}"#,
            r#"{"chat_top_notice":[{"action_type":"1","message_id":"oc_1"}]}"#,
            r#"{"chat_top_notice":[{"action_type":"1","message_id":7}]}"#,
            r#"{"chat_top_notice":[{},{"action_type":"1"}]}"#,
        ] {
            assert!(!put_top_notice_ok(body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn delete_bodies() {
        assert!(delete_top_notice_ok(b""));
        assert!(delete_top_notice_ok(b" \n"));
        assert!(delete_top_notice_ok(b"{}"));
        assert!(delete_top_notice_ok(br#"{"anything":[1]}"#));
        assert!(!delete_top_notice_ok(b"[]"));
        assert!(!delete_top_notice_ok(b"{"));
    }
}
