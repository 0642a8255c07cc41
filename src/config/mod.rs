//! Configuration: plain data, read from TOML and checked in one pass.
//!
//! [`Config::parse`] reads the whole file, resolves secrets through an
//! [`Environment`], and returns either a complete [`Config`] or EVERY problem
//! it found ([`Problems`]), each with its key. Nothing here opens a socket or
//! spawns a task: the runtime is built from a `Config` in [`crate::app`].

mod env;
mod reader;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::uri::Scheme;

use env::secret_source;
pub use env::{Environment, MapEnv, ProcessEnv};
pub use reader::{parse_duration, Problem, Problems, Section};

pub use crate::auth::sdk_token::SdkTokens;
pub use crate::auth::{key_digest, ClientConfig};
pub use crate::endpoints::RouteConfig;
pub use crate::observe::logging::{Log, LogFormat};
pub use crate::quota::{OverflowMode, QuotaConfig};
use crate::secret::Secret;
pub use crate::tokens::{AppConfig, AppKind, StoreAppSettings, TokenPolicy};
pub use crate::upstream::Upstream;
pub use crate::validate::ValidationMode;

/// One connection worker per core the process may use.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The gateway's whole configuration. Every field has a documented default
/// except `apps` and `clients`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where internal services connect (`listen`). Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Admin listener for `/healthz`, `/readyz` and `/metrics`
    /// (`admin_listen`). Default `127.0.0.1:9090`. Never the same as `listen`.
    pub admin_listen: SocketAddr,
    /// Feishu's base URL (`upstream`). Default `https://open.feishu.cn`.
    pub upstream: Upstream,
    /// PEM certificate chain for serving HTTPS on `listen` (`tls_cert`);
    /// with `tls_key`. Reloaded on SIGHUP and when the files change.
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for `tls_cert` (`tls_key`).
    pub tls_key: Option<std::path::PathBuf>,
    /// Extra root certificates (PEM) trusted for the upstream, beside the
    /// public web roots (`upstream_ca_file`): private deployments, tests.
    pub upstream_ca_file: Option<std::path::PathBuf>,
    /// Largest request body accepted, in bytes (`max_body_bytes`).
    /// Default 1 MiB. Bodies are buffered so a request can be replayed once
    /// after a token-invalid answer.
    pub max_body_bytes: usize,
    /// Threads serving client connections, each with its own event loop
    /// and upstream pool (`workers`, see [`crate::workers`]). Default: one
    /// per core. 0 serves connections on the shared runtime.
    pub workers: usize,
    /// Timeouts (`[timeouts]`).
    pub timeouts: Timeouts,
    /// Upstream connection pool (`[pool]`).
    pub pool: Pool,
    /// Token refresh policy (`[token]`).
    pub token: TokenPolicy,
    /// Logging (`[log]`).
    pub log: Log,
    /// Where the gateway keeps state across restarts (`state_dir`): the
    /// latest app_ticket of each store app. Required with store apps,
    /// unless `quota.backend = "redis"`: the tickets are then kept in Redis
    /// and this directory is not used.
    pub state_dir: Option<std::path::PathBuf>,
    /// Quota behaviour (`[quota]`).
    pub quota: QuotaConfig,
    /// Tokens the gateway issues to SDKs (`[sdk_tokens]`).
    pub sdk_tokens: SdkTokens,
    /// Catalog overrides and additions (`[[routes]]`).
    pub routes: Vec<RouteConfig>,
    /// The Feishu apps the gateway holds secrets for (`[[apps]]`).
    pub apps: Vec<AppConfig>,
    /// The internal services allowed to call (`[[clients]]`).
    pub clients: Vec<ClientConfig>,
    /// Things worth saying that do not stop the gateway (e.g. plain-HTTP
    /// upstream on a non-loopback host).
    pub warnings: Vec<String>,
}

/// Timeouts (`[timeouts]`).
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP+TLS connect to Feishu (`connect`). Default 3 s.
    pub connect: Duration,
    /// One upstream attempt, from sending the request to the end of the
    /// answer's head and inspected body (`upstream`). Default 30 s.
    pub upstream: Duration,
    /// Reading a client's request body (`body_read`). Default 10 s: a slow
    /// drip costs no more than this.
    pub body_read: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may finish
    /// (`shutdown_grace`). Default 25 s (below Kubernetes' 30 s).
    pub shutdown_grace: Duration,
}

