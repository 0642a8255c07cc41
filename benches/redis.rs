//! What sharing quotas through Redis costs, against a `redis-server` this
//! benchmark starts on a free loopback port (no persistence). Run:
//! `cargo bench --bench redis` (needs `redis-server`; see
//! `deploy/ci-install-redis.sh`).
//!
//! 1. The added latency of one admission decision: `Engine::acquire` in
//!    reject mode, local vs one Redis vs a 3-primary Redis Cluster (started
//!    here with `redis-cli --cluster create`), one caller at a time
//!    (p50/p99 in µs), and with 64 concurrent callers on one multiplexed
//!    connection. `cargo bench --bench redis -- latency` runs only this.
//! 2. Efficiency under sustained overload with the seed limits (`50/1s`,
//!    `1000/60s`): three engines (replicas) on one Redis hammer one key for
//!    65 s; admissions in the last 60 s as a share of 1000, and the most
//!    admitted within any 1.1 s and 60.1 s (never above 50 and 1000).
//! 3. The gateway's throughput: a gateway in front of the simulated Feishu
//!    (its quota off, the route's limits far above the load), local vs
//!    Redis backend, 64 concurrent clients for a few seconds each.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use feishu_gateway::app::Runtime;
use feishu_gateway::config::{Config, MapEnv};
use feishu_gateway::quota::{
    Cause, Engine, FailMode, KeySpec, Overflow, Plan, PlanPolicy, QuotaKey, RedisQuota,
    RedisSettings, Window,
};
use feishu_gateway::redis_connection::{ClusterTarget, NodeAuth, RedisTarget};
use feishu_gateway::secret::Secret;
use feishu_sim::{QuotaMode, SimConfig, SimFeishu};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const KEY: QuotaKey = QuotaKey::new(0);
const APP_ID: &str = "cli_bench000000001";
const APP_SECRET: &str = "bench-app-secret-0001";
const CLIENT_KEY: &str = "bench-client-key-0123456789";
const PUT_PATH: &str = "/open-apis/im/v1/chats/oc_1/top_notice/put_top_notice";
const PUT_BODY: &str = r#"{"chat_top_notice":[{"action_type":"1","message_id":"om_dc13264520392913993dd051dba21dcf"}]}"#;

struct RedisServer(Child, u16);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<RedisServer> {
    start_redis_with(&[], &std::env::temp_dir())
}

fn start_redis_with(extra: &[&str], dir: &std::path::Path) -> Option<RedisServer> {
    let port = StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .args(extra)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = RedisServer(child, port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
}

/// Three cluster-mode servers made one Cluster (no replicas), each in a
/// directory of its own (they write nodes.conf). The directories go with
/// the servers.
fn start_cluster() -> Option<(Vec<RedisServer>, Vec<tempfile::TempDir>)> {
    let mut servers = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().ok()?;
        let extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"];
        servers.push(start_redis_with(&extra, dir.path())?);
        dirs.push(dir);
    }
    let nodes: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.1))
        .collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&nodes)
        .args(["--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !created.success() {
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = Command::new("redis-cli")
            .args(["-p", &servers[0].1.to_string(), "cluster", "info"])
            .output()
            .ok()?;
        if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
            return Some((servers, dirs));
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e6
}

/// A plan far above the load, so every call is admitted (the common path).
fn roomy_plan() -> Plan {
    let w: Window = "1000000/1s".parse().expect("window");
    Plan::new(&[w], &PlanPolicy::default()).expect("plan")
}

async fn sequential(engine: &Engine, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let _ = engine.acquire(KEY, Overflow::Reject).await;
        out.push(started.elapsed());
    }
    out.sort();
    out
}

async fn concurrent(engine: &Engine, tasks: usize, each: usize) -> (Vec<Duration>, f64) {
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let e = engine.clone();
        handles.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(each);
            for _ in 0..each {
                let s = Instant::now();
                let _ = e.acquire(KEY, Overflow::Reject).await;
                out.push(s.elapsed());
            }
            out
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("task"));
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (all, rate)
}

