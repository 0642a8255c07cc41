use super::*;

const CONTACT: &str = "/open-apis/contact/v3/users/ou_1";
const MESSAGES: &str = "/open-apis/im/v1/messages";

fn metrics() -> Metrics {
    let apps = ["solo", "acme-a", "acme-b", "store-app", "no-limit"].map(String::from);
    Metrics::new(prometheus::Registry::new(), &apps, &[]).expect("metrics")
}

/// Apps 0 `solo` (limit 3), 1 and 2 in group `acme` (limit 2), 3 a store
/// app (no group), 4 `no-limit` (counted, no limit).
fn config() -> BudgetConfig {
    BudgetConfig {
        groups: vec![
            BudgetGroup {
                name: "solo".into(),
                limit: Some(3),
                apps: vec![0],
            },
            BudgetGroup {
                name: "acme".into(),
                limit: Some(2),
                apps: vec![1, 2],
            },
            BudgetGroup {
                name: "no-limit".into(),
                limit: None,
                apps: vec![4],
            },
        ],
    }
}

fn budgets(m: &Metrics, store: Store) -> Arc<Budgets> {
    Arc::new(Budgets::new(&config(), 5, m, store))
}

/// One answered call of `app` to `path`.
fn call(b: &Arc<Budgets>, app: usize, path: &str, status: u16, code: Option<i64>) {
    b.answered(app, b.is_exempt(path), status, code);
}