/// Upstream connection pool (`[pool]`).
#[derive(Debug, Clone)]
pub struct Pool {
    /// Idle connections are closed after this (`idle_timeout`). Default 90 s.
    pub idle_timeout: Duration,
    /// Idle connections kept per upstream host (`max_idle_per_host`).
    /// Default 256.
    pub max_idle_per_host: usize,
}

impl Config {
    /// How connections to Feishu are made and kept.
    pub fn upstream_settings(&self) -> crate::upstream::Settings {
        crate::upstream::Settings {
            ca_file: self.upstream_ca_file.clone(),
            connect_timeout: self.timeouts.connect,
            idle_timeout: self.pool.idle_timeout,
            max_idle_per_host: self.pool.max_idle_per_host,
        }
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path, env: &dyn Environment) -> Result<Config, Problems> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let mut p = Problems::default();
            p.push(path.display().to_string(), format!("cannot read: {e}"));
            p
        })?;
        Config::parse(&text, env)
    }

    /// Parses and checks config text, reporting every problem at once.
    pub fn parse(text: &str, env: &dyn Environment) -> Result<Config, Problems> {
        // A syntax error leaves nothing to check further.
        let root = reader::toml_table(text)?;
        let mut problems = Problems::default();
        let p = &mut problems;
        let mut s = Section::new("", &root);

        let listen = addr(&mut s, "listen", "127.0.0.1:8080", p);
        let admin_listen = addr(&mut s, "admin_listen", "127.0.0.1:9090", p);
        if let (Some(a), Some(b)) = (listen, admin_listen) {
            if a == b && a.port() != 0 {
                p.push("admin_listen", "must differ from `listen`");
            }
        }
        let upstream = upstream(&mut s, "upstream", p).unwrap_or_else(default_upstream);
        let upstream_ca_file = s
            .string("upstream_ca_file", p)
            .map(std::path::PathBuf::from);
        let tls_cert = s.string("tls_cert", p).map(std::path::PathBuf::from);
        let tls_key = s.string("tls_key", p).map(std::path::PathBuf::from);
        match (&tls_cert, &tls_key) {
            (Some(_), None) => p.push("tls_key", "is required when tls_cert is set"),
            (None, Some(_)) => p.push("tls_cert", "is required when tls_key is set"),
            // Whether they load is checked with the running parts
            // (`app::load_config`).
            _ => {}
        }
        let max_body_bytes = s
            .integer("max_body_bytes", 1 << 30, p)
            .map(|v| v as usize)
            .unwrap_or(1 << 20);
        let workers = s
            .integer("workers", 1024, p)
            .map_or_else(default_workers, |v| v as usize);

        let timeouts = {
            let mut t = s.table("timeouts", p);
            let mut d = |name, default| {
                t.as_mut()
                    .and_then(|t| t.duration(name, p))
                    .unwrap_or(default)
            };
            let out = Timeouts {
                connect: d("connect", Duration::from_secs(3)),
                upstream: d("upstream", Duration::from_secs(30)),
                body_read: d("body_read", Duration::from_secs(10)),
                shutdown_grace: d("shutdown_grace", Duration::from_secs(25)),
            };
            if let Some(t) = t {
                t.finish(p);
            }
            out
        };
        let pool = {
            let mut t = s.table("pool", p);
            let idle_timeout = t
                .as_mut()
                .and_then(|t| t.duration("idle_timeout", p))
                .unwrap_or(Duration::from_secs(90));
            let max_idle_per_host = t
                .as_mut()
                .and_then(|t| t.integer("max_idle_per_host", 100_000, p))
                .map(|v| v as usize)
                .unwrap_or(256);
            if let Some(t) = t {
                t.finish(p);
            }
            Pool {
                idle_timeout,
                max_idle_per_host,
            }
        };
        let token = {
            let mut t = s.table("token", p);
            let mut d = |name, default| {
                t.as_mut()
                    .and_then(|t| t.duration(name, p))
                    .unwrap_or(default)
            };
            let out = TokenPolicy {
                refresh_before: d("refresh_before", Duration::from_secs(25 * 60)),
                retry_min: d("retry_min", Duration::from_millis(500)),
                retry_max: d("retry_max", Duration::from_secs(30)),
                fetch_timeout: d("fetch_timeout", Duration::from_secs(10)),
            };
            if let Some(t) = t {
                t.finish(p);
            }
            if out.retry_min.is_zero() {
                p.push("token.retry_min", "must be more than 0");
            }
            if out.retry_max < out.retry_min {
                p.push("token.retry_max", "must be at least token.retry_min");
            }
            out
        };
        let log = {
            let mut t = s.table("log", p);
            let format = match t.as_mut().and_then(|t| t.string("format", p)) {
                None | Some("plain") => LogFormat::Plain,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    p.push(
                        "log.format",
                        format!("{other:?} is not \"plain\" or \"json\""),
                    );
                    LogFormat::Plain
                }
            };
            let level = t
                .as_mut()
                .and_then(|t| t.string("level", p))
                .unwrap_or("info")
                .to_string();
            if let Some(t) = t {
                t.finish(p);
            }
            Log { format, level }
        };

        let sdk_tokens = read_sdk_tokens(&mut s, env, p);
        let state_dir = s.string("state_dir", p).map(std::path::PathBuf::from);
        let quota = read_quota(&mut s, env, p);
        let routes = read_routes(&mut s, &quota, p);
        let (apps, app_names) = read_apps(&mut s, &upstream, env, p);
        let clients = read_clients(&mut s, &app_names, env, p);
        s.finish(p);
        // The app_ticket must survive a restart: in Redis with the Redis
        // backend (shared by every replica), else in `state_dir`.
        let redis = quota.backend == crate::quota::BackendKind::Redis;
        if !redis && state_dir.is_none() && apps.iter().any(|a| matches!(a.kind, AppKind::Store(_)))
        {
            p.push(
                "state_dir",
                "is required with store apps (or quota.backend = \"redis\"): the app_ticket must survive a restart",
            );
        }
        for c in &clients {
            if c.tenant.is_some()
                && apps
                    .get(c.app)
                    .is_some_and(|a| matches!(a.kind, AppKind::SelfBuilt))
            {
                p.push(
                    format!("clients[name = {:?}].tenant", c.name),
                    "only clients of store apps name a tenant",
                );
            }
        }

        let mut warnings = Vec::new();
        if redis && state_dir.is_some() {
            warnings.push(
                "state_dir is not used: with quota.backend = \"redis\" the app_tickets are kept in Redis".to_string(),
            );
        }
        let mut seen_warn = Vec::new();
        for u in std::iter::once(&upstream).chain(apps.iter().map(|a| &a.upstream)) {
            if u.scheme == Scheme::HTTP && !u.is_loopback() && !seen_warn.contains(u) {
                warnings.push(format!(
                    "upstream {} is plain http on a non-loopback host: tokens travel unencrypted",
                    u.base_url()
                ));
                seen_warn.push(u.clone());
            }
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            listen: listen.expect("checked above"),
            admin_listen: admin_listen.expect("checked above"),
            upstream,
            tls_cert,
            tls_key,
            upstream_ca_file,
            max_body_bytes,
            workers,
            timeouts,
            pool,
            token,
            log,
            state_dir,
            quota,
            sdk_tokens,
            routes,
            apps,
            clients,
            warnings,
        })
    }
}

