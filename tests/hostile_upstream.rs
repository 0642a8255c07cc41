//! The gateway in front of upstreams that answer with framing a real
//! server might send and a hostile one would: a raw-socket "Feishu" that
//! answers the token call properly and every other request with the bytes
//! a test scripts (`support::scripted`). Each test checks what the client
//! receives, byte for byte where it is deterministic, and that the next
//! request on the same client connection gets its own answer (no response
//! smuggling); where the answer's head already went out when the upstream
//! broke, that the client's body is aborted (never a clean short answer)
//! and the next connection is served.
//!
//! Defects this suite found, and their fixes: a 100 KB header line was
//! passed on to the client (now a 502: `upstream::pool::MAX_HEAD_BYTES`);
//! a streamed answer that broke mid-body (reset, bad chunk size) was not
//! counted in `upstream_errors_total` (now `kind="reset"` / `"protocol"`).

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::scripted::*;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The catalog route of `GET /open-apis/drive/v1/files/<token>/download`,
/// the path most of these tests call.
const DOWNLOAD_ROUTE: &str = "/open-apis/drive/v1/files/:file_token/download";

/// One HTTP/1.1 client connection to the gateway (hyper's client parser
/// reads the answers).
async fn client_connection(
    gateway: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(gateway).await.unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

/// A request to the gateway with the test client's key.
fn to_gateway(builder: http::request::Builder) -> http::request::Builder {
    builder
        .header("host", "gateway")
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
}

/// Two GETs on ONE client connection to the gateway: the answers, as the
/// client's HTTP/1.1 parser (hyper's) reads them.
async fn two_on_one_connection(gateway: SocketAddr) -> Vec<(StatusCode, Bytes)> {
    let mut tx = client_connection(gateway).await;
    let mut out = Vec::new();
    for n in 0..2 {
        let req = to_gateway(Request::get(format!(
            "/open-apis/drive/v1/files/file_{n}/download"
        )))
        .body(Full::new(Bytes::new()))
        .unwrap();
        tx.ready()
            .await
            .expect("the client connection is still usable");
        let resp = tx.send_request(req).await.expect("an answer");
        let status = resp.status();
        let body = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            resp.into_body().collect(),
        )
        .await
        .expect("the body ends")
        .expect("the body is well framed")
        .to_bytes();
        out.push((status, body));
    }
    out
}

async fn gateway_in_front_of(upstream: SocketAddr) -> Runtime {
    start_gateway(&GatewayConfig::new(&format!("http://{upstream}"))).await
}

/// A chunked answer that also says `Content-Length: 10`: the body is what
/// the chunks say (26 bytes), the client gets all of it, and the bytes past
/// the stale length do not become the client's next answer.
#[tokio::test]
async fn chunked_with_a_content_length_is_not_cut_nor_smuggled() {
    let smuggled = b"HTTP/1.1 200 OK\r\nX: 1\r\n\r\n";
    assert_eq!(smuggled.len(), 25);
    let mut first =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nContent-Length: 10\r\n\r\n1a\r\n"
            .to_vec();
    first.extend_from_slice(b"A");
    first.extend_from_slice(smuggled);
    first.extend_from_slice(b"\r\n0\r\n\r\n");
    let second =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 6\r\n\r\nsecond"
            .to_vec();
    let (upstream, seen) = scripted_upstream(vec![first, second]).await;
    let gw = gateway_in_front_of(upstream).await;
    let answers = two_on_one_connection(gw.addr()).await;
    let mut want = b"A".to_vec();
    want.extend_from_slice(smuggled);
    assert_eq!(answers[0], (StatusCode::OK, Bytes::from(want)));
    assert_eq!(answers[1], (StatusCode::OK, Bytes::from_static(b"second")));
    assert_eq!(seen.lock().unwrap().len(), 2);
    gw.shutdown();
    gw.wait().await;
}

