//! The upstream connection pool of the request path.
//!
//! One [`Pool`] per connection worker ([`crate::workers`]) holds that
//! worker's connections to Feishu: idle HTTP/1.1 connections in a stack
//! (most recently used first), and one multiplexed HTTP/2 connection per
//! upstream when ALPN chose `h2`. It sits directly on
//! `hyper::client::conn`: hyper-util's general-purpose pool costs about
//! 8,400 instructions per request here (a hashed checkout and return, a
//! `Host` header entry, connection metadata put into each response's
//! extensions), about a tenth of the gateway's whole per-request work
//! (callgrind, `bash benches/load.sh --profile callgrind`).
//!
//! What it keeps from a full client:
//! - a request that could not be written on a pooled connection (the
//!   server closed it while idle) is sent again on a fresh one, once;
//! - idle connections are dropped after `pool.idle_timeout` and at most
//!   `pool.max_idle_per_host` are kept per upstream;
//! - an HTTP/1.1 connection goes back to the pool only when its answer was
//!   read to the end ([`Checkout`]).
//!
//! Token calls and other background traffic keep using hyper-util's client
//! ([`crate::upstream::HttpClient`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower::Service as _;

use crate::error::UpstreamFailure;

/// One upstream: where connections go.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    scheme: Scheme,
    authority: Authority,
}

struct Idle {
    tx: http1::SendRequest<Full<Bytes>>,
    since: Instant,
}

#[derive(Default)]
struct Conns {
    /// Idle HTTP/1.1 connections per upstream, most recent last.
    idle: Vec<(Key, Vec<Idle>)>,
    /// The HTTP/2 connection per upstream, shared by every request.
    h2: Vec<(Key, http2::SendRequest<Full<Bytes>>)>,
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

/// The HTTP/1.1 connection a request used, until its answer was read.
/// [`Checkout::release`] after reading the answer to its end returns the
/// connection to the pool; dropping it earlier waits (in a task) for the
/// answer to finish first. HTTP/2 checkouts hold nothing.
#[must_use = "release the checkout once the answer is read"]
pub struct Checkout {
    back: Option<(Arc<Inner>, Key, http1::SendRequest<Full<Bytes>>)>,
}

impl Checkout {
    /// The answer was read to its end: the connection is free again.
    pub fn release(mut self) {
        if let Some((inner, key, tx)) = self.back.take() {
            if tx.is_ready() {
                inner.put(key, tx);
            } else {
                wait_then_put(inner, key, tx);
            }
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some((inner, key, tx)) = self.back.take() {
            wait_then_put(inner, key, tx);
        }
    }
}

/// Returns `tx` to the pool once its connection has finished the answer
/// in flight (the caller streams it on), or drops it if the connection
/// closes instead.
fn wait_then_put(inner: Arc<Inner>, key: Key, mut tx: http1::SendRequest<Full<Bytes>>) {
    if tx.is_closed() {
        return;
    }
    tokio::spawn(async move {
        if tx.ready().await.is_ok() {
            inner.put(key, tx);
        }
    });
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

    /// Sends `req` (an absolute URI) and returns Feishu's answer head with
    /// its body still to read, and the checkout to release after reading.
    pub async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Checkout), UpstreamFailure> {
        let key = Key {
            scheme: req.uri().scheme().cloned().unwrap_or(Scheme::HTTPS),
            authority: req
                .uri()
                .authority()
                .cloned()
                .ok_or(UpstreamFailure::Protocol)?,
        };
        if !req.headers().contains_key(HOST) {
            let host = HeaderValue::from_str(key.authority.as_str())
                .map_err(|_| UpstreamFailure::Protocol)?;
            req.headers_mut().insert(HOST, host);
        }
        // A pooled connection first; if the server had closed it before
        // the request could be written, once more on a fresh connection.
        if let Some(tx) = self.inner.take_idle(&key) {
            match self.send_h1(req, key.clone(), tx).await {
                Err(Resend(Some(req))) => return Box::pin(self.send_fresh(req, key)).await,
                Err(Resend(None)) => return Err(UpstreamFailure::Reset),
                Ok(sent) => return sent,
            }
        }
        if let Some(tx) = self.inner.h2_for(&key) {
            return send_h2(req, tx).await;
        }
        // Boxed: connecting (TCP, TLS, the HTTP/2 handshake) is a large
        // future, and inline it would make every request's future that
        // large, copied whole at each of the stack's layers.
        Box::pin(self.send_fresh(req, key)).await
    }

