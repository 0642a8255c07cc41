//! Per-(app, route) quotas, and per-(app, tenant, route) for store apps:
//! Feishu never throttles us, and we use nearly all of its quota.
//!
//! # The guarantee
//!
//! For every configured window "N per W" of a key, the gateway never admits
//! more than N requests within any closed interval of length `W + margin`.
//! Since an admitted request reaches Feishu within `margin` (default 100 ms),
//! Feishu, counting at arrival, never sees more than N within any interval of
//! length W, whatever its window alignment and whatever the arrival pattern.
//!
//! # Layout
//!
//! | file            | concern                                                        |
//! |-----------------|----------------------------------------------------------------|
//! | `mod.rs`        | the vocabulary: [`QuotaKey`], [`Overflow`], [`Admit`], [`Rejection`], [`Snapshot`] |
//! | `window.rs`     | [`Window`], parsed from `"<requests>/<duration>"` (`"50/1s"`)   |
//! | `plan.rs`       | the planner: one GCRA (period `t`, burst `b`) for all of a key's windows |
//! | `share.rs`      | [`Share`]: a client's fraction of its app's quotas (`quota_share`), the windows it scales to |
//! | `local.rs`      | [`LocalQuota`]: in process; reject or wait, fair bounded queues, pauses |
//! | `peek.rs`       | governor's state store, made peekable for snapshots            |
//! | `pause.rs`      | [`PauseCell`] and [`Backoff`]: pauses after Feishu's own throttle answers |
//! | `clock.rs`      | [`TokioClock`]: governor's clock over `tokio::time::Instant`   |
//! | `redis/`        | [`RedisQuota`]: the same GCRA in Redis for a fleet; `health.rs` the fail modes, `scope.rs` tenants |
//! | `engine.rs`     | [`Engine`] and its [`Key`]s: the backend `[quota] backend` selects, one API for the request path |
//! | `backend.rs`    | [`BackendKind`], [`FailMode`], [`BackendStatus`]               |
//! | `config.rs`     | [`QuotaConfig`], the `[quota]` section                         |
//! | `testing.rs`    | exact sliding-window checks for the property tests and `benches/quota.rs` |
//!
//! The proofs behind the planner and the shared quota are in
//! `docs/quota.md`.
//!
//! # Example
//!
//! ```
//! use feishu_gateway::quota::{KeySpec, LocalQuota, Overflow, Plan, PlanPolicy, QuotaKey, Window};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let windows: Vec<Window> = ["50/1s", "1000/60s"].iter().map(|s| s.parse().unwrap()).collect();
//! let plan = Plan::new(&windows, &PlanPolicy::default()).unwrap();
//! assert_eq!(plan.burst(), 33);
//! let quota = LocalQuota::with_tokio_clock(vec![KeySpec::new(plan, 64)]);
//! let key = QuotaKey::new(0);
//! assert!(quota.check(key).is_ok());
//! let admitted = quota.acquire(key, Overflow::Wait(std::time::Duration::from_secs(2))).await;
//! assert!(admitted.is_ok());
//! # }
//! ```

mod backend;
pub mod clock;
mod config;
pub mod engine;
pub mod local;
pub mod pause;
mod peek;
pub mod plan;
pub mod redis;
mod share;
pub mod testing;
pub mod window;

/// What to do with a request over its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowMode {
    /// Answer 429 at once (default).
    Reject,
    /// Hold the request until it may go, up to `max_wait`.
    Wait,
}

#[cfg(test)]
mod fleet_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

pub use crate::redis_connection::RedisConnection;
pub use backend::{BackendKind, BackendStatus, FailMode};
pub use clock::TokioClock;
pub use config::QuotaConfig;
pub use engine::{Engine, Key};
pub use local::{KeySpec, LocalQuota};
pub use pause::{Backoff, PauseCell};
pub use plan::{Plan, PlanError, PlanPolicy, WindowFigures};
pub use redis::{RedisQuota, RedisScope, RedisSettings};
pub use share::Share;
pub use window::{Window, WindowError};

/// A quota key: the index of its [`KeySpec`] in the list the engine was
/// built from. The request path's keys are one-key engines made on first
/// use ([`Engine::key`]), from the catalog's bounded (app[, tenant],
/// route) pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuotaKey(u32);

