//! The accept loop and the request phases.
//!
//! A request goes through these phases, in Feishu's order:
//!
//! 1. read: the whole body is read; a pending `drop_next_connections` then
//!    closes the connection with no answer.
//! 2. route: token calls go to [`token_call`], store-app calls to
//!    [`store_call`], everything else is a business request ([`business`]).
//! 3. business requests: the bearer token is judged (and an expired one
//!    counted) for the records, then [`decide`] runs injected answers, route
//!    (the catalog, else 404), token check, the endpoint's windows, throttle
//!    answers set by tests, the per-resource limit, body contract, magic
//!    chat ids, success and the monthly budget; the first phase that
//!    answers ends it.
//! 4. wait: `X-Sim-Delay-Ms` (any request) plus the configured latency
//!    (business requests) or token latency (token calls) plus the write
//!    time of an admitted bitable write or drive upload, with no lock held;
//!    such a write holds its in-flight slot until then.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::answer::{code, new_logid, Answer, RateLimitHeaders};
use super::catalog::{self, Endpoint, ResourceRule};
use super::contract;
use super::push::schedule_ticket_push;
use super::quota::Over;
use super::resource::{self, CallSite, InFlight, Refusal};
use super::state::{lock, Shared, Throttle};
use super::tokens::Holder;
use super::upload;
use super::{
    QuotaMode, RecordedRequest, ResourceViolation, StoreCall, StoreCallKind, TokenCall, TokenKind,
    TokenVerdict,
};

/// Bodies larger than this close the connection.
const MAX_BODY: usize = 8 << 20;

/// Per-request delay header, in milliseconds.
const X_SIM_DELAY_MS: &str = "x-sim-delay-ms";

/// Returned by the service to make hyper close the connection without
/// writing an answer.
#[derive(Debug, thiserror::Error)]
#[error("sim: connection dropped without an answer")]
struct Dropped;

/// How long a TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept connections until the task is aborted. Connections live in a
/// `JoinSet` owned by this task, so aborting it closes them all. With `tls`,
/// each connection does its handshake in its own task, so a slow or broken
/// client never holds up the accept loop.
pub(crate) async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The Python SDK looks up `X-Tt-Logid` and `Content-Type` case-sensitively.
    builder.http1().title_case_headers(true);
    let builder = Arc::new(builder);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Answers are one small write: do not let Nagle hold them.
                    let _ = stream.set_nodelay(true);
                    let shared = Arc::clone(&shared);
                    let builder = Arc::clone(&builder);
                    let tls = tls.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req| handle(Arc::clone(&shared), req));
                        let served = match tls {
                            None => builder.serve_connection(TokioIo::new(stream), service).await,
                            Some(tls) => {
                                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                                    Ok(Ok(stream)) => {
                                        builder.serve_connection(TokioIo::new(stream), service).await
                                    }
                                    Ok(Err(e)) => {
                                        tracing::debug!(error = %e, "sim: TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => {
                                        tracing::debug!("sim: TLS handshake timed out");
                                        return;
                                    }
                                }
                            }
                        };
                        if let Err(e) = served {
                            tracing::debug!(error = %e, "sim: connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "sim: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            // Reap finished connections so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One request, all phases.
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (parts, body) = req.into_parts();
    // A multipart upload is read as it streams (upload.rs), never held
    // whole, then goes the way of every business request; a cut-off one is
    // recorded and not answered.
    let (body, upload) = match upload::route(&parts.method, parts.uri.path(), &parts.headers) {
        Some(kind) => match upload::read(&shared, &parts, body, kind).await {
            Some(read) => (Bytes::new(), Some(read)),
            None => return Err(Dropped),
        },
        None => match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => (collected.to_bytes(), None),
            Err(_) => return Err(Dropped),
        },
    };
    if parts.uri.path() == OTLP_TRACES {
        return Ok(otlp(&shared, &parts.method, &body));
    }
    if parts.uri.path() == super::ws::ENDPOINT_PATH {
        return Ok(super::ws::endpoint(&shared, &parts.method, &body));
    }
    if shared.faults.take_drop() {
        return Err(Dropped);
    }
    let arrived = Instant::now();
    let logid = new_logid();
    let mut wait = sim_delay(&parts.headers);

    let decided = match auth_route(&parts.method, parts.uri.path()) {
        Some(AuthRoute::SelfBuilt(kind)) => {
            wait += shared.token_latency();
            token_call(&shared, kind, &body, arrived, &logid).into()
        }
        Some(AuthRoute::Store(kind)) => {
            wait += shared.token_latency();
            store_call(&shared, kind, &body, arrived, &logid).into()
        }
        None => {
            wait += shared.latency();
            let mut decided = business(&shared, parts, body, arrived, &logid);
            if let Some(read) = upload {
                decided.answer = upload::answer(&shared, read, decided.answer);
            }
            decided
        }
    };
    // An admitted write is in flight until it is answered (or the client
    // goes away and this future is dropped).
    let Decided {
        answer,
        in_flight,
        write_time,
    } = decided;
    wait += write_time;
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    drop(in_flight);
    Ok(answer.into_response(&logid))
}

