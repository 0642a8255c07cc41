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

mod health;

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

/// One (app, route) key as stored in Redis.
struct SharedKey {
    name: String,
    tat: String,
    pause: String,
    /// Period in µs (rounded up, plus 1 µs; see the module docs).
    t_us: u64,
    /// `(b - 1) * t_us`.
    tau_us: u64,
    /// `max(b, replicas * b')`: how many periods the return to Redis drains.
    drain_slots: u64,
    policy: Arc<Policy>,
    max_waiters: u32,
    /// This replica's requests sleeping on a reserved slot or a pause.
    waiters: AtomicU32,
    /// End of an upstream pause this replica knows of, in ns since the
    /// engine's epoch; 0 = none.
    paused_until: AtomicU64,
}

/// Which fallback limiter a key uses while Redis is away.
#[derive(Clone, Copy)]
enum Fallback<'a> {
    /// The engine's, at this key.
    Engine(QuotaKey),
    /// A scope's, at this key.
    Scope(&'a ScopeKeys, QuotaKey),
}

/// The keys of one scope, e.g. a store app's tenant (see
/// [`RedisQuota::scope`]): the limits of some of the engine's keys, counted
/// apart under names of their own, decided through the engine's connection,
/// script, health and fail mode. Cheap to clone.
#[derive(Clone)]
pub struct RedisScope {
    engine: RedisQuota,
    keys: Arc<ScopeKeys>,
}

impl std::fmt::Debug for RedisScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisScope")
            .field("keys", &self.keys.keys.len())
            .finish_non_exhaustive()
    }
}

struct ScopeKeys {
    keys: Box<[SharedKey]>,
    /// The engine key each one copies (for its fallback spec).
    templates: Box<[usize]>,
    /// With `fail = "local"`: the scope's fallback limiter, and the outage
    /// (`Inner::outages`) it was built in.
    fallback: Mutex<Option<(u64, Arc<LocalQuota>)>>,
}

impl ScopeKeys {
    /// The scope's fallback limiter for the current outage: built on first
    /// use in each outage, drained like the engine's (the switch adds no
    /// burst).
    fn fallback(&self, inner: &Inner) -> Option<Arc<LocalQuota>> {
        let specs = inner.fallback_specs.as_ref()?;
        let outage = inner.outages.load(Ordering::Acquire);
        let mut held = lock(&self.fallback);
        if let Some((built, q)) = held.as_ref() {
            if *built == outage {
                return Some(Arc::clone(q));
            }
        }
        let specs: Vec<KeySpec> = self
            .templates
            .iter()
            .map(|&i| specs.get(i).cloned())
            .collect::<Option<_>>()?;
        let fresh = LocalQuota::with_tokio_clock(specs);
        for i in 0..self.templates.len() {
            fresh.drain(QuotaKey::new(i as u32));
        }
        let fresh = Arc::new(fresh);
        *held = Some((outage, Arc::clone(&fresh)));
        Some(fresh)
    }
}

/// The script's answer to `take`.
enum Reply {
    /// Admitted; go after `wait` (a reserved slot when not zero).
    Go { wait: Duration, remaining: u32 },
    /// Over the limit; the next slot is `wait` away.
    Limited { wait: Duration },
    /// Paused for `left` more.
    Paused { left: Duration },
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

    /// Keys for one `scope` (e.g. a store app's tenant): key `i` of the
    /// scope has the limits of engine key `templates[i]` and a state of its
    /// own, under the name `"<scope>@<template's name>"`, so every replica
    /// derives the same Redis keys. Nothing is stored until a key is used,
    /// and its Redis keys expire like the engine's, so idle scopes take no
    /// Redis memory. A scope opens no connection and starts no task: it
    /// is decided like the engine's own keys (same script, health, fail
    /// mode; with `fail = "local"`, a fallback of its own, drained). After
    /// a return to Redis, its keys are drained on first use (a floor on
    /// their `tat`, passed with every call), as the heal drains the
    /// engine's. Errors on a template this engine does not have.
    pub fn scope(&self, scope: &str, templates: &[QuotaKey]) -> Result<RedisScope, String> {
        let inner = &self.inner;
        let mut keys = Vec::with_capacity(templates.len());
        let mut indices = Vec::with_capacity(templates.len());
        for &t in templates {
            let i = t.index() as usize;
            let k = inner
                .keys
                .get(i)
                .ok_or_else(|| format!("quota: no key {} to scope", t.index()))?;
            keys.push(k.derive(&format!("{scope}@{}", k.name), &inner.key_prefix));
            indices.push(i);
        }
        Ok(RedisScope {
            engine: self.clone(),
            keys: Arc::new(ScopeKeys {
                keys: keys.into_boxed_slice(),
                templates: indices.into_boxed_slice(),
                fallback: Mutex::new(None),
            }),
        })
    }
}

