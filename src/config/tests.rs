use super::*;

const EXAMPLE: &str = r#"
listen = "127.0.0.1:8080"           # where internal services connect
admin_listen = "127.0.0.1:9090"     # /healthz, /readyz (and /metrics later); never on `listen`
upstream = "https://open.feishu.cn" # http:// is allowed (tests, demo); warn when it is not loopback.

[[apps]]
name = "ops-bot"                    # label in logs and metrics
app_id = "cli_a1b2c3d4e5f6a7b8"
app_secret_env = "OPS_BOT_APP_SECRET"   # or app_secret_file = "/run/secrets/ops-bot"

[[clients]]
name = "billing"
key_env = "BILLING_GATEWAY_KEY"     # or key_sha256 = "<hex of sha256(key)>"
app = "ops-bot"
"#;

fn env() -> MapEnv {
    MapEnv::new()
        .with("OPS_BOT_APP_SECRET", "s3cr3t-app-secret")
        .with("BILLING_GATEWAY_KEY", "billing-key-0123456789abcdef")
}

#[test]
fn the_documented_example_works_as_written() {
    let c = Config::parse(EXAMPLE, &env()).expect("valid");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.upstream.base_url(), "https://open.feishu.cn");
    assert_eq!(c.apps[0].app_secret.expose(), "s3cr3t-app-secret");
    assert_eq!(c.clients[0].app, 0);
    assert_eq!(
        c.clients[0].keys,
        [key_digest(b"billing-key-0123456789abcdef")]
    );
    assert!(
        c.clients[0].allow.is_none(),
        "no allow list: every endpoint"
    );
    assert_eq!(c.max_body_bytes, 1 << 20);
    assert_eq!(c.workers, default_workers());
    assert!(c.workers >= 1);
    assert!(c.warnings.is_empty());
    // Debug output of the whole config carries no secret.
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("s3cr3t"));
}

#[test]
fn every_problem_is_reported_at_once_without_secrets() {
    let text = r#"
listen = "nowhere"
admin_listen = 9090
upstream = "ftp://example.com/path"
colour = "blue"
[timeouts]
connect = "soon"
[[apps]]
name = "ops bot"
app_id = "cli_x"
app_secret_env = "MISSING_SECRET"
extra = 1
[[apps]]
app_id = "cli_x"
app_secret_file = "/nonexistent/secret"
[[clients]]
name = "billing"
key_sha256 = "abc"
app = "nobody"
[[clients]]
name = "billing"
app = "ops bot"
"#;
    let problems = Config::parse(text, &env()).unwrap_err();
    let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    for expected in [
        "listen",
        "admin_listen",
        "upstream",
        "colour",
        "timeouts.connect",
        "apps[0].name",
        "apps[0].app_secret_env",
        "apps[0].extra",
        "apps[1].name",
        "apps[1].app_id",
        "apps[1].app_secret_file",
        "clients[0].key_sha256",
        "clients[0].app",
        "clients[1].name",
        "clients[1].key_env",
    ] {
        assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
    }
    let text = problems.to_string();
    assert!(text.contains("MISSING_SECRET is not set"), "{text}");
    assert!(!text.contains("s3cr3t"));
}

#[test]
fn plain_http_upstream_off_loopback_is_a_warning() {
    let text = EXAMPLE.replace("https://open.feishu.cn", "http://10.1.2.3:8000");
    let c = Config::parse(&text, &env()).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let text = EXAMPLE.replace("https://open.feishu.cn", "http://127.0.0.1:8000");
    assert!(Config::parse(&text, &env()).unwrap().warnings.is_empty());
}

#[test]
fn key_sha256_and_app_upstream_override() {
    let digest = hex::encode(key_digest(b"a-long-enough-client-key"));
    let text = format!(
        r#"
[[apps]]
name = "lark-bot"
app_id = "cli_1"
app_secret_env = "OPS_BOT_APP_SECRET"
upstream = "https://open.larksuite.com"
[[clients]]
name = "c"
key_sha256 = "{digest}"
app = "lark-bot"
"#
    );
    let c = Config::parse(&text, &env()).unwrap();
    assert_eq!(c.apps[0].upstream.base_url(), "https://open.larksuite.com");
    assert_eq!(c.clients[0].keys, [key_digest(b"a-long-enough-client-key")]);
}

