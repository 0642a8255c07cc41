//! Feishu's long connection ("长连接", feishu-platform.md §5), the server
//! side: the endpoint call, the WebSocket server speaking `pbbp2.Frame`
//! ([`frame`](super::frame)), event pushes with their acks and re-pushes,
//! and the test controls on [`SimFeishu`].
//!
//! # What the fake does
//!
//! - `POST /callback/ws/endpoint` (not under `/open-apis`) with
//!   `{"AppID","AppSecret"}` of a self-built app answers HTTP 200
//!   `{"code":0,"msg":"ok","data":{"URL":"ws://127.0.0.1:<port>/ws/v2?device_id=…&service_id=…&ticket=…","ClientConfig":{…}}}`
//!   (`wss://` with [`SimConfig::tls`](super::SimConfig::tls)). Wrong
//!   credentials answer [`BAD_CREDENTIALS`] (HTTP 200: a non-zero code,
//!   which the SDKs treat as fatal); [`SimFeishu::fail_long_conn_endpoint`]
//!   makes the next calls answer any code (1 = SYSTEM_BUSY, retried).
//! - The WebSocket server listens on a port of its own. The ticket of the
//!   URL is good for one handshake within [`SimFeishu::set_long_conn_ticket_ttl`]
//!   (default 5 minutes). A failed upgrade answers with the
//!   `handshake-status`, `handshake-msg` and `handshake-autherrcode`
//!   headers: 514 + 1000040350 over the connection limit (default 50 per
//!   app), 403 for an app blocked by [`SimFeishu::block_long_conn_app`],
//!   514 + [`BAD_TICKET_AUTH_CODE`] for an unknown, used or expired ticket,
//!   or what [`SimFeishu::refuse_long_conn_handshakes`] injects.
//! - A client's ping (`CONTROL`, `type=ping`) is answered by a pong whose
//!   payload is the current ClientConfig JSON
//!   ([`SimFeishu::set_long_conn_client_config`]).
//! - [`SimFeishu::long_conn_push`] pushes an event to ONE random live
//!   connection of the app: `DATA` frames with `type=event`, `message_id`,
//!   `sum`, `seq`, `trace_id`, split into fragments of at most
//!   [`SimFeishu::set_long_conn_fragment_size`] payload bytes. It waits for
//!   the ack (the same frame back, payload `{"code":200[,"data":"<base64>"]}`)
//!   for [`SimFeishu::set_long_conn_ack_timeout`] (3 s); without a 200 ack
//!   in time (no live connection, no ack, a late ack or another code) it
//!   re-pushes after 15 s, 5 min, 1 h and 6 h (times
//!   [`SimFeishu::set_long_conn_retry_scale`]), then gives up.
//!   [`SimFeishu::long_conn_push_duplicate`] pushes an event once more,
//!   acked or not, as Feishu's at-least-once delivery may.
//!
//! A re-push or duplicate keeps the event's `message_id` with a new
//! `trace_id` and `SeqID`; acks are matched to pushes by `SeqID`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use http_body_util::Full;
use prost::Message as _;
use rand::Rng;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

use super::frame::{Frame, CONTROL, DATA};
use super::state::{lock, Shared};
use super::SimFeishu;

/// The endpoint call's path.
pub(crate) const ENDPOINT_PATH: &str = "/callback/ws/endpoint";
/// The WebSocket's path.
const WS_PATH: &str = "/ws/v2";

/// The code the endpoint call answers for wrong credentials. UNCONFIRMED:
/// Feishu's code for it is not documented; any code but 0, 1 and
/// 1000040343 is fatal for the SDKs, and so is this one.
pub const BAD_CREDENTIALS: i64 = 10014;
/// SYSTEM_BUSY: the SDKs (but Node) retry it.
pub const SYSTEM_BUSY: i64 = 1;
/// The handshake's `handshake-autherrcode` over the connection limit.
pub const EXCEED_CONN_LIMIT: i64 = 1000040350;
/// `handshake-autherrcode` (with 514) for an unknown, used or expired
/// ticket. UNCONFIRMED: not documented; not 1000040350, so clients retry.
pub const BAD_TICKET_AUTH_CODE: i64 = 1000040343;
/// The handshake status for an authentication failure.
pub const AUTH_FAILED: u16 = 514;
/// The handshake status for a blocked app.
pub const FORBIDDEN: u16 = 403;

