//! Per-resource keys (a receiver, a message, a document, a table, an upload
//! endpoint), made on first use: one table per rule (per app, or one for
//! all apps when the rule is shared), bounded by the rule's `max_keys`. An
//! idle key is forgotten only when forgetting it cannot allow a violation:
//! idle longer than its longest window and nothing in flight.
//!
//! Each key holds up to three limits, checked in this order, spending
//! nothing when one refuses: the cap on calls in flight (a semaphore), the
//! long windows (`10000/86400s`, an exact log of admissions, so a day budget
//! does not slow the per-second rate), and the short windows (a quota [`Key`],
//! in Redis with that backend, shared by every replica). In-flight caps and
//! long windows are counted in process.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::endpoints::resources::LONG_WINDOW;
use crate::endpoints::{Catalog, ResourceRule};
use crate::quota::{
    Engine, Key, KeySpec, Overflow, PauseCell, Plan, PlanPolicy, Rejection, Window,
};

/// Why a resource refused a request; nothing was spent.
#[derive(Debug)]
pub enum Refused {
    /// Over a short window (or paused): the quota's rejection.
    Limited(Rejection),
    /// The key's calls in flight, a long window, a pause after Feishu's
    /// answer, or a full table.
    Busy {
        /// `concurrency`, the window, `upstream-pause` or `full`.
        what: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The shared quota backend is down and `fail = "closed"`.
    Unavailable,
}

/// One resource's state.
pub struct Entry {
    key: Option<Key>,
    long: Vec<(Window, Mutex<VecDeque<Instant>>)>,
    in_flight: Option<Arc<Semaphore>>,
    /// After Feishu's throttle answer for this resource.
    pub pause: PauseCell,
    /// ns since the table's epoch.
    last_used: AtomicU64,
}

impl Entry {
    /// Feishu throttled this resource: hold it for `d` (the quota key's
    /// pause is shared through Redis with that backend).
    pub fn pause(&self, d: Duration) {
        self.pause.pause(d);
        if let Some(k) = &self.key {
            k.pause(d);
        }
    }
}

/// What an admitted request holds until it ends: its resources, their
/// in-flight permits, and (until [`Held::commit`]) the right to give its
/// long-window slots back.
pub struct Held {
    /// The resource.
    pub entry: Arc<Entry>,
    _permit: Option<OwnedSemaphorePermit>,
    committed: AtomicBool,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

impl Held {
    /// The request is admitted everywhere and goes out: its slots count.
    pub fn commit(&self) {
        self.committed.store(true, Ordering::Release);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.committed.load(Ordering::Acquire) {
            for (_, log) in &self.entry.long {
                lock(log).pop_back();
            }
        }
    }
}

struct Table {
    epoch: Instant,
    entries: Mutex<HashMap<Box<str>, Arc<Entry>>>,
}

struct RuleKeys {
    rule: ResourceRule,
    spec: Option<KeySpec>,
    long: Vec<Window>,
    forget_after: Duration,
    /// One per app, or one when shared; by `Arc`, so a live reload can
    /// hand a kept app's table to the new generation.
    tables: Box<[Arc<Table>]>,
}

/// Every rule's keys.
pub struct ResourceKeys {
    engine: Engine,
    app_ids: Vec<String>,
    rules: Vec<RuleKeys>,
}

impl std::fmt::Debug for ResourceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceKeys")
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

impl ResourceKeys {
    /// Tables for every rule of `catalog`, with plans checked now.
    pub fn new(
        engine: Engine,
        catalog: &Catalog,
        policy: &PlanPolicy,
        max_waiters: u32,
        app_ids: Vec<String>,
    ) -> Result<ResourceKeys, String> {
        let mut rules = Vec::new();
        for rule in catalog.rules() {
            let (long, short): (Vec<Window>, Vec<Window>) =
                rule.limits.iter().partition(|w| w.period() > LONG_WINDOW);
            let spec = if short.is_empty() {
                None
            } else {
                let plan = Plan::new(&short, policy)
                    .map_err(|e| format!("resource rule {}: {e}", rule.name))?;
                let spec = KeySpec::new(plan, max_waiters);
                engine
                    .key(&spec.clone().with_name(format!("check#{}", rule.name)))
                    .map_err(|e| format!("resource rule {}: {e}", rule.name))?;
                Some(spec)
            };
            let longest = rule
                .limits
                .iter()
                .map(|w| w.period())
                .max()
                .unwrap_or_default();
            let tables = if rule.shared { 1 } else { app_ids.len().max(1) };
            rules.push(RuleKeys {
                rule: rule.clone(),
                spec,
                long,
                forget_after: longest + policy.margin + Duration::from_secs(1),
                tables: (0..tables)
                    .map(|_| {
                        Arc::new(Table {
                            epoch: Instant::now(),
                            entries: Mutex::new(HashMap::new()),
                        })
                    })
                    .collect(),
            });
        }
        Ok(ResourceKeys {
            engine,
            app_ids,
            rules,
        })
    }

