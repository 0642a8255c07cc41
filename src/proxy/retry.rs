//! Retries by code, inside phase `forward`: one request's attempts upstream
//! while its answer is a transient failure and sending it again is safe,
//! affordable and in time.
//!
//! **What is transient** ([`Reason`]): the connection failed before any byte
//! of the request left (`connect`: refused, TLS failed, closed before the
//! request was written); the connection was reset or closed after the
//! request left but before an answer (`reset`); an HTTP 502 or 503 without a
//! Feishu `code` (`edge_502`, `edge_503`: Feishu's edge, not its API); or an
//! answer whose `code` is one of Feishu's internal / transient failures
//! ([`codes::TRANSIENT`], `code`). Nothing else is retried: not a timeout
//! (the request's time is spent), not an answer that is not HTTP, not
//! throttling, an exhausted budget (99991403) or a missing scope (99991672).
//!
//! **What is safe.** After a `connect` failure nothing reached Feishu, so
//! any request may go again. After anything else Feishu may have acted, so
//! only a request that may be repeated goes again: `GET` or `HEAD`, or one
//! that carries its endpoint's idempotency key ([`idempotency::KEYS`]:
//! `uuid` in a message's body, `client_token` in a bitable call's query,
//! ...), with which Feishu acts at most once. A request's body is always
//! held whole here (`Request<Bytes>`); a body streamed to Feishu is never
//! retried.
//!
//! **What is affordable.** Each app has a retry budget over a sliding
//! window (`budget_window`, in ten buckets): retries may be at most
//! `budget_min` plus `budget_ratio` of the requests forwarded in the window
//! (Envoy's and Finagle's retry budgets), so a Feishu outage costs it at
//! most ~10 % more calls, not a multiple. A retry is also a call like any
//! other for the quota: it is admitted again by the (app[, tenant], route)
//! key (`QuotaKeys::app_key` / `tenant_key`), after the client's share key
//! when it has a `quota_share` (`keys::acquire`), without waiting; on a route
//! without a gateway quota only the pause after Feishu's throttle answers
//! is checked. When the quota says no, or the route or one of the
//! request's resources is paused, the failure is answered. Per-resource
//! limits are not asked again: the request keeps the resources `admit`
//! gave it (`ctx.resources`, in-flight permits included) for all its
//! attempts, and takes no second slot. At most `max_retries` per request.
//!
//! **Throttling is no transient failure.** No code of [`codes::TRANSIENT`]
//! is one of Feishu's throttle codes (`feishu::throttle`), and a 429 is not
//! retried: `forward` classifies the final answer and pauses the route
//! (`upstream_throttled`) or calms its backoff (`upstream_calm`), once per
//! request, on the answer the client gets.
//!
//! **What is in time.** The attempts of one request share the upstream
//! timeout (`timeouts.upstream`, from the first attempt): a retry waits a
//! jittered backoff (`backoff_base` doubling per retry up to `backoff_max`,
//! a random point in its upper half), and goes only when that wait and as
//! long again as the previous attempt took still fit; it gets what is left.
//!
//! When a retry is not made the last failure is answered as it would be
//! without retries. Counted: `feishu_gateway_retries_total{app,route,reason}`
//! for retries made, `feishu_gateway_retries_skipped_total{app,route,reason}`
//! for transient failures not retried (`unsafe`, `attempts`, `deadline`,
//! `budget`, `quota`).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use rand::Rng as _;
use tokio::time::Instant;

use super::inspect::Inspected;
use super::{Gateway, RequestCtx};
use crate::feishu::{codes, idempotency};
use crate::proxy::error::GatewayError;
use crate::quota::{Key, Overflow};
use crate::upstream::UpstreamFailure;

