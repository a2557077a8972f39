//! The Rust client library (`fanout-client`) against real in-process workers: the reconnecting
//! stream follows a worker's shutdown to another worker and resumes without losing or repeating
//! an alert, and publishing reports each refusal as its own error.

mod harness;

use std::time::Duration;

use fanout_client::{Backoff, CloseCode, Event, Events, PublishError, Publisher, Watch};
use fanout_domain::{Alert, LogId, Metric, Severity};
use fanout_memory::MemoryBus;
use futures_util::StreamExt;
use harness::worker::{http_url, ws_url};
use harness::{free_port, start_worker, within, InProcess, On};

/// The next event that `wanted` picks, skipping the others (connection attempts, snapshots).
async fn next_matching<T>(
    events: &mut Events,
    what: &str,
    mut wanted: impl FnMut(Event) -> Option<T>,
) -> T {
    within(what, async {
        loop {
            let event = events
                .next()
                .await
                .unwrap_or_else(|| panic!("the event stream ended before {what}"));
            if let Some(found) = wanted(event) {
                return found;
            }
        }
    })
    .await
}

fn publisher(worker: &impl harness::worker::Address) -> Publisher {
    Publisher::new(&http_url(worker)).unwrap_or_else(|e| panic!("{e}"))
}

fn alert(message: &str) -> Alert {
    Alert::new(Severity::Warning, message).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn after_a_worker_shuts_down_the_stream_resumes_on_another_with_exactly_the_missed_alert() {
    let bus = MemoryBus::new();
    let first = start_worker::<InProcess>("first", On::SharedMemory(&bus), &[]).await;
    // Publishes while the client has no worker to be connected to; not in the client's list.
    let outside = start_worker::<InProcess>("outside", On::SharedMemory(&bus), &[]).await;
    // The worker the client fails over to, started only once the client missed an alert.
    let second_port = free_port().to_string();
    let second_url = format!("ws://127.0.0.1:{second_port}");

    let mut events = Watch::new([ws_url(&first), second_url.clone()])
        .backoff(Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
        ))
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let hello = next_matching(
        &mut events,
        "connected to the first worker",
        |event| match event {
            Event::Connected { hello, .. } => Some(hello),
            _ => None,
        },
    )
    .await;
    assert_eq!(hello.worker.as_str(), "first");

    let seen = publisher(&outside)
        .send_alert(&alert("seen live"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let live = next_matching(&mut events, "the live alert", |event| match event {
        Event::Alert(frame) => Some(frame),
        _ => None,
    })
    .await;
    assert_eq!(live.alert.message(), "seen live");
    assert_eq!(live.id, seen.log_id);

    first.shutdown();
    let code = next_matching(
        &mut events,
        "the first worker's close",
        |event| match event {
            Event::Disconnected { code, .. } => Some(code),
            _ => None,
        },
    )
    .await;
    assert_eq!(code, Some(CloseCode::GoingAway));

    let missed = publisher(&outside)
        .send_alert(&alert("missed while away"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let second = start_worker::<InProcess>(
        "second",
        On::SharedMemory(&bus),
        &["--listen", &format!("127.0.0.1:{second_port}")],
    )
    .await;

    let (url, hello) =
        next_matching(
            &mut events,
            "connected to the second worker",
            |event| match event {
                Event::Connected { url, hello } => Some((url, hello)),
                _ => None,
            },
        )
        .await;
    assert_eq!((url, hello.worker.as_str()), (second_url, "second"));
    let resume = next_matching(&mut events, "the resume", |event| match event {
        Event::Resumed(resume) => Some(resume),
        Event::ResumeIncomplete(resume) => panic!("nothing was trimmed: {resume:?}"),
        _ => None,
    })
    .await;
    assert_eq!(resume.after, live.id.unwrap_or(LogId::ZERO));
    assert_eq!(resume.replayed, 1);
    let replayed = next_matching(&mut events, "the replayed alert", |event| match event {
        Event::Alert(frame) => Some(frame),
        _ => None,
    })
    .await;
    assert_eq!(replayed.alert.message(), "missed while away");
    assert_eq!(replayed.id, missed.log_id);

    // The next alert comes live, once: the replayed one is not delivered again.
    publisher(&second)
        .send_alert(&alert("after the resume"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let next = next_matching(&mut events, "the next live alert", |event| match event {
        Event::Alert(frame) => Some(frame),
        _ => None,
    })
    .await;
    assert_eq!(next.alert.message(), "after the resume");
}

#[tokio::test]
async fn a_resume_after_the_log_was_trimmed_is_reported_incomplete() {
    let bus = MemoryBus::with_retention(2);
    let worker = start_worker::<InProcess>("w", On::SharedMemory(&bus), &[]).await;
    let publisher = publisher(&worker);
    let first = publisher
        .send_alert(&alert("trimmed soon"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let position = fanout_client::Position {
        id: first.log_id.unwrap_or_else(|| panic!("no log id")),
        epoch: None,
    };
    for message in ["two", "three", "four"] {
        publisher
            .send_alert(&alert(message))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    let mut events = Watch::new([ws_url(&worker)])
        .resume_from(position)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let resume = next_matching(&mut events, "the resume", |event| match event {
        Event::ResumeIncomplete(resume) => Some(resume),
        Event::Resumed(resume) => panic!("\"two\" was trimmed: {resume:?}"),
        _ => None,
    })
    .await;
    assert_eq!(resume.replayed, 2, "the retention holds two alerts");
}

#[tokio::test]
async fn publish_refusals_are_typed_with_the_field_and_the_retry_delay() {
    let worker = start_worker::<InProcess>("w", On::OwnMemory, &["--publish-rate", "2"]).await;
    let publisher = publisher(&worker);

    // A metric received from a worker carries its source, which only the server may set.
    let received: Metric = serde_json::from_str(r#"{"name":"cpu","value":1,"source":"w"}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    let own = Metric::new("cpu", 2.0).unwrap_or_else(|e| panic!("{e}"));
    match publisher.send_metrics(&[own.clone(), received]).await {
        Err(PublishError::Invalid { field, .. }) => {
            assert_eq!(field.as_deref(), Some("[1].source"))
        }
        other => panic!("expected 422, got {other:?}"),
    }

    // The refusal counted against the rate (it is checked before the body); publish until the
    // rate refuses.
    let mut refusal = None;
    for _ in 0..4 {
        match publisher.send_metrics(std::slice::from_ref(&own)).await {
            Ok(receipt) => assert_eq!(receipt.published, 1),
            Err(error) => {
                refusal = Some(error);
                break;
            }
        }
    }
    match refusal {
        Some(PublishError::RateLimited { retry_after, .. }) => assert!(
            retry_after.is_some_and(|delay| delay >= Duration::from_secs(1)),
            "{retry_after:?}"
        ),
        other => panic!("expected 429 within four publishes at 2/s, got {other:?}"),
    }
}

#[tokio::test]
async fn a_worker_with_authentication_refuses_a_publisher_without_a_token() {
    let worker = start_worker::<InProcess>(
        "w",
        On::OwnMemory,
        &["--auth-secret", "test-secret-of-at-least-32-bytes!"],
    )
    .await;
    match publisher(&worker).send_alert(&alert("who am I")).await {
        Err(PublishError::Unauthorized { error }) => assert!(!error.is_empty()),
        other => panic!("expected 401, got {other:?}"),
    }
}
