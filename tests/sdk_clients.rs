//! Proof with the real SDKs: the official Python (`lark-oapi`) and
//! Node (`@larksuiteoapi/node-sdk`) SDKs, configured only with the gateway's
//! HTTPS base URL, the app id and the client's gateway key as the app secret,
//! against the gateway in front of the simulated Feishu.
//!
//! Each SDK runs as a subprocess (`tests/sdk/*_driver.*`) that prints one JSON
//! line per case; this file starts the fake and two gateways (one with a tiny
//! quota for the rate-limit case), runs the drivers, and asserts on their
//! output and on what the fake Feishu saw.
//!
//! The SDKs come from `tests/sdk/install.sh` (a venv in `target/sdk-venv`,
//! `tests/sdk/node_modules`), which `cargo test` alone does not run: the
//! tests are `#[ignore]`d with that reason, so a plain `cargo test` reports
//! them as ignored instead of passing them silently. Run them with
//! `cargo test --test sdk_clients -- --include-ignored` (`.ci/run` does).
//! Run so without an SDK, a test says SKIPPED on stderr, except under
//! `CI=true`, where it fails.
//!
//! The Go SDK (`oapi-sdk-go`) is not driven: it is served only by the Go
//! module proxy, which this project's machines cannot reach.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::time::Duration;

use serde_json::Value;
use support::*;

/// A quota so small that the second call in a row is refused (Python and
/// Node calls take milliseconds; ten seconds leaves room for a slow CI).
const TINY_QUOTA: &[(u32, Duration)] = &[(1, Duration::from_secs(10))];

/// The cases each driver runs against the ordinary gateway, in this order
/// (`bad_key` first: the SDKs cache a token per app id for the process).
const CASES: &[&str] = &[
    "bad_key",
    "token",
    "put",
    "feishu_error",
    "validation",
    "set_token",
];

/// Longest a driver may run (coreutils `timeout`).
const DRIVER_TIMEOUT_SECS: &str = "180";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether a missing SDK or runtime must fail rather than skip.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (says why, visibly) or, under CI, fails.
fn missing(what: &str) {
    assert!(
        !in_ci(),
        "CI=true: {what} is not installed: .ci/run runs `bash tests/sdk/install.sh`"
    );
    skipped(what, "bash tests/sdk/install.sh; needs python3, node, npm");
}

/// The fake Feishu and two gateways in front of it, both serving HTTPS on
/// loopback with a `localhost` certificate from a test CA.
struct Setup {
    sim: SimFeishu,
    /// The ordinary gateway (no gateway quota on put_top_notice).
    gw: Runtime,
    /// The same, with put_top_notice limited to `1/10s`.
    limited: Runtime,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let sim = SimFeishu::start(sim_without_quota())
            .await
            .expect("sim starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("sdk test CA").expect("CA");
        let cert = ca.issue_localhost("feishu-gateway").expect("cert");
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write");
        std::fs::write(dir.path().join("cert.pem"), &cert.cert_pem).expect("write");
        std::fs::write(dir.path().join("key.pem"), &cert.key_pem).expect("write");
        let https = GatewayConfig::new(&sim.base_url())
            .tls(&dir.path().join("cert.pem"), &dir.path().join("key.pem"));
        let gw = start_gateway(&https.clone().without_put_quota()).await;
        let limited = start_gateway(&https.put_limits(TINY_QUOTA)).await;
        Setup {
            sim,
            gw,
            limited,
            dir,
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// The base URL an SDK is given: `https://localhost:<port>`.
fn base_url(gw: &Runtime) -> String {
    format!("https://localhost:{}", gw.addr().port())
}

/// One SDK driver: the interpreter, its script, and the environment variable
/// that makes it trust the test CA.
struct Driver {
    name: &'static str,
    program: PathBuf,
    script: PathBuf,
    ca_env: &'static [&'static str],
}

impl Driver {
    /// A command for `cases` against `gw`, trusting `setup`'s CA; no proxy
    /// from the environment may take the loopback traffic.
    fn command(&self, setup: &Setup, gw: &Runtime, cases: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.arg(DRIVER_TIMEOUT_SECS)
            .arg(&self.program)
            .arg(&self.script)
            .args(cases)
            .current_dir(root().join("tests/sdk"))
            .env("GW_URL", base_url(gw))
            .env("GW_APP_ID", APP_ID)
            .env("GW_KEY", CLIENT_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        support::tools::without_proxies(&mut cmd);
        for var in self.ca_env {
            cmd.env(var, setup.ca_file());
        }
        cmd
    }
}

/// Runs `cmd` off the async runtime (the gateways it calls live on it) and
/// returns the case results by name.
async fn run(name: &str, mut cmd: Command) -> BTreeMap<String, Value> {
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{name} driver: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} driver failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let mut results = BTreeMap::new();
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(case) = v["case"].as_str() {
            println!("{name}: {line}");
            results.insert(case.to_string(), v);
        }
    }
    if !stderr.trim().is_empty() {
        println!("{name} stderr:\n{stderr}");
    }
    results
}

fn case<'a>(results: &'a BTreeMap<String, Value>, sdk: &str, name: &str) -> &'a Value {
    let v = results
        .get(name)
        .unwrap_or_else(|| panic!("{sdk}: no result for case {name}: {results:?}"));
    assert!(v.get("exception").is_none(), "{sdk} {name}: {v}");
    v
}