/// `[retries]`: when and how often a request is sent again after a
/// transient failure.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries by code at all (`enabled`). Default true. The pool's own
    /// resend of a request that never left stays either way.
    pub enabled: bool,
    /// Retries per request after its first attempt (`max_retries`). Default 2.
    pub max_retries: u32,
    /// The first retry's backoff (`backoff_base`); doubled for each further
    /// one. Default 50 ms.
    pub backoff_base: Duration,
    /// The longest backoff (`backoff_max`). Default 500 ms.
    pub backoff_max: Duration,
    /// Retries per window at most this fraction of the app's requests
    /// (`budget_ratio`). Default 0.1.
    pub budget_ratio: f64,
    /// ... plus this many (`budget_min`), so a quiet app can still retry.
    /// Default 10.
    pub budget_min: u32,
    /// The budget's sliding window (`budget_window`). Default 10 s.
    pub budget_window: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            enabled: true,
            max_retries: 2,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            budget_ratio: 0.1,
            budget_min: 10,
            budget_window: Duration::from_secs(10),
        }
    }
}

/// Why a request was sent again (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The connection failed before any byte of the request left.
    Connect,
    /// Reset or closed after the request left, before an answer.
    Reset,
    /// HTTP 502 without a Feishu `code`.
    Edge502,
    /// HTTP 503 without a Feishu `code`.
    Edge503,
    /// One of Feishu's transient codes.
    Code,
}

impl Reason {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Connect => "connect",
            Reason::Reset => "reset",
            Reason::Edge502 => "edge_502",
            Reason::Edge503 => "edge_503",
            Reason::Code => "code",
        }
    }

    /// Nothing of the request can have reached Feishu.
    fn nothing_sent(self) -> bool {
        self == Reason::Connect
    }
}

/// Why a transient failure was answered without a retry (the `reason`
/// label of `retries_skipped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// Feishu may have acted, and the request may not be repeated.
    Unsafe,
    /// `max_retries` made already.
    Attempts,
    /// The backoff and another attempt would not fit the upstream timeout.
    Deadline,
    /// The app's retry budget is spent.
    Budget,
    /// The quota did not admit the retry at once.
    Quota,
}

impl Skip {
    fn as_str(self) -> &'static str {
        match self {
            Skip::Unsafe => "unsafe",
            Skip::Attempts => "attempts",
            Skip::Deadline => "deadline",
            Skip::Budget => "budget",
            Skip::Quota => "quota",
        }
    }
}

/// Whether an attempt's outcome is a transient failure, and which.
pub fn transient(result: &Result<Inspected, GatewayError>) -> Option<Reason> {
    match result {
        Err(GatewayError::Upstream(UpstreamFailure::Connect)) => Some(Reason::Connect),
        Err(GatewayError::Upstream(UpstreamFailure::Reset)) => Some(Reason::Reset),
        Err(_) => None,
        Ok(answer) => classify_answer(answer.head.status, answer.code),
    }
}

/// An answer's status and `code` as a transient failure, or not.
fn classify_answer(status: StatusCode, code: Option<i64>) -> Option<Reason> {
    match code {
        Some(c) if codes::is_transient(c) => Some(Reason::Code),
        Some(_) => None,
        None if status == StatusCode::BAD_GATEWAY => Some(Reason::Edge502),
        None if status == StatusCode::SERVICE_UNAVAILABLE => Some(Reason::Edge503),
        None => None,
    }
}

/// Whether Feishu may see `req` twice without harm: `GET`, `HEAD`, or its
/// endpoint's idempotency key is in it.
pub fn repeatable(req: &Request<Bytes>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD)
        || idempotency::carries_key(
            req.method(),
            req.uri().path(),
            req.uri().query(),
            req.body(),
        )
}

/// The policy and every app's budget.
#[derive(Debug)]
pub struct Retries {
    policy: RetryPolicy,
    budgets: Vec<Mutex<Ring>>,
    /// The width of one bucket of the window.
    bucket: Duration,
    epoch: Instant,
}

/// Buckets of the sliding window.
const BUCKETS: usize = 10;

/// One app's window: requests and retries per bucket.
#[derive(Debug, Default)]
struct Ring {
    slots: [Slot; BUCKETS],
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// Which bucket this slot counts (since the epoch); older is stale.
    tick: u64,
    requests: u64,
    retries: u64,
}

