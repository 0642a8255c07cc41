//! Quotas shared by several gateway replicas through Redis, against a real
//! `redis-server` each test starts on a free port (no persistence) and kills
//! at the end, and the simulated Feishu counting violations at arrival: the
//! Redis engine's script, fallback and heal; replicas through sockets
//! admitting one quota between them, in every fail mode; two clients of
//! one app, one held to a `quota_share`, on two replicas; the `[quota]`
//! Redis keys; the Kubernetes example.
//!
//! Without `redis-server` on PATH the tests are skipped with a note, except
//! under `CI=true`, where they fail (`deploy/ci-install-redis.sh` installs
//! it).

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use feishu_gateway::redis_connection::RedisTarget;
use http::StatusCode;
use support::config::Client;
use support::config::{Quota, QuotaFail, QuotaOverflow};
use support::fleet::{fleet, ok_count, seed_curve};
use support::redis_server::{redis_or_skip, RedisServer};
use support::shares::{check_shares, flood_shares, max_at_feishu, share_plan};
use support::shares::{BATCH_KEY, BATCH_PATH, BILLING_PATH};
use support::tools::promtool_check_metrics;
use support::*;

// ----- engines without a gateway -------------------------------------------

fn windows(list: &[&str]) -> Vec<Window> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn plan(list: &[&str]) -> Plan {
    Plan::new(&windows(list), &PlanPolicy::default()).unwrap()
}

/// An engine on one key, once its first probe has connected.
async fn engine(redis: &RedisServer, plan: Plan, fail: FailMode) -> RedisQuota {
    let spec = KeySpec::new(plan, 16).with_name("cli_x:POST /open-apis/x");
    // A generous timeout: these tests are about the script and the
    // switches, not about riding out a loaded machine's stalls.
    let settings = redis.settings(fail, 2, Duration::from_secs(1));
    let q = RedisQuota::new(&settings, vec![spec], None).expect("engine");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !q.is_settled() {
        assert!(Instant::now() < deadline, "first probe");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    q
}

const KEY: QuotaKey = QuotaKey::new(0);

/// Calls `acquire` every 5 ms for `d`: how many it admitted, and how long
/// that took.
async fn admitted_during<F, Fut>(d: Duration, mut acquire: F) -> (u32, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < d {
        if acquire().await {
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (n, started.elapsed())
}

/// Probes every 50 ms until `q` shares its quotas through Redis again,
/// failing after `limit`.
async fn healed(q: &RedisQuota, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !q.is_shared() {
        assert!(Instant::now() < deadline, "{:?}", q.status());
        q.probe_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn redis_time_us(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let (s, us): (i64, i64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    s * 1_000_000 + us
}

#[tokio::test]
async fn the_script_on_first_use_stores_server_time_with_a_ttl_and_idle_keys_expire() {
    let redis = redis_or_skip!();
    let p = plan(&["5/1s", "20/10s"]);
    assert_eq!(p.burst(), 1);
    let q = engine(&redis, p.clone(), FailMode::Closed).await;
    let (tat_key, pause_key) = q.redis_keys(KEY).unwrap();
    let (tat_key, pause_key) = (tat_key.to_string(), pause_key.to_string());
    assert_eq!(tat_key, "t:quota:{cli_x:POST /open-apis/x}:tat");
    let mut c = redis.conn().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(&tat_key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!exists, "nothing stored before the first use");

    // First use: admitted at once, stores tat = Redis TIME + t, with a TTL.
    let before = redis_time_us(&mut c).await;
    let admit = q.acquire(KEY, Overflow::Reject).await.unwrap();
    let after = redis_time_us(&mut c).await;
    assert_eq!(admit.remaining, 0, "burst 1");
    let tat: i64 = redis::cmd("GET")
        .arg(&tat_key)
        .query_async(&mut c)
        .await
        .unwrap();
    let t_us = p.emission_interval().as_micros() as i64;
    assert!(
        tat > before + t_us && tat <= after + t_us + 2,
        "tat {tat} is Redis time + t ({before}..{after} + {t_us})"
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&tat_key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        pttl > 0 && pttl <= t_us / 1000 + 1,
        "TTL {pttl} ms, until the tat passes"
    );

    // Over the limit: rejected, nothing stored, the retry time is the slot.
    let r = q.acquire(KEY, Overflow::Reject).await.unwrap_err();
    assert_eq!(r.cause(), Cause::Limited);
    assert!(r.retry_after() <= p.emission_interval() && r.retry_after() > Duration::ZERO);
    let tat2: i64 = redis::cmd("GET")
        .arg(&tat_key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(tat, tat2, "a rejection spends nothing");

    // Idle: the key expires (memory stays bounded), and a fresh burst is
    // exactly what an expired key means.
    tokio::time::sleep(p.emission_interval() + Duration::from_millis(50)).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(&tat_key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!exists, "idle key expired");
    assert!(q.acquire(KEY, Overflow::Reject).await.is_ok());

    // A pause is a key with a TTL too, and shared: a second engine (another
    // replica) sees it.
    assert!(q.pause_shared(KEY, Duration::from_secs(2)).await);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&pause_key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((1900..=2001).contains(&pttl), "pause TTL {pttl}");
    let other = engine(&redis, p.clone(), FailMode::Closed).await;
    let r = other.acquire(KEY, Overflow::Reject).await.unwrap_err();
    assert_eq!(r.limit(), Limit::UpstreamPause);
    assert!(r.retry_after() > Duration::from_secs(1));
    // A shorter pause never shortens it.
    assert!(other.pause_shared(KEY, Duration::from_millis(100)).await);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&pause_key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(pttl > 1000, "still {pttl}");
    let snap = other.snapshot(KEY).await.unwrap();
    assert_eq!(snap.remaining, 0);
    assert!(snap.paused_for > Duration::from_secs(1));
}

#[tokio::test]
async fn the_burst_and_rate_are_the_local_plans_and_noscript_reloads() {
    let redis = redis_or_skip!();
    let p = plan(&["50/1s", "1000/60s"]);
    assert_eq!(p.burst(), 33);
    let q = engine(&redis, p.clone(), FailMode::Closed).await;
    let snap = q.snapshot(KEY).await.unwrap();
    assert_eq!(snap.remaining, 33, "a fresh key offers the whole burst");
    let started = Instant::now();
    let mut admitted = 0;
    for _ in 0..40 {
        if q.acquire(KEY, Overflow::Reject).await.is_ok() {
            admitted += 1;
        }
    }
    // The burst, and one more per period the loop took (a loaded machine).
    let refilled = (started.elapsed().as_secs_f64() / p.emission_interval().as_secs_f64()) as usize;
    assert!(
        (33..=33 + refilled).contains(&admitted),
        "{admitted}, refilled {refilled}"
    );
    // The script cache is flushed (as by a restart with persistence):
    // EVALSHA answers NOSCRIPT and the engine reloads it, still shared.
    let mut c = redis.conn().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    tokio::time::sleep(p.emission_interval()).await;
    assert!(q.acquire(KEY, Overflow::Reject).await.is_ok());
    assert!(q.is_shared());
    // Wait mode reserves the next slots in order, one period apart: from a
    // moment the key is known to be over the limit, the third waiter goes
    // two periods after the first slot at the earliest.
    let over = loop {
        let before = Instant::now();
        if q.acquire(KEY, Overflow::Reject).await.is_err() {
            break before;
        }
    };
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            q.acquire(KEY, Overflow::Wait(Duration::from_secs(3)))
                .await
                .map(|_| Instant::now())
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap().expect("admitted within 3 s"));
    }
    let last = done.iter().max().unwrap().duration_since(over);
    let t = p.emission_interval();
    assert!(last + Duration::from_millis(20) >= 2 * t, "{last:?}");
    // A wait allowance shorter than the next slot is refused at once,
    // spending nothing.
    let r = q
        .acquire(KEY, Overflow::Wait(Duration::from_millis(1)))
        .await
        .unwrap_err();
    assert_eq!(r.cause(), Cause::WaitTooLong);
}

/// Two replicas whose clocks disagree by an hour share a key exactly: no
/// decision uses the caller's clock (the script reads Redis `TIME`).
#[test]
fn a_replica_with_a_skewed_clock_shares_the_quota_exactly() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(redis) = rt.block_on(async { RedisServer::start() }) else {
        return;
    };
    let p = plan(&["5/1s", "20/10s"]);
    let t = p.emission_interval();
    let redis = Arc::new(redis);

    // Replica B runs on its own thread and runtime, its clock an hour ahead.
    let (to_b, mut b_gets) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (b_says, from_b) = tokio::sync::mpsc::unbounded_channel::<Result<(), Duration>>();
    let b_redis = Arc::clone(&redis);
    let b_plan = p.clone();
    let b = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            tokio::time::advance(Duration::from_secs(3600)).await;
            tokio::time::resume();
            let skewed = tokio::time::Instant::now();
            assert!(skewed.elapsed() < Duration::from_secs(1));
            let q = engine(&b_redis, b_plan, FailMode::Closed).await;
            while b_gets.recv().await.is_some() {
                let r = q
                    .acquire(KEY, Overflow::Reject)
                    .await
                    .map(|_| ())
                    .map_err(|r| r.retry_after());
                b_says.send(r).unwrap();
            }
        });
    });

    rt.block_on(async move {
        let a = engine(&redis, p.clone(), FailMode::Closed).await;
        let mut from_b = from_b;
        macro_rules! ask_b {
            () => {{
                to_b.send(()).unwrap();
                from_b.recv().await.unwrap()
            }};
        }
        // A takes the burst (1); B, an hour "later", is still refused, and
        // told the same slot.
        assert!(a.acquire(KEY, Overflow::Reject).await.is_ok());
        let wait = ask_b!().unwrap_err();
        assert!(wait > Duration::ZERO && wait <= t, "{wait:?}");
        // Taking turns, one slot per period goes to whoever asks first.
        tokio::time::sleep(wait).await;
        assert!(ask_b!().is_ok());
        let r = a.acquire(KEY, Overflow::Reject).await.unwrap_err();
        assert!(r.retry_after() > Duration::ZERO && r.retry_after() <= t);
        tokio::time::sleep(r.retry_after()).await;
        assert!(a.acquire(KEY, Overflow::Reject).await.is_ok());
        assert!(ask_b!().is_err());
        drop(to_b);
    });
    b.join().unwrap();
}