#[test]
fn syntax_errors_name_the_line() {
    let problems = Config::parse("listen = \n", &env()).unwrap_err();
    assert!(problems.0[0].key.starts_with("line 1"), "{problems}");
}

#[test]
fn short_keys_and_same_listeners_are_refused() {
    let text = EXAMPLE.replace("127.0.0.1:9090", "127.0.0.1:8080");
    let env = env().with("BILLING_GATEWAY_KEY", "short");
    let problems = Config::parse(&text, &env).unwrap_err();
    let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"admin_listen"));
    assert!(keys.contains(&"clients[0].key_env"));
}

#[test]
fn workers_are_a_count_and_zero_means_the_shared_runtime() {
    let c = Config::parse(&format!("workers = 0\n{EXAMPLE}"), &env()).expect("valid");
    assert_eq!(c.workers, 0);
    let c = Config::parse(&format!("workers = 3\n{EXAMPLE}"), &env()).expect("valid");
    assert_eq!(c.workers, 3);
    for bad in ["workers = -1", "workers = \"many\"", "workers = 5000"] {
        let e = Config::parse(&format!("{bad}\n{EXAMPLE}"), &env()).expect_err(bad);
        assert!(e.to_string().contains("workers"), "{bad}: {e}");
    }
}

#[test]
fn store_apps_keep_their_ticket_in_state_dir_or_in_redis() {
    let store = r#"
[[apps]]
name = "isv-bot"
app_id = "cli_store"
app_secret_env = "OPS_BOT_APP_SECRET"
type = "store"
verification_token_env = "OPS_BOT_APP_SECRET"
"#;
    let redis =
        "[quota]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\nreplicas = 2\n";
    // Local quotas and no state_dir: nowhere to keep the ticket.
    let text = format!("{EXAMPLE}{store}");
    let problems = Config::parse(&text, &env()).unwrap_err();
    assert_eq!(problems.0.len(), 1, "{problems}");
    assert_eq!(problems.0[0].key, "state_dir");
    // With state_dir: fine.
    let text = format!("state_dir = \"/var/lib/feishu-gateway\"\n{EXAMPLE}{store}");
    let c = Config::parse(&text, &env()).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // With Redis: the ticket is kept there, no state_dir needed.
    let text = format!("{EXAMPLE}{store}{redis}");
    let c = Config::parse(&text, &env()).unwrap();
    assert!(c.state_dir.is_none());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // Both: Redis wins, and the unused directory is pointed out.
    let text = format!("state_dir = \"/var/lib/feishu-gateway\"\n{EXAMPLE}{store}{redis}");
    let c = Config::parse(&text, &env()).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("state_dir is not used"));
}

#[test]
fn a_tenant_on_a_self_built_apps_client_is_found_after_a_broken_app_entry() {
    // The first app entry is incomplete (no secret): the client's app must
    // still be found by name, not by its position among complete entries.
    let text = r#"
[[apps]]
name = "broken"
app_id = "cli_0"
[[apps]]
name = "ops-bot"
app_id = "cli_1"
app_secret_env = "OPS_BOT_APP_SECRET"
[[clients]]
name = "billing"
key_env = "BILLING_GATEWAY_KEY"
app = "ops-bot"
tenant = "2ed263bf32cf1651"
"#;
    let problems = Config::parse(text, &env()).unwrap_err().to_string();
    assert!(
        problems.contains(
            r#"clients[name = "billing"].tenant: only clients of store apps name a tenant"#
        ),
        "{problems}"
    );
}

#[test]
fn log_level_is_checked_like_every_other_key() {
    for good in [
        "info",
        "WARN",
        "warn,feishu_gateway::app=info",
        "info,feishu_gateway::access=off",
        "feishu_gateway=debug",
    ] {
        let text = format!("{EXAMPLE}\n[log]\nlevel = {good:?}\n");
        let c = Config::parse(&text, &env()).unwrap_or_else(|p| panic!("{good}: {p}"));
        assert_eq!(c.log.level, good);
    }
    // `infoo` would be a TARGET with every level on for tracing's own
    // parser: the whole log silent. `debug=` names no level.
    for bad in ["infoo", "", "info,feishu_gateway=loud", "=info", "debug="] {
        let text = format!("{EXAMPLE}\n[log]\nlevel = {bad:?}\nformat = \"xml\"\n");
        let problems = Config::parse(&text, &env()).unwrap_err();
        let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["log.format", "log.level"], "{bad:?}: {problems}");
        assert!(
            problems.to_string().contains("trace, debug, info"),
            "{problems}"
        );
    }
}

