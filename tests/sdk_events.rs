//! The simulated Feishu's long connection checked against the official
//! Python SDK's own client (`lark_oapi.ws.Client`): the SDK gets the
//! endpoint from the fake, connects, pings, receives events (one of them
//! in fragments), answers a card callback and acks each event as it would
//! to Feishu; the fake records the acks. This proves the fake speaks
//! Feishu's protocol as the SDK does, so the gateway's client, tested
//! against the fake (`tests/long_connection.rs`), agrees with the SDK too.
//!
//! The SDK comes from `tests/sdk/install.sh` (the venv `target/sdk-venv`,
//! or `SDK_VENV`), which `cargo test` alone does not run: as in
//! `tests/sdk_clients.rs` the test is `#[ignore]`d with that reason; run it
//! with `cargo test --test sdk_events -- --include-ignored` (`.ci/run`
//! does). Run so without the SDK, it says SKIPPED on stderr, except under
//! `CI=true`, where it fails.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use feishu_sim::{CutMode, LongConnAck, LongConnClientConfig};
use serde_json::{json, Value};
use support::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The SDK's driver, killed on drop; its JSON lines on a channel.
struct Driver {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Driver {
    fn start(python: &PathBuf, sim: &SimFeishu) -> Driver {
        let mut cmd = Command::new(python);
        cmd.arg(root().join("tests/sdk/python_ws_driver.py"))
            .current_dir(root().join("tests/sdk"))
            .env("SIM_URL", sim.base_url())
            .env("SIM_APP_ID", APP_ID)
            .env("SIM_APP_SECRET", APP_SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        support::tools::without_proxies(&mut cmd);
        let mut child = cmd.spawn().expect("the Python driver starts");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        // What the SDK logs (a traceback when it stops on a fatal code) goes
        // to the test's captured output.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                println!("python stderr: {line}");
            }
        });
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                println!("python: {line}");
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Driver {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (seen before or arriving within 20 s) that `pred`
    /// accepts.
    async fn line(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = self.seen.iter().find(|v| pred(v)) {
                return v.clone();
            }
            while let Ok(v) = self.lines.try_recv() {
                assert_ne!(v["event"], "exception", "the driver failed: {v}");
                self.seen.push(v);
            }
            if self.seen.iter().any(&pred) {
                continue;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {what} from the SDK within 20 s; it printed {:?}",
                self.seen
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 20 ms for up to `secs` seconds.
async fn until(secs: u64, what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A v2 event's header, as Feishu sends it over the long connection.
fn v2_header(event_id: &str, event_type: &str) -> Value {
    json!({
        "event_id": event_id,
        "token": "",
        "create_time": "1700000000000",
        "event_type": event_type,
        "tenant_key": "tenant_1",
        "app_id": APP_ID,
    })
}

fn message_event(event_id: &str, message_id: &str, text: &str) -> Value {
    json!({
        "schema": "2.0",
        "header": v2_header(event_id, "im.message.receive_v1"),
        "event": {
            "sender": {"sender_id": {"open_id": "ou_1"}, "sender_type": "user", "tenant_key": "tenant_1"},
            "message": {
                "message_id": message_id,
                "create_time": "1700000000000",
                "chat_id": "oc_1",
                "chat_type": "p2p",
                "message_type": "text",
                "content": json!({"text": text}).to_string(),
            },
        },
    })
}

fn card_event(event_id: &str) -> Value {
    json!({
        "schema": "2.0",
        "header": v2_header(event_id, "card.action.trigger"),
        "event": {
            "operator": {"open_id": "ou_1"},
            "token": "c-card-token",
            "action": {"tag": "button", "value": {"choice": "approve"}},
            "context": {"open_message_id": "om_card", "open_chat_id": "oc_1"},
        },
    })
}

/// The on-time ack of `message_id`, once the fake has it.
async fn ack_of(sim: &SimFeishu, message_id: &str) -> LongConnAck {
    until(20, &format!("the ack of {message_id}"), || {
        sim.long_conn_acks()
            .iter()
            .any(|a| a.message_id == message_id && a.on_time)
    })
    .await;
    sim.long_conn_acks()
        .into_iter()
        .find(|a| a.message_id == message_id && a.on_time)
        .expect("ack")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official SDKs: bash tests/sdk/install.sh, then cargo test --test sdk_events -- --include-ignored (CI does)"]
async fn python_lark_oapi_ws_client_against_the_sim() {
    let python = std::env::var_os("SDK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/sdk-venv"))
        .join("bin/python");
    if !python.exists() {
        return skipped(
            "Python lark-oapi (target/sdk-venv)",
            "bash tests/sdk/install.sh; needs python3",
        );
    }
    let sim = SimFeishu::start(sim_config()).await.expect("sim starts");
    // Short pings and an immediate reconnect, handed to the SDK by the
    // endpoint call.
    sim.set_long_conn_client_config(LongConnClientConfig {
        reconnect_count: -1,
        reconnect_interval: 1,
        reconnect_nonce: 0,
        ping_interval: 1,
    });
    let mut sdk = Driver::start(&python, &sim);

    until(30, "the SDK's connection", || {
        sim.long_conns(APP_ID).len() == 1
    })
    .await;
    let calls = sim.long_conn_endpoint_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].code, 0);
    let conn = sim.long_conns(APP_ID).remove(0);

    // An event in one frame: the handler gets it, the SDK acks 200.
    let id = sim.long_conn_push(APP_ID, &message_event("ev_sdk_1", "om_sdk_1", "hello"));
    let got = sdk
        .line("the first event", |v| v["event_id"] == "ev_sdk_1")
        .await;
    assert_eq!(got["message_id"], "om_sdk_1");
    assert_eq!(got["content"], r#"{"text":"hello"}"#);
    let ack = ack_of(&sim, &id).await;
    assert_eq!(ack.code, Some(200), "{ack:?}");
    assert!(ack.data.is_none(), "an event has no answer: {ack:?}");
    assert!(ack.biz_rt.is_some(), "the SDK adds biz_rt: {ack:?}");
    for key in ["type", "message_id", "sum", "seq", "trace_id"] {
        assert!(
            ack.headers.iter().any(|(k, _)| k == key),
            "the ack is the same frame, {key} included: {ack:?}"
        );
    }

    // The same event in fragments of 64 bytes: reassembled by the SDK,
    // acked once.
    sim.set_long_conn_fragment_size(Some(64));
    let long_text = "x".repeat(300);
    let id = sim.long_conn_push(APP_ID, &message_event("ev_sdk_2", "om_sdk_2", &long_text));
    let got = sdk
        .line("the fragmented event", |v| v["event_id"] == "ev_sdk_2")
        .await;
    assert_eq!(got["content"], json!({"text": long_text}).to_string());
    let ack = ack_of(&sim, &id).await;
    assert_eq!(ack.code, Some(200), "{ack:?}");
    let delivery = sim
        .long_conn_deliveries()
        .into_iter()
        .find(|d| d.message_id == id)
        .expect("pushed");
    assert!(delivery.fragments > 5, "{delivery:?}");
    assert_eq!(
        sim.long_conn_acks()
            .iter()
            .filter(|a| a.message_id == id)
            .count(),
        1,
        "one ack for all the fragments"
    );
    sim.set_long_conn_fragment_size(None);

    // A card callback: the handler's answer travels back base64 in "data".
    let id = sim.long_conn_push(APP_ID, &card_event("ev_sdk_card"));
    sdk.line("the card callback", |v| v["event_id"] == "ev_sdk_card")
        .await;
    let ack = ack_of(&sim, &id).await;
    assert_eq!(ack.code, Some(200), "{ack:?}");
    let answer: Value =
        serde_json::from_slice(ack.data.as_deref().expect("a callback answer")).expect("JSON");
    assert_eq!(answer["toast"]["content"], "done by the sdk", "{answer}");

    // The SDK pings with the connection's service_id (PingInterval 1 s).
    until(10, "a ping", || {
        sim.long_conn_pings()
            .iter()
            .any(|p| p.conn == conn.id && p.service == conn.service_id)
    })
    .await;

    // A connection closed by Feishu: the SDK calls the endpoint again and
    // reconnects; events flow on the new connection.
    assert_eq!(sim.cut_long_conns(APP_ID, CutMode::Close), 1);
    until(20, "the SDK's new connection", || {
        sim.long_conns(APP_ID).iter().any(|c| c.id != conn.id)
    })
    .await;
    assert_eq!(sim.long_conn_endpoint_calls().len(), 2);
    let id = sim.long_conn_push(APP_ID, &message_event("ev_sdk_3", "om_sdk_3", "again"));
    sdk.line("the event after the reconnect", |v| {
        v["event_id"] == "ev_sdk_3"
    })
    .await;
    assert_eq!(ack_of(&sim, &id).await.code, Some(200));

    // A fatal handshake answer (403, the app blocked): the SDK stops
    // reconnecting, as the fake's codes mean to Feishu's SDK.
    sim.block_long_conn_app(APP_ID, true);
    let calls_before = sim.long_conn_endpoint_calls().len();
    assert_eq!(sim.cut_long_conns(APP_ID, CutMode::Drop), 1);
    until(20, "the refused handshake", || {
        sim.long_conn_handshakes().iter().any(|h| h.status == 403)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sim.long_conn_endpoint_calls().len(),
        calls_before + 1,
        "no reconnect after 403"
    );
    assert!(sim.long_conns(APP_ID).is_empty());
    assert_eq!(sim.long_conn_bad_frames(), 0);
    drop(sdk);
    sim.shutdown().await;
}
