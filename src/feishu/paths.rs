//! Paths and headers of the Feishu Open Platform that the gateway treats
//! specially. Everything else under [`OPEN_APIS`] is an endpoint of the
//! catalog ([`crate::endpoints`]) or passes through unknown.

/// Every API path starts here; nothing else is forwarded.
pub const OPEN_APIS: &str = "/open-apis/";
/// The token endpoints. Only the two self-built ones are answered by the
/// gateway (with gateway tokens); none is ever forwarded for a caller.
pub const AUTH_PREFIX: &str = "/open-apis/auth/";
/// Self-built app: `tenant_access_token` from app id and secret.
pub const TENANT_TOKEN_INTERNAL: &str = "/open-apis/auth/v3/tenant_access_token/internal";
/// Self-built app: `app_access_token` from app id and secret.
pub const APP_TOKEN_INTERNAL: &str = "/open-apis/auth/v3/app_access_token/internal";
/// Store app: `app_access_token` from app id, secret and `app_ticket`.
pub const STORE_APP_TOKEN: &str = "/open-apis/auth/v3/app_access_token";
/// Store app: a tenant's `tenant_access_token` from the app access token
/// and the tenant key.
pub const STORE_TENANT_TOKEN: &str = "/open-apis/auth/v3/tenant_access_token";
/// Store app: asks Feishu to push the `app_ticket` again.
pub const APP_TICKET_RESEND: &str = "/open-apis/auth/v3/app_ticket/resend";

/// Feishu's log id of an answer: the id its support asks for.
pub const X_TT_LOGID: &str = "x-tt-logid";
/// On a throttled answer: the limit of the window that was hit.
pub const X_OGW_RATELIMIT_LIMIT: &str = "x-ogw-ratelimit-limit";
/// On a throttled answer: whole seconds until the window resets.
pub const X_OGW_RATELIMIT_RESET: &str = "x-ogw-ratelimit-reset";
