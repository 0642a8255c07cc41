//! `feishu-gateway demo`: a simulated Feishu on loopback and the gateway in
//! front of it, with a demo app and a demo client key. Needs nothing but the
//! binary; prints ready-to-paste `curl` commands.

use std::net::SocketAddr;

use crate::app::{Runtime, StartError};
use crate::config::{Config, MapEnv};
use feishu_sim::{QuotaMode, SimApp, SimConfig, SimFeishu};

/// The demo client's gateway key (printed in the curl commands).
pub const DEMO_CLIENT_KEY: &str = "demo-client-key-0123456789";
/// The demo app's Feishu app id.
pub const DEMO_APP_ID: &str = "cli_demo00000000001";

/// What the demo started.
pub struct Demo {
    /// The simulated Feishu.
    pub sim: SimFeishu,
    /// The gateway in front of it.
    pub gateway: Runtime,
}

/// Starts the simulated Feishu and the gateway on `listen` / `admin_listen`.
pub async fn start(listen: SocketAddr, admin_listen: SocketAddr) -> Result<Demo, String> {
    let secret = format!("demo-secret-{:016x}", rand::random::<u64>());
    let mut sim_config = SimConfig::with_app(DEMO_APP_ID, secret.clone());
    // A long-running demo must not grow: keep counters, not request records.
    sim_config.record_requests = false;
    let sim = SimFeishu::start(sim_config)
        .await
        .map_err(|e| format!("cannot start the simulated Feishu: {e}"))?;
    let text = format!(
        r#"
listen = "{listen}"
admin_listen = "{admin_listen}"
upstream = "{upstream}"

[[apps]]
name = "demo-bot"
app_id = "{DEMO_APP_ID}"
app_secret_env = "DEMO_APP_SECRET"

[[clients]]
name = "demo-client"
key_env = "DEMO_CLIENT_KEY"
app = "demo-bot"
"#,
        upstream = sim.base_url()
    );
    let env = MapEnv::new()
        .with("DEMO_APP_SECRET", secret)
        .with("DEMO_CLIENT_KEY", DEMO_CLIENT_KEY);
    let config = Config::parse(&text, &env).map_err(|p| p.to_string())?;
    let gateway = Runtime::start(config).await.map_err(|e: StartError| {
        format!("{e} (choose other ports with --listen and --admin-listen)")
    })?;
    Ok(Demo { sim, gateway })
}

/// The text printed once the demo is up.
pub fn banner(demo: &Demo) -> String {
    let gw = demo.gateway.addr();
    let admin = demo.gateway.admin_addr();
    let key = DEMO_CLIENT_KEY;
    format!(
        r#"
feishu-gateway demo is running.
  simulated Feishu : {sim}
  gateway          : http://{gw}   (client key: {key})
  admin            : http://{admin}

Try it (paste into another terminal):

# 1. Pin a message: forwarded to (simulated) Feishu with a managed tenant token
curl -s -X POST http://{gw}/open-apis/im/v1/chats/oc_5ad11d72b830411d72b836c20/top_notice/put_top_notice \
  -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json; charset=utf-8' \
  -d '{{"chat_top_notice":[{{"action_type":"1","message_id":"om_dc13264520392913993dd051dba21dcf"}}]}}'

# 2. Rejected by Feishu's rules: the bot is not in this chat (code 232011)
curl -s -X POST http://{gw}/open-apis/im/v1/chats/oc_error232011/top_notice/put_top_notice \
  -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \
  -d '{{"chat_top_notice":[{{"action_type":"2"}}]}}'

# 3. Refused by the gateway: unknown client key (401, code 99991663)
curl -s -i -X POST http://{gw}/open-apis/im/v1/chats/oc_1/top_notice/delete_top_notice \
  -H 'Authorization: Bearer not-a-key'

# 4. Remove the pin
curl -s -X POST http://{gw}/open-apis/im/v1/chats/oc_5ad11d72b830411d72b836c20/top_notice/delete_top_notice \
  -H 'Authorization: Bearer {key}'

# 5. Health, readiness (token state per app) and metrics
curl -s http://{admin}/readyz
curl -s http://{admin}/metrics | grep feishu_gateway_requests_total

Press Ctrl-C to stop.
"#,
        sim = demo.sim.base_url(),
    )
}

/// App id of the `i`-th app of `feishu-gateway sim --apps N` (0-based).
pub fn sim_app_id(i: usize) -> String {
    format!("cli_bench{i:010}")
}

/// App secret of the `i`-th app of `feishu-gateway sim --apps N`. Not a
/// secret: the fake only serves loopback, for load tests.
pub fn sim_app_secret(i: usize) -> String {
    format!("bench-secret-{i:010}")
}

/// `feishu-gateway sim`: the simulated Feishu alone, in its own process (so
/// a load test sees its CPU apart from the gateway's), configured by
/// [`sim_config`].
pub async fn start_sim(listen: SocketAddr, apps: usize, fast: bool) -> std::io::Result<SimFeishu> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    SimFeishu::start_on(listener, sim_config(apps, fast)).await
}

/// The fake of `feishu-gateway sim`: `apps` apps named by [`sim_app_id`]
/// and [`sim_app_secret`]; `fast` turns quota enforcement off. Requests are
/// never recorded (a long run must not grow) and no latency is added.
pub fn sim_config(apps: usize, fast: bool) -> SimConfig {
    SimConfig {
        apps: (0..apps)
            .map(|i| SimApp::new(sim_app_id(i), sim_app_secret(i)))
            .collect(),
        quota: if fast {
            QuotaMode::Off
        } else {
            QuotaMode::Enforce
        },
        record_requests: false,
        ..SimConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_config_names_apps_as_the_load_harness_expects() {
        let c = sim_config(100, true);
        assert_eq!(c.apps.len(), 100);
        assert_eq!(c.apps[0].app_id, "cli_bench0000000000");
        assert_eq!(c.apps[99].app_secret, "bench-secret-0000000099");
        assert_eq!(c.quota, QuotaMode::Off);
        assert!(!c.record_requests);
        assert!(c.latency.is_zero());
        assert_eq!(sim_config(1, false).quota, QuotaMode::Enforce);
    }
}
