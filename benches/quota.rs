//! The quota engine's figures for the seed limits (`50/1s` and `1000/60s`,
//! margin 100 ms), printed as a table. Run: `cargo bench --bench quota`.
//!
//! Simulated parts run on governor's fake clock (deterministic); the cost of
//! a check is measured on the real clock.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use feishu_gateway::quota::{
    testing as sim, KeySpec, LocalQuota, Plan, PlanPolicy, QuotaKey, Window,
};
use governor::clock::{Clock, MonotonicClock};

/// Counts heap allocations, to show that a check allocates nothing.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ITERATIONS: u32 = 5_000_000;
const KEY: QuotaKey = QuotaKey::new(0);

fn windows(list: &[&str]) -> Vec<Window> {
    list.iter()
        .map(|s| s.parse().expect("valid window"))
        .collect()
}

/// ns per check and allocations per check, for `ITERATIONS` checks.
fn cost<C: Clock + Clone>(plan: Plan, clock: C, warm: u32) -> (f64, f64, f64) {
    let quota = LocalQuota::new(vec![KeySpec::new(plan, 0)], clock);
    for _ in 0..warm {
        let _ = black_box(quota.check(KEY));
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let mut admitted = 0u64;
    let start = Instant::now();
    for _ in 0..ITERATIONS {
        admitted += u64::from(black_box(quota.check(black_box(KEY))).is_ok());
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(ITERATIONS);
    let allocs = (ALLOCATIONS.load(Ordering::Relaxed) - allocations) as f64 / f64::from(ITERATIONS);
    (ns, allocs, admitted as f64 / f64::from(ITERATIONS))
}

fn main() {
    let seed = windows(&["50/1s", "1000/60s"]);
    let policy = PlanPolicy::default();
    let plan = Plan::new(&seed, &policy).expect("seed plan");

    println!(
        "quota engine, seed limits 50/1s + 1000/60s, margin {:?}",
        policy.margin
    );
    println!("plan: {plan}");
    println!();
    println!("trade-off (fastest safe period per burst):");
    println!(
        "  {:>5}  {:>11}  {:>9}  {:>9}",
        "burst", "t", "per 60s", "% of 1000"
    );
    for b in [1, 10, 20, 30, 32, 33, 34, 40, 50] {
        let p = Plan::with_burst(&seed, policy.margin, b).expect("burst within limits");
        let marker = if b == plan.burst() { "  <- chosen" } else { "" };
        println!(
            "  {:>5}  {:>8.3} ms  {:>9.1}  {:>8.2}%{marker}",
            b,
            p.emission_interval().as_secs_f64() * 1e3,
            p.figures()[1].sustained,
            100.0 * p.figures()[1].sustained_fraction(),
        );
    }

    let f = sim::figures(&plan);
    println!();
    println!("simulated (fake clock), overload = 1 request per ms:");
    println!("  {:<52} {:>10}", "measure", "value");
    let row = |name: &str, value: String| println!("  {name:<52} {value:>10}");
    row(
        "forwarded per 60 s, sustained (% of 1000)",
        format!("{:.1} ({:.2}%)", f.per_minute, f.per_minute / 10.0),
    );
    row(
        "forwarded in the first 60 s from idle",
        f.first_minute.to_string(),
    );
    row(
        "largest immediate burst after 1 s idle",
        f.burst_after_1s.to_string(),
    );
    row(
        "largest immediate burst after 60 s idle",
        f.burst_after_60s.to_string(),
    );
    row(
        "most admitted in any 1.1 s (limit 50)",
        f.worst[0].to_string(),
    );
    row(
        "most admitted in any 60.1 s (limit 1000)",
        f.worst[1].to_string(),
    );
    row(
        "violations at Feishu (arrival jitter 0..=100 ms)",
        f.violations.to_string(),
    );

    // Cost of one check on the real clock.
    let never_limited =
        Plan::with_burst(&windows(&["4000000000/1ms"]), Duration::ZERO, 1).expect("plan");
    let tokio_admit = cost(
        never_limited.clone(),
        feishu_gateway::quota::TokioClock,
        1000,
    );
    let tokio_reject = cost(plan.clone(), feishu_gateway::quota::TokioClock, 1000);
    let std_admit = cost(never_limited, MonotonicClock, 1000);
    let std_reject = cost(plan, MonotonicClock, 1000);
    println!();
    println!("cost of one check (real clock, {ITERATIONS} checks, one thread):");
    println!(
        "  {:<40} {:>8} {:>12} {:>9}",
        "path", "ns", "allocations", "admitted"
    );
    for (name, (ns, allocs, admitted)) in [
        ("admit, TokioClock (default)", tokio_admit),
        ("reject, TokioClock (default)", tokio_reject),
        ("admit, governor MonotonicClock", std_admit),
        ("reject, governor MonotonicClock", std_reject),
    ] {
        println!(
            "  {name:<40} {ns:>8.1} {allocs:>12} {:>8.2}%",
            100.0 * admitted
        );
    }
}
