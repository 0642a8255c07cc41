//! The quota keys the `admit` phase acquires, made on first use: one per
//! (app, limited route), and one per (app, tenant, limited route) for store
//! apps. A catalog of 1,559 endpoints times the configured apps costs a
//! table of empty slots (16 bytes each) until an endpoint is called; its
//! key and its metric series are made by the first request that needs them.
//!
//! Every plan is made and checked at start ([`QuotaKeys::new`]), so making a
//! key later cannot fail on configuration.
//!
//! A client with a `quota_share` also gets a **share key** per (app[,
//! tenant], route) key it uses ([`QuotaKeys::share_key`]): the app key's
//! windows scaled by the share, named after the app key and the client (so
//! the Redis backend keeps it apart and every replica shares it), made on
//! first use. [`acquire`] takes the share key first, then the app key, and
//! gives the share's slot back when the app key refuses (`docs/quota.md`,
//! "Client shares").

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::Client;
use crate::endpoints::Catalog;
use crate::observe::metrics::{Metrics, QuotaPairMetrics};
use crate::quota::{Admit, Cause, Overflow, Rejection, Share};
use crate::quota::{Backoff, Engine, Key, KeySpec, PauseCell, Plan, PlanPolicy};
use crate::store_apps::Tenant;

/// What the gateway holds for one (app, route) pair once it is used: its
/// quota key (limited routes) or its pause (the others), and the backoff
/// after Feishu's throttle answers.
///
/// Its state is shared by `Arc`, so a live reload that keeps the app and
/// the route's limits hands the same state to the new table
/// ([`QuotaKeys::carry`]).
pub struct PairKey {
    /// The quota key, on a limited route (it carries its own pause).
    pub key: Option<Arc<Key>>,
    /// The pause after Feishu's throttle answers, on a route without a
    /// gateway quota (`special` or no documented limit).
    pub pause: Arc<PauseCell>,
    /// How long the next pause lasts when Feishu says no reset time.
    pub backoff: Arc<Backoff>,
    /// Waiting gauge and wait histogram of the pair: made when a request
    /// first waits here.
    wait_metrics: OnceLock<QuotaPairMetrics>,
    app: usize,
    route: usize,
}

impl PairKey {
    /// The pair's wait-mode metrics, made on first use.
    pub fn wait_metrics(&self, metrics: &Metrics) -> &QuotaPairMetrics {
        self.wait_metrics
            .get_or_init(|| metrics.quota_wait(self.app, self.route))
    }
}

/// Every (app, route) key, made on first use.
pub struct QuotaKeys {
    engine: Engine,
    metrics: Arc<Metrics>,
    /// Per route: the spec of its keys (unnamed) and the name suffix
    /// (`"METHOD template"`); `None` where the route has no limits.
    routes: Vec<Option<(KeySpec, String)>>,
    /// Per route: `"METHOD template"`, what a reload matches routes by.
    names: Vec<String>,
    /// Per app: its Feishu app id, the first part of its keys' names.
    app_ids: Vec<String>,
    /// At `app * routes + route`.
    slots: Box<[OnceLock<Box<PairKey>>]>,
    /// What share keys are planned with.
    policy: PlanPolicy,
    max_waiters: u32,
    /// The share keys of self-built apps' clients with a `quota_share`, by
    /// client name (a store app's tenants hold theirs).
    shares: RwLock<HashMap<String, Arc<ClientShares>>>,
}

/// One client's share keys on its app, per route, made on first use. A
/// client whose app or share is not these any more (a changed config) gets
/// a new table.
struct ClientShares {
    app: usize,
    share: Share,
    /// Per route; `None` inside: the route has no limits.
    slots: Box<[OnceLock<Option<Arc<Key>>>]>,
}

/// Why [`acquire`] refused a request. Neither spent anything.
#[derive(Debug)]
pub enum Refusal {
    /// The client's share key: it used its share of the app's quota.
    Share(Rejection),
    /// The app key (the app's, or a store app tenant's): the app's quota.
    App(Rejection),
}

impl std::fmt::Debug for QuotaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaKeys")
            .field("routes", &self.routes.len())
            .field("apps", &self.app_ids.len())
            .finish_non_exhaustive()
    }
}

