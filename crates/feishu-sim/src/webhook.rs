//! Event pushes to any event URL (a self-built app's, or one a test names),
//! as Feishu makes them: sealed like every push ([`seal`](crate::callback::seal):
//! encrypted and signed with an Encrypt Key), and re-pushed on Feishu's
//! schedule (15 s, 5 min, 1 h, 6 h; compressed in tests) until the URL
//! answers 200.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::push::deliver;
use super::state::{lock, Shared};
use super::store::PushPlan;
use super::PushedEvent;

/// Feishu's re-push intervals after a failed push.
pub const FEISHU_REPUSH_SCHEDULE: [Duration; 4] = [
    Duration::from_secs(15),
    Duration::from_secs(300),
    Duration::from_secs(3600),
    Duration::from_secs(6 * 3600),
];

/// Where and how events are pushed: an app's event URL and its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// The app id (recorded with each push).
    pub app_id: String,
    /// The event URL.
    pub url: String,
    /// The Encrypt Key: with one, pushes are encrypted (and signed when
    /// asked).
    pub encrypt_key: Option<String>,
    /// The Verification Token (what [`v2_event`] puts in `header.token`).
    pub verification_token: String,
}

/// A v2 event as Feishu writes it: `{"schema":"2.0","header":{…},"event":…}`.
pub fn v2_event(target: &WebhookTarget, event_type: &str, event_id: &str, event: Value) -> Value {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    json!({
        "schema": "2.0",
        "header": {
            "event_id": event_id,
            "token": target.verification_token,
            "create_time": ms.to_string(),
            "event_type": event_type,
            "tenant_key": "736588c9260f175d",
            "app_id": target.app_id,
        },
        "event": event,
    })
}

fn plan(target: &WebhookTarget) -> PushPlan {
    PushPlan {
        app_id: target.app_id.clone(),
        url: Some(target.url.clone()),
        encrypt_key: target.encrypt_key.clone(),
        verification_token: target.verification_token.clone(),
    }
}

/// Pushes `event` once to `target`.
pub(crate) async fn push_to(
    shared: &Shared,
    target: &WebhookTarget,
    event: &Value,
    sign: bool,
) -> PushedEvent {
    let pushed = deliver(&shared.push_client, &plan(target), event, sign).await;
    lock(&shared.pushed).push(pushed.clone());
    pushed
}

/// Pushes `event` to `target`, then again after each interval of
/// `schedule` while the answer is not 200. Returns every push.
pub(crate) async fn push_until_ok(
    shared: &Shared,
    target: &WebhookTarget,
    event: &Value,
    sign: bool,
    schedule: &[Duration],
) -> Vec<PushedEvent> {
    let mut pushes = vec![push_to(shared, target, event, sign).await];
    for wait in schedule {
        if pushes.last().and_then(PushedEvent::status) == Some(http::StatusCode::OK) {
            break;
        }
        tokio::time::sleep(*wait).await;
        pushes.push(push_to(shared, target, event, sign).await);
    }
    pushes
}
