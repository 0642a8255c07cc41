//! The integration tests' harness: a simulated Feishu, the gateway in front
//! of it on loopback ports, its config ([`config::GatewayConfig`]), a small
//! HTTP client, a Redis of the test's own ([`redis_server`]), a Redis
//! Cluster or Sentinel set of the test's own ([`redis_ha`]), gateway
//! replicas sharing one of them ([`fleet`]), raw-socket
//! upstreams ([`scripted`]), two clients flooding one app with quota
//! shares ([`shares`]), the store app of the tests ([`store_app`]), the
//! Prometheus tools ([`tools`]), an OTLP receiver ([`otlp`]) and event
//! subscribers ([`subscriber`]).
//!
//! Every item of the crate under test that a test file uses is re-exported
//! here, from [`gateway`], in one place.
#![allow(dead_code)]

pub mod config;
pub mod fleet;
mod gateway;
pub mod otlp;
pub mod proxy;
pub mod redis_ha;
pub mod redis_server;
pub mod scripted;
pub mod shares;
pub mod store_app;
pub mod subscriber;
pub mod tools;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

pub use config::GatewayConfig;
pub use gateway::*;

pub const APP_ID: &str = "cli_test0000000001";
pub const APP_SECRET: &str = "app-secret-VERY-SECRET-0001";
pub const CLIENT_KEY: &str = "client-key-billing-0123456789";
pub const PUT_PATH: &str = "/open-apis/im/v1/chats/oc_123/top_notice/put_top_notice";
pub const PUT_BODY: &str = r#"{"chat_top_notice":[{"action_type":"1","message_id":"om_dc13264520392913993dd051dba21dcf"}]}"#;
/// put_top_notice's route, as in the catalog, `[[routes]]` and metrics.
pub const PUT_ROUTE: &str = "/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice";
/// delete_top_notice's route.
pub const DELETE_ROUTE: &str = "/open-apis/im/v1/chats/:chat_id/top_notice/delete_top_notice";

/// The client the tests use: plain HTTP/1.1, pooled.
pub type HttpClient = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// A simulated Feishu with the test app.
pub fn sim_config() -> SimConfig {
    SimConfig::with_app(APP_ID, APP_SECRET)
}

/// A simulated Feishu with the test app and its quota enforcement off
/// (pair with [`GatewayConfig::without_put_quota`]).
pub fn sim_without_quota() -> SimConfig {
    let mut c = sim_config();
    c.quota = QuotaMode::Off;
    c
}

pub fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// Starts a gateway with `config`.
pub async fn start_gateway(config: &GatewayConfig) -> Runtime {
    Runtime::start(config.parse())
        .await
        .expect("gateway starts")
}

/// The gateway's two listeners, bound before it starts so that its address
/// is known beforehand (e.g. to point Feishu's event pushes at it).
pub struct Listeners {
    main: TcpListener,
    admin: TcpListener,
}

impl Listeners {
    pub async fn bind() -> Listeners {
        Listeners {
            main: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            admin: TcpListener::bind("127.0.0.1:0").await.expect("bind admin"),
        }
    }

    /// Where the gateway will serve.
    pub fn addr(&self) -> SocketAddr {
        self.main.local_addr().expect("addr")
    }

    /// Starts a gateway with `config` on these listeners.
    pub async fn start(self, config: &GatewayConfig) -> Runtime {
        Runtime::start_on(config.parse(), self.main, self.admin)
            .await
            .expect("gateway starts")
    }
}

/// A simulated Feishu and a gateway in front of it.
pub struct Harness {
    pub sim: SimFeishu,
    pub gw: Runtime,
    pub client: HttpClient,
}

/// A simulated Feishu and a gateway with the default config in front of it.
pub async fn start(sim: SimConfig) -> Harness {
    start_with(sim, |c| c).await
}

