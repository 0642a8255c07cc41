//! Gateway tokens for the official SDKs.
//!
//! The SDKs fetch their own tenant token with `POST
//! /open-apis/auth/v3/tenant_access_token/internal {app_id, app_secret}`. The
//! gateway answers that call itself: `app_secret` is the client's GATEWAY
//! key, and the token it hands out is its own, bound to that client and app.
//! The real app secret never leaves the gateway.
//!
//! Tokens are stateless and signed: `t-g1.<payload>.<mac>`, where the payload
//! names the client, the app id, the expiry and a nonce, and the MAC is
//! HMAC-SHA256 under a key derived from the signing secret AND the digest of
//! the client key it was issued for. So a token:
//! - survives a restart and works on every replica that shares the signing
//!   secret (`[sdk_tokens] signing_key_env`); without one, a random secret is
//!   made at start and tokens die with the process (the Go SDK heals on the
//!   99991663 it then gets; the Python and Node SDKs do not retry);
//! - lives as long as the key it was issued for is one of the client's keys:
//!   during a rotation (old and new key both configured) tokens of either
//!   work; removing the old key ends the tokens issued for it. Verification
//!   tries the client's keys in turn (one HMAC each, a handful at most), so
//!   the token format did not change with rotation;
//! - reveals nothing of the key, and cannot be forged without the secret.
//!
//! Issuing a new token leaves older ones valid until they expire, as Feishu
//! does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::{Caller, ClientTable};
use crate::secret::Secret;

/// Prefix of every gateway token. It starts with `t-` like Feishu's tenant
/// tokens, so SDKs and tools that look at the prefix treat it as one.
pub const PREFIX: &str = "t-g1.";

/// Why a presented gateway token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Well formed and genuine, but past its expiry.
    Expired,
    /// Not a token this gateway issued (forged, truncated, unknown client,
    /// rotated key).
    Invalid,
}

/// Tokens the gateway issues on Feishu's token endpoints (`[sdk_tokens]`).
#[derive(Debug, Clone)]
pub struct SdkTokens {
    /// Secret that signs them (`signing_key_env` or `signing_key_file`).
    /// Set it so tokens survive restarts and work on every replica; without
    /// it a random secret is made at start.
    pub signing_key: Option<Secret>,
    /// The `expire` handed out (`lifetime`). Default 2 h; at least 15 min,
    /// because the Python SDK refreshes 10 min early.
    pub lifetime: Duration,
}

