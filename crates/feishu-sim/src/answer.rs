//! What the fake answers: JSON bodies, the Feishu error messages it knows,
//! and `X-Tt-Logid` values.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use rand::Rng;
use serde_json::{json, Value};

/// Feishu's log id header; hyper writes it as `X-Tt-Logid` with
/// `title_case_headers`.
pub(crate) const X_TT_LOGID: HeaderName = HeaderName::from_static("x-tt-logid");
/// The cap of the window a throttled call went over.
pub(crate) const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ogw-ratelimit-limit");
/// Seconds until that window frees.
pub(crate) const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ogw-ratelimit-reset");

const JSON_UTF8: &str = "application/json; charset=utf-8";
const HTML: &str = "text/html";
const SUCCESS_EMPTY: &[u8] = br#"{"code":0,"msg":"success","data":{}}"#;

/// Codes the fake answers on its own.
pub(crate) mod code {
    pub(crate) const BAD_REQUEST: i64 = 9499;
    pub(crate) const GET_APP_TOKEN_FAILED: i64 = 10012;
    pub(crate) const GET_TENANT_TOKEN_FAILED: i64 = 10013;
    pub(crate) const APP_SECRET_INVALID: i64 = 10014;
    pub(crate) const INVALID_PARAM: i64 = 232001;
    pub(crate) const RATE_LIMITED: i64 = 99991400;
    pub(crate) const MONTHLY_BUDGET: i64 = 99991403;
    pub(crate) const MISSING_TOKEN: i64 = 99991661;
    pub(crate) const INVALID_TENANT_TOKEN: i64 = 99991663;
    pub(crate) const INVALID_APP_TOKEN: i64 = 99991664;
    pub(crate) const APP_TOKEN_EXPIRED: i64 = 99991677;
    pub(crate) const NOT_FOUND: i64 = 404;
}

/// The `msg` Feishu sends with `code`: the fake's own list, then
/// `data/throttle-codes.tsv`, then a generic one.
pub(crate) fn message_for(code: i64) -> &'static str {
    match code {
        0 => "success",
        404 => "404 page not found",
        9499 => "bad request",
        10012 => "get app access token fail",
        10013 => "get tenant access token fail",
        10014 => "app secret invalid",
        230111 => "Action unavailable as the message will self-destruct soon.",
        232001 => "invalid param",
        232009 => "Your request specified a chat that has been dissolved.",
        232010 => "Operator and chat can NOT be in different tenants.",
        232011 => "Operator can NOT be out of the chat.",
        232014 => "The operator or invited bots does NOT have the authority to manage top notice.",
        232024 => {
            "Users do not have the visibility of the app, or the operator does not have \
             collaboration permissions with the target users."
        }
        232025 => "Bot ability is not activated.",
        232033 => "The operator or chat can NOT be external chat.",
        232034 => "The app is unavailable or inactivated by the tenant.",
        99991400 => "request trigger frequency limit",
        99991661 => {
            "Missing access token for authorization. Please make a request with token attached."
        }
        99991663 => {
            "Invalid access token for authorization. Please make a request with token attached."
        }
        99991664 => "Invalid app access token.",
        99991677 => "Authentication token expired.",
        _ => crate::catalog::throttle_code(code).map_or("sim: injected error", |t| t.msg),
    }
}

/// A throttled answer's `x-ogw-ratelimit-*` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimitHeaders {
    /// `x-ogw-ratelimit-limit`, when the endpoint has a window to name.
    pub(crate) limit: Option<u32>,
    pub(crate) reset_secs: u64,
}

/// An answer decided by a phase, before it becomes a response.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    /// The `code` of the body, kept for the records.
    pub(crate) code: i64,
    pub(crate) body: Bytes,
    pub(crate) rate_limit: Option<RateLimitHeaders>,
    /// `Content-Type`: JSON but for edge answers.
    pub(crate) content_type: &'static str,
}

impl Answer {
    /// `{"code":0,"msg":"success","data":{}}` with 200.
    pub(crate) fn success_empty() -> Self {
        Answer {
            status: StatusCode::OK,
            code: 0,
            body: Bytes::from_static(SUCCESS_EMPTY),
            rate_limit: None,
            content_type: JSON_UTF8,
        }
    }

    /// A JSON body whose `code` is `code`.
    pub(crate) fn json(status: StatusCode, code: i64, body: &Value) -> Self {
        Answer {
            status,
            code,
            body: Bytes::from(body.to_string()),
            rate_limit: None,
            content_type: JSON_UTF8,
        }
    }

    /// What a load balancer in front of the API answers when it cannot
    /// reach it: `status`, a small HTML page, no Feishu `code` (recorded
    /// as -1).
    pub(crate) fn edge(status: StatusCode) -> Self {
        let reason = status.canonical_reason().unwrap_or("Error");
        let page = format!(
            "<html><head><title>{} {reason}</title></head><body><center><h1>{} {reason}</h1></center></body></html>\n",
            status.as_u16(),
            status.as_u16()
        );
        Answer {
            status,
            code: -1,
            body: Bytes::from(page),
            rate_limit: None,
            content_type: HTML,
        }
    }

    /// `{"code":code,"msg":<Feishu's message>}`.
    pub(crate) fn error(status: StatusCode, code: i64) -> Self {
        Self::json(
            status,
            code,
            &json!({"code": code, "msg": message_for(code)}),
        )
    }

    /// `{"code":code,"msg":…}` with the rate-limit headers.
    pub(crate) fn throttled(status: StatusCode, code: i64, headers: RateLimitHeaders) -> Self {
        Answer {
            rate_limit: Some(headers),
            ..Self::error(status, code)
        }
    }

    /// The response, with `Content-Type` and `X-Tt-Logid`.
    pub(crate) fn into_response(self, logid: &str) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        if let Ok(v) = HeaderValue::from_str(logid) {
            headers.insert(X_TT_LOGID, v);
        }
        if let Some(rl) = self.rate_limit {
            if let Some(limit) = rl.limit {
                headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
            }
            headers.insert(X_RATELIMIT_RESET, HeaderValue::from(rl.reset_secs));
        }
        response
    }
}

/// A fresh log id like Feishu's: UTC `YYYYMMDDhhmmss` then 20 random
/// upper-case hex digits.
pub(crate) fn new_logid() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, mo, d) = civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    let mut rng = rand::thread_rng();
    format!(
        "{y:04}{mo:02}{d:02}{:02}{:02}{:02}{:016X}{:04X}",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        rng.gen::<u64>(),
        rng.gen::<u16>(),
    )
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// algorithm, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_416), (2025, 11, 24));
    }

    #[test]
    fn logid_shape() {
        let id = new_logid();
        assert_eq!(id.len(), 34);
        assert!(id[..14].bytes().all(|b| b.is_ascii_digit()));
        assert!(id[14..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)));
        assert_ne!(new_logid(), id);
    }
}
