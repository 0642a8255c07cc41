//! One connection: the endpoint call, the WebSocket handshake, then frames
//! until either side ends it (feishu-platform.md §5.2–5.4).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::frame::{self, Frame, CONTROL, DATA};
use super::reassembly::Reassembly;
use super::{Ack, AppCtx, ClientSettings};
use crate::upstream;

/// The endpoint call's path (not under `/open-apis`).
pub const ENDPOINT_PATH: &str = "/callback/ws/endpoint";

/// Endpoint codes the SDKs retry: SYSTEM_BUSY and INTERNAL_ERROR.
const RETRYABLE_ENDPOINT_CODES: &[i64] = &[1, 1000040343];
/// `handshake-status` of an authentication failure.
const AUTH_FAILED: u16 = 514;
/// `handshake-status` of a blocked app.
const FORBIDDEN: u16 = 403;
/// `handshake-autherrcode` over the 50-connection limit.
const EXCEED_CONN_LIMIT: i64 = 1000040350;

/// Any byte stream a WebSocket runs over (TCP, or TLS over TCP).
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(super) type Ws = WebSocketStream<Box<dyn Io>>;

/// Why connecting failed.
#[derive(Debug)]
pub(super) enum ConnectError {
    /// Try again later; `what` is `endpoint` or `handshake`.
    Retry { what: &'static str, detail: String },
    /// Never try again (feishu-platform.md §5.2, §5.3); `reason` is the
    /// metric label.
    Fatal {
        reason: &'static str,
        detail: String,
    },
}

/// A connection made.
pub(super) struct Connected {
    pub(super) ws: Ws,
    pub(super) service_id: i32,
    /// `host:port/path` of the URL, for logs (never the query: the ticket).
    pub(super) where_: String,
}

/// The endpoint call, then the handshake; `cfg` takes the ClientConfig of
/// the endpoint's answer.
pub(super) async fn connect(
    ctx: &AppCtx,
    cfg: &mut ClientSettings,
) -> Result<Connected, ConnectError> {
    let retry = |what, detail: String| ConnectError::Retry { what, detail };
    let url = upstream::endpoint(&ctx.app.upstream, ENDPOINT_PATH);
    let body = json!({"AppID": ctx.app.app_id, "AppSecret": ctx.app.secret.expose()});
    let (status, answer) = upstream::post_json(
        &ctx.transport.http,
        &url,
        &body,
        ctx.settings.endpoint_timeout,
    )
    .await
    .map_err(|e| retry("endpoint", e.msg))?;
    if !status.is_success() {
        return Err(retry("endpoint", format!("HTTP {status}")));
    }
    let answer: Value = serde_json::from_slice(&answer)
        .map_err(|_| retry("endpoint", "the answer is not JSON".to_owned()))?;
    let code = answer["code"].as_i64().unwrap_or(-1);
    if code != 0 {
        let detail = format!(
            "code {code}: {}",
            answer["msg"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect::<String>()
        );
        return Err(if RETRYABLE_ENDPOINT_CODES.contains(&code) {
            retry("endpoint", detail)
        } else {
            ConnectError::Fatal {
                reason: "endpoint_refused",
                detail,
            }
        });
    }
    if ctx.settings.follow_server_config {
        cfg.apply(&answer["data"]["ClientConfig"]);
    }
    let ws_url = answer["data"]["URL"]
        .as_str()
        .ok_or_else(|| retry("endpoint", "no URL in the answer".to_owned()))?;
    let deadline = ctx.settings.connect_timeout;
    tokio::time::timeout(deadline, handshake(ctx, ws_url))
        .await
        .unwrap_or_else(|_| Err(retry("handshake", "timed out".to_owned())))
}

/// TCP, TLS for `wss`, then the upgrade.
async fn handshake(ctx: &AppCtx, ws_url: &str) -> Result<Connected, ConnectError> {
    let retry = |detail: String| ConnectError::Retry {
        what: "handshake",
        detail,
    };
    let uri: http::Uri = ws_url
        .parse()
        .map_err(|_| retry("the URL does not parse".to_owned()))?;
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(retry("the URL is not ws:// or wss://".to_owned())),
    };
    let host = uri
        .host()
        .ok_or_else(|| retry("the URL has no host".to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let where_ = format!("{host}:{port}{}", uri.path());
    let service_id = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("service_id="))
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| retry(format!("connect {where_}: {}", e.kind())))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if tls {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| retry("the URL's host is not a valid name".to_owned()))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&ctx.transport.tls));
        Box::new(
            connector
                .connect(name, tcp)
                .await
                .map_err(|e| retry(format!("TLS with {where_}: {e}")))?,
        )
    } else {
        Box::new(tcp)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(ctx.settings.max_frame_bytes))
        .max_frame_size(Some(ctx.settings.max_frame_bytes));
    match tokio_tungstenite::client_async_with_config(ws_url, stream, Some(config)).await {
        Ok((ws, _)) => Ok(Connected {
            ws,
            service_id,
            where_,
        }),
        Err(tungstenite::Error::Http(resp)) => Err(refused(resp.status().as_u16(), resp.headers())),
        Err(e) => Err(retry(format!("upgrade at {where_}: {}", describe(&e)))),
    }
}

