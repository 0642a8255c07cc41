//! Prometheus metrics (the TiKV `prometheus` crate), registered into a
//! registry owned by the runtime and served on the admin listener.
//!
//! Label sets are bounded by configuration: `app` is a configured app name
//! (or `unknown`), `route` a catalog template (or `other`), `code` a Feishu
//! code seen in an answer. The series of an (app, route) pair are made by
//! its first request and kept compact ([`pairs`]): recording a request does
//! no label hashing and allocates nothing once its (status, code) was seen.

mod events;
mod pairs;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Counter, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use events::EventFamilies;
pub use events::{EventMetrics, SubscriptionMetrics, MAX_EVENT_TYPES};
use pairs::{Code, PairFamilies, PairSeries, PairStore, PairTable, Windows};
pub use pairs::{DURATION_BUCKETS, OTHER_CODE, OTHER_ROUTE, UNKNOWN_APP};

/// All metric families of the gateway.
pub struct Metrics {
    registry: Registry,
    rate_limited: IntCounterVec,
    upstream_throttled: IntCounterVec,
    token_refreshes: IntCounterVec,
    token_expiry: GaugeVec,
    token_replays: IntCounterVec,
    token_invalid_streamed: IntCounterVec,
    upstream_errors: IntCounterVec,
    retries: IntCounterVec,
    retries_skipped: IntCounterVec,
    would_reject: IntCounterVec,
    in_flight: IntGauge,
    config_reloads: IntCounterVec,
    config_reload_time: GaugeVec,
    client_requests: IntCounterVec,
    forbidden: IntCounterVec,
    share_limited: IntCounterVec,
    open_connections: IntGaugeVec,
    connections_accepted: IntCounterVec,
    connections_rejected: IntCounterVec,
    store_tenants: IntGaugeVec,
    app_ticket_received: GaugeVec,
    app_ticket_store_errors: IntCounterVec,
    quota_waiting: IntGaugeVec,
    quota_wait: HistogramVec,
    budget: BudgetFamilies,
    backend: BackendFamilies,
    /// The events' families (`feishu_gateway_events_*`).
    events: EventFamilies,
    /// Per (app or unknown, route or other), made on first use: a catalog of
    /// 1,559 routes exports series only for the routes called. Label index
    /// 0 is `unknown` / `other`, then app + 1 and route + 1. Its store (the
    /// series by labels) is shared with the generations after a reload.
    pairs: PairTable,
    /// Per route + 1: the windows its pairs publish, shared by the apps.
    route_limits: Box<[OnceLock<Windows>]>,
}

/// Counters read for the status page ([`Metrics::outcome_counts`]).
#[derive(Debug, Clone, Default)]
pub struct OutcomeCounts {
    /// (app, route, code, answers) of `feishu_gateway_requests_total`,
    /// summed over status.
    pub requests: Vec<(String, String, String, u64)>,
    /// (app, kind, failures) of `feishu_gateway_upstream_errors_total`.
    pub upstream_errors: Vec<(String, String, u64)>,
}

/// Handles of one listener's connection counts (`listener` is `main` or
/// `admin`).
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    /// Connections open now.
    pub open: IntGauge,
    /// Connections accepted and served.
    pub accepted: IntCounter,
    /// Connections closed at once because the listener was at its limit.
    pub rejected: IntCounter,
}

/// Wait-mode handles of one quota-limited (app, route) pair.
#[derive(Clone)]
pub struct QuotaPairMetrics {
    /// Requests waiting now.
    pub waiting: IntGauge,
    /// Time admitted requests waited.
    pub wait: Histogram,
}

/// The monthly call budget's families (`feishu_gateway_budget_*`), per app.
#[derive(Clone)]
struct BudgetFamilies {
    used: IntGaugeVec,
    limit: IntGaugeVec,
    exhausted: IntGaugeVec,
}

/// Handles of one app's monthly budget series (the apps of a budget group
/// all show the group's figures).
#[derive(Clone)]
pub struct BudgetMetrics {
    /// Calls counted this month (`feishu_gateway_budget_used`).
    pub used: IntGauge,
    /// 1 while counted calls are answered by the gateway
    /// (`feishu_gateway_budget_exhausted`).
    pub exhausted: IntGauge,
}

