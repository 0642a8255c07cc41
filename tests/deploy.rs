//! Tests of the operations artifacts in `deploy/`: the Prometheus rules and
//! their unit tests, the Grafana dashboard, the Kubernetes manifests and the
//! Dockerfile.
//!
//! # Layout
//!
//! - Static checks (no process, no socket): the files parse; the generated
//!   manifests (PrometheusRule, ConfigMap) match their sources; the
//!   manifests agree with each other and with the gateway's config.
//! - `promtool`: `check rules`, `check config`, `test rules` (every alert
//!   fires when it should and stays quiet when it should not).
//! - Live: the simulated Feishu and the gateway in-process, a few calls,
//!   then `/metrics`: every metric name in any PromQL of the rules or the
//!   dashboard is exported; `promtool check metrics` passes; the
//!   container's health check script works against the admin port.
//! - End to end: a real Prometheus server scrapes the gateway, loads the
//!   alerting rules, and answers queries for the expected series; every
//!   dashboard query is valid PromQL there.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package
//! (deploy/ci-install.sh). When one is missing the tests that need it are
//! skipped with a note, except under `CI`, where they fail.
//!
//! The PrometheusRule and the ConfigMap are generated from
//! `deploy/prometheus/alerts.yml` and `deploy/kubernetes/config.toml`; after
//! editing those, run `DEPLOY_BLESS=1 cargo test --test deploy` to rewrite
//! the manifests.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use support::config::{App, Subscription};
use support::tools::{run, tool};
use support::*;
use tokio::time::Instant;

// ---------------------------------------------------------------------------
// Metric names allowed in PromQL without being in a live /metrics.

/// Names the rules or the dashboard use that a live `/metrics` does not
/// show yet. Remove each one when its work lands (the live test prints a
/// note once it shows up).
const NOT_YET_EXPORTED: &[&str] = &[];

/// Series Prometheus makes itself for every scrape target.
const FROM_PROMETHEUS: &[&str] = &["up"];

/// The alerts that must exist, by name: token refreshes and expiry,
/// Feishu's throttling, error codes, rate limiting, added latency, an app
/// without a token, connections refused at the limit, the monthly call
/// budget, an event subscriber failing and events dropped, and the
/// gateway being down.
const REQUIRED_ALERTS: &[&str] = &[
    "FeishuGatewayTokenRefreshFailing",
    "FeishuGatewayTokenExpiringSoon",
    "FeishuGatewayUpstreamThrottled",
    "FeishuGatewayErrorCodeRatioHigh",
    "FeishuGatewayRateLimitedSustained",
    "FeishuGatewayAddedLatencyHigh",
    "FeishuGatewayAppWithoutToken",
    "FeishuGatewayConnectionsRejected",
    "FeishuGatewayLongConnectionDown",
    "FeishuGatewayBudgetNearlySpent",
    "FeishuGatewayBudgetExhausted",
    "FeishuGatewayEventSubscriberFailing",
    "FeishuGatewayEventsDropped",
    "FeishuGatewayDown",
];

// ---------------------------------------------------------------------------
// Files.

fn deploy_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn read(rel: &str) -> String {
    let p = deploy_path(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn yaml(rel: &str) -> Yaml {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: bad YAML: {e}"))
}

fn dashboard() -> Json {
    serde_json::from_str(&read("grafana/feishu-gateway.json"))
        .unwrap_or_else(|e| panic!("deploy/grafana/feishu-gateway.json: bad JSON: {e}"))
}

/// `v[k1][k2]...`, panicking with the path when a key is missing.
fn at<'a>(v: &'a Yaml, path: &[&str]) -> &'a Yaml {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        cur = cur
            .get(*k)
            .unwrap_or_else(|| panic!("missing key {}", path[..=i].join(".")));
    }
    cur
}

fn str_at<'a>(v: &'a Yaml, path: &[&str]) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

fn seq(v: &Yaml) -> &Vec<Yaml> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
}

/// Compares a generated file with what is on disk; with `DEPLOY_BLESS`
/// set, writes it instead.
fn check_generated(rel: &str, expected: &str, source: &str) {
    let path = deploy_path(rel);
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    if actual == expected {
        return;
    }
    if std::env::var_os("DEPLOY_BLESS").is_some() {
        std::fs::write(&path, expected).expect("write the generated file");
        eprintln!("note: rewrote deploy/{rel} from {source}");
        return;
    }
    panic!(
        "deploy/{rel} is not generated from {source} (edit {source}, then run \
         `DEPLOY_BLESS=1 cargo test --test deploy`). Expected:\n{expected}"
    );
}

/// Indents every non-empty line by `n` spaces.
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("{pad}{l}\n")
            }
        })
        .collect()
}

/// deploy/kubernetes/prometheusrule.yaml: alerts.yml from `groups:` on,
/// under the PrometheusRule's `spec`.
fn prometheus_rule_text(alerts: &str) -> String {
    let start = alerts
        .find("\ngroups:")
        .map(|i| i + 1)
        .expect("alerts.yml has a top-level `groups:`");
    format!(
        "# GENERATED from deploy/prometheus/alerts.yml by tests/deploy.rs: do not edit.\n\
         # Edit alerts.yml, then run `DEPLOY_BLESS=1 cargo test --test deploy`.\n\
         # Your Prometheus resource's ruleSelector must match these labels\n\
         # (kube-prometheus-stack: add `release: <its release name>`).\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: feishu-gateway\n  labels:\n    app.kubernetes.io/name: feishu-gateway\n\
         spec:\n{}",
        indent(&alerts[start..], 2)
    )
}

