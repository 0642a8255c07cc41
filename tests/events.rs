//! Events end to end: the simulated Feishu pushes events to the gateway's
//! webhook endpoint (`/feishu/events/<app>`, a self-built app with an
//! Encrypt Key: encrypted and signed), the gateway verifies them,
//! de-duplicates them and fans them out to subscribers (small HTTP servers
//! on loopback) that check the gateway's signature. Also the long
//! connection's entry point (`EventHub::accept` with
//! `Transport::LongConnection`), card callbacks, queues that fill, a
//! subscriber down then up, one down past `drop_after`, the metrics, and
//! that no secret reaches a log.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::StatusCode;
use serde_json::json;
use sha2::Sha256;
use support::config::{App, Client, Subscription};
use support::subscriber::{free_addr, Behaviour, Subscriber};
use support::*;
use tokio::time::Instant;
use webhook::{v2_event, WebhookTarget};

const ENCRYPT_KEY: &str = "events-encrypt-key-0001";
const VTOKEN: &str = "events-verification-token-0001";
const SECRET_A: &str = "subscriber-secret-AAAA-0123456789";
const SECRET_B: &str = "subscriber-secret-BBBB-0123456789";
const APP: &str = "ops-bot";

// ----- logs ---------------------------------------------------------------

/// Every log line of this test binary (debug and up for the gateway),
/// captured once for all tests.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    Arc::clone(LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let buf = Arc::clone(&buf);
            move || Capture(Arc::clone(&buf))
        };
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("feishu_gateway=debug")
            .with_writer(writer)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    }))
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_no_secret_in_logs() {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    for secret in [ENCRYPT_KEY, VTOKEN, SECRET_A, SECRET_B, APP_SECRET] {
        assert!(!text.contains(secret), "a secret in the logs:\n{text}");
    }
}

// ----- the stack ------------------------------------------------------------

/// The simulated Feishu and a gateway whose self-built app `ops-bot` takes
/// webhook pushes (Encrypt Key and Verification Token), with `configure`
/// adding subscriptions and `[events]` settings. Retries are fast.
struct Stack {
    sim: SimFeishu,
    gw: Runtime,
    client: HttpClient,
    target: WebhookTarget,
}

/// The self-built app `ops-bot` taking webhook pushes (Encrypt Key and
/// Verification Token), its client, and subscriber secret A.
fn webhook_config(sim: &SimFeishu) -> GatewayConfig {
    GatewayConfig::bare(&sim.base_url())
        .app(
            App::self_built(APP, APP_ID, "APP_SECRET")
                .encrypt_key_env("EVENTS_ENCRYPT_KEY")
                .verification_token_env("EVENTS_VTOKEN"),
        )
        .client(Client::new("billing", "CLIENT_KEY", APP))
        .env("APP_SECRET", APP_SECRET)
        .env("CLIENT_KEY", CLIENT_KEY)
        .env("EVENTS_ENCRYPT_KEY", ENCRYPT_KEY)
        .env("EVENTS_VTOKEN", VTOKEN)
        .env("SECRET_A", SECRET_A)
}

/// Where the simulated Feishu pushes `ops-bot`'s events on the gateway
/// that will listen on `listeners`.
fn webhook_target(listeners: &Listeners) -> WebhookTarget {
    WebhookTarget {
        app_id: APP_ID.into(),
        url: format!("http://{}/feishu/events/{APP}", listeners.addr()),
        encrypt_key: Some(ENCRYPT_KEY.into()),
        verification_token: VTOKEN.into(),
    }
}

async fn stack(configure: impl FnOnce(GatewayConfig) -> GatewayConfig) -> Stack {
    logs();
    let sim = SimFeishu::start(sim_config()).await.expect("sim");
    let config = webhook_config(&sim)
        .env("SECRET_B", SECRET_B)
        .events_duration("retry_first", Duration::from_millis(50))
        .events_duration("retry_max", Duration::from_millis(200));
    let listeners = Listeners::bind().await;
    let target = webhook_target(&listeners);
    let gw = listeners.start(&configure(config)).await;
    Stack {
        sim,
        gw,
        client: http_client(),
        target,
    }
}

impl Stack {
    async fn push(&self, event: &serde_json::Value) -> (StatusCode, Bytes) {
        let pushed = self.sim.push_webhook(&self.target, event, true).await;
        (pushed.status().expect("answered"), pushed.answer)
    }

    async fn metrics(&self) -> String {
        metrics_of(&self.client, &self.gw).await
    }

    async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series).unwrap_or(0.0)
    }

    async fn stop(self) {
        self.gw.shutdown();
        self.gw.wait().await;
        self.sim.shutdown().await;
    }
}

