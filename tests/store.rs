//! Store apps (issue 9) end to end: app_ticket intake through the event
//! endpoint, ticket persistence, app and tenant tokens, per-tenant quotas,
//! against the simulated Feishu's store-app side.

mod support;

use std::sync::Arc;
use std::time::Duration;

use feishu_gateway::config::{Config, MapEnv};
use feishu_gateway::runtime::Runtime;
use feishu_gateway::sim::{SimConfig, SimFeishu, SimStoreApp, StoreCallKind};
use http::{Method, StatusCode};
use support::*;
use tokio::net::TcpListener;

const STORE_APP_ID: &str = "cli_store000000001";
const STORE_SECRET: &str = "store-app-secret-0001";
const ENCRYPT_KEY: &str = "encrypt-key-0001";
const VTOKEN: &str = "verification-token-0001";
const STORE_KEY: &str = "store-client-key-0123456789";

fn store_env() -> MapEnv {
    MapEnv::new()
        .with("STORE_SECRET", STORE_SECRET)
        .with("STORE_ENCRYPT_KEY", ENCRYPT_KEY)
        .with("STORE_VTOKEN", VTOKEN)
        .with("STORE_CLIENT_KEY", STORE_KEY)
}

fn store_config(
    upstream: &str,
    state_dir: &std::path::Path,
    max_tenants: usize,
    routes: &str,
) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
upstream = "{upstream}"
state_dir = {state:?}

[token]
retry_min = "50ms"
retry_max = "200ms"

[[apps]]
name = "isv-bot"
app_id = "{STORE_APP_ID}"
app_secret_env = "STORE_SECRET"
type = "store"
encrypt_key_env = "STORE_ENCRYPT_KEY"
verification_token_env = "STORE_VTOKEN"
max_tenants = {max_tenants}

[[clients]]
name = "crm"
key_env = "STORE_CLIENT_KEY"
app = "isv-bot"
{routes}
"#,
        state = state_dir.display().to_string()
    )
}

fn sim_store(tenants: &[&str]) -> SimConfig {
    SimConfig::with_store_app(
        SimStoreApp::new(STORE_APP_ID, STORE_SECRET, VTOKEN)
            .encrypt_key(ENCRYPT_KEY)
            .tenants(tenants.iter().copied()),
    )
}

struct Store {
    sim: SimFeishu,
    gw: Runtime,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    dir: tempfile::TempDir,
}

/// A gateway whose port is known before it starts, so the sim can push
/// tickets to its event endpoint from the first resend on.
async fn start_gateway(
    sim: &SimFeishu,
    dir: &std::path::Path,
    max_tenants: usize,
    routes: &str,
) -> Runtime {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    sim.set_event_url(STORE_APP_ID, format!("http://{addr}/feishu/events/isv-bot"));
    let text = store_config(&sim.base_url(), dir, max_tenants, routes);
    let config = Config::parse(&text, &store_env()).unwrap_or_else(|p| panic!("{p}"));
    Runtime::start_on(config, listener, admin).await.unwrap()
}