/// Largest frame the fake reads from a client.
const MAX_CLIENT_FRAME: usize = 1 << 20;
/// The webhook schedule re-pushes follow (feishu-platform.md §6).
const RETRY_SCHEDULE: [Duration; 4] = [
    Duration::from_secs(15),
    Duration::from_secs(5 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(6 * 60 * 60),
];

/// The settings Feishu hands a client, in seconds: in the endpoint answer
/// and in every pong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongConnClientConfig {
    /// Reconnect attempts after a loss; -1 = forever.
    pub reconnect_count: i64,
    /// Seconds between reconnect attempts.
    pub reconnect_interval: u64,
    /// Upper bound of the random wait before the first attempt, seconds.
    pub reconnect_nonce: u64,
    /// Seconds between a client's pings.
    pub ping_interval: u64,
}

impl Default for LongConnClientConfig {
    /// The SDKs' defaults (feishu-platform.md §5.2).
    fn default() -> Self {
        LongConnClientConfig {
            reconnect_count: -1,
            reconnect_interval: 120,
            reconnect_nonce: 30,
            ping_interval: 120,
        }
    }
}

impl LongConnClientConfig {
    fn to_json(self) -> Value {
        json!({
            "ReconnectCount": self.reconnect_count,
            "ReconnectInterval": self.reconnect_interval,
            "ReconnectNonce": self.reconnect_nonce,
            "PingInterval": self.ping_interval,
        })
    }
}

/// How [`SimFeishu::cut_long_conns`] ends connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// A WebSocket close frame, then the socket closed.
    Close,
    /// The socket closed with no close frame (as a dropped TCP connection
    /// looks to the client).
    Drop,
}

/// One live connection.
#[derive(Debug, Clone)]
pub struct LongConnection {
    /// The fake's id of the connection.
    pub id: u64,
    /// Its app.
    pub app_id: String,
    /// `device_id` of its URL.
    pub device_id: String,
    /// `service_id` of its URL.
    pub service_id: i32,
    /// When its handshake succeeded.
    pub opened: Instant,
}

/// One endpoint call.
#[derive(Debug, Clone)]
pub struct LongConnEndpointCall {
    /// The `AppID` it claimed.
    pub app_id: String,
    /// The `code` answered.
    pub code: i64,
    /// The ticket handed out (code 0 only).
    pub ticket: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

/// One WebSocket handshake (upgrade request), accepted or refused.
#[derive(Debug, Clone)]
pub struct LongConnHandshake {
    /// The app of the ticket, when the ticket was good.
    pub app_id: Option<String>,
    /// 101 when accepted, else the `handshake-status` answered.
    pub status: u16,
    /// The `handshake-autherrcode` answered, if any.
    pub auth_code: Option<i64>,
    /// When it arrived.
    pub at: Instant,
}

/// One ping received.
#[derive(Debug, Clone)]
pub struct LongConnPing {
    /// The connection.
    pub conn: u64,
    /// Its app.
    pub app_id: String,
    /// The frame's `service` field.
    pub service: i32,
    /// When it arrived.
    pub at: Instant,
}

/// One push of an event (all its fragments) to one connection.
#[derive(Debug, Clone)]
pub struct LongConnDelivery {
    /// The event's `message_id`.
    pub message_id: String,
    /// Its app.
    pub app_id: String,
    /// The connection it went to; `None` when the app had none live.
    pub conn: Option<u64>,
    /// 0 for the first push, then 1..=4 for the re-pushes.
    pub attempt: u32,
    /// Whether it was a deliberate duplicate.
    pub duplicate: bool,
    /// How many frames it took.
    pub fragments: u32,
    /// The frames' `SeqID`.
    pub seq_id: u64,
    /// When its last frame was handed to the connection.
    pub at: Instant,
}

/// One ack (a data frame from a client).
#[derive(Debug, Clone)]
pub struct LongConnAck {
    /// The `message_id` header it carried.
    pub message_id: String,
    /// The connection it came on.
    pub conn: u64,
    /// Its app.
    pub app_id: String,
    /// `SeqID` of the frame.
    pub seq_id: u64,
    /// The payload's `code` (`None` when the payload is not such JSON).
    pub code: Option<i64>,
    /// The payload's `data`, base64-decoded: a callback's answer.
    pub data: Option<Vec<u8>>,
    /// The raw payload.
    pub payload: Vec<u8>,
    /// The `biz_rt` header (handler time in ms), if any.
    pub biz_rt: Option<String>,
    /// Every header of the frame, in order.
    pub headers: Vec<(String, String)>,
    /// Whether it answered a push still waiting for it (not late, not
    /// unknown).
    pub on_time: bool,
    /// Time from the push's last frame to this ack, for on-time acks.
    pub latency: Option<Duration>,
    /// When it arrived.
    pub at: Instant,
}

/// Where an event pushed with [`SimFeishu::long_conn_push`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongConnEventState {
    /// Not acked yet; pushes may be left.
    Pending,
    /// Acked with code 200 in time.
    Acked,
    /// Every push (the first and four re-pushes) went unacked.
    GaveUp,
}

