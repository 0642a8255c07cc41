//! The upstream connection pool of the request path.
//!
//! One [`Pool`] per connection worker ([`crate::workers`]) holds that
//! worker's connections to Feishu: HTTP/1.1 connections per upstream (most
//! recently used last), and one multiplexed HTTP/2 connection per upstream
//! when ALPN chose `h2`. The wire is hyper's on both
//! (`hyper::client::conn::{http1, http2}`): HTTP framing is a security
//! boundary, and hyper is the well-kept library built for it. What this
//! pool adds over hyper-util's general-purpose client is small and
//! measured (that client's pool cost about 8,400 instructions per request
//! here):
//! - a request that was not sent on a pooled connection (hyper hands it
//!   back: the connection had closed) goes again on a fresh one, once; so
//!   does an idempotent request (RFC 9110 §9.2.2) whose pooled connection
//!   ended before any answer; a POST that may have left is never sent twice;
//! - a connection is taken only when hyper says it is ready, i.e. its
//!   previous answer was read to the end; closed ones are dropped;
//! - idle connections are dropped after `pool.idle_timeout` and at most
//!   `pool.max_idle_per_host` are kept per upstream;
//! - an answer head over [`MAX_HEAD_BYTES`] is refused.
//!
//! Token calls and other background traffic keep using hyper-util's client
//! ([`crate::upstream::HttpClient`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{Method, Request, Response, Uri};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower::Service as _;

use super::failure::{classify_chain, BodyError, UpstreamFailure};
use super::outgoing::OutgoingBody;
use super::Upstream;

/// The largest answer head taken from Feishu (HTTP/1.1: the status line and
/// header lines; HTTP/2: the header list). Feishu's heads are about a
/// kilobyte; hyper's defaults (~400 KB, 16 MB) would pass a 100 KB header
/// line on to the client. Larger is a protocol failure (502), like nginx's
/// "upstream sent too big header".
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// An HTTP/1.1 connection of the pool: hyper's handle on it, and since
/// when it was last handed back.
struct Idle {
    tx: http1::SendRequest<OutgoingBody>,
    since: Instant,
}

#[derive(Default)]
struct Conns {
    /// HTTP/1.1 connections per upstream, most recent last: idle ones, and
    /// ones whose answer body is still being read (not ready yet).
    idle: Vec<(Upstream, Vec<Idle>)>,
    /// The HTTP/2 connection per upstream, shared by every request.
    h2: Vec<(Upstream, http2::SendRequest<OutgoingBody>)>,
}

/// A connection pool for the request path. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: HttpsConnector<HttpConnector>,
    conns: Mutex<Conns>,
    idle_timeout: Duration,
    max_idle: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

