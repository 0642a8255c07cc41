//! Uploads through real sockets: the multipart endpoints stream to the
//! simulated Feishu within their own body limits, their forms checked on
//! the way, and a broken upload never reaches Feishu whole.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

const IMAGES: &str = "/open-apis/im/v1/images";
const FILES: &str = "/open-apis/im/v1/files";
const BOUNDARY: &str = "feishu-gateway-test-boundary-7MA4YWxkTrZu0gW";

/// One part of a form: a text field, or a file.
enum Part<'a> {
    Text(&'a str, &'a str),
    File(&'a str, &'a str, &'a [u8]),
}

/// A `multipart/form-data` body of `parts`, as an SDK sends it.
fn form(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match part {
            Part::Text(name, value) => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                        .as_bytes(),
                );
            }
            Part::File(name, file_name, bytes) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(bytes);
                body.extend_from_slice(b"\r\n");
            }
        }
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// `n` bytes that are not all alike (and hold the boundary's prefix `--`
/// now and then, as real files do).
fn file_of(n: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|i| {
            if i % 4099 == 0 {
                return b'-';
            }
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// POSTs `body` (with its length) to `path` with the client key.
async fn upload(h: &Harness, path: &str, body: Vec<u8>) -> Answer {
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}{path}", h.gw.addr()))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("content-type", content_type())
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    answer_of(h.client.request(req).await.expect("an answer")).await
}

/// POSTs `body` to `path` chunked (no `Content-Length`), 64 KiB at a time.
async fn upload_chunked(h: &Harness, path: &str, body: Vec<u8>) -> Answer {
    let body = Chunks(body.chunks(64 * 1024).map(Bytes::copy_from_slice).collect());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}{path}", h.gw.addr()))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("content-type", content_type())
        .body(body)
        .unwrap();
    answer_of(client.request(req).await.expect("an answer")).await
}

/// A body of chunks and no length: sent chunked.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|c| Ok(http_body::Frame::data(c))),
        )
    }
}

async fn answer_of(resp: http::Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("a whole answer").to_bytes(),
    }
}

/// What a raw client read: the head (status line and headers, lowercased
/// names) and the body.
struct Raw {
    status: u16,
    head: String,
    body: String,
}

/// Writes `head` then `body` on a raw connection (in a task, ignoring write
/// errors: the gateway may close on an unread body), and reads the answer
/// until the connection closes or `limit` passes.
async fn raw_exchange(
    gw: std::net::SocketAddr,
    head: String,
    body: Vec<u8>,
    limit: Duration,
) -> Raw {
    let stream = TcpStream::connect(gw).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for chunk in body.chunks(16 * 1024) {
            if wr.write_all(chunk).await.is_err() {
                return;
            }
        }
        // Then keep the connection open (a stalled client) until dropped.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Raw {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

fn head_of(path: &str, length: Option<usize>) -> String {
    let framing = match length {
        Some(n) => format!("content-length: {n}\r\n"),
        None => "transfer-encoding: chunked\r\n".to_string(),
    };
    format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\n\
         content-type: {}\r\n{framing}\r\n",
        content_type()
    )
}

