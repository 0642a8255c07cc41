//! Validation of a typical `put_top_notice` request, in ns, beside what a
//! `serde_json::Value` parse of the same body costs.
//!
//! `cargo bench --bench validate`
//!
//! Measured on the 2-core development machine (release, quiet): the whole
//! check ~270 ns, the body alone ~190 ns, a bare `Value` parse 350-490 ns.
//! In instructions (valgrind, load-independent): 4 720 for the whole check
//! (of which ~925 are `Route::param`), 2 880 for the body, 4 330 for the
//! `Value` parse, 4 860 for the simulated Feishu's check.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use feishu_gateway::endpoints::put_top_notice;
use feishu_gateway::endpoints::Catalog;
use feishu_gateway::proxy::error::GatewayError;
use feishu_gateway::validate::RequestView;
use feishu_sim::contract::put_top_notice_ok;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method};

const PATH: &str = "/open-apis/im/v1/chats/oc_5ad11d72b830411d72b836c20/top_notice/put_top_notice";
const BODY: &[u8] =
    br#"{"chat_top_notice":[{"action_type":"1","message_id":"om_dc13264520392913993dd051dba21dcf"}]}"#;
const BAD_BODY: &[u8] = br#"{"chat_top_notice":[{"action_type":1}]}"#;

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
}

criterion_group!(benches, bench);
criterion_main!(benches);
