//! The phases that decide whether a request may go, cheapest first, and
//! spend nothing on one that may not: `read_body` (size and time limits),
//! `validate` (the route's contract, answered in Feishu's words) and `admit`
//! (the client's share of the quota when it has a `quota_share`, then the
//! (app[, tenant], route) quota: go, wait, or 429; and the pause after
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
use crate::feishu::throttle::Pause;
use crate::proxy::error::GatewayError;
use crate::quota::OverflowMode;
use crate::quota::{Cause, Key, Overflow, PauseCell};

use super::keys::{self, Refusal};
use super::resources::{resource_value, Refused};
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
            query: parts.uri.query(),
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

    /// Phase `admit`: the (app, route) quota, after the client's share of
    /// it (`quota_share`, 429 `share-limited`). Requests on routes without
    /// limits go straight on. Over the limit, reject mode answers 429 at
    /// once; wait mode holds the request (in arrival order) until it may go
    /// or its wait would exceed the maximum. A rejected request spends no
    /// quota.
    pub(super) async fn admit(
        &self,
        ctx: &mut RequestCtx,
        parts: &Parts,
        body: &Bytes,
    ) -> Result<(), GatewayError> {
        // The monthly call budget first (budget.rs): a spent one spends no quota.
        self.budget_check(ctx)?;
        let (Some(app), Some(route)) = (ctx.app, ctx.route) else {
            return Ok(());
        };
        let Some(pair) = self.quota_keys.app_key(app, route) else {
            return Ok(());
        };
        let headers = &parts.headers;
        let overflow = self.overflow(self.catalog.route(route), headers)?;
        self.admit_resources(ctx, parts, body, overflow).await?;
        let admitted = self.admit_endpoint(ctx, pair, overflow).await;
        if admitted.is_ok() {
            for held in &ctx.resources {
                held.commit();
            }
        }
        admitted
    }

    /// The route's per-resource limits (a receiver's 5/s, a table's one
    /// write at a time …), before the endpoint's quota: a resource that
    /// refuses spends nothing. With several rules, one that refuses gives
    /// back what the others took (their long-window slots; their short
    /// windows stay spent, which only errs on the safe side).
    async fn admit_resources(
        &self,
        ctx: &mut RequestCtx,
        parts: &Parts,
        body: &Bytes,
        overflow: Overflow,
    ) -> Result<(), GatewayError> {
        let (Some(app), Some(route)) = (ctx.app, ctx.route) else {
            return Ok(());
        };
        let entry = self.catalog.route(route);
        for &rule in &entry.resources {
            let def = self.resource_keys.rule(rule);
            let Some(value) = resource_value(def, entry, &parts.uri, body) else {
                continue;
            };
            match self.resource_keys.admit(rule, app, &value, overflow).await {
                Ok(held) => ctx.resources.push(held),
                Err(Refused::Unavailable) => return Err(GatewayError::QuotaBackendUnavailable),
                Err(Refused::Limited(r)) => {
                    let why = format!("{}:{}", def.name, r.label());
                    self.metrics.rate_limited(ctx.app, ctx.route, &why);
                    return Err(GatewayError::RateLimited(Box::new(r)));
                }
                Err(Refused::Busy { what, retry_after }) => {
                    let why = format!("{}:{what}", def.name);
                    self.metrics.rate_limited(ctx.app, ctx.route, &why);
                    return Err(GatewayError::ResourceBusy {
                        what: why,
                        retry_after,
                    });
                }
            }
        }
        Ok(())
    }

    /// The (app[, tenant], route) quota, after the client's share key when
    /// it has one; or the pause of a route without a quota.
    async fn admit_endpoint(
        &self,
        ctx: &mut RequestCtx,
        pair: &super::keys::PairKey,
        overflow: Overflow,
    ) -> Result<(), GatewayError> {
        let (Some(app), Some(route)) = (ctx.app, ctx.route) else {
            return Ok(());
        };
        let Some(key) = &pair.key else {
            // No gateway quota (`special` or no documented limit): only the
            // pause after Feishu's own throttle answer holds it.
            return self.sit_out_pause(ctx, &pair.pause, overflow).await;
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
        let key: &Key = tenant.as_deref().unwrap_or(key);
        // A client with a `quota_share`: its share key first (keys.rs).
        let client = ctx.caller.as_ref().map(|c| &c.client);
        let share = client.and_then(|c| self.quota_keys.share_key(c, ctx.tenant.as_deref(), route));
        let acquire = keys::acquire(share.as_ref(), key, overflow);
        let result = match overflow {
            Overflow::Reject => acquire.await,
            Overflow::Wait(_) => {
                let waiting = &pair.wait_metrics(&self.metrics).waiting;
                waiting.inc();
                let r = acquire.await;
                waiting.dec();
                r
            }
        };
        match result {
            Ok(admit) => {
                if !admit.waited.is_zero() {
                    pair.wait_metrics(&self.metrics)
                        .wait
                        .observe(admit.waited.as_secs_f64());
                }
                Ok(())
            }
            Err(Refusal::App(rejection)) if rejection.cause() == Cause::BackendUnavailable => {
                Err(GatewayError::QuotaBackendUnavailable)
            }
            Err(Refusal::App(rejection)) => {
                self.metrics
                    .rate_limited(ctx.app, ctx.route, rejection.label());
                Err(GatewayError::RateLimited(Box::new(rejection)))
            }
            Err(Refusal::Share(rejection)) => {
                let Some(client) = client else {
                    return Err(GatewayError::Internal);
                };
                self.metrics
                    .share_limited(&client.name, ctx.route, rejection.label());
                Err(GatewayError::ShareLimited {
                    client: client.name.clone(),
                    share: client.quota_share.ok_or(GatewayError::Internal)?,
                    rejection: Box::new(rejection),
                })
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

    /// A route without a gateway quota, paused after Feishu throttled it:
    /// wait mode sleeps the pause out when it fits the longest wait; reject
    /// mode (or a longer pause) answers 429 at once. Nothing is sent to
    /// Feishu meanwhile.
    async fn sit_out_pause(
        &self,
        ctx: &RequestCtx,
        pause: &PauseCell,
        overflow: Overflow,
    ) -> Result<(), GatewayError> {
        let Some(left) = pause.left() else {
            return Ok(());
        };
        if let Overflow::Wait(max) = overflow {
            if left <= max {
                tokio::time::sleep(left).await;
                return Ok(());
            }
        }
        self.metrics
            .rate_limited(ctx.app, ctx.route, "upstream-pause");
        Err(GatewayError::UpstreamPaused { retry_after: left })
    }

    /// Feishu throttled us anyway (another client of the same app, a limit
    /// lower than documented, or an endpoint whose limit Feishu does not
    /// publish): pause the narrowest key the code concerns until Feishu's
    /// `x-ogw-ratelimit-reset`, or for the next step of a doubling backoff
    /// (1 s … 30 s) when the answer says no reset time. Requests meanwhile
    /// get the gateway's 429 (or wait) instead of being sent to be
    /// throttled again. A monthly-budget code pauses nothing here.
    pub(super) fn upstream_throttled(
        &self,
        ctx: &RequestCtx,
        headers: &HeaderMap,
        code: Option<i64>,
        scope: Option<Pause>,
    ) {
        // The monthly budget's codes are no throttle: the budget (its own
        // metrics and alerts) handles them, nothing is paused here.
        if scope == Some(Pause::Month) {
            return;
        }
        self.metrics.upstream_throttled(ctx.app, ctx.route, code);
        let (Some(app), Some(route)) = (ctx.app, ctx.route) else {
            return;
        };
        let Some(pair) = self.quota_keys.app_key(app, route) else {
            return;
        };
        let reset = headers
            .get(paths::X_OGW_RATELIMIT_RESET)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Duration::from_secs_f64(s.min(300.0)));
        let pause = pair.backoff.next(reset);
        if scope == Some(Pause::Resource) {
            if let Some(held) = ctx.resources.first() {
                held.entry.pause(pause);
                tracing::warn!(
                    app = %self.apps[app].name,
                    route = %self.catalog.route(route).template,
                    code = ?code,
                    pause_ms = pause.as_millis() as u64,
                    "Feishu throttled one resource of this route; pausing that resource"
                );
                return;
            }
        }
        let tenant = ctx
            .tenant
            .as_ref()
            .and_then(|t| self.quota_keys.tenant_key(t, app, route));
        match (tenant, &pair.key) {
            (Some(k), _) => k.pause(pause),
            (None, Some(k)) => k.pause(pause),
            (None, None) => pair.pause.pause(pause),
        }
        tracing::warn!(
            app = %self.apps[app].name,
            route = %self.catalog.route(route).template,
            code = ?code,
            pause_ms = pause.as_millis() as u64,
            "Feishu throttled this app and route; pausing it"
        );
    }

    /// An answer that was no throttle: the route's backoff starts over.
    pub(super) fn upstream_calm(&self, ctx: &RequestCtx) {
        if let (Some(app), Some(route)) = (ctx.app, ctx.route) {
            if let Some(pair) = self.quota_keys.app_key(app, route) {
                pair.backoff.calm();
            }
        }
    }
}
