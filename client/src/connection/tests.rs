//! Session URLs, the handshake's request, refusals, and the requests sent on an open
//! connection, against a loopback WebSocket server.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use super::*;

fn position(epoch: Option<&str>) -> Position {
    Position {
        id: LogId::new(1_764_380_000_456, 0),
        epoch: epoch.map(|e| LogEpoch::new(e).unwrap_or_else(|e| panic!("{e}"))),
    }
}

fn url(base: &str, resume: Option<&Position>) -> String {
    session_url(base, resume).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn buffers_set_only_the_buffer_sizes() {
    let library = WebSocketConfig::default();
    let small = Buffers::SMALL.config();
    assert_eq!(
        (small.read_buffer_size, small.write_buffer_size),
        (8 * 1024, 0)
    );
    assert_eq!(small.max_write_buffer_size, library.max_write_buffer_size);
    assert_eq!(small.max_message_size, library.max_message_size);
    assert_eq!(small.max_frame_size, library.max_frame_size);
    let default = Buffers::default().config();
    assert_eq!(
        (default.read_buffer_size, default.write_buffer_size),
        (library.read_buffer_size, library.write_buffer_size)
    );
}

#[test]
fn a_worker_address_gets_the_route() {
    assert_eq!(
        url("ws://127.0.0.1:8080", None),
        "ws://127.0.0.1:8080/ws/performance"
    );
    assert_eq!(
        url("ws://127.0.0.1:8080/", None),
        "ws://127.0.0.1:8080/ws/performance"
    );
    assert_eq!(
        url("wss://example.com/ws/performance", None),
        "wss://example.com/ws/performance"
    );
}

#[test]
fn a_resume_passes_the_id_and_the_epoch() {
    assert_eq!(
        url("ws://h:1", Some(&position(Some("3f9a0c1e5b7d2468")))),
        "ws://h:1/ws/performance?last_alert_id=1764380000456-0&epoch=3f9a0c1e5b7d2468"
    );
    assert_eq!(
        url("ws://h:1", Some(&position(None))),
        "ws://h:1/ws/performance?last_alert_id=1764380000456-0"
    );
}

#[test]
fn a_subscription_follows_the_resume_position_in_the_query() {
    let subscription = Subscription::default()
        .metrics(["api.*"])
        .matcher("env=prod|staging")
        .interval(std::time::Duration::from_millis(250));
    let with = |resume| url_with("ws://h:1", resume, Some(&subscription));
    assert_eq!(
        with(None).unwrap_or_else(|e| panic!("{e}")),
        "ws://h:1/ws/performance?metrics=api.*&where=env%3Dprod%7Cstaging&interval=250ms"
    );
    assert_eq!(
        with(Some(&position(Some("e")))).unwrap_or_else(|e| panic!("{e}")),
        "ws://h:1/ws/performance?last_alert_id=1764380000456-0&epoch=e\
         &metrics=api.*&where=env%3Dprod%7Cstaging&interval=250ms"
    );
}

#[test]
fn a_subscription_that_asks_for_nothing_adds_no_query() {
    assert_eq!(
        url_with("ws://h:1", None, Some(&Subscription::default()))
            .unwrap_or_else(|e| panic!("{e}")),
        "ws://h:1/ws/performance"
    );
}

#[test]
fn a_subscription_the_query_cannot_carry_is_refused_before_connecting() {
    let subscription = Subscription::default().metrics(["a,b"]);
    assert!(matches!(
        url_with("ws://h:1", None, Some(&subscription)),
        Err(ConnectError::Subscription(_))
    ));
}

#[test]
fn the_url_carries_every_option_and_the_token_goes_in_a_header() {
    let subscription = Subscription::default().no_alerts();
    let resume = position(None);
    let options = ConnectOptions {
        token: Some("t0k"),
        resume: Some(&resume),
        subscription: Some(&subscription),
        buffers: Buffers::SMALL,
    };
    let request = request("ws://h:1", &options).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        request.uri().to_string(),
        "ws://h:1/ws/performance?last_alert_id=1764380000456-0&alerts=none"
    );
    assert_eq!(
        request
            .headers()
            .get("authorization")
            .map(HeaderValue::as_bytes),
        Some(&b"Bearer t0k"[..])
    );
}

fn refusal(status: u16, body: &str) -> ConnectError {
    let response = tungstenite::http::Response::builder()
        .status(status)
        .body(Some(body.as_bytes().to_vec()))
        .unwrap_or_else(|e| panic!("{e}"));
    refused(tungstenite::Error::Http(Box::new(response)))
}