/// What a connection's task is told to do.
enum Cmd {
    Send(Vec<Bytes>),
    Cut(CutMode),
}

struct Ticket {
    app_id: String,
    device_id: String,
    service_id: i32,
    expires: Instant,
}

struct Live {
    info: LongConnection,
    tx: mpsc::UnboundedSender<Cmd>,
}

struct Waiting {
    tx: oneshot::Sender<bool>,
    sent: Instant,
}

struct EventRecord {
    app_id: String,
    payload: Bytes,
    state: LongConnEventState,
}

struct Knobs {
    client_config: LongConnClientConfig,
    endpoint_fail: Option<(i64, u32)>,
    handshake_fail: Option<(u16, Option<i64>, u32)>,
    blocked: HashSet<String>,
    conn_limit: usize,
    fragment_size: Option<usize>,
    ack_timeout: Duration,
    retry_scale: f64,
    ticket_ttl: Duration,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            client_config: LongConnClientConfig::default(),
            endpoint_fail: None,
            handshake_fail: None,
            blocked: HashSet::new(),
            conn_limit: 50,
            fragment_size: None,
            ack_timeout: Duration::from_secs(3),
            retry_scale: 1.0,
            ticket_ttl: Duration::from_secs(300),
        }
    }
}

#[derive(Default)]
struct Book {
    knobs: Knobs,
    tickets: HashMap<String, Ticket>,
    conns: HashMap<u64, Live>,
    waiting: HashMap<u64, Waiting>,
    events: HashMap<String, EventRecord>,
    endpoint_calls: Vec<LongConnEndpointCall>,
    handshakes: Vec<LongConnHandshake>,
    pings: Vec<LongConnPing>,
    deliveries: Vec<LongConnDelivery>,
    acks: Vec<LongConnAck>,
    /// Frames from clients that did not decode.
    bad_frames: u64,
}

/// The long connection's state, one field of [`Shared`].
#[derive(Default)]
pub(crate) struct LongConns {
    /// `ws://127.0.0.1:<port>` or `wss://…`, set at start.
    base: OnceLock<String>,
    ids: AtomicU64,
    book: Mutex<Book>,
}

impl std::fmt::Debug for LongConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LongConns")
            .field("base", &self.base.get())
            .finish_non_exhaustive()
    }
}

impl LongConns {
    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }
}

// ----- the endpoint call ---------------------------------------------------

