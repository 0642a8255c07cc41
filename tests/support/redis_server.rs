//! A `redis-server` of the test's own, on a free loopback port, with no
//! persistence; killed on drop.
//!
//! Without `redis-server` on PATH, [`RedisServer::start`] returns `None`
//! after a note (the test is skipped), except under `CI=true`, where it
//! fails (`deploy/ci-install-redis.sh` installs it).

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{FailMode, PlanPolicy, RedisSettings, Secret};
use feishu_gateway::redis_connection::RedisTarget;

/// A `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one, or returns `None` (after a note) when `redis-server` is
    /// not installed; under `CI=true` that is a failure.
    pub fn start() -> Option<RedisServer> {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Option<RedisServer> {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Self::start_on(port, extra)
    }

    /// [`RedisServer::start_with`] on `port` (free, chosen by the caller:
    /// e.g. one of several taken at once, so that they differ).
    pub fn start_on(port: u16, extra: &[&str]) -> Option<RedisServer> {
        if !installed("redis-server") {
            super::skipped("redis-server", "bash deploy/ci-install-redis.sh");
            return None;
        }
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            self.dir.path().display().to_string(),
        ];
        if self.extra.iter().any(|a| a == "--tls-port") {
            args.extend(["--port".into(), "0".into()]);
        } else {
            args.extend(["--port".into(), port]);
        }
        args.extend(
            self.extra
                .iter()
                .map(|a| a.replace("PORT", &self.port.to_string())),
        );
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr()).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL, state lost (no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it runs (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// A fresh server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP / SIGCONT: a server that accepts but never answers.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("test connection to redis")
    }
}

/// Whether `program --version` runs.
pub fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // A stopped server must be continued to die cleanly.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

impl RedisServer {
    /// Settings of a Redis quota engine or ticket store on this server,
    /// with keys under `t:`, probing every 100 ms.
    pub fn settings(&self, fail: FailMode, replicas: u32, timeout: Duration) -> RedisSettings {
        RedisSettings {
            target: RedisTarget::Url(Secret::new(self.url())),
            ca_file: None,
            key_prefix: "t:".into(),
            fail,
            replicas,
            timeout,
            min_rate_fraction: PlanPolicy::default().min_rate_fraction,
            probe_interval: Duration::from_millis(100),
        }
    }
}

/// A [`RedisServer`], or `return` from the test (skipped) when
/// `redis-server` is not installed.
#[allow(unused_macros)]
macro_rules! redis_or_skip {
    () => {
        match $crate::support::redis_server::RedisServer::start() {
            Some(r) => r,
            None => return,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use redis_or_skip;
