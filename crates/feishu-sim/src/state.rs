//! State shared by the server task and the [`SimFeishu`](super::SimFeishu)
//! handle.
//!
//! Each concern has its own std `Mutex`, held only for a few map operations
//! and never across an `.await`; counters and knobs read on every request are
//! atomics.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::StatusCode;
use tokio::task::JoinSet;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::quota::QuotaBook;
use super::store::StoreBook;
use super::tokens::TokenBook;
use super::upload::UploadRecord;
use super::{PushedEvent, QuotaMode, RecordedRequest, SimApp, SimConfig, StoreCall, TokenCall};

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

    pub(crate) fn take_injected(&self) -> Option<(i64, StatusCode)> {
        if take_one(&self.inject_left) {
            Some(*lock(&self.injected))
        } else {
            None
        }
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
    /// A [`QuotaMode`] as `u8`.
    pub(crate) quota_mode: AtomicU8,
    pub(crate) faults: Faults,
    pub(crate) tokens: Mutex<TokenBook>,
    pub(crate) quota: Mutex<QuotaBook>,
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
}

impl Shared {
    pub(crate) fn new(cfg: SimConfig) -> Self {
        let shared = Shared {
            apps: cfg.apps,
            token_invalid_status: cfg.token_invalid_status,
            record_requests: cfg.record_requests,
            latency_ns: AtomicU64::new(0),
            quota_mode: AtomicU8::new(cfg.quota.to_u8()),
            faults: Faults::default(),
            tokens: Mutex::new(TokenBook::new(cfg.token_lifetime, cfg.same_token_threshold)),
            quota: Mutex::new(QuotaBook::new(cfg.limits)),
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
        };
        shared.set_latency(cfg.latency);
        shared.set_ticket_push_delay(cfg.ticket_push_delay);
        shared
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