fn default_upstream() -> Upstream {
    Upstream::parse("https://open.feishu.cn").expect("valid default")
}

fn addr<'a>(
    s: &mut Section<'a>,
    name: &'a str,
    default: &str,
    p: &mut Problems,
) -> Option<SocketAddr> {
    let v = s.string(name, p).unwrap_or(default);
    match v.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            p.push(
                s.key(name),
                format!("{v:?} is not an address like \"127.0.0.1:8080\""),
            );
            None
        }
    }
}

fn upstream<'a>(s: &mut Section<'a>, name: &'a str, p: &mut Problems) -> Option<Upstream> {
    let v = s.string(name, p)?;
    match Upstream::parse(v) {
        Ok(u) => Some(u),
        Err(e) => {
            p.push(s.key(name), e);
            None
        }
    }
}

fn overflow(s: &mut Section<'_>, p: &mut Problems) -> Option<OverflowMode> {
    match s.string("overflow", p)? {
        "reject" => Some(OverflowMode::Reject),
        "wait" => Some(OverflowMode::Wait),
        other => {
            p.push(
                s.key("overflow"),
                format!("{other:?} is not \"reject\" or \"wait\""),
            );
            None
        }
    }
}

fn read_sdk_tokens(root: &mut Section<'_>, env: &dyn Environment, p: &mut Problems) -> SdkTokens {
    let mut out = SdkTokens {
        signing_key: None,
        lifetime: Duration::from_secs(7200),
    };
    let Some(mut s) = root.table("sdk_tokens", p) else {
        return out;
    };
    if s.value("signing_key_env").is_some() || s.value("signing_key_file").is_some() {
        out.signing_key = secret_source(&mut s, "signing_key_env", "signing_key_file", &[], env, p);
        if out
            .signing_key
            .as_ref()
            .is_some_and(|k| k.expose().len() < 16)
        {
            p.push(
                s.key("signing_key_env"),
                "the signing key is shorter than 16 characters",
            );
        }
    }
    if let Some(l) = s.duration("lifetime", p) {
        if l < Duration::from_secs(900) || l > Duration::from_secs(86_400) {
            p.push(
                s.key("lifetime"),
                "must be between 15m (the Python SDK refreshes 10 min early) and 24h",
            );
        } else {
            out.lifetime = l;
        }
    }
    s.finish(p);
    out
}