impl RedisScope {
    /// Admit one request for the scope's `key`, or reject it (as
    /// [`RedisQuota::acquire`]).
    pub async fn acquire(&self, key: QuotaKey, overflow: Overflow) -> Result<Admit, Rejection> {
        let Some(k) = self.keys.keys.get(key.index() as usize) else {
            return Ok(unknown_key(key));
        };
        let fb = Fallback::Scope(&self.keys, key);
        self.engine.inner.acquire(k, fb, overflow).await
    }

    /// Feishu throttled the scope's `key` (as [`RedisQuota::pause`]: here
    /// at once, for the fleet in the background).
    pub fn pause(&self, key: QuotaKey, duration: Duration) {
        let Some(k) = self.keys.keys.get(key.index() as usize) else {
            return;
        };
        if duration.is_zero() {
            return;
        }
        self.engine.inner.note_pause(k, duration);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let this = self.clone();
            rt.spawn(async move { this.pause_shared(key, duration).await });
        }
    }

    /// Writes an upstream pause of the scope's `key` to Redis and waits
    /// for it (as [`RedisQuota::pause_shared`]).
    pub async fn pause_shared(&self, key: QuotaKey, duration: Duration) -> bool {
        let Some(k) = self.keys.keys.get(key.index() as usize) else {
            return false;
        };
        self.engine.inner.pause_shared(k, duration).await
    }

    /// The state of the scope's `key` for headers (as
    /// [`RedisQuota::snapshot`]).
    pub async fn snapshot(&self, key: QuotaKey) -> Option<Snapshot> {
        let k = self.keys.keys.get(key.index() as usize)?;
        let fb = Fallback::Scope(&self.keys, key);
        Some(self.engine.inner.snapshot(k, fb).await)
    }

    /// The Redis key names of the scope's `key`: its `tat` and its pause.
    pub fn redis_keys(&self, key: QuotaKey) -> Option<(&str, &str)> {
        let k = self.keys.keys.get(key.index() as usize)?;
        Some((&k.tat, &k.pause))
    }

    /// The fleet-wide name of the scope's `key`.
    pub fn key_name(&self, key: QuotaKey) -> Option<&str> {
        Some(&self.keys.keys.get(key.index() as usize)?.name)
    }
}

impl Inner {
    fn now_ns(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
    }