/// An OpenTelemetry collector's OTLP/HTTP traces endpoint, so that a
/// gateway's `[tracing]` can export to the fake (`benches/load.sh
/// --tracing`).
const OTLP_TRACES: &str = "/v1/traces";

/// `POST /v1/traces`: the export is counted and dropped, and answered as a
/// collector does (an empty `ExportTraceServiceResponse`). `GET`: the
/// counts so far, as JSON.
fn otlp(shared: &Shared, method: &Method, body: &Bytes) -> Response<Full<Bytes>> {
    let (status, content_type, answer) = if method == Method::POST {
        shared.otlp_exports.fetch_add(1, Ordering::Relaxed);
        shared
            .otlp_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        (StatusCode::OK, "application/x-protobuf", Bytes::new())
    } else {
        let counts = json!({
            "exports": shared.otlp_exports.load(Ordering::Relaxed),
            "bytes": shared.otlp_bytes.load(Ordering::Relaxed),
        });
        (
            StatusCode::OK,
            "application/json",
            Bytes::from(counts.to_string()),
        )
    };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(answer))
        .expect("a valid answer")
}

/// `X-Sim-Delay-Ms: <n>`, or zero.
fn sim_delay(headers: &HeaderMap) -> Duration {
    headers
        .get(X_SIM_DELAY_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
}

// ----- token calls ---------------------------------------------------------

/// The auth endpoints: self-built apps' token calls and store-app calls.
#[derive(Debug, Clone, Copy)]
enum AuthRoute {
    SelfBuilt(TokenKind),
    Store(StoreCallKind),
}

fn auth_route(method: &Method, path: &str) -> Option<AuthRoute> {
    if method != Method::POST {
        return None;
    }
    match path {
        "/open-apis/auth/v3/tenant_access_token/internal" => {
            Some(AuthRoute::SelfBuilt(TokenKind::Tenant))
        }
        "/open-apis/auth/v3/app_access_token/internal" => {
            Some(AuthRoute::SelfBuilt(TokenKind::App))
        }
        "/open-apis/auth/v3/app_ticket/resend" => Some(AuthRoute::Store(StoreCallKind::Resend)),
        "/open-apis/auth/v3/app_access_token" => Some(AuthRoute::Store(StoreCallKind::AppToken)),
        "/open-apis/auth/v3/tenant_access_token" => {
            Some(AuthRoute::Store(StoreCallKind::TenantToken))
        }
        _ => None,
    }
}

/// A JSON object body, or `None`.
fn json_object(body: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
}

/// A token call: injected failure, then body, then credentials, then the
/// token book. Any or no `Content-Type` is accepted (the Python SDK sends
/// none).
fn token_call(
    shared: &Shared,
    kind: TokenKind,
    body: &[u8],
    arrived: Instant,
    logid: &str,
) -> Answer {
    let parsed = json_object(body);
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
    };
    let app_id = field("app_id").unwrap_or("");

    let mut grant = None;
    let answer = if shared.faults.take_token_failure() {
        let failed = match kind {
            TokenKind::Tenant => code::GET_TENANT_TOKEN_FAILED,
            TokenKind::App => code::GET_APP_TOKEN_FAILED,
        };
        Answer::error(StatusCode::INTERNAL_SERVER_ERROR, failed)
    } else if parsed.is_none() {
        Answer::error(StatusCode::BAD_REQUEST, code::BAD_REQUEST)
    } else if !shared.credentials_ok(app_id, field("app_secret").unwrap_or("")) {
        // One code for a wrong id or a wrong secret: do not reveal which.
        Answer::error(StatusCode::BAD_REQUEST, code::APP_SECRET_INVALID)
    } else {
        let g = lock(&shared.tokens).grant(kind, app_id, None, Instant::now());
        let field = match kind {
            TokenKind::Tenant => "tenant_access_token",
            TokenKind::App => "app_access_token",
        };
        let body = json!({"code": 0, "msg": "ok", field: g.token, "expire": g.expire});
        grant = Some(g);
        Answer::json(StatusCode::OK, 0, &body)
    };

    let call = TokenCall {
        kind,
        app_id: app_id.to_owned(),
        ok: grant.is_some(),
        token: grant.as_ref().map(|g| g.token.clone()).unwrap_or_default(),
        expire: grant.as_ref().map_or(0, |g| g.expire),
        code: answer.code,
        arrived,
        logid: logid.to_owned(),
    };
    lock(&shared.token_calls).push(call);
    answer
}