/// Three replicas flood one key with the seed limits for `secs`; returns
/// the sorted admission times in seconds since the start, and how many
/// calls failed (timed out: their slot may have been spent unused).
async fn overload(url: &str, secs: u64) -> (Vec<f64>, usize) {
    let seed: Vec<Window> = ["50/1s", "1000/60s"]
        .iter()
        .map(|w| w.parse().expect("window"))
        .collect();
    let plan = Plan::new(&seed, &PlanPolicy::default()).expect("plan");
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let mut handles = Vec::new();
    for _replica in 0..3 {
        let settings = RedisSettings {
            target: RedisTarget::Url(Secret::new(url.to_string())),
            ca_file: None,
            key_prefix: "bench-overload:".into(),
            fail: FailMode::Closed,
            replicas: 3,
            timeout: Duration::from_millis(50),
            min_rate_fraction: PlanPolicy::default().min_rate_fraction,
            probe_interval: Duration::from_millis(500),
        };
        let spec = KeySpec::new(plan.clone(), 0).with_name("cli_bench:POST /overload");
        let q = RedisQuota::new(&settings, vec![spec], None).expect("engine");
        for _ in 0..4 {
            let q = q.clone();
            handles.push(tokio::spawn(async move {
                let (mut out, mut failed) = (Vec::new(), 0);
                while Instant::now() < until {
                    match q.acquire(KEY, Overflow::Reject).await {
                        Ok(_) => out.push(started.elapsed().as_secs_f64()),
                        Err(r) if r.cause() == Cause::BackendUnavailable => failed += 1,
                        Err(_) => {}
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (out, failed)
            }));
        }
    }
    let (mut all, mut failed) = (Vec::new(), 0);
    for h in handles {
        let (times, f) = h.await.expect("task");
        all.extend(times);
        failed += f;
    }
    all.sort_by(f64::total_cmp);
    (all, failed)
}

fn max_within(times: &[f64], span: f64) -> usize {
    let (mut best, mut lo) = (0, 0);
    for hi in 0..times.len() {
        while times[hi] - times[lo] > span {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

fn config_text(upstream: &str, quota: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
upstream = "{upstream}"

[log]
level = "error"

[[apps]]
name = "bench"
app_id = "{APP_ID}"
app_secret_env = "APP_SECRET"

[[clients]]
name = "load"
key_env = "CLIENT_KEY"
app = "bench"

[[routes]]
method = "POST"
path = "/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice"
limits = ["1000000/1s"]

{quota}
"#
    )
}

/// Requests per second, p50/p99 latency (µs) and answers other than 200
/// through one gateway.
async fn gateway_load(
    sim: &SimFeishu,
    quota: &str,
    clients: usize,
    secs: u64,
) -> (f64, f64, f64, usize) {
    let env = MapEnv::new()
        .with("APP_SECRET", APP_SECRET)
        .with("CLIENT_KEY", CLIENT_KEY);
    let config = Config::parse(&config_text(&sim.base_url(), quota), &env).expect("config");
    let gw = Runtime::start(config).await.expect("gateway");
    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let ready = format!("http://{}/readyz", gw.admin_addr());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let req = http::Request::get(&ready)
            .body(Full::new(Bytes::new()))
            .expect("req");
        if let Ok(r) = http.request(req).await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "gateway not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("http://{}{PUT_PATH}", gw.addr());
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..clients {
        let http = http.clone();
        let url = url.clone();
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while Instant::now() < until {
                let req = http::Request::post(&url)
                    .header("authorization", format!("Bearer {CLIENT_KEY}"))
                    .header("content-type", "application/json; charset=utf-8")
                    .body(Full::new(Bytes::from_static(PUT_BODY.as_bytes())))
                    .expect("req");
                let s = Instant::now();
                let resp = http.request(req).await.expect("answer");
                let ok = resp.status() == 200;
                let _ = resp.into_body().collect().await;
                out.push((s.elapsed(), ok));
            }
            out
        }));
    }
    let (mut all, mut other) = (Vec::new(), 0);
    for h in handles {
        for (d, ok) in h.await.expect("client") {
            all.push(d);
            other += usize::from(!ok);
        }
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    gw.shutdown();
    gw.wait().await;
    (rate, percentile(&all, 0.5), percentile(&all, 0.99), other)
}

/// A Redis engine on `target` holding `spec`, once it has settled.
async fn redis_engine(target: &RedisTarget, spec: KeySpec) -> Engine {
    let settings = RedisSettings {
        target: target.clone(),
        ca_file: None,
        key_prefix: "bench:".into(),
        fail: FailMode::Closed,
        replicas: 1,
        timeout: Duration::from_millis(50),
        min_rate_fraction: PlanPolicy::default().min_rate_fraction,
        probe_interval: Duration::from_millis(500),
    };
    let q = RedisQuota::new(&settings, vec![spec], None).expect("engine");
    while !q.is_settled() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Engine::Redis(q)
}

fn main() {
    if Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        println!("redis-server is not installed (deploy/ci-install-redis.sh): nothing to measure");
        return;
    }
    let redis = start_redis().expect("redis-server starts");
    let url = format!("redis://127.0.0.1:{}/0", redis.1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("quota check latency (reject mode, always admitted), loopback redis-server");
        let spec = || KeySpec::new(roomy_plan(), 0).with_name("cli_bench:POST /bench");
        let local = Engine::local(vec![spec()]);
        let single = RedisTarget::Url(Secret::new(url.clone()));
        let shared = redis_engine(&single, spec()).await;
        let cluster = start_cluster();
        let on_cluster = match &cluster {
            Some((servers, _)) => {
                let target = RedisTarget::Cluster(ClusterTarget {
                    nodes: servers.iter().map(|s| format!("127.0.0.1:{}", s.1)).collect(),
                    tls: false,
                    auth: NodeAuth::default(),
                });
                Some(redis_engine(&target, spec()).await)
            }
            None => {
                println!("  (no Redis Cluster: redis-cli --cluster create failed; its rows are left out)");
                None
            }
        };
        let _ = sequential(&shared, 2_000).await; // warm up
        if let Some(c) = &on_cluster {
            let _ = sequential(c, 2_000).await;
        }
        println!(
            "  {:<28} {:>9} {:>9} {:>12}",
            "", "p50 µs", "p99 µs", "checks/s"
        );
        let mut rows = vec![("local", &local), ("redis", &shared)];
        if let Some(c) = &on_cluster {
            rows.push(("redis cluster", c));
        }
        for (name, engine) in rows {
            let lat = sequential(engine, 20_000).await;
            let total: f64 = lat.iter().map(|d| d.as_secs_f64()).sum();
            println!(
                "  {:<28} {:>9.1} {:>9.1} {:>12.0}",
                format!("{name}, 1 caller"),
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                lat.len() as f64 / total
            );
            let (lat, rate) = concurrent(engine, 64, 1_000).await;
            println!(
                "  {:<28} {:>9.1} {:>9.1} {:>12.0}",
                format!("{name}, 64 concurrent"),
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                rate
            );
        }

        drop(on_cluster);
        drop(cluster);
        if std::env::args().any(|a| a == "latency") {
            return;
        }
        println!();
        println!("sustained overload, seed limits, 3 replicas x 4 callers, 65 s");
        let (times, failed) = overload(&url, 65).await;
        let last_minute = times.iter().filter(|&&t| t >= 5.0).count();
        println!(
            "  admitted in the last 60 s: {last_minute} ({:.2}% of 1000); first second: {}; calls timed out: {failed}",
            last_minute as f64 / 10.0,
            times.iter().filter(|&&t| t < 1.0).count()
        );
        println!(
            "  most within any 1.1 s: {} (<= 50); within any 60.1 s: {} (<= 1000)",
            max_within(&times, 1.1),
            max_within(&times, 60.1)
        );

        println!();
        println!("gateway throughput, 64 clients, 4 s each, simulated Feishu (quota off)");
        let mut sim_config = SimConfig::with_app(APP_ID, APP_SECRET);
        sim_config.quota = QuotaMode::Off;
        sim_config.record_requests = false;
        let sim = Arc::new(SimFeishu::start(sim_config).await.expect("sim"));
        println!(
            "  {:<10} {:>10} {:>9} {:>9} {:>9}",
            "backend", "req/s", "p50 µs", "p99 µs", "not 200"
        );
        let redis_quota = format!(
            "[quota]\nbackend = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"bench-gw:\"\nreplicas = 1\n"
        );
        // Twice each, alternating, so a noisy neighbour shows.
        for round in 1..=2 {
            for (name, quota) in [("local", ""), ("redis", redis_quota.as_str())] {
                let (rate, p50, p99, other) = gateway_load(&sim, quota, 64, 4).await;
                let label = format!("{name} #{round}");
                println!("  {label:<10} {rate:>10.0} {p50:>9.0} {p99:>9.0} {other:>9}");
            }
        }
    });
}
