//! Callbacks made by the fake's Feishu side ([`feishu_sim::callback`]), fed
//! to the verifier.

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

use super::*;
use feishu_sim::callback::{encrypt, seal, signature as sim_signature, SealedCallback};

const KEY: &str = "encrypt-key-0123";
const TOKEN: &str = "verification-token-abc";
const NOW: u64 = 1_700_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn verifier(key: Option<&str>, options: VerifyOptions) -> Verifier {
    Verifier::new(
        CallbackKeys {
            encrypt_key: key.map(Secret::new),
            verification_token: Secret::new(TOKEN),
        },
        options,
    )
}

fn encrypted() -> Verifier {
    verifier(Some(KEY), VerifyOptions::default())
}

fn ticket_v1(token: &str) -> Value {
    json!({
        "uuid": "bc447199585340d1f3728d26b1c0297a",
        "token": token,
        "ts": "1700000000.123",
        "type": "event_callback",
        "event": {"app_id": "cli_store", "app_ticket": "tkt-123", "type": "app_ticket"}
    })
}

fn v2(token: &str, event_type: &str) -> Value {
    json!({
        "schema": "2.0",
        "header": {
            "event_id": "f7984f25108f8137722bb63cee927e66",
            "token": token,
            "create_time": "1700000000000",
            "event_type": event_type,
            "tenant_key": "tenant_a",
            "app_id": "cli_store"
        },
        "event": {"message": {"chat_id": "oc_x"}}
    })
}

fn check(token: &str) -> Value {
    json!({"challenge": "ajls384kdjx98XX", "token": token, "type": "url_verification"})
}

fn signed(event: &Value) -> SealedCallback {
    seal(Some(KEY), event, true, NOW)
}

fn run(v: &Verifier, cb: &SealedCallback) -> Result<Event, EventError> {
    v.verify_at(&cb.headers, &cb.body, now())
}

fn app_ticket() -> Event {
    Event::AppTicket {
        app_id: "cli_store".into(),
        app_ticket: Secret::new("tkt-123"),
    }
}

#[test]
fn decrypts_the_documented_vector() {
    // Feishu's own example: key "test key", plaintext "hello world".
    let plain = decrypt("test key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=");
    assert_eq!(plain.as_deref(), Some(&b"hello world"[..]));
    assert_eq!(
        decrypt("other key", "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk="),
        None
    );
    assert_eq!(decrypt("test key", "AAAA"), None);
    assert_eq!(decrypt("test key", "not base64!"), None);
}

#[test]
fn signature_agrees_with_the_sim() {
    let body = br#"{"encrypt":"abc"}"#;
    assert_eq!(
        hex::encode(signature("1", "n", KEY, body)),
        sim_signature("1", "n", KEY, body)
    );
}

#[test]
fn encrypted_signed_v1_ticket_is_taken() {
    let cb = signed(&ticket_v1(TOKEN));
    assert!(cb.headers.contains_key(HEADER_SIGNATURE));
    assert_eq!(run(&encrypted(), &cb), Ok(app_ticket()));
}

#[test]
fn plain_v1_ticket_without_a_key_is_taken() {
    let cb = seal(None, &ticket_v1(TOKEN), false, NOW);
    assert_eq!(
        run(&verifier(None, VerifyOptions::default()), &cb),
        Ok(app_ticket())
    );
}

#[test]
fn v2_events_are_classified_by_header() {
    let v = encrypted();
    let cb = signed(&v2(TOKEN, "im.message.receive_v1"));
    assert_eq!(
        run(&v, &cb),
        Ok(Event::Other {
            event_type: "im.message.receive_v1".into()
        })
    );
    // The token lives in `header.token` for v2: a top-level one does not count.
    let mut moved = v2("wrong", "im.message.receive_v1");
    moved["token"] = json!(TOKEN);
    assert_eq!(run(&v, &signed(&moved)), Err(EventError::BadToken));

    // A v2 app_ticket takes the app id from the event or the header.
    let mut ticket = v2(TOKEN, "app_ticket");
    ticket["event"] = json!({"app_ticket": "tkt-123"});
    assert_eq!(run(&v, &signed(&ticket)), Ok(app_ticket()));
}

