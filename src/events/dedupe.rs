//! De-duplication: Feishu delivers at least once (re-pushes at 15 s, 5 min,
//! 1 h and 6 h, and now and then even after a 200), so every event is
//! checked against the ids seen within the window (`[events]
//! dedupe_window`, default 8 h) before it is queued.
//!
//! - **Memory** (always): a map of 64-bit keyed hashes of (app, key) to
//!   when they were seen, bounded by `dedupe_max_ids` (the oldest go first
//!   when full), expired as new ids come in. 64 to 80 bytes per id (the
//!   map and the queue of ids grow by powers of two; `benches/events.rs`).
//! - **Redis** (with `[quota] backend = "redis"`): `SET
//!   <key_prefix>event:{<app>}:<key> 1 NX PX <window>`, one per key, so
//!   that replicas behind one load balancer share what they have seen (the
//!   hash tag keeps an app's keys in one Cluster slot). The memory map is
//!   kept as well. When Redis does not answer in time the check is made in
//!   memory only and counted
//!   (`feishu_gateway_events_dedupe_fallbacks_total`): a duplicate that
//!   reaches another replica meanwhile may then be delivered twice.
//!
//! An event is a duplicate when ANY of its keys was seen; all its keys are
//! then marked. [`Dedupe::forget`] takes the marks back when the event
//! could not be queued, so Feishu's re-push is not mistaken for one.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::observe::metrics::EventMetrics;
use crate::redis_connection::RedisConnection;

/// The longest a Redis check may take before memory decides alone.
const REDIS_WAIT: Duration = Duration::from_millis(250);

/// Whether an event was seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time: its keys are marked now.
    First,
    /// One of its keys was seen within the window.
    Duplicate,
}

/// The ids seen, in memory and (optionally) in Redis.
pub struct Dedupe {
    window: Duration,
    memory: Mutex<Memory>,
    redis: Option<(RedisConnection, String)>,
    metrics: EventMetrics,
}

/// Hashes of the keys seen, with when, oldest first.
struct Memory {
    hasher: RandomState,
    seen: HashMap<u64, Instant>,
    order: VecDeque<(Instant, u64)>,
    max: usize,
}

impl Memory {
    fn hash(&self, app: &str, key: &str) -> u64 {
        self.hasher.hash_one((app, key))
    }

    /// Drops what is older than `window`, and the oldest past `max`.
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some(&(at, h)) = self.order.front() {
            if now.saturating_duration_since(at) < window && self.order.len() < self.max {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&h) == Some(&at) {
                self.seen.remove(&h);
            }
        }
    }

    fn is_fresh(&self, h: u64, now: Instant, window: Duration) -> bool {
        self.seen
            .get(&h)
            .is_some_and(|&at| now.saturating_duration_since(at) < window)
    }
}

impl Dedupe {
    /// In memory, with Redis when `redis` is `(connection, key prefix)`.
    pub fn new(
        window: Duration,
        max_ids: usize,
        redis: Option<(RedisConnection, String)>,
        metrics: EventMetrics,
    ) -> Dedupe {
        Dedupe {
            window,
            memory: Mutex::new(Memory {
                hasher: RandomState::new(),
                seen: HashMap::new(),
                order: VecDeque::new(),
                max: max_ids.max(1),
            }),
            redis,
            metrics,
        }
    }

    /// Checks `keys` of an event of `app` and marks them. No keys: always
    /// [`Seen::First`].
    pub async fn check(&self, app: &str, keys: &[String]) -> Seen {
        if keys.is_empty() {
            return Seen::First;
        }
        let in_memory = self.check_memory(app, keys);
        let Some((conn, prefix)) = &self.redis else {
            return in_memory;
        };
        let in_redis = tokio::time::timeout(REDIS_WAIT, async {
            let mut first = true;
            for k in keys {
                let mut set = redis::cmd("SET");
                set.arg(redis_key(prefix, app, k))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.window.as_millis() as u64);
                let mut c = conn.handle();
                let set: Option<String> = set.query_async(&mut c).await?;
                first &= set.is_some();
            }
            Ok::<_, redis::RedisError>(first)
        })
        .await;
        match in_redis {
            Ok(Ok(true)) => in_memory,
            Ok(Ok(false)) => Seen::Duplicate,
            Ok(Err(e)) => {
                tracing::warn!(app, error = %crate::redis_connection::kind(&e), "event de-duplication: Redis failed, checked in memory only");
                self.metrics.dedupe_fallback(app);
                in_memory
            }
            Err(_) => {
                tracing::warn!(
                    app,
                    "event de-duplication: Redis did not answer in time, checked in memory only"
                );
                self.metrics.dedupe_fallback(app);
                in_memory
            }
        }
    }

    fn check_memory(&self, app: &str, keys: &[String]) -> Seen {
        let now = Instant::now();
        let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        m.expire(now, self.window);
        let hashes: Vec<u64> = keys.iter().map(|k| m.hash(app, k)).collect();
        let seen = hashes.iter().any(|&h| m.is_fresh(h, now, self.window));
        for h in hashes {
            m.seen.insert(h, now);
            m.order.push_back((now, h));
        }
        if seen {
            Seen::Duplicate
        } else {
            Seen::First
        }
    }

    /// Takes back the marks of an event that was not queued after all.
    pub async fn forget(&self, app: &str, keys: &[String]) {
        {
            let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            for k in keys {
                let h = m.hash(app, k);
                m.seen.remove(&h);
            }
        }
        if let Some((conn, prefix)) = &self.redis {
            let mut del = redis::cmd("DEL");
            for k in keys {
                del.arg(redis_key(prefix, app, k));
            }
            let mut c = conn.handle();
            let done = tokio::time::timeout(REDIS_WAIT, del.query_async::<i64>(&mut c)).await;
            if !matches!(done, Ok(Ok(_))) {
                tracing::warn!(app, "event de-duplication: could not take a mark back in Redis: Feishu's re-push will count as a duplicate");
            }
        }
    }
}

/// `<prefix>event:{<app>}:<key>`: the app as the hash tag.
fn redis_key(prefix: &str, app: &str, key: &str) -> String {
    format!("{prefix}event:{{{app}}}:{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dedupe(window: Duration, max: usize) -> Dedupe {
        let registry = prometheus::Registry::new();
        let metrics = crate::observe::metrics::Metrics::new(registry, &[], &[]).unwrap();
        Dedupe::new(window, max, None, metrics.events())
    }

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn any_key_seen_is_a_duplicate_until_the_window_ends() {
        let d = dedupe(Duration::from_secs(60), 100);
        assert_eq!(d.check("a", &keys(&["id:1", "msg:m"])).await, Seen::First);
        assert_eq!(d.check("a", &keys(&["id:1"])).await, Seen::Duplicate);
        assert_eq!(
            d.check("a", &keys(&["id:2", "msg:m"])).await,
            Seen::Duplicate
        );
        assert_eq!(d.check("b", &keys(&["id:1"])).await, Seen::First, "per app");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(d.check("a", &keys(&["id:1"])).await, Seen::First);
        d.forget("a", &keys(&["id:1"])).await;
        assert_eq!(d.check("a", &keys(&["id:1"])).await, Seen::First);
        assert_eq!(d.check("a", &[]).await, Seen::First);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded() {
        let d = dedupe(Duration::from_secs(60), 3);
        for i in 0..10 {
            d.check("a", &keys(&[&format!("id:{i}")])).await;
        }
        let m = d.memory.lock().unwrap();
        assert!(m.seen.len() <= 3 && m.order.len() <= 3, "{}", m.seen.len());
    }
}
