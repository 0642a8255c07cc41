//! The fake through real sockets, with a small hyper client.
//!
//! Tests that age tokens or quota windows pause tokio's clock and advance it;
//! the fake reads the same clock.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::*;

const APP: &str = "cli_sim_test";
const SECRET: &str = "s3cret";
const CHAT: &str = "oc_5ad11d72b830411d72b836c20";
const PIN_ANNOUNCEMENT: &str = r#"{"chat_top_notice":[{"action_type":"2"}]}"#;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An answer, with its body decoded as JSON (a body that is not JSON, as a
/// JSON string).
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

impl Reply {
    fn code(&self) -> i64 {
        self.json["code"].as_i64().unwrap_or(i64::MIN)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn try_send(
    client: &HttpClient,
    method: Method,
    url: String,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply, hyper_util::client::legacy::Error> {
    let mut req = Request::builder().method(method).uri(url);
    for &(name, value) in headers {
        req = req.header(name, value);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = client.request(req).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    // Every answer is JSON but the edge's HTML pages, kept as a JSON string.
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok(Reply {
        status,
        headers,
        json,
    })
}

async fn send(
    client: &HttpClient,
    method: Method,
    url: String,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    try_send(client, method, url, headers, body)
        .await
        .expect("answer")
}

/// A tenant token call, with no Content-Type (as the Python SDK sends it).
async fn tenant_token(client: &HttpClient, sim: &SimFeishu, app_id: &str, secret: &str) -> Reply {
    let url = format!(
        "{}/open-apis/auth/v3/tenant_access_token/internal",
        sim.base_url()
    );
    let body = serde_json::json!({"app_id": app_id, "app_secret": secret}).to_string();
    send(client, Method::POST, url, &[], &body).await
}

async fn token_of(client: &HttpClient, sim: &SimFeishu) -> String {
    let reply = tenant_token(client, sim, APP, SECRET).await;
    assert_eq!(reply.code(), 0, "{:?}", reply.json);
    reply.json["tenant_access_token"]
        .as_str()
        .expect("token")
        .to_owned()
}

/// `POST …/top_notice/<op>` with a bearer token.
async fn top_notice(
    client: &HttpClient,
    sim: &SimFeishu,
    op: &str,
    token: &str,
    chat: &str,
    body: &str,
) -> Reply {
    let url = format!(
        "{}/open-apis/im/v1/chats/{chat}/top_notice/{op}",
        sim.base_url()
    );
    let auth = format!("Bearer {token}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json; charset=utf-8"),
    ];
    send(client, Method::POST, url, &headers, body).await
}

async fn put(client: &HttpClient, sim: &SimFeishu, token: &str) -> Reply {
    top_notice(client, sim, "put_top_notice", token, CHAT, PIN_ANNOUNCEMENT).await
}

async fn start(cfg: SimConfig) -> SimFeishu {
    SimFeishu::start(cfg).await.expect("sim starts")
}

#[tokio::test(start_paused = true)]
async fn token_issue_and_the_thirty_minute_rule() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();

    let first = tenant_token(&c, &sim, APP, SECRET).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json["msg"], "ok");
    assert_eq!(first.json["expire"], 7200);
    assert_eq!(
        first.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let a = first.json["tenant_access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert!(a.starts_with("t-") && a.len() >= 42, "{a}");

    // Exactly 30 min left: the same token, with what remains.
    tokio::time::advance(Duration::from_secs(5400)).await;
    let same = tenant_token(&c, &sim, APP, SECRET).await;
    assert_eq!(same.json["tenant_access_token"], a.as_str());
    assert_eq!(same.json["expire"], 1800);

    // Less than 30 min left: a new token; the old one still works.
    tokio::time::advance(Duration::from_secs(1)).await;
    let b = token_of(&c, &sim).await;
    assert_ne!(a, b);
    assert_eq!(put(&c, &sim, &a).await.code(), 0);

    // The old token expires on its own schedule.
    tokio::time::advance(Duration::from_secs(1799)).await;
    let expired = put(&c, &sim, &a).await;
    assert_eq!(expired.status, StatusCode::BAD_REQUEST);
    assert_eq!(expired.code(), 99991663);
    assert_eq!(sim.expired_token_uses(), 1);
    assert_eq!(put(&c, &sim, &b).await.code(), 0);

    let verdicts: Vec<_> = sim.requests().iter().map(|r| r.token_verdict).collect();
    assert_eq!(
        verdicts,
        [
            TokenVerdict::Valid,
            TokenVerdict::Expired,
            TokenVerdict::Valid
        ]
    );
    let calls = sim.token_calls();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|t| t.ok && t.kind == TokenKind::Tenant));
    assert_eq!(calls[1].token, a);
    assert_eq!(calls[1].expire, 1800);
}

#[tokio::test]
async fn wrong_credentials_and_bad_bodies_on_token_calls() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();

