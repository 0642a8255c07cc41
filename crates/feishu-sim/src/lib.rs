//! feishu-sim: a simulated Feishu Open Platform, the parts of
//! `open.feishu.cn` feishu-gateway touches, served over real HTTP on
//! `127.0.0.1` for the gateway's `demo` command, its tests and the load
//! benchmark (`feishu-gateway sim`, driven by `benches/load.sh`).
//!
//! It is a crate of its own, not a module of the gateway's library, so that
//! the fake is no part of the product's API: the gateway links it only for
//! its `demo` feature (on by default) and as a dev-dependency.
//!
//! The fake follows what the platform does: flat token answers with the
//! 30-minute same-token rule (the current token while at least 30 minutes of
//! it remain, a new one after), the token error codes, every endpoint of
//! Feishu's server API (the [`catalog`]) with its documented rate windows,
//! per-resource limits and the monthly call budget, an `X-Tt-Logid` on
//! every answer, written title-cased on the wire, and the top-notice
//! endpoints with their body contract and error codes.
//!
//! It is the independent judge the gateway's tests measure against: it reads
//! the repository's data files itself (`data/feishu-api-limits.tsv`,
//! `data/throttle-codes.tsv`, `data/budget-exempt.tsv`, compiled in) and
//! shares no code with the gateway's routing or quota logic.
//!
//! # Layout
//!
//! - this file: [`SimConfig`] (plain data) and [`SimFeishu`], the running
//!   fake with its fault-injection and introspection methods.
//! - [`catalog`]: the data files, parsed, and the route trees (static
//!   segments win over parameters), public so tests can pick endpoints.
//! - `server`: the accept loop and the request phases, in Feishu's order
//!   (route, token, windows, throttle answers, per-resource limits, body
//!   contract, magic chat ids, answer, budget).
//! - `tokens`: the token book (issue, 30-minute rule, verdicts).
//! - `quota`: per (app[, tenant], endpoint) arrival logs, sliding-window
//!   checks, each endpoint with its own windows.
//! - `resource`: per-resource arrival logs and calls in flight.
//! - `store`: store apps' tickets and tenants, and event pushes.
//! - [`callback`]: the Feishu side of event callbacks (encrypt, sign),
//!   public for tests that forge callbacks.
//! - [`contract`]: the body contract of `put_top_notice`, public so the
//!   gateway's validation can be differential-tested against it.
//! - `ws` and `frame`: the long connection (`POST /callback/ws/endpoint`,
//!   a WebSocket server speaking `pbbp2.Frame` on a port of its own, event
//!   pushes with acks and re-pushes; [`SimFeishu::long_conn_push`] and the
//!   other `long_conn` controls).
//! - `upload`: the multipart upload endpoints, read as they stream
//!   ([`UploadRecord`], [`SimFeishu::uploads`]).
//! - `answer`: JSON answers, error messages and `X-Tt-Logid` values.
//! - `state`: the state shared by the server and the handle.
//! - [`ca`]: a certificate authority made at run time, for HTTPS on
//!   loopback ([`SimConfig::tls`]).
//!
//! # HTTPS
//!
//! With `tls` set, the fake serves HTTPS only, with a certificate for
//! `localhost` and `127.0.0.1` signed by a CA generated at start
//! ([`SimFeishu::ca_pem`]), offering HTTP/2 and HTTP/1.1 by ALPN. Each
//! recorded request carries the HTTP version it came with.
//!
//! # Requests, as the fake sees them
//!
//! Token calls are the two `.../auth/v3/*_access_token/internal` endpoints;
//! *store calls* are the three store-app endpoints (below). Every other
//! request is a *business request*: it is recorded (see
//! [`SimFeishu::requests`]) with its catalog endpoint, its bearer token is
//! judged, and it gets the configured latency. An answer injected by
//! [`SimFeishu::answer_next_with_code`] comes before anything else. A
//! request that matches no endpoint of the catalog (path and method) answers
//! 404 whatever its token; a missing or bad token answers 99991661 /
//! 99991663. A business request with a valid tenant token then goes
//! through:
//!
//! 1. the endpoint's windows, per (app, endpoint), or (app, tenant,
//!    endpoint) with a store app's tenant token, sliding-window exact: the
//!    documented ones (`1000/60s,50/1s` = both must hold), a hidden
//!    [`special_limits`](SimConfig::special_limits) for `special` (特殊频控)
//!    endpoints, none where no limit is stated; [`SimConfig::limits`] and
//!    [`SimConfig::route_limits`] replace them. Every such call is an
//!    arrival, throttled ones included; one over a window answers HTTP 429,
//!    `{"code":99991400,"msg":"request trigger frequency limit"}` with
//!    `x-ogw-ratelimit-limit` (the window's cap) and `x-ogw-ratelimit-reset`
//!    (whole seconds until a call would pass), and counts as a violation.
//! 2. a throttle answer a test set on the endpoint ([`SimFeishu::throttle`]:
//!    any code, any status, optional reset, for N calls or a while).
//! 3. the endpoint's per-resource limit ([`ResourceRule`]): 5/s per message
//!    receiver (shared by every app: a chat's limit is shared by its bots),
//!    per message replied to, per card updated (230020, HTTP 400); 3 edits/s
//!    per docx document (HTTP 429, 99991400); one write in flight per
//!    bitable table (1254291, HTTP 200); one upload in flight, 5/s and
//!    10,000/day per app and upload endpoint (1061045, HTTP 200). Admitted
//!    bitable writes and drive uploads stay in flight for
//!    [`write_time`](SimConfig::write_time). Refusals count as violations
//!    and are listed ([`SimFeishu::resource_violations`]).
//! 4. the top-notice body contracts (HTTP 400, 232001), then magic chat
//!    ids: a `:chat_id` of `oc_error<code>` answers HTTP 400 with that code.
//! 5. success: `{"code":0,"msg":"success","data":{}}` (`GET` chat echoes the
//!    chat id and the query), unless the app's
//!    [`monthly_budget`](SimConfig::monthly_budget) is spent: then HTTP
//!    429, 99991403, except for the exempt paths.
//!
//! [`QuotaMode`] switches enforcement of 1 and 3 (enforce, count only, off).
//! Statuses and messages of throttle codes come from
//! `data/throttle-codes.tsv` (the first documented status).
//!
//! A request header `X-Sim-Delay-Ms: <n>` holds that one answer n ms longer
//! (token calls included, so slow token fetches can be tested too).
//!
//! # Introspection
//!
//! Endpoints are named as [`catalog::resolve`] takes them: the short seed
//! names `put_top_notice`, `delete_top_notice`, `get_chat`,
//! `"<METHOD> <template>"`, or a template only one method has; an unknown or
//! ambiguous name panics. [`SimFeishu::violations`] (total),
//! [`violations_at`](SimFeishu::violations_at),
//! [`arrivals`](SimFeishu::arrivals) and the `_by_endpoint` lists count per
//! endpoint; [`max_in_any_window`](SimFeishu::max_in_any_window) reads a
//! key's arrival log; [`resource_max_in_any_window`](SimFeishu::resource_max_in_any_window),
//! [`resource_peak_in_flight`](SimFeishu::resource_peak_in_flight) and
//! [`budget_used`](SimFeishu::budget_used) the rest. Per-key state is made
//! on a key's first call, never for the whole catalog.
//!
//! # Store apps (ISV)
//!
//! Apps in [`SimConfig::store_apps`] get their tokens Feishu's store way (an
//! app_ticket Feishu pushes, an app token made with it, then a tenant token
//! per tenant that installed the app); their calls are recorded as
//! [`StoreCall`]s:
//!
//! - `POST /open-apis/auth/v3/app_ticket/resend` `{app_id, app_secret}`
//!   answers `{"code":0,"msg":"ok"}`, then, after
//!   [`ticket_push_delay`](crate::SimConfig::ticket_push_delay), issues
//!   a new app_ticket and POSTs the v1 `app_ticket` event to the app's event
//!   URL, encrypted and signed when the app has an Encrypt Key (see
//!   [`callback`]). Each push is recorded as a
//!   [`PushedEvent`] with the answer's status.
//! - `POST /open-apis/auth/v3/app_access_token` `{app_id, app_secret,
//!   app_ticket}` answers `app_access_token` (`a-…`). A ticket the fake did
//!   not issue, or one invalidated by
//!   [`invalidate_tickets`](crate::SimFeishu::invalidate_tickets),
//!   answers [`invalid_ticket_code`](crate::SimConfig::invalid_ticket_code)
//!   (default 10012, the code the official SDKs resend on).
//! - `POST /open-apis/auth/v3/tenant_access_token` `{app_access_token,
//!   tenant_key}` answers a `tenant_access_token` (`t-…`) for that tenant,
//!   with the same-token rule per (app, tenant). An unknown or expired app
//!   token answers 99991664 / 99991677; a tenant that did not install the app
//!   answers [`unknown_tenant_code`](crate::SimConfig::unknown_tenant_code)
//!   (default 99991665, UNCONFIRMED).
//!
//! Business requests with a store tenant token are counted against quotas
//! per (app, tenant, endpoint) and recorded with their
//! [`tenant_key`](crate::RecordedRequest::tenant_key); self-built apps
//! keep one quota per (app, endpoint).
//!
//! # Time
//!
//! The fake reads the clock through [`tokio::time::Instant`], so a test that
//! pauses time (`#[tokio::test(start_paused = true)]`) and calls
//! `tokio::time::advance` ages tokens and quota windows deterministically.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use feishu_sim::{SimConfig, SimFeishu};
//!
//! let sim = SimFeishu::start(SimConfig::with_app("cli_demo", "secret")).await?;
//! println!("simulated Feishu at {}", sim.base_url());
//! sim.fail_next_token_calls(1); // the next token call answers HTTP 500
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod answer;
pub mod ca;
pub mod callback;
pub mod catalog;
pub mod contract;
mod frame;
mod push;
mod quota;
mod resource;
mod server;
mod state;
mod store;
mod tokens;
mod upload;
pub mod webhook;
mod ws;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Version};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use state::{lock, Shared};
pub use upload::UploadRecord;

