//! State shared by the server task and the [`SimFeishu`](super::SimFeishu)
//! handle.
//!
//! Each concern has its own std `Mutex`, held only for a few map operations
//! and never across an `.await`; counters and knobs read on every request are
//! atomics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::StatusCode;
use tokio::task::JoinSet;
use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::catalog;
use super::quota::{effective_windows, QuotaBook};
use super::resource::ResourceBook;
use super::store::StoreBook;
use super::tokens::TokenBook;
use super::upload::UploadRecord;
use super::{
    FaultSpan, PushedEvent, QuotaMode, RecordedRequest, ResourceViolation, SimApp, SimConfig,
    StoreCall, TokenCall,
};

/// Lock a mutex, carrying on after a panic elsewhere: the data is records and
/// counters, always left consistent between statements.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Pending faults, set by the handle and consumed by the server.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Token calls still to fail with HTTP 500.
    pub(crate) fail_token: AtomicU32,
    /// Requests still to answer by closing the connection.
    pub(crate) drop_conns: AtomicU32,
    /// Business requests still to answer with `injected`.
    inject_left: AtomicU32,
    /// The code and status of injected answers.
    injected: Mutex<(i64, StatusCode)>,
    /// Business requests still to answer as Feishu's edge would, without JSON.
    edge_left: AtomicU32,
    /// The status of those answers.
    edge_status: Mutex<StatusCode>,
}

/// Take one unit from a pending-fault counter, if any is left.
fn take_one(counter: &AtomicU32) -> bool {
    // Fast path for the common case: no fault pending, no write.
    if counter.load(Ordering::Relaxed) == 0 {
        return false;
    }
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl Faults {
    pub(crate) fn take_token_failure(&self) -> bool {
        take_one(&self.fail_token)
    }

    pub(crate) fn take_drop(&self) -> bool {
        take_one(&self.drop_conns)
    }

    pub(crate) fn inject(&self, code: i64, status: StatusCode, n: u32) {
        *lock(&self.injected) = (code, status);
        self.inject_left.store(n, Ordering::SeqCst);
    }

    pub(crate) fn inject_edge(&self, status: StatusCode, n: u32) {
        *lock(&self.edge_status) = status;
        self.edge_left.store(n, Ordering::SeqCst);
    }

    pub(crate) fn take_edge(&self) -> Option<StatusCode> {
        take_one(&self.edge_left).then(|| *lock(&self.edge_status))
    }

    pub(crate) fn take_injected(&self) -> Option<(i64, StatusCode)> {
        if take_one(&self.inject_left) {
            Some(*lock(&self.injected))
        } else {
            None
        }
    }
}

/// A throttle answer set on an endpoint by [`SimFeishu::throttle`](super::SimFeishu::throttle).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Throttle {
    pub(crate) code: i64,
    pub(crate) status: StatusCode,
    pub(crate) reset_secs: Option<u64>,
    /// Calls still to answer, for [`FaultSpan::Calls`].
    left: Option<u32>,
    /// Until when, for [`FaultSpan::For`].
    until: Option<Instant>,
}

/// The throttle answers set per endpoint (by catalog index).
#[derive(Debug, Default)]
pub(crate) struct Throttles {
    /// How many endpoints have one: a request reads this, not the map, when
    /// none is set.
    set: AtomicUsize,
    by_endpoint: Mutex<HashMap<usize, Throttle>>,
}

impl Throttles {
    pub(crate) fn set(
        &self,
        ep: usize,
        code: i64,
        status: StatusCode,
        reset_secs: Option<u64>,
        span: FaultSpan,
        now: Instant,
    ) {
        let (left, until) = match span {
            FaultSpan::Calls(n) => (Some(n), None),
            FaultSpan::For(d) => (None, Some(now + d)),
        };
        let mut map = lock(&self.by_endpoint);
        if left == Some(0) {
            map.remove(&ep);
        } else {
            let throttle = Throttle {
                code,
                status,
                reset_secs,
                left,
                until,
            };
            map.insert(ep, throttle);
        }
        self.set.store(map.len(), Ordering::SeqCst);
    }

