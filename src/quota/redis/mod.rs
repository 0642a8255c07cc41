//! [`RedisQuota`]: one quota for the whole fleet of gateway replicas, kept
//! in Redis, and [`RedisScope`]: the same for each tenant of a store app.
//!
//! Every admission is ONE call of `redis.lua` by EVALSHA: the upstream-pause
//! check and the GCRA check-and-commit run atomically on the Redis server's
//! clock, with the local planner's parameters, so the local guarantee
//! carries over. While Redis is unreachable or slow, `fail` decides: each
//! replica limits locally to its share (`local`), refuses (`closed`) or
//! forwards without a limit (`open`) — see `health.rs`. The design, the
//! timing argument and what failover may over-admit are in
//! `docs/quota.md`, "The shared quota".

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use crate::redis_connection::Conn;
use prometheus::Histogram;
use redis::{RedisError, Script};
use tokio::time::Instant;

mod decide;
mod health;
mod key;
mod scope;
mod script;

use key::{Reply, SharedKey, Waiting};
pub use scope::RedisScope;
use scope::ScopeKeys;

use health::{Failure, Health};

use super::Snapshot;
use super::{Admit, Cause, KeySpec, Limit, LocalQuota, Overflow, Policy, QuotaKey, Rejection};
use super::{BackendStatus, FailMode};
use crate::observe::metrics::QuotaBackendMetrics;
use crate::redis_connection::{RedisConnection, RedisTarget};

/// The admission script (see the contract at its top).
pub const SCRIPT: &str = include_str!("redis.lua");

/// How often a replica checks Redis: while shared, to notice an outage
/// between requests; while degraded, to notice it healed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Timeouts and error replies switch to the fail mode once they have gone
/// on for this many `redis_timeout`s without a success (200 ms by
/// default); a connection error switches at once.
pub const TRIP_AFTER: u32 = 4;

/// Everything a [`RedisQuota`] needs besides its keys: plain data, from
/// `[quota]` (see `QuotaConfig`).
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// One server, a Sentinel setup or a Cluster.
    pub target: RedisTarget,
    /// Extra PEM roots for TLS to a private CA; else the public web roots.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key the gateway writes, e.g. `feishu-gateway:`.
    pub key_prefix: String,
    /// What to do while Redis is unreachable.
    pub fail: FailMode,
    /// The most gateway replicas that run at once (the local fallback's
    /// share is 1 / replicas).
    pub replicas: u32,
    /// Longest wait for one Redis call.
    pub timeout: Duration,
    /// The plan policy's rate fraction, for planning the fallback.
    pub min_rate_fraction: f64,
    /// How often to probe Redis (default [`PROBE_INTERVAL`]).
    pub probe_interval: Duration,
}

impl RedisSettings {
    /// The replica's connection to the Redis these settings name.
    pub fn open_connection(&self) -> Result<RedisConnection, String> {
        RedisConnection::open(&self.target, self.ca_file.as_deref(), self.timeout)
    }

    /// The settings `[quota]` gives, with `backend = "redis"` (an error
    /// without a `redis_url`).
    pub fn from_config(config: &super::QuotaConfig) -> Result<RedisSettings, String> {
        let target = config
            .redis
            .clone()
            .ok_or("quota.redis_url: required with backend = \"redis\"")?;
        Ok(RedisSettings {
            target,
            ca_file: config.redis_ca_file.clone(),
            key_prefix: config.key_prefix.clone(),
            fail: config.fail,
            replicas: config.replicas,
            timeout: config.redis_timeout,
            min_rate_fraction: config.min_rate_fraction,
            probe_interval: PROBE_INTERVAL,
        })
    }
}

/// The shared quota engine. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct RedisQuota {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQuota")
            .field("target", &self.inner.target)
            .field("keys", &self.inner.keys.len())
            .field("state", &self.inner.mode().as_str())
            .finish()
    }
}

/// Where this replica takes its decisions from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Through Redis.
    Shared = 0,
    /// By the fail mode: Redis failed and has not answered a probe since.
    Degraded = 1,
    /// Still by the fail mode, until the fleet's heal time.
    Healing = 2,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            0 => Mode::Shared,
            1 => Mode::Degraded,
            _ => Mode::Healing,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Degraded => "degraded",
            Mode::Healing => "healing",
        }
    }
}

