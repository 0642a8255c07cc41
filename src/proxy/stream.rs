//! Uploads: the request path of routes whose body limit is above the
//! global one and that have no JSON contract (the upload family of
//! `endpoints/uploads.rs`, or a `[[routes]]` entry given a larger
//! `max_body_bytes`). Their bodies are not buffered whole:
//!
//! 1. `read_start` (in place of `read_body`): a declared length over the
//!    route's limit is answered 413 before anything is read. A body that
//!    declares at most [`STREAM_THRESHOLD`] bytes is read whole (within
//!    `timeouts.body_read`) and, on a form route, its form checked: it then
//!    takes the usual buffered path (replayable). Otherwise the start of the
//!    body is read, within `timeouts.body_read`: on a form route until the
//!    file part begins, so every text field sent before the file is checked
//!    before anything is sent (`Content-Type` must be
//!    `multipart/form-data` with a boundary); at most [`STREAM_THRESHOLD`]
//!    bytes. A body that ends within it takes the buffered path too.
//! 2. `admit`, unchanged: the quota is spent before sending.
//! 3. `forward_streamed`: the token is made fresh first (a streamed request
//!    is never replayed: [`crate::tokens::TokenManager::get_slot_fresh`]),
//!    then the body streams to Feishu ([`UploadBody`]), still counted
//!    against the limit and checked part by part. A violation found
//!    mid-stream (a field after the file with a wrong value, the file over
//!    its size, a missing part at the end, the limit passed without a
//!    `Content-Length`) aborts the upstream request before its last byte,
//!    so Feishu never gets a broken upload, and the client gets the same
//!    answer it would have got before forwarding (413, or 400 naming the
//!    field) as long as Feishu has not answered yet.
//!
//! Timers: between two reads of the client's body, or two writes to
//! Feishu, at most `timeouts.upstream_idle` may pass; past it the upstream
//! request is dropped (aborted), the client is answered 408 (it stalled)
//! or 503 (Feishu stopped reading), its connection closed, and
//! `feishu_gateway_upstream_errors_total{kind="idle_timeout"}` counts it.
//! `timeouts.upstream` counts from the body's last byte.
//!
//! A token-invalid answer to a streamed upload goes to the client as
//! Feishu sent it (the body is gone, it cannot be sent again); the token is
//! dropped if it is still the cached one, so the client's retry gets a new
//! one, and `feishu_gateway_token_invalid_streamed_total{app,code}` counts
//! it.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::inspect::{inspect, Inspected};
use super::upload::{FormDriver, Prefix, Stop, UploadBody, UploadState};
use crate::feishu::codes;
use crate::proxy::body::ProxyBody;
use crate::proxy::error::GatewayError;
use crate::upstream::{OutgoingBody, UpstreamFailure};
use crate::validate::{FormCheck, ValidationMode, Violations};

use super::headers::upstream_headers;
use super::spans::call_end;
use super::{Gateway, RequestCtx};

/// Bodies declaring at most this many bytes are read whole; larger ones
/// (or ones of unknown length) stream, after a checked start of at most
/// this many bytes.
pub const STREAM_THRESHOLD: usize = 64 * 1024;

/// Largest JSON answer buffered whole to read its `code` (as `forward`).
const INSPECT_LIMIT: usize = 256 * 1024;

/// How `read_start` left the body.
pub(super) enum Start {
    /// Read whole (and checked): the buffered path.
    Whole(Bytes),
    /// Its start read and checked; the rest streams.
    Streamed(Box<UploadBody>),
}

/// What ended the wait for Feishu's answer, besides the answer.
enum Watchdog {
    /// Nothing moved for `upstream_idle`; `client`: the body was waiting
    /// for the client.
    Stalled { client: bool },
    /// The body went whole, and no answer came within `timeouts.upstream`.
    Timeout,
}

