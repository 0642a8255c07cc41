//! Feishu event callbacks: verify, decrypt and classify one raw callback
//! (AES-256-CBC with the Encrypt Key's SHA-256, `X-Lark-Signature` over
//! timestamp, nonce, key and body). Pure: no I/O, no state; the gateway's event endpoint calls
//! [`Verifier::verify_plain`] and acts on the [`Event`] (the event hub gets
//! the plain JSON of [`Event::Other`]).
//!
//! # What a callback is checked for, in order
//!
//! 1. **Signature**, when an Encrypt Key is configured and the request carries
//!    `X-Lark-Signature`: hex SHA-256 of
//!    `timestamp + nonce + encrypt_key + raw body`, compared in constant time.
//!    A signature header without its timestamp or nonce is a bad signature.
//! 2. **Freshness** of `X-Lark-Request-Timestamp` (unix seconds), when it was
//!    signed and [`VerifyOptions::max_skew`] is set: further than that from
//!    now, either way, is [`EventError::Stale`].
//! 3. **Decryption** of `{"encrypt": "<base64>"}`: AES-256-CBC, key =
//!    SHA-256(encrypt_key), IV = the first 16 bytes, PKCS#7 padding; the
//!    plaintext must be a JSON object. With a key configured, a plain body is
//!    refused ([`EventError::NotEncrypted`]): Feishu encrypts everything once
//!    a key is set, so a plain body did not come from Feishu.
//! 4. **Verification token**, compared in constant time: top-level `token`
//!    (v1 events and the `url_verification` check) or `header.token` (v2).
//! 5. **Classification**: `url_verification` → its challenge; `app_ticket`
//!    (v1 `event.type`, or v2 `header.event_type`) → app id and ticket;
//!    anything else → [`Event::Other`].
//!
//! # Callbacks without signature headers
//!
//! Feishu's subscription check (`url_verification`) is sent without
//! signature headers, and a team that forwards callbacks from its own event
//! endpoint may not keep them. So by default a callback with no
//! `X-Lark-Signature` is not refused for that alone: with a key configured
//! it must still decrypt with that key (which an outsider cannot forge) and
//! carry the verification token. [`VerifyOptions::require_signature`] makes
//! the signature mandatory for everything except `url_verification`.
//!
//! # Secrets
//!
//! Errors carry no data from the request and no key; the ticket of
//! [`Event::AppTicket`] is a [`Secret`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes::Aes256;
use base64::Engine as _;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, KeyIvInit};
use http::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// `X-Lark-Request-Timestamp`: unix seconds, as a decimal string.
pub const HEADER_TIMESTAMP: &str = "x-lark-request-timestamp";
/// `X-Lark-Request-Nonce`.
pub const HEADER_NONCE: &str = "x-lark-request-nonce";
/// `X-Lark-Signature`: hex SHA-256 of timestamp + nonce + encrypt_key + body.
pub const HEADER_SIGNATURE: &str = "x-lark-signature";

/// AES block and IV size.
const BLOCK: usize = 16;

/// A verified callback, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Feishu's subscription check: answer `{"challenge": <challenge>}` with
    /// 200, in plain JSON even when the check came encrypted.
    UrlVerification {
        /// The value to echo.
        challenge: String,
    },
    /// A new app_ticket for a store app.
    AppTicket {
        /// The app the ticket is for (check it against the endpoint's app).
        app_id: String,
        /// The ticket.
        app_ticket: Secret,
    },
    /// Any other event: for the event hub.
    Other {
        /// v1 `event.type` or v2 `header.event_type` (empty when absent).
        event_type: String,
    },
}

/// Why a callback was refused. No variant carries request data or secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The signature did not match, was not hex, or came without its
    /// timestamp or nonce; or it was required and absent.
    #[error("event callback: bad or missing signature")]
    BadSignature,
    /// The signed timestamp is unreadable or too far from now.
    #[error("event callback: timestamp outside the accepted window")]
    Stale,
    /// The verification token is absent or not the app's.
    #[error("event callback: wrong verification token")]
    BadToken,
    /// A plain body although an Encrypt Key is configured.
    #[error("event callback: plain body but an Encrypt Key is configured")]
    NotEncrypted,
    /// An encrypted body that does not decrypt to a JSON object with the
    /// configured key (or no key is configured).
    #[error("event callback: body does not decrypt with the configured Encrypt Key")]
    Undecryptable,
    /// Not JSON, or an event without the fields its kind requires.
    #[error("event callback: malformed body")]
    Malformed,
}

