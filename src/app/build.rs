//! The composition root: the only code that turns a [`Config`] into the
//! gateway's parts — catalog, metrics, upstream connections, the Redis
//! connection, app_ticket store, token manager, quota engine and keys, store
//! apps, monthly budgets, contracts, the trace exporter, the event hub — and
//! the listener's TLS. Domain modules never read the config; they are handed what they need
//! here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::StartError;
use crate::auth::sdk_token::TokenIssuer;
use crate::auth::ClientTable;
use crate::budget::{Budgets, Carried, Store as BudgetStore};
use crate::config::{Config, Environment, Problems};
use crate::endpoints::{Catalog, Contracts};
use crate::events::long_connection::{
    self, LongConnectionApp, LongConnectionMetrics, LongConnections,
};
use crate::events::webhook::Intake;
use crate::events::{EventHub, Transport};
use crate::observe::metrics::Metrics;
use crate::observe::trace::{OtlpTransport, Tracing};
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

/// What lives as long as the process, whatever a live reload changes: the
/// metric families, the upstream connections, the Redis connection, the
/// app_ticket store, the quota engine, the trace exporter and the event
/// hub. A config
/// change to what they are built from takes effect at the next restart
/// (`super::reload`).
pub(super) struct Shared {
    upstreams: Upstreams,
    redis: Option<RedisConnection>,
    ticket_store: Arc<dyn TicketStore>,
    engine: Engine,
    tracing: Option<Arc<Tracing>>,
    /// The event hub: its subscriber queues outlive a reload.
    events: EventHub,
    /// The long connections to Feishu (apps with `events =
    /// "long_connection"`), handing their events to the hub; taken at
    /// shutdown to close them and release their leases.
    long_connections: std::sync::Mutex<Option<LongConnections>>,
}

impl Shared {
    /// The event hub.
    pub(super) fn events(&self) -> &EventHub {
        &self.events
    }

    /// Each long-connection app's client now (for the status page),
    /// without taking them: none without such apps, or once the shutdown
    /// took them.
    pub(super) fn long_connections_status(&self) -> Vec<long_connection::AppStatus> {
        self.long_connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(LongConnections::status)
            .unwrap_or_default()
    }

