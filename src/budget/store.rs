//! Where the budget counts are kept: in the process only, also in
//! `state_dir` (local backend), or in Redis, shared by every replica.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{unix_now, Budgets, Month};
use crate::redis_connection::RedisConnection;

/// A month's Redis key expires this long after its last `INCR` (35 days):
/// long enough to outlive the month, short enough to clean up by itself.
pub const BUDGET_KEY_TTL: u64 = 35 * 86_400;

/// Where the counts are kept.
pub enum Store {
    /// In the process only: a restart starts the month's count at 0.
    Memory,
    /// Also in `<dir>/budget.<group>.json` (the local backend with
    /// `state_dir`): written when changed, every sync and at shutdown.
    Dir(PathBuf),
    /// In Redis, shared by every replica.
    Redis(RedisStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Memory => f.write_str("Memory"),
            Store::Dir(d) => f.debug_tuple("Dir").field(d).finish(),
            Store::Redis(r) => f.debug_tuple("Redis").field(&r.conn).finish(),
        }
    }
}

impl Store {
    /// The counts in Redis on `conn`, under `key_prefix`.
    pub fn redis(conn: RedisConnection, key_prefix: impl Into<String>) -> Store {
        Store::Redis(RedisStore {
            conn,
            prefix: key_prefix.into(),
            last_warning: AtomicI64::new(i64::MIN),
        })
    }

    /// The Redis key of `group`'s count in `month`:
    /// `<key_prefix>budget:{<group>}:<YYYY-MM>`.
    pub fn redis_key(prefix: &str, group: &str, month: Month) -> String {
        format!("{prefix}budget:{{{group}}}:{month}")
    }

    /// One call of group `g` was counted in `month`.
    pub(super) fn counted(&self, budgets: &Arc<Budgets>, g: usize, month: Month) {
        if let Store::Redis(r) = self {
            r.incr(budgets, g, month);
        }
    }

    pub(super) async fn load(&self, budgets: &Budgets) {
        if let Store::Dir(dir) = self {
            load_files(dir, budgets).await;
        }
    }

    pub(super) async fn sync(&self, budgets: &Budgets) {
        match self {
            Store::Memory => {}
            Store::Dir(dir) => save_files(dir, budgets).await,
            Store::Redis(r) => r.sync(budgets).await,
        }
    }
}

// ----- redis ----------------------------------------------------------------

/// The counts in Redis: one key per (group, month).
pub struct RedisStore {
    conn: RedisConnection,
    prefix: String,
    /// When a failure was last logged (Unix seconds): once a minute at most.
    last_warning: AtomicI64,
}

impl RedisStore {
    fn key(&self, budgets: &Budgets, g: usize, month: Month) -> String {
        Store::redis_key(&self.prefix, budgets.group_name(g), month)
    }

    /// `INCR` (and `EXPIRE`) in one round trip, in the background: the
    /// request that was counted does not wait for it. The reply is the
    /// fleet's total. A call refused before it was sent is kept for the
    /// next sync; one that may have reached Redis (a timeout) is not sent
    /// again, so a count is never added twice (it stays a lower bound).
    fn incr(&self, budgets: &Arc<Budgets>, g: usize, month: Month) {
        let key = self.key(budgets, g, month);
        let mut conn = self.conn.handle();
        let budgets = Arc::clone(budgets);
        tokio::spawn(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("INCR")
                .arg(&key)
                .cmd("EXPIRE")
                .arg(&key)
                .arg(BUDGET_KEY_TTL)
                .ignore();
            let result = pipe.query_async::<(u64,)>(&mut conn).await;
            let Store::Redis(store) = &budgets.store else {
                return;
            };
            match result {
                Ok((total,)) => budgets.update(g, |st| {
                    if st.month == month {
                        st.used = st.used.max(total);
                    }
                }),
                Err(e) => {
                    let refused = e.is_connection_refusal();
                    budgets.update(g, |st| {
                        if st.month == month && refused {
                            st.unsent += 1;
                        }
                    });
                    store.warn("INCR", &key, &e);
                }
            }
        });
    }

    /// One round trip for every group: `INCRBY` of what could not be sent,
    /// else `GET`; each reply is the fleet's total of the month.
    async fn sync(&self, budgets: &Budgets) {
        let n = budgets.group_count();
        if n == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        let mut sent = Vec::with_capacity(n);
        for g in 0..n {
            let (month, unsent) =
                budgets.update(g, |st| (st.month, std::mem::take(&mut st.unsent)));
            let key = self.key(budgets, g, month);
            if unsent > 0 {
                pipe.cmd("INCRBY")
                    .arg(&key)
                    .arg(unsent)
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(BUDGET_KEY_TTL)
                    .ignore();
            } else {
                pipe.cmd("GET").arg(&key);
            }
            sent.push((month, unsent));
        }
        let mut conn = self.conn.handle();
        match pipe.query_async::<Vec<Option<u64>>>(&mut conn).await {
            Ok(totals) => {
                for (g, ((month, _), total)) in sent.iter().zip(totals).enumerate() {
                    budgets.update(g, |st| {
                        if st.month == *month {
                            st.used = st.used.max(total.unwrap_or(0));
                        }
                    });
                }
            }
            Err(e) => {
                let refused = e.is_connection_refusal();
                for (g, &(month, unsent)) in sent.iter().enumerate() {
                    budgets.update(g, |st| {
                        if st.month == month && refused {
                            st.unsent += unsent;
                        }
                    });
                }
                self.warn("sync", &format!("{}budget:*", self.prefix), &e);
            }
        }
    }

    fn warn(&self, op: &str, key: &str, e: &redis::RedisError) {
        let now = unix_now();
        let last = self.last_warning.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 60
            || self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        // The error's kind only: a reply could be quoted otherwise.
        let why = if e.is_timeout() {
            "no answer in time".to_owned()
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            "connection failed".to_owned()
        } else {
            format!("{:?}", e.kind())
        };
        tracing::warn!(
            op,
            key,
            error = %why,
            "monthly budget: a Redis call failed; the replica counts on locally (logged once a minute)"
        );
    }
}

