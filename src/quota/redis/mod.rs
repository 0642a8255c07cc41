//! [`RedisQuota`]: one quota for the whole fleet of gateway replicas, kept
//! in Redis, and [`RedisScope`]: the same for each tenant of a store app.
//!
//! Every admission is ONE call of `redis.lua` by EVALSHA: the upstream-pause
//! check and the GCRA check-and-commit run atomically on the Redis server's
//! clock, with the local planner's parameters, so the local guarantee
//! carries over. While Redis is unreachable or slow, `fail` decides: each
//! replica limits locally to its share (`local`), refuses (`closed`) or
//! forwards without a limit (`open`) — see [`health`]. The design, the
//! timing argument and what failover may over-admit are in
//! `docs/quota.md`, "The shared quota".
//! [`RedisQuota`]: one quota for the whole fleet of gateway replicas, kept
//! in Redis (issue 7), and [`RedisScope`]: the same for each tenant of a
//! store app (issue 9).
//!
//! # The decision
//!
//! Every admission is ONE call of `redis.lua` by EVALSHA (loaded at start,
//! reloaded by the client on `NOSCRIPT`): the upstream-pause check and the
//! GCRA check-and-commit of the key run atomically on the Redis server, on
//! the server's clock (`TIME`). It is the local engine's algorithm with the
//! local plan's parameters ([`Plan`](super::Plan)), so the guarantee and the efficiency
//! figures carry over, with two adjustments:
//!
//! - time is counted in whole microseconds, so the period is rounded UP to
//!   whole microseconds plus one: `(N - b + 1) * t > L + 1 µs` still holds,
//!   which absorbs the truncation of `TIME` (costs ~0.003 % of the rate);
//! - the reply travels back before the request leaves, so the Redis reply
//!   leg is arrival jitter like the pool's and the network's: it must fit in
//!   the plan's margin. That is why `redis_timeout` defaults to 50 ms and may
//!   not exceed half the margin (a slower answer counts as a failure).
//!
//! Reject mode is one call. Wait mode is one call too: when the next slot is
//! within the request's maximum wait, the script *reserves* it (advances the
//! key's `tat`) and returns how far ahead it is; the replica sleeps that long
//! and forwards. Slots are handed out in the order requests reach Redis, so
//! waiters of every replica are served first come, first served, and a
//! reject-mode request elsewhere cannot take a reserved slot. Only an
//! upstream pause makes a waiter ask again, once it has slept through it.
//! Each replica still bounds its own sleepers per key (`max_waiters`). A
//! waiter whose client goes away leaves its reserved slot unused, which errs
//! on the safe side.
//!
//! # The upstream pause
//!
//! A 429 from Feishu pauses the key for every replica: the replica that saw
//! it pauses the key locally at once and writes the pause's end (on Redis
//! time) to the key's pause entry, which the script checks before the GCRA.
//!
//! # When Redis is unreachable or slow
//!
//! Every call has a timeout (`redis_timeout`). A connection error (refused,
//! reset, dropped) means Redis is unreachable; timeouts and error replies
//! mean it is slow or broken once they persist for [`TRIP_AFTER`] timeouts
//! in a row without a success. Either switches the replica to its fail
//! mode, logged once and counted in metrics. (Before that, a request whose
//! call failed gets the fail mode's answer, except that `local` answers 429
//! at once, or tries again in wait mode: the local share is only safe as a
//! whole switch, see below. Tolerating a short streak keeps a brief stall,
//! e.g. CPU throttling, from costing a switch and the drained return.)
//!
//! - `local`: a local limiter per key with every limit divided by
//!   `replicas` ([`Plan::split`](super::Plan::split)), started with an empty burst
//!   ([`LocalQuota::drain`]). If Redis is down for every replica, the fleet
//!   honours every window across the switch too (proof at [`Plan::split`](super::Plan::split)).
//! - `closed`: refuse (the gateway answers 503 `quota-backend-unavailable`).
//! - `open`: admit without a limit.
//!
//! A probe runs every [`PROBE_INTERVAL`]. Once Redis answers again, the
//! replica joins the fleet's *heal time* (the first replica back sets it a
//! grace period ahead, the others find it), drains every key in Redis from
//! that time on (`tat >= at + max(b, replicas * b') * t`, so the replicas'
//! last local bursts and the shared ones cannot add up), and returns to
//! shared limiting at that time. Every replica probes within the grace, so
//! they switch together; with the drain, the switch back is as safe as the
//! switch away. A Redis restart (state lost) is noticed the same way: the
//! old connection fails first.
//!
//! # Scopes: a store app's tenants
//!
//! Feishu limits a store app per tenant, and tenants come and go at run
//! time. [`RedisQuota::scope`] gives a tenant keys of its own with the
//! limits of the engine's (app, route) keys, named
//! `<tenant>@<app key name>` (so every replica derives the same Redis
//! keys), without a connection, a task or an engine of its own: its calls
//! go through this engine, so they share its script, health, metrics and
//! fail mode. Its Redis keys expire like the engine's; the replicas bound
//! how many scopes they hold. With `fail = "local"` a scope has a fallback
//! of its own, built drained on its first use in each outage. The heal
//! drains only the engine's keys, which it knows; a scope's keys are
//! drained by a *floor* every take and peek carries (the heal time plus
//! the key's drain, the same target): harmless once passed, idempotent, and
//! no extra round trip.
//!
//! Not covered: a *partial* outage, where Redis is reachable from some
//! replicas and not others. Then the cut-off replicas' local share comes on
//! top of the shared quota (at most `N / replicas` more per window and cut-off
//! replica). `fail = "closed"` avoids that at the price of availability.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use prometheus::Histogram;
use redis::aio::ConnectionManager;
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

