//! Server-Sent Events (`GET /sse/performance`, docs/PROTOCOL.md "Server-Sent Events") from the
//! outside: a real streaming HTTP client (reqwest, read chunk by chunk) against real workers —
//! `fanout` processes on one Redis, or in-process workers — checked against the wire form the
//! contract fixes: the events a WebSocket client of the same query gets, alert ids, resume with
//! `Last-Event-ID`, heartbeats, the slow-consumer close, refusals, the connection cap, shutdown.
//!
//! Over 400 lines on purpose: a list of independent scenarios on one subject, each readable on
//! its own; what they share lives in `harness/` (`harness/sse.rs` is the SSE client).

mod harness;

use std::time::{Duration, Instant};

use fanout_client::{ConnectOptions, Subscription};
use fanout_domain::Severity;
use harness::auth::{forged_token, now, token, SECRET};
use harness::http::{health, post, publish};
use harness::raw::upgrade_status;
use harness::redis::RedisServer;
use harness::sse::{get, Block, Next, SseClient};
use harness::{start_worker, wait_until, within, Client, InProcess, On, Process};
use serde_json::{json, Value};

/// The events up to and including the `metrics` event whose first item is named `marker`.
async fn sse_until(client: &mut SseClient, marker: &str) -> Vec<Block> {
    let mut events = Vec::new();
    loop {
        let event = client.next_event().await;
        let done = event.event() == Some("metrics") && event.data()["data"][0]["name"] == marker;
        events.push(event);
        if done {
            return events;
        }
    }
}

