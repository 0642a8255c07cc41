//! The request path, as named phases.
//!
//! [`Gateway::handle`] runs every request through these phases, in order.
//! Each returns `Err(GatewayError)` when it answers the request itself; the
//! error becomes the response in one place ([`GatewayError::into_response`]).
//! `docs/phases.md` draws the order with the early answers, the replay and
//! the failure edges.
//!
//! | phase             | file              | what belongs there                                   |
//! |-------------------|-------------------|------------------------------------------------------|
//! | `event_callback`  | `front.rs`        | Feishu's pushes to `/feishu/events/<app>`: verified, to the event hub |
//! | `route`           | `front.rs`        | is this an `/open-apis/` path? which catalog entry?  |
//! | `issue_token`     | `front.rs`        | Feishu's token endpoints, answered by the gateway    |
//! | `authenticate`    | `authenticate.rs` | which client is calling (and with which key), so which app |
//! | `authorize`       | `authenticate.rs` | may this client call this endpoint (its `allow` list) |
//! | `tenant`          | `authenticate.rs` | a store app's tenant for this request                |
//! | `read_body`       | `admit.rs`        | buffer the body within the size and time limits      |
//! |                   | `stream.rs`       | uploads: a checked start, then the body streams      |
//! | `validate`        | `admit.rs`        | the route's contract, answered in Feishu's words     |
//! | `admit`           | `admit.rs`        | the monthly budget (`budget.rs`), then the client's share (`quota_share`) and the (app[, tenant], route) quota: go, wait, or 429 |
//! | `forward`         | `forward.rs`      | inject the token, send, replay once on token-invalid; count the answer against the budget (`budget.rs`) |
//! |                   | `retry.rs`        | the attempts: retries by code, safe ones, in budget and time |
//! |                   | `stream.rs`       | uploads: a fresh token, sent once, never replayed    |
//! | `response_filter` | `forward.rs`      | strip hop-by-hop headers from Feishu's answer        |
//! | `logging`         | `log.rs`          | one access-log line and the request metrics          |
//! |                   | `spans.rs`        | the request's span ended (with `[tracing]`)          |
//!
//! Beside them: [`RequestCtx`] (`ctx.rs`), the per-request state; `headers.rs`,
//! which headers cross; `inspect.rs`, Feishu's `code` read off an answer;
//! `keys.rs` and `resources.rs`, the quota keys `admit` acquires (per route,
//! with a client's share key before it, and per resource), made on first use;
//! `upload.rs`, an upload's body on its way to Feishu, counted and its
//! multipart form checked as it streams;
//! [`body`], the answer body; [`error`], every answer the gateway writes
//! itself; `spans.rs`, the request's trace (`[tracing]`): its span started
//! in `handle`, one for `admit` (`quota`), one per attempt upstream, the
//! token wait (made by the token manager), all `None` when tracing is off.
//! Shared state lives on [`Gateway`], never in statics.

mod admit;
mod authenticate;
pub mod body;
mod budget;
mod ctx;
pub mod error;
mod forward;
mod front;
mod headers;
mod inspect;
mod keys;
mod log;
mod resources;
mod retry;
mod spans;
mod stream;
mod upload;

pub use ctx::RequestCtx;
use front::token_endpoint;
pub use keys::{PairKey, QuotaKeys};
pub use resources::ResourceKeys;
pub use retry::{Retries, RetryPolicy};
use stream::Start;

use std::sync::Arc;

use bytes::Bytes;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::auth::sdk_token::TokenIssuer;
use crate::auth::ClientTable;
use crate::budget::Budgets;
use crate::endpoints::Catalog;
use crate::endpoints::Contracts;
use crate::events::webhook::Intake;
use crate::events::EventHub;
use crate::observe::metrics::Metrics;
use crate::observe::trace::Tracing;
use crate::proxy::body::ProxyBody;
use crate::proxy::error::GatewayError;
use crate::quota::Engine;
use crate::quota::QuotaConfig;
use crate::store_apps::StoreApps;
use crate::tokens::TokenManager;
use crate::upstream::Upstream;
use crate::upstream::Upstreams;

/// Header carrying the request id, kept from the caller or generated.
pub const X_REQUEST_ID: &str = "x-request-id";
/// The client's key, sent beside a user access token.
pub const X_GATEWAY_KEY: &str = "x-gateway-key";
/// Feishu's event pushes (webhook): `POST /feishu/events/<app name>`.
pub const EVENTS_PREFIX: &str = "/feishu/events/";
/// A store app's client names its tenant here.
pub const X_TENANT_KEY: &str = "x-tenant-key";

/// Per-request wait-mode override: `X-Gateway-Max-Wait: <ms>` (0 = reject).
pub const X_GATEWAY_MAX_WAIT: &str = "x-gateway-max-wait";