    /// The long connections, once: for the shutdown.
    pub(super) fn take_long_connections(&self) -> Option<LongConnections> {
        self.long_connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// The trace exporter, when `[tracing]` is enabled.
    pub(super) fn tracing(&self) -> Option<&Arc<Tracing>> {
        self.tracing.as_ref()
    }
}

/// With `[tracing] enabled`: the process's tracer and its OTLP/HTTP
/// exporter, which sends through a hyper-util client of its own on the
/// gateway's connector (rustls with ring; the public roots and
/// `upstream_ca_file`), driven by the current runtime.
fn start_tracing(config: &Config) -> Result<Option<Arc<Tracing>>, StartError> {
    if !config.tracing.enabled {
        return Ok(None);
    }
    let settings = crate::upstream::Settings {
        max_idle_per_host: 2,
        ..config.upstream_settings()
    };
    let client = crate::upstream::build_client(&settings).map_err(StartError::Upstream)?;
    let transport = OtlpTransport::new(
        client,
        tokio::runtime::Handle::current(),
        config.tracing.export_timeout,
    );
    let tracing = Tracing::start(&config.tracing, transport).map_err(StartError::Config)?;
    tracing::info!(
        endpoint = %config.tracing.endpoint,
        sampling_ratio = config.tracing.sampling_ratio,
        service_name = %config.tracing.service_name,
        "tracing: spans are exported over OTLP/HTTP"
    );
    Ok(Some(tracing))
}

/// The event hub: one delivery task per `[[subscriptions]]` entry, sending
/// through a hyper-util client of its own on the gateway's connector (the
/// public roots and `upstream_ca_file`); with the Redis backend it
/// de-duplicates across replicas on the replica's Redis connection.
fn start_events(
    config: &Config,
    metrics: &Metrics,
    redis: Option<&RedisConnection>,
) -> Result<EventHub, StartError> {
    let settings = crate::upstream::Settings {
        max_idle_per_host: 4,
        ..config.upstream_settings()
    };
    let client = crate::upstream::build_client(&settings).map_err(StartError::Upstream)?;
    let redis = redis.map(|c| (c.clone(), config.quota.key_prefix.clone()));
    Ok(EventHub::start(
        &config.events,
        client,
        redis,
        metrics.events(),
    ))
}

/// One WebSocket to Feishu per app with `events = "long_connection"`
/// (self-built apps), made through the gateway's upstream settings (the
/// public roots and `upstream_ca_file` for `wss`), handing every event to
/// the hub. With Redis, a lease lets one replica at a time hold an app's
/// connection; without, each replica connects (Feishu gives each event to
/// one of them).
fn start_long_connections(
    config: &Config,
    metrics: &Metrics,
    redis: Option<&RedisConnection>,
    hub: &EventHub,
) -> Result<Option<LongConnections>, StartError> {
    let apps: Vec<LongConnectionApp> = config
        .apps
        .iter()
        .zip(&config.events.apps)
        .filter(|(_, e)| e.transport == Transport::LongConnection)
        .map(|(a, _)| LongConnectionApp {
            name: a.name.clone(),
            app_id: a.app_id.clone(),
            secret: a.app_secret.clone(),
            upstream: a.upstream.clone(),
        })
        .collect();
    if apps.is_empty() {
        return Ok(None);
    }
    let transport = long_connection::Transport::new(&config.upstream_settings())
        .map_err(StartError::Upstream)?;
    let lc_metrics = LongConnectionMetrics::register(metrics.registry())?;
    let lease = redis.map(|r| long_connection::LeaseConfig {
        redis: r.clone(),
        key_prefix: config.quota.key_prefix.clone(),
    });
    Ok(Some(long_connection::start(
        apps,
        transport,
        Arc::new(hub.clone()),
        long_connection::Settings {
            // The hub answers a card callback by `card_deadline` (with the
            // fallback at worst); the ack waits a little longer for it,
            // within Feishu's 3 s.
            ack_deadline: (config.events.settings.card_deadline + Duration::from_millis(300))
                .clamp(Duration::from_millis(2500), Duration::from_millis(2950)),
            ..long_connection::Settings::default()
        },
        lease,
        &lc_metrics,
    )))
}

/// The parts a [`Runtime`](super::Runtime) serves with.
pub(super) struct Parts {
    pub(super) shared: Shared,
    pub(super) gateway: Arc<Gateway>,
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
    // No key is made here: the first request on an (app[, tenant], route)
    // makes its key (proxy/keys.rs). The engine itself holds none.
    let engine = Engine::from_config(&config.quota, Vec::new(), &metrics, redis.as_ref())
        .map_err(StartError::Config)?;
    let events = start_events(config, &metrics, redis.as_ref())?;
    let long_connections = start_long_connections(config, &metrics, redis.as_ref(), &events)?;
    let shared = Shared {
        upstreams,
        redis,
        ticket_store,
        engine,
        tracing: start_tracing(config)?,
        events,
        long_connections: std::sync::Mutex::new(long_connections),
    };
    let (gateway, _) =
        generation(config, catalog, metrics, &shared, None).map_err(StartError::Config)?;
    Ok(Parts {
        shared,
        gateway: Arc::new(gateway),
    })
}

/// What a live reload carries from the generation it replaces: which new
/// app continues which old one (`apps[new] = Some(old)`: the same `[[apps]]`
/// entry, unchanged). Everything an unchanged app holds — its token, its
/// quota keys, its tenants, its retry budget — is handed over; a new or
/// changed app (another secret, another upstream) starts afresh.
pub(super) struct Previous<'a> {
    pub(super) gateway: &'a Gateway,
    pub(super) apps: Vec<Option<usize>>,
}

