//! Redis behind Sentinel: commands go to the primary the sentinels name,
//! and a watcher follows it through failovers.
//!
//! The watcher asks a sentinel `SENTINEL get-master-addr-by-name` once a
//! second, and at once when a command failed (a primary that died or was
//! demoted answers with an I/O error or `READONLY`). When the name changes,
//! the redis crate's [`SentinelClient`] finds the new primary (asking every
//! sentinel and checking the node's `ROLE`), and the connection to it
//! replaces the old one for every later command. Commands already sent on
//! the old one fail, as any command to a dead server does, and the quota
//! engine's fail mode answers for them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, ConnectionAddr, Pipeline, RedisError, RedisFuture, TlsMode, Value};
use tokio::sync::{watch, Notify};

use super::{SentinelTarget, Setup};

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
    /// Finds the primary and builds its clients; only the watcher uses it.
    client: tokio::sync::Mutex<SentinelClient>,
    master: String,
    db: i64,
    timeout: Duration,
    connect_timeout: Duration,
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
        let bad = |e: RedisError| format!("quota.redis_sentinels: {}", super::kind(&e));
        let addrs = t
            .sentinels
            .iter()
            .map(|a| address(a, t.tls))
            .collect::<Result<Vec<_>, _>>()?;
        let mut b = SentinelClientBuilder::new(addrs, &t.master, SentinelServerType::Master)
            .map_err(bad)?
            .set_client_to_redis_db(t.db)
            .set_client_to_redis_tcp_settings(super::tcp_settings())
            .set_client_to_sentinel_tcp_settings(super::tcp_settings());
        if let Some(u) = &t.auth.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &t.auth.password {
            b = b.set_client_to_redis_password(p.expose());
        }
        if let Some(u) = &t.sentinel_auth.username {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = &t.sentinel_auth.password {
            b = b.set_client_to_sentinel_password(p.expose());
        }
        if t.tls {
            b = b
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(certs) = setup.certificates()? {
                b = b
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        let client = b.build().map_err(bad)?;
        let (current, _) = watch::channel(None);
        Ok(Primary(Arc::new(Inner {
            current,
            recheck: Notify::new(),
            started: AtomicBool::new(false),
            client: tokio::sync::Mutex::new(client),
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

fn address(addr: &str, tls: bool) -> Result<ConnectionAddr, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("quota.redis_sentinels: {addr:?} is not host:port"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(if tls {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    })
}

/// The watcher: looks the primary up every [`POLL`] and when woken, until
/// the connection is dropped.
async fn watch(inner: Weak<Inner>) {
    // A connection to one sentinel, asked cheaply every second; made again
    // (possibly to another sentinel) when it fails.
    let mut asking: Option<MultiplexedConnection> = None;
    loop {
        let Some(i) = inner.upgrade() else { return };
        let known = i.current.borrow().as_ref().map(|c| c.addr.clone());
        let named = match known {
            None => None,
            Some(_) => named_primary(&i, &mut asking).await,
        };
        // Look up (and check the node's ROLE) when no primary is known yet,
        // or the sentinels name another one, or they could not be asked.
        if known.is_none() || named.is_none() || named != known {
            match tokio::time::timeout(i.connect_timeout * 2, lookup(&i)).await {
                Ok(Ok(next)) => {
                    if known.as_deref() != Some(next.addr.as_str()) {
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
                }
                Ok(Err(e)) => tracing::warn!(
                    master = %i.master,
                    error = %super::kind(&e),
                    "redis sentinel lookup failed; asking again"
                ),
                Err(_) => tracing::warn!(master = %i.master, "redis sentinel lookup timed out"),
            }
        }
        let recheck = async { i.recheck.notified().await };
        let _ = tokio::time::timeout(POLL, recheck).await;
        drop(i);
        tokio::time::sleep(MIN_GAP).await;
    }
}

/// `host:port` of the primary a sentinel names now, or `None` when no
/// sentinel answered.
async fn named_primary(i: &Inner, asking: &mut Option<MultiplexedConnection>) -> Option<String> {
    if asking.is_none() {
        let client = {
            let mut c = i.client.lock().await;
            tokio::time::timeout(i.connect_timeout, c.async_get_sentinel_client()).await
        };
        let client = client.ok()?.ok()?;
        let conn =
            tokio::time::timeout(i.connect_timeout, client.get_multiplexed_async_connection())
                .await;
        *asking = Some(conn.ok()?.ok()?);
    }
    let conn = asking.as_mut()?;
    let mut ask = redis::cmd("SENTINEL");
    ask.arg("get-master-addr-by-name").arg(&i.master);
    let ask = ask.query_async::<Option<(String, u16)>>(conn);
    match tokio::time::timeout(i.connect_timeout, ask).await {
        Ok(Ok(Some((host, port)))) => Some(format!("{host}:{port}")),
        _ => {
            *asking = None;
            None
        }
    }
}

/// The primary, found and checked by the redis crate's sentinel client.
async fn lookup(i: &Inner) -> Result<Current, RedisError> {
    let client = i.client.lock().await.async_get_client().await?;
    let addr = match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            format!("{h}:{p}")
        }
        other => other.to_string(),
    };
    let setup = Setup {
        ca_file: None,
        timeout: i.timeout,
        connect_timeout: i.connect_timeout,
    };
    let conn = setup
        .manager(client)
        .map_err(|_| RedisError::from((redis::ErrorKind::Io, "connection to the primary")))?;
    Ok(Current { conn, addr })
}
