//! The catalog at full size: what matching a request costs, what it
//! allocates, and what the state made on first use weighs.
//!
//! `cargo bench --bench catalog` prints:
//! - `match`: p50 / p99 ns per `Catalog::find` over the path of every one of
//!   the 1,559 endpoints (parameters filled in), in batches;
//! - `allocations`: heap allocations during those matches (a counting
//!   global allocator), by the templates' number of parameters: none
//!   allocates;
//! - `rss`: resident memory of 100 apps × 200 distinct endpoints each, once
//!   their quota keys and metric series exist (what a request's first use
//!   makes), and of 100,000 per-resource keys.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use feishu_gateway::endpoints::Catalog;
use feishu_gateway::observe::metrics::Metrics;
use feishu_gateway::proxy::{QuotaKeys, ResourceKeys};
use feishu_gateway::quota::{Engine, Overflow, PlanPolicy};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// Bytes asked of the allocator and not yet given back.
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn paths(catalog: &Catalog) -> Vec<(http::Method, String, usize)> {
    catalog
        .routes()
        .iter()
        .map(|r| {
            let path = r
                .template
                .split('/')
                .map(|s| if s.starts_with(':') { "ab12cd" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            (r.method.clone(), path, r.params().count())
        })
        .collect()
}

fn matching(catalog: &Catalog) {
    let paths = paths(catalog);
    let mut batches = Vec::new();
    let mut found = 0usize;
    for _ in 0..300 {
        let t = Instant::now();
        for (m, p, _) in &paths {
            found += std::hint::black_box(catalog.find(m, p)).is_some() as usize;
        }
        batches.push(t.elapsed().as_nanos() as f64 / paths.len() as f64);
    }
    assert_eq!(found, 300 * paths.len(), "every endpoint finds its route");
    batches.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| batches[((batches.len() - 1) as f64 * q) as usize];
    println!(
        "match: {} endpoints, p50 {:.0} ns, p99 {:.0} ns per find (batch means)",
        paths.len(),
        at(0.5),
        at(0.99)
    );
    let (few, many): (Vec<_>, Vec<_>) = paths.iter().partition(|(_, _, n)| *n <= 3);
    let before = ALLOCS.load(Ordering::Relaxed);
    for (m, p, _) in &few {
        std::hint::black_box(catalog.find(m, p));
    }
    let few_allocs = ALLOCS.load(Ordering::Relaxed) - before;
    let before = ALLOCS.load(Ordering::Relaxed);
    for (m, p, _) in &many {
        std::hint::black_box(catalog.find(m, p));
    }
    let many_allocs = ALLOCS.load(Ordering::Relaxed) - before;
    println!(
        "allocations: {} in {} matches ({few_allocs} in {} of templates with <= 3 parameters, {many_allocs} in {} with 4)",
        few_allocs + many_allocs,
        paths.len(),
        few.len(),
        many.len()
    );
}

fn memory(catalog: &Catalog) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let apps: Vec<String> = (0..100).map(|i| format!("app-{i}")).collect();
        let base = rss_kb();
        let metrics = Arc::new(
            Metrics::new(prometheus::Registry::new(), &apps, &catalog.templates()).unwrap(),
        );
        let keys = QuotaKeys::new(
            Engine::local(Vec::new()),
            catalog,
            &PlanPolicy::default(),
            256,
            (0..100).map(|i| format!("cli_{i:016}")).collect(),
            Arc::clone(&metrics),
        )
        .unwrap();
        let empty = rss_kb();
        let limited: Vec<usize> = (0..catalog.routes().len())
            .filter(|&r| !catalog.route(r).limits.is_empty())
            .take(200)
            .collect();
        let (mut key_bytes, mut key_allocs, mut series_bytes, mut series_allocs) = (0, 0, 0, 0);
        for app in 0..100 {
            for &r in &limited {
                let (b, a) = (live(), ALLOCS.load(Ordering::Relaxed));
                let pair = keys.app_key(app, r).unwrap();
                let _ = pair.key.as_ref().unwrap().acquire(Overflow::Reject).await;
                key_bytes += live() - b;
                key_allocs += ALLOCS.load(Ordering::Relaxed) - a;
                let (b, a) = (live(), ALLOCS.load(Ordering::Relaxed));
                metrics.request_done(
                    Some(app),
                    Some(r),
                    200,
                    Some(0),
                    Duration::from_millis(3),
                    Some(Duration::from_millis(2)),
                );
                series_bytes += live() - b;
                series_allocs += ALLOCS.load(Ordering::Relaxed) - a;
            }
        }
        let pairs = 100 * limited.len();
        let used = rss_kb();
        // Series are by labels (app, template): the routes of one template
        // (GET and POST of a path) share theirs.
        let series = metrics
            .outcome_counts()
            .requests
            .iter()
            .filter(|(app, ..)| app.starts_with("app-"))
            .count();
        println!(
            "heap per used (app, route) pair: {} B in {:.1} allocations when its key is made (quota key, pause and backoff; the pair's metric series with its limit gauges), {} B in {:.1} at its first answer (its outcome's counter; {series} distinct (app, template) series for the {pairs} pairs)",
            key_bytes / pairs,
            key_allocs as f64 / pairs as f64,
            series_bytes / pairs,
            series_allocs as f64 / pairs as f64
        );
        println!(
            "rss: {:.1} MB for the tables of 100 apps x {} routes (empty), {:.1} MB once 100 apps x 200 endpoints are used ({:.1} MB of state for 20,000 pairs: keys and metric series); process total {:.1} MB",
            (empty - base) as f64 / 1024.0,
            catalog.routes().len(),
            (used - base) as f64 / 1024.0,
            (used - empty) as f64 / 1024.0,
            used as f64 / 1024.0
        );
        let res = ResourceKeys::new(
            Engine::local(Vec::new()),
            catalog,
            &PlanPolicy::default(),
            256,
            vec!["cli_a".into()],
        )
        .unwrap();
        let rule = catalog.rules().iter().position(|r| r.name == "im.card").unwrap();
        let before = rss_kb();
        for i in 0..100_000 {
            let held = res
                .admit(rule, 0, &format!("om_{i:024}"), Overflow::Reject)
                .await
                .unwrap();
            held.commit();
        }
        assert_eq!(res.held(rule), 100_000);
        println!(
            "rss: {:.1} MB per 100,000 per-resource keys (5/1s each, ids of 27 bytes)",
            (rss_kb() - before) as f64 / 1024.0
        );
    });
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let t = Instant::now();
    let catalog = Catalog::builtin();
    println!(
        "catalog: {} routes, {} resource rules, built in {:.1} ms",
        catalog.routes().len(),
        catalog.rules().len(),
        t.elapsed().as_secs_f64() * 1000.0
    );
    matching(&catalog);
    memory(&catalog);
}
