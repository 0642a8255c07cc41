//! Store apps through real sockets. Pushes go to a tiny event receiver that
//! checks each callback with the gateway's decoder (`feishu_gateway::events`,
//! a dev-dependency): the fake's Feishu side and the gateway's decoder must
//! agree.

use std::sync::Arc;

use http::Response;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use feishu_gateway::secret::Secret;
use feishu_gateway::store_apps::callback::{
    CallbackKeys, Event, EventError, Verifier, VerifyOptions,
};

const STORE: &str = "cli_store_app";
const STORE_SECRET: &str = "store-s3cret";
const ENCRYPT_KEY: &str = "kW3x-encrypt-key";
const VTOKEN: &str = "v-token-123";
const TENANT_A: &str = "tenant_a";
const TENANT_B: &str = "tenant_b";

fn store_app() -> SimStoreApp {
    SimStoreApp::new(STORE, STORE_SECRET, VTOKEN)
        .encrypt_key(ENCRYPT_KEY)
        .tenants([TENANT_A, TENANT_B])
}

/// One callback as the receiver saw and judged it.
#[derive(Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    verdict: Result<Event, EventError>,
}

/// A gateway-like event endpoint: verifies with `events`, answers the
/// challenge, 200 for events, 401/400 for refusals.
struct Receiver {
    url: String,
    rx: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(encrypt_key: Option<&str>, token: &str) -> Receiver {
        let verifier = Arc::new(Verifier::new(
            CallbackKeys {
                encrypt_key: encrypt_key.map(Secret::new),
                verification_token: Secret::new(token),
            },
            VerifyOptions {
                require_signature: encrypt_key.is_some(),
                ..VerifyOptions::default()
            },
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!(
            "http://{}/feishu/events/store",
            listener.local_addr().expect("addr")
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let verifier = Arc::clone(&verifier);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let verifier = Arc::clone(&verifier);
                        let tx = tx.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let verdict = verifier.verify(&parts.headers, &body);
                            let (status, answer) = match &verdict {
                                Ok(Event::UrlVerification { challenge }) => {
                                    (StatusCode::OK, json!({ "challenge": challenge }))
                                }
                                Ok(_) => (StatusCode::OK, json!({"code": 0})),
                                Err(
                                    EventError::BadSignature
                                    | EventError::BadToken
                                    | EventError::Stale,
                                ) => (StatusCode::UNAUTHORIZED, json!({"code": 401})),
                                Err(_) => (StatusCode::BAD_REQUEST, json!({"code": 400})),
                            };
                            let _ = tx.send(Received {
                                headers: parts.headers,
                                body,
                                verdict,
                            });
                            let mut resp =
                                Response::new(Full::new(Bytes::from(answer.to_string())));
                            *resp.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { url, rx, task }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("a callback within 5 s")
            .expect("receiver running")
    }
}

async fn post_json(c: &HttpClient, sim: &SimFeishu, path: &str, body: serde_json::Value) -> Reply {
    let url = format!("{}{path}", sim.base_url());
    let headers = [("content-type", "application/json; charset=utf-8")];
    send(c, Method::POST, url, &headers, &body.to_string()).await
}

async fn resend(c: &HttpClient, sim: &SimFeishu, secret: &str) -> Reply {
    let body = json!({"app_id": STORE, "app_secret": secret});
    post_json(c, sim, "/open-apis/auth/v3/app_ticket/resend", body).await
}

async fn app_token(c: &HttpClient, sim: &SimFeishu, ticket: &str) -> Reply {
    let body = json!({"app_id": STORE, "app_secret": STORE_SECRET, "app_ticket": ticket});
    post_json(c, sim, "/open-apis/auth/v3/app_access_token", body).await
}

async fn store_tenant_token(
    c: &HttpClient,
    sim: &SimFeishu,
    app_token: &str,
    tenant: &str,
) -> Reply {
    let body = json!({"app_access_token": app_token, "tenant_key": tenant});
    post_json(c, sim, "/open-apis/auth/v3/tenant_access_token", body).await
}

fn field(reply: &Reply, name: &str) -> String {
    assert_eq!(reply.code(), 0, "{:?}", reply.json);
    reply.json[name].as_str().expect(name).to_owned()
}

/// A ticket, the app token, and a tenant token for `tenant`.
async fn tenant_token_via_push(c: &HttpClient, sim: &SimFeishu, tenant: &str) -> String {
    let pushed = sim.push_ticket_now(STORE).await.expect("store app");
    let ticket = pushed.app_ticket.expect("ticket");
    let app = field(&app_token(c, sim, &ticket).await, "app_access_token");
    field(
        &store_tenant_token(c, sim, &app, tenant).await,
        "tenant_access_token",
    )
}

#[tokio::test]
async fn resend_pushes_an_encrypted_signed_ticket_that_events_accepts() {
    let mut receiver = Receiver::start(Some(ENCRYPT_KEY), VTOKEN).await;
    let sim = start(SimConfig::with_store_app(store_app())).await;
    assert!(sim.set_event_url(STORE, &receiver.url));
    let c = client();

    let reply = resend(&c, &sim, STORE_SECRET).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::OK, 0));
    assert_eq!(reply.json["msg"], "ok");

    let got = receiver.next().await;
    let ticket = sim.current_ticket(STORE).expect("a ticket was issued");
    assert_eq!(
        got.verdict,
        Ok(Event::AppTicket {
            app_id: STORE.into(),
            app_ticket: Secret::new(ticket.clone()),
        })
    );
    // Encrypted and signed on the wire.
    let outer: Value = serde_json::from_slice(&got.body).expect("json");
    assert!(outer["encrypt"].is_string() && outer.as_object().map(|o| o.len()) == Some(1));
    for name in [
        "x-lark-request-timestamp",
        "x-lark-request-nonce",
        "x-lark-signature",
    ] {
        assert!(got.headers.contains_key(name), "{name}");
    }
    assert!(!String::from_utf8_lossy(&got.body).contains(&ticket));

    // The push is recorded once the receiver has answered.
    let mut pushed = None;
    for _ in 0..1000 {
        pushed = sim.pushed_events().pop();
        if pushed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pushed = pushed.expect("the push is recorded");
    assert_eq!(pushed.status(), Some(StatusCode::OK));
    assert_eq!(pushed.event_type, "app_ticket");
    assert_eq!(pushed.app_ticket.as_deref(), Some(ticket.as_str()));
    assert_eq!(pushed.url, receiver.url);
    assert!(pushed.encrypted && pushed.signed);

    // The ticket buys an app token, which buys a tenant token, which works.
    let app = field(&app_token(&c, &sim, &ticket).await, "app_access_token");
    assert!(app.starts_with("a-"));
    let tenant = field(
        &store_tenant_token(&c, &sim, &app, TENANT_A).await,
        "tenant_access_token",
    );
    assert!(tenant.starts_with("t-"));
    let ok = put(&c, &sim, &tenant).await;
    assert_eq!((ok.status, ok.code()), (StatusCode::OK, 0));
    let record = sim.requests().pop().expect("recorded");
    assert_eq!(record.app_id.as_deref(), Some(STORE));
    assert_eq!(record.tenant_key.as_deref(), Some(TENANT_A));

    let calls: Vec<_> = sim
        .store_calls()
        .iter()
        .map(|c| (c.kind, c.ok, c.code))
        .collect();
    assert_eq!(
        calls,
        vec![
            (StoreCallKind::Resend, true, 0),
            (StoreCallKind::AppToken, true, 0),
            (StoreCallKind::TenantToken, true, 0),
        ]
    );
    let tenant_call = &sim.store_calls()[2];
    assert_eq!(tenant_call.app_id, STORE);
    assert_eq!(tenant_call.tenant_key.as_deref(), Some(TENANT_A));
    assert_eq!(tenant_call.token, tenant);
    assert_eq!(tenant_call.expire, 7200);
}

#[tokio::test]
async fn plain_apps_push_plain_unsigned_events() {
    let mut receiver = Receiver::start(None, VTOKEN).await;
    let app = SimStoreApp::new(STORE, STORE_SECRET, VTOKEN).event_url(&receiver.url);
    let sim = start(SimConfig::with_store_app(app)).await;
    let pushed = sim.push_ticket_now(STORE).await.expect("store app");
    assert_eq!(pushed.status(), Some(StatusCode::OK));
    assert!(!pushed.encrypted && !pushed.signed);
    let got = receiver.next().await;
    assert!(!got.headers.contains_key("x-lark-signature"));
    let event: Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(event["type"], "event_callback");
    assert_eq!(event["token"], VTOKEN);
    assert_eq!(event["event"]["type"], "app_ticket");
    assert_eq!(
        event["event"]["app_ticket"].as_str(),
        pushed.app_ticket.as_deref()
    );
    assert!(matches!(got.verdict, Ok(Event::AppTicket { .. })));
}

#[tokio::test]
async fn resend_waits_for_the_configured_delay() {
    let mut receiver = Receiver::start(Some(ENCRYPT_KEY), VTOKEN).await;
    let cfg = SimConfig {
        ticket_push_delay: Duration::from_millis(300),
        ..SimConfig::with_store_app(store_app().event_url(&receiver.url))
    };
    let sim = start(cfg).await;
    let c = client();
    let sent = std::time::Instant::now();
    assert_eq!(resend(&c, &sim, STORE_SECRET).await.code(), 0);
    assert_eq!(
        sim.current_ticket(STORE),
        None,
        "no ticket before the delay"
    );
    let got = receiver.next().await;
    assert!(sent.elapsed() >= Duration::from_millis(300));
    assert!(matches!(got.verdict, Ok(Event::AppTicket { .. })));

    // Wrong credentials: refused, nothing pushed.
    sim.set_ticket_push_delay(Duration::ZERO);
    let reply = resend(&c, &sim, "wrong").await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::BAD_REQUEST, 10014)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(receiver.rx.try_recv().is_err());
    assert_eq!(sim.pushed_events().len(), 1);
}

#[tokio::test]
async fn the_challenge_is_answered_and_foreign_keys_are_refused() {
    let receiver = Receiver::start(Some(ENCRYPT_KEY), VTOKEN).await;
    let other = SimStoreApp::new("cli_other", "x", "another-token")
        .encrypt_key("another key")
        .event_url(&receiver.url);
    let cfg = SimConfig {
        store_apps: vec![store_app().event_url(&receiver.url), other],
        ..SimConfig::default()
    };
    let sim = start(cfg).await;

    let check = sim.check_event_url(STORE).await.expect("store app");
    assert_eq!(check.event_type, "url_verification");
    assert!(
        check.encrypted && !check.signed,
        "Feishu's check is unsigned"
    );
    assert!(check.challenge_echoed(), "{:?}", check);

    // Another app's callbacks do not pass this app's endpoint.
    let foreign = sim.push_ticket_now("cli_other").await.expect("app");
    assert_eq!(foreign.status(), Some(StatusCode::UNAUTHORIZED));
    let foreign_check = sim.check_event_url("cli_other").await.expect("app");
    assert!(!foreign_check.challenge_echoed());

    // A signed event with the wrong verification token is refused too.
    let wrong = json!({"uuid": "u", "token": "nope", "ts": "1", "type": "event_callback",
                       "event": {"type": "app_ticket", "app_id": STORE, "app_ticket": "x"}});
    let pushed = sim.push_event(STORE, &wrong, true).await.expect("app");
    assert_eq!(pushed.status(), Some(StatusCode::UNAUTHORIZED));
    // Other events are taken and ignored.
    let other = json!({"schema": "2.0", "header": {"token": VTOKEN, "event_type": "im.message.receive_v1"}, "event": {}});
    let pushed = sim.push_event(STORE, &other, true).await.expect("app");
    assert_eq!(pushed.status(), Some(StatusCode::OK));
    assert_eq!(pushed.event_type, "im.message.receive_v1");
    assert!(sim.push_event("cli_unknown", &other, true).await.is_none());
}

#[tokio::test]
async fn pushes_without_a_reachable_event_url_are_recorded() {
    let sim = start(SimConfig::with_store_app(store_app())).await;
    let pushed = sim.push_ticket_now(STORE).await.expect("store app");
    assert_eq!(pushed.outcome, PushOutcome::NoEventUrl);
    assert!(pushed.app_ticket.is_some(), "the ticket is issued anyway");

    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/events", closed.local_addr().expect("addr"));
    drop(closed);
    sim.set_event_url(STORE, url);
    let pushed = sim.push_ticket_now(STORE).await.expect("store app");
    assert!(
        matches!(pushed.outcome, PushOutcome::Failed(_)),
        "{:?}",
        pushed.outcome
    );
    assert_eq!(sim.pushed_events().len(), 2);
    assert!(sim.push_ticket_now("cli_unknown").await.is_none());
    assert!(!sim.set_event_url("cli_unknown", "http://x"));
}

#[tokio::test]
async fn stale_and_unknown_tickets_answer_invalid_ticket_until_a_new_push() {
    let sim = start(SimConfig::with_store_app(store_app())).await;
    let c = client();

    let reply = app_token(&c, &sim, "never-issued").await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::BAD_REQUEST, 10012)
    );

    let old = sim
        .push_ticket_now(STORE)
        .await
        .and_then(|p| p.app_ticket)
        .expect("ticket");
    let app = field(&app_token(&c, &sim, &old).await, "app_access_token");
    // The same-token rule: asking again returns the same app token.
    assert_eq!(
        field(&app_token(&c, &sim, &old).await, "app_access_token"),
        app
    );

    assert!(sim.invalidate_tickets(STORE));
    assert_eq!(app_token(&c, &sim, &old).await.code(), 10012);
    // Issued tokens stay valid.
    field(
        &store_tenant_token(&c, &sim, &app, TENANT_A).await,
        "tenant_access_token",
    );

    let new = sim
        .push_ticket_now(STORE)
        .await
        .and_then(|p| p.app_ticket)
        .expect("ticket");
    assert_ne!(new, old);
    assert_eq!(app_token(&c, &sim, &new).await.code(), 0);

    // Wrong secret: 10014 before the ticket is looked at.
    let body = json!({"app_id": STORE, "app_secret": "wrong", "app_ticket": new});
    let reply = post_json(&c, &sim, "/open-apis/auth/v3/app_access_token", body).await;
    assert_eq!(reply.code(), 10014);
    // A self-built app cannot use the store endpoint.
    let body = json!({"app_id": APP, "app_secret": SECRET, "app_ticket": new});
    let reply = post_json(&c, &sim, "/open-apis/auth/v3/app_access_token", body).await;
    assert_eq!(reply.code(), 10014);

    // The code is configurable.
    let cfg = SimConfig {
        invalid_ticket_code: 20001,
        ..SimConfig::with_store_app(store_app())
    };
    let sim = start(cfg).await;
    assert_eq!(app_token(&c, &sim, "x").await.code(), 20001);
}