fn read_quota(root: &mut Section<'_>, env: &dyn Environment, p: &mut Problems) -> QuotaConfig {
    use crate::quota::{BackendKind, FailMode};
    let defaults = crate::quota::PlanPolicy::default();
    let mut q = QuotaConfig {
        margin: defaults.margin,
        min_rate_fraction: defaults.min_rate_fraction,
        overflow: OverflowMode::Reject,
        max_wait: Duration::from_secs(5),
        max_waiters: 256,
        backend: BackendKind::Local,
        redis_url: None,
        redis_ca_file: None,
        key_prefix: "feishu-gateway:".to_string(),
        fail: FailMode::Local,
        replicas: 1,
        redis_timeout: Duration::from_millis(50),
    };
    let Some(mut s) = root.table("quota", p) else {
        return q;
    };
    if let Some(m) = s.duration("margin", p) {
        q.margin = m;
    }
    match s.value("min_rate_fraction") {
        Some(toml::Value::Float(f)) if *f > 0.0 && *f <= 1.0 => q.min_rate_fraction = *f,
        Some(toml::Value::Integer(1)) => q.min_rate_fraction = 1.0,
        Some(_) => p.push(
            s.key("min_rate_fraction"),
            "must be a number greater than 0 and at most 1, like 0.965",
        ),
        None => {}
    }
    if let Some(o) = overflow(&mut s, p) {
        q.overflow = o;
    }
    if let Some(w) = s.duration("max_wait", p) {
        q.max_wait = w;
    }
    if let Some(n) = s.integer("max_waiters", 1_000_000, p) {
        q.max_waiters = n as u32;
    }
    match s.string("backend", p) {
        None | Some("local") => {}
        Some("redis") => q.backend = BackendKind::Redis,
        Some(other) => p.push(
            s.key("backend"),
            format!("{other:?} is not \"local\" or \"redis\""),
        ),
    }
    if q.backend == BackendKind::Redis {
        read_redis(&mut s, &mut q, env, p);
    } else {
        for k in [
            "redis_url",
            "redis_url_env",
            "redis_url_file",
            "redis_ca_file",
            "key_prefix",
            "fail",
            "replicas",
            "redis_timeout",
        ] {
            if s.value(k).is_some() {
                p.push(s.key(k), "only applies with backend = \"redis\"");
            }
        }
    }
    s.finish(p);
    let policy = crate::quota::PlanPolicy {
        margin: q.margin,
        min_rate_fraction: q.min_rate_fraction,
    };
    let probe = crate::quota::Window::new(50, Duration::from_secs(1)).expect("valid window");
    if let Err(e) = crate::quota::Plan::new(&[probe], &policy) {
        p.push("quota.margin", e.to_string());
    }
    q
}

