//! Live reload: a new config replaces the running one without dropping a
//! connection or an in-flight request.
//!
//! The gateway's state is one [`Gateway`] value behind an
//! [`ArcSwap`](arc_swap::ArcSwap) ([`Live`]): every request loads the
//! current one when it starts and finishes on it, so a reload builds the
//! next generation beside the running one and swaps it in whole. What an
//! unchanged app holds (its token, quota keys, tenants, retry budget) is
//! handed to the new generation ([`super::build::generation`]); budgets
//! continue by group name; the old generation's late counts are added once
//! it has drained.
//!
//! What a reload can change: apps, clients and their keys, allow lists and
//! quota shares, routes and their limits, contracts' modes, budgets,
//! retries, token policy, SDK tokens, body limits and request timeouts,
//! the quota margin, waiters and overflow. What needs a restart, because
//! the process holds it (listeners, threads, connections, the log
//! subscriber, the trace exporter, the event hub's subscriptions and
//! queues): see [`restart_only`]; a reload that
//! changes one of those applies everything else and says so in the log.
//!
//! An invalid config changes nothing: every problem is logged (as
//! `check-config` prints them), `feishu_gateway_config_reloads_total
//! {result="invalid"}` counts it, and the old config keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use super::build::{self, Previous, Shared};
use crate::config::{Config, Environment, Problems};
use crate::endpoints::Catalog;
use crate::proxy::Gateway;
use crate::server::status::StatusPage;
use crate::tokens::AppConfig;

/// The gateway's current generation, swapped whole by a reload.
pub type Live = Arc<ArcSwap<Gateway>>;

/// The longest a reload waits for the old generation's in-flight requests
/// before it adds their budget counts anyway (a request still running then
/// is a stuck upload or a long wait; its count is added when it ends only
/// if it ends before this).
const DRAIN_WAIT: Duration = Duration::from_secs(600);

/// What a successful reload did, for its log line and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Apps whose state was carried over (unchanged entries).
    pub kept: Vec<String>,
    /// Apps that start afresh: new, or changed (secret, upstream, kind).
    pub fresh: Vec<String>,
    /// Apps no longer configured.
    pub removed: Vec<String>,
    /// Settings that changed but take effect at the next restart.
    pub restart_needed: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config has problems (every one listed).
    #[error("invalid config, the running one keeps serving:\n{0}")]
    Invalid(Problems),
    /// The parts could not be built from it (e.g. a quota plan).
    #[error("cannot build the new config, the running one keeps serving: {0}")]
    Build(String),
    /// The gateway was started without a config file.
    #[error("no config file to reload (started without one)")]
    NoFile,
}

/// One running generation: its config and its background tasks (token
/// refreshers, budget sync, store-app maintenance).
pub(super) struct Generation {
    pub(super) config: Config,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

/// Reloads: one at a time (a second SIGHUP waits for the first).
pub(super) struct Reloader {
    pub(super) live: Live,
    /// Shared with the status page (the long connections' state).
    pub(super) shared: Arc<Shared>,
    pub(super) current: tokio::sync::Mutex<Generation>,
    pub(super) path: std::sync::Mutex<Option<PathBuf>>,
    /// Where the status page reads the reload history.
    pub(super) status: Arc<StatusPage>,
}

impl Reloader {
    /// Reads the config file again (with `env` for the secrets) and
    /// reloads from it.
    pub(super) async fn reload_file(
        &self,
        env: &(dyn Environment + Sync),
    ) -> Result<Reloaded, ReloadError> {
        let path = self
            .path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(ReloadError::NoFile)?;
        let loaded = super::load_config(&path, env);
        self.reload(loaded).await
    }

