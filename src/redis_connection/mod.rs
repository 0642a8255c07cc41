//! The replica's one connection to Redis, shared by everything the fleet
//! keeps there: the quotas ([`crate::quota::RedisQuota`]), the monthly
//! budgets and the store apps' tickets. Multiplexed, reconnecting, never
//! printing a URL or a password.
//!
//! Three ways to reach Redis ([`RedisTarget`]), one handle ([`Conn`]) for
//! the rest of the gateway:
//!
//! | target     | module        | what follows a failover                                  |
//! |------------|---------------|----------------------------------------------------------|
//! | one server | here          | nothing to follow: `ConnectionManager` reconnects        |
//! | Sentinel   | [`sentinel`]  | a watcher asks the sentinels for the primary (every second, and at once on an error) and swaps the connection |
//! | Cluster    | [`cluster`]   | the redis crate's cluster connection (MOVED, slot refresh); pipelines split by hash tag |
//!
//! Every key the gateway writes carries a hash tag (`{…}`) that keeps the
//! keys one script touches in one slot, so the Lua scripts run unchanged on
//! a Cluster.

mod cluster;
mod sentinel;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::secret::Secret;

/// Where the fleet's Redis is (`[quota]`: `redis_url*`, `redis_sentinels`
/// or `redis_cluster_nodes`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RedisTarget {
    /// One server: `redis://[:password@]host[:port][/db]` or `rediss://…`.
    Url(Secret),
    /// A primary and its replicas watched by Sentinel.
    Sentinel(SentinelTarget),
    /// A Redis Cluster, found from its seed nodes.
    Cluster(ClusterTarget),
}

/// Credentials of a Redis node (the data nodes, or the sentinels).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct NodeAuth {
    /// ACL user (`redis_username`); none = the default user.
    pub username: Option<String>,
    /// Password (`redis_password_env` / `_file` / `redis_password`).
    pub password: Option<Secret>,
}

/// `redis_sentinels` + `redis_sentinel_master`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SentinelTarget {
    /// `host:port` of each sentinel.
    pub sentinels: Vec<String>,
    /// The monitored primary's name (`redis_sentinel_master`).
    pub master: String,
    /// Database number on the primary (`redis_db`, default 0).
    pub db: i64,
    /// TLS to the sentinels and the data nodes (`redis_tls`).
    pub tls: bool,
    /// Credentials of the data nodes.
    pub auth: NodeAuth,
    /// Credentials of the sentinels themselves (`redis_sentinel_password*`).
    pub sentinel_auth: NodeAuth,
}

/// `redis_cluster_nodes`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ClusterTarget {
    /// `host:port` of some nodes; the rest is discovered.
    pub nodes: Vec<String>,
    /// TLS to every node (`redis_tls`).
    pub tls: bool,
    /// Credentials of the nodes.
    pub auth: NodeAuth,
}

/// A replica's one connection to Redis: multiplexed, reconnecting, with
/// `redis_timeout` on every answer. Cheap to clone; the clones share the
/// connection. The quota engine, the budgets and the app_ticket store
/// ([`crate::tokens::ticket_store::RedisTicketStore`]) use the same one.
#[derive(Clone)]
pub struct RedisConnection {
    conn: Conn,
    target: Arc<str>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// What a connection is set up with, whatever the target.
pub(crate) struct Setup<'a> {
    pub(crate) ca_file: Option<&'a Path>,
    /// Longest wait for one answer.
    pub(crate) timeout: Duration,
    /// Longest wait for a connection (`timeout`, at least 1 s).
    pub(crate) connect_timeout: Duration,
}

impl Setup<'_> {
    /// The private CA's roots, when `redis_ca_file` names one.
    fn certificates(&self) -> Result<Option<redis::TlsCertificates>, String> {
        let Some(path) = self.ca_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path)
            .map_err(|e| format!("quota.redis_ca_file: cannot read {}: {e}", path.display()))?;
        Ok(Some(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        }))
    }

    /// The reconnecting connection to one server.
    fn manager(&self, client: redis::Client) -> Result<ConnectionManager, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_secs(1));
        ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("quota: the Redis connection: {:?}", e.kind()))
    }
}

