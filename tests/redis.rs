//! Quotas shared by several gateway replicas through Redis, against
//! a real `redis-server` each test starts on a free port (no persistence) and
//! kills at the end, and the simulated Feishu counting violations at arrival.
//!
//! Without `redis-server` on PATH the tests are skipped with a note, except
//! under `CI=true`, where they fail (`deploy/ci-install-redis.sh` installs
//! it).

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use feishu_gateway::app::Runtime;
use feishu_gateway::config::{Config, MapEnv};
use feishu_gateway::quota::{
    Cause, FailMode, KeySpec, Limit, Overflow, Plan, PlanPolicy, QuotaKey, RedisQuota,
    RedisSettings, Window,
};
use feishu_gateway::secret::Secret;
use feishu_sim::{QuotaMode, SimConfig, SimFeishu};
use http::StatusCode;
use support::redis_server::RedisServer;
use support::*;

macro_rules! redis_or_skip {
    () => {
        match RedisServer::start() {
            Some(r) => r,
            None => return,
        }
    };
}

// ----- engines without a gateway -------------------------------------------

fn windows(list: &[&str]) -> Vec<Window> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn plan(list: &[&str]) -> Plan {
    Plan::new(&windows(list), &PlanPolicy::default()).unwrap()
}

fn settings(redis: &RedisServer, fail: FailMode) -> RedisSettings {
    RedisSettings {
        url: Secret::new(redis.url()),
        ca_file: None,
        key_prefix: "t:".into(),
        fail,
        replicas: 2,
        // Generous: these tests are about the script and the switches, not
        // about riding out a loaded machine's stalls.
        timeout: Duration::from_secs(1),
        min_rate_fraction: PlanPolicy::default().min_rate_fraction,
        probe_interval: Duration::from_millis(100),
    }
}