/// A refused upgrade, read from Feishu's `handshake-*` headers (§5.3).
fn refused(http_status: u16, headers: &http::HeaderMap) -> ConnectError {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let status = header("handshake-status")
        .and_then(|s| s.trim().parse::<u16>().ok())
        .unwrap_or(http_status);
    let auth = header("handshake-autherrcode").and_then(|s| s.trim().parse::<i64>().ok());
    let msg: String = header("handshake-msg")
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    let detail = match auth {
        Some(code) => format!("handshake-status {status}, autherrcode {code}: {msg}"),
        None => format!("handshake-status {status}: {msg}"),
    };
    match (status, auth) {
        (FORBIDDEN, _) => ConnectError::Fatal {
            reason: "forbidden",
            detail,
        },
        (AUTH_FAILED, Some(EXCEED_CONN_LIMIT)) => ConnectError::Fatal {
            reason: "conn_limit",
            detail,
        },
        _ => ConnectError::Retry {
            what: "handshake",
            detail,
        },
    }
}

/// A tungstenite error without anything of the URL.
fn describe(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => format!("I/O: {}", io.kind()),
        tungstenite::Error::Url(_) => "bad URL".to_owned(),
        tungstenite::Error::Http(resp) => format!("HTTP {}", resp.status()),
        other => other.to_string(),
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ended {
    /// Feishu closed it (a close frame).
    Closed,
    /// Read or write failed, the peer vanished, or it went silent.
    Lost(String),
    /// This replica lost the lease.
    Lease,
    /// The gateway is stopping.
    Shutdown,
}

/// An ack to write: the encoded frame, when the event was complete, and
/// whether it says 200.
struct AckOut {
    frame: Bytes,
    since: Instant,
    ok: bool,
}

/// Frames until the connection ends: pings every PingInterval, pongs'
/// settings applied, fragments reassembled, each complete event handed to
/// the sink in a task of its own and acked when the sink answers (within
/// `ack_deadline`, else `{"code":500}`).
pub(super) async fn run(
    ctx: &AppCtx,
    conn: Connected,
    cfg: &mut ClientSettings,
    stop: &mut watch::Receiver<bool>,
    allowed: &mut watch::Receiver<bool>,
) -> Ended {
    let m = &ctx.metrics;
    let (mut sink, mut stream) = conn.ws.split();
    let (ack_tx, mut acks) = mpsc::channel::<AckOut>(256);
    let mut parts = Reassembly::new(ctx.settings.reassembly);
    let mut last_ping = Instant::now();
    let mut next_ping = last_ping;
    let mut last_in = Instant::now();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let close = |reason: &'static str| {
        Message::Close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: reason.into(),
        }))
    };
    loop {
        // Nothing at all from Feishu for three ping intervals: the
        // connection is dead even if TCP has not noticed.
        let silent_at = last_in
            + cfg
                .ping_interval
                .saturating_mul(3)
                .max(Duration::from_secs(3));
        tokio::select! {
            _ = tokio::time::sleep_until(next_ping) => {
                let ping = frame::ping(conn.service_id).to_bytes();
                if let Err(e) = sink.send(Message::Binary(ping)).await {
                    return Ended::Lost(format!("ping: {}", describe(&e)));
                }
                m.out_ping.inc();
                last_ping = Instant::now();
                next_ping = last_ping + cfg.ping_interval;
            }
            _ = tokio::time::sleep_until(silent_at) => {
                return Ended::Lost("nothing received for three ping intervals".to_owned());
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    last_in = Instant::now();
                    let before = cfg.ping_interval;
                    on_frame(ctx, bytes, &mut parts, cfg, &ack_tx);
                    if cfg.ping_interval != before {
                        next_ping = last_ping + cfg.ping_interval;
                    }
                }
                Some(Ok(Message::Close(_))) => return Ended::Closed,
                Some(Ok(_)) => last_in = Instant::now(),
                Some(Err(e)) => return Ended::Lost(describe(&e)),
                None => return Ended::Lost("end of stream".to_owned()),
            },
            Some(ack) = acks.recv() => {
                if let Err(e) = sink.send(Message::Binary(ack.frame)).await {
                    return Ended::Lost(format!("ack: {}", describe(&e)));
                }
                m.ack.observe(ack.since.elapsed().as_secs_f64());
                if ack.ok { m.out_ack.inc() } else { m.out_ack_failed.inc() }
            }
            _ = sweep.tick() => {
                parts.sweep(Instant::now());
            }
            _ = stop.changed() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close("shutdown"))).await;
                return Ended::Shutdown;
            }
            _ = allowed.changed() => {
                if !*allowed.borrow_and_update() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close("standby"))).await;
                    return Ended::Lease;
                }
            }
        }
    }
}