/// `POST /callback/ws/endpoint`.
pub(crate) fn endpoint(
    shared: &Shared,
    method: &Method,
    body: &[u8],
) -> http::Response<Full<Bytes>> {
    let answer = |status: StatusCode, v: Value| {
        http::Response::builder()
            .status(status)
            .header(
                http::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            )
            .body(Full::new(Bytes::from(v.to_string())))
            .expect("a valid answer")
    };
    if method != Method::POST {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"code": 405, "msg": "method not allowed"}),
        );
    }
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let field = |name: &str| parsed.get(name).and_then(Value::as_str).unwrap_or("");
    let app_id = field("AppID");
    let lc = &shared.long_conns;
    let mut book = lock(&lc.book);
    let now = Instant::now();
    let mut ticket = None;
    let (code, v) = if let Some(code) = take_count(&mut book.knobs.endpoint_fail) {
        let msg = if code == SYSTEM_BUSY {
            "system busy"
        } else {
            "injected"
        };
        (code, json!({"code": code, "msg": msg}))
    } else if !shared.credentials_ok(app_id, field("AppSecret")) {
        (
            BAD_CREDENTIALS,
            json!({"code": BAD_CREDENTIALS, "msg": "app secret invalid"}),
        )
    } else {
        let (t, device_id, service_id) = {
            let mut rng = rand::thread_rng();
            let t: String = (0..24)
                .map(|_| format!("{:02x}", rng.gen::<u8>()))
                .collect();
            (
                t,
                rng.gen_range(1_000_000_000u64..9_999_999_999).to_string(),
                rng.gen_range(1..i32::MAX),
            )
        };
        book.tickets.retain(|_, t| t.expires > now);
        let ttl = book.knobs.ticket_ttl;
        book.tickets.insert(
            t.clone(),
            Ticket {
                app_id: app_id.to_owned(),
                device_id: device_id.clone(),
                service_id,
                expires: now + ttl,
            },
        );
        let base = lc.base.get().map_or("ws://127.0.0.1:0", String::as_str);
        let url =
            format!("{base}{WS_PATH}?device_id={device_id}&service_id={service_id}&ticket={t}");
        ticket = Some(t);
        let config = book.knobs.client_config.to_json();
        (
            0,
            json!({"code": 0, "msg": "ok", "data": {"URL": url, "ClientConfig": config}}),
        )
    };
    book.endpoint_calls.push(LongConnEndpointCall {
        app_id: app_id.to_owned(),
        code,
        ticket,
        at: now,
    });
    answer(StatusCode::OK, v)
}

/// Takes one from an injected fault's count; clears it at zero.
fn take_count<T: Copy>(slot: &mut Option<(T, u32)>) -> Option<T> {
    let (v, n) = slot.as_mut()?;
    let v = *v;
    *n -= 1;
    if *n == 0 {
        *slot = None;
    }
    Some(v)
}

fn take_count3(slot: &mut Option<(u16, Option<i64>, u32)>) -> Option<(u16, Option<i64>)> {
    let (s, c, n) = slot.as_mut()?;
    let v = (*s, *c);
    *n -= 1;
    if *n == 0 {
        *slot = None;
    }
    Some(v)
}

// ----- the WebSocket server ------------------------------------------------

/// Binds the WebSocket listener and serves it from a task of
/// `shared.push_tasks` (aborted when the fake stops).
pub(crate) async fn start(shared: &Arc<Shared>, tls: Option<TlsAcceptor>) -> std::io::Result<()> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr: SocketAddr = listener.local_addr()?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let _ = shared.long_conns.base.set(format!("{scheme}://{addr}"));
    lock(&shared.push_tasks).spawn(serve(listener, tls, Arc::clone(shared)));
    Ok(())
}

async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = Arc::clone(&shared);
                    let tls = tls.clone();
                    conns.spawn(async move {
                        match tls {
                            None => session(stream, shared).await,
                            Some(tls) => {
                                let accepted = tokio::time::timeout(
                                    Duration::from_secs(10),
                                    tls.accept(stream),
                                ).await;
                                if let Ok(Ok(stream)) = accepted {
                                    session(stream, shared).await;
                                }
                            }
                        }
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// The refusal of an upgrade, with Feishu's `handshake-*` headers.
fn refusal(status: u16, msg: &str, auth_code: Option<i64>) -> ErrorResponse {
    let mut b = http::Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN))
        .header("handshake-status", status.to_string())
        .header("handshake-msg", msg);
    if let Some(c) = auth_code {
        b = b.header("handshake-autherrcode", c.to_string());
    }
    b.body(Some(msg.to_owned())).expect("a valid refusal")
}

