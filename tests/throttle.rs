//! Feishu's own throttle answers, whatever their HTTP status, pause what
//! they concern, through real sockets: the simulated Feishu answers a
//! throttle code once (`SimFeishu::throttle`), and the gateway must then
//! hold that route itself until the reset (or its backoff) runs out, sending
//! Feishu nothing meanwhile. This covers endpoints whose limit Feishu does
//! not publish (`special`): after Feishu's first 429 the gateway stops there.

mod support;

use std::time::Duration;

use feishu_sim::FaultSpan;
use http::{Method, StatusCode};
use support::*;

const DOWNLOAD: &str = "/open-apis/drive/v1/files/boxcn1/download";
const DOWNLOAD_T: &str = "/open-apis/drive/v1/files/:file_token/download";
const RECORDS: &str = "/open-apis/bitable/v1/apps/bas1/tables/tbl1/records";
const RECORDS_T: &str = "/open-apis/bitable/v1/apps/:app_token/tables/:table_id/records";

async fn call(h: &Harness, method: Method, path: &str, body: &str) -> Answer {
    let auth = format!("Bearer {CLIENT_KEY}");
    h.call(method, path, &[("authorization", &auth)], body)
        .await
}

fn arrivals(h: &Harness, path: &str) -> usize {
    h.sim.requests().iter().filter(|r| r.path == path).count()
}

#[tokio::test]
async fn a_special_endpoint_throttled_by_feishu_is_paused_until_the_reset() {
    let h = start(sim_config()).await;
    h.ready().await;
    assert_eq!(
        call(&h, Method::GET, DOWNLOAD, "").await.status,
        StatusCode::OK
    );
    h.sim.throttle(
        &format!("GET {DOWNLOAD_T}"),
        99991400,
        StatusCode::TOO_MANY_REQUESTS,
        Some(2),
        FaultSpan::Calls(1),
    );
    let a = call(&h, Method::GET, DOWNLOAD, "").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.header("x-gateway-error"), None, "Feishu's own answer");
    assert_eq!(arrivals(&h, DOWNLOAD), 2);
    // Meanwhile: answered by the gateway, nothing sent.
    for _ in 0..5 {
        let b = call(&h, Method::GET, DOWNLOAD, "").await;
        assert_eq!(b.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(b.header("x-gateway-error"), Some("rate-limited"));
        assert_eq!(b.code(), 99991400);
        let reset: u64 = b.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&reset), "{reset}");
    }
    assert_eq!(
        arrivals(&h, DOWNLOAD),
        2,
        "no call reached Feishu in the pause"
    );
    // Wait mode sits the pause out instead.
    let auth = format!("Bearer {CLIENT_KEY}");
    let w = h
        .call(
            Method::GET,
            DOWNLOAD,
            &[("authorization", &auth), ("x-gateway-max-wait", "3000")],
            "",
        )
        .await;
    assert_eq!(w.status, StatusCode::OK);
    assert_eq!(arrivals(&h, DOWNLOAD), 3);
    let m = h.metrics().await;
    assert!(
        m.contains(&format!(
            "feishu_gateway_upstream_throttled_total{{app=\"ops-bot\",code=\"99991400\",route=\"{DOWNLOAD_T}\"}} 1"
        )),
        "{m}"
    );
}

#[tokio::test]
async fn code_99991400_with_http_400_pauses_the_limited_route() {
    let h = start(sim_config()).await;
    h.ready().await;
    h.sim.throttle(
        "put_top_notice",
        99991400,
        StatusCode::BAD_REQUEST,
        Some(1),
        FaultSpan::Calls(1),
    );
    let a = h.put("oc_1").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), 99991400);
    let b = h.put("oc_1").await;
    assert_eq!(b.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(b.header("x-gateway-error"), Some("rate-limited"));
    assert_eq!(h.sim.arrivals("put_top_notice"), 1, "the second was held");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(h.put("oc_1").await.code(), 0);
}

#[tokio::test]
async fn code_1254290_with_http_200_pauses_by_the_backoff() {
    let h = start(sim_config()).await;
    h.ready().await;
    let body = r#"{"fields":{"name":"x"}}"#;
    h.sim.throttle(
        &format!("POST {RECORDS_T}"),
        1254290,
        StatusCode::OK,
        None,
        FaultSpan::Calls(1),
    );
    let a = call(&h, Method::POST, RECORDS, body).await;
    assert_eq!((a.status, a.code()), (StatusCode::OK, 1254290));
    // No reset header: the first backoff step, 1 s.
    let b = call(&h, Method::POST, RECORDS, body).await;
    assert_eq!(b.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(b.header("retry-after"), Some("1"));
    assert_eq!(arrivals(&h, RECORDS), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call(&h, Method::POST, RECORDS, body).await.code(), 0);
    // A code that is no throttle pauses nothing.
    h.sim.throttle(
        &format!("POST {RECORDS_T}"),
        1254045,
        StatusCode::OK,
        None,
        FaultSpan::Calls(1),
    );
    assert_eq!(call(&h, Method::POST, RECORDS, body).await.code(), 1254045);
    assert_eq!(call(&h, Method::POST, RECORDS, body).await.code(), 0);
    let m = h.metrics().await;
    assert!(
        m.contains(&format!(
            "feishu_gateway_upstream_throttled_total{{app=\"ops-bot\",code=\"1254290\",route=\"{RECORDS_T}\"}} 1"
        )),
        "{m}"
    );
}
