//! The HTTP/1.1 client side of one upstream connection, without a
//! connection task: the request's own future writes the request and reads
//! the answer's head, and the answer's [`Body`] reads the rest from the
//! socket and hands the connection back to the pool when it ends.
//!
//! hyper's client connection runs as a task of its own, fed through a
//! channel, with the body crossing another channel: about 15,000
//! instructions per request here (callgrind), a fifth of the gateway's
//! whole work. This module is the part of HTTP/1.1 (RFC 9112) an upstream
//! answer needs: one request at a time, `Content-Length`, `chunked` and
//! close-delimited bodies, interim (1xx) answers skipped, `HEAD`, 204 and
//! 304 without a body, and a connection reused only when the answer said
//! nothing against it and was read to its end with nothing after it.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::response::Parts;
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use super::failure::BodyError;

/// Where a connection goes once its answer was read to the end. The pool
/// hands one to each request; the codec knows nothing else of the pool (as
/// pingora's connector releases its sessions).
pub trait Release: Send + Unpin + 'static {
    /// The upstream's authority: the `Host` of a request that has none.
    fn authority(&self) -> &Authority;
    /// Takes back a connection that may carry another request.
    fn release(self, conn: Box<Conn>);
}

/// The most header fields an answer may have (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Header fields whose offsets are kept on the stack while parsing.
const FEW_HEADERS: usize = 24;
/// The largest answer head read before giving up on it.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Bodies up to this size are copied behind the head and written with it,
/// in one system call; larger ones are written on their own.
const COPY_BODY_UP_TO: usize = 16 * 1024;
/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// The transport: TCP, or TLS over it, as the connector made it.
pub(super) type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// One HTTP/1.1 connection to an upstream, idle or in use by one request.
pub struct Conn {
    io: Io,
    /// Bytes read from the socket and not yet consumed.
    buf: BytesMut,
    /// The request head being written (kept for its capacity).
    out: Vec<u8>,
}

