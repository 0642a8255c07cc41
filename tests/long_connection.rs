//! The gateway's long-connection client (`events::long_connection`)
//! against the simulated Feishu's long-connection server, over real
//! sockets: events reach the sink once and are acked, fragments are joined,
//! pings go out and the settings of pongs apply, a cut connection comes
//! back with a fresh endpoint call and loses no event, fatal answers stop
//! the client, a Redis lease keeps one replica connected, and the URL's
//! ticket never reaches a log.
//!
//! The sim's own protocol is checked against the official Python SDK in
//! `tests/sdk_events.rs`.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use feishu_gateway::events::long_connection::{
    self as lc, Ack, AppStatus, EventSink, LeaseConfig, LongConnectionApp, LongConnectionMetrics,
    LongConnections, Settings, Transport,
};
use feishu_gateway::redis_connection::{RedisConnection, RedisTarget};
use feishu_gateway::upstream::{self, Upstream};
use feishu_sim::{long_conn, CutMode, LongConnClientConfig, LongConnEventState};
use futures_core::future::BoxFuture;
use serde_json::{json, Value};
use support::redis_server::{redis_or_skip, RedisServer};
use support::*;
use tokio::time::Instant;

const APP: &str = "bot";

/// The sink of the tests: records every event; answers card callbacks
/// with a toast; holds the events named in `slow` that long first.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Value>>,
    slow: Mutex<HashMap<String, Duration>>,
}

impl Recorder {
    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    fn count(&self, event_id: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e["header"]["event_id"] == event_id)
            .count()
    }
}

impl EventSink for Recorder {
    fn accept(&self, app: &str, payload: Bytes) -> BoxFuture<'static, Ack> {
        assert_eq!(app, APP);
        let v: Value = serde_json::from_slice(&payload).expect("a JSON event");
        let id = v["header"]["event_id"].as_str().unwrap_or("").to_owned();
        let card = v["header"]["event_type"] == "card.action.trigger";
        self.events.lock().unwrap().push(v);
        let delay = self.slow.lock().unwrap().get(&id).copied();
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            if card {
                Ack::Ok(Some(Bytes::from_static(
                    br#"{"toast":{"type":"success","content":"from the gateway"}}"#,
                )))
            } else {
                Ack::Ok(None)
            }
        })
    }
}

fn event(event_id: &str, text: &str) -> Value {
    json!({
        "schema": "2.0",
        "header": {
            "event_id": event_id, "token": "", "create_time": "1700000000000",
            "event_type": "im.message.receive_v1", "tenant_key": "t1", "app_id": APP_ID,
        },
        "event": {"message": {"message_id": format!("om_{event_id}"), "content": json!({"text": text}).to_string()}},
    })
}

/// Immediate reconnects, pings every second.
fn fast() -> LongConnClientConfig {
    LongConnClientConfig {
        reconnect_count: -1,
        reconnect_interval: 1,
        reconnect_nonce: 0,
        ping_interval: 1,
    }
}

fn app(sim: &SimFeishu, secret: &str) -> LongConnectionApp {
    LongConnectionApp {
        name: APP.to_owned(),
        app_id: APP_ID.to_owned(),
        secret: Secret::new(secret),
        upstream: Upstream::parse(&sim.base_url()).expect("URL"),
    }
}

fn transport(ca_file: Option<std::path::PathBuf>) -> Transport {
    Transport::new(&upstream::Settings {
        ca_file,
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(30),
        max_idle_per_host: 4,
    })
    .expect("transport")
}

/// The sim (fast ClientConfig, acks awaited 1 s, re-pushes at 1/100 of
/// the webhook schedule: 150 ms, 3 s, …).
async fn sim() -> SimFeishu {
    let sim = SimFeishu::start(sim_config()).await.expect("sim starts");
    sim.set_long_conn_client_config(fast());
    sim.set_long_conn_ack_timeout(Duration::from_secs(1));
    sim.set_long_conn_retry_scale(0.01);
    sim
}

struct Client {
    conns: LongConnections,
    sink: Arc<Recorder>,
    registry: prometheus::Registry,
}

impl Client {
    fn start(sim: &SimFeishu, secret: &str, lease: Option<LeaseConfig>) -> Client {
        Self::start_with(sim, secret, lease, transport(None))
    }