    /// [`RedisQuota::acquire`] for key `k`, whose fallback limiter is
    /// found by `fb`.
    async fn acquire(
        &self,
        k: &SharedKey,
        fb: Fallback<'_>,
        overflow: Overflow,
    ) -> Result<Admit, Rejection> {
        let inner = self;
        let started = Instant::now();
        let max_wait = match overflow {
            Overflow::Reject => Duration::ZERO,
            Overflow::Wait(d) => d,
        };
        let deadline = started + max_wait;
        let mut slept = false;
        loop {
            // This replica's own knowledge of an upstream pause comes first:
            // no round trip while it lasts.
            if let Some(left) = inner.paused_for(k) {
                if max_wait.is_zero() {
                    return Err(k.reject(Cause::Limited, Limit::UpstreamPause, left));
                }
                if Instant::now() + left > deadline {
                    return Err(k.reject(Cause::WaitTooLong, Limit::UpstreamPause, left));
                }
                let Some(_waiting) = Waiting::join(k) else {
                    return Err(k.reject(Cause::QueueFull, Limit::UpstreamPause, left));
                };
                tokio::time::sleep(left).await;
                slept = true;
                continue;
            }
            if inner.mode() != Mode::Shared {
                let left = deadline.saturating_duration_since(Instant::now());
                let overflow = match overflow {
                    Overflow::Reject => Overflow::Reject,
                    Overflow::Wait(_) => Overflow::Wait(left),
                };
                return inner.degraded(k, fb, overflow, started).await;
            }
            // A place among this replica's sleepers is taken before asking,
            // so their bound holds; without one, only "now" is acceptable.
            let waiting = if max_wait.is_zero() {
                None
            } else {
                Waiting::join(k)
            };
            let allowance = match waiting {
                Some(_) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::ZERO,
            };
            match inner.take(k, allowance).await {
                Ok(Reply::Go { wait, remaining }) => {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                        slept = true;
                    }
                    return Ok(Admit {
                        remaining,
                        waited: if slept {
                            started.elapsed()
                        } else {
                            Duration::ZERO
                        },
                    });
                }
                Ok(Reply::Limited { wait }) => {
                    let cause = if max_wait.is_zero() {
                        Cause::Limited
                    } else if waiting.is_none() {
                        Cause::QueueFull
                    } else {
                        Cause::WaitTooLong
                    };
                    let limit = Limit::Window(k.policy.reported_window());
                    return Err(k.reject(cause, limit, wait));
                }
                Ok(Reply::Paused { left }) => inner.note_pause(k, left),
                Err(failure) => {
                    if inner.failed(&failure) {
                        continue; // switched: the fail mode decides
                    }
                    // A failure Redis may yet recover from at once.
                    match inner.fail {
                        FailMode::Closed => return Err(k.unavailable()),
                        FailMode::Open => return Ok(unlimited()),
                        FailMode::Local => {
                            let pause = inner.timeout.min(Duration::from_millis(20));
                            if Instant::now() + pause < deadline {
                                tokio::time::sleep(pause).await;
                                slept = true;
                                continue;
                            }
                            let limit = Limit::Window(k.policy.reported_window());
                            let t = Duration::from_micros(k.t_us);
                            return Err(k.reject(Cause::Limited, limit, t));
                        }
                    }
                }
            }
        }
    }

    /// [`RedisQuota::pause_shared`] for key `k`.
    async fn pause_shared(&self, k: &SharedKey, duration: Duration) -> bool {
        let inner = self;
        inner.note_pause(k, duration);
        if inner.mode() != Mode::Shared {
            return false;
        }
        let us = duration.as_micros().min(u64::MAX.into()) as u64;
        let hist = inner.metrics.as_ref().map(|m| &m.pause);
        let mut call = inner.script.prepare_invoke();
        call.key(&k.tat).key(&k.pause).arg("pause").arg(us);
        match inner.call(&call, hist).await {
            Ok(_) => true,
            Err(failure) => {
                inner.failed(&failure);
                false
            }
        }
    }

    /// [`RedisQuota::snapshot`] for key `k`, whose fallback limiter is
    /// found by `fb`.
    async fn snapshot(&self, k: &SharedKey, fb: Fallback<'_>) -> Snapshot {
        let inner = self;
        let waiters = k.waiters.load(Ordering::Acquire);
        let local_pause = inner.paused_for(k).unwrap_or_default();
        let shared = if inner.mode() == Mode::Shared {
            let hist = inner.metrics.as_ref().map(|m| &m.peek);
            let mut call = inner.script.prepare_invoke();
            call.key(&k.tat)
                .key(&k.pause)
                .arg("peek")
                .arg(k.t_us)
                .arg(k.tau_us)
                .arg(inner.floor(k));
            match inner.call(&call, hist).await {
                Ok(v) => Some(v),
                Err(failure) => {
                    inner.failed(&failure);
                    None
                }
            }
        } else {
            None
        };
        let (mut remaining, mut next_in, mut paused_for) = match shared.as_deref() {
            Some([1, _, n, ..]) => (clamp_u32(*n), Duration::ZERO, Duration::ZERO),
            Some([0, wait, ..]) => (0, micros(*wait), Duration::ZERO),
            Some([2, left, ..]) => (0, micros(*left), micros(*left)),
            _ => match inner.fallback_for(fb).and_then(|(f, key)| f.snapshot(key)) {
                Some(s) => (s.remaining, s.next_in, s.paused_for),
                None => (0, Duration::ZERO, Duration::ZERO),
            },
        };
        if !local_pause.is_zero() {
            remaining = 0;
            next_in = next_in.max(local_pause);
            paused_for = paused_for.max(local_pause);
        }
        Snapshot {
            remaining,
            next_in,
            paused_for,
            waiters,
            policy: Arc::clone(&k.policy),
        }
    }

    /// The floor of `k`'s `tat` after the fleet's last heal (0 = none):
    /// the heal time plus the key's drain (see the module docs).
    fn floor(&self, k: &SharedKey) -> u64 {
        match self.healed_at_us.load(Ordering::Relaxed) {
            0 => 0,
            at => at.saturating_add(k.drain_slots.saturating_mul(k.t_us)),
        }
    }

    /// The fallback limiter of a key and its key in it.
    fn fallback_for(&self, fb: Fallback<'_>) -> Option<(Arc<LocalQuota>, QuotaKey)> {
        match fb {
            Fallback::Engine(key) => self.fallback().map(|f| (f, key)),
            Fallback::Scope(scope, key) => scope.fallback(self).map(|f| (f, key)),
        }
    }

    fn fallback(&self) -> Option<Arc<LocalQuota>> {
        self.fallback
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One `take`: the admission decision in Redis.
    async fn take(&self, k: &SharedKey, allowance: Duration) -> Result<Reply, Failure> {
        let max_wait = allowance.as_micros().min(u64::MAX.into()) as u64;
        let hist = self.metrics.as_ref().map(|m| &m.take);
        let mut call = self.script.prepare_invoke();
        call.key(&k.tat)
            .key(&k.pause)
            .arg("take")
            .arg(k.t_us)
            .arg(k.tau_us)
            .arg(max_wait)
            .arg(self.floor(k));
        match self.call(&call, hist).await?.as_slice() {
            [1, wait, remaining, ..] => Ok(Reply::Go {
                wait: micros(*wait),
                remaining: clamp_u32(*remaining),
            }),
            [0, wait, ..] => Ok(Reply::Limited {
                wait: micros(*wait),
            }),
            [2, left, ..] => Ok(Reply::Paused {
                left: micros(*left),
            }),
            other => Err(Failure::Server(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "quota script reply",
                format!("{other:?}"),
            )))),
        }
    }

    /// One script call within the timeout, timed.
    async fn call(
        &self,
        call: &redis::ScriptInvocation<'_>,
        hist: Option<&Histogram>,
    ) -> Result<Vec<i64>, Failure> {
        let mut conn = self.conn.clone();
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await;
        if let Some(h) = hist {
            h.observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(Ok(v)) => {
                if self.failing_since.load(Ordering::Relaxed) != 0 {
                    self.failing_since.store(0, Ordering::Release);
                }
                Ok(v)
            }
            Ok(Err(e)) => Err(Failure::from_error(e)),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// One pipeline within the timeout, timed as a probe.
    async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        conn: &mut ConnectionManager,
    ) -> Result<T, Failure> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, pipe.query_async(conn)).await;
        if let Some(m) = &self.metrics {
            m.probe.observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failure::from_error(e)),
            Err(_) => Err(Failure::Timeout),
        }
    }

    fn note_pause(&self, k: &SharedKey, duration: Duration) {
        let until = self
            .now_ns()
            .saturating_add(duration.as_nanos().min(u64::MAX.into()) as u64);
        k.paused_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Time left on an upstream pause, if one is running.
    fn paused_for(&self, k: &SharedKey) -> Option<Duration> {
        if k.paused_until.load(Ordering::Relaxed) == 0 {
            return None;
        }
        super::pause_left(&k.paused_until, self.now_ns())
    }
}

