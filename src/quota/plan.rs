//! The planner: ONE governor GCRA (emission interval `t`, burst `b`) that
//! honours every window of a key at once, with a safety margin.
//!
//! Each window `N_i / W_i` is planned as `L_i = W_i + margin` (Feishu counts
//! at arrival, admitted requests arrive up to a margin later), so that
//! `b + floor(L_i / t) <= N_i`; the default policy takes the largest burst
//! whose rate is still `min_rate_fraction` of the best one. What governor
//! admits, the proof of that bound, the seed endpoints' figures and why 100 %
//! is out of reach are in `docs/quota.md`.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use super::window::Window;

/// The default safety margin added to every window (see the module docs).
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(100);
/// The default floor on the sustained rate, as a fraction of the best rate
/// the windows allow (with the margin).
pub const DEFAULT_MIN_RATE_FRACTION: f64 = 0.965;
/// The largest margin accepted.
pub const MAX_MARGIN: Duration = Duration::from_secs(3600);

/// How to choose a plan: the safety margin and the burst/rate trade-off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanPolicy {
    /// Added to every window's period: the most an admitted request may be
    /// delayed before Feishu counts it. Default 100 ms.
    pub margin: Duration,
    /// Keep the sustained rate at or above this fraction of the best
    /// achievable rate, and take the largest burst that allows. In `(0, 1]`;
    /// 1 means "fastest rate, burst 1". Default 0.965.
    pub min_rate_fraction: f64,
}

impl Default for PlanPolicy {
    fn default() -> Self {
        Self {
            margin: DEFAULT_MARGIN,
            min_rate_fraction: DEFAULT_MIN_RATE_FRACTION,
        }
    }
}

/// Why no plan could be made.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// A quota needs at least one window.
    #[error("no limits given: a quota needs at least one \"<requests>/<duration>\" window")]
    NoWindows,
    /// The margin is above [`MAX_MARGIN`].
    #[error("safety margin {0:?} is too large (at most 1h)")]
    Margin(Duration),
    /// The fraction is not in `(0, 1]`.
    #[error("min_rate_fraction {0} must be greater than 0 and at most 1")]
    Fraction(f64),
    /// A fixed burst is 0 or larger than the smallest window limit.
    #[error("burst {burst} must be between 1 and the smallest window limit ({max})")]
    Burst {
        /// The burst asked for.
        burst: u32,
        /// The smallest window limit.
        max: u32,
    },
    /// A window's limit is smaller than the number of replicas it is split
    /// between ([`Plan::split`]).
    #[error("window {window} cannot be split between {replicas} replicas (less than 1 each)")]
    Split {
        /// The window.
        window: Window,
        /// The number of replicas.
        replicas: u32,
    },
}

/// What a plan guarantees and sustains for one window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowFigures {
    /// The window as configured.
    pub window: Window,
    /// The interval it is planned over: period + margin.
    pub span: Duration,
    /// The most the plan can admit within any closed interval of `span`:
    /// `b + floor(span / t)`. Always `<= window.limit()`.
    pub worst_case: u32,
    /// Admissions per period under sustained overload: `period / t`.
    pub sustained: f64,
}

impl WindowFigures {
    /// `sustained` as a fraction of the window's limit.
    pub fn sustained_fraction(&self) -> f64 {
        self.sustained / f64::from(self.window.limit())
    }
}

/// One GCRA for a key: emission interval `t`, burst `b`, and the figures
/// that justify it. Build with [`Plan::new`] (policy) or
/// [`Plan::with_burst`] (a fixed burst).
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    emission_ns: u64,
    burst: u32,
    margin: Duration,
    best_emission_ns: u64,
    figures: Vec<WindowFigures>,
    reported: usize,
}

impl Plan {
    /// The plan the policy picks for these windows (see the module docs).
    pub fn new(windows: &[Window], policy: &PlanPolicy) -> Result<Self, PlanError> {
        let f = policy.min_rate_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return Err(PlanError::Fraction(f));
        }
        let spans = spans(windows, policy.margin)?;
        let best = t_min(&spans, 1);
        let ceiling = best as f64 / f;
        // t_min is non-decreasing in b: binary search the last b within the
        // ceiling (b = 1 always is).
        let (mut lo, mut hi) = (1u32, max_burst(&spans));
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if t_min(&spans, mid) as f64 <= ceiling {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok(Self::build(windows, &spans, policy.margin, lo))
    }

