//! The events' families (`feishu_gateway_events_*`): what came in from
//! Feishu, what was delivered to subscribers, what was dropped. Every
//! family has an `app` label (the `[[apps]]` name); `subscription` is a
//! `[[subscriptions]]` name, `type` an event type (bounded: past
//! [`MAX_EVENT_TYPES`] distinct ones, `other`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Distinct `type` label values at most; later types count as `other`.
pub const MAX_EVENT_TYPES: usize = 64;

/// Seconds from acceptance to the subscriber's 2xx: milliseconds when all
/// is well, up to hours while a subscriber is down.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 1800.0, 7200.0,
    43200.0,
];

/// The families, registered once; clones share the series.
#[derive(Clone)]
pub(super) struct EventFamilies {
    received: IntCounterVec,
    duplicates: IntCounterVec,
    refused: IntCounterVec,
    deliveries: IntCounterVec,
    latency: HistogramVec,
    queue_depth: IntGaugeVec,
    queue_bytes: IntGaugeVec,
    dropped: IntCounterVec,
    card_callbacks: IntCounterVec,
    dedupe_fallbacks: IntCounterVec,
    types: Arc<Mutex<HashSet<String>>>,
}

impl EventFamilies {
    pub(super) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let f = EventFamilies {
            received: counter(
                "feishu_gateway_events_received_total",
                "Events received from Feishu (verified), by app, event type and transport (webhook or long_connection); duplicates included",
                &["app", "type", "transport"],
            )?,
            duplicates: counter(
                "feishu_gateway_events_duplicates_total",
                "Events acknowledged but not delivered again: their event id (or message id) was seen within the dedupe window",
                &["app", "transport"],
            )?,
            refused: counter(
                "feishu_gateway_events_refused_total",
                "Events not accepted, so Feishu pushes them again, by reason (queue_full, malformed, unknown_app)",
                &["app", "reason"],
            )?,
            deliveries: counter(
                "feishu_gateway_events_deliveries_total",
                "Delivery attempts to a subscription, by result (ok, status, timeout, connect)",
                &["app", "subscription", "result"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "feishu_gateway_events_delivery_seconds",
                    "Time from an event's acceptance to its subscriber's 2xx, retries and queueing included",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["app", "subscription"],
            )?,
            queue_depth: IntGaugeVec::new(
                Opts::new(
                    "feishu_gateway_events_queue_depth",
                    "Events waiting for delivery to a subscription (the one in flight included)",
                ),
                &["app", "subscription"],
            )?,
            queue_bytes: IntGaugeVec::new(
                Opts::new(
                    "feishu_gateway_events_queue_bytes",
                    "Bytes of event bodies waiting for delivery to a subscription",
                ),
                &["app", "subscription"],
            )?,
            dropped: counter(
                "feishu_gateway_events_dropped_total",
                "Accepted events never delivered to a subscription, by reason (expired: older than drop_after; shutdown: queued when the process stopped)",
                &["app", "subscription", "reason"],
            )?,
            card_callbacks: counter(
                "feishu_gateway_events_card_callbacks_total",
                "Card callbacks, by outcome (answered: the subscriber's body; timeout, error, no_subscriber: the fallback answer)",
                &["app", "outcome"],
            )?,
            dedupe_fallbacks: counter(
                "feishu_gateway_events_dedupe_fallbacks_total",
                "De-duplication checks made in memory only because Redis did not answer (duplicates across replicas may then be delivered)",
                &["app"],
            )?,
            types: Arc::default(),
        };
        for c in [
            Box::new(f.received.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(f.duplicates.clone()),
            Box::new(f.refused.clone()),
            Box::new(f.deliveries.clone()),
            Box::new(f.latency.clone()),
            Box::new(f.queue_depth.clone()),
            Box::new(f.queue_bytes.clone()),
            Box::new(f.dropped.clone()),
            Box::new(f.card_callbacks.clone()),
            Box::new(f.dedupe_fallbacks.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(f)
    }
}

/// Handles on the events' families, for the event hub. Cheap to clone.
#[derive(Clone)]
pub struct EventMetrics {
    f: EventFamilies,
}

/// The series of one subscription, made once.
#[derive(Clone)]
pub struct SubscriptionMetrics {
    /// 2xx answers.
    pub ok: IntCounter,
    /// Non-2xx answers.
    pub status: IntCounter,
    /// No answer head within `delivery_timeout`.
    pub timeout: IntCounter,
    /// Connection failures.
    pub connect: IntCounter,
    /// Acceptance to 2xx.
    pub latency: Histogram,
    /// Events queued now.
    pub depth: IntGauge,
    /// Bytes queued now.
    pub bytes: IntGauge,
    /// Dropped as older than `drop_after`.
    pub expired: IntCounter,
    /// Dropped at shutdown.
    pub shutdown: IntCounter,
}

impl EventMetrics {
    pub(super) fn new(f: EventFamilies) -> Self {
        EventMetrics { f }
    }

    /// The series of subscription `name` of `app`, all made now (at 0).
    pub fn subscription(&self, app: &str, name: &str) -> SubscriptionMetrics {
        let d = |r: &str| self.f.deliveries.with_label_values(&[app, name, r]);
        let dropped = |r: &str| self.f.dropped.with_label_values(&[app, name, r]);
        SubscriptionMetrics {
            ok: d("ok"),
            status: d("status"),
            timeout: d("timeout"),
            connect: d("connect"),
            latency: self.f.latency.with_label_values(&[app, name]),
            depth: self.f.queue_depth.with_label_values(&[app, name]),
            bytes: self.f.queue_bytes.with_label_values(&[app, name]),
            expired: dropped("expired"),
            shutdown: dropped("shutdown"),
        }
    }

    /// Makes an app's series that exist from the start, at 0: its
    /// duplicates and refusals, the types its subscriptions name, and its
    /// card callbacks' outcomes when it has a card subscription.
    pub fn app(&self, app: &str, transport: &str, types: &[&str], card: bool) {
        self.f.duplicates.with_label_values(&[app, transport]);
        self.f.dedupe_fallbacks.with_label_values(&[app]);
        for r in ["queue_full", "malformed"] {
            self.f.refused.with_label_values(&[app, r]);
        }
        for t in types {
            self.f
                .received
                .with_label_values(&[app, self.type_label(t), transport]);
        }
        if card {
            for o in ["answered", "timeout", "error", "no_subscriber"] {
                self.f.card_callbacks.with_label_values(&[app, o]);
            }
        }
    }

    /// `event_type` as a label: itself while fewer than
    /// [`MAX_EVENT_TYPES`] types were seen and it looks like an event type,
    /// else `other`.
    fn type_label<'a>(&self, event_type: &'a str) -> &'a str {
        let tame = !event_type.is_empty()
            && event_type.len() <= 64
            && event_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !tame {
            return "other";
        }
        let mut seen = self.f.types.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(event_type) {
            return event_type;
        }
        if seen.len() < MAX_EVENT_TYPES {
            seen.insert(event_type.to_owned());
            return event_type;
        }
        "other"
    }

    /// One event received.
    pub fn received(&self, app: &str, event_type: &str, transport: &str) {
        self.f
            .received
            .with_label_values(&[app, self.type_label(event_type), transport])
            .inc();
    }

    /// One duplicate acknowledged.
    pub fn duplicate(&self, app: &str, transport: &str) {
        self.f.duplicates.with_label_values(&[app, transport]).inc();
    }

    /// One event refused, for `reason`.
    pub fn refused(&self, app: &str, reason: &str) {
        self.f.refused.with_label_values(&[app, reason]).inc();
    }

    /// One card callback ended with `outcome`.
    pub fn card_callback(&self, app: &str, outcome: &str) {
        self.f
            .card_callbacks
            .with_label_values(&[app, outcome])
            .inc();
    }

    /// One de-duplication check made in memory only (Redis failed).
    pub fn dedupe_fallback(&self, app: &str) {
        self.f.dedupe_fallbacks.with_label_values(&[app]).inc();
    }
}
