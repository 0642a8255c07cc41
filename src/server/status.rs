//! The status page on the admin listener: what this gateway holds right
//! now, in one look — HAProxy's stats page, Envoy's admin, for Feishu.
//!
//! `GET /status` (and `/`): one self-contained HTML page (no external
//! asset, no script: a `<meta refresh>` every 5 s, `?refresh=0` turns it
//! off); `GET /status.json`: the same figures for scripts. Per app: token
//! state and time to expiry, last token error, store-app ticket age and
//! tenants, monthly budget; per (app, endpoint) quota key in use: its
//! limits, requests in the last minute, what it admits now, waiting
//! requests and a pause after Feishu's throttle; the top Feishu codes of
//! the last 5 minutes by app; upstream errors by kind; the quota backend;
//! each long connection to Feishu (up or down, connects, why it stopped);
//! build and config reload status.
//!
//! Cheap and bounded: it reads state that exists anyway (token slots,
//! quota keys made so far, budgets, the backend's health) and two counter
//! families, sampled every [`SAMPLE_EVERY`] by [`StatusPage::spawn_sampler`]
//! ("last minute" is a difference of counters, not a log kept on the
//! request path). It takes no lock a request waits on: quota key slots
//! are `OnceLock`s, tenant and budget counts are read off atomics and
//! gauges, a token slot is read under its shared read lock (only a refresh
//! writes it), a local key's snapshot is its atomics; a Redis-backed key
//! costs one snapshot round trip, for the [`TOP_KEYS`] shown only. At most
//! [`TOP_KEYS`] keys and [`TOP_CODES`] codes are listed, with a count of
//! the rest. Nothing secret is on it: no client key, token, secret or
//! ticket, only names, codes, figures and Feishu's error messages
//! (escaped).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::time::Instant;

use crate::events::long_connection::AppStatus as LongConnectionStatus;
use crate::observe::metrics::{Metrics, OutcomeCounts};
use crate::proxy::Gateway;
use crate::quota::BackendStatus;

/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The window of "requests in the last minute" per key.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// The window of the top codes and upstream errors.
pub const CODES_WINDOW: Duration = Duration::from_secs(300);
/// Quota keys listed at most (the busiest; paused and waiting ones first).
pub const TOP_KEYS: usize = 50;
/// (app, code) rows listed at most.
pub const TOP_CODES: usize = 20;
/// Samples kept: [`CODES_WINDOW`] / [`SAMPLE_EVERY`] + 1.
const KEEP: usize = 31;

/// One sample of the counters.
#[derive(Clone)]
struct Sample {
    at: Instant,
    counts: Arc<OutcomeCounts>,
}

/// Where the page reads the long connections' state: the runtime's, which
/// outlives a reload (`Shared::long_connections_status`).
pub type LongConnectionSource = Arc<dyn Fn() -> Vec<LongConnectionStatus> + Send + Sync>;

/// The page's own state: the counter samples and the config's reload
/// history. One per process, shared by the admin listener and the
/// reloader.
pub struct StatusPage {
    started: Instant,
    started_unix: u64,
    samples: Mutex<VecDeque<Sample>>,
    config: Mutex<ConfigState>,
    /// None: no long connection is shown.
    long_connections: Option<LongConnectionSource>,
}

/// The config's reload history, as the page shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigState {
    /// Reloads that took effect.
    pub reloads_ok: u64,
    /// Reloads refused (invalid config: the previous one kept serving).
    pub reloads_invalid: u64,
    /// The last reload, if there was one.
    pub last_reload: Option<LastReload>,
}

/// One reload's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct LastReload {
    /// When (Unix seconds).
    pub at_unix: u64,
    /// Whether it took effect.
    pub ok: bool,
    /// Its problems, as `check-config` prints them (refused reloads).
    pub problems: Vec<String>,
    /// Settings it changed that wait for a restart.
    pub restart_needed: Vec<String>,
}

