//! Subscriptions (PROTOCOL.md "Subscriptions: what a connection receives", "Client → server" and
//! "Scoped tokens"), tried the way a user who read only that page would: selectors in the connect
//! query and in `subscribe` frames, batches split, conflation, tenants kept apart by their tokens
//! on every route (live, snapshot, resume, subscribe), and every malformed selector answered with
//! its field; and a property: on 2 workers, what each client receives is a naive reference filter
//! (written here from PROTOCOL.md's grammar) applied to a random stream. Real `fanout` processes
//! on one real Redis (testcontainers), real WebSocket clients.
//!
//! Absence is proven with a marker: something the client must receive is published after what it
//! must not, and the client reads until the marker. No test sleeps to let something happen.
//!
//! Over 400 lines on purpose: a list of independent scenarios on one subject, each readable on
//! its own; what they share lives in `harness/`.

mod harness;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fanout_client::{ConnectError, ConnectOptions, Connection, Socket, Subscription};
use fanout_domain::Severity;
use futures_util::StreamExt;
use harness::auth::{valid_token, SECRET};
use harness::client::position;
use harness::http::publish;
use harness::raw;
use harness::redis::RedisServer;
use harness::{start_worker, within, Client, On, Process};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn metric(name: &str, value: f64, labels: Value) -> Value {
    json!({"name": name, "value": value, "labels": labels})
}

fn alert(severity: &str, message: &str, labels: Value) -> Value {
    json!({"severity": severity, "message": message, "labels": labels})
}

/// The `name`s of a metrics or snapshot frame's items, in order.
fn names(frame: &Value) -> Vec<&str> {
    frame["data"]
        .as_array()
        .map(|items| items.iter().filter_map(|m| m["name"].as_str()).collect())
        .unwrap_or_default()
}

fn is_metrics_with(frame: &Value, name: &str) -> bool {
    frame["type"] == "metrics" && names(frame).contains(&name)
}

fn is_alert(frame: &Value, message: &str) -> bool {
    frame["type"] == "alert" && frame["data"]["message"] == message
}

/// The messages of the alert frames among `frames`, in order.
fn alert_messages(frames: &[Value]) -> Vec<&str> {
    frames
        .iter()
        .filter(|frame| frame["type"] == "alert")
        .filter_map(|frame| frame["data"]["message"].as_str())
        .collect()
}

/// The item names of each metrics frame among `frames`, in order.
fn metrics_frames(frames: &[Value]) -> Vec<Vec<&str>> {
    frames
        .iter()
        .filter(|frame| frame["type"] == "metrics")
        .map(names)
        .collect()
}

/// Frames until `done` says the one just read was the last wanted (that one included).
async fn frames_until(
    client: &mut Client,
    what: &str,
    mut done: impl FnMut(&Value) -> bool,
) -> Vec<Value> {
    within(what, async {
        let mut frames = Vec::new();
        loop {
            let frame = client.next_frame().await;
            let last = done(&frame);
            frames.push(frame);
            if last {
                return frames;
            }
        }
    })
    .await
}

/// Frames until both the metric named `metric_marker` and the alert `alert_marker` arrived.
async fn frames_until_markers(
    client: &mut Client,
    metric_marker: &str,
    alert_marker: &str,
) -> Vec<Value> {
    let (mut metric_seen, mut alert_seen) = (false, false);
    frames_until(client, "the markers", |frame| {
        metric_seen |= is_metrics_with(frame, metric_marker);
        alert_seen |= is_alert(frame, alert_marker);
        metric_seen && alert_seen
    })
    .await
}

/// The next frame, which must be `{"type": kind, "id": id}` (`subscribed` or `unsubscribed`).
async fn expect_answer(client: &mut Client, kind: &str, id: &str) {
    let answer = client.next_frame().await;
    assert_eq!(
        (&answer["type"], &answer["id"]),
        (&json!(kind), &json!(id)),
        "expected {kind} {id}: {answer}"
    );
}

/// The `subscribed` answer to `id`, then the snapshot that follows it (returned).
async fn expect_subscribed(client: &mut Client, id: &str) -> Value {
    expect_answer(client, "subscribed", id).await;
    let snapshot = client.next_frame().await;
    assert_eq!(snapshot["type"], "snapshot", "after subscribed: {snapshot}");
    snapshot
}

/// The next frame, which must be an `error` answer to the request `id` (`null`: none); returns
/// its `field`.
async fn expect_error(client: &mut Client, id: Value) -> Value {
    let answer = client.next_frame().await;
    assert_eq!(answer["type"], "error", "expected an error: {answer}");
    assert_eq!(answer["id"], id, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| !e.is_empty()),
        "an error answer says what is wrong: {answer}"
    );
    answer["field"].clone()
}

fn with_subscription(subscription: &Subscription) -> ConnectOptions<'_> {
    ConnectOptions {
        subscription: Some(subscription),
        ..ConnectOptions::default()
    }
}

