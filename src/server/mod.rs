//! Downstream: the gateway's callers' connections.
//!
//! | file            | concern                                                    |
//! |-----------------|------------------------------------------------------------|
//! | `mod.rs`        | accept loop, title-cased HTTP/1, HTTP/2, graceful drain     |
//! | `listener.rs`   | binding with a listen backlog; open connections per listener, limited |
//! | `tls.rs`        | HTTPS on the listener: rustls, ALPN, certificate reload     |
//! | `stack.rs`      | the main listener's tower layers, in order, each with its why |
//! | `request_id.rs` | an id on every request and its answer (`X-Request-Id`)     |
//! | `admin.rs`      | `/healthz`, `/readyz`, `/metrics` on the admin listener     |
//! | `status.rs`     | the admin listener's status page (`/status`, `/status.json`) |
//!
//! [`serve`] takes a bound listener, a service and a shutdown future, so
//! tests bind `127.0.0.1:0` and call it directly; [`serve_with_tls`] does the
//! same over HTTPS. HTTP/1 answers go out with title-cased header names
//! (`X-Tt-Logid`, `Content-Type`), over TLS too: the official Python SDK
//! looks them up case-sensitively.

pub mod admin;
pub mod listener;
pub mod request_id;
pub mod stack;
pub mod status;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

use crate::server::listener::ConnectionLimit;
use crate::server::tls::ReloadingAcceptor;
use crate::workers::Workers;

/// A service a listener can serve: it answers every request (its errors are
/// answers too, hence `Infallible`) and can be cloned per connection.
pub trait Answering<B>:
    tower::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> Answering<B> for S
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
}

/// A body hyper can send on either protocol.
pub trait AnswerBody:
    http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

impl<B> AnswerBody for B
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
}

/// Serves `service` on `listener` over plain HTTP until `shutdown`
/// completes, then stops accepting and gives open connections up to `grace`
/// to finish their in-flight requests.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    S: Answering<B>,
    B: AnswerBody,
{
    serve_with_tls(listener, None, None, service, shutdown, grace).await
}

/// [`serve`], over HTTPS when `tls` is given: each accepted connection does
/// its TLS handshake in its own task, bounded by the acceptor's handshake
/// timeout, so a slow, silent or broken client never holds up the accept
/// loop; a failed handshake closes only that connection. The protocol is
/// HTTP/2 when ALPN chose `h2`, HTTP/1.1 otherwise.
///
/// With `workers`, each accepted connection is served on the next
/// connection worker ([`crate::workers`]); otherwise on the caller's
/// runtime.
pub async fn serve_with_tls<S, B>(
    listener: TcpListener,
    tls: Option<ReloadingAcceptor>,
    workers: Option<Arc<Workers>>,
    service: S,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    S: Answering<B>,
    B: AnswerBody,
{
    serve_limited(
        listener,
        tls,
        workers,
        ConnectionLimit::unlimited(),
        service,
        shutdown,
        grace,
    )
    .await
}

/// [`serve_with_tls`], holding at most `limit`'s connections open at once:
/// beyond it a new connection is closed as soon as it is accepted, before
/// any byte is read (see [`listener`]).
///
/// The accept loop does nothing per connection but admit it and hand it
/// on (TLS handshakes and HTTP run in the connection's own task, on a
/// worker when there are workers), so a burst of connects is taken off the
/// kernel's queue at the rate `accept` returns them; tokio's cooperative
/// budget makes the loop yield now and then, so it starves no other task
/// of its thread either.
pub async fn serve_limited<S, B>(
    listener: TcpListener,
    tls: Option<ReloadingAcceptor>,
    workers: Option<Arc<Workers>>,
    limit: ConnectionLimit,
    service: S,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    S: Answering<B>,
    B: AnswerBody,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .title_case_headers(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(place) = limit.admit() else {
                    // At the limit: closed at once, unread (FIN, not RST).
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                // Taken here, before any shutdown can be signalled, so a
                // connection still in its handshake is drained like the rest.
                let watcher = graceful.watcher();
                let builder = Arc::clone(&builder);
                let service = service.clone();
                let tls = tls.clone();
                let serve = move |stream: TcpStream| async move {
                    let _place = place;
                    match tls {
                        None => connection(&builder, TokioIo::new(stream), service, watcher).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                connection(&builder, TokioIo::new(stream), service, watcher).await
                            }
                            // Scanners and clients that do not trust the
                            // certificate end here; nothing to answer.
                            Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        },
                    }
                };
                match &workers {
                    // The socket moves to the worker's event loop: tokio
                    // sockets belong to the runtime that registered them.
                    Some(workers) => match stream.into_std() {
                        Ok(std_stream) => workers.spawn(async move {
                            match TcpStream::from_std(std_stream) {
                                Ok(stream) => serve(stream).await,
                                Err(e) => tracing::warn!(error = %e, "cannot register a connection with its worker"),
                            }
                        }),
                        Err(e) => tracing::warn!(error = %e, "cannot hand a connection to a worker"),
                    },
                    None => {
                        tokio::spawn(serve(stream));
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!("all connections closed"),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "grace period over; closing the remaining connections");
        }
    }
}

/// Serves one connection (plain or TLS) until it ends or is drained.
async fn connection<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    watcher: Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Answering<B>,
    B: AnswerBody,
{
    let conn = builder
        .serve_connection(io, TowerToHyperService::new(service))
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