/// deploy/kubernetes/configmap.yaml: kubernetes/config.toml as `config.toml`.
fn configmap_text(config: &str) -> String {
    format!(
        "# GENERATED from deploy/kubernetes/config.toml by tests/deploy.rs: do not edit.\n\
         # Edit config.toml, then run `DEPLOY_BLESS=1 cargo test --test deploy`,\n\
         # or keep your own ConfigMap (check it with `feishu-gateway check-config`).\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  name: feishu-gateway-config\n  labels:\n    app.kubernetes.io/name: feishu-gateway\n\
         data:\n  config.toml: |\n{}",
        indent(config, 4)
    )
}

// ---------------------------------------------------------------------------
// PromQL.

/// The metric names in a PromQL expression: identifiers that are not
/// functions, aggregations, keywords, label names (inside `{}` or in a
/// `by (...)`-style list), numbers, durations or Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end",
    ];
    let c: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to just after its closing one, stepping
    // over quoted strings.
    let skip_block = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < c.len() {
            match c[i] {
                '"' | '\'' | '`' => i = skip_string(&c, i),
                x if x == open => {
                    depth += 1;
                    i += 1;
                }
                x if x == close => {
                    depth -= 1;
                    i += 1;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => i += 1,
            }
        }
        i
    };
    let next_non_space = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_string(&c, i);
        } else if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '{' {
            i = skip_block(i, '{', '}');
        } else if ch == '[' {
            i = skip_block(i, '[', ']');
        } else if ch == '$' {
            // Grafana variable: $name or ${name...}.
            i += 1;
            if i < c.len() && c[i] == '{' {
                i = skip_block(i, '{', '}');
            } else {
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
        } else if ch.is_ascii_digit() || ch == '.' {
            // Number or duration (0.99, 5m, 1e3, 1h30m).
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let after = next_non_space(i);
            let paren = after < c.len() && c[after] == '(';
            if LABEL_LISTS.contains(&word.as_str()) {
                if paren {
                    i = skip_block(after, '(', ')');
                }
            } else if AGGREGATIONS.contains(&word.as_str())
                || KEYWORDS.contains(&word.as_str())
                || paren
            {
                // An aggregation, a keyword or a function call.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

fn skip_string(c: &[char], start: usize) -> usize {
    let quote = c[start];
    let mut i = start + 1;
    while i < c.len() {
        if c[i] == '\\' && quote != '`' {
            i += 2;
        } else if c[i] == quote {
            return i + 1;
        } else {
            i += 1;
        }
    }
    i
}

/// Every PromQL expression of a rules document (`groups:`), with where it is.
fn rule_exprs(groups: &Yaml, file: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for g in seq(at(groups, &["groups"])) {
        for r in seq(at(g, &["rules"])) {
            let name = r
                .get("alert")
                .or_else(|| r.get("record"))
                .and_then(Yaml::as_str)
                .unwrap_or("?");
            out.push((format!("{file}: {name}"), str_at(r, &["expr"]).to_string()));
        }
    }
    out
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(d: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("dashboard panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// Every PromQL expression of the dashboard: panel targets, and the metric
/// selector of each `label_values(...)` template variable.
fn dashboard_exprs(d: &Json) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_else(|| {
                panic!("panel {:?}: a target without expr", p["title"].as_str())
            });
            out.push((
                format!("dashboard panel {:?}", p["title"].as_str().unwrap_or("?")),
                expr.to_string(),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating.list") {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .expect("variable query");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map(|(sel, _)| sel.to_string())
            .unwrap_or_else(|| panic!("variable {}: expected label_values(...)", v["name"]));
        out.push((format!("dashboard variable {}", v["name"]), inner));
    }
    out
}

/// All expressions of alerts.yml, the PrometheusRule and the dashboard.
fn all_exprs() -> Vec<(String, String)> {
    let mut out = rule_exprs(&yaml("prometheus/alerts.yml"), "alerts.yml");
    out.extend(rule_exprs(
        at(&yaml("kubernetes/prometheusrule.yaml"), &["spec"]),
        "prometheusrule.yaml",
    ));
    out.extend(dashboard_exprs(&dashboard()));
    out
}

/// Grafana's variables replaced by values Prometheus accepts.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range_s", "3600")
        .replace("$__range", "1h")
        .replace("$app", ".*")
        .replace("$route", ".*")
}

// ---------------------------------------------------------------------------
// Static checks.

#[test]
fn metric_name_lexer_skips_functions_labels_and_variables() {
    let names = metric_names(
        r#"(sum by (app, route, code) (rate(feishu_gateway_requests_total{code!="0", app=~"$app"}[$__rate_interval]))
            * on (code) group_left (description) max by (code, description) (feishu_error_code_info))
           or on (code) vector(0) unless up offset 5m
           - histogram_quantile(0.99, sum by (le) (rate(x_bucket{le="+Inf"}[5m]))) > bool 1e3
           and clamp_min(foo:bar:rate5m - time(), 0) / ${monthly_budget}"#,
    );
    let expected: BTreeSet<String> = [
        "feishu_gateway_requests_total",
        "feishu_error_code_info",
        "up",
        "x_bucket",
        "foo:bar:rate5m",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, expected);
}

#[test]
fn prometheus_rule_is_generated_from_alerts_yml() {
    let alerts = read("prometheus/alerts.yml");
    check_generated(
        "kubernetes/prometheusrule.yaml",
        &prometheus_rule_text(&alerts),
        "deploy/prometheus/alerts.yml",
    );
    // And they mean the same, not just print the same.
    let rule = yaml("kubernetes/prometheusrule.yaml");
    assert_eq!(str_at(&rule, &["kind"]), "PrometheusRule");
    assert_eq!(
        at(&rule, &["spec", "groups"]),
        at(&yaml("prometheus/alerts.yml"), &["groups"])
    );
}

#[test]
fn every_alert_is_documented_and_unit_tested_both_ways() {
    let rules = yaml("prometheus/alerts.yml");
    let mut alerts = Vec::new();
    for g in seq(at(&rules, &["groups"])) {
        for r in seq(at(g, &["rules"])) {
            let Some(name) = r.get("alert").and_then(Yaml::as_str) else {
                continue;
            };
            alerts.push(name.to_string());
            for key in ["summary", "description", "runbook"] {
                let text = str_at(r, &["annotations", key]);
                assert!(!text.trim().is_empty(), "{name}: empty {key}");
            }
            assert!(
                !str_at(r, &["annotations", "runbook"]).contains('\n'),
                "{name}: the runbook is one line"
            );
            let severity = str_at(r, &["labels", "severity"]);
            assert!(
                ["warning", "critical"].contains(&severity),
                "{name}: severity {severity:?}"
            );
        }
    }
    for required in REQUIRED_ALERTS {
        assert!(
            alerts.iter().any(|a| a == required),
            "alerts.yml lacks {required}"
        );
    }
    // runbook.md has a section for every alert, and every anchor a
    // runbook annotation names is one of them.
    let runbook = read("prometheus/runbook.md");
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::to_string)
        .collect();
    for a in &alerts {
        assert!(sections.contains(a), "runbook.md has no section ## {a}");
    }
    for g in seq(at(&rules, &["groups"])) {
        for r in seq(at(g, &["rules"])) {
            let text = r.get("annotations").and_then(|a| a.get("runbook"));
            let Some(text) = text.and_then(Yaml::as_str) else {
                continue;
            };
            if let Some((_, rest)) = text.split_once("runbook.md#") {
                let anchor: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                assert!(
                    sections.iter().any(|s| s.to_lowercase() == anchor),
                    "runbook anchor #{anchor} has no section in runbook.md"
                );
            }
        }
    }

    // alerts.test.yml: for every alert, a case where it fires and one where
    // it must not (exp_alerts: []).
    let tests = yaml("prometheus/alerts.test.yml");
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in seq(at(&tests, &["tests"])) {
        for case in t.get("alert_rule_test").map(seq).into_iter().flatten() {
            let name = str_at(case, &["alertname"]).to_string();
            let expected = case.get("exp_alerts").map(seq).map_or(0, Vec::len);
            if expected > 0 {
                fires.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for a in &alerts {
        assert!(
            fires.contains(a),
            "alerts.test.yml: no case where {a} fires"
        );
        assert!(
            quiet.contains(a),
            "alerts.test.yml: no case where {a} must stay quiet"
        );
    }
}

#[test]
fn dashboard_is_templated_and_has_the_required_panels() {
    let d = dashboard();
    assert_eq!(d["uid"], "feishu-gateway");
    let vars: BTreeMap<&str, &Json> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| (v["name"].as_str().expect("variable name"), v))
        .collect();
    for name in ["app", "route"] {
        let v = vars
            .get(name)
            .unwrap_or_else(|| panic!("no ${name} variable"));
        assert_eq!(v["type"], "query", "${name}");
        assert_eq!(v["multi"], true, "${name} is multi-value");
        assert_eq!(v["includeAll"], true, "${name} has All");
    }
    // The monthly budget comes from the gateway's gauges, not from a
    // dashboard variable.
    assert!(!vars.contains_key("monthly_budget"));

    let all = panels(&d);
    let mut ids = BTreeSet::new();
    for p in &all {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id {}",
            p["id"]
        );
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {} uses the $datasource variable",
                p["title"]
            );
        }
    }
    let titles: Vec<String> = all
        .iter()
        .filter_map(|p| p["title"].as_str().map(str::to_lowercase))
        .collect();
    for needle in [
        "request rate by feishu code",
        "error ratio",
        "quota use against the limits",
        "rate-limited and waiting",
        "latency p50 / p99: total vs feishu",
        "token expiry countdown",
        "token refreshes",
        "in-flight requests",
        "this month against the budget",
        "long connection up per app",
        "long-connection reconnects by reason",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(needle)),
            "no panel titled like {needle:?}"
        );
    }
    // The budget panel is the count against the configured budget.
    let budget = all
        .iter()
        .find(|p| {
            p["title"]
                .as_str()
                .is_some_and(|t| t.contains("this month against the budget"))
        })
        .expect("budget panel");
    let expr = budget["targets"][0]["expr"].as_str().expect("expr");
    assert!(
        expr.contains("feishu_gateway_budget_used") && expr.contains("feishu_gateway_budget_limit"),
        "{expr}"
    );

    // The long connection is up when any replica holds it (with Redis one
    // does, the others wait on the lease).
    let up = all
        .iter()
        .find(|p| {
            p["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("Long connection up"))
        })
        .expect("long connection panel");
    let expr = up["targets"][0]["expr"].as_str().expect("expr");
    assert!(
        expr.starts_with("max by (app) (feishu_gateway_events_connection_up{"),
        "{expr}"
    );

    // Request rate by code carries the description of the code.
    let by_code = all
        .iter()
        .find(|p| p["title"] == "Request rate by Feishu code")
        .expect("request rate panel");
    let target = &by_code["targets"][0];
    assert!(target["expr"]
        .as_str()
        .is_some_and(|e| e.contains("feishu_error_code_info")));
    assert!(target["legendFormat"]
        .as_str()
        .is_some_and(|l| l.contains("{{description}}")));

    // Every panel query about apps follows the $app selection (in-flight
    // and build info have no app label).
    for (where_, expr) in dashboard_exprs(&d) {
        if where_.starts_with("dashboard variable") {
            continue;
        }
        let names = metric_names(&expr);
        let app_less = [
            "feishu_gateway_in_flight_requests",
            "feishu_gateway_build_info",
        ];
        if names.iter().all(|n| app_less.contains(&n.as_str())) {
            continue;
        }
        assert!(expr.contains("app=~\"$app\""), "{where_}: {expr}");
    }
}

#[test]
fn manifests_agree_with_each_other_and_with_the_config() {
    // The ConfigMap carries kubernetes/config.toml.
    let config_text = read("kubernetes/config.toml");
    check_generated(
        "kubernetes/configmap.yaml",
        &configmap_text(&config_text),
        "deploy/kubernetes/config.toml",
    );
    let cm = yaml("kubernetes/configmap.yaml");
    assert_eq!(str_at(&cm, &["data", "config.toml"]), config_text);

    // The config parses with the example Secrets as its environment (the
    // gateway's and Redis'): every variable it names is in one of them.
    let secrets = vec![
        yaml("kubernetes/secret.example.yaml"),
        yaml("kubernetes/redis-secret.example.yaml"),
    ];
    for s in &secrets {
        assert_eq!(str_at(s, &["kind"]), "Secret");
    }
    let mut env = MapEnv::new();
    for secret in &secrets {
        for (k, v) in at(secret, &["stringData"])
            .as_mapping()
            .expect("stringData")
        {
            env.set(
                k.as_str().expect("secret key"),
                v.as_str().expect("secret value"),
            );
        }
    }
    let config = Config::parse(&config_text, &env)
        .unwrap_or_else(|p| panic!("kubernetes/config.toml with the example Secrets: {p}"));
    assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
    // Not loopback: the kubelet's probes and Prometheus come to the pod's
    // IP. Off the service network all the same: see the Service below.
    assert_eq!(config.admin_listen.to_string(), "0.0.0.0:9090");

    let dep = yaml("kubernetes/deployment.yaml");
    let pod = at(&dep, &["spec", "template", "spec"]);
    let pod_labels = at(&dep, &["spec", "template", "metadata", "labels"]);
    let container = &seq(at(pod, &["containers"]))[0];

    // Ports: the config's listeners, by name.
    let mut ports = BTreeMap::new();
    for p in seq(at(container, &["ports"])) {
        ports.insert(
            str_at(p, &["name"]).to_string(),
            at(p, &["containerPort"]).as_u64().expect("containerPort"),
        );
    }
    assert_eq!(ports.get("http"), Some(&u64::from(config.listen.port())));
    assert_eq!(
        ports.get("admin"),
        Some(&u64::from(config.admin_listen.port()))
    );

    // Probes on the admin port.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(str_at(container, &[probe, "httpGet", "path"]), path);
        assert_eq!(str_at(container, &[probe, "httpGet", "port"]), "admin");
    }

    // Termination: preStop sleep, then SIGTERM and the gateway's drain,
    // all inside the grace period.
    let pre_stop: u64 = seq(at(container, &["lifecycle", "preStop", "exec", "command"]))
        .last()
        .and_then(Yaml::as_str)
        .and_then(|s| s.parse().ok())
        .expect("preStop: sleep N");
    let grace = at(pod, &["terminationGracePeriodSeconds"])
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let drain = config.timeouts.shutdown_grace.as_secs();
    assert!(
        grace > pre_stop + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} s + shutdown_grace {drain} s"
    );

    // Non-root, read-only root file system, resources.
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]),
        &Yaml::Bool(true)
    );
    assert_eq!(
        at(container, &["securityContext", "readOnlyRootFilesystem"]),
        &Yaml::Bool(true)
    );
    assert_eq!(
        at(container, &["securityContext", "allowPrivilegeEscalation"]),
        &Yaml::Bool(false)
    );
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            at(container, &["resources", kind, res]);
        }
    }
    let uid = at(pod, &["securityContext", "runAsUser"])
        .as_u64()
        .expect("runAsUser");

    // Secret, ConfigMap and mount.
    assert_eq!(
        str_at(&seq(at(container, &["envFrom"]))[0], &["secretRef", "name"]),
        str_at(&secrets[0], &["metadata", "name"])
    );
    let volume = &seq(at(pod, &["volumes"]))[0];
    assert_eq!(
        str_at(volume, &["configMap", "name"]),
        str_at(&cm, &["metadata", "name"])
    );
    let mount = str_at(&seq(at(container, &["volumeMounts"]))[0], &["mountPath"]);
    let args: Vec<&str> = seq(at(container, &["args"]))
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(
        args,
        ["serve", "--config", &format!("{mount}/config.toml")],
        "the container reads the mounted config"
    );

    // Service, PDB and PodMonitor select the pods.
    let selects = |selector: &Yaml, labels: &Yaml, what: &str| {
        for (k, v) in selector.as_mapping().expect("matchLabels") {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{what}: selector {k:?} does not match"
            );
        }
    };
    let svc = yaml("kubernetes/service.yaml");
    selects(at(&svc, &["spec", "selector"]), pod_labels, "service.yaml");
    let targets: Vec<&str> = seq(at(&svc, &["spec", "ports"]))
        .iter()
        .map(|p| str_at(p, &["targetPort"]))
        .collect();
    // The API only: the admin port stays off the service network, as the
    // config's comment says.
    assert_eq!(targets, ["http"], "service.yaml exposes only the API port");
    let pdb = yaml("kubernetes/pdb.yaml");
    selects(
        at(&pdb, &["spec", "selector", "matchLabels"]),
        pod_labels,
        "pdb.yaml",
    );
    // Prometheus scrapes the pods' admin port directly.
    let pm = yaml("kubernetes/podmonitor.yaml");
    assert_eq!(str_at(&pm, &["kind"]), "PodMonitor");
    selects(
        at(&pm, &["spec", "selector", "matchLabels"]),
        pod_labels,
        "podmonitor.yaml",
    );
    let endpoint = &seq(at(&pm, &["spec", "podMetricsEndpoints"]))[0];
    assert_eq!(str_at(endpoint, &["port"]), "admin");
    assert_eq!(str_at(endpoint, &["path"]), "/metrics");
    // job="feishu-gateway", as FeishuGatewayDown expects.
    let job_label = str_at(&pm, &["spec", "jobLabel"]);
    assert_eq!(
        pod_labels.get(job_label).and_then(Yaml::as_str),
        Some("feishu-gateway")
    );

    // kustomization lists files that exist, and no Secret: applying it must
    // never overwrite a real secret with an example.
    let kust = yaml("kubernetes/kustomization.yaml");
    for r in seq(at(&kust, &["resources"])) {
        let f = r.as_str().expect("resource");
        let text = read(&format!("kubernetes/{f}"));
        for doc in serde_norway::Deserializer::from_str(&text) {
            let doc = <Yaml as serde::Deserialize>::deserialize(doc).expect("a YAML document");
            assert_ne!(
                doc.get("kind").and_then(Yaml::as_str),
                Some("Secret"),
                "kustomization resource {f} holds a Secret"
            );
        }
    }
    // The pods read the Secrets the examples describe.
    let from: Vec<&str> = seq(at(container, &["envFrom"]))
        .iter()
        .map(|e| str_at(e, &["secretRef", "name"]))
        .collect();
    let examples: Vec<&str> = secrets
        .iter()
        .map(|s| str_at(s, &["metadata", "name"]))
        .collect();
    assert_eq!(from, examples);

    // The Dockerfile's user is the pod's.
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains(&format!("USER {uid}:{uid}")),
        "Dockerfile USER {uid}"
    );
}

