//! Store apps (ISV): the app_ticket, the tenants, and the event endpoint.
//!
//! A store app is installed by many tenants. Its credentials come in three
//! steps, each kept here or in [`crate::token`]:
//! 1. Feishu pushes an **app_ticket** to the event endpoint about once an
//!    hour ([`TicketBox`]). It is persisted ([`crate::ticket_store`]) so a
//!    restart does not wait for the next push; with none (or a stale one) the
//!    gateway asks Feishu to resend it. Kept in Redis, it is shared: the
//!    push reaches one replica and every replica uses it.
//! 2. The ticket buys the **app token** (a [`crate::token::TokenSlot`] per
//!    app, refreshed in the background like a self-built app's token).
//! 3. The app token buys one **tenant token** per tenant ([`Tenant`]),
//!    refreshed ahead of expiry while the tenant is in use.
//!
//! Tenant keys come from callers (`X-Tenant-Key`), so the tenants held per
//! app are bounded (`max_tenants`, least recently used evicted first) and
//! idle tenants are dropped (`tenant_idle_timeout`). Each tenant carries its
//! own quota keys ([`Engine::scope`]): Feishu's limits hold per app AND per
//! tenant. With the Redis backend they are shared by every replica, keyed
//! per (app, tenant, route), and expire in Redis when idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Response, StatusCode, Uri};
use prometheus::IntCounter;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::config::{AppConfig, AppKind, Upstream};
use crate::error::{codes, GatewayError};
use crate::events::{CallbackKeys, Event, EventError, Verifier, VerifyOptions};
use crate::metrics::Metrics;
use crate::quota::{Engine, QuotaKey, ScopedQuota};
use crate::secret::Secret;
use crate::ticket_store::{StoredTicket, TicketStore, TicketStoreError};
use crate::token::{endpoint, post_json, TokenError, TokenManager, TokenSlot};
use crate::upstream::HttpClient;

/// Feishu's endpoint that asks for the app_ticket to be pushed again.
pub const RESEND_PATH: &str = "/open-apis/auth/v3/app_ticket/resend";
pub use crate::ticket_store::MAX_TICKET_AGE;
/// Resends are not repeated more often than this while no ticket arrives.
const RESEND_INTERVAL: Duration = Duration::from_secs(10);
/// Longest tenant key accepted from a caller.
const MAX_TENANT_KEY: usize = 128;

/// How often a replica whose tickets are shared (Redis) re-reads them, so
/// every replica holds the latest ticket any of them received (and shows
/// its age in `/readyz`) within this, and a ticket Redis lost (a restart
/// without persistence) is written back.
pub const TICKET_SYNC_INTERVAL: Duration = Duration::from_secs(60);
/// While it waits for a resent ticket, a replica whose tickets are shared
/// looks in the store this often: Feishu pushes the ticket to whichever
/// replica its event URL reaches.
const TICKET_POLL: Duration = Duration::from_millis(200);
/// Ticket store failures are logged at warn level at most this often per
/// app (every one is counted).
const STORE_WARN_EVERY: Duration = Duration::from_secs(30);

/// The app_ticket of one store app.
///
/// With a shared store (Redis, [`TicketStore::is_shared`]) every replica
/// uses the latest ticket any replica received: a replica looks in the
/// store before each app-token fetch, while it waits for a resent ticket,
/// when Feishu refuses its ticket (before asking for a resend), and every
/// [`TICKET_SYNC_INTERVAL`]. A newer stored ticket (by reception time)
/// replaces its own; its own replaces an older or missing stored one.
/// Store failures are logged and counted, and the ticket in memory goes on
/// being used.
pub struct TicketBox {
    app_name: String,
    app_id: String,
    secret: Secret,
    resend_url: Uri,
    client: HttpClient,
    timeout: Duration,
    current: RwLock<Option<StoredTicket>>,
    /// The ticket Feishu refused last: never taken back from the store.
    refused: Mutex<Option<Secret>>,
    arrived: Notify,
    /// When the last resend was asked, and whether a ticket came since.
    resend: Mutex<(Option<Instant>, bool)>,
    store: Arc<dyn TicketStore>,
    load_errors: IntCounter,
    save_errors: IntCounter,
    /// When a store failure was last logged at warn level.
    warned: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for TicketBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketBox")
            .field("app", &self.app_name)
            .finish_non_exhaustive()
    }
}

