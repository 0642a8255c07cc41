//! Fan-out: one [`Subscriber`] per `[[subscriptions]]` entry, each with its
//! own bounded queue and one delivery task.
//!
//! - **Ordered, one in flight.** The task sends the event at the head of
//!   the queue and only moves on once the subscriber answered 2xx (or the
//!   event expired). A subscriber sees its events in the order the gateway
//!   accepted them; a failing one holds back its own queue only.
//! - **Retries**: after a failed attempt (non-2xx, timeout, connection
//!   error) the task waits `retry_first`, doubled per failure up to
//!   `retry_max`, each wait jittered (a random point in its upper half),
//!   then sends the same event again, freshly signed.
//! - **Bounded**: at most `queue_max_events` events and `queue_max_bytes`
//!   bytes of bodies per subscriber. A full queue refuses new events
//!   ([`Subscriber::has_room`] is checked by the hub before anything is
//!   queued), and Feishu pushes them again later.
//! - **Expiry**: an event older than `drop_after` is dropped unsent and
//!   counted (`feishu_gateway_events_dropped_total{reason="expired"}`).
//!
//! The queue lives in memory: events queued when the process stops are
//! lost (they were acknowledged to Feishu), and counted as dropped with
//! `reason="shutdown"`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::{EventSettings, SubscriptionConfig};
use super::sign;
use crate::observe::metrics::SubscriptionMetrics;
use crate::upstream::HttpClient;

/// What an event costs in a queue beside its body (the deque slot, its id
/// and type strings, the body's shared handle): counted against
/// `queue_max_bytes` too. Measured by `benches/events.rs`: 252 bytes in a
/// full default queue (the deque's slots are 80 bytes, grown by powers of
/// two: 131 bytes per event at 10,000).
pub const QUEUED_OVERHEAD: usize = 256;

/// One event waiting for a subscriber.
#[derive(Debug, Clone)]
pub struct Queued {
    /// `X-Gateway-Event-Id`.
    pub id: Arc<str>,
    /// `X-Gateway-Event-Type`.
    pub event_type: Arc<str>,
    /// The plain JSON, as Feishu sent it (shared by every subscriber).
    pub body: Bytes,
    /// When the gateway accepted it.
    pub accepted: Instant,
}

impl Queued {
    fn cost(&self) -> usize {
        self.body.len() + QUEUED_OVERHEAD
    }
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Queued>,
    bytes: usize,
    /// False once the task stopped: nothing more is taken.
    closed: bool,
}

/// One subscription's queue and delivery state.
pub struct Subscriber {
    /// The subscription.
    pub config: SubscriptionConfig,
    queue: Mutex<Queue>,
    wake: Notify,
    settings: EventSettings,
    metrics: SubscriptionMetrics,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered,
    /// Another status.
    Status(StatusCode),
    /// No answer head within the timeout.
    Timeout,
    /// The connection failed.
    Connect,
}

