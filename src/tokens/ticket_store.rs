//! Where a store app's latest app_ticket is kept, so that a restart does not
//! wait for Feishu's next hourly push (a ticket can only be received,
//! never fetched: the resend call only asks Feishu to push it again).
//!
//! [`TicketStore`] is the seam:
//! - [`RedisTicketStore`] (with `[quota] backend = "redis"`): one key per
//!   app, `<key_prefix>app_ticket:<app_id>`, holding the JSON document of
//!   [`StoredTicket::to_json`], written by one `SET`. Every replica reads
//!   and writes the same key, so a ticket Feishu pushed to any replica is
//!   usable by all ([`TicketStore::is_shared`]; see [`crate::tokens::ticket::TicketBox`]
//!   for when a replica reads it).
//! - [`FileTicketStore`] (else, with `state_dir`): one JSON file per app
//!   under the state directory, replaced atomically.
//! - [`MemoryTicketStore`]: for tests, and for running without either (a
//!   restart then waits for a resend).
//!
//! Tickets are secrets: [`StoredTicket`]'s `Debug` hides the ticket, files
//! are created with mode 0600, and no error carries a ticket, file contents
//! or a Redis value.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::redis_connection::RedisConnection;
use crate::secret::Secret;

/// A kept ticket older than this is not trusted (the Go SDK keeps tickets
/// 12 h): the gateway asks for a fresh one instead. A Redis key expires
/// when its ticket reaches this age.
pub const MAX_TICKET_AGE: Duration = Duration::from_secs(12 * 3600);

/// A ticket as kept: whose, what, and when it was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTicket {
    /// The store app's id.
    pub app_id: String,
    /// The ticket.
    pub ticket: Secret,
    /// When the gateway received it, in unix seconds.
    pub received_at_unix: u64,
}

/// The document kept per app (file contents, or a Redis value).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    app_id: String,
    ticket: String,
    received_at_unix: u64,
}

impl StoredTicket {
    /// A ticket received now.
    pub fn received_now(app_id: impl Into<String>, ticket: Secret) -> Self {
        StoredTicket {
            app_id: app_id.into(),
            ticket,
            received_at_unix: unix_secs(SystemTime::now()),
        }
    }

    /// How long ago it was received, as of `now` (zero if in the future).
    pub fn age(&self, now: SystemTime) -> Duration {
        Duration::from_secs(unix_secs(now).saturating_sub(self.received_at_unix))
    }

    /// `{"app_id","ticket","received_at_unix"}`: what every store keeps.
    pub fn to_json(&self) -> String {
        let doc = Document {
            app_id: self.app_id.clone(),
            ticket: self.ticket.expose().to_owned(),
            received_at_unix: self.received_at_unix,
        };
        // A struct of strings and an integer always serialises.
        serde_json::to_string(&doc).unwrap_or_default()
    }

    /// Parse [`to_json`](Self::to_json)'s output. `None` when it is not that
    /// document (the parser's message is dropped: it may quote the ticket).
    pub fn from_json(bytes: &[u8]) -> Option<Self> {
        let doc: Document = serde_json::from_slice(bytes).ok()?;
        Some(StoredTicket {
            app_id: doc.app_id,
            ticket: Secret::new(doc.ticket),
            received_at_unix: doc.received_at_unix,
        })
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Why a ticket could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum TicketStoreError {
    /// The app id cannot name a file (or key): only ASCII letters, digits,
    /// `_` and `-`, 1 to 128 of them.
    #[error("ticket store: app id {0:?} is not usable as a file name")]
    InvalidAppId(String),
    /// Reading or writing failed.
    #[error("ticket store: {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kept document is not a ticket document for this app. Treat it as
    /// no ticket (and resend); the next save replaces it.
    #[error("ticket store: {where_} does not hold a ticket document for this app")]
    Corrupt {
        /// The file (or key).
        where_: String,
    },
    /// The blocking task doing the I/O panicked or was cancelled.
    #[error("ticket store: I/O task failed")]
    Task,
    /// A Redis command failed or timed out.
    #[error("ticket store: {op} {key} in Redis: {error}")]
    Redis {
        /// What was being done.
        op: &'static str,
        /// The key.
        key: String,
        /// Why, without the value (see [`redis_failure`]).
        error: String,
    },
}

/// A boxed future, so that the trait can be used as `dyn TicketStore`.
pub type StoreFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, TicketStoreError>> + Send + 'a>>;

/// Keeps the latest ticket of each store app.
pub trait TicketStore: Send + Sync + fmt::Debug {
    /// The ticket kept for `app_id`, if any.
    fn load<'a>(&'a self, app_id: &'a str) -> StoreFuture<'a, Option<StoredTicket>>;

    /// Keep `ticket` as the latest of its app, replacing any older one. A
    /// concurrent `load` sees the old ticket or the new one, never a mix.
    fn save<'a>(&'a self, ticket: &'a StoredTicket) -> StoreFuture<'a, ()>;

    /// True when other replicas read and write the same tickets (Redis):
    /// a replica then looks in the store for a newer ticket before it uses
    /// its own, and while it waits for a resent one.
    fn is_shared(&self) -> bool {
        false
    }
}

/// Check that an app id can name a file or key.
fn check_app_id(app_id: &str) -> Result<(), TicketStoreError> {
    let ok = (1..=128).contains(&app_id.len())
        && app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TicketStoreError::InvalidAppId(app_id.to_owned()))
    }
}

