//! Request ids: every request gets one (the caller's `X-Request-Id` is
//! kept), and every answer carries it back, gateway-made ones included.
//!
//! One layer doing what tower-http's `SetRequestId` and `PropagateRequestId`
//! do together, through the header alone: those two keep the id in the
//! request's and the answer's extensions too, which costs four heap
//! allocations and about 2,400 instructions per request (callgrind,
//! `bash benches/load.sh --profile callgrind`), and nothing here reads
//! extensions.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

/// Adds request ids named by `header`; see the module docs.
#[derive(Clone, Debug)]
pub struct RequestIdLayer {
    header: HeaderName,
    ids: RequestIds,
}

impl RequestIdLayer {
    /// Ids in `header`, made by a fresh generator.
    pub fn new(header: HeaderName) -> Self {
        RequestIdLayer {
            header,
            ids: RequestIds::new(),
        }
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService {
            inner,
            header: self.header.clone(),
            ids: self.ids.clone(),
        }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct RequestIdService<S> {
    inner: S,
    header: HeaderName,
    ids: RequestIds,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequestIdService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let id = match req.headers().get(&self.header) {
            Some(id) => id.clone(),
            None => {
                let id = self.ids.next();
                req.headers_mut().insert(self.header.clone(), id.clone());
                id
            }
        };
        ResponseFuture {
            inner: self.inner.call(req),
            back: Some((self.header.clone(), id)),
        }
    }
}

pin_project_lite::pin_project! {
    /// Puts the request id on the answer unless it has one.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        back: Option<(HeaderName, HeaderValue)>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = ready!(this.inner.poll(cx))?;
        if let Some((name, id)) = this.back.take() {
            // The request's id, whatever the inner answer says: the caller
            // and the access log must name the same request (Feishu's own
            // id travels in `X-Tt-Logid`).
            resp.headers_mut().insert(name, id);
        }
        Poll::Ready(Ok(resp))
    }
}

/// Request ids: a random per-process prefix and a counter. Unique, cheap,
/// and sortable within one process.
#[derive(Clone, Debug)]
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

    /// `gw-<8 hex>-<12 hex>`, written into a stack buffer.
    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = *b"gw-00000000-000000000000";
        hex_into(&mut buf[3..11], u64::from(self.prefix));
        hex_into(&mut buf[12..24], n);
        HeaderValue::from_bytes(&buf).expect("hex digits and dashes are a header value")
    }
}

/// Writes the low `out.len()` hex digits of `n` into `out`.
fn hex_into(out: &mut [u8], mut n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{service_fn, ServiceExt as _};

    use super::*;

    /// A service answering with the id it saw, and optionally its own.
    fn echo(
        own: Option<&'static str>,
    ) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone {
        service_fn(move |req: Request<()>| async move {
            let seen = req.headers()["x-request-id"].to_str().unwrap().to_owned();
            let mut resp = Response::new(seen);
            if let Some(own) = own {
                resp.headers_mut()
                    .insert("x-request-id", HeaderValue::from_static(own));
            }
            Ok(resp)
        })
    }

    fn layer() -> RequestIdLayer {
        RequestIdLayer::new(HeaderName::from_static("x-request-id"))
    }

    #[tokio::test]
    async fn the_callers_id_is_kept_and_returned() {
        let svc = layer().layer(echo(None));
        let req = Request::builder()
            .header("x-request-id", "req-42")
            .body(())
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.body(), "req-42");
        assert_eq!(resp.headers()["x-request-id"], "req-42");
    }

    #[tokio::test]
    async fn a_missing_id_is_made_unique_and_returned() {
        let svc = layer().layer(echo(None));
        let mut seen = Vec::new();
        for _ in 0..3 {
            let resp = svc.clone().oneshot(Request::new(())).await.unwrap();
            assert_eq!(resp.headers()["x-request-id"], resp.body().as_str());
            assert!(resp.body().starts_with("gw-") && resp.body().len() == 24);
            seen.push(resp.into_body());
        }
        seen.dedup();
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    #[tokio::test]
    async fn an_answer_with_an_id_of_its_own_gets_the_requests() {
        let svc = layer().layer(echo(Some("inner")));
        let req = Request::builder()
            .header("x-request-id", "req-7")
            .body(())
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        let ids: Vec<_> = resp.headers().get_all("x-request-id").iter().collect();
        assert_eq!(ids, ["req-7"]);
    }

    #[test]
    fn hex() {
        let mut out = [0u8; 4];
        hex_into(&mut out, 0xabc);
        assert_eq!(&out, b"0abc");
    }
}
