//! Store apps (ISV): their tenants, their app_tickets as Feishu pushes
//! them, and the verifier of Feishu's pushes ([`callback`], used by the
//! event endpoint for apps of both kinds, `crate::events`).
//!
//! A store app is installed by many tenants. Its credentials come in three
//! steps, each kept here or in [`crate::tokens`]:
//! 1. Feishu pushes an **app_ticket** to the event endpoint about once an
//!    hour ([`TicketBox`]). It is persisted ([`crate::tokens::ticket_store`]) so a
//!    restart does not wait for the next push; with none (or a stale one) the
//!    gateway asks Feishu to resend it. Kept in Redis, it is shared: the
//!    push reaches one replica and every replica uses it.
//! 2. The ticket buys the **app token** (a [`crate::tokens::TokenSlot`] per
//!    app, refreshed in the background like a self-built app's token).
//! 3. The app token buys one **tenant token** per tenant ([`Tenant`]),
//!    refreshed ahead of expiry while the tenant is in use.
//!
//! Tenant keys come from callers (`X-Tenant-Key`), so the tenants held per
//! app are bounded (`max_tenants`, least recently used evicted first) and
//! idle tenants are dropped (`tenant_idle_timeout`). Each tenant carries its
//! own quota keys, made on first use by the request path
//! ([`Tenant::quota_key`]): Feishu's limits hold per app AND per tenant;
//! and the share keys of clients with a `quota_share`
//! ([`Tenant::share_key`]), which go with the tenant.
//! With the Redis backend they are shared by every replica, keyed per (app,
//! tenant, route), and expire in Redis when idle.

pub mod callback;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::observe::metrics::Metrics;
use crate::quota::{Key, Share};
use crate::secret::Secret;
use crate::tokens::{AppConfig, AppKind, TokenManager, TokenSlot};
use crate::upstream::Upstream;

use crate::tokens::ticket::{TicketBox, TICKET_SYNC_INTERVAL};
/// Longest tenant key accepted from a caller.
const MAX_TENANT_KEY: usize = 128;

/// Why no tenant could be had for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantError {
    /// The tenant key is not one Feishu could have issued (letters, digits,
    /// `-` or `_`, at most 128).
    BadKey,
    /// The app is not a store app (a bug: the caller checks first).
    NotStoreApp,
}

/// Why an event callback was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackRefused {
    /// No app of that name takes webhook pushes.
    UnknownApp,
    /// Signature, timestamp or verification token wrong.
    Unauthenticated,
    /// Not decryptable, not an event, or another app's ticket.
    Invalid,
}