    /// The fastest safe plan with exactly this burst.
    pub fn with_burst(windows: &[Window], margin: Duration, burst: u32) -> Result<Self, PlanError> {
        let spans = spans(windows, margin)?;
        let max = max_burst(&spans);
        if burst == 0 || burst > max {
            return Err(PlanError::Burst { burst, max });
        }
        Ok(Self::build(windows, &spans, margin, burst))
    }

    /// The plan for each of `replicas` gateways that normally share this
    /// plan through one store but must limit on their own (the Redis
    /// backend's fallback): every window's limit divided by `replicas`
    /// (rounded down), planned by the same policy, and never faster than
    /// `replicas` times this plan's period.
    ///
    /// The first part makes the replicas together honour every window on
    /// their own: `replicas * (b' + floor(L / t')) <= N`. The second makes the
    /// switch from the shared plan safe: if every replica starts its split
    /// plan with an empty burst ([`LocalQuota::drain`](super::LocalQuota::drain))
    /// at or after the last shared admission, then in any interval `[a, a+L]`
    /// that spans the switch at `s` the fleet admits at most
    /// `b + floor((s-a)/t)` shared and `replicas * floor((a+L-s)/t')
    /// <= floor((a+L-s)/t)` split requests, `b + floor(L/t) <= N` in all.
    pub fn split(&self, replicas: u32, min_rate_fraction: f64) -> Result<Plan, PlanError> {
        let r = replicas.max(1);
        let mut windows = Vec::with_capacity(self.figures.len());
        for w in self.windows() {
            let each = Window::new(w.limit() / r, w.period()).map_err(|_| PlanError::Split {
                window: w,
                replicas: r,
            })?;
            windows.push(each);
        }
        let policy = PlanPolicy {
            margin: self.margin,
            min_rate_fraction,
        };
        let plan = Plan::new(&windows, &policy)?;
        let floor = self.emission_ns.saturating_mul(u64::from(r));
        if plan.emission_ns >= floor {
            return Ok(plan);
        }
        let spans = spans(&windows, self.margin)?;
        Ok(Self::build_with_period(
            &windows,
            &spans,
            self.margin,
            plan.burst,
            floor,
        ))
    }

    fn build(windows: &[Window], spans: &[(u64, u64)], margin: Duration, burst: u32) -> Self {
        Self::build_with_period(windows, spans, margin, burst, t_min(spans, burst))
    }

    /// A plan with burst `burst` and period `t`, which must be at least
    /// `t_min(spans, burst)` (a longer period is always safe).
    fn build_with_period(
        windows: &[Window],
        spans: &[(u64, u64)],
        margin: Duration,
        burst: u32,
        t: u64,
    ) -> Self {
        debug_assert!(t >= t_min(spans, burst));
        let figures: Vec<WindowFigures> = windows
            .iter()
            .zip(spans)
            .map(|(w, &(_, span))| WindowFigures {
                window: *w,
                span: Duration::from_nanos(span),
                worst_case: burst + (span / t) as u32,
                sustained: w.period().as_nanos() as f64 / t as f64,
            })
            .collect();
        // Report the window the plan uses most fully (worst_case / limit),
        // the shorter one on ties: that is the limit a rejected caller hit.
        let mut reported = 0;
        for (i, f) in figures.iter().enumerate() {
            let r = &figures[reported];
            let lhs = u64::from(f.worst_case) * u64::from(r.window.limit());
            let rhs = u64::from(r.worst_case) * u64::from(f.window.limit());
            if lhs > rhs || (lhs == rhs && f.window.period() < r.window.period()) {
                reported = i;
            }
        }
        Self {
            emission_ns: t,
            burst,
            margin,
            best_emission_ns: t_min(spans, 1),
            figures,
            reported,
        }
    }

