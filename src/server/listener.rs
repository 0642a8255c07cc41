//! The listening sockets: bound with a listen backlog of our choosing (a
//! storm of connects waits in the kernel's queue instead of being dropped),
//! and a limit on the connections each listener holds open.
//!
//! Why the backlog: a connect that finds the accept queue full has its SYN
//! dropped, and the client retransmits it only after 1 s. tokio's (and
//! std's) `bind` listen with a backlog of 128, so 2,000 clients connecting
//! at once (a deploy, a reconnect storm) saw connects of 1 s and more, and a
//! request beside them waited as long. The default `listen_backlog` is
//! 4096; Linux caps every backlog at `net.core.somaxconn` (4096 by default
//! since 5.4), silently: we cap it ourselves to log the value in force.
//!
//! Why the limit: every open connection holds a file descriptor (and
//! memory); a flood of idle connections must not exhaust them. Beyond
//! `max_connections` a new connection is accepted and closed at once
//! (nothing is read from it or written to it), counted in
//! `feishu_gateway_connections_rejected_total{listener}`, and logged at
//! most every 10 s.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket};

use crate::observe::metrics::ListenerMetrics;

/// Where Linux keeps the cap on every listen backlog.
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

/// The kernel's cap on listen backlogs, where it can be read (Linux).
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string(SOMAXCONN)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The backlog in force for `configured`: capped by the kernel's
/// `somaxconn` when it is known.
pub fn effective_backlog(configured: u32, somaxconn: Option<u32>) -> u32 {
    somaxconn
        .map_or(configured, |cap| configured.min(cap))
        .max(1)
}

/// Binds `addr` with a listen backlog of `backlog` (capped as
/// [`effective_backlog`] says), `SO_REUSEADDR` set as tokio's own `bind`
/// does. Returns the listener and the backlog in force.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<(TcpListener, u32)> {
    let backlog = effective_backlog(backlog, somaxconn());
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok((socket.listen(backlog)?, backlog))
}

/// The soft limit on open files of this process, where it can be read
/// (Linux: `/proc/self/limits`), `None` when unlimited or unknown.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How many connections a listener holds open at once, and where it
/// counts them. Cloned into every connection it admits.
#[derive(Clone, Debug)]
pub struct ConnectionLimit(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// `main` or `admin`, for the log.
    listener: &'static str,
    max: usize,
    open: AtomicUsize,
    metrics: Option<ListenerMetrics>,
    /// Rejections not logged yet, and when the last log line was.
    unlogged: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

/// How often a listener at its limit says so in the log, at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl ConnectionLimit {
    /// At most `max` open connections on the listener `listener`, counted
    /// in `metrics` when given.
    pub fn new(listener: &'static str, max: usize, metrics: Option<ListenerMetrics>) -> Self {
        ConnectionLimit(Arc::new(Inner {
            listener,
            max: max.max(1),
            open: AtomicUsize::new(0),
            metrics,
            unlogged: AtomicU64::new(0),
            last_log: Mutex::new(None),
        }))
    }

    /// No limit to speak of, no metrics (tests, the demo's parts).
    pub fn unlimited() -> Self {
        ConnectionLimit::new("main", usize::MAX, None)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.open.load(Ordering::Acquire)
    }

    /// A place for one more connection, held until the guard is dropped;
    /// `None` (the rejection counted and, now and then, logged) when the
    /// listener is at its limit.
    pub fn admit(&self) -> Option<ConnectionGuard> {
        let inner = &self.0;
        let admitted = inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < inner.max).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            if let Some(m) = &inner.metrics {
                m.open.inc();
                m.accepted.inc();
            }
            return Some(ConnectionGuard(Arc::clone(&self.0)));
        }
        if let Some(m) = &inner.metrics {
            m.rejected.inc();
        }
        let unlogged = inner.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = inner.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            inner.unlogged.fetch_sub(unlogged, Ordering::Relaxed);
            tracing::warn!(
                listener = inner.listener,
                max_connections = inner.max,
                rejected = unlogged,
                "at max_connections: new connections are closed at once (feishu_gateway_connections_rejected_total)"
            );
        }
        None
    }
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Inner>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(m) = &self.0.metrics {
            m.open.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_is_capped_by_the_kernel() {
        assert_eq!(effective_backlog(1024, Some(4096)), 1024);
        assert_eq!(effective_backlog(8192, Some(4096)), 4096);
        assert_eq!(effective_backlog(1024, None), 1024);
        assert_eq!(effective_backlog(1024, Some(0)), 1);
    }

    #[test]
    fn the_limit_admits_up_to_max_and_frees_on_drop() {
        let metrics =
            crate::observe::metrics::Metrics::new(prometheus::Registry::new(), &[], &[]).unwrap();
        let l = ConnectionLimit::new("main", 2, Some(metrics.listener("main")));
        let a = l.admit().unwrap();
        let b = l.admit().unwrap();
        assert!(l.admit().is_none());
        assert!(l.admit().is_none());
        assert_eq!(l.open(), 2);
        drop(a);
        let c = l.admit().unwrap();
        let m = metrics.listener("main");
        assert_eq!(
            (m.open.get(), m.accepted.get(), m.rejected.get()),
            (2, 3, 2)
        );
        drop((b, c));
        assert_eq!((l.open(), m.open.get()), (0, 0));
    }

    #[test]
    fn the_open_files_limit_is_read_where_it_can_be() {
        if cfg!(target_os = "linux") {
            assert!(open_files_limit().is_some_and(|n| n > 0));
        }
    }
}