/// One tenant of a store app: its token and its quota keys.
pub struct Tenant {
    /// The tenant key.
    pub key: Arc<str>,
    /// Its tenant token.
    pub slot: Arc<TokenSlot>,
    /// Its quota keys by catalog route, made on first use.
    quota_keys: RwLock<HashMap<usize, Arc<Key>>>,
    /// The share keys of clients with a `quota_share`, by catalog route:
    /// (client, share, key), made on first use.
    share_keys: RwLock<ShareKeys>,
    last_used_ms: AtomicU64,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A tenant's share keys: per catalog route, each client's (with its
/// share: a key made for another share is not reused).
type ShareKeys = HashMap<usize, Vec<(Arc<str>, Share, Arc<Key>)>>;

impl Tenant {
    /// The tenant's quota key for catalog route `route`: the one made
    /// before, or the one `make` makes now (`None`: no key).
    pub fn quota_key(&self, route: usize, make: impl FnOnce() -> Option<Key>) -> Option<Arc<Key>> {
        if let Some(k) = read(&self.quota_keys).get(&route) {
            return Some(Arc::clone(k));
        }
        let mut keys = self.quota_keys.write().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = keys.get(&route) {
            return Some(Arc::clone(k));
        }
        let key = Arc::new(make()?);
        keys.insert(route, Arc::clone(&key));
        Some(key)
    }

    /// The share key of `client` (with `share`) on this tenant's key for
    /// `route`: the one made before, or the one `make` makes now (`None`:
    /// no key). Dropped with the tenant.
    pub fn share_key(
        &self,
        route: usize,
        client: &str,
        share: Share,
        make: impl FnOnce() -> Option<Key>,
    ) -> Option<Arc<Key>> {
        let find = |keys: &ShareKeys| {
            keys.get(&route)?
                .iter()
                .find(|(c, s, _)| &**c == client && *s == share)
                .map(|(_, _, k)| Arc::clone(k))
        };
        if let Some(k) = find(&read(&self.share_keys)) {
            return Some(k);
        }
        let mut keys = self.share_keys.write().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = find(&keys) {
            return Some(k);
        }
        let key = Arc::new(make()?);
        let list = keys.entry(route).or_default();
        list.retain(|(c, _, _)| &**c != client);
        list.push((Arc::from(client), share, Arc::clone(&key)));
        Some(key)
    }
}

/// A store app's runtime state.
pub struct StoreApp {
    app: usize,
    name: String,
    /// Its ticket.
    pub ticket: Arc<TicketBox>,
    upstream: Upstream,
    tenants: Mutex<HashMap<Arc<str>, Arc<Tenant>>>,
    /// `tenants.len()`, kept beside the map so `/readyz` and the status
    /// page read it without taking the map's lock.
    held: std::sync::atomic::AtomicUsize,
    max_tenants: usize,
    idle_timeout: Duration,
    started: Instant,
}

/// Every store app, by app index.
pub struct StoreApps {
    apps: Vec<Option<Arc<StoreApp>>>,
    metrics: Arc<Metrics>,
}

/// What `/readyz` shows of a store app.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreStatus {
    /// App name.
    pub app: String,
    /// Age of the app_ticket held, in seconds.
    pub ticket_age_secs: Option<u64>,
    /// Tenant tokens held now.
    pub tenants: usize,
}

impl StoreApps {
    /// The store apps' runtime, around their ticket boxes.
    pub fn new(
        apps: &[AppConfig],
        tickets: Vec<Option<Arc<TicketBox>>>,
        metrics: Arc<Metrics>,
    ) -> StoreApps {
        let apps = apps
            .iter()
            .zip(tickets)
            .enumerate()
            .map(|(i, (a, ticket))| match (&a.kind, ticket) {
                (AppKind::Store(cfg), Some(ticket)) => Some(Arc::new(StoreApp {
                    app: i,
                    name: a.name.clone(),
                    ticket,
                    upstream: a.upstream.clone(),
                    tenants: Mutex::new(HashMap::new()),
                    held: std::sync::atomic::AtomicUsize::new(0),
                    max_tenants: cfg.max_tenants,
                    idle_timeout: cfg.tenant_idle_timeout,
                    started: Instant::now(),
                })),
                _ => None,
            })
            .collect();
        StoreApps { apps, metrics }
    }

