//! A raw sharded Pub/Sub subscriber (`SSUBSCRIBE`) on one node, reporting every frame the node
//! sends it, including the ones a client library would hide: a `sunsubscribe` the server sends
//! by itself when the node stops serving a channel's slot, an error reply (`-MOVED`), and the
//! end of the connection. redis 1.8.1's `aio::PubSub` has no `ssubscribe` and its RESP3
//! connections swallow these frames, so this speaks RESP2 on a plain `std::net::TcpStream` with
//! the crate's own `Parser`, in a thread of its own that forwards each frame to the test.
//!
//! It never reconnects or follows a slot: it shows what one connection sees.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use redis::Value;
use tokio::sync::mpsc;

use super::probe::{int, text};
use crate::harness::WAIT;

/// Which kind of node the subscriber is meant for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeOn {
    /// The slot's master: `SSUBSCRIBE` right away.
    Master,
    /// A replica of the slot's master: `READONLY` first, or the replica answers `-MOVED`.
    Replica,
}

/// One frame from the node, or the end of the connection.
#[derive(Clone, Debug, PartialEq)]
pub enum ShardedEvent {
    /// `ssubscribe` confirmation, with the connection's count of sharded channels.
    Subscribed { channel: String, count: i64 },
    /// `smessage`.
    Message { channel: String, payload: String },
    /// `sunsubscribe`: asked for, or sent by the node when it no longer serves the slot.
    Unsubscribed { channel: String, count: i64 },
    /// An error reply, e.g. "MOVED 1234 127.0.0.1:P".
    Error(String),
    /// Any other frame, as parsed.
    Other(Value),
    /// The connection ended (EOF, reset, or a frame that could not be parsed).
    Closed(String),
}

/// A subscriber connection; dropping it shuts the socket down (its reader thread then ends).
pub struct ShardedSubscriber {
    addr: String,
    stream: TcpStream,
    events: mpsc::UnboundedReceiver<ShardedEvent>,
}

impl ShardedSubscriber {
    /// Connects to `addr` and sends `SSUBSCRIBE channels…`; returns once every channel is
    /// confirmed. Panics on an error reply (e.g. `-MOVED` when `addr` does not serve the slot) or
    /// after [`WAIT`].
    pub async fn connect(addr: &str, channels: &[&str], on: SubscribeOn) -> ShardedSubscriber {
        let mut subscriber = ShardedSubscriber::connect_unconfirmed(addr, channels, on).await;
        for _ in channels {
            match subscriber.next_event().await {
                ShardedEvent::Subscribed { .. } => {}
                other => panic!("SSUBSCRIBE {channels:?} on {addr}: {other:?}"),
            }
        }
        subscriber
    }

    /// Connects and sends `SSUBSCRIBE` without waiting for the answer: the first events are its
    /// confirmations or error replies.
    pub async fn connect_unconfirmed(
        addr: &str,
        channels: &[&str],
        on: SubscribeOn,
    ) -> ShardedSubscriber {
        let target = addr.to_owned();
        let names: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        let (sender, events) = mpsc::unbounded_channel();
        let stream = tokio::task::spawn_blocking(move || open(&target, &names, on, sender))
            .await
            .unwrap_or_else(|e| panic!("subscriber to {addr} panicked: {e}"))
            .unwrap_or_else(|e| panic!("cannot subscribe to {channels:?} on {addr}: {e}"));
        ShardedSubscriber {
            addr: addr.to_owned(),
            stream,
            events,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The next frame; panics if none comes within [`WAIT`].
    pub async fn next_event(&mut self) -> ShardedEvent {
        self.next_event_within(WAIT).await.unwrap_or_else(|| {
            panic!(
                "no frame from the subscriber on {} within {WAIT:?}",
                self.addr
            )
        })
    }

    /// The next frame, or `None` if none comes within `limit`.
    pub async fn next_event_within(&mut self, limit: Duration) -> Option<ShardedEvent> {
        match tokio::time::timeout(limit, self.events.recv()).await {
            Ok(Some(event)) => Some(event),
            // The reader thread sends `Closed` before it ends, so this is after that.
            Ok(None) => Some(ShardedEvent::Closed("reader ended".to_owned())),
            Err(_) => None,
        }
    }

    /// Waits for an `smessage` and returns its payload; panics on any other frame or after
    /// [`WAIT`].
    pub async fn expect_message(&mut self, channel: &str) -> String {
        match self.next_event().await {
            ShardedEvent::Message {
                channel: got,
                payload,
            } if got == channel => payload,
            other => panic!(
                "expected an smessage on {channel} from {}, got {other:?}",
                self.addr
            ),
        }
    }
}

impl Drop for ShardedSubscriber {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Connects, sends `READONLY` (for a replica) and `SSUBSCRIBE`, and starts the reader thread.
/// Returns a handle on the socket to shut it down with.
fn open(
    addr: &str,
    channels: &[String],
    on: SubscribeOn,
    events: mpsc::UnboundedSender<ShardedEvent>,
) -> Result<TcpStream, String> {
    let socket_addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&socket_addr, Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    let mut parser = redis::Parser::new();
    if on == SubscribeOn::Replica {
        stream
            .write_all(&redis::cmd("READONLY").get_packed_command())
            .map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        let answer = parser.parse_value(&mut stream).map_err(|e| e.to_string())?;
        stream.set_read_timeout(None).map_err(|e| e.to_string())?;
        if answer != Value::Okay {
            return Err(format!("READONLY: {answer:?}"));
        }
    }
    stream
        .write_all(&redis::cmd("SSUBSCRIBE").arg(channels).get_packed_command())
        .map_err(|e| e.to_string())?;
    let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
    std::thread::spawn(move || loop {
        let event = match parser.parse_value(&mut reader) {
            Ok(value) => event_of(value),
            Err(e) => ShardedEvent::Closed(e.to_string()),
        };
        let closed = matches!(event, ShardedEvent::Closed(_));
        if events.send(event).is_err() || closed {
            return;
        }
    });
    Ok(stream)
}

fn event_of(value: Value) -> ShardedEvent {
    if let Value::ServerError(error) = &value {
        // As on the wire: "MOVED 1584 127.0.0.1:P" (the crate's Display says "Moved: …").
        let text = match error.details() {
            Some(details) => format!("{} {details}", error.code()),
            None => error.code().to_owned(),
        };
        return ShardedEvent::Error(text);
    }
    let Value::Array(fields) = &value else {
        return ShardedEvent::Other(value);
    };
    let kind = fields.first().and_then(text);
    let channel = fields.get(1).and_then(text);
    let third = fields.get(2);
    match (kind.as_deref(), channel, third) {
        (Some("ssubscribe"), Some(channel), Some(count)) => ShardedEvent::Subscribed {
            channel,
            count: int(count).unwrap_or(-1),
        },
        (Some("sunsubscribe"), Some(channel), Some(count)) => ShardedEvent::Unsubscribed {
            channel,
            count: int(count).unwrap_or(-1),
        },
        (Some("smessage"), Some(channel), Some(payload)) => ShardedEvent::Message {
            channel,
            payload: text(payload).unwrap_or_default(),
        },
        _ => ShardedEvent::Other(value),
    }
}