/// An engine on one key, once its first probe has connected.
async fn engine(redis: &RedisServer, plan: Plan, fail: FailMode) -> RedisQuota {
    let spec = KeySpec::new(plan, 16).with_name("cli_x:POST /open-apis/x");
    let q = RedisQuota::new(&settings(redis, fail), vec![spec], None).expect("engine");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !q.is_settled() {
        assert!(Instant::now() < deadline, "first probe");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    q
}

const KEY: QuotaKey = QuotaKey::new(0);

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
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(1) {
        if q.acquire(KEY, Overflow::Reject).await.is_ok() {
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let most = (took / split.emission_interval().as_secs_f64()) as u32 + 1;
    assert!(n >= 1 && n <= most, "{n} in 1 s, at most {most}");

    // Redis is back: the probe joins the fleet's heal time, drains the key,
    // and the engine switches back.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !q.is_shared() {
        assert!(Instant::now() < deadline, "{:?}", q.status());
        q.probe_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Drained from the heal on: the lost state gives no fresh burst, only
    // the shared rate.
    let snap = q.snapshot(KEY).await.unwrap();
    assert!(snap.remaining < 5, "no fresh burst of 33: {snap:?}");
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(600) {
        if q.acquire(KEY, Overflow::Reject).await.is_ok() {
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let most = snap.remaining + (took / p.emission_interval().as_secs_f64()) as u32 + 1;
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
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(1) {
        if fresh.acquire(KEY, Overflow::Reject).await.is_ok() {
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let most =
        (started.elapsed().as_secs_f64() / split.emission_interval().as_secs_f64()) as u32 + 1;
    assert!(n >= 1 && n <= most, "{n} in 1 s, at most {most}");

    // Redis is back, empty. A scope's keys were not drained by the heal
    // (it knows only the engine's), yet give no fresh burst: every call
    // floors them at the heal's drain.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !q.is_shared() {
        assert!(Instant::now() < deadline, "{:?}", q.status());
        q.probe_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = q.scope("tenant_d", &[KEY]).unwrap();
    for s in [&fresh, &late] {
        let snap = s.snapshot(KEY).await.unwrap();
        assert!(snap.remaining < 5, "no fresh burst of 33: {snap:?}");
    }
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(600) {
        if late.acquire(KEY, Overflow::Reject).await.is_ok() {
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let most = (started.elapsed().as_secs_f64() / p.emission_interval().as_secs_f64()) as u32 + 5;
    assert!(n <= most, "{n} in 600 ms after the heal, at most {most}");
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

const PUT_ROUTE: &str = "/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice";

/// One simulated Feishu, one Redis, and `n` gateways sharing them.
struct Fleet {
    sim: SimFeishu,
    gws: Vec<Runtime>,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

fn quota_section(redis: &RedisServer, fail: &str, replicas: u32, more: &str) -> String {
    format!(
        "[quota]\nbackend = \"redis\"\nredis_url = \"{}\"\nfail = \"{fail}\"\nreplicas = {replicas}\n{more}\n",
        redis.url()
    )
}

async fn fleet(n: usize, sim: SimConfig, extra: &str) -> Fleet {
    let sim = SimFeishu::start(sim).await.expect("sim starts");
    let text = config_text(&sim.base_url(), "", extra);
    let mut gws = Vec::new();
    for _ in 0..n {
        let config = Config::parse(&text, &env()).unwrap_or_else(|p| panic!("{p}"));
        gws.push(Runtime::start(config).await.expect("gateway starts"));
    }
    let f = Fleet {
        sim,
        gws,
        client: http_client(),
    };
    for gw in &f.gws {
        wait_for(Duration::from_secs(10), || async {
            f.get(gw.admin_addr(), "/readyz").await.status == StatusCode::OK
        })
        .await;
    }
    f
}

impl Fleet {
    async fn get(&self, addr: SocketAddr, path: &str) -> Answer {
        call(&self.client, addr, http::Method::GET, path, &[], "").await
    }

    async fn quota_state(&self, i: usize) -> String {
        let v = self.get(self.gws[i].admin_addr(), "/readyz").await.json();
        v["quota"]["state"].as_str().unwrap_or("?").to_string()
    }

    async fn metrics(&self, i: usize) -> String {
        String::from_utf8_lossy(&self.get(self.gws[i].admin_addr(), "/metrics").await.body)
            .into_owned()
    }

    /// `senders` loops per replica, each sending put_top_notice with a short
    /// pause until `until`; returns (status, latency) of every answer.
    async fn flood(
        self: &Arc<Self>,
        senders: usize,
        until: Instant,
        extra: &'static [(&'static str, &'static str)],
    ) -> Vec<(StatusCode, Duration)> {
        let mut tasks = Vec::new();
        for i in 0..self.gws.len() {
            for _ in 0..senders {
                let f = Arc::clone(self);
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    while Instant::now() < until {
                        let started = Instant::now();
                        let a = put_at(&f.client, f.gws[i].addr(), PUT_PATH, extra).await;
                        out.push((a.status, started.elapsed()));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    out
                }));
            }
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    }

    fn check_feishu_saw_no_violation(&self) {
        assert_eq!(self.sim.violations(), 0, "Feishu counted violations");
        let in_1s = self
            .sim
            .max_in_any_window(APP_ID, "put_top_notice", Duration::from_secs(1));
        assert!(in_1s <= 50, "{in_1s} in one second");
    }
}

/// The value of the series `name` (with its labels) in an exposition.
fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `promtool check metrics` accepts the exposition (when promtool is
/// installed; tests/deploy.rs requires it under CI).
fn promtool_accepts(exposition: &str) {
    use std::io::Write;
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ok_count(answers: &[(StatusCode, Duration)]) -> usize {
    answers.iter().filter(|a| a.0 == StatusCode::OK).count()
}

/// What the seed plan (b = 33, t = 62.087 ms) admits at most within `d`
/// of sustained overload from a fresh start: b + floor(d / t).
fn seed_curve(d: Duration) -> usize {
    let p = plan(&["50/1s", "1000/60s"]);
    p.burst() as usize + (d.as_secs_f64() / p.emission_interval().as_secs_f64()) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_flooded_in_reject_mode_forward_one_quota() {
    let redis = redis_or_skip!();
    let f = Arc::new(fleet(3, sim_config(), &quota_section(&redis, "local", 3, "")).await);
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
        late += metric(
            &f.metrics(i).await,
            r#"feishu_gateway_quota_backend_errors_total{kind="timeout"}"#,
        );
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
    let more = "overflow = \"wait\"\nmax_wait = \"20s\"";
    let f = Arc::new(fleet(3, sim_config(), &quota_section(&redis, "local", 3, more)).await);
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
    let f = fleet(2, sim_config(), &quota_section(&redis, "local", 2, "")).await;
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
    let f = Arc::new(fleet(2, sim_config(), &quota_section(&redis, "local", 2, "")).await);
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
        let v = f.get(f.gws[i].admin_addr(), "/readyz").await;
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
    let f = fleet(1, sim_config(), &quota_section(&redis, "closed", 1, "")).await;
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
    // Routes without a gateway quota are unaffected.
    let auth = format!("Bearer {CLIENT_KEY}");
    let a = call(
        &f.client,
        f.gws[0].addr(),
        http::Method::GET,
        "/open-apis/im/v1/chats/oc_1",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
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
    let route =
        format!("[[routes]]\nmethod = \"POST\"\npath = \"{PUT_ROUTE}\"\nlimits = [\"5/1s\"]\n");
    let extra = format!("{}{route}", quota_section(&redis, "open", 1, ""));
    let f = fleet(1, sim, &extra).await;
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
    let f = Arc::new(fleet(1, sim_config(), &quota_section(&redis, "local", 1, "")).await);
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

fn parse(quota: &str, env: MapEnv) -> Result<Config, String> {
    let text = config_text("http://127.0.0.1:1", "", &format!("[quota]\n{quota}\n"));
    Config::parse(&text, &env).map_err(|p| p.to_string())
}

#[test]
fn redis_config_keys_defaults_and_problems() {
    let c = parse(
        "backend = \"redis\"\nredis_url_env = \"REDIS_URL\"\nreplicas = 3",
        env().with("REDIS_URL", "redis://:hunter2-secret@redis:6379/0"),
    )
    .unwrap();
    let q = &c.quota;
    assert_eq!(q.backend, feishu_gateway::quota::BackendKind::Redis);
    assert_eq!(q.fail, FailMode::Local);
    assert_eq!(q.replicas, 3);
    assert_eq!(q.key_prefix, "feishu-gateway:");
    assert_eq!(q.redis_timeout, Duration::from_millis(50));
    assert_eq!(
        q.redis_url.as_ref().unwrap().expose(),
        "redis://:hunter2-secret@redis:6379/0"
    );
    assert!(!format!("{c:?}").contains("hunter2"), "never printed");

    let c = parse(
        "backend = \"redis\"\nredis_url = \"rediss://cache.internal:6380\"\nfail = \"closed\"\nkey_prefix = \"gw1:\"\nredis_timeout = \"20ms\"",
        env(),
    )
    .unwrap();
    assert_eq!(c.quota.fail, FailMode::Closed);
    assert_eq!(c.quota.replicas, 1);
    assert_eq!(c.quota.key_prefix, "gw1:");

    // The local default is untouched.
    let c = parse("", env()).unwrap();
    assert_eq!(c.quota.backend, feishu_gateway::quota::BackendKind::Local);

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
    ] {
        let err = parse(quota, env()).unwrap_err();
        assert!(
            err.contains(key) && err.contains(says),
            "{quota:?}: expected {key} {says:?} in\n{err}"
        );
        assert!(!err.contains("hunter2"), "a password leaked: {err}");
    }
}

#[tokio::test]
async fn limits_below_the_replica_count_are_refused_at_start() {
    let redis = redis_or_skip!();
    let route =
        format!("[[routes]]\nmethod = \"POST\"\npath = \"{PUT_ROUTE}\"\nlimits = [\"2/1s\"]\n");
    let extra = format!("{}{route}", quota_section(&redis, "local", 3, ""));
    let text = config_text("http://127.0.0.1:1", "", &extra);
    let config = Config::parse(&text, &env()).unwrap();
    let err = Runtime::start(config).await.err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("2/1s") && msg.contains("replicas"), "{msg}");
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
    let extra = format!(
        "[quota]\nbackend = \"redis\"\nredis_url_env = \"REDIS_URL\"\nredis_ca_file = \"{}\"\nreplicas = 1\n",
        ca_file.display()
    );
    let sim = SimFeishu::start(sim_config()).await.unwrap();
    let text = config_text(&sim.base_url(), "", &extra);
    let config =
        Config::parse(&text, &env().with("REDIS_URL", url)).unwrap_or_else(|p| panic!("{p}"));
    let gw = Runtime::start(config).await.unwrap();
    let client = http_client();
    wait_for(Duration::from_secs(10), || async {
        call(
            &client,
            gw.admin_addr(),
            http::Method::GET,
            "/readyz",
            &[],
            "",
        )
        .await
        .status
            == StatusCode::OK
    })
    .await;
    let a = put_at(&client, gw.addr(), PUT_PATH, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let ready = call(
        &client,
        gw.admin_addr(),
        http::Method::GET,
        "/readyz",
        &[],
        "",
    )
    .await;
    let text = String::from_utf8_lossy(&ready.body).into_owned();
    let v = ready.json();
    assert_eq!(v["quota"]["state"], "shared", "{text}");
    assert_eq!(
        v["quota"]["target"],
        format!("rediss://localhost:{}/0", redis.port)
    );
    assert!(!text.contains("hunter2"), "{text}");
    let m = call(
        &client,
        gw.admin_addr(),
        http::Method::GET,
        "/metrics",
        &[],
        "",
    )
    .await;
    assert!(!String::from_utf8_lossy(&m.body).contains("hunter2"));
}

// ----- the Kubernetes example -------------------------------------------------

#[test]
fn the_kubernetes_redis_example_agrees_with_itself_and_the_gateway() {
    use serde::Deserialize;
    use serde_norway::Value as Yaml;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let text = std::fs::read_to_string(root.join("redis.yaml")).unwrap();
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
    let snippet = "backend = \"redis\"\nredis_url_env = \"REDIS_URL\"\nreplicas = 3";
    assert!(text.contains("backend = \"redis\""));
    let c = parse(snippet, env().with("REDIS_URL", url)).unwrap();
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
