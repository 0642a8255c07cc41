//! The whole catalog through real sockets: generic answers, documented and
//! hidden windows, per-resource limits, throttle answers and the monthly
//! budget.

use std::sync::Arc;

use super::*;

const SEC: Duration = Duration::from_secs(1);
const SUCCESS: &str = r#"{"code":0,"msg":"success","data":{}}"#;

/// A business call with a bearer token; `path` may carry a query.
async fn call(
    c: &HttpClient,
    sim: &SimFeishu,
    method: Method,
    path: &str,
    token: &str,
    body: &str,
) -> Reply {
    let url = format!("{}{path}", sim.base_url());
    let auth = format!("Bearer {token}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json; charset=utf-8"),
    ];
    send(c, method, url, &headers, body).await
}

/// `POST /open-apis/im/v1/messages?receive_id_type=<kind>` to `id`.
async fn send_message(c: &HttpClient, sim: &SimFeishu, token: &str, kind: &str, id: &str) -> Reply {
    let body = serde_json::json!({
        "receive_id": id,
        "msg_type": "text",
        "content": "{\"text\":\"hi\"}",
    })
    .to_string();
    let path = format!("/open-apis/im/v1/messages?receive_id_type={kind}");
    call(c, sim, Method::POST, &path, token, &body).await
}

fn codes(replies: &[Reply]) -> Vec<i64> {
    replies.iter().map(Reply::code).collect()
}

/// `template` with every parameter filled in with `x1`.
fn filled(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with(':') { "x1" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(start_paused = true)]
async fn every_catalog_endpoint_answers_success() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;
    let mut sent = 0;
    for ep in crate::catalog::endpoints() {
        // The token endpoints answer tokens, not business answers.
        if ep.template.starts_with("/open-apis/auth/v3/") {
            continue;
        }
        let body = if ep.name() == "put_top_notice" {
            PIN_ANNOUNCEMENT
        } else {
            ""
        };
        let reply = call(
            &c,
            &sim,
            ep.method.clone(),
            &filled(ep.template),
            &token,
            body,
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", ep.name());
        if ep.name() == "get_chat" {
            assert_eq!(reply.json["data"]["chat_id"], "x1");
        } else {
            let want: Value = serde_json::from_str(SUCCESS).expect("JSON");
            assert_eq!(reply.json, want, "{}", ep.name());
        }
        assert!(reply.header("x-tt-logid").is_some());
        sent += 1;
        // Endpoints can share a resource key (the docx edits of document
        // `x1`): one call a second stays under every limit.
        tokio::time::advance(SEC).await;
    }
    assert!(sent > 1500, "{sent}");
    assert_eq!(sim.violations(), 0);
    let arrivals = sim.arrivals_by_endpoint();
    assert_eq!(arrivals.len(), sent);
    assert!(arrivals.iter().all(|&(_, n)| n == 1));
    // Each request is recorded with its endpoint.
    let records = sim.requests();
    assert_eq!(records.len(), sent);
    assert!(records
        .iter()
        .all(|r| r.endpoint.is_some() && r.template.is_some()));
}

#[tokio::test]
async fn static_segments_win_and_records_name_the_endpoint() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;
    let search = call(
        &c,
        &sim,
        Method::GET,
        "/open-apis/im/v1/chats/search?query=x",
        &token,
        "",
    )
    .await;
    assert_eq!(
        search.json,
        serde_json::from_str::<Value>(SUCCESS).expect("JSON")
    );
    let chat = call(
        &c,
        &sim,
        Method::GET,
        "/open-apis/im/v1/chats/oc_7",
        &token,
        "",
    )
    .await;
    assert_eq!(chat.json["data"]["chat_id"], "oc_7");
    // Wrong method, trailing slash, unknown path: 404 as before.
    for (method, path) in [
        (Method::DELETE, "/open-apis/im/v1/chats"),
        (Method::GET, "/open-apis/im/v1/chats/"),
        (Method::GET, "/open-apis/nope"),
    ] {
        let reply = call(&c, &sim, method, path, &token, "").await;
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::NOT_FOUND, 404),
            "{path}"
        );
    }
    let records = sim.requests();
    assert_eq!(
        records[0].endpoint,
        Some("GET /open-apis/im/v1/chats/search")
    );
    assert_eq!(records[0].template, Some("/open-apis/im/v1/chats/search"));
    assert_eq!(records[1].endpoint, Some("get_chat"));
    assert_eq!(records[1].template, Some("/open-apis/im/v1/chats/:chat_id"));
    assert!(records[2..]
        .iter()
        .all(|r| r.endpoint.is_none() && r.template.is_none()));
    assert_eq!(sim.arrivals("GET /open-apis/im/v1/chats/search"), 1);
    assert_eq!(sim.arrivals("/open-apis/im/v1/chats/search"), 1);
    assert_eq!(sim.arrivals("get_chat"), 1);
    // Magic chat ids work at any endpoint with a `:chat_id`.
    let members = call(
        &c,
        &sim,
        Method::GET,
        "/open-apis/im/v1/chats/oc_error232011/members",
        &token,
        "",
    )
    .await;
    assert_eq!(
        (members.status, members.code()),
        (StatusCode::BAD_REQUEST, 232011)
    );
}