pub use catalog::ResourceRule;
pub use ws::{
    CutMode, LongConnAck, LongConnClientConfig, LongConnDelivery, LongConnEndpointCall,
    LongConnEventState, LongConnHandshake, LongConnPing, LongConnection,
};
/// The codes and statuses of the long connection (see `ws.rs`).
pub mod long_conn {
    pub use super::ws::{
        AUTH_FAILED, BAD_CREDENTIALS, BAD_TICKET_AUTH_CODE, EXCEED_CONN_LIMIT, FORBIDDEN,
        SYSTEM_BUSY,
    };
}

/// One self-built app the fake knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimApp {
    /// The app id, `cli_…` on the real platform.
    pub app_id: String,
    /// The app secret the token calls must present.
    pub app_secret: String,
}

impl SimApp {
    /// An app with these credentials.
    pub fn new(app_id: impl Into<String>, app_secret: impl Into<String>) -> Self {
        SimApp {
            app_id: app_id.into(),
            app_secret: app_secret.into(),
        }
    }
}

/// One store app (ISV) the fake knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimStoreApp {
    /// The app id.
    pub app_id: String,
    /// The app secret the resend and app-token calls must present.
    pub app_secret: String,
    /// The Encrypt Key: with one, pushes are encrypted and signed.
    pub encrypt_key: Option<String>,
    /// The Verification Token every pushed event carries.
    pub verification_token: String,
    /// The tenant keys of the tenants that installed the app.
    pub tenants: Vec<String>,
    /// Where events are pushed; also settable once the gateway has its port
    /// ([`SimFeishu::set_event_url`]). Plain `http://` only.
    pub event_url: Option<String>,
}

