//! The body of every answer the gateway sends: either bytes it holds (its
//! own JSON errors, or a Feishu answer it buffered to read its `code`), or a
//! Feishu answer streamed through, possibly after a buffered prefix.
//!
//! One concrete enum instead of a boxed trait object: no allocation per
//! request for the body itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::upstream::pool::UpstreamBody;
use crate::upstream::BodyError;

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
    },
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
            ProxyBody::Stream { prefix, rest } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Stream { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Stream { prefix, rest } => {
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
