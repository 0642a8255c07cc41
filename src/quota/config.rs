//! The `[quota]` section, as the quota module owns it (the config reader
//! fills it in; [`Engine::from_config`](super::Engine::from_config) builds
//! the engine from it).

use std::time::Duration;

use super::{BackendKind, FailMode, OverflowMode};
use crate::redis_connection::RedisTarget;

/// Quota behaviour (`[quota]`).
#[derive(Debug, Clone)]
pub struct QuotaConfig {
    /// Added to every window when planning (`margin`), because admitted
    /// requests reach Feishu with jitter and Feishu counts at arrival.
    /// Default 100 ms.
    pub margin: Duration,
    /// Keep the sustained rate at or above this fraction of the best
    /// achievable one and take the largest burst that allows
    /// (`min_rate_fraction`). Default 0.965.
    pub min_rate_fraction: f64,
    /// Default behaviour over the limit (`overflow`: `"reject"` or `"wait"`).
    pub overflow: OverflowMode,
    /// Longest wait in wait mode (`max_wait`), also the cap of the
    /// per-request `X-Gateway-Max-Wait` header. Default 5 s.
    pub max_wait: Duration,
    /// Requests that may wait per (app, route) at once (`max_waiters`);
    /// past it, requests are rejected. Default 256. With Redis: per
    /// replica.
    pub max_waiters: u32,
    /// Where quota state lives (`backend`: `"local"`, the default, or
    /// `"redis"` to share every quota between replicas).
    pub backend: BackendKind,
    /// Where Redis is. One server: its URL, `redis://[:password@]host[:port][/db]`
    /// or `rediss://…` for TLS, from `redis_url_env` (an environment
    /// variable, for URLs with a password), `redis_url_file`, or
    /// `redis_url`. Sentinel: `redis_sentinels` + `redis_sentinel_master`.
    /// Cluster: `redis_cluster_nodes`. One of them is required with
    /// `backend = "redis"`; passwords are never logged.
    pub redis: Option<RedisTarget>,
    /// PEM root certificates for TLS to a private CA (`redis_ca_file`);
    /// default the public web roots.
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Prefix of every Redis key the gateway writes (`key_prefix`). Default
    /// `"feishu-gateway:"`. Replicas sharing quotas must use the same one.
    pub key_prefix: String,
    /// What to do while Redis is unreachable or slow (`fail`): `"local"`
    /// (default: each replica limits locally to 1/replicas of every quota),
    /// `"closed"` (503) or `"open"` (no limit).
    pub fail: FailMode,
    /// The most replicas that run at once, e.g. an autoscaler's maximum
    /// (`replicas`). Required with `backend = "redis"` and `fail = "local"`;
    /// every limit must be at least this.
    pub replicas: u32,
    /// Longest wait for one Redis call (`redis_timeout`). Default 50 ms, at
    /// most half of `margin`: the answer's trip back is arrival jitter.
    pub redis_timeout: Duration,
}