use super::{Admit, Cause, KeySpec, Limit, LocalQuota, Overflow, Policy, QuotaKey, Rejection};
use super::{BackendStatus, FailMode};
use super::{QuotaBackend, Snapshot};
use crate::observe::metrics::QuotaBackendMetrics;
use crate::redis_connection::RedisConnection;
use crate::secret::Secret;

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
    /// `redis://[user:password@]host[:port][/db]` or `rediss://…` (TLS).
    pub url: Secret,
    /// Extra PEM roots for `rediss://` (a private CA); else the public web
    /// roots.
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
        RedisConnection::open(&self.url, self.ca_file.as_deref(), self.timeout)
    }

    /// The settings `[quota]` gives, with `backend = "redis"` (an error
    /// without a `redis_url`).
    pub fn from_config(config: &super::QuotaConfig) -> Result<RedisSettings, String> {
        let url = config
            .redis_url
            .clone()
            .ok_or("quota.redis_url: required with backend = \"redis\"")?;
        Ok(RedisSettings {
            url,
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
    conn: ConnectionManager,
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
        let conn = connection.manager();
        let target = connection.target().to_string();
        let connect_timeout = connection.connect_timeout();

        let replicas = settings.replicas.max(1);
        let mut keys = Vec::with_capacity(specs.len());
        let mut fallback_specs = Vec::with_capacity(specs.len());
        for spec in &specs {
            let name = spec.name();
            if name.is_empty() {
                return Err("quota: a shared key needs a name".into());
            }
            let plan = spec.plan();
            let split = match settings.fail {
                FailMode::Local => {
                    let split = plan
                        .split(replicas, settings.min_rate_fraction)
                        .map_err(|e| {
                            format!(
                                "quota key {name}: {e}; with quota.fail = \"local\" every limit must be at least quota.replicas ({replicas}), or use fail = \"closed\""
                            )
                        })?;
                    fallback_specs.push(KeySpec::new(split.clone(), spec.max_waiters()));
                    Some(split)
                }
                FailMode::Closed | FailMode::Open => None,
            };
            let t_ns = plan.emission_interval().as_nanos() as u64;
            let t_us = t_ns.div_ceil(1000) + 1;
            let burst = u64::from(plan.burst());
            let split_burst = split.map_or(0, |s| u64::from(s.burst()) * u64::from(replicas));
            keys.push(SharedKey::named(
                name,
                &settings.key_prefix,
                t_us,
                (burst - 1) * t_us,
                burst.max(split_burst),
                Arc::new(Policy::new(plan.windows(), plan.reported_window())),
                spec.max_waiters(),
            ));
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

impl Inner {}

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

impl QuotaBackend for RedisQuota {
    fn acquire(
        &self,
        key: QuotaKey,
        overflow: Overflow,
    ) -> impl std::future::Future<Output = Result<Admit, Rejection>> + Send {
        RedisQuota::acquire(self, key, overflow)
    }

    fn pause(
        &self,
        key: QuotaKey,
        duration: Duration,
    ) -> impl std::future::Future<Output = ()> + Send {
        let this = self.clone();
        async move {
            this.pause_shared(key, duration).await;
        }
    }

    fn snapshot(
        &self,
        key: QuotaKey,
    ) -> impl std::future::Future<Output = Option<Snapshot>> + Send {
        RedisQuota::snapshot(self, key)
    }
}
