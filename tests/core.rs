//! End-to-end tests of the gateway core, through real sockets, against the
//! simulated Feishu: tenant tokens injected and refreshed, client keys
//! checked and stripped, requests and errors passed through, upstream
//! failures answered in JSON, graceful shutdown, health and readiness.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn auth() -> (&'static str, String) {
    ("authorization", format!("Bearer {CLIENT_KEY}"))
}

#[tokio::test]
async fn injects_the_tenant_token_and_strips_the_client_key() {
    let h = start(sim_config()).await;
    let a = h
        .call(
            Method::POST,
            PUT_PATH,
            &[
                ("authorization", &format!("Bearer {CLIENT_KEY}")),
                ("content-type", "application/json; charset=utf-8"),
                ("x-request-id", "req-42"),
                ("x-custom", "kept"),
            ],
            PUT_BODY,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.code(), 0);
    assert_eq!(a.header("x-request-id"), Some("req-42"));
    assert!(
        a.header("x-tt-logid").is_some(),
        "Feishu's log id comes back"
    );

    let issued = h.sim.token_calls();
    assert_eq!(issued.len(), 1);
    let reqs = h.sim.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.bearer.as_deref(), Some(issued[0].token.as_str()));
    assert_eq!(r.body.as_ref(), PUT_BODY.as_bytes());
    assert_eq!(r.headers["x-custom"], "kept");
    for v in r.headers.values() {
        assert!(!v
            .as_bytes()
            .windows(CLIENT_KEY.len())
            .any(|w| w == CLIENT_KEY.as_bytes()));
    }
}

#[tokio::test]
async fn fifty_concurrent_cold_requests_make_one_token_call() {
    let h = start_with(sim_without_quota(), GatewayConfig::without_put_quota).await;
    let mut tasks = Vec::new();
    let h = std::sync::Arc::new(h);
    for i in 0..50 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move { h.put(&format!("oc_{i}")).await }));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, StatusCode::OK);
    }
    assert_eq!(h.sim.token_calls().len(), 1);
    assert_eq!(h.sim.requests().len(), 50);
}

#[tokio::test]
async fn short_lifetimes_never_send_an_expired_token() {
    let mut sim = sim_without_quota();
    sim.token_lifetime = Duration::from_secs(2);
    let h = start_with(sim, GatewayConfig::without_put_quota).await;
    h.ready().await;
    // Run over four lifetimes; every request must find a valid token.
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut n = 0;
    while tokio::time::Instant::now() < until {
        let a = h.put("oc_1").await;
        assert_eq!(a.code(), 0, "request {n}: {:?}", a.body);
        n += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(h.sim.expired_token_uses(), 0);
    let calls = h.sim.token_calls();
    assert!(
        calls.len() >= 4,
        "refreshed ahead: {} token calls",
        calls.len()
    );
    assert!(calls.iter().all(|c| c.ok));
    let reqs = h.sim.requests();
    assert!(reqs.iter().all(|r| r.answered_code == 0));
    assert_eq!(reqs.len(), n, "no request was replayed");
}

#[tokio::test]
async fn a_token_feishu_rejects_is_replaced_and_the_request_replayed_once() {
    let h = start(sim_config()).await;
    assert_eq!(h.put("oc_1").await.code(), 0);
    h.sim.invalidate_all_tokens();
    let a = h.put("oc_2").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.code(), 0, "the client sees only the replayed answer");
    let reqs = h.sim.requests();
    assert_eq!(reqs.len(), 3, "first call, rejected call, replay");
    assert_eq!(reqs[1].answered_code, 99991663);
    assert_ne!(
        reqs[1].bearer, reqs[2].bearer,
        "replayed with a fresh token"
    );
    assert_eq!(h.sim.token_calls().len(), 2);
    let text = h.metrics().await;
    assert!(
        text.contains(r#"feishu_gateway_token_replays_total{app="ops-bot",code="99991663"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_second_token_invalid_answer_is_returned_not_looped() {
    let h = start(sim_config()).await;
    h.ready().await;
    // 99991663 arrives with HTTP 200 here: the gateway decides on the code.
    h.sim.answer_next_with_code(99991663, StatusCode::OK, 2);
    let a = h.put("oc_1").await;
    assert_eq!(a.code(), 99991663);
    assert_eq!(h.sim.requests().len(), 2, "one replay only");
    assert!(h.sim.token_calls().len() <= 2);
}

#[tokio::test]
async fn token_fetch_failure_is_a_503_with_feishus_code_then_recovers() {
    let sim = SimFeishu::start(sim_config()).await.unwrap();
    sim.fail_next_token_calls(3);
    let h = Harness::on(sim, |c| c).await;
    let a = h.put("oc_123").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.header("x-gateway-error"), Some("token-unavailable"));
    assert_eq!(a.code(), 10013, "Feishu's code from the token call");
    assert!(!a.json()["msg"].as_str().unwrap().contains(APP_SECRET));
    // Feishu refused: the pod is ready all the same (readiness is about the
    // pod), and says which app lacks a token and why.
    h.ready().await;
    let r = h.admin("/readyz").await.json();
    assert_eq!(r["apps"][0]["settled"], true, "{r}");

    // The fake heals after three failures; retries with backoff recover.
    wait_for(Duration::from_secs(10), || async {
        h.admin("/readyz").await.json()["apps"][0]["has_token"] == true
    })
    .await;
    let a = h.put("oc_123").await;
    assert_eq!(a.code(), 0);
    let calls = h.sim.token_calls();
    assert_eq!(calls.iter().filter(|c| !c.ok).count(), 3);
    // Backoff: the failed calls were not made in a tight loop.
    let gaps: Vec<_> = calls
        .windows(2)
        .map(|w| w[1].arrived - w[0].arrived)
        .collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(20)),
        "{gaps:?}"
    );
}