/// The Redis keys of `[quota]`, with `backend = "redis"`.
fn read_redis(s: &mut Section<'_>, q: &mut QuotaConfig, env: &dyn Environment, p: &mut Problems) {
    use crate::quota::FailMode;
    let inline = s.string("redis_url", p);
    let given = [
        inline.is_some(),
        s.value("redis_url_env").is_some(),
        s.value("redis_url_file").is_some(),
    ];
    q.redis_url = match given.iter().filter(|g| **g).count() {
        0 => {
            p.push(
                s.key("redis_url_env"),
                "is required with backend = \"redis\": set one of `redis_url_env`, `redis_url_file`, `redis_url`",
            );
            None
        }
        1 => match inline {
            Some(url) => Some(Secret::new(url.trim())),
            None => secret_source(s, "redis_url_env", "redis_url_file", &["redis_url"], env, p),
        },
        _ => {
            p.push(
                s.key("redis_url"),
                "give only one of `redis_url`, `redis_url_env`, `redis_url_file`",
            );
            None
        }
    };
    if let Some(url) = &q.redis_url {
        // The message never repeats the URL: it may carry a password.
        let url = url.expose();
        let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
            .iter()
            .any(|prefix| url.starts_with(prefix));
        if !scheme_ok || redis::IntoConnectionInfo::into_connection_info(url).is_err() {
            p.push(
                "quota.redis_url",
                "is not a URL like redis://host:6379/0 or rediss://:password@host:6380/0",
            );
        }
    }
    q.redis_ca_file = s.string("redis_ca_file", p).map(std::path::PathBuf::from);
    if let Some(path) = &q.redis_ca_file {
        match env.read_file(path) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => {}
            Ok(_) => p.push(s.key("redis_ca_file"), "holds no PEM certificate"),
            Err(e) => p.push(
                s.key("redis_ca_file"),
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }
    if let Some(prefix) = s.string("key_prefix", p) {
        if prefix.len() > 128
            || prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            p.push(
                s.key("key_prefix"),
                "must be at most 128 characters without spaces or braces",
            );
        }
        q.key_prefix = prefix.to_string();
    }
    match s.string("fail", p) {
        None | Some("local") => {}
        Some("closed") => q.fail = FailMode::Closed,
        Some("open") => q.fail = FailMode::Open,
        Some(other) => p.push(
            s.key("fail"),
            format!("{other:?} is not \"local\", \"closed\" or \"open\""),
        ),
    }
    match s.integer("replicas", 1000, p) {
        Some(0) => p.push(s.key("replicas"), "must be at least 1"),
        Some(n) => q.replicas = n as u32,
        None if q.fail == FailMode::Local => p.push(
            s.key("replicas"),
            "is required with backend = \"redis\" and fail = \"local\": the most gateway replicas that run at once (each falls back to 1/replicas of every limit)",
        ),
        None => {}
    }
    if let Some(t) = s.duration("redis_timeout", p) {
        q.redis_timeout = t;
    }
    if q.redis_timeout.is_zero() || q.redis_timeout > q.margin / 2 {
        p.push(
            s.key("redis_timeout"),
            format!(
                "must be more than 0 and at most half of quota.margin ({:?}): Redis's answer travels before the request does, so it counts against the margin",
                q.margin / 2
            ),
        );
    }
}

fn read_routes(root: &mut Section<'_>, quota: &QuotaConfig, p: &mut Problems) -> Vec<RouteConfig> {
    let policy = crate::quota::PlanPolicy {
        margin: quota.margin,
        min_rate_fraction: quota.min_rate_fraction,
    };
    let mut out: Vec<RouteConfig> = Vec::new();
    for mut s in root.tables("routes", p) {
        let method = s.required_string("method", p).and_then(|m| {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    p.push(s.key("method"), format!("{m:?} is not an HTTP method"));
                    None
                }
            }
        });
        let path =
            s.required_string("path", p).and_then(|path| {
                match crate::endpoints::Route::new("config", http::Method::GET, path) {
                    Ok(_) => Some(path.to_string()),
                    Err(e) => {
                        p.push(s.key("path"), e);
                        None
                    }
                }
            });
        let limits = s.strings("limits", p).map(|list| {
            let mut windows = Vec::new();
            for (i, w) in list.iter().enumerate() {
                match w.parse::<crate::quota::Window>() {
                    Ok(w) => windows.push(w),
                    Err(e) => p.push(format!("{}[{i}]", s.key("limits")), e.to_string()),
                }
            }
            if !windows.is_empty() {
                if let Err(e) = crate::quota::Plan::new(&windows, &policy) {
                    p.push(s.key("limits"), e.to_string());
                }
            }
            windows
        });
        let overflow = overflow(&mut s, p);
        let max_wait = s.duration("max_wait", p);
        let validation = match s.string("validation", p) {
            None => None,
            Some("enforce") => Some(ValidationMode::Enforce),
            Some("log-only") => Some(ValidationMode::LogOnly),
            Some(other) => {
                p.push(
                    s.key("validation"),
                    format!("{other:?} is not \"enforce\" or \"log-only\""),
                );
                None
            }
        };
        let unknown_fields = match s.string("unknown_fields", p) {
            None => None,
            Some("allow") => Some(crate::validate::UnknownFields::Allow),
            Some("reject") => Some(crate::validate::UnknownFields::Reject),
            Some(other) => {
                p.push(
                    s.key("unknown_fields"),
                    format!("{other:?} is not \"allow\" or \"reject\""),
                );
                None
            }
        };
        let max_body_bytes = s.integer("max_body_bytes", 1 << 30, p).map(|v| v as usize);
        if let (Some(m), Some(path)) = (&method, &path) {
            if out.iter().any(|r| r.method == *m && r.path == *path) {
                p.push(s.key("path"), format!("{m} {path} is listed twice"));
            }
        }
        s.finish(p);
        if let (Some(method), Some(path)) = (method, path) {
            out.push(RouteConfig {
                method,
                path,
                limits,
                overflow,
                max_wait,
                validation,
                unknown_fields,
                max_body_bytes,
            });
        }
    }
    out
}