#[tokio::test]
async fn tenant_tokens_are_per_tenant_and_unknown_tenants_are_refused() {
    let cfg = SimConfig {
        store_apps: vec![store_app()],
        ..SimConfig::with_app(APP, SECRET)
    };
    let sim = start(cfg).await;
    let c = client();
    let ticket = sim
        .push_ticket_now(STORE)
        .await
        .and_then(|p| p.app_ticket)
        .expect("ticket");
    let app = field(&app_token(&c, &sim, &ticket).await, "app_access_token");

    let a = field(
        &store_tenant_token(&c, &sim, &app, TENANT_A).await,
        "tenant_access_token",
    );
    let b = field(
        &store_tenant_token(&c, &sim, &app, TENANT_B).await,
        "tenant_access_token",
    );
    assert_ne!(a, b);
    let again = field(
        &store_tenant_token(&c, &sim, &app, TENANT_A).await,
        "tenant_access_token",
    );
    assert_eq!(again, a, "same-token rule per tenant");

    let unknown = store_tenant_token(&c, &sim, &app, "tenant_nobody").await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::BAD_REQUEST, 99991665)
    );
    let missing = post_json(
        &c,
        &sim,
        "/open-apis/auth/v3/tenant_access_token",
        json!({"app_access_token": app}),
    )
    .await;
    assert_eq!(missing.code(), 99991665);
    assert!(sim.add_tenant(STORE, "tenant_nobody"));
    field(
        &store_tenant_token(&c, &sim, &app, "tenant_nobody").await,
        "tenant_access_token",
    );

    // Bad app tokens: never issued, or a self-built app's.
    assert_eq!(
        store_tenant_token(&c, &sim, "a-nope", TENANT_A)
            .await
            .code(),
        99991664
    );
    let url = format!(
        "{}/open-apis/auth/v3/app_access_token/internal",
        sim.base_url()
    );
    let body = json!({"app_id": APP, "app_secret": SECRET}).to_string();
    let own = send(&c, Method::POST, url, &[], &body).await;
    let own = field(&own, "app_access_token");
    assert_eq!(
        store_tenant_token(&c, &sim, &own, TENANT_A).await.code(),
        99991664
    );
    // A tenant token is not an app token.
    assert_eq!(
        store_tenant_token(&c, &sim, &a, TENANT_A).await.code(),
        99991664
    );

    let asked: Vec<_> = sim
        .store_calls()
        .iter()
        .filter(|c| c.kind == StoreCallKind::TenantToken)
        .map(|c| (c.tenant_key.clone(), c.ok))
        .collect();
    assert_eq!(asked[0], (Some(TENANT_A.to_owned()), true));
    assert_eq!(asked[3], (Some("tenant_nobody".to_owned()), false));
    assert_eq!(asked[4], (None, false));

    // Business answers: both tenants' tokens work and are told apart.
    put(&c, &sim, &a).await;
    put(&c, &sim, &b).await;
    let tenants: Vec<_> = sim
        .requests()
        .iter()
        .map(|r| r.tenant_key.clone())
        .collect();
    assert_eq!(tenants, vec![Some(TENANT_A.into()), Some(TENANT_B.into())]);
}