/// The app's callback secrets, as set in the developer console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackKeys {
    /// The Encrypt Key, when one is set: bodies are then encrypted and signed.
    pub encrypt_key: Option<Secret>,
    /// The Verification Token every callback carries.
    pub verification_token: Secret,
}

/// Checks beyond the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// The largest accepted distance between a signed
    /// `X-Lark-Request-Timestamp` and now; `None` turns the check off.
    /// Default one hour: wide enough for clock skew and for Feishu's first
    /// redeliveries (it retries a failed push after 15 s, 5 min and 1 h,
    /// possibly with the original timestamp), narrow enough to refuse old
    /// replays. A replayed ticket costs little anyway: a stale ticket is
    /// refused by Feishu with 10012, which triggers a resend.
    pub max_skew: Option<Duration>,
    /// Refuse callbacks without `X-Lark-Signature` (except the
    /// `url_verification` check, which Feishu sends unsigned). Only
    /// meaningful with an Encrypt Key. Default false: see the module docs.
    pub require_signature: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            max_skew: Some(Duration::from_secs(3600)),
            require_signature: false,
        }
    }
}

/// Verifies the callbacks of one app.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: CallbackKeys,
    options: VerifyOptions,
}

impl Verifier {
    /// A verifier for an app's keys.
    pub fn new(keys: CallbackKeys, options: VerifyOptions) -> Self {
        Verifier { keys, options }
    }

    /// Verify and classify a callback received now.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Event, EventError> {
        self.verify_at(headers, body, SystemTime::now())
    }

    /// [`verify`](Self::verify) with the current time given, for tests.
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Event, EventError> {
        self.verify_plain_at(headers, body, now)
            .map(|(event, _)| event)
    }

    /// [`verify`](Self::verify), also returning the event's plain JSON:
    /// the decrypted bytes of an `{"encrypt": …}` body, else the body as
    /// it came (what the event hub delivers).
    pub fn verify_plain(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(Event, Vec<u8>), EventError> {
        self.verify_plain_at(headers, body, SystemTime::now())
    }

    /// [`verify_plain`](Self::verify_plain) with the current time given.
    pub fn verify_plain_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(Event, Vec<u8>), EventError> {
        let key = self.keys.encrypt_key.as_ref().map(Secret::expose);

        // 1–2. Signature and freshness, on the raw body, before any parsing.
        let signed = match key {
            Some(key) if headers.contains_key(HEADER_SIGNATURE) => {
                let timestamp = check_signature(headers, key, body)?;
                self.check_fresh(timestamp, now)?;
                true
            }
            _ => false,
        };

        // 3. The outer body, decrypted when it is `{"encrypt": …}`.
        let outer: Value = serde_json::from_slice(body).map_err(|_| EventError::Malformed)?;
        let outer = match outer {
            Value::Object(map) => map,
            _ => return Err(EventError::Malformed),
        };
        let (event, plain) = match (outer.get("encrypt"), key) {
            (Some(Value::String(encrypted)), Some(key)) => {
                let plain = decrypt(key, encrypted).ok_or(EventError::Undecryptable)?;
                match serde_json::from_slice::<Value>(&plain) {
                    Ok(Value::Object(map)) => (map, plain),
                    _ => return Err(EventError::Undecryptable),
                }
            }
            // Not a string, or no key to decrypt it with.
            (Some(_), _) => return Err(EventError::Undecryptable),
            (None, Some(_)) => return Err(EventError::NotEncrypted),
            (None, None) => (outer, body.to_vec()),
        };

        // 4–5. Token and kind.
        let event = Value::Object(event);
        let is_check = event["type"] == "url_verification";
        if self.options.require_signature && key.is_some() && !signed && !is_check {
            return Err(EventError::BadSignature);
        }
        let header = event.get("header").filter(|h| h.is_object());
        let token = match header {
            Some(header) => header.get("token"),
            None => event.get("token"),
        };
        let token_ok = token.and_then(Value::as_str).is_some_and(|t| {
            ct_eq(
                t.as_bytes(),
                self.keys.verification_token.expose().as_bytes(),
            )
        });
        if !token_ok {
            return Err(EventError::BadToken);
        }
        Ok((classify(&event, header, is_check)?, plain))
    }

    fn check_fresh(&self, timestamp: &str, now: SystemTime) -> Result<(), EventError> {
        let Some(max_skew) = self.options.max_skew else {
            return Ok(());
        };
        let sent = timestamp
            .trim()
            .parse::<u64>()
            .map_err(|_| EventError::Stale)?;
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if now.abs_diff(sent) > max_skew.as_secs() {
            return Err(EventError::Stale);
        }
        Ok(())
    }
}