#[test]
fn dockerfile_builds_locked_and_runs_non_root_with_a_health_check() {
    let d = read("Dockerfile");
    let lines: Vec<&str> = d
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(froms[0].starts_with("FROM rust:1-bookworm AS build"));
    assert_eq!(froms[1], "FROM debian:bookworm-slim");
    assert!(d.contains("cargo build --release --locked"));
    assert!(lines.contains(&"EXPOSE 8080 9090"));
    let user = lines
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert!(
        !user.starts_with("0") && !user.starts_with("root"),
        "USER {user}"
    );
    let hc = d.find("HEALTHCHECK").expect("HEALTHCHECK");
    assert!(d[hc..].contains("feishu-gateway-healthcheck\", \"9090\", \"/healthz\""));
    // Every file copied from deploy/ exists.
    for l in &lines {
        if let Some(rest) = l.strip_prefix("COPY ") {
            for src in rest.split_whitespace().filter(|w| w.starts_with("deploy/")) {
                assert!(
                    Path::new(env!("CARGO_MANIFEST_DIR")).join(src).exists(),
                    "Dockerfile copies {src}, which does not exist"
                );
            }
        }
    }
}

/// The variables each `docker run` example of the Dockerfile's comment
/// sets (`-e NAME=value`, as written), and the config file it mounts
/// (`None`: the image's own), in order.
fn docker_run_examples(dockerfile: &str) -> Vec<(Vec<String>, Option<String>)> {
    let mut examples = Vec::new();
    let mut current: Option<(Vec<String>, Option<String>)> = None;
    for line in dockerfile.lines() {
        let Some(text) = line.strip_prefix('#') else {
            continue;
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.starts_with(&["docker", "run"]) {
            current = Some((Vec::new(), None));
        }
        let Some((vars, mount)) = current.as_mut() else {
            continue;
        };
        for pair in words.windows(2) {
            match pair {
                ["-e", var] => vars.push(var.to_string()),
                ["-v", spec] => {
                    let spec = spec.trim_matches('"');
                    let host = spec.split(':').next().unwrap_or("");
                    *mount = Some(host.trim_start_matches("$PWD/").to_string());
                }
                _ => {}
            }
        }
        if !text.trim_end().ends_with('\\') {
            examples.extend(current.take());
        }
    }
    examples
}

#[test]
fn the_images_default_config_runs_without_redis_and_the_redis_variant_is_shown() {
    let d = read("Dockerfile");
    assert!(
        d.contains("COPY --chmod=0644 deploy/config.example.toml /etc/feishu-gateway/config.toml"),
        "the image carries deploy/config.example.toml"
    );
    let examples = docker_run_examples(&d);
    assert_eq!(examples.len(), 2, "two docker run examples: {examples:?}");
    // The example's value where it gives a real one (a URL), else a
    // distinct one per variable: two clients may not share a key.
    let env_of = |vars: &[String]| {
        let mut env = MapEnv::new();
        for v in vars {
            let (name, value) = v.split_once('=').unwrap_or((v, ""));
            if value.contains("://") {
                env.set(name, value);
            } else {
                env.set(name, format!("example-value-of-{name}-0123456789"));
            }
        }
        env
    };

    // The first, with the image's own config: exactly the variables it
    // needs, no Redis.
    let (vars, mount) = &examples[0];
    assert_eq!(mount, &None);
    assert!(!vars.iter().any(|v| v.contains("REDIS")), "{vars:?}");
    assert_eq!(vars.len(), 3, "{vars:?}");
    let text = read("config.example.toml");
    let config = Config::parse(&text, &env_of(vars))
        .unwrap_or_else(|p| panic!("config.example.toml with {vars:?}: {p}"));
    assert_eq!(format!("{:?}", config.quota.backend), "Local");
    // The admin listener on loopback, where the HEALTHCHECK looks.
    assert_eq!(config.admin_listen.to_string(), "127.0.0.1:9090");
    assert!(d.contains(&format!(
        "feishu-gateway-healthcheck\", \"{}\"",
        config.admin_listen.port()
    )));
    for v in vars {
        let fewer: Vec<String> = vars.iter().filter(|x| *x != v).cloned().collect();
        assert!(
            Config::parse(&text, &env_of(&fewer)).is_err(),
            "{v} is not needed by config.example.toml"
        );
    }

    // The second mounts the Redis variant, with REDIS_URL.
    let (vars, mount) = &examples[1];
    assert_eq!(mount.as_deref(), Some("deploy/kubernetes/config.toml"));
    assert!(vars.iter().any(|v| v.starts_with("REDIS_URL=")), "{vars:?}");
    let config = Config::parse(&read("kubernetes/config.toml"), &env_of(vars))
        .unwrap_or_else(|p| panic!("kubernetes/config.toml with {vars:?}: {p}"));
    assert_eq!(format!("{:?}", config.quota.backend), "Redis");
}

// ---------------------------------------------------------------------------
// promtool and prometheus.

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let dir = deploy_path("prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["check", "config", "prometheus.yml"],
        &["test", "rules", "alerts.test.yml"],
    ] {
        let (ok, out) = run(Command::new(&promtool).args(args).current_dir(&dir), None);
        assert!(ok, "promtool {}:\n{out}", args.join(" "));
    }
}

