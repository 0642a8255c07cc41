//! The Feishu apps the gateway holds secrets for (`[[apps]]`): who they are,
//! where their calls go, and what kind of app each is.

use std::time::Duration;

use crate::secret::Secret;
use crate::upstream::Upstream;

/// A Feishu app (`[[apps]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// Label in logs and metrics (`name`).
    pub name: String,
    /// Feishu app id, `cli_…` (`app_id`).
    pub app_id: String,
    /// The app secret (from `app_secret_env` or `app_secret_file`).
    pub app_secret: Secret,
    /// Feishu base URL for this app (`upstream`), default the global one.
    pub upstream: Upstream,
    /// Self-built (default) or store app (`type`).
    pub kind: AppKind,
}

/// What kind of Feishu app an `[[apps]]` entry is (`type`).
#[derive(Debug, Clone, PartialEq)]
pub enum AppKind {
    /// `type = "self_built"` (default): one tenant token per app, fetched
    /// with the app secret.
    SelfBuilt,
    /// `type = "store"`: installed by many tenants; one tenant token per
    /// tenant, fetched with an app token bought with the app_ticket that
    /// Feishu pushes to the event endpoint.
    Store(StoreAppSettings),
}

/// Store-app settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreAppSettings {
    /// The event callback's Encrypt Key (`encrypt_key_env` /
    /// `encrypt_key_file`), if one is set in the developer console.
    pub encrypt_key: Option<Secret>,
    /// The event callback's Verification Token (`verification_token_env` /
    /// `verification_token_file`).
    pub verification_token: Secret,
    /// Most tenants held at once (`max_tenants`, default 1000): tenant keys
    /// come from callers, so their tokens and quotas are bounded.
    pub max_tenants: usize,
    /// A tenant unused this long is evicted (`tenant_idle_timeout`,
    /// default 1 h).
    pub tenant_idle_timeout: Duration,
    /// Require the `X-Lark-Signature` headers on callbacks
    /// (`require_signature`, default false: Feishu's URL check is unsigned,
    /// and forwarders may drop headers; an encrypted body with the right
    /// Verification Token cannot be forged without the keys anyway).
    pub require_signature: bool,
}
