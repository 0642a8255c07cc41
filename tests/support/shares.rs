//! Two clients of one app flooding put_top_notice, one of them held to a
//! `quota_share`: what each got from the gateway, and what Feishu saw of
//! each (they send to chats of their own, so the simulated Feishu's records
//! tell them apart).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;

use super::{put_as, Answer, HttpClient, Plan, PlanPolicy, SimFeishu, Window, APP_ID, CLIENT_KEY};

/// The key of the client `batch`, which has the share.
pub const BATCH_KEY: &str = "client-key-batch-0123456789";
/// Where `billing` (no share) sends.
pub const BILLING_PATH: &str = "/open-apis/im/v1/chats/oc_billing/top_notice/put_top_notice";
/// Where `batch` sends.
pub const BATCH_PATH: &str = "/open-apis/im/v1/chats/oc_batch/top_notice/put_top_notice";

/// What one client got.
#[derive(Default)]
pub struct Got {
    /// Answered 200 (forwarded, Feishu's code 0).
    pub ok: usize,
    /// 429 `share-limited`: over the client's share.
    pub share_limited: usize,
    /// 429 `rate-limited`: over the app's quota.
    pub rate_limited: usize,
    /// Anything else (should stay 0).
    pub other: Vec<(StatusCode, String)>,
    /// One `share-limited` answer, to look at.
    pub a_share_refusal: Option<Answer>,
}

impl Got {
    fn add(&mut self, a: Answer) {
        match (a.status, a.header("x-gateway-error")) {
            (StatusCode::OK, None) => self.ok += 1,
            (StatusCode::TOO_MANY_REQUESTS, Some("share-limited")) => {
                self.share_limited += 1;
                if self.a_share_refusal.is_none() {
                    self.a_share_refusal = Some(a);
                }
            }
            (StatusCode::TOO_MANY_REQUESTS, Some("rate-limited")) => self.rate_limited += 1,
            (status, _) => self.other.push((status, a.text())),
        }
    }
}

/// `senders` loops per client and per gateway at `addrs`, each sending
/// put_top_notice (with `extra` headers) then sleeping 20 ms, until
/// `until`: what `billing` and what `batch` got.
pub async fn flood_two(
    client: &HttpClient,
    addrs: &[SocketAddr],
    senders: usize,
    until: Instant,
    extra: &'static [(&'static str, &'static str)],
) -> (Got, Got) {
    let mut tasks = Vec::new();
    for &addr in addrs {
        for (key, path) in [(CLIENT_KEY, BILLING_PATH), (BATCH_KEY, BATCH_PATH)] {
            for _ in 0..senders {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    while Instant::now() < until {
                        out.push(put_as(&client, addr, key, path, extra).await);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    (key == BATCH_KEY, out)
                }));
            }
        }
    }
    let (mut billing, mut batch) = (Got::default(), Got::default());
    for t in tasks {
        let (is_batch, answers) = t.await.expect("sender");
        let got = if is_batch { &mut batch } else { &mut billing };
        for a in answers {
            got.add(a);
        }
    }
    (billing, batch)
}

/// The plan of a key with put_top_notice's windows (`50/1s`, `1000/60s`)
/// scaled by `share`, as the gateway makes it with the default policy.
pub fn share_plan(share: f64) -> Plan {
    let windows: Vec<Window> = [(50u32, 1u64), (1000, 60)]
        .iter()
        .map(|&(n, s)| {
            let scaled = ((f64::from(n) * share) as u32).max(1);
            Window::new(scaled, Duration::from_secs(s)).expect("a window")
        })
        .collect();
    Plan::new(&windows, &PlanPolicy::default()).expect("a plan")
}

/// What `plan` admits at most within `d` of overload from a fresh start:
/// `b + floor(d / t)`.
pub fn curve(plan: &Plan, d: Duration) -> usize {
    plan.burst() as usize + (d.as_secs_f64() / plan.emission_interval().as_secs_f64()) as usize
}

