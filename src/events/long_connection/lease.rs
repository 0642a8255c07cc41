//! Who holds an app's long connection when replicas share a Redis: a lease
//! key `<key_prefix>events:lease:{<app_id>}` (the app id as hash tag, for
//! Cluster) holding the holder's random token, with a TTL. The holder
//! renews it every third of the TTL; the others try to take it as often,
//! so one takes over within a TTL of the holder stopping. A stopping
//! holder deletes it (only if still its own).
//!
//! Fail-open: when Redis does not answer, a replica behaves as if it held
//! the lease. Two replicas connected at once are harmless (Feishu gives
//! each event to ONE of an app's connections, and any replica delivers
//! it), while no replica connected would lose events.

use std::time::Duration;

use rand::Rng;
use redis::Script;

use crate::redis_connection::RedisConnection;

/// Take the lease if free, keep it if ours: 1 when held by us after.
const HOLD: &str = r#"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')
  return 1
end
return 0
"#;

/// Delete the lease if ours.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// One app's lease, as one replica sees it.
pub(super) struct Lease {
    conn: RedisConnection,
    key: String,
    token: String,
    ttl: Duration,
    hold: Script,
    release: Script,
}

impl Lease {
    pub(super) fn new(
        conn: RedisConnection,
        key_prefix: &str,
        app_id: &str,
        ttl: Duration,
    ) -> Self {
        let token: String = {
            let mut rng = rand::thread_rng();
            (0..16)
                .map(|_| format!("{:02x}", rng.gen::<u8>()))
                .collect()
        };
        Lease {
            conn,
            key: lease_key(key_prefix, app_id),
            token,
            ttl,
            hold: Script::new(HOLD),
            release: Script::new(RELEASE),
        }
    }

    /// How often to call [`hold`](Self::hold): a third of the TTL.
    pub(super) fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Takes or renews the lease: `Ok(true)` when this replica holds it.
    pub(super) async fn hold(&self) -> Result<bool, String> {
        let mut conn = self.conn.handle();
        let ttl_ms = self.ttl.as_millis().max(1) as u64;
        let mut call = self.hold.key(&self.key);
        call.arg(&self.token).arg(ttl_ms);
        match tokio::time::timeout(
            self.conn.connect_timeout(),
            call.invoke_async::<i64>(&mut conn),
        )
        .await
        {
            Ok(Ok(n)) => Ok(n == 1),
            Ok(Err(e)) => Err(crate::redis_connection::kind(&e)),
            Err(_) => Err("no answer in time".to_owned()),
        }
    }

    /// Gives the lease up, if still ours (best effort).
    pub(super) async fn release(&self) {
        let mut conn = self.conn.handle();
        let mut call = self.release.key(&self.key);
        call.arg(&self.token);
        let _ = tokio::time::timeout(
            self.conn.connect_timeout(),
            call.invoke_async::<i64>(&mut conn),
        )
        .await;
    }
}

/// `<prefix>events:lease:{<app_id>}`.
pub fn lease_key(key_prefix: &str, app_id: &str) -> String {
    format!("{key_prefix}events:lease:{{{app_id}}}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_key_has_the_app_as_hash_tag() {
        assert_eq!(super::lease_key("fg:", "cli_a"), "fg:events:lease:{cli_a}");
    }
}
