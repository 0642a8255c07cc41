//! Reading Feishu's `code` out of an upstream answer without consuming it:
//! the answer is sent on unchanged, held (small JSON) or streamed.

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Response};
use http_body_util::BodyExt;

use crate::feishu::{read_code, scan_code};
use crate::proxy::body::ProxyBody;
use crate::upstream::pool::UpstreamBody;
use crate::upstream::BodyError;

/// An upstream answer whose body was read (when it is JSON and small) to
/// learn Feishu's `code`.
pub struct Inspected {
    /// Status and headers, unchanged.
    pub head: http::response::Parts,
    /// The answer's body, ready to send on.
    pub body: ProxyBody,
    /// Feishu's `code`, when the answer is JSON and carries one.
    pub code: Option<i64>,
}

/// Reads the `code` of an upstream answer.
///
/// Only JSON answers are read, and only up to `limit` bytes: a JSON answer
/// that fits is buffered whole (so it can be inspected and replayed), a
/// larger one is sent on as the prefix read so far plus the rest streamed,
/// with the `code` taken from that prefix. Anything else (downloads) streams
/// untouched. Returns the transport error if the body fails mid-read.
pub async fn inspect(resp: Response<UpstreamBody>, limit: usize) -> Result<Inspected, BodyError> {
    let (head, mut body) = resp.into_parts();
    if !is_json(&head.headers) {
        return Ok(Inspected {
            head,
            body: ProxyBody::stream(None, body),
            code: None,
        });
    }
    let expected = content_length(&head.headers).unwrap_or(0).min(limit);
    let mut buf = BytesMut::with_capacity(expected);
    let mut single: Option<Bytes> = None;
    loop {
        match body.frame().await {
            None => break,
            Some(frame) => {
                let frame = frame?;
                if let Ok(data) = frame.into_data() {
                    // The common case is one frame: keep it without copying.
                    if single.is_none() && buf.is_empty() {
                        single = Some(data);
                    } else {
                        if let Some(s) = single.take() {
                            buf.extend_from_slice(&s);
                        }
                        buf.extend_from_slice(&data);
                    }
                    let len = single.as_ref().map_or(buf.len(), |s| s.len());
                    if len > limit {
                        let prefix = single.take().unwrap_or_else(|| buf.split().freeze());
                        let code = scan_code(&prefix);
                        return Ok(Inspected {
                            head,
                            body: ProxyBody::stream(Some(prefix), body),
                            code,
                        });
                    }
                }
            }
        }
    }
    let bytes = single.unwrap_or_else(|| buf.freeze());
    let code = read_code(&bytes);
    Ok(Inspected {
        head,
        body: ProxyBody::full(bytes),
        code,
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let mime = v.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.len() > 5 && mime[mime.len() - 5..].eq_ignore_ascii_case("+json"))
        })
        .unwrap_or(false)
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
