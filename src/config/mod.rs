//! Configuration: plain data, read from TOML and checked in one pass.
//!
//! [`Config::parse`] reads the whole file, resolves secrets through an
//! [`Environment`], and returns either a complete [`Config`] or EVERY problem
//! it found ([`Problems`]), each with its key. Nothing here opens a socket or
//! spawns a task: the runtime is built from a `Config` in [`crate::app`].

mod apps;
mod env;
mod quota;
mod reader;
mod routes;
mod tokens;

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
        let token = tokens::read_token(&mut s, p);
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

        let sdk_tokens = tokens::read_sdk_tokens(&mut s, env, p);
        let state_dir = s.string("state_dir", p).map(std::path::PathBuf::from);
        let quota = quota::read(&mut s, env, p);
        let routes = routes::read(&mut s, &quota, p);
        let (apps, clients) = apps::read(&mut s, &upstream, env, p);
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

/// An optional upstream URL: the root `upstream`, or an app's own.
pub(super) fn upstream<'a>(
    s: &mut Section<'a>,
    name: &'a str,
    p: &mut Problems,
) -> Option<Upstream> {
    let v = s.string(name, p)?;
    match Upstream::parse(v) {
        Ok(u) => Some(u),
        Err(e) => {
            p.push(s.key(name), e);
            None
        }
    }
}

#[cfg(test)]
mod tests;
