//! Uploads, as Feishu takes them (feishu-platform.md §4): the
//! `multipart/form-data` endpoints `POST /open-apis/im/v1/images`,
//! `/open-apis/im/v1/files` and drive's `files|medias/upload_all` and
//! `upload_part`.
//!
//! A multipart body to one of them is read as it streams (never held
//! whole: a file may be 30 MB), with a well-kept parser (`multer`): every
//! byte of the body is counted, the text fields are kept, and the file part
//! is counted and hashed (SHA-256), so a test can tell the fake got exactly
//! the bytes that were sent. Each upload is recorded as an
//! [`UploadRecord`] ([`crate::SimFeishu::uploads`]), a cut-off one too
//! (`complete: false`: the sender aborted it), which is never answered.
//!
//! A complete upload then goes the way of every business request (token,
//! quotas, per-resource limits, injected answers, latency) with an empty
//! body; when that says success, the form decides: images need
//! `image_type` in {message, avatar} and a non-empty `image` of at most
//! 10 MiB (else 234010 / 234006); files `file_type`, `file_name` and a
//! non-empty `file` of at most 30 MiB; drive its fields and `file`, with
//! `size` equal to the file's length; then the answer carries a key or a
//! token. A body that is not multipart goes the generic way, unread here.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use hyper::body::Body as _;
use hyper::body::Incoming;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::answer::{code, Answer};

/// Feishu's upload codes (feishu-platform.md §4).
const UPLOAD_TOO_LARGE: i64 = 234006;
const UPLOAD_EMPTY: i64 = 234010;
use super::state::{lock, Shared};
use super::TokenVerdict;

/// Which upload endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UploadKind {
    Image,
    File,
    DriveAll,
    DrivePart,
}

/// The upload endpoint of `method` and `path`, if it is one and the body
/// is `multipart/form-data` with a boundary.
pub(crate) fn route(method: &Method, path: &str, headers: &HeaderMap) -> Option<UploadKind> {
    if method != Method::POST || boundary(headers).is_none() {
        return None;
    }
    Some(match path {
        "/open-apis/im/v1/images" => UploadKind::Image,
        "/open-apis/im/v1/files" => UploadKind::File,
        "/open-apis/drive/v1/files/upload_all" | "/open-apis/drive/v1/medias/upload_all" => {
            UploadKind::DriveAll
        }
        "/open-apis/drive/v1/files/upload_part" | "/open-apis/drive/v1/medias/upload_part" => {
            UploadKind::DrivePart
        }
        _ => return None,
    })
}

fn boundary(headers: &HeaderMap) -> Option<String> {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
}

/// One upload as the fake received it.
#[derive(Debug, Clone)]
pub struct UploadRecord {
    /// The path.
    pub path: String,
    /// The HTTP version it came with (`HTTP_2` when ALPN chose `h2`).
    pub version: http::Version,
    /// The bearer token it came with.
    pub bearer: Option<String>,
    /// How that token was judged.
    pub token_verdict: TokenVerdict,
    /// The request's `Content-Length`, if it had one.
    pub content_length: Option<u64>,
    /// It came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Bytes of body received, whatever became of them.
    pub bytes: u64,
    /// The body arrived whole (it was not cut off or reset).
    pub complete: bool,
    /// The text fields, in order, with their values (up to 64 KiB each).
    pub fields: Vec<(String, String)>,
    /// The name of the file part (`image`, `file`), if one came.
    pub file_part: Option<String>,
    /// The file part's length.
    pub file_bytes: u64,
    /// SHA-256 of the file part, in hex.
    pub file_sha256: String,
    /// The multipart body's problem, if the parser found one.
    pub form_error: Option<String>,
    /// The `code` answered (none for a cut-off upload: no answer).
    pub answered_code: Option<i64>,
    /// When it had arrived whole (or broke off).
    pub arrived: Instant,
}

impl UploadRecord {
    /// The value of text field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The body, counted as the parser reads it.
struct Counted {
    body: Incoming,
    seen: Arc<Mutex<(u64, Option<bool>)>>,
}

impl futures_core::Stream for Counted {
    type Item = Result<Bytes, hyper::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            return match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    lock(&this.seen).1 = Some(true);
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    lock(&this.seen).1 = Some(false);
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        lock(&this.seen).0 += data.len() as u64;
                        Poll::Ready(Some(Ok(data)))
                    }
                    Err(_) => continue,
                },
            };
        }
    }
}

/// What the parser made of the body.
#[derive(Default, Clone)]
struct Form {
    fields: Vec<(String, String)>,
    file_part: Option<String>,
    file_bytes: u64,
    file_sha256: String,
    error: Option<String>,
}

/// Reads the whole multipart body as it streams.
async fn read_form(body: Counted, boundary: Option<String>, file_part: &str) -> Form {
    let mut form = Form::default();
    let Some(boundary) = boundary else {
        // Not a form: read it through, counted, for the record.
        let mut body = body;
        while let Some(Ok(_)) =
            std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut body), cx))
                .await
        {}
        form.error = Some("not multipart/form-data".into());
        return form;
    };
    let mut parser = multer::Multipart::new(body, boundary);
    loop {
        let mut field = match parser.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                form.error = Some(e.to_string());
                break;
            }
        };
        let name = field.name().unwrap_or("").to_owned();
        let is_file = name == file_part;
        let mut hash = Sha256::new();
        let mut bytes = 0u64;
        let mut text = Vec::new();
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    bytes += chunk.len() as u64;
                    if is_file {
                        hash.update(&chunk);
                    } else if text.len() < 64 * 1024 {
                        text.extend_from_slice(&chunk);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    form.error = Some(e.to_string());
                    return form;
                }
            }
        }
        if is_file {
            form.file_part = Some(name);
            form.file_bytes = bytes;
            form.file_sha256 = hex::encode(hash.finalize());
        } else {
            form.fields
                .push((name, String::from_utf8_lossy(&text).into_owned()));
        }
    }
    form
}