impl SimStoreApp {
    /// A store app with no Encrypt Key, no tenants and no event URL.
    pub fn new(
        app_id: impl Into<String>,
        app_secret: impl Into<String>,
        verification_token: impl Into<String>,
    ) -> Self {
        SimStoreApp {
            app_id: app_id.into(),
            app_secret: app_secret.into(),
            encrypt_key: None,
            verification_token: verification_token.into(),
            tenants: Vec::new(),
            event_url: None,
        }
    }

    /// With this Encrypt Key.
    pub fn encrypt_key(mut self, key: impl Into<String>) -> Self {
        self.encrypt_key = Some(key.into());
        self
    }

    /// With these tenants installed.
    pub fn tenants<I, S>(mut self, tenants: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tenants = tenants.into_iter().map(Into::into).collect();
        self
    }

    /// With this event URL.
    pub fn event_url(mut self, url: impl Into<String>) -> Self {
        self.event_url = Some(url.into());
        self
    }
}

/// What the fake does when a request goes over a quota window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuotaMode {
    /// Count the violation and answer 429 / 99991400, as Feishu does.
    #[default]
    Enforce,
    /// Count the violation but answer normally (to measure a client's pacing).
    CountOnly,
    /// Neither count nor throttle. Arrivals are still logged.
    Off,
}

impl QuotaMode {
    fn to_u8(self) -> u8 {
        match self {
            QuotaMode::Enforce => 0,
            QuotaMode::CountOnly => 1,
            QuotaMode::Off => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => QuotaMode::Enforce,
            1 => QuotaMode::CountOnly,
            _ => QuotaMode::Off,
        }
    }
}

/// Configuration of the fake: plain data, see [`SimConfig::default`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The apps whose credentials the token endpoints accept. Empty by default.
    pub apps: Vec<SimApp>,
    /// Lifetime of a newly issued token, the `expire` it is handed out with.
    /// Default 7200 s.
    pub token_lifetime: Duration,
    /// Feishu's same-token rule: while the app's current token has at least
    /// this much left, a token call returns that same token. Default 30 min.
    pub same_token_threshold: Duration,
    /// HTTP status sent with code 99991663 (unknown or expired token).
    /// Default 400 (Feishu's choice between 400 and 401 is unconfirmed).
    pub token_invalid_status: StatusCode,
    /// Quota behaviour, for endpoint windows and per-resource limits alike.
    /// Default [`QuotaMode::Enforce`].
    pub quota: QuotaMode,
    /// Windows `(N, W)` (at most N arrivals in any interval of length W)
    /// that replace the documented windows of EVERY endpoint that has some,
    /// per (app[, tenant], endpoint). Default empty: each endpoint keeps
    /// its documented windows (`data/feishu-api-limits.tsv`; the seed
    /// endpoints' are `1000/60s,50/1s`). `special` endpoints and endpoints
    /// with no stated limit are not affected.
    pub limits: Vec<(u32, Duration)>,
    /// Windows for single endpoints, replacing whatever they would have
    /// (an empty list = no limit): `(endpoint name, windows)`, the name as
    /// [`catalog::resolve`] takes it (`"put_top_notice"`,
    /// `"GET /open-apis/im/v1/chats/search"`…). An unknown name makes
    /// [`SimFeishu::start`] fail. Default empty.
    pub route_limits: Vec<(String, Vec<(u32, Duration)>)>,
    /// The hidden limit of `special` (特殊频控) endpoints, per (app[,
    /// tenant], endpoint), answered like any window (HTTP 429, 99991400,
    /// `x-ogw-ratelimit-*`). Drive uploads are `special` too, but their
    /// pages state the real limit, enforced as
    /// [`ResourceRule::DriveUpload`] instead. Default `[(5, 1 s)]`.
    pub special_limits: Vec<(u32, Duration)>,
    /// How long an admitted bitable record write or drive upload is in
    /// flight (added to its answer's wait), so that concurrent writes to
    /// one table or uploads of one app can be seen. Default 20 ms.
    pub write_time: Duration,
    /// The monthly call budget of each self-built app (Feishu's is shared
    /// by the custom apps of a tenant; the fake has no tenants for them, so
    /// each app has its own). Successful business calls count, except those
    /// under a prefix of `data/budget-exempt.tsv`; once spent, counted calls
    /// answer HTTP 429 / 99991403 and exempt ones still pass. Store apps'
    /// calls are not counted (Feishu's budget is for custom apps). The month
    /// never turns by itself: see [`SimFeishu::set_budget_used`]. Default
    /// `None` (no budget).
    pub monthly_budget: Option<u64>,
    /// Delay added to every business answer. Default 0.
    pub latency: Duration,
    /// Keep every business request for [`SimFeishu::requests`]. Default true;
    /// the load benchmark turns it off, and so should any long run (the
    /// records grow without bound). Counters, token calls and arrival logs
    /// are kept either way.
    pub record_requests: bool,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with a certificate for
    /// `localhost` and `127.0.0.1` from a CA made at start; see
    /// [`SimFeishu::ca_pem`]. Default false (plain HTTP).
    pub tls: bool,
    /// Store apps (ISV). Empty by default.
    pub store_apps: Vec<SimStoreApp>,
    /// Delay between a resend call and the ticket push it causes (Feishu
    /// takes from seconds to minutes). Default 0.
    pub ticket_push_delay: Duration,
    /// The code answered (HTTP 400) by `app_access_token` for a stale or
    /// unknown app_ticket. Default 10012: the code the official SDKs treat
    /// as "ticket invalid, resend" (Go, Java, Node); Feishu's own wording for
    /// it is UNCONFIRMED.
    pub invalid_ticket_code: i64,
    /// The code answered (HTTP 400) by `tenant_access_token` for a tenant key
    /// that did not install the app. Default 99991665 ("tenant code
    /// invalid"); UNCONFIRMED which code Feishu sends there.
    pub unknown_tenant_code: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            apps: Vec::new(),
            token_lifetime: Duration::from_secs(7200),
            same_token_threshold: Duration::from_secs(30 * 60),
            token_invalid_status: StatusCode::BAD_REQUEST,
            quota: QuotaMode::Enforce,
            limits: Vec::new(),
            route_limits: Vec::new(),
            special_limits: vec![(5, Duration::from_secs(1))],
            write_time: Duration::from_millis(20),
            monthly_budget: None,
            latency: Duration::ZERO,
            record_requests: true,
            tls: false,
            store_apps: Vec::new(),
            ticket_push_delay: Duration::ZERO,
            invalid_ticket_code: 10012,
            unknown_tenant_code: 99991665,
        }
    }
}

