//! [`LocalQuota`]: the in-process quota engine, one governor GCRA per key.
//!
//! - **Reject mode** ([`LocalQuota::check`]): one governor decision; a
//!   rejection never touches the GCRA state, so it spends nothing. A check
//!   does not allocate (a rejection clones an `Arc`).
//! - **Wait mode** ([`LocalQuota::acquire`] with [`Overflow::Wait`]): a
//!   request that cannot go now joins the key's queue. The queue is bounded
//!   (`max_waiters`; past it: reject at once) and fair: waiters take turns on
//!   a FIFO `tokio::sync::Mutex`, and the one holding it sleeps until
//!   governor's next slot (`NotUntil::wait_time_from`). While anyone waits,
//!   reject-mode requests on the key are refused, so they cannot take the
//!   slot the head of the queue sleeps towards. A waiter gives up at once,
//!   spending nothing, as soon as its turn provably cannot come within its
//!   maximum wait: on joining (a lower bound from a governor *peek* and the
//!   queue length) and before every sleep.
//! - **Upstream pause** ([`LocalQuota::pause`]): after a 429 from Feishu the
//!   key rejects (or holds) requests until the pause ends.
//!
//! Sleeping uses tokio time. With the default [`TokioClock`] governor reads
//! the same clock, so `tokio::time::pause()` drives both in tests. With
//! governor's `FakeRelativeClock`, use reject mode only (wait mode would
//! sleep on tokio's clock while governor's stands still).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::RateLimiter;

use super::clock::TokioClock;
use super::peek::{Access, PeekableState};
use super::plan::Plan;
use super::{Admit, Cause, Limit, Overflow, Policy, QuotaKey, Rejection, Snapshot};

/// What the engine needs to know about one key: its plan and the bound on
/// its wait queue.
#[derive(Clone, Debug, PartialEq)]
pub struct KeySpec {
    plan: Plan,
    max_waiters: u32,
    name: String,
}

impl KeySpec {
    /// A key limited by `plan`, with at most `max_waiters` requests held in
    /// wait mode at a time (0 disables waiting).
    pub fn new(plan: Plan, max_waiters: u32) -> Self {
        Self {
            plan,
            max_waiters,
            name: String::new(),
        }
    }

    /// The same key with a name every replica derives alike (e.g. app id,
    /// method and route template): a shared backend stores its state under
    /// it. The local engine ignores it.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// True when `other` limits the same way: the same plan (windows,
    /// margin, rates) and the same waiter cap; names aside.
    pub fn same_plan(&self, other: &KeySpec) -> bool {
        self.max_waiters == other.max_waiters && self.plan == other.plan
    }

    /// The same key without its name.
    pub fn without_name(&self) -> KeySpec {
        KeySpec {
            plan: self.plan.clone(),
            max_waiters: self.max_waiters,
            name: String::new(),
        }
    }

    /// The key's fleet-wide name (empty if none was given).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The bound on the key's wait queue.
    pub fn max_waiters(&self) -> u32 {
        self.max_waiters
    }
}

type Limiter<C> = RateLimiter<Access, PeekableState, C, StateInformationMiddleware>;

struct KeyState<C: Clock> {
    spec: KeySpec,
    policy: Arc<Policy>,
    limiter: Limiter<C>,
    /// The limiter's GCRA cell (its theoretical arrival time), for
    /// [`LocalQuota::give_back`].
    tat: Arc<AtomicU64>,
    emission: Duration,
    /// End of an upstream pause, in ns since the engine's epoch; 0 = none.
    paused_until: AtomicU64,
    /// Requests in wait mode for this key (queued or sleeping).
    waiters: AtomicU32,
    /// Held by the waiter whose turn it is; tokio's mutex is FIFO.
    turn: tokio::sync::Mutex<()>,
}

/// The in-memory quota engine. Generic over governor's clock: [`TokioClock`]
/// (the default: std's monotonic clock, or tokio's paused clock in tests),
/// governor's `MonotonicClock`, or `FakeRelativeClock` for reject-mode
/// simulations.
pub struct LocalQuota<C: Clock = TokioClock> {
    clock: C,
    epoch: C::Instant,
    keys: Box<[KeyState<C>]>,
}

impl<C: Clock> std::fmt::Debug for LocalQuota<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalQuota")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Decrements the waiter count when a waiter leaves, however it leaves
/// (admitted, rejected, or its request dropped).
struct Queued<'a>(&'a AtomicU32);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LocalQuota<TokioClock> {
    /// An engine on the default clock.
    pub fn with_tokio_clock(specs: Vec<KeySpec>) -> Self {
        Self::new(specs, TokioClock)
    }
}

