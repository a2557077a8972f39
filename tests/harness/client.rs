//! A WebSocket client of `/ws/performance` for scenarios: a `fanout_client::Connection` (the
//! client library's one session: handshake, token, resume position, typed frames, close codes)
//! with every wait bounded by [`within`], greeted before a test gets it, and its frames as the JSON
//! the server wrote, so that a scenario asserts on the wire form PROTOCOL.md documents (the typed
//! frames are `tests/client.rs`'s subject).

use std::net::SocketAddr;

use fanout_client::{ConnectOptions, Connection, Position, ReadError, Subscription};
use fanout_domain::{LogEpoch, LogId};
use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{within, WAIT};

pub struct Client {
    connection: Connection,
    /// The server's `hello` frame: sent once the worker's bus subscription is live.
    pub hello: Value,
    /// The `snapshot` frame that follows it: the latest value of each metric.
    pub snapshot: Value,
    /// The `resume` frame, for a client that connected with a last alert id.
    pub resume: Value,
}

/// What the server ended the connection with.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Close(Option<u16>),
    /// The stream ended without a close frame (or with an error).
    Dropped,
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}")
}

/// A resume position from an alert frame's `id` and `epoch`.
pub fn position(last_alert_id: &str, epoch: Option<&str>) -> Position {
    Position {
        id: last_alert_id
            .parse::<LogId>()
            .unwrap_or_else(|e| panic!("{e}")),
        epoch: epoch.map(|epoch| LogEpoch::new(epoch).unwrap_or_else(|e| panic!("{e}"))),
    }
}

/// A frame's text as JSON.
fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"))
}