#[test]
fn a_client_holds_several_keys_while_one_is_rotated() {
    let next = hex::encode(key_digest(b"billing-key-NEXT-0123456789"));
    let text = format!(
        r#"
[[apps]]
name = "ops-bot"
app_id = "cli_1"
app_secret_env = "OPS_BOT_APP_SECRET"
[[clients]]
name = "billing"
app = "ops-bot"
key_env = ["BILLING_GATEWAY_KEY", "BILLING_GATEWAY_KEY_OLD"]
key_sha256 = "{next}"
"#
    );
    let with_old = env().with("BILLING_GATEWAY_KEY_OLD", "billing-key-OLD-0123456789");
    let c = Config::parse(&text, &with_old).unwrap();
    assert_eq!(
        c.clients[0].keys,
        [
            key_digest(b"billing-key-0123456789abcdef"),
            key_digest(b"billing-key-OLD-0123456789"),
            key_digest(b"billing-key-NEXT-0123456789"),
        ]
    );

    // Each key's problem is named by its place; none is printed.
    let text = r#"
[[apps]]
name = "ops-bot"
app_id = "cli_1"
app_secret_env = "OPS_BOT_APP_SECRET"
[[clients]]
name = "billing"
app = "ops-bot"
key_env = ["BILLING_GATEWAY_KEY", "SHORT_KEY", "UNSET_KEY", "BILLING_GATEWAY_KEY"]
key_sha256 = ["abc"]
key_file = []
[[clients]]
name = "crm"
app = "ops-bot"
key_env = "BILLING_GATEWAY_KEY"
[[clients]]
name = "nokey"
app = "ops-bot"
"#;
    let env = env().with("SHORT_KEY", "short-s3cr3t");
    let problems = Config::parse(text, &env).unwrap_err();
    let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "clients[0].key_env[1]",
            "clients[0].key_env[2]",
            "clients[0].key_env[3]",
            "clients[0].key_file",
            "clients[0].key_sha256[0]",
            "clients[1].key_env",
            "clients[2].key_env",
        ],
        "{problems}"
    );
    let text = problems.to_string();
    assert!(text.contains("shorter than 16"), "{text}");
    assert!(text.contains("given twice"), "{text}");
    assert!(text.contains("already used by clients[0]"), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
}

#[test]
fn allow_entries_are_parsed_and_checked_against_the_catalog() {
    let client = |allow: &str| {
        format!(
            r#"
[[apps]]
name = "ops-bot"
app_id = "cli_1"
app_secret_env = "OPS_BOT_APP_SECRET"
[[routes]]
method = "POST"
path = "/open-apis/im/v1/messages"
limits = []
[[clients]]
name = "billing"
app = "ops-bot"
key_env = "BILLING_GATEWAY_KEY"
allow = {allow}
"#
        )
    };
    // A catalog template (parameter names free), a route added by
    // [[routes]], a prefix reaching catalog routes: fine, no warning.
    let c = Config::parse(
        &client(
            r#"["POST /open-apis/im/v1/chats/:id/top_notice/put_top_notice", "POST /open-apis/im/v1/messages", "* /open-apis/im/v1/chats/*"]"#,
        ),
        &env(),
    )
    .unwrap();
    assert_eq!(c.clients[0].allow.as_ref().map(Vec::len), Some(3));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    // A prefix reaching no catalog route still allows paths outside it: a
    // warning that check-config prints.
    let c = Config::parse(
        &client(r#"["GET /open-apis/gateway-nowhere/v1/*"]"#),
        &env(),
    )
    .unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].starts_with("clients[0].allow[0]: ")
            && c.warnings[0].contains("reaches no catalog route"),
        "{:?}",
        c.warnings
    );

    // A template naming no catalog route would allow nothing: a problem,
    // like a malformed entry and an empty list.
    let problems = Config::parse(
        &client(
            r#"["POST /open-apis/im/v1/messages", "DELETE /open-apis/im/v1/messages", "POST /open-apis/im/v1/messagez", "POST im/v1/messages", 7]"#,
        ),
        &env(),
    )
    .unwrap_err();
    let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "clients[0].allow[4]",
            "clients[0].allow[1]",
            "clients[0].allow[2]",
            "clients[0].allow[3]",
        ],
        "{problems}"
    );
    assert!(
        problems.to_string().contains("names no catalog route"),
        "{problems}"
    );
    let problems = Config::parse(&client("[]"), &env()).unwrap_err();
    assert_eq!(problems.0[0].key, "clients[0].allow", "{problems}");
    assert!(
        problems.0[0].message.contains("leave `allow` out"),
        "{problems}"
    );
}