/// Runs one SDK through every case and checks what the caller saw and what
/// Feishu saw. `thrown` is how the SDK reports a non-2xx answer: Node
/// rejects with the body in `error.response.data`, Python returns it.
async fn prove(driver: Driver, thrown_on_error: bool) {
    let setup = Setup::start().await;
    let sdk = driver.name;
    let (main, limited) = tokio::join!(
        run(sdk, driver.command(&setup, &setup.gw, CASES)),
        run(sdk, driver.command(&setup, &setup.limited, &["rate_limit"])),
    );

    // A wrong gateway key: the SDK's token call gets Feishu's wrong-secret
    // answer (Python raises ObtainAccessTokenException, Node rejects).
    let v = case(&main, sdk, "bad_key");
    assert_eq!(v["code"], 10014, "{sdk}: {v}");

    // The SDK's own token call, answered by the gateway.
    let v = case(&main, sdk, "token");
    assert_eq!(v["code"], 0, "{sdk}: {v}");
    assert_eq!(v["token_prefix"], "t-g1.", "{sdk}: a gateway token: {v}");
    assert_eq!(v["token_contains_key"], false, "{sdk}: {v}");

    // The typed put_top_notice succeeds.
    let v = case(&main, sdk, "put");
    assert_eq!(v["code"], 0, "{sdk}: {v}");
    if !thrown_on_error {
        assert_eq!(v["success"], true, "{sdk}: {v}");
        assert!(
            v["log_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{sdk}: the SDK reads Feishu's X-Tt-Logid: {v}"
        );
    }

    // A Feishu error code comes back as Feishu sent it: HTTP 400, the code,
    // Feishu's msg and log id, nothing from the gateway.
    let v = case(&main, sdk, "feishu_error");
    assert_eq!(v["code"], 232011, "{sdk}: {v}");
    assert_eq!(v["status"], 400, "{sdk}: {v}");
    assert_eq!(v["thrown"].as_bool().unwrap_or(false), thrown_on_error);
    assert!(v["gateway_error"].is_null(), "{sdk}: {v}");
    let msg = v["msg"].as_str().unwrap_or("");
    assert!(
        !msg.is_empty() && !msg.starts_with("feishu-gateway"),
        "{sdk}: {v}"
    );
    let reqs = setup.sim.requests();
    let feishu_answer = reqs
        .iter()
        .find(|r| r.path.contains("/oc_error232011/"))
        .expect("Feishu saw the call");
    assert_eq!(feishu_answer.answered_code, 232011);
    assert_eq!(
        v["log_id"].as_str(),
        Some(feishu_answer.logid.as_str()),
        "{sdk}: Feishu's X-Tt-Logid reaches the caller: {v}"
    );

    // A body the gateway refuses: 232001 with the field named.
    let v = case(&main, sdk, "validation");
    assert_eq!(v["code"], 232001, "{sdk}: {v}");
    assert_eq!(v["status"], 400, "{sdk}: {v}");
    assert_eq!(v["thrown"].as_bool().unwrap_or(false), thrown_on_error);
    assert_eq!(
        v["gateway_error"], "invalid-request",
        "{sdk}: the gateway answered: {v}"
    );
    let msg = v["msg"].as_str().unwrap_or("");
    assert!(
        msg.contains("chat_top_notice[0].action_type"),
        "{sdk}: the field message: {v}"
    );
    assert!(
        !reqs
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains(r#""action_type":1"#)),
        "{sdk}: refused before Feishu"
    );

    // The gateway's own rate limit: 429 / 99991400, as Feishu's would be.
    let v = case(&limited, sdk, "rate_limit");
    assert_eq!(v["code"], 99991400, "{sdk}: {v}");
    assert_eq!(v["status"], 429, "{sdk}: {v}");
    assert_eq!(v["gateway_error"], "rate-limited", "{sdk}: {v}");
    assert_eq!(v["codes"][0], 0, "{sdk}: the first call went through: {v}");
    assert_eq!(v["thrown"].as_bool().unwrap_or(false), thrown_on_error);

    // "Set the token yourself" mode with the raw gateway key.
    let v = case(&main, sdk, "set_token");
    assert_eq!(v["code"], 0, "{sdk}: {v}");

    the_app_secret_never_left_the_gateway(&setup, sdk);
}

/// The fake Feishu saw only the gateways' own token calls (with the real
/// secret: the fake refuses any other), and every business request carried
/// one of the tenant tokens it issued to them; no gateway key or gateway
/// token ever reached it.
fn the_app_secret_never_left_the_gateway(setup: &Setup, sdk: &str) {
    let calls = setup.sim.token_calls();
    assert!(!calls.is_empty(), "{sdk}: the gateways fetched tokens");
    assert!(
        calls.len() <= 2,
        "{sdk}: one token call per gateway, none from the SDK: {calls:?}"
    );
    for c in &calls {
        assert!(
            c.ok && c.kind == TokenKind::Tenant && c.app_id == APP_ID,
            "{sdk}: only the gateway's own token calls, with the real secret: {c:?}"
        );
    }
    let issued: HashSet<&str> = calls.iter().map(|c| c.token.as_str()).collect();
    let reqs = setup.sim.requests();
    // put, feishu_error, validation (until the gateway validates), set_token,
    // and the calls the tiny quota let through.
    assert!(reqs.len() >= 4, "{sdk}: {reqs:?}");
    for r in &reqs {
        assert!(!r.path.contains("/auth/"), "{sdk}: {}", r.path);
        let bearer = r.bearer.as_deref().unwrap_or("");
        assert!(
            issued.contains(bearer),
            "{sdk}: {} carried {bearer:?}, not the gateway's tenant token",
            r.path
        );
        let mut seen = String::from_utf8_lossy(&r.body).into_owned();
        for (k, v) in &r.headers {
            seen.push_str(&format!("\n{k}: {}", String::from_utf8_lossy(v.as_bytes())));
        }
        assert!(
            !seen.contains(CLIENT_KEY) && !seen.contains("t-g1."),
            "{sdk}: a gateway credential reached Feishu: {seen}"
        );
    }
    assert!(
        reqs.iter().any(
            |r| r.path.contains("/oc_sdk") && r.path.ends_with("set/top_notice/put_top_notice")
        ),
        "{sdk}: the set-token call reached Feishu"
    );
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have(path: &Path) -> bool {
    path.exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official SDKs: bash tests/sdk/install.sh, then cargo test --test sdk_clients -- --include-ignored (CI does)"]
async fn python_lark_oapi_through_the_gateway() {
    let python = std::env::var_os("SDK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/sdk-venv"))
        .join("bin/python");
    if !have(&python) {
        return missing("Python lark-oapi (target/sdk-venv)");
    }
    let driver = Driver {
        name: "python",
        program: python,
        script: root().join("tests/sdk/python_driver.py"),
        // requests reads REQUESTS_CA_BUNDLE; httpx (the async calls) SSL_CERT_FILE.
        ca_env: &["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"],
    };
    prove(driver, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the official SDKs: bash tests/sdk/install.sh, then cargo test --test sdk_clients -- --include-ignored (CI does)"]
async fn node_sdk_through_the_gateway() {
    if !on_path("node") {
        return missing("Node.js");
    }
    if !have(&root().join("tests/sdk/node_modules/@larksuiteoapi/node-sdk")) {
        return missing("@larksuiteoapi/node-sdk (tests/sdk/node_modules)");
    }
    let driver = Driver {
        name: "node",
        program: PathBuf::from("node"),
        script: root().join("tests/sdk/node_driver.js"),
        ca_env: &["NODE_EXTRA_CA_CERTS"],
    };
    prove(driver, true).await;
}