impl SimConfig {
    /// The default configuration with one app.
    pub fn with_app(app_id: impl Into<String>, app_secret: impl Into<String>) -> Self {
        SimConfig {
            apps: vec![SimApp::new(app_id, app_secret)],
            ..SimConfig::default()
        }
    }

    /// The default configuration with one store app.
    pub fn with_store_app(app: SimStoreApp) -> Self {
        SimConfig {
            store_apps: vec![app],
            ..SimConfig::default()
        }
    }
}

/// How the fake judged the bearer token of a business request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVerdict {
    /// A tenant token the fake issued, not expired, not invalidated.
    Valid,
    /// A tenant token the fake issued whose lifetime is over.
    Expired,
    /// Never issued, invalidated, or not a tenant token.
    Unknown,
    /// No `Authorization: Bearer <token>` header, or a malformed one.
    Missing,
}

/// Which token endpoint a [`TokenCall`] hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// `POST /open-apis/auth/v3/tenant_access_token/internal`
    Tenant,
    /// `POST /open-apis/auth/v3/app_access_token/internal`
    App,
}

/// One business request as the fake received and answered it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Request method.
    pub method: Method,
    /// Path, without the query.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// The HTTP version it came with (`HTTP_2` when ALPN chose `h2`).
    pub version: Version,
    /// Headers as received.
    pub headers: HeaderMap,
    /// Body as received.
    pub body: Bytes,
    /// When the request (head and body) had arrived.
    pub arrived: Instant,
    /// The token of a well-formed `Authorization: Bearer <token>` header.
    pub bearer: Option<String>,
    /// How that token was judged.
    pub token_verdict: TokenVerdict,
    /// The app the token belongs to, when it is valid.
    pub app_id: Option<String>,
    /// The tenant of a valid store-app tenant token (`None` for self-built
    /// apps' tokens).
    pub tenant_key: Option<String>,
    /// The catalog endpoint's name ([`catalog::Endpoint::name`]:
    /// `"put_top_notice"`, `"delete_top_notice"`, `"get_chat"`, or
    /// `"<METHOD> <template>"`), or `None` for an unknown route.
    pub endpoint: Option<&'static str>,
    /// The catalog endpoint's path template, or `None` for an unknown route.
    pub template: Option<&'static str>,
    /// The `code` of the answer's JSON body (-1 for an edge answer without
    /// one, [`SimFeishu::answer_next_from_edge`]).
    pub answered_code: i64,
    /// The HTTP status of the answer.
    pub answered_status: StatusCode,
    /// The `X-Tt-Logid` the answer carried.
    pub logid: String,
}

/// One call to a token endpoint.
#[derive(Debug, Clone)]
pub struct TokenCall {
    /// Which endpoint.
    pub kind: TokenKind,
    /// The `app_id` the call claimed (empty when absent or unreadable).
    pub app_id: String,
    /// Whether a token was handed out.
    pub ok: bool,
    /// The token handed out (empty when `!ok`).
    pub token: String,
    /// The `expire` handed out, in seconds (0 when `!ok`).
    pub expire: u64,
    /// The `code` of the answer.
    pub code: i64,
    /// When the call had arrived.
    pub arrived: Instant,
    /// The `X-Tt-Logid` the answer carried (empty when the connection was
    /// dropped).
    pub logid: String,
}

/// Which store-app endpoint a [`StoreCall`] hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreCallKind {
    /// `POST /open-apis/auth/v3/app_ticket/resend`
    Resend,
    /// `POST /open-apis/auth/v3/app_access_token`
    AppToken,
    /// `POST /open-apis/auth/v3/tenant_access_token`
    TenantToken,
}

