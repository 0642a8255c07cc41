//! A typed builder for the gateway's config: it renders the TOML text the
//! product reads (so the real reader is exercised by every test) and keeps
//! the environment the text's `*_env` keys name.
//!
//! ```ignore
//! let config = GatewayConfig::new(&sim.base_url())
//!     .route(Route::post(PUT_ROUTE).limits(&[(5, Duration::from_secs(1))]))
//!     .quota(Quota::redis(&redis.url()).fail(QuotaFail::Closed).replicas(1))
//!     .parse();
//! ```

use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use super::{Config, MapEnv, Problems, APP_ID, APP_SECRET, CLIENT_KEY};

/// The gateway's config, built up in typed steps.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    root: Table,
    env: Vec<(String, String)>,
    raw: String,
}

impl GatewayConfig {
    /// Loopback listeners on free ports, `upstream`, fast token retries
    /// (50 ms to 200 ms), no app and no client, an empty environment.
    pub fn bare(upstream: &str) -> GatewayConfig {
        GatewayConfig {
            root: Table::new(),
            env: Vec::new(),
            raw: String::new(),
        }
        .set("listen", "127.0.0.1:0")
        .set("admin_listen", "127.0.0.1:0")
        .set("upstream", upstream)
        .token_retry(Duration::from_millis(50), Duration::from_millis(200))
    }

    /// [`GatewayConfig::bare`] with the test app `ops-bot` (secret from
    /// `APP_SECRET`) and the client `billing` (key from `CLIENT_KEY`) acting
    /// as it, and both variables in the environment.
    pub fn new(upstream: &str) -> GatewayConfig {
        GatewayConfig::bare(upstream)
            .app(App::self_built("ops-bot", APP_ID, "APP_SECRET"))
            .client(Client::new("billing", "CLIENT_KEY", "ops-bot"))
            .env("APP_SECRET", APP_SECRET)
            .env("CLIENT_KEY", CLIENT_KEY)
    }

    // ----- top-level keys -------------------------------------------------

    /// `max_body_bytes`.
    pub fn max_body_bytes(self, n: usize) -> Self {
        self.set("max_body_bytes", int(n))
    }

    /// `listen_backlog` of both listeners.
    pub fn listen_backlog(self, n: usize) -> Self {
        self.set("listen_backlog", int(n))
    }

    /// `max_connections` on `listen`.
    pub fn max_connections(self, n: usize) -> Self {
        self.set("max_connections", int(n))
    }

    /// `admin_max_connections` on `admin_listen`.
    pub fn admin_max_connections(self, n: usize) -> Self {
        self.set("admin_max_connections", int(n))
    }

    /// `workers` (0: the shared runtime serves connections).
    pub fn workers(self, n: usize) -> Self {
        self.set("workers", int(n))
    }

    /// `state_dir`.
    pub fn state_dir(self, dir: &Path) -> Self {
        self.set("state_dir", path(dir))
    }

    /// `upstream_ca_file`: extra roots trusted for the upstream.
    pub fn upstream_ca_file(self, file: &Path) -> Self {
        self.set("upstream_ca_file", path(file))
    }

    /// `tls_cert` and `tls_key`: HTTPS on `listen`.
    pub fn tls(self, cert: &Path, key: &Path) -> Self {
        self.set("tls_cert", path(cert)).set("tls_key", path(key))
    }

    // ----- sections ---------------------------------------------------------

    /// `[token]` `retry_min` and `retry_max`.
    pub fn token_retry(self, min: Duration, max: Duration) -> Self {
        self.set_in("token", "retry_min", duration(min))
            .set_in("token", "retry_max", duration(max))
    }

    /// `[timeouts]` `upstream`: one upstream attempt.
    pub fn upstream_timeout(self, d: Duration) -> Self {
        self.set_in("timeouts", "upstream", duration(d))
    }

    /// `[timeouts]` `upstream_idle`: the longest gap in a streamed answer.
    pub fn upstream_idle(self, d: Duration) -> Self {
        self.set_in("timeouts", "upstream_idle", duration(d))
    }

