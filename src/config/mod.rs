//! Configuration: plain data, read from TOML and checked in one pass.
//!
//! [`Config::parse`] reads the whole file, resolves secrets through an
//! [`Environment`], and returns either a complete [`Config`] or EVERY problem
//! it found ([`Problems`]), each with its key: an operator fixes a file in
//! one round, not one run per mistake. So no reader stops at an error: it
//! records the problem, carries on with a default, and `parse` decides at
//! the end. Nothing here opens a socket or spawns a task: the runtime is
//! built from a `Config` in [`crate::app`].
//!
//! Each section owns its reader, and [`Config`] is their sum: `parse` calls
//! one reader per file below, in turn, then the checks that span sections
//! (where store apps keep their app_ticket, plain-HTTP upstreams).
//!
//! | file        | reads                                                   |
//! |-------------|---------------------------------------------------------|
//! | `server.rs` | `listen`, `admin_listen`, `listen_backlog`, `max_connections`, `admin_max_connections`, `upstream`, TLS, `workers`, `max_body_bytes`, `state_dir`, `[timeouts]`, `[pool]`, `[log]` |
//! | `tokens.rs` | `[token]`, `[sdk_tokens]`                               |
//! | `quota.rs`  | `[quota]`, with its Redis keys                          |
//! | `routes.rs` | `[[routes]]`                                            |
//! | `retries.rs`| `[retries]`: retries by code after transient failures  |
//! | `tracing.rs`| `[tracing]`: spans over OTLP/HTTP, sampling, service name |
//! | `apps.rs`   | `[[apps]]`; the budget groups (`monthly_budget`, `budget_group`); each app's `events` and webhook keys |
//! | `events.rs` | `[events]`, `[[subscriptions]]`, checked against the apps |
//! | `clients.rs`| `[[clients]]`: keys (several while rotating), `allow` checked against the catalog, the checks against their apps |
//! | `reader.rs` | [`Section`]: typed reads that record [`Problems`], unknown keys |
//! | `env.rs`    | [`Environment`]; secrets given as `<base>_env` or `<base>_file` |
//!
//! The section types live with the modules that use them (`QuotaConfig` in
//! [`crate::quota`], `AppConfig` in [`crate::tokens`], ...) and are
//! re-exported here. The readers call down into those modules' parsers to
//! validate (`quota::Plan`, `endpoints::Route`), never into the running
//! parts (`server`, `app`); no domain module imports `config`.

mod apps;
mod clients;
mod env;
mod events;
mod quota;
mod reader;
mod retries;
mod routes;
mod server;
mod tokens;
mod tracing;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::uri::Scheme;

use env::secret_source;
pub use env::{Environment, MapEnv, ProcessEnv};
pub use reader::{parse_duration, Problem, Problems, Section};
pub use server::{
    default_workers, Pool, Timeouts, DEFAULT_ADMIN_MAX_CONNECTIONS, DEFAULT_LISTEN_BACKLOG,
    DEFAULT_MAX_CONNECTIONS,
};

pub use crate::auth::sdk_token::SdkTokens;
pub use crate::auth::{key_digest, ClientConfig};
pub use crate::budget::{BudgetConfig, BudgetGroup};
pub use crate::endpoints::RouteConfig;
pub use crate::events::{AppEvents, EventSettings, EventsConfig, SubscriptionConfig, Transport};
pub use crate::observe::logging::{Log, LogFormat};
pub use crate::observe::trace::TraceConfig;
pub use crate::proxy::RetryPolicy;
pub use crate::quota::{OverflowMode, QuotaConfig};
pub use crate::tokens::{AppConfig, AppKind, StoreAppSettings, TokenPolicy};
pub use crate::upstream::Upstream;
pub use crate::validate::ValidationMode;