/// One call to a store-app endpoint.
#[derive(Debug, Clone)]
pub struct StoreCall {
    /// Which endpoint.
    pub kind: StoreCallKind,
    /// The `app_id` the call claimed, or for a tenant-token call the app of
    /// its app token (empty when absent, unreadable or unknown).
    pub app_id: String,
    /// The `tenant_key` a tenant-token call asked for.
    pub tenant_key: Option<String>,
    /// Whether it succeeded (a token handed out, or a resend accepted).
    pub ok: bool,
    /// The token handed out (empty for resends and failures).
    pub token: String,
    /// The `expire` handed out, in seconds (0 for resends and failures).
    pub expire: u64,
    /// The `code` of the answer.
    pub code: i64,
    /// When the call had arrived.
    pub arrived: Instant,
    /// The `X-Tt-Logid` the answer carried.
    pub logid: String,
}

/// How a push to an event URL ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// The event URL answered with this status.
    Status(StatusCode),
    /// The app has no event URL: nothing was sent.
    NoEventUrl,
    /// Connecting, sending or waiting failed (10 s at most).
    Failed(String),
}

/// One event the fake pushed (or tried to) to a store app's event URL.
#[derive(Debug, Clone)]
pub struct PushedEvent {
    /// The app.
    pub app_id: String,
    /// `app_ticket`, `url_verification`, or the type of a custom event.
    pub event_type: String,
    /// The ticket, for `app_ticket` pushes.
    pub app_ticket: Option<String>,
    /// The challenge, for `url_verification` pushes.
    pub challenge: Option<String>,
    /// Where it went (empty when there was no event URL).
    pub url: String,
    /// Whether the body was `{"encrypt":…}`.
    pub encrypted: bool,
    /// Whether it carried the `X-Lark-*` signature headers.
    pub signed: bool,
    /// How it ended.
    pub outcome: PushOutcome,
    /// The answer's body (up to 64 KiB).
    pub answer: Bytes,
    /// When the push started.
    pub at: Instant,
}

impl PushedEvent {
    /// The status the event URL answered, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self.outcome {
            PushOutcome::Status(s) => Some(s),
            _ => None,
        }
    }

    /// For a `url_verification` push: whether the answer was 200 with
    /// `{"challenge": <the same>}`.
    pub fn challenge_echoed(&self) -> bool {
        let Some(challenge) = &self.challenge else {
            return false;
        };
        self.status() == Some(StatusCode::OK)
            && serde_json::from_slice::<serde_json::Value>(&self.answer)
                .is_ok_and(|v| v["challenge"].as_str() == Some(challenge))
    }
}

/// How long a throttle answer set by [`SimFeishu::throttle`] lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultSpan {
    /// For the next N calls at the endpoint (with a valid token).
    Calls(u32),
    /// For every call at the endpoint during this long from now.
    For(Duration),
}

/// A call refused (or, with [`QuotaMode::CountOnly`], counted) by a
/// per-resource limit.
#[derive(Debug, Clone)]
pub struct ResourceViolation {
    /// The rule.
    pub rule: ResourceRule,
    /// The resource key (see [`ResourceRule`]).
    pub key: String,
    /// The endpoint's name.
    pub endpoint: &'static str,
    /// The calling app.
    pub app_id: String,
    /// Its tenant, for a store app's tenant token.
    pub tenant_key: Option<String>,
    /// The code answered (or that would have been): 230020, 99991400,
    /// 1254291 or 1061045.
    pub code: i64,
    /// The HTTP status with it.
    pub status: StatusCode,
    /// Whether it was refused for concurrency (a call in flight on the same
    /// key) rather than a rate window.
    pub concurrent: bool,
    /// When it arrived.
    pub at: Instant,
}

/// The catalog endpoint `name` names, or a panic saying why none.
#[track_caller]
fn endpoint(name: &str) -> &'static catalog::Endpoint {
    match catalog::resolve(name) {
        Ok(ep) => ep,
        Err(e) => panic!("{e}"),
    }
}

/// The running fake. Dropping it stops the server and closes its connections.
pub struct SimFeishu {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca: Option<ca::TestCa>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for SimFeishu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimFeishu")
            .field("addr", &self.addr)
            .field("tls", &self.ca.is_some())
            .finish_non_exhaustive()
    }
}