impl SharedKey {
    fn named(
        name: &str,
        prefix: &str,
        t_us: u64,
        tau_us: u64,
        drain_slots: u64,
        policy: Arc<Policy>,
        max_waiters: u32,
    ) -> SharedKey {
        // The whole name is the hash tag: both keys in one slot.
        let tag = name.replace(['{', '}'], "_");
        SharedKey {
            name: name.to_string(),
            tat: format!("{prefix}quota:{{{tag}}}:tat"),
            pause: format!("{prefix}quota:{{{tag}}}:pause"),
            t_us,
            tau_us,
            drain_slots,
            policy,
            max_waiters,
            waiters: AtomicU32::new(0),
            paused_until: AtomicU64::new(0),
        }
    }

    /// The same limits under another name, with state of its own.
    fn derive(&self, name: &str, prefix: &str) -> SharedKey {
        SharedKey::named(
            name,
            prefix,
            self.t_us,
            self.tau_us,
            self.drain_slots,
            Arc::clone(&self.policy),
            self.max_waiters,
        )
    }

    fn reject(&self, cause: Cause, limit: Limit, retry_after: Duration) -> Rejection {
        Rejection::new(cause, limit, retry_after, Arc::clone(&self.policy))
    }

    fn unavailable(&self) -> Rejection {
        self.reject(
            Cause::BackendUnavailable,
            Limit::Window(self.policy.reported_window()),
            Duration::from_secs(1),
        )
    }
}

/// A place among a key's sleepers on this replica, given back on drop.
struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    fn join(k: &'a SharedKey) -> Option<Waiting<'a>> {
        let max = k.max_waiters;
        k.waiters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < max).then_some(w + 1)
            })
            .ok()
            .map(|_| Waiting(&k.waiters))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