#[test]
fn a_refused_selector_names_its_field() {
    let error = refusal(
        400,
        r#"{"error":"pattern \"a**\" is malformed","field":"metrics"}"#,
    );
    let ConnectError::Refused {
        status,
        error: reason,
        field,
    } = &error
    else {
        panic!("not a refusal: {error:?}");
    };
    assert_eq!(*status, 400);
    assert_eq!(reason, "pattern \"a**\" is malformed");
    assert_eq!(field.as_deref(), Some("metrics"));
    assert_eq!(
        error.to_string(),
        "the worker refused the connection with 400: pattern \"a**\" is malformed (at metrics)"
    );
}

#[test]
fn a_refusal_without_a_field_or_a_json_body_has_none() {
    assert!(matches!(
        refusal(401, r#"{"error":"no token"}"#),
        ConnectError::Refused { status: 401, error, field: None } if error == "no token"
    ));
    assert!(matches!(
        refusal(414, "URI Too Long"),
        ConnectError::Refused { status: 414, error, field: None } if error.is_empty()
    ));
}

#[test]
fn urls_that_are_not_websocket_urls_are_refused() {
    for bad in ["http://h:1", "h:1", "ws://h:1/?x=1"] {
        assert!(
            matches!(session_url(bad, None), Err(ConnectError::InvalidUrl { .. })),
            "{bad}"
        );
    }
}

/// Every wait on the loopback server fails loudly after this.
const WAIT: Duration = Duration::from_secs(10);

async fn bound() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    (listener, format!("ws://{address}"))
}

#[tokio::test]
async fn a_session_asks_for_its_subscription_and_sends_requests_in_order() {
    let (listener, url) = bound().await;
    let server = tokio::spawn(async move {
        let (mut socket, target) = crate::test_server::accept(&listener).await;
        let mut received = Vec::new();
        for _ in 0..2 {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => received.push(text.to_string()),
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
        socket
            .send(Message::text(r#"{"type":"subscribed","id":"s1"}"#))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (target, received)
    });
    let default = Subscription::default().metrics(["api.*"]);
    let options = ConnectOptions {
        subscription: Some(&default),
        ..ConnectOptions::default()
    };
    let mut connection = tokio::time::timeout(WAIT, Connection::connect(&url, &options))
        .await
        .unwrap_or_else(|_| panic!("no handshake within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let alerts = Subscription::default()
        .no_metrics()
        .min_severity(fanout_domain::Severity::Critical);
    connection
        .subscribe("s1", &alerts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    connection
        .unsubscribe("default")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let answer = tokio::time::timeout(WAIT, connection.next_frame())
        .await
        .unwrap_or_else(|_| panic!("no answer within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer, ServerFrame::Subscribed("s1".to_owned()));
    let (target, received) = tokio::time::timeout(WAIT, server)
        .await
        .unwrap_or_else(|_| panic!("the server did not finish within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(target, "/ws/performance?metrics=api.*");
    assert_eq!(
        received,
        [
            r#"{"type":"subscribe","id":"s1","metrics":[],"alerts":"critical"}"#,
            r#"{"type":"unsubscribe","id":"default"}"#,
        ]
    );
}

#[tokio::test]
#[expect(
    clippy::result_large_err,
    reason = "tungstenite's handshake callback returns its ErrorResponse by value"
)]
async fn a_selector_refused_at_connect_names_its_field() {
    let (listener, url) = bound().await;
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let callback = |_: &Request, _: Response| {
            let refusal = tungstenite::http::Response::builder()
                .status(400)
                .body(Some(
                    r#"{"error":"interval must be 10ms to 60s","field":"interval"}"#.to_owned(),
                ))
                .unwrap_or_else(|e| panic!("{e}"));
            Err::<Response, _>(refusal)
        };
        // The handshake fails on this side by design.
        let _ = tokio_tungstenite::accept_hdr_async(tcp, callback).await;
    });
    let fast = Subscription::default().interval(Duration::from_millis(1));
    let options = ConnectOptions {
        subscription: Some(&fast),
        ..ConnectOptions::default()
    };
    let error = tokio::time::timeout(WAIT, Connection::connect(&url, &options))
        .await
        .unwrap_or_else(|_| panic!("no answer within {WAIT:?}"))
        .err();
    assert!(
        matches!(
            &error,
            Some(ConnectError::Refused { status: 400, error, field: Some(field) })
                if error == "interval must be 10ms to 60s" && field == "interval"
        ),
        "{error:?}"
    );
}
