//! The body of every answer the gateway sends: either bytes it holds (its
//! own JSON errors, or a Feishu answer it buffered to read its `code`), or a
//! Feishu answer streamed through, possibly after a buffered prefix.
//!
//! One concrete enum instead of a boxed trait object: no allocation per
//! request for the body itself.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus::{IntCounter, IntGauge};
use tokio::time::{Instant, Sleep};

use crate::upstream::pool::UpstreamBody;
use crate::upstream::{classify_chain, BodyError, UpstreamFailure};

/// Response body of the gateway.
#[derive(Debug)]
pub enum ProxyBody {
    /// A complete body held in memory (`None` once sent).
    Full(Option<Bytes>),
    /// A streamed upstream body, after an optional prefix already read.
    Stream {
        /// Bytes read from `rest` before streaming started.
        prefix: Option<Bytes>,
        /// The remainder of the upstream body.
        rest: UpstreamBody,
        /// The idle limit and the gauges, once the answer goes out.
        watch: Option<Box<StreamWatch>>,
    },
}

/// What a streamed answer carries to the client: the longest gap allowed
/// between two reads of the upstream body (`timeouts.upstream_idle`; a
/// stalled download must not hold the client and the upstream connection
/// forever), the counter of such stalls, and the in-flight gauge, which
/// counts the request until its body ends.
#[derive(Debug)]
pub struct StreamWatch {
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    stalled: IntCounter,
    in_flight: IntGauge,
    /// The counters of an upstream body that fails mid-stream: reset (the
    /// connection ended early) and protocol (broken framing).
    failed: Option<Box<(IntCounter, IntCounter)>>,
}

impl StreamWatch {
    /// Starts watching: the gauge counts the request from now on.
    pub fn new(idle: Duration, stalled: IntCounter, in_flight: IntGauge) -> StreamWatch {
        in_flight.inc();
        StreamWatch {
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            stalled,
            in_flight,
            failed: None,
        }
    }

    /// Counts an upstream body that fails mid-stream, by kind: `reset`
    /// (the connection reset or closed early) or `protocol` (bad framing,
    /// e.g. a chunk size that is not one). The client's body is aborted
    /// either way.
    pub fn counting_failures(mut self, reset: IntCounter, protocol: IntCounter) -> StreamWatch {
        self.failed = Some(Box::new((reset, protocol)));
        self
    }
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

impl ProxyBody {
    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        ProxyBody::Full(if b.is_empty() { None } else { Some(b) })
    }
    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    /// A streamed upstream body, `prefix` first.
    pub fn stream(prefix: Option<Bytes>, rest: UpstreamBody) -> Self {
        ProxyBody::Stream {
            prefix,
            rest,
            watch: None,
        }
    }

    /// For a streamed body: watch it as it goes to the client (`make` is
    /// not called for a held body).
    pub fn watch(&mut self, make: impl FnOnce() -> StreamWatch) {
        if let ProxyBody::Stream { watch, .. } = self {
            *watch = Some(Box::new(make()));
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Stream {
                prefix,
                rest,
                watch,
            } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                let polled = Pin::new(rest).poll_frame(cx);
                let Some(w) = watch else {
                    return polled;
                };
                if polled.is_ready() {
                    if let (Poll::Ready(Some(Err(BodyError::Hyper(e)))), Some(failed)) =
                        (&polled, &w.failed)
                    {
                        match classify_chain(Some(e)) {
                            UpstreamFailure::Reset => failed.0.inc(),
                            _ => failed.1.inc(),
                        }
                        tracing::warn!(error = %e, "a streamed answer broke off upstream");
                    }
                    let next = Instant::now() + w.idle;
                    w.timer.as_mut().reset(next);
                    return polled;
                }
                if w.timer.as_mut().poll(cx).is_ready() {
                    w.stalled.inc();
                    tracing::warn!(
                        idle = ?w.idle,
                        "a streamed answer stalled: ending it (timeouts.upstream_idle)"
                    );
                    return Poll::Ready(Some(Err(BodyError::Idle(w.idle))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Stream { prefix, rest, .. } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Stream { prefix, rest, .. } => {
                let p = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + p);
                if let Some(u) = r.upper() {
                    h.set_upper(u + p);
                }
                h
            }
        }
    }
}
