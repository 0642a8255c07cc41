//! [`Engine`]: the quota engine a gateway runs, chosen by `[quota] backend`:
//! in-process ([`LocalQuota`]) or shared by every replica through Redis
//! ([`RedisQuota`]). The request path sees one small API: `acquire`,
//! `pause`, `snapshot`, and `status` for `/readyz`; a store app's tenant
//! gets keys of its own from [`Engine::scope`], on the same backend.

use std::sync::Arc;
use std::time::Duration;

use super::redis::{RedisQuota, RedisScope, RedisSettings};
use super::{Admit, KeySpec, LocalQuota, Overflow, QuotaKey, Rejection, Snapshot};
use super::{BackendKind, BackendStatus, QuotaConfig};
use crate::observe::metrics::Metrics;
use crate::redis_connection::RedisConnection;

/// The quota engine of a gateway. Cheap to clone (an `Arc` inside).
#[derive(Clone, Debug)]
pub enum Engine {
    /// In-process limits (`backend = "local"`).
    Local(Arc<LocalQuota>),
    /// Limits shared through Redis (`backend = "redis"`).
    Redis(RedisQuota),
}

impl Engine {
    /// The engine `[quota]` asks for, over these keys (`QuotaKey::new(i)` is
    /// `specs[i]`). A Redis engine needs named specs and a tokio runtime; it
    /// does not wait for Redis (see [`RedisQuota::new`]). It uses `redis`
    /// when given (the replica's one connection, shared with the app_ticket
    /// store), else opens its own.
    pub fn from_config(
        config: &QuotaConfig,
        specs: Vec<KeySpec>,
        metrics: &Metrics,
        redis: Option<&RedisConnection>,
    ) -> Result<Engine, String> {
        match config.backend {
            BackendKind::Local => {
                metrics.quota_backend_info("local", "-");
                Ok(Engine::local(specs))
            }
            BackendKind::Redis => {
                let settings = RedisSettings::from_config(config)?;
                let connection = match redis {
                    Some(c) => c.clone(),
                    None => settings.open_connection()?,
                };
                let handles = metrics
                    .quota_backend(config.fail.as_str())
                    .map_err(|e| format!("metrics: {e}"))?;
                RedisQuota::with_connection(&connection, &settings, specs, Some(handles))
                    .map(Engine::Redis)
            }
        }
    }

    /// A local engine on the default clock.
    pub fn local(specs: Vec<KeySpec>) -> Engine {
        Engine::Local(Arc::new(LocalQuota::with_tokio_clock(specs)))
    }

    /// Quota keys for one `scope` (a store app's tenant): key `i` of the
    /// result has the limits of this engine's key `templates[i]`, counted
    /// apart. Local: a [`LocalQuota`] of its own (per replica, as the
    /// engine). Redis: keys named after the scope, shared by every replica
    /// through this engine's connection and fail mode (see
    /// [`RedisQuota::scope`]). Errors on a template the engine does not
    /// have.
    pub fn scope(&self, scope: &str, templates: &[QuotaKey]) -> Result<ScopedQuota, String> {
        match self {
            Engine::Local(q) => {
                let specs = templates
                    .iter()
                    .map(|&k| {
                        q.spec(k)
                            .cloned()
                            .ok_or_else(|| format!("quota: no key {} to scope", k.index()))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(ScopedQuota::Local(LocalQuota::with_tokio_clock(specs)))
            }
            Engine::Redis(q) => q.scope(scope, templates).map(ScopedQuota::Redis),
        }
    }

    /// Admit one request for `key`, or reject it without spending quota.
    /// `Overflow::Reject` answers at once (for Redis: one round trip);
    /// `Overflow::Wait` may hold the request up to its maximum wait.
    pub async fn acquire(&self, key: QuotaKey, overflow: Overflow) -> Result<Admit, Rejection> {
        match self {
            Engine::Local(q) => q.acquire(key, overflow).await,
            Engine::Redis(q) => q.acquire(key, overflow).await,
        }
    }

    /// Feishu throttled `key`: hold its requests for `duration` (for Redis,
    /// on every replica; written in the background).
    pub fn pause(&self, key: QuotaKey, duration: Duration) {
        match self {
            Engine::Local(q) => q.pause(key, duration),
            Engine::Redis(q) => q.pause(key, duration),
        }
    }

    /// The key's state for headers, without spending quota (for Redis, one
    /// round trip).
    pub async fn snapshot(&self, key: QuotaKey) -> Option<Snapshot> {
        match self {
            Engine::Local(q) => q.snapshot(key),
            Engine::Redis(q) => q.snapshot(key).await,
        }
    }

    /// False until a Redis engine has finished its first probe (see
    /// [`RedisQuota::is_settled`]); always true for a local engine.
    pub fn is_settled(&self) -> bool {
        match self {
            Engine::Local(_) => true,
            Engine::Redis(q) => q.is_settled(),
        }
    }

    /// The backend's state for `/readyz`.
    pub fn status(&self) -> BackendStatus {
        match self {
            Engine::Local(_) => BackendStatus {
                backend: "local",
                state: "local",
                fail: None,
                target: None,
                since_secs: None,
                last_error: None,
            },
            Engine::Redis(q) => q.status(),
        }
    }
}

/// The quota keys of one scope (a store app's tenant), from
/// [`Engine::scope`]: the request path uses them like the engine's.
#[derive(Debug)]
pub enum ScopedQuota {
    /// In this process.
    Local(LocalQuota),
    /// In Redis, shared by every replica.
    Redis(RedisScope),
}

impl ScopedQuota {
    /// Admit one request for `key`, or reject it without spending quota
    /// (see [`Engine::acquire`]).
    pub async fn acquire(&self, key: QuotaKey, overflow: Overflow) -> Result<Admit, Rejection> {
        match self {
            ScopedQuota::Local(q) => q.acquire(key, overflow).await,
            ScopedQuota::Redis(q) => q.acquire(key, overflow).await,
        }
    }

    /// Feishu throttled `key`: hold its requests for `duration` (see
    /// [`Engine::pause`]).
    pub fn pause(&self, key: QuotaKey, duration: Duration) {
        match self {
            ScopedQuota::Local(q) => q.pause(key, duration),
            ScopedQuota::Redis(q) => q.pause(key, duration),
        }
    }

    /// The key's state for headers, without spending quota.
    pub async fn snapshot(&self, key: QuotaKey) -> Option<Snapshot> {
        match self {
            ScopedQuota::Local(q) => q.snapshot(key),
            ScopedQuota::Redis(q) => q.snapshot(key).await,
        }
    }
}
