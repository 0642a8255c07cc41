//! The admin listener: `/healthz`, `/readyz` and `/metrics`. It never shares
//! a port with the main listener, so it can be left off the service network.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::body::ProxyBody;
use crate::metrics::Metrics;
use crate::store::StoreApps;
use crate::token::TokenManager;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct Admin {
    tokens: Arc<TokenManager>,
    store: Arc<StoreApps>,
    metrics: Arc<Metrics>,
}

impl Admin {
    /// The admin endpoints over the gateway's shared state.
    pub fn new(tokens: Arc<TokenManager>, store: Arc<StoreApps>, metrics: Arc<Metrics>) -> Self {
        Admin {
            tokens,
            store,
            metrics,
        }
    }

    /// Answers one admin request.
    pub fn handle(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"status": "method not allowed"}),
            );
        }
        match req.uri().path() {
            "/healthz" => json(StatusCode::OK, &json!({"status": "ok"})),
            "/readyz" => {
                let apps = self.tokens.statuses();
                let ready = apps.iter().all(|a| a.has_token);
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(
                    status,
                    &json!({"ready": ready, "apps": apps, "store_apps": self.store.statuses()}),
                )
            }
            "/metrics" => {
                let mut resp = Response::new(ProxyBody::full(self.metrics.render()));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            _ => json(StatusCode::NOT_FOUND, &json!({"status": "not found"})),
        }
    }

    /// The admin listener's service.
    pub fn service(
        self,
    ) -> impl tower::Service<
        Request<Incoming>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = std::future::Ready<Result<Response<ProxyBody>, Infallible>>,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(move |req: Request<Incoming>| std::future::ready(Ok(self.handle(&req))))
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(serde_json::to_vec(v).unwrap_or_default()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