/// The shared quota backend's families (`feishu_gateway_quota_backend_*`).
#[derive(Clone)]
struct BackendFamilies {
    info: IntGaugeVec,
    up: IntGauge,
    duration: HistogramVec,
    errors: IntCounterVec,
    fallbacks: IntCounter,
    fallback_seconds: Counter,
    degraded_requests: IntCounterVec,
}

/// Handles of the shared quota backend (Redis), created once at start.
#[derive(Clone)]
pub struct QuotaBackendMetrics {
    /// 1 while limits are shared through the backend, 0 while degraded.
    pub up: IntGauge,
    /// Round trips of the admission script (one per admitted request).
    pub take: Histogram,
    /// Round trips of snapshot reads.
    pub peek: Histogram,
    /// Round trips writing an upstream pause.
    pub pause: Histogram,
    /// Round trips giving an admission back (a client's share key, when
    /// the app key refused the request after it).
    pub give: Histogram,
    /// Round trips of health probes and of the return to shared limiting.
    pub probe: Histogram,
    /// Calls that did not answer within the timeout.
    pub timeouts: IntCounter,
    /// Calls that failed to connect or lost their connection.
    pub connection_errors: IntCounter,
    /// Calls the server answered with an error.
    pub server_errors: IntCounter,
    /// Switches from shared limiting to the fail mode.
    pub fallbacks: IntCounter,
    /// Time spent not sharing limits, in seconds.
    pub fallback_seconds: Counter,
    /// Requests decided by the fail mode while degraded.
    pub degraded_requests: IntCounter,
}

fn backend_buckets() -> Vec<f64> {
    vec![
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    ]
}

impl BackendFamilies {
    fn new() -> prometheus::Result<Self> {
        Ok(BackendFamilies {
            info: IntGaugeVec::new(
                Opts::new(
                    "feishu_gateway_quota_backend_info",
                    "Where quota state lives (local or redis) and the fail mode when it is unreachable",
                ),
                &["backend", "fail"],
            )?,
            up: IntGauge::new(
                "feishu_gateway_quota_backend_up",
                "1 while quotas are shared through Redis, 0 while the fail mode decides",
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "feishu_gateway_quota_backend_duration_seconds",
                    "Round trips to the shared quota backend, by operation",
                )
                .buckets(backend_buckets()),
                &["op"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "feishu_gateway_quota_backend_errors_total",
                    "Failed calls to the shared quota backend, by kind",
                ),
                &["kind"],
            )?,
            fallbacks: IntCounter::new(
                "feishu_gateway_quota_backend_fallbacks_total",
                "Switches from shared limiting to the fail mode",
            )?,
            fallback_seconds: Counter::new(
                "feishu_gateway_quota_backend_fallback_seconds_total",
                "Time spent with the shared quota backend unavailable",
            )?,
            degraded_requests: IntCounterVec::new(
                Opts::new(
                    "feishu_gateway_quota_backend_degraded_requests_total",
                    "Requests decided by the fail mode (local, closed or open) while the backend was unavailable",
                ),
                &["fail"],
            )?,
        })
    }

    /// Everything but `info`, registered only when a Redis backend runs.
    fn shared_collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.up.clone()),
            Box::new(self.duration.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.fallbacks.clone()),
            Box::new(self.fallback_seconds.clone()),
            Box::new(self.degraded_requests.clone()),
        ]
    }
}

/// Codes outside the known table that get a label of their own per (app,
/// route). Any upstream can put any number in `code` (a broken proxy in
/// between, a private deployment): without a bound every distinct value
/// would be a new series, growing the gateway's memory and Prometheus'.
pub const MAX_UNKNOWN_CODES: usize = 16;

fn unix_now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An empty slot per route label of `pairs` for the windows its pairs
/// publish.
fn route_limits(pairs: &PairTable) -> Box<[OnceLock<Windows>]> {
    (0..pairs.routes.len()).map(|_| OnceLock::new()).collect()
}

