//! Several gateway replicas (in process, on loopback ports) in front of one
//! simulated Feishu, sharing their quotas through a Redis of the test's
//! own; floods of put_top_notice through all of them, and what Feishu saw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;

use super::{
    admin_get, metrics_of, put_at, start_gateway, wait_ready, Answer, GatewayConfig, HttpClient,
    Plan, PlanPolicy, Runtime, SimConfig, SimFeishu, Window, APP_ID, PUT_PATH,
};

/// One simulated Feishu and `n` gateways sharing one Redis.
pub struct Fleet {
    pub sim: SimFeishu,
    pub gws: Vec<Runtime>,
    pub client: HttpClient,
}

/// `n` gateways with the default config as `configure` changes it, in
/// front of a simulated Feishu; once all are ready.
pub async fn fleet(
    n: usize,
    sim: SimConfig,
    configure: impl FnOnce(GatewayConfig) -> GatewayConfig,
) -> Fleet {
    let sim = SimFeishu::start(sim).await.expect("sim starts");
    let config = configure(GatewayConfig::new(&sim.base_url()));
    let mut gws = Vec::new();
    for _ in 0..n {
        gws.push(start_gateway(&config).await);
    }
    let client = super::http_client();
    for gw in &gws {
        wait_ready(&client, gw).await;
    }
    Fleet { sim, gws, client }
}

/// One answer of a flood.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Which gateway answered.
    pub gw: usize,
    pub status: StatusCode,
    /// When the request left.
    pub at: Instant,
    /// How long the answer took.
    pub took: Duration,
}

impl Fleet {
    pub async fn readyz(&self, i: usize) -> Answer {
        admin_get(&self.client, &self.gws[i], "/readyz").await
    }

    /// `quota.state` in gateway `i`'s `/readyz`: shared, degraded or healing.
    pub async fn quota_state(&self, i: usize) -> String {
        let v = self.readyz(i).await.json();
        v["quota"]["state"].as_str().unwrap_or("?").to_string()
    }

    pub async fn metrics(&self, i: usize) -> String {
        metrics_of(&self.client, &self.gws[i]).await
    }

    /// `senders` loops per replica, each sending put_top_notice with a short
    /// pause until `until`; returns (status, latency) of every answer.
    pub async fn flood(
        self: &Arc<Self>,
        senders: usize,
        until: Instant,
        extra: &'static [(&'static str, &'static str)],
    ) -> Vec<(StatusCode, Duration)> {
        self.flood_sent(senders, until, extra)
            .await
            .into_iter()
            .map(|s| (s.status, s.took))
            .collect()
    }

    /// [`Fleet::flood`], with which gateway answered each request and when
    /// it was sent.
    pub async fn flood_sent(
        self: &Arc<Self>,
        senders: usize,
        until: Instant,
        extra: &'static [(&'static str, &'static str)],
    ) -> Vec<Sent> {
        let mut tasks = Vec::new();
        for i in 0..self.gws.len() {
            for _ in 0..senders {
                let f = Arc::clone(self);
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    while Instant::now() < until {
                        let at = Instant::now();
                        let a = put_at(&f.client, f.gws[i].addr(), PUT_PATH, extra).await;
                        out.push(Sent {
                            gw: i,
                            status: a.status,
                            at,
                            took: at.elapsed(),
                        });
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    out
                }));
            }
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    }

    pub fn check_feishu_saw_no_violation(&self) {
        assert_eq!(self.sim.violations(), 0, "Feishu counted violations");
        let in_1s = self
            .sim
            .max_in_any_window(APP_ID, "put_top_notice", Duration::from_secs(1));
        assert!(in_1s <= 50, "{in_1s} in one second");
    }
}

pub fn ok_count(answers: &[(StatusCode, Duration)]) -> usize {
    answers.iter().filter(|a| a.0 == StatusCode::OK).count()
}

/// What the seed plan (b = 33, t = 62.087 ms) admits at most within `d`
/// of sustained overload from a fresh start: b + floor(d / t).
pub fn seed_curve(d: Duration) -> usize {
    let windows: Vec<Window> = ["50/1s", "1000/60s"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let p = Plan::new(&windows, &PlanPolicy::default()).unwrap();
    p.burst() as usize + (d.as_secs_f64() / p.emission_interval().as_secs_f64()) as usize
}