/// Shared state of the gateway: everything a phase may consult.
pub struct Gateway {
    pub(crate) apps: Vec<AppRoute>,
    /// The clients, their keys and allow lists: one value built from
    /// config (`app::build`), which a live reload can swap whole.
    pub(crate) clients: Arc<ClientTable>,
    pub(crate) issuer: TokenIssuer,
    pub(crate) catalog: Catalog,
    pub(crate) contracts: Contracts,
    pub(crate) tokens: Arc<TokenManager>,
    pub(crate) store: Arc<StoreApps>,
    /// The event hub (lives as long as the process, shared by every
    /// generation).
    pub(crate) events: EventHub,
    /// The webhook verifiers of this generation's apps.
    pub(crate) event_intake: Intake,
    pub(crate) upstreams: Upstreams,
    pub(crate) metrics: Arc<Metrics>,
    /// The quota keys per (app[, tenant], route), made on first use, and
    /// the engine they are made on.
    pub(crate) quota_keys: QuotaKeys,
    /// Per-resource keys (a receiver, a document, a table …), made on first
    /// use.
    pub(crate) resource_keys: ResourceKeys,
    pub(crate) quota_config: QuotaConfig,
    /// The monthly call budgets, checked in `admit` and counted in
    /// `forward`.
    pub(crate) budget: Arc<Budgets>,
    pub(crate) max_body_bytes: usize,
    pub(crate) body_read_timeout: Duration,
    pub(crate) upstream_timeout: Duration,
    /// The longest gap between reads of a streamed answer body.
    pub(crate) upstream_idle: Duration,
    /// Retries by code: the policy and every app's budget.
    pub(crate) retries: Retries,
    /// The tracer, when `[tracing]` is enabled; `None` makes no span at all.
    pub(crate) tracing: Option<Arc<Tracing>>,
}

/// Where an app's requests go.
pub struct AppRoute {
    pub(crate) name: String,
    pub(crate) upstream: Upstream,
    /// `Host` for its upstream, made once.
    pub(crate) host: HeaderValue,
}

impl Gateway {
    /// Handles one request through every phase. Never fails: a phase that
    /// answers itself produces a gateway JSON answer.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let _in_flight = InFlight::new(&self.metrics);
        let mut ctx = RequestCtx::new(&req);
        if let Some(tracing) = &self.tracing {
            self.trace_start(tracing, &mut ctx, &req);
        }
        let resp = match self.phases(&mut ctx, req).await {
            Ok(resp) => resp,
            Err(err) => {
                ctx.code = Some(err.code());
                ctx.gateway_error = Some(err.reason());
                let mut resp = err.into_response();
                if ctx.body_unread {
                    resp.headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
        };
        self.logging(&ctx, &resp);
        if let Some(trace) = ctx.trace.take() {
            self.trace_end(&ctx, *trace, &resp);
        }
        resp
    }

    async fn phases(
        &self,
        ctx: &mut RequestCtx,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let (parts, body) = req.into_parts();
        if let Some(app) = parts.uri.path().strip_prefix(EVENTS_PREFIX) {
            return self.event_callback(&parts, body, app).await;
        }
        self.route(ctx, &parts)?;
        if let Some(field) = token_endpoint(parts.uri.path()) {
            return self.issue_token(ctx, &parts, body, field).await;
        }
        self.authenticate(ctx, &parts.headers)?;
        self.authorize(ctx, &parts)?;
        self.tenant(ctx, &parts.headers)?;
        let body = match self
            .read_start(ctx, &parts, body, self.body_limit(ctx))
            .await?
        {
            Start::Whole(body) => body,
            Start::Streamed(upload) => {
                // Refused from here on, the client's body is left unread.
                ctx.body_unread = true;
                // Resource keys read from a JSON body do not apply to an
                // upload; those of its path, query and endpoint do.
                let quota = self.quota_start(ctx);
                let admitted = self.admit(ctx, &parts, &Bytes::new()).await;
                spans::quota_end(quota, &admitted);
                admitted?;
                let resp = self.forward_streamed(ctx, &parts, upload).await?;
                return Ok(self.response_filter(resp));
            }
        };
        self.validate(ctx, &parts, &body)?;
        let quota = self.quota_start(ctx);
        let admitted = self.admit(ctx, &parts, &body).await;
        spans::quota_end(quota, &admitted);
        admitted?;
        let resp = self.forward(ctx, &parts, body).await?;
        Ok(self.response_filter(resp))
    }

    /// The store apps (tickets, tenants, event endpoint).
    pub fn store(&self) -> &Arc<StoreApps> {
        &self.store
    }

    /// The event hub (for the long connections).
    pub fn events(&self) -> &EventHub {
        &self.events
    }

    /// The token manager (for `/readyz`).
    pub fn tokens(&self) -> &Arc<TokenManager> {
        &self.tokens
    }

    /// The quota engine (for `/readyz`).
    pub fn quota(&self) -> &Engine {
        self.quota_keys.engine()
    }

    /// The monthly call budgets (loaded, synced and flushed by the
    /// runtime).
    pub fn budget(&self) -> &Arc<Budgets> {
        &self.budget
    }

    /// The metrics (for `/metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The tracer, when `[tracing]` is enabled.
    pub fn tracing(&self) -> Option<&Arc<Tracing>> {
        self.tracing.as_ref()
    }
}

/// Counts a request in the in-flight gauge for as long as it lives.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.in_flight().inc();
        InFlight(metrics.in_flight())
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