impl Gateway {
    /// Phase `read_body` for every route: the usual whole read, or for an
    /// upload route the start of a streamed body (see the module doc).
    pub(super) async fn read_start(
        &self,
        ctx: &mut RequestCtx,
        parts: &Parts,
        body: Incoming,
        limit: usize,
    ) -> Result<Start, GatewayError> {
        let streams = limit > self.max_body_bytes
            && ctx.route.is_some_and(|r| self.contracts.get(r).is_none());
        let Some(route) = ctx.route.filter(|_| streams) else {
            return self.read_body(parts, body, limit).await.map(Start::Whole);
        };
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        let enforce = self.catalog.route(route).validation == ValidationMode::Enforce;
        // The form's boundary, or nothing to check.
        let form = match self.contracts.form(route) {
            None => None,
            Some(contract) => {
                let ct = parts
                    .headers
                    .get(CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap_or("(not text)"));
                match ct.map(multer::parse_boundary) {
                    Some(Ok(boundary)) => Some((Arc::clone(contract), boundary)),
                    _ => {
                        // Answered before the body is read.
                        ctx.body_unread = enforce;
                        self.form_broken(ctx, FormCheck::bad_content_type(ct), enforce)?;
                        None
                    }
                }
            }
        };
        if declared.is_some_and(|n| n <= STREAM_THRESHOLD as u64) {
            let bytes = self.read_body(parts, body, limit).await?;
            if let Some((contract, boundary)) = form {
                if let Err(v) = FormDriver::check_whole(contract, boundary, bytes.clone()) {
                    self.form_broken(ctx, v, enforce)?;
                }
            }
            return Ok(Start::Whole(bytes));
        }
        let driver = form.map(|(contract, boundary)| FormDriver::new(contract, boundary));
        let state = UploadState::new(self.metrics.in_flight().clone());
        let mut upload = UploadBody::new(body, declared, limit, driver, enforce, state);
        let read =
            tokio::time::timeout(self.body_read_timeout, upload.read_prefix(STREAM_THRESHOLD))
                .await;
        let read = match read {
            Err(_) => {
                ctx.body_unread = true;
                return Err(GatewayError::BodyTimeout);
            }
            Ok(read) => read,
        };
        if let Some(v) = upload.state().take_logged() {
            self.form_broken(ctx, v, false)?;
        }
        match read {
            Ok(Prefix::Whole(bytes)) => Ok(Start::Whole(bytes)),
            Ok(Prefix::Open) => Ok(Start::Streamed(Box::new(upload))),
            Err(()) => {
                ctx.body_unread = true;
                Err(stop_error(upload.state().stopped(), limit))
            }
        }
    }

    /// A form that breaks its contract: the 400 on an enforced route; on a
    /// `log-only` one, logged and counted, and the request goes on.
    fn form_broken(
        &self,
        ctx: &mut RequestCtx,
        v: Violations,
        enforce: bool,
    ) -> Result<(), GatewayError> {
        if enforce {
            return Err(GatewayError::Invalid(Box::new(v)));
        }
        self.metrics.would_reject(ctx.app, ctx.route);
        tracing::warn!(
            route = ?ctx.route.map(|r| &self.catalog.route(r).template),
            violations = %v.msg(),
            "upload breaks its form (validation = \"log-only\": forwarded)"
        );
        Ok(())
    }

