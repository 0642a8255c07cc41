//! Events over Feishu's long connection ("长连接", feishu-platform.md §5):
//! one WebSocket per self-built app with `events = "long_connection"`,
//! opened by the gateway toward Feishu, so no public callback URL is
//! needed.
//!
//! | part | what |
//! |---|---|
//! | this file | the interface ([`EventSink`], [`Ack`], [`start`], [`LongConnections`]) and each app's supervisor: lease, connect, reconnect by Feishu's rules |
//! | `session` | one connection: `POST /callback/ws/endpoint`, the upgrade, then pings, pongs, fragments and acks |
//! | [`frame`] | `pbbp2.Frame` with prost, pings and acks |
//! | [`reassembly`] | fragments by `message_id` / `sum` / `seq`, bounded |
//! | `lease` | one connection per app across replicas, with Redis |
//! | [`metrics`] | `feishu_gateway_events_*` of the connection |
//!
//! # The protocol, as the gateway speaks it
//!
//! 1. `POST {upstream}/callback/ws/endpoint` `{"AppID","AppSecret"}` →
//!    `data.URL` (`wss://…/ws/v2?device_id=…&service_id=…&ticket=…`) and
//!    `data.ClientConfig`. Code 1 (SYSTEM_BUSY), 1000040343, a non-200
//!    status or no answer are retried; any other code (e.g. a wrong
//!    secret) is fatal.
//! 2. The upgrade, over the gateway's own TCP and rustls (the upstream
//!    roots plus `upstream_ca_file`). A refusal's `handshake-status` 403,
//!    or 514 with `handshake-autherrcode` 1000040350 (50 connections), is
//!    fatal; others are retried.
//! 3. A ping (`CONTROL`, `type=ping`, `service` = the URL's `service_id`)
//!    at once and every PingInterval; a pong's JSON payload replaces the
//!    ClientConfig. Nothing received for three ping intervals ends the
//!    connection.
//! 4. `DATA` frames `type=event`: fragments are joined (5 s per partial
//!    event, bounded: [`reassembly::Limits`]); each complete event goes to
//!    the [`EventSink`] and is acked with the frame that completed it, plus
//!    `biz_rt`, payload `{"code":200}`, `{"code":200,"data":"<base64>"}`
//!    (a callback's answer) or `{"code":500}`. Other types (`card`) are
//!    dropped unacked, as the SDKs do.
//! 5. On a loss: wait random(0, ReconnectNonce), then try every
//!    ReconnectInterval, ReconnectCount times (-1: forever), each try a
//!    fresh endpoint call. A fatal answer stops the app's client for good:
//!    logged at error and `feishu_gateway_events_connection_stopped{reason}`.
//!
//! # The sink must be fast
//!
//! Feishu counts an event as delivered when its ack arrives within 3 s;
//! otherwise it re-pushes it (15 s, 5 min, 1 h, 6 h). The sink should
//! accept an event into its own queue and answer at once; only a card
//! callback (`card.action.trigger`) waits for a subscriber's answer. A sink
//! that has not answered within [`Settings::ack_deadline`] (2.5 s) gets
//! its event acked `{"code":500}` (and its future dropped): Feishu will
//! push the event again, and the de-duplication downstream keeps the
//! repeat from reaching a subscriber twice.
//!
//! # Replicas
//!
//! Feishu hands each event to ONE random connection of an app (cluster
//! mode, ≤ 50 connections). With Redis ([`LeaseConfig`]) one replica holds
//! an app's connection at a time (a lease, see `lease`), the others stand
//! by and take over within the lease's TTL. Without Redis every replica
//! connects: that is correct too, because whichever replica receives an
//! event delivers it; it only costs a connection per replica.
//!
//! # Secrets
//!
//! The app secret is sent only in the endpoint call's body. The URL carries
//! a short-lived ticket: logs name only its host, port and path.

pub mod frame;
mod lease;
pub mod metrics;
pub mod reassembly;
mod session;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_core::future::BoxFuture;
use rand::Rng;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::redis_connection::RedisConnection;
use crate::secret::Secret;
use crate::upstream::{self, HttpClient, Upstream};

pub use lease::lease_key;
pub use metrics::LongConnectionMetrics;
use session::{ConnectError, Ended};

/// Where complete events go: the events pipeline (`EventHub`).
pub trait EventSink: Send + Sync + 'static {
    /// One complete event (plaintext JSON) of the app named `app` (its
    /// `[[apps]] name`); returns the ack to send. Must answer fast (see the
    /// module docs): accept into a queue, answer a card callback.
    fn accept(&self, app: &str, payload: Bytes) -> BoxFuture<'static, Ack>;
}

