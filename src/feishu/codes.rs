//! The `code` of Feishu's answers: the ones the gateway writes or acts on,
//! the ones its metrics describe, and the gateway's own (`9999xxxx`, a range
//! Feishu does not use), each written once. [`KNOWN`] gives every one its
//! description for the `feishu_gateway_code_info` metric.

/// Success.
pub const OK: i64 = 0;
/// Malformed request.
pub const BAD_REQUEST: i64 = 9499;
/// Fetching the app access token failed; for store apps, the `app_ticket`
/// is invalid (the official SDKs resend the ticket on it).
pub const APP_TICKET_INVALID: i64 = 10012;
/// Fetching the tenant access token failed.
pub const TENANT_TOKEN_FETCH_FAILED: i64 = 10013;
/// App secret invalid (the answer to wrong token credentials).
pub const APP_SECRET_INVALID: i64 = 10014;
/// Request trigger frequency limit: Feishu throttled the call.
pub const RATE_LIMITED: i64 = 99991400;
/// The app's monthly API call budget is spent.
pub const MONTHLY_QUOTA_EXCEEDED: i64 = 99991403;
/// App id or app secret wrong.
pub const APP_CREDENTIALS_WRONG: i64 = 99991543;
/// Authorization header missing or malformed.
pub const AUTH_MISSING: i64 = 99991661;
/// Tenant access token invalid (the gateway also answers it to an unknown
/// gateway key).
pub const TENANT_TOKEN_INVALID: i64 = 99991663;
/// App access token invalid.
pub const APP_TOKEN_INVALID: i64 = 99991664;
/// Tenant code invalid.
pub const TENANT_CODE_INVALID: i64 = 99991665;
/// User access token invalid.
pub const USER_TOKEN_INVALID: i64 = 99991668;
/// Token must start with `t-` or `u-`.
pub const TOKEN_PREFIX_INVALID: i64 = 99991671;
/// Missing scope or permission (three codes, by where it is missing).
pub const NO_SCOPE: i64 = 99991672;
/// Missing scope or permission.
pub const NO_SCOPE_USER: i64 = 99991676;
/// Missing scope or permission.
pub const NO_SCOPE_APP: i64 = 99991679;
/// Token expired.
pub const TOKEN_EXPIRED: i64 = 99991677;
/// Messages (send, reply, edit): "Your request contains an invalid request
/// parameter"; also the gateway's answer to a broken message contract.
pub const MESSAGE_INVALID_PARAM: i64 = 230001;
/// Messages: "The length of the message content reaches its limit" (text
/// 150 KB, card and post 30 KB); also the gateway's answer when that cap is
/// the first problem it finds.
pub const MESSAGE_CONTENT_TOO_LONG: i64 = 230025;
/// The message is about to self-destruct.
pub const MESSAGE_SELF_DESTRUCT: i64 = 230111;
/// Invalid parameter (a chat's top notice): also the gateway's answer to a
/// broken top-notice contract, and to a body over the size limit.
pub const INVALID_PARAM: i64 = 232001;
/// The chat was dissolved.
pub const CHAT_DISSOLVED: i64 = 232009;
/// Operator and chat are in different tenants.
pub const CROSS_TENANT: i64 = 232010;
/// The operator is not in the chat.
pub const NOT_IN_CHAT: i64 = 232011;
/// No permission to manage pins.
pub const NO_PIN_PERMISSION: i64 = 232014;
/// App not visible to the user, or no collaboration permission.
pub const APP_NOT_VISIBLE: i64 = 232024;
/// The bot ability is not enabled.
pub const BOT_NOT_ENABLED: i64 = 232025;
/// External chats are not supported.
pub const EXTERNAL_CHAT: i64 = 232033;
/// The app is not installed or not enabled in the tenant.
pub const APP_NOT_INSTALLED: i64 = 232034;

/// Upload: the file is larger than the endpoint takes (images 10 MB,
/// files 30 MB).
pub const UPLOAD_TOO_LARGE: i64 = 234006;
/// Upload: the file is empty.
pub const UPLOAD_EMPTY: i64 = 234010;
/// Upload: the image format is not supported.
pub const UPLOAD_BAD_FORMAT: i64 = 234011;