// ----- store-app calls -----------------------------------------------------

/// `{"code":code,"msg":msg}` with HTTP 400.
fn refused(code: i64, msg: &str) -> Answer {
    Answer::json(
        StatusCode::BAD_REQUEST,
        code,
        &json!({"code": code, "msg": msg}),
    )
}

/// A store-app call: resend, app token (with a ticket) or tenant token (with
/// an app token). Injected token failures apply to the two token calls.
fn store_call(
    shared: &Arc<Shared>,
    kind: StoreCallKind,
    body: &[u8],
    arrived: Instant,
    logid: &str,
) -> Answer {
    let parsed = json_object(body);
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
    };
    let mut call = StoreCall {
        kind,
        app_id: field("app_id").unwrap_or("").to_owned(),
        tenant_key: None,
        ok: false,
        token: String::new(),
        expire: 0,
        code: 0,
        arrived,
        logid: logid.to_owned(),
    };
    let injected = kind != StoreCallKind::Resend && shared.faults.take_token_failure();

    let answer = if injected {
        let failed = match kind {
            StoreCallKind::TenantToken => code::GET_TENANT_TOKEN_FAILED,
            _ => code::GET_APP_TOKEN_FAILED,
        };
        Answer::error(StatusCode::INTERNAL_SERVER_ERROR, failed)
    } else if parsed.is_none() {
        Answer::error(StatusCode::BAD_REQUEST, code::BAD_REQUEST)
    } else {
        match kind {
            StoreCallKind::Resend | StoreCallKind::AppToken => {
                let credentials_ok = lock(&shared.store)
                    .credentials_ok(&call.app_id, field("app_secret").unwrap_or(""));
                if !credentials_ok {
                    Answer::error(StatusCode::BAD_REQUEST, code::APP_SECRET_INVALID)
                } else if kind == StoreCallKind::Resend {
                    schedule_ticket_push(shared, &call.app_id);
                    call.ok = true;
                    Answer::json(StatusCode::OK, 0, &json!({"code": 0, "msg": "ok"}))
                } else {
                    app_token(shared, &mut call, field("app_ticket").unwrap_or(""))
                }
            }
            StoreCallKind::TenantToken => {
                call.tenant_key = field("tenant_key").map(str::to_owned);
                tenant_token(shared, &mut call, field("app_access_token"))
            }
        }
    };
    call.code = answer.code;
    lock(&shared.store_calls).push(call);
    answer
}

/// `app_access_token` for a store app whose credentials were checked.
fn app_token(shared: &Shared, call: &mut StoreCall, ticket: &str) -> Answer {
    if !lock(&shared.store).ticket_ok(&call.app_id, ticket) {
        return refused(shared.invalid_ticket_code, "app ticket is invalid");
    }
    let g = lock(&shared.tokens).grant(TokenKind::App, &call.app_id, None, Instant::now());
    let body = json!({"code": 0, "msg": "ok", "app_access_token": g.token, "expire": g.expire});
    call.ok = true;
    call.token = g.token;
    call.expire = g.expire;
    Answer::json(StatusCode::OK, 0, &body)
}

