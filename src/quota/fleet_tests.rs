//! Property tests of the Redis backend's arithmetic, on a model of a fleet:
//! the shared GCRA as `redis.lua` runs it (whole microseconds of Redis
//! time, the period rounded up), the replicas' drained local shares
//! ([`Plan::split`]) while Redis is down, and the drained return to Redis at
//! the fleet's heal time. Whatever the arrivals, every window holds across
//! both switches.

use std::time::Duration;

use proptest::prelude::*;

use super::plan::{DEFAULT_MARGIN, DEFAULT_MIN_RATE_FRACTION};
use super::testing as sim;
use super::*;

const MS: u64 = 1_000_000;

/// One GCRA on integer time: admit iff `now >= tat - tau`, then
/// `tat = max(tat, now) + t` (governor's rule and the script's).
#[derive(Clone, Debug)]
struct Gcra {
    t: u64,
    tau: u64,
    tat: u64,
}

impl Gcra {
    fn new(t: u64, burst: u32) -> Gcra {
        Gcra {
            t,
            tau: (u64::from(burst) - 1) * t,
            tat: 0,
        }
    }

    fn admit(&mut self, now: u64) -> bool {
        let tat = self.tat.max(now);
        if now + self.tau >= tat {
            self.tat = tat + self.t;
            true
        } else {
            false
        }
    }

    /// [`LocalQuota::drain`]: spend what could go now.
    fn drain(&mut self, now: u64) {
        while self.admit(now) {}
    }

    /// The script's `drain t slots at`.
    fn drain_slots(&mut self, at: u64, slots: u64) {
        self.tat = self.tat.max(at + slots * self.t);
    }
}

/// One fleet run: arrivals `(time ns, replica)`, sorted by time; Redis is
/// down in `[down, heal)` (state lost or kept), replica `i` notices at its
/// first arrival after `down`, and switches back `early[i]` before `heal`.
/// Returns the admission times (ns).
fn run(
    plan: &Plan,
    replicas: u32,
    arrivals: &[(u64, usize)],
    down: u64,
    heal: u64,
    lost: bool,
    early: &[u64],
) -> Vec<u64> {
    let split = plan
        .split(replicas, DEFAULT_MIN_RATE_FRACTION)
        .expect("splittable");
    // As RedisQuota::new: t in µs rounded up plus 1 µs.
    let t_us = (plan.emission_interval().as_nanos() as u64).div_ceil(1000) + 1;
    let slots = u64::from(plan.burst()).max(u64::from(split.burst()) * u64::from(replicas));
    let mut redis = Gcra::new(t_us, plan.burst());
    let mut local: Vec<Option<Gcra>> = vec![None; replicas as usize];
    let mut healed = false;
    let mut admitted = Vec::new();
    for &(at, replica) in arrivals {
        let us = at / 1000; // Redis TIME truncates to µs
        let shared = at < down || at >= heal - early[replica];
        if shared && at >= down && !healed {
            // The first probe back drains Redis from the heal time on.
            if lost {
                redis = Gcra::new(t_us, plan.burst());
            }
            redis.drain_slots(heal / 1000, slots);
            healed = true;
        }
        let ok = if shared {
            redis.admit(us)
        } else {
            let l = local[replica].get_or_insert_with(|| {
                let mut g = Gcra::new(split.emission_interval().as_nanos() as u64, split.burst());
                g.drain(at);
                g
            });
            l.admit(at)
        };
        if ok {
            admitted.push(at);
        }
    }
    admitted
}

