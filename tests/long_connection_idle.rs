//! A gateway holding a long connection without Redis (no lease) is idle
//! between events: the client's loop waits, it does not spin. Alone in its
//! own test binary, so the process's CPU time is this test's.
//!
//! Regression: the lease channel's sender was dropped when there was no
//! lease, and `watch::Receiver::changed()` on a closed channel answers at
//! once, forever; the session's select spun on it (a core at 100 %).

mod support;

use std::time::{Duration, Instant};

use support::config::{App, Client};
use support::*;

/// User + system CPU time of this process, from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // After the command name (in parentheses, may hold spaces): fields 14
    // and 15 of the line are utime and stime, in clock ticks.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // 100 ticks a second on Linux (USER_HZ).
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_connection_without_redis_waits_between_events() {
    let sim = SimFeishu::start(sim_config()).await.expect("sim");
    let config = GatewayConfig::bare(&sim.base_url())
        .app(App::self_built("ws-bot", APP_ID, "APP_SECRET").events("long_connection"))
        .client(Client::new("billing", "CLIENT_KEY", "ws-bot"))
        .env("APP_SECRET", APP_SECRET)
        .env("CLIENT_KEY", CLIENT_KEY);
    let gw = start_gateway(&config).await;
    wait_for(Duration::from_secs(10), || async {
        sim.long_conns(APP_ID).len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cpu, wall) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_time() - cpu;
    let over = wall.elapsed();
    eprintln!("idle long connection: {used:?} of CPU in {over:?}");
    // A spinning loop burns a whole core (about 3 s here); an idle client
    // and the simulated Feishu use a few milliseconds.
    assert!(
        used < Duration::from_millis(600),
        "{used:?} of CPU in {over:?}"
    );
    assert_eq!(sim.long_conns(APP_ID).len(), 1);
    gw.shutdown();
    gw.wait().await;
    sim.shutdown().await;
}