#[test]
fn listener_limits_have_defaults_and_are_checked() {
    let c = Config::parse(EXAMPLE, &env()).unwrap();
    assert_eq!(
        (c.listen_backlog, c.max_connections, c.admin_max_connections),
        (4096, 4096, 64)
    );
    let text = format!(
        "listen_backlog = 1024\nmax_connections = 20000\nadmin_max_connections = 8\n{EXAMPLE}"
    );
    let c = Config::parse(&text, &env()).unwrap();
    assert_eq!(
        (c.listen_backlog, c.max_connections, c.admin_max_connections),
        (1024, 20000, 8)
    );
    let text = format!(
        "listen_backlog = 0\nmax_connections = -1\nadmin_max_connections = \"many\"\n{EXAMPLE}"
    );
    let problems = Config::parse(&text, &env()).unwrap_err();
    let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["listen_backlog", "max_connections", "admin_max_connections"],
        "{problems}"
    );
}

#[test]
fn retries_have_defaults_and_every_key_is_checked() {
    let c = Config::parse(EXAMPLE, &env()).expect("valid");
    assert_eq!(c.retries, RetryPolicy::default());
    assert!(c.retries.enabled);

    let text = format!(
        "{EXAMPLE}\n[retries]\nenabled = false\nmax_retries = 3\nbackoff_base = \"20ms\"\nbackoff_max = \"200ms\"\nbudget_ratio = 0.2\nbudget_min = 5\nbudget_window = \"30s\"\n"
    );
    let c = Config::parse(&text, &env()).expect("valid");
    let r = &c.retries;
    assert!(!r.enabled);
    assert_eq!(r.max_retries, 3);
    assert_eq!(r.backoff_base, std::time::Duration::from_millis(20));
    assert_eq!(r.backoff_max, std::time::Duration::from_millis(200));
    assert_eq!(r.budget_ratio, 0.2);
    assert_eq!(r.budget_min, 5);
    assert_eq!(r.budget_window, std::time::Duration::from_secs(30));

    let text = format!(
        "{EXAMPLE}\n[retries]\nenabled = \"yes\"\nmax_retries = 11\nbackoff_base = \"1s\"\nbackoff_max = \"100ms\"\nbudget_ratio = 1.5\nbudget_window = \"10ms\"\nbudget = 3\n"
    );
    let problems = Config::parse(&text, &env()).unwrap_err();
    let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    for expected in [
        "retries.enabled",
        "retries.max_retries",
        "retries.backoff_max",
        "retries.budget_ratio",
        "retries.budget_window",
        "retries.budget",
    ] {
        assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
    }
}

#[test]
fn tracing_is_off_by_default_and_every_key_is_checked() {
    let c = Config::parse(EXAMPLE, &env()).expect("valid");
    assert_eq!(c.tracing, TraceConfig::default());
    assert!(!c.tracing.enabled);
    assert_eq!(
        c.tracing.endpoint.to_string(),
        "http://localhost:4318/v1/traces"
    );

    let text = format!(
        "{EXAMPLE}\n[tracing]\nenabled = true\nendpoint = \"http://otel-collector:4318\"\nsampling_ratio = 0.25\nservice_name = \"gw-prod\"\nexport_timeout = \"3s\"\n"
    );
    let c = Config::parse(&text, &env()).expect("valid");
    let t = &c.tracing;
    assert!(t.enabled);
    assert_eq!(
        t.endpoint.to_string(),
        "http://otel-collector:4318/v1/traces"
    );
    assert_eq!(t.sampling_ratio, 0.25);
    assert_eq!(t.service_name, "gw-prod");
    assert_eq!(t.export_timeout, std::time::Duration::from_secs(3));

    // Checked even while off: a typo shows before tracing is turned on.
    let text = format!(
        "{EXAMPLE}\n[tracing]\nenabled = \"yes\"\nendpoint = \"http://user:pw@collector:4318\"\nsampling_ratio = 1.5\nservice_name = \" \"\nexport_timeout = \"0s\"\nratio = 1\n"
    );
    let problems = Config::parse(&text, &env()).unwrap_err();
    let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    for expected in [
        "tracing.enabled",
        "tracing.endpoint",
        "tracing.sampling_ratio",
        "tracing.service_name",
        "tracing.export_timeout",
        "tracing.ratio",
    ] {
        assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
    }
    assert!(
        !problems.to_string().contains("pw@"),
        "the endpoint's credentials are not echoed: {problems}"
    );
}