fn message(target: &WebhookTarget, event_id: &str, message_id: &str) -> serde_json::Value {
    v2_event(
        target,
        "im.message.receive_v1",
        event_id,
        json!({"message": {"message_id": message_id, "content": "{\"text\":\"hi\"}"}}),
    )
}

fn sub(name: &str, events: &[&str], url: &str, secret_env: &str) -> Subscription {
    Subscription::new(name, APP, events, url, secret_env)
}

/// A subscription to `ws-bot`, the long-connection app.
fn ws_sub(name: &str, events: &[&str], url: &str, secret_env: &str) -> Subscription {
    Subscription::new(name, "ws-bot", events, url, secret_env)
}

/// Checks the gateway's signature on a delivery, as a subscriber would.
fn assert_signed(r: &support::subscriber::Received, secret: &str) {
    let ts = r.header("x-gateway-event-timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ts.parse::<u64>().unwrap().abs_diff(now) < 60, "{ts}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(r.header("x-gateway-event-signature"), want);
    assert!(r.header("content-type").starts_with("application/json"));
}

/// `ws-bot`'s im.message.receive_v1 events received over the long
/// connection, and the duplicates among them, as `/metrics` counts them.
fn assert_long_connection_counts(metrics: &str, received: f64, duplicates: f64) {
    let v = |series: &str| metric_value(metrics, series).unwrap_or(-1.0);
    assert_eq!(
        v(
            r#"feishu_gateway_events_received_total{app="ws-bot",transport="long_connection",type="im.message.receive_v1"}"#
        ),
        received
    );
    assert_eq!(
        v(r#"feishu_gateway_events_duplicates_total{app="ws-bot",transport="long_connection"}"#),
        duplicates
    );
}

/// `event` as subscribers get it: without Feishu's Verification Token.
fn without_token(event: &serde_json::Value) -> serde_json::Value {
    let mut e = event.clone();
    if let Some(h) = e.get_mut("header").and_then(|h| h.as_object_mut()) {
        h.remove("token");
    }
    if let Some(o) = e.as_object_mut() {
        o.remove("token");
    }
    e
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

// ----- tests ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_event_reaches_two_subscribers_once_each_signed_and_duplicates_are_dropped() {
    let a = Subscriber::start().await;
    let b = Subscriber::start().await;
    let s = stack(|c| {
        c.subscription(sub(
            "svc-a",
            &["im.message.receive_v1"],
            &a.url(),
            "SECRET_A",
        ))
        .subscription(sub("svc-b", &["*"], &b.url(), "SECRET_B"))
    })
    .await;

    let first = message(&s.target, "ev-1", "om_1");
    let (status, answer) = s.push(&first).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&answer[..], b"{}");
    wait_for(Duration::from_secs(5), || async {
        a.count() == 1 && b.count() == 1
    })
    .await;

    // The same event again (Feishu's re-push), and the same message under
    // a new event id (Feishu's im.message.receive_v1 duplicates).
    assert_eq!(s.push(&first).await.0, StatusCode::OK);
    assert_eq!(
        s.push(&message(&s.target, "ev-2", "om_1")).await.0,
        StatusCode::OK
    );
    // A new message is delivered.
    assert_eq!(
        s.push(&message(&s.target, "ev-3", "om_2")).await.0,
        StatusCode::OK
    );
    wait_for(Duration::from_secs(5), || async {
        a.count() == 2 && b.count() == 2
    })
    .await;
    settle().await;
    assert_eq!((a.count(), b.count()), (2, 2), "duplicates were delivered");

    for (sub, secret) in [(&a, SECRET_A), (&b, SECRET_B)] {
        let got = sub.received();
        assert_eq!(got[0].event_id(), "ev-1");
        assert_eq!(got[1].event_id(), "ev-3");
        for r in &got {
            assert_signed(r, secret);
            assert_eq!(r.header("x-gateway-event-type"), "im.message.receive_v1");
            assert_eq!(r.header("x-gateway-event-app"), APP);
            // The plain event, decrypted, as Feishu sent it but for the
            // Verification Token, which stays with the gateway.
            assert!(r.json()["header"].get("token").is_none(), "{}", r.json());
            assert!(!String::from_utf8_lossy(&r.body).contains(VTOKEN));
        }
        assert_eq!(got[0].header("x-gateway-event-id"), "ev-1");
        assert_eq!(got[0].json(), without_token(&first));
    }

    let m = s.metrics().await;
    let v = |series: &str| metric_value(&m, series).unwrap_or(-1.0);
    assert_eq!(
        v(
            r#"feishu_gateway_events_received_total{app="ops-bot",transport="webhook",type="im.message.receive_v1"}"#
        ),
        4.0
    );
    assert_eq!(
        v(r#"feishu_gateway_events_duplicates_total{app="ops-bot",transport="webhook"}"#),
        2.0
    );
    for name in ["svc-a", "svc-b"] {
        assert_eq!(
            v(&format!(
                r#"feishu_gateway_events_deliveries_total{{app="ops-bot",result="ok",subscription="{name}"}}"#
            )),
            2.0
        );
        assert_eq!(
            v(&format!(
                r#"feishu_gateway_events_queue_depth{{app="ops-bot",subscription="{name}"}}"#
            )),
            0.0
        );
        assert_eq!(
            v(&format!(
                r#"feishu_gateway_events_delivery_seconds_count{{app="ops-bot",subscription="{name}"}}"#
            )),
            2.0
        );
    }
    // Delivery latency (accepted -> the subscriber's 200), for the report.
    let sum =
        v(r#"feishu_gateway_events_delivery_seconds_sum{app="ops-bot",subscription="svc-a"}"#);
    eprintln!(
        "mean delivery latency to svc-a: {:.2} ms",
        sum / 2.0 * 1000.0
    );
    assert_no_secret_in_logs();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_that_fail_verification_are_refused_and_change_nothing() {
    let a = Subscriber::start().await;
    let s = stack(|c| c.subscription(sub("svc-a", &["*"], &a.url(), "SECRET_A"))).await;
    let event = message(&s.target, "ev-bad", "om_bad");

    // Signed with another key: 401.
    let wrong = WebhookTarget {
        encrypt_key: Some("another-encrypt-key".into()),
        ..s.target.clone()
    };
    let pushed = s.sim.push_webhook(&wrong, &event, true).await;
    assert!(
        [StatusCode::UNAUTHORIZED, StatusCode::BAD_REQUEST].contains(&pushed.status().unwrap()),
        "{:?}",
        pushed.status()
    );
    assert_eq!(pushed.status(), Some(StatusCode::UNAUTHORIZED));
    // A plain body while the app has an Encrypt Key: 400.
    let plain = WebhookTarget {
        encrypt_key: None,
        ..s.target.clone()
    };
    let pushed = s.sim.push_webhook(&plain, &event, false).await;
    assert_eq!(pushed.status(), Some(StatusCode::BAD_REQUEST));
    // Another verification token (encrypted and signed correctly): 401.
    let token = WebhookTarget {
        verification_token: "not-the-token".into(),
        ..s.target.clone()
    };
    let forged = v2_event(&token, "im.message.receive_v1", "ev-bad2", json!({}));
    assert_eq!(
        s.sim.push_webhook(&s.target, &forged, true).await.status(),
        Some(StatusCode::UNAUTHORIZED)
    );
    // An app that takes no webhook: 404. The URL check is answered.
    let other = WebhookTarget {
        url: s.target.url.replace("/ops-bot", "/nope"),
        ..s.target.clone()
    };
    assert_eq!(
        s.sim.push_webhook(&other, &event, true).await.status(),
        Some(StatusCode::NOT_FOUND)
    );
    let check = json!({"challenge": "c-123", "token": VTOKEN, "type": "url_verification"});
    let pushed = s.sim.push_webhook(&s.target, &check, false).await;
    assert_eq!(pushed.status(), Some(StatusCode::OK));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&pushed.answer).unwrap(),
        json!({"challenge": "c-123"})
    );

    settle().await;
    assert_eq!(a.count(), 0);
    // The event itself, pushed right, is delivered: nothing was marked seen.
    assert_eq!(s.push(&event).await.0, StatusCode::OK);
    wait_for(Duration::from_secs(5), || async { a.count() == 1 }).await;
    assert_no_secret_in_logs();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_down_then_up_gets_what_it_missed_in_order() {
    // Nothing listens on the subscriber's port yet.
    let addr: SocketAddr = free_addr().await;
    let url = format!("http://{addr}/hook");
    let s = stack(|c| c.subscription(sub("svc-a", &["*"], &url, "SECRET_A"))).await;
    for i in 0..5 {
        let e = message(&s.target, &format!("ev-{i}"), &format!("om_{i}"));
        assert_eq!(s.push(&e).await.0, StatusCode::OK, "acked while down");
    }
    wait_for(Duration::from_secs(5), || async {
        s.metric(r#"feishu_gateway_events_deliveries_total{app="ops-bot",result="connect",subscription="svc-a"}"#)
            .await
            >= 2.0
    })
    .await;
    assert_eq!(
        s.metric(r#"feishu_gateway_events_queue_depth{app="ops-bot",subscription="svc-a"}"#)
            .await,
        5.0
    );
    // Up: everything arrives, once, in order.
    let a = Subscriber::start_on(addr).await;
    wait_for(Duration::from_secs(5), || async { a.count() == 5 }).await;
    settle().await;
    let ids: Vec<String> = a.received().iter().map(|r| r.event_id()).collect();
    assert_eq!(ids, ["ev-0", "ev-1", "ev-2", "ev-3", "ev-4"]);
    for r in a.received() {
        assert_signed(&r, SECRET_A);
    }
    assert_eq!(
        s.metric(r#"feishu_gateway_events_queue_depth{app="ops-bot",subscription="svc-a"}"#)
            .await,
        0.0
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_down_past_drop_after_loses_the_event_counted() {
    let a = Subscriber::start().await;
    a.set(Behaviour::Status(503));
    let s = stack(|c| {
        c.subscription(sub("svc-a", &["*"], &a.url(), "SECRET_A"))
            .events_duration("drop_after", Duration::from_millis(400))
    })
    .await;
    assert_eq!(
        s.push(&message(&s.target, "ev-old", "om_old")).await.0,
        StatusCode::OK
    );
    wait_for(Duration::from_secs(5), || async {
        s.metric(r#"feishu_gateway_events_dropped_total{app="ops-bot",reason="expired",subscription="svc-a"}"#)
            .await
            == 1.0
    })
    .await;
    let tried = a.count();
    assert!(tried >= 2, "retried before it expired: {tried}");
    assert!(
        s.metric(r#"feishu_gateway_events_deliveries_total{app="ops-bot",result="status",subscription="svc-a"}"#)
            .await
            >= 2.0
    );
    // Up again: the dropped event is not sent; a new one is.
    a.set(Behaviour::Ok("{}".into()));
    assert_eq!(
        s.push(&message(&s.target, "ev-new", "om_new")).await.0,
        StatusCode::OK
    );
    wait_for(Duration::from_secs(5), || async {
        a.received()
            .last()
            .is_some_and(|r| r.event_id() == "ev-new")
    })
    .await;
    settle().await;
    let after: Vec<String> = a.received()[tried..].iter().map(|r| r.event_id()).collect();
    assert_eq!(after, ["ev-new"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_with_503_and_feishus_re_push_delivers_later() {
    let a = Subscriber::start().await;
    a.set(Behaviour::Status(503));
    let b = Subscriber::start().await;
    let s = stack(|c| {
        c.subscription(sub("svc-a", &["*"], &a.url(), "SECRET_A"))
            .subscription(sub("svc-b", &["*"], &b.url(), "SECRET_B"))
            .events_count("queue_max_events", 1)
    })
    .await;
    // svc-a fails: its queue holds ev-1; ev-2 does not fit anywhere.
    assert_eq!(
        s.push(&message(&s.target, "ev-1", "om_1")).await.0,
        StatusCode::OK
    );
    wait_for(Duration::from_secs(5), || async {
        a.count() >= 1 && b.count() == 1
    })
    .await;
    let e2 = message(&s.target, "ev-2", "om_2");
    let (status, _) = s.push(&e2).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        s.metric(r#"feishu_gateway_events_refused_total{app="ops-bot",reason="queue_full"}"#)
            .await,
        1.0
    );
    // Feishu pushes it again on its schedule (compressed); svc-a recovers
    // meanwhile.
    let recover = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.set(Behaviour::Ok("{}".into()));
    };
    let schedule = [Duration::from_millis(500); 4];
    let (pushes, ()) = tokio::join!(
        s.sim.push_webhook_until_ok(&s.target, &e2, true, &schedule),
        recover
    );
    assert_eq!(
        pushes.last().unwrap().status(),
        Some(StatusCode::OK),
        "{pushes:?}"
    );
    wait_for(Duration::from_secs(5), || async {
        a.received()
            .iter()
            .filter(|r| r.event_id() == "ev-2")
            .count()
            == 1
            && b.count() == 2
    })
    .await;
    settle().await;
    // Each got each event once (svc-a's ev-1 retries aside), in order.
    let b_ids: Vec<String> = b.received().iter().map(|r| r.event_id()).collect();
    assert_eq!(b_ids, ["ev-1", "ev-2"]);
    let a_ok: Vec<String> = a.received().iter().map(|r| r.event_id()).collect();
    assert_eq!(a_ok.iter().filter(|i| *i == "ev-2").count(), 1);
    assert_eq!(a_ok.last().map(String::as_str), Some("ev-2"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_callbacks_get_the_subscribers_answer_or_the_fallback_in_time() {
    let card = Subscriber::start().await;
    let answer = r#"{"toast":{"type":"info","content":"done"}}"#;
    card.set(Behaviour::Ok(answer.into()));
    let s = stack(|c| {
        c.subscription(sub(
            "cards",
            &["card.action.trigger"],
            &card.url(),
            "SECRET_A",
        ))
        .events_duration("card_deadline", Duration::from_millis(500))
    })
    .await;
    let callback = |id: &str| {
        v2_event(
            &s.target,
            "card.action.trigger",
            id,
            json!({"operator": {"open_id": "ou_1"}, "action": {"value": {"k": "v"}}, "token": "c-tok"}),
        )
    };
    let started = Instant::now();
    let (status, body) = s.push(&callback("cb-1")).await;
    let answered_in = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], answer.as_bytes());
    assert_eq!(card.count(), 1);
    assert_signed(&card.received()[0], SECRET_A);
    eprintln!("card callback answered in {answered_in:?}");

    // A slow subscriber: the fallback, well within Feishu's 3 s.
    card.set(Behaviour::Late(Duration::from_secs(3), answer.into()));
    let started = Instant::now();
    let (status, body) = s.push(&callback("cb-2")).await;
    let fallback_in = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"{}");
    assert!(fallback_in < Duration::from_millis(1500), "{fallback_in:?}");
    eprintln!("card callback fallback answered in {fallback_in:?}");

    let m = s.metrics().await;
    let v = |series: &str| metric_value(&m, series).unwrap_or(-1.0);
    assert_eq!(
        v(r#"feishu_gateway_events_card_callbacks_total{app="ops-bot",outcome="answered"}"#),
        1.0
    );
    assert_eq!(
        v(r#"feishu_gateway_events_card_callbacks_total{app="ops-bot",outcome="timeout"}"#),
        1.0
    );
    assert_no_secret_in_logs();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_long_connections_entry_point_queues_dedupes_and_answers_cards() {
    logs();
    let a = Subscriber::start().await;
    let card = Subscriber::start().await;
    card.set(Behaviour::Ok(
        r#"{"toast":{"type":"success","content":"ok"}}"#.into(),
    ));
    let sim = SimFeishu::start(sim_config()).await.expect("sim");
    // A self-built app on the long connection needs no webhook keys.
    let config = GatewayConfig::bare(&sim.base_url())
        .app(App::self_built("ws-bot", APP_ID, "APP_SECRET").events("long_connection"))
        .client(Client::new("billing", "CLIENT_KEY", "ws-bot"))
        .env("APP_SECRET", APP_SECRET)
        .env("CLIENT_KEY", CLIENT_KEY)
        .env("SECRET_A", SECRET_A)
        .subscription(ws_sub(
            "ws-a",
            &["im.message.receive_v1"],
            &a.url(),
            "SECRET_A",
        ))
        .subscription(ws_sub(
            "ws-cards",
            &["card.action.trigger"],
            &card.url(),
            "SECRET_A",
        ));
    let parsed = config.parse();
    assert_eq!(parsed.events.apps[0].transport, Transport::LongConnection);
    let gw = start_gateway(&config).await;
    let hub = gw.gateway().events().clone();
    let target = WebhookTarget {
        app_id: APP_ID.into(),
        url: String::new(),
        encrypt_key: None,
        verification_token: "unused".into(),
    };
    let event = Bytes::from(message(&target, "lc-1", "om_lc").to_string());
    let lc = Transport::LongConnection;
    assert_eq!(
        hub.accept("ws-bot", lc, event.clone()).await,
        Accepted::Queued
    );
    assert_eq!(hub.accept("ws-bot", lc, event).await, Accepted::Duplicate);
    assert_eq!(
        hub.accept("ws-bot", lc, Bytes::from_static(b"not json"))
            .await,
        Accepted::Refused("malformed event")
    );
    let cb = v2_event(
        &target,
        "card.action.trigger",
        "lc-cb",
        json!({"action": {}}),
    );
    let answer = hub.accept("ws-bot", lc, Bytes::from(cb.to_string())).await;
    assert_eq!(
        answer,
        Accepted::Answer(Bytes::from_static(
            br#"{"toast":{"type":"success","content":"ok"}}"#
        ))
    );
    wait_for(Duration::from_secs(5), || async { a.count() == 1 }).await;
    settle().await;
    assert_eq!(a.count(), 1);
    assert_eq!(a.received()[0].event_id(), "lc-1");
    let client = http_client();
    let m = metrics_of(&client, &gw).await;
    let v = |series: &str| metric_value(&m, series).unwrap_or(-1.0);
    assert_long_connection_counts(&m, 2.0, 1.0);
    assert_eq!(
        v(r#"feishu_gateway_events_refused_total{app="ws-bot",reason="malformed"}"#),
        1.0
    );
    // The app takes no webhook pushes.
    let pushed = call(
        &client,
        gw.addr(),
        http::Method::POST,
        "/feishu/events/ws-bot",
        &[],
        "{}",
    )
    .await;
    assert_eq!(pushed.status, StatusCode::NOT_FOUND);
    gw.shutdown();
    gw.wait().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_deliver_an_event_pushed_to_both_once() {
    let mut redis = support::redis_server::redis_or_skip!();
    logs();
    let a = Subscriber::start().await;
    let sim = SimFeishu::start(sim_config()).await.expect("sim");
    let config = webhook_config(&sim)
        .quota(support::config::Quota::redis(&redis.url()).replicas(2))
        .subscription(sub("svc-a", &["*"], &a.url(), "SECRET_A"));
    let mut replicas = Vec::new();
    let mut targets = Vec::new();
    for _ in 0..2 {
        let listeners = Listeners::bind().await;
        targets.push(webhook_target(&listeners));
        replicas.push(listeners.start(&config).await);
    }
    // Feishu's push reaches replica 0, its re-push (and the same message
    // under a new event id) replica 1.
    let e = message(&targets[0], "ev-r1", "om_r1");
    for (t, event) in [(&targets[0], &e), (&targets[1], &e)] {
        let pushed = sim.push_webhook(t, event, true).await;
        assert_eq!(pushed.status(), Some(StatusCode::OK));
    }
    let again = message(&targets[1], "ev-r2", "om_r1");
    let pushed = sim.push_webhook(&targets[1], &again, true).await;
    assert_eq!(pushed.status(), Some(StatusCode::OK));
    wait_for(Duration::from_secs(5), || async { a.count() == 1 }).await;
    settle().await;
    assert_eq!(a.count(), 1, "delivered once across replicas");
    let mut c = redis.conn().await;
    let marked: Option<String> = redis::cmd("GET")
        .arg("feishu-gateway:event:{ops-bot}:id:ev-r1")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(marked.as_deref(), Some("1"));

    // Redis gone: events are still accepted and delivered, checked in
    // memory, counted.
    redis.kill();
    let e3 = message(&targets[0], "ev-r3", "om_r3");
    let pushed = sim.push_webhook(&targets[0], &e3, true).await;
    assert_eq!(pushed.status(), Some(StatusCode::OK));
    wait_for(Duration::from_secs(5), || async { a.count() == 2 }).await;
    let client = http_client();
    let m = metrics_of(&client, &replicas[0]).await;
    assert!(
        metric_value(
            &m,
            r#"feishu_gateway_events_dedupe_fallbacks_total{app="ops-bot"}"#
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    // Back before the gateways stop (their last budget sync uses it).
    redis.restart();
    for gw in replicas {
        gw.shutdown();
        gw.wait().await;
    }
    sim.shutdown().await;
}

// ----- the long connection, end to end --------------------------------------

/// The simulated Feishu (reconnects at once, quick re-pushes) and a gateway
/// whose self-built app `ws-bot` takes its events over the long connection,
/// with `configure` adding subscriptions; returns once the gateway holds
/// the connection.
async fn long_connection_stack(
    configure: impl FnOnce(GatewayConfig) -> GatewayConfig,
) -> (SimFeishu, Runtime) {
    logs();
    let sim = SimFeishu::start(sim_config()).await.expect("sim");
    sim.set_long_conn_client_config(feishu_sim::LongConnClientConfig {
        reconnect_count: -1,
        reconnect_interval: 1,
        reconnect_nonce: 0,
        ping_interval: 1,
    });
    // Re-pushes after 150 ms instead of 15 s.
    sim.set_long_conn_retry_scale(0.01);
    let config = GatewayConfig::bare(&sim.base_url())
        .app(App::self_built("ws-bot", APP_ID, "APP_SECRET").events("long_connection"))
        .client(Client::new("billing", "CLIENT_KEY", "ws-bot"))
        .env("APP_SECRET", APP_SECRET)
        .env("CLIENT_KEY", CLIENT_KEY)
        .env("SECRET_A", SECRET_A)
        .env("SECRET_B", SECRET_B)
        .events_duration("retry_first", Duration::from_millis(50))
        .events_duration("retry_max", Duration::from_millis(200));
    let gw = start_gateway(&configure(config)).await;
    wait_for(Duration::from_secs(10), || async {
        sim.long_conns(APP_ID).len() == 1
    })
    .await;
    (sim, gw)
}

fn ws_target() -> WebhookTarget {
    WebhookTarget {
        app_id: APP_ID.into(),
        url: String::new(),
        encrypt_key: None,
        verification_token: "unused".into(),
    }
}

/// Pushes a card callback over the long connection; its 200 ack and how
/// long it took (at most 4 s is waited for).
async fn push_card(
    sim: &SimFeishu,
    t: &WebhookTarget,
    event_id: &str,
) -> (feishu_sim::LongConnAck, Duration) {
    let pushed = Instant::now();
    let cb = sim.long_conn_push(
        APP_ID,
        &v2_event(
            t,
            "card.action.trigger",
            event_id,
            json!({"action": {"value": {}}}),
        ),
    );
    wait_for(Duration::from_secs(4), || async {
        acked(sim, &cb).is_some()
    })
    .await;
    (acked(sim, &cb).unwrap(), pushed.elapsed())
}

/// The 200 ack the simulated Feishu received for `message_id`.
fn acked(sim: &SimFeishu, message_id: &str) -> Option<feishu_sim::LongConnAck> {
    sim.long_conn_acks()
        .into_iter()
        .find(|a| a.message_id == message_id && a.code == Some(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_long_connection_events_reach_two_subscribers_once_fragments_and_cards_included() {
    let a = Subscriber::start().await;
    let b = Subscriber::start().await;
    let card = Subscriber::start().await;
    card.set(Behaviour::Ok(
        r#"{"toast":{"type":"info","content":"seen"}}"#.into(),
    ));
    let (sim, gw) = long_connection_stack(|c| {
        c.subscription(ws_sub(
            "ws-a",
            &["im.message.receive_v1"],
            &a.url(),
            "SECRET_A",
        ))
        .subscription(ws_sub("ws-b", &["*"], &b.url(), "SECRET_B"))
        .subscription(ws_sub(
            "ws-cards",
            &["card.action.trigger"],
            &card.url(),
            "SECRET_A",
        ))
    })
    .await;
    let t = ws_target();

    // One event: both subscribers once, Feishu acked with 200.
    let first = message(&t, "lc-ev-1", "om_lc_1");
    let mid = sim.long_conn_push(APP_ID, &first);
    wait_for(Duration::from_secs(5), || async {
        a.count() == 1 && b.count() == 1
    })
    .await;
    wait_for(Duration::from_secs(5), || async {
        acked(&sim, &mid).is_some()
    })
    .await;
    assert_eq!(a.received()[0].json(), without_token(&first));
    assert_signed(&a.received()[0], SECRET_A);
    assert_signed(&b.received()[0], SECRET_B);

    // Feishu's duplicates: the same frame again, and the same message under
    // a new event id. Both are acked, neither delivered again.
    assert!(sim.long_conn_push_duplicate(&mid));
    let again = sim.long_conn_push(APP_ID, &message(&t, "lc-ev-2", "om_lc_1"));
    wait_for(Duration::from_secs(5), || async {
        acked(&sim, &again).is_some()
    })
    .await;

    // A large event in fragments of 100 bytes, reassembled intact.
    sim.set_long_conn_fragment_size(Some(100));
    let long_text = "x".repeat(2_000);
    let big = v2_event(
        &t,
        "im.message.receive_v1",
        "lc-ev-3",
        json!({"message": {"message_id": "om_lc_big", "content": long_text}}),
    );
    let big_mid = sim.long_conn_push(APP_ID, &big);
    wait_for(Duration::from_secs(5), || async {
        a.count() == 2 && b.count() == 2
    })
    .await;
    let fragments = sim
        .long_conn_deliveries()
        .iter()
        .find(|d| d.message_id == big_mid)
        .map(|d| d.fragments)
        .unwrap();
    assert!(fragments > 10, "{fragments} fragments");
    assert_eq!(a.received()[1].json(), without_token(&big));
    sim.set_long_conn_fragment_size(None);

    // A card callback: the subscriber's answer goes back in the ack, in time.
    let (ack, took) = push_card(&sim, &t, "lc-cb-1").await;
    assert_eq!(
        ack.data.as_deref(),
        Some(&br#"{"toast":{"type":"info","content":"seen"}}"#[..])
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    eprintln!("card callback over the long connection answered in {took:?}");

    // A card subscriber slower than card_deadline (2.5 s): Feishu gets the
    // fallback in the ack, within its 3 s, not a 500.
    card.set(Behaviour::Late(
        Duration::from_secs(4),
        "{\"late\":true}".into(),
    ));
    let (ack, took) = push_card(&sim, &t, "lc-cb-2").await;
    assert_eq!(ack.data.as_deref(), Some(&b"{}"[..]));
    assert!(took < Duration::from_secs(3), "{took:?}");
    eprintln!("card callback with a slow subscriber: the fallback acked in {took:?}");

    settle().await;
    // `["*"]` takes every type but card callbacks, which have their one
    // subscriber.
    assert_eq!((a.count(), b.count()), (2, 2));
    assert!(card.count() >= 1);
    assert_eq!(
        b.received()
            .iter()
            .map(|r| r.event_id())
            .collect::<Vec<_>>(),
        ["lc-ev-1", "lc-ev-3"]
    );
    assert_eq!(sim.long_conn_repushes(), 0, "every event was acked in time");

    let m = metrics_of(&http_client(), &gw).await;
    assert_long_connection_counts(&m, 4.0, 2.0);
    assert_eq!(
        metric_value(&m, r#"feishu_gateway_events_connection_up{app="ws-bot"}"#),
        Some(1.0)
    );
    assert_no_secret_in_logs();
    gw.shutdown();
    gw.wait().await;
    // The connection is closed at shutdown.
    wait_for(Duration::from_secs(5), || async {
        sim.long_conns(APP_ID).is_empty()
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_connection_cut_mid_stream_reconnects_and_no_acked_event_is_lost() {
    let a = Subscriber::start().await;
    let (sim, gw) = long_connection_stack(|c| {
        c.subscription(ws_sub(
            "ws-a",
            &["im.message.receive_v1"],
            &a.url(),
            "SECRET_A",
        ))
    })
    .await;
    let t = ws_target();
    let calls_before = sim.long_conn_endpoint_calls().len();
    let mut mids = Vec::new();
    for i in 0..30 {
        let ev = message(&t, &format!("cut-ev-{i}"), &format!("om_cut_{i}"));
        mids.push(sim.long_conn_push(APP_ID, &ev));
        if i == 10 || i == 20 {
            // The connection is back after the first cut (a connection
            // that lived under 5 s is followed by a 1 s wait).
            wait_for(Duration::from_secs(10), || async {
                sim.long_conns(APP_ID).len() == 1
            })
            .await;
            // Mid-stream: events in flight lose their connection.
            let how = if i == 10 {
                feishu_sim::CutMode::Drop
            } else {
                feishu_sim::CutMode::Close
            };
            assert_eq!(sim.cut_long_conns(APP_ID, how), 1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every event is eventually delivered exactly once (re-pushed when its
    // push or ack was lost with the connection).
    wait_for(Duration::from_secs(20), || async { a.count() >= 30 }).await;
    settle().await;
    let mut got: Vec<String> = a.received().iter().map(|r| r.event_id()).collect();
    assert_eq!(got.len(), 30, "delivered twice: {got:?}");
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 30);
    // Every event pushed is acked 200 in the end. Not necessarily by now:
    // an event delivered whose ack was lost with a cut connection is acked
    // on Feishu's re-push, and a re-push lost in the next cut waits for
    // the next one (150 ms, then 3 s at this scale).
    let unacked = || {
        let acked_ids: Vec<String> = sim
            .long_conn_acks()
            .into_iter()
            .filter(|a| a.code == Some(200))
            .map(|a| a.message_id)
            .collect();
        mids.iter()
            .filter(|m| !acked_ids.contains(m))
            .cloned()
            .collect::<Vec<_>>()
    };
    let acks_by = tokio::time::Instant::now() + Duration::from_secs(10);
    while !unacked().is_empty() && tokio::time::Instant::now() < acks_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(unacked(), Vec::<String>::new(), "never acked");
    // ... and those re-pushes delivered nothing twice.
    assert_eq!(a.count(), 30);
    // Two reconnects, each with a fresh endpoint call (a new ticket).
    assert!(sim.long_conn_endpoint_calls().len() >= calls_before + 2);
    assert_eq!(sim.long_conns(APP_ID).len(), 1);
    eprintln!(
        "cut twice mid-stream: 30 events delivered once each, {} re-pushes",
        sim.long_conn_repushes()
    );
    // The admin status page shows the app's connection up again, and the
    // three connections made (the first and two reconnects).
    let client = http_client();
    let status_json = || async {
        let page = admin_get(&client, &gw, "/status.json").await;
        serde_json::from_slice::<serde_json::Value>(&page.body).expect("JSON")
    };
    wait_for(Duration::from_secs(5), || async {
        status_json().await["long_connections"][0]["up"] == true
    })
    .await;
    let status = status_json().await;
    let lc = &status["long_connections"];
    assert_eq!(lc.as_array().map(Vec::len), Some(1), "{lc}");
    assert_eq!(lc[0]["app"], "ws-bot");
    assert!(lc[0]["connects"].as_u64() >= Some(3), "{lc}");
    assert_eq!(lc[0]["stopped"], serde_json::Value::Null);
    let html = admin_get(&client, &gw, "/status?refresh=0").await;
    let html = String::from_utf8_lossy(&html.body);
    assert!(
        html.contains(r#"<tr class="long-connection" data-app="ws-bot" data-up="true">"#),
        "{html}"
    );
    gw.shutdown();
    gw.wait().await;
    sim.shutdown().await;
}