#[tokio::test]
async fn fallback_is_the_replicas_share_started_empty_and_heals_back() {
    let mut redis = redis_or_skip!();
    let p = plan(&["50/1s", "1000/60s"]);
    let q = engine(&redis, p.clone(), FailMode::Local).await;
    assert!(q.acquire(KEY, Overflow::Reject).await.is_ok());
    redis.kill();
    // The first failure switches to the local share, drained: nothing
    // more right now, then one per (2 x t) at most.
    let r = q.acquire(KEY, Overflow::Reject).await.unwrap_err();
    assert_eq!(r.cause(), Cause::Limited);
    assert_eq!(r.limit_value(), 50, "rejections report the fleet's limit");
    assert!(!q.is_shared());
    assert_eq!(q.status().state, "degraded");
    assert!(q.status().last_error.is_some());
    let split = p.split(2, PlanPolicy::default().min_rate_fraction).unwrap();
    assert!(split.emission_interval() >= 2 * p.emission_interval());
    let (n, took) = admitted_during(Duration::from_secs(1), || async {
        q.acquire(KEY, Overflow::Reject).await.is_ok()
    })
    .await;
    let most = (took.as_secs_f64() / split.emission_interval().as_secs_f64()) as u32 + 1;
    assert!(n >= 1 && n <= most, "{n} in 1 s, at most {most}");

    // Redis is back: the probe joins the fleet's heal time, drains the key,
    // and the engine switches back.
    redis.restart();
    healed(&q, Duration::from_secs(5)).await;
    // Drained from the heal on: the lost state gives no fresh burst, only
    // the shared rate.
    let snap = q.snapshot(KEY).await.unwrap();
    assert!(snap.remaining < 5, "no fresh burst of 33: {snap:?}");
    let (n, took) = admitted_during(Duration::from_millis(600), || async {
        q.acquire(KEY, Overflow::Reject).await.is_ok()
    })
    .await;
    let most =
        snap.remaining + (took.as_secs_f64() / p.emission_interval().as_secs_f64()) as u32 + 1;
    assert!(n <= most, "{n} in 600 ms after the heal, at most {most}");
}