#[test]
fn resource_limits_are_read_and_their_problems_named() {
    let good = format!(
        "{EXAMPLE}\n[[routes]]\nmethod = \"POST\"\npath = \"/open-apis/im/v1/messages/:message_id/forward\"\n\
         [[routes.resource_limits]]\nname = \"im.forward\"\nkey = \"path.message_id\"\nlimits = [\"5/1s\", \"1000/86400s\"]\nconcurrency = 2\nshared = true\n"
    );
    let c = Config::parse(&good, &env()).unwrap();
    let rule = &c.routes[0].resource_limits[0];
    assert_eq!(rule.name, "im.forward");
    assert_eq!(rule.key.to_string(), "path.message_id");
    assert_eq!(rule.limits.len(), 2);
    assert_eq!((rule.concurrency, rule.shared), (Some(2), true));
    let bad = format!(
        "{EXAMPLE}\n[[routes]]\nmethod = \"POST\"\npath = \"/open-apis/im/v1/messages\"\n\
         [[routes.resource_limits]]\nname = \"x\"\nkey = \"header.x\"\nconcurrency = 0\n\
         [[routes.resource_limits]]\nname = \"y\"\nkey = \"body.receive_id\"\n"
    );
    let problems = Config::parse(&bad, &env()).unwrap_err().to_string();
    assert!(
        problems.contains("routes[0].resource_limits[0].key"),
        "{problems}"
    );
    assert!(
        problems.contains("routes[0].resource_limits[0].concurrency"),
        "{problems}"
    );
    assert!(
        problems.contains("routes[0].resource_limits[1].limits"),
        "{problems}"
    );
}

/// `[[apps]]` entries `(name, app_id, extra keys)` with a client of the
/// first, as config text.
fn apps_text(apps: &[(&str, &str, &str)]) -> String {
    let mut text = String::new();
    for (name, id, extra) in apps {
        text.push_str(&format!(
            "[[apps]]\nname = \"{name}\"\napp_id = \"{id}\"\napp_secret_env = \"OPS_BOT_APP_SECRET\"\n{extra}\n"
        ));
    }
    format!(
        "{text}[[clients]]\nname = \"billing\"\nkey_env = \"BILLING_GATEWAY_KEY\"\napp = \"{}\"\n",
        apps[0].0
    )
}

#[test]
fn monthly_budgets_make_one_group_per_app_or_per_budget_group() {
    let text = apps_text(&[
        ("solo", "cli_1", "monthly_budget = 10000"),
        (
            "a",
            "cli_2",
            "monthly_budget = 50000\nbudget_group = \"acme\"",
        ),
        ("plain", "cli_3", ""),
        (
            "b",
            "cli_4",
            "budget_group = \"acme\"\nmonthly_budget = 50000",
        ),
    ]);
    let c = Config::parse(&text, &env()).expect("valid");
    let groups: Vec<(&str, Option<u64>, &[usize])> = c
        .budget
        .groups
        .iter()
        .map(|g| (g.name.as_str(), g.limit, g.apps.as_slice()))
        .collect();
    assert_eq!(
        groups,
        vec![
            ("solo", Some(10000), &[0][..]),
            ("acme", Some(50000), &[1, 3][..]),
            ("plain", None, &[2][..]),
        ]
    );
    // Without any budget key: every self-built app is a group of its own,
    // without a limit (Feishu's 99991403 still stops it).
    let c = Config::parse(EXAMPLE, &env()).expect("valid");
    assert_eq!(c.budget.groups.len(), 1);
    assert_eq!(c.budget.groups[0].limit, None);
}