    /// A live reload: each store app the reload kept (`apps[new] =
    /// Some(old)`) keeps its tenants — their tokens (taken over by slots of
    /// `tokens`, the new token manager), their quota keys and their
    /// clients' share keys on the routes the reload continues (`routes[new]
    /// = Some(old)`), when they were last used. Its ticket box is the old
    /// one already (`app::build`).
    pub fn carry(
        &self,
        old: &StoreApps,
        apps: &[Option<usize>],
        routes: &[Option<usize>],
        tokens: &TokenManager,
    ) {
        let moved: HashMap<usize, usize> = routes
            .iter()
            .enumerate()
            .filter_map(|(new, old)| old.map(|o| (o, new)))
            .collect();
        for (app, from) in apps.iter().enumerate() {
            let (Some(Some(now)), Some(Some(before))) =
                (self.apps.get(app), from.and_then(|f| old.apps.get(f)))
            else {
                continue;
            };
            let old_tenants = before.tenants.lock().unwrap_or_else(|e| e.into_inner());
            let mut tenants = now.tenants.lock().unwrap_or_else(|e| e.into_inner());
            for (key, t) in old_tenants.iter() {
                let slot = tokens.tenant_slot(app, Arc::clone(key), &now.upstream);
                slot.take_over(&t.slot);
                let quota_keys = read(&t.quota_keys)
                    .iter()
                    .filter_map(|(r, k)| moved.get(r).map(|&n| (n, Arc::clone(k))))
                    .collect();
                // Clients' share keys too: one whose client's share changed
                // is never found again (they are looked up by share).
                let share_keys = read(&t.share_keys)
                    .iter()
                    .filter_map(|(r, keys)| moved.get(r).map(|&n| (n, keys.clone())))
                    .collect();
                let last_used =
                    before.started + Duration::from_millis(t.last_used_ms.load(Ordering::Relaxed));
                tenants.insert(
                    Arc::clone(key),
                    Arc::new(Tenant {
                        key: Arc::clone(key),
                        slot,
                        quota_keys: RwLock::new(quota_keys),
                        share_keys: RwLock::new(share_keys),
                        last_used_ms: AtomicU64::new(
                            last_used.saturating_duration_since(now.started).as_millis() as u64,
                        ),
                    }),
                );
            }
            self.metrics.store_tenants(app, tenants.len());
            now.held.store(tenants.len(), Ordering::Relaxed);
        }
    }

    /// The ticket box of store app `app`.
    pub fn ticket(&self, app: usize) -> Option<Arc<TicketBox>> {
        self.apps.get(app)?.as_ref().map(|s| Arc::clone(&s.ticket))
    }

    /// True when `app` is a store app.
    pub fn is_store(&self, app: usize) -> bool {
        self.apps.get(app).is_some_and(Option::is_some)
    }

    /// Loads each store app's kept ticket (local, fast: before the token
    /// refreshers start). Returns the apps that have none or a stale one.
    pub async fn load_tickets(&self) -> Vec<Arc<TicketBox>> {
        let mut missing = Vec::new();
        for s in self.apps.iter().flatten() {
            if s.ticket.load().await {
                if let Some(age) = s.ticket.age() {
                    self.metrics.app_ticket_received(s.app, age);
                }
            } else {
                missing.push(Arc::clone(&s.ticket));
            }
        }
        missing
    }

    /// The tenant `key` of store app `app`, created on first use. When the
    /// app holds `max_tenants` already, the least recently used is evicted.
    pub fn tenant(
        &self,
        tokens: &TokenManager,
        app: usize,
        key: &str,
    ) -> Result<Arc<Tenant>, TenantError> {
        let store = self
            .apps
            .get(app)
            .and_then(Option::as_ref)
            .ok_or(TenantError::NotStoreApp)?;
        if key.is_empty()
            || key.len() > MAX_TENANT_KEY
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(TenantError::BadKey);
        }
        let now_ms = store.started.elapsed().as_millis() as u64;
        let mut tenants = store.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tenants.get(key) {
            t.last_used_ms.store(now_ms, Ordering::Relaxed);
            return Ok(Arc::clone(t));
        }
        if tenants.len() >= store.max_tenants {
            if let Some(lru) = tenants
                .iter()
                .min_by_key(|(_, t)| t.last_used_ms.load(Ordering::Relaxed))
                .map(|(k, _)| Arc::clone(k))
            {
                tenants.remove(&lru);
                tracing::info!(app = %store.name, "tenant limit reached: evicted the least recently used tenant");
            }
        }
        let key: Arc<str> = Arc::from(key);
        let tenant = Arc::new(Tenant {
            slot: tokens.tenant_slot(app, Arc::clone(&key), &store.upstream),
            key: Arc::clone(&key),
            quota_keys: RwLock::new(HashMap::new()),
            share_keys: RwLock::new(HashMap::new()),
            last_used_ms: AtomicU64::new(now_ms),
        });
        tenants.insert(key, Arc::clone(&tenant));
        self.metrics.store_tenants(app, tenants.len());
        store.held.store(tenants.len(), Ordering::Relaxed);
        Ok(tenant)
    }