/// `tenant_access_token` for (the app token's app, `call.tenant_key`).
fn tenant_token(shared: &Shared, call: &mut StoreCall, app_token: Option<&str>) -> Answer {
    let now = Instant::now();
    let (verdict, holder) = lock(&shared.tokens).check(TokenKind::App, app_token, now);
    let app = match (verdict, holder) {
        (TokenVerdict::Valid, Some(Holder { app_id, .. }))
            if lock(&shared.store).is_store_app(&app_id) =>
        {
            app_id
        }
        (TokenVerdict::Expired, _) => {
            return Answer::error(StatusCode::BAD_REQUEST, code::APP_TOKEN_EXPIRED)
        }
        _ => return Answer::error(StatusCode::BAD_REQUEST, code::INVALID_APP_TOKEN),
    };
    call.app_id = app.to_string();
    let tenant = call.tenant_key.as_deref().unwrap_or("");
    if !lock(&shared.store).tenant_ok(&app, tenant) {
        return refused(
            shared.unknown_tenant_code,
            "tenant key invalid: the app is not installed in this tenant",
        );
    }
    let g = lock(&shared.tokens).grant(TokenKind::Tenant, &app, Some(tenant), now);
    let body = json!({"code": 0, "msg": "ok", "tenant_access_token": g.token, "expire": g.expire});
    call.ok = true;
    call.token = g.token;
    call.expire = g.expire;
    Answer::json(StatusCode::OK, 0, &body)
}

// ----- business requests ---------------------------------------------------

/// A business request as the phases see it.
#[derive(Clone, Copy)]
struct Call<'a> {
    /// The catalog endpoint it matched, or `None` (404).
    endpoint: Option<&'static Endpoint>,
    path: &'a str,
    query: Option<&'a str>,
    body: &'a [u8],
}

/// What the phases decided: the answer, and for an admitted write its
/// in-flight slot and how long it takes.
pub(crate) struct Decided {
    pub(crate) answer: Answer,
    pub(crate) in_flight: Option<InFlight>,
    pub(crate) write_time: Duration,
}

impl From<Answer> for Decided {
    fn from(answer: Answer) -> Self {
        Decided {
            answer,
            in_flight: None,
            write_time: Duration::ZERO,
        }
    }
}

/// The token of `Authorization: Bearer <token>`, if well-formed.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    let well_formed = scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && !token.contains(char::is_whitespace);
    well_formed.then_some(token)
}

/// A business request: judge the token, decide, record.
fn business(
    shared: &Arc<Shared>,
    parts: Parts,
    body: Bytes,
    arrived: Instant,
    logid: &str,
) -> Decided {
    let endpoint = catalog::route(&parts.method, parts.uri.path());
    let bearer = bearer_token(&parts.headers);
    let (verdict, holder) = lock(&shared.tokens).judge(bearer, Instant::now());
    if verdict == TokenVerdict::Expired {
        shared.expired_uses.fetch_add(1, Ordering::Relaxed);
    }

    let call = Call {
        endpoint,
        path: parts.uri.path(),
        query: parts.uri.query(),
        body: &body,
    };
    let decided = decide(shared, call, verdict, holder.as_ref());

    if shared.record_requests {
        let answer = &decided.answer;
        let record = RecordedRequest {
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            version: parts.version,
            bearer: bearer.map(str::to_owned),
            token_verdict: verdict,
            app_id: holder.as_ref().map(|h| h.app_id.to_string()),
            tenant_key: holder
                .as_ref()
                .and_then(|h| h.tenant_key.as_deref())
                .map(str::to_owned),
            endpoint: endpoint.map(Endpoint::name),
            template: endpoint.map(|e| e.template),
            answered_code: answer.code,
            answered_status: answer.status,
            logid: logid.to_owned(),
            arrived,
            method: parts.method,
            headers: parts.headers,
            body,
        };
        lock(&shared.requests).push(record);
    }
    decided
}

