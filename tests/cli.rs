//! The `feishu-gateway` binary itself: `check-config`, and `serve` as a real
//! process (signals, logs, exit codes).

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use http::{Method, StatusCode};
use sha2::Digest;
use support::config::LogFormat;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_feishu-gateway");

/// The child's stdout, line by line, read on a thread of its own (ended
/// when the child closes stdout).
fn stdout_lines(
    child: &mut Child,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<String>,
    std::thread::JoinHandle<()>,
) {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (rx, reader)
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    f
}

/// `serve` with `config` (its file, kept as long as the process runs, and
/// its environment), `RUST_LOG` as given (unset otherwise), stdout piped.
fn serve(config: &GatewayConfig, rust_log: Option<&str>) -> (Child, tempfile::NamedTempFile) {
    let file = write_config(&config.text());
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(file.path())
        .envs(config.env_vars().iter().map(|(k, v)| (k, v)))
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    (cmd.spawn().unwrap(), file)
}

/// Reads the log lines, each kept in `logs`, until `listening` finds the
/// address the gateway listens on in one (20 s at most for each line).
async fn listening_addr(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    logs: &mut Vec<String>,
    listening: impl Fn(&str) -> Option<SocketAddr>,
) -> SocketAddr {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("gateway starts")
            .expect("log line");
        logs.push(line.clone());
        if let Some(addr) = listening(&line) {
            return addr;
        }
    }
}

/// The address in the JSON log line that says the gateway listens.
fn json_listening(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    (v["message"] == "feishu-gateway listening")
        .then(|| v["addr"].as_str().unwrap().parse().unwrap())
}

/// SIGTERM, then how the process ended.
async fn terminate(mut child: Child) -> ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap()
}

#[test]
fn check_config_lists_every_problem_at_once_and_no_secret() {
    let f = write_config(
        r#"
listen = "nope"
bogus = 1
[[apps]]
name = "ops-bot"
app_id = "cli_1"
app_secret_env = "GW_TEST_APP_SECRET"
[log]
level = "infoo"
[[clients]]
name = "billing"
key_env = "GW_TEST_MISSING_KEY"
app = "nobody"
allow = ["POST /open-apis/gateway-nowhere/v1/things"]
"#,
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(f.path())
        .env("GW_TEST_APP_SECRET", "super-secret-value-123")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "listen",
        "bogus",
        "log.level",
        "clients[0].key_env",
        "clients[0].app",
        "clients[0].allow[0]",
    ] {
        assert!(err.contains(&format!("- {key}: ")), "{key} in {err}");
    }
    assert!(err.contains("6 problems"), "{err}");
    assert!(!err.contains("super-secret-value-123"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("super-secret-value-123"));
}

#[test]
fn check_config_accepts_a_good_file() {
    let config = GatewayConfig::new("https://open.feishu.cn");
    let f = write_config(&config.text());
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(f.path())
        .envs(config.env_vars().iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 apps, 1 clients"));

    // A prefix entry that reaches no catalog route is a warning, printed.
    let config = config.client(
        support::config::Client::new("notifier", "CLIENT_KEY_2", "ops-bot")
            .allow(&["GET /open-apis/gateway-nowhere/v1/*"]),
    );
    let f = write_config(&config.text());
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(f.path())
        .envs(config.env_vars().iter().map(|(k, v)| (k, v)))
        .env("CLIENT_KEY_2", "client-key-notifier-0123456789")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: clients[1].allow[0]: ")
            && stdout.contains("reaches no catalog route"),
        "{stdout}"
    );
}

#[test]
fn serve_with_a_bad_config_exits_before_binding() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = port.local_addr().unwrap();
    drop(port);
    let f = write_config(&format!("listen = \"{addr}\"\n[[apps]]\nname = \"x\"\n"));
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("apps[0].app_id") && err.contains("clients"),
        "{err}"
    );
    // Nothing was bound.
    assert!(std::net::TcpListener::bind(addr).is_ok());
}

