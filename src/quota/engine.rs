//! [`Engine`]: the quota engine a gateway runs, chosen by `[quota] backend`:
//! in-process ([`LocalQuota`]) or shared by every replica through Redis
//! ([`RedisQuota`]). The request path sees one small API: `acquire`,
//! `pause`, `snapshot`, and `status` for `/readyz`; the request path makes
//! its keys on first use ([`Engine::key`]), on the same backend.

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

    /// A key made now from `spec`, with state of its own, on this engine's
    /// backend: in process, or in Redis under the spec's name (shared by
    /// every replica that makes a key of the same name, through this
    /// engine's connection and fail mode; see [`RedisQuota::key`]). The
    /// request path makes its keys this way on first use, so a catalog of
    /// 1,559 endpoints costs nothing until an endpoint is called.
    pub fn key(&self, spec: &KeySpec) -> Result<Key, String> {
        match self {
            // In process the name is no identity: not kept.
            Engine::Local(_) => Ok(Key::Local(LocalQuota::with_tokio_clock(vec![
                spec.without_name()
            ]))),
            Engine::Redis(q) => q.key(spec).map(Key::Redis),
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
            Engine::Local(_) => BackendStatus::local(),
            Engine::Redis(q) => q.status(),
        }
    }
}

/// One quota key made by [`Engine::key`]: what the request path acquires,
/// pauses and reads.
#[derive(Debug)]
pub enum Key {
    /// In this process.
    Local(LocalQuota),
    /// In Redis, shared by every replica.
    Redis(RedisScope),
}

/// A [`Key`]'s only key in its engine or scope.
const ONLY: QuotaKey = QuotaKey::new(0);

impl Key {
    /// Admit one request, or reject it without spending quota (see
    /// [`Engine::acquire`]).
    pub async fn acquire(&self, overflow: Overflow) -> Result<Admit, Rejection> {
        match self {
            Key::Local(q) => q.acquire(ONLY, overflow).await,
            Key::Redis(q) => q.acquire(ONLY, overflow).await,
        }
    }

    /// Gives back one admission: for a request this key admitted and
    /// another key then refused (see [`LocalQuota::give_back`]; with Redis
    /// one call, or the fallback's while Redis is away).
    pub async fn give_back(&self) {
        match self {
            Key::Local(q) => q.give_back(ONLY),
            Key::Redis(q) => q.give_back(ONLY).await,
        }
    }

    /// [`give_back`](Self::give_back) without waiting for it: at once in
    /// process; with Redis in a task of its own (inside a tokio runtime;
    /// outside one nothing is given back). For a request dropped between
    /// this key's admission and the next key's decision.
    pub fn give_back_detached(&self) {
        match self {
            Key::Local(q) => q.give_back(ONLY),
            Key::Redis(q) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let q = q.clone();
                    rt.spawn(async move { q.give_back(ONLY).await });
                }
            }
        }
    }

    /// Feishu throttled the key: hold its requests for `duration` (see
    /// [`Engine::pause`]).
    pub fn pause(&self, duration: Duration) {
        match self {
            Key::Local(q) => q.pause(ONLY, duration),
            Key::Redis(q) => q.pause(ONLY, duration),
        }
    }

    /// The key's state for headers, without spending quota.
    pub async fn snapshot(&self) -> Option<Snapshot> {
        match self {
            Key::Local(q) => q.snapshot(ONLY),
            Key::Redis(q) => q.snapshot(ONLY).await,
        }
    }

    /// True when a Redis outage closes this key on every replica (see
    /// [`RedisScope::closed_in_outage`]).
    pub fn closed_in_outage(&self) -> bool {
        match self {
            Key::Local(_) => false,
            Key::Redis(q) => q.closed_in_outage(),
        }
    }
}