    /// A live reload: each rule that `old` had too, unchanged (same
    /// definition, same plan), keeps its tables — the shared one, and the
    /// one of every app the reload kept (`apps[new] = Some(old)`) — with
    /// every resource's windows, in-flight count and pause.
    pub fn carry(&mut self, old: &ResourceKeys, apps: &[Option<usize>]) {
        for r in &mut self.rules {
            let Some(o) = old.rules.iter().find(|o| {
                o.rule == r.rule
                    && match (&o.spec, &r.spec) {
                        (None, None) => true,
                        (Some(a), Some(b)) => a.same_plan(b),
                        _ => false,
                    }
            }) else {
                continue;
            };
            if r.rule.shared {
                r.tables[0] = Arc::clone(&o.tables[0]);
                continue;
            }
            for (app, from) in apps.iter().enumerate() {
                if let (Some(slot), Some(t)) =
                    (r.tables.get_mut(app), from.and_then(|f| o.tables.get(f)))
                {
                    *slot = Arc::clone(t);
                }
            }
        }
    }

    /// The rule at `index`.
    pub fn rule(&self, index: usize) -> &ResourceRule {
        &self.rules[index].rule
    }

    /// Admits one request of `app` on resource `value` of rule `rule`, or
    /// refuses it without spending anything.
    pub async fn admit(
        &self,
        rule: usize,
        app: usize,
        value: &str,
        overflow: Overflow,
    ) -> Result<Held, Refused> {
        let r = &self.rules[rule];
        let table = &r.tables[if r.rule.shared { 0 } else { app }];
        let entry = self
            .entry(r, table, app, value)
            .ok_or_else(|| Refused::Busy {
                what: "full".into(),
                retry_after: Duration::from_secs(1),
            })?;
        if let Some(left) = entry.pause.left() {
            match overflow {
                Overflow::Wait(max) if left <= max => tokio::time::sleep(left).await,
                _ => {
                    return Err(Refused::Busy {
                        what: "upstream-pause".into(),
                        retry_after: left,
                    })
                }
            }
        }
        let permit = match &entry.in_flight {
            None => None,
            Some(sem) => Some(
                match overflow {
                    Overflow::Reject => Arc::clone(sem).try_acquire_owned().ok(),
                    Overflow::Wait(max) => {
                        tokio::time::timeout(max, Arc::clone(sem).acquire_owned())
                            .await
                            .ok()
                            .and_then(Result::ok)
                    }
                }
                .ok_or_else(|| Refused::Busy {
                    what: "concurrency".into(),
                    retry_after: Duration::from_secs(1),
                })?,
            ),
        };
        take_long(&entry)?;
        let held = Held {
            entry: Arc::clone(&entry),
            _permit: permit,
            committed: AtomicBool::new(false),
        };
        if let Some(key) = &entry.key {
            match key.acquire(overflow).await {
                Ok(_) => {}
                Err(r) if r.cause() == crate::quota::Cause::BackendUnavailable => {
                    return Err(Refused::Unavailable)
                }
                Err(r) => return Err(Refused::Limited(r)),
            }
        }
        Ok(held)
    }