/// The phases that decide a business answer; the first that answers wins.
fn decide(
    shared: &Arc<Shared>,
    call: Call<'_>,
    verdict: TokenVerdict,
    holder: Option<&Holder>,
) -> Decided {
    // Injected answers replace everything, so tests get exactly what they ask.
    if let Some(status) = shared.faults.take_edge() {
        return Answer::edge(status).into();
    }
    if let Some((code, status)) = shared.faults.take_injected() {
        return injected(shared, call.endpoint, code, status).into();
    }

    // Unknown routes answer 404 whatever the token.
    let Some(ep) = call.endpoint else {
        return Answer::error(StatusCode::NOT_FOUND, code::NOT_FOUND).into();
    };

    // a. token: the token identifies the app (and a store app's tenant).
    let holder = match (verdict, holder) {
        (TokenVerdict::Valid, Some(holder)) => holder,
        (TokenVerdict::Missing, _) => {
            return Answer::error(StatusCode::BAD_REQUEST, code::MISSING_TOKEN).into()
        }
        _ => return Answer::error(shared.token_invalid_status, code::INVALID_TENANT_TOKEN).into(),
    };
    let app = &*holder.app_id;
    let tenant = holder.tenant_key.as_deref();
    let mode = shared.quota_mode();

    // b. the endpoint's windows per (app[, tenant], endpoint); every call
    // with a valid token is an arrival, throttled ones included.
    shared.endpoint_arrivals[ep.index].fetch_add(1, Ordering::Relaxed);
    let over = {
        let mut book = lock(&shared.quota);
        // Read the clock under the lock so each log is in arrival order.
        book.arrive(app, tenant, ep.index, Instant::now())
    };
    let mut violated = false;
    if over.is_some() && mode != QuotaMode::Off {
        count_violation(shared, ep);
        violated = true;
    }

    // c. a throttle answer set by the test.
    if let Some(t) = shared.throttles.take(ep.index, Instant::now()) {
        return throttle_answer(shared, ep, t).into();
    }
    if let (Some(Over { limit, reset_secs }), QuotaMode::Enforce) = (over, mode) {
        let headers = RateLimitHeaders {
            limit: Some(limit),
            reset_secs,
        };
        let status = documented_status(code::RATE_LIMITED);
        return Answer::throttled(status, code::RATE_LIMITED, headers).into();
    }

    // d. the per-resource limit, if the endpoint has one and the call
    // carries its key.
    let mut decided = Decided::from(Answer::success_empty());
    let site = CallSite {
        endpoint: ep,
        path: call.path,
        query: call.query,
        body: call.body,
        app_id: app,
        tenant_key: tenant,
    };
    if let Some((rule, key)) = ep
        .resource
        .and_then(|rule| Some((rule, resource::key_of(rule, &site)?)))
    {
        let refusal = lock(&shared.resources).arrive(rule, &key, Instant::now());
        if let (Some(refusal), true) = (refusal, mode != QuotaMode::Off) {
            if !violated {
                count_violation(shared, ep);
            }
            let answer = resource_answer(rule, refusal);
            lock(&shared.resource_violations).push(ResourceViolation {
                rule,
                key: key.clone(),
                endpoint: ep.name(),
                app_id: app.to_owned(),
                tenant_key: tenant.map(str::to_owned),
                code: answer.code,
                status: answer.status,
                concurrent: refusal == Refusal::Busy,
                at: Instant::now(),
            });
            if mode == QuotaMode::Enforce {
                return answer.into();
            }
        }
        if rule.is_write() {
            decided.in_flight = Some(InFlight::take(shared, rule, key));
            decided.write_time = shared.write_time;
        }
    }

    // e. body contract.
    let body_ok = match ep.name() {
        "put_top_notice" => contract::put_top_notice_ok(call.body),
        "delete_top_notice" => contract::delete_top_notice_ok(call.body),
        _ => true,
    };
    if !body_ok {
        return Answer::error(StatusCode::BAD_REQUEST, code::INVALID_PARAM).into();
    }

    // f. magic chat ids: `oc_error<code>` answers that error.
    let chat_id = ep.param(call.path, "chat_id");
    if let Some(code) = chat_id
        .and_then(|c| c.strip_prefix("oc_error"))
        .and_then(|c| c.parse::<i64>().ok())
        .filter(|&c| c != 0)
    {
        return Answer::error(StatusCode::BAD_REQUEST, code).into();
    }

    // g. success.
    if ep.name() == "get_chat" {
        let data = json!({
            "chat_id": chat_id.unwrap_or(""),
            "name": "Sim chat",
            "query": call.query.unwrap_or(""),
        });
        decided.answer = Answer::json(
            StatusCode::OK,
            0,
            &json!({"code": 0, "msg": "success", "data": data}),
        );
    }

    // h. the monthly budget of a self-built app: a successful counted call
    // uses one, or is refused once none is left.
    if let (Some(budget), None) = (shared.monthly_budget, tenant) {
        if !catalog::budget_exempt(call.path) && !spend_budget(shared, app, budget) {
            shared.budget_refused.fetch_add(1, Ordering::Relaxed);
            let status = documented_status(code::MONTHLY_BUDGET);
            return Answer::error(status, code::MONTHLY_BUDGET).into();
        }
    }
    decided
}

