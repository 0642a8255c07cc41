//! The events' configuration, plain data (read by `config/events.rs`):
//! `[events]` ([`EventSettings`]), `[[subscriptions]]`
//! ([`SubscriptionConfig`]) and what each `[[apps]]` entry says about its
//! events ([`AppEvents`]).

use std::time::Duration;

use bytes::Bytes;
use http::Uri;

use super::event::Transport;
use crate::secret::Secret;
use crate::store_apps::callback::CallbackKeys;

/// `[events]`: de-duplication, queues, retries, card callbacks.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSettings {
    /// How long an event id is remembered (`dedupe_window`, default 8h:
    /// Feishu re-pushes for about 7.1 h).
    pub dedupe_window: Duration,
    /// Event ids remembered in memory at most (`dedupe_max_ids`, default
    /// 500000, 64 to 80 bytes each); past it the oldest go first.
    pub dedupe_max_ids: usize,
    /// Events queued per subscription at most (`queue_max_events`, default
    /// 10000).
    pub queue_max_events: usize,
    /// Bytes of event bodies queued per subscription at most
    /// (`queue_max_bytes`, default 64 MiB).
    pub queue_max_bytes: usize,
    /// One delivery attempt, until the subscriber's answer head
    /// (`delivery_timeout`, default 10s).
    pub delivery_timeout: Duration,
    /// Wait after a first failed attempt (`retry_first`, default 1s);
    /// doubled per failure, jittered.
    pub retry_first: Duration,
    /// The longest wait between attempts (`retry_max`, default 5m).
    pub retry_max: Duration,
    /// Undelivered events older than this are dropped and counted
    /// (`drop_after`, default 12h).
    pub drop_after: Duration,
    /// The longest a card callback waits for its subscriber
    /// (`card_deadline`, default 2.5s; Feishu gives 3 s).
    pub card_deadline: Duration,
    /// The answer to a card callback whose subscriber did not answer in
    /// time or failed (`card_fallback`, JSON, default `{}`: the card is left
    /// as it is).
    pub card_fallback: Bytes,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            dedupe_window: Duration::from_secs(8 * 3600),
            dedupe_max_ids: 500_000,
            queue_max_events: 10_000,
            queue_max_bytes: 64 << 20,
            delivery_timeout: Duration::from_secs(10),
            retry_first: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            drop_after: Duration::from_secs(12 * 3600),
            card_deadline: Duration::from_millis(2500),
            card_fallback: Bytes::from_static(b"{}"),
        }
    }
}

/// One `[[subscriptions]]` entry: who gets which events of which app.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionConfig {
    /// Label in logs and metrics (`name`).
    pub name: String,
    /// The `[[apps]]` name whose events it gets (`app`).
    pub app: String,
    /// Event types (`events`); `"*"` is every type but card callbacks.
    pub events: Vec<String>,
    /// Where events are POSTed (`url`, http or https).
    pub url: Uri,
    /// The HMAC key of `X-Gateway-Event-Signature` (`secret_env` /
    /// `secret_file`).
    pub secret: Secret,
}

impl SubscriptionConfig {
    /// Whether this subscription gets events of `event_type`. Card
    /// callbacks go only to a subscription that names them.
    pub fn wants(&self, event_type: &str) -> bool {
        self.events.iter().any(|e| e == event_type)
            || (event_type != super::event::CARD_ACTION && self.events.iter().any(|e| e == "*"))
    }
}

/// What an `[[apps]]` entry says about its events.
#[derive(Debug, Clone, PartialEq)]
pub struct AppEvents {
    /// The app's name.
    pub name: String,
    /// How Feishu sends its events (`events`, default webhook).
    pub transport: Transport,
    /// The webhook's Encrypt Key and Verification Token
    /// (`encrypt_key_env`/`_file`, `verification_token_env`/`_file`);
    /// `None`: the app takes no webhook pushes (`/feishu/events/<app>`
    /// answers 404).
    pub callback: Option<CallbackKeys>,
    /// Refuse webhook pushes without `X-Lark-Signature`
    /// (`require_signature`).
    pub require_signature: bool,
}

/// Everything about events, by app and subscription.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventsConfig {
    /// `[events]`.
    pub settings: EventSettings,
    /// One per `[[apps]]` entry, in the same order as `Config::apps`.
    pub apps: Vec<AppEvents>,
    /// `[[subscriptions]]`.
    pub subscriptions: Vec<SubscriptionConfig>,
}
