//! Quotas per (app, endpoint) for self-built apps and per (app, tenant,
//! endpoint) for store apps' tenant tokens, counted in sliding windows (the
//! only safe reading of Feishu's quota rule is "never more than N in ANY
//! interval of W").
//!
//! Each key keeps two logs of arrival instants:
//! - `recent`, pruned to the largest configured window, answers the quota
//!   check with two binary searches;
//! - `history`, kept until `reset_records` (capped), answers
//!   `max_in_any_window` for any window a test asks about.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// Arrivals kept per key for `max_in_any_window`; past this the oldest
/// quarter is dropped, so a long-running demo stays bounded (16 MiB per key).
const HISTORY_CAP: usize = 1 << 20;

/// The endpoints that have their own quota key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    PutTopNotice,
    DeleteTopNotice,
    GetChat,
}

impl Endpoint {
    const ALL: [Endpoint; 3] = [
        Endpoint::PutTopNotice,
        Endpoint::DeleteTopNotice,
        Endpoint::GetChat,
    ];

    /// The name used by `max_in_any_window` and in recorded requests.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Endpoint::PutTopNotice => "put_top_notice",
            Endpoint::DeleteTopNotice => "delete_top_notice",
            Endpoint::GetChat => "get_chat",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn from_name(name: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// A request that went over a window: what to tell the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Over {
    /// `x-ogw-ratelimit-limit`: the cap of the window.
    pub(crate) limit: u32,
    /// `x-ogw-ratelimit-reset`: whole seconds until a request would pass that
    /// window again, at least 1.
    pub(crate) reset_secs: u64,
}

#[derive(Debug, Default)]
struct KeyLog {
    recent: VecDeque<Instant>,
    history: Vec<Instant>,
}

/// The arrival logs of every key.
#[derive(Debug)]
pub(crate) struct QuotaBook {
    limits: Vec<(u32, Duration)>,
    longest: Duration,
    /// app → tenant key (`""` for a self-built app's own quota) → endpoint.
    /// Nested so that a hit needs no allocation.
    logs: HashMap<String, HashMap<String, [KeyLog; 3]>>,
}

impl QuotaBook {
    pub(crate) fn new(limits: Vec<(u32, Duration)>) -> Self {
        let longest = limits.iter().map(|l| l.1).max().unwrap_or(Duration::ZERO);
        QuotaBook {
            limits,
            longest,
            logs: HashMap::new(),
        }
    }

    /// The first configured window, for injected 99991400 answers.
    pub(crate) fn first_limit(&self) -> Option<(u32, Duration)> {
        self.limits.first().copied()
    }

    /// Log an arrival of `app` (for `tenant`, with a store app's tenant
    /// token) at `ep` now, and tell whether it went over a window (the one
    /// that frees last, when several). The arrival is logged either way:
    /// Feishu counts throttled calls too.
    pub(crate) fn arrive(
        &mut self,
        app: &str,
        tenant: Option<&str>,
        ep: Endpoint,
        now: Instant,
    ) -> Option<Over> {
        let tenants = match self.logs.get_mut(app) {
            Some(tenants) => tenants,
            None => self.logs.entry(app.to_owned()).or_default(),
        };
        let tenant = tenant.unwrap_or("");
        let logs = match tenants.get_mut(tenant) {
            Some(logs) => logs,
            None => tenants.entry(tenant.to_owned()).or_default(),
        };
        let log = &mut logs[ep.index()];

        // The clock is read under the lock by the caller, so arrivals are in
        // order; this guards against a caller that did not.
        let now = log.recent.back().map_or(now, |&last| now.max(last));
        while log
            .recent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.longest)
        {
            log.recent.pop_front();
        }
        log.recent.push_back(now);
        if log.history.len() >= HISTORY_CAP {
            log.history.drain(..HISTORY_CAP / 4);
        }
        log.history.push(now);

        let mut worst: Option<Over> = None;
        for &(limit, window) in &self.limits {
            // Arrivals in (now - window, now], the new one included.
            let first = log
                .recent
                .partition_point(|&t| now.duration_since(t) >= window);
            let count = log.recent.len() - first;
            if count <= limit as usize {
                continue;
            }
            // For the next arrival to pass, the oldest `count - limit + 1`
            // arrivals in the window must have left it.
            let leaving = log.recent.get(first + (count - limit as usize));
            let frees_at = leaving.map_or(now, |&t| t) + window;
            let wait = frees_at.saturating_duration_since(now);
            let reset_secs = ceil_secs(wait).max(1);
            if worst.is_none_or(|w| reset_secs > w.reset_secs) {
                worst = Some(Over { limit, reset_secs });
            }
        }
        worst
    }