impl Ring {
    fn slot(&mut self, tick: u64) -> &mut Slot {
        let slot = &mut self.slots[(tick % BUCKETS as u64) as usize];
        if slot.tick != tick {
            *slot = Slot {
                tick,
                requests: 0,
                retries: 0,
            };
        }
        slot
    }

    /// Requests and retries in the window ending at `tick`.
    fn totals(&self, tick: u64) -> (u64, u64) {
        self.slots
            .iter()
            .filter(|s| s.tick <= tick && tick - s.tick < BUCKETS as u64)
            .fold((0, 0), |(q, r), s| (q + s.requests, r + s.retries))
    }
}

impl Retries {
    /// A live reload: the apps it kept (`apps[new] = Some(old)`) keep their
    /// retry budget's window, when its width did not change.
    pub fn carry(&mut self, old: &Retries, apps: &[Option<usize>]) {
        if self.bucket != old.bucket {
            return;
        }
        self.epoch = old.epoch;
        for (ring, from) in self.budgets.iter_mut().zip(apps) {
            if let Some(o) = from.and_then(|f| old.budgets.get(f)) {
                let slots = o.lock().unwrap_or_else(|e| e.into_inner()).slots;
                ring.get_mut().unwrap_or_else(|e| e.into_inner()).slots = slots;
            }
        }
    }

    /// `policy` for `apps` apps, each with an empty budget.
    pub fn new(policy: RetryPolicy, apps: usize) -> Retries {
        let bucket = (policy.budget_window / BUCKETS as u32).max(Duration::from_millis(1));
        Retries {
            policy,
            budgets: (0..apps).map(|_| Mutex::new(Ring::default())).collect(),
            bucket,
            // One window back, so the first buckets count from tick 10 and
            // a fresh slot (tick 0) is never taken for a current one.
            epoch: Instant::now()
                .checked_sub(bucket * BUCKETS as u32)
                .unwrap_or_else(Instant::now),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    fn tick(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() / self.bucket.as_nanos()) as u64
    }

    fn ring(&self, app: usize) -> Option<std::sync::MutexGuard<'_, Ring>> {
        self.budgets
            .get(app)
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Counts a request of `app` into its budget.
    pub fn record_request(&self, app: usize) {
        let tick = self.tick();
        if let Some(mut ring) = self.ring(app) {
            ring.slot(tick).requests += 1;
        }
    }

    /// Takes one retry from `app`'s budget, if the window has room for it.
    pub fn try_withdraw(&self, app: usize) -> bool {
        let tick = self.tick();
        let Some(mut ring) = self.ring(app) else {
            return false;
        };
        let (requests, retries) = ring.totals(tick);
        let allowed =
            f64::from(self.policy.budget_min) + self.policy.budget_ratio * requests as f64;
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        ring.slot(tick).retries += 1;
        true
    }

    /// Gives back a retry taken but not made (the quota refused it).
    fn refund(&self, app: usize) {
        let tick = self.tick();
        if let Some(mut ring) = self.ring(app) {
            let slot = ring.slot(tick);
            slot.retries = slot.retries.saturating_sub(1);
        }
    }

    /// The wait before retry number `n` (0 for the first): the base doubled
    /// `n` times, at most the maximum, a random point in its upper half.
    fn backoff(&self, n: u32) -> Duration {
        let p = &self.policy;
        let full = p
            .backoff_base
            .saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX))
            .min(p.backoff_max);
        let nanos = full.as_nanos() as u64;
        Duration::from_nanos(rand::thread_rng().gen_range(nanos / 2..=nanos))
    }
}