#[test]
fn bad_budget_keys_are_named() {
    let store = "type = \"store\"\nverification_token_env = \"OPS_BOT_APP_SECRET\"\nmonthly_budget = 100\nbudget_group = \"isv\"";
    let text = format!(
        "state_dir = \"/tmp/x\"\n{}",
        apps_text(&[
            ("zero", "cli_1", "monthly_budget = 0"),
            ("neg", "cli_2", "monthly_budget = -5"),
            ("str", "cli_3", "monthly_budget = \"10k\""),
            (
                "g1",
                "cli_4",
                "monthly_budget = 100\nbudget_group = \"acme\""
            ),
            (
                "g2",
                "cli_5",
                "monthly_budget = 200\nbudget_group = \"acme\""
            ),
            ("g3", "cli_6", "budget_group = \"acme\""),
            (
                "clash",
                "cli_7",
                "monthly_budget = 1\nbudget_group = \"zero\""
            ),
            (
                "label",
                "cli_8",
                "monthly_budget = 1\nbudget_group = \"a b\""
            ),
            ("isv", "cli_9", store),
        ])
    );
    let problems = Config::parse(&text, &env()).unwrap_err();
    let found = |key: &str, needle: &str| {
        problems
            .0
            .iter()
            .any(|p| p.key == key && p.message.contains(needle))
    };
    for (key, needle) in [
        ("apps[0].monthly_budget", "at least 1"),
        ("apps[1].monthly_budget", "out of range"),
        ("apps[2].monthly_budget", "expected an integer"),
        (
            "apps[4].monthly_budget",
            "200 differs from the 100 of apps[3]",
        ),
        ("apps[5].monthly_budget", "is required with budget_group"),
        ("apps[6].budget_group", "is the name of apps[0]"),
        ("apps[7].budget_group", "must be 1-64 characters"),
        ("apps[8].monthly_budget", "only self-built apps"),
        ("apps[8].budget_group", "only self-built apps"),
    ] {
        assert!(found(key, needle), "{key}: {needle:?} not in\n{problems}");
    }
    assert_eq!(problems.0.len(), 9, "{problems}");
}

#[test]
fn a_bad_encrypt_key_does_not_hide_the_store_apps_other_keys() {
    // Both encrypt_key_env and encrypt_key_file: one problem, and the keys
    // after it are still read (not reported as unknown).
    let text = r#"
state_dir = "/var/lib/feishu-gateway"
[[apps]]
name = "isv-bot"
app_id = "cli_store"
app_secret_env = "OPS_BOT_APP_SECRET"
type = "store"
encrypt_key_env = "OPS_BOT_APP_SECRET"
encrypt_key_file = "/nonexistent"
verification_token_env = "OPS_BOT_APP_SECRET"
max_tenants = 10
tenant_idle_timeout = "10m"
require_signature = true
[[clients]]
name = "c"
key_env = "BILLING_GATEWAY_KEY"
app = "isv-bot"
"#;
    let problems = Config::parse(text, &env()).unwrap_err();
    let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["apps[0].encrypt_key_env"], "{problems}");
}

