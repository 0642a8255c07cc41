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

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::{Method, StatusCode};
use support::proxy::{binary_or_skip, origin_of, Prepared, Proxy};
use support::*;

fn haproxy_or_skip() -> Option<std::path::PathBuf> {
    binary_or_skip(
        "haproxy",
        &[
            "/usr/sbin/haproxy",
            "/usr/bin/haproxy",
            "/usr/local/sbin/haproxy",
        ],
        "bash deploy/ci-install-haproxy.sh",
    )
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

/// Starts HAProxy (one process, in the foreground, every path in a temp
/// dir) with a certificate for `localhost` from a test CA when it listens
/// with TLS. It proxies to the simulated Feishu over HTTP/1.1, but answers
/// `/open-apis/haproxy/…` itself, and `/open-apis/down/…` with its own 503
/// (a backend whose only server is down).
fn start_haproxy(binary: &Path, sim: &SimFeishu, listen: Listen) -> Proxy {
    let p = Prepared::new("haproxy test CA");
    // HAProxy takes the certificate and its key in one file.
    std::fs::write(
        p.path("bundle.pem"),
        format!("{}{}", p.cert.cert_pem, p.cert.key_pem),
    )
    .unwrap();
    let (d, port, origin) = (p.dir.path().display(), p.port, origin_of(sim));
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
    std::fs::write(p.path("haproxy.cfg"), conf).unwrap();
    let mut cmd = Command::new(binary);
    cmd.arg("-db").arg("-f").arg(p.path("haproxy.cfg"));
    Proxy::spawn(p, cmd, "haproxy.log", "haproxy.log", "haproxy.log")
}

/// The gateway in front of HAProxy in front of the simulated Feishu.
async fn through_haproxy(binary: &Path, listen: Listen) -> (Harness, Proxy) {
    let sim = SimFeishu::start(sim_config()).await.expect("sim starts");
    let haproxy = start_haproxy(binary, &sim, listen);
    let ca = haproxy.ca.clone();
    let h = Harness::behind(sim, &haproxy.base_url(listen != Listen::Plain), |c| {
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
            haproxy.access_log()
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

    haproxy
        .assert_puts_over(match listen {
            Listen::TlsH2 => "HTTP/2.0",
            Listen::TlsH1 | Listen::Plain => "HTTP/1.1",
        })
        .await;
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
    assert_eq!((gets, posts), (3, 1), "{}", haproxy.access_log());
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
