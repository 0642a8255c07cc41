//! The monthly call budget through real sockets: counted calls counted and
//! exported; the budget reached or Feishu's 99991403 → counted calls
//! answered by the gateway (429, 99991403, `X-Gateway-Error:
//! budget-exhausted`) and nothing sent, while exempt (contact) calls still
//! go; a budget group shared by two apps; the count kept in `state_dir`
//! across a restart; two replicas sharing one count through Redis.
//!
//! The Redis test is skipped with a note without `redis-server` on PATH,
//! except under `CI=true`, where it fails.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::config::{App, Client, Quota, QuotaFail};
use support::redis_server::redis_or_skip;
use support::*;

const CONTACT_PATH: &str = "/open-apis/contact/v3/users/ou_7d8a6e6df7621556ce0d21922b676706ccs";
const CHAT_PATH: &str = "/open-apis/im/v1/chats/oc_5ad11d72b830411d72b836c20";

/// The test app `ops-bot`, as `budget` makes it, with its client `billing`.
fn config(upstream: &str, budget: impl FnOnce(App) -> App) -> GatewayConfig {
    GatewayConfig::bare(upstream)
        .app(budget(App::self_built("ops-bot", APP_ID, "APP_SECRET")))
        .client(Client::new("billing", "CLIENT_KEY", "ops-bot"))
        .env("APP_SECRET", APP_SECRET)
        .env("CLIENT_KEY", CLIENT_KEY)
}

async fn harness(sim: SimConfig, config: impl FnOnce(&str) -> GatewayConfig) -> Harness {
    let sim = SimFeishu::start(sim).await.expect("sim starts");
    let gw = start_gateway(&config(&sim.base_url())).await;
    let h = Harness {
        sim,
        gw,
        client: http_client(),
    };
    h.ready().await;
    h
}

/// GET with the client key: a counted call (a chat) or an exempt one.
async fn get_with_key(h: &Harness, path: &str) -> Answer {
    let auth = format!("Bearer {CLIENT_KEY}");
    h.call(Method::GET, path, &[("authorization", &auth)], "")
        .await
}

fn gauge(m: &str, family: &str, app: &str) -> Option<f64> {
    metric_value(m, &format!("{family}{{app=\"{app}\"}}"))
}

/// The gateway's own answer for a spent budget.
fn assert_budget_exhausted(a: &Answer) {
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text());
    assert_eq!(a.code(), 99991403);
    assert_eq!(a.header("x-gateway-error"), Some("budget-exhausted"));
    assert!(a.header("x-tt-logid").is_none(), "not Feishu's answer");
    let retry: u64 = a
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    let left = Month::now().end_unix() - unix_now();
    assert!(retry.abs_diff(left as u64) <= 5, "{retry} vs {left}");
    let msg = a.json()["msg"].as_str().expect("msg").to_string();
    assert!(
        msg.starts_with("This month's API call quota has been exceeded"),
        "{msg}"
    );
}

#[tokio::test]
async fn counted_calls_are_counted_exported_and_stopped_at_the_budget() {
    let h = harness(sim_config(), |u| config(u, |a| a.monthly_budget(3))).await;
    let m = h.metrics().await;
    assert_eq!(
        gauge(&m, "feishu_gateway_budget_used", "ops-bot"),
        Some(0.0)
    );
    assert_eq!(
        gauge(&m, "feishu_gateway_budget_limit", "ops-bot"),
        Some(3.0)
    );

    // Counted: successes on counted paths. Not counted: a failure (Feishu's
    // 232011), an exempt call even when it succeeds.
    assert_eq!(h.put("oc_123").await.code(), 0);
    assert_eq!(h.put("oc_error232011").await.code(), 232011);
    h.sim.answer_next_with_code(0, StatusCode::OK, 1);
    let contact = get_with_key(&h, CONTACT_PATH).await;
    assert_eq!((contact.status, contact.code()), (StatusCode::OK, 0));
    assert_eq!(get_with_key(&h, CHAT_PATH).await.code(), 0);
    let m = h.metrics().await;
    assert_eq!(
        gauge(&m, "feishu_gateway_budget_used", "ops-bot"),
        Some(2.0)
    );
    assert_eq!(
        gauge(&m, "feishu_gateway_budget_exhausted", "ops-bot"),
        Some(0.0)
    );

    // The third is the last one.
    assert_eq!(h.put("oc_123").await.code(), 0);
    let sent = h.sim.requests().len();
    let refused = h.put("oc_123").await;
    assert_budget_exhausted(&refused);
    assert!(
        refused
            .text()
            .contains("counted 3 calls of the monthly_budget of 3"),
        "{}",
        refused.text()
    );
    assert_budget_exhausted(&get_with_key(&h, CHAT_PATH).await);
    assert_eq!(h.sim.requests().len(), sent, "nothing reached Feishu");

    // Contact calls are not counted by Feishu: still forwarded.
    let contact = get_with_key(&h, CONTACT_PATH).await;
    assert!(
        contact.header("x-gateway-error").is_none(),
        "{}",
        contact.text()
    );
    assert_eq!(h.sim.requests().len(), sent + 1);
    assert_eq!(
        h.sim.requests().last().map(|r| r.path.clone()).as_deref(),
        Some(CONTACT_PATH)
    );

    let m = h.metrics().await;
    assert_eq!(
        gauge(&m, "feishu_gateway_budget_used", "ops-bot"),
        Some(3.0)
    );
    assert_eq!(
        gauge(&m, "feishu_gateway_budget_exhausted", "ops-bot"),
        Some(1.0)
    );
    let refusals = format!(
        r#"feishu_gateway_requests_total{{app="ops-bot",code="99991403",route="{PUT_ROUTE}",status="429"}}"#
    );
    assert_eq!(metric_value(&m, &refusals), Some(1.0), "{m}");
    h.stop().await;
}