/// The most requests to `path` the simulated Feishu saw within any
/// interval of `w`.
pub fn max_at_feishu(sim: &SimFeishu, path: &str, w: Duration) -> usize {
    let mut times: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path == path)
        .map(|r| r.arrived)
        .collect();
    times.sort();
    let (mut best, mut lo) = (0, 0);
    for hi in 0..times.len() {
        while times[hi] - times[lo] > w {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// The figures of one flood, for the test's output and its assertions.
pub struct Shares {
    pub billing: Got,
    pub batch: Got,
    pub took: Duration,
}

impl Shares {
    pub fn total(&self) -> usize {
        self.billing.ok + self.batch.ok
    }

    /// batch's part of what was forwarded.
    pub fn batch_part(&self) -> f64 {
        self.batch.ok as f64 / self.total().max(1) as f64
    }

    /// One line for the test's output.
    pub fn report(&self, what: &str) -> String {
        format!(
            "{what}: in {:.2?} forwarded {} = billing {} + batch {} ({:.1} %); batch refused {} share-limited, {} rate-limited; billing refused {} rate-limited",
            self.took,
            self.total(),
            self.billing.ok,
            self.batch.ok,
            100.0 * self.batch_part(),
            self.batch.share_limited,
            self.batch.rate_limited,
            self.billing.rate_limited,
        )
    }
}

/// Runs [`flood_two`] from now for `d` and times it.
pub async fn flood_shares(
    client: &HttpClient,
    addrs: &[SocketAddr],
    senders: usize,
    d: Duration,
    extra: &'static [(&'static str, &'static str)],
) -> Shares {
    let started = Instant::now();
    let (billing, batch) = flood_two(client, addrs, senders, started + d, extra).await;
    Shares {
        billing,
        batch,
        took: started.elapsed(),
    }
}

/// What the flood of [`flood_shares`] must show, `batch` holding 0.2:
/// no violation at Feishu; the app's quota used as by one client (within
/// `slack` requests of its curve: calls that timed out in Redis may have
/// spent their slot); `batch` got at most its share (its plan's curve, and
/// a fifth of the total plus one burst of its plan), and most of it (the
/// app key's refusals gave its share back); `billing` the rest.
pub fn check_shares(sim: &SimFeishu, s: &Shares, slack: usize) {
    assert!(s.billing.other.is_empty(), "{:?}", s.billing.other);
    assert!(s.batch.other.is_empty(), "{:?}", s.batch.other);
    assert_eq!(sim.violations(), 0, "Feishu counted violations");
    let in_1s = sim.max_in_any_window(APP_ID, "put_top_notice", Duration::from_secs(1));
    assert!(in_1s <= 50, "{in_1s} in one second at Feishu");
    assert_eq!(
        sim.requests().len(),
        s.total(),
        "refused requests never left"
    );

    let app = share_plan(1.0);
    let share = share_plan(0.2);
    let (app_curve, share_curve) = (curve(&app, s.took), curve(&share, s.took));
    let report = s.report("shares");
    assert!(
        s.total() + slack + 4 >= app_curve && s.total() <= app_curve + 1,
        "the app's plan allows {app_curve}: {report}"
    );
    assert!(
        s.batch.ok <= share_curve + 1,
        "batch's plan allows {share_curve}: {report}"
    );
    assert!(
        s.batch.ok as f64 <= 0.2 * s.total() as f64 + f64::from(share.burst()),
        "over a fifth plus one burst ({}): {report}",
        share.burst()
    );
    assert!(
        s.batch.ok * 10 >= share_curve * 7,
        "batch got less than 70 % of its share's {share_curve}: {report}"
    );
    assert_eq!(s.billing.ok, s.total() - s.batch.ok);
    // Feishu never saw more than batch's share of a window from it.
    let batch_1s = max_at_feishu(sim, BATCH_PATH, Duration::from_secs(1));
    assert!(
        batch_1s <= 10,
        "{batch_1s} of batch in one second: {report}"
    );
    // Only batch is held to a share; both meet the app's quota.
    assert!(s.batch.share_limited > 0, "{report}");
    assert_eq!(s.billing.share_limited, 0, "{report}");
    let a = s.batch.a_share_refusal.as_ref().expect("a share refusal");
    assert_eq!(a.code(), 99991400);
    assert_eq!(a.header("x-ogw-ratelimit-limit"), Some("10"));
    assert!(a.header("retry-after").is_some());
    assert!(a
        .header("ratelimit-policy")
        .unwrap()
        .contains("\"200/60s\""));
    let msg = a.json()["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("client \"batch\"") && msg.contains("quota_share (0.2)"),
        "{msg}"
    );
}