    /// Replaces the running config with `loaded`, or, when it has problems,
    /// logs and counts them and changes nothing.
    pub(super) async fn reload(
        &self,
        loaded: Result<Config, Problems>,
    ) -> Result<Reloaded, ReloadError> {
        let started = std::time::Instant::now();
        let mut current = self.current.lock().await;
        let old = self.live.load_full();
        let outcome = match loaded {
            Err(problems) => Err(ReloadError::Invalid(problems)),
            Ok(new) => self.swap(&mut current, &old, new).await,
        };
        match &outcome {
            Ok(r) => {
                old.metrics().config_reload(true);
                self.status.record_reload(
                    true,
                    Vec::new(),
                    r.restart_needed.iter().map(|s| s.to_string()).collect(),
                );
                tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    kept = ?r.kept,
                    fresh = ?r.fresh,
                    removed = ?r.removed,
                    "config reloaded: new requests use the new config, in-flight ones finish on the old one"
                );
                if !r.restart_needed.is_empty() {
                    tracing::warn!(
                        settings = ?r.restart_needed,
                        "config reload: these settings changed but take effect only at the next restart (the running values stay)"
                    );
                }
            }
            Err(e) => {
                old.metrics().config_reload(false);
                let problems = match e {
                    ReloadError::Invalid(p) => p.0.iter().map(|p| p.to_string()).collect(),
                    other => vec![other.to_string()],
                };
                self.status.record_reload(false, problems, Vec::new());
                if let ReloadError::Invalid(problems) = e {
                    for p in &problems.0 {
                        tracing::error!(problem = %p, "config reload refused");
                    }
                }
                tracing::error!(error = %e, "config reload refused: the running config keeps serving");
            }
        }
        outcome
    }

    async fn swap(
        &self,
        current: &mut Generation,
        old: &Arc<Gateway>,
        new: Config,
    ) -> Result<Reloaded, ReloadError> {
        let restart_needed = restart_only(&current.config, &new);
        let config = effective(&current.config, new);
        let catalog = Catalog::with_overrides(&config.routes).map_err(ReloadError::Build)?;
        let apps = kept_apps(&current.config.apps, &config.apps);
        let names: Vec<String> = config.apps.iter().map(|a| a.name.clone()).collect();
        let removed: Vec<String> = current
            .config
            .apps
            .iter()
            .filter(|a| !names.contains(&a.name))
            .map(|a| a.name.clone())
            .collect();
        let metrics = Arc::new(
            old.metrics()
                .relabel(&names, &catalog.templates(), &removed),
        );
        // The old generation's budget counts go to their store first, so
        // the new generation starts from them (state_dir, Redis).
        old.budget().sync().await;
        let (gateway, carried) = build::generation(
            &config,
            catalog,
            metrics,
            &self.shared,
            Some(&Previous {
                gateway: old,
                apps: apps.clone(),
            }),
        )
        .map_err(ReloadError::Build)?;
        let gateway = Arc::new(gateway);
        let missing_tickets = gateway.store().load_tickets().await;
        let mut tasks = spawn_generation(&gateway, missing_tickets);
        self.live.store(Arc::clone(&gateway));
        // The old generation's tasks stop: its tokens were handed over, its
        // budget counts moved.
        for t in current.tasks.drain(..) {
            t.abort();
        }
        current.tasks.append(&mut tasks);
        tokio::spawn(absorb_when_drained(
            Arc::clone(old),
            Arc::downgrade(&gateway),
            carried.unwrap_or_default(),
        ));
        let (kept, fresh): (Vec<_>, Vec<_>) =
            names.iter().zip(&apps).partition(|(_, k)| k.is_some());
        let name =
            |v: Vec<(&String, &Option<usize>)>| v.into_iter().map(|(n, _)| n.clone()).collect();
        let (kept, fresh) = (name(kept), name(fresh));
        current.config = config;
        Ok(Reloaded {
            kept,
            fresh,
            removed,
            restart_needed,
        })
    }
}

/// Waits until no request runs on `old` any more, then adds the budget
/// counts it made after the carry to the generation that replaced it.
async fn absorb_when_drained(
    old: Arc<Gateway>,
    new: std::sync::Weak<Gateway>,
    carried: crate::budget::Carried,
) {
    let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
    while Arc::strong_count(&old) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(new) = new.upgrade() {
        new.budget().absorb(old.budget(), &carried);
    }
}

/// Which new app continues which old one: the same `[[apps]]` entry, by
/// name, with nothing changed (id, secret, upstream, kind and its
/// settings). `result[new] = Some(old index)`.
pub fn kept_apps(old: &[AppConfig], new: &[AppConfig]) -> Vec<Option<usize>> {
    new.iter()
        .map(|n| old.iter().position(|o| o == n))
        .collect()
}