    pub(crate) fn clear(&self) {
        let mut map = lock(&self.by_endpoint);
        map.clear();
        self.set.store(0, Ordering::SeqCst);
    }

    /// The throttle answer for a call at `ep` now, if one is set and still
    /// running; a call consumes one of [`FaultSpan::Calls`].
    pub(crate) fn take(&self, ep: usize, now: Instant) -> Option<Throttle> {
        if self.set.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut map = lock(&self.by_endpoint);
        let throttle = map.get_mut(&ep)?;
        let answer = *throttle;
        let done = match (&mut throttle.left, throttle.until) {
            (Some(left), _) => {
                *left -= 1;
                *left == 0
            }
            (None, Some(until)) if now >= until => {
                map.remove(&ep);
                self.set.store(map.len(), Ordering::SeqCst);
                return None;
            }
            _ => false,
        };
        if done {
            map.remove(&ep);
            self.set.store(map.len(), Ordering::SeqCst);
        }
        Some(answer)
    }
}

/// Everything the server and the handle share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Known apps and their secrets.
    pub(crate) apps: Vec<SimApp>,
    /// HTTP status sent with 99991663.
    pub(crate) token_invalid_status: StatusCode,
    /// Whether business requests are kept for `requests()`.
    pub(crate) record_requests: bool,
    /// Business-answer latency in nanoseconds.
    latency_ns: AtomicU64,
    /// Token-call latency in nanoseconds.
    token_latency_ns: AtomicU64,
    /// OTLP trace exports received (`POST /v1/traces`), and their bytes.
    pub(crate) otlp_exports: AtomicU64,
    pub(crate) otlp_bytes: AtomicU64,
    /// A [`QuotaMode`] as `u8`.
    pub(crate) quota_mode: AtomicU8,
    pub(crate) faults: Faults,
    pub(crate) tokens: Mutex<TokenBook>,
    pub(crate) quota: Mutex<QuotaBook>,
    /// Per-resource logs and calls in flight.
    pub(crate) resources: Mutex<ResourceBook>,
    /// How long an admitted bitable write or drive upload stays in flight.
    pub(crate) write_time: Duration,
    /// Throttle answers set per endpoint.
    pub(crate) throttles: Throttles,
    /// Calls with a valid token per endpoint (catalog index).
    pub(crate) endpoint_arrivals: Box<[AtomicU64]>,
    /// Violations per endpoint (catalog index).
    pub(crate) endpoint_violations: Box<[AtomicU64]>,
    pub(crate) resource_violations: Mutex<Vec<ResourceViolation>>,
    /// The monthly budget per self-built app.
    pub(crate) monthly_budget: Option<u64>,
    /// Counted calls per self-built app.
    pub(crate) budget_used: Mutex<HashMap<String, u64>>,
    /// Calls answered 99991403.
    pub(crate) budget_refused: AtomicU64,
    pub(crate) requests: Mutex<Vec<RecordedRequest>>,
    pub(crate) token_calls: Mutex<Vec<TokenCall>>,
    pub(crate) violations: AtomicU64,
    pub(crate) expired_uses: AtomicU64,
    /// Store apps: tickets, tenants, event URLs.
    pub(crate) store: Mutex<StoreBook>,
    /// The code answered for a stale or unknown app_ticket.
    pub(crate) invalid_ticket_code: i64,
    /// The code answered for a tenant that did not install the app.
    pub(crate) unknown_tenant_code: i64,
    /// Delay between a resend call and its push, in nanoseconds.
    ticket_push_delay_ns: AtomicU64,
    /// The client that pushes events to event URLs.
    pub(crate) push_client: PushClient,
    /// Pushes scheduled by resend calls; aborted when the fake stops.
    pub(crate) push_tasks: Mutex<JoinSet<()>>,
    pub(crate) store_calls: Mutex<Vec<StoreCall>>,
    pub(crate) pushed: Mutex<Vec<PushedEvent>>,
    pub(crate) uploads: Mutex<Vec<UploadRecord>>,
    /// The long connection: tickets, connections, pushes, acks (ws.rs).
    pub(crate) long_conns: super::ws::LongConns,
}

