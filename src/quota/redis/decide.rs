//! The decisions: admit, pause and peek one key — shared in Redis while the
//! backend is healthy, by this replica's fallback limiter (`fail = "local"`)
//! while it is not. The argument for the floor after a heal is in
//! `docs/quota.md`, "When Redis is unreachable or slow".

use super::*;

impl Inner {
    pub(super) fn now_ns(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
    }

    /// [`RedisQuota::acquire`] for key `k`, whose fallback limiter is
    /// found by `fb`.
    pub(super) async fn acquire(
        &self,
        k: &SharedKey,
        fb: Fallback<'_>,
        overflow: Overflow,
    ) -> Result<Admit, Rejection> {
        let inner = self;
        let started = Instant::now();
        let max_wait = match overflow {
            Overflow::Reject => Duration::ZERO,
            Overflow::Wait(d) => d,
        };
        let deadline = started + max_wait;
        let mut slept = false;
        loop {
            // This replica's own knowledge of an upstream pause comes first:
            // no round trip while it lasts.
            if let Some(left) = inner.paused_for(k) {
                if max_wait.is_zero() {
                    return Err(k.reject(Cause::Limited, Limit::UpstreamPause, left));
                }
                if Instant::now() + left > deadline {
                    return Err(k.reject(Cause::WaitTooLong, Limit::UpstreamPause, left));
                }
                let Some(_waiting) = Waiting::join(k) else {
                    return Err(k.reject(Cause::QueueFull, Limit::UpstreamPause, left));
                };
                tokio::time::sleep(left).await;
                slept = true;
                continue;
            }
            if inner.mode() != Mode::Shared {
                let left = deadline.saturating_duration_since(Instant::now());
                let overflow = match overflow {
                    Overflow::Reject => Overflow::Reject,
                    Overflow::Wait(_) => Overflow::Wait(left),
                };
                return inner.degraded(k, fb, overflow, started).await;
            }
            // A place among this replica's sleepers is taken before asking,
            // so their bound holds; without one, only "now" is acceptable.
            let waiting = if max_wait.is_zero() {
                None
            } else {
                Waiting::join(k)
            };
            let allowance = match waiting {
                Some(_) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::ZERO,
            };
            match inner.take(k, allowance).await {
                Ok(Reply::Go { wait, remaining }) => {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                        slept = true;
                    }
                    return Ok(Admit {
                        remaining,
                        waited: if slept {
                            started.elapsed()
                        } else {
                            Duration::ZERO
                        },
                    });
                }
                Ok(Reply::Limited { wait }) => {
                    let cause = if max_wait.is_zero() {
                        Cause::Limited
                    } else if waiting.is_none() {
                        Cause::QueueFull
                    } else {
                        Cause::WaitTooLong
                    };
                    let limit = Limit::Window(k.policy.reported_window());
                    return Err(k.reject(cause, limit, wait));
                }
                Ok(Reply::Paused { left }) => inner.note_pause(k, left),
                Err(failure) => {
                    if inner.failed(&failure) {
                        continue; // switched: the fail mode decides
                    }
                    // A failure Redis may yet recover from at once.
                    match inner.fail {
                        FailMode::Closed => return Err(k.unavailable()),
                        FailMode::Open => return Ok(unlimited()),
                        FailMode::Local => {
                            let pause = inner.timeout.min(Duration::from_millis(20));
                            if Instant::now() + pause < deadline {
                                tokio::time::sleep(pause).await;
                                slept = true;
                                continue;
                            }
                            let limit = Limit::Window(k.policy.reported_window());
                            let t = Duration::from_micros(k.t_us);
                            return Err(k.reject(Cause::Limited, limit, t));
                        }
                    }
                }
            }
        }
    }

    /// [`RedisQuota::pause_shared`] for key `k`.
    pub(super) async fn pause_shared(&self, k: &SharedKey, duration: Duration) -> bool {
        let inner = self;
        inner.note_pause(k, duration);
        if inner.mode() != Mode::Shared {
            return false;
        }
        let us = duration.as_micros().min(u64::MAX.into()) as u64;
        let hist = inner.metrics.as_ref().map(|m| &m.pause);
        let mut call = inner.script.prepare_invoke();
        call.key(&k.tat).key(&k.pause).arg("pause").arg(us);
        match inner.call(&call, hist).await {
            Ok(_) => true,
            Err(failure) => {
                inner.failed(&failure);
                false
            }
        }
    }

    /// [`RedisScope::give_back`] for key `k`, whose fallback limiter is
    /// found by `fb`: in Redis while shared (one call), else to the
    /// fallback limiter (`fail = "open"` has nothing to give back). A
    /// failed call is counted like any other and gives nothing back.
    pub(super) async fn give_back(&self, k: &SharedKey, fb: Fallback<'_>) {
        if self.mode() != Mode::Shared {
            if let Some((fallback, key)) = self.fallback_for(fb) {
                fallback.give_back(key);
            }
            return;
        }
        let hist = self.metrics.as_ref().map(|m| &m.give);
        let mut call = self.script.prepare_invoke();
        call.key(&k.tat).key(&k.pause).arg("give").arg(k.t_us);
        if let Err(failure) = self.call(&call, hist).await {
            self.failed(&failure);
        }
    }

    /// [`RedisQuota::snapshot`] for key `k`, whose fallback limiter is
    /// found by `fb`.
    pub(super) async fn snapshot(&self, k: &SharedKey, fb: Fallback<'_>) -> Snapshot {
        let inner = self;
        let waiters = k.waiters.load(Ordering::Acquire);
        let local_pause = inner.paused_for(k).unwrap_or_default();
        let shared = if inner.mode() == Mode::Shared {
            let hist = inner.metrics.as_ref().map(|m| &m.peek);
            let mut call = inner.script.prepare_invoke();
            call.key(&k.tat)
                .key(&k.pause)
                .arg("peek")
                .arg(k.t_us)
                .arg(k.tau_us)
                .arg(inner.floor(k));
            match inner.call(&call, hist).await {
                Ok(v) => Some(v),
                Err(failure) => {
                    inner.failed(&failure);
                    None
                }
            }
        } else {
            None
        };
        let (mut remaining, mut next_in, mut paused_for) = match shared.as_deref() {
            Some([1, _, n, ..]) => (clamp_u32(*n), Duration::ZERO, Duration::ZERO),
            Some([0, wait, ..]) => (0, micros(*wait), Duration::ZERO),
            Some([2, left, ..]) => (0, micros(*left), micros(*left)),
            _ => match inner.fallback_for(fb).and_then(|(f, key)| f.snapshot(key)) {
                Some(s) => (s.remaining, s.next_in, s.paused_for),
                None => (0, Duration::ZERO, Duration::ZERO),
            },
        };
        if !local_pause.is_zero() {
            remaining = 0;
            next_in = next_in.max(local_pause);
            paused_for = paused_for.max(local_pause);
        }
        Snapshot {
            remaining,
            next_in,
            paused_for,
            waiters,
            policy: Arc::clone(&k.policy),
        }
    }

    /// The floor of `k`'s `tat` after the fleet's last heal (0 = none):
    /// the heal time plus the key's drain (see the module docs).
    pub(super) fn floor(&self, k: &SharedKey) -> u64 {
        match self.healed_at_us.load(Ordering::Relaxed) {
            0 => 0,
            at => at.saturating_add(k.drain_slots.saturating_mul(k.t_us)),
        }
    }

    /// The fallback limiter of a key and its key in it.
    pub(super) fn fallback_for(&self, fb: Fallback<'_>) -> Option<(Arc<LocalQuota>, QuotaKey)> {
        match fb {
            Fallback::Engine(key) => self.fallback().map(|f| (f, key)),
            Fallback::Scope(scope, key) => scope.fallback(self).map(|f| (f, key)),
        }
    }

    pub(super) fn fallback(&self) -> Option<Arc<LocalQuota>> {
        self.fallback
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn note_pause(&self, k: &SharedKey, duration: Duration) {
        let until = self
            .now_ns()
            .saturating_add(duration.as_nanos().min(u64::MAX.into()) as u64);
        k.paused_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Time left on an upstream pause, if one is running.
    pub(super) fn paused_for(&self, k: &SharedKey) -> Option<Duration> {
        if k.paused_until.load(Ordering::Relaxed) == 0 {
            return None;
        }
        crate::quota::pause_left(&k.paused_until, self.now_ns())
    }
}