impl Subscriber {
    /// A subscriber with an empty queue (its task is started by
    /// [`Subscriber::run`]).
    pub fn new(
        config: SubscriptionConfig,
        settings: EventSettings,
        metrics: SubscriptionMetrics,
    ) -> Subscriber {
        Subscriber {
            config,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            settings,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `n` more events of `bytes` body bytes fit.
    pub fn has_room(&self, n: usize, bytes: usize) -> bool {
        let q = self.lock();
        !q.closed
            && q.items.len() + n <= self.settings.queue_max_events
            && q.bytes + bytes + n * QUEUED_OVERHEAD <= self.settings.queue_max_bytes
    }

    /// Queues `event`; false when it does not fit (or the task stopped).
    pub fn push(&self, event: Queued) -> bool {
        {
            let mut q = self.lock();
            let cost = event.cost();
            if q.closed
                || q.items.len() >= self.settings.queue_max_events
                || q.bytes + cost > self.settings.queue_max_bytes
            {
                return false;
            }
            q.bytes += cost;
            q.items.push_back(event);
            self.metrics.depth.set(q.items.len() as i64);
            self.metrics.bytes.set(q.bytes as i64);
        }
        self.wake.notify_one();
        true
    }

    /// The head of the queue, dropping what expired on the way.
    fn head(&self) -> Option<Queued> {
        let mut q = self.lock();
        while let Some(front) = q.items.front() {
            if front.accepted.elapsed() < self.settings.drop_after {
                return Some(front.clone());
            }
            let gone = q.items.pop_front().expect("a front");
            q.bytes -= gone.cost();
            self.metrics.expired.inc();
            tracing::warn!(
                subscription = %self.config.name,
                app = %self.config.app,
                event_id = %gone.id,
                "event dropped: not delivered within drop_after"
            );
        }
        self.metrics.depth.set(q.items.len() as i64);
        self.metrics.bytes.set(q.bytes as i64);
        None
    }

    /// Removes the head once delivered.
    fn pop(&self) {
        let mut q = self.lock();
        if let Some(gone) = q.items.pop_front() {
            q.bytes -= gone.cost();
        }
        self.metrics.depth.set(q.items.len() as i64);
        self.metrics.bytes.set(q.bytes as i64);
    }

    /// Stops taking events and counts those still queued as dropped.
    pub fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        let n = q.items.len();
        if n > 0 {
            self.metrics.shutdown.inc_by(n as u64);
            tracing::warn!(
                subscription = %self.config.name,
                app = %self.config.app,
                events = n,
                "events still queued at shutdown are lost"
            );
        }
        q.items.clear();
        q.bytes = 0;
        self.metrics.depth.set(0);
        self.metrics.bytes.set(0);
    }

    /// Events queued now.
    pub fn depth(&self) -> usize {
        self.lock().items.len()
    }

    /// The delivery task: forever, the head of the queue until delivered
    /// or expired.
    pub async fn run(self: Arc<Self>, client: HttpClient, app: Arc<str>) {
        // Failures in a row, for the backoff: a subscriber that is down
        // stays backed off when one expired event gives way to the next.
        let mut failures: u32 = 0;
        // Attempts at the head event (`X-Gateway-Event-Attempt`), from 1
        // for each new head.
        let mut head: Option<Arc<str>> = None;
        let mut attempt: u32 = 0;
        loop {
            let Some(event) = self.head() else {
                if self.lock().closed {
                    return;
                }
                // Woken by the next push; a push between `head` and here
                // left a permit, so this returns at once.
                self.wake.notified().await;
                continue;
            };
            if head.as_ref() != Some(&event.id) {
                head = Some(Arc::clone(&event.id));
                attempt = 0;
            }
            attempt += 1;
            failures += 1;
            let result = self.attempt(&client, &app, &event, attempt).await;
            match result {
                Attempt::Delivered => {
                    self.metrics.ok.inc();
                    self.metrics
                        .latency
                        .observe(event.accepted.elapsed().as_secs_f64());
                    self.pop();
                    failures = 0;
                    continue;
                }
                Attempt::Status(s) => {
                    self.metrics.status.inc();
                    tracing::warn!(subscription = %self.config.name, app = %app, event_id = %event.id, status = s.as_u16(), attempt, "event delivery refused by the subscriber; retrying");
                }
                Attempt::Timeout => {
                    self.metrics.timeout.inc();
                    tracing::warn!(subscription = %self.config.name, app = %app, event_id = %event.id, attempt, "event delivery timed out; retrying");
                }
                Attempt::Connect => {
                    self.metrics.connect.inc();
                    tracing::warn!(subscription = %self.config.name, app = %app, event_id = %event.id, attempt, "event delivery could not connect; retrying");
                }
            }
            // Not past the head's expiry: it is dropped then, and the next
            // event tried at once.
            let left = self
                .settings
                .drop_after
                .saturating_sub(event.accepted.elapsed());
            let wait = backoff(self.settings.retry_first, self.settings.retry_max, failures);
            tokio::time::sleep(wait.min(left)).await;
        }
    }

    /// One signed POST of `event`.
    async fn attempt(
        &self,
        client: &HttpClient,
        app: &str,
        event: &Queued,
        attempt: u32,
    ) -> Attempt {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let signature = sign::signature(
            self.config.secret.expose().as_bytes(),
            &timestamp,
            &event.body,
        );
        let req = signed_request(
            &self.config.url,
            app,
            &event.id,
            &event.event_type,
            &timestamp,
            &signature,
            attempt,
            event.body.clone(),
        );
        let Some(req) = req else {
            return Attempt::Connect;
        };
        let sent = tokio::time::timeout(self.settings.delivery_timeout, async {
            let resp = client.request(req).await.map_err(|_| Attempt::Connect)?;
            let status = resp.status();
            // Read the (small) answer so the connection can be reused.
            let _ = http_body_util::Limited::new(resp.into_body(), 64 << 10)
                .collect()
                .await;
            Ok::<_, Attempt>(status)
        })
        .await;
        match sent {
            Ok(Ok(s)) if s.is_success() => Attempt::Delivered,
            Ok(Ok(s)) => Attempt::Status(s),
            Ok(Err(a)) => a,
            Err(_) => Attempt::Timeout,
        }
    }
}

/// The POST a subscriber gets: the body as is, with the gateway's headers.
#[allow(clippy::too_many_arguments)]
pub fn signed_request(
    url: &http::Uri,
    app: &str,
    id: &str,
    event_type: &str,
    timestamp: &str,
    signature: &str,
    attempt: u32,
    body: Bytes,
) -> Option<Request<Full<Bytes>>> {
    let header = |v: &str| HeaderValue::from_str(v).ok();
    Request::builder()
        .method(Method::POST)
        .uri(url.clone())
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .header(sign::HEADER_TIMESTAMP, timestamp)
        .header(sign::HEADER_SIGNATURE, signature)
        .header(sign::HEADER_EVENT_ID, header(id)?)
        .header(sign::HEADER_EVENT_TYPE, header(event_type)?)
        .header(sign::HEADER_APP, header(app)?)
        .header(sign::HEADER_ATTEMPT, attempt)
        .body(Full::new(body))
        .ok()
}

/// The wait after the `failures`-th failure in a row: `first` doubled per
/// failure, at most `max`, at a random point in its upper half.
pub fn backoff(first: Duration, max: Duration, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(30);
    let full = first.saturating_mul(1u32 << shift).min(max);
    let half = full / 2;
    half + rand::thread_rng().gen_range(Duration::ZERO..=half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max_with_jitter() {
        let (first, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..50 {
            let w1 = backoff(first, max, 1);
            assert!(w1 >= first / 2 && w1 <= first, "{w1:?}");
            let w3 = backoff(first, max, 3);
            assert!(w3 >= first * 2 && w3 <= first * 4, "{w3:?}");
            let w20 = backoff(first, max, 20);
            assert!(w20 >= max / 2 && w20 <= max, "{w20:?}");
        }
    }
}
