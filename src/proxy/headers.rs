//! Which headers cross the gateway: hop-by-hop headers (RFC 9110 §7.6.1)
//! stay on their connection, the caller's credentials and the gateway's own
//! control headers never reach Feishu.

use http::header::{HeaderName, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, EXPECT, HOST};
use http::HeaderMap;

/// True for headers that describe one connection, not the message
/// (RFC 9110 §7.6.1). Compared as `HeaderName`s: no parsing per request.
pub(super) fn is_hop_by_hop(name: &HeaderName) -> bool {
    use http::header::{
        PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
    };
    *name == CONNECTION
        || *name == TRANSFER_ENCODING
        || *name == TE
        || *name == TRAILER
        || *name == UPGRADE
        || *name == PROXY_AUTHORIZATION
        || *name == PROXY_AUTHENTICATE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Headers named in `Connection` are hop-by-hop too.
pub(super) fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // The usual answer has none: look before touching anything.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    for n in connection_named(headers) {
        headers.remove(n);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_hop_by_hop(k))
        .cloned()
        .collect();
    for n in hop {
        headers.remove(n);
    }
}

/// The headers sent to Feishu, built in one pass: the caller's, minus
/// hop-by-hop headers, the caller's credentials, `Host` (set from the
/// upstream URI), the body length (set from the buffered body), `Expect`
/// (the gateway answered the caller's `100-continue` and holds the whole
/// body: asking Feishu again would only add a round trip) and the
/// gateway's own control headers.
pub(super) fn upstream_headers(headers: &HeaderMap) -> HeaderMap {
    let named = if headers.contains_key(CONNECTION) {
        connection_named(headers)
    } else {
        Vec::new()
    };
    let mut out = HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        if is_hop_by_hop(k)
            || *k == AUTHORIZATION
            || *k == HOST
            || *k == CONTENT_LENGTH
            || *k == EXPECT
            || k.as_str().starts_with("x-gateway-")
            || named.contains(k)
        {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn upstream_headers_drop_credentials_and_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer client-key"));
        h.insert(CONNECTION, HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-gateway-max-wait", HeaderValue::from_static("100"));
        h.insert("expect", HeaderValue::from_static("100-continue"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let out = upstream_headers(&h);
        assert!(out.get(AUTHORIZATION).is_none());
        assert!(out.get("x-hop").is_none());
        assert!(out.get(CONNECTION).is_none());
        assert!(out.get("x-gateway-max-wait").is_none());
        assert!(out.get("expect").is_none());
        assert_eq!(out["content-type"], "application/json");
    }
}