#[test]
fn other_v1_events_are_ignored_not_refused() {
    let mut event = ticket_v1(TOKEN);
    event["event"] = json!({"type": "message", "text": "hi"});
    assert_eq!(
        run(&encrypted(), &signed(&event)),
        Ok(Event::Other {
            event_type: "message".into()
        })
    );
}

#[test]
fn challenge_is_answered_plain_and_encrypted() {
    let expected = Ok(Event::UrlVerification {
        challenge: "ajls384kdjx98XX".into(),
    });
    // Plain, no key configured.
    let plain = seal(None, &check(TOKEN), false, NOW);
    assert_eq!(
        run(&verifier(None, VerifyOptions::default()), &plain),
        expected
    );
    // Encrypted, unsigned (as Feishu sends it), even when signatures are
    // otherwise required.
    let sealed = seal(Some(KEY), &check(TOKEN), false, NOW);
    assert!(sealed.headers.is_empty());
    assert_eq!(run(&encrypted(), &sealed), expected);
    let strict = VerifyOptions {
        require_signature: true,
        ..VerifyOptions::default()
    };
    assert_eq!(run(&verifier(Some(KEY), strict), &sealed), expected);
    // A check with somebody else's token is not answered.
    let wrong = seal(Some(KEY), &check("nope"), false, NOW);
    assert_eq!(run(&encrypted(), &wrong), Err(EventError::BadToken));
}

#[test]
fn bad_signatures_are_refused() {
    let v = encrypted();
    let good = signed(&ticket_v1(TOKEN));

    let mut tampered = good.clone();
    tampered.headers.insert(
        HEADER_SIGNATURE,
        HeaderValue::from_static(
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ),
    );
    assert_eq!(run(&v, &tampered), Err(EventError::BadSignature));

    let mut not_hex = good.clone();
    not_hex
        .headers
        .insert(HEADER_SIGNATURE, HeaderValue::from_static("zz"));
    assert_eq!(run(&v, &not_hex), Err(EventError::BadSignature));

    // The signature covers the body: another body under the same headers.
    let other = signed(&ticket_v1(TOKEN));
    let swapped = SealedCallback {
        headers: good.headers.clone(),
        body: other.body,
    };
    assert_eq!(run(&v, &swapped), Err(EventError::BadSignature));

    // A signature without its nonce.
    let mut no_nonce = good.clone();
    no_nonce.headers.remove(HEADER_NONCE);
    assert_eq!(run(&v, &no_nonce), Err(EventError::BadSignature));

    // Signed with another key.
    let foreign = seal(Some("another key"), &ticket_v1(TOKEN), true, NOW);
    assert_eq!(run(&v, &foreign), Err(EventError::BadSignature));
}

#[test]
fn unsigned_events_pass_unless_signatures_are_required() {
    let unsigned = seal(Some(KEY), &ticket_v1(TOKEN), false, NOW);
    assert_eq!(run(&encrypted(), &unsigned), Ok(app_ticket()));
    let strict = VerifyOptions {
        require_signature: true,
        ..VerifyOptions::default()
    };
    assert_eq!(
        run(&verifier(Some(KEY), strict), &unsigned),
        Err(EventError::BadSignature)
    );
    assert_eq!(
        run(&verifier(Some(KEY), strict), &signed(&ticket_v1(TOKEN))),
        Ok(app_ticket())
    );
}

#[test]
fn stale_timestamps_are_refused_when_checked() {
    let v = encrypted();
    let hour_ago = seal(Some(KEY), &ticket_v1(TOKEN), true, NOW - 3600);
    assert_eq!(run(&v, &hour_ago), Ok(app_ticket()));
    let too_old = seal(Some(KEY), &ticket_v1(TOKEN), true, NOW - 3601);
    assert_eq!(run(&v, &too_old), Err(EventError::Stale));
    let future = seal(Some(KEY), &ticket_v1(TOKEN), true, NOW + 3601);
    assert_eq!(run(&v, &future), Err(EventError::Stale));
    let unchecked = VerifyOptions {
        max_skew: None,
        ..VerifyOptions::default()
    };
    assert_eq!(
        run(&verifier(Some(KEY), unchecked), &too_old),
        Ok(app_ticket())
    );
}

