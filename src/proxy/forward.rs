//! Phase `forward`: the tenant token injected, the attempts upstream within
//! the timeout (one, or more after a transient failure: `retry.rs`), the one
//! replay after a token-invalid answer, and `response_filter` on the answer
//! that goes back.
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::request::Parts;
use http::{Request, Response};
use tokio::time::Instant;

use super::inspect::{inspect, Inspected};
use crate::feishu::{codes, paths, throttle};
use crate::proxy::body::{ProxyBody, StreamWatch};
use crate::proxy::error::{GatewayError, X_GATEWAY_ERROR};
use crate::tokens::TokenSlot;

use super::headers::{normalize_length, strip_hop_by_hop, upstream_headers};
use super::spans::call_end;
use super::{Gateway, RequestCtx};

/// Largest JSON answer buffered whole to read its `code` (and so replayable).
const INSPECT_LIMIT: usize = 256 * 1024;

impl Gateway {
    /// Phase `forward`: sends the request with the app's tenant token. When
    /// Feishu answers with a token-invalid code (whatever the HTTP status),
    /// drops that token if it is still cached, gets a fresh one and replays
    /// the request ONCE; the client sees only the final answer.
    pub(super) async fn forward(
        &self,
        ctx: &mut RequestCtx,
        parts: &Parts,
        body: Bytes,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let app = ctx.app.ok_or(GatewayError::Internal)?;
        // Made once for every attempt: the caller's path and query (only
        // those go on the wire; the app's upstream says where), the
        // filtered headers, the body.
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        let mut headers = upstream_headers(&parts.headers);
        headers.insert(HOST, self.apps[app].host.clone());
        *req.headers_mut() = headers;
        let mut replayed = false;
        loop {
            // A user's own token goes through untouched and is never
            // replayed: user tokens are the caller's business.
            let (authorization, generation) = match &ctx.user_token {
                Some(user) => (user.clone(), None),
                None => {
                    let slot = self.token_slot(ctx, app);
                    let token = self
                        .tokens
                        .get_slot_traced(&slot, ctx.trace.as_deref())
                        .await
                        .map_err(|e| self.token_failure(ctx, e))?;
                    (token.header.clone(), Some((slot, token.generation)))
                }
            };
            req.headers_mut().insert(AUTHORIZATION, authorization);
            let answer = self.send_retrying(ctx, app, &mut req).await?;
            match (answer.code, generation) {
                (Some(code), Some((slot, generation)))
                    if codes::is_token_invalid(code) && !replayed =>
                {
                    self.tokens.invalidate_slot(&slot, generation);
                    self.metrics.token_replay(app, code);
                    ctx.replayed_after = Some(code);
                    if let Some(trace) = &ctx.trace {
                        trace.replay(code);
                    }
                    replayed = true;
                    tracing::info!(
                        app = %self.apps[app].name,
                        code,
                        "Feishu rejected the tenant token; replaying once with a fresh one"
                    );
                }
                _ => return Ok(self.final_answer(ctx, answer)),
            }
        }
    }

    /// The answer that goes back to the client, buffered or streamed: counted
    /// against the monthly budget; Feishu's throttle codes (whatever the HTTP
    /// status: 99991400 with 400, 1254290 with 200 …) and a 429 without a
    /// code of its own pause their key, any other answer calms its backoff;
    /// a streamed body is watched (idle timer, failures, in-flight gauge).
    pub(super) fn final_answer(
        &self,
        ctx: &mut RequestCtx,
        answer: Inspected,
    ) -> Response<ProxyBody> {
        let code = answer.code;
        self.budget_count(ctx, answer.head.status, code);
        let throttle = code.and_then(throttle::classify);
        let bare_429 = answer.head.status == http::StatusCode::TOO_MANY_REQUESTS
            && (code.is_none() || code == Some(codes::OK));
        if throttle.is_some() || bare_429 {
            self.upstream_throttled(ctx, &answer.head.headers, code, throttle.map(|t| t.pause));
        } else {
            self.upstream_calm(ctx);
        }
        ctx.code = code;
        ctx.logid = answer.head.headers.get(paths::X_TT_LOGID).cloned();
        let mut body = answer.body;
        body.watch(|| {
            let count = |kind| {
                self.metrics
                    .upstream_error_counter(ctx.app, ctx.route, kind)
            };
            StreamWatch::new(
                self.upstream_idle,
                count("idle_timeout"),
                self.metrics.in_flight().clone(),
            )
            .counting_failures(count("reset"), count("protocol"))
        });
        Response::from_parts(answer.head, body)
    }

