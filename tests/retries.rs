//! Retries by code (`src/proxy/retry.rs`), through real sockets: against
//! the simulated Feishu with injected failures, and against raw-socket
//! upstreams. A transient failure is sent again only when that is safe
//! (GET/HEAD, a request with its endpoint's idempotency key, or nothing
//! sent), within the app's retry budget, the request's time and the quota;
//! counted in `feishu_gateway_retries_total{app,route,reason}`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use support::config::{Quota, Route};
use support::scripted::*;
use support::*;
use tokio::net::TcpListener;

const CHAT: &str = "/open-apis/im/v1/chats/oc_1";
const GET_CHAT_ROUTE: &str = "/open-apis/im/v1/chats/:chat_id";

fn auth() -> String {
    format!("Bearer {CLIENT_KEY}")
}

/// Fast backoffs, so tests spend no time waiting.
fn fast(c: GatewayConfig) -> GatewayConfig {
    c.retry_backoff(Duration::from_millis(2), Duration::from_millis(4))
}

async fn get_chat(h: &Harness) -> Answer {
    h.call(Method::GET, CHAT, &[("authorization", &auth())], "")
        .await
}

/// The value of a `feishu_gateway_retries_total` (or `_skipped_total`)
/// series; 0 when absent.
fn counted(metrics: &str, family: &str, route: &str, reason: &str) -> f64 {
    metric_value(
        metrics,
        &format!("{family}{{app=\"ops-bot\",reason=\"{reason}\",route=\"{route}\"}}"),
    )
    .unwrap_or(0.0)
}

fn retries(metrics: &str, route: &str, reason: &str) -> f64 {
    counted(metrics, "feishu_gateway_retries_total", route, reason)
}

fn skipped(metrics: &str, route: &str, reason: &str) -> f64 {
    counted(
        metrics,
        "feishu_gateway_retries_skipped_total",
        route,
        reason,
    )
}

fn sent_to(h: &Harness, path: &str) -> usize {
    h.sim.requests().iter().filter(|r| r.path == path).count()
}

/// A GET answered with a transient code, then by an edge 502 and 503, is
/// sent again and succeeds; the client sees only the success.
#[tokio::test]
async fn a_get_answered_with_a_transient_failure_is_retried_and_counted() {
    let h = start_with(sim_config(), fast).await;
    h.sim
        .answer_next_with_code(1500, StatusCode::INTERNAL_SERVER_ERROR, 1);
    let a = get_chat(&h).await;
    assert_eq!((a.status, a.code()), (StatusCode::OK, 0), "{:?}", a.body);
    assert_eq!(sent_to(&h, CHAT), 2);

    for status in [StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE] {
        h.sim.answer_next_from_edge(status, 1);
        let a = get_chat(&h).await;
        assert_eq!((a.status, a.code()), (StatusCode::OK, 0), "{status}");
    }
    assert_eq!(sent_to(&h, CHAT), 6);

    let m = h.metrics().await;
    assert_eq!(retries(&m, GET_CHAT_ROUTE, "code"), 1.0, "{m}");
    assert_eq!(retries(&m, GET_CHAT_ROUTE, "edge_502"), 1.0);
    assert_eq!(retries(&m, GET_CHAT_ROUTE, "edge_503"), 1.0);
    // The answers counted are the clients': three 200s, no 500.
    assert_eq!(
        metric_value(
            &m,
            &format!(
                "feishu_gateway_requests_total{{app=\"ops-bot\",code=\"0\",route=\"{GET_CHAT_ROUTE}\",status=\"200\"}}"
            )
        ),
        Some(3.0)
    );
    // The monthly budget counts what Feishu counts: the three successes,
    // not the failed attempts before them.
    assert_eq!(
        metric_value(&m, "feishu_gateway_budget_used{app=\"ops-bot\"}"),
        Some(3.0),
        "{m}"
    );
    h.stop().await;
}