impl QuotaKey {
    /// The key of the `index`-th spec given to the engine.
    pub const fn new(index: u32) -> Self {
        Self(index)
    }

    /// The spec index.
    pub const fn index(self) -> u32 {
        self.0
    }
}

/// What to do with a request that is over the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Reject at once (the default).
    #[default]
    Reject,
    /// Hold the request until it may go, for at most this long; then reject.
    Wait(Duration),
}

/// A request may go to Feishu now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admit {
    /// Further requests that could be admitted right now without waiting.
    pub remaining: u32,
    /// How long the request was held in wait mode (zero otherwise).
    pub waited: Duration,
}

/// Why a request was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Over the limit (reject mode).
    Limited,
    /// Wait mode, but the key's wait queue is full.
    QueueFull,
    /// Wait mode, but the request could not go within its maximum wait.
    WaitTooLong,
    /// The shared backend (Redis) is unavailable and `fail = "closed"`:
    /// nothing could be decided (the gateway answers 503, not 429).
    BackendUnavailable,
}

/// The limit a rejection is reported against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// One of the key's windows (the plan's [reported window](Plan::reported_window)).
    Window(Window),
    /// Feishu throttled this key and it is paused until the reset passes.
    UpstreamPause,
}

/// The header-facing description of a key, shared (behind an `Arc`) by its
/// rejections and snapshots, so producing them never allocates.
#[derive(Debug, PartialEq, Eq)]
pub struct Policy {
    reported: Window,
    label: String,
    header: String,
}

impl Policy {
    /// Builds the policy for a key's windows; `reported` is the window
    /// rejections name.
    pub fn new(windows: impl IntoIterator<Item = Window>, reported: Window) -> Self {
        let header = windows
            .into_iter()
            .map(|w| format!("\"{w}\";q={};w={}", w.limit(), whole_secs(w.period())))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            reported,
            label: reported.to_string(),
            header,
        }
    }

    /// The window rejections report (`x-ogw-ratelimit-limit` is its limit).
    pub fn reported_window(&self) -> Window {
        self.reported
    }

    /// The reported window as a label, e.g. `"50/1s"`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The IETF draft `RateLimit-Policy` value listing every window, e.g.
    /// `"50/1s";q=50;w=1, "1000/60s";q=1000;w=60` (sub-second windows show
    /// `w=1`: the field counts whole seconds).
    pub fn header(&self) -> &str {
        &self.header
    }

    /// The IETF draft `RateLimit` value for the reported window, e.g.
    /// `"50/1s";r=0;t=1`.
    pub fn ratelimit(&self, remaining: u32, reset: Duration) -> String {
        format!("\"{}\";r={remaining};t={}", self.label, whole_secs(reset))
    }
}

/// Time left on an upstream pause stored as "paused until" nanoseconds
/// (0 = none) in `cell`, at `now` (same clock). An elapsed pause is cleared
/// so later checks skip the clock read. Shared by both backends.
pub(crate) fn pause_left(cell: &std::sync::atomic::AtomicU64, now: u64) -> Option<Duration> {
    use std::sync::atomic::Ordering;
    let until = cell.load(Ordering::Acquire);
    if until == 0 {
        return None;
    }
    if now >= until {
        let _ = cell.compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed);
        return None;
    }
    Some(Duration::from_nanos(until - now))
}

/// Whole seconds, rounded up, at least 1: what `Retry-After`,
/// `x-ogw-ratelimit-reset` and the draft's `w`/`t` parameters carry.
pub fn whole_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// A request may not go. It spent no quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    cause: Cause,
    limit: Limit,
    retry_after: Duration,
    policy: Arc<Policy>,
}

impl Rejection {
    /// A rejection; for backends and tests.
    pub fn new(cause: Cause, limit: Limit, retry_after: Duration, policy: Arc<Policy>) -> Self {
        Self {
            cause,
            limit,
            retry_after,
            policy,
        }
    }

    /// Why it was rejected.
    pub fn cause(&self) -> Cause {
        self.cause
    }