/// A refused upgrade: `handshake-status`, `handshake-msg`, and
/// `handshake-autherrcode` when there is one.
type Refused = (u16, &'static str, Option<i64>);

/// The handshake's verdict: a registered connection, or a refusal.
fn admit(
    shared: &Shared,
    req: &Request,
    tx: mpsc::UnboundedSender<Cmd>,
) -> Result<LongConnection, Refused> {
    let lc = &shared.long_conns;
    let now = Instant::now();
    let query = req.uri().query().unwrap_or("");
    let ticket = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("ticket="))
        .unwrap_or("");
    let mut book = lock(&lc.book);
    let mut record = LongConnHandshake {
        app_id: None,
        status: 101,
        auth_code: None,
        at: now,
    };
    let verdict = (|| {
        if req.uri().path() != WS_PATH {
            return Err((404, "not found", None));
        }
        let t = match book.tickets.remove(ticket) {
            Some(t) if t.expires > now => t,
            _ => return Err((AUTH_FAILED, "invalid ticket", Some(BAD_TICKET_AUTH_CODE))),
        };
        record.app_id = Some(t.app_id.clone());
        if let Some((status, code)) = take_count3(&mut book.knobs.handshake_fail) {
            return Err((status, "injected", code));
        }
        if book.knobs.blocked.contains(&t.app_id) {
            return Err((FORBIDDEN, "forbidden", None));
        }
        let live = book
            .conns
            .values()
            .filter(|c| c.info.app_id == t.app_id)
            .count();
        if live >= book.knobs.conn_limit {
            return Err((AUTH_FAILED, "exceed conn limit", Some(EXCEED_CONN_LIMIT)));
        }
        Ok(t)
    })();
    let answer = match verdict {
        Ok(t) => {
            let info = LongConnection {
                id: lc.next_id(),
                app_id: t.app_id,
                device_id: t.device_id,
                service_id: t.service_id,
                opened: now,
            };
            book.conns.insert(
                info.id,
                Live {
                    info: info.clone(),
                    tx,
                },
            );
            Ok(info)
        }
        Err(refused) => {
            record.status = refused.0;
            record.auth_code = refused.2;
            Err(refused)
        }
    };
    book.handshakes.push(record);
    answer
}

/// One client connection: the upgrade, then frames both ways until either
/// side ends it.
async fn session<S>(stream: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (tx, mut cmds) = mpsc::unbounded_channel();
    let mut admitted = None;
    // The callback's type is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| match admit(&shared, req, tx) {
        Ok(info) => {
            admitted = Some(info);
            Ok(resp)
        }
        Err((status, msg, code)) => Err(refusal(status, msg, code)),
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_FRAME))
        .max_frame_size(Some(MAX_CLIENT_FRAME));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await;
    let Some(info) = admitted else {
        return;
    };
    let Ok(ws) = ws else {
        lock(&shared.long_conns.book).conns.remove(&info.id);
        return;
    };
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let Some(pong) = on_frame(&shared, &info, &b) {
                        if sink.send(Message::Binary(pong)).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Send(frames)) => {
                    let mut failed = false;
                    for f in frames {
                        if sink.send(Message::Binary(f)).await.is_err() {
                            failed = true;
                            break;
                        }
                    }
                    if failed {
                        break;
                    }
                }
                Some(Cmd::Cut(CutMode::Close)) => {
                    let normal = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    };
                    let _ = sink.send(Message::Close(Some(normal))).await;
                    // Wait a moment for the client's close frame.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Some(Ok(m)) = stream.next().await {
                            if m.is_close() {
                                break;
                            }
                        }
                    })
                    .await;
                    break;
                }
                Some(Cmd::Cut(CutMode::Drop)) | None => break,
            },
        }
    }
    lock(&shared.long_conns.book).conns.remove(&info.id);
}

