//! The `feishu-gateway` binary itself: `check-config`, and `serve` as a real
//! process (signals, logs, exit codes).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use feishu_gateway::sim::SimFeishu;
use http::{Method, StatusCode};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_feishu-gateway");

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    f
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
[[clients]]
name = "billing"
key_env = "GW_TEST_MISSING_KEY"
app = "nobody"
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
    for key in ["listen", "bogus", "clients[0].key_env", "clients[0].app"] {
        assert!(err.contains(&format!("- {key}: ")), "{key} in {err}");
    }
    assert!(err.contains("4 problems"), "{err}");
    assert!(!err.contains("super-secret-value-123"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("super-secret-value-123"));
}

#[test]
fn check_config_accepts_a_good_file() {
    let f = write_config(&config_text("https://open.feishu.cn", "", ""));
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(f.path())
        .env("APP_SECRET", APP_SECRET)
        .env("CLIENT_KEY", CLIENT_KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 apps, 1 clients"));
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
    let f = write_config(&config_text(
        &sim.base_url(),
        "",
        "[log]\nformat = \"json\"\nlevel = \"debug\"\n",
    ));
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(f.path())
        .env("APP_SECRET", APP_SECRET)
        .env("CLIENT_KEY", CLIENT_KEY)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut logs = Vec::new();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("gateway starts")
            .expect("log line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        logs.push(line);
        if v["message"] == "feishu-gateway listening" {
            break v["addr"]
                .as_str()
                .unwrap()
                .parse::<std::net::SocketAddr>()
                .unwrap();
        }
    };
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

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
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