#[tokio::test]
async fn missing_malformed_and_unknown_keys_get_401_in_feishus_shape() {
    let h = start(sim_config()).await;
    for (headers, code) in [
        (vec![], 99991661),
        (vec![("authorization", "Basic abc")], 99991661),
        (
            vec![("authorization", "Bearer not-a-known-key-000000")],
            99991663,
        ),
    ] {
        let a = h.call(Method::POST, PUT_PATH, &headers, PUT_BODY).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.code(), code);
        assert_eq!(a.header("x-gateway-error"), Some("unauthenticated"));
        assert!(a
            .header("content-type")
            .unwrap()
            .starts_with("application/json"));
        assert!(a.header("x-request-id").is_some());
    }
    assert!(h.sim.requests().is_empty(), "nothing reached Feishu");
}

#[tokio::test]
async fn only_open_apis_paths_are_forwarded() {
    let h = start(sim_config()).await;
    let (k, v) = auth();
    for path in [
        "/",
        "/admin",
        "/open-apis",
        "/open-apis/../metrics",
        "/open-apis/%2e%2e/x",
    ] {
        let a = h.call(Method::GET, path, &[(k, &v)], "").await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(a.header("x-gateway-error"), Some("not-found"));
        assert_eq!(a.code(), 99990404);
    }
    assert!(h.sim.requests().is_empty());
}

#[tokio::test]
async fn method_path_and_query_pass_through() {
    let h = start(sim_config()).await;
    let (k, v) = auth();
    let a = h
        .call(
            Method::GET,
            "/open-apis/im/v1/chats/oc_9?user_id_type=open_id",
            &[(k, &v)],
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["data"]["chat_id"], "oc_9");
    let r = &h.sim.requests()[0];
    assert_eq!(r.method, Method::GET);
    assert_eq!(r.query.as_deref(), Some("user_id_type=open_id"));
}

#[tokio::test]
async fn feishu_errors_stream_back_unchanged() {
    let h = start(sim_config()).await;
    let a = h.put("oc_error232011").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), 232011);
    assert!(
        a.header("x-gateway-error").is_none(),
        "Feishu's answer, not the gateway's"
    );
    let logid = a.header("x-tt-logid").unwrap().to_string();
    assert_eq!(h.sim.requests()[0].logid, logid);
}

