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

use std::net::SocketAddr;
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
        let mut c = GatewayConfig {
            root: Table::new(),
            env: Vec::new(),
            raw: String::new(),
        };
        c.set("listen", "127.0.0.1:0");
        c.set("admin_listen", "127.0.0.1:0");
        c.set("upstream", upstream);
        c.token_retry(Duration::from_millis(50), Duration::from_millis(200))
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

    /// `listen`.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.set("listen", addr.to_string());
        self
    }

    /// `max_body_bytes`.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.set("max_body_bytes", int(n));
        self
    }

    /// `workers` (0: the shared runtime serves connections).
    pub fn workers(mut self, n: usize) -> Self {
        self.set("workers", int(n));
        self
    }

    /// `state_dir`.
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.set("state_dir", path(dir));
        self
    }

    /// `upstream_ca_file`: extra roots trusted for the upstream.
    pub fn upstream_ca_file(mut self, file: &Path) -> Self {
        self.set("upstream_ca_file", path(file));
        self
    }

    /// `tls_cert` and `tls_key`: HTTPS on `listen`.
    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        self.set("tls_cert", path(cert));
        self.set("tls_key", path(key));
        self
    }

    // ----- sections ---------------------------------------------------------

    /// `[token]` `retry_min` and `retry_max`.
    pub fn token_retry(mut self, min: Duration, max: Duration) -> Self {
        let t = self.section("token");
        t.insert("retry_min".into(), duration(min));
        t.insert("retry_max".into(), duration(max));
        self
    }

    /// `[timeouts]` `upstream`: one upstream attempt.
    pub fn upstream_timeout(mut self, d: Duration) -> Self {
        self.section("timeouts")
            .insert("upstream".into(), duration(d));
        self
    }

    /// `[timeouts]` `body_read`: reading a client's body.
    pub fn body_read_timeout(mut self, d: Duration) -> Self {
        self.section("timeouts")
            .insert("body_read".into(), duration(d));
        self
    }

    /// `[log]` `format`.
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.section("log")
            .insert("format".into(), format.name().into());
        self
    }

    /// `[log]` `level`: a tracing filter like `info`.
    pub fn log_level(mut self, filter: &str) -> Self {
        self.section("log").insert("level".into(), filter.into());
        self
    }

    /// `[sdk_tokens]` `signing_key_env`.
    pub fn sdk_signing_key_env(mut self, var: &str) -> Self {
        self.section("sdk_tokens")
            .insert("signing_key_env".into(), var.into());
        self
    }

    /// `[quota]`.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.root.insert("quota".into(), Value::Table(quota.0));
        self
    }

    /// One more `[[apps]]` entry.
    pub fn app(mut self, app: App) -> Self {
        self.push("apps", app.0);
        self
    }

    /// One more `[[clients]]` entry.
    pub fn client(mut self, client: Client) -> Self {
        self.push("clients", client.0);
        self
    }

    /// One more `[[routes]]` entry.
    pub fn route(mut self, route: Route) -> Self {
        self.push("routes", route.0);
        self
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

    fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.root.insert(key.into(), value.into());
    }

    fn section(&mut self, name: &str) -> &mut Table {
        self.root
            .entry(name)
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .expect("a section")
    }

    fn push(&mut self, name: &str, entry: Table) {
        self.root
            .entry(name)
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .expect("an array of tables")
            .push(Value::Table(entry));
    }
}

/// An `[[apps]]` entry.
#[derive(Debug, Clone)]
pub struct App(Table);

impl App {
    /// A self-built app whose secret is in the variable `secret_env`.
    pub fn self_built(name: &str, app_id: &str, secret_env: &str) -> App {
        let mut t = Table::new();
        t.insert("name".into(), name.into());
        t.insert("app_id".into(), app_id.into());
        t.insert("app_secret_env".into(), secret_env.into());
        App(t)
    }

    /// A store app (`type = "store"`) whose secret is in `secret_env`.
    pub fn store(name: &str, app_id: &str, secret_env: &str) -> App {
        let mut app = App::self_built(name, app_id, secret_env);
        app.0.insert("type".into(), "store".into());
        app
    }

    /// `encrypt_key_env`: the event callback's Encrypt Key.
    pub fn encrypt_key_env(mut self, var: &str) -> Self {
        self.0.insert("encrypt_key_env".into(), var.into());
        self
    }

    /// `verification_token_env`: the event callback's Verification Token.
    pub fn verification_token_env(mut self, var: &str) -> Self {
        self.0.insert("verification_token_env".into(), var.into());
        self
    }

