//! Quotas and tickets shared through a highly available Redis: a Redis
//! Cluster (3 primaries, a replica each) and a Sentinel set (a primary, a
//! replica, 3 sentinels), real `redis-server` processes each test starts on
//! free ports (no persistence) and kills at the end (`support::redis_ha`).
//! Gateways flooding one quota through them, a primary killed mid-flood,
//! the simulated Feishu counting violations at arrival; the figures
//! (recovery times, admissions, violations) are printed.
//!
//! Without `redis-server` and `redis-cli` on PATH the tests are skipped
//! with a note, except under `CI=true`, where they fail
//! (`deploy/ci-install-redis.sh` installs them).

mod support;

use std::time::{Duration, Instant};

use support::redis_ha::{cluster_or_skip, sentinel_or_skip};

// ----- the harness itself -----------------------------------------------------

#[tokio::test]
async fn a_cluster_forms_and_a_replica_takes_over_a_killed_primary_with_its_data() {
    let started = Instant::now();
    let mut cluster = cluster_or_skip!(3, 1);
    println!("cluster of 6 formed in {:.2?}", started.elapsed());
    assert_eq!(cluster.seed_nodes().len(), 6);
    assert_eq!(cluster.primaries().await, [0, 1, 2]);

    // Keys land on the primary that serves their slot; hash tags put keys
    // together.
    let mut owners = std::collections::BTreeSet::new();
    for k in ["a", "b", "c", "d", "e", "f"] {
        let key = format!("{{{k}}}:x");
        let owner = cluster.primary_for_key(&key).await;
        owners.insert(owner);
        let mut c = cluster.conn(owner).await;
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(k)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(
            cluster.primary_for_key(&format!("{{{k}}}:y")).await,
            owner,
            "one hash tag, one slot"
        );
        let keys = cluster.keys_on(owner, "{*}:x").await;
        assert!(keys.contains(&key), "{key} on node {owner}: {keys:?}");
    }
    assert!(owners.len() > 1, "keys spread over primaries: {owners:?}");

    // The primary of {a} dies: its replica takes over within seconds, with
    // what was replicated.
    let victim = cluster.primary_for_key("{a}:x").await;
    let mut c = cluster.conn(victim).await;
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query_async(&mut c)
        .await
        .unwrap();
    cluster.kill(victim).await;
    let took = cluster.wait_failover(Duration::from_secs(15)).await;
    println!("cluster failover (node timeout 1 s): {took:.2?}");
    let heir = cluster.primary_for_key("{a}:x").await;
    assert_ne!(heir, victim);
    assert!(heir >= 3, "a former replica: {heir}");
    let v: String = cluster
        .query(heir, redis::cmd("GET").arg("{a}:x"))
        .await
        .unwrap();
    assert_eq!(v, "a");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // Back, it rejoins as a replica.
    cluster.restart(victim).await;
    assert_eq!(cluster.primaries().await.len(), 3);
    assert!(!cluster.primaries().await.contains(&victim));
}

#[tokio::test]
async fn a_sentinel_set_forms_and_fails_over_to_the_replica_with_its_data() {
    let started = Instant::now();
    let mut set = sentinel_or_skip!();
    println!("sentinel set formed in {:.2?}", started.elapsed());
    assert_eq!(set.sentinels().len(), 3);
    assert_eq!(set.master_name(), "gw");
    assert_eq!(set.current_primary().await, 0);
    let mut c = set.primary_conn().await;
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .unwrap();
    set.wait_replicated().await;
    set.kill_primary().await;
    let took = set.wait_new_primary(Duration::from_secs(15)).await;
    println!("sentinel failover (down-after 1 s): {took:.2?}");
    assert_eq!(set.current_primary().await, 1);
    set.wait_sentinels_agree(Duration::from_secs(10)).await;
    let mut c = set.primary_conn().await;
    let v: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, "v");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
