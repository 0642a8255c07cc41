//! Property tests (fake clock, random arrival patterns) and wait-mode /
//! pause tests (tokio's paused clock) of the quota engine.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::testing::{self as sim, Sim};
use super::*;

fn windows(list: &[&str]) -> Vec<Window> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn seed_plan() -> Plan {
    Plan::new(&windows(&["50/1s", "1000/60s"]), &PlanPolicy::default()).unwrap()
}

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

/// Arrival times: groups of requests separated by idle gaps, including long
/// idles (a full minute window and more) followed by bursts.
fn arrivals() -> impl Strategy<Value = Vec<u64>> {
    let gap = prop_oneof![Just(0u64), 0..2 * SEC, 50 * SEC..130 * SEC,];
    let spacing = prop_oneof![Just(0u64), 0..5 * MS, 0..100 * MS, 0..2 * SEC];
    prop::collection::vec((gap, 1usize..120, spacing), 1..30).prop_map(|groups| {
        let (mut t, mut out) = (0u64, Vec::new());
        for (gap, n, spacing) in groups {
            t += gap;
            for _ in 0..n {
                out.push(t);
                t += spacing;
            }
        }
        out
    })
}

/// Every window holds at the gateway (W + margin) and at a simulated Feishu
/// that sees each admitted request up to `margin` later (W).
fn assert_windows_hold(plan: &Plan, admitted: &[u64], seed: u64) -> Result<(), TestCaseError> {
    let at_feishu = sim::jittered(admitted, plan.margin(), seed);
    for f in plan.figures() {
        let n = f.window.limit() as usize;
        let seen = sim::max_in_any_interval(admitted, f.span);
        prop_assert!(seen <= n, "{} admitted within {:?}: {}", seen, f.span, plan);
        prop_assert!(seen <= f.worst_case as usize);
        let refused = sim::violations(&at_feishu, f.window.limit(), f.window.period());
        prop_assert_eq!(refused, 0, "Feishu would refuse {} ({})", refused, plan);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn seed_limits_are_never_exceeded(times in arrivals(), seed in any::<u64>()) {
        let plan = seed_plan();
        let mut sim = Sim::new(plan.clone());
        for t in times {
            sim.arrive(t);
        }
        assert_windows_hold(&plan, &sim.admitted, seed)?;
    }

    #[test]
    fn any_windows_are_never_exceeded(
        limits in prop::collection::vec((1u32..120, 1u64..5_000), 1..4),
        margin_ms in 0u64..250,
        fraction in 0.3f64..=1.0,
        times in arrivals(),
        seed in any::<u64>(),
    ) {
        let ws: Vec<Window> = limits
            .iter()
            .map(|&(n, ms)| Window::new(n, Duration::from_millis(ms)).unwrap())
            .collect();
        let policy = PlanPolicy { margin: Duration::from_millis(margin_ms), min_rate_fraction: fraction };
        let plan = Plan::new(&ws, &policy).unwrap();
        prop_assert!(plan.rate_vs_best() >= fraction);
        for f in plan.figures() {
            prop_assert!(f.worst_case <= f.window.limit());
        }
        let mut sim = Sim::new(plan.clone());
        for t in times {
            sim.arrive(t);
        }
        assert_windows_hold(&plan, &sim.admitted, seed)?;
    }

    /// The planner's bound is tight: a burst then one request per `t`
    /// reaches `worst_case` for every window, and still holds.
    #[test]
    fn worst_case_is_reached_and_safe(
        limits in prop::collection::vec((1u32..60, 10u64..3_000), 1..3),
        margin_ms in 0u64..150,
    ) {
        let ws: Vec<Window> = limits
            .iter()
            .map(|&(n, ms)| Window::new(n, Duration::from_millis(ms)).unwrap())
            .collect();
        let policy = PlanPolicy { margin: Duration::from_millis(margin_ms), ..Default::default() };
        let plan = Plan::new(&ws, &policy).unwrap();
        let mut sim = Sim::new(plan.clone());
        let t = plan.emission_interval().as_nanos() as u64;
        let longest = plan.figures().iter().map(|f| f.span.as_nanos() as u64).max().unwrap();
        prop_assert_eq!(sim.burst_after(Duration::ZERO), plan.burst() as usize);
        for k in 1..=longest / t + 2 {
            prop_assert!(sim.arrive(k * t), "every slot is admitted on time");
            prop_assert!(!sim.arrive(k * t));
        }
        for f in plan.figures() {
            prop_assert_eq!(sim::max_in_any_interval(&sim.admitted, f.span), f.worst_case as usize);
        }
        assert_windows_hold(&plan, &sim.admitted, 1)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A client's share key in front of the app key, as the request path
    /// takes them (`proxy::keys::acquire`), on a fake clock: the share key
    /// first, then the app key, the share's slot given back when the app
    /// key refuses. Whatever the arrivals of the share's client and of the
    /// others, the client's forwarded requests keep the share's windows and
    /// the app's hold; and the share key refuses the client only when it
    /// has used its share with requests that were forwarded: a shadow key
    /// fed the forwarded requests alone is in the same state (nothing
    /// leaks, nothing is given twice).
    #[test]
    fn a_share_key_counts_only_what_the_app_key_let_through(
        share in 0.05f64..=0.9,
        times in arrivals(),
        mine in prop::collection::vec(any::<bool>(), 1..512),
        seed in any::<u64>(),
    ) {
        use governor::clock::FakeRelativeClock;
        let app_plan = seed_plan();
        let share = Share::from_fraction(share).unwrap();
        let share_plan = Plan::new(&share.scale_all(app_plan.windows()), &PlanPolicy::default()).unwrap();
        let clock = FakeRelativeClock::default();
        let (app, key, shadow) = (QuotaKey::new(0), QuotaKey::new(1), QuotaKey::new(2));
        let q = LocalQuota::new(
            vec![
                KeySpec::new(app_plan.clone(), 0),
                KeySpec::new(share_plan.clone(), 0),
                KeySpec::new(share_plan.clone(), 0),
            ],
            clock.clone(),
        );
        let (mut now, mut all, mut client) = (0u64, Vec::new(), Vec::new());
        for (i, t) in times.into_iter().enumerate() {
            clock.advance(Duration::from_nanos(t - now));
            now = t;
            if !mine[i % mine.len()] {
                if q.check(app).is_ok() {
                    all.push(t);
                }
                continue;
            }
            let shadow_would = q.snapshot(shadow).unwrap().remaining > 0;
            if q.check(key).is_err() {
                prop_assert!(!shadow_would, "refused by its share at {t} with share left");
                continue;
            }
            prop_assert!(shadow_would, "admitted by its share at {t} past it");
            if q.check(app).is_ok() {
                prop_assert!(q.check(shadow).is_ok());
                all.push(t);
                client.push(t);
            } else {
                q.give_back(key);
            }
        }
        assert_windows_hold(&app_plan, &all, seed)?;
        assert_windows_hold(&share_plan, &client, seed)?;
        for (f, w) in share_plan.figures().iter().zip(app_plan.windows()) {
            let n = (u64::from(w.limit()) * u64::from(share.ppm()) / 1_000_000) as usize;
            prop_assert!(sim::max_in_any_interval(&client, f.span) <= n.max(1));
        }
    }
}

#[test]
fn a_give_back_restores_one_slot_and_never_makes_more_than_the_burst() {
    use governor::clock::FakeRelativeClock;
    let plan = Plan::with_burst(&windows(&["5/1s"]), Duration::from_millis(100), 2).unwrap();
    let clock = FakeRelativeClock::default();
    let q = LocalQuota::new(vec![KeySpec::new(plan.clone(), 0)], clock.clone());
    let key = QuotaKey::new(0);
    // Fresh, and long idle: nothing to give back beyond the burst.
    q.give_back(key);
    clock.advance(Duration::from_secs(10));
    q.give_back(key);
    assert!(q.check(key).is_ok() && q.check(key).is_ok() && q.check(key).is_err());
    // The last admission given back: exactly one more now, not two.
    q.give_back(key);
    assert!(q.check(key).is_ok() && q.check(key).is_err());
    // Both given back: the whole burst again, no more.
    q.give_back(key);
    q.give_back(key);
    q.give_back(key);
    assert_eq!(q.snapshot(key).unwrap().remaining, 2);
    assert!(q.check(key).is_ok() && q.check(key).is_ok() && q.check(key).is_err());
}

#[test]
fn seed_limits_meet_the_targets() {
    let plan = seed_plan();
    let f = sim::figures(&plan);
    assert!(f.per_minute >= 965.0, "{f:?}");
    assert!(f.burst_after_60s >= 30, "{f:?}");
    assert_eq!(f.burst_after_60s, plan.burst() as usize);
    assert_eq!(f.violations, 0);
    assert_eq!(f.worst, vec![50, 1000]);
}

#[test]
fn a_rejection_spends_nothing() {
    let plan = Plan::with_burst(&windows(&["5/1s"]), Duration::from_millis(100), 2).unwrap();
    let t = plan.emission_interval().as_nanos() as u64;
    let mut sim = Sim::new(plan);
    assert!(sim.arrive(0) && sim.arrive(0) && !sim.arrive(0));
    for i in 0..1000 {
        assert!(!sim.arrive(i * (t / 1000)));
    }
    assert!(sim.arrive(t), "the next slot is still free");
}

fn engine(plan: Plan, max_waiters: u32) -> Arc<LocalQuota> {
    Arc::new(LocalQuota::with_tokio_clock(vec![KeySpec::new(
        plan,
        max_waiters,
    )]))
}

const KEY: QuotaKey = QuotaKey::new(0);

/// Lets spawned tasks run until they block (the runtime is single-threaded).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order_and_within_the_windows() {
    let plan = seed_plan();
    let t = plan.emission_interval();
    let quota = engine(plan.clone(), 200);
    let start = Instant::now();
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..120 {
        let (quota, served) = (quota.clone(), served.clone());
        tasks.push(tokio::spawn(async move {
            let admit = quota
                .acquire(KEY, Overflow::Wait(Duration::from_secs(10)))
                .await
                .unwrap();
            served.lock().unwrap().push((i, Instant::now(), admit));
        }));
        settle().await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    let served = served.lock().unwrap();
    let order: Vec<usize> = served.iter().map(|s| s.0).collect();
    assert_eq!(order, (0..120).collect::<Vec<_>>(), "FIFO");
    let times: Vec<u64> = served
        .iter()
        .map(|s| (s.1 - start).as_nanos() as u64)
        .collect();
    assert!(
        times[..33].iter().all(|&t| t == 0),
        "the burst goes at once"
    );
    let last = Duration::from_nanos(*times.last().unwrap());
    assert!(
        last >= t * 87 && last <= t * 87 + Duration::from_millis(90),
        "{last:?}"
    );
    assert_eq!(served[119].2.waited, last);
    for f in plan.figures() {
        assert!(sim::max_in_any_interval(&times, f.span) <= f.window.limit() as usize);
    }
    assert_eq!(quota.snapshot(KEY).unwrap().waiters, 0);
}

#[tokio::test(start_paused = true)]
async fn a_wait_that_cannot_finish_in_time_gives_up_at_once_and_spends_nothing() {
    // One request per 220 ms, burst 1.
    let plan = Plan::with_burst(&windows(&["5/1s"]), Duration::from_millis(100), 1).unwrap();
    let t = plan.emission_interval();
    let quota = engine(plan, 8);
    let start = Instant::now();
    assert!(quota.check(KEY).is_ok());
    let no = quota
        .acquire(KEY, Overflow::Wait(Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert_eq!(no.cause(), Cause::WaitTooLong);
    assert_eq!(Instant::now(), start, "rejected at once");
    assert_eq!(no.retry_after(), t);
    let snapshot = quota.snapshot(KEY).unwrap();
    assert_eq!((snapshot.remaining, snapshot.next_in), (0, t));

    // A waiter that fits goes exactly at the next slot.
    let yes = quota
        .acquire(KEY, Overflow::Wait(Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(
        yes.waited >= t && yes.waited < t + Duration::from_millis(2),
        "{yes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_queued_waiter_times_out_without_spending() {
    let plan = Plan::with_burst(&windows(&["5/1s"]), Duration::from_millis(100), 1).unwrap();
    let t = plan.emission_interval();
    let quota = engine(plan, 8);
    let start = Instant::now();
    assert!(quota.check(KEY).is_ok());
    let head = tokio::spawn({
        let quota = quota.clone();
        async move {
            quota
                .acquire(KEY, Overflow::Wait(Duration::from_secs(10)))
                .await
        }
    });
    settle().await;
    // Behind the head: the estimate (2 t = 440 ms) fits in 500 ms ...
    let second = tokio::spawn({
        let quota = quota.clone();
        async move {
            quota
                .acquire(KEY, Overflow::Wait(Duration::from_millis(500)))
                .await
        }
    });
    settle().await;
    assert_eq!(quota.snapshot(KEY).unwrap().waiters, 2);
    // ... but Feishu throttles us meanwhile: the head waits out the pause.
    quota.pause(KEY, Duration::from_secs(2));
    let no = second.await.unwrap().unwrap_err();
    assert_eq!(no.cause(), Cause::WaitTooLong);
    assert_eq!(no.limit(), Limit::UpstreamPause);
    assert_eq!(Instant::now() - start, Duration::from_millis(500));
    let admit = head.await.unwrap().unwrap();
    assert_eq!(admit.waited, Duration::from_secs(2));
    // Only the head was spent: the next slot is one period later.
    assert_eq!(quota.snapshot(KEY).unwrap().next_in, t);
}

#[tokio::test(start_paused = true)]
async fn the_wait_queue_is_bounded_and_blocks_reject_mode() {
    let plan = Plan::with_burst(&windows(&["5/1s"]), Duration::from_millis(100), 1).unwrap();
    let quota = engine(plan, 3);
    assert!(quota.check(KEY).is_ok());
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let quota = quota.clone();
        waiting.push(tokio::spawn(async move {
            quota
                .acquire(KEY, Overflow::Wait(Duration::from_secs(60)))
                .await
        }));
        settle().await;
    }
    assert_eq!(quota.snapshot(KEY).unwrap().waiters, 3);
    let start = Instant::now();
    let full = quota
        .acquire(KEY, Overflow::Wait(Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert_eq!(full.cause(), Cause::QueueFull);
    assert_eq!(Instant::now(), start);
    // The queue is first in line: reject mode is refused even at a free slot.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let queued = quota.check(KEY).unwrap_err();
    assert_eq!(queued.cause(), Cause::Limited);
    assert!(
        queued.retry_after() > Duration::from_millis(400),
        "{queued}"
    );
    for w in waiting {
        assert!(w.await.unwrap().is_ok());
    }
    assert_eq!(quota.snapshot(KEY).unwrap().waiters, 0);
    // Waiting disabled: a spec with max_waiters 0 rejects at once.
    let none = engine(
        Plan::with_burst(&windows(&["1/1s"]), Duration::ZERO, 1).unwrap(),
        0,
    );
    assert!(none.check(KEY).is_ok());
    let no = none
        .acquire(KEY, Overflow::Wait(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(no.cause(), Cause::QueueFull);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_leaves_the_queue() {
    let plan = Plan::with_burst(&windows(&["5/1s"]), Duration::from_millis(100), 1).unwrap();
    let t = plan.emission_interval();
    let quota = engine(plan, 3);
    assert!(quota.check(KEY).is_ok());
    let waiter = tokio::spawn({
        let quota = quota.clone();
        async move {
            quota
                .acquire(KEY, Overflow::Wait(Duration::from_secs(60)))
                .await
        }
    });
    settle().await;
    assert_eq!(quota.snapshot(KEY).unwrap().waiters, 1);
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(quota.snapshot(KEY).unwrap().waiters, 0);
    tokio::time::sleep(t).await;
    assert!(
        quota.check(KEY).is_ok(),
        "nothing was spent by the dropped waiter"
    );
}

#[tokio::test(start_paused = true)]
async fn an_upstream_pause_rejects_or_holds_until_it_ends() {
    let quota = engine(seed_plan(), 8);
    let start = Instant::now();
    let ok = quota.check(KEY).unwrap();
    assert_eq!(ok.remaining, 32);
    quota.pause(KEY, Duration::from_millis(1500));
    quota.pause(KEY, Duration::from_millis(500)); // never shortens
    let no = quota.check(KEY).unwrap_err();
    assert_eq!(
        (no.cause(), no.limit(), no.label()),
        (Cause::Limited, Limit::UpstreamPause, "upstream-pause")
    );
    assert_eq!(
        (no.retry_after(), no.reset_secs(), no.limit_value()),
        (Duration::from_millis(1500), 2, 50)
    );
    assert_eq!(no.ratelimit(), r#""50/1s";r=0;t=2"#);
    assert_eq!(
        no.ratelimit_policy(),
        r#""50/1s";q=50;w=1, "1000/60s";q=1000;w=60"#
    );
    let snapshot = quota.snapshot(KEY).unwrap();
    assert_eq!(
        (snapshot.remaining, snapshot.paused_for),
        (0, Duration::from_millis(1500))
    );
    // Too short a wait gives up at once; a long enough one goes when it ends.
    let short = quota
        .acquire(KEY, Overflow::Wait(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!((short.cause(), Instant::now()), (Cause::WaitTooLong, start));
    let admit = quota
        .acquire(KEY, Overflow::Wait(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(admit.waited, Duration::from_millis(1500));
    assert!(quota.check(KEY).is_ok());
    let snapshot = quota.snapshot(KEY).unwrap();
    assert_eq!(
        (snapshot.paused_for, snapshot.remaining),
        (Duration::ZERO, 31)
    );
    assert_eq!(snapshot.ratelimit(), r#""50/1s";r=31;t=1"#);
}

#[tokio::test(start_paused = true)]
async fn reject_mode_reports_the_window_and_the_next_slot() {
    let plan = seed_plan();
    let quota = engine(plan.clone(), 8);
    for i in (0..33).rev() {
        assert_eq!(quota.check(KEY).unwrap().remaining, i);
    }
    let no = quota.check(KEY).unwrap_err();
    assert_eq!(
        (no.cause(), no.label(), no.limit_value(), no.reset_secs()),
        (Cause::Limited, "50/1s", 50, 1)
    );
    assert_eq!(no.retry_after(), plan.emission_interval());
    assert_eq!(no.limit(), Limit::Window("50/1s".parse().unwrap()));
}

#[tokio::test(start_paused = true)]
async fn a_zero_pause_changes_nothing_and_a_snapshot_follows_admissions() {
    fn assert_send<T: Send>(t: T) -> T {
        t
    }
    let quota = engine(seed_plan(), 8);
    quota.pause(KEY, Duration::ZERO);
    let ok = assert_send(quota.acquire(KEY, Overflow::Reject))
        .await
        .is_ok();
    let snapshot = quota.snapshot(KEY);
    assert!(ok);
    assert_eq!(snapshot.unwrap().remaining, 32);
    assert_eq!(quota.keys().collect::<Vec<_>>(), vec![KEY]);
    assert_eq!(quota.spec(KEY).unwrap().max_waiters(), 8);
}
