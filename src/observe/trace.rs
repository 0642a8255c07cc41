//! Distributed tracing: the gateway's part of a call, in the caller's trace.
//!
//! Why a module of its own: when a service's call to Feishu is slow or
//! fails, its team looks at its trace, and the gateway must not be a hole in
//! it. This module is the one place that knows OpenTelemetry: the W3C Trace
//! Context headers (read from the caller, written to Feishu, both with the
//! OpenTelemetry `TraceContextPropagator`), the spans, and their export over
//! OTLP/HTTP (protobuf) to a collector. The request path calls a few small
//! hooks ([`RequestTrace`] and [`Span`]); the token manager one more. The
//! config is `[tracing]` ([`TraceConfig`]), off by default.
//!
//! **Off costs nothing.** The gateway holds an `Option<Arc<Tracing>>`: `None`
//! when `[tracing]` is off, and then no request makes a [`RequestTrace`] or
//! a [`Span`], reads a header or takes a clock reading for tracing; every
//! hook is an `Option` that is `None`.
//!
//! **On**, each request gets a server span, the child of the caller's
//! `traceparent` when it sent one (its `tracestate` kept), else a new trace
//! when the sampler says so (`sampling_ratio` of the trace ids, parent-based:
//! a caller's decision is followed either way). Under it, for the phases
//! that take time: `token wait` (only when the request had to wait for a
//! token: a fetch of its own, with a `token fetch` child, or another's, such
//! as a refresh), `quota` (the admit phase: budget, per-resource limits, the
//! quota and its wait) and one `feishu call` per attempt upstream (status,
//! Feishu's `code` and `X-Tt-Logid`, the resend count), whose own context
//! goes to Feishu as `traceparent`. Retries and a token-invalid replay are
//! events of the request's span. Attributes name the app, the route template
//! and the client; never a key, a token, a path's ids or a body. A caller's
//! trace that is not sampled makes no span the gateway records, but Feishu
//! still gets a `traceparent` (not sampled) that continues it; a request
//! without a caller's trace that the sampler leaves out is part of no trace
//! (nothing is kept, nothing sent on).
//!
//! **Export** is the OpenTelemetry SDK's batch processor: ended spans go to a
//! bounded queue (2,048; beyond it they are dropped, never waited for) that a
//! thread of its own sends every 5 s or 512 spans. Its HTTP client is
//! [`OtlpTransport`]: hyper-util's, on the gateway's rustls (ring), driven by
//! the gateway's runtime. Export failures are logged by the SDK (target
//! `opentelemetry_sdk`), never answered to a request.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::Connect;
use hyper_util::client::legacy::Client;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanKind, Status, TraceContextExt as _, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

/// `SpanKind` for [`Span::child`], so callers need not name OpenTelemetry.
pub use opentelemetry::trace::SpanKind as Kind;

/// `[tracing]`: spans exported over OTLP/HTTP. Off by default.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// Tracing at all (`enabled`). Default false: no span is made.
    pub enabled: bool,
    /// Where spans are POSTed: the collector's OTLP/HTTP traces URL
    /// (`endpoint`; a base URL without a path gets `/v1/traces`). Default
    /// `http://localhost:4318/v1/traces`, the OpenTelemetry default.
    pub endpoint: Uri,
    /// The share of new traces sampled (`sampling_ratio`, 0 to 1), for
    /// requests without a caller's `traceparent`; a caller's decision is
    /// followed. Default 1.0 (OpenTelemetry's parent-based always-on).
    pub sampling_ratio: f64,
    /// `service.name` of the spans (`service_name`). Default
    /// `feishu-gateway`.
    pub service_name: String,
    /// One export's time limit, its retries included (`export_timeout`).
    /// Default 10 s.
    pub export_timeout: Duration,
}

/// OpenTelemetry's default OTLP/HTTP traces URL.
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318/v1/traces";

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            enabled: false,
            endpoint: Uri::from_static(DEFAULT_ENDPOINT),
            sampling_ratio: 1.0,
            service_name: "feishu-gateway".into(),
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// The traces URL for `endpoint`: as given when it has a path, else with
/// `/v1/traces` (what OTLP exporters do with `OTEL_EXPORTER_OTLP_ENDPOINT`).
pub fn traces_url(endpoint: &str) -> Result<Uri, String> {
    let uri: Uri = endpoint
        .parse()
        .map_err(|e| format!("{endpoint:?} is not a URL ({e})"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("{endpoint:?} must start with http:// or https://"));
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{endpoint:?} has no host"));
    };
    if authority.as_str().contains('@') {
        // Not echoed: the URL holds a password.
        return Err(
            "must not carry credentials (OTEL_EXPORTER_OTLP_HEADERS takes an auth header)".into(),
        );
    }
    if uri.query().is_some() {
        return Err(format!("{endpoint:?} must not have a query"));
    }
    if matches!(uri.path(), "" | "/") {
        let base = endpoint.trim_end_matches('/');
        return format!("{base}/v1/traces")
            .parse()
            .map_err(|e| format!("{endpoint:?} is not a URL ({e})"));
    }
    Ok(uri)
}

