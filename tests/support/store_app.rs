//! The store app `isv-bot` of the tests (`type = "store"`), its client
//! `crm`, and the simulated Feishu's side of it (tenants, app_ticket
//! pushes): what `tests/store.rs` and the Redis tests that keep its ticket
//! share.

use std::net::SocketAddr;

use http::Method;

use super::config::{App, Client};
use super::{
    call, Answer, GatewayConfig, HttpClient, Listeners, Runtime, SimConfig, SimFeishu, SimStoreApp,
    StoreCallKind, PUT_BODY, PUT_PATH,
};

pub const STORE_APP_ID: &str = "cli_store000000001";
pub const STORE_SECRET: &str = "store-app-secret-0001";
pub const ENCRYPT_KEY: &str = "encrypt-key-0001";
pub const VTOKEN: &str = "verification-token-0001";
pub const STORE_KEY: &str = "store-client-key-0123456789";

/// The Redis key of the store app's ticket, with the default prefix.
pub const TICKET_KEY: &str = "feishu-gateway:app_ticket:cli_store000000001";

/// The store app `isv-bot`, holding at most `max_tenants`, with its
/// client `crm` and their secrets in the environment, added to `config`.
pub fn with_store_app(config: GatewayConfig, max_tenants: usize) -> GatewayConfig {
    config
        .app(
            App::store("isv-bot", STORE_APP_ID, "STORE_SECRET")
                .encrypt_key_env("STORE_ENCRYPT_KEY")
                .verification_token_env("STORE_VTOKEN")
                .max_tenants(max_tenants),
        )
        .client(Client::new("crm", "STORE_CLIENT_KEY", "isv-bot"))
        .env("STORE_SECRET", STORE_SECRET)
        .env("STORE_ENCRYPT_KEY", ENCRYPT_KEY)
        .env("STORE_VTOKEN", VTOKEN)
        .env("STORE_CLIENT_KEY", STORE_KEY)
}

/// A gateway config for the store app `isv-bot` alone, holding at most
/// `max_tenants`, and its client `crm`; the tickets are kept in a
/// `state_dir` or, with a Redis `[quota]`, in Redis.
pub fn store_config(sim: &SimFeishu, max_tenants: usize) -> GatewayConfig {
    with_store_app(GatewayConfig::bare(&sim.base_url()), max_tenants)
}

/// The store app on the simulated Feishu, with `tenants`.
pub fn sim_store_app(tenants: &[&str]) -> SimStoreApp {
    SimStoreApp::new(STORE_APP_ID, STORE_SECRET, VTOKEN)
        .encrypt_key(ENCRYPT_KEY)
        .tenants(tenants.iter().copied())
}

/// A simulated Feishu with the store app alone, with `tenants`.
pub fn sim_store(tenants: &[&str]) -> SimConfig {
    SimConfig::with_store_app(sim_store_app(tenants))
}

/// A gateway with `config` whose port is known before it starts; with
/// `events`, Feishu's pushes go to it from now on (from the first resend
/// on).
pub async fn start_replica(sim: &SimFeishu, config: &GatewayConfig, events: bool) -> Runtime {
    let listeners = Listeners::bind().await;
    if events {
        let url = format!("http://{}/feishu/events/isv-bot", listeners.addr());
        sim.set_event_url(STORE_APP_ID, url);
    }
    listeners.start(config).await
}

/// POST put_top_notice to the gateway at `addr` as the store app's client,
/// for `tenant`.
pub async fn put_to(client: &HttpClient, addr: SocketAddr, tenant: Option<&str>) -> Answer {
    let auth = format!("Bearer {STORE_KEY}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(t) = tenant {
        headers.push(("x-tenant-key", t));
    }
    call(client, addr, Method::POST, PUT_PATH, &headers, PUT_BODY).await
}

/// How many times a gateway asked Feishu to resend the app_ticket.
pub fn resends(sim: &SimFeishu) -> usize {
    sim.store_calls()
        .iter()
        .filter(|c| c.kind == StoreCallKind::Resend)
        .count()
}