/// Reads `[[apps]]`. Returns the complete entries and every entry's name
/// (by file index, for resolving `clients[].app`). When an entry is
/// incomplete a problem is recorded, so the two lists only need to align
/// when there are no problems.
fn read_apps(
    root: &mut Section<'_>,
    global: &Upstream,
    env: &dyn Environment,
    p: &mut Problems,
) -> (Vec<AppConfig>, Vec<Option<String>>) {
    let sections = root.tables("apps", p);
    if sections.is_empty() {
        p.push("apps", "at least one [[apps]] entry is required");
    }
    let mut apps = Vec::new();
    let mut all_names = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, mut s) in sections.into_iter().enumerate() {
        let name = s.required_string("name", p);
        let app_id = s.required_string("app_id", p);
        let app_secret = secret_source(&mut s, "app_secret_env", "app_secret_file", &[], env, p);
        let upstream = match s.value("upstream") {
            Some(_) => upstream(&mut s, "upstream", p),
            None => Some(global.clone()),
        };
        let kind = read_app_kind(&mut s, env, p);
        if let Some(n) = name {
            check_label(&s, n, p);
            if let Some(j) = names.insert(n.to_string(), i) {
                p.push(s.key("name"), format!("{n:?} is already used by apps[{j}]"));
            }
        }
        if let Some(id) = app_id {
            if id.trim().is_empty() {
                p.push(s.key("app_id"), "must not be empty");
            } else if let Some(j) = ids.insert(id.to_string(), i) {
                p.push(
                    s.key("app_id"),
                    format!("{id:?} is already used by apps[{j}]"),
                );
            }
        }
        s.finish(p);
        all_names.push(name.map(str::to_string));
        if let (Some(name), Some(app_id), Some(app_secret), Some(upstream), Some(kind)) =
            (name, app_id, app_secret, upstream, kind)
        {
            apps.push(AppConfig {
                name: name.to_string(),
                app_id: app_id.to_string(),
                app_secret,
                upstream,
                kind,
            });
        }
    }
    (apps, all_names)
}

