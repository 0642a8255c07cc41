//! Pushes to a store app's event URL, as Feishu makes them: one HTTP POST
//! from the fake's own client, sealed by [`seal`] (encrypted and signed when
//! the app has an Encrypt Key), tried once with a 10 s timeout and recorded
//! with the answer's status as a [`PushedEvent`].

use super::callback::{random_hex, seal};
use super::state::{lock, PushClient, Shared};
use super::store::PushPlan;
use super::{PushOutcome, PushedEvent};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};
use tokio::time::Instant;

/// How long one push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers to pushes are kept up to this size.
const MAX_ANSWER: usize = 64 << 10;

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
