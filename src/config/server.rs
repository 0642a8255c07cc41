//! The top-level keys that shape how the gateway serves: its listeners
//! (with their backlog and connection limits), the upstream, TLS,
//! `workers`, `max_body_bytes` and `state_dir`, with `[timeouts]`, `[pool]`
//! and `[log]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::reader::{Problems, Section};
use crate::observe::logging::{Log, LogFormat};
use crate::upstream::Upstream;

/// `listen_backlog` by default: a burst of this many connects waits in the
/// kernel for the accept loop instead of being dropped (a dropped SYN costs
/// the client a 1 s retransmission). The kernel caps it at
/// `net.core.somaxconn` (4096 since Linux 5.4; Go's net package listens
/// with that cap too). A queue costs memory only while connects wait in
/// it. With 1024, a burst of 2,000 connects on a busy 2-core machine still
/// saw dropped SYNs now and then (see `benches/README.md`).
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;
/// `max_connections` by default: open connections on `listen`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// `admin_max_connections` by default: open connections on `admin_listen`
/// (probes and scrapes need a handful).
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;

/// One connection worker per core the process may use.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Timeouts (`[timeouts]`).
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP+TLS connect to Feishu (`connect`). Default 3 s.
    pub connect: Duration,
    /// One upstream attempt, from sending the request to the end of the
    /// answer's head and inspected body (`upstream`); retries by code
    /// share it with the first attempt (`proxy::retry`). Default 30 s.
    pub upstream: Duration,
    /// The longest gap between two reads of a streamed answer body (a
    /// download, a JSON answer too large to hold) once its head went to the
    /// client (`upstream_idle`). Default 30 s: past it the exchange ends
    /// and is counted as `kind="idle_timeout"`.
    pub upstream_idle: Duration,
    /// Reading a client's request body (`body_read`). Default 10 s: a slow
    /// drip costs no more than this.
    pub body_read: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may finish
    /// (`shutdown_grace`). Default 25 s (below Kubernetes' 30 s).
    pub shutdown_grace: Duration,
    /// At start, the longest `/readyz` answers 503 while some app's first
    /// token call has not ended (with a token or Feishu's refusal), e.g.
    /// because Feishu cannot be reached (`startup`). Default 30 s; 0: ready
    /// as soon as the listeners are up.
    pub startup: Duration,
}

/// Upstream connection pool (`[pool]`).
#[derive(Debug, Clone)]
pub struct Pool {
    /// Idle connections are closed after this (`idle_timeout`). Default 90 s.
    pub idle_timeout: Duration,
    /// Idle connections kept per upstream host (`max_idle_per_host`).
    /// Default 256.
    pub max_idle_per_host: usize,
}

/// The server's part of [`Config`](super::Config), one field per key of the
/// same name.
pub(super) struct Server {
    /// `None` when invalid (a problem is recorded).
    pub listen: Option<SocketAddr>,
    /// `None` when invalid (a problem is recorded).
    pub admin_listen: Option<SocketAddr>,
    pub listen_backlog: u32,
    pub max_connections: usize,
    pub admin_max_connections: usize,
    pub upstream: Upstream,
    pub upstream_ca_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub workers: usize,
    pub timeouts: Timeouts,
    pub pool: Pool,
    pub log: Log,
    pub state_dir: Option<PathBuf>,
}