impl Shared {
    /// The shared state for `cfg`; the error names a config value the fake
    /// cannot use.
    pub(crate) fn new(cfg: SimConfig) -> Result<Self, String> {
        let windows = effective_windows(&cfg)?;
        let counters = || {
            (0..catalog::endpoints().len())
                .map(|_| AtomicU64::new(0))
                .collect::<Box<[_]>>()
        };
        let shared = Shared {
            apps: cfg.apps,
            token_invalid_status: cfg.token_invalid_status,
            record_requests: cfg.record_requests,
            latency_ns: AtomicU64::new(0),
            token_latency_ns: AtomicU64::new(0),
            otlp_exports: AtomicU64::new(0),
            otlp_bytes: AtomicU64::new(0),
            quota_mode: AtomicU8::new(cfg.quota.to_u8()),
            faults: Faults::default(),
            tokens: Mutex::new(TokenBook::new(cfg.token_lifetime, cfg.same_token_threshold)),
            quota: Mutex::new(QuotaBook::new(windows)),
            resources: Mutex::new(ResourceBook::default()),
            write_time: cfg.write_time,
            throttles: Throttles::default(),
            endpoint_arrivals: counters(),
            endpoint_violations: counters(),
            resource_violations: Mutex::new(Vec::new()),
            monthly_budget: cfg.monthly_budget,
            budget_used: Mutex::new(HashMap::new()),
            budget_refused: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            token_calls: Mutex::new(Vec::new()),
            violations: AtomicU64::new(0),
            expired_uses: AtomicU64::new(0),
            store: Mutex::new(StoreBook::new(cfg.store_apps)),
            invalid_ticket_code: cfg.invalid_ticket_code,
            unknown_tenant_code: cfg.unknown_tenant_code,
            ticket_push_delay_ns: AtomicU64::new(0),
            push_client: push_client(),
            push_tasks: Mutex::new(JoinSet::new()),
            store_calls: Mutex::new(Vec::new()),
            pushed: Mutex::new(Vec::new()),
            uploads: Mutex::new(Vec::new()),
            long_conns: Default::default(),
        };
        shared.set_latency(cfg.latency);
        shared.set_ticket_push_delay(cfg.ticket_push_delay);
        Ok(shared)
    }

    pub(crate) fn set_ticket_push_delay(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.ticket_push_delay_ns.store(ns, Ordering::Relaxed);
    }

    pub(crate) fn ticket_push_delay(&self) -> Duration {
        Duration::from_nanos(self.ticket_push_delay_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn set_latency(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.latency_ns.store(ns, Ordering::Relaxed);
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn set_token_latency(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.token_latency_ns.store(ns, Ordering::Relaxed);
    }

    pub(crate) fn token_latency(&self) -> Duration {
        Duration::from_nanos(self.token_latency_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn quota_mode(&self) -> QuotaMode {
        QuotaMode::from_u8(self.quota_mode.load(Ordering::Relaxed))
    }

    /// Whether `app_id` / `app_secret` are the credentials of a known app.
    pub(crate) fn credentials_ok(&self, app_id: &str, app_secret: &str) -> bool {
        self.apps
            .iter()
            .any(|a| a.app_id == app_id && a.app_secret == app_secret)
    }
}

/// The fake's client for pushes: plain HTTP, title-cased headers as Feishu
/// writes them.
pub(crate) type PushClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn push_client() -> PushClient {
    Client::builder(TokioExecutor::new())
        .http1_title_case_headers(true)
        .build_http()
}
