//! Store apps (ISV): the app_ticket, the tenants, and the event endpoint.
//!
//! A store app is installed by many tenants. Its credentials come in three
//! steps, each kept here or in [`crate::token`]:
//! 1. Feishu pushes an **app_ticket** to the event endpoint about once an
//!    hour ([`TicketBox`]). It is persisted ([`crate::ticket_store`]) so a
//!    restart does not wait for the next push; with none (or a stale one) the
//!    gateway asks Feishu to resend it.
//! 2. The ticket buys the **app token** (a [`crate::token::TokenSlot`] per
//!    app, refreshed in the background like a self-built app's token).
//! 3. The app token buys one **tenant token** per tenant ([`Tenant`]),
//!    refreshed ahead of expiry while the tenant is in use.
//!
//! Tenant keys come from callers (`X-Tenant-Key`), so the tenants held per
//! app are bounded (`max_tenants`, least recently used evicted first) and
//! idle tenants are dropped (`tenant_idle_timeout`). Each tenant carries its
//! own quota keys: Feishu's limits hold per app AND per tenant.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Response, StatusCode, Uri};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::config::{AppConfig, AppKind, Upstream};
use crate::error::{codes, GatewayError};
use crate::events::{CallbackKeys, Event, EventError, Verifier, VerifyOptions};
use crate::metrics::Metrics;
use crate::quota::{KeySpec, LocalQuota, QuotaKey};
use crate::secret::Secret;
use crate::ticket_store::{StoredTicket, TicketStore};
use crate::token::{endpoint, post_json, TokenError, TokenManager, TokenSlot};
use crate::upstream::HttpClient;

/// Feishu's endpoint that asks for the app_ticket to be pushed again.
pub const RESEND_PATH: &str = "/open-apis/auth/v3/app_ticket/resend";
/// A kept ticket older than this is not trusted at start (the Go SDK keeps
/// tickets 12 h): the gateway asks for a fresh one instead.
pub const MAX_TICKET_AGE: Duration = Duration::from_secs(12 * 3600);
/// Resends are not repeated more often than this while no ticket arrives.
const RESEND_INTERVAL: Duration = Duration::from_secs(10);
/// Longest tenant key accepted from a caller.
const MAX_TENANT_KEY: usize = 128;

/// The app_ticket of one store app.
pub struct TicketBox {
    app_name: String,
    app_id: String,
    secret: Secret,
    resend_url: Uri,
    client: HttpClient,
    timeout: Duration,
    current: RwLock<Option<StoredTicket>>,
    arrived: Notify,
    /// When the last resend was asked, and whether a ticket came since.
    resend: Mutex<(Option<Instant>, bool)>,
    store: Arc<dyn TicketStore>,
}