#[tokio::test]
async fn the_budget_is_checked_before_the_quota_is_spent() {
    // put_top_notice allows 1 per minute: the second call would be
    // rate-limited, but the spent budget answers first and the quota
    // counts no rejection.
    let h = harness(sim_config(), |u| {
        config(u, |a| a.monthly_budget(1)).put_limits(&[(1, Duration::from_secs(60))])
    })
    .await;
    assert_eq!(h.put("oc_123").await.code(), 0);
    assert_budget_exhausted(&h.put("oc_123").await);
    let m = h.metrics().await;
    let limited = format!(
        r#"feishu_gateway_rate_limited_total{{app="ops-bot",reason="1/60s",route="{PUT_ROUTE}"}}"#
    );
    // No rejection counted: the series appears with its first event.
    assert_eq!(metric_value(&m, &limited), None, "{m}");
    h.stop().await;
}

#[tokio::test]
async fn feishus_99991403_stops_counted_calls_while_contact_calls_go() {
    // No monthly_budget: Feishu's answer is enough.
    let h = harness(sim_config(), |u| config(u, |a| a)).await;
    assert_eq!(h.put("oc_123").await.code(), 0);
    h.sim
        .answer_next_with_code(99991403, StatusCode::TOO_MANY_REQUESTS, 1);
    let feishu = h.put("oc_123").await;
    assert_eq!(
        (feishu.status, feishu.code()),
        (StatusCode::TOO_MANY_REQUESTS, 99991403)
    );
    assert!(
        feishu.header("x-gateway-error").is_none(),
        "Feishu's own answer goes back as it is"
    );
    let sent = h.sim.requests().len();
    for path in [PUT_PATH, CHAT_PATH] {
        let a = if path == PUT_PATH {
            h.put_with(&[]).await
        } else {
            get_with_key(&h, path).await
        };
        assert_budget_exhausted(&a);
        assert!(
            a.text().contains("Feishu answered 99991403"),
            "{}",
            a.text()
        );
    }
    assert_eq!(h.sim.requests().len(), sent, "nothing reached Feishu");
    let contact = get_with_key(&h, CONTACT_PATH).await;
    assert!(contact.header("x-gateway-error").is_none());
    assert_eq!(h.sim.requests().len(), sent + 1, "the contact call went");

    let m = h.metrics().await;
    assert_eq!(
        gauge(&m, "feishu_gateway_budget_exhausted", "ops-bot"),
        Some(1.0)
    );
    assert_eq!(
        gauge(&m, "feishu_gateway_budget_used", "ops-bot"),
        Some(1.0)
    );
    assert_eq!(gauge(&m, "feishu_gateway_budget_limit", "ops-bot"), None);
    h.stop().await;
}

