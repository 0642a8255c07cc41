//! Store apps end to end: app_ticket intake through the event endpoint,
//! ticket persistence, app and tenant tokens, per-tenant quotas, against
//! the simulated Feishu's store-app side; then several replicas sharing
//! tickets and tenant quotas through a real `redis-server` (skipped
//! without one, except under `CI=true`: see `tests/support/redis_server.rs`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use support::config::{App, Client, Quota};
use support::redis_server::{redis_or_skip, RedisServer};
use support::store_app::*;
use support::*;

struct Store {
    sim: SimFeishu,
    gw: Runtime,
    client: HttpClient,
    dir: tempfile::TempDir,
}

/// A gateway taking Feishu's pushes, keeping the tickets in `dir`.
async fn start_gateway(sim: &SimFeishu, config: GatewayConfig, dir: &std::path::Path) -> Runtime {
    start_replica(sim, &config.state_dir(dir), true).await
}

async fn start_store(tenants: &[&str], max_tenants: usize) -> Store {
    let sim = SimFeishu::start(sim_store(tenants)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(&sim, store_config(&sim, max_tenants), dir.path()).await;
    Store {
        sim,
        gw,
        client: http_client(),
        dir,
    }
}

async fn readyz_of(client: &HttpClient, gw: &Runtime) -> serde_json::Value {
    admin_get(client, gw, "/readyz").await.json()
}

impl Store {
    async fn put(&self, tenant: Option<&str>) -> Answer {
        put_to(&self.client, self.gw.addr(), tenant).await
    }

    async fn readyz(&self) -> serde_json::Value {
        readyz_of(&self.client, &self.gw).await
    }

    /// Waits until `/readyz` says ready.
    async fn ready(&self) {
        wait_ready(&self.client, &self.gw).await;
    }

    fn calls(&self, kind: StoreCallKind) -> usize {
        self.sim
            .store_calls()
            .iter()
            .filter(|c| c.kind == kind)
            .count()
    }
}

#[tokio::test]
async fn a_cold_start_asks_for_the_ticket_and_the_first_request_succeeds() {
    let s = start_store(&["tenant_a"], 100).await;
    // No kept ticket: the gateway asked for one, Feishu pushed it to the
    // event endpoint (encrypted and signed), and the app token followed.
    s.ready().await;
    assert_eq!(s.calls(StoreCallKind::Resend), 1);
    let pushed = s.sim.pushed_events();
    assert!(pushed
        .iter()
        .any(|p| p.encrypted && p.signed && p.status() == Some(StatusCode::OK)));
    let a = s.put(Some("tenant_a")).await;
    assert_eq!(a.code(), 0, "{:?}", a.body);
    let reqs = s.sim.requests();
    assert_eq!(reqs[0].tenant_key.as_deref(), Some("tenant_a"));
    let r = s.readyz().await;
    assert_eq!(r["store_apps"][0]["tenants"], 1);
    assert!(r["store_apps"][0]["ticket_age_secs"].as_u64().unwrap() < 60);
    // The ticket was persisted, privately.
    let files: Vec<_> = std::fs::read_dir(s.dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1);
}

#[tokio::test]
async fn a_restart_with_a_kept_ticket_needs_no_resend() {
    let s = start_store(&["tenant_a"], 100).await;
    s.ready().await;
    let Store {
        sim,
        gw,
        client,
        dir,
    } = s;
    gw.shutdown();
    gw.wait().await;
    let resends = resends(&sim);
    let gw = start_gateway(&sim, store_config(&sim, 100), dir.path()).await;
    let s = Store {
        sim,
        gw,
        client,
        dir,
    };
    let a = s.put(Some("tenant_a")).await;
    assert_eq!(a.code(), 0, "{:?}", a.body);
    assert_eq!(
        s.calls(StoreCallKind::Resend),
        resends,
        "no resend after a restart"
    );
}

#[tokio::test]
async fn callbacks_are_verified_and_bad_ones_change_nothing() {
    let s = start_store(&["tenant_a"], 100).await;
    s.ready().await;
    // The URL check is answered.
    let check = s.sim.check_event_url(STORE_APP_ID).await.unwrap();
    assert!(check.challenge_echoed(), "{check:?}");

    let before = s.sim.current_ticket(STORE_APP_ID);
    let url = "/feishu/events/isv-bot";
    let event = serde_json::json!({
        "uuid": "u1", "token": VTOKEN, "ts": "1", "type": "event_callback",
        "event": {"app_id": STORE_APP_ID, "app_ticket": "forged-ticket", "type": "app_ticket"}
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let post = |headers: http::HeaderMap, body: bytes::Bytes| {
        let client = s.client.clone();
        let addr = s.gw.addr();
        async move {
            let hs: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            call(
                &client,
                addr,
                Method::POST,
                url,
                &hs,
                std::str::from_utf8(&body).unwrap(),
            )
            .await
        }
    };
    // Bad signature.
    let mut sealed = callback::seal(Some(ENCRYPT_KEY), &event, true, now);
    sealed
        .headers
        .insert("x-lark-signature", "00".repeat(32).parse().unwrap());
    let a = post(sealed.headers, sealed.body).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.header("x-gateway-error"), Some("invalid-callback"));
    // Wrong verification token.
    let mut wrong = event.clone();
    wrong["token"] = "not-the-token".into();
    let sealed = callback::seal(Some(ENCRYPT_KEY), &wrong, true, now);
    assert_eq!(
        post(sealed.headers, sealed.body).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Garbled ciphertext.
    let a = post(
        http::HeaderMap::new(),
        bytes::Bytes::from_static(br#"{"encrypt":"!!!not base64"}"#),
    )
    .await;
    assert!(a.status.is_client_error());
    // Encrypted with another key.
    let sealed = callback::seal(Some("another-key"), &event, false, now);
    assert!(post(sealed.headers, sealed.body)
        .await
        .status
        .is_client_error());

    // Nothing changed: requests still use the real ticket's tokens.
    assert_eq!(s.sim.current_ticket(STORE_APP_ID), before);
    assert_eq!(s.put(Some("tenant_a")).await.code(), 0);
    // A good push of a new ticket is taken.
    assert!(s.sim.push_ticket_now(STORE_APP_ID).await.unwrap().status() == Some(StatusCode::OK));
}

#[tokio::test]
async fn tenants_get_their_own_tokens_and_quotas() {
    let limits = [(5, Duration::from_secs(1))];
    let mut sim = sim_store(&["tenant_a", "tenant_b"]);
    sim.limits = limits.to_vec();
    let sim = SimFeishu::start(sim).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = store_config(&sim, 100).put_limits(&limits);
    let gw = start_gateway(&sim, config, dir.path()).await;
    let s = Arc::new(Store {
        sim,
        gw,
        client: http_client(),
        dir,
    });
    s.ready().await;

    // Flood tenant_a far over its quota.
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(
            async move { s.put(Some("tenant_a")).await.status },
        ));
    }
    let mut limited = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    assert!(limited >= 20, "tenant_a limited: {limited}");
    // tenant_b is not limited by tenant_a's flood.
    let b = s.put(Some("tenant_b")).await;
    assert_eq!(b.code(), 0, "{:?}", b.body);
    assert_eq!(s.sim.violations(), 0);
    assert!(
        s.sim.max_in_any_window_for_tenant(
            STORE_APP_ID,
            "tenant_a",
            "put_top_notice",
            Duration::from_secs(1)
        ) <= 5
    );
    // Separate tenant tokens.
    let tokens: Vec<_> = s
        .sim
        .store_calls()
        .into_iter()
        .filter(|c| c.kind == StoreCallKind::TenantToken && c.ok)
        .map(|c| (c.tenant_key.unwrap(), c.token))
        .collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert_ne!(tokens[0].1, tokens[1].1);
}

/// A store app's client with a `quota_share` is held to it per tenant:
/// its share key goes with the tenant's key, another client of the app
/// (without a share) uses the rest of that tenant's quota, and its share
/// of another tenant is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_apps_client_has_its_share_of_each_tenants_quota() {
    const ERP_KEY: &str = "store-client-erp-0123456789";
    let limits = [(20, Duration::from_secs(1))];
    let mut sim = sim_store(&["tenant_a", "tenant_b"]);
    sim.limits = limits.to_vec();
    let sim = SimFeishu::start(sim).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = GatewayConfig::bare(&sim.base_url())
        .app(
            App::store("isv-bot", STORE_APP_ID, "STORE_SECRET")
                .encrypt_key_env("STORE_ENCRYPT_KEY")
                .verification_token_env("STORE_VTOKEN"),
        )
        .client(Client::new("crm", "STORE_CLIENT_KEY", "isv-bot").quota_share(0.25))
        .client(Client::new("erp", "ERP_KEY", "isv-bot"))
        .env("STORE_SECRET", STORE_SECRET)
        .env("STORE_ENCRYPT_KEY", ENCRYPT_KEY)
        .env("STORE_VTOKEN", VTOKEN)
        .env("STORE_CLIENT_KEY", STORE_KEY)
        .env("ERP_KEY", ERP_KEY)
        .put_limits(&limits);
    let gw = start_gateway(&sim, config, dir.path()).await;
    let s = Arc::new(Store {
        sim,
        gw,
        client: http_client(),
        dir,
    });
    s.ready().await;
    // tenant_a's token fetched before the flood (its first call waits for it).
    assert_eq!(s.put(Some("tenant_a")).await.code(), 0);
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Both clients flood tenant_a for 3 s, three senders each.
    let started = std::time::Instant::now();
    let until = started + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for key in [STORE_KEY, STORE_KEY, STORE_KEY, ERP_KEY, ERP_KEY, ERP_KEY] {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let auth = format!("Bearer {key}");
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
                ("x-tenant-key", "tenant_a"),
            ];
            let (mut ok, mut share_limited, mut app_limited) = (0, 0, 0);
            while std::time::Instant::now() < until {
                let a = call(
                    &s.client,
                    s.gw.addr(),
                    Method::POST,
                    PUT_PATH,
                    &headers,
                    PUT_BODY,
                )
                .await;
                match (a.status, a.header("x-gateway-error")) {
                    (StatusCode::OK, _) => ok += 1,
                    (_, Some("share-limited")) => share_limited += 1,
                    (StatusCode::TOO_MANY_REQUESTS, _) => app_limited += 1,
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (key, ok, share_limited, app_limited)
        }));
    }
    let (mut crm, mut erp, mut crm_limited, mut erp_limited, mut erp_held) = (0, 0, 0, 0, 0);
    for t in tasks {
        let (key, ok, limited, app_limited) = t.await.unwrap();
        if key == STORE_KEY {
            crm += ok;
            crm_limited += limited;
        } else {
            erp += ok;
            erp_limited += limited;
            erp_held += app_limited;
        }
    }
    let took = started.elapsed();
    let curve = |n: u32| {
        let w = [Window::new(n, Duration::from_secs(1)).unwrap()];
        let p = Plan::new(&w, &PlanPolicy::default()).unwrap();
        p.burst() as usize + (took.as_secs_f64() / p.emission_interval().as_secs_f64()) as usize
    };
    let (tenant_curve, share_curve) = (curve(20), curve(5));
    eprintln!(
        "store app, tenant_a, {took:.2?}: crm (0.25) {crm}, erp {erp}, of {} (the tenant's plan allows {tenant_curve}, crm's share {share_curve})",
        crm + erp
    );
    assert!(
        crm <= share_curve + 1,
        "crm {crm}, its share allows {share_curve}"
    );
    // ... and much of it, though racing erp for the tenant's slots costs it
    // some (a share of burst 1 loses the time it waits for one).
    assert!(
        crm * 2 >= share_curve,
        "crm {crm} of its share's {share_curve}"
    );
    // Never more than the tenant's quota; and erp, without a share, was
    // held by the tenant's quota itself (the quota was the limit, not the
    // share). How much of the curve the senders used depends on the
    // machine's load (77-90 % seen): printed above, not asserted here.
    assert!(crm + erp <= tenant_curve + 1);
    assert!(erp_held > 0, "erp was held by the tenant's quota");
    assert!(crm_limited > 0 && erp_limited == 0);
    assert_eq!(s.sim.violations(), 0);
    // crm's share of tenant_b is its own: a burst is there at once.
    let a = s.put(Some("tenant_b")).await;
    assert_eq!(a.code(), 0, "{}", a.text());
}

