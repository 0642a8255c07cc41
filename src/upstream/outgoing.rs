//! The body of a request to Feishu: bytes the gateway holds (the usual,
//! buffered and replayable request), or a body streamed through from the
//! client (an upload), which can be sent once only.
//!
//! One enum rather than a boxed body for all: the buffered request, by far
//! the most common, costs no allocation for its body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

/// Why a streamed request body stopped: the upstream request is aborted
/// (never completed on the wire), and the caller learns the reason from
/// wherever the body recorded it.
pub type StreamError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed request body: any body of bytes, sent as it comes.
pub type Streamed = Pin<Box<dyn Body<Data = Bytes, Error = StreamError> + Send>>;

/// The body of a request to Feishu.
pub enum OutgoingBody {
    /// Held whole: sent as is, may be sent again (the replay).
    Full(Full<Bytes>),
    /// Streamed from the client: an error from it aborts the request.
    Streamed(Streamed),
}

impl std::fmt::Debug for OutgoingBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutgoingBody::Full(_) => f.write_str("OutgoingBody::Full"),
            OutgoingBody::Streamed(_) => f.write_str("OutgoingBody::Streamed"),
        }
    }
}

impl OutgoingBody {
    /// A held body.
    pub fn full(bytes: Bytes) -> OutgoingBody {
        OutgoingBody::Full(Full::new(bytes))
    }
}

impl Body for OutgoingBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        match self.get_mut() {
            OutgoingBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
            OutgoingBody::Streamed(b) => b.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutgoingBody::Full(b) => b.is_end_stream(),
            OutgoingBody::Streamed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutgoingBody::Full(b) => b.size_hint(),
            OutgoingBody::Streamed(b) => b.size_hint(),
        }
    }
}