#[tokio::test]
async fn upstream_failures_are_502_or_503_json_never_504() {
    let h = start_with(sim_config(), |c| {
        c.upstream_timeout(Duration::from_millis(300))
    })
    .await;
    h.ready().await;

    // Connection dropped mid-request.
    h.sim.drop_next_connections(1);
    let a = h.put("oc_1").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{:?}", a.body);
    assert_eq!(a.header("x-gateway-error"), Some("upstream-unavailable"));
    assert_eq!(a.code(), 99990502);

    // Too slow.
    let a = h.put_with(&[("x-sim-delay-ms", "2000")]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.header("x-gateway-error"), Some("upstream-timeout"));

    let m = h.metrics().await;
    assert!(
        m.contains(r#"kind="reset""#) && m.contains(r#"kind="timeout""#),
        "{m}"
    );
}

#[tokio::test]
async fn unreachable_upstream_is_a_json_502() {
    let h = start(sim_config()).await;
    h.ready().await;
    // Token cached; now Feishu goes away.
    let Harness { sim, gw, client } = h;
    sim.shutdown().await;
    let a = put_at(&client, gw.addr(), PUT_PATH, &[]).await;
    assert!(
        a.status == StatusCode::BAD_GATEWAY || a.status == StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        a.status
    );
    assert_eq!(a.header("x-gateway-error"), Some("upstream-unavailable"));
    assert!(a.json()["msg"].is_string());
}

#[tokio::test]
async fn header_names_reach_the_client_title_cased() {
    let h = start(sim_config()).await;
    let mut s = tokio::net::TcpStream::connect(h.gw.addr()).await.unwrap();
    let req = format!(
        "POST {PUT_PATH} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{PUT_BODY}",
        PUT_BODY.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\r\nX-Tt-Logid: "), "{text}");
    assert!(text.contains("\r\nContent-Type: "), "{text}");
}

#[tokio::test]
async fn oversized_bodies_get_413_before_reaching_feishu() {
    let h = start_with(sim_config(), |c| c.max_body_bytes(1024)).await;
    let (k, v) = auth();
    let big = format!(r#"{{"chat_top_notice":[],"pad":"{}"}}"#, "x".repeat(4096));
    let a = h
        .call(
            Method::POST,
            PUT_PATH,
            &[(k, &v), ("content-type", "application/json")],
            &big,
        )
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.header("x-gateway-error"), Some("payload-too-large"));
    assert!(h.sim.requests().is_empty());
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let h = start(sim_config()).await;
    h.ready().await;
    let addr = h.gw.addr();
    let client = h.client.clone();
    let slow = tokio::spawn(async move {
        put_at(&client, addr, PUT_PATH, &[("x-sim-delay-ms", "1500")]).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Harness { sim, gw, .. } = h;
    gw.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused while the slow one drains.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let a = slow.await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.code(), 0);
    tokio::time::timeout(Duration::from_secs(5), gw.wait())
        .await
        .expect("drained");
    drop(sim);
}

#[tokio::test]
async fn readyz_and_healthz() {
    let h = start(sim_config()).await;
    assert_eq!(h.admin("/healthz").await.status, StatusCode::OK);
    h.ready().await;
    let r = h.admin("/readyz").await.json();
    assert_eq!(r["ready"], true);
    assert_eq!(r["apps"][0]["app"], "ops-bot");
    assert_eq!(r["apps"][0]["has_token"], true);
    assert!(r["apps"][0]["expires_in_secs"].as_u64().unwrap() > 7000);
    let text = r.to_string();
    assert!(!text.contains(APP_SECRET) && !text.contains("t-"), "{text}");
    // The admin listener is separate from the main one.
    assert_ne!(h.gw.addr(), h.gw.admin_addr());
    let (k, v) = auth();
    let a = h.call(Method::GET, "/healthz", &[(k, &v)], "").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_failing_refresh_keeps_using_the_still_valid_token() {
    let mut sim = sim_without_quota();
    sim.token_lifetime = Duration::from_secs(4);
    let h = start_with(sim, GatewayConfig::without_put_quota).await;
    h.ready().await;
    // The next background refresh (at half-life) fails twice; the cached
    // token is still valid and keeps serving meanwhile.
    h.sim.fail_next_token_calls(2);
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < until {
        let a = h.put("oc_1").await;
        assert_eq!(a.code(), 0, "{:?}", a.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = h.sim.token_calls();
    assert_eq!(
        calls.iter().filter(|c| !c.ok).count(),
        2,
        "both failures were retried"
    );
    assert!(calls.last().unwrap().ok);
    assert_eq!(h.sim.expired_token_uses(), 0);
}

/// Thread-per-core workers and the shared runtime serve alike: many
/// connections at once (more than workers), each answered, and a drain at
/// shutdown that waits for them.
#[tokio::test]
async fn connection_workers_and_the_shared_runtime_serve_alike() {
    for workers in [0, 3] {
        let h = start_with(sim_without_quota(), |c| {
            c.workers(workers).without_put_quota()
        })
        .await;
        let addr = h.gw.addr();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..8 {
            tasks.spawn(async move {
                // A client (and so a connection) of its own.
                let client = http_client();
                let auth = format!("Bearer {CLIENT_KEY}");
                let headers = [
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ];
                let path = format!("/open-apis/im/v1/chats/oc_w{i}/top_notice/put_top_notice");
                let mut codes = Vec::new();
                for _ in 0..5 {
                    codes.push(
                        call(&client, addr, Method::POST, &path, &headers, PUT_BODY)
                            .await
                            .code(),
                    );
                }
                codes
            });
        }
        while let Some(codes) = tasks.join_next().await {
            assert_eq!(codes.expect("task"), vec![0; 5], "workers = {workers}");
        }
        assert_eq!(h.sim.requests().len(), 40, "workers = {workers}");
        h.gw.shutdown();
        tokio::time::timeout(Duration::from_secs(10), h.gw.wait())
            .await
            .expect("drains and stops");
    }
}
