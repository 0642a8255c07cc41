//! Validation of a typical `put_top_notice` request and of a typical message
//! send, in ns, beside what a `serde_json::Value` parse of the same body
//! costs.
//!
//! `cargo bench --bench validate`
//!
//! Measured on the 2-core development machine (release, quiet): the whole
//! check ~270 ns, the body alone ~190 ns, a bare `Value` parse 350-490 ns.
//! In instructions (valgrind, load-independent): 4 720 for the whole check
//! (of which ~925 are `Route::param`), 2 880 for the body, 4 330 for the
//! `Value` parse, 4 860 for the simulated Feishu's check.
//!
//! With the message contracts (same machine, shared, load 2.5-5, so every
//! figure is high; the medians of alternating runs): put_top_notice's whole
//! check 340-440 ns against 385-510 ns for the code before them; in
//! callgrind instructions (`--toggle-collect='*Contract*check*'`, per call
//! of `check_header`) 4 727 against 4 659 (+1.5 %). A typical send (the
//! Python SDK's text body, 190 B) 665-740 ns and 9 418 instructions, where
//! parsing body and content into `Value`s takes ~980 ns; a 1.9 KB card
//! 5.8 µs (76 830 instructions, mostly serde_json unescaping `content` and
//! reading it again) against 12-15 µs through `Value`s.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use feishu_gateway::endpoints::Catalog;
use feishu_gateway::endpoints::{put_top_notice, send_message};
use feishu_gateway::proxy::error::GatewayError;
use feishu_gateway::validate::RequestView;
use feishu_sim::contract::put_top_notice_ok;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method};

const PATH: &str = "/open-apis/im/v1/chats/oc_5ad11d72b830411d72b836c20/top_notice/put_top_notice";
const BODY: &[u8] =
    br#"{"chat_top_notice":[{"action_type":"1","message_id":"om_dc13264520392913993dd051dba21dcf"}]}"#;
const BAD_BODY: &[u8] = br#"{"chat_top_notice":[{"action_type":1}]}"#;

const SEND_PATH: &str = "/open-apis/im/v1/messages";
const SEND_QUERY: &str = "receive_id_type=open_id";
/// A text message as the Python SDK (lark-oapi 1.7.5) sends it.
const SEND_BODY: &[u8] = br#"{"receive_id": "ou_7d8a6e6df7621556ce0d21922b676706ccs", "msg_type": "text", "content": "{\"text\": \"hello <b>\\u4e16\\u754c</b>\\nline2\"}", "uuid": "a0d69e20-1dd1-458b-k525-dfeca4015204"}"#;
/// The same with `content` sent as an object (the usual mistake).
const SEND_BAD_BODY: &[u8] =
    br#"{"receive_id": "ou_7d8a6e6df7621556ce0d21922b676706ccs", "msg_type": "text", "content": {"text": "hello"}}"#;

fn bench(c: &mut Criterion) {
    let catalog = Catalog::builtin();
    let route = catalog.route(catalog.find(&Method::POST, PATH).expect("route"));
    let contract = put_top_notice();
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    let view = |body: &'static [u8]| RequestView {
        route,
        path: PATH,
        query: None,
        headers: &headers,
        body,
    };

    let mut g = c.benchmark_group("put_top_notice");
    let ok = view(BODY);
    assert!(contract.check(&ok).is_ok());
    g.bench_function("check (valid request)", |b| {
        b.iter(|| contract.check(black_box(&ok)))
    });
    // The body alone (no path or header rules), to set beside a Value parse.
    let body_only = feishu_gateway::validate::Contract {
        params: vec![],
        headers: vec![],
        ..put_top_notice()
    };
    g.bench_function("check body only (valid)", |b| {
        b.iter(|| body_only.check(black_box(&ok)))
    });
    let bad = view(BAD_BODY);
    assert!(contract.check(&bad).is_err());
    g.bench_function("check (invalid request)", |b| {
        b.iter(|| contract.check(black_box(&bad)))
    });
    g.bench_function("check + 400 answer (invalid request)", |b| {
        b.iter(|| match contract.check(black_box(&bad)) {
            Ok(()) => None,
            Err(v) => Some(GatewayError::Invalid(Box::new(v)).into_response()),
        })
    });
    // For comparison: only parsing the body into a Value, and the
    // simulated Feishu's Value-based check.
    g.bench_function("baseline: serde_json::Value parse", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(BODY)))
    });
    g.bench_function("baseline: sim put_top_notice_ok", |b| {
        b.iter(|| put_top_notice_ok(black_box(BODY)))
    });
    g.finish();

    bench_send(c, &catalog, &headers);
}

/// A message send: the query, the header and a body whose `content` is
/// JSON in a string (so it is unescaped and parsed a second time).
fn bench_send(c: &mut Criterion, catalog: &Catalog, headers: &HeaderMap) {
    let route = catalog.route(catalog.find(&Method::POST, SEND_PATH).expect("route"));
    let contract = send_message();
    let view = |body: &'static [u8]| RequestView {
        route,
        path: SEND_PATH,
        query: Some(SEND_QUERY),
        headers,
        body,
    };
    // A ~2 KB card: 20 markdown elements.
    let elements: Vec<serde_json::Value> = (0..20)
        .map(|i| serde_json::json!({"tag": "markdown", "content": format!("**line {i}**: <at id=\"all\"></at> 状态正常")}))
        .collect();
    let card = serde_json::json!({
        "receive_id": "oc_84983ff6516d731e5b5f68d4ea2e1da5",
        "msg_type": "interactive",
        "content": serde_json::json!({"elements": elements}).to_string(),
    })
    .to_string();
    let card: &'static [u8] = Box::leak(card.into_bytes().into_boxed_slice());

    let mut g = c.benchmark_group("send_message");
    let ok = view(SEND_BODY);
    assert!(contract.check(&ok).is_ok());
    g.bench_function("check (valid text, Python SDK body)", |b| {
        b.iter(|| contract.check(black_box(&ok)))
    });
    let ok_card = view(card);
    assert!(contract.check(&ok_card).is_ok());
    g.bench_function(format!("check (valid {} B card)", card.len()), |b| {
        b.iter(|| contract.check(black_box(&ok_card)))
    });
    let bad = view(SEND_BAD_BODY);
    assert!(contract.check(&bad).is_err());
    g.bench_function("check + 400 answer (content an object)", |b| {
        b.iter(|| match contract.check(black_box(&bad)) {
            Ok(()) => None,
            Err(v) => Some(GatewayError::Invalid(Box::new(v)).into_response()),
        })
    });
    // For comparison: the same judgement through Values (the body, then
    // its content).
    let by_values = |body: &[u8]| {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        serde_json::from_str::<serde_json::Value>(v["content"].as_str()?).ok()
    };
    g.bench_function("baseline: Value parse of body and content (text)", |b| {
        b.iter(|| by_values(black_box(SEND_BODY)))
    });
    g.bench_function("baseline: Value parse of body and content (card)", |b| {
        b.iter(|| by_values(black_box(card)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
