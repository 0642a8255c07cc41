//! Operating the gateway for many teams, through real sockets against the
//! simulated Feishu: key rotation (several keys per client, named in
//! metrics and logs by a digest prefix, never by the key).

mod support;

use http::{Method, StatusCode};
use sha2::{Digest, Sha256};
use support::config::{App, Client};
use support::*;

/// Billing's next key.
const BILLING_NEXT_KEY: &str = "client-key-billing-NEXT-0123456789";

/// The key's name in logs and metrics: the first 8 hex digits of its SHA-256.
fn key_id(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))[..8].to_string()
}

#[tokio::test]
async fn a_client_key_is_rotated_without_a_gap() {
    let sim = SimFeishu::start(sim_config()).await.expect("sim starts");
    let upstream = sim.base_url();
    let config = |keys: &[&str]| {
        GatewayConfig::bare(&upstream)
            .app(App::self_built("ops-bot", APP_ID, "APP_SECRET"))
            .client(Client::new("billing", "unused", "ops-bot").key_envs(keys))
            .env("APP_SECRET", APP_SECRET)
            .env("CLIENT_KEY", CLIENT_KEY)
            .env("NEXT_KEY", BILLING_NEXT_KEY)
            .env("SIGNING_KEY", "sdk-token-signing-key-0123456789")
            .sdk_signing_key_env("SIGNING_KEY")
    };
    let client = http_client();
    let sdk_token = |gw: &Runtime, key: &str| {
        let client = client.clone();
        let addr = gw.addr();
        let body = serde_json::json!({"app_id": APP_ID, "app_secret": key}).to_string();
        async move {
            let a = call(
                &client,
                addr,
                Method::POST,
                "/open-apis/auth/v3/tenant_access_token/internal",
                &[("content-type", "application/json")],
                &body,
            )
            .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text());
            a.json()["tenant_access_token"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let put = |gw: &Runtime, bearer: &str| {
        let client = client.clone();
        let addr = gw.addr();
        let auth = format!("Bearer {bearer}");
        async move {
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ];
            call(&client, addr, Method::POST, PUT_PATH, &headers, PUT_BODY).await
        }
    };

    // Before: the old key. A service holds a gateway token issued for it.
    let before = start_gateway(&config(&["CLIENT_KEY"])).await;
    let old_token = sdk_token(&before, CLIENT_KEY).await;
    before.shutdown();
    before.wait().await;

    // During: old and new. Both keys and the old key's token work; each
    // key is counted under its digest prefix.
    let during = start_gateway(&config(&["NEXT_KEY", "CLIENT_KEY"])).await;
    for bearer in [CLIENT_KEY, BILLING_NEXT_KEY, old_token.as_str()] {
        let a = put(&during, bearer).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    }
    let new_token = sdk_token(&during, BILLING_NEXT_KEY).await;
    assert_eq!(put(&during, &new_token).await.status, StatusCode::OK);
    let m = metrics_of(&client, &during).await;
    let requests = |key: &str| {
        metric_value(
            &m,
            &format!(
                "feishu_gateway_client_requests_total{{client=\"billing\",key=\"{}\"}}",
                key_id(key)
            ),
        )
    };
    // The old key: its call and its token's call; the new key: its call,
    // its token call and its token's call.
    assert_eq!(requests(CLIENT_KEY), Some(2.0), "{m}");
    assert_eq!(requests(BILLING_NEXT_KEY), Some(3.0), "{m}");
    for secret in [CLIENT_KEY, BILLING_NEXT_KEY, &old_token, &new_token] {
        assert!(!m.contains(secret), "a key or token in /metrics");
    }
    during.shutdown();
    during.wait().await;

    // After: the old key removed ends it and the tokens issued for it.
    let after = start_gateway(&config(&["NEXT_KEY"])).await;
    for bearer in [CLIENT_KEY, old_token.as_str()] {
        let a = put(&after, bearer).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text());
    }
    for bearer in [BILLING_NEXT_KEY, new_token.as_str()] {
        let a = put(&after, bearer).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    }
    let m = metrics_of(&client, &after).await;
    assert!(
        !m.contains(&key_id(CLIENT_KEY)),
        "the removed key has no series: {m}"
    );
    after.shutdown();
    after.wait().await;
    sim.shutdown().await;
}
