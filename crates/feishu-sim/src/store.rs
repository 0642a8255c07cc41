//! Store apps (ISV), the platform side: their tickets, the tenants that
//! installed them, where their events go, and the pushes made there.
//!
//! # Tickets
//!
//! Every push (after a resend, or [`SimFeishu::push_ticket_now`]) issues a
//! new ticket. Issued tickets stay valid until
//! [`SimFeishu::invalidate_tickets`]; Feishu keeps an old ticket usable for
//! hours, and no test needs it to expire on its own.
//!
//! # Pushes
//!
//! A push is one HTTP POST from the fake's own client to the app's event
//! URL, sealed by [`callback::seal`](super::callback::seal): encrypted and
//! signed when the app has an Encrypt Key. It is tried once (Feishu retries
//! failed pushes later; the fake does not) with a 10 s timeout, and recorded
//! with the answer's status as a [`PushedEvent`].
//!
//! [`SimFeishu::push_ticket_now`]: super::SimFeishu::push_ticket_now
//! [`SimFeishu::invalidate_tickets`]: super::SimFeishu::invalidate_tickets

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::callback::{random_hex, seal};
use super::state::{lock, Shared};
use super::{PushOutcome, PushedEvent, SimStoreApp};

/// How long one push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers to pushes are kept up to this size.
const MAX_ANSWER: usize = 64 << 10;

/// One store app's live state.
#[derive(Debug)]
struct StoreApp {
    cfg: SimStoreApp,
    tenants: HashSet<String>,
    /// Tickets issued and not invalidated, oldest first.
    tickets: Vec<String>,
}

/// Every store app, by id.
#[derive(Debug, Default)]
pub(crate) struct StoreBook {
    apps: HashMap<String, StoreApp>,
}

/// What a push needs, taken under the lock and used without it.
#[derive(Debug, Clone)]
pub(crate) struct PushPlan {
    pub(crate) app_id: String,
    pub(crate) url: Option<String>,
    pub(crate) encrypt_key: Option<String>,
    pub(crate) verification_token: String,
}

impl StoreBook {
    pub(crate) fn new(apps: Vec<SimStoreApp>) -> Self {
        let apps = apps
            .into_iter()
            .map(|cfg| {
                let app = StoreApp {
                    tenants: cfg.tenants.iter().cloned().collect(),
                    tickets: Vec::new(),
                    cfg,
                };
                (app.cfg.app_id.clone(), app)
            })
            .collect();
        StoreBook { apps }
    }

    pub(crate) fn is_store_app(&self, app_id: &str) -> bool {
        self.apps.contains_key(app_id)
    }

    /// Whether `app_id` / `app_secret` are a store app's credentials.
    pub(crate) fn credentials_ok(&self, app_id: &str, app_secret: &str) -> bool {
        self.apps
            .get(app_id)
            .is_some_and(|a| a.cfg.app_secret == app_secret)
    }

    pub(crate) fn ticket_ok(&self, app_id: &str, ticket: &str) -> bool {
        self.apps
            .get(app_id)
            .is_some_and(|a| a.tickets.iter().any(|t| t == ticket))
    }

    pub(crate) fn tenant_ok(&self, app_id: &str, tenant_key: &str) -> bool {
        self.apps
            .get(app_id)
            .is_some_and(|a| a.tenants.contains(tenant_key))
    }

    /// Issue a new ticket for a known app.
    pub(crate) fn issue_ticket(&mut self, app_id: &str) -> Option<String> {
        let app = self.apps.get_mut(app_id)?;
        let ticket: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        app.tickets.push(ticket.clone());
        Some(ticket)
    }

    pub(crate) fn latest_ticket(&self, app_id: &str) -> Option<String> {
        self.apps.get(app_id)?.tickets.last().cloned()
    }

    /// Forget the app's tickets; returns whether the app is known.
    pub(crate) fn invalidate_tickets(&mut self, app_id: &str) -> bool {
        self.apps
            .get_mut(app_id)
            .map(|a| a.tickets.clear())
            .is_some()
    }

    pub(crate) fn set_event_url(&mut self, app_id: &str, url: Option<String>) -> bool {
        self.apps
            .get_mut(app_id)
            .map(|a| a.cfg.event_url = url)
            .is_some()
    }

    pub(crate) fn add_tenant(&mut self, app_id: &str, tenant_key: &str) -> bool {
        self.apps
            .get_mut(app_id)
            .map(|a| a.tenants.insert(tenant_key.to_owned()))
            .is_some()
    }

    pub(crate) fn plan(&self, app_id: &str) -> Option<PushPlan> {
        let app = self.apps.get(app_id)?;
        Some(PushPlan {
            app_id: app_id.to_owned(),
            url: app.cfg.event_url.clone(),
            encrypt_key: app.cfg.encrypt_key.clone(),
            verification_token: app.cfg.verification_token.clone(),
        })
    }
}

/// The fake's client for pushes: plain HTTP, title-cased headers as Feishu
/// writes them.
pub(crate) type PushClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn push_client() -> PushClient {
    Client::builder(TokioExecutor::new())
        .http1_title_case_headers(true)
        .build_http()
}

