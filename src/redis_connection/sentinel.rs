//! Redis behind Sentinel: commands go to the primary the sentinels name,
//! and a watcher follows it through failovers.
//!
//! The watcher asks every sentinel `SENTINEL get-master-addr-by-name` once
//! a second, concurrently, each within the connect timeout, and takes the
//! answer as soon as a majority agree (a sentinel that hangs is not waited
//! for), and it asks at once when a command
//! failed (a primary that died or was demoted answers with an I/O error or
//! `READONLY`). The address most sentinels name wins; when it changes and
//! the node answers `ROLE` as a master, a connection to it replaces the old
//! one for every later command. Commands already sent on the old one fail,
//! as any command to a dead server does, and the quota engine's fail mode
//! answers for them. The redis crate's own sentinel client walks the
//! sentinels in order, so one that accepts connections but never answers
//! held every lookup up: it is not used.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisConnectionInfo,
    RedisError, RedisFuture, TlsCertificates, Value,
};
use tokio::sync::{watch, Notify};

use super::{NodeAuth, SentinelTarget, Setup};

/// How often the watcher asks when nothing failed.
const POLL: Duration = Duration::from_secs(1);
/// The least time between two lookups, however many commands fail.
const MIN_GAP: Duration = Duration::from_millis(100);

/// The primary Sentinel names. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Primary(Arc<Inner>);

struct Inner {
    /// The connection to the primary named last; `None` until the first
    /// lookup answered.
    current: watch::Sender<Option<Current>>,
    /// Wakes the watcher before its second is up: a command failed.
    recheck: Notify,
    /// The watcher runs (it starts with the first command, on the runtime
    /// that sends it).
    started: AtomicBool,
    /// One client per sentinel, with its credentials and TLS.
    sentinels: Vec<Client>,
    /// How to reach a data node, given its address.
    node: NodeSetup,
    master: String,
    db: i64,
    timeout: Duration,
    connect_timeout: Duration,
}

/// What a connection to a data node (the primary) is made with.
struct NodeSetup {
    tls: bool,
    auth: NodeAuth,
    certs: Option<TlsCertificates>,
}

#[derive(Clone)]
struct Current {
    conn: ConnectionManager,
    /// `host:port`, for the log line of a switch.
    addr: String,
}

/// `redis-sentinel://a:26379,b:26379/master/db`, without credentials.
pub(super) fn describe(t: &SentinelTarget) -> String {
    let scheme = if t.tls {
        "rediss-sentinel"
    } else {
        "redis-sentinel"
    };
    format!("{scheme}://{}/{}/{}", t.sentinels.join(","), t.master, t.db)
}

impl Primary {
    pub(super) fn open(t: &SentinelTarget, setup: &Setup<'_>) -> Result<Primary, String> {
        let certs = setup.certificates()?;
        let sentinels = t
            .sentinels
            .iter()
            .map(|a| {
                let (host, port) = host_port(a)?;
                client(
                    address(host, port, t.tls),
                    &t.sentinel_auth,
                    0,
                    certs.as_ref(),
                )
                .map_err(|e| format!("quota.redis_sentinels: {}", super::kind(&e)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (current, _) = watch::channel(None);
        Ok(Primary(Arc::new(Inner {
            current,
            recheck: Notify::new(),
            started: AtomicBool::new(false),
            sentinels,
            node: NodeSetup {
                tls: t.tls,
                auth: t.auth.clone(),
                certs,
            },
            master: t.master.clone(),
            db: t.db,
            timeout: setup.timeout,
            connect_timeout: setup.connect_timeout,
        })))
    }

    /// The connection to the primary, once a lookup named one. Waits for
    /// the first lookup, at most the connect timeout.
    async fn current(&self) -> Result<ConnectionManager, RedisError> {
        if !self.0.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(watch(Arc::downgrade(&self.0)));
        }
        if let Some(c) = &*self.0.current.borrow() {
            return Ok(c.conn.clone());
        }
        // Bounded: a command must never hang while no sentinel answers
        // (the budget's background counts have no timeout of their own).
        let mut rx = self.0.current.subscribe();
        let named = async {
            let c = rx.wait_for(Option::is_some).await.ok()?;
            c.as_ref().map(|c| c.conn.clone())
        };
        tokio::time::timeout(self.0.connect_timeout, named)
            .await
            .ok()
            .flatten()
            .ok_or_else(unknown_primary)
    }

    /// A failed command may mean a failover: look again now.
    fn failed(&self, e: &RedisError) {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        {
            self.0.recheck.notify_one();
        }
    }
}

impl ConnectionLike for Primary {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut conn = self.current().await?;
            let r = conn.req_packed_command(cmd).await;
            if let Err(e) = &r {
                self.failed(e);
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut conn = self.current().await?;
            let r = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &r {
                self.failed(e);
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.0.db
    }
}

fn unknown_primary() -> RedisError {
    RedisError::from((
        redis::ErrorKind::Io,
        "no primary named by the sentinels yet",
    ))
}

fn host_port(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("quota.redis_sentinels: {addr:?} is not host:port"))?;
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
    ))
}

fn address(host: String, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    }
}

/// A client for one node, credentials set apart from any string.
fn client(
    addr: ConnectionAddr,
    auth: &NodeAuth,
    db: i64,
    certs: Option<&TlsCertificates>,
) -> Result<Client, RedisError> {
    let mut redis = RedisConnectionInfo::default().set_db(db);
    if let Some(u) = &auth.username {
        redis = redis.set_username(u);
    }
    if let Some(p) = &auth.password {
        redis = redis.set_password(p.expose());
    }
    let info: ConnectionInfo = addr
        .into_connection_info()?
        .set_redis_settings(redis)
        .set_tcp_settings(super::tcp_settings());
    match certs {
        Some(c) if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) => {
            Client::build_with_tls(info, c.clone())
        }
        _ => Client::open(info),
    }
}