    for (app_id, secret) in [(APP, "wrong"), ("cli_unknown", SECRET)] {
        let reply = tenant_token(&c, &sim, app_id, secret).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.code(), 10014);
        assert_eq!(reply.json["msg"], "app secret invalid");
    }

    let url = format!(
        "{}/open-apis/auth/v3/tenant_access_token/internal",
        sim.base_url()
    );
    let bad = send(&c, Method::POST, url, &[], "{not json").await;
    assert_eq!((bad.status, bad.code()), (StatusCode::BAD_REQUEST, 9499));

    // The app token endpoint hands out `app_access_token`.
    let url = format!(
        "{}/open-apis/auth/v3/app_access_token/internal",
        sim.base_url()
    );
    let body = format!(r#"{{"app_id":"{APP}","app_secret":"{SECRET}"}}"#);
    let headers = [("content-type", "application/json; charset=utf-8")];
    let app = send(&c, Method::POST, url, &headers, &body).await;
    assert_eq!(app.code(), 0);
    assert!(app.json["app_access_token"]
        .as_str()
        .is_some_and(|t| t.starts_with("a-")));
    assert_eq!(app.json["expire"], 7200);

    let calls = sim.token_calls();
    assert_eq!(
        calls.iter().map(|t| (t.ok, t.code)).collect::<Vec<_>>(),
        [(false, 10014), (false, 10014), (false, 9499), (true, 0)]
    );
    assert_eq!(calls[3].kind, TokenKind::App);
    assert!(
        sim.requests().is_empty(),
        "token calls are not business requests"
    );
}

#[tokio::test]
async fn missing_unknown_and_app_tokens_are_refused() {
    let cfg = SimConfig {
        token_invalid_status: StatusCode::UNAUTHORIZED,
        ..SimConfig::with_app(APP, SECRET)
    };
    let sim = start(cfg).await;
    let c = client();
    let url = format!(
        "{}/open-apis/im/v1/chats/{CHAT}/top_notice/put_top_notice",
        sim.base_url()
    );

    for auth in [None, Some("Basic abc"), Some("Bearer ")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let reply = send(&c, Method::POST, url.clone(), &headers, PIN_ANNOUNCEMENT).await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::BAD_REQUEST, 99991661)
        );
    }

    // App tokens are not tenant tokens.
    let url_app = format!(
        "{}/open-apis/auth/v3/app_access_token/internal",
        sim.base_url()
    );
    let creds = format!(r#"{{"app_id":"{APP}","app_secret":"{SECRET}"}}"#);
    let app = send(&c, Method::POST, url_app, &[], &creds).await;
    let app_token = app.json["app_access_token"].as_str().expect("app token");
    assert_eq!(put(&c, &sim, app_token).await.code(), 99991663);

    let unknown = put(&c, &sim, "t-never-issued").await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::UNAUTHORIZED, 99991663)
    );
    assert_eq!(sim.expired_token_uses(), 0);

    let records = sim.requests();
    assert_eq!(records.len(), 5);
    assert_eq!(records[0].token_verdict, TokenVerdict::Missing);
    assert_eq!(records[3].token_verdict, TokenVerdict::Unknown);
    assert_eq!(records[4].token_verdict, TokenVerdict::Unknown);
    assert_eq!(records[4].bearer.as_deref(), Some("t-never-issued"));
    assert_eq!(records[4].answered_status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(start_paused = true)]