// ---------------------------------------------------------------------------
// The gateway and the simulated Feishu, in-process.

/// The simulated Feishu and a gateway in front of it with two apps: `ops-bot`
/// (valid credentials) and `broken-bot` (a secret the fake rejects, so it
/// never gets a token and the gateway is not ready; with a monthly budget,
/// so its limit is exported).
async fn start_stack() -> Harness {
    start_with(sim_config(), |c| {
        c.token_retry(Duration::from_millis(100), Duration::from_millis(500))
            .app(
                App::self_built("broken-bot", "cli_deploy_broken", "BROKEN_BOT_APP_SECRET")
                    .monthly_budget(10000)
                    .events("long_connection"),
            )
            .env("BROKEN_BOT_APP_SECRET", "not-the-secret")
            // A subscription (never sent anything: no event arrives), so
            // that the events' families are exported.
            .subscription(Subscription::new(
                "deploy-hooks",
                "broken-bot",
                &["im.message.receive_v1", "card.action.trigger"],
                "http://127.0.0.1:9/hook",
                "DEPLOY_HOOKS_SECRET",
            ))
            .env("DEPLOY_HOOKS_SECRET", "deploy-hooks-secret-0123456789")
    })
    .await
}

/// Sends one request, with the client key or without; returns the status
/// and the JSON body (Null if none).
async fn send(
    h: &Harness,
    method: Method,
    path: &str,
    key: bool,
    body: &str,
) -> (StatusCode, Json) {
    let auth = format!("Bearer {CLIENT_KEY}");
    let mut headers = vec![("content-type", "application/json")];
    if key {
        headers.push(("authorization", auth.as_str()));
    }
    let a = h.call(method, path, &headers, body).await;
    (
        a.status,
        serde_json::from_slice(&a.body).unwrap_or(Json::Null),
    )
}