/// Every retry may fail too: after `max_retries` the last failure is the
/// answer, as Feishu gave it.
#[tokio::test]
async fn after_max_retries_the_last_failure_is_answered() {
    let h = start_with(sim_config(), |c| fast(c).max_retries(2)).await;
    h.sim
        .answer_next_with_code(1663, StatusCode::INTERNAL_SERVER_ERROR, 10);
    let a = get_chat(&h).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::INTERNAL_SERVER_ERROR, 1663)
    );
    assert!(a.header("x-gateway-error").is_none(), "Feishu's own answer");
    assert_eq!(sent_to(&h, CHAT), 3, "one attempt and two retries");
    let m = h.metrics().await;
    assert_eq!(retries(&m, GET_CHAT_ROUTE, "code"), 2.0);
    assert_eq!(skipped(&m, GET_CHAT_ROUTE, "attempts"), 1.0);
    h.stop().await;
}

/// 99991403 (monthly budget spent), 99991672 (missing scope) and throttling
/// are not transient: never sent again, even for a GET. Each of Feishu's
/// walls then holds the calls behind it in the gateway, neither sent nor
/// retried: 99991400 pauses the route (`upstream_throttled`), 99991403
/// stops the app's counted calls until the month turns (the budget).
#[tokio::test]
async fn a_spent_budget_a_missing_scope_or_throttling_is_never_retried() {
    let h = start_with(sim_config(), fast).await;
    for (code, status) in [
        (99991672, StatusCode::BAD_REQUEST),
        (230049, StatusCode::BAD_REQUEST),
        (99991400, StatusCode::BAD_REQUEST),
    ] {
        let before = sent_to(&h, CHAT);
        h.sim.answer_next_with_code(code, status, 1);
        let a = get_chat(&h).await;
        assert_eq!((a.status, a.code()), (status, code));
        assert_eq!(sent_to(&h, CHAT), before + 1, "{code} was sent once");
    }
    let before = sent_to(&h, CHAT);
    let a = get_chat(&h).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", a.text());
    assert_eq!(a.header("x-gateway-error"), Some("rate-limited"));
    assert_eq!(sent_to(&h, CHAT), before, "the paused route sends nothing");

    // The monthly budget, on another route (the chat's is paused).
    const MESSAGE: &str = "/open-apis/im/v1/messages/om_1";
    let auth = auth();
    let headers = [("authorization", auth.as_str())];
    let get_message = || h.call(Method::GET, MESSAGE, &headers, "");
    h.sim
        .answer_next_with_code(99991403, StatusCode::TOO_MANY_REQUESTS, 1);
    let a = get_message().await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::TOO_MANY_REQUESTS, 99991403)
    );
    assert!(a.header("x-gateway-error").is_none(), "Feishu's own answer");
    assert_eq!(sent_to(&h, MESSAGE), 1, "99991403 was sent once");
    let a = get_message().await;
    assert_eq!(a.code(), 99991403, "{:?}", a.text());
    assert_eq!(a.header("x-gateway-error"), Some("budget-exhausted"));
    assert_eq!(sent_to(&h, MESSAGE), 1, "the spent budget sends nothing");

    let m = h.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            &format!(
                "feishu_gateway_upstream_throttled_total{{app=\"ops-bot\",code=\"99991400\",route=\"{GET_CHAT_ROUTE}\"}}"
            )
        ),
        Some(1.0),
        "{m}"
    );
    assert!(!m.contains("feishu_gateway_retries_total{"), "{m}");
    assert!(!m.contains("feishu_gateway_retries_skipped_total{"), "{m}");
    h.stop().await;
}

/// A POST without an idempotency key (put_top_notice has none) answered
/// with a transient code is not sent again: Feishu may have acted on it.
#[tokio::test]
async fn a_post_without_an_idempotency_key_is_not_retried() {
    let h = start_with(sim_config(), fast).await;
    h.sim
        .answer_next_with_code(1500, StatusCode::INTERNAL_SERVER_ERROR, 1);
    let a = h.put("oc_1").await;
    assert_eq!(a.code(), 1500);
    h.sim.answer_next_from_edge(StatusCode::BAD_GATEWAY, 1);
    let a = h.put("oc_1").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    let puts = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("put_top_notice"))
        .count();
    assert_eq!(puts, 2, "each sent once");
    let m = h.metrics().await;
    assert_eq!(skipped(&m, PUT_ROUTE, "unsafe"), 2.0, "{m}");
    assert_eq!(retries(&m, PUT_ROUTE, "code"), 0.0);
    h.stop().await;
}