/// Writes all of `buf`, noting in `sent_any` once the socket took a byte.
async fn write_counting(
    io: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut buf: &[u8],
    sent_any: &mut bool,
) -> io::Result<()> {
    while !buf.is_empty() {
        let n = io.write(buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        *sent_any = true;
        buf = &buf[n..];
    }
    Ok(())
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The request could not be written: the server had closed the
    /// connection before the socket took a single byte. Nothing reached it;
    /// the request may go again.
    #[error("request not written: {0}")]
    NotWritten(io::Error),
    /// The request was written, and the connection ended before any byte
    /// of an answer: the server may or may not have seen it.
    #[error("connection closed before any answer")]
    ClosedBeforeAnswer,
    /// Reading the answer failed, or writing failed after part of the
    /// request had left (and no early answer came): never sent again.
    #[error("exchange failed: {0}")]
    Io(io::Error),
    /// The answer is not HTTP/1.1 as this client reads it.
    #[error("{0}")]
    Protocol(&'static str),
}

impl Conn {
    /// Boxed: a TLS connection's state is over a kilobyte, and the
    /// connection moves between the pool and each answer's body.
    pub(super) fn new(io: Io) -> Box<Conn> {
        Box::new(Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::with_capacity(1024),
        })
    }

    /// Whether an idle connection can take a request: the server has not
    /// closed it and has sent nothing unasked. No system call unless the
    /// event loop saw the socket become readable since the last read.
    pub(super) fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        // Pending: nothing to read, the connection is as it was left.
        // Anything else (end of stream, bytes, an error) ends it.
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Writes `req` (of its URI, only the path and query: the origin form;
    /// `Host` from `home`'s upstream unless the request has one) and reads
    /// the answer's head. The body, still to read, owns the
    /// connection and gives it to `home` at its end if it can be reused.
    pub async fn send<R: Release>(
        mut self: Box<Self>,
        req: &Request<Bytes>,
        home: R,
    ) -> Result<Response<Body<R>>, SendError> {
        self.out.clear();
        encode_request(req, home.authority(), &mut self.out);
        let body = req.body();
        // Whether any byte of the request left: from then on it must never
        // be sent again on another connection (RFC 9110 §9.2.2), whatever
        // happens to this one.
        let mut sent_any = false;
        let written = if body.len() <= COPY_BODY_UP_TO {
            self.out.extend_from_slice(body);
            write_counting(&mut self.io, &self.out, &mut sent_any).await
        } else {
            match write_counting(&mut self.io, &self.out, &mut sent_any).await {
                Ok(()) => write_counting(&mut self.io, body, &mut sent_any).await,
                Err(e) => Err(e),
            }
        };
        let flushed = match written {
            Ok(()) => self.io.flush().await,
            Err(e) => Err(e),
        };
        let head_only = req.method() == Method::HEAD;
        let (parts, framing, reusable) = match flushed {
            Ok(()) => self.read_head(head_only).await?,
            Err(e) if !sent_any => return Err(SendError::NotWritten(e)),
            // Part of it left, and the server stopped taking the rest: it
            // may have answered early (a 413, say) before it closed. That
            // answer is read and passed on (RFC 9112 §9.5); the connection
            // is not used again. No answer: the write error, not retried.
            Err(e) => match self.read_head(head_only).await {
                Ok((parts, framing, _)) => (parts, framing, false),
                Err(_) => return Err(SendError::Io(e)),
            },
        };
        let mut body = Body {
            conn: Some(self),
            home: reusable.then_some(home),
            state: match framing {
                Framing::Empty => State::Done,
                Framing::Length(0) => State::Done,
                Framing::Length(n) => State::Length(n),
                Framing::Chunked => State::Chunked(Chunked::Size),
                Framing::Close => State::Close,
            },
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        Ok(Response::from_parts(parts, body))
    }

    /// Reads until a final (non-1xx) answer head is complete.
    async fn read_head(&mut self, head_only: bool) -> Result<(Parts, Framing, bool), SendError> {
        let mut answered = false;
        loop {
            if !self.buf.is_empty() {
                answered = true;
                if let Some(head) = parse_head(&mut self.buf, head_only)? {
                    return Ok(head);
                }
                if self.buf.len() >= MAX_HEAD_BYTES {
                    return Err(SendError::Protocol("answer head too large"));
                }
            }
            self.buf.reserve(READ_CHUNK);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) if answered => {
                    return Err(SendError::Io(io::ErrorKind::UnexpectedEof.into()))
                }
                Ok(0) => return Err(SendError::ClosedBeforeAnswer),
                Ok(_) => {}
                Err(e) if !answered && is_reset(&e) => return Err(SendError::ClosedBeforeAnswer),
                Err(e) => return Err(SendError::Io(e)),
            }
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Writes the request line (origin form) and headers, with `Host` from
/// `authority` unless the request has one, and `Content-Length` from the
/// body (the caller's own framing headers were removed before).
fn encode_request(req: &Request<Bytes>, authority: &Authority, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    match req.uri().path_and_query() {
        Some(pq) => out.extend_from_slice(pq.as_str().as_bytes()),
        None => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !req.headers().contains_key(HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let len = req.body().len();
    // Like hyper: a length for any body, and for the methods that carry
    // one even when it is empty.
    if len > 0 || matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, len as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// How the answer's body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

/// Parses one answer head at the start of `buf`, consuming it when
/// complete. Interim (1xx) answers are consumed and skipped. `Ok(None)`:
/// more bytes are needed.
fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
) -> Result<Option<(Parts, Framing, bool)>, SendError> {
    loop {
        // Offsets of each header's name and value in `buf`, so the head can
        // be split off and shared by the header values without copying.
        // On the stack for the usual few headers, and nothing zeroed for
        // the rest (zeroing room for 100 was 3,000 instructions of memset).
        let mut few = [(0u32, 0u32, 0u32, 0u32); FEW_HEADERS];
        let mut many = Vec::new();
        let (len, code, minor, count) = {
            let mut headers =
                [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                buf,
                &mut headers,
            );
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(SendError::Protocol("answer has too many headers"))
                }
                Err(_) => return Err(SendError::Protocol("answer head is not HTTP/1.x")),
            };
            let count = resp.headers.len();
            let spans = if count <= FEW_HEADERS {
                &mut few[..count]
            } else {
                many.resize(count, (0, 0, 0, 0));
                &mut many[..]
            };
            // Offsets fit in u32: a head is at most MAX_HEAD_BYTES plus a read.
            let base = buf.as_ptr() as usize;
            let offset = |p: *const u8| (p as usize - base) as u32;
            for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
                let (name, value) = (offset(h.name.as_ptr()), offset(h.value.as_ptr()));
                *span = (
                    name,
                    name + h.name.len() as u32,
                    value,
                    value + h.value.len() as u32,
                );
            }
            (
                len,
                resp.code.unwrap_or(0),
                resp.version.unwrap_or(1),
                count,
            )
        };
        let status = StatusCode::from_u16(code)
            .map_err(|_| SendError::Protocol("answer status is not valid"))?;
        let head = buf.split_to(len).freeze();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(SendError::Protocol("upstream switched protocols unasked"));
        }
        if status.is_informational() {
            // 100 Continue, 103 Early Hints: the real answer follows.
            continue;
        }
        let mut headers = HeaderMap::with_capacity(count);
        let spans = if count <= FEW_HEADERS {
            &few[..count]
        } else {
            &many[..]
        };
        for &(ns, ne, vs, ve) in spans {
            let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
            let name = HeaderName::from_bytes(&head[ns..ne])
                .map_err(|_| SendError::Protocol("answer header name is not valid"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                .map_err(|_| SendError::Protocol("answer header value is not valid"))?;
            headers.append(name, value);
        }
        let (framing, mut reusable) = framing(&headers, status, head_only)?;
        reusable &= minor == 1 && !has_token(&headers, &CONNECTION, "close");
        normalize_length(&mut headers, framing);
        let mut parts = Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = if minor == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        parts.headers = headers;
        return Ok(Some((parts, framing, reusable)));
    }
}

/// Makes the answer's `Content-Length` say what the body is, before anyone
/// forwards it (RFC 9112 §6.3): beside a `Transfer-Encoding` it is wrong and
/// dropped (the body is as long as its coding says, and a forwarded length
/// would cut it and smuggle the rest into the client's next answer); a list
/// of equal lengths (`2, 2`) becomes the one length.
fn normalize_length(headers: &mut HeaderMap, framing: Framing) {
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
        return;
    }
    if let Framing::Length(n) = framing {
        let mut values = headers.get_all(CONTENT_LENGTH).iter();
        let single =
            values.next().is_some_and(|v| !v.as_bytes().contains(&b',')) && values.next().is_none();
        if !single {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

/// The body's framing, and whether it leaves the connection reusable.
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    head_only: bool,
) -> Result<(Framing, bool), SendError> {
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Empty, true));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // Chunked only when it is the last coding; a Content-Length beside
        // it is ignored, and such a connection is not trusted again.
        let chunked = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        let alone = !headers.contains_key(CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked, alone)
        } else {
            (Framing::Close, false)
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(SendError::Protocol("answer Content-Length is not valid"));
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|l| l != n) {
                return Err(SendError::Protocol("answer has differing Content-Lengths"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

/// Whether a comma-separated header lists `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Where a body is.
#[derive(Debug)]
enum State {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunked),
    /// Everything until the server closes.
    Close,
    Done,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy)]
enum Chunked {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes still to come.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines (dropped) until an empty one.
    Trailers,
}

/// An answer's body, read from its connection as the caller polls. At its
/// end a reusable connection goes back to the pool; dropped before its
/// end, the connection is closed.
pub struct Body<R> {
    conn: Option<Box<Conn>>,
    home: Option<R>,
    state: State,
}

impl<R> std::fmt::Debug for Body<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<R: Release> Body<R> {
    /// The body is complete: the connection goes home if it may, and only
    /// if the server sent nothing beyond the answer.
    fn finish(&mut self) {
        self.state = State::Done;
        let conn = self.conn.take();
        if let (Some(conn), Some(home)) = (conn, self.home.take()) {
            if conn.buf.is_empty() {
                home.release(conn);
            }
        }
    }

    /// Reads more from the socket into the buffer. `Ok(0)`: end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        conn.buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
    }

    /// The next piece of the body already in the buffer, if any; advances
    /// the state. `Ok(None)` with the state not `Done`: more bytes needed.
    fn decode(&mut self) -> Result<Option<Bytes>, BodyError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let buf = &mut conn.buf;
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Length(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (buf.len() as u64).min(left);
                    let data = buf.split_to(n as usize).freeze();
                    self.state = State::Length(left - n);
                    if left == n {
                        self.finish();
                    }
                    return Ok(Some(data));
                }
                State::Close => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(buf.split().freeze()));
                }
                State::Chunked(Chunked::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = State::Chunked(if size == 0 {
                            Chunked::Trailers
                        } else {
                            Chunked::Data(size)
                        });
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => return Ok(None),
                    _ => return Err(BodyError::Protocol("bad chunk size line")),
                },
                State::Chunked(Chunked::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (buf.len() as u64).min(left);
                    let data = buf.split_to(n as usize).freeze();
                    self.state = State::Chunked(if left == n {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - n)
                    });
                    return Ok(Some(data));
                }
                State::Chunked(Chunked::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BodyError::Protocol("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Chunked(Chunked::Size);
                }
                State::Chunked(Chunked::Trailers) => {
                    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() >= MAX_HEAD_BYTES {
                            return Err(BodyError::Protocol("trailers too large"));
                        }
                        return Ok(None);
                    };
                    buf.advance(eol + 2);
                    if eol == 0 {
                        self.finish();
                        return Ok(None);
                    }
                }
            }
        }
    }
}

impl<R: Release> http_body::Body for Body<R> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            match this.decode() {
                Err(e) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) if matches!(this.state, State::Done) => return Poll::Ready(None),
                Ok(None) => {}
            }
            match std::task::ready!(this.poll_fill(cx)) {
                Ok(0) if matches!(this.state, State::Close) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(Some(Err(BodyError::Io(
                        io::ErrorKind::UnexpectedEof.into(),
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(Some(Err(BodyError::Io(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