impl std::fmt::Debug for TicketBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketBox")
            .field("app", &self.app_name)
            .finish_non_exhaustive()
    }
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

    /// Loads the kept ticket, if there is one younger than
    /// [`MAX_TICKET_AGE`]. Returns whether one was loaded.
    pub async fn load(&self) -> bool {
        match self.store.load(&self.app_id).await {
            Ok(Some(t)) if t.age(SystemTime::now()) < MAX_TICKET_AGE => {
                tracing::info!(app = %self.app_name, age_secs = t.age(SystemTime::now()).as_secs(), "loaded the kept app_ticket");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(t);
                self.arrived.notify_waiters();
                true
            }
            Ok(Some(_)) => {
                tracing::info!(app = %self.app_name, "the kept app_ticket is stale");
                false
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(app = %self.app_name, error = %e, "cannot load the kept app_ticket");
                false
            }
        }
    }

    /// A ticket pushed by Feishu: kept, persisted, and handed to whoever
    /// waits for one.
    pub async fn receive(&self, ticket: Secret) {
        let stored = StoredTicket::received_now(self.app_id.clone(), ticket);
        if let Err(e) = self.store.save(&stored).await {
            tracing::warn!(app = %self.app_name, error = %e, "cannot persist the app_ticket; keeping it in memory");
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(stored);
        if let Ok(mut r) = self.resend.lock() {
            r.1 = true;
        }
        tracing::info!(app = %self.app_name, "received an app_ticket");
        self.arrived.notify_waiters();
    }

    /// The current ticket, or: ask Feishu to resend it and wait up to
    /// `timeout` for it to arrive at the event endpoint.
    pub async fn get_or_wait(&self, timeout: Duration) -> Result<Secret, TokenError> {
        let arrived = self.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if let Some(t) = self.get() {
            return Ok(t);
        }
        self.resend().await?;
        let _ = tokio::time::timeout(timeout, arrived).await;
        self.get().ok_or_else(|| TokenError {
            code: codes::APP_TICKET_INVALID,
            msg: "no app_ticket yet: asked Feishu to resend it; check that the app's event URL reaches /feishu/events/<app>".into(),
        })
    }

    /// Feishu refused `bad`: forget it (if still current) and ask for a
    /// new one.
    pub async fn invalidate(&self, bad: &Secret) {
        {
            let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
            if cur.as_ref().is_some_and(|t| t.ticket == *bad) {
                *cur = None;
            }
        }
        tracing::warn!(app = %self.app_name, "Feishu refused the app_ticket; asking for a new one");
        let _ = self.resend().await;
    }

    /// Asks Feishu to push the ticket again, at most once per
    /// [`RESEND_INTERVAL`] while no ticket arrives.
    pub async fn resend(&self) -> Result<(), TokenError> {
        {
            let mut r = self.resend.lock().unwrap_or_else(|e| e.into_inner());
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
}

/// One tenant of a store app: its token and its quota keys.
pub struct Tenant {
    /// The tenant key.
    pub key: Arc<str>,
    /// Its tenant token.
    pub slot: Arc<TokenSlot>,
    quota: LocalQuota,
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
    pub fn quota(&self) -> &LocalQuota {
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
}

/// Every store app, by app index.
pub struct StoreApps {
    apps: Vec<Option<Arc<StoreApp>>>,
    by_name: HashMap<String, usize>,
    /// Per-route quota specs a new tenant gets (`None`: route unlimited).
    specs: Vec<Option<KeySpec>>,
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
    ) -> Vec<Option<Arc<TicketBox>>> {
        apps.iter()
            .map(|a| match &a.kind {
                AppKind::Store(_) => Some(Arc::new(TicketBox {
                    app_name: a.name.clone(),
                    app_id: a.app_id.clone(),
                    secret: a.app_secret.clone(),
                    resend_url: endpoint(&a.upstream, RESEND_PATH),
                    client: client.clone(),
                    timeout,
                    current: RwLock::new(None),
                    arrived: Notify::new(),
                    resend: Mutex::new((None, false)),
                    store: Arc::clone(store),
                })),
                AppKind::SelfBuilt => None,
            })
            .collect()
    }

    /// The store apps' runtime, around their ticket boxes.
    pub fn new(
        apps: &[AppConfig],
        tickets: Vec<Option<Arc<TicketBox>>>,
        specs: Vec<Option<KeySpec>>,
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
                    }))
                }
                _ => None,
            })
            .collect();
        StoreApps {
            apps,
            by_name,
            specs,
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
        let mut specs = Vec::new();
        let quota_keys = self
            .specs
            .iter()
            .map(|spec| {
                spec.as_ref().map(|spec| {
                    specs.push(spec.clone());
                    QuotaKey::new(specs.len() as u32 - 1)
                })
            })
            .collect();
        let tenant = Arc::new(Tenant {
            slot: tokens.tenant_slot(app, Arc::clone(&key), &store.upstream),
            key: Arc::clone(&key),
            quota: LocalQuota::with_tokio_clock(specs),
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

    /// Spawns the task that evicts idle tenants.
    pub fn spawn_maintenance(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let every = self
            .apps
            .iter()
            .flatten()
            .map(|s| {
                (s.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
            })
            .min()?;
        let this = Arc::clone(self);
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                this.evict_idle();
            }
        }))
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
