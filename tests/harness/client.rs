//! A real WebSocket client of `/ws/performance`.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::within;

pub struct Client {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
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

impl Client {
    /// Connects and waits for `hello` and `snapshot`, after which every message published is
    /// delivered.
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::open(addr, None).await
    }

    /// Connects with the last alert id seen; waits for `hello`, `snapshot` and `resume`. The
    /// replayed alerts follow as ordinary frames.
    pub async fn resume(addr: SocketAddr, last_alert_id: &str) -> Client {
        Self::open(addr, Some(last_alert_id)).await
    }

    /// Resumes with the last alert id seen and the epoch of the log it came from (both from the
    /// same alert frame), as PROTOCOL.md tells clients to.
    pub async fn resume_in(addr: SocketAddr, last_alert_id: &str, epoch: &str) -> Client {
        let url = format!("ws://{addr}/ws/performance?last_alert_id={last_alert_id}&epoch={epoch}");
        let (stream, _) = within("WebSocket connect", tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        Self::greeted(stream, Some(last_alert_id)).await
    }

    /// Connects with a tiny socket receive buffer, for a client that will stop reading: the
    /// server's writes block after a few KiB instead of megabytes of kernel buffering.
    pub async fn connect_small_buffer(addr: SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
        socket
            .set_recv_buffer_size(4096)
            .unwrap_or_else(|e| panic!("{e}"));
        let tcp = socket
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let url = format!("ws://{addr}/ws/performance");
        let (stream, _) = within(
            "WebSocket handshake",
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        Self::greeted(stream, None).await
    }

    /// Connects with `Authorization: Bearer TOKEN`.
    pub async fn connect_with_token(addr: SocketAddr, token: &str) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{addr}/ws/performance")
            .into_client_request()
            .unwrap_or_else(|e| panic!("{e}"));
        let value = format!("Bearer {token}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        request.headers_mut().insert("authorization", value);
        let (stream, _) = within(
            "WebSocket connect",
            tokio_tungstenite::connect_async(request),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        Self::greeted(stream, None).await
    }

    async fn open(addr: SocketAddr, last_alert_id: Option<&str>) -> Client {
        let url = match last_alert_id {
            None => format!("ws://{addr}/ws/performance"),
            Some(id) => format!("ws://{addr}/ws/performance?last_alert_id={id}"),
        };
        let (stream, _) = within("WebSocket connect", tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        Self::greeted(stream, last_alert_id).await
    }

    async fn greeted(
        stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
        last_alert_id: Option<&str>,
    ) -> Client {
        let mut client = Client {
            stream,
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
        if last_alert_id.is_some() {
            let resume = client.next_frame().await;
            assert_eq!(
                resume["type"], "resume",
                "third frame must be resume: {resume}"
            );
            client.resume = resume;
        }
        client
    }

    /// The next data frame (metrics, alert, hello...), as JSON.
    pub async fn next_frame(&mut self) -> Value {
        loop {
            let message = within("next frame", self.stream.next())
                .await
                .unwrap_or_else(|| panic!("connection ended while waiting for a frame"))
                .unwrap_or_else(|e| panic!("connection failed while waiting for a frame: {e}"));
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"))
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next frame, or `None` when the connection ended (closed or dropped) first.
    pub async fn try_next_frame(&mut self) -> Option<Value> {
        loop {
            match within("next frame", self.stream.next()).await {
                Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).ok(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
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
        let socket = self.stream.get_mut();
        within("raw write", socket.write_all(&frame))
            .await
            .unwrap_or_else(|e| panic!("raw write failed: {e}"));
    }

    /// Sends a raw message (for bad-input tests).
    pub async fn send(&mut self, message: Message) {
        within("send", self.stream.send(message))
            .await
            .unwrap_or_else(|e| panic!("send failed: {e}"));
    }

    /// Reads until the server ends the connection, skipping data frames.
    pub async fn ended(&mut self) -> Ended {
        loop {
            match within("the server to close", self.stream.next()).await {
                Some(Ok(Message::Close(frame))) => {
                    return Ended::Close(frame.map(|f: CloseFrame| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ended::Dropped,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        // Drain until the server acknowledges, so the close is complete on both sides.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(super::WAIT, self.stream.next()).await {}
    }
}