/// The settings a reload cannot change, because the running process holds
/// what they built: listeners and their limits, worker threads, upstream
/// connections, the log subscriber, the trace exporter (`[tracing]`: one
/// per process, with its export thread), the state directory, the quota
/// backend and its Redis connection, the listener's certificate paths (the
/// certificate files themselves are reloaded on SIGHUP too), the event
/// hub (`[events]`, `[[subscriptions]]`, an app's `events` transport; its
/// webhook keys are reloaded). Returns the names of those that differ.
pub fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    let dbg = |v: &dyn std::fmt::Debug| format!("{v:?}");
    check("listen", old.listen != new.listen);
    check("admin_listen", old.admin_listen != new.admin_listen);
    check("listen_backlog", old.listen_backlog != new.listen_backlog);
    check(
        "max_connections",
        old.max_connections != new.max_connections,
    );
    check(
        "admin_max_connections",
        old.admin_max_connections != new.admin_max_connections,
    );
    check("workers", old.workers != new.workers);
    check(
        "tls_cert/tls_key",
        old.tls_cert != new.tls_cert || old.tls_key != new.tls_key,
    );
    check("state_dir", old.state_dir != new.state_dir);
    check("log", dbg(&old.log) != dbg(&new.log));
    check("tracing", old.tracing != new.tracing);
    check(
        "events ([events], [[subscriptions]], apps' events)",
        old.events.settings != new.events.settings
            || old.events.subscriptions != new.events.subscriptions
            || old
                .events
                .apps
                .iter()
                .map(|a| (&a.name, a.transport))
                .ne(new.events.apps.iter().map(|a| (&a.name, a.transport))),
    );
    check(
        "upstream connections (upstream_ca_file, [pool], timeouts.connect)",
        dbg(&old.upstream_settings()) != dbg(&new.upstream_settings()),
    );
    check(
        "timeouts.startup/shutdown_grace",
        old.timeouts.startup != new.timeouts.startup
            || old.timeouts.shutdown_grace != new.timeouts.shutdown_grace,
    );
    let (q, n) = (&old.quota, &new.quota);
    check(
        "quota backend (backend, redis_url / redis_sentinels / redis_cluster_nodes and their credentials, redis_ca_file, key_prefix, fail, replicas, redis_timeout)",
        q.backend != n.backend
            || q.redis != n.redis
            || q.redis_ca_file != n.redis_ca_file
            || q.key_prefix != n.key_prefix
            || q.fail != n.fail
            || q.replicas != n.replicas
            || q.redis_timeout != n.redis_timeout,
    );
    changed
}

/// `new`, with the restart-only settings of `old` (those stay in force
/// until the next restart).
pub fn effective(old: &Config, mut new: Config) -> Config {
    new.listen = old.listen;
    new.admin_listen = old.admin_listen;
    new.listen_backlog = old.listen_backlog;
    new.max_connections = old.max_connections;
    new.admin_max_connections = old.admin_max_connections;
    new.workers = old.workers;
    new.tls_cert = old.tls_cert.clone();
    new.tls_key = old.tls_key.clone();
    new.state_dir = old.state_dir.clone();
    new.log = old.log.clone();
    new.tracing = old.tracing.clone();
    // The hub's queues and subscriptions stay; the apps' webhook keys are
    // read again (the intake is built per generation).
    new.events.settings = old.events.settings.clone();
    new.events.subscriptions = old.events.subscriptions.clone();
    new.upstream_ca_file = old.upstream_ca_file.clone();
    new.pool = old.pool.clone();
    new.timeouts.connect = old.timeouts.connect;
    new.timeouts.startup = old.timeouts.startup;
    new.timeouts.shutdown_grace = old.timeouts.shutdown_grace;
    let q = &old.quota;
    new.quota.backend = q.backend;
    new.quota.redis = q.redis.clone();
    new.quota.redis_ca_file = q.redis_ca_file.clone();
    new.quota.key_prefix = q.key_prefix.clone();
    new.quota.fail = q.fail;
    new.quota.replicas = q.replicas;
    new.quota.redis_timeout = q.redis_timeout;
    new
}

/// Starts the background tasks of one generation: every app's token
/// refresher, the budget sync, the store apps' maintenance, and a resend
/// request for each store app without a kept ticket (`missing_tickets`).
pub(super) fn spawn_generation(
    gateway: &Arc<Gateway>,
    missing_tickets: Vec<Arc<crate::tokens::ticket::TicketBox>>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = gateway.tokens().spawn_refreshers();
    tasks.push(gateway.budget().spawn_sync());
    tasks.extend(gateway.store().spawn_maintenance());
    if !missing_tickets.is_empty() {
        tasks.push(tokio::spawn(async move {
            for ticket in missing_tickets {
                if let Err(e) = ticket.resend().await {
                    tracing::warn!(code = e.code, msg = %e.msg, "app_ticket resend failed");
                }
            }
        }));
    }
    tasks
}