/// The watcher: looks the primary up every [`POLL`] and when woken, until
/// the connection is dropped.
async fn watch(inner: Weak<Inner>) {
    // One connection per sentinel, made again when it fails.
    let mut asking: Vec<Option<MultiplexedConnection>> = Vec::new();
    loop {
        let Some(i) = inner.upgrade() else { return };
        asking.resize_with(i.sentinels.len(), || None);
        let known = i.current.borrow().as_ref().map(|c| c.addr.clone());
        match named_primary(&i, &mut asking, known.is_some()).await {
            Some(named) if known.as_deref() != Some(named.as_str()) => {
                match tokio::time::timeout(i.connect_timeout, connect(&i, &named)).await {
                    Ok(Ok(next)) => {
                        match &known {
                            Some(old) => tracing::warn!(
                                from = %old,
                                to = %next.addr,
                                master = %i.master,
                                "redis primary changed (sentinel failover): following it"
                            ),
                            None => tracing::info!(
                                primary = %next.addr,
                                master = %i.master,
                                "redis primary found through sentinel"
                            ),
                        }
                        i.current.send_replace(Some(next));
                    }
                    Ok(Err(e)) => tracing::warn!(
                        primary = %named,
                        master = %i.master,
                        error = %super::kind(&e),
                        "redis: the primary the sentinels name does not answer as one yet"
                    ),
                    Err(_) => tracing::warn!(
                        primary = %named,
                        master = %i.master,
                        "redis: the primary the sentinels name did not answer in time"
                    ),
                }
            }
            Some(_) => {}
            None => tracing::warn!(
                master = %i.master,
                "redis sentinel: no sentinel named the primary; asking again"
            ),
        }
        let recheck = async { i.recheck.notified().await };
        let _ = tokio::time::timeout(POLL, recheck).await;
        drop(i);
        tokio::time::sleep(MIN_GAP).await;
    }
}

/// `host:port` of the primary a majority of the sentinels name (before any
/// is `known`: the most of those that answered), asking all at once, each
/// within the connect timeout; `None` when no such answer came.
async fn named_primary(
    i: &Inner,
    asking: &mut [Option<MultiplexedConnection>],
    known: bool,
) -> Option<String> {
    let asks = i
        .sentinels
        .iter()
        .zip(asking.iter_mut())
        .map(|(client, slot)| async move {
            let ask = async {
                if slot.is_none() {
                    *slot = Some(client.get_multiplexed_async_connection().await?);
                }
                let conn = slot.as_mut().expect("just made");
                let mut cmd = redis::cmd("SENTINEL");
                cmd.arg("get-master-addr-by-name").arg(&i.master);
                cmd.query_async::<Option<(String, u16)>>(conn).await
            };
            match tokio::time::timeout(i.connect_timeout, ask).await {
                Ok(Ok(named)) => named.map(|(host, port)| format!("{host}:{port}")),
                _ => {
                    *slot = None;
                    None
                }
            }
        });
    // Done as soon as a majority of the sentinels agree: a hung one is not
    // waited for.
    let majority = i.sentinels.len() / 2 + 1;
    let mut pending: futures_util::stream::FuturesUnordered<_> = asks.collect();
    let mut votes: Vec<(String, usize)> = Vec::new();
    while let Some(answer) = futures_util::StreamExt::next(&mut pending).await {
        let Some(a) = answer else { continue };
        match votes.iter_mut().find(|(addr, _)| *addr == a) {
            Some((_, n)) => *n += 1,
            None => votes.push((a, 1)),
        }
        if votes.iter().any(|(_, n)| *n >= majority) {
            break;
        }
    }
    // A primary is followed only when a majority names it; the first one
    // (none known yet) may come from fewer. A minority may be a partitioned
    // sentinel still naming the old primary.
    let majority = if known { majority } else { 1 };
    votes
        .into_iter()
        .filter(|(_, n)| *n >= majority)
        .max_by_key(|(_, n)| *n)
        .map(|(a, _)| a)
}

/// A connection to `named`, once it answers `ROLE` as a master.
async fn connect(i: &Inner, named: &str) -> Result<Current, RedisError> {
    let (host, port) = host_port(named)
        .map_err(|_| RedisError::from((redis::ErrorKind::Io, "sentinel named no host:port")))?;
    let n = &i.node;
    let client = client(address(host, port, n.tls), &n.auth, i.db, n.certs.as_ref())?;
    let mut check = client.get_multiplexed_async_connection().await?;
    let role: redis::Value = redis::cmd("ROLE").query_async(&mut check).await?;
    let is_master = matches!(&role, redis::Value::Array(items)
        if matches!(items.first(), Some(redis::Value::BulkString(b)) if b == b"master"));
    if !is_master {
        return Err(RedisError::from((
            redis::ErrorKind::Io,
            "the node does not answer ROLE as a master",
        )));
    }
    let setup = Setup {
        ca_file: None,
        timeout: i.timeout,
        connect_timeout: i.connect_timeout,
    };
    let conn = setup
        .manager(client)
        .map_err(|_| RedisError::from((redis::ErrorKind::Io, "connection to the primary")))?;
    Ok(Current {
        conn,
        addr: named.to_string(),
    })
}
