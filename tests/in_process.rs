//! Several workers in one process sharing one in-memory bus: real servers on ephemeral ports,
//! real WebSocket clients, real HTTP. Fast feedback for everything that does not need Redis.
//!
//! Over 400 lines on purpose: a list of independent scenarios on one subject, each readable on
//! its own; what they share lives in `harness/`.

mod harness;

use std::time::Duration;

use fanout_memory::MemoryBus;
use harness::client::{large_messages_reach_every_client_in_order, Ended};
use harness::http::{health, post, publish};
use harness::{clients, start_worker, wait_until, Client, InProcess, On};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn metric(name: &str, value: f64) -> Value {
    json!({ "name": name, "value": value })
}

/// Asserts the next frame is the metrics batch holding exactly `name`.
async fn expect_metric(client: &mut Client, name: &str) -> Value {
    let frame = client.next_frame().await;
    assert_eq!(frame["type"], "metrics", "{frame}");
    assert_eq!(frame["data"][0]["name"], name, "{frame}");
    frame
}

#[tokio::test]
async fn a_metric_posted_to_one_worker_reaches_every_client_of_both_exactly_once() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>("worker-a", On::SharedMemory(&bus), &[]).await;
    let b = start_worker::<InProcess>("worker-b", On::SharedMemory(&bus), &[]).await;
    let mut everyone = clients(&a, 3).await;
    everyone.extend(clients(&b, 3).await);

    publish(a.addr(), "/api/metrics", &metric("cpu", 42.5)).await;
    // A second message, from the other worker, right behind: the next frame after the first
    // must be this one, so a duplicate of the first cannot hide in between.
    publish(b.addr(), "/api/metrics", &metric("marker", 1.0)).await;

    for client in &mut everyone {
        let frame = expect_metric(client, "cpu").await;
        assert_eq!(frame["origin"], "worker-a");
        assert_eq!(frame["data"][0]["value"], 42.5);
        assert_eq!(frame["data"][0]["source"], "worker-a");
        assert!(frame["data"][0]["timestamp"].as_u64().is_some(), "{frame}");
        expect_metric(client, "marker").await;
    }
}

/// Every client gets every message once and in order, whether a message's sends to a group go in
/// one `io_uring` submission (the default) or one `send(2)` each (`--no-io-uring`), with sends
/// cut short (see `large_messages_reach_every_client_in_order`): a frame lent to the ring and
/// taken in part, then the rest, in order, behind it.
#[tokio::test]
async fn every_client_gets_every_message_in_order_with_and_without_io_uring() {
    for flags in [&[][..], &["--no-io-uring"][..]] {
        let args = [flags, &["--client-send-buffer", "4096"][..]].concat();
        let worker = start_worker::<InProcess>("ring", On::OwnMemory, &args).await;
        large_messages_reach_every_client_in_order(worker.addr(), &format!("{flags:?}")).await;
    }
}

#[tokio::test]
async fn an_array_is_one_message_and_an_alert_reaches_clients_with_its_id() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>("worker-a", On::SharedMemory(&bus), &[]).await;
    let b = start_worker::<InProcess>("worker-b", On::SharedMemory(&bus), &[]).await;
    let mut client = Client::connect(b.addr()).await;

    let batch = json!([metric("cpu", 1.0), metric("mem", 2.0)]);
    let receipt = publish(a.addr(), "/api/metrics", &batch).await;
    assert_eq!(receipt["published"], 2);
    let frame = client.next_frame().await;
    assert_eq!(frame["data"].as_array().map(Vec::len), Some(2), "{frame}");

    let alert =
        json!({ "severity": "critical", "message": "disk full", "labels": { "host": "db1" } });
    let receipt = publish(a.addr(), "/api/alerts", &alert).await;
    let frame = client.next_frame().await;
    assert_eq!(frame["type"], "alert");
    assert_eq!(frame["data"]["id"], receipt["id"]);
    assert_eq!(frame["data"]["severity"], "critical");
    assert_eq!(frame["data"]["labels"]["host"], "db1");
}

