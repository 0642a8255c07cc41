//! The long connection's metric families, registered into the runtime's
//! registry by [`LongConnectionMetrics::register`] (once, when an app is on
//! the long connection). Every family has an `app` label: the configured
//! app name.
//!
//! | family | labels | what |
//! |---|---|---|
//! | `feishu_gateway_events_connection_up` | app | 1 while this replica holds the app's connection |
//! | `feishu_gateway_events_connection_stopped` | app, reason | 1 once the client stopped for good: `endpoint_refused` (a non-retryable endpoint code, e.g. a wrong secret), `forbidden` (handshake 403), `conn_limit` (514 + 1000040350), `gave_up` (ReconnectCount spent) |
//! | `feishu_gateway_events_reconnects_total` | app, reason | (re)connect attempts needed, by why: `closed` (Feishu closed), `lost` (read error, EOF, silence), `endpoint` / `handshake` (an attempt failed) |
//! | `feishu_gateway_events_frames_total` | app, direction, type | frames: in `event`, `fragment`, `pong`, `ignored`, `invalid`, `rejected`; out `ping`, `ack`, `ack_failed` |
//! | `feishu_gateway_events_ack_duration_seconds` | app | from a complete event to its ack written |
//! | `feishu_gateway_events_lease_held` | app | 1 while this replica holds the app's lease (with Redis) |

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// The families (cheap to clone).
#[derive(Clone)]
pub struct LongConnectionMetrics {
    up: IntGaugeVec,
    stopped: IntGaugeVec,
    reconnects: IntCounterVec,
    frames: IntCounterVec,
    ack: HistogramVec,
    lease: IntGaugeVec,
}

impl LongConnectionMetrics {
    /// Registers the families into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.up.clone()))?;
        registry.register(Box::new(m.stopped.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.frames.clone()))?;
        registry.register(Box::new(m.ack.clone()))?;
        registry.register(Box::new(m.lease.clone()))?;
        Ok(m)
    }

    /// The families, in no registry (tests that do not read them).
    pub fn unregistered() -> prometheus::Result<Self> {
        Ok(LongConnectionMetrics {
            up: IntGaugeVec::new(
                Opts::new(
                    "feishu_gateway_events_connection_up",
                    "1 while this replica holds the app's long connection to Feishu",
                ),
                &["app"],
            )?,
            stopped: IntGaugeVec::new(
                Opts::new(
                    "feishu_gateway_events_connection_stopped",
                    "1 once the app's long-connection client stopped for good (a fatal code from Feishu, or ReconnectCount spent)",
                ),
                &["app", "reason"],
            )?,
            reconnects: IntCounterVec::new(
                Opts::new(
                    "feishu_gateway_events_reconnects_total",
                    "Long-connection (re)connect attempts needed, by why",
                ),
                &["app", "reason"],
            )?,
            frames: IntCounterVec::new(
                Opts::new(
                    "feishu_gateway_events_frames_total",
                    "Long-connection frames received and sent, by type",
                ),
                &["app", "direction", "type"],
            )?,
            ack: HistogramVec::new(
                HistogramOpts::new(
                    "feishu_gateway_events_ack_duration_seconds",
                    "Time from a complete event to its ack on the long connection (Feishu's deadline: 3 s)",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0]),
                &["app"],
            )?,
            lease: IntGaugeVec::new(
                Opts::new(
                    "feishu_gateway_events_lease_held",
                    "1 while this replica holds the app's long-connection lease in Redis",
                ),
                &["app"],
            )?,
        })
    }

    /// The handles of one app, its series made at 0.
    pub(super) fn app(&self, app: &str) -> AppMetrics {
        let frames = |d: &str, t: &str| self.frames.with_label_values(&[app, d, t]);
        let reconnect = |r: &str| self.reconnects.with_label_values(&[app, r]);
        AppMetrics {
            app: app.to_owned(),
            up: self.up.with_label_values(&[app]),
            lease: self.lease.with_label_values(&[app]),
            stopped: self.stopped.clone(),
            reconnect_closed: reconnect("closed"),
            reconnect_lost: reconnect("lost"),
            reconnect_endpoint: reconnect("endpoint"),
            reconnect_handshake: reconnect("handshake"),
            in_event: frames("in", "event"),
            in_fragment: frames("in", "fragment"),
            in_pong: frames("in", "pong"),
            in_ignored: frames("in", "ignored"),
            in_invalid: frames("in", "invalid"),
            in_rejected: frames("in", "rejected"),
            out_ping: frames("out", "ping"),
            out_ack: frames("out", "ack"),
            out_ack_failed: frames("out", "ack_failed"),
            ack: self.ack.with_label_values(&[app]),
        }
    }
}

/// One app's handles.
#[derive(Clone)]
pub(super) struct AppMetrics {
    app: String,
    pub(super) up: IntGauge,
    pub(super) lease: IntGauge,
    stopped: IntGaugeVec,
    pub(super) reconnect_closed: IntCounter,
    pub(super) reconnect_lost: IntCounter,
    pub(super) reconnect_endpoint: IntCounter,
    pub(super) reconnect_handshake: IntCounter,
    pub(super) in_event: IntCounter,
    pub(super) in_fragment: IntCounter,
    pub(super) in_pong: IntCounter,
    pub(super) in_ignored: IntCounter,
    pub(super) in_invalid: IntCounter,
    pub(super) in_rejected: IntCounter,
    pub(super) out_ping: IntCounter,
    pub(super) out_ack: IntCounter,
    pub(super) out_ack_failed: IntCounter,
    pub(super) ack: Histogram,
}

impl AppMetrics {
    /// The client stopped for good, for `reason`.
    pub(super) fn stopped(&self, reason: &str) {
        self.stopped.with_label_values(&[&self.app, reason]).set(1);
    }
}
