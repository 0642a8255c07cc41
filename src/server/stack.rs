//! The service stack of the main listener, assembled in one place.
//!
//! Read it top to bottom as the order a request goes through. Each layer
//! says why it is there and why at that depth; the gateway's own work (auth,
//! body, token, forwarding) happens in the phases of [`crate::proxy`].

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderName, Request, Response};
use hyper::body::Incoming;
use tower::{service_fn, Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;

use crate::proxy::body::ProxyBody;
use crate::proxy::error::GatewayError;
use crate::proxy::{Gateway, X_REQUEST_ID};
use crate::server::request_id::RequestIdLayer;

/// The main listener's service: request ids, panic safety, then the
/// gateway's phases.
pub fn gateway_service(
    live: Arc<arc_swap::ArcSwap<Gateway>>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<
        impl http_body::Body<Data = bytes::Bytes, Error = impl Into<tower_http::BoxError>>
            + Send
            + 'static,
    >,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        // Outermost: give every request an id (keeping the caller's), so
        // the access log and every layer below can name it, and return it
        // on every answer, gateway-made ones included, so a caller can
        // quote it when something goes wrong.
        .layer(RequestIdLayer::new(HeaderName::from_static(X_REQUEST_ID)))
        // A bug in one request must not cut the connection: a panic becomes
        // a 500 JSON answer in Feishu's shape (inside the id layers, so it
        // still carries the request id).
        .layer(CatchPanicLayer::custom(panic_answer))
        // The gateway: route, authenticate, read body, forward, log. Each
        // request takes the current generation when it starts and finishes
        // on it, whatever a live reload swaps in meanwhile.
        .service(service_fn(move |req: Request<Incoming>| {
            let gateway = live.load_full();
            async move { Ok::<_, Infallible>(gateway.handle(req).await) }
        }))
}

fn panic_answer(_err: Box<dyn std::any::Any + Send + 'static>) -> Response<ProxyBody> {
    tracing::error!("a request handler panicked; answered 500");
    GatewayError::Internal.into_response()
}
