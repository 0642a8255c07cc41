//! Every answer the gateway writes itself, and the one place that maps each
//! to its HTTP status, `X-Gateway-Error` reason and Feishu-shaped JSON body.
//!
//! The official SDKs JSON-decode every answer and read `code` and `msg`, so
//! gateway-made answers use Feishu's own codes where one fits (99991661,
//! 99991663, 99991400, 99991403, 232001) and a small documented set of gateway codes
//! otherwise ([`codes`]). Upstream failures are 502/503, never 504: the Go SDK
//! turns any 504 into a timeout and drops its body.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::feishu::codes;
use crate::feishu::paths::{X_OGW_RATELIMIT_LIMIT, X_OGW_RATELIMIT_RESET};
use crate::proxy::body::ProxyBody;
use crate::upstream::UpstreamFailure;

/// An answer the gateway writes itself instead of Feishu's.
#[derive(Debug, Clone)]
pub enum GatewayError {
    /// The path is not an `/open-apis/` path the gateway forwards.
    NotFound,
    /// The client's `allow` list does not include this endpoint.
    Forbidden {
        /// The client's name (not a secret).
        client: String,
        /// The request's method.
        method: String,
        /// The catalog route's template; `None`: the path matched none.
        route: Option<String>,
    },
    /// No usable `Authorization: Bearer` header.
    MissingCredentials,
    /// The bearer key is not a known client key.
    InvalidCredentials,
    /// A user access token (`u-…`) came without a valid `X-Gateway-Key`.
    UserTokenWithoutKey,
    /// The token endpoint got an unknown key or an app id the client may
    /// not use (never says which).
    InvalidAppCredentials,
    /// The token endpoint got a body that is not `{"app_id", "app_secret"}`.
    BadTokenRequest,
    /// The request body is larger than the limit.
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request body did not arrive within the body timeout.
    BodyTimeout,
    /// The client aborted while sending its body.
    BodyAborted,
    /// A store app's client named no tenant (`X-Tenant-Key`).
    MissingTenant,
    /// Feishu refused a tenant token for the named tenant.
    UnknownTenant {
        /// Feishu's code.
        code: i64,
        /// Feishu's msg.
        msg: String,
    },
    /// An event callback failed verification (signature, token, cipher,
    /// shape); answered with this status.
    BadCallback(StatusCode),
    /// The event hub did not accept a pushed event (the reason is a fixed
    /// text): 503, so Feishu pushes it again.
    EventRefused(&'static str),
    /// The request breaks its route's contract.
    Invalid(Box<crate::validate::Violations>),
    /// A gateway control header has a value it cannot use.
    BadHeader {
        /// The header, as documented.
        name: &'static str,
        /// What it should hold.
        expected: &'static str,
    },
    /// No valid tenant token could be had.
    TokenUnavailable {
        /// Feishu's code from the token call, or a gateway code.
        code: i64,
        /// Feishu's msg from the token call, or what went wrong.
        msg: String,
    },
    /// Feishu could not be reached or failed mid-answer.
    Upstream(UpstreamFailure),
    /// Over the (app, route) quota: rejected at once or after waiting.
    RateLimited(Box<crate::quota::Rejection>),
    /// Over the client's share of the (app, route) quota (`quota_share`):
    /// rejected at once or after waiting, whatever the app's quota has left.
    ShareLimited {
        /// The client's name (not a secret).
        client: String,
        /// Its share, as configured.
        share: crate::quota::Share,
        /// The share key's rejection (its windows are the app's, scaled).
        rejection: Box<crate::quota::Rejection>,
    },
    /// A route without a gateway quota that Feishu throttled: paused until
    /// Feishu's reset (or the backoff) runs out.
    UpstreamPaused {
        /// Time left on the pause.
        retry_after: std::time::Duration,
    },
    /// A per-resource limit other than a rate: its calls in flight, a long
    /// window, its pause after Feishu's answer, or a full table.
    ResourceBusy {
        /// The rule and limit, e.g. `bitable.table:concurrency`.
        what: String,
        /// When to try again.
        retry_after: std::time::Duration,
    },
    /// The shared quota backend is unavailable and `quota.fail = "closed"`.
    QuotaBackendUnavailable,
    /// A counted call of an app whose monthly call budget is spent.
    BudgetExhausted(Box<crate::budget::Exhausted>),
    /// A bug: a panic or an impossible state.
    Internal,
}

impl GatewayError {
    /// HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::Forbidden { .. } => StatusCode::FORBIDDEN,
            GatewayError::MissingCredentials
            | GatewayError::InvalidCredentials
            | GatewayError::UserTokenWithoutKey => StatusCode::UNAUTHORIZED,
            GatewayError::InvalidAppCredentials | GatewayError::BadTokenRequest => {
                StatusCode::BAD_REQUEST
            }
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::BodyAborted
            | GatewayError::Invalid(_)
            | GatewayError::BadHeader { .. }
            | GatewayError::MissingTenant
            | GatewayError::UnknownTenant { .. } => StatusCode::BAD_REQUEST,
            GatewayError::BadCallback(status) => *status,
            GatewayError::EventRefused(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::TokenUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Upstream(UpstreamFailure::Timeout) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Upstream(_) => StatusCode::BAD_GATEWAY,
            GatewayError::RateLimited(_)
            | GatewayError::ShareLimited { .. }
            | GatewayError::UpstreamPaused { .. }
            | GatewayError::ResourceBusy { .. }
            | GatewayError::BudgetExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::QuotaBackendUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Value of the `X-Gateway-Error` header.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::NotFound => "not-found",
            GatewayError::Forbidden { .. } => "forbidden",
            GatewayError::MissingCredentials
            | GatewayError::InvalidCredentials
            | GatewayError::UserTokenWithoutKey
            | GatewayError::InvalidAppCredentials => "unauthenticated",
            GatewayError::BadTokenRequest => "invalid-request",
            GatewayError::BodyTooLarge { .. } => "payload-too-large",
            GatewayError::BodyTimeout => "body-timeout",
            GatewayError::BodyAborted => "body-aborted",
            GatewayError::BadHeader { .. } | GatewayError::Invalid(_) => "invalid-request",
            GatewayError::MissingTenant => "missing-tenant",
            GatewayError::UnknownTenant { .. } => "unknown-tenant",
            GatewayError::BadCallback(_) => "invalid-callback",
            GatewayError::EventRefused(_) => "event-refused",
            GatewayError::TokenUnavailable { .. } => "token-unavailable",
            GatewayError::Upstream(UpstreamFailure::Timeout) => "upstream-timeout",
            GatewayError::Upstream(_) => "upstream-unavailable",
            GatewayError::RateLimited(_)
            | GatewayError::UpstreamPaused { .. }
            | GatewayError::ResourceBusy { .. } => "rate-limited",
            GatewayError::ShareLimited { .. } => "share-limited",
            GatewayError::BudgetExhausted(_) => "budget-exhausted",
            GatewayError::QuotaBackendUnavailable => "quota-backend-unavailable",
            GatewayError::Internal => "internal",
        }
    }

