//! The body of a streamed upload, as it goes from the client to Feishu:
//! [`UploadBody`] passes the client's bytes on as they come, and on the way
//! counts them against the route's limit, feeds the multipart form check
//! ([`FormDriver`]) and notes its progress for the watchdog of
//! `stream.rs`. When a chunk breaks a rule, the body fails INSTEAD of
//! passing that chunk on: the upstream request is aborted (hyper closes an
//! HTTP/1.1 connection, resets an HTTP/2 stream), so Feishu never gets a
//! complete request, and the reason waits in [`UploadState`] for the
//! answer the client gets.
//!
//! The last chunk matters most: with a `Content-Length` the request is
//! complete on the wire once its last byte is written, so the form's end
//! (required fields, the closing boundary) is checked before that chunk is
//! passed on; without one, hyper writes the closing `0` chunk only after
//! the body has said it ended, which is after the check.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus::IntGauge;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::upstream::outgoing::StreamError;
use crate::validate::form::MAX_TEXT_BYTES;
use crate::validate::{FormCheck, FormContract, Violations};

/// Why an upload stopped before its end.
#[derive(Debug, Clone)]
pub(super) enum Stop {
    /// More bytes than the route's limit.
    TooLarge,
    /// The form broke its contract.
    Invalid(Box<Violations>),
    /// The client's body broke off (reset, or shorter than announced).
    ClientAborted,
    /// The gateway gave up on the request (the watchdog).
    Abandoned,
}

/// The body's life, for the in-flight gauge: a request is counted by the
/// proxy until its answer's head goes back, and by its body after that if
/// the body is still streaming then (Feishu answered early).
const STREAMING: u8 = 0;
const ENDED: u8 = 1;
const ANSWERED_WHILE_STREAMING: u8 = 2;

/// What the body and the proxy share about one upload.
#[derive(Debug)]
pub(super) struct UploadState {
    stop: Mutex<Option<Stop>>,
    /// Violations found on a `log-only` route: logged and counted, not
    /// enforced.
    logged: Mutex<Option<Violations>>,
    base: Instant,
    /// When a byte last moved, in ms since `base`.
    progress_ms: AtomicU64,
    /// The body's last read of the client found nothing to read.
    waiting_on_client: AtomicBool,
    abandoned: AtomicBool,
    phase: AtomicU8,
    ended: Notify,
    in_flight: IntGauge,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl UploadState {
    pub(super) fn new(in_flight: IntGauge) -> Arc<UploadState> {
        Arc::new(UploadState {
            stop: Mutex::new(None),
            logged: Mutex::new(None),
            base: Instant::now(),
            progress_ms: AtomicU64::new(0),
            waiting_on_client: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            phase: AtomicU8::new(STREAMING),
            ended: Notify::new(),
            in_flight,
        })
    }

    fn stop(&self, why: Stop) {
        lock(&self.stop).get_or_insert(why);
    }

    /// Why the body stopped, if it did.
    pub(super) fn stopped(&self) -> Option<Stop> {
        lock(&self.stop).clone()
    }

    /// Violations a `log-only` route let through.
    pub(super) fn take_logged(&self) -> Option<Violations> {
        lock(&self.logged).take()
    }

    /// A byte moved now.
    pub(super) fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.progress_ms.store(ms, Ordering::Relaxed);
    }

    /// When a byte last moved.
    pub(super) fn last_progress(&self) -> Instant {
        self.base + std::time::Duration::from_millis(self.progress_ms.load(Ordering::Relaxed))
    }

    /// The body is waiting for the client (rather than for Feishu to take
    /// more).
    pub(super) fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Relaxed)
    }

    /// The gateway gives up: the body fails when next polled.
    pub(super) fn abandon(&self) {
        self.stop(Stop::Abandoned);
        self.abandoned.store(true, Ordering::Release);
    }

    /// The whole body went on (or was dropped).
    pub(super) fn is_ended(&self) -> bool {
        self.phase.load(Ordering::Acquire) == ENDED
    }

    /// Resolves once the body ended (at once if it has).
    pub(super) async fn wait_ended(&self) {
        loop {
            let notified = self.ended.notified();
            if self.is_ended() {
                return;
            }
            notified.await;
        }
    }

    /// The answer's head goes back: if the body still streams, it counts
    /// the request in flight until it ends.
    pub(super) fn answered(&self) {
        if self
            .phase
            .compare_exchange(
                STREAMING,
                ANSWERED_WHILE_STREAMING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.in_flight.inc();
        }
    }

    fn end(&self) {
        if self.phase.swap(ENDED, Ordering::AcqRel) == ANSWERED_WHILE_STREAMING {
            self.in_flight.dec();
        }
        self.ended.notify_waiters();
    }
}