/// The gateway's whole configuration. Every field has a documented default
/// except `apps` and `clients`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where internal services connect (`listen`). Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Admin listener for `/healthz`, `/readyz` and `/metrics`
    /// (`admin_listen`). Default `127.0.0.1:9090`. Never the same as `listen`.
    pub admin_listen: SocketAddr,
    /// The listen backlog of both listeners (`listen_backlog`): connects
    /// the kernel queues for the accept loop. Default 4096; the kernel caps
    /// it at `net.core.somaxconn` (the value in force is logged).
    pub listen_backlog: u32,
    /// Open connections on `listen` at most (`max_connections`). Default
    /// 4096. Beyond it a new connection is closed at once, before any byte
    /// is read, and counted: a flood of idle connections cannot exhaust
    /// the process's file descriptors.
    pub max_connections: usize,
    /// Open connections on `admin_listen` at most
    /// (`admin_max_connections`). Default 64.
    pub admin_max_connections: usize,
    /// Feishu's base URL (`upstream`). Default `https://open.feishu.cn`.
    pub upstream: Upstream,
    /// PEM certificate chain for serving HTTPS on `listen` (`tls_cert`);
    /// with `tls_key`. Reloaded on SIGHUP and when the files change.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert` (`tls_key`).
    pub tls_key: Option<PathBuf>,
    /// Extra root certificates (PEM) trusted for the upstream, beside the
    /// public web roots (`upstream_ca_file`): private deployments, tests.
    pub upstream_ca_file: Option<PathBuf>,
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
    /// latest app_ticket of each store app, and the monthly budget counts.
    /// Required with store apps, unless `quota.backend = "redis"`: the
    /// tickets and counts are then kept in Redis and this directory is not
    /// used.
    pub state_dir: Option<PathBuf>,
    /// Quota behaviour (`[quota]`).
    pub quota: QuotaConfig,
    /// Tokens the gateway issues to SDKs (`[sdk_tokens]`).
    pub sdk_tokens: SdkTokens,
    /// Catalog overrides and additions (`[[routes]]`).
    pub routes: Vec<RouteConfig>,
    /// Retries by code after a transient upstream failure (`[retries]`).
    pub retries: RetryPolicy,
    /// Distributed tracing (`[tracing]`). Off by default.
    pub tracing: TraceConfig,
    /// The Feishu apps the gateway holds secrets for (`[[apps]]`).
    pub apps: Vec<AppConfig>,
    /// The internal services allowed to call (`[[clients]]`).
    pub clients: Vec<ClientConfig>,
    /// The monthly call budgets (`[[apps]]` `monthly_budget`,
    /// `budget_group`): one group per self-built app or per `budget_group`.
    pub budget: BudgetConfig,
    /// Events: `[events]`, `[[subscriptions]]` and each app's `events`
    /// and webhook keys (by app index).
    pub events: EventsConfig,
    /// Things worth saying that do not stop the gateway (e.g. plain-HTTP
    /// upstream on a non-loopback host).
    pub warnings: Vec<String>,
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
        let server = server::read(&mut s, p);
        let token = tokens::read_token(&mut s, p);
        let sdk_tokens = tokens::read_sdk_tokens(&mut s, env, p);
        let quota = quota::read(&mut s, env, p);
        let routes = routes::read(&mut s, &quota, p);
        let retries = retries::read(&mut s, p);
        let tracing = tracing::read(&mut s, p);
        let mut warnings = Vec::new();
        let read_apps = apps::read(&mut s, &server.upstream, env, p);
        // Clients' `allow` entries are checked against the catalog the
        // gateway will run with (built only when some client has one).
        let clients = clients::read(
            &mut s,
            &read_apps.apps,
            &read_apps.names,
            &routes,
            env,
            p,
            &mut warnings,
        );
        let events = events::read(&mut s, &read_apps, env, p, &mut warnings);
        let apps::Apps { apps, budget, .. } = read_apps;
        s.finish(p);

        ticket_home(server.state_dir.as_deref(), &quota, &apps, p, &mut warnings);
        plain_http_warnings(&server.upstream, &apps, &mut warnings);
        if !problems.is_empty() {
            return Err(problems);
        }
        let invalid = "a problem is recorded when an address is invalid";
        Ok(Config {
            listen: server.listen.expect(invalid),
            admin_listen: server.admin_listen.expect(invalid),
            listen_backlog: server.listen_backlog,
            max_connections: server.max_connections,
            admin_max_connections: server.admin_max_connections,
            upstream: server.upstream,
            tls_cert: server.tls_cert,
            tls_key: server.tls_key,
            upstream_ca_file: server.upstream_ca_file,
            max_body_bytes: server.max_body_bytes,
            workers: server.workers,
            timeouts: server.timeouts,
            pool: server.pool,
            token,
            log: server.log,
            state_dir: server.state_dir,
            quota,
            sdk_tokens,
            routes,
            retries,
            tracing,
            apps,
            clients,
            budget,
            events,
            warnings,
        })
    }
}

/// Where store apps keep their app_ticket, which must survive a restart: in
/// Redis with the Redis backend (shared by every replica), else in
/// `state_dir`.
fn ticket_home(
    state_dir: Option<&Path>,
    quota: &QuotaConfig,
    apps: &[AppConfig],
    p: &mut Problems,
    warnings: &mut Vec<String>,
) {
    let redis = quota.backend == crate::quota::BackendKind::Redis;
    let store = apps.iter().any(|a| matches!(a.kind, AppKind::Store(_)));
    if !redis && store && state_dir.is_none() {
        p.push(
            "state_dir",
            "is required with store apps (or quota.backend = \"redis\"): the app_ticket must survive a restart",
        );
    }
    if redis && state_dir.is_some() {
        warnings.push(
            "state_dir is not used: with quota.backend = \"redis\" the app_tickets and the monthly budget counts are kept in Redis".to_string(),
        );
    }
}

/// Warns once per plain-HTTP upstream (the root's or an app's) off loopback.
fn plain_http_warnings(root: &Upstream, apps: &[AppConfig], warnings: &mut Vec<String>) {
    let mut seen = Vec::new();
    for u in std::iter::once(root).chain(apps.iter().map(|a| &a.upstream)) {
        if u.scheme == Scheme::HTTP && !u.is_loopback() && !seen.contains(u) {
            warnings.push(format!(
                "upstream {} is plain http on a non-loopback host: tokens travel unencrypted",
                u.base_url()
            ));
            seen.push(u.clone());
        }
    }
}

#[cfg(test)]
mod tests;