    /// The `code` of the JSON body.
    pub fn code(&self) -> i64 {
        match self {
            GatewayError::NotFound => codes::GW_NOT_FOUND,
            GatewayError::Forbidden { .. } => codes::GW_FORBIDDEN,
            GatewayError::MissingCredentials => codes::AUTH_MISSING,
            GatewayError::InvalidCredentials => codes::TENANT_TOKEN_INVALID,
            GatewayError::UserTokenWithoutKey => codes::AUTH_MISSING,
            GatewayError::InvalidAppCredentials => codes::APP_SECRET_INVALID,
            GatewayError::BadTokenRequest => codes::BAD_REQUEST,
            GatewayError::BodyTooLarge { .. } => codes::INVALID_PARAM,
            GatewayError::BodyTimeout => codes::GW_BODY_TIMEOUT,
            GatewayError::BodyAborted | GatewayError::BadHeader { .. } => codes::INVALID_PARAM,
            GatewayError::Invalid(v) => v.code(),
            GatewayError::MissingTenant => codes::INVALID_PARAM,
            GatewayError::UnknownTenant { code, .. } => *code,
            GatewayError::BadCallback(_) => codes::BAD_REQUEST,
            GatewayError::EventRefused(_) => codes::GW_EVENT_REFUSED,
            GatewayError::TokenUnavailable { code, .. } => *code,
            GatewayError::Upstream(UpstreamFailure::Timeout) => codes::GW_UPSTREAM_TIMEOUT,
            GatewayError::Upstream(_) => codes::GW_UPSTREAM_UNAVAILABLE,
            GatewayError::RateLimited(_)
            | GatewayError::ShareLimited { .. }
            | GatewayError::UpstreamPaused { .. }
            | GatewayError::ResourceBusy { .. } => codes::RATE_LIMITED,
            GatewayError::BudgetExhausted(_) => codes::MONTHLY_QUOTA_EXCEEDED,
            GatewayError::QuotaBackendUnavailable => codes::GW_QUOTA_BACKEND_UNAVAILABLE,
            GatewayError::Internal => codes::GW_INTERNAL,
        }
    }

