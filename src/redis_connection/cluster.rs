//! Redis Cluster: the redis crate's cluster connection (it learns the slot
//! map from the seed nodes, follows `MOVED`/`ASK` and refreshes the map
//! when a primary fails over), made on first use and kept.
//!
//! One thing the crate leaves to us: a pipeline must stay in one slot. The
//! gateway's pipelines (a heal draining every key, a budget sync over every
//! group) span many, so [`Cluster`] splits them: the commands of one hash
//! tag go together, in their order, as one pipeline; different tags go
//! concurrently; a command without a key (`SCRIPT LOAD`) is a barrier that
//! the commands after it wait for, so "load, then call" keeps its order.

use std::collections::BTreeMap;
use std::sync::Arc;

use redis::aio::ConnectionLike;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Arg, Cmd, Pipeline, RedisError, RedisFuture, TlsMode, Value};
use tokio::sync::OnceCell;

use super::{ClusterTarget, Setup};

/// A Cluster, connected on first use. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Cluster {
    client: Arc<ClusterClient>,
    conn: Arc<OnceCell<ClusterConnection>>,
}

/// `redis-cluster://a:6379,b:6379`, without credentials.
pub(super) fn describe(t: &ClusterTarget) -> String {
    let scheme = if t.tls {
        "rediss-cluster"
    } else {
        "redis-cluster"
    };
    format!("{scheme}://{}", t.nodes.join(","))
}

impl Cluster {
    pub(super) fn open(t: &ClusterTarget, setup: &Setup<'_>) -> Result<Cluster, String> {
        let nodes: Vec<String> = t.nodes.iter().map(|a| super::node_url(a, t.tls)).collect();
        // Retries inside the crate are for MOVED and a refreshed slot map;
        // a primary that is down is the fail mode's business, so few and
        // quick ones (the caller's redis_timeout bounds them anyway).
        let mut b = ClusterClientBuilder::new(nodes)
            .connection_timeout(setup.connect_timeout)
            .response_timeout(setup.timeout)
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .tcp_settings(super::tcp_settings());
        if let Some(u) = &t.auth.username {
            b = b.username(u);
        }
        if let Some(p) = &t.auth.password {
            b = b.password(p.expose());
        }
        if t.tls {
            b = b.tls(TlsMode::Secure);
            if let Some(certs) = setup.certificates()? {
                b = b.certs(certs);
            }
        }
        let client = b
            .build()
            .map_err(|e| format!("quota.redis_cluster_nodes: {}", super::kind(&e)))?;
        Ok(Cluster {
            client: Arc::new(client),
            conn: Arc::new(OnceCell::new()),
        })
    }

    /// The cluster connection, made by the first caller (a failed attempt
    /// leaves it to the next).
    async fn conn(&self) -> Result<ClusterConnection, RedisError> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }

    /// A pipeline across slots: one sub-pipeline per hash tag, concurrent;
    /// keyless commands in between as barriers.
    async fn split(&self, pipeline: &Pipeline) -> Result<Vec<Value>, RedisError> {
        let conn = self.conn().await?;
        let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
        let mut out: Vec<Value> = vec![Value::Nil; cmds.len()];
        let mut at = 0;
        while at < cmds.len() {
            let start = at;
            let mut groups: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
            while let Some(tag) = cmds.get(at).and_then(|c| key(c)).map(hash_tag) {
                groups.entry(tag.to_vec()).or_default().push(at);
                at += 1;
            }
            if at > start {
                let runs = groups.into_values().map(|idx| {
                    let mut conn = conn.clone();
                    let mut sub = redis::pipe();
                    for &i in &idx {
                        sub.add_command(cmds[i].clone());
                    }
                    async move {
                        let values = conn.req_packed_commands(&sub, 0, idx.len()).await?;
                        Ok::<_, RedisError>((idx, values))
                    }
                });
                for (idx, values) in futures_util::future::try_join_all(runs).await? {
                    for (i, v) in idx.into_iter().zip(values) {
                        out[i] = v;
                    }
                }
            }
            if let Some(cmd) = cmds.get(at) {
                out[at] = conn.clone().req_packed_command(cmd).await?;
                at += 1;
            }
        }
        Ok(out)
    }
}

impl ConnectionLike for Cluster {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move { self.conn().await?.req_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            // A transaction (offset > 0) must be in one slot anyway; the
            // crate routes it.
            if offset > 0 || pipeline.len() < 2 {
                return self
                    .conn()
                    .await?
                    .req_packed_commands(pipeline, offset, count)
                    .await;
            }
            self.split(pipeline).await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// The key a command routes by, for the commands the gateway sends; `None`
/// for the others (sent alone, routed by the crate).
pub(super) fn key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        Arg::Simple(b) => b,
        _ => &[][..],
    });
    let name = args.next()?.to_ascii_uppercase();
    match name.as_slice() {
        b"EVALSHA" | b"EVAL" | b"EVALSHA_RO" | b"EVAL_RO" => {
            let numkeys = args.nth(1)?;
            (numkeys != b"0").then(|| args.next()).flatten()
        }
        b"GET" | b"SET" | b"SETEX" | b"PSETEX" | b"SETNX" | b"GETDEL" | b"GETEX" | b"INCR"
        | b"INCRBY" | b"DECR" | b"DECRBY" | b"EXPIRE" | b"PEXPIRE" | b"EXPIREAT" | b"PEXPIREAT"
        | b"TTL" | b"PTTL" | b"PERSIST" | b"HGET" | b"HSET" | b"HGETALL" | b"HINCRBY" | b"HDEL"
        | b"TYPE" => args.next(),
        _ => None,
    }
}

/// The part of a key Redis Cluster hashes: the first non-empty `{…}`, or
/// the whole key.
pub(crate) fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}