    /// `[timeouts]` `startup`: the longest `/readyz` waits at start for
    /// the apps' first token calls.
    pub fn startup_timeout(self, d: Duration) -> Self {
        self.set_in("timeouts", "startup", duration(d))
    }

    /// `[timeouts]` `body_read`: reading a client's body.
    pub fn body_read_timeout(self, d: Duration) -> Self {
        self.set_in("timeouts", "body_read", duration(d))
    }

    /// `[events]` `<key>`, a duration (`retry_first`, `drop_after`, …).
    pub fn events_duration(self, key: &str, d: Duration) -> Self {
        self.set_in("events", key, duration(d))
    }

    /// `[events]` `<key>`, a count (`queue_max_events`, …).
    pub fn events_count(self, key: &str, n: usize) -> Self {
        self.set_in("events", key, int(n))
    }

    /// A `[[subscriptions]]` entry.
    pub fn subscription(self, subscription: Subscription) -> Self {
        self.push("subscriptions", subscription.0)
    }

    /// `[retries]` `enabled = false`: no retries by code.
    pub fn without_retries(self) -> Self {
        self.set_in("retries", "enabled", false)
    }

    /// `[retries]` `max_retries`: retries per request.
    pub fn max_retries(self, n: usize) -> Self {
        self.set_in("retries", "max_retries", int(n))
    }

    /// `[retries]` `backoff_base` and `backoff_max`.
    pub fn retry_backoff(self, base: Duration, max: Duration) -> Self {
        self.set_in("retries", "backoff_base", duration(base))
            .set_in("retries", "backoff_max", duration(max))
    }

    /// `[retries]` `budget_min`, `budget_ratio` and `budget_window`.
    pub fn retry_budget(self, min: usize, ratio: f64, window: Duration) -> Self {
        self.set_in("retries", "budget_min", int(min))
            .set_in("retries", "budget_ratio", ratio)
            .set_in("retries", "budget_window", duration(window))
    }

    /// `[log]` `format`.
    pub fn log_format(self, format: LogFormat) -> Self {
        self.set_in("log", "format", format.name())
    }

    /// `[log]` `level`: a tracing filter like `info`.
    pub fn log_level(self, filter: &str) -> Self {
        self.set_in("log", "level", filter)
    }

    /// `[tracing]` on: spans to `endpoint` (an OTLP/HTTP base URL, such as
    /// [`super::otlp::OtlpReceiver::url`]), `sampling_ratio` of new traces.
    pub fn tracing(self, endpoint: &str, sampling_ratio: f64) -> Self {
        self.set_in("tracing", "enabled", true)
            .set_in("tracing", "endpoint", endpoint)
            .set_in("tracing", "sampling_ratio", sampling_ratio)
    }

    /// `[sdk_tokens]` `signing_key_env`.
    pub fn sdk_signing_key_env(self, var: &str) -> Self {
        self.set_in("sdk_tokens", "signing_key_env", var)
    }

    /// `[quota]`.
    pub fn quota(self, quota: Quota) -> Self {
        self.set("quota", quota.0)
    }

    /// One more `[[apps]]` entry.
    pub fn app(self, app: App) -> Self {
        self.push("apps", app.0)
    }

    /// One more `[[clients]]` entry.
    pub fn client(self, client: Client) -> Self {
        self.push("clients", client.0)
    }

    /// One more `[[routes]]` entry.
    pub fn route(self, route: Route) -> Self {
        self.push("routes", route.0)
    }

    /// put_top_notice limited to `limits` instead of its catalog quota.
    pub fn put_limits(self, limits: &[(u32, Duration)]) -> Self {
        self.route(Route::post(super::PUT_ROUTE).limits(limits))
    }

    /// put_top_notice without a gateway quota, for tests about something
    /// else (pair with [`super::sim_without_quota`]).
    pub fn without_put_quota(self) -> Self {
        self.route(Route::post(super::PUT_ROUTE).limits(&[]))
    }

    // ----- environment and output -------------------------------------------