    /// Connects, then sends on the new connection.
    async fn send_fresh(
        &self,
        req: Request<Full<Bytes>>,
        key: Key,
    ) -> Result<(Response<Incoming>, Checkout), UpstreamFailure> {
        match self.connect(&key, req.uri()).await? {
            Fresh::H1(tx) => match self.send_h1(req, key, tx).await {
                Ok(sent) => sent,
                Err(_) => Err(UpstreamFailure::Reset),
            },
            Fresh::H2(tx) => send_h2(req, tx).await,
        }
    }

    /// Sends on an HTTP/1.1 connection. `Err(Resend(Some(req)))`: the
    /// request was not written and may go again elsewhere.
    async fn send_h1(
        &self,
        mut req: Request<Full<Bytes>>,
        key: Key,
        mut tx: http1::SendRequest<Full<Bytes>>,
    ) -> Result<Result<(Response<Incoming>, Checkout), UpstreamFailure>, Resend> {
        // HTTP/1.1 wants the origin form (`/path?query`) on the wire.
        let absolute = std::mem::take(req.uri_mut());
        *req.uri_mut() = absolute
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        if tx.ready().await.is_err() {
            *req.uri_mut() = absolute;
            return Err(Resend(Some(req)));
        }
        match tx.try_send_request(req).await {
            Ok(resp) => Ok(Ok((
                resp,
                Checkout {
                    back: Some((Arc::clone(&self.inner), key, tx)),
                },
            ))),
            Err(mut e) => match e.take_message() {
                Some(mut req) => {
                    *req.uri_mut() = absolute;
                    Err(Resend(Some(req)))
                }
                None => Ok(Err(failure(e.error()))),
            },
        }
    }

    /// Connects to `uri`'s upstream (`uri` is the request's absolute URI:
    /// the connector uses only its scheme, host and port).
    async fn connect(&self, key: &Key, uri: &Uri) -> Result<Fresh, UpstreamFailure> {
        let mut connector = self.inner.connector.clone();
        let io = connector
            .call(uri.clone())
            .await
            .map_err(|_| UpstreamFailure::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|_| UpstreamFailure::Connect)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            self.inner.set_h2(key.clone(), tx.clone());
            Ok(Fresh::H2(tx))
        } else {
            let (tx, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|_| UpstreamFailure::Connect)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            Ok(Fresh::H1(tx))
        }
    }
}

/// A request that was not written and may be sent again.
struct Resend(Option<Request<Full<Bytes>>>);

enum Fresh {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

async fn send_h2(
    req: Request<Full<Bytes>>,
    mut tx: http2::SendRequest<Full<Bytes>>,
) -> Result<(Response<Incoming>, Checkout), UpstreamFailure> {
    tx.ready().await.map_err(|e| failure(&e))?;
    let resp = tx.send_request(req).await.map_err(|e| failure(&e))?;
    Ok((resp, Checkout { back: None }))
}

/// A transport failure's class, for metrics and the answer's status.
fn failure(e: &hyper::Error) -> UpstreamFailure {
    crate::upstream::classify_chain(Some(e))
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open and
    /// young enough; older ones are dropped on the way.
    fn take_idle(&self, key: &Key) -> Option<http1::SendRequest<Full<Bytes>>> {
        let mut conns = self.lock();
        let list = &mut conns.idle.iter_mut().find(|(k, _)| k == key)?.1;
        let now = Instant::now();
        while let Some(idle) = list.pop() {
            if now.duration_since(idle.since) < self.idle_timeout
                && !idle.tx.is_closed()
                && idle.tx.is_ready()
            {
                return Some(idle.tx);
            }
        }
        None
    }

    fn put(&self, key: Key, tx: http1::SendRequest<Full<Bytes>>) {
        if self.max_idle == 0 || tx.is_closed() {
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

    fn h2_for(&self, key: &Key) -> Option<http2::SendRequest<Full<Bytes>>> {
        let mut conns = self.lock();
        let i = conns.h2.iter().position(|(k, _)| k == key)?;
        if conns.h2[i].1.is_closed() {
            conns.h2.swap_remove(i);
            return None;
        }
        Some(conns.h2[i].1.clone())
    }

    fn set_h2(&self, key: Key, tx: http2::SendRequest<Full<Bytes>>) {
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

    async fn get(pool: &Pool, uri: &Uri) -> Result<i64, UpstreamFailure> {
        let req = Request::builder()
            .uri(uri.clone())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (resp, checkout) = pool.send(req).await?;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        checkout.release();
        Ok(crate::upstream::read_code(&body).unwrap())
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
    async fn an_unreleased_checkout_returns_its_connection_when_the_answer_ends() {
        let (uri, accepted) = server(100).await;
        let pool = pool();
        let req = Request::builder()
            .uri(uri.clone())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (resp, checkout) = pool.send(req).await.unwrap();
        drop(checkout); // as for a streamed answer
        let _ = resp.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(get(&pool, &uri).await, Ok(0));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
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
