//! `/readyz` is about the pod, through real sockets: 503 while starting
//! (until every app's first token call has ended, bounded by
//! `timeouts.startup`) and while draining; one app without a token does not
//! take the pod out of service for the others.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::config::{App, Client};
use support::*;
use tokio::time::Instant;

const BROKEN_KEY: &str = "client-key-of-the-broken-app-0123";

#[tokio::test]
async fn one_app_with_a_wrong_secret_does_not_take_the_pod_out() {
    let h = start_with(sim_config(), |c| {
        c.startup_timeout(Duration::from_secs(60))
            .app(App::self_built("broken-bot", "cli_broken", "BROKEN_SECRET"))
            .client(Client::new("broken-client", "BROKEN_KEY", "broken-bot"))
            .env("BROKEN_SECRET", "not-the-secret")
            .env("BROKEN_KEY", BROKEN_KEY)
    })
    .await;
    // Ready long before the 60 s start timeout: Feishu's refusal of
    // broken-bot's secret settles its first token call as a token would.
    let started = Instant::now();
    h.ready().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let r = h.admin("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["starting"], false, "{v}");
    assert_eq!(v["draining"], false, "{v}");
    assert_eq!(
        v["apps_without_token"],
        serde_json::json!(["broken-bot"]),
        "{v}"
    );
    let broken = &v["apps"][1];
    assert_eq!(broken["app"], "broken-bot");
    assert_eq!(
        (broken["has_token"].clone(), broken["settled"].clone()),
        (false.into(), true.into())
    );
    assert!(broken["last_error_code"].is_i64(), "{v}");
    assert!(!r.text().contains("not-the-secret"));

    // ops-bot's requests are served; broken-bot's get 503 with Feishu's code.
    assert_eq!(h.put("oc_123").await.code(), 0);
    let auth = format!("Bearer {BROKEN_KEY}");
    let a = h
        .call(
            http::Method::POST,
            PUT_PATH,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            PUT_BODY,
        )
        .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert_eq!(a.header("x-gateway-error"), Some("token-unavailable"));
    // What the alert FeishuGatewayAppWithoutToken reads: no token (0) for
    // broken-bot, a future expiry for ops-bot.
    let m = h.metrics().await;
    let expiry = |app: &str| {
        metric_value(
            &m,
            &format!("feishu_gateway_token_expiry_timestamp_seconds{{app=\"{app}\"}}"),
        )
    };
    assert_eq!(expiry("broken-bot"), Some(0.0), "{m}");
    assert!(expiry("ops-bot").unwrap() > 1e9, "{m}");
    h.stop().await;
}

#[tokio::test]
async fn starting_lasts_until_the_first_token_calls_end_or_the_start_timeout() {
    // Feishu cannot be reached at all: the token calls are retried, never
    // settled, so the pod is "starting" for timeouts.startup, then ready
    // (its requests get 503 until Feishu is back).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let config = GatewayConfig::new(&format!("http://{closed}"))
        .startup_timeout(Duration::from_millis(1500));
    let started = Instant::now();
    let gw = start_gateway(&config).await;
    let client = http_client();
    let r = admin_get(&client, &gw, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["ready"].clone(), v["starting"].clone()),
        (false.into(), true.into()),
        "{v}"
    );
    assert_eq!(v["apps"][0]["settled"], false, "{v}");
    wait_ready(&client, &gw).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(8),
        "ready after {took:?}, with a start timeout of 1.5 s"
    );
    let v = admin_get(&client, &gw, "/readyz").await.json();
    assert_eq!(v["starting"], false, "{v}");
    assert_eq!(
        v["apps_without_token"],
        serde_json::json!(["ops-bot"]),
        "{v}"
    );
    gw.shutdown();
    gw.wait().await;
}

#[tokio::test]
async fn draining_answers_503_until_the_in_flight_requests_are_done() {
    let h = start(sim_config()).await;
    h.ready().await;
    let addr = h.gw.addr();
    let admin = h.gw.admin_addr();
    let client = h.client.clone();
    let slow = tokio::spawn(async move {
        put_at(&client, addr, PUT_PATH, &[("x-sim-delay-ms", "1500")]).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Harness { sim, gw, client } = h;
    gw.shutdown();
    // The admin listener still answers while the main one drains: 503.
    let r = get(&client, admin, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.json()["draining"], true);
    assert_eq!(get(&client, admin, "/healthz").await.status, StatusCode::OK);
    assert_eq!(slow.await.unwrap().code(), 0);
    tokio::time::timeout(Duration::from_secs(5), gw.wait())
        .await
        .expect("drained");
    // Then the admin listener is gone too.
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
    sim.shutdown().await;
}
