//! The HTTP/1.1 client against scripted servers on real sockets: what goes
//! on the wire, each body framing, interim answers, and when a connection
//! may be reused.

use std::time::Duration;

use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::*;
use crate::upstream::pool::tests::pool;
use crate::upstream::pool::{Home, Pool};
use crate::upstream::Upstream;

/// A server for one connection: reads one request (head and
/// `Content-Length` body), sends it back through the returned receiver,
/// writes `answer` in its pieces (20 ms apart), then closes the connection
/// if `close`, else keeps it open (and reads on, so a reused connection
/// would be noticed).
async fn scripted(
    answer: Vec<&'static [u8]>,
    close: bool,
) -> (Box<Conn>, oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if got.len() >= end + 4 + len {
                    break;
                }
            }
            assert!(n > 0, "request cut short");
        }
        let _ = tx.send(got);
        for piece in answer {
            s.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !close {
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    (
        Conn::new(TokioIo::new(MaybeHttpsStream::Http(TokioIo::new(tcp)))),
        rx,
    )
}

fn home(pool: &Pool) -> Home {
    pool.home(&Upstream {
        scheme: http::uri::Scheme::HTTP,
        authority: "upstream.test".parse().unwrap(),
    })
}

fn get() -> Request<Bytes> {
    Request::builder()
        .uri("/open-apis/x")
        .body(Bytes::new())
        .unwrap()
}

/// Sends `req` on a scripted connection; the answer's status, its body
/// (or the body's error) and how many connections went back to the pool.
async fn exchange(
    req: Request<Bytes>,
    answer: Vec<&'static [u8]>,
    close: bool,
) -> (StatusCode, Result<Bytes, String>, usize) {
    let pool = pool();
    let (conn, _) = scripted(answer, close).await;
    let resp = conn.send(&req, home(&pool)).await.unwrap();
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    (status, body, pool.inner.idle_count())
}

#[tokio::test]
async fn the_request_goes_out_with_its_headers_and_a_length() {
    let pool = pool();
    let (conn, rx) = scripted(
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"],
        false,
    )
    .await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/open-apis/im?x=1")
        .header("content-type", "application/json; charset=utf-8")
        .body(Bytes::from_static(br#"{"a":1}"#))
        .unwrap();
    let resp = conn.send(&req, home(&pool)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        String::from_utf8(rx.await.unwrap()).unwrap(),
        "POST /open-apis/im?x=1 HTTP/1.1\r\nhost: upstream.test\r\n\
         content-type: application/json; charset=utf-8\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
    );
}

#[tokio::test]
async fn a_large_body_arrives_whole() {
    let pool = pool();
    let (conn, rx) = scripted(vec![b"HTTP/1.1 204 No Content\r\n\r\n"], false).await;
    let big = Bytes::from(vec![b'x'; 3 * COPY_BODY_UP_TO + 7]);
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/big")
        .body(big.clone())
        .unwrap();
    let resp = conn.send(&req, home(&pool)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let got = rx.await.unwrap();
    assert!(got.ends_with(&big), "body cut or changed");
}

#[tokio::test]
async fn a_length_delimited_answer_split_over_reads_is_read_and_the_connection_reused() {
    let (status, body, idle) = exchange(
        get(),
        vec![
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConte",
            b"nt-Length: 26\r\nX-Tt-Logid: abc\r\n\r\n{\"code\":0,",
            b"\"msg\":\"success\"}",
        ],
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap(), r#"{"code":0,"msg":"success"}"#);
    assert_eq!(idle, 1);
}

#[tokio::test]
async fn a_chunked_answer_with_extensions_and_trailers_is_decoded_and_the_connection_reused() {
    let (status, body, idle) = exchange(
        get(),
        vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel",
            b"lo\r\n",
            b"7\r\n, world\r\n0\r\nX-Trailer: t\r\n",
            b"\r\n",
        ],
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap(), "hello, world");
    assert_eq!(idle, 1);
}

#[tokio::test]
async fn a_broken_chunk_is_an_error_and_the_connection_is_dropped() {
    let (_, body, idle) = exchange(
        get(),
        vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n"],
        false,
    )
    .await;
    assert!(body.unwrap_err().contains("CRLF"));
    assert_eq!(idle, 0);
}

#[tokio::test]
async fn an_answer_without_length_runs_to_the_close_and_the_connection_is_not_reused() {
    let (status, body, idle) = exchange(
        get(),
        vec![b"HTTP/1.1 200 OK\r\n\r\npart one, ", b"part two"],
        true,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap(), "part one, part two");
    assert_eq!(idle, 0);
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let (status, body, idle) = exchange(
        get(),
        vec![
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        ],
        false,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body.unwrap(), "ok");
    assert_eq!(idle, 1);
}

#[tokio::test]
async fn head_204_and_304_answers_have_no_body() {
    let mut head = get();
    *head.method_mut() = Method::HEAD;
    let (status, body, idle) = exchange(
        head,
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"],
        false,
    )
    .await;
    assert_eq!((status, body.unwrap().len(), idle), (StatusCode::OK, 0, 1));
    for answer in [
        &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
        &b"HTTP/1.1 304 Not Modified\r\netag: \"1\"\r\n\r\n"[..],
    ] {
        let (_, body, idle) = exchange(get(), vec![answer], false).await;
        assert_eq!((body.unwrap().len(), idle), (0, 1));
    }
}

#[tokio::test]
async fn connections_the_answer_rules_out_are_not_reused() {
    for answer in [
        // The server says so.
        &b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 2\r\n\r\nok"[..],
        // HTTP/1.0.
        &b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
        // More bytes than the answer: the next answer would be out of step.
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"[..],
        // Both framings (RFC 9112 §6.3: chunked wins, then close).
        &b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
    ] {
        let (status, body, idle) = exchange(get(), vec![answer], false).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.unwrap(), "ok");
        assert_eq!(idle, 0, "{}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn broken_heads_are_protocol_errors() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2x\r\n\r\nok"[..],
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..],
        &b"SMTP ready\r\n\r\n"[..],
        &b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"[..],
    ] {
        let pool = pool();
        let (conn, _) = scripted(vec![answer], false).await;
        match conn.send(&get(), home(&pool)).await {
            Err(SendError::Protocol(_)) => {}
            other => panic!(
                "{}: {:?}",
                String::from_utf8_lossy(answer),
                other.map(|r| r.status())
            ),
        }
    }
}

#[tokio::test]
async fn a_close_before_any_answer_byte_is_told_apart_from_one_mid_answer() {
    let pool = pool();
    let (conn, _) = scripted(vec![], true).await;
    assert!(matches!(
        conn.send(&get(), home(&pool)).await,
        Err(SendError::ClosedBeforeAnswer)
    ));
    let (conn, _) = scripted(vec![b"HTTP/1.1 200 OK\r\ncont"], true).await;
    assert!(matches!(
        conn.send(&get(), home(&pool)).await,
        Err(SendError::Io(_))
    ));
    // Cut in the body: the body fails, the connection is not kept.
    let (status, body, idle) = exchange(
        get(),
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"],
        true,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_err());
    assert_eq!(idle, 0);
}

#[test]
fn decimal_lengths() {
    for n in [0u64, 7, 10, 12345, u64::MAX] {
        let mut out = Vec::new();
        push_decimal(&mut out, n);
        assert_eq!(out, n.to_string().into_bytes());
    }
}

#[tokio::test]
async fn an_answer_with_many_headers_keeps_them_all_in_order() {
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..40 {
        head.push_str(&format!("x-h{i}: v{i}\r\nset-cookie: c{i}\r\n"));
    }
    head.push_str("content-length: 2\r\n\r\nok");
    let answer: &'static [u8] = Box::leak(head.into_bytes().into_boxed_slice());
    let pool = pool();
    let (conn, _) = scripted(vec![answer], false).await;
    let resp = conn.send(&get(), home(&pool)).await.unwrap();
    assert_eq!(resp.headers().len(), 81);
    assert_eq!(resp.headers()["x-h39"], "v39");
    let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies.len(), 40);
    assert_eq!(cookies[0], "c0");
    assert_eq!(cookies[39], "c39");
    // Over hyper's limit of 100 fields: refused, not cut.
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..101 {
        head.push_str(&format!("x-h{i}: v\r\n"));
    }
    head.push_str("\r\n");
    let answer: &'static [u8] = Box::leak(head.into_bytes().into_boxed_slice());
    let (conn, _) = scripted(vec![answer], false).await;
    assert!(matches!(
        conn.send(&get(), home(&pool)).await,
        Err(SendError::Protocol(_))
    ));
}

/// An interim answer, then a final head with its body's first bytes.
const HEADS: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\
Content-Type: application/json\r\nX-Tt-Logid: 0123\r\nContent-Length: 11\r\n\r\n{\"code\":0}";

proptest::proptest! {
    #[test]
    fn any_bytes_parse_or_fail_without_panicking(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = parse_head(&mut buf, false);
    }

    #[test]
    fn heads_cut_anywhere_are_partial_until_complete(cut in 0usize..HEADS.len() - 11) {
        let mut buf = BytesMut::from(&HEADS[..cut]);
        proptest::prop_assert!(matches!(parse_head(&mut buf, false), Ok(None)));
        buf.extend_from_slice(&HEADS[cut..]);
        let (parts, framing, reusable) = parse_head(&mut buf, false).unwrap().unwrap();
        proptest::prop_assert_eq!(parts.status, StatusCode::OK);
        proptest::prop_assert_eq!(&parts.headers["x-tt-logid"], "0123");
        proptest::prop_assert_eq!(framing, Framing::Length(11));
        proptest::prop_assert!(reusable);
        proptest::prop_assert_eq!(&buf[..], b"{\"code\":0}");
    }
}
