//! The Feishu side of event callbacks (AES-256-CBC keyed by the app's
//! Encrypt Key, a SHA-256 signature header): encrypt and sign an event the
//! way the platform does, for the fake's pushes and for tests that need a
//! genuine (or deliberately broken) callback.
//!
//! This is written from the platform's description, apart from the
//! gateway's decoder (`feishu_gateway::events`), so a test that has one
//! accept what the other made shows they agree.

use aes::Aes256;
use base64::Engine as _;
use bytes::Bytes;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use http::{HeaderMap, HeaderName, HeaderValue};
use rand::Rng;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `X-Lark-Request-Timestamp` (written title-cased by the fake's client).
pub const X_LARK_REQUEST_TIMESTAMP: HeaderName =
    HeaderName::from_static("x-lark-request-timestamp");
/// `X-Lark-Request-Nonce`.
pub const X_LARK_REQUEST_NONCE: HeaderName = HeaderName::from_static("x-lark-request-nonce");
/// `X-Lark-Signature`.
pub const X_LARK_SIGNATURE: HeaderName = HeaderName::from_static("x-lark-signature");

/// A callback ready to POST: its headers (besides `Content-Type`) and body.
#[derive(Debug, Clone)]
pub struct SealedCallback {
    /// The signature headers, when signed; empty otherwise.
    pub headers: HeaderMap,
    /// `{"encrypt":"…"}` with a key, the event itself without.
    pub body: Bytes,
}

/// `base64(iv ‖ AES-256-CBC(key = SHA-256(encrypt_key), PKCS#7)(plaintext))`
/// with a random IV.
pub fn encrypt(encrypt_key: &str, plaintext: &[u8]) -> String {
    let iv: [u8; 16] = rand::thread_rng().gen();
    encrypt_with_iv(encrypt_key, &iv, plaintext)
}

/// [`encrypt`] with a given IV, for known-answer tests.
pub fn encrypt_with_iv(encrypt_key: &str, iv: &[u8; 16], plaintext: &[u8]) -> String {
    let key = Sha256::digest(encrypt_key.as_bytes());
    let mut out = Vec::with_capacity(16 + plaintext.len() + 16);
    out.extend_from_slice(iv);
    let start = out.len();
    out.extend_from_slice(plaintext);
    out.resize(start + (plaintext.len() / 16 + 1) * 16, 0);
    let len = cbc::Encryptor::<Aes256>::new(&key, iv.into())
        .encrypt_padded_mut::<Pkcs7>(&mut out[start..], plaintext.len())
        // The buffer has room for a full block of padding.
        .map_or(0, |ct| ct.len());
    out.truncate(start + len);
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Lower-case hex SHA-256 of `timestamp + nonce + encrypt_key + body`.
pub fn signature(timestamp: &str, nonce: &str, encrypt_key: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(timestamp);
    h.update(nonce);
    h.update(encrypt_key);
    h.update(body);
    hex::encode(h.finalize())
}

/// Seal an event as Feishu would send it: encrypted when `encrypt_key` is
/// set, and then signed too when `sign` (Feishu signs event pushes, not its
/// `url_verification` check). `timestamp` is unix seconds.
pub fn seal(
    encrypt_key: Option<&str>,
    event: &Value,
    sign: bool,
    timestamp: u64,
) -> SealedCallback {
    let plain = event.to_string();
    let Some(key) = encrypt_key else {
        return SealedCallback {
            headers: HeaderMap::new(),
            body: Bytes::from(plain),
        };
    };
    let body =
        Bytes::from(serde_json::json!({ "encrypt": encrypt(key, plain.as_bytes()) }).to_string());
    let mut headers = HeaderMap::new();
    if sign {
        let timestamp = timestamp.to_string();
        let nonce = random_hex(8);
        let sig = signature(&timestamp, &nonce, key, &body);
        for (name, value) in [
            (X_LARK_REQUEST_TIMESTAMP, timestamp),
            (X_LARK_REQUEST_NONCE, nonce),
            (X_LARK_SIGNATURE, sig),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
    SealedCallback { headers, body }
}

/// `2 * bytes` random lower-case hex digits.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_is_iv_then_whole_blocks() {
        let iv = [7u8; 16];
        let b64 = encrypt_with_iv("k", &iv, b"0123456789abcdef");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        // 16 bytes of plaintext get a whole block of padding.
        assert_eq!(raw.len(), 16 + 32);
        assert_eq!(&raw[..16], &iv);
        assert_ne!(encrypt("k", b"x"), encrypt("k", b"x"), "random IVs");
    }

    #[test]
    fn signature_is_hex_sha256_of_the_concatenation() {
        // printf '%s' '1700000000nonceKEY{"a":1}' | sha256sum
        assert_eq!(
            signature("1700000000", "nonce", "KEY", br#"{"a":1}"#),
            "2d4a52a42d5ef04bae6191477d1f1f1b9b43ee2689edf87078c21987025d078d"
        );
    }
}
