//! The events pipeline: what a queued event and a remembered id weigh, and
//! what `EventHub::accept` costs. The hub is started as the gateway starts
//! it (`start_events` in src/app/build.rs: a config parsed from TOML, its
//! upstream client with 4 idle connections per host, `EventHub::start`, no
//! Redis).
//!
//! `cargo bench --bench events` prints:
//! - `queue`: live heap bytes per queued event (a counting global
//!   allocator), 10,000 `im.message.receive_v1` events of ~1 KB and of
//!   ~200 B accepted by a hub with one subscription whose subscriber is
//!   down (its URL refuses connections), against the same events accepted
//!   by a hub whose one subscription wants another type (nothing queued:
//!   what de-duplication keeps); the difference is the queue's share, set
//!   beside `QUEUED_OVERHEAD` (what `queue_max_bytes` counts per event
//!   beyond its body);
//! - `dedupe`: live heap bytes per remembered id, 100,000 and 500,000 (the
//!   default `dedupe_max_ids`) distinct events with one key each;
//! - `accept`: `EventHub::accept` of distinct ~1 KB events, one after the
//!   other from one task, to an app with 2 subscriptions: throughput and
//!   p50 / p99 / max per call, with both subscribers down (the hub's own
//!   work: queues take everything, a refused connect every second or so)
//!   and with both answering 200 on loopback (deliveries compete for the
//!   same 2 cores; also how long until both queues are empty).

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use feishu_gateway::config::{Config, MapEnv};
use feishu_gateway::events::{Accepted, EventHub, Transport, QUEUED_OVERHEAD};
use feishu_gateway::observe::metrics::Metrics;

struct Counting;

/// Bytes asked of the allocator and not yet given back.
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

const APP: &str = "bench-bot";
const MESSAGE: &str = "im.message.receive_v1";

/// A loopback URL nobody listens on: every delivery is refused at once.
fn refusing_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/events")
}

/// The gateway's config with the app `bench-bot` (webhook) and one
/// subscription per `(name, event type, url)`, `[events]` from `events`.
fn config(subscriptions: &[(&str, &str, &str)], events: &str) -> Config {
    let mut text = format!(
        r#"
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:1"

[events]
{events}

[[apps]]
name = "{APP}"
app_id = "cli_bench0000000000"
app_secret_env = "APP_SECRET"
verification_token_env = "VERIFICATION_TOKEN"

[[clients]]
name = "bench"
app = "{APP}"
key_env = "CLIENT_KEY"
"#
    );
    for (name, event_type, url) in subscriptions {
        text.push_str(&format!(
            r#"
[[subscriptions]]
name = "{name}"
app = "{APP}"
events = ["{event_type}"]
url = "{url}"
secret_env = "SUBSCRIBER_SECRET"
"#
        ));
    }
    let env = MapEnv::new()
        .with("APP_SECRET", "bench-app-secret")
        .with("VERIFICATION_TOKEN", "bench-verification-token")
        .with("CLIENT_KEY", "bench-client-key-0123456789abcdef0123456789")
        .with("SUBSCRIBER_SECRET", "bench-subscriber-secret-0123456789");
    Config::parse(&text, &env).unwrap_or_else(|e| panic!("bench config: {e:?}"))
}

/// The hub for `config`, as `start_events` builds it (no Redis).
fn start(config: &Config) -> EventHub {
    let metrics = Metrics::new(prometheus::Registry::new(), &[APP.to_string()], &[]).unwrap();
    let settings = feishu_gateway::upstream::Settings {
        max_idle_per_host: 4,
        ..config.upstream_settings()
    };
    let client = feishu_gateway::upstream::build_client(&settings).unwrap();
    EventHub::start(&config.events, client, None, metrics.events())
}

