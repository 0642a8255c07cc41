//! Per-resource limits through real sockets: the simulated Feishu counts
//! each chat's, document's and table's calls at arrival and answers Feishu's
//! own codes (230020, 99991400, 1254291) past them; the gateway must keep
//! every resource under its limit on its own, queueing a burst to one chat
//! in wait mode.

mod support;

use std::sync::Arc;
use std::time::Duration;

use feishu_sim::ResourceRule;
use http::{Method, StatusCode};
use support::*;

async fn send(h: &Harness, chat: &str, wait_ms: u64) -> Answer {
    let auth = format!("Bearer {CLIENT_KEY}");
    let body =
        format!(r#"{{"receive_id":"{chat}","msg_type":"text","content":"{{\"text\":\"hi\"}}"}}"#);
    let wait = wait_ms.to_string();
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json; charset=utf-8"),
    ];
    if wait_ms > 0 {
        headers.push(("x-gateway-max-wait", wait.as_str()));
    }
    h.call(
        Method::POST,
        "/open-apis/im/v1/messages?receive_id_type=chat_id",
        &headers,
        &body,
    )
    .await
}

async fn flood_chats(h: &Arc<Harness>, chats: usize, per_chat: usize, wait_ms: u64) -> Vec<Answer> {
    let mut tasks = Vec::new();
    for c in 0..chats {
        for _ in 0..per_chat {
            let h = Arc::clone(h);
            tasks.push(tokio::spawn(async move {
                send(&h, &format!("oc_chat{c}"), wait_ms).await
            }));
        }
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn codes_230020(h: &Harness) -> usize {
    h.sim
        .resource_violations()
        .iter()
        .filter(|v| v.code == 230020)
        .count()
}

#[tokio::test]
async fn a_burst_to_one_chat_is_queued_at_five_per_second() {
    let h = Arc::new(start(sim_config()).await);
    h.ready().await;
    let started = std::time::Instant::now();
    let answers = flood_chats(&h, 1, 15, 5000).await;
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK && a.code() == 0)
        .count();
    assert_eq!(
        ok,
        15,
        "queued, not refused: {:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert!(started.elapsed() >= Duration::from_secs(2), "held to 5/s");
    assert_eq!(codes_230020(&h), 0);
    assert!(
        h.sim.resource_max_in_any_window(
            ResourceRule::MessageReceiver,
            "chat_id:oc_chat0",
            Duration::from_secs(1)
        ) <= 5
    );
}

#[tokio::test]
async fn floods_to_twenty_chats_stay_under_each_chats_limit() {
    let h = Arc::new(start(sim_config()).await);
    h.ready().await;
    let answers = flood_chats(&h, 20, 12, 0).await;
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let limited: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(ok + limited.len(), 240);
    assert!(ok >= 20, "every chat got some through: {ok}");
    for a in &limited {
        assert_eq!(a.header("x-gateway-error"), Some("rate-limited"));
        assert_eq!(a.code(), 99991400);
    }
    assert_eq!(codes_230020(&h), 0, "Feishu never answered 230020");
    assert_eq!(h.sim.violations(), 0);
    for c in 0..20 {
        let key = format!("chat_id:oc_chat{c}");
        let max = h.sim.resource_max_in_any_window(
            ResourceRule::MessageReceiver,
            &key,
            Duration::from_secs(1),
        );
        assert!(max <= 5, "{key}: {max} in one second");
    }
    let m = h.metrics().await;
    assert!(m.contains("reason=\"im.receiver:5/1s\""), "{m}");
}

#[tokio::test]
async fn one_table_takes_one_write_at_a_time() {
    let h = Arc::new(start(sim_config()).await);
    h.ready().await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let auth = format!("Bearer {CLIENT_KEY}");
            h.call(
                Method::POST,
                "/open-apis/bitable/v1/apps/bas1/tables/tbl1/records",
                &[("authorization", &auth), ("x-gateway-max-wait", "5000")],
                &format!(r#"{{"fields":{{"n":{i}}}}}"#),
            )
            .await
        }));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!((a.status, a.code()), (StatusCode::OK, 0));
    }
    assert!(h
        .sim
        .resource_violations()
        .iter()
        .all(|v| v.code != 1254291));
    assert_eq!(
        h.sim
            .resource_peak_in_flight(ResourceRule::BitableTable, "bas1/tbl1"),
        1
    );
}

#[tokio::test]
async fn a_documents_edits_are_held_to_three_per_second() {
    let h = Arc::new(start(sim_config()).await);
    h.ready().await;
    let mut tasks = Vec::new();
    for i in 0..9 {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let auth = format!("Bearer {CLIENT_KEY}");
            h.call(
                Method::PATCH,
                &format!("/open-apis/docx/v1/documents/doc1/blocks/blk{i}"),
                &[("authorization", &auth), ("x-gateway-max-wait", "5000")],
                r#"{"update_text_elements":{}}"#,
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(h.sim.violations(), 0);
    assert!(
        h.sim.resource_max_in_any_window(
            ResourceRule::DocxDocument,
            "doc1",
            Duration::from_secs(1)
        ) <= 3
    );
}
