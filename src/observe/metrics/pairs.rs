//! The request path's per-(app, route) series, kept compact: the families
//! `feishu_gateway_requests_total`, `feishu_gateway_request_duration_seconds`,
//! `feishu_gateway_upstream_duration_seconds` and `feishu_gateway_quota_limit`.
//!
//! The prometheus crate's own series carry, each, a copy of their family's
//! descriptor (name, help, label names) and of their label values, and a
//! histogram two shards of buckets: about 1.2 KB per histogram and 0.5 KB
//! per counter or gauge. With a catalog of 1,559 routes, 100 apps each
//! calling 200 of them made 20,000 (app, route) pairs and 70 MB of such
//! series. Here a pair holds only its numbers (two histograms of 16 atomic
//! counts and a sum, one counter per (status, code) seen, the limits it
//! publishes by reference); names and label values are shared by every pair
//! and built when `/metrics` is scraped. The series are kept by their labels
//! in one [`PairStore`], shared by the label tables of every config
//! generation (a reload relabels, the counts go on). What is exported is the same as
//! the prometheus crate's `HistogramVec`, `IntCounterVec` and `IntGaugeVec`
//! would export: same families, labels, buckets and values.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto;

/// Upper bounds, in seconds, of the request and upstream duration buckets.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A duration histogram over [`DURATION_BUCKETS`]: a count per bucket (not
/// cumulative; the last one counts what is above every bound) and the sum in
/// nanoseconds. The exported `_count` is the sum of the counts, so it always
/// agrees with the buckets, even while a request is being recorded.
#[derive(Default)]
pub struct DurationHistogram {
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl DurationHistogram {
    /// Records one duration.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let v = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn proto(&self) -> proto::Histogram {
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(DURATION_BUCKETS.len());
        for (bound, count) in DURATION_BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        cumulative += self.counts[DURATION_BUCKETS.len()].load(Ordering::Relaxed);
        let mut h = proto::Histogram::default();
        h.set_bucket(buckets);
        h.set_sample_count(cumulative);
        h.set_sample_sum(self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        h
    }
}

/// The `code` label of an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// No code in the answer: `none`.
    None,
    /// A code with a label of its own.
    Own(i64),
    /// A code past the bound on unknown codes: `other`.
    Other,
}

