//! The replica's one connection to Redis, shared by everything the fleet
//! keeps there: the quotas ([`crate::quota::RedisQuota`]) and the store
//! apps' tickets. Multiplexed, reconnecting, never printing its URL.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisError;

use crate::secret::Secret;

/// A replica's one connection to Redis: multiplexed, reconnecting, with
/// `redis_timeout` on every answer. Cheap to clone; the clones share the
/// connection. The quota engine and the app_ticket store
/// (([`crate::tokens::ticket_store::RedisTicketStore`])) use the same one.
#[derive(Clone)]
pub struct RedisConnection {
    conn: ConnectionManager,
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

impl RedisConnection {
    /// A connection to `settings.url`. Does not connect: the first command
    /// does (within [`connect_timeout`](Self::connect_timeout)), and a lost
    /// connection is made again by the next one.
    pub fn open(
        url: &Secret,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<RedisConnection, String> {
        let client = client(url, ca_file)?;
        let target = describe(client.get_connection_info());
        let connect_timeout = timeout.max(Duration::from_secs(1));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("quota.redis_url: {e}"))?;
        Ok(RedisConnection {
            conn,
            target: target.into(),
            connect_timeout,
        })
    }

    /// `rediss://host:port/db`, without credentials: for logs and `/readyz`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// How long connecting may take (`redis_timeout`, at least 1 s: TLS
    /// handshakes take time).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// A handle on the shared connection, for one command or pipeline.
    pub(crate) fn manager(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

fn client(url: &Secret, ca_file: Option<&Path>) -> Result<redis::Client, String> {
    use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
    use redis::IntoConnectionInfo;
    // Parse errors never echo the URL: it may carry a password.
    let bad = |e: RedisError| {
        format!(
            "quota.redis_url: not a usable redis:// or rediss:// URL ({:?})",
            e.kind()
        )
    };
    // TCP_NODELAY: commands are tiny and pipelined on one connection; with
    // Nagle they would wait for the server's delayed ACK (40 ms on Linux).
    // Keepalive notices a peer that vanished without a FIN.
    let info = url
        .expose()
        .into_connection_info()
        .map_err(bad)?
        .set_tcp_settings(
            TcpSettings::default()
                .set_nodelay(true)
                .set_keepalive(TcpKeepalive::new().with_time(Duration::from_secs(15))),
        );
    match ca_file {
        None => redis::Client::open(info).map_err(bad),
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("quota.redis_ca_file: cannot read {}: {e}", path.display()))?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(bad)
        }
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