/// Mostly overload (a request every few ms, from random replicas), with
/// some pauses and idle stretches that refill bursts.
fn fleet_arrivals(replicas: usize) -> impl Strategy<Value = Vec<(u64, usize)>> {
    let gap = prop_oneof![
        16 => 0..4 * MS,
        1 => 0..300 * MS,
        1 => 500 * MS..3000 * MS,
    ];
    prop::collection::vec((gap, 0..replicas), 500..4000).prop_map(|steps| {
        let mut t = 0u64;
        steps
            .into_iter()
            .map(|(gap, r)| {
                t += gap;
                (t, r)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_window_holds_across_the_fallback_and_the_heal(
        arrivals in fleet_arrivals(3),
        replicas in 1u32..=3,
        down_at in 0.0f64..1.0,
        outage in 0u64..4_000,
        lost in any::<bool>(),
        early in prop::collection::vec(0u64..5 * MS, 3),
        which in 0usize..3,
    ) {
        let plans = [
            Plan::new(&[Window::new(50, Duration::from_secs(1)).unwrap(),
                        Window::new(1000, Duration::from_secs(60)).unwrap()],
                      &PlanPolicy::default()).unwrap(),
            Plan::new(&[Window::new(5, Duration::from_secs(1)).unwrap(),
                        Window::new(20, Duration::from_secs(10)).unwrap()],
                      &PlanPolicy::default()).unwrap(),
            Plan::new(&[Window::new(12, Duration::from_millis(500)).unwrap()],
                      &PlanPolicy::default()).unwrap(),
        ];
        let plan = &plans[which];
        let arrivals: Vec<(u64, usize)> = arrivals
            .into_iter()
            .map(|(t, r)| (t, r % replicas as usize))
            .collect();
        let end = arrivals.last().map_or(0, |a| a.0);
        let down = (end as f64 * down_at) as u64;
        let heal = down + outage * MS + 10 * MS;
        let admitted = run(plan, replicas, &arrivals, down, heal, lost, &early);
        for f in plan.figures() {
            let seen = sim::max_in_any_interval(&admitted, f.span);
            prop_assert!(
                seen <= f.window.limit() as usize,
                "{} admitted within {:?} (replicas {}, down {} ms, heal {} ms, lost {}): {}",
                seen, f.span, replicas, down / MS, heal / MS, lost, plan
            );
        }
    }
}

#[test]
fn the_split_plan_is_the_share_and_never_faster_than_replicas_times_t() {
    let seed = Plan::new(
        &[
            Window::new(50, Duration::from_secs(1)).unwrap(),
            Window::new(1000, Duration::from_secs(60)).unwrap(),
        ],
        &PlanPolicy::default(),
    )
    .unwrap();
    for r in 1..=5 {
        let split = seed.split(r, DEFAULT_MIN_RATE_FRACTION).unwrap();
        assert!(split.emission_interval() >= seed.emission_interval() * r);
        for (f, w) in split.figures().iter().zip(seed.windows()) {
            assert_eq!(f.window.limit(), w.limit() / r);
            assert!(f.worst_case * r <= w.limit(), "{split}");
        }
    }
    let two = Plan::new(
        &[Window::new(2, Duration::from_secs(1)).unwrap()],
        &PlanPolicy::default(),
    )
    .unwrap();
    assert!(matches!(
        two.split(3, DEFAULT_MIN_RATE_FRACTION),
        Err(PlanError::Split { replicas: 3, .. })
    ));
}

#[test]
fn drain_leaves_one_period_to_the_next_admission() {
    use governor::clock::FakeRelativeClock;
    let plan = Plan::with_burst(
        &[Window::new(10, Duration::from_secs(1)).unwrap()],
        DEFAULT_MARGIN,
        4,
    )
    .unwrap();
    let clock = FakeRelativeClock::default();
    let q = LocalQuota::new(vec![KeySpec::new(plan.clone(), 0)], clock.clone());
    let key = QuotaKey::new(0);
    q.drain(key);
    assert!(q.check(key).is_err(), "nothing left now");
    clock.advance(plan.emission_interval() - Duration::from_nanos(1));
    assert!(q.check(key).is_err());
    clock.advance(Duration::from_nanos(1));
    assert!(q.check(key).is_ok(), "one period later");
    assert!(q.check(key).is_err());
}