async fn quota_throttles_the_sixth_call_in_a_second() {
    let cfg = SimConfig {
        limits: vec![(5, Duration::from_secs(1))],
        ..SimConfig::with_app(APP, SECRET)
    };
    let sim = start(cfg).await;
    let c = client();
    let token = token_of(&c, &sim).await;

    let mut codes = Vec::new();
    let mut throttled = None;
    for _ in 0..6 {
        let reply = put(&c, &sim, &token).await;
        codes.push(reply.code());
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some(reply);
        }
    }
    assert_eq!(codes, [0, 0, 0, 0, 0, 99991400]);
    let throttled = throttled.expect("one 429");
    assert_eq!(throttled.json["msg"], "request trigger frequency limit");
    assert_eq!(throttled.header("x-ogw-ratelimit-limit"), Some("5"));
    assert_eq!(throttled.header("x-ogw-ratelimit-reset"), Some("1"));
    assert_eq!(sim.violations(), 1);
    assert_eq!(
        sim.max_in_any_window(APP, "put_top_notice", Duration::from_secs(1)),
        6
    );

    // Another endpoint is another key.
    let del = top_notice(&c, &sim, "delete_top_notice", &token, CHAT, "").await;
    assert_eq!(del.code(), 0);

    // CountOnly counts but answers; Off does neither.
    sim.set_quota_mode(QuotaMode::CountOnly);
    assert_eq!(put(&c, &sim, &token).await.code(), 0);
    assert_eq!(sim.violations(), 2);
    sim.set_quota_mode(QuotaMode::Off);
    assert_eq!(put(&c, &sim, &token).await.code(), 0);
    assert_eq!(sim.violations(), 2);

    // The window slides: a second later calls pass again.
    sim.set_quota_mode(QuotaMode::Enforce);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(put(&c, &sim, &token).await.code(), 0);

    sim.reset_records();
    assert_eq!(sim.violations(), 0);
    assert_eq!(
        sim.max_in_any_window(APP, "put_top_notice", Duration::from_secs(1)),
        0
    );
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn magic_chat_ids_answer_their_error() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;

    for code in [
        230111, 232001, 232009, 232010, 232011, 232014, 232024, 232025, 232033, 232034,
    ] {
        let chat = format!("oc_error{code}");
        let reply = top_notice(&c, &sim, "put_top_notice", &token, &chat, PIN_ANNOUNCEMENT).await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::BAD_REQUEST, code)
        );
        let msg = reply.json["msg"].as_str().unwrap_or("");
        assert!(!msg.is_empty() && !msg.starts_with("sim"), "{code}: {msg}");
    }
    let del = top_notice(
        &c,
        &sim,
        "delete_top_notice",
        &token,
        "oc_error232011",
        "{}",
    )
    .await;
    assert_eq!(del.code(), 232011);

    // GET chat echoes the chat id and the query.
    let url = format!(
        "{}/open-apis/im/v1/chats/{CHAT}?user_id_type=open_id",
        sim.base_url()
    );
    let auth = format!("Bearer {token}");
    let chat = send(&c, Method::GET, url, &[("authorization", &auth)], "").await;
    assert_eq!(chat.code(), 0);
    assert_eq!(chat.json["data"]["chat_id"], CHAT);
    assert_eq!(chat.json["data"]["name"], "Sim chat");
    assert_eq!(chat.json["data"]["query"], "user_id_type=open_id");
    let last = sim.requests().pop().expect("recorded");
    assert_eq!(last.endpoint, Some("get_chat"));
    assert_eq!(last.query.as_deref(), Some("user_id_type=open_id"));
    assert_eq!(last.app_id.as_deref(), Some(APP));
}