/// Everything the page shows; `/status.json` is this, serialized.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The gateway's version.
    pub version: &'static str,
    /// Seconds since the process started.
    pub uptime_secs: u64,
    /// When it started (Unix seconds).
    pub started_unix: u64,
    /// `ready`, `starting` or `draining` (as `/readyz`).
    pub state: &'static str,
    /// Config reloads.
    pub config: ConfigState,
    /// Every configured app.
    pub apps: Vec<AppStatus>,
    /// The quota keys in use, busiest first (paused and waiting ones
    /// before the others), at most [`TOP_KEYS`].
    pub keys: Vec<KeyStatus>,
    /// Keys in use not listed.
    pub keys_more: usize,
    /// The share keys of clients with a `quota_share` (self-built apps),
    /// at most [`TOP_KEYS`].
    pub shares: Vec<ShareStatus>,
    /// Feishu codes answered in the last 5 minutes, by app, most frequent
    /// first, at most [`TOP_CODES`].
    pub codes: Vec<CodeCount>,
    /// (app, code) rows not listed.
    pub codes_more: usize,
    /// Upstream failures in the last 5 minutes, by app and kind.
    pub upstream_errors: Vec<ErrorCount>,
    /// The quota backend.
    pub quota_backend: BackendStatus,
    /// Apps with `events = "long_connection"`: connected now, connections
    /// made, why the client stopped for good (if it did).
    pub long_connections: Vec<LongConnectionStatus>,
}

/// One app's row.
#[derive(Debug, Serialize)]
pub struct AppStatus {
    /// Its name.
    pub name: String,
    /// `self_built` or `store`.
    pub kind: &'static str,
    /// A usable token is held.
    pub has_token: bool,
    /// Seconds until it expires.
    pub expires_in_secs: Option<u64>,
    /// Feishu's code of the last failed token call.
    pub last_error_code: Option<i64>,
    /// Feishu's message of the last failed token call.
    pub last_error: Option<String>,
    /// Token calls failed in a row.
    pub consecutive_failures: u32,
    /// Store apps: age of the app_ticket held.
    pub ticket_age_secs: Option<u64>,
    /// Store apps: tenants held.
    pub tenants: Option<usize>,
    /// Its monthly budget group, if any.
    pub budget: Option<BudgetStatus>,
}

/// An app's monthly budget.
#[derive(Debug, Serialize)]
pub struct BudgetStatus {
    /// The budget group.
    pub group: String,
    /// Calls counted this month.
    pub used: u64,
    /// `monthly_budget`, if set.
    pub limit: Option<u64>,
    /// Counted calls are answered by the gateway.
    pub spent: bool,
}

/// One quota key in use.
#[derive(Debug, Serialize)]
pub struct KeyStatus {
    /// App name.
    pub app: String,
    /// `METHOD template`.
    pub route: String,
    /// Its windows (`50/1s`); empty: no gateway quota (only Feishu's pause).
    pub limits: Vec<String>,
    /// Requests answered on it in the last minute.
    pub requests_last_minute: u64,
    /// Requests it would admit right now.
    pub remaining: Option<u32>,
    /// Requests waiting for it now.
    pub waiting: u32,
    /// Seconds left on a pause after Feishu throttled it.
    pub paused_for_secs: Option<f64>,
}

/// One client's share key on one endpoint.
#[derive(Debug, Serialize)]
pub struct ShareStatus {
    /// The client.
    pub client: String,
    /// Its app.
    pub app: String,
    /// Its `quota_share`.
    pub share: f64,
    /// `METHOD template`.
    pub route: String,
    /// Requests the share would admit right now.
    pub remaining: Option<u32>,
    /// Requests of the client waiting for its share now.
    pub waiting: u32,
}

/// One (app, code) row.
#[derive(Debug, Serialize)]
pub struct CodeCount {
    /// App name.
    pub app: String,
    /// Feishu's code (`none`: no JSON code; `other`: past the bound).
    pub code: String,
    /// What it means, when the gateway knows the code.
    pub description: Option<&'static str>,
    /// Answers in the last 5 minutes.
    pub count: u64,
}

/// One (app, kind) row of upstream failures.
#[derive(Debug, Serialize)]
pub struct ErrorCount {
    /// App name.
    pub app: String,
    /// connect, timeout, reset, protocol, idle_timeout.
    pub kind: String,
    /// Failures in the last 5 minutes.
    pub count: u64,
}

impl Default for StatusPage {
    fn default() -> Self {
        StatusPage::new()
    }
}

impl StatusPage {
    /// A page with no sample yet (counts are since this moment until the
    /// first one).
    pub fn new() -> StatusPage {
        StatusPage {
            started: Instant::now(),
            started_unix: unix_now(),
            samples: Mutex::new(VecDeque::with_capacity(KEEP)),
            config: Mutex::new(ConfigState::default()),
            long_connections: None,
        }
    }

