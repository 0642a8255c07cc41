//! Events in: Feishu's events, verified by their transport (the webhook
//! endpoint, or an app's long connection), de-duplicated, and fanned out
//! to internal services (`[[subscriptions]]`), each signed by the gateway.
//!
//! | file          | concern                                                   |
//! |---------------|-----------------------------------------------------------|
//! | `hub.rs`      | [`EventHub::accept`]: the one entry point; the order of the steps |
//! | `event.rs`    | [`Transport`], [`Accepted`], the envelope (type, ids)     |
//! | `dedupe.rs`   | event ids seen within the window: memory, and Redis       |
//! | `delivery.rs` | per-subscriber bounded queues, ordered delivery, retries, expiry |
//! | `card.rs`     | card callbacks, answered synchronously within a deadline  |
//! | `sign.rs`     | the HMAC subscribers verify                               |
//! | `webhook.rs`  | the webhook intake's verifiers (both kinds of app)       |
//! | `config.rs`   | `[events]`, `[[subscriptions]]`, an app's event settings |
//! | `long_connection/` | the WebSocket to Feishu per app: endpoint call, frames, pings, fragments, acks, reconnects, the Redis lease |
//!
//! The README's "Events" section states the guarantees and each failure
//! case.

mod card;
pub mod config;
mod dedupe;
mod delivery;
mod event;
mod hub;
pub mod long_connection;
pub mod sign;
pub mod webhook;

pub use config::{AppEvents, EventSettings, EventsConfig, SubscriptionConfig};
pub use delivery::QUEUED_OVERHEAD;
pub use event::{Accepted, Envelope, Transport, CARD_ACTION, MESSAGE_RECEIVE};
pub use hub::EventHub;
