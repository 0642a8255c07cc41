//! Highly available Redis of the test's own, from real `redis-server`
//! processes on free loopback ports, without persistence, killed on drop:
//! a Redis Cluster ([`RedisCluster`]: primaries and their replicas, made by
//! `redis-cli --cluster create`) and a Sentinel set ([`RedisSentinelSet`]:
//! a primary, its replica and three sentinels watching them as `gw`).
//! Both can kill a primary and measure how long the failover takes.
//!
//! Without `redis-server` (or, for a cluster, `redis-cli`) on PATH, `start`
//! returns `None` after a note (the test is skipped), except under
//! `CI=true`, where it fails (`deploy/ci-install-redis.sh` installs both).

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisResult};

use super::redis_server::{installed, RedisServer};

/// `n` distinct free loopback ports (held together while they are chosen).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<StdListener> = (0..n)
        .map(|_| StdListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// Whether the tools are there; a note (or, under CI, a failure) if not.
fn tools(need_cli: bool) -> bool {
    if !installed("redis-server") {
        super::skipped("redis-server", "bash deploy/ci-install-redis.sh");
        return false;
    }
    if need_cli && !installed("redis-cli") {
        super::skipped("redis-cli", "bash deploy/ci-install-redis.sh");
        return false;
    }
    true
}

/// `redis://[:password@]127.0.0.1:port/0`.
fn url(port: u16, password: Option<&str>) -> String {
    match password {
        Some(p) => format!("redis://:{p}@127.0.0.1:{port}/0"),
        None => format!("redis://127.0.0.1:{port}/0"),
    }
}

/// A fresh connection to `127.0.0.1:port`, quick to give up (a killed node
/// must not stall a poll).
pub async fn connect(port: u16, password: Option<&str>) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    redis::Client::open(url(port, password))?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// One command on a fresh connection to `127.0.0.1:port`.
pub async fn query<T: FromRedisValue>(
    port: u16,
    password: Option<&str>,
    cmd: &redis::Cmd,
) -> RedisResult<T> {
    let mut c = connect(port, password).await?;
    cmd.query_async(&mut c).await
}

/// `field:value` of an `INFO`-like text.
fn info_field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim_end().strip_prefix(field)?.strip_prefix(':'))
}

/// Waits until every replica of the primary on `port` has acknowledged
/// all it had taken when this was called (its `master_repl_offset`), and
/// it has at least one. (`WAIT` would not do: it waits for the writes of
/// its own connection only, and a fresh one has none.)
pub async fn wait_replicated(port: u16, password: Option<&str>) {
    let info = |port| async move {
        query::<String>(port, password, redis::cmd("INFO").arg("replication"))
            .await
            .map_err(|e| e.to_string())
    };
    let first = info(port).await.expect("INFO replication");
    let target: u64 = info_field(&first, "master_repl_offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no master_repl_offset: {first}"));
    poll(Duration::from_secs(5), "the replicas catch up", || async {
        let text = info(port).await?;
        // slave0:ip=127.0.0.1,port=6380,state=online,offset=1234,lag=0
        let offsets: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .filter_map(|l| {
                l.split(',')
                    .find_map(|kv| kv.strip_prefix("offset="))
                    .and_then(|v| v.trim().parse().ok())
            })
            .collect();
        if !offsets.is_empty() && offsets.iter().all(|&o| o >= target) {
            Ok(())
        } else {
            Err(format!("at {target}: {text}"))
        }
    })
    .await;
}

/// Polls `cond` every 50 ms until it gives a value, failing after `limit`
/// with what `describe` says then.
async fn poll<T, F, Fut>(limit: Duration, what: &str, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match cond().await {
            Ok(v) => return v,
            Err(why) => assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ----- Cluster ------------------------------------------------------------

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    pub flags: Vec<String>,
    /// The primary's id, for a replica.
    pub primary: Option<String>,
    /// The slot ranges it serves, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl NodeLine {
    pub fn is_primary(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    pub fn failed(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// Parses `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let addr = f[1].split('@').next().unwrap();
            let port = addr.rsplit(':').next().unwrap().parse().unwrap();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| match s.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => {
                        let n = s.parse().unwrap();
                        (n, n)
                    }
                })
                .collect();
            NodeLine {
                id: f[0].to_string(),
                port,
                flags: f[2].split(',').map(str::to_string).collect(),
                primary: (f[3] != "-").then(|| f[3].to_string()),
                slots,
            }
        })
        .collect()
}

