//! Connection storms: 2,000 connects in one burst against the gateway (in
//! front of the simulated Feishu, in-process), with one request sent beside
//! them on a connection of its own, for several listen backlogs. Run:
//! `cargo bench --bench storm` (`STORM_ROUNDS=N` rounds per backlog,
//! default 10).
//!
//! Per round: how long the burst of connects took (the client's view),
//! the slowest single connect (>= 1 s means a SYN was dropped and
//! retransmitted), when the gateway had accepted them all (a connect the
//! kernel completed while the accept queue was full is established for the
//! client, but reaches the gateway only after a retransmitted SYN-ACK, a
//! second or more later, or never: given up after 5 s), and how long the
//! request beside them took. The table gives the median and the worst round
//! of each, and how many rounds saw a handshake dropped (a connect or the
//! last accept after 900 ms).

use std::time::Duration;

use feishu_gateway::app::Runtime;
use feishu_gateway::config::{Config, MapEnv};
use feishu_sim::{QuotaMode, SimConfig, SimFeishu};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const APP_ID: &str = "cli_storm000000001";
const APP_SECRET: &str = "storm-app-secret-0001";
const CLIENT_KEY: &str = "storm-client-key-0123456789";
const PUT_PATH: &str = "/open-apis/im/v1/chats/oc_1/top_notice/put_top_notice";
const PUT_BODY: &str = r#"{"chat_top_notice":[{"action_type":"2"}]}"#;
const STORM: usize = 2000;
/// How long a round waits for the gateway to have accepted the burst.
const GIVE_UP: Duration = Duration::from_secs(5);

fn config(upstream: &str, backlog: u32) -> Config {
    let text = format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
upstream = "{upstream}"
listen_backlog = {backlog}
[log]
level = "error"
[[apps]]
name = "storm"
app_id = "{APP_ID}"
app_secret_env = "APP_SECRET"
[[clients]]
name = "storm"
key_env = "CLIENT_KEY"
app = "storm"
[[routes]]
method = "POST"
path = "/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice"
limits = []
"#
    );
    let env = MapEnv::new()
        .with("APP_SECRET", APP_SECRET)
        .with("CLIENT_KEY", CLIENT_KEY);
    Config::parse(&text, &env).expect("config")
}

/// One put_top_notice on a new connection; its status line and how long
/// it took.
async fn put(addr: std::net::SocketAddr) -> (String, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "POST {PUT_PATH} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{PUT_BODY}",
        PUT_BODY.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.expect("read");
    let took = t.elapsed();
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    (status, took)
}

struct Round {
    burst: Duration,
    slowest: Duration,
    accepted: Duration,
    beside: Duration,
}

async fn round(sim: &SimFeishu, backlog: u32) -> Round {
    let gw = Runtime::start(config(&sim.base_url(), backlog))
        .await
        .expect("gateway");
    let addr = gw.addr();
    // Warm: the token is fetched, an upstream connection open.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !put(addr).await.0.contains(" 200 ") {
        assert!(Instant::now() < deadline, "gateway not serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Counted once each: the burst and the request beside it.
    let accepted = gw.gateway().metrics().listener("main").accepted;
    let base = accepted.get();

    let started = Instant::now();
    let mut storm = tokio::task::JoinSet::new();
    for _ in 0..STORM {
        storm.spawn(async move {
            let t = Instant::now();
            let s = TcpStream::connect(addr).await.expect("connect");
            (t.elapsed(), s)
        });
    }
    let (status, beside) = put(addr).await;
    assert!(status.contains(" 200 "), "{status}");
    let mut held = Vec::with_capacity(STORM);
    let mut slowest = Duration::ZERO;
    while let Some(joined) = storm.join_next().await {
        let (took, s) = joined.expect("connect task");
        slowest = slowest.max(took);
        held.push(s);
    }
    let burst = started.elapsed();
    // A connect the kernel completed when the accept queue was full is
    // established for the client but not in the queue: the server has
    // dropped the handshake's last ACK, and the connection reaches the
    // gateway only after a retransmitted SYN-ACK (1 s, 3 s, ...) or never.
    let deadline = started + GIVE_UP;
    while accepted.get() < base + STORM as u64 + 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let accepted = started.elapsed();
    drop(held);
    gw.shutdown();
    gw.wait().await;
    Round {
        burst,
        slowest,
        accepted,
        beside,
    }
}

fn ms(d: Duration) -> String {
    if d >= GIVE_UP {
        return format!("> {} s", GIVE_UP.as_secs());
    }
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("STORM_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut sim_config = SimConfig::with_app(APP_ID, APP_SECRET);
    sim_config.quota = QuotaMode::Off;
    sim_config.record_requests = false;
    let sim = SimFeishu::start(sim_config).await.expect("sim");
    println!(
        "{STORM} connects in a burst, one put_top_notice beside them; {rounds} rounds per backlog; net.core.somaxconn = {:?}",
        feishu_gateway::server::listener::somaxconn()
    );
    println!(
        "| listen_backlog | burst (median / worst) | slowest connect (median / worst) | all accepted (median / worst) | request beside (median / worst) | rounds with a dropped handshake |"
    );
    println!("|---|---|---|---|---|---|");
    for backlog in [128, 1024, 4096] {
        let mut all = Vec::new();
        for _ in 0..rounds {
            all.push(round(&sim, backlog).await);
        }
        let pick = |f: fn(&Round) -> Duration| all.iter().map(f).collect::<Vec<_>>();
        let cell = |v: Vec<Duration>| {
            let worst = v.iter().max().copied().unwrap_or_default();
            format!("{} / {}", ms(median(v)), ms(worst))
        };
        let dropped = all
            .iter()
            .filter(|r| {
                r.slowest >= Duration::from_millis(900) || r.accepted >= Duration::from_millis(900)
            })
            .count();
        println!(
            "| {backlog} | {} | {} | {} | {} | {dropped} of {rounds} |",
            cell(pick(|r| r.burst)),
            cell(pick(|r| r.slowest)),
            cell(pick(|r| r.accepted)),
            cell(pick(|r| r.beside)),
        );
    }
    sim.shutdown().await;
}