/// The frames up to and including the `metrics` frame whose first item is named `marker`.
async fn ws_until(client: &mut Client, marker: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = client.next_frame().await;
        let done = frame["type"] == "metrics" && frame["data"][0]["name"] == marker;
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// An alert event's `id:` line as the contract writes it: `ID/EPOCH` from its JSON.
fn id_line_of(data: &Value) -> String {
    format!(
        "{}/{}",
        data["id"].as_str().unwrap_or_default(),
        data["epoch"].as_str().unwrap_or_default()
    )
}

#[tokio::test]
async fn events_carry_the_json_a_websocket_client_of_the_same_query_receives() {
    let redis = RedisServer::start().await;
    let a = start_worker::<Process>("sse-a", On::Redis(&redis.url()), &[]).await;
    let b = start_worker::<Process>("sse-b", On::Redis(&redis.url()), &[]).await;
    let selector = Subscription::default()
        .metrics(["api.*"])
        .matcher("service=checkout")
        .min_severity(Severity::Warning);
    let query = format!("?{}", selector.query().unwrap_or_else(|e| panic!("{e}")));
    let mut sse = SseClient::greeted(a.addr, &query, &[]).await;
    let options = ConnectOptions {
        subscription: Some(&selector),
        ..ConnectOptions::default()
    };
    let mut ws = Client::connect_with(a.addr, &options).await;
    assert_eq!(sse.hello["worker"], "sse-a");
    assert_eq!(sse.hello["bus"]["state"], "subscribed");
    assert_eq!(sse.snapshot, ws.snapshot);

    // Published on the other worker: through Redis. A batch the selector splits, an alert it
    // takes, one below its severity, then a marker.
    let checkout = json!({ "service": "checkout" });
    publish(
        b.addr,
        "/api/metrics",
        &json!([
            { "name": "api.latency_ms", "value": 12.5, "labels": checkout },
            { "name": "api.latency_ms", "value": 80, "labels": { "service": "search" } },
            { "name": "host.cpu_percent", "value": 50, "labels": checkout },
        ]),
    )
    .await;
    for (severity, message) in [("warning", "slow checkout"), ("info", "fyi")] {
        publish(
            b.addr,
            "/api/alerts",
            &json!({ "severity": severity, "message": message, "labels": checkout }),
        )
        .await;
    }
    publish(
        b.addr,
        "/api/metrics",
        &json!({ "name": "api.marker", "value": 1, "labels": checkout }),
    )
    .await;

    let events = sse_until(&mut sse, "api.marker").await;
    let frames = ws_until(&mut ws, "api.marker").await;
    let data: Vec<Value> = events.iter().map(Block::data).collect();
    assert_eq!(
        data, frames,
        "the SSE events' JSON is the WebSocket frames'"
    );
    let names: Vec<&str> = events.iter().filter_map(Block::event).collect();
    assert_eq!(names, ["metrics", "alert", "metrics"]);
    assert_eq!(data[0]["data"].as_array().map(Vec::len), Some(1), "split");
    assert_eq!(data[1]["data"]["message"], "slow checkout");
    for event in &events {
        let data = event.data();
        assert_eq!(event.event(), data["type"].as_str(), "named by its type");
        let expected = (data["type"] == "alert").then(|| id_line_of(&data));
        assert_eq!(event.id().map(str::to_owned), expected, "{event:?}");
        assert_eq!(event.lines.len(), 2 + usize::from(expected.is_some()));
    }
}

#[tokio::test]
async fn last_event_id_resumes_after_its_alert_and_wins_over_the_query() {
    let redis = RedisServer::start().await;
    let a = start_worker::<Process>("sse-a", On::Redis(&redis.url()), &[]).await;
    let b = start_worker::<Process>("sse-b", On::Redis(&redis.url()), &[]).await;
    let mut live = SseClient::greeted(a.addr, "", &[]).await;
    for n in 0..3 {
        publish(
            b.addr,
            "/api/alerts",
            &json!({ "severity": "warning", "message": format!("alert {n}") }),
        )
        .await;
    }
    let mut alerts = Vec::new();
    while alerts.len() < 3 {
        let event = live.next_event().await;
        if event.event() == Some("alert") {
            alerts.push(event);
        }
    }
    let ids: Vec<String> = alerts
        .iter()
        .map(|a| a.id().unwrap_or_default().to_owned())
        .collect();
    let (first_id, epoch) = ids[0]
        .split_once('/')
        .unwrap_or_else(|| panic!("{}", ids[0]));
    let (third_id, _) = ids[2]
        .split_once('/')
        .unwrap_or_else(|| panic!("{}", ids[2]));

    // The header alone, on either worker (the log is shared); the header over a query that says
    // "after the third"; the bare id; the query alone.
    let after_third = format!("?last_alert_id={third_id}&epoch={epoch}");
    let bare = format!("?last_alert_id={third_id}");
    let query_only = format!("?last_alert_id={first_id}&epoch={epoch}");
    let resumes = [
        (a.addr, Some(ids[0].as_str()), ""),
        (b.addr, Some(ids[0].as_str()), ""),
        (a.addr, Some(ids[0].as_str()), after_third.as_str()),
        (a.addr, Some(first_id), bare.as_str()),
        (a.addr, None, query_only.as_str()),
    ];
    for (addr, header, query) in resumes {
        let headers: Vec<(&str, &str)> = header.map(|h| ("last-event-id", h)).into_iter().collect();
        let mut resumed = SseClient::greeted(addr, query, &headers).await;
        let resume = resumed.next_event().await;
        assert_eq!(resume.event(), Some("resume"), "{header:?} {query}");
        assert_eq!(resume.id(), None);
        let resume = resume.data();
        assert_eq!(resume["after"], first_id, "{header:?} {query}");
        assert_eq!(resume["replayed"], 2, "{header:?} {query}: {resume}");
        assert_eq!(resume["complete"], true, "{resume}");
        for expected in &alerts[1..] {
            let replayed = resumed.next_event().await;
            assert_eq!(&replayed, expected, "replayed as it was sent live");
        }
    }

    // Incomplete: the id of another log (another epoch): the whole log is replayed.
    let other_log = format!("{first_id}/{}", "f".repeat(16));
    assert_ne!(epoch, "f".repeat(16));
    let mut resumed = SseClient::greeted(a.addr, "", &[("last-event-id", &other_log)]).await;
    let resume = resumed.next_event().await.data();
    assert_eq!(resume["complete"], false, "{resume}");
    assert_eq!(resume["epoch"], epoch, "{resume}");
    assert_eq!(resume["replayed"], 3, "{resume}");

    // A malformed header is refused before the stream, naming the header.
    for malformed in ["yesterday", "1-0/not+an+epoch", "/"] {
        let response = get(a.addr, "", &[("last-event-id", malformed)]).await;
        assert_eq!(response.status(), 400, "{malformed}");
        let body: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body["field"], "Last-Event-ID", "{body}");
        assert!(body["error"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn heartbeats_are_comments_and_a_silent_client_outlives_the_client_timeout() {
    let args = ["--ping-interval", "100ms", "--client-timeout", "300ms"];
    let a = start_worker::<InProcess>("sse-a", On::OwnMemory, &args).await;
    let mut client = SseClient::greeted(a.addr(), "", &[]).await;
    let started = Instant::now();
    // An SSE client never answers: 12 heartbeats span four client timeouts.
    for _ in 0..12 {
        let block = client.next_block().await;
        assert_eq!(block.lines, [": ping"], "only heartbeats, no close");
    }
    assert!(started.elapsed() > Duration::from_millis(1000));
    publish(
        a.addr(),
        "/api/metrics",
        &json!({ "name": "after", "value": 1 }),
    )
    .await;
    let event = client.next_event().await;
    assert_eq!(event.data()["data"][0]["name"], "after", "still served");
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_with_4008_after_its_queue_bound() {
    let redis = RedisServer::start().await;
    let args = [
        "--client-queue-messages",
        "16",
        "--client-send-buffer",
        "4096",
        "--client-timeout",
        "30s",
        "--ping-interval",
        "200ms",
    ];
    let worker = start_worker::<Process>("sse-a", On::Redis(&redis.url()), &args).await;
    let mut slow = SseClient::greeted(worker.addr, "", &[]).await;
    // Heartbeats every 200 ms go on meanwhile: one the stalled client's socket still takes is
    // no progress (an outside tester found pings kept such a client from ever being closed).
    // It reads nothing more. Each message is 4 KB (16 metrics): after the buffers between the
    // worker and it (the pipe, hyper's, the kernel's: a few hundred KB) its queue fills, and a
    // queue's worth of dropped metrics closes it.
    let pad = "x".repeat(200);
    let mut published = 0u64;
    let mut closed = false;
    while published < 2000 && !closed {
        for _ in 0..25 {
            let batch: Vec<Value> = (0..16)
                .map(|i| json!({ "name": "load", "value": published, "labels": { "i": i.to_string(), "pad": pad } }))
                .collect();
            let (status, answer) = post(
                worker.addr,
                "/api/metrics",
                "application/json",
                json!(batch).to_string(),
            )
            .await;
            if status != 202 {
                // Its only client closed, the worker unsubscribes, and a publish racing that is
                // refused with 503 (PROTOCOL.md): only then.
                assert_eq!(
                    health(worker.addr).await["delivery"]["slow_consumers_closed"],
                    1,
                    "refused with {status} before the close: {answer}"
                );
                break;
            }
            published += 1;
        }
        closed = health(worker.addr).await["delivery"]["slow_consumers_closed"] == 1;
    }
    assert!(closed, "not closed after {published} messages");
    let delivery = health(worker.addr).await["delivery"].clone();
    // Metrics were dropped before the close: the queue stayed within its bound.
    assert!(delivery["dropped_metrics"].as_u64() > Some(0), "{delivery}");
    // It reads again: what the buffers held, then the close event, then the end.
    let mut received = 0u64;
    let close = loop {
        match slow.next().await {
            Next::Block(block) if block.event() == Some("metrics") => received += 1,
            Next::Block(block) if block.event() == Some("close") => break block.data(),
            Next::Block(block) => assert!(block.is_comment(), "{block:?}"),
            end => panic!("the stream ended without a close event: {end:?}"),
        }
    };
    assert_eq!(
        close,
        json!({ "code": 4008, "reason": "slow consumer: queue overflow" })
    );
    assert!(matches!(slow.next().await, Next::End), "the stream ends");
    assert!(
        received + 16 <= published,
        "{received} of {published} arrived: nothing was dropped"
    );
    eprintln!("slow SSE client: {received} of {published} messages arrived before the close");
    wait_until("the slow client is unregistered", || async {
        health(worker.addr).await["connections"] == 0
    })
    .await;
}

/// OPERATIONS.md: a client given up (4008) that then reads nothing of the rest of its stream
/// holds no connection: after `--client-timeout` the worker hangs up, and the client, reading at
/// last, finds the stream cut before its `close` event (which could not get through).
#[tokio::test]
async fn a_given_up_client_that_reads_nothing_is_hung_up_on_after_the_client_timeout() {
    let args = [
        "--client-queue-messages",
        "16",
        "--client-send-buffer",
        "4096",
        "--client-timeout",
        "1s",
        "--ping-interval",
        "500ms",
    ];
    let worker = start_worker::<InProcess>("sse-h", On::OwnMemory, &args).await;
    let mut slow = SseClient::greeted(worker.addr(), "", &[]).await;
    let pad = "x".repeat(200);
    let mut published = 0u64;
    while published < 4000 && health(worker.addr()).await["delivery"]["slow_consumers_closed"] != 1
    {
        for _ in 0..25 {
            let batch: Vec<Value> = (0..16)
                .map(|i| json!({ "name": "load", "value": published, "labels": { "i": i.to_string(), "pad": pad } }))
                .collect();
            publish(worker.addr(), "/api/metrics", &json!(batch)).await;
            published += 1;
        }
    }
    wait_until(
        "the worker hangs up on the client that reads nothing",
        || async { health(worker.addr()).await["delivery"]["hung_up"] == 1 },
    )
    .await;
    loop {
        match slow.next().await {
            Next::Block(block) if block.event() == Some("close") => {
                panic!("the close event got through to a client that read nothing: {block:?}")
            }
            Next::Block(_) => {}
            Next::End => panic!("the stream ended cleanly: it was to be cut"),
            Next::Cut(_) => break,
        }
    }
    assert_eq!(health(worker.addr()).await["connections"], 0);
}

/// The status and JSON body of a refused `GET /sse/performance`.
async fn refusal(
    addr: std::net::SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let response = get(addr, query, headers).await;
    let status = response.status().as_u16();
    let content_type = harness::http::header(&response, "content-type");
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "{status}"
    );
    let body: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(body["error"].is_string(), "{body}");
    (status, body)
}

#[tokio::test]
async fn refusals_come_before_the_stream_and_an_sse_client_holds_a_connection_slot() {
    let args = [
        "--auth-secret",
        SECRET,
        "--max-connections",
        "1",
        "--allowed-origin",
        "https://dash.example",
    ];
    let a = start_worker::<InProcess>("sse-a", On::OwnMemory, &args).await;
    let reader = token(json!({ "sub": "dash", "exp": now() + 600 }));
    let bearer = format!("Bearer {reader}");
    let forged = forged_token();
    let no_channel = token(json!({ "sub": "x", "exp": now() + 600, "channels": [] }));
    let with_token = format!("?token={reader}");
    let bad_selector = format!("?token={reader}&metrics=api.*,");
    assert_eq!(refusal(a.addr(), "", &[]).await.0, 401, "no token");
    assert_eq!(
        refusal(a.addr(), &format!("?token={forged}"), &[]).await.0,
        401,
        "bad signature"
    );
    assert_eq!(
        refusal(
            a.addr(),
            "",
            &[("authorization", &format!("Bearer {no_channel}"))]
        )
        .await
        .0,
        403,
        "no channel"
    );
    assert_eq!(
        refusal(a.addr(), &with_token, &[("origin", "https://evil.example")])
            .await
            .0,
        403,
        "origin"
    );
    let (status, body) = refusal(a.addr(), &bad_selector, &[]).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("metrics")));

    // A token in the query, an allowed origin: the stream; it holds the only slot.
    let first =
        SseClient::greeted(a.addr(), &with_token, &[("origin", "https://dash.example")]).await;
    assert_eq!(first.hello["connections"], 1);
    let (status, body) = refusal(a.addr(), "", &[("authorization", &bearer)]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        upgrade_status(a.addr(), "", &[("authorization", &bearer)]).await,
        503,
        "one cap for both transports"
    );
    drop(first);
    wait_until("the slot of the client that left is free", || async {
        health(a.addr()).await["connections"] == 0
    })
    .await;
    let again = SseClient::greeted(a.addr(), "", &[("authorization", &bearer)]).await;
    assert_eq!(again.hello["connections"], 1);
}

#[tokio::test]
async fn an_expiring_token_ends_the_stream_with_close_4003() {
    let a = start_worker::<InProcess>("sse-a", On::OwnMemory, &["--auth-secret", SECRET]).await;
    let brief = token(json!({ "sub": "brief", "exp": now() + 2 }));
    let mut client = SseClient::greeted(a.addr(), &format!("?token={brief}"), &[]).await;
    let (close, end) = client.closed().await;
    assert_eq!(
        close,
        Some(json!({ "code": 4003, "reason": "token expired" }))
    );
    assert!(matches!(end, Next::End), "{end:?}");
}

#[tokio::test]
async fn shutdown_ends_every_stream_with_close_1001() {
    let a = start_worker::<InProcess>("sse-a", On::OwnMemory, &[]).await;
    let mut first = SseClient::greeted(a.addr(), "", &[]).await;
    let mut second = SseClient::greeted(a.addr(), "?alerts=critical", &[]).await;
    a.shutdown();
    for client in [&mut first, &mut second] {
        let (close, end) = client.closed().await;
        assert_eq!(
            close,
            Some(json!({ "code": 1001, "reason": "server shutting down" }))
        );
        assert!(matches!(end, Next::End), "{end:?}");
    }
    within("the worker to stop", a.wait())
        .await
        .unwrap_or_else(|e| panic!("worker failed: {e:#}"));
}

#[tokio::test]
async fn a_client_that_never_reads_cannot_hold_up_shutdown() {
    let args = [
        "--client-send-buffer",
        "4096",
        "--client-timeout",
        "60s",
        "--shutdown-timeout",
        "1s",
    ];
    let a = start_worker::<InProcess>("sse-a", On::OwnMemory, &args).await;
    let _stalled = SseClient::greeted(a.addr(), "", &[]).await;
    // It reads nothing more; metrics until its socket, and then its queue, are full.
    let pad = "x".repeat(200);
    let mut published = 0;
    while health(a.addr()).await["delivery"]["dropped_metrics"] == 0 {
        assert!(published < 2000, "the client's queue never filled");
        let batch: Vec<Value> = (0..16)
            .map(|i| json!({ "name": "load", "value": i, "labels": { "i": i.to_string(), "pad": pad } }))
            .collect();
        publish(a.addr(), "/api/metrics", &json!(batch)).await;
        published += 1;
    }
    a.shutdown();
    // Its close event cannot get through; the worker stops after --shutdown-timeout anyway.
    within("the worker to stop", a.wait())
        .await
        .unwrap_or_else(|e| panic!("worker failed: {e:#}"));
}
