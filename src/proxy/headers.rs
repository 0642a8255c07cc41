//! Which headers cross the gateway: hop-by-hop headers (RFC 9110 §7.6.1)
//! stay on their connection, the caller's credentials and the gateway's own
//! control headers never reach Feishu.

use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, EXPECT, HOST,
    TRANSFER_ENCODING,
};
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

/// Makes an answer's `Content-Length` say what its body is before it is
/// forwarded (RFC 9112 §6.3), whatever the client library let through:
/// beside a `Transfer-Encoding` it is wrong and dropped (the body is as long
/// as its coding says; a forwarded length would cut it and smuggle the rest
/// into the client's next answer); a list of equal lengths (`2, 2`) becomes
/// the one length. Runs before the hop-by-hop headers go.
pub(super) fn normalize_length(headers: &mut HeaderMap) {
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
        return;
    }
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return;
    };
    if values.next().is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    let lengths: Vec<&[u8]> = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    // hyper refuses differing lengths; equal ones collapse to one.
    if let Some(one) = lengths
        .first()
        .and_then(|l| HeaderValue::from_bytes(l).ok())
    {
        if lengths.iter().all(|l| *l == one.as_bytes()) {
            headers.insert(CONTENT_LENGTH, one);
        }
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