/// A node's id and, for a replica, its primary's id.
type Role = (String, Option<String>);

/// A Redis Cluster on loopback: `primaries` primaries with
/// `replicas_per_primary` replicas each, node timeout 1 s. Nodes are
/// numbered in the order given to `redis-cli --cluster create`: the
/// primaries first. Killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    password: Option<String>,
    /// The id and first slot of the node killed last, and when.
    killed: Option<(usize, String, u16, Instant)>,
}

impl RedisCluster {
    /// Starts and forms it; `None` (after a note) when `redis-server` or
    /// `redis-cli` is not installed (a failure under `CI=true`).
    pub async fn start(primaries: usize, replicas_per_primary: usize) -> Option<RedisCluster> {
        Self::start_with(primaries, replicas_per_primary, None).await
    }

    /// [`RedisCluster::start`], every node requiring `password` (and using
    /// it with its primary).
    pub async fn start_with(
        primaries: usize,
        replicas_per_primary: usize,
        password: Option<&str>,
    ) -> Option<RedisCluster> {
        if !tools(true) {
            return None;
        }
        let n = primaries * (1 + replicas_per_primary);
        // A data port and a cluster bus port per node, all distinct.
        let ports = free_ports(2 * n);
        let mut nodes = Vec::new();
        for i in 0..n {
            let bus = ports[n + i].to_string();
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--cluster-port",
                &bus,
                "--logfile",
                "redis.log",
                // A replica's first sync at once, not after 5 s.
                "--repl-diskless-sync-delay",
                "0",
            ];
            if let Some(p) = password {
                args.extend(["--requirepass", p, "--masterauth", p]);
            }
            nodes.push(RedisServer::start_on(ports[i], &args)?);
        }
        let cluster = RedisCluster {
            nodes,
            password: password.map(str::to_string),
            killed: None,
        };
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(cluster.seed_nodes());
        create.extend([
            "--cluster-replicas".into(),
            replicas_per_primary.to_string(),
            "--cluster-yes".into(),
        ]);
        if let Some(p) = password {
            create.extend(["-a".into(), p.into(), "--no-auth-warning".into()]);
        }
        let out = tokio::task::spawn_blocking(move || {
            Command::new("redis-cli")
                .args(&create)
                .stdin(Stdio::null())
                .output()
                .expect("redis-cli runs")
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_formed(Duration::from_secs(20)).await;
        Some(cluster)
    }

    /// Until every node says `cluster_state:ok` with all slots served, sees
    /// every other node, and every replica's link to its primary is up (so
    /// that it can take over).
    async fn wait_formed(&self, limit: Duration) {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        poll(limit, "the cluster forms", || self.formed(&all)).await;
    }

    async fn formed(&self, nodes: &[usize]) -> Result<(), String> {
        // Every node's view of who serves and who replicates whom, the same
        // everywhere (gossip has converged): a replica's role is known to
        // its primary, and a failover elects the replica its view names.
        let mut first: Option<(usize, Vec<Role>)> = None;
        for &i in nodes {
            let seen = self.nodes_seen_by(i).await?;
            if seen.len() != self.nodes.len() {
                return Err(format!("node {i} sees {} nodes", seen.len()));
            }
            let mut roles = Vec::new();
            for n in &seen {
                let odd = ["fail", "fail?", "handshake", "noaddr"];
                if n.flags.iter().any(|f| odd.contains(&f.as_str())) {
                    return Err(format!("node {i} sees {n:?}"));
                }
                if !n.is_primary() && n.primary.is_none() {
                    return Err(format!("node {i} sees a replica of nobody: {n:?}"));
                }
                if n.is_primary() && n.slots.is_empty() {
                    return Err(format!("node {i} sees a primary without slots: {n:?}"));
                }
                roles.push((n.id.clone(), n.primary.clone()));
            }
            roles.sort();
            match &first {
                None => first = Some((i, roles)),
                Some((j, other)) if *other != roles => {
                    return Err(format!("nodes {j} and {i} disagree: {other:?} / {roles:?}"));
                }
                Some(_) => {}
            }
        }
        for &i in nodes {
            let info = self.cluster_info(i).await?;
            for (field, want) in [
                ("cluster_state", "ok".to_string()),
                ("cluster_slots_ok", "16384".to_string()),
                ("cluster_known_nodes", self.nodes.len().to_string()),
            ] {
                if info_field(&info, field) != Some(&want) {
                    return Err(format!("node {i}: {field} not {want}:\n{info}"));
                }
            }
            let repl: String = self.query(i, redis::cmd("INFO").arg("replication")).await?;
            if info_field(&repl, "role") == Some("slave")
                && info_field(&repl, "master_link_status") != Some("up")
            {
                return Err(format!("node {i}: replica not synced:\n{repl}"));
            }
        }
        Ok(())
    }

    /// `127.0.0.1:port` of every node, primaries first.
    pub fn seed_nodes(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn port(&self, index: usize) -> u16 {
        self.nodes[index].port
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The node of `port`.
    pub fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// A connection to node `index` (not cluster-aware: it answers MOVED
    /// for keys of other nodes' slots).
    pub async fn conn(&self, index: usize) -> MultiplexedConnection {
        connect(self.port(index), self.password())
            .await
            .unwrap_or_else(|e| panic!("connection to node {index}: {e}"))
    }

    /// One command on node `index`.
    pub async fn query<T: FromRedisValue>(
        &self,
        index: usize,
        cmd: &redis::Cmd,
    ) -> Result<T, String> {
        query(self.port(index), self.password(), cmd)
            .await
            .map_err(|e| format!("node {index}: {e}"))
    }

    async fn cluster_info(&self, index: usize) -> Result<String, String> {
        self.query(index, redis::cmd("CLUSTER").arg("INFO")).await
    }

    /// `CLUSTER NODES` as node `index` sees it.
    pub async fn nodes_seen_by(&self, index: usize) -> Result<Vec<NodeLine>, String> {
        let text: String = self
            .query(index, redis::cmd("CLUSTER").arg("NODES"))
            .await?;
        Ok(parse_nodes(&text))
    }

    /// The nodes still running.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// A running node to ask.
    fn any_alive(&self) -> usize {
        *self.alive().first().expect("a node still runs")
    }

    /// The hash slot of `key`.
    pub async fn slot(&self, key: &str) -> u16 {
        self.query(
            self.any_alive(),
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
        )
        .await
        .unwrap()
    }

    /// The node that serves `key`'s slot now (as a running node sees it).
    pub async fn primary_for_key(&self, key: &str) -> usize {
        let slot = self.slot(key).await;
        self.primary_for_slot(slot).await
    }

    /// The node that serves `slot` now.
    pub async fn primary_for_slot(&self, slot: u16) -> usize {
        let nodes = self.nodes_seen_by(self.any_alive()).await.unwrap();
        let node = nodes
            .iter()
            .find(|n| n.is_primary() && !n.failed() && n.serves(slot))
            .unwrap_or_else(|| panic!("no primary for slot {slot}: {nodes:?}"));
        self.index_of(node.port)
    }

    /// The nodes that are primaries now (as a running node sees it).
    pub async fn primaries(&self) -> Vec<usize> {
        let nodes = self.nodes_seen_by(self.any_alive()).await.unwrap();
        let mut out: Vec<usize> = nodes
            .iter()
            .filter(|n| n.is_primary() && !n.failed() && !n.slots.is_empty())
            .map(|n| self.index_of(n.port))
            .collect();
        out.sort_unstable();
        out
    }

    /// The keys matching `pattern` on node `index` (SCAN).
    pub async fn keys_on(&self, index: usize, pattern: &str) -> Vec<String> {
        let mut c = self.conn(index).await;
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .unwrap();
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }

    /// Waits until the replicas of primary `index` have every write it took.
    pub async fn wait_replicated(&self, index: usize) {
        wait_replicated(self.port(index), self.password()).await;
    }

    /// SIGKILL node `index` (a primary, for a failover), state lost.
    pub async fn kill(&mut self, index: usize) {
        let nodes = self.nodes_seen_by(index).await.unwrap();
        let me = nodes
            .iter()
            .find(|n| n.flags.iter().any(|f| f == "myself"))
            .expect("myself")
            .clone();
        self.nodes[index].kill();
        let first_slot = me.slots.first().map_or(0, |s| s.0);
        self.killed = Some((index, me.id, first_slot, Instant::now()));
    }

    /// Waits until a replica of the node killed last serves its slots and
    /// every running node says `cluster_state:ok`; how long after the kill
    /// that was.
    pub async fn wait_failover(&self, limit: Duration) -> Duration {
        let (index, id, slot, at) = self.killed.clone().expect("a node was killed");
        let alive = self.alive();
        poll(limit, "the failover", || async {
            for &i in &alive {
                let info = self.cluster_info(i).await?;
                if info_field(&info, "cluster_state") != Some("ok") {
                    return Err(format!("node {i}: {info}"));
                }
                let nodes = self.nodes_seen_by(i).await?;
                let owner = nodes
                    .iter()
                    .find(|n| n.is_primary() && !n.failed() && n.serves(slot));
                match owner {
                    Some(o) if o.id != id && o.port != self.port(index) => {}
                    _ => return Err(format!("node {i}: slot {slot} still on the killed node")),
                }
            }
            Ok(())
        })
        .await;
        at.elapsed()
    }

    /// Starts node `index` again (it keeps its `nodes.conf`, so it rejoins,
    /// as a replica of whoever took over), once it is part of the cluster.
    pub async fn restart(&mut self, index: usize) {
        self.nodes[index].restart();
        let alive = self.alive();
        poll(Duration::from_secs(20), "the node rejoins", || {
            self.formed(&alive)
        })
        .await;
    }
}

/// A [`RedisCluster`] of `primaries` primaries with
/// `replicas_per_primary` replicas each, or `return` from the test
/// (skipped) when Redis is not installed.
#[allow(unused_macros)]
macro_rules! cluster_or_skip {
    ($primaries:expr, $replicas:expr) => {
        match $crate::support::redis_ha::RedisCluster::start($primaries, $replicas).await {
            Some(c) => c,
            None => return,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use cluster_or_skip;

// ----- Sentinel -----------------------------------------------------------

/// A `redis-server --sentinel` on a free loopback port, killed on drop.
struct SentinelProcess {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Stopped (SIGSTOP).
    frozen: bool,
}

impl SentinelProcess {
    fn start(port: u16, conf: &str) -> SentinelProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        // Writable: sentinels rewrite their config (ids, the new primary).
        let file = dir.path().join("sentinel.conf");
        let conf = format!("dir {}\n{conf}", dir.path().display());
        std::fs::write(&file, conf).expect("sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&file)
            .arg("--sentinel")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the sentinel did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        SentinelProcess {
            port,
            dir,
            child: Some(child),
            frozen: false,
        }
    }

    /// The end of its log, for a failure's message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.frozen {
                let _ = Command::new("kill")
                    .args(["-CONT", &c.id().to_string()])
                    .status();
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Passwords of a [`RedisSentinelSet`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SentinelAuth<'a> {
    /// `requirepass` (and `masterauth`) of the primary and replica; the
    /// sentinels use it (`sentinel auth-pass`).
    pub data: Option<&'a str>,
    /// The sentinels' own `requirepass`.
    pub sentinels: Option<&'a str>,
}

/// The master name the sentinels watch.
pub const MASTER_NAME: &str = "gw";

/// One primary, one replica (`--replicaof`), and three sentinels watching
/// them as [`MASTER_NAME`] with quorum 2, `down-after-milliseconds 1000`,
/// `failover-timeout 3000`, `parallel-syncs 1`. Data nodes are numbered 0
/// (the first primary) and 1 (its replica). Killed on drop.
pub struct RedisSentinelSet {
    data: Vec<RedisServer>,
    sentinels: Vec<SentinelProcess>,
    data_password: Option<String>,
    sentinel_password: Option<String>,
    /// The primary killed last, and when.
    killed: Option<(usize, Instant)>,
}

impl RedisSentinelSet {
    /// The sentinels that run (not frozen), for the harness's own polls.
    fn awake(&self) -> Vec<usize> {
        (0..self.sentinels.len())
            .filter(|&s| !self.sentinels[s].frozen)
            .collect()
    }

    /// SIGSTOP sentinel `index`: it accepts connections and never
    /// answers, like a sentinel on a machine that hangs. Continued on drop.
    pub fn freeze_sentinel(&mut self, index: usize) {
        let s = &mut self.sentinels[index];
        let pid = s.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -STOP {pid}");
        s.frozen = true;
    }

    /// Starts it, once every sentinel sees the primary, the replica and the
    /// two other sentinels; `None` (after a note) when `redis-server` is not
    /// installed (a failure under `CI=true`).
    pub async fn start() -> Option<RedisSentinelSet> {
        Self::start_with(SentinelAuth::default()).await
    }

    /// [`RedisSentinelSet::start`] with passwords.
    pub async fn start_with(auth: SentinelAuth<'_>) -> Option<RedisSentinelSet> {
        if !tools(false) {
            return None;
        }
        let ports = free_ports(5);
        let mut auth_args = vec!["--logfile", "redis.log", "--repl-diskless-sync-delay", "0"];
        if let Some(p) = auth.data {
            auth_args.extend(["--requirepass", p, "--masterauth", p]);
        }
        let primary = RedisServer::start_on(ports[0], &auth_args)?;
        let primary_port = ports[0].to_string();
        let mut replica_args = auth_args.clone();
        replica_args.extend(["--replicaof", "127.0.0.1", &primary_port]);
        let replica = RedisServer::start_on(ports[1], &replica_args)?;
        let sentinels = ports[2..]
            .iter()
            .map(|&port| {
                let mut conf = format!(
                    "port {port}\n\
                     bind 127.0.0.1\n\
                     logfile sentinel.log\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 3000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n"
                );
                if let Some(p) = auth.data {
                    conf.push_str(&format!("sentinel auth-pass {MASTER_NAME} {p}\n"));
                }
                if let Some(p) = auth.sentinels {
                    // The sentinels talk to each other with it too.
                    conf.push_str(&format!("requirepass {p}\nsentinel sentinel-pass {p}\n"));
                }
                SentinelProcess::start(port, &conf)
            })
            .collect();
        let set = RedisSentinelSet {
            data: vec![primary, replica],
            sentinels,
            data_password: auth.data.map(str::to_string),
            sentinel_password: auth.sentinels.map(str::to_string),
            killed: None,
        };
        set.wait_watched(0, 1, Duration::from_secs(20)).await;
        Some(set)
    }

    /// Until every sentinel names `primary` the primary, sees `replica` up
    /// and the two other sentinels, and the replica is in sync.
    async fn wait_watched(&self, primary: usize, replica: usize, limit: Duration) {
        let (pp, rp) = (self.data[primary].port, self.data[replica].port);
        poll(limit, "the sentinels watch the set", || async move {
            for s in 0..self.sentinels.len() {
                let at = self.primary_seen_by(s).await?;
                if at != pp {
                    return Err(format!("sentinel {s} names {at}, not {pp}"));
                }
                let master: Vec<String> = self
                    .sentinel_query(s, redis::cmd("SENTINEL").arg("MASTER").arg(MASTER_NAME))
                    .await?;
                let field = |name: &str| {
                    master
                        .chunks(2)
                        .find(|kv| kv[0] == name)
                        .map(|kv| kv[1].clone())
                };
                if field("num-other-sentinels").as_deref() != Some("2") {
                    return Err(format!("sentinel {s}: {master:?}"));
                }
                let replicas: Vec<Vec<String>> = self
                    .sentinel_query(s, redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME))
                    .await?;
                let up = replicas.iter().any(|r| {
                    let f = |name: &str| r.chunks(2).find(|kv| kv[0] == name).map(|kv| &kv[1]);
                    f("port").map(String::as_str) == Some(&rp.to_string())
                        && f("flags").map(String::as_str) == Some("slave")
                        && f("master-link-status").map(String::as_str) == Some("ok")
                });
                if !up {
                    return Err(format!("sentinel {s}: replicas {replicas:?}"));
                }
            }
            let repl: String = self
                .data_query(replica, redis::cmd("INFO").arg("replication"))
                .await?;
            if info_field(&repl, "master_link_status") != Some("up") {
                return Err(format!("replica not synced: {repl}"));
            }
            Ok(())
        })
        .await;
    }

    /// `127.0.0.1:port` of the three sentinels.
    pub fn sentinels(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    pub fn master_name(&self) -> &'static str {
        MASTER_NAME
    }

    /// The port of data node `index` (0: the first primary, 1: its replica).
    pub fn data_port(&self, index: usize) -> u16 {
        self.data[index].port
    }

    /// The first primary's port (before any failover).
    pub fn primary_port(&self) -> u16 {
        self.data[0].port
    }

    pub fn data_password(&self) -> Option<&str> {
        self.data_password.as_deref()
    }

    /// One command on sentinel `index`.
    pub async fn sentinel_query<T: FromRedisValue>(
        &self,
        index: usize,
        cmd: &redis::Cmd,
    ) -> Result<T, String> {
        query(
            self.sentinels[index].port,
            self.sentinel_password.as_deref(),
            cmd,
        )
        .await
        .map_err(|e| format!("sentinel {index}: {e}"))
    }

    /// One command on data node `index`.
    pub async fn data_query<T: FromRedisValue>(
        &self,
        index: usize,
        cmd: &redis::Cmd,
    ) -> Result<T, String> {
        query(self.data[index].port, self.data_password(), cmd)
            .await
            .map_err(|e| format!("data node {index}: {e}"))
    }

    /// The primary's port as sentinel `index` names it.
    pub async fn primary_seen_by(&self, index: usize) -> Result<u16, String> {
        let (_, port): (String, u16) = self
            .sentinel_query(
                index,
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(MASTER_NAME),
            )
            .await?;
        Ok(port)
    }

    /// The data node that is the primary now: the one the first running
    /// sentinel names, once it answers `ROLE` as a master.
    pub async fn current_primary(&self) -> usize {
        poll(Duration::from_secs(10), "a primary", || async {
            let port = self.primary_seen_by(self.awake()[0]).await?;
            let i = self
                .data
                .iter()
                .position(|d| d.port == port)
                .ok_or(format!("unknown port {port}"))?;
            self.is_primary(i)
                .await?
                .then_some(i)
                .ok_or("not yet".into())
        })
        .await
    }

    async fn is_primary(&self, index: usize) -> Result<bool, String> {
        let role: Vec<redis::Value> = self.data_query(index, &redis::cmd("ROLE")).await?;
        Ok(matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master"))
    }

    /// A plain connection to the primary now (for assertions).
    pub async fn primary_conn(&self) -> MultiplexedConnection {
        let i = self.current_primary().await;
        connect(self.data[i].port, self.data_password())
            .await
            .expect("connection to the primary")
    }

    /// Waits until the replica has every write the primary took.
    pub async fn wait_replicated(&self) {
        let i = self.current_primary().await;
        wait_replicated(self.data[i].port, self.data_password()).await;
    }

    /// SIGKILL the primary now, state lost.
    pub async fn kill_primary(&mut self) {
        let i = self.current_primary().await;
        self.data[i].kill();
        self.killed = Some((i, Instant::now()));
    }

    /// Waits until a sentinel names another data node the primary and that
    /// node answers `ROLE` as a master; how long after the kill that was.
    pub async fn wait_new_primary(&self, limit: Duration) -> Duration {
        let (killed, at) = self.killed.expect("a primary was killed");
        let old = self.data[killed].port;
        let deadline = Instant::now() + limit;
        loop {
            for s in self.awake() {
                let Ok(port) = self.primary_seen_by(s).await else {
                    continue;
                };
                let Some(i) = self.data.iter().position(|d| d.port == port) else {
                    continue;
                };
                if port != old && self.is_primary(i).await == Ok(true) {
                    return at.elapsed();
                }
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self.sentinels.iter().map(|s| s.log_tail()).collect();
                panic!(
                    "no new primary within {limit:?}; sentinel logs:\n{}",
                    logs.join("\n--\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Until all running sentinels name the new primary (the gateway may
    /// ask any of them).
    pub async fn wait_sentinels_agree(&self, limit: Duration) {
        let (killed, _) = self.killed.expect("a primary was killed");
        let old = self.data[killed].port;
        poll(limit, "the sentinels agree", || async {
            for s in self.awake() {
                let p = self.primary_seen_by(s).await?;
                if p == old {
                    return Err(format!("sentinel {s} still names {p}"));
                }
            }
            Ok(())
        })
        .await;
    }
}

/// A [`RedisSentinelSet`], or `return` from the test (skipped) when
/// `redis-server` is not installed.
#[allow(unused_macros)]
macro_rules! sentinel_or_skip {
    () => {
        match $crate::support::redis_ha::RedisSentinelSet::start().await {
            Some(s) => s,
            None => return,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use sentinel_or_skip;
