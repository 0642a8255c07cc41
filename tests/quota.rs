//! Per-app quotas through real sockets: floods are answered 429 with the
//! rate-limit headers, wait mode serves in order, Feishu's own 429 pauses
//! the key, and the simulated Feishu, which enforces its own sliding windows
//! at arrival, counts no violation.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::config::{Quota, QuotaOverflow};
use support::*;

async fn flood(
    h: &Arc<Harness>,
    n: usize,
    extra: &'static [(&'static str, &'static str)],
) -> Vec<Answer> {
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let h = Arc::clone(h);
        tasks.push(tokio::spawn(async move { h.put_with(extra).await }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_flood_of_300_gets_429s_with_headers_and_feishu_sees_no_violation() {
    let h = Arc::new(start(sim_config()).await);
    h.ready().await;
    let answers = flood(&h, 300, &[]).await;
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let limited: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok + limited.len(), 300);
    assert!((30..=50).contains(&ok), "admitted {ok}");
    for a in &limited {
        assert_eq!(a.code(), 99991400);
        assert_eq!(a.header("x-gateway-error"), Some("rate-limited"));
        assert_eq!(a.header("x-ogw-ratelimit-limit"), Some("50"));
        let reset: u64 = a.header("x-ogw-ratelimit-reset").unwrap().parse().unwrap();
        assert!(reset >= 1);
        assert_eq!(a.header("retry-after"), a.header("x-ogw-ratelimit-reset"));
        assert!(a.header("ratelimit-policy").unwrap().contains("1000"));
        assert!(a.header("ratelimit").is_some());
    }
    assert_eq!(h.sim.violations(), 0);
    assert!(
        h.sim
            .max_in_any_window(APP_ID, "put_top_notice", Duration::from_secs(1))
            <= 50
    );
    assert_eq!(
        h.sim.requests().len(),
        ok,
        "rejected requests never reached Feishu"
    );

    let m = h.metrics().await;
    let line = format!(
        r#"feishu_gateway_rate_limited_total{{app="ops-bot",reason="50/1s",route="{PUT_ROUTE}"}} {}"#,
        limited.len()
    );
    assert!(m.contains(&line), "{line}\n{m}");
    assert!(m.contains(&format!(
        r#"feishu_gateway_quota_limit{{app="ops-bot",route="{PUT_ROUTE}",window="1000/60s"}} 1000"#
    )));
}

#[tokio::test]
async fn wait_mode_serves_a_burst_of_120_in_order_with_no_violation() {
    let h = Arc::new(
        start_with(sim_config(), |c| {
            c.quota(
                Quota::local()
                    .overflow(QuotaOverflow::Wait)
                    .max_wait(Duration::from_secs(20)),
            )
        })
        .await,
    );
    h.ready().await;
    let started = Instant::now();
    let answers = flood(&h, 120, &[]).await;
    let took = started.elapsed();
    assert!(answers
        .iter()
        .all(|a| a.status == StatusCode::OK && a.code() == 0));
    assert_eq!(h.sim.violations(), 0);
    assert!(
        h.sim
            .max_in_any_window(APP_ID, "put_top_notice", Duration::from_secs(1))
            <= 50
    );
    // The plan admits a burst of 33, then one per ~62 ms: ~5.4 s for 120.
    // Bounds are loose on purpose (shared machines); the rate is what counts.
    assert!(took >= Duration::from_secs(4), "too fast: {took:?}");
    assert!(took <= Duration::from_secs(12), "too slow: {took:?}");
}

#[tokio::test]
async fn the_per_request_header_chooses_wait_or_reject() {
    let h = Arc::new(
        start_with(sim_config(), |c| {
            c.put_limits(&[(2, Duration::from_secs(1))])
        })
        .await,
    );
    h.ready().await;
    // "2/1s" planned over 1.1 s gives burst 1, one per 0.55 s. Reject mode
    // (default): of three at once, two are refused.
    let a = flood(&h, 3, &[]).await;
    assert_eq!(
        a.iter()
            .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        2
    );
    // With a wait allowance the same burst goes through.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let a = flood(&h, 3, &[("x-gateway-max-wait", "3000")]).await;
    assert!(
        a.iter().all(|a| a.status == StatusCode::OK),
        "{:?}",
        a.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    // A wait allowance too short to help is rejected at once.
    let a = h.put_with(&[("x-gateway-max-wait", "1")]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    // A bad value is named.
    let a = h.put_with(&[("x-gateway-max-wait", "soon")]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.json()["msg"]
        .as_str()
        .unwrap()
        .contains("X-Gateway-Max-Wait"));
    assert_eq!(h.sim.violations(), 0);
}

#[tokio::test]
async fn feishus_own_429_pauses_the_key_until_its_reset() {
    let h = start(sim_config()).await;
    h.ready().await;
    h.sim
        .answer_next_with_code(99991400, StatusCode::TOO_MANY_REQUESTS, 1);
    let a = h.put("oc_1").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        a.header("x-gateway-error").is_none(),
        "Feishu's answer passes through"
    );
    let reset: u64 = a.header("x-ogw-ratelimit-reset").unwrap().parse().unwrap();
    // Meanwhile the gateway answers itself and sends nothing.
    let b = h.put("oc_1").await;
    assert_eq!(b.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(b.header("x-gateway-error"), Some("rate-limited"));
    assert_eq!(h.sim.requests().len(), 1);
    // After the reset, requests flow again.
    tokio::time::sleep(Duration::from_secs(reset) + Duration::from_millis(200)).await;
    assert_eq!(h.put("oc_1").await.code(), 0);
    let m = h.metrics().await;
    assert!(
        m.contains(r#"reason="upstream-pause""#)
            && m.contains("feishu_gateway_upstream_throttled_total{app=\"ops-bot\""),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("feishu_gateway_upstream_throttled_total") && l.ends_with(" 1")),
        "{m}"
    );
}

#[tokio::test]
async fn small_configured_windows_hold_at_feishu_under_sustained_load() {
    let limits = [(5, Duration::from_secs(1)), (20, Duration::from_secs(10))];
    let mut sim = sim_config();
    sim.limits = limits.to_vec();
    let h = Arc::new(start_with(sim, |c| c.put_limits(&limits)).await);
    h.ready().await;
    // Eight concurrent senders for 4 s, far over 5/s.
    let until = Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            while Instant::now() < until {
                if h.put("oc_1").await.status == StatusCode::OK {
                    ok += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(h.sim.violations(), 0);
    assert!(
        h.sim
            .max_in_any_window(APP_ID, "put_top_notice", Duration::from_secs(1))
            <= 5
    );
    assert!(
        h.sim
            .max_in_any_window(APP_ID, "put_top_notice", Duration::from_secs(10))
            <= 20
    );
    // 20/10s planned over 10.1 s allows one per 0.505 s: about 8 in 4 s.
    assert!(ok >= 7, "still uses the quota: {ok}");
}

#[tokio::test]
async fn routes_outside_the_catalog_have_no_gateway_quota() {
    let h = Arc::new(start(sim_without_quota()).await);
    h.ready().await;
    let mut tasks = Vec::new();
    for _ in 0..80 {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let auth = format!("Bearer {CLIENT_KEY}");
            h.call(
                Method::GET,
                "/open-apis/private/v1/things/oc_1",
                &[("authorization", &auth)],
                "",
            )
            .await
        }));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert!(
            a.headers.get("x-gateway-error").is_none(),
            "forwarded, not answered by the gateway: {:?}",
            a.headers
        );
    }
    let forwarded = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path == "/open-apis/private/v1/things/oc_1")
        .count();
    assert_eq!(forwarded, 80, "every call reached Feishu");
}