#[tokio::test]
async fn serve_logs_one_json_line_per_request_without_secrets_and_exits_0_on_sigterm() {
    let sim = SimFeishu::start(sim_config()).await.unwrap();
    let config = GatewayConfig::new(&sim.base_url())
        .log_format(LogFormat::Json)
        .log_level("debug");
    let (mut child, _file) = serve(&config, None);
    let (mut rx, _reader) = stdout_lines(&mut child);
    let mut logs = Vec::new();
    let addr = listening_addr(&mut rx, &mut logs, json_listening).await;
    let client = http_client();
    let auth = format!("Bearer {CLIENT_KEY}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let a = call(&client, addr, Method::POST, PUT_PATH, &headers, PUT_BODY).await;
    assert_eq!(a.code(), 0);
    sim.invalidate_all_tokens();
    let a = call(&client, addr, Method::POST, PUT_PATH, &headers, PUT_BODY).await;
    assert_eq!(a.code(), 0, "replayed");
    let a = call(
        &client,
        addr,
        Method::POST,
        PUT_PATH,
        &[("authorization", "Bearer wrong-key-00000000")],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    let exit = terminate(child).await;
    assert_eq!(exit.code(), Some(0), "SIGTERM exits 0");
    while let Ok(line) = rx.try_recv() {
        logs.push(line);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(line) = rx.try_recv() {
        logs.push(line);
    }

    let access: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "feishu_gateway::access")
        .collect();
    assert_eq!(access.len(), 3, "one line per request: {logs:#?}");
    for field in [
        "request_id",
        "client",
        "key",
        "app",
        "route",
        "status",
        "code",
        "total_us",
        "upstream_us",
        "logid",
    ] {
        assert!(access[0].get(field).is_some(), "{field} in {}", access[0]);
    }
    assert_eq!(access[0]["code"], "0");
    assert_ne!(access[0]["logid"], "-");
    assert_eq!(access[1]["replayed_after"], "99991663");
    assert_eq!(access[2]["status"], 401);

    let all = logs.join("\n");
    let tokens: Vec<String> = sim.token_calls().into_iter().map(|c| c.token).collect();
    assert!(!tokens.is_empty());
    for secret in [APP_SECRET, CLIENT_KEY]
        .iter()
        .copied()
        .chain(tokens.iter().map(String::as_str))
    {
        assert!(!all.contains(secret), "a secret leaked into the logs");
    }
}

/// Runs `serve` (plain log lines) with the `[log]` `level` and `RUST_LOG`,
/// sends one request once it listens, stops it with SIGTERM, and returns
/// every line it wrote. The `feishu_gateway::app` line that gives the
/// address must be on in the filter.
async fn serve_one_request(level: &str, rust_log: Option<&str>) -> Vec<String> {
    let sim = SimFeishu::start(sim_config()).await.unwrap();
    let config = GatewayConfig::new(&sim.base_url()).log_level(level);
    let (mut child, _file) = serve(&config, rust_log);
    let (mut rx, reader) = stdout_lines(&mut child);
    let mut logs = Vec::new();
    let addr = listening_addr(&mut rx, &mut logs, |line| {
        let addr = line
            .contains("feishu-gateway listening")
            .then(|| line.split(" addr=").nth(1).expect("addr="))?;
        Some(addr.split(' ').next().unwrap().parse().unwrap())
    })
    .await;
    let answer = put_at(&http_client(), addr, PUT_PATH, &[]).await;
    assert_eq!(answer.code(), 0);
    let exit = terminate(child).await;
    assert_eq!(exit.code(), Some(0));
    // The process is gone: its stdout is closed once read to the end.
    tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    while let Ok(line) = rx.try_recv() {
        logs.push(line);
    }
    logs
}

#[tokio::test]
async fn serve_writes_the_access_line_as_the_log_filter_says() {
    let access = |logs: &[String]| -> Vec<String> {
        logs.iter()
            .filter(|l| l.contains(" feishu_gateway::access: "))
            .cloned()
            .collect()
    };

    // On by default: one plain line, as tracing's fmt writes an event.
    let logs = serve_one_request("info", None).await;
    let lines = access(&logs);
    assert_eq!(lines.len(), 1, "{logs:#?}");
    let line = &lines[0];
    let (time, rest) = line.split_once(' ').unwrap();
    assert_eq!(time.len(), "2026-11-24T10:11:12.123456Z".len(), "{line}");
    assert!(
        rest.starts_with(" INFO feishu_gateway::access: request request_id=\"gw-"),
        "{line}"
    );
    // The key is named by the first 8 hex digits of its SHA-256.
    let key = format!(
        " client=\"billing\" key=\"{}\" app=\"ops-bot\"",
        &hex::encode(sha2::Sha256::digest(CLIENT_KEY.as_bytes()))[..8]
    );
    for field in [
        key.as_str(),
        " route=\"/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice\" status=200 code=0 total_us=",
        " gateway_error=\"-\" replayed_after=-",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert!(line.ends_with(" replayed_after=-"), "{line}");

    // Off by RUST_LOG, or by the configured level, while other lines stay.
    for (level, rust_log) in [
        ("info", Some("info,feishu_gateway::access=off")),
        ("info", Some("warn,feishu_gateway::app=info")),
        ("warn,feishu_gateway::app=info", None),
    ] {
        let logs = serve_one_request(level, rust_log).await;
        assert_eq!(access(&logs), Vec::<String>::new(), "{level} {rust_log:?}");
        assert!(logs.iter().any(|l| l.contains("feishu-gateway stopped")));
    }
}

/// SIGHUP re-reads the config file, and so does a change of the file: a
/// rotated key works at once, the removed one is refused, a broken file
/// changes nothing (its problems logged, without a secret), and the
/// process never stops serving.
#[tokio::test]
async fn sighup_reloads_the_config_file_and_a_broken_file_changes_nothing() {
    const NEXT_KEY: &str = "client-key-billing-NEXT-0123456789";
    let sim = SimFeishu::start(sim_config()).await.unwrap();
    let config = GatewayConfig::new(&sim.base_url())
        .env("NEXT_KEY", NEXT_KEY)
        .log_format(LogFormat::Json);
    let (mut child, file) = serve(&config, None);
    let (mut rx, _reader) = stdout_lines(&mut child);
    let mut logs = Vec::new();
    let addr = listening_addr(&mut rx, &mut logs, json_listening).await;
    let client = http_client();
    let put_as = |key: &'static str| {
        let client = client.clone();
        async move {
            let auth = format!("Bearer {key}");
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ];
            call(&client, addr, Method::POST, PUT_PATH, &headers, PUT_BODY).await
        }
    };
    assert_eq!(put_as(CLIENT_KEY).await.code(), 0);
    assert_eq!(put_as(NEXT_KEY).await.status, StatusCode::UNAUTHORIZED);
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };

    // A broken file: the running config stays.
    std::fs::write(
        file.path(),
        format!("{}\nbogus_key = 1\n", config.text()).replace("CLIENT_KEY", "NOWHERE_KEY"),
    )
    .unwrap();
    hup();
    wait_for_log(&mut rx, &mut logs, "config reload refused").await;
    assert_eq!(put_as(CLIENT_KEY).await.code(), 0, "the old config serves");

    // billing rotated to NEXT_KEY only.
    let rotated = config.text().replace("\"CLIENT_KEY\"", "\"NEXT_KEY\"");
    assert_ne!(rotated, config.text());
    std::fs::write(file.path(), rotated).unwrap();
    hup();
    wait_for_log(&mut rx, &mut logs, "config reloaded").await;
    assert_eq!(put_as(NEXT_KEY).await.code(), 0);
    assert_eq!(put_as(CLIENT_KEY).await.status, StatusCode::UNAUTHORIZED);

    // A file change alone (no signal) is seen within the poll interval.
    std::fs::write(file.path(), config.text()).unwrap();
    wait_for_log(&mut rx, &mut logs, "the config file changed").await;
    wait_for_log(&mut rx, &mut logs, "config reloaded").await;
    assert_eq!(put_as(CLIENT_KEY).await.code(), 0);
    assert_eq!(put_as(NEXT_KEY).await.status, StatusCode::UNAUTHORIZED);

    let exit = terminate(child).await;
    assert_eq!(exit.code(), Some(0));
    while let Ok(line) = rx.try_recv() {
        logs.push(line);
    }
    let all = logs.join("\n");
    for problem in ["bogus_key", "NOWHERE_KEY"] {
        assert!(
            all.contains(problem),
            "the refused reload names {problem}: {all}"
        );
    }
    for secret in [APP_SECRET, CLIENT_KEY, NEXT_KEY] {
        assert!(!all.contains(secret), "a secret leaked into the logs");
    }
}