#[tokio::test]
async fn missing_and_unknown_tenants_get_clear_answers_without_loops() {
    let s = start_store(&["tenant_a"], 100).await;
    s.ready().await;
    let a = s.put(None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.header("x-gateway-error"), Some("missing-tenant"));
    let before = s.calls(StoreCallKind::TenantToken);
    let a = s.put(Some("tenant_nobody")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.header("x-gateway-error"), Some("unknown-tenant"));
    assert_eq!(
        s.calls(StoreCallKind::TenantToken),
        before + 1,
        "one refusal, no retry loop"
    );
    assert!(s.sim.requests().is_empty());
    let a = s.put(Some("bad tenant/key")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn tenants_are_bounded_and_evicted() {
    let tenants: Vec<String> = (0..20).map(|i| format!("tenant_{i}")).collect();
    let refs: Vec<&str> = tenants.iter().map(String::as_str).collect();
    let s = start_store(&refs, 5).await;
    s.ready().await;
    for t in &refs {
        assert_eq!(s.put(Some(t)).await.code(), 0);
    }
    let r = s.readyz().await;
    assert_eq!(r["store_apps"][0]["tenants"], 5, "{r}");
    let m = metrics_of(&s.client, &s.gw).await;
    assert!(m.contains(r#"feishu_gateway_store_tenants{app="isv-bot"} 5"#));
}

#[tokio::test]
async fn an_invalidated_ticket_is_resent_and_requests_recover() {
    let s = start_store(&["tenant_a"], 100).await;
    s.ready().await;
    assert_eq!(s.put(Some("tenant_a")).await.code(), 0);
    let resends = s.calls(StoreCallKind::Resend);
    // Feishu forgets the ticket and every token.
    s.sim.invalidate_tickets(STORE_APP_ID);
    s.sim.invalidate_all_tokens();
    let a = s.put(Some("tenant_a")).await;
    assert_eq!(a.code(), 0, "recovered within one request: {:?}", a.body);
    assert_eq!(s.calls(StoreCallKind::Resend), resends + 1);
}

// ----- several replicas on one Redis -----------------------------------------

/// A simulated Feishu with `sim`, a client, and the store app's config for
/// two replicas sharing quotas and the ticket through `redis` (no
/// `state_dir`: the ticket is kept in Redis).
async fn on_redis(redis: &RedisServer, sim: SimConfig) -> (SimFeishu, HttpClient, GatewayConfig) {
    let sim = SimFeishu::start(sim).await.unwrap();
    let config = store_config(&sim, 100).quota(Quota::redis(&redis.url()).replicas(2));
    (sim, http_client(), config)
}

async fn redis_get(redis: &RedisServer, key: &str) -> Option<String> {
    let mut c = redis.conn().await;
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

/// The ticket the gateways keep in Redis.
async fn ticket_in_redis(redis: &RedisServer) -> Option<String> {
    let raw = redis_get(redis, TICKET_KEY).await?;
    let t = StoredTicket::from_json(raw.as_bytes()).expect("a ticket document");
    Some(t.ticket.expose().to_string())
}

fn pushes_to(sim: &SimFeishu, gw: &Runtime) -> usize {
    let url = format!("http://{}/feishu/events/isv-bot", gw.addr());
    sim.pushed_events().iter().filter(|p| p.url == url).count()
}

#[tokio::test]
async fn redis_ticket_store_round_trip_ttl_and_bad_values() {
    let mut redis = redis_or_skip!();
    let settings = redis.settings(FailMode::Closed, 1, Duration::from_millis(200));
    let store = RedisTicketStore::new(settings.open_connection().unwrap(), "t:");
    assert!(store.is_shared());
    let key = store.key_of("cli_a").unwrap();
    assert_eq!(key, "t:app_ticket:cli_a");
    assert_eq!(store.load("cli_a").await.unwrap(), None);

    // Round trip: one key holding the same document as a file would.
    let t = StoredTicket::received_now("cli_a", Secret::new("tkt-secret-1"));
    store.save(&t).await.unwrap();
    assert_eq!(store.load("cli_a").await.unwrap(), Some(t.clone()));
    assert_eq!(store.load("cli_b").await.unwrap(), None);
    assert_eq!(redis_get(&redis, &key).await, Some(t.to_json()));
    // The key expires when the ticket turns 12 h old (it is not used then).
    let mut c = redis.conn().await;
    let pttl = |key: String| {
        let mut c = c.clone();
        async move {
            let ms: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut c)
                .await
                .unwrap();
            Duration::from_millis(ms.max(0) as u64)
        }
    };
    let ttl = pttl(key.clone()).await;
    assert!(
        ttl > MAX_TICKET_AGE - Duration::from_secs(60) && ttl <= MAX_TICKET_AGE,
        "{ttl:?}"
    );
    let mut old = t.clone();
    old.received_at_unix -= 11 * 3600;
    store.save(&old).await.unwrap();
    let ttl = pttl(key.clone()).await;
    assert!(
        ttl > Duration::from_secs(3500) && ttl <= Duration::from_secs(3600),
        "{ttl:?}"
    );

    // What is not a ticket document of this app is no ticket: an error
    // that never quotes the value.
    let no_leak = |e: TicketStoreError| {
        let text = format!("{e} {e:?}");
        assert!(!text.contains("tkt-leak"), "{text}");
        e
    };
    let set = |value: String| {
        let mut c = c.clone();
        let key = key.clone();
        async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query_async::<()>(&mut c)
                .await
                .unwrap()
        }
    };
    set(r#"{"app_id":"cli_a","ticket":"tkt-leak"#.into()).await;
    let e = no_leak(store.load("cli_a").await.unwrap_err());
    assert!(matches!(e, TicketStoreError::Corrupt { .. }), "{e:?}");
    let foreign = StoredTicket::received_now("cli_b", Secret::new("tkt-leak"));
    set(foreign.to_json()).await;
    no_leak(store.load("cli_a").await.unwrap_err());
    redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    redis::cmd("HSET")
        .arg(&key)
        .arg("ticket")
        .arg("tkt-leak")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let e = no_leak(store.load("cli_a").await.unwrap_err());
    assert!(matches!(e, TicketStoreError::Redis { .. }), "{e:?}");
    // The next save repairs it.
    store.save(&t).await.unwrap();
    assert_eq!(store.load("cli_a").await.unwrap(), Some(t.clone()));
    assert!(matches!(
        store.load("a/b").await,
        Err(TicketStoreError::InvalidAppId(_))
    ));

    // Redis gone: errors, quickly, without the ticket.
    redis.kill();
    let started = std::time::Instant::now();
    no_leak(store.load("cli_a").await.unwrap_err());
    no_leak(store.save(&t).await.unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_ticket_pushed_to_one_replica_lets_a_cold_one_serve_without_a_resend() {
    let redis = redis_or_skip!();
    let (sim, client, config) = on_redis(&redis, sim_store(&["tenant_a"])).await;
    // Replica A takes Feishu's pushes; Redis is empty: it asks for the
    // ticket, receives it, and keeps it in Redis.
    let a = start_replica(&sim, &config, true).await;
    wait_ready(&client, &a).await;
    assert_eq!(resends(&sim), 1);
    assert_eq!(
        ticket_in_redis(&redis).await,
        sim.current_ticket(STORE_APP_ID)
    );

    // Replica B starts cold and never gets a push: it serves at once.
    let b = start_replica(&sim, &config, false).await;
    let answer = put_to(&client, b.addr(), Some("tenant_a")).await;
    assert_eq!(answer.code(), 0, "{:?}", answer.body);
    assert_eq!(resends(&sim), 1, "no resend for B");
    assert_eq!(pushes_to(&sim, &b), 0);
    let r = readyz_of(&client, &b).await;
    assert!(
        r["store_apps"][0]["ticket_age_secs"].as_u64().unwrap() < 60,
        "{r}"
    );
}

#[tokio::test]
async fn replicas_started_together_use_the_ticket_pushed_to_one_of_them() {
    let redis = redis_or_skip!();
    let (sim, client, config) = on_redis(&redis, sim_store(&["tenant_a"])).await;
    // The push comes after both replicas have asked for it.
    sim.set_ticket_push_delay(Duration::from_millis(500));
    let a = start_replica(&sim, &config, true).await;
    let b = start_replica(&sim, &config, false).await;
    // B waits for its ticket in Redis too, not only at its own endpoint.
    wait_ready(&client, &b).await;
    wait_ready(&client, &a).await;
    assert_eq!(pushes_to(&sim, &b), 0);
    assert!(resends(&sim) <= 2, "one per replica at most");
    let answer = put_to(&client, b.addr(), Some("tenant_a")).await;
    assert_eq!(answer.code(), 0, "{:?}", answer.body);
}

#[tokio::test]
async fn a_ticket_refused_on_one_replica_is_replaced_by_the_one_another_received() {
    let redis = redis_or_skip!();
    let (sim, client, config) = on_redis(&redis, sim_store(&["tenant_a"])).await;
    let a = start_replica(&sim, &config, true).await;
    wait_ready(&client, &a).await;
    let b = start_replica(&sim, &config, false).await;
    assert_eq!(put_to(&client, b.addr(), Some("tenant_a")).await.code(), 0);
    let before = resends(&sim);

    // Feishu's next push replaces the ticket and lands on A; B's ticket is
    // no good any more, and neither are its tokens.
    sim.invalidate_tickets(STORE_APP_ID);
    let pushed = sim.push_ticket_now(STORE_APP_ID).await.unwrap();
    assert_eq!(pushed.status(), Some(StatusCode::OK));
    assert_eq!(ticket_in_redis(&redis).await, pushed.app_ticket);
    sim.invalidate_all_tokens();
    let answer = put_to(&client, b.addr(), Some("tenant_a")).await;
    assert_eq!(answer.code(), 0, "{:?}", answer.body);
    assert_eq!(resends(&sim), before, "B took A's ticket, no resend");
    assert_eq!(pushes_to(&sim, &b), 0);
}

#[tokio::test]
async fn a_restart_with_the_ticket_in_redis_needs_no_resend_and_garbage_is_no_ticket() {
    let redis = redis_or_skip!();
    let (sim, client, config) = on_redis(&redis, sim_store(&["tenant_a"])).await;
    let gw = start_replica(&sim, &config, true).await;
    wait_ready(&client, &gw).await;
    gw.shutdown();
    gw.wait().await;
    let before = resends(&sim);

    let gw = start_replica(&sim, &config, true).await;
    let answer = put_to(&client, gw.addr(), Some("tenant_a")).await;
    assert_eq!(answer.code(), 0, "{:?}", answer.body);
    assert_eq!(resends(&sim), before, "no resend after a restart");
    gw.shutdown();
    gw.wait().await;

    // Garbage under the key counts as no ticket: a resend, and the ticket
    // that comes replaces it.
    let mut c = redis.conn().await;
    redis::cmd("SET")
        .arg(TICKET_KEY)
        .arg("not a ticket")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let gw = start_replica(&sim, &config, true).await;
    let answer = put_to(&client, gw.addr(), Some("tenant_a")).await;
    assert_eq!(answer.code(), 0, "{:?}", answer.body);
    assert_eq!(resends(&sim), before + 1);
    assert_eq!(
        ticket_in_redis(&redis).await,
        sim.current_ticket(STORE_APP_ID)
    );
}

#[tokio::test]
async fn redis_down_the_ticket_in_memory_serves_and_is_written_back_later() {
    let mut redis = redis_or_skip!();
    let (sim, client, config) = on_redis(&redis, sim_store(&["tenant_a"])).await;
    let gw = start_replica(&sim, &config, true).await;
    wait_ready(&client, &gw).await;

    // Redis dies; Feishu pushes a new ticket and forgets the old one.
    redis.kill();
    sim.invalidate_tickets(STORE_APP_ID);
    let pushed = sim.push_ticket_now(STORE_APP_ID).await.unwrap();
    assert_eq!(pushed.status(), Some(StatusCode::OK), "the push is taken");
    sim.invalidate_all_tokens();
    // (The quota falls back to this replica's share, started empty: the
    // first request may be limited for one period.)
    wait_for(Duration::from_secs(5), || async {
        let answer = put_to(&client, gw.addr(), Some("tenant_a")).await;
        assert_ne!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        answer.code() == 0
    })
    .await;
    let m = metrics_of(&client, &gw).await;
    let saves = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"feishu_gateway_app_ticket_store_errors_total{app="isv-bot",op="save"} "#,
            )
        })
        .and_then(|v| v.parse::<u64>().ok());
    assert!(saves >= Some(1), "{m}");

    // Redis is back, empty: the next sync writes the ticket back.
    redis.restart();
    wait_for(Duration::from_secs(10), || async {
        gw.gateway().store().sync_tickets().await;
        ticket_in_redis(&redis).await == pushed.app_ticket
    })
    .await;
}
#[tokio::test]
async fn two_replicas_share_each_tenants_quota_through_redis() {
    let redis = redis_or_skip!();
    let limits = [(5, Duration::from_secs(1))];
    let mut sim = sim_store(&["tenant_a", "tenant_b"]);
    sim.limits = limits.to_vec();
    let (sim, client, config) = on_redis(&redis, sim).await;
    let config = config.put_limits(&limits);
    let a = start_replica(&sim, &config, true).await;
    wait_ready(&client, &a).await;
    let b = start_replica(&sim, &config, false).await;
    wait_ready(&client, &b).await;
    let gws = Arc::new([a, b]);

    // Both replicas flood tenant_a, far over its quota, for 1.5 s.
    let started = std::time::Instant::now();
    let until = started + Duration::from_millis(1500);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (client, gws) = (client.clone(), Arc::clone(&gws));
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while std::time::Instant::now() < until {
                let a = put_to(&client, gws[i % 2].addr(), Some("tenant_a")).await;
                statuses.push(a.status);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            statuses
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        for status in t.await.unwrap() {
            match status {
                StatusCode::OK => ok += 1,
                StatusCode::TOO_MANY_REQUESTS => limited += 1,
                other => panic!("{other}"),
            }
        }
    }
    let took = started.elapsed();
    // One quota for the fleet: Feishu saw no violation, and the replicas
    // together admitted what one gateway would (the plan's burst, then one
    // per period), not twice that.
    assert_eq!(sim.violations(), 0);
    let seen = sim.max_in_any_window_for_tenant(
        STORE_APP_ID,
        "tenant_a",
        "put_top_notice",
        Duration::from_secs(1),
    );
    assert!(seen <= 5, "{seen} in one second");
    let plan = Plan::new(&["5/1s".parse().unwrap()], &PlanPolicy::default()).unwrap();
    let allowed = plan.burst() as usize
        + (took.as_secs_f64() / plan.emission_interval().as_secs_f64()) as usize;
    assert!(
        ok >= 1 && ok <= allowed + 1,
        "admitted {ok} (limited {limited}), the plan allows {allowed} in {took:?}"
    );
    assert_eq!(sim.requests().len(), ok, "limited requests never left");
    // The tenant's keys live in Redis under (app, tenant, route).
    let tat = format!(
        "feishu-gateway:quota:{{tenant_a@{STORE_APP_ID}:POST /open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice}}:tat"
    );
    let mut c = redis.conn().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(&tat)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(exists, "{tat}");
    // Another tenant is not limited by tenant_a's flood, on either replica
    // (its own quota is shared too: one period apart).
    for gw in gws.iter() {
        let answer = put_to(&client, gw.addr(), Some("tenant_b")).await;
        assert_eq!(answer.code(), 0, "{:?}", answer.body);
        tokio::time::sleep(plan.emission_interval()).await;
    }
    assert_eq!(sim.violations(), 0);
}

#[tokio::test]
async fn a_live_reload_keeps_the_ticket_and_the_tenants_tokens() {
    let s = start_store(&["tenant_a"], 100).await;
    s.ready().await;
    assert_eq!(s.put(Some("tenant_a")).await.code(), 0);
    let tenant_tokens = s.calls(StoreCallKind::TenantToken);
    let app_tokens = s.calls(StoreCallKind::AppToken);
    let resent = resends(&s.sim);

    // The same app, one more client: the app is kept.
    let config = store_config(&s.sim, 100)
        .state_dir(s.dir.path())
        .client(Client::new("crm-next", "NEXT_CLIENT_KEY", "isv-bot"))
        .env("NEXT_CLIENT_KEY", "store-client-key-NEXT-0123456789");
    let done = s.gw.reload(config.try_parse()).await.expect("reloaded");
    assert_eq!(done.kept, vec!["isv-bot".to_string()]);

    assert_eq!(s.put(Some("tenant_a")).await.code(), 0);
    assert_eq!(
        s.calls(StoreCallKind::TenantToken),
        tenant_tokens,
        "tenant token kept"
    );
    assert_eq!(
        s.calls(StoreCallKind::AppToken),
        app_tokens,
        "app token kept"
    );
    assert_eq!(resends(&s.sim), resent, "ticket kept: no resend");
    assert_eq!(s.readyz().await["store_apps"][0]["tenants"], 1);
}
