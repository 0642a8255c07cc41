//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and the status
//! page (`/status`, `/status.json`: `status.rs`). It never shares a port
//! with the main listener, so it can be left off the service network.
//!
//! `/readyz` is about the POD, not about Feishu or any one app: 503 while
//! starting (until every app's first token call has ended, with a token or
//! with Feishu's refusal, and the quota backend's first probe is done,
//! bounded by `timeouts.startup`) and while draining; 200 otherwise. One
//! app with a wrong or revoked secret must not take every replica out of
//! the Service for every app (nor stall a rollout with `maxUnavailable:
//! 0`): its requests get 503 `token-unavailable`, its state shows in the
//! `/readyz` JSON and in `feishu_gateway_token_expiry_timestamp_seconds`,
//! and the alert FeishuGatewayAppWithoutToken fires.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tokio::time::Instant;

use super::status::{render_html, StatusPage};
use crate::proxy::body::ProxyBody;
use crate::proxy::Gateway;

/// The pod's own state, as `/readyz` reports it: starting (bounded by a
/// start timeout), serving, or draining.
#[derive(Debug)]
pub struct Readiness {
    started: Instant,
    start_timeout: Duration,
    draining: AtomicBool,
}

impl Readiness {
    /// Starting from now, for at most `start_timeout` (`timeouts.startup`).
    pub fn new(start_timeout: Duration) -> Self {
        Readiness {
            started: Instant::now(),
            start_timeout,
            draining: AtomicBool::new(false),
        }
    }

    /// From now on `/readyz` answers 503: the gateway stops accepting and
    /// drains its in-flight requests.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// True once [`Readiness::drain`] was called.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// True while the start timeout has not passed.
    pub fn within_start_timeout(&self) -> bool {
        self.started.elapsed() < self.start_timeout
    }

    /// When the start timeout ends.
    pub fn start_deadline(&self) -> Instant {
        self.started + self.start_timeout
    }
}

/// What the admin endpoints read: the gateway's current generation (a
/// live reload swaps it) and the pod's readiness.
#[derive(Clone)]
pub struct Admin {
    live: Arc<arc_swap::ArcSwap<Gateway>>,
    readiness: Arc<Readiness>,
    status: Arc<StatusPage>,
}

impl Admin {
    /// The admin endpoints over the gateway's current state (`live`)
    /// and the pod's `readiness`, with the status page's state.
    pub fn new(
        live: Arc<arc_swap::ArcSwap<Gateway>>,
        readiness: Arc<Readiness>,
        status: Arc<StatusPage>,
    ) -> Self {
        Admin {
            live,
            readiness,
            status,
        }
    }

    /// True while the gateway is starting: some app's first token call, or
    /// the quota backend's first probe, has not ended, and the start
    /// timeout has not passed.
    pub fn starting(&self) -> bool {
        let gateway = self.live.load();
        let settled = gateway.tokens().all_settled() && gateway.quota().is_settled();
        !settled && self.readiness.within_start_timeout()
    }

    /// `ready`, `starting` or `draining`.
    fn state(&self) -> &'static str {
        if self.readiness.draining() {
            "draining"
        } else if self.starting() {
            "starting"
        } else {
            "ready"
        }
    }

    /// Answers one admin request.
    pub async fn handle(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let gateway = self.live.load_full();
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"status": "method not allowed"}),
            );
        }
        match req.uri().path() {
            "/healthz" => json(StatusCode::OK, &json!({"status": "ok"})),
            "/readyz" => {
                // About the pod: starting or draining. Apps' tokens and the
                // quota backend are reported, not required: every replica
                // shares the same Feishu apps and the same Redis, so taking
                // them all out of service for one app's secret or a Redis
                // outage would turn it into a full outage.
                let starting = self.starting();
                let draining = self.readiness.draining();
                let ready = !starting && !draining;
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let apps = gateway.tokens().statuses();
                let without_token: Vec<&str> = apps
                    .iter()
                    .filter(|a| !a.has_token)
                    .map(|a| a.app.as_str())
                    .collect();
                let quota = gateway.quota().status();
                json(
                    status,
                    &json!({
                        "ready": ready,
                        "starting": starting,
                        "draining": draining,
                        "apps_without_token": without_token,
                        "apps": apps,
                        "store_apps": gateway.store().statuses(),
                        "quota": quota,
                    }),
                )
            }
            "/" | "/status" => {
                // `?refresh=0` stops the page's own refresh.
                let refresh = if req.uri().query().is_some_and(|q| q.contains("refresh=0")) {
                    0
                } else {
                    5
                };
                let status = self.status.collect(&gateway, self.state()).await;
                let mut resp = Response::new(ProxyBody::full(render_html(&status, refresh)));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                resp
            }
            "/status.json" => {
                let status = self.status.collect(&gateway, self.state()).await;
                json(
                    StatusCode::OK,
                    &serde_json::to_value(&status).unwrap_or_default(),
                )
            }
            "/metrics" => {
                let mut resp = Response::new(ProxyBody::full(gateway.metrics().render()));
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
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(move |req: Request<Incoming>| {
            let this = self.clone();
            async move { Ok(this.handle(&req).await) }
        })
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(serde_json::to_vec(v).unwrap_or_default()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