/// A simulated Feishu and a gateway in front of it, with the default
/// config as `configure` changes it.
pub async fn start_with(
    sim: SimConfig,
    configure: impl FnOnce(GatewayConfig) -> GatewayConfig,
) -> Harness {
    let sim = SimFeishu::start(sim).await.expect("sim starts");
    Harness::on(sim, configure).await
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn code(&self) -> i64 {
        self.json()["code"].as_i64().expect("code")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Harness {
    /// A gateway in front of `sim`, which is already running, with the
    /// default config as `configure` changes it.
    pub async fn on(
        sim: SimFeishu,
        configure: impl FnOnce(GatewayConfig) -> GatewayConfig,
    ) -> Harness {
        let upstream = sim.base_url();
        Harness::behind(sim, &upstream, configure).await
    }

    /// A gateway whose upstream is `upstream`, e.g. a real proxy in front
    /// of `sim`, with the default config as `configure` changes it.
    pub async fn behind(
        sim: SimFeishu,
        upstream: &str,
        configure: impl FnOnce(GatewayConfig) -> GatewayConfig,
    ) -> Harness {
        let config = configure(GatewayConfig::new(upstream));
        let gw = start_gateway(&config).await;
        Harness {
            sim,
            gw,
            client: http_client(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        call(&self.client, self.gw.addr(), method, path, headers, body).await
    }

    /// POST put_top_notice with the client key and a valid body.
    pub async fn put(&self, chat: &str) -> Answer {
        let path = format!("/open-apis/im/v1/chats/{chat}/top_notice/put_top_notice");
        put_at(&self.client, self.gw.addr(), &path, &[]).await
    }

    /// POST put_top_notice ([`PUT_PATH`]) with the client key, a valid body
    /// and `extra` headers.
    pub async fn put_with(&self, extra: &[(&str, &str)]) -> Answer {
        put_at(&self.client, self.gw.addr(), PUT_PATH, extra).await
    }

    /// GET `path` on the admin listener.
    pub async fn admin(&self, path: &str) -> Answer {
        admin_get(&self.client, &self.gw, path).await
    }

    /// `/metrics`, as text.
    pub async fn metrics(&self) -> String {
        metrics_of(&self.client, &self.gw).await
    }

    /// Waits until `/readyz` says ready.
    pub async fn ready(&self) {
        wait_ready(&self.client, &self.gw).await;
    }

    /// Stops the gateway (its drain within 30 s), then the simulated Feishu.
    pub async fn stop(self) {
        self.gw.shutdown();
        tokio::time::timeout(Duration::from_secs(30), self.gw.wait())
            .await
            .expect("the gateway stops within 30 s");
        self.sim.shutdown().await;
    }
}

/// GET `path` on `gw`'s admin listener.
pub async fn admin_get(client: &HttpClient, gw: &Runtime, path: &str) -> Answer {
    get(client, gw.admin_addr(), path).await
}

/// `gw`'s `/metrics`, as text (UTF-8, as an exposition must be).
pub async fn metrics_of(client: &HttpClient, gw: &Runtime) -> String {
    let m = admin_get(client, gw, "/metrics").await;
    assert_eq!(m.status, StatusCode::OK, "/metrics");
    String::from_utf8(m.body.to_vec()).expect("a UTF-8 exposition")
}

/// Waits (10 s at most) until `gw`'s `/readyz` says ready.
pub async fn wait_ready(client: &HttpClient, gw: &Runtime) {
    wait_for(Duration::from_secs(10), || async {
        admin_get(client, gw, "/readyz").await.status == StatusCode::OK
    })
    .await;
}

/// POST a valid put_top_notice body to `path` with the client key, the JSON
/// content type and `extra` headers.
pub async fn put_at(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> Answer {
    put_as(client, addr, CLIENT_KEY, path, extra).await
}

/// [`put_at`] with the client key `key`.
pub async fn put_as(
    client: &HttpClient,
    addr: SocketAddr,
    key: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> Answer {
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json; charset=utf-8"),
    ];
    headers.extend_from_slice(extra);
    call(client, addr, Method::POST, path, &headers, PUT_BODY).await
}

/// GET `path` at `addr`.
pub async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> Answer {
    call(client, addr, Method::GET, path, &[], "").await
}

/// One request; panics when there is no answer within 30 s.
pub async fn call(
    client: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    try_call(client, addr, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("http://{addr}{path}: {e}"))
}

/// One request; the error when it fails or has no answer within 30 s.
pub async fn try_call(
    client: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Answer, String> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| "no answer within 30 s".to_string())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// The value of `series` (name and labels, as exposed) in a text exposition.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Says that a test is skipped because `what` is missing, where the test
/// output shows it: libtest keeps what a passing test prints with
/// `println!`/`eprintln!` to itself, but not what is written to the
/// stderr handle. Under `CI=true` a missing tool is a failure instead
/// (CI installs every one: `.ci/run`).
pub fn skipped(what: &str, install: &str) {
    use std::io::Write;
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "CI=true and {what} is not installed ({install})");
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {what} is not installed ({install})"
    );
}

/// Polls `cond` every 20 ms until it holds, failing after `limit`.
pub async fn wait_for<F, Fut>(limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