impl Client {
    /// Connects and waits for `hello` and `snapshot`, after which every message published is
    /// delivered.
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::open(addr, None, None).await
    }

    /// Connects with the last alert id seen; waits for `hello`, `snapshot` and `resume`. The
    /// replayed alerts follow as ordinary frames.
    pub async fn resume(addr: SocketAddr, last_alert_id: &str) -> Client {
        Self::open(addr, None, Some(position(last_alert_id, None))).await
    }

    /// Resumes with the last alert id seen and the epoch of the log it came from (both from the
    /// same alert frame), as PROTOCOL.md tells clients to.
    pub async fn resume_in(addr: SocketAddr, last_alert_id: &str, epoch: &str) -> Client {
        Self::open(addr, None, Some(position(last_alert_id, Some(epoch)))).await
    }

    /// Connects with `Authorization: Bearer TOKEN`.
    pub async fn connect_with_token(addr: SocketAddr, token: &str) -> Client {
        Self::open(addr, Some(token), None).await
    }

    /// Connects with a tiny socket receive buffer, for a client that will stop reading: the
    /// server's writes block after a few KiB instead of megabytes of kernel buffering.
    pub async fn connect_small_buffer(addr: SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
        socket
            .set_recv_buffer_size(4096)
            .unwrap_or_else(|e| panic!("{e}"));
        let tcp = within("TCP connect", socket.connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let connection = within(
            "WebSocket handshake",
            Connection::open_over(tcp, &url(addr), None, None),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        Self::greeted(connection, false).await
    }

    /// Connects as `options` say (token, resume position, connect-time subscription); waits for
    /// `hello`, `snapshot` and, when resuming, `resume`.
    pub async fn connect_with(addr: SocketAddr, options: &ConnectOptions<'_>) -> Client {
        let connection = within(
            "WebSocket connect",
            Connection::connect(&url(addr), options),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        Self::greeted(connection, options.resume.is_some()).await
    }

    /// Sends a `subscribe` request for `subscription` as `id`; the answer is read as frames.
    pub async fn subscribe(&mut self, id: &str, subscription: &Subscription) {
        within("subscribe", self.connection.subscribe(id, subscription))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Sends an `unsubscribe` request for `id`; the answer is read as frames.
    pub async fn unsubscribe(&mut self, id: &str) {
        within("unsubscribe", self.connection.unsubscribe(id))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    async fn open(addr: SocketAddr, token: Option<&str>, resume: Option<Position>) -> Client {
        let connection = within(
            "WebSocket connect",
            Connection::open(&url(addr), token, resume.as_ref()),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        Self::greeted(connection, resume.is_some()).await
    }

    async fn greeted(connection: Connection, resuming: bool) -> Client {
        let mut client = Client {
            connection,
            hello: Value::Null,
            snapshot: Value::Null,
            resume: Value::Null,
        };
        let hello = client.next_frame().await;
        assert_eq!(hello["type"], "hello", "first frame must be hello: {hello}");
        client.hello = hello;
        let snapshot = client.next_frame().await;
        assert_eq!(
            snapshot["type"], "snapshot",
            "second frame must be the snapshot: {snapshot}"
        );
        client.snapshot = snapshot;
        if resuming {
            let resume = client.next_frame().await;
            assert_eq!(
                resume["type"], "resume",
                "third frame must be resume: {resume}"
            );
            client.resume = resume;
        }
        client
    }

    /// The next frame (metrics, alert, hello...), as the JSON the server wrote.
    pub async fn next_frame(&mut self) -> Value {
        match within("next frame", self.connection.next_text()).await {
            Ok(text) => json(&text),
            Err(error) => panic!("no frame: {error}"),
        }
    }

    /// The next frame, or `None` when the connection ended (closed or dropped) first, or sent
    /// something that is not JSON.
    pub async fn try_next_frame(&mut self) -> Option<Value> {
        let text = within("next frame", self.connection.next_text())
            .await
            .ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes a masked text frame with arbitrary payload bytes straight to the socket, bypassing
    /// the WebSocket library's UTF-8 check (for bad-input tests).
    pub async fn send_raw_text_frame(&mut self, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        assert!(payload.len() < 126, "short frames only");
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let socket = self.connection.socket_mut().get_mut();
        within("raw write", socket.write_all(&frame))
            .await
            .unwrap_or_else(|e| panic!("raw write failed: {e}"));
    }

    /// Sends a raw message (for bad-input tests).
    pub async fn send(&mut self, message: Message) {
        within("send", self.connection.socket_mut().send(message))
            .await
            .unwrap_or_else(|e| panic!("send failed: {e}"));
    }

    /// Reads until the server ends the connection, skipping data frames.
    pub async fn ended(&mut self) -> Ended {
        loop {
            match within("the server to close", self.connection.next_text()).await {
                Err(ReadError::Closed { code, .. }) => return Ended::Close(code.map(u16::from)),
                Err(ReadError::Lost(_) | ReadError::Ended) => return Ended::Dropped,
                Ok(_) | Err(ReadError::Malformed(_) | ReadError::Binary) => continue,
            }
        }
    }

    pub async fn close(self) {
        self.connection.close(WAIT).await;
    }
}

/// The messages of every alert the alert log holds now, read by a client that resumes from the
/// log's start on the worker at `addr`.
pub async fn logged_messages(addr: std::net::SocketAddr) -> std::collections::HashSet<String> {
    let mut reader = Client::resume(addr, "0-0").await;
    let replayed = reader.resume["replayed"].as_u64().unwrap_or_default();
    let mut logged = std::collections::HashSet::new();
    for _ in 0..replayed {
        let frame = super::within("the replay", async {
            loop {
                let frame = reader.next_frame().await;
                if frame["type"] == "alert" {
                    return frame;
                }
            }
        })
        .await;
        logged.insert(
            frame["data"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    logged
}

/// PROTOCOL.md's promise that a metric is refused (503) only when a client of the worker could
/// miss it, tried: `count` metrics POSTed one after another to the worker at `addr` while a client
/// connects and leaves again and again (the worker's subscription made and dropped over and
/// over); fails unless every one is answered 202 and the client came and went more than 10 times.
pub async fn no_publish_refused_while_a_client_comes_and_goes(addr: SocketAddr, count: u32) {
    let stop = tokio_util::sync::CancellationToken::new();
    let churn = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut visits = 0u32;
            while !stop.is_cancelled() {
                drop(Client::connect(addr).await);
                visits += 1;
            }
            visits
        }
    });
    let mut refused = Vec::new();
    for value in 0..count {
        let metric = serde_json::json!({"name": "churned", "value": value});
        let (status, body) =
            super::http::post(addr, "/api/metrics", "application/json", metric.to_string()).await;
        if status != 202 {
            refused.push((value, status, body));
        }
    }
    stop.cancel();
    let visits = within("the churning client stops", churn)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(visits > 10, "the client came and went {visits} times only");
    assert!(
        refused.is_empty(),
        "{} of {count} refused while a client came and went {visits} times: {:?}",
        refused.len(),
        refused.iter().take(3).collect::<Vec<_>>()
    );
}

/// Every client gets every message once and in order, with sends cut short: 20 clients with
/// 4 KiB receive buffers (more than the 16 a group needs for its sends to go through the ring)
/// read nothing while 40 messages of 50 metrics (~4 KB each) are POSTed to the worker at `addr`,
/// so most sends are cut short or refused and each client's task finishes them; then each reads
/// its values, which must be 0, 1, 2, … with none lost, doubled or out of order, and the worker
/// dropped none. `case` names the run in a failure. The worker should have `--client-send-buffer
/// 4096` for the worker's side of each socket to be small too.
pub async fn large_messages_reach_every_client_in_order(addr: SocketAddr, case: &str) {
    const MESSAGES: usize = 40;
    const METRICS: usize = 50;
    let mut readers = Vec::new();
    for _ in 0..20 {
        readers.push(Client::connect_small_buffer(addr).await);
    }
    for message in 0..MESSAGES {
        let batch: Vec<Value> = (0..METRICS)
            .map(|i| {
                serde_json::json!({
                    "name": format!("ring.series.{i:02}"),
                    "value": (message * METRICS + i) as f64,
                })
            })
            .collect();
        let (status, body) = super::http::post(
            addr,
            "/api/metrics",
            "application/json",
            Value::from(batch).to_string(),
        )
        .await;
        assert_eq!(status, 202, "{case}: {body}");
    }
    for (n, reader) in readers.iter_mut().enumerate() {
        let mut values = Vec::new();
        while values.len() < MESSAGES * METRICS {
            let frame = reader.next_frame().await;
            assert_eq!(frame["type"], "metrics", "{case}: {frame}");
            let data = frame["data"].as_array().cloned().unwrap_or_default();
            values.extend(
                data.iter()
                    .map(|m| m["value"].as_f64().unwrap_or(-1.0) as usize),
            );
        }
        let expected: Vec<usize> = (0..MESSAGES * METRICS).collect();
        assert!(
            values == expected,
            "{case}: client {n} got the values out of order, lost or twice"
        );
    }
    assert_eq!(
        super::http::health(addr).await["delivery"]["dropped_metrics"],
        0,
        "{case}"
    );
}