fn fresh(t: &StoredTicket) -> bool {
    t.age(SystemTime::now()) < MAX_TICKET_AGE
}

impl TicketBox {
    /// The Feishu app id.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The app secret.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// True when the tickets are shared with other replicas (Redis).
    pub fn is_shared(&self) -> bool {
        self.store.is_shared()
    }

    /// Loads the kept ticket, if there is one younger than
    /// [`MAX_TICKET_AGE`]. Returns whether one was loaded.
    pub async fn load(&self) -> bool {
        match self.store.load(&self.app_id).await {
            Ok(Some(t)) if fresh(&t) => {
                let age = t.age(SystemTime::now()).as_secs();
                if self.adopt(t) {
                    tracing::info!(app = %self.app_name, age_secs = age, "loaded the kept app_ticket");
                }
                true
            }
            Ok(Some(_)) => {
                tracing::info!(app = %self.app_name, "the kept app_ticket is stale");
                false
            }
            Ok(None) => false,
            Err(e) => {
                self.store_failed(&self.load_errors, &e, "cannot load the kept app_ticket");
                false
            }
        }
    }

    /// With a shared store: takes the stored ticket when it is newer than
    /// this replica's (another replica received it), or writes this
    /// replica's back when the store holds none or an older one (received
    /// while Redis was away, or Redis lost it). Returns whether it took a
    /// ticket. Does nothing with a store of this replica's own.
    pub async fn sync(&self) -> bool {
        if !self.store.is_shared() {
            return false;
        }
        let stored = match self.store.load(&self.app_id).await {
            Ok(t) => t,
            Err(e) => {
                self.store_failed(&self.load_errors, &e, "cannot read the shared app_ticket");
                match e {
                    // Garbage under the key: ours replaces it below.
                    TicketStoreError::Corrupt { .. } => None,
                    _ => return false,
                }
            }
        };
        let stored_at = stored.as_ref().map(|t| t.received_at_unix);
        if let Some(t) = stored.filter(fresh) {
            if self.adopt(t) {
                tracing::info!(app = %self.app_name, "took the app_ticket another replica received");
                return true;
            }
        }
        let mine = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(mine) = mine.filter(fresh) {
            if stored_at.is_none_or(|at| at < mine.received_at_unix) {
                match self.store.save(&mine).await {
                    Ok(()) => {
                        tracing::info!(app = %self.app_name, "wrote this replica's app_ticket to the shared store")
                    }
                    Err(e) => self.store_failed(
                        &self.save_errors,
                        &e,
                        "cannot write the app_ticket to the shared store",
                    ),
                }
            }
        }
        false
    }

    /// Makes `t` the current ticket unless it is the refused one, the same
    /// as the current one, or older. Returns whether it did.
    fn adopt(&self, t: StoredTicket) -> bool {
        if lock(&self.refused).as_ref() == Some(&t.ticket) {
            return false;
        }
        {
            let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
            if cur
                .as_ref()
                .is_some_and(|c| c.ticket == t.ticket || c.received_at_unix > t.received_at_unix)
            {
                return false;
            }
            *cur = Some(t);
        }
        lock(&self.resend).1 = true;
        self.arrived.notify_waiters();
        true
    }

