use super::cluster::hash_tag;
use super::*;

#[test]
fn a_hash_tag_is_the_first_non_empty_braces_or_the_whole_key() {
    assert_eq!(hash_tag(b"gw:quota:{app/put}:tat"), b"app/put");
    assert_eq!(hash_tag(b"gw:quota:{app/put}:pause"), b"app/put");
    assert_eq!(hash_tag(b"gw:budget:{ops}:2026-12"), b"ops");
    assert_eq!(hash_tag(b"gw:app_ticket:cli_1"), b"gw:app_ticket:cli_1");
    assert_eq!(
        hash_tag(b"a{}b{c}"),
        b"a{}b{c}",
        "an empty tag: the whole key"
    );
    assert_eq!(hash_tag(b"a{b"), b"a{b");
}

fn target_with_password() -> (SentinelTarget, ClusterTarget) {
    let auth = NodeAuth {
        username: Some("gw".into()),
        password: Some(Secret::new("hunter2-redis")),
    };
    (
        SentinelTarget {
            sentinels: vec!["10.0.0.1:26379".into(), "10.0.0.2:26379".into()],
            master: "feishu".into(),
            db: 2,
            tls: true,
            auth: auth.clone(),
            sentinel_auth: NodeAuth {
                username: None,
                password: Some(Secret::new("hunter3-sentinel")),
            },
        },
        ClusterTarget {
            nodes: vec!["10.0.0.1:6379".into(), "10.0.0.2:6379".into()],
            tls: false,
            auth,
        },
    )
}

#[test]
fn targets_are_described_without_credentials() {
    let (s, c) = target_with_password();
    let s = RedisConnection::open(&RedisTarget::Sentinel(s), None, Duration::from_millis(50))
        .expect("opens without connecting");
    assert_eq!(
        s.target(),
        "rediss-sentinel://10.0.0.1:26379,10.0.0.2:26379/feishu/2"
    );
    let c = RedisConnection::open(&RedisTarget::Cluster(c), None, Duration::from_millis(50))
        .expect("opens without connecting");
    assert_eq!(c.target(), "redis-cluster://10.0.0.1:6379,10.0.0.2:6379");
    for shown in [format!("{s:?}"), format!("{c:?}")] {
        assert!(!shown.contains("hunter"), "{shown}");
    }
    let (s, _) = target_with_password();
    assert!(!format!("{:?}", RedisTarget::Sentinel(s)).contains("hunter"));
}

#[test]
fn a_sentinel_address_must_be_host_and_port() {
    let (mut s, _) = target_with_password();
    s.sentinels = vec!["10.0.0.1".into()];
    let err = RedisConnection::open(&RedisTarget::Sentinel(s), None, Duration::from_millis(50))
        .expect_err("no port");
    assert!(err.contains("quota.redis_sentinels"), "{err}");
}

#[test]
fn a_pipelines_commands_are_routed_by_the_key_the_gateway_puts_first() {
    use super::cluster::key;
    let script = redis::Script::new("return 1");
    let mut call = script.prepare_invoke();
    call.key("gw:quota:{a}:tat")
        .key("gw:quota:{a}:pause")
        .arg("take");
    let mut pipe = redis::pipe();
    pipe.load_script(&script)
        .invoke_script(&call)
        .cmd("INCR")
        .arg("gw:budget:{ops}:2026-12")
        .cmd("EXPIRE")
        .arg("gw:budget:{ops}:2026-12")
        .arg(60)
        .cmd("PING");
    let keys: Vec<Option<&[u8]>> = pipe.cmd_iter().map(key).collect();
    assert_eq!(
        keys,
        [
            None,
            Some(&b"gw:quota:{a}:tat"[..]),
            Some(&b"gw:budget:{ops}:2026-12"[..]),
            Some(&b"gw:budget:{ops}:2026-12"[..]),
            None,
        ]
    );
    let mut no_keys = redis::cmd("EVALSHA");
    no_keys.arg("abc").arg(0).arg("x");
    assert_eq!(key(&no_keys), None, "a script without keys routes anywhere");
}