#[test]
fn wrong_or_missing_verification_token_is_refused() {
    let v = encrypted();
    assert_eq!(
        run(&v, &signed(&ticket_v1("nope"))),
        Err(EventError::BadToken)
    );
    let mut missing = ticket_v1(TOKEN);
    missing.as_object_mut().map(|m| m.remove("token"));
    assert_eq!(run(&v, &signed(&missing)), Err(EventError::BadToken));
    let plain = verifier(None, VerifyOptions::default());
    let cb = seal(None, &ticket_v1(&format!("{TOKEN}x")), false, NOW);
    assert_eq!(run(&plain, &cb), Err(EventError::BadToken));
}

/// A body re-signed correctly, so that only the decryption can fail.
fn resigned(body: String) -> SealedCallback {
    let mut headers = HeaderMap::new();
    let ts = NOW.to_string();
    let sig = sim_signature(&ts, "n1", KEY, body.as_bytes());
    for (name, value) in [
        (HEADER_TIMESTAMP, ts),
        (HEADER_NONCE, "n1".into()),
        (HEADER_SIGNATURE, sig),
    ] {
        headers.insert(name, HeaderValue::from_str(&value).expect("header"));
    }
    SealedCallback {
        headers,
        body: body.into(),
    }
}

#[test]
fn garbled_ciphertext_is_undecryptable() {
    let v = encrypted();
    let good = encrypt(KEY, ticket_v1(TOKEN).to_string().as_bytes());
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(&good)
        .expect("b64");
    // Flip a bit of the last block: its padding no longer checks out (or, in
    // the rare case it does, the plaintext is not JSON).
    let last = raw.len() - 1;
    raw[last] ^= 0x5a;
    let garbled = base64::engine::general_purpose::STANDARD.encode(&raw);
    for body in [
        json!({ "encrypt": garbled }).to_string(),
        json!({ "encrypt": "not base64 ***" }).to_string(),
        json!({ "encrypt": &good[..good.len() - 8] }).to_string(),
        json!({ "encrypt": encrypt("another key", ticket_v1(TOKEN).to_string().as_bytes()) })
            .to_string(),
        json!({ "encrypt": encrypt(KEY, b"not json") }).to_string(),
        json!({ "encrypt": 42 }).to_string(),
    ] {
        assert_eq!(run(&v, &resigned(body)), Err(EventError::Undecryptable));
    }
    // An encrypted body when no key is configured cannot be read either.
    let plain = verifier(None, VerifyOptions::default());
    assert_eq!(
        run(&plain, &signed(&ticket_v1(TOKEN))),
        Err(EventError::Undecryptable)
    );
}

#[test]
fn plain_body_with_a_key_configured_is_refused() {
    let cb = seal(None, &ticket_v1(TOKEN), false, NOW);
    assert_eq!(run(&encrypted(), &cb), Err(EventError::NotEncrypted));
}

#[test]
fn malformed_bodies() {
    let v = verifier(None, VerifyOptions::default());
    let go = |body: &str| v.verify_at(&HeaderMap::new(), body.as_bytes(), now());
    assert_eq!(go("not json"), Err(EventError::Malformed));
    assert_eq!(go("[1,2]"), Err(EventError::Malformed));
    // Token checked first: a stranger learns nothing about the shape.
    assert_eq!(
        go(r#"{"type":"event_callback"}"#),
        Err(EventError::BadToken)
    );
    let t = TOKEN;
    assert_eq!(
        go(&format!(r#"{{"token":"{t}","type":"url_verification"}}"#)),
        Err(EventError::Malformed)
    );
    assert_eq!(
        go(&format!(r#"{{"token":"{t}","type":"something_else"}}"#)),
        Err(EventError::Malformed)
    );
    assert_eq!(
        go(&format!(
            r#"{{"token":"{t}","type":"event_callback","event":{{"type":"app_ticket","app_id":"cli_x"}}}}"#
        )),
        Err(EventError::Malformed)
    );
}

#[test]
fn nothing_secret_in_errors_or_debug() {
    let event = app_ticket();
    let v = encrypted();
    let shown = format!("{event:?} {v:?} {:?}", EventError::BadToken);
    for secret in ["tkt-123", KEY, TOKEN] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}

#[test]
fn constant_time_eq() {
    assert!(ct_eq(b"abc", b"abc"));
    assert!(!ct_eq(b"abc", b"abd"));
    assert!(!ct_eq(b"abc", b"ab"));
    assert!(ct_eq(b"", b""));
}
