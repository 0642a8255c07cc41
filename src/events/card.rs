//! Card callbacks (`card.action.trigger`): Feishu waits at most 3 s for the
//! answer, which may change the card or show a toast. So a callback is not
//! queued: it is POSTed at once to the one subscription of its app that
//! names `card.action.trigger` (signed like any event), and the
//! subscriber's 2xx JSON body is Feishu's answer. When the subscriber does
//! not answer within `card_deadline` (default 2.5 s, leaving Feishu's
//! network its share of the 3 s), answers non-2xx or not JSON, or there is
//! no such subscription, the answer is `card_fallback` (default `{}`: the
//! card stays as it is) and the outcome is counted
//! (`feishu_gateway_events_card_callbacks_total{outcome}`).
//!
//! Callbacks are not de-duplicated and not retried: Feishu does not push
//! them again, and a user's second click is a new callback.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;

use super::config::{EventSettings, SubscriptionConfig};
use super::delivery::signed_request;
use super::sign;
use crate::observe::metrics::EventMetrics;
use crate::upstream::HttpClient;

/// The largest answer taken from a subscriber.
const MAX_ANSWER: usize = 256 << 10;

/// How a card callback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The subscriber's body is the answer.
    Answered,
    /// No answer within the deadline.
    Timeout,
    /// Connection failure, non-2xx or a body that is not JSON.
    Error,
    /// The app has no card subscription.
    NoSubscriber,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::NoSubscriber => "no_subscriber",
        }
    }
}

/// Forwards one callback to `to` and returns Feishu's answer.
#[allow(clippy::too_many_arguments)]
pub async fn answer(
    client: &HttpClient,
    settings: &EventSettings,
    metrics: &EventMetrics,
    app: &str,
    to: Option<&SubscriptionConfig>,
    id: &str,
    body: Bytes,
) -> Bytes {
    let (outcome, answer) = match to {
        None => (Outcome::NoSubscriber, None),
        Some(sub) => forward(client, settings, app, sub, id, body).await,
    };
    metrics.card_callback(app, outcome.as_str());
    if outcome != Outcome::Answered {
        tracing::warn!(
            app,
            subscription = to.map_or("", |s| s.name.as_str()),
            outcome = outcome.as_str(),
            "card callback answered with the fallback"
        );
    }
    answer.unwrap_or_else(|| settings.card_fallback.clone())
}

async fn forward(
    client: &HttpClient,
    settings: &EventSettings,
    app: &str,
    sub: &SubscriptionConfig,
    id: &str,
    body: Bytes,
) -> (Outcome, Option<Bytes>) {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string();
    let signature = sign::signature(sub.secret.expose().as_bytes(), &timestamp, &body);
    let Some(req) = signed_request(
        &sub.url,
        app,
        id,
        super::event::CARD_ACTION,
        &timestamp,
        &signature,
        1,
        body,
    ) else {
        return (Outcome::Error, None);
    };
    let call = async {
        let resp = client.request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .ok()?
            .to_bytes();
        // An empty body is "no change", like `{}`.
        if body.iter().all(u8::is_ascii_whitespace) {
            return Some(Bytes::from_static(b"{}"));
        }
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .filter(serde_json::Value::is_object)?;
        Some(body)
    };
    match tokio::time::timeout(settings.card_deadline, call).await {
        Ok(Some(answer)) => (Outcome::Answered, Some(answer)),
        Ok(None) => (Outcome::Error, None),
        Err(_) => (Outcome::Timeout, None),
    }
}
