//! The admin listener: `/healthz`, `/readyz` and `/metrics`. It never shares
//! a port with the main listener, so it can be left off the service network.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::observe::metrics::Metrics;
use crate::proxy::body::ProxyBody;
use crate::quota::Engine;
use crate::store_apps::StoreApps;
use crate::tokens::TokenManager;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct Admin {
    tokens: Arc<TokenManager>,
    store: Arc<StoreApps>,
    metrics: Arc<Metrics>,
    quota: Option<Engine>,
}

impl Admin {
    /// The admin endpoints over the gateway's shared state.
    pub fn new(tokens: Arc<TokenManager>, store: Arc<StoreApps>, metrics: Arc<Metrics>) -> Self {
        Admin {
            tokens,
            store,
            metrics,
            quota: None,
        }
    }

    /// Also reports the quota engine's backend in `/readyz`.
    pub fn with_quota(mut self, quota: Engine) -> Self {
        self.quota = Some(quota);
        self
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
                let settled = self.quota.as_ref().is_none_or(Engine::is_settled);
                let ready = apps.iter().all(|a| a.has_token) && settled;
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                // The quota backend's state is reported, not required (only
                // its first probe, at start, is waited for): every replica
                // shares the same Redis, so taking them all out of service
                // would turn a quota outage into a full one; the fail mode
                // already decides what limited routes get.
                let quota = self.quota.as_ref().map(Engine::status);
                json(
                    status,
                    &json!({"ready": ready, "apps": apps, "store_apps": self.store.statuses(), "quota": quota}),
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