    /// Phase `forward` for a streamed upload: a fresh token, one attempt,
    /// no replay (see the module doc).
    pub(super) async fn forward_streamed(
        &self,
        ctx: &mut RequestCtx,
        parts: &Parts,
        upload: Box<UploadBody>,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let app = ctx.app.ok_or(GatewayError::Internal)?;
        let limit = upload.limit();
        let state = Arc::clone(upload.state());
        let (authorization, generation) = match &ctx.user_token {
            Some(user) => (user.clone(), None),
            None => {
                let slot = self.token_slot(ctx, app);
                let fresh = self.tokens.get_slot_fresh(&slot, ctx.trace.as_deref());
                let token = fresh.await.map_err(|e| {
                    ctx.body_unread = true;
                    self.token_failure(ctx, e)
                })?;
                (token.header.clone(), Some((slot, token.generation)))
            }
        };
        let mut req = Request::new(OutgoingBody::Streamed(Box::pin(*upload)));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        let mut headers = upstream_headers(&parts.headers);
        headers.insert(HOST, self.apps[app].host.clone());
        headers.insert(AUTHORIZATION, authorization);
        let span = self.call_start(ctx, app, &mut headers);
        *req.headers_mut() = headers;

        let started = Instant::now();
        state.touch();
        let send = async {
            let resp = self
                .upstreams
                .current()
                .send_streamed(&self.apps[app].upstream, req)
                .await?;
            inspect(resp, INSPECT_LIMIT)
                .await
                .map_err(|_| UpstreamFailure::Reset)
        };
        let outcome = tokio::select! {
            answer = send => Ok(answer),
            w = self.watchdog(&state) => Err(w),
        };
        ctx.upstream_time = Some(ctx.upstream_time.unwrap_or_default() + started.elapsed());
        call_end(
            span,
            match &outcome {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(failure)) => Err(failure.as_str()),
                Err(Watchdog::Stalled { .. }) => Err("idle_timeout"),
                Err(Watchdog::Timeout) => Err("timeout"),
            },
        );
        if let Some(v) = state.take_logged() {
            self.form_broken(ctx, v, false)?;
        }
        let failure = match outcome {
            Ok(Ok(answer)) => {
                state.answered();
                return Ok(self.streamed_answer(ctx, app, answer, generation));
            }
            // The body's own verdict explains a failed exchange.
            Ok(Err(failure)) => match state.stopped() {
                Some(stop) => {
                    ctx.body_unread = !state.is_ended();
                    return Err(stop_error(Some(stop), limit));
                }
                None => failure,
            },
            Err(Watchdog::Stalled { client }) => {
                state.abandon();
                self.metrics
                    .upstream_error(ctx.app, ctx.route, "idle_timeout");
                tracing::warn!(
                    idle = ?self.upstream_idle,
                    side = if client { "client" } else { "feishu" },
                    "a streamed upload stalled: aborted (timeouts.upstream_idle)"
                );
                ctx.body_unread = true;
                return Err(if client {
                    GatewayError::BodyTimeout
                } else {
                    GatewayError::Upstream(UpstreamFailure::Timeout)
                });
            }
            Err(Watchdog::Timeout) => UpstreamFailure::Timeout,
        };
        ctx.body_unread = !state.is_ended();
        self.metrics
            .upstream_error(ctx.app, ctx.route, failure.as_str());
        tracing::warn!(
            app = %self.apps[app].name,
            kind = failure.as_str(),
            "upstream call failed (streamed upload)"
        );
        Err(GatewayError::Upstream(failure))
    }

    /// Resolves when the upload stalls for `upstream_idle`, or when its
    /// body went whole and no answer came within the upstream timeout.
    async fn watchdog(&self, state: &UploadState) -> Watchdog {
        loop {
            if state.is_ended() {
                tokio::time::sleep(self.upstream_timeout).await;
                return Watchdog::Timeout;
            }
            let due = state.last_progress() + self.upstream_idle;
            if Instant::now() >= due {
                return Watchdog::Stalled {
                    client: state.waiting_on_client(),
                };
            }
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = state.wait_ended() => {}
            }
        }
    }

    /// Feishu's answer to a streamed upload, on its way back: a
    /// token-invalid code drops the token (not replayed), the answer counts
    /// against the monthly budget, a throttle pauses its key, and a
    /// streamed answer is watched like any other (as in `forward`).
    fn streamed_answer(
        &self,
        ctx: &mut RequestCtx,
        app: usize,
        answer: Inspected,
        generation: Option<(Arc<crate::tokens::TokenSlot>, u64)>,
    ) -> Response<ProxyBody> {
        if let (Some(code), Some((slot, generation))) = (answer.code, &generation) {
            if codes::is_token_invalid(code) {
                self.tokens.invalidate_slot(slot, *generation);
                self.metrics.token_invalid_streamed(app, code);
                tracing::warn!(
                    app = %self.apps[app].name,
                    code,
                    "Feishu rejected the tenant token of a streamed upload; \
                     passed to the caller (not replayed), token dropped"
                );
            }
        }
        // As `forward` does with its final answer.
        self.final_answer(ctx, answer)
    }
}

/// The answer to an upload stopped by its body.
fn stop_error(stop: Option<Stop>, limit: usize) -> GatewayError {
    match stop {
        Some(Stop::TooLarge) => GatewayError::BodyTooLarge { limit },
        Some(Stop::Invalid(v)) => GatewayError::Invalid(v),
        Some(Stop::ClientAborted) => GatewayError::BodyAborted,
        Some(Stop::Abandoned) => GatewayError::BodyTimeout,
        None => GatewayError::Internal,
    }
}