/// Reads the server's keys from the root section.
pub(super) fn read(s: &mut Section<'_>, p: &mut Problems) -> Server {
    let listen = addr(s, "listen", "127.0.0.1:8080", p);
    let admin_listen = addr(s, "admin_listen", "127.0.0.1:9090", p);
    if let (Some(a), Some(b)) = (listen, admin_listen) {
        if a == b && a.port() != 0 {
            p.push("admin_listen", "must differ from `listen`");
        }
    }
    let listen_backlog = s
        .integer("listen_backlog", 65535, p)
        .map_or(DEFAULT_LISTEN_BACKLOG, |v| v as u32);
    if listen_backlog == 0 {
        p.push("listen_backlog", "must be at least 1");
    }
    let max_connections = s
        .integer("max_connections", 1_000_000, p)
        .map_or(DEFAULT_MAX_CONNECTIONS, |v| v as usize);
    if max_connections == 0 {
        p.push("max_connections", "must be at least 1");
    }
    let admin_max_connections = s
        .integer("admin_max_connections", 100_000, p)
        .map_or(DEFAULT_ADMIN_MAX_CONNECTIONS, |v| v as usize);
    if admin_max_connections == 0 {
        p.push("admin_max_connections", "must be at least 1");
    }
    let upstream = upstream(s, "upstream", p).unwrap_or_else(default_upstream);
    let upstream_ca_file = s.string("upstream_ca_file", p).map(PathBuf::from);
    let tls_cert = s.string("tls_cert", p).map(PathBuf::from);
    let tls_key = s.string("tls_key", p).map(PathBuf::from);
    match (&tls_cert, &tls_key) {
        (Some(_), None) => p.push("tls_key", "is required when tls_cert is set"),
        (None, Some(_)) => p.push("tls_cert", "is required when tls_key is set"),
        // Whether they load is checked with the running parts
        // (`app::load_config`).
        _ => {}
    }
    let max_body_bytes = s
        .integer("max_body_bytes", 1 << 30, p)
        .map(|v| v as usize)
        .unwrap_or(1 << 20);
    let workers = s
        .integer("workers", 1024, p)
        .map_or_else(default_workers, |v| v as usize);
    Server {
        listen,
        admin_listen,
        listen_backlog,
        max_connections,
        admin_max_connections,
        upstream,
        upstream_ca_file,
        tls_cert,
        tls_key,
        max_body_bytes,
        workers,
        timeouts: read_timeouts(s, p),
        pool: read_pool(s, p),
        log: read_log(s, p),
        state_dir: s.string("state_dir", p).map(PathBuf::from),
    }
}

fn read_timeouts(root: &mut Section<'_>, p: &mut Problems) -> Timeouts {
    let mut t = root.table("timeouts", p);
    let mut d = |name, default| {
        t.as_mut()
            .and_then(|t| t.duration(name, p))
            .unwrap_or(default)
    };
    let out = Timeouts {
        connect: d("connect", Duration::from_secs(3)),
        upstream: d("upstream", Duration::from_secs(30)),
        upstream_idle: d("upstream_idle", Duration::from_secs(30)),
        body_read: d("body_read", Duration::from_secs(10)),
        shutdown_grace: d("shutdown_grace", Duration::from_secs(25)),
        startup: d("startup", Duration::from_secs(30)),
    };
    if let Some(t) = t {
        t.finish(p);
    }
    out
}

fn read_pool(root: &mut Section<'_>, p: &mut Problems) -> Pool {
    let mut t = root.table("pool", p);
    let idle_timeout = t
        .as_mut()
        .and_then(|t| t.duration("idle_timeout", p))
        .unwrap_or(Duration::from_secs(90));
    let max_idle_per_host = t
        .as_mut()
        .and_then(|t| t.integer("max_idle_per_host", 100_000, p))
        .map(|v| v as usize)
        .unwrap_or(256);
    if let Some(t) = t {
        t.finish(p);
    }
    Pool {
        idle_timeout,
        max_idle_per_host,
    }
}

fn read_log(root: &mut Section<'_>, p: &mut Problems) -> Log {
    let mut t = root.table("log", p);
    let format = match t.as_mut().and_then(|t| t.string("format", p)) {
        None | Some("plain") => LogFormat::Plain,
        Some("json") => LogFormat::Json,
        Some(other) => {
            p.push(
                "log.format",
                format!("{other:?} is not \"plain\" or \"json\""),
            );
            LogFormat::Plain
        }
    };
    let level = t
        .as_mut()
        .and_then(|t| t.string("level", p))
        .unwrap_or("info")
        .to_string();
    if let Err(e) = crate::observe::logging::check_filter(&level) {
        p.push("log.level", e);
    }
    if let Some(t) = t {
        t.finish(p);
    }
    Log { format, level }
}

/// Feishu's mainland endpoint.
fn default_upstream() -> Upstream {
    Upstream::parse("https://open.feishu.cn").expect("valid default")
}

/// A listening address, `default` when the key is absent.
fn addr<'a>(
    s: &mut Section<'a>,
    name: &'a str,
    default: &str,
    p: &mut Problems,
) -> Option<SocketAddr> {
    let v = s.string(name, p).unwrap_or(default);
    match v.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            p.push(
                s.key(name),
                format!("{v:?} is not an address like \"127.0.0.1:8080\""),
            );
            None
        }
    }
}

/// An optional upstream URL: the root `upstream`, or an app's own.
pub(super) fn upstream<'a>(
    s: &mut Section<'a>,
    name: &'a str,
    p: &mut Problems,
) -> Option<Upstream> {
    let v = s.string(name, p)?;
    match Upstream::parse(v) {
        Ok(u) => Some(u),
        Err(e) => {
            p.push(s.key(name), e);
            None
        }
    }
}