/// A frame from a client: a ping (answered with a pong, returned) or an
/// ack (recorded, and handed to the push waiting for it).
fn on_frame(shared: &Shared, conn: &LongConnection, bytes: &[u8]) -> Option<Bytes> {
    let lc = &shared.long_conns;
    let mut book = lock(&lc.book);
    let Ok(frame) = Frame::decode(bytes) else {
        book.bad_frames += 1;
        return None;
    };
    let now = Instant::now();
    match frame.method {
        CONTROL if frame.header("type") == Some("ping") => {
            book.pings.push(LongConnPing {
                conn: conn.id,
                app_id: conn.app_id.clone(),
                service: frame.service,
                at: now,
            });
            let mut pong = Frame {
                service: conn.service_id,
                method: CONTROL,
                payload: Some(book.knobs.client_config.to_json().to_string().into_bytes()),
                ..Frame::default()
            };
            pong.push_header("type", "pong");
            Some(Bytes::from(pong.encode_to_vec()))
        }
        DATA => {
            let payload = frame.payload.clone().unwrap_or_default();
            let parsed: Option<Value> = serde_json::from_slice(&payload).ok();
            let code = parsed.as_ref().and_then(|v| v["code"].as_i64());
            let data = parsed
                .as_ref()
                .and_then(|v| v["data"].as_str())
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
            let waiting = book.waiting.remove(&frame.seq_id);
            let latency = waiting.as_ref().map(|w| now.duration_since(w.sent));
            let on_time = waiting.is_some();
            if let Some(w) = waiting {
                let _ = w.tx.send(code == Some(200));
            }
            book.acks.push(LongConnAck {
                message_id: frame.header("message_id").unwrap_or("").to_owned(),
                conn: conn.id,
                app_id: conn.app_id.clone(),
                seq_id: frame.seq_id,
                code,
                data,
                payload,
                biz_rt: frame.header("biz_rt").map(str::to_owned),
                headers: frame
                    .headers
                    .iter()
                    .map(|h| (h.key.clone(), h.value.clone()))
                    .collect(),
                on_time,
                latency,
                at: now,
            });
            None
        }
        _ => None,
    }
}

// ----- pushes ----------------------------------------------------------------

/// Pushes `message_id` until it is acked or every re-push is spent; with
/// `duplicate`, once only.
async fn deliver(shared: Arc<Shared>, message_id: String, duplicate: bool) {
    for attempt in 0..=RETRY_SCHEDULE.len() as u32 {
        if attempt > 0 {
            let scale = lock(&shared.long_conns.book).knobs.retry_scale;
            let wait = RETRY_SCHEDULE[attempt as usize - 1].mul_f64(scale.max(0.0));
            tokio::time::sleep(wait).await;
        }
        if push_once(&shared, &message_id, attempt, duplicate).await {
            if let Some(e) = lock(&shared.long_conns.book).events.get_mut(&message_id) {
                e.state = LongConnEventState::Acked;
            }
            return;
        }
        if duplicate {
            return;
        }
    }
    if let Some(e) = lock(&shared.long_conns.book).events.get_mut(&message_id) {
        if e.state == LongConnEventState::Pending {
            e.state = LongConnEventState::GaveUp;
        }
    }
}

/// One push to one random live connection; true when acked with 200 in
/// time.
async fn push_once(shared: &Shared, message_id: &str, attempt: u32, duplicate: bool) -> bool {
    let lc = &shared.long_conns;
    let (acked, timeout) = {
        let mut book = lock(&lc.book);
        let Some(event) = book.events.get(message_id) else {
            return false;
        };
        let app_id = event.app_id.clone();
        let payload = event.payload.clone();
        let live: Vec<u64> = book
            .conns
            .values()
            .filter(|c| c.info.app_id == app_id)
            .map(|c| c.info.id)
            .collect();
        let seq_id = lc.next_id();
        let now = Instant::now();
        let mut delivery = LongConnDelivery {
            message_id: message_id.to_owned(),
            app_id,
            conn: None,
            attempt,
            duplicate,
            fragments: 0,
            seq_id,
            at: now,
        };
        if live.is_empty() {
            book.deliveries.push(delivery);
            return false;
        }
        let (pick, log_id, trace_id) = {
            let mut rng = rand::thread_rng();
            let trace: String = (0..16)
                .map(|_| format!("{:02x}", rng.gen::<u8>()))
                .collect();
            (live[rng.gen_range(0..live.len())], rng.gen::<u64>(), trace)
        };
        let conn = &book.conns[&pick];
        let chunk = book.knobs.fragment_size.unwrap_or(usize::MAX).max(1);
        let parts: Vec<&[u8]> = if payload.is_empty() {
            vec![&[][..]]
        } else {
            payload.chunks(chunk).collect()
        };
        let sum = parts.len();
        let frames: Vec<Bytes> = parts
            .iter()
            .enumerate()
            .map(|(seq, part)| {
                let mut f = Frame {
                    seq_id,
                    log_id,
                    service: conn.info.service_id,
                    method: DATA,
                    payload: Some(part.to_vec()),
                    ..Frame::default()
                };
                f.push_header("type", "event");
                f.push_header("message_id", message_id);
                f.push_header("sum", sum.to_string());
                f.push_header("seq", seq.to_string());
                f.push_header("trace_id", trace_id.clone());
                Bytes::from(f.encode_to_vec())
            })
            .collect();
        let sent = conn.tx.send(Cmd::Send(frames)).is_ok();
        delivery.conn = Some(pick);
        delivery.fragments = sum as u32;
        book.deliveries.push(delivery);
        if !sent {
            return false;
        }
        let (tx, rx) = oneshot::channel();
        book.waiting.insert(seq_id, Waiting { tx, sent: now });
        let timeout = book.knobs.ack_timeout;
        ((rx, seq_id), timeout)
    };
    let (rx, seq_id) = acked;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(ok)) => ok,
        _ => {
            lock(&lc.book).waiting.remove(&seq_id);
            false
        }
    }
}

