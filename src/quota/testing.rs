//! Deterministic simulations on governor's `FakeRelativeClock` and exact
//! sliding-window checks of their output: what the property tests assert and
//! what `benches/quota.rs` prints. Times are nanoseconds since the start.

use std::time::Duration;

use governor::clock::FakeRelativeClock;

use super::local::{KeySpec, LocalQuota};
use super::plan::Plan;
use super::QuotaKey;

/// The most timestamps within any closed interval `[a, a + span]` (an exact
/// two-pointer sliding scan). `times` must be sorted.
pub fn max_in_any_interval(times: &[u64], span: Duration) -> usize {
    let span = span.as_nanos() as u64;
    let (mut best, mut lo) = (0, 0);
    for hi in 0..times.len() {
        while times[hi] - times[lo] > span {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// How many timestamps would be refused by a strict sliding-window counter
/// allowing `limit` within any closed interval of `span` (counting only the
/// ones it let through): Feishu's 429s at arrival. `times` must be sorted.
pub fn violations(times: &[u64], limit: u32, span: Duration) -> usize {
    let span = span.as_nanos() as u64;
    let mut accepted: std::collections::VecDeque<u64> = Default::default();
    let mut refused = 0;
    for &t in times {
        while accepted.front().is_some_and(|&first| t - first > span) {
            accepted.pop_front();
        }
        if accepted.len() < limit as usize {
            accepted.push_back(t);
        } else {
            refused += 1;
        }
    }
    refused
}

/// One key of a [`LocalQuota`] on a fake clock, driven by arrival times.
pub struct Sim {
    quota: LocalQuota<FakeRelativeClock>,
    clock: FakeRelativeClock,
    now: u64,
    /// Admission times so far, in order.
    pub admitted: Vec<u64>,
}

impl Sim {
    /// A fresh engine with one key limited by `plan`, at time 0.
    pub fn new(plan: Plan) -> Self {
        let clock = FakeRelativeClock::default();
        let quota = LocalQuota::new(vec![KeySpec::new(plan, 0)], clock.clone());
        Self {
            quota,
            clock,
            now: 0,
            admitted: Vec::new(),
        }
    }

    /// The current fake time.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Moves the clock to `at` (never backwards).
    pub fn advance_to(&mut self, at: u64) {
        if at > self.now {
            self.clock.advance(Duration::from_nanos(at - self.now));
            self.now = at;
        }
    }

    /// One request in reject mode at `at`; records and reports admission.
    pub fn arrive(&mut self, at: u64) -> bool {
        self.advance_to(at);
        let ok = self.quota.check(QuotaKey::new(0)).is_ok();
        if ok {
            self.admitted.push(self.now);
        }
        ok
    }

    /// Requests arriving every `step` during `length` from now: overload
    /// when `step` is below the plan's emission interval. Returns how many
    /// were admitted.
    pub fn flood(&mut self, step: Duration, length: Duration) -> usize {
        let (start, step) = (self.now, step.as_nanos().max(1) as u64);
        let end = start + length.as_nanos() as u64;
        let before = self.admitted.len();
        let mut at = start;
        while at < end {
            self.arrive(at);
            at += step;
        }
        self.advance_to(end);
        self.admitted.len() - before
    }

    /// After `idle` without requests, how many are admitted at one instant.
    pub fn burst_after(&mut self, idle: Duration) -> usize {
        let at = self.now + idle.as_nanos() as u64;
        let mut n = 0;
        while self.arrive(at) {
            n += 1;
        }
        n
    }

    /// Admissions within `[from, to)`.
    pub fn admitted_between(&self, from: u64, to: u64) -> usize {
        self.admitted
            .iter()
            .filter(|&&t| t >= from && t < to)
            .count()
    }
}

/// The seed-limit figures the benchmark prints and the tests assert.
#[derive(Clone, Debug)]
pub struct Figures {
    /// Forwarded per 60 s under sustained overload (steady state, minutes
    /// 2..=10 of a 10-minute flood of one request per ms).
    pub per_minute: f64,
    /// Forwarded within the first 60 s of that flood, from idle.
    pub first_minute: usize,
    /// Largest immediate burst after 1 s idle (following overload).
    pub burst_after_1s: usize,
    /// Largest immediate burst after 60 s idle (following overload).
    pub burst_after_60s: usize,
    /// Per window: the most admissions within any interval of W + margin.
    pub worst: Vec<usize>,
    /// Feishu's refusals at arrival, summed over windows, with every
    /// admitted request delayed by a pseudo-random jitter in `[0, margin]`.
    pub violations: usize,
}

/// Runs the benchmark scenario for `plan`: a 10-minute overload flood, a
/// burst after 1 s idle, a minute of overload, a burst after 60 s idle.
pub fn figures(plan: &Plan) -> Figures {
    let mut sim = Sim::new(plan.clone());
    let ms = Duration::from_millis(1);
    let minute = Duration::from_secs(60);
    sim.flood(ms, 10 * minute);
    let first_minute = sim.admitted_between(0, minute.as_nanos() as u64);
    let steady = sim.admitted_between(minute.as_nanos() as u64, sim.now());
    let burst_after_1s = sim.burst_after(Duration::from_secs(1));
    sim.flood(ms, minute);
    let burst_after_60s = sim.burst_after(minute);
    sim.flood(ms, minute);

    let worst = plan
        .figures()
        .iter()
        .map(|f| max_in_any_interval(&sim.admitted, f.span))
        .collect();
    let arrivals = jittered(&sim.admitted, plan.margin(), 0x5eed);
    let violations = plan
        .figures()
        .iter()
        .map(|f| violations(&arrivals, f.window.limit(), f.window.period()))
        .sum();
    Figures {
        per_minute: steady as f64 / 9.0,
        first_minute,
        burst_after_1s,
        burst_after_60s,
        worst,
        violations,
    }
}

/// `times` each delayed by a pseudo-random amount in `[0, margin]`, sorted:
/// when Feishu sees them. (The extremes 0 and `margin` are drawn often, as
/// they are the worst case.)
pub fn jittered(times: &[u64], margin: Duration, seed: u64) -> Vec<u64> {
    let margin = margin.as_nanos() as u64;
    let mut state = seed | 1;
    let mut out: Vec<u64> = times
        .iter()
        .map(|&t| {
            // xorshift64*: deterministic, no dependency.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            t + match r % 4 {
                0 => 0,
                1 => margin,
                _ => (r >> 8) % (margin + 1),
            }
        })
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_scan_counts_closed_intervals() {
        let s = Duration::from_nanos;
        assert_eq!(max_in_any_interval(&[], s(10)), 0);
        assert_eq!(max_in_any_interval(&[0, 10, 20], s(10)), 2);
        assert_eq!(max_in_any_interval(&[0, 10, 20], s(9)), 1);
        assert_eq!(max_in_any_interval(&[0, 10, 20], s(20)), 3);
        assert_eq!(max_in_any_interval(&[5, 5, 5, 6], s(0)), 3);
    }

    #[test]
    fn violations_are_counted_like_a_strict_sliding_window() {
        let s = Duration::from_nanos;
        assert_eq!(violations(&[0, 1, 2, 3], 2, s(10)), 2);
        assert_eq!(violations(&[0, 1, 11, 12], 2, s(10)), 0);
        assert_eq!(violations(&[0, 1, 10, 11], 2, s(10)), 1);
    }

    #[test]
    fn jitter_stays_within_the_margin() {
        let times: Vec<u64> = (0..1000).map(|i| i * 1_000_000).collect();
        let out = jittered(&times, Duration::from_millis(100), 7);
        assert_eq!(out.len(), times.len());
        let total: u64 = out.iter().sum::<u64>() - times.iter().sum::<u64>();
        assert!(total > 0 && total <= 1000 * 100_000_000);
        assert!(out.windows(2).all(|p| p[0] <= p[1]));
    }
}
