//! The composition root: the only code that turns a [`Config`] into the
//! gateway's parts — catalog, metrics, upstream connections, the Redis
//! connection, app_ticket store, token manager, quota engine and keys, store
//! apps, monthly budgets, contracts — and the listener's TLS. Domain modules
//! never read the config; they are handed what they need here.

use std::path::Path;
use std::sync::Arc;

use http::HeaderValue;

use super::StartError;
use crate::auth::sdk_token::TokenIssuer;
use crate::auth::ClientTable;
use crate::budget::{Budgets, Store as BudgetStore};
use crate::config::{Config, Environment, Problems};
use crate::endpoints::{Catalog, Contracts};
use crate::observe::metrics::Metrics;
use crate::proxy::{AppRoute, Gateway, QuotaKeys, ResourceKeys, Retries};
use crate::quota::{BackendKind, Engine, PlanPolicy, RedisConnection, RedisSettings};
use crate::server::tls::ReloadingAcceptor;
use crate::store_apps::StoreApps;
use crate::tokens::ticket::TicketBox;
use crate::tokens::ticket_store::{
    FileTicketStore, MemoryTicketStore, RedisTicketStore, TicketStore,
};
use crate::tokens::TokenManager;
use crate::upstream::Upstreams;

/// Reads a config file and checks what only the running parts can check
/// (the listener's certificate and key load, the catalog with the config's
/// routes), listing every problem.
/// `serve` and `check-config` both start here.
pub fn load_config(path: &Path, env: &dyn Environment) -> Result<Config, Problems> {
    let config = Config::load(path, env)?;
    let mut problems = Problems::default();
    if let Err(e) = tls_acceptor(&config) {
        problems.push("tls_cert", e);
    }
    // The catalog with the overrides: a rule reading a path parameter its
    // route does not have is only found here.
    if let Err(e) = Catalog::with_overrides(&config.routes) {
        problems.push("routes", e);
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

/// The listener's TLS, when `tls_cert` and `tls_key` are set.
pub fn tls_acceptor(config: &Config) -> Result<Option<ReloadingAcceptor>, String> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => ReloadingAcceptor::from_files(cert, key).map(Some),
        _ => Ok(None),
    }
}

/// The parts a [`Runtime`](super::Runtime) serves with.
pub(super) struct Parts {
    pub(super) gateway: Arc<Gateway>,
    pub(super) tokens: Arc<TokenManager>,
    pub(super) metrics: Arc<Metrics>,
}

/// Builds every part from `config`, in dependency order.
pub(super) fn parts(config: &Config) -> Result<Parts, StartError> {
    let catalog = Catalog::with_overrides(&config.routes).map_err(StartError::Config)?;
    let app_names: Vec<String> = config.apps.iter().map(|a| a.name.clone()).collect();
    let metrics = Arc::new(Metrics::new(
        prometheus::Registry::new(),
        &app_names,
        &catalog.templates(),
    )?);
    let upstreams = Upstreams::build(&config.upstream_settings(), config.workers)
        .map_err(StartError::Upstream)?;
    let client = upstreams.shared().clone();
    // With `[quota] backend = "redis"`: the replica's one connection to
    // Redis, shared by the quota engine and the app_ticket store.
    let redis = match config.quota.backend {
        BackendKind::Redis => Some(
            RedisSettings::from_config(&config.quota)
                .and_then(|s| s.open_connection())
                .map_err(StartError::Config)?,
        ),
        BackendKind::Local => None,
    };
    // Where store apps' app_tickets are kept: in Redis when quotas are
    // (every replica then uses the ticket any replica received), else in
    // `state_dir`, else in memory only.
    let ticket_store: Arc<dyn TicketStore> = match (&redis, &config.state_dir) {
        (Some(conn), _) => Arc::new(RedisTicketStore::new(
            conn.clone(),
            config.quota.key_prefix.clone(),
        )),
        (None, Some(dir)) => Arc::new(FileTicketStore::new(dir)),
        (None, None) => Arc::new(MemoryTicketStore::new()),
    };
    let tickets = TicketBox::for_apps(
        &config.apps,
        &client,
        &ticket_store,
        config.token.fetch_timeout,
        &metrics,
    );
    let tokens = Arc::new(TokenManager::new(
        &config.apps,
        &tickets,
        client,
        config.token.clone(),
        Arc::clone(&metrics),
    ));
    let gateway = gateway(
        config,
        catalog,
        Arc::clone(&tokens),
        tickets,
        upstreams,
        Arc::clone(&metrics),
        redis.as_ref(),
    )
    .map_err(StartError::Config)?;
    Ok(Parts {
        gateway: Arc::new(gateway),
        tokens,
        metrics,
    })
}