/// Reads `type` and the store-app keys of an `[[apps]]` entry.
fn read_app_kind(s: &mut Section<'_>, env: &dyn Environment, p: &mut Problems) -> Option<AppKind> {
    const STORE_KEYS: [&str; 8] = [
        "encrypt_key_env",
        "encrypt_key_file",
        "verification_token_env",
        "verification_token_file",
        "max_tenants",
        "tenant_idle_timeout",
        "require_signature",
        "type",
    ];
    match s.string("type", p).unwrap_or("self_built") {
        "self_built" => {
            for k in &STORE_KEYS[..7] {
                if s.value(k).is_some() {
                    p.push(s.key(k), "only store apps (type = \"store\") take this key");
                }
            }
            Some(AppKind::SelfBuilt)
        }
        "store" => {
            let encrypt_key =
                if s.value("encrypt_key_env").is_some() || s.value("encrypt_key_file").is_some() {
                    Some(secret_source(
                        s,
                        "encrypt_key_env",
                        "encrypt_key_file",
                        &[],
                        env,
                        p,
                    )?)
                } else {
                    None
                };
            let verification_token = secret_source(
                s,
                "verification_token_env",
                "verification_token_file",
                &[],
                env,
                p,
            );
            let max_tenants = s.integer("max_tenants", 1_000_000, p).unwrap_or(1000) as usize;
            if max_tenants == 0 {
                p.push(s.key("max_tenants"), "must be at least 1");
            }
            let tenant_idle_timeout = s
                .duration("tenant_idle_timeout", p)
                .unwrap_or(Duration::from_secs(3600));
            let require_signature = s.boolean("require_signature", p).unwrap_or(false);
            Some(AppKind::Store(StoreAppSettings {
                encrypt_key,
                verification_token: verification_token?,
                max_tenants,
                tenant_idle_timeout,
                require_signature,
            }))
        }
        other => {
            p.push(
                s.key("type"),
                format!("{other:?} is not \"self_built\" or \"store\""),
            );
            None
        }
    }
}

/// Reports a `name` that would make a poor metric label.
fn check_label(s: &Section<'_>, name: &str, p: &mut Problems) {
    if !valid_label(name) {
        p.push(
            s.key("name"),
            format!("{name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"),
        );
    }
}

fn read_clients(
    root: &mut Section<'_>,
    app_names: &[Option<String>],
    env: &dyn Environment,
    p: &mut Problems,
) -> Vec<ClientConfig> {
    let sections = root.tables("clients", p);
    if sections.is_empty() {
        p.push("clients", "at least one [[clients]] entry is required");
    }
    let mut clients = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut keys: HashMap<[u8; 32], usize> = HashMap::new();
    for (i, mut s) in sections.into_iter().enumerate() {
        let name = s.required_string("name", p);
        let app_name = s.required_string("app", p);
        let tenant = s.string("tenant", p).map(str::to_string);
        if tenant.as_deref().is_some_and(|t| t.trim().is_empty()) {
            p.push(s.key("tenant"), "must not be empty");
        }
        let digest = if s.value("key_sha256").is_some() {
            let given = s.string("key_sha256", p);
            let mut other = false;
            for k in ["key_env", "key_file"] {
                if s.value(k).is_some() {
                    p.push(
                        s.key(k),
                        "give only one of `key_env`, `key_file`, `key_sha256`",
                    );
                    other = true;
                }
            }
            match given.map(|h| hex::decode(h.trim())) {
                Some(Ok(bytes)) if bytes.len() == 32 && !other => {
                    let mut d = [0u8; 32];
                    d.copy_from_slice(&bytes);
                    Some(d)
                }
                Some(_) if !other => {
                    p.push(
                        s.key("key_sha256"),
                        "must be 64 hex digits (SHA-256 of the key)",
                    );
                    None
                }
                _ => None,
            }
        } else {
            secret_source(&mut s, "key_env", "key_file", &["key_sha256"], env, p).and_then(|key| {
                if key.expose().len() < 16 {
                    p.push(
                        s.key("key_env"),
                        "the key is shorter than 16 characters: use a long random key",
                    );
                    None
                } else {
                    Some(key_digest(key.expose().as_bytes()))
                }
            })
        };
        if let Some(n) = name {
            check_label(&s, n, p);
            if let Some(j) = names.insert(n.to_string(), i) {
                p.push(
                    s.key("name"),
                    format!("{n:?} is already used by clients[{j}]"),
                );
            }
        }
        let app = app_name.and_then(|a| {
            let found = app_names.iter().position(|x| x.as_deref() == Some(a));
            if found.is_none() {
                p.push(s.key("app"), format!("no [[apps]] entry is named {a:?}"));
            }
            found
        });
        if let Some(d) = digest {
            if let Some(j) = keys.insert(d, i) {
                p.push(
                    s.key("key_env"),
                    format!("the same key is already used by clients[{j}]"),
                );
            }
        }
        s.finish(p);
        if let (Some(name), Some(app), Some(key_sha256)) = (name, app, digest) {
            clients.push(ClientConfig {
                name: name.to_string(),
                app,
                key_sha256,
                tenant,
            });
        }
    }
    clients
}

/// Names used as metric labels: short and tame.
fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests;