/// The kind of a token-checked event.
fn classify(event: &Value, header: Option<&Value>, is_check: bool) -> Result<Event, EventError> {
    let str_at = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    if is_check {
        let challenge = str_at(event.get("challenge")).ok_or(EventError::Malformed)?;
        return Ok(Event::UrlVerification { challenge });
    }
    let body = event.get("event");
    let event_type = match header {
        // v2: `header.event_type`.
        Some(header) => str_at(header.get("event_type")),
        // v1: `{"type":"event_callback","event":{"type":…}}`.
        None => {
            if event["type"] != "event_callback" {
                return Err(EventError::Malformed);
            }
            str_at(body.and_then(|b| b.get("type")))
        }
    }
    .unwrap_or_default();
    if event_type != "app_ticket" {
        return Ok(Event::Other { event_type });
    }
    let app_id = str_at(body.and_then(|b| b.get("app_id")))
        .or_else(|| str_at(header.and_then(|h| h.get("app_id"))))
        .filter(|id| !id.is_empty())
        .ok_or(EventError::Malformed)?;
    let app_ticket = str_at(body.and_then(|b| b.get("app_ticket")))
        .filter(|t| !t.is_empty())
        .ok_or(EventError::Malformed)?;
    Ok(Event::AppTicket {
        app_id,
        app_ticket: Secret::new(app_ticket),
    })
}

/// Check `X-Lark-Signature`; returns the timestamp it covered.
fn check_signature<'h>(
    headers: &'h HeaderMap,
    key: &str,
    body: &[u8],
) -> Result<&'h str, EventError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(EventError::BadSignature)
    };
    let timestamp = header(HEADER_TIMESTAMP)?;
    let nonce = header(HEADER_NONCE)?;
    let given =
        hex::decode(header(HEADER_SIGNATURE)?.trim()).map_err(|_| EventError::BadSignature)?;
    let expected = signature(timestamp, nonce, key, body);
    if ct_eq(&given, &expected) {
        Ok(timestamp)
    } else {
        Err(EventError::BadSignature)
    }
}

/// SHA-256 of timestamp + nonce + encrypt_key + body, as the SDKs compute it.
fn signature(timestamp: &str, nonce: &str, key: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(timestamp.as_bytes());
    h.update(nonce.as_bytes());
    h.update(key.as_bytes());
    h.update(body);
    h.finalize().into()
}

/// Decrypt an `encrypt` field; `None` for anything that is not base64 of
/// IV ‖ whole blocks with valid PKCS#7 padding under this key.
fn decrypt(encrypt_key: &str, encrypted: &str) -> Option<Vec<u8>> {
    let mut data = base64::engine::general_purpose::STANDARD
        .decode(encrypted.trim())
        .ok()?;
    if data.len() < 2 * BLOCK || data.len() % BLOCK != 0 {
        return None;
    }
    let key = Sha256::digest(encrypt_key.as_bytes());
    let (iv, ciphertext) = data.split_at_mut(BLOCK);
    let plain = cbc::Decryptor::<Aes256>::new(&key, (&*iv).into())
        .decrypt_padded_mut::<Pkcs7>(ciphertext)
        .ok()?;
    Some(plain.to_vec())
}

/// Equality whose time depends on the lengths only, not on where the bytes
/// differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests;