#[tokio::test]
async fn body_contract_is_enforced_over_http() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;

    let ok_put = [
        PIN_ANNOUNCEMENT,
        r#"{"chat_top_notice":[{"action_type":"1","message_id":"om_dc13264520392913993dd051dba21dcf"}]}"#,
    ];
    for body in ok_put {
        let reply = top_notice(&c, &sim, "put_top_notice", &token, CHAT, body).await;
        assert_eq!(reply.status, StatusCode::OK, "{body}");
        assert_eq!(
            reply.json,
            serde_json::json!({"code":0,"msg":"success","data":{}})
        );
    }
    let bad_put = [
        "",
        "{}",
        r#"{"chat_top_notice":[]}"#,
        r#"{"chat_top_notice":[{"action_type":1}]}"#,
        r#"{"chat_top_notice":[{"action_type":"1"}]}"#,
    ];
    for body in bad_put {
        let reply = top_notice(&c, &sim, "put_top_notice", &token, CHAT, body).await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::BAD_REQUEST, 232001),
            "{body}"
        );
    }
    for (body, code) in [("", 0), ("{}", 0), (r#"{"x":1}"#, 0), ("[]", 232001)] {
        let reply = top_notice(&c, &sim, "delete_top_notice", &token, CHAT, body).await;
        assert_eq!(reply.code(), code, "{body}");
    }
    // The body is recorded as received.
    let records = sim.requests();
    assert_eq!(records[1].body, Bytes::from(ok_put[1]));
    assert_eq!(records[1].endpoint, Some("put_top_notice"));
}

#[tokio::test]
async fn unknown_routes_answer_404_with_a_logid() {
    let sim = start(SimConfig::default()).await;
    let c = client();
    let url = format!("{}/open-apis/not/in/the/catalog", sim.base_url());
    let reply = send(&c, Method::POST, url, &[], "{}").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.json,
        serde_json::json!({"code":404,"msg":"404 page not found"})
    );
    assert!(reply.header("x-tt-logid").is_some());
    // Wrong method on a known path.
    let url = format!(
        "{}/open-apis/im/v1/chats/{CHAT}/top_notice/put_top_notice",
        sim.base_url()
    );
    assert_eq!(send(&c, Method::GET, url, &[], "").await.code(), 404);
    assert_eq!(sim.requests()[0].endpoint, None);
}

#[tokio::test]
async fn fail_next_token_calls_answers_500() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    sim.fail_next_token_calls(2);

    let tenant = tenant_token(&c, &sim, APP, SECRET).await;
    assert_eq!(
        (tenant.status, tenant.code()),
        (StatusCode::INTERNAL_SERVER_ERROR, 10013)
    );
    let url = format!(
        "{}/open-apis/auth/v3/app_access_token/internal",
        sim.base_url()
    );
    let body = format!(r#"{{"app_id":"{APP}","app_secret":"{SECRET}"}}"#);
    let app = send(&c, Method::POST, url, &[], &body).await;
    assert_eq!(
        (app.status, app.code()),
        (StatusCode::INTERNAL_SERVER_ERROR, 10012)
    );

    assert_eq!(tenant_token(&c, &sim, APP, SECRET).await.code(), 0);
    let oks: Vec<bool> = sim.token_calls().iter().map(|t| t.ok).collect();
    assert_eq!(oks, [false, false, true]);
}

#[tokio::test]
async fn invalidate_all_tokens_forgets_them() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let a = token_of(&c, &sim).await;
    assert_eq!(put(&c, &sim, &a).await.code(), 0);

    sim.invalidate_all_tokens();
    let refused = put(&c, &sim, &a).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::BAD_REQUEST, 99991663)
    );
    assert_eq!(sim.expired_token_uses(), 0, "unknown, not expired");

    let b = token_of(&c, &sim).await;
    assert_ne!(a, b);
    assert_eq!(put(&c, &sim, &b).await.code(), 0);
}

