//! A real proxy (nginx, HAProxy) as the gateway's upstream, in front of the
//! simulated Feishu: finding its binary, its temp dir with a test CA and a
//! certificate for `localhost`, the process, its access log; and the check
//! both proxies' tests make (calls pass, the protocol chosen by ALPN shows
//! in the proxy's log).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use feishu_sim::ca::{IssuedCert, TestCa};
use feishu_sim::SimFeishu;

/// The first of `candidates` that exists, or `None` to skip (but never
/// under CI, which installs it with `install`).
pub fn binary_or_skip(name: &str, candidates: &[&str], install: &str) -> Option<PathBuf> {
    let found = candidates.iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        super::skipped(name, install);
    }
    found
}

/// Where the simulated Feishu listens, for a proxy's `server` line.
pub fn origin_of(sim: &SimFeishu) -> SocketAddr {
    sim.base_url()
        .trim_start_matches("http://")
        .parse()
        .expect("the sim listens on an address")
}

/// A proxy's files before it starts: a temp dir holding `ca.pem` (the test
/// CA the gateway trusts), a certificate for `localhost`, and a free
/// loopback port.
pub struct Prepared {
    pub dir: tempfile::TempDir,
    pub cert: IssuedCert,
    pub port: u16,
}

impl Prepared {
    pub fn new(ca_name: &str) -> Prepared {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new(ca_name).expect("CA");
        let cert = ca.issue_localhost("localhost").expect("certificate");
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Prepared { dir, cert, port }
    }

    /// A file in the temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A running proxy, killed on drop.
pub struct Proxy {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
    /// The test CA, for `upstream_ca_file`.
    pub ca: PathBuf,
    /// Its access log (in the temp dir).
    access_log: PathBuf,
    /// What to show when it does not start (its error log).
    error_log: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Runs `cmd` (stdin and stdout closed; stderr to `stderr_to` in the
    /// temp dir) and waits, at most 10 s, until it listens on the port.
    pub fn spawn(
        prepared: Prepared,
        mut cmd: Command,
        stderr_to: &str,
        access_log: &str,
        error_log: &str,
    ) -> Proxy {
        let stderr = std::fs::File::create(prepared.path(stderr_to)).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let proxy = Proxy {
            child,
            ca: prepared.path("ca.pem"),
            access_log: prepared.path(access_log),
            error_log: prepared.path(error_log),
            port: prepared.port,
            dir: prepared.dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", proxy.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{cmd:?} did not listen: {}",
                proxy.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    /// `https://localhost:<port>` or `http://127.0.0.1:<port>`.
    pub fn base_url(&self, tls: bool) -> String {
        if tls {
            format!("https://localhost:{}", self.port)
        } else {
            format!("http://127.0.0.1:{}", self.port)
        }
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }

    /// The access lines for `path`, once the proxy has written them.
    pub async fn lines_for(&self, path: &str) -> Vec<String> {
        for _ in 0..100 {
            let lines: Vec<String> = self
                .access_log()
                .lines()
                .filter(|l| l.contains(path))
                .map(str::to_string)
                .collect();
            if !lines.is_empty() {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Vec::new()
    }

    /// After two puts and the token call through the proxy: its access log
    /// has both puts, answered 200 over `protocol` (`HTTP/2.0`,
    /// `HTTP/1.1`), and the token call.
    pub async fn assert_puts_over(&self, protocol: &str) {
        let puts = self.lines_for("/top_notice/put_top_notice").await;
        assert_eq!(puts.len(), 2, "{}", self.access_log());
        for line in &puts {
            assert!(line.ends_with(&format!("{protocol} 200")), "{line}");
        }
        let tokens = self.lines_for("tenant_access_token").await;
        assert!(!tokens.is_empty(), "{}", self.access_log());
    }
}
