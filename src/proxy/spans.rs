//! The request's spans, with `[tracing]` (see `observe::trace`): its own,
//! started in `handle` (the caller's `traceparent` continued) and ended
//! after the access line with the same facts; `quota` around `admit`; one
//! `feishu call` per attempt upstream, whose context goes to Feishu as
//! `traceparent`. The token wait is the token manager's
//! (`TokenManager::get_slot_traced`); retries and a replay are events
//! (`retry.rs`, `forward.rs`). Without a trace (tracing off) every hook
//! returns at once and nothing is made.

use std::sync::Arc;

use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;

use super::inspect::Inspected;
use super::{Gateway, RequestCtx};
use crate::feishu::paths;
use crate::observe::trace::{key, RequestTrace, Span, Tracing};
use crate::proxy::body::ProxyBody;
use crate::proxy::error::GatewayError;

impl Gateway {
    /// The request's trace: its span, a child of the caller's
    /// `traceparent` when there is one; none when the request is part of no
    /// trace (no caller's, and not sampled).
    pub(super) fn trace_start(
        &self,
        tracing: &Arc<Tracing>,
        ctx: &mut RequestCtx,
        req: &Request<Incoming>,
    ) {
        ctx.trace = tracing.request(req.method(), req.headers()).map(Box::new);
    }

    /// Ends the request's span with what the access line says: app, client,
    /// route template, status, Feishu's code and logid, the gateway's own
    /// error, a replay. Never a key, a token, a path or a body.
    pub(super) fn trace_end(
        &self,
        ctx: &RequestCtx,
        trace: RequestTrace,
        resp: &Response<ProxyBody>,
    ) {
        if trace.is_recording() {
            if let Some(app) = ctx.app {
                trace.set(key::APP, self.apps[app].name.clone());
            }
            if let Some(caller) = &ctx.caller {
                trace.set(key::CLIENT, caller.client.name.clone());
            }
            if let Some(id) = ctx.request_id.as_ref().and_then(|v| v.to_str().ok()) {
                trace.set(key::REQUEST_ID, id.to_string());
            }
            if let Some(code) = ctx.code {
                trace.set(key::CODE, code);
            }
            if let Some(logid) = ctx.logid.as_ref().and_then(|v| v.to_str().ok()) {
                trace.set(key::LOGID, logid.to_string());
            }
            if let Some(error) = ctx.gateway_error {
                trace.set(key::GATEWAY_ERROR, error);
            }
            if let Some(code) = ctx.replayed_after {
                trace.set(key::REPLAYED_AFTER, code);
            }
        }
        let route = ctx.route.map(|r| self.catalog.route(r).template.as_str());
        trace.end(route, resp.status().as_u16());
    }

    /// The `quota` span around phase `admit` (the monthly budget, the
    /// resource limits and the quota, with the time spent waiting for a
    /// slot); `None` without a trace.
    pub(super) fn quota_start(&self, ctx: &RequestCtx) -> Option<Span> {
        ctx.trace.as_ref().and_then(|t| t.child("quota"))
    }

    /// Starts the span of one attempt upstream (`feishu call`) and writes
    /// its context into the attempt's headers as `traceparent`: the call's
    /// span is the parent of whatever Feishu records. Not sampled, the
    /// request's own (unsampled) context goes, so the caller's trace still
    /// continues.
    pub(super) fn call_start(
        &self,
        ctx: &mut RequestCtx,
        app: usize,
        headers: &mut HeaderMap,
    ) -> Option<Span> {
        let trace = ctx.trace.as_mut()?;
        let span = trace.call("feishu call");
        trace.inject(span.as_ref(), headers);
        let span = span?;
        span.set(
            key::SERVER,
            self.apps[app].upstream.authority.host().to_string(),
        );
        if let Some(route) = ctx.route {
            span.set(key::ROUTE, self.catalog.route(route).template.clone());
        }
        Some(span)
    }
}

/// The `quota` span's end: `admitted`, or the gateway's reason for
/// refusing.
pub(super) fn quota_end(span: Option<Span>, admitted: &Result<(), GatewayError>) {
    if let Some(span) = span {
        span.set(
            key::QUOTA_OUTCOME,
            admitted
                .as_ref()
                .map_or_else(|e| e.reason(), |()| "admitted"),
        );
    }
}

/// An attempt's outcome on its span: the status, Feishu's `code` and
/// `X-Tt-Logid`; failed for a 4xx or 5xx, or with how the call failed.
pub(super) fn call_end(span: Option<Span>, outcome: Result<&Inspected, &'static str>) {
    let Some(span) = span else {
        return;
    };
    match outcome {
        Ok(answer) => {
            let status = answer.head.status.as_u16();
            span.set(key::STATUS, i64::from(status));
            if let Some(code) = answer.code {
                span.set(key::CODE, code);
            }
            if let Some(logid) = answer
                .head
                .headers
                .get(paths::X_TT_LOGID)
                .and_then(|v| v.to_str().ok())
            {
                span.set(key::LOGID, logid.to_string());
            }
            if status >= 400 {
                span.fail("");
            }
        }
        Err(kind) => {
            span.set(key::ERROR_TYPE, kind);
            span.fail(kind);
        }
    }
}
