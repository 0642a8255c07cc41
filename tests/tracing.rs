//! Distributed tracing (`[tracing]`): the gateway's part of a call in the
//! caller's trace, exported over OTLP/HTTP to a receiver the test starts
//! (`support::otlp`, decoding with the official protobuf definitions), and
//! `traceparent` carried on to the simulated Feishu.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use http::{Method, StatusCode};
use support::otlp::{
    OtlpReceiver, ReceivedSpan, KIND_CLIENT, KIND_INTERNAL, KIND_SERVER, STATUS_ERROR,
};
use support::*;

/// The caller's trace: a W3C trace id and its own span id.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace_id: &str, sampled: bool) -> String {
    format!(
        "00-{trace_id}-{CALLER_SPAN}-{}",
        if sampled { "01" } else { "00" }
    )
}

/// A gateway in front of `sim` with tracing to `receiver`, `ratio` of new
/// traces sampled.
async fn traced(sim: SimConfig, receiver: &OtlpReceiver, ratio: f64) -> Harness {
    let url = receiver.url();
    start_with(sim, |c| c.without_put_quota().tracing(&url, ratio)).await
}

/// The spans of `trace_id`, once the gateway has flushed them.
async fn spans_of(h: &Harness, receiver: &OtlpReceiver, trace_id: &str) -> Vec<ReceivedSpan> {
    h.gw.flush_traces().await;
    receiver.trace(trace_id)
}

fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name:?} span: {spans:#?}");
    found[0]
}

fn all<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    let mut found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    found.sort_by_key(|s| s.start_ns);
    found
}

fn server_span(spans: &[ReceivedSpan]) -> &ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.kind == KIND_SERVER).collect();
    assert_eq!(found.len(), 1, "one server span: {spans:#?}");
    found[0]
}

/// No attribute or event of `spans` holds a key, secret, token, body or
/// resource id.
fn assert_nothing_secret(spans: &[ReceivedSpan], sim: &SimFeishu) {
    let tokens: Vec<String> = sim.token_calls().into_iter().map(|c| c.token).collect();
    assert!(!tokens.is_empty());
    let text = format!("{spans:?}");
    for secret in [
        APP_SECRET,
        CLIENT_KEY,
        "chat_top_notice",
        "om_dc13264520392913993dd051dba21dcf",
        "oc_123",
    ]
    .into_iter()
    .chain(tokens.iter().map(String::as_str))
    {
        assert!(!text.contains(secret), "{secret:?} is in a span");
    }
}

#[tokio::test]
async fn a_call_with_a_traceparent_yields_spans_with_the_right_parent_attributes_and_timings() {
    let receiver = OtlpReceiver::start().await;
    let mut sim = sim_without_quota();
    sim.latency = Duration::from_millis(60);
    // Ratio 0: the caller's sampled flag decides, not the gateway's ratio.
    let h = traced(sim, &receiver, 0.0).await;
    h.ready().await;
    let a = h
        .put_with(&[
            ("traceparent", &traceparent(TRACE_ID, true)),
            ("tracestate", "acme=7,other=x"),
            ("x-request-id", "req-trace-1"),
        ])
        .await;
    assert_eq!(a.code(), 0, "{}", a.text());
    let logid = a.header("x-tt-logid").expect("Feishu's logid").to_string();

    let spans = spans_of(&h, &receiver, TRACE_ID).await;
    let server = server_span(&spans);
    assert_eq!(
        server.parent_span_id, CALLER_SPAN,
        "a child of the caller's span"
    );
    assert_eq!(server.trace_state, "acme=7,other=x", "tracestate kept");
    assert_eq!(server.service, "feishu-gateway");
    assert_eq!(server.name, format!("POST {PUT_ROUTE}"));
    assert_eq!(server.str("http.request.method"), Some("POST"));
    assert_eq!(server.str("http.route"), Some(PUT_ROUTE));
    assert_eq!(server.int("http.response.status_code"), Some(200));
    assert_eq!(server.str("feishu_gateway.app"), Some("ops-bot"));
    assert_eq!(server.str("feishu_gateway.client"), Some("billing"));
    assert_eq!(server.str("feishu_gateway.request_id"), Some("req-trace-1"));
    assert_eq!(server.int("feishu.code"), Some(0));
    assert_eq!(server.str("feishu.logid"), Some(logid.as_str()));

    let quota = one(&spans, "quota");
    assert_eq!(quota.parent_span_id, server.span_id);
    assert_eq!(quota.kind, KIND_INTERNAL);
    assert_eq!(quota.str("feishu_gateway.quota.outcome"), Some("admitted"));
    assert!(quota.within(server));

    let call = one(&spans, "feishu call");
    assert_eq!(call.parent_span_id, server.span_id);
    assert_eq!(call.kind, KIND_CLIENT);
    assert_eq!(call.int("http.response.status_code"), Some(200));
    assert_eq!(call.int("feishu.code"), Some(0));
    assert_eq!(call.str("feishu.logid"), Some(logid.as_str()));
    assert_eq!(call.str("http.route"), Some(PUT_ROUTE));
    assert_eq!(call.str("server.address"), Some("127.0.0.1"));
    assert_eq!(
        call.int("http.request.resend_count"),
        None,
        "a first attempt"
    );
    assert!(call.within(server));
    assert!(quota.end_ns <= call.start_ns, "admitted, then sent");
    assert!(
        call.duration() >= Duration::from_millis(60),
        "the call waited for Feishu's 60 ms: {:?}",
        call.duration()
    );
    assert!(server.duration() >= call.duration());
    // The token was cached: no wait, no span.
    assert!(all(&spans, "token wait").is_empty(), "{spans:#?}");
    assert_eq!(spans.len(), 3, "{spans:#?}");

    // Feishu got the gateway's call span as its parent, in the same trace.
    let sent = h.sim.requests().pop().expect("a request reached Feishu");
    let header = |name: &str| sent.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(
        header("traceparent"),
        Some(format!("00-{TRACE_ID}-{}-01", call.span_id).as_str())
    );
    assert_eq!(header("tracestate"), Some("acme=7,other=x"));
    assert_nothing_secret(&spans, &h.sim);
    h.stop().await;
}