/// Connects with `query` written by hand after `/ws/performance?`, as a browser user would
/// (no percent-encoding), and reads past `hello` and `snapshot`.
async fn connect_literal(addr: SocketAddr, query: &str) -> Socket {
    let url = format!("ws://{addr}/ws/performance?{query}");
    let (mut socket, _) = within("connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap_or_else(|e| panic!("?{query} refused: {e}"));
    for kind in ["hello", "snapshot"] {
        let frame = next_literal(&mut socket).await;
        assert_eq!(frame["type"], kind, "{frame}");
    }
    socket
}

async fn next_literal(socket: &mut Socket) -> Value {
    loop {
        match within("next frame", socket.next()).await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
            }
            Some(Ok(_)) => continue,
            other => panic!("the connection ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn query_selectors_deliver_exactly_the_matching_metrics_and_alerts() {
    let redis = RedisServer::start().await;
    let worker = start_worker::<Process>("w", On::Redis(&redis.url()), &[]).await;
    // The query of the brief as typed by hand, and the same subscription encoded by fanout-client.
    let mut typed = connect_literal(
        worker.addr,
        "metrics=api.*&where=service=checkout&alerts=warning",
    )
    .await;
    let subscription = Subscription::default()
        .metrics(["api.*"])
        .matcher("service=checkout")
        .min_severity(Severity::Warning);
    let mut encoded = Client::connect_with(worker.addr, &with_subscription(&subscription)).await;

    let checkout = json!({"service": "checkout"});
    let batches = [
        json!([
            metric("api.latency_ms", 1.0, checkout.clone()),
            metric("api.latency_ms", 2.0, json!({"service": "search"})),
            metric("db.query_ms", 3.0, checkout.clone()),
            metric(
                "api.errors",
                4.0,
                json!({"service": "checkout", "region": "eu"})
            ),
        ]),
        // Nothing matches: no frame at all.
        json!([
            metric("host.load", 5.0, checkout.clone()),
            metric("api.latency_ms", 6.0, json!({})),
        ]),
        // `*` may stand for no character; the pattern is anchored at the start.
        json!([
            metric("xapi.latency_ms", 7.0, checkout.clone()),
            metric("api.", 8.0, checkout.clone()),
        ]),
    ];
    for batch in &batches {
        publish(worker.addr, "/api/metrics", batch).await;
    }
    let alerts = [
        alert("info", "info is below warning", checkout.clone()),
        alert("warning", "warning without metric", checkout.clone()),
        alert("critical", "critical without metric", checkout.clone()),
        alert("critical", "other service", json!({"service": "search"})),
        alert("critical", "no labels", json!({})),
        json!({"severity": "critical", "message": "names db.query_ms", "metric": "db.query_ms",
               "labels": checkout}),
        json!({"severity": "warning", "message": "names api.latency_ms", "metric": "api.latency_ms",
               "labels": checkout}),
    ];
    for body in &alerts {
        publish(worker.addr, "/api/alerts", body).await;
    }
    publish(
        worker.addr,
        "/api/metrics",
        &json!([metric("api.marker", 9.0, checkout.clone())]),
    )
    .await;
    publish(
        worker.addr,
        "/api/alerts",
        &alert("critical", "alert marker", checkout.clone()),
    )
    .await;

    let frames = frames_until_markers(&mut encoded, "api.marker", "alert marker").await;
    assert_eq!(
        metrics_frames(&frames),
        [
            vec!["api.latency_ms", "api.errors"],
            vec!["api."],
            vec!["api.marker"]
        ],
        "{frames:?}"
    );
    assert_eq!(
        alert_messages(&frames),
        [
            "warning without metric",
            "critical without metric",
            "names api.latency_ms",
            "alert marker"
        ]
    );
    assert_eq!(frames[0]["data"][0]["value"], 1.0, "{}", frames[0]);
    // The hand-typed query receives the very same metrics and alerts.
    let (mut metric_seen, mut alert_seen) = (false, false);
    let mut typed_frames = Vec::new();
    while !(metric_seen && alert_seen) {
        let frame = next_literal(&mut typed).await;
        metric_seen |= is_metrics_with(&frame, "api.marker");
        alert_seen |= is_alert(&frame, "alert marker");
        typed_frames.push(frame);
    }
    assert_eq!(metrics_frames(&typed_frames), metrics_frames(&frames));
    assert_eq!(alert_messages(&typed_frames), alert_messages(&frames));
}

#[tokio::test]
async fn subscribe_replace_and_unsubscribe_are_answered_in_order_and_apply_from_the_answer() {
    let redis = RedisServer::start().await;
    let worker = start_worker::<Process>("w", On::Redis(&redis.url()), &[]).await;
    let mut watcher = Client::connect(worker.addr).await;
    let three = |n: f64| {
        json!([
            metric("api.requests", n, json!({"service": "a"})),
            metric("db.queries", n + 1.0, json!({})),
            metric("host.load", n + 2.0, json!({})),
        ])
    };
    publish(worker.addr, "/api/metrics", &three(10.0)).await;
    frames_until(&mut watcher, "the first batch", |f| {
        is_metrics_with(f, "host.load")
    })
    .await;

    let nothing = Subscription::default().no_metrics().no_alerts();
    let mut client = Client::connect_with(worker.addr, &with_subscription(&nothing)).await;
    assert_eq!(client.snapshot["data"], json!([]), "{}", client.snapshot);

    client
        .subscribe("s1", &Subscription::default().metrics(["api.*"]))
        .await;
    let snapshot = expect_subscribed(&mut client, "s1").await;
    assert_eq!(names(&snapshot), ["api.requests"], "{snapshot}");
    publish(worker.addr, "/api/metrics", &three(20.0)).await;
    let frame = client.next_frame().await;
    assert_eq!(names(&frame), ["api.requests"], "{frame}");
    assert_eq!(frame["data"][0]["value"], 20.0, "{frame}");

    // Replacing s1: the snapshot and the next frame follow the new selector only.
    client
        .subscribe("s1", &Subscription::default().metrics(["db.*"]))
        .await;
    let snapshot = expect_subscribed(&mut client, "s1").await;
    assert_eq!(names(&snapshot), ["db.queries"], "{snapshot}");
    assert_eq!(snapshot["data"][0]["value"], 21.0, "{snapshot}");
    publish(worker.addr, "/api/metrics", &three(30.0)).await;
    let frame = client.next_frame().await;
    assert_eq!(names(&frame), ["db.queries"], "{frame}");

    // Five requests sent before reading any answer: answered in order. The second unsubscribe
    // of s1 fails only because the first one was carried out before it.
    client
        .subscribe("s2", &Subscription::default().metrics(["host.*"]))
        .await;
    client.unsubscribe("s1").await;
    client.unsubscribe("s1").await;
    client
        .subscribe("s3", &Subscription::default().metrics([""]))
        .await;
    let snapshot = expect_subscribed(&mut client, "s2").await;
    assert_eq!(names(&snapshot), ["host.load"], "{snapshot}");
    expect_answer(&mut client, "unsubscribed", "s1").await;
    expect_error(&mut client, json!("s1")).await;
    assert_eq!(expect_error(&mut client, json!("s3")).await, "metrics[0]");
    publish(worker.addr, "/api/metrics", &three(40.0)).await;
    let frame = client.next_frame().await;
    assert_eq!(names(&frame), ["host.load"], "{frame}");

    // With no subscription left nothing arrives: what was published then is not in front of
    // the next answer (the watcher on the same worker proves it was delivered meanwhile).
    client.unsubscribe("s2").await;
    client.unsubscribe("default").await;
    expect_answer(&mut client, "unsubscribed", "s2").await;
    expect_answer(&mut client, "unsubscribed", "default").await;
    publish(worker.addr, "/api/metrics", &three(50.0)).await;
    publish(
        worker.addr,
        "/api/alerts",
        &alert("critical", "unheard", json!({})),
    )
    .await;
    frames_until(&mut watcher, "the unheard alert", |f| {
        is_alert(f, "unheard")
    })
    .await;
    client.subscribe("s4", &Subscription::default()).await;
    let snapshot = expect_subscribed(&mut client, "s4").await;
    assert_eq!(names(&snapshot).len(), 3, "{snapshot}");
    publish(
        worker.addr,
        "/api/alerts",
        &alert("info", "heard", json!({})),
    )
    .await;
    let frame = client.next_frame().await;
    assert!(is_alert(&frame, "heard"), "{frame}");
}

#[tokio::test]
async fn a_batch_is_split_into_its_matching_items_with_the_same_envelope() {
    let redis = RedisServer::start().await;
    let worker = start_worker::<Process>("splitter", On::Redis(&redis.url()), &[]).await;
    let mut everything = Client::connect(worker.addr).await;
    let api = Subscription::default().metrics(["api.*"]);
    let mut client = Client::connect_with(worker.addr, &with_subscription(&api)).await;

    let receipt = publish(
        worker.addr,
        "/api/metrics",
        &json!([
            metric("api.a", 1.0, json!({})),
            metric("db.b", 2.0, json!({})),
            metric("api.c", 3.0, json!({"k": "v"})),
            metric("host.d", 4.0, json!({})),
            metric("queue.e", 5.0, json!({})),
        ]),
    )
    .await;
    let whole = everything.next_frame().await;
    assert_eq!(names(&whole).len(), 5, "{whole}");
    let split = client.next_frame().await;
    assert_eq!(split["type"], "metrics", "{split}");
    assert_eq!(names(&split), ["api.a", "api.c"], "{split}");
    assert_eq!(split["data"][0]["value"], 1.0, "{split}");
    assert_eq!(split["data"][1]["value"], 3.0, "{split}");
    assert_eq!(split["data"][1]["labels"], json!({"k": "v"}), "{split}");
    assert_eq!(split["origin"], "splitter", "{split}");
    assert_eq!(split["seq"], receipt["seq"], "{split}");
    for field in ["origin", "seq", "published_at_us"] {
        assert_eq!(split[field], whole[field], "{field}: {split} vs {whole}");
    }
}

#[tokio::test]
async fn a_conflated_series_arrives_about_once_per_interval_and_ends_on_its_last_value() {
    const PUBLISHES: u64 = 300;
    const ALERTS: usize = 10;
    let redis = RedisServer::start().await;
    let worker = start_worker::<Process>("w", On::Redis(&redis.url()), &[]).await;
    let conflated = Subscription::default()
        .metrics(["load.series"])
        .interval(Duration::from_millis(200));
    let mut client = Client::connect_with(worker.addr, &with_subscription(&conflated)).await;

    let connection = redis::Client::open(redis.url()).unwrap_or_else(|e| panic!("{e}"));
    let mut connection = connection
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // ~100 messages a second straight into Redis, as an outside publisher.
    let metrics = async {
        let started = Instant::now();
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        for seq in 0..PUBLISHES {
            ticks.tick().await;
            let envelope = json!({"type": "metrics", "origin": "loadgen", "seq": seq,
                "data": [metric("load.series", seq as f64, json!({}))]});
            redis::cmd("PUBLISH")
                .arg("performance:metrics")
                .arg(envelope.to_string())
                .query_async::<i64>(&mut connection)
                .await
                .unwrap_or_else(|e| panic!("PUBLISH: {e}"));
        }
        started.elapsed()
    };
    // Alerts meanwhile, through a worker.
    let alerts = async {
        let mut ticks = tokio::time::interval(Duration::from_millis(300));
        for n in 0..ALERTS {
            ticks.tick().await;
            let body = alert("info", &format!("during {n}"), json!({}));
            publish(worker.addr, "/api/alerts", &body).await;
        }
    };
    let last = (PUBLISHES - 1) as f64;
    let read = frames_until(&mut client, "the last value and every alert", {
        let (mut alerts_seen, mut last_seen) = (0, false);
        move |frame| {
            alerts_seen += usize::from(frame["type"] == "alert");
            last_seen |= frame["type"] == "metrics" && frame["data"][0]["value"] == last;
            alerts_seen == ALERTS && last_seen
        }
    });
    let (publishing, (), frames) = tokio::join!(metrics, alerts, read);

    let expected: Vec<String> = (0..ALERTS).map(|n| format!("during {n}")).collect();
    assert_eq!(
        alert_messages(&frames),
        expected,
        "alerts are never conflated"
    );
    let metric_frames: Vec<&Value> = frames.iter().filter(|f| f["type"] == "metrics").collect();
    for frame in &metric_frames {
        assert_eq!(names(frame), ["load.series"], "one series: {frame}");
        assert_eq!(frame["origin"], "loadgen", "{frame}");
    }
    let final_frame = metric_frames.last().unwrap_or_else(|| unreachable!());
    assert_eq!(final_frame["data"][0]["value"], last, "{final_frame}");
    assert_eq!(
        final_frame["seq"],
        PUBLISHES - 1,
        "the newest message's seq"
    );
    let per_second = metric_frames.len() as f64 / publishing.as_secs_f64();
    assert!(
        (3.0..=7.0).contains(&per_second),
        "{} frames in {publishing:?} ({per_second:.1}/s) for {PUBLISHES} publishes at a 200ms interval",
        metric_frames.len()
    );
}

async fn post_as(addr: SocketAddr, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let response = within(
        "a publish",
        reqwest::Client::new()
            .post(format!("http://{addr}{path}"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send(),
    )
    .await
    .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every metric item and alert among `frames` carries `tenant=a`.
fn assert_only_tenant_a(frames: &[Value], route: &str) {
    for frame in frames {
        let items: Vec<&Value> = match frame["type"].as_str() {
            Some("metrics" | "snapshot") => {
                frame["data"].as_array().into_iter().flatten().collect()
            }
            Some("alert") => vec![&frame["data"]],
            _ => panic!("{route}: unexpected frame {frame}"),
        };
        for item in items {
            assert_eq!(
                item["labels"]["tenant"], "a",
                "{route}: tenant A received {item} in {frame}"
            );
        }
    }
}

#[tokio::test]
async fn a_scoped_token_sees_only_its_tenant_on_every_worker_and_every_route() {
    let redis = RedisServer::start().await;
    let args = ["--auth-secret", SECRET];
    let mut workers = Vec::new();
    for id in ["w1", "w2", "w3"] {
        workers.push(start_worker::<Process>(id, On::Redis(&redis.url()), &args).await);
    }
    let operator = valid_token(json!({"sub": "ops", "publish": true}));
    let tenant_a = valid_token(json!({"sub": "tenant-a", "where": {"tenant": "a"}}));
    let publisher_a =
        valid_token(json!({"sub": "pub-a", "publish": true, "where": {"tenant": "a"}}));
    let a = json!({"tenant": "a"});
    let b = json!({"tenant": "b"});

    // Both tenants' metrics and alerts, before tenant A connects: in every worker's snapshot and
    // in the alert log.
    let mut watchers = Vec::new();
    for worker in &workers {
        watchers.push(Client::connect_with_token(worker.addr, &operator).await);
    }
    let batch = json!([
        metric("tenant.cpu", 1.0, a.clone()),
        metric("tenant.cpu", 2.0, b.clone()),
        metric("tenant.cpu", 3.0, json!({})),
        metric("tenant.cpu", 4.0, json!({"tenant": "aa"})),
        metric("tenant.b_only", 5.0, b.clone()),
    ]);
    let (status, body) = post_as(workers[0].addr, "/api/metrics", &operator, &batch).await;
    assert_eq!(status, 202, "{body}");
    for (n, body) in [
        alert("critical", "a-1", a.clone()),
        alert("critical", "b-1", b.clone()),
        alert("warning", "unlabelled-1", json!({})),
        alert("info", "a-2", a.clone()),
        alert("critical", "b-2", b.clone()),
    ]
    .iter()
    .enumerate()
    {
        let (status, receipt) = post_as(workers[n % 3].addr, "/api/alerts", &operator, body).await;
        assert_eq!(status, 202, "{receipt}");
    }
    let marker = json!([metric("before.done", 0.0, a.clone())]);
    let (status, _) = post_as(workers[2].addr, "/api/metrics", &operator, &marker).await;
    assert_eq!(status, 202);
    let marker = alert("warning", "before done", a.clone());
    let (status, _) = post_as(workers[2].addr, "/api/alerts", &operator, &marker).await;
    assert_eq!(status, 202);
    let mut epoch = Value::Null;
    for watcher in &mut watchers {
        let frames = frames_until_markers(watcher, "before.done", "before done").await;
        epoch = frames
            .iter()
            .find(|f| f["type"] == "alert")
            .map(|f| f["epoch"].clone())
            .unwrap_or_default();
    }
    let epoch = epoch.as_str().unwrap_or_else(|| panic!("no epoch"));

    // On each worker: a fresh client (snapshot), a resuming one (replay), and each asks for
    // tenant B in a subscribe frame (or to drop its scope by replacing `default`).
    let mut clients = Vec::new();
    let from_start = position("0-0", Some(epoch));
    for worker in &workers {
        let route = format!("snapshot on {}", worker.id);
        let mut fresh = Client::connect_with_token(worker.addr, &tenant_a).await;
        assert_only_tenant_a(std::slice::from_ref(&fresh.snapshot), &route);
        let mut series = names(&fresh.snapshot);
        series.sort_unstable();
        assert_eq!(series, ["before.done", "tenant.cpu"], "{route}");

        let resuming = ConnectOptions {
            token: Some(&tenant_a),
            resume: Some(&from_start),
            ..ConnectOptions::default()
        };
        let mut resumed = Client::connect_with(worker.addr, &resuming).await;
        let route = format!("resume on {}", worker.id);
        assert_only_tenant_a(std::slice::from_ref(&resumed.snapshot), &route);
        assert_eq!(resumed.resume["complete"], true, "{}", resumed.resume);
        assert_eq!(resumed.resume["replayed"], 3, "{}", resumed.resume);
        let mut replay = Vec::new();
        for _ in 0..3 {
            replay.push(resumed.next_frame().await);
        }
        assert_only_tenant_a(&replay, &route);
        assert_eq!(alert_messages(&replay), ["a-1", "a-2", "before done"]);

        let mut widened = Client::connect_with_token(worker.addr, &tenant_a).await;
        for (client, id, subscription) in [
            (&mut fresh, "b", Subscription::default().matcher("tenant=b")),
            (
                &mut resumed,
                "not-a",
                Subscription::default().matcher("tenant!=a"),
            ),
            (&mut widened, "default", Subscription::default()),
        ] {
            client.subscribe(id, &subscription).await;
            let snapshot = expect_subscribed(client, id).await;
            assert_only_tenant_a(&[snapshot], &format!("subscribe {id} on {}", worker.id));
        }
        clients.push((worker.id.clone(), [fresh, resumed, widened]));
    }

    // Live, through every worker: tenant B, unlabelled, and what a publisher scoped to tenant A
    // may not publish (refused whole: nothing of the request is published).
    for (n, worker) in workers.iter().enumerate() {
        let batch = json!([
            metric("tenant.cpu", 10.0 + n as f64, b.clone()),
            metric("tenant.cpu", 20.0, json!({})),
        ]);
        let (status, body) = post_as(worker.addr, "/api/metrics", &operator, &batch).await;
        assert_eq!(status, 202, "{body}");
        let body = alert("critical", &format!("b-live-{n}"), b.clone());
        let (status, receipt) = post_as(worker.addr, "/api/alerts", &operator, &body).await;
        assert_eq!(status, 202, "{receipt}");
    }
    let scoped = workers[1].addr;
    for (path, body) in [
        (
            "/api/metrics",
            json!([metric("tenant.cpu", 30.0, b.clone())]),
        ),
        (
            "/api/metrics",
            json!([
                metric("a.partial", 31.0, a.clone()),
                metric("b.partial", 32.0, b.clone())
            ]),
        ),
        ("/api/alerts", alert("critical", "a-unlabelled", json!({}))),
        ("/api/alerts", alert("critical", "a-as-b", b.clone())),
    ] {
        let (status, refusal) = post_as(scoped, path, &publisher_a, &body).await;
        assert_eq!(status, 403, "{path} {body}: {refusal}");
        assert!(
            refusal["error"]
                .as_str()
                .is_some_and(|e| e.contains("tenant=a")),
            "the refusal names the missing label: {refusal}"
        );
    }
    // The markers, through the scoped publisher: its own tenant's are accepted.
    let marker = json!([metric("live.done", 0.0, a.clone())]);
    let (status, receipt) = post_as(scoped, "/api/metrics", &publisher_a, &marker).await;
    assert_eq!(status, 202, "{receipt}");
    let marker = alert("info", "live done", a.clone());
    let (status, receipt) = post_as(scoped, "/api/alerts", &publisher_a, &marker).await;
    assert_eq!(status, 202, "{receipt}");

    for (worker, group) in &mut clients {
        for (client, route) in group.iter_mut().zip(["b", "not-a", "widened default"]) {
            let frames = frames_until_markers(client, "live.done", "live done").await;
            assert_only_tenant_a(&frames, &format!("live after {route} on {worker}"));
            assert!(
                !frames.iter().any(|f| is_metrics_with(f, "a.partial")),
                "a refused batch was published in part: {frames:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_snapshot_and_the_resume_replay_hold_only_what_the_connect_query_selects() {
    let redis = RedisServer::start().await;
    let worker = start_worker::<Process>("w", On::Redis(&redis.url()), &[]).await;
    let mut watcher = Client::connect(worker.addr).await;
    publish(
        worker.addr,
        "/api/metrics",
        &json!([
            metric("api.latency_ms", 1.0, json!({})),
            metric("db.query_ms", 2.0, json!({})),
        ]),
    )
    .await;
    for (severity, message) in [
        ("info", "i1"),
        ("critical", "c1"),
        ("warning", "w1"),
        ("critical", "c2"),
    ] {
        publish(
            worker.addr,
            "/api/alerts",
            &alert(severity, message, json!({})),
        )
        .await;
    }
    let frames = frames_until_markers(&mut watcher, "db.query_ms", "c2").await;
    let epoch = frames
        .iter()
        .find(|f| f["type"] == "alert")
        .and_then(|f| f["epoch"].as_str())
        .unwrap_or_else(|| panic!("no alert epoch: {frames:?}"))
        .to_owned();

    let api = Subscription::default().metrics(["api.*"]);
    let selective = Client::connect_with(worker.addr, &with_subscription(&api)).await;
    assert_eq!(
        names(&selective.snapshot),
        ["api.latency_ms"],
        "{}",
        selective.snapshot
    );

    let critical = Subscription::default().min_severity(Severity::Critical);
    let from_start = position("0-0", Some(&epoch));
    let resuming = ConnectOptions {
        resume: Some(&from_start),
        subscription: Some(&critical),
        ..ConnectOptions::default()
    };
    let mut resumed = Client::connect_with(worker.addr, &resuming).await;
    assert_eq!(resumed.resume["complete"], true, "{}", resumed.resume);
    assert_eq!(resumed.resume["replayed"], 2, "{}", resumed.resume);
    publish(
        worker.addr,
        "/api/alerts",
        &alert("warning", "w2", json!({})),
    )
    .await;
    publish(
        worker.addr,
        "/api/alerts",
        &alert("critical", "c3", json!({})),
    )
    .await;
    let frames = frames_until(&mut resumed, "the live critical alert", |f| {
        is_alert(f, "c3")
    })
    .await;
    assert_eq!(alert_messages(&frames), ["c1", "c2", "c3"], "{frames:?}");
    assert_eq!(frames.len(), 3, "{frames:?}");
}

#[tokio::test]
async fn every_malformed_selector_is_answered_with_its_field() {
    let redis = RedisServer::start().await;
    let strict = start_worker::<Process>(
        "strict",
        On::Redis(&redis.url()),
        &[
            "--max-subscriptions",
            "2",
            "--max-selector-terms",
            "2",
            "--max-pattern-bytes",
            "8",
        ],
    )
    .await;

    // At connect: 400 before the upgrade, naming the query parameter.
    for (query, field) in [
        ("metrics=a,,b", "metrics"),
        ("metrics=%01", "metrics"),
        ("metrics=a,b,c", "metrics"),
        ("metrics=abcdefghi", "metrics"),
        ("where=service", "where"),
        ("where==x", "where"),
        ("where=a=1,b=2,c=3", "where"),
        ("where=k=123456789", "where"),
        ("where=abcdefghi=v", "where"),
        ("alerts=urgent", "alerts"),
        ("alerts=", "alerts"),
        ("interval=fast", "interval"),
        ("interval=500", "interval"),
        ("interval=5ms", "interval"),
        ("interval=61s", "interval"),
        ("metrics=api.*&interval=1m", "interval"),
    ] {
        let (status, body) = raw::upgrade(strict.addr, &format!("?{query}"), &[]).await;
        assert_eq!(status, 400, "?{query}: {body}");
        assert_eq!(body["field"], field, "?{query}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "?{query}: {body}"
        );
    }
    // The limits are "at most": two terms of eight bytes, the shortest interval, are taken.
    connect_literal(
        strict.addr,
        "metrics=abcdefgh,b&where=k=12345678,j!=x|y&alerts=none&interval=10ms",
    )
    .await;
    // fanout-client reports the same refusal.
    let long = Subscription::default().metrics(["much.too.long"]);
    let refused = within(
        "connect",
        Connection::connect(&format!("ws://{}", strict.addr), &with_subscription(&long)),
    )
    .await;
    assert!(
        matches!(&refused, Err(ConnectError::Refused { status: 400, field: Some(field), .. }) if field == "metrics"),
        "{refused:?}"
    );

    // On an open connection: an error answer naming the field, in request order; the connection
    // stays open and its subscriptions unchanged.
    let api = Subscription::default().metrics(["api.*"]);
    let mut client = Client::connect_with(strict.addr, &with_subscription(&api)).await;
    let long_id = "i".repeat(65);
    let requests = [
        ("not json", Value::Null, Some(Value::Null)),
        (r#"[1,2]"#, Value::Null, Some(Value::Null)),
        (
            r#"{"type":"subscribe","id":"e1","metrics":[""]}"#,
            json!("e1"),
            Some(json!("metrics[0]")),
        ),
        (
            r#"{"type":"subscribe","id":"e2","metrics":["ok","abcdefghi"]}"#,
            json!("e2"),
            Some(json!("metrics[1]")),
        ),
        (
            r#"{"type":"subscribe","id":"e3","metrics":["a","b","c"]}"#,
            json!("e3"),
            Some(json!("metrics")),
        ),
        (
            r#"{"type":"subscribe","id":"e4","where":["nope"]}"#,
            json!("e4"),
            Some(json!("where[0]")),
        ),
        (
            r#"{"type":"subscribe","id":"e5","where":{"region":"123456789"}}"#,
            json!("e5"),
            Some(json!("where.region")),
        ),
        (
            r#"{"type":"subscribe","id":"e6","alerts":"urgent"}"#,
            json!("e6"),
            Some(json!("alerts")),
        ),
        (
            r#"{"type":"subscribe","id":"e7","interval":"5ms"}"#,
            json!("e7"),
            Some(json!("interval")),
        ),
        (
            r#"{"type":"subscribe","id":"default","metrics":["abcdefghi"]}"#,
            json!("default"),
            Some(json!("metrics[0]")),
        ),
        (
            r#"{"type":"subscribe","metrics":["x"]}"#,
            Value::Null,
            Some(json!("id")),
        ),
        (
            r#"{"type":"unsubscribe","id":"ghost"}"#,
            json!("ghost"),
            None,
        ),
        (r#"{"type":"dance","id":"d1"}"#, json!("d1"), None),
    ];
    for (text, _, _) in &requests {
        client.send(Message::text(*text)).await;
    }
    client
        .send(Message::text(format!(
            r#"{{"type":"subscribe","id":"{long_id}"}}"#
        )))
        .await;
    for (text, id, field) in requests {
        let answered = expect_error(&mut client, id).await;
        if let Some(field) = field {
            assert_eq!(answered, field, "{text}");
        }
    }
    let answer = client.next_frame().await;
    assert_eq!(
        (&answer["type"], &answer["field"]),
        (&json!("error"), &json!("id")),
        "a 65-byte id: {answer}"
    );

    // --max-subscriptions 2: default and s1; replacing s1 is not a third.
    client
        .subscribe("s1", &Subscription::default().metrics(["db.*"]))
        .await;
    client
        .subscribe("s2", &Subscription::default().metrics(["host.*"]))
        .await;
    client
        .subscribe("s1", &Subscription::default().metrics(["db.*", "host.*"]))
        .await;
    expect_subscribed(&mut client, "s1").await;
    expect_error(&mut client, json!("s2")).await;
    expect_subscribed(&mut client, "s1").await;
    publish(
        strict.addr,
        "/api/metrics",
        &json!([
            metric("api.x", 1.0, json!({})),
            metric("db.y", 2.0, json!({})),
            metric("host.z", 3.0, json!({})),
            metric("queue.w", 4.0, json!({})),
        ]),
    )
    .await;
    let frame = client.next_frame().await;
    assert_eq!(names(&frame), ["api.x", "db.y", "host.z"], "{frame}");
}

#[tokio::test]
async fn a_pattern_of_many_stars_is_matched_against_long_names_at_once() {
    let redis = RedisServer::start().await;
    let worker = start_worker::<Process>("w", On::Redis(&redis.url()), &[]).await;
    // 255 bytes: "a*a*…a*b", the classic input that makes a backtracking glob exponential.
    let hostile = format!("{}b", "a*".repeat(127));
    let nothing = Subscription::default().no_metrics().no_alerts();
    let mut client = Client::connect_with(worker.addr, &with_subscription(&nothing)).await;
    client
        .subscribe(
            "hostile",
            &Subscription::default().metrics([hostile.as_str()]),
        )
        .await;
    expect_subscribed(&mut client, "hostile").await;
    let matching = format!("{}b", "a".repeat(255));
    publish(
        worker.addr,
        "/api/metrics",
        &json!([
            metric(&"a".repeat(256), 1.0, json!({})),
            metric(&matching, 2.0, json!({})),
            metric(&format!("b{}", "a".repeat(255)), 3.0, json!({})),
            metric(
                &format!("{}b{}", "a".repeat(128), "a".repeat(127)),
                4.0,
                json!({})
            ),
        ]),
    )
    .await;
    let frame = client.next_frame().await;
    assert_eq!(names(&frame), [matching.as_str()], "{frame}");
}

/// Found by an outside tester: a metric name with a multi-byte character, matched by a pattern
/// whose literal tail is as long as a cut inside that character, ended the worker's bus listener
/// (no client got anything more, `/healthz` stayed green) and dropped new connections whose
/// snapshot held such a name, without unregistering them. Repeated 20 times, with new clients
/// each round: every client keeps getting what it asked for, and the count comes back.
#[tokio::test]
async fn multi_byte_names_never_stop_delivery_nor_leak_connections() {
    let redis = RedisServer::start().await;
    let worker = start_worker::<Process>("w", On::Redis(&redis.url()), &[]).await;
    let mut everything = Client::connect(worker.addr).await;
    for round in 0..20 {
        // "P.üabcd": its last 5 bytes start inside `ü`, as long as the tail of `*vwxyz`.
        let poison = format!("P{round}.üabcd");
        publish(
            worker.addr,
            "/api/metrics",
            &json!([metric(&poison, 1.0, json!({}))]),
        )
        .await;
        let patterns = ["*vwxyz", "P*", "*abcd", "*üabcd", "*.ü*"];
        let mut clients = Vec::new();
        for pattern in patterns {
            // Connected after the poison: each snapshot is matched against it too.
            let subscription = Subscription::default().metrics([pattern, "marker"]);
            clients
                .push(Client::connect_with(worker.addr, &with_subscription(&subscription)).await);
        }
        let marker = format!("marker.{round}");
        publish(
            worker.addr,
            "/api/metrics",
            &json!([
                metric(&poison, 2.0, json!({})),
                metric("marker", 0.0, json!({"round": marker}))
            ]),
        )
        .await;
        for (pattern, client) in patterns.iter().zip(&mut clients) {
            let frames = frames_until(client, "the marker", |f| is_metrics_with(f, "marker")).await;
            let poisoned = metrics_frames(&frames)
                .iter()
                .flatten()
                .any(|name| *name == poison);
            assert_eq!(poisoned, *pattern != "*vwxyz", "{pattern}: {frames:?}");
        }
        frames_until(&mut everything, "the marker", |f| {
            is_metrics_with(f, "marker")
        })
        .await;
        for client in clients {
            client.close().await;
        }
    }
    let health = harness::http::health(worker.addr).await;
    assert_eq!(health["delivery"]["internal_errors"], 0, "{health}");
    harness::wait_until("the closed clients are unregistered", || async {
        harness::http::health(worker.addr).await["connections"] == 1
    })
    .await;
}

// The property: what each client receives is the reference filter applied to the stream.

const NAMES: [&str; 5] = ["api.a", "api.b", "db.a", "web.latency_ms", "P.üabcd"];
const PATTERNS: [&str; 7] = ["api.*", "*.a", "*", "*abcd", "db.a", "P.üabcd", "*ü*"];
const MATCHERS: [&str; 6] = [
    "tenant=a",
    "tenant!=a",
    "tenant=",
    "region=eu|us",
    "region!=eu|us",
    "region=ap|",
];
const TENANTS: [Option<&str>; 4] = [None, Some("a"), Some("b"), Some("")];
const REGIONS: [Option<&str>; 4] = [None, Some("eu"), Some("us"), Some("ap")];

/// A selector drawn from the small alphabets above; `patterns: None` is "every metric",
/// `min_severity: None` is `alerts=none`.
#[derive(Clone, Debug)]
struct Selector {
    patterns: Option<Vec<&'static str>>,
    matchers: Vec<&'static str>,
    min_severity: Option<Severity>,
}

/// One client: its connect-time selector, and the selector of an extra `subscribe` frame.
#[derive(Clone, Debug)]
struct Watcher {
    default: Selector,
    extra: Option<Selector>,
}

#[derive(Clone, Debug)]
struct Labels {
    tenant: Option<&'static str>,
    region: Option<&'static str>,
}

#[derive(Clone, Debug)]
enum Publication {
    /// One `POST /api/metrics` batch: (name, labels) of each metric.
    Metrics(Vec<(&'static str, Labels)>),
    Alert {
        severity: Severity,
        metric: Option<&'static str>,
        labels: Labels,
    },
}

/// What a client received (or should have), told apart by `value`, unique within a case.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Metric {
        name: String,
        value: u64,
        labels: BTreeMap<String, String>,
    },
    Alert {
        severity: Severity,
        metric: Option<String>,
        value: u64,
        labels: BTreeMap<String, String>,
    },
}

fn severity() -> impl Strategy<Value = Severity> {
    prop_oneof![
        Just(Severity::Info),
        Just(Severity::Warning),
        Just(Severity::Critical)
    ]
}

fn selector() -> impl Strategy<Value = Selector> {
    let patterns = prop_oneof![
        1 => Just(None),
        1 => Just(Some(Vec::new())),
        4 => proptest::collection::vec(proptest::sample::select(PATTERNS.to_vec()), 1..=3).prop_map(Some),
    ];
    let matchers = proptest::collection::vec(proptest::sample::select(MATCHERS.to_vec()), 0..=2);
    let min_severity = proptest::option::weighted(0.8, severity());
    (patterns, matchers, min_severity).prop_map(|(patterns, matchers, min_severity)| Selector {
        patterns,
        matchers,
        min_severity,
    })
}

fn watchers() -> impl Strategy<Value = Vec<Watcher>> {
    let watcher = (selector(), proptest::option::weighted(0.4, selector()))
        .prop_map(|(default, extra)| Watcher { default, extra });
    proptest::collection::vec(watcher, 4..=6)
}

fn labels() -> impl Strategy<Value = Labels> {
    (
        proptest::sample::select(TENANTS.to_vec()),
        proptest::sample::select(REGIONS.to_vec()),
    )
        .prop_map(|(tenant, region)| Labels { tenant, region })
}

fn publications() -> impl Strategy<Value = Vec<Publication>> {
    let name = proptest::sample::select(NAMES.to_vec());
    let publication = prop_oneof![
        3 => proptest::collection::vec((name.clone(), labels()), 1..=4).prop_map(Publication::Metrics),
        2 => (severity(), proptest::option::of(name), labels()).prop_map(
            |(severity, metric, labels)| Publication::Alert { severity, metric, labels }
        ),
    ];
    proptest::collection::vec(publication, 1..=24)
}

fn label_map(labels: &Labels) -> BTreeMap<String, String> {
    [("tenant", labels.tenant), ("region", labels.region)]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_owned(), value?.to_owned())))
        .collect()
}

fn subscription(selector: &Selector) -> Subscription {
    let mut subscription = Subscription::default();
    if let Some(patterns) = &selector.patterns {
        subscription = subscription.metrics(patterns.iter().copied());
    }
    for matcher in &selector.matchers {
        subscription = subscription.matcher(*matcher);
    }
    match selector.min_severity {
        Some(severity) => subscription.min_severity(severity),
        None => subscription.no_alerts(),
    }
}

// The reference filter: PROTOCOL.md's grammar, written as plainly as possible.

/// `*` stands for any run of characters; every other character stands for itself.
fn reference_glob(pattern: &[char], name: &[char]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some(('*', rest)) => (0..=name.len()).any(|skip| reference_glob(rest, &name[skip..])),
        Some((literal, rest)) => name.first() == Some(literal) && reference_glob(rest, &name[1..]),
    }
}

fn reference_name_matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    reference_glob(&pattern, &name)
}

/// The key ends at the first `=`; a `!` right before it negates; `|` separates alternatives.
fn reference_matcher(matcher: &str, labels: &BTreeMap<String, String>) -> bool {
    let (key, values) = matcher
        .split_once('=')
        .unwrap_or_else(|| panic!("a matcher has an `=`: {matcher}"));
    let (key, negated) = match key.strip_suffix('!') {
        Some(key) => (key, true),
        None => (key, false),
    };
    let one_of = labels
        .get(key)
        .is_some_and(|label| values.split('|').any(|value| value == label));
    one_of != negated
}

/// PROTOCOL.md: a metric matches when its name matches any pattern (none listed: every metric)
/// and its labels satisfy every matcher; an alert when its severity is at least the minimum, its
/// labels satisfy every matcher and, when it names a metric and the selector lists patterns, that
/// name matches one.
fn reference_takes(selector: &Selector, item: &Item) -> bool {
    let labels_pass = |labels: &BTreeMap<String, String>| {
        selector
            .matchers
            .iter()
            .all(|matcher| reference_matcher(matcher, labels))
    };
    let name_passes = |name: &str| match &selector.patterns {
        None => true,
        Some(patterns) => patterns
            .iter()
            .any(|pattern| reference_name_matches(pattern, name)),
    };
    match item {
        Item::Metric { name, labels, .. } => name_passes(name) && labels_pass(labels),
        Item::Alert {
            severity,
            metric,
            labels,
            ..
        } => {
            let listed = selector.patterns.as_ref().is_some_and(|p| !p.is_empty());
            selector.min_severity.is_some_and(|min| *severity >= min)
                && labels_pass(labels)
                && (!listed || metric.as_deref().is_none_or(name_passes))
        }
    }
}

/// The items of a metrics or alert frame, but the markers (labelled `marker`).
fn received_items(frame: &Value) -> Vec<Item> {
    let labels = |value: &Value| -> BTreeMap<String, String> {
        serde_json::from_value(value["labels"].clone()).unwrap_or_default()
    };
    let value = |item: &Value| item["value"].as_f64().map_or(u64::MAX, |v| v as u64);
    let items = match frame["type"].as_str() {
        Some("metrics") => frame["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|metric| Item::Metric {
                name: metric["name"].as_str().unwrap_or_default().to_owned(),
                value: value(metric),
                labels: labels(metric),
            })
            .collect(),
        Some("alert") => {
            let alert = &frame["data"];
            vec![Item::Alert {
                severity: serde_json::from_value(alert["severity"].clone())
                    .unwrap_or_else(|e| panic!("{e}: {frame}")),
                metric: alert["metric"].as_str().map(str::to_owned),
                value: value(alert),
                labels: labels(alert),
            }]
        }
        _ => panic!("neither metrics nor an alert: {frame}"),
    };
    items
        .into_iter()
        .filter(|item| {
            let (Item::Metric { labels, .. } | Item::Alert { labels, .. }) = item;
            !labels.contains_key("marker")
        })
        .collect()
}

/// Publishes `publication` through `worker`, numbering its items from `next_value`; returns the
/// items as published.
async fn publish_numbered(
    worker: &harness::process::WorkerProcess,
    case: usize,
    publication: &Publication,
    next_value: &mut u64,
) -> Vec<Item> {
    let mut numbered = || {
        *next_value += 1;
        *next_value
    };
    match publication {
        Publication::Metrics(batch) => {
            let items: Vec<Item> = batch
                .iter()
                .map(|(name, labels)| Item::Metric {
                    name: (*name).to_owned(),
                    value: numbered(),
                    labels: label_map(labels),
                })
                .collect();
            let body: Vec<Value> = items
                .iter()
                .map(|item| match item {
                    Item::Metric {
                        name,
                        value,
                        labels,
                    } => json!({"name": name, "value": value, "labels": labels}),
                    Item::Alert { .. } => unreachable!("a batch holds metrics"),
                })
                .collect();
            publish(worker.addr, "/api/metrics", &json!(body)).await;
            items
        }
        Publication::Alert {
            severity,
            metric,
            labels,
        } => {
            let value = numbered();
            let mut body = json!({
                "severity": severity,
                "message": format!("case {case} alert {value}"),
                "value": value,
                "labels": label_map(labels),
            });
            if let Some(metric) = metric {
                body["metric"] = json!(metric);
            }
            publish(worker.addr, "/api/alerts", &body).await;
            vec![Item::Alert {
                severity: *severity,
                metric: metric.map(str::to_owned),
                value,
                labels: label_map(labels),
            }]
        }
    }
}

/// Property: on 2 real workers, each of ~6 clients (a connect-time selector, for some a second
/// one by `subscribe`) receives exactly the reference filter of the stream published round-robin
/// through both workers: every item it selects, once, and nothing else. Small alphabets, so
/// that patterns, matchers (negated, alternatives, the empty value), severities and multi-byte
/// names meet often. Each client also holds a `marker` subscription that takes only the case's
/// markers (a label no published item carries), read to prove absence.
#[test]
fn each_client_receives_the_reference_filter_of_the_published_stream() {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let (redis, workers) = runtime.block_on(async {
        let redis = RedisServer::start().await;
        let mut workers = Vec::new();
        for name in ["f1", "f2"] {
            workers.push(start_worker::<Process>(name, On::Redis(&redis.url()), &[]).await);
        }
        (redis, workers)
    });
    let case = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 12,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let result = runner.run(&(watchers(), publications()), |(watchers, stream)| {
        let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (published, received) = runtime.block_on(async {
            let marker = Subscription::default()
                .metrics(["marker"])
                .matcher(format!("marker={case}"));
            let mut clients = Vec::new();
            for (index, watcher) in watchers.iter().enumerate() {
                let default = subscription(&watcher.default);
                let worker = &workers[index % 2];
                let mut client =
                    Client::connect_with(worker.addr, &with_subscription(&default)).await;
                if let Some(extra) = &watcher.extra {
                    client.subscribe("extra", &subscription(extra)).await;
                    expect_subscribed(&mut client, "extra").await;
                }
                client.subscribe("marker", &marker).await;
                expect_subscribed(&mut client, "marker").await;
                clients.push(client);
            }
            let mut published = Vec::new();
            let mut next_value = 0;
            for (index, publication) in stream.iter().enumerate() {
                let worker = &workers[index % 2];
                published
                    .extend(publish_numbered(worker, case, publication, &mut next_value).await);
            }
            let marked = json!({"marker": case.to_string()});
            publish(
                workers[0].addr,
                "/api/metrics",
                &json!([metric("marker", 0.0, marked.clone())]),
            )
            .await;
            publish(
                workers[1].addr,
                "/api/alerts",
                &alert("info", "marker", marked.clone()),
            )
            .await;
            let mut received = Vec::new();
            for mut client in clients {
                let (mut metric_seen, mut alert_seen) = (false, false);
                let frames = frames_until(&mut client, "the markers", |frame| {
                    let marks = |item: &Value| item["labels"] == marked;
                    metric_seen |= frame["type"] == "metrics"
                        && frame["data"]
                            .as_array()
                            .is_some_and(|d| d.iter().any(marks));
                    alert_seen |= frame["type"] == "alert" && marks(&frame["data"]);
                    metric_seen && alert_seen
                })
                .await;
                client.close().await;
                let mut items: Vec<Item> = frames.iter().flat_map(received_items).collect();
                items.sort();
                received.push(items);
            }
            (published, received)
        });
        for ((index, watcher), got) in watchers.iter().enumerate().zip(received) {
            let mut expected: Vec<Item> = published
                .iter()
                .filter(|item| {
                    std::iter::once(&watcher.default)
                        .chain(&watcher.extra)
                        .any(|selector| reference_takes(selector, item))
                })
                .cloned()
                .collect();
            expected.sort();
            prop_assert_eq!(
                got,
                expected,
                "received (left) and the reference (right) of client {} on worker {}: {:?}",
                index,
                workers[index % 2].id,
                watcher
            );
        }
        Ok(())
    });
    // The container and the processes are dropped inside the runtime they were started on.
    runtime.block_on(async move { drop((workers, redis)) });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