#[tokio::test]
async fn drop_next_connections_closes_without_an_answer() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;

    sim.drop_next_connections(1);
    let url = format!(
        "{}/open-apis/im/v1/chats/{CHAT}/top_notice/put_top_notice",
        sim.base_url()
    );
    let auth = format!("Bearer {token}");
    let dropped = try_send(
        &c,
        Method::POST,
        url,
        &[("authorization", &auth)],
        PIN_ANNOUNCEMENT,
    )
    .await;
    assert!(dropped.is_err(), "{dropped:?}");

    assert_eq!(put(&c, &sim, &token).await.code(), 0);
    assert_eq!(sim.requests().len(), 1, "dropped requests are not recorded");
}

#[tokio::test]
async fn answer_next_with_code_overrides_business_answers() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;

    sim.answer_next_with_code(99991663, StatusCode::BAD_REQUEST, 1);
    let replay = put(&c, &sim, &token).await;
    assert_eq!(
        (replay.status, replay.code()),
        (StatusCode::BAD_REQUEST, 99991663)
    );
    assert_eq!(put(&c, &sim, &token).await.code(), 0);

    sim.answer_next_with_code(99991400, StatusCode::TOO_MANY_REQUESTS, 2);
    for _ in 0..2 {
        let limited = put(&c, &sim, &token).await;
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.code(), 99991400);
        assert_eq!(limited.header("x-ogw-ratelimit-limit"), Some("50"));
        assert_eq!(limited.header("x-ogw-ratelimit-reset"), Some("1"));
    }
    assert_eq!(put(&c, &sim, &token).await.code(), 0);
    // Token calls are not affected.
    sim.answer_next_with_code(232011, StatusCode::BAD_REQUEST, 1);
    assert_eq!(tenant_token(&c, &sim, APP, SECRET).await.code(), 0);
    assert_eq!(put(&c, &sim, &token).await.code(), 232011);

    let codes: Vec<i64> = sim.requests().iter().map(|r| r.answered_code).collect();
    assert_eq!(codes, [99991663, 0, 99991400, 99991400, 0, 232011]);
}

#[tokio::test]
async fn answer_next_from_edge_answers_html_without_a_code() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;

    sim.answer_next_from_edge(StatusCode::SERVICE_UNAVAILABLE, 2);
    // Token calls are not affected.
    assert_eq!(tenant_token(&c, &sim, APP, SECRET).await.code(), 0);
    for _ in 0..2 {
        let edge = put(&c, &sim, &token).await;
        assert_eq!(edge.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(edge.header("content-type"), Some("text/html"));
        let page = edge.json.as_str().expect("an HTML page, not JSON");
        assert!(page.contains("503 Service Unavailable"), "{page}");
    }
    assert_eq!(put(&c, &sim, &token).await.code(), 0);
    let codes: Vec<i64> = sim.requests().iter().map(|r| r.answered_code).collect();
    assert_eq!(codes, [-1, -1, 0]);
}