/// Gateway: the client's `allow` list does not include this endpoint.
pub const GW_FORBIDDEN: i64 = 99990403;
/// Gateway: no such path on the gateway.
pub const GW_NOT_FOUND: i64 = 99990404;
/// Gateway: the client's request body did not arrive in time.
pub const GW_BODY_TIMEOUT: i64 = 99990408;
/// Gateway: unexpected internal failure.
pub const GW_INTERNAL: i64 = 99990500;
/// Gateway: Feishu could not be reached, reset the connection or answered
/// something that is not HTTP.
pub const GW_UPSTREAM_UNAVAILABLE: i64 = 99990502;
/// Gateway: Feishu did not answer in time.
pub const GW_UPSTREAM_TIMEOUT: i64 = 99990503;
/// Gateway: the shared quota backend (Redis) is unavailable and
/// `quota.fail = "closed"`.
pub const GW_QUOTA_BACKEND_UNAVAILABLE: i64 = 99990504;
/// Gateway: an event pushed by Feishu was not accepted (a subscriber's
/// queue is full, or the event is malformed): Feishu pushes it again.
pub const GW_EVENT_REFUSED: i64 = 99990505;

/// Every code above with a short description. Codes outside it are still
/// counted, under their number.
pub const KNOWN: &[(i64, &str)] = &[
    (OK, "success"),
    (BAD_REQUEST, "bad request"),
    (APP_TICKET_INVALID, "fetching app access token failed"),
    (
        TENANT_TOKEN_FETCH_FAILED,
        "fetching tenant access token failed",
    ),
    (APP_SECRET_INVALID, "app secret invalid"),
    (RATE_LIMITED, "request trigger frequency limit"),
    (MONTHLY_QUOTA_EXCEEDED, "monthly API call quota exceeded"),
    (APP_CREDENTIALS_WRONG, "app_id or app_secret wrong"),
    (AUTH_MISSING, "Authorization header missing or malformed"),
    (TENANT_TOKEN_INVALID, "tenant access token invalid"),
    (APP_TOKEN_INVALID, "app access token invalid"),
    (TENANT_CODE_INVALID, "tenant code invalid"),
    (USER_TOKEN_INVALID, "user access token invalid"),
    (TOKEN_PREFIX_INVALID, "token must start with t- or u-"),
    (NO_SCOPE, "missing scope or permission"),
    (NO_SCOPE_USER, "missing scope or permission"),
    (TOKEN_EXPIRED, "token expired"),
    (NO_SCOPE_APP, "missing scope or permission"),
    (MESSAGE_INVALID_PARAM, "invalid message parameter"),
    (MESSAGE_CONTENT_TOO_LONG, "message content too long"),
    (MESSAGE_SELF_DESTRUCT, "message about to self-destruct"),
    (INVALID_PARAM, "invalid parameter"),
    (CHAT_DISSOLVED, "chat dissolved"),
    (CROSS_TENANT, "operator and chat in different tenants"),
    (NOT_IN_CHAT, "operator not in the chat"),
    (NO_PIN_PERMISSION, "no permission to manage pins"),
    (
        APP_NOT_VISIBLE,
        "app not visible to user or no collaboration permission",
    ),
    (BOT_NOT_ENABLED, "bot ability not enabled"),
    (EXTERNAL_CHAT, "external chat not supported"),
    (
        APP_NOT_INSTALLED,
        "app not installed or not enabled in the tenant",
    ),
    (UPLOAD_TOO_LARGE, "upload: file too large"),
    (UPLOAD_EMPTY, "upload: file empty"),
    (UPLOAD_BAD_FORMAT, "upload: unsupported format"),
    (
        GW_FORBIDDEN,
        "gateway: endpoint not in the client's allow list",
    ),
    (GW_NOT_FOUND, "gateway: no such path"),
    (GW_BODY_TIMEOUT, "gateway: request body timeout"),
    (GW_INTERNAL, "gateway: internal error"),
    (GW_UPSTREAM_UNAVAILABLE, "gateway: Feishu unreachable"),
    (GW_UPSTREAM_TIMEOUT, "gateway: Feishu timeout"),
    (
        GW_QUOTA_BACKEND_UNAVAILABLE,
        "gateway: shared quota backend unavailable",
    ),
    (
        GW_EVENT_REFUSED,
        "gateway: event not accepted, Feishu pushes it again",
    ),
];

