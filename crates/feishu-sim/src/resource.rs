//! Per-resource limits ([`ResourceRule`]): arrival logs per resource key,
//! checked in sliding windows like the endpoint quotas, and the calls in
//! flight per key for the rules that take no concurrency.
//!
//! A key is created on its first arrival. Arrivals refused by the resource
//! limit are logged too (as for endpoint windows); calls refused earlier (by
//! an endpoint window or a fault) never reach this book.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::catalog::{Endpoint, ResourceRule};
use super::quota::{self, Over};
use super::state::{lock, Shared};

/// Arrivals kept per key for introspection; past this the oldest quarter is
/// dropped.
const HISTORY_CAP: usize = 1 << 18;

/// Why a call was refused by its resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Over a rate window.
    Over(Over),
    /// The key already has its cap of calls in flight.
    Busy,
}

#[derive(Debug, Default)]
struct KeyLog {
    recent: VecDeque<Instant>,
    history: Vec<Instant>,
    in_flight: u32,
    peak_in_flight: u32,
}

/// Every resource key's logs.
#[derive(Debug, Default)]
pub(crate) struct ResourceBook {
    keys: HashMap<ResourceRule, HashMap<String, KeyLog>>,
}

impl ResourceBook {
    /// Log an arrival at (`rule`, `key`) now and judge it: over a window
    /// (the one that frees last), else busy, else `None`.
    pub(crate) fn arrive(
        &mut self,
        rule: ResourceRule,
        key: &str,
        now: Instant,
    ) -> Option<Refusal> {
        let keys = self.keys.entry(rule).or_default();
        let log = match keys.get_mut(key) {
            Some(log) => log,
            None => keys.entry(key.to_owned()).or_default(),
        };
        let windows = rule.windows();
        let longest = windows.iter().map(|w| w.1).max().unwrap_or(Duration::ZERO);
        quota::slide(&mut log.recent, longest, now);
        if log.history.len() >= HISTORY_CAP {
            log.history.drain(..HISTORY_CAP / 4);
        }
        log.history.push(*log.recent.back().expect("just pushed"));
        if let Some(over) = quota::over(&log.recent, windows) {
            return Some(Refusal::Over(over));
        }
        let busy = rule.max_in_flight().is_some_and(|cap| log.in_flight >= cap);
        busy.then_some(Refusal::Busy)
    }

    /// A call at (`rule`, `key`) goes ahead: it is in flight until
    /// [`release`](Self::release).
    pub(crate) fn take_slot(&mut self, rule: ResourceRule, key: &str) {
        if let Some(log) = self.keys.get_mut(&rule).and_then(|k| k.get_mut(key)) {
            log.in_flight += 1;
            log.peak_in_flight = log.peak_in_flight.max(log.in_flight);
        }
    }

    /// A call taken by [`take_slot`](Self::take_slot) has been answered.
    pub(crate) fn release(&mut self, rule: ResourceRule, key: &str) {
        if let Some(log) = self.keys.get_mut(&rule).and_then(|k| k.get_mut(key)) {
            log.in_flight = log.in_flight.saturating_sub(1);
        }
    }

    /// The most arrivals at (`rule`, `key`) within any interval of `window`.
    pub(crate) fn max_in_any_window(
        &self,
        rule: ResourceRule,
        key: &str,
        window: Duration,
    ) -> usize {
        self.log(rule, key)
            .map_or(0, |log| quota::max_in_any_window(&log.history, window))
    }

    /// The most calls at (`rule`, `key`) in flight at once.
    pub(crate) fn peak_in_flight(&self, rule: ResourceRule, key: &str) -> u32 {
        self.log(rule, key).map_or(0, |log| log.peak_in_flight)
    }