/// The error a failed upload body gives hyper; the reason is in
/// [`UploadState`].
#[derive(Debug, thiserror::Error)]
#[error("upload stopped: {0:?}")]
pub(super) struct Stopped(&'static str);

/// How the prefix read ended.
pub(super) enum Prefix {
    /// The client's whole body, read and checked: it goes the buffered way.
    Whole(Bytes),
    /// The body goes on: the text fields before the file part (or the
    /// first 64 KiB) were read and checked.
    Open,
}

/// A client's request body on its way to Feishu. See the module doc.
pub(super) struct UploadBody {
    /// Read and checked, not yet passed on.
    prefix: VecDeque<Bytes>,
    prefix_len: usize,
    /// The client's body; `None` once it ended.
    client: Option<Incoming>,
    form: Option<FormDriver>,
    /// Form violations end the upload; `false` on a `log-only` route.
    enforce: bool,
    received: u64,
    passed: u64,
    declared: Option<u64>,
    limit: u64,
    state: Arc<UploadState>,
}

impl UploadBody {
    pub(super) fn new(
        client: Incoming,
        declared: Option<u64>,
        limit: usize,
        form: Option<FormDriver>,
        enforce: bool,
        state: Arc<UploadState>,
    ) -> UploadBody {
        UploadBody {
            prefix: VecDeque::new(),
            prefix_len: 0,
            client: Some(client),
            form,
            enforce,
            received: 0,
            passed: 0,
            declared,
            limit: limit as u64,
            state,
        }
    }

    /// The route's body limit.
    pub(super) fn limit(&self) -> usize {
        usize::try_from(self.limit).unwrap_or(usize::MAX)
    }

    /// The state it shares with the proxy.
    pub(super) fn state(&self) -> &Arc<UploadState> {
        &self.state
    }

    /// Reads the start of the body, checked, before anything is sent: until
    /// the form's file part begins, `max` bytes were read, or the body
    /// ended. `Err` when a rule broke (the reason is in the state).
    pub(super) async fn read_prefix(&mut self, max: usize) -> Result<Prefix, ()> {
        std::future::poll_fn(|cx| loop {
            let file_started = self.form.as_ref().is_some_and(FormDriver::file_started);
            if file_started || self.prefix_len >= max {
                return Poll::Ready(Ok(Prefix::Open));
            }
            match self.poll_client(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    self.prefix_len += chunk.len();
                    self.prefix.push_back(chunk);
                }
                Poll::Ready(Some(Err(()))) => return Poll::Ready(Err(())),
                Poll::Ready(None) => {
                    let mut whole = BytesMut::with_capacity(self.prefix_len);
                    for chunk in self.prefix.drain(..) {
                        whole.extend_from_slice(&chunk);
                    }
                    return Poll::Ready(Ok(Prefix::Whole(whole.freeze())));
                }
            }
        })
        .await
    }

    /// The next chunk of the client's body, counted and checked; `Err` when
    /// a rule broke (recorded in the state), `None` at its (checked) end.
    fn poll_client(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ()>>> {
        loop {
            let Some(client) = self.client.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(client).poll_frame(cx) {
                Poll::Pending => {
                    self.state.waiting_on_client.store(true, Ordering::Relaxed);
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    self.state.waiting_on_client.store(false, Ordering::Relaxed);
                    // Trailers are not passed on.
                    let Ok(chunk) = frame.into_data() else {
                        continue;
                    };
                    if chunk.is_empty() {
                        continue;
                    }
                    self.received += chunk.len() as u64;
                    if self.received > self.limit {
                        return self.fail(Stop::TooLarge);
                    }
                    let last = self.declared == Some(self.received);
                    if let Some(form) = self.form.as_mut() {
                        if let Err(v) = form.feed(chunk.clone(), last) {
                            if let Some(stop) = self.form_failed(v) {
                                return self.fail(stop);
                            }
                        }
                    }
                    if last {
                        self.client = None;
                    }
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Poll::Ready(None) => {
                    self.state.waiting_on_client.store(false, Ordering::Relaxed);
                    self.client = None;
                    if let Some(form) = self.form.as_mut() {
                        if let Err(v) = form.feed(Bytes::new(), true) {
                            if let Some(stop) = self.form_failed(v) {
                                return self.fail(stop);
                            }
                        }
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "the client's upload broke off");
                    return self.fail(Stop::ClientAborted);
                }
            }
        }
    }

    /// A form violation: the stop on an enforced route; on a `log-only`
    /// one it is kept for the log and the check ends.
    fn form_failed(&mut self, v: Violations) -> Option<Stop> {
        self.form = None;
        if self.enforce {
            Some(Stop::Invalid(Box::new(v)))
        } else {
            *lock(&self.state.logged) = Some(v);
            None
        }
    }

    fn fail<T>(&mut self, why: Stop) -> Poll<Option<Result<T, ()>>> {
        self.state.stop(why);
        self.client = None;
        self.form = None;
        Poll::Ready(Some(Err(())))
    }
}

impl Body for UploadBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        if this.state.abandoned.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(Box::new(Stopped("abandoned")))));
        }
        let next = match this.prefix.pop_front() {
            Some(chunk) => Poll::Ready(Some(Ok(chunk))),
            None => this.poll_client(cx),
        };
        match next {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.passed += chunk.len() as u64;
                this.state.touch();
                if this.prefix.is_empty() && this.client.is_none() {
                    this.state.end();
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(()))) => {
                this.state.end();
                Poll::Ready(Some(Err(Box::new(Stopped("a rule broke")))))
            }
            Poll::Ready(None) => {
                this.state.end();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.client.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.declared {
            Some(n) => SizeHint::with_exact(n.saturating_sub(self.passed)),
            None => SizeHint::default(),
        }
    }
}