    /// The page, showing the long connections `source` reads.
    pub fn with_long_connections(mut self, source: LongConnectionSource) -> StatusPage {
        self.long_connections = Some(source);
        self
    }

    /// Records a reload's outcome.
    pub fn record_reload(&self, ok: bool, problems: Vec<String>, restart_needed: Vec<String>) {
        let mut c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            c.reloads_ok += 1;
        } else {
            c.reloads_invalid += 1;
        }
        c.last_reload = Some(LastReload {
            at_unix: unix_now(),
            ok,
            problems,
            restart_needed,
        });
    }

    /// Samples the counters now.
    pub fn sample(&self, metrics: &Metrics) {
        let sample = Sample {
            at: Instant::now(),
            counts: Arc::new(metrics.outcome_counts()),
        };
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Samples every [`SAMPLE_EVERY`] the metrics of the current
    /// generation (`live`), until aborted.
    pub fn spawn_sampler(
        self: &Arc<Self>,
        live: Arc<arc_swap::ArcSwap<Gateway>>,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                this.sample(live.load().metrics());
            }
        })
    }

    /// The oldest sample within `window` of now; `None` before the first
    /// (then counts are since start).
    fn baseline(&self, window: Duration) -> Option<Arc<OutcomeCounts>> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let since = Instant::now().checked_sub(window);
        samples
            .iter()
            .find(|s| since.is_none_or(|t| s.at >= t))
            .map(|s| Arc::clone(&s.counts))
    }

    /// Everything the page shows, read now from `gateway`.
    pub async fn collect(&self, gateway: &Gateway, state: &'static str) -> Status {
        let metrics = gateway.metrics();
        let now = metrics.outcome_counts();
        let minute = self.baseline(RATE_WINDOW);
        let five = self.baseline(CODES_WINDOW);
        let (keys, keys_more) = keys(gateway, &now, minute.as_deref()).await;
        let (codes, codes_more) = codes(&now, five.as_deref());
        let shares = shares(gateway).await;
        Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.elapsed().as_secs(),
            started_unix: self.started_unix,
            state,
            config: self
                .config
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            apps: apps(gateway),
            keys,
            keys_more,
            shares,
            codes,
            codes_more,
            upstream_errors: upstream_errors(&now, five.as_deref()),
            quota_backend: gateway.quota().status(),
            long_connections: self
                .long_connections
                .as_ref()
                .map_or_else(Vec::new, |f| f()),
        }
    }
}

fn apps(gateway: &Gateway) -> Vec<AppStatus> {
    let store: HashMap<String, _> = gateway
        .store()
        .statuses()
        .into_iter()
        .map(|s| (s.app.clone(), s))
        .collect();
    gateway
        .tokens()
        .statuses()
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let s = store.get(&t.app);
            AppStatus {
                kind: if s.is_some() { "store" } else { "self_built" },
                ticket_age_secs: s.and_then(|s| s.ticket_age_secs),
                tenants: s.map(|s| s.tenants),
                budget: gateway
                    .budget()
                    .status(i)
                    .map(|(group, used, limit, spent)| BudgetStatus {
                        group,
                        used,
                        limit,
                        spent,
                    }),
                name: t.app,
                has_token: t.has_token,
                expires_in_secs: t.expires_in_secs,
                last_error_code: t.last_error_code,
                last_error: t.last_error,
                consecutive_failures: t.consecutive_failures,
            }
        })
        .collect()
}

/// Every `requests_total` series' growth between `base` and `now`, as
/// (app, route, code, answers); series without growth are skipped.
fn deltas<'a>(
    now: &'a OutcomeCounts,
    base: Option<&'a OutcomeCounts>,
) -> impl Iterator<Item = (&'a str, &'a str, &'a str, u64)> {
    let before: HashMap<(&str, &str, &str), u64> = base
        .map_or(&[][..], |b| &b.requests[..])
        .iter()
        .map(|(a, r, c, n)| ((a.as_str(), r.as_str(), c.as_str()), *n))
        .collect();
    now.requests.iter().filter_map(move |(a, r, c, n)| {
        let d = n.saturating_sub(
            before
                .get(&(a.as_str(), r.as_str(), c.as_str()))
                .copied()
                .unwrap_or(0),
        );
        (d > 0).then_some((a.as_str(), r.as_str(), c.as_str(), d))
    })
}