#[tokio::test(start_paused = true)]
async fn documented_windows_hold_per_endpoint() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;
    let ten_a_minute = "GET /open-apis/contact/v3/job_titles";
    let one_a_second = "GET /open-apis/apaas/v1/seat_assignments";
    assert_eq!(sim.windows(ten_a_minute), [(10, 60 * SEC)]);

    let mut replies = Vec::new();
    for _ in 0..11 {
        replies.push(
            call(
                &c,
                &sim,
                Method::GET,
                "/open-apis/contact/v3/job_titles",
                &token,
                "",
            )
            .await,
        );
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert_eq!(codes(&replies[..10]), [0; 10]);
    let over = &replies[10];
    assert_eq!(
        (over.status, over.code()),
        (StatusCode::TOO_MANY_REQUESTS, 99991400)
    );
    assert_eq!(over.json["msg"], "request trigger frequency limit");
    assert_eq!(over.header("x-ogw-ratelimit-limit"), Some("10"));
    // The refused call counts too: for the next to pass, the first two
    // must leave; the second leaves at 60.1 s, 59.1 s from now, rounded up.
    assert_eq!(over.header("x-ogw-ratelimit-reset"), Some("60"));

    // Another endpoint, another tier, its own key.
    let seat = "/open-apis/apaas/v1/seat_assignments";
    let one = call(&c, &sim, Method::GET, seat, &token, "").await;
    let two = call(&c, &sim, Method::GET, seat, &token, "").await;
    assert_eq!((one.code(), two.code()), (0, 99991400));
    assert_eq!(two.header("x-ogw-ratelimit-limit"), Some("1"));
    tokio::time::advance(SEC).await;
    assert_eq!(
        call(&c, &sim, Method::GET, seat, &token, "").await.code(),
        0
    );

    assert_eq!(sim.violations(), 2);
    assert_eq!(sim.violations_at(ten_a_minute), 1);
    assert_eq!(sim.violations_at(one_a_second), 1);
    assert_eq!(sim.violations_at("put_top_notice"), 0);
    assert_eq!(
        sim.violations_by_endpoint(),
        [(one_a_second, 1), (ten_a_minute, 1)]
    );
    assert_eq!(sim.arrivals(ten_a_minute), 11);
    assert_eq!(sim.max_in_any_window(APP, ten_a_minute, 60 * SEC), 11);
    assert_eq!(sim.max_in_any_window(APP, one_a_second, SEC), 2);

    // The minute slides: once the first call has left, one more passes.
    tokio::time::advance(60 * SEC).await;
    let path = "/open-apis/contact/v3/job_titles";
    assert_eq!(
        call(&c, &sim, Method::GET, path, &token, "").await.code(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn special_endpoints_have_a_hidden_limit_and_unstated_ones_none() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;
    let special = "/open-apis/admin/v1/admin_dept_stats";
    let mut replies = Vec::new();
    for _ in 0..6 {
        replies.push(call(&c, &sim, Method::GET, special, &token, "").await);
    }
    assert_eq!(codes(&replies), [0, 0, 0, 0, 0, 99991400]);
    assert_eq!(replies[5].status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(replies[5].header("x-ogw-ratelimit-limit"), Some("5"));
    assert_eq!(replies[5].header("x-ogw-ratelimit-reset"), Some("1"));
    assert_eq!(sim.violations_at(special), 1);

    // No stated limit: no window.
    let unstated = "/open-apis/acs/v1/devices";
    for _ in 0..100 {
        assert_eq!(
            call(&c, &sim, Method::GET, unstated, &token, "")
                .await
                .code(),
            0
        );
    }
    assert!(sim.windows(unstated).is_empty());
    assert_eq!(sim.violations(), 1);

    // The hidden limit and single endpoints are configurable.
    let cfg = SimConfig {
        special_limits: vec![(2, SEC)],
        route_limits: vec![(format!("GET {unstated}"), vec![(1, SEC)])],
        ..SimConfig::with_app(APP, SECRET)
    };
    let sim = start(cfg).await;
    let token = token_of(&c, &sim).await;
    let mut got = Vec::new();
    for path in [special, special, special, unstated, unstated] {
        got.push(call(&c, &sim, Method::GET, path, &token, "").await.code());
    }
    assert_eq!(got, [0, 0, 99991400, 0, 99991400]);
}

#[tokio::test]
async fn unknown_route_limits_fail_the_start() {
    let cfg = SimConfig {
        route_limits: vec![("POST /open-apis/nowhere".into(), vec![(1, SEC)])],
        ..SimConfig::default()
    };
    let err = SimFeishu::start(cfg).await.expect_err("unknown endpoint");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("/open-apis/nowhere"), "{err}");
}

#[tokio::test]
#[should_panic(expected = "ambiguous")]
async fn ambiguous_endpoint_names_panic_in_introspection() {
    let sim = start(SimConfig::default()).await;
    sim.arrivals("/open-apis/im/v1/messages");
}

#[tokio::test(start_paused = true)]
async fn messages_are_limited_per_receiver_across_apps() {
    let cfg = SimConfig {
        apps: vec![SimApp::new(APP, SECRET), SimApp::new("cli_other", "other")],
        ..SimConfig::default()
    };
    let sim = start(cfg).await;
    let c = client();
    let token = token_of(&c, &sim).await;
    let other = tenant_token(&c, &sim, "cli_other", "other").await.json["tenant_access_token"]
        .as_str()
        .expect("token")
        .to_owned();

    // Three to one chat from each app: the chat's 5/s is shared.
    let mut replies = Vec::new();
    for t in [&token, &other, &token, &other, &token, &other] {
        replies.push(send_message(&c, &sim, t, "chat_id", "oc_1").await);
    }
    assert_eq!(codes(&replies), [0, 0, 0, 0, 0, 230020]);
    let refused = &replies[5];
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        refused.json["msg"],
        "This operation triggers the frequency limit."
    );
    assert!(refused.header("x-ogw-ratelimit-reset").is_none());
    // Other receivers are other keys.
    assert_eq!(
        send_message(&c, &sim, &token, "chat_id", "oc_2")
            .await
            .code(),
        0
    );
    for _ in 0..5 {
        assert_eq!(
            send_message(&c, &sim, &token, "open_id", "ou_1")
                .await
                .code(),
            0
        );
    }
    // A message without a receiver is not counted.
    let bad = call(
        &c,
        &sim,
        Method::POST,
        "/open-apis/im/v1/messages",
        &token,
        "{}",
    )
    .await;
    assert_eq!(bad.code(), 0);

    let violations = sim.resource_violations();
    assert_eq!(violations.len(), 1);
    let v = &violations[0];
    assert_eq!(v.rule, ResourceRule::MessageReceiver);
    assert_eq!(v.key, "chat_id:oc_1");
    assert_eq!((v.code, v.status), (230020, StatusCode::BAD_REQUEST));
    assert_eq!(v.app_id, "cli_other");
    assert_eq!(v.endpoint, "POST /open-apis/im/v1/messages");
    assert!(!v.concurrent);
    assert_eq!(sim.violations(), 1);
    assert_eq!(sim.violations_at("POST /open-apis/im/v1/messages"), 1);
    let max = |key| sim.resource_max_in_any_window(ResourceRule::MessageReceiver, key, SEC);
    assert_eq!(
        (
            max("chat_id:oc_1"),
            max("chat_id:oc_2"),
            max("open_id:ou_1")
        ),
        (6, 1, 5)
    );
    assert_eq!(
        sim.resource_keys(ResourceRule::MessageReceiver),
        ["chat_id:oc_1", "chat_id:oc_2", "open_id:ou_1"]
    );

    // A second later the chat takes messages again.
    tokio::time::advance(SEC).await;
    assert_eq!(
        send_message(&c, &sim, &token, "chat_id", "oc_1")
            .await
            .code(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn replies_and_card_updates_are_limited_per_message() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;
    for (method, path) in [
        (Method::POST, "/open-apis/im/v1/messages/om_1/reply"),
        (Method::PATCH, "/open-apis/im/v1/messages/om_1"),
    ] {
        let mut replies = Vec::new();
        for _ in 0..6 {
            replies.push(call(&c, &sim, method.clone(), path, &token, "{}").await);
        }
        assert_eq!(codes(&replies), [0, 0, 0, 0, 0, 230020], "{method} {path}");
        // Another message is another key.
        let other = path.replace("om_1", "om_2");
        assert_eq!(call(&c, &sim, method, &other, &token, "{}").await.code(), 0);
    }
    // Editing a message (PUT) has no per-message limit here.
    for _ in 0..6 {
        let edit = call(
            &c,
            &sim,
            Method::PUT,
            "/open-apis/im/v1/messages/om_1",
            &token,
            "{}",
        )
        .await;
        assert_eq!(edit.code(), 0);
    }
    let rules: Vec<_> = sim
        .resource_violations()
        .iter()
        .map(|v| (v.rule, v.key.clone()))
        .collect();
    assert_eq!(
        rules,
        [
            (ResourceRule::ReplyMessage, "om_1".to_owned()),
            (ResourceRule::CardUpdate, "om_1".to_owned())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn docx_block_edits_are_limited_per_document() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;
    let edit = "/open-apis/docx/v1/documents/doc_1/blocks/batch_update";
    let create = "/open-apis/docx/v1/documents/doc_1/blocks/blk_1/children";
    let mut replies = Vec::new();
    for (method, path) in [
        (Method::PATCH, edit),
        (Method::POST, create),
        (Method::PATCH, edit),
        (Method::POST, create),
    ] {
        replies.push(call(&c, &sim, method, path, &token, "{}").await);
    }
    assert_eq!(codes(&replies), [0, 0, 0, 99991400]);
    let over = &replies[3];
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.header("x-ogw-ratelimit-limit"), Some("3"));
    assert_eq!(over.header("x-ogw-ratelimit-reset"), Some("1"));
    // Reads and other documents are not limited by it.
    let read = "/open-apis/docx/v1/documents/doc_1/blocks";
    assert_eq!(
        call(&c, &sim, Method::GET, read, &token, "").await.code(),
        0
    );
    let other = "/open-apis/docx/v1/documents/doc_2/blocks/batch_update";
    assert_eq!(
        call(&c, &sim, Method::PATCH, other, &token, "{}")
            .await
            .code(),
        0
    );
    let v = sim.resource_violations();
    assert_eq!(v.len(), 1);
    assert_eq!(
        (v[0].rule, v[0].key.as_str()),
        (ResourceRule::DocxDocument, "doc_1")
    );
    assert_eq!(
        sim.resource_max_in_any_window(ResourceRule::DocxDocument, "doc_1", SEC),
        4
    );
}

/// `second` sent while `first` is in flight: once the fake has recorded
/// `first` (it has decided it, and an admitted write has its slot), before
/// `first` is answered. Each on its own connection.
async fn second_while_first_in_flight(
    sim: &Arc<SimFeishu>,
    token: &str,
    (m1, p1): (Method, &'static str),
    (m2, p2): (Method, &str),
) -> (Reply, Reply) {
    let before = sim.requests().len();
    let (sim1, token1) = (Arc::clone(sim), token.to_owned());
    let first = tokio::spawn(async move { call(&client(), &sim1, m1, p1, &token1, "{}").await });
    while sim.requests().len() == before {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let second = call(&client(), sim, m2, p2, token, "{}").await;
    (first.await.expect("first call"), second)
}

/// Long enough for the second call of [`second_while_first_in_flight`] to
/// arrive on a loaded machine.
const WRITE_TIME: Duration = Duration::from_millis(500);

#[tokio::test]
async fn bitable_tables_take_one_write_at_a_time() {
    let cfg = SimConfig {
        write_time: WRITE_TIME,
        ..SimConfig::with_app(APP, SECRET)
    };
    let sim = Arc::new(start(cfg).await);
    let token = token_of(&client(), &sim).await;
    let create = "/open-apis/bitable/v1/apps/bas_1/tables/tbl_1/records";
    let update = "/open-apis/bitable/v1/apps/bas_1/tables/tbl_1/records/rec_1";

    let started = std::time::Instant::now();
    let (a, b) =
        second_while_first_in_flight(&sim, &token, (Method::POST, create), (Method::PUT, update))
            .await;
    assert_eq!(
        (a.code(), b.code()),
        (0, 1254291),
        "the second write conflicts"
    );
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(b.json["msg"], "Write conflict");
    // The admitted write took its write time.
    assert!(started.elapsed() >= WRITE_TIME);

    // Other tables, and reads of the same table, do not conflict.
    let other = "/open-apis/bitable/v1/apps/bas_1/tables/tbl_2/records";
    let (a, b) =
        second_while_first_in_flight(&sim, &token, (Method::POST, create), (Method::POST, other))
            .await;
    assert_eq!((a.code(), b.code()), (0, 0));
    let search = "/open-apis/bitable/v1/apps/bas_1/tables/tbl_1/records/search";
    let (a, b) =
        second_while_first_in_flight(&sim, &token, (Method::POST, create), (Method::POST, search))
            .await;
    assert_eq!((a.code(), b.code()), (0, 0));
    // One after the other: no conflict.
    let c = client();
    for path in [create, update] {
        let method = if path == create {
            Method::POST
        } else {
            Method::PUT
        };
        assert_eq!(call(&c, &sim, method, path, &token, "{}").await.code(), 0);
    }

    let v = sim.resource_violations();
    assert_eq!(v.len(), 1);
    assert_eq!(
        (v[0].rule, v[0].key.as_str()),
        (ResourceRule::BitableTable, "bas_1/tbl_1")
    );
    assert!(v[0].concurrent);
    assert_eq!((v[0].code, v[0].status), (1254291, StatusCode::OK));
    assert_eq!(
        sim.resource_peak_in_flight(ResourceRule::BitableTable, "bas_1/tbl_1"),
        1
    );
    assert_eq!(sim.violations(), 1);
}

#[tokio::test]
async fn drive_uploads_take_no_concurrency_per_app() {
    let cfg = SimConfig {
        write_time: WRITE_TIME,
        ..SimConfig::with_app(APP, SECRET)
    };
    let sim = Arc::new(start(cfg).await);
    let token = token_of(&client(), &sim).await;
    let upload = "/open-apis/drive/v1/files/upload_all";
    let (a, b) =
        second_while_first_in_flight(&sim, &token, (Method::POST, upload), (Method::POST, upload))
            .await;
    assert_eq!((a.code(), b.code()), (0, 1061045));
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(b.json["msg"], "can retry.");
    // Another upload endpoint is another key.
    let media = "/open-apis/drive/v1/medias/upload_all";
    let (a, b) =
        second_while_first_in_flight(&sim, &token, (Method::POST, upload), (Method::POST, media))
            .await;
    assert_eq!((a.code(), b.code()), (0, 0));
    let key = format!("{APP} /open-apis/drive/v1/files/upload_all");
    assert_eq!(
        sim.resource_peak_in_flight(ResourceRule::DriveUpload, &key),
        1
    );
    let v = sim.resource_violations();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].key, key);
    // Upload endpoints are `special`, but their documented limit replaces
    // the hidden one.
    assert!(sim.windows(upload).is_empty());
}

#[tokio::test(start_paused = true)]
async fn drive_uploads_hold_five_a_second() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;
    let upload = "/open-apis/drive/v1/files/upload_prepare";
    let mut replies = Vec::new();
    for _ in 0..6 {
        // One at a time, 20 ms each (the default write time).
        replies.push(call(&c, &sim, Method::POST, upload, &token, "{}").await);
    }
    // upload_prepare also has a documented 5/1s window, checked first.
    assert_eq!(codes(&replies), [0, 0, 0, 0, 0, 99991400]);
    let part = "/open-apis/drive/v1/files/upload_part";
    tokio::time::advance(SEC).await;
    let mut replies = Vec::new();
    for _ in 0..6 {
        replies.push(call(&c, &sim, Method::POST, part, &token, "{}").await);
    }
    assert_eq!(codes(&replies), [0, 0, 0, 0, 0, 1061045]);
    assert_eq!(replies[5].status, StatusCode::OK);
    assert!(!sim.resource_violations()[0].concurrent);
}

#[tokio::test(start_paused = true)]
async fn count_only_and_off_apply_to_resource_limits() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;
    sim.set_quota_mode(QuotaMode::CountOnly);
    for _ in 0..6 {
        assert_eq!(
            send_message(&c, &sim, &token, "chat_id", "oc_1")
                .await
                .code(),
            0
        );
    }
    assert_eq!(sim.violations(), 1);
    assert_eq!(sim.resource_violations()[0].code, 230020);
    sim.set_quota_mode(QuotaMode::Off);
    for _ in 0..6 {
        assert_eq!(
            send_message(&c, &sim, &token, "chat_id", "oc_9")
                .await
                .code(),
            0
        );
    }
    assert_eq!(sim.violations(), 1);
    // Arrivals are still logged.
    assert_eq!(
        sim.resource_max_in_any_window(ResourceRule::MessageReceiver, "chat_id:oc_9", SEC),
        6
    );
    sim.reset_records();
    assert!(sim.resource_violations().is_empty());
    assert!(sim.resource_keys(ResourceRule::MessageReceiver).is_empty());
    assert_eq!(sim.arrivals("POST /open-apis/im/v1/messages"), 0);
}

#[tokio::test(start_paused = true)]
async fn throttle_answers_with_any_code_and_status() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;

    // 99991400 with HTTP 400, as older APIs send it, for two calls.
    sim.throttle(
        "put_top_notice",
        99991400,
        StatusCode::BAD_REQUEST,
        Some(3),
        FaultSpan::Calls(2),
    );
    // A call without a valid token does not use one up.
    assert_eq!(put(&c, &sim, "t-unknown").await.code(), 99991663);
    for _ in 0..2 {
        let r = put(&c, &sim, &token).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, 99991400));
        assert_eq!(r.json["msg"], "request trigger frequency limit");
        assert_eq!(r.header("x-ogw-ratelimit-reset"), Some("3"));
        assert_eq!(r.header("x-ogw-ratelimit-limit"), Some("50"));
    }
    assert_eq!(put(&c, &sim, &token).await.code(), 0);

    // 1254290 with HTTP 200, no reset, for a second.
    let create = "/open-apis/bitable/v1/apps/bas_1/tables/tbl_1/records";
    let name = "POST /open-apis/bitable/v1/apps/:app_token/tables/:table_id/records";
    sim.throttle(name, 1254290, StatusCode::OK, None, FaultSpan::For(SEC));
    for _ in 0..3 {
        let r = call(&c, &sim, Method::POST, create, &token, "{}").await;
        assert_eq!((r.status, r.code()), (StatusCode::OK, 1254290));
        assert_eq!(r.json["msg"], "TooManyRequest");
        assert!(r.header("x-ogw-ratelimit-reset").is_none());
    }
    // Other endpoints are not affected.
    let other = "/open-apis/bitable/v1/apps/bas_1/tables/tbl_1/records/rec_1";
    assert_eq!(
        call(&c, &sim, Method::PUT, other, &token, "{}")
            .await
            .code(),
        0
    );
    tokio::time::advance(SEC).await;
    assert_eq!(
        call(&c, &sim, Method::POST, create, &token, "{}")
            .await
            .code(),
        0
    );

    // A code the catalog does not know, then cleared.
    sim.throttle(
        "get_chat",
        1000004,
        StatusCode::TOO_MANY_REQUESTS,
        None,
        FaultSpan::Calls(5),
    );
    let chat = format!("/open-apis/im/v1/chats/{CHAT}");
    let r = call(&c, &sim, Method::GET, &chat, &token, "").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, 1000004)
    );
    assert_eq!(r.json["msg"], "method rate limited");
    sim.clear_throttles();
    assert_eq!(
        call(&c, &sim, Method::GET, &chat, &token, "").await.code(),
        0
    );

    // Throttled calls are arrivals, not violations.
    assert_eq!(sim.arrivals("put_top_notice"), 3);
    assert_eq!(sim.arrivals(name), 4);
    assert_eq!(sim.violations(), 0);
}

