//! The phases that decide whether a request may go, cheapest first, and
//! spend nothing on one that may not: `read_body` (size and time limits),
//! `validate` (the route's contract, answered in Feishu's words) and `admit`
//! (the (app[, tenant], route) quota: go, wait, or 429; and the pause after
//! Feishu throttled us anyway).
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http::HeaderMap;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::endpoints::Route;
use crate::feishu::paths;
use crate::proxy::error::GatewayError;
use crate::quota::OverflowMode;
use crate::quota::{Cause, Overflow};
use crate::validate::RequestView;
use crate::validate::ValidationMode;

use super::{Gateway, RequestCtx, X_GATEWAY_MAX_WAIT};

impl Gateway {
    /// Phase `read_body`: the whole body, within `max_body_bytes` and the
    /// body timeout. A declared length over the limit is refused before
    /// reading anything; reading stops at the limit otherwise.
    pub(super) async fn read_body(
        &self,
        parts: &Parts,
        body: Incoming,
        limit: usize,
    ) -> Result<Bytes, GatewayError> {
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        let collected =
            tokio::time::timeout(self.body_read_timeout, Limited::new(body, limit).collect())
                .await
                .map_err(|_| GatewayError::BodyTimeout)?;
        match collected {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                Err(GatewayError::BodyTooLarge { limit })
            }
            Err(_) => Err(GatewayError::BodyAborted),
        }
    }

    /// The body limit of the request's route, or the global one.
    pub(super) fn body_limit(&self, ctx: &RequestCtx) -> usize {
        ctx.route
            .and_then(|r| self.catalog.route(r).max_body_bytes)
            .unwrap_or(self.max_body_bytes)
    }

    /// Phase `validate`: the route's contract (path parameters, headers,
    /// body), BEFORE any quota is spent. Bad input is answered here with
    /// Feishu's 400 / 232001 and every violation listed; nothing is sent.
    /// In `log-only` mode it is logged and counted, and forwarded.
    pub(super) fn validate(
        &self,
        ctx: &mut RequestCtx,
        parts: &Parts,
        body: &Bytes,
    ) -> Result<(), GatewayError> {
        let Some(route) = ctx.route else {
            return Ok(());
        };
        let Some(contract) = self.contracts.get(route) else {
            return Ok(());
        };
        let entry = self.catalog.route(route);
        let view = RequestView {
            route: entry,
            path: parts.uri.path(),
            headers: &parts.headers,
            body,
        };
        let Err(violations) = contract.check(&view) else {
            return Ok(());
        };
        match entry.validation {
            ValidationMode::Enforce => Err(GatewayError::Invalid(Box::new(violations))),
            ValidationMode::LogOnly => {
                self.metrics.would_reject(ctx.app, ctx.route);
                tracing::warn!(
                    route = %entry.template,
                    violations = %violations.msg(),
                    "request breaks its contract (validation = \"log-only\": forwarded)"
                );
                Ok(())
            }
        }
    }

    /// Phase `admit`: the (app, route) quota. Requests on routes without
    /// limits go straight on. Over the limit, reject mode answers 429 at
    /// once; wait mode holds the request (in arrival order) until it may go
    /// or its wait would exceed the maximum. A rejected request spends no
    /// quota.
    pub(super) async fn admit(
        &self,
        ctx: &mut RequestCtx,
        headers: &HeaderMap,
    ) -> Result<(), GatewayError> {
        // The monthly call budget first (budget.rs): a spent one spends no quota.
        self.budget_check(ctx)?;
        let (Some(app), Some(route)) = (ctx.app, ctx.route) else {
            return Ok(());
        };
        let Some(pair) = self.quota_keys.app_key(app, route) else {
            return Ok(());
        };
        // Store apps: Feishu's limits hold per tenant, so each tenant has
        // its own keys (same plans; in Redis with the Redis backend); the
        // (app, route) metrics are shared.
        let tenant = match &ctx.tenant {
            Some(t) => match self.quota_keys.tenant_key(t, app, route) {
                Some(k) => Some(k),
                None => return Ok(()),
            },
            None => None,
        };
        let overflow = self.overflow(self.catalog.route(route), headers)?;
        let acquire = async {
            match &tenant {
                Some(key) => key.acquire(overflow).await,
                None => pair.key.acquire(overflow).await,
            }
        };
        let pair = &pair.metrics;
        let result = match overflow {
            Overflow::Reject => acquire.await,
            Overflow::Wait(_) => {
                pair.waiting.inc();
                let r = acquire.await;
                pair.waiting.dec();
                r
            }
        };
        match result {
            Ok(admit) => {
                if !admit.waited.is_zero() {
                    pair.wait.observe(admit.waited.as_secs_f64());
                }
                Ok(())
            }
            Err(rejection) if rejection.cause() == Cause::BackendUnavailable => {
                Err(GatewayError::QuotaBackendUnavailable)
            }
            Err(rejection) => {
                self.metrics
                    .rate_limited(ctx.app, ctx.route, rejection.label());
                Err(GatewayError::RateLimited(Box::new(rejection)))
            }
        }
    }

    /// Reject or wait, by route config, overridden per request by
    /// `X-Gateway-Max-Wait: <ms>` (capped by the configured maximum).
    pub(super) fn overflow(
        &self,
        route: &Route,
        headers: &HeaderMap,
    ) -> Result<Overflow, GatewayError> {
        let max = route.max_wait.unwrap_or(self.quota_config.max_wait);
        if let Some(v) = headers.get(X_GATEWAY_MAX_WAIT) {
            let ms: u64 = v.to_str().ok().and_then(|v| v.trim().parse().ok()).ok_or(
                GatewayError::BadHeader {
                    name: "X-Gateway-Max-Wait",
                    expected: "a whole number of milliseconds",
                },
            )?;
            return Ok(if ms == 0 {
                Overflow::Reject
            } else {
                Overflow::Wait(Duration::from_millis(ms).min(max))
            });
        }
        Ok(match route.overflow.unwrap_or(self.quota_config.overflow) {
            OverflowMode::Reject => Overflow::Reject,
            OverflowMode::Wait => Overflow::Wait(max),
        })
    }

    /// Feishu throttled us anyway (another client of the same app, or a
    /// limit lower than configured): pause the key until Feishu's reset, so
    /// requests meanwhile get the gateway's 429 (or wait) instead of being
    /// sent to be throttled again.
    pub(super) fn upstream_throttled(&self, ctx: &RequestCtx, headers: &HeaderMap) {
        self.metrics.upstream_throttled(ctx.app, ctx.route);
        let (Some(app), Some(route)) = (ctx.app, ctx.route) else {
            return;
        };
        let Some(pair) = self.quota_keys.app_key(app, route) else {
            return;
        };
        let secs = headers
            .get(paths::X_OGW_RATELIMIT_RESET)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(1)
            .clamp(1, 300);
        let pause = Duration::from_secs(secs);
        match ctx
            .tenant
            .as_ref()
            .and_then(|t| self.quota_keys.tenant_key(t, app, route))
        {
            Some(k) => k.pause(pause),
            None => pair.key.pause(pause),
        }
        tracing::warn!(
            app = %self.apps[app].name,
            route = %self.catalog.route(route).template,
            pause_secs = secs,
            "Feishu throttled this app and route; pausing it"
        );
    }
}
