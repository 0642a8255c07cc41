//! The gateway's signature on what it sends a subscriber, so the
//! subscriber can trust an event came from the gateway and is recent:
//!
//! ```text
//! X-Gateway-Event-Timestamp: <unix seconds when this attempt was sent>
//! X-Gateway-Event-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
//! ```
//!
//! The body is the event's JSON exactly as sent. A receiver recomputes
//! the HMAC over the raw body, compares in constant time and refuses a
//! timestamp far from its clock (e.g. 5 minutes). Each retry is signed
//! afresh with its own timestamp.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Unix seconds when the attempt was sent.
pub const HEADER_TIMESTAMP: &str = "x-gateway-event-timestamp";
/// `sha256=<hex>`.
pub const HEADER_SIGNATURE: &str = "x-gateway-event-signature";
/// The event's id (v2 `header.event_id`, v1 `uuid`).
pub const HEADER_EVENT_ID: &str = "x-gateway-event-id";
/// The event's type.
pub const HEADER_EVENT_TYPE: &str = "x-gateway-event-type";
/// The `[[apps]]` name the event is for.
pub const HEADER_APP: &str = "x-gateway-event-app";
/// The attempt number, from 1.
pub const HEADER_ATTEMPT: &str = "x-gateway-event-attempt";

/// `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_pythons_hmac() {
        // python3: hmac.new(b"subscriber-secret", b'1700000000.{"a":1}', sha256).hexdigest()
        assert_eq!(
            signature(b"subscriber-secret", "1700000000", br#"{"a":1}"#),
            "sha256=2b091234bcd235a2446bd700cb0e3d01e075952229646c4a11e71cf4a22d3dc6"
        );
    }
}