impl SimFeishu {
    /// Start the fake on `127.0.0.1` with a port chosen by the system.
    pub async fn start(cfg: SimConfig) -> std::io::Result<SimFeishu> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        Self::start_on(listener, cfg).await
    }

    /// Start the fake on a listener the caller has bound.
    pub async fn start_on(listener: TcpListener, cfg: SimConfig) -> std::io::Result<SimFeishu> {
        let addr = listener.local_addr()?;
        let (ca, tls) = if cfg.tls {
            let ca = ca::TestCa::new("feishu-gateway sim CA").map_err(std::io::Error::other)?;
            let config = ca
                .issue_localhost("sim.feishu.localhost")
                .and_then(|leaf| leaf.server_config())
                .map_err(std::io::Error::other)?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            (Some(ca), Some(acceptor))
        } else {
            (None, None)
        };
        let shared = Shared::new(cfg)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let shared = Arc::new(shared);
        ws::start(&shared, tls.clone()).await?;
        let task = tokio::spawn(server::serve(listener, tls, Arc::clone(&shared)));
        Ok(SimFeishu {
            shared,
            addr,
            ca,
            task,
        })
    }

    /// The address the fake listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` with
    /// [`SimConfig::tls`]: the base URL to give a client.
    pub fn base_url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The PEM certificate of the CA that signed the fake's certificate, when
    /// it serves HTTPS: what a client must trust (`upstream_ca_file`).
    pub fn ca_pem(&self) -> Option<String> {
        self.ca.as_ref().map(ca::TestCa::cert_pem)
    }

    /// The CA itself, when the fake serves HTTPS, to issue more certificates
    /// that the same clients trust (e.g. for the gateway's own listener).
    pub fn ca(&self) -> Option<&ca::TestCa> {
        self.ca.as_ref()
    }

    // ----- fault injection -------------------------------------------------

    /// The next `n` token calls answer HTTP 500 with code 10013 (tenant) or
    /// 10012 (app), whatever their credentials. Replaces any pending count.
    pub fn fail_next_token_calls(&self, n: u32) {
        self.shared.faults.fail_token.store(n, Ordering::SeqCst);
    }

    /// Forget every issued token, store apps' included: business requests
    /// bearing one get 99991663 (as [`TokenVerdict::Unknown`]), and the next
    /// token call of each app (or tenant) issues a new token. Tickets are
    /// kept.
    pub fn invalidate_all_tokens(&self) {
        lock(&self.shared.tokens).invalidate_all();
    }

    /// Delay added to every business answer from now on.
    pub fn set_latency(&self, d: Duration) {
        self.shared.set_latency(d);
    }

    /// OTLP trace exports received at `POST /v1/traces` (a gateway's
    /// `[tracing]` pointed at the fake): how many, and their bytes.
    pub fn otlp_exports(&self) -> (u64, u64) {
        (
            self.shared.otlp_exports.load(Ordering::Relaxed),
            self.shared.otlp_bytes.load(Ordering::Relaxed),
        )
    }

    /// Delay added to every token call's answer (self-built and store apps)
    /// from now on. Default 0.
    pub fn set_token_latency(&self, d: Duration) {
        self.shared.set_token_latency(d);
    }

    /// Lifetime of the tokens issued from now on (issued ones keep theirs).
    pub fn set_token_lifetime(&self, d: Duration) {
        lock(&self.shared.tokens).set_lifetime(d);
    }

    /// Quota behaviour from now on.
    pub fn set_quota_mode(&self, m: QuotaMode) {
        self.shared.quota_mode.store(m.to_u8(), Ordering::SeqCst);
    }

    /// The next `n` requests (of any kind) are read and then answered by
    /// closing the connection, with no response. They are neither recorded
    /// nor counted against quotas. Replaces any pending count.
    pub fn drop_next_connections(&self, n: u32) {
        self.shared.faults.drop_conns.store(n, Ordering::SeqCst);
    }

    /// The next `n` business requests answer `{"code":code,"msg":…}` with
    /// `status`, before any token or quota check (they are recorded, but not
    /// counted against quotas). With code 99991400 the answer also carries
    /// the `x-ogw-ratelimit-*` headers of the first configured window.
    /// Replaces any pending injection.
    pub fn answer_next_with_code(&self, code: i64, status: StatusCode, n: u32) {
        self.shared.faults.inject(code, status, n);
    }

    /// The next `n` business requests answer as a load balancer in front of
    /// Feishu does when the API behind it is down: `status` (e.g. 502 or
    /// 503) with a small HTML body and no Feishu `code`, before any other
    /// check (recorded with `answered_code` -1, not counted against quotas).
    /// Replaces any pending count; checked before
    /// [`answer_next_with_code`](Self::answer_next_with_code).
    pub fn answer_next_from_edge(&self, status: StatusCode, n: u32) {
        self.shared.faults.inject_edge(status, n);
    }

    /// From now on, calls at `endpoint` (a name as [`catalog::resolve`]
    /// takes it) with a valid token answer `{"code":code,"msg":…}` with
    /// `status`, for `span`; with `reset`, the answer carries
    /// `x-ogw-ratelimit-reset: <reset>` (and `x-ogw-ratelimit-limit`, the
    /// cap of the endpoint's shortest window, when it has one). The `msg` is
    /// Feishu's for the code (`data/throttle-codes.tsv`). Such calls are
    /// arrivals (and count against the endpoint's windows) but go no
    /// further: no per-resource limit, no budget. Replaces what was set at
    /// the endpoint. E.g. `throttle("put_top_notice", 99991400,
    /// StatusCode::BAD_REQUEST, Some(2), FaultSpan::Calls(1))`. Panics on a
    /// name that is not in the catalog.
    #[track_caller]
    pub fn throttle(
        &self,
        endpoint_name: &str,
        code: i64,
        status: StatusCode,
        reset: Option<u64>,
        span: FaultSpan,
    ) {
        let ep = endpoint(endpoint_name);
        self.shared
            .throttles
            .set(ep.index, code, status, reset, span, Instant::now());
    }

    /// Remove every throttle answer set by [`throttle`](Self::throttle).
    pub fn clear_throttles(&self) {
        self.shared.throttles.clear();
    }

    /// Set `app_id`'s count of budget-counted calls this month (0: the
    /// month turned).
    pub fn set_budget_used(&self, app_id: &str, used: u64) {
        lock(&self.shared.budget_used).insert(app_id.to_owned(), used);
    }

    // ----- introspection ---------------------------------------------------

    /// Every business request received since the start or the last
    /// [`reset_records`](Self::reset_records), in arrival order. Empty when
    /// `record_requests` is off.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Every upload (`im/v1/images`, `im/v1/files`, drive `upload_all` and
    /// `upload_part`) received, complete or cut off, in the order they
    /// ended. A complete one is also in [`requests`](Self::requests), with
    /// an empty body (its file is not kept). Empty when `record_requests`
    /// is off.
    pub fn uploads(&self) -> Vec<UploadRecord> {
        lock(&self.shared.uploads).clone()
    }

    /// Every token call, in arrival order.
    pub fn token_calls(&self) -> Vec<TokenCall> {
        lock(&self.shared.token_calls).clone()
    }

    /// Requests that went over a limit: an endpoint's windows (documented,
    /// configured or the hidden `special` one) or a per-resource limit
    /// (rate or concurrency), all keys; one per request even when it broke
    /// several. Not counted with [`QuotaMode::Off`]. Budget refusals and
    /// throttle answers set by tests are not violations.
    pub fn violations(&self) -> u64 {
        self.shared.violations.load(Ordering::SeqCst)
    }

    /// [`violations`](Self::violations) at one endpoint (a name as
    /// [`catalog::resolve`] takes it; panics on an unknown one).
    #[track_caller]
    pub fn violations_at(&self, endpoint_name: &str) -> u64 {
        let ep = endpoint(endpoint_name);
        self.shared.endpoint_violations[ep.index].load(Ordering::SeqCst)
    }

    /// Every endpoint with violations, by name, in catalog order.
    pub fn violations_by_endpoint(&self) -> Vec<(&'static str, u64)> {
        nonzero(&self.shared.endpoint_violations)
    }

    /// Calls with a valid token at one endpoint, all apps and tenants, since
    /// the start or the last reset (throttled ones included). Panics on an
    /// unknown name.
    #[track_caller]
    pub fn arrivals(&self, endpoint_name: &str) -> u64 {
        let ep = endpoint(endpoint_name);
        self.shared.endpoint_arrivals[ep.index].load(Ordering::SeqCst)
    }

    /// Every endpoint with arrivals, by name, in catalog order.
    pub fn arrivals_by_endpoint(&self) -> Vec<(&'static str, u64)> {
        nonzero(&self.shared.endpoint_arrivals)
    }

    /// The windows the fake enforces at an endpoint per (app[, tenant]),
    /// after [`SimConfig::limits`], [`SimConfig::route_limits`] and
    /// [`SimConfig::special_limits`]. Panics on an unknown name.
    #[track_caller]
    pub fn windows(&self, endpoint_name: &str) -> Vec<(u32, Duration)> {
        let ep = endpoint(endpoint_name);
        lock(&self.shared.quota).windows(ep.index).to_vec()
    }

    /// Every call refused (or counted) by a per-resource limit, in order.
    pub fn resource_violations(&self) -> Vec<ResourceViolation> {
        lock(&self.shared.resource_violations).clone()
    }

    /// The most calls at a resource key within any interval of `window`
    /// (every call that reached the per-resource check, refused ones
    /// included), since the last reset.
    pub fn resource_max_in_any_window(
        &self,
        rule: ResourceRule,
        key: &str,
        window: Duration,
    ) -> usize {
        lock(&self.shared.resources).max_in_any_window(rule, key, window)
    }

    /// The most calls in flight at once at a resource key (bitable tables,
    /// drive uploads), since the last reset.
    pub fn resource_peak_in_flight(&self, rule: ResourceRule, key: &str) -> u32 {
        lock(&self.shared.resources).peak_in_flight(rule, key)
    }

    /// The keys of `rule` that saw calls since the last reset, sorted.
    pub fn resource_keys(&self, rule: ResourceRule) -> Vec<String> {
        lock(&self.shared.resources).keys(rule)
    }

    /// Budget-counted calls of `app_id` this month (see
    /// [`SimConfig::monthly_budget`]; 0 without a budget).
    pub fn budget_used(&self, app_id: &str) -> u64 {
        lock(&self.shared.budget_used)
            .get(app_id)
            .copied()
            .unwrap_or(0)
    }

    /// Calls answered 99991403 since the start or the last reset.
    pub fn budget_refused(&self) -> u64 {
        self.shared.budget_refused.load(Ordering::SeqCst)
    }

    /// Business requests that arrived with an expired (not merely unknown)
    /// token.
    pub fn expired_token_uses(&self) -> u64 {
        self.shared.expired_uses.load(Ordering::SeqCst)
    }

    /// The most requests of the key (`app_id`, endpoint) that arrived
    /// within any interval of length `window`, over the arrivals logged since
    /// the last reset (the most recent 2^20 per key). The endpoint is a name
    /// as [`catalog::resolve`] takes it: `"put_top_notice"`,
    /// `"delete_top_notice"`, `"get_chat"`, `"<METHOD> <template>"` or a
    /// template only one method has; panics on an unknown or ambiguous one.
    /// Only requests with a valid token reach the log; throttled ones do.
    #[track_caller]
    pub fn max_in_any_window(&self, app_id: &str, endpoint_name: &str, window: Duration) -> usize {
        let ep = endpoint(endpoint_name);
        lock(&self.shared.quota).max_in_any_window(app_id, None, ep.index, window)
    }

    /// [`max_in_any_window`](Self::max_in_any_window) for a store app's
    /// tenant: the key (`app_id`, `tenant_key`, `endpoint`).
    #[track_caller]
    pub fn max_in_any_window_for_tenant(
        &self,
        app_id: &str,
        tenant_key: &str,
        endpoint_name: &str,
        window: Duration,
    ) -> usize {
        let ep = endpoint(endpoint_name);
        lock(&self.shared.quota).max_in_any_window(app_id, Some(tenant_key), ep.index, window)
    }

    /// Every store-app call (resend, app token, tenant token), in arrival
    /// order.
    pub fn store_calls(&self) -> Vec<StoreCall> {
        lock(&self.shared.store_calls).clone()
    }

    /// Every push to an event URL, in the order they ended.
    pub fn pushed_events(&self) -> Vec<PushedEvent> {
        lock(&self.shared.pushed).clone()
    }

    /// The most recently issued, still valid ticket of a store app.
    pub fn current_ticket(&self, app_id: &str) -> Option<String> {
        lock(&self.shared.store).latest_ticket(app_id)
    }

    // ----- store apps --------------------------------------------------------

    /// Where `app_id`'s events go from now on (e.g. the gateway's event
    /// endpoint, once its port is known). Returns false for an unknown app.
    pub fn set_event_url(&self, app_id: &str, url: impl Into<String>) -> bool {
        lock(&self.shared.store).set_event_url(app_id, Some(url.into()))
    }

    /// Install `app_id` in one more tenant. Returns false for an unknown app.
    pub fn add_tenant(&self, app_id: &str, tenant_key: &str) -> bool {
        lock(&self.shared.store).add_tenant(app_id, tenant_key)
    }

    /// Make every ticket issued so far invalid: app-token calls presenting
    /// one get [`SimConfig::invalid_ticket_code`] until a new ticket is
    /// pushed. Issued app and tenant tokens stay valid. Returns false for an
    /// unknown app.
    pub fn invalidate_tickets(&self, app_id: &str) -> bool {
        lock(&self.shared.store).invalidate_tickets(app_id)
    }

    /// Delay between a resend call and its push, from now on.
    pub fn set_ticket_push_delay(&self, d: Duration) {
        self.shared.set_ticket_push_delay(d);
    }

    /// Issue a new ticket and push it to the app's event URL now, as an
    /// hourly push would, and wait for the answer. `None` for an unknown app.
    pub async fn push_ticket_now(&self, app_id: &str) -> Option<PushedEvent> {
        push::push_ticket(&self.shared, app_id).await
    }

    /// Send Feishu's subscription check (`url_verification`, encrypted with
    /// the app's Encrypt Key but unsigned, as Feishu sends it) to the app's
    /// event URL; see [`PushedEvent::challenge_echoed`]. `None` for an
    /// unknown app.
    pub async fn check_event_url(&self, app_id: &str) -> Option<PushedEvent> {
        push::push_url_verification(&self.shared, app_id).await
    }

    /// Push any event JSON to the app's event URL, encrypted when the app has
    /// an Encrypt Key and then signed when `sign`. `None` for an unknown app.
    pub async fn push_event(
        &self,
        app_id: &str,
        event: &serde_json::Value,
        sign: bool,
    ) -> Option<PushedEvent> {
        push::push_event(&self.shared, app_id, event, sign).await
    }

    /// Push `event` once to any event URL (`target`), sealed like Feishu's
    /// (encrypted with its Encrypt Key, then signed when `sign`); recorded
    /// with the other pushes.
    pub async fn push_webhook(
        &self,
        target: &webhook::WebhookTarget,
        event: &serde_json::Value,
        sign: bool,
    ) -> PushedEvent {
        webhook::push_to(&self.shared, target, event, sign).await
    }

    /// Push `event` to `target` and push it again after each interval of
    /// `schedule` (Feishu's is [`webhook::FEISHU_REPUSH_SCHEDULE`]) until
    /// it is answered 200. Returns every push.
    pub async fn push_webhook_until_ok(
        &self,
        target: &webhook::WebhookTarget,
        event: &serde_json::Value,
        sign: bool,
        schedule: &[std::time::Duration],
    ) -> Vec<PushedEvent> {
        webhook::push_until_ok(&self.shared, target, event, sign, schedule).await
    }

    /// Clear the recorded requests, token calls, store calls, pushed events,
    /// arrival logs (per key, per endpoint, per resource), resource
    /// violations and the violation, budget-refusal and expired-use
    /// counters. Tokens, tickets, live quota windows, calls in flight, budget
    /// use and pending faults are kept.
    pub fn reset_records(&self) {
        lock(&self.shared.requests).clear();
        lock(&self.shared.token_calls).clear();
        lock(&self.shared.store_calls).clear();
        lock(&self.shared.pushed).clear();
        lock(&self.shared.uploads).clear();
        lock(&self.shared.quota).clear_history();
        lock(&self.shared.resources).clear_history(Instant::now());
        lock(&self.shared.resource_violations).clear();
        for counter in self
            .shared
            .endpoint_arrivals
            .iter()
            .chain(self.shared.endpoint_violations.iter())
        {
            counter.store(0, Ordering::SeqCst);
        }
        self.shared.violations.store(0, Ordering::SeqCst);
        self.shared.budget_refused.store(0, Ordering::SeqCst);
        self.shared.expired_uses.store(0, Ordering::SeqCst);
    }

    /// Stop accepting, close every connection (answers in flight are lost)
    /// and wait until the server task has ended.
    pub async fn shutdown(mut self) {
        lock(&self.shared.push_tasks).abort_all();
        self.task.abort();
        // The task ends as cancelled; that is the expected outcome.
        let _ = (&mut self.task).await;
    }
}

/// The non-zero counters, by endpoint name, in catalog order.
fn nonzero(counters: &[std::sync::atomic::AtomicU64]) -> Vec<(&'static str, u64)> {
    catalog::endpoints()
        .iter()
        .zip(counters)
        .map(|(ep, c)| (ep.name(), c.load(Ordering::SeqCst)))
        .filter(|&(_, n)| n > 0)
        .collect()
}

impl Drop for SimFeishu {
    fn drop(&mut self) {
        // Scheduled pushes hold the shared state: abort them so it is freed.
        lock(&self.shared.push_tasks).abort_all();
        self.task.abort();
    }
}