    /// `max_tenants`.
    pub fn max_tenants(mut self, n: usize) -> Self {
        self.0.insert("max_tenants".into(), int(n));
        self
    }
}

/// A `[[clients]]` entry.
#[derive(Debug, Clone)]
pub struct Client(Table);

impl Client {
    /// A client whose key is in the variable `key_env`, acting as `app`.
    pub fn new(name: &str, key_env: &str, app: &str) -> Client {
        let mut t = Table::new();
        t.insert("name".into(), name.into());
        t.insert("key_env".into(), key_env.into());
        t.insert("app".into(), app.into());
        Client(t)
    }

    /// `tenant`: the store app's tenant it always acts for.
    pub fn tenant(mut self, tenant: &str) -> Self {
        self.0.insert("tenant".into(), tenant.into());
        self
    }
}

/// A `[[routes]]` entry: a catalog override or addition.
#[derive(Debug, Clone)]
pub struct Route(Table);

impl Route {
    /// The route `method path` (a path template, `:name` for a segment).
    pub fn new(method: http::Method, path: &str) -> Route {
        let mut t = Table::new();
        t.insert("method".into(), method.as_str().into());
        t.insert("path".into(), path.into());
        Route(t)
    }

    /// `POST path`.
    pub fn post(path: &str) -> Route {
        Route::new(http::Method::POST, path)
    }

    /// `limits`: at most N requests per window W, for each `(N, W)`; none
    /// lifts the route's gateway quota.
    pub fn limits(mut self, limits: &[(u32, Duration)]) -> Self {
        let list = limits
            .iter()
            .map(|&(n, w)| Value::from(format!("{n}/{}", duration_text(w))))
            .collect();
        self.0.insert("limits".into(), Value::Array(list));
        self
    }

    /// `overflow`: overrides the quota's for this route.
    pub fn overflow(mut self, mode: QuotaOverflow) -> Self {
        self.0.insert("overflow".into(), mode.name().into());
        self
    }

    /// `max_wait`: overrides the quota's for this route.
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.0.insert("max_wait".into(), duration(d));
        self
    }

    /// `validation`.
    pub fn validation(mut self, mode: Validation) -> Self {
        let name = match mode {
            Validation::Enforce => "enforce",
            Validation::LogOnly => "log-only",
        };
        self.0.insert("validation".into(), name.into());
        self
    }

    /// `unknown_fields`.
    pub fn unknown_fields(mut self, mode: UnknownFields) -> Self {
        let name = match mode {
            UnknownFields::Allow => "allow",
            UnknownFields::Reject => "reject",
        };
        self.0.insert("unknown_fields".into(), name.into());
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
        Quota::redis_backend().set("redis_url", url)
    }

    /// `backend = "redis"` at the URL in the variable `var` (`redis_url_env`).
    pub fn redis_env(var: &str) -> Quota {
        Quota::redis_backend().set("redis_url_env", var)
    }

    fn redis_backend() -> Quota {
        Quota::local().set("backend", "redis")
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
        let name = match mode {
            QuotaFail::Local => "local",
            QuotaFail::Closed => "closed",
            QuotaFail::Open => "open",
        };
        self.set("fail", name)
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

/// `[quota]` `overflow`.
#[derive(Debug, Clone, Copy)]
pub enum QuotaOverflow {
    Reject,
    Wait,
}

impl QuotaOverflow {
    fn name(self) -> &'static str {
        match self {
            QuotaOverflow::Reject => "reject",
            QuotaOverflow::Wait => "wait",
        }
    }
}

/// `[quota]` `fail`.
#[derive(Debug, Clone, Copy)]
pub enum QuotaFail {
    Local,
    Closed,
    Open,
}

/// `[[routes]]` `validation`.
#[derive(Debug, Clone, Copy)]
pub enum Validation {
    Enforce,
    LogOnly,
}

/// `[[routes]]` `unknown_fields`.
#[derive(Debug, Clone, Copy)]
pub enum UnknownFields {
    Allow,
    Reject,
}

/// `[log]` `format`.
#[derive(Debug, Clone, Copy)]
pub enum LogFormat {
    Plain,
    Json,
}

impl LogFormat {
    fn name(self) -> &'static str {
        match self {
            LogFormat::Plain => "plain",
            LogFormat::Json => "json",
        }
    }
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
        d.subsec_nanos() % 1_000_000 == 0,
        "{d:?}: whole milliseconds only"
    );
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