    fn entry(&self, r: &RuleKeys, table: &Table, app: usize, value: &str) -> Option<Arc<Entry>> {
        let now = table.epoch.elapsed().as_nanos() as u64;
        let mut entries = lock(&table.entries);
        if let Some(e) = entries.get(value) {
            e.last_used.store(now, Ordering::Relaxed);
            return Some(Arc::clone(e));
        }
        if entries.len() >= r.rule.max_keys {
            let idle = r.forget_after.as_nanos() as u64;
            entries.retain(|_, e| {
                Arc::strong_count(e) > 1
                    || now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < idle
            });
            if entries.len() >= r.rule.max_keys {
                tracing::warn!(
                    rule = %r.rule.name,
                    max_keys = r.rule.max_keys,
                    "resource table full of keys still in use: refusing a new resource"
                );
                return None;
            }
        }
        let scope = if r.rule.shared {
            "*"
        } else {
            self.app_ids.get(app).map_or("", String::as_str)
        };
        let key = r.spec.as_ref().and_then(|spec| {
            let name = format!("{scope}#{}={value}", r.rule.name);
            self.engine
                .key(&spec.clone().with_name(name))
                .map_err(|e| tracing::error!(error = %e, "cannot make a resource key"))
                .ok()
        });
        let entry = Arc::new(Entry {
            key,
            long: r
                .long
                .iter()
                .map(|w| (*w, Mutex::new(VecDeque::new())))
                .collect(),
            in_flight: r
                .rule
                .concurrency
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            pause: PauseCell::default(),
            last_used: AtomicU64::new(now),
        });
        entries.insert(value.into(), Arc::clone(&entry));
        Some(entry)
    }