/// A scope (a store app's tenant) gets keys of its own with the engine's
/// limits, shared by every replica under the same name, decided by the
/// engine's fail mode with a fallback of its own, and drained after a heal
/// although the heal never saw it.
#[tokio::test]
async fn a_scope_has_keys_of_its_own_with_the_engines_limits_fail_mode_and_heal() {
    let mut redis = redis_or_skip!();
    let p = plan(&["50/1s", "1000/60s"]);
    let q = engine(&redis, p.clone(), FailMode::Local).await;
    let a = q.scope("tenant_a", &[KEY]).unwrap();
    assert_eq!(a.key_name(KEY), Some("tenant_a@cli_x:POST /open-apis/x"));
    assert_eq!(
        a.redis_keys(KEY).unwrap(),
        (
            "t:quota:{tenant_a@cli_x:POST /open-apis/x}:tat",
            "t:quota:{tenant_a@cli_x:POST /open-apis/x}:pause"
        )
    );
    assert!(q.scope("x", &[QuotaKey::new(7)]).is_err());

    // The engine's key spent: the scope's is untouched.
    for _ in 0..p.burst() {
        q.acquire(KEY, Overflow::Reject).await.unwrap();
    }
    assert!(q.acquire(KEY, Overflow::Reject).await.is_err());
    assert_eq!(a.snapshot(KEY).await.unwrap().remaining, p.burst());
    // The same scope on another replica is the same quota.
    let other = engine(&redis, p.clone(), FailMode::Local).await;
    let a2 = other.scope("tenant_a", &[KEY]).unwrap();
    for i in 0..p.burst() {
        let s = if i % 2 == 0 { &a } else { &a2 };
        s.acquire(KEY, Overflow::Reject).await.unwrap();
    }
    assert!(a.acquire(KEY, Overflow::Reject).await.is_err());
    assert!(a2.acquire(KEY, Overflow::Reject).await.is_err());
    // A pause of the scope's key is the scope's only.
    assert!(a.pause_shared(KEY, Duration::from_secs(2)).await);
    let r = a2.acquire(KEY, Overflow::Reject).await.unwrap_err();
    assert_eq!(r.limit(), Limit::UpstreamPause);
    let b = q.scope("tenant_b", &[KEY]).unwrap();
    assert!(b.acquire(KEY, Overflow::Reject).await.is_ok());

    // Redis gone: the scope falls back to its own share, drained.
    redis.kill();
    let fresh = q.scope("tenant_c", &[KEY]).unwrap();
    let r = fresh.acquire(KEY, Overflow::Reject).await.unwrap_err();
    assert_eq!(r.cause(), Cause::Limited, "drained: {r}");
    assert_eq!(r.limit_value(), 50, "rejections report the fleet's limit");
    assert!(!q.is_shared());
    let split = p.split(2, PlanPolicy::default().min_rate_fraction).unwrap();
    let (n, took) = admitted_during(Duration::from_secs(1), || async {
        fresh.acquire(KEY, Overflow::Reject).await.is_ok()
    })
    .await;
    let most = (took.as_secs_f64() / split.emission_interval().as_secs_f64()) as u32 + 1;
    assert!(n >= 1 && n <= most, "{n} in 1 s, at most {most}");

    // Redis is back, empty. A scope's keys were not drained by the heal
    // (it knows only the engine's), yet give no fresh burst: every call
    // floors them at the heal's drain.
    redis.restart();
    healed(&q, Duration::from_secs(10)).await;
    let late = q.scope("tenant_d", &[KEY]).unwrap();
    for s in [&fresh, &late] {
        let snap = s.snapshot(KEY).await.unwrap();
        assert!(snap.remaining < 5, "no fresh burst of 33: {snap:?}");
    }
    let (n, took) = admitted_during(Duration::from_millis(600), || async {
        late.acquire(KEY, Overflow::Reject).await.is_ok()
    })
    .await;
    let most = (took.as_secs_f64() / p.emission_interval().as_secs_f64()) as u32 + 5;
    assert!(n <= most, "{n} in 600 ms after the heal, at most {most}");
}

/// A key gives an admission back (a client's share key, when the app key
/// refused the request after it): its `tat` goes back one period in Redis,
/// for every replica; given back past "now", the key is fresh again (its
/// burst, no more).
#[tokio::test]
async fn a_given_back_admission_is_one_period_of_tat_and_never_more_than_the_burst() {
    let redis = redis_or_skip!();
    let p = plan(&["5/1s", "20/10s"]);
    let q = engine(&redis, p.clone(), FailMode::Closed).await;
    let key = q
        .key(&KeySpec::new(p.clone(), 4).with_name("cli_x:POST /open-apis/x#share=batch"))
        .unwrap();
    let (tat_key, _) = key.redis_keys(KEY).unwrap();
    assert_eq!(tat_key, "t:quota:{cli_x:POST /open-apis/x#share=batch}:tat");
    let tat_key = tat_key.to_string();
    let c = redis.conn().await;
    let tat = || {
        let mut c = c.clone();
        let k = tat_key.clone();
        async move {
            let v: Option<i64> = redis::cmd("GET").arg(&k).query_async(&mut c).await.unwrap();
            v
        }
    };
    // Nothing to give back on a fresh key: it stays absent.
    key.give_back(KEY).await;
    assert_eq!(tat().await, None);
    // Two admissions (burst 1: the second is refused), then one given back:
    // admitted again at once, and tat is where the first left it.
    assert_eq!(p.burst(), 1);
    assert!(key.acquire(KEY, Overflow::Reject).await.is_ok());
    let after_one = tat().await.unwrap();
    assert!(key.acquire(KEY, Overflow::Reject).await.is_err());
    key.give_back(KEY).await;
    assert_eq!(tat().await, None, "given back to before now: fresh");
    assert!(key.acquire(KEY, Overflow::Reject).await.is_ok());
    assert!(key.acquire(KEY, Overflow::Reject).await.is_err());
    let now_tat = tat().await.unwrap();
    assert!(now_tat >= after_one);
    // In wait mode a slot ahead is reserved; giving it back moves tat one
    // period (in whole µs, as the script counts) back.
    let waited = key
        .acquire(KEY, Overflow::Wait(Duration::from_secs(2)))
        .await;
    assert!(waited.is_ok());
    let reserved = tat().await.unwrap();
    key.give_back(KEY).await;
    let t_us = (p.emission_interval().as_nanos() as i64).div_euclid(1000) + 2;
    let back = tat().await;
    assert!(
        back.is_none_or(|b| reserved - b == t_us),
        "{reserved} - {back:?} = one period ({t_us} µs)"
    );
}

