//! The upstream path against HAProxy, a second server nobody here wrote: over
//! TLS in front of the simulated Feishu, offering `h2` and `http/1.1` by ALPN
//! (or `http/1.1` alone); and as a plain HTTP/1.1 origin, in front of the
//! simulated Feishu and answering some paths itself (`http-request return`,
//! and its own 503 when no server is up: a real edge answer without a
//! Feishu code, which the gateway retries for a GET).
//!
//! Needs `haproxy` (Debian's package, installed by `.ci/run` through
//! `deploy/ci-install-haproxy.sh`). Without it the tests are skipped, except
//! under `CI=true`, where they fail.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::*;

/// An HAProxy process on a loopback port, proxying to `origin`.
struct Haproxy {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    ca: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// The binary, or `None` to skip (but never under CI).
fn haproxy_or_skip() -> Option<PathBuf> {
    let found = haproxy_binary();
    if found.is_none() {
        skipped("haproxy", "bash deploy/ci-install-haproxy.sh");
    }
    found
}

/// How HAProxy listens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listen {
    /// TLS, ALPN `h2,http/1.1`.
    TlsH2,
    /// TLS, ALPN `http/1.1`.
    TlsH1,
    /// Plain HTTP/1.1.
    Plain,
}

impl Haproxy {
    /// Starts HAProxy (one process, in the foreground, every path in a temp
    /// dir) with a certificate for `localhost` from a test CA when it
    /// listens with TLS. It proxies to `origin` over HTTP/1.1, but answers
    /// `/open-apis/haproxy/…` itself, and `/open-apis/down/…` with its own
    /// 503 (a backend whose only server is down).
    fn start(binary: &Path, origin: SocketAddr, listen: Listen) -> Haproxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new("haproxy test CA").expect("CA");
        let cert = ca.issue_localhost("localhost").expect("certificate");
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca.cert_pem()).unwrap();
        // HAProxy takes the certificate and its key in one file.
        std::fs::write(
            path("bundle.pem"),
            format!("{}{}", cert.cert_pem, cert.key_pem),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        let tls = match listen {
            Listen::TlsH2 => format!(" ssl crt {d}/bundle.pem alpn h2,http/1.1"),
            Listen::TlsH1 => format!(" ssl crt {d}/bundle.pem alpn http/1.1"),
            Listen::Plain => String::new(),
        };
        // The access line (stderr, kept in a file) names the method, the
        // path, the protocol the gateway spoke and the status answered.
        let conf = format!(
            r#"
global
    log stderr format raw local0
    maxconn 256
defaults
    mode http
    log global
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend gateway_side
    bind 127.0.0.1:{port}{tls}
    log-format "%HM %HPO %HV %ST"
    http-request return status 200 content-type "application/json" string "{{\"code\":0,\"msg\":\"answered by haproxy\"}}" if {{ path_beg /open-apis/haproxy/ }}
    use_backend down if {{ path_beg /open-apis/down/ }}
    default_backend origin
backend origin
    server sim {origin}
backend down
    server gone 127.0.0.1:1 disabled
"#
        );
        std::fs::write(path("haproxy.cfg"), conf).unwrap();
        let log = std::fs::File::create(path("haproxy.log")).unwrap();
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(path("haproxy.cfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("haproxy starts");
        let ca = path("ca.pem");
        let haproxy = Haproxy {
            child,
            dir,
            port,
            ca,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen: {}",
                haproxy.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        haproxy
    }

    fn base_url(&self, listen: Listen) -> String {
        match listen {
            Listen::Plain => format!("http://127.0.0.1:{}", self.port),
            _ => format!("https://localhost:{}", self.port),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// The access lines for `path`, once HAProxy has written them.
    async fn lines_for(&self, path: &str) -> Vec<String> {
        for _ in 0..100 {
            let lines: Vec<String> = self
                .log()
                .lines()
                .filter(|l| l.contains(path))
                .map(str::to_string)
                .collect();
            if !lines.is_empty() {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Vec::new()
    }
}

/// The gateway in front of HAProxy in front of the simulated Feishu.
async fn through_haproxy(binary: &Path, listen: Listen) -> (Harness, Haproxy) {
    let sim = SimFeishu::start(sim_config()).await.expect("sim starts");
    let origin: SocketAddr = sim
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .expect("the sim listens on an address");
    let haproxy = Haproxy::start(binary, origin, listen);
    let ca = haproxy.ca.clone();
    let h = Harness::behind(sim, &haproxy.base_url(listen), |c| {
        c.upstream_ca_file(&ca)
            .retry_backoff(Duration::from_millis(5), Duration::from_millis(10))
    })
    .await;
    (h, haproxy)
}

/// Proxied calls, the token call, a call with a query and an answer of
/// HAProxy's own reach the gateway's client through HAProxy, which logs the
/// protocol the gateway chose by ALPN.
async fn calls_pass(listen: Listen) {
    let Some(binary) = haproxy_or_skip() else {
        return;
    };
    let (h, haproxy) = through_haproxy(&binary, listen).await;
    let auth = format!("Bearer {CLIENT_KEY}");
    for chat in ["oc_1", "oc_2"] {
        let a = h.put(chat).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{:?}\nhaproxy: {}",
            a.body,
            haproxy.log()
        );
        assert_eq!(a.code(), 0, "{:?}", a.body);
        assert!(a.header("x-tt-logid").is_some(), "Feishu's headers pass");
    }
    let a = h
        .call(
            Method::GET,
            "/open-apis/im/v1/chats/oc_7?user_id_type=open_id",
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::OK, 0), "{:?}", a.body);
    assert_eq!(a.json()["data"]["query"], "user_id_type=open_id");
    // HAProxy's own answer, byte for byte.
    let a = h
        .call(
            Method::GET,
            "/open-apis/haproxy/v1/ping",
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.text(), r#"{"code":0,"msg":"answered by haproxy"}"#);

    let protocol = match listen {
        Listen::TlsH2 => "HTTP/2.0",
        Listen::TlsH1 | Listen::Plain => "HTTP/1.1",
    };
    let puts = haproxy.lines_for("/top_notice/put_top_notice").await;
    assert_eq!(puts.len(), 2, "{}", haproxy.log());
    for line in &puts {
        assert!(line.ends_with(&format!("{protocol} 200")), "{line}");
    }
    let tokens = haproxy.lines_for("tenant_access_token").await;
    assert!(!tokens.is_empty(), "{}", haproxy.log());
    let sent = h.sim.requests();
    assert_eq!(sent.len(), 3, "both puts and the GET reach the origin");
    assert_eq!(sent[2].query.as_deref(), Some("user_id_type=open_id"));
    h.stop().await;
}

#[tokio::test]
async fn haproxy_over_tls_with_h2_by_alpn_takes_the_gateways_requests() {
    calls_pass(Listen::TlsH2).await;
}

#[tokio::test]
async fn haproxy_over_tls_with_http1_only_takes_the_gateways_requests() {
    calls_pass(Listen::TlsH1).await;
}

#[tokio::test]
async fn haproxy_as_a_plain_http1_origin_takes_the_gateways_requests() {
    calls_pass(Listen::Plain).await;
}

/// HAProxy's own 503 (no server up) is an edge answer without a Feishu
/// code: a GET is retried (and fails again, so the client gets HAProxy's
/// 503 as it was), a POST without an idempotency key is not.
#[tokio::test]
async fn haproxys_own_503_is_retried_for_a_get_only() {
    let Some(binary) = haproxy_or_skip() else {
        return;
    };
    let (h, haproxy) = through_haproxy(&binary, Listen::TlsH2).await;
    let auth = format!("Bearer {CLIENT_KEY}");
    let a = h
        .call(
            Method::GET,
            "/open-apis/down/v1/x",
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", a.text());
    assert!(a.header("x-gateway-error").is_none(), "HAProxy's answer");
    assert!(a.text().contains("503"), "{}", a.text());
    let a = h
        .call(
            Method::POST,
            "/open-apis/down/v1/x",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            "{}",
        )
        .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let lines = haproxy.lines_for("/open-apis/down/v1/x").await;
    let gets = lines.iter().filter(|l| l.starts_with("GET ")).count();
    let posts = lines.iter().filter(|l| l.starts_with("POST ")).count();
    assert_eq!((gets, posts), (3, 1), "{}", haproxy.log());
    let m = h.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "feishu_gateway_retries_total{app=\"ops-bot\",reason=\"edge_503\",route=\"other\"}"
        ),
        Some(2.0),
        "{m}"
    );
    h.stop().await;
}