#[tokio::test]
async fn monthly_budget_counts_successful_calls_outside_the_exempt_ones() {
    let cfg = SimConfig {
        monthly_budget: Some(3),
        ..SimConfig::with_app(APP, SECRET)
    };
    let sim = start(cfg).await;
    let c = client();
    let token = token_of(&c, &sim).await;
    let contact = "/open-apis/contact/v3/users/ou_1";

    // Exempt and failed calls are not counted.
    assert_eq!(
        call(&c, &sim, Method::GET, contact, &token, "")
            .await
            .code(),
        0
    );
    let failed = top_notice(
        &c,
        &sim,
        "put_top_notice",
        &token,
        "oc_error232011",
        PIN_ANNOUNCEMENT,
    )
    .await;
    assert_eq!(failed.code(), 232011);
    assert_eq!(
        top_notice(&c, &sim, "put_top_notice", &token, CHAT, "{}")
            .await
            .code(),
        232001
    );
    assert_eq!(sim.budget_used(APP), 0);

    for _ in 0..3 {
        assert_eq!(put(&c, &sim, &token).await.code(), 0);
    }
    assert_eq!(sim.budget_used(APP), 3);
    let spent = put(&c, &sim, &token).await;
    assert_eq!(
        (spent.status, spent.code()),
        (StatusCode::TOO_MANY_REQUESTS, 99991403)
    );
    assert_eq!(
        spent.json["msg"],
        "This month's API call quota has been exceeded"
    );
    let search = call(
        &c,
        &sim,
        Method::GET,
        "/open-apis/im/v1/chats/search",
        &token,
        "",
    )
    .await;
    assert_eq!(search.code(), 99991403);
    // Exempt calls still pass.
    assert_eq!(
        call(&c, &sim, Method::GET, contact, &token, "")
            .await
            .code(),
        0
    );
    assert_eq!(sim.budget_used(APP), 3);
    assert_eq!(sim.budget_refused(), 2);
    assert_eq!(sim.violations(), 0);

    // The month turns.
    sim.set_budget_used(APP, 0);
    assert_eq!(put(&c, &sim, &token).await.code(), 0);
    assert_eq!(sim.budget_used(APP), 1);
}

#[tokio::test]
async fn endpoint_names_in_introspection() {
    let sim = start(SimConfig::with_app(APP, SECRET)).await;
    let c = client();
    let token = token_of(&c, &sim).await;
    for _ in 0..3 {
        put(&c, &sim, &token).await;
    }
    let full = "POST /open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice";
    let bare = "/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice";
    for name in ["put_top_notice", full, bare] {
        assert_eq!(sim.max_in_any_window(APP, name, SEC), 3, "{name}");
        assert_eq!(sim.arrivals(name), 3, "{name}");
    }
    assert_eq!(sim.windows("put_top_notice"), [(1000, 60 * SEC), (50, SEC)]);
    assert_eq!(sim.arrivals_by_endpoint(), [("put_top_notice", 3)]);
}