/// Reads log lines (kept in `logs`) until one contains `needle` (20 s at
/// most).
async fn wait_for_log(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    logs: &mut Vec<String>,
    needle: &str,
) {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no log line with {needle:?}: {logs:#?}"))
            .expect("log line");
        logs.push(line.clone());
        if line.contains(needle) {
            return;
        }
    }
}

/// `serve` with `[tracing]`: the access line carries the trace id when the
/// request is part of a trace (and leaves the field out otherwise), so logs
/// and traces join; at SIGTERM the spans still queued reach the collector
/// before the process exits.
#[tokio::test]
async fn serve_with_tracing_puts_the_trace_id_in_the_access_line_and_exports_at_sigterm() {
    const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
    let receiver = support::otlp::OtlpReceiver::start().await;
    let sim = SimFeishu::start(sim_config()).await.unwrap();
    // Ratio 0: only the caller's sampled trace is recorded.
    let config = GatewayConfig::new(&sim.base_url())
        .log_format(LogFormat::Json)
        .tracing(&receiver.url(), 0.0);
    let (mut child, _file) = serve(&config, None);
    let (mut rx, reader) = stdout_lines(&mut child);
    let mut logs = Vec::new();
    let addr = listening_addr(&mut rx, &mut logs, |line| {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
        (v["message"] == "feishu-gateway listening")
            .then(|| v["addr"].as_str().unwrap().parse().unwrap())
    })
    .await;
    let client = http_client();
    let traced = format!("00-{TRACE_ID}-b7ad6b7169203331-01");
    assert_eq!(
        put_at(&client, addr, PUT_PATH, &[("traceparent", &traced)])
            .await
            .code(),
        0
    );
    assert_eq!(put_at(&client, addr, PUT_PATH, &[]).await.code(), 0);
    let exit = terminate(child).await;
    assert_eq!(exit.code(), Some(0));
    tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    while let Ok(line) = rx.try_recv() {
        logs.push(line);
    }
    let access: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "feishu_gateway::access")
        .collect();
    assert_eq!(access.len(), 2, "{logs:#?}");
    assert_eq!(access[0]["trace_id"], TRACE_ID, "{}", access[0]);
    assert!(
        access[1].get("trace_id").is_none(),
        "not sampled: {}",
        access[1]
    );
    // Exported at the shutdown, not left in the queue.
    let spans = receiver.trace(TRACE_ID);
    assert!(
        spans.iter().any(|s| s.parent_span_id == "b7ad6b7169203331"),
        "{spans:#?}"
    );
    assert_eq!(
        receiver.spans().len(),
        spans.len(),
        "only the caller's trace"
    );
}
