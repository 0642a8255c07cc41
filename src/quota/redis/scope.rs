//! [`RedisScope`]: the keys of one scope — a store app's tenant — with the
//! limits of some of the engine's keys, counted apart under names of their
//! own, decided through the engine's connection, script, health and fail
//! mode.

use super::*;

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

pub(super) struct ScopeKeys {
    pub(super) keys: Box<[SharedKey]>,
    /// With `fail = "local"`: each key's fallback spec (its plan split
    /// between the replicas).
    pub(super) fallback_specs: Option<Box<[KeySpec]>>,
    /// With `fail = "local"`: the scope's fallback limiter, and the outage
    /// (`Inner::outages`) it was built in.
    pub(super) fallback: Mutex<Option<(u64, Arc<LocalQuota>)>>,
}

impl ScopeKeys {
    /// The scope's fallback limiter for the current outage: built on first
    /// use in each outage, drained like the engine's (the switch adds no
    /// burst).
    pub(super) fn fallback(&self, inner: &Inner) -> Option<Arc<LocalQuota>> {
        let specs = self.fallback_specs.as_ref()?;
        let outage = inner.outages.load(Ordering::Acquire);
        let mut held = lock(&self.fallback);
        if let Some((built, q)) = held.as_ref() {
            if *built == outage {
                return Some(Arc::clone(q));
            }
        }
        let fresh = LocalQuota::with_tokio_clock(specs.to_vec());
        for i in 0..specs.len() {
            fresh.drain(QuotaKey::new(i as u32));
        }
        let fresh = Arc::new(fresh);
        *held = Some((outage, Arc::clone(&fresh)));
        Some(fresh)
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

    /// Gives back one admission of the scope's `key` (as
    /// [`LocalQuota::give_back`], in Redis for the fleet: one call).
    pub async fn give_back(&self, key: QuotaKey) {
        let Some(k) = self.keys.keys.get(key.index() as usize) else {
            return;
        };
        let fb = Fallback::Scope(&self.keys, key);
        self.engine.inner.give_back(k, fb).await;
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

    /// True when, with `fail = "local"`, the scope's keys have no local
    /// share (a window smaller than the replica count): during an outage
    /// they are closed (503) on every replica.
    pub fn closed_in_outage(&self) -> bool {
        self.engine.inner.fail == FailMode::Local && self.keys.fallback_specs.is_none()
    }

    /// The fleet-wide name of the scope's `key`.
    pub fn key_name(&self, key: QuotaKey) -> Option<&str> {
        Some(&self.keys.keys.get(key.index() as usize)?.name)
    }
}

impl RedisQuota {
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
        let mut fallback_specs = Vec::with_capacity(templates.len());
        for &t in templates {
            let i = t.index() as usize;
            let k = inner
                .keys
                .get(i)
                .ok_or_else(|| format!("quota: no key {} to scope", t.index()))?;
            keys.push(k.derive(&format!("{scope}@{}", k.name), &inner.key_prefix));
            if let Some(specs) = &inner.fallback_specs {
                fallback_specs.push(specs[i].clone());
            }
        }
        let fallback_specs =
            (inner.fail == FailMode::Local).then(|| fallback_specs.into_boxed_slice());
        Ok(self.scope_of(keys, fallback_specs))
    }

    /// One key made now from `spec` (named; the name is the fleet-wide
    /// identity), decided like the engine's own keys: the request path
    /// makes its keys this way, on first use. Nothing is stored in Redis
    /// until it is used; its key in the scope is `QuotaKey::new(0)`. Errors
    /// when the spec has no name. With `fail = "local"`, a plan with a
    /// window smaller than the replica count has no local share: during an
    /// outage the key is closed (503) on every replica, as with `fail =
    /// "closed"` ([`RedisScope::closed_in_outage`]).
    pub fn key(&self, spec: &KeySpec) -> Result<RedisScope, String> {
        let (key, fallback) = shared_key(spec, &self.inner.settings)?;
        let fallback_specs = match fallback {
            Ok(spec) => {
                (self.inner.fail == FailMode::Local).then(|| spec.into_iter().collect::<Box<[_]>>())
            }
            Err(_) => None,
        };
        Ok(self.scope_of(vec![key], fallback_specs))
    }

    fn scope_of(&self, keys: Vec<SharedKey>, fallback_specs: Option<Box<[KeySpec]>>) -> RedisScope {
        RedisScope {
            engine: self.clone(),
            keys: Arc::new(ScopeKeys {
                keys: keys.into_boxed_slice(),
                fallback_specs,
                fallback: Mutex::new(None),
            }),
        }
    }
}