    /// `t`: one request is replenished every `t`.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.emission_ns)
    }

    /// `b`: requests admitted at once after idle.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The safety margin the windows were planned with.
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// Per-window guarantees and sustained figures, in configuration order.
    pub fn figures(&self) -> &[WindowFigures] {
        &self.figures
    }

    /// The windows, in configuration order.
    pub fn windows(&self) -> impl ExactSizeIterator<Item = Window> + '_ {
        self.figures.iter().map(|f| f.window)
    }

    /// The window a rejection reports (`x-ogw-ratelimit-limit`): the one the
    /// plan fills most (worst case / limit), the shortest on ties.
    pub fn reported_window(&self) -> Window {
        self.figures[self.reported].window
    }

    /// Sustained admissions per second under overload: `1 / t`.
    pub fn rate_per_sec(&self) -> f64 {
        1e9 / self.emission_ns as f64
    }

    /// The sustained rate as a fraction of the theoretical maximum, the
    /// smallest `N / W` of the windows (margin not deducted).
    pub fn sustained_fraction(&self) -> f64 {
        let max = self
            .figures
            .iter()
            .map(|f| f.window.rate_per_sec())
            .fold(f64::INFINITY, f64::min);
        self.rate_per_sec() / max
    }

    /// The sustained rate as a fraction of the best rate these windows allow
    /// with this margin (burst 1); what `min_rate_fraction` bounds.
    pub fn rate_vs_best(&self) -> f64 {
        self.best_emission_ns as f64 / self.emission_ns as f64
    }

    /// The governor quota implementing this plan.
    pub fn quota(&self) -> governor::Quota {
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        governor::Quota::with_period(self.emission_interval())
            .unwrap_or_else(|| governor::Quota::per_hour(NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

impl fmt::Display for Plan {
    /// One line for logs, e.g. `t=62.087ms burst=33 (16.11/s, 96.6% of max);
    /// 50/1s: <=50 in any 1.1s, sustains 16.1 (32.2%); ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t={:.3}ms burst={} ({:.2}/s, {:.1}% of max, margin {}ms)",
            self.emission_ns as f64 / 1e6,
            self.burst,
            self.rate_per_sec(),
            100.0 * self.sustained_fraction(),
            self.margin.as_millis(),
        )?;
        for w in &self.figures {
            write!(
                f,
                "; {}: <={} in any {:?}, sustains {:.1} ({:.1}%)",
                w.window,
                w.worst_case,
                w.span,
                w.sustained,
                100.0 * w.sustained_fraction(),
            )?;
        }
        Ok(())
    }
}

/// `(N, L)` per window, `L = W + margin` in nanoseconds.
fn spans(windows: &[Window], margin: Duration) -> Result<Vec<(u64, u64)>, PlanError> {
    if windows.is_empty() {
        return Err(PlanError::NoWindows);
    }
    if margin > MAX_MARGIN {
        return Err(PlanError::Margin(margin));
    }
    // Both are bounded (24h + 1h), far inside u64 nanoseconds.
    let margin = margin.as_nanos() as u64;
    Ok(windows
        .iter()
        .map(|w| (u64::from(w.limit()), w.period().as_nanos() as u64 + margin))
        .collect())
}

fn max_burst(spans: &[(u64, u64)]) -> u32 {
    spans.iter().map(|&(n, _)| n).min().unwrap_or(1) as u32
}

/// The smallest `t` (ns) with `b + floor(L / t) <= N` for every window:
/// `floor(L / t) <= N - b` iff `(N - b + 1) t > L`.
fn t_min(spans: &[(u64, u64)], burst: u32) -> u64 {
    spans
        .iter()
        .map(|&(n, l)| l / (n - u64::from(burst) + 1) + 1)
        .max()
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::{Clock, FakeRelativeClock, Reference};
    use governor::nanos::Nanos;
    use governor::RateLimiter;

    fn windows(list: &[&str]) -> Vec<Window> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn seed() -> Vec<Window> {
        windows(&["50/1s", "1000/60s"])
    }

    #[test]
    fn seed_plan_meets_the_targets() {
        let plan = Plan::new(&seed(), &PlanPolicy::default()).unwrap();
        assert_eq!(plan.burst(), 33);
        assert_eq!(plan.emission_interval(), Duration::from_nanos(62_086_777));
        let [short, long] = plan.figures() else {
            panic!()
        };
        assert_eq!((short.worst_case, long.worst_case), (50, 1000));
        assert!(long.sustained_fraction() >= 0.965, "{plan}");
        assert!(plan.sustained_fraction() >= 0.965);
        assert!(plan.rate_vs_best() >= DEFAULT_MIN_RATE_FRACTION);
        assert_eq!(plan.reported_window(), "50/1s".parse().unwrap());
        // One more request of burst falls off the cliff.
        let next = Plan::with_burst(&seed(), DEFAULT_MARGIN, 34).unwrap();
        assert!(next.sustained_fraction() < 0.93, "{next}");
    }

    #[test]
    fn t_min_is_the_smallest_safe_period() {
        for ws in [
            seed(),
            windows(&["5/1s", "20/10s"]),
            windows(&["1/1s"]),
            windows(&["7/500ms", "3/100ms"]),
        ] {
            for margin in [Duration::ZERO, DEFAULT_MARGIN] {
                let spans = spans(&ws, margin).unwrap();
                for b in 1..=max_burst(&spans) {
                    let ok = |t: u64| spans.iter().all(|&(n, l)| u64::from(b) + l / t <= n);
                    let t = t_min(&spans, b);
                    assert!(ok(t) && !ok(t - 1), "b={b} t={t} {ws:?}");
                }
            }
        }
    }

    #[test]
    fn policy_takes_the_largest_burst_within_the_fraction() {
        for f in [0.5, 0.8, 0.9, 0.965, 0.99, 1.0] {
            let policy = PlanPolicy {
                margin: DEFAULT_MARGIN,
                min_rate_fraction: f,
            };
            let plan = Plan::new(&seed(), &policy).unwrap();
            assert!(plan.rate_vs_best() >= f);
            if let Ok(more) = Plan::with_burst(&seed(), DEFAULT_MARGIN, plan.burst() + 1) {
                assert!(more.rate_vs_best() < f);
            }
        }
        let fastest = Plan::new(
            &seed(),
            &PlanPolicy {
                min_rate_fraction: 1.0,
                ..Default::default()
            },
        );
        assert_eq!(fastest.unwrap().burst(), 1);
    }

    #[test]
    fn rejects_bad_input() {
        let p = PlanPolicy::default();
        assert_eq!(Plan::new(&[], &p), Err(PlanError::NoWindows));
        for f in [0.0, -1.0, 1.5, f64::NAN] {
            let bad = PlanPolicy {
                min_rate_fraction: f,
                ..p
            };
            assert!(Plan::new(&seed(), &bad).is_err());
        }
        let bad = PlanPolicy {
            margin: Duration::from_secs(7200),
            ..p
        };
        assert_eq!(Plan::new(&seed(), &bad), Err(PlanError::Margin(bad.margin)));
        assert_eq!(
            Plan::with_burst(&seed(), DEFAULT_MARGIN, 51)
                .unwrap_err()
                .to_string(),
            "burst 51 must be between 1 and the smallest window limit (50)"
        );
    }

    #[test]
    fn governor_quota_round_trips() {
        let plan = Plan::new(&seed(), &PlanPolicy::default()).unwrap();
        let q = plan.quota();
        assert_eq!(q.replenish_interval(), plan.emission_interval());
        assert_eq!(q.burst_size().get(), plan.burst());
        assert!(
            plan.to_string().starts_with("t=62.087ms burst=33"),
            "{plan}"
        );
    }

    /// governor's semantics as relied on above: a burst of b, then exactly
    /// one per t, admitted AT `tat - tau` and rejected one ns before; so a
    /// closed interval of length m*t holds b + m admissions.
    #[test]
    fn governor_admits_b_plus_floor_l_over_t_in_a_closed_interval() {
        let (b, t) = (4u32, Duration::from_millis(10));
        let clock = FakeRelativeClock::default();
        let quota = governor::Quota::with_period(t)
            .unwrap()
            .allow_burst(NonZeroU32::new(b).unwrap());
        let lim = RateLimiter::direct_with_clock(quota, clock.clone());
        let start = clock.now();
        clock.advance(Duration::from_secs(5)); // idle: full burst
        let a = clock.now();
        let mut admitted = vec![];
        for _ in 0..b {
            assert!(lim.check().is_ok());
            admitted.push(a);
        }
        let err = lim.check().unwrap_err();
        assert_eq!(err.wait_time_from(clock.now()), t);
        assert_eq!(err.earliest_possible(), a + Nanos::from(t));
        assert_eq!(start, Nanos::from(0));
        for _ in 0..3 {
            clock.advance(t - Duration::from_nanos(1));
            assert!(lim.check().is_err(), "one ns early");
            clock.advance(Duration::from_nanos(1));
            assert!(lim.check().is_ok(), "exactly on time");
            assert!(lim.check().is_err());
            admitted.push(clock.now());
        }
        // [a, a + 3t] is closed and holds b + 3 = b + floor(3t / t).
        assert_eq!(admitted.len() as u32, b + 3);
        assert_eq!(
            admitted.last().unwrap().duration_since(a),
            Nanos::from(3 * t)
        );
    }
}