#[tokio::test(start_paused = true)]
async fn store_quotas_are_per_tenant() {
    let cfg = SimConfig {
        limits: vec![(3, Duration::from_secs(1))],
        store_apps: vec![store_app()],
        ..SimConfig::with_app(APP, SECRET)
    };
    let sim = start(cfg).await;
    let c = client();
    let a = tenant_token_via_push(&c, &sim, TENANT_A).await;
    let b = tenant_token_via_push(&c, &sim, TENANT_B).await;

    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(put(&c, &sim, &a).await.code());
    }
    assert_eq!(codes, vec![0, 0, 0, 99991400]);
    // Tenant B is not limited by A's flood, and neither is the self-built app.
    assert_eq!(put(&c, &sim, &b).await.code(), 0);
    let own = token_of(&c, &sim).await;
    assert_eq!(put(&c, &sim, &own).await.code(), 0);
    assert_eq!(sim.violations(), 1);

    let sec = Duration::from_secs(1);
    assert_eq!(
        sim.max_in_any_window_for_tenant(STORE, TENANT_A, "put_top_notice", sec),
        4
    );
    assert_eq!(
        sim.max_in_any_window_for_tenant(STORE, TENANT_B, "put_top_notice", sec),
        1
    );
    assert_eq!(sim.max_in_any_window(APP, "put_top_notice", sec), 1);
    // The store app has no quota of its own outside its tenants.
    assert_eq!(sim.max_in_any_window(STORE, "put_top_notice", sec), 0);

    sim.reset_records();
    assert!(sim.store_calls().is_empty() && sim.pushed_events().is_empty());
}

#[tokio::test]
async fn store_token_calls_take_injected_failures() {
    let sim = start(SimConfig::with_store_app(store_app())).await;
    let c = client();
    let ticket = sim
        .push_ticket_now(STORE)
        .await
        .and_then(|p| p.app_ticket)
        .expect("ticket");
    sim.fail_next_token_calls(2);
    // Resends are not token calls: they do not use up the injection.
    assert_eq!(resend(&c, &sim, STORE_SECRET).await.code(), 0);
    let failed = app_token(&c, &sim, &ticket).await;
    assert_eq!(
        (failed.status, failed.code()),
        (StatusCode::INTERNAL_SERVER_ERROR, 10012)
    );
    let failed = store_tenant_token(&c, &sim, "a-x", TENANT_A).await;
    assert_eq!(
        (failed.status, failed.code()),
        (StatusCode::INTERNAL_SERVER_ERROR, 10013)
    );
    assert_eq!(app_token(&c, &sim, &ticket).await.code(), 0);
}