// ----- files ----------------------------------------------------------------

/// One file per app, `<dir>/app_ticket.<app_id>.json`, replaced atomically
/// (temporary file in the same directory, fsync, rename, fsync of the
/// directory). The directory is created (mode 0700) on the first save.
#[derive(Debug, Clone)]
pub struct FileTicketStore {
    dir: PathBuf,
}

impl FileTicketStore {
    /// A store under `dir` (the configured state directory).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileTicketStore { dir: dir.into() }
    }

    /// The file that holds `app_id`'s ticket.
    pub fn path_of(&self, app_id: &str) -> Result<PathBuf, TicketStoreError> {
        check_app_id(app_id)?;
        Ok(self.dir.join(format!("app_ticket.{app_id}.json")))
    }

    fn load_blocking(path: &Path, app_id: &str) -> Result<Option<StoredTicket>, TicketStoreError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TicketStoreError::Io {
                    op: "read",
                    path: path.to_owned(),
                    source,
                })
            }
        };
        match StoredTicket::from_json(&bytes) {
            Some(t) if t.app_id == app_id => Ok(Some(t)),
            _ => Err(TicketStoreError::Corrupt {
                where_: path.display().to_string(),
            }),
        }
    }

    fn save_blocking(dir: &Path, path: &Path, doc: &str) -> Result<(), TicketStoreError> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| TicketStoreError::Io { op, path, source }
        };
        create_private_dir(dir).map_err(io("create directory", dir))?;

        // A unique temporary name in the same directory, so the rename is
        // atomic and concurrent saves do not write into each other's file.
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("app_ticket");
        let tmp = dir.join(format!(
            ".{file_name}.{}.{:016x}.tmp",
            std::process::id(),
            rand::random::<u64>()
        ));
        let written = (|| {
            let mut f = create_private_file(&tmp).map_err(io("create", &tmp))?;
            f.write_all(doc.as_bytes()).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("sync", &tmp))?;
            std::fs::rename(&tmp, path).map_err(io("rename into", path))
        })();
        if written.is_err() {
            // Best effort: a leftover temporary file is only clutter.
            let _ = std::fs::remove_file(&tmp);
            return written;
        }
        // Make the rename itself durable; not all file systems allow it.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Run blocking file I/O off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TicketStoreError> + Send + 'static,
) -> Result<T, TicketStoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| TicketStoreError::Task)?
}

impl TicketStore for FileTicketStore {
    fn load<'a>(&'a self, app_id: &'a str) -> StoreFuture<'a, Option<StoredTicket>> {
        Box::pin(async move {
            let path = self.path_of(app_id)?;
            let app_id = app_id.to_owned();
            blocking(move || Self::load_blocking(&path, &app_id)).await
        })
    }

    fn save<'a>(&'a self, ticket: &'a StoredTicket) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = self.path_of(&ticket.app_id)?;
            let dir = self.dir.clone();
            let doc = ticket.to_json();
            blocking(move || Self::save_blocking(&dir, &path, &doc)).await
        })
    }
}

// ----- redis ----------------------------------------------------------------

/// One Redis key per app, `<key_prefix>app_ticket:<app_id>`, on the
/// replica's shared [`RedisConnection`]. A save is one `SET … PX`: atomic,
/// and the key expires when its ticket reaches [`MAX_TICKET_AGE`] (a stale
/// ticket is not used anyway). A value that is not a ticket document of
/// its app loads as [`TicketStoreError::Corrupt`] (no ticket; the next save
/// replaces it).
#[derive(Debug, Clone)]
pub struct RedisTicketStore {
    conn: RedisConnection,
    prefix: String,
}