    /// The `msg` of the JSON body: one sentence, never a secret.
    pub fn msg(&self) -> String {
        match self {
            GatewayError::NotFound => {
                "feishu-gateway: no such path; only /open-apis/... is forwarded to Feishu".into()
            }
            GatewayError::Forbidden { client, method, route } => match route {
                Some(route) => format!(
                    "feishu-gateway: client {client:?} may not call {method} {route}: it is not in the client's allow list in the gateway's config"
                ),
                None => format!(
                    "feishu-gateway: client {client:?} may not call this {method} path (outside the gateway's catalog): it is not in the client's allow list in the gateway's config"
                ),
            },
            GatewayError::MissingCredentials => {
                "feishu-gateway: missing or malformed Authorization header; send \"Authorization: Bearer <gateway key>\"".into()
            }
            GatewayError::InvalidCredentials => {
                "feishu-gateway: the bearer credential is not a valid gateway key or token".into()
            }
            GatewayError::UserTokenWithoutKey => {
                "feishu-gateway: a user access token needs the client's gateway key in X-Gateway-Key".into()
            }
            GatewayError::InvalidAppCredentials => "app secret invalid".into(),
            GatewayError::BadTokenRequest => {
                "feishu-gateway: the body must be {\"app_id\": \"cli_…\", \"app_secret\": \"<gateway key>\"}".into()
            }
            GatewayError::BodyTooLarge { limit } => {
                format!("feishu-gateway: request body is larger than the limit of {limit} bytes")
            }
            GatewayError::BodyTimeout => {
                "feishu-gateway: the request body did not arrive in time".into()
            }
            GatewayError::BodyAborted => {
                "feishu-gateway: the request body could not be read".into()
            }
            GatewayError::Invalid(v) => v.msg(),
            GatewayError::MissingTenant => {
                "feishu-gateway: this client's app is a store app: name the tenant in X-Tenant-Key".into()
            }
            GatewayError::UnknownTenant { code, msg } => format!(
                "feishu-gateway: Feishu refused a tenant_access_token for this tenant ({code}: {msg}); is the app installed there?"
            ),
            GatewayError::BadCallback(_) => {
                "feishu-gateway: event callback refused (signature, verification token or encryption)".into()
            }
            GatewayError::EventRefused(reason) => {
                format!("feishu-gateway: event not accepted ({reason}); push it again")
            }
            GatewayError::BadHeader { name, expected } => {
                format!("feishu-gateway: header {name} must be {expected}")
            }
            GatewayError::TokenUnavailable { msg, .. } => {
                format!("feishu-gateway: no valid tenant_access_token: {msg}")
            }
            GatewayError::Upstream(UpstreamFailure::Timeout) => {
                "feishu-gateway: Feishu did not answer in time".into()
            }
            GatewayError::Upstream(kind) => format!(
                "feishu-gateway: Feishu could not be reached ({})",
                kind.as_str()
            ),
            GatewayError::ResourceBusy { what, retry_after } => format!(
                "request trigger frequency limit: feishu-gateway holds this resource ({what}); retry after {} s",
                crate::quota::whole_secs(*retry_after)
            ),
            GatewayError::UpstreamPaused { retry_after } => format!(
                "request trigger frequency limit: Feishu throttled this endpoint for this app, and feishu-gateway holds calls to it until Feishu's reset; retry after {} s",
                crate::quota::whole_secs(*retry_after)
            ),
            GatewayError::RateLimited(r) => format!(
                "request trigger frequency limit: feishu-gateway holds this app to {} for this endpoint; retry after {} s",
                r.label(),
                r.reset_secs()
            ),
            GatewayError::ShareLimited {
                client,
                share,
                rejection,
            } => format!(
                "request trigger frequency limit: feishu-gateway holds client {client:?} to its quota_share ({share}) of this app's quota for this endpoint, {}; retry after {} s",
                rejection.label(),
                rejection.reset_secs()
            ),
            GatewayError::QuotaBackendUnavailable => {
                "feishu-gateway: the shared quota backend is unavailable; retry later".into()
            }
            GatewayError::BudgetExhausted(e) => e.msg(),
            GatewayError::Internal => "feishu-gateway: internal error".into(),
        }
    }