/// One binary message from Feishu.
fn on_frame(
    ctx: &AppCtx,
    bytes: Bytes,
    parts: &mut Reassembly,
    cfg: &mut ClientSettings,
    acks: &mpsc::Sender<AckOut>,
) {
    let m = &ctx.metrics;
    let Ok(mut frame) = Frame::decode_bytes(bytes) else {
        m.in_invalid.inc();
        return;
    };
    match (frame.method, frame.header("type")) {
        (CONTROL, Some("pong")) => {
            m.in_pong.inc();
            if ctx.settings.follow_server_config {
                if let Some(payload) = frame.payload.as_deref().filter(|p| !p.is_empty()) {
                    if let Ok(v) = serde_json::from_slice::<Value>(payload) {
                        cfg.apply(&v);
                    }
                }
            }
        }
        (DATA, Some("event")) => {
            let payload = frame.payload.take().unwrap_or_default();
            let message_id = frame.header("message_id").unwrap_or("").to_owned();
            let whole = parts.add(
                &message_id,
                frame.header("sum"),
                frame.header("seq"),
                payload,
                Instant::now(),
            );
            match whole {
                Ok(Some(event)) => {
                    m.in_event.inc();
                    deliver(ctx, frame, event, acks.clone());
                }
                Ok(None) => m.in_fragment.inc(),
                Err(why) => {
                    m.in_rejected.inc();
                    tracing::warn!(
                        app = %ctx.app.name,
                        message_id = %message_id,
                        reason = why.as_str(),
                        "events: a long-connection fragment was dropped"
                    );
                }
            }
        }
        // Server pings, `card` frames (the SDKs drop them unacked) and
        // anything newer.
        _ => m.in_ignored.inc(),
    }
}

/// Hands a complete event to the sink in a task of its own, and queues its
/// ack (the frame that completed it) when the sink answers.
fn deliver(ctx: &AppCtx, frame: Frame, event: Bytes, acks: mpsc::Sender<AckOut>) {
    let since = Instant::now();
    let accepted = ctx.sink.accept(&ctx.app.name, event);
    let deadline = ctx.settings.ack_deadline;
    let app = ctx.app.name.clone();
    tokio::spawn(async move {
        let answer = tokio::time::timeout(deadline, accepted).await;
        let rt = since.elapsed().as_millis() as u64;
        let (frame, ok) = match answer {
            Ok(Ack::Ok(data)) => (frame::ack(frame, rt, Ok(data.as_deref())), true),
            Ok(Ack::Failed) => (frame::ack(frame, rt, Err(())), false),
            Err(_) => {
                tracing::warn!(
                    app = %app,
                    "events: the sink did not answer within the ack deadline; acked 500 (Feishu re-pushes)"
                );
                (frame::ack(frame, rt, Err(())), false)
            }
        };
        let _ = acks
            .send(AckOut {
                frame: frame.to_bytes(),
                since,
                ok,
            })
            .await;
    });
}
