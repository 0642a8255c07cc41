//! Connection storms, through real sockets: a burst of connects is taken at
//! once (listen backlog, an accept loop that only admits and hands on), a
//! request beside the burst is served at once, and beyond `max_connections`
//! a listener closes new connections cleanly and counts them.
//!
//! The timing bounds are the issue's (2,000 connects within 1 s, a request
//! beside them in < 100 ms) loosened for a shared CI machine; what fails
//! them for certain is a dropped SYN, which costs a client a 1 s
//! retransmission: every connect must take less than that. The figures are
//! printed (`cargo test --test connections -- --nocapture`).

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Connects in the burst.
const STORM: usize = 2000;

/// put_top_notice on a new connection with blocking I/O: the answer's
/// status line, and how long it took from the connect on.
fn put_blocking(addr: std::net::SocketAddr) -> (String, Duration) {
    use std::io::{Read, Write};
    let started = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let request = format!(
        "POST {PUT_PATH} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{PUT_BODY}",
        PUT_BODY.len()
    );
    s.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read");
    let took = started.elapsed();
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    (status, took)
}

/// `feishu_gateway_open_connections{listener}` now.
async fn open_connections(h: &Harness, listener: &str) -> f64 {
    let m = h.metrics().await;
    metric_value(
        &m,
        &format!("feishu_gateway_open_connections{{listener=\"{listener}\"}}"),
    )
    .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_2000_connects_is_taken_at_once_and_a_request_beside_it_is_served() {
    // The default config: listen_backlog 4096 (capped by the kernel),
    // max_connections 4096.
    let h = start(sim_config()).await;
    h.ready().await;
    // Warm: the token is fetched, the upstream connection open.
    assert_eq!(h.put("oc_1").await.code(), 0);
    let addr = h.gw.addr();

    let started = Instant::now();
    let mut storm = tokio::task::JoinSet::new();
    for _ in 0..STORM {
        storm.spawn(async move {
            let t = Instant::now();
            let s = TcpStream::connect(addr).await;
            (t.elapsed(), s)
        });
    }
    // Beside the burst, on a connection of its own, from a thread of its
    // own: the test's runtime is busy with the burst's 2,000 tasks, and a
    // request made on it would measure that queue, not the gateway.
    let beside = std::thread::spawn(move || put_blocking(addr));
    let (status, beside_took) = beside.join().expect("the request beside");
    let mut held = Vec::with_capacity(STORM);
    let mut failed = Vec::new();
    let mut slowest = Duration::ZERO;
    while let Some(joined) = storm.join_next().await {
        let (took, s) = joined.expect("connect task");
        slowest = slowest.max(took);
        match s {
            Ok(s) => held.push(s),
            Err(e) => failed.push(e.to_string()),
        }
    }
    let burst = started.elapsed();
    // The gateway accepted them all: a connect the kernel completed while
    // the accept queue was full is established for the client, yet reaches
    // the gateway only after a retransmitted SYN-ACK (1 s, 3 s, ...), or
    // never.
    let deadline = started + Duration::from_secs(3);
    while open_connections(&h, "main").await < STORM as f64 {
        assert!(
            Instant::now() < deadline,
            "the gateway had not accepted the burst after 3 s: handshakes were dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted = started.elapsed();
    println!(
        "connection storm: {} of {STORM} connects in {burst:?} (slowest {slowest:?}), all accepted by the gateway after {accepted:?}; a request beside them: {beside_took:?}",
        held.len()
    );

    assert!(
        failed.is_empty(),
        "{} connects failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
    assert!(
        slowest < Duration::from_millis(900),
        "a connect took {slowest:?}: a SYN was dropped and retransmitted"
    );
    assert!(
        burst < Duration::from_secs(3),
        "the burst took {burst:?} (the goal is < 1 s)"
    );
    assert!(
        beside_took < Duration::from_millis(750),
        "the request beside the burst took {beside_took:?} (the goal is < 100 ms)"
    );
    drop(held);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_connections_are_closed_at_once_and_counted() {
    let h = start_with(sim_config(), |c| {
        c.max_connections(50).admin_max_connections(8)
    })
    .await;
    h.ready().await;
    let addr = h.gw.addr();
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_connections(&h, "main").await < 50.0 {
        assert!(Instant::now() < deadline, "50 connections not open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Ten more: each is accepted by the kernel, then closed by the gateway
    // before it reads a byte: the client sees the end of the stream, no
    // answer.
    for _ in 0..10 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET {PUT_PATH} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_KEY}\r\n\r\n"
        );
        let _ = s.write_all(request.as_bytes()).await;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("closed at once, not left hanging");
        assert!(
            read.is_err() || buf.is_empty(),
            "no answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
    let m = h.metrics().await;
    let value = |series: &str| metric_value(&m, series);
    assert_eq!(
        value(r#"feishu_gateway_connections_rejected_total{listener="main"}"#),
        Some(10.0),
        "{m}"
    );
    assert_eq!(
        value(r#"feishu_gateway_open_connections{listener="main"}"#),
        Some(50.0)
    );
    assert_eq!(
        value(r#"feishu_gateway_connections_rejected_total{listener="admin"}"#),
        Some(0.0)
    );
    // The admin listener has its own limit: still answering.
    assert_eq!(h.admin("/healthz").await.status, http::StatusCode::OK);

    // Places come back as connections close.
    idle.truncate(40);
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_connections(&h, "main").await > 40.0 {
        assert!(Instant::now() < deadline, "closed connections not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = put_at(&http_client(), addr, PUT_PATH, &[]).await;
    assert_eq!(a.code(), 0);
    drop(idle);
    h.stop().await;
}