    /// The complete answer. When the request body was left unread (too
    /// large, too slow, aborted), the answer says `Connection: close`: the
    /// connection cannot carry another request, and a client that pooled it
    /// would otherwise send its next request into a closing socket.
    pub fn into_response(self) -> Response<ProxyBody> {
        let body_unread = matches!(
            self,
            GatewayError::BodyTooLarge { .. }
                | GatewayError::BodyTimeout
                | GatewayError::BodyAborted
        );
        let mut resp = self.answer();
        if body_unread {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    fn answer(self) -> Response<ProxyBody> {
        if let GatewayError::Invalid(v) = &self {
            // Feishu's shape with `error.field_violations`.
            return json_value_response(self.status(), self.reason(), &v.to_json());
        }
        if let GatewayError::BodyTooLarge { limit } = self {
            // The same shape as a validation failure, naming the body.
            let body = serde_json::json!({
                "code": self.code(),
                "msg": self.msg(),
                "error": {"field_violations": [{
                    "field": "body",
                    "description": format!("larger than the limit of {limit} bytes"),
                }]},
            });
            return json_value_response(self.status(), self.reason(), &body);
        }
        let mut resp = json_response(self.status(), self.reason(), self.code(), &self.msg());
        if let GatewayError::RateLimited(r) | GatewayError::ShareLimited { rejection: r, .. } =
            &self
        {
            // Feishu's own headers, so existing 429 handling keeps working,
            // plus Retry-After and the IETF draft RateLimit headers.
            let h = resp.headers_mut();
            let reset = HeaderValue::from(r.reset_secs());
            h.insert(X_OGW_RATELIMIT_LIMIT, HeaderValue::from(r.limit_value()));
            h.insert(X_OGW_RATELIMIT_RESET, reset.clone());
            h.insert(http::header::RETRY_AFTER, reset);
            if let Ok(v) = HeaderValue::from_str(r.ratelimit_policy()) {
                h.insert("ratelimit-policy", v);
            }
            if let Ok(v) = HeaderValue::from_str(&r.ratelimit()) {
                h.insert("ratelimit", v);
            }
        }
        if let GatewayError::UpstreamPaused { retry_after }
        | GatewayError::ResourceBusy { retry_after, .. } = &self
        {
            let h = resp.headers_mut();
            let reset = HeaderValue::from(crate::quota::whole_secs(*retry_after));
            h.insert(X_OGW_RATELIMIT_RESET, reset.clone());
            h.insert(http::header::RETRY_AFTER, reset);
        }
        if let GatewayError::BudgetExhausted(e) = &self {
            // Until the month turns in Asia/Shanghai.
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(e.retry_after_secs),
            );
        }
        if let GatewayError::QuotaBackendUnavailable = &self {
            let h = resp.headers_mut();
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// A gateway-made JSON answer `{"code":…,"msg":…}` with `X-Gateway-Error`.
pub fn json_response(
    status: StatusCode,
    reason: &'static str,
    code: i64,
    msg: &str,
) -> Response<ProxyBody> {
    let body = serde_json::json!({ "code": code, "msg": msg });
    json_value_response(status, reason, &body)
}

/// A gateway-made error answer with an arbitrary JSON body.
pub fn json_value_response(
    status: StatusCode,
    reason: &'static str,
    body: &serde_json::Value,
) -> Response<ProxyBody> {
    let mut resp = json_answer(status, body);
    resp.headers_mut()
        .insert(X_GATEWAY_ERROR, HeaderValue::from_static(reason));
    resp
}

/// A JSON answer whose body is already serialised (a subscriber's answer
/// to a card callback).
pub fn raw_json_answer(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// A gateway-made JSON answer (no `X-Gateway-Error`: not an error).
pub fn json_answer(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(ProxyBody::full(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// Header naming the reason of a gateway-made answer.
pub const X_GATEWAY_ERROR: &str = "x-gateway-error";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_are_never_504() {
        for k in [
            UpstreamFailure::Connect,
            UpstreamFailure::Timeout,
            UpstreamFailure::Reset,
            UpstreamFailure::Protocol,
        ] {
            let s = GatewayError::Upstream(k).status();
            assert!(s == StatusCode::BAD_GATEWAY || s == StatusCode::SERVICE_UNAVAILABLE);
        }
    }

    #[test]
    fn answers_are_feishu_shaped_json() {
        let r = GatewayError::MissingCredentials.into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[X_GATEWAY_ERROR], "unauthenticated");
        assert!(r.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        match r.into_body() {
            ProxyBody::Full(Some(b)) => {
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                assert_eq!(v["code"], 99991661);
                assert!(v["msg"].is_string());
            }
            other => panic!("{other:?}"),
        }
    }
}
