//! The service stack of the main listener, assembled in one place.
//!
//! Read it top to bottom as the order a request goes through. Each layer
//! says why it is there and why at that depth; the gateway's own work (auth,
//! body, token, forwarding) happens in the phases of [`crate::proxy`].

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request, Response};
use hyper::body::Incoming;
use tower::{service_fn, Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::body::ProxyBody;
use crate::error::GatewayError;
use crate::proxy::{Gateway, X_REQUEST_ID};

/// The main listener's service: request ids, panic safety, then the
/// gateway's phases.
pub fn gateway_service(
    gateway: Arc<Gateway>,
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
    let header = HeaderName::from_static(X_REQUEST_ID);
    ServiceBuilder::new()
        // Outermost: give every request an id (keeping the caller's), so
        // the access log and every layer below can name it.
        .layer(SetRequestIdLayer::new(header.clone(), RequestIds::new()))
        // Return that id on every answer, gateway-made ones included, so a
        // caller can quote it when something goes wrong.
        .layer(PropagateRequestIdLayer::new(header))
        // A bug in one request must not cut the connection: a panic becomes
        // a 500 JSON answer in Feishu's shape (inside the id layers, so it
        // still carries the request id).
        .layer(CatchPanicLayer::custom(panic_answer))
        // The gateway: route, authenticate, read body, forward, log.
        .service(service_fn(move |req: Request<Incoming>| {
            let gateway = Arc::clone(&gateway);
            async move { Ok::<_, Infallible>(gateway.handle(req).await) }
        }))
}

fn panic_answer(_err: Box<dyn std::any::Any + Send + 'static>) -> Response<ProxyBody> {
    tracing::error!("a request handler panicked; answered 500");
    GatewayError::Internal.into_response()
}

/// Writes the low `out.len()` hex digits of `n` into `out`.
fn hex_into(out: &mut [u8], mut n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// Request ids: a random per-process prefix and a counter. Unique, cheap,
/// and sortable within one process.
#[derive(Clone)]
struct RequestIds {
    prefix: u32,
    next: Arc<AtomicU64>,
}

impl RequestIds {
    fn new() -> Self {
        RequestIds {
            prefix: rand::random(),
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // `gw-<8 hex>-<12 hex>`, written into a stack buffer.
        let mut buf = *b"gw-00000000-000000000000";
        hex_into(&mut buf[3..11], u64::from(self.prefix));
        hex_into(&mut buf[12..24], n);
        HeaderValue::from_bytes(&buf).ok().map(RequestId::new)
    }
}