// ----- the test controls -----------------------------------------------------

impl SimFeishu {
    /// `ws://127.0.0.1:<port>` (or `wss://`): where the long connection's
    /// WebSocket server listens.
    pub fn long_conn_base(&self) -> String {
        self.shared
            .long_conns
            .base
            .get()
            .cloned()
            .unwrap_or_default()
    }

    /// Pushes `event` (any JSON, normally a v2 event) to one random live
    /// long connection of `app_id`, and re-pushes it until acked (see the
    /// module docs). Returns the pushes' `message_id`. Does not wait.
    pub fn long_conn_push(&self, app_id: &str, event: &Value) -> String {
        self.long_conn_push_bytes(app_id, Bytes::from(event.to_string()))
    }

    /// [`long_conn_push`](Self::long_conn_push) with the payload's bytes.
    pub fn long_conn_push_bytes(&self, app_id: &str, payload: Bytes) -> String {
        let message_id = format!("msg_{:016x}", rand::thread_rng().gen::<u64>());
        lock(&self.shared.long_conns.book).events.insert(
            message_id.clone(),
            EventRecord {
                app_id: app_id.to_owned(),
                payload,
                state: LongConnEventState::Pending,
            },
        );
        lock(&self.shared.push_tasks).spawn(deliver(
            Arc::clone(&self.shared),
            message_id.clone(),
            false,
        ));
        message_id
    }

    /// Pushes an event already pushed once more, whatever its state, as a
    /// duplicate of at-least-once delivery (one try, no re-pushes). False
    /// for an unknown `message_id`.
    pub fn long_conn_push_duplicate(&self, message_id: &str) -> bool {
        if !lock(&self.shared.long_conns.book)
            .events
            .contains_key(message_id)
        {
            return false;
        }
        lock(&self.shared.push_tasks).spawn(deliver(
            Arc::clone(&self.shared),
            message_id.to_owned(),
            true,
        ));
        true
    }

    /// Where a pushed event is.
    pub fn long_conn_event_state(&self, message_id: &str) -> Option<LongConnEventState> {
        lock(&self.shared.long_conns.book)
            .events
            .get(message_id)
            .map(|e| e.state)
    }

