//! [`TokenSlot`]: one cached token — a self-built app's tenant token, a
//! store app's app token, or one tenant's token — with its single flight and
//! what `/readyz` shows of it.

use super::*;

/// A cached tenant access token.
pub struct Token {
    /// `Bearer t-…`, ready to insert (marked sensitive).
    pub header: HeaderValue,
    /// The token itself (a store app's app token is sent in a body).
    pub(super) value: Secret,
    /// Increases with every token stored in the slot.
    pub generation: u64,
    /// When Feishu will consider it expired (from when the call was sent).
    pub expires_at: Instant,
    /// Last moment it is handed to a request.
    pub usable_until: Instant,
    /// When the background task refreshes it.
    pub refresh_at: Instant,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("generation", &self.generation)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What `/readyz` shows of a slot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenStatus {
    /// App name.
    pub app: String,
    /// A usable token is cached.
    pub has_token: bool,
    /// Seconds until the cached token expires.
    pub expires_in_secs: Option<u64>,
    /// Code of the last failed fetch, cleared by a success.
    pub last_error_code: Option<i64>,
    /// Message of the last failed fetch.
    pub last_error: Option<String>,
    /// Fetch failures in a row.
    pub consecutive_failures: u32,
    /// The first token call has ended with a token or with Feishu's
    /// refusal (not merely "Feishu could not be reached"): what readiness
    /// waits for at start.
    pub settled: bool,
}

#[derive(Default)]
pub(super) struct Flight {
    pub(super) last_failure: Option<(Instant, FeishuError)>,
    pub(super) next_attempt: Option<Instant>,
    pub(super) failures: u32,
}

/// One cached token: a self-built app's, a store app's app token, or one
/// tenant's token of a store app.
pub struct TokenSlot {
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) source: Source,
    /// A refresh started on use is running (tenant slots have no
    /// background task; see [`TokenManager::get_slot`]).
    pub(super) refreshing: std::sync::atomic::AtomicBool,
    /// See [`TokenStatus::settled`]; never goes back to false.
    pub(super) settled: std::sync::atomic::AtomicBool,
    pub(super) current: RwLock<Option<Arc<Token>>>,
    pub(super) flight: tokio::sync::Mutex<Flight>,
    /// Copy of the flight's failure state for `/readyz`, readable without
    /// waiting on the async mutex.
    pub(super) status: Mutex<(Option<FeishuError>, u32)>,
}

impl TokenSlot {
    pub(super) fn new(index: usize, name: String, source: Source) -> TokenSlot {
        TokenSlot {
            index,
            name,
            source,
            refreshing: std::sync::atomic::AtomicBool::new(false),
            settled: std::sync::atomic::AtomicBool::new(false),
            current: RwLock::new(None),
            flight: tokio::sync::Mutex::new(Flight::default()),
            status: Mutex::new((None, 0)),
        }
    }

    /// Takes over what `old` holds (a live reload kept its app unchanged):
    /// its token, whether its first call ended, and its last failure. Its
    /// refresher is stopped by the reload; this slot's own takes over.
    pub fn take_over(&self, old: &TokenSlot) {
        let token = old.current.read().ok().and_then(|c| c.clone());
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = token;
        self.settled.store(
            old.settled.load(std::sync::atomic::Ordering::Acquire),
            std::sync::atomic::Ordering::Release,
        );
        let status = old.status.lock().map(|s| s.clone()).unwrap_or((None, 0));
        if let Ok(mut s) = self.status.lock() {
            *s = status;
        }
    }

    /// True when a usable token is cached.
    pub fn has_token(&self) -> bool {
        self.usable(Instant::now()).is_some()
    }

    pub(super) fn usable(&self, now: Instant) -> Option<Arc<Token>> {
        let cur = self.current.read().ok()?;
        cur.as_ref().filter(|t| now < t.usable_until).cloned()
    }
}