    /// The keys of `rule` seen since the last reset, sorted.
    pub(crate) fn keys(&self, rule: ResourceRule) -> Vec<String> {
        let mut keys: Vec<String> = self
            .keys
            .get(&rule)
            .map(|k| {
                k.iter()
                    .filter(|(_, log)| !log.history.is_empty())
                    .map(|(key, _)| key.clone())
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        keys
    }

    fn log(&self, rule: ResourceRule, key: &str) -> Option<&KeyLog> {
        self.keys.get(&rule)?.get(key)
    }

    /// Forget the histories and peaks (not the live windows or the calls in
    /// flight); keys with nothing live are dropped.
    pub(crate) fn clear_history(&mut self, now: Instant) {
        for (rule, keys) in &mut self.keys {
            let longest = rule
                .windows()
                .iter()
                .map(|w| w.1)
                .max()
                .unwrap_or(Duration::ZERO);
            keys.retain(|_, log| {
                log.history = Vec::new();
                log.peak_in_flight = log.in_flight;
                let live = log
                    .recent
                    .back()
                    .is_some_and(|&t| now.duration_since(t) < longest);
                live || log.in_flight > 0
            });
        }
    }
}

/// A call holding an in-flight slot; dropping it (once answered, or when the
/// client went away) frees the slot.
#[derive(Debug)]
pub(crate) struct InFlight {
    shared: Arc<Shared>,
    rule: ResourceRule,
    key: String,
}

impl InFlight {
    /// Take a slot at (`rule`, `key`).
    pub(crate) fn take(shared: &Arc<Shared>, rule: ResourceRule, key: String) -> InFlight {
        lock(&shared.resources).take_slot(rule, &key);
        InFlight {
            shared: Arc::clone(shared),
            rule,
            key,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.shared.resources).release(self.rule, &self.key);
    }
}

/// What identifies a call for the resource key.
pub(crate) struct CallSite<'a> {
    pub(crate) endpoint: &'static Endpoint,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) body: &'a [u8],
    pub(crate) app_id: &'a str,
    pub(crate) tenant_key: Option<&'a str>,
}

/// The key of `rule` for this call, or `None` when the call does not carry
/// it (e.g. a message without a string `receive_id`): then it is not
/// counted.
pub(crate) fn key_of(rule: ResourceRule, call: &CallSite<'_>) -> Option<String> {
    let param = |name: &str| {
        call.endpoint
            .param(call.path, name)
            .filter(|v| !v.is_empty())
    };
    match rule {
        ResourceRule::MessageReceiver => {
            let body: Value = serde_json::from_slice(call.body).ok()?;
            let id = body.get("receive_id")?.as_str()?;
            let kind = query_param(call.query, "receive_id_type").unwrap_or("");
            Some(format!("{kind}:{id}"))
        }
        ResourceRule::ReplyMessage | ResourceRule::CardUpdate => {
            param("message_id").map(str::to_owned)
        }
        ResourceRule::DocxDocument => param("document_id").map(str::to_owned),
        ResourceRule::BitableTable => {
            Some(format!("{}/{}", param("app_token")?, param("table_id")?))
        }
        ResourceRule::DriveUpload => Some(match call.tenant_key {
            None => format!("{} {}", call.app_id, call.endpoint.template),
            Some(t) => format!("{}@{t} {}", call.app_id, call.endpoint.template),
        }),
    }
}

/// The raw value of `name` in a query string.
pub(crate) fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn windows_then_concurrency() {
        let mut book = ResourceBook::default();
        let t0 = Instant::now();
        let rule = ResourceRule::DriveUpload;
        assert_eq!(book.arrive(rule, "k", t0), None);
        book.take_slot(rule, "k");
        // A second call while the first is in flight: busy.
        assert_eq!(book.arrive(rule, "k", t0), Some(Refusal::Busy));
        assert_eq!(book.arrive(rule, "other", t0), None);
        book.release(rule, "k");
        for _ in 0..3 {
            assert_eq!(book.arrive(rule, "k", t0), None);
        }
        // The sixth arrival in the second is over 5/s, whatever is in flight.
        assert!(matches!(
            book.arrive(rule, "k", t0),
            Some(Refusal::Over(Over { limit: 5, .. }))
        ));
        assert_eq!(book.max_in_any_window(rule, "k", SEC), 6);
        assert_eq!(book.peak_in_flight(rule, "k"), 1);
        assert_eq!(book.keys(rule), ["k", "other"]);
        assert!(book.keys(ResourceRule::CardUpdate).is_empty());

        // A later arrival passes; the history goes, live keys stay.
        assert_eq!(book.arrive(rule, "k", t0 + SEC), None);
        book.clear_history(t0 + 2 * SEC);
        assert_eq!(book.max_in_any_window(rule, "k", SEC), 0);
        assert!(book.keys(rule).is_empty());
        // The day window is live for a day: the key was kept.
        assert!(book.keys[&rule].contains_key("k"));
    }

    #[test]
    fn keys_come_from_the_body_query_or_path() {
        let ep = |name| catalog::resolve(name).expect(name);
        let site = |endpoint, path, query, body: &'static str| CallSite {
            endpoint,
            path,
            query,
            body: body.as_bytes(),
            app_id: "cli_a",
            tenant_key: None,
        };
        let send = ep("POST /open-apis/im/v1/messages");
        let call = site(
            send,
            "/open-apis/im/v1/messages",
            Some("x=1&receive_id_type=chat_id"),
            r#"{"receive_id":"oc_1","msg_type":"text"}"#,
        );
        assert_eq!(
            key_of(ResourceRule::MessageReceiver, &call).as_deref(),
            Some("chat_id:oc_1")
        );
        let no_id = site(
            send,
            "/open-apis/im/v1/messages",
            None,
            r#"{"receive_id":7}"#,
        );
        assert_eq!(key_of(ResourceRule::MessageReceiver, &no_id), None);

        let records =
            ep("PUT /open-apis/bitable/v1/apps/:app_token/tables/:table_id/records/:record_id");
        let call = site(
            records,
            "/open-apis/bitable/v1/apps/bas/tables/tbl/records/r1",
            None,
            "",
        );
        assert_eq!(
            key_of(ResourceRule::BitableTable, &call).as_deref(),
            Some("bas/tbl")
        );
        let upload = ep("POST /open-apis/drive/v1/files/upload_all");
        let mut call = site(upload, "/open-apis/drive/v1/files/upload_all", None, "");
        assert_eq!(
            key_of(ResourceRule::DriveUpload, &call).as_deref(),
            Some("cli_a /open-apis/drive/v1/files/upload_all")
        );
        call.tenant_key = Some("t1");
        assert_eq!(
            key_of(ResourceRule::DriveUpload, &call).as_deref(),
            Some("cli_a@t1 /open-apis/drive/v1/files/upload_all")
        );
        assert_eq!(query_param(Some("a=1&b"), "b"), Some(""));
        assert_eq!(query_param(Some("ab=1"), "a"), None);
    }
}
