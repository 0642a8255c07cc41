//! [`EventHub`]: the one entry point of every event, whatever brought it
//! (the webhook endpoint, an app's long connection). In order:
//!
//! 1. **Read** the envelope (type, event id, message id); not a JSON
//!    object: refused.
//! 2. **Card callbacks** (`card.action.trigger`) are answered at once by
//!    their subscriber (`card.rs`), never queued, never de-duplicated.
//! 3. **Room**: every subscription that wants the event must have room in
//!    its queue, else the event is refused as a whole (Feishu pushes it
//!    again later), so no subscriber gets it twice because another one
//!    was full.
//! 4. **De-duplicate** (`dedupe.rs`): seen before: acknowledged, counted,
//!    not queued.
//! 5. **Queue** it for every matching subscriber (`delivery.rs`), under
//!    one lock per app so that step 3's answer still holds; a queue that
//!    filled up meanwhile takes the de-duplication marks back and refuses.
//!
//! `accept` never waits on a subscriber (only, with Redis, on one `SET`
//! per key, at most 250 ms), except for card callbacks, bounded by
//! `card_deadline`.
//!
//! The hub lives as long as the process: its queues and subscriptions
//! are built at start (`[events]` and `[[subscriptions]]` take effect at
//! the next restart; a reload says so).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::config::{EventSettings, EventsConfig, SubscriptionConfig};
use super::dedupe::{Dedupe, Seen};
use super::delivery::{Queued, Subscriber};
use super::event::{Accepted, Envelope, Transport, CARD_ACTION};
use crate::observe::metrics::EventMetrics;
use crate::redis_connection::RedisConnection;
use crate::upstream::HttpClient;

/// The event hub. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Inner>,
}

struct Inner {
    apps: HashMap<String, HubApp>,
    settings: EventSettings,
    dedupe: Dedupe,
    client: HttpClient,
    metrics: EventMetrics,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The runtime the hub started on: every event is handled there, so
    /// the connections it opens (Redis, subscribers) live as long as the
    /// hub, not on a connection worker's runtime.
    runtime: tokio::runtime::Handle,
}

/// One app's subscribers.
struct HubApp {
    subscribers: Vec<Arc<Subscriber>>,
    /// The subscription that answers card callbacks, if any.
    card: Option<SubscriptionConfig>,
    /// Held from the room check to the last push (step 3 to 5).
    queueing: Mutex<()>,
}

