//! Tenant access tokens: fetched, cached and refreshed by the gateway.
//!
//! One [`TokenSlot`] per app holds the current token. The rules it keeps:
//! - **Single flight.** Every fetch happens under the slot's async mutex; a
//!   caller that waited re-checks the cache first, and a failure that ended
//!   while it waited is shared instead of retried, so N concurrent cold
//!   requests cause exactly one token call.
//! - **Proactive refresh.** A background task refreshes each token at
//!   `refresh_at`, well before `usable_until`, so a warm gateway never makes
//!   a request wait for a refresh. Feishu only hands out a new token when
//!   less than 30 minutes remain, so `refresh_at` is at most
//!   `refresh_before` (25 min) before expiry; short lifetimes are refreshed
//!   at half their life.
//! - **Never expired.** A token is used only until `usable_until`, a guard
//!   (a tenth of its life, at most 60 s) before its expiry, measured from the
//!   moment the token call was SENT.
//! - **Evict if current.** After a token-invalid answer, the token is dropped
//!   only if it is still the cached one (compared by generation), so a burst
//!   of stale failures triggers one refresh, not many.
//! - **Backoff.** Failed fetches are retried with doubling delays and jitter;
//!   a token that is still usable keeps being used meanwhile.
//!
//! # Layout
//!
//! | file              | concern                                                   |
//! |-------------------|-----------------------------------------------------------|
//! | `mod.rs`          | [`TokenManager`]: get, invalidate, refreshers, timing plan |
//! | `slot.rs`         | [`TokenSlot`]: one cached token and its single flight     |
//! | `source.rs`       | [`Source`]: the token kinds and the call that fetches each |
//! | `app.rs`          | [`AppConfig`]: the apps whose secrets the gateway holds   |
//! | `ticket.rs`       | [`ticket::TicketBox`]: a store app's app_ticket           |
//! | `ticket_store.rs` | where app_tickets are kept: a file, Redis, or memory      |

mod app;
mod slot;
mod source;
pub mod ticket;
pub mod ticket_store;

pub use app::{AppConfig, AppKind, StoreAppSettings};
use slot::Flight;
pub use slot::{Token, TokenSlot, TokenStatus};
pub use source::Source;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderValue;
use http::Uri;
use rand::Rng;
use serde::Deserialize;
use tokio::time::Instant;

use crate::feishu::{codes, paths, FeishuError};
use crate::observe::metrics::Metrics;
use crate::observe::trace::{self, RequestTrace};
use crate::secret::Secret;
use crate::upstream::{endpoint, post_json, HttpClient, Upstream};
use ticket::TicketBox;

/// When and how tenant tokens are refreshed (`[token]`).
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// Refresh this long before expiry at most (`refresh_before`). Default
    /// 25 min: Feishu hands out a NEW token only when less than 30 min
    /// remain, so refreshing earlier just returns the same token. Short
    /// lifetimes are refreshed at half their life.
    pub refresh_before: Duration,
    /// First retry delay after a failed fetch (`retry_min`). Default 500 ms.
    pub retry_min: Duration,
    /// Largest retry delay (`retry_max`). Default 30 s. The delay doubles
    /// from `retry_min` up to this cap, with equal jitter: each wait is half
    /// the delay plus a random part of up to the other half.
    pub retry_max: Duration,
    /// Timeout of one token call (`fetch_timeout`). Default 10 s.
    pub fetch_timeout: Duration,
}