    /// Resources held now by rule `rule` (all tables).
    pub fn held(&self, rule: usize) -> usize {
        self.rules[rule]
            .tables
            .iter()
            .map(|t| lock(&t.entries).len())
            .sum()
    }
}

/// Takes one slot of every long window of `entry`, or none.
fn take_long(entry: &Entry) -> Result<(), Refused> {
    if entry.long.is_empty() {
        return Ok(());
    }
    let now = Instant::now();
    let mut logs: Vec<_> = entry.long.iter().map(|(w, l)| (w, lock(l))).collect();
    for (w, log) in &mut logs {
        while log
            .front()
            .is_some_and(|t| now.duration_since(*t) >= w.period())
        {
            log.pop_front();
        }
        if log.len() >= w.limit() as usize {
            let oldest = *log.front().expect("full");
            return Err(Refused::Busy {
                what: w.to_string(),
                retry_after: (oldest + w.period()).saturating_duration_since(now),
            });
        }
    }
    for (_, log) in &mut logs {
        log.push_back(now);
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The resource id a request names for `rule`, qualified by the rule's
/// `kind` (`chat_id:oc_1`); `None` when the request does not name one (the
/// rule then does not apply: a request without a receiver is Feishu's to
/// refuse). Ids longer than 256 bytes are kept as their SHA-256.
pub fn resource_value(
    rule: &ResourceRule,
    route: &crate::endpoints::Route,
    uri: &http::Uri,
    body: &[u8],
) -> Option<String> {
    let read = |source: &crate::endpoints::KeySource| -> Option<String> {
        use crate::endpoints::KeySource;
        match source {
            KeySource::Path(name) => route.param(uri.path(), name).map(str::to_string),
            KeySource::Query(name) => query_param(uri.query()?, name),
            KeySource::Body(field) => body_field(body, field),
            KeySource::Endpoint => Some(format!("{} {}", route.method, route.template)),
        }
    };
    let id = read(&rule.key).filter(|v| !v.is_empty())?;
    let value = match &rule.kind {
        Some(kind) => format!("{}:{id}", read(kind).unwrap_or_default()),
        None => id,
    };
    Some(if value.len() > 256 {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(value.as_bytes()))
    } else {
        value
    })
}

/// The raw value of `name` in a query string (the first one).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

/// A top-level string (or number) field of a JSON object body, read
/// without building the whole document.
fn body_field(body: &[u8], field: &str) -> Option<String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    struct Find<'f>(&'f str);
    impl<'de> DeserializeSeed<'de> for Find<'_> {
        type Value = Option<String>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Find<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if found.is_none() && k == self.0 {
                    found = match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::String(s) => Some(s),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    };
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    Find(field).deserialize(&mut de).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_query_parameters() {
        let body = br#"{"content":"{\"text\":\"receive_id\"}","receive_id":"oc_1","n":[1,{"receive_id":2}]}"#;
        assert_eq!(body_field(body, "receive_id").as_deref(), Some("oc_1"));
        assert_eq!(
            body_field(br#"{"receive_id":7}"#, "receive_id").as_deref(),
            Some("7")
        );
        assert_eq!(body_field(br#"{"x":1}"#, "receive_id"), None);
        assert_eq!(body_field(b"not json", "receive_id"), None);
        assert_eq!(body_field(br#"["receive_id"]"#, "receive_id"), None);
        assert_eq!(
            query_param("a=1&receive_id_type=chat_id", "receive_id_type").as_deref(),
            Some("chat_id")
        );
        assert_eq!(query_param("receive_id_typex=1", "receive_id_type"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn long_windows_count_apart_and_give_back_unsent_slots() {
        let catalog = Catalog::builtin();
        let rule = catalog
            .rules()
            .iter()
            .position(|r| r.name == "drive.upload")
            .unwrap();
        let keys = ResourceKeys::new(
            Engine::local(Vec::new()),
            &catalog,
            &PlanPolicy::default(),
            16,
            vec!["cli_a".into()],
        )
        .unwrap();
        // One in flight: a second call on the same endpoint is refused.
        let first = keys
            .admit(rule, 0, "upload_all", Overflow::Reject)
            .await
            .unwrap();
        let busy = keys.admit(rule, 0, "upload_all", Overflow::Reject).await;
        assert!(matches!(busy, Err(Refused::Busy { ref what, .. }) if what == "concurrency"));
        // Never committed: its day slot is given back on drop (its 5/1s
        // slot stays spent).
        drop(first);
        tokio::time::advance(Duration::from_secs(1)).await;
        let entry = keys
            .admit(rule, 0, "upload_all", Overflow::Reject)
            .await
            .unwrap();
        entry.commit();
        assert_eq!(lock(&entry.entry.long[0].1).len(), 1);
        drop(entry);
        // The day window (10000/86400s: a 0.12/s average) does not slow
        // the rate: one call every 250 ms (4/s) all pass.
        let mut ok = 0;
        for _ in 0..50 {
            tokio::time::advance(Duration::from_millis(250)).await;
            if let Ok(h) = keys.admit(rule, 0, "upload_all", Overflow::Reject).await {
                h.commit();
                ok += 1;
            }
        }
        assert_eq!(ok, 50, "{ok} of 50 at 4/s");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_forgotten_only_past_their_longest_window() {
        let catalog_rules = Catalog::builtin();
        let rule = catalog_rules
            .rules()
            .iter()
            .position(|r| r.name == "im.card")
            .unwrap();
        let mut keys = ResourceKeys::new(
            Engine::local(Vec::new()),
            &catalog_rules,
            &PlanPolicy::default(),
            16,
            vec!["cli_a".into()],
        )
        .unwrap();
        keys.rules[rule].rule.max_keys = 2;
        for id in ["om_1", "om_2"] {
            keys.admit(rule, 0, id, Overflow::Reject)
                .await
                .unwrap()
                .commit();
        }
        // Full, and both used within their 1 s window: a third is refused.
        let full = keys.admit(rule, 0, "om_3", Overflow::Reject).await;
        assert!(matches!(full, Err(Refused::Busy { ref what, .. }) if what == "full"));
        tokio::time::advance(Duration::from_secs(3)).await;
        keys.admit(rule, 0, "om_3", Overflow::Reject)
            .await
            .unwrap()
            .commit();
        assert_eq!(keys.held(rule), 1, "the idle ones were forgotten");
    }
}