/// The body of an upstream answer, read by hyper's connection.
#[derive(Debug)]
pub struct UpstreamBody(Incoming);

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.get_mut().0)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(BodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// How an exchange on a pooled HTTP/1.1 connection ended without an answer.
enum H1Error {
    /// hyper handed the request back: nothing of it was sent.
    NotSent,
    /// The connection ended before any answer: the server may have seen it.
    ClosedBeforeAnswer,
    /// Anything else.
    Failed(UpstreamFailure),
}

impl Pool {
    /// A pool connecting through `connector`.
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                connector,
                conns: Mutex::new(Conns::default()),
                idle_timeout,
                max_idle,
            }),
        }
    }

    /// Sends `req` to `upstream` and returns its answer head with the body
    /// still to read. Only the path and query of `req`'s URI are used. An
    /// HTTP/1.1 connection can carry the next request once that body has
    /// been read to its end.
    pub async fn send(
        &self,
        upstream: &Upstream,
        req: &Request<Bytes>,
    ) -> Result<Response<UpstreamBody>, UpstreamFailure> {
        // A pooled connection first; if it had closed before the request
        // was sent (or, for an idempotent request, before answering), once
        // more on a fresh connection.
        if let Some(tx) = self.inner.take_idle(upstream) {
            match self.send_h1(upstream, tx, req).await {
                Ok(resp) => return Ok(resp),
                Err(H1Error::NotSent) => {}
                Err(H1Error::ClosedBeforeAnswer) if is_idempotent(req.method()) => {}
                Err(H1Error::ClosedBeforeAnswer) => return Err(UpstreamFailure::Reset),
                Err(H1Error::Failed(f)) => return Err(f),
            }
        } else if let Some(tx) = self.inner.h2_for(upstream) {
            return send_h2(upstream, req, tx).await;
        }
        // Boxed: connecting (TCP, TLS, the HTTP/2 handshake) is a large
        // future, and inline it would make every request's future that
        // large, copied whole at each of the stack's layers.
        Box::pin(self.send_fresh(upstream, req)).await
    }

    /// Sends a request whose body streams from the client (an upload): it
    /// goes out once at most. On a pooled HTTP/1.1 connection that had
    /// closed before hyper took the request, it goes again on a fresh one
    /// (nothing of it was read); once anything may have left, a failure is
    /// final. The request's URI may be origin-form; `Host` is set here.
    pub async fn send_streamed(
        &self,
        upstream: &Upstream,
        req: Request<OutgoingBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamFailure> {
        let req = if let Some(tx) = self.inner.take_idle(upstream) {
            match self.exchange_h1(upstream, tx, req).await {
                Ok(resp) => return Ok(resp),
                Err((H1Error::NotSent, Some(unsent))) => unsent,
                Err((H1Error::Failed(f), _)) => return Err(f),
                Err(_) => return Err(UpstreamFailure::Reset),
            }
        } else if let Some(tx) = self.inner.h2_for(upstream) {
            return exchange_h2(h2_form(upstream, req), tx).await;
        } else {
            req
        };
        Box::pin(async move {
            match self.connect(upstream).await? {
                Fresh::H1(tx) => match self.exchange_h1(upstream, tx, req).await {
                    Ok(resp) => Ok(resp),
                    Err((H1Error::Failed(f), _)) => Err(f),
                    Err(_) => Err(UpstreamFailure::Reset),
                },
                Fresh::H2(tx) => exchange_h2(h2_form(upstream, req), tx).await,
            }
        })
        .await
    }

    /// One exchange on an HTTP/1.1 connection; the connection goes back to
    /// the pool with the answer's head (hyper makes it ready again once the
    /// body has been read).
    async fn send_h1(
        &self,
        upstream: &Upstream,
        tx: http1::SendRequest<OutgoingBody>,
        req: &Request<Bytes>,
    ) -> Result<Response<UpstreamBody>, H1Error> {
        let mut owned = Request::new(OutgoingBody::full(req.body().clone()));
        *owned.method_mut() = req.method().clone();
        *owned.uri_mut() = req.uri().clone();
        *owned.headers_mut() = req.headers().clone();
        self.exchange_h1(upstream, tx, owned)
            .await
            .map_err(|(e, _)| e)
    }

    /// One exchange of an owned request on an HTTP/1.1 connection (its URI
    /// made origin-form, `Host` added when missing). When hyper hands the
    /// request back unsent, it comes back with the error.
    async fn exchange_h1(
        &self,
        upstream: &Upstream,
        mut tx: http1::SendRequest<OutgoingBody>,
        mut owned: Request<OutgoingBody>,
    ) -> Result<Response<UpstreamBody>, (H1Error, Option<Request<OutgoingBody>>)> {
        // Origin form: only the path and query go on the wire.
        *owned.uri_mut() = owned
            .uri()
            .path_and_query()
            .and_then(|pq| Uri::try_from(pq.as_str()).ok())
            .unwrap_or_else(|| Uri::from_static("/"));
        if !owned.headers().contains_key(HOST) {
            if let Ok(host) = http::HeaderValue::from_str(upstream.authority.as_str()) {
                owned.headers_mut().insert(HOST, host);
            }
        }
        match tx.try_send_request(owned).await {
            // A protocol switch the gateway never asks for: hyper hands
            // the 101 over as an answer, and passed on it would take the
            // client's connection with it. The connection is not kept.
            Ok(resp) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                Err((H1Error::Failed(UpstreamFailure::Protocol), None))
            }
            Ok(resp) => {
                self.inner.put(upstream.clone(), tx);
                Ok(resp.map(UpstreamBody))
            }
            Err(mut e) => {
                if let Some(unsent) = e.take_message() {
                    return Err((H1Error::NotSent, Some(unsent)));
                }
                let err = e.into_error();
                tracing::debug!(error = %err, "upstream HTTP/1.1 exchange failed");
                if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
                    Err((H1Error::ClosedBeforeAnswer, None))
                } else {
                    Err((H1Error::Failed(failure(&err)), None))
                }
            }
        }
    }

    /// Connects, then sends on the new connection.
    async fn send_fresh(
        &self,
        upstream: &Upstream,
        req: &Request<Bytes>,
    ) -> Result<Response<UpstreamBody>, UpstreamFailure> {
        match self.connect(upstream).await? {
            Fresh::H1(tx) => match self.send_h1(upstream, tx, req).await {
                Ok(resp) => Ok(resp),
                // The new connection closed before hyper wrote the request:
                // a failed connection, nothing of the request left (callers
                // may send it again, whatever its method).
                Err(H1Error::NotSent) => Err(UpstreamFailure::Connect),
                Err(H1Error::ClosedBeforeAnswer) => Err(UpstreamFailure::Reset),
                Err(H1Error::Failed(f)) => Err(f),
            },
            Fresh::H2(tx) => send_h2(upstream, req, tx).await,
        }
    }

    /// Connects to `upstream`: TCP, TLS for `https`, and HTTP/2 when ALPN
    /// chose it. The connection's task runs on the caller's runtime (its
    /// worker's).
    async fn connect(&self, upstream: &Upstream) -> Result<Fresh, UpstreamFailure> {
        let mut connector = self.inner.connector.clone();
        let io = connector
            .call(absolute(upstream, "/"))
            .await
            .map_err(|_| UpstreamFailure::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_HEAD_BYTES as u32)
                .handshake(io)
                .await
                .map_err(|_| UpstreamFailure::Connect)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            self.inner.set_h2(upstream.clone(), tx.clone());
            Ok(Fresh::H2(tx))
        } else {
            let (tx, conn) = http1::Builder::new()
                .max_header_size(MAX_HEAD_BYTES)
                .handshake(io)
                .await
                .map_err(|_| UpstreamFailure::Connect)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
                }
            });
            Ok(Fresh::H1(tx))
        }
    }
}