/// Attribute keys. OpenTelemetry's semantic conventions where one fits;
/// `feishu.*` for what Feishu answered, `feishu_gateway.*` for the gateway's
/// own words.
pub mod key {
    /// The request's method.
    pub const METHOD: &str = "http.request.method";
    /// The catalog route's template (never the path: it holds ids).
    pub const ROUTE: &str = "http.route";
    /// The status answered (server span) or received (call).
    pub const STATUS: &str = "http.response.status_code";
    /// Feishu's host (a call).
    pub const SERVER: &str = "server.address";
    /// Attempts before this one, for this request (a call).
    pub const RESEND_COUNT: &str = "http.request.resend_count";
    /// How a call failed: `connect`, `reset`, `timeout`, `protocol`.
    pub const ERROR_TYPE: &str = "error.type";
    /// Feishu's `code` of the answer.
    pub const CODE: &str = "feishu.code";
    /// Feishu's `X-Tt-Logid` of the answer.
    pub const LOGID: &str = "feishu.logid";
    /// The app's name.
    pub const APP: &str = "feishu_gateway.app";
    /// The calling client's name.
    pub const CLIENT: &str = "feishu_gateway.client";
    /// The request id (`X-Request-Id`).
    pub const REQUEST_ID: &str = "feishu_gateway.request_id";
    /// `X-Gateway-Error` when the gateway answered itself.
    pub const GATEWAY_ERROR: &str = "feishu_gateway.error";
    /// The token-invalid code that caused a replay.
    pub const REPLAYED_AFTER: &str = "feishu_gateway.replayed_after";
    /// The quota's outcome: `admitted`, or the gateway's error reason.
    pub const QUOTA_OUTCOME: &str = "feishu_gateway.quota.outcome";
    /// The token's kind: `tenant_access_token` or `app_access_token`.
    pub const TOKEN_KIND: &str = "feishu_gateway.token.kind";
    /// How the request got its token: `fetched` (a call of its own),
    /// `waited` (another's call, such as a refresh), `failed`.
    pub const TOKEN_OUTCOME: &str = "feishu_gateway.token.outcome";
    /// Why a retry was made or skipped.
    pub const RETRY_REASON: &str = "feishu_gateway.retry.reason";
    /// Which retry of the request (1 for the first).
    pub const RETRY: &str = "feishu_gateway.retry";
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The process's tracing: the tracer, its provider (batch processor,
/// exporter) and the propagator. One per process (`[tracing]` is
/// restart-only); a request reaches it through the gateway's
/// `Option<Arc<Tracing>>`.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    /// `sampling_ratio`: at 0 only callers' traces are followed, and a
    /// request without one costs a header lookup.
    sampling_ratio: f64,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

impl Tracing {
    /// Starts exporting to `config.endpoint` through `client` (see
    /// [`OtlpTransport`]). `OTEL_EXPORTER_OTLP_HEADERS` (or `..._TRACES_...`)
    /// adds headers to the export, such as a collector's API key, and
    /// `OTEL_RESOURCE_ATTRIBUTES` resource attributes, as everywhere in
    /// OpenTelemetry.
    pub fn start<C>(config: &TraceConfig, client: C) -> Result<Arc<Tracing>, String>
    where
        C: HttpClient + 'static,
    {
        use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.endpoint.to_string())
            .with_timeout(config.export_timeout)
            .build()
            .map_err(|e| format!("tracing: cannot build the OTLP exporter: {e}"))?;
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(2048)
                    .with_max_export_batch_size(512)
                    .with_scheduled_delay(Duration::from_secs(5))
                    .build(),
            )
            .build();
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sampling_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("feishu-gateway");
        Ok(Arc::new(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            sampling_ratio: config.sampling_ratio,
        }))
    }

    /// The trace of one request: its server span, a child of the caller's
    /// `traceparent` when there is a valid one. `None` when the request is
    /// part of no trace: no caller's, and the sampler started none (then
    /// nothing is recorded, and nothing is sent on to Feishu).
    pub fn request(
        self: &Arc<Self>,
        method: &http::Method,
        headers: &HeaderMap,
    ) -> Option<RequestTrace> {
        let parent = self
            .propagator
            .extract_with_context(&Context::new(), &Extract(headers));
        let remote = parent.span().span_context().is_valid();
        if !remote && self.sampling_ratio <= 0.0 {
            // Only callers' traces are followed: not even a span to drop.
            return None;
        }
        let method = method_name(method);
        let mut span = self.tracer.build_with_context(
            SpanBuilder::from_name(Cow::Borrowed(method)).with_kind(SpanKind::Server),
            &parent,
        );
        let sc = span.span_context().clone();
        let recording = sc.is_sampled();
        if !remote && !recording {
            return None;
        }
        if recording {
            span.set_attribute(KeyValue::new(key::METHOD, method));
        }
        // The trace id goes in the access line: the caller's trace, or one
        // the gateway samples.
        let mut hex_id = [0u8; 32];
        hex::encode_to_slice(sc.trace_id().to_bytes(), &mut hex_id)
            .expect("16 bytes are 32 hex digits");
        Some(RequestTrace {
            tracing: Arc::clone(self),
            cx: parent.with_span(span),
            method,
            recording,
            logged_id: hex_id,
            attempts: 0,
        })
    }

    /// Sends what is queued now (blocks up to 5 s: call it off the async
    /// threads, e.g. in `spawn_blocking`).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "tracing: flushing the spans failed");
        }
    }

    /// Sends what is queued and stops the export (blocks up to 5 s: call
    /// it off the async threads). Spans ended afterwards are dropped.
    pub fn shutdown(&self) {
        // Already shut down is fine: a second drain has nothing to do.
        let _ = self.provider.shutdown();
    }
}