/// `Content-Length: 2, 2` (a list of equal lengths, which RFC 9110 lets a
/// recipient take as one) reaches the client as `Content-Length: 2`.
#[tokio::test]
async fn a_list_of_equal_lengths_is_forwarded_as_one() {
    let answer =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 2, 2\r\n\r\nok"
            .to_vec();
    let (upstream, _) = scripted_upstream(vec![answer]).await;
    let gw = gateway_in_front_of(upstream).await;
    let mut tx = client_connection(gw.addr()).await;
    let req = to_gateway(Request::get("/open-apis/drive/v1/files/f/download"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let lengths: Vec<_> = resp
        .headers()
        .get_all("content-length")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(lengths, ["2"]);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    // And the connection goes on: a second call on it is answered.
    let answers = two_on_one_connection(gw.addr()).await;
    assert_eq!(answers[1], (StatusCode::OK, Bytes::from_static(b"ok")));
    gw.shutdown();
    gw.wait().await;
}

/// Every distinct `code` an upstream puts in its answers would be a new
/// series: past the known codes and a few unknown ones per (app, route),
/// they count as `code="other"`, and every answer is still counted.
#[tokio::test]
async fn random_codes_do_not_grow_the_metrics_without_bound() {
    let answers: Vec<Vec<u8>> = (0..400)
        .map(|n| {
            let body = format!(r#"{{"code":{},"msg":"odd"}}"#, 700_000 + n);
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .collect();
    let (upstream, seen) = scripted_upstream(answers).await;
    let gw = gateway_in_front_of(upstream).await;
    let client = http_client();
    for n in 0..400 {
        let a = call(
            &client,
            gw.addr(),
            http::Method::GET,
            &format!("/open-apis/drive/v1/files/f{n}/download"),
            &[("authorization", &format!("Bearer {CLIENT_KEY}"))],
            "",
        )
        .await;
        assert_eq!(a.code(), 700_000 + n, "the answer itself is unchanged");
    }
    assert_eq!(seen.lock().unwrap().len(), 400);
    let text = metrics_of(&client, &gw).await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("feishu_gateway_requests_total{"))
        .filter(|l| l.contains(&format!("route=\"{DOWNLOAD_ROUTE}\"")))
        .collect();
    assert_eq!(
        series.len(),
        17,
        "16 codes of their own and other: {series:#?}"
    );
    let other = series
        .iter()
        .find(|l| l.contains("code=\"other\""))
        .expect("an other series");
    assert!(other.ends_with(" 384"), "{other}");
    gw.shutdown();
    gw.wait().await;
}

/// A large POST on a pooled connection whose server answers early (a 413
/// before reading the body) and resets: the POST left in part, so it is
/// never sent again on another connection; the client gets the early
/// answer when it could be read, else the gateway's 502.
#[tokio::test]
async fn a_post_cut_off_mid_body_is_never_sent_twice() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let posts = Arc::new(Mutex::new(0usize));
    let seen = Arc::clone(&posts);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some((head_len, path, body_len)) = read_head(&mut stream, &mut buf).await
                    else {
                        return;
                    };
                    if body_len > 1 << 20 {
                        // The early answer, then a reset: the body is
                        // never read.
                        *seen.lock().unwrap() += 1;
                        let answer = json_answer(
                            "413 Payload Too Large",
                            "Connection: close\r\n",
                            r#"{"code":9499,"msg":"too large"}"#,
                        );
                        let _ = stream.write_all(answer.as_bytes()).await;
                        reset(stream);
                        return;
                    }
                    if read_to(&mut stream, &mut buf, head_len + body_len)
                        .await
                        .is_none()
                    {
                        return;
                    }
                    buf.drain(..head_len + body_len);
                    let body = if path.contains("tenant_access_token") {
                        TOKEN_ANSWER
                    } else {
                        r#"{"code":0,"msg":"success","data":{}}"#
                    };
                    let answer = json_answer("200 OK", "", body);
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw =
        start_gateway(&GatewayConfig::new(&format!("http://{upstream}")).max_body_bytes(32 << 20))
            .await;
    let client = http_client();
    let auth = format!("Bearer {CLIENT_KEY}");
    // A first call leaves a connection in the gateway's pool.
    let a = call(
        &client,
        gw.addr(),
        http::Method::GET,
        "/open-apis/drive/v1/files/f/meta",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    // 20 MB: more than loopback's socket buffers take, so the gateway is
    // still writing when the reset comes.
    let big = "x".repeat(20 << 20);
    let a = call(
        &client,
        gw.addr(),
        http::Method::POST,
        "/open-apis/im/v1/files",
        &[
            ("authorization", &auth),
            ("content-type", "application/octet-stream"),
        ],
        &big,
    )
    .await;
    assert!(
        a.status == StatusCode::PAYLOAD_TOO_LARGE || a.status == StatusCode::BAD_GATEWAY,
        "{} {:?}",
        a.status,
        a.text()
    );
    if a.status == StatusCode::BAD_GATEWAY {
        assert_eq!(a.header("x-gateway-error"), Some("upstream-unavailable"));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        *posts.lock().unwrap(),
        1,
        "the POST reached the server once"
    );
    gw.shutdown();
    gw.wait().await;
}

/// What belongs to the gateway's answer is the gateway's: an HTTP/1.0
/// upstream does not make the client's answer HTTP/1.0, an upstream
/// `X-Gateway-Error` is dropped (it would pose as the gateway's verdict),
/// the caller's `X-Request-Id` comes back, not the upstream's; and the
/// caller's `Expect: 100-continue`, already answered, is not forwarded.
#[tokio::test]
async fn the_gateways_own_headers_and_version_are_not_the_upstreams() {
    let answer = b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nX-Gateway-Error: rate-limited\r\nX-Request-Id: upstream-id\r\nX-Tt-Logid: 2024feishu\r\nContent-Length: 2\r\n\r\nok".to_vec();
    let (upstream, seen) = scripted_upstream(vec![answer]).await;
    let gw = gateway_in_front_of(upstream).await;
    let mut tx = client_connection(gw.addr()).await;
    let req = to_gateway(Request::post("/open-apis/drive/v1/files/f/copy"))
        .header("x-request-id", "caller-1")
        .header("expect", "100-continue")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_11);
    assert!(resp.headers().get("x-gateway-error").is_none());
    let ids: Vec<_> = resp.headers().get_all("x-request-id").iter().collect();
    assert_eq!(ids, ["caller-1"]);
    assert_eq!(
        resp.headers()["x-tt-logid"],
        "2024feishu",
        "Feishu's own id passes"
    );
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    assert!(
        !heads[0].to_ascii_lowercase().contains("expect:"),
        "{}",
        heads[0]
    );
    gw.shutdown();
    gw.wait().await;
}

/// A streamed answer (a download) whose upstream stalls after part of its
/// body: past `timeouts.upstream_idle` the exchange ends, the client's
/// body ends in an error instead of hanging, it is counted as
/// `kind="idle_timeout"`, and the request counts as in flight until then.
#[tokio::test]
async fn a_streamed_answer_that_stalls_ends_after_the_idle_limit() {
    let answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n0123456789".to_vec();
    let (upstream, _) = scripted_upstream(vec![answer]).await;
    let gw = start_gateway(
        &GatewayConfig::new(&format!("http://{upstream}"))
            .upstream_idle(std::time::Duration::from_millis(300)),
    )
    .await;
    let mut tx = client_connection(gw.addr()).await;
    let req = to_gateway(Request::get("/open-apis/drive/v1/files/f/download"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let client = http_client();
    let in_flight = |text: &str| metric_value(text, "feishu_gateway_in_flight_requests");
    let during = metrics_of(&client, &gw).await;
    assert_eq!(in_flight(&during), Some(1.0), "the download is in flight");
    let started = std::time::Instant::now();
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        resp.into_body().collect(),
    )
    .await
    .expect("the stalled body ends, it does not hang");
    assert!(
        body.is_err(),
        "the client sees the answer cut, not complete"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    let after = metrics_of(&client, &gw).await;
    assert_eq!(in_flight(&after), Some(0.0));
    let series = after
        .lines()
        .find(|l| {
            l.starts_with("feishu_gateway_upstream_errors_total{")
                && l.contains("kind=\"idle_timeout\"")
        })
        .unwrap_or_else(|| panic!("no idle_timeout series:\n{after}"));
    assert!(series.ends_with(" 1"), "{series}");
    gw.shutdown();
    gw.wait().await;
}

/// Answers no client should ever see: each becomes the gateway's own 502
/// in Feishu's shape (never 504, never the broken bytes), and the next
/// request on the same client connection gets its own, healthy answer.
#[tokio::test]
async fn broken_answers_become_a_502_and_the_connection_goes_on() {
    let ok = json_answer("200 OK", "", r#"{"code":0,"msg":"success"}"#).into_bytes();
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "more header lines than any server sends",
            format!("HTTP/1.1 200 OK\r\n{many_headers}Content-Length: 2\r\n\r\n{{}}").into_bytes(),
        ),
        (
            "a NUL in a header value",
            b"HTTP/1.1 200 OK\r\nX-Bad: a\0b\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
        ),
        (
            "differing Content-Lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
        ),
        (
            "a JSON body cut short by a close",
            [
                CLOSE,
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"code\":0",
            ]
            .concat(),
        ),
        ("not HTTP at all", b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
        (
            "a header folded onto the next line (obs-fold)",
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Folded: first\r\n second\r\nContent-Length: 2\r\n\r\n{}"
                .to_vec(),
        ),
        (
            "a 100 KB header line",
            format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\n{{}}",
                "a".repeat(100 << 10)
            )
            .into_bytes(),
        ),
        (
            "a chunk size without digits",
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "an empty chunk-size line",
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\r\n{}\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "a chunk size past 64 bits",
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1FFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "a close before any byte of the head",
            [CLOSE, b""].concat(),
        ),
        (
            "a protocol switch nobody asked for",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                .to_vec(),
        ),
    ];
    for (what, broken) in cases {
        let (upstream, _) = scripted_upstream(vec![broken, ok.clone()]).await;
        // Without retries by code: a GET cut short would be sent again
        // (tests/retries.rs), and this test is about what the client sees.
        let gw =
            start_gateway(&GatewayConfig::new(&format!("http://{upstream}")).without_retries())
                .await;
        let answers = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            two_on_one_connection(gw.addr()),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in time"));
        assert_eq!(
            answers[0].0,
            StatusCode::BAD_GATEWAY,
            "{what}: {:?}",
            answers[0].1
        );
        let body: serde_json::Value = serde_json::from_slice(&answers[0].1).unwrap();
        assert_eq!(body["code"], 99990502, "{what}");
        assert_eq!(answers[1].0, StatusCode::OK, "{what}: the next request");
        assert_eq!(
            answers[1].1,
            Bytes::from_static(br#"{"code":0,"msg":"success"}"#)
        );
        gw.shutdown();
        gw.wait().await;
    }
}

/// A JSON answer far larger than the gateway buffers (10 MB) streams
/// through byte for byte; its `code` is read from the first bytes.
#[tokio::test]
async fn a_ten_megabyte_json_answer_streams_through_unchanged() {
    let filler = "x".repeat(10 << 20);
    let body = format!(r#"{{"code":0,"msg":"success","data":{{"blob":"{filler}"}}}}"#);
    let answer = json_answer("200 OK", "", &body).into_bytes();
    let (upstream, _) = scripted_upstream(vec![answer]).await;
    let gw = gateway_in_front_of(upstream).await;
    let answers = two_on_one_connection(gw.addr()).await;
    assert_eq!(answers[0].0, StatusCode::OK);
    assert_eq!(answers[0].1.len(), body.len());
    assert!(answers[0].1 == body.as_bytes(), "the bytes are Feishu's");
    let metrics = metrics_of(&http_client(), &gw).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("feishu_gateway_requests_total{") && l.contains("code=\"0\"")),
        "{metrics}"
    );
    gw.shutdown();
    gw.wait().await;
}

/// Informational answers before the real one (`100 Continue` nobody asked
/// for, `103 Early Hints` with `Link` headers), a thousand of each: they are
/// skipped, the final answer passes byte for byte without their headers,
/// and the connection goes on.
#[tokio::test]
async fn a_flood_of_informational_answers_is_skipped_for_the_final_one() {
    let mut flood = Vec::new();
    for _ in 0..1000 {
        flood.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        flood.extend_from_slice(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        );
    }
    flood.extend_from_slice(
        json_answer("200 OK", "", r#"{"code":0,"msg":"after the flood"}"#).as_bytes(),
    );
    let ok = json_answer("200 OK", "", r#"{"code":0,"msg":"second"}"#).into_bytes();
    let (upstream, seen) = scripted_upstream(vec![flood, ok]).await;
    let gw = gateway_in_front_of(upstream).await;
    let mut tx = client_connection(gw.addr()).await;
    let req = to_gateway(Request::get("/open-apis/drive/v1/files/f/download"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("link").is_none(), "no 103 header leaks");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, r#"{"code":0,"msg":"after the flood"}"#);
    let answers = two_on_one_connection(gw.addr()).await;
    assert_eq!(
        answers[0],
        (
            StatusCode::OK,
            Bytes::from_static(br#"{"code":0,"msg":"second"}"#)
        )
    );
    assert_eq!(seen.lock().unwrap().len(), 3);
    gw.shutdown();
    gw.wait().await;
}

/// An upstream that sends `100 Continue` forever never gets to hold the
/// client: the exchange ends at `timeouts.upstream` with the gateway's 503.
#[tokio::test]
async fn an_endless_informational_flood_ends_at_the_upstream_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some((head_len, path, body_len)) = read_head(&mut stream, &mut buf).await
                else {
                    return;
                };
                let _ = read_to(&mut stream, &mut buf, head_len + body_len).await;
                if path.contains("tenant_access_token") {
                    let _ = stream
                        .write_all(
                            json_answer("200 OK", "Connection: close\r\n", TOKEN_ANSWER).as_bytes(),
                        )
                        .await;
                    return;
                }
                // 100 informational answers a millisecond, until the
                // gateway hangs up.
                let burst = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(100);
                while stream.write_all(&burst).await.is_ok() {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            });
        }
    });
    let gw = start_gateway(
        &GatewayConfig::new(&format!("http://{upstream}"))
            .upstream_timeout(std::time::Duration::from_millis(800)),
    )
    .await;
    let started = std::time::Instant::now();
    let a = call(
        &http_client(),
        gw.addr(),
        http::Method::GET,
        "/open-apis/drive/v1/files/f/download",
        &[("authorization", &format!("Bearer {CLIENT_KEY}"))],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", a.text());
    assert_eq!(a.code(), 99990503);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    gw.shutdown();
    gw.wait().await;
}

/// A streamed answer (not JSON: a download) that breaks after its head went
/// to the client — a reset mid-body, a bad chunk size — reaches the client
/// as an aborted body, never as a clean short answer; the failure is
/// counted in `upstream_errors_total`; the next client connection is served.
#[tokio::test]
async fn a_streamed_answer_broken_mid_body_is_aborted_and_counted() {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a reset mid-body (Content-Length)",
            [
                RESET,
                format!("{head}Content-Length: 100000\r\n\r\n{}", "x".repeat(1000)).as_bytes(),
            ]
            .concat(),
            "reset",
        ),
        (
            "a reset mid-body (chunked)",
            [
                RESET,
                format!("{head}Transfer-Encoding: chunked\r\n\r\n3e8\r\n{}\r\n", "x".repeat(1000))
                    .as_bytes(),
            ]
            .concat(),
            "reset",
        ),
        (
            "a chunk size without digits mid-body",
            format!("{head}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n")
                .into_bytes(),
            "protocol",
        ),
        (
            "a chunk size past 64 bits mid-body",
            format!("{head}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1FFFFFFFFFFFFFFFF\r\nworld\r\n0\r\n\r\n")
                .into_bytes(),
            "protocol",
        ),
    ];
    let ok =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 2\r\n\r\nok"
            .to_vec();
    for (what, broken, kind) in cases {
        let (upstream, _) = scripted_upstream(vec![broken, ok.clone()]).await;
        let gw = gateway_in_front_of(upstream).await;
        let mut tx = client_connection(gw.addr()).await;
        let req = to_gateway(Request::get("/open-apis/drive/v1/files/f/download"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{what}: the head went out");
        let body = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            resp.into_body().collect(),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: the body ends"));
        assert!(
            body.is_err(),
            "{what}: the client sees an aborted body, not a short one: {:?}",
            body.map(|b| b.to_bytes().len())
        );
        let client = http_client();
        let metrics = metrics_of(&client, &gw).await;
        let series = format!(
            "feishu_gateway_upstream_errors_total{{app=\"ops-bot\",kind=\"{kind}\",route=\"{DOWNLOAD_ROUTE}\"}}"
        );
        assert_eq!(
            metric_value(&metrics, &series),
            Some(1.0),
            "{what}:\n{metrics}"
        );
        // The gateway serves the next connection.
        let answers = two_on_one_connection(gw.addr()).await;
        assert_eq!(
            answers[0],
            (StatusCode::OK, Bytes::from_static(b"ok")),
            "{what}"
        );
        gw.shutdown();
        gw.wait().await;
    }
}

/// Feishu's throttle code in an answer written by a raw socket (not our
/// simulator): 99991400 with HTTP 400 and `x-ogw-ratelimit-reset: 2`
/// passes through unchanged, and the next call on that route is answered
/// by the gateway itself, sending nothing upstream.
#[tokio::test]
async fn a_throttle_code_with_http_400_from_a_raw_upstream_pauses_the_route() {
    let body = r#"{"code":99991400,"msg":"request trigger frequency limit"}"#;
    let throttled = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nx-ogw-ratelimit-reset: 2\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (upstream, seen) = scripted_upstream(vec![throttled.into_bytes()]).await;
    let gw = gateway_in_front_of(upstream).await;
    let client = http_client();
    let auth = format!("Bearer {CLIENT_KEY}");
    let headers = [("authorization", auth.as_str())];
    let get = || {
        call(
            &client,
            gw.addr(),
            http::Method::GET,
            "/open-apis/im/v1/chats/oc_1",
            &headers,
            "",
        )
    };
    let a = get().await;
    assert_eq!((a.status.as_u16(), a.code()), (400, 99991400));
    assert_eq!(
        a.header("x-gateway-error"),
        None,
        "Feishu's answer, unchanged"
    );
    let b = get().await;
    assert_eq!(b.status.as_u16(), 429);
    assert_eq!(b.header("x-gateway-error"), Some("rate-limited"));
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "nothing sent during the pause"
    );
    gw.shutdown();
    gw.wait().await;
}