#[test]
fn quota_shares_are_fractions_and_each_problem_names_its_client() {
    let clients = |shares: &[&str]| {
        let mut text = String::from(
            "[[apps]]\nname = \"ops-bot\"\napp_id = \"cli_1\"\napp_secret_env = \"OPS_BOT_APP_SECRET\"\n",
        );
        for (i, share) in shares.iter().enumerate() {
            text.push_str(&format!(
                "[[clients]]\nname = \"c{i}\"\napp = \"ops-bot\"\nkey_sha256 = \"{}\"\n",
                hex::encode(key_digest(format!("client-key-{i}-0123456789").as_bytes()))
            ));
            if !share.is_empty() {
                text.push_str(&format!("quota_share = {share}\n"));
            }
        }
        text
    };
    // Fractions, an integer 1, none; shares may add up to more than 1
    // (each is a ceiling for its client, not a reservation).
    let c = Config::parse(&clients(&["0.3", "1", "", "0.8"]), &env()).expect("valid");
    let shares: Vec<Option<u32>> = c
        .clients
        .iter()
        .map(|c| c.quota_share.map(|s| s.ppm()))
        .collect();
    assert_eq!(
        shares,
        [Some(300_000), Some(1_000_000), None, Some(800_000)]
    );
    assert_eq!(c.clients[0].quota_share.unwrap().to_string(), "0.3");

    let problems = Config::parse(
        &clients(&["0.2", "0", "1.5", "\"half\"", "-0.1", "2", "0.0000001"]),
        &env(),
    )
    .unwrap_err();
    let found: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [
            "clients[1].quota_share: must be a fraction greater than 0 and at most 1, like 0.3, found 0",
            "clients[2].quota_share: must be a fraction greater than 0 and at most 1, like 0.3, found 1.5",
            "clients[3].quota_share: expected a fraction greater than 0 and at most 1, like 0.3, found string",
            "clients[4].quota_share: must be a fraction greater than 0 and at most 1, like 0.3, found -0.1",
            "clients[5].quota_share: must be a fraction greater than 0 and at most 1, like 0.3, found 2",
            "clients[6].quota_share: 0.0000001 is below the smallest share, 0.000001",
        ],
        "{problems}"
    );
}

#[test]
fn events_subscriptions_and_app_transports_are_read_and_checked() {
    let good = format!(
        r#"{EXAMPLE}
[events]
drop_after = "1h"
card_deadline = "2s"
card_fallback = '{{"toast":{{"type":"info","content":"later"}}}}'

[[apps]]
name = "ws-bot"
app_id = "cli_ws"
app_secret_env = "OPS_BOT_APP_SECRET"
events = "long_connection"

[[subscriptions]]
name = "chatops"
app = "ws-bot"
events = ["im.message.receive_v1", "card.action.trigger"]
url = "http://chatops.internal/hook"
secret_env = "SUB_SECRET"
"#
    );
    let env = env().with("SUB_SECRET", "subscription-secret-0123456789");
    let c = Config::parse(&good, &env).expect("valid");
    assert_eq!(c.events.apps[0].transport, Transport::Webhook);
    assert_eq!(c.events.apps[1].transport, Transport::LongConnection);
    assert!(c.events.apps[1].callback.is_none());
    assert_eq!(
        c.events.settings.drop_after,
        std::time::Duration::from_secs(3600)
    );
    assert_eq!(
        &c.events.settings.card_fallback[..],
        br#"{"toast":{"type":"info","content":"later"}}"#
    );
    assert_eq!(
        c.events.subscriptions[0].url.host(),
        Some("chatops.internal")
    );
    assert!(!format!("{c:?}").contains("subscription-secret"));

    let bad = format!(
        r#"{EXAMPLE}
[events]
card_deadline = "3s"
card_fallback = "not json"
retry_first = "10m"

[[apps]]
name = "isv"
app_id = "cli_isv"
app_secret_env = "OPS_BOT_APP_SECRET"
type = "store"
verification_token_env = "SUB_SECRET"
events = "long_connection"

[[subscriptions]]
name = "a"
app = "ops-bot"
events = ["card.action.trigger"]
url = "http://a/hook"
secret_env = "SHORT"

[[subscriptions]]
name = "b"
app = "ops-bot"
events = ["card.action.trigger"]
url = "ftp://b/hook"
secret_env = "SUB_SECRET"

[[subscriptions]]
name = "c"
app = "nobody"
events = []
url = "http://c/hook"
secret_env = "SUB_SECRET"
"#
    );
    let env = env
        .with("SHORT", "short")
        .with("SUB_SECRET", "subscription-secret-0123456789");
    let problems = Config::parse(&bad, &env).unwrap_err();
    let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
    for want in [
        "events.card_deadline",
        "events.card_fallback",
        "events.retry_first",
        "apps[1].events",
        "subscriptions[0].secret_env",
        "apps[0].verification_token_env",
        "subscriptions[1].events",
        "subscriptions[1].url",
        "subscriptions[2].app",
        "subscriptions[2].events",
    ] {
        assert!(keys.contains(&want), "{want} not in {keys:?}");
    }
    let text = problems.to_string();
    assert!(!text.contains("subscription-secret"), "{text}");
}