#[tokio::test]
async fn closed_and_open_when_redis_is_gone() {
    let mut redis = redis_or_skip!();
    let p = plan(&["5/1s"]);
    let closed = engine(&redis, p.clone(), FailMode::Closed).await;
    let open = engine(&redis, p.clone(), FailMode::Open).await;
    redis.kill();
    let r = closed.acquire(KEY, Overflow::Reject).await.unwrap_err();
    assert_eq!(r.cause(), Cause::BackendUnavailable);
    let r = closed
        .acquire(KEY, Overflow::Wait(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(r.cause(), Cause::BackendUnavailable);
    for _ in 0..20 {
        assert!(open.acquire(KEY, Overflow::Reject).await.is_ok());
    }
    // A pause still holds on the replica that saw it.
    open.pause(KEY, Duration::from_secs(5));
    let r = open.acquire(KEY, Overflow::Reject).await.unwrap_err();
    assert_eq!(r.limit(), Limit::UpstreamPause);
}

// ----- replicas through sockets ----------------------------------------------

/// `[quota]` on `redis` for `replicas` replicas, failing as `fail` says.
fn redis_quota(redis: &RedisServer, fail: QuotaFail, replicas: u32) -> Quota {
    Quota::redis(&redis.url()).fail(fail).replicas(replicas)
}

/// `promtool check metrics` accepts the exposition (when promtool is
/// installed; tests/deploy.rs requires it under CI).
fn promtool_accepts(exposition: &str) {
    if let Some((ok, out)) = promtool_check_metrics(exposition) {
        assert!(ok, "promtool check metrics:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_flooded_in_reject_mode_forward_one_quota() {
    let redis = redis_or_skip!();
    let f = Arc::new(
        fleet(3, sim_config(), |c| {
            c.quota(redis_quota(&redis, QuotaFail::Local, 3))
        })
        .await,
    );
    for i in 0..3 {
        assert_eq!(f.quota_state(i).await, "shared");
    }
    let started = Instant::now();
    let answers = f.flood(3, started + Duration::from_secs(4), &[]).await;
    let took = started.elapsed();
    let ok = ok_count(&answers);
    assert!(answers
        .iter()
        .all(|a| a.0 == StatusCode::OK || a.0 == StatusCode::TOO_MANY_REQUESTS));
    f.check_feishu_saw_no_violation();
    assert_eq!(f.sim.requests().len(), ok, "rejected requests never left");
    // The fleet forwards what ONE gateway would (the same plan, shared):
    // the burst and then one per t, within a few requests of the curve.
    // A call that timed out may have taken its slot in Redis (the answer
    // came too late to use): count those as spent.
    let curve = seed_curve(took);
    let mut late = 0.0;
    for i in 0..3 {
        late += metric_value(
            &f.metrics(i).await,
            r#"feishu_gateway_quota_backend_errors_total{kind="timeout"}"#,
        )
        .unwrap_or(0.0);
    }
    assert!(
        ok + late as usize + 4 >= curve && ok <= curve + 1,
        "forwarded {ok} ({late} calls timed out), the plan allows {curve} in {took:?}"
    );
    // Each replica took part, and every 429 spent nothing.
    for i in 0..3 {
        let m = f.metrics(i).await;
        assert!(m.contains("feishu_gateway_quota_backend_up 1"), "{m}");
        assert!(m.contains(r#"feishu_gateway_quota_backend_info{backend="redis",fail="local"} 1"#));
        assert!(m.contains(r#"feishu_gateway_quota_backend_duration_seconds_count{op="take"}"#));
    }
}

#[tokio::test]
async fn three_replicas_in_wait_mode_serve_a_burst_in_order() {
    let redis = redis_or_skip!();
    let quota = redis_quota(&redis, QuotaFail::Local, 3)
        .overflow(QuotaOverflow::Wait)
        .max_wait(Duration::from_secs(20));
    let f = Arc::new(fleet(3, sim_config(), |c| c.quota(quota)).await);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..120 {
        let f = Arc::clone(&f);
        tasks.push(tokio::spawn(async move {
            put_at(&f.client, f.gws[n % 3].addr(), PUT_PATH, &[]).await
        }));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!((a.status, a.code()), (StatusCode::OK, 0));
    }
    let took = started.elapsed();
    f.check_feishu_saw_no_violation();
    // 33 at once, then one per 62 ms: ~5.4 s for 120, like one gateway.
    assert!(took >= Duration::from_secs(4), "too fast: {took:?}");
    assert!(took <= Duration::from_secs(20), "too slow: {took:?}");
}

#[tokio::test]
async fn feishus_429_on_one_replica_pauses_the_key_on_all() {
    let redis = redis_or_skip!();
    let f = fleet(2, sim_config(), |c| {
        c.quota(redis_quota(&redis, QuotaFail::Local, 2))
    })
    .await;
    f.sim
        .answer_next_with_code(99991400, StatusCode::TOO_MANY_REQUESTS, 1);
    let a = put_at(&f.client, f.gws[0].addr(), PUT_PATH, &[]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(a.header("x-gateway-error").is_none(), "Feishu's own answer");
    // The other replica refuses without asking Feishu.
    wait_for(Duration::from_secs(2), || async {
        let b = put_at(&f.client, f.gws[1].addr(), PUT_PATH, &[]).await;
        b.status == StatusCode::TOO_MANY_REQUESTS
            && b.header("x-gateway-error") == Some("rate-limited")
    })
    .await;
    assert_eq!(f.sim.requests().len(), 1);
    let m = f.metrics(1).await;
    assert!(m.contains(r#"reason="upstream-pause""#), "{m}");
}

/// Redis dies in the middle of a flood and comes back empty: the replicas
/// fall back to their share, then return to shared limiting, and Feishu
/// never sees a violation; no request waits on the dead Redis.
#[tokio::test]
async fn redis_killed_mid_run_fail_local_falls_back_and_returns() {
    let mut redis = redis_or_skip!();
    let f = Arc::new(
        fleet(2, sim_config(), |c| {
            c.quota(redis_quota(&redis, QuotaFail::Local, 2))
        })
        .await,
    );
    let t0 = Instant::now();
    let flood = {
        let f = Arc::clone(&f);
        tokio::spawn(async move { f.flood(3, t0 + Duration::from_secs(7), &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..2 {
        assert_eq!(f.quota_state(i).await, "degraded");
        let v = f.readyz(i).await;
        assert_eq!(
            v.status,
            StatusCode::OK,
            "still ready: the fail mode decides"
        );
        assert!(v.json()["quota"]["last_error"].is_string());
    }
    redis.restart();
    for i in 0..2 {
        wait_for(Duration::from_secs(5), || async {
            f.quota_state(i).await == "shared"
        })
        .await;
    }
    let answers = flood.await.unwrap();
    assert!(
        answers
            .iter()
            .all(|a| a.0 == StatusCode::OK || a.0 == StatusCode::TOO_MANY_REQUESTS),
        "only 200 and 429"
    );
    let slowest = answers.iter().map(|a| a.1).max().unwrap();
    assert!(slowest < Duration::from_secs(2), "slowest {slowest:?}");
    f.check_feishu_saw_no_violation();
    let ok = ok_count(&answers);
    assert!(ok >= 100, "kept forwarding through the outage: {ok}");
    for i in 0..2 {
        let m = f.metrics(i).await;
        assert!(
            m.contains("feishu_gateway_quota_backend_fallbacks_total 1"),
            "{m}"
        );
        assert!(m.contains("feishu_gateway_quota_backend_up 1"));
        assert!(!m.contains("feishu_gateway_quota_backend_fallback_seconds_total 0\n"));
        assert!(m.contains(r#"feishu_gateway_quota_backend_degraded_requests_total{fail="local"}"#));
        promtool_accepts(&m);
    }
    // Shared again: a new flood is limited by the one quota.
    f.sim.reset_records();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let answers = f
        .flood(2, Instant::now() + Duration::from_secs(2), &[])
        .await;
    f.check_feishu_saw_no_violation();
    let ok = ok_count(&answers);
    assert!(ok <= seed_curve(Duration::from_millis(2100)), "{ok}");
}

#[tokio::test]
async fn fail_closed_answers_503_then_recovers() {
    let mut redis = redis_or_skip!();
    let f = fleet(1, sim_config(), |c| {
        c.quota(redis_quota(&redis, QuotaFail::Closed, 1))
    })
    .await;
    assert_eq!(
        put_at(&f.client, f.gws[0].addr(), PUT_PATH, &[])
            .await
            .status,
        StatusCode::OK
    );
    redis.kill();
    let a = put_at(&f.client, f.gws[0].addr(), PUT_PATH, &[]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        a.header("x-gateway-error"),
        Some("quota-backend-unavailable")
    );
    assert_eq!(a.code(), 99990504);
    assert_eq!(a.header("retry-after"), Some("1"));
    // Wait mode too, and at once.
    let started = Instant::now();
    let a = put_at(
        &f.client,
        f.gws[0].addr(),
        PUT_PATH,
        &[("x-gateway-max-wait", "3000")],
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_millis(500));
    // Routes without a gateway quota are unaffected (Feishu's 404 here:
    // the path is no Feishu endpoint).
    let auth = format!("Bearer {CLIENT_KEY}");
    let a = call(
        &f.client,
        f.gws[0].addr(),
        http::Method::GET,
        "/open-apis/private/v1/things/oc_1",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.header("x-gateway-error"), None);
    assert_eq!(f.quota_state(0).await, "degraded");
    redis.restart();
    wait_for(Duration::from_secs(5), || async {
        f.quota_state(0).await == "shared"
    })
    .await;
    // Drained at the heal: 429 or 200, never 503 again.
    let a = put_at(&f.client, f.gws[0].addr(), PUT_PATH, &[]).await;
    assert!(
        a.status == StatusCode::OK || a.status == StatusCode::TOO_MANY_REQUESTS,
        "{}",
        a.status
    );
    assert_eq!(f.sim.violations(), 0);
}

#[tokio::test]
async fn fail_open_forwards_without_a_limit_then_recovers() {
    let mut redis = redis_or_skip!();
    let mut sim = sim_config();
    sim.quota = QuotaMode::CountOnly;
    sim.limits = vec![(5, Duration::from_secs(1))];
    let f = fleet(1, sim, |c| {
        c.quota(redis_quota(&redis, QuotaFail::Open, 1))
            .put_limits(&[(5, Duration::from_secs(1))])
    })
    .await;
    redis.kill();
    for _ in 0..12 {
        let a = put_at(&f.client, f.gws[0].addr(), PUT_PATH, &[]).await;
        assert_eq!(a.status, StatusCode::OK, "forwarded without a limit");
    }
    assert!(f.sim.violations() > 0, "the price of fail = \"open\"");
    redis.restart();
    wait_for(Duration::from_secs(5), || async {
        f.quota_state(0).await == "shared"
    })
    .await;
    let mut limited = 0;
    for _ in 0..12 {
        if put_at(&f.client, f.gws[0].addr(), PUT_PATH, &[])
            .await
            .status
            == StatusCode::TOO_MANY_REQUESTS
        {
            limited += 1;
        }
    }
    assert!(limited >= 10, "limited again: {limited}");
}

/// A Redis that accepts but never answers: every call gives up after
/// `redis_timeout`, the replica falls back, nothing hangs.
#[tokio::test]
async fn a_stalled_redis_costs_at_most_the_timeout() {
    let redis = redis_or_skip!();
    let f = Arc::new(
        fleet(1, sim_config(), |c| {
            c.quota(redis_quota(&redis, QuotaFail::Local, 1))
        })
        .await,
    );
    redis.signal("-STOP");
    let answers = f
        .flood(2, Instant::now() + Duration::from_millis(1500), &[])
        .await;
    let slowest = answers.iter().map(|a| a.1).max().unwrap();
    // 50 ms timeouts; the bound leaves room for a loaded machine, far below
    // the 30 s a hung request would take.
    assert!(slowest < Duration::from_secs(2), "slowest {slowest:?}");
    assert!(ok_count(&answers) > 0);
    assert_eq!(f.quota_state(0).await, "degraded");
    let m = f.metrics(0).await;
    assert!(
        m.lines().any(|l| l
            .starts_with(r#"feishu_gateway_quota_backend_errors_total{kind="timeout"}"#)
            && !l.ends_with(" 0")),
        "{m}"
    );
    redis.signal("-CONT");
    wait_for(Duration::from_secs(5), || async {
        f.quota_state(0).await == "shared"
    })
    .await;
    f.check_feishu_saw_no_violation();
}

// ----- configuration ----------------------------------------------------------

/// A config in front of an upstream no test reaches.
fn config() -> GatewayConfig {
    GatewayConfig::new("http://127.0.0.1:1")
}

#[test]
fn redis_config_keys_defaults_and_problems() {
    let c = config()
        .quota(Quota::redis_env("REDIS_URL").replicas(3))
        .env("REDIS_URL", "redis://:hunter2-secret@redis:6379/0")
        .parse();
    let q = &c.quota;
    assert_eq!(q.backend, BackendKind::Redis);
    assert_eq!(q.fail, FailMode::Local);
    assert_eq!(q.replicas, 3);
    assert_eq!(q.key_prefix, "feishu-gateway:");
    assert_eq!(q.redis_timeout, Duration::from_millis(50));
    match q.redis.as_ref().unwrap() {
        RedisTarget::Url(url) => assert_eq!(url.expose(), "redis://:hunter2-secret@redis:6379/0"),
        other => panic!("{other:?}"),
    }
    assert!(!format!("{c:?}").contains("hunter2"), "never printed");

    let c = config()
        .quota(
            Quota::redis("rediss://cache.internal:6380")
                .fail(QuotaFail::Closed)
                .key_prefix("gw1:")
                .redis_timeout(Duration::from_millis(20)),
        )
        .parse();
    assert_eq!(c.quota.fail, FailMode::Closed);
    assert_eq!(c.quota.replicas, 1);
    assert_eq!(c.quota.key_prefix, "gw1:");

    // Sentinel: the sentinels, the primary's name, the data nodes' and the
    // sentinels' own passwords (from the environment and a file).
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("sentinel-pw");
    std::fs::write(&pw_file, "hunter2-sentinel\n").unwrap();
    let c = config()
        .env("REDIS_PW", "hunter2-data")
        .raw(&format!(
            "[quota]\nbackend = \"redis\"\nreplicas = 3\nredis_sentinels = [\"10.0.0.1:26379\", \"sentinel-2:26379\"]\nredis_sentinel_master = \"gw\"\nredis_db = 2\nredis_tls = true\nredis_username = \"gateway\"\nredis_password_env = \"REDIS_PW\"\nredis_sentinel_password_file = {:?}\n",
            pw_file.display().to_string()
        ))
        .parse();
    match c.quota.redis.as_ref().unwrap() {
        RedisTarget::Sentinel(s) => {
            assert_eq!(s.sentinels, ["10.0.0.1:26379", "sentinel-2:26379"]);
            assert_eq!((s.master.as_str(), s.db, s.tls), ("gw", 2, true));
            assert_eq!(s.auth.username.as_deref(), Some("gateway"));
            assert_eq!(s.auth.password.as_ref().unwrap().expose(), "hunter2-data");
            assert_eq!(
                s.sentinel_auth.password.as_ref().unwrap().expose(),
                "hunter2-sentinel"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{c:?}").contains("hunter2"), "never printed");

    // Cluster: seed nodes, an inline password.
    let c = config()
        .raw("[quota]\nbackend = \"redis\"\nreplicas = 3\nredis_cluster_nodes = [\"10.0.0.1:7000\", \"10.0.0.2:7000\"]\nredis_password = \"hunter2-cluster\"\n")
        .parse();
    match c.quota.redis.as_ref().unwrap() {
        RedisTarget::Cluster(cl) => {
            assert_eq!(cl.nodes, ["10.0.0.1:7000", "10.0.0.2:7000"]);
            assert!(!cl.tls);
            assert_eq!(
                cl.auth.password.as_ref().unwrap().expose(),
                "hunter2-cluster"
            );
        }
        other => panic!("{other:?}"),
    }

    // The local default is untouched.
    let c = config().parse();
    assert_eq!(c.quota.backend, BackendKind::Local);

    // Invalid `[quota]` text, as an operator could write it: every problem
    // is named by its key, and no password is quoted.

    for (quota, key, says) in [
        ("backend = \"memcached\"", "quota.backend", "is not"),
        ("backend = \"redis\"\nreplicas = 2", "quota.redis_url_env", "is required"),
        (
            "backend = \"redis\"\nredis_url = \"redis://a\"\nredis_url_env = \"X\"\nreplicas = 2",
            "quota.redis_url",
            "only one",
        ),
        ("backend = \"redis\"\nredis_url = \"redis://a\"", "quota.replicas", "is required"),
        (
            "backend = \"redis\"\nredis_url = \"redis://a\"\nreplicas = 2\nredis_timeout = \"80ms\"",
            "quota.redis_timeout",
            "half of quota.margin",
        ),
        (
            "backend = \"redis\"\nredis_url = \"redis://a\"\nreplicas = 2\nfail = \"maybe\"",
            "quota.fail",
            "is not",
        ),
        (
            "backend = \"redis\"\nredis_url = \"http://:hunter2@a\"\nreplicas = 2",
            "quota.redis_url",
            "is not a URL",
        ),
        ("redis_url = \"redis://a\"", "quota.redis_url", "only applies"),
        (
            "backend = \"redis\"\nreplicas = 2\nredis_sentinels = [\"a:26379\"]",
            "quota.redis_sentinel_master",
            "is required",
        ),
        (
            "backend = \"redis\"\nreplicas = 2\nredis_url = \"redis://a\"\nredis_cluster_nodes = [\"a:7000\"]",
            "quota.redis_url",
            "only one of a URL",
        ),
        (
            "backend = \"redis\"\nreplicas = 2\nredis_cluster_nodes = [\"redis://:hunter2@a:7000\"]",
            "quota.redis_cluster_nodes[0]",
            "is not host:port",
        ),
        (
            "backend = \"redis\"\nreplicas = 2\nredis_cluster_nodes = []",
            "quota.redis_cluster_nodes",
            "at least one",
        ),
        (
            "backend = \"redis\"\nreplicas = 2\nredis_cluster_nodes = [\"a:7000\"]\nredis_db = 1",
            "quota.redis_db",
            "only applies with `redis_sentinels`",
        ),
        (
            "backend = \"redis\"\nreplicas = 2\nredis_url = \"redis://a\"\nredis_tls = true",
            "quota.redis_tls",
            "only applies",
        ),
        (
            "backend = \"redis\"\nreplicas = 2\nredis_cluster_nodes = [\"a:7000\"]\nredis_password = \"hunter2\"\nredis_password_env = \"X\"",
            "quota.redis_password",
            "only one",
        ),
        ("redis_cluster_nodes = [\"a:7000\"]", "quota.redis_cluster_nodes", "only applies"),
    ] {
        let err = config()
            .raw(&format!("[quota]\n{quota}"))
            .try_parse()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains(says),
            "{quota:?}: expected {key} {says:?} in\n{err}"
        );
        assert!(!err.contains("hunter2"), "a password leaked: {err}");
    }
}

/// A window smaller than the replica count has no local share: the
/// gateway starts (Feishu's catalog has `1/1s` endpoints), and during an
/// outage such a route is closed (503) while the others use their share.
#[tokio::test]
async fn limits_below_the_replica_count_close_during_an_outage() {
    let mut redis = redis_or_skip!();
    let f = fleet(1, sim_config(), |c| {
        c.quota(redis_quota(&redis, QuotaFail::Local, 3))
            .put_limits(&[(2, Duration::from_secs(1))])
    })
    .await;
    assert_eq!(
        put_at(&f.client, f.gws[0].addr(), PUT_PATH, &[])
            .await
            .status,
        StatusCode::OK
    );
    redis.kill();
    wait_for(Duration::from_secs(5), || async {
        f.quota_state(0).await == "degraded"
    })
    .await;
    let a = put_at(&f.client, f.gws[0].addr(), PUT_PATH, &[]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        a.header("x-gateway-error"),
        Some("quota-backend-unavailable")
    );
    // 50/1s splits between 3 replicas: the local share (started drained,
    // so after one interval) admits.
    let delete = PUT_PATH.replace("put_top_notice", "delete_top_notice");
    let a = put_at(
        &f.client,
        f.gws[0].addr(),
        &delete,
        &[("x-gateway-max-wait", "2000")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "50/1s splits between 3 replicas");
    redis.restart();
}

/// `rediss://` with a password and a private CA; `/readyz` names the
/// target without the password.
#[tokio::test]
async fn rediss_with_a_password_and_a_private_ca() {
    let ca = feishu_sim::ca::TestCa::new("redis test CA").unwrap();
    let cert = ca.issue_localhost("redis").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cert_file = write("redis.crt", &cert.cert_pem);
    let key_file = write("redis.key", &cert.key_pem);
    let ca_file = write("ca.crt", &ca.cert_pem());
    let Some(redis) = RedisServer::start_with(&[
        "--tls-port",
        "PORT",
        "--tls-cert-file",
        cert_file.to_str().unwrap(),
        "--tls-key-file",
        key_file.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca_file.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "hunter2-secret",
    ]) else {
        return;
    };
    let url = format!("rediss://:hunter2-secret@localhost:{}/0", redis.port);
    let h = start_with(sim_config(), |c| {
        c.quota(
            Quota::redis_env("REDIS_URL")
                .redis_ca_file(&ca_file)
                .replicas(1),
        )
        .env("REDIS_URL", url)
    })
    .await;
    h.ready().await;
    let a = h.put("oc_123").await;
    assert_eq!(a.status, StatusCode::OK);
    let ready = h.admin("/readyz").await;
    let text = ready.text();
    let v = ready.json();
    assert_eq!(v["quota"]["state"], "shared", "{text}");
    assert_eq!(
        v["quota"]["target"],
        format!("rediss://localhost:{}/0", redis.port)
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!h.metrics().await.contains("hunter2"));
}

// ----- the Kubernetes example -------------------------------------------------

#[test]
fn the_kubernetes_redis_example_agrees_with_itself_and_the_gateway() {
    use serde::Deserialize;
    use serde_norway::Value as Yaml;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    // The example Secret lives apart from the manifests (the kustomization
    // must not overwrite a real one).
    let text = std::fs::read_to_string(root.join("redis.yaml")).unwrap()
        + "\n---\n"
        + &std::fs::read_to_string(root.join("redis-secret.example.yaml")).unwrap();
    let docs: Vec<Yaml> = serde_norway::Deserializer::from_str(&text)
        .map(|d| Yaml::deserialize(d).unwrap())
        .collect();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let (secret, svc, dep, netpol) = (
        kind("Secret"),
        kind("Service"),
        kind("Deployment"),
        kind("NetworkPolicy"),
    );
    let pod_labels = &dep["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "the Service selects the Redis pod"
        );
    }
    let container = &dep["spec"]["template"]["spec"]["containers"][0];
    let port = &container["ports"][0];
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], port["name"]);
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for pair in [["--save", ""], ["--maxmemory-policy", "noeviction"]] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    assert_eq!(dep["spec"]["strategy"]["type"], "Recreate");

    // REDIS_URL names the Service, its port and the same password, and
    // the config the comment shows accepts it.
    let url = secret["stringData"]["REDIS_URL"].as_str().unwrap();
    let password = secret["stringData"]["REDIS_PASSWORD"].as_str().unwrap();
    let service = svc["metadata"]["name"].as_str().unwrap();
    let svc_port = svc["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(url, format!("redis://:{password}@{service}:{svc_port}/0"));
    assert!(text.contains("backend = \"redis\""));
    let c = config()
        .quota(Quota::redis_env("REDIS_URL").replicas(3))
        .env("REDIS_URL", url)
        .parse();
    assert_eq!(c.quota.replicas, 3);

    // Only the gateway's pods may connect.
    let gateway: Yaml =
        serde_norway::from_str(&std::fs::read_to_string(root.join("deployment.yaml")).unwrap())
            .unwrap();
    let gateway_labels = &gateway["spec"]["template"]["metadata"]["labels"];
    let from = &netpol["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"];
    for (k, v) in from.as_mapping().unwrap() {
        assert_eq!(gateway_labels.get(k), Some(v));
    }
    for (k, v) in netpol["spec"]["podSelector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(pod_labels.get(k), Some(v));
    }
}

// ----- quota shares ------------------------------------------------------------

/// The default config with the client `batch` (a fifth of ops-bot's
/// quotas) beside `billing`, quotas in `redis` for `replicas`.
fn shares_config(
    redis: &RedisServer,
    replicas: u32,
) -> impl FnOnce(GatewayConfig) -> GatewayConfig {
    let quota = redis_quota(redis, QuotaFail::Local, replicas);
    move |c| {
        c.quota(quota)
            .client(Client::new("batch", "BATCH_KEY", "ops-bot").quota_share(0.2))
            .env("BATCH_KEY", BATCH_KEY)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_two_replicas_and_the_one_with_a_fifth_gets_at_most_a_fifth() {
    let redis = redis_or_skip!();
    let f = fleet(2, sim_config(), shares_config(&redis, 2)).await;
    let addrs: Vec<_> = f.gws.iter().map(|g| g.addr()).collect();
    // Two senders per client on each replica: four per client in all.
    let s = flood_shares(&f.client, &addrs, 2, Duration::from_secs(5), &[]).await;
    eprintln!("{}", s.report("redis backend, 2 replicas, reject mode"));
    // batch's share key is one key in Redis, beside the app's.
    let mut c = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*#share=batch}:tat")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        keys,
        [format!(
            "feishu-gateway:quota:{{{APP_ID}:POST {PUT_ROUTE}#share=batch}}:tat"
        )]
    );
    // Calls that timed out may have spent their slot in Redis.
    let mut late = 0.0;
    for i in 0..2 {
        let m = f.metrics(i).await;
        late += metric_value(
            &m,
            r#"feishu_gateway_quota_backend_errors_total{kind="timeout"}"#,
        )
        .unwrap_or(0.0);
        assert!(m.contains("feishu_gateway_quota_backend_up 1"), "{m}");
        assert!(m.contains(r#"feishu_gateway_quota_backend_duration_seconds_count{op="give"}"#));
    }
    check_shares(&f.sim, &s, late as usize);
}

#[tokio::test]
async fn in_wait_mode_on_two_replicas_a_client_over_its_share_waits_for_its_share() {
    let redis = redis_or_skip!();
    let f = Arc::new(fleet(2, sim_config(), shares_config(&redis, 2)).await);
    let share = share_plan(0.2);
    let started = Instant::now();
    let wait = &[("x-gateway-max-wait", "10000")];
    let mut tasks = Vec::new();
    for (key, path, n) in [(BATCH_KEY, BATCH_PATH, 20), (CLIENT_KEY, BILLING_PATH, 60)] {
        for i in 0..n {
            let f = Arc::clone(&f);
            tasks.push(tokio::spawn(async move {
                let addr = f.gws[i % 2].addr();
                let a = put_as(&f.client, addr, key, path, wait).await;
                (key, a.status, started.elapsed())
            }));
        }
    }
    let mut batch_done = Duration::ZERO;
    for t in tasks {
        let (key, status, at) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{key} waited and went");
        if key == BATCH_KEY {
            batch_done = batch_done.max(at);
        }
    }
    f.check_feishu_saw_no_violation();
    let least = share.emission_interval() * (20 - share.burst());
    assert!(
        batch_done + Duration::from_millis(100) >= least,
        "batch's 20 took {batch_done:?}, its share allows no less than {least:?}"
    );
    // (Not 10 in every second at Feishu: a request that passed its share
    // may still wait in the app's queue, behind billing's, and leave with
    // others that did; see docs/quota.md, "Client shares".)
    let batch_1s = max_at_feishu(&f.sim, BATCH_PATH, Duration::from_secs(1));
    eprintln!(
        "redis backend, 2 replicas, wait mode: batch's 20 done after {batch_done:.2?} (its share allows {least:.2?}), at most {batch_1s} of them in 1 s at Feishu"
    );
}
