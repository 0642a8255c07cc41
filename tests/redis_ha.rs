//! Quotas and tickets shared through a highly available Redis: a Redis
//! Cluster (3 primaries, a replica each) and a Sentinel set (a primary, a
//! replica, 3 sentinels), real `redis-server` processes each test starts on
//! free ports (no persistence) and kills at the end (`support::redis_ha`).
//! Three gateways flooding one quota through them, a primary killed
//! mid-flood, a store app's ticket across a failover, passwords; the
//! simulated Feishu counts violations at arrival. The figures (recovery
//! times, admissions, violations) are printed: `cargo test --test redis_ha
//! -- --nocapture` shows them.
//!
//! One test at a time ([`ONE_AT_A_TIME`]): each runs up to 6 Redis
//! processes and 3 gateways, and times failovers.
//!
//! Without `redis-server` and `redis-cli` on PATH the tests are skipped
//! with a note, except under `CI=true`, where they fail
//! (`deploy/ci-install-redis.sh` installs them).

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::config::{App, Client, LogFormat, Quota, QuotaFail};
use support::fleet::{fleet, ok_count, seed_curve, Fleet, Sent};
use support::redis_ha::{
    cluster_or_skip, connect, sentinel_or_skip, RedisCluster, RedisSentinelSet, SentinelAuth,
};
use support::store_app::*;
use support::*;

/// Each test holds it throughout: the machine may have 2 cores, and a
/// failover's timing or a flood's 50 ms Redis timeouts must not depend on
/// what another test runs meanwhile.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The hash tag of put_top_notice's quota key for the test app: its `tat`
/// and `pause` keys live in this slot.
fn put_tag() -> String {
    format!("{{{APP_ID}:POST {PUT_ROUTE}}}")
}

/// put_top_notice's `tat` key for the test app, with the default prefix.
fn put_tat_key() -> String {
    format!("feishu-gateway:quota:{}:tat", put_tag())
}

// ----- a Cluster or a Sentinel set, alike ------------------------------------

#[derive(Debug, Clone, Copy)]
enum Kind {
    Cluster,
    Sentinel,
}

/// The highly available Redis a test runs on, and how the gateway uses it.
struct Ha {
    nodes: Nodes,
    /// `redis_db` (Sentinel only).
    db: u32,
}

enum Nodes {
    Cluster(RedisCluster),
    Sentinel(RedisSentinelSet),
}

/// The data nodes' password, when a test sets one (in the gateway's
/// environment as `REDIS_PASSWORD`).
const HA_PASSWORD_ENV: &str = "REDIS_PASSWORD";

impl Ha {
    /// A cluster of 3 primaries with a replica each, or a Sentinel set;
    /// `None` when Redis is not installed (the test is skipped).
    async fn start(kind: Kind) -> Option<Ha> {
        Ha::start_with(kind, None, 0).await
    }

    /// [`Ha::start`] with the data nodes requiring `password`, the gateway
    /// using database `db` (Sentinel only).
    async fn start_with(kind: Kind, password: Option<&str>, db: u32) -> Option<Ha> {
        let nodes = match kind {
            Kind::Cluster => {
                assert_eq!(db, 0, "a Cluster has database 0 only");
                Nodes::Cluster(RedisCluster::start_with(3, 1, password).await?)
            }
            Kind::Sentinel => Nodes::Sentinel(
                RedisSentinelSet::start_with(SentinelAuth {
                    data: password,
                    sentinels: None,
                })
                .await?,
            ),
        };
        Some(Ha { nodes, db })
    }