struct Inner {
    conn: Conn,
    script: Script,
    keys: Box<[SharedKey]>,
    /// Specs of the fallback limiter (1/replicas), with `fail = "local"`.
    fallback_specs: Option<Vec<KeySpec>>,
    /// The fallback limiter, rebuilt (drained) at every switch away from
    /// Redis.
    fallback: RwLock<Option<Arc<LocalQuota>>>,
    fail: FailMode,
    timeout: Duration,
    /// For the first probe, which also connects (TLS handshakes take time).
    connect_timeout: Duration,
    probe_interval: Duration,
    heal_key: String,
    heal_grace: Duration,
    /// Prefix of every key (for scoped keys, see [`RedisQuota::scope`]).
    key_prefix: String,
    /// What keys made later ([`RedisQuota::key`]) are made with.
    settings: RedisSettings,
    /// Switches away from Redis so far: a scope rebuilds its fallback
    /// (drained) when this has changed since it built it.
    outages: AtomicU64,
    /// The fleet's last heal time, in Redis µs (0 = none): every take and
    /// peek floors a key's `tat` at this plus its drain, so keys the heal
    /// did not drain (scoped keys) are drained on first use.
    healed_at_us: AtomicU64,
    /// `rediss://host:port/db`, without credentials: for logs and `/readyz`.
    target: String,
    epoch: Instant,
    mode: AtomicU8,
    /// Start of the current streak of failed calls, in ns since `epoch`
    /// (0 = the last call succeeded).
    failing_since: AtomicU64,
    /// The script is known to be loaded (since the last outage).
    loaded: AtomicBool,
    /// The first probe has finished (connected and loaded, or failed).
    settled: AtomicBool,
    /// With `Mode::Healing`: when to switch back, in ns since `epoch`.
    heal_at: AtomicU64,
    health: Mutex<Health>,
    metrics: Option<QuotaBackendMetrics>,
    prober: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(p) = self.prober.get() {
            p.abort();
        }
    }
}

/// Which fallback limiter a key uses while Redis is away.
#[derive(Clone, Copy)]
enum Fallback<'a> {
    /// The engine's, at this key.
    Engine(QuotaKey),
    /// A scope's, at this key.
    Scope(&'a ScopeKeys, QuotaKey),
}

impl RedisQuota {
    /// An engine for these keys (`QuotaKey::new(i)` is `specs[i]`; every spec
    /// needs a [name](KeySpec::with_name)). Does not connect: the first probe
    /// (spawned here, so call it inside a tokio runtime) loads the script,
    /// and a Redis that is down at start puts the replica in its fail mode.
    pub fn new(
        settings: &RedisSettings,
        specs: Vec<KeySpec>,
        metrics: Option<QuotaBackendMetrics>,
    ) -> Result<RedisQuota, String> {
        let connection = settings.open_connection()?;
        RedisQuota::with_connection(&connection, settings, specs, metrics)
    }

    /// [`new`](Self::new) on a connection the caller shares with others
    /// (the app_ticket store): one connection per replica, however many
    /// users it has.
    pub fn with_connection(
        connection: &RedisConnection,
        settings: &RedisSettings,
        specs: Vec<KeySpec>,
        metrics: Option<QuotaBackendMetrics>,
    ) -> Result<RedisQuota, String> {
        let conn = connection.handle();
        let target = connection.target().to_string();
        let connect_timeout = connection.connect_timeout();

        let replicas = settings.replicas.max(1);
        let mut keys = Vec::with_capacity(specs.len());
        let mut fallback_specs = Vec::with_capacity(specs.len());
        for spec in &specs {
            let (key, fallback) = shared_key(spec, settings)?;
            keys.push(key);
            fallback_specs.extend(fallback?);
        }
        let probe_interval = settings.probe_interval.max(Duration::from_millis(10));
        let now = Instant::now();
        let inner = Arc::new(Inner {
            conn,
            script: Script::new(SCRIPT),
            keys: keys.into_boxed_slice(),
            fallback_specs: (settings.fail == FailMode::Local).then_some(fallback_specs),
            fallback: RwLock::new(None),
            fail: settings.fail,
            timeout: settings.timeout,
            connect_timeout,
            probe_interval,
            heal_key: format!("{}quota:heal", settings.key_prefix),
            settings: settings.clone(),
            key_prefix: settings.key_prefix.clone(),
            outages: AtomicU64::new(0),
            healed_at_us: AtomicU64::new(0),
            // Every replica probes at least once within it (a probe is a few
            // calls of at most `timeout` each).
            heal_grace: 2 * probe_interval + 4 * settings.timeout,
            target,
            epoch: now,
            mode: AtomicU8::new(Mode::Shared as u8),
            failing_since: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            heal_at: AtomicU64::new(0),
            health: Mutex::new(Health {
                since: now,
                last_error: None,
                accounted: now,
            }),
            metrics,
            prober: OnceLock::new(),
        });
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                inner.probe().await;
                let every = inner.probe_interval;
                drop(inner);
                tokio::time::sleep(every).await;
            }
        });
        let _ = inner.prober.set(task.abort_handle());
        tracing::info!(
            target = %inner.target,
            keys = inner.keys.len(),
            fail = settings.fail.as_str(),
            replicas,
            "quotas shared through Redis"
        );
        Ok(RedisQuota { inner })
    }

    /// Admit one request for `key`, or reject it (see the module docs).
    /// Reject mode takes one Redis round trip; so does wait mode, plus a
    /// sleep until the reserved slot.
    pub async fn acquire(&self, key: QuotaKey, overflow: Overflow) -> Result<Admit, Rejection> {
        let Some(k) = self.inner.keys.get(key.index() as usize) else {
            return Ok(unknown_key(key));
        };
        self.inner.acquire(k, Fallback::Engine(key), overflow).await
    }

    /// Feishu throttled `key`: pause it for `duration`, on this replica at
    /// once and for the whole fleet through Redis (written in the
    /// background; extends, never shortens, a running pause).
    pub fn pause(&self, key: QuotaKey, duration: Duration) {
        let Some(k) = self.inner.keys.get(key.index() as usize) else {
            return;
        };
        if duration.is_zero() {
            return;
        }
        self.inner.note_pause(k, duration);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let this = self.clone();
            rt.spawn(async move { this.pause_shared(key, duration).await });
        }
    }

    /// Writes an upstream pause of `key` to Redis and waits for it (also
    /// pauses the key on this replica). Returns whether Redis has it.
    pub async fn pause_shared(&self, key: QuotaKey, duration: Duration) -> bool {
        let Some(k) = self.inner.keys.get(key.index() as usize) else {
            return false;
        };
        self.inner.pause_shared(k, duration).await
    }

    /// The state of `key` for headers, read without spending quota (one
    /// round trip while shared; the fallback's state while degraded).
    pub async fn snapshot(&self, key: QuotaKey) -> Option<Snapshot> {
        let k = self.inner.keys.get(key.index() as usize)?;
        Some(self.inner.snapshot(k, Fallback::Engine(key)).await)
    }

    /// The backend's state for `/readyz`.
    pub fn status(&self) -> BackendStatus {
        let inner = &self.inner;
        let mode = inner.mode();
        let health = lock(&inner.health);
        BackendStatus {
            backend: "redis",
            state: mode.as_str(),
            fail: Some(inner.fail.as_str()),
            target: Some(inner.target.clone()),
            since_secs: Some(health.since.elapsed().as_secs()),
            last_error: if mode == Mode::Shared {
                None
            } else {
                health.last_error.clone()
            },
        }
    }

    /// True once the first probe has finished: connected and the script
    /// loaded, or failed (then the fail mode decides). `/readyz` waits for
    /// it, so the first requests do not pay for the connection.
    pub fn is_settled(&self) -> bool {
        self.inner.settled.load(Ordering::Acquire)
    }

    /// True while decisions are taken through Redis.
    pub fn is_shared(&self) -> bool {
        self.inner.mode() == Mode::Shared
    }

    /// The Redis key names of `key`: its `tat` and its pause (for tests and
    /// operators).
    pub fn redis_keys(&self, key: QuotaKey) -> Option<(&str, &str)> {
        let k = self.inner.keys.get(key.index() as usize)?;
        Some((&k.tat, &k.pause))
    }

    /// The fleet-wide name of `key` (as given in its spec).
    pub fn key_name(&self, key: QuotaKey) -> Option<&str> {
        Some(&self.inner.keys.get(key.index() as usize)?.name)
    }

    /// Runs one health probe now (what the background task does every
    /// [`PROBE_INTERVAL`]); for tests.
    pub async fn probe_now(&self) {
        self.inner.probe().await;
    }
}