    /// A variable in the environment the config reads its secrets from.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_string(), value.into()));
        self
    }

    /// TOML appended as it is, after everything else (so it starts with a
    /// section header, of a section the builder does not write). Only for
    /// tests of the reader's answer to text the builder cannot or should
    /// not make: invalid values.
    pub fn raw(mut self, text: &str) -> Self {
        self.raw.push_str(text);
        self.raw.push('\n');
        self
    }

    /// The config file's text.
    pub fn text(&self) -> String {
        let mut text = toml::to_string(&self.root).expect("config renders as TOML");
        if !self.raw.is_empty() {
            text.push('\n');
            text.push_str(&self.raw);
        }
        text
    }

    /// The environment's variables, for a process that reads the file.
    pub fn env_vars(&self) -> &[(String, String)] {
        &self.env
    }

    /// The environment as the config reader takes it.
    pub fn map_env(&self) -> MapEnv {
        let mut env = MapEnv::new();
        for (k, v) in &self.env {
            env.set(k.as_str(), v.as_str());
        }
        env
    }

    /// What the gateway's reader makes of the text with the environment.
    pub fn try_parse(&self) -> Result<Config, Problems> {
        Config::parse(&self.text(), &self.map_env())
    }

    /// The parsed config; panics with every problem and the text.
    pub fn parse(&self) -> Config {
        self.try_parse()
            .unwrap_or_else(|p| panic!("test config: {p}\n{}", self.text()))
    }

    fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.root.insert(key.into(), value.into());
        self
    }

    fn set_in(mut self, section: &str, key: &str, value: impl Into<Value>) -> Self {
        self.root
            .entry(section)
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .expect("a section")
            .insert(key.into(), value.into());
        self
    }

    fn push(mut self, name: &str, entry: Table) -> Self {
        self.root
            .entry(name)
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("an array of tables")
            .push(Value::Table(entry));
        self
    }
}

/// An `[[apps]]` entry.
#[derive(Debug, Clone)]
pub struct App(Table);

impl App {
    /// A self-built app whose secret is in the variable `secret_env`.
    pub fn self_built(name: &str, app_id: &str, secret_env: &str) -> App {
        App(table(&[
            ("name", name),
            ("app_id", app_id),
            ("app_secret_env", secret_env),
        ]))
    }

    /// A store app (`type = "store"`) whose secret is in `secret_env`.
    pub fn store(name: &str, app_id: &str, secret_env: &str) -> App {
        App::self_built(name, app_id, secret_env).set("type", "store")
    }

    /// `encrypt_key_env`: the event callback's Encrypt Key.
    pub fn encrypt_key_env(self, var: &str) -> Self {
        self.set("encrypt_key_env", var)
    }

    /// `verification_token_env`: the event callback's Verification Token.
    pub fn verification_token_env(self, var: &str) -> Self {
        self.set("verification_token_env", var)
    }

    /// `max_tenants`.
    pub fn max_tenants(self, n: usize) -> Self {
        self.set("max_tenants", int(n))
    }

    /// `monthly_budget`: counted calls per month.
    pub fn monthly_budget(self, n: u64) -> Self {
        self.set(
            "monthly_budget",
            Value::Integer(i64::try_from(n).expect("fits")),
        )
    }

    /// `budget_group`: apps of one tenant sharing one monthly budget.
    pub fn budget_group(self, name: &str) -> Self {
        self.set("budget_group", name)
    }

    /// `events`: `"webhook"` or `"long_connection"`.
    pub fn events(self, transport: &str) -> Self {
        self.set("events", transport)
    }

    fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }
}

/// A `[[subscriptions]]` entry.
#[derive(Debug, Clone)]
pub struct Subscription(Table);

impl Subscription {
    /// Subscription `name` to `events` of `app`, POSTed to `url`, signed
    /// with the secret in the variable `secret_env`.
    pub fn new(name: &str, app: &str, events: &[&str], url: &str, secret_env: &str) -> Self {
        let mut t = table(&[
            ("name", name),
            ("app", app),
            ("url", url),
            ("secret_env", secret_env),
        ]);
        t.insert("events".into(), strings(events));
        Subscription(t)
    }
}