    fn name(&self) -> &'static str {
        match &self.nodes {
            Nodes::Cluster(_) => "cluster",
            Nodes::Sentinel(_) => "sentinel",
        }
    }

    fn password(&self) -> Option<&str> {
        match &self.nodes {
            Nodes::Cluster(c) => c.password(),
            Nodes::Sentinel(s) => s.data_password(),
        }
    }

    /// The addresses the gateway is given: the cluster's three first
    /// primaries as seed nodes (so that a killed primary is a dead seed),
    /// or the three sentinels.
    fn addresses(&self) -> Vec<String> {
        match &self.nodes {
            Nodes::Cluster(c) => c.seed_nodes()[..3].to_vec(),
            Nodes::Sentinel(s) => s.sentinels(),
        }
    }

    /// `config` with `[quota]` on it for `replicas` replicas, failing as
    /// `fail` says, and the password in the environment.
    fn configure(&self, config: GatewayConfig, fail: QuotaFail, replicas: u32) -> GatewayConfig {
        let mut q = match &self.nodes {
            Nodes::Cluster(_) => Quota::cluster(&self.addresses()),
            Nodes::Sentinel(s) => Quota::sentinel(&self.addresses(), s.master_name()),
        };
        if self.db != 0 {
            q = q.redis_db(self.db);
        }
        if self.password().is_some() {
            q = q.redis_password_env(HA_PASSWORD_ENV);
        }
        let config = config.quota(q.fail(fail).replicas(replicas));
        match self.password() {
            Some(p) => config.env(HA_PASSWORD_ENV, p),
            None => config,
        }
    }

    /// What `/readyz` names as the quota's target.
    fn target(&self) -> String {
        let nodes = self.addresses().join(",");
        match &self.nodes {
            Nodes::Cluster(_) => format!("redis-cluster://{nodes}"),
            Nodes::Sentinel(s) => {
                format!("redis-sentinel://{nodes}/{}/{}", s.master_name(), self.db)
            }
        }
    }

    /// Kills the primary that holds `key` (a Sentinel set has one).
    async fn kill_primary_of(&mut self, key: &str) {
        match &mut self.nodes {
            Nodes::Cluster(c) => {
                let i = c.primary_for_key(key).await;
                c.kill(i).await;
            }
            Nodes::Sentinel(s) => s.kill_primary().await,
        }
    }

    /// Waits until the killed primary's replica has taken over; how long
    /// after the kill.
    async fn wait_failover(&self, limit: Duration) -> Duration {
        match &self.nodes {
            Nodes::Cluster(c) => c.wait_failover(limit).await,
            Nodes::Sentinel(s) => s.wait_new_primary(limit).await,
        }
    }

    /// Until every node of it knows the new primary: every cluster node
    /// (as [`Ha::wait_failover`] already waits for), or all three
    /// sentinels.
    async fn wait_settled(&self) {
        if let Nodes::Sentinel(s) = &self.nodes {
            s.wait_sentinels_agree(Duration::from_secs(10)).await;
        }
    }

    /// `GET key` in database `db` on the primary that holds it now.
    async fn get_in(&self, db: u32, key: &str) -> Option<String> {
        let port = match &self.nodes {
            Nodes::Cluster(c) => c.port(c.primary_for_key(key).await),
            Nodes::Sentinel(s) => s.data_port(s.current_primary().await),
        };
        let mut c = connect(port, self.password()).await.unwrap();
        let (v,): (Option<String>,) = redis::pipe()
            .cmd("SELECT")
            .arg(db)
            .ignore()
            .cmd("GET")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        v
    }

    /// `GET key` in the gateway's database on the primary that holds it now.
    async fn get(&self, key: &str) -> Option<String> {
        self.get_in(self.db, key).await
    }

    /// Until `key`'s primary's replica has every write it took.
    async fn wait_replicated(&self, key: &str) {
        match &self.nodes {
            Nodes::Cluster(c) => c.wait_replicated(c.primary_for_key(key).await).await,
            Nodes::Sentinel(s) => s.wait_replicated().await,
        }
    }
}

/// The value of a counter in a gateway's exposition (0 when absent).
fn counter(metrics: &str, series: &str) -> f64 {
    metric_value(metrics, series).unwrap_or(0.0)
}

const TIMEOUTS: &str = r#"feishu_gateway_quota_backend_errors_total{kind="timeout"}"#;
const CONNECTION_ERRORS: &str = r#"feishu_gateway_quota_backend_errors_total{kind="connection"}"#;
/// Error replies, CROSSSLOT among them.
const SERVER_ERRORS: &str = r#"feishu_gateway_quota_backend_errors_total{kind="server"}"#;
const FALLBACKS: &str = "feishu_gateway_quota_backend_fallbacks_total";