/// The scripted mix of calls: success, Feishu's 232011, no client key,
/// delete, a path outside the catalog, a replay after Feishu forgot its
/// tokens, a dropped connection, and Feishu's own throttling.
async fn make_calls(h: &Harness) {
    let put = |chat: &str| format!("/open-apis/im/v1/chats/{chat}/top_notice/put_top_notice");
    let body = r#"{"chat_top_notice":[{"action_type":"2"}]}"#;

    let (status, json) = send(h, Method::POST, &put("oc_123"), true, body).await;
    assert_eq!(
        (status, &json["code"]),
        (StatusCode::OK, &Json::from(0)),
        "{json}"
    );
    let (status, json) = send(h, Method::POST, &put("oc_error232011"), true, body).await;
    assert_eq!(json["code"], 232011, "{status} {json}");
    let (status, json) = send(h, Method::POST, &put("oc_123"), false, body).await;
    assert_eq!(
        (status, &json["code"]),
        (StatusCode::UNAUTHORIZED, &Json::from(99991661))
    );
    let delete = "/open-apis/im/v1/chats/oc_123/top_notice/delete_top_notice";
    let (status, _) = send(h, Method::POST, delete, true, "").await;
    assert_eq!(status, StatusCode::OK);
    let _ = send(h, Method::GET, "/open-apis/not/in/the/catalog", true, "").await;
    // A 1/1s endpoint: a call, one over the limit (rejected), one that waits
    // its turn: the quota's series appear with their first event.
    let seats = "/open-apis/apaas/v1/seat_assignments";
    let auth = format!("Bearer {CLIENT_KEY}");
    for wait in ["0", "0", "3000"] {
        let _ = h
            .call(
                Method::GET,
                seats,
                &[("authorization", &auth), ("x-gateway-max-wait", wait)],
                "",
            )
            .await;
    }
    // Feishu forgets its tokens: the gateway replays once with a new one.
    h.sim.invalidate_all_tokens();
    let (status, json) = send(h, Method::POST, &put("oc_123"), true, body).await;
    assert_eq!(
        (status, &json["code"]),
        (StatusCode::OK, &Json::from(0)),
        "{json}"
    );
    // A connection dropped by Feishu: an upstream error. The fake drops
    // the next request of any kind, and broken-bot's token retries may
    // take it first, so try a few times.
    let mut dropped = false;
    for _ in 0..10 {
        h.sim.drop_next_connections(1);
        let (status, _) = send(h, Method::POST, &put("oc_123"), true, body).await;
        if status.is_server_error() {
            dropped = true;
            break;
        }
    }
    h.sim.drop_next_connections(0);
    assert!(dropped, "no request of ours met a dropped connection");
    // Feishu itself throttles one request (last, so that whatever the
    // gateway does about it cannot affect the calls above).
    h.sim
        .answer_next_with_code(99991400, StatusCode::TOO_MANY_REQUESTS, 1);
    let (status, json) = send(h, Method::POST, &put("oc_123"), true, body).await;
    assert_eq!(json["code"], 99991400, "{status} {json}");
}