#[tokio::test]
async fn a_closed_client_is_removed_from_the_count() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>("worker-a", On::SharedMemory(&bus), &[]).await;
    let mut connected = clients(&a, 3).await;
    assert_eq!(a.connections(), 3);
    assert_eq!(health(a.addr()).await["connections"], 3);

    connected
        .pop()
        .map(Client::close)
        .unwrap_or_else(|| unreachable!())
        .await;
    wait_until("the worker counts 2 clients", || async {
        a.connections() == 2
    })
    .await;
    // A client that vanishes without a close handshake is removed as well.
    drop(connected.pop());
    wait_until("the worker counts 1 client", || async {
        a.connections() == 1
    })
    .await;
    assert_eq!(health(a.addr()).await["connections"], 1);

    // The one left still gets messages.
    publish(a.addr(), "/api/metrics", &metric("after", 3.0)).await;
    expect_metric(&mut connected[0], "after").await;
}

#[tokio::test]
async fn bad_publishes_get_clear_errors_and_publish_nothing() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>("worker-a", On::SharedMemory(&bus), &[]).await;
    let mut client = Client::connect(a.addr()).await;
    let json = "application/json";

    let (status, body) = post(a.addr(), "/api/metrics", json, "{\"name\": \"cpu\",").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("invalid JSON")),
        "{body}"
    );

    let (status, body) = post(
        a.addr(),
        "/api/metrics",
        json,
        r#"[{"name":"a","value":1},{"name":"b","value":"high"}]"#,
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("[1].value")),
        "{body}"
    );

    let (status, body) = post(a.addr(), "/api/metrics", json, r#"{"value":1}"#).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("name")),
        "{body}"
    );

    let (status, body) = post(a.addr(), "/api/metrics", json, r#"{"name":"","value":1}"#).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("name")),
        "{body}"
    );

    // JSON has no NaN or infinity; a number too large for f64 is the way to send one.
    let (status, body) = post(
        a.addr(),
        "/api/metrics",
        json,
        r#"{"name":"cpu","value":1e999}"#,
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("value")),
        "{body}"
    );

    let (status, body) = post(
        a.addr(),
        "/api/alerts",
        json,
        r#"{"severity":"fatal","message":"x"}"#,
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("severity")),
        "{body}"
    );

    let (status, _) = post(
        a.addr(),
        "/api/metrics",
        "text/plain",
        r#"{"name":"cpu","value":1}"#,
    )
    .await;
    assert_eq!(status, 415);

    let huge = format!(
        r#"{{"name":"cpu","value":1,"unit":"{}"}}"#,
        "x".repeat(300 * 1024)
    );
    let (status, _) = post(a.addr(), "/api/metrics", json, huge).await;
    assert_eq!(status, 413);

    // None of the refused publishes reached the client: the next frame is this one.
    publish(a.addr(), "/api/metrics", &metric("valid", 1.0)).await;
    expect_metric(&mut client, "valid").await;
}