impl Drop for Tracing {
    /// A provider dropped without [`Tracing::shutdown`] is shut down on a
    /// thread of its own: its last export needs the runtime, which the
    /// dropping thread may be driving.
    fn drop(&mut self) {
        let provider = self.provider.clone();
        let _ = std::thread::Builder::new()
            .name("tracing-shutdown".into())
            .spawn(move || {
                let _ = provider.shutdown();
            });
    }
}

/// A method's name (OpenTelemetry's `_OTHER` for one not in RFC 9110),
/// without allocating.
fn method_name(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// One request's trace: its server span, the context its phases' spans are
/// children of, and the trace id for the access line.
pub struct RequestTrace {
    tracing: Arc<Tracing>,
    cx: Context,
    method: &'static str,
    recording: bool,
    logged_id: [u8; 32],
    attempts: u32,
}

impl std::fmt::Debug for RequestTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTrace")
            .field("trace_id", &self.trace_id())
            .field("recording", &self.recording)
            .finish_non_exhaustive()
    }
}

impl RequestTrace {
    /// The trace id (32 hex digits): the caller's trace, or one the
    /// gateway sampled.
    pub fn trace_id(&self) -> Option<&str> {
        std::str::from_utf8(&self.logged_id).ok()
    }

    /// True when the request's spans are recorded (sampled).
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// A span for one phase, a child of the request's; `None` when the
    /// request is not sampled (nothing would be recorded).
    pub fn child(&self, name: &'static str) -> Option<Span> {
        self.recording
            .then(|| Span::start(&self.tracing, name, SpanKind::Internal, &self.cx))
    }

    /// A span for one attempt upstream (kind client), with its resend
    /// count; `None` when the request is not sampled.
    pub fn call(&mut self, name: &'static str) -> Option<Span> {
        let resends = self.attempts;
        self.attempts += 1;
        let span = self
            .recording
            .then(|| Span::start(&self.tracing, name, SpanKind::Client, &self.cx))?;
        if resends > 0 {
            span.set(key::RESEND_COUNT, i64::from(resends));
        }
        Some(span)
    }

    /// Writes `traceparent` (and `tracestate`, or removes a caller's empty
    /// one) for a call upstream: `call`'s context, or the request's when the
    /// call has no span (not sampled: the trace still continues).
    pub fn inject(&self, call: Option<&Span>, headers: &mut HeaderMap) {
        let cx = call.map_or(&self.cx, |s| &s.cx);
        headers.remove(TRACESTATE);
        self.tracing
            .propagator
            .inject_context(cx, &mut Inject(headers));
    }