/// Metric family names in a text exposition, with their types.
fn exported_families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// Whether `name` as written in PromQL is a series of an exported family
/// (histograms add `_bucket`, `_sum`, `_count`).
fn is_exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    if families.contains_key(name) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix).is_some_and(|base| {
            families
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
        })
    })
}

/// A name allowed in PromQL although not in the live scrape.
fn allowed_unexported(name: &str) -> bool {
    FROM_PROMETHEUS.contains(&name)
        || NOT_YET_EXPORTED.iter().any(|n| {
            name == *n
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(n))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_rules_and_dashboard_is_exported() {
    let stack = start_stack().await;
    make_calls(&stack).await;
    let exposition = stack.metrics().await;
    let families = exported_families(&exposition);

    // The calls are there, labelled by app, route and code.
    for series in [
        format!(
            r#"feishu_gateway_requests_total{{app="ops-bot",code="0",route="{PUT_ROUTE}",status="200"}} "#
        ),
        format!(
            r#"feishu_gateway_requests_total{{app="ops-bot",code="232011",route="{PUT_ROUTE}",status="400"}} "#
        ),
        format!(
            r#"feishu_gateway_requests_total{{app="unknown",code="99991661",route="{PUT_ROUTE}",status="401"}} "#
        ),
    ] {
        assert!(
            exposition.contains(&series),
            "missing {series} in\n{exposition}"
        );
    }

    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for (where_, expr) in all_exprs() {
        for name in metric_names(&expr) {
            used.insert(name.clone());
            if !is_exported(&name, &families) && !allowed_unexported(&name) {
                missing.push(format!("{where_}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "PromQL uses metrics the gateway does not export:\n{}",
        missing.join("\n")
    );
    // The catch-all: any feishu_* word anywhere in the files (annotation
    // templates included) is a known name.
    for file in [
        "prometheus/alerts.yml",
        "kubernetes/prometheusrule.yaml",
        "grafana/feishu-gateway.json",
    ] {
        let text = read(file);
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if word.starts_with("feishu_") {
                assert!(
                    is_exported(word, &families) || allowed_unexported(word),
                    "deploy/{file}: {word} is not exported"
                );
            }
        }
    }
    assert!(used.contains("feishu_gateway_requests_total"), "{used:?}");
    for n in NOT_YET_EXPORTED {
        if families.contains_key(*n) {
            eprintln!(
                "note: {n} is exported now: remove it from NOT_YET_EXPORTED in tests/deploy.rs"
            );
        }
    }

    // promtool's linter accepts the real scrape.
    if tool("promtool").is_some() {
        let input = exposition.clone();
        let (ok, out) = tokio::task::spawn_blocking(move || tools::promtool_check_metrics(&input))
            .await
            .expect("promtool")
            .expect("promtool is on PATH");
        assert!(ok, "promtool check metrics:\n{out}");
    }

    // The image's health check script against the live admin port:
    // /healthz passes; /readyz too (the pod is ready although broken-bot
    // has no token); a path that is not 200 fails, and so does a closed
    // port.
    let script = deploy_path("healthcheck.sh");
    let admin_port = stack.gw.admin_addr().port().to_string();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port().to_string()
    };
    let results = tokio::task::spawn_blocking(move || {
        [
            (admin_port.clone(), "/healthz"),
            (admin_port.clone(), "/readyz"),
            (admin_port, "/no-such-path"),
            (closed_port, "/healthz"),
        ]
        .map(|(port, path)| run(Command::new("bash").arg(&script).args([&port, path]), None))
    })
    .await
    .expect("healthcheck");
    assert!(results[0].0, "healthcheck /healthz: {}", results[0].1);
    assert!(results[1].0, "healthcheck /readyz: {}", results[1].1);
    assert!(!results[2].0, "healthcheck of a 404 must fail");
    assert!(results[2].1.contains("404"), "{}", results[2].1);
    assert!(!results[3].0, "healthcheck on a closed port must fail");

    stack.stop().await;
}

// ---------------------------------------------------------------------------
// End to end with a real Prometheus server.

/// A child process, killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `prometheus` (killed on drop) and its temporary directory.
struct Prometheus {
    _child: Killed,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts Prometheus with deploy/prometheus/prometheus.yml, pointed at
    /// `target`, scraping and evaluating every second, on a free port.
    async fn start(binary: &Path, target: SocketAddr, http: &HttpClient) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = yaml("prometheus/prometheus.yml");
        config["global"]["scrape_interval"] = Yaml::from("1s");
        config["global"]["evaluation_interval"] = Yaml::from("1s");
        config["rule_files"] = Yaml::Sequence(vec![Yaml::from(
            deploy_path("prometheus/alerts.yml").display().to_string(),
        )]);
        let job = &mut config["scrape_configs"][0];
        assert_eq!(job["job_name"].as_str(), Some("feishu-gateway"));
        job["scrape_timeout"] = Yaml::from("1s");
        job["static_configs"][0]["targets"] = Yaml::Sequence(vec![Yaml::from(target.to_string())]);
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(
            &config_path,
            serde_norway::to_string(&config).expect("yaml"),
        )
        .expect("write config");
        let log = dir.path().join("prometheus.log");
        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

        // A free port: bind, note, release. Another process could take it
        // in between; then Prometheus exits and we try another.
        for _attempt in 0..3 {
            let addr = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                l.local_addr().expect("addr")
            };
            let log_file = std::fs::File::create(&log).expect("log file");
            let mut child = Killed(
                Command::new(binary)
                    .arg(format!("--config.file={}", config_path.display()))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        dir.path().join("data").display()
                    ))
                    .arg(format!("--web.listen-address={addr}"))
                    .arg("--log.level=warn")
                    .stdin(Stdio::null())
                    .stdout(log_file.try_clone().expect("log"))
                    .stderr(log_file)
                    .spawn()
                    .expect("start prometheus"),
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.0.try_wait() {
                    eprintln!("prometheus exited ({status}), retrying:\n{}", read_log());
                    break;
                }
                let ready = tokio::time::timeout(
                    Duration::from_secs(2),
                    try_call(http, addr, Method::GET, "/-/ready", &[], ""),
                )
                .await;
                if matches!(ready, Ok(Ok(ref a)) if a.status == StatusCode::OK) {
                    return Prometheus {
                        _child: child,
                        addr,
                        log,
                        _dir: dir,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "prometheus not ready within 30 s:\n{}",
                    read_log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        panic!("prometheus did not start in 3 attempts");
    }

    /// `/api/v1/query`: the `data.result` list, or the error.
    async fn query(&self, http: &HttpClient, promql: &str) -> Result<Vec<Json>, String> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let answer = get(http, self.addr, &path).await;
        let (status, body) = (answer.status, answer.text());
        let json: Json =
            serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if json["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Polls a query until `done` holds for its result (at most 30 s).
    async fn wait_for(
        &self,
        http: &HttpClient,
        promql: &str,
        what: &str,
        done: impl Fn(&[Json]) -> bool,
    ) -> Vec<Json> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let result = self
                .query(http, promql)
                .await
                .unwrap_or_else(|e| panic!("{promql}: {e}"));
            if done(&result) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within 30 s; last result of {promql}: {result:?}\nprometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn label<'a>(series: &'a Json, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or("")
}

/// The expression of alert `name` in alerts.yml.
fn alert_expr(name: &str) -> String {
    rule_exprs(&yaml("prometheus/alerts.yml"), "alerts.yml")
        .into_iter()
        .find(|(w, _)| w.ends_with(&format!(": {name}")))
        .map(|(_, e)| e)
        .unwrap_or_else(|| panic!("no alert {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_gateway_and_loads_the_rules() {
    let Some(binary) = tool("prometheus") else {
        return;
    };
    let stack = start_stack().await;
    make_calls(&stack).await;
    let http = stack.client.clone();
    let prom = Prometheus::start(&binary, stack.gw.admin_addr(), &http).await;

    // The expected series, with the job name of prometheus.yml.
    let result = prom
        .wait_for(
            &http,
            "feishu_gateway_requests_total",
            "the first scrape",
            |r| r.iter().any(|s| label(s, "code") == "232011"),
        )
        .await;
    let seen: BTreeSet<(String, String, String)> = result
        .iter()
        .map(|s| {
            assert_eq!(label(s, "job"), "feishu-gateway");
            (
                label(s, "app").to_string(),
                label(s, "route").to_string(),
                label(s, "code").to_string(),
            )
        })
        .collect();
    for (app, route, code) in [
        ("ops-bot", PUT_ROUTE, "0"),
        ("ops-bot", PUT_ROUTE, "232011"),
        ("unknown", PUT_ROUTE, "99991661"),
        (
            "ops-bot",
            "/open-apis/im/v1/chats/:chat_id/top_notice/delete_top_notice",
            "0",
        ),
    ] {
        assert!(
            seen.contains(&(app.to_string(), route.to_string(), code.to_string())),
            "no series app={app} route={route} code={code} in {seen:?}"
        );
    }
    let up = prom
        .query(&http, r#"up{job="feishu-gateway"}"#)
        .await
        .expect("up");
    assert_eq!(up.len(), 1);
    assert_eq!(up[0]["value"][1], "1");

    // Every alerting rule loaded and evaluated without error.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = get(&http, prom.addr, "/api/v1/rules").await.text();
        let json: Json = serde_json::from_str(&body).expect("rules JSON");
        let rules: Vec<&Json> = json["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
        for a in REQUIRED_ALERTS {
            assert!(names.contains(a), "prometheus did not load {a}: {names:?}");
        }
        for r in &rules {
            assert!(
                r["lastError"].as_str().unwrap_or("").is_empty(),
                "rule {} failed: {}",
                r["name"],
                r["lastError"]
            );
        }
        if rules.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules not evaluated within 30 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // "Without a token" as the rules derive it agrees with /readyz:
    // broken-bot has no token, ops-bot has one; the pod is ready.
    let readyz = stack.admin("/readyz").await;
    assert_eq!(readyz.status, StatusCode::OK, "{}", readyz.text());
    let readyz = readyz.json();
    let not_ready: BTreeSet<String> = readyz["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .filter(|a| a["has_token"] == false)
        .map(|a| a["app"].as_str().expect("app").to_string())
        .collect();
    assert_eq!(not_ready, BTreeSet::from(["broken-bot".to_string()]));
    let derived = prom
        .query(&http, &alert_expr("FeishuGatewayAppWithoutToken"))
        .await
        .expect("AppWithoutToken expr");
    let derived: BTreeSet<String> = derived
        .iter()
        .map(|s| label(s, "app").to_string())
        .collect();
    assert_eq!(
        derived, not_ready,
        "FeishuGatewayAppWithoutToken's expression vs /readyz"
    );
    // broken-bot's failing token fetches show in the refresh alert's
    // expression, ops-bot's do not.
    prom.wait_for(
        &http,
        &alert_expr("FeishuGatewayTokenRefreshFailing"),
        "broken-bot's failing refreshes",
        |r| {
            r.iter().any(|s| label(s, "app") == "broken-bot")
                && r.iter().all(|s| label(s, "app") != "ops-bot")
        },
    )
    .await;

    // Every dashboard query is valid PromQL for this Prometheus.
    for (where_, expr) in dashboard_exprs(&dashboard()) {
        let promql = grafana_to_promql(&expr);
        if let Err(e) = prom.query(&http, &promql).await {
            panic!("{where_}: {promql}\n{e}");
        }
    }
    // The code descriptions join: 232011 has its description.
    let joined = prom
        .query(
            &http,
            r#"sum by (code) (feishu_gateway_requests_total) * on (code) group_left (description) max by (code, description) (feishu_error_code_info)"#,
        )
        .await
        .expect("join");
    assert!(
        joined.iter().any(|s| label(s, "code") == "232011"
            && label(s, "description") == "operator not in the chat"),
        "{joined:?}"
    );

    drop(prom);
    stack.stop().await;
}