impl QuotaKeys {
    /// The table for `app_ids` (by app index) over `catalog`: plans every
    /// limited route with `policy` and checks that the engine can make a
    /// key of each distinct plan (e.g. split between the replicas), so
    /// that making keys later cannot fail.
    pub fn new(
        engine: Engine,
        catalog: &Catalog,
        policy: &PlanPolicy,
        max_waiters: u32,
        app_ids: Vec<String>,
        metrics: Arc<Metrics>,
    ) -> Result<QuotaKeys, String> {
        let mut checked = HashSet::new();
        let mut routes = Vec::with_capacity(catalog.routes().len());
        let names = catalog
            .routes()
            .iter()
            .map(|r| format!("{} {}", r.method, r.template))
            .collect();
        for route in catalog.routes() {
            if route.limits.is_empty() {
                routes.push(None);
                continue;
            }
            let plan = Plan::new(&route.limits, policy)
                .map_err(|e| format!("route {}: {e}", route.template))?;
            let spec = KeySpec::new(plan, max_waiters);
            if checked.insert(spec.plan().to_string()) {
                let key = engine
                    .key(&spec.clone().with_name(format!("check:{}", route.template)))
                    .map_err(|e| format!("route {} {}: {e}", route.method, route.template))?;
                if key.closed_in_outage() {
                    tracing::warn!(
                        limits = %spec.plan(),
                        example = %route.template,
                        "limits smaller than quota.replicas have no local share: during a Redis outage, routes with them answer 503 on every replica"
                    );
                }
                tracing::debug!(route = %route.template, plan = %spec.plan(), "quota plan");
            }
            routes.push(Some((spec, format!("{} {}", route.method, route.template))));
        }
        tracing::info!(
            routes = catalog.routes().len(),
            limited = routes.iter().flatten().count(),
            plans = checked.len(),
            "quota plans made; keys are made on first use"
        );
        let slots = (0..app_ids.len() * routes.len())
            .map(|_| OnceLock::new())
            .collect();
        Ok(QuotaKeys {
            engine,
            metrics,
            routes,
            names,
            app_ids,
            slots,
            policy: *policy,
            max_waiters,
            shares: RwLock::new(HashMap::new()),
        })
    }

    /// The engine keys are made on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What `app` holds on `route`, made now if this is its first use.
    pub fn app_key(&self, app: usize, route: usize) -> Option<&PairKey> {
        let slot = self.slots.get(app * self.routes.len() + route)?;
        let pair = slot.get_or_init(|| {
            let limited = self.routes.get(route).and_then(Option::as_ref);
            let app_id = self.app_ids.get(app).map_or("", String::as_str);
            let key =
                limited.and_then(|(spec, suffix)| self.make(spec, format!("{app_id}:{suffix}")));
            if let Some((spec, _)) = limited {
                let windows = spec.plan().windows().map(|w| (w.to_string(), w.limit()));
                self.metrics
                    .quota_limits(app, route, windows.collect::<Vec<_>>());
            }
            Box::new(PairKey {
                key: key.map(Arc::new),
                pause: Arc::default(),
                backoff: Arc::default(),
                wait_metrics: OnceLock::new(),
                app,
                route,
            })
        });
        Some(pair)
    }

    /// Every (app, route) pair made so far, with what it holds: what the
    /// status page lists. Reads the table's slots (no lock).
    pub fn in_use(&self) -> impl Iterator<Item = (usize, usize, &PairKey)> {
        let n = self.routes.len().max(1);
        self.slots
            .iter()
            .enumerate()
            .filter_map(move |(i, s)| s.get().map(|p| (i / n, i % n, &**p)))
    }