#[tokio::test]
async fn a_call_during_a_token_refresh_shows_the_wait() {
    let receiver = OtlpReceiver::start().await;
    let sim = SimFeishu::start(sim_without_quota()).await.unwrap();
    // The gateway's first token call (its refresher's, at start) takes 500 ms.
    sim.set_token_latency(Duration::from_millis(500));
    let url = receiver.url();
    let h = Harness::on(sim, |c| c.without_put_quota().tracing(&url, 0.0)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = h
        .put_with(&[("traceparent", &traceparent(TRACE_ID, true))])
        .await;
    assert_eq!(a.code(), 0, "{}", a.text());
    assert_eq!(h.sim.token_calls().len(), 1, "the refresher's call only");

    let spans = spans_of(&h, &receiver, TRACE_ID).await;
    let server = server_span(&spans);
    let wait = one(&spans, "token wait");
    assert_eq!(wait.parent_span_id, server.span_id);
    assert_eq!(wait.str("feishu_gateway.token.outcome"), Some("waited"));
    assert_eq!(
        wait.str("feishu_gateway.token.kind"),
        Some("tenant_access_token")
    );
    assert!(
        wait.duration() >= Duration::from_millis(300),
        "the request waited for the refresh: {:?}",
        wait.duration()
    );
    assert!(wait.within(server));
    // The call itself was another's: no fetch in this trace.
    assert!(all(&spans, "token fetch").is_empty(), "{spans:#?}");
    let call = one(&spans, "feishu call");
    assert!(
        wait.end_ns <= call.start_ns,
        "the token first, then the call"
    );
    assert_nothing_secret(&spans, &h.sim);
    h.stop().await;
}

#[tokio::test]
async fn a_replay_after_token_invalid_shows_the_fetch_and_both_attempts() {
    let receiver = OtlpReceiver::start().await;
    let h = traced(sim_without_quota(), &receiver, 0.0).await;
    h.ready().await;
    h.sim.set_token_latency(Duration::from_millis(80));
    h.sim.invalidate_all_tokens();
    let a = h
        .put_with(&[("traceparent", &traceparent(TRACE_ID, true))])
        .await;
    assert_eq!(a.code(), 0, "replayed: {}", a.text());

    let spans = spans_of(&h, &receiver, TRACE_ID).await;
    let server = server_span(&spans);
    assert_eq!(server.int("feishu_gateway.replayed_after"), Some(99991663));
    let replay: Vec<_> = server
        .events
        .iter()
        .filter(|(name, _)| name == "token rejected: replaying")
        .collect();
    assert_eq!(replay.len(), 1, "{server:#?}");
    assert_eq!(
        replay[0].1.get("feishu.code"),
        Some(&support::otlp::Attr::Int(99991663))
    );

    let calls = all(&spans, "feishu call");
    assert_eq!(calls.len(), 2, "{spans:#?}");
    assert_eq!(calls[0].int("feishu.code"), Some(99991663));
    assert_eq!(calls[0].status, STATUS_ERROR, "a 4xx answer");
    assert_eq!(calls[1].int("feishu.code"), Some(0));
    assert_eq!(calls[1].int("http.request.resend_count"), Some(1));

    let wait = one(&spans, "token wait");
    assert_eq!(wait.str("feishu_gateway.token.outcome"), Some("fetched"));
    let fetch = one(&spans, "token fetch");
    assert_eq!(fetch.parent_span_id, wait.span_id);
    assert_eq!(fetch.kind, KIND_CLIENT);
    assert!(fetch.duration() >= Duration::from_millis(80), "{fetch:?}");
    assert!(fetch.within(wait));
    assert!(calls[0].end_ns <= wait.start_ns && wait.end_ns <= calls[1].start_ns);

    // Each attempt carried its own span to Feishu.
    let sent = h.sim.requests();
    let parents: Vec<_> = sent[sent.len() - 2..]
        .iter()
        .map(|r| r.headers["traceparent"].to_str().unwrap().to_string())
        .collect();
    let want: Vec<_> = calls
        .iter()
        .map(|c| format!("00-{TRACE_ID}-{}-01", c.span_id))
        .collect();
    assert_eq!(parents, want);
    assert_nothing_secret(&spans, &h.sim);
    h.stop().await;
}

#[tokio::test]
async fn a_retry_is_an_event_and_each_attempt_a_span() {
    let receiver = OtlpReceiver::start().await;
    let h = traced(sim_without_quota(), &receiver, 0.0).await;
    h.ready().await;
    h.sim
        .answer_next_from_edge(StatusCode::SERVICE_UNAVAILABLE, 1);
    let auth = format!("Bearer {CLIENT_KEY}");
    let tp = traceparent(TRACE_ID, true);
    let a = h
        .call(
            Method::GET,
            "/open-apis/im/v1/chats/oc_1",
            &[("authorization", &auth), ("traceparent", &tp)],
            "",
        )
        .await;
    assert_eq!(a.code(), 0, "retried: {}", a.text());

    let spans = spans_of(&h, &receiver, TRACE_ID).await;
    let server = server_span(&spans);
    let retries: Vec<_> = server.events.iter().filter(|(n, _)| n == "retry").collect();
    assert_eq!(retries.len(), 1, "{server:#?}");
    assert_eq!(
        retries[0].1.get("feishu_gateway.retry.reason"),
        Some(&support::otlp::Attr::Str("edge_503".into()))
    );
    let calls = all(&spans, "feishu call");
    assert_eq!(calls.len(), 2, "{spans:#?}");
    assert_eq!(calls[0].int("http.response.status_code"), Some(503));
    assert_eq!(calls[0].status, STATUS_ERROR);
    assert_eq!(calls[1].int("http.response.status_code"), Some(200));
    assert_eq!(calls[1].int("http.request.resend_count"), Some(1));
    h.stop().await;
}

#[tokio::test]
async fn without_a_traceparent_the_sampling_ratio_decides() {
    // Ratio 1: the gateway starts a trace of its own.
    let receiver = OtlpReceiver::start().await;
    let h = traced(sim_without_quota(), &receiver, 1.0).await;
    h.ready().await;
    assert_eq!(h.put_with(&[]).await.code(), 0);
    h.gw.flush_traces().await;
    let spans = receiver.spans();
    let server = server_span(&spans);
    assert_eq!(server.parent_span_id, "", "a root span");
    assert_ne!(server.trace_id, TRACE_ID);
    let call = one(&spans, "feishu call");
    let sent = h.sim.requests().pop().unwrap();
    assert_eq!(
        sent.headers["traceparent"],
        format!("00-{}-{}-01", server.trace_id, call.span_id).as_str()
    );
    h.stop().await;

    // Ratio 0: no span at all, and no trace context goes to Feishu.
    let receiver = OtlpReceiver::start().await;
    let h = traced(sim_without_quota(), &receiver, 0.0).await;
    h.ready().await;
    assert_eq!(h.put_with(&[]).await.code(), 0);
    // A caller's unsampled trace is not recorded either, but continued.
    let tp = traceparent(TRACE_ID, false);
    assert_eq!(h.put_with(&[("traceparent", &tp)]).await.code(), 0);
    h.gw.flush_traces().await;
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
    let sent = h.sim.requests();
    let parents: Vec<Option<&str>> = sent
        .iter()
        .map(|r| r.headers.get("traceparent").map(|v| v.to_str().unwrap()))
        .collect();
    assert_eq!(parents[0], None, "part of no trace");
    let continued = parents[1].expect("the caller's trace continues");
    assert!(
        continued.starts_with(&format!("00-{TRACE_ID}-")),
        "{parents:?}"
    );
    assert!(continued.ends_with("-00"), "{parents:?}");
    assert_ne!(continued, tp, "the gateway's own span id");
    h.stop().await;

    // Ratio 0.5, no traceparent: a request is either traced or part of no
    // trace at all; both happen, and Feishu sees exactly the recorded ones.
    let receiver = OtlpReceiver::start().await;
    let h = traced(sim_without_quota(), &receiver, 0.5).await;
    h.ready().await;
    for _ in 0..40 {
        assert_eq!(h.put_with(&[]).await.code(), 0);
    }
    h.gw.flush_traces().await;
    let recorded: BTreeSet<String> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.kind == KIND_SERVER)
        .map(|s| s.trace_id)
        .collect();
    let sent: BTreeSet<String> = h
        .sim
        .requests()
        .iter()
        .filter_map(|r| r.headers.get("traceparent"))
        .map(|v| v.to_str().unwrap()[3..35].to_string())
        .collect();
    assert!(
        !sent.is_empty() && sent.len() < 40,
        "{} of 40 traced",
        sent.len()
    );
    assert_eq!(sent, recorded);
    h.stop().await;
}