#[tokio::test]
async fn the_apps_of_a_budget_group_share_one_count() {
    const OTHER_ID: &str = "cli_test0000000002";
    const OTHER_KEY: &str = "client-key-second-app-0123456789";
    let mut sim = sim_config();
    sim.apps.push(SimApp::new(OTHER_ID, "second-secret"));
    let h = harness(sim, |u| {
        config(u, |a| a.monthly_budget(2).budget_group("acme"))
            .app(
                App::self_built("ops-bot-2", OTHER_ID, "OTHER_SECRET")
                    .monthly_budget(2)
                    .budget_group("acme"),
            )
            .client(Client::new("second", "OTHER_KEY", "ops-bot-2"))
            .env("OTHER_SECRET", "second-secret")
            .env("OTHER_KEY", OTHER_KEY)
    })
    .await;
    let other = |h: &Harness| {
        let auth = format!("Bearer {OTHER_KEY}");
        let client = h.client.clone();
        let addr = h.gw.addr();
        async move { put_at(&client, addr, PUT_PATH, &[("authorization", auth.as_str())]).await }
    };
    assert_eq!(h.put("oc_123").await.code(), 0);
    assert_eq!(other(&h).await.code(), 0);
    assert_budget_exhausted(&h.put("oc_123").await);
    let refused = other(&h).await;
    assert_budget_exhausted(&refused);
    let msg = refused.json()["msg"].as_str().expect("msg").to_string();
    assert!(msg.contains("budget group \"acme\""), "{msg}");
    let m = h.metrics().await;
    for app in ["ops-bot", "ops-bot-2"] {
        assert_eq!(gauge(&m, "feishu_gateway_budget_used", app), Some(2.0));
        assert_eq!(gauge(&m, "feishu_gateway_budget_limit", app), Some(2.0));
    }
    h.stop().await;
}

#[tokio::test]
async fn state_dir_keeps_the_count_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().to_owned();
    let sim = SimFeishu::start(sim_config()).await.expect("sim");
    let cfg = config(&sim.base_url(), |a| a.monthly_budget(3)).state_dir(&state);
    let client = http_client();

    let gw = start_gateway(&cfg).await;
    for _ in 0..2 {
        assert_eq!(put_at(&client, gw.addr(), PUT_PATH, &[]).await.code(), 0);
    }
    gw.shutdown();
    gw.wait().await;
    let saved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.join("budget.ops-bot.json")).expect("saved at shutdown"),
    )
    .expect("json");
    assert_eq!(saved["used"], 2);
    assert_eq!(saved["month"], Month::now().to_string());

    let gw = start_gateway(&cfg).await;
    let m = metrics_of(&client, &gw).await;
    assert_eq!(
        gauge(&m, "feishu_gateway_budget_used", "ops-bot"),
        Some(2.0)
    );
    assert_eq!(put_at(&client, gw.addr(), PUT_PATH, &[]).await.code(), 0);
    assert_budget_exhausted(&put_at(&client, gw.addr(), PUT_PATH, &[]).await);
    gw.shutdown();
    gw.wait().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_count_through_redis() {
    let redis = redis_or_skip!();
    let sim = SimFeishu::start(sim_config()).await.expect("sim");
    let cfg = config(&sim.base_url(), |a| a.monthly_budget(4)).quota(
        Quota::redis(&redis.url())
            .fail(QuotaFail::Local)
            .replicas(2),
    );
    let (a, b) = (start_gateway(&cfg).await, start_gateway(&cfg).await);
    let client = http_client();
    wait_ready(&client, &a).await;
    wait_ready(&client, &b).await;
    let used = |gw: &Runtime| {
        let client = client.clone();
        let admin = gw.admin_addr();
        async move {
            let m = get(&client, admin, "/metrics").await.text();
            gauge(&m, "feishu_gateway_budget_used", "ops-bot")
        }
    };

    for _ in 0..2 {
        assert_eq!(put_at(&client, a.addr(), PUT_PATH, &[]).await.code(), 0);
    }
    // B learns A's calls from Redis (its periodic read, within 5 s).
    wait_for(Duration::from_secs(10), || async {
        used(&b).await == Some(2.0)
    })
    .await;
    for _ in 0..2 {
        assert_eq!(put_at(&client, b.addr(), PUT_PATH, &[]).await.code(), 0);
    }
    // B's INCR replies carry the fleet's total: 4 of 4.
    wait_for(Duration::from_secs(5), || async {
        used(&b).await == Some(4.0)
    })
    .await;
    assert_budget_exhausted(&put_at(&client, b.addr(), PUT_PATH, &[]).await);
    // A learns it too, and stops.
    wait_for(Duration::from_secs(10), || async {
        used(&a).await == Some(4.0)
    })
    .await;
    assert_budget_exhausted(&put_at(&client, a.addr(), PUT_PATH, &[]).await);
    assert_eq!(
        sim.requests().len(),
        4,
        "4 calls of a budget of 4 reached Feishu"
    );

    // One key per (group, Shanghai month), expiring after 35 days.
    let key = format!("feishu-gateway:budget:{{ops-bot}}:{}", Month::now());
    let mut conn = redis.conn().await;
    let total: u64 = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(total, 4);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("TTL");
    assert!(
        (BUDGET_KEY_TTL as i64 - 60..=BUDGET_KEY_TTL as i64).contains(&ttl),
        "TTL {ttl}"
    );
    for gw in [a, b] {
        gw.shutdown();
        gw.wait().await;
    }
    sim.shutdown().await;
}
