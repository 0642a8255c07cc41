//! Quotas per (app, endpoint) for self-built apps and per (app, tenant,
//! endpoint) for store apps' tenant tokens, counted in sliding windows (the
//! only safe reading of Feishu's quota rule is "never more than N in ANY
//! interval of W"), for every endpoint of the catalog.
//!
//! Each endpoint has its effective windows ([`effective_windows`]): the
//! catalog's, unless the config replaces them. A key's logs are created on
//! its first arrival, never for the whole catalog up front. Each key keeps
//! two logs of arrival instants:
//! - `recent`, pruned to the endpoint's longest window, answers the quota
//!   check with two binary searches;
//! - `history`, kept until `reset_records` (capped), answers
//!   `max_in_any_window` for any window a test asks about.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::catalog::{self, Limits, ResourceRule};
use super::SimConfig;

/// Arrivals kept per key for `max_in_any_window`; past this the oldest
/// quarter is dropped, so a long-running demo stays bounded (16 MiB per key).
const HISTORY_CAP: usize = 1 << 20;

/// The windows the fake enforces at each endpoint of the catalog, by index:
///
/// 1. [`SimConfig::route_limits`] for the endpoints it names;
/// 2. else [`SimConfig::limits`], when not empty, for every endpoint with
///    documented windows;
/// 3. else the documented windows; for `special` endpoints the hidden
///    [`SimConfig::special_limits`], except drive uploads, whose pages state
///    their real limits (enforced as [`ResourceRule::DriveUpload`]);
///    endpoints with no stated limit get none.
pub(crate) fn effective_windows(cfg: &SimConfig) -> Result<Vec<Vec<(u32, Duration)>>, String> {
    let mut windows: Vec<Vec<(u32, Duration)>> = catalog::endpoints()
        .iter()
        .map(|ep| match &ep.limits {
            Limits::Windows(_) if !cfg.limits.is_empty() => cfg.limits.clone(),
            Limits::Windows(w) => w.clone(),
            Limits::Special if ep.resource == Some(ResourceRule::DriveUpload) => Vec::new(),
            Limits::Special => cfg.special_limits.clone(),
            Limits::Unstated => Vec::new(),
        })
        .collect();
    for (name, w) in &cfg.route_limits {
        let ep = catalog::resolve(name).map_err(|e| format!("route_limits: {e}"))?;
        windows[ep.index] = w.clone();
    }
    Ok(windows)
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

/// One endpoint's windows and the longest of them.
#[derive(Debug)]
struct Windows {
    windows: Vec<(u32, Duration)>,
    longest: Duration,
}

/// The arrival logs of every key.
#[derive(Debug)]
pub(crate) struct QuotaBook {
    /// By catalog index.
    windows: Vec<Windows>,
    /// app → tenant key (`""` for a self-built app's own quota) → endpoint
    /// index. Nested so that a hit needs no allocation.
    logs: HashMap<String, HashMap<String, HashMap<usize, KeyLog>>>,
}

impl QuotaBook {
    /// A book enforcing `windows[i]` at endpoint `i`.
    pub(crate) fn new(windows: Vec<Vec<(u32, Duration)>>) -> Self {
        let windows = windows
            .into_iter()
            .map(|windows| Windows {
                longest: windows.iter().map(|w| w.1).max().unwrap_or(Duration::ZERO),
                windows,
            })
            .collect();
        QuotaBook {
            windows,
            logs: HashMap::new(),
        }
    }

    /// The windows enforced at endpoint `ep`.
    pub(crate) fn windows(&self, ep: usize) -> &[(u32, Duration)] {
        self.windows.get(ep).map_or(&[], |w| &w.windows)
    }

    /// Log an arrival of `app` (for `tenant`, with a store app's tenant
    /// token) at endpoint `ep` now, and tell whether it went over a window
    /// (the one that frees last, when several). The arrival is logged either
    /// way: Feishu counts throttled calls too.
    pub(crate) fn arrive(
        &mut self,
        app: &str,
        tenant: Option<&str>,
        ep: usize,
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
        let log = logs.entry(ep).or_default();
        let Windows { windows, longest } = self.windows.get(ep)?;
        slide(&mut log.recent, *longest, now);
        if log.history.len() >= HISTORY_CAP {
            log.history.drain(..HISTORY_CAP / 4);
        }
        log.history.push(*log.recent.back().expect("just pushed"));
        over(&log.recent, windows)
    }

    /// The most arrivals of the key within any interval of length `window`.
    pub(crate) fn max_in_any_window(
        &self,
        app: &str,
        tenant: Option<&str>,
        ep: usize,
        window: Duration,
    ) -> usize {
        self.logs
            .get(app)
            .and_then(|tenants| tenants.get(tenant.unwrap_or("")))
            .and_then(|logs| logs.get(&ep))
            .map_or(0, |log| max_in_any_window(&log.history, window))
    }

    /// Forget the histories (not the live windows).
    pub(crate) fn clear_history(&mut self) {
        for logs in self.logs.values_mut().flat_map(HashMap::values_mut) {
            for log in logs.values_mut() {
                log.history = Vec::new();
            }
        }
    }
}

/// Push `now` on `recent` after dropping the arrivals older than `longest`.
/// The clock is read under a lock by the callers, so arrivals are in order;
/// this guards against a caller that did not.
pub(crate) fn slide(recent: &mut VecDeque<Instant>, longest: Duration, now: Instant) {
    let now = recent.back().map_or(now, |&last| now.max(last));
    while recent
        .front()
        .is_some_and(|&t| now.duration_since(t) >= longest)
    {
        recent.pop_front();
    }
    recent.push_back(now);
}

/// Whether the arrivals in `recent` (the newest last) go over one of
/// `windows`: the one that frees last, when several.
pub(crate) fn over(recent: &VecDeque<Instant>, windows: &[(u32, Duration)]) -> Option<Over> {
    let &now = recent.back()?;
    let mut worst: Option<Over> = None;
    for &(limit, window) in windows {
        // Arrivals in (now - window, now], the new one included.
        let first = recent.partition_point(|&t| now.duration_since(t) >= window);
        let count = recent.len() - first;
        if count <= limit as usize {
            continue;
        }
        // For the next arrival to pass, the oldest `count - limit + 1`
        // arrivals in the window must have left it.
        let leaving = recent.get(first + (count - limit as usize));
        let frees_at = leaving.map_or(now, |&t| t) + window;
        let wait = frees_at.saturating_duration_since(now);
        let reset_secs = ceil_secs(wait).max(1);
        if worst.is_none_or(|w| reset_secs > w.reset_secs) {
            worst = Some(Over { limit, reset_secs });
        }
    }
    worst
}

/// The most instants of `history` (in order) within any interval of length
/// `window`.
pub(crate) fn max_in_any_window(history: &[Instant], window: Duration) -> usize {
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

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);
    const PUT: usize = 0;
    const DELETE: usize = 1;
    const CHAT: usize = 2;

    /// A book with the same windows at three endpoints.
    fn book(windows: &[(u32, Duration)]) -> QuotaBook {
        QuotaBook::new(vec![windows.to_vec(); 3])
    }

    #[test]
    fn sixth_call_in_a_second_is_over_with_reset() {
        let mut book = book(&[(5, SEC)]);
        let t0 = Instant::now();
        for i in 0..5 {
            let at = t0 + Duration::from_millis(100 * i);
            assert_eq!(book.arrive("a", None, PUT, at), None);
        }
        let at = t0 + Duration::from_millis(500);
        let over = book.arrive("a", None, PUT, at);
        // The second arrival (t0 + 100 ms) must leave: at t0 + 1.1 s.
        assert_eq!(
            over,
            Some(Over {
                limit: 5,
                reset_secs: 1
            })
        );
        // Other keys are independent.
        assert_eq!(book.arrive("a", None, DELETE, at), None);
        assert_eq!(book.arrive("b", None, PUT, at), None);
        // Throttled arrivals count: at t0 + 1 s the window (t0, t0+1s] holds
        // 5 arrivals, this is the sixth.
        assert!(book.arrive("a", None, PUT, t0 + SEC).is_some());
        assert_eq!(book.max_in_any_window("a", None, PUT, SEC), 6);
        assert_eq!(
            book.max_in_any_window("a", None, PUT, Duration::from_millis(150)),
            2
        );
        assert_eq!(book.max_in_any_window("a", None, CHAT, SEC), 0);
    }

    #[test]
    fn tenants_of_a_store_app_have_their_own_keys() {
        let mut book = book(&[(1, SEC)]);
        let t0 = Instant::now();
        assert_eq!(book.arrive("s", Some("t1"), PUT, t0), None);
        assert_eq!(book.arrive("s", Some("t2"), PUT, t0), None);
        assert_eq!(book.arrive("s", None, PUT, t0), None);
        assert!(book.arrive("s", Some("t1"), PUT, t0).is_some());
        assert_eq!(book.max_in_any_window("s", Some("t1"), PUT, SEC), 2);
        assert_eq!(book.max_in_any_window("s", Some("t2"), PUT, SEC), 1);
        assert_eq!(book.max_in_any_window("s", None, PUT, SEC), 1);
        assert_eq!(book.max_in_any_window("s", Some("t3"), PUT, SEC), 0);
    }

    #[test]
    fn reports_the_window_that_frees_last() {
        let mut book = book(&[(1, SEC), (3, 60 * SEC)]);
        let t0 = Instant::now();
        assert_eq!(book.arrive("a", None, CHAT, t0), None);
        assert_eq!(book.arrive("a", None, CHAT, t0 + 2 * SEC), None);
        assert_eq!(book.arrive("a", None, CHAT, t0 + 4 * SEC), None);
        let over = book.arrive("a", None, CHAT, t0 + 4 * SEC);
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
    fn each_endpoint_has_its_own_windows_and_none_means_none() {
        let mut book = QuotaBook::new(vec![vec![(1, SEC)], vec![(3, SEC)], vec![]]);
        let t0 = Instant::now();
        let over = |book: &mut QuotaBook, ep| {
            (0..10)
                .filter(|_| book.arrive("a", None, ep, t0).is_some())
                .count()
        };
        assert_eq!(over(&mut book, PUT), 9);
        assert_eq!(over(&mut book, DELETE), 7);
        assert_eq!(over(&mut book, CHAT), 0);
        // Arrivals are logged even with no window.
        assert_eq!(book.max_in_any_window("a", None, CHAT, SEC), 10);
        assert_eq!(book.windows(DELETE), [(3, SEC)]);
        assert_eq!(book.windows(99), []);
        // State is made on first use only.
        assert_eq!(book.logs["a"][""].len(), 3);
        assert!(!book.logs.contains_key("b"));
    }

    #[test]
    fn recent_log_is_pruned_to_the_longest_window() {
        let mut book = book(&[(100, SEC)]);
        let t0 = Instant::now();
        for i in 0..50 {
            book.arrive("a", None, PUT, t0 + i * SEC);
        }
        let log = &book.logs["a"][""][&PUT];
        assert_eq!(log.recent.len(), 1);
        assert_eq!(log.history.len(), 50);
        book.clear_history();
        assert_eq!(book.max_in_any_window("a", None, PUT, SEC), 0);
    }

    #[test]
    fn effective_windows_follow_the_config() {
        let put = catalog::resolve("put_top_notice").expect("put").index;
        let special = catalog::resolve("GET /open-apis/admin/v1/admin_dept_stats")
            .expect("special")
            .index;
        let upload = catalog::resolve("POST /open-apis/drive/v1/files/upload_all")
            .expect("upload")
            .index;
        let unstated = catalog::resolve("GET /open-apis/acs/v1/devices")
            .expect("unstated")
            .index;
        let search = catalog::resolve("GET /open-apis/im/v1/chats/search")
            .expect("search")
            .index;

        let documented = effective_windows(&SimConfig::default()).expect("default");
        assert_eq!(documented.len(), catalog::endpoints().len());
        assert_eq!(documented[put], [(1000, 60 * SEC), (50, SEC)]);
        assert_eq!(documented[special], [(5, SEC)]);
        assert!(documented[upload].is_empty());
        assert!(documented[unstated].is_empty());

        let cfg = SimConfig {
            limits: vec![(2, SEC)],
            special_limits: vec![(1, SEC)],
            route_limits: vec![("GET /open-apis/im/v1/chats/search".into(), vec![(7, SEC)])],
            ..SimConfig::default()
        };
        let w = effective_windows(&cfg).expect("config");
        assert_eq!(w[put], [(2, SEC)]);
        assert_eq!(w[special], [(1, SEC)]);
        assert_eq!(w[search], [(7, SEC)]);
        assert!(
            w[unstated].is_empty(),
            "limits covers documented windows only"
        );

        let bad = SimConfig {
            route_limits: vec![("POST /open-apis/nowhere".into(), vec![])],
            ..SimConfig::default()
        };
        let err = effective_windows(&bad).expect_err("unknown route");
        assert!(
            err.contains("route_limits") && err.contains("nowhere"),
            "{err}"
        );
    }
}