/// The client table: every client's keys, app, tenant and allow list
/// (compiled against `catalog`), in one value behind one `Arc`, so a live
/// reload can build a new one from a new config and swap it whole.
pub(super) fn client_table(
    config: &Config,
    catalog: &Catalog,
    metrics: &Metrics,
) -> Arc<ClientTable> {
    Arc::new(ClientTable::new(
        &config.clients,
        config.apps.iter().map(|a| a.app_id.clone()).collect(),
        catalog,
        metrics,
    ))
}

/// The gateway's shared state: the quota keys (made on first use), the
/// store apps, and each route's contract. `redis` is the
/// replica's connection with `[quota] backend = "redis"`.
fn gateway(
    config: &Config,
    catalog: Catalog,
    tokens: Arc<TokenManager>,
    tickets: Vec<Option<Arc<TicketBox>>>,
    upstreams: Upstreams,
    metrics: Arc<Metrics>,
    redis: Option<&RedisConnection>,
) -> Result<Gateway, String> {
    let policy = PlanPolicy {
        margin: config.quota.margin,
        min_rate_fraction: config.quota.min_rate_fraction,
    };
    // No key is made here: the first request on an (app[, tenant], route)
    // makes its key (proxy/keys.rs). The engine itself holds none.
    let quota = Engine::from_config(&config.quota, Vec::new(), &metrics, redis)?;
    let resource_keys = ResourceKeys::new(
        quota.clone(),
        &catalog,
        &policy,
        config.quota.max_waiters,
        config.apps.iter().map(|a| a.app_id.clone()).collect(),
    )?;
    let quota_keys = QuotaKeys::new(
        quota,
        &catalog,
        &policy,
        config.quota.max_waiters,
        config.apps.iter().map(|a| a.app_id.clone()).collect(),
        Arc::clone(&metrics),
    )?;
    let store = Arc::new(StoreApps::new(&config.apps, tickets, Arc::clone(&metrics)));
    // The monthly budgets' counts: in Redis with the Redis backend (shared
    // by every replica), else in the process, kept in `state_dir` if set.
    let budget_store = match (redis, &config.state_dir) {
        (Some(conn), _) => BudgetStore::redis(conn.clone(), config.quota.key_prefix.clone()),
        (None, Some(dir)) => BudgetStore::Dir(dir.clone()),
        (None, None) => BudgetStore::Memory,
    };
    let budget = Arc::new(Budgets::new(
        &config.budget,
        config.apps.len(),
        &metrics,
        budget_store,
    ));
    let mut contracts = Contracts::for_catalog(&catalog);
    for (i, route) in catalog.routes().iter().enumerate() {
        if let Some(c) = contracts.get_mut(i) {
            *c = c.clone().with_unknown_fields(route.unknown_fields);
        }
    }
    Ok(Gateway {
        apps: config
            .apps
            .iter()
            .map(|a| {
                Ok(AppRoute {
                    name: a.name.clone(),
                    upstream: a.upstream.clone(),
                    host: HeaderValue::from_str(a.upstream.authority.as_str()).map_err(|_| {
                        format!("app {}: upstream host is not a header value", a.name)
                    })?,
                })
            })
            .collect::<Result<_, String>>()?,
        clients: client_table(config, &catalog, &metrics),
        issuer: TokenIssuer::new(
            config.sdk_tokens.signing_key.clone(),
            config.sdk_tokens.lifetime,
        ),
        catalog,
        contracts,
        tokens,
        store,
        upstreams,
        metrics,
        quota_keys,
        resource_keys,
        quota_config: config.quota.clone(),
        budget,
        max_body_bytes: config.max_body_bytes,
        body_read_timeout: config.timeouts.body_read,
        upstream_timeout: config.timeouts.upstream,
        upstream_idle: config.timeouts.upstream_idle,
        retries: Retries::new(config.retries.clone(), config.apps.len()),
    })
}