/// A ticket call gets this many tries when Redis answers too slowly
/// (`redis_timeout`, 50 ms by default, is tight for a ticket) or the
/// connection was just lost (e.g. Redis restarted); not when it cannot
/// connect at all.
const REDIS_TRIES: u32 = 3;

impl RedisTicketStore {
    /// A store on `conn`, under `key_prefix` (`[quota] key_prefix`).
    pub fn new(conn: RedisConnection, key_prefix: impl Into<String>) -> Self {
        RedisTicketStore {
            conn,
            prefix: key_prefix.into(),
        }
    }

    /// The key that holds `app_id`'s ticket.
    pub fn key_of(&self, app_id: &str) -> Result<String, TicketStoreError> {
        check_app_id(app_id)?;
        Ok(format!("{}app_ticket:{app_id}", self.prefix))
    }

    /// Runs `cmd`, trying again after a slow answer or a lost connection,
    /// all within the connection's connect timeout (1 s by default), so an
    /// unreachable Redis costs a ticket call at most that.
    async fn query<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        key: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, TicketStoreError> {
        let mut last = String::new();
        let deadline = tokio::time::Instant::now() + self.conn.connect_timeout();
        for _ in 0..REDIS_TRIES {
            let mut conn = self.conn.handle();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, cmd.query_async::<T>(&mut conn)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    last = redis_failure(&e);
                    let transient = e.is_timeout() || e.is_connection_dropped();
                    if !transient {
                        break;
                    }
                }
                Err(_) => {
                    last = "no answer in time".to_owned();
                    break;
                }
            }
        }
        Err(TicketStoreError::Redis {
            op,
            key: key.to_owned(),
            error: last,
        })
    }
}

/// A Redis error as a ticket store reports it: what went wrong, never a
/// value (a conversion error could quote the reply, i.e. the ticket).
pub fn redis_failure(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "no answer in time".to_owned()
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        format!("connection: {e}")
    } else if let Some(code) = e.code() {
        format!("server error {code}")
    } else {
        format!("{:?}", e.kind())
    }
}

impl TicketStore for RedisTicketStore {
    fn load<'a>(&'a self, app_id: &'a str) -> StoreFuture<'a, Option<StoredTicket>> {
        Box::pin(async move {
            let key = self.key_of(app_id)?;
            let mut get = redis::cmd("GET");
            get.arg(&key);
            let value: Option<Vec<u8>> = self.query("GET", &key, &get).await?;
            match value.map(|v| StoredTicket::from_json(&v)) {
                None => Ok(None),
                Some(Some(t)) if t.app_id == app_id => Ok(Some(t)),
                Some(_) => Err(TicketStoreError::Corrupt { where_: key }),
            }
        })
    }

    fn save<'a>(&'a self, ticket: &'a StoredTicket) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let key = self.key_of(&ticket.app_id)?;
            let left = MAX_TICKET_AGE.saturating_sub(ticket.age(SystemTime::now()));
            let ttl_ms = left.as_millis().max(1) as u64;
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(ticket.to_json()).arg("PX").arg(ttl_ms);
            self.query::<()>("SET", &key, &set).await
        })
    }

    fn is_shared(&self) -> bool {
        true
    }
}

// ----- memory ---------------------------------------------------------------

/// Tickets in memory: for tests, and for running without a state directory
/// (a restart then waits for a resend).
#[derive(Debug, Default)]
pub struct MemoryTicketStore {
    tickets: Mutex<HashMap<String, StoredTicket>>,
}