/// Answers per (app, route) between `base` and `now`.
fn per_route(now: &OutcomeCounts, base: Option<&OutcomeCounts>) -> HashMap<(String, String), u64> {
    let mut out: HashMap<(String, String), u64> = HashMap::new();
    for (a, r, _, d) in deltas(now, base) {
        *out.entry((a.to_string(), r.to_string())).or_default() += d;
    }
    out
}

async fn keys(
    gateway: &Gateway,
    now: &OutcomeCounts,
    minute: Option<&OutcomeCounts>,
) -> (Vec<KeyStatus>, usize) {
    let recent = per_route(now, minute);
    let metrics = gateway.metrics();
    let mut used: Vec<_> = gateway
        .quota_keys
        .in_use()
        .map(|(app, route, pair)| {
            let app_name = metrics.app_name(app).to_string();
            let template = metrics.route_name(route).to_string();
            let n = recent
                .get(&(app_name.clone(), template.clone()))
                .copied()
                .unwrap_or(0);
            // In process, the pause of a limited key is in its snapshot;
            // this one is the pause of a route without a gateway quota.
            let local_pause = pair.pause.left();
            (
                local_pause.is_some(),
                n,
                app,
                route,
                app_name,
                template,
                pair,
            )
        })
        .collect();
    used.sort_by_key(|k| std::cmp::Reverse((k.0, k.1)));
    let more = used.len().saturating_sub(TOP_KEYS);
    let mut out = Vec::with_capacity(used.len().min(TOP_KEYS));
    for (_, n, _, route, app, template, pair) in used.into_iter().take(TOP_KEYS) {
        let entry = gateway.catalog.route(route);
        let snapshot = match &pair.key {
            Some(k) => k.snapshot().await,
            None => None,
        };
        let paused = snapshot
            .as_ref()
            .map(|s| s.paused_for)
            .filter(|d| !d.is_zero())
            .or_else(|| pair.pause.left());
        out.push(KeyStatus {
            app,
            route: format!("{} {}", entry.method, template),
            limits: gateway
                .quota_keys
                .limits(route)
                .into_iter()
                .map(|(w, _)| w)
                .collect(),
            requests_last_minute: n,
            remaining: snapshot.as_ref().map(|s| s.remaining),
            waiting: snapshot.as_ref().map_or(0, |s| s.waiters),
            paused_for_secs: paused.map(|d| (d.as_secs_f64() * 10.0).ceil() / 10.0),
        });
    }
    // Paused and waiting keys first, then the busiest.
    out.sort_by(|a, b| {
        (
            b.paused_for_secs.is_some(),
            b.waiting,
            b.requests_last_minute,
        )
            .cmp(&(
                a.paused_for_secs.is_some(),
                a.waiting,
                a.requests_last_minute,
            ))
    });
    (out, more)
}

async fn shares(gateway: &Gateway) -> Vec<ShareStatus> {
    let metrics = gateway.metrics();
    let mut used = gateway.quota_keys.shares_in_use();
    used.sort_by(|a, b| (&a.0, a.3).cmp(&(&b.0, b.3)));
    let mut out = Vec::new();
    for (client, app, share, route, key) in used.into_iter().take(TOP_KEYS) {
        let snapshot = key.snapshot().await;
        let entry = gateway.catalog.route(route);
        out.push(ShareStatus {
            client,
            app: metrics.app_name(app).to_string(),
            share: share.fraction(),
            route: format!("{} {}", entry.method, entry.template),
            remaining: snapshot.as_ref().map(|s| s.remaining),
            waiting: snapshot.as_ref().map_or(0, |s| s.waiters),
        });
    }
    out
}

fn codes(now: &OutcomeCounts, base: Option<&OutcomeCounts>) -> (Vec<CodeCount>, usize) {
    let mut by: HashMap<(String, String), u64> = HashMap::new();
    for (a, _, c, d) in deltas(now, base) {
        *by.entry((a.to_string(), c.to_string())).or_default() += d;
    }
    let mut rows: Vec<CodeCount> = by
        .into_iter()
        .map(|((app, code), count)| CodeCount {
            description: code.parse::<i64>().ok().and_then(|c| {
                crate::feishu::codes::KNOWN
                    .iter()
                    .find(|(k, _)| *k == c)
                    .map(|(_, d)| *d)
            }),
            app,
            code,
            count,
        })
        .collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| (&a.app, &a.code).cmp(&(&b.app, &b.code)))
    });
    let more = rows.len().saturating_sub(TOP_CODES);
    rows.truncate(TOP_CODES);
    (rows, more)
}