/// One generation of the gateway's state from `config`: the catalog and its
/// contracts, clients, tokens, quota keys, store apps, budgets; carried over
/// from `previous` where it continues. `metrics` carries this config's
/// label tables over the process's families. With `previous`, also what
/// the budgets carried (for [`Budgets::absorb`] once the old generation has
/// drained).
pub(super) fn generation(
    config: &Config,
    catalog: Catalog,
    metrics: Arc<Metrics>,
    shared: &Shared,
    previous: Option<&Previous<'_>>,
) -> Result<(Gateway, Option<Carried>), String> {
    let client = shared.upstreams.shared().clone();
    let mut tickets = TicketBox::for_apps(
        &config.apps,
        &client,
        &shared.ticket_store,
        config.token.fetch_timeout,
        &metrics,
    );
    if let Some(p) = previous {
        // A kept store app keeps its ticket box (the ticket in memory, its
        // resend state).
        for (ticket, from) in tickets.iter_mut().zip(&p.apps) {
            if let Some(old) = from.and_then(|f| p.gateway.store.ticket(f)) {
                *ticket = Some(old);
            }
        }
    }
    let tokens = Arc::new(TokenManager::new(
        &config.apps,
        &tickets,
        client,
        config.token.clone(),
        Arc::clone(&metrics),
    ));
    let policy = PlanPolicy {
        margin: config.quota.margin,
        min_rate_fraction: config.quota.min_rate_fraction,
    };
    let app_ids: Vec<String> = config.apps.iter().map(|a| a.app_id.clone()).collect();
    let mut resource_keys = ResourceKeys::new(
        shared.engine.clone(),
        &catalog,
        &policy,
        config.quota.max_waiters,
        app_ids.clone(),
    )?;
    let quota_keys = QuotaKeys::new(
        shared.engine.clone(),
        &catalog,
        &policy,
        config.quota.max_waiters,
        app_ids,
        Arc::clone(&metrics),
    )?;
    let store = Arc::new(StoreApps::new(&config.apps, tickets, Arc::clone(&metrics)));
    // The monthly budgets' counts: in Redis with the Redis backend (shared
    // by every replica), else in the process, kept in `state_dir` if set.
    let budget_store = match (&shared.redis, &config.state_dir) {
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
    let mut retries = Retries::new(config.retries.clone(), config.apps.len());
    let mut carried_budget = None;
    if let Some(p) = previous {
        let old = p.gateway;
        tokens.carry(&old.tokens, &p.apps);
        let routes = quota_keys.route_map(&old.quota_keys);
        quota_keys.carry(&old.quota_keys, &p.apps, &routes);
        resource_keys.carry(&old.resource_keys, &p.apps);
        store.carry(&old.store, &p.apps, &routes, &tokens);
        carried_budget = Some(budget.carry(&old.budget));
        retries.carry(&old.retries, &p.apps);
    }
    let mut contracts = Contracts::for_catalog(&catalog);
    for (i, route) in catalog.routes().iter().enumerate() {
        if let Some(c) = contracts.get_mut(i) {
            *c = c.clone().with_unknown_fields(route.unknown_fields);
        }
    }
    let gateway = Gateway {
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
        events: shared.events.clone(),
        event_intake: Intake::new(&config.events.apps),
        upstreams: shared.upstreams.clone(),
        metrics,
        quota_keys,
        resource_keys,
        quota_config: config.quota.clone(),
        budget,
        max_body_bytes: config.max_body_bytes,
        body_read_timeout: config.timeouts.body_read,
        upstream_timeout: config.timeouts.upstream,
        upstream_idle: config.timeouts.upstream_idle,
        retries,
        tracing: shared.tracing.clone(),
    };
    Ok((gateway, carried_budget))
}

/// The client table: every client's keys, app, tenant and allow list
/// (compiled against `catalog`).
fn client_table(config: &Config, catalog: &Catalog, metrics: &Metrics) -> Arc<ClientTable> {
    Arc::new(ClientTable::new(
        &config.clients,
        config.apps.iter().map(|a| a.app_id.clone()).collect(),
        catalog,
        metrics,
    ))
}