    /// The live connections of `app_id`, oldest first.
    pub fn long_conns(&self, app_id: &str) -> Vec<LongConnection> {
        let book = lock(&self.shared.long_conns.book);
        let mut v: Vec<LongConnection> = book
            .conns
            .values()
            .filter(|c| c.info.app_id == app_id)
            .map(|c| c.info.clone())
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Ends every live connection of `app_id`; returns how many.
    pub fn cut_long_conns(&self, app_id: &str, how: CutMode) -> usize {
        let book = lock(&self.shared.long_conns.book);
        book.conns
            .values()
            .filter(|c| c.info.app_id == app_id)
            .filter(|c| c.tx.send(Cmd::Cut(how)).is_ok())
            .count()
    }

    /// Every endpoint call, in order.
    pub fn long_conn_endpoint_calls(&self) -> Vec<LongConnEndpointCall> {
        lock(&self.shared.long_conns.book).endpoint_calls.clone()
    }

    /// Every WebSocket handshake, in order.
    pub fn long_conn_handshakes(&self) -> Vec<LongConnHandshake> {
        lock(&self.shared.long_conns.book).handshakes.clone()
    }

    /// Every ping received, in order.
    pub fn long_conn_pings(&self) -> Vec<LongConnPing> {
        lock(&self.shared.long_conns.book).pings.clone()
    }

    /// Every push (first pushes, re-pushes, duplicates), in order.
    pub fn long_conn_deliveries(&self) -> Vec<LongConnDelivery> {
        lock(&self.shared.long_conns.book).deliveries.clone()
    }

    /// Re-pushes made so far (pushes after the first of an event, not
    /// counting duplicates).
    pub fn long_conn_repushes(&self) -> usize {
        lock(&self.shared.long_conns.book)
            .deliveries
            .iter()
            .filter(|d| d.attempt > 0 && !d.duplicate)
            .count()
    }

    /// Every ack received (with its payload and decoded `data`), in order.
    pub fn long_conn_acks(&self) -> Vec<LongConnAck> {
        lock(&self.shared.long_conns.book).acks.clone()
    }

    /// Frames from clients that were not a `pbbp2.Frame`.
    pub fn long_conn_bad_frames(&self) -> u64 {
        lock(&self.shared.long_conns.book).bad_frames
    }

    /// The ClientConfig handed out from now on (endpoint answers, pongs).
    pub fn set_long_conn_client_config(&self, config: LongConnClientConfig) {
        lock(&self.shared.long_conns.book).knobs.client_config = config;
    }

    /// The next `n` endpoint calls answer `{"code":code}` (HTTP 200), before
    /// the credentials are checked: [`SYSTEM_BUSY`] is retried by clients,
    /// most other codes are fatal.
    pub fn fail_long_conn_endpoint(&self, code: i64, n: u32) {
        lock(&self.shared.long_conns.book).knobs.endpoint_fail = (n > 0).then_some((code, n));
    }

    /// The next `n` handshakes with a good ticket are refused with
    /// `handshake-status: status` (and `handshake-autherrcode` when given).
    pub fn refuse_long_conn_handshakes(&self, status: u16, auth_code: Option<i64>, n: u32) {
        lock(&self.shared.long_conns.book).knobs.handshake_fail =
            (n > 0).then_some((status, auth_code, n));
    }

    /// Blocks (or unblocks) `app_id`: its handshakes are refused with 403.
    pub fn block_long_conn_app(&self, app_id: &str, blocked: bool) {
        let mut book = lock(&self.shared.long_conns.book);
        if blocked {
            book.knobs.blocked.insert(app_id.to_owned());
        } else {
            book.knobs.blocked.remove(app_id);
        }
    }

    /// Connections allowed per app (default 50, as Feishu's).
    pub fn set_long_conn_limit(&self, n: usize) {
        lock(&self.shared.long_conns.book).knobs.conn_limit = n;
    }

    /// Largest payload per frame: longer events are sent in fragments.
    /// Default `None` (one frame per event).
    pub fn set_long_conn_fragment_size(&self, max: Option<usize>) {
        lock(&self.shared.long_conns.book).knobs.fragment_size = max;
    }

    /// How long a push waits for its ack (default 3 s).
    pub fn set_long_conn_ack_timeout(&self, d: Duration) {
        lock(&self.shared.long_conns.book).knobs.ack_timeout = d;
    }

    /// The factor applied to the re-push schedule (15 s, 5 min, 1 h, 6 h);
    /// default 1. E.g. 0.01 for 150 ms, 3 s, 36 s, 216 s.
    pub fn set_long_conn_retry_scale(&self, factor: f64) {
        lock(&self.shared.long_conns.book).knobs.retry_scale = factor;
    }

    /// How long a ticket stays good (default 5 minutes; UNCONFIRMED).
    pub fn set_long_conn_ticket_ttl(&self, d: Duration) {
        lock(&self.shared.long_conns.book).knobs.ticket_ttl = d;
    }
}