/// A retry is a call like any other for the quota: admitted again, without
/// waiting. With 3 calls per minute (planned as a burst of 3), a failing GET
/// reaches Feishu 3 times, whatever `max_retries` says, and the quota is
/// not exceeded.
#[tokio::test]
async fn retries_spend_quota_and_stop_where_it_ends() {
    let h = start_with(sim_config(), |c| {
        fast(c)
            .max_retries(5)
            // The whole minute's 3 calls as one burst.
            .quota(Quota::local().min_rate_fraction(0.3))
            .route(Route::new(Method::GET, GET_CHAT_ROUTE).limits(&[(3, Duration::from_secs(60))]))
    })
    .await;
    h.sim
        .answer_next_with_code(1500, StatusCode::INTERNAL_SERVER_ERROR, 10);
    let a = get_chat(&h).await;
    assert_eq!(a.code(), 1500);
    assert_eq!(sent_to(&h, CHAT), 3);
    let m = h.metrics().await;
    assert_eq!(retries(&m, GET_CHAT_ROUTE, "code"), 2.0, "{m}");
    assert_eq!(skipped(&m, GET_CHAT_ROUTE, "quota"), 1.0);
    // The quota is spent: the next call is the gateway's 429, not sent.
    let a = get_chat(&h).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(sent_to(&h, CHAT), 3);
    h.stop().await;
}

/// The attempts share the upstream timeout: when another attempt would not
/// fit in what is left, the failure is answered at once.
#[tokio::test]
async fn a_retry_that_would_not_fit_the_upstream_timeout_is_not_made() {
    let h = start_with(sim_config(), |c| {
        fast(c).upstream_timeout(Duration::from_millis(1000))
    })
    .await;
    h.sim
        .answer_next_with_code(1500, StatusCode::INTERNAL_SERVER_ERROR, 5);
    // Each answer takes 600 ms: a second attempt would end past 1000 ms.
    let a = h
        .call(
            Method::GET,
            CHAT,
            &[("authorization", &auth()), ("x-sim-delay-ms", "600")],
            "",
        )
        .await;
    assert_eq!(a.code(), 1500);
    assert_eq!(sent_to(&h, CHAT), 1);
    let m = h.metrics().await;
    assert_eq!(skipped(&m, GET_CHAT_ROUTE, "deadline"), 1.0, "{m}");
    h.stop().await;
}