/// `upstream` with `path_and_query`, as an absolute URI.
fn absolute(upstream: &Upstream, path_and_query: &str) -> Uri {
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

enum Fresh {
    H1(http1::SendRequest<OutgoingBody>),
    H2(http2::SendRequest<OutgoingBody>),
}

/// Methods a client may repeat on its own (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// Sends on the upstream's HTTP/2 connection: hyper's client wants the
/// request owned and its URI absolute. The authority travels as
/// `:authority` (from the URI), so the request's `Host` is left out: a
/// second one beside it is a malformed request to HTTP/2 servers (nginx
/// answers 400 "client sent duplicate host header"; RFC 9113 §8.3.1).
async fn send_h2(
    upstream: &Upstream,
    req: &Request<Bytes>,
    tx: http2::SendRequest<OutgoingBody>,
) -> Result<Response<UpstreamBody>, UpstreamFailure> {
    let mut owned = Request::new(OutgoingBody::full(req.body().clone()));
    *owned.method_mut() = req.method().clone();
    *owned.uri_mut() = absolute(
        upstream,
        req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
    );
    let headers = owned.headers_mut();
    headers.reserve(req.headers().len());
    for (name, value) in req.headers() {
        if name != http::header::HOST {
            headers.append(name, value.clone());
        }
    }
    exchange_h2(owned, tx).await
}

/// Sends an owned request, its URI already absolute and without `Host`, on
/// the upstream's HTTP/2 connection.
async fn exchange_h2(
    owned: Request<OutgoingBody>,
    mut tx: http2::SendRequest<OutgoingBody>,
) -> Result<Response<UpstreamBody>, UpstreamFailure> {
    tx.ready().await.map_err(|e| failure(&e))?;
    let resp = tx.send_request(owned).await.map_err(|e| failure(&e))?;
    Ok(resp.map(UpstreamBody))
}

/// `req` for HTTP/2: its URI absolute, no `Host` beside `:authority`.
fn h2_form(upstream: &Upstream, mut req: Request<OutgoingBody>) -> Request<OutgoingBody> {
    let uri = absolute(
        upstream,
        req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
    );
    *req.uri_mut() = uri;
    req.headers_mut().remove(HOST);
    req
}

/// A transport failure's class, for metrics and the answer's status.
fn failure(e: &hyper::Error) -> UpstreamFailure {
    classify_chain(Some(e))
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used connection that is ready (its last answer
    /// read to the end), open and young enough; closed and old ones are
    /// dropped on the way, busy ones stay.
    fn take_idle(&self, key: &Upstream) -> Option<http1::SendRequest<OutgoingBody>> {
        let mut conns = self.lock();
        let list = &mut conns.idle.iter_mut().find(|(k, _)| k == key)?.1;
        let now = Instant::now();
        list.retain(|idle| {
            !idle.tx.is_closed() && now.duration_since(idle.since) < self.idle_timeout
        });
        let ready = list.iter().rposition(|idle| idle.tx.is_ready())?;
        Some(list.remove(ready).tx)
    }

    fn put(&self, key: Upstream, tx: http1::SendRequest<OutgoingBody>) {
        if self.max_idle == 0 {
            return;
        }
        let mut conns = self.lock();
        let i = match conns.idle.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                conns.idle.push((key, Vec::new()));
                conns.idle.len() - 1
            }
        };
        let list = &mut conns.idle[i].1;
        if list.len() >= self.max_idle {
            // The oldest goes: the most recently used stay warm.
            list.remove(0);
        }
        list.push(Idle {
            tx,
            since: Instant::now(),
        });
    }

    fn h2_for(&self, key: &Upstream) -> Option<http2::SendRequest<OutgoingBody>> {
        let mut conns = self.lock();
        let i = conns.h2.iter().position(|(k, _)| k == key)?;
        if conns.h2[i].1.is_closed() {
            conns.h2.swap_remove(i);
            return None;
        }
        Some(conns.h2[i].1.clone())
    }

    fn set_h2(&self, key: Upstream, tx: http2::SendRequest<OutgoingBody>) {
        let mut conns = self.lock();
        match conns.h2.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = tx,
            None => conns.h2.push((key, tx)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    /// A tiny HTTP/1.1 server: answers `per_conn` requests on each
    /// connection, then closes it. Counts the connections it accepted.
    async fn server(per_conn: usize) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..per_conn {
                        // Read one request head (the tests send no body).
                        loop {
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                buf.drain(..end + 4);
                                break;
                            }
                            let mut chunk = [0u8; 1024];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = br#"{"code":0,"msg":"success"}"#;
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if s.write_all(head.as_bytes()).await.is_err()
                            || s.write_all(body).await.is_err()
                        {
                            return;
                        }
                    }
                    // Closed while the client thinks it is idle.
                });
            }
        });
        (
            format!("http://{addr}/open-apis/x").parse().unwrap(),
            accepted,
        )
    }

    /// A pool for plain-HTTP test servers (no trusted roots).
    fn pool() -> Pool {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Pool::new(connector, Duration::from_secs(60), 4)
    }

    /// `uri`'s upstream, and a request for its path.
    fn split(uri: &Uri, method: Method) -> (Upstream, Request<Bytes>) {
        let upstream = Upstream {
            scheme: uri.scheme().unwrap().clone(),
            authority: uri.authority().unwrap().clone(),
        };
        let req = Request::builder()
            .method(method)
            .uri(uri.path_and_query().unwrap().as_str())
            .body(Bytes::new())
            .unwrap();
        (upstream, req)
    }

    async fn get(pool: &Pool, uri: &Uri) -> Result<i64, UpstreamFailure> {
        let (upstream, req) = split(uri, Method::GET);
        let resp = pool.send(&upstream, &req).await?;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(crate::feishu::read_code(&body).unwrap())
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_answer_was_read() {
        let (uri, accepted) = server(100).await;
        let pool = pool();
        for _ in 0..5 {
            assert_eq!(get(&pool, &uri).await, Ok(0));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_without_failing_the_request() {
        // The server closes each connection after one answer: every
        // request after the first finds its pooled connection dead, and
        // must go out again on a fresh one.
        let (uri, accepted) = server(1).await;
        let pool = pool();
        for i in 0..8 {
            // Half the time the close has arrived before the next request
            // (the pool drops the connection), half the time not yet (the
            // request is refused unwritten and sent again).
            if i % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(get(&pool, &uri).await, Ok(0), "request {i}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 8);
    }

    #[tokio::test]
    async fn answers_never_mix_whether_a_body_is_pending_read_or_dropped() {
        let (uri, accepted) = server(100).await;
        let pool = pool();
        let (upstream, req) = split(&uri, Method::GET);
        // Answer head read, body not: another request meanwhile gets its
        // own answer (on another connection, or on the same one once hyper
        // has taken the small body in), and the first body stays intact.
        let first = pool.send(&upstream, &req).await.unwrap();
        assert_eq!(get(&pool, &uri).await, Ok(0));
        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(crate::feishu::read_code(&body), Some(0));
        let (a, b) = tokio::join!(get(&pool, &uri), get(&pool, &uri));
        assert_eq!((a, b), (Ok(0), Ok(0)));
        // Dropped before its end, a body's connection is drained or
        // closed by hyper; either way the next requests are answered.
        drop(pool.send(&upstream, &req).await.unwrap());
        let (a, b) = tokio::join!(get(&pool, &uri), get(&pool, &uri));
        assert_eq!((a, b), (Ok(0), Ok(0)));
        assert!(
            accepted.load(Ordering::SeqCst) <= 3,
            "connections are reused"
        );
    }

    /// A server that answers the first request on each connection, then
    /// reads the second and closes without answering. Counts connections
    /// and the requests it read.
    async fn answers_once_then_drops_the_next() -> (Uri, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (conns, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, r) = (Arc::clone(&conns), Arc::clone(&requests));
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                tokio::spawn(async move {
                    for answered in [true, false] {
                        let mut got = Vec::new();
                        // Heads only: the requests here have no body.
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&chunk[..n]),
                            }
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        if answered {
                            let body = br#"{"code":0,"msg":"success"}"#;
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                                body.len()
                            );
                            s.write_all(head.as_bytes()).await.unwrap();
                            s.write_all(body).await.unwrap();
                        }
                    }
                });
            }
        });
        (
            format!("http://{addr}/open-apis/x").parse().unwrap(),
            conns,
            requests,
        )
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_after_the_request_was_written_is_retried_only_for_idempotent_methods(
    ) {
        let (uri, conns, requests) = answers_once_then_drops_the_next().await;
        let pool = pool();
        // GET: the pooled connection swallows it; it goes again on a fresh one.
        assert_eq!(get(&pool, &uri).await, Ok(0));
        assert_eq!(get(&pool, &uri).await, Ok(0));
        assert_eq!(
            (
                conns.load(Ordering::SeqCst),
                requests.load(Ordering::SeqCst)
            ),
            (2, 3)
        );
        // POST: Feishu may have acted on it; never sent twice.
        let (upstream, post) = split(&uri, Method::POST);
        let resp = pool.send(&upstream, &post).await;
        assert_eq!(resp.err(), Some(UpstreamFailure::Reset));
        assert_eq!(
            (
                conns.load(Ordering::SeqCst),
                requests.load(Ordering::SeqCst)
            ),
            (2, 4)
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let uri: Uri = format!("http://{addr}/x").parse().unwrap();
        assert_eq!(get(&pool(), &uri).await, Err(UpstreamFailure::Connect));
    }
}