fn gauge(m: &Metrics, family: &str, app: &str) -> Option<f64> {
    let text = String::from_utf8(m.render()).expect("utf-8");
    let series = format!("{family}{{app=\"{app}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map(|v| v.trim().parse().expect("a number"))
}

#[test]
fn successful_counted_calls_count_and_the_limit_stops_them() {
    let m = metrics();
    let b = budgets(&m, Store::Memory);
    assert_eq!(gauge(&m, "feishu_gateway_budget_used", "solo"), Some(0.0));
    assert_eq!(gauge(&m, "feishu_gateway_budget_limit", "solo"), Some(3.0));
    // Not counted: exempt paths, failures (4xx/5xx, or a non-zero code).
    call(&b, 0, CONTACT, 200, Some(0));
    call(&b, 0, MESSAGES, 400, Some(230001));
    call(&b, 0, MESSAGES, 200, Some(1254290));
    call(&b, 0, MESSAGES, 503, None);
    assert_eq!(b.used("solo").map(|u| u.1), Some(0));
    // Counted: 2xx with code 0, or without a JSON code (a download).
    call(&b, 0, MESSAGES, 200, Some(0));
    call(&b, 0, "/open-apis/im/v1/images/img_1", 200, None);
    assert!(b.check(0, false).is_ok());
    call(&b, 0, MESSAGES, 204, Some(0));
    let (month, used, spent) = b.used("solo").expect("group");
    assert_eq!((month, used, spent), (Month::now(), 3, true));
    assert_eq!(gauge(&m, "feishu_gateway_budget_used", "solo"), Some(3.0));
    assert_eq!(
        gauge(&m, "feishu_gateway_budget_exhausted", "solo"),
        Some(1.0)
    );

    let refused = b.check(0, false).expect_err("spent");
    assert_eq!(refused.cause, Cause::Counted { used: 3, limit: 3 });
    assert_eq!(refused.group, "solo");
    assert_eq!(refused.resumes, Month::now().next());
    let left = (Month::now().end_unix() - unix_now()) as u64;
    assert!(refused.retry_after_secs.abs_diff(left) <= 2, "{refused:?}");
    let msg = refused.msg();
    assert!(
        msg.starts_with("This month's API call quota has been exceeded"),
        "{msg}"
    );
    assert!(msg.contains(&format!("{}-01 00:00 Asia/Shanghai", Month::now().next())));
    // Exempt calls still go; other groups are not affected.
    assert!(b.check(0, true).is_ok());
    assert!(b.check(1, false).is_ok());
}

#[test]
fn the_apps_of_a_budget_group_share_one_count() {
    let m = metrics();
    let b = budgets(&m, Store::Memory);
    call(&b, 1, MESSAGES, 200, Some(0));
    assert!(b.check(2, false).is_ok());
    call(&b, 2, MESSAGES, 200, Some(0));
    for app in [1, 2] {
        let e = b
            .check(app, false)
            .expect_err("the group's budget is spent");
        assert_eq!(e.group, "acme");
    }
    for app in ["acme-a", "acme-b"] {
        assert_eq!(gauge(&m, "feishu_gateway_budget_used", app), Some(2.0));
        assert_eq!(gauge(&m, "feishu_gateway_budget_limit", app), Some(2.0));
    }
}

#[test]
fn feishus_99991403_stops_counted_calls_until_the_month_turns() {
    let m = metrics();
    let b = budgets(&m, Store::Memory);
    // Whatever the HTTP status, and for an app without a limit too.
    call(&b, 4, MESSAGES, 429, Some(codes::MONTHLY_QUOTA_EXCEEDED));
    let e = b.check(4, false).expect_err("Feishu said so");
    assert_eq!(e.cause, Cause::Feishu);
    assert!(e.msg().contains("Feishu answered 99991403"), "{}", e.msg());
    assert!(b.check(4, true).is_ok(), "exempt calls still go");
    assert_eq!(
        gauge(&m, "feishu_gateway_budget_exhausted", "no-limit"),
        Some(1.0)
    );
    assert_eq!(gauge(&m, "feishu_gateway_budget_limit", "no-limit"), None);
    // The 99991403 itself is not a counted call.
    assert_eq!(b.used("no-limit").map(|u| u.1), Some(0));
    // Another group goes on.
    assert!(b.check(0, false).is_ok());
}

#[test]
fn store_apps_have_no_budget() {
    let m = metrics();
    let b = budgets(&m, Store::Memory);
    call(&b, 3, MESSAGES, 429, Some(codes::MONTHLY_QUOTA_EXCEEDED));
    call(&b, 3, MESSAGES, 200, Some(0));
    assert!(b.check(3, false).is_ok());
    assert_eq!(gauge(&m, "feishu_gateway_budget_used", "store-app"), None);
    // An index past the apps is no group either.
    assert!(b.check(99, false).is_ok());
}

#[test]
fn a_new_month_starts_a_new_count() {
    let m = metrics();
    let b = budgets(&m, Store::Memory);
    let group = &b.groups[0];
    let this = Month::now();
    for _ in 0..3 {
        count_one(group, unix_now());
    }
    feishu_said_spent(group, unix_now());
    let last_second = this.end_unix() - 1;
    let e = check_at(group, last_second).expect_err("spent");
    assert_eq!(e.retry_after_secs, 1);
    assert_eq!(e.resumes, this.next());
    // The first second of the next month in Asia/Shanghai: a fresh count.
    assert!(check_at(group, this.end_unix()).is_ok());
    assert_eq!(group.lock().month, this.next());
    assert_eq!(group.lock().used, 0);
    assert!(group.lock().dirty, "a new month is saved");
    assert_eq!(gauge(&m, "feishu_gateway_budget_used", "solo"), Some(0.0));
    assert_eq!(
        gauge(&m, "feishu_gateway_budget_exhausted", "solo"),
        Some(0.0)
    );
    // The clock going back does not bring the old month back.
    assert!(check_at(group, last_second).is_ok());
    assert_eq!(group.lock().month, this.next());
}

#[tokio::test]
async fn state_dir_keeps_the_months_count_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let m = metrics();
    let b = budgets(&m, Store::Dir(state.clone()));
    call(&b, 0, MESSAGES, 200, Some(0));
    call(&b, 0, MESSAGES, 200, Some(0));
    call(&b, 4, MESSAGES, 429, Some(codes::MONTHLY_QUOTA_EXCEEDED));
    b.sync().await;
    let raw = std::fs::read_to_string(state.join("budget.solo.json")).expect("saved");
    let json: serde_json::Value = serde_json::from_str(&raw).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"group": "solo", "month": Month::now().to_string(), "used": 2})
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(state.join("budget.solo.json"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Nothing changed: nothing written (the file's time stays).
    let before = std::fs::metadata(state.join("budget.solo.json"))
        .expect("meta")
        .modified()
        .expect("mtime");
    std::thread::sleep(Duration::from_millis(20));
    b.sync().await;
    let after = std::fs::metadata(state.join("budget.solo.json"))
        .expect("meta")
        .modified()
        .expect("mtime");
    assert_eq!(before, after);

    // A restart: the counts come back.
    let m2 = metrics();
    let b2 = budgets(&m2, Store::Dir(state.clone()));
    b2.load().await;
    assert_eq!(b2.used("solo").map(|u| u.1), Some(2));
    // Feishu's 99991403 is not kept: the next counted call asks Feishu.
    assert!(b2.check(4, false).is_ok());
    assert_eq!(gauge(&m2, "feishu_gateway_budget_used", "solo"), Some(2.0));

    // Another month's file, or one that is not a budget document, is not
    // taken.
    let other = serde_json::json!({"group": "acme", "month": "2001-01", "used": 9});
    std::fs::write(state.join("budget.acme.json"), other.to_string()).expect("write");
    std::fs::write(state.join("budget.no-limit.json"), "{\"used\":").expect("write");
    let b3 = budgets(&metrics(), Store::Dir(state.clone()));
    b3.load().await;
    assert_eq!(b3.used("acme").map(|u| (u.1, u.2)), Some((0, false)));
    assert_eq!(b3.used("no-limit").map(|u| (u.1, u.2)), Some((0, false)));
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(&state)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn the_redis_key_names_the_group_and_the_shanghai_month() {
    let m = Month::containing(1_796_054_400); // 2026-11-30T16:00:00Z
    assert_eq!(
        Store::redis_key("feishu-gateway:", "acme", m),
        "feishu-gateway:budget:{acme}:2026-12"
    );
}