/// A retry storm is bounded by the app's budget: 1000 calls while Feishu
/// fails every one cost at most `budget_min` + 10 % more upstream calls
/// (not 3x with two retries each), and the rest is counted as skipped. The
/// route's own quota (Feishu's 50/s, 1000/min for this endpoint) is lifted
/// here, so that only the budget stops retries.
#[tokio::test]
async fn the_budget_stops_a_retry_storm() {
    let h = start_with(sim_config(), |c| {
        fast(c)
            .max_retries(2)
            .retry_budget(10, 0.1, Duration::from_secs(60))
            .route(
                Route::new(Method::GET, GET_CHAT_ROUTE)
                    .limits(&[(1_000_000, Duration::from_secs(60))]),
            )
    })
    .await;
    h.sim
        .answer_next_from_edge(StatusCode::SERVICE_UNAVAILABLE, u32::MAX);
    let h = Arc::new(h);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..10 {
        let h = Arc::clone(&h);
        tasks.spawn(async move {
            for _ in 0..100 {
                let a = get_chat(&h).await;
                assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "worker {worker}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("a client task");
    }
    let calls = sent_to(&h, CHAT);
    let m = h.metrics().await;
    let made = retries(&m, GET_CHAT_ROUTE, "edge_503");
    let budget = skipped(&m, GET_CHAT_ROUTE, "budget");
    eprintln!("1000 failing calls: {calls} upstream calls, {made} retries, {budget} refused by the budget");
    assert_eq!(calls as f64, 1000.0 + made);
    assert!(
        calls <= 1000 + 10 + 100,
        "{calls} upstream calls for 1000 requests"
    );
    assert!(
        made >= 100.0,
        "the budget is used, not refused outright: {made}"
    );
    assert!(budget >= 800.0, "{budget}");
    let h = Arc::into_inner(h).expect("the only handle left");
    h.stop().await;
}

/// With `[retries] enabled = false` nothing is retried.
#[tokio::test]
async fn retries_can_be_switched_off() {
    let h = start_with(sim_config(), |c| c.without_retries()).await;
    h.sim
        .answer_next_with_code(1500, StatusCode::INTERNAL_SERVER_ERROR, 1);
    assert_eq!(get_chat(&h).await.code(), 1500);
    assert_eq!(sent_to(&h, CHAT), 1);
    assert!(!h.metrics().await.contains("feishu_gateway_retries"));
    h.stop().await;
}

// ----- raw-socket upstreams ------------------------------------------------

const MESSAGES: &str = "/open-apis/im/v1/messages?receive_id_type=chat_id";
const MESSAGES_ROUTE: &str = "/open-apis/im/v1/messages";

fn ok_answer() -> Vec<u8> {
    json_answer(
        "200 OK",
        "",
        r#"{"code":0,"msg":"success","data":{"message_id":"om_1"}}"#,
    )
    .into_bytes()
}

async fn post_message(gw: &Runtime, body: &str) -> Answer {
    call(
        &http_client(),
        gw.addr(),
        Method::POST,
        MESSAGES,
        &[
            ("authorization", &auth()),
            ("content-type", "application/json; charset=utf-8"),
        ],
        body,
    )
    .await
}

async fn gateway_for(upstream: std::net::SocketAddr) -> Runtime {
    start_gateway(&fast(GatewayConfig::new(&format!("http://{upstream}")))).await
}

/// A message with a `uuid` (Feishu sends at most one per uuid in an hour)
/// is sent again after a transient code; one without is not.
#[tokio::test]
async fn a_post_with_its_idempotency_key_is_retried_one_without_is_not() {
    let transient = json_answer(
        "500 Internal Server Error",
        "",
        r#"{"code":1500,"msg":"internal error"}"#,
    )
    .into_bytes();
    let (upstream, seen) =
        scripted_upstream(vec![transient.clone(), ok_answer(), transient, ok_answer()]).await;
    let gw = gateway_for(upstream).await;
    let keyed = r#"{"receive_id":"oc_1","msg_type":"text","content":"{\"text\":\"hi\"}","uuid":"6c1e-retry-1"}"#;
    let a = post_message(&gw, keyed).await;
    assert_eq!((a.status, a.code()), (StatusCode::OK, 0), "{:?}", a.text());
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "sent twice with the same uuid"
    );

    // To another chat: the gateway holds each receiver to Feishu's 5/s
    // (`im.receiver`), planned one message at a time.
    let unkeyed = r#"{"receive_id":"oc_2","msg_type":"text","content":"{\"text\":\"hi\"}"}"#;
    let a = post_message(&gw, unkeyed).await;
    assert_eq!(a.code(), 1500, "the failure is the answer: {:?}", a.text());
    assert_eq!(seen.lock().unwrap().len(), 3, "sent once");
    let m = metrics_of(&http_client(), &gw).await;
    assert_eq!(retries(&m, MESSAGES_ROUTE, "code"), 1.0, "{m}");
    assert_eq!(skipped(&m, MESSAGES_ROUTE, "unsafe"), 1.0);
    gw.shutdown();
    gw.wait().await;
}

/// A connection reset after the request left: a GET goes again, a POST
/// without a key does not (the gateway's 502, the POST seen once).
#[tokio::test]
async fn a_reset_after_sending_is_retried_for_a_get_only() {
    let reset_answer = [RESET, b""].concat();
    let (upstream, seen) = scripted_upstream(vec![
        reset_answer.clone(),
        ok_answer(),
        reset_answer,
        ok_answer(),
    ])
    .await;
    let gw = gateway_for(upstream).await;
    let client = http_client();
    let a = call(
        &client,
        gw.addr(),
        Method::GET,
        "/open-apis/im/v1/chats/oc_1",
        &[("authorization", &auth())],
        "",
    )
    .await;
    assert_eq!((a.status, a.code()), (StatusCode::OK, 0));
    assert_eq!(seen.lock().unwrap().len(), 2);

    let a = post_message(
        &gw,
        r#"{"receive_id":"oc_1","msg_type":"text","content":"{\"text\":\"hi\"}"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{:?}", a.text());
    assert_eq!(a.code(), 99990502);
    assert_eq!(seen.lock().unwrap().len(), 3, "the POST reached it once");
    let m = metrics_of(&client, &gw).await;
    assert_eq!(retries(&m, GET_CHAT_ROUTE, "reset"), 1.0, "{m}");
    assert_eq!(skipped(&m, MESSAGES_ROUTE, "unsafe"), 1.0);
    gw.shutdown();
    gw.wait().await;
}

/// Connection refused: nothing of the request left, so even a POST without
/// an idempotency key goes again once the upstream is back, and reaches it
/// once.
#[tokio::test]
async fn a_refused_connection_is_retried_for_any_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    // Every answer closes its connection: none stays pooled.
    let close_ok = [CLOSE, &ok_answer()].concat();
    let serving = serve_scripted_on(listener, vec![close_ok.clone()], Arc::clone(&seen));
    // A long backoff: the upstream comes back while the gateway waits.
    let gw = start_gateway(
        &GatewayConfig::new(&format!("http://{upstream}"))
            .retry_backoff(Duration::from_millis(600), Duration::from_millis(600)),
    )
    .await;
    let client = http_client();
    // The token is fetched, a first call answered.
    let a = post_message(
        &gw,
        r#"{"receive_id":"oc_1","msg_type":"text","content":"{\"text\":\"hi\"}"}"#,
    )
    .await;
    assert_eq!(a.code(), 0);
    // The upstream goes away: connections are refused.
    serving.abort();
    let _ = serving.await;
    let gw_addr = gw.addr();
    let post = tokio::spawn(async move {
        call(
            &http_client(),
            gw_addr,
            Method::POST,
            MESSAGES,
            &[
                ("authorization", &auth()),
                ("content-type", "application/json"),
            ],
            // Another chat: the gateway holds each receiver to 5/s.
            r#"{"receive_id":"oc_2","msg_type":"text","content":"{\"text\":\"hi\"}"}"#,
        )
        .await
    });
    // Once the refusal is counted, the upstream comes back (the retry is
    // 300 to 600 ms away).
    wait_for(Duration::from_secs(10), || async {
        let m = metrics_of(&client, &gw).await;
        m.lines().any(|l| {
            l.starts_with("feishu_gateway_upstream_errors_total{") && l.contains("kind=\"connect\"")
        })
    })
    .await;
    let listener = TcpListener::bind(upstream)
        .await
        .expect("the same port again");
    let _serving = serve_scripted_on(listener, vec![close_ok], Arc::clone(&seen));
    let a = post.await.unwrap();
    assert_eq!((a.status, a.code()), (StatusCode::OK, 0), "{:?}", a.text());
    assert_eq!(seen.lock().unwrap().len(), 2, "each POST reached it once");
    let m = metrics_of(&client, &gw).await;
    assert_eq!(retries(&m, MESSAGES_ROUTE, "connect"), 1.0, "{m}");
    gw.shutdown();
    gw.wait().await;
}

/// A retry keeps the per-resource slot its request was admitted with and
/// takes no second one: a bitable record write (one at a time per table,
/// `bitable.table`) with its `client_token` is sent again after a transient
/// code while it still holds the table. Another write to the same table
/// during the backoff is refused as busy and never sent.
#[tokio::test]
async fn a_retry_keeps_its_resource_and_takes_no_second_slot() {
    const RECORDS: &str = "/open-apis/bitable/v1/apps/bas_1/tables/tbl_1/records";
    const RECORDS_ROUTE: &str = "/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records";
    let transient = json_answer(
        "500 Internal Server Error",
        "",
        r#"{"code":1500,"msg":"internal error"}"#,
    )
    .into_bytes();
    let (upstream, seen) = scripted_upstream(vec![transient, ok_answer()]).await;
    // A backoff of 500 ms to 1 s: time for the second write to arrive.
    let gw = start_gateway(
        &GatewayConfig::new(&format!("http://{upstream}"))
            .retry_backoff(Duration::from_millis(1000), Duration::from_millis(1000)),
    )
    .await;
    let write = |token: &'static str| {
        let addr = gw.addr();
        async move {
            call(
                &http_client(),
                addr,
                Method::POST,
                &format!("{RECORDS}?client_token={token}"),
                &[
                    ("authorization", &auth()),
                    ("content-type", "application/json; charset=utf-8"),
                ],
                r#"{"fields":{"name":"a"}}"#,
            )
            .await
        }
    };
    let first = tokio::spawn(write("fe599b60-450f-46ff-b2ef-9f6675625b97"));
    // The first attempt reached Feishu; its retry is 500 ms to 1 s away.
    wait_for(Duration::from_secs(10), || async {
        seen.lock().unwrap().len() == 1
    })
    .await;
    let second = write("0b7e7f4c-4d2b-4a57-9d43-3c1f3e8a5d10").await;
    assert_eq!(
        second.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        second.text()
    );
    assert_eq!(second.code(), 99991400, "{:?}", second.text());
    assert!(
        second.text().contains("bitable.table:concurrency"),
        "{:?}",
        second.text()
    );
    let first = first.await.unwrap();
    assert_eq!(
        (first.status, first.code()),
        (StatusCode::OK, 0),
        "the retry went without a second slot: {:?}",
        first.text()
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "the first write twice, the second never"
    );
    let m = metrics_of(&http_client(), &gw).await;
    assert_eq!(retries(&m, RECORDS_ROUTE, "code"), 1.0, "{m}");
    assert_eq!(
        metric_value(
            &m,
            &format!(
                "feishu_gateway_rate_limited_total{{app=\"ops-bot\",reason=\"bitable.table:concurrency\",route=\"{RECORDS_ROUTE}\"}}"
            )
        ),
        Some(1.0),
        "{m}"
    );
    gw.shutdown();
    gw.wait().await;
}

/// Feishu throttles the route while a request waits for its retry: the
/// retry is not made (`retries_skipped_total{reason="quota"}`) and the
/// transient failure is answered. On a route with a gateway quota the
/// pause is its key's; on one without (`special`), the route's own pause.
#[tokio::test]
async fn a_retry_respects_a_pause_set_during_its_backoff() {
    for (path, route) in [
        ("/open-apis/im/v1/chats/oc_1", GET_CHAT_ROUTE),
        (
            "/open-apis/helpdesk/v1/tickets/t_1/messages",
            "/open-apis/helpdesk/v1/tickets/:ticket_id/messages",
        ),
    ] {
        let transient = json_answer(
            "500 Internal Server Error",
            "",
            r#"{"code":1500,"msg":"internal error"}"#,
        )
        .into_bytes();
        let throttled = json_answer(
            "429 Too Many Requests",
            "x-ogw-ratelimit-reset: 30\r\n",
            r#"{"code":99991400,"msg":"request trigger frequency limit"}"#,
        )
        .into_bytes();
        let (upstream, seen) = scripted_upstream(vec![transient, throttled, ok_answer()]).await;
        let gw = start_gateway(
            &GatewayConfig::new(&format!("http://{upstream}"))
                .retry_backoff(Duration::from_millis(1000), Duration::from_millis(1000)),
        )
        .await;
        let get = || {
            let addr = gw.addr();
            async move {
                call(
                    &http_client(),
                    addr,
                    Method::GET,
                    path,
                    &[("authorization", &auth())],
                    "",
                )
                .await
            }
        };
        let first = tokio::spawn(get());
        wait_for(Duration::from_secs(10), || async {
            seen.lock().unwrap().len() == 1
        })
        .await;
        // Another call meanwhile: Feishu throttles the route for 30 s.
        let second = get().await;
        assert_eq!(second.code(), 99991400, "{route}: {:?}", second.text());
        assert!(second.header("x-gateway-error").is_none(), "Feishu's own");
        let first = first.await.unwrap();
        assert_eq!(
            (first.status, first.code()),
            (StatusCode::INTERNAL_SERVER_ERROR, 1500),
            "{route}: the failure is the answer, not retried into the pause"
        );
        assert_eq!(seen.lock().unwrap().len(), 2, "{route}");
        let m = metrics_of(&http_client(), &gw).await;
        assert_eq!(skipped(&m, route, "quota"), 1.0, "{route}: {m}");
        assert_eq!(retries(&m, route, "code"), 0.0, "{route}");
        gw.shutdown();
        gw.wait().await;
    }
}