/// The v1 `app_ticket` event, the one Feishu pushes to a store app's event
/// URL.
pub(crate) fn app_ticket_event(plan: &PushPlan, ticket: &str) -> Value {
    json!({
        "uuid": random_hex(16),
        "token": plan.verification_token,
        "ts": unix_ts_string(),
        "type": "event_callback",
        "event": {"app_id": plan.app_id, "app_ticket": ticket, "type": "app_ticket"}
    })
}

/// The subscription check Feishu sends when an event URL is saved.
pub(crate) fn url_verification_event(plan: &PushPlan, challenge: &str) -> Value {
    json!({"challenge": challenge, "token": plan.verification_token, "type": "url_verification"})
}

/// `"1700000000.1234567"`: seconds with a fraction, as Feishu writes `ts`.
fn unix_ts_string() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:07}", now.as_secs(), now.subsec_nanos() / 100)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// POST `event` to the plan's URL, sealed; `sign` as Feishu does for events
/// (not for the subscription check).
pub(crate) async fn deliver(
    client: &PushClient,
    plan: &PushPlan,
    event: &Value,
    sign: bool,
) -> PushedEvent {
    let event_type = event["event"]["type"]
        .as_str()
        .or_else(|| event["header"]["event_type"].as_str())
        .or_else(|| event["type"].as_str())
        .unwrap_or("")
        .to_owned();
    let sealed = seal(plan.encrypt_key.as_deref(), event, sign, unix_now());
    let mut record = PushedEvent {
        app_id: plan.app_id.clone(),
        event_type,
        app_ticket: None,
        challenge: None,
        url: plan.url.clone().unwrap_or_default(),
        encrypted: plan.encrypt_key.is_some(),
        signed: !sealed.headers.is_empty(),
        outcome: PushOutcome::NoEventUrl,
        answer: Bytes::new(),
        at: Instant::now(),
    };
    let Some(url) = plan.url.as_deref() else {
        return record;
    };
    let mut request = match Request::builder()
        .method(Method::POST)
        .uri(url)
        .body(Full::new(sealed.body))
    {
        Ok(r) => r,
        Err(e) => {
            record.outcome = PushOutcome::Failed(format!("bad event URL: {e}"));
            return record;
        }
    };
    let headers = request.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.extend(sealed.headers);

    let sent = tokio::time::timeout(PUSH_TIMEOUT, async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok::<_, String>((status, body))
    })
    .await;
    match sent {
        Ok(Ok((status, body))) => {
            record.outcome = PushOutcome::Status(status);
            record.answer = body;
        }
        Ok(Err(e)) => record.outcome = PushOutcome::Failed(e),
        Err(_) => record.outcome = PushOutcome::Failed("timed out".to_owned()),
    }
    record
}

/// Issue a new ticket for `app_id` and push it now. `None` for an unknown
/// app.
pub(crate) async fn push_ticket(shared: &Shared, app_id: &str) -> Option<PushedEvent> {
    let (plan, ticket) = {
        let mut store = lock(&shared.store);
        let plan = store.plan(app_id)?;
        let ticket = store.issue_ticket(app_id)?;
        (plan, ticket)
    };
    let event = app_ticket_event(&plan, &ticket);
    let mut pushed = deliver(&shared.push_client, &plan, &event, true).await;
    pushed.app_ticket = Some(ticket);
    lock(&shared.pushed).push(pushed.clone());
    Some(pushed)
}

/// Send the subscription check (unsigned, as Feishu does) to `app_id`'s
/// event URL now. `None` for an unknown app.
pub(crate) async fn push_url_verification(shared: &Shared, app_id: &str) -> Option<PushedEvent> {
    let plan = lock(&shared.store).plan(app_id)?;
    let challenge = random_hex(16);
    let event = url_verification_event(&plan, &challenge);
    let mut pushed = deliver(&shared.push_client, &plan, &event, false).await;
    pushed.challenge = Some(challenge);
    lock(&shared.pushed).push(pushed.clone());
    Some(pushed)
}

/// Push any event, sealed like Feishu's (signed when `sign`). `None` for an
/// unknown app.
pub(crate) async fn push_event(
    shared: &Shared,
    app_id: &str,
    event: &Value,
    sign: bool,
) -> Option<PushedEvent> {
    let plan = lock(&shared.store).plan(app_id)?;
    let pushed = deliver(&shared.push_client, &plan, event, sign).await;
    lock(&shared.pushed).push(pushed.clone());
    Some(pushed)
}

/// After a resend call: push a new ticket once the configured delay has
/// passed, in a task the fake aborts when it stops.
pub(crate) fn schedule_ticket_push(shared: &Arc<Shared>, app_id: &str) {
    let delay = shared.ticket_push_delay();
    let task_shared = Arc::clone(shared);
    let app_id = app_id.to_owned();
    let mut tasks = lock(&shared.push_tasks);
    // Reap finished pushes so the set stays small.
    while tasks.try_join_next().is_some() {}
    tasks.spawn(async move {
        tokio::time::sleep(delay).await;
        push_ticket(&task_shared, &app_id).await;
    });
}