/// A complete upload, read, waiting for its answer.
pub(crate) struct Read {
    kind: UploadKind,
    form: Form,
    record: UploadRecord,
}

/// Reads an upload as it streams. `None` when the body broke off (the
/// sender aborted it): recorded, and the connection is dropped unanswered.
pub(crate) async fn read(
    shared: &Shared,
    parts: &Parts,
    body: Incoming,
    kind: UploadKind,
) -> Option<Read> {
    let file_part = match kind {
        UploadKind::Image => "image",
        _ => "file",
    };
    let seen = Arc::new(Mutex::new((0u64, None)));
    let counted = Counted {
        body,
        seen: Arc::clone(&seen),
    };
    let form = read_form(counted, boundary(&parts.headers), file_part).await;
    // The transport broke (a reset, a chunked body without its last chunk,
    // fewer bytes than announced): the sender aborted it. A body the parser
    // gave up on early is answered (400) without being read further.
    let (bytes, ended) = *lock(&seen);
    let complete = ended != Some(false);
    let bearer = super::server::bearer_token(&parts.headers).map(str::to_owned);
    let (verdict, _holder) = lock(&shared.tokens).judge(bearer.as_deref(), Instant::now());
    let record = UploadRecord {
        path: parts.uri.path().to_owned(),
        version: parts.version,
        bearer,
        token_verdict: verdict,
        content_length: parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
        chunked: parts.headers.contains_key(TRANSFER_ENCODING),
        bytes,
        complete,
        fields: form.fields.clone(),
        file_part: form.file_part.clone(),
        file_bytes: form.file_bytes,
        file_sha256: form.file_sha256.clone(),
        form_error: form.error.clone(),
        answered_code: None,
        arrived: Instant::now(),
    };
    if !complete {
        if shared.record_requests {
            lock(&shared.uploads).push(record);
        }
        return None;
    }
    Some(Read { kind, form, record })
}

/// The answer to a complete upload: `generic`, what every business
/// request gets (token, quotas, injected answers), unless it is a success;
/// then the form's verdict.
pub(crate) fn answer(shared: &Shared, read: Read, generic: Answer) -> Answer {
    let Read {
        kind,
        form,
        mut record,
    } = read;
    let answer = if generic.code == 0 {
        verdict(kind, &form)
    } else {
        generic
    };
    record.answered_code = Some(answer.code);
    if shared.record_requests {
        lock(&shared.uploads).push(record);
    }
    answer
}

/// The answer to a complete upload.
fn verdict(kind: UploadKind, form: &Form) -> Answer {
    let bad = || Answer::error(StatusCode::BAD_REQUEST, code::INVALID_PARAM);
    if form.error.is_some() {
        return bad();
    }
    let field = |name: &str| {
        form.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let (max, ok) = match kind {
        UploadKind::Image => (
            10 << 20,
            matches!(field("image_type"), Some("message" | "avatar")),
        ),
        UploadKind::File => (
            30 << 20,
            matches!(
                field("file_type"),
                Some("opus" | "mp4" | "pdf" | "doc" | "xls" | "ppt" | "stream")
            ) && field("file_name").is_some_and(|n| !n.is_empty()),
        ),
        UploadKind::DriveAll => (
            20 << 20,
            ["file_name", "parent_type", "parent_node"]
                .iter()
                .all(|f| field(f).is_some_and(|v| !v.is_empty()))
                && field("size") == Some(form.file_bytes.to_string().as_str()),
        ),
        UploadKind::DrivePart => (
            4 << 20,
            field("upload_id").is_some_and(|v| !v.is_empty())
                && field("seq").is_some_and(|v| v.parse::<u32>().is_ok())
                && field("size") == Some(form.file_bytes.to_string().as_str()),
        ),
    };
    if !ok || form.file_part.is_none() {
        return bad();
    }
    let refused = |code: i64, msg: &str| {
        Answer::json(
            StatusCode::BAD_REQUEST,
            code,
            &json!({"code": code, "msg": msg}),
        )
    };
    if form.file_bytes == 0 {
        return refused(UPLOAD_EMPTY, "The file is empty.");
    }
    if form.file_bytes > max {
        return refused(UPLOAD_TOO_LARGE, "The file size exceeds the limit.");
    }
    let n: u32 = rand::random();
    let data = match kind {
        UploadKind::Image => json!({"image_key": format!("img_v2_sim{n:08}")}),
        UploadKind::File => json!({"file_key": format!("file_v2_sim{n:08}")}),
        UploadKind::DriveAll => json!({"file_token": format!("boxcnsim{n:08}")}),
        UploadKind::DrivePart => json!({}),
    };
    Answer::json(
        StatusCode::OK,
        0,
        &json!({"code": 0, "msg": "success", "data": data}),
    )
}