/// The answer to Feishu for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// `{"code":200}`; with `Some`, a callback's answer (JSON), sent base64
    /// in `"data"`.
    Ok(Option<Bytes>),
    /// `{"code":500}`: Feishu will push the event again.
    Failed,
}

/// One app on the long connection.
#[derive(Debug, Clone)]
pub struct LongConnectionApp {
    /// The `[[apps]] name`: the metrics' `app` label and the sink's `app`.
    pub name: String,
    /// The app id (`cli_…`).
    pub app_id: String,
    /// The app secret, sent in the endpoint call only.
    pub secret: Secret,
    /// The app's Feishu base URL.
    pub upstream: Upstream,
}

/// How connections to Feishu are made: the background HTTP client (for
/// the endpoint call) and the TLS configuration (for `wss`), both built
/// from the gateway's upstream settings.
#[derive(Clone)]
pub struct Transport {
    pub http: HttpClient,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Transport {
    /// From the gateway's upstream settings (`upstream_ca_file` included).
    pub fn new(settings: &upstream::Settings) -> Result<Transport, String> {
        Ok(Transport {
            http: upstream::build_client(settings)?,
            tls: Arc::new(upstream::tls_client_config(settings)?),
        })
    }
}

/// The client's settings. The four ClientConfig values are Feishu's local
/// defaults (feishu-platform.md §5.2) until Feishu sends its own, unless
/// `follow_server_config` is off (tests).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The ClientConfig before Feishu's.
    pub client: ClientSettings,
    /// Apply the ClientConfig of endpoint answers and pongs. Default true.
    pub follow_server_config: bool,
    /// Longest endpoint call (Node uses 15 s).
    pub endpoint_timeout: Duration,
    /// Longest TCP + TLS + upgrade.
    pub connect_timeout: Duration,
    /// Longest wait for the sink before acking 500 (Feishu's deadline is
    /// 3 s).
    pub ack_deadline: Duration,
    /// Largest WebSocket message accepted.
    pub max_frame_bytes: usize,
    /// Bounds of fragment reassembly.
    pub reassembly: reassembly::Limits,
    /// The lease's TTL (with Redis); renewed every third of it.
    pub lease_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            client: ClientSettings::default(),
            follow_server_config: true,
            endpoint_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(15),
            ack_deadline: Duration::from_millis(2500),
            max_frame_bytes: 1 << 20,
            reassembly: reassembly::Limits::default(),
            lease_ttl: Duration::from_secs(15),
        }
    }
}

/// Feishu's ClientConfig, as durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSettings {
    /// Reconnect attempts after a loss; -1 = forever.
    pub reconnect_count: i64,
    /// Between reconnect attempts.
    pub reconnect_interval: Duration,
    /// Upper bound of the random wait before the first attempt.
    pub reconnect_nonce: Duration,
    /// Between pings.
    pub ping_interval: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            reconnect_count: -1,
            reconnect_interval: Duration::from_secs(120),
            reconnect_nonce: Duration::from_secs(30),
            ping_interval: Duration::from_secs(120),
        }
    }
}

impl ClientSettings {
    /// Takes the values of a ClientConfig JSON (seconds) that are present
    /// and sane: intervals at least 1 s, at most a day.
    fn apply(&mut self, v: &Value) {
        let secs = |k: &str| v[k].as_u64().map(|s| Duration::from_secs(s.min(86_400)));
        if let Some(d) = secs("PingInterval") {
            self.ping_interval = d.max(Duration::from_secs(1));
        }
        if let Some(d) = secs("ReconnectInterval") {
            self.reconnect_interval = d.max(Duration::from_secs(1));
        }
        if let Some(d) = secs("ReconnectNonce") {
            self.reconnect_nonce = d;
        }
        if let Some(n) = v["ReconnectCount"].as_i64() {
            self.reconnect_count = n.max(-1);
        }
    }
}

/// The replicas' shared Redis, for the lease.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The replica's connection.
    pub redis: RedisConnection,
    /// `[quota] key_prefix`.
    pub key_prefix: String,
}

/// What a client is doing, for tests and the status page.
#[derive(Debug, Default)]
struct Status {
    up: AtomicBool,
    connects: AtomicU64,
    stopped: Mutex<Option<String>>,
}

/// One app's client, as [`LongConnections::status`] shows it (and the
/// admin status page, `/status.json`'s `long_connections`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppStatus {
    /// The app's name.
    pub app: String,
    /// Connected now.
    pub up: bool,
    /// Connections made so far.
    pub connects: u64,
    /// Why the client stopped for good, if it did.
    pub stopped: Option<String>,
}

/// What one app's tasks share.
struct AppCtx {
    app: LongConnectionApp,
    transport: Transport,
    sink: Arc<dyn EventSink>,
    settings: Settings,
    metrics: metrics::AppMetrics,
    status: Arc<Status>,
}