    /// An event on the request's span.
    fn event(&self, name: &'static str, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if self.recording {
            self.cx.span().add_event(name, attributes());
        }
    }

    /// Event: retry number `retry` goes upstream after a transient failure
    /// (`reason`: `connect`, `reset`, `edge_502`, `edge_503`, `code`).
    pub fn retry(&self, reason: &'static str, retry: u32) {
        self.event("retry", || {
            vec![
                KeyValue::new(key::RETRY_REASON, reason),
                KeyValue::new(key::RETRY, i64::from(retry)),
            ]
        });
    }

    /// Event: a transient failure answered without a retry (`reason`:
    /// `unsafe`, `attempts`, `deadline`, `budget`, `quota`).
    pub fn retry_skipped(&self, reason: &'static str) {
        self.event("retry skipped", || {
            vec![KeyValue::new(key::RETRY_REASON, reason)]
        });
    }

    /// Event: Feishu refused the tenant token with `code`; it is dropped
    /// and the request replayed once with a fresh one.
    pub fn replay(&self, code: i64) {
        self.event("token rejected: replaying", || {
            vec![KeyValue::new(key::CODE, code)]
        });
    }

    /// Sets an attribute of the request's span.
    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        if self.recording {
            self.cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Ends the request's span: named `METHOD route` (the route's
    /// template) once the route is known, with the status answered, failed
    /// for a 5xx.
    pub fn end(self, route: Option<&str>, status: u16) {
        if self.recording {
            let span = self.cx.span();
            if let Some(route) = route {
                span.update_name(format!("{} {route}", self.method));
                span.set_attribute(KeyValue::new(key::ROUTE, route.to_string()));
            }
            span.set_attribute(KeyValue::new(key::STATUS, i64::from(status)));
            if status >= 500 {
                span.set_status(Status::error(""));
            }
        }
        self.cx.span().end();
    }
}

/// One phase's span. Ends when dropped.
pub struct Span {
    tracing: Arc<Tracing>,
    cx: Context,
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Span").finish_non_exhaustive()
    }
}

impl Span {
    fn start(tracing: &Arc<Tracing>, name: &'static str, kind: SpanKind, parent: &Context) -> Span {
        let span = tracing.tracer.build_with_context(
            SpanBuilder::from_name(Cow::Borrowed(name)).with_kind(kind),
            parent,
        );
        Span {
            tracing: Arc::clone(tracing),
            cx: parent.with_span(span),
        }
    }

    /// A span for a step of this one.
    pub fn child(&self, name: &'static str, kind: SpanKind) -> Span {
        Span::start(&self.tracing, name, kind, &self.cx)
    }

    /// Sets an attribute.
    pub fn set(&self, key: &'static str, value: impl Into<Value>) {
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }

    /// Marks the span failed.
    pub fn fail(&self, description: impl Into<Cow<'static, str>>) {
        self.cx.span().set_status(Status::error(description));
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.cx.span().end();
    }
}

/// Reads `traceparent` / `tracestate` from a request's headers.
struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes `traceparent` / `tracestate` into a request's headers; an empty
/// value (no `tracestate`) is not written.
struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        let name = match key {
            "traceparent" => TRACEPARENT,
            "tracestate" => TRACESTATE,
            _ => return,
        };
        if let Ok(v) = HeaderValue::try_from(value) {
            self.0.insert(name, v);
        }
    }
}

/// The exporter's HTTP client: hyper-util's, with the gateway's connector
/// (rustls with ring and the public roots), driven by the gateway's tokio
/// runtime. The SDK's batch processor exports from a thread of its own,
/// outside any runtime: [`HttpClient::send_bytes`] hands the request to the
/// runtime and blocks that thread until the answer, or until the timeout
/// (so a runtime that is gone or stuck never blocks the export thread for
/// longer).
pub struct OtlpTransport<C> {
    client: Client<C, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl<C> std::fmt::Debug for OtlpTransport<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpTransport")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<C> OtlpTransport<C> {
    /// Sends through `client` on `runtime`, each call within `timeout`.
    pub fn new(
        client: Client<C, Full<Bytes>>,
        runtime: tokio::runtime::Handle,
        timeout: Duration,
    ) -> Self {
        OtlpTransport {
            client,
            runtime,
            timeout,
        }
    }
}

/// A collector's answer is small (an `ExportTraceServiceResponse`).
const MAX_ANSWER: usize = 64 * 1024;

#[async_trait::async_trait]
impl<C> HttpClient for OtlpTransport<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let call = async {
                let resp = client.request(request.map(Full::new)).await?;
                let (head, body) = resp.into_parts();
                let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
                Ok::<_, HttpError>(Response::from_parts(head, body))
            };
            let answer = match tokio::time::timeout(timeout, call).await {
                Ok(answer) => answer,
                Err(_) => Err("the collector did not answer in time".into()),
            };
            let _ = tx.send(answer);
        });
        match rx.recv_timeout(timeout + Duration::from_secs(1)) {
            Ok(answer) => answer,
            Err(_) => Err("the export did not run (the runtime is gone or busy)".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path_and_a_full_one_is_kept() {
        assert_eq!(
            traces_url("http://collector:4318").unwrap().to_string(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://collector:4318/").unwrap().to_string(),
            "https://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/otlp/v1/traces")
                .unwrap()
                .to_string(),
            "http://collector:4318/otlp/v1/traces"
        );
        for bad in [
            "collector:4318",
            "ftp://collector",
            "http://user:pw@collector:4318",
            "http://collector:4318/v1/traces?x=1",
            "not a url",
        ] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }
}