impl Drop for UploadBody {
    fn drop(&mut self) {
        self.state.end();
    }
}

// ----- the form check, fed as the body streams ------------------------------

/// The chunks handed to the parser, and whether the body ended.
#[derive(Default)]
struct Feed {
    chunks: VecDeque<Bytes>,
    eof: bool,
}

/// The parser's input: what was fed so far; `Pending` when it has taken
/// everything and the body has not ended (the driver polls again on the
/// next chunk, so no waker is needed).
struct FeedStream(Arc<Mutex<Feed>>);

impl futures_core::Stream for FeedStream {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut feed = lock(&self.0);
        match feed.chunks.pop_front() {
            Some(chunk) => Poll::Ready(Some(Ok(chunk))),
            None if feed.eof => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

type Check = Pin<Box<dyn Future<Output = Result<(), Violations>> + Send>>;

/// Polls of the check per chunk at most (each takes a step of the parser).
const MAX_POLLS: usize = 64;

/// The multipart parser (`multer`) and the [`FormCheck`] over its parts,
/// driven chunk by chunk from inside [`UploadBody`]: each chunk is handed
/// to the parser and the check runs as far as that chunk lets it, before
/// the chunk goes on to Feishu.
pub(super) struct FormDriver {
    feed: Arc<Mutex<Feed>>,
    check: Check,
    /// The check's verdict, once it has one.
    done: Option<Result<(), Violations>>,
    file_started: Arc<AtomicBool>,
}

impl FormDriver {
    /// A check of a body with `boundary` against `contract`.
    pub(super) fn new(contract: Arc<FormContract>, boundary: String) -> FormDriver {
        let feed = Arc::new(Mutex::new(Feed::default()));
        let file_started = Arc::new(AtomicBool::new(false));
        let parser = multer::Multipart::new(FeedStream(Arc::clone(&feed)), boundary);
        let check = Box::pin(check(parser, contract, Arc::clone(&file_started)));
        FormDriver {
            feed,
            check,
            done: None,
            file_started,
        }
    }

    /// Checks a whole body at once.
    pub(super) fn check_whole(
        contract: Arc<FormContract>,
        boundary: String,
        body: Bytes,
    ) -> Result<(), Violations> {
        FormDriver::new(contract, boundary).feed(body, true)
    }

    /// The file part has begun (the text fields before it were checked).
    fn file_started(&self) -> bool {
        self.file_started.load(Ordering::Relaxed)
    }

    /// Hands `chunk` to the parser (`last`: the body ends with it) and runs
    /// the check as far as it goes. `Err` as soon as the form is known to
    /// be wrong; at the end, `Err` unless the form was complete.
    fn feed(&mut self, chunk: Bytes, last: bool) -> Result<(), Violations> {
        if let Some(done) = &self.done {
            // After the closing boundary: the epilogue, which parsers ignore.
            return done.clone();
        }
        {
            let mut feed = lock(&self.feed);
            if !chunk.is_empty() {
                feed.chunks.push_back(chunk);
            }
            feed.eof |= last;
        }
        let mut cx = Context::from_waker(Waker::noop());
        // One poll takes the parser as far as its input lets it (multer
        // 3.1, tested below with every split); polling again while it has
        // not taken every chunk, or at the end until it has a verdict, keeps
        // that true should a parser step ever return early.
        for _ in 0..MAX_POLLS {
            if let Poll::Ready(verdict) = self.check.as_mut().poll(&mut cx) {
                self.done = Some(verdict.clone());
                return verdict;
            }
            let feed = lock(&self.feed);
            if feed.chunks.is_empty() && !feed.eof {
                return Ok(());
            }
        }
        // Still no verdict with the whole body given: never let an
        // unchecked end through.
        let v = FormCheck::broken_form("ends before the closing boundary");
        self.done = Some(Err(v.clone()));
        Err(v)
    }
}

/// The check itself: every part as the parser yields it. A known text
/// field's value is read (at most [`MAX_TEXT_BYTES`]); the file part is
/// only counted; other parts are skipped.
async fn check(
    mut parser: multer::Multipart<'static>,
    contract: Arc<FormContract>,
    file_started: Arc<AtomicBool>,
) -> Result<(), Violations> {
    let mut form = FormCheck::new(&contract);
    loop {
        let mut field = match parser.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => {
                form.broken(parser_problem(&e));
                return Err(form
                    .violations()
                    .unwrap_or_else(|| FormCheck::broken_form("")));
            }
        };
        let name = field.name().unwrap_or("").to_owned();
        let result: Result<(), multer::Error> = async {
            if form.is_file(&name) {
                file_started.store(true, Ordering::Relaxed);
                form.file_start();
                while let Some(chunk) = field.chunk().await? {
                    form.file_bytes(chunk.len());
                    if form.failed() {
                        return Ok(());
                    }
                }
                form.file_end();
            } else if form.knows(&name) {
                let mut value = Vec::new();
                let mut truncated = false;
                while let Some(chunk) = field.chunk().await? {
                    let room = MAX_TEXT_BYTES - value.len();
                    if chunk.len() > room {
                        truncated = true;
                        value.extend_from_slice(&chunk[..room]);
                    } else {
                        value.extend_from_slice(&chunk);
                    }
                }
                form.text(&name, &value, truncated);
            } else {
                while field.chunk().await?.is_some() {}
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            form.broken(parser_problem(&e));
        }
        if let Some(v) = form.violations() {
            return Err(v);
        }
    }
    form.finish()
}

/// The parser's complaint, as a violation of `body`.
fn parser_problem(e: &multer::Error) -> String {
    match e {
        multer::Error::IncompleteStream => "ends before the closing boundary".into(),
        other => format!("is not a valid multipart/form-data body ({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::uploads;

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, file_name, value) in parts {
            body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"");
            body.extend_from_slice(name.as_bytes());
            if let Some(f) = file_name {
                body.extend_from_slice(format!("\"; filename=\"{f}").as_bytes());
            }
            body.extend_from_slice(b"\"\r\n\r\n");
            body.extend_from_slice(value);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body
    }

    /// Feeds `body` in chunks of `size`; the verdict and the chunk it came
    /// with.
    fn feed_in_chunks(body: &[u8], size: usize) -> (Result<(), Violations>, usize) {
        let contract = Arc::new(uploads::form(uploads::IMAGES).unwrap());
        let mut driver = FormDriver::new(contract, "XyZ".into());
        let chunks: Vec<&[u8]> = body.chunks(size).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let verdict = driver.feed(Bytes::copy_from_slice(chunk), last);
            if verdict.is_err() || last {
                return (verdict, i);
            }
        }
        unreachable!("the last chunk returns")
    }

    #[test]
    fn any_split_of_a_good_form_passes() {
        // The file holds starts of the delimiter (`\r\n--XyZ`, which a form's
        // parts never hold whole), to be split across chunks.
        let file = b"\x89PNG\r\n--Xy\r\n-XyZ--XyZ\r\n--X".repeat(50);
        let body = form(&[
            ("image_type", None, b"message"),
            ("image", Some("a.png"), &file),
        ]);
        let bad: Vec<usize> = (1..200)
            .chain([1000, body.len()])
            .filter(|&size| feed_in_chunks(&body, size).0.is_err())
            .collect();
        assert!(bad.is_empty(), "chunk sizes {bad:?} fail");
    }

    #[test]
    fn a_bad_field_fails_with_its_chunk_and_a_missing_one_with_the_last() {
        let file = vec![7u8; 4000];
        let body = form(&[
            ("image_type", None, b"photo"),
            ("image", Some("a.png"), &file),
        ]);
        let (verdict, at) = feed_in_chunks(&body, 100);
        let v = verdict.unwrap_err();
        assert_eq!(v.list()[0].field, "image_type");
        assert!(at < 2, "found at chunk {at}, long before the file ends");

        let body = form(&[("image", Some("a.png"), &file)]);
        let chunks = body.len().div_ceil(100);
        let (verdict, at) = feed_in_chunks(&body, 100);
        assert_eq!(verdict.unwrap_err().list()[0].field, "image_type");
        assert_eq!(at, chunks - 1, "known only at the end");

        // Cut before the closing boundary: known when the body ends.
        let cut = &body[..body.len() - 9];
        let (verdict, _) = feed_in_chunks(cut, 100);
        assert_eq!(verdict.unwrap_err().list()[0].field, "body");
    }
}