// ----- floods through a healthy Cluster or Sentinel set -----------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_three_gateways_flooded_forward_one_quota() {
    three_gateways_flooded_forward_one_quota(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_three_gateways_flooded_forward_one_quota() {
    three_gateways_flooded_forward_one_quota(Kind::Sentinel).await;
}

/// As `tests/redis.rs`' `three_replicas_flooded_in_reject_mode_forward_one_quota`
/// on one server: the fleet forwards what one gateway would, Feishu sees no
/// violation, and no call fails (no CROSSSLOT, no redirection left
/// unfollowed).
async fn three_gateways_flooded_forward_one_quota(kind: Kind) {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(ha) = Ha::start(kind).await else {
        return;
    };
    let f = Arc::new(fleet(3, sim_config(), |c| ha.configure(c, QuotaFail::Local, 3)).await);
    for i in 0..3 {
        let v = f.readyz(i).await.json();
        assert_eq!(v["quota"]["state"], "shared", "{v}");
        assert_eq!(v["quota"]["target"], ha.target(), "{v}");
    }
    let started = Instant::now();
    let answers = f.flood(2, started + Duration::from_secs(4), &[]).await;
    let took = started.elapsed();
    let ok = ok_count(&answers);
    assert!(
        answers
            .iter()
            .all(|a| a.0 == StatusCode::OK || a.0 == StatusCode::TOO_MANY_REQUESTS),
        "only 200 and 429"
    );
    f.check_feishu_saw_no_violation();
    assert_eq!(f.sim.requests().len(), ok, "rejected requests never left");
    let curve = seed_curve(took);
    let (mut late, mut failed, mut fallbacks) = (0.0, 0.0, 0.0);
    for i in 0..3 {
        let m = f.metrics(i).await;
        late += counter(&m, TIMEOUTS);
        failed += counter(&m, SERVER_ERRORS) + counter(&m, CONNECTION_ERRORS);
        assert!(m.contains("feishu_gateway_quota_backend_up 1"), "{m}");
        fallbacks += counter(&m, FALLBACKS);
    }
    println!(
        "{}: 3 gateways x 2 senders for {took:.2?}: {ok} forwarded of {} (the plan allows {curve}), {late} calls timed out, {fallbacks} fallbacks, 0 violations",
        ha.name(),
        answers.len()
    );
    assert_eq!(failed, 0.0, "no call failed (CROSSSLOT, MOVED, connection)");
    assert!(
        ok + late as usize + 4 >= curve && ok <= curve + 1,
        "forwarded {ok} ({late} calls timed out), the plan allows {curve} in {took:?}"
    );
}

/// Several apps' quota keys (and their budget keys) land on several
/// primaries, every script's keys in one slot: a 429 from Feishu writes the
/// key's pause beside its `tat`, and no call is refused with CROSSSLOT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keys_of_several_apps_spread_over_the_primaries() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = cluster_or_skip!(3, 1);
    const APPS: usize = 8;
    let app_id = |i: usize| format!("cli_spread{i:08}");
    let key_of = |i: usize| format!("client-key-spread-{i}-0123456789");
    let mut sim = sim_config();
    for i in 0..APPS {
        sim.apps.push(SimApp::new(app_id(i), APP_SECRET));
    }
    let quota = Quota::cluster(&cluster.seed_nodes()[..3]).replicas(2);
    let f = fleet(2, sim, |mut c| {
        for i in 0..APPS {
            c = c
                .app(
                    App::self_built(&format!("app-{i}"), &app_id(i), "APP_SECRET")
                        .monthly_budget(10_000),
                )
                .client(Client::new(
                    &format!("client-{i}"),
                    &format!("CLIENT_KEY_{i}"),
                    &format!("app-{i}"),
                ))
                .env(&format!("CLIENT_KEY_{i}"), key_of(i));
        }
        c.quota(quota)
    })
    .await;
    for i in 0..APPS {
        for gw in &f.gws {
            let a = put_as(&f.client, gw.addr(), &key_of(i), PUT_PATH, &[]).await;
            assert_eq!(a.status, StatusCode::OK, "app {i}: {}", a.text());
        }
    }
    // Feishu says 429 to app 0: its pause is written for every replica.
    f.sim
        .answer_next_with_code(99991400, StatusCode::TOO_MANY_REQUESTS, 1);
    let a = put_as(&f.client, f.gws[0].addr(), &key_of(0), PUT_PATH, &[]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    // The other replica sees the pause (written to Redis after the answer).
    wait_for(Duration::from_secs(2), || async {
        let b = put_as(&f.client, f.gws[1].addr(), &key_of(0), PUT_PATH, &[]).await;
        b.status == StatusCode::TOO_MANY_REQUESTS
            && b.header("x-gateway-error") == Some("rate-limited")
    })
    .await;

    let primaries = cluster.primaries().await;
    let mut holders = std::collections::BTreeMap::new();
    let mut report = Vec::new();
    for &p in &primaries {
        let keys = cluster.keys_on(p, "feishu-gateway:*").await;
        report.push(format!(
            "node {p}: {} quota keys, {} budget keys",
            keys.iter().filter(|k| k.contains(":quota:")).count(),
            keys.iter().filter(|k| k.contains(":budget:")).count()
        ));
        for k in keys {
            holders.insert(k, p);
        }
    }
    println!(
        "cluster: {APPS} apps' keys over the primaries: {}",
        report.join("; ")
    );
    let mut quota_nodes = std::collections::BTreeSet::new();
    for i in 0..APPS {
        let tat = format!(
            "feishu-gateway:quota:{{{}:POST {PUT_ROUTE}}}:tat",
            app_id(i)
        );
        let node = holders
            .get(&tat)
            .unwrap_or_else(|| panic!("{tat} on no primary: {holders:?}"));
        quota_nodes.insert(*node);
    }
    assert!(quota_nodes.len() > 1, "on one primary only: {holders:?}");
    let tat0 = format!(
        "feishu-gateway:quota:{{{}:POST {PUT_ROUTE}}}:tat",
        app_id(0)
    );
    let pause0 = tat0.replace(":tat", ":pause");
    assert_eq!(holders.get(&pause0), holders.get(&tat0), "{holders:?}");
    assert!(
        holders.keys().filter(|k| k.contains(":budget:")).count() >= APPS,
        "every app's monthly count: {holders:?}"
    );
    for i in 0..2 {
        let m = f.metrics(i).await;
        assert_eq!(counter(&m, SERVER_ERRORS), 0.0, "no CROSSSLOT: {m}");
        assert_eq!(counter(&m, CONNECTION_ERRORS), 0.0, "{m}");
    }
}

// ----- a primary killed mid-flood ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_primary_killed_mid_flood_service_continues_and_the_fleet_returns() {
    primary_killed_mid_flood(Kind::Cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_primary_killed_mid_flood_service_continues_and_the_fleet_returns() {
    primary_killed_mid_flood(Kind::Sentinel).await;
}

/// When each gateway left shared limiting after the kill, and when it was
/// back.
#[derive(Debug, Default, Clone, Copy)]
struct Followed {
    left: Option<Duration>,
    back: Option<Duration>,
}

/// Polls the gateways' `quota.state` from `killed` on until each has left
/// "shared" and come back, or, for one that never left, until `idle` has
/// passed since the kill.
async fn follow_states(f: Arc<Fleet>, killed: Instant, idle: Duration) -> Vec<Followed> {
    let mut seen = vec![Followed::default(); f.gws.len()];
    let deadline = killed + Duration::from_secs(30);
    loop {
        for (i, s) in seen.iter_mut().enumerate() {
            let state = f.quota_state(i).await;
            let at = killed.elapsed();
            match (state == "shared", s.left, s.back) {
                (false, None, _) => s.left = Some(at),
                (true, Some(_), None) => s.back = Some(at),
                _ => {}
            }
        }
        let settled = seen
            .iter()
            .all(|s| s.back.is_some() || (s.left.is_none() && killed.elapsed() > idle));
        if settled || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three gateways (`fail = "local"`) flood put_top_notice; the primary
/// holding its key is killed 2 s in. Every request is answered (200 or
/// 429, never slowly), Feishu sees no violation (during the failover each
/// replica uses its local third, started empty; after it the heal drains
/// the key from the heal time on, which also covers admissions the killed
/// primary took but had not replicated), and every gateway shares the
/// quota again within seconds.
async fn primary_killed_mid_flood(kind: Kind) {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(mut ha) = Ha::start(kind).await else {
        return;
    };
    let f = Arc::new(fleet(3, sim_config(), |c| ha.configure(c, QuotaFail::Local, 3)).await);
    let t0 = Instant::now();
    let flood = {
        let f = Arc::clone(&f);
        tokio::spawn(async move { f.flood_sent(2, t0 + Duration::from_secs(10), &[]).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    ha.kill_primary_of(&put_tat_key()).await;
    let watch = tokio::spawn(follow_states(
        Arc::clone(&f),
        killed,
        Duration::from_secs(8),
    ));
    let failover = ha.wait_failover(Duration::from_secs(15)).await;
    let states = watch.await.unwrap();
    let answers: Vec<Sent> = flood.await.unwrap();
    let took = t0.elapsed();

    let name = ha.name();
    let recovered = states.iter().filter_map(|s| s.back).max();
    println!("{name}: primary killed at +2 s; new primary after {failover:.2?}");
    for (i, s) in states.iter().enumerate() {
        println!(
            "{name}:   gateway {i}: left shared at {:.2?}, shared again at {:.2?}",
            s.left, s.back
        );
    }
    let violations = f.sim.violations();
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let outage = killed..killed + recovered.unwrap_or(failover);
    let ok_in_outage = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK && outage.contains(&a.at))
        .count();
    let slowest = answers.iter().map(|a| a.took).max().unwrap();
    let in_1s = f
        .sim
        .max_in_any_window(APP_ID, "put_top_notice", Duration::from_secs(1));
    let mut fallbacks = 0.0;
    let mut late = 0.0;
    for i in 0..3 {
        let m = f.metrics(i).await;
        fallbacks += counter(&m, FALLBACKS);
        late += counter(&m, TIMEOUTS);
    }
    println!(
        "{name}: all 3 gateways shared again {:.2?} after the kill; {ok} forwarded of {} in {took:.2?} (the plan allows {} to one quota), {ok_in_outage} of them while the fleet was away; slowest answer {slowest:.2?}; {fallbacks} fallbacks, {late} calls timed out; Feishu saw at most {in_1s} in 1 s and {violations} violations",
        recovered.unwrap_or_default(),
        answers.len(),
        seed_curve(took)
    );

    let other: Vec<_> = answers
        .iter()
        .filter(|a| a.status != StatusCode::OK && a.status != StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(
        other.is_empty(),
        "fail = \"local\" answers 200 or 429: {other:?}"
    );
    assert!(slowest < Duration::from_secs(2), "slowest {slowest:?}");
    assert_eq!(violations, 0, "Feishu counted violations");
    assert!(in_1s <= 50, "{in_1s} in one second");
    for (i, s) in states.iter().enumerate() {
        assert!(
            s.left.is_none() || s.back.is_some(),
            "gateway {i} never shared the quota again: {s:?}"
        );
    }
    for i in 0..3 {
        assert_eq!(f.quota_state(i).await, "shared", "gateway {i}");
    }
    let recovered = recovered.unwrap_or(failover);
    assert!(recovered < Duration::from_secs(15), "{recovered:?}");
    assert!(
        ok_in_outage > 0,
        "forwarded while the fleet was away (each replica its third)"
    );
    // The local thirds start empty and the heal drains the key: no fresh
    // burst on either switch (a few more for the local plans' rounding).
    assert!(ok <= seed_curve(took) + 3, "{ok} forwarded");
}

// ----- the store app's ticket ---------------------------------------------------

/// On database 2 of the Sentinel set's primary.
#[tokio::test]
async fn sentinel_a_store_apps_ticket_survives_the_failover() {
    ticket_survives_the_failover(Kind::Sentinel, None, 2).await;
}

/// With a password on every cluster node.
#[tokio::test]
async fn cluster_a_store_apps_ticket_survives_the_failover() {
    ticket_survives_the_failover(Kind::Cluster, Some("cluster-pass-Walrus5-93be10"), 0).await;
}

/// The ticket pushed to one replica is in Redis, replicated; its primary
/// dies; the new primary holds it, and a replica started after the
/// failover serves a tenant at once, without asking Feishu to resend it.
/// (`password`: the data nodes'; `db`: the gateway's database.)
async fn ticket_survives_the_failover(kind: Kind, password: Option<&str>, db: u32) {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(mut ha) = Ha::start_with(kind, password, db).await else {
        return;
    };
    let sim = SimFeishu::start(sim_store(&["tenant_a"])).await.unwrap();
    let client = http_client();
    let config = ha.configure(store_config(&sim, 100), QuotaFail::Local, 2);
    let a = start_replica(&sim, &config, true).await;
    wait_ready(&client, &a).await;
    assert_eq!(resends(&sim), 1);
    let ticket = sim.current_ticket(STORE_APP_ID).expect("a ticket");
    let kept = |raw: Option<String>| {
        let raw = raw.expect("the ticket is in Redis");
        let t = StoredTicket::from_json(raw.as_bytes()).expect("a ticket document");
        t.ticket.expose().to_string()
    };
    assert_eq!(kept(ha.get(TICKET_KEY).await), ticket);
    if db != 0 {
        assert_eq!(ha.get_in(0, TICKET_KEY).await, None, "not in database 0");
    }
    assert_eq!(put_to(&client, a.addr(), Some("tenant_a")).await.code(), 0);

    ha.wait_replicated(TICKET_KEY).await;
    ha.kill_primary_of(TICKET_KEY).await;
    let failover = ha.wait_failover(Duration::from_secs(15)).await;
    assert_eq!(kept(ha.get(TICKET_KEY).await), ticket, "on the new primary");
    ha.wait_settled().await;

    let started = Instant::now();
    let b = start_replica(&sim, &config, false).await;
    let answer = put_to(&client, b.addr(), Some("tenant_a")).await;
    assert_eq!(answer.code(), 0, "{:?}", answer.body);
    println!(
        "{}: the ticket survived the failover ({failover:.2?}); a replica started after it served a tenant in {:.2?}",
        ha.name(),
        started.elapsed()
    );
    assert_eq!(resends(&sim), 1, "no resend for B");
    // A, which lived through the failover, serves too.
    wait_for(Duration::from_secs(15), || async {
        put_to(&client, a.addr(), Some("tenant_a")).await.code() == 0
    })
    .await;
    assert_eq!(resends(&sim), 1);
    let ready = readyz_text(&client, &a).await;
    assert!(ready.contains(&ha.target()), "{ready}");
    if let Some(pw) = password {
        let metrics = metrics_of(&client, &a).await;
        assert!(
            !ready.contains(pw) && !metrics.contains(pw),
            "the password shown"
        );
    }
}

async fn readyz_text(client: &HttpClient, gw: &Runtime) -> String {
    admin_get(client, gw, "/readyz").await.text()
}

// ----- a machine that hangs ---------------------------------------------------------

/// The first sentinel the gateways list hangs (SIGSTOP: it accepts
/// connections and never answers, as on a machine that froze) and the
/// primary dies: the two other sentinels fail over, a gateway that lived
/// through it follows the new primary, and one started afterwards finds it
/// (each only slowed by the sentinel that never answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_a_hung_first_sentinel_and_a_dead_primary_the_gateways_still_follow() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(mut ha) = Ha::start(Kind::Sentinel).await else {
        return;
    };
    let sim = SimFeishu::start(sim_config()).await.unwrap();
    let config = ha.configure(GatewayConfig::new(&sim.base_url()), QuotaFail::Local, 2);
    let client = http_client();
    let a = start_gateway(&config).await;
    wait_ready(&client, &a).await;
    assert_eq!(
        put_at(&client, a.addr(), PUT_PATH, &[]).await.status,
        StatusCode::OK
    );
    let Nodes::Sentinel(set) = &mut ha.nodes else {
        unreachable!()
    };
    set.freeze_sentinel(0);
    let killed = Instant::now();
    set.kill_primary().await;
    let failover = set.wait_new_primary(Duration::from_secs(15)).await;
    let quota_state = |gw: &Runtime| {
        let client = client.clone();
        let admin = gw.admin_addr();
        async move {
            let v = get(&client, admin, "/readyz").await.json();
            v["quota"]["state"].as_str().unwrap_or("?").to_string()
        }
    };
    // A writes to the new primary again.
    let c = set.primary_conn().await;
    let writes_there = |gw: &Runtime| {
        let client = client.clone();
        let addr = gw.addr();
        let mut c = c.clone();
        async move {
            let _: () = redis::cmd("DEL")
                .arg(put_tat_key())
                .query_async(&mut c)
                .await
                .unwrap();
            put_at(&client, addr, PUT_PATH, &[]).await;
            redis::cmd("EXISTS")
                .arg(put_tat_key())
                .query_async::<bool>(&mut c)
                .await
                .unwrap()
        }
    };
    wait_for(Duration::from_secs(20), || async {
        quota_state(&a).await == "shared" && writes_there(&a).await
    })
    .await;
    let followed = killed.elapsed();
    // B starts now, its first sentinel still hung.
    let started = Instant::now();
    let b = start_gateway(&config).await;
    wait_for(Duration::from_secs(20), || async {
        quota_state(&b).await == "shared" && writes_there(&b).await
    })
    .await;
    let found = started.elapsed();
    println!(
        "sentinel, first sentinel hung: new primary after {failover:.2?}; a gateway followed it {followed:.2?} after the kill; one started afterwards shared the quota after {found:.2?}"
    );
    assert_eq!(sim.violations(), 0);
}

// ----- passwords -------------------------------------------------------------

/// A `feishu-gateway serve` process (JSON logs at debug), its log lines
/// kept as they come; killed on drop.
struct GatewayProcess {
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    _file: tempfile::NamedTempFile,
}

/// `field` of a JSON log line, at the top or in its `fields`.
fn log_field<'a>(line: &'a serde_json::Value, field: &str) -> Option<&'a str> {
    line[field].as_str().or(line["fields"][field].as_str())
}

impl GatewayProcess {
    async fn start(config: &GatewayConfig) -> GatewayProcess {
        let config = config
            .clone()
            .log_format(LogFormat::Json)
            .log_level("debug");
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, config.text().as_bytes()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_feishu-gateway"))
            .args(["serve", "--config"])
            .arg(file.path())
            .envs(config.env_vars().iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let outputs: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for out in outputs {
            let logs = Arc::clone(&logs);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let mut gw = GatewayProcess {
            child: Some(child),
            logs,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            _file: file,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = gw.logs.lock().unwrap().iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                if log_field(&v, "message") != Some("feishu-gateway listening") {
                    return None;
                }
                let addr = |k: &str| log_field(&v, k)?.parse::<SocketAddr>().ok();
                Some((addr("addr")?, addr("admin_addr")?))
            });
            if let Some((addr, admin_addr)) = found {
                gw.addr = addr;
                gw.admin_addr = admin_addr;
                return gw;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not start: {:#?}",
                gw.logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn admin(&self, client: &HttpClient, path: &str) -> Answer {
        get(client, self.admin_addr, path).await
    }

    /// SIGTERM, then every line it wrote.
    async fn stop(mut self) -> Vec<String> {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let logs = self.logs.lock().unwrap().clone();
        logs
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const DATA_PASSWORD: &str = "data-pass-Hunter2-7f3a9c";
const SENTINEL_PASSWORD: &str = "sentinel-pass-Zebra9-41c0d2";

/// Sentinels and data nodes each with a password (from the environment):
/// the gateway shares its quota through them, follows a failover with the
/// data nodes' password, and neither password appears in its logs (at
/// debug, failover errors included), `/readyz` or `/metrics`.
#[tokio::test]
async fn sentinel_with_passwords_follows_a_failover_and_never_shows_them() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(mut set) = RedisSentinelSet::start_with(SentinelAuth {
        data: Some(DATA_PASSWORD),
        sentinels: Some(SENTINEL_PASSWORD),
    })
    .await
    else {
        return;
    };
    let sim = SimFeishu::start(sim_config()).await.unwrap();
    let config = GatewayConfig::new(&sim.base_url())
        .quota(
            Quota::sentinel(&set.sentinels(), set.master_name())
                .redis_password_env("REDIS_PASSWORD")
                .redis_sentinel_password_env("REDIS_SENTINEL_PASSWORD")
                .replicas(1),
        )
        .env("REDIS_PASSWORD", DATA_PASSWORD)
        .env("REDIS_SENTINEL_PASSWORD", SENTINEL_PASSWORD);
    let gw = GatewayProcess::start(&config).await;
    let client = http_client();
    let state = |gw: &GatewayProcess| {
        let client = client.clone();
        let admin = gw.admin_addr;
        async move {
            let v = get(&client, admin, "/readyz").await.json();
            v["quota"]["state"].as_str().unwrap_or("?").to_string()
        }
    };
    wait_for(Duration::from_secs(10), || async {
        state(&gw).await == "shared"
    })
    .await;
    assert_eq!(
        put_at(&client, gw.addr, PUT_PATH, &[]).await.status,
        StatusCode::OK
    );
    // The quota key is in Redis: the password was used.
    let mut c = set.primary_conn().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(put_tat_key())
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(exists, "{} in Redis", put_tat_key());

    set.kill_primary().await;
    let failover = set.wait_new_primary(Duration::from_secs(15)).await;
    let killed_for = Instant::now();
    wait_for(Duration::from_secs(15), || async {
        put_at(&client, gw.addr, PUT_PATH, &[]).await;
        state(&gw).await == "shared"
    })
    .await;
    println!(
        "sentinel with passwords: new primary after {failover:.2?}, the gateway shared again {:.2?} later",
        killed_for.elapsed()
    );
    // It writes to the new primary, with the password.
    let c = set.primary_conn().await;
    wait_for(Duration::from_secs(5), || {
        let mut c = c.clone();
        let client = client.clone();
        let addr = gw.addr;
        async move {
            put_at(&client, addr, PUT_PATH, &[]).await;
            redis::cmd("EXISTS")
                .arg(put_tat_key())
                .query_async::<bool>(&mut c)
                .await
                .unwrap()
        }
    })
    .await;

    let ready = gw.admin(&client, "/readyz").await.text();
    let metrics = gw.admin(&client, "/metrics").await.text();
    let logs = gw.stop().await;
    let target = format!(
        "redis-sentinel://{}/{}/0",
        set.sentinels().join(","),
        set.master_name()
    );
    assert!(ready.contains(&target), "{ready}");
    assert!(logs.len() > 5, "{logs:#?}");
    for (what, text) in [
        ("/readyz", ready),
        ("/metrics", metrics),
        ("the logs", logs.join("\n")),
    ] {
        for pw in [DATA_PASSWORD, SENTINEL_PASSWORD] {
            assert!(!text.contains(pw), "a password in {what}");
        }
    }
}

// ----- the harness itself -----------------------------------------------------

#[tokio::test]
async fn a_cluster_forms_and_a_replica_takes_over_a_killed_primary_with_its_data() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let mut cluster = cluster_or_skip!(3, 1);
    println!("cluster of 6 formed in {:.2?}", started.elapsed());
    assert_eq!(cluster.seed_nodes().len(), 6);
    assert_eq!(cluster.primaries().await, [0, 1, 2]);

    // Keys land on the primary that serves their slot; hash tags put keys
    // together.
    let mut owners = std::collections::BTreeSet::new();
    for k in ["a", "b", "c", "d", "e", "f"] {
        let key = format!("{{{k}}}:x");
        let owner = cluster.primary_for_key(&key).await;
        owners.insert(owner);
        let mut c = cluster.conn(owner).await;
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(k)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(
            cluster.primary_for_key(&format!("{{{k}}}:y")).await,
            owner,
            "one hash tag, one slot"
        );
        let keys = cluster.keys_on(owner, "{*}:x").await;
        assert!(keys.contains(&key), "{key} on node {owner}: {keys:?}");
    }
    assert!(owners.len() > 1, "keys spread over primaries: {owners:?}");

    // The primary of {a} dies: its replica takes over within seconds, with
    // what was replicated.
    let victim = cluster.primary_for_key("{a}:x").await;
    let seen = cluster.nodes_seen_by(victim).await.unwrap();
    assert!(seen.iter().any(|n| n.is_primary() && !n.slots.is_empty()));
    let victim_id = &seen
        .iter()
        .find(|n| n.port == cluster.port(victim))
        .unwrap()
        .id;
    let replicas: Vec<usize> = seen
        .iter()
        .filter(|n| n.primary.as_ref() == Some(victim_id))
        .map(|n| cluster.index_of(n.port))
        .collect();
    cluster.wait_replicated(victim).await;
    cluster.kill(victim).await;
    let took = cluster.wait_failover(Duration::from_secs(15)).await;
    println!("cluster failover (node timeout 1 s): {took:.2?}");
    let heir = cluster.primary_for_key("{a}:x").await;
    assert_ne!(heir, victim);
    assert!(replicas.contains(&heir), "{heir}, not one of {replicas:?}");
    let v: Option<String> = cluster
        .query(heir, redis::cmd("GET").arg("{a}:x"))
        .await
        .unwrap();
    if v.as_deref() != Some("a") {
        let repl: String = cluster
            .query(heir, redis::cmd("INFO").arg("replication"))
            .await
            .unwrap();
        panic!("{{a}}:x on node {heir}: {v:?}\n{repl}");
    }
    assert!(took < Duration::from_secs(10), "{took:?}");

    // Back, it rejoins as a replica.
    cluster.restart(victim).await;
    assert_eq!(cluster.primaries().await.len(), 3);
    assert!(!cluster.primaries().await.contains(&victim));
}

#[tokio::test]
async fn a_sentinel_set_forms_and_fails_over_to_the_replica_with_its_data() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let mut set = sentinel_or_skip!();
    println!("sentinel set formed in {:.2?}", started.elapsed());
    assert_eq!(set.sentinels().len(), 3);
    assert_eq!(set.master_name(), "gw");
    assert_eq!(set.current_primary().await, 0);
    let mut c = set.primary_conn().await;
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    set.wait_replicated().await;
    set.kill_primary().await;
    let took = set.wait_new_primary(Duration::from_secs(15)).await;
    println!("sentinel failover (down-after 1 s): {took:.2?}");
    assert_eq!(set.current_primary().await, 1);
    set.wait_sentinels_agree(Duration::from_secs(10)).await;
    let mut c = set.primary_conn().await;
    let v: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, "v");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