impl Code {
    fn is(self, code: Option<i64>) -> bool {
        match (self, code) {
            (Code::None, None) => true,
            (Code::Own(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// The windows a pair publishes in `feishu_gateway_quota_limit`, as
/// (label like `50/1s`, limit); shared by the pairs of one route.
pub type Windows = Arc<[(String, u32)]>;

/// The label of [`Code::Other`].
pub const OTHER_CODE: &str = "other";

struct Outcome {
    status: u16,
    code: Code,
    count: AtomicU64,
}

/// Everything one (app, route) pair holds.
#[derive(Default)]
pub struct PairSeries {
    /// `feishu_gateway_request_duration_seconds`.
    pub request_duration: DurationHistogram,
    /// `feishu_gateway_upstream_duration_seconds`.
    pub upstream_duration: DurationHistogram,
    /// `feishu_gateway_requests_total`, by (status, code): a few per pair.
    outcomes: RwLock<Vec<Outcome>>,
    /// The codes outside the known table that got a label of their own, and
    /// whether further ones were folded into `other` (see the caller).
    pub unknown_codes: Mutex<(Vec<i64>, bool)>,
    /// `feishu_gateway_quota_limit`: (window label, limit), shared by the
    /// pairs of one route; replaced when a reloaded config makes the key
    /// again.
    limits: Mutex<Option<Windows>>,
    /// Set by the first answered request: from then on the durations are
    /// exported (at 0 where nothing was observed), as the prometheus crate
    /// does for a series once it is made.
    served: AtomicBool,
}

impl PairSeries {
    /// Marks the pair as having answered a request.
    #[inline]
    pub fn served(&self) {
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
    }

    /// Counts one answer with `status` and `code` if that outcome has been
    /// seen before (the common case: a read lock and a short scan); false
    /// when it is new, for [`PairSeries::count_new`].
    #[inline]
    pub fn count(&self, status: u16, code: Option<i64>) -> bool {
        let Ok(outcomes) = self.outcomes.read() else {
            return false;
        };
        match outcomes
            .iter()
            .find(|o| o.status == status && o.code.is(code))
        {
            Some(o) => {
                o.count.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Counts one answer with `status` under the label `code`, adding the
    /// outcome if it is not there yet.
    pub fn count_new(&self, status: u16, code: Code) {
        let mut outcomes = self.outcomes.write().unwrap_or_else(|e| e.into_inner());
        match outcomes
            .iter()
            .find(|o| o.status == status && o.code == code)
        {
            Some(o) => {
                o.count.fetch_add(1, Ordering::Relaxed);
            }
            None => outcomes.push(Outcome {
                status,
                code,
                count: AtomicU64::new(1),
            }),
        }
    }

    /// The windows published in `feishu_gateway_quota_limit` (replacing
    /// any published before: a reloaded config's).
    pub fn set_limits(&self, limits: Windows) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = Some(limits);
    }

    /// Every outcome counted so far: (status, code label, count).
    pub fn outcomes(&self, mut f: impl FnMut(u16, &str, u64)) {
        let outcomes = self.outcomes.read().unwrap_or_else(|e| e.into_inner());
        let mut buf = itoa::Buffer::new();
        for o in outcomes.iter() {
            let code = match o.code {
                Code::None => "none",
                Code::Own(c) => buf.format(c),
                Code::Other => OTHER_CODE,
            };
            f(o.status, code, o.count.load(Ordering::Relaxed));
        }
    }
}

/// A label value, shared by the tables and the store.
pub type Label = Arc<str>;

/// Every pair's series by its labels (app, route): what is exported. Shared
/// by the [`PairTable`]s of every config generation, so a pair keeps its
/// counts across reloads and is exported once.
#[derive(Default)]
pub struct PairStore {
    pairs: RwLock<HashMap<(Label, Label), Arc<PairSeries>>>,
}

impl PairStore {
    fn get(&self, app: &Label, route: &Label) -> Arc<PairSeries> {
        let key = (Arc::clone(app), Arc::clone(route));
        if let Some(p) = self
            .pairs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Arc::clone(p);
        }
        let mut pairs = self.pairs.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(pairs.entry(key).or_default())
    }

    /// Calls `f` with every pair made so far: (app, route, series).
    pub fn for_each(&self, mut f: impl FnMut(&str, &str, &PairSeries)) {
        let pairs = self.pairs.read().unwrap_or_else(|e| e.into_inner());
        for ((app, route), pair) in pairs.iter() {
            f(app, route, pair);
        }
    }
}

/// One config's labels by index, and its handles on the store's pairs.
pub struct PairTable {
    /// `app` labels: index 0 is `unknown`, then the configured apps.
    pub apps: Vec<Label>,
    /// `route` labels: index 0 is `other`, then the catalog's templates.
    pub routes: Vec<Label>,
    store: Arc<PairStore>,
    /// At `app * routes.len() + route` (label indices), found or made in
    /// the store on first use.
    pairs: Box<[OnceLock<Arc<PairSeries>>]>,
}

impl PairTable {
    /// A table of empty slots over these labels (`unknown` and `other`
    /// added at index 0), on `store`.
    pub fn new(store: Arc<PairStore>, apps: &[String], routes: &[String]) -> PairTable {
        let label = |s: &str| -> Label { s.into() };
        let apps: Vec<Label> = std::iter::once(UNKNOWN_APP)
            .chain(apps.iter().map(String::as_str))
            .map(label)
            .collect();
        let routes: Vec<Label> = std::iter::once(OTHER_ROUTE)
            .chain(routes.iter().map(String::as_str))
            .map(label)
            .collect();
        let pairs = (0..apps.len() * routes.len())
            .map(|_| OnceLock::new())
            .collect();
        PairTable {
            apps,
            routes,
            store,
            pairs,
        }
    }

    /// The store the table's pairs live in.
    pub fn store(&self) -> &Arc<PairStore> {
        &self.store
    }

    /// The pair at label indices (`app`, `route`), found or made now if this
    /// is the table's first use of it.
    #[inline]
    pub fn pair(&self, app: usize, route: usize) -> &PairSeries {
        self.pairs[app * self.routes.len() + route]
            .get_or_init(|| self.store.get(&self.apps[app], &self.routes[route]))
    }
}

/// Label for requests that matched no configured app.
pub const UNKNOWN_APP: &str = "unknown";
/// Label for paths outside the catalog.
pub const OTHER_ROUTE: &str = "other";

/// The collector that exports a [`PairStore`] on a registry.
pub struct PairFamilies {
    store: Arc<PairStore>,
    requests_total: Desc,
    request_duration: Desc,
    upstream_duration: Desc,
    quota_limit: Desc,
}

fn desc(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Desc> {
    Desc::new(
        name.to_string(),
        help.to_string(),
        labels.iter().map(|l| l.to_string()).collect(),
        HashMap::new(),
    )
}

fn labels(pairs: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    // The prometheus crate sorts a series' labels by name; so do the callers.
    pairs
        .iter()
        .map(|(name, value)| {
            let mut l = proto::LabelPair::default();
            l.set_name(name.to_string());
            l.set_value(value.to_string());
            l
        })
        .collect()
}

fn family(
    desc: &Desc,
    kind: proto::MetricType,
    metrics: Vec<proto::Metric>,
) -> proto::MetricFamily {
    let mut f = proto::MetricFamily::default();
    f.set_name(desc.fq_name.clone());
    f.set_help(desc.help.clone());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

impl PairFamilies {
    /// The collector of `store`.
    pub fn new(store: Arc<PairStore>) -> prometheus::Result<PairFamilies> {
        Ok(PairFamilies {
            store,
            requests_total: desc(
                "feishu_gateway_requests_total",
                "Requests answered, by app, route, HTTP status and Feishu code",
                &["app", "route", "status", "code"],
            )?,
            request_duration: desc(
                "feishu_gateway_request_duration_seconds",
                "Total time a request spent in the gateway",
                &["app", "route"],
            )?,
            upstream_duration: desc(
                "feishu_gateway_upstream_duration_seconds",
                "Time spent waiting for Feishu, per request (all attempts)",
                &["app", "route"],
            )?,
            quota_limit: desc(
                "feishu_gateway_quota_limit",
                "Configured requests per window of each (app, route) quota",
                &["app", "route", "window"],
            )?,
        })
    }
}

impl Collector for PairFamilies {
    fn desc(&self) -> Vec<&Desc> {
        vec![
            &self.requests_total,
            &self.request_duration,
            &self.upstream_duration,
            &self.quota_limit,
        ]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let (mut requests, mut request_d, mut upstream_d, mut limits) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut status_buf = itoa::Buffer::new();
        self.store.for_each(|app, route, pair| {
            if pair.served.load(Ordering::Relaxed) {
                pair.outcomes(|status, code, count| {
                    let mut m = proto::Metric::from_label(labels(&[
                        ("app", app),
                        ("code", code),
                        ("route", route),
                        ("status", status_buf.format(status)),
                    ]));
                    let mut c = proto::Counter::default();
                    c.set_value(count as f64);
                    m.set_counter(c);
                    requests.push(m);
                });
                for (h, out) in [
                    (&pair.request_duration, &mut request_d),
                    (&pair.upstream_duration, &mut upstream_d),
                ] {
                    let mut m =
                        proto::Metric::from_label(labels(&[("app", app), ("route", route)]));
                    m.set_histogram(h.proto());
                    out.push(m);
                }
            }
            let windows = pair
                .limits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            for (window, limit) in windows.iter().flat_map(|l| l.iter()) {
                let mut m = proto::Metric::from_label(labels(&[
                    ("app", app),
                    ("route", route),
                    ("window", window),
                ]));
                let mut g = proto::Gauge::default();
                g.set_value(f64::from(*limit));
                m.set_gauge(g);
                limits.push(m);
            }
        });
        vec![
            family(&self.requests_total, proto::MetricType::COUNTER, requests),
            family(
                &self.request_duration,
                proto::MetricType::HISTOGRAM,
                request_d,
            ),
            family(
                &self.upstream_duration,
                proto::MetricType::HISTOGRAM,
                upstream_d,
            ),
            family(&self.quota_limit, proto::MetricType::GAUGE, limits),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

    fn render(r: &Registry) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&r.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The compact pairs export what the prometheus crate's vectors export
    /// for the same observations (but the sums, kept here in nanoseconds).
    #[test]
    fn exports_what_the_prometheus_vectors_export() {
        let store = Arc::new(PairStore::default());
        let table = PairTable::new(
            Arc::clone(&store),
            &["app-a".into(), "app-b".into()],
            &["/open-apis/x/:id".into(), "/open-apis/y".into()],
        );
        let ours = Registry::new();
        ours.register(Box::new(PairFamilies::new(Arc::clone(&store)).unwrap()))
            .unwrap();
        let theirs = Registry::new();
        let h = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
                &["app", "route"],
            )
            .unwrap()
        };
        let req = h(
            "feishu_gateway_request_duration_seconds",
            "Total time a request spent in the gateway",
        );
        let up = h(
            "feishu_gateway_upstream_duration_seconds",
            "Time spent waiting for Feishu, per request (all attempts)",
        );
        let total = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_requests_total",
                "Requests answered, by app, route, HTTP status and Feishu code",
            ),
            &["app", "route", "status", "code"],
        )
        .unwrap();
        let limit = prometheus::IntGaugeVec::new(
            Opts::new(
                "feishu_gateway_quota_limit",
                "Configured requests per window of each (app, route) quota",
            ),
            &["app", "route", "window"],
        )
        .unwrap();
        for c in [
            Box::new(req.clone()) as Box<dyn Collector>,
            Box::new(up.clone()),
            Box::new(total.clone()),
            Box::new(limit.clone()),
        ] {
            theirs.register(c).unwrap();
        }
        assert_eq!(
            render(&ours),
            render(&theirs),
            "nothing used, nothing exported"
        );

        // Durations on bucket bounds, between them and above the last.
        let events: [(usize, usize, u16, Code, u64, Option<u64>); 6] = [
            (1, 1, 200, Code::Own(0), 500_000, Some(400_000)),
            (1, 1, 200, Code::Own(0), 700_000, Some(600_000)),
            (1, 1, 429, Code::Own(99991400), 31_000_000_000, None),
            (0, 0, 404, Code::None, 1_000, None),
            (2, 2, 502, Code::Other, 30_000_000_000, Some(2_500_000_000)),
            (2, 1, 200, Code::Own(-1), 10_000_000, Some(9_999_999)),
        ];
        for (a, r, status, code, total_ns, up_ns) in events {
            let pair = table.pair(a, r);
            pair.served();
            pair.request_duration
                .observe(Duration::from_nanos(total_ns));
            if let Some(u) = up_ns {
                pair.upstream_duration.observe(Duration::from_nanos(u));
            }
            let code_opt = match code {
                Code::None => None,
                Code::Own(c) => Some(c),
                Code::Other => Some(7),
            };
            if !pair.count(status, code_opt) {
                pair.count_new(status, code);
            }
            let labels = [&*table.apps[a], &*table.routes[r]];
            req.with_label_values(&labels)
                .observe(Duration::from_nanos(total_ns).as_secs_f64());
            let u = up.with_label_values(&labels);
            if let Some(ns) = up_ns {
                u.observe(Duration::from_nanos(ns).as_secs_f64());
            }
            let code_label = match code {
                Code::None => "none".to_string(),
                Code::Own(c) => c.to_string(),
                Code::Other => OTHER_CODE.to_string(),
            };
            total
                .with_label_values(&[labels[0], labels[1], &status.to_string(), &code_label])
                .inc();
        }
        // Limits on a pair that has not answered yet: only the gauges.
        let windows: Windows =
            vec![("50/1s".to_string(), 50), ("1000/60s".to_string(), 1000)].into();
        table.pair(2, 2).set_limits(Arc::clone(&windows));
        table.pair(1, 2).set_limits(Arc::clone(&windows));
        for (w, l) in windows.iter() {
            for app in ["app-b", "app-a"] {
                limit
                    .with_label_values(&[app, "/open-apis/y", w])
                    .set(i64::from(*l));
            }
        }
        let sums = |s: &str| -> String {
            s.lines()
                .filter(|l| !l.contains("_sum{"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let (ours, theirs) = (render(&ours), render(&theirs));
        assert_eq!(sums(&ours), sums(&theirs));
        assert!(ours.contains(
            "feishu_gateway_request_duration_seconds_sum{app=\"app-a\",route=\"/open-apis/x/:id\"} 31.0012"
        ), "{ours}");
        assert!(ours.contains("feishu_gateway_requests_total{app=\"app-b\",code=\"other\",route=\"/open-apis/y\",status=\"502\"} 1"));
    }

    /// A reloaded config's table over the same store: a pair with the same
    /// labels is the same series (its counts go on, exported once), new
    /// limits replace the old ones, and a pair of a removed app stays.
    #[test]
    fn a_new_table_on_the_same_store_carries_the_pairs_on() {
        let store = Arc::new(PairStore::default());
        let r = Registry::new();
        r.register(Box::new(PairFamilies::new(Arc::clone(&store)).unwrap()))
            .unwrap();
        let old = PairTable::new(
            Arc::clone(&store),
            &["a".into(), "gone".into()],
            &["/open-apis/x".into(), "/open-apis/y".into()],
        );
        let answer = |t: &PairTable, app: usize, route: usize| {
            let p = t.pair(app, route);
            p.served();
            p.request_duration.observe(Duration::from_millis(3));
            if !p.count(200, Some(0)) {
                p.count_new(200, Code::Own(0));
            }
        };
        answer(&old, 1, 2);
        answer(&old, 2, 1);
        old.pair(1, 2)
            .set_limits(vec![("5/1s".to_string(), 5)].into());
        // The new config: "gone" removed, "b" added, the routes in another order.
        let new = PairTable::new(
            Arc::clone(&store),
            &["b".into(), "a".into()],
            &["/open-apis/y".into(), "/open-apis/x".into()],
        );
        answer(&new, 2, 1);
        answer(&old, 1, 2); // a request of the old generation, still draining
        new.pair(2, 1)
            .set_limits(vec![("9/1s".to_string(), 9)].into());
        let text = render(&r);
        let line = |prefix: &str| {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            line("feishu_gateway_requests_total"),
            [
                "feishu_gateway_requests_total{app=\"a\",code=\"0\",route=\"/open-apis/y\",status=\"200\"} 3",
                "feishu_gateway_requests_total{app=\"gone\",code=\"0\",route=\"/open-apis/x\",status=\"200\"} 1",
            ]
        );
        assert_eq!(
            line("feishu_gateway_quota_limit"),
            ["feishu_gateway_quota_limit{app=\"a\",route=\"/open-apis/y\",window=\"9/1s\"} 9"]
        );
        assert_eq!(
            line("feishu_gateway_request_duration_seconds_count"),
            [
                "feishu_gateway_request_duration_seconds_count{app=\"a\",route=\"/open-apis/y\"} 3",
                "feishu_gateway_request_duration_seconds_count{app=\"gone\",route=\"/open-apis/x\"} 1",
            ]
        );
    }

    /// Two routes of one template (`GET` and `POST` of a path) have the
    /// same labels: one series, as the prometheus crate's vectors had.
    #[test]
    fn routes_with_the_same_template_share_their_series() {
        let store = Arc::new(PairStore::default());
        let r = Registry::new();
        r.register(Box::new(PairFamilies::new(Arc::clone(&store)).unwrap()))
            .unwrap();
        let t = PairTable::new(
            store,
            &["a".into()],
            &["/open-apis/x".into(), "/open-apis/x".into()],
        );
        for route in [1, 2] {
            let p = t.pair(1, route);
            p.served();
            if !p.count(200, Some(0)) {
                p.count_new(200, Code::Own(0));
            }
        }
        let text = render(&r);
        let lines: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("feishu_gateway_requests_total{"))
            .collect();
        assert_eq!(
            lines,
            ["feishu_gateway_requests_total{app=\"a\",code=\"0\",route=\"/open-apis/x\",status=\"200\"} 2"]
        );
    }

    #[test]
    fn an_outcome_seen_before_is_counted_under_its_label() {
        let pair = PairSeries::default();
        assert!(!pair.count(200, Some(0)));
        pair.count_new(200, Code::Own(0));
        assert!(pair.count(200, Some(0)));
        assert!(!pair.count(200, None));
        assert!(!pair.count(400, Some(0)));
        pair.count_new(500, Code::Other);
        pair.count_new(500, Code::Other);
        assert!(
            !pair.count(500, Some(i64::MIN)),
            "a folded code is looked up again"
        );
        let o = pair.outcomes.read().unwrap();
        let counts: Vec<_> = o
            .iter()
            .map(|o| (o.status, o.code, o.count.load(Ordering::Relaxed)))
            .collect();
        assert_eq!(counts, [(200, Code::Own(0), 2), (500, Code::Other, 2)]);
    }
}