// ----- files ----------------------------------------------------------------

/// What `<state_dir>/budget.<group>.json` holds: the count only. Feishu's
/// 99991403 is not kept: after a restart the first counted call learns it
/// again (Feishu does not count the refused call), and a restart is how an
/// operator lifts it after raising the tenant's plan.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Saved {
    group: String,
    month: String,
    used: u64,
}

fn file_of(dir: &Path, group: &str) -> PathBuf {
    dir.join(format!("budget.{group}.json"))
}

/// Reads each group's file; a count of the current month is taken, any
/// other month ignored. A missing file is no count; an unreadable one is
/// logged (and replaced by the next save).
async fn load_files(dir: &Path, budgets: &Budgets) {
    let month = Month::now();
    for g in 0..budgets.group_count() {
        let name = budgets.group_name(g).to_owned();
        let path = file_of(dir, &name);
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(&path)).await
        };
        let bytes = match read {
            Ok(Ok(b)) => b,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Ok(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "monthly budget: cannot read the kept count; starting at 0");
                continue;
            }
            Err(_) => continue,
        };
        match serde_json::from_slice::<Saved>(&bytes) {
            Ok(saved) if saved.group == name => {
                if Month::parse(&saved.month) != Some(month) {
                    continue;
                }
                budgets.update(g, |st| {
                    if st.month == month {
                        st.used = st.used.max(saved.used);
                    }
                });
                tracing::info!(group = %name, month = %month, used = saved.used, "monthly budget: count loaded from state_dir");
            }
            _ => {
                tracing::warn!(path = %path.display(), "monthly budget: the kept count is not a budget document of this group; starting at 0");
            }
        }
    }
}

/// Writes the groups whose count changed since the last save.
async fn save_files(dir: &Path, budgets: &Budgets) {
    for g in 0..budgets.group_count() {
        let Some(saved) = budgets.update(g, |st| {
            std::mem::take(&mut st.dirty).then(|| Saved {
                group: String::new(),
                month: st.month.to_string(),
                used: st.used,
            })
        }) else {
            continue;
        };
        let saved = Saved {
            group: budgets.group_name(g).to_owned(),
            ..saved
        };
        let path = file_of(dir, &saved.group);
        let dir_ = dir.to_owned();
        let path_ = path.clone();
        let doc = serde_json::to_vec(&saved).unwrap_or_default();
        let written = tokio::task::spawn_blocking(move || write_atomically(&dir_, &path_, &doc))
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("I/O task failed")));
        if let Err(e) = written {
            budgets.update(g, |st| st.dirty = true);
            tracing::warn!(path = %path.display(), error = %e, "monthly budget: cannot save the count to state_dir");
        }
    }
}

/// Replaces `path` with `doc`: a temporary file in the same directory
/// (mode 0600), synced, renamed over it.
fn write_atomically(dir: &Path, path: &Path, doc: &[u8]) -> std::io::Result<()> {
    create_dir(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("budget");
    let tmp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut f = create_file(&tmp)?;
        f.write_all(doc)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(unix)]
fn create_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn create_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}
