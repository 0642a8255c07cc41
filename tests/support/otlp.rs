//! A small OTLP/HTTP receiver, as a collector's: a hyper server on
//! 127.0.0.1 that takes `POST /v1/traces` (protobuf), decodes each
//! `ExportTraceServiceRequest` with the official definitions
//! (`opentelemetry-proto`), keeps its spans, and answers an empty
//! `ExportTraceServiceResponse`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message as _;
use tokio::net::TcpListener;

/// An attribute's value, as received.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    Other,
}

/// One received span, its ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub trace_state: String,
    pub name: String,
    /// OTLP's `SpanKind`: 1 internal, 2 server, 3 client.
    pub kind: i32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: BTreeMap<String, Attr>,
    /// Name and attributes of each event.
    pub events: Vec<(String, BTreeMap<String, Attr>)>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
}

pub const KIND_INTERNAL: i32 = 1;
pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;
pub const STATUS_ERROR: i32 = 2;

impl ReceivedSpan {
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(Attr::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key) {
            Some(Attr::Int(i)) => Some(*i),
            _ => None,
        }
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_ns.saturating_sub(self.start_ns))
    }

    /// True when this span lies within `outer`'s start and end.
    pub fn within(&self, outer: &ReceivedSpan) -> bool {
        outer.start_ns <= self.start_ns && self.end_ns <= outer.end_ns
    }
}

/// The receiver: where it listens and what it got.
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    exports: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// Listens on a free loopback port.
    pub async fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let exports = Arc::new(Mutex::new(0));
        let task = tokio::spawn({
            let spans = Arc::clone(&spans);
            let exports = Arc::clone(&exports);
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let spans = Arc::clone(&spans);
                    let exports = Arc::clone(&exports);
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            receive(req, Arc::clone(&spans), Arc::clone(&exports))
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        OtlpReceiver {
            addr,
            spans,
            exports,
            task,
        }
    }

    /// The base URL to give as `[tracing] endpoint` (`/v1/traces` is added).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// How many export requests arrived.
    pub fn exports(&self) -> u32 {
        *self.exports.lock().unwrap()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    req: Request<Incoming>,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    exports: Arc<Mutex<u32>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let answer = |status: StatusCode, body: Vec<u8>| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    };
    if req.method() != Method::POST || req.uri().path() != "/v1/traces" {
        return answer(StatusCode::NOT_FOUND, Vec::new());
    }
    let protobuf = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
    let Ok(body) = req.into_body().collect().await else {
        return answer(StatusCode::BAD_REQUEST, Vec::new());
    };
    let Some(request) = protobuf
        .then(|| ExportTraceServiceRequest::decode(body.to_bytes()).ok())
        .flatten()
    else {
        return answer(StatusCode::BAD_REQUEST, Vec::new());
    };
    *exports.lock().unwrap() += 1;
    let mut got = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| attrs(&r.attributes).remove("service.name"))
            .map_or(String::new(), |a| match a {
                Attr::Str(s) => s,
                _ => String::new(),
            });
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    trace_state: s.trace_state.clone(),
                    name: s.name.clone(),
                    kind: s.kind,
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                    attributes: attrs(&s.attributes),
                    events: s
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attrs(&e.attributes)))
                        .collect(),
                    status: s.status.as_ref().map_or(0, |st| st.code),
                });
            }
        }
    }
    spans.lock().unwrap().extend(got);
    answer(
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, Attr> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => Attr::Str(s.clone()),
                Some(Value::IntValue(i)) => Attr::Int(*i),
                Some(Value::BoolValue(b)) => Attr::Bool(*b),
                Some(Value::DoubleValue(d)) => Attr::Double(*d),
                _ => Attr::Other,
            };
            (kv.key.clone(), v)
        })
        .collect()
}