fn upstream_errors(now: &OutcomeCounts, base: Option<&OutcomeCounts>) -> Vec<ErrorCount> {
    let before: HashMap<(&str, &str), u64> = base
        .map_or(&[][..], |b| &b.upstream_errors[..])
        .iter()
        .map(|(a, k, n)| ((a.as_str(), k.as_str()), *n))
        .collect();
    let mut by: HashMap<(String, String), u64> = HashMap::new();
    for (a, k, n) in &now.upstream_errors {
        let d = n.saturating_sub(before.get(&(a.as_str(), k.as_str())).copied().unwrap_or(0));
        if d > 0 {
            *by.entry((a.clone(), k.clone())).or_default() += d;
        }
    }
    let mut rows: Vec<ErrorCount> = by
        .into_iter()
        .map(|((app, kind), count)| ErrorCount { app, kind, count })
        .collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| (&a.app, &a.kind).cmp(&(&b.app, &b.kind)))
    });
    rows
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Text for HTML: `&`, `<`, `>`, `"` and `'` escaped.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn secs(s: u64) -> String {
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{:.1} h", s as f64 / 3600.0),
    }
}

/// The page. `refresh`: seconds between reloads of the page (0: none).
pub fn render_html(s: &Status, refresh: u32) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>feishu-gateway status</title>"
    );
    if refresh > 0 {
        let _ = write!(h, "<meta http-equiv=\"refresh\" content=\"{refresh}\">");
    }
    h.push_str(STYLE);
    let _ = write!(
        h,
        "</head><body><h1>feishu-gateway <small>{}</small></h1><p class=\"meta\">state <b class=\"state-{}\" id=\"state\">{}</b> · up {} · ",
        esc(s.version),
        s.state,
        s.state,
        secs(s.uptime_secs)
    );
    let c = &s.config;
    match &c.last_reload {
        None => h.push_str("config as started (no reload)"),
        Some(r) => {
            let _ = write!(
                h,
                "config: last reload <b class=\"{}\" id=\"reload\">{}</b> {} ago ({} ok, {} refused)",
                if r.ok { "ok" } else { "bad" },
                if r.ok { "ok" } else { "REFUSED" },
                secs(unix_now().saturating_sub(r.at_unix)),
                c.reloads_ok,
                c.reloads_invalid
            );
        }
    }
    h.push_str("</p>");
    if let Some(r) = c
        .last_reload
        .as_ref()
        .filter(|r| !r.ok || !r.restart_needed.is_empty())
    {
        h.push_str("<ul class=\"problems\">");
        for p in &r.problems {
            let _ = write!(h, "<li>{}</li>", esc(p));
        }
        for p in &r.restart_needed {
            let _ = write!(h, "<li>changed, needs a restart: {}</li>", esc(p));
        }
        h.push_str("</ul>");
    }

    h.push_str("<h2>Apps</h2><table id=\"apps\"><tr><th>app</th><th>kind</th><th>token</th><th>expires in</th><th>last token error</th><th>ticket age</th><th>tenants</th><th>monthly budget</th></tr>");
    for a in &s.apps {
        let token = if a.has_token {
            "<td class=\"ok\">held</td>".to_string()
        } else {
            "<td class=\"bad\">NONE</td>".to_string()
        };
        let err = match (&a.last_error_code, &a.last_error) {
            (Some(code), msg) => format!(
                "{} {} ({} in a row)",
                code,
                esc(msg.as_deref().unwrap_or("")),
                a.consecutive_failures
            ),
            _ => String::new(),
        };
        let budget = a.budget.as_ref().map_or(String::new(), |b| {
            format!(
                "<span class=\"{}\">{}{} ({})</span>",
                if b.spent { "bad" } else { "" },
                b.used,
                b.limit.map_or(String::new(), |l| format!(" / {l}")),
                esc(&b.group)
            )
        });
        let _ = write!(
            h,
            "<tr class=\"app\" data-app=\"{}\"><td>{}</td><td>{}</td>{}<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&a.name),
            esc(&a.name),
            a.kind,
            token,
            a.expires_in_secs.map_or(String::new(), secs),
            err,
            a.ticket_age_secs.map_or(String::new(), secs),
            a.tenants.map_or(String::new(), |n| n.to_string()),
            budget
        );
    }
    h.push_str("</table>");

    let _ = write!(
        h,
        "<h2>Quota keys in use</h2><table id=\"keys\"><tr><th>app</th><th>endpoint</th><th>limits</th><th>requests, last min</th><th>admits now</th><th>waiting</th><th>paused by Feishu</th></tr>"
    );
    for k in &s.keys {
        let paused = k.paused_for_secs.is_some();
        let _ = write!(
            h,
            "<tr class=\"key{}\" data-app=\"{}\" data-route=\"{}\"><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if paused { " paused" } else { "" },
            esc(&k.app),
            esc(&k.route),
            esc(&k.app),
            esc(&k.route),
            if k.limits.is_empty() {
                "Feishu's only".to_string()
            } else {
                esc(&k.limits.join(" and "))
            },
            k.requests_last_minute,
            k.remaining.map_or(String::new(), |r| r.to_string()),
            k.waiting,
            k.paused_for_secs
                .map_or(String::new(), |p| format!("<b class=\"bad\">{p:.1} s left</b>"))
        );
    }
    h.push_str("</table>");
    more(&mut h, s.keys_more, "keys in use");
    if !s.shares.is_empty() {
        h.push_str("<h2>Client shares in use</h2><table id=\"shares\"><tr><th>client</th><th>app</th><th>quota_share</th><th>endpoint</th><th>admits now</th><th>waiting</th></tr>");
        for c in &s.shares {
            let _ = write!(
                h,
                "<tr class=\"share\" data-client=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(&c.client),
                esc(&c.client),
                esc(&c.app),
                c.share,
                esc(&c.route),
                c.remaining.map_or(String::new(), |r| r.to_string()),
                c.waiting
            );
        }
        h.push_str("</table>");
    }

    h.push_str("<h2>Feishu codes, last 5 min</h2><table id=\"codes\"><tr><th>app</th><th>code</th><th>meaning</th><th>answers</th></tr>");
    for c in &s.codes {
        let _ = write!(
            h,
            "<tr class=\"code{}\" data-code=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if c.code == "0" { "" } else { " error" },
            esc(&c.code),
            esc(&c.app),
            esc(&c.code),
            esc(c.description.unwrap_or("")),
            c.count
        );
    }
    h.push_str("</table>");
    more(&mut h, s.codes_more, "(app, code) pairs");

    h.push_str("<h2>Upstream errors, last 5 min</h2><table id=\"upstream\"><tr><th>app</th><th>kind</th><th>failures</th></tr>");
    for e in &s.upstream_errors {
        let _ = write!(
            h,
            "<tr class=\"error\"><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&e.app),
            esc(&e.kind),
            e.count
        );
    }
    if s.upstream_errors.is_empty() {
        h.push_str("<tr><td colspan=\"3\">none</td></tr>");
    }
    h.push_str("</table>");

    if !s.long_connections.is_empty() {
        h.push_str("<h2>Long connections to Feishu</h2><table id=\"long-connections\"><tr><th>app</th><th>state</th><th>connects</th><th>stopped because</th></tr>");
        for c in &s.long_connections {
            let state = match (c.up, &c.stopped) {
                (true, _) => "<td class=\"ok\">up</td>",
                (false, Some(_)) => "<td class=\"bad\">STOPPED</td>",
                (false, None) => "<td class=\"bad\">down</td>",
            };
            let _ = write!(
                h,
                "<tr class=\"long-connection\" data-app=\"{}\" data-up=\"{}\"><td>{}</td>{}<td>{}</td><td>{}</td></tr>",
                esc(&c.app),
                c.up,
                esc(&c.app),
                state,
                c.connects,
                c.stopped.as_deref().map_or(String::new(), esc)
            );
        }
        h.push_str("</table>");
    }

    let b = &s.quota_backend;
    let _ = write!(
        h,
        "<h2>Quota backend</h2><p id=\"backend\">{} · state <b class=\"{}\">{}</b>{}{}{}</p>",
        b.backend,
        if matches!(b.state, "shared" | "local") {
            "ok"
        } else {
            "bad"
        },
        b.state,
        b.fail.map_or(String::new(), |f| format!(" · fail = {f}")),
        b.target
            .as_deref()
            .map_or(String::new(), |t| format!(" · {}", esc(t))),
        b.last_error
            .as_deref()
            .map_or(String::new(), |e| format!(" · last error: {}", esc(e)))
    );
    let _ = write!(
        h,
        "<p class=\"meta\">{} · JSON: <a href=\"/status.json\">/status.json</a></p></body></html>",
        if refresh > 0 {
            format!("refreshes every {refresh} s (<a href=\"?refresh=0\">stop</a>)")
        } else {
            "<a href=\"?\">refresh every 5 s</a>".to_string()
        }
    );
    h
}