/// The token slots of all apps, and what they need to fetch. `slots[app]`
/// is a self-built app's tenant token, or a store app's app token (its
/// tenants' slots are made by [`TokenManager::tenant_slot`]).
pub struct TokenManager {
    slots: Vec<Arc<TokenSlot>>,
    client: HttpClient,
    policy: TokenPolicy,
    metrics: Arc<Metrics>,
    generation: AtomicU64,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("apps", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// Creates one empty slot per app. Nothing is fetched until
    /// [`TokenManager::spawn_refreshers`] or the first request. `tickets`
    /// holds the ticket box of each store app (by app index).
    pub fn new(
        apps: &[AppConfig],
        tickets: &[Option<Arc<TicketBox>>],
        client: HttpClient,
        policy: TokenPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        let slots = apps
            .iter()
            .enumerate()
            .map(|(index, a)| {
                let source = match tickets.get(index).cloned().flatten() {
                    Some(ticket) => Source::StoreApp {
                        ticket,
                        url: endpoint(&a.upstream, paths::STORE_APP_TOKEN),
                    },
                    None => Source::SelfBuilt {
                        app_id: a.app_id.clone(),
                        secret: a.app_secret.clone(),
                        url: endpoint(&a.upstream, paths::TENANT_TOKEN_INTERNAL),
                    },
                };
                Arc::new(TokenSlot::new(index, a.name.clone(), source))
            })
            .collect();
        TokenManager {
            slots,
            client,
            policy,
            metrics,
            generation: AtomicU64::new(1),
        }
    }

    /// After a live reload: the slots of the apps the reload kept unchanged
    /// (`kept[new index] = Some(old index)`) take over `old`'s tokens, so
    /// they fetch none; a new app, or one whose secret or upstream changed,
    /// starts empty and fetches its own. Generations continue `old`'s, so a
    /// carried token is never mistaken for a new one.
    pub fn carry(&self, old: &TokenManager, kept: &[Option<usize>]) {
        self.generation
            .fetch_max(old.generation.load(Ordering::Relaxed), Ordering::Relaxed);
        for (new, from) in kept.iter().enumerate() {
            if let (Some(dst), Some(src)) =
                (self.slots.get(new), from.and_then(|o| old.slots.get(o)))
            {
                // Its expiry gauge is labelled by name: it stays as it was.
                dst.take_over(src);
            }
        }
    }

    /// The slot of app `app`: a self-built app's tenant token, or a store
    /// app's app token.
    pub fn app_slot(&self, app: usize) -> &Arc<TokenSlot> {
        &self.slots[app]
    }

    /// A new, empty slot for one tenant of the store app `app`.
    pub fn tenant_slot(
        &self,
        app: usize,
        tenant_key: Arc<str>,
        upstream: &Upstream,
    ) -> Arc<TokenSlot> {
        let app_slot = Arc::clone(&self.slots[app]);
        let name = app_slot.name.clone();
        Arc::new(TokenSlot::new(
            app,
            name,
            Source::StoreTenant {
                app_slot,
                tenant_key,
                url: endpoint(upstream, paths::STORE_TENANT_TOKEN),
            },
        ))
    }

    /// A usable token for the self-built app `app`, fetching one
    /// (single-flight) if needed.
    pub async fn get(self: &Arc<Self>, app: usize) -> Result<Arc<Token>, FeishuError> {
        let slot = Arc::clone(&self.slots[app]);
        self.get_slot(&slot).await
    }

    /// A usable token of `slot`, fetching one (single-flight) if needed.
    /// A tenant slot past its refresh time is refreshed in the background
    /// while its still-usable token is returned.
    pub async fn get_slot(
        self: &Arc<Self>,
        slot: &Arc<TokenSlot>,
    ) -> Result<Arc<Token>, FeishuError> {
        self.get_slot_traced(slot, None).await
    }

    /// [`TokenManager::get_slot`] for a request with a trace: when it has
    /// to wait (no usable token cached), the wait is a `token wait` span of
    /// the request, with the token call as a `token fetch` child when the
    /// request makes it, and its outcome: `fetched` (a call of its own),
    /// `waited` (another's call: the background refresh, another request)
    /// or `failed`. A cached token, the usual case, makes no span.
    pub async fn get_slot_traced(
        self: &Arc<Self>,
        slot: &Arc<TokenSlot>,
        trace: Option<&RequestTrace>,
    ) -> Result<Arc<Token>, FeishuError> {
        let requested_at = Instant::now();
        if let Some(t) = slot.usable(requested_at) {
            if matches!(slot.source, Source::StoreTenant { .. })
                && requested_at >= t.refresh_at
                && !slot.refreshing.swap(true, Ordering::AcqRel)
            {
                let this = Arc::clone(self);
                let slot = Arc::clone(slot);
                tokio::spawn(async move {
                    this.refresh(&slot).await;
                    slot.refreshing.store(false, Ordering::Release);
                });
            }
            return Ok(t);
        }
        let wait = trace.and_then(|t| t.child("token wait"));
        if let Some(span) = &wait {
            span.set(trace::key::TOKEN_KIND, slot.source.field());
        }
        // Boxed: the slow way (a lock, maybe a token call) stays out of the
        // future of every request, which almost always has a token cached.
        let outcome = Box::pin(self.wait_or_fetch(slot, requested_at, wait.as_ref())).await;
        if let Some(span) = &wait {
            match &outcome {
                Ok((_, fetched)) => span.set(
                    trace::key::TOKEN_OUTCOME,
                    if *fetched { "fetched" } else { "waited" },
                ),
                Err(e) => {
                    span.set(trace::key::TOKEN_OUTCOME, "failed");
                    span.set(trace::key::CODE, e.code);
                    span.fail("no token");
                }
            }
        }
        outcome.map(|(token, _)| token)
    }

    /// The slow way of [`TokenManager::get_slot_traced`]: the slot's flight
    /// lock, then the token someone fetched meanwhile, the failure they met,
    /// or a call of our own (`true`).
    async fn wait_or_fetch(
        self: &Arc<Self>,
        slot: &Arc<TokenSlot>,
        requested_at: Instant,
        span: Option<&trace::Span>,
    ) -> Result<(Arc<Token>, bool), FeishuError> {
        let mut flight = slot.flight.lock().await;
        if let Some(t) = slot.usable(Instant::now()) {
            return Ok((t, false));
        }
        // A fetch that failed while we queued answers for us too.
        if let Some((at, err)) = &flight.last_failure {
            if *at >= requested_at {
                return Err(err.clone());
            }
        }
        if let (Some(next), Some((_, err))) = (flight.next_attempt, &flight.last_failure) {
            if next > Instant::now() {
                return Err(err.clone());
            }
        }
        let fetch = span.map(|s| s.child("token fetch", trace::Kind::Client));
        let fetched = self.attempt(slot, &mut flight).await;
        if let (Some(span), Err(e)) = (&fetch, &fetched) {
            span.set(trace::key::CODE, e.code);
            span.fail("token call failed");
        }
        fetched.map(|t| (t, true))
    }

    /// A token of `slot` that is not yet due for refresh, for a request
    /// that cannot be replayed (a streamed upload): one past its
    /// `refresh_at` (the background refresh is late or failing) is replaced
    /// first, single-flight, unless a fetch is backing off. If no fresh one
    /// can be had, the still-usable one is returned (the upload may then
    /// meet a token-invalid answer, which goes to the caller).
    pub async fn get_slot_fresh(
        self: &Arc<Self>,
        slot: &Arc<TokenSlot>,
        trace: Option<&RequestTrace>,
    ) -> Result<Arc<Token>, FeishuError> {
        let token = self.get_slot_traced(slot, trace).await?;
        if Instant::now() < token.refresh_at {
            return Ok(token);
        }
        let mut flight = slot.flight.lock().await;
        let now = Instant::now();
        if let Some(t) = slot.usable(now).filter(|t| now < t.refresh_at) {
            return Ok(t);
        }
        if flight.next_attempt.is_some_and(|n| n > now) {
            return slot.usable(now).map_or(Ok(token), Ok);
        }
        match self.attempt(slot, &mut flight).await {
            Ok(fresh) => Ok(fresh),
            Err(e) => slot.usable(Instant::now()).ok_or(e),
        }
    }

    /// Refreshes `slot` unless someone just did or it is backing off.
    async fn refresh(self: &Arc<Self>, slot: &Arc<TokenSlot>) {
        let mut flight = slot.flight.lock().await;
        let now = Instant::now();
        let fresh = slot
            .current
            .read()
            .ok()
            .and_then(|c| c.as_ref().map(|t| t.refresh_at > now))
            .unwrap_or(false);
        let backing_off = flight.next_attempt.is_some_and(|n| n > now);
        if !fresh && !backing_off {
            let _ = self.attempt(slot, &mut flight).await;
        }
    }

    /// Drops the token of the self-built app `app` if it is still
    /// generation `generation`. Returns whether it was dropped.
    pub fn invalidate_if_current(&self, app: usize, generation: u64) -> bool {
        self.invalidate_slot(&self.slots[app], generation)
    }

    /// Drops the token of `slot` if it is still generation `generation`.
    pub fn invalidate_slot(&self, slot: &TokenSlot, generation: u64) -> bool {
        let mut cur = slot.current.write().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_some_and(|t| t.generation == generation) {
            *cur = None;
            drop(cur);
            if !matches!(slot.source, Source::StoreTenant { .. }) {
                self.metrics.token_dropped(slot.index);
            }
            tracing::info!(app = %slot.name, kind = slot.source.field(), "dropped a cached token after Feishu rejected it");
            true
        } else {
            false
        }
    }

    /// Status of every slot, for `/readyz`.
    pub fn statuses(&self) -> Vec<TokenStatus> {
        let now = Instant::now();
        self.slots
            .iter()
            .map(|s| {
                let cur = s.usable(now);
                let (err, failures) = s.status.lock().map(|g| g.clone()).unwrap_or((None, 0));
                TokenStatus {
                    app: s.name.clone(),
                    has_token: cur.is_some(),
                    expires_in_secs: cur
                        .map(|t| t.expires_at.saturating_duration_since(now).as_secs()),
                    last_error_code: err.as_ref().map(|e| e.code),
                    last_error: err.map(|e| e.msg),
                    consecutive_failures: failures,
                    settled: s.settled.load(Ordering::Acquire),
                }
            })
            .collect()
    }

    /// True when every app holds a usable token.
    pub fn all_ready(&self) -> bool {
        let now = Instant::now();
        self.slots.iter().all(|s| s.usable(now).is_some())
    }

    /// True once every app's first token call has ended with a token or
    /// with Feishu's refusal (a wrong secret, a missing app_ticket): what
    /// the pod's readiness waits for at start. "Feishu could not be
    /// reached" does not count: the call is retried, and readiness waits
    /// for it up to its start timeout.
    pub fn all_settled(&self) -> bool {
        self.slots.iter().all(|s| s.settled.load(Ordering::Acquire))
    }

    /// The apps without a usable token now, by name.
    pub fn apps_without_token(&self) -> Vec<String> {
        let now = Instant::now();
        self.slots
            .iter()
            .filter(|s| s.usable(now).is_none())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Spawns one background task per app that fetches a token now and
    /// refreshes it ahead of expiry until the returned handles are aborted.
    pub fn spawn_refreshers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.slots.len())
            .map(|app| {
                let this = Arc::clone(self);
                tokio::spawn(async move { this.refresh_loop(app).await })
            })
            .collect()
    }

