//! Live reload (`Runtime::reload`, SIGHUP in `tests/cli.rs`), through real
//! sockets against the simulated Feishu: clients, keys, allow lists and
//! route limits change without dropping a connection or an in-flight
//! request; unchanged apps keep their tokens and quota state; a changed
//! secret gets a new token; an invalid config changes nothing.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::config::{App, Client, Route};
use support::*;

const NEXT_KEY: &str = "client-key-billing-NEXT-0123456789";
const NOTIFIER_KEY: &str = "client-key-notifier-0123456789";
const APP2_ID: &str = "cli_test0000000002";
const APP2_SECRET: &str = "app-secret-VERY-SECRET-0002";
const APP2_PATH: &str = "/open-apis/im/v1/chats/oc_app2/top_notice/put_top_notice";
const DELETE_PATH: &str = "/open-apis/im/v1/chats/oc_123/top_notice/delete_top_notice";

/// One HTTP/1.1 connection kept open across the reload: hyper's own
/// client connection, so a closed connection is an error here.
struct KeptConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    closed: tokio::task::JoinHandle<()>,
}

impl KeptConnection {
    async fn open(addr: SocketAddr) -> KeptConnection {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        let closed = tokio::spawn(async move {
            let _ = conn.await;
        });
        KeptConnection { sender, closed }
    }

    async fn put(&mut self, key: &str) -> (StatusCode, serde_json::Value) {
        self.sender
            .ready()
            .await
            .expect("the connection is still open");
        let req = Request::post(PUT_PATH)
            .header("host", "gateway")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json; charset=utf-8")
            .body(Full::new(Bytes::from_static(PUT_BODY.as_bytes())))
            .unwrap();
        let resp = self.sender.send_request(req).await.expect("answered");
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }
}

async fn call_as(h: &Harness, key: &str, method: Method, path: &str) -> Answer {
    let auth = format!("Bearer {key}");
    h.call(
        method,
        path,
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json; charset=utf-8"),
        ],
        PUT_BODY,
    )
    .await
}

fn base(upstream: &str) -> GatewayConfig {
    GatewayConfig::new(upstream)
        .without_put_quota()
        .env("NEXT_KEY", NEXT_KEY)
        .env("NOTIFIER_KEY", NOTIFIER_KEY)
}

