//! `/metrics` after a scripted mix of calls: exact counts per Feishu code,
//! from Feishu, from validation, from the limiter, and the token series.

mod support;

use std::time::Duration;

use http::Method;
use support::*;

fn value(metrics: &str, series: &str) -> f64 {
    metric_value(metrics, series).unwrap_or_else(|| panic!("{series} missing from\n{metrics}"))
}

#[tokio::test]
async fn metrics_count_every_outcome_by_code() {
    let h = start_with(sim_config(), |c| {
        c.put_limits(&[(1, Duration::from_secs(10))])
    })
    .await;
    h.ready().await;
    let auth = format!("Bearer {CLIENT_KEY}");
    let del = |chat: &'static str| {
        let auth = auth.clone();
        let h = &h;
        async move {
            let path = format!("/open-apis/im/v1/chats/{chat}/top_notice/delete_top_notice");
            h.call(Method::POST, &path, &[("authorization", &auth)], "")
                .await
        }
    };
    for _ in 0..3 {
        assert_eq!(del("oc_1").await.code(), 0);
    }
    for _ in 0..2 {
        assert_eq!(del("oc_error232011").await.code(), 232011);
    }
    let bad = h
        .call(
            Method::POST,
            PUT_PATH,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            r#"{"chat_top_notice":[{"action_type":1}]}"#,
        )
        .await;
    assert_eq!(bad.code(), 232001);
    assert_eq!(h.put("oc_1").await.code(), 0);
    assert_eq!(h.put("oc_1").await.code(), 99991400);
    assert_eq!(h.put("oc_1").await.code(), 99991400);
    let anon = h.call(Method::POST, PUT_PATH, &[], PUT_BODY).await;
    assert_eq!(anon.code(), 99991661);

    let m = h.metrics().await;
    let req = |app: &str, code: &str, route: &str, status: u16| {
        format!(
            "feishu_gateway_requests_total{{app=\"{app}\",code=\"{code}\",route=\"{route}\",status=\"{status}\"}}"
        )
    };
    assert_eq!(value(&m, &req("ops-bot", "0", DELETE_ROUTE, 200)), 3.0);
    assert_eq!(value(&m, &req("ops-bot", "232011", DELETE_ROUTE, 400)), 2.0);
    assert_eq!(value(&m, &req("ops-bot", "232001", PUT_ROUTE, 400)), 1.0);
    assert_eq!(value(&m, &req("ops-bot", "0", PUT_ROUTE, 200)), 1.0);
    assert_eq!(value(&m, &req("ops-bot", "99991400", PUT_ROUTE, 429)), 2.0);
    assert_eq!(value(&m, &req("unknown", "99991661", PUT_ROUTE, 401)), 1.0);
    let total: f64 = m
        .lines()
        .filter(|l| l.starts_with("feishu_gateway_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 10.0, "every request counted once");

    assert_eq!(
        value(&m, &format!("feishu_gateway_rate_limited_total{{app=\"ops-bot\",reason=\"1/10s\",route=\"{PUT_ROUTE}\"}}")),
        2.0
    );
    assert!(
        !m.contains("feishu_gateway_upstream_throttled_total{"),
        "Feishu throttled nothing: no series yet"
    );
    assert_eq!(
        value(
            &m,
            "feishu_gateway_token_refreshes_total{app=\"ops-bot\",result=\"ok\"}"
        ),
        1.0
    );
    let expiry = value(
        &m,
        "feishu_gateway_token_expiry_timestamp_seconds{app=\"ops-bot\"}",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now + 7000.0 && expiry < now + 7300.0,
        "{expiry} vs {now}"
    );
    assert_eq!(
        value(&m, &format!("feishu_gateway_request_duration_seconds_count{{app=\"ops-bot\",route=\"{DELETE_ROUTE}\"}}")),
        5.0
    );
    assert_eq!(
        value(&m, &format!("feishu_gateway_upstream_duration_seconds_count{{app=\"ops-bot\",route=\"{DELETE_ROUTE}\"}}")),
        5.0
    );
    assert_eq!(
        value(
            &m,
            "feishu_error_code_info{code=\"232011\",description=\"operator not in the chat\"}"
        ),
        1.0
    );
    assert!(m.contains("feishu_gateway_build_info{version="));
    assert_eq!(value(&m, "feishu_gateway_in_flight_requests"), 0.0);
    // No raw path, chat id, key or token in any label.
    let token = h.sim.token_calls()[0].token.clone();
    for needle in ["oc_1", "oc_error", CLIENT_KEY, APP_SECRET, token.as_str()] {
        assert!(
            !m.lines()
                .filter(|l| !l.starts_with('#'))
                .any(|l| l.contains(needle)),
            "{needle} leaked into /metrics"
        );
    }
}