    /// Drops `tenant` (Feishu refused its token: an unknown tenant must not
    /// hold a place).
    pub fn forget(&self, app: usize, tenant: &Tenant) {
        if let Some(store) = self.apps.get(app).and_then(Option::as_ref) {
            let mut tenants = store.tenants.lock().unwrap_or_else(|e| e.into_inner());
            if tenants
                .get(&tenant.key)
                .is_some_and(|t| Arc::ptr_eq(&t.slot, &tenant.slot))
            {
                tenants.remove(&tenant.key);
            }
            self.metrics.store_tenants(app, tenants.len());
            store.held.store(tenants.len(), Ordering::Relaxed);
        }
    }

    /// Drops tenants idle longer than their app's `tenant_idle_timeout`.
    pub fn evict_idle(&self) {
        for store in self.apps.iter().flatten() {
            let now_ms = store.started.elapsed().as_millis() as u64;
            let idle_ms = store.idle_timeout.as_millis() as u64;
            let mut tenants = store.tenants.lock().unwrap_or_else(|e| e.into_inner());
            tenants.retain(|_, t| {
                now_ms.saturating_sub(t.last_used_ms.load(Ordering::Relaxed)) < idle_ms
            });
            self.metrics.store_tenants(store.app, tenants.len());
            store.held.store(tenants.len(), Ordering::Relaxed);
            if let Some(age) = store.ticket.age() {
                self.metrics.app_ticket_received(store.app, age);
            }
        }
    }

    /// Spawns the task that evicts idle tenants and, with a shared ticket
    /// store, the one that re-reads the tickets every
    /// [`TICKET_SYNC_INTERVAL`].
    pub fn spawn_maintenance(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let Some(every) = self
            .apps
            .iter()
            .flatten()
            .map(|s| {
                (s.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
            })
            .min()
        else {
            return tasks;
        };
        let this = Arc::clone(self);
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                this.evict_idle();
            }
        }));
        if self.apps.iter().flatten().any(|s| s.ticket.is_shared()) {
            let this = Arc::clone(self);
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(TICKET_SYNC_INTERVAL).await;
                    this.sync_tickets().await;
                }
            }));
        }
        tasks
    }

    /// Brings every store app's ticket in line with the shared store (see
    /// [`TicketBox::sync`]).
    pub async fn sync_tickets(&self) {
        for s in self.apps.iter().flatten() {
            if s.ticket.sync().await {
                if let Some(age) = s.ticket.age() {
                    self.metrics.app_ticket_received(s.app, age);
                }
            }
        }
    }

    /// `/readyz` detail of every store app.
    pub fn statuses(&self) -> Vec<StoreStatus> {
        self.apps
            .iter()
            .flatten()
            .map(|s| StoreStatus {
                app: s.name.clone(),
                ticket_age_secs: s.ticket.age().map(|a| a.as_secs()),
                tenants: s.held.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// A verified `app_ticket` push for app `app` (its index): kept when
    /// it is for this store app's app id. A push for another app id, or to
    /// an app that is not a store app, changes nothing.
    pub async fn receive_ticket(
        &self,
        app: usize,
        app_id: &str,
        app_ticket: Secret,
    ) -> Result<(), CallbackRefused> {
        let store = self
            .apps
            .get(app)
            .and_then(Option::as_ref)
            .ok_or(CallbackRefused::Invalid)?;
        if app_id != store.ticket.app_id() {
            tracing::warn!(app = %store.name, "app_ticket for another app id refused");
            return Err(CallbackRefused::Invalid);
        }
        store.ticket.receive(app_ticket).await;
        self.metrics.app_ticket_received(store.app, Duration::ZERO);
        Ok(())
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