impl MemoryTicketStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl TicketStore for MemoryTicketStore {
    fn load<'a>(&'a self, app_id: &'a str) -> StoreFuture<'a, Option<StoredTicket>> {
        let found = self
            .tickets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(app_id)
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn save<'a>(&'a self, ticket: &'a StoredTicket) -> StoreFuture<'a, ()> {
        let checked = check_app_id(&ticket.app_id);
        if checked.is_ok() {
            self.tickets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(ticket.app_id.clone(), ticket.clone());
        }
        Box::pin(async move { checked })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(app: &str, value: &str, at: u64) -> StoredTicket {
        StoredTicket {
            app_id: app.to_owned(),
            ticket: Secret::new(value),
            received_at_unix: at,
        }
    }

    #[tokio::test]
    async fn file_round_trip_and_missing_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileTicketStore::new(dir.path().join("state"));
        assert_eq!(store.load("cli_a").await.expect("load"), None);

        let t = ticket("cli_a", "tkt-secret-1", 1_700_000_000);
        store.save(&t).await.expect("save");
        assert_eq!(store.load("cli_a").await.expect("load"), Some(t.clone()));
        // Another app has its own file.
        assert_eq!(store.load("cli_b").await.expect("load"), None);

        let raw = std::fs::read_to_string(store.path_of("cli_a").expect("path")).expect("read");
        let json: serde_json::Value = serde_json::from_str(&raw).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"app_id": "cli_a", "ticket": "tkt-secret-1", "received_at_unix": 1_700_000_000u64})
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let store = FileTicketStore::new(&state);
        store.save(&ticket("cli_a", "x", 1)).await.expect("save");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&store.path_of("cli_a").expect("path")), 0o600);
        assert_eq!(mode(&state), 0o700);
    }

    #[tokio::test]
    async fn overwrite_is_atomic_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = std::sync::Arc::new(FileTicketStore::new(dir.path()));
        store.save(&ticket("cli_a", "old", 1)).await.expect("save");

        // Writers replace the ticket while readers read: every read sees one
        // whole document, never a torn or empty one.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20u64 {
            let writer = std::sync::Arc::clone(&store);
            tasks.spawn(async move {
                writer
                    .save(&ticket(
                        "cli_a",
                        &format!("ticket-{i:04}-{}", "x".repeat(200)),
                        i,
                    ))
                    .await
                    .expect("save");
            });
            let reader = std::sync::Arc::clone(&store);
            tasks.spawn(async move {
                let t = reader.load("cli_a").await.expect("load").expect("some");
                let v = t.ticket.expose();
                assert!(
                    v == "old" || (v.starts_with("ticket-") && v.len() == 212),
                    "torn"
                );
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.expect("task");
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["app_ticket.cli_a.json".to_owned()]);
    }

    #[tokio::test]
    async fn corrupt_or_foreign_files_are_errors_without_their_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileTicketStore::new(dir.path());
        let path = store.path_of("cli_a").expect("path");
        std::fs::write(&path, r#"{"app_id":"cli_a","ticket":"tkt-leak"#).expect("write");
        let err = store.load("cli_a").await.expect_err("corrupt");
        assert!(matches!(err, TicketStoreError::Corrupt { .. }));
        assert!(!format!("{err} {err:?}").contains("tkt-leak"));

        // A document of another app under this app's name is not taken.
        std::fs::write(&path, ticket("cli_b", "tkt-leak", 1).to_json()).expect("write");
        let err = store.load("cli_a").await.expect_err("foreign");
        assert!(!format!("{err} {err:?}").contains("tkt-leak"));

        // The next save repairs it.
        store
            .save(&ticket("cli_a", "fresh", 2))
            .await
            .expect("save");
        assert_eq!(
            store
                .load("cli_a")
                .await
                .expect("load")
                .map(|t| t.received_at_unix),
            Some(2)
        );
    }

    #[tokio::test]
    async fn app_ids_that_cannot_name_a_file_are_refused() {
        let store = FileTicketStore::new("/nonexistent");
        for bad in ["", "../etc", "a/b", "a.b", &"x".repeat(129)] {
            assert!(matches!(
                store.load(bad).await,
                Err(TicketStoreError::InvalidAppId(_))
            ));
        }
        let memory = MemoryTicketStore::new();
        assert!(memory.save(&ticket("a/b", "x", 1)).await.is_err());
    }

    #[tokio::test]
    async fn memory_store_round_trip_and_debug_hides_tickets() {
        let store: Box<dyn TicketStore> = Box::new(MemoryTicketStore::new());
        assert!(!store.is_shared() && !FileTicketStore::new("/x").is_shared());
        let t = ticket("cli_a", "tkt-hidden", 5);
        store.save(&t).await.expect("save");
        assert_eq!(store.load("cli_a").await.expect("load"), Some(t.clone()));
        assert!(!format!("{store:?} {t:?}").contains("tkt-hidden"));
        assert_eq!(
            t.age(UNIX_EPOCH + Duration::from_secs(65)),
            Duration::from_secs(60)
        );
        assert_eq!(StoredTicket::from_json(t.to_json().as_bytes()), Some(t));
    }
}