/// Feishu's internal and transient failures: a later attempt of the same
/// call may succeed. `../shared/feishu-platform.md` §3.1, the row "Internal /
/// transient → retry" (the platform's generic error page and the product
/// pages say 稍后重试, "try again later"). The gateway retries a request
/// answered with one of these only where repeating it is safe
/// (`proxy::retry`). Everything else is never retried by code: throttling
/// (99991400 and the product limits), an exhausted monthly budget
/// (99991403), missing scopes (99991672), concurrency conflicts and
/// in-flight duplicates (230049, 18121: a blind resend is what they warn
/// against), and every permanent error.
pub const TRANSIENT: &[(i64, &str)] = &[
    (1500, "internal error"),
    (1663, "internal error"),
    (1668, "internal error"),
    (2200, "internal error (calls too frequent; retry)"),
    (5000, "internal error (call less often, retry later)"),
    (55001, "internal error (call less often, retry later)"),
    (10101, "internal error"),
    (10105, "internal error"),
    (96001, "internal error"),
    (96402, "timeout"),
    (96403, "still processing"),
    (1050002, "internal error"),
    (1050008, "internal error"),
    (1255040, "bitable: timeout (HTTP 504)"),
    (1254607, "bitable: data not ready"),
    (1065000, "drive: internal error"),
    (1069399, "comment: internal error"),
    (
        232096,
        "meta writing has stopped, try again later (image/file upload)",
    ),
    (232073, "group menu being modified"),
    (48002, "contact: internal error (HTTP 500/504)"),
    (41027, "contact: internal error (HTTP 500/504)"),
];

/// Whether `code` is in [`TRANSIENT`]: Feishu failed internally and a later
/// attempt may succeed.
pub fn is_transient(code: i64) -> bool {
    TRANSIENT.iter().any(|(c, _)| *c == code)
}

/// Codes with which Feishu refuses one tenant's token (the app is not
/// installed there, or the tenant key is wrong): the caller's mistake.
pub fn is_tenant_refusal(code: i64) -> bool {
    matches!(code, TENANT_CODE_INVALID | APP_NOT_INSTALLED)
}

/// Token-invalid codes after which the gateway drops the token it used,
/// fetches a fresh one and replays the request once.
pub fn is_token_invalid(code: i64) -> bool {
    matches!(
        code,
        TENANT_TOKEN_INVALID
            | APP_TOKEN_INVALID
            | TENANT_CODE_INVALID
            | TOKEN_PREFIX_INVALID
            | TOKEN_EXPIRED
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes_are_listed_once_and_exclude_what_must_never_be_retried() {
        let mut seen = std::collections::HashSet::new();
        for (code, desc) in TRANSIENT {
            assert!(seen.insert(code), "{code} twice");
            assert!(!desc.is_empty());
        }
        for never in [
            OK,
            RATE_LIMITED,
            MONTHLY_QUOTA_EXCEEDED,
            NO_SCOPE,
            NO_SCOPE_USER,
            NO_SCOPE_APP,
            INVALID_PARAM,
            TENANT_TOKEN_INVALID,
            230049,  // "the message is being sent": a resend could duplicate it
            18121,   // "create request is being processed"
            1254291, // bitable write conflict: serialize, then retry
        ] {
            assert!(!is_transient(never), "{never} must never be retried");
        }
        assert!(is_transient(1500) && is_transient(41027));
    }

    #[test]
    fn every_known_code_once() {
        let mut seen = std::collections::HashSet::new();
        for (code, desc) in KNOWN {
            assert!(seen.insert(code), "{code} twice");
            assert!(!desc.is_empty());
        }
    }
}