#[tokio::test(start_paused = true)]
async fn delay_header_and_latency_hold_the_answer() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;

    sim.set_latency(Duration::from_millis(200));
    let t0 = Instant::now();
    let url = format!(
        "{}/open-apis/im/v1/chats/{CHAT}/top_notice/delete_top_notice",
        sim.base_url()
    );
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str()), ("x-sim-delay-ms", "300")];
    let reply = send(&c, Method::POST, url, &headers, "").await;
    assert_eq!(reply.code(), 0);
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    // The request is recorded on arrival, before the wait.
    assert!(sim.requests()[0].arrived < t0 + Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn token_lifetime_can_change_while_running() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    sim.set_token_lifetime(Duration::from_secs(1000));
    let short = tenant_token(&c, &sim, APP, SECRET).await;
    assert_eq!(short.json["expire"], 1000);
    let token = short.json["tenant_access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    tokio::time::advance(Duration::from_secs(1000)).await;
    assert_eq!(put(&c, &sim, &token).await.code(), 99991663);
    assert_eq!(sim.expired_token_uses(), 1);
}

#[tokio::test]
async fn logid_and_content_type_are_title_cased_on_the_wire() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let body = format!(r#"{{"app_id":"{APP}","app_secret":"{SECRET}"}}"#);
    let request = format!(
        "POST /open-apis/auth/v3/tenant_access_token/internal HTTP/1.1\r\n\
         Host: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        sim.addr(),
        body.len()
    );
    let mut stream = TcpStream::connect(sim.addr()).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let raw = String::from_utf8(raw).expect("utf-8");
    let head = raw.split("\r\n\r\n").next().unwrap_or("");

    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("\r\nContent-Type: application/json; charset=utf-8\r\n"),
        "{head}"
    );
    let logid = head
        .split("\r\n")
        .find_map(|line| line.strip_prefix("X-Tt-Logid: "))
        .expect("X-Tt-Logid, title-cased");
    assert_eq!(logid.len(), 34);
    assert!(logid
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()));
    assert_eq!(sim.token_calls()[0].logid, logid);
}

#[tokio::test]
async fn every_answer_has_a_fresh_logid_and_records_it() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;
    let one = put(&c, &sim, &token).await;
    let two = put(&c, &sim, "t-unknown").await;
    let ids = [one.header("x-tt-logid"), two.header("x-tt-logid")];
    assert!(ids[0].is_some() && ids[0] != ids[1]);
    let recorded: Vec<String> = sim.requests().into_iter().map(|r| r.logid).collect();
    assert_eq!(
        recorded
            .iter()
            .map(|s| Some(s.as_str()))
            .collect::<Vec<_>>(),
        ids
    );
}

#[tokio::test]
async fn serves_http2_too() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let token = token_of(&c, &sim).await;
    let reply = put(&c, &sim, &token).await;
    assert_eq!(reply.code(), 0);
    assert!(reply.header("x-tt-logid").is_some());
    assert_eq!(sim.requests()[0].version, http::Version::HTTP_2);
}

#[tokio::test]
async fn without_recording_counters_and_arrivals_still_work() {
    let cfg = SimConfig {
        record_requests: false,
        limits: vec![(2, Duration::from_secs(60))],
        ..SimConfig::with_app(APP, SECRET)
    };
    let sim = start(cfg).await;
    let c = client();
    let token = token_of(&c, &sim).await;
    for _ in 0..3 {
        put(&c, &sim, &token).await;
    }
    assert!(sim.requests().is_empty());
    assert_eq!(sim.violations(), 1);
    assert_eq!(
        sim.max_in_any_window(APP, "put_top_notice", Duration::from_secs(60)),
        3
    );
    assert_eq!(sim.token_calls().len(), 1);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    token_of(&c, &sim).await;
    let url = format!(
        "{}/open-apis/auth/v3/tenant_access_token/internal",
        sim.base_url()
    );
    sim.shutdown().await;
    // The pooled connection is closed and no new one is accepted.
    let after = try_send(&c, Method::POST, url, &[], "{}").await;
    assert!(after.is_err(), "{after:?}");
}