fn buckets() -> Vec<f64> {
    DURATION_BUCKETS.to_vec()
}

impl Metrics {
    /// Registers every family into `registry`. `apps` and `routes` are the
    /// configured app names and catalog route templates.
    pub fn new(registry: Registry, apps: &[String], routes: &[String]) -> prometheus::Result<Self> {
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_rate_limited_total",
                "Requests rejected or timed out while waiting by the gateway's quota",
            ),
            &["app", "route", "reason"],
        )?;
        let upstream_throttled = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_upstream_throttled_total",
                "Throttle answers from Feishu itself, by Feishu code (data/throttle-codes.tsv, or none for a bare 429); should stay 0",
            ),
            &["app", "route", "code"],
        )?;
        let token_refreshes = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_token_refreshes_total",
                "tenant_access_token fetches, by result",
            ),
            &["app", "result"],
        )?;
        let token_expiry = GaugeVec::new(
            Opts::new(
                "feishu_gateway_token_expiry_timestamp_seconds",
                "Unix time at which the cached tenant_access_token expires (0: none)",
            ),
            &["app"],
        )?;
        let token_replays = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_token_replays_total",
                "Requests replayed with a fresh token after a token-invalid answer",
            ),
            &["app", "code"],
        )?;
        let token_invalid_streamed = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_token_invalid_streamed_total",
                "Token-invalid answers to streamed uploads (not replayed: passed to the caller; the token is dropped)",
            ),
            &["app", "code"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_upstream_errors_total",
                "Transport failures talking to Feishu",
            ),
            &["app", "route", "kind"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_retries_total",
                "Requests sent to Feishu again after a transient failure, by reason (connect, reset, edge_502, edge_503, code)",
            ),
            &["app", "route", "reason"],
        )?;
        let retries_skipped = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_retries_skipped_total",
                "Transient failures answered without a retry, by reason (unsafe, attempts, deadline, budget, quota)",
            ),
            &["app", "route", "reason"],
        )?;
        let would_reject = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_validation_would_reject_total",
                "Requests that broke their contract on a route in log-only validation mode (forwarded)",
            ),
            &["app", "route"],
        )?;
        let in_flight = IntGauge::new(
            "feishu_gateway_in_flight_requests",
            "Requests being handled now",
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_config_reloads_total",
                "Config reloads (SIGHUP or file change), by result: ok (the new config serves), invalid (refused: the old one keeps serving)",
            ),
            &["result"],
        )?;
        let config_reload_time = GaugeVec::new(
            Opts::new(
                "feishu_gateway_config_reload_timestamp_seconds",
                "Unix time of the last reload attempt, by result (the start counts as ok)",
            ),
            &["result"],
        )?;
        let client_requests = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_client_requests_total",
                "Requests authenticated, by client and key (the first 8 hex digits of the key's SHA-256; never the key)",
            ),
            &["client", "key"],
        )?;
        let share_limited = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_share_limited_total",
                "Requests refused (or timed out waiting) because the client used its quota_share of the (app, route) quota; not in feishu_gateway_rate_limited_total",
            ),
            &["client", "route", "reason"],
        )?;
        let forbidden = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_forbidden_total",
                "Requests refused with 403 because the client's allow list does not include the route",
            ),
            &["client", "route"],
        )?;
        let open_connections = IntGaugeVec::new(
            Opts::new(
                "feishu_gateway_open_connections",
                "Client connections open now, by listener (main or admin)",
            ),
            &["listener"],
        )?;
        let connections_accepted = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_connections_accepted_total",
                "Client connections accepted and served, by listener",
            ),
            &["listener"],
        )?;
        let connections_rejected = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_connections_rejected_total",
                "Client connections closed at once because the listener was at max_connections",
            ),
            &["listener"],
        )?;
        let store_tenants = IntGaugeVec::new(
            Opts::new(
                "feishu_gateway_store_tenants",
                "Tenants (tenant tokens and quotas) held for a store app",
            ),
            &["app"],
        )?;
        let app_ticket_received = GaugeVec::new(
            Opts::new(
                "feishu_gateway_app_ticket_received_timestamp_seconds",
                "Unix time at which a store app's current app_ticket was received",
            ),
            &["app"],
        )?;
        let app_ticket_store_errors = IntCounterVec::new(
            Opts::new(
                "feishu_gateway_app_ticket_store_errors_total",
                "Failed loads and saves of a store app's app_ticket (state_dir file or Redis); the ticket in memory is used meanwhile",
            ),
            &["app", "op"],
        )?;
        let quota_waiting = IntGaugeVec::new(
            Opts::new(
                "feishu_gateway_quota_waiting",
                "Requests waiting for quota in wait mode now",
            ),
            &["app", "route"],
        )?;
        let quota_wait = HistogramVec::new(
            HistogramOpts::new(
                "feishu_gateway_quota_wait_seconds",
                "Time admitted requests waited for quota in wait mode",
            )
            .buckets(buckets()),
            &["app", "route"],
        )?;
        let budget = BudgetFamilies {
            used: IntGaugeVec::new(
                Opts::new(
                    "feishu_gateway_budget_used",
                    "Calls counted against the monthly call budget this month (Asia/Shanghai), per app; the apps of a budget_group show the group's count",
                ),
                &["app"],
            )?,
            limit: IntGaugeVec::new(
                Opts::new(
                    "feishu_gateway_budget_limit",
                    "The configured monthly_budget of the app (or of its budget_group)",
                ),
                &["app"],
            )?,
            exhausted: IntGaugeVec::new(
                Opts::new(
                    "feishu_gateway_budget_exhausted",
                    "1 while the gateway answers the app's counted calls itself (Feishu said 99991403, or the count reached monthly_budget)",
                ),
                &["app"],
            )?,
        };
        let backend = BackendFamilies::new()?;
        let build_info = IntGaugeVec::new(
            Opts::new("feishu_gateway_build_info", "Build information"),
            &["version"],
        )?;
        let code_info = IntGaugeVec::new(
            Opts::new(
                "feishu_error_code_info",
                "Description of every Feishu or gateway code the gateway knows",
            ),
            &["code", "description"],
        )?;
        let events = EventFamilies::new(&registry)?;
        let store = Arc::new(PairStore::default());
        let pairs = PairTable::new(Arc::clone(&store), apps, routes);
        let route_limits = route_limits(&pairs);
        for c in [
            Box::new(PairFamilies::new(store)?) as Box<dyn prometheus::core::Collector>,
            Box::new(rate_limited.clone()),
            Box::new(upstream_throttled.clone()),
            Box::new(token_refreshes.clone()),
            Box::new(token_expiry.clone()),
            Box::new(token_replays.clone()),
            Box::new(token_invalid_streamed.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(retries.clone()),
            Box::new(retries_skipped.clone()),
            Box::new(would_reject.clone()),
            Box::new(in_flight.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_reload_time.clone()),
            Box::new(client_requests.clone()),
            Box::new(forbidden.clone()),
            Box::new(share_limited.clone()),
            Box::new(open_connections.clone()),
            Box::new(connections_accepted.clone()),
            Box::new(connections_rejected.clone()),
            Box::new(store_tenants.clone()),
            Box::new(app_ticket_received.clone()),
            Box::new(app_ticket_store_errors.clone()),
            Box::new(quota_waiting.clone()),
            Box::new(quota_wait.clone()),
            Box::new(budget.used.clone()),
            Box::new(budget.limit.clone()),
            Box::new(budget.exhausted.clone()),
            Box::new(build_info.clone()),
            Box::new(code_info.clone()),
        ]
        .into_iter()
        .chain([Box::new(backend.info.clone()) as Box<dyn prometheus::core::Collector>])
        {
            registry.register(c)?;
        }
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for (code, desc) in crate::feishu::codes::KNOWN {
            code_info
                .with_label_values(&[code.to_string().as_str(), desc])
                .set(1);
        }

        for result in ["ok", "invalid"] {
            config_reloads.with_label_values(&[result]);
        }
        config_reload_time
            .with_label_values(&["ok"])
            .set(unix_now_secs());
        for a in apps {
            token_expiry.with_label_values(&[a]).set(0.0);
            for result in ["ok", "error"] {
                token_refreshes.with_label_values(&[a, result]);
            }
        }
        Ok(Metrics {
            registry,
            rate_limited,
            upstream_throttled,
            token_refreshes,
            token_expiry,
            token_replays,
            token_invalid_streamed,
            upstream_errors,
            retries,
            retries_skipped,
            would_reject,
            in_flight,
            config_reloads,
            config_reload_time,
            client_requests,
            forbidden,
            share_limited,
            open_connections,
            connections_accepted,
            connections_rejected,
            store_tenants,
            app_ticket_received,
            app_ticket_store_errors,
            quota_waiting,
            quota_wait,
            budget,
            backend,
            events,
            pairs,
            route_limits,
        })
    }

    /// The registry, for `/metrics` and for callers registering more.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The same families (same registry, same series) with the label tables
    /// of a reloaded config: `apps` and `routes` as in [`Metrics::new`].
    /// Series of apps in `removed` that only make sense while the app is
    /// configured (its token expiry, which an alert watches) are deleted;
    /// counters stay until the process ends, as Prometheus expects.
    pub fn relabel(&self, apps: &[String], routes: &[String], removed: &[String]) -> Metrics {
        let pairs = PairTable::new(Arc::clone(self.pairs.store()), apps, routes);
        let route_limits = route_limits(&pairs);
        for a in removed {
            let _ = self.token_expiry.remove_label_values(&[a]);
        }
        for a in apps {
            // Made at 0 when new; an existing app's expiry is kept.
            self.token_expiry.with_label_values(&[a]);
            for result in ["ok", "error"] {
                self.token_refreshes.with_label_values(&[a, result]);
            }
        }
        Metrics {
            registry: self.registry.clone(),
            rate_limited: self.rate_limited.clone(),
            upstream_throttled: self.upstream_throttled.clone(),
            token_refreshes: self.token_refreshes.clone(),
            token_expiry: self.token_expiry.clone(),
            token_replays: self.token_replays.clone(),
            token_invalid_streamed: self.token_invalid_streamed.clone(),
            upstream_errors: self.upstream_errors.clone(),
            retries: self.retries.clone(),
            retries_skipped: self.retries_skipped.clone(),
            would_reject: self.would_reject.clone(),
            in_flight: self.in_flight.clone(),
            config_reloads: self.config_reloads.clone(),
            config_reload_time: self.config_reload_time.clone(),
            client_requests: self.client_requests.clone(),
            forbidden: self.forbidden.clone(),
            share_limited: self.share_limited.clone(),
            open_connections: self.open_connections.clone(),
            connections_accepted: self.connections_accepted.clone(),
            connections_rejected: self.connections_rejected.clone(),
            store_tenants: self.store_tenants.clone(),
            app_ticket_received: self.app_ticket_received.clone(),
            app_ticket_store_errors: self.app_ticket_store_errors.clone(),
            quota_waiting: self.quota_waiting.clone(),
            quota_wait: self.quota_wait.clone(),
            budget: self.budget.clone(),
            backend: self.backend.clone(),
            events: self.events.clone(),
            pairs,
            route_limits,
        }
    }

    /// What the status page samples: every `requests_total` series as
    /// (app, route, code, count) and every `upstream_errors_total` series
    /// as (app, kind, count). Reads the two families only (no full
    /// `gather`), off the request path.
    pub fn outcome_counts(&self) -> OutcomeCounts {
        use prometheus::core::Collector;
        fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
            m.get_label()
                .iter()
                .find(|l| l.name() == name)
                .map_or("", |l| l.value())
        }
        let mut out = OutcomeCounts::default();
        self.pairs.store().for_each(|app, route, pair| {
            pair.outcomes(|_, code, count| {
                out.requests
                    .push((app.to_string(), route.to_string(), code.to_string(), count));
            });
        });
        for mf in self.upstream_errors.collect() {
            for m in mf.get_metric() {
                out.upstream_errors.push((
                    label(m, "app").to_string(),
                    label(m, "kind").to_string(),
                    m.get_counter().get_value() as u64,
                ));
            }
        }
        out
    }

    /// The label of app `app` (`unknown` for `None`).
    pub fn app_name(&self, app: usize) -> &str {
        self.app_label(Some(app))
    }

    /// The label of route `route` (`other` for `None`).
    pub fn route_name(&self, route: usize) -> &str {
        self.route_label(Some(route))
    }

    /// Counts one config reload: `ok` or `invalid` (refused).
    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "invalid" };
        self.config_reloads.with_label_values(&[result]).inc();
        self.config_reload_time
            .with_label_values(&[result])
            .set(unix_now_secs());
    }

    /// The text exposition of every registered family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    fn app_label(&self, app: Option<usize>) -> &str {
        &self.pairs.apps[app.map_or(0, |a| a + 1)]
    }

    fn route_label(&self, route: Option<usize>) -> &str {
        &self.pairs.routes[route.map_or(0, |r| r + 1)]
    }

    fn pair(&self, app: Option<usize>, route: Option<usize>) -> &PairSeries {
        self.pairs
            .pair(app.map_or(0, |a| a + 1), route.map_or(0, |r| r + 1))
    }

    /// Records one answered request.
    pub fn request_done(
        &self,
        app: Option<usize>,
        route: Option<usize>,
        status: u16,
        code: Option<i64>,
        total: Duration,
        upstream: Option<Duration>,
    ) {
        let pair = self.pair(app, route);
        pair.served();
        pair.request_duration.observe(total);
        if let Some(u) = upstream {
            pair.upstream_duration.observe(u);
        }
        if !pair.count(status, code) {
            let label = match code {
                None => Code::None,
                Some(c) if self.own_label(pair, app, route, c) => Code::Own(c),
                Some(_) => Code::Other,
            };
            pair.count_new(status, label);
        }
    }

    /// Whether `code` gets a label of its own on this pair: a known code
    /// always; an unknown one while fewer than [`MAX_UNKNOWN_CODES`] have
    /// one. The first unknown codes are logged, and the moment the rest
    /// start to count as `other`.
    fn own_label(
        &self,
        pair: &PairSeries,
        app: Option<usize>,
        route: Option<usize>,
        code: i64,
    ) -> bool {
        if crate::feishu::codes::KNOWN.iter().any(|(k, _)| *k == code) {
            return true;
        }
        let mut unknown = pair.unknown_codes.lock().unwrap_or_else(|e| e.into_inner());
        let (labelled, folding) = &mut *unknown;
        if labelled.contains(&code) {
            return true;
        }
        if labelled.len() < MAX_UNKNOWN_CODES {
            labelled.push(code);
            tracing::info!(
                app = self.app_label(app),
                route = self.route_label(route),
                code,
                "an answer carried a code outside the known table"
            );
            return true;
        }
        if !*folding {
            *folding = true;
            tracing::warn!(
                app = self.app_label(app),
                route = self.route_label(route),
                code,
                limit = MAX_UNKNOWN_CODES,
                "more distinct unknown codes than the limit: further ones are counted as code=\"other\""
            );
        }
        false
    }

    /// Records a request rejected (or timed out waiting) by the quota.
    pub fn rate_limited(&self, app: Option<usize>, route: Option<usize>, reason: &str) {
        self.rate_limited
            .with_label_values(&[self.app_label(app), self.route_label(route), reason])
            .inc();
    }

    /// The counter of requests `client` authenticated with its key `key`
    /// (a [`crate::auth::key_id`]); the series exists from then on, at 0,
    /// so a rotation can watch the old key's rate fall to nothing.
    pub fn client_key_requests(&self, client: &str, key: &str) -> IntCounter {
        self.client_requests.with_label_values(&[client, key])
    }

    /// Records a request refused because `client`'s allow list does not
    /// include `route`.
    pub fn forbidden(&self, client: &str, route: Option<usize>) {
        self.forbidden
            .with_label_values(&[client, self.route_label(route)])
            .inc();
    }

    /// Records a request of `client` on `route` refused by the client's
    /// quota share; `reason` is the share key's window (`10/1s`).
    pub fn share_limited(&self, client: &str, route: Option<usize>, reason: &str) {
        self.share_limited
            .with_label_values(&[client, self.route_label(route), reason])
            .inc();
    }

    /// The connection counts of the listener `listener` (`main` or
    /// `admin`); the series exist from then on, at 0.
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        ListenerMetrics {
            open: self.open_connections.with_label_values(&[listener]),
            accepted: self.connections_accepted.with_label_values(&[listener]),
            rejected: self.connections_rejected.with_label_values(&[listener]),
        }
    }

    /// Records a throttle answer from Feishu itself, by its code (`none`:
    /// a 429 without one). Codes come from the throttle table, so the label
    /// is bounded.
    pub fn upstream_throttled(&self, app: Option<usize>, route: Option<usize>, code: Option<i64>) {
        let mut buf = itoa::Buffer::new();
        let code = code.map_or("none", |c| buf.format(c));
        self.upstream_throttled
            .with_label_values(&[self.app_label(app), self.route_label(route), code])
            .inc();
    }

    /// Records a request that broke its contract in log-only mode.
    pub fn would_reject(&self, app: Option<usize>, route: Option<usize>) {
        self.would_reject
            .with_label_values(&[self.app_label(app), self.route_label(route)])
            .inc();
    }

    /// Records a transport failure talking to Feishu.
    pub fn upstream_error(&self, app: Option<usize>, route: Option<usize>, kind: &str) {
        self.upstream_error_counter(app, route, kind).inc();
    }

    /// Records a request sent again after a transient failure (`reason`:
    /// connect, reset, edge_502, edge_503, code).
    pub fn retry(&self, app: Option<usize>, route: Option<usize>, reason: &str) {
        self.retries
            .with_label_values(&[self.app_label(app), self.route_label(route), reason])
            .inc();
    }

    /// Records a transient failure answered without a retry (`reason`:
    /// unsafe, attempts, deadline, budget, quota).
    pub fn retry_skipped(&self, app: Option<usize>, route: Option<usize>, reason: &str) {
        self.retries_skipped
            .with_label_values(&[self.app_label(app), self.route_label(route), reason])
            .inc();
    }

    /// The counter of transport failures of `kind`, to count one later
    /// (e.g. a streamed answer that stalls after its head went out).
    pub fn upstream_error_counter(
        &self,
        app: Option<usize>,
        route: Option<usize>,
        kind: &str,
    ) -> IntCounter {
        self.upstream_errors.with_label_values(&[
            self.app_label(app),
            self.route_label(route),
            kind,
        ])
    }

    /// Records a token fetch and, on success, the new expiry (Unix seconds).
    pub fn token_refresh(&self, app: usize, expiry_unix: Option<f64>, ok: bool) {
        let label = self.app_label(Some(app));
        let result = if ok { "ok" } else { "error" };
        self.token_refreshes
            .with_label_values(&[label, result])
            .inc();
        if let Some(t) = expiry_unix {
            self.token_expiry.with_label_values(&[label]).set(t);
        }
    }

    /// Records that the cached token was dropped (expiry gauge to 0).
    pub fn token_dropped(&self, app: usize) {
        self.token_expiry
            .with_label_values(&[self.app_label(Some(app))])
            .set(0.0);
    }

    /// Records a replay after a token-invalid answer with `code`.
    pub fn token_replay(&self, app: usize, code: i64) {
        self.token_replays
            .with_label_values(&[self.app_label(Some(app)), &code.to_string()])
            .inc();
    }

    /// Records a token-invalid answer with `code` to a streamed upload, which
    /// is not replayed.
    pub fn token_invalid_streamed(&self, app: usize, code: i64) {
        self.token_invalid_streamed
            .with_label_values(&[self.app_label(Some(app)), &code.to_string()])
            .inc();
    }

    /// Publishes the windows of a quota-limited (app, route) pair, as
    /// (label like `50/1s`, limit), in `feishu_gateway_quota_limit`: when
    /// its key is made (first use). Its rate-limit and throttle counters
    /// appear with their first event (the alerts catch a new series).
    pub fn quota_limits(
        &self,
        app: usize,
        route: usize,
        windows: impl IntoIterator<Item = (String, u32)>,
    ) {
        let windows: Vec<(String, u32)> = windows.into_iter().collect();
        let Some(shared) = self.route_limits.get(route + 1) else {
            return;
        };
        let shared = shared.get_or_init(|| windows.clone().into());
        self.pair(Some(app), Some(route))
            .set_limits(if **shared == *windows {
                Arc::clone(shared)
            } else {
                windows.into()
            });
    }

    /// The wait-mode handles of an (app, route) pair: made when a request
    /// first waits there.
    pub fn quota_wait(&self, app: usize, route: usize) -> QuotaPairMetrics {
        let a = self.app_label(Some(app));
        let r = self.route_label(Some(route));
        QuotaPairMetrics {
            waiting: self.quota_waiting.with_label_values(&[a, r]),
            wait: self.quota_wait.with_label_values(&[a, r]),
        }
    }

    /// Publishes which quota backend runs (`local` or `redis`) and its fail
    /// mode (`-` for local).
    pub fn quota_backend_info(&self, backend: &str, fail: &str) {
        self.backend.info.with_label_values(&[backend, fail]).set(1);
    }

    /// Registers the shared (Redis) quota backend's families, whose fail
    /// mode is `fail`, and returns their handles; series start at 0 (`up` at
    /// 1). Call once: a gateway on the local backend exports none of them.
    pub fn quota_backend(&self, fail: &str) -> prometheus::Result<QuotaBackendMetrics> {
        let b = &self.backend;
        for c in b.shared_collectors() {
            self.registry.register(c)?;
        }
        self.quota_backend_info("redis", fail);
        b.up.set(1);
        let op = |name: &str| b.duration.with_label_values(&[name]);
        let kind = |name: &str| b.errors.with_label_values(&[name]);
        Ok(QuotaBackendMetrics {
            up: b.up.clone(),
            take: op("take"),
            peek: op("peek"),
            pause: op("pause"),
            give: op("give"),
            probe: op("probe"),
            timeouts: kind("timeout"),
            connection_errors: kind("connection"),
            server_errors: kind("server"),
            fallbacks: b.fallbacks.clone(),
            fallback_seconds: b.fallback_seconds.clone(),
            degraded_requests: b.degraded_requests.with_label_values(&[fail]),
        })
    }

    /// The monthly budget series of `app`, at 0, with its `limit` published
    /// when it has one.
    pub fn budget(&self, app: usize, limit: Option<u64>) -> BudgetMetrics {
        let a = self.app_label(Some(app));
        if let Some(l) = limit {
            self.budget
                .limit
                .with_label_values(&[a])
                .set(i64::try_from(l).unwrap_or(i64::MAX));
        }
        BudgetMetrics {
            used: self.budget.used.with_label_values(&[a]),
            exhausted: self.budget.exhausted.with_label_values(&[a]),
        }
    }

    /// Records how many tenants a store app holds.
    pub fn store_tenants(&self, app: usize, n: usize) {
        self.store_tenants
            .with_label_values(&[self.app_label(Some(app))])
            .set(n as i64);
    }

    /// Records when a store app's current ticket was received (`age` ago).
    pub fn app_ticket_received(&self, app: usize, age: Duration) {
        let at = std::time::SystemTime::now()
            .checked_sub(age)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        self.app_ticket_received
            .with_label_values(&[self.app_label(Some(app))])
            .set(at);
    }

    /// The counter of failed app_ticket store calls of store app `app`,
    /// for `op` (`load` or `save`); the series exists from then on, at 0.
    pub fn app_ticket_store_errors(&self, app: usize, op: &str) -> IntCounter {
        self.app_ticket_store_errors
            .with_label_values(&[self.app_label(Some(app)), op])
    }

    /// Handles on the events' families (`feishu_gateway_events_*`).
    pub fn events(&self) -> EventMetrics {
        EventMetrics::new(self.events.clone())
    }

    /// The in-flight gauge.
    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}