    fn start_with(
        sim: &SimFeishu,
        secret: &str,
        lease: Option<LeaseConfig>,
        transport: Transport,
    ) -> Client {
        let registry = prometheus::Registry::new();
        let metrics = LongConnectionMetrics::register(&registry).expect("metrics");
        let sink = Arc::new(Recorder::default());
        let settings = Settings {
            lease_ttl: Duration::from_millis(1500),
            ..Settings::default()
        };
        let conns = lc::start(
            vec![app(sim, secret)],
            transport,
            sink.clone(),
            settings,
            lease,
            &metrics,
        );
        Client {
            conns,
            sink,
            registry,
        }
    }

    fn status(&self) -> AppStatus {
        self.conns.status().remove(0)
    }

    fn metric(&self, series: &str) -> f64 {
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &self.registry.gather(),
            &mut out,
        )
        .unwrap();
        metric_value(&String::from_utf8(out).unwrap(), series).unwrap_or(0.0)
    }
}

/// Polls `cond` every 10 ms for up to `secs` seconds.
async fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connected(sim: &SimFeishu) {
    until(10, "connected", || sim.long_conns(APP_ID).len() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_reaches_the_sink_once_and_is_acked() {
    let sim = sim().await;
    let client = Client::start(&sim, APP_SECRET, None);
    connected(&sim).await;
    assert!(client.status().up);

    let id = sim.long_conn_push(APP_ID, &event("ev_1", "hello"));
    until(5, "acked", || {
        sim.long_conn_event_state(&id) == Some(LongConnEventState::Acked)
    })
    .await;
    let acks = sim.long_conn_acks();
    let ack = acks.iter().find(|a| a.message_id == id).expect("ack");
    assert_eq!(ack.code, Some(200), "{ack:?}");
    assert!(ack.on_time && ack.data.is_none(), "{ack:?}");
    assert!(ack.biz_rt.is_some(), "{ack:?}");
    for key in ["type", "message_id", "sum", "seq", "trace_id"] {
        assert!(ack.headers.iter().any(|(k, _)| k == key), "{key}: {ack:?}");
    }
    println!(
        "ack latency (last frame pushed → ack received): {:?}",
        ack.latency
    );
    assert!(ack.latency.unwrap() < Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.sink.count("ev_1"), 1);
    assert_eq!(
        client.sink.events()[0]["event"]["message"]["message_id"],
        "om_ev_1"
    );

    // A card callback's answer goes back base64 in the ack's data.
    let mut card = event("ev_card", "");
    card["header"]["event_type"] = json!("card.action.trigger");
    let id = sim.long_conn_push(APP_ID, &card);
    until(5, "card acked", || {
        sim.long_conn_event_state(&id) == Some(LongConnEventState::Acked)
    })
    .await;
    let ack = sim
        .long_conn_acks()
        .into_iter()
        .find(|a| a.message_id == id)
        .expect("ack");
    let answer: Value = serde_json::from_slice(&ack.data.expect("data")).unwrap();
    assert_eq!(answer["toast"]["content"], "from the gateway");

    // Metrics.
    let up = format!(r#"feishu_gateway_events_connection_up{{app="{APP}"}}"#);
    assert_eq!(client.metric(&up), 1.0);
    let events =
        format!(r#"feishu_gateway_events_frames_total{{app="{APP}",direction="in",type="event"}}"#);
    assert_eq!(client.metric(&events), 2.0);
    let acked =
        format!(r#"feishu_gateway_events_frames_total{{app="{APP}",direction="out",type="ack"}}"#);
    assert_eq!(client.metric(&acked), 2.0);
    assert_eq!(sim.long_conn_repushes(), 0);
    assert_eq!(sim.long_conn_bad_frames(), 0);

    let Client {
        conns, registry, ..
    } = client;
    conns.shutdown().await;
    until(5, "closed", || sim.long_conns(APP_ID).is_empty()).await;
    let after = Client {
        conns: lc::start(
            Vec::new(),
            transport(None),
            Arc::new(Recorder::default()),
            Settings::default(),
            None,
            &LongConnectionMetrics::unregistered().unwrap(),
        ),
        sink: Arc::new(Recorder::default()),
        registry,
    };
    assert_eq!(after.metric(&up), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_are_joined_and_acked_once() {
    let sim = sim().await;
    sim.set_long_conn_fragment_size(Some(50));
    let client = Client::start(&sim, APP_SECRET, None);
    connected(&sim).await;
    let text = "长连接".repeat(200);
    let id = sim.long_conn_push(APP_ID, &event("ev_big", &text));
    until(5, "acked", || {
        sim.long_conn_event_state(&id) == Some(LongConnEventState::Acked)
    })
    .await;
    let d = sim.long_conn_deliveries().remove(0);
    assert!(d.fragments > 20, "{d:?}");
    let got = client.sink.events();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0]["event"]["message"]["content"],
        json!({"text": text}).to_string()
    );
    assert_eq!(
        sim.long_conn_acks()
            .iter()
            .filter(|a| a.message_id == id)
            .count(),
        1
    );
    let fragments = format!(
        r#"feishu_gateway_events_frames_total{{app="{APP}",direction="in",type="fragment"}}"#
    );
    assert_eq!(client.metric(&fragments), f64::from(d.fragments - 1));
    client.conns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_go_out_and_pong_settings_apply() {
    let sim = sim().await;
    sim.set_long_conn_client_config(LongConnClientConfig {
        ping_interval: 2,
        ..fast()
    });
    let client = Client::start(&sim, APP_SECRET, None);
    connected(&sim).await;
    let conn = sim.long_conns(APP_ID).remove(0);
    // The first ping at once; its pong says 2 s. Then Feishu says 1 s.
    until(5, "first ping", || !sim.long_conn_pings().is_empty()).await;
    sim.set_long_conn_client_config(fast());
    until(10, "five pings", || sim.long_conn_pings().len() >= 5).await;
    let pings = sim.long_conn_pings();
    assert!(pings
        .iter()
        .all(|p| p.conn == conn.id && p.service == conn.service_id));
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1].at - w[0].at).collect();
    println!("gaps between pings: {gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(1800), "{gaps:?}");
    let last = *gaps.last().unwrap();
    assert!(
        last >= Duration::from_millis(800) && last <= Duration::from_millis(1500),
        "the pong's PingInterval of 1 s applies: {gaps:?}"
    );
    let pongs =
        format!(r#"feishu_gateway_events_frames_total{{app="{APP}",direction="in",type="pong"}}"#);
    assert!(client.metric(&pongs) >= 4.0);
    client.conns.shutdown().await;
}

/// Cuts the connection while an event is in the sink's hands: the client
/// comes back (a fresh endpoint call, a new ticket), every acked event
/// stays acked, and the one whose ack was lost is re-pushed and arrives.
async fn cut_mid_stream(how: CutMode) {
    let sim = sim().await;
    let client = Client::start(&sim, APP_SECRET, None);
    connected(&sim).await;
    let first = sim.long_conns(APP_ID).remove(0);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(sim.long_conn_push(APP_ID, &event(&format!("ev_{i}"), "before")));
    }
    until(5, "acked", || {
        ids.iter()
            .all(|id| sim.long_conn_event_state(id) == Some(LongConnEventState::Acked))
    })
    .await;
    // In the sink's hands when the connection goes.
    client
        .sink
        .slow
        .lock()
        .unwrap()
        .insert("ev_slow".into(), Duration::from_millis(400));
    let slow = sim.long_conn_push(APP_ID, &event("ev_slow", "during"));
    until(5, "in the sink", || client.sink.count("ev_slow") == 1).await;
    let cut_at = Instant::now();
    assert_eq!(sim.cut_long_conns(APP_ID, how), 1);
    until(10, "reconnected", || {
        sim.long_conns(APP_ID).iter().any(|c| c.id != first.id)
    })
    .await;
    println!("{how:?}: reconnected {:?} after the cut", cut_at.elapsed());
    let calls = sim.long_conn_endpoint_calls();
    assert_eq!(calls.len(), 2, "a fresh endpoint call: {calls:?}");
    assert_ne!(calls[0].ticket, calls[1].ticket);
    // The lost ack: re-pushed, delivered again, acked.
    until(10, "the re-push acked", || {
        sim.long_conn_event_state(&slow) == Some(LongConnEventState::Acked)
    })
    .await;
    assert!(client.sink.count("ev_slow") >= 2, "delivered again");
    // Events after the cut flow.
    let after = sim.long_conn_push(APP_ID, &event("ev_after", "after"));
    until(5, "acked", || {
        sim.long_conn_event_state(&after) == Some(LongConnEventState::Acked)
    })
    .await;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            sim.long_conn_event_state(id),
            Some(LongConnEventState::Acked)
        );
        assert_eq!(client.sink.count(&format!("ev_{i}")), 1);
    }
    let status = client.status();
    assert!(status.up && status.connects == 2, "{status:?}");
    let reason = if how == CutMode::Close {
        "closed"
    } else {
        "lost"
    };
    let series =
        format!(r#"feishu_gateway_events_reconnects_total{{app="{APP}",reason="{reason}"}}"#);
    assert_eq!(client.metric(&series), 1.0);
    client.conns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_feishu_comes_back_and_loses_nothing() {
    cut_mid_stream(CutMode::Close).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_comes_back_and_loses_nothing() {
    cut_mid_stream(CutMode::Drop).await;
}

/// Starts a client that Feishu refuses; waits for the verdict; checks
/// there is no further attempt.
async fn refused_for_good(sim: &SimFeishu, secret: &str, reason: &str) {
    let client = Client::start(sim, secret, None);
    until(5, "stopped", || client.status().stopped.is_some()).await;
    assert_eq!(client.status().stopped.as_deref(), Some(reason));
    let calls = sim.long_conn_endpoint_calls().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        sim.long_conn_endpoint_calls().len(),
        calls,
        "{reason}: no reconnect"
    );
    assert!(sim.long_conns(APP_ID).is_empty());
    let series =
        format!(r#"feishu_gateway_events_connection_stopped{{app="{APP}",reason="{reason}"}}"#);
    assert_eq!(client.metric(&series), 1.0);
    client.conns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_answers_stop_the_client() {
    let sim = sim().await;
    // A wrong secret: the endpoint's non-retryable code.
    refused_for_good(&sim, "wrong-secret", "endpoint_refused").await;
    assert_eq!(
        sim.long_conn_endpoint_calls()[0].code,
        long_conn::BAD_CREDENTIALS
    );
    // The app blocked: handshake 403.
    sim.block_long_conn_app(APP_ID, true);
    refused_for_good(&sim, APP_SECRET, "forbidden").await;
    sim.block_long_conn_app(APP_ID, false);
    // 50 connections already: 514 + 1000040350.
    sim.set_long_conn_limit(0);
    refused_for_good(&sim, APP_SECRET, "conn_limit").await;
    let hs = sim.long_conn_handshakes();
    let last = hs.last().unwrap();
    assert_eq!(
        (last.status, last.auth_code),
        (long_conn::AUTH_FAILED, Some(long_conn::EXCEED_CONN_LIMIT))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried() {
    let sim = sim().await;
    // SYSTEM_BUSY twice, then a 514 with another code: retried each
    // ReconnectInterval (1 s here, the default ClientConfig before the
    // first answer is replaced by Settings below).
    sim.fail_long_conn_endpoint(long_conn::SYSTEM_BUSY, 1);
    sim.refuse_long_conn_handshakes(514, Some(1000040343), 1);
    let registry = prometheus::Registry::new();
    let metrics = LongConnectionMetrics::register(&registry).unwrap();
    let sink = Arc::new(Recorder::default());
    let mut settings = Settings::default();
    settings.client.reconnect_interval = Duration::from_millis(200);
    let conns = lc::start(
        vec![app(&sim, APP_SECRET)],
        transport(None),
        sink,
        settings,
        None,
        &metrics,
    );
    connected(&sim).await;
    let calls = sim.long_conn_endpoint_calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[0].code, long_conn::SYSTEM_BUSY);
    assert!(conns.status()[0].stopped.is_none());
    conns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_wss_with_the_upstream_ca_file() {
    let mut cfg = sim_config();
    cfg.tls = true;
    let sim = SimFeishu::start(cfg).await.expect("sim starts");
    sim.set_long_conn_client_config(fast());
    assert!(sim.long_conn_base().starts_with("wss://"));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, sim.ca_pem().unwrap()).unwrap();
    let client = Client::start_with(&sim, APP_SECRET, None, transport(Some(ca)));
    connected(&sim).await;
    let id = sim.long_conn_push(APP_ID, &event("ev_tls", "over TLS"));
    until(5, "acked", || {
        sim.long_conn_event_state(&id) == Some(LongConnEventState::Acked)
    })
    .await;
    assert_eq!(client.sink.count("ev_tls"), 1);
    client.conns.shutdown().await;
}

/// A lease in `redis`, keys under `t:`, on a connection of its own.
fn lease_on(redis: &RedisServer) -> LeaseConfig {
    LeaseConfig {
        redis: RedisConnection::open(
            &RedisTarget::Url(Secret::new(redis.url())),
            None,
            Duration::from_secs(1),
        )
        .expect("redis"),
        key_prefix: "t:".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_one_replica_holds_the_connection() {
    let redis = redis_or_skip!();
    let sim = sim().await;
    let lease = || lease_on(&redis);
    let a = Client::start(&sim, APP_SECRET, Some(lease()));
    let b = Client::start(&sim, APP_SECRET, Some(lease()));
    connected(&sim).await;
    // For a while, exactly one connection, from exactly one of the two.
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        assert!(sim.long_conns(APP_ID).len() <= 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sim.long_conns(APP_ID).len(), 1);
    let (holder, standby) = if a.status().up { (a, b) } else { (b, a) };
    assert!(holder.status().up && !standby.status().up);
    assert_eq!(
        standby.metric(&format!(
            r#"feishu_gateway_events_lease_held{{app="{APP}"}}"#
        )),
        0.0
    );
    let mut conn = redis.conn().await;
    let key = lc::lease_key("t:", APP_ID);
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(exists, "{key}");
    // Events reach the holder.
    let id = sim.long_conn_push(APP_ID, &event("ev_lease", "x"));
    until(5, "acked", || {
        sim.long_conn_event_state(&id) == Some(LongConnEventState::Acked)
    })
    .await;
    assert_eq!(holder.sink.count("ev_lease"), 1);
    // The holder stops (releasing the lease): the standby takes over.
    let first = sim.long_conns(APP_ID).remove(0);
    let stopped_at = Instant::now();
    holder.conns.shutdown().await;
    until(5, "taken over", || {
        sim.long_conns(APP_ID).iter().any(|c| c.id != first.id)
    })
    .await;
    println!(
        "standby took over {:?} after the holder stopped",
        stopped_at.elapsed()
    );
    until(2, "standby up", || standby.status().up).await;
    // A holder that vanishes without releasing (its lease expires).
    let second = sim.long_conns(APP_ID).remove(0);
    let c = Client::start(&sim, APP_SECRET, Some(lease()));
    drop(standby); // aborted: no release, no close frame
    let vanished_at = Instant::now();
    until(10, "taken over after the TTL", || {
        sim.long_conns(APP_ID).iter().any(|x| x.id != second.id)
    })
    .await;
    println!(
        "took over {:?} after the holder vanished (lease TTL 1.5 s)",
        vanished_at.elapsed()
    );
    // The vanished holder's socket is gone too.
    until(10, "one connection", || sim.long_conns(APP_ID).len() == 1).await;
    c.conns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_that_cannot_connect_hands_the_lease_over() {
    let redis = redis_or_skip!();
    let sim = sim().await;
    let lease = || lease_on(&redis);
    // The first holder's endpoint calls are refused with a retryable code
    // (its way to Feishu is broken); it takes the lease first.
    sim.fail_long_conn_endpoint(long_conn::SYSTEM_BUSY, 1_000);
    let stuck = Client::start(&sim, APP_SECRET, Some(lease()));
    until(5, "the stuck client holds the lease", || {
        stuck.metric(&format!(
            r#"feishu_gateway_events_lease_held{{app="{APP}"}}"#
        )) == 1.0
    })
    .await;
    let other = Client::start(&sim, APP_SECRET, Some(lease()));
    // Feishu answers again, but the stuck client only retries every
    // ReconnectInterval: the other one must get the lease and connect.
    tokio::time::sleep(Duration::from_millis(200)).await;
    sim.fail_long_conn_endpoint(long_conn::SYSTEM_BUSY, 0);
    let started = Instant::now();
    until(15, "the other replica connected", || other.status().up).await;
    println!(
        "a holder that could not connect handed over: the other replica connected after {:?} (lease TTL 1.5 s)",
        started.elapsed()
    );
    assert_eq!(sim.long_conns(APP_ID).len(), 1);
    stuck.conns.shutdown().await;
    other.conns.shutdown().await;
}

/// Collects what the client logs, on this thread (a current-thread
/// runtime, so every task logs here).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_ticket_and_no_secret_in_the_logs() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = sim().await;
    let client = Client::start(&sim, APP_SECRET, None);
    connected(&sim).await;
    sim.cut_long_conns(APP_ID, CutMode::Drop);
    until(10, "reconnected", || {
        sim.long_conn_endpoint_calls().len() == 2
    })
    .await;
    connected(&sim).await;
    sim.refuse_long_conn_handshakes(514, Some(1), 1);
    sim.cut_long_conns(APP_ID, CutMode::Close);
    until(10, "reconnected", || {
        sim.long_conn_endpoint_calls().len() == 4
    })
    .await;
    connected(&sim).await;
    client.conns.shutdown().await;
    let bad = Client::start(&sim, "wrong-secret", None);
    until(5, "stopped", || bad.status().stopped.is_some()).await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    println!("{text}");
    assert!(text.contains("long connection up"), "{text}");
    assert!(text.contains("127.0.0.1"), "the host is named: {text}");
    let tickets: Vec<String> = sim
        .long_conn_endpoint_calls()
        .into_iter()
        .filter_map(|c| c.ticket)
        .collect();
    assert!(tickets.len() >= 3);
    for t in &tickets {
        assert!(!text.contains(t.as_str()), "a ticket was logged");
    }
    assert!(!text.contains("ticket="), "{text}");
    assert!(!text.contains(APP_SECRET) && !text.contains("wrong-secret"));
}

// ----- a hostile server nobody here wrote -------------------------------------

/// A raw-socket "Feishu": answers the endpoint call by hand, accepts the
/// WebSocket upgrade by hand, then sends what no well-behaved server would:
/// a text frame, a binary frame that is no protobuf, a frame announcing
/// 2^40 bytes, a frame cut in its middle. Counts upgrades.
async fn hostile_feishu() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upgrades = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&upgrades);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                if text.starts_with("POST /callback/ws/endpoint") {
                    let body = format!(
                        r#"{{"code":0,"msg":"ok","data":{{"URL":"ws://{addr}/ws/v2?device_id=d1&service_id=7&ticket=TKT-HOSTILE-SECRET","ClientConfig":{{"ReconnectCount":-1,"ReconnectInterval":1,"ReconnectNonce":0,"PingInterval":1}}}}}}"#
                    );
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(answer.as_bytes()).await;
                    return;
                }
                let key = text
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("sec-websocket-key")
                            .then(|| v.trim().to_owned())
                    })
                    .unwrap_or_default();
                let accept =
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let upgrade = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
                );
                if sock.write_all(upgrade.as_bytes()).await.is_err() {
                    return;
                }
                let mut frames: Vec<u8> = Vec::new();
                frames.extend_from_slice(&[0x81, 5]);
                frames.extend_from_slice(b"hello"); // text: ignored by Feishu's clients
                frames.extend_from_slice(&[0x82, 4, 0xff, 0xff, 0xff, 0xff]); // no pbbp2.Frame
                match n % 2 {
                    // A binary frame announcing 2^40 bytes.
                    0 => frames.extend_from_slice(&[0x82, 127, 0, 0, 1, 0, 0, 0, 0, 0, 1, 2, 3]),
                    // A frame announcing 100 bytes, 3 sent, then the end.
                    _ => frames.extend_from_slice(&[0x82, 100, 1, 2, 3]),
                }
                let _ = sock.write_all(&frames).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            });
        }
    });
    (addr, upgrades)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_server_costs_a_reconnect_and_nothing_else() {
    let (addr, upgrades) = hostile_feishu().await;
    let registry = prometheus::Registry::new();
    let metrics = LongConnectionMetrics::register(&registry).expect("metrics");
    let sink = Arc::new(Recorder::default());
    let conns = lc::start(
        vec![LongConnectionApp {
            name: APP.to_owned(),
            app_id: APP_ID.to_owned(),
            secret: feishu_gateway::secret::Secret::new(APP_SECRET),
            upstream: Upstream::parse(&format!("http://{addr}")).expect("URL"),
        }],
        transport(None),
        sink.clone(),
        Settings::default(),
        None,
        &metrics,
    );
    // Each connection ends in garbage (a 1 TiB frame, a cut frame); the
    // client reconnects by the endpoint's rules, allocates nothing of what
    // was announced, delivers nothing, and never gives up.
    until(15, "four upgrades", || {
        upgrades.load(std::sync::atomic::Ordering::SeqCst) >= 4
    })
    .await;
    let status = conns.status().remove(0);
    assert_eq!(status.stopped, None, "{status:?}");
    assert!(status.connects >= 4, "{status:?}");
    assert_eq!(sink.events.lock().unwrap().len(), 0);
    conns.shutdown().await;
}