    /// The limit it is reported against.
    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// A metrics label: the window (`"50/1s"`) or `"upstream-pause"`.
    pub fn label(&self) -> &str {
        match self.limit {
            Limit::Window(_) => self.policy.label(),
            Limit::UpstreamPause => "upstream-pause",
        }
    }

    /// `x-ogw-ratelimit-limit`: the limit N of the reported window (for an
    /// upstream pause too, as Feishu itself reports a window cap).
    pub fn limit_value(&self) -> u32 {
        self.policy.reported_window().limit()
    }

    /// The earliest time a retry could be admitted (an estimate in wait
    /// mode and under queueing).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// `x-ogw-ratelimit-reset` and `Retry-After`: whole seconds, at least 1.
    pub fn reset_secs(&self) -> u64 {
        whole_secs(self.retry_after)
    }

    /// The `RateLimit-Policy` header value.
    pub fn ratelimit_policy(&self) -> &str {
        self.policy.header()
    }

    /// The `RateLimit` header value, e.g. `"50/1s";r=0;t=1`.
    pub fn ratelimit(&self) -> String {
        self.policy.ratelimit(0, self.retry_after)
    }

    /// The key's header policy.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    pub(crate) fn with_cause(mut self, cause: Cause) -> Self {
        self.cause = cause;
        self
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self.cause {
            Cause::Limited => "over the limit",
            Cause::QueueFull => "wait queue full",
            Cause::WaitTooLong => "would wait longer than allowed",
            Cause::BackendUnavailable => "quota backend unavailable",
        };
        write!(
            f,
            "{why} ({}), retry after {:?}",
            self.label(),
            self.retry_after
        )
    }
}

/// A key's state, for headers and metrics, read without spending quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests that could be admitted right now without waiting.
    pub remaining: u32,
    /// Time until the next request would be admitted (zero if `remaining > 0`).
    pub next_in: Duration,
    /// Time left on an upstream pause (zero if none).
    pub paused_for: Duration,
    /// Requests waiting in the key's queue.
    pub waiters: u32,
    /// The key's header policy.
    pub policy: Arc<Policy>,
}

impl Snapshot {
    /// The `RateLimit` header value for a response, e.g. `"50/1s";r=32;t=1`.
    pub fn ratelimit(&self) -> String {
        self.policy.ratelimit(self.remaining, self.next_in)
    }
}

#[cfg(test)]
mod outcome_tests {
    use super::*;

    fn policy() -> Arc<Policy> {
        let ws: Vec<Window> = ["50/1s", "1000/60s", "5/500ms"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        Arc::new(Policy::new(ws.clone(), ws[0]))
    }

    #[test]
    fn headers() {
        let p = policy();
        assert_eq!(
            p.header(),
            r#""50/1s";q=50;w=1, "1000/60s";q=1000;w=60, "5/500ms";q=5;w=1"#
        );
        let r = Rejection::new(
            Cause::Limited,
            Limit::Window(p.reported_window()),
            Duration::from_millis(62),
            p.clone(),
        );
        assert_eq!(
            (r.label(), r.limit_value(), r.reset_secs()),
            ("50/1s", 50, 1)
        );
        assert_eq!(r.ratelimit(), r#""50/1s";r=0;t=1"#);
        assert_eq!(r.ratelimit_policy(), p.header());
        let paused = Rejection::new(
            Cause::QueueFull,
            Limit::UpstreamPause,
            Duration::from_millis(2001),
            p,
        );
        assert_eq!(
            (paused.label(), paused.limit_value(), paused.reset_secs()),
            ("upstream-pause", 50, 3)
        );
        assert_eq!(
            paused.to_string(),
            "wait queue full (upstream-pause), retry after 2.001s"
        );
    }

    #[test]
    fn whole_secs_rounds_up_to_at_least_one() {
        assert_eq!(whole_secs(Duration::ZERO), 1);
        assert_eq!(whole_secs(Duration::from_nanos(1)), 1);
        assert_eq!(whole_secs(Duration::from_secs(1)), 1);
        assert_eq!(whole_secs(Duration::from_millis(1001)), 2);
        assert_eq!(whole_secs(Duration::from_secs(60)), 60);
    }
}