impl EventHub {
    /// The hub for `config`, sending with `client`; with `redis` = (the
    /// connection, `key_prefix`), de-duplicating across replicas. Starts
    /// one delivery task per subscription on the current runtime.
    pub fn start(
        config: &EventsConfig,
        client: HttpClient,
        redis: Option<(RedisConnection, String)>,
        metrics: EventMetrics,
    ) -> EventHub {
        let settings = config.settings.clone();
        let mut apps = HashMap::new();
        let mut tasks = Vec::new();
        for app in &config.apps {
            let subs: Vec<&SubscriptionConfig> = config
                .subscriptions
                .iter()
                .filter(|s| s.app == app.name)
                .collect();
            let card = subs
                .iter()
                .find(|s| s.events.iter().any(|e| e == CARD_ACTION))
                .map(|s| (*s).clone());
            let mut types: Vec<&str> = subs
                .iter()
                .flat_map(|s| s.events.iter().map(String::as_str))
                .filter(|t| *t != "*")
                .collect();
            types.sort_unstable();
            types.dedup();
            metrics.app(&app.name, app.transport.as_str(), &types, card.is_some());
            let name: Arc<str> = Arc::from(app.name.as_str());
            let subscribers = subs
                .iter()
                // The card subscription answers synchronously; it gets
                // queued events only for the other types it names.
                .filter(|s| s.events.iter().any(|e| e != CARD_ACTION))
                .map(|s| {
                    let sub = Arc::new(Subscriber::new(
                        (*s).clone(),
                        settings.clone(),
                        metrics.subscription(&app.name, &s.name),
                    ));
                    tasks.push(tokio::spawn(
                        Arc::clone(&sub).run(client.clone(), Arc::clone(&name)),
                    ));
                    sub
                })
                .collect();
            apps.insert(
                app.name.clone(),
                HubApp {
                    subscribers,
                    card,
                    queueing: Mutex::new(()),
                },
            );
        }
        let dedupe = Dedupe::new(
            settings.dedupe_window,
            settings.dedupe_max_ids,
            redis,
            metrics.clone(),
        );
        EventHub {
            inner: Arc::new(Inner {
                apps,
                settings,
                dedupe,
                client,
                metrics,
                tasks: Mutex::new(tasks),
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// One event from Feishu as plaintext JSON (already verified/decrypted
    /// by its transport), for app `app` (the `[[apps]]` name).
    pub async fn accept(&self, app: &str, transport: Transport, payload: Bytes) -> Accepted {
        let hub = self.clone();
        let app = app.to_owned();
        self.inner
            .runtime
            .spawn(async move { hub.accept_here(&app, transport, payload).await })
            .await
            .unwrap_or(Accepted::Refused("shutting down"))
    }

    /// [`accept`](Self::accept), on the hub's runtime.
    async fn accept_here(&self, app: &str, transport: Transport, payload: Bytes) -> Accepted {
        let hub = &self.inner;
        let Some(hub_app) = hub.apps.get(app) else {
            // An app added by a reload: no subscription until a restart.
            tracing::debug!(
                app,
                "event for an app the event hub does not know: acknowledged"
            );
            return Accepted::Queued;
        };
        let Some(envelope) = Envelope::read(&payload) else {
            hub.metrics.refused(app, "malformed");
            tracing::warn!(app, "event refused: not a JSON object");
            return Accepted::Refused("malformed event");
        };
        hub.metrics
            .received(app, &envelope.event_type, transport.as_str());
        let payload = super::event::without_token(payload);
        if envelope.event_type == CARD_ACTION {
            let answer = super::card::answer(
                &hub.client,
                &hub.settings,
                &hub.metrics,
                app,
                hub_app.card.as_ref(),
                envelope.id(),
                payload,
            )
            .await;
            return Accepted::Answer(answer);
        }
        let to: Vec<&Arc<Subscriber>> = hub_app
            .subscribers
            .iter()
            .filter(|s| s.config.wants(&envelope.event_type))
            .collect();
        let full = || {
            to.iter()
                .find(|s| !s.has_room(1, payload.len()))
                .map(|s| s.config.name.clone())
        };
        if let Some(sub) = full() {
            return self.refuse_full(app, &sub);
        }
        let keys = envelope.dedupe_keys();
        if hub.dedupe.check(app, &keys).await == Seen::Duplicate {
            hub.metrics.duplicate(app, transport.as_str());
            tracing::debug!(
                app,
                event_id = envelope.id(),
                "duplicate event acknowledged"
            );
            return Accepted::Duplicate;
        }
        let queued = {
            let _one_at_a_time = hub_app.queueing.lock().unwrap_or_else(|e| e.into_inner());
            match full() {
                Some(sub) => Err(sub),
                None => {
                    let event = Queued {
                        id: Arc::from(envelope.id()),
                        event_type: Arc::from(envelope.event_type.as_str()),
                        body: payload,
                        accepted: Instant::now(),
                    };
                    for s in &to {
                        // Room was checked under this lock: pushes by other
                        // apps go to other queues.
                        s.push(event.clone());
                    }
                    Ok(())
                }
            }
        };
        match queued {
            Ok(()) => Accepted::Queued,
            Err(sub) => {
                hub.dedupe.forget(app, &keys).await;
                self.refuse_full(app, &sub)
            }
        }
    }

    fn refuse_full(&self, app: &str, subscription: &str) -> Accepted {
        self.inner.metrics.refused(app, "queue_full");
        tracing::warn!(
            app,
            subscription,
            "event refused: the subscription's queue is full (Feishu will push it again)"
        );
        Accepted::Refused("subscriber queue full")
    }

    /// Events queued for subscription `name` now (tests, status).
    pub fn queue_depth(&self, name: &str) -> Option<usize> {
        self.inner
            .apps
            .values()
            .flat_map(|a| &a.subscribers)
            .find(|s| s.config.name == name)
            .map(|s| s.depth())
    }

    /// Stops the delivery tasks; what is still queued is counted as
    /// dropped (`reason="shutdown"`).
    pub fn stop(&self) {
        for t in self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        for s in self.inner.apps.values().flat_map(|a| &a.subscribers) {
            s.close();
        }
    }
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("apps", &self.inner.apps.len())
            .finish_non_exhaustive()
    }
}

/// The long connection hands its events to the hub: an event accepted (or
/// already seen) is acked `{"code":200}`, a card callback with its answer,
/// and a refused one `{"code":500}`, so that Feishu pushes it again.
impl super::long_connection::EventSink for EventHub {
    fn accept(
        &self,
        app: &str,
        payload: Bytes,
    ) -> futures_core::future::BoxFuture<'static, super::long_connection::Ack> {
        use super::long_connection::Ack;
        let hub = self.clone();
        let app = app.to_string();
        Box::pin(async move {
            match hub.accept(&app, Transport::LongConnection, payload).await {
                Accepted::Queued | Accepted::Duplicate => Ack::Ok(None),
                Accepted::Answer(answer) => Ack::Ok(Some(answer)),
                Accepted::Refused(_) => Ack::Failed,
            }
        })
    }
}