/// "and N more …" under a table cut at its bound.
fn more(h: &mut String, n: usize, what: &str) {
    if n > 0 {
        let _ = write!(h, "<p class=\"more\">and {n} more {what}</p>");
    }
}

const STYLE: &str = "<style>\
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1 small{font-weight:normal;color:#777}\
h2{font-size:1.1em;margin-top:1.5em}\
table{border-collapse:collapse}\
th,td{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
th{background:#f3f3f3}\
tr.paused td{background:#fff1e6}\
tr.code.error td{background:#fdf3f3}\
.ok{color:#17803d}.bad{color:#b42318}\
.meta,.more{color:#555}\
code{font-size:.95em}\
</style>";

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with(app: AppStatus) -> Status {
        Status {
            version: "0.0.0",
            uptime_secs: 1,
            started_unix: 0,
            state: "ready",
            config: ConfigState {
                reloads_ok: 0,
                reloads_invalid: 1,
                last_reload: Some(LastReload {
                    at_unix: 0,
                    ok: false,
                    problems: vec!["clients[0].app: no app \"<b>\"".into()],
                    restart_needed: Vec::new(),
                }),
            },
            apps: vec![app],
            keys: Vec::new(),
            keys_more: 3,
            shares: Vec::new(),
            codes: Vec::new(),
            codes_more: 0,
            upstream_errors: Vec::new(),
            quota_backend: BackendStatus::local(),
            long_connections: Vec::new(),
        }
    }

    #[test]
    fn what_an_upstream_or_a_config_says_is_escaped_and_bounds_are_said() {
        let html = render_html(
            &status_with(AppStatus {
                name: "ops\"bot".into(),
                kind: "self_built",
                has_token: false,
                expires_in_secs: None,
                last_error_code: Some(10014),
                last_error: Some("<script>alert(1)</script>".into()),
                consecutive_failures: 2,
                ticket_age_secs: None,
                tenants: None,
                budget: None,
            }),
            0,
        );
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("data-app=\"ops&quot;bot\""));
        assert!(html.contains("no app &quot;&lt;b&gt;&quot;"));
        assert!(html.contains("id=\"reload\">REFUSED<"));
        assert!(html.contains("and 3 more keys in use"));
        assert!(!html.contains("http-equiv=\"refresh\""), "refresh=0");
    }

    #[test]
    fn long_connections_are_shown_up_down_or_stopped_and_only_when_there_are_any() {
        let app = || AppStatus {
            name: "ws-bot".into(),
            kind: "self_built",
            has_token: true,
            expires_in_secs: Some(7000),
            last_error_code: None,
            last_error: None,
            consecutive_failures: 0,
            ticket_age_secs: None,
            tenants: None,
            budget: None,
        };
        assert!(!render_html(&status_with(app()), 0).contains("long-connections"));
        let mut status = status_with(app());
        status.long_connections = vec![
            LongConnectionStatus {
                app: "ws-bot".into(),
                up: true,
                connects: 3,
                stopped: None,
            },
            LongConnectionStatus {
                app: "<b>".into(),
                up: false,
                connects: 0,
                stopped: Some("endpoint_refused".into()),
            },
        ];
        let html = render_html(&status, 0);
        assert!(html.contains("data-app=\"ws-bot\" data-up=\"true\"><td>ws-bot</td><td class=\"ok\">up</td><td>3</td><td></td>"), "{html}");
        assert!(html.contains("data-up=\"false\"><td>&lt;b&gt;</td><td class=\"bad\">STOPPED</td><td>0</td><td>endpoint_refused</td>"), "{html}");
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json["long_connections"][0],
            serde_json::json!({"app": "ws-bot", "up": true, "connects": 3, "stopped": null})
        );
    }
}