    /// A ticket pushed by Feishu: kept, persisted, and handed to whoever
    /// waits for one.
    pub async fn receive(&self, ticket: Secret) {
        let stored = StoredTicket::received_now(self.app_id.clone(), ticket);
        if let Err(e) = self.store.save(&stored).await {
            self.store_failed(
                &self.save_errors,
                &e,
                "cannot persist the app_ticket; keeping it in memory",
            );
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(stored);
        lock(&self.resend).1 = true;
        tracing::info!(app = %self.app_name, "received an app_ticket");
        self.arrived.notify_waiters();
    }

    /// The current ticket (with a shared store: the latest any replica
    /// received), or: ask Feishu to resend it and wait up to `timeout` for
    /// it to arrive at the event endpoint (with a shared store: of any
    /// replica).
    pub async fn get_or_wait(&self, timeout: Duration) -> Result<Secret, TokenError> {
        let deadline = Instant::now() + timeout;
        let arrived = self.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        let shared = self.store.is_shared();
        if shared {
            self.sync().await;
        }
        if let Some(t) = self.get() {
            return Ok(t);
        }
        self.resend().await?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !shared {
                let _ = tokio::time::timeout(left, arrived.as_mut()).await;
                break;
            }
            tokio::select! {
                _ = arrived.as_mut() => break,
                _ = tokio::time::sleep(TICKET_POLL.min(left)) => {}
            }
            if self.sync().await || self.get().is_some() {
                break;
            }
        }
        self.get().ok_or_else(|| TokenError {
            code: codes::APP_TICKET_INVALID,
            msg: "no app_ticket yet: asked Feishu to resend it; check that the app's event URL reaches /feishu/events/<app>".into(),
        })
    }

    /// Feishu refused `bad`: forget it (if still current) and ask for a
    /// new one, unless a shared store already holds a newer one.
    pub async fn invalidate(&self, bad: &Secret) {
        {
            let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
            if cur.as_ref().is_some_and(|t| t.ticket == *bad) {
                *cur = None;
            }
        }
        *lock(&self.refused) = Some(bad.clone());
        if self.store.is_shared() && (self.sync().await || self.get().is_some()) {
            tracing::warn!(app = %self.app_name, "Feishu refused the app_ticket; using the newer one another replica received");
            return;
        }
        tracing::warn!(app = %self.app_name, "Feishu refused the app_ticket; asking for a new one");
        let _ = self.resend().await;
    }

    /// Asks Feishu to push the ticket again, at most once per 10 s while
    /// no ticket arrives.
    pub async fn resend(&self) -> Result<(), TokenError> {
        {
            let mut r = lock(&self.resend);
            let now = Instant::now();
            let (last, ticket_since) = *r;
            if let Some(at) = last {
                if !ticket_since && now.duration_since(at) < RESEND_INTERVAL {
                    return Ok(());
                }
            }
            *r = (Some(now), false);
        }
        let body = serde_json::json!({"app_id": self.app_id, "app_secret": self.secret.expose()});
        let (_, bytes) = post_json(&self.client, &self.resend_url, &body, self.timeout).await?;
        let code = crate::upstream::read_code(&bytes).unwrap_or(-1);
        if code != 0 {
            tracing::warn!(app = %self.app_name, code, "app_ticket resend refused");
            return Err(TokenError {
                code,
                msg: "Feishu refused to resend the app_ticket".into(),
            });
        }
        tracing::info!(app = %self.app_name, "asked Feishu to resend the app_ticket");
        Ok(())
    }

    /// How old the current ticket is.
    pub fn age(&self) -> Option<Duration> {
        let cur = self.current.read().ok()?;
        cur.as_ref().map(|t| t.age(SystemTime::now()))
    }

    fn get(&self) -> Option<Secret> {
        let cur = self.current.read().ok()?;
        cur.as_ref().map(|t| t.ticket.clone())
    }