#[tokio::test]
async fn tracing_off_makes_no_span_and_passes_the_callers_traceparent_through() {
    let receiver = OtlpReceiver::start().await;
    let h = start_with(sim_without_quota(), |c| c.without_put_quota()).await;
    h.ready().await;
    assert!(h.gw.gateway().tracing().is_none());
    let tp = traceparent(TRACE_ID, true);
    let a = h
        .put_with(&[("traceparent", &tp), ("tracestate", "acme=7")])
        .await;
    assert_eq!(a.code(), 0);
    let sent = h.sim.requests().pop().unwrap();
    assert_eq!(sent.headers["traceparent"], tp.as_str(), "untouched");
    assert_eq!(sent.headers["tracestate"], "acme=7");
    h.gw.flush_traces().await;
    assert_eq!(receiver.exports(), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_collector_that_is_down_costs_the_requests_nothing() {
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let h = start_with(sim_without_quota(), |c| {
        c.without_put_quota().tracing(&closed, 1.0)
    })
    .await;
    h.ready().await;
    for _ in 0..20 {
        assert_eq!(h.put_with(&[]).await.code(), 0);
    }
    let flushed = tokio::time::timeout(Duration::from_secs(15), h.gw.flush_traces()).await;
    assert!(flushed.is_ok(), "a failed export ends");
    assert_eq!(h.put_with(&[]).await.code(), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_tracing_change_waits_for_the_restart_and_says_so() {
    let receiver = OtlpReceiver::start().await;
    let sim = SimFeishu::start(sim_without_quota()).await.unwrap();
    let upstream = sim.base_url();
    let url = receiver.url();
    let config = |ratio: f64| {
        GatewayConfig::new(&upstream)
            .without_put_quota()
            .tracing(&url, ratio)
    };
    let h = Harness::on(sim, |_| config(1.0)).await;
    h.ready().await;
    let done =
        h.gw.reload(config(0.0).try_parse())
            .await
            .expect("reloaded");
    assert_eq!(done.restart_needed, vec!["tracing"]);
    // The running tracer keeps its ratio (1.0).
    assert_eq!(h.put_with(&[]).await.code(), 0);
    h.gw.flush_traces().await;
    assert_eq!(
        receiver
            .spans()
            .iter()
            .filter(|s| s.kind == KIND_SERVER)
            .count(),
        1
    );
    h.stop().await;
}

/// What `benches/load.sh --tracing` relies on: the simulated Feishu takes
/// the gateway's exports as a collector would.
#[tokio::test]
async fn the_simulated_feishu_takes_the_exports_for_the_load_harness() {
    let sim = SimFeishu::start(sim_without_quota()).await.unwrap();
    let url = sim.base_url();
    let h = Harness::on(sim, |c| c.without_put_quota().tracing(&url, 1.0)).await;
    h.ready().await;
    assert_eq!(h.put_with(&[]).await.code(), 0);
    h.gw.flush_traces().await;
    let (exports, bytes) = h.sim.otlp_exports();
    assert!(
        exports >= 1 && bytes > 0,
        "{exports} exports, {bytes} bytes"
    );
    h.stop().await;
}