/// `body` as HTTP/1.1 chunks, without the closing chunk when `end` is false.
fn chunked(body: &[u8], end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(32 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    if end {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    out
}

fn upload_errors(metrics: &str, kind: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("feishu_gateway_upstream_errors_total{")
                && l.contains(&format!("kind=\"{kind}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_25_mb_file_streams_through_and_the_sim_gets_exactly_its_bytes() {
    let h = start(sim_config()).await;
    let file = file_of(25 << 20);
    let body = form(&[
        Part::Text("file_type", "stream"),
        Part::Text("file_name", "backup.tar"),
        Part::File("file", "backup.tar", &file),
    ]);
    let sent = body.len() as u64;
    let a = upload(&h, FILES, body).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.code(), 0);
    assert!(a.json()["data"]["file_key"].is_string(), "{}", a.text());
    let ups = h.sim.uploads();
    assert_eq!(ups.len(), 1, "one upload, sent once");
    let u = &ups[0];
    assert!(u.complete);
    assert_eq!(u.bytes, sent, "every byte of the body");
    assert_eq!(u.content_length, Some(sent), "its length announced");
    assert_eq!(u.file_bytes, file.len() as u64);
    assert_eq!(u.file_sha256, sha256_hex(&file), "exactly the file's bytes");
    assert_eq!(u.field("file_type"), Some("stream"));
    assert_eq!(u.field("file_name"), Some("backup.tar"));
    let m = h.metrics().await;
    assert_eq!(
        metric_value(&m, "feishu_gateway_in_flight_requests"),
        Some(0.0)
    );

    // Without a Content-Length the same goes through, chunked.
    let file = file_of(3 << 20);
    let body = form(&[
        Part::Text("image_type", "message"),
        Part::File("image", "a.png", &file),
    ]);
    let a = upload_chunked(&h, IMAGES, body).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert!(a.json()["data"]["image_key"].is_string());
    let u = h.sim.uploads().pop().unwrap();
    assert!(u.complete && u.chunked);
    assert_eq!(u.file_sha256, sha256_hex(&file));
    h.stop().await;
}

#[tokio::test]
async fn a_small_upload_is_buffered_and_checked_whole() {
    let h = start(sim_config()).await;
    let file = file_of(10_000);
    let ok = form(&[
        Part::Text("image_type", "avatar"),
        Part::File("image", "a.png", &file),
    ]);
    let a = upload(&h, IMAGES, ok).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(h.sim.uploads()[0].file_sha256, sha256_hex(&file));

    // A missing image_type: answered by the gateway, nothing sent.
    let a = upload(&h, IMAGES, form(&[Part::File("image", "a.png", &file)])).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    assert_eq!(a.code(), 232001);
    assert_eq!(a.header("x-gateway-error"), Some("invalid-request"));
    assert_eq!(
        a.header("connection"),
        None,
        "read whole: the connection goes on"
    );
    assert_eq!(
        a.json()["error"]["field_violations"][0]["field"],
        "image_type",
        "{}",
        a.text()
    );
    assert!(a.json()["msg"]
        .as_str()
        .unwrap()
        .contains("image_type: required"));
    // An empty image: Feishu's own code.
    let a = upload(
        &h,
        IMAGES,
        form(&[
            Part::Text("image_type", "message"),
            Part::File("image", "a.png", b""),
        ]),
    )
    .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, 234010),
        "{}",
        a.text()
    );
    // Not a form at all.
    let a = h
        .call(
            Method::POST,
            IMAGES,
            &[
                ("authorization", &format!("Bearer {CLIENT_KEY}")),
                ("content-type", "application/json"),
            ],
            "{}",
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.json()["error"]["field_violations"][0]["field"],
        "Content-Type"
    );
    assert_eq!(
        h.sim.uploads().len(),
        1,
        "only the good upload reached the sim"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_bad_field_before_the_file_is_answered_before_anything_is_sent() {
    let h = start(sim_config()).await;
    let file = file_of(2 << 20);
    let body = form(&[
        Part::Text("file_type", "exe"),
        Part::Text("file_name", "x.exe"),
        Part::File("file", "x.exe", &file),
    ]);
    let r = raw_exchange(
        h.gw.addr(),
        head_of(FILES, Some(body.len())),
        body,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(r.status, 400, "{}\n{}", r.head, r.body);
    assert!(r.head.contains("connection: close"), "{}", r.head);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["code"], 232001);
    assert_eq!(v["error"]["field_violations"][0]["field"], "file_type");
    assert_eq!(v["error"]["field_violations"][0]["value"], "exe");
    assert!(h.sim.uploads().is_empty(), "nothing reached the sim");
    assert!(h.sim.requests().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn a_missing_field_after_a_large_file_aborts_the_upstream_request() {
    let h = start(sim_config()).await;
    let file = file_of(2 << 20);
    // The file first (curl -F keeps the order given), and no image_type:
    // known only at the end, so the upload is cut before its last byte.
    let body = form(&[Part::File("image", "a.png", &file)]);
    let r = raw_exchange(
        h.gw.addr(),
        head_of(IMAGES, Some(body.len())),
        body,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(r.status, 400, "{}\n{}", r.head, r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["field_violations"][0]["field"], "image_type");
    // The sim saw an upload begin and break off: never a complete one.
    wait_for(Duration::from_secs(5), || async {
        !h.sim.uploads().is_empty()
    })
    .await;
    let ups = h.sim.uploads();
    assert_eq!(ups.len(), 1);
    assert!(!ups[0].complete, "aborted, not completed");
    assert!(ups[0].bytes < ups[0].content_length.unwrap());
    assert_eq!(ups[0].answered_code, None);

    // A whole body whose form lacks its closing boundary: only its end
    // tells, so its last chunk is held back and the request never
    // completes.
    let mut body = form(&[
        Part::Text("image_type", "message"),
        Part::File("image", "a.png", &file),
    ]);
    body.truncate(body.len() - (BOUNDARY.len() + 6));
    let r = raw_exchange(
        h.gw.addr(),
        head_of(IMAGES, Some(body.len())),
        body,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(r.status, 400, "{}\n{}", r.head, r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["field_violations"][0]["field"], "body", "{v}");
    wait_for(Duration::from_secs(5), || async {
        h.sim.uploads().len() == 2
    })
    .await;
    let u = h.sim.uploads().pop().unwrap();
    assert!(!u.complete, "its last byte never left");
    h.stop().await;
}

#[tokio::test]
async fn over_the_route_limit_is_413_before_anything_is_sent_when_the_length_says_so() {
    let h = start(sim_config()).await;
    // An image route takes 10 MiB + 64 KiB of body.
    let declared = (10 << 20) + 64 * 1024 + 1;
    let r = raw_exchange(
        h.gw.addr(),
        head_of(IMAGES, Some(declared)),
        Vec::new(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.status, 413, "{}\n{}", r.head, r.body);
    assert!(r.head.contains("connection: close"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["field_violations"][0]["field"], "body");
    // A JSON route keeps the global 1 MiB.
    let r = raw_exchange(
        h.gw.addr(),
        format!(
            "POST /open-apis/im/v1/messages?receive_id_type=chat_id HTTP/1.1\r\nhost: gw\r\n\
             authorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            (1 << 20) + 1
        ),
        Vec::new(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.head);
    assert!(h.sim.uploads().is_empty() && h.sim.requests().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn over_the_limit_without_a_length_aborts_the_upstream_request() {
    let h = start(sim_config()).await;
    // Without a Content-Length the limit is found mid-stream: a 5 MiB
    // image with 6 MiB of an unknown text field before it.
    let padding = "p".repeat(6 << 20);
    let file = file_of(5 << 20);
    let body = form(&[
        Part::Text("image_type", "message"),
        Part::File("image", "a.png", &file),
        Part::Text("padding", &padding),
    ]);
    let r = raw_exchange(
        h.gw.addr(),
        head_of(IMAGES, None),
        chunked(&body, true),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(r.status, 413, "{}\n{}", r.head, r.body);
    assert!(r.head.contains("connection: close"));
    wait_for(Duration::from_secs(5), || async {
        !h.sim.uploads().is_empty()
    })
    .await;
    let ups = h.sim.uploads();
    assert_eq!(ups.len(), 1);
    assert!(ups[0].chunked && !ups[0].complete, "aborted: no last chunk");
    assert!(ups[0].bytes <= (10 << 20) + 64 * 1024);

    // A file over Feishu's own size: 234006, naming the part.
    let file = file_of((10 << 20) + 1);
    let body = form(&[
        Part::Text("image_type", "message"),
        Part::File("image", "a.png", &file),
    ]);
    let r = raw_exchange(
        h.gw.addr(),
        head_of(IMAGES, None),
        chunked(&body, true),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(r.status, 400, "{}\n{}", r.head, r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["code"], 234006);
    assert_eq!(v["error"]["field_violations"][0]["field"], "image");
    wait_for(Duration::from_secs(5), || async {
        h.sim.uploads().len() == 2
    })
    .await;
    assert!(h.sim.uploads().iter().all(|u| !u.complete));
    h.stop().await;
}

#[tokio::test]
async fn a_stalled_upload_is_closed_after_the_idle_limit_and_counted() {
    let h = start_with(sim_config(), |c| {
        c.upstream_idle(Duration::from_millis(400))
    })
    .await;
    let file = file_of(1 << 20);
    let body = form(&[
        Part::Text("image_type", "message"),
        Part::File("image", "a.png", &file),
    ]);
    let declared = body.len();
    // 200 KiB of it, then nothing.
    let started = std::time::Instant::now();
    let sending = raw_exchange(
        h.gw.addr(),
        head_of(IMAGES, Some(declared)),
        body[..200 * 1024].to_vec(),
        Duration::from_secs(10),
    );
    let metrics = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        h.metrics().await
    };
    let (r, during) = tokio::join!(sending, metrics);
    assert_eq!(r.status, 408, "{}\n{}", r.head, r.body);
    assert!(r.head.contains("connection: close"));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        metric_value(&during, "feishu_gateway_in_flight_requests"),
        Some(1.0),
        "the upload is in flight while it streams"
    );
    let after = h.metrics().await;
    assert_eq!(upload_errors(&after, "idle_timeout"), 1.0, "{after}");
    assert_eq!(
        metric_value(&after, "feishu_gateway_in_flight_requests"),
        Some(0.0)
    );
    wait_for(Duration::from_secs(5), || async {
        !h.sim.uploads().is_empty()
    })
    .await;
    assert!(
        !h.sim.uploads()[0].complete,
        "the upstream request was aborted"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_token_invalid_answer_to_a_streamed_upload_goes_to_the_client_once() {
    let h = start(sim_config()).await;
    let file = file_of(1 << 20);
    let body = form(&[
        Part::Text("image_type", "message"),
        Part::File("image", "a.png", &file),
    ]);
    let a = upload(&h, IMAGES, body.clone()).await;
    assert_eq!(a.code(), 0);
    let tokens_before = h.sim.token_calls().len();
    h.sim.invalidate_all_tokens();
    let a = upload(&h, IMAGES, body.clone()).await;
    assert_eq!(a.code(), 99991663, "Feishu's answer, not replayed");
    assert_eq!(a.header("x-gateway-error"), None);
    assert_eq!(h.sim.uploads().len(), 2, "sent once");
    let m = h.metrics().await;
    let series = m
        .lines()
        .find(|l| l.starts_with("feishu_gateway_token_invalid_streamed_total{"))
        .unwrap_or_else(|| panic!("no series:\n{m}"));
    assert!(
        series.contains("code=\"99991663\"") && series.ends_with(" 1"),
        "{series}"
    );
    // The token was dropped: the client's retry gets a new one.
    let a = upload(&h, IMAGES, body).await;
    assert_eq!(a.code(), 0, "{}", a.text());
    assert_eq!(h.sim.token_calls().len(), tokens_before + 1);
    h.stop().await;
}

#[tokio::test]
async fn over_http2_an_upload_streams_and_a_broken_one_is_reset() {
    let sim = SimFeishu::start(SimConfig {
        tls: true,
        ..sim_config()
    })
    .await
    .expect("sim starts");
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), sim.ca_pem().unwrap()).unwrap();
    let h = Harness::on(sim, |c| c.upstream_ca_file(ca.path())).await;
    let file = file_of(3 << 20);
    let body = form(&[
        Part::Text("image_type", "message"),
        Part::File("image", "a.png", &file),
    ]);
    let a = upload(&h, IMAGES, body).await;
    assert_eq!(a.code(), 0, "{}", a.text());
    let u = h.sim.uploads().pop().unwrap();
    assert_eq!(u.version, http::Version::HTTP_2);
    assert!(u.complete);
    assert_eq!(u.file_sha256, sha256_hex(&file));

    // The image_type is missing, known at the end: the stream is reset.
    let body = form(&[Part::File("image", "a.png", &file)]);
    let r = raw_exchange(
        h.gw.addr(),
        head_of(IMAGES, Some(body.len())),
        body,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(r.status, 400, "{}\n{}", r.head, r.body);
    wait_for(Duration::from_secs(5), || async {
        h.sim.uploads().len() == 2
    })
    .await;
    let u = h.sim.uploads().pop().unwrap();
    assert!(!u.complete, "reset, not completed");
    assert_eq!(u.answered_code, None);
    h.stop().await;
}

#[tokio::test]
async fn json_routes_are_still_buffered_and_validated() {
    let h = start(sim_config()).await;
    let a = h
        .call(
            Method::POST,
            PUT_PATH,
            &[
                ("authorization", &format!("Bearer {CLIENT_KEY}")),
                ("content-type", "application/json"),
            ],
            r#"{"chat_top_notice":[{"action_type":"1"}]}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), 232001);
    assert_eq!(
        a.json()["error"]["field_violations"][0]["field"],
        "chat_top_notice[0].message_id"
    );
    assert_eq!(a.header("connection"), None, "the body was read whole");
    let a = h.put("oc_123").await;
    assert_eq!(a.code(), 0, "{}", a.text());
    assert_eq!(h.sim.requests().len(), 1);
    h.stop().await;
}