impl Gateway {
    /// The attempts of one request upstream: [`Gateway::send`], and again
    /// while the outcome is a transient failure that may be retried (see the
    /// module). Returns the last outcome.
    pub(super) async fn send_retrying(
        &self,
        ctx: &mut RequestCtx,
        app: usize,
        req: &mut Request<Bytes>,
    ) -> Result<Inspected, GatewayError> {
        let first = Instant::now();
        let mut result = self.send(ctx, app, req, self.upstream_timeout).await;
        let retries = &self.retries;
        if !retries.policy.enabled {
            return result;
        }
        retries.record_request(app);
        let deadline = first + self.upstream_timeout;
        let mut took = first.elapsed();
        let mut safe = None;
        let mut made = 0;
        loop {
            let Some(reason) = transient(&result) else {
                return result;
            };
            let may = reason.nothing_sent() || *safe.get_or_insert_with(|| repeatable(req));
            if let Err(skip) = self.may_retry(ctx, app, may, made, took, deadline).await {
                self.metrics
                    .retry_skipped(ctx.app, ctx.route, skip.as_str());
                if let Some(trace) = &ctx.trace {
                    trace.retry_skipped(skip.as_str());
                }
                if skip == Skip::Budget {
                    tracing::warn!(
                        app = %self.apps[app].name,
                        reason = reason.as_str(),
                        "retry budget spent: answering the failure"
                    );
                }
                return result;
            }
            drop(result);
            made += 1;
            self.metrics.retry(ctx.app, ctx.route, reason.as_str());
            if let Some(trace) = &ctx.trace {
                trace.retry(reason.as_str(), made);
            }
            tracing::info!(
                app = %self.apps[app].name,
                reason = reason.as_str(),
                retry = made,
                "transient failure upstream: sending again"
            );
            let started = Instant::now();
            let left = deadline.saturating_duration_since(started);
            result = self.send(ctx, app, req, left).await;
            took = started.elapsed();
        }
    }

    /// Whether retry number `made + 1` goes: safe, under the per-request
    /// limit, in time, in the budget; then the backoff is waited and the
    /// quota asked. `Ok` means send now.
    async fn may_retry(
        &self,
        ctx: &RequestCtx,
        app: usize,
        safe: bool,
        made: u32,
        took: Duration,
        deadline: Instant,
    ) -> Result<(), Skip> {
        let retries = &self.retries;
        if !safe {
            return Err(Skip::Unsafe);
        }
        if made >= retries.policy.max_retries {
            return Err(Skip::Attempts);
        }
        let wait = retries.backoff(made);
        if Instant::now() + wait + took >= deadline {
            return Err(Skip::Deadline);
        }
        if !retries.try_withdraw(app) {
            return Err(Skip::Budget);
        }
        tokio::time::sleep(wait).await;
        if !self.admit_retry(ctx).await {
            retries.refund(app);
            return Err(Skip::Quota);
        }
        Ok(())
    }