/// TCP_NODELAY: commands are tiny and pipelined on one connection; with
/// Nagle they would wait for the server's delayed ACK (40 ms on Linux).
/// Keepalive notices a peer that vanished without a FIN (a primary whose
/// machine died during a failover).
pub(crate) fn tcp_settings() -> TcpSettings {
    TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(TcpKeepalive::new().with_time(Duration::from_secs(15)))
}

impl RedisConnection {
    /// A connection to `target`. Does not connect: the first command does
    /// (within [`connect_timeout`](Self::connect_timeout)), and a lost
    /// connection is made again by the next one.
    pub fn open(
        target: &RedisTarget,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<RedisConnection, String> {
        let setup = Setup {
            ca_file,
            timeout,
            connect_timeout: timeout.max(Duration::from_secs(1)),
        };
        let (conn, described) = match target {
            RedisTarget::Url(url) => {
                let client = client(url, &setup)?;
                let described = describe(client.get_connection_info());
                (Conn::Single(setup.manager(client)?), described)
            }
            RedisTarget::Sentinel(s) => (
                Conn::Sentinel(sentinel::Primary::open(s, &setup)?),
                sentinel::describe(s),
            ),
            RedisTarget::Cluster(c) => (
                Conn::Cluster(cluster::Cluster::open(c, &setup)?),
                cluster::describe(c),
            ),
        };
        Ok(RedisConnection {
            conn,
            target: described.into(),
            connect_timeout: setup.connect_timeout,
        })
    }

    /// `rediss://host:port/db`, `redis-sentinel://a:26379,b:26379/name/db`
    /// or `redis-cluster://a:6379,b:6379`, without credentials: for logs
    /// and `/readyz`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// How long connecting may take (`redis_timeout`, at least 1 s: TLS
    /// handshakes take time).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// A handle on the shared connection, for one command or pipeline.
    pub(crate) fn handle(&self) -> Conn {
        self.conn.clone()
    }
}

/// The handle every Redis user of the gateway sends through: one server,
/// the primary Sentinel names, or a Cluster. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Sentinel(sentinel::Primary),
    Cluster(cluster::Cluster),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(m) => m.req_packed_command(cmd),
            Conn::Sentinel(p) => p.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(m) => m.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(p) => p.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(m) => m.get_db(),
            Conn::Sentinel(p) => p.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

fn client(url: &Secret, setup: &Setup<'_>) -> Result<redis::Client, String> {
    use redis::IntoConnectionInfo;
    // Parse errors never echo the URL: it may carry a password.
    let bad = |e: RedisError| {
        format!(
            "quota.redis_url: not a usable redis:// or rediss:// URL ({:?})",
            e.kind()
        )
    };
    let info = url
        .expose()
        .into_connection_info()
        .map_err(bad)?
        .set_tcp_settings(tcp_settings());
    match setup.certificates()? {
        None => redis::Client::open(info).map_err(bad),
        Some(certs) => redis::Client::build_with_tls(info, certs).map_err(bad),
    }
}

/// `scheme://host:port/db` without credentials.
fn describe(info: &redis::ConnectionInfo) -> String {
    let scheme = match info.addr() {
        redis::ConnectionAddr::TcpTls { .. } => "rediss",
        redis::ConnectionAddr::Unix(_) => "redis+unix",
        _ => "redis",
    };
    format!("{scheme}://{}/{}", info.addr(), info.redis_settings().db())
}

/// The URL of one node for the redis crate: `redis://host:port` or
/// `rediss://host:port`; credentials are set apart, never in a string.
fn node_url(addr: &str, tls: bool) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    format!("{scheme}://{addr}")
}

/// An error as a log may show it: its kind and the server's code, never a
/// command's arguments.
pub(crate) fn kind(e: &RedisError) -> String {
    match e.code() {
        Some(code) => format!("{:?} ({code})", e.kind()),
        None => format!("{:?}", e.kind()),
    }
}

#[cfg(test)]
mod tests;
