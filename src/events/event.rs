//! What the hub is told and answers: the [`Transport`] an event came by,
//! the [`Accepted`] verdict, and the [`Envelope`] read off an event's JSON
//! (its kind, its de-duplication keys). Pure: no I/O, no state.

use bytes::Bytes;
use serde_json::Value;

/// How an event reached the gateway (also an app's `events` setting: the
/// transport Feishu uses for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Feishu POSTs each event to `/feishu/events/<app>` (`events =
    /// "webhook"`, the default).
    #[default]
    Webhook,
    /// Feishu sends each event over the app's WebSocket (`events =
    /// "long_connection"`, self-built apps only).
    LongConnection,
}

impl Transport {
    /// The metric label and config value: `webhook` or `long_connection`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Webhook => "webhook",
            Transport::LongConnection => "long_connection",
        }
    }
}

/// The hub's verdict on one event, which its transport turns into Feishu's
/// acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Accepted for delivery to every matching subscriber (or none
    /// matched): acknowledge (webhook 200, long connection `{"code":200}`).
    Queued,
    /// Seen before (same event id, or for `im.message.receive_v1` the same
    /// message id): acknowledge, not delivered again; counted.
    Duplicate,
    /// A card callback's answer (JSON) from its subscriber, or the
    /// configured fallback on a timeout or failure: answer it to Feishu.
    Answer(Bytes),
    /// Not accepted (a subscriber's queue is full, the JSON is malformed,
    /// the app is unknown): Feishu must push it again (webhook: 503; long
    /// connection: ack `{"code":500}`). The reason is a fixed text for
    /// logs and metrics.
    Refused(&'static str),
}

/// The event type of card callbacks, answered synchronously.
pub const CARD_ACTION: &str = "card.action.trigger";
/// The event whose duplicates Feishu advises to find by message id.
pub const MESSAGE_RECEIVE: &str = "im.message.receive_v1";

/// What the hub needs to know of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// v2 `header.event_type`, v1 `event.type` (empty when absent).
    pub event_type: String,
    /// v2 `header.event_id`, v1 `uuid`.
    pub event_id: Option<String>,
    /// For `im.message.receive_v1`: `event.message.message_id`.
    pub message_id: Option<String>,
}

impl Envelope {
    /// Reads an event's JSON; `None` when it is not a JSON object.
    pub fn read(payload: &[u8]) -> Option<Envelope> {
        let v: Value = serde_json::from_slice(payload).ok()?;
        let v = v.as_object()?;
        let s = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let event = v.get("event");
        let (event_type, event_id) = match v.get("header").filter(|h| h.is_object()) {
            Some(h) => (s(h.get("event_type")), s(h.get("event_id"))),
            None => (s(event.and_then(|e| e.get("type"))), s(v.get("uuid"))),
        };
        let event_type = event_type.unwrap_or_default();
        let message_id = if event_type == MESSAGE_RECEIVE {
            let message = event.and_then(|e| e.get("message"));
            s(message.and_then(|m| m.get("message_id")))
        } else {
            None
        };
        Some(Envelope {
            event_type,
            event_id,
            message_id,
        })
    }

    /// The keys this event is de-duplicated by: `id:<event id>` and, for
    /// `im.message.receive_v1`, `msg:<message id>` (Feishu may push one
    /// message under two event ids).
    pub fn dedupe_keys(&self) -> Vec<String> {
        let mut keys = Vec::with_capacity(2);
        if let Some(id) = &self.event_id {
            keys.push(format!("id:{id}"));
        }
        if let Some(m) = &self.message_id {
            keys.push(format!("msg:{m}"));
        }
        keys
    }

    /// The id a subscriber sees in `X-Gateway-Event-Id` (empty when the
    /// event has none).
    pub fn id(&self) -> &str {
        self.event_id.as_deref().unwrap_or("")
    }
}

/// The event without Feishu's Verification Token (v1 top-level `token`, v2
/// `header.token`): subscribers get the event, never the app's credential
/// (with it, a subscriber could forge pushes to the gateway's webhook).
/// Unchanged bytes when there is none.
pub fn without_token(payload: Bytes) -> Bytes {
    let Ok(Value::Object(mut v)) = serde_json::from_slice::<Value>(&payload) else {
        return payload;
    };
    let top = v.remove("token").is_some();
    let header = v
        .get_mut("header")
        .and_then(Value::as_object_mut)
        .and_then(|h| h.remove("token"))
        .is_some();
    if !top && !header {
        return payload;
    }
    // Shorter than the payload: written into a buffer of its size, then
    // held at its exact length (it may sit in queues for hours; grown by
    // doubling, a 1 KB event's buffer kept up to twice that:
    // benches/events.rs).
    let mut out = Vec::with_capacity(payload.len());
    match serde_json::to_writer(&mut out, &v) {
        Ok(()) => Bytes::from(out.into_boxed_slice()),
        Err(_) => payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v2_v1_and_message_ids() {
        let v2 = br#"{"schema":"2.0","header":{"event_id":"e1","event_type":"im.message.receive_v1"},"event":{"message":{"message_id":"om_1"}}}"#;
        let e = Envelope::read(v2).unwrap();
        assert_eq!(e.event_type, MESSAGE_RECEIVE);
        assert_eq!(e.dedupe_keys(), ["id:e1", "msg:om_1"]);
        let v1 = br#"{"uuid":"u1","type":"event_callback","event":{"type":"message"}}"#;
        let e = Envelope::read(v1).unwrap();
        assert_eq!((e.event_type.as_str(), e.id()), ("message", "u1"));
        assert_eq!(e.dedupe_keys(), ["id:u1"]);
        let other = br#"{"schema":"2.0","header":{"event_id":"e2","event_type":"x.y"},"event":{"message":{"message_id":"om_1"}}}"#;
        assert_eq!(Envelope::read(other).unwrap().dedupe_keys(), ["id:e2"]);
        assert!(Envelope::read(b"[1]").is_none());
        assert!(Envelope::read(b"nope").is_none());
    }

    #[test]
    fn the_verification_token_is_taken_out_of_v1_and_v2_events() {
        let v2 = br#"{"schema":"2.0","header":{"event_id":"e1","token":"vt-secret","event_type":"x"},"event":{}}"#;
        let out = without_token(Bytes::from_static(v2));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["header"]["event_id"], "e1");
        assert!(v["header"].get("token").is_none());
        let v1 =
            br#"{"uuid":"u1","token":"vt-secret","type":"event_callback","event":{"type":"x"}}"#;
        let out = without_token(Bytes::from_static(v1));
        assert!(!String::from_utf8_lossy(&out).contains("vt-secret"));
        let plain = Bytes::from_static(br#"{"schema":"2.0","header":{"event_id":"e2"}}"#);
        assert_eq!(without_token(plain.clone()), plain, "unchanged bytes");
    }
}