    /// The quota's word on one more call of this request, without waiting:
    /// a retry is a call like any other, counted where Feishu counts. The
    /// (app[, tenant], route) key is acquired again (its own pause
    /// included); a route without a gateway quota only checks the pause
    /// Feishu's throttle answers set on it. Per-resource limits are not
    /// asked again: the request still holds its resources (their in-flight
    /// permits, its window slots) from `admit`, one slot for all its
    /// attempts; a resource Feishu paused meanwhile stops the retry.
    async fn admit_retry(&self, ctx: &RequestCtx) -> bool {
        let (Some(app), Some(route)) = (ctx.app, ctx.route) else {
            return true;
        };
        if ctx
            .resources
            .iter()
            .any(|held| held.entry.pause.left().is_some())
        {
            return false;
        }
        let Some(pair) = self.quota_keys.app_key(app, route) else {
            return true;
        };
        let Some(key) = &pair.key else {
            return pair.pause.left().is_none();
        };
        let tenant = match &ctx.tenant {
            Some(t) => match self.quota_keys.tenant_key(t, app, route) {
                Some(k) => Some(k),
                None => return true,
            },
            None => None,
        };
        let key: &Key = tenant.as_deref().unwrap_or(key);
        // A client with a `quota_share` spends its share too (keys.rs).
        let share = ctx.caller.as_ref().and_then(|c| {
            self.quota_keys
                .share_key(&c.client, ctx.tenant.as_deref(), route)
        });
        super::keys::acquire(share.as_ref(), key, Overflow::Reject)
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: u32, ratio: f64) -> RetryPolicy {
        RetryPolicy {
            budget_min: min,
            budget_ratio: ratio,
            budget_window: Duration::from_secs(60),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn answers_are_classified_by_code_first_then_by_edge_status() {
        let c = classify_answer;
        assert_eq!(c(StatusCode::OK, Some(1500)), Some(Reason::Code));
        assert_eq!(
            c(StatusCode::INTERNAL_SERVER_ERROR, Some(41027)),
            Some(Reason::Code)
        );
        assert_eq!(c(StatusCode::BAD_GATEWAY, None), Some(Reason::Edge502));
        assert_eq!(
            c(StatusCode::SERVICE_UNAVAILABLE, None),
            Some(Reason::Edge503)
        );
        // A Feishu code decides, whatever the status.
        assert_eq!(c(StatusCode::SERVICE_UNAVAILABLE, Some(99991400)), None);
        assert_eq!(c(StatusCode::FORBIDDEN, Some(99991403)), None);
        assert_eq!(c(StatusCode::BAD_REQUEST, Some(99991672)), None);
        assert_eq!(c(StatusCode::OK, Some(0)), None);
        assert_eq!(c(StatusCode::INTERNAL_SERVER_ERROR, None), None);
        assert_eq!(c(StatusCode::GATEWAY_TIMEOUT, None), None);
    }

    #[test]
    fn no_transient_code_is_a_throttle_code() {
        for (code, what) in codes::TRANSIENT {
            assert!(
                crate::feishu::throttle::classify(*code).is_none(),
                "{code} ({what}) is a throttle code: it pauses, never retries"
            );
        }
        assert_eq!(
            classify_answer(StatusCode::TOO_MANY_REQUESTS, None),
            None,
            "a bare 429 is throttling"
        );
    }

    #[test]
    fn only_get_head_or_a_keyed_request_is_repeatable() {
        let req = |m: Method, uri: &str, body: &'static str| {
            Request::builder()
                .method(m)
                .uri(uri)
                .body(Bytes::from_static(body.as_bytes()))
                .unwrap()
        };
        assert!(repeatable(&req(Method::GET, "/open-apis/x", "")));
        assert!(repeatable(&req(Method::HEAD, "/open-apis/x", "")));
        assert!(!repeatable(&req(
            Method::POST,
            "/open-apis/im/v1/messages",
            "{}"
        )));
        assert!(repeatable(&req(
            Method::POST,
            "/open-apis/im/v1/messages?receive_id_type=chat_id",
            r#"{"uuid":"u-1"}"#
        )));
        assert!(!repeatable(&req(Method::DELETE, "/open-apis/x", "")));
    }

    #[test]
    fn the_budget_allows_the_minimum_plus_a_fraction_of_the_requests() {
        let r = Retries::new(policy(3, 0.1), 2);
        // No requests yet: the minimum only.
        assert_eq!((0..10).filter(|_| r.try_withdraw(0)).count(), 3);
        // 100 requests: 10 more.
        for _ in 0..100 {
            r.record_request(0);
        }
        assert_eq!((0..50).filter(|_| r.try_withdraw(0)).count(), 10);
        // A refund makes room for one.
        r.refund(0);
        assert!(r.try_withdraw(0));
        assert!(!r.try_withdraw(0));
        // Each app has its own; an unknown app none.
        assert!(r.try_withdraw(1));
        assert!(!r.try_withdraw(7));
    }

    #[test]
    fn the_budget_forgets_what_left_the_window() {
        let p = RetryPolicy {
            budget_window: Duration::from_millis(100),
            ..policy(1, 0.0)
        };
        let r = Retries::new(p, 1);
        assert!(r.try_withdraw(0));
        assert!(!r.try_withdraw(0));
        std::thread::sleep(Duration::from_millis(130));
        assert!(r.try_withdraw(0), "the old retry left the window");
    }

    #[test]
    fn backoff_doubles_within_its_bounds_and_is_jittered() {
        let r = Retries::new(RetryPolicy::default(), 1);
        for n in 0..40 {
            let full = Duration::from_millis(50)
                .saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX))
                .min(Duration::from_millis(500));
            let b = r.backoff(n);
            assert!(b >= full / 2 && b <= full, "{n}: {b:?} vs {full:?}");
        }
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| r.backoff(3)).collect();
        assert!(distinct.len() > 1, "jittered");
    }
}
