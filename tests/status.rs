//! The status page on the admin listener (`/status`, `/status.json`),
//! against a running gateway in front of the simulated Feishu under load:
//! what it shows (apps and their tokens, a key paused by Feishu's throttle,
//! the codes coming back), that nothing secret is on it, that it stays on
//! the admin listener; and, in a real browser (Debian's headless Chromium,
//! `deploy/ci-install-chromium.sh`), that the page loads and its DOM holds
//! the same, with a screenshot (`STATUS_SCREENSHOT=docs/status-page.png`
//! writes the one README shows).

mod support;

use std::path::PathBuf;
use std::process::Command;

use feishu_sim::FaultSpan;
use http::{Method, StatusCode};
use support::config::{App, Client};
use support::tools::run;
use support::*;

const BROKEN_ID: &str = "cli_broken00000001";
const BROKEN_KEY: &str = "client-key-broken-0123456789";
const BATCH_KEY: &str = "client-key-batch-0123456789";

/// A gateway with `ops-bot` (served) and `broken-bot` (a secret Feishu
/// refuses), after a load of puts: successes, Feishu's 232011, and a
/// throttle answer (99991400 with a 60 s reset) that pauses put_top_notice.
async fn loaded() -> Harness {
    let sim = SimFeishu::start(sim_config()).await.unwrap();
    let upstream = sim.base_url();
    let h = Harness::on(sim, |_| {
        GatewayConfig::new(&upstream)
            .app(App::self_built("broken-bot", BROKEN_ID, "BROKEN_SECRET"))
            .client(Client::new("broken-client", "BROKEN_KEY", "broken-bot"))
            .client(Client::new("batch", "BATCH_KEY", "ops-bot").quota_share(0.25))
            .env("BATCH_KEY", BATCH_KEY)
            .env("BROKEN_SECRET", "not-the-secret-feishu-knows")
            .env("BROKEN_KEY", BROKEN_KEY)
    })
    .await;
    h.ready().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = h.client.clone();
        let addr = h.gw.addr();
        tasks.push(tokio::spawn(async move {
            let chat = if i % 4 == 0 {
                "oc_error232011"
            } else {
                "oc_123"
            };
            let path = format!("/open-apis/im/v1/chats/{chat}/top_notice/put_top_notice");
            put_at(&client, addr, &path, &[]).await.code()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    h.sim.throttle(
        "put_top_notice",
        99991400,
        StatusCode::BAD_REQUEST,
        Some(60),
        FaultSpan::Calls(1),
    );
    let a = h.put_with(&[]).await;
    assert_eq!(a.code(), 99991400, "{}", a.text());
    let auth = format!("Bearer {BATCH_KEY}");
    let a = h
        .call(
            Method::POST,
            "/open-apis/im/v1/chats/oc_batch/top_notice/delete_top_notice",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            "",
        )
        .await;
    assert_eq!(a.code(), 0, "{}", a.text());
    let auth = format!("Bearer {BROKEN_KEY}");
    let a = h
        .call(
            Method::POST,
            PUT_PATH,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            PUT_BODY,
        )
        .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    h
}

/// No client key, no app secret, no token handed out by the simulator.
fn assert_no_secret(h: &Harness, text: &str) {
    let tokens: Vec<String> = h.sim.token_calls().into_iter().map(|c| c.token).collect();
    for s in [
        APP_SECRET,
        CLIENT_KEY,
        BROKEN_KEY,
        "not-the-secret-feishu-knows",
    ]
    .into_iter()
    .chain(tokens.iter().map(String::as_str).filter(|t| !t.is_empty()))
    {
        assert!(!text.contains(s), "a secret on the status page");
    }
}

#[tokio::test]
async fn the_status_page_shows_tokens_a_paused_key_and_the_codes_and_no_secret() {
    let h = loaded().await;
    let a = h.admin("/status.json").await;
    assert_eq!(a.status, StatusCode::OK);
    let s = a.json();
    assert_eq!(s["state"], "ready");
    let apps = s["apps"].as_array().unwrap();
    let app = |name: &str| apps.iter().find(|a| a["name"] == name).unwrap().clone();
    assert_eq!(app("ops-bot")["has_token"], true);
    assert!(app("ops-bot")["expires_in_secs"].as_u64().unwrap() > 3000);
    assert_eq!(app("broken-bot")["has_token"], false);
    assert!(app("broken-bot")["last_error_code"].as_i64().is_some());

    let keys = s["keys"].as_array().unwrap();
    let put = keys
        .iter()
        .find(|k| k["app"] == "ops-bot" && k["route"] == format!("POST {PUT_ROUTE}"))
        .unwrap_or_else(|| panic!("put_top_notice key listed: {keys:?}"));
    assert!(put["paused_for_secs"].as_f64().unwrap() > 30.0, "{put}");
    assert!(put["requests_last_minute"].as_u64().unwrap() >= 21, "{put}");
    assert_eq!(put["limits"], serde_json::json!(["1000/60s", "50/1s"]));
    assert_eq!(keys[0], *put, "the paused key comes first");

    let codes = s["codes"].as_array().unwrap();
    let count = |code: &str| {
        codes
            .iter()
            .find(|c| c["app"] == "ops-bot" && c["code"] == code)
            .map_or(0, |c| c["count"].as_u64().unwrap())
    };
    assert_eq!(count("232011"), 5);
    assert_eq!(count("0"), 16, "15 puts and the delete");
    assert_eq!(count("99991400"), 1);
    assert_eq!(s["quota_backend"]["backend"], "local");
    let share = &s["shares"][0];
    assert_eq!(
        (&share["client"], &share["app"], &share["share"]),
        (
            &serde_json::json!("batch"),
            &serde_json::json!("ops-bot"),
            &serde_json::json!(0.25)
        )
    );
    assert_eq!(share["route"], format!("POST {DELETE_ROUTE}"));
    assert_no_secret(&h, &a.text());

    let page = h.admin("/status").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(html.contains("<tr class=\"key paused\" data-app=\"ops-bot\""));
    assert!(html.contains("data-code=\"232011\""));
    assert!(!html.contains("<script"), "no script");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external asset"
    );
    assert_no_secret(&h, &html);

    // Only on the admin listener.
    let main = get(&h.client, h.gw.addr(), "/status.json").await;
    assert_ne!(main.status, StatusCode::OK);
    h.stop().await;
}

fn chromium() -> Option<PathBuf> {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(c).is_file() {
            return Some(c.into());
        }
    }
    skipped("chromium", "bash deploy/ci-install-chromium.sh");
    None
}

#[tokio::test]
async fn headless_chromium_loads_the_page_and_its_dom_holds_the_apps_the_paused_key_and_a_code() {
    let Some(chromium) = chromium() else {
        return;
    };
    let h = loaded().await;
    let url = format!("http://{}/status?refresh=0", h.gw.admin_addr());
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile");
    let chromium_run = |arg: String| {
        let (chromium, profile, url) = (chromium.clone(), profile.clone(), url.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let mut cmd = Command::new(&chromium);
                cmd.args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--hide-scrollbars",
                    "--window-size=1280,1100",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg(arg)
                .arg(url);
                run(&mut cmd, None)
            })
            .await
            .unwrap()
        }
    };
    let (ok, dom) = chromium_run("--dump-dom".into()).await;
    assert!(ok, "chromium --dump-dom failed: {dom}");
    assert!(
        dom.contains("data-app=\"ops-bot\"") && dom.contains("data-app=\"broken-bot\""),
        "{dom}"
    );
    assert!(
        dom.contains("class=\"key paused\""),
        "the paused key: {dom}"
    );
    assert!(dom.contains("data-code=\"232011\""), "{dom}");
    assert!(dom.contains("id=\"state\">ready<"), "{dom}");
    assert!(
        dom.contains("data-client=\"batch\""),
        "the client share: {dom}"
    );
    assert_no_secret(&h, &dom);

    let shot = match std::env::var("STATUS_SCREENSHOT") {
        Ok(p) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p),
        Err(_) => dir.path().join("status.png"),
    };
    let (ok, out) = chromium_run(format!("--screenshot={}", shot.display())).await;
    assert!(ok, "chromium --screenshot failed: {out}");
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 10_000,
        "a page, not a blank: {} bytes",
        png.len()
    );
    h.stop().await;
}