#[tokio::test]
async fn start_on_uses_the_given_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sim = SimFeishu::start_on(listener, SimConfig::with_app(APP, SECRET))
        .await
        .expect("start");
    assert_eq!(sim.addr(), addr);
    assert_eq!(sim.base_url(), format!("http://{addr}"));
    assert_eq!(tenant_token(&client(), &sim, APP, SECRET).await.code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_are_all_counted() {
    let cfg = SimConfig {
        quota: QuotaMode::CountOnly,
        limits: vec![(50, Duration::from_secs(60))],
        ..SimConfig::with_app(APP, SECRET)
    };
    let sim = std::sync::Arc::new(start(cfg).await);
    let token = token_of(&client(), &sim).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (sim, token) = (std::sync::Arc::clone(&sim), token.clone());
        tasks.spawn(async move {
            let c = client();
            for _ in 0..25 {
                assert_eq!(put(&c, &sim, &token).await.code(), 0);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("client task");
    }
    assert_eq!(sim.requests().len(), 100);
    assert_eq!(sim.violations(), 50);
    let window = Duration::from_secs(60);
    assert_eq!(sim.max_in_any_window(APP, "put_top_notice", window), 100);
}

// ----- HTTPS ---------------------------------------------------------------

/// A rustls client config trusting only `ca_pem`, offering `alpn`.
fn trusting(ca_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA cert");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

fn tls_sim_config() -> SimConfig {
    SimConfig {
        tls: true,
        ..SimConfig::with_app(APP, SECRET)
    }
}

#[tokio::test]
async fn https_offers_h2_by_alpn_and_records_the_version() {
    let sim = start(tls_sim_config()).await;
    assert_eq!(sim.base_url(), format!("https://{}", sim.addr()));
    let ca = sim.ca_pem().expect("a CA in TLS mode");
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(trusting(&ca, &[]))
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let c = Client::builder(TokioExecutor::new()).build(https);
    let url = format!(
        "{}/open-apis/auth/v3/tenant_access_token/internal",
        sim.base_url()
    );
    let body = serde_json::json!({"app_id": APP, "app_secret": SECRET}).to_string();
    let req = Request::post(url)
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = c.request(req).await.expect("answer over HTTPS");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let json: Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("JSON");
    let token = json["tenant_access_token"].as_str().expect("token");

    let url = format!(
        "{}/open-apis/im/v1/chats/{CHAT}/top_notice/put_top_notice",
        sim.base_url()
    );
    let req = Request::post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(PIN_ANNOUNCEMENT)))
        .expect("request");
    let resp = c.request(req).await.expect("answer over HTTPS");
    assert_eq!(resp.status(), StatusCode::OK);
    let recorded = sim.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].version, http::Version::HTTP_2);
    assert_eq!(recorded[0].answered_code, 0);
}

#[tokio::test]
async fn https_http1_answers_are_title_cased_and_untrusted_clients_fail() {
    let sim = start(tls_sim_config()).await;
    let ca = sim.ca_pem().expect("a CA in TLS mode");

    // A client that does not trust the CA fails its handshake, and the fake
    // goes on serving.
    let stranger = tokio_rustls::TlsConnector::from(std::sync::Arc::new(trusting(
        &crate::ca::TestCa::new("other").expect("CA").cert_pem(),
        &[b"http/1.1"],
    )));
    let tcp = TcpStream::connect(sim.addr()).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    assert!(stranger.connect(name.clone(), tcp).await.is_err());

    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(trusting(&ca, &[b"http/1.1"])));
    let tcp = TcpStream::connect(sim.addr()).await.expect("connect");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let request = format!(
        "POST /open-apis/im/v1/chats/{CHAT}/top_notice/put_top_notice HTTP/1.1\r\n\
         Host: localhost\r\nAuthorization: Bearer t-unknown\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{PIN_ANNOUNCEMENT}",
        PIN_ANNOUNCEMENT.len()
    );
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    // The fake closes without close_notify; what was read is enough.
    let _ = tls.read_to_end(&mut raw).await;
    let raw = String::from_utf8(raw).expect("utf-8");
    let head = raw.split("\r\n\r\n").next().unwrap_or("");
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    assert!(head.contains("\r\nContent-Type: "), "{head}");
    assert!(head.contains("\r\nX-Tt-Logid: "), "{head}");
    let recorded = sim.requests();
    assert_eq!(recorded[0].version, http::Version::HTTP_11);
    assert_eq!(recorded[0].answered_code, 99991663);
}

/// Store apps: resend, pushes, tickets, tenant tokens and quotas.
mod store;

/// The catalog: generic answers, windows, per-resource limits, throttle
/// answers and the budget.
mod catalog;