    async fn refresh_loop(self: &Arc<Self>, app: usize) {
        let slot = Arc::clone(&self.slots[app]);
        loop {
            let wake = {
                let flight = slot.flight.lock().await;
                let due = slot
                    .current
                    .read()
                    .ok()
                    .and_then(|c| c.as_ref().map(|t| t.refresh_at))
                    .unwrap_or_else(Instant::now);
                match flight.next_attempt {
                    Some(n) if n > due => n,
                    _ => due,
                }
            };
            tokio::time::sleep_until(wake).await;
            self.refresh(&slot).await;
        }
    }

    /// One token call, recorded in the slot. Caller holds the flight lock.
    async fn attempt(
        self: &Arc<Self>,
        slot: &TokenSlot,
        flight: &mut Flight,
    ) -> Result<Arc<Token>, FeishuError> {
        let sent = Instant::now();
        let sent_wall = SystemTime::now();
        match self.fetch(slot).await {
            Ok((value, expire)) => {
                let token = Arc::new(self.plan(value, expire, sent)?);
                let expiry_unix = sent_wall
                    .checked_add(expire)
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs_f64());
                *slot.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&token));
                slot.settled.store(true, Ordering::Release);
                *flight = Flight::default();
                if let Ok(mut s) = slot.status.lock() {
                    *s = (None, 0);
                }
                // The expiry gauge shows the app's own token, not tenants'.
                let tenant = matches!(slot.source, Source::StoreTenant { .. });
                self.metrics.token_refresh(
                    slot.index,
                    if tenant {
                        None
                    } else {
                        expiry_unix.or(Some(0.0))
                    },
                    true,
                );
                tracing::info!(
                    app = %slot.name,
                    kind = slot.source.field(),
                    expire_secs = expire.as_secs(),
                    generation = token.generation,
                    "fetched a token"
                );
                Ok(token)
            }
            Err(err) => {
                flight.failures = flight.failures.saturating_add(1);
                let delay = self.backoff(flight.failures);
                let now = Instant::now();
                flight.next_attempt = Some(now + delay);
                flight.last_failure = Some((now, err.clone()));
                if let Ok(mut s) = slot.status.lock() {
                    *s = (Some(err.clone()), flight.failures);
                }
                if err.code != codes::GW_UPSTREAM_UNAVAILABLE {
                    // Feishu answered: a refusal is as settled as a token.
                    slot.settled.store(true, Ordering::Release);
                }
                self.metrics.token_refresh(slot.index, None, false);
                tracing::warn!(
                    app = %slot.name,
                    kind = slot.source.field(),
                    code = err.code,
                    msg = %err.msg,
                    failures = flight.failures,
                    retry_in_ms = delay.as_millis() as u64,
                    "token fetch failed"
                );
                Err(err)
            }
        }
    }

    /// Turns a fresh token into its timing plan.
    fn plan(&self, value: Secret, expire: Duration, sent: Instant) -> Result<Token, FeishuError> {
        let mut header =
            HeaderValue::try_from(format!("Bearer {}", value.expose())).map_err(|_| {
                FeishuError {
                    code: codes::TENANT_TOKEN_FETCH_FAILED,
                    msg: "Feishu returned a token that is not a valid header value".into(),
                }
            })?;
        header.set_sensitive(true);
        let expires_at = sent + expire;
        let guard = (expire / 10).min(Duration::from_secs(60));
        let lead = self.policy.refresh_before.min(expire / 2).max(guard * 2);
        Ok(Token {
            header,
            value,
            generation: self.generation.fetch_add(1, Ordering::Relaxed),
            expires_at,
            usable_until: expires_at - guard,
            refresh_at: expires_at.checked_sub(lead).unwrap_or(sent),
        })
    }

    fn backoff(&self, failures: u32) -> Duration {
        let min = self.policy.retry_min;
        let max = self.policy.retry_max;
        let exp = min
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(max);
        // Equal jitter: half fixed, half random, so retries never bunch up
        // and never come in a tight loop.
        let half = exp / 2;
        let jitter = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MapEnv};

    fn manager(refresh_before: &str) -> TokenManager {
        manager_at(refresh_before, "https://open.feishu.cn")
    }

    fn manager_at(refresh_before: &str, upstream: &str) -> TokenManager {
        let text = format!(
            r#"
upstream = "{upstream}"
[token]
refresh_before = "{refresh_before}"
[[apps]]
name = "a"
app_id = "cli_1"
app_secret_env = "S"
[[clients]]
name = "c"
key_env = "K"
app = "a"
"#
        );
        let env = MapEnv::new()
            .with("S", "secret")
            .with("K", "0123456789abcdef0");
        let config = Config::parse(&text, &env).unwrap();
        let metrics =
            Arc::new(Metrics::new(prometheus::Registry::new(), &["a".into()], &[]).unwrap());
        let client = crate::upstream::build_client(&config.upstream_settings()).unwrap();
        TokenManager::new(&config.apps, &[], client, config.token.clone(), metrics)
    }

    #[tokio::test]
    async fn two_hour_tokens_refresh_inside_feishus_30_minute_window() {
        let m = manager("25m");
        let sent = Instant::now();
        let t = m
            .plan(Secret::new("t-x"), Duration::from_secs(7200), sent)
            .unwrap();
        assert_eq!(t.expires_at - t.refresh_at, Duration::from_secs(25 * 60));
        assert_eq!(t.expires_at - t.usable_until, Duration::from_secs(60));
        assert!(t.refresh_at < t.usable_until);
        assert!(!format!("{t:?}").contains("t-x"), "Debug hides the token");
    }

    #[tokio::test]
    async fn short_lifetimes_refresh_at_half_life_and_stop_before_expiry() {
        let m = manager("25m");
        let sent = Instant::now();
        let t = m
            .plan(Secret::new("t-x"), Duration::from_secs(4), sent)
            .unwrap();
        assert_eq!(t.refresh_at - sent, Duration::from_secs(2));
        assert_eq!(t.expires_at - t.usable_until, Duration::from_millis(400));
        // The same token handed back with 40 min left is refreshed at half
        // of that, 20 min before expiry: inside the window in which Feishu
        // issues a new one.
        let t = m
            .plan(Secret::new("t-x"), Duration::from_secs(2400), sent)
            .unwrap();
        assert_eq!(t.expires_at - t.refresh_at, Duration::from_secs(20 * 60));
        assert!(t.expires_at - t.refresh_at < Duration::from_secs(30 * 60));
    }

    /// A streamed upload cannot be replayed: a token past its refresh time
    /// (the background refresh late or failing) is replaced before it goes,
    /// while ordinary requests keep using it until `usable_until`.
    #[tokio::test]
    async fn a_token_due_for_refresh_is_replaced_for_a_request_that_cannot_be_replayed() {
        let mut sim = feishu_sim::SimConfig::with_app("cli_1", "secret");
        sim.token_lifetime = Duration::from_secs(4);
        let sim = feishu_sim::SimFeishu::start(sim).await.unwrap();
        let m = Arc::new(manager_at("25m", &sim.base_url()));
        let slot = Arc::clone(m.app_slot(0));
        let first = m.get_slot(&slot).await.unwrap();
        let fresh = m.get_slot_fresh(&slot, None).await.unwrap();
        assert_eq!(fresh.generation, first.generation, "not due yet: kept");
        tokio::time::sleep_until(first.refresh_at + Duration::from_millis(100)).await;
        let ordinary = m.get_slot(&slot).await.unwrap();
        assert_eq!(ordinary.generation, first.generation, "still usable");
        let fresh = m.get_slot_fresh(&slot, None).await.unwrap();
        assert_ne!(fresh.generation, first.generation, "replaced");
        assert!(Instant::now() < fresh.refresh_at);
        assert_eq!(sim.token_calls().len(), 2);
        let again = m.get_slot_fresh(&slot, None).await.unwrap();
        assert_eq!(again.generation, fresh.generation, "one fetch, then cached");
        assert_eq!(sim.token_calls().len(), 2);
    }

    #[tokio::test]
    async fn backoff_grows_with_jitter_and_is_capped() {
        let m = manager("25m");
        for failures in 1..40 {
            let d = m.backoff(failures);
            assert!(
                d >= Duration::from_millis(250) && d <= Duration::from_secs(30),
                "{d:?}"
            );
        }
        assert!(m.backoff(20) >= Duration::from_secs(15));
    }
}