async fn start_store(tenants: &[&str], max_tenants: usize, routes: &str) -> Store {
    let sim = SimFeishu::start(sim_store(tenants)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(&sim, dir.path(), max_tenants, routes).await;
    Store {
        sim,
        gw,
        client: http_client(),
        dir,
    }
}

impl Store {
    async fn put(&self, tenant: Option<&str>) -> Answer {
        let auth = format!("Bearer {STORE_KEY}");
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        if let Some(t) = tenant {
            headers.push(("x-tenant-key", t));
        }
        call(
            &self.client,
            self.gw.addr(),
            Method::POST,
            PUT_PATH,
            &headers,
            PUT_BODY,
        )
        .await
    }

    async fn readyz(&self) -> serde_json::Value {
        call(
            &self.client,
            self.gw.admin_addr(),
            Method::GET,
            "/readyz",
            &[],
            "",
        )
        .await
        .json()
    }

    fn calls(&self, kind: StoreCallKind) -> usize {
        self.sim
            .store_calls()
            .iter()
            .filter(|c| c.kind == kind)
            .count()
    }
}

#[tokio::test]
async fn a_cold_start_asks_for_the_ticket_and_the_first_request_succeeds() {
    let s = start_store(&["tenant_a"], 100, "").await;
    // No kept ticket: the gateway asked for one, Feishu pushed it to the
    // event endpoint (encrypted and signed), and the app token followed.
    wait_for(Duration::from_secs(10), || async {
        s.readyz().await["ready"] == true
    })
    .await;
    assert_eq!(s.calls(StoreCallKind::Resend), 1);
    let pushed = s.sim.pushed_events();
    assert!(pushed
        .iter()
        .any(|p| p.encrypted && p.signed && p.status() == Some(StatusCode::OK)));
    let a = s.put(Some("tenant_a")).await;
    assert_eq!(a.code(), 0, "{:?}", a.body);
    let reqs = s.sim.requests();
    assert_eq!(reqs[0].tenant_key.as_deref(), Some("tenant_a"));
    let r = s.readyz().await;
    assert_eq!(r["store_apps"][0]["tenants"], 1);
    assert!(r["store_apps"][0]["ticket_age_secs"].as_u64().unwrap() < 60);
    // The ticket was persisted, privately.
    let files: Vec<_> = std::fs::read_dir(s.dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1);
}

#[tokio::test]
async fn a_restart_with_a_kept_ticket_needs_no_resend() {
    let s = start_store(&["tenant_a"], 100, "").await;
    wait_for(Duration::from_secs(10), || async {
        s.readyz().await["ready"] == true
    })
    .await;
    let Store {
        sim,
        gw,
        client,
        dir,
    } = s;
    gw.shutdown();
    gw.wait().await;
    let resends = sim
        .store_calls()
        .iter()
        .filter(|c| c.kind == StoreCallKind::Resend)
        .count();
    let gw = start_gateway(&sim, dir.path(), 100, "").await;
    let s = Store {
        sim,
        gw,
        client,
        dir,
    };
    let a = s.put(Some("tenant_a")).await;
    assert_eq!(a.code(), 0, "{:?}", a.body);
    assert_eq!(
        s.calls(StoreCallKind::Resend),
        resends,
        "no resend after a restart"
    );
}

#[tokio::test]
async fn callbacks_are_verified_and_bad_ones_change_nothing() {
    let s = start_store(&["tenant_a"], 100, "").await;
    wait_for(Duration::from_secs(10), || async {
        s.readyz().await["ready"] == true
    })
    .await;
    // The URL check is answered.
    let check = s.sim.check_event_url(STORE_APP_ID).await.unwrap();
    assert!(check.challenge_echoed(), "{check:?}");

    let before = s.sim.current_ticket(STORE_APP_ID);
    let url = "/feishu/events/isv-bot";
    let event = serde_json::json!({
        "uuid": "u1", "token": VTOKEN, "ts": "1", "type": "event_callback",
        "event": {"app_id": STORE_APP_ID, "app_ticket": "forged-ticket", "type": "app_ticket"}
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let post = |headers: http::HeaderMap, body: bytes::Bytes| {
        let client = s.client.clone();
        let addr = s.gw.addr();
        async move {
            let hs: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            call(
                &client,
                addr,
                Method::POST,
                url,
                &hs,
                std::str::from_utf8(&body).unwrap(),
            )
            .await
        }
    };
    // Bad signature.
    let mut sealed = feishu_gateway::sim::callback::seal(Some(ENCRYPT_KEY), &event, true, now);
    sealed
        .headers
        .insert("x-lark-signature", "00".repeat(32).parse().unwrap());
    let a = post(sealed.headers, sealed.body).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.header("x-gateway-error"), Some("invalid-callback"));
    // Wrong verification token.
    let mut wrong = event.clone();
    wrong["token"] = "not-the-token".into();
    let sealed = feishu_gateway::sim::callback::seal(Some(ENCRYPT_KEY), &wrong, true, now);
    assert_eq!(
        post(sealed.headers, sealed.body).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Garbled ciphertext.
    let a = post(
        http::HeaderMap::new(),
        bytes::Bytes::from_static(br#"{"encrypt":"!!!not base64"}"#),
    )
    .await;
    assert!(a.status.is_client_error());
    // Encrypted with another key.
    let sealed = feishu_gateway::sim::callback::seal(Some("another-key"), &event, false, now);
    assert!(post(sealed.headers, sealed.body)
        .await
        .status
        .is_client_error());

    // Nothing changed: requests still use the real ticket's tokens.
    assert_eq!(s.sim.current_ticket(STORE_APP_ID), before);
    assert_eq!(s.put(Some("tenant_a")).await.code(), 0);
    // A good push of a new ticket is taken.
    assert!(s.sim.push_ticket_now(STORE_APP_ID).await.unwrap().status() == Some(StatusCode::OK));
}

#[tokio::test]
async fn tenants_get_their_own_tokens_and_quotas() {
    let routes = "[[routes]]\nmethod = \"POST\"\npath = \"/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice\"\nlimits = [\"5/1s\"]\n";
    let mut sim = sim_store(&["tenant_a", "tenant_b"]);
    sim.limits = vec![(5, Duration::from_secs(1))];
    let sim = SimFeishu::start(sim).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(&sim, dir.path(), 100, routes).await;
    let s = Arc::new(Store {
        sim,
        gw,
        client: http_client(),
        dir,
    });
    wait_for(Duration::from_secs(10), || async {
        s.readyz().await["ready"] == true
    })
    .await;

    // Flood tenant_a far over its quota.
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(
            async move { s.put(Some("tenant_a")).await.status },
        ));
    }
    let mut limited = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    assert!(limited >= 20, "tenant_a limited: {limited}");
    // tenant_b is not limited by tenant_a's flood.
    let b = s.put(Some("tenant_b")).await;
    assert_eq!(b.code(), 0, "{:?}", b.body);
    assert_eq!(s.sim.violations(), 0);
    assert!(
        s.sim.max_in_any_window_for_tenant(
            STORE_APP_ID,
            "tenant_a",
            "put_top_notice",
            Duration::from_secs(1)
        ) <= 5
    );
    // Separate tenant tokens.
    let tokens: Vec<_> = s
        .sim
        .store_calls()
        .into_iter()
        .filter(|c| c.kind == StoreCallKind::TenantToken && c.ok)
        .map(|c| (c.tenant_key.unwrap(), c.token))
        .collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert_ne!(tokens[0].1, tokens[1].1);
}

#[tokio::test]
async fn missing_and_unknown_tenants_get_clear_answers_without_loops() {
    let s = start_store(&["tenant_a"], 100, "").await;
    wait_for(Duration::from_secs(10), || async {
        s.readyz().await["ready"] == true
    })
    .await;
    let a = s.put(None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.header("x-gateway-error"), Some("missing-tenant"));
    let before = s.calls(StoreCallKind::TenantToken);
    let a = s.put(Some("tenant_nobody")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.header("x-gateway-error"), Some("unknown-tenant"));
    assert_eq!(
        s.calls(StoreCallKind::TenantToken),
        before + 1,
        "one refusal, no retry loop"
    );
    assert!(s.sim.requests().is_empty());
    let a = s.put(Some("bad tenant/key")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn tenants_are_bounded_and_evicted() {
    let tenants: Vec<String> = (0..20).map(|i| format!("tenant_{i}")).collect();
    let refs: Vec<&str> = tenants.iter().map(String::as_str).collect();
    let s = start_store(&refs, 5, "").await;
    wait_for(Duration::from_secs(10), || async {
        s.readyz().await["ready"] == true
    })
    .await;
    for t in &refs {
        assert_eq!(s.put(Some(t)).await.code(), 0);
    }
    let r = s.readyz().await;
    assert_eq!(r["store_apps"][0]["tenants"], 5, "{r}");
    let m = call(
        &s.client,
        s.gw.admin_addr(),
        Method::GET,
        "/metrics",
        &[],
        "",
    )
    .await;
    assert!(String::from_utf8_lossy(&m.body)
        .contains(r#"feishu_gateway_store_tenants{app="isv-bot"} 5"#));
}

#[tokio::test]
async fn an_invalidated_ticket_is_resent_and_requests_recover() {
    let s = start_store(&["tenant_a"], 100, "").await;
    wait_for(Duration::from_secs(10), || async {
        s.readyz().await["ready"] == true
    })
    .await;
    assert_eq!(s.put(Some("tenant_a")).await.code(), 0);
    let resends = s.calls(StoreCallKind::Resend);
    // Feishu forgets the ticket and every token.
    s.sim.invalidate_tickets(STORE_APP_ID);
    s.sim.invalidate_all_tokens();
    let a = s.put(Some("tenant_a")).await;
    assert_eq!(a.code(), 0, "recovered within one request: {:?}", a.body);
    assert_eq!(s.calls(StoreCallKind::Resend), resends + 1);
}