    /// The token slot a request uses: its tenant's, or its app's.
    pub(super) fn token_slot(&self, ctx: &RequestCtx, app: usize) -> Arc<TokenSlot> {
        match &ctx.tenant {
            Some(t) => Arc::clone(&t.slot),
            None => Arc::clone(self.tokens.app_slot(app)),
        }
    }

    /// No token could be had. For a tenant, Feishu refusing the tenant
    /// token (a Feishu code, not a transport failure or a missing app
    /// token) is the caller's mistake: the tenant is dropped and the refusal
    /// answered as a 400, never retried in a loop.
    pub(super) fn token_failure(
        &self,
        ctx: &RequestCtx,
        e: crate::feishu::FeishuError,
    ) -> GatewayError {
        match (&ctx.tenant, ctx.app) {
            (Some(t), Some(app)) if codes::is_tenant_refusal(e.code) => {
                self.store.forget(app, t);
                GatewayError::UnknownTenant {
                    code: e.code,
                    msg: e.msg,
                }
            }
            _ => GatewayError::TokenUnavailable {
                code: e.code,
                msg: e.msg,
            },
        }
    }

    /// One attempt upstream: the answer's head and inspected body, within
    /// `timeout` (the upstream timeout, or what a retry has left of it).
    /// With a trace, the attempt has a span whose context `req` carries to
    /// Feishu (`spans.rs`).
    pub(super) async fn send(
        &self,
        ctx: &mut RequestCtx,
        app: usize,
        req: &mut Request<Bytes>,
        timeout: std::time::Duration,
    ) -> Result<Inspected, GatewayError> {
        let span = self.call_start(ctx, app, req.headers_mut());
        let req = &*req;
        let started = Instant::now();
        // An HTTP/1.1 connection goes back to the pool when the answer's
        // body has been read to its end: here for a held answer, by the
        // client for a streamed one.
        let attempt = async {
            let resp = self
                .upstreams
                .current()
                .send(&self.apps[app].upstream, req)
                .await?;
            inspect(resp, INSPECT_LIMIT)
                .await
                .map_err(|_| crate::upstream::UpstreamFailure::Reset)
        };
        let result = tokio::time::timeout(timeout, attempt).await;
        let spent = started.elapsed();
        ctx.upstream_time = Some(ctx.upstream_time.unwrap_or_default() + spent);
        let failure = match result {
            Ok(Ok(answer)) => {
                call_end(span, Ok(&answer));
                return Ok(answer);
            }
            Ok(Err(kind)) => kind,
            Err(_) => crate::upstream::UpstreamFailure::Timeout,
        };
        call_end(span, Err(failure.as_str()));
        self.metrics
            .upstream_error(ctx.app, ctx.route, failure.as_str());
        tracing::warn!(
            app = ?ctx.app.map(|a| &self.apps[a].name),
            kind = failure.as_str(),
            "upstream call failed"
        );
        Err(GatewayError::Upstream(failure))
    }

    /// Phase `response_filter`: Feishu's answer goes back unchanged but for
    /// hop-by-hop headers, which belong to the upstream connection.
    pub(super) fn response_filter(&self, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
        normalize_length(resp.headers_mut());
        strip_hop_by_hop(resp.headers_mut());
        // Only the gateway's own answers carry `X-Gateway-Error`: one from
        // upstream would pose as the gateway's verdict.
        resp.headers_mut().remove(X_GATEWAY_ERROR);
        // The version is the client connection's, not the upstream's: an
        // HTTP/1.0 upstream must not make the answer HTTP/1.0.
        *resp.version_mut() = http::Version::HTTP_11;
        resp
    }
}
