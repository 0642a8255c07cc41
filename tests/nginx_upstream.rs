//! The upstream path against a server nobody here wrote: nginx over TLS, in
//! front of the simulated Feishu, offering `h2` and `http/1.1` by ALPN (or
//! `http/1.1` alone). The simulator accepts requests a real HTTP/2 server
//! refuses (a `host` header beside `:authority`), so it cannot be the only
//! server the gateway's upstream path meets.
//!
//! Needs `nginx` (Debian's nginx-light, installed by `.ci/run`). Without it
//! the tests are skipped, except under `CI=true`, where they fail.

mod support;

use std::process::Command;

use http::{Method, StatusCode};
use support::proxy::{binary_or_skip, origin_of, Prepared, Proxy};
use support::*;

fn nginx_or_skip() -> Option<std::path::PathBuf> {
    binary_or_skip(
        "nginx",
        &["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"],
        "bash deploy/ci-install-nginx.sh",
    )
}

/// Starts nginx with a certificate for `localhost` from a test CA,
/// proxying everything to the simulated Feishu over HTTP/1.1. `h2`: offer
/// HTTP/2 by ALPN too.
fn start_nginx(binary: &std::path::Path, sim: &SimFeishu, h2: bool) -> Proxy {
    let p = Prepared::new("nginx test CA");
    std::fs::write(p.path("cert.pem"), &p.cert.cert_pem).unwrap();
    std::fs::write(p.path("key.pem"), &p.cert.key_pem).unwrap();
    let (d, port, origin) = (p.dir.path().display(), p.port, origin_of(sim));
    let http2 = if h2 { " http2" } else { "" };
    // One process (no master, no user switch: the tests may run as
    // root), every path in the temp dir. The access line names the
    // protocol the gateway spoke and the status nginx answered.
    let conf = format!(
        r#"
master_process off;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    log_format proto '$request_method $uri $server_protocol $status';
    access_log {d}/access.log proto;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl{http2};
        server_name localhost;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location / {{
            proxy_pass http://{origin};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    );
    std::fs::write(p.path("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new(binary);
    cmd.arg("-p")
        .arg(p.dir.path())
        .arg("-c")
        .arg(p.path("nginx.conf"));
    Proxy::spawn(p, cmd, "stderr.log", "access.log", "error.log")
}

/// The gateway in front of nginx in front of the simulated Feishu.
async fn through_nginx(binary: &std::path::Path, h2: bool) -> (Harness, Proxy) {
    let sim = SimFeishu::start(sim_config()).await.expect("sim starts");
    let nginx = start_nginx(binary, &sim, h2);
    let ca = nginx.ca.clone();
    let h = Harness::behind(sim, &nginx.base_url(true), |c| c.upstream_ca_file(&ca)).await;
    (h, nginx)
}

/// Proxied calls, the token call and a call with a query reach the origin
/// through nginx, and nginx logs the protocol the gateway chose by ALPN.
async fn calls_pass(h2: bool) {
    let Some(binary) = nginx_or_skip() else {
        return;
    };
    let (h, nginx) = through_nginx(&binary, h2).await;
    for chat in ["oc_1", "oc_2"] {
        let a = h.put(chat).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{:?}\nnginx: {}\n{}",
            a.body,
            nginx.access_log(),
            nginx.error_log()
        );
        assert_eq!(a.code(), 0, "{:?}", a.body);
        assert!(a.header("x-tt-logid").is_some(), "Feishu's headers pass");
    }
    let a = h
        .call(
            Method::GET,
            "/open-apis/contact/v3/users/ou_1?user_id_type=open_id",
            &[("authorization", &format!("Bearer {CLIENT_KEY}"))],
            "",
        )
        .await;
    // Any catalog endpoint: the simulated Feishu's generic success, passed
    // through.
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.code(), 0, "{:?}", a.body);
    assert!(a.header("x-gateway-error").is_none(), "{:?}", a.body);

    nginx
        .assert_puts_over(if h2 { "HTTP/2.0" } else { "HTTP/1.1" })
        .await;
    let sent = h.sim.requests();
    assert_eq!(sent.len(), 3, "both puts and the GET reach the origin");
    assert_eq!(sent[2].query.as_deref(), Some("user_id_type=open_id"));
    h.stop().await;
}

#[tokio::test]
async fn an_http2_server_by_alpn_takes_the_gateways_requests() {
    calls_pass(true).await;
}

#[tokio::test]
async fn an_http1_only_server_takes_the_gateways_requests() {
    calls_pass(false).await;
}