/// The running clients. Dropping it stops them abruptly; [`shutdown`]
/// closes the connections and releases the leases.
///
/// [`shutdown`]: LongConnections::shutdown
pub struct LongConnections {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    status: Vec<(String, Arc<Status>)>,
}

/// Starts one client per app (on the current Tokio runtime).
pub fn start(
    apps: Vec<LongConnectionApp>,
    transport: Transport,
    sink: Arc<dyn EventSink>,
    settings: Settings,
    lease: Option<LeaseConfig>,
    metrics: &LongConnectionMetrics,
) -> LongConnections {
    let (stop, _) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut status = Vec::new();
    for app in apps {
        let st = Arc::new(Status::default());
        status.push((app.name.clone(), Arc::clone(&st)));
        let lease = lease.as_ref().map(|l| {
            Arc::new(lease::Lease::new(
                l.redis.clone(),
                &l.key_prefix,
                &app.app_id,
                settings.lease_ttl,
            ))
        });
        let ctx = Arc::new(AppCtx {
            metrics: metrics.app(&app.name),
            app,
            transport: transport.clone(),
            sink: Arc::clone(&sink),
            settings: settings.clone(),
            status: st,
        });
        tasks.push(tokio::spawn(supervise(ctx, stop.subscribe(), lease)));
    }
    LongConnections {
        stop,
        tasks,
        status,
    }
}

impl LongConnections {
    /// Each app's client.
    pub fn status(&self) -> Vec<AppStatus> {
        self.status
            .iter()
            .map(|(app, s)| AppStatus {
                app: app.clone(),
                up: s.up.load(Ordering::SeqCst),
                connects: s.connects.load(Ordering::SeqCst),
                stopped: s
                    .stopped
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            })
            .collect()
    }

    /// Closes every connection (a close frame), releases the leases, and
    /// waits for the clients to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for LongConnections {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Sleeps `d`, or returns false at once when the gateway stops.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

/// A connection shorter than this was cut at once: wait
/// [`SHORT_LIVED_WAIT`] before the next.
const SHORT_LIVED: Duration = Duration::from_secs(5);
/// See [`SHORT_LIVED`].
const SHORT_LIVED_WAIT: Duration = Duration::from_secs(1);

/// Keeps the lease (or tries to take it) and says whether this replica
/// may connect. Fail-open: an unanswered Redis call counts as held.
async fn keep_lease(
    ctx: Arc<AppCtx>,
    lease: Arc<lease::Lease>,
    allowed: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut warned = false;
    // Since when this replica holds the lease without a connection.
    let mut unconnected: Option<tokio::time::Instant> = None;
    loop {
        let held = match lease.hold().await {
            Ok(held) => {
                warned = false;
                held
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(
                        app = %ctx.app.name,
                        error = %e,
                        "events: the long connection's lease cannot be read in Redis; connecting anyway"
                    );
                    warned = true;
                }
                true
            }
        };
        // A holder that cannot connect (its way to Feishu is broken, its
        // Redis is not) must not keep the app unconnected everywhere: after
        // three TTLs without a connection it hands the lease over and stands
        // aside for two, so a replica that can connect takes it.
        if held && !ctx.status.up.load(Ordering::SeqCst) {
            let since = *unconnected.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= ctx.settings.lease_ttl * 3 {
                tracing::warn!(
                    app = %ctx.app.name,
                    "events: holding the long connection's lease without a connection; handing it over"
                );
                allowed.send_if_modified(|a| std::mem::replace(a, false));
                lease.release().await;
                ctx.metrics.lease.set(0);
                unconnected = None;
                if !pause(ctx.settings.lease_ttl * 2, &mut stop).await {
                    return;
                }
                continue;
            }
        } else {
            unconnected = None;
        }
        ctx.metrics.lease.set(i64::from(held));
        allowed.send_if_modified(|a| std::mem::replace(a, held) != held);
        if !pause(lease.renew_every(), &mut stop).await {
            return;
        }
    }
}

/// One app's client: wait for the lease, connect, run, reconnect by
/// Feishu's rules, until the gateway stops or Feishu says never.
async fn supervise(
    ctx: Arc<AppCtx>,
    mut stop: watch::Receiver<bool>,
    lease: Option<Arc<lease::Lease>>,
) {
    let (allowed_tx, mut allowed) = watch::channel(lease.is_none());
    // Without a lease the sender stays here for the client's whole life: a
    // channel whose sender is gone answers `changed()` at once, forever, and
    // the session's select would spin on it.
    let mut no_lease = None;
    let lease_task = match &lease {
        Some(l) => Some(tokio::spawn(keep_lease(
            Arc::clone(&ctx),
            Arc::clone(l),
            allowed_tx,
            stop.clone(),
        ))),
        None => {
            no_lease = Some(allowed_tx);
            None
        }
    };
    run_client(&ctx, &mut stop, &mut allowed).await;
    drop(no_lease);
    ctx.metrics.up.set(0);
    ctx.status.up.store(false, Ordering::SeqCst);
    if let (Some(task), Some(lease)) = (lease_task, lease) {
        task.abort();
        lease.release().await;
        ctx.metrics.lease.set(0);
    }
}

