//! Outside programs the tests run: Prometheus' `promtool` and `prometheus`
//! (Debian's `prometheus` package, `deploy/ci-install.sh`), scripts.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `cmd` without the proxy variables of the environment, and with loopback
/// exempted: the SDK drivers talk to the gateway or the simulated Feishu on
/// 127.0.0.1, never through a proxy a developer's shell may set.
#[allow(dead_code)]
pub fn without_proxies(cmd: &mut Command) -> &mut Command {
    cmd.env("NO_PROXY", "localhost,127.0.0.1")
        .env("no_proxy", "localhost,127.0.0.1");
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The path of `name` on PATH. Missing: `None` with a note, or a failure
/// when `CI` is set, which must install it (deploy/ci-install.sh).
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = on_path(name);
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "{name} is not on PATH and CI is set: .ci/run must install it \
                 (deploy/ci-install.sh installs Debian's prometheus package)"
            );
        }
        super::skipped(
            name,
            "apt-get install prometheus, or bash deploy/ci-install.sh",
        );
    }
    found
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Runs a command to completion (at most 120 s), with `stdin` as its input;
/// returns (success, stdout and stderr).
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> (bool, String) {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(input).expect("write stdin");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `promtool check metrics` on a text exposition: (accepted, what it said),
/// or `None` when promtool is not on PATH (tests/deploy.rs requires it
/// under CI).
pub fn promtool_check_metrics(exposition: &str) -> Option<(bool, String)> {
    let promtool = on_path("promtool")?;
    Some(run(
        Command::new(promtool).args(["check", "metrics"]),
        Some(exposition.as_bytes()),
    ))
}
