//! The upstream path against a server nobody here wrote: nginx over TLS, in
//! front of the simulated Feishu, offering `h2` and `http/1.1` by ALPN (or
//! `http/1.1` alone). The simulator accepts requests a real HTTP/2 server
//! refuses (a `host` header beside `:authority`), so it cannot be the only
//! server the gateway's upstream path meets.
//!
//! Needs `nginx` (Debian's nginx-light, installed by `.ci/run`). Without it
//! the tests are skipped, except under `CI=true`, where they fail.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::*;

/// An nginx process serving TLS on a loopback port, proxying to `origin`.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    ca: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The binary, or `None` to skip (but never under CI).
fn nginx_or_skip() -> Option<PathBuf> {
    let found = nginx_binary();
    if found.is_none() {
        skipped("nginx", "bash deploy/ci-install-nginx.sh");
    }
    found
}

impl Nginx {
    /// Starts nginx with a certificate for `localhost` from a test CA,
    /// proxying everything to `origin` over HTTP/1.1. `h2`: offer HTTP/2 by
    /// ALPN too.
    fn start(binary: &Path, origin: SocketAddr, h2: bool) -> Nginx {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new("nginx test CA").expect("CA");
        let cert = ca.issue_localhost("localhost").expect("certificate");
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(path("cert.pem"), &cert.cert_pem).unwrap();
        std::fs::write(path("key.pem"), &cert.key_pem).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
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
        std::fs::write(path("nginx.conf"), conf).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(path("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let ca = path("ca.pem");
        let nginx = Nginx {
            child,
            dir,
            port,
            ca,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn base_url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The access lines for `path`, once nginx has written them.
    async fn lines_for(&self, path: &str) -> Vec<String> {
        for _ in 0..100 {
            let lines: Vec<String> = self
                .access_log()
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

/// The gateway in front of nginx in front of the simulated Feishu.
async fn through_nginx(binary: &Path, h2: bool) -> (Harness, Nginx) {
    let sim = SimFeishu::start(sim_config()).await.expect("sim starts");
    let origin: SocketAddr = sim
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .expect("the sim listens on an address");
    let nginx = Nginx::start(binary, origin, h2);
    let ca = nginx.ca.clone();
    let h = Harness::behind(sim, &nginx.base_url(), |c| c.upstream_ca_file(&ca)).await;
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

    let protocol = if h2 { "HTTP/2.0" } else { "HTTP/1.1" };
    let puts = nginx.lines_for("/top_notice/put_top_notice").await;
    assert_eq!(puts.len(), 2, "{}", nginx.access_log());
    for line in &puts {
        assert!(line.ends_with(&format!("{protocol} 200")), "{line}");
    }
    let tokens = nginx.lines_for("tenant_access_token").await;
    assert!(!tokens.is_empty(), "{}", nginx.access_log());
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
