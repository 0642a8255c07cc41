//! The connection to Feishu: one pooled hyper client (HTTPS with rustls,
//! HTTP/2 where the server offers it), classification of transport
//! failures, and reading the `code` out of an answer without consuming it.

mod failure;
pub mod http1;
pub mod pool;

pub use failure::{classify, classify_chain, BodyError, UpstreamFailure};

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::proxy::body::ProxyBody;
use crate::config::Config;
use pool::{Pool, UpstreamBody};

/// The pooled client used for every call to Feishu.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The connector every upstream connection is made with: connect timeout,
/// TCP keep-alive and no Nagle, TLS via rustls with the webpki roots plus
/// an optional extra CA, and ALPN offering HTTP/2 and HTTP/1.1.
pub fn build_connector(config: &Config) -> Result<HttpsConnector<HttpConnector>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &config.upstream_ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("upstream_ca_file {}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("upstream_ca_file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("upstream_ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.timeouts.connect));
    http.set_keepalive(Some(Duration::from_secs(60)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

/// Builds the pooled client for token calls and other background traffic:
/// the same connector, an idle pool with a real timer (without
/// `pool_timer` hyper never reaps idle connections).
pub fn build_client(config: &Config) -> Result<HttpClient, String> {
    Ok(client_on(build_connector(config)?, config))
}

fn client_on(connector: HttpsConnector<HttpConnector>, config: &Config) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.pool.idle_timeout)
        .pool_max_idle_per_host(config.pool.max_idle_per_host)
        .build(connector)
}

/// The gateway's upstream connections: for the request path, one
/// [`Pool`] per connection worker, so a request's upstream connection lives
/// on the worker thread that serves the request (see [`crate::server::workers`]),
/// and one for requests served off the workers (`workers = 0`); for token
/// fetches and ticket calls, one shared hyper-util client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Upstreams {
    shared: HttpClient,
    shared_pool: Pool,
    per_worker: Arc<[Pool]>,
}

impl Upstreams {
    /// The shared client and pools for `workers` workers, all from `config`.
    pub fn build(config: &Config, workers: usize) -> Result<Upstreams, String> {
        let connector = build_connector(config)?;
        let pool = || {
            Pool::new(
                connector.clone(),
                config.pool.idle_timeout,
                config.pool.max_idle_per_host,
            )
        };
        Ok(Upstreams {
            shared: client_on(connector.clone(), config),
            shared_pool: pool(),
            per_worker: (0..workers).map(|_| pool()).collect(),
        })
    }

    /// The client for token calls and other background traffic.
    pub fn shared(&self) -> &HttpClient {
        &self.shared
    }

    /// The request-path pool for the caller's thread: its worker's, or the
    /// one used off the workers.
    pub fn current(&self) -> &Pool {
        crate::server::workers::current()
            .and_then(|i| self.per_worker.get(i))
            .unwrap_or(&self.shared_pool)
    }
}

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
            body: ProxyBody::Stream {
                prefix: None,
                rest: body,
            },
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
                            body: ProxyBody::Stream {
                                prefix: Some(prefix),
                                rest: body,
                            },
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

/// Reads the top-level integer `code` of a JSON object, skipping everything
/// else without building it.
pub fn read_code(bytes: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Code {
        code: Option<i64>,
    }
    match serde_json::from_slice::<Code>(bytes) {
        Ok(c) => c.code,
        Err(_) => scan_code(bytes),
    }
}

/// Finds `"code": <int>` in the first bytes of a (possibly truncated) JSON
/// object. Feishu writes `code` first, so this is enough for answers too
/// large to buffer.
pub fn scan_code(bytes: &[u8]) -> Option<i64> {
    let head = &bytes[..bytes.len().min(256)];
    let pos = head.windows(6).position(|w| w == b"\"code\"")?;
    let rest = &head[pos + 6..];
    let rest = rest
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    let end = rest
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'-'))
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_code_cheaply() {
        assert_eq!(
            read_code(br#"{"code":0,"msg":"success","data":{}}"#),
            Some(0)
        );
        assert_eq!(
            read_code(br#"{"msg":"x","data":{"a":[1,2]},"code":232011}"#),
            Some(232011)
        );
        assert_eq!(read_code(b"not json"), None);
        assert_eq!(
            scan_code(br#"{"code": 99991663, "msg": "trunc"#),
            Some(99991663)
        );
    }
}
