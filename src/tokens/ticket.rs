//! The app_ticket of a store app: Feishu pushes it to the event endpoint
//! about once an hour; it buys the app access token. Kept in a
//! [`TicketStore`] so a restart does not wait for the next push, and asked
//! for again (resend) when none or only a stale one is held.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use http::Uri;
use prometheus::IntCounter;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::ticket_store::{StoredTicket, TicketStore, TicketStoreError};
use super::{AppConfig, AppKind};
use crate::feishu::{codes, paths, FeishuError};
use crate::observe::metrics::Metrics;
use crate::secret::Secret;
use crate::upstream::{endpoint, post_json, HttpClient};

pub use super::ticket_store::MAX_TICKET_AGE;

/// Resends are not repeated more often than this while no ticket arrives.
const RESEND_INTERVAL: Duration = Duration::from_secs(10);
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
    /// Ticket boxes for the store apps in `apps` (by app index), to hand to
    /// the token manager and the store apps.
    pub fn for_apps(
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
                    resend_url: endpoint(&a.upstream, paths::APP_TICKET_RESEND),
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
    pub async fn get_or_wait(&self, timeout: Duration) -> Result<Secret, FeishuError> {
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
        self.get().ok_or_else(|| FeishuError {
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
    pub async fn resend(&self) -> Result<(), FeishuError> {
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
        let code = crate::feishu::read_code(&bytes).unwrap_or(-1);
        if code != 0 {
            tracing::warn!(app = %self.app_name, code, "app_ticket resend refused");
            return Err(FeishuError {
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

#[cfg(test)]
mod tests;