/// Event number `i` of `event_type`: a v2 event with an event id and, for
/// messages, a message id (both de-duplication keys), and the Verification
/// Token in its header as Feishu sends it (the hub takes it out before
/// queueing, re-serializing the event), its text padded to
/// about `size` bytes (at least ~190), in an allocation of exactly its
/// length (as the webhook hands it over).
fn event(i: usize, event_type: &str, size: usize) -> Bytes {
    let head = format!(
        r#"{{"schema":"2.0","header":{{"event_id":"5e3702a84e847582be8db7fb7328{i:010}","event_type":"{event_type}","create_time":"1735689600000","token":"v-Ohw8k7nE2SXjq3UdBw7Y0ZzWlS3WhE"}},"event":{{"message":{{"message_id":"om_5ce6d572455d3611{i:010}","content":"{{\"text\":\""#
    );
    let tail = r#"\"}"}}}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut body = String::with_capacity(head.len() + pad + tail.len());
    body.push_str(&head);
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str(tail);
    Bytes::from(body.into_bytes().into_boxed_slice())
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Live bytes kept per event after `n` distinct events of `size` bytes
/// were accepted by `hub`, and their mean body length.
async fn kept_per_event(hub: &EventHub, event_type: &str, n: usize, size: usize) -> (f64, f64) {
    // One event first, so that what is made once (the app's metric
    // series, the first connect) is not counted.
    let first = hub
        .accept(
            APP,
            Transport::Webhook,
            event(9_999_999_999, event_type, size),
        )
        .await;
    assert_eq!(first, Accepted::Queued);
    settle().await;
    let before = live();
    let mut body = 0usize;
    for i in 0..n {
        let e = event(i, event_type, size);
        body += e.len();
        assert_eq!(
            hub.accept(APP, Transport::Webhook, e).await,
            Accepted::Queued
        );
    }
    settle().await;
    let kept = live().saturating_sub(before);
    (kept as f64 / n as f64, body as f64 / n as f64)
}

async fn queue_memory() {
    println!("queue: live heap per queued event (10,000 distinct im.message.receive_v1 events, one subscription, subscriber down)");
    println!(
        "  {:>9} | {:>13} | {:>13} | {:>14} | {:>12} | {:>16}",
        "body", "kept, queued", "kept, dedupe", "queue's share", "beyond body", "QUEUED_OVERHEAD"
    );
    // With the first event: 10,000 queued, a full queue at the default
    // `queue_max_events`.
    let n = 9_999;
    for size in [1024, 200] {
        let down = refusing_url();
        let queued = start(&config(&[("down", MESSAGE, &down)], ""));
        let (with_queue, body) = kept_per_event(&queued, MESSAGE, n, size).await;
        assert_eq!(queued.queue_depth("down"), Some(n + 1));
        queued.stop();
        drop(queued);
        // The same events, nothing queued: what de-duplication keeps.
        let control = start(&config(&[("other", "x.y", &down)], ""));
        let (dedupe, _) = kept_per_event(&control, MESSAGE, n, size).await;
        control.stop();
        drop(control);
        let share = with_queue - dedupe;
        println!(
            "  {:>7.0} B | {:>11.0} B | {:>11.0} B | {:>12.0} B | {:>10.0} B | {:>14} B",
            body,
            with_queue,
            dedupe,
            share,
            share - body,
            QUEUED_OVERHEAD
        );
    }
}

async fn dedupe_memory() {
    println!(
        "dedupe: live heap per remembered id (distinct events with one key each, nothing queued)"
    );
    for n in [100_000, 500_000] {
        let hub = start(&config(&[("other", "x.y", &refusing_url())], ""));
        let (per_event, _) = kept_per_event(&hub, "contact.user.created_v3", n, 300).await;
        println!(
            "  {n:>7} ids: {per_event:.1} B per id ({:.1} MB)",
            per_event * n as f64 / 1e6
        );
        hub.stop();
    }
}

/// A subscriber on loopback that answers every POST 200 at once; its URL.
async fn fast_subscriber() -> String {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                    Ok::<_, Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/events")
}

async fn throughput(label: &str, urls: [&str; 2], n: usize) {
    // Room for every event: the figure is accept's, not a full queue's.
    let events = "queue_max_events = 1000000\nqueue_max_bytes = 4000000000";
    let hub = start(&config(
        &[("a", MESSAGE, urls[0]), ("b", MESSAGE, urls[1])],
        events,
    ));
    for i in 0..1_000 {
        hub.accept(
            APP,
            Transport::Webhook,
            event(10_000_000 + i, MESSAGE, 1024),
        )
        .await;
    }
    let payloads: Vec<Bytes> = (0..n).map(|i| event(i, MESSAGE, 1024)).collect();
    let mut took = Vec::with_capacity(n);
    let start = Instant::now();
    for e in payloads {
        let t = Instant::now();
        let verdict = hub.accept(APP, Transport::Webhook, e).await;
        took.push(t.elapsed());
        assert_eq!(verdict, Accepted::Queued);
    }
    let elapsed = start.elapsed();
    let drained = if label == "up" {
        let t = Instant::now();
        while hub.queue_depth("a") != Some(0) || hub.queue_depth("b") != Some(0) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        format!(
            ", both queues empty {:.2} s after the last accept",
            t.elapsed().as_secs_f64()
        )
    } else {
        String::new()
    };
    took.sort_unstable();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "  subscribers {label:>4}: {n} events in {:.2} s = {:>6.0} accepts/s; per call p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs{drained}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        at(0.5),
        at(0.99),
        took.last().unwrap().as_secs_f64() * 1e6
    );
    hub.stop();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Two workers, as the gateway has on this machine.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        queue_memory().await;
        dedupe_memory().await;
        println!(
            "accept: distinct ~1 KB im.message.receive_v1 events, 2 subscriptions, one caller"
        );
        let down = refusing_url();
        throughput("down", [&down, &down], 20_000).await;
        let (a, b) = (fast_subscriber().await, fast_subscriber().await);
        throughput("up", [&a, &b], 20_000).await;
    });
}