/// A `[[clients]]` entry.
#[derive(Debug, Clone)]
pub struct Client(Table);

impl Client {
    /// A client whose key is in the variable `key_env`, acting as `app`.
    pub fn new(name: &str, key_env: &str, app: &str) -> Client {
        Client(table(&[("name", name), ("key_env", key_env), ("app", app)]))
    }

    /// `tenant`: the store app's tenant it always acts for.
    pub fn tenant(mut self, tenant: &str) -> Self {
        self.0.insert("tenant".into(), tenant.into());
        self
    }

    /// `key_env` as a list: several keys at once (a rotation).
    pub fn key_envs(mut self, vars: &[&str]) -> Self {
        self.0.insert("key_env".into(), strings(vars));
        self
    }

    /// `allow`: the endpoints it may call (`"METHOD /open-apis/..."`).
    pub fn allow(mut self, entries: &[&str]) -> Self {
        self.0.insert("allow".into(), strings(entries));
        self
    }

    /// `quota_share`: the most it may use of each quota of its app.
    pub fn quota_share(mut self, share: f64) -> Self {
        self.0.insert("quota_share".into(), share.into());
        self
    }
}

/// A TOML list of strings.
fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|&i| Value::from(i)).collect())
}

/// A TOML list of owned strings.
fn string_list(items: &[String]) -> Value {
    Value::Array(items.iter().map(|i| Value::from(i.as_str())).collect())
}

/// A `[[routes]]` entry: a catalog override or addition.
#[derive(Debug, Clone)]
pub struct Route(Table);

impl Route {
    /// The route `method path` (a path template, `:name` for a segment).
    pub fn new(method: http::Method, path: &str) -> Route {
        Route(table(&[("method", method.as_str()), ("path", path)]))
    }

    /// `POST path`.
    pub fn post(path: &str) -> Route {
        Route::new(http::Method::POST, path)
    }

    /// `limits`: at most N requests per window W, for each `(N, W)`; none
    /// lifts the route's gateway quota.
    pub fn limits(self, limits: &[(u32, Duration)]) -> Self {
        let list: Vec<Value> = limits
            .iter()
            .map(|&(n, w)| Value::from(format!("{n}/{}", duration_text(w))))
            .collect();
        self.set("limits", list)
    }

    /// `overflow`: overrides the quota's for this route.
    pub fn overflow(self, mode: QuotaOverflow) -> Self {
        self.set("overflow", mode.name())
    }

    /// `max_wait`: overrides the quota's for this route.
    pub fn max_wait(self, d: Duration) -> Self {
        self.set("max_wait", duration(d))
    }

    /// `validation`.
    pub fn validation(self, mode: Validation) -> Self {
        self.set("validation", mode.name())
    }

    /// `unknown_fields`.
    pub fn unknown_fields(self, mode: UnknownFields) -> Self {
        self.set("unknown_fields", mode.name())
    }

    fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }
}

/// The `[quota]` section.
#[derive(Debug, Clone)]
pub struct Quota(Table);

impl Quota {
    /// Quotas kept in the process (the default backend).
    pub fn local() -> Quota {
        Quota(Table::new())
    }

    /// `backend = "redis"` at `url` (`redis_url`).
    pub fn redis(url: &str) -> Quota {
        Quota::local().set("backend", "redis").set("redis_url", url)
    }

    /// `backend = "redis"` at the URL in the variable `var` (`redis_url_env`).
    pub fn redis_env(var: &str) -> Quota {
        Quota::local()
            .set("backend", "redis")
            .set("redis_url_env", var)
    }

    /// `backend = "redis"` on a Sentinel set: the sentinels' addresses
    /// (`redis_sentinels`, `host:port` each) and the master name they
    /// watch (`redis_sentinel_master`).
    pub fn sentinel(sentinels: &[String], master: &str) -> Quota {
        Quota::local()
            .set("backend", "redis")
            .set("redis_sentinels", string_list(sentinels))
            .set("redis_sentinel_master", master)
    }