#[tokio::test]
async fn publishes_of_the_wrong_shape_or_naming_a_source_are_422_with_the_field_named() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>("worker-a", On::SharedMemory(&bus), &[]).await;
    let mut client = Client::connect(a.addr()).await;
    let refusals = [
        // serde's sequence form of a struct: not a metric, not an alert.
        ("/api/metrics", r#"[["name",5]]"#, Some("[0]")),
        ("/api/alerts", r#"["id","info","msg"]"#, None),
        // A missing field is named.
        ("/api/metrics", r#"{"value":1}"#, Some("name")),
        (
            "/api/metrics",
            r#"[{"name":"a","value":1},{"name":"b"}]"#,
            Some("[1].value"),
        ),
        ("/api/alerts", r#"{"severity":"info"}"#, Some("message")),
        // Empty label keys and control characters in names.
        (
            "/api/metrics",
            r#"{"name":"cpu","value":1,"labels":{"":"x"}}"#,
            Some("labels"),
        ),
        (
            "/api/metrics",
            r#"{"name":"cpu\u0007","value":1}"#,
            Some("name"),
        ),
        (
            "/api/metrics",
            r#"{"name":"cpu","unit":"%\n","value":1}"#,
            Some("unit"),
        ),
        (
            "/api/metrics",
            r#"{"name":"cpu","value":1,"labels":{"a\tb":"x"}}"#,
            Some("labels"),
        ),
        (
            "/api/alerts",
            r#"{"severity":"info","message":"m","metric":"cpu\u001b[2J"}"#,
            Some("metric"),
        ),
        // `source` belongs to the server.
        (
            "/api/metrics",
            r#"{"name":"cpu","value":1,"source":"worker-b"}"#,
            Some("source"),
        ),
        (
            "/api/metrics",
            r#"[{"name":"a","value":1},{"name":"b","value":1,"source":"worker-b"}]"#,
            Some("[1].source"),
        ),
        (
            "/api/alerts",
            r#"{"severity":"info","message":"m","source":"worker-b"}"#,
            Some("source"),
        ),
    ];
    for (path, body, field) in refusals {
        let (status, answer) = post(a.addr(), path, "application/json", body).await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (422, field),
            "{path} {body}: {answer}"
        );
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    let (_, answer) = post(
        a.addr(),
        "/api/metrics",
        "application/json",
        r#"{"name":"cpu","value":1,"source":"worker-b"}"#,
    )
    .await;
    assert_eq!(answer["error"], "source is set by the server", "{answer}");

    // None of them was published: the next frame is this one, attributed to the worker.
    publish(a.addr(), "/api/metrics", &metric("valid", 1.0)).await;
    let frame = expect_metric(&mut client, "valid").await;
    assert_eq!(frame["data"][0]["source"], "worker-a", "{frame}");
}

#[tokio::test]
async fn a_client_sending_garbage_is_closed_with_the_proper_code_and_nobody_else_notices() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>("worker-a", On::SharedMemory(&bus), &[]).await;
    let mut bystander = Client::connect(a.addr()).await;

    let mut binary = Client::connect(a.addr()).await;
    binary.send(Message::Binary(vec![0xde, 0xad].into())).await;
    assert_eq!(binary.ended().await, Ended::Close(Some(1003)));

    let mut too_big = Client::connect(a.addr()).await;
    too_big
        .send(Message::Text("x".repeat(128 * 1024).into()))
        .await;
    assert_eq!(too_big.ended().await, Ended::Close(Some(1009)));

    let mut invalid_utf8 = Client::connect(a.addr()).await;
    invalid_utf8
        .send_raw_text_frame(&[0x66, 0xff, 0xfe, 0x6f])
        .await;
    assert_eq!(invalid_utf8.ended().await, Ended::Close(Some(1007)));

    let mut chatty = Client::connect(a.addr()).await;
    chatty.send(Message::Text("not json at all".into())).await;

    wait_until("the closed clients are removed", || async {
        a.connections() == 2
    })
    .await;
    // Text that is not a request is answered with an error frame, and the client stays.
    let answer = chatty.next_frame().await;
    assert_eq!(
        (&answer["type"], &answer["id"], &answer["field"]),
        (&json!("error"), &Value::Null, &Value::Null),
        "{answer}"
    );
    publish(a.addr(), "/api/metrics", &metric("still-here", 1.0)).await;
    expect_metric(&mut bystander, "still-here").await;
    expect_metric(&mut chatty, "still-here").await;
}

#[tokio::test]
async fn the_built_in_monitor_publishes_every_interval() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>(
        "worker-a",
        On::SharedMemory(&bus),
        &["--metrics-interval", "100ms"],
    )
    .await;
    let mut client = Client::connect(a.addr()).await;
    for _ in 0..2 {
        let frame = client.next_frame().await;
        assert_eq!(frame["type"], "metrics", "{frame}");
        let names: Vec<&str> = frame["data"]
            .as_array()
            .map(|data| data.iter().filter_map(|m| m["name"].as_str()).collect())
            .unwrap_or_default();
        for expected in [
            "host.cpu_percent",
            "process.rss_bytes",
            "fanout.connections",
        ] {
            assert!(names.contains(&expected), "{expected} missing from {frame}");
        }
    }
}

#[tokio::test]
async fn shutdown_closes_every_client_with_1001() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>("worker-a", On::SharedMemory(&bus), &[]).await;
    let mut connected = clients(&a, 2).await;
    a.shutdown();
    for client in &mut connected {
        assert_eq!(client.ended().await, Ended::Close(Some(1001)));
    }
    drop(connected);
    harness::within("the worker to stop", a.wait())
        .await
        .unwrap_or_else(|e| panic!("worker failed: {e:#}"));
}

