//! How a call to Feishu failed, in the few classes that metrics count and
//! the gateway's answer tells apart: connect, timeout, reset, protocol.
//! Both clients (the request path's pool and the background client) are
//! classified here, by the first hyper or I/O error in the error's chain.

use std::error::Error as _;

/// How an upstream call failed, as counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// TCP or TLS connect failed, or the new connection closed before any
    /// byte of the request was written: nothing reached the server.
    Connect,
    /// No answer within the configured timeout.
    Timeout,
    /// The connection was reset or closed before a complete answer.
    Reset,
    /// The answer was not valid HTTP.
    Protocol,
}

impl UpstreamFailure {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Reset => "reset",
            UpstreamFailure::Protocol => "protocol",
        }
    }
}

/// A failure while reading an upstream answer's body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// hyper's: the connection (HTTP/1.1 or HTTP/2) failed, ended early or
    /// broke framing.
    #[error("upstream body: {0}")]
    Hyper(#[from] hyper::Error),
    /// Nothing came for this long while the answer was streamed.
    #[error("upstream body: nothing for {0:?}")]
    Idle(std::time::Duration),
}

/// Classifies a client error for metrics and the answer's status.
pub fn classify(err: &hyper_util::client::legacy::Error) -> UpstreamFailure {
    if err.is_connect() {
        return UpstreamFailure::Connect;
    }
    classify_chain(err.source())
}

/// Classifies a transport error by the first hyper or I/O error in its
/// chain, starting at `first` (the pool passes hyper's error itself).
pub fn classify_chain(first: Option<&(dyn std::error::Error + 'static)>) -> UpstreamFailure {
    let mut source = first;
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return UpstreamFailure::Reset;
            }
            if h.is_timeout() {
                return UpstreamFailure::Timeout;
            }
            if h.is_parse() || h.is_user() {
                return UpstreamFailure::Protocol;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return match io.kind() {
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    UpstreamFailure::Reset
                }
                TimedOut => UpstreamFailure::Timeout,
                _ => UpstreamFailure::Protocol,
            };
        }
        source = e.source();
    }
    UpstreamFailure::Protocol
}
