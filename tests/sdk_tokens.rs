//! The token endpoints the gateway answers for the official SDKs, gateway
//! tokens as bearer credentials, and user access tokens.

mod support;

use std::net::SocketAddr;

use http::{Method, StatusCode};
use support::*;

const TOKEN_PATH: &str = "/open-apis/auth/v3/tenant_access_token/internal";

/// A gateway whose tokens are signed with a configured key.
async fn start_signed(sim: &SimFeishu) -> Runtime {
    let config = GatewayConfig::new(&sim.base_url())
        .sdk_signing_key_env("SIGNING_KEY")
        .env("SIGNING_KEY", "a-signing-key-0123456789abcdef");
    start_gateway(&config).await
}

/// POST put_top_notice to the gateway at `addr` with `token` as the bearer
/// credential.
async fn put_with_token(client: &HttpClient, addr: SocketAddr, token: &str) -> Answer {
    let auth = format!("Bearer {token}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    call(client, addr, Method::POST, PUT_PATH, &headers, PUT_BODY).await
}

async fn fetch_token(h: &Harness, body: &str) -> Answer {
    // No Content-Type: the Python SDK sends none on this call.
    h.call(Method::POST, TOKEN_PATH, &[], body).await
}

#[tokio::test]
async fn the_gateway_answers_the_sdk_token_call_and_accepts_its_token() {
    let h = start(sim_config()).await;
    let body = format!(r#"{{"app_id":"{APP_ID}","app_secret":"{CLIENT_KEY}"}}"#);
    let a = fetch_token(&h, &body).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.header("x-gateway-error").is_none());
    let v = a.json();
    assert_eq!(v["code"], 0);
    assert_eq!(v["msg"], "ok");
    assert!(v.get("data").is_none(), "flat shape, like Feishu");
    assert!(v["expire"].as_u64().unwrap() >= 900);
    let token = v["tenant_access_token"].as_str().unwrap().to_string();
    assert!(token.starts_with("t-"));
    assert!(!token.contains(CLIENT_KEY));

    let a = put_with_token(&h.client, h.gw.addr(), &token).await;
    assert_eq!(a.code(), 0, "{:?}", a.body);
    // Feishu saw the gateway's own tenant token, and only the gateway's own
    // token calls: the app secret never left the gateway.
    let calls = h.sim.token_calls();
    assert_eq!(calls.len(), 1);
    let reqs = h.sim.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].bearer.as_deref(), Some(calls[0].token.as_str()));

    // A second token leaves the first valid.
    let second = fetch_token(&h, &body).await.json()["tenant_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(second, token);
    assert_eq!(h.put("oc_1").await.code(), 0);
    let a = put_with_token(&h.client, h.gw.addr(), &token).await;
    assert_eq!(a.code(), 0);

    // The app token endpoint answers too, with its own field.
    let a = h
        .call(
            Method::POST,
            "/open-apis/auth/v3/app_access_token/internal",
            &[],
            &body,
        )
        .await;
    assert!(a.json()["app_access_token"]
        .as_str()
        .unwrap()
        .starts_with("t-"));
}

#[tokio::test]
async fn bad_credentials_get_feishus_wrong_secret_answer_without_saying_which() {
    let h = start(sim_config()).await;
    let wrong_id = fetch_token(
        &h,
        &format!(r#"{{"app_id":"cli_other","app_secret":"{CLIENT_KEY}"}}"#),
    )
    .await;
    let wrong_key = fetch_token(
        &h,
        &format!(r#"{{"app_id":"{APP_ID}","app_secret":"not-the-key-0000000"}}"#),
    )
    .await;
    for a in [&wrong_id, &wrong_key] {
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(a.code(), 10014);
    }
    assert_eq!(wrong_id.json()["msg"], wrong_key.json()["msg"]);
    let garbled = fetch_token(&h, "app_id=x").await;
    assert_eq!(garbled.status, StatusCode::BAD_REQUEST);
    assert_eq!(garbled.code(), 9499);
    assert!(h.sim.token_calls().len() <= 1, "never forwarded");
}

#[tokio::test]
async fn tampered_or_unknown_tokens_get_401_99991663() {
    let h = start(sim_config()).await;
    let body = format!(r#"{{"app_id":"{APP_ID}","app_secret":"{CLIENT_KEY}"}}"#);
    let token = fetch_token(&h, &body).await.json()["tenant_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    for t in [tampered.as_str(), "t-g1.bm9wZQ.bm9wZQ"] {
        let auth = format!("Bearer {t}");
        let a = h
            .call(
                Method::POST,
                PUT_PATH,
                &[("authorization", &auth)],
                PUT_BODY,
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            a.code(),
            99991663,
            "the Go SDK refetches its token on this code"
        );
    }
    assert!(h.sim.requests().is_empty());
}

#[tokio::test]
async fn tokens_survive_a_restart_with_a_signing_key() {
    let sim = SimFeishu::start(sim_config()).await.unwrap();
    let client = http_client();
    let body = format!(r#"{{"app_id":"{APP_ID}","app_secret":"{CLIENT_KEY}"}}"#);
    let first = start_signed(&sim).await;
    let a = call(&client, first.addr(), Method::POST, TOKEN_PATH, &[], &body).await;
    let token = a.json()["tenant_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    first.shutdown();
    first.wait().await;

    let second = start_signed(&sim).await;
    let a = put_with_token(&client, second.addr(), &token).await;
    assert_eq!(a.code(), 0, "{:?}", a.body);
}

#[tokio::test]
async fn user_tokens_pass_untouched_with_the_client_key_and_are_never_replayed() {
    let h = start(sim_config()).await;
    h.ready().await;
    let headers = [
        ("authorization", "Bearer u-user-token-123"),
        ("x-gateway-key", CLIENT_KEY),
        ("content-type", "application/json"),
    ];
    // The fake does not know this user token: Feishu's 99991663 comes back
    // as it is, with no replay (user tokens are the caller's).
    let a = h.call(Method::POST, PUT_PATH, &headers, PUT_BODY).await;
    assert_eq!(a.code(), 99991663);
    assert!(a.header("x-gateway-error").is_none());
    let reqs = h.sim.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].bearer.as_deref(), Some("u-user-token-123"));
    assert!(
        reqs[0].headers.get("x-gateway-key").is_none(),
        "the key is not forwarded"
    );

    // Without a valid key: refused before Feishu.
    for key in [None, Some("not-a-key-000000000")] {
        let mut hs = vec![("authorization", "Bearer u-user-token-123")];
        if let Some(k) = key {
            hs.push(("x-gateway-key", k));
        }
        let a = h.call(Method::POST, PUT_PATH, &hs, PUT_BODY).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(h.sim.requests().len(), 1);
}

#[tokio::test]
async fn other_auth_endpoints_are_never_forwarded() {
    let h = start(sim_config()).await;
    let auth = format!("Bearer {CLIENT_KEY}");
    for path in [
        "/open-apis/auth/v3/app_access_token",
        "/open-apis/auth/v3/tenant_access_token",
        "/open-apis/auth/v3/app_ticket/resend",
    ] {
        let a = h
            .call(Method::POST, path, &[("authorization", &auth)], "{}")
            .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert!(h.sim.requests().is_empty());
}