#[tokio::test]
async fn a_new_client_gets_the_latest_value_of_each_metric_at_once() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>("worker-a", On::SharedMemory(&bus), &[]).await;
    let b = start_worker::<InProcess>("worker-b", On::SharedMemory(&bus), &[]).await;
    let mut first = Client::connect(a.addr()).await;
    publish(b.addr(), "/api/metrics", &metric("cpu", 10.0)).await;
    publish(
        b.addr(),
        "/api/metrics",
        &json!([metric("cpu", 20.0), metric("mem", 5.0)]),
    )
    .await;
    expect_metric(&mut first, "cpu").await;
    expect_metric(&mut first, "cpu").await;

    let late = Client::connect(a.addr()).await;
    let latest: Vec<(String, f64)> = late.snapshot["data"]
        .as_array()
        .map(|data| {
            data.iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or_default().to_owned(),
                        m["value"].as_f64().unwrap_or(-1.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(latest, [("cpu".to_owned(), 20.0), ("mem".to_owned(), 5.0)]);
}

#[tokio::test]
async fn a_client_resuming_from_beyond_the_retention_is_told_what_it_missed() {
    let bus = MemoryBus::with_retention(2);
    let a = start_worker::<InProcess>("worker-a", On::SharedMemory(&bus), &[]).await;
    let mut watcher = Client::connect(a.addr()).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        publish(
            a.addr(),
            "/api/alerts",
            &json!({ "severity": "info", "message": format!("a{n}") }),
        )
        .await;
        ids.push(
            watcher.next_frame().await["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    // a0 and a1 were trimmed: a client that last saw a0 missed a1 for good, and is told so.
    let mut late = Client::resume(a.addr(), &ids[0]).await;
    assert_eq!(late.resume["complete"], false, "{}", late.resume);
    assert_eq!(late.resume["replayed"], 2);
    assert_eq!(late.next_frame().await["data"]["message"], "a2");
    assert_eq!(late.next_frame().await["data"]["message"], "a3");
    // A client that saw a1 missed nothing that was trimmed.
    let on_time = Client::resume(a.addr(), &ids[1]).await;
    assert_eq!(on_time.resume["complete"], true, "{}", on_time.resume);

    // A malformed id is refused before the upgrade.
    let url = format!("ws://{}/ws/performance?last_alert_id=yesterday", a.addr());
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!(
            "expected 400, got {:?}",
            other.map(|(_, response)| response.status())
        ),
    }
}

#[tokio::test]
async fn a_client_that_does_not_answer_pings_is_closed_with_4001() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>(
        "worker-a",
        On::SharedMemory(&bus),
        &["--ping-interval", "100ms", "--client-timeout", "500ms"],
    )
    .await;
    // This client reads nothing after its greeting, so its library never answers the pings.
    let mut silent = Client::connect(a.addr()).await;
    wait_until("the silent client is dropped", || async {
        a.connections() == 0
    })
    .await;
    assert_eq!(silent.ended().await, Ended::Close(Some(4001)));

    // A client that keeps reading answers the pings and stays.
    let mut listening = Client::connect(a.addr()).await;
    let reader = tokio::spawn(async move {
        let frame = listening.next_frame().await;
        (listening, frame)
    });
    tokio::time::sleep(Duration::from_secs(1)).await; // the scenario: two client timeouts pass
    assert_eq!(
        a.connections(),
        1,
        "a client answering pings must not be closed"
    );
    publish(a.addr(), "/api/metrics", &metric("alive", 1.0)).await;
    let (_, frame) = reader.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(frame["data"][0]["name"], "alive");
}

#[tokio::test]
async fn every_refusal_has_a_json_body_even_from_routing_and_extractors() {
    let bus = MemoryBus::new();
    let a = start_worker::<InProcess>("worker-a", On::SharedMemory(&bus), &[]).await;
    let addr = a.addr();
    let http = reqwest::Client::new();
    let upgrade_headers = |request: reqwest::RequestBuilder| {
        request
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    };
    let cases = [
        (
            "a duplicated query parameter",
            upgrade_headers(http.get(format!(
                "http://{addr}/ws/performance?last_alert_id=1-0&last_alert_id=2-0"
            ))),
            400,
        ),
        (
            "a plain GET of the WebSocket route",
            http.get(format!("http://{addr}/ws/performance")),
            400,
        ),
        (
            "an unknown path",
            http.get(format!("http://{addr}/nope")),
            404,
        ),
        (
            "a method the route does not take",
            http.put(format!("http://{addr}/api/alerts")),
            405,
        ),
    ];
    for (what, request, status) in cases {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(response.status().as_u16(), status, "{what}");
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: the body is not JSON: {e}"));
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
    }
}
