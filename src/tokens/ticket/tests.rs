//! The ticket box against a shared store that can fail, and the simulated
//! Feishu's resend endpoint.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::config::{Config, MapEnv};
use crate::tokens::ticket_store::{MemoryTicketStore, StoreFuture};
use feishu_sim::{SimConfig, SimFeishu, SimStoreApp, StoreCallKind};

const APP_ID: &str = "cli_store_unit";

/// Memory, but shared as Redis is, and able to fail on demand.
#[derive(Debug, Default)]
struct SharedMemory {
    inner: MemoryTicketStore,
    down: AtomicBool,
}

impl SharedMemory {
    fn check(&self) -> Result<(), TicketStoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(TicketStoreError::Redis {
                op: "GET",
                key: "k".into(),
                error: "connection: refused".into(),
            });
        }
        Ok(())
    }
}

impl TicketStore for SharedMemory {
    fn load<'a>(&'a self, app_id: &'a str) -> StoreFuture<'a, Option<StoredTicket>> {
        match self.check() {
            Ok(()) => self.inner.load(app_id),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn save<'a>(&'a self, ticket: &'a StoredTicket) -> StoreFuture<'a, ()> {
        match self.check() {
            Ok(()) => self.inner.save(ticket),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn is_shared(&self) -> bool {
        true
    }
}

struct Fixture {
    sim: SimFeishu,
    store: Arc<SharedMemory>,
    ticket: Arc<TicketBox>,
    metrics: Arc<Metrics>,
}

/// A ticket box on a shared store, with a simulated Feishu that accepts
/// resends (and pushes nowhere: this replica has no event URL).
async fn fixture() -> Fixture {
    let sim = SimFeishu::start(SimConfig::with_store_app(SimStoreApp::new(
        APP_ID, "secret", "vtoken",
    )))
    .await
    .expect("sim");
    let text = format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
upstream = "{}"
state_dir = "/nonexistent"
[[apps]]
name = "isv-bot"
app_id = "{APP_ID}"
app_secret_env = "SECRET"
type = "store"
verification_token_env = "VTOKEN"
[[clients]]
name = "crm"
key_env = "KEY"
app = "isv-bot"
"#,
        sim.base_url()
    );
    let env = MapEnv::new()
        .with("SECRET", "secret")
        .with("VTOKEN", "vtoken")
        .with("KEY", "client-key-0123456789abcdef");
    let config = Config::parse(&text, &env).unwrap_or_else(|p| panic!("{p}"));
    let metrics = Arc::new(
        Metrics::new(prometheus::Registry::new(), &["isv-bot".into()], &[]).expect("metrics"),
    );
    let client = crate::upstream::build_client(&config.upstream_settings()).expect("client");
    let store = Arc::new(SharedMemory::default());
    let dyn_store: Arc<dyn TicketStore> = Arc::clone(&store) as Arc<dyn TicketStore>;
    let ticket = TicketBox::for_apps(
        &config.apps,
        &client,
        &dyn_store,
        Duration::from_secs(2),
        &metrics,
    )
    .remove(0)
    .expect("a store app");
    Fixture {
        sim,
        store,
        ticket,
        metrics,
    }
}

fn stored(value: &str, secs_ago: u64) -> StoredTicket {
    let mut t = StoredTicket::received_now(APP_ID, Secret::new(value));
    t.received_at_unix -= secs_ago;
    t
}

impl Fixture {
    fn current(&self) -> Option<String> {
        self.ticket.get().map(|s| s.expose().to_owned())
    }

    async fn in_store(&self) -> Option<String> {
        let t = self.store.inner.load(APP_ID).await.expect("load");
        t.map(|t| t.ticket.expose().to_owned())
    }

    fn resends(&self) -> usize {
        self.sim
            .store_calls()
            .iter()
            .filter(|c| c.kind == StoreCallKind::Resend)
            .count()
    }
}

#[tokio::test]
async fn the_newest_ticket_wins_both_ways() {
    let f = fixture().await;
    f.store.save(&stored("t-1", 300)).await.unwrap();
    assert!(f.ticket.load().await);
    assert_eq!(f.current().as_deref(), Some("t-1"));

    // Another replica received a newer one: taken.
    f.store.save(&stored("t-2", 200)).await.unwrap();
    assert!(f.ticket.sync().await);
    assert_eq!(f.current().as_deref(), Some("t-2"));
    assert!(!f.ticket.sync().await, "nothing new");

    // An older one in the store (a slow replica's) is not taken, and
    // this replica's newer one is written back.
    f.store.save(&stored("t-0", 900)).await.unwrap();
    assert!(!f.ticket.sync().await);
    assert_eq!(f.current().as_deref(), Some("t-2"));
    assert_eq!(f.in_store().await.as_deref(), Some("t-2"));

    // A stale stored ticket is never taken.
    let f = fixture().await;
    f.store
        .save(&stored("t-stale", MAX_TICKET_AGE.as_secs() + 1))
        .await
        .unwrap();
    assert!(!f.ticket.sync().await);
    assert!(!f.ticket.load().await);
    assert_eq!(f.current(), None);
}

#[tokio::test]
async fn a_ticket_another_replica_received_is_picked_up_while_waiting() {
    let f = fixture().await;
    let store = Arc::clone(&f.store);
    let other_replica = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        store.save(&stored("t-pushed-elsewhere", 0)).await.unwrap();
    });
    let started = Instant::now();
    let got = f.ticket.get_or_wait(Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.expose(), "t-pushed-elsewhere");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(f.resends(), 1, "asked once; the push went elsewhere");
    other_replica.await.unwrap();
}

#[tokio::test]
async fn a_refused_ticket_is_replaced_from_the_store_before_any_resend() {
    let f = fixture().await;
    f.ticket.receive(Secret::new("t-old")).await;
    assert_eq!(f.in_store().await.as_deref(), Some("t-old"));

    // Feishu refuses it; the store holds the same one: not taken back,
    // a resend is asked for.
    f.ticket.invalidate(&Secret::new("t-old")).await;
    assert_eq!(f.current(), None);
    assert_eq!(f.resends(), 1);
    assert!(!f.ticket.sync().await, "the refused ticket stays refused");

    // Another replica received the resent one: the next refusal of an
    // old ticket takes it without a resend.
    f.store.save(&stored("t-new", 0)).await.unwrap();
    f.ticket.invalidate(&Secret::new("t-old")).await;
    assert_eq!(f.current().as_deref(), Some("t-new"));
    assert_eq!(f.resends(), 1);
    let got = f.ticket.get_or_wait(Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.expose(), "t-new");
}

#[tokio::test]
async fn store_failures_are_counted_and_the_ticket_in_memory_is_used() {
    let f = fixture().await;
    f.store.down.store(true, Ordering::SeqCst);
    f.ticket.receive(Secret::new("t-memory")).await;
    assert!(!f.ticket.sync().await);
    let got = f.ticket.get_or_wait(Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.expose(), "t-memory");
    let exposition = String::from_utf8(f.metrics.render()).unwrap();
    assert!(
        exposition
            .contains(r#"feishu_gateway_app_ticket_store_errors_total{app="isv-bot",op="save"} 1"#),
        "{exposition}"
    );
    assert!(exposition
        .contains(r#"feishu_gateway_app_ticket_store_errors_total{app="isv-bot",op="load"} 2"#));
    assert_eq!(f.resends(), 0);

    // Back: the ticket Redis missed is written back by the next sync.
    f.store.down.store(false, Ordering::SeqCst);
    assert!(!f.ticket.sync().await);
    assert_eq!(f.in_store().await.as_deref(), Some("t-memory"));
}