    /// The windows of `route`'s limits as (`"50/1s"`, 50); empty for a
    /// route without a gateway quota.
    pub fn limits(&self, route: usize) -> Vec<(String, u32)> {
        match self.routes.get(route).and_then(Option::as_ref) {
            Some((spec, _)) => spec
                .plan()
                .windows()
                .map(|w| (w.to_string(), w.limit()))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Which route of `old` each route of this table continues
    /// (`map[new] = Some(old)`): the same method and template, planned the
    /// same way (same limits and margin, same waiter cap). Keys of such
    /// routes are carried by a live reload; the others start afresh.
    pub fn route_map(&self, old: &QuotaKeys) -> Vec<Option<usize>> {
        let by_name: std::collections::HashMap<&str, usize> = old
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        self.names
            .iter()
            .zip(&self.routes)
            .map(|(name, limited)| {
                let o = *by_name.get(name.as_str())?;
                let same = match (limited, &old.routes[o]) {
                    (None, None) => true,
                    (Some((a, _)), Some((b, _))) => a.same_plan(b),
                    _ => false,
                };
                same.then_some(o)
            })
            .collect()
    }

    /// A live reload: every pair `old` made for an app the reload kept
    /// (`apps[new] = Some(old)`) on a route it continues (`routes`, from
    /// [`QuotaKeys::route_map`]) is handed over with its state (the key's
    /// windows and waiters, its pause, its backoff). With the Redis backend
    /// the state is in Redis under the same name anyway; in process this is
    /// what keeps a reload from forgetting what was admitted.
    pub fn carry(&self, old: &QuotaKeys, apps: &[Option<usize>], routes: &[Option<usize>]) {
        let (n, o) = (self.routes.len(), old.routes.len());
        for (app, from_app) in apps.iter().enumerate() {
            let Some(from_app) = *from_app else { continue };
            for (route, from_route) in routes.iter().enumerate() {
                let Some(from_route) = *from_route else {
                    continue;
                };
                let Some(pair) = old
                    .slots
                    .get(from_app * o + from_route)
                    .and_then(OnceLock::get)
                else {
                    continue;
                };
                let carried = PairKey {
                    key: pair.key.clone(),
                    pause: Arc::clone(&pair.pause),
                    backoff: Arc::clone(&pair.backoff),
                    wait_metrics: pair.wait_metrics.clone(),
                    app,
                    route,
                };
                if let Some(slot) = self.slots.get(app * n + route) {
                    let _ = slot.set(Box::new(carried));
                }
            }
        }
        self.carry_shares(old, apps, routes);
    }

    /// The clients' share keys of a live reload, as [`QuotaKeys::carry`]
    /// hands over the pairs: each client's table on an app the reload kept,
    /// with its keys on the routes it continues, when the shares are planned
    /// alike (same policy and waiter cap). A client whose app or share
    /// changed gets a new table on its next request ([`QuotaKeys::share_key`]
    /// looks them up by both).
    fn carry_shares(&self, old: &QuotaKeys, apps: &[Option<usize>], routes: &[Option<usize>]) {
        if self.policy != old.policy || self.max_waiters != old.max_waiters {
            return;
        }
        let before = old.shares.read().unwrap_or_else(|e| e.into_inner());
        let mut shares = self.shares.write().unwrap_or_else(|e| e.into_inner());
        for (client, table) in before.iter() {
            let Some(app) = apps.iter().position(|from| *from == Some(table.app)) else {
                continue;
            };
            let slots = routes
                .iter()
                .map(|from| {
                    let slot = OnceLock::new();
                    let made = from.and_then(|o| table.slots.get(o)?.get().cloned());
                    if let Some(key) = made {
                        let _ = slot.set(key);
                    }
                    slot
                })
                .collect();
            let carried = ClientShares {
                app,
                share: table.share,
                slots,
            };
            shares.insert(client.clone(), Arc::new(carried));
        }
    }

    /// The key of a store app's `tenant` on `route`, made now if this is
    /// its first use; `None` when the route has no limits. Named
    /// `"<tenant>@<app's key name>"`, so every replica shares it in Redis.
    pub fn tenant_key(&self, tenant: &Tenant, app: usize, route: usize) -> Option<Arc<Key>> {
        let (spec, suffix) = self.routes.get(route)?.as_ref()?;
        tenant.quota_key(route, || {
            let name = format!("{}@{}:{suffix}", tenant.key, self.app_ids.get(app)?);
            self.make(spec, name)
        })
    }

    /// Every share key of a self-built app's client made so far, as
    /// (client, app, share, route, key): what the status page lists. Takes
    /// the share table's read lock, as requests do (never its write lock).
    pub fn shares_in_use(&self) -> Vec<(String, usize, Share, usize, Arc<Key>)> {
        let shares = self.shares.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (client, table) in shares.iter() {
            for (route, slot) in table.slots.iter().enumerate() {
                if let Some(Some(key)) = slot.get() {
                    out.push((
                        client.clone(),
                        table.app,
                        table.share,
                        route,
                        Arc::clone(key),
                    ));
                }
            }
        }
        out
    }

    /// The share key of `client` on `route` (with its `tenant` for a store
    /// app's client), made now if this is its first use; `None` when the
    /// client has no share (or a whole one) or the route no limits. Its
    /// windows are the route's scaled by the share ([`Share::scale`]),
    /// planned like the app's; it is named `"<app key name>#share=<client>"`,
    /// so every replica shares it in Redis.
    pub fn share_key(
        &self,
        client: &Client,
        tenant: Option<&Tenant>,
        route: usize,
    ) -> Option<Arc<Key>> {
        let share = client.quota_share.filter(|s| !s.is_whole())?;
        let (spec, suffix) = self.routes.get(route)?.as_ref()?;
        let app_id = self.app_ids.get(client.app)?;
        let make = |name: String| self.make_share(spec, share, name, &client.name);
        if let Some(t) = tenant {
            return t.share_key(route, &client.name, share, || {
                make(format!("{}@{app_id}:{suffix}#share={}", t.key, client.name))
            });
        }
        let table = self.client_shares(client, share);
        let slot = table.slots.get(route)?;
        slot.get_or_init(|| make(format!("{app_id}:{suffix}#share={}", client.name)).map(Arc::new))
            .clone()
    }

    /// The table of `client`'s share keys, made on its first request.
    fn client_shares(&self, client: &Client, share: Share) -> Arc<ClientShares> {
        let fits = |t: &ClientShares| t.app == client.app && t.share == share;
        let shares = self.shares.read().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = shares.get(&client.name).filter(|t| fits(t)) {
            return Arc::clone(t);
        }
        drop(shares);
        let mut shares = self.shares.write().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = shares.get(&client.name).filter(|t| fits(t)) {
            return Arc::clone(t);
        }
        let table = Arc::new(ClientShares {
            app: client.app,
            share,
            slots: (0..self.routes.len()).map(|_| OnceLock::new()).collect(),
        });
        shares.insert(client.name.clone(), Arc::clone(&table));
        table
    }

    /// A share key: `spec`'s windows scaled by `share`, planned by the
    /// app keys' policy.
    fn make_share(&self, spec: &KeySpec, share: Share, name: String, client: &str) -> Option<Key> {
        let windows = share.scale_all(spec.plan().windows());
        let plan = match Plan::new(&windows, &self.policy) {
            Ok(plan) => plan,
            Err(e) => {
                // The policy was checked at start: not expected.
                tracing::error!(client, error = %e, "cannot plan a quota share: the client is held by the app's quota alone");
                return None;
            }
        };
        tracing::debug!(client, key = %name, plan = %plan, "quota share key");
        self.make(&KeySpec::new(plan, self.max_waiters), name)
    }

    fn make(&self, spec: &KeySpec, name: String) -> Option<Key> {
        match self.engine.key(&spec.clone().with_name(name)) {
            Ok(key) => Some(key),
            Err(e) => {
                // Every plan was checked at start: not expected.
                tracing::error!(error = %e, "cannot make a quota key: admitted without one");
                None
            }
        }
    }
}

/// Admits one request by its keys: the client's `share` key first (when it
/// has one), then `key`, the (app[, tenant], route) key, with what is left
/// of the wait. Only `key` decides what reaches Feishu; the share key only
/// refuses more. A request the share key admitted and `key` refused gives
/// the share's slot back (and so does one dropped meanwhile, its client
/// gone), so the app's refusals cost the client none of its share. A share
/// key whose backend cannot decide (Redis away with `fail = "closed"`, or
/// with `fail = "local"` a share too small to split between the replicas)
/// is passed over: `key` decides alone, as for a client without a share.
pub async fn acquire(
    share: Option<&Arc<Key>>,
    key: &Key,
    overflow: Overflow,
) -> Result<Admit, Refusal> {
    let started = Instant::now();
    let mut held = GiveBack(None);
    let mut share_admit = None;
    if let Some(s) = share {
        match s.acquire(overflow).await {
            Ok(admit) => {
                held = GiveBack(Some(Arc::clone(s)));
                share_admit = Some(admit);
            }
            Err(r) if r.cause() == Cause::BackendUnavailable => {}
            Err(r) => return Err(Refusal::Share(r)),
        }
    }
    let rest = match overflow {
        Overflow::Reject => Overflow::Reject,
        Overflow::Wait(max) => Overflow::Wait(max.saturating_sub(started.elapsed())),
    };
    match key.acquire(rest).await {
        Ok(admit) => {
            held.keep();
            let waited = share_admit.map_or(Duration::ZERO, |a| a.waited);
            Ok(Admit {
                remaining: share_admit
                    .map_or(admit.remaining, |s| s.remaining.min(admit.remaining)),
                waited: if waited.is_zero() && admit.waited.is_zero() {
                    Duration::ZERO
                } else {
                    started.elapsed()
                },
            })
        }
        Err(r) => {
            held.give_back().await;
            Err(Refusal::App(r))
        }
    }
}

/// A share key's slot the request holds until its app key decides: given
/// back when it is dropped undecided (the request dropped while waiting
/// for the app key).
struct GiveBack(Option<Arc<Key>>);

impl GiveBack {
    /// The app key admitted the request: the slot is spent.
    fn keep(&mut self) {
        self.0 = None;
    }

    /// The app key refused: the slot goes back, now.
    async fn give_back(&mut self) {
        if let Some(k) = self.0.take() {
            k.give_back().await;
        }
    }
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        if let Some(k) = self.0.take() {
            k.give_back_detached();
        }
    }
}
