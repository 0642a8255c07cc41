//! Raw-socket upstreams: a "Feishu" that answers the token call properly
//! and every other request with bytes a test scripts, for the tests of what
//! the gateway makes of framing a real server might send and a hostile one
//! would (`tests/hostile_upstream.rs`), and of retries (`tests/retries.rs`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The token call's answer.
pub const TOKEN_ANSWER: &str =
    r#"{"code":0,"msg":"ok","tenant_access_token":"t-hostile-upstream","expire":7200}"#;

/// Put before a scripted answer: the upstream closes the connection after
/// writing it.
pub const CLOSE: &[u8] = b"\0CLOSE\0";

/// Put before a scripted answer: the upstream writes it, then resets the
/// connection (a close with `SO_LINGER` 0 sends RST, and unread or unsent
/// bytes are dropped).
pub const RESET: &[u8] = b"\0RESET\0";

/// A raw-socket upstream: the token call gets a proper answer; the n-th
/// other request gets `answers[n]` verbatim (the last one repeats). The
/// heads of those requests are kept, in order.
pub async fn scripted_upstream(answers: Vec<Vec<u8>>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    serve_scripted_on(listener, answers, Arc::clone(&seen));
    (addr, seen)
}

/// Serves `answers` on `listener` as [`scripted_upstream`] does, logging
/// the request heads into `seen`.
pub fn serve_scripted_on(
    listener: TcpListener,
    answers: Vec<Vec<u8>>,
    seen: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    let answers = Arc::new(answers);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve_scripted(
                stream,
                Arc::clone(&answers),
                Arc::clone(&seen),
            ));
        }
    })
}

/// Reads one request from `stream` (more bytes into `buf` as needed): its
/// head's length, path and `Content-Length`. `None` once the peer is gone.
pub async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(usize, String, usize)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let len = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0usize);
            return Some((n, req.path.unwrap_or("").to_string(), len));
        }
        read_more(stream, buf).await?;
    }
}

/// Reads until `buf` holds `len` bytes. `None` once the peer is gone.
pub async fn read_to(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> Option<()> {
    while buf.len() < len {
        read_more(stream, buf).await?;
    }
    Some(())
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 65536];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// A JSON answer with `body`.
pub fn json_answer(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// Closes `stream` with a reset: `SO_LINGER` 0 (tokio deprecates
/// `set_linger` for the blocking non-zero case only).
pub fn reset(stream: TcpStream) {
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn serve_scripted(
    mut stream: TcpStream,
    answers: Arc<Vec<Vec<u8>>>,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    loop {
        // One request: its head, then Content-Length bytes of body.
        let Some((head_len, path, body_len)) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        if read_to(&mut stream, &mut buf, head_len + body_len)
            .await
            .is_none()
        {
            return;
        }
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        buf.drain(..head_len + body_len);
        let answer = if path.contains("tenant_access_token") {
            json_answer("200 OK", "", TOKEN_ANSWER).into_bytes()
        } else {
            let n = {
                let mut seen = seen.lock().unwrap();
                seen.push(head);
                seen.len() - 1
            };
            answers[n.min(answers.len() - 1)].clone()
        };
        // An answer marked CLOSE is written, then the connection closed; one
        // marked RESET is written, then the connection reset.
        if let Some(rest) = answer.strip_prefix(RESET) {
            let _ = stream.write_all(rest).await;
            let _ = stream.flush().await;
            // Time for the bytes to be read before the reset, which would
            // drop them from the peer's receive buffer.
            tokio::time::sleep(Duration::from_millis(50)).await;
            reset(stream);
            return;
        }
        let (answer, close) = match answer.strip_prefix(CLOSE) {
            Some(rest) => (rest.to_vec(), true),
            None => (answer, false),
        };
        if stream.write_all(&answer).await.is_err() || close {
            return;
        }
    }
}