    /// Counts a store failure and logs it (at warn level at most every
    /// [`STORE_WARN_EVERY`]). The error never carries the ticket.
    fn store_failed(&self, counter: &IntCounter, e: &TicketStoreError, what: &str) {
        counter.inc();
        let now = Instant::now();
        let loud = {
            let mut warned = lock(&self.warned);
            let loud = warned.is_none_or(|at| now.duration_since(at) >= STORE_WARN_EVERY);
            if loud {
                *warned = Some(now);
            }
            loud
        };
        if loud {
            tracing::warn!(app = %self.app_name, error = %e, "{what}");
        } else {
            tracing::debug!(app = %self.app_name, error = %e, "{what}");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One tenant of a store app: its token and its quota keys.
pub struct Tenant {
    /// The tenant key.
    pub key: Arc<str>,
    /// Its tenant token.
    pub slot: Arc<TokenSlot>,
    quota: ScopedQuota,
    quota_keys: Vec<Option<QuotaKey>>,
    last_used_ms: AtomicU64,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Tenant {
    /// The tenant's own quota engine.
    pub fn quota(&self) -> &ScopedQuota {
        &self.quota
    }

    /// The tenant's quota key for catalog route `route`, if it is limited.
    pub fn quota_key(&self, route: usize) -> Option<QuotaKey> {
        self.quota_keys.get(route).copied().flatten()
    }
}

/// A store app's runtime state.
pub struct StoreApp {
    app: usize,
    name: String,
    /// Its ticket.
    pub ticket: Arc<TicketBox>,
    verifier: Verifier,
    upstream: Upstream,
    tenants: Mutex<HashMap<Arc<str>, Arc<Tenant>>>,
    max_tenants: usize,
    idle_timeout: Duration,
    started: Instant,
    /// Per route: the engine's (app, route) key whose limits each tenant
    /// gets a copy of (`None`: route unlimited).
    quota_templates: Vec<Option<QuotaKey>>,
}

/// Every store app, by app index.
pub struct StoreApps {
    apps: Vec<Option<Arc<StoreApp>>>,
    by_name: HashMap<String, usize>,
    /// The gateway's quota engine: each tenant gets keys of its own from it.
    quota: Engine,
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
    /// Ticket boxes for the store apps in `apps` (by app index), to hand to
    /// the token manager.
    pub fn ticket_boxes(
        apps: &[AppConfig],
        client: &HttpClient,
        store: &Arc<dyn TicketStore>,
        timeout: Duration,
        metrics: &Metrics,
    ) -> Vec<Option<Arc<TicketBox>>> {
        apps.iter()
            .enumerate()
            .map(|(i, a)| match &a.kind {
                AppKind::Store(_) => Some(Arc::new(TicketBox {
                    app_name: a.name.clone(),
                    app_id: a.app_id.clone(),
                    secret: a.app_secret.clone(),
                    resend_url: endpoint(&a.upstream, RESEND_PATH),
                    client: client.clone(),
                    timeout,
                    current: RwLock::new(None),
                    refused: Mutex::new(None),
                    arrived: Notify::new(),
                    resend: Mutex::new((None, false)),
                    store: Arc::clone(store),
                    load_errors: metrics.app_ticket_store_errors(i, "load"),
                    save_errors: metrics.app_ticket_store_errors(i, "save"),
                    warned: Mutex::new(None),
                })),
                AppKind::SelfBuilt => None,
            })
            .collect()
    }

    /// The store apps' runtime, around their ticket boxes.
    pub fn new(
        apps: &[AppConfig],
        tickets: Vec<Option<Arc<TicketBox>>>,
        quota: Engine,
        mut templates: Vec<Vec<Option<QuotaKey>>>,
        metrics: Arc<Metrics>,
    ) -> StoreApps {
        let mut by_name = HashMap::new();
        let apps = apps
            .iter()
            .zip(tickets)
            .enumerate()
            .map(|(i, (a, ticket))| match (&a.kind, ticket) {
                (AppKind::Store(cfg), Some(ticket)) => {
                    by_name.insert(a.name.clone(), i);
                    Some(Arc::new(StoreApp {
                        app: i,
                        name: a.name.clone(),
                        ticket,
                        verifier: Verifier::new(
                            CallbackKeys {
                                encrypt_key: cfg.encrypt_key.clone(),
                                verification_token: cfg.verification_token.clone(),
                            },
                            VerifyOptions {
                                require_signature: cfg.require_signature,
                                ..VerifyOptions::default()
                            },
                        ),
                        upstream: a.upstream.clone(),
                        tenants: Mutex::new(HashMap::new()),
                        max_tenants: cfg.max_tenants,
                        idle_timeout: cfg.tenant_idle_timeout,
                        started: Instant::now(),
                        quota_templates: templates
                            .get_mut(i)
                            .map(std::mem::take)
                            .unwrap_or_default(),
                    }))
                }
                _ => None,
            })
            .collect();
        StoreApps {
            apps,
            by_name,
            quota,
            metrics,
        }
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
    ) -> Result<Arc<Tenant>, GatewayError> {
        let store = self
            .apps
            .get(app)
            .and_then(Option::as_ref)
            .ok_or(GatewayError::Internal)?;
        if key.is_empty()
            || key.len() > MAX_TENANT_KEY
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(GatewayError::BadHeader {
                name: "X-Tenant-Key",
                expected: "a Feishu tenant key (letters, digits, '-' or '_', at most 128)",
            });
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
        // The tenant's own keys, with the app's limits per route: in
        // Redis (named after the tenant) with the Redis backend.
        let mut templates = Vec::new();
        let quota_keys = store
            .quota_templates
            .iter()
            .map(|t| {
                t.map(|t| {
                    templates.push(t);
                    QuotaKey::new(templates.len() as u32 - 1)
                })
            })
            .collect();
        let quota = self.quota.scope(&key, &templates).map_err(|e| {
            tracing::error!(app = %store.name, error = %e, "cannot make a tenant's quota keys");
            GatewayError::Internal
        })?;
        let tenant = Arc::new(Tenant {
            slot: tokens.tenant_slot(app, Arc::clone(&key), &store.upstream),
            key: Arc::clone(&key),
            quota,
            quota_keys,
            last_used_ms: AtomicU64::new(now_ms),
        });
        tenants.insert(key, Arc::clone(&tenant));
        self.metrics.store_tenants(app, tenants.len());
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
                tenants: s.tenants.lock().map(|t| t.len()).unwrap_or(0),
            })
            .collect()
    }

    /// The event endpoint `POST /feishu/events/<app name>`: answers the URL
    /// check, takes the app_ticket, and acknowledges any other event (this is
    /// not an event bus). A callback that fails verification changes nothing.
    pub async fn handle_event(
        &self,
        app_name: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let store = self
            .by_name
            .get(app_name)
            .and_then(|&i| self.apps[i].as_ref())
            .ok_or(GatewayError::NotFound)?;
        let event = store.verifier.verify(headers, body).map_err(|e| {
            tracing::warn!(app = %store.name, error = ?e, "event callback refused");
            GatewayError::BadCallback(match e {
                EventError::BadSignature | EventError::Stale | EventError::BadToken => {
                    StatusCode::UNAUTHORIZED
                }
                _ => StatusCode::BAD_REQUEST,
            })
        })?;
        let answer = match event {
            Event::UrlVerification { challenge } => serde_json::json!({ "challenge": challenge }),
            Event::AppTicket { app_id, app_ticket } => {
                if app_id != store.ticket.app_id {
                    tracing::warn!(app = %store.name, "app_ticket for another app id refused");
                    return Err(GatewayError::BadCallback(StatusCode::BAD_REQUEST));
                }
                store.ticket.receive(app_ticket).await;
                self.metrics.app_ticket_received(store.app, Duration::ZERO);
                serde_json::json!({})
            }
            Event::Other { event_type } => {
                tracing::debug!(app = %store.name, event_type, "ignored an event");
                serde_json::json!({})
            }
        };
        Ok(crate::error::json_answer(StatusCode::OK, &answer))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::config::{Config, MapEnv};
    use crate::ticket_store::{MemoryTicketStore, StoreFuture};
    use feishu_sim::{SimConfig, SimFeishu, SimStoreApp, StoreCallKind};

    const APP_ID: &str = "cli_store_unit";

    /// Memory, but shared as Redis is, and able to fail on demand.
    #[derive(Debug, Default)]
    struct SharedMemory {
        inner: MemoryTicketStore,
        down: AtomicBool,
    }

    impl SharedMemory {
        fn check(&self) -> Result<(), TicketStoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(TicketStoreError::Redis {
                    op: "GET",
                    key: "k".into(),
                    error: "connection: refused".into(),
                });
            }
            Ok(())
        }
    }

    impl TicketStore for SharedMemory {
        fn load<'a>(&'a self, app_id: &'a str) -> StoreFuture<'a, Option<StoredTicket>> {
            match self.check() {
                Ok(()) => self.inner.load(app_id),
                Err(e) => Box::pin(async move { Err(e) }),
            }
        }

        fn save<'a>(&'a self, ticket: &'a StoredTicket) -> StoreFuture<'a, ()> {
            match self.check() {
                Ok(()) => self.inner.save(ticket),
                Err(e) => Box::pin(async move { Err(e) }),
            }
        }

        fn is_shared(&self) -> bool {
            true
        }
    }

    struct Fixture {
        sim: SimFeishu,
        store: Arc<SharedMemory>,
        ticket: Arc<TicketBox>,
        metrics: Arc<Metrics>,
    }

    /// A ticket box on a shared store, with a simulated Feishu that accepts
    /// resends (and pushes nowhere: this replica has no event URL).
    async fn fixture() -> Fixture {
        let sim = SimFeishu::start(SimConfig::with_store_app(SimStoreApp::new(
            APP_ID, "secret", "vtoken",
        )))
        .await
        .expect("sim");
        let text = format!(
            r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
upstream = "{}"
state_dir = "/nonexistent"
[[apps]]
name = "isv-bot"
app_id = "{APP_ID}"
app_secret_env = "SECRET"
type = "store"
verification_token_env = "VTOKEN"
[[clients]]
name = "crm"
key_env = "KEY"
app = "isv-bot"
"#,
            sim.base_url()
        );
        let env = MapEnv::new()
            .with("SECRET", "secret")
            .with("VTOKEN", "vtoken")
            .with("KEY", "client-key-0123456789abcdef");
        let config = Config::parse(&text, &env).unwrap_or_else(|p| panic!("{p}"));
        let metrics = Arc::new(
            Metrics::new(prometheus::Registry::new(), &["isv-bot".into()], &[]).expect("metrics"),
        );
        let client = crate::upstream::build_client(&config).expect("client");
        let store = Arc::new(SharedMemory::default());
        let dyn_store: Arc<dyn TicketStore> = Arc::clone(&store) as Arc<dyn TicketStore>;
        let ticket = StoreApps::ticket_boxes(
            &config.apps,
            &client,
            &dyn_store,
            Duration::from_secs(2),
            &metrics,
        )
        .remove(0)
        .expect("a store app");
        Fixture {
            sim,
            store,
            ticket,
            metrics,
        }
    }

    fn stored(value: &str, secs_ago: u64) -> StoredTicket {
        let mut t = StoredTicket::received_now(APP_ID, Secret::new(value));
        t.received_at_unix -= secs_ago;
        t
    }

    impl Fixture {
        fn current(&self) -> Option<String> {
            self.ticket.get().map(|s| s.expose().to_owned())
        }

        async fn in_store(&self) -> Option<String> {
            let t = self.store.inner.load(APP_ID).await.expect("load");
            t.map(|t| t.ticket.expose().to_owned())
        }

        fn resends(&self) -> usize {
            self.sim
                .store_calls()
                .iter()
                .filter(|c| c.kind == StoreCallKind::Resend)
                .count()
        }
    }

    #[tokio::test]
    async fn the_newest_ticket_wins_both_ways() {
        let f = fixture().await;
        f.store.save(&stored("t-1", 300)).await.unwrap();
        assert!(f.ticket.load().await);
        assert_eq!(f.current().as_deref(), Some("t-1"));

        // Another replica received a newer one: taken.
        f.store.save(&stored("t-2", 200)).await.unwrap();
        assert!(f.ticket.sync().await);
        assert_eq!(f.current().as_deref(), Some("t-2"));
        assert!(!f.ticket.sync().await, "nothing new");

        // An older one in the store (a slow replica's) is not taken, and
        // this replica's newer one is written back.
        f.store.save(&stored("t-0", 900)).await.unwrap();
        assert!(!f.ticket.sync().await);
        assert_eq!(f.current().as_deref(), Some("t-2"));
        assert_eq!(f.in_store().await.as_deref(), Some("t-2"));

        // A stale stored ticket is never taken.
        let f = fixture().await;
        f.store
            .save(&stored("t-stale", MAX_TICKET_AGE.as_secs() + 1))
            .await
            .unwrap();
        assert!(!f.ticket.sync().await);
        assert!(!f.ticket.load().await);
        assert_eq!(f.current(), None);
    }

    #[tokio::test]
    async fn a_ticket_another_replica_received_is_picked_up_while_waiting() {
        let f = fixture().await;
        let store = Arc::clone(&f.store);
        let other_replica = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            store.save(&stored("t-pushed-elsewhere", 0)).await.unwrap();
        });
        let started = Instant::now();
        let got = f.ticket.get_or_wait(Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.expose(), "t-pushed-elsewhere");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(f.resends(), 1, "asked once; the push went elsewhere");
        other_replica.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_ticket_is_replaced_from_the_store_before_any_resend() {
        let f = fixture().await;
        f.ticket.receive(Secret::new("t-old")).await;
        assert_eq!(f.in_store().await.as_deref(), Some("t-old"));

        // Feishu refuses it; the store holds the same one: not taken back,
        // a resend is asked for.
        f.ticket.invalidate(&Secret::new("t-old")).await;
        assert_eq!(f.current(), None);
        assert_eq!(f.resends(), 1);
        assert!(!f.ticket.sync().await, "the refused ticket stays refused");

        // Another replica received the resent one: the next refusal of an
        // old ticket takes it without a resend.
        f.store.save(&stored("t-new", 0)).await.unwrap();
        f.ticket.invalidate(&Secret::new("t-old")).await;
        assert_eq!(f.current().as_deref(), Some("t-new"));
        assert_eq!(f.resends(), 1);
        let got = f.ticket.get_or_wait(Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.expose(), "t-new");
    }

    #[tokio::test]
    async fn store_failures_are_counted_and_the_ticket_in_memory_is_used() {
        let f = fixture().await;
        f.store.down.store(true, Ordering::SeqCst);
        f.ticket.receive(Secret::new("t-memory")).await;
        assert!(!f.ticket.sync().await);
        let got = f.ticket.get_or_wait(Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.expose(), "t-memory");
        let exposition = String::from_utf8(f.metrics.render()).unwrap();
        assert!(
            exposition.contains(
                r#"feishu_gateway_app_ticket_store_errors_total{app="isv-bot",op="save"} 1"#
            ),
            "{exposition}"
        );
        assert!(exposition.contains(
            r#"feishu_gateway_app_ticket_store_errors_total{app="isv-bot",op="load"} 2"#
        ));
        assert_eq!(f.resends(), 0);

        // Back: the ticket Redis missed is written back by the next sync.
        f.store.down.store(false, Ordering::SeqCst);
        assert!(!f.ticket.sync().await);
        assert_eq!(f.in_store().await.as_deref(), Some("t-memory"));
    }
}