    /// The most arrivals of the key within any interval of length `window`.
    pub(crate) fn max_in_any_window(
        &self,
        app: &str,
        tenant: Option<&str>,
        endpoint: &str,
        window: Duration,
    ) -> usize {
        let logs = self
            .logs
            .get(app)
            .and_then(|tenants| tenants.get(tenant.unwrap_or("")));
        let (Some(logs), Some(ep)) = (logs, Endpoint::from_name(endpoint)) else {
            return 0;
        };
        let history = &logs[ep.index()].history;
        // Two pointers: for each arrival `end`, the window ending there holds
        // the arrivals after `start`.
        let mut best = 0;
        let mut start = 0;
        for (end, &t) in history.iter().enumerate() {
            while t.duration_since(history[start]) >= window {
                start += 1;
            }
            best = best.max(end + 1 - start);
        }
        best
    }

    /// Forget the histories (not the live windows).
    pub(crate) fn clear_history(&mut self) {
        for logs in self.logs.values_mut().flat_map(HashMap::values_mut) {
            for log in logs.iter_mut() {
                log.history = Vec::new();
            }
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn sixth_call_in_a_second_is_over_with_reset() {
        let mut book = QuotaBook::new(vec![(5, SEC)]);
        let t0 = Instant::now();
        for i in 0..5 {
            let at = t0 + Duration::from_millis(100 * i);
            assert_eq!(book.arrive("a", None, Endpoint::PutTopNotice, at), None);
        }
        let at = t0 + Duration::from_millis(500);
        let over = book.arrive("a", None, Endpoint::PutTopNotice, at);
        // The second arrival (t0 + 100 ms) must leave: at t0 + 1.1 s.
        assert_eq!(
            over,
            Some(Over {
                limit: 5,
                reset_secs: 1
            })
        );
        // Other keys are independent.
        assert_eq!(book.arrive("a", None, Endpoint::DeleteTopNotice, at), None);
        assert_eq!(book.arrive("b", None, Endpoint::PutTopNotice, at), None);
        // Throttled arrivals count: at t0 + 1 s the window (t0, t0+1s] holds
        // 5 arrivals, this is the sixth.
        assert!(book
            .arrive("a", None, Endpoint::PutTopNotice, t0 + SEC)
            .is_some());
        assert_eq!(book.max_in_any_window("a", None, "put_top_notice", SEC), 6);
        assert_eq!(
            book.max_in_any_window("a", None, "put_top_notice", Duration::from_millis(150)),
            2
        );
        assert_eq!(book.max_in_any_window("a", None, "nope", SEC), 0);
    }

    #[test]
    fn tenants_of_a_store_app_have_their_own_keys() {
        let mut book = QuotaBook::new(vec![(1, SEC)]);
        let t0 = Instant::now();
        let ep = Endpoint::PutTopNotice;
        assert_eq!(book.arrive("s", Some("t1"), ep, t0), None);
        assert_eq!(book.arrive("s", Some("t2"), ep, t0), None);
        assert_eq!(book.arrive("s", None, ep, t0), None);
        assert!(book.arrive("s", Some("t1"), ep, t0).is_some());
        assert_eq!(
            book.max_in_any_window("s", Some("t1"), "put_top_notice", SEC),
            2
        );
        assert_eq!(
            book.max_in_any_window("s", Some("t2"), "put_top_notice", SEC),
            1
        );
        assert_eq!(book.max_in_any_window("s", None, "put_top_notice", SEC), 1);
        assert_eq!(
            book.max_in_any_window("s", Some("t3"), "put_top_notice", SEC),
            0
        );
    }

    #[test]
    fn reports_the_window_that_frees_last() {
        let mut book = QuotaBook::new(vec![(1, SEC), (3, 60 * SEC)]);
        let t0 = Instant::now();
        assert_eq!(book.arrive("a", None, Endpoint::GetChat, t0), None);
        assert_eq!(
            book.arrive("a", None, Endpoint::GetChat, t0 + 2 * SEC),
            None
        );
        assert_eq!(
            book.arrive("a", None, Endpoint::GetChat, t0 + 4 * SEC),
            None
        );
        let over = book.arrive("a", None, Endpoint::GetChat, t0 + 4 * SEC);
        // Both windows are over: the second one frees at t0 + 5 s, the
        // minute one at t0 + 62 s.
        assert_eq!(
            over,
            Some(Over {
                limit: 3,
                reset_secs: 58
            })
        );
    }

    #[test]
    fn recent_log_is_pruned_to_the_longest_window() {
        let mut book = QuotaBook::new(vec![(100, SEC)]);
        let t0 = Instant::now();
        for i in 0..50 {
            book.arrive("a", None, Endpoint::PutTopNotice, t0 + i * SEC);
        }
        let log = &book.logs["a"][""][Endpoint::PutTopNotice.index()];
        assert_eq!(log.recent.len(), 1);
        assert_eq!(log.history.len(), 50);
        book.clear_history();
        assert_eq!(book.max_in_any_window("a", None, "put_top_notice", SEC), 0);
    }
}