impl<C: Clock + Clone> LocalQuota<C> {
    /// An engine for these keys: `QuotaKey::new(i)` is `specs[i]`.
    pub fn new(specs: Vec<KeySpec>, clock: C) -> Self {
        let epoch = clock.now();
        let keys = specs
            .into_iter()
            .map(|spec| {
                let plan = spec.plan();
                let state = PeekableState::default();
                KeyState {
                    policy: Arc::new(Policy::new(plan.windows(), plan.reported_window())),
                    tat: state.cell(),
                    limiter: Limiter::new(plan.quota(), state, clock.clone()),
                    emission: plan.emission_interval(),
                    paused_until: AtomicU64::new(0),
                    waiters: AtomicU32::new(0),
                    turn: tokio::sync::Mutex::new(()),
                    spec,
                }
            })
            .collect();
        Self { clock, epoch, keys }
    }
}

impl<C: Clock> LocalQuota<C> {
    /// Every key of the engine, in spec order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = QuotaKey> {
        (0..self.keys.len() as u32).map(QuotaKey::new)
    }

    /// The spec of `key`.
    pub fn spec(&self, key: QuotaKey) -> Option<&KeySpec> {
        self.key(key).map(|k| &k.spec)
    }

    /// The header policy of `key`.
    pub fn policy(&self, key: QuotaKey) -> Option<&Arc<Policy>> {
        self.key(key).map(|k| &k.policy)
    }

    /// The engine's clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Reject mode: admit now, or reject without spending quota. Also
    /// rejects while wait-mode requests are queued for the key (they are
    /// first in line).
    ///
    /// A key not from this engine is a caller bug: it is admitted without a
    /// quota (debug builds panic).
    pub fn check(&self, key: QuotaKey) -> Result<Admit, Rejection> {
        let Some(k) = self.key(key) else {
            return Ok(unknown_key(key));
        };
        let waiting = k.waiters.load(Ordering::Acquire);
        if waiting > 0 {
            let limit = self.limit_now(k);
            return Err(self.reject(k, Cause::Limited, limit, self.estimate(k, waiting)));
        }
        self.take(k)
    }

    /// Admit a request for `key` according to `overflow`: reject mode is
    /// [`check`](Self::check); wait mode holds the request in the key's
    /// queue until it may go, and rejects (spending nothing) when the queue
    /// is full or the request could not go within the maximum wait.
    pub async fn acquire(&self, key: QuotaKey, overflow: Overflow) -> Result<Admit, Rejection> {
        match overflow {
            Overflow::Reject => self.check(key),
            Overflow::Wait(max_wait) => match self.key(key) {
                Some(k) => self.wait(k, max_wait).await,
                None => Ok(unknown_key(key)),
            },
        }
    }

    /// Feishu throttled `key`: reject (or hold) its requests for `duration`
    /// from now. Extends, never shortens, a running pause.
    pub fn pause(&self, key: QuotaKey, duration: Duration) {
        let Some(k) = self.key(key) else { return };
        if duration.is_zero() {
            return;
        }
        let until = self
            .now_ns()
            .saturating_add(duration.as_nanos().min(u64::MAX.into()) as u64);
        k.paused_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Spends whatever `key` could admit right now, so that its next
    /// admission is one emission interval away at the earliest: a fresh key
    /// starts "after a full burst". The Redis backend's fallback starts like
    /// this, so a switch from shared to local limiting adds no burst (see
    /// [`Plan::split`]).
    pub fn drain(&self, key: QuotaKey) {
        let Some(k) = self.key(key) else { return };
        for _ in 0..k.spec.plan().burst() {
            if k.limiter.check_key(&Access::Commit).is_err() {
                break;
            }
        }
    }

    /// Gives back one admission of `key`: its theoretical arrival time goes
    /// back one emission interval, so the next request may go one period
    /// earlier. For a request admitted here and then refused by another
    /// key (a client's share key, `src/proxy/keys.rs`): the refused request
    /// then costs this key nothing. Exact when nothing else was admitted
    /// meanwhile; otherwise the key may end up more lenient than if the
    /// request had never come by at most the time since it was admitted,
    /// and never by more than one admission (`docs/quota.md`, "Client
    /// shares").
    pub fn give_back(&self, key: QuotaKey) {
        let Some(k) = self.key(key) else { return };
        let t = k.emission.as_nanos().min(u64::MAX.into()) as u64;
        // 0 is "fresh"; any tat at or before now is the same state.
        let _ = k
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                (tat != 0).then(|| tat.saturating_sub(t))
            });
    }

    /// The state of `key`, read without spending quota.
    pub fn snapshot(&self, key: QuotaKey) -> Option<Snapshot> {
        let k = self.key(key)?;
        let paused_for = self.paused_for(k).unwrap_or_default();
        let (mut remaining, mut next_in) = match k.limiter.check_key(&Access::Peek) {
            Ok(after) => (after.remaining_burst_capacity() + 1, Duration::ZERO),
            Err(not_until) => (0, not_until.wait_time_from(self.clock.now())),
        };
        if !paused_for.is_zero() {
            remaining = 0;
            next_in = next_in.max(paused_for);
        }
        Some(Snapshot {
            remaining,
            next_in,
            paused_for,
            waiters: k.waiters.load(Ordering::Acquire),
            policy: Arc::clone(&k.policy),
        })
    }

    fn key(&self, key: QuotaKey) -> Option<&KeyState<C>> {
        let k = self.keys.get(key.index() as usize);
        debug_assert!(k.is_some(), "{key:?} is not a key of this engine");
        k
    }

    fn now_ns(&self) -> u64 {
        self.clock.now().duration_since(self.epoch).as_u64()
    }

    /// Time left on an upstream pause, if one is running.
    fn paused_for(&self, k: &KeyState<C>) -> Option<Duration> {
        if k.paused_until.load(Ordering::Relaxed) == 0 {
            return None;
        }
        super::pause_left(&k.paused_until, self.now_ns())
    }

    fn limit_now(&self, k: &KeyState<C>) -> Limit {
        match self.paused_for(k) {
            Some(_) => Limit::UpstreamPause,
            None => Limit::Window(k.policy.reported_window()),
        }
    }

    fn reject(
        &self,
        k: &KeyState<C>,
        cause: Cause,
        limit: Limit,
        retry_after: Duration,
    ) -> Rejection {
        Rejection::new(cause, limit, retry_after, Arc::clone(&k.policy))
    }

    /// One governor decision (after the pause check), ignoring the queue.
    fn take(&self, k: &KeyState<C>) -> Result<Admit, Rejection> {
        if let Some(left) = self.paused_for(k) {
            return Err(self.reject(k, Cause::Limited, Limit::UpstreamPause, left));
        }
        match k.limiter.check_key(&Access::Commit) {
            Ok(state) => Ok(Admit {
                remaining: state.remaining_burst_capacity(),
                waited: Duration::ZERO,
            }),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let limit = Limit::Window(k.policy.reported_window());
                Err(self.reject(k, Cause::Limited, limit, wait))
            }
        }
    }

    /// A lower bound on the wait of a request with `ahead` requests to be
    /// admitted before it: the pause, and governor's slots (peeked, nothing
    /// spent): after the slots available now, one per emission interval.
    fn estimate(&self, k: &KeyState<C>, ahead: u32) -> Duration {
        let pause = self.paused_for(k).unwrap_or_default();
        let slot = match k.limiter.check_key(&Access::Peek) {
            Err(not_until) => not_until.wait_time_from(self.clock.now()) + k.emission * ahead,
            Ok(after) => {
                let now_available = after.remaining_burst_capacity() + 1;
                k.emission * ahead.saturating_sub(now_available)
            }
        };
        pause.max(slot)
    }

    async fn wait(&self, k: &KeyState<C>, max_wait: Duration) -> Result<Admit, Rejection> {
        let started = tokio::time::Instant::now();
        if k.waiters.load(Ordering::Acquire) == 0 {
            match self.take(k) {
                Ok(admit) => return Ok(admit),
                Err(rejection) if max_wait.is_zero() => return Err(rejection),
                Err(_) => {}
            }
        }
        let max = k.spec.max_waiters;
        let ahead = match k
            .waiters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < max).then_some(w + 1)
            }) {
            Ok(ahead) => ahead,
            Err(queued) => {
                let limit = self.limit_now(k);
                return Err(self.reject(k, Cause::QueueFull, limit, self.estimate(k, queued)));
            }
        };
        let _queued = Queued(&k.waiters);

        let estimate = self.estimate(k, ahead);
        if estimate > max_wait {
            let limit = self.limit_now(k);
            return Err(self.reject(k, Cause::WaitTooLong, limit, estimate));
        }
        let deadline = started + max_wait;
        let Ok(_turn) = tokio::time::timeout_at(deadline, k.turn.lock()).await else {
            let limit = self.limit_now(k);
            return Err(self.reject(k, Cause::WaitTooLong, limit, self.estimate(k, 0)));
        };
        loop {
            match self.take(k) {
                Ok(admit) => {
                    return Ok(Admit {
                        waited: started.elapsed(),
                        ..admit
                    })
                }
                Err(rejection) => {
                    let wake = tokio::time::Instant::now() + rejection.retry_after();
                    if wake > deadline {
                        return Err(rejection.with_cause(Cause::WaitTooLong));
                    }
                    tokio::time::sleep_until(wake).await;
                }
            }
        }
    }
}

fn unknown_key(key: QuotaKey) -> Admit {
    tracing::error!(
        ?key,
        "quota key not from this engine: admitted without a quota"
    );
    Admit {
        remaining: u32::MAX,
        waited: Duration::ZERO,
    }
}