#[tokio::test]
async fn clients_keys_and_allow_lists_change_without_dropping_a_connection_or_a_request() {
    let sim = SimFeishu::start(sim_without_quota()).await.unwrap();
    let upstream = sim.base_url();
    let h = Harness::on(sim, |_| base(&upstream)).await;
    h.ready().await;
    let mut kept = KeptConnection::open(h.gw.addr()).await;
    let (status, body) = kept.put(CLIENT_KEY).await;
    assert_eq!((status, body["code"].as_i64()), (StatusCode::OK, Some(0)));
    assert_eq!(
        call_as(&h, NOTIFIER_KEY, Method::POST, PUT_PATH)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // A request in flight (Feishu takes 1.5 s) while the config changes:
    // billing rotates to its next key (the old one removed), notifier is
    // added and may only delete.
    h.sim.set_latency(Duration::from_millis(1500));
    let in_flight = {
        let client = h.client.clone();
        let addr = h.gw.addr();
        tokio::spawn(async move { put_at(&client, addr, PUT_PATH, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = GatewayConfig::bare(&upstream)
        .app(App::self_built("ops-bot", APP_ID, "APP_SECRET"))
        .client(Client::new("billing", "NEXT_KEY", "ops-bot"))
        .client(
            Client::new("notifier", "NOTIFIER_KEY", "ops-bot")
                .allow(&["POST /open-apis/im/v1/chats/:chat_id/top_notice/delete_top_notice"]),
        )
        .without_put_quota()
        .env("APP_SECRET", APP_SECRET)
        .env("NEXT_KEY", NEXT_KEY)
        .env("NOTIFIER_KEY", NOTIFIER_KEY);
    let done = h.gw.reload(next.try_parse()).await.expect("reloaded");
    assert_eq!(done.kept, vec!["ops-bot".to_string()]);
    assert!(done.fresh.is_empty() && done.removed.is_empty());
    assert!(done.restart_needed.is_empty(), "{:?}", done.restart_needed);

    let a = in_flight.await.unwrap();
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::OK, 0),
        "the in-flight request finished: {}",
        a.text()
    );
    h.sim.set_latency(Duration::ZERO);

    // The same connection, still open, now under the new config.
    let (status, body) = kept.put(CLIENT_KEY).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the removed key: {body}");
    let (status, body) = kept.put(NEXT_KEY).await;
    assert_eq!(
        (status, body["code"].as_i64()),
        (StatusCode::OK, Some(0)),
        "{body}"
    );
    assert!(
        !kept.closed.is_finished(),
        "the kept connection was not closed"
    );
    let a = call_as(&h, NOTIFIER_KEY, Method::POST, PUT_PATH).await;
    assert_eq!(
        (a.status, a.header("x-gateway-error")),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let a = call_as(&h, NOTIFIER_KEY, Method::POST, DELETE_PATH).await;
    assert_eq!((a.status, a.code()), (StatusCode::OK, 0), "{}", a.text());

    let m = h.metrics().await;
    assert_eq!(
        metric_value(&m, r#"feishu_gateway_config_reloads_total{result="ok"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &m,
            r#"feishu_gateway_config_reloads_total{result="invalid"}"#
        ),
        Some(0.0)
    );
    h.stop().await;
}

#[tokio::test]
async fn unchanged_apps_keep_their_token_and_quota_a_changed_secret_gets_a_new_token() {
    let mut sim = sim_config();
    sim.apps.push(SimApp::new(APP2_ID, APP2_SECRET));
    let sim = SimFeishu::start(sim).await.unwrap();
    let upstream = sim.base_url();
    let config = |app2_secret: &str| {
        GatewayConfig::new(&upstream)
            .app(App::self_built("second", APP2_ID, "APP2_SECRET"))
            .client(Client::new("second-client", "NOTIFIER_KEY", "second"))
            .env("APP2_SECRET", app2_secret)
            .env("NOTIFIER_KEY", NOTIFIER_KEY)
            // Two puts per 10 s, in reject mode: the third is refused by the
            // gateway while the window lasts, reload or not.
            .put_limits(&[(2, Duration::from_secs(10))])
    };
    let h = Harness::on(sim, |_| config(APP2_SECRET)).await;
    h.ready().await;
    // Puts until the gateway refuses one (the plan spreads the two over
    // the window: the burst may be one).
    assert_eq!(h.put_with(&[]).await.code(), 0);
    let mut refused = false;
    for _ in 0..2 {
        refused = h.put_with(&[]).await.status == StatusCode::TOO_MANY_REQUESTS;
        if refused {
            break;
        }
    }
    assert!(refused, "the third put at the latest is refused");
    let a = call_as(&h, NOTIFIER_KEY, Method::POST, APP2_PATH).await;
    assert_eq!(a.code(), 0, "{}", a.text());
    let calls_before = h.sim.token_calls();
    let app1_calls = calls_before.iter().filter(|c| c.app_id == APP_ID).count();

    // Reload: ops-bot unchanged, `second` with another secret (one Feishu
    // will refuse: the gateway must try it, not keep the old token).
    let done =
        h.gw.reload(config("rotated-secret-WRONG").try_parse())
            .await
            .unwrap();
    assert_eq!(done.kept, vec!["ops-bot".to_string()]);
    assert_eq!(done.fresh, vec!["second".to_string()]);

    // ops-bot: the quota window goes on (still refused), no token call.
    let a = h.put_with(&[]).await;
    assert_eq!(
        a.status,
        StatusCode::TOO_MANY_REQUESTS,
        "quota state kept: {}",
        a.text()
    );
    wait_for(Duration::from_secs(5), || async {
        h.sim
            .token_calls()
            .iter()
            .any(|c| c.app_id == APP2_ID && !c.ok)
    })
    .await;
    let after = h.sim.token_calls();
    assert_eq!(
        after.iter().filter(|c| c.app_id == APP_ID).count(),
        app1_calls,
        "the unchanged app fetched no token"
    );
    // second: its new secret was tried, and its old token is not used.
    let a = call_as(&h, NOTIFIER_KEY, Method::POST, APP2_PATH).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert_eq!(a.header("x-gateway-error"), Some("token-unavailable"));

    // Back to the right secret: a token again.
    h.gw.reload(config(APP2_SECRET).try_parse()).await.unwrap();
    wait_for(Duration::from_secs(5), || async {
        call_as(&h, NOTIFIER_KEY, Method::POST, APP2_PATH)
            .await
            .status
            == StatusCode::OK
    })
    .await;
    assert_eq!(h.sim.violations(), 0);
    h.stop().await;
}

#[tokio::test]
async fn route_limits_change_on_reload_and_an_invalid_config_changes_nothing() {
    let sim = SimFeishu::start(sim_config()).await.unwrap();
    let upstream = sim.base_url();
    let config = |per_10s: u32| {
        GatewayConfig::new(&upstream).put_limits(&[(per_10s, Duration::from_secs(10))])
    };
    let h = Harness::on(sim, |_| config(1)).await;
    h.ready().await;
    assert_eq!(h.put_with(&[]).await.code(), 0);
    assert_eq!(h.put_with(&[]).await.status, StatusCode::TOO_MANY_REQUESTS);

    // Invalid: a client of an app that does not exist, a limit of 0 per
    // second, a key variable that is not set. Every problem is reported,
    // nothing changes, the refusal is counted.
    let bad = config(1)
        .client(Client::new("ghost", "NOWHERE_KEY", "nobody"))
        .route(Route::post(DELETE_ROUTE).limits(&[(0, Duration::from_secs(1))]));
    let err = h.gw.reload(bad.try_parse()).await.expect_err("refused");
    let text = err.to_string();
    for needle in ["nobody", "NOWHERE_KEY", "routes"] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    assert_eq!(
        h.put_with(&[]).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "old limits still in force"
    );
    assert_eq!(
        call_as(&h, CLIENT_KEY, Method::POST, PUT_PATH).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let m = h.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"feishu_gateway_config_reloads_total{result="invalid"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&m, r#"feishu_gateway_config_reloads_total{result="ok"}"#),
        Some(0.0)
    );

    // Valid, with put allowed 50 per 10 s: a new plan, so a fresh key,
    // which admits at once what the old one refused.
    h.gw.reload(config(50).try_parse()).await.expect("reloaded");
    let a = h.put_with(&[]).await;
    assert_eq!(a.code(), 0, "{}", a.text());
    let m = h.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("feishu_gateway_quota_limit{")
                && l.contains("put_top_notice")
                && l.ends_with(" 50")),
        "the new limit is exported"
    );
    let m = h.metrics().await;
    assert_eq!(
        metric_value(&m, r#"feishu_gateway_config_reloads_total{result="ok"}"#),
        Some(1.0)
    );
    assert_eq!(h.sim.violations(), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_listener_change_is_kept_for_the_restart_and_said() {
    let sim = SimFeishu::start(sim_without_quota()).await.unwrap();
    let upstream = sim.base_url();
    let h = Harness::on(sim, |_| base(&upstream)).await;
    h.ready().await;
    let moved = base(&upstream).max_connections(7).workers(3);
    let done = h.gw.reload(moved.try_parse()).await.expect("reloaded");
    assert_eq!(done.restart_needed, vec!["max_connections", "workers"]);
    // Still serving on the same address.
    assert_eq!(h.put_with(&[]).await.code(), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_reload_continues_the_monthly_budget_count() {
    let sim = SimFeishu::start(sim_config()).await.unwrap();
    let upstream = sim.base_url();
    let config = |budget: u64| {
        GatewayConfig::bare(&upstream)
            .app(App::self_built("ops-bot", APP_ID, "APP_SECRET").monthly_budget(budget))
            .client(Client::new("billing", "CLIENT_KEY", "ops-bot"))
            .env("APP_SECRET", APP_SECRET)
            .env("CLIENT_KEY", CLIENT_KEY)
    };
    let h = Harness::on(sim, |_| config(3)).await;
    h.ready().await;
    for _ in 0..2 {
        assert_eq!(h.put_with(&[]).await.code(), 0);
    }
    // The budget raised to 4: the count is the group's, and goes on at 2.
    h.gw.reload(config(4).try_parse()).await.expect("reloaded");
    for _ in 0..2 {
        let a = h.put_with(&[]).await;
        assert_eq!(a.code(), 0, "{}", a.text());
    }
    let a = h.put_with(&[]).await;
    assert_eq!(
        (a.status, a.header("x-gateway-error")),
        (StatusCode::TOO_MANY_REQUESTS, Some("budget-exhausted")),
        "4 counted calls: {}",
        a.text()
    );
    let m = h.metrics().await;
    assert_eq!(
        metric_value(&m, r#"feishu_gateway_budget_used{app="ops-bot"}"#),
        Some(4.0)
    );
    h.stop().await;
}

#[tokio::test]
async fn a_quota_share_changes_on_reload_and_an_unchanged_one_keeps_its_state() {
    let sim = SimFeishu::start(sim_config()).await.unwrap();
    let upstream = sim.base_url();
    // put_top_notice's catalog limits (50/1s, 1000/60s): at 0.02 billing
    // may send one per second and 20 per minute, planned as one per 3 s.
    let config = |share: Option<f64>| {
        let billing = Client::new("billing", "CLIENT_KEY", "ops-bot");
        GatewayConfig::bare(&upstream)
            .app(App::self_built("ops-bot", APP_ID, "APP_SECRET"))
            .client(match share {
                Some(s) => billing.quota_share(s),
                None => billing,
            })
            .env("APP_SECRET", APP_SECRET)
            .env("CLIENT_KEY", CLIENT_KEY)
    };
    let h = Harness::on(sim, |_| config(None)).await;
    h.ready().await;
    for _ in 0..3 {
        assert_eq!(h.put_with(&[]).await.code(), 0, "no share: the app's burst");
    }

    // Given a share: held to it from the next request.
    h.gw.reload(config(Some(0.02)).try_parse()).await.unwrap();
    assert_eq!(h.put_with(&[]).await.code(), 0, "the share's burst of one");
    let a = h.put_with(&[]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text());
    assert_eq!(a.header("x-gateway-error"), Some("share-limited"));

    // The same share after a reload: its state goes on, still refused.
    h.gw.reload(config(Some(0.02)).try_parse()).await.unwrap();
    let a = h.put_with(&[]).await;
    assert_eq!(
        a.header("x-gateway-error"),
        Some("share-limited"),
        "share state kept: {}",
        a.text()
    );

    // Another share is another key; none at all is the app's quota alone.
    h.gw.reload(config(Some(0.5)).try_parse()).await.unwrap();
    assert_eq!(h.put_with(&[]).await.code(), 0, "a share of 0.5, fresh");
    h.gw.reload(config(None).try_parse()).await.unwrap();
    assert_eq!(h.put_with(&[]).await.code(), 0, "no share any more");
    assert_eq!(h.sim.violations(), 0);
    h.stop().await;
}

#[tokio::test]
async fn reloads_under_load_drop_no_request_and_no_connection() {
    let sim = SimFeishu::start(sim_without_quota()).await.unwrap();
    let upstream = sim.base_url();
    let h = Harness::on(sim, |_| base(&upstream)).await;
    h.ready().await;
    let accepted_before = metric_value(
        &h.metrics().await,
        r#"feishu_gateway_connections_accepted_total{listener="main"}"#,
    )
    .unwrap_or(0.0);
    // 8 keep-alive connections, 40 puts each, while the config is reloaded
    // 20 times (a client added and removed in turn).
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let addr = h.gw.addr();
        tasks.push(tokio::spawn(async move {
            let mut conn = KeptConnection::open(addr).await;
            let mut answers = Vec::new();
            for _ in 0..40 {
                let (status, body) = conn.put(CLIENT_KEY).await;
                answers.push((status, body["code"].as_i64()));
            }
            answers
        }));
    }
    for i in 0..20 {
        let mut next = base(&upstream);
        if i % 2 == 0 {
            next = next.client(Client::new("notifier", "NOTIFIER_KEY", "ops-bot"));
        }
        h.gw.reload(next.try_parse()).await.expect("reloaded");
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    for t in tasks {
        for answer in t.await.expect("no connection was dropped") {
            assert_eq!(answer, (StatusCode::OK, Some(0)));
        }
    }
    let m = h.metrics().await;
    assert_eq!(
        metric_value(&m, r#"feishu_gateway_config_reloads_total{result="ok"}"#),
        Some(20.0)
    );
    let accepted = metric_value(
        &m,
        r#"feishu_gateway_connections_accepted_total{listener="main"}"#,
    )
    .unwrap_or(0.0);
    assert_eq!(
        accepted - accepted_before,
        8.0,
        "the 8 connections, never a new one"
    );
    assert_eq!(
        h.sim.token_calls().len(),
        1,
        "the unchanged app fetched one token in all"
    );
    h.stop().await;
}
