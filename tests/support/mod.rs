//! Shared fakes and helpers for the integration tests: a simulated Feishu,
//! the gateway in front of it on loopback ports, and a small HTTP client.
#![allow(dead_code)]

pub mod redis_server;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use feishu_gateway::app::Runtime;
use feishu_gateway::config::{Config, MapEnv};
use feishu_sim::{SimConfig, SimFeishu};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub const APP_ID: &str = "cli_test0000000001";
pub const APP_SECRET: &str = "app-secret-VERY-SECRET-0001";
pub const CLIENT_KEY: &str = "client-key-billing-0123456789";
pub const PUT_PATH: &str = "/open-apis/im/v1/chats/oc_123/top_notice/put_top_notice";
pub const PUT_BODY: &str = r#"{"chat_top_notice":[{"action_type":"1","message_id":"om_dc13264520392913993dd051dba21dcf"}]}"#;

/// Config sections that lift the gateway's quota on put_top_notice, for
/// tests about something else (pair with [`sim_without_quota`]).
pub const NO_QUOTA: &str = r#"
[[routes]]
method = "POST"
path = "/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice"
limits = []
"#;

/// A simulated Feishu with the test app and its quota enforcement off.
pub fn sim_without_quota() -> SimConfig {
    let mut c = sim_config();
    c.quota = feishu_sim::QuotaMode::Off;
    c
}

/// The environment the gateway's config reads secrets from.
pub fn env() -> MapEnv {
    MapEnv::new()
        .with("APP_SECRET", APP_SECRET)
        .with("CLIENT_KEY", CLIENT_KEY)
}

/// A config for one app and one client in front of `upstream`, with fast
/// token retries; `extra` is appended (sections) or prepended (top-level
/// keys, with `top`).
pub fn config_text(upstream: &str, top: &str, extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
upstream = "{upstream}"
{top}

[token]
retry_min = "50ms"
retry_max = "200ms"

[[apps]]
name = "ops-bot"
app_id = "{APP_ID}"
app_secret_env = "APP_SECRET"

[[clients]]
name = "billing"
key_env = "CLIENT_KEY"
app = "ops-bot"
{extra}
"#
    )
}

/// A simulated Feishu with the test app.
pub fn sim_config() -> SimConfig {
    SimConfig::with_app(APP_ID, APP_SECRET)
}

pub struct Harness {
    pub sim: SimFeishu,
    pub gw: Runtime,
    pub client: Client<HttpConnector, Full<Bytes>>,
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
}

pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Starts a simulated Feishu and a gateway in front of it.
pub async fn start(sim: SimConfig, top: &str, extra: &str) -> Harness {
    let sim = SimFeishu::start(sim).await.expect("sim starts");
    let text = config_text(&sim.base_url(), top, extra);
    let config = Config::parse(&text, &env()).unwrap_or_else(|p| panic!("{p}"));
    let gw = Runtime::start(config).await.expect("gateway starts");
    Harness {
        sim,
        gw,
        client: http_client(),
    }
}

impl Harness {
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

    pub async fn admin(&self, path: &str) -> Answer {
        call(
            &self.client,
            self.gw.admin_addr(),
            Method::GET,
            path,
            &[],
            "",
        )
        .await
    }

    /// Waits until `/readyz` says ready.
    pub async fn ready(&self) {
        wait_for(Duration::from_secs(10), || async {
            self.admin("/readyz").await.status == StatusCode::OK
        })
        .await;
    }
}

/// POST a valid put_top_notice body to `path` with the client key, the JSON
/// content type and `extra` headers.
pub async fn put_at(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> Answer {
    let auth = format!("Bearer {CLIENT_KEY}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json; charset=utf-8"),
    ];
    headers.extend_from_slice(extra);
    call(client, addr, Method::POST, path, &headers, PUT_BODY).await
}

pub async fn call(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
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
        .expect("answer within 30 s")
        .expect("answer");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
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