/// Use one call of `app`'s budget; false when none is left.
fn spend_budget(shared: &Shared, app: &str, budget: u64) -> bool {
    let mut used = lock(&shared.budget_used);
    let used = match used.get_mut(app) {
        Some(n) => n,
        None => used.entry(app.to_owned()).or_insert(0),
    };
    if *used >= budget {
        return false;
    }
    *used += 1;
    true
}

/// One more request over a limit, at `ep`.
fn count_violation(shared: &Shared, ep: &Endpoint) {
    shared.violations.fetch_add(1, Ordering::Relaxed);
    shared.endpoint_violations[ep.index].fetch_add(1, Ordering::Relaxed);
}

/// The first HTTP status `data/throttle-codes.tsv` documents for `code`.
fn documented_status(code: i64) -> StatusCode {
    catalog::throttle_code(code).map_or(StatusCode::TOO_MANY_REQUESTS, |t| t.statuses[0])
}

/// The answer to a call refused by its resource limit.
fn resource_answer(rule: ResourceRule, refusal: Refusal) -> Answer {
    match (rule, refusal) {
        (ResourceRule::DocxDocument, Refusal::Over(Over { limit, reset_secs })) => {
            let headers = RateLimitHeaders {
                limit: Some(limit),
                reset_secs,
            };
            Answer::throttled(rule.status(), rule.code(), headers)
        }
        _ => Answer::error(rule.status(), rule.code()),
    }
}

/// The window `x-ogw-ratelimit-limit` names for `ep`: its shortest.
fn headline_limit(shared: &Shared, ep: &Endpoint) -> Option<(u32, Duration)> {
    lock(&shared.quota)
        .windows(ep.index)
        .iter()
        .min_by_key(|w| w.1)
        .copied()
}

/// A throttle answer set by the test, with `x-ogw-ratelimit-reset` when it
/// has a reset.
fn throttle_answer(shared: &Shared, ep: &Endpoint, t: Throttle) -> Answer {
    match t.reset_secs {
        Some(reset_secs) => {
            let limit = headline_limit(shared, ep).map(|w| w.0);
            Answer::throttled(t.status, t.code, RateLimitHeaders { limit, reset_secs })
        }
        None => Answer::error(t.status, t.code),
    }
}

/// An `answer_next_with_code` answer; 99991400 carries the rate-limit headers
/// of the endpoint's shortest window, when it has one.
fn injected(
    shared: &Shared,
    endpoint: Option<&'static Endpoint>,
    code: i64,
    status: StatusCode,
) -> Answer {
    let window = endpoint.and_then(|ep| headline_limit(shared, ep));
    match window {
        Some((limit, window)) if code == code::RATE_LIMITED => {
            let headers = RateLimitHeaders {
                limit: Some(limit),
                reset_secs: window.as_secs().max(1),
            };
            Answer::throttled(status, code, headers)
        }
        _ => Answer::error(status, code),
    }
}