    /// `backend = "redis"` on a Redis Cluster found through `seed_nodes`
    /// (`redis_cluster_nodes`, `host:port` each).
    pub fn cluster(seed_nodes: &[String]) -> Quota {
        Quota::local()
            .set("backend", "redis")
            .set("redis_cluster_nodes", string_list(seed_nodes))
    }

    /// `redis_password_env`: the data nodes' password (Sentinel, Cluster)
    /// is in the variable `var`.
    pub fn redis_password_env(self, var: &str) -> Self {
        self.set("redis_password_env", var)
    }

    /// `redis_sentinel_password_env`: the sentinels' own password is in
    /// the variable `var`.
    pub fn redis_sentinel_password_env(self, var: &str) -> Self {
        self.set("redis_sentinel_password_env", var)
    }

    /// `redis_username`: the ACL user of the data nodes (Sentinel, Cluster).
    pub fn redis_username(self, name: &str) -> Self {
        self.set("redis_username", name)
    }

    /// `redis_db`: the database on a Sentinel set's primary.
    pub fn redis_db(self, db: u32) -> Self {
        self.set("redis_db", i64::from(db))
    }

    /// `overflow`: what a request over its quota gets.
    pub fn overflow(self, mode: QuotaOverflow) -> Self {
        self.set("overflow", mode.name())
    }

    /// `max_wait`.
    pub fn max_wait(self, d: Duration) -> Self {
        self.set("max_wait", duration(d))
    }

    /// `margin`: added to every window when planning.
    pub fn margin(self, d: Duration) -> Self {
        self.set("margin", duration(d))
    }

    /// `min_rate_fraction`.
    pub fn min_rate_fraction(self, f: f64) -> Self {
        self.set("min_rate_fraction", f)
    }

    /// `fail`: what to do while Redis is away.
    pub fn fail(self, mode: QuotaFail) -> Self {
        self.set("fail", mode.name())
    }

    /// `replicas`: the most replicas that run at once.
    pub fn replicas(self, n: u32) -> Self {
        self.set("replicas", i64::from(n))
    }

    /// `key_prefix` of every Redis key.
    pub fn key_prefix(self, prefix: &str) -> Self {
        self.set("key_prefix", prefix)
    }

    /// `redis_timeout`: the longest wait for one Redis call.
    pub fn redis_timeout(self, d: Duration) -> Self {
        self.set("redis_timeout", duration(d))
    }

    /// `redis_ca_file`: roots for `rediss://` to a private CA.
    pub fn redis_ca_file(self, file: &Path) -> Self {
        self.set("redis_ca_file", path(file))
    }

    fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }
}

/// Enums of the config's string choices, each variant with its text.
macro_rules! choices {
    ($($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? })+) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }
    )+};
}

choices! {
    /// `[quota]` and `[[routes]]` `overflow`.
    QuotaOverflow { Reject => "reject", Wait => "wait" }
    /// `[quota]` `fail`.
    QuotaFail { Local => "local", Closed => "closed", Open => "open" }
    /// `[[routes]]` `validation`.
    Validation { Enforce => "enforce", LogOnly => "log-only" }
    /// `[[routes]]` `unknown_fields`.
    UnknownFields { Allow => "allow", Reject => "reject" }
    /// `[log]` `format`.
    LogFormat { Plain => "plain", Json => "json" }
}

/// A table of strings.
fn table(pairs: &[(&str, &str)]) -> Table {
    pairs
        .iter()
        .map(|&(k, v)| (k.to_string(), Value::from(v)))
        .collect()
}

fn int(n: usize) -> Value {
    Value::Integer(i64::try_from(n).expect("fits a TOML integer"))
}

fn path(p: &Path) -> Value {
    Value::from(p.to_str().expect("a UTF-8 path"))
}

fn duration(d: Duration) -> Value {
    Value::from(duration_text(d))
}

/// `1s`, `20s`, `300ms`: whole seconds or milliseconds, as the reader and
/// quota windows read them.
fn duration_text(d: Duration) -> String {
    assert!(
        d.subsec_nanos().is_multiple_of(1_000_000),
        "{d:?}: whole milliseconds only"
    );
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