/// Issues and verifies gateway tokens.
pub struct TokenIssuer {
    secret: Secret,
    lifetime: Duration,
    /// True when the secret came from config (tokens survive restarts).
    persistent: bool,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("lifetime", &self.lifetime)
            .field("persistent", &self.persistent)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl TokenIssuer {
    /// An issuer with `secret` from config, or a random one (tokens then
    /// do not survive a restart).
    pub fn new(secret: Option<Secret>, lifetime: Duration) -> TokenIssuer {
        let persistent = secret.is_some();
        let secret = secret.unwrap_or_else(|| {
            let bytes: [u8; 32] = rand::random();
            Secret::new(hex::encode(bytes))
        });
        TokenIssuer {
            secret,
            lifetime,
            persistent,
        }
    }

    /// Whether tokens survive a restart.
    pub fn persistent(&self) -> bool {
        self.persistent
    }

    /// A new token for `caller` (the client and the key it presented)
    /// acting as `app_id`, and its lifetime in seconds (the `expire` of the
    /// answer).
    pub fn issue(&self, caller: &Caller, app_id: &str) -> (String, u64) {
        let client = &caller.client;
        let exp = unix_now() + self.lifetime.as_secs();
        let nonce: [u8; 12] = rand::random();
        let payload = format!(
            "{}\n{}\n{}\n{}",
            client.name,
            app_id,
            exp,
            hex::encode(nonce)
        );
        let payload = URL_SAFE_NO_PAD.encode(payload);
        let digest = &client.keys[caller.key].digest;
        let mac = self.mac(digest, &payload).finalize().into_bytes();
        (
            format!("{PREFIX}{payload}.{}", URL_SAFE_NO_PAD.encode(mac)),
            self.lifetime.as_secs(),
        )
    }

    /// The client a token was issued to, and the key it was issued for, if
    /// it is genuine, unexpired, and that key is still one of the client's.
    pub fn verify(&self, token: &str, clients: &ClientTable) -> Result<Caller, TokenRefusal> {
        let rest = token.strip_prefix(PREFIX).ok_or(TokenRefusal::Invalid)?;
        let (payload, mac) = rest.split_once('.').ok_or(TokenRefusal::Invalid)?;
        let raw = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenRefusal::Invalid)?;
        let text = std::str::from_utf8(&raw).map_err(|_| TokenRefusal::Invalid)?;
        let mut parts = text.split('\n');
        let (Some(name), Some(app_id), Some(exp), Some(_nonce), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenRefusal::Invalid);
        };
        let client = clients.by_name(name).ok_or(TokenRefusal::Invalid)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenRefusal::Invalid)?;
        // Constant-time comparison, with each key the client holds now.
        let key = client
            .keys
            .iter()
            .position(|k| self.mac(&k.digest, payload).verify_slice(&mac).is_ok())
            .ok_or(TokenRefusal::Invalid)?;
        if clients.app_id_of(client) != Some(app_id) {
            // The client was moved to another app since: the token is stale.
            return Err(TokenRefusal::Invalid);
        }
        let exp: u64 = exp.parse().map_err(|_| TokenRefusal::Invalid)?;
        if unix_now() >= exp {
            return Err(TokenRefusal::Expired);
        }
        Ok(Caller {
            client: std::sync::Arc::clone(client),
            key,
        })
    }

    /// The MAC of a token issued for the client key with SHA-256 `digest`.
    fn mac(&self, digest: &[u8; 32], payload: &str) -> HmacSha256 {
        // Per-key: removing a client's key ends the tokens issued for it.
        let mut k = HmacSha256::new_from_slice(self.secret.expose().as_bytes())
            .expect("HMAC takes any key length");
        k.update(b"feishu-gateway sdk token v1\n");
        k.update(digest);
        let key = k.finalize().into_bytes();
        let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(payload.as_bytes());
        mac
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{key_digest, ClientConfig};
    use crate::endpoints::Catalog;
    use crate::observe::metrics::Metrics;
    use std::sync::Arc;

    fn table(billing_keys: &[&[u8]]) -> ClientTable {
        let metrics = Metrics::new(prometheus::Registry::new(), &[], &[]).unwrap();
        let client = |name: &str, keys: &[&[u8]]| ClientConfig {
            name: name.into(),
            app: 0,
            keys: keys.iter().map(|k| key_digest(k)).collect(),
            tenant: None,
            allow: None,
            quota_share: None,
        };
        ClientTable::new(
            &[
                client("billing", billing_keys),
                client("crm", &[b"crm-key-0123456789abc"]),
            ],
            vec!["cli_1".into()],
            &Catalog::builtin(),
            &metrics,
        )
    }

    fn clients() -> ClientTable {
        table(&[b"billing-key-0123456789"])
    }

    fn caller(t: &ClientTable, name: &str) -> Caller {
        Caller {
            client: Arc::clone(t.by_name(name).unwrap()),
            key: 0,
        }
    }

    #[test]
    fn issued_tokens_verify_and_are_bound_to_their_client() {
        let t = clients();
        let issuer = TokenIssuer::new(Some(Secret::new("signing")), Duration::from_secs(7200));
        let billing = caller(&t, "billing");
        let (token, expire) = issuer.issue(&billing, "cli_1");
        assert_eq!(expire, 7200);
        assert!(token.starts_with("t-g1."));
        assert!(!token.contains("billing-key"));
        assert_eq!(issuer.verify(&token, &t).unwrap().client.name, "billing");
        // A second token leaves the first valid.
        let (token2, _) = issuer.issue(&billing, "cli_1");
        assert_ne!(token, token2);
        assert!(issuer.verify(&token, &t).is_ok());
        // Same secret, another process: still valid.
        let again = TokenIssuer::new(Some(Secret::new("signing")), Duration::from_secs(7200));
        assert!(again.verify(&token, &t).is_ok());
        // Another secret: invalid.
        let other = TokenIssuer::new(Some(Secret::new("other")), Duration::from_secs(7200));
        assert_eq!(other.verify(&token, &t).unwrap_err(), TokenRefusal::Invalid);
    }

    #[test]
    fn forged_tampered_and_expired_tokens_are_refused() {
        let t = clients();
        let issuer = TokenIssuer::new(None, Duration::from_secs(7200));
        let (token, _) = issuer.issue(&caller(&t, "billing"), "cli_1");
        // Claim to be another client with billing's MAC.
        let (_, mac) = token.rsplit_once('.').unwrap();
        let payload = URL_SAFE_NO_PAD.encode("crm\ncli_1\n99999999999\n00");
        let forged = format!("{PREFIX}{payload}.{mac}");
        assert_eq!(
            issuer.verify(&forged, &t).unwrap_err(),
            TokenRefusal::Invalid
        );
        assert!(issuer.verify(&token[..token.len() - 2], &t).is_err());
        assert!(issuer.verify("t-abc", &t).is_err());
        let short = TokenIssuer::new(Some(Secret::new("s")), Duration::from_secs(0));
        let (old, _) = short.issue(&caller(&t, "crm"), "cli_1");
        assert_eq!(short.verify(&old, &t).unwrap_err(), TokenRefusal::Expired);
    }

    #[test]
    fn tokens_live_as_long_as_the_key_they_were_issued_for() {
        let issuer = TokenIssuer::new(Some(Secret::new("signing")), Duration::from_secs(7200));
        let old: &[u8] = b"billing-key-OLD-0123456789";
        let new: &[u8] = b"billing-key-NEW-0123456789";
        // Before the rotation: the old key only.
        let before = table(&[old]);
        let (old_token, _) = issuer.issue(&caller(&before, "billing"), "cli_1");
        // During it: both keys; the old token verifies, as the old key.
        let during = table(&[new, old]);
        let v = issuer.verify(&old_token, &during).unwrap();
        assert_eq!((v.client.name.as_str(), v.key), ("billing", 1));
        let new_caller = during.by_key(new).unwrap();
        let (new_token, _) = issuer.issue(&new_caller, "cli_1");
        assert_eq!(issuer.verify(&new_token, &during).unwrap().key, 0);
        // After it: the old key removed ends its tokens, not the new ones.
        let after = table(&[new]);
        assert_eq!(
            issuer.verify(&old_token, &after).unwrap_err(),
            TokenRefusal::Invalid
        );
        assert_eq!(issuer.verify(&new_token, &after).unwrap().key, 0);
    }
}