/// The loop of [`supervise`]; returns when the client stops.
async fn run_client(
    ctx: &AppCtx,
    stop: &mut watch::Receiver<bool>,
    allowed: &mut watch::Receiver<bool>,
) {
    let app = &ctx.app.name;
    let mut cfg = ctx.settings.client;
    // No jitter before the first connection, nor after standing by.
    let mut jitter = false;
    'standby: loop {
        // Wait for the lease (at once without Redis).
        while !*allowed.borrow_and_update() {
            tokio::select! {
                changed = allowed.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
        }
        if jitter && !cfg.reconnect_nonce.is_zero() {
            let wait = cfg
                .reconnect_nonce
                .mul_f64(rand::thread_rng().gen_range(0.0..1.0));
            if !pause(wait, stop).await {
                return;
            }
        }
        let mut failures: i64 = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            if !*allowed.borrow() {
                jitter = false;
                continue 'standby;
            }
            match session::connect(ctx, &mut cfg).await {
                Ok(conn) => {
                    ctx.metrics.up.set(1);
                    ctx.status.up.store(true, Ordering::SeqCst);
                    ctx.status.connects.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(app = %app, at = %conn.where_, "events: long connection up");
                    let where_ = conn.where_.clone();
                    let opened = tokio::time::Instant::now();
                    let ended = session::run(ctx, conn, &mut cfg, stop, allowed).await;
                    ctx.metrics.up.set(0);
                    ctx.status.up.store(false, Ordering::SeqCst);
                    match ended {
                        Ended::Shutdown => {
                            tracing::info!(app = %app, at = %where_, "events: long connection closed (shutdown)");
                            return;
                        }
                        Ended::Lease => {
                            tracing::info!(app = %app, "events: long connection handed over (lease lost); standing by");
                            jitter = false;
                        }
                        Ended::Closed => {
                            ctx.metrics.reconnect_closed.inc();
                            tracing::warn!(app = %app, at = %where_, "events: Feishu closed the long connection; reconnecting");
                            jitter = true;
                        }
                        Ended::Lost(why) => {
                            ctx.metrics.reconnect_lost.inc();
                            tracing::warn!(app = %app, at = %where_, reason = %why, "events: long connection lost; reconnecting");
                            jitter = true;
                        }
                    }
                    // A connection that ends as soon as it opens (a proxy,
                    // a server dropping it) must not make the client call
                    // the endpoint in a tight loop, whatever ReconnectNonce
                    // says.
                    if jitter
                        && opened.elapsed() < SHORT_LIVED
                        && !pause(SHORT_LIVED_WAIT, stop).await
                    {
                        return;
                    }
                    continue 'standby;
                }
                Err(ConnectError::Fatal { reason, detail }) => {
                    ctx.metrics.stopped(reason);
                    *ctx.status
                        .stopped
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(reason.to_owned());
                    tracing::error!(
                        app = %app,
                        reason,
                        detail = %detail,
                        "events: Feishu refused the long connection for good; not reconnecting (fix the app, then restart the gateway)"
                    );
                    return;
                }
                Err(ConnectError::Retry { what, detail }) => {
                    match what {
                        "endpoint" => ctx.metrics.reconnect_endpoint.inc(),
                        _ => ctx.metrics.reconnect_handshake.inc(),
                    }
                    failures += 1;
                    // ReconnectCount attempts in all, as the SDKs count
                    // them (Python stops at `i >= count`).
                    if cfg.reconnect_count >= 0 && failures >= cfg.reconnect_count.max(1) {
                        ctx.metrics.stopped("gave_up");
                        *ctx.status
                            .stopped
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some("gave_up".to_owned());
                        tracing::error!(
                            app = %app,
                            attempts = failures,
                            "events: long connection not restored after ReconnectCount attempts; giving up"
                        );
                        return;
                    }
                    tracing::warn!(
                        app = %app,
                        failed = what,
                        detail = %detail,
                        retry_in = ?cfg.reconnect_interval,
                        "events: long connection attempt failed"
                    );
                    if !pause(cfg.reconnect_interval, stop).await {
                        return;
                    }
                }
            }
        }
    }
}