/// The Redis form of `spec` and, with `fail = "local"`, the spec of its
/// fallback (its plan split between the replicas), or why it has none (a
/// window smaller than the replica count).
#[allow(clippy::type_complexity)]
fn shared_key(
    spec: &KeySpec,
    settings: &RedisSettings,
) -> Result<(SharedKey, Result<Option<KeySpec>, String>), String> {
    let replicas = settings.replicas.max(1);
    let name = spec.name();
    if name.is_empty() {
        return Err("quota: a shared key needs a name".into());
    }
    let plan = spec.plan();
    let split = match settings.fail {
        FailMode::Local => plan
            .split(replicas, settings.min_rate_fraction)
            .map(Some)
            .map_err(|e| {
                format!(
                    "quota key {name}: {e}; with quota.fail = \"local\" every limit must be at least quota.replicas ({replicas}), or use fail = \"closed\""
                )
            }),
        FailMode::Closed | FailMode::Open => Ok(None),
    };
    let t_ns = plan.emission_interval().as_nanos() as u64;
    let t_us = t_ns.div_ceil(1000) + 1;
    let burst = u64::from(plan.burst());
    let split_burst = match &split {
        Ok(Some(s)) => u64::from(s.burst()) * u64::from(replicas),
        _ => 0,
    };
    let key = SharedKey::named(
        name,
        &settings.key_prefix,
        t_us,
        (burst - 1) * t_us,
        burst.max(split_burst),
        Arc::new(Policy::new(plan.windows(), plan.reported_window())),
        spec.max_waiters(),
    );
    let max_waiters = spec.max_waiters();
    Ok((key, split.map(|s| s.map(|s| KeySpec::new(s, max_waiters)))))
}

fn micros(v: i64) -> Duration {
    Duration::from_micros(v.max(0) as u64)
}

fn clamp_u32(v: i64) -> u32 {
    v.clamp(0, i64::from(u32::MAX)) as u32
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `fail = "open"`: admitted without a limit.
fn unlimited() -> Admit {
    Admit {
        remaining: u32::MAX,
        waited: Duration::ZERO,
    }
}

fn unknown_key(key: QuotaKey) -> Admit {
    tracing::error!(
        ?key,
        "quota key not from this engine: admitted without a quota"
    );
    Admit {
        remaining: u32::MAX,
        waited: Duration::ZERO,
    }
}
