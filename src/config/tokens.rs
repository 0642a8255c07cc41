//! `[token]` (refreshing the tenant tokens the gateway holds) and
//! `[sdk_tokens]` (signing the tokens it issues to SDKs).

use std::time::Duration;

use super::reader::{Problems, Section};
use super::{secret_source, Environment};
use crate::auth::sdk_token::SdkTokens;
use crate::tokens::TokenPolicy;

/// Reads `[token]`; every key has a default.
pub(super) fn read_token(root: &mut Section<'_>, p: &mut Problems) -> TokenPolicy {
    let mut t = root.table("token", p);
    let mut d = |name, default| {
        t.as_mut()
            .and_then(|t| t.duration(name, p))
            .unwrap_or(default)
    };
    let out = TokenPolicy {
        refresh_before: d("refresh_before", Duration::from_secs(25 * 60)),
        retry_min: d("retry_min", Duration::from_millis(500)),
        retry_max: d("retry_max", Duration::from_secs(30)),
        fetch_timeout: d("fetch_timeout", Duration::from_secs(10)),
    };
    if let Some(t) = t {
        t.finish(p);
    }
    if out.retry_min.is_zero() {
        p.push("token.retry_min", "must be more than 0");
    }
    if out.retry_max < out.retry_min {
        p.push("token.retry_max", "must be at least token.retry_min");
    }
    out
}

/// Reads `[sdk_tokens]`. Without a signing key a random one is made at start.
pub(super) fn read_sdk_tokens(
    root: &mut Section<'_>,
    env: &dyn Environment,
    p: &mut Problems,
) -> SdkTokens {
    let mut out = SdkTokens {
        signing_key: None,
        lifetime: Duration::from_secs(7200),
    };
    let Some(mut s) = root.table("sdk_tokens", p) else {
        return out;
    };
    if s.value("signing_key_env").is_some() || s.value("signing_key_file").is_some() {
        out.signing_key = secret_source(&mut s, "signing_key_env", "signing_key_file", &[], env, p);
        if out
            .signing_key
            .as_ref()
            .is_some_and(|k| k.expose().len() < 16)
        {
            p.push(
                s.key("signing_key_env"),
                "the signing key is shorter than 16 characters",
            );
        }
    }
    if let Some(l) = s.duration("lifetime", p) {
        if l < Duration::from_secs(900) || l > Duration::from_secs(86_400) {
            p.push(
                s.key("lifetime"),
                "must be between 15m (the Python SDK refreshes 10 min early) and 24h",
            );
        } else {
            out.lifetime = l;
        }
    }
    s.finish(p);
    out
}
